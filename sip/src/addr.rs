//! Typed values of address-carrying headers: SIP URIs, name-addr / addr-spec
//! (From, To, Contact, Route...), Via and Contact.
//!
//! Parameter values are kept as received (a quoted value keeps its quotes) so
//! that `Display` writes back what was read. `param()` returns `Some("")` for
//! a parameter present without a value.

use std::fmt;

use crate::error::ParseError;
use crate::util::{
    find_byte, is_lws, is_lws_byte, is_token, is_token_byte, is_token_char, quote, quoted_len,
    split_byte, split_once_byte, split_top, take_quoted, trim,
};

/// Generic parameter list: `(name, value)`, names as received.
pub type Params = Vec<(String, Option<String>)>;

fn find_param<'a>(params: &'a Params, name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_deref().unwrap_or(""))
}

fn write_params(f: &mut fmt::Formatter<'_>, params: &Params) -> fmt::Result {
    for (n, v) in params {
        match v {
            Some(v) => write!(f, ";{n}={v}")?,
            None => write!(f, ";{n}")?,
        }
    }
    Ok(())
}

/// Characters allowed in an unquoted header parameter value: token
/// characters, plus `[`, `]`, `:` and `/` so that IPv6 references and
/// host:port values (received, maddr) are accepted.
fn is_param_value_byte(b: u8) -> bool {
    is_token_byte(b) || matches!(b, b'[' | b']' | b':' | b'/')
}

/// Parses `*( SEMI generic-param )` where `s` is everything after the value
/// the parameters belong to. LWS around `;` and `=` is allowed; an empty
/// parameter (`;;`) or a non-token name is an error.
pub(crate) fn parse_header_params(s: &str) -> Result<Params, String> {
    let s = trim(s);
    if s.is_empty() {
        return Ok(Vec::new());
    }
    // Without quotes or angle brackets `split_top` is a plain split on ';'
    // that cannot fail: the common case, done without collecting pieces.
    if !s.bytes().any(|b| b == b'"' || b == b'<') {
        return header_params_of(s, split_byte(s, b';'));
    }
    let pieces = split_top(s, ';').ok_or_else(|| "unbalanced quote in parameters".to_string())?;
    header_params_of(s, pieces.into_iter())
}

/// [`parse_header_params`] of `s` split into `pieces` at the top-level ';'.
fn header_params_of<'a>(
    s: &str,
    mut iter: impl Iterator<Item = &'a str>,
) -> Result<Params, String> {
    match iter.next() {
        Some(first) if trim(first).is_empty() => {}
        _ => return Err(format!("unexpected text before parameters: {s:?}")),
    }
    let mut out = Vec::new();
    for piece in iter {
        let piece = trim(piece);
        if piece.is_empty() {
            return Err("empty parameter".into());
        }
        let (name, value) = match split_once_byte(piece, b'=') {
            Some((n, v)) => (trim(n), Some(trim(v))),
            None => (piece, None),
        };
        if !is_token(name) {
            return Err(format!("bad parameter name {name:?}"));
        }
        let value = match value {
            None => None,
            Some(v) if v.starts_with('"') => {
                if quoted_len(v) != Some(v.len()) {
                    return Err(format!("bad quoted parameter value {v:?}"));
                }
                Some(v.to_string())
            }
            Some(v) => {
                // Allowed characters are all ASCII: a byte test is exact.
                if v.is_empty() || !v.bytes().all(is_param_value_byte) {
                    return Err(format!("bad parameter value {v:?}"));
                }
                Some(v.to_string())
            }
        };
        out.push((name.to_string(), value));
    }
    Ok(out)
}

/// Characters never allowed anywhere inside a URI as it appears on the wire.
fn is_uri_forbidden(c: char) -> bool {
    c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | '"')
}

/// Whether `s` holds a character [`is_uri_forbidden`] rejects; byte-wise
/// for ASCII text (every URI on the hot path), where white space and
/// controls are exactly the bytes up to 0x20 and 0x7f.
fn has_uri_forbidden(s: &str) -> bool {
    // One pass without early exits, which the compiler vectorises; URIs
    // are short, so stopping at the first hit would save little.
    let (mut non_ascii, mut forbidden) = (false, false);
    for &b in s.as_bytes() {
        non_ascii |= !b.is_ascii();
        forbidden |= b <= b' ' || b == 0x7f || b == b'<' || b == b'>' || b == b'"';
    }
    if non_ascii {
        s.chars().any(is_uri_forbidden)
    } else {
        forbidden
    }
}

