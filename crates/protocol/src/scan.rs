//! A minimal validating JSON reader over a borrowed text, for the hot path.
//!
//! It walks a frame exactly once and hands out byte spans instead of building values, so the
//! extractor can pick the few fields it needs and keep `data` as the original bytes. Everything it
//! skips is still validated (strings, escapes, numbers, literals, nesting depth), so a frame it
//! accepts is valid JSON and an event's `data` can travel on byte-identical.

use std::borrow::Cow;
use std::fmt;

/// How deep objects and arrays may nest, as in `serde_json`.
pub(crate) const MAX_DEPTH: usize = 128;

/// Where and why a text is not valid JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonError {
    /// Byte offset of the problem.
    pub offset: usize,
    /// What the problem is.
    pub reason: JsonErrorReason,
}

/// Why a text is not valid JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonErrorReason {
    /// The text ends in the middle of a value (a truncated frame).
    UnexpectedEnd,
    /// A byte that cannot start or continue the value being read.
    UnexpectedByte,
    /// A control character inside a string, or an invalid escape.
    InvalidString,
    /// A malformed number.
    InvalidNumber,
    /// Nesting deeper than 128 levels.
    TooDeep,
    /// Something follows the top-level value.
    TrailingCharacters,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.reason {
            JsonErrorReason::UnexpectedEnd => "unexpected end of input",
            JsonErrorReason::UnexpectedByte => "unexpected character",
            JsonErrorReason::InvalidString => "invalid string",
            JsonErrorReason::InvalidNumber => "invalid number",
            JsonErrorReason::TooDeep => "nesting too deep",
            JsonErrorReason::TrailingCharacters => "trailing characters",
        };
        write!(f, "{what} at byte {}", self.offset)
    }
}

/// A JSON string as it stands in the text: its contents between the quotes, still escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawStr<'a> {
    raw: &'a str,
    escaped: bool,
}

impl<'a> RawStr<'a> {
    /// A string that needs no escaping, for events that did not come from a frame (e.g. ones
    /// a catch-up read from the REST API).
    pub fn plain(text: &'a str) -> Self {
        RawStr {
            raw: text,
            escaped: false,
        }
    }

    /// The contents between the quotes, escapes and all.
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// The string's value, borrowed when it has no escapes.
    pub fn decode(&self) -> Cow<'a, str> {
        if !self.escaped {
            return Cow::Borrowed(self.raw);
        }
        Cow::Owned(unescape(self.raw))
    }

    /// Whether the value equals `plain` (a string without characters that need escaping).
    pub(crate) fn is(&self, plain: &str) -> bool {
        if self.escaped {
            unescape(self.raw) == plain
        } else {
            self.raw == plain
        }
    }
}

/// Decodes the escapes of a string the reader has already validated.
fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some('u') => {
                let unit = hex4(&mut chars);
                let code = if (0xD800..0xDC00).contains(&unit) {
                    // A high surrogate; validated input has a low one after it, or we substitute.
                    let rest = chars.as_str();
                    if rest.starts_with("\\u") {
                        chars.next();
                        chars.next();
                        let low = hex4(&mut chars);
                        0x10000 + ((unit - 0xD800) << 10) + (low.wrapping_sub(0xDC00) & 0x3FF)
                    } else {
                        0xFFFD
                    }
                } else {
                    unit
                };
                out.push(char::from_u32(code).unwrap_or('\u{FFFD}'));
            }
            Some(other) => out.push(other), // `"`, `\`, `/`
            None => {}
        }
    }
    out
}

fn hex4(chars: &mut std::str::Chars<'_>) -> u32 {
    let mut v = 0;
    for _ in 0..4 {
        v = v * 16 + chars.next().and_then(|c| c.to_digit(16)).unwrap_or(0);
    }
    v
}

/// Eight copies of one byte.
const fn splat(b: u8) -> u64 {
    u64::from_le_bytes([b; 8])
}

