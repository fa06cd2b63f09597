//! The stdout and file sinks: one JSON object per line.
//!
//! ```json
//! {"topic":"voxsig/1/message.created","key":"1/7","event":"message.created","account_id":1,"received_at_ms":1700000000000,"event_id":"msg-42","replayed":false,"payload":{...}}
//! ```
//! The payload is embedded as raw JSON when it is JSON (checked, never parsed into a tree), as a
//! string otherwise. A record is acknowledged once its line was written and flushed (and, for a
//! file with `fsync = true`, synced to disk).

use std::borrow::Cow;
use std::path::PathBuf;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::backoff::{Backoff, ReconnectConfig};
use crate::buffer::{BufferReader, Claim};
use crate::sink::sleep_unless_aborted;
use crate::telemetry::{emit, ConnectionErrorKind, ConnectionFailed, SinkConnected};
use crate::{DrainReport, Record, Sink, SinkError};

/// Most records written and flushed together.
const BATCH: usize = 1024;

/// `kind = "stdout"`: JSON lines on standard output.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutConfig {
    /// Topic template (the bridge renders it); default `voxsig/{account}/{event}`.
    #[serde(default)]
    pub topic: Option<String>,
}

/// `kind = "file"`: JSON lines appended to a file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The file; created when missing, appended to otherwise. Required.
    pub path: PathBuf,
    /// Sync to disk after every batch before acknowledging. Default false (flush to the OS only).
    #[serde(default)]
    pub fsync: bool,
    /// Topic template (the bridge renders it); default `voxsig/{account}/{event}`.
    #[serde(default)]
    pub topic: Option<String>,
}

#[derive(Serialize)]
struct Line<'a> {
    topic: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    account_id: Option<u64>,
    received_at_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_id: Option<&'a crate::EventId>,
    replayed: bool,
    payload: Payload<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Payload<'a> {
    Json(&'a RawValue),
    Text(Cow<'a, str>),
}

/// Appends `record` as one JSON line to `out`.
pub(crate) fn write_line(out: &mut Vec<u8>, record: &Record) {
    let payload = match serde_json::from_slice::<&RawValue>(&record.payload) {
        Ok(raw) => Payload::Json(raw),
        Err(_) => Payload::Text(String::from_utf8_lossy(&record.payload)),
    };
    let line = Line {
        topic: &record.topic,
        key: record.key.as_deref(),
        event: &record.headers.event,
        account_id: record.headers.account_id,
        received_at_ms: record.headers.received_at_ms,
        event_id: record.headers.event_id.as_ref(),
        replayed: record.headers.replayed,
        payload,
    };
    // Serialising plain strings and integers into a Vec cannot fail.
    if serde_json::to_writer(&mut *out, &line).is_ok() {
        out.push(b'\n');
    }
}

enum Target {
    Stdout(tokio::io::Stdout),
    File {
        file: tokio::fs::File,
        fsync: bool,
        path: String,
    },
}

/// The stdout or file sink.
pub struct JsonLinesSink {
    kind: &'static str,
    target: Target,
}

impl JsonLinesSink {
    /// A sink writing to standard output.
    pub fn stdout() -> Self {
        JsonLinesSink {
            kind: "stdout",
            target: Target::Stdout(tokio::io::stdout()),
        }
    }

    /// A sink appending to the configured file (opened now, so a bad path fails at startup).
    pub fn file(config: &FileConfig) -> Result<Self, SinkError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&config.path)
            .map_err(|source| SinkError::Io {
                key: "sink.path",
                path: config.path.display().to_string(),
                source,
            })?;
        Ok(JsonLinesSink {
            kind: "file",
            target: Target::File {
                file: tokio::fs::File::from_std(file),
                fsync: config.fsync,
                path: config.path.display().to_string(),
            },
        })
    }
}

impl Target {
    fn endpoint(&self) -> &str {
        match self {
            Target::Stdout(_) => "stdout",
            Target::File { path, .. } => path,
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Target::Stdout(out) => write_flush(out, bytes).await,
            Target::File { file, fsync, .. } => {
                write_flush(file, bytes).await?;
                if *fsync {
                    file.sync_data().await?;
                }
                Ok(())
            }
        }
    }
}

async fn write_flush<W: AsyncWrite + Unpin>(out: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    out.write_all(bytes).await?;
    out.flush().await
}