/// RFC 3986 scheme syntax.
pub(crate) fn is_valid_scheme(s: &str) -> bool {
    // Scheme characters are all ASCII: a byte test is exact.
    let mut bytes = s.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphabetic() => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// Checks that `s` looks like an absolute URI (`scheme:rest`, no LWS, no
/// angle brackets or quotes). Used for name-addr URIs of any scheme.
pub(crate) fn check_absolute_uri(s: &str) -> Result<(), String> {
    let (scheme, rest) =
        split_once_byte(s, b':').ok_or_else(|| format!("URI without scheme: {s:?}"))?;
    if !is_valid_scheme(scheme) {
        return Err(format!("bad URI scheme {scheme:?}"));
    }
    let sip = scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips");
    // A plain SIP URI holds no forbidden character either.
    if sip && UriParts::parse_plain_sip(scheme, rest).is_some() {
        return Ok(());
    }
    if rest.is_empty() || has_uri_forbidden(rest) {
        return Err(format!("bad URI {s:?}"));
    }
    if sip {
        // `s` has no white space or forbidden character and a valid
        // scheme, which is all `UriParts::parse` checks before this.
        UriParts::parse_sip_in_full(s, scheme, rest).map_err(|e| e.to_string())?;
    }
    Ok(())
}

const fn is_hostname_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')
}

/// Validates a host: a hostname / IPv4 address, or an IPv6 reference in
/// brackets. The IPv6 check is deliberately tolerant (hex digits, colons and
/// dots), as RFC 5118 section 4.10 asks.
pub(crate) fn is_valid_host(h: &str) -> bool {
    if let Some(inner) = h.strip_prefix('[') {
        match inner.strip_suffix(']') {
            Some(addr) => {
                !addr.is_empty()
                    && addr.contains(':')
                    && addr
                        .chars()
                        .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
            }
            None => false,
        }
    } else {
        // Hostname characters are all ASCII: a byte test is exact.
        !h.is_empty() && h.bytes().all(is_hostname_byte)
    }
}

/// Splits `host[:port]` (IPv6 references in brackets). LWS around the colon
/// is tolerated when `lws` is set (Via sent-by).
fn split_hostport(s: &str, lws: bool) -> Result<(&str, Option<u16>), String> {
    let s = if lws { s.trim() } else { s };
    let (host, port_part) = if s.starts_with('[') {
        let end = find_byte(s, b']').ok_or_else(|| format!("unterminated IPv6 reference {s:?}"))?;
        let host = s.get(..=end).ok_or("bad host")?;
        let rest = s.get(end + 1..).unwrap_or("");
        let rest = if lws { rest.trim_start() } else { rest };
        if rest.is_empty() {
            (host, None)
        } else {
            match rest.strip_prefix(':') {
                Some(p) => (host, Some(p)),
                None => return Err(format!("garbage after host {s:?}")),
            }
        }
    } else {
        match split_once_byte(s, b':') {
            Some((h, p)) => (if lws { h.trim_end() } else { h }, Some(p)),
            None => (s, None),
        }
    };
    if !is_valid_host(host) {
        return Err(format!("bad host {host:?}"));
    }
    let port = match port_part {
        None => None,
        Some(p) => {
            let p = if lws { p.trim() } else { p };
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("bad port {p:?}"));
            }
            Some(
                p.parse::<u16>()
                    .map_err(|_| format!("port out of range {p:?}"))?,
            )
        }
    };
    Ok((host, port))
}

/// Resolves `%XX` escapes; a `%` not followed by two hex digits is kept
/// as is (RFC 4475 3.1.1.5).
pub fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(v) = hex {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

/// A `sip:`, `sips:` or `tel:` URI. `host` keeps the brackets of an IPv6
/// reference; for `tel:` URIs `host` holds the telephone number. User,
/// password, parameters and headers are kept escaped, as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipUri {
    pub scheme: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    pub params: Params,
    pub headers: Option<String>,
}

/// Calls `f` with each `name[=value]` of a URI parameter list (the text
/// after the first ';'), or fails on an empty name, value or parameter.
fn each_uri_param<'a>(
    s: &'a str,
    mut f: impl FnMut(&'a str, Option<&'a str>),
) -> Result<(), String> {
    if s.is_empty() {
        return Ok(());
    }
    for piece in split_byte(s, b';') {
        if piece.is_empty() {
            return Err("empty URI parameter".into());
        }
        let (n, v) = match split_once_byte(piece, b'=') {
            Some((n, v)) => (n, Some(v)),
            None => (piece, None),
        };
        if n.is_empty() || v.is_some_and(str::is_empty) {
            return Err(format!("bad URI parameter {piece:?}"));
        }
        f(n, v);
    }
    Ok(())
}

fn parse_uri_params(s: &str) -> Result<Params, String> {
    let mut out = Vec::new();
    each_uri_param(s, |n, v| out.push((n.to_string(), v.map(str::to_string))))?;
    Ok(out)
}

