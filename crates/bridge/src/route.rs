//! From an event to a record: filters, topic and key templates, payload modes.
//!
//! Template values come from the network (event names) or from the platform's ids, so each is
//! sanitised for the sink's topic rules before it is put in: the router renders with the
//! [`TopicRules`] the sink configuration names (defined, with the one [`Template`] type, in
//! `voxsig_sinks::topic`). A value holding `/`, `+`, `#`, a control character or a Unicode
//! non-character can never add a level or a wildcard to an MQTT topic, nor make the broker close
//! the connection, and Kafka topics keep to `[a-zA-Z0-9._-]`. The rendered topic is then
//! checked against the same rules once more.

use crate::catchup::ledger::{EventDigest, ReceiverClass};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::hash::{Hash, Hasher};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use voxsig_protocol::{EventKind, EventRef};
use voxsig_sinks::cloudevents::{self, CloudEvents};
use voxsig_sinks::{EventId, Headers, Record};

pub use voxsig_sinks::topic::{Charset, Context, Template, TemplateError, TopicRules, Var, NONE};

/// Include/exclude patterns over event names; `*` matches any run of characters.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    include: Vec<String>,
    exclude: Vec<String>,
}

/// An empty include/exclude pattern: it would match nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an empty pattern matches nothing")]
pub struct EmptyPattern {
    /// `include` or `exclude`.
    pub list: &'static str,
    /// Its position in the list.
    pub index: usize,
}

impl EmptyPattern {
    /// The configuration key it sits at, e.g. `route.exclude[0]`.
    pub fn key(&self) -> String {
        format!("route.{}[{}]", self.list, self.index)
    }
}

impl EventFilter {
    /// Builds a filter; an empty pattern is an error naming its list (`include` or `exclude`).
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self, EmptyPattern> {
        for (list, patterns) in [("include", include), ("exclude", exclude)] {
            if let Some(index) = patterns.iter().position(|p| p.is_empty()) {
                return Err(EmptyPattern { list, index });
            }
        }
        Ok(EventFilter {
            include: include.to_vec(),
            exclude: exclude.to_vec(),
        })
    }

    /// Whether an event passes.
    pub fn allows(&self, event: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|p| glob(p, event)))
            && !self.exclude.iter().any(|p| glob(p, event))
    }
}

/// `*`-only glob matching.
pub fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// What a record's payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadMode {
    /// The event's `data`, byte-identical.
    #[default]
    Raw,
    /// `{"event":…,"account_id":…,"received_at":"…","event_id":"…","replayed":false,"data":<data>}`.
    Envelope,
    /// CloudEvents 1.0 in each sink's binding mode (`voxsig_sinks::cloudevents`): structured
    /// (the JSON event, rendered here) or binary (the data; the sink adds the attributes).
    #[serde(rename = "cloudevents")]
    CloudEvents,
}

/// Why an event did not become a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unrouted {
    /// The rendered topic broke the sink's rules.
    InvalidTopic(voxsig_sinks::TopicError),
}

/// The receiving subscription, as the router needs it.
#[derive(Debug, Clone)]
pub struct Receiver {
    /// The configured account of the subscription (the fallback when `data` has none).
    pub account_id: u64,
    /// The user, for user tokens.
    pub user_id: Option<u64>,
    /// The account entry's labels.
    pub labels: BTreeMap<String, String>,
}

/// Turns events into records.
pub struct Router {
    topic: Template,
    /// `None` for a sink that has no keys ([`Router::without_key`]).
    key: Option<Template>,
    filter: EventFilter,
    payload: PayloadMode,
    /// The sink's topic rules: values are sanitised and topics checked with them.
    rules: TopicRules,
    /// CloudEvents structured mode: the event JSON is the payload.
    structured: Option<CloudEvents>,
    /// The variables of the topic and key whose values come from the receiving subscription.
    receiver_vars: Vec<Var>,
    /// The filter's verdict on each catalogued kind's canonical name, in `EventKind::ALL`
    /// order: the live path looks it up instead of matching the patterns per event.
    allowed_kinds: Vec<bool>,
}

