//! Event payloads shaped like the platform's (see the seeds and the captured Rails frames),
//! written straight into a `String`: the generator must not be the bottleneck of a benchmark.
//!
//! Every `data` object carries the top-level `account_id` and, last, `"sim_seq": <u64>`, the
//! per-account sequence number that lets a consumer check exactly-once delivery and order.
//! Timestamps are deliberately mixed as on the real platform: `created_at` is unix seconds, a
//! message's `updated_at` an ISO-8601 string, a conversation's `updated_at` a float.

use crate::rng::Rng;
use crate::world::{Account, Contact, User};
use std::fmt::Write as _;
use std::ops::Range;
use voxsig_protocol::catalogue::PayloadShape;
use voxsig_protocol::EventKind;

/// Writes a JSON object field by field.
struct Obj<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'a> Obj<'a> {
    fn new(out: &'a mut String) -> Self {
        out.push('{');
        Obj { out, first: true }
    }

    fn key(&mut self, key: &str) -> &mut String {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        self.out.push('"');
        self.out.push_str(key);
        self.out.push_str("\":");
        self.out
    }

    fn num(&mut self, key: &str, value: u64) -> &mut Self {
        push_u64(self.key(key), value);
        self
    }

    fn str(&mut self, key: &str, value: &str) -> &mut Self {
        push_str(self.key(key), value);
        self
    }

    fn opt_str(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        match value {
            Some(v) => self.str(key, v),
            None => self.raw(key, "null"),
        }
    }

    fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        self.raw(key, if value { "true" } else { "false" })
    }

    fn raw(&mut self, key: &str, json: &str) -> &mut Self {
        self.key(key).push_str(json);
        self
    }

    fn with(&mut self, key: &str, write: impl FnOnce(&mut String)) -> &mut Self {
        write(self.key(key));
        self
    }

    fn end(&mut self) {
        self.out.push('}');
    }
}

/// Appends a decimal number (faster than `write!`, which dominated profiles).
pub(crate) fn push_u64(out: &mut String, mut value: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&buf[i..]).unwrap_or("0"));
}

/// The timestamps of one second, rendered once and reused by every event in that second.
#[derive(Debug, Clone, Default)]
pub(crate) struct Times {
    /// Unix seconds.
    pub(crate) now: u64,
    /// `now` as an ISO-8601 string literal.
    iso_now: String,
    /// A day earlier, as an ISO-8601 string literal.
    iso_day_ago: String,
    /// Five minutes earlier in Rails' log style (`2026-11-21 22:27:09 UTC`), as a literal.
    initiated: String,
}

impl Times {
    pub(crate) fn at(now: u64) -> Times {
        let render = |t: u64, rails_log_style: bool| {
            let mut s = String::with_capacity(32);
            push_time(&mut s, t, rails_log_style);
            s
        };
        Times {
            now,
            iso_now: render(now, false),
            iso_day_ago: render(now.saturating_sub(86_400), false),
            initiated: render(now.saturating_sub(300), true),
        }
    }
}

/// Appends a JSON string literal.
pub(crate) fn push_str(out: &mut String, s: &str) {
    out.push('"');
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push_str(s);
    } else {
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => out.push(c),
            }
        }
    }
    out.push('"');
}

/// Unix seconds as `2026-11-21T22:32:09.000Z` (`sep` `T`, suffix `.000Z`) or
/// `2026-11-21 22:32:09 UTC`.
fn push_time(out: &mut String, unix: u64, rails_log_style: bool) {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let _ = if rails_log_style {
        write!(
            out,
            "\"{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02} UTC\""
        )
    } else {
        write!(
            out,
            "\"{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.000Z\""
        )
    };
}

const WORDS: &[&str] = &[
    "hello",
    "please",
    "help",
    "today",
    "urgent",
    "update",
    "refund",
    "delivery",
    "payment",
    "order",
    "subscription",
    "cancel",
    "issue",
    "thanks",
    "invoice",
    "account",
    "password",
    "shipping",
    "tracking",
    "number",
    "still",
    "waiting",
    "could",
    "you",
    "check",
    "again",
    "when",
    "will",
    "arrive",
    "my",
    "the",
    "package",
    "was",
    "damaged",
    "replacement",
    "soon",
];