/// A SIP, SIPS or tel URI taken apart and validated, borrowing its text.
/// [`SipUri::parse`] owns the parts; checking a URI only needs this, so it
/// allocates nothing.
#[derive(Debug, PartialEq)]
struct UriParts<'a> {
    scheme: &'a str,
    user: Option<&'a str>,
    password: Option<&'a str>,
    host: &'a str,
    port: Option<u16>,
    /// The parameter list after the first ';' (validated).
    params: &'a str,
    headers: Option<&'a str>,
}

/// `hostport [;params] [?headers]`, validated.
struct HostPart<'a> {
    host: &'a str,
    port: Option<u16>,
    params: &'a str,
    headers: Option<&'a str>,
}

fn host_part(s: &str) -> Result<HostPart<'_>, String> {
    let (main, headers) = match split_once_byte(s, b'?') {
        Some((m, h)) => (m, Some(h)),
        None => (s, None),
    };
    let (hostport, params) = match split_once_byte(main, b';') {
        Some((hp, p)) => (hp, p),
        None => (main, ""),
    };
    let (host, port) = split_hostport(hostport, false)?;
    each_uri_param(params, |_, _| {})?;
    Ok(HostPart {
        host,
        port,
        params,
        headers,
    })
}

impl<'a> UriParts<'a> {
    fn parse(s: &'a str) -> Result<UriParts<'a>, ParseError> {
        let bad = |why: String| ParseError::InvalidUri(why);
        let s = trim(s);
        if has_uri_forbidden(s) {
            return Err(bad(format!("forbidden character in URI {s:?}")));
        }
        let (scheme, rest) =
            split_once_byte(s, b':').ok_or_else(|| bad(format!("no scheme in {s:?}")))?;
        if !is_valid_scheme(scheme) {
            return Err(bad(format!("bad scheme {scheme:?}")));
        }
        if scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips") {
            return UriParts::parse_sip(s, scheme, rest);
        }
        if scheme.eq_ignore_ascii_case("tel") {
            let (number, params) = match split_once_byte(rest, b';') {
                Some((n, p)) => (n, p),
                None => (rest, ""),
            };
            if number.is_empty() || find_byte(number, b'?').is_some() {
                return Err(bad(format!("bad telephone number in {s:?}")));
            }
            each_uri_param(params, |_, _| {}).map_err(bad)?;
            return Ok(UriParts {
                scheme,
                user: None,
                password: None,
                host: number,
                port: None,
                params,
                headers: None,
            });
        }
        Err(bad(format!("not a sip, sips or tel URI: {s:?}")))
    }

    /// The part of [`UriParts::parse`] after the scheme of a SIP or SIPS
    /// URI `s` (trimmed, without forbidden characters), split at its first
    /// ':' into `scheme` and `rest`.
    fn parse_sip(s: &'a str, scheme: &'a str, rest: &'a str) -> Result<UriParts<'a>, ParseError> {
        match UriParts::parse_plain_sip(scheme, rest) {
            Some(parts) => Ok(parts),
            None => UriParts::parse_sip_in_full(s, scheme, rest),
        }
    }

    /// [`UriParts::parse_sip`] of any URI: user parts with ';', '?' or
    /// escapes, parameters, headers, IPv6 references.
    fn parse_sip_in_full(
        s: &'a str,
        scheme: &'a str,
        rest: &'a str,
    ) -> Result<UriParts<'a>, ParseError> {
        let bad = |why: String| ParseError::InvalidUri(why);
        // The user part may itself contain ';', '?' and ':', so the
        // first '@' decides; if what follows is not a host, the URI
        // has no user part.
        if let Some((userinfo, after)) = split_once_byte(rest, b'@')
            && let Ok(HostPart {
                host,
                port,
                params,
                headers,
            }) = host_part(after)
        {
            let (user, password) = match split_once_byte(userinfo, b':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if user.is_empty() {
                return Err(bad(format!("empty user part in {s:?}")));
            }
            return Ok(UriParts {
                scheme,
                user: Some(user),
                password,
                host,
                port,
                params,
                headers,
            });
        }
        let HostPart {
            host,
            port,
            params,
            headers,
        } = host_part(rest).map_err(bad)?;
        Ok(UriParts {
            scheme,
            user: None,
            password: None,
            host,
            port,
            params,
            headers,
        })
    }
}

