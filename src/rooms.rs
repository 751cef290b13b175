//! `sipvault room ...`: persistent chat rooms in the catalog (create,
//! members, list, show, events) and a room's posts from the archive
//! (`history`).

use std::path::Path;
use std::sync::Arc;

use anyhow::bail;
use arrow_array::builder::StringBuilder;
use arrow_array::cast::AsArray;
use arrow_array::types::TimestampNanosecondType;
use arrow_array::{Array, ArrayRef, RecordBatch, TimestampNanosecondArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use clap::{Args, Subcommand};
use sipvault_catalog::{Catalog, MemberChange, Room, RoomRole};
use sipvault_query::conversation::{RoomHistoryRequest, room_history_stream};
use sipvault_query::{OutputFormat, QueryLimits};
use sipvault_server::RoomPost;

use crate::config::Config;

#[derive(Subcommand)]
pub enum RoomCommand {
    /// Create a persistent chat room; members post to its SIP URI
    /// sip:room-NAME@DOMAIN and every other member receives the post
    /// (as a NOTIFY when subscribed to the room, else as a MESSAGE).
    #[command(
        after_help = "Room names are lowercase letters, digits, '-', '_' and '.'.\n\nExamples:\n  sipvault room create budget --topic 'Q3 budget' --category finance\n  sipvault room create board --topic 'Board only' --private"
    )]
    Create {
        name: String,
        /// What the room is about.
        #[arg(long)]
        topic: String,
        /// A grouping for listing rooms (e.g. a department).
        #[arg(long)]
        category: Option<String>,
        /// Make the room private: only members may subscribe to it or read
        /// its history over SIP (in a public room any user of the domain
        /// may). Posting needs the owner or member role in every room.
        #[arg(long)]
        private: bool,
        /// SIP domain of the room's URI [default: sip.domain from the config].
        #[arg(long)]
        domain: Option<String>,
    },
    /// Add a user of the room's domain as a member, or change a member's role.
    #[command(
        after_help = "Roles: owner and member post and receive; read-only receives only.\n\nExamples:\n  sipvault room add-member budget alice --role owner\n  sipvault room add-member budget carol --role read-only"
    )]
    AddMember {
        room: String,
        user: String,
        #[arg(long, default_value = "member", value_parser = ["owner", "member", "read-only"])]
        role: String,
    },
    /// Remove a member from a room.
    #[command(after_help = "Example:\n  sipvault room remove-member budget carol")]
    RemoveMember { room: String, user: String },
    /// List rooms with their URI, topic and member count.
    #[command(after_help = "Example:\n  sipvault room list --format json")]
    List {
        #[arg(long, default_value = "table")]
        format: OutputFormat,
    },
    /// A room's settings and members.
    #[command(after_help = "Example:\n  sipvault room show budget --format json")]
    Show {
        room: String,
        #[arg(long, default_value = "table")]
        format: OutputFormat,
    },
    /// A room's posts from the archive, oldest first: time, sender, body and
    /// the IM key (for `conversation`). Recorded in the audit log.
    #[command(
        after_help = "Posts are the IMs to the room's URI that the server accepted; refused attempts\n(403, 503) are archived but are not posts. Segments are sealed by age (60 s) and on\nshutdown, so the newest posts of a running server may not show yet.\n\nExamples:\n  sipvault room history budget --last 20\n  sipvault room history budget --since 7d --format json"
    )]
    History(HistoryArgs),
    /// A room's membership changes (who, what, by whom, when), oldest first.
    #[command(after_help = "Example:\n  sipvault room events budget --format csv")]
    Events {
        room: String,
        #[arg(long, default_value = "table")]
        format: OutputFormat,
    },
}

#[derive(Args)]
pub struct HistoryArgs {
    pub room: String,
    /// Only the newest N posts (still printed oldest first).
    #[arg(long, value_name = "N")]
    pub last: Option<usize>,
    /// Only posts at or after this time: RFC 3339, YYYY-MM-DD, or relative (15m, 2h, 7d).
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long, default_value = "table")]
    pub format: OutputFormat,
    #[command(flatten)]
    pub limits: crate::LimitArgs,
}

impl HistoryArgs {
    /// The arguments as given, for the audit log.
    pub fn describe(&self) -> String {
        let mut out = self.room.clone();
        if let Some(n) = self.last {
            out.push_str(&format!(" --last {n}"));
        }
        if let Some(t) = &self.since {
            out.push_str(&format!(" --since {t}"));
        }
        out
    }
}

