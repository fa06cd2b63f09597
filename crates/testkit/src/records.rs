//! Record generators for tests and benchmarks: realistic payloads over many topics and keys.

use std::time::Instant;

use bytes::Bytes;

use voxsig_sinks::{Headers, Record};

/// Events the generator cycles through (with their metrics labels); `presence.update` included.
pub const EVENTS: &[&str] = &[
    "message.created",
    "message.updated",
    "conversation.created",
    "conversation.status_changed",
    "conversation.typing_on",
    "presence.update",
    "assignee.changed",
    "notification.created",
];

/// A small record for unit tests: `message.created` on `topic`, payload `{"n":N}`.
pub fn record(topic: &str, n: u64) -> Record {
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

/// The topic layout of generated records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `<prefix>/<account>/<event>`.
    Mqtt,
    /// `<prefix>/<account>/<event with '.' as '_'>` (brokers that refuse '.' in topics, such
    /// as nats-server before 2.10).
    MqttUnderscored,
    /// `<prefix>.<account>.<event>`.
    Kafka,
}

/// Generates records for `accounts` accounts with `conversations` conversations each; record `n`
/// carries `"seq":n` in its payload so a consumer can check counts, order and duplicates.
#[derive(Debug, Clone)]
pub struct Generator {
    /// Topic prefix (`voxsig` by default).
    pub prefix: String,
    /// Topic layout.
    pub layout: Layout,
    /// Number of accounts.
    pub accounts: u64,
    /// Conversations per account.
    pub conversations: u64,
    /// Padding so the payload is about this many bytes.
    pub payload_bytes: usize,
}

impl Generator {
    /// A generator with 7 accounts, 13 conversations each and ~400-byte payloads.
    pub fn new(prefix: &str, layout: Layout) -> Self {
        Generator {
            prefix: prefix.to_owned(),
            layout,
            accounts: 7,
            conversations: 13,
            payload_bytes: 400,
        }
    }

    /// The account of record `n`.
    pub fn account(&self, n: u64) -> u64 {
        n % self.accounts + 1
    }

    /// The conversation of record `n`.
    pub fn conversation(&self, n: u64) -> u64 {
        (n / self.accounts) % self.conversations + 1
    }

    /// The event name of record `n`.
    pub fn event(&self, n: u64) -> &'static str {
        EVENTS[(n / (self.accounts * self.conversations)) as usize % EVENTS.len()]
    }

    /// The topic of record `n`.
    pub fn topic(&self, n: u64) -> String {
        let (account, event) = (self.account(n), self.event(n));
        match self.layout {
            Layout::Mqtt => format!("{}/{account}/{event}", self.prefix),
            Layout::MqttUnderscored => {
                format!("{}/{account}/{}", self.prefix, event.replace('.', "_"))
            }
            Layout::Kafka => format!("{}.{account}.{}", self.prefix, event.replace('.', "_")),
        }
    }

    /// Record `n`.
    pub fn record(&self, n: u64) -> Record {
        let account = self.account(n);
        let conversation = self.conversation(n);
        let event = self.event(n);
        let mut payload = format!(
            "{{\"seq\":{n},\"account_id\":{account},\"conversation_id\":{conversation},\
             \"event\":\"{event}\",\"sender\":{{\"id\":42,\"name\":\"Agent Smith\",\"type\":\"user\"}},\
             \"content\":\"Hello — ünïcode \\\"quoted\\\" text\",\"pad\":\""
        );
        while payload.len() + 2 < self.payload_bytes {
            payload.push('x');
        }
        payload.push_str("\"}");
        Record {
            topic: self.topic(n),
            key: Some(format!("{account}/{conversation}")),
            payload: Bytes::from(payload),
            headers: Headers {
                event: event.into(),
                event_label: event,
                account_id: Some(account),
                received_at_ms: 1_700_000_000_000 + n as i64,
                event_id: None,
                replayed: false,
            },
            accepted_at: Instant::now(),
        }
    }
}

/// Reads `"seq":N` back out of a generated payload.
pub fn seq_of(payload: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(payload).ok()?;
    let start = text.find("\"seq\":")? + 6;
    let digits: String = text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_payloads_are_json_and_carry_their_seq() {
        let g = Generator::new("voxsig", Layout::Kafka);
        for n in [0, 1, 500, 12_345] {
            let r = g.record(n);
            let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
            assert_eq!(v["seq"], n);
            assert_eq!(seq_of(&r.payload), Some(n));
            voxsig_sinks::topic::check_kafka_topic(&r.topic).unwrap();
            assert!(r.payload.len() >= 398);
        }
    }
}