/// Bytes of the common URI shape `[user[:password]@]host[:port]` without
/// parameters, headers, escapes or IPv6 brackets, as a table: hostname
/// characters are [`PLAIN`], '@' is [`PLAIN`] | [`AT`], ':' is [`PLAIN`];
/// every other byte is 0.
const PLAIN_URI_BYTES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        if is_hostname_byte(b) || b == b':' {
            table[i] = PLAIN;
        } else if b == b'@' {
            table[i] = PLAIN | AT;
        }
        i += 1;
    }
    table
};
const PLAIN: u8 = 1;
const AT: u8 = 2;

impl<'a> UriParts<'a> {
    /// [`UriParts::parse_sip`] of a URI made only of [`PLAIN_URI_BYTES`]
    /// with at most one '@', as nearly every From, To and Request-URI is: one
    /// pass over the bytes instead of a search per delimiter. `None` for
    /// any other URI, valid or not, which the full parser then reads; for
    /// the URIs it takes, the result is the full parser's.
    fn parse_plain_sip(scheme: &'a str, rest: &'a str) -> Option<UriParts<'a>> {
        // One table look-up per byte and no early exit: a loop without
        // branches (URIs are short; stopping early would save little).
        let (mut plain, mut ats) = (PLAIN, 0u32);
        for &b in rest.as_bytes() {
            let class = PLAIN_URI_BYTES[usize::from(b)];
            plain &= class;
            ats += u32::from(class >> 1);
        }
        if plain == 0 || ats > 1 {
            return None;
        }
        let (user, password, hostport) = match split_once_byte(rest, b'@') {
            Some((userinfo, hostport)) => {
                let (user, password) = match split_once_byte(userinfo, b':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (userinfo, None),
                };
                if user.is_empty() {
                    return None;
                }
                (Some(user), password, hostport)
            }
            None => (None, None, rest),
        };
        // The host holds neither '@' (there is one at most, before it) nor
        // ':' (the first one ends it): only hostname characters.
        let (host, port) = match split_once_byte(hostport, b':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        };
        if host.is_empty() {
            return None;
        }
        let port = match port {
            None => None,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                Some(p.parse().ok()?)
            }
            Some(_) => return None,
        };
        Some(UriParts {
            scheme,
            user,
            password,
            host,
            port,
            params: "",
            headers: None,
        })
    }
}

impl SipUri {
    pub fn parse(s: &str) -> Result<SipUri, ParseError> {
        let p = UriParts::parse(s)?;
        Ok(SipUri {
            scheme: p.scheme.to_ascii_lowercase(),
            user: p.user.map(str::to_string),
            password: p.password.map(str::to_string),
            host: p.host.to_string(),
            port: p.port,
            params: parse_uri_params(p.params).map_err(ParseError::InvalidUri)?,
            headers: p.headers.map(str::to_string),
        })
    }

    pub fn param(&self, n: &str) -> Option<&str> {
        find_param(&self.params, n)
    }

    /// URI comparison of RFC 3261 19.1.4: escapes resolved in user and
    /// password (compared case-sensitively), host and scheme compared
    /// case-insensitively, ports must match (an absent port only equals an
    /// absent port), the parameters user, ttl, method, maddr and transport
    /// must match when present in either, other parameters when present in
    /// both; headers must match as sets.
    pub fn equivalent(&self, other: &SipUri) -> bool {
        if self.scheme != other.scheme
            || !self.host.eq_ignore_ascii_case(&other.host)
            || self.port != other.port
            || self.user.as_deref().map(percent_decode) != other.user.as_deref().map(percent_decode)
            || self.password.as_deref().map(percent_decode)
                != other.password.as_deref().map(percent_decode)
        {
            return false;
        }
        let norm = |v: Option<&str>| {
            v.map(|v| String::from_utf8_lossy(&percent_decode(v)).to_ascii_lowercase())
        };
        for (n, v) in &self.params {
            if let Some(ov) = other
                .params
                .iter()
                .find(|(on, _)| on.eq_ignore_ascii_case(n))
                .map(|(_, ov)| ov)
                && norm(v.as_deref()) != norm(ov.as_deref())
            {
                return false;
            }
        }
        for key in ["user", "ttl", "method", "maddr", "transport"] {
            if self.param(key).is_some() != other.param(key).is_some() {
                return false;
            }
        }
        let headers = |h: &Option<String>| {
            let mut v: Vec<Vec<u8>> = h
                .as_deref()
                .unwrap_or("")
                .split('&')
                .filter(|x| !x.is_empty())
                .map(percent_decode)
                .collect();
            v.sort();
            v
        };
        headers(&self.headers) == headers(&other.headers)
    }

    /// Host without the brackets of an IPv6 reference.
    pub fn host_unbracketed(&self) -> &str {
        self.host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&self.host)
    }
}