impl Router {
    /// A router rendering and checking topics with the sink's `rules`.
    pub fn new(
        topic: Template,
        key: Template,
        filter: EventFilter,
        payload: PayloadMode,
        rules: TopicRules,
    ) -> Self {
        let receiver_vars = receiver_vars(&topic, Some(&key));
        let allowed_kinds = EventKind::ALL
            .iter()
            .map(|kind| kind.name().is_some_and(|name| filter.allows(name)))
            .collect();
        Router {
            topic,
            key: Some(key),
            filter,
            allowed_kinds,
            payload,
            rules,
            structured: None,
            receiver_vars,
        }
    }

    /// For a sink that has no keys (MQTT): records carry no key, none is rendered, and the key
    /// template's variables no longer tell copies apart (they render to the same message).
    pub fn without_key(mut self) -> Self {
        self.key = None;
        self.receiver_vars = receiver_vars(&self.topic, None);
        self
    }

    /// With `payload = "cloudevents"`: how records carry the attributes. In structured mode the
    /// router renders the event JSON; in binary mode the payload is the data and the sink adds
    /// the attributes.
    pub fn with_cloudevents(mut self, cloudevents: CloudEvents, mode: cloudevents::Mode) -> Self {
        self.structured = (mode == cloudevents::Mode::Structured).then_some(cloudevents);
        self
    }

    /// Whether the filter lets an event name through (checked before any other work).
    pub fn allows(&self, event: &str) -> bool {
        self.filter.allows(event)
    }

    /// [`Router::allows`] for a decoded event: a catalogued kind under its canonical name is
    /// looked up (the filter depends on the name only); an alias or unknown name is matched.
    pub fn allows_event(&self, event: &EventRef<'_>) -> bool {
        match event.kind.name() {
            Some(name) if name == event.name => self
                .allowed_kinds
                .get(event.kind as usize)
                .copied()
                .unwrap_or_else(|| self.filter.allows(name)),
            _ => self.filter.allows(&event.name),
        }
    }

    /// What of the receiving subscription shows in a record: two copies of one broadcast
    /// received by subscriptions of the same class render to the same topic and key, copies
    /// received by subscriptions of different classes (`{user}` or `{label.NAME}` in a template,
    /// with different values) are different records, each published. `0` when the templates
    /// use nothing of the subscription (every copy is the same record).
    pub fn receiver_class(&self, receiver: &Receiver) -> ReceiverClass {
        if self.receiver_vars.is_empty() {
            return 0;
        }
        let mut h = std::hash::DefaultHasher::new();
        for var in &self.receiver_vars {
            match var {
                Var::User => receiver.user_id.hash(&mut h),
                Var::Label(name) => receiver.labels.get(name).hash(&mut h),
                _ => {}
            }
        }
        // Never the ledger's "any class" value (all ones).
        h.finish() >> 1
    }

    /// The account an event belongs to: its `data.account_id`, else the subscription's.
    pub fn account_of(event: &EventRef<'_>, receiver: &Receiver) -> u64 {
        event.account_id.unwrap_or(receiver.account_id)
    }

    /// Renders one event into a record. The filter is not applied here: callers check
    /// [`Router::allows`] first, before any other work on the event.
    pub fn route(
        &self,
        event: &EventRef<'_>,
        receiver: &Receiver,
        received_at: SystemTime,
        accepted_at: Instant,
    ) -> Result<Record, Unrouted> {
        let digest = Self::digest(event, receiver);
        self.route_as(event, receiver, received_at, accepted_at, false, digest)
    }

    /// Renders one live event as [`Router::route`] does, with its digest computed once by the
    /// caller (who deduplicated by it).
    pub fn route_live(
        &self,
        event: &EventRef<'_>,
        receiver: &Receiver,
        arrival: Arrival,
    ) -> Result<Record, Unrouted> {
        self.route_as(
            event,
            receiver,
            arrival.received_at,
            arrival.accepted_at,
            false,
            arrival.digest,
        )
    }

