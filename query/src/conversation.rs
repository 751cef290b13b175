//! Conversations and timelines rebuilt from the archive.
//!
//! **A conversation** is found from one IM, named by its Call-ID or by the
//! key `callid#cseq` that `sipvault search` prints. Its participants are
//! that IM's sender and recipients (for a Call-ID, those of every IM with
//! it). The conversation holds:
//!
//! - every IM with the same Call-ID (session-mode chats, clients that reuse
//!   a Call-ID), and
//! - the page-mode IMs whose participants are exactly the same people, in
//!   either direction (alice → bob and bob → alice for a P2P conversation;
//!   the same group for a multiparty IM), that are no more than a *gap*
//!   ([`DEFAULT_GAP`] unless told otherwise) from the next or previous IM
//!   of the conversation. A longer silence starts another conversation.
//!
//! An ad hoc conference is one conversation: its Call-ID `conf-ID@DOMAIN`
//! (shared by every MESSAGE its focus sent) names the messages written to
//! the focus `sip:conf-ID@DOMAIN` and the copies the focus sent, whatever
//! the gaps between them.
//!
//! Each IM is shown with its delivery: `delivered_to` (the recipients, when
//! the IM was delivered) and `delivered_at` (the time of the earliest
//! archived copy of its 2xx final response in `sip_messages`, when one was
//! archived): who saw what, and when.
//!
//! **A timeline** is one user's IMs sent and received, presence changes,
//! calls placed and received, and room and conference membership events
//! (`room_events` where the user is the member) over a time range, merged
//! in time order with a `kind` column.
//!
//! Both are SQL in `query/conversations/`; values enter it only as literals
//! built here.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::datasource::MemTable;
use datafusion::execution::SendableRecordBatchStream;

use crate::reports::{render, sql_string, time_range_predicate, user_uri, utc_date};
use crate::{QueryError, QueryLimits, archive_context_with_limits, collect_stream, format_time_ns};

/// Silence that ends a conversation when no `--gap` is given.
pub const DEFAULT_GAP: Duration = Duration::from_secs(30 * 60);

/// How a conversation is named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConversationId {
    /// A Call-ID (`im_messages.call_id`).
    CallId(String),
    /// One IM: `callid#cseq`, as search prints it.
    Key { call_id: String, cseq: u32 },
}

impl ConversationId {
    /// `callid#cseq` is a key (a Call-ID has no `#` in SIP's grammar);
    /// anything else is a Call-ID.
    pub fn parse(id: &str) -> Result<Self, QueryError> {
        let id = id.trim();
        if id.is_empty() || id.chars().any(char::is_control) {
            return Err(QueryError::InvalidReport(format!(
                "invalid conversation id {id:?}: expected a Call-ID or a key callid#cseq"
            )));
        }
        if let Some((call_id, cseq)) = id.rsplit_once('#')
            && let Ok(cseq) = cseq.parse::<u32>()
            && !call_id.is_empty()
        {
            return Ok(ConversationId::Key {
                call_id: call_id.to_string(),
                cseq,
            });
        }
        Ok(ConversationId::CallId(id.to_string()))
    }

    pub fn call_id(&self) -> &str {
        match self {
            ConversationId::CallId(c) | ConversationId::Key { call_id: c, .. } => c,
        }
    }
}

impl std::fmt::Display for ConversationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConversationId::CallId(c) => f.write_str(c),
            ConversationId::Key { call_id, cseq } => write!(f, "{call_id}#{cseq}"),
        }
    }
}

/// One `sipvault conversation` run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationRequest {
    pub id: ConversationId,
    /// Silence that ends the conversation.
    pub gap: Duration,
}

impl ConversationRequest {
    pub fn new(id: ConversationId) -> Self {
        ConversationRequest {
            id,
            gap: DEFAULT_GAP,
        }
    }

    /// The request as command-line arguments, for the audit log.
    pub fn describe(&self) -> String {
        let mut out = self.id.to_string();
        if self.gap != DEFAULT_GAP {
            out.push_str(&format!(" --gap {}", crate::format_duration(self.gap)));
        }
        out
    }
}

