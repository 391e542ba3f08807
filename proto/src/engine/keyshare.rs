//! Key Sharing between servers (spec section 3): the sharing side's [`ServerLink`] and
//! the receiving side's [`SharedKeys`].
//!
//! A DC that must talk to another DC, an RS or an NS for the first time (or whose key is
//! about to expire) makes a key and sends it in a Key Share over mutual TLS; until the Key
//! Share Ack arrives, messages for that server wait in a bounded queue. Afterwards every
//! message is a sealed UDP datagram. Keys are renewed at 90% of their lifetime; the old key
//! stays usable for receiving until it expires.

use crate::crypto::Channel;
use crate::keys::{DcDc, DcNs, DcRs, Key, KeyGrant, KeyKind};
use crate::time::{Duration, Instant};
use crate::wire::keyshare::{KeyShare, KeyShareAck, SharedKey};
use crate::wire::{Fqdn, KeyId, Lifetime, Message, RequestId, Sender};
use core::net::SocketAddr;
use std::collections::VecDeque;

/// A server key kind that travels in Key Shares.
pub trait SharedKind: KeyKind + Sized {
    /// Puts a grant of this kind into the Key Share's typed field.
    fn wrap(g: KeyGrant<Self>) -> SharedKey;
    /// Takes a grant of this kind out of a Key Share, if it is of this kind.
    fn unwrap(k: SharedKey) -> Option<KeyGrant<Self>>;
}

macro_rules! shared_kind {
    ($k:ident) => {
        impl SharedKind for $k {
            fn wrap(g: KeyGrant<Self>) -> SharedKey {
                SharedKey::$k(g)
            }
            fn unwrap(k: SharedKey) -> Option<KeyGrant<Self>> {
                match k {
                    SharedKey::$k(g) => Some(g),
                    _ => None,
                }
            }
        }
    };
}
shared_kind!(DcDc);
shared_kind!(DcRs);
shared_kind!(DcNs);

/// Most messages queued for a server while its key is being shared.
const QUEUE_MAX: usize = 64;
/// How long the TLS Key Share may take before we try again.
const SHARE_TIMEOUT: Duration = Duration::from_secs(10);

struct Sharing<K: KeyKind> {
    request_id: RequestId,
    key_id: KeyId,
    key: Key<K>,
    deadline: Instant,
}

/// A key this young is not forgotten when a server seems silent.
const FRESH_KEY: Duration = Duration::from_secs(3);

/// The sharing side's view of one server: the keys in use and the share in flight.
pub struct ServerLink<K: KeyKind> {
    /// The server's name (its certificate must carry it).
    pub name: Fqdn,
    /// Its address (UDP for sealed messages, TCP for the TLS Key Share).
    pub addr: SocketAddr,
    /// The key we made and shared (we seal as `Sender::Dc`).
    own: Option<Channel<K>>,
    /// The previous own key, still accepted until it expires.
    previous: Option<Channel<K>>,
    /// A key the peer made and shared with us (DC to DC only; we seal as `DcPeer`).
    theirs: Option<Channel<K>>,
    sharing: Option<Sharing<K>>,
    queue: VecDeque<Message>,
    /// When the newest key came into use.
    keyed_at: Option<Instant>,
}

