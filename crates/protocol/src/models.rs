//! Typed, lenient models of event payloads, for callers who want more than raw bytes.
//!
//! They follow the seed schemas: unknown fields are ignored, fields the platform may omit are
//! `Option`s, and timestamps accept every form the platform sends (unix seconds, fractional
//! seconds, ISO-8601 text). A field of the wrong type is an error for that one event only.
//! The bridge's hot path does not use these: it forwards `data` untouched.

use crate::catalogue::{EventKind, PayloadShape};
use serde::Deserialize;
use std::collections::BTreeMap;

/// A timestamp as the platform sends it: `created_at` is unix seconds, a message's `updated_at`
/// ISO-8601 text, a conversation's `updated_at` fractional seconds.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Timestamp {
    /// Seconds since the epoch, possibly fractional.
    Unix(f64),
    /// Text as sent (ISO-8601 or `2026-11-21 22:27:09 UTC`).
    Text(String),
}

/// A conversation.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Conversation {
    /// The conversation id.
    pub id: u64,
    /// The account.
    pub account_id: Option<u64>,
    /// The inbox.
    pub inbox_id: Option<u64>,
    /// `open`, `resolved`, `pending` or `snoozed`.
    pub status: Option<String>,
    /// The channel type, e.g. `Channel::WebWidget`.
    pub channel: Option<String>,
    /// Whether an agent can reply.
    pub can_reply: Option<bool>,
    /// Unread messages.
    pub unread_count: Option<u64>,
    /// The contact's inbox membership.
    pub contact_inbox: Option<ContactInbox>,
    /// The latest messages.
    #[serde(default)]
    pub messages: Vec<Message>,
    /// Labels.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Sender, assignee and team.
    pub meta: Option<ConversationMeta>,
    /// When an agent last saw it.
    pub agent_last_seen_at: Option<Timestamp>,
    /// When the contact last saw it.
    pub contact_last_seen_at: Option<Timestamp>,
    /// Last activity.
    pub timestamp: Option<Timestamp>,
    /// Creation time.
    pub created_at: Option<Timestamp>,
    /// Last update.
    pub updated_at: Option<Timestamp>,
    /// Browser, referer and such.
    pub additional_attributes: Option<serde_json::Value>,
    /// Custom attributes.
    pub custom_attributes: Option<serde_json::Value>,
}

/// A conversation's `meta`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ConversationMeta {
    /// The contact.
    pub sender: Option<Contact>,
    /// The assigned agent.
    pub assignee: Option<User>,
    /// The assigned team, as sent.
    pub team: Option<serde_json::Value>,
}

/// A contact's membership of an inbox.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ContactInbox {
    /// Its id.
    pub id: Option<u64>,
    /// The contact.
    pub contact_id: Option<u64>,
    /// The inbox.
    pub inbox_id: Option<u64>,
    /// The source id (e.g. the widget session).
    pub source_id: Option<String>,
    /// Whether the identity was verified.
    pub hmac_verified: Option<bool>,
}

/// A contact (customer).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Contact {
    /// The contact id.
    pub id: u64,
    /// Name.
    pub name: Option<String>,
    /// Email.
    pub email: Option<String>,
    /// Phone number.
    pub phone_number: Option<String>,
    /// External identifier.
    pub identifier: Option<String>,
    /// Avatar.
    pub thumbnail: Option<String>,
    /// Additional attributes.
    pub additional_attributes: Option<serde_json::Value>,
    /// Custom attributes.
    pub custom_attributes: Option<serde_json::Value>,
}

/// An agent or admin.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct User {
    /// The user id.
    pub id: u64,
    /// Name.
    pub name: Option<String>,
    /// Display name.
    pub available_name: Option<String>,
    /// Avatar URL.
    pub avatar_url: Option<String>,
    /// `online`, `busy` or `offline`.
    pub availability_status: Option<String>,
    /// Avatar thumbnail.
    pub thumbnail: Option<String>,
}

/// Who sent a message or is typing: a user or a contact, told apart by `type`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Party {
    /// `user` or `contact` (some payloads omit it).
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Its id.
    pub id: u64,
    /// Name.
    pub name: Option<String>,
    /// Display name (users).
    pub available_name: Option<String>,
    /// Email (contacts).
    pub email: Option<String>,
    /// Availability (users).
    pub availability_status: Option<String>,
    /// Avatar.
    pub thumbnail: Option<String>,
}

