//! Persistent chat rooms inside the core.
//!
//! **Posts.** A MESSAGE to `sip:room-NAME@DOMAIN` from a member who may
//! post (owner, member) is answered 200, kept in the room's history and
//! passed on: as a NOTIFY to every subscription to the room (the poster's
//! own included, so a subscribed client sees the room's order), and as a
//! MESSAGE from the room's URI to every binding of every other member who
//! is registered and has *no* subscription to the room. So a member gets
//! each post once: as NOTIFY when subscribed, else as MESSAGE. Each
//! MESSAGE copy is a delivery of its own ([`crate::fanout`], shared with
//! conferences) and passes the tap like any message, so the post (member →
//! room) and each delivery (room → member) are archived.
//!
//! **The `chat-room` event package.** A SUBSCRIBE to the room's URI with
//! `Event: chat-room` makes a subscription (RFC 6665 dialog, kept by a
//! [`Notifier`] as the presence agent's are): 200 with `Expires` and at
//! once a NOTIFY with the full state; refreshes get the full state again,
//! `Expires: 0` a final NOTIFY `Subscription-State: terminated` (a
//! SUBSCRIBE with `Expires: 0` is a fetch: the state once, no
//! subscription), expiry `terminated;reason=timeout`. NOTIFY bodies are
//! [`CHAT_ROOM_CONTENT_TYPE`] documents in [`CHAT_ROOM_NAMESPACE`]:
//!
//! ```xml
//! <chat-room xmlns="urn:sipvault:params:xml:ns:chat-room"
//!            entity="sip:room-budget@example.com" state="full" private="false">
//!   <member uri="sip:alice@example.com" role="owner"/>
//!   <member uri="sip:bob@example.com" role="member"/>
//! </chat-room>
//! ```
//!
//! then `state="partial"` documents of items, each a post
//! (`<post sender="sip:alice@example.com" time="2026-12-01T10:00:00.000Z">text</post>`)
//! or a membership change the binary pushed with [`Core::set_rooms`]
//! (`<member uri=".." role="member" change="added"/>`, `change="role-changed"`
//! with the new role, `change="removed"` without one). A subscriber who may
//! no longer read the room after a change gets `terminated;reason=rejected`;
//! a room that is gone, `terminated;reason=noresource`.
//!
//! **NOTIFY flow.** Each subscription has at most one NOTIFY in flight
//! (RFC 6665 4.2.2). Items that come while one is unanswered wait; once it
//! has its final response the next NOTIFY carries every item queued since,
//! in order, in one partial document (split over several NOTIFYs to keep
//! bodies under `max_body_bytes`). Each `<post>` carries the time the
//! server accepted it, so batching changes nothing of who saw what when.
//! A final NOTIFY (`terminated...`) goes after, and with, the last queued
//! items. A subscriber that answers 481, 408 or 5xx, or lets a NOTIFY time
//! out, is dropped with its queue (it is on MESSAGE copies again, and
//! `/history` has what it missed); one whose queue outgrows
//! [`crate::subscription::MAX_PENDING_ITEMS`] is ended with
//! `terminated;reason=deactivated`.
//!
//! **Archive.** A post is archived once: the MESSAGE to the room, its 200
//! and one IM row naming the room. Every NOTIFY and every MESSAGE copy
//! passes the tap as well, so what each member was sent stays on record;
//! with subscribed members that is a NOTIFY per round trip per member,
//! not a message per post per member.
//!
//! **History.** The core keeps the newest [`RoomConfig::history_posts`]
//! posts of each room (the binary seeds them from the archive at start). A
//! MESSAGE to the room whose body starts with `/history` is a command, not
//! a post: `/history` (the newest 20), `/history N` or `/history since
//! RFC3339-TIME`, answered 200 and followed by one MESSAGE from the room
//! itself (no display name) to the requester, over the flow the command
//! came on and a delivery like a copy, whose `text/plain` body has a line
//! `TIME SENDER: TEXT` per post, oldest first (lines of a post's own text
//! after the first are indented by two spaces; `(no posts)` when there are
//! none). A reply longer than `max_body_bytes` keeps the newest posts and
//! says how many were left out. A malformed command gets 400 with a
//! `Warning` saying the syntax.
//!
//! **Who may do what.** Posting needs the owner or member role in every
//! room. Reading (SUBSCRIBE, `/history`) is open to every user of the
//! served domain in a public room and to members only in a private one;
//! others get 403, which says nothing of the room. Over the post rate of
//! [`RoomConfig`] 503 with `Retry-After`. A `room-` URI that names no room
//! is not handled here: the relay answers 404 (a SUBSCRIBE, 404 here).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use sipvault_catalog::{ROOM_HISTORY_COMMAND, ROOM_USER_PREFIX, RoomRole};
use sipvault_schemas::Transport;
use sipvault_sip::{SipMessage, SipUri};

use crate::core::{Core, request_uri_user};
use crate::fanout::{Copy, CopyIds, Origin, Recipient};
use crate::subscription::{Intervals, Notifier, PartialDocuments, Reply};

/// The event package of room subscriptions.
pub const CHAT_ROOM_EVENT: &str = "chat-room";
/// Content type of `chat-room` NOTIFY bodies.
pub const CHAT_ROOM_CONTENT_TYPE: &str = "application/vnd.sipvault.chat-room+xml";
/// XML namespace of `chat-room` NOTIFY bodies.
pub const CHAT_ROOM_NAMESPACE: &str = "urn:sipvault:params:xml:ns:chat-room";
/// Posts a bare `/history` returns.
pub const DEFAULT_HISTORY_POSTS: usize = 20;

/// A room as the core knows it: who is in it and whether outsiders may read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomInfo {
    /// Private rooms are read by their members only; public ones by any
    /// user of the domain.
    pub private: bool,
    /// Members by user name, with their role.
    pub members: BTreeMap<String, RoomRole>,
}

/// Rooms by name (without the `room-` prefix).
pub type RoomDirectory = HashMap<String, RoomInfo>;

/// One post of a room's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomPost {
    /// When the server accepted it, ns since the Unix epoch.
    pub time_ns: i64,
    /// The poster's URI.
    pub sender: String,
    pub text: String,
}

/// Flood control of room posts, per member and room (a token bucket that
/// refills at `posts_per_second` up to `burst`), and the history kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomConfig {
    pub posts_per_second: NonZeroU32,
    pub burst: NonZeroU32,
    /// Posts kept per room for `/history` (the newest).
    pub history_posts: usize,
}

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig {
            posts_per_second: NonZeroU32::new(5).unwrap_or(NonZeroU32::MIN),
            burst: NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN),
            history_posts: 1000,
        }
    }
}

/// Post and delivery counters of the rooms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomStats {
    pub posts: u64,
    pub deliveries: u64,
    pub refused: u64,
    pub rate_limited: u64,
    /// Deliveries without a final response within 64·T1, or whose flow failed.
    pub delivery_failures: u64,
    /// NOTIFYs sent to room subscriptions.
    pub notifies: u64,
    /// Posts and membership changes queued for room subscriptions (several
    /// may share a NOTIFY).
    pub notified_items: u64,
    pub history_requests: u64,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Post rate limits: a token bucket per (place, user), refilled at
/// `posts_per_second` up to `burst`. Rooms and conferences keep one each.
pub(crate) struct PostRate {
    posts_per_second: f64,
    burst: f64,
    buckets: HashMap<(String, String), Bucket>,
}

impl PostRate {
    pub(crate) fn new(config: &RoomConfig) -> PostRate {
        PostRate {
            posts_per_second: f64::from(config.posts_per_second.get()),
            burst: f64::from(config.burst.get()),
            buckets: HashMap::new(),
        }
    }

    /// Takes a token of `user`'s bucket in `place`; when there is none,
    /// how long until there is one.
    pub(crate) fn take(&mut self, now: Instant, place: &str, user: &str) -> Result<(), Duration> {
        let (rate, burst) = (self.posts_per_second, self.burst);
        let bucket = self
            .buckets
            .entry((place.to_string(), user.to_string()))
            .or_insert(Bucket {
                tokens: burst,
                at: now,
            });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }

    /// Keeps the buckets of the (place, user) pairs `keep` accepts.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&str, &str) -> bool) {
        self.buckets.retain(|(place, user), _| keep(place, user));
    }

    /// Drops `user`'s bucket in `place`.
    pub(crate) fn forget(&mut self, place: &str, user: &str) {
        self.buckets.remove(&(place.to_string(), user.to_string()));
    }

    /// Buckets held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.buckets.len()
    }
}

/// What a `/history` command asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HistoryQuery {
    Last(usize),
    /// Posts at or after this time, ns since the Unix epoch.
    Since(i64),
}