impl fmt::Display for SipUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.scheme)?;
        if let Some(u) = &self.user {
            f.write_str(u)?;
            if let Some(p) = &self.password {
                write!(f, ":{p}")?;
            }
            f.write_str("@")?;
        }
        f.write_str(&self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        for (n, v) in &self.params {
            match v {
                Some(v) => write!(f, ";{n}={v}")?,
                None => write!(f, ";{n}")?,
            }
        }
        if let Some(h) = &self.headers {
            write!(f, "?{h}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for SipUri {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SipUri::parse(s)
    }
}

/// `name-addr` or `addr-spec` with header parameters (From, To, Contact,
/// Route, Record-Route, Refer-To...). `display` is unquoted and unescaped;
/// `uri` is the URI text (any scheme) without angle brackets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    pub display: Option<String>,
    pub uri: String,
    pub params: Params,
}

impl NameAddr {
    pub fn tag(&self) -> Option<&str> {
        self.param("tag").filter(|t| !t.is_empty())
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        find_param(&self.params, name)
    }

    /// The URI parsed as a SIP/SIPS/tel URI.
    pub fn sip_uri(&self) -> Option<SipUri> {
        SipUri::parse(&self.uri).ok()
    }

    pub fn parse(s: &str) -> Result<NameAddr, ParseError> {
        parse_name_addr(s).map_err(ParseError::InvalidNameAddr)
    }
}

/// A word of an unquoted display name: a token. Non-ASCII letters are
/// tolerated too (UTF-8 names sent unquoted are common and unambiguous);
/// separators such as ',' ';' '"' are not.
fn is_display_word(w: &str) -> bool {
    !w.is_empty()
        && w.chars()
            .all(|c| is_token_char(c) || (!c.is_ascii() && c.is_alphanumeric()))
}

fn parse_name_addr(s: &str) -> Result<NameAddr, String> {
    let s = trim(s);
    if s.is_empty() {
        return Err("empty address".into());
    }
    let (display, after_display) = if s.starts_with('"') {
        let (d, rest) = take_quoted(s).ok_or("unterminated quoted display name")?;
        let rest = rest.trim_start();
        if !rest.starts_with('<') {
            return Err("quoted display name not followed by <URI>".into());
        }
        (Some(d), rest)
    } else if let Some(lt) = find_byte(s, b'<') {
        let d = trim(s.get(..lt).unwrap_or(""));
        if !d
            .split(is_lws)
            .filter(|t| !t.is_empty())
            .all(is_display_word)
        {
            return Err(format!("display name is neither tokens nor quoted: {d:?}"));
        }
        // Words joined by single spaces; nearly always no display name or
        // one word, which need no joining.
        let d = if !d.bytes().any(is_lws_byte) {
            d.to_string()
        } else {
            d.split(is_lws)
                .filter(|t| !t.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        };
        (Some(d), s.get(lt..).unwrap_or(""))
    } else {
        // addr-spec: parameters after the URI belong to the header, and the
        // URI cannot carry ';', '?' or ',' of its own (RFC 3261 20).
        let (uri, params) = match split_once_byte(s, b';') {
            Some((u, _)) => (u.trim_end(), s.get(u.len()..).unwrap_or("")),
            None => (s, ""),
        };
        if find_byte(uri, b'?').is_some() || find_byte(uri, b',').is_some() {
            return Err(format!(
                "URI with '?' or ',' must be enclosed in <>: {uri:?}"
            ));
        }
        check_absolute_uri(uri)?;
        let params = parse_header_params(params)?;
        return Ok(NameAddr {
            display: None,
            uri: uri.to_string(),
            params,
        });
    };
    // after_display starts with '<'
    let inner_and_rest = after_display.get(1..).unwrap_or("");
    let gt = find_byte(inner_and_rest, b'>').ok_or("missing '>'")?;
    // Be liberal about LWS just inside the brackets (RFC 4475 3.1.2.14).
    let uri = trim(inner_and_rest.get(..gt).unwrap_or(""));
    check_absolute_uri(uri)?;
    let rest = inner_and_rest.get(gt + 1..).unwrap_or("");
    let params = parse_header_params(rest)?;
    let display = display.filter(|d| !d.is_empty());
    Ok(NameAddr {
        display,
        uri: uri.to_string(),
        params,
    })
}

impl fmt::Display for NameAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = &self.display {
            write!(f, "{} ", quote(d))?;
        }
        write!(f, "<{}>", self.uri)?;
        write_params(f, &self.params)
    }
}

impl std::str::FromStr for NameAddr {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NameAddr::parse(s)
    }
}

/// One Via value: `SIP/2.0/<transport> host[:port] *(;param)`. `host` keeps
/// the brackets of an IPv6 reference; `transport` is as received (unknown
/// transports are accepted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    pub transport: String,
    pub host: String,
    pub port: Option<u16>,
    pub params: Params,
}

