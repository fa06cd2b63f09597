//! Sinks for benches and tests that measure the bridge without a broker.

use futures_util::future::BoxFuture;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use voxsig_sinks::{buffer::BufferReader, DrainReport, Sink};

/// Acknowledges every record at once, counting them in the shared counter.
pub struct NullSink(pub Arc<AtomicU64>);

impl Sink for NullSink {
    fn kind(&self) -> &'static str {
        "null"
    }

    fn run(self: Box<Self>, mut reader: BufferReader) -> BoxFuture<'static, DrainReport> {
        Box::pin(async move {
            while let Some(claim) = reader.recv().await {
                reader.ack(claim);
                self.0.fetch_add(1, Ordering::Relaxed);
            }
            reader.report()
        })
    }
}
