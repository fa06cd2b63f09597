//! Sinks for benches and tests that measure the bridge without a broker.

use futures_util::future::BoxFuture;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use voxsig_sinks::{buffer::BufferReader, DrainReport, Sink};

/// Acknowledges every record at once, counting them in the shared counter.
pub struct NullSink {
    counter: Arc<AtomicU64>,
    keyed: bool,
}

impl NullSink {
    /// Standing in for a sink that writes keys (Kafka, the JSON-lines sinks).
    pub fn keyed(counter: Arc<AtomicU64>) -> Self {
        NullSink {
            counter,
            keyed: true,
        }
    }

    /// Standing in for MQTT, which has no keys: the router renders none.
    pub fn keyless(counter: Arc<AtomicU64>) -> Self {
        NullSink {
            counter,
            keyed: false,
        }
    }
}

impl Sink for NullSink {
    fn kind(&self) -> &'static str {
        "null"
    }

    fn uses_key(&self) -> bool {
        self.keyed
    }

    fn run(self: Box<Self>, mut reader: BufferReader) -> BoxFuture<'static, DrainReport> {
        Box::pin(async move {
            while let Some(claim) = reader.recv().await {
                reader.ack(claim);
                self.counter.fetch_add(1, Ordering::Relaxed);
            }
            reader.report()
        })
    }
}
