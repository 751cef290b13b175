use super::*;

const BASE_NS: i64 = 1_700_000_000_000_000_000;
const SEC: i64 = 1_000_000_000;

fn t(i: i64) -> i64 {
    BASE_NS + i * SEC
}

fn row(i: i64, call_id: &str, sender: &str, recipients: &[&str], body: &str) -> ImMessageRow {
    ImMessageRow {
        time_ns: t(i),
        call_id: call_id.to_string(),
        cseq: 1,
        sender: sender.to_string(),
        recipients: recipients.iter().map(|s| s.to_string()).collect(),
        content_type: "text/plain".to_string(),
        body: body.to_string(),
        delivery_status: "delivered".to_string(),
        status: Some(200),
        from_display: None,
        to_display: None,
    }
}

const ALICE: &str = "sip:alice@example.com";
const BOB: &str = "sip:bob@example.com";
const CAROL: &str = "sip:carol@example.com";

fn fixture() -> Vec<ImMessageRow> {
    vec![
        row(0, "c1", ALICE, &[BOB], "Lunch at noon?"),
        row(1, "c2", BOB, &[ALICE], "Yes, lunch sounds great"),
        row(
            2,
            "c3",
            ALICE,
            &[BOB, CAROL],
            "Quarterly report is ready\nplease review",
        ),
        row(3, "c4", CAROL, &[ALICE], "The report has errors"),
        row(
            4,
            "c5",
            "sip:dave@other.org",
            &[ALICE],
            "Café meeting tomorrow",
        ),
        row(
            5,
            "c6",
            "\"Erin\" <sip:Erin@Example.com:5061;transport=tls>",
            &[ALICE],
            "Ready for the quarterly meeting",
        ),
    ]
}

/// An index in a fresh temp dir holding the fixture as segment `seg-1`.
fn fixture_index() -> (tempfile::TempDir, ImIndex) {
    let dir = tempfile::tempdir().expect("create temp dir");
    let mut index = ImIndex::open_or_create(dir.path()).expect("create index");
    index
        .add_segment("seg-1", &fixture())
        .expect("add fixture segment");
    (dir, index)
}

fn req(query: &str) -> SearchRequest {
    SearchRequest {
        query: query.to_string(),
        ..SearchRequest::default()
    }
}

/// Call ids of the hits, in result order.
fn ids(hits: &[SearchHit]) -> Vec<&str> {
    hits.iter().map(|h| h.call_id.as_str()).collect()
}

/// Call ids of the hits, sorted (for checks of the hit set only).
fn id_set(hits: &[SearchHit]) -> Vec<&str> {
    let mut v = ids(hits);
    v.sort_unstable();
    v
}

fn search_ok(dir: &Path, r: &SearchRequest) -> Vec<SearchHit> {
    search(dir, r).unwrap_or_else(|e| panic!("search {r:?} failed: {e}"))
}

#[track_caller]
fn assert_set(dir: &Path, query: &str, expected: &[&str]) {
    let hits = search_ok(dir, &req(query));
    assert_eq!(id_set(&hits), expected, "hit set of query {query:?}");
}

#[test]
fn words_match_case_and_accent_insensitively() {
    let (dir, _index) = fixture_index();
    let d = dir.path();
    assert_set(d, "lunch", &["c1", "c2"]);
    assert_set(d, "LUNCH", &["c1", "c2"]);
    assert_set(d, "report", &["c3", "c4"]);
    assert_set(d, "cafe", &["c5"]);
    assert_set(d, "café", &["c5"]);
    assert_set(d, "nothing-like-this", &[]);
    // The body's second line is indexed too.
    assert_set(d, "review", &["c3"]);
}

#[test]
fn bare_words_are_combined_with_and() {
    let (dir, _index) = fixture_index();
    assert_set(dir.path(), "lunch noon", &["c1"]);
    assert_set(dir.path(), "quarterly meeting", &["c6"]);
}

#[test]
fn phrases_need_adjacent_words() {
    let (dir, _index) = fixture_index();
    assert_set(dir.path(), "\"quarterly report\"", &["c3"]);
    assert_set(dir.path(), "\"report quarterly\"", &[]);
    assert_set(dir.path(), "\"quarterly meeting\"", &["c6"]);
}

#[test]
fn boolean_operators() {
    let (dir, _index) = fixture_index();
    let d = dir.path();
    assert_set(d, "lunch OR report", &["c1", "c2", "c3", "c4"]);
    assert_set(d, "report AND errors", &["c4"]);
    assert_set(d, "report AND NOT errors", &["c3"]);
    assert_set(d, "report -errors", &["c3"]);
    assert_set(d, "+report +errors", &["c4"]);
    assert_set(d, "(lunch OR meeting) AND NOT noon", &["c2", "c5", "c6"]);
    assert_set(d, "NOT lunch", &["c3", "c4", "c5", "c6"]);
    assert_set(d, "-lunch -report", &["c5", "c6"]);
    assert_set(d, "*", &["c1", "c2", "c3", "c4", "c5", "c6"]);
    assert_set(d, "", &["c1", "c2", "c3", "c4", "c5", "c6"]);
}

