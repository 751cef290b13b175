//! Operator and compliance reports over the archive.
//!
//! Each report is one SQL file in `query/reports/`, with placeholders that a
//! [`ReportRequest`] fills in: `{in_range}` (the time range, with the `date`
//! partition bounds so DataFusion reads only the days it needs), `{user}` (a
//! string literal, or NULL for everyone), and per report `{group}` (what rows
//! are grouped by) with `{group_label}` (the same value as the report prints
//! it) and `{group_name}`, `{period}` with `{period_label}`, or `{top}`.
//! Reports read the archive with `date` as a DATE and text as `Utf8View`
//! ([`ColumnTypes::Reports`]). Values only ever enter the SQL as
//! literals built here, never as text the user typed.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use datafusion::execution::SendableRecordBatchStream;

use crate::{ColumnTypes, QueryError, QueryLimits, archive_context_with_types};

/// The reports `sipvault report NAME` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    Cdr,
    CallSummary,
    UserActivity,
    TopTalkers,
    ImVolume,
    FailedCalls,
}

/// How a report groups its rows (`--by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    Hour,
    Day,
    User,
}

/// Number of users `top-talkers` lists unless told otherwise.
pub const DEFAULT_TOP: usize = 10;

impl Report {
    pub const ALL: [Report; 6] = [
        Report::Cdr,
        Report::CallSummary,
        Report::UserActivity,
        Report::TopTalkers,
        Report::ImVolume,
        Report::FailedCalls,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Report::Cdr => "cdr",
            Report::CallSummary => "call-summary",
            Report::UserActivity => "user-activity",
            Report::TopTalkers => "top-talkers",
            Report::ImVolume => "im-volume",
            Report::FailedCalls => "failed-calls",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Report::Cdr => "every call: parties, disposition, final code, setup time, duration",
            Report::CallSummary => {
                "calls, answered, answer-seizure ratio, average setup time and duration (--by day|user)"
            }
            Report::UserActivity => "IMs sent and received, calls placed and received, per user",
            Report::TopTalkers => "users with the most time on answered calls (--top N)",
            Report::ImVolume => "IMs per hour or day by delivery outcome (--by hour|day)",
            Report::FailedCalls => "unanswered calls by final SIP code and reason",
        }
    }

    /// The groupings `--by` accepts for this report, the default first.
    pub fn groupings(self) -> &'static [Grouping] {
        match self {
            Report::CallSummary => &[Grouping::Day, Grouping::User],
            Report::ImVolume => &[Grouping::Hour, Grouping::Day],
            _ => &[],
        }
    }

    fn sql_template(self) -> &'static str {
        match self {
            Report::Cdr => include_str!("../reports/cdr.sql"),
            Report::CallSummary => include_str!("../reports/call_summary.sql"),
            Report::UserActivity => include_str!("../reports/user_activity.sql"),
            Report::TopTalkers => include_str!("../reports/top_talkers.sql"),
            Report::ImVolume => include_str!("../reports/im_volume.sql"),
            Report::FailedCalls => include_str!("../reports/failed_calls.sql"),
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Report {
    type Err = QueryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Report::ALL
            .into_iter()
            .find(|r| r.name() == s.trim())
            .ok_or_else(|| {
                let names: Vec<&str> = Report::ALL.iter().map(|r| r.name()).collect();
                QueryError::InvalidReport(format!(
                    "unknown report '{s}' (expected one of: {})",
                    names.join(", ")
                ))
            })
    }
}

impl Grouping {
    pub fn name(self) -> &'static str {
        match self {
            Grouping::Hour => "hour",
            Grouping::Day => "day",
            Grouping::User => "user",
        }
    }
}

impl FromStr for Grouping {
    type Err = QueryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "hour" => Ok(Grouping::Hour),
            "day" => Ok(Grouping::Day),
            "user" => Ok(Grouping::User),
            _ => Err(QueryError::InvalidReport(format!(
                "unknown grouping '{s}' (expected hour, day or user)"
            ))),
        }
    }
}

/// One report run: which report, over which time range, for whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRequest {
    pub report: Report,
    /// Inclusive start, ns since the Unix epoch; `None` from the beginning.
    pub since_ns: Option<i64>,
    /// Exclusive end; `None` up to the newest record.
    pub until_ns: Option<i64>,
    /// Only records this user took part in: a SIP URI, or `user@domain`.
    pub user: Option<String>,
    /// `--by`; `None` takes the report's default.
    pub by: Option<Grouping>,
    /// `top-talkers` only: how many users.
    pub top: Option<usize>,
}

