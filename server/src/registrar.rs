//! Registrar state: bindings of an address of record to contacts, and the
//! digest nonces handed out in challenges. Pure data, driven by the core.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sipvault_schemas::Transport;

/// Where a registered user agent can be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The Contact URI, used as Request-URI when relaying.
    pub contact: String,
    /// Transport and source address the REGISTER arrived from: requests go
    /// back over that flow (connection reuse on TCP, NAT-friendly on UDP).
    pub transport: Transport,
    pub flow: SocketAddr,
    pub expires_at: Instant,
    pub registered_at: Instant,
}

#[derive(Debug, Default)]
pub struct Bindings {
    by_user: HashMap<String, Vec<Binding>>,
}

impl Bindings {
    /// Live bindings of `user`, newest registration first.
    pub fn lookup(&self, user: &str, now: Instant) -> Vec<&Binding> {
        let mut v: Vec<&Binding> = self
            .by_user
            .get(user)
            .map(|b| b.iter().filter(|b| b.expires_at > now).collect())
            .unwrap_or_default();
        v.sort_by_key(|b| std::cmp::Reverse(b.registered_at));
        v
    }

    pub fn upsert(&mut self, user: &str, binding: Binding) {
        let list = self.by_user.entry(user.to_string()).or_default();
        list.retain(|b| b.contact != binding.contact);
        list.push(binding);
    }

    pub fn remove(&mut self, user: &str, contact: &str) {
        if let Some(list) = self.by_user.get_mut(user) {
            list.retain(|b| b.contact != contact);
            if list.is_empty() {
                self.by_user.remove(user);
            }
        }
    }

    pub fn remove_all(&mut self, user: &str) {
        self.by_user.remove(user);
    }

    /// Drops expired bindings; returns the users that lost their last one.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let mut gone = Vec::new();
        self.by_user.retain(|user, list| {
            list.retain(|b| b.expires_at > now);
            if list.is_empty() {
                gone.push(user.clone());
                false
            } else {
                true
            }
        });
        gone
    }

    /// Every live binding of every user (to recognise a contact URI used
    /// as the target of an in-dialog request).
    pub fn all_live(&self, now: Instant) -> impl Iterator<Item = &Binding> {
        self.by_user
            .values()
            .flatten()
            .filter(move |b| b.expires_at > now)
    }

    pub fn registered_users(&self) -> usize {
        self.by_user.len()
    }
}

/// Nonces issued in challenges, each valid for a fixed time.
#[derive(Debug, Default)]
pub struct Nonces {
    issued: HashMap<String, Instant>,
}

pub enum NonceState {
    Valid,
    /// Ours, but too old: the client should retry with the new nonce
    /// without asking the user again (`stale=true`).
    Stale,
    Unknown,
}

impl Nonces {
    pub fn issue(&mut self, nonce: String, now: Instant) {
        self.issued.insert(nonce, now);
    }

    pub fn check(&self, nonce: &str, now: Instant, ttl: Duration) -> NonceState {
        match self.issued.get(nonce) {
            Some(t) if now.duration_since(*t) < ttl => NonceState::Valid,
            Some(_) => NonceState::Stale,
            None => NonceState::Unknown,
        }
    }

    /// Forgets nonces long past their lifetime (kept a while to answer stale).
    pub fn expire(&mut self, now: Instant, ttl: Duration) {
        self.issued.retain(|_, t| now.duration_since(*t) < ttl * 4);
    }
}
