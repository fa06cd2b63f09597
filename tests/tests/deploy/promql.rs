//! Metric names in PromQL expressions.

use crate::metrics::known_metric;
use std::collections::BTreeSet;

pub(crate) const PROMQL_KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
    "atan2",
];

/// The metric names a PromQL expression selects: identifiers outside strings, label matchers,
/// ranges and grouping clauses that are neither functions, aggregations nor keywords. Grafana
/// variables (`$instance`, `$__rate_interval`) are skipped.
pub(crate) fn metric_names(expr: &str) -> BTreeSet<String> {
    let plain = strip_grouping(&strip_enclosed(expr));
    let chars: Vec<char> = plain.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while let Some((token, end)) = next_token(&chars, i) {
        i = end;
        let Token::Word(word) = token else { continue };
        let called = chars[i..].iter().find(|c| !c.is_whitespace()) == Some(&'(');
        if !called && !PROMQL_KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
            names.insert(word);
        }
    }
    names
}

/// A lexical token of PromQL, as far as [`metric_names`] cares.
pub(crate) enum Token {
    /// An identifier: a metric, function, aggregation or keyword.
    Word(String),
    /// A number, a duration, a Grafana variable or punctuation.
    Other,
}

/// The token starting at or after `i`, and where it ends.
pub(crate) fn next_token(chars: &[char], mut i: usize) -> Option<(Token, usize)> {
    let ident_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let ident_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    while i < chars.len() && chars[i].is_whitespace() {
        i += 1;
    }
    let c = *chars.get(i)?;
    let start = i;
    i += 1;
    if c == '$' {
        // A Grafana variable: $name or ${name}.
        while i < chars.len() && (ident_char(chars[i]) || chars[i] == '{' || chars[i] == '}') {
            i += 1;
        }
    } else if c.is_ascii_digit() || c == '.' {
        // A number or a duration (0.99, 1e3, 5m).
        while i < chars.len() && (ident_char(chars[i]) || chars[i] == '.') {
            i += 1;
        }
    } else if ident_start(c) {
        while i < chars.len() && ident_char(chars[i]) {
            i += 1;
        }
        return Some((Token::Word(chars[start..i].iter().collect()), i));
    }
    Some((Token::Other, i))
}

/// The expression with strings, `{label matchers}` and `[ranges]` blanked out.
pub(crate) fn strip_enclosed(expr: &str) -> String {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            q @ ('"' | '\'' | '`') => {
                i += 1;
                while i < chars.len() && chars[i] != q {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
                out.push(' ');
            }
            open @ ('{' | '[') => {
                let close = if open == '{' { '}' } else { ']' };
                while i < chars.len() && chars[i] != close {
                    i += 1;
                }
                i += 1;
                out.push(' ');
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// The expression without grouping clauses (`by (a, b)`, `on (c)`, `group_left (d)`), so an
/// aggregation is directly followed by its parenthesis.
pub(crate) fn strip_grouping(expr: &str) -> String {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while let Some((token, end)) = next_token(&chars, i) {
        let grouping = matches!(&token, Token::Word(w) if matches!(
            w.as_str(),
            "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
        ));
        let open = chars[end..].iter().position(|c| !c.is_whitespace());
        if grouping && open.is_some_and(|o| chars[end + o] == '(') {
            let close = chars[end..]
                .iter()
                .position(|c| *c == ')')
                .expect("closed grouping clause");
            i = end + close + 1;
            out.push(' ');
        } else {
            out.extend(&chars[i..end]);
            i = end;
        }
    }
    out
}

/// Fails with every unknown metric an expression names.
pub(crate) fn assert_known_metrics(context: &str, expr: &str) -> BTreeSet<String> {
    let names = metric_names(expr);
    assert!(!names.is_empty(), "{context}: names no metric: {expr}");
    let unknown: Vec<_> = names.iter().filter(|n| !known_metric(n)).collect();
    assert!(
        unknown.is_empty(),
        "{context}: unknown metric(s) {unknown:?} in {expr}"
    );
    names
}

#[test]
fn promql_metric_names_are_extracted() {
    let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (le, sink) (rate(a_bucket{instance=~"$instance"}[$__rate_interval])))"#
        ),
        ["a_bucket"]
    );
    assert_eq!(
        names(r#"sum by (job) (b{state="open"}) > 0 and on (job) (rate(c[15m]) or d * 0) == 0"#),
        ["b", "c", "d"]
    );
    assert_eq!(
        names("sum(rate(e[5m] offset 1h)) without (x) / ignoring(y) group_left f > bool 1e3"),
        ["e", "f"]
    );
    assert_eq!(names(r#"absent(up{job="x"})"#), ["up"]);
    assert!(known_metric(
        "voxsig_bridge_sink_publish_latency_seconds_bucket"
    ));
    assert!(!known_metric(
        "voxsig_bridge_sink_publish_latency_seconds_total"
    ));
    assert!(!known_metric("voxsig_bridge_nonexistent"));
}
