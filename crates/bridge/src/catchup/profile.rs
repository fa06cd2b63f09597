//! Discovery: entries with an API access token and no pubsub token (or `account_id = "all"`)
//! learn the user's id, pubsub token and accounts from `GET /api/v1/profile` at start.

use super::rest::{DecodeError, RestClient, RestError};
use crate::config::{Account, AccountSelector, Settings};
use std::collections::HashSet;
use voxsig_protocol::PubsubToken;

/// Why discovery failed. Names the entry, never a token.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The profile could not be read.
    #[error("{entry}: GET /api/v1/profile failed: {error}")]
    Profile {
        /// The entry, e.g. `accounts[2]`.
        entry: String,
        /// Why.
        error: RestError,
    },
    /// The configured account is not one of the user's.
    #[error(
        "{entry}: account {account} is not among the accounts of the API token's user ({known:?})"
    )]
    NotAMember {
        /// The entry.
        entry: String,
        /// The configured account.
        account: u64,
        /// The profile's accounts.
        known: Vec<u64>,
    },
}

/// Turns every [`Settings::discover`] entry into subscriptions (one per account), appended to
/// [`Settings::accounts`]. A (token, account) pair already configured is not added twice.
pub async fn discover(settings: &mut Settings, client: &RestClient) -> Result<(), DiscoveryError> {
    let pending = std::mem::take(&mut settings.discover);
    let mut seen: HashSet<(String, u64)> = settings
        .accounts
        .iter()
        .map(|a| (a.token.expose().to_owned(), a.account_id))
        .collect();
    for d in pending {
        let profile =
            client
                .profile(&d.api_token)
                .await
                .map_err(|error| DiscoveryError::Profile {
                    entry: d.entry.clone(),
                    error,
                })?;
        let token = d
            .token
            .clone()
            .unwrap_or_else(|| PubsubToken::new(profile.pubsub_token.trim()));
        if token.expose().is_empty() {
            return Err(DiscoveryError::Profile {
                entry: d.entry.clone(),
                error: DecodeError::EmptyPubsubToken.into(),
            });
        }
        let known: Vec<u64> = profile.accounts.iter().map(|a| a.id).collect();
        let accounts: Vec<u64> = match d.accounts {
            AccountSelector::All => known.clone(),
            AccountSelector::Id(id) if known.contains(&id) => vec![id],
            AccountSelector::Id(account) => {
                return Err(DiscoveryError::NotAMember {
                    entry: d.entry,
                    account,
                    known,
                })
            }
        };
        let user = d.user_id.unwrap_or(profile.id);
        tracing::info!(
            entry = d.entry.as_str(),
            user,
            accounts = accounts.len(),
            token = %token,
            "profile read"
        );
        for account in accounts {
            if !settings.config.shard.owns(account)
                || !seen.insert((token.expose().to_owned(), account))
            {
                continue;
            }
            settings.accounts.push(Account {
                account_id: account,
                user_id: Some(user),
                token: token.clone(),
                labels: d.labels.clone(),
                api_token: Some(d.api_token.clone()),
                entry: d.entry.clone(),
            });
        }
    }
    Ok(())
}