impl<K: KeyKind> core::fmt::Debug for ServerLink<K> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ServerLink").field("name", &self.name).field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl<K: SharedKind> ServerLink<K> {
    /// A link to a server we have not shared a key with yet.
    pub fn new(name: Fqdn, addr: SocketAddr) -> Self {
        ServerLink {
            name,
            addr,
            own: None,
            previous: None,
            theirs: None,
            sharing: None,
            queue: VecDeque::new(),
            keyed_at: None,
        }
    }

    /// Seals `msg` for this server, sharing a key first over TLS if none is usable (the
    /// message then waits in the queue): the transmissions to make, in order.
    pub fn send(
        &mut self,
        now: Instant,
        rng: &mut dyn rand_core::CryptoRngCore,
        ids: &mut super::IdSource,
        own_name: &Fqdn,
        lifetime: Duration,
        msg: Message,
    ) -> Vec<super::Transmit> {
        let mut out = Vec::new();
        if let Some(share) = self.maybe_share(now, rng, ids, own_name, lifetime) {
            let via = super::Via::Stream { kind: super::StreamKind::Tls, server: Some(self.name.clone()) };
            out.push(super::Transmit { via, dst: self.addr, payload: crate::crypto::plain(Sender::Dc, &share) });
        }
        let sealed = self.usable(now).map(|ch| ch.seal(now, &msg));
        match sealed {
            Some(Ok(payload)) => out.push(super::Transmit { via: super::Via::Udp, dst: self.addr, payload }),
            other => {
                if let Some(Err(e)) = other {
                    log::warn!("cannot seal for {}: {e}", self.name);
                }
                if self.queue.len() >= QUEUE_MAX {
                    self.queue.pop_front();
                }
                self.queue.push_back(msg);
            }
        }
        out
    }

    /// The key to seal with now: ours, else the one the peer shared.
    fn usable(&mut self, now: Instant) -> Option<&mut Channel<K>> {
        match (&mut self.own, &mut self.theirs) {
            (Some(c), _) if !c.is_expired(now) => Some(c),
            (_, Some(c)) if !c.is_expired(now) => Some(c),
            _ => None,
        }
    }

    /// Starts a Key Share if no key is usable, ours is near its end, or a share timed out.
    fn maybe_share(
        &mut self,
        now: Instant,
        rng: &mut dyn rand_core::CryptoRngCore,
        ids: &mut super::IdSource,
        own_name: &Fqdn,
        lifetime: Duration,
    ) -> Option<Message> {
        if let Some(s) = &self.sharing {
            if now < s.deadline {
                return None;
            }
            log::warn!("Key Share with {} timed out; trying again", self.name);
        }
        let renew_at = |c: &Channel<K>| c.expires() - lifetime / 10;
        let needed = match &self.own {
            Some(c) => now >= renew_at(c),
            None => !self.theirs.as_ref().is_some_and(|c| !c.is_expired(now) && now < renew_at(c)),
        };
        if !needed {
            return None;
        }
        let key = Key::<K>::generate(rng);
        let key_id = KeyId(rng.next_u32());
        let request_id = ids.next();
        let grant = KeyGrant { key: key.clone(), lifetime: Lifetime::from_duration(lifetime) };
        self.sharing = Some(Sharing { request_id, key_id, key, deadline: now + SHARE_TIMEOUT });
        Some(Message::KeyShare(KeyShare { request_id, key_id, key: K::wrap(grant), from: own_name.clone() }))
    }

    /// The Key Share Ack arrived: the key is in use; returns the queued messages sealed.
    pub fn handle_ack(&mut self, now: Instant, ack: &KeyShareAck, lifetime: Duration) -> Vec<Vec<u8>> {
        let Some(s) = self.sharing.take_if(|s| s.request_id == ack.request_id && s.key_id == ack.key_id) else {
            return Vec::new();
        };
        match Channel::new(s.key, s.key_id, Sender::Dc, now + lifetime) {
            Ok(ch) => {
                self.previous = self.own.replace(ch);
                self.keyed_at = Some(now);
            }
            Err(e) => {
                log::error!("shared key unusable: {e}");
                return Vec::new();
            }
        }
        self.flush(now)
    }

    /// The peer shared its own key with us (DC to DC).
    pub fn accept_theirs(&mut self, now: Instant, key_id: KeyId, grant: KeyGrant<K>) -> Vec<Vec<u8>> {
        // The key we hold already, shared again: its channel keeps its counter (a new one
        // would seal from 0 again under the same key).
        let held = self.theirs.as_ref().is_some_and(|c| c.id() == key_id && *c.key() == grant.key);
        if held {
            return self.flush(now);
        }
        if let Ok(ch) = Channel::new(grant.key, key_id, Sender::DcPeer, now + grant.lifetime.duration()) {
            self.theirs = Some(ch);
            self.keyed_at = Some(now);
        }
        self.flush(now)
    }

    fn flush(&mut self, now: Instant) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let queued: Vec<Message> = self.queue.drain(..).collect();
        for msg in queued {
            let Some(ch) = self.usable(now) else { break };
            if let Ok(b) = ch.seal(now, &msg) {
                out.push(b);
            }
        }
        out
    }

    /// The channel named `id`, if this link has it.
    pub fn channel_for(&mut self, id: KeyId) -> Option<&mut Channel<K>> {
        [&mut self.own, &mut self.previous, &mut self.theirs].into_iter().flatten().find(|c| c.id() == id)
    }

    /// The TLS stream to this server failed before the ack: forget the share so the next
    /// message starts a new one.
    pub fn share_failed(&mut self) {
        self.sharing = None;
    }

    /// The server stopped answering what we sealed (it may have restarted and lost our
    /// key): forget every key older than a few seconds, so that the next message starts
    /// a new Key Share over TLS. A key shared just now is kept (several requests may
    /// notice the same silence).
    pub fn forget_keys(&mut self, now: Instant) {
        if self.sharing.is_some() || self.keyed_at.is_some_and(|t| now < t + FRESH_KEY) {
            return;
        }
        if self.own.is_some() || self.theirs.is_some() {
            log::info!("{} does not answer; sharing a new key with it", self.name);
        }
        self.own = None;
        self.previous = None;
        self.theirs = None;
    }

    /// True if a Key Share is waiting for its ack.
    pub fn sharing(&self) -> bool {
        self.sharing.is_some()
    }

    /// Key fingerprints held, for custody checks.
    pub fn held_keys(&self, out: &mut Vec<(&'static str, u64)>) {
        for c in [&self.own, &self.previous, &self.theirs].into_iter().flatten() {
            out.push((K::NAME, c.key().fingerprint()));
        }
    }
}

/// The receiving side (RS, NS; a DC for K_dcdc uses [`ServerLink::accept_theirs`]): keys
/// shared with us, by id, with the name of the server that shared each.
pub struct SharedKeys<K: KeyKind> {
    keys: Vec<(Fqdn, Channel<K>)>,
    max: usize,
}

