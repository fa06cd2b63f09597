//! Pubsub tokens: secrets that must never reach a log line, a metric label or an error message.

use std::fmt;

/// A Voxsig pubsub token (user or contact). `Debug` and `Display` show only a redacted form
/// (`tok…a1b2`); [`PubsubToken::expose`] is the one way to read the secret, for the wire.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PubsubToken(String);

impl PubsubToken {
    /// Wraps a token.
    pub fn new(token: impl Into<String>) -> Self {
        PubsubToken(token.into())
    }

    /// The secret itself, for encoding frames. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The redacted form: `tok…` and the last four characters (fewer for short tokens), enough
    /// to tell tokens apart in logs without revealing them.
    pub fn redacted(&self) -> String {
        let chars: Vec<char> = self.0.chars().collect();
        // A short token shows less, so the redacted form never reveals most of it.
        let shown = (chars.len() / 6).min(4);
        let tail: String = chars[chars.len() - shown..].iter().collect();
        format!("tok…{tail}")
    }
}

impl fmt::Debug for PubsubToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for PubsubToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_secret() {
        let t = PubsubToken::new("furNHtAQnqxQN2FmkLzf8x4T");
        assert_eq!(format!("{t}"), "tok…8x4T");
        assert_eq!(format!("{t:?}"), "tok…8x4T");
        assert!(!format!("{t:?}").contains("furNHt"));
        assert_eq!(t.expose(), "furNHtAQnqxQN2FmkLzf8x4T");
    }

    #[test]
    fn short_tokens_reveal_little_or_nothing() {
        assert_eq!(PubsubToken::new("").redacted(), "tok…");
        assert_eq!(PubsubToken::new("abc").redacted(), "tok…");
        assert_eq!(PubsubToken::new("abcdefgh").redacted(), "tok…h");
    }
}