/// Who wrote a message or is typing.
#[derive(Clone, Copy)]
pub(crate) enum Actor<'a> {
    /// An agent or admin.
    User(&'a User),
    /// The conversation's contact.
    Contact(&'a Contact),
}

/// Everything one event's payload is made from.
pub(crate) struct Scene<'a> {
    pub(crate) account: &'a Account,
    /// The conversation's contact (for contact events: the contact concerned).
    pub(crate) contact: &'a Contact,
    pub(crate) conversation_id: u64,
    /// The conversation's status (the store's; for `conversation.status_changed`, the new one).
    pub(crate) status: &'a str,
    pub(crate) assignee: Option<&'a User>,
    /// The agent acting (notification recipient, typing agent, message author for outgoing).
    pub(crate) agent: &'a User,
    /// Message authored (or typing) by the contact rather than the agent.
    pub(crate) by_contact: bool,
    /// A private note (never sent to the contact).
    pub(crate) private: bool,
    pub(crate) times: &'a Times,
    pub(crate) now_ms: u16,
    pub(crate) message_id: u64,
    /// The message's `created_at` when it was created earlier (updates); `None`: now.
    pub(crate) message_created_at: Option<u64>,
    pub(crate) notification_id: u64,
    pub(crate) sim_seq: u64,
}

impl Scene<'_> {
    fn actor(&self) -> Actor<'_> {
        if self.by_contact {
            Actor::Contact(self.contact)
        } else {
            Actor::User(self.agent)
        }
    }
}

fn user_obj(out: &mut String, u: &User) {
    Obj::new(out)
        .num("id", u.id)
        .str("name", &u.name)
        .str("available_name", &u.name)
        .str("avatar_url", "")
        .str("type", "user")
        .str("availability_status", &u.availability)
        .str("thumbnail", "")
        .end();
}

/// A user's `push_event_data` as JSON text.
pub(crate) fn user_json(u: &User) -> String {
    let mut out = String::with_capacity(160);
    user_obj(&mut out, u);
    out
}

/// A contact's `push_event_data` as JSON text.
pub(crate) fn contact_json(c: &Contact) -> String {
    let mut out = String::with_capacity(320);
    contact_obj(&mut out, c, None);
    out
}

fn contact_obj(out: &mut String, c: &Contact, account_id: Option<u64>) {
    let mut o = Obj::new(out);
    o.raw(
        "additional_attributes",
        r#"{"city":"","country":"","company_name":""}"#,
    )
    .raw("custom_attributes", "{}")
    .opt_str("email", c.email.as_deref())
    .num("id", c.id)
    .raw("identifier", "null")
    .str("name", &c.name)
    .opt_str("phone_number", c.phone_number.as_deref())
    .str("thumbnail", "")
    .bool("blocked", false)
    .str("type", "contact");
    if let Some(a) = account_id {
        o.num("account_id", a);
    }
    o.end();
}

fn actor_obj(out: &mut String, actor: Actor<'_>) {
    match actor {
        Actor::User(u) => user_obj(out, u),
        Actor::Contact(c) => contact_obj(out, c, None),
    }
}

fn push_hex4(out: &mut String, v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for shift in [12, 8, 4, 0] {
        out.push(HEX[(v >> shift & 0xf) as usize] as char);
    }
}

fn source_id(out: &mut String, contact: &Contact) {
    out.push_str("\"3f1c2a9e-");
    push_hex4(out, contact.id >> 16 & 0xffff);
    out.push_str("-4a55-9a1e-1b2c3d4e");
    push_hex4(out, contact.id & 0xffff);
    out.push('"');
}

