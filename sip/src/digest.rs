//! HTTP Digest authentication as used by SIP (RFC 3261 22, RFC 2617,
//! RFC 7616 / RFC 8760 for SHA-256). Only `qop=auth` (or no qop) is computed;
//! `auth-int` and the `-sess` algorithms are not supported.

use md5::{Digest as _, Md5};
use sha2::Sha256;

use crate::util::{is_lws, split_top, unquote};

/// Digest algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Md5,
    Sha256,
}

impl Algorithm {
    /// The token used on the wire: `MD5` or `SHA-256`.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    /// Case-insensitive; `None` for anything else (including `-sess` forms).
    pub fn parse(s: &str) -> Option<Algorithm> {
        let s = unquote(s);
        if s.eq_ignore_ascii_case("MD5") {
            Some(Algorithm::Md5)
        } else if s.eq_ignore_ascii_case("SHA-256") {
            Some(Algorithm::Sha256)
        } else {
            None
        }
    }

    fn hash(self, data: &str) -> String {
        match self {
            Algorithm::Md5 => hex::encode(Md5::digest(data.as_bytes())),
            Algorithm::Sha256 => hex::encode(Sha256::digest(data.as_bytes())),
        }
    }
}

/// Why a digest header value cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("authentication scheme is not Digest")]
    UnsupportedScheme,
    #[error("unsupported digest algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    #[error("missing digest parameter {0}")]
    MissingParam(&'static str),
    #[error("malformed digest header: {0}")]
    Malformed(String),
}

/// `H(user:realm:password)` as lowercase hex.
pub fn ha1(alg: Algorithm, user: &str, realm: &str, password: &str) -> String {
    alg.hash(&format!("{user}:{realm}:{password}"))
}

/// The request-digest: with a qop, `H(HA1:nonce:nc:cnonce:qop:HA2)`,
/// without, `H(HA1:nonce:HA2)`, where `HA2 = H(method:uri)`.
#[allow(clippy::too_many_arguments)]
pub fn response(
    alg: Algorithm,
    ha1: &str,
    method: &str,
    uri: &str,
    nonce: &str,
    nc: Option<&str>,
    cnonce: Option<&str>,
    qop: Option<&str>,
) -> String {
    let ha2 = alg.hash(&format!("{method}:{uri}"));
    match qop {
        Some(qop) => alg.hash(&format!(
            "{ha1}:{nonce}:{}:{}:{qop}:{ha2}",
            nc.unwrap_or(""),
            cnonce.unwrap_or("")
        )),
        None => alg.hash(&format!("{ha1}:{nonce}:{ha2}")),
    }
}

/// Splits `Digest k=v, k="v", ...` into (lower-case name, unquoted value).
fn parse_params(header_value: &str) -> Result<Vec<(String, String)>, DigestError> {
    let v = header_value.trim();
    let (scheme, rest) = match v.find(is_lws) {
        Some(i) => (v.get(..i).unwrap_or(""), v.get(i..).unwrap_or("")),
        None => (v, ""),
    };
    if !scheme.eq_ignore_ascii_case("Digest") {
        return Err(DigestError::UnsupportedScheme);
    }
    let pieces = split_top(rest, ',')
        .ok_or_else(|| DigestError::Malformed("unterminated quoted string".into()))?;
    let mut out = Vec::new();
    for p in pieces {
        let p = p.trim();
        if p.is_empty() {
            continue;
        }
        let (k, val) = p
            .split_once('=')
            .ok_or_else(|| DigestError::Malformed(format!("parameter without value: {p}")))?;
        out.push((k.trim().to_ascii_lowercase(), unquote(val)));
    }
    Ok(out)
}

fn get<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn algorithm_of(params: &[(String, String)]) -> Result<Algorithm, DigestError> {
    match get(params, "algorithm") {
        None => Ok(Algorithm::Md5),
        Some(a) => {
            Algorithm::parse(a).ok_or_else(|| DigestError::UnsupportedAlgorithm(a.to_string()))
        }
    }
}

/// Credentials from an Authorization / Proxy-Authorization header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub algorithm: Algorithm,
    pub cnonce: Option<String>,
    pub nc: Option<String>,
    pub qop: Option<String>,
    pub opaque: Option<String>,
}

