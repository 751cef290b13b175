use super::*;
use sipvault_sip::MessageBuilder;

const DOMAIN: &str = "example.com";

fn agent() -> PresenceAgent {
    PresenceAgent::new(
        PresenceConfig {
            domain: DOMAIN.into(),
            ..PresenceConfig::default()
        },
        7,
    )
}

fn flow() -> SocketAddr {
    "10.0.0.9:5070".parse().unwrap()
}

fn pidf(user: &str, basic: &str, note: &str) -> String {
    format!(
        "<?xml version=\"1.0\"?><presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"sip:{user}@{DOMAIN}\"><tuple id=\"t\"><status><basic>{basic}</basic></status></tuple><note>{note}</note></presence>"
    )
}

fn publish_req(user: &str, if_match: Option<&str>, expires: u32, body: Option<&str>) -> SipMessage {
    let mut b = MessageBuilder::request("PUBLISH", &format!("sip:{user}@{DOMAIN}"));
    b.header("Via", "SIP/2.0/UDP 10.0.0.9:5070;branch=z9hG4bK-p")
        .header("From", &format!("<sip:{user}@{DOMAIN}>;tag=p1"))
        .header("To", &format!("<sip:{user}@{DOMAIN}>"))
        .header("Call-ID", "pub-1")
        .header("CSeq", "1 PUBLISH")
        .header("Event", "presence")
        .header("Expires", &expires.to_string());
    if let Some(tag) = if_match {
        b.header("SIP-If-Match", tag);
    }
    match body {
        Some(body) => b.body(PIDF, body.as_bytes()),
        None => b.body("text/plain", b""),
    };
    let bytes = b.build();
    SipMessage::parse(&bytes).unwrap()
}

fn subscribe_req(watcher: &str, to_tag: Option<&str>, expires: u32, call_id: &str) -> SipMessage {
    let mut b = MessageBuilder::request("SUBSCRIBE", &format!("sip:alice@{DOMAIN}"));
    b.header("Via", "SIP/2.0/UDP 10.0.0.9:5070;branch=z9hG4bK-s")
        .header("From", &format!("<sip:{watcher}>;tag=w1"))
        .header(
            "To",
            &match to_tag {
                Some(t) => format!("<sip:alice@{DOMAIN}>;tag={t}"),
                None => format!("<sip:alice@{DOMAIN}>"),
            },
        )
        .header("Call-ID", call_id)
        .header("CSeq", "1 SUBSCRIBE")
        .header("Contact", "<sip:watcher@10.0.0.9:5070>")
        .header("Event", "presence")
        .header("Expires", &expires.to_string());
    SipMessage::parse(&b.build()).unwrap()
}

/// A SUBSCRIBE to alice from `watcher`, over UDP from [`flow`].
fn sub(
    a: &mut PresenceAgent,
    now: Instant,
    watcher: &str,
    to_tag: Option<&str>,
    expires: u32,
    call_id: &str,
) -> Reply {
    a.subscribe(
        now,
        "alice",
        &subscribe_req(watcher, to_tag, expires, call_id),
        Transport::Udp,
        flow(),
    )
}

fn header<'a>(reply: &'a Reply, name: &str) -> Option<&'a str> {
    reply
        .headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);

/// The NOTIFYs the agent sends at `now`, each answered 200 at once (so
/// the next one of its dialog may go).
fn notifies(a: &mut PresenceAgent, now: Instant) -> Vec<SipMessage> {
    let mut out = Vec::new();
    while let Some(n) = a.poll_notify(now) {
        assert_eq!(n.dst, flow(), "NOTIFY goes over the SUBSCRIBE's flow");
        let branch = format!("z9hG4bK-{}-{}", n.call_id, n.cseq);
        a.sent(now, branch.clone(), &n, n.request.clone(), T1);
        assert!(a.response(&branch, 200), "the 200 answers our NOTIFY");
        out.push(SipMessage::parse(&n.request).expect("NOTIFY parses"));
    }
    out
}