/// The high bit of each byte of `w` that ends a run of string contents: a quote, a backslash
/// or a control character (below 0x20). The lowest set bit is exact; bits above it may be
/// false (a borrow carries into the next byte), so only the first one is used.
#[inline]
fn specials(w: u64) -> u64 {
    let has_zero = |x: u64| x.wrapping_sub(splat(1)) & !x;
    let quote = has_zero(w ^ splat(b'"'));
    let backslash = has_zero(w ^ splat(b'\\'));
    let control = w.wrapping_sub(splat(0x20)) & !w;
    (quote | backslash | control) & splat(0x80)
}

/// Where the run of string contents starting at `pos` ends: the offset of the first quote,
/// backslash or control character, or the end of `bytes`. One pass, eight bytes at a time.
#[inline]
fn run_end(bytes: &[u8], mut pos: usize) -> usize {
    while let Some(chunk) = bytes.get(pos..pos + 8) {
        let word = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        let found = specials(word);
        if found != 0 {
            return pos + (found.trailing_zeros() / 8) as usize;
        }
        pos += 8;
    }
    while let Some(&b) = bytes.get(pos) {
        if b == b'"' || b == b'\\' || b < 0x20 {
            return pos;
        }
        pos += 1;
    }
    pos
}

/// A cursor over a JSON text.
pub(crate) struct Reader<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

pub(crate) type Result<T> = std::result::Result<T, JsonError>;