impl ReportRequest {
    pub fn new(report: Report) -> Self {
        ReportRequest {
            report,
            since_ns: None,
            until_ns: None,
            user: None,
            by: None,
            top: None,
        }
    }

    /// The request as command-line arguments, for the audit log.
    pub fn describe(&self) -> String {
        let mut out = self.report.name().to_string();
        if let Some(t) = self.since_ns {
            out.push_str(&format!(" --since {}", crate::format_time_ns(t)));
        }
        if let Some(t) = self.until_ns {
            out.push_str(&format!(" --until {}", crate::format_time_ns(t)));
        }
        if let Some(u) = &self.user {
            out.push_str(&format!(" --user {u}"));
        }
        if let Some(by) = self.by {
            out.push_str(&format!(" --by {}", by.name()));
        }
        if let Some(top) = self.top {
            out.push_str(&format!(" --top {top}"));
        }
        out
    }
}

/// The SQL a request runs, placeholders filled in.
pub fn report_sql(req: &ReportRequest) -> Result<String, QueryError> {
    let report = req.report;
    let groupings = report.groupings();
    let grouping = match req.by {
        None => groupings.first().copied(),
        Some(by) if groupings.contains(&by) => Some(by),
        Some(by) => {
            let accepted: Vec<&str> = groupings.iter().map(|g| g.name()).collect();
            return Err(QueryError::InvalidReport(if accepted.is_empty() {
                format!("report {report} has no --by option")
            } else {
                format!(
                    "report {report} groups by {}, not {}",
                    accepted.join(" or "),
                    by.name()
                )
            }));
        }
    };
    if req.top.is_some() && report != Report::TopTalkers {
        return Err(QueryError::InvalidReport(format!(
            "--top applies to top-talkers, not {report}"
        )));
    }
    if let (Some(since), Some(until)) = (req.since_ns, req.until_ns)
        && since >= until
    {
        return Err(QueryError::InvalidReport(
            "--since must be before --until".to_string(),
        ));
    }
    let user = match &req.user {
        None => "CAST(NULL AS VARCHAR)".to_string(),
        Some(u) => sql_string(&user_uri(u)?),
    };
    // Reports see `date` as a DATE (see `ColumnTypes::Reports`): grouped as
    // one, printed as its YYYY-MM-DD text.
    let (group, group_label, group_name) = match grouping {
        Some(Grouping::User) => ("caller", "caller", "\"user\""),
        Some(Grouping::Hour) => (
            "date_trunc('hour', time)",
            "date_trunc('hour', time)",
            "hour",
        ),
        _ => ("date", "CAST(date AS VARCHAR)", "day"),
    };
    let top = req.top.unwrap_or(DEFAULT_TOP).to_string();
    let in_range = time_range_predicate(req.since_ns, req.until_ns);
    render(report.sql_template(), |name| match name {
        "in_range" => Some(in_range.as_str()),
        "user" => Some(user.as_str()),
        "group" | "period" => Some(group),
        "group_label" | "period_label" => Some(group_label),
        "group_name" => Some(group_name),
        "top" => Some(top.as_str()),
        _ => None,
    })
}

/// Runs a report over the archive in `data_dir`; rows arrive as a stream.
pub async fn report_stream(
    data_dir: &Path,
    req: &ReportRequest,
    limits: &QueryLimits,
) -> Result<SendableRecordBatchStream, QueryError> {
    let sql = report_sql(req)?;
    let ctx = archive_context_with_types(data_dir, limits, ColumnTypes::Reports).await?;
    let df = ctx.sql(&sql).await?;
    Ok(df.execute_stream().await?)
}

/// A user as stored in the archive: a URI with its scheme (`alice@example.com`
/// becomes `sip:alice@example.com`).
pub(crate) fn user_uri(user: &str) -> Result<String, QueryError> {
    let user = user.trim();
    if user.is_empty() || user.chars().any(|c| c.is_control() || c == '\\') {
        return Err(QueryError::InvalidReport(format!(
            "invalid user {user:?}: expected a SIP URI such as sip:alice@example.com"
        )));
    }
    Ok(if user.contains(':') {
        user.to_string()
    } else {
        format!("sip:{user}")
    })
}