/// A message.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Message {
    /// The message id.
    pub id: u64,
    /// Text.
    pub content: Option<String>,
    /// The account.
    pub account_id: Option<u64>,
    /// The inbox.
    pub inbox_id: Option<u64>,
    /// The conversation.
    pub conversation_id: Option<u64>,
    /// 0 incoming, 1 outgoing, 2 activity, 3 template.
    pub message_type: Option<i64>,
    /// Creation time.
    pub created_at: Option<Timestamp>,
    /// Last update.
    pub updated_at: Option<Timestamp>,
    /// A private note.
    pub private: Option<bool>,
    /// Delivery status.
    pub status: Option<String>,
    /// Id in the source channel.
    pub source_id: Option<String>,
    /// `text`, `input_select`, ...
    pub content_type: Option<String>,
    /// `User` or `Contact`.
    pub sender_type: Option<String>,
    /// The sender's id.
    pub sender_id: Option<u64>,
    /// The sender.
    pub sender: Option<Party>,
    /// Content attributes.
    pub content_attributes: Option<serde_json::Value>,
}

/// A notification for an agent.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Notification {
    /// The notification id.
    pub id: u64,
    /// E.g. `conversation_creation`, `conversation_mention`.
    pub notification_type: Option<String>,
    /// What it is about, e.g. `Conversation`.
    pub primary_actor_type: Option<String>,
    /// The id of what it is about.
    pub primary_actor_id: Option<u64>,
    /// What it is about, as sent.
    pub primary_actor: Option<serde_json::Value>,
    /// Who caused it, as sent.
    pub secondary_actor: Option<serde_json::Value>,
    /// When it was read.
    pub read_at: Option<Timestamp>,
    /// Creation time.
    pub created_at: Option<Timestamp>,
    /// The account.
    pub account_id: Option<u64>,
    /// The push title.
    pub push_message_title: Option<String>,
}

/// The `data` of `notification.*` events.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct NotificationEvent {
    /// The notification.
    pub notification: Notification,
    /// Unread notifications.
    pub unread_count: Option<u64>,
    /// All notifications.
    pub count: Option<u64>,
    /// The account.
    pub account_id: Option<u64>,
}

/// The `data` of `conversation.typing_on` / `typing_off`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Typing {
    /// The conversation.
    pub conversation: Conversation,
    /// Who is typing.
    pub user: Option<Party>,
    /// Whether an agent is typing a private note.
    pub is_private: Option<bool>,
    /// The account.
    pub account_id: Option<u64>,
}

/// The `data` of `presence.update`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Presence {
    /// The account.
    pub account_id: Option<u64>,
    /// User id -> `online` / `busy` / `offline`.
    #[serde(default)]
    pub users: BTreeMap<String, String>,
    /// Contact id -> status (absent for contact subscribers).
    #[serde(default)]
    pub contacts: BTreeMap<String, String>,
}

/// An event's `data`, typed by its kind.
#[derive(Debug, Clone, PartialEq)]
pub enum TypedEvent {
    /// Conversation events.
    Conversation(Conversation),
    /// Message events.
    Message(Message),
    /// Contact events.
    Contact(Contact),
    /// Typing events.
    Typing(Typing),
    /// Presence.
    Presence(Presence),
    /// Notification events.
    Notification(NotificationEvent),
    /// An event without a typed model (unknown, or a payload with no fixed schema).
    Untyped,
}

/// Why a payload did not fit its model. The reason never quotes payload values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{event}` payload does not fit its model: {reason} (line {line}, column {column})")]
pub struct ModelError {
    /// The event name.
    pub event: &'static str,
    /// What did not fit, with quoted values removed.
    pub reason: String,
    /// Where, in `data`.
    pub line: usize,
    /// Where, in `data`.
    pub column: usize,
}

impl TypedEvent {
    /// Decodes an event's raw `data` by its kind.
    pub fn decode(kind: EventKind, data: &str) -> Result<TypedEvent, ModelError> {
        fn typed<'a, T: Deserialize<'a>>(
            kind: EventKind,
            data: &'a str,
            wrap: fn(T) -> TypedEvent,
        ) -> Result<TypedEvent, ModelError> {
            serde_json::from_str(data)
                .map(wrap)
                .map_err(|e| ModelError {
                    event: kind.name().unwrap_or("other"),
                    reason: unquote(&e.to_string()),
                    line: e.line(),
                    column: e.column(),
                })
        }
        match kind.shape() {
            PayloadShape::Conversation => typed(kind, data, TypedEvent::Conversation),
            PayloadShape::Message => typed(kind, data, TypedEvent::Message),
            PayloadShape::Contact => typed(kind, data, TypedEvent::Contact),
            PayloadShape::Typing => typed(kind, data, TypedEvent::Typing),
            PayloadShape::Presence => typed(kind, data, TypedEvent::Presence),
            PayloadShape::Notification => typed(kind, data, TypedEvent::Notification),
            PayloadShape::Other => Ok(TypedEvent::Untyped),
        }
    }
}

