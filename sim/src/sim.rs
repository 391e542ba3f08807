//! The simulator proper: the event queue, routing through realms and NATs, streams, DNS
//! and the driver loop around each engine.
//!
//! Contract with the engines (docs/protocol.md, "Engines"): every input carries `now`,
//! which never goes backwards; after every input to a host, and before the next step
//! after a test touched an engine through [`Sim::engine`], the simulator drains that
//! host's `poll_transmit` and `poll_dns` until both return `None`. Nothing an engine emits
//! reaches another engine within the same step: every delivery is an event in the queue,
//! so engines are never re-entered.
//!
//! Order: events run by (time, sequence number); at equal times queued events run before
//! timeouts, and timeouts of different hosts run in host order. A fixed seed therefore
//! fixes the whole run, provided the engines are deterministic given their RNGs.

use crate::dns::Dns;
use crate::host::{AnyEngine, Captured, Carrier, Direction, Host, HostId, HostStats, EPHEMERAL_FIRST};
use crate::nat::{Nat, NatStats, Proto};
use crate::stream::{Conn, ConnState, Side};
use crate::topology::{LinkConfig, LinkId, LinkStats, Realm, RealmConfig, RealmId, DEFAULT_CORE, DEFAULT_UPLINK};
use core::cmp::Ordering;
use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use ntm_proto::engine::node::NodeEvent;
use ntm_proto::engine::{DnsAnswer, DropCounters, Local, PeerIdentity, Received, Rng, StreamKind, Transmit, Via};
use ntm_proto::time::{Duration, Instant};
use ntm_proto::wire::Fqdn;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use std::collections::{BTreeMap, BinaryHeap};

/// Drops the simulator counted that belong to no host or NAT.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Datagrams with nowhere to go: an address nobody owns, a family the realm cannot
    /// carry, a host that moved away while they were in flight.
    pub no_route: u64,
    /// Datagrams dropped by a rule of [`Sim::drop_next_to`].
    pub dropped_by_rule: u64,
}

/// A datagram in flight, with its addresses as seen in the realm it is in.
#[derive(Debug)]
struct Packet {
    src: SocketAddr,
    dst: SocketAddr,
    payload: Vec<u8>,
}

#[derive(Debug)]
enum Event {
    /// A datagram crossed an uplink into `realm` (upwards, or downwards over IPv6).
    Arrive { realm: RealmId, pkt: Packet },
    /// A datagram reached the outside of `realm`'s NAT.
    NatInbound { realm: RealmId, pkt: Packet },
    /// A datagram crossed `realm`'s LAN to whoever owns its destination address.
    Deliver { realm: RealmId, pkt: Packet },
    /// A stream's handshake completed.
    Connected { conn: u64 },
    /// A frame reached one end of a stream.
    Frame { conn: u64, to: Side, frame: Vec<u8> },
    /// Tell a host its stream with `peer` is gone.
    Closed { host: HostId, incarnation: u64, kind: StreamKind, peer: SocketAddr },
    /// A DNS answer.
    Dns { host: HostId, incarnation: u64, id: u64, answer: DnsAnswer },
}

