//! The Voxsig event catalogue: every event name the platform is known to send.
//!
//! Event names are open-ended: the platform adds events between releases, so an unknown name is
//! [`EventKind::Other`] and passes through the bridge untouched rather than being an error.

use std::fmt;

/// Who may receive an event, as the seeds document it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// Agents and admins (user pubsub tokens) only.
    Agents,
    /// Agents, admins and the contact whose session the event concerns.
    AgentsAndContacts,
}

/// The shape of an event's `data`, which tells where its conversation id lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadShape {
    /// A conversation object: the conversation id is `data.id`.
    Conversation,
    /// A message object: the conversation id is `data.conversation_id`.
    Message,
    /// A contact object: no conversation.
    Contact,
    /// `{conversation, user, is_private?, account_id}`: the conversation id is `data.conversation.id`.
    Typing,
    /// `{account_id, users, contacts}`.
    Presence,
    /// `{notification, unread_count, count, account_id}`: the conversation id is the
    /// notification's primary actor when that actor is a conversation.
    Notification,
    /// Anything else: no conversation id is looked for beyond `data.conversation_id`.
    Other,
}

macro_rules! catalogue {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal $(| $alias:literal)*, $shape:ident, $aud:ident; )*) => {
        /// A known Voxsig event, or [`EventKind::Other`] for a name outside the catalogue.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum EventKind {
            $( $(#[$doc])* $variant, )*
            /// An event name outside the catalogue; it is passed through untouched.
            Other,
        }

        impl EventKind {
            /// Every catalogued event (not [`EventKind::Other`]), in documentation order.
            pub const ALL: &'static [EventKind] = &[ $( EventKind::$variant, )* ];

            /// Classifies a wire event name. Spellings some platform clones document
            /// (`notification_created`, `conversation_typing_on`) map to the same kind.
            pub fn from_name(name: &str) -> EventKind {
                match name {
                    $( $name $(| $alias)* => EventKind::$variant, )*
                    _ => EventKind::Other,
                }
            }

            /// The canonical wire name, or `None` for [`EventKind::Other`].
            pub const fn name(self) -> Option<&'static str> {
                match self {
                    $( EventKind::$variant => Some($name), )*
                    EventKind::Other => None,
                }
            }

            /// The shape of the event's `data`.
            pub const fn shape(self) -> PayloadShape {
                match self {
                    $( EventKind::$variant => PayloadShape::$shape, )*
                    EventKind::Other => PayloadShape::Other,
                }
            }

            /// Who receives it, where documented; `None` for [`EventKind::Other`].
            pub const fn audience(self) -> Option<Audience> {
                match self {
                    $( EventKind::$variant => Some(Audience::$aud), )*
                    EventKind::Other => None,
                }
            }
        }
    };
}

catalogue! {
    /// A conversation was created.
    ConversationCreated = "conversation.created", Conversation, AgentsAndContacts;
    /// A contact read the conversation.
    ConversationRead = "conversation.read", Conversation, Agents;
    /// Any attribute of a conversation changed.
    ConversationUpdated = "conversation.updated", Conversation, Agents;
    /// A conversation's status changed (open, resolved, pending, snoozed).
    ConversationStatusChanged = "conversation.status_changed", Conversation, AgentsAndContacts;
    /// Two contacts were merged; the conversation points at the surviving contact.
    ConversationContactChanged = "conversation.contact_changed", Conversation, Agents;
    /// An agent was mentioned in a private note.
    ConversationMentioned = "conversation.mentioned", Conversation, Agents;
    /// A bot handed the conversation over to a human.
    ConversationBotHandoff = "conversation.bot_handoff", Conversation, Agents;
    /// Somebody started typing.
    ConversationTypingOn = "conversation.typing_on" | "conversation_typing_on", Typing, AgentsAndContacts;
    /// Somebody stopped typing.
    ConversationTypingOff = "conversation.typing_off" | "conversation_typing_off", Typing, AgentsAndContacts;
    /// A message was created.
    MessageCreated = "message.created", Message, AgentsAndContacts;
    /// A message was updated.
    MessageUpdated = "message.updated", Message, AgentsAndContacts;
    /// The first agent reply in a conversation was created.
    FirstReplyCreated = "first.reply.created", Message, Agents;
    /// The assignee of a conversation changed.
    AssigneeChanged = "assignee.changed", Conversation, Agents;
    /// The team of a conversation changed.
    TeamChanged = "team.changed", Conversation, Agents;
    /// A contact was created.
    ContactCreated = "contact.created", Contact, Agents;
    /// A contact was updated.
    ContactUpdated = "contact.updated", Contact, Agents;
    /// A contact was deleted.
    ContactDeleted = "contact.deleted", Contact, Agents;
    /// Who is online: users (and contacts, for agents).
    PresenceUpdate = "presence.update", Presence, AgentsAndContacts;
    /// A notification was created for the subscribed user.
    NotificationCreated = "notification.created" | "notification_created", Notification, Agents;
    /// A notification was updated (read, snoozed).
    NotificationUpdated = "notification.updated" | "notification_updated", Notification, Agents;
    /// A notification was deleted.
    NotificationDeleted = "notification.deleted" | "notification_deleted", Notification, Agents;
    /// The account's cached data changed; clients should refetch.
    AccountCacheInvalidated = "account.cache_invalidated", Other, Agents;
    /// The platform logged this token out (its pubsub token was rotated).
    UserLogout = "user:logout", Other, Agents;
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name().unwrap_or("other"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_catalogued_name_round_trips() {
        for kind in EventKind::ALL {
            let name = kind.name().expect("catalogued kinds have names");
            assert_eq!(EventKind::from_name(name), *kind, "{name}");
        }
        assert_eq!(EventKind::ALL.len(), 23);
    }

    #[test]
    fn seed_events_are_all_catalogued() {
        // Every event the three seeds name, as they spell it.
        for name in [
            "conversation.created",
            "conversation.read",
            "message.created",
            "message.updated",
            "conversation.status_changed",
            "conversation.typing_on",
            "conversation.typing_off",
            "conversation_typing_on",
            "conversation_typing_off",
            "assignee.changed",
            "team.changed",
            "conversation.contact_changed",
            "contact.created",
            "contact.updated",
            "presence.update",
            "notification_created",
        ] {
            assert_ne!(EventKind::from_name(name), EventKind::Other, "{name}");
        }
    }

    #[test]
    fn unknown_names_are_other_not_errors() {
        assert_eq!(EventKind::from_name("campaign.triggered"), EventKind::Other);
        assert_eq!(EventKind::from_name(""), EventKind::Other);
        assert_eq!(EventKind::Other.name(), None);
        assert_eq!(EventKind::Other.shape(), PayloadShape::Other);
    }

    #[test]
    fn shapes_point_at_the_right_conversation_field() {
        assert_eq!(EventKind::MessageCreated.shape(), PayloadShape::Message);
        assert_eq!(
            EventKind::ConversationTypingOn.shape(),
            PayloadShape::Typing
        );
        assert_eq!(
            EventKind::AssigneeChanged.shape(),
            PayloadShape::Conversation
        );
        assert_eq!(
            EventKind::NotificationCreated.shape(),
            PayloadShape::Notification
        );
        assert_eq!(EventKind::ContactDeleted.shape(), PayloadShape::Contact);
    }
}