fn basic(n: &SipMessage) -> String {
    sipvault_sip::pidf::parse(n.body())
        .unwrap()
        .tuples
        .first()
        .and_then(|t| t.basic.clone())
        .unwrap_or_default()
}

#[test]
fn publish_refresh_modify_remove_with_etags() {
    let mut a = agent();
    let t0 = Instant::now();
    let r = a.publish(
        t0,
        "alice",
        &publish_req("alice", None, 600, Some(&pidf("alice", "open", "in"))),
    );
    assert_eq!((r.code, header(&r, "Expires")), (200, Some("600")));
    let tag1 = header(&r, "SIP-ETag").unwrap().to_string();

    let r = a.publish(t0, "alice", &publish_req("alice", Some(&tag1), 600, None));
    assert_eq!(r.code, 200, "refresh without a body");
    let tag2 = header(&r, "SIP-ETag").unwrap().to_string();
    assert_ne!(tag1, tag2, "every success gives a new entity tag");

    let r = a.publish(t0, "alice", &publish_req("alice", Some(&tag1), 600, None));
    assert_eq!(r.code, 412, "the old tag no longer names the publication");

    let r = a.publish(
        t0,
        "alice",
        &publish_req(
            "alice",
            Some(&tag2),
            600,
            Some(&pidf("alice", "closed", "out")),
        ),
    );
    assert_eq!(r.code, 200, "modify");
    let tag3 = header(&r, "SIP-ETag").unwrap().to_string();
    assert!(String::from_utf8_lossy(&a.state_of("alice")).contains("closed"));

    let r = a.publish(t0, "alice", &publish_req("alice", Some(&tag3), 0, None));
    assert_eq!((r.code, header(&r, "Expires")), (200, Some("0")));
    assert_eq!(a.counts(), (0, 0));
}

#[test]
fn publish_errors() {
    let mut a = agent();
    let t0 = Instant::now();
    let r = a.publish(t0, "alice", &publish_req("alice", None, 600, None));
    assert_eq!(r.code, 400, "an initial publication needs a body");
    let r = a.publish(
        t0,
        "alice",
        &publish_req("alice", None, 10, Some(&pidf("alice", "open", ""))),
    );
    assert_eq!((r.code, header(&r, "Min-Expires")), (423, Some("60")));
    let r = a.publish(
        t0,
        "bob",
        &publish_req("alice", None, 600, Some(&pidf("alice", "open", ""))),
    );
    assert_eq!(r.code, 403, "nobody publishes someone else's state");
    let r = a.publish(
        t0,
        "alice",
        &publish_req("alice", None, 600, Some("<not pidf")),
    );
    assert_eq!(r.code, 400, "a body that is no PIDF");
    let bytes = String::from_utf8(
        publish_req("alice", None, 600, Some(&pidf("alice", "open", "")))
            .raw()
            .to_vec(),
    )
    .unwrap()
    .replace("Event: presence", "Event: dialog");
    let r = a.publish(t0, "alice", &SipMessage::parse(bytes.as_bytes()).unwrap());
    assert_eq!(
        (r.code, header(&r, "Allow-Events")),
        (489, Some("presence"))
    );
}

