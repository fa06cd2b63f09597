//! `[[accounts]]` and `accounts_file`: the subscriptions, their tokens resolved, and the
//! entries whose token, user or accounts come from the profile at start.

use super::error::scrub_values;
use super::secrets::{resolve_api_token, resolve_token};
use super::shard::ShardConfig;
use super::ConfigError;
use crate::catchup::rest::ApiToken;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use voxsig_protocol::{PubsubToken, RoomIdentifier};

/// Which account an entry subscribes for: one id, or `"all"` (every account of the API
/// token's profile).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountSelector {
    /// One account.
    Id(u64),
    /// Every account in the profile (needs an API access token).
    All,
}

impl Serialize for AccountSelector {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            AccountSelector::Id(id) => s.serialize_u64(*id),
            AccountSelector::All => s.serialize_str("all"),
        }
    }
}

impl<'de> Deserialize<'de> for AccountSelector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = AccountSelector;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an account id or \"all\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(AccountSelector::Id(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(AccountSelector::Id)
                    .map_err(|_| E::custom("an account id is not negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "all" => Ok(AccountSelector::All),
                    // Environment overrides arrive as strings.
                    _ => v
                        .parse()
                        .map(AccountSelector::Id)
                        .map_err(|_| E::custom("expected an account id or \"all\"")),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// One subscription: a user token (with `user_id`) or a contact token (without). With an
/// `api_access_token`, the pubsub token and user id may be left out (read from the profile).
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    /// The account, or `"all"`; a contact entry may leave it out.
    #[serde(default)]
    pub account_id: Option<AccountSelector>,
    /// The user, for a user (agent/admin) token; absent for a contact token.
    #[serde(default)]
    pub user_id: Option<u64>,
    /// The token itself.
    #[serde(default, serialize_with = "redact")]
    pub pubsub_token: Option<String>,
    /// The environment variable holding the token.
    #[serde(default)]
    pub pubsub_token_env: Option<String>,
    /// The file holding the token (surrounding white space trimmed).
    #[serde(default)]
    pub pubsub_token_file: Option<PathBuf>,
    /// The user's REST API access token (profile discovery, catch-up, rotation).
    #[serde(default, serialize_with = "redact")]
    pub api_access_token: Option<String>,
    /// The environment variable holding the API access token.
    #[serde(default)]
    pub api_access_token_env: Option<String>,
    /// The file holding the API access token (surrounding white space trimmed).
    #[serde(default)]
    pub api_access_token_file: Option<PathBuf>,
    /// Free-form labels, usable in topic templates as `{label.NAME}`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl std::fmt::Debug for AccountConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountConfig")
            .field("account_id", &self.account_id)
            .field("user_id", &self.user_id)
            .field(
                "pubsub_token",
                &self.pubsub_token.as_ref().map(|_| "<redacted>"),
            )
            .field("pubsub_token_env", &self.pubsub_token_env)
            .field("pubsub_token_file", &self.pubsub_token_file)
            .field(
                "api_access_token",
                &self.api_access_token.as_ref().map(|_| "<redacted>"),
            )
            .field("api_access_token_env", &self.api_access_token_env)
            .field("api_access_token_file", &self.api_access_token_file)
            .field("labels", &self.labels)
            .finish()
    }
}

fn redact<S: serde::Serializer>(value: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(token) => s.serialize_str(&PubsubToken::new(token.as_str()).redacted()),
        None => s.serialize_none(),
    }
}

/// A configured subscription with its token resolved.
#[derive(Debug, Clone)]
pub struct Account {
    /// The configured account.
    pub account_id: u64,
    /// The user, for user tokens.
    pub user_id: Option<u64>,
    /// The token.
    pub token: PubsubToken,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// The user's API access token, when the entry has one.
    pub api_token: Option<ApiToken>,
    /// The entry it came from (`accounts[2]`), for messages.
    pub entry: String,
}

