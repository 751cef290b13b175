//! The presence agent inside the core: PUBLISH and SUBSCRIBE addressed to a
//! served user are answered by [`crate::presence::PresenceAgent`], and its
//! NOTIFYs leave in client transactions of their own (retransmitted on UDP,
//! given up at 64·T1). Every one of them passes the tap like any message.

use std::net::SocketAddr;
use std::time::Instant;

use sipvault_schemas::Transport;
use sipvault_sip::{MessageBuilder, SipMessage, SipUri};

use crate::core::{Core, Transmit};

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
        let presentity = req
            .request_uri()
            .and_then(|u| SipUri::parse(u).ok())
            .and_then(|u| u.user)
            .filter(|u| in_dialog || self.users.contains_key(u));
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
        self.send_notifies(now);
    }

    /// Sends every NOTIFY the agent has queued, each with a Via of ours.
    pub(crate) fn send_notifies(&mut self, now: Instant) {
        while let Some(notify) = self.presence.poll_notify() {
            let Ok(parsed) = SipMessage::parse(&notify.request) else {
                continue;
            };
            let (branch, via) = self.new_via(notify.transport);
            let mut b = MessageBuilder::from_message(&parsed);
            b.prepend_header("Via", &via);
            let bytes = b.build();
            self.presence
                .sent(now, branch, &notify, bytes.clone(), self.config.t1);
            self.transmits.push_back(Transmit {
                transport: notify.transport,
                dst: notify.dst,
                bytes,
            });
        }
    }

    /// True when `msg` answers one of our NOTIFYs (and was handled here).
    pub(crate) fn presence_response(&mut self, msg: &SipMessage) -> bool {
        let branch = msg
            .vias()
            .first()
            .and_then(|v| v.branch().map(str::to_string));
        match (branch, msg.status()) {
            (Some(branch), Some(code)) => self.presence.response(&branch, code),
            _ => false,
        }
    }

    /// Expiries of publications and subscriptions, NOTIFY retransmissions.
    pub(crate) fn presence_timeouts(&mut self, now: Instant) {
        self.presence.handle_timeout(now);
        for (transport, dst, bytes) in self.presence.retransmissions(now, self.config.t2) {
            self.transmits.push_back(Transmit {
                transport,
                dst,
                bytes,
            });
        }
        self.send_notifies(now);
    }
}