/// Writes a string literal of `words` words; never an escape (the message store takes the text
/// between the quotes as is).
fn content(out: &mut String, rng: &mut Rng, words: usize) -> usize {
    let start = out.len();
    out.push('"');
    for i in 0..words {
        let w = rng.pick(WORDS);
        if i == 0 {
            let mut chars = w.chars();
            if let Some(c) = chars.next() {
                out.push(c.to_ascii_uppercase());
                out.push_str(chars.as_str());
            }
        } else {
            out.push(' ');
            out.push_str(w);
        }
    }
    out.push_str(".\"");
    start
}

/// Writes a message object; returns where its `content` string literal lies in `out`.
fn message_obj(out: &mut String, s: &Scene<'_>, rng: &mut Rng, with_seq: bool) -> Range<usize> {
    let words = 20 + rng.index(70);
    let mut o = Obj::new(out);
    o.num("id", s.message_id);
    let text_at = o.key("content").len();
    content(o.out, rng, words);
    let text = o.out[text_at..].to_owned();
    let span = text_at..o.out.len();
    o.num("account_id", s.account.id)
        .num("inbox_id", s.account.inbox_id)
        .num("conversation_id", s.conversation_id)
        .num("message_type", u64::from(!s.by_contact))
        .num("created_at", s.message_created_at.unwrap_or(s.times.now))
        .raw("updated_at", &s.times.iso_now)
        .bool("private", s.private)
        .str("status", "sent")
        .raw("source_id", "null")
        .str("content_type", "text")
        .raw("content_attributes", "{}")
        .str("sender_type", if s.by_contact { "Contact" } else { "User" })
        .num(
            "sender_id",
            if s.by_contact {
                s.contact.id
            } else {
                s.agent.id
            },
        )
        .raw("external_source_ids", "{}")
        .raw("additional_attributes", "{}")
        .raw("processed_message_content", &text)
        .raw("sentiment", "{}")
        .with("conversation", |out| {
            let mut c = Obj::new(out);
            match s.assignee {
                Some(a) => c.num("assignee_id", a.id),
                None => c.raw("assignee_id", "null"),
            };
            c.num("unread_count", u64::from(s.by_contact))
                .num("last_activity_at", s.times.now)
                .with("contact_inbox", |out| {
                    out.push_str("{\"source_id\":");
                    source_id(out, s.contact);
                    out.push('}');
                })
                .end();
        })
        .with("sender", |out| actor_obj(out, s.actor()));
    if with_seq {
        o.num("sim_seq", s.sim_seq);
    }
    o.end();
    span
}

fn conversation_obj(
    out: &mut String,
    s: &Scene<'_>,
    rng: &mut Rng,
    status: &str,
    team: bool,
    top_level: bool,
) {
    let c = s.contact;
    let now = s.times.now;
    let mut o = Obj::new(out);
    o.raw(
        "additional_attributes",
        r#"{"browser":{"device_name":"Unknown","browser_name":"Chrome","platform_name":"Linux","browser_version":"124.0.0.0","platform_version":"0"},"referer":"https://voxsig.example/pricing","initiated_at":{"timestamp":"#,
    );
    o.out.push_str(&s.times.initiated);
    o.out.push_str("}}");
    o.bool("can_reply", true)
        .str("channel", "Channel::WebWidget")
        .with("contact_inbox", |out| {
            Obj::new(out)
                .num("id", 1_000_000 + c.id)
                .num("contact_id", c.id)
                .num("inbox_id", s.account.inbox_id)
                .with("source_id", |out| source_id(out, c))
                .raw("created_at", &s.times.iso_day_ago)
                .raw("updated_at", &s.times.iso_day_ago)
                .bool("hmac_verified", false)
                .str("pubsub_token", &c.pubsub_token)
                .end();
        })
        .num("id", s.conversation_id)
        .num("inbox_id", s.account.inbox_id)
        .with("messages", |out| {
            out.push('[');
            let first = Scene {
                by_contact: true,
                private: false,
                message_id: crate::store::PRE_RUN_MESSAGE_BASE + s.conversation_id,
                message_created_at: None,
                ..*s
            };
            message_obj(out, &first, rng, false);
            out.push(']');
        })
        .raw(
            "labels",
            if s.conversation_id % 3 == 0 {
                r#"["billing"]"#
            } else {
                "[]"
            },
        )
        .with("meta", |out| {
            let mut m = Obj::new(out);
            m.with("sender", |out| contact_obj(out, c, None));
            match s.assignee {
                Some(a) => m.with("assignee", |out| user_obj(out, a)),
                None => m.raw("assignee", "null"),
            };
            m.raw(
                "team",
                if team {
                    r#"{"id":1,"name":"support"}"#
                } else {
                    "null"
                },
            )
            .bool("hmac_verified", false)
            .end();
        })
        .str("status", status)
        .raw("custom_attributes", "{}")
        .raw("snoozed_until", "null")
        .num("unread_count", 1)
        .raw("first_reply_created_at", "null")
        .raw("priority", "null")
        .num("waiting_since", now - 120)
        .num("agent_last_seen_at", now - 60)
        .num("contact_last_seen_at", now - 30)
        .num("last_activity_at", now)
        .num("timestamp", now)
        .num("created_at", now - 300)
        .with("updated_at", |out| {
            push_u64(out, now);
            out.push('.');
            let ms = u64::from(s.now_ms);
            out.push((b'0' + (ms / 100 % 10) as u8) as char);
            out.push((b'0' + (ms / 10 % 10) as u8) as char);
            out.push((b'0' + (ms % 10) as u8) as char);
        });
    if top_level {
        o.num("account_id", s.account.id).num("sim_seq", s.sim_seq);
    }
    o.end();
}