/// The command in a post's body: `None` when the body is a post.
fn history_command(body: &[u8]) -> Option<Result<HistoryQuery, ()>> {
    let text = std::str::from_utf8(body).ok()?;
    let args = text.strip_prefix(ROOM_HISTORY_COMMAND)?;
    let mut words = args.split_whitespace();
    // "/historyx" is no command of ours: refused, never posted.
    if !args.is_empty() && !args.starts_with(char::is_whitespace) {
        return Some(Err(()));
    }
    Some(match (words.next(), words.next(), words.next()) {
        (None, _, _) => Ok(HistoryQuery::Last(DEFAULT_HISTORY_POSTS)),
        (Some("since"), Some(time), None) => chrono::DateTime::parse_from_rfc3339(time)
            .ok()
            .and_then(|t| t.timestamp_nanos_opt())
            .map(HistoryQuery::Since)
            .ok_or(()),
        (Some(n), None, _) => n
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .map(HistoryQuery::Last)
            .ok_or(()),
        _ => Err(()),
    })
}

fn rfc3339_ns(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Not allowed in XML 1.0 at all: dropped rather than sent broken.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}

/// A `chat-room` document: `full` (with the private flag) or `partial`.
fn chat_room_document(entity: &str, private: Option<bool>, items: &[String]) -> Vec<u8> {
    let state = match private {
        Some(private) => format!("state=\"full\" private=\"{private}\""),
        None => "state=\"partial\"".to_string(),
    };
    let mut doc = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<chat-room xmlns=\"{CHAT_ROOM_NAMESPACE}\" entity=\"{}\" {state}>\n",
        xml_escape(entity)
    );
    for item in items {
        doc.push_str("  ");
        doc.push_str(item);
        doc.push('\n');
    }
    doc.push_str("</chat-room>\n");
    doc.into_bytes()
}

fn member_element(uri: &str, role: Option<RoomRole>, change: Option<&str>) -> String {
    let mut out = format!("<member uri=\"{}\"", xml_escape(uri));
    if let Some(role) = role {
        out.push_str(&format!(" role=\"{role}\""));
    }
    if let Some(change) = change {
        out.push_str(&format!(" change=\"{change}\""));
    }
    out.push_str("/>");
    out
}

fn post_element(post: &RoomPost) -> String {
    format!(
        "<post sender=\"{}\" time=\"{}\">{}</post>",
        xml_escape(&post.sender),
        rfc3339_ns(post.time_ns),
        xml_escape(&post.text)
    )
}

/// One post as a line of a history reply.
fn history_line(post: &RoomPost) -> String {
    format!(
        "{} {}: {}\n",
        rfc3339_ns(post.time_ns),
        post.sender,
        post.text.trim_end().replace('\n', "\n  ")
    )
}

/// The body of a history reply: as many of the newest `posts` as fit in
/// `max_bytes`, oldest first.
fn history_text(posts: &[&RoomPost], max_bytes: usize) -> String {
    if posts.is_empty() {
        return "(no posts)\n".to_string();
    }
    let mut lines: Vec<String> = Vec::new();
    let mut size = 0;
    for post in posts.iter().rev() {
        let line = history_line(post);
        // Room for the note on what was left out.
        if size + line.len() + 64 > max_bytes && !lines.is_empty() {
            break;
        }
        size += line.len();
        lines.push(line);
    }
    let left_out = posts.len() - lines.len();
    let mut out = String::with_capacity(size + 64);
    if left_out > 0 {
        out.push_str(&format!(
            "({left_out} earlier posts left out: ask with /history since TIME)\n"
        ));
    }
    for line in lines.iter().rev() {
        out.push_str(line);
    }
    out
}

/// The rooms' state in the core: the directory the binary pushes, rate
/// buckets, history and subscriptions (the MESSAGEs a room sends are
/// deliveries of [`crate::fanout`]).
pub(crate) struct Rooms {
    config: RoomConfig,
    directory: RoomDirectory,
    rate: PostRate,
    /// The newest posts of each room, oldest first.
    history: HashMap<String, VecDeque<RoomPost>>,
    /// Subscriptions to rooms (`chat-room` event), each watching a room name.
    subscribers: Notifier,
    /// A monotonic instant and the wall-clock time then (ns since the
    /// epoch), set by the IO layer: the time a post is stamped with.
    wall_clock: Option<(Instant, i64)>,
    pub(crate) stats: RoomStats,
}

impl Rooms {
    /// Rooms of `domain`; NOTIFY bodies stay under `max_body` bytes.
    pub(crate) fn new(config: RoomConfig, domain: &str, max_body: usize) -> Rooms {
        let partial = PartialDocuments {
            content_type: CHAT_ROOM_CONTENT_TYPE,
            document: |entity, items| chat_room_document(entity, None, items),
            max_body,
        };
        Rooms {
            rate: PostRate::new(&config),
            config,
            directory: RoomDirectory::new(),
            history: HashMap::new(),
            subscribers: Notifier::new(CHAT_ROOM_EVENT, format!("<sip:rooms@{domain}>"))
                .with_partial(partial),
            wall_clock: None,
            stats: RoomStats::default(),
        }
    }

    pub(crate) fn subscribers_mut(&mut self) -> &mut Notifier {
        &mut self.subscribers
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.subscribers.poll_timeout()
    }

    /// Wall-clock time at `now`, ns since the epoch (0 before the IO layer
    /// said what time it is).
    fn unix_ns(&self, now: Instant) -> i64 {
        let Some((at, ns)) = self.wall_clock else {
            return 0;
        };
        let ahead = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        if now >= at {
            ns.saturating_add(ahead(now - at))
        } else {
            ns.saturating_sub(ahead(at - now))
        }
    }

    /// Appends `post` to `room`'s history, dropping the oldest past the cap.
    fn remember(&mut self, room: &str, post: RoomPost) {
        let cap = self.config.history_posts;
        if cap == 0 {
            return;
        }
        let posts = self.history.entry(room.to_string()).or_default();
        posts.push_back(post);
        while posts.len() > cap {
            posts.pop_front();
        }
    }

    fn role_of(&self, room: &str, user: &str) -> Option<RoomRole> {
        self.directory
            .get(room)
            .and_then(|r| r.members.get(user))
            .copied()
    }
}

impl Core {
    /// Tells the rooms what the wall clock says at `now` (ns since the
    /// epoch): posts are stamped with it. The IO layer calls this as it
    /// feeds the core; the core itself reads no clock.
    pub fn set_wall_clock(&mut self, now: Instant, unix_ns: i64) {
        self.rooms.wall_clock = Some((now, unix_ns));
    }

    /// Replaces the rooms and their members (the binary reloads them from
    /// the catalog). Each membership change is notified to the room's
    /// subscribers; a subscriber who may no longer read is let go
    /// (`terminated;reason=rejected`), as are those of a room that is gone
    /// (`reason=noresource`). Rate buckets of members no longer there are
    /// dropped.
    pub fn set_rooms(&mut self, now: Instant, directory: RoomDirectory) {
        let old = std::mem::replace(&mut self.rooms.directory, directory);
        let domain = self.config.domain.clone();
        let mut names: Vec<&String> = old.keys().collect();
        names.sort();
        for name in names {
            let before = &old[name];
            let Some(after) = self.rooms.directory.get(name).cloned() else {
                for id in self.rooms.subscribers.watching(name) {
                    self.rooms
                        .subscribers
                        .terminate(&id, "terminated;reason=noresource");
                }
                self.rooms.history.remove(name);
                continue;
            };
            let mut changes = Vec::new();
            for (user, role) in &after.members {
                match before.members.get(user) {
                    None => changes.push((user, Some(*role), "added")),
                    Some(was) if was != role => changes.push((user, Some(*role), "role-changed")),
                    Some(_) => {}
                }
            }
            for user in before.members.keys() {
                if !after.members.contains_key(user) {
                    changes.push((user, None, "removed"));
                }
            }
            let watching = self.rooms.subscribers.watching(name);
            for (user, role, change) in changes {
                let item = member_element(&format!("sip:{user}@{domain}"), role, Some(change));
                for id in &watching {
                    self.room_notify_item(id, item.clone());
                }
            }
            for id in watching {
                let watcher = self
                    .rooms
                    .subscribers
                    .get(&id)
                    .and_then(|s| self.user_of_domain(&s.watcher_uri));
                if !self.may_read(name, watcher.as_deref()) {
                    self.rooms
                        .subscribers
                        .terminate(&id, "terminated;reason=rejected");
                }
            }
        }
        let directory = &self.rooms.directory;
        self.rooms.rate.retain(|room, user| {
            directory
                .get(room)
                .is_some_and(|r| r.members.contains_key(user))
        });
        self.send_notifies(now);
    }

    /// Puts posts the archive kept (oldest first) before those the core
    /// took since it started, so history survives a restart.
    pub fn seed_room_history(&mut self, room: &str, posts: Vec<RoomPost>) {
        let since_start = self.rooms.history.remove(room).unwrap_or_default();
        for post in posts.into_iter().chain(since_start) {
            self.rooms.remember(room, post);
        }
    }

