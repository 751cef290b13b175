//! `sipvault conversation` and `sipvault timeline`: arguments, and rows
//! written to stdout as they arrive. The queries are in
//! `sipvault_query::conversation`.

use std::path::Path;
use std::time::Duration;

use clap::Args;
use sipvault_query::conversation::{
    ConversationId, ConversationRequest, TimelineRequest, conversation_stream, timeline_stream,
};
use sipvault_query::{OutputFormat, QueryError};

use crate::LimitArgs;
use crate::queries::{bounded, write_to_stdout};

#[derive(Args)]
pub struct ConversationArgs {
    /// A Call-ID of an IM (im_messages.call_id), or the key callid#cseq that
    /// `search` prints.
    id: String,
    /// Silence that ends a page-mode conversation: seconds or with a unit
    /// (90s, 10m, 2h) [default: 30m].
    #[arg(long, value_parser = sipvault_query::parse_duration)]
    gap: Option<Duration>,
    #[arg(long, default_value = "table")]
    format: OutputFormat,
    #[command(flatten)]
    limits: LimitArgs,
}

impl ConversationArgs {
    /// What the audit log records, even when the id does not parse.
    pub fn describe(&self) -> String {
        match self.request() {
            Ok(req) => req.describe(),
            Err(_) => self.id.clone(),
        }
    }

    pub fn request(&self) -> Result<ConversationRequest, QueryError> {
        let mut req = ConversationRequest::new(ConversationId::parse(&self.id)?);
        if let Some(gap) = self.gap {
            req.gap = gap;
        }
        Ok(req)
    }
}

#[derive(Args)]
pub struct TimelineArgs {
    /// Whose timeline: sip:alice@example.com or alice@example.com.
    user: String,
    /// Start time: RFC 3339, YYYY-MM-DD, 'YYYY-MM-DD HH:MM', or relative (15m, 2h, 7d).
    #[arg(long)]
    since: String,
    /// End time (exclusive), same forms as --since [default: no end].
    #[arg(long)]
    until: Option<String>,
    #[arg(long, default_value = "table")]
    format: OutputFormat,
    #[command(flatten)]
    limits: LimitArgs,
}

impl TimelineArgs {
    pub fn request(&self, now_ns: i64) -> Result<TimelineRequest, QueryError> {
        Ok(TimelineRequest {
            user: self.user.clone(),
            since_ns: sipvault_query::parse_time(&self.since, now_ns)?,
            until_ns: self
                .until
                .as_deref()
                .map(|u| sipvault_query::parse_time(u, now_ns))
                .transpose()?,
        })
    }
}

/// Prints one conversation; returns the number of IMs.
pub async fn conversation(data: &Path, args: &ConversationArgs) -> Result<u64, QueryError> {
    let req = args.request()?;
    let limits = args.limits.limits();
    let (data, format) = (data.to_path_buf(), args.format);
    bounded(limits, async move {
        let stream = conversation_stream(&data, &req, &limits).await?;
        write_to_stdout(stream, format).await
    })
    .await
}

/// Prints one timeline; returns the number of rows.
pub async fn timeline(
    data: &Path,
    req: &TimelineRequest,
    args: &TimelineArgs,
) -> Result<u64, QueryError> {
    let limits = args.limits.limits();
    let (data, req, format) = (data.to_path_buf(), req.clone(), args.format);
    bounded(limits, async move {
        let stream = timeline_stream(&data, &req, &limits).await?;
        write_to_stdout(stream, format).await
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use sipvault_query::QueryLimits;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        conversation: ConversationArgs,
    }

    #[test]
    fn flags_become_the_request() {
        let cli = Cli::parse_from(["x", "c1#3", "--gap", "10m", "--timeout", "5"]);
        let req = cli.conversation.request().unwrap();
        assert_eq!(req.gap, Duration::from_secs(600));
        assert_eq!(req.describe(), "c1#3 --gap 600s");
        let limits: QueryLimits = cli.conversation.limits.limits();
        assert_eq!(limits.timeout, Some(Duration::from_secs(5)));
    }
}
