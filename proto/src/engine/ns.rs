//! The Notification Server engine (spec 4.2, Fig. 4).
//!
//! A DC gives the NS each node's K_ntmns (NS Key Distribution, sealed with K_dcns). The
//! node opens a TCP connection, registers with a sealed Notification Registration and then
//! sends a keepalive about hourly, which keeps its NAT's TCP mapping alive with almost no
//! traffic. When the DC must reach the node, it hands the NS a message already sealed for
//! the node (Notify); the NS forwards it over the node's connection without being able to
//! read it, and tells the DC whether it could.
//!
//! The per-node state is a key and a connection address, so an NS holds many idle
//! connections cheaply; the driver's event loop owns the sockets.
//!
//! A node may instead send an NsProbe naming a delay: the NS acknowledges it only after
//! that much silence (at most its keepalive interval), so the acknowledgement crosses the
//! node's NAT only if the TCP mapping outlived the idle time. The node learns from it the
//! longest interval its path holds (protocol.md, "NS keepalive interval"). Delayed
//! acknowledgements are kept one per node, in deadline order, so `poll_timeout` stays
//! O(1) and a node cannot make the NS hold more than one.
//!
//! Nothing here is persisted: an NS that restarts has lost every key. A node that comes
//! back with a key the NS does not hold gets a plain UnknownKey refusal naming that key
//! id on its connection; it then asks its DC for a fresh K_ntmns (registration with
//! `ns_key_lost`), and the DC, whose key distribution to the restarted NS goes
//! unanswered, shares a new K_dcns first (protocol.md, section 10, "Recovery").

use super::keyshare::SharedKeys;
use super::{
    ConfigError, DnsAnswer, DnsQuery, DropCounters, DropReason, Engine, PeerIdentity, Received, Role, StreamKind,
    Transmit, Via,
};
use crate::crypto::{parse_plain, plain, Channel};
use crate::keys::{DcNs, NtmNs};
use crate::time::{Duration, Instant};
use crate::wire::notification::{NotificationAck, Notify, NotifyAck, NsKeepaliveAck, NsKeyAck};
use crate::wire::refusal::{Reason, Refusal};
use crate::wire::{Envelope, Fqdn, Header, KeyId, Message, MsgType, RequestId, Sender};
use core::net::SocketAddr;
use std::collections::{BTreeSet, HashMap, VecDeque};

/// How an NS is set up. [`NsConfig::new`] fills in the defaults.
#[derive(Clone, Debug)]
pub struct NsConfig {
    /// The NS's name.
    pub name: Fqdn,
    /// Keepalive interval asked of nodes.
    pub keepalive_interval: Duration,
    /// Most node keys (and so connections) held.
    pub max_nodes: usize,
    /// Most DC keys held.
    pub max_dc_keys: usize,
}

impl NsConfig {
    /// A configuration with defaults: hourly keepalive.
    pub fn new(name: Fqdn) -> Self {
        NsConfig { name, keepalive_interval: Duration::from_secs(3600), max_nodes: 200_000, max_dc_keys: 256 }
    }
}

/// One node the NS serves.
struct NodeEntry {
    fqdn: Fqdn,
    channel: Channel<NtmNs>,
    conn: Option<SocketAddr>,
    /// A probe to acknowledge at this time, on this connection.
    probe: Option<(Instant, RequestId, SocketAddr)>,
}

/// The NS engine.
pub struct Ns {
    cfg: NsConfig,
    dc_keys: SharedKeys<DcNs>,
    /// Boxed: an entry is about a kilobyte (mostly the expanded AES key), and a table of
    /// entries in place would carry up to half again as many empty slots.
    nodes: HashMap<KeyId, Box<NodeEntry>>,
    conns: HashMap<SocketAddr, KeyId>,
    /// The nodes' delayed probe acknowledgements (`NodeEntry::probe`), by deadline.
    probes: BTreeSet<(Instant, KeyId)>,
    out: VecDeque<Transmit>,
    drops: DropCounters,
    /// Expired keys are swept periodically rather than tracked one by one, so that
    /// `poll_timeout` stays O(1) with many nodes.
    next_sweep: Instant,
    /// The second of `now`, and unknown-key refusals sent in it (rate limit).
    hints: crate::engine::hints::HintBudget,
}

