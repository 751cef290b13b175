//! Property tests: no input makes the parser, the request checks, the error
//! responder, the framer or the typed header parsers panic, and a few
//! invariants hold on whatever does parse.

use std::path::Path;
use std::sync::OnceLock;

use proptest::prelude::*;
use sipvault_sip::digest::{Challenge, Credentials};
use sipvault_sip::{
    Contact, MessageBuilder, NameAddr, SipMessage, SipUri, StreamFramer, Via, check_request,
    error_response_for_unparsed,
};

fn corpus() -> &'static [Vec<u8>] {
    static CORPUS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/sip-torture");
        let mut out = Vec::new();
        for sub in ["rfc4475", "rfc5118"] {
            let mut names: Vec<_> = std::fs::read_dir(dir.join(sub))
                .expect("torture dir")
                .map(|e| e.expect("dir entry").path())
                .collect();
            names.sort();
            for p in names {
                out.push(std::fs::read(&p).expect("torture file"));
            }
        }
        assert!(out.len() >= 60, "torture corpus incomplete");
        out
    })
}

/// Runs every entry point on `bytes`; panics only on a broken invariant.
fn exercise(bytes: &[u8], chunk: usize) {
    let parsed = SipMessage::parse(bytes);
    if let Ok(m) = &parsed {
        let _ = (
            m.is_request(),
            m.method(),
            m.request_uri(),
            m.status(),
            m.reason(),
        );
        let _ = (
            m.call_id(),
            m.cseq(),
            m.from(),
            m.to(),
            m.vias(),
            m.contacts(),
        );
        let _ = (
            m.max_forwards(),
            m.expires(),
            m.content_type(),
            m.body(),
            m.start_line(),
        );
        let _ = (
            m.header("v"),
            m.header_all("Contact"),
            m.header_values("require"),
            m.name_addrs("route"),
        );
        for (_, v) in m.headers() {
            let _ = NameAddr::parse(v);
            let _ = Via::parse_list(v);
            let _ = Contact::parse_list(v);
            let _ = SipUri::parse(v);
            let _ = Credentials::parse(v);
            let _ = Challenge::parse(v);
        }
        if let Some(u) = m.request_uri() {
            let _ = SipUri::parse(u).map(|u| u.to_string());
        }
        let _ = check_request(m, &["100rel", "timer"]);

        // Re-reading the bytes of the message gives the same message.
        let again = SipMessage::parse(m.raw()).expect("raw() of a parsed message parses");
        assert!(again.headers().eq(m.headers()));
        assert_eq!(again.body(), m.body());

        // What the builder writes from a parsed message parses again.
        let mut b = MessageBuilder::from_message(m);
        let rebuilt = SipMessage::parse(&b.build()).expect("rebuilt message parses");
        assert_eq!(rebuilt.body(), m.body());
        assert_eq!(rebuilt.method(), m.method());
        b.pop_first_value("via");
        b.add_to_tag("x")
            .set_header("Max-Forwards", "69")
            .remove_header("route");
        let _ = b.build();
        if m.is_request() {
            let _ = MessageBuilder::response_to(m, 400, "Bad Request")
                .add_to_tag("t")
                .build();
        }
    }
    let _ = error_response_for_unparsed(bytes, 400, "Bad Request");

    // Framing: whole and in chunks give the same result.
    let run = |step: usize| {
        let mut f = StreamFramer::new(8 * 1024);
        let mut msgs = Vec::new();
        let mut err = None;
        for piece in bytes.chunks(step.max(1)) {
            f.push(piece);
            loop {
                match f.next_message() {
                    Ok(Some(m)) => {
                        let _ = SipMessage::parse(&m);
                        msgs.push(m);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        err = Some(e);
                        break;
                    }
                }
            }
            if err.is_some() {
                break;
            }
        }
        (msgs, err)
    };
    let whole = run(bytes.len());
    let chunked = run(chunk);
    assert_eq!(
        whole, chunked,
        "framing differs between whole and {chunk}-byte chunks"
    );
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
    Duplicate(usize, usize),
    InsertText(usize, &'static str),
}

const FRAGMENTS: &[&str] = &[
    "\r\n",
    "\n",
    "\r",
    " ",
    "\t",
    ":",
    ";",
    ",",
    "=",
    "\"",
    "\\",
    "<",
    ">",
    "[",
    "]",
    "@",
    "?",
    "%",
    "/",
    "SIP/2.0",
    "SIP/2.0/UDP ",
    "Via: ",
    "v: ",
    "Content-Length: ",
    "l: ",
    "CSeq: ",
    "Call-ID: ",
    "To: ",
    "From: ",
    "Contact: ",
    "m: ",
    "*",
    "sip:",
    "sips:",
    "tel:",
    "tag=",
    "branch=z9hG4bK",
    "received=",
    "rport",
    "expires=",
    "0",
    "1",
    "65535",
    "99999999999999999999",
    "-1",
    "INVITE",
    "REGISTER",
    "\r\n\r\n",
    "Require: ",
    "Digest ",
    "username=",
    "\u{0}",
    "\u{ff}",
    "é",
    "[::1]",
    ":5060",
];

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Mutation::Flip(p, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Mutation::Insert(p, b)),
        any::<usize>().prop_map(Mutation::Delete),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 0usize..64).prop_map(|(p, n)| Mutation::Duplicate(p, n)),
        (any::<usize>(), proptest::sample::select(FRAGMENTS))
            .prop_map(|(p, t)| Mutation::InsertText(p, t)),
    ]
}