impl<'a> Reader<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        Reader {
            text,
            bytes: text.as_bytes(),
            pos: 0,
        }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// The text between two offsets the reader produced (always on character boundaries).
    pub(crate) fn slice(&self, start: usize, end: usize) -> &'a str {
        &self.text[start..end]
    }

    fn error(&self, reason: JsonErrorReason) -> JsonError {
        JsonError {
            offset: self.pos,
            reason,
        }
    }

    fn unexpected(&self) -> JsonError {
        if self.pos >= self.bytes.len() {
            self.error(JsonErrorReason::UnexpectedEnd)
        } else {
            self.error(JsonErrorReason::UnexpectedByte)
        }
    }

    pub(crate) fn skip_ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    /// The next significant byte, after white space.
    pub(crate) fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.bytes.get(self.pos).copied()
    }

    /// Succeeds when only white space is left.
    pub(crate) fn finish(&mut self) -> Result<()> {
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(self.error(JsonErrorReason::TrailingCharacters)),
        }
    }

    /// Reads a string, returning its raw contents.
    pub(crate) fn string(&mut self) -> Result<RawStr<'a>> {
        if self.peek() != Some(b'"') {
            return Err(self.unexpected());
        }
        self.pos += 1;
        let start = self.pos;
        let mut escaped = false;
        loop {
            // The body up to the next quote, backslash or control character, in one pass.
            self.pos = run_end(self.bytes, self.pos);
            match self.bytes.get(self.pos) {
                None => return Err(self.error(JsonErrorReason::UnexpectedEnd)),
                Some(b'"') => {
                    let raw = &self.text[start..self.pos];
                    self.pos += 1;
                    return Ok(RawStr { raw, escaped });
                }
                Some(b'\\') => {
                    escaped = true;
                    self.escape()?;
                }
                Some(_) => return Err(self.error(JsonErrorReason::InvalidString)),
            }
        }
    }

    /// Validates one escape sequence at the cursor (which is on the backslash).
    fn escape(&mut self) -> Result<()> {
        self.pos += 1;
        match self.bytes.get(self.pos) {
            None => Err(self.error(JsonErrorReason::UnexpectedEnd)),
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                self.pos += 1;
                Ok(())
            }
            Some(b'u') => {
                self.pos += 1;
                for _ in 0..4 {
                    match self.bytes.get(self.pos) {
                        None => return Err(self.error(JsonErrorReason::UnexpectedEnd)),
                        Some(b) if b.is_ascii_hexdigit() => self.pos += 1,
                        Some(_) => return Err(self.error(JsonErrorReason::InvalidString)),
                    }
                }
                Ok(())
            }
            Some(_) => Err(self.error(JsonErrorReason::InvalidString)),
        }
    }

    /// Reads a number, returning its text.
    pub(crate) fn number(&mut self) -> Result<&'a str> {
        self.skip_ws();
        let start = self.pos;
        if self.bytes.get(self.pos) == Some(&b'-') {
            self.pos += 1;
        }
        match self.bytes.get(self.pos) {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            None => return Err(self.error(JsonErrorReason::UnexpectedEnd)),
            Some(_) => return Err(self.error(JsonErrorReason::InvalidNumber)),
        }
        if self.bytes.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            self.required_digits()?;
        }
        if let Some(b'e' | b'E') = self.bytes.get(self.pos) {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.bytes.get(self.pos) {
                self.pos += 1;
            }
            self.required_digits()?;
        }
        Ok(&self.text[start..self.pos])
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    fn required_digits(&mut self) -> Result<()> {
        match self.bytes.get(self.pos) {
            Some(b'0'..=b'9') => {
                self.digits();
                Ok(())
            }
            None => Err(self.error(JsonErrorReason::UnexpectedEnd)),
            Some(_) => Err(self.error(JsonErrorReason::InvalidNumber)),
        }
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<()> {
        let end = self.pos + word.len();
        if self.bytes.get(self.pos..end) == Some(word) {
            self.pos = end;
            Ok(())
        } else if end > self.bytes.len() && word.starts_with(&self.bytes[self.pos..]) {
            self.pos = self.bytes.len();
            Err(self.error(JsonErrorReason::UnexpectedEnd))
        } else {
            Err(self.error(JsonErrorReason::UnexpectedByte))
        }
    }

    /// Reads `true` or `false`.
    pub(crate) fn boolean(&mut self) -> Result<bool> {
        match self.peek() {
            Some(b't') => self.literal(b"true").map(|()| true),
            Some(b'f') => self.literal(b"false").map(|()| false),
            _ => Err(self.unexpected()),
        }
    }

    /// Skips one value of any kind, validating it. `depth` is the nesting level of the value.
    pub(crate) fn skip(&mut self, depth: usize) -> Result<()> {
        match self.peek() {
            Some(b'{') => self.object(depth, |r, _key| r.skip(depth + 1)),
            Some(b'[') => self.array(depth),
            Some(b'"') => self.string().map(drop),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number().map(drop),
            _ => Err(self.unexpected()),
        }
    }

    fn array(&mut self, depth: usize) -> Result<()> {
        if depth >= MAX_DEPTH {
            return Err(self.error(JsonErrorReason::TooDeep));
        }
        self.pos += 1; // '['
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.skip(depth + 1)?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.unexpected()),
            }
        }
    }

    /// Reads an object, calling `member` with each key; `member` must consume the value.
    /// `depth` is the nesting level of the object itself.
    pub(crate) fn object(
        &mut self,
        depth: usize,
        mut member: impl FnMut(&mut Self, RawStr<'a>) -> Result<()>,
    ) -> Result<()> {
        if self.peek() != Some(b'{') {
            return Err(self.unexpected());
        }
        if depth >= MAX_DEPTH {
            return Err(self.error(JsonErrorReason::TooDeep));
        }
        self.pos += 1;
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            let key = self.string()?;
            if self.peek() != Some(b':') {
                return Err(self.unexpected());
            }
            self.pos += 1;
            member(self, key)?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.unexpected()),
            }
        }
    }

    /// Reads a value that should be a non-negative integer id: `7` or `"7"`. Any other value is
    /// skipped (validated) and gives `None`: a field of an unexpected type is not the frame's fault.
    pub(crate) fn id(&mut self, depth: usize) -> Result<Option<u64>> {
        match self.peek() {
            Some(b'0'..=b'9') => Ok(self.number()?.parse().ok()),
            Some(b'"') => Ok(self.string()?.raw().parse().ok()),
            _ => self.skip(depth).map(|()| None),
        }
    }
}

