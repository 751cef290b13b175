//! Conversations as RFC 5322 messages (`.eml`) that a mail client opens.
//!
//! A conversation is the set of its participants: every IM whose sender and
//! recipients make up the same set of addresses belongs to it, whatever
//! its Call-ID (page-mode clients often start a new Call-ID per message).
//! One `.eml` per conversation, its messages in time order.
//!
//! Headers: `From` is the sender of the first message, `To` every other
//! participant (each shown by SIP URI, with the display name their
//! messages carried when there was one), `Date` the first message's time,
//! `Subject` names the case and the participants, `Message-ID` is derived
//! from the conversation (the same export gives the same ids). Non-ASCII
//! header text is written as RFC 2047 encoded words; the body is
//! `text/plain; charset=utf-8` in quoted-printable, so every line stays
//! short and 7-bit.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use sha2::{Digest, Sha256};

/// The fields of an `im_messages` row an `.eml` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImRecord {
    pub time_ns: i64,
    pub call_id: String,
    pub cseq: u32,
    pub sender: String,
    /// The sender's display name (From), when the client sent one.
    pub sender_name: Option<String>,
    pub recipients: Vec<String>,
    /// The first recipient's display name (To), when the client sent one.
    pub recipient_name: Option<String>,
    pub body: String,
    pub delivery_status: String,
}

/// The IMs among one set of participants.
#[derive(Debug, Clone)]
pub struct Conversation<'a> {
    /// Sorted and without duplicates.
    pub participants: Vec<String>,
    /// In time order.
    pub messages: Vec<&'a ImRecord>,
}

/// Groups IMs by their set of participants (sender and recipients); the
/// conversations come in the order of their first message.
pub fn group_conversations(ims: &[ImRecord]) -> Vec<Conversation<'_>> {
    let mut groups: BTreeMap<Vec<String>, Vec<&ImRecord>> = BTreeMap::new();
    for im in ims {
        let mut key: Vec<String> = std::iter::once(&im.sender)
            .chain(&im.recipients)
            .map(|a| a.trim().to_string())
            .collect();
        key.sort();
        key.dedup();
        groups.entry(key).or_default().push(im);
    }
    let mut out: Vec<Conversation> = groups
        .into_iter()
        .map(|(participants, mut messages)| {
            messages.sort_by(|a, b| {
                (a.time_ns, &a.call_id, a.cseq).cmp(&(b.time_ns, &b.call_id, b.cseq))
            });
            Conversation {
                participants,
                messages,
            }
        })
        .collect();
    out.sort_by(|a, b| {
        let first = |c: &Conversation| c.messages.first().map(|m| m.time_ns);
        first(a)
            .cmp(&first(b))
            .then_with(|| a.participants.cmp(&b.participants))
    });
    out
}