#[derive(Debug)]
struct Scheduled {
    at: Instant,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the earliest event first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// Where a stream connection goes, as worked out when it is opened.
struct StreamPath {
    server: HostId,
    seen_from: SocketAddr,
    links: Vec<LinkId>,
    nat_ports: Vec<(RealmId, u16)>,
}

/// A deterministic simulated network hosting engines. See the crate documentation.
pub struct Sim {
    seed: u64,
    now: Instant,
    /// Every random choice the network makes (loss, jitter, NAT ports) comes from here.
    rng: ChaCha20Rng,
    seq: u64,
    queue: BinaryHeap<Scheduled>,
    realms: Vec<Realm>,
    hosts: Vec<Host>,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    dns: Dns,
    default_uplink: LinkConfig,
    stats: SimStats,
    /// [`Sim::drop_next_to`]'s rules: destination, datagrams still to drop.
    drop_rules: BTreeMap<SocketAddr, u32>,
}

impl core::fmt::Debug for Sim {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Sim")
            .field("seed", &self.seed)
            .field("now", &self.now)
            .field("queued", &self.queue.len())
            .field("realms", &self.realms)
            .field("hosts", &self.hosts)
            .field("conns", &self.conns)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// FNV-1a: a hash that is the same on every platform and Rust version, unlike `std`'s.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// A uniform draw from [0, 1).
fn unit(rng: &mut ChaCha20Rng) -> f64 {
    // 53 random bits fill an f64 mantissa exactly.
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// Latency plus (if `jitter`) a draw of each link's jitter, summed over `links`.
fn path_delay(
    realms: &[Realm],
    default_uplink: LinkConfig,
    rng: &mut ChaCha20Rng,
    links: &[LinkId],
    jitter: bool,
) -> Duration {
    links.iter().fold(Duration::ZERO, |sum, &link| {
        let cfg = link_config(realms, default_uplink, link);
        sum + cfg.latency + if jitter { jitter_draw(rng, cfg.jitter) } else { Duration::ZERO }
    })
}

fn jitter_draw(rng: &mut ChaCha20Rng, jitter: Duration) -> Duration {
    let max = u64::try_from(jitter.as_millis()).unwrap_or(u64::MAX);
    if max == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(rng.next_u64() % max.saturating_add(1))
}

fn link_config(realms: &[Realm], default_uplink: LinkConfig, link: LinkId) -> LinkConfig {
    match link {
        LinkId::Uplink(r) => realms.get(r.0).and_then(|r| r.uplink).unwrap_or(default_uplink),
        LinkId::Lan(r) => realms.get(r.0).map_or(DEFAULT_CORE, |r| r.lan),
    }
}

impl Sim {
    /// An empty network (just the internet realm) at time zero; `seed` fixes every random
    /// choice the network makes.
    pub fn new(seed: u64) -> Self {
        let internet = Realm {
            name: "internet".into(),
            parent: None,
            has_v4: true,
            has_v6: true,
            nat: None,
            uplink: None,
            lan: DEFAULT_CORE,
            uplink_stats: LinkStats::default(),
            lan_stats: LinkStats::default(),
        };
        Sim {
            seed,
            now: Instant::ZERO,
            rng: ChaCha20Rng::seed_from_u64(seed),
            seq: 0,
            queue: BinaryHeap::new(),
            realms: vec![internet],
            hosts: Vec::new(),
            conns: BTreeMap::new(),
            next_conn: 0,
            dns: Dns::default(),
            default_uplink: DEFAULT_UPLINK,
            stats: SimStats::default(),
            drop_rules: BTreeMap::new(),
        }
    }

    /// The seed the simulator was built with.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Virtual time now.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// A fresh RNG for an engine, fixed by the simulator's seed and `label` and independent
    /// of the network's own draws (so adding a host does not change loss or jitter).
    pub fn rng_for(&self, label: &str) -> Rng {
        let mut rng = ChaCha20Rng::seed_from_u64(self.seed);
        // Stream 0 is the network's; a label hashing to 0 shares nothing else with it.
        rng.set_stream(fnv1a(label.as_bytes()).max(1));
        Box::new(rng)
    }

    // ---- topology ------------------------------------------------------------------

    /// Adds an access network under `parent`.
    ///
    /// # Panics
    ///
    /// On a configuration that cannot work: IPv4 without a NAT outside address or under a
    /// parent without IPv4, IPv6 under a parent without it, no family at all, or an
    /// outside address already used in the parent.
    pub fn add_realm(&mut self, name: &str, parent: RealmId, cfg: RealmConfig) -> RealmId {
        let p = self.realm(parent);
        assert!(cfg.has_v4 || cfg.has_v6, "realm {name}: needs IPv4 or IPv6");
        assert!(!cfg.has_v6 || p.has_v6, "realm {name}: IPv6 needs a parent with IPv6 ({})", p.name);
        let nat = if cfg.has_v4 {
            assert!(p.has_v4, "realm {name}: IPv4 needs a parent with IPv4 ({})", p.name);
            let Some(outside) = cfg.nat_outside else { panic!("realm {name}: IPv4 needs a NAT outside address") };
            assert!(!self.addr_in_use(parent, IpAddr::V4(outside)), "realm {name}: {outside} is taken in {}", p.name);
            Some(Nat::new(outside, cfg.nat))
        } else {
            None
        };
        self.realms.push(Realm {
            name: name.into(),
            parent: Some(parent),
            has_v4: cfg.has_v4,
            has_v6: cfg.has_v6,
            nat,
            uplink: cfg.uplink,
            lan: cfg.lan,
            uplink_stats: LinkStats::default(),
            lan_stats: LinkStats::default(),
        });
        RealmId(self.realms.len() - 1)
    }

    /// Changes a realm's uplink (e.g. a loss burst mid-test).
    pub fn set_uplink(&mut self, realm: RealmId, link: LinkConfig) {
        self.realm_mut(realm).uplink = Some(link);
    }

    /// Changes the last hop to a realm's hosts; for [`RealmId::INTERNET`], the hop to
    /// servers (default 20 ms).
    pub fn set_lan(&mut self, realm: RealmId, link: LinkConfig) {
        self.realm_mut(realm).lan = link;
    }

    /// The uplink of realms configured without one (default 10 ms, clean).
    pub fn set_default_uplink(&mut self, link: LinkConfig) {
        self.default_uplink = link;
    }

    /// The name a realm was given.
    pub fn realm_name(&self, realm: RealmId) -> &str {
        &self.realm(realm).name
    }

    /// A realm's NAT outside address, if it has IPv4.
    pub fn nat_outside(&self, realm: RealmId) -> Option<Ipv4Addr> {
        self.realm(realm).nat.as_ref().map(|n| n.outside)
    }

    /// The realm's NAT forgets its UDP mappings and gives every internal endpoint a new
    /// external port from its next packet on (a NAT reboot, or a carrier NAT rebinding).
    /// The hosts behind it are not told.
    pub fn rebind_nat(&mut self, realm: RealmId) {
        if let Some(nat) = self.realm_mut(realm).nat.as_mut() {
            nat.rebind_udp();
        }
    }

    /// What a realm's NAT did (all zero for realms without one).
    pub fn nat_stats(&self, realm: RealmId) -> NatStats {
        self.realm(realm).nat.as_ref().map(|n| n.stats).unwrap_or_default()
    }

    /// Datagrams a link carried and lost.
    pub fn link_stats(&self, link: LinkId) -> LinkStats {
        match link {
            LinkId::Uplink(r) => self.realm(r).uplink_stats,
            LinkId::Lan(r) => self.realm(r).lan_stats,
        }
    }

    // ---- hosts ---------------------------------------------------------------------

    /// Adds a host running `engine` in `realm`, owning `addrs` and binding `port`. Its
    /// outputs are drained before the next step.
    ///
    /// # Panics
    ///
    /// If an address is of a family the realm lacks or is already taken (IPv4 within the
    /// realm, IPv6 anywhere).
    pub fn add_host<E: AnyEngine>(
        &mut self,
        name: &str,
        realm: RealmId,
        addrs: &[IpAddr],
        port: u16,
        identity: Option<PeerIdentity>,
        engine: E,
    ) -> HostId {
        self.check_addrs(name, realm, addrs);
        self.hosts.push(Host {
            name: name.into(),
            realm,
            addrs: addrs.to_vec(),
            port,
            identity,
            engine: Box::new(engine),
            down: false,
            dirty: true,
            incarnation: 0,
            last_fired: None,
            next_ephemeral: EPHEMERAL_FIRST,
            ip_inbox: Vec::new(),
            capture: None,
            stats: HostStats::default(),
            extra_delay: Duration::ZERO,
            sockets: BTreeMap::new(),
            bound: std::collections::BTreeSet::new(),
            events: std::collections::VecDeque::new(),
        });
        HostId(self.hosts.len() - 1)
    }

    fn check_addrs(&self, name: &str, realm: RealmId, addrs: &[IpAddr]) {
        let r = self.realm(realm);
        for &a in addrs {
            let ok = if a.is_ipv4() { r.has_v4 } else { r.has_v6 };
            assert!(ok, "host {name}: realm {} has no {} for {a}", r.name, if a.is_ipv4() { "IPv4" } else { "IPv6" });
            assert!(!self.addr_in_use(realm, a), "host {name}: {a} is taken");
        }
    }

    /// True if `ip` is a host's address or a NAT's outside address in `realm` (IPv4), or
    /// any host's address (IPv6, which is global).
    fn addr_in_use(&self, realm: RealmId, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => self.host_at(realm, ip).is_some() || self.child_behind(realm, v4).is_some(),
            IpAddr::V6(_) => self.hosts.iter().any(|h| h.owns(ip)),
        }
    }

    /// Adds `delay` to every datagram delivered to `host`: a server farther away than
    /// its realm's last hop (for tests of choosing the nearest relay).
    pub fn set_host_delay(&mut self, host: HostId, delay: Duration) {
        self.host_mut(host).extra_delay = delay;
    }

    /// Opens extra socket `local` of `host` on `port` (e.g. the DC's mapping port), before
    /// the engine first sends from it.
    ///
    /// # Panics
    ///
    /// If `local` is [`Local::MAIN`], already open, or `port` is taken on the host.
    pub fn bind_socket(&mut self, host: HostId, local: Local, port: u16) {
        let h = self.host_mut(host);
        assert!(local != Local::MAIN, "{}: the main socket is bound by add_host", h.name);
        assert!(!h.sockets.contains_key(&local), "{}: socket {local:?} is open", h.name);
        assert!(h.socket_at(port).is_none(), "{}: port {port} is taken", h.name);
        h.sockets.insert(local, port);
        h.bound.insert(local);
        h.stats.sockets_opened += 1;
    }

    /// The host's open extra sockets and their ports.
    pub fn sockets(&self, host: HostId) -> Vec<(Local, u16)> {
        self.host(host).sockets.iter().map(|(&l, &p)| (l, p)).collect()
    }

    /// The events a node host produced since the last call, in order. The simulator takes
    /// a node's events after every input (its driver must see `LocalsReleased` to close
    /// sockets), so tests read them here, not from the engine's `poll_event`. Empty for
    /// other engines.
    pub fn node_events(&mut self, host: HostId) -> Vec<NodeEvent> {
        let h = self.host_mut(host);
        h.drain_events();
        h.events.drain(..).collect()
    }

    /// Finds a host by the name it was added with.
    pub fn host_by_name(&self, name: &str) -> Option<HostId> {
        self.hosts.iter().position(|h| h.name == name).map(HostId)
    }

    /// The name a host was added with.
    pub fn host_name(&self, host: HostId) -> &str {
        &self.host(host).name
    }

    /// The realm a host is in now.
    pub fn host_realm(&self, host: HostId) -> RealmId {
        self.host(host).realm
    }

    /// A host's addresses.
    pub fn addrs(&self, host: HostId) -> &[IpAddr] {
        &self.host(host).addrs
    }

    /// A host's first IPv4 address with its port.
    pub fn addr_v4(&self, host: HostId) -> Option<SocketAddr> {
        let h = self.host(host);
        h.addrs.iter().find(|a| a.is_ipv4()).map(|&a| SocketAddr::new(a, h.port))
    }

    /// A host's first IPv6 address with its port.
    pub fn addr_v6(&self, host: HostId) -> Option<SocketAddr> {
        let h = self.host(host);
        h.addrs.iter().find(|a| a.is_ipv6()).map(|&a| SocketAddr::new(a, h.port))
    }

    /// The engine of `host` as its concrete type. The test may call its methods; the
    /// outputs are drained before the next step.
    ///
    /// # Panics
    ///
    /// If the host runs another type of engine.
    pub fn engine<T: AnyEngine>(&mut self, host: HostId) -> &mut T {
        let h = self.host_mut(host);
        h.dirty = true;
        let name = &h.name;
        match h.engine.as_any_mut().downcast_mut::<T>() {
            Some(e) => e,
            None => panic!("host {name} does not run a {}", core::any::type_name::<T>()),
        }
    }

    /// The engine of `host` as its concrete type, read-only.
    ///
    /// # Panics
    ///
    /// If the host runs another type of engine.
    pub fn engine_ref<T: AnyEngine>(&self, host: HostId) -> &T {
        let h = self.host(host);
        match h.engine.as_any().downcast_ref::<T>() {
            Some(e) => e,
            None => panic!("host {} does not run a {}", h.name, core::any::type_name::<T>()),
        }
    }

    /// The drops the host's engine counted.
    pub fn drops(&self, host: HostId) -> &DropCounters {
        self.host(host).engine.drops()
    }

    /// What the simulator dropped at or for a host.
    pub fn host_stats(&self, host: HostId) -> HostStats {
        self.host(host).stats
    }

    /// Drops that belong to no host or NAT.
    pub fn stats(&self) -> SimStats {
        self.stats
    }

    /// Re-homes a host (mobility): it now lives in `realm` with `addrs`. Datagrams in
    /// flight to its old addresses are lost and its streams break. The engine is not told;
    /// the test calls the engine's own network-change method.
    ///
    /// # Panics
    ///
    /// As [`Sim::add_host`], for the new addresses.
    pub fn move_host(&mut self, host: HostId, realm: RealmId, addrs: &[IpAddr]) {
        let old = core::mem::take(&mut self.host_mut(host).addrs);
        let name = self.host(host).name.clone();
        self.check_addrs(&name, realm, addrs);
        log::debug!("{name}: moved from {old:?} to {} {addrs:?}", self.realm(realm).name);
        let h = self.host_mut(host);
        h.realm = realm;
        h.addrs = addrs.to_vec();
        self.break_conns(host);
    }

    /// Takes a host down (it drops all input and output and its timers stop; its streams
    /// break without notice) or brings it back with its engine's state intact.
    pub fn set_down(&mut self, host: HostId, down: bool) {
        let h = self.host_mut(host);
        h.down = down;
        h.dirty = !down;
        if down {
            self.break_conns(host);
        }
    }

    /// True if the host is down.
    pub fn is_down(&self, host: HostId) -> bool {
        self.host(host).down
    }

    /// Replaces a host's engine (a restart, which also brings a down host back up): its
    /// streams are reset (the peers are told), answers meant for the old engine are
    /// dropped, its extra sockets on ephemeral ports are closed and its unread node events
    /// discarded. Addresses, captures, the IP inbox and the sockets bound with
    /// [`Sim::bind_socket`] (configured ports, such as the DC's mapping port) stay.
    pub fn replace_engine<E: AnyEngine>(&mut self, host: HostId, engine: E) {
        // Close first, so the notifications to this host carry the old incarnation.
        self.close_streams(host);
        let h = self.host_mut(host);
        h.incarnation += 1;
        // A restarted process binds its configured ports again but has none of the
        // ephemeral sockets of the old one, and the old one's unread events went with it
        // (as they did before the simulator took them).
        let ephemeral: Vec<Local> = h.sockets.keys().filter(|l| !h.bound.contains(l)).copied().collect();
        h.close_sockets(ephemeral);
        h.events.clear();
        h.engine = Box::new(engine);
        h.down = false;
        h.dirty = true;
        h.last_fired = None;
    }

    /// Closes every stream of `host`: it is told now, each peer after the one-way latency.
    pub fn close_streams(&mut self, host: HostId) {
        let ids: Vec<(u64, Side)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.involves(host))
            .map(|(&id, c)| (id, if c.client == host { Side::Client } else { Side::Server }))
            .collect();
        for (id, side) in ids {
            self.close_conn(id, side);
        }
    }

