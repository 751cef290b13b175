//! Federation with other SIP domains, Lync's "federated partners": a
//! static table of peer domains, each served by one server at a fixed
//! address, reached over TLS (or TCP when so configured).
//!
//! - Outbound: a request whose Request-URI (or next Route) names a peer
//!   domain, or the peer server's own address, goes to that server. Only
//!   requests from our own domain, or of a dialog we record-routed, are
//!   sent on: the server is no relay between two foreign domains.
//! - Inbound: a request whose From names a peer domain is accepted only
//!   from that peer's configured address; from anywhere else it gets 403.
//!   A peer's requests then take the ordinary paths (relay to a local
//!   user, presence agent, proxy), and come back over the connection they
//!   arrived on, which is how a peer's NOTIFYs reach our subscribers.
//!
//! The core only picks the address and transport; the IO layer opens the
//! connection and checks the peer's certificate against its domain.

use std::net::{IpAddr, SocketAddr};

use sipvault_schemas::Transport;
use sipvault_sip::{MessageBuilder, SipMessage, SipUri};

use crate::core::{Core, SERVER_HEADER, Transmit};
use crate::proxy::effective_port;

/// One federated domain and the server that serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederationPeer {
    pub domain: String,
    /// The peer server's TLS (or TCP) listener; inbound requests from the
    /// domain must come from this IP address.
    pub addr: SocketAddr,
    /// [`Transport::Tls`] unless configured as TCP.
    pub transport: Transport,
}

impl Core {
    /// The peer that `uri` names: by its domain, or by the address of the
    /// peer's server (a Record-Route or Contact the peer wrote).
    pub(crate) fn federation_peer(&self, uri: &SipUri) -> Option<&FederationPeer> {
        let ip = uri.host_unbracketed().parse::<IpAddr>().ok();
        self.config.federation.iter().find(|p| {
            p.domain.eq_ignore_ascii_case(&uri.host)
                || ip.is_some_and(|ip| ip == p.addr.ip() && effective_port(uri) == p.addr.port())
        })
    }

    /// Whether `msg`'s Request-URI is served by a federated peer rather
    /// than by us.
    pub(crate) fn is_for_peer(&self, msg: &SipMessage) -> bool {
        // Every request asks: without peers, no URI needs parsing.
        !self.config.federation.is_empty()
            && msg
                .request_uri()
                .and_then(|u| SipUri::parse(u).ok())
                .is_some_and(|u| self.federation_peer(&u).is_some())
    }

    /// Whether `msg` comes from a user of the domain we serve.
    pub(crate) fn is_from_our_domain(&self, msg: &SipMessage) -> bool {
        msg.from()
            .and_then(|f| f.sip_uri())
            .is_some_and(|u| u.host.eq_ignore_ascii_case(&self.config.domain))
    }

    /// Why `msg` from `peer` must be refused: its From names a federated
    /// domain but it did not come from that domain's server.
    pub(crate) fn federation_refusal(&self, msg: &SipMessage, peer: SocketAddr) -> Option<String> {
        if self.config.federation.is_empty() {
            return None;
        }
        let from = msg.from().and_then(|f| f.sip_uri())?;
        let expected = self
            .config
            .federation
            .iter()
            .find(|p| p.domain.eq_ignore_ascii_case(&from.host))?;
        (expected.addr.ip() != peer.ip()).then(|| {
            format!(
                "request from federated domain {} came from {}, not from its server {}",
                expected.domain,
                peer.ip(),
                expected.addr.ip()
            )
        })
    }