/// The conversation as an RFC 5322 message with CRLF line ends.
pub fn format_eml(conversation: &Conversation, case: &str) -> Vec<u8> {
    let Some(first) = conversation.messages.first() else {
        return Vec::new();
    };
    let names = display_names(conversation);
    let named = |uri: &str| mailbox(uri, names.get(uri.trim()).copied());
    let others: Vec<&String> = conversation
        .participants
        .iter()
        .filter(|p| p.as_str() != first.sender.trim())
        .collect();
    let to: Vec<String> = if others.is_empty() {
        vec![named(&first.sender)]
    } else {
        others.iter().map(|p| named(p)).collect()
    };
    let last = conversation.messages.last().unwrap_or(first);
    let short_names: Vec<&str> = conversation
        .participants
        .iter()
        .map(|p| short_name(p))
        .collect();
    let subject = format!(
        "[{case}] IM conversation: {} ({} message{})",
        short_names.join(", "),
        conversation.messages.len(),
        if conversation.messages.len() == 1 {
            ""
        } else {
            "s"
        }
    );

    let mut h = String::new();
    header_line(&mut h, "From", &named(&first.sender));
    h.push_str("To: ");
    h.push_str(&to.join(",\r\n "));
    h.push_str("\r\n");
    header_line(&mut h, "Date", &rfc5322_date(first.time_ns));
    header_line(&mut h, "Subject", &unstructured("Subject", &subject));
    header_line(&mut h, "Message-ID", &message_id(conversation));
    header_line(
        &mut h,
        "X-Sipvault-Case",
        &unstructured("X-Sipvault-Case", case),
    );
    header_line(&mut h, "MIME-Version", "1.0");
    header_line(&mut h, "Content-Type", "text/plain; charset=utf-8");
    header_line(&mut h, "Content-Transfer-Encoding", "quoted-printable");
    h.push_str("\r\n");

    let mut body = String::new();
    let _ = writeln!(body, "Instant messages archived by sipvault");
    let _ = writeln!(body, "Case: {case}");
    let _ = writeln!(
        body,
        "Participants: {}",
        conversation.participants.join(", ")
    );
    let _ = writeln!(
        body,
        "Messages: {}, {} to {}",
        conversation.messages.len(),
        body_time(first.time_ns),
        body_time(last.time_ns)
    );
    for m in &conversation.messages {
        let _ = writeln!(body);
        let _ = writeln!(
            body,
            "[{}] {} -> {} ({})",
            body_time(m.time_ns),
            match names.get(m.sender.trim()) {
                Some(name) => format!("{name} <{}>", m.sender),
                None => m.sender.clone(),
            },
            m.recipients.join(", "),
            m.delivery_status
        );
        let _ = writeln!(body, "Call-ID: {}, CSeq: {}", m.call_id, m.cseq);
        for line in m.body.replace("\r\n", "\n").split(['\n', '\r']) {
            let _ = writeln!(body, "  {line}");
        }
    }
    let mut out = h.into_bytes();
    out.extend_from_slice(quoted_printable(body.as_bytes()).as_bytes());
    out
}

fn header_line(out: &mut String, name: &str, value: &str) {
    out.push_str(name);
    out.push_str(": ");
    out.push_str(value);
    out.push_str("\r\n");
}

/// `Tue, 25 Nov 2025 10:00:00 +0000`.
pub fn rfc5322_date(time_ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(time_ns)
        .format("%a, %d %b %Y %H:%M:%S +0000")
        .to_string()
}

fn body_time(time_ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(time_ns)
        .format("%Y-%m-%d %H:%M:%S%.3f UTC")
        .to_string()
}

fn message_id(conversation: &Conversation) -> String {
    let mut h = Sha256::new();
    for p in &conversation.participants {
        h.update(p.as_bytes());
        h.update([0]);
    }
    for m in &conversation.messages {
        h.update(m.time_ns.to_be_bytes());
        h.update(m.call_id.as_bytes());
        h.update(m.cseq.to_be_bytes());
    }
    format!("<{}@sipvault.invalid>", &hex::encode(h.finalize())[..32])
}

/// The user part of a SIP URI (or the URI when it has none), for subjects.
fn short_name(uri: &str) -> &str {
    let rest = strip_scheme(uri.trim());
    rest.split(['@', ';', '?', '>']).next().unwrap_or(rest)
}

fn strip_scheme(uri: &str) -> &str {
    let uri = uri.trim_start_matches('<');
    for scheme in ["sips:", "sip:", "tel:", "im:", "pres:"] {
        if uri.len() >= scheme.len() && uri[..scheme.len()].eq_ignore_ascii_case(scheme) {
            return &uri[scheme.len()..];
        }
    }
    uri
}

/// The display name each participant's messages carried (as sender in
/// From, as first recipient in To), the first one seen.
fn display_names<'a>(conversation: &Conversation<'a>) -> BTreeMap<&'a str, &'a str> {
    let mut names = BTreeMap::new();
    for m in &conversation.messages {
        let sent = [
            (Some(m.sender.as_str()), m.sender_name.as_deref()),
            (
                m.recipients.first().map(String::as_str),
                m.recipient_name.as_deref(),
            ),
        ];
        for (uri, name) in sent {
            if let (Some(uri), Some(name)) = (uri, name.map(str::trim).filter(|n| !n.is_empty())) {
                names.entry(uri.trim()).or_insert(name);
            }
        }
    }
    names
}

