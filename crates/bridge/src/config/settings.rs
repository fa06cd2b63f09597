//! [`Settings`]: a validated configuration, ready to run, and its redacted rendering for `check`.

use super::accounts::{Account, AccountConfig, AccountSelector, Discovery};
use super::Config;
use crate::route::{EventFilter, Template};
use voxsig_sinks::SinkConfig;

/// A validated configuration, ready to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The configuration as loaded.
    pub config: Config,
    /// Every subscription, tokens resolved.
    pub accounts: Vec<Account>,
    /// Entries resolved from the profile at start (see [`crate::catchup::profile::discover`]).
    pub discover: Vec<Discovery>,
    /// The parsed topic template.
    pub topic: Template,
    /// The parsed key template.
    pub key: Template,
    /// The event filter.
    pub filter: EventFilter,
    /// The sink (stdout when the config has none).
    pub sink: SinkConfig,
}

impl Settings {
    /// The configuration rendered as TOML with every secret redacted, for `check`.
    pub fn redacted_toml(&self) -> String {
        let mut shown = self.config.clone();
        // Show the accounts actually resolved (including the accounts file), tokens redacted.
        shown.accounts = self
            .accounts
            .iter()
            .map(|a| AccountConfig {
                account_id: Some(AccountSelector::Id(a.account_id)),
                user_id: a.user_id,
                pubsub_token: Some(a.token.expose().to_owned()),
                pubsub_token_env: None,
                pubsub_token_file: None,
                api_access_token: a.api_token.as_ref().map(|t| t.expose().to_owned()),
                api_access_token_env: None,
                api_access_token_file: None,
                labels: a.labels.clone(),
            })
            .chain(self.discover.iter().map(|d| AccountConfig {
                account_id: Some(d.accounts),
                user_id: d.user_id,
                pubsub_token: d.token.as_ref().map(|t| t.expose().to_owned()),
                pubsub_token_env: None,
                pubsub_token_file: None,
                api_access_token: Some(d.api_token.expose().to_owned()),
                api_access_token_env: None,
                api_access_token_file: None,
                labels: d.labels.clone(),
            }))
            .collect();
        // The accounts file's entries are listed above; naming the file as well would show them
        // twice. It is named in a comment instead.
        let from_file = shown.accounts_file.take();
        shown.route.topic = Some(self.topic.as_str().to_owned());
        shown.sink = Some(self.sink.clone());
        shown.route.key = self.key.as_str().to_owned();
        let mut out = String::new();
        if let Some(file) = from_file {
            out.push_str(&format!(
                "# accounts below include those of accounts_file = {}\n",
                file.display()
            ));
        }
        if self.config.sink.is_none() {
            out.push_str("# no [sink] in the config: events are written to stdout as JSON lines\n");
        }
        out.push_str(
            &toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n")),
        );
        out
    }
}