/// Rebuilds a conversation: one row per IM, oldest first, with the columns
/// `time`, `key`, `sender`, `recipients`, `delivery_status`, `status`,
/// `delivered_to`, `delivered_at`, `body` (see the module docs).
///
/// An id that names no archived IM is [`QueryError::UnknownConversation`].
pub async fn conversation_stream(
    data_dir: &Path,
    req: &ConversationRequest,
    limits: &QueryLimits,
) -> Result<SendableRecordBatchStream, QueryError> {
    let ctx = archive_context_with_limits(data_dir, limits).await?;
    let call_id = sql_string(req.id.call_id());
    let focus = conference_focus(req.id.call_id())
        .map_or_else(|| "CAST(NULL AS VARCHAR)".to_string(), |f| sql_string(&f));

    // The IMs the id names, and their participants.
    let anchor_filter = match &req.id {
        ConversationId::CallId(_) => {
            format!("call_id = {call_id} OR coalesce(array_has(recipients, {focus}), false)")
        }
        ConversationId::Key { cseq, .. } => format!("call_id = {call_id} AND cseq = {cseq}"),
    };
    let anchors = ctx
        .sql(&format!(
            "SELECT sender, recipients FROM im_messages WHERE {anchor_filter}"
        ))
        .await?;
    let anchors = collect_stream(anchors.execute_stream().await?).await?;
    let participants = participants(&anchors);
    if participants.is_empty() {
        return Err(QueryError::UnknownConversation(req.id.to_string()));
    }

    // The conversation's IMs.
    let participant_list = participants
        .iter()
        .map(|p| sql_string(p))
        .collect::<Vec<_>>()
        .join(", ");
    let participant_key = sql_string(&participants.iter().cloned().collect::<Vec<_>>().join(" "));
    let gap_ns = i64::try_from(req.gap.as_nanos())
        .unwrap_or(i64::MAX)
        .to_string();
    let sql = render(
        include_str!("../conversations/conversation.sql"),
        |name| match name {
            "call_id" => Some(call_id.as_str()),
            "participant_list" => Some(participant_list.as_str()),
            "participant_key" => Some(participant_key.as_str()),
            "gap_ns" => Some(gap_ns.as_str()),
            "focus" => Some(focus.as_str()),
            _ => None,
        },
    )?;
    let ims = collect_stream(ctx.sql(&sql).await?.execute_stream().await?).await?;

    // Their delivery, from the days they span (a final response can come
    // after midnight: one day more).
    let (first, last) =
        time_span(&ims).ok_or_else(|| QueryError::UnknownConversation(req.id.to_string()))?;
    let in_days = format!(
        "date >= '{}' AND date <= '{}'",
        utc_date(first),
        utc_date(last.saturating_add(86_400_000_000_000))
    );
    let schema = ims[0].schema();
    ctx.register_table(
        "conversation",
        Arc::new(MemTable::try_new(schema, vec![ims])?),
    )?;
    let sql = render(include_str!("../conversations/delivery.sql"), |name| {
        (name == "in_days").then_some(in_days.as_str())
    })?;
    Ok(ctx.sql(&sql).await?.execute_stream().await?)
}

/// The focus URI of a conference whose Call-ID is `call_id`: the server
/// names a conference's MESSAGEs `conf-ID@DOMAIN` after its focus
/// `sip:conf-ID@DOMAIN`.
fn conference_focus(call_id: &str) -> Option<String> {
    let (user, host) = call_id.split_once('@')?;
    (user.len() > CONFERENCE_PREFIX.len()
        && user.starts_with(CONFERENCE_PREFIX)
        && !host.is_empty())
    .then(|| format!("sip:{call_id}"))
}

/// Start of a conference focus's user part (and of its Call-ID).
const CONFERENCE_PREFIX: &str = "conf-";

/// Sender and recipients of every row, sorted and without repeats.
fn participants(batches: &[RecordBatch]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for batch in batches {
        let senders = batch.column(0).as_string::<i32>();
        let recipients = batch.column(1).as_list::<i32>();
        for row in 0..batch.num_rows() {
            out.insert(senders.value(row).to_string());
            let list = recipients.value(row);
            let list = list.as_string::<i32>();
            out.extend(
                (0..list.len())
                    .filter(|&i| list.is_valid(i))
                    .map(|i| list.value(i).to_string()),
            );
        }
    }
    out
}