/// `"sip:alice@example.com" <alice@example.com>`: the SIP URI as display
/// name and `user@host` as address; with the participant's own display
/// name, `"Alice Smith (sip:alice@example.com)" <alice@example.com>`. A URI
/// without a usable `user@host` (no user, characters an address may not
/// hold) gets the address `unknown@sipvault.invalid`, its URI still in the
/// display name.
pub fn mailbox(uri: &str, name: Option<&str>) -> String {
    let uri = uri.trim();
    let rest = strip_scheme(uri);
    let rest = rest.split([';', '?', '>']).next().unwrap_or(rest);
    let address = match rest.rsplit_once('@') {
        Some((user, host)) if is_dot_atom(user) && is_domain(host) => format!("{user}@{host}"),
        _ => "unknown@sipvault.invalid".to_string(),
    };
    let shown = match name {
        Some(name) => format!("{name} ({uri})"),
        None => uri.to_string(),
    };
    format!("{} <{address}>", display_name(&shown))
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c)
}

fn is_dot_atom(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|part| !part.is_empty() && part.chars().all(is_atext))
}

fn is_domain(s: &str) -> bool {
    is_dot_atom(s)
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

/// A display name: quoted string when printable ASCII, encoded words otherwise.
fn display_name(name: &str) -> String {
    if name.chars().all(|c| c.is_ascii() && !c.is_ascii_control()) {
        let escaped = name.replace('\\', "\\\\").replace('"', "\\\"");
        format!("\"{escaped}\"")
    } else {
        encoded_words(name).join(" ")
    }
}

/// Unstructured header text: kept when it is printable ASCII without words
/// too long to fold, folded at spaces; RFC 2047 encoded words otherwise.
fn unstructured(name: &str, text: &str) -> String {
    let plain = text
        .chars()
        .all(|c| c == ' ' || (c.is_ascii() && !c.is_ascii_control()))
        && text.split(' ').all(|w| w.len() <= 70)
        && !text.contains("=?");
    if !plain {
        return encoded_words(text).join("\r\n ");
    }
    // Fold before a word that would take the line past 78 characters.
    let mut out = String::new();
    let mut line_len = name.len() + 2;
    for (i, word) in text.split(' ').enumerate() {
        if i > 0 {
            if line_len + 1 + word.len() > 78 {
                out.push_str("\r\n");
                line_len = 0;
            }
            out.push(' ');
            line_len += 1;
        }
        out.push_str(word);
        line_len += word.len();
    }
    out
}

/// RFC 2047 `B` encoded words of at most 75 characters, split between
/// characters (never inside a UTF-8 sequence).
pub fn encoded_words(text: &str) -> Vec<String> {
    // "=?UTF-8?B?" + "?=" take 12 of the 75; 60 base64 characters carry 45 bytes.
    const MAX_BYTES: usize = 45;
    let mut words = Vec::new();
    let mut start = 0;
    let mut end = 0;
    for (i, c) in text.char_indices() {
        if i + c.len_utf8() - start > MAX_BYTES {
            words.push(format!(
                "=?UTF-8?B?{}?=",
                base64(&text.as_bytes()[start..end])
            ));
            start = i;
        }
        end = i + c.len_utf8();
    }
    if end > start || words.is_empty() {
        words.push(format!(
            "=?UTF-8?B?{}?=",
            base64(&text.as_bytes()[start..end])
        ));
    }
    words
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (k, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if k <= chunk.len() {
                out.push(ALPHABET[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Quoted-printable (RFC 2045 §6.7) of text whose line ends are `\n`:
/// CRLF line ends, lines of at most 76 characters with soft breaks.
pub fn quoted_printable(text: &[u8]) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for line in text.split(|&b| b == b'\n') {
        let mut len = 0;
        for (i, &b) in line.iter().enumerate() {
            let last = i + 1 == line.len();
            let literal =
                (b'!'..=b'~').contains(&b) && b != b'=' || (b == b' ' || b == b'\t') && !last;
            let piece = if literal {
                (b as char).to_string()
            } else {
                format!("={b:02X}")
            };
            // Keep room for the soft break's "=" within 76 characters.
            if len + piece.len() > 75 {
                out.push_str("=\r\n");
                len = 0;
            }
            out.push_str(&piece);
            len += piece.len();
        }
        out.push_str("\r\n");
    }
    // `split` yields an empty last line after a final '\n': drop its CRLF.
    if text.ends_with(b"\n") {
        out.truncate(out.len() - 2);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn im(t: i64, from: &str, to: &[&str], body: &str) -> ImRecord {
        ImRecord {
            time_ns: t,
            call_id: format!("call-{t}@host"),
            cseq: 1,
            sender: from.into(),
            sender_name: None,
            recipients: to.iter().map(|s| s.to_string()).collect(),
            recipient_name: None,
            body: body.into(),
            delivery_status: "delivered".into(),
        }
    }

    fn decode_qp(s: &str) -> Vec<u8> {
        let s = s.replace("=\r\n", "");
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'=' {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        out
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), enc);
        }
    }

    #[test]
    fn non_ascii_subject_is_rfc_2047_encoded() {
        let ims = [im(
            1_764_064_800_000_000_000,
            "sip:alice@example.com",
            &["sip:bob@example.com"],
            "hi",
        )];
        let convs = group_conversations(&ims);
        let eml = String::from_utf8(format_eml(
            &convs[0],
            "Prüfung Zürich — 2026 Überprüfung der Budgetunterlagen",
        ))
        .unwrap();
        assert!(eml.is_ascii(), "an .eml is 7-bit: {eml}");
        let subject_start = eml.find("Subject: ").unwrap();
        let subject_end = eml[subject_start..].find("\r\nMessage-ID").unwrap() + subject_start;
        let subject = &eml[subject_start + 9..subject_end];
        let words: Vec<&str> = subject.split("\r\n ").collect();
        assert!(
            words.len() > 1,
            "a long subject takes several words: {subject}"
        );
        let mut decoded = Vec::new();
        for w in &words {
            assert!(w.len() <= 75, "encoded word too long: {w}");
            let b64 = w
                .strip_prefix("=?UTF-8?B?")
                .unwrap()
                .strip_suffix("?=")
                .unwrap();
            // Each word holds whole characters.
            let bytes = decode_b64(b64);
            assert!(
                std::str::from_utf8(&bytes).is_ok(),
                "word splits a character: {w}"
            );
            decoded.extend(bytes);
        }
        assert_eq!(
            String::from_utf8(decoded).unwrap(),
            "[Prüfung Zürich — 2026 Überprüfung der Budgetunterlagen] IM conversation: alice, bob (1 message)"
        );
    }

    fn decode_b64(s: &str) -> Vec<u8> {
        const ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let vals: Vec<u32> = s
            .trim_end_matches('=')
            .chars()
            .map(|c| ALPHABET.find(c).unwrap() as u32)
            .collect();
        let mut out = Vec::new();
        for chunk in vals.chunks(4) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, v)| acc | (v << (18 - 6 * i)));
            for k in 0..chunk.len() - 1 {
                out.push((n >> (16 - 8 * k)) as u8);
            }
        }
        out
    }

    #[test]
    fn headers_and_quoted_printable_body() {
        let t = 1_764_064_800_000_000_000; // 2025-11-25 10:00:00 UTC
        let ims = [
            im(
                t + 2_000_000_000,
                "sip:bob@example.com",
                &["sip:alice@example.com"],
                "Grüße, = ok\nsecond line ",
            ),
            im(
                t,
                "sip:alice@example.com",
                &["sip:bob@example.com"],
                &"long ".repeat(40),
            ),
            im(
                t + 1,
                "sip:carol@example.com",
                &["sip:alice@example.com"],
                "other",
            ),
        ];
        let convs = group_conversations(&ims);
        assert_eq!(convs.len(), 2, "alice+bob and alice+carol");
        assert_eq!(
            convs[0].participants,
            ["sip:alice@example.com", "sip:bob@example.com"]
        );
        assert_eq!(convs[0].messages.len(), 2);
        assert_eq!(convs[0].messages[0].time_ns, t, "time order");
        let eml = String::from_utf8(format_eml(&convs[0], "case-1")).unwrap();
        let (head, body) = eml.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains("\r\nFrom: \"sip:alice@example.com\" <alice@example.com>\r\n")
                || head.starts_with("From: \"sip:alice@example.com\" <alice@example.com>\r\n"),
            "{head}"
        );
        assert!(
            head.contains("\r\nTo: \"sip:bob@example.com\" <bob@example.com>\r\n"),
            "{head}"
        );
        assert!(
            head.contains("\r\nDate: Tue, 25 Nov 2025 10:00:00 +0000\r\n"),
            "{head}"
        );
        assert!(
            head.contains("\r\nSubject: [case-1] IM conversation: alice, bob (2 messages)\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\nMessage-ID: <"), "{head}");
        assert!(head.contains("Content-Transfer-Encoding: quoted-printable"));
        for line in eml.split("\r\n") {
            assert!(line.len() <= 78, "line too long: {line:?}");
            assert!(
                !line.contains('\n') && !line.contains('\r'),
                "bare line end in {line:?}"
            );
        }
        let text = String::from_utf8(decode_qp(body)).unwrap();
        assert!(text.contains("[2025-11-25 10:00:02.000 UTC] sip:bob@example.com -> sip:alice@example.com (delivered)"), "{text}");
        assert!(
            text.contains("  Grüße, = ok\r\n  second line \r\n"),
            "{text}"
        );
        assert!(
            text.contains(&"long ".repeat(40).trim_end().to_string()),
            "{text}"
        );
        // The same conversation gives the same Message-ID.
        assert_eq!(
            format_eml(&convs[0], "case-1"),
            format_eml(&convs[0], "case-1")
        );
    }

    #[test]
    fn awkward_addresses_and_header_injection() {
        assert_eq!(
            mailbox("sip:+4930123@gw.example.com;user=phone", None),
            "\"sip:+4930123@gw.example.com;user=phone\" <+4930123@gw.example.com>"
        );
        assert_eq!(
            mailbox("sip:example.com", None),
            "\"sip:example.com\" <unknown@sipvault.invalid>"
        );
        assert_eq!(
            mailbox("sip:a\"b@x.com", None),
            "\"sip:a\\\"b@x.com\" <unknown@sipvault.invalid>"
        );
        assert!(mailbox("sip:jürgen@example.com", None).starts_with("=?UTF-8?B?"));
        let folded = unstructured("Subject", "evil\r\nBcc: someone@example.com");
        assert!(!folded.contains("\r\nBcc"), "{folded}");
        assert!(folded.starts_with("=?UTF-8?B?"));
    }

    #[test]
    fn display_names_show_beside_the_uri_in_headers_and_body() {
        let mut first = im(
            1_000,
            "sip:alice@example.com",
            &["sip:bob@example.com"],
            "hi",
        );
        first.sender_name = Some("Alice Smith".into());
        let mut reply = im(
            2_000,
            "sip:bob@example.com",
            &["sip:alice@example.com"],
            "hello",
        );
        reply.recipient_name = Some("Alice S.".into());
        let ims = [first, reply];
        let conversations = group_conversations(&ims);
        let eml = String::from_utf8(format_eml(&conversations[0], "case-7")).unwrap();
        let head = eml.split("\r\n\r\n").next().unwrap();
        assert!(
            head.contains("From: \"Alice Smith (sip:alice@example.com)\" <alice@example.com>\r\n"),
            "the first name seen wins: {head}"
        );
        assert!(
            head.contains("To: \"sip:bob@example.com\" <bob@example.com>\r\n"),
            "bob sent no name: {head}"
        );
        let body = String::from_utf8(decode_qp(eml.split_once("\r\n\r\n").unwrap().1)).unwrap();
        assert!(
            body.contains("Alice Smith <sip:alice@example.com> -> sip:bob@example.com"),
            "{body}"
        );
        assert!(
            body.contains("] sip:bob@example.com -> sip:alice@example.com"),
            "{body}"
        );
    }
}
