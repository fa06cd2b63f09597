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
        let line = format!(
            "{at} {topic} key={key} {shown}",
            topic = record.topic,
            key = record.key.as_deref().unwrap_or("-"),
        );
        // A key rendered from an event name may hold control characters: never to the terminal.
        crate::logging::escape_controls(&line).into_owned()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostile_key_cannot_drive_the_terminal() {
        let record = voxsig_sinks::Record {
            topic: "voxsig/1/x".into(),
            key: Some("\u{1b}[2J\nforged".into()),
            payload: bytes::Bytes::from_static(b"{}"),
            headers: voxsig_sinks::Headers {
                event: "x".into(),
                event_label: "other",
                account_id: Some(1),
                received_at_ms: 0,
                event_id: None,
                replayed: false,
            },
            accepted_at: std::time::Instant::now(),
        };
        let line = TailSink::new(None).line(&record);
        assert!(!line.contains('\u{1b}') && !line.contains('\n'), "{line:?}");
        assert!(line.contains("key=\\u{1b}[2J\\nforged"), "{line}");
    }
}
