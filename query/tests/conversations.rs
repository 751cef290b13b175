//! `conversation` and `timeline` over a small hand-written archive
//! (`fixture::generate_conversation_fixture`), compared with reviewed
//! insta snapshots in `tests/snapshots/`.

use std::path::Path;
use std::time::Duration;

use sipvault_query::conversation::{
    ConversationId, ConversationRequest, TimelineRequest, conversation_stream, timeline_stream,
};
use sipvault_query::fixture::generate_conversation_fixture;
use sipvault_query::{OutputFormat, QueryError, QueryLimits, parse_time, write_stream};

fn archive() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    generate_conversation_fixture(dir.path()).expect("write the fixture");
    dir
}

async fn conversation(
    data: &Path,
    id: &str,
    gap: Option<Duration>,
    format: OutputFormat,
) -> Result<String, QueryError> {
    let mut req = ConversationRequest::new(ConversationId::parse(id)?);
    if let Some(gap) = gap {
        req.gap = gap;
    }
    let stream = conversation_stream(data, &req, &QueryLimits::default()).await?;
    let mut out = Vec::new();
    write_stream(stream, format, &mut out).await?;
    Ok(String::from_utf8(out).expect("UTF-8 output"))
}

async fn timeline(
    data: &Path,
    user: &str,
    since: &str,
    until: Option<&str>,
    format: OutputFormat,
) -> String {
    let req = TimelineRequest {
        user: user.to_string(),
        since_ns: parse_time(since, 0).unwrap(),
        until_ns: until.map(|u| parse_time(u, 0).unwrap()),
    };
    let stream = timeline_stream(data, &req, &QueryLimits::default())
        .await
        .expect("timeline runs");
    let mut out = Vec::new();
    write_stream(stream, format, &mut out)
        .await
        .expect("timeline output");
    String::from_utf8(out).expect("UTF-8 output")
}

/// alice and bob, 09:00-09:04: both directions, one Call-ID per IM; the
/// 09:30 group IM (carol too), dave's IM to carol and the 14:00 IM (after
/// more than 30 minutes of silence) are not part of it.
#[tokio::test]
async fn p2p_conversation_by_call_id() {
    let dir = archive();
    let out = conversation(dir.path(), "conv-2", None, OutputFormat::Table)
        .await
        .unwrap();
    insta::assert_snapshot!("p2p_table", out);
}

/// A key names the same conversation as its Call-ID.
#[tokio::test]
async fn key_and_call_id_give_the_same_conversation() {
    let dir = archive();
    let by_key = conversation(dir.path(), "conv-3#1", None, OutputFormat::Json)
        .await
        .unwrap();
    let by_call_id = conversation(dir.path(), "conv-1", None, OutputFormat::Json)
        .await
        .unwrap();
    assert_eq!(by_key, by_call_id);
    insta::assert_snapshot!("p2p_json", by_key);
}

/// A longer gap joins the 14:00 IM, but not bob's IM at midnight.
#[tokio::test]
async fn gap_decides_where_a_conversation_ends() {
    let dir = archive();
    let out = conversation(
        dir.path(),
        "conv-1",
        Some(Duration::from_secs(6 * 3600)),
        OutputFormat::Csv,
    )
    .await
    .unwrap();
    insta::assert_snapshot!("p2p_gap_6h_csv", out);
}

/// The IM to bob and carol together is a conversation of its own.
#[tokio::test]
async fn multiparty_conversation() {
    let dir = archive();
    let out = conversation(dir.path(), "group-1#1", None, OutputFormat::Json)
        .await
        .unwrap();
    insta::assert_snapshot!("multiparty_json", out);
}

/// Session mode: three IMs under one Call-ID, either direction, the last
/// one never answered.
#[tokio::test]
async fn session_mode_conversation_shares_a_call_id() {
    let dir = archive();
    let out = conversation(dir.path(), "sess-9#2", None, OutputFormat::Table)
        .await
        .unwrap();
    insta::assert_snapshot!("session_table", out);
}

/// The 2xx to bob's IM at 23:59:59.9 is archived under the next day.
#[tokio::test]
async fn delivery_after_midnight_is_found() {
    let dir = archive();
    let out = conversation(dir.path(), "conv-8", None, OutputFormat::Csv)
        .await
        .unwrap();
    insta::assert_snapshot!("midnight_csv", out);
}

#[tokio::test]
async fn unknown_ids_are_an_error() {
    let dir = archive();
    for id in ["no-such-call", "conv-1#2"] {
        match conversation(dir.path(), id, None, OutputFormat::Table).await {
            Err(QueryError::UnknownConversation(named)) => assert_eq!(named, id),
            other => panic!("{id}: expected UnknownConversation, got {other:?}"),
        }
    }
    // An archive without IMs at all.
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        conversation(empty.path(), "conv-1", None, OutputFormat::Table).await,
        Err(QueryError::UnknownConversation(_))
    ));
}

/// alice's Monday: IMs both ways, presence changes (the state notified to
/// bob right after she published it appears once), calls both ways; bob's
/// presence, dave's IM to carol and Tuesday are left out.
#[tokio::test]
async fn timeline_of_a_day() {
    let dir = archive();
    let out = timeline(
        dir.path(),
        "alice@example.com",
        "2026-11-02",
        Some("2026-11-03"),
        OutputFormat::Table,
    )
    .await;
    insta::assert_snapshot!("timeline_alice_table", out);
}

#[tokio::test]
async fn timeline_range_bounds_every_kind() {
    let dir = archive();
    let out = timeline(
        dir.path(),
        "sip:alice@example.com",
        "2026-11-02 09:05",
        Some("2026-11-02 11:00"),
        OutputFormat::Json,
    )
    .await;
    insta::assert_snapshot!("timeline_alice_morning_json", out);
    // No end: Tuesday's IM and call come too.
    let all = timeline(
        dir.path(),
        "sip:bob@example.com",
        "2026-11-02",
        None,
        OutputFormat::Csv,
    )
    .await;
    insta::assert_snapshot!("timeline_bob_csv", all);
}
