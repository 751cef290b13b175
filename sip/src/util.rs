//! Character classes, header-name canonicalisation and quote-aware splitting
//! shared by the parsers. Everything here works on `&str` with byte offsets
//! obtained from the same string, and never indexes blindly.

use std::borrow::Cow;

/// RFC 3261 `token` bytes as a table: every header name and parameter of
/// every message is checked byte by byte.
const TOKEN_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            );
        i += 1;
    }
    table
};

/// RFC 3261 `token` byte (all token characters are ASCII).
pub(crate) fn is_token_byte(b: u8) -> bool {
    TOKEN_BYTES[usize::from(b)]
}

/// RFC 3261 `token` characters.
pub(crate) fn is_token_char(c: char) -> bool {
    u8::try_from(c).is_ok_and(is_token_byte)
}

pub(crate) fn is_token(s: &str) -> bool {
    // Token characters are all ASCII: a byte test is exact.
    !s.is_empty() && s.bytes().all(is_token_byte)
}

/// Linear white space inside an (already unfolded) header value.
pub(crate) fn is_lws(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// A linear white space byte (both LWS characters are ASCII, so a byte
/// test is exact, and cuts beside such bytes fall on character boundaries).
#[inline]
pub(crate) fn is_lws_byte(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// The range of `b` without linear white space at either end.
#[inline]
pub(crate) fn lws_trimmed(b: &[u8]) -> std::ops::Range<usize> {
    // Nearly every value is trimmed already at both ends: look at the two
    // end bytes before scanning.
    if !b.first().is_some_and(|&c| is_lws_byte(c)) && !b.last().is_some_and(|&c| is_lws_byte(c)) {
        return 0..b.len();
    }
    let start = b.iter().position(|&c| !is_lws_byte(c)).unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|&c| !is_lws_byte(c))
        .map_or(start, |i| i + 1);
    start..end
}

/// `s` without linear white space at either end, byte-wise.
#[inline]
pub(crate) fn trim_lws(s: &str) -> &str {
    s.get(lws_trimmed(s.as_bytes())).unwrap_or("")
}

/// `s` without linear white space at its end, byte-wise.
pub(crate) fn trim_end_lws(s: &str) -> &str {
    let b = s.as_bytes();
    let end = b
        .iter()
        .rposition(|&c| !is_lws_byte(c))
        .map_or(0, |i| i + 1);
    s.get(..end).unwrap_or("")
}

/// Exactly [`str::trim`], with the ASCII white space cut byte-wise first:
/// header values are nearly always ASCII, and the Unicode-aware trim
/// decodes every character it looks at.
pub(crate) fn trim(s: &str) -> &str {
    let t = s.trim_ascii();
    // Vertical tab is white space to `str::trim` but not to `trim_ascii`;
    // any non-ASCII end may be Unicode white space.
    let plain_end = |b: Option<&u8>| b.is_none_or(|&b| b.is_ascii() && b != 0x0b);
    if plain_end(t.as_bytes().first()) && plain_end(t.as_bytes().last()) {
        t
    } else {
        t.trim()
    }
}

/// Position of the ASCII byte `b` in `s` (a character boundary, as `b` is
/// ASCII): `str::find(char)` without its UTF-8 searcher.
pub(crate) fn find_byte(s: &str, b: u8) -> Option<usize> {
    debug_assert!(b.is_ascii());
    // Below a vector's width memchr's set-up costs more than a plain scan.
    if s.len() < 32 {
        s.bytes().position(|c| c == b)
    } else {
        memchr::memchr(b, s.as_bytes())
    }
}

/// `s.split(b)` for an ASCII byte `b`, searching bytes.
pub(crate) fn split_byte(s: &str, b: u8) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let r = rest?;
        match split_once_byte(r, b) {
            Some((piece, next)) => {
                rest = Some(next);
                Some(piece)
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

/// `str::split_once` on an ASCII byte.
pub(crate) fn split_once_byte(s: &str, b: u8) -> Option<(&str, &str)> {
    let i = find_byte(s, b)?;
    Some((s.get(..i)?, s.get(i + 1..)?))
}

/// Compact header forms (RFC 3261 7.3.3 and the extension registry).
const COMPACT: &[(char, &str)] = &[
    ('a', "accept-contact"),
    ('b', "referred-by"),
    ('c', "content-type"),
    ('d', "request-disposition"),
    ('e', "content-encoding"),
    ('f', "from"),
    ('i', "call-id"),
    ('j', "reject-contact"),
    ('k', "supported"),
    ('l', "content-length"),
    ('m', "contact"),
    ('n', "identity-info"),
    ('o', "event"),
    ('r', "refer-to"),
    ('s', "subject"),
    ('t', "to"),
    ('u', "allow-events"),
    ('v', "via"),
    ('x', "session-expires"),
    ('y', "identity"),
];

/// Lower-case long form of a header name; compact forms are expanded.
/// Borrows when the name already is canonical: header lookups by name run
/// many times per message and should not allocate.
pub(crate) fn canonical_name(name: &str) -> Cow<'_, str> {
    let mut chars = name.chars();
    if let (Some(c), None) = (chars.next(), chars.next()) {
        let lc = c.to_ascii_lowercase();
        if let Some((_, long)) = COMPACT.iter().find(|(k, _)| *k == lc) {
            return Cow::Borrowed(long);
        }
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// True when the header name `name`, as received, denotes `canonical` (a
/// lower-case long name, as [`canonical_name`] gives): without allocating.
pub(crate) fn names_header(name: &str, canonical: &str) -> bool {
    if let [c] = name.as_bytes()
        && let Some((_, long)) = COMPACT
            .iter()
            .find(|(k, _)| *k == char::from(c.to_ascii_lowercase()))
    {
        return *long == canonical;
    }
    name.eq_ignore_ascii_case(canonical)
}

/// True when two header names denote the same header (case-insensitive,
/// long or compact form).
pub(crate) fn same_header(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b) || canonical_name(a) == canonical_name(b)
}

/// Splits `s` on `sep` where it occurs outside double quotes (honouring
/// backslash escapes inside them) and outside `<...>`. Pieces are returned
/// untrimmed. Returns `None` when a quote or angle bracket is left open.
///
/// Walks bytes, not characters: every byte that matters is ASCII, and the
/// bytes of a multi-byte character are all >= 0x80, so they match none of
/// them (an escaped one is skipped by its first byte, as a character would
/// be). `sep` must be ASCII.
pub(crate) fn split_top(s: &str, sep: char) -> Option<Vec<&str>> {
    let sep = u8::try_from(sep).ok().filter(u8::is_ascii)?;
    let mut out = Vec::new();
    let mut in_quote = false;
    let mut escaped = false;
    let mut angle = false;
    let mut start = 0usize;
    for (i, &c) in s.as_bytes().iter().enumerate() {
        if in_quote {
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_quote = false;
            }
            continue;
        }
        match c {
            b'"' => in_quote = true,
            b'<' if !angle => angle = true,
            b'>' if angle => angle = false,
            _ if c == sep && !angle => {
                out.push(s.get(start..i)?);
                start = i + 1;
            }
            _ => {}
        }
    }
    if in_quote || angle {
        return None;
    }
    out.push(s.get(start..)?);
    Some(out)
}

/// Parses a quoted-string at the start of `s` (which must begin with `"`).
/// Returns the unescaped content and the rest of `s` after the closing quote.
pub(crate) fn take_quoted(s: &str) -> Option<(String, &str)> {
    // Most quoted strings hold no escape: copy them in one piece.
    if let Some(inner) = s.strip_prefix('"')
        && let Some(end) = inner
            .bytes()
            .position(|b| matches!(b, b'"' | b'\\' | b'\r' | b'\n'))
        && inner.as_bytes().get(end) == Some(&b'"')
    {
        return Some((inner.get(..end)?.to_string(), inner.get(end + 1..)?));
    }
    let mut chars = s.char_indices();
    match chars.next() {
        Some((_, '"')) => {}
        _ => return None,
    }
    let mut out = String::new();
    let mut escaped = false;
    for (i, c) in chars {
        if escaped {
            out.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == '"' {
            return Some((out, s.get(i + 1..)?));
        } else if c == '\r' || c == '\n' {
            return None;
        } else {
            out.push(c);
        }
    }
    None
}

/// Length in bytes of the quoted-string at the start of `s` including both
/// quotes, or `None` if it is not terminated.
pub(crate) fn quoted_len(s: &str) -> Option<usize> {
    let (_, rest) = take_quoted(s)?;
    Some(s.len() - rest.len())
}

/// Quotes `s` as a quoted-string, escaping `"` and `\`.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Strips one pair of surrounding double quotes and resolves escapes; a value
/// that is not quoted is returned as is.
pub(crate) fn unquote(s: &str) -> String {
    let t = s.trim();
    if t.starts_with('"')
        && let Some((inner, rest)) = take_quoted(t)
        && rest.trim().is_empty()
    {
        return inner;
    }
    t.to_string()
}

/// Parses a run of decimal digits (after trimming) into a `u32`; `None` on
/// anything else, including overflow.
pub(crate) fn parse_u32_digits(s: &str) -> Option<u32> {
    let t = trim(s);
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_names_expand() {
        assert_eq!(canonical_name("v"), "via");
        assert_eq!(canonical_name("I"), "call-id");
        assert_eq!(canonical_name("Content-Length"), "content-length");
        assert!(same_header("l", "Content-Length"));
        assert!(same_header("ViA", "v"));
        assert!(!same_header("C%6Fntact", "Contact"));
    }

    #[test]
    fn split_respects_quotes_and_angles() {
        let v = split_top(r#""a, b" <sip:x;y>, <sip:z?a=b,c>;p="q,\"r", w"#, ',').unwrap();
        assert_eq!(v.len(), 3);
        assert!(split_top("\"open", ',').is_none());
        assert!(split_top("<open", ',').is_none());
    }

    #[test]
    fn byte_wise_trims_match_the_char_wise_ones() {
        for s in [
            "",
            " ",
            "\t",
            "a",
            " a b\t",
            "\u{a0}x\u{a0}",
            "\u{b}x\u{b}",
            "\r\n x \u{3000}",
            "é ",
            " \u{85}",
            "\u{c}a\u{1f}",
        ] {
            assert_eq!(trim(s), s.trim(), "{s:?}");
            assert_eq!(trim_lws(s), s.trim_matches(is_lws), "{s:?}");
            assert_eq!(trim_end_lws(s), s.trim_end_matches(is_lws), "{s:?}");
        }
        assert_eq!(split_once_byte("a;b;c", b';'), Some(("a", "b;c")));
        assert_eq!(find_byte("é<", b'<'), Some(2));
    }

    #[test]
    fn token_table_matches_the_grammar() {
        for c in [
            'a', 'Z', '0', '-', '.', '!', '%', '*', '_', '+', '`', '\'', '~',
        ] {
            assert!(is_token_char(c), "{c:?}");
        }
        for c in [' ', ':', ';', '"', '\u{e9}', '\u{ff}', '\u{100}', '\u{7f}'] {
            assert!(!is_token_char(c), "{c:?}");
        }
        assert!(!is_token(""));
        assert!(!is_token("caf\u{e9}"));
    }

    #[test]
    fn split_skips_escaped_multibyte_characters() {
        let v = split_top("\"a\\é, b\", c,é", ',').unwrap();
        assert_eq!(v, ["\"a\\é, b\"", " c", "é"]);
    }

    #[test]
    fn quoted_strings() {
        assert_eq!(
            take_quoted("\"Alice\" <sip:a>"),
            Some(("Alice".to_string(), " <sip:a>"))
        );
        assert_eq!(take_quoted("\"a\r\"").map(|(i, _)| i), None);
        assert_eq!(take_quoted("\"\"x"), Some((String::new(), "x")));
        let (inner, rest) = take_quoted(r#""J Rosenberg \\\"" <sip:a>"#).unwrap();
        assert_eq!(inner, r#"J Rosenberg \""#);
        assert_eq!(rest, " <sip:a>");
        assert!(take_quoted("\"unterminated").is_none());
        assert_eq!(quote(r#"a"b\"#), r#""a\"b\\""#);
    }
}