#[test]
fn from_and_to_fields_in_the_query_string() {
    let (dir, _index) = fixture_index();
    let d = dir.path();
    assert_set(d, "from:alice", &["c1", "c3"]);
    assert_set(d, "from:ALICE", &["c1", "c3"]);
    assert_set(d, "from:\"alice@example.com\"", &["c1", "c3"]);
    assert_set(d, "from:\"sip:alice@example.com\"", &["c1", "c3"]);
    assert_set(d, "from:sip:alice@example.com", &["c1", "c3"]);
    assert_set(
        d,
        "(to:sip:carol@example.com) OR from:sip:carol@example.com",
        &["c3", "c4"],
    );
    assert_set(d, "to:carol", &["c3"]);
    assert_set(d, "to:bob", &["c1", "c3"]);
    assert_set(d, "from:alice AND report", &["c3"]);
    assert_set(d, "from:alice OR from:carol", &["c1", "c3", "c4"]);
    assert_set(d, "report NOT from:carol", &["c3"]);
    assert_set(d, "body:lunch AND from:bob", &["c2"]);
    assert_set(d, "from:erin", &["c6"]);
}

fn filtered(from: Option<&str>, to: Option<&str>) -> SearchRequest {
    SearchRequest {
        from: from.map(str::to_string),
        to: to.map(str::to_string),
        ..SearchRequest::default()
    }
}

#[test]
fn from_filter_accepts_uri_user_at_host_or_user() {
    let (dir, _index) = fixture_index();
    let d = dir.path();
    for form in [
        "alice",
        "ALICE",
        "alice@example.com",
        "Alice@Example.COM",
        "sip:alice@example.com",
        "<sip:alice@example.com>",
        "sip:alice@example.com;transport=tcp",
    ] {
        let hits = search_ok(d, &filtered(Some(form), None));
        assert_eq!(ids(&hits), ["c1", "c3"], "--from {form:?}");
    }
    // Display name, port and parameters in the stored sender do not get in the way.
    for form in ["erin", "erin@example.com", "sip:erin@example.com:5061"] {
        let hits = search_ok(d, &filtered(Some(form), None));
        assert_eq!(ids(&hits), ["c6"], "--from {form:?}");
    }
    for form in [
        "alice@other.org",
        "sip:alice@other.org",
        "alic",
        "example.com",
        "",
    ] {
        let hits = search_ok(d, &filtered(Some(form), None));
        assert!(
            hits.is_empty(),
            "--from {form:?} should match nothing, got {:?}",
            ids(&hits)
        );
    }
    assert_eq!(ids(&search_ok(d, &filtered(Some("dave"), None))), ["c5"]);
}

#[test]
fn to_filter_matches_any_recipient() {
    let (dir, _index) = fixture_index();
    let d = dir.path();
    assert_eq!(ids(&search_ok(d, &filtered(None, Some("carol")))), ["c3"]);
    assert_eq!(
        ids(&search_ok(d, &filtered(None, Some("sip:bob@example.com")))),
        ["c1", "c3"]
    );
    assert_eq!(
        ids(&search_ok(d, &filtered(None, Some("Alice@example.com")))),
        ["c2", "c4", "c5", "c6"]
    );
    assert_eq!(
        ids(&search_ok(d, &filtered(Some("alice"), Some("carol")))),
        ["c3"]
    );
    assert!(search_ok(d, &filtered(Some("bob"), Some("carol"))).is_empty());
    // Filters combine with the query string.
    let r = SearchRequest {
        query: "report".into(),
        to: Some("alice".into()),
        ..SearchRequest::default()
    };
    assert_eq!(ids(&search_ok(d, &r)), ["c4"]);
}

#[test]
fn time_bounds_are_inclusive_exclusive() {
    let (dir, _index) = fixture_index();
    let d = dir.path();
    let r = |since: Option<i64>, until: Option<i64>| SearchRequest {
        since_ns: since,
        until_ns: until,
        ..SearchRequest::default()
    };
    assert_eq!(ids(&search_ok(d, &r(Some(t(2)), Some(t(4))))), ["c3", "c4"]);
    assert_eq!(
        ids(&search_ok(d, &r(Some(t(2) + 1), Some(t(4) + 1)))),
        ["c4", "c5"]
    );
    assert_eq!(ids(&search_ok(d, &r(Some(t(4)), None))), ["c5", "c6"]);
    assert_eq!(ids(&search_ok(d, &r(None, Some(t(1))))), ["c1"]);
    assert!(
        search_ok(d, &r(Some(t(3)), Some(t(3)))).is_empty(),
        "empty interval"
    );
    let q = SearchRequest {
        query: "lunch OR report".into(),
        since_ns: Some(t(1)),
        until_ns: Some(t(3)),
        ..SearchRequest::default()
    };
    assert_eq!(id_set(&search_ok(d, &q)), ["c2", "c3"]);
}

#[test]
fn limit_keeps_the_first_results() {
    let (dir, _index) = fixture_index();
    let d = dir.path();
    let mut r = req("*");
    r.limit = 2;
    assert_eq!(
        ids(&search_ok(d, &r)),
        ["c1", "c2"],
        "time order, first two"
    );
    r.limit = 0;
    assert_eq!(search_ok(d, &r).len(), 6, "limit 0 means the default limit");
    let mut r = req("lunch OR report");
    r.limit = 3;
    assert_eq!(search_ok(d, &r).len(), 3);
}

#[test]
fn default_limit_is_100() {
    let dir = tempfile::tempdir().unwrap();
    let mut index = ImIndex::open_or_create(dir.path()).unwrap();
    let rows: Vec<_> = (0..150)
        .map(|i| row(i, &format!("m{i:03}"), ALICE, &[BOB], "status update"))
        .collect();
    index.add_segment("big", &rows).unwrap();
    let hits = search_ok(dir.path(), &req("update"));
    assert_eq!(hits.len(), DEFAULT_LIMIT);
    // Equal scores: ties are in time order, so the first 100 messages come back.
    assert_eq!(hits.first().map(|h| h.call_id.as_str()), Some("m000"));
    assert_eq!(hits.last().map(|h| h.call_id.as_str()), Some("m099"));
}

