//! A record for this crate's unit tests. Generators for integration tests and benchmarks are in
//! the dev-only `voxsig-testkit` crate (`voxsig_testkit::records`), which cannot serve unit tests:
//! it links its own copy of this crate, whose `Record` is another type.

use std::time::Instant;

use bytes::Bytes;

use crate::{Headers, Record};

/// A small record: `message.created` on `topic`, payload `{"n":N}`.
pub(crate) fn record(topic: &str, n: u64) -> Record {
    Record {
        topic: topic.to_owned(),
        key: Some(format!("1/{n}")),
        payload: Bytes::from(format!("{{\"n\":{n}}}")),
        headers: Headers {
            event: "message.created".into(),
            event_label: "message.created",
            account_id: Some(1),
            received_at_ms: 1_700_000_000_000,
            event_id: None,
            replayed: false,
        },
        accepted_at: Instant::now(),
    }
}