#[test]
fn subscription_gets_initial_and_change_notifications_then_terminated() {
    let mut a = agent();
    let t0 = Instant::now();
    let r = sub(&mut a, t0, &format!("bob@{DOMAIN}"), None, 600, "sub-1");
    assert_eq!(r.code, 200);
    let our_tag = r.to_tag.clone().expect("a new subscription is a dialog");
    let n = notifies(&mut a, t0);
    assert_eq!(n.len(), 1, "initial NOTIFY");
    assert_eq!(
        n[0].header("Subscription-State"),
        Some("active;expires=600")
    );
    assert_eq!(n[0].header("Event"), Some("presence"));
    assert_eq!(n[0].request_uri(), Some("sip:watcher@10.0.0.9:5070"));
    assert_eq!(n[0].from().and_then(|f| f.tag()), Some(our_tag.as_str()));
    assert_eq!(basic(&n[0]), "closed", "nothing published yet");

    a.publish(
        t0,
        "alice",
        &publish_req(
            "alice",
            None,
            600,
            Some(&pidf("alice", "open", "at my desk")),
        ),
    );
    let n = notifies(&mut a, t0);
    assert_eq!(n.len(), 1, "a change notifies the watcher");
    assert_eq!(basic(&n[0]), "open");
    assert_eq!(n[0].cseq(), Some((2, "NOTIFY")));

    let t1 = t0 + Duration::from_secs(100);
    let r = sub(
        &mut a,
        t1,
        &format!("bob@{DOMAIN}"),
        Some(&our_tag),
        600,
        "sub-1",
    );
    assert_eq!(r.code, 200, "refresh");
    assert_eq!(
        notifies(&mut a, t0).len(),
        1,
        "a refresh is answered with the state"
    );

    let r = sub(
        &mut a,
        t1,
        &format!("bob@{DOMAIN}"),
        Some(&our_tag),
        0,
        "sub-1",
    );
    assert_eq!(r.code, 200);
    let n = notifies(&mut a, t0);
    assert_eq!(n[0].header("Subscription-State"), Some("terminated"));
    assert_eq!(a.counts().1, 0, "unsubscribed");
    let r = sub(
        &mut a,
        t1,
        &format!("bob@{DOMAIN}"),
        Some(&our_tag),
        600,
        "sub-1",
    );
    assert_eq!(r.code, 481);
}

#[test]
fn expiry_of_publications_and_subscriptions_runs_on_the_given_clock() {
    let mut a = agent();
    let t0 = Instant::now();
    a.subscribe(
        t0,
        "alice",
        &subscribe_req(&format!("bob@{DOMAIN}"), None, 300, "sub-2"),
        Transport::Tcp,
        flow(),
    );
    a.publish(
        t0,
        "alice",
        &publish_req("alice", None, 120, Some(&pidf("alice", "open", ""))),
    );
    notifies(&mut a, t0);
    assert_eq!(a.poll_timeout(), Some(t0 + Duration::from_secs(120)));
    a.handle_timeout(t0 + Duration::from_secs(121));
    let n = notifies(&mut a, t0);
    assert_eq!(
        n.len(),
        1,
        "the publication expired: the watcher sees closed"
    );
    assert_eq!(basic(&n[0]), "closed");
    a.handle_timeout(t0 + Duration::from_secs(301));
    let n = notifies(&mut a, t0);
    assert_eq!(
        n[0].header("Subscription-State"),
        Some("terminated;reason=timeout")
    );
    assert_eq!(a.counts(), (0, 0));
    assert_eq!(a.poll_timeout(), None);
}

#[test]
fn watchers_are_authorised_by_allow_list_or_domain() {
    let mut a = agent();
    let t0 = Instant::now();
    let r = sub(&mut a, t0, "mallory@elsewhere.org", None, 600, "s-3");
    assert_eq!(r.code, 403, "another domain is refused by default");
    assert!(notifies(&mut a, t0).is_empty());
    a.set_allow(HashMap::from([(
        "alice".to_string(),
        vec![
            "sip:carol@partner.net".to_string(),
            "*@elsewhere.org".to_string(),
        ],
    )]));
    let r = sub(&mut a, t0, "mallory@elsewhere.org", None, 600, "s-4");
    assert_eq!(r.code, 200, "a domain on alice's list");
    let r = sub(&mut a, t0, "carol@partner.net", None, 600, "s-5");
    assert_eq!(r.code, 200, "a URI on alice's list");
    let r = sub(&mut a, t0, &format!("bob@{DOMAIN}"), None, 600, "s-6");
    assert_eq!(r.code, 403, "with a list, the own domain is not implied");
}