/// How often expired node keys are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// Unknown-key refusals per second. They go over TCP connections whose handshake is done,
/// so they cannot be reflected; the cap only bounds the work a flood of bad frames makes.
/// After a restart every node comes back within a few seconds (their reconnects are
/// spread), so the cap is well above what those need.
const HINTS_PER_SECOND: u32 = 1000;
/// ... and per source address: boxes behind one carrier-grade NAT share one.
const HINTS_PER_SOURCE: u32 = 100;

impl core::fmt::Debug for Ns {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Ns").field("name", &self.cfg.name).field("nodes", &self.nodes.len()).finish_non_exhaustive()
    }
}

impl Ns {
    /// An NS; fails on a configuration it cannot work with.
    pub fn new(cfg: NsConfig) -> Result<Self, ConfigError> {
        if cfg.keepalive_interval < Duration::from_secs(10) {
            return Err(ConfigError::new("keepalive_interval", "at least 10 seconds"));
        }
        Ok(Ns {
            dc_keys: SharedKeys::new(cfg.max_dc_keys),
            cfg,
            nodes: HashMap::new(),
            conns: HashMap::new(),
            probes: BTreeSet::new(),
            out: VecDeque::new(),
            drops: DropCounters::default(),
            next_sweep: Instant::ZERO,
            hints: crate::engine::hints::HintBudget::new(HINTS_PER_SECOND, HINTS_PER_SOURCE),
        })
    }

    /// Nodes with a live connection.
    pub fn connected(&self) -> usize {
        self.conns.len()
    }

    /// Node keys held.
    pub fn node_keys(&self) -> usize {
        self.nodes.len()
    }

    /// The names of connected nodes.
    pub fn connected_nodes(&self) -> Vec<Fqdn> {
        let mut v: Vec<Fqdn> = self.conns.values().filter_map(|k| self.nodes.get(k)).map(|n| n.fqdn.clone()).collect();
        v.sort();
        v
    }

    /// Keys held, as (kind, fingerprint).
    pub fn held_keys(&self) -> Vec<(&'static str, u64)> {
        let mut v = Vec::new();
        self.dc_keys.held_keys(&mut v);
        for n in self.nodes.values() {
            v.push(("K_ntmns", n.channel.key().fingerprint()));
        }
        v
    }

    fn send_to_node(&mut self, now: Instant, key_id: KeyId, msg: &Message) -> bool {
        let Some(n) = self.nodes.get_mut(&key_id) else { return false };
        let Some(conn) = n.conn else { return false };
        match n.channel.seal(now, msg) {
            Ok(bytes) => {
                self.out.push_back(Transmit {
                    via: Via::Stream { kind: StreamKind::Tcp, server: None },
                    dst: conn,
                    payload: bytes,
                });
                true
            }
            Err(e) => {
                log::warn!("cannot seal for {}: {e}", n.fqdn);
                false
            }
        }
    }

