//! Secrets given inline, by environment variable or by file: exactly one, trimmed, never echoed.

use super::accounts::AccountConfig;
use super::ConfigError;
use std::path::Path;

/// The entry's API access token, if it has one: at most one of the three keys, resolved as
/// every secret is ([`resolve_secret`]), and free of white space and control characters.
pub(super) fn resolve_api_token(
    key: &str,
    entry: &AccountConfig,
) -> Result<Option<String>, ConfigError> {
    let inline = entry.api_access_token.as_deref();
    let env = entry.api_access_token_env.as_deref();
    let file = entry.api_access_token_file.as_deref();
    match [inline.is_some(), env.is_some(), file.is_some()]
        .into_iter()
        .filter(|set| *set)
        .count()
    {
        0 => return Ok(None),
        1 => {}
        _ => {
            return Err(ConfigError::new(
                key,
                "set at most one of api_access_token, api_access_token_env, api_access_token_file",
            ))
        }
    }
    let token = resolve_secret(key, "api_access_token", inline, env, file)?;
    if token.chars().any(|c| c.is_control() || c == ' ') {
        return Err(ConfigError::new(
            key,
            "the api access token holds white space or control characters",
        ));
    }
    Ok(Some(token))
}

pub(super) fn resolve_token(key: &str, entry: &AccountConfig) -> Result<String, ConfigError> {
    resolve_secret(
        key,
        "pubsub_token",
        entry.pubsub_token.as_deref(),
        entry.pubsub_token_env.as_deref(),
        entry.pubsub_token_file.as_deref(),
    )
}

/// Resolves a secret given as `<name>` (inline), `<name>_env` (an environment variable) or
/// `<name>_file` (a file) under `key` (e.g. `accounts[3]`): exactly one must be set. Both the
/// variable's and the file's value are trimmed (a Kubernetes Secret's trailing newline); an empty
/// or white-space-only value is an error. Errors name the key, never the value: a token pasted
/// into `<name>_env` or `<name>_file` is not echoed as a variable name or a path.
pub fn resolve_secret(
    key: &str,
    name: &str,
    inline: Option<&str>,
    env: Option<&str>,
    file: Option<&Path>,
) -> Result<String, ConfigError> {
    let value = match (inline, env, file) {
        (Some(value), None, None) => value.to_owned(),
        (None, Some(var), None) => std::env::var(var).map_err(|e| {
            let why = match e {
                std::env::VarError::NotPresent => "is not set",
                std::env::VarError::NotUnicode(_) => "is not UTF-8",
            };
            ConfigError::new(
                format!("{key}.{name}_env"),
                format!("the environment variable this key names {why}"),
            )
        })?,
        (None, None, Some(path)) => std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(
                format!("{key}.{name}_file"),
                format!("cannot read the file this key names: {}", e.kind()),
            )
        })?,
        _ => {
            return Err(ConfigError::new(
                key,
                format!("set exactly one of {name}, {name}_env, {name}_file"),
            ))
        }
    };
    let trimmed = value.trim();
    if trimmed.is_empty() {
        let source = match (env, file) {
            (Some(_), _) => format!("{key}.{name}_env"),
            (_, Some(_)) => format!("{key}.{name}_file"),
            _ => format!("{key}.{name}"),
        };
        return Err(ConfigError::new(
            source,
            "the token is empty or only white space",
        ));
    }
    Ok(trimmed.to_owned())
}