    /// Streams of `host` that are connecting or open (not broken).
    pub fn open_streams(&self, host: HostId) -> usize {
        self.conns
            .values()
            .filter(|c| c.involves(host) && !matches!(c.state, ConnState::Broken | ConnState::Reset(_)))
            .count()
    }

    /// Starts recording everything `host` sends and receives.
    pub fn enable_capture(&mut self, host: HostId) {
        let h = self.host_mut(host);
        if h.capture.is_none() {
            h.capture = Some(Vec::new());
        }
    }

    /// What `host` sent and received since capture was enabled (empty if it is not).
    pub fn capture(&self, host: HostId) -> &[Captured] {
        self.host(host).capture.as_deref().unwrap_or(&[])
    }

    /// Takes the capture so far, leaving capture on.
    pub fn take_capture(&mut self, host: HostId) -> Vec<Captured> {
        self.host_mut(host).capture.as_mut().map(core::mem::take).unwrap_or_default()
    }

    /// Takes the inner IP packets the host's engine decrypted ([`Received::Ip`]).
    pub fn take_ip(&mut self, host: HostId) -> Vec<Vec<u8>> {
        core::mem::take(&mut self.host_mut(host).ip_inbox)
    }

    /// Puts a datagram on the wire in `realm` as if sent from `src` (which may be spoofed):
    /// an attacker injecting or replaying traffic.
    pub fn inject(&mut self, realm: RealmId, src: SocketAddr, dst: SocketAddr, payload: Vec<u8>) {
        self.route(realm, Packet { src, dst, payload });
    }