impl Sink for JsonLinesSink {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn run(self: Box<Self>, mut reader: BufferReader) -> BoxFuture<'static, DrainReport> {
        Box::pin(async move {
            let JsonLinesSink { kind, mut target } = *self;
            let metrics = reader.metrics().clone();
            let endpoint = target.endpoint().to_owned();
            emit(
                &metrics,
                SinkConnected {
                    sink: kind,
                    endpoint: &endpoint,
                    detail: "opened",
                },
            );
            let mut backoff = Backoff::new(&ReconnectConfig::default());
            let mut batch: Vec<Claim> = Vec::with_capacity(BATCH);
            let mut bytes = Vec::with_capacity(64 * 1024);
            while let Some(first) = reader.recv().await {
                batch.push(first);
                reader.try_recv_many(BATCH - 1, &mut batch);
                bytes.clear();
                for claim in &batch {
                    write_line(&mut bytes, claim.record());
                }
                let written = tokio::select! {
                    r = target.write(&bytes) => r,
                    () = reader.aborted() => Err(std::io::Error::other("drain deadline passed")),
                };
                match written {
                    Ok(()) => {
                        backoff.reset();
                        batch.drain(..).for_each(|claim| reader.ack(claim));
                    }
                    Err(error) => {
                        let retry_in = backoff.next_delay();
                        emit(
                            &metrics,
                            ConnectionFailed {
                                sink: kind,
                                endpoint: &endpoint,
                                kind: ConnectionErrorKind::Io,
                                error: &error,
                                retry_in: Some(retry_in),
                            },
                        );
                        for claim in batch.drain(..) {
                            reader.retry_because(claim, "io", &error);
                        }
                        sleep_unless_aborted(&reader, retry_in).await;
                    }
                }
            }
            reader.report()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::record;
    use crate::{buffer, spawn, BufferConfig, SinkMetrics};
    use std::time::Duration;

    #[test]
    fn lines_embed_json_payloads_raw_and_others_as_text() {
        let mut out = Vec::new();
        write_line(&mut out, &record("voxsig/1/message.created", 7));
        let mut text = record("t", 1);
        text.payload = bytes::Bytes::from_static(b"not json \xff");
        text.key = None;
        write_line(&mut out, &text);
        let lines: Vec<serde_json::Value> = out
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines[0]["payload"]["n"], 7);
        assert_eq!(lines[0]["key"], "1/7");
        assert_eq!(lines[0]["topic"], "voxsig/1/message.created");
        assert_eq!(lines[1]["payload"], "not json \u{fffd}");
        assert!(lines[1].get("key").is_none());
        assert_eq!(lines[0]["replayed"], false);
        assert!(lines[0].get("event_id").is_none());
    }

    #[test]
    fn lines_carry_event_id_and_replayed() {
        let mut out = Vec::new();
        let mut r = record("voxsig/1/message.created", 7);
        r.headers.event_id = Some("msg-7".into());
        r.headers.replayed = true;
        write_line(&mut out, &r);
        let line: serde_json::Value = serde_json::from_slice(out.trim_ascii_end()).unwrap();
        assert_eq!(line["event_id"], "msg-7");
        assert_eq!(line["replayed"], true);
    }

    #[tokio::test]
    async fn file_sink_appends_and_drains_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let config = FileConfig {
            path: path.clone(),
            fsync: true,
            topic: None,
        };
        let (writer, reader) = buffer(BufferConfig::default(), SinkMetrics::unregistered());
        let handle = spawn(Box::new(JsonLinesSink::file(&config).unwrap()), reader);
        for n in 0..500 {
            writer.push(record("voxsig/1/x", n)).await.unwrap();
        }
        let report = handle.shutdown(Duration::from_secs(5)).await;
        assert_eq!(report.delivered, 500);
        assert_eq!(report.undelivered, 0);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 500);
    }

    #[test]
    fn unwritable_file_is_a_clear_error() {
        let config = FileConfig {
            path: "/nonexistent-dir/x.jsonl".into(),
            fsync: false,
            topic: None,
        };
        let err = JsonLinesSink::file(&config).err().unwrap().to_string();
        assert!(
            err.starts_with("sink.path: cannot open /nonexistent-dir/x.jsonl"),
            "{err}"
        );
    }
}
