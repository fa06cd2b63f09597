//! Errors of configuration and of building a sink.

use crate::secret::SecretError;

/// A configuration value is invalid; names the key (`sink.url`, `buffer.max_events`, ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    key: String,
    message: String,
}

impl ConfigError {
    /// An error about `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }

    /// The offending key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// What is wrong with it.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// A sink could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A secret could not be read.
    #[error("{key}: {source}")]
    Secret {
        /// The key holding the secret (`sink.password`, `sink.properties.sasl.password`, ...).
        key: String,
        /// Why it could not be read.
        source: SecretError,
    },
    /// A file (output, certificate, key) could not be opened or read.
    #[error("{key}: cannot open {path}: {source}")]
    Io {
        /// The key naming the file.
        key: &'static str,
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS setup failed (bad certificate or key).
    #[error("{key}: {message}")]
    Tls {
        /// The key naming the offending file.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}
