//! The process's log output, set up in one place: format, filter, and what no filter can
//! override.
//!
//! - Dependencies that log frame or packet contents at debug/trace (tungstenite writes every
//!   `subscribe` frame, pubsub token included; rumqttc its packets; hyper its headers) are
//!   capped at [`DEPENDENCY_CAP`] whatever `--log`/`RUST_LOG` asks for, so a secret never
//!   reaches the log at any level.
//! - The human format escapes control characters in every field and message (an event name
//!   holding `ESC[2J` or a newline can neither clear the terminal nor forge a line); the JSON
//!   format escapes them by construction.
//! - Colours only on a terminal, and never when `NO_COLOR` is set (<https://no-color.org>).

use std::io::IsTerminal;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::{debug_fn, FmtSpan};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The most a dependency may log, whatever the filter says: below this level they write frame
/// and packet contents.
pub const DEPENDENCY_CAP: LevelFilter = LevelFilter::INFO;

/// Log targets of dependencies that handle secrets on the wire (tokens in WebSocket frames,
/// passwords in MQTT CONNECT, SASL, HTTP headers).
pub const CAPPED_TARGETS: &[&str] = &[
    "tungstenite",
    "tokio_tungstenite",
    "rumqttc",
    "rumqttd",
    "rdkafka",
    "librdkafka",
    "hyper",
    "hyper_util",
    "h2",
    "http",
    "reqwest",
    "ureq",
    "axum",
    "tower",
    "tower_http",
    "rustls",
    "tokio_rustls",
    "mio",
    "want",
];

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Human-readable lines, control characters escaped.
    Human,
    /// One JSON object per line.
    Json,
}

/// The cap applied on top of any filter.
pub fn dependency_cap() -> Targets {
    CAPPED_TARGETS.iter().fold(
        Targets::new().with_default(LevelFilter::TRACE),
        |t, target| t.with_target(*target, DEPENDENCY_CAP),
    )
}

/// Whether to colour: stderr is a terminal and `NO_COLOR` is unset or empty.
pub fn use_colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Installs the process-wide subscriber writing to stderr. `filter` is tracing's env-filter
/// syntax; an invalid one falls back to `info`.
pub fn init(format: Format, filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let log_level = log_max_level(&filter);
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(dependency_cap());
    let result = match format {
        Format::Human => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(use_colour())
                    .with_span_events(FmtSpan::NONE)
                    .fmt_fields(escaping_fields())
                    .boxed(),
            )
            .try_init(),
        Format::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr)
                    .boxed(),
            )
            .try_init(),
    };
    // Already set (tests, an embedding program): theirs stays.
    if result.is_ok() {
        // `try_init` told the `log` crate the subscriber's level hint, which the cap's
        // pass-through default makes TRACE: every `log` record of a dependency (tokio-tungstenite
        // writes a `trace!` per frame read) then reached the filter, ~2% of the CPU at full
        // rate. The filter's own most verbose level is the real bound (the cap only lowers it).
        log::set_max_level(log_level);
    }
}

/// The most verbose level `log` records may have to be worth handing to the subscriber: the
/// filter's (TRACE when it filters on span field values, which it cannot know in advance).
fn log_max_level(filter: &EnvFilter) -> log::LevelFilter {
    match filter.max_level_hint() {
        Some(LevelFilter::OFF) => log::LevelFilter::Off,
        Some(LevelFilter::ERROR) => log::LevelFilter::Error,
        Some(LevelFilter::WARN) => log::LevelFilter::Warn,
        Some(LevelFilter::INFO) => log::LevelFilter::Info,
        Some(LevelFilter::DEBUG) => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    }
}

/// Field formatting for the human format: `name=value` separated by spaces, the message bare,
/// every value's control characters escaped.
fn escaping_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + 'static {
    use tracing_subscriber::field::MakeExt;
    debug_fn(|writer, field, value| {
        let text = format!("{value:?}");
        if field.name() == "message" {
            writer.write_str(&escape_controls(&text))
        } else {
            write!(writer, "{}={}", field.name(), escape_controls(&text))
        }
    })
    .delimited(" ")
}

/// `text` with every control character (C0, DEL, C1) written as `\n`, `\t`, `\u{1b}`...
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_records_are_cut_at_the_filter_s_most_verbose_level() {
        let cases = [
            ("warn", log::LevelFilter::Warn),
            ("error", log::LevelFilter::Error),
            ("off", log::LevelFilter::Off),
            ("info,voxsig_bridge=debug", log::LevelFilter::Debug),
            ("warn,tokio_tungstenite=trace", log::LevelFilter::Trace),
            ("info,[connection]=debug", log::LevelFilter::Debug),
            ("[{token=\"x\"}]=warn", log::LevelFilter::Trace),
        ];
        for (filter, expected) in cases {
            let filter = EnvFilter::try_new(filter).expect(filter);
            assert_eq!(log_max_level(&filter), expected, "{filter}");
        }
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_controls("plain é"), "plain é");
        assert_eq!(
            escape_controls("a\u{1b}[2J\nINFO forged\r\u{85}"),
            "a\\u{1b}[2J\\nINFO forged\\r\\u{85}"
        );
    }

    #[test]
    fn quotes_are_short_and_escaped() {
        use voxsig_protocol::quote_untrusted;
        assert_eq!(quote_untrusted("abc", 8), "abc");
        let long = "x".repeat(1 << 20);
        let q = quote_untrusted(&long, 64);
        assert!(q.len() < 100, "{q}");
        assert!(q.ends_with("…(1048576 bytes)"), "{q}");
        assert_eq!(quote_untrusted("\u{1b}[2J", 8), "\\u{1b}[2J");
    }

    #[test]
    fn dependencies_are_capped_below_debug() {
        let cap = dependency_cap();
        assert!(cap.would_enable("tungstenite::protocol", &tracing::Level::INFO));
        assert!(!cap.would_enable("tungstenite::protocol", &tracing::Level::DEBUG));
        assert!(!cap.would_enable("rumqttc::state", &tracing::Level::TRACE));
        assert!(cap.would_enable("voxsig_bridge::connection", &tracing::Level::TRACE));
    }
}