    /// The posts of `room` the core holds, oldest first.
    pub fn room_history(&self, room: &str) -> Vec<RoomPost> {
        self.rooms
            .history
            .get(room)
            .map(|posts| posts.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn room_stats(&self) -> &RoomStats {
        &self.rooms.stats
    }

    /// Subscriptions to rooms held.
    pub fn room_subscriptions(&self) -> usize {
        self.rooms.subscribers.len()
    }

    /// The room a request is addressed to, if its Request-URI names one.
    fn room_of(&self, req: &SipMessage) -> Option<String> {
        let user = request_uri_user(req)?;
        let name = user.strip_prefix(ROOM_USER_PREFIX)?;
        self.rooms
            .directory
            .contains_key(name)
            .then(|| name.to_string())
    }

    /// Whether `req` (a MESSAGE) is a post to a known room.
    pub(crate) fn is_room_post(&self, req: &SipMessage) -> bool {
        self.room_of(req).is_some()
    }

    /// The user of a `sip:`/`sips:` URI of the served domain.
    fn user_of_domain(&self, uri: &str) -> Option<String> {
        SipUri::parse(uri)
            .ok()
            .and_then(|u| self.local_user(&u).map(str::to_string))
    }

    /// [`Core::user_of_domain`] of a parsed URI.
    fn local_user<'u>(&self, uri: &'u SipUri) -> Option<&'u str> {
        let ours = uri.host.eq_ignore_ascii_case(&self.config.domain)
            && (uri.scheme.eq_ignore_ascii_case("sip") || uri.scheme.eq_ignore_ascii_case("sips"));
        uri.user.as_deref().filter(|_| ours)
    }

    /// The From user of `req`, if it is of the served domain.
    fn local_sender(&self, req: &SipMessage) -> Option<String> {
        req.from().and_then(|f| self.user_of_domain(&f.uri))
    }

    /// Whether `user` may read `room` (subscribe, ask for history): any
    /// user of the domain in a public room, members only in a private one.
    fn may_read(&self, room: &str, user: Option<&str>) -> bool {
        let (Some(info), Some(user)) = (self.rooms.directory.get(room), user) else {
            return false;
        };
        if info.private {
            info.members.contains_key(user)
        } else {
            self.users.contains_key(user) || info.members.contains_key(user)
        }
    }

    fn room_refuse(&mut self, peer: SocketAddr, key: &str, req: &SipMessage, why: &str) {
        self.rooms.stats.refused += 1;
        self.reject_event(peer, 403, why);
        self.respond(key, req, 403, "Forbidden", &[]);
    }

    /// Takes a post token of `user` in `room`; without one answers 503 with
    /// `Retry-After` and returns false.
    fn within_rate(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        key: &str,
        req: &SipMessage,
        room: &str,
        user: &str,
    ) -> bool {
        let Err(wait) = self.rooms.rate.take(now, room, user) else {
            return true;
        };
        self.rooms.stats.rate_limited += 1;
        self.refuse_over_rate(peer, key, req, &format!("room {room}"), user, wait);
        false
    }

    /// 503 with `Retry-After` for a post by `user` to `place` (`room NAME`,
    /// `conference ID`) over the `[rooms]` post rate, with a log line.
    pub(crate) fn refuse_over_rate(
        &mut self,
        peer: SocketAddr,
        key: &str,
        req: &SipMessage,
        place: &str,
        user: &str,
        wait: Duration,
    ) {
        let retry_after = wait.as_secs_f64().ceil().max(1.0) as u64;
        tracing::warn!(
            place = %place,
            user = %user,
            retry_after,
            "post refused: member is posting faster than [rooms] allows"
        );
        self.reject_event(peer, 503, &format!("{place} post rate exceeded"));
        self.respond(
            key,
            req,
            503,
            "Service Unavailable",
            &[("Retry-After".into(), retry_after.to_string())],
        );
    }

    /// A MESSAGE to a room, in server transaction `key`: a post, or a
    /// `/history` command.
    pub(crate) fn on_room_post(
        &mut self,
        now: Instant,
        transport: Transport,
        peer: SocketAddr,
        key: &str,
        req: SipMessage,
    ) {
        let Some(room) = self.room_of(&req) else {
            return;
        };
        // The poster is the From address, which must be of our domain.
        let sender = self.local_sender(&req);
        if let Some(command) = history_command(req.body()) {
            self.on_history_command(now, transport, peer, key, &req, &room, sender, command);
            return;
        }
        let role = sender.as_ref().and_then(|s| self.rooms.role_of(&room, s));
        let (Some(sender), Some(role)) = (sender, role) else {
            self.room_refuse(peer, key, &req, &format!("not a member of room {room}"));
            return;
        };
        if !role.may_post() {
            self.room_refuse(peer, key, &req, &format!("read-only member of room {room}"));
            return;
        }
        if self.hops_left(peer, key, &req).is_none() {
            return;
        }
        if !self.within_rate(now, peer, key, &req, &room, &sender) {
            return;
        }
        self.rooms.stats.posts += 1;
        self.respond(key, &req, 200, "OK", &[]);
        let post = RoomPost {
            time_ns: self.rooms.unix_ns(now),
            sender: format!("sip:{sender}@{}", self.config.domain),
            text: String::from_utf8_lossy(req.body()).into_owned(),
        };
        let item = post_element(&post);
        self.rooms.remember(&room, post);
        for id in self.rooms.subscribers.watching(&room) {
            self.room_notify_item(&id, item.clone());
        }
        self.send_notifies(now);
        self.fan_out(now, &room, &sender, &req);
    }

    /// `/history ...` to `room` from `sender`: 200, then the posts in a
    /// MESSAGE from the room back over the command's flow.
    #[allow(clippy::too_many_arguments)]
    fn on_history_command(
        &mut self,
        now: Instant,
        transport: Transport,
        peer: SocketAddr,
        key: &str,
        req: &SipMessage,
        room: &str,
        sender: Option<String>,
        command: Result<HistoryQuery, ()>,
    ) {
        let Some(sender) = sender.filter(|s| self.may_read(room, Some(s))) else {
            self.room_refuse(peer, key, req, &format!("may not read room {room}"));
            return;
        };
        let Ok(query) = command else {
            self.reject_event(peer, 400, "malformed /history command");
            let warning = format!(
                "399 {} \"usage: /history [N] or /history since RFC3339-TIME\"",
                self.config.domain
            );
            self.respond(key, req, 400, "Bad Request", &[("Warning".into(), warning)]);
            return;
        };
        if !self.within_rate(now, peer, key, req, room, &sender) {
            return;
        }
        self.rooms.stats.history_requests += 1;
        self.respond(key, req, 200, "OK", &[]);
        let posts: Vec<&RoomPost> = match (self.rooms.history.get(room), query) {
            (None, _) => Vec::new(),
            (Some(posts), HistoryQuery::Last(n)) => {
                posts.iter().skip(posts.len().saturating_sub(n)).collect()
            }
            (Some(posts), HistoryQuery::Since(t)) => {
                posts.iter().filter(|p| p.time_ns >= t).collect()
            }
        };
        let body = history_text(&posts, self.config.max_body_bytes);
        // The reply goes back where the command came from: to the contact
        // the requester registered from that flow, else its address.
        let contact = self
            .bindings
            .lookup(&sender, now)
            .into_iter()
            .find(|b| b.flow == peer && b.transport == transport)
            .map(|b| b.contact.clone())
            .unwrap_or_else(|| format!("sip:{sender}@{}", self.config.domain));
        let room_uri = self.room_uri(room);
        let reply = Copy {
            origin: Origin::Room,
            from_uri: &room_uri,
            // The room itself answers: no display name.
            author: None,
            ids: CopyIds::Fresh {
                prefix: ROOM_USER_PREFIX,
            },
            content_type: "text/plain;charset=UTF-8",
            body: body.as_bytes(),
        };
        let to = Recipient {
            user: &sender,
            contact: &contact,
            transport,
            flow: peer,
        };
        self.send_copy(now, &reply, &to, 0);
        self.rooms.stats.deliveries += 1;
    }

    fn room_uri(&self, room: &str) -> String {
        format!("sip:{ROOM_USER_PREFIX}{room}@{}", self.config.domain)
    }

    /// A SUBSCRIBE with `Event: chat-room`, in server transaction `key`.
    pub(crate) fn on_room_subscribe(
        &mut self,
        now: Instant,
        transport: Transport,
        peer: SocketAddr,
        key: &str,
        req: &SipMessage,
    ) {
        let reply = self.room_subscribe(now, transport, peer, req);
        if reply.code == 403 {
            self.rooms.stats.refused += 1;
        }
        self.answer_reply(peer, key, req, reply);
        self.send_notifies(now);
    }

    fn room_subscribe(
        &mut self,
        now: Instant,
        transport: Transport,
        peer: SocketAddr,
        req: &SipMessage,
    ) -> Reply {
        let intervals = Intervals {
            min: self.config.min_expires,
            max: self.config.max_expires,
            default: self.config.default_expires,
        };
        let expires = match intervals.granted(req) {
            Ok(e) => e,
            Err(reply) => return reply,
        };
        if req.to().and_then(|t| t.tag()).is_some() {
            // Refresh or unsubscribe of an existing subscription.
            let id = match self
                .rooms
                .subscribers
                .refresh(now, req, expires, transport, peer)
            {
                Ok(id) => id,
                Err(reply) => return reply,
            };
            if expires == 0 {
                self.rooms.subscribers.terminate(&id, "terminated");
            } else {
                self.room_notify_full(&id);
            }
            return Reply::new(200, "OK").with("Expires", expires.to_string());
        }
        let Some(room) = self.room_of(req) else {
            return Reply::new(404, "Not Found");
        };
        if !self.may_read(&room, self.local_sender(req).as_deref()) {
            return Reply::new(403, "Forbidden");
        }
        let our_tag = self.token();
        let uri = self.room_uri(&room);
        let id = match self
            .rooms
            .subscribers
            .insert(now, &room, uri, req, expires, transport, peer, our_tag)
        {
            Ok(id) => id,
            Err(reply) => return reply,
        };
        let reply = self.rooms.subscribers.accepted(&id, expires);
        // A fetch (Expires: 0) gets the state once and no subscription.
        self.room_notify_full(&id);
        if expires == 0 {
            self.rooms.subscribers.terminate(&id, "terminated");
        }
        reply
    }