#[test]
fn match_all_results_are_in_time_order_with_zero_score() {
    let dir = tempfile::tempdir().unwrap();
    let mut index = ImIndex::open_or_create(dir.path()).unwrap();
    // Added out of time order, across two segments.
    index
        .add_segment(
            "b",
            &[
                row(9, "late", ALICE, &[BOB], "x"),
                row(1, "early", ALICE, &[BOB], "y"),
            ],
        )
        .unwrap();
    index
        .add_segment("a", &[row(5, "middle", ALICE, &[BOB], "z")])
        .unwrap();
    let hits = search_ok(dir.path(), &req(""));
    assert_eq!(ids(&hits), ["early", "middle", "late"]);
    assert!(hits.iter().all(|h| h.score == 0.0), "scores: {hits:?}");
}

#[test]
fn relevance_order_then_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut index = ImIndex::open_or_create(dir.path()).unwrap();
    index
        .add_segment(
            "s",
            &[
                row(
                    3,
                    "weak-late",
                    ALICE,
                    &[BOB],
                    "budget and many other words in a long message about things",
                ),
                row(2, "strong", ALICE, &[BOB], "budget budget budget"),
                row(
                    1,
                    "weak-early",
                    ALICE,
                    &[BOB],
                    "budget and many other words in a long message about things",
                ),
            ],
        )
        .unwrap();
    let hits = search_ok(dir.path(), &req("budget"));
    assert_eq!(
        ids(&hits),
        ["weak-early", "strong", "weak-late"],
        "time order by default"
    );
    assert!(hits.iter().all(|h| h.score == 0.0), "scores: {hits:?}");
    let hits = search_ok(
        dir.path(),
        &SearchRequest {
            sort: SortOrder::Relevance,
            ..req("budget")
        },
    );
    assert_eq!(ids(&hits), ["strong", "weak-early", "weak-late"]);
    assert!(hits[0].score > hits[1].score, "scores: {hits:?}");
    assert_eq!(hits[1].score, hits[2].score, "equal bodies score equally");
}

#[test]
fn hits_carry_the_stored_message() {
    let (dir, _index) = fixture_index();
    let hits = search_ok(
        dir.path(),
        &SearchRequest {
            sort: SortOrder::Relevance,
            ..req("quarterly report")
        },
    );
    assert_eq!(hits.len(), 1, "hits: {hits:?}");
    let h = &hits[0];
    assert_eq!(h.doc_type, DocType::Im);
    assert_eq!(h.time_ns, t(2));
    assert_eq!(h.from, ALICE);
    assert_eq!(h.to, [BOB, CAROL]);
    assert_eq!(h.body, "Quarterly report is ready\nplease review");
    assert_eq!(h.call_id, "c3");
    assert_eq!(h.cseq, 1);
    assert!(h.score > 0.0);
}

#[test]
fn add_segment_is_idempotent() {
    let (dir, mut index) = fixture_index();
    let d = dir.path();
    index.add_segment("seg-1", &fixture()).unwrap();
    assert_eq!(
        search_ok(d, &req("*")).len(),
        6,
        "re-adding must not double documents"
    );
    assert_eq!(index.segment_ids().unwrap(), ["seg-1"]);

    // Re-adding with other rows replaces the segment's documents.
    index.add_segment("seg-1", &fixture()[..2]).unwrap();
    assert_eq!(ids(&search_ok(d, &req("*"))), ["c1", "c2"]);

    index.add_segment("seg-2", &fixture()[2..3]).unwrap();
    index.add_segment("seg-0-empty", &[]).unwrap();
    assert_eq!(
        index.segment_ids().unwrap(),
        ["seg-0-empty", "seg-1", "seg-2"]
    );
    assert_eq!(
        indexed_segment_ids(d).unwrap(),
        ["seg-0-empty", "seg-1", "seg-2"]
    );
    assert_eq!(ids(&search_ok(d, &req("*"))), ["c1", "c2", "c3"]);
    // The writer's own search sees the same.
    assert_eq!(ids(&index.search(&req("*")).unwrap()), ["c1", "c2", "c3"]);
}

#[test]
fn index_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut index = ImIndex::open_or_create(dir.path()).unwrap();
        index.add_segment("s1", &fixture()).unwrap();
    }
    let index = ImIndex::open_or_create(dir.path()).unwrap();
    assert_eq!(index.segment_ids().unwrap(), ["s1"]);
    assert_eq!(search_ok(dir.path(), &req("lunch")).len(), 2);
}

#[test]
fn reader_works_while_writer_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("im-index");
    // No index yet: empty result, and the directory is not created by a search.
    assert!(search_ok(&path, &req("lunch")).is_empty());
    assert!(!path.exists(), "search must not create the index directory");
    assert!(indexed_segment_ids(&path).unwrap().is_empty());

    let mut writer = ImIndex::open_or_create(&path).unwrap();
    // Index created, nothing committed yet.
    assert!(search_ok(&path, &req("*")).is_empty());

    writer.add_segment("s1", &fixture()[..2]).unwrap();
    assert_eq!(id_set(&search_ok(&path, &req("lunch"))), ["c1", "c2"]);

    // A second writer on the same directory is refused; readers are not.
    match ImIndex::open_or_create(&path) {
        Err(IndexError::Locked(p)) => assert_eq!(p, path),
        other => panic!("second writer should fail with Locked, got {other:?}"),
    }

    writer.add_segment("s2", &fixture()[2..]).unwrap();
    assert_eq!(id_set(&search_ok(&path, &req("report"))), ["c3", "c4"]);
    assert_eq!(
        search_ok(&path, &req("*")).len(),
        6,
        "reader sees the new commit"
    );
}