/// An entry whose pubsub token, user or accounts come from the profile (`GET /api/v1/profile`)
/// at start.
#[derive(Debug, Clone)]
pub struct Discovery {
    /// The entry (`accounts[2]`), for messages.
    pub entry: String,
    /// One account or all of the profile's.
    pub accounts: AccountSelector,
    /// The user, if configured (else the profile's).
    pub user_id: Option<u64>,
    /// The pubsub token, if configured (else the profile's).
    pub token: Option<PubsubToken>,
    /// The API access token.
    pub api_token: ApiToken,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

impl Account {
    /// The RoomChannel identifier of this subscription.
    pub fn identifier(&self) -> RoomIdentifier {
        match self.user_id {
            Some(user) => RoomIdentifier::user(self.token.clone(), self.account_id, user),
            None => RoomIdentifier::contact(self.token.clone()),
        }
    }
}

/// The entries of `[[accounts]]` and of `accounts_file`, each with the key naming it.
pub(super) fn entries(
    inline: &[AccountConfig],
    file: Option<&Path>,
) -> Result<Vec<(String, AccountConfig)>, ConfigError> {
    let mut entries: Vec<(String, AccountConfig)> = inline
        .iter()
        .enumerate()
        .map(|(i, a)| (format!("accounts[{i}]"), a.clone()))
        .collect();
    if let Some(file) = file {
        entries.extend(load_accounts_file(file)?);
    }
    Ok(entries)
}

/// Resolves every entry: the subscriptions this replica serves (each pubsub token once) and
/// the entries waiting for the profile.
pub(super) fn resolve(
    entries: Vec<(String, AccountConfig)>,
    shard: &ShardConfig,
) -> Result<(Vec<Account>, Vec<Discovery>), ConfigError> {
    if entries.is_empty() {
        return Err(ConfigError::new(
            "accounts",
            "no accounts configured: add [[accounts]] tables or set accounts_file",
        ));
    }
    let mut accounts = Vec::with_capacity(entries.len());
    let mut discover = Vec::new();
    let mut token_owners: HashMap<String, String> = HashMap::new();
    for (key, entry) in entries {
        match resolve_entry(key, entry)? {
            Resolved::Discover(discovery) => discover.push(discovery),
            Resolved::Subscribe(account) => {
                let token = account.token.expose().to_owned();
                if let Some(first) = token_owners.insert(token, account.entry.clone()) {
                    return Err(ConfigError::new(
                        account.entry,
                        format!(
                            "uses the same pubsub token as {first}; each token may appear once"
                        ),
                    ));
                }
                if shard.owns(account.account_id) {
                    accounts.push(account);
                }
            }
        }
    }
    Ok((accounts, discover))
}

/// What one entry resolves to.
enum Resolved {
    /// Everything is configured: subscribe as written.
    Subscribe(Account),
    /// Something comes from the profile at start.
    Discover(Discovery),
}

fn resolve_entry(key: String, entry: AccountConfig) -> Result<Resolved, ConfigError> {
    let api_token = resolve_api_token(&key, &entry)?.map(ApiToken::new);
    if entry.needs_profile(api_token.is_some()) {
        return discovery(key, entry, api_token).map(Resolved::Discover);
    }
    let account_id = entry.subscribed_account(&key)?;
    let token = PubsubToken::new(resolve_token(&key, &entry)?);
    Ok(Resolved::Subscribe(Account {
        account_id,
        user_id: entry.user_id,
        token,
        labels: entry.labels,
        api_token,
        entry: key,
    }))
}

fn discovery(
    key: String,
    entry: AccountConfig,
    api_token: Option<ApiToken>,
) -> Result<Discovery, ConfigError> {
    let selector = entry.account_id;
    let Some(api_token) = api_token else {
        return Err(ConfigError::new(
            key,
            if selector == Some(AccountSelector::All) {
                "account_id = \"all\" needs an api_access_token (the accounts come from the profile)"
            } else {
                "set exactly one of pubsub_token, pubsub_token_env, pubsub_token_file (or an api_access_token to read it from the profile)"
            },
        ));
    };
    let token = if entry.has_pubsub() {
        Some(PubsubToken::new(resolve_token(&key, &entry)?))
    } else {
        None
    };
    Ok(Discovery {
        entry: key,
        accounts: selector.unwrap_or(AccountSelector::All),
        user_id: entry.user_id,
        token,
        api_token,
        labels: entry.labels,
    })
}

impl AccountConfig {
    fn has_pubsub(&self) -> bool {
        self.pubsub_token.is_some()
            || self.pubsub_token_env.is_some()
            || self.pubsub_token_file.is_some()
    }

    /// Whether the profile must fill something in: no pubsub token, every account, or a user
    /// entry (it has an API token) without its user id.
    fn needs_profile(&self, has_api_token: bool) -> bool {
        !self.has_pubsub()
            || self.account_id == Some(AccountSelector::All)
            || (self.user_id.is_none() && has_api_token)
    }

    /// The account a fully configured entry subscribes for.
    fn subscribed_account(&self, key: &str) -> Result<u64, ConfigError> {
        match self.account_id {
            Some(AccountSelector::Id(id)) => Ok(id),
            // A contact token's identifier has no account; events name theirs.
            None if self.user_id.is_none() => Ok(0),
            _ => Err(ConfigError::new(
                format!("{key}.account_id"),
                "is required for a user entry",
            )),
        }
    }
}

fn load_accounts_file(path: &Path) -> Result<Vec<(String, AccountConfig)>, ConfigError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        accounts: Vec<AccountConfig>,
    }
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new("accounts_file", format!("cannot read {shown}: {e}")))?;
    // Parser messages quote the values they found (`invalid type: string "…"`): a token in
    // the wrong key would be printed, so quoted values are scrubbed.
    let file: File = if path.extension().is_some_and(|x| x == "json") {
        serde_json::from_str(&text).map_err(|e| {
            ConfigError::new(
                "accounts_file",
                format!("{shown}: {}", scrub_values(&e.to_string())),
            )
        })?
    } else {
        toml::from_str(&text).map_err(|e| {
            let at = e
                .span()
                .map(|span| {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            ConfigError::new(
                "accounts_file",
                format!("{shown}: {}{at}", scrub_values(e.message())),
            )
        })?
    };
    Ok(file
        .accounts
        .into_iter()
        .enumerate()
        .map(|(i, a)| (format!("{shown}: accounts[{i}]"), a))
        .collect())
}
