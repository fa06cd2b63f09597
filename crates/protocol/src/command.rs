//! Commands a client sends: `subscribe`, `unsubscribe` and `message` (`update_presence`).

use crate::identifier::{push_json_string, RoomIdentifier};

/// The `data` of a presence heartbeat, as the seeds spell it.
pub const UPDATE_PRESENCE_DATA: &str = r#"{"action":"update_presence"}"#;

/// A client-to-server ActionCable command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<'a> {
    /// Subscribe to `RoomChannel` with this identifier.
    Subscribe(&'a RoomIdentifier),
    /// Drop the subscription with this identifier (no reply is sent by the server).
    Unsubscribe(&'a RoomIdentifier),
    /// `{"action":"update_presence"}` on this subscription: keeps the token online.
    UpdatePresence(&'a RoomIdentifier),
}

impl Command<'_> {
    /// Encodes the command as the text frame to send. The result contains the token: never log it.
    pub fn encode(&self) -> String {
        let (command, identifier, data) = match self {
            Command::Subscribe(id) => ("subscribe", id, None),
            Command::Unsubscribe(id) => ("unsubscribe", id, None),
            Command::UpdatePresence(id) => ("message", id, Some(UPDATE_PRESENCE_DATA)),
        };
        let mut out = String::with_capacity(identifier.escaped().len() + 96);
        out.push_str("{\"command\":\"");
        out.push_str(command);
        out.push_str("\",\"identifier\":\"");
        out.push_str(identifier.escaped());
        out.push('"');
        if let Some(data) = data {
            out.push_str(",\"data\":");
            push_json_string(&mut out, data);
        }
        out.push('}');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::PubsubToken;

    fn user() -> RoomIdentifier {
        RoomIdentifier::user(PubsubToken::new("your-pubsub-token"), 1, 2)
    }

    #[test]
    fn subscribe_is_the_seed_string() {
        // The seeds' template, with the placeholders filled and their stray spaces removed.
        assert_eq!(
            Command::Subscribe(&user()).encode(),
            r#"{"command":"subscribe","identifier":"{\"channel\":\"RoomChannel\",\"pubsub_token\":\"your-pubsub-token\",\"account_id\":1,\"user_id\":2}"}"#
        );
    }

    #[test]
    fn user_presence_is_the_seed_string() {
        assert_eq!(
            Command::UpdatePresence(&user()).encode(),
            r#"{"command":"message","identifier":"{\"channel\":\"RoomChannel\",\"pubsub_token\":\"your-pubsub-token\",\"account_id\":1,\"user_id\":2}","data":"{\"action\":\"update_presence\"}"}"#
        );
    }

    #[test]
    fn contact_presence_is_the_seed_string() {
        let contact = RoomIdentifier::contact(PubsubToken::new("your-pubsub-token"));
        assert_eq!(
            Command::UpdatePresence(&contact).encode(),
            r#"{"command":"message","identifier":"{\"channel\":\"RoomChannel\",\"pubsub_token\":\"your-pubsub-token\"}","data":"{\"action\":\"update_presence\"}"}"#
        );
    }

    #[test]
    fn unsubscribe_and_every_command_is_valid_nested_json() {
        let id = user();
        for cmd in [
            Command::Subscribe(&id),
            Command::Unsubscribe(&id),
            Command::UpdatePresence(&id),
        ] {
            let v: serde_json::Value = serde_json::from_str(&cmd.encode()).unwrap();
            let inner = v["identifier"].as_str().unwrap();
            assert_eq!(RoomIdentifier::parse(inner).unwrap(), id);
        }
        assert!(Command::Unsubscribe(&id)
            .encode()
            .starts_with(r#"{"command":"unsubscribe","#));
    }
}