    /// Drops the next `count` datagrams any host sends to `dst` (as named by the sender,
    /// before any NAT), as a firewall rule would: a loss aimed at one message.
    pub fn drop_next_to(&mut self, dst: SocketAddr, count: u32) {
        if count == 0 {
            self.drop_rules.remove(&dst);
        } else {
            self.drop_rules.insert(dst, count);
        }
    }

    /// The DNS table and query log.
    pub fn dns(&self) -> &Dns {
        &self.dns
    }

    /// The DNS table, to add zones.
    pub fn dns_mut(&mut self) -> &mut Dns {
        &mut self.dns
    }

    // ---- the loop ------------------------------------------------------------------

    /// Runs the earliest pending event or timeout. False if there is nothing left to do.
    pub fn step(&mut self) -> bool {
        self.flush();
        let event_at = self.queue.peek().map(|s| s.at);
        match (event_at, self.next_timeout()) {
            (Some(at), timeout) if timeout.is_none_or(|(t, _)| at <= t) => {
                let Some(s) = self.queue.pop() else { return false };
                self.now = self.now.max(s.at);
                self.process(s.event);
            }
            (_, Some((at, host))) => {
                self.now = self.now.max(at);
                self.fire(host);
            }
            _ => return false,
        }
        true
    }

    /// Runs everything due up to `deadline`, then sets the clock to it.
    pub fn run_until(&mut self, deadline: Instant) {
        loop {
            self.flush();
            match self.next_at() {
                Some(at) if at <= deadline => {
                    self.step();
                }
                _ => break,
            }
        }
        self.now = self.now.max(deadline);
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.now + d);
    }

    /// Runs until `cond` holds (checked before the first step and after each) or
    /// `deadline` passes; returns whether it held. On false, the clock is at `deadline`.
    #[must_use = "the condition may not have held: assert it or handle false"]
    pub fn run_until_cond(&mut self, deadline: Instant, mut cond: impl FnMut(&mut Sim) -> bool) -> bool {
        loop {
            if cond(self) {
                return true;
            }
            self.flush();
            match self.next_at() {
                Some(at) if at <= deadline => {
                    self.step();
                }
                _ => {
                    self.now = self.now.max(deadline);
                    return cond(self);
                }
            }
        }
    }