impl Via {
    pub fn branch(&self) -> Option<&str> {
        self.param("branch")
    }

    pub fn received(&self) -> Option<&str> {
        self.param("received")
    }

    /// `None`: no rport parameter; `Some(None)`: rport without a (valid)
    /// value; `Some(Some(p))`: rport=p.
    pub fn rport(&self) -> Option<Option<u16>> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("rport"))
            .map(|(_, v)| v.as_deref().and_then(|v| v.parse().ok()))
    }

    pub fn param(&self, n: &str) -> Option<&str> {
        find_param(&self.params, n)
    }

    /// Parses one Via value (no commas).
    pub fn parse(s: &str) -> Result<Via, ParseError> {
        parse_via(s).map_err(ParseError::InvalidVia)
    }

    /// Parses a Via header value that may hold several comma-separated values.
    pub fn parse_list(s: &str) -> Result<Vec<Via>, ParseError> {
        let pieces =
            split_top(s, ',').ok_or_else(|| ParseError::InvalidVia("unbalanced quote".into()))?;
        pieces.into_iter().map(Via::parse).collect()
    }
}

fn parse_via(s: &str) -> Result<Via, String> {
    let s = s.trim();
    let mut parts = s.splitn(3, '/');
    let proto = parts.next().unwrap_or("").trim();
    let version = parts.next().ok_or("missing protocol version")?.trim();
    let rest = parts.next().ok_or("missing transport")?.trim_start();
    if !proto.eq_ignore_ascii_case("SIP") {
        return Err(format!("protocol {proto:?} is not SIP"));
    }
    if version != "2.0" {
        return Err(format!("unsupported version {version:?}"));
    }
    let tlen = rest.find(|c: char| !is_token_char(c)).unwrap_or(rest.len());
    let transport = rest.get(..tlen).unwrap_or("");
    if transport.is_empty() {
        return Err("empty transport".into());
    }
    let after = rest.get(tlen..).unwrap_or("");
    if !after.starts_with(is_lws) {
        return Err("missing sent-by".into());
    }
    let after = after.trim_start();
    let (sent_by, params) = match after.find(';') {
        Some(i) => (after.get(..i).unwrap_or(""), after.get(i..).unwrap_or("")),
        None => (after, ""),
    };
    let (host, port) = split_hostport(sent_by, true)?;
    let host = host.to_string();
    let params = parse_header_params(params)?;
    Ok(Via {
        transport: transport.to_string(),
        host,
        port,
        params,
    })
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIP/2.0/{} {}", self.transport, self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        write_params(f, &self.params)
    }
}

/// One Contact value: `*` or an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    pub star: bool,
    pub addr: Option<NameAddr>,
}

impl Contact {
    /// The `expires` parameter, if present and a valid 32-bit number.
    pub fn expires(&self) -> Option<u32> {
        self.addr
            .as_ref()
            .and_then(|a| a.param("expires"))
            .and_then(crate::util::parse_u32_digits)
    }

    /// Parses a Contact header value: `*` or a comma-separated list.
    pub fn parse_list(s: &str) -> Result<Vec<Contact>, ParseError> {
        let t = s.trim();
        if t == "*" {
            return Ok(vec![Contact {
                star: true,
                addr: None,
            }]);
        }
        let pieces = split_top(t, ',')
            .ok_or_else(|| ParseError::InvalidNameAddr("unbalanced quote or <".into()))?;
        pieces
            .into_iter()
            .map(|p| {
                NameAddr::parse(p).map(|a| Contact {
                    star: false,
                    addr: Some(a),
                })
            })
            .collect()
    }
}

