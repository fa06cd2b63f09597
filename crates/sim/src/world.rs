//! The simulated platform's population: accounts, users (agents and admins) and contacts, each
//! with a pubsub token, generated from a [`WorldSpec`] or loaded from a TOML/JSON file, and
//! exported as the `[[accounts]]` list a bridge config reads.

use crate::error::{Result, SimError};
use crate::rng::Rng;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use voxsig_protocol::{PubsubToken, RoomIdentifier};

/// Every account, user and contact of the simulated platform.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct World {
    /// The accounts.
    #[serde(default)]
    pub accounts: Vec<Account>,
    /// The agents and admins; each belongs to one or more accounts.
    #[serde(default)]
    pub users: Vec<User>,
    /// The contacts; each belongs to one account and owns its conversations.
    #[serde(default)]
    pub contacts: Vec<Contact>,
}

/// One account (a tenant of the platform).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// The account id, as in `account_id`.
    pub id: u64,
    /// A display name.
    pub name: String,
    /// The id of the account's (website) inbox that its conversations live in.
    #[serde(default = "default_inbox")]
    pub inbox_id: u64,
}

fn default_inbox() -> u64 {
    1
}

/// What a user is allowed to do; both receive the same events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// An agent.
    Agent,
    /// An administrator.
    Administrator,
}

/// An agent or admin with a user pubsub token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The user id, as in `user_id`.
    pub id: u64,
    /// A display name.
    pub name: String,
    /// Agent or administrator.
    pub role: Role,
    /// The availability shown in presence maps when the user is online: `online`, `busy` or `offline`.
    #[serde(default = "default_availability")]
    pub availability: String,
    /// The user's pubsub token. It receives the events of every account in `accounts`.
    pub pubsub_token: String,
    /// The user's REST API access token (header `api_access_token`), distinct from the pubsub
    /// token. Left empty in a world file, it is derived from the user id (see
    /// [`World::fill_api_tokens`]).
    #[serde(default)]
    pub api_access_token: String,
    /// The accounts the user belongs to (a user may belong to several).
    pub accounts: Vec<u64>,
}

impl User {
    /// The e-mail address the profile endpoint shows (the world has none of its own).
    pub fn email(&self) -> String {
        format!("user{}@voxsig.example", self.id)
    }
}

fn default_availability() -> String {
    "online".to_owned()
}

/// A contact (an end customer) with a contact pubsub token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    /// The contact id.
    pub id: u64,
    /// The account the contact belongs to.
    pub account_id: u64,
    /// A display name.
    pub name: String,
    /// E-mail address, if known.
    #[serde(default)]
    pub email: Option<String>,
    /// Phone number, if known.
    #[serde(default)]
    pub phone_number: Option<String>,
    /// The contact's pubsub token: it receives only the events of the contact's own conversations.
    pub pubsub_token: String,
    /// The ids of the contact's conversations (unique across the world).
    pub conversations: Vec<u64>,
}

/// How to generate a world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorldSpec {
    /// Number of accounts (ids `1..=accounts`).
    pub accounts: usize,
    /// Users created for each account (at least 1).
    pub users_per_account: usize,
    /// Contacts created for each account (at least 1).
    pub contacts_per_account: usize,
    /// Conversations of each contact (at least 1).
    pub conversations_per_contact: usize,
    /// How many of each account's users also belong to the next account (a user token then
    /// receives both accounts' events). At most `users_per_account`.
    pub shared_users: usize,
    /// Seed for names and tokens: the same spec gives the same world.
    pub seed: u64,
}

impl Default for WorldSpec {
    fn default() -> Self {
        WorldSpec {
            accounts: 2,
            users_per_account: 2,
            contacts_per_account: 3,
            conversations_per_contact: 1,
            shared_users: 0,
            seed: 1,
        }
    }
}

/// Which tokens to export into a bridge config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenSelection {
    /// User tokens only (each once, under the first account of its user).
    #[default]
    Users,
    /// Contact tokens only.
    Contacts,
    /// Both.
    All,
}

impl std::str::FromStr for TokenSelection {
    type Err = SimError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "users" => Ok(TokenSelection::Users),
            "contacts" => Ok(TokenSelection::Contacts),
            "all" => Ok(TokenSelection::All),
            other => Err(SimError::Invalid(format!(
                "token selection {other:?}: expected users, contacts or all"
            ))),
        }
    }
}