/// Earliest and latest `time` (the first column) over the batches.
fn time_span(batches: &[RecordBatch]) -> Option<(i64, i64)> {
    use datafusion::arrow::datatypes::TimestampNanosecondType;
    batches
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_primitive::<TimestampNanosecondType>()
                .values()
                .to_vec()
        })
        .fold(None, |span, t| match span {
            None => Some((t, t)),
            Some((lo, hi)) => Some((lo.min(t), hi.max(t))),
        })
}

/// One `sipvault timeline` run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineRequest {
    /// A SIP URI, or `user@domain`.
    pub user: String,
    /// Inclusive start, ns since the Unix epoch.
    pub since_ns: i64,
    /// Exclusive end; `None` up to the newest record.
    pub until_ns: Option<i64>,
}

impl TimelineRequest {
    /// The request as command-line arguments, for the audit log.
    pub fn describe(&self) -> String {
        let mut out = format!("{} --since {}", self.user, format_time_ns(self.since_ns));
        if let Some(t) = self.until_ns {
            out.push_str(&format!(" --until {}", format_time_ns(t)));
        }
        out
    }
}

/// The SQL a timeline runs, placeholders filled in.
pub fn timeline_sql(req: &TimelineRequest) -> Result<String, QueryError> {
    if let Some(until) = req.until_ns
        && req.since_ns >= until
    {
        return Err(QueryError::InvalidReport(
            "--since must be before --until".to_string(),
        ));
    }
    let user = sql_string(&user_uri(&req.user)?);
    let in_range = time_range_predicate(Some(req.since_ns), req.until_ns);
    render(
        include_str!("../conversations/timeline.sql"),
        |name| match name {
            "in_range" => Some(in_range.as_str()),
            "user" => Some(user.as_str()),
            _ => None,
        },
    )
}

/// A user's timeline: columns `time`, `kind` (`im-sent`, `im-received`,
/// `presence`, `call-placed`, `call-received`, `room-event`,
/// `conference-event`), `party` (the other side: recipients, sender,
/// callee or caller; the room or focus), `status` (delivery status, basic
/// presence status, call disposition or membership event), `code` (final
/// SIP code), `detail` (IM body; activities and note; talk time or reason;
/// role and who made the change) and `id` (IM key, Call-ID or catalog
/// event id), oldest first.
pub async fn timeline_stream(
    data_dir: &Path,
    req: &TimelineRequest,
    limits: &QueryLimits,
) -> Result<SendableRecordBatchStream, QueryError> {
    let sql = timeline_sql(req)?;
    let ctx = archive_context_with_limits(data_dir, limits).await?;
    Ok(ctx.sql(&sql).await?.execute_stream().await?)
}

/// The posts of a chat room: `sipvault room history`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomHistoryRequest {
    /// The room's SIP URI, `sip:room-NAME@DOMAIN`.
    pub room_uri: String,
    /// Inclusive start, ns since the Unix epoch.
    pub since_ns: Option<i64>,
    /// Only the newest this many posts.
    pub last: Option<usize>,
}

/// A post is an IM addressed to the room that the server accepted (2xx):
/// refused attempts (403, 503) stay in the archive but are not posts, nor
/// are `/history` commands (answered, never passed on). The newest
/// `{limit}` are taken, then shown oldest first.
const ROOM_HISTORY_SQL: &str = "\
SELECT time, sender, body, key FROM (
    SELECT
        time,
        sender,
        body,
        call_id || '#' || CAST(cseq AS VARCHAR) AS key,
        call_id,
        cseq
    FROM im_messages
    WHERE {in_range} AND array_has(recipients, {room}) AND status BETWEEN 200 AND 299
        AND NOT starts_with(body, {command})
    ORDER BY time DESC, call_id DESC, cseq DESC
    {limit}
) ORDER BY time, call_id, cseq";

impl RoomHistoryRequest {
    /// The request as command-line arguments, for the audit log.
    pub fn describe(&self) -> String {
        let mut out = self.room_uri.clone();
        if let Some(n) = self.last {
            out.push_str(&format!(" --last {n}"));
        }
        if let Some(t) = self.since_ns {
            out.push_str(&format!(" --since {}", format_time_ns(t)));
        }
        out
    }
}

