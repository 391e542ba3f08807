//! The Direction Coordinator engine (spec section 2 and 4).
//!
//! A DC owns one or more DNS zones. It takes its nodes' keys from the AS (Key
//! Distribution, over mutual TLS), registers them and assigns virtual addresses
//! (`nodes.rs`), keeps their NAT state, and coordinates every tunnel one of its nodes asks
//! for (`negotiation.rs`): it finds the peer's DC through DNS, asks it for the peer's
//! information, decides direct or relayed (and which RS), makes K_tun and K_tmp, and sends
//! the Route Directions. It talks to other DCs, RSs and NSs with keys it shares over
//! mutual TLS ([`super::keyshare`]).
//!
//! Inputs: [`Engine`] calls. Outputs: [`Engine::poll_transmit`], [`Engine::poll_dns`],
//! [`Engine::poll_timeout`], [`Dc::poll_event`].

mod negotiation;
mod nodes;
mod pool;

pub use negotiation::{decide, in_prefix, Decision, GatewayPolicy};
pub use nodes::{NodeState, NodeStatus, NsState};
pub use pool::VirtualPool;

use super::keyshare::{ServerLink, SharedKind};
use super::{
    Backoff, ConfigError, DcLocation, DnsAnswer, DnsQuery, DropCounters, DropReason, Engine, IdSource, PeerIdentity,
    Received, Rng, Role, StreamKind, Transmit, Via,
};
use crate::crypto::parse_plain;
use crate::keys::{DcDc, DcNs, DcRs};
use crate::time::{Duration, Instant};
use crate::wire::{Envelope, Fqdn, KeyId, Message, MsgType, SessionId, VirtualAddrs};
use core::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::collections::{HashMap, VecDeque};

use negotiation::{Forward, Negotiation};
use nodes::{NodeRecord, PendingNsKey};

/// A server the DC talks to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerRef {
    /// Its name (its certificate must carry it).
    pub name: Fqdn,
    /// Its control address (UDP for sealed messages, TCP for TLS).
    pub addr: SocketAddr,
}

/// A Notification Server the DC hands nodes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NsRef {
    /// Its name and control address.
    pub server: ServerRef,
    /// The TCP addresses nodes connect to, at most one per address family is used: a
    /// node is granted the one of the family its Registration Request came in (see
    /// [`NsRef::node_addr_for`]), so an IPv6-only node gets the NS's IPv6 address.
    pub node_addrs: Vec<SocketAddr>,
}

impl NsRef {
    /// The node address to grant a node that registered from `from`: the first of
    /// `from`'s family, else the first of all (a node that registers in one family may
    /// still have the other).
    pub fn node_addr_for(&self, from: &SocketAddr) -> Option<SocketAddr> {
        self.node_addrs.iter().find(|a| a.is_ipv4() == from.is_ipv4()).or(self.node_addrs.first()).copied()
    }
}