/// Prints a room's posts (the room's URI comes from the catalog); returns
/// how many.
pub async fn history(data: &Path, args: &HistoryArgs, now_ns: i64) -> anyhow::Result<u64> {
    let since_ns = args
        .since
        .as_deref()
        .map(|s| sipvault_query::parse_time(s, now_ns))
        .transpose()?;
    let catalog = Catalog::open(data).await?;
    let room = catalog.room(&args.room).await;
    catalog.close().await;
    let Some(room) = room? else {
        bail!("no room {}", args.room);
    };
    let req = RoomHistoryRequest {
        room_uri: room.uri(),
        since_ns,
        last: args.last,
    };
    let limits = args.limits.limits();
    let (data, format) = (data.to_path_buf(), args.format);
    Ok(crate::queries::bounded(limits, async move {
        let stream = room_history_stream(&data, &req, &limits).await?;
        crate::queries::write_to_stdout(stream, format).await
    })
    .await?)
}

/// The newest `last` posts of the room with URI `room_uri` in the archive,
/// oldest first, as the server keeps them for `/history` over SIP: the same
/// query as `room history`.
pub async fn archived_posts(
    data: &Path,
    room_uri: &str,
    last: usize,
) -> anyhow::Result<Vec<RoomPost>> {
    let req = RoomHistoryRequest {
        room_uri: room_uri.to_string(),
        since_ns: None,
        last: Some(last),
    };
    let stream = room_history_stream(data, &req, &QueryLimits::default()).await?;
    let mut posts = Vec::new();
    for batch in sipvault_query::collect_stream(stream).await? {
        let (Some(time), Some(sender), Some(body)) = (
            batch
                .column_by_name("time")
                .and_then(|c| c.as_primitive_opt::<TimestampNanosecondType>()),
            batch.column_by_name("sender"),
            batch.column_by_name("body"),
        ) else {
            bail!("room history columns are not time, sender, body");
        };
        for row in 0..batch.num_rows() {
            posts.push(RoomPost {
                time_ns: time.value(row),
                sender: text_at(sender, row).unwrap_or_default(),
                text: text_at(body, row).unwrap_or_default(),
            });
        }
    }
    Ok(posts)
}

/// The text in row `row` of a string column (Utf8, or the view type
/// DataFusion may read Parquet strings as).
fn text_at(column: &ArrayRef, row: usize) -> Option<String> {
    if column.is_null(row) {
        return None;
    }
    if let Some(a) = column.as_string_opt::<i32>() {
        return Some(a.value(row).to_string());
    }
    if let Some(a) = column.as_string_view_opt() {
        return Some(a.value(row).to_string());
    }
    column
        .as_string_opt::<i64>()
        .map(|a| a.value(row).to_string())
}

/// Runs a room command that changes or shows the catalog; `by` is who
/// is recorded in the room event log.
pub async fn run(data: &Path, config: &Config, by: &str, cmd: RoomCommand) -> anyhow::Result<()> {
    let catalog = Catalog::open(data).await?;
    let outcome = run_on(&catalog, config, by, cmd).await;
    catalog.close().await;
    outcome
}