/// The SQL of a room history, placeholders filled in.
pub fn room_history_sql(req: &RoomHistoryRequest) -> Result<String, QueryError> {
    let room = sql_string(&user_uri(&req.room_uri)?);
    let in_range = time_range_predicate(req.since_ns, None);
    let limit = req.last.map(|n| format!("LIMIT {n}")).unwrap_or_default();
    let command = sql_string(sipvault_catalog::ROOM_HISTORY_COMMAND);
    render(ROOM_HISTORY_SQL, |name| match name {
        "in_range" => Some(in_range.as_str()),
        "room" => Some(room.as_str()),
        "command" => Some(command.as_str()),
        "limit" => Some(limit.as_str()),
        _ => None,
    })
}

/// A room's posts, oldest first: columns `time`, `sender`, `body` and
/// `key` (the IM key that `conversation` and `search` use).
pub async fn room_history_stream(
    data_dir: &Path,
    req: &RoomHistoryRequest,
    limits: &QueryLimits,
) -> Result<SendableRecordBatchStream, QueryError> {
    let sql = room_history_sql(req)?;
    let ctx = archive_context_with_limits(data_dir, limits).await?;
    Ok(ctx.sql(&sql).await?.execute_stream().await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_history_sql_has_literals_only() {
        let req = RoomHistoryRequest {
            room_uri: "sip:room-o'brien@example.com".into(),
            since_ns: Some(1_700_000_000_000_000_000),
            last: Some(20),
        };
        let sql = room_history_sql(&req).unwrap();
        assert!(!sql.contains('{'), "{sql}");
        assert!(sql.contains("'sip:room-o''brien@example.com'"), "{sql}");
        assert!(sql.contains("date >= '2023-11-14'"), "{sql}");
        assert!(sql.contains("LIMIT 20"), "{sql}");
        assert!(
            sql.contains("NOT starts_with(body, '/history')"),
            "commands are no posts: {sql}"
        );
        assert_eq!(
            req.describe(),
            "sip:room-o'brien@example.com --last 20 --since 2023-11-14T22:13:20.000Z"
        );
        let all = room_history_sql(&RoomHistoryRequest {
            since_ns: None,
            last: None,
            ..req
        })
        .unwrap();
        assert!(!all.contains("LIMIT") && all.contains("TRUE"), "{all}");
    }

    #[test]
    fn ids_parse_as_keys_or_call_ids() {
        assert_eq!(
            ConversationId::parse("abc@host#12").unwrap(),
            ConversationId::Key {
                call_id: "abc@host".into(),
                cseq: 12
            }
        );
        assert_eq!(
            ConversationId::parse(" abc@host ").unwrap(),
            ConversationId::CallId("abc@host".into())
        );
        // Not a number after '#': the whole text is the Call-ID.
        assert_eq!(
            ConversationId::parse("a#b").unwrap(),
            ConversationId::CallId("a#b".into())
        );
        assert!(ConversationId::parse("").is_err());
        assert!(ConversationId::parse("a\nb").is_err());
        assert_eq!(ConversationId::parse("x#7").unwrap().to_string(), "x#7");
    }

    #[test]
    fn timeline_sql_has_literals_only() {
        let req = TimelineRequest {
            user: "o'brien@example.com".into(),
            since_ns: 1_700_000_000_000_000_000,
            until_ns: Some(1_700_086_400_000_000_000),
        };
        let sql = timeline_sql(&req).unwrap();
        assert!(!sql.contains('{'), "{sql}");
        assert!(sql.contains("'sip:o''brien@example.com'"), "{sql}");
        assert!(sql.contains("date >= '2023-11-14'"), "{sql}");
        let backwards = TimelineRequest {
            until_ns: Some(req.since_ns),
            ..req
        };
        assert!(matches!(
            timeline_sql(&backwards),
            Err(QueryError::InvalidReport(_))
        ));
    }

    #[test]
    fn requests_describe_themselves_for_the_audit_log() {
        let mut req = ConversationRequest::new(ConversationId::parse("c1#2").unwrap());
        assert_eq!(req.describe(), "c1#2");
        req.gap = Duration::from_secs(600);
        assert_eq!(req.describe(), "c1#2 --gap 600s");
        let t = TimelineRequest {
            user: "alice@example.com".into(),
            since_ns: 0,
            until_ns: None,
        };
        assert_eq!(
            t.describe(),
            "alice@example.com --since 1970-01-01T00:00:00.000Z"
        );
    }
}