/// How a DC is set up. [`DcConfig::new`] fills in the defaults.
#[derive(Clone, Debug)]
pub struct DcConfig {
    /// The DC's own name (the target of its zones' NS records).
    pub name: Fqdn,
    /// The zones whose nodes this DC manages.
    pub zones: Vec<Fqdn>,
    /// The virtual IPv4 prefix (address, length).
    pub virtual_v4: (Ipv4Addr, u8),
    /// The virtual IPv6 prefix (address, length).
    pub virtual_v6: (Ipv6Addr, u8),
    /// UDP keepalive interval asked of nodes.
    pub keepalive_interval: Duration,
    /// Relay Servers to choose from.
    pub relays: Vec<ServerRef>,
    /// Notification Servers to hand nodes to.
    pub notification_servers: Vec<NsRef>,
    /// DCs of other zones known without DNS (small sites): zone -> DC.
    pub static_peers: Vec<(Fqdn, DcLocation)>,
    /// Lifetime of K_dcdc, K_dcrs, K_dcns.
    pub server_key_lifetime: Duration,
    /// Lifetime of K_tun (it protects the hole punches that keep a relay session alive,
    /// so it lasts as long as a tunnel may).
    pub tunnel_key_lifetime: Duration,
    /// Lifetime of K_ntmns.
    pub ntmns_lifetime: Duration,
    /// Retransmission policy for messages to the NS.
    pub backoff: Backoff,
    /// Retransmission policy for the steps of a tunnel negotiation: faster than
    /// `backoff`, because an application waits for its DNS answer meanwhile.
    pub negotiation_backoff: Backoff,
    /// Most nodes.
    pub max_nodes: usize,
    /// Most negotiations in progress.
    pub max_negotiations: usize,
    /// Most negotiations one node may have in the table (in progress, or finished and
    /// kept to recognise retransmissions): a node that asks for more has its oldest
    /// finished ones forgotten, or is refused while all of them are in progress, so one
    /// node cannot fill the table that every node of this DC shares.
    pub max_negotiations_per_node: usize,
    /// How often to ask each RS for its load (and measure its round-trip time).
    pub relay_status_interval: Duration,
    /// Longest a negotiation may take.
    pub negotiation_timeout: Duration,
    /// Hold every Registration Response until the driver reports the registration saved
    /// ([`Dc::registration_saved`]): a DC that keeps a database acknowledges nothing it
    /// could lose in a crash, above all not virtual addresses it could give to another node
    /// after a restart. Off by default (a DC without storage answers at once).
    pub hold_registrations_until_saved: bool,
    /// The DC's second UDP port, for the mapping test (registration.rs), on the same
    /// address as its main port; 0: none (no node is tested, so none is told to search
    /// for a direct path through a NAT that maps per destination). The driver passes what
    /// arrives there to [`Dc::handle_mapping_datagram`] and sends [`MAPPING_PORT`]'s
    /// datagrams from it.
    pub mapping_port: u16,
    /// The gateway to ordinary hosts (none: no gateway, nothing changes).
    pub gateway: Option<negotiation::GatewayPolicy>,
}

/// The DC's socket on its mapping port ([`DcConfig::mapping_port`]).
pub const MAPPING_PORT: crate::engine::Local = crate::engine::Local(1);

impl DcConfig {
    /// A configuration with defaults.
    pub fn new(name: Fqdn, zones: Vec<Fqdn>, virtual_v4: (Ipv4Addr, u8), virtual_v6: (Ipv6Addr, u8)) -> Self {
        DcConfig {
            name,
            zones,
            virtual_v4,
            virtual_v6,
            keepalive_interval: Duration::from_secs(20),
            relays: Vec::new(),
            notification_servers: Vec::new(),
            static_peers: Vec::new(),
            server_key_lifetime: Duration::from_secs(24 * 3600),
            tunnel_key_lifetime: Duration::from_secs(24 * 3600),
            ntmns_lifetime: Duration::from_secs(24 * 3600),
            backoff: Backoff::DEFAULT,
            negotiation_backoff: Backoff {
                initial: Duration::from_millis(300),
                max: Duration::from_secs(2),
                attempts: 24,
            },
            max_nodes: 100_000,
            max_negotiations: 4096,
            max_negotiations_per_node: 64,
            relay_status_interval: Duration::from_secs(30),
            negotiation_timeout: Duration::from_secs(60),
            hold_registrations_until_saved: false,
            mapping_port: 0,
            gateway: None,
        }
    }
}