#[test]
fn reader_in_another_thread_during_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let mut writer = ImIndex::open_or_create(&path).unwrap();
    let reader_path = path.clone();
    let reader = std::thread::spawn(move || {
        let mut last = 0;
        for _ in 0..50 {
            let n = search(&reader_path, &req("*"))
                .expect("concurrent search")
                .len();
            assert!(n >= last, "hit count went backwards: {last} -> {n}");
            last = n;
        }
    });
    for i in 0..10 {
        let rows = [row(i, &format!("x{i}"), ALICE, &[BOB], "hello")];
        writer.add_segment(&format!("s{i}"), &rows).unwrap();
    }
    reader.join().expect("reader thread");
    assert_eq!(search_ok(&path, &req("hello")).len(), 10);
}

#[track_caller]
fn assert_query_error(query: &str, expected_position: usize) {
    let dir = tempfile::tempdir().unwrap();
    // Bad queries are reported whether or not an index exists.
    for d in [
        dir.path().join("missing"),
        fixture_index().0.path().to_path_buf(),
    ] {
        match search(&d, &req(query)) {
            Err(IndexError::Query { position, message }) => {
                assert_eq!(
                    position, expected_position,
                    "position for {query:?} ({message})"
                );
                assert!(!message.is_empty());
            }
            other => panic!("query {query:?} should be rejected, got {other:?}"),
        }
    }
}

#[test]
fn malformed_queries_report_a_position() {
    assert_query_error("lunch \"at noon", 6);
    assert_query_error("(lunch OR report", 0);
    assert_query_error("lunch)", 5);
    assert_query_error("subject:lunch", 0);
    assert_query_error("lunch AND kind:im", 10);
    assert_query_error("lunch AND", 6);
    assert_query_error("OR", 0);
    assert_query_error("a AND OR b", 2);
    assert_query_error("\"", 0);
    assert_query_error("from:", 5);
    assert_query_error("lunch ) (", 6);
    assert_query_error("lunch -", 7);
    let err = search(Path::new("/nonexistent"), &req("subject:x")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid search query at position 0: unknown field 'subject' (fields: body, from, to, type, room, time)"
    );
}

#[test]
fn address_keys_forms() {
    assert_eq!(
        address_keys("sip:Alice@Example.com"),
        ["sip:alice@example.com", "alice@example.com", "alice"]
    );
    assert_eq!(
        address_keys("\"Erin\" <sips:erin@example.com:5061;transport=tls>"),
        [
            "sips:erin@example.com:5061",
            "erin@example.com:5061",
            "erin@example.com",
            "erin"
        ]
    );
    assert_eq!(
        address_keys("\"Jörg\" <sip:Jörg.Groß@Example.com>"),
        [
            "sip:jörg.groß@example.com",
            "jörg.groß@example.com",
            "jörg.groß"
        ]
    );
    assert_eq!(address_keys("alice"), ["alice"]);
    assert_eq!(
        address_keys("alice@example.com"),
        ["alice@example.com", "alice"]
    );
    assert_eq!(
        address_keys("tel:+15551234"),
        ["tel:+15551234", "+15551234"]
    );
    assert_eq!(
        address_keys("sip:[2001:db8::1]"),
        ["sip:[2001:db8::1]", "[2001:db8::1]"]
    );
    assert_eq!(
        address_keys("sip:bob@[2001:db8::1]:5060"),
        [
            "sip:bob@[2001:db8::1]:5060",
            "bob@[2001:db8::1]:5060",
            "bob@[2001:db8::1]",
            "bob"
        ]
    );
    assert!(address_keys("  ").is_empty());
}

#[test]
fn address_values_with_a_scheme_are_quoted() {
    assert_eq!(quote_address_values("from:sip:a@b x"), "from:\"sip:a@b\" x");
    assert_eq!(quote_address_values("(to:sip:a@b)"), "(to:\"sip:a@b\")");
    assert_eq!(quote_address_values("-from:sip:a@b"), "-from:\"sip:a@b\"");
    assert_eq!(quote_address_values("from:alice"), "from:alice");
    assert_eq!(quote_address_values("from:\"sip:a@b\""), "from:\"sip:a@b\"");
    assert_eq!(quote_address_values("xfrom:a:b"), "xfrom:a:b");
}

fn call(
    i: i64,
    call_id: &str,
    caller: &str,
    callee: &str,
    disposition: &str,
    code: u16,
) -> CallRow {
    CallRow {
        time_ns: t(i),
        call_id: call_id.to_string(),
        source: "local".to_string(),
        caller: caller.to_string(),
        callee: callee.to_string(),
        ring_ns: None,
        answer_ns: None,
        end_ns: None,
        setup_ms: None,
        duration_ms: None,
        disposition: disposition.to_string(),
        final_code: Some(code),
        reason: Some(if code == 486 { "Busy Here" } else { "OK" }.to_string()),
        ended_by: None,
        codecs: Vec::new(),
        caller_media: None,
        callee_media: None,
        legs: 1,
        reinvites: 0,
        transferred_from: None,
        caller_display: None,
        callee_display: None,
    }
}