    fn handle_dc(&mut self, now: Instant, from: SocketAddr, key_id: KeyId, buf: &[u8]) -> Received {
        let Some((dc, ch)) = self.dc_keys.get(key_id) else { return self.drops.count(DropReason::UnknownKey) };
        let dc = dc.clone();
        let (_, msg) = match ch.open(now, buf) {
            Ok(m) => m,
            Err(e) => return self.drops.count(DropReason::from(e)),
        };
        let reply = match msg {
            Message::NsKeyDistribution(kd) => {
                let full = !self.nodes.contains_key(&kd.key_id) && self.nodes.len() >= self.cfg.max_nodes;
                if full {
                    self.drops.count(DropReason::Limit);
                    Message::Refusal(Refusal::new(
                        MsgType::NsKeyDistribution,
                        kd.request_id,
                        Reason::Overloaded,
                        "node table full",
                    ))
                } else {
                    match Channel::new(kd.k_ntmns.key, kd.key_id, Sender::Ns, now + kd.k_ntmns.lifetime.duration()) {
                        Ok(channel) => {
                            // A node's new key replaces its old one (and its connection,
                            // which will register again under the new key).
                            let old: Vec<KeyId> = self
                                .nodes
                                .iter()
                                .filter(|(id, n)| n.fqdn == kd.fqdn && **id != kd.key_id)
                                .map(|(id, _)| *id)
                                .collect();
                            for id in old {
                                if let Some(n) = self.nodes.remove(&id) {
                                    if let Some(c) = n.conn {
                                        self.conns.remove(&c);
                                    }
                                }
                            }
                            log::info!("K_ntmns {} for {} from DC {dc}", kd.key_id, kd.fqdn);
                            self.nodes.entry(kd.key_id).or_insert(Box::new(NodeEntry {
                                fqdn: kd.fqdn,
                                channel,
                                conn: None,
                                probe: None,
                            }));
                            Message::NsKeyAck(NsKeyAck { request_id: kd.request_id, key_id: kd.key_id })
                        }
                        Err(_) => return self.drops.count(DropReason::Malformed),
                    }
                }
            }
            Message::Notify(n) => {
                let delivered = self.send_to_node(now, n.node_key_id, &Message::Notify(Notify { ..n.clone() }));
                Message::NotifyAck(NotifyAck { request_id: n.request_id, delivered })
            }
            _ => return self.drops.count(DropReason::Unexpected),
        };
        if let Some((_, ch)) = self.dc_keys.get(key_id) {
            match ch.seal(now, &reply) {
                Ok(bytes) => self.out.push_back(Transmit { via: Via::Udp, dst: from, payload: bytes }),
                Err(e) => log::warn!("cannot seal for DC {dc}: {e}"),
            }
        }
        Received::Handled
    }

    fn handle_node(&mut self, now: Instant, from: SocketAddr, frame: &[u8]) -> Received {
        let key_id = match Envelope::new_checked(frame) {
            Ok(e) if e.sealed() => e.key_id(),
            Ok(_) => return self.drops.count(DropReason::Unauthorized),
            Err(e) => return self.drops.count(DropReason::from(e)),
        };
        let interval = u32::try_from(self.cfg.keepalive_interval.as_secs()).unwrap_or(u32::MAX);
        let Some(n) = self.nodes.get_mut(&key_id) else {
            self.refuse_unknown_key(now, from, frame);
            return self.drops.count(DropReason::UnknownKey);
        };
        let (_, msg) = match n.channel.open(now, frame) {
            Ok(m) => m,
            Err(e) => return self.drops.count(DropReason::from(e)),
        };
        let reply = match msg {
            Message::NotificationRegistration(r) => {
                if r.fqdn != n.fqdn {
                    return self.drops.count(DropReason::Unauthorized);
                }
                if let Some(old) = n.conn.replace(from) {
                    self.conns.remove(&old);
                }
                // The connection was another node's: that node no longer has one.
                if let Some(prev) = self.conns.insert(from, key_id).filter(|p| *p != key_id) {
                    if let Some(p) = self.nodes.get_mut(&prev) {
                        p.conn = None;
                    }
                }
                log::info!("{} registered for notifications from {from}", r.fqdn);
                Message::NotificationAck(NotificationAck { request_id: r.request_id, keepalive_interval: interval })
            }
            Message::NsKeepalive(k) if n.conn == Some(from) => {
                Message::NsKeepaliveAck(NsKeepaliveAck { request_id: k.request_id })
            }
            Message::NsProbe(p) if n.conn == Some(from) => {
                // At most the interval we ask for: a node cannot park an answer longer.
                let delay = Duration::from_secs(u64::from(p.delay)).min(self.cfg.keepalive_interval);
                let at = now + delay;
                if let Some((old, ..)) = n.probe.replace((at, p.request_id, from)) {
                    self.probes.remove(&(old, key_id));
                }
                self.probes.insert((at, key_id));
                return Received::Handled;
            }
            Message::NsKeepalive(_) | Message::NsProbe(_) => return self.drops.count(DropReason::Unauthorized),
            _ => return self.drops.count(DropReason::Unexpected),
        };
        self.send_to_node(now, key_id, &reply);
        Received::Handled
    }
}