/// What happened, for logs, status and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DcEvent {
    /// The AS distributed a node's key.
    NodeKeyReceived {
        /// The node.
        fqdn: Fqdn,
    },
    /// A node registered (in one family).
    NodeRegistered {
        /// The node.
        fqdn: Fqdn,
        /// Its virtual addresses.
        virtual_addrs: VirtualAddrs,
        /// Where the DC saw it.
        observed: SocketAddr,
        /// The NAT verdict.
        behind_nat: bool,
    },
    /// A node's NS acknowledged its K_ntmns: from now on the DC reaches the node through
    /// that NS. The binding is part of the node's saved state (`Dc::export_node`), so a
    /// daemon that persists nodes saves the node again: a DC restarted from a copy saved
    /// before this could not reach a node that sends no UDP.
    NsBound {
        /// The node.
        fqdn: Fqdn,
    },
    /// The mapping test gave a node's endpoint a new verdict. It is part of the node's
    /// saved state (`Dc::export_node`): a DC restarted without it would not direct a
    /// search of ports for the node until it registers again.
    MappingTested {
        /// The node.
        fqdn: Fqdn,
        /// The verdict.
        mapping: crate::wire::registration::NatMapping,
    },
    /// A negotiation sent both Route Directions and both were acknowledged.
    TunnelDirected {
        /// The session.
        session: SessionId,
        /// The asking node.
        mn: Fqdn,
        /// The asked-for node.
        cn: Fqdn,
        /// The RS, if relayed.
        relay: Option<Fqdn>,
    },
    /// The DC must wake a node that keeps no connection (push keepalive method): the
    /// driver sends a push notification with this token (FCM/APNs). The node's driver
    /// passes it to `Node::handle_push`, the node registers again from a fresh mapping,
    /// and the DC's retransmission reaches it. Raised at most every 10 s per node.
    PushNeeded {
        /// The node.
        fqdn: Fqdn,
        /// Its push service token.
        token: Vec<u8>,
    },
    /// A box looked up an ordinary host through the gateway: `real` has the synthetic
    /// address `synthetic`, last looked up at `at`. A daemon that persists nodes saves it
    /// and gives it back with [`Dc::restore_synthetic`] at start-up, so a restarted DC
    /// does not give an address a box may still use to another host.
    SyntheticUsed {
        /// The ordinary host's real address.
        real: core::net::Ipv4Addr,
        /// Its synthetic address.
        synthetic: core::net::Ipv4Addr,
        /// The lookup's time.
        at: Instant,
    },
    /// A negotiation failed.
    TunnelRefused {
        /// The session.
        session: SessionId,
        /// The asking node.
        mn: Fqdn,
        /// The asked-for node.
        cn: Fqdn,
        /// Why.
        reason: crate::wire::refusal::Reason,
    },
}

/// Another server, by its table and index.
#[derive(Clone, Copy, Debug)]
enum To {
    /// A DC in `peers`.
    Peer(usize),
    /// An RS in `relays`.
    Relay(usize),
    /// An NS in `ns`.
    Ns(usize),
}

/// An RS as the DC sees it.
struct RelayLink {
    link: ServerLink<DcRs>,
    rtt: Option<Duration>,
    sessions: u32,
    capacity: u32,
    addrs: Vec<SocketAddr>,
    status: Option<(crate::wire::RequestId, Instant)>,
    next_status: Instant,
    /// Since when it has left a sealed request unanswered (a Relay Direction, or a status
    /// request): it is chosen only when no other RS fits, until it answers again (its
    /// next status request, every `relay_status_interval`, asks).
    silent_since: Option<Instant>,
}

impl RelayLink {
    /// It answered something sealed: it is alive.
    fn answered(&mut self) {
        if self.silent_since.take().is_some() {
            log::info!("relay {} answers again", self.link.name);
        }
    }

    /// It left a sealed request unanswered.
    fn fell_silent(&mut self, now: Instant) {
        if self.silent_since.is_none() {
            log::warn!("relay {} does not answer; choosing other relays while it is silent", self.link.name);
            self.silent_since = Some(now);
        }
    }
}

/// An NS as the DC sees it.
struct NsLink {
    link: ServerLink<DcNs>,
    node: NsRef,
}

/// Most events buffered for the driver.
const EVENTS_MAX: usize = 1024;
/// Most messages buffered for sending.
const OUT_MAX: usize = 8192;

/// The DC engine.
pub struct Dc {
    cfg: DcConfig,
    rng: Rng,
    ids: IdSource,
    pool: VirtualPool,
    /// The gateway's synthetic addresses (with a gateway policy).
    synthetic: Option<negotiation::SyntheticPool>,
    nodes: HashMap<Fqdn, NodeRecord>,
    keys: HashMap<KeyId, Fqdn>,
    peers: Vec<ServerLink<DcDc>>,
    relays: Vec<RelayLink>,
    ns: Vec<NsLink>,
    negotiations: Vec<Negotiation>,
    forwards: Vec<Forward>,
    pending_ns: Vec<PendingNsKey>,
    dns_waits: HashMap<u64, SessionId>,
    next_query: u64,
    out: VecDeque<Transmit>,
    queries: VecDeque<DnsQuery>,
    events: VecDeque<DcEvent>,
    drops: DropCounters,
    /// Plain refusals for unknown keys (rate limit).
    plain_refusals: crate::engine::hints::HintBudget,
    /// Next sweep of expired node keys (periodic, so `poll_timeout` stays cheap).
    next_sweep: Instant,
}