fn typing(out: &mut String, s: &Scene<'_>, rng: &mut Rng, on: bool) {
    let mut o = Obj::new(out);
    o.with("conversation", |out| {
        conversation_obj(out, s, rng, s.status, false, false)
    })
    .with("user", |out| actor_obj(out, s.actor()));
    if on {
        o.bool("is_private", s.private);
    }
    o.num("account_id", s.account.id)
        .num("sim_seq", s.sim_seq)
        .end();
}

fn notification(out: &mut String, s: &Scene<'_>, rng: &mut Rng, kind: EventKind) {
    const TYPES: &[(&str, &str)] = &[
        (
            "conversation_creation",
            "A new conversation (#{}) has been created in Website",
        ),
        (
            "conversation_assignment",
            "A new conversation (#{}) has been assigned to you",
        ),
        (
            "assigned_conversation_new_message",
            "New message in your assigned conversation (#{})",
        ),
        (
            "conversation_mention",
            "You have been mentioned in conversation (#{})",
        ),
    ];
    let (ty, title) = *rng.pick(TYPES);
    let mut o = Obj::new(out);
    o.with("notification", |out| {
        let mut n = Obj::new(out);
        n.num("id", s.notification_id)
            .str("notification_type", ty)
            .str("primary_actor_type", "Conversation")
            .num("primary_actor_id", s.conversation_id);
        if kind == EventKind::NotificationUpdated {
            n.num("read_at", s.times.now);
        } else {
            n.raw("read_at", "null");
        }
        n.with("secondary_actor", |out| user_obj(out, s.agent))
            .with("user", |out| user_obj(out, s.agent))
            .num("created_at", s.times.now)
            .num("last_activity_at", s.times.now)
            .raw("snoozed_until", "null")
            .raw("meta", "{}")
            .num("account_id", s.account.id)
            .with("primary_actor", |out| {
                conversation_obj(out, s, rng, s.status, false, false)
            })
            .with("push_message_title", |out| {
                push_str(out, &title.replace("{}", &s.conversation_id.to_string()))
            })
            .end();
    })
    .num("unread_count", 1 + s.notification_id % 5)
    .num("count", 10 + s.notification_id % 40)
    .num("account_id", s.account.id)
    .num("sim_seq", s.sim_seq)
    .end();
}

