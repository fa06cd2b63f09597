//! `voxsig-bridge tail`: a sink that prints each event on the terminal, for debugging a config
//! against the live platform without a broker.

use futures_util::future::BoxFuture;
use std::io::Write;
use voxsig_sinks::{buffer::BufferReader, DrainReport, Sink};

/// Prints one line per record: time, topic, key, payload (cut to `max_payload` characters).
pub struct TailSink {
    max_payload: Option<usize>,
}

impl TailSink {
    /// A tail printing payloads whole (`None`) or cut to a length.
    pub fn new(max_payload: Option<usize>) -> Self {
        TailSink { max_payload }
    }

    fn line(&self, record: &voxsig_sinks::Record) -> String {
        let payload = String::from_utf8_lossy(&record.payload);
        let shown = match self.max_payload {
            Some(max) if payload.chars().count() > max => {
                format!("{}…", payload.chars().take(max).collect::<String>())
            }
            _ => payload.into_owned(),
        };
        let at = humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH
                + std::time::Duration::from_millis(record.headers.received_at_ms.max(0) as u64),
        );
        format!(
            "{at} {topic} key={key} {shown}",
            topic = record.topic,
            key = record.key.as_deref().unwrap_or("-"),
        )
    }
}

impl Sink for TailSink {
    fn kind(&self) -> &'static str {
        "tail"
    }

    fn run(self: Box<Self>, mut reader: BufferReader) -> BoxFuture<'static, DrainReport> {
        Box::pin(async move {
            while let Some(claim) = reader.recv().await {
                let line = self.line(claim.record());
                let mut out = std::io::stdout().lock();
                // A closed terminal is not worth failing over: the record counts as shown.
                let _ = writeln!(out, "{line}");
                reader.ack(claim);
            }
            reader.report()
        })
    }
}