/// Validates that `text` is one JSON value and nothing else.
pub fn validate(text: &str) -> std::result::Result<(), JsonError> {
    let mut reader = Reader::new(text);
    reader.skip(0)?;
    reader.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_json_accepts() {
        for ok in [
            "{}",
            "[]",
            " 0 ",
            "-0.5e+10",
            "1E5",
            r#""a\"b\\c\/\b\f\n\r\t\u00e9\ud83d\ude00""#,
            r#"{"a":[1,2,{"b":null,"c":true,"d":false}],"e":"é"}"#,
        ] {
            assert_eq!(validate(ok), Ok(()), "{ok}");
            assert!(
                serde_json::from_str::<serde::de::IgnoredAny>(ok).is_ok(),
                "{ok}"
            );
        }
    }

    #[test]
    fn rejects_what_json_rejects_with_the_reason() {
        use JsonErrorReason::*;
        for (bad, reason) in [
            ("", UnexpectedEnd),
            ("{", UnexpectedEnd),
            (r#"{"a":1"#, UnexpectedEnd),
            (r#"{"a":tru"#, UnexpectedEnd),
            (r#"{"a":trux}"#, UnexpectedByte),
            ("01", TrailingCharacters),
            ("1.", UnexpectedEnd),
            ("1.e5", InvalidNumber),
            ("-", UnexpectedEnd),
            ("+1", UnexpectedByte),
            ("\"a\u{1}\"", InvalidString),
            (r#""\x""#, InvalidString),
            (r#""\u12g4""#, InvalidString),
            ("[1,]", UnexpectedByte),
            ("{\"a\" 1}", UnexpectedByte),
            ("{} {}", TrailingCharacters),
            ("{'a':1}", UnexpectedByte),
        ] {
            assert_eq!(validate(bad).map_err(|e| e.reason), Err(reason), "{bad:?}");
            assert!(
                serde_json::from_str::<serde::de::IgnoredAny>(bad).is_err(),
                "{bad:?}"
            );
        }
    }

    /// The first quote, backslash or control character, byte by byte: what `run_end` must find.
    fn naive_run_end(bytes: &[u8], pos: usize) -> usize {
        bytes[pos..]
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
            .map_or(bytes.len(), |i| pos + i)
    }

    #[test]
    fn run_end_finds_the_first_special_byte_at_every_offset() {
        // Every byte value at every place of a word, after every start offset, with ordinary
        // bytes (ASCII and UTF-8 continuation bytes, which set the high bit) around it, and a
        // second special byte after it (a borrow must not hide or move the first).
        for b in 0..=255u8 {
            for at in 0..20 {
                for filler in [b'a', 0x80, 0xff, b' ', b'!', b'#', b'[', b']'] {
                    let mut text = vec![filler; 24];
                    text[at] = b;
                    if at + 1 < text.len() {
                        text[at + 1] = 0;
                    }
                    for start in 0..=at.min(9) {
                        assert_eq!(
                            run_end(&text, start),
                            naive_run_end(&text, start),
                            "byte {b:#x} at {at}, filler {filler:#x}, start {start}"
                        );
                    }
                }
            }
        }
        assert_eq!(run_end(b"", 0), 0);
        assert_eq!(run_end(b"abcdefghijk", 3), 11);
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert_eq!(
            validate(&deep).map_err(|e| e.reason),
            Err(JsonErrorReason::TooDeep)
        );
        let fine = "[".repeat(100) + &"]".repeat(100);
        assert_eq!(validate(&fine), Ok(()));
    }

    #[test]
    fn strings_decode_escapes() {
        let mut r = Reader::new(r#""plain""#);
        let s = r.string().unwrap();
        assert!(matches!(s.decode(), Cow::Borrowed("plain")));
        let mut r = Reader::new(r#""a\"b\u00e9\ud83d\ude00\n""#);
        assert_eq!(r.string().unwrap().decode(), "a\"bé😀\n");
    }

    #[test]
    fn ids_are_lenient_about_type() {
        for (text, want) in [
            ("7", Some(7)),
            ("\"42\"", Some(42)),
            ("1.5", None),
            ("null", None),
            ("{}", None),
            ("-3", None),
        ] {
            let mut r = Reader::new(text);
            assert_eq!(r.id(0).unwrap(), want, "{text}");
        }
    }
}