impl Credentials {
    pub fn parse(header_value: &str) -> Result<Credentials, DigestError> {
        let p = parse_params(header_value)?;
        let req = |name: &'static str| {
            get(&p, name)
                .map(str::to_string)
                .ok_or(DigestError::MissingParam(name))
        };
        let opt = |name: &str| get(&p, name).map(str::to_string);
        let c = Credentials {
            username: req("username")?,
            realm: req("realm")?,
            nonce: req("nonce")?,
            uri: req("uri")?,
            response: req("response")?,
            algorithm: algorithm_of(&p)?,
            cnonce: opt("cnonce"),
            nc: opt("nc"),
            qop: opt("qop"),
            opaque: opt("opaque"),
        };
        if c.qop.is_some() {
            if c.cnonce.is_none() {
                return Err(DigestError::MissingParam("cnonce"));
            }
            if c.nc.is_none() {
                return Err(DigestError::MissingParam("nc"));
            }
        }
        Ok(c)
    }
}

/// Constant-time equality of two byte strings of equal length.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks the credentials' response against the stored HA1 (compared in
/// constant time, hex case-insensitive).
pub fn verify(ha1: &str, method: &str, c: &Credentials) -> bool {
    let expected = response(
        c.algorithm,
        &ha1.to_ascii_lowercase(),
        method,
        &c.uri,
        &c.nonce,
        c.nc.as_deref(),
        c.cnonce.as_deref(),
        c.qop.as_deref(),
    );
    ct_eq(
        expected.as_bytes(),
        c.response.to_ascii_lowercase().as_bytes(),
    )
}

/// A WWW-Authenticate / Proxy-Authenticate digest challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub algorithm: Algorithm,
    pub qop: Option<String>,
    pub opaque: Option<String>,
    pub stale: bool,
}

impl Challenge {
    pub fn parse(header_value: &str) -> Result<Challenge, DigestError> {
        let p = parse_params(header_value)?;
        Ok(Challenge {
            realm: get(&p, "realm")
                .ok_or(DigestError::MissingParam("realm"))?
                .to_string(),
            nonce: get(&p, "nonce")
                .ok_or(DigestError::MissingParam("nonce"))?
                .to_string(),
            algorithm: algorithm_of(&p)?,
            qop: get(&p, "qop").map(str::to_string),
            opaque: get(&p, "opaque").map(str::to_string),
            stale: get(&p, "stale").is_some_and(|s| s.eq_ignore_ascii_case("true")),
        })
    }

    pub fn to_header_value(&self) -> String {
        let mut s = format!(
            "Digest realm=\"{}\", nonce=\"{}\", algorithm={}",
            self.realm,
            self.nonce,
            self.algorithm.name()
        );
        if let Some(q) = &self.qop {
            s.push_str(&format!(", qop=\"{q}\""));
        }
        if let Some(o) = &self.opaque {
            s.push_str(&format!(", opaque=\"{o}\""));
        }
        if self.stale {
            s.push_str(", stale=true");
        }
        s
    }

    /// True when the challenge offers `qop=auth`.
    fn offers_auth(&self) -> bool {
        self.qop
            .as_deref()
            .is_some_and(|q| q.split(',').any(|t| t.trim().eq_ignore_ascii_case("auth")))
    }
}

