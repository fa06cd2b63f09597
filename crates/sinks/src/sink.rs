//! The [`Sink`] trait, the running task's [`SinkHandle`] and the [`DrainReport`].

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::task::JoinHandle;

use crate::buffer::{BufferReader, Shared};
use crate::health::SinkHealthWatch;
use crate::telemetry::{emit, DropReason, RecordDropped, SinkStopped};

/// How long a sink gets to stop after the drain deadline before its task is aborted (at most a
/// quarter of the whole shutdown time).
const ABORT_GRACE: Duration = Duration::from_secs(2);

/// A destination for records: takes them from a [`BufferReader`] and hands each back with
/// `ack` once the broker acknowledged it.
pub trait Sink: Send {
    /// The sink's kind, used as the `sink` metrics label: `mqtt`, `kafka`, `stdout`, `file`,
    /// `memory`.
    fn kind(&self) -> &'static str;

    /// Whether the sink writes a record's key anywhere (Kafka's message key, the JSON-lines
    /// sinks' `key`); `false` for MQTT, which has none: the router then renders no key. Records
    /// kept in a disk buffer keep what they were made with.
    fn uses_key(&self) -> bool {
        true
    }

    /// Runs until the buffer is closed and every record acknowledged (or rejected), or until the
    /// drain deadline passed ([`BufferReader::aborted`]); never returns early because a broker is
    /// away. Returns [`BufferReader::report`].
    fn run(self: Box<Self>, reader: BufferReader) -> BoxFuture<'static, DrainReport>;
}

/// Sleeps for `delay` (a back-off, a simulated delay), returning early when the drain deadline
/// passes: the one wait every sink's retry loop uses, so none outlives its deadline.
pub(crate) async fn sleep_unless_aborted(reader: &BufferReader, delay: Duration) {
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        () = reader.aborted() => {}
    }
}

/// What a sink delivered over its life and what it could not deliver when it stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Records acknowledged by the broker.
    pub delivered: u64,
    /// Records that could never be delivered (invalid topic, too large, forbidden).
    pub rejected: u64,
    /// Records dropped by the buffer's `when_full` policy or for being too large.
    pub dropped: u64,
    /// Records still held (queued or unacknowledged) when the sink stopped.
    pub undelivered: u64,
    /// Their bytes.
    pub undelivered_bytes: u64,
    /// Undelivered records by event label, sorted.
    pub undelivered_by_event: Vec<(&'static str, u64)>,
    /// Whether the drain deadline passed before everything was acknowledged.
    pub deadline_hit: bool,
    /// Whether the undelivered records are kept (disk buffer: delivered after the next start)
    /// rather than lost (memory buffer).
    pub durable: bool,
}

impl DrainReport {
    /// Records lost by this stop: undelivered ones the buffer does not keep.
    pub fn lost(&self) -> u64 {
        if self.durable {
            0
        } else {
            self.undelivered
        }
    }
}

/// A sink running on the tokio runtime.
pub struct SinkHandle {
    kind: &'static str,
    shared: Arc<Shared>,
    task: JoinHandle<DrainReport>,
}

impl std::fmt::Debug for SinkHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkHandle")
            .field("kind", &self.kind)
            .finish()
    }
}

/// Starts `sink` on the current tokio runtime, reading from `reader`.
pub fn spawn(sink: Box<dyn Sink>, mut reader: BufferReader) -> SinkHandle {
    let kind = sink.kind();
    reader.set_sink_label(kind);
    let shared = reader.shared();
    let task = tokio::spawn(sink.run(reader));
    SinkHandle { kind, shared, task }
}

impl SinkHandle {
    /// The sink's kind.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// Whether the sink holds a working broker connection, now and as it changes.
    pub fn health(&self) -> SinkHealthWatch {
        self.shared_metrics().health()
    }

    /// Whether the sink task ended (it only ends after a shutdown, or if it panicked).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Closes the buffer, lets the sink deliver what it holds, stops it, and reports what could
    /// not be delivered; all within `deadline` in total (the last quarter of it, at most 2 s, is
    /// the sink's time to stop after being told to). Undelivered records of the memory buffer
    /// are lost (counted as dropped, reason `shutdown`); the disk buffer keeps them for the next
    /// start (its ledger is written before this returns).
    pub async fn shutdown(mut self, deadline: Duration) -> DrainReport {
        self.shared.close();
        let grace = ABORT_GRACE.min(deadline / 4);
        let report = match tokio::time::timeout(deadline - grace, &mut self.task).await {
            Ok(Ok(report)) => report,
            Ok(Err(join_error)) => {
                tracing::error!(sink = self.kind, error = %join_error, "sink task failed");
                self.shared.report(true)
            }
            Err(_elapsed) => {
                self.shared.abort();
                match tokio::time::timeout(grace, &mut self.task).await {
                    Ok(Ok(report)) => DrainReport {
                        deadline_hit: true,
                        ..report
                    },
                    _ => {
                        self.task.abort();
                        self.shared.report(true)
                    }
                }
            }
        };
        self.shared.flush();
        if report.lost() > 0 {
            for (label, count) in &report.undelivered_by_event {
                emit(
                    self.shared_metrics(),
                    RecordDropped {
                        reason: DropReason::Shutdown,
                        event_label: label,
                        count: *count,
                    },
                );
            }
        }
        emit(
            self.shared_metrics(),
            SinkStopped {
                sink: self.kind,
                report: &report,
            },
        );
        report
    }

    fn shared_metrics(&self) -> &crate::SinkMetrics {
        self.shared.metrics()
    }
}