/// A SQL string literal.
pub(crate) fn sql_string(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// `time` within [since, until), plus the same bounds on the `date` partition
/// column so whole days outside the range are never opened.
pub(crate) fn time_range_predicate(since_ns: Option<i64>, until_ns: Option<i64>) -> String {
    let mut terms = Vec::new();
    if let Some(since) = since_ns {
        terms.push(format!("date >= '{}'", utc_date(since)));
        terms.push(format!("time >= to_timestamp_nanos({since})"));
    }
    if let Some(until) = until_ns {
        terms.push(format!("date <= '{}'", utc_date(until.saturating_sub(1))));
        terms.push(format!("time < to_timestamp_nanos({until})"));
    }
    if terms.is_empty() {
        "TRUE".to_string()
    } else {
        format!("({})", terms.join(" AND "))
    }
}

pub(crate) fn utc_date(time_ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(time_ns)
        .format("%Y-%m-%d")
        .to_string()
}

/// Replaces each `{name}` in `template` once, left to right, so a value that
/// itself contains braces is never expanded again.
pub(crate) fn render<'a>(
    template: &str,
    value: impl Fn(&str) -> Option<&'a str>,
) -> Result<String, QueryError> {
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or_else(|| {
            QueryError::InvalidReport("report template has an unclosed '{'".to_string())
        })?;
        let name = &after[..close];
        let v = value(name).ok_or_else(|| {
            QueryError::InvalidReport(format!("report template names unknown value {{{name}}}"))
        })?;
        out.push_str(v);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_report_renders_without_leftover_placeholders() {
        for report in Report::ALL {
            let mut req = ReportRequest::new(report);
            req.since_ns = Some(1_700_000_000_000_000_000);
            req.until_ns = Some(1_700_086_400_000_000_000);
            req.user = Some("o'brien@example.com".into());
            let sql = report_sql(&req).unwrap();
            assert!(!sql.contains('{'), "{report}: {sql}");
            if report != Report::FailedCalls && report != Report::Cdr {
                continue;
            }
            assert!(sql.contains("'sip:o''brien@example.com'"), "{sql}");
            assert!(
                sql.contains("date >= '2023-11-14'") && sql.contains("date <= '2023-11-15'"),
                "{sql}"
            );
        }
    }

    #[test]
    fn range_end_is_exclusive_for_the_partition_bound() {
        let midnight = 1_700_006_400_000_000_000; // 2023-11-15T00:00:00Z
        let p = time_range_predicate(None, Some(midnight));
        assert!(p.contains("date <= '2023-11-14'"), "{p}");
        assert_eq!(time_range_predicate(None, None), "TRUE");
    }

    #[test]
    fn options_a_report_does_not_take_are_refused() {
        let mut req = ReportRequest::new(Report::Cdr);
        req.by = Some(Grouping::Day);
        assert!(
            report_sql(&req)
                .unwrap_err()
                .to_string()
                .contains("no --by")
        );
        let mut req = ReportRequest::new(Report::ImVolume);
        req.by = Some(Grouping::User);
        let err = report_sql(&req).unwrap_err().to_string();
        assert!(err.contains("hour or day"), "{err}");
        let mut req = ReportRequest::new(Report::Cdr);
        req.top = Some(3);
        assert!(report_sql(&req).is_err());
        let mut req = ReportRequest::new(Report::Cdr);
        req.since_ns = Some(2);
        req.until_ns = Some(1);
        assert!(report_sql(&req).is_err());
        let mut req = ReportRequest::new(Report::Cdr);
        req.user = Some("alice\\@x".into());
        assert!(report_sql(&req).is_err());
    }

    #[test]
    fn values_are_not_expanded_twice() {
        let out = render("a {x} b {y}", |n| match n {
            "x" => Some("{y}"),
            "y" => Some("2"),
            _ => None,
        })
        .unwrap();
        assert_eq!(out, "a {y} b 2");
        assert!(render("{nope}", |_| None).is_err());
    }

    #[test]
    fn report_names_round_trip() {
        for report in Report::ALL {
            assert_eq!(report.name().parse::<Report>().unwrap(), report);
        }
        let err = "cdrs".parse::<Report>().unwrap_err().to_string();
        assert!(err.contains("call-summary"), "{err}");
    }
}
