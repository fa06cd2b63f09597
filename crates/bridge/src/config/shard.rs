//! `[shard]`: which share of the accounts this replica serves.

use super::ConfigError;
use serde::{Deserialize, Serialize};

/// Splits the accounts between replicas: this one keeps the entries whose account hashes to
/// `index` modulo `count`. Every entry of one account lands on the same replica, so dedup
/// across an account's tokens keeps working. Kubernetes sets `index` from the pod ordinal.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShardConfig {
    /// This replica's share, `0..count`.
    pub index: u32,
    /// How many replicas split the accounts.
    pub count: u32,
}

impl Default for ShardConfig {
    fn default() -> Self {
        ShardConfig { index: 0, count: 1 }
    }
}

impl ShardConfig {
    /// Whether this replica serves `account_id`.
    pub fn owns(&self, account_id: u64) -> bool {
        self.count <= 1
            || xxhash_rust::xxh3::xxh3_64(&account_id.to_le_bytes()) % u64::from(self.count)
                == u64::from(self.index)
    }

    /// Checks `index` against `count`.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.count == 0 || self.index >= self.count {
            return Err(ConfigError::new(
                "shard.index",
                format!(
                    "must be below shard.count ({}), which must be at least 1",
                    self.count
                ),
            ));
        }
        Ok(())
    }
}