/// What part of the world to export as a bridge config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ExportOptions {
    /// Which tokens.
    pub tokens: TokenSelection,
    /// At most this many tokens per account (of each kind), if set.
    pub max_per_account: Option<usize>,
    /// Only these accounts, if set.
    pub accounts: Option<Vec<u64>>,
    /// Also export each user entry's `api_access_token` (for a bridge that catches up over
    /// REST). Off by default: a bridge config without REST support rejects the key.
    pub api_tokens: bool,
}

/// One `[[accounts]]` entry of a bridge config: a token and the identifier fields it needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeAccount {
    /// The account to subscribe for.
    pub account_id: u64,
    /// The user, for user tokens; absent for contact tokens.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub user_id: Option<u64>,
    /// The pubsub token.
    pub pubsub_token: String,
    /// The user's REST API access token (user entries, when [`ExportOptions::api_tokens`]).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub api_access_token: Option<String>,
}

impl BridgeAccount {
    /// The RoomChannel identifier this entry subscribes with (a contact entry sends the token alone).
    pub fn identifier(&self) -> RoomIdentifier {
        let token = PubsubToken::new(self.pubsub_token.clone());
        match self.user_id {
            Some(user) => RoomIdentifier::user(token, self.account_id, user),
            None => RoomIdentifier::contact(token),
        }
    }
}

const FIRST: &[&str] = &[
    "Alice", "Bob", "Carol", "Dave", "Eve", "Frank", "Grace", "Heidi", "Ivan", "Judy", "Mallory",
    "Niaj", "Olivia", "Peggy", "Rupert", "Sybil", "Trent", "Victor", "Walter", "Yara",
];
const LAST: &[&str] = &[
    "Admin", "Agent", "Customer", "Visitor", "Nakamura", "Okafor", "Silva", "Novak", "Haddad",
    "Jensen", "Moreau", "Kowalski", "Rossi", "Tanaka", "Singh", "Lopez",
];
const COMPANIES: &[&str] = &[
    "Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Stark", "Wayne", "Tyrell",
    "Soylent",
];

impl World {
    /// Generates a world from a spec (deterministic for a given seed).
    pub fn generate(spec: &WorldSpec) -> Result<World> {
        if spec.accounts == 0
            || spec.users_per_account == 0
            || spec.contacts_per_account == 0
            || spec.conversations_per_contact == 0
        {
            return Err(SimError::Invalid(
                "a world needs at least one account, and one user, one contact and one \
                 conversation per account"
                    .into(),
            ));
        }
        if spec.shared_users > spec.users_per_account {
            return Err(SimError::Invalid(
                "shared users cannot exceed users per account".into(),
            ));
        }
        let mut rng = Rng::new(spec.seed);
        let mut world = World::default();
        let (mut user_id, mut contact_id, mut conversation_id) = (0u64, 10_000u64, 100_000u64);
        for a in 1..=spec.accounts as u64 {
            world.accounts.push(Account {
                id: a,
                name: format!("{} {a}", rng.pick(COMPANIES)),
                inbox_id: a,
            });
            let first_user = world.users.len();
            for u in 0..spec.users_per_account {
                user_id += 1;
                let name = format!("{} {}", rng.pick(FIRST), rng.pick(LAST));
                world.users.push(User {
                    id: user_id,
                    name,
                    role: if u == 0 {
                        Role::Administrator
                    } else {
                        Role::Agent
                    },
                    availability: if rng.chance(20) { "busy" } else { "online" }.to_owned(),
                    pubsub_token: rng.token(24),
                    api_access_token: String::new(),
                    accounts: vec![a],
                });
                if u < spec.shared_users && a < spec.accounts as u64 {
                    world.users[first_user + u].accounts.push(a + 1);
                }
            }
            for _ in 0..spec.contacts_per_account {
                contact_id += 1;
                let first = rng.pick(FIRST);
                let conversations = (0..spec.conversations_per_contact)
                    .map(|_| {
                        conversation_id += 1;
                        conversation_id
                    })
                    .collect();
                world.contacts.push(Contact {
                    id: contact_id,
                    account_id: a,
                    name: format!("{first} {}", rng.pick(LAST)),
                    email: rng
                        .chance(70)
                        .then(|| format!("{}.{contact_id}@example.com", first.to_lowercase())),
                    phone_number: rng.chance(60).then(|| format!("+1555{contact_id:07}")),
                    pubsub_token: rng.token(24),
                    conversations,
                });
            }
        }
        world.fill_api_tokens();
        world.validate()?;
        Ok(world)
    }