impl Ns {
    /// A node frame under a key id we do not hold (we restarted, or the key expired and
    /// was swept): tell the node in the clear, on its connection, naming the key id in the
    /// header, since we cannot seal. It is a hint, never proof: the node acts on it only by
    /// asking its DC, over its authenticated channel, for a new key.
    fn refuse_unknown_key(&mut self, now: Instant, to: SocketAddr, frame: &[u8]) {
        if !self.hints.allow(now, &to) {
            return;
        }
        let Ok(env) = Envelope::new_checked(frame) else { return };
        let refusal = Refusal::new(env.msg_type(), crate::wire::RequestId(0), Reason::UnknownKey, "unknown key");
        let mut header = Header::plain(MsgType::Refusal, Sender::Ns);
        header.key_id = env.key_id();
        let mut bytes = header.to_bytes().to_vec();
        bytes.extend_from_slice(&Message::Refusal(refusal).body_to_vec());
        self.out.push_back(Transmit {
            via: Via::Stream { kind: StreamKind::Tcp, server: None },
            dst: to,
            payload: bytes,
        });
    }
}

impl Engine for Ns {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, buf: &mut [u8]) -> Received {
        let (ty, sealed, key_id) = match Envelope::new_checked(&buf[..]) {
            Ok(e) => (e.msg_type(), e.sealed(), e.key_id()),
            Err(e) => return self.drops.count(DropReason::from(e)),
        };
        match ty {
            MsgType::NsKeyDistribution | MsgType::Notify if sealed => self.handle_dc(now, from, key_id, buf),
            MsgType::Unknown(_) => self.drops.count(DropReason::Malformed),
            _ => self.drops.count(DropReason::Unexpected),
        }
    }

    fn handle_stream(
        &mut self,
        now: Instant,
        kind: StreamKind,
        from: SocketAddr,
        peer: Option<&PeerIdentity>,
        frame: &[u8],
    ) -> Received {
        match kind {
            StreamKind::Tcp => self.handle_node(now, from, frame),
            StreamKind::Tls => {
                let Some(peer) = peer.filter(|p| p.role == Role::Dc) else {
                    return self.drops.count(DropReason::Unauthorized);
                };
                match parse_plain(frame) {
                    Ok((_, Message::KeyShare(ks))) => match self.dc_keys.accept(now, &peer.name, Sender::Ns, ks) {
                        Some(ack) => {
                            let via = Via::Stream { kind: StreamKind::Tls, server: None };
                            self.out.push_back(Transmit { via, dst: from, payload: plain(Sender::Ns, &ack) });
                            Received::Handled
                        }
                        None => self.drops.count(DropReason::Unauthorized),
                    },
                    Ok(_) => self.drops.count(DropReason::Unexpected),
                    Err(e) => self.drops.count(DropReason::from(e)),
                }
            }
        }
    }

    fn handle_stream_closed(&mut self, _now: Instant, kind: StreamKind, peer: SocketAddr) {
        if kind == StreamKind::Tcp {
            if let Some(id) = self.conns.remove(&peer) {
                if let Some(n) = self.nodes.get_mut(&id) {
                    n.conn = None;
                }
            }
        }
    }

    fn handle_dns(&mut self, _now: Instant, _id: u64, _answer: DnsAnswer) {}

    fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, key_id)) = self.probes.first().filter(|(at, _)| *at <= now) {
            self.probes.remove(&(at, key_id));
            let Some(n) = self.nodes.get_mut(&key_id) else { continue };
            let Some((_, request_id, conn)) = n.probe.take() else { continue };
            // Only on the connection the probe came in: a newer one has its own probes.
            if n.conn == Some(conn) {
                self.send_to_node(now, key_id, &Message::NsKeepaliveAck(NsKeepaliveAck { request_id }));
            }
        }
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + SWEEP_INTERVAL;
        let expired: Vec<KeyId> =
            self.nodes.iter().filter(|(_, n)| n.channel.is_expired(now)).map(|(id, _)| *id).collect();
        for id in expired {
            if let Some(n) = self.nodes.remove(&id) {
                if let Some(c) = n.conn {
                    self.conns.remove(&c);
                }
            }
        }
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    fn poll_dns(&mut self) -> Option<DnsQuery> {
        None
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Some(self.probes.first().map_or(self.next_sweep, |(at, _)| (*at).min(self.next_sweep)))
    }

    fn drops(&self) -> &DropCounters {
        &self.drops
    }
}