async fn run_on(
    catalog: &Catalog,
    config: &Config,
    by: &str,
    cmd: RoomCommand,
) -> anyhow::Result<()> {
    match cmd {
        RoomCommand::Create {
            name,
            topic,
            category,
            private,
            domain,
        } => {
            let room = catalog
                .create_room(
                    &Room {
                        name,
                        domain: domain.unwrap_or_else(|| config.sip.domain.clone()),
                        topic,
                        category,
                        private,
                        created_ns: 0,
                    },
                    by,
                )
                .await?;
            println!("created room {} ({})", room.name, room.uri());
        }
        RoomCommand::AddMember { room, user, role } => {
            let role: RoomRole = role.parse()?;
            match catalog.add_room_member(&room, &user, role, by).await? {
                MemberChange::Added => println!("added {user} to room {room} as {role}"),
                MemberChange::RoleChanged { from } => {
                    println!("{user} in room {room}: {from} -> {role}")
                }
                MemberChange::Unchanged => {
                    println!("{user} is already {role} in room {room}")
                }
            }
        }
        RoomCommand::RemoveMember { room, user } => {
            catalog.remove_room_member(&room, &user, by).await?;
            println!("removed {user} from room {room}");
        }
        RoomCommand::List { format } => {
            let rooms = catalog.list_rooms().await?;
            let members = catalog.room_members(None).await?;
            let count = |room: &Room| members.iter().filter(|m| m.room == room.name).count();
            let batch = batch(&[
                (
                    "name",
                    Col::Text(rooms.iter().map(|r| Some(r.name.clone())).collect()),
                ),
                (
                    "uri",
                    Col::Text(rooms.iter().map(|r| Some(r.uri())).collect()),
                ),
                (
                    "topic",
                    Col::Text(rooms.iter().map(|r| Some(r.topic.clone())).collect()),
                ),
                (
                    "category",
                    Col::Text(rooms.iter().map(|r| r.category.clone()).collect()),
                ),
                (
                    "private",
                    Col::Text(rooms.iter().map(|r| Some(yes_no(r.private))).collect()),
                ),
                (
                    "members",
                    Col::Text(rooms.iter().map(|r| Some(count(r).to_string())).collect()),
                ),
                (
                    "created",
                    Col::Time(rooms.iter().map(|r| r.created_ns).collect()),
                ),
            ])?;
            print!("{}", sipvault_query::format_batches(&[batch], format)?);
            if format == OutputFormat::Table {
                println!("({} rooms)", rooms.len());
            }
        }
        RoomCommand::Show { room, format } => {
            let Some(room) = catalog.room(&room).await? else {
                bail!("no room {room}");
            };
            let members = catalog.room_members(Some(&room.name)).await?;
            match format {
                OutputFormat::Json => {
                    let value = serde_json::json!({
                        "name": room.name,
                        "uri": room.uri(),
                        "domain": room.domain,
                        "topic": room.topic,
                        "category": room.category,
                        "private": room.private,
                        "created_ns": room.created_ns,
                        "members": members.iter().map(|m| serde_json::json!({
                            "user": m.user,
                            "role": m.role,
                            "added_ns": m.added_ns,
                        })).collect::<Vec<_>>(),
                    });
                    println!("{}", serde_json::to_string_pretty(&value)?);
                }
                OutputFormat::Table | OutputFormat::Csv => {
                    if format == OutputFormat::Table {
                        println!("room:     {}", room.name);
                        println!("uri:      {}", room.uri());
                        println!("topic:    {}", room.topic);
                        println!("category: {}", room.category.as_deref().unwrap_or("-"));
                        println!("private:  {}", yes_no(room.private));
                        println!("members:  {}", members.len());
                    }
                    let batch = batch(&[
                        (
                            "room",
                            Col::Text(members.iter().map(|m| Some(m.room.clone())).collect()),
                        ),
                        (
                            "user",
                            Col::Text(members.iter().map(|m| Some(m.user.clone())).collect()),
                        ),
                        (
                            "role",
                            Col::Text(members.iter().map(|m| Some(m.role.to_string())).collect()),
                        ),
                        (
                            "added",
                            Col::Time(members.iter().map(|m| m.added_ns).collect()),
                        ),
                    ])?;
                    print!("{}", sipvault_query::format_batches(&[batch], format)?);
                }
            }
        }
        RoomCommand::History(_) => bail!("room history reads the archive: see main"),
        RoomCommand::Events { room, format } => {
            if catalog.room(&room).await?.is_none() {
                bail!("no room {room}");
            }
            let events = catalog.room_events(Some(&room)).await?;
            let batch = batch(&[
                (
                    "time",
                    Col::Time(events.iter().map(|e| e.time_ns).collect()),
                ),
                (
                    "room",
                    Col::Text(events.iter().map(|e| Some(e.room.clone())).collect()),
                ),
                (
                    "user",
                    Col::Text(events.iter().map(|e| Some(e.user.clone())).collect()),
                ),
                (
                    "event",
                    Col::Text(events.iter().map(|e| Some(e.event.clone())).collect()),
                ),
                (
                    "by",
                    Col::Text(events.iter().map(|e| Some(e.by.clone())).collect()),
                ),
            ])?;
            print!("{}", sipvault_query::format_batches(&[batch], format)?);
        }
    }
    Ok(())
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

/// A column of a printed result.
enum Col {
    Text(Vec<Option<String>>),
    /// ns since the epoch, printed as UTC time like the archive's columns.
    Time(Vec<i64>),
}

fn batch(cols: &[(&str, Col)]) -> anyhow::Result<RecordBatch> {
    let mut fields = Vec::with_capacity(cols.len());
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(cols.len());
    for (name, col) in cols {
        match col {
            Col::Text(values) => {
                fields.push(Field::new(*name, DataType::Utf8, true));
                let mut b = StringBuilder::new();
                for v in values {
                    b.append_option(v.as_deref());
                }
                arrays.push(Arc::new(b.finish()));
            }
            Col::Time(values) => {
                fields.push(Field::new(
                    *name,
                    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
                    false,
                ));
                arrays.push(Arc::new(
                    TimestampNanosecondArray::from_iter_values(values.iter().copied())
                        .with_timezone("UTC"),
                ));
            }
        }
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?)
}
