//! The presence agent inside the core: PUBLISH and SUBSCRIBE addressed to a
//! served user are answered by [`crate::presence::PresenceAgent`], and its
//! NOTIFYs leave in client transactions of their own (retransmitted on UDP,
//! given up at 64·T1). Every one of them passes the tap like any message.
//! The chat rooms' NOTIFYs (`rooms.rs`) leave the same way: both keep their
//! subscriptions in a [`Notifier`].

use std::net::SocketAddr;
use std::time::Instant;

use sipvault_schemas::Transport;
use sipvault_sip::SipMessage;

use crate::core::{Core, Transmit, request_uri_user};
use crate::subscription::{Notifier, Reply};

impl Core {
    /// A PUBLISH or SUBSCRIBE (`method`) in server transaction `key`.
    pub(crate) fn on_presence(
        &mut self,
        now: Instant,
        transport: Transport,
        peer: SocketAddr,
        key: &str,
        req: &SipMessage,
        method: &str,
    ) {
        // An in-dialog SUBSCRIBE (refresh, unsubscribe) is addressed to our
        // Contact; its subscription names the presentity.
        let in_dialog = method == "SUBSCRIBE" && req.to().and_then(|t| t.tag()).is_some();
        let presentity = request_uri_user(req).filter(|u| in_dialog || self.users.contains_key(u));
        let Some(presentity) = presentity.or_else(|| in_dialog.then(String::new)) else {
            self.reject_event(peer, 404, "unknown presentity");
            self.respond(key, req, 404, "Not Found", &[]);
            return;
        };
        let reply = if method == "PUBLISH" {
            self.presence.publish(now, &presentity, req)
        } else {
            self.presence
                .subscribe(now, &presentity, req, transport, peer)
        };
        self.answer_reply(peer, key, req, reply);
        self.send_notifies(now);
    }

    /// Answers a PUBLISH or SUBSCRIBE with what its agent decided (an
    /// error is also an event).
    pub(crate) fn answer_reply(
        &mut self,
        peer: SocketAddr,
        key: &str,
        req: &SipMessage,
        reply: Reply,
    ) {
        if reply.code >= 300 {
            self.reject_event(peer, reply.code, reply.reason);
        }
        self.respond_with_tag(
            key,
            req,
            reply.code,
            reply.reason,
            &reply.headers,
            reply.to_tag,
        );
    }

    /// The subscriptions of an event package.
    fn notifier(&mut self, package: Package) -> &mut Notifier {
        match package {
            Package::Presence => self.presence.watchers_mut(),
            Package::ChatRoom => self.rooms.subscribers_mut(),
        }
    }

    /// Sends every NOTIFY the presence agent or the rooms may send now (at
    /// most one in flight per subscription), each with a Via of ours, in a
    /// client transaction its notifier follows.
    pub(crate) fn send_notifies(&mut self, now: Instant) {
        for package in [Package::Presence, Package::ChatRoom] {
            while let Some(notify) = self.notifier(package).poll_notify(now) {
                let (branch, via) = self.new_via(notify.transport);
                let bytes = with_via(&notify.request, &via);
                let t1 = self.config.t1;
                self.notifier(package)
                    .sent(now, branch, &notify, bytes.clone(), t1);
                if let Package::ChatRoom = package {
                    self.rooms.stats.notifies += 1;
                }
                self.transmits.push_back(Transmit {
                    transport: notify.transport,
                    dst: notify.dst,
                    bytes,
                });
            }
        }
    }

    /// True when `msg` answers one of our NOTIFYs (and was handled here).
    /// A final answer lets its dialog's next NOTIFY go, with what was
    /// queued meanwhile.
    pub(crate) fn notify_response(&mut self, now: Instant, msg: &SipMessage) -> bool {
        let branch = msg
            .vias()
            .first()
            .and_then(|v| v.branch().map(str::to_string));
        let (Some(branch), Some(code)) = (branch, msg.status()) else {
            return false;
        };
        let ours = [Package::Presence, Package::ChatRoom]
            .into_iter()
            .any(|package| self.notifier(package).response(&branch, code));
        if ours && code >= 200 {
            self.send_notifies(now);
        }
        ours
    }

    /// Expiries of publications and subscriptions, NOTIFY retransmissions.
    pub(crate) fn presence_timeouts(&mut self, now: Instant) {
        self.presence.handle_timeout(now);
        let t2 = self.config.t2;
        for package in [Package::Presence, Package::ChatRoom] {
            for (transport, dst, bytes) in self.notifier(package).retransmissions(now, t2) {
                self.transmits.push_back(Transmit {
                    transport,
                    dst,
                    bytes,
                });
            }
        }
        self.send_notifies(now);
    }
}

/// The event packages whose NOTIFYs the core sends.
#[derive(Debug, Clone, Copy)]
enum Package {
    Presence,
    ChatRoom,
}

/// `request` (built by us, without a Via) with `via` as its first header:
/// spliced in after the request line rather than parsed and rebuilt, as a
/// room's NOTIFYs may carry kilobytes of posts.
fn with_via(request: &[u8], via: &str) -> Vec<u8> {
    let line_end = request
        .windows(2)
        .position(|w| w == b"\r\n")
        .map_or(request.len(), |i| i + 2);
    let mut out = Vec::with_capacity(request.len() + via.len() + 7);
    out.extend_from_slice(&request[..line_end]);
    out.extend_from_slice(b"Via: ");
    out.extend_from_slice(via.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&request[line_end..]);
    out
}