impl core::fmt::Debug for Dc {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Dc")
            .field("name", &self.cfg.name)
            .field("nodes", &self.nodes.len())
            .field("negotiations", &self.negotiations.len())
            .finish_non_exhaustive()
    }
}

impl Dc {
    /// A DC; fails on a configuration it cannot work with.
    pub fn new(cfg: DcConfig, mut rng: Rng, now: Instant) -> Result<Self, ConfigError> {
        if cfg.zones.is_empty() {
            return Err(ConfigError::new("zones", "at least one zone is needed"));
        }
        let pool = VirtualPool::new(cfg.virtual_v4.0, cfg.virtual_v4.1, cfg.virtual_v6.0, cfg.virtual_v6.1)?;
        let synthetic = match &cfg.gateway {
            Some(g) => {
                let overlaps = negotiation::in_prefix(g.pool.0, (cfg.virtual_v4.0, cfg.virtual_v4.1.min(g.pool.1)));
                if g.pool.1 > 30 || overlaps {
                    return Err(ConfigError::new(
                        "gateway.pool",
                        "an IPv4 prefix of /30 or wider outside the virtual IPv4 prefix",
                    ));
                }
                if g.names.len() > 16 {
                    return Err(ConfigError::new("gateway.names", "at most 16 names (or \"*\")"));
                }
                if !g.all && g.names.is_empty() {
                    return Err(ConfigError::new("gateway.names", "at least one name, or \"*\""));
                }
                let missing = g.relays.iter().find(|r| !cfg.relays.iter().any(|c| c.name == **r));
                if let Some(r) = missing {
                    log::error!("gateway relay {r} is not among the configured relays");
                    return Err(ConfigError::new("gateway.rs", "names of configured relays only"));
                }
                Some(negotiation::SyntheticPool::new(g.pool, cfg.tunnel_key_lifetime))
            }
            None => None,
        };
        let ids = IdSource::new(&mut *rng);
        let relays = cfg
            .relays
            .iter()
            .map(|r| RelayLink {
                link: ServerLink::new(r.name.clone(), r.addr),
                rtt: None,
                sessions: 0,
                capacity: 0,
                addrs: Vec::new(),
                status: None,
                next_status: now,
                silent_since: None,
            })
            .collect();
        let ns = cfg
            .notification_servers
            .iter()
            .map(|n| NsLink { link: ServerLink::new(n.server.name.clone(), n.server.addr), node: n.clone() })
            .collect();
        Ok(Dc {
            cfg,
            rng,
            ids,
            pool,
            synthetic,
            nodes: HashMap::new(),
            keys: HashMap::new(),
            peers: Vec::new(),
            relays,
            ns,
            negotiations: Vec::new(),
            forwards: Vec::new(),
            pending_ns: Vec::new(),
            dns_waits: HashMap::new(),
            next_query: 1,
            out: VecDeque::new(),
            queries: VecDeque::new(),
            events: VecDeque::new(),
            drops: DropCounters::default(),
            plain_refusals: crate::engine::hints::HintBudget::new(
                nodes::PLAIN_REFUSALS_PER_SECOND,
                nodes::PLAIN_REFUSALS_PER_SOURCE,
            ),
            next_sweep: now,
        })
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<DcEvent> {
        self.events.pop_front()
    }

    /// The DC's configuration.
    pub fn config(&self) -> &DcConfig {
        &self.cfg
    }

    /// The virtual address assignments (to persist them, and for status).
    pub fn pool(&self) -> &VirtualPool {
        &self.pool
    }

    /// Restores a gateway lookup (a [`DcEvent::SyntheticUsed`] saved by the daemon) at
    /// start-up. Refused: no gateway, an address outside the pool (the pool changed), or
    /// one restored for another real address.
    pub fn restore_synthetic(
        &mut self,
        real: core::net::Ipv4Addr,
        synthetic: core::net::Ipv4Addr,
        at: Instant,
    ) -> Result<(), ConfigError> {
        let pool = self.synthetic.as_mut().ok_or_else(|| ConfigError::new("gateway", "no gateway configured"))?;
        pool.restore(real, synthetic, at).map_err(|e| ConfigError::new("gateway.pool", format!("{synthetic}: {e}")))
    }

    /// The gateway's synthetic addresses given out, and the lookups refused because
    /// every address was held (None without a gateway).
    pub fn synthetic_stats(&self) -> Option<(usize, u64)> {
        self.synthetic.as_ref().map(|p| (p.len(), p.full))
    }

    /// Restores a virtual address assignment (from the DC's database at start-up).
    pub fn restore_assignment(&mut self, fqdn: &Fqdn, addrs: VirtualAddrs) -> Result<(), ConfigError> {
        self.pool.restore(fqdn, addrs)
    }

    /// Number of nodes whose key the DC holds.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Negotiations in progress or recently finished.
    pub fn negotiation_count(&self) -> usize {
        self.negotiations.len()
    }

    /// Keys the DC holds now, as (kind, fingerprint), for status and custody tests.
    pub fn held_keys(&self) -> Vec<(&'static str, u64)> {
        let mut v = Vec::new();
        for n in self.nodes.values() {
            n.held_keys(&mut v);
        }
        for p in &self.peers {
            p.held_keys(&mut v);
        }
        for r in &self.relays {
            r.link.held_keys(&mut v);
        }
        for n in &self.ns {
            n.link.held_keys(&mut v);
        }
        for n in &self.negotiations {
            n.held_keys(&mut v);
        }
        for f in &self.forwards {
            f.held_keys(&mut v);
        }
        v
    }

    fn owns(&self, fqdn: &Fqdn) -> bool {
        self.cfg.zones.iter().any(|z| fqdn.is_within(z))
    }

    fn emit(&mut self, ev: DcEvent) {
        if self.events.len() >= EVENTS_MAX {
            self.events.pop_front();
        }
        self.events.push_back(ev);
    }

    fn transmit(&mut self, via: Via, dst: SocketAddr, payload: Vec<u8>) {
        if self.out.len() >= OUT_MAX {
            self.drops.count(DropReason::Limit);
            return;
        }
        self.out.push_back(Transmit { via, dst, payload });
    }

    fn reply_tls(&mut self, dst: SocketAddr, msg: &Message) {
        let bytes = crate::crypto::plain(crate::wire::Sender::Dc, msg);
        self.transmit(Via::Stream { kind: StreamKind::Tls, server: None }, dst, bytes);
    }

    /// Looks up `name`'s own addresses for negotiation `session` (the gateway).
    fn query_addresses(&mut self, name: Fqdn, session: SessionId) {
        let id = self.next_query;
        self.next_query += 1;
        self.dns_waits.insert(id, session);
        self.queries.push_back(DnsQuery { id, name, addresses: true });
    }

    fn query(&mut self, name: Fqdn, session: SessionId) -> u64 {
        let id = self.next_query;
        self.next_query += 1;
        self.dns_waits.insert(id, session);
        self.queries.push_back(DnsQuery { id, name, addresses: false });
        id
    }

    /// Sends `msg` to another server, sharing a key with it first if needed.
    fn send_server(&mut self, now: Instant, to: To, msg: Message) {
        let (rng, ids, name, lifetime) = (&mut *self.rng, &mut self.ids, &self.cfg.name, self.cfg.server_key_lifetime);
        let out = match to {
            To::Peer(i) => self.peers.get_mut(i).map(|l| l.send(now, rng, ids, name, lifetime, msg)),
            To::Relay(i) => self.relays.get_mut(i).map(|r| r.link.send(now, rng, ids, name, lifetime, msg)),
            To::Ns(i) => self.ns.get_mut(i).map(|n| n.link.send(now, rng, ids, name, lifetime, msg)),
        };
        for t in out.unwrap_or_default() {
            self.transmit(t.via, t.dst, t.payload);
        }
    }

    /// The link to the DC named `name`, created if new.
    fn peer_index(&mut self, name: &Fqdn, addr: SocketAddr) -> usize {
        if let Some(i) = self.peers.iter().position(|p| p.name == *name) {
            return i;
        }
        self.peers.push(ServerLink::new(name.clone(), addr));
        self.peers.len() - 1
    }

    /// A framed message on a TLS stream: Key Distribution from the AS, Key Shares and
    /// their acknowledgements between servers.
    fn handle_tls(&mut self, now: Instant, from: SocketAddr, peer: Option<&PeerIdentity>, frame: &[u8]) -> Received {
        let Some(peer) = peer else { return self.drops.count(DropReason::Unauthorized) };
        let msg = match parse_plain(frame) {
            Ok((_, m)) => m,
            Err(e) => return self.drops.count(DropReason::from(e)),
        };
        match (peer.role, msg) {
            (Role::As, Message::KeyDistribution(kd)) => self.handle_key_distribution(now, from, kd),
            (Role::Dc, Message::KeyShare(ks)) => {
                if ks.from != peer.name {
                    return self.drops.count(DropReason::Unauthorized);
                }
                let Some(grant) = DcDc::unwrap(ks.key) else { return self.drops.count(DropReason::Unexpected) };
                let i = self.peer_index(&peer.name, from);
                let flushed = self.peers.get_mut(i).map(|l| l.accept_theirs(now, ks.key_id, grant)).unwrap_or_default();
                let ack = Message::KeyShareAck(crate::wire::keyshare::KeyShareAck {
                    request_id: ks.request_id,
                    key_id: ks.key_id,
                });
                self.reply_tls(from, &ack);
                let addr = self.peers.get(i).map(|l| l.addr);
                if let Some(addr) = addr {
                    for b in flushed {
                        self.transmit(Via::Udp, addr, b);
                    }
                }
                Received::Handled
            }
            (role, Message::KeyShareAck(ack)) => {
                let lifetime = self.cfg.server_key_lifetime;
                let flushed = match role {
                    Role::Dc => self
                        .peers
                        .iter_mut()
                        .find(|l| l.name == peer.name)
                        .map(|l| (l.addr, l.handle_ack(now, &ack, lifetime))),
                    Role::Rs => self.relays.iter_mut().find(|r| r.link.name == peer.name).map(|r| {
                        // A status request that waited for this key goes out only now: its
                        // round-trip time is measured from here, not from the TLS set-up.
                        if let Some((_, sent)) = &mut r.status {
                            *sent = now;
                        }
                        (r.link.addr, r.link.handle_ack(now, &ack, lifetime))
                    }),
                    Role::Ns => self
                        .ns
                        .iter_mut()
                        .find(|n| n.link.name == peer.name)
                        .map(|n| (n.link.addr, n.link.handle_ack(now, &ack, lifetime))),
                    _ => None,
                };
                let Some((addr, sealed)) = flushed else { return self.drops.count(DropReason::Unexpected) };
                for b in sealed {
                    self.transmit(Via::Udp, addr, b);
                }
                Received::Handled
            }
            _ => self.drops.count(DropReason::Unexpected),
        }
    }

    /// A sealed datagram from another server: find the key by id among the links.
    fn handle_server_datagram(&mut self, now: Instant, from: SocketAddr, key_id: KeyId, buf: &[u8]) -> Received {
        if let Some(i) = self.peers.iter_mut().position(|p| p.channel_for(key_id).is_some()) {
            let opened = self.peers.get_mut(i).and_then(|p| p.channel_for(key_id)).map(|c| c.open(now, buf));
            return match opened {
                Some(Ok((_, msg))) => {
                    if let Some(p) = self.peers.get_mut(i) {
                        // The peer's UDP address is where its authenticated datagrams come
                        // from (its TLS connection came from another port).
                        p.addr = from;
                    }
                    self.handle_peer_message(now, i, msg)
                }
                Some(Err(e)) => self.drops.count(DropReason::from(e)),
                None => self.drops.count(DropReason::UnknownKey),
            };
        }
        if let Some(i) = self.relays.iter_mut().position(|r| r.link.channel_for(key_id).is_some()) {
            let opened = self.relays.get_mut(i).and_then(|r| r.link.channel_for(key_id)).map(|c| c.open(now, buf));
            return match opened {
                Some(Ok((_, msg))) => self.handle_relay_message(now, i, msg),
                Some(Err(e)) => self.drops.count(DropReason::from(e)),
                None => self.drops.count(DropReason::UnknownKey),
            };
        }
        if let Some(i) = self.ns.iter_mut().position(|n| n.link.channel_for(key_id).is_some()) {
            let opened = self.ns.get_mut(i).and_then(|n| n.link.channel_for(key_id)).map(|c| c.open(now, buf));
            return match opened {
                Some(Ok((_, msg))) => self.handle_ns_message(now, i, msg),
                Some(Err(e)) => self.drops.count(DropReason::from(e)),
                None => self.drops.count(DropReason::UnknownKey),
            };
        }
        self.drops.count(DropReason::UnknownKey)
    }

    fn drive_relay_status(&mut self, now: Instant) {
        for i in 0..self.relays.len() {
            let Some(r) = self.relays.get_mut(i) else { continue };
            if now < r.next_status {
                continue;
            }
            if r.status.is_some() {
                // The last status request went unanswered: the RS may have lost our key,
                // or be gone.
                r.link.forget_keys(now);
                r.fell_silent(now);
            }
            r.next_status = now + self.cfg.relay_status_interval;
            let request_id = self.ids.next();
            r.status = Some((request_id, now));
            self.send_server(now, To::Relay(i), Message::RelayStatus(crate::wire::relay::RelayStatus { request_id }));
        }
    }

    fn handle_relay_message(&mut self, now: Instant, i: usize, msg: Message) -> Received {
        if let Some(r) = self.relays.get_mut(i) {
            r.answered();
        }
        match msg {
            Message::RelayStatusAck(a) => {
                let Some(r) = self.relays.get_mut(i) else { return Received::Handled };
                if let Some((id, sent)) = r.status {
                    if id == a.request_id {
                        r.rtt = Some(now.saturating_duration_since(sent));
                        r.status = None;
                    }
                }
                r.sessions = a.sessions;
                r.capacity = a.capacity;
                r.addrs = a.relay_addrs.as_slice().to_vec();
                Received::Handled
            }
            Message::RelayDirectionAck(a) => self.handle_relay_ack(now, i, a),
            Message::Refusal(r) => self.handle_server_refusal(now, i, r),
            _ => self.drops.count(DropReason::Unexpected),
        }
    }
}

impl Engine for Dc {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, buf: &mut [u8]) -> Received {
        let (ty, sealed, key_id) = match Envelope::new_checked(&buf[..]) {
            Ok(e) => (e.msg_type(), e.sealed(), e.key_id()),
            Err(e) => return self.drops.count(DropReason::from(e)),
        };
        if !sealed {
            return self.drops.count(DropReason::Unauthorized);
        }
        if self.keys.contains_key(&key_id) {
            return self.handle_node_datagram(now, from, key_id, buf);
        }
        match ty {
            MsgType::RegistrationRequest | MsgType::Keepalive | MsgType::DirectionRequest => {
                // A node whose key we do not hold (expired, or we lost it): tell it, in
                // the clear since we cannot seal, to log in again.
                self.refuse_unknown_key(now, from, ty, buf);
                self.drops.count(DropReason::UnknownKey)
            }
            MsgType::Unknown(_) => self.drops.count(DropReason::Malformed),
            _ => self.handle_server_datagram(now, from, key_id, buf),
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
            StreamKind::Tls => self.handle_tls(now, from, peer, frame),
            StreamKind::Tcp => self.drops.count(DropReason::Unexpected),
        }
    }

