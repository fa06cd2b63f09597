//! RoomChannel subscription identifiers.
//!
//! ActionCable names a subscription by an *identifier*: a JSON object serialised to a string and
//! nested, as a string, inside every frame. The platform echoes it back byte-for-byte, so the
//! fast match is a string comparison against the escaped form we sent; other servers may
//! re-encode it (key order, whitespace, `"7"` for `7`), so matching falls back to content.

use crate::token::PubsubToken;
use serde::Deserialize;
use std::fmt;

/// The channel every Voxsig subscription uses.
pub const ROOM_CHANNEL: &str = "RoomChannel";

/// The subscription identifier for one pubsub token on `RoomChannel`.
#[derive(Clone, PartialEq, Eq)]
pub struct RoomIdentifier {
    key: IdentifierKey,
    /// The identifier as JSON text, exactly as the seeds show it.
    wire: String,
    /// `wire` as it appears inside a frame: JSON-escaped, without the surrounding quotes.
    escaped: String,
}

/// The content of an identifier: what two identifiers must share to name the same subscription.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdentifierKey {
    /// The ActionCable channel class, `RoomChannel` for Voxsig.
    pub channel: String,
    /// The pubsub token.
    pub pubsub_token: PubsubToken,
    /// The account, present for user tokens.
    pub account_id: Option<u64>,
    /// The user, present for user tokens.
    pub user_id: Option<u64>,
}

/// Why an identifier string could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentifierError {
    /// The identifier is not a JSON object.
    #[error("identifier is not a JSON object: {0}")]
    NotJson(String),
    /// A field is missing or of the wrong type.
    #[error("identifier field `{field}` is {problem}")]
    BadField {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
}

impl RoomIdentifier {
    /// The identifier of a user (agent/admin) token: token, account and user.
    pub fn user(token: PubsubToken, account_id: u64, user_id: u64) -> Self {
        Self::from_key(IdentifierKey {
            channel: ROOM_CHANNEL.to_owned(),
            pubsub_token: token,
            account_id: Some(account_id),
            user_id: Some(user_id),
        })
    }

    /// The identifier of a contact token: the token alone.
    pub fn contact(token: PubsubToken) -> Self {
        Self::from_key(IdentifierKey {
            channel: ROOM_CHANNEL.to_owned(),
            pubsub_token: token,
            account_id: None,
            user_id: None,
        })
    }

    /// Builds the identifier for a decoded key, encoding it the way the seeds do: `channel`,
    /// `pubsub_token`, then `account_id` and `user_id` when present, compact JSON.
    pub fn from_key(key: IdentifierKey) -> Self {
        let mut wire = String::with_capacity(96);
        wire.push_str("{\"channel\":");
        push_json_string(&mut wire, &key.channel);
        wire.push_str(",\"pubsub_token\":");
        push_json_string(&mut wire, key.pubsub_token.expose());
        if let Some(account) = key.account_id {
            wire.push_str(",\"account_id\":");
            wire.push_str(&account.to_string());
        }
        if let Some(user) = key.user_id {
            wire.push_str(",\"user_id\":");
            wire.push_str(&user.to_string());
        }
        wire.push('}');
        let mut escaped = String::with_capacity(wire.len() + 16);
        push_json_string(&mut escaped, &wire);
        let escaped = escaped[1..escaped.len() - 1].to_owned();
        RoomIdentifier { key, wire, escaped }
    }

    /// Decodes an identifier string as a server sends it back, whatever its key order or spacing.
    pub fn parse(text: &str) -> Result<Self, IdentifierError> {
        IdentifierKey::parse(text).map(Self::from_key)
    }

    /// What this identifier names.
    pub fn key(&self) -> &IdentifierKey {
        &self.key
    }

    /// The pubsub token.
    pub fn token(&self) -> &PubsubToken {
        &self.key.pubsub_token
    }

    /// The account, for user tokens.
    pub fn account_id(&self) -> Option<u64> {
        self.key.account_id
    }

    /// The user, for user tokens.
    pub fn user_id(&self) -> Option<u64> {
        self.key.user_id
    }

    /// Whether this is a contact token (no user).
    pub fn is_contact(&self) -> bool {
        self.key.user_id.is_none()
    }

    /// The identifier as JSON text. It contains the token: never log it.
    pub fn wire(&self) -> &str {
        &self.wire
    }

    /// The identifier as it appears inside a frame (JSON-escaped, no quotes). It contains the
    /// token: never log it.
    pub fn escaped(&self) -> &str {
        &self.escaped
    }
}

impl fmt::Debug for RoomIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoomIdentifier")
            .field("channel", &self.key.channel)
            .field("pubsub_token", &self.key.pubsub_token)
            .field("account_id", &self.key.account_id)
            .field("user_id", &self.key.user_id)
            .finish()
    }
}