/// `{account_id, users, contacts?}`: the `contacts` map is left out when `contacts` is `None`
/// (what a contact subscriber receives).
pub(crate) fn presence(
    out: &mut String,
    account_id: u64,
    users: &[(u64, &str)],
    contacts: Option<&[(u64, &str)]>,
    sim_seq: u64,
) {
    fn map(out: &mut String, entries: &[(u64, &str)]) {
        out.push('{');
        for (i, (id, status)) in entries.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push('"');
            push_u64(out, *id);
            out.push_str("\":");
            push_str(out, status);
        }
        out.push('}');
    }
    let mut o = Obj::new(out);
    o.num("account_id", account_id)
        .with("users", |out| map(out, users));
    if let Some(contacts) = contacts {
        o.with("contacts", |out| map(out, contacts));
    }
    o.num("sim_seq", sim_seq).end();
}

/// Renders the `data` of one event into `out`; for a message event, returns where the message's
/// `content` string literal lies in `out`.
pub(crate) fn render(
    out: &mut String,
    kind: EventKind,
    s: &Scene<'_>,
    users_online: &[(u64, &str)],
    rng: &mut Rng,
) -> Option<Range<usize>> {
    match kind.shape() {
        PayloadShape::Conversation => {
            conversation_obj(out, s, rng, s.status, kind == EventKind::TeamChanged, true);
        }
        PayloadShape::Message => return Some(message_obj(out, s, rng, true)),
        PayloadShape::Typing => typing(out, s, rng, kind == EventKind::ConversationTypingOn),
        PayloadShape::Contact => {
            // The contact object with the account and the sequence appended.
            contact_obj(out, s.contact, Some(s.account.id));
            out.pop();
            out.push_str(",\"sim_seq\":");
            push_u64(out, s.sim_seq);
            out.push('}');
        }
        PayloadShape::Presence => {
            let contacts = [(s.contact.id, "online")];
            presence(out, s.account.id, users_online, Some(&contacts), s.sim_seq);
        }
        PayloadShape::Notification => notification(out, s, rng, kind),
        PayloadShape::Other => {
            let mut o = Obj::new(out);
            o.with("cache_keys", |out| {
                let mut keys = Obj::new(out);
                keys.num("label", s.times.now)
                    .num("inbox", s.times.now)
                    .num("team", s.times.now)
                    .end();
            })
            .num("account_id", s.account.id)
            .num("sim_seq", s.sim_seq)
            .end();
        }
    }
    None
}