    /// When the next event or timeout is due.
    fn next_at(&self) -> Option<Instant> {
        let event = self.queue.peek().map(|s| s.at);
        let timeout = self.next_timeout().map(|(t, _)| t);
        match (event, timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The earliest deadline of a host that is up, and whose it is.
    fn next_timeout(&self) -> Option<(Instant, HostId)> {
        let ms = Duration::from_millis(1);
        self.hosts
            .iter()
            .enumerate()
            .filter(|(_, h)| !h.down)
            .filter_map(|(i, h)| {
                let t = h.engine.poll_timeout().filter(|&t| t != Instant::FAR_FUTURE)?;
                // A deadline at or before the last firing would run again at the same instant
                // forever; push it one tick on so virtual time moves.
                let t = match h.last_fired {
                    Some(fired) if t <= fired => fired + ms,
                    _ => t,
                };
                Some((t.max(self.now), HostId(i)))
            })
            .min()
    }

    fn fire(&mut self, host: HostId) {
        let now = self.now;
        let h = self.host_mut(host);
        h.last_fired = Some(now);
        h.engine.handle_timeout(now);
        self.drain(host);
    }

    /// Drains every host a test touched.
    fn flush(&mut self) {
        for i in 0..self.hosts.len() {
            if self.hosts.get(i).is_some_and(|h| h.dirty) {
                self.drain(HostId(i));
            }
        }
    }

    /// Takes every output of a host's engine and puts it on its way.
    fn drain(&mut self, host: HostId) {
        let now = self.now;
        // Events first: sockets the engine released in this step are closed before the
        // ones it opens in the same step (a search that ends and the next that starts),
        // and the engine sends nothing more from a socket once it released it.
        self.host_mut(host).drain_events();
        loop {
            let h = self.host_mut(host);
            let Some(t) = h.engine.poll_transmit() else { break };
            if h.down {
                h.stats.dropped_while_down += 1;
                continue;
            }
            self.transmit(host, t);
        }
        loop {
            let h = self.host_mut(host);
            let Some(q) = h.engine.poll_dns() else { break };
            if h.down {
                h.stats.dropped_while_down += 1;
                continue;
            }
            let incarnation = h.incarnation;
            let answer = self.dns.answer(&q.name);
            log::trace!("{}: DNS {} -> {answer:?}", self.host(host).name, q.name);
            self.dns.log(now, host, q.name);
            let at = now + self.dns.latency();
            self.schedule(at, Event::Dns { host, incarnation, id: q.id, answer });
        }
        self.host_mut(host).dirty = false;
    }

    fn transmit(&mut self, host: HostId, t: Transmit) {
        match t.via {
            Via::Udp => self.send_datagram(host, Local::MAIN, t.dst, t.payload),
            Via::UdpFrom(local) => self.send_datagram(host, local, t.dst, t.payload),
            Via::Stream { kind, server: Some(name) } => self.client_send(host, kind, name, t.dst, t.payload),
            Via::Stream { kind, server: None } => self.reply_send(host, kind, t.dst, t.payload),
        }
    }

    fn process(&mut self, event: Event) {
        let now = self.now;
        match event {
            Event::Arrive { realm, pkt } => self.route(realm, pkt),
            Event::NatInbound { realm, pkt } => self.nat_inbound(realm, pkt),
            Event::Deliver { realm, pkt } => self.deliver(realm, pkt),
            Event::Connected { conn } => self.connected(conn),
            Event::Frame { conn, to, frame } => self.frame_arrived(conn, to, frame),
            Event::Closed { host, incarnation, kind, peer } => {
                if self.accepts(host, incarnation) {
                    self.host_mut(host).engine.handle_stream_closed(now, kind, peer);
                    self.drain(host);
                }
            }
            Event::Dns { host, incarnation, id, answer } => {
                if self.accepts(host, incarnation) {
                    self.host_mut(host).engine.handle_dns(now, id, answer);
                    self.drain(host);
                }
            }
        }
    }

    /// True if input for this incarnation of `host` should reach its engine; counts it if
    /// the host is down.
    fn accepts(&mut self, host: HostId, incarnation: u64) -> bool {
        let h = self.host_mut(host);
        if h.incarnation != incarnation {
            return false;
        }
        if h.down {
            h.stats.dropped_while_down += 1;
            return false;
        }
        true
    }

    fn schedule(&mut self, at: Instant, event: Event) {
        self.seq += 1;
        self.queue.push(Scheduled { at, seq: self.seq, event });
    }

    fn record(
        &mut self,
        host: HostId,
        dir: Direction,
        carrier: Carrier,
        src: SocketAddr,
        dst: SocketAddr,
        bytes: &[u8],
    ) {
        let at = self.now;
        if let Some(log) = &mut self.host_mut(host).capture {
            log.push(Captured { at, dir, carrier, src, dst, bytes: bytes.to_vec() });
        }
    }

    // ---- datagrams -----------------------------------------------------------------

    /// Sends from the host's socket `local` (opened on first use).
    fn send_datagram(&mut self, host: HostId, local: Local, dst: SocketAddr, payload: Vec<u8>) {
        let h = self.host_mut(host);
        let Some(ip) = h.source_for(&dst) else {
            h.stats.no_source_addr += 1;
            log::debug!("{}: no address to reach {dst} from", h.name);
            return;
        };
        let Some(port) = h.socket_port(local) else { return };
        let (src, realm) = (SocketAddr::new(ip, port), h.realm);
        self.record(host, Direction::Out, Carrier::Udp, src, dst, &payload);
        if let Some(left) = self.drop_rules.get_mut(&dst) {
            // Rules hold a count of at least 1 (drop_next_to removes a 0).
            *left = left.saturating_sub(1);
            if *left == 0 {
                self.drop_rules.remove(&dst);
            }
            self.stats.dropped_by_rule += 1;
            return;
        }
        self.route(realm, Packet { src, dst, payload });
    }

    /// Moves a datagram on from `realm`: to a host here, down into a child realm, or up
    /// through this realm's NAT.
    fn route(&mut self, realm: RealmId, mut pkt: Packet) {
        let dst_ip = pkt.dst.ip();
        if let Some(h) = self.host_at(realm, dst_ip) {
            let extra = self.host(h).extra_delay;
            if let Some(d) = self.traverse(LinkId::Lan(realm)) {
                self.schedule(self.now + d + extra, Event::Deliver { realm, pkt });
            }
            return;
        }
        let child = match dst_ip {
            IpAddr::V4(v4) => self.child_behind(realm, v4),
            IpAddr::V6(_) => self.child_toward(realm, dst_ip),
        };
        if let Some(child) = child {
            if let Some(d) = self.traverse(LinkId::Uplink(child)) {
                let event = if dst_ip.is_ipv4() {
                    Event::NatInbound { realm: child, pkt }
                } else {
                    Event::Arrive { realm: child, pkt }
                };
                self.schedule(self.now + d, event);
            }
            return;
        }
        // Direct field access: the NAT and the RNG are borrowed together below.
        let r = &mut self.realms[realm.0];
        let Some(parent) = r.parent else {
            return self.no_route(realm, &pkt);
        };
        match (pkt.src, pkt.dst) {
            (SocketAddr::V4(src), SocketAddr::V4(dst)) => {
                let Some(nat) = r.nat.as_mut() else {
                    return self.no_route(realm, &pkt);
                };
                if *dst.ip() == nat.outside && !nat.cfg.hairpinning {
                    nat.stats.hairpin_refused += 1;
                    return;
                }
                // Translation happens at the NAT, before the uplink may lose the packet.
                let Some(ext) = nat.outbound(self.now, Proto::Udp, src, dst, &mut self.rng) else { return };
                pkt.src = SocketAddr::V4(ext);
            }
            (SocketAddr::V6(_), SocketAddr::V6(_)) if r.has_v6 => {}
            _ => return self.no_route(realm, &pkt),
        }
        if let Some(d) = self.traverse(LinkId::Uplink(realm)) {
            self.schedule(self.now + d, Event::Arrive { realm: parent, pkt });
        }
    }

    fn no_route(&mut self, realm: RealmId, pkt: &Packet) {
        self.stats.no_route += 1;
        log::debug!("{}: no route {} -> {}", self.realm(realm).name, pkt.src, pkt.dst);
    }

    fn nat_inbound(&mut self, realm: RealmId, mut pkt: Packet) {
        let (SocketAddr::V4(remote), SocketAddr::V4(ext)) = (pkt.src, pkt.dst) else {
            return self.no_route(realm, &pkt);
        };
        let now = self.now;
        let r = self.realm_mut(realm);
        let Some(nat) = r.nat.as_mut() else {
            return self.no_route(realm, &pkt);
        };
        match nat.inbound(now, Proto::Udp, remote, ext.port()) {
            Ok(internal) => {
                pkt.dst = SocketAddr::V4(internal);
                self.route(realm, pkt);
            }
            Err(why) => log::debug!("{}: NAT dropped {remote} -> {ext}: {why:?}", r.name),
        }
    }

    fn deliver(&mut self, realm: RealmId, pkt: Packet) {
        let Some(host) = self.host_at(realm, pkt.dst.ip()) else {
            // The owner moved away while the packet was on the LAN.
            return self.no_route(realm, &pkt);
        };
        let h = self.host_mut(host);
        if h.down {
            h.stats.dropped_while_down += 1;
            return;
        }
        let Some(local) = h.socket_at(pkt.dst.port()) else {
            h.stats.port_unreachable += 1;
            return;
        };
        self.record(host, Direction::In, Carrier::Udp, pkt.src, pkt.dst, &pkt.payload);
        let now = self.now;
        let mut buf = pkt.payload;
        let h = self.host_mut(host);
        let received = if local == Local::MAIN {
            h.engine.handle_datagram(now, pkt.src, &mut buf)
        } else {
            match crate::host::handle_datagram_on(h.engine.as_mut(), now, local, pkt.src, &mut buf) {
                Some(r) => r,
                None => {
                    h.stats.no_handler += 1;
                    return;
                }
            }
        };
        match received {
            Received::Ip(range) => match buf.get(range) {
                Some(ip) => h.ip_inbox.push(ip.to_vec()),
                None => h.stats.bad_ip_range += 1,
            },
            // An RS relaying: the same (possibly rewritten) buffer goes out of its socket.
            Received::Forward(to) => self.send_datagram(host, local, to, buf),
            Received::Handled | Received::Dropped(_) => {}
        }
        self.drain(host);
    }

    /// Draws whether a datagram survives `link` and, if so, how long it takes.
    fn traverse(&mut self, link: LinkId) -> Option<Duration> {
        let cfg = link_config(&self.realms, self.default_uplink, link);
        // Draw the jitter even for a lost packet, so that a loss does not shift the
        // sequence every later packet draws from.
        let lost = unit(&mut self.rng) < cfg.loss;
        let extra = jitter_draw(&mut self.rng, cfg.jitter);
        let stats = match link {
            LinkId::Uplink(r) => &mut self.realm_mut(r).uplink_stats,
            LinkId::Lan(r) => &mut self.realm_mut(r).lan_stats,
        };
        if lost {
            stats.lost += 1;
            return None;
        }
        stats.delivered += 1;
        Some(cfg.latency + extra)
    }

    // ---- streams -------------------------------------------------------------------

    fn client_send(&mut self, host: HostId, kind: StreamKind, server: Fqdn, dst: SocketAddr, frame: Vec<u8>) {
        let existing = self
            .conns
            .iter()
            .rev()
            .find(|(_, c)| c.client == host && c.kind == kind && c.server_addr == dst)
            .map(|(&id, _)| id);
        match existing {
            Some(id) => self.conn_send(id, Side::Client, frame),
            None => self.open(host, kind, server, dst, frame),
        }
    }

    /// `server: None`: the frame goes on an existing stream with `dst`, normally one the
    /// peer opened, else one this host opened; with neither it is dropped.
    fn reply_send(&mut self, host: HostId, kind: StreamKind, dst: SocketAddr, frame: Vec<u8>) {
        let found = self.conns.iter().rev().find_map(|(&id, c)| {
            (c.kind == kind && c.server == host && c.seen_from == dst).then_some((id, Side::Server))
        });
        let found = found.or_else(|| {
            self.conns.iter().rev().find_map(|(&id, c)| {
                (c.kind == kind && c.client == host && c.server_addr == dst).then_some((id, Side::Client))
            })
        });
        match found {
            Some((id, side)) => self.conn_send(id, side, frame),
            None => {
                let h = self.host_mut(host);
                h.stats.stream_no_conn += 1;
                log::debug!("{}: no {kind:?} stream with {dst}", h.name);
            }
        }
    }

    /// Opens a connection for a client's first frame.
    fn open(&mut self, host: HostId, kind: StreamKind, server: Fqdn, dst: SocketAddr, frame: Vec<u8>) {
        let now = self.now;
        let h = self.host_mut(host);
        let incarnation = h.incarnation;
        let Some(ip) = h.source_for(&dst) else {
            h.stats.no_source_addr += 1;
            self.schedule(now, Event::Closed { host, incarnation, kind, peer: dst });
            return;
        };
        let local = SocketAddr::new(ip, h.ephemeral_port());
        let realm = h.realm;
        self.record(host, Direction::Out, Carrier::Stream(kind), local, dst, &frame);
        let refused = match self.stream_path(realm, local, dst) {
            Err(links) => Err((links, "no route or behind a NAT")),
            Ok(path) => {
                let s = self.host(path.server);
                if s.down {
                    Err((path.links, "server down"))
                } else if dst.port() != s.port {
                    Err((path.links, "nothing listening"))
                } else if kind == StreamKind::Tls && s.identity.as_ref().map(|i| &i.name) != Some(&server) {
                    Err((path.links, "TLS name mismatch"))
                } else {
                    Ok(path)
                }
            }
        };
        let path = match refused {
            Ok(path) => path,
            Err((links, why)) => {
                let h = self.host_mut(host);
                h.stats.stream_refused += 1;
                log::debug!("{}: {kind:?} to {dst} ({server}) refused: {why}", h.name);
                // The reset or handshake alert comes back after a round trip.
                let rtt = path_delay(&self.realms, self.default_uplink, &mut self.rng, &links, false) * 2;
                self.schedule(now + rtt, Event::Closed { host, incarnation, kind, peer: dst });
                return;
            }
        };
        let there = path_delay(&self.realms, self.default_uplink, &mut self.rng, &path.links, true);
        let back = path_delay(&self.realms, self.default_uplink, &mut self.rng, &path.links, true);
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(
            id,
            Conn {
                kind,
                client: host,
                server: path.server,
                server_addr: dst,
                client_local: local,
                seen_from: path.seen_from,
                links: path.links,
                nat_ports: path.nat_ports,
                state: ConnState::Connecting(vec![frame]),
                last_arrival: [now; 2],
            },
        );
        self.schedule(now + there + back, Event::Connected { conn: id });
    }

    /// Works out a new connection's path, creating its TCP mappings on the way out. Err
    /// holds the links crossed before it failed.
    fn stream_path(&mut self, start: RealmId, local: SocketAddr, dst: SocketAddr) -> Result<StreamPath, Vec<LinkId>> {
        let (mut realm, mut src) = (start, local);
        let (mut links, mut nat_ports) = (Vec::new(), Vec::new());
        // Each realm is left at most once upwards and entered at most once downwards.
        for _ in 0..=2 * self.realms.len() {
            if let Some(server) = self.host_at(realm, dst.ip()) {
                links.push(LinkId::Lan(realm));
                return Ok(StreamPath { server, seen_from: src, links, nat_ports });
            }
            match dst.ip() {
                // No port forwarding: a connection into a NAT is never accepted.
                IpAddr::V4(v4) if self.child_behind(realm, v4).is_some() => return Err(links),
                IpAddr::V4(_) => {}
                IpAddr::V6(_) => {
                    if let Some(child) = self.child_toward(realm, dst.ip()) {
                        links.push(LinkId::Uplink(child));
                        realm = child;
                        continue;
                    }
                }
            }
            let now = self.now;
            let r = &mut self.realms[realm.0];
            let Some(parent) = r.parent else { return Err(links) };
            match (src, dst) {
                (SocketAddr::V4(s), SocketAddr::V4(d)) => {
                    let Some(nat) = r.nat.as_mut() else { return Err(links) };
                    let Some(ext) = nat.outbound(now, Proto::Tcp, s, d, &mut self.rng) else { return Err(links) };
                    nat_ports.push((realm, ext.port()));
                    src = SocketAddr::V4(ext);
                }
                (SocketAddr::V6(_), SocketAddr::V6(_)) if r.has_v6 => {}
                _ => return Err(links),
            }
            links.push(LinkId::Uplink(realm));
            realm = parent;
        }
        Err(links)
    }

    fn connected(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        // A connection that broke while connecting lost its waiting frames; the next send
        // on it finds out.
        let ConnState::Connecting(pending) = &mut conn.state else { return };
        let pending = core::mem::take(pending);
        conn.state = ConnState::Open;
        for frame in pending {
            self.schedule_frame(id, Side::Server, frame);
        }
    }

    fn conn_send(&mut self, id: u64, from: Side, frame: Vec<u8>) {
        let now = self.now;
        let Some(conn) = self.conns.get(&id) else { return };
        let (sender, kind, src, dst) = (conn.host(from), conn.kind, conn.local_addr(from), conn.peer_addr(from));
        self.record(sender, Direction::Out, Carrier::Stream(kind), src, dst, &frame);
        let Some(conn) = self.conns.get_mut(&id) else { return };
        let open = match &mut conn.state {
            ConnState::Connecting(pending) => return pending.push(frame),
            ConnState::Broken => false,
            ConnState::Open => true,
            // The server was reset and dropped the connection; it no longer sends on it.
            ConnState::Reset(told) if *told == from => return,
            ConnState::Reset(_) => {
                self.conns.remove(&id);
                let incarnation = self.host(sender).incarnation;
                self.schedule(now, Event::Closed { host: sender, incarnation, kind, peer: dst });
                return;
            }
        };
        // Every TCP mapping on the path must still be there; using it refreshes it.
        let nat_ports = self.conns.get(&id).map(|c| c.nat_ports.clone()).unwrap_or_default();
        let alive = open
            && nat_ports
                .iter()
                .all(|&(r, port)| self.realm_mut(r).nat.as_mut().is_some_and(|n| n.touch_tcp(now, port)));
        if alive {
            self.schedule_frame(id, from.other(), frame);
        } else if from == Side::Server && open && !nat_ports.is_empty() {
            // From outside into a mapping the NAT forgot: only the sender hears (module doc).
            let h = self.host_mut(sender);
            h.stats.stream_broken += 1;
            log::debug!("{}: {kind:?} stream with {dst} is reset by the client's NAT", h.name);
            let incarnation = h.incarnation;
            if let Some(c) = self.conns.get_mut(&id) {
                c.state = ConnState::Reset(Side::Server);
            }
            self.schedule(now, Event::Closed { host: sender, incarnation, kind, peer: dst });
        } else {
            let h = self.host_mut(sender);
            h.stats.stream_broken += 1;
            log::debug!("{}: {kind:?} stream with {dst} is broken", h.name);
            self.close_conn(id, from);
        }
    }

    fn schedule_frame(&mut self, id: u64, to: Side, frame: Vec<u8>) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        let delay = path_delay(&self.realms, self.default_uplink, &mut self.rng, &conn.links, true);
        let slot = &mut conn.last_arrival[to as usize];
        // TCP delivers in order: no frame overtakes the one before it.
        let at = (self.now + delay).max(*slot);
        *slot = at;
        self.schedule(at, Event::Frame { conn: id, to, frame });
    }

    fn frame_arrived(&mut self, id: u64, to: Side, frame: Vec<u8>) {
        let now = self.now;
        let Some(conn) = self.conns.get(&id) else { return };
        // A connection that broke or closed took its frames in flight with it.
        if !matches!(conn.state, ConnState::Open) {
            return;
        }
        let (host, kind, from, local) = (conn.host(to), conn.kind, conn.peer_addr(to), conn.local_addr(to));
        let peer = match kind {
            StreamKind::Tls => self.host(conn.host(to.other())).identity.clone(),
            StreamKind::Tcp => None,
        };
        if self.host(host).down {
            self.host_mut(host).stats.dropped_while_down += 1;
            return;
        }
        self.record(host, Direction::In, Carrier::Stream(kind), from, local, &frame);
        let h = self.host_mut(host);
        match h.engine.handle_stream(now, kind, from, peer.as_ref(), &frame) {
            Received::Ip(range) => match frame.get(range) {
                Some(ip) => h.ip_inbox.push(ip.to_vec()),
                None => h.stats.bad_ip_range += 1,
            },
            Received::Forward(addr) => log::warn!("{}: Forward({addr}) of a stream frame ignored", h.name),
            Received::Handled | Received::Dropped(_) => {}
        }
        self.drain(host);
    }

    /// Removes a connection and tells both ends: `first` now, the other after the one-way
    /// latency.
    fn close_conn(&mut self, id: u64, first: Side) {
        let Some(conn) = self.conns.remove(&id) else { return };
        let one_way = path_delay(&self.realms, self.default_uplink, &mut self.rng, &conn.links, false);
        for (side, delay) in [(first, Duration::ZERO), (first.other(), one_way)] {
            let host = conn.host(side);
            let incarnation = self.host(host).incarnation;
            let peer = conn.peer_addr(side);
            self.schedule(self.now + delay, Event::Closed { host, incarnation, kind: conn.kind, peer });
        }
    }

    /// Marks every connection of `host` broken, without telling anyone.
    fn break_conns(&mut self, host: HostId) {
        for c in self.conns.values_mut().filter(|c| c.involves(host)) {
            c.state = ConnState::Broken;
        }
    }

    // ---- lookups -------------------------------------------------------------------

    fn realm(&self, id: RealmId) -> &Realm {
        &self.realms[id.0]
    }

    fn realm_mut(&mut self, id: RealmId) -> &mut Realm {
        &mut self.realms[id.0]
    }

    fn host(&self, id: HostId) -> &Host {
        &self.hosts[id.0]
    }

    fn host_mut(&mut self, id: HostId) -> &mut Host {
        &mut self.hosts[id.0]
    }

    /// The host in `realm` owning `ip`.
    fn host_at(&self, realm: RealmId, ip: IpAddr) -> Option<HostId> {
        self.hosts.iter().position(|h| h.realm == realm && h.owns(ip)).map(HostId)
    }

    /// The child realm of `realm` whose NAT has outside address `ip`.
    fn child_behind(&self, realm: RealmId, ip: Ipv4Addr) -> Option<RealmId> {
        self.realms
            .iter()
            .position(|r| r.parent == Some(realm) && r.nat.as_ref().is_some_and(|n| n.outside == ip))
            .map(RealmId)
    }

    /// The child realm of `realm` on the way down to the owner of IPv6 address `ip`.
    fn child_toward(&self, realm: RealmId, ip: IpAddr) -> Option<RealmId> {
        let mut r = self.hosts.iter().find(|h| h.owns(ip))?.realm;
        loop {
            let parent = self.realm(r).parent?;
            if parent == realm {
                return Some(r);
            }
            r = parent;
        }
    }
}