    fn handle_stream_closed(&mut self, _now: Instant, _kind: StreamKind, peer: SocketAddr) {
        for p in self.peers.iter_mut().filter(|p| p.addr == peer && p.sharing()) {
            p.share_failed();
        }
        for r in self.relays.iter_mut().filter(|r| r.link.addr == peer && r.link.sharing()) {
            r.link.share_failed();
        }
        for n in self.ns.iter_mut().filter(|n| n.link.addr == peer && n.link.sharing()) {
            n.link.share_failed();
        }
    }

    fn handle_dns(&mut self, now: Instant, id: u64, answer: DnsAnswer) {
        if let Some(session) = self.dns_waits.remove(&id) {
            self.handle_cn_location(now, session, answer);
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.drive_relay_status(now);
        self.drive_nodes(now);
        self.drive_negotiations(now);
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    fn poll_dns(&mut self) -> Option<DnsQuery> {
        self.queries.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let relay = self.relays.iter().map(|r| r.next_status).min();
        let neg = self.negotiations.iter().filter_map(Negotiation::deadline).min();
        let fwd = self.forwards.iter().filter_map(Forward::deadline).min();
        [relay, neg, fwd, self.nodes_deadline()].into_iter().flatten().min()
    }

    fn drops(&self) -> &DropCounters {
        &self.drops
    }
}