    /// Gives every user without an API access token one, derived from the user id alone (so a
    /// generated world, and a world file without tokens, always get the same ones) and unique
    /// among the world's tokens.
    pub fn fill_api_tokens(&mut self) {
        let mut taken: HashSet<String> = self
            .users
            .iter()
            .map(|u| u.api_access_token.clone())
            .chain(self.users.iter().map(|u| u.pubsub_token.clone()))
            .chain(self.contacts.iter().map(|c| c.pubsub_token.clone()))
            .filter(|t| !t.is_empty())
            .collect();
        for user in self
            .users
            .iter_mut()
            .filter(|u| u.api_access_token.is_empty())
        {
            let mut rng = Rng::new(user.id ^ 0x00A9_1AC3_55ED);
            let token = loop {
                let t = rng.token(24);
                if taken.insert(t.clone()) {
                    break t;
                }
            };
            user.api_access_token = token;
        }
    }

    /// Loads a world from a `.json` file, or TOML for any other extension.
    pub fn load(path: &Path) -> Result<World> {
        let fail = |reason: String| SimError::WorldFile {
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let world = if path.extension().is_some_and(|e| e == "json") {
            Self::from_json(&text)
        } else {
            Self::from_toml(&text)
        };
        world.map_err(|e| fail(e.to_string()))
    }

    /// Decodes and validates a world written as TOML (`[[accounts]]`, `[[users]]`, `[[contacts]]`).
    pub fn from_toml(text: &str) -> Result<World> {
        let mut world: World =
            toml::from_str(text).map_err(|e| SimError::InvalidWorld(e.to_string()))?;
        world.fill_api_tokens();
        world.validate()?;
        Ok(world)
    }

    /// Decodes and validates a world written as JSON.
    pub fn from_json(text: &str) -> Result<World> {
        let mut world: World =
            serde_json::from_str(text).map_err(|e| SimError::InvalidWorld(e.to_string()))?;
        world.fill_api_tokens();
        world.validate()?;
        Ok(world)
    }

    /// The world as TOML, loadable by [`World::from_toml`].
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// The world as pretty JSON, loadable by [`World::from_json`].
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks that ids and tokens are unique, references resolve, and every account has at least
    /// one user, one contact and one conversation (the event generator needs them).
    pub fn validate(&self) -> Result<()> {
        let invalid = |m: String| Err(SimError::InvalidWorld(m));
        let mut accounts = HashSet::new();
        for a in &self.accounts {
            if !accounts.insert(a.id) {
                return invalid(format!("account {} appears twice", a.id));
            }
        }
        let mut tokens = HashSet::new();
        let mut users = HashSet::new();
        let mut has_user = HashSet::new();
        for u in &self.users {
            if !users.insert(u.id) {
                return invalid(format!("user {} appears twice", u.id));
            }
            if u.accounts.is_empty() {
                return invalid(format!("user {} belongs to no account", u.id));
            }
            for a in &u.accounts {
                if !accounts.contains(a) {
                    return invalid(format!("user {} names unknown account {a}", u.id));
                }
                has_user.insert(*a);
            }
            if !tokens.insert(u.pubsub_token.as_str()) || u.pubsub_token.is_empty() {
                return invalid(format!("user {} has an empty or duplicate token", u.id));
            }
            // An empty API token is filled by `fill_api_tokens` when the simulator starts.
            if !u.api_access_token.is_empty() && !tokens.insert(u.api_access_token.as_str()) {
                return invalid(format!("user {} has a duplicate API access token", u.id));
            }
        }
        let mut contacts = HashSet::new();
        let mut conversations = HashSet::new();
        let mut has_conversation = HashSet::new();
        for c in &self.contacts {
            if !contacts.insert(c.id) {
                return invalid(format!("contact {} appears twice", c.id));
            }
            if !accounts.contains(&c.account_id) {
                return invalid(format!(
                    "contact {} names unknown account {}",
                    c.id, c.account_id
                ));
            }
            if !tokens.insert(c.pubsub_token.as_str()) || c.pubsub_token.is_empty() {
                return invalid(format!("contact {} has an empty or duplicate token", c.id));
            }
            for conv in &c.conversations {
                if !conversations.insert(*conv) {
                    return invalid(format!("conversation {conv} appears twice"));
                }
                has_conversation.insert(c.account_id);
            }
        }
        for a in &self.accounts {
            if !has_user.contains(&a.id) || !has_conversation.contains(&a.id) {
                return invalid(format!(
                    "account {} needs at least one user and one contact with a conversation",
                    a.id
                ));
            }
        }
        Ok(())
    }

    /// The account with this id.
    pub fn account(&self, id: u64) -> Option<&Account> {
        self.accounts.iter().find(|a| a.id == id)
    }

    /// The user with this id.
    pub fn user(&self, id: u64) -> Option<&User> {
        self.users.iter().find(|u| u.id == id)
    }

    /// The contact with this id.
    pub fn contact(&self, id: u64) -> Option<&Contact> {
        self.contacts.iter().find(|c| c.id == id)
    }

    /// The users belonging to an account.
    pub fn users_of(&self, account_id: u64) -> impl Iterator<Item = &User> {
        self.users
            .iter()
            .filter(move |u| u.accounts.contains(&account_id))
    }

    /// The contacts of an account.
    pub fn contacts_of(&self, account_id: u64) -> impl Iterator<Item = &Contact> {
        self.contacts
            .iter()
            .filter(move |c| c.account_id == account_id)
    }

    /// The contact owning a conversation.
    pub fn conversation_owner(&self, conversation_id: u64) -> Option<&Contact> {
        self.contacts
            .iter()
            .find(|c| c.conversations.contains(&conversation_id))
    }

    /// The identifier a user subscribes with for one of its accounts.
    pub fn user_identifier(&self, user_id: u64, account_id: u64) -> Option<RoomIdentifier> {
        let user = self.user(user_id)?;
        Some(RoomIdentifier::user(
            PubsubToken::new(user.pubsub_token.clone()),
            account_id,
            user.id,
        ))
    }

    /// The identifier a contact subscribes with (the token alone).
    pub fn contact_identifier(&self, contact_id: u64) -> Option<RoomIdentifier> {
        let contact = self.contact(contact_id)?;
        Some(RoomIdentifier::contact(PubsubToken::new(
            contact.pubsub_token.clone(),
        )))
    }

    /// The tokens selected by `options`, each once: a user under the first of its accounts (its
    /// token receives all of them), a contact under its account.
    pub fn bridge_accounts(&self, options: &ExportOptions) -> Vec<BridgeAccount> {
        let wanted = |a: u64| {
            options
                .accounts
                .as_ref()
                .is_none_or(|list| list.contains(&a))
        };
        let limit = options.max_per_account.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        // A user in several accounts has one token; a bridge config lists each token once (the
        // token receives every account's events, each carrying its account_id).
        let mut users_seen = std::collections::HashSet::new();
        for account in self.accounts.iter().filter(|a| wanted(a.id)) {
            if options.tokens != TokenSelection::Contacts {
                out.extend(
                    self.users_of(account.id)
                        .take(limit)
                        .filter(|u| users_seen.insert(u.id))
                        .map(|u| BridgeAccount {
                            account_id: account.id,
                            user_id: Some(u.id),
                            pubsub_token: u.pubsub_token.clone(),
                            api_access_token: options
                                .api_tokens
                                .then(|| u.api_access_token.clone()),
                        }),
                );
            }
            if options.tokens != TokenSelection::Users {
                out.extend(
                    self.contacts_of(account.id)
                        .take(limit)
                        .map(|c| BridgeAccount {
                            account_id: account.id,
                            user_id: None,
                            pubsub_token: c.pubsub_token.clone(),
                            api_access_token: None,
                        }),
                );
            }
        }
        out
    }

    /// The selected tokens as the TOML `[[accounts]]` list a bridge config reads.
    pub fn bridge_config_toml(&self, options: &ExportOptions) -> String {
        #[derive(Serialize)]
        struct Export {
            accounts: Vec<BridgeAccount>,
        }
        let body = toml::to_string(&Export {
            accounts: self.bridge_accounts(options),
        })
        .unwrap_or_default();
        format!("# Generated by voxsig-sim: tokens of the simulated world.\n{body}")
    }
}

/// Who a token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owner {
    /// `world.users[i]`.
    User(usize),
    /// `world.contacts[i]`.
    Contact(usize),
}