    /// Queues the room's full state for room subscription `id`.
    fn room_notify_full(&mut self, id: &str) {
        let Some(room) = self.rooms.subscribers.get(id).map(|s| s.resource.clone()) else {
            return;
        };
        let Some(info) = self.rooms.directory.get(&room) else {
            return;
        };
        let domain = &self.config.domain;
        let items: Vec<String> = info
            .members
            .iter()
            .map(|(user, role)| member_element(&format!("sip:{user}@{domain}"), Some(*role), None))
            .collect();
        let body = chat_room_document(&self.room_uri(&room), Some(info.private), &items);
        self.rooms
            .subscribers
            .notify_state(id, CHAT_ROOM_CONTENT_TYPE, body);
    }

    /// Queues one item (a post, a membership change) for room subscription
    /// `id`: it goes in the dialog's next partial document.
    fn room_notify_item(&mut self, id: &str, item: String) {
        self.rooms.stats.notified_items += 1;
        self.rooms.subscribers.notify_item(id, item);
    }

    /// Sends a copy of `post` to every binding of every other member who is
    /// registered and not subscribed to the room (subscribers have it as a
    /// NOTIFY).
    fn fan_out(&mut self, now: Instant, room: &str, sender: &str, post: &SipMessage) {
        let subscribed: HashSet<&str> = self
            .rooms
            .subscribers
            .iter()
            .filter(|(_, s)| s.resource == room)
            .filter_map(|(_, s)| s.watcher.as_ref().and_then(|w| self.local_user(w)))
            .collect();
        let members: Vec<String> = self
            .rooms
            .directory
            .get(room)
            .map(|r| {
                r.members
                    .keys()
                    .filter(|u| *u != sender && !subscribed.contains(u.as_str()))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let room_uri = self.room_uri(room);
        let copy = Copy {
            origin: Origin::Room,
            // The room sends; the display name says who posted.
            from_uri: &room_uri,
            author: Some(sender),
            // A Call-ID per copy: each is an IM of its own in the archive.
            ids: CopyIds::Fresh {
                prefix: ROOM_USER_PREFIX,
            },
            content_type: post.header("Content-Type").unwrap_or("text/plain"),
            body: post.body(),
        };
        let sent = self.send_copies(now, &copy, &members);
        self.rooms.stats.deliveries += u64::from(sent);
    }

    /// Ends expired subscriptions to rooms (the rooms' MESSAGEs are
    /// retransmitted and given up by [`crate::fanout`]).
    pub(crate) fn room_timeouts(&mut self, now: Instant) {
        for id in self.rooms.subscribers.expired(now) {
            self.rooms
                .subscribers
                .terminate(&id, "terminated;reason=timeout");
        }
        self.send_notifies(now);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};
    use std::time::Duration;

    use sipvault_catalog::RoomRole;
    use sipvault_sip::{MessageBuilder, SipMessage};

    use super::{RoomConfig, RoomDirectory, RoomInfo, RoomStats};
    use crate::core::{CoreConfig, Event, Transmit};
    use crate::core_tests::{
        DOMAIN, Sim, addr, alice_addr, bob_addr, config, creds, describe, only_response, parse,
    };

    const ROOM: &str = "sip:room-budget@example.test";

    fn carol_addr() -> std::net::SocketAddr {
        addr("198.51.100.30:40003")
    }
    fn bob_phone() -> std::net::SocketAddr {
        addr("198.51.100.21:40004")
    }

    /// alice owner, bob member (two devices), carol read-only, dave member
    /// who never registers, erin registered but in no room.
    fn sim_with(config: CoreConfig) -> Sim {
        let mut sim = Sim::new(config);
        let mut users = std::collections::HashMap::new();
        for user in ["alice", "bob", "carol", "dave", "erin"] {
            users.insert(user.to_string(), creds(user, &format!("{user}-pw")));
        }
        sim.core.set_users(users);
        let now = sim.now;
        sim.core.set_wall_clock(now, t0_ns());
        sim.core.set_rooms(now, directory(false, BUDGET_MEMBERS));
        for (user, flow) in [
            ("alice", alice_addr()),
            ("bob", bob_addr()),
            ("bob", bob_phone()),
            ("carol", carol_addr()),
            ("erin", addr("198.51.100.50:40006")),
        ] {
            let contact = format!("<sip:{user}@{flow}>");
            let resp = sim.register(user, &format!("{user}-pw"), flow, &contact, Some(3600));
            assert_eq!(resp.status(), Some(200), "registering {user} at {flow}");
        }
        sim.events();
        sim
    }

    fn sim() -> Sim {
        sim_with(config())
    }

    const BUDGET_MEMBERS: &[(&str, RoomRole)] = &[
        ("alice", RoomRole::Owner),
        ("bob", RoomRole::Member),
        ("carol", RoomRole::ReadOnly),
        ("dave", RoomRole::Member),
    ];

    /// The directory of one room, `budget`, with these members.
    fn directory(private: bool, members: &[(&str, RoomRole)]) -> RoomDirectory {
        let members: BTreeMap<String, RoomRole> = members
            .iter()
            .map(|(user, role)| (user.to_string(), *role))
            .collect();
        RoomDirectory::from([("budget".to_string(), RoomInfo { private, members })])
    }

    /// A MESSAGE from `user` (at `flow`) to `ruri`.
    fn post_req(
        sim: &mut Sim,
        user: &str,
        flow: std::net::SocketAddr,
        ruri: &str,
        body: &str,
    ) -> Vec<u8> {
        let id = sim.next_id();
        let mut b = MessageBuilder::request("MESSAGE", ruri);
        b.header(
            "Via",
            &format!("SIP/2.0/UDP {flow};branch=z9hG4bK-post-{id};rport"),
        )
        .header("Max-Forwards", "70")
        .header("From", &format!("<sip:{user}@{DOMAIN}>;tag=p{id}"))
        .header("To", &format!("<{ruri}>"))
        .header("Call-ID", &format!("post-{id}@test"))
        .header("CSeq", "1 MESSAGE")
        .body("text/plain;charset=UTF-8", body.as_bytes());
        b.build()
    }

    /// The responses to `dst` and the requests the core sent elsewhere.
    fn split(tx: Vec<Transmit>, dst: std::net::SocketAddr) -> (Vec<SipMessage>, Vec<Transmit>) {
        let (to_poster, others): (Vec<_>, Vec<_>) = tx
            .into_iter()
            .partition(|t| t.dst == dst && !parse(&t.bytes, "to poster").is_request());
        (
            to_poster
                .iter()
                .map(|t| parse(&t.bytes, "response"))
                .collect(),
            others,
        )
    }

    fn post(
        sim: &mut Sim,
        user: &str,
        flow: std::net::SocketAddr,
        ruri: &str,
        body: &str,
    ) -> (u16, Vec<Transmit>) {
        let req = post_req(sim, user, flow, ruri, body);
        let (responses, deliveries) = split(sim.udp(flow, &req), flow);
        assert_eq!(
            responses.len(),
            1,
            "one answer to the poster: {:?}",
            describe(&deliveries)
        );
        (responses[0].status().unwrap_or(0), deliveries)
    }

    fn answer(sim: &mut Sim, delivery: &Transmit, code: u16) -> Vec<Transmit> {
        let req = parse(&delivery.bytes, "delivery");
        let resp = MessageBuilder::response_to(&req, code, "Whatever").build();
        sim.udp(delivery.dst, &resp)
    }

    #[test]
    fn a_post_is_answered_and_sent_to_every_binding_of_every_other_registered_member() {
        let mut sim = sim();
        let (code, deliveries) = post(
            &mut sim,
            "alice",
            alice_addr(),
            ROOM,
            "budget is due friday",
        );
        assert_eq!(code, 200);
        let mut dsts: Vec<_> = deliveries.iter().map(|t| t.dst).collect();
        dsts.sort();
        let mut expected = vec![bob_addr(), bob_phone(), carol_addr()];
        expected.sort();
        assert_eq!(
            dsts, expected,
            "bob on both devices and read-only carol receive; the poster, unregistered dave and non-member erin do not"
        );
        let mut call_ids = HashSet::new();
        for t in &deliveries {
            let m = parse(&t.bytes, "delivery");
            assert_eq!(m.method(), Some("MESSAGE"));
            let from = m.from().expect("From");
            assert_eq!(from.uri, ROOM, "the room sends the copy");
            assert!(
                m.header("From").unwrap().starts_with("\"alice\""),
                "display name names the poster"
            );
            assert_eq!(m.body(), b"budget is due friday");
            assert_eq!(m.header("Content-Type"), Some("text/plain;charset=UTF-8"));
            let to_user = if t.dst == carol_addr() {
                "carol"
            } else {
                "bob"
            };
            assert_eq!(m.to().unwrap().uri, format!("sip:{to_user}@{DOMAIN}"));
            assert!(
                m.vias()[0]
                    .branch()
                    .unwrap()
                    .starts_with(crate::core::BRANCH_PREFIX),
                "each copy carries a Via of ours"
            );
            assert!(
                call_ids.insert(m.call_id().unwrap().to_string()),
                "a Call-ID per copy"
            );
        }
        assert_eq!(
            sim.core.room_stats(),
            &RoomStats {
                posts: 1,
                deliveries: 3,
                ..RoomStats::default()
            }
        );

        // Bob's devices answer: nothing goes back to alice, whose post was
        // answered already.
        for t in deliveries.iter().filter(|t| t.dst != carol_addr()) {
            assert!(
                answer(&mut sim, t, 200).is_empty(),
                "a delivery's answer is absorbed"
            );
        }
        // Carol's agent never answers: retransmitted at T1, 2·T1, ... then
        // given up at 64·T1, only her copy.
        let end = sim.now + Duration::from_secs(40);
        let later = sim.run_until(end);
        assert!(!later.is_empty());
        assert!(
            later.iter().all(|(_, t)| t.dst == carol_addr()),
            "only the unanswered copy is retransmitted: {:?}",
            later.iter().map(|(_, t)| t.dst).collect::<Vec<_>>()
        );
        assert_eq!(sim.core.room_stats().delivery_failures, 1);
        assert!(
            sim.core.poll_timeout().is_none_or(|t| t > end),
            "no delivery left"
        );
    }

    #[test]
    fn a_retransmitted_post_is_answered_again_and_not_sent_twice() {
        let mut sim = sim();
        let req = post_req(&mut sim, "bob", bob_addr(), ROOM, "once");
        let first = sim.udp(bob_addr(), &req);
        assert_eq!(
            first.len(),
            3,
            "200 to bob, copies to alice and carol: {:?}",
            describe(&first)
        );
        let again = sim.udp(bob_addr(), &req);
        let resp = only_response(again, bob_addr(), "retransmitted post");
        assert_eq!(resp.status(), Some(200));
        assert_eq!(sim.core.room_stats().posts, 1);
    }

    #[test]
    fn non_members_read_only_members_and_missing_rooms_are_refused() {
        let mut sim = sim();
        let erin = addr("198.51.100.50:40006");
        let (code, out) = post(&mut sim, "erin", erin, ROOM, "let me in");
        assert_eq!((code, out.len()), (403, 0), "a non-member gets 403");
        let (code, out) = post(&mut sim, "carol", carol_addr(), ROOM, "may I?");
        assert_eq!((code, out.len()), (403, 0), "a read-only member gets 403");
        let (code, out) = post(
            &mut sim,
            "alice",
            alice_addr(),
            "sip:room-nope@example.test",
            "hello?",
        );
        assert_eq!(
            (code, out.len()),
            (404, 0),
            "a room that does not exist: 404"
        );
        assert_eq!(sim.core.room_stats().refused, 2);

        // A member's name from another domain is not the member.
        let id = sim.next_id();
        let mut b = MessageBuilder::request("MESSAGE", ROOM);
        b.header(
            "Via",
            &format!("SIP/2.0/UDP {erin};branch=z9hG4bK-x{id};rport"),
        )
        .header("Max-Forwards", "70")
        .header("From", &format!("<sip:alice@evil.example>;tag=x{id}"))
        .header("To", &format!("<{ROOM}>"))
        .header("Call-ID", &format!("x{id}@test"))
        .header("CSeq", "1 MESSAGE")
        .body("text/plain", b"spoof");
        let resp = only_response(sim.udp(erin, &b.build()), erin, "foreign From");
        assert_eq!(resp.status(), Some(403));

        let big = "x".repeat(config().max_body_bytes + 1);
        let (code, out) = post(&mut sim, "alice", alice_addr(), ROOM, &big);
        assert_eq!((code, out.len()), (413, 0), "an oversized post: 413");
        assert_eq!(sim.core.room_stats().posts, 0);

        // Membership follows the directory: bob removed is refused.
        let now = sim.now;
        sim.core
            .set_rooms(now, directory(false, &[("alice", RoomRole::Owner)]));
        let (code, _) = post(&mut sim, "bob", bob_addr(), ROOM, "still here?");
        assert_eq!(code, 403);
        let (code, out) = post(&mut sim, "alice", alice_addr(), ROOM, "alone");
        assert_eq!(
            (code, out.len()),
            (200, 0),
            "no other member: answered, sent nowhere"
        );
    }

    #[test]
    fn a_member_posting_too_fast_gets_503_with_retry_after_and_others_are_unaffected() {
        let mut sim = sim_with(CoreConfig {
            rooms: RoomConfig {
                posts_per_second: std::num::NonZeroU32::new(2).unwrap(),
                burst: std::num::NonZeroU32::new(3).unwrap(),
                ..RoomConfig::default()
            },
            ..config()
        });
        for n in 0..3 {
            let (code, _) = post(&mut sim, "bob", bob_addr(), ROOM, &format!("flood {n}"));
            assert_eq!(code, 200, "post {n} is within the burst");
        }
        let req = post_req(&mut sim, "bob", bob_addr(), ROOM, "one too many");
        let resp = only_response(sim.udp(bob_addr(), &req), bob_addr(), "over the rate");
        assert_eq!(resp.status(), Some(503));
        assert_eq!(
            resp.header("Retry-After"),
            Some("1"),
            "one token in 0.5 s, rounded up"
        );
        assert!(
            sim.events()
                .iter()
                .any(|e| matches!(e, Event::Rejected { code: 503, .. })),
            "the refusal is an event (logged by the IO layer)"
        );
        let (code, out) = post(&mut sim, "alice", alice_addr(), ROOM, "I can still post");
        assert_eq!((code, out.len()), (200, 3), "another member is not limited");

        // Half a second later one token is back, and only one.
        sim.now += Duration::from_millis(500);
        let (code, _) = post(&mut sim, "bob", bob_addr(), ROOM, "after the wait");
        assert_eq!(code, 200);
        let (code, _) = post(&mut sim, "bob", bob_addr(), ROOM, "too soon again");
        assert_eq!(code, 503);
        assert_eq!(sim.core.room_stats().rate_limited, 2);
        assert_eq!(sim.core.room_stats().posts, 5);
    }

    fn erin_addr() -> std::net::SocketAddr {
        addr("198.51.100.50:40006")
    }

    /// The wall clock at the start of every simulation.
    fn t0_ns() -> i64 {
        ns_of("2026-12-01T10:00:00Z")
    }

    fn ns_of(time: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(time)
            .unwrap()
            .timestamp_nanos_opt()
            .unwrap()
    }

    /// A SUBSCRIBE for the `chat-room` event from `user` at `flow`: a new
    /// dialog `call_id`, or inside it when `to_tag` is ours.
    fn subscribe_req(
        sim: &mut Sim,
        user: &str,
        flow: std::net::SocketAddr,
        ruri: &str,
        call_id: &str,
        to_tag: Option<&str>,
        expires: u32,
    ) -> Vec<u8> {
        let id = sim.next_id();
        let mut b = MessageBuilder::request("SUBSCRIBE", ruri);
        b.header(
            "Via",
            &format!("SIP/2.0/UDP {flow};branch=z9hG4bK-sub-{id};rport"),
        )
        .header("Max-Forwards", "70")
        .header("From", &format!("<sip:{user}@{DOMAIN}>;tag=s-{user}"))
        .header(
            "To",
            &match to_tag {
                Some(tag) => format!("<{ruri}>;tag={tag}"),
                None => format!("<{ruri}>"),
            },
        )
        .header("Call-ID", call_id)
        .header("CSeq", &format!("{id} SUBSCRIBE"))
        .header("Contact", &format!("<sip:{user}@{flow}>"))
        .header("Event", "chat-room")
        .header("Expires", &expires.to_string());
        b.build()
    }

    /// Subscribes `user` to the budget room: the 200 (with our To-tag) and
    /// the initial NOTIFY, which `user` answers 200.
    fn subscribe(
        sim: &mut Sim,
        user: &str,
        flow: std::net::SocketAddr,
        ruri: &str,
        expires: u32,
    ) -> (SipMessage, Vec<SipMessage>) {
        let call_id = format!("sub-{user}-{flow}");
        let req = subscribe_req(sim, user, flow, ruri, &call_id, None, expires);
        let out = sim.udp(flow, &req);
        let (responses, requests) = split(out, flow);
        assert_eq!(responses.len(), 1, "one answer: {:?}", describe(&requests));
        let notifies = requests
            .iter()
            .map(|t| {
                assert_eq!(t.dst, flow, "the NOTIFY goes over the SUBSCRIBE's flow");
                assert!(answer(sim, t, 200).is_empty());
                parse(&t.bytes, "notify")
            })
            .collect();
        (responses[0].clone(), notifies)
    }

    fn body(m: &SipMessage) -> String {
        String::from_utf8_lossy(m.body()).into_owned()
    }

    /// NOTIFYs among `tx`, by destination.
    fn notifies_by_dst(tx: &[Transmit]) -> Vec<(std::net::SocketAddr, SipMessage)> {
        tx.iter()
            .map(|t| (t.dst, parse(&t.bytes, "sent")))
            .filter(|(_, m)| m.method() == Some("NOTIFY"))
            .collect()
    }

    #[test]
    fn a_subscriber_gets_the_full_state_then_each_post_as_notify_and_no_message_copy() {
        let mut sim = sim();
        let (resp, initial) = subscribe(&mut sim, "bob", bob_addr(), ROOM, 600);
        assert_eq!(resp.status(), Some(200));
        assert_eq!(resp.header("Expires"), Some("600"));
        assert!(resp.to().unwrap().tag().is_some(), "the 200 makes a dialog");
        assert_eq!(initial.len(), 1);
        let n = &initial[0];
        assert_eq!(n.method(), Some("NOTIFY"));
        assert_eq!(n.header("Event"), Some("chat-room"));
        assert_eq!(n.header("Subscription-State"), Some("active;expires=600"));
        assert_eq!(
            n.header("Content-Type"),
            Some(super::CHAT_ROOM_CONTENT_TYPE)
        );
        assert_eq!(n.from().unwrap().uri, ROOM);
        assert_eq!(n.to().unwrap().tag(), Some("s-bob"));
        assert_eq!(
            body(n),
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
                 <chat-room xmlns=\"urn:sipvault:params:xml:ns:chat-room\" entity=\"{ROOM}\" state=\"full\" private=\"false\">\n  \
                 <member uri=\"sip:alice@{DOMAIN}\" role=\"owner\"/>\n  \
                 <member uri=\"sip:bob@{DOMAIN}\" role=\"member\"/>\n  \
                 <member uri=\"sip:carol@{DOMAIN}\" role=\"read-only\"/>\n  \
                 <member uri=\"sip:dave@{DOMAIN}\" role=\"member\"/>\n\
                 </chat-room>\n"
            )
        );
        let (_, initial) = subscribe(&mut sim, "alice", alice_addr(), ROOM, 600);
        assert_eq!(initial.len(), 1);

        sim.now += Duration::from_millis(1500);
        let (code, out) = post(
            &mut sim,
            "alice",
            alice_addr(),
            ROOM,
            "budget <due> & friday",
        );
        assert_eq!(code, 200);
        let notifies = notifies_by_dst(&out);
        let mut dsts: Vec<_> = notifies.iter().map(|(d, _)| *d).collect();
        dsts.sort();
        assert_eq!(
            dsts,
            vec![alice_addr(), bob_addr()],
            "every subscription, the poster's own included"
        );
        for (_, n) in &notifies {
            assert_eq!(n.cseq(), Some((2, "NOTIFY")), "the dialog's second NOTIFY");
            assert_eq!(
                body(n),
                format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
                     <chat-room xmlns=\"urn:sipvault:params:xml:ns:chat-room\" entity=\"{ROOM}\" state=\"partial\">\n  \
                     <post sender=\"sip:alice@{DOMAIN}\" time=\"2026-12-01T10:00:01.500Z\">budget &lt;due&gt; &amp; friday</post>\n\
                     </chat-room>\n"
                )
            );
        }
        let messages: Vec<_> = out
            .iter()
            .filter(|t| parse(&t.bytes, "sent").method() == Some("MESSAGE"))
            .map(|t| t.dst)
            .collect();
        assert_eq!(
            messages,
            vec![carol_addr()],
            "subscribed bob gets no MESSAGE on either device; unsubscribed carol does"
        );
        assert_eq!(sim.core.room_stats().notifies, 4);
        assert_eq!(sim.core.room_subscriptions(), 2);
    }