fn presence(i: i64, call_id: &str, entity: &str, note: &str) -> PresenceRow {
    PresenceRow {
        time_ns: t(i),
        source: "local".to_string(),
        entity: entity.to_string(),
        basic: Some("open".to_string()),
        activities: vec!["meeting".to_string()],
        note: Some(note.to_string()),
        via: "PUBLISH".to_string(),
        call_id: call_id.to_string(),
        expires: None,
        etag: None,
        subscription_state: None,
    }
}

/// The IM fixture as `seg-1`, two calls as `seg-calls`, two presence changes as `seg-pres`.
fn mixed_index() -> (tempfile::TempDir, ImIndex) {
    let (dir, mut index) = fixture_index();
    let calls = [
        call(10, "k1", ALICE, BOB, "answered", 200),
        call(11, "k2", BOB, CAROL, "busy", 486),
    ];
    let docs: Vec<IndexDoc> = calls.iter().map(IndexDoc::from).collect();
    index.add_documents("seg-calls", &docs).unwrap();
    let pres = [
        presence(12, "p1", ALICE, "Budget review until 3"),
        presence(13, "p2", CAROL, "Out to lunch"),
    ];
    let docs: Vec<IndexDoc> = pres.iter().map(IndexDoc::from).collect();
    index.add_documents("seg-pres", &docs).unwrap();
    (dir, index)
}

#[test]
fn prefix_terms_match_every_word_they_start() {
    let (dir, _index) = mixed_index();
    let d = dir.path();
    // "quarterly" in c3 and c6; "questions" nowhere.
    assert_set(d, "quar*", &["c3", "c6"]);
    assert_set(d, "QUAR*", &["c3", "c6"]);
    // "report" (c3, c4) and "ready" (c3, c6).
    // "report" (c3, c4), "ready" (c3, c6), "review" (c3, presence p1).
    assert_set(d, "re*", &["c3", "c4", "c6", "p1"]);
    assert_set(d, "re* AND NOT rep*", &["c6", "p1"]);
    assert_set(d, "from:car*", &["c4", "p2"]);
    assert_set(d, "budg*", &["p1"]);
    assert_set(d, "zzz*", &[]);
}

#[test]
fn fuzzy_terms_allow_edits() {
    let (dir, _index) = mixed_index();
    let d = dir.path();
    // "lucnh" is one transposition from "lunch": c1, c2 and presence p2.
    assert_set(d, "lucnh~1", &["c1", "c2", "p2"]);
    assert_set(d, "lucnh", &[]);
    // `~` alone means one edit.
    assert_set(d, "lucnh~", &["c1", "c2", "p2"]);
    // "reprot" -> "report" is a transposition (1); "repott" needs 1 substitution.
    assert_set(d, "repott~1", &["c3", "c4"]);
    assert_set(d, "repxtt~1", &[]);
    assert_set(d, "repxtt~2", &["c3", "c4"]);
    assert_query_error("repxtt~3", 6);
}

#[test]
fn type_field_selects_the_kind_of_record() {
    let (dir, _index) = mixed_index();
    let d = dir.path();
    assert_set(d, "type:call", &["k1", "k2"]);
    assert_set(d, "type:presence", &["p1", "p2"]);
    assert_set(d, "type:im", &["c1", "c2", "c3", "c4", "c5", "c6"]);
    assert_set(d, "type:call AND busy", &["k2"]);
    assert_set(d, "type:call AND 486", &["k2"]);
    assert_set(d, "type:call AND to:carol", &["k2"]);
    assert_set(d, "lunch AND NOT type:im", &["p2"]);
    assert_set(d, "type:presence AND from:alice", &["p1"]);
    // No IM of the fixture is addressed to a room.
    assert_set(d, "type:chat", &[]);
    assert_set(d, "room:board", &[]);
    assert_set(d, "lunch OR room:board", &["c1", "c2", "p2"]);
    let err = search(d, &req("lunch type:fax")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid search query at position 6: unknown type 'fax' (types: im, call, presence, chat)"
    );
    // Hits say what they are.
    let hits = search_ok(d, &req("from:bob"));
    let kinds: Vec<(&str, DocType)> = hits
        .iter()
        .map(|h| (h.call_id.as_str(), h.doc_type))
        .collect();
    assert_eq!(kinds, [("c2", DocType::Im), ("k2", DocType::Call)]);
    let k2 = &hits[1];
    assert_eq!(k2.body, "busy 486 Busy Here");
    assert_eq!(k2.to, [CAROL]);
    // The request can restrict the kinds too (export takes only IMs).
    let only_ims = SearchRequest {
        types: vec![DocType::Im],
        ..req("lunch")
    };
    assert_eq!(id_set(&search_ok(d, &only_ims)), ["c1", "c2"]);
}

#[test]
fn pages_of_results_with_the_total() {
    let (dir, _index) = mixed_index();
    let d = dir.path();
    let page = |offset: usize, limit: usize| {
        search_page(
            d,
            &SearchRequest {
                offset,
                limit,
                ..req("*")
            },
        )
        .unwrap()
    };
    let all = page(0, 100);
    assert_eq!(all.total, Total::Exact(10));
    assert_eq!(
        ids(&all.hits),
        ["c1", "c2", "c3", "c4", "c5", "c6", "k1", "k2", "p1", "p2"]
    );
    let p = page(3, 4);
    assert_eq!(p.total, Total::Exact(10));
    assert_eq!(ids(&p.hits), ["c4", "c5", "c6", "k1"]);
    let last = page(8, 4);
    assert_eq!(ids(&last.hits), ["p1", "p2"]);
    let past = page(20, 4);
    assert_eq!(past.total, Total::Exact(10));
    assert!(past.hits.is_empty());
    // Paging by relevance pages through the same order as one long list.
    let rel = |offset: usize, limit: usize| {
        search(
            d,
            &SearchRequest {
                offset,
                limit,
                sort: SortOrder::Relevance,
                ..req("lunch OR report OR quarterly")
            },
        )
        .unwrap()
    };
    let long = rel(0, 100);
    assert_eq!(long.len(), 6);
    let mut paged = rel(0, 2);
    paged.extend(rel(2, 2));
    paged.extend(rel(4, 2));
    assert_eq!(ids(&paged), ids(&long));
}