/// Look-up tables over a world, rebuilt whenever the world changes (token rotation).
#[derive(Debug, Default)]
pub(crate) struct WorldIndex {
    pub(crate) tokens: HashMap<String, Owner>,
    /// API access token to the index of its user.
    pub(crate) api_tokens: HashMap<String, usize>,
    /// Account id to (indices of its users, indices of its contacts).
    pub(crate) accounts: HashMap<u64, AccountIndex>,
    /// Conversation id to the index of its contact.
    pub(crate) conversations: HashMap<u64, usize>,
    /// Account ids in world order.
    pub(crate) account_ids: Vec<u64>,
}

/// One account's members, by index into the world's vectors.
#[derive(Debug, Default)]
pub(crate) struct AccountIndex {
    pub(crate) position: usize,
    pub(crate) users: Vec<usize>,
    pub(crate) contacts: Vec<usize>,
    /// (conversation id, contact index).
    pub(crate) conversations: Vec<(u64, usize)>,
}

impl WorldIndex {
    pub(crate) fn build(world: &World) -> WorldIndex {
        let mut index = WorldIndex::default();
        for (position, a) in world.accounts.iter().enumerate() {
            index.account_ids.push(a.id);
            index.accounts.insert(
                a.id,
                AccountIndex {
                    position,
                    ..AccountIndex::default()
                },
            );
        }
        for (i, u) in world.users.iter().enumerate() {
            index.tokens.insert(u.pubsub_token.clone(), Owner::User(i));
            if !u.api_access_token.is_empty() {
                index.api_tokens.insert(u.api_access_token.clone(), i);
            }
            for a in &u.accounts {
                if let Some(acc) = index.accounts.get_mut(a) {
                    acc.users.push(i);
                }
            }
        }
        for (i, c) in world.contacts.iter().enumerate() {
            index
                .tokens
                .insert(c.pubsub_token.clone(), Owner::Contact(i));
            if let Some(acc) = index.accounts.get_mut(&c.account_id) {
                acc.contacts.push(i);
                acc.conversations
                    .extend(c.conversations.iter().map(|conv| (*conv, i)));
            }
            for conv in &c.conversations {
                index.conversations.insert(*conv, i);
            }
        }
        index
    }
}

