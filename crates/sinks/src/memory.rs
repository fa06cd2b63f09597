//! An in-memory sink for tests: keeps what it "delivers", can be made slow or failing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::Notify;

use crate::buffer::BufferReader;
use crate::sink::sleep_unless_aborted;
use crate::telemetry::{emit, SinkConnected};
use crate::{DrainReport, Record, Sink};

/// How long a failing memory sink waits before retrying a record.
const FAIL_RETRY: Duration = Duration::from_millis(5);

/// A sink that stores records in memory. Build it with [`MemorySink::new`] and keep the handle.
pub struct MemorySink {
    handle: MemoryHandle,
}

/// Inspects and steers a [`MemorySink`]; cloneable.
#[derive(Clone, Default)]
pub struct MemoryHandle {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    records: Mutex<Vec<Record>>,
    delay_us: AtomicU64,
    failing: AtomicBool,
    changed: Notify,
}

impl std::fmt::Debug for MemoryHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryHandle")
            .field("len", &self.len())
            .finish()
    }
}

impl MemorySink {
    /// A new memory sink and its handle.
    pub fn new() -> (MemorySink, MemoryHandle) {
        let handle = MemoryHandle::default();
        (
            MemorySink {
                handle: handle.clone(),
            },
            handle,
        )
    }
}

impl MemoryHandle {
    fn records_lock(&self) -> MutexGuard<'_, Vec<Record>> {
        self.inner
            .records
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A copy of the records delivered so far, in delivery order.
    pub fn records(&self) -> Vec<Record> {
        self.records_lock().clone()
    }

    /// Number of records delivered so far.
    pub fn len(&self) -> usize {
        self.records_lock().len()
    }

    /// Whether nothing was delivered yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until at least `n` records were delivered; false on timeout.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let mut changed = std::pin::pin!(self.inner.changed.notified());
                changed.as_mut().enable();
                if self.len() >= n {
                    return;
                }
                changed.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    /// Makes every delivery take `delay` (a slow broker).
    pub fn set_delay(&self, delay: Duration) {
        let us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.inner.delay_us.store(us, Ordering::SeqCst);
    }

    /// Makes every delivery fail (and be retried) while `failing` is true (a broker outage).
    pub fn set_failing(&self, failing: bool) {
        self.inner.failing.store(failing, Ordering::SeqCst);
    }
}

impl Sink for MemorySink {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn run(self: Box<Self>, mut reader: BufferReader) -> BoxFuture<'static, DrainReport> {
        Box::pin(async move {
            let inner = self.handle.inner.clone();
            let metrics = reader.metrics().clone();
            emit(
                &metrics,
                SinkConnected {
                    sink: "memory",
                    endpoint: "memory",
                    detail: "ready",
                },
            );
            while let Some(claim) = reader.recv().await {
                if inner.failing.load(Ordering::SeqCst) {
                    reader.retry_because(claim, "injected", &"injected failure");
                    sleep_unless_aborted(&reader, FAIL_RETRY).await;
                    continue;
                }
                let delay = Duration::from_micros(inner.delay_us.load(Ordering::SeqCst));
                if !delay.is_zero() {
                    sleep_unless_aborted(&reader, delay).await;
                    if reader.is_aborted() {
                        reader.requeue(claim);
                        break;
                    }
                }
                self.handle.records_lock().push(claim.record().clone());
                reader.ack(claim);
                inner.changed.notify_waiters();
            }
            reader.report()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::record;
    use crate::{buffer, spawn, BufferConfig, SinkMetrics, WhenFull};

    #[tokio::test]
    async fn outage_holds_records_and_recovery_delivers_them() {
        let (sink, handle) = MemorySink::new();
        handle.set_failing(true);
        let (writer, reader) = buffer(BufferConfig::default(), SinkMetrics::unregistered());
        let running = spawn(Box::new(sink), reader);
        for n in 0..100 {
            writer.push(record("t", n)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(handle.len(), 0);
        assert_eq!(writer.depth(), 100);
        handle.set_failing(false);
        assert!(handle.wait_for(100, Duration::from_secs(5)).await);
        let seqs: Vec<u64> = handle
            .records()
            .iter()
            .map(|r| r.payload.len() as u64)
            .collect();
        assert_eq!(seqs.len(), 100);
        let report = running.shutdown(Duration::from_secs(1)).await;
        assert_eq!((report.delivered, report.undelivered), (100, 0));
    }

    #[tokio::test]
    async fn shutdown_deadline_reports_what_is_left() {
        let (sink, handle) = MemorySink::new();
        handle.set_failing(true);
        let (writer, reader) = buffer(
            BufferConfig {
                max_events: Some(10),
                max_bytes: 1 << 20,
                when_full: WhenFull::DropNewest,
                ..BufferConfig::default()
            },
            SinkMetrics::unregistered(),
        );
        let running = spawn(Box::new(sink), reader);
        for n in 0..15 {
            writer.push(record("t", n)).await.unwrap();
        }
        let report = running.shutdown(Duration::from_millis(100)).await;
        assert!(report.deadline_hit);
        assert_eq!(report.undelivered, 10);
        assert_eq!(report.dropped, 5);
        assert_eq!(report.undelivered_by_event, vec![("message.created", 10)]);
    }
}