    #[test]
    fn membership_changes_are_notified_and_a_reader_who_loses_access_is_let_go() {
        let mut sim = sim();
        let now = sim.now;
        sim.core.set_rooms(now, directory(true, BUDGET_MEMBERS));
        subscribe(&mut sim, "bob", bob_addr(), ROOM, 600);
        subscribe(&mut sim, "carol", carol_addr(), ROOM, 600);

        let now = sim.now;
        sim.core.set_rooms(
            now,
            directory(
                true,
                &[
                    ("alice", RoomRole::Owner),
                    ("carol", RoomRole::Member),
                    ("dave", RoomRole::Member),
                    ("erin", RoomRole::ReadOnly),
                ],
            ),
        );
        let out = sim.drain();
        let changes = vec![
            format!("<member uri=\"sip:carol@{DOMAIN}\" role=\"member\" change=\"role-changed\"/>"),
            format!("<member uri=\"sip:erin@{DOMAIN}\" role=\"read-only\" change=\"added\"/>"),
            format!("<member uri=\"sip:bob@{DOMAIN}\" change=\"removed\"/>"),
        ];
        let notifies = notifies_by_dst(&out);
        let at = |dst| -> Vec<&SipMessage> {
            notifies
                .iter()
                .filter(|(d, _)| *d == dst)
                .map(|(_, n)| n)
                .collect()
        };
        let carol = at(carol_addr());
        assert_eq!(carol.len(), 1, "one NOTIFY with every change");
        assert_eq!(items(carol[0]), changes, "in order");
        assert!(body(carol[0]).contains("state=\"partial\""));
        assert_eq!(
            carol[0].header("Subscription-State"),
            Some("active;expires=600")
        );
        let bob = at(bob_addr());
        assert_eq!(bob.len(), 1, "bob hears the changes and is let go at once");
        assert_eq!(items(bob[0]), changes);
        assert_eq!(
            bob[0].header("Subscription-State"),
            Some("terminated;reason=rejected"),
            "removed from a private room, bob may no longer read it"
        );
        assert_eq!(sim.core.room_subscriptions(), 1);

        // The room is deleted: its last subscriber is told, once carol has
        // answered the NOTIFY before.
        let now = sim.now;
        sim.core.set_rooms(now, RoomDirectory::new());
        assert!(
            notifies_by_dst(&sim.drain()).is_empty(),
            "carol's NOTIFY is unanswered"
        );
        assert_eq!(sim.core.room_subscriptions(), 0, "no longer a subscription");
        let to_carol = out.iter().find(|t| t.dst == carol_addr()).unwrap();
        let carol = notifies_by_dst(&answer(&mut sim, to_carol, 200));
        assert_eq!(carol.len(), 1);
        assert_eq!(
            carol[0].1.header("Subscription-State"),
            Some("terminated;reason=noresource")
        );
    }

