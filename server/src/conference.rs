//! Ad hoc multiparty IM: conferences, each a focus with a URI of its own
//! (`sip:conf-ID@DOMAIN`), made on demand through a factory URI
//! (`sip:conf-factory@DOMAIN` by default, [`ConferenceConfig`]).
//!
//! - A MESSAGE to the factory from a user of the served domain creates a
//!   conference with that user in it: 200 with the focus URI in
//!   `Contact`, then a MESSAGE from the focus to the creator saying so (a
//!   client that shows no Contact learns the URI from its sender).
//! - A participant REFERs someone to the focus (`Refer-To:
//!   <sip:carol@DOMAIN>`, RFC 4579): 202, a NOTIFY of the implicit
//!   subscription (`message/sipfrag` `200 OK`, terminated; none with
//!   `Refer-Sub: false`, RFC 4488), and the focus sends carol a MESSAGE
//!   invitation. She joins by addressing the focus: a MESSAGE (which is
//!   posted too) or a SUBSCRIBE to the `conference` event. Any user of the
//!   domain who knows the focus URI may join by SUBSCRIBE; a MESSAGE from
//!   someone neither invited nor in the conference is refused 403.
//!   `Refer-To: <sip:carol@DOMAIN;method=BYE>` removes carol.
//! - A subscriber gets the participants (RFC 4575 `conference-info`, full
//!   state, its `version` counting up) in a NOTIFY when it subscribes,
//!   whenever someone else joins or leaves, and a final one when it
//!   unsubscribes.
//! - A MESSAGE from a participant is answered 200 and copied, from the
//!   focus with the author as display name, to every binding of every
//!   other participant: deliveries of [`crate::fanout`], sharing the
//!   Call-ID `conf-ID@DOMAIN` (the focus URI without its scheme) with a
//!   CSeq each, so the archive holds them as one multiparty conversation.
//!   A participant posting faster than the `[rooms]` rate a room member
//!   may ([`RoomConfig`]) gets 503 with `Retry-After`, as in a room.
//! - A participant leaves with BYE to the focus, an unsubscribe
//!   (`Expires: 0`), the body `/leave`, or when a subscription expires.
//!   The conference ends when its last participant leaves, or after
//!   `idle_timeout` without a post, join or leave.
//!
//! Every change (created, invited, joined, left, ended) is an
//! [`Event::Conference`] for the archive's `room_events` table. A focus
//! URI that names no live conference gets 404; a user of the served
//! domain whose name starts `conf-` is still reached as a user.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sipvault_schemas::{RoomEventRow, Transport};
use sipvault_sip::{MessageBuilder, NameAddr, SipMessage, SipUri};

use crate::core::{Core, Event, Transmit, request_uri_user};
use crate::fanout::{Copy, CopyIds, Origin};
use crate::rooms::{PostRate, RoomConfig};

/// Start of the user part of every focus URI.
pub const FOCUS_USER_PREFIX: &str = "conf-";

/// Body of a MESSAGE to the focus that leaves the conference.
pub const LEAVE_COMMAND: &str = "/leave";

const ALLOW_AT_FOCUS: &str = "MESSAGE, REFER, SUBSCRIBE, BYE";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConferenceConfig {
    /// User part of the factory URI, `sip:FACTORY@DOMAIN`.
    pub factory_user: String,
    /// A conference without a post, join or leave for this long ends.
    pub idle_timeout: Duration,
    /// Participants (joined or invited) of one conference; a REFER or
    /// SUBSCRIBE beyond it is refused 403.
    pub max_participants: usize,
    /// Conferences at once; a request to the factory beyond it gets 503.
    pub max_conferences: usize,
}

impl Default for ConferenceConfig {
    fn default() -> Self {
        ConferenceConfig {
            factory_user: "conf-factory".into(),
            idle_timeout: Duration::from_secs(30 * 60),
            max_participants: 100,
            max_conferences: 1000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConferenceEventKind {
    Created,
    Invited,
    Joined,
    Left,
    Ended,
}

impl ConferenceEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConferenceEventKind::Created => "created",
            ConferenceEventKind::Invited => "invited",
            ConferenceEventKind::Joined => "joined",
            ConferenceEventKind::Left => "left",
            ConferenceEventKind::Ended => "ended",
        }
    }
}