#[test]
fn removed_segments_leave_the_index() {
    let (dir, mut index) = mixed_index();
    assert_eq!(
        index.segment_ids().unwrap(),
        ["seg-1", "seg-calls", "seg-pres"]
    );
    index.remove_segment("seg-calls").unwrap();
    assert_eq!(index.segment_ids().unwrap(), ["seg-1", "seg-pres"]);
    assert_set(dir.path(), "type:call", &[]);
    // Staged segments become visible at the commit.
    let docs = [IndexDoc::from(&call(20, "k9", ALICE, BOB, "busy", 486))];
    index.stage_documents("seg-calls-2", &docs).unwrap();
    assert_set(dir.path(), "type:call", &[]);
    index.commit().unwrap();
    assert_set(dir.path(), "type:call", &["k9"]);
}

#[test]
fn an_index_not_in_time_order_is_outdated_and_recreated() {
    let dir = tempfile::tempdir().unwrap();
    // This version's fields, but without the time order that searches rely on.
    let old = Index::create_in_dir(dir.path(), build_schema()).unwrap();
    drop(old);
    let err = search(dir.path(), &req("lunch")).unwrap_err();
    assert!(
        matches!(err, IndexError::OutdatedIndex(_)),
        "unexpected error: {err}"
    );
    let mut index = ImIndex::open_or_create(dir.path()).unwrap();
    index.add_segment("seg-1", &fixture()).unwrap();
    assert_set(dir.path(), "lunch", &["c1", "c2"]);
}

/// Rows `0..n` at times `t(i)` with call ids `m00000`...; every third body also
/// has "third".
fn many_rows(n: i64) -> Vec<ImMessageRow> {
    (0..n)
        .map(|i| {
            let body = if i % 3 == 0 {
                "status update third"
            } else {
                "status update"
            };
            row(i, &format!("m{i:05}"), ALICE, &[BOB], body)
        })
        .collect()
}

#[test]
fn time_order_holds_across_segments_added_out_of_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut index = ImIndex::open_or_create(dir.path()).unwrap();
    let rows = many_rows(300);
    // Newest first within each segment, and the segments interleave in time.
    let mut evens: Vec<_> = rows.iter().step_by(2).cloned().collect();
    let mut odds: Vec<_> = rows.iter().skip(1).step_by(2).cloned().collect();
    evens.reverse();
    odds.reverse();
    index.add_segment("odd", &odds).unwrap();
    index.add_segment("even", &evens).unwrap();
    let page = |query: &str, offset: usize, limit: usize, sort: SortOrder| {
        search_page(
            dir.path(),
            &SearchRequest {
                offset,
                limit,
                sort,
                ..req(query)
            },
        )
        .unwrap()
    };
    let first = page("update", 0, 5, SortOrder::Time);
    assert_eq!(
        ids(&first.hits),
        ["m00000", "m00001", "m00002", "m00003", "m00004"]
    );
    assert_eq!(first.total, Total::Exact(300));
    let later = page("third", 20, 3, SortOrder::Time);
    assert_eq!(ids(&later.hits), ["m00060", "m00063", "m00066"]);
    assert_eq!(later.total, Total::Exact(100));
    // Equal scores by relevance (the shorter bodies score higher): oldest
    // first, across both segments.
    let rel = page("update", 0, 4, SortOrder::Relevance);
    assert_eq!(ids(&rel.hits), ["m00001", "m00002", "m00004", "m00005"]);
    // Replaced documents are neither hits nor counted.
    index.add_segment("even", &evens[..10]).unwrap();
    let after = page("update", 0, 3, SortOrder::Time);
    assert_eq!(ids(&after.hits), ["m00001", "m00003", "m00005"]);
    assert_eq!(after.total, Total::Exact(160));
    let rel = page("update", 0, 2, SortOrder::Relevance);
    assert_eq!(ids(&rel.hits), ["m00001", "m00005"]);
    assert_eq!(rel.total, Total::Exact(160));
}

#[test]
fn a_segment_larger_than_one_writer_batch_is_indexed_whole_and_replaced_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut index = ImIndex::open_or_create(dir.path()).unwrap();
    let n = 2 * INDEX_BATCH_DOCS + 7;
    let rows = many_rows(n as i64);
    let total = |query: &str| {
        search_page(
            dir.path(),
            &SearchRequest {
                limit: 1,
                ..req(query)
            },
        )
        .unwrap()
        .total
    };
    index.add_segment("big", &rows).unwrap();
    assert_eq!(total("update"), Total::Exact(n));
    assert_eq!(index.segment_ids().unwrap(), ["big"]);
    // Added again, in batches again: the earlier documents of every batch
    // are gone, none of the new ones is.
    index.add_segment("big", &rows).unwrap();
    assert_eq!(total("update"), Total::Exact(n));
    index.add_segment("big", &rows[..5]).unwrap();
    assert_eq!(total("update"), Total::Exact(5));
}