    /// The items (lines of elements) of a `chat-room` document.
    fn items(n: &SipMessage) -> Vec<String> {
        body(n)
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("<member") || l.starts_with("<post"))
            .map(str::to_string)
            .collect()
    }

    /// The `<post>` item of `text` by alice, posted `ms` after the start.
    fn post_item(ms: u32, text: &str) -> String {
        format!(
            "<post sender=\"sip:alice@{DOMAIN}\" time=\"2026-12-01T10:00:00.{ms:03}Z\">{text}</post>"
        )
    }

    /// Alice posts `text` `step_ms` after the previous post; returns what
    /// went to bob at `bob_addr()`.
    fn post_for_bob(sim: &mut Sim, step_ms: u64, text: &str) -> Vec<Transmit> {
        sim.now += Duration::from_millis(step_ms);
        let (code, out) = post(sim, "alice", alice_addr(), ROOM, text);
        assert_eq!(code, 200, "{text}");
        out.into_iter().filter(|t| t.dst == bob_addr()).collect()
    }

    #[test]
    fn one_notify_in_flight_per_subscriber_and_the_next_carries_every_post_queued_meanwhile() {
        let mut sim = sim();
        subscribe(&mut sim, "bob", bob_addr(), ROOM, 600);
        let first = post_for_bob(&mut sim, 0, "first");
        assert_eq!(first.len(), 1, "the first post goes at once");
        for text in ["second", "third", "fourth"] {
            assert!(
                post_for_bob(&mut sim, 100, text).is_empty(),
                "no NOTIFY to bob while his last one is unanswered"
            );
        }
        let next = answer(&mut sim, &first[0], 200);
        let n = notifies_by_dst(&next);
        assert_eq!(
            n.len(),
            1,
            "one NOTIFY once the 200 is in: {:?}",
            describe(&next)
        );
        assert_eq!(n[0].0, bob_addr());
        assert_eq!(n[0].1.cseq(), Some((3, "NOTIFY")));
        assert_eq!(
            n[0].1.header("Subscription-State"),
            Some("active;expires=599")
        );
        assert_eq!(
            items(&n[0].1),
            [
                post_item(100, "second"),
                post_item(200, "third"),
                post_item(300, "fourth")
            ],
            "every post queued meanwhile, in order, each with its own time"
        );
        assert!(body(&n[0].1).contains("state=\"partial\""));
        assert!(
            answer(&mut sim, &next[0], 200).is_empty(),
            "nothing else queued"
        );
        let stats = sim.core.room_stats();
        assert_eq!(
            (stats.posts, stats.notified_items, stats.notifies),
            (4, 4, 3),
            "the full state, the first post, the three others together"
        );
    }

    #[test]
    fn queued_posts_are_split_over_notifies_under_the_body_size_limit() {
        let mut sim = sim_with(CoreConfig {
            max_body_bytes: 700,
            rooms: RoomConfig {
                burst: std::num::NonZeroU32::new(100).unwrap(),
                ..RoomConfig::default()
            },
            ..config()
        });
        subscribe(&mut sim, "bob", bob_addr(), ROOM, 600);
        let mut pending = post_for_bob(&mut sim, 0, "post 0");
        let texts: Vec<String> = (1..=12)
            .map(|n| format!("post {n} {}", "x".repeat(90)))
            .collect();
        for text in &texts {
            assert!(post_for_bob(&mut sim, 1, text).is_empty());
        }
        let mut got = Vec::new();
        let mut rounds = 0;
        while let Some(in_flight) = pending.pop() {
            rounds += 1;
            assert!(rounds < 20, "bounded");
            let next = answer(&mut sim, &in_flight, 200);
            for (dst, n) in notifies_by_dst(&next) {
                assert_eq!(dst, bob_addr());
                assert!(n.body().len() <= 700, "{} bytes", n.body().len());
                got.extend(items(&n));
            }
            assert!(next.len() <= 1, "one NOTIFY at a time");
            pending = next;
        }
        let expected: Vec<String> = texts
            .iter()
            .enumerate()
            .map(|(i, text)| post_item(i as u32 + 1, text))
            .collect();
        assert_eq!(got, expected, "every post once, in order");
        assert!(rounds > 3, "split over several NOTIFYs: {rounds}");
    }

    #[test]
    fn a_subscriber_with_more_than_max_pending_items_queued_is_deactivated_and_gets_copies() {
        let mut sim = sim_with(CoreConfig {
            rooms: RoomConfig {
                posts_per_second: std::num::NonZeroU32::new(1_000_000).unwrap(),
                burst: std::num::NonZeroU32::new(1_000_000).unwrap(),
                ..RoomConfig::default()
            },
            ..config()
        });
        subscribe(&mut sim, "bob", bob_addr(), ROOM, 600);
        let first = post_for_bob(&mut sim, 0, "first");
        assert_eq!(first.len(), 1, "the first post goes at once");
        // Bob never answers: every later post queues behind his NOTIFY.
        for n in 0..crate::subscription::MAX_PENDING_ITEMS {
            let out = post_for_bob(&mut sim, 0, &format!("queued {n}"));
            assert!(out.is_empty(), "nothing to bob while queued ({n})");
        }
        assert_eq!(sim.core.room_subscriptions(), 1, "a full queue still holds");
        let out = post_for_bob(&mut sim, 1, "one too many");
        assert_eq!(
            sim.core.room_subscriptions(),
            0,
            "past the cap the subscription is ended"
        );
        // The final NOTIFY waits for the one in flight; the post that
        // overflowed reaches bob as a copy, as to any unsubscribed member.
        assert_eq!(out.len(), 1, "{:?}", describe(&out));
        let copy = parse(&out[0].bytes, "copy");
        assert_eq!(copy.method(), Some("MESSAGE"));
        assert_eq!(copy.body(), b"one too many");
        let last = answer(&mut sim, &first[0], 200);
        let n = notifies_by_dst(&last);
        assert_eq!(n.len(), 1, "{:?}", describe(&last));
        assert_eq!(
            n[0].1.header("Subscription-State"),
            Some("terminated;reason=deactivated")
        );
        assert!(items(&n[0].1).is_empty(), "the queue is dropped, not sent");
        let out = post_for_bob(&mut sim, 1, "bob is back on MESSAGE");
        assert_eq!(out.len(), 1);
        assert_eq!(parse(&out[0].bytes, "copy").method(), Some("MESSAGE"));
    }

    #[test]
    fn a_notify_that_times_out_drops_the_subscription_with_its_queue_and_copies_resume() {
        let mut sim = sim();
        subscribe(&mut sim, "bob", bob_addr(), ROOM, 600);
        let first = post_for_bob(&mut sim, 0, "first");
        assert!(post_for_bob(&mut sim, 100, "queued").is_empty());
        let end = sim.now + Duration::from_secs(40);
        let later = sim.run_until(end);
        let to_bob: Vec<_> = later.iter().filter(|(_, t)| t.dst == bob_addr()).collect();
        assert!(!to_bob.is_empty());
        assert!(
            to_bob.iter().all(|(_, t)| t.bytes == first[0].bytes),
            "only the unanswered NOTIFY is retransmitted, nothing new goes meanwhile"
        );
        assert_eq!(
            sim.core.room_subscriptions(),
            0,
            "timed out: the subscriber is dropped (RFC 6665 4.2.2)"
        );
        let out = post_for_bob(&mut sim, 0, "bob is back on MESSAGE");
        assert_eq!(out.len(), 1);
        assert_eq!(parse(&out[0].bytes, "copy").method(), Some("MESSAGE"));
    }

    #[test]
    fn the_final_notify_waits_for_the_one_in_flight_and_carries_what_was_queued() {
        let mut sim = sim();
        let (resp, _) = subscribe(&mut sim, "bob", bob_addr(), ROOM, 600);
        let tag = resp.to().unwrap().tag().unwrap().to_string();
        let first = post_for_bob(&mut sim, 0, "first");
        assert!(post_for_bob(&mut sim, 100, "second").is_empty());
        let call_id = format!("sub-bob-{}", bob_addr());
        let req = subscribe_req(&mut sim, "bob", bob_addr(), ROOM, &call_id, Some(&tag), 0);
        let (responses, out) = split(sim.udp(bob_addr(), &req), bob_addr());
        assert_eq!(responses[0].status(), Some(200));
        assert!(
            out.is_empty(),
            "the final NOTIFY waits: {:?}",
            describe(&out)
        );
        assert_eq!(sim.core.room_subscriptions(), 0);
        let copy = post_for_bob(&mut sim, 100, "after the unsubscribe");
        assert_eq!(
            parse(&copy[0].bytes, "copy").method(),
            Some("MESSAGE"),
            "bob is on MESSAGE copies again"
        );
        let last = notifies_by_dst(&answer(&mut sim, &first[0], 200));
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].1.header("Subscription-State"), Some("terminated"));
        assert_eq!(items(&last[0].1), [post_item(100, "second")]);
        assert_eq!(last[0].1.cseq(), Some((3, "NOTIFY")));
    }

    #[test]
    fn refresh_unsubscribe_expiry_and_a_481_end_subscriptions_and_copies_resume() {
        let mut sim = sim();
        let (resp, _) = subscribe(&mut sim, "bob", bob_addr(), ROOM, 600);
        let tag = resp.to().unwrap().tag().unwrap().to_string();
        let call_id = format!("sub-bob-{}", bob_addr());

        // A refresh: 200 and the full state again.
        let req = subscribe_req(&mut sim, "bob", bob_addr(), ROOM, &call_id, Some(&tag), 300);
        let (responses, out) = split(sim.udp(bob_addr(), &req), bob_addr());
        assert_eq!(responses[0].status(), Some(200));
        assert_eq!(responses[0].header("Expires"), Some("300"));
        let n = notifies_by_dst(&out);
        assert_eq!(n.len(), 1);
        assert_eq!(
            n[0].1.header("Subscription-State"),
            Some("active;expires=300")
        );
        assert!(body(&n[0].1).contains("state=\"full\""));
        assert!(answer(&mut sim, &out[0], 200).is_empty());

        // A dialog we do not know: 481.
        let req = subscribe_req(&mut sim, "bob", bob_addr(), ROOM, "nope", Some(&tag), 300);
        let resp = only_response(sim.udp(bob_addr(), &req), bob_addr(), "unknown dialog");
        assert_eq!(resp.status(), Some(481));

        // Unsubscribe: a final NOTIFY without a body.
        let req = subscribe_req(&mut sim, "bob", bob_addr(), ROOM, &call_id, Some(&tag), 0);
        let (responses, out) = split(sim.udp(bob_addr(), &req), bob_addr());
        assert_eq!(responses[0].status(), Some(200));
        let n = notifies_by_dst(&out);
        assert_eq!(n[0].1.header("Subscription-State"), Some("terminated"));
        assert!(n[0].1.body().is_empty());
        assert_eq!(sim.core.room_subscriptions(), 0);
        let (_, out) = post(
            &mut sim,
            "alice",
            alice_addr(),
            ROOM,
            "bob is back on MESSAGE",
        );
        assert_eq!(out.len(), 3, "copies to bob's two devices and carol again");

        // Expiry: terminated;reason=timeout at the end of the interval.
        subscribe(&mut sim, "carol", carol_addr(), ROOM, 60);
        let later = sim.run_until(sim.now + Duration::from_secs(61));
        let last = later
            .iter()
            .map(|(_, t)| parse(&t.bytes, "sent"))
            .rfind(|m| m.method() == Some("NOTIFY"))
            .expect("a final NOTIFY");
        assert_eq!(
            last.header("Subscription-State"),
            Some("terminated;reason=timeout")
        );
        assert_eq!(sim.core.room_subscriptions(), 0);

        // A subscriber whose agent answers a NOTIFY with 481 is dropped,
        // and gets posts as MESSAGE again.
        subscribe(&mut sim, "carol", carol_addr(), ROOM, 600);
        let (_, out) = post(&mut sim, "alice", alice_addr(), ROOM, "to carol by NOTIFY");
        let to_carol = out.iter().find(|t| t.dst == carol_addr()).unwrap();
        assert_eq!(parse(&to_carol.bytes, "n").method(), Some("NOTIFY"));
        assert!(answer(&mut sim, to_carol, 481).is_empty());
        assert_eq!(sim.core.room_subscriptions(), 0);
        let (_, out) = post(&mut sim, "alice", alice_addr(), ROOM, "to carol by MESSAGE");
        let to_carol = out.iter().find(|t| t.dst == carol_addr()).unwrap();
        assert_eq!(parse(&to_carol.bytes, "m").method(), Some("MESSAGE"));
    }

    #[test]
    fn private_rooms_are_read_by_members_only_public_rooms_by_any_user_of_the_domain() {
        let mut sim = sim();
        // Public: erin, in no room, may read; posting still needs a role.
        let (resp, initial) = subscribe(&mut sim, "erin", erin_addr(), ROOM, 600);
        assert_eq!((resp.status(), initial.len()), (Some(200), 1));
        let (code, _) = post(&mut sim, "erin", erin_addr(), ROOM, "/history");
        assert_eq!(code, 200, "erin may ask for a public room's history");
        let (code, _) = post(&mut sim, "erin", erin_addr(), ROOM, "hello");
        assert_eq!(code, 403, "but not post");
        // Someone who is no user of the domain reads nothing.
        let (resp, initial) = subscribe(&mut sim, "mallory", erin_addr(), ROOM, 600);
        assert_eq!((resp.status(), initial.len()), (Some(403), 0));

        // Private: erin's subscription ends, a new one is refused.
        let now = sim.now;
        sim.core.set_rooms(now, directory(true, BUDGET_MEMBERS));
        let out = notifies_by_dst(&sim.drain());
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].1.header("Subscription-State"),
            Some("terminated;reason=rejected")
        );
        let (resp, initial) = subscribe(&mut sim, "erin", erin_addr(), ROOM, 600);
        assert_eq!((resp.status(), initial.len()), (Some(403), 0));
        let (code, out) = post(&mut sim, "erin", erin_addr(), ROOM, "/history 5");
        assert_eq!((code, out.len()), (403, 0), "nor its history");
        let (resp, _) = subscribe(&mut sim, "carol", carol_addr(), ROOM, 600);
        assert_eq!(resp.status(), Some(200), "a read-only member reads");
        let (resp, _) = subscribe(
            &mut sim,
            "alice",
            alice_addr(),
            "sip:room-nope@example.test",
            600,
        );
        assert_eq!(resp.status(), Some(404));
    }

    /// Sends `/history ...` as `user`: the 200 and the body of the reply
    /// MESSAGE, which comes back over the command's flow.
    fn history(sim: &mut Sim, user: &str, flow: std::net::SocketAddr, command: &str) -> String {
        let (code, out) = post(sim, user, flow, ROOM, command);
        assert_eq!(code, 200, "{command}");
        assert_eq!(out.len(), 1, "one reply, no copies: {:?}", describe(&out));
        assert_eq!(out[0].dst, flow);
        let m = parse(&out[0].bytes, "reply");
        assert_eq!(m.method(), Some("MESSAGE"));
        assert_eq!(m.from().unwrap().uri, ROOM);
        assert_eq!(m.to().unwrap().uri, format!("sip:{user}@{DOMAIN}"));
        assert_eq!(
            m.request_uri(),
            Some(format!("sip:{user}@{flow}").as_str()),
            "the contact registered from that flow"
        );
        body(&m)
    }

    #[test]
    fn a_history_reply_is_a_delivery_from_the_room_retransmitted_until_answered_or_given_up() {
        let mut sim = sim();
        let ask = |sim: &mut Sim| {
            let req = post_req(sim, "alice", alice_addr(), ROOM, "/history");
            let (responses, out) = split(sim.udp(alice_addr(), &req), alice_addr());
            assert_eq!(responses.len(), 1);
            assert_eq!(responses[0].status(), Some(200));
            assert_eq!(out.len(), 1, "one reply: {:?}", describe(&out));
            out.into_iter().next().unwrap()
        };
        let reply = ask(&mut sim);
        let m = parse(&reply.bytes, "reply");
        assert!(
            m.header("From").unwrap().starts_with('<'),
            "the room itself answers, without a display name: {:?}",
            m.header("From")
        );
        assert!(m.call_id().unwrap().starts_with("room-"));
        assert!(
            answer(&mut sim, &reply, 200).is_empty(),
            "its answer is absorbed"
        );

        // Unanswered: retransmitted at T1, 2·T1, ... and given up at 64·T1,
        // counted as a failed room delivery.
        let reply = ask(&mut sim);
        let end = sim.now + Duration::from_secs(40);
        let later = sim.run_until(end);
        assert!(!later.is_empty());
        assert!(later.iter().all(|(_, t)| t.bytes == reply.bytes));
        let stats = sim.core.room_stats();
        assert_eq!(
            (
                stats.history_requests,
                stats.deliveries,
                stats.delivery_failures
            ),
            (2, 2, 1)
        );
        assert!(sim.core.poll_timeout().is_none_or(|t| t > end));
    }

    #[test]
    fn history_command_answers_with_the_newest_posts_or_those_since_a_time() {
        let mut sim = sim_with(CoreConfig {
            rooms: RoomConfig {
                history_posts: 3,
                ..RoomConfig::default()
            },
            ..config()
        });
        assert_eq!(
            history(&mut sim, "bob", bob_addr(), "/history"),
            "(no posts)\n"
        );
        sim.core.seed_room_history(
            "budget",
            vec![super::RoomPost {
                time_ns: ns_of("2026-11-30T09:00:00Z"),
                sender: format!("sip:dave@{DOMAIN}"),
                text: "from the archive".into(),
            }],
        );
        for (n, text) in ["first", "second\nline two", "third"].iter().enumerate() {
            sim.now += Duration::from_secs(60);
            let (code, _) = post(&mut sim, "alice", alice_addr(), ROOM, text);
            assert_eq!(code, 200, "post {n}");
        }
        assert_eq!(
            history(&mut sim, "bob", bob_addr(), "/history 2"),
            format!(
                "2026-12-01T10:02:00.000Z sip:alice@{DOMAIN}: second\n  line two\n\
                 2026-12-01T10:03:00.000Z sip:alice@{DOMAIN}: third\n"
            )
        );
        assert_eq!(
            history(&mut sim, "carol", carol_addr(), "/history 50"),
            format!(
                "2026-12-01T10:01:00.000Z sip:alice@{DOMAIN}: first\n\
                 2026-12-01T10:02:00.000Z sip:alice@{DOMAIN}: second\n  line two\n\
                 2026-12-01T10:03:00.000Z sip:alice@{DOMAIN}: third\n"
            ),
            "only the newest three are kept: the seeded post is gone"
        );
        assert_eq!(
            history(
                &mut sim,
                "bob",
                bob_phone(),
                "/history since 2026-12-01T11:02:00+01:00"
            ),
            format!(
                "2026-12-01T10:02:00.000Z sip:alice@{DOMAIN}: second\n  line two\n\
                 2026-12-01T10:03:00.000Z sip:alice@{DOMAIN}: third\n"
            ),
            "posts at or after the time, in any offset"
        );
        let texts: Vec<String> = sim
            .core
            .room_history("budget")
            .into_iter()
            .map(|p| p.text)
            .collect();
        assert_eq!(
            texts,
            ["first", "second\nline two", "third"],
            "commands are no posts"
        );

        for bad in [
            "/history -1",
            "/history 0",
            "/history since yesterday",
            "/historyx",
            "/history 2 3",
        ] {
            let req = post_req(&mut sim, "bob", bob_addr(), ROOM, bad);
            let resp = only_response(sim.udp(bob_addr(), &req), bob_addr(), bad);
            assert_eq!(resp.status(), Some(400), "{bad}");
            assert!(
                resp.header("Warning").unwrap().contains("usage: /history"),
                "{bad}"
            );
        }
        assert_eq!(sim.core.room_stats().history_requests, 4);
        assert_eq!(sim.core.room_stats().posts, 3);
    }

    #[test]
    fn a_history_reply_longer_than_max_body_keeps_the_newest_posts_and_says_so() {
        let mut sim = sim_with(CoreConfig {
            max_body_bytes: 400,
            ..config()
        });
        for n in 0..10 {
            sim.now += Duration::from_secs(1);
            post(
                &mut sim,
                "alice",
                alice_addr(),
                ROOM,
                &format!("post number {n} {}", "x".repeat(40)),
            );
        }
        let text = history(&mut sim, "bob", bob_addr(), "/history 10");
        assert!(text.len() <= 400, "{}", text.len());
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("(") && lines[0].contains("earlier posts left out"),
            "{text}"
        );
        let kept = lines.len() - 1;
        assert!(
            lines[0].starts_with(&format!("({} earlier", 10 - kept)),
            "{text}"
        );
        assert!(lines.last().unwrap().contains("post number 9"));
    }
}