/// A change in a conference, reported by the core for the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConferenceEvent {
    /// The focus URI.
    pub focus: String,
    /// URI of the participant concerned; `None` for the end.
    pub member: Option<String>,
    pub kind: ConferenceEventKind,
    /// URI of the user who caused it, or `server` (a timeout).
    pub by: String,
    /// Call-ID of the request that caused it.
    pub call_id: Option<String>,
}

impl ConferenceEvent {
    /// Its `room_events` row, stamped `time_ns` by the caller (the core
    /// reads no clock).
    pub fn to_row(&self, time_ns: i64) -> RoomEventRow {
        RoomEventRow {
            time_ns,
            kind: "conference".into(),
            room: self.focus.clone(),
            member: self.member.clone(),
            event: self.kind.as_str().into(),
            role: None,
            by_user: self.by.clone(),
            call_id: self.call_id.clone(),
            catalog_id: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConferenceStats {
    pub created: u64,
    pub ended: u64,
    pub posts: u64,
    pub deliveries: u64,
    /// Requests refused 403 (not a user of the domain, not a participant,
    /// conference full).
    pub refused: u64,
    /// Posts refused 503: the participant posted faster than `[rooms]`
    /// allows a member.
    pub rate_limited: u64,
    /// Copies and NOTIFYs without a final response within 64·T1, refused,
    /// or whose flow failed.
    pub delivery_failures: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// Referred, not yet joined: gets no copies until it addresses the focus.
    Invited,
    Joined,
}

/// A participant's subscription to the `conference` event: a dialog.
struct Subscription {
    call_id: String,
    /// Our tag in the dialog.
    tag: String,
    /// The subscriber's From, tag included: the To of our NOTIFYs.
    subscriber: String,
    /// The subscriber's Contact: the Request-URI of our NOTIFYs.
    contact: String,
    transport: Transport,
    flow: SocketAddr,
    expires_at: Instant,
    notify_cseq: u32,
}

struct Participant {
    status: Status,
    subscription: Option<Subscription>,
}

struct Conference {
    /// By user name (of the served domain).
    participants: BTreeMap<String, Participant>,
    last_activity: Instant,
    /// CSeq of the next MESSAGE from the focus: every one shares the
    /// conference's Call-ID.
    next_cseq: u32,
}

impl Conference {
    fn joined_except(&self, user: &str) -> Vec<String> {
        self.participants
            .iter()
            .filter(|(u, p)| p.status == Status::Joined && *u != user)
            .map(|(u, _)| u.clone())
            .collect()
    }

    fn next_timeout(&self, idle: Duration) -> Instant {
        self.participants
            .values()
            .filter_map(|p| p.subscription.as_ref().map(|s| s.expires_at))
            .fold(self.last_activity + idle, Instant::min)
    }
}

/// The conferences' state in the core.
pub(crate) struct Conferences {
    config: ConferenceConfig,
    /// By id (`conf-<token>`, the focus URI's user part).
    by_id: HashMap<String, Conference>,
    /// Post rate per (conference, participant), at the `[rooms]` limits.
    rate: PostRate,
    pub(crate) stats: ConferenceStats,
}

impl Conferences {
    pub(crate) fn new(config: ConferenceConfig, rooms: &RoomConfig) -> Conferences {
        Conferences {
            config,
            by_id: HashMap::new(),
            rate: PostRate::new(rooms),
            stats: ConferenceStats::default(),
        }
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.by_id
            .values()
            .map(|c| c.next_timeout(self.config.idle_timeout))
            .min()
    }
}

/// What a request to a conference URI is addressed to.
enum Target {
    Factory,
    /// A focus id, live or not.
    Focus(String),
}

impl Core {
    pub fn conference_stats(&self) -> &ConferenceStats {
        &self.conferences.stats
    }

    /// Conferences that are live now.
    pub fn live_conferences(&self) -> usize {
        self.conferences.by_id.len()
    }

    fn conference_target(&self, req: &SipMessage) -> Option<Target> {
        let user = request_uri_user(req)?;
        if user == self.conferences.config.factory_user {
            return Some(Target::Factory);
        }
        let focus = self.conferences.by_id.contains_key(&user)
            || (user.starts_with(FOCUS_USER_PREFIX) && !self.users.contains_key(&user));
        focus.then_some(Target::Focus(user))
    }

    /// Whether `req` is for the factory or a focus (live or not: a dead
    /// one is answered 404 here).
    pub(crate) fn is_conference_request(&self, req: &SipMessage) -> bool {
        self.conference_target(req).is_some()
    }

    fn focus_uri(&self, id: &str) -> String {
        format!("sip:{id}@{}", self.config.domain)
    }

    fn user_uri(&self, user: &str) -> String {
        format!("sip:{user}@{}", self.config.domain)
    }

    /// The user of the served domain an address names, if the user exists.
    fn served_user(&self, uri: &str) -> Option<String> {
        SipUri::parse(uri)
            .ok()
            .filter(|u| {
                u.host.eq_ignore_ascii_case(&self.config.domain)
                    && (u.scheme.eq_ignore_ascii_case("sip")
                        || u.scheme.eq_ignore_ascii_case("sips"))
            })
            .and_then(|u| u.user)
            .filter(|u| self.users.contains_key(u))
    }

    fn conference_event(
        &mut self,
        id: &str,
        member: Option<&str>,
        kind: ConferenceEventKind,
        by: &str,
        call_id: Option<&str>,
    ) {
        tracing::info!(
            conference = id,
            member,
            event = kind.as_str(),
            by,
            "conference"
        );
        let event = ConferenceEvent {
            focus: self.focus_uri(id),
            member: member.map(|m| self.user_uri(m)),
            kind,
            by: by.to_string(),
            call_id: call_id.map(str::to_string),
        };
        self.events.push_back(Event::Conference(event));
    }

    fn refuse(&mut self, peer: SocketAddr, key: &str, req: &SipMessage, why: &str) {
        self.conferences.stats.refused += 1;
        self.reject_event(peer, 403, why);
        self.respond(key, req, 403, "Forbidden", &[]);
    }

    /// A request to the factory or to a focus, in server transaction `key`.
    pub(crate) fn on_conference_request(
        &mut self,
        now: Instant,
        transport: Transport,
        peer: SocketAddr,
        key: &str,
        req: SipMessage,
    ) {
        let Some(target) = self.conference_target(&req) else {
            return;
        };
        let method = req.method().unwrap_or("").to_string();
        let id = match target {
            Target::Factory if method == "MESSAGE" => {
                self.create_conference(now, peer, key, &req);
                return;
            }
            Target::Factory => {
                self.reject_event(peer, 405, "the conference factory takes MESSAGE only");
                self.respond(
                    key,
                    &req,
                    405,
                    "Method Not Allowed",
                    &[("Allow".into(), "MESSAGE".into())],
                );
                return;
            }
            Target::Focus(id) if self.conferences.by_id.contains_key(&id) => id,
            Target::Focus(_) => {
                self.reject_event(peer, 404, "no such conference");
                self.respond(key, &req, 404, "Not Found", &[]);
                return;
            }
        };
        match method.as_str() {
            "MESSAGE" => self.conference_post(now, peer, key, &req, &id),
            "REFER" => self.conference_refer(now, transport, peer, key, &req, &id),
            "SUBSCRIBE" => self.conference_subscribe(now, transport, peer, key, &req, &id),
            "BYE" => {
                let user = req.from().and_then(|f| self.served_user(&f.uri));
                let participant = user.filter(|u| {
                    self.conferences.by_id[&id]
                        .participants
                        .contains_key(u.as_str())
                });
                let Some(user) = participant else {
                    self.reject_event(peer, 481, "not in the conference");
                    self.respond(key, &req, 481, "Call/Transaction Does Not Exist", &[]);
                    return;
                };
                self.respond(key, &req, 200, "OK", &[]);
                let by = self.user_uri(&user);
                self.leave_conference(now, &id, &user, &by, req.call_id());
            }
            _ => {
                self.reject_event(peer, 405, "method not allowed at a conference focus");
                self.respond(
                    key,
                    &req,
                    405,
                    "Method Not Allowed",
                    &[("Allow".into(), ALLOW_AT_FOCUS.into())],
                );
            }
        }
    }

    /// The user of the served domain who sent `req`; anyone else is
    /// refused 403 (and `None` returned).
    fn requesting_user(&mut self, peer: SocketAddr, key: &str, req: &SipMessage) -> Option<String> {
        let user = req.from().and_then(|f| self.served_user(&f.uri));
        if user.is_none() {
            self.refuse(
                peer,
                key,
                req,
                "conferences are for users of the served domain",
            );
        }
        user
    }

    fn create_conference(&mut self, now: Instant, peer: SocketAddr, key: &str, req: &SipMessage) {
        let Some(creator) = self.requesting_user(peer, key, req) else {
            return;
        };
        if self.conferences.by_id.len() >= self.conferences.config.max_conferences {
            self.reject_event(peer, 503, "too many conferences");
            self.respond(
                key,
                req,
                503,
                "Service Unavailable",
                &[("Retry-After".into(), "60".into())],
            );
            return;
        }
        let id = format!("{FOCUS_USER_PREFIX}{}", self.token());
        let focus = self.focus_uri(&id);
        self.conferences.by_id.insert(
            id.clone(),
            Conference {
                participants: BTreeMap::from([(
                    creator.clone(),
                    Participant {
                        status: Status::Joined,
                        subscription: None,
                    },
                )]),
                last_activity: now,
                next_cseq: 1,
            },
        );
        self.conferences.stats.created += 1;
        let by = self.user_uri(&creator);
        self.conference_event(
            &id,
            Some(&creator),
            ConferenceEventKind::Created,
            &by,
            req.call_id(),
        );
        self.respond(
            key,
            req,
            200,
            "OK",
            &[("Contact".into(), format!("<{focus}>"))],
        );
        let welcome = format!(
            "Conference {focus} is open. Invite people by REFER to it; write to it to post; send {LEAVE_COMMAND} to leave."
        );
        self.focus_says(now, &id, "conference", &welcome, &[creator]);
    }

    /// A MESSAGE of the focus itself (welcome, invitation) to `users`.
    fn focus_says(&mut self, now: Instant, id: &str, author: &str, text: &str, users: &[String]) {
        let focus = self.focus_uri(id);
        let call_id = format!("{id}@{}", self.config.domain);
        let Some(first_cseq) = self.conferences.by_id.get(id).map(|c| c.next_cseq) else {
            return;
        };
        let copy = Copy {
            origin: Origin::Conference,
            from_uri: &focus,
            author: Some(author),
            ids: CopyIds::Shared {
                call_id: &call_id,
                first_cseq,
            },
            content_type: "text/plain;charset=UTF-8",
            body: text.as_bytes(),
        };
        let sent = self.send_copies(now, &copy, users);
        if let Some(c) = self.conferences.by_id.get_mut(id) {
            c.next_cseq = c.next_cseq.wrapping_add(sent);
        }
    }

    /// Makes `user` a joined participant (from invited or from nothing).
    fn join_conference(&mut self, now: Instant, id: &str, user: &str, call_id: Option<&str>) {
        let Some(conference) = self.conferences.by_id.get_mut(id) else {
            return;
        };
        conference.last_activity = now;
        let participant = conference
            .participants
            .entry(user.to_string())
            .or_insert(Participant {
                status: Status::Invited,
                subscription: None,
            });
        if participant.status == Status::Joined {
            return;
        }
        participant.status = Status::Joined;
        let by = self.user_uri(user);
        self.conference_event(id, Some(user), ConferenceEventKind::Joined, &by, call_id);
        self.notify_watchers(now, id, user);
    }

    /// The conference's state, in a NOTIFY to every participant subscribed
    /// to it except `user` (whose own change it is): RFC 4575 subscribers
    /// learn of each join and leave.
    fn notify_watchers(&mut self, now: Instant, id: &str, user: &str) {
        let Some(conference) = self.conferences.by_id.get(id) else {
            return;
        };
        let watchers: Vec<(String, u64)> = conference
            .participants
            .iter()
            .filter(|(u, _)| u.as_str() != user)
            .filter_map(|(u, p)| {
                let left = p
                    .subscription
                    .as_ref()?
                    .expires_at
                    .checked_duration_since(now)?;
                Some((u.clone(), left.as_secs()))
            })
            .collect();
        for (watcher, left) in watchers {
            self.subscription_notify(now, id, &watcher, &format!("active;expires={left}"));
        }
    }

    /// Takes `user` out; the conference ends when no one joined is left.
    fn leave_conference(
        &mut self,
        now: Instant,
        id: &str,
        user: &str,
        by: &str,
        call_id: Option<&str>,
    ) {
        let Some(conference) = self.conferences.by_id.get_mut(id) else {
            return;
        };
        if conference.participants.remove(user).is_none() {
            return;
        }
        self.conferences.rate.forget(id, user);
        conference.last_activity = now;
        let empty = !conference
            .participants
            .values()
            .any(|p| p.status == Status::Joined);
        self.conference_event(id, Some(user), ConferenceEventKind::Left, by, call_id);
        if empty {
            self.end_conference(id, by, call_id);
        } else {
            self.notify_watchers(now, id, user);
        }
    }

    fn end_conference(&mut self, id: &str, by: &str, call_id: Option<&str>) {
        if let Some(conference) = self.conferences.by_id.remove(id) {
            for user in conference.participants.keys() {
                self.conferences.rate.forget(id, user);
            }
            self.conferences.stats.ended += 1;
            self.conference_event(id, None, ConferenceEventKind::Ended, by, call_id);
        }
    }

    fn conference_post(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        key: &str,
        req: &SipMessage,
        id: &str,
    ) {
        let user = req.from().and_then(|f| self.served_user(&f.uri));
        let status = user.as_ref().and_then(|u| {
            self.conferences.by_id[id]
                .participants
                .get(u.as_str())
                .map(|p| p.status)
        });
        let (Some(user), Some(_)) = (user, status) else {
            self.refuse(peer, key, req, &format!("not a participant of {id}"));
            return;
        };
        if String::from_utf8_lossy(req.body())
            .trim()
            .eq_ignore_ascii_case(LEAVE_COMMAND)
        {
            self.respond(key, req, 200, "OK", &[]);
            let by = self.user_uri(&user);
            self.leave_conference(now, id, &user, &by, req.call_id());
            return;
        }
        if self.hops_left(peer, key, req).is_none() {
            return;
        }
        if let Err(wait) = self.conferences.rate.take(now, id, &user) {
            self.conferences.stats.rate_limited += 1;
            self.refuse_over_rate(peer, key, req, &format!("conference {id}"), &user, wait);
            return;
        }
        // An invited user who writes to the focus joins.
        self.join_conference(now, id, &user, req.call_id());
        self.respond(key, req, 200, "OK", &[]);
        let focus = self.focus_uri(id);
        let call_id = format!("{id}@{}", self.config.domain);
        let conference = &self.conferences.by_id[id];
        let others = conference.joined_except(&user);
        let copy = Copy {
            origin: Origin::Conference,
            from_uri: &focus,
            author: Some(&user),
            ids: CopyIds::Shared {
                call_id: &call_id,
                first_cseq: conference.next_cseq,
            },
            content_type: req.header("Content-Type").unwrap_or("text/plain"),
            body: req.body(),
        };
        let sent = self.send_copies(now, &copy, &others);
        self.conferences.stats.posts += 1;
        self.conferences.stats.deliveries += u64::from(sent);
        if let Some(c) = self.conferences.by_id.get_mut(id) {
            c.next_cseq = c.next_cseq.wrapping_add(sent);
            c.last_activity = now;
        }
    }

    fn conference_refer(
        &mut self,
        now: Instant,
        transport: Transport,
        peer: SocketAddr,
        key: &str,
        req: &SipMessage,
        id: &str,
    ) {
        let referrer = req.from().and_then(|f| self.served_user(&f.uri));
        let Some(referrer) = referrer.filter(|u| {
            self.conferences.by_id[id]
                .participants
                .get(u.as_str())
                .is_some_and(|p| p.status == Status::Joined)
        }) else {
            self.refuse(peer, key, req, &format!("only participants refer to {id}"));
            return;
        };
        let Some(refer_to) = req
            .header("Refer-To")
            .and_then(|v| NameAddr::parse(v).ok())
            .and_then(|a| a.sip_uri())
        else {
            self.reject_event(peer, 400, "REFER without a usable Refer-To");
            self.respond(key, req, 400, "Bad Request", &[]);
            return;
        };
        let target = refer_to
            .user
            .as_ref()
            .map(|u| self.user_uri(u))
            .and_then(|uri| self.served_user(&uri))
            .filter(|_| refer_to.host.eq_ignore_ascii_case(&self.config.domain));
        let Some(target) = target else {
            self.reject_event(peer, 404, "Refer-To names no user of the served domain");
            self.respond(key, req, 404, "Not Found", &[]);
            return;
        };
        let by = self.user_uri(&referrer);
        let removal = refer_to
            .param("method")
            .is_some_and(|m| m.eq_ignore_ascii_case("BYE"));
        let conference = &self.conferences.by_id[id];
        let known = conference.participants.contains_key(&target);
        if removal {
            if !known {
                self.reject_event(peer, 404, "Refer-To names no participant");
                self.respond(key, req, 404, "Not Found", &[]);
                return;
            }
        } else if !known
            && conference.participants.len() >= self.conferences.config.max_participants
        {
            self.refuse(peer, key, req, &format!("{id} is full"));
            return;
        }
        // Answered before the membership changes: a removal may end the
        // conference, and the referrer's transaction is answered still.
        let subscribe = !req
            .header("Refer-Sub")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("false"));
        let tag = self.token();
        if subscribe {
            self.respond_with_tag(key, req, 202, "Accepted", &[], Some(tag.clone()));
            self.refer_notify(now, transport, peer, req, id, &tag);
        } else {
            self.respond_with_tag(
                key,
                req,
                200,
                "OK",
                &[("Refer-Sub".into(), "false".into())],
                Some(tag),
            );
        }
        if removal {
            self.leave_conference(now, id, &target, &by, req.call_id());
            return;
        }
        let Some(conference) = self.conferences.by_id.get_mut(id) else {
            return;
        };
        conference.last_activity = now;
        if known {
            return;
        }
        conference.participants.insert(
            target.clone(),
            Participant {
                status: Status::Invited,
                subscription: None,
            },
        );
        self.conference_event(
            id,
            Some(&target),
            ConferenceEventKind::Invited,
            &by,
            req.call_id(),
        );
        let focus = self.focus_uri(id);
        let invitation = format!(
            "{referrer} invites you to the conference {focus}. Reply to this message to join; send {LEAVE_COMMAND} to leave."
        );
        self.focus_says(now, id, &referrer, &invitation, &[target]);
    }

    /// The one NOTIFY of a REFER's implicit subscription (RFC 3515): the
    /// referral is done, its outcome `200 OK`, the subscription over.
    fn refer_notify(
        &mut self,
        now: Instant,
        transport: Transport,
        peer: SocketAddr,
        refer: &SipMessage,
        id: &str,
        tag: &str,
    ) {
        let target = refer
            .contacts()
            .into_iter()
            .find_map(|c| c.addr.map(|a| a.uri))
            .or_else(|| refer.from().map(|f| f.uri.clone()))
            .unwrap_or_default();
        let focus = self.focus_uri(id);
        let (branch, via) = self.new_via(transport);
        let mut b = MessageBuilder::request("NOTIFY", &target);
        b.header("Via", &via)
            .header("Max-Forwards", "70")
            .header("From", &format!("<{focus}>;tag={tag}"))
            .header("To", refer.header("From").unwrap_or(""))
            .header("Call-ID", refer.call_id().unwrap_or(""))
            .header("CSeq", "1 NOTIFY")
            .header("Event", "refer")
            .header("Subscription-State", "terminated;reason=noresource")
            .header("Contact", &format!("<{focus}>"))
            .header("Server", crate::core::SERVER_HEADER)
            .body("message/sipfrag;version=2.0", b"SIP/2.0 200 OK\r\n");
        let transmit = Transmit {
            transport,
            dst: peer,
            bytes: b.build(),
        };
        self.send_delivery(now, Origin::Conference, branch, transmit);
    }

    fn conference_subscribe(
        &mut self,
        now: Instant,
        transport: Transport,
        peer: SocketAddr,
        key: &str,
        req: &SipMessage,
        id: &str,
    ) {
        let Some(user) = self.requesting_user(peer, key, req) else {
            return;
        };
        let package = req
            .header("Event")
            .and_then(|e| e.split(';').next())
            .map(str::trim)
            .unwrap_or("");
        if !package.eq_ignore_ascii_case("conference") {
            self.reject_event(peer, 489, "a focus has the conference event package only");
            self.respond(
                key,
                req,
                489,
                "Bad Event",
                &[("Allow-Events".into(), "conference".into())],
            );
            return;
        }
        let expires = req
            .expires()
            .unwrap_or(self.config.default_expires)
            .min(self.config.max_expires);
        if self.refused_too_brief(peer, key, req, expires, "subscription interval too brief") {
            return;
        }
        let call_id = req.call_id().unwrap_or("").to_string();
        let existing_tag = self.conferences.by_id[id]
            .participants
            .get(&user)
            .and_then(|p| p.subscription.as_ref())
            .filter(|s| s.call_id == call_id)
            .map(|s| s.tag.clone());
        let tag = existing_tag
            .or_else(|| req.to().and_then(|t| t.tag().map(str::to_string)))
            .unwrap_or_else(|| self.token());
        let focus = self.focus_uri(id);
        let headers = [
            ("Expires".to_string(), expires.to_string()),
            ("Contact".to_string(), format!("<{focus}>")),
        ];
        let known = self.conferences.by_id[id].participants.contains_key(&user);
        if expires == 0 {
            if !known {
                self.reject_event(peer, 481, "no subscription to unsubscribe");
                self.respond(key, req, 481, "Subscription Does Not Exist", &[]);
                return;
            }
            self.respond_with_tag(key, req, 200, "OK", &headers, Some(tag));
            self.subscription_notify(now, id, &user, "terminated;reason=noresource");
            let by = self.user_uri(&user);
            self.leave_conference(now, id, &user, &by, req.call_id());
            return;
        }
        if !known
            && self.conferences.by_id[id].participants.len()
                >= self.conferences.config.max_participants
        {
            self.refuse(peer, key, req, &format!("{id} is full"));
            return;
        }
        self.join_conference(now, id, &user, req.call_id());
        let contact = req
            .contacts()
            .into_iter()
            .find_map(|c| c.addr.map(|a| a.uri))
            .or_else(|| req.from().map(|f| f.uri.clone()))
            .unwrap_or_default();
        let subscriber = req.header("From").unwrap_or("").to_string();
        if let Some(p) = self
            .conferences
            .by_id
            .get_mut(id)
            .and_then(|c| c.participants.get_mut(&user))
        {
            let notify_cseq = p.subscription.as_ref().map_or(0, |s| s.notify_cseq);
            p.subscription = Some(Subscription {
                call_id,
                tag: tag.clone(),
                subscriber,
                contact,
                transport,
                flow: peer,
                expires_at: now + Duration::from_secs(u64::from(expires)),
                notify_cseq,
            });
        }
        self.respond_with_tag(key, req, 200, "OK", &headers, Some(tag));
        self.subscription_notify(now, id, &user, &format!("active;expires={expires}"));
    }

    /// A NOTIFY of `user`'s subscription to conference `id` with the
    /// conference's participants (RFC 4575 `conference-info`, full state).
    fn subscription_notify(&mut self, now: Instant, id: &str, user: &str, state: &str) {
        let focus = self.focus_uri(id);
        let domain = self.config.domain.clone();
        let Some(conference) = self.conferences.by_id.get_mut(id) else {
            return;
        };
        let users: String = conference
            .participants
            .iter()
            .map(|(u, p)| {
                let status = match p.status {
                    Status::Joined => "connected",
                    Status::Invited => "pending",
                };
                format!(
                    "<user entity=\"sip:{u}@{domain}\"><endpoint><status>{status}</status></endpoint></user>"
                )
            })
            .collect();
        let Some(sub) = conference
            .participants
            .get_mut(user)
            .and_then(|p| p.subscription.as_mut())
        else {
            return;
        };
        sub.notify_cseq += 1;
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<conference-info xmlns=\"urn:ietf:params:xml:ns:conference-info\" entity=\"{focus}\" state=\"full\" version=\"{}\"><users>{users}</users></conference-info>\n",
            sub.notify_cseq
        );
        let (contact, subscriber, call_id, tag, cseq, transport, flow) = (
            sub.contact.clone(),
            sub.subscriber.clone(),
            sub.call_id.clone(),
            sub.tag.clone(),
            sub.notify_cseq,
            sub.transport,
            sub.flow,
        );
        let (branch, via) = self.new_via(transport);
        let mut b = MessageBuilder::request("NOTIFY", &contact);
        b.header("Via", &via)
            .header("Max-Forwards", "70")
            .header("From", &format!("<{focus}>;tag={tag}"))
            .header("To", &subscriber)
            .header("Call-ID", &call_id)
            .header("CSeq", &format!("{cseq} NOTIFY"))
            .header("Event", "conference")
            .header("Subscription-State", state)
            .header("Contact", &format!("<{focus}>"))
            .header("Server", crate::core::SERVER_HEADER)
            .body("application/conference-info+xml", body.as_bytes());
        let transmit = Transmit {
            transport,
            dst: flow,
            bytes: b.build(),
        };
        self.send_delivery(now, Origin::Conference, branch, transmit);
    }

    /// Ends conference `id` on the server's own account: every joined
    /// participant leaves, then it ends.
    fn close_conference(&mut self, id: &str) {
        let Some(conference) = self.conferences.by_id.get(id) else {
            return;
        };
        for user in conference.joined_except("") {
            self.conference_event(id, Some(&user), ConferenceEventKind::Left, "server", None);
        }
        self.end_conference(id, "server", None);
    }

    /// Ends every conference (the server is stopping, and conferences
    /// live in its memory only), so the archive records their end.
    pub fn end_all_conferences(&mut self) {
        let ids: Vec<String> = self.conferences.by_id.keys().cloned().collect();
        for id in ids {
            self.close_conference(&id);
        }
    }

    /// Subscriptions that expired leave; idle conferences end.
    pub(crate) fn conference_timeouts(&mut self, now: Instant) {
        let idle = self.conferences.config.idle_timeout;
        let due: Vec<String> = self
            .conferences
            .by_id
            .iter()
            .filter(|(_, c)| c.next_timeout(idle) <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            let Some(conference) = self.conferences.by_id.get(&id) else {
                continue;
            };
            if conference.last_activity + idle <= now {
                tracing::info!(conference = %id, "conference idle: ended");
                self.close_conference(&id);
                continue;
            }
            let expired: Vec<String> = conference
                .participants
                .iter()
                .filter(|(_, p)| p.subscription.as_ref().is_some_and(|s| s.expires_at <= now))
                .map(|(u, _)| u.clone())
                .collect();
            for user in expired {
                self.leave_conference(now, &id, &user, "server", None);
            }
        }
    }
}

#[cfg(test)]
mod tests;