fn apply(mut v: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        let len = v.len();
        match *m {
            Mutation::Flip(p, b) if len > 0 => v[p % len] ^= b | 1,
            Mutation::Insert(p, b) => v.insert(p % (len + 1), b),
            Mutation::Delete(p) if len > 0 => {
                v.remove(p % len);
            }
            Mutation::Truncate(p) => v.truncate(p % (len + 1)),
            Mutation::Duplicate(p, n) if len > 0 => {
                let s = p % len;
                let e = (s + n).min(len);
                let piece = v[s..e].to_vec();
                let at = e;
                v.splice(at..at, piece);
            }
            Mutation::InsertText(p, t) => {
                let at = p % (len + 1);
                v.splice(at..at, t.bytes());
            }
            _ => {}
        }
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig {
        // PROPTEST_CASES raises the count for a longer local run.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512),
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1500), chunk in 1usize..40) {
        exercise(&bytes, chunk);
    }

    #[test]
    fn sip_fragment_soup_never_panics(parts in proptest::collection::vec(proptest::sample::select(FRAGMENTS), 0..120), chunk in 1usize..40) {
        let mut bytes = b"INVITE sip:a@b SIP/2.0\r\n".to_vec();
        for p in parts {
            bytes.extend_from_slice(p.as_bytes());
        }
        exercise(&bytes, chunk);
    }

    #[test]
    fn mutated_torture_messages_never_panic(
        idx in any::<usize>(),
        muts in proptest::collection::vec(mutation(), 1..8),
        chunk in 1usize..64,
    ) {
        let c = corpus();
        let base = c[idx % c.len()].clone();
        exercise(&apply(base, &muts), chunk);
    }

    #[test]
    fn torture_messages_concatenated_frame_consistently(a in any::<usize>(), b in any::<usize>(), chunk in 1usize..64) {
        let c = corpus();
        let mut bytes = c[a % c.len()].clone();
        bytes.extend_from_slice(b"\r\n\r\n");
        bytes.extend_from_slice(&c[b % c.len()]);
        exercise(&bytes, chunk);
    }

    #[test]
    fn typed_parsers_never_panic(s in "\\PC{0,80}", t in proptest::collection::vec(proptest::sample::select(FRAGMENTS), 0..30)) {
        let soup: String = t.concat();
        for v in [s.as_str(), soup.as_str()] {
            let _ = NameAddr::parse(v).map(|a| a.to_string());
            let _ = SipUri::parse(v).map(|u| u.to_string());
            let _ = Via::parse_list(v).map(|l| l.iter().map(|x| x.to_string()).collect::<Vec<_>>());
            let _ = Contact::parse_list(v);
            let _ = Credentials::parse(v);
            let _ = Challenge::parse(v).map(|c| c.to_header_value());
        }
    }

    /// A URI that parses prints back to something that parses to the same URI.
    #[test]
    fn sip_uri_display_roundtrips(
        user in proptest::option::of("[a-zA-Z0-9_.!~*'()%&=+$,;?/-]{1,12}"),
        host in prop_oneof!["[a-z0-9.-]{1,20}", "\\[[0-9a-f:.]{2,20}\\]"],
        port in proptest::option::of(any::<u16>()),
        params in proptest::collection::vec(("[a-z]{1,6}", proptest::option::of("[a-z0-9]{1,6}")), 0..4),
    ) {
        let mut s = String::from("sip:");
        if let Some(u) = &user { s.push_str(u); s.push('@'); }
        s.push_str(&host);
        if let Some(p) = port { s.push_str(&format!(":{p}")); }
        for (n, v) in &params {
            s.push(';');
            s.push_str(n);
            if let Some(v) = v { s.push('='); s.push_str(v); }
        }
        if let Ok(u) = SipUri::parse(&s) {
            let back = SipUri::parse(&u.to_string()).expect("display output parses");
            prop_assert_eq!(back, u);
        }
    }
}