/// A world and its index, swapped together.
#[derive(Debug)]
pub(crate) struct WorldState {
    pub(crate) world: World,
    pub(crate) index: WorldIndex,
}

impl WorldState {
    pub(crate) fn new(world: World) -> WorldState {
        let index = WorldIndex::build(&world);
        WorldState { world, index }
    }

    /// Every conversation, for the platform's records.
    pub(crate) fn seeds(&self) -> Vec<crate::store::Seed> {
        let world = &self.world;
        world
            .contacts
            .iter()
            .enumerate()
            .flat_map(|(i, c)| {
                let inbox_id = world.account(c.account_id).map_or(1, |a| a.inbox_id);
                c.conversations.iter().map(move |id| crate::store::Seed {
                    id: *id,
                    account_id: c.account_id,
                    inbox_id,
                    contact: i,
                })
            })
            .collect()
    }

    /// Replaces a token; the old one is unknown from now on.
    pub(crate) fn rotate(&mut self, old: &str, new: String) -> Result<()> {
        if self.index.tokens.contains_key(&new)
            || self.index.api_tokens.contains_key(&new)
            || new.is_empty()
        {
            return Err(SimError::TokenInUse);
        }
        match self.index.tokens.get(old) {
            Some(Owner::User(i)) => self.world.users[*i].pubsub_token = new,
            Some(Owner::Contact(i)) => self.world.contacts[*i].pubsub_token = new,
            None => return Err(SimError::UnknownToken),
        }
        self.index = WorldIndex::build(&self.world);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> WorldSpec {
        WorldSpec {
            accounts: 3,
            users_per_account: 2,
            contacts_per_account: 2,
            conversations_per_contact: 2,
            shared_users: 1,
            seed: 9,
        }
    }

    #[test]
    fn generation_is_deterministic_and_valid() {
        let a = World::generate(&spec()).unwrap();
        assert_eq!(a, World::generate(&spec()).unwrap());
        assert_eq!(a.accounts.len(), 3);
        assert_eq!(a.users.len(), 6);
        assert_eq!(a.contacts.len(), 6);
        assert!(a.contacts.iter().all(|c| c.conversations.len() == 2));
        // The first user of accounts 1 and 2 also belongs to the next account.
        assert_eq!(a.users[0].accounts, vec![1, 2]);
        assert_eq!(a.users[2].accounts, vec![2, 3]);
        assert_eq!(a.users[4].accounts, vec![3]);
        assert_eq!(a.users_of(2).count(), 3);
    }

    #[test]
    fn toml_and_json_round_trip() {
        let w = World::generate(&spec()).unwrap();
        assert_eq!(World::from_toml(&w.to_toml()).unwrap(), w);
        assert_eq!(World::from_json(&w.to_json()).unwrap(), w);
    }

    #[test]
    fn validation_catches_inconsistencies() {
        let mut w = World::generate(&spec()).unwrap();
        w.contacts[1].pubsub_token = w.users[0].pubsub_token.clone();
        assert!(matches!(w.validate(), Err(SimError::InvalidWorld(_))));
        let mut w = World::generate(&spec()).unwrap();
        w.users[0].accounts.push(42);
        assert!(w.validate().is_err());
        let mut w = World::generate(&spec()).unwrap();
        w.contacts.retain(|c| c.account_id != 3);
        assert!(w.validate().is_err());
        assert!(World::generate(&WorldSpec {
            contacts_per_account: 0,
            ..spec()
        })
        .is_err());
    }

    #[test]
    fn bridge_export_selects_tokens() {
        let w = World::generate(&spec()).unwrap();
        let users = w.bridge_accounts(&ExportOptions::default());
        // 2 own users per account; the users shared into accounts 2 and 3 appear once, under
        // their first account (one token, one entry: the bridge rejects a token twice).
        assert_eq!(users.len(), 6);
        assert!(users.iter().all(|b| b.user_id.is_some()));
        let tokens: std::collections::HashSet<_> = users.iter().map(|b| &b.pubsub_token).collect();
        assert_eq!(tokens.len(), users.len());
        let contacts = w.bridge_accounts(&ExportOptions {
            tokens: TokenSelection::Contacts,
            ..ExportOptions::default()
        });
        assert_eq!(contacts.len(), 6);
        assert!(contacts.iter().all(|b| b.user_id.is_none()));
        let some = w.bridge_accounts(&ExportOptions {
            tokens: TokenSelection::All,
            max_per_account: Some(1),
            accounts: Some(vec![2]),
            api_tokens: true,
        });
        assert_eq!(some.len(), 2);
        let toml_text = w.bridge_config_toml(&ExportOptions::default());
        assert!(toml_text.contains("[[accounts]]"), "{toml_text}");
        #[derive(Deserialize)]
        struct Back {
            accounts: Vec<BridgeAccount>,
        }
        let back: Back = toml::from_str(&toml_text).unwrap();
        assert_eq!(back.accounts, users);
        assert!(back.accounts[0].identifier().wire().contains("\"user_id\""));
    }

    #[test]
    fn every_user_gets_a_distinct_derived_api_token() {
        let w = World::generate(&spec()).unwrap();
        let again = World::generate(&spec()).unwrap();
        assert_eq!(w, again, "deterministic");
        let mut seen = HashSet::new();
        for u in &w.users {
            assert_eq!(u.api_access_token.len(), 24);
            assert_ne!(u.api_access_token, u.pubsub_token);
            assert!(seen.insert(u.api_access_token.clone()));
        }
        // A world file without API tokens gets the same ones; with one set, it is kept.
        let mut stripped = w.clone();
        for u in &mut stripped.users {
            u.api_access_token.clear();
        }
        stripped.users[1].api_access_token = "chosen".into();
        let back = World::from_toml(&stripped.to_toml()).unwrap();
        assert_eq!(back.users[0].api_access_token, w.users[0].api_access_token);
        assert_eq!(back.users[1].api_access_token, "chosen");
        let mut dup = w.clone();
        dup.users[1].api_access_token = dup.users[0].api_access_token.clone();
        assert!(dup.validate().is_err());
        let mut clash = w.clone();
        clash.users[1].api_access_token = clash.contacts[0].pubsub_token.clone();
        assert!(clash.validate().is_err());
        let state = WorldState::new(w.clone());
        assert_eq!(
            state.index.api_tokens.get(&w.users[2].api_access_token),
            Some(&2)
        );
    }

    #[test]
    fn rotation_replaces_the_token() {
        let w = World::generate(&spec()).unwrap();
        let old = w.users[0].pubsub_token.clone();
        let mut state = WorldState::new(w);
        state.rotate(&old, "fresh".into()).unwrap();
        assert!(!state.index.tokens.contains_key(&old));
        assert_eq!(state.index.tokens.get("fresh"), Some(&Owner::User(0)));
        assert!(matches!(
            state.rotate(&old, "x".into()),
            Err(SimError::UnknownToken)
        ));
        let other = state.world.users[1].pubsub_token.clone();
        assert!(matches!(
            state.rotate("fresh", other),
            Err(SimError::TokenInUse)
        ));
    }
}
