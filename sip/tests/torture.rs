//! Every message of the RFC 4475 / RFC 5118 torture set, checked against the
//! verdict the index (`shared/testdata/sip-torture/INDEX.tsv`) expects.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use sipvault_sip::{
    FramingError, MessageBuilder, ParseError, SipMessage, StreamFramer, check_request,
    error_response_for_unparsed,
};

/// Option tags the test server supports.
const SUPPORTED: &[&str] = &["100rel", "path", "outbound", "gruu", "replaces", "timer"];

#[path = "common/verdicts.rs"]
mod verdicts;
use verdicts::*;

fn torture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/sip-torture")
}

struct Entry {
    file: String,
    classification: String,
    sha256: String,
}

fn index() -> Vec<Entry> {
    let text = std::fs::read_to_string(torture_dir().join("INDEX.tsv")).expect("read INDEX.tsv");
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            assert!(
                cols.len() >= 9,
                "INDEX.tsv row with {} columns: {l}",
                cols.len()
            );
            Entry {
                file: cols[0].to_string(),
                classification: cols[4].to_string(),
                sha256: cols[8].to_string(),
            }
        })
        .collect()
}

fn read(file: &str) -> Vec<u8> {
    std::fs::read(torture_dir().join(file)).unwrap_or_else(|e| panic!("{file}: cannot read: {e}"))
}

fn verdict(bytes: &[u8]) -> Verdict {
    match SipMessage::parse(bytes) {
        Err(ParseError::Truncated) => Truncated,
        Err(e) => {
            let start = bytes
                .iter()
                .position(|&b| b != b'\r' && b != b'\n')
                .unwrap_or(0);
            if bytes[start..].starts_with(b"SIP/") {
                Discard
            } else {
                Reject(e.response_code())
            }
        }
        Ok(m) if m.is_request() => match check_request(&m, SUPPORTED) {
            Ok(()) => Accept,
            Err(r) => Reject(r.code),
        },
        Ok(m) => {
            // A usable response: the fields a transaction layer needs parse.
            if m.cseq().is_some() && !m.vias().is_empty() && m.from().is_some() && m.to().is_some()
            {
                Accept
            } else {
                Discard
            }
        }
    }
}

#[test]
fn index_table_and_files_agree() {
    let idx = index();
    let expected: BTreeMap<&str, Verdict> = EXPECTED.iter().copied().collect();
    assert_eq!(expected.len(), EXPECTED.len(), "duplicate file in EXPECTED");
    for e in &idx {
        assert!(
            expected.contains_key(e.file.as_str()),
            "{}: in INDEX.tsv but not in the test table",
            e.file
        );
    }
    for f in expected.keys() {
        assert!(
            idx.iter().any(|e| e.file == *f),
            "{f}: in the test table but not in INDEX.tsv"
        );
    }
    let mut on_disk = Vec::new();
    for sub in ["rfc4475", "rfc5118"] {
        for ent in std::fs::read_dir(torture_dir().join(sub)).expect("read torture dir") {
            on_disk.push(format!(
                "{sub}/{}",
                ent.expect("dir entry").file_name().to_string_lossy()
            ));
        }
    }
    for f in &on_disk {
        assert!(
            expected.contains_key(f.as_str()),
            "{f}: on disk but not in the test table"
        );
    }
    assert_eq!(on_disk.len(), idx.len(), "files on disk vs INDEX.tsv rows");
}

#[test]
fn sha256_matches_index() {
    for e in index() {
        let got = hex::encode(Sha256::digest(read(&e.file)));
        assert_eq!(got, e.sha256, "{}: sha256 differs from INDEX.tsv", e.file);
    }
}

