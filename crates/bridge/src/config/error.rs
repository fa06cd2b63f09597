//! [`ConfigError`]: which key, what is wrong; and turning parser errors into one without
//! quoting the values found (they may be secrets in the wrong key).

/// A configuration problem: which key, what is wrong. Never contains a secret.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct ConfigError {
    /// The key, e.g. `source.url` or `accounts[3].pubsub_token_env`.
    pub key: String,
    /// What is wrong with it.
    pub problem: String,
}

impl ConfigError {
    pub(crate) fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            problem: problem.into(),
        }
    }

    /// The sinks' validation errors already name the full key (`sink.qos`, `buffer.max_bytes`).
    pub(crate) fn from_sinks(e: voxsig_sinks::ConfigError) -> Self {
        ConfigError::new(e.key(), e.message())
    }
}

/// A table of checks, `(key, holds, problem)`: the first that does not hold is the error.
pub(crate) fn first_failed<'a>(
    checks: impl IntoIterator<Item = (&'a str, bool, &'a str)>,
) -> Result<(), ConfigError> {
    match checks.into_iter().find(|(_, holds, _)| !holds) {
        Some((key, _, problem)) => Err(ConfigError::new(key, problem)),
        None => Ok(()),
    }
}

/// Turns figment's error (which names the key and the file) into ours. The value found is
/// described by its type, never quoted: it may be a secret in the wrong key.
pub(super) fn figment_error(e: figment::Error) -> ConfigError {
    use figment::error::Kind;
    let key = if e.path.is_empty() {
        "config".to_owned()
    } else {
        e.path.join(".")
    };
    let mut problem = match &e.kind {
        Kind::InvalidType(actual, expected) => {
            format!(
                "invalid type: found {}, expected {expected}",
                kind_of(actual)
            )
        }
        Kind::InvalidValue(actual, expected) => {
            format!(
                "invalid value: found {}, expected {expected}",
                kind_of(actual)
            )
        }
        Kind::Unsupported(actual) => format!("unsupported type {}", kind_of(actual)),
        other => one_line(&scrub_values(&other.to_string())),
    };
    if let Some(source) = &e.metadata.as_ref().and_then(|m| m.source.as_ref()) {
        problem.push_str(&format!(" (in {source})"));
    }
    ConfigError::new(key, problem)
}

/// A parser's multi-line message on one line, without its source excerpt (the lines drawn with
/// `|`, which quote the offending line, secret or not): `TOML parse error at line 3, column 16:
/// invalid string`.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains('|'))
        .collect::<Vec<_>>()
        .join(": ")
}

/// What a found value is, without the value.
fn kind_of(actual: &figment::error::Actual) -> &'static str {
    use figment::error::Actual;
    match actual {
        Actual::Bool(_) => "a boolean",
        Actual::Unsigned(_) | Actual::Signed(_) => "an integer",
        Actual::Float(_) => "a float",
        Actual::Char(_) | Actual::Str(_) => "a string",
        Actual::Bytes(_) => "bytes",
        Actual::Seq => "an array",
        Actual::Map => "a table",
        _ => "a value of another type",
    }
}

/// A parser's message with every quoted value (`"…"`, as serde quotes strings) replaced by
/// `"…"`: the value may be a secret in the wrong key.
pub(crate) fn scrub_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut chars = message.chars();
    // Inside backticks are names the parser expected (`"`, `mqtt`), not values found.
    let mut in_backticks = false;
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '`' {
            in_backticks = !in_backticks;
        } else if c == '"' && !in_backticks {
            out.push_str("…\"");
            let mut escaped = false;
            for c in chars.by_ref() {
                match c {
                    '\\' if !escaped => escaped = true,
                    '"' if !escaped => break,
                    _ => escaped = false,
                }
            }
        }
    }
    out
}