/// Whether events of this kind name a conversation (and so may go to its contact).
pub(crate) fn has_conversation(kind: EventKind) -> bool {
    matches!(
        kind.shape(),
        PayloadShape::Conversation
            | PayloadShape::Message
            | PayloadShape::Typing
            | PayloadShape::Notification
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::{World, WorldSpec};
    use serde_json::Value;

    fn scene<'a>(w: &'a World, times: &'a Times, by_contact: bool, private: bool) -> Scene<'a> {
        Scene {
            account: &w.accounts[0],
            contact: &w.contacts[0],
            conversation_id: w.contacts[0].conversations[0],
            status: "open",
            assignee: Some(&w.users[0]),
            agent: &w.users[1],
            by_contact,
            private,
            times,
            now_ms: 123,
            message_id: 300_078,
            message_created_at: None,
            notification_id: 400_120,
            sim_seq: 42,
        }
    }

    fn fixture(name: &str) -> Value {
        let text = include_str!("../../protocol/tests/fixtures/actioncable-rails-6.1-frames.json");
        let frames: Value = serde_json::from_str(text).unwrap();
        let frame: Value = serde_json::from_str(frames[name].as_str().unwrap()).unwrap();
        frame["message"]["data"].clone()
    }

    /// Every key of the fixture object is present in ours, recursively, with the same JSON type
    /// (numbers may be integer or float as in the fixture's mixed timestamps).
    fn same_shape(fixture: &Value, ours: &Value, path: &str) {
        match (fixture, ours) {
            // Presence maps are keyed by ids: only their being objects matters.
            (Value::Object(_), Value::Object(_))
                if path.ends_with(".users") || path.ends_with(".contacts") => {}
            (Value::Object(f), Value::Object(o)) => {
                for (k, v) in f {
                    let Some(mine) = o.get(k) else {
                        panic!("{path}.{k} missing");
                    };
                    if !v.is_null() && !mine.is_null() {
                        same_shape(v, mine, &format!("{path}.{k}"));
                    }
                }
            }
            (Value::Array(f), Value::Array(o)) => {
                if let (Some(f0), Some(o0)) = (f.first(), o.first()) {
                    same_shape(f0, o0, &format!("{path}[0]"));
                }
            }
            (f, o) => assert_eq!(
                std::mem::discriminant(f),
                std::mem::discriminant(o),
                "{path}: {f} vs {o}"
            ),
        }
    }

    fn rendered(kind: EventKind, by_contact: bool) -> (String, Value) {
        let w = World::generate(&WorldSpec::default()).unwrap();
        let times = Times::at(1_795_300_329);
        let mut out = String::new();
        render(
            &mut out,
            kind,
            &scene(&w, &times, by_contact, false),
            &[(1, "online")],
            &mut Rng::new(5),
        );
        let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{kind}: {e}\n{out}"));
        (out, v)
    }

    #[test]
    fn every_catalogued_event_renders_valid_json_with_account_and_seq() {
        for kind in EventKind::ALL {
            let (_, v) = rendered(*kind, false);
            assert_eq!(v["account_id"], 1, "{kind}");
            assert_eq!(v["sim_seq"], 42, "{kind}");
        }
    }

    #[test]
    fn shapes_match_the_captured_frames() {
        let (text, ours) = rendered(EventKind::MessageCreated, false);
        same_shape(&fixture("message.created"), &ours, "message");
        assert!((900..2500).contains(&text.len()), "{}", text.len());
        let (_, ours) = rendered(EventKind::ConversationTypingOn, true);
        same_shape(&fixture("conversation.typing_on"), &ours, "typing");
        assert_eq!(ours["user"]["type"], "contact");
        let (_, ours) = rendered(EventKind::NotificationCreated, false);
        same_shape(&fixture("notification.created"), &ours, "notification");
        let (_, ours) = rendered(EventKind::PresenceUpdate, false);
        same_shape(&fixture("presence.update"), &ours, "presence");
    }

    #[test]
    fn conversation_ids_are_where_the_schema_puts_them() {
        let conv = World::generate(&WorldSpec::default()).unwrap().contacts[0].conversations[0];
        assert_eq!(
            rendered(EventKind::MessageCreated, true).1["conversation_id"],
            conv
        );
        assert_eq!(rendered(EventKind::AssigneeChanged, true).1["id"], conv);
        assert_eq!(
            rendered(EventKind::TeamChanged, true).1["meta"]["team"]["id"],
            1
        );
        assert_eq!(
            rendered(EventKind::ConversationTypingOff, true).1["conversation"]["id"],
            conv
        );
        let n = rendered(EventKind::NotificationCreated, true).1;
        assert_eq!(n["notification"]["primary_actor_type"], "Conversation");
        assert_eq!(n["notification"]["primary_actor_id"], conv);
    }

    #[test]
    fn timestamps_are_mixed_like_the_platform() {
        let m = rendered(EventKind::MessageCreated, false).1;
        assert!(m["created_at"].is_u64());
        assert_eq!(m["updated_at"], "2026-11-21T22:32:09.000Z");
        let c = rendered(EventKind::ConversationCreated, false).1;
        assert!(c["updated_at"].is_f64());
        assert_eq!(
            c["additional_attributes"]["initiated_at"]["timestamp"],
            "2026-11-21 22:27:09 UTC"
        );
    }

    #[test]
    fn presence_for_contacts_has_no_contacts_map() {
        let mut out = String::new();
        presence(&mut out, 3, &[(7, "online"), (9, "busy")], None, 5);
        assert_eq!(
            out,
            r#"{"account_id":3,"users":{"7":"online","9":"busy"},"sim_seq":5}"#
        );
    }

    #[test]
    fn strings_are_escaped() {
        let mut out = String::new();
        push_str(&mut out, "a\"b\\c\nd\u{1}é");
        assert_eq!(out, r#""a\"b\\c\nd\u0001é""#);
    }
}