impl<K: KeyKind> core::fmt::Debug for SharedKeys<K> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "SharedKeys({} keys)", self.keys.len())
    }
}

impl<K: SharedKind> SharedKeys<K> {
    /// An empty table holding at most `max` keys.
    pub fn new(max: usize) -> Self {
        SharedKeys { keys: Vec::new(), max }
    }

    /// Handles a Key Share from `peer` (already authenticated by TLS); `local` is our
    /// sender role. Returns the ack to send, or None if the share is not acceptable.
    pub fn accept(&mut self, now: Instant, peer: &Fqdn, local: Sender, share: KeyShare) -> Option<Message> {
        if &share.from != peer {
            log::warn!("Key Share names {} but TLS authenticated {peer}", share.from);
            return None;
        }
        let grant = K::unwrap(share.key)?;
        let ack = Message::KeyShareAck(KeyShareAck { request_id: share.request_id, key_id: share.key_id });
        // The key we hold already, shared again: its channel keeps its counter (a new one
        // would seal from 0 again under the same key).
        if self.keys.iter().any(|(n, c)| n == peer && c.id() == share.key_id && *c.key() == grant.key) {
            return Some(ack);
        }
        let ch = Channel::new(grant.key, share.key_id, local, now + grant.lifetime.duration()).ok()?;
        self.keys.retain(|(_, c)| !c.is_expired(now) && c.id() != share.key_id);
        // A server keeps its two newest keys from each peer (current and previous).
        let from_peer = self.keys.iter().filter(|(n, _)| n == peer).count();
        if from_peer >= 2 {
            if let Some(i) = self.keys.iter().position(|(n, _)| n == peer) {
                self.keys.remove(i);
            }
        }
        if self.keys.len() >= self.max {
            return None;
        }
        self.keys.push((peer.clone(), ch));
        Some(ack)
    }

    /// The channel named `id`, and who shared it.
    pub fn get(&mut self, id: KeyId) -> Option<(&Fqdn, &mut Channel<K>)> {
        self.keys.iter_mut().find(|(_, c)| c.id() == id).map(|(n, c)| (&*n, c))
    }

    /// Key fingerprints held, for custody checks.
    pub fn held_keys(&self, out: &mut Vec<(&'static str, u64)>) {
        for (_, c) in &self.keys {
            out.push((K::NAME, c.key().fingerprint()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Lifetime;

    fn share(key: &Key<DcNs>, id: u32) -> KeyShare {
        KeyShare {
            request_id: RequestId(7),
            key_id: KeyId(id),
            key: DcNs::wrap(KeyGrant { key: key.clone(), lifetime: Lifetime::from_duration(Duration::from_secs(600)) }),
            from: Fqdn::new("dc.example").unwrap(),
        }
    }

    /// A Key Share that arrives twice must not restart the receiver's counter under the
    /// key (issue 12: no (key, sender, counter) is sealed twice).
    #[test]
    fn a_key_shared_twice_keeps_its_counter() {
        let now = Instant::from_millis(1000);
        let dc = Fqdn::new("dc.example").unwrap();
        let key = Key::<DcNs>::from_bytes([9; 16]);
        let mut keys = SharedKeys::<DcNs>::new(8);
        assert!(keys.accept(now, &dc, Sender::Ns, share(&key, 1)).is_some());
        let msg = Message::KeyShareAck(KeyShareAck { request_id: RequestId(1), key_id: KeyId(1) });
        let (_, ch) = keys.get(KeyId(1)).unwrap();
        ch.seal(now, &msg).unwrap();
        assert_eq!(ch.next_counter(), 1);
        assert!(keys.accept(now, &dc, Sender::Ns, share(&key, 1)).is_some(), "acknowledged again");
        assert_eq!(keys.get(KeyId(1)).unwrap().1.next_counter(), 1, "the counter goes on");
        // Another key under the same id replaces the old one (a new nonce space).
        let other = Key::<DcNs>::from_bytes([8; 16]);
        assert!(keys.accept(now, &dc, Sender::Ns, share(&other, 1)).is_some());
        assert_eq!(keys.get(KeyId(1)).unwrap().1.next_counter(), 0);

        // Between DCs, the peer's key (we seal under it as DcPeer).
        let mut link = ServerLink::<DcDc>::new(dc, "192.0.2.1:1".parse().unwrap());
        let theirs = Key::<DcDc>::from_bytes([9; 16]);
        let grant = || KeyGrant { key: theirs.clone(), lifetime: Lifetime::from_duration(Duration::from_secs(600)) };
        let _ = link.accept_theirs(now, KeyId(2), grant());
        link.channel_for(KeyId(2)).unwrap().seal(now, &msg).unwrap();
        let _ = link.accept_theirs(now, KeyId(2), grant());
        assert_eq!(link.channel_for(KeyId(2)).unwrap().next_counter(), 1, "the counter goes on");
    }
}