#[test]
fn datagram_verdicts() {
    let idx = index();
    let mut failures = Vec::new();
    for (file, want) in EXPECTED {
        let bytes = wire(file, &read(file));
        let got = verdict(&bytes);
        if got != *want {
            let detail = match SipMessage::parse(&bytes) {
                Err(e) => format!("parse error: {e}"),
                Ok(m) => format!("check_request: {:?}", check_request(&m, SUPPORTED)),
            };
            failures.push(format!("{file}: expected {want:?}, got {got:?} ({detail})"));
        }
        // A file the index calls valid is never refused.
        let class = idx
            .iter()
            .find(|e| e.file == *file)
            .map(|e| e.classification.as_str())
            .unwrap_or("");
        if class == "valid" && got != Accept && *file != "rfc5118/ipv6-in-sdp" {
            failures.push(format!("{file}: classified valid but got {got:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "torture verdicts:\n{}",
        failures.join("\n")
    );
}

#[test]
fn rejections_produce_sendable_responses() {
    for (file, want) in EXPECTED {
        let bytes = wire(file, &read(file));
        match (want, SipMessage::parse(&bytes)) {
            (Reject(code), Err(e)) => {
                assert_eq!(e.response_code(), *code, "{file}");
                let Some(resp) = error_response_for_unparsed(&bytes, *code, "Bad Request") else {
                    // Without a Via there is nowhere to send a response.
                    assert_eq!(*file, "rfc4475/test.dat", "{file}: no error response built");
                    continue;
                };
                match SipMessage::parse(&resp) {
                    Ok(m) => {
                        assert_eq!(m.status(), Some(*code), "{file}");
                        assert!(
                            !m.header_all("via").is_empty(),
                            "{file}: error response without Via"
                        );
                    }
                    // The CSeq is echoed as received, even when it is out of
                    // range (scalar02.dat); the response is still well framed.
                    Err(ParseError::InvalidCSeq(_)) => {
                        let text = String::from_utf8_lossy(&resp);
                        assert!(
                            text.starts_with(&format!("SIP/2.0 {code} ")),
                            "{file}: {text}"
                        );
                        assert!(text.contains("\r\nVia: "), "{file}: {text}");
                    }
                    Err(e) => panic!("{file}: error response does not parse: {e}"),
                }
            }
            (Reject(code), Ok(req)) => {
                let r = check_request(&req, SUPPORTED).expect_err(file);
                let mut b = MessageBuilder::response_to(&req, r.code, &r.reason);
                for (n, v) in &r.headers {
                    b.header(n, v);
                }
                b.add_to_tag("t1");
                let m = SipMessage::parse(&b.build())
                    .unwrap_or_else(|e| panic!("{file}: response does not parse: {e}"));
                assert_eq!(m.status(), Some(*code), "{file}");
                assert_eq!(m.call_id(), req.call_id(), "{file}");
            }
            (Discard, _) => {
                assert!(
                    error_response_for_unparsed(&bytes, 400, "Bad Request").is_none(),
                    "{file}: answered a response"
                );
            }
            _ => {}
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Framed {
    messages: Vec<Vec<u8>>,
    error: Option<FramingError>,
    buffered: usize,
}

fn drain(f: &mut StreamFramer, out: &mut Framed) {
    if out.error.is_some() {
        return;
    }
    loop {
        match f.next_message() {
            Ok(Some(m)) => out.messages.push(m),
            Ok(None) => break,
            Err(e) => {
                out.error = Some(e);
                break;
            }
        }
    }
}

fn frame_whole(bytes: &[u8]) -> Framed {
    let mut f = StreamFramer::new(64 * 1024);
    let mut out = Framed {
        messages: Vec::new(),
        error: None,
        buffered: 0,
    };
    f.push(bytes);
    drain(&mut f, &mut out);
    out.buffered = if out.error.is_some() { 0 } else { f.buffered() };
    out
}

fn frame_bytewise(bytes: &[u8]) -> Framed {
    let mut f = StreamFramer::new(64 * 1024);
    let mut out = Framed {
        messages: Vec::new(),
        error: None,
        buffered: 0,
    };
    for b in bytes {
        f.push(std::slice::from_ref(b));
        drain(&mut f, &mut out);
    }
    out.buffered = if out.error.is_some() { 0 } else { f.buffered() };
    out
}

#[test]
fn stream_framing() {
    for (file, want) in EXPECTED {
        let bytes = wire(file, &read(file));
        let whole = frame_whole(&bytes);
        let bytewise = frame_bytewise(&bytes);
        assert_eq!(
            whole, bytewise,
            "{file}: whole vs byte-by-byte framing differ"
        );

        let header_end = bytes.windows(4).position(|w| w == b"\r\n\r\n");
        let head = String::from_utf8_lossy(&bytes[..header_end.unwrap_or(bytes.len())])
            .to_ascii_lowercase();
        let has_cl =
            head.contains("\ncontent-length") || head.contains("\nl:") || head.contains("\nl :");
        match *file {
            "rfc4475/ncl.dat" | "rfc4475/mcl01.dat" => {
                assert!(
                    matches!(whole.error, Some(FramingError::BadContentLength(_))),
                    "{file}: {whole:?}"
                )
            }
            "rfc4475/inv2543.dat" => assert_eq!(
                whole.error,
                Some(FramingError::MissingContentLength),
                "{file}"
            ),
            // Body incomplete (clerr, ipv6-in-sdp) or header section not
            // terminated (baddn): a stream waits for more bytes.
            "rfc4475/clerr.dat" | "rfc5118/ipv6-in-sdp" | "rfc4475/baddn.dat" => {
                assert!(
                    whole.messages.is_empty() && whole.error.is_none(),
                    "{file}: {whole:?}"
                );
                assert_eq!(whole.buffered, bytes.len(), "{file}");
            }
            _ => {
                assert!(has_cl, "{file}: expected a Content-Length header");
                // dblreq.dat: the second request's body is 5 bytes shorter
                // than what follows it; the left-over "C" CRLF CRLF is a
                // header section without Content-Length.
                if *file == "rfc4475/dblreq.dat" {
                    assert_eq!(
                        whole.error,
                        Some(FramingError::MissingContentLength),
                        "{file}"
                    );
                } else {
                    assert!(
                        whole.error.is_none(),
                        "{file}: framing error {:?}",
                        whole.error
                    );
                }
                let first = whole
                    .messages
                    .first()
                    .unwrap_or_else(|| panic!("{file}: no message framed"));
                // Framing applies: the framed message is judged like the datagram.
                assert_eq!(verdict(first), *want, "{file}: framed message verdict");
                if let Ok(m) = SipMessage::parse(&bytes) {
                    assert_eq!(
                        first.as_slice(),
                        m.raw(),
                        "{file}: framed bytes differ from datagram message"
                    );
                }
            }
        }
    }
}

#[test]
fn dblreq_stream_yields_both_requests() {
    let bytes = read("rfc4475/dblreq.dat");
    let framed = frame_whole(&bytes);
    assert_eq!(framed.messages.len(), 2, "dblreq.dat: {framed:?}");
    let second = SipMessage::parse(&framed.messages[1]).expect("dblreq.dat: second message");
    assert_eq!(second.method(), Some("INVITE"), "dblreq.dat");
    assert_eq!(second.body().len(), 150, "dblreq.dat");
    assert_eq!(
        framed.error,
        Some(FramingError::MissingContentLength),
        "dblreq.dat: trailing \"C\" CRLF CRLF"
    );
}

#[test]
fn as_shipped_lf() {
    // The RFC 5118 files as shipped (bare LF): parse as datagrams too.
    for (file, want) in [
        ("rfc5118/ipv6-good", Accept),
        ("rfc5118/ipv6-bad", Reject(400)),
        ("rfc5118/ipv6-in-sdp", Truncated),
        ("rfc5118/mult-ip-in-sdp", Truncated),
        ("rfc5118/ipv4-mapped-ipv6", Accept),
        ("rfc5118/ipv6-bug-abnf-3-colons", Accept),
        ("rfc5118/ipv6-correct-abnf-2-colons", Accept),
    ] {
        assert_eq!(verdict(&read(file)), want, "{file} (bare LF)");
    }
}

fn parse_ok(file: &str) -> SipMessage {
    let bytes = wire(file, &read(file));
    SipMessage::parse(&bytes).unwrap_or_else(|e| panic!("{file}: {e}"))
}

#[test]
fn field_level_expectations() {
    let m = parse_ok("rfc4475/wsinv.dat");
    assert_eq!(m.max_forwards(), Some(68), "wsinv.dat");
    assert_eq!(m.cseq(), Some((9, "INVITE")), "wsinv.dat");
    assert_eq!(
        m.to().expect("wsinv.dat To").tag(),
        Some("1918181833n"),
        "wsinv.dat"
    );
    let from = m.from().expect("wsinv.dat From");
    assert_eq!(from.tag(), Some("98asjd8"), "wsinv.dat");
    assert_eq!(
        from.display.as_deref(),
        Some(r#"J Rosenberg \""#),
        "wsinv.dat"
    );
    let vias = m.vias();
    assert_eq!(vias.len(), 3, "wsinv.dat");
    assert_eq!(vias[1].branch(), Some("z9hG4bK9ikj8"), "wsinv.dat");
    assert_eq!(vias[2].host, "192.168.255.111", "wsinv.dat");
    assert_eq!(
        m.header("NewFangledHeader"),
        Some("newfangled value continued newfangled value"),
        "wsinv.dat"
    );
    assert_eq!(
        m.header("UnknownHeaderWithUnusualValue"),
        Some(";;,,;;,;"),
        "wsinv.dat"
    );
    assert_eq!(m.header("subject"), Some(""), "wsinv.dat");
    let c = m.contacts();
    assert_eq!(c.len(), 1, "wsinv.dat");
    assert_eq!(
        c[0].addr.as_ref().and_then(|a| a.param("q")),
        Some("0.33"),
        "wsinv.dat"
    );
    assert_eq!(m.body().len(), 150, "wsinv.dat");

    let m = parse_ok("rfc4475/intmeth.dat");
    assert_eq!(
        m.method(),
        Some("!interesting-Method0123456789_*+`.%indeed'~"),
        "intmeth.dat"
    );
    assert!(
        m.to()
            .expect("intmeth.dat To")
            .display
            .as_deref()
            .expect("display")
            .contains('\0'),
        "intmeth.dat"
    );

    let m = parse_ok("rfc4475/esc02.dat");
    assert_eq!(m.method(), Some("RE%47IST%45R"), "esc02.dat");
    assert_eq!(
        m.contacts().len(),
        2,
        "esc02.dat: two Contact values, not three"
    );
    assert_eq!(
        m.vias()[0].branch(),
        Some("z9hG4bK209%fzsnel234"),
        "esc02.dat"
    );

    let m = parse_ok("rfc4475/escnull.dat");
    let c = m.contacts();
    assert_eq!(c.len(), 2, "escnull.dat");
    assert_ne!(c[0].addr, c[1].addr, "escnull.dat");

    let m = parse_ok("rfc4475/dblreq.dat");
    assert_eq!(m.method(), Some("REGISTER"), "dblreq.dat");
    assert!(m.body().is_empty(), "dblreq.dat");
    assert!(
        m.raw().ends_with(b"Content-Length: 0\r\n\r\n"),
        "dblreq.dat"
    );

    let m = parse_ok("rfc4475/semiuri.dat");
    let u = sipvault_sip::SipUri::parse(m.request_uri().unwrap()).expect("semiuri.dat R-URI");
    assert_eq!(
        u.user.as_deref(),
        Some("user;par=u%40example.net"),
        "semiuri.dat"
    );
    assert_eq!(u.host, "example.com", "semiuri.dat");
    assert_eq!(m.header_values("accept").len(), 6, "semiuri.dat");

    let m = parse_ok("rfc4475/transports.dat");
    let t: Vec<String> = m.vias().into_iter().map(|v| v.transport).collect();
    assert_eq!(
        t,
        ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"],
        "transports.dat"
    );

    let m = parse_ok("rfc4475/mpart01.dat");
    assert_eq!(m.body().len(), 553, "mpart01.dat");
    assert!(
        m.content_type().unwrap().starts_with("multipart/mixed"),
        "mpart01.dat"
    );

    let m = parse_ok("rfc4475/unreason.dat");
    assert_eq!(m.status(), Some(200), "unreason.dat");
    assert!(
        m.reason().unwrap().starts_with("= 2**3 * 5**2 "),
        "unreason.dat"
    );
    let m = parse_ok("rfc4475/noreason.dat");
    assert_eq!(
        (m.status(), m.reason()),
        (Some(100), Some("")),
        "noreason.dat"
    );

    let m = parse_ok("rfc4475/longreq.dat");
    assert_eq!(m.vias().len(), 34, "longreq.dat");

    let m = parse_ok("rfc4475/cparam01.dat");
    let a = m.contacts().remove(0).addr.expect("cparam01.dat contact");
    assert_eq!(
        a.param("unknownparam"),
        Some(""),
        "cparam01.dat: header param"
    );
    let m = parse_ok("rfc4475/cparam02.dat");
    let a = m.contacts().remove(0).addr.expect("cparam02.dat contact");
    assert!(a.params.is_empty(), "cparam02.dat: URI param");
    assert_eq!(
        a.sip_uri().expect("cparam02.dat uri").param("unknownparam"),
        Some(""),
        "cparam02.dat"
    );

    let m = parse_ok("rfc4475/regescrt.dat");
    let a = m.contacts().remove(0).addr.expect("regescrt.dat contact");
    assert_eq!(
        a.sip_uri().expect("regescrt.dat uri").headers.as_deref(),
        Some("Route=%3Csip:sip.example.com%3E"),
        "regescrt.dat"
    );

    let m = parse_ok(
        "rfc4475/scalar02.dat"
            .replace("scalar02", "zeromf")
            .as_str(),
    );
    assert_eq!(m.max_forwards(), Some(0), "zeromf.dat");

    let m = parse_ok("rfc4475/inv2543.dat");
    assert_eq!(m.vias()[0].branch(), None, "inv2543.dat");
    assert_eq!(m.max_forwards(), None, "inv2543.dat");

    let m = parse_ok("rfc4475/bext01.dat");
    let r = check_request(&m, SUPPORTED).expect_err("bext01.dat");
    assert_eq!(
        r.headers,
        vec![(
            "Unsupported".to_string(),
            "nothingSupportsThis, nothingSupportsThisEither, noProxiesSupportThis, norDoAnyProxiesSupportThis".to_string()
        )],
        "bext01.dat"
    );

    let m = parse_ok("rfc5118/port-ambiguous");
    let u = sipvault_sip::SipUri::parse(m.request_uri().unwrap()).expect("port-ambiguous");
    assert_eq!(
        (u.host.as_str(), u.port),
        ("[2001:db8::10:5070]", None),
        "port-ambiguous"
    );
    let m = parse_ok("rfc5118/port-unambiguous");
    let u = sipvault_sip::SipUri::parse(m.request_uri().unwrap()).expect("port-unambiguous");
    assert_eq!(
        (u.host.as_str(), u.port),
        ("[2001:db8::10]", Some(5070)),
        "port-unambiguous"
    );
    let m = parse_ok("rfc5118/via-received-param-with-delim");
    assert_eq!(
        m.vias()[0].received(),
        Some("[2001:db8::9:255]"),
        "via-received-param-with-delim"
    );
    let m = parse_ok("rfc5118/via-received-param-no-delim");
    assert_eq!(
        m.vias()[0].received(),
        Some("2001:db8::9:255"),
        "via-received-param-no-delim"
    );
    let m = parse_ok("rfc5118/mult-ip-in-header");
    let v = m.vias();
    assert_eq!(
        (v[0].host.as_str(), v[0].port),
        ("[2001:db8::9:1]", Some(6050)),
        "mult-ip-in-header"
    );
    assert_eq!(v[2].received(), Some("192.0.2.200"), "mult-ip-in-header");
    let m = parse_ok("rfc5118/mult-ip-in-sdp");
    assert_eq!(m.body().len(), 181, "mult-ip-in-sdp");

    let m = parse_ok("rfc4475/insuf.dat");
    assert_eq!(
        m.call_id(),
        None,
        "insuf.dat: no Call-ID, still parsed for the archive"
    );
}