#[test]
fn newer_segments_still_count_when_the_page_is_full() {
    let dir = tempfile::tempdir().unwrap();
    let mut index = ImIndex::open_or_create(dir.path()).unwrap();
    let rows = many_rows(40);
    // The newer half first, so the older half fills the page and the newer
    // segment is not searched for hits; its matches still count.
    index.add_segment("newer", &rows[20..]).unwrap();
    index.add_segment("older", &rows[..20]).unwrap();
    for query in ["update", "status update", "status AND third"] {
        let page = search_page(
            dir.path(),
            &SearchRequest {
                limit: 3,
                ..req(query)
            },
        )
        .unwrap();
        let expected = if query.contains("third") {
            ["m00000", "m00003", "m00006"]
        } else {
            ["m00000", "m00001", "m00002"]
        };
        assert_eq!(ids(&page.hits), expected, "{query}");
        let total = if query.contains("third") { 14 } else { 40 };
        assert_eq!(page.total, Total::Exact(total), "{query}");
    }
    // A page reaching into the newer segment.
    let deep = search_page(
        dir.path(),
        &SearchRequest {
            offset: 19,
            limit: 3,
            ..req("status update")
        },
    )
    .unwrap();
    assert_eq!(ids(&deep.hits), ["m00019", "m00020", "m00021"]);
}

#[test]
fn totals_past_the_count_limit_are_a_lower_bound() {
    let dir = tempfile::tempdir().unwrap();
    let mut index = ImIndex::open_or_create(dir.path()).unwrap();
    let n = TOTAL_COUNT_LIMIT as i64 + 500;
    index.add_segment("big", &many_rows(n)).unwrap();
    // Rows 0, 3, 6, ... have "third".
    let thirds = (n as usize).div_ceil(3);
    let d = dir.path();
    let page = |query: &str, sort: SortOrder| {
        search_page(
            d,
            &SearchRequest {
                limit: 2,
                sort,
                ..req(query)
            },
        )
        .unwrap()
    };
    for sort in [SortOrder::Time, SortOrder::Relevance] {
        // One word: the index knows its count without a scan, so it is exact.
        assert_eq!(page("update", sort).total, Total::Exact(n as usize));
        // Two words must be counted match by match: past the limit, a lower bound.
        let both = page("status update", sort);
        assert_eq!(both.total, Total::MoreThan(TOTAL_COUNT_LIMIT));
        assert_eq!(both.total.to_string(), "more than 10000");
        assert_eq!(both.hits.len(), 2);
        // Under the limit, counted exactly.
        let third = page("status AND third", sort);
        assert_eq!(third.total, Total::Exact(thirds));
        assert_eq!(third.total.to_string(), thirds.to_string());
    }
    assert_eq!(
        ids(&page("status update", SortOrder::Time).hits),
        ["m00000", "m00001"]
    );
    // Every match when asked for the count alone.
    assert_eq!(search_count(d, &req("status update")).unwrap(), n as usize);
    assert_eq!(search_count(d, &req("*")).unwrap(), n as usize);
    assert_eq!(search_count(d, &req("third")).unwrap(), thirds);
}

#[test]
fn an_index_of_an_older_layout_is_recreated_by_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let mut old = Schema::builder();
    old.add_text_field("kind", STRING);
    old.add_text_field("segment", STRING | STORED);
    Index::create_in_dir(dir.path(), old.build()).unwrap();
    let err = search(dir.path(), &req("lunch")).unwrap_err();
    assert!(
        matches!(err, IndexError::OutdatedIndex(_)),
        "unexpected error: {err}"
    );
    let mut index = ImIndex::open_or_create(dir.path()).unwrap();
    assert!(index.segment_ids().unwrap().is_empty());
    index.add_segment("seg-1", &fixture()).unwrap();
    assert_set(dir.path(), "lunch", &["c1", "c2"]);
}

#[test]
fn display_names_are_searched_with_the_addresses_and_kept_in_hits() {
    let dir = tempfile::tempdir().expect("create temp dir");
    let mut index = ImIndex::open_or_create(dir.path()).expect("create index");
    let named = ImMessageRow {
        from_display: Some("Alice Smith".to_string()),
        to_display: Some("Bob O'Neil".to_string()),
        ..row(0, "named", ALICE, &[BOB], "Minutes attached")
    };
    let unnamed = row(1, "unnamed", ALICE, &[BOB], "Smith called");
    index.add_segment("seg-ims", &[named, unnamed]).unwrap();
    let call = CallRow {
        caller_display: Some("Carol Smith-Jones".to_string()),
        callee_display: Some("Alice Smith".to_string()),
        ..call(2, "call", CAROL, ALICE, "answered", 200)
    };
    index
        .add_documents("seg-calls", &[IndexDoc::from(&call)])
        .unwrap();
    let d = dir.path();
    assert_set(d, "from:smith", &["call", "named"]);
    assert_set(d, "from:SMITH", &["call", "named"]);
    assert_set(d, "from:\"Alice Smith\"", &["named"]);
    assert_set(d, "from:\"smith alice\"", &[]);
    assert_set(d, "to:\"alice smith\"", &["call"]);
    assert_set(d, "to:neil", &["named"]);
    assert_set(d, "to:\"bob o neil\"", &["named"]);
    assert_set(d, "from:jones", &["call"]);
    assert_set(d, "from:smi*", &["call", "named"]);
    assert_set(d, "from:smoth~1", &["call", "named"]);
    assert_set(d, "from:alice", &["named", "unnamed"]);
    assert_set(d, "from:alice AND from:smith", &["named"]);
    assert_set(d, "from:sip:alice@example.com", &["named", "unnamed"]);
    // Bare words search the body, as for addresses.
    assert_set(d, "smith", &["unnamed"]);
    // The request's address filters take addresses, not names.
    let hits = search_ok(d, &filtered(Some("smith"), None));
    assert!(hits.is_empty(), "hits: {hits:?}");

    let hits = search_ok(d, &req("from:\"alice smith\""));
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].from, ALICE);
    assert_eq!(hits[0].from_name.as_deref(), Some("Alice Smith"));
    assert_eq!(hits[0].to, [BOB]);
    assert_eq!(hits[0].to_name.as_deref(), Some("Bob O'Neil"));
    let hits = search_ok(d, &req("body:called"));
    assert_eq!(hits.len(), 1);
    assert_eq!(
        (hits[0].from_name.as_deref(), hits[0].to_name.as_deref()),
        (None, None)
    );
    let json = serde_json::to_value(&hits[0]).unwrap();
    assert!(
        json.get("from_name").is_none() && json.get("to_name").is_none(),
        "no name, no key: {json}"
    );
}