impl fmt::Display for Contact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.addr {
            Some(a) if !self.star => write!(f, "{a}"),
            _ => f.write_str("*"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_parameters_read_as_through_the_quote_aware_split() {
        for s in [
            "",
            " ",
            ";tag=a1",
            " ; tag = a1 ;lr",
            ";;",
            ";tag=",
            "x;tag=1",
            ";t@g=1",
            ";a=b>c",
            ";received=[2001:db8::1];rport",
            ";a=é",
        ] {
            let t = trim(s);
            let reference = if t.is_empty() {
                Ok(Vec::new())
            } else {
                header_params_of(t, split_top(t, ';').unwrap().into_iter())
            };
            assert_eq!(parse_header_params(s), reference, "{s:?}");
        }
    }

    #[test]
    fn sip_uri_basic_roundtrip() {
        for s in [
            "sip:alice@example.com",
            "sips:alice:secret@example.com:5061;transport=tcp;lr",
            "sip:example.com",
            "sip:[2001:db8::10]:5070",
            "sip:user@[2001:db8:::192.0.2.1]",
            "sip:user@example.com?Route=%3Csip:sip.example.com%3E",
            "tel:+1-201-555-0123;phone-context=example.com",
        ] {
            let u = SipUri::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(u.to_string(), s);
        }
    }

    #[test]
    fn sip_uri_parts() {
        let u = SipUri::parse("sip:user;par=u%40example.net@example.com").unwrap();
        assert_eq!(u.user.as_deref(), Some("user;par=u%40example.net"));
        assert_eq!(u.host, "example.com");
        let u = SipUri::parse("sip:[2001:db8::10]:5070").unwrap();
        assert_eq!(u.host, "[2001:db8::10]");
        assert_eq!(u.host_unbracketed(), "2001:db8::10");
        assert_eq!(u.port, Some(5070));
        let u = SipUri::parse("sip:[2001:db8::10:5070]").unwrap();
        assert_eq!(u.port, None);
        let u = SipUri::parse("sip:services.example.com;lr;unknownwith=value;unknown-no-value")
            .unwrap();
        assert_eq!(u.param("lr"), Some(""));
        assert_eq!(u.param("unknownwith"), Some("value"));
        assert_eq!(u.param("maddr"), None);
        let weird = "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com";
        let u = SipUri::parse(weird).unwrap();
        assert_eq!(
            u.user.as_deref(),
            Some("1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*")
        );
        assert_eq!(
            u.password.as_deref(),
            Some("&it+has=1,weird!*pas$wo~d_too.(doesn't-it)")
        );
        assert_eq!(u.to_string(), weird);
    }

    #[test]
    fn plain_uris_read_in_one_pass_as_the_full_parser_reads_them() {
        for rest in [
            "alice@example.com",
            "alice:secret@example.com:5061",
            "example.com",
            "10.0.0.1:5060",
            "bob@10.0.0.2:5060",
            "a.b-c_d@h",
        ] {
            let fast = UriParts::parse_plain_sip("sip", rest);
            assert!(fast.is_some(), "{rest} is plain");
            assert_eq!(
                fast.as_ref().ok_or(()),
                UriParts::parse_sip_in_full(rest, "sip", rest)
                    .as_ref()
                    .map_err(|_| ()),
                "{rest}"
            );
        }
        // Left to the full parser, whatever it decides.
        for rest in [
            "@example.com",
            "alice@",
            "alice@host:",
            "alice@host:99999",
            "a@b@c",
            "alice@[::1]",
            "alice@example.com;transport=tcp",
            "alice%20x@example.com",
            "host:5060:1",
        ] {
            assert_eq!(UriParts::parse_plain_sip("sip", rest), None, "{rest}");
        }
    }

    proptest::proptest! {
        #[test]
        fn the_one_pass_reading_agrees_with_the_full_parser(rest in "[a-c0-9.@:_-]{0,12}") {
            if let Some(fast) = UriParts::parse_plain_sip("sip", &rest) {
                let full = UriParts::parse_sip_in_full(&rest, "sip", &rest);
                proptest::prop_assert_eq!(Some(&fast), full.as_ref().ok());
            }
        }
    }

    #[test]
    fn sip_uri_rejects() {
        for s in [
            "sip:2001:db8::10",
            "<sip:user@example.com>",
            "sip:user@example.com; lr",
            "sip:",
            "sip:@example.com",
            "sip:host:",
            "sip:host:99999",
            "http://example.com",
            "sip:host;;lr",
            "sip:[::1",
        ] {
            assert!(SipUri::parse(s).is_err(), "{s} should not parse");
        }
    }

    #[test]
    fn name_addr_forms() {
        let a = NameAddr::parse(
            r#""J Rosenberg \\\""       <sip:jdrosen@example.com> ;   tag    = 98asjd8"#,
        )
        .unwrap();
        assert_eq!(a.display.as_deref(), Some(r#"J Rosenberg \""#));
        assert_eq!(a.uri, "sip:jdrosen@example.com");
        assert_eq!(a.tag(), Some("98asjd8"));
        let a = NameAddr::parse("caller<sip:caller@example.com>;tag=323").unwrap();
        assert_eq!(a.display.as_deref(), Some("caller"));
        let a = NameAddr::parse("sip:+19725552222@gw1.example.net;unknownparam").unwrap();
        assert_eq!(a.uri, "sip:+19725552222@gw1.example.net");
        assert_eq!(a.param("unknownparam"), Some(""));
        let a = NameAddr::parse("<sip:+19725552222@gw1.example.net;unknownparam>").unwrap();
        assert!(a.params.is_empty());
        let a = NameAddr::parse("isbn:2983792873").unwrap();
        assert_eq!(a.uri, "isbn:2983792873");
        let a = NameAddr::parse(r#"A. Bell <sip:a.g.bell@example.com>;tag=qweoiqpe"#).unwrap();
        assert_eq!(a.display.as_deref(), Some("A. Bell"));
        assert_eq!(
            a.to_string(),
            r#""A. Bell" <sip:a.g.bell@example.com>;tag=qweoiqpe"#
        );
    }

    #[test]
    fn uri_equivalence() {
        let eq = |a: &str, b: &str| {
            SipUri::parse(a)
                .unwrap()
                .equivalent(&SipUri::parse(b).unwrap())
        };
        assert!(eq("sip:%75se%72@example.com", "sip:user@EXAMPLE.com"));
        assert!(eq(
            "sip:alice@atlanta.com;transport=TCP",
            "sip:alice@AtLanTa.CoM;Transport=tcp"
        ));
        assert!(eq(
            "sip:carol@chicago.com;security=on",
            "sip:carol@chicago.com;newparam=5"
        ));
        assert!(!eq("sip:%00@host", "sip:%00%00@host"));
        assert!(!eq("SIP:ALICE@AtLanTa.CoM", "sip:alice@atlanta.com"));
        assert!(!eq("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"));
        assert!(!eq(
            "sip:bob@biloxi.com",
            "sip:bob@biloxi.com;transport=udp"
        ));
        assert!(eq("sip:a@b?x=1&y=2", "sip:a@b?y=2&x=1"));
        assert_eq!(percent_decode("%Z%45%4"), b"%ZE%4");
    }

    #[test]
    fn utf8_unquoted_display_is_tolerated() {
        let a = NameAddr::parse("J\u{fc}rgen M\u{fc}ller <sip:jm@example.com>").unwrap();
        assert_eq!(a.display.as_deref(), Some("J\u{fc}rgen M\u{fc}ller"));
        assert!(NameAddr::parse("J\u{fc}rgen, M <sip:jm@example.com>").is_err());
    }

    #[test]
    fn name_addr_rejects() {
        for s in [
            r#""Mr. J. User <sip:j.user@example.com>"#,
            "Bell, Alexander <sip:a.g.bell@example.com>;tag=43",
            "sip:user@example.com?Route=%3Csip:sip.example.com%3E",
            r#""Joe" <sip:joe@example.org>;;;;"#,
            "<sip:a@b",
            "",
            "<>",
            "<sip:a b@c>",
        ] {
            assert!(NameAddr::parse(s).is_err(), "{s} should not parse");
        }
    }

    #[test]
    fn via_forms() {
        let v = Via::parse("SIP  /   2.0 /UDP    192.0.2.2;branch=390skdjuw").unwrap();
        assert_eq!(v.transport, "UDP");
        assert_eq!(v.host, "192.0.2.2");
        assert_eq!(v.branch(), Some("390skdjuw"));
        let list = Via::parse_list(
            "SIP  / 2.0  / TCP     spindle.example.com   ; branch  =   z9hG4bK9ikj8  , SIP  /    2.0   / UDP  192.168.255.111   ; branch= z9hG4bK30239",
        )
        .unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].branch(), Some("z9hG4bK9ikj8"));
        assert_eq!(list[1].host, "192.168.255.111");
        let v = Via::parse(
            "SIP/2.0/UDP [2001:db8::9:1]:6050;received=[2001:db8::9:255];rport=7;branch=z9hG4bKas3",
        )
        .unwrap();
        assert_eq!(v.port, Some(6050));
        assert_eq!(v.received(), Some("[2001:db8::9:255]"));
        assert_eq!(v.rport(), Some(Some(7)));
        let v = Via::parse("SIP/2.0/UNKNOWN t4.example.com;rport").unwrap();
        assert_eq!(v.rport(), Some(None));
        assert_eq!(v.to_string(), "SIP/2.0/UNKNOWN t4.example.com;rport");
        assert!(Via::parse_list("SIP/2.0/UDP 192.0.2.15;;,;,,").is_err());
        assert!(Via::parse("SIP/7.0/UDP c.example.com").is_err());
        assert!(Via::parse("SIP/2.0/UDP").is_err());
        assert!(Via::parse("SIP/2.0/UDP host:").is_err());
    }

    #[test]
    fn contacts() {
        let c = Contact::parse_list("*").unwrap();
        assert!(c[0].star);
        let c = Contact::parse_list(r#""a,b" <sip:a@b>;expires=60, sip:c@d;q=0.5"#).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].expires(), Some(60));
        assert_eq!(c[1].addr.as_ref().unwrap().param("q"), Some("0.5"));
        let c =
            Contact::parse_list("<sip:user@host129.example.com>;expires=280297596632815").unwrap();
        assert_eq!(c[0].expires(), None);
    }
}