    /// The digest of an event (its event id and dedup key), one pass over its payload at most.
    pub fn digest(event: &EventRef<'_>, receiver: &Receiver) -> EventDigest {
        EventDigest::of(
            Self::account_of(event, receiver),
            &event.name,
            event.message_id,
            event.data.as_bytes(),
        )
    }

    /// Renders one event recovered by a catch-up: as [`Router::route`], marked replayed.
    pub fn route_replayed(
        &self,
        event: &EventRef<'_>,
        receiver: &Receiver,
        received_at: SystemTime,
        accepted_at: Instant,
    ) -> Result<Record, Unrouted> {
        let digest = Self::digest(event, receiver);
        self.route_as(event, receiver, received_at, accepted_at, true, digest)
    }

    #[allow(clippy::too_many_arguments)] // The private meeting point of the three entries above.
    fn route_as(
        &self,
        event: &EventRef<'_>,
        receiver: &Receiver,
        received_at: SystemTime,
        accepted_at: Instant,
        replayed: bool,
        digest: EventDigest,
    ) -> Result<Record, Unrouted> {
        let account = Self::account_of(event, receiver);
        let ctx = Context {
            account,
            event: &event.name,
            user: receiver.user_id,
            conversation: event.conversation_id,
            inbox: event.inbox_id,
            labels: &receiver.labels,
        };
        let topic = self.rules.render(&self.topic, &ctx);
        self.rules.check(&topic).map_err(Unrouted::InvalidTopic)?;
        let key = self.key.as_ref().map(|key| key.render(&ctx, Charset::Any));
        let received_at_ms = received_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let headers = Headers {
            event: Headers::event_name(event.kind, &event.name),
            event_label: event.kind.name().unwrap_or("other"),
            account_id: Some(account),
            received_at_ms,
            event_id: Some(digest.event_id()),
            replayed,
        };
        let payload = match (self.payload, &self.structured) {
            // One copy, on purpose: a slice of the frame would share tungstenite's read
            // chunk (frames are split off one allocation), so a record held in the buffer
            // would keep the whole chunk alive, with every copy and filtered frame in it.
            (PayloadMode::Raw, _) | (PayloadMode::CloudEvents, None) => {
                Bytes::copy_from_slice(event.data.as_bytes())
            }
            (PayloadMode::Envelope, _) => envelope(
                &event.name,
                account,
                received_at,
                &digest.event_id(),
                replayed,
                event.data,
            ),
            (PayloadMode::CloudEvents, Some(ce)) => ce.structured(&headers, event.data.as_bytes()),
        };
        Ok(Record {
            topic,
            key,
            payload,
            headers,
            accepted_at,
        })
    }
}

/// The variables of the topic and key templates whose values come from the receiving
/// subscription, each once.
fn receiver_vars(topic: &Template, key: Option<&Template>) -> Vec<Var> {
    let mut vars: Vec<Var> = Vec::new();
    for var in topic
        .receiver_vars()
        .chain(key.into_iter().flat_map(Template::receiver_vars))
    {
        if !vars.contains(var) {
            vars.push(var.clone());
        }
    }
    vars
}

/// What the live path knows of an event besides the event itself.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// When the frame was read (wall clock, for the record's `received_at`).
    pub received_at: SystemTime,
    /// When the event was accepted (monotonic, for latency).
    pub accepted_at: Instant,
    /// The event's digest, computed once.
    pub digest: EventDigest,
}

/// Builds the envelope without parsing `data`: it is spliced in as the bytes it is.
fn envelope(
    event: &str,
    account: u64,
    received_at: SystemTime,
    event_id: &EventId,
    replayed: bool,
    data: &str,
) -> Bytes {
    let mut out = String::with_capacity(data.len() + event.len() + 160);
    out.push_str("{\"event\":");
    out.push_str(&serde_json::to_string(event).unwrap_or_else(|_| "\"\"".into()));
    let _ = write!(
        out,
        ",\"account_id\":{account},\"received_at\":\"{}\",\"event_id\":\"{event_id}\",\"replayed\":{replayed},\"data\":",
        humantime::format_rfc3339_millis(received_at)
    );
    out.push_str(data);
    out.push('}');
    Bytes::from(out)
}

#[cfg(test)]
mod tests;