#[test]
fn a_subscriber_that_forgot_the_dialog_is_dropped() {
    let mut a = agent();
    let t0 = Instant::now();
    sub(&mut a, t0, &format!("bob@{DOMAIN}"), None, 600, "s-7");
    notifies(&mut a, t0);
    a.notify_answered("s-7", 481);
    assert_eq!(a.counts().1, 0);
}

#[test]
fn an_unanswered_notify_is_retransmitted_then_its_subscription_dropped() {
    let mut a = agent();
    let t0 = Instant::now();
    sub(&mut a, t0, &format!("bob@{DOMAIN}"), None, 600, "s-8");
    let n = a.poll_notify(t0).expect("initial NOTIFY");
    let (t1, t2) = (T1, T2);
    a.sent(t0, "z9hG4bK-n1".into(), &n, n.request.clone(), t1);
    assert_eq!(a.poll_timeout(), Some(t0 + t1));
    assert_eq!(a.retransmissions(t0 + t1, t2).len(), 1, "Timer E");
    assert!(
        a.retransmissions(t0 + t1, t2).is_empty(),
        "the next one waits twice as long"
    );
    assert_eq!(a.retransmissions(t0 + t1 * 3, t2).len(), 1);
    assert!(!a.response("z9hG4bK-other", 200), "not our NOTIFY");
    assert!(
        a.response("z9hG4bK-n1", 100),
        "a provisional answer is ours too"
    );
    assert_eq!(a.counts().1, 1);
    a.retransmissions(t0 + t1 * 64, t2);
    assert_eq!(a.counts().1, 0, "never answered: the watcher is gone");
}

#[test]
fn one_notify_in_flight_per_subscription_and_the_newest_state_supersedes() {
    let mut a = agent();
    let t0 = Instant::now();
    sub(&mut a, t0, &format!("bob@{DOMAIN}"), None, 600, "s-9");
    let initial = a.poll_notify(t0).expect("initial NOTIFY");
    a.sent(
        t0,
        "z9hG4bK-i".into(),
        &initial,
        initial.request.clone(),
        T1,
    );
    for (basic, note) in [("open", "in"), ("closed", "lunch"), ("open", "back")] {
        a.publish(
            t0,
            "alice",
            &publish_req("alice", None, 600, Some(&pidf("alice", basic, note))),
        );
        assert!(
            a.poll_notify(t0).is_none(),
            "no NOTIFY while the previous one is unanswered"
        );
    }
    assert!(a.response("z9hG4bK-i", 200));
    let n = notifies(&mut a, t0);
    assert_eq!(n.len(), 1, "one NOTIFY for the three changes");
    assert_eq!(n[0].cseq(), Some((2, "NOTIFY")));
    assert!(
        String::from_utf8_lossy(n[0].body()).contains("<note>back</note>"),
        "the newest state: {:?}",
        String::from_utf8_lossy(n[0].body())
    );

    // Unsubscribing while a NOTIFY is in flight: the final one waits.
    a.publish(
        t0,
        "alice",
        &publish_req("alice", None, 600, Some(&pidf("alice", "closed", "gone"))),
    );
    let change = a.poll_notify(t0).expect("the change");
    a.sent(t0, "z9hG4bK-c".into(), &change, change.request.clone(), T1);
    let r = sub(
        &mut a,
        t0,
        &format!("bob@{DOMAIN}"),
        Some(&header_tag(&n[0])),
        0,
        "s-9",
    );
    assert_eq!(r.code, 200);
    assert_eq!(a.counts().1, 0, "no longer a subscription");
    assert!(a.poll_notify(t0).is_none(), "the final NOTIFY waits");
    assert!(a.response("z9hG4bK-c", 200));
    let last = notifies(&mut a, t0);
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].header("Subscription-State"), Some("terminated"));
    assert_eq!(last[0].cseq(), Some((4, "NOTIFY")), "last of the dialog");
    assert!(a.poll_notify(t0).is_none());
}

/// Our tag in a NOTIFY we sent (its From tag).
fn header_tag(n: &SipMessage) -> String {
    n.from().and_then(|f| f.tag().map(str::to_string)).unwrap()
}