/// Authorization header value answering `ch` (`qop=auth` with `nc=00000001`
/// when the challenge offers it).
pub fn authorize(
    ch: &Challenge,
    user: &str,
    password: &str,
    method: &str,
    uri: &str,
    cnonce: &str,
) -> String {
    let h1 = ha1(ch.algorithm, user, &ch.realm, password);
    let mut s = format!(
        "Digest username=\"{user}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\"",
        ch.realm, ch.nonce
    );
    if ch.offers_auth() {
        let nc = "00000001";
        let r = response(
            ch.algorithm,
            &h1,
            method,
            uri,
            &ch.nonce,
            Some(nc),
            Some(cnonce),
            Some("auth"),
        );
        s.push_str(&format!(
            ", response=\"{r}\", algorithm={}, cnonce=\"{cnonce}\", nc={nc}, qop=auth",
            ch.algorithm.name()
        ));
    } else {
        let r = response(ch.algorithm, &h1, method, uri, &ch.nonce, None, None, None);
        s.push_str(&format!(
            ", response=\"{r}\", algorithm={}",
            ch.algorithm.name()
        ));
    }
    if let Some(o) = &ch.opaque {
        s.push_str(&format!(", opaque=\"{o}\""));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2617_example() {
        let h1 = ha1(
            Algorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
        );
        let r = response(
            Algorithm::Md5,
            &h1,
            "GET",
            "/dir/index.html",
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            Some("00000001"),
            Some("0a4f113b"),
            Some("auth"),
        );
        assert_eq!(r, "6629fae49393a05397450978507c4ef1");
        let hv = r#"Digest username="Mufasa", realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", qop=auth, nc=00000001, cnonce="0a4f113b", response="6629fae49393a05397450978507c4ef1", opaque="5ccc069c403ebaf9f0171e9517f40e41""#;
        let c = Credentials::parse(hv).unwrap();
        assert_eq!(c.algorithm, Algorithm::Md5);
        assert_eq!(
            c.opaque.as_deref(),
            Some("5ccc069c403ebaf9f0171e9517f40e41")
        );
        assert!(verify(&h1, "GET", &c));
        assert!(!verify(&h1, "POST", &c));
    }

    #[test]
    fn rfc7616_examples() {
        let nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
        let cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";
        for (alg, want) in [
            (Algorithm::Md5, "8ca523f5e9506fed4657c9700eebdbec"),
            (
                Algorithm::Sha256,
                "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
            ),
        ] {
            let h1 = ha1(alg, "Mufasa", "http-auth@example.org", "Circle of Life");
            let r = response(
                alg,
                &h1,
                "GET",
                "/dir/index.html",
                nonce,
                Some("00000001"),
                Some(cnonce),
                Some("auth"),
            );
            assert_eq!(r, want, "{alg:?}");
        }
        let ch = Challenge::parse(
            r#"Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS""#,
        )
        .unwrap();
        assert_eq!(ch.algorithm, Algorithm::Sha256);
        let auth = authorize(
            &ch,
            "Mufasa",
            "Circle of Life",
            "GET",
            "/dir/index.html",
            cnonce,
        );
        let c = Credentials::parse(&auth).unwrap();
        assert_eq!(
            c.response,
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
        assert_eq!(
            c.opaque.as_deref(),
            Some("FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS")
        );
    }

    /// What SIPp sends for `[authentication username=alice password=secret]`
    /// against a qop=auth MD5 challenge. Expected value computed independently
    /// (md5sum of the RFC 2617 strings).
    #[test]
    fn sipp_alice_secret() {
        let hv = r#"Digest username="alice",realm="sipvault",cnonce="6b8b4567",nc=00000001,qop=auth,uri="sip:sipvault.example.com",nonce="4b3d6f1c2a9e",response="428ef0646b8bbd2266bea8754c82abbc",algorithm=MD5"#;
        let c = Credentials::parse(hv).unwrap();
        let h1 = ha1(Algorithm::Md5, "alice", "sipvault", "secret");
        assert_eq!(h1, "15291095ae66fbb2888e4a6ed5a79ab1");
        assert!(
            verify(&h1, "REGISTER", &c),
            "computed {}",
            response(
                Algorithm::Md5,
                &h1,
                "REGISTER",
                &c.uri,
                &c.nonce,
                c.nc.as_deref(),
                c.cnonce.as_deref(),
                c.qop.as_deref()
            )
        );
        assert!(!verify(
            &ha1(Algorithm::Md5, "alice", "sipvault", "wrong"),
            "REGISTER",
            &c
        ));
    }

    #[test]
    fn no_qop_and_errors() {
        let ch = Challenge {
            realm: "r".into(),
            nonce: "n".into(),
            algorithm: Algorithm::Md5,
            qop: None,
            opaque: None,
            stale: true,
        };
        let hv = ch.to_header_value();
        assert_eq!(
            hv,
            r#"Digest realm="r", nonce="n", algorithm=MD5, stale=true"#
        );
        let back = Challenge::parse(&hv).unwrap();
        assert!(back.stale);
        let auth = authorize(&ch, "u", "p", "REGISTER", "sip:r", "c");
        let c = Credentials::parse(&auth).unwrap();
        assert_eq!(c.qop, None);
        assert!(verify(&ha1(Algorithm::Md5, "u", "r", "p"), "REGISTER", &c));

        assert_eq!(
            Credentials::parse("NoOneKnowsThisScheme opaque-data=here").unwrap_err(),
            DigestError::UnsupportedScheme
        );
        assert_eq!(
            Credentials::parse("Basic dXNlcjpwYXNz").unwrap_err(),
            DigestError::UnsupportedScheme
        );
        assert!(matches!(
            Credentials::parse(r#"Digest username="a", realm="r""#),
            Err(DigestError::MissingParam(_))
        ));
        assert!(matches!(
            Credentials::parse(
                r#"Digest username="a", realm="r", nonce="n", uri="u", response="x", algorithm=MD5-sess"#
            ),
            Err(DigestError::UnsupportedAlgorithm(_))
        ));
        assert!(matches!(
            Credentials::parse(r#"Digest username="a"#),
            Err(DigestError::Malformed(_))
        ));
        assert_eq!(Algorithm::parse("sha-256"), Some(Algorithm::Sha256));
        assert_eq!(Algorithm::parse("\"MD5\""), Some(Algorithm::Md5));
        assert_eq!(Algorithm::Sha256.name(), "SHA-256");
    }
}