/// RFC 3339 form of `t(i)`.
fn rfc3339(i: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(t(i)).to_rfc3339()
}

#[test]
fn time_ranges_in_the_query_string() {
    let (dir, _index) = mixed_index();
    let d = dir.path();
    let q = |lower: &str, upper: &str, open: char, close: char| {
        format!("time:{open}{lower} TO {upper}{close}")
    };
    // IMs are at t(0)..t(5), calls at t(10), t(11), presence at t(12), t(13).
    assert_set(
        d,
        &q(&rfc3339(2), &rfc3339(4), '[', ']'),
        &["c3", "c4", "c5"],
    );
    assert_set(d, &q(&rfc3339(2), &rfc3339(4), '{', '}'), &["c4"]);
    assert_set(d, &q(&rfc3339(11), "*", '[', ']'), &["k2", "p1", "p2"]);
    assert_set(
        d,
        &format!("lunch AND {}", q("*", &rfc3339(12), '[', '}')),
        &["c1", "c2"],
    );
    // Dates are midnight UTC: t(0) is 2023-11-14T22:13:20Z.
    assert_set(d, "time:[2023-11-15 TO *]", &[]);
    assert_eq!(
        search_ok(d, &req("time:[2023-11-14 TO 2023-11-15}")).len(),
        10
    );
    assert_query_error("lunch time:[2023-13-45 TO *]", 12);
    assert_query_error("time:yesterday", 0);
}

#[test]
fn room_and_type_chat_find_the_posts_to_chat_rooms() {
    let (dir, mut index) = mixed_index();
    let d = dir.path();
    let budget = "sip:room-budget@example.com";
    let rows = [
        row(20, "r1", ALICE, &[budget], "Budget draft is ready"),
        row(
            21,
            "r2",
            BOB,
            &["<sip:room-budget@example.com>"],
            "budget looks fine",
        ),
        row(
            22,
            "r3",
            BOB,
            &["sip:room-lunch@example.com"],
            "lunch budget anyone?",
        ),
        // The room's copy of r1 to bob: from the room, so not a post.
        row(23, "r4", budget, &[BOB], "Budget draft is ready"),
        // A user whose name merely contains the prefix elsewhere.
        row(
            24,
            "r5",
            ALICE,
            &["sip:bedroom-budget@example.com"],
            "budget",
        ),
    ];
    index.add_segment("seg-rooms", &rows).unwrap();
    assert_set(d, "room:budget", &["r1", "r2"]);
    assert_set(d, "room:BUDGET", &["r1", "r2"]);
    assert_set(d, "room:budget fine", &["r2"]);
    assert_set(d, "room:lunch budget", &["r3"]);
    assert_set(d, "room:board", &[]);
    assert_set(d, "type:chat", &["r1", "r2", "r3"]);
    assert_set(d, "type:chat AND from:bob", &["r2", "r3"]);
    // p1: a presence note about the budget.
    assert_set(d, "budget AND NOT type:chat", &["p1", "r4", "r5"]);
    assert_set(
        d,
        "lunch OR room:budget",
        &["c1", "c2", "p2", "r1", "r2", "r3"],
    );
}

#[test]
fn conference_finds_the_messages_written_to_a_conference_focus() {
    let (dir, mut index) = mixed_index();
    let d = dir.path();
    let focus = "sip:conf-1a2b3c@example.com";
    let rows = [
        row(30, "k1", ALICE, &[focus], "agenda for the offsite"),
        row(31, "k2", BOB, &[focus], "offsite agenda looks fine"),
        // The focus's copy of k1 to bob: from the focus, not a post.
        row(32, "k3", focus, &[BOB], "agenda for the offsite"),
        row(
            33,
            "k4",
            ALICE,
            &["sip:conf-ffff@example.com"],
            "other agenda",
        ),
    ];
    index.add_segment("seg-conferences", &rows).unwrap();
    assert_set(d, "conference:conf-1a2b3c", &["k1", "k2"]);
    assert_set(d, "conference:1A2B3C agenda", &["k1", "k2"]);
    assert_set(d, "conference:1a2b3c fine", &["k2"]);
    assert_set(d, "conference:ffff", &["k4"]);
    assert_set(d, "conference:nope", &[]);
}