    /// Answers `msg` 403 without a transaction: the request is not ours to
    /// hold any state for, and a retransmission is refused the same way.
    pub(crate) fn refuse_statelessly(
        &mut self,
        transport: Transport,
        peer: SocketAddr,
        msg: &SipMessage,
        why: &str,
    ) {
        self.reject_event(peer, 403, why);
        let tag = self.token();
        let mut b = MessageBuilder::response_to(msg, 403, "Forbidden");
        b.add_to_tag(&tag);
        b.header("Server", SERVER_HEADER);
        b.header(
            "Warning",
            &format!(
                "399 {} \"not accepted from this address\"",
                self.config.domain
            ),
        );
        self.transmits.push_back(Transmit {
            transport,
            dst: peer,
            bytes: b.build(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core_tests::{DOMAIN, Sim, addr, alice_addr, config, describe, parse};

    const PEER: &str = "partner.test";

    fn peer_tls() -> SocketAddr {
        addr("203.0.113.5:5061")
    }

    fn federated() -> Sim {
        let mut sim = Sim::new(crate::core::CoreConfig {
            federation: vec![FederationPeer {
                domain: PEER.into(),
                addr: peer_tls(),
                transport: Transport::Tls,
            }],
            ..config()
        });
        let resp = sim.register(
            "alice",
            "alice-pw",
            alice_addr(),
            &format!("<sip:alice@{}>", alice_addr()),
            Some(3600),
        );
        assert_eq!(resp.status(), Some(200), "alice registers");
        sim.events();
        sim
    }

    /// A request `method` from `from` (an AOR) to `ruri`, sent from `flow`.
    fn request(sim: &mut Sim, method: &str, from: &str, ruri: &str, flow: SocketAddr) -> Vec<u8> {
        let id = sim.next_id();
        let mut b = MessageBuilder::request(method, ruri);
        b.header(
            "Via",
            &format!("SIP/2.0/TLS {flow};branch=z9hG4bK-fed-{id};rport"),
        )
        .header("Max-Forwards", "70")
        .header("From", &format!("<{from}>;tag=f{id}"))
        .header("To", &format!("<{ruri}>"))
        .header("Call-ID", &format!("fed-{id}@test"))
        .header("CSeq", &format!("1 {method}"))
        .header("Contact", &format!("<sip:x@{flow}>"));
        if method == "SUBSCRIBE" {
            b.header("Event", "presence").header("Expires", "600");
        }
        if method == "MESSAGE" {
            b.body("text/plain", b"hi");
        }
        b.build()
    }

    #[test]
    fn requests_for_a_peer_domain_go_to_its_server_over_tls() {
        let mut sim = federated();
        for method in ["MESSAGE", "SUBSCRIBE", "OPTIONS"] {
            let req = request(
                &mut sim,
                method,
                &format!("sip:alice@{DOMAIN}"),
                &format!("sip:bob@{PEER}"),
                alice_addr(),
            );
            let tx = sim.udp(alice_addr(), &req);
            assert_eq!(
                tx.len(),
                1,
                "{method}: one relayed request: {:?}",
                describe(&tx)
            );
            assert_eq!(
                (tx[0].transport, tx[0].dst),
                (Transport::Tls, peer_tls()),
                "{method} for {PEER} goes to its server over TLS"
            );
            let out = parse(&tx[0].bytes, method);
            assert_eq!(out.request_uri(), Some(format!("sip:bob@{PEER}").as_str()));
            assert_eq!(out.vias().len(), 2, "{method}: our Via on top");
            assert_eq!(out.max_forwards(), Some(69));
        }
    }

    #[test]
    fn a_call_to_a_peer_is_record_routed_on_both_transports() {
        let mut sim = federated();
        let mut req = request(
            &mut sim,
            "INVITE",
            &format!("sip:alice@{DOMAIN}"),
            &format!("sip:bob@{PEER}"),
            alice_addr(),
        );
        // Over UDP from alice.
        req = String::from_utf8(req)
            .unwrap()
            .replace("SIP/2.0/TLS", "SIP/2.0/UDP")
            .into_bytes();
        let tx = sim.udp(alice_addr(), &req);
        let relayed: Vec<_> = tx.iter().filter(|t| t.dst == peer_tls()).collect();
        assert_eq!(
            relayed.len(),
            1,
            "INVITE relayed to the peer: {:?}",
            describe(&tx)
        );
        assert_eq!(relayed[0].transport, Transport::Tls);
        let out = parse(&relayed[0].bytes, "INVITE");
        let rr = out.header_all("record-route");
        assert_eq!(
            rr,
            vec![
                "<sip:192.0.2.1:5061;transport=tls;lr>",
                "<sip:192.0.2.1:5060;transport=udp;lr>"
            ],
            "one Record-Route facing the peer (TLS), one facing alice (UDP)"
        );
    }

    #[test]
    fn a_peer_domain_is_accepted_only_from_its_server() {
        let mut sim = federated();
        let from = format!("sip:bob@{PEER}");
        let to = format!("sip:alice@{DOMAIN}");
        let forged_from = addr("198.51.100.66:5061");
        let req = request(&mut sim, "MESSAGE", &from, &to, forged_from);
        let tx = sim.deliver(Transport::Tls, forged_from, &req);
        assert_eq!(tx.len(), 1, "only an answer: {:?}", describe(&tx));
        assert_eq!(tx[0].dst, forged_from);
        assert_eq!(parse(&tx[0].bytes, "answer").status(), Some(403));

        let from_peer = addr("203.0.113.5:40123");
        let req = request(&mut sim, "MESSAGE", &from, &to, from_peer);
        let tx = sim.deliver(Transport::Tls, from_peer, &req);
        assert_eq!(tx.len(), 1, "relayed to alice: {:?}", describe(&tx));
        assert_eq!(tx[0].dst, alice_addr(), "the peer's IM reaches alice");
    }

    #[test]
    fn no_relay_between_two_foreign_domains() {
        let mut sim = federated();
        let stranger = addr("198.51.100.77:5060");
        let req = request(
            &mut sim,
            "MESSAGE",
            "sip:carol@elsewhere.test",
            &format!("sip:bob@{PEER}"),
            stranger,
        );
        let tx = sim.udp(stranger, &req);
        assert_eq!(tx.len(), 1, "only an answer: {:?}", describe(&tx));
        assert_eq!(parse(&tx[0].bytes, "answer").status(), Some(403));
    }

    #[test]
    fn a_notify_from_the_peer_reaches_the_registered_subscriber() {
        let mut sim = federated();
        let from_peer = addr("203.0.113.5:40123");
        let contact = format!("sip:alice@{}", alice_addr());
        let mut req = request(
            &mut sim,
            "NOTIFY",
            &format!("sip:bob@{PEER}"),
            &contact,
            from_peer,
        );
        req = String::from_utf8(req)
            .unwrap()
            .replace(
                "CSeq: 1 NOTIFY",
                "CSeq: 1 NOTIFY\r\nEvent: presence\r\nSubscription-State: active;expires=600",
            )
            .into_bytes();
        let tx = sim.deliver(Transport::Tls, from_peer, &req);
        assert_eq!(tx.len(), 1, "NOTIFY relayed: {:?}", describe(&tx));
        assert_eq!(tx[0].dst, alice_addr(), "to alice's registered flow");
        assert_eq!(parse(&tx[0].bytes, "NOTIFY").method(), Some("NOTIFY"));
    }
}
