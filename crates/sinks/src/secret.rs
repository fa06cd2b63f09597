//! Secrets (passwords, SASL credentials) given inline, from an environment variable or from a
//! file. Their values never appear in `Debug`, logs, labels or errors.

use std::path::PathBuf;

use serde::Deserialize;

/// Where a secret comes from: `"inline"`, `{ env = "NAME" }` or `{ file = "/path" }`.
///
/// Serialises (for `voxsig-bridge check`) as where it comes from, an inline value redacted.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawSecret")]
pub struct Secret(Source);

#[derive(Clone, PartialEq, Eq)]
enum Source {
    Inline(String),
    Env(String),
    File(PathBuf),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawSecret {
    Inline(String),
    Table(SecretTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretTable {
    env: Option<String>,
    file: Option<PathBuf>,
    value: Option<String>,
}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match &self.0 {
            Source::Inline(_) => serializer.serialize_str("<redacted>"),
            Source::Env(name) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("env", name)?;
                map.end()
            }
            Source::File(path) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("file", path)?;
                map.end()
            }
        }
    }
}

impl TryFrom<RawSecret> for Secret {
    type Error = String;

    fn try_from(raw: RawSecret) -> Result<Self, Self::Error> {
        match raw {
            RawSecret::Inline(value) => Ok(Secret(Source::Inline(value))),
            RawSecret::Table(SecretTable {
                env: Some(env),
                file: None,
                value: None,
            }) => Ok(Secret(Source::Env(env))),
            RawSecret::Table(SecretTable {
                env: None,
                file: Some(file),
                value: None,
            }) => Ok(Secret(Source::File(file))),
            RawSecret::Table(SecretTable {
                env: None,
                file: None,
                value: Some(value),
            }) => Ok(Secret(Source::Inline(value))),
            RawSecret::Table(_) => {
                Err("a secret sets exactly one of `env`, `file` or `value`".to_owned())
            }
        }
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Source::Inline(_) => f.write_str("Secret(<redacted>)"),
            Source::Env(name) => write!(f, "Secret(env {name})"),
            Source::File(path) => write!(f, "Secret(file {})", path.display()),
        }
    }
}

/// A secret could not be read. The message names neither the variable nor the file (either
/// may be a secret pasted into the wrong key); the caller names the key.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The environment variable is unset or not UTF-8.
    #[error("the environment variable named by `env` is not set (or not UTF-8)")]
    MissingEnv(String),
    /// The file could not be read.
    #[error("cannot read the file named by `file`: {}", .source.kind())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A resolved secret value; `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    /// The value, for handing to a client library only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Secret {
    /// An inline secret.
    pub fn inline(value: impl Into<String>) -> Self {
        Secret(Source::Inline(value.into()))
    }

    /// A secret read from an environment variable.
    pub fn from_env(name: impl Into<String>) -> Self {
        Secret(Source::Env(name.into()))
    }

    /// A secret read from a file (one trailing newline is removed).
    pub fn from_file(path: impl Into<PathBuf>) -> Self {
        Secret(Source::File(path.into()))
    }

    /// Reads the value.
    pub fn resolve(&self) -> Result<SecretValue, SecretError> {
        match &self.0 {
            Source::Inline(value) => Ok(SecretValue(value.clone())),
            Source::Env(name) => std::env::var(name)
                .map(SecretValue)
                .map_err(|_| SecretError::MissingEnv(name.clone())),
            Source::File(path) => {
                let mut value =
                    std::fs::read_to_string(path).map_err(|source| SecretError::File {
                        path: path.clone(),
                        source,
                    })?;
                if value.ends_with('\n') {
                    value.pop();
                    if value.ends_with('\r') {
                        value.pop();
                    }
                }
                Ok(SecretValue(value))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Holder {
        password: Secret,
    }

    fn parse(s: &str) -> Result<Secret, serde_json::Error> {
        serde_json::from_str::<Holder>(s).map(|h| h.password)
    }

    #[test]
    fn sources_parse_and_debug_redacts() {
        let inline = parse(r#"{"password":"hunter2"}"#).unwrap();
        assert_eq!(format!("{inline:?}"), "Secret(<redacted>)");
        assert_eq!(inline.resolve().unwrap().expose(), "hunter2");
        assert!(!format!("{:?}", inline.resolve().unwrap()).contains("hunter2"));
        let env = parse(r#"{"password":{"env":"VOXSIG_TEST_UNSET_VAR"}}"#).unwrap();
        let err = env.resolve().unwrap_err().to_string();
        assert!(err.contains("not set"), "{err}");
        assert!(!err.contains("VOXSIG_TEST_UNSET_VAR"), "{err}");
        assert!(parse(r#"{"password":{"env":"A","file":"b"}}"#).is_err());
    }

    #[test]
    fn file_secret_drops_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\n").unwrap();
        assert_eq!(
            Secret::from_file(&path).resolve().unwrap().expose(),
            "s3cret"
        );
    }
}