impl IdentifierKey {
    /// Decodes identifier JSON text by content. Ids may be numbers or numeric strings (the seeds'
    /// own JavaScript example sends strings); unknown extra keys are ignored.
    pub fn parse(text: &str) -> Result<Self, IdentifierError> {
        #[derive(Deserialize)]
        struct Raw {
            channel: Option<serde_json::Value>,
            pubsub_token: Option<serde_json::Value>,
            account_id: Option<serde_json::Value>,
            user_id: Option<serde_json::Value>,
        }
        let raw: Raw = serde_json::from_str(text).map_err(|e| {
            // serde_json's message names positions, never the content: safe to keep.
            IdentifierError::NotJson(e.to_string())
        })?;
        let channel = match raw.channel {
            Some(serde_json::Value::String(s)) => s,
            None => return Err(bad("channel", "missing")),
            Some(_) => return Err(bad("channel", "not a string")),
        };
        let token = match raw.pubsub_token {
            Some(serde_json::Value::String(s)) => PubsubToken::new(s),
            None => return Err(bad("pubsub_token", "missing")),
            Some(_) => return Err(bad("pubsub_token", "not a string")),
        };
        Ok(IdentifierKey {
            channel,
            pubsub_token: token,
            account_id: id_field("account_id", raw.account_id)?,
            user_id: id_field("user_id", raw.user_id)?,
        })
    }
}

fn bad(field: &'static str, problem: &'static str) -> IdentifierError {
    IdentifierError::BadField { field, problem }
}

fn id_field(
    field: &'static str,
    value: Option<serde_json::Value>,
) -> Result<Option<u64>, IdentifierError> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| bad(field, "not a non-negative integer")),
        Some(serde_json::Value::String(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| bad(field, "not a non-negative integer")),
        Some(_) => Err(bad(field, "not an integer")),
    }
}

/// Appends `s` as a JSON string literal (with quotes), escaping as `JSON.stringify` does.
pub(crate) fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE_IDENTIFIER: &str = r#"{"channel":"RoomChannel","pubsub_token":"furNHtAQnqxQN2FmkLzf8x4T","account_id":1,"user_id":7}"#;

    #[test]
    fn user_identifier_matches_the_captured_bytes() {
        let id = RoomIdentifier::user(PubsubToken::new("furNHtAQnqxQN2FmkLzf8x4T"), 1, 7);
        assert_eq!(id.wire(), FIXTURE_IDENTIFIER);
        assert_eq!(
            id.escaped(),
            r#"{\"channel\":\"RoomChannel\",\"pubsub_token\":\"furNHtAQnqxQN2FmkLzf8x4T\",\"account_id\":1,\"user_id\":7}"#
        );
    }

    #[test]
    fn contact_identifier_is_the_token_alone() {
        let id = RoomIdentifier::contact(PubsubToken::new("your-pubsub-token"));
        assert_eq!(
            id.wire(),
            r#"{"channel":"RoomChannel","pubsub_token":"your-pubsub-token"}"#
        );
        assert!(id.is_contact());
    }

    #[test]
    fn parse_matches_by_content_whatever_the_order_and_spacing() {
        let ours = RoomIdentifier::user(PubsubToken::new("furNHtAQnqxQN2FmkLzf8x4T"), 1, 7);
        for text in [
            FIXTURE_IDENTIFIER,
            r#"{ "user_id": 7, "account_id": 1, "pubsub_token": "furNHtAQnqxQN2FmkLzf8x4T", "channel": "RoomChannel" }"#,
            r#"{"channel":"RoomChannel","pubsub_token":"furNHtAQnqxQN2FmkLzf8x4T","account_id":"1","user_id":"7","extra":true}"#,
        ] {
            let theirs = RoomIdentifier::parse(text).unwrap();
            assert_eq!(theirs.key(), ours.key(), "{text}");
            assert_eq!(theirs, ours);
        }
    }

    #[test]
    fn parse_rejects_what_is_not_an_identifier() {
        assert!(matches!(
            RoomIdentifier::parse("not json"),
            Err(IdentifierError::NotJson(_))
        ));
        assert!(matches!(
            RoomIdentifier::parse("[1]"),
            Err(IdentifierError::NotJson(_))
        ));
        assert_eq!(
            RoomIdentifier::parse(r#"{"channel":"RoomChannel"}"#).unwrap_err(),
            bad("pubsub_token", "missing")
        );
        assert_eq!(
            RoomIdentifier::parse(
                r#"{"channel":"RoomChannel","pubsub_token":"t","account_id":-1}"#
            )
            .unwrap_err(),
            bad("account_id", "not a non-negative integer")
        );
    }

    #[test]
    fn tokens_needing_escapes_round_trip() {
        let id = RoomIdentifier::contact(PubsubToken::new("a\"b\\c\u{1}"));
        let back = RoomIdentifier::parse(id.wire()).unwrap();
        assert_eq!(back, id);
        let unescaped: String = serde_json::from_str(&format!("\"{}\"", id.escaped())).unwrap();
        assert_eq!(unescaped, id.wire());
    }

    #[test]
    fn debug_redacts_the_token() {
        let id = RoomIdentifier::user(PubsubToken::new("furNHtAQnqxQN2FmkLzf8x4T"), 1, 7);
        let shown = format!("{id:?}");
        assert!(!shown.contains("furNHt"), "{shown}");
    }
}