/// Drops serde's quoted values (`"…"` and `` `…` ``) from a message and its position suffix.
fn unquote(message: &str) -> String {
    let message = message.split(" at line ").next().unwrap_or(message);
    let mut out = String::with_capacity(message.len());
    let mut quote = None;
    for c in message.chars() {
        match (quote, c) {
            (None, '"' | '`') => {
                quote = Some(c);
                out.push('…');
            }
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, c) => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::ServerFrame;

    fn data_of(frame: &str) -> (EventKind, &str) {
        match ServerFrame::parse(frame) {
            Ok(ServerFrame::Event(e)) => (e.kind, e.data),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn captured_payloads_fit_their_models() {
        let frames = crate::fixtures::captured();
        let (kind, data) = data_of(&frames["message.created"]);
        let TypedEvent::Message(m) = TypedEvent::decode(kind, data).unwrap() else {
            panic!()
        };
        assert_eq!(
            (m.id, m.conversation_id, m.account_id),
            (300078, Some(100078), Some(1))
        );
        assert_eq!(m.created_at, Some(Timestamp::Unix(1795300329.0)));
        assert!(matches!(m.updated_at, Some(Timestamp::Text(_))));
        assert_eq!(m.sender.and_then(|s| s.kind), Some("user".to_owned()));

        let (kind, data) = data_of(&frames["conversation.typing_on"]);
        let TypedEvent::Typing(t) = TypedEvent::decode(kind, data).unwrap() else {
            panic!()
        };
        assert_eq!(t.conversation.id, 100043);
        assert_eq!(
            t.conversation.updated_at,
            Some(Timestamp::Unix(1795300329.123))
        );
        assert_eq!(t.conversation.messages.len(), 1);
        assert_eq!(t.is_private, Some(false));

        let (kind, data) = data_of(&frames["notification.created"]);
        let TypedEvent::Notification(n) = TypedEvent::decode(kind, data).unwrap() else {
            panic!()
        };
        assert_eq!(n.notification.primary_actor_id, Some(100120));
        assert_eq!(n.unread_count, Some(2));

        let (kind, data) = data_of(&frames["presence.update"]);
        let TypedEvent::Presence(p) = TypedEvent::decode(kind, data).unwrap() else {
            panic!()
        };
        assert_eq!(p.users.get("9").map(String::as_str), Some("busy"));
        assert_eq!(p.contacts.len(), 1);
    }

    #[test]
    fn unknown_fields_are_ignored_and_optional_fields_optional() {
        let c = TypedEvent::decode(EventKind::ContactCreated, r#"{"id":5,"brand_new":[1]}"#);
        assert!(matches!(
            c,
            Ok(TypedEvent::Contact(Contact {
                id: 5,
                name: None,
                ..
            }))
        ));
        assert_eq!(
            TypedEvent::decode(EventKind::Other, "{}"),
            Ok(TypedEvent::Untyped)
        );
        assert_eq!(
            TypedEvent::decode(EventKind::AccountCacheInvalidated, r#"{"cache_keys":{}}"#),
            Ok(TypedEvent::Untyped)
        );
    }

    #[test]
    fn a_wrong_type_is_an_error_that_quotes_no_value() {
        let err = TypedEvent::decode(
            EventKind::ContactUpdated,
            r#"{"id":5,"name":{"secret":"furNHtAQnqxQN2FmkLzf8x4T"}}"#,
        )
        .unwrap_err();
        assert_eq!(err.event, "contact.updated");
        assert!(!err.to_string().contains("furNHt"), "{err}");
        let err = TypedEvent::decode(
            EventKind::MessageCreated,
            r#"{"id":"furNHtAQnqxQN2FmkLzf8x4T"}"#,
        )
        .unwrap_err();
        assert!(!err.to_string().contains("furNHt"), "{err}");
        assert!(err.reason.contains("invalid type"), "{err}");
    }
}
