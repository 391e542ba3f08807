//! The agent's event loop: one thread, one mio poll, the library's node engine.
//!
//! Sources, each read for at most a budget per loop turn ([`READ_BUDGET`]); one with more
//! waiting is read again on the next turn, after every other ready source had its turn and
//! what the turn produced went out, so a flooded socket neither starves the others nor
//! piles up replies and events:
//! - the tunnel's UDP sockets (one per family, one port): datagrams, up to 44 per system
//!   call (recvmmsg), go to the engine; decrypted inner packets go to the TUN device;
//! - the node's extra sockets, while it searches for a direct path through a NAT that
//!   maps per destination, or keeps one for a peer found that way (extra.rs): read like
//!   the tunnel's;
//! - the TUN device: packets are sealed in place for their tunnel, up to 44 of them read
//!   before they are sent with one system call (sendmmsg);
//! - the DNS stub's socket (the box's resolver points at it) and the upstream socket;
//! - the TLS stream to the AS (embedded-tls, only during login) and the TCP stream to the NS;
//! - a netlink socket: address and route changes, debounced, become network changes
//!   (mobility, spec 4.5);
//! - a signalfd (SIGTERM/SIGINT stop, SIGHUP is logged) and the status socket.
//!
//! After every batch of input the loop drains the engine's outputs (transmits, DNS
//! queries, events) and sleeps until the next input or the earliest deadline of the
//! engine, the DNS stub, the DC locator and the netlink debounce.
//!
//! The loop wires parts together: the I/O layer shared with the servers (`ntm_io`: the
//! turn and its again list, framed streams, the status socket, the clock), the node
//! engine, the DNS stub, the DC locator, the TUN device and netlink. What each source
//! does lives beside this file: `datapath.rs` (tunnel sockets and the TUN device),
//! `streams.rs` (the AS and the NS), `status.rs` (`ntmd status`); the files it reads are
//! `crate::material`'s.

use crate::batch::{Batch, BATCH};
use crate::config::{AgentFile, Route};
use crate::held::Held;
use crate::inbox::Inbox;
use crate::lan::Lan;
use crate::material::{credential, Material};
use crate::netlink::{overlapping_routes, ChangeDebounce, KernelRoute, Netlink};
use crate::servers::{ServerAddrs, QUERY_BIT};
use crate::tls::{LoginTls, LoginTlsConfig};
use datapath::{bind_udp6_only, coalesce, queue_errors, size_buffers, tunnel_socket};
use mio::net::UdpSocket;
use mio::unix::SourceFd;
use mio::{Interest, Poll, Token};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use ntm_dns::stub::{Dest, DnsStub, Outcome, StubConfig};
use ntm_dns::{Locator, LocatorConfig};
use ntm_io::{Clock, Framed, StatusSocket, Turn};
use ntm_proto::engine::node::{Node, NodeConfig, NodeEvent, ResolveId};
use ntm_proto::engine::{DcLocation, DnsAnswer, Engine, StreamKind, Transmit, Via};
use ntm_proto::time::Instant;
use ntm_proto::wire::registration::KeepaliveMethod;
use ntm_proto::wire::{Fqdn, Prefix, VirtualAddrs};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use streams::NsConn;

mod datapath;
mod extra;
mod status;
mod streams;

const UDP4: Token = Token(1);
const UDP6: Token = Token(2);
const TUN: Token = Token(3);
const DNS_CLIENT: Token = Token(4);
const DNS_UP4: Token = Token(5);
const DNS_UP6: Token = Token(6);
const NETLINK: Token = Token(7);
const CONTROL: Token = Token(8);
const SIGNALS: Token = Token(9);
const AS_CONN: Token = Token(10);
const NS_CONN: Token = Token(11);
/// Status answers still being written (see `ntm_io::StatusSocket`).
const STATUS_REPLY_BASE: usize = 16;
/// The node's extra sockets: `Local(k)` is `EXTRA_BASE + k` (extra.rs).
const EXTRA_BASE: usize = 1 << 16;
/// The DNS stub's sockets on the LAN addresses (`lan.rs`): `LAN_DNS_BASE + i`.
const LAN_DNS_BASE: usize = 1 << 20;

/// How often the ID token file is looked at for a new token.
const TOKEN_CHECK: std::time::Duration = std::time::Duration::from_secs(30);
/// Datagrams or packets read from one source per loop turn (two receive batches).
const READ_BUDGET: usize = 2 * BATCH;
/// Packets the TUN device holds for the agent to read (see [`Agent::new`]).
const TUN_TX_QUEUE: u32 = 3000;
/// Why the agent could not start.
pub type StartError = Box<dyn std::error::Error>;

/// What the agent counted (for `ntmd status`).
#[derive(Debug, Default)]
struct Counters {
    tun_in: u64,
    tun_out: u64,
    udp_in: u64,
    udp_out: u64,
    no_tunnel: u64,
    /// Packets to a multicast, broadcast or link-local address (the kernel's own traffic
    /// on the TUN link, such as IPv6 router solicitations): no tunnel carries them, and
    /// no ICMP error answers them.
    not_unicast: u64,
    too_big: u64,
    /// ICMP errors the kernel reported about datagrams the tunnel sockets sent.
    icmp_errors: u64,
    /// IPv4 packets without Don't Fragment cut into fragments to fit a narrow path.
    fragmented: u64,
    send_errors: u64,
    /// Tunnel datagrams too large for any agent to have sent (dropped).
    oversized: u64,
    /// Coalesced groups of tunnel datagrams received (each datagram is in `udp_in`).
    udp_groups_in: u64,
    /// With the TUN offloads: super-packets read (and cut into segments), super-packets
    /// written (segments coalesced), reads dropped for a header that could not be used.
    tun_super_in: u64,
    tun_super_out: u64,
    tun_bad: u64,
    network_changes: u64,
    tls_failures: u64,
    /// Peers' announced prefixes refused (each peer and prefix once).
    peer_prefixes_refused: u64,
}

/// The agent.
pub struct Agent {
    cfg: AgentFile,
    /// The ID token file's modification time when last read, and when it was checked.
    token_seen: Option<std::time::SystemTime>,
    token_checked: std::time::Instant,
    poll: Poll,
    clock: Clock,
    node: Node,
    udp4: Option<UdpSocket>,
    udp6: Option<UdpSocket>,
    tun: tun::Device,
    /// The TUN device carries virtio-net headers (`tun.offload`), and the buffer its
    /// reads go to (a super-packet is up to 64 KiB; empty without the offloads).
    offload: bool,
    tun_read: Vec<u8>,
    /// The kernel took TSO (`TUNSETOFFLOAD`): received TCP segments are coalesced.
    tun_gso: bool,
    tun_index: u32,
    tun_addrs: Option<VirtualAddrs>,
    routes: Vec<Route>,
    dns_client: UdpSocket,
    dns_up4: Option<UdpSocket>,
    dns_up6: Option<UdpSocket>,
    stub: DnsStub,
    /// The LAN the box serves (`lan` in the configuration).
    lan: Option<Lan>,
    /// The peers' announced prefixes routed into the TUN device now.
    peer_routes: Vec<Prefix>,
    /// The peers' announced prefixes refused (by the node or by [`peer_prefix_conflict`]),
    /// by peer and prefix, with why, while an established tunnel of the peer announces
    /// them: each is logged and counted once.
    refused_prefixes: BTreeMap<(String, Prefix), String>,
    /// The DC's last refusal of our registration, until a registration succeeds.
    registration_refused: Option<String>,
    locator: Locator,
    resolves: HashMap<ResolveId, u64>,
    tls_cfg: LoginTlsConfig,
    as_conn: Option<(LoginTls, SocketAddr, Framed)>,
    /// The AS connection is given up on if not open by then.
    as_connect_by: Option<std::time::Instant>,
    /// The AS's and the static DC's addresses, names resolved through `dns.upstream`.
    as_addrs: ServerAddrs,
    dc_addrs: ServerAddrs,
    /// The next id of those look-ups (see `servers::QUERY_BIT`).
    next_lookup: u64,
    ns_conn: Option<NsConn>,
    netlink: Netlink,
    debounce: ChangeDebounce,
    /// Sealed datagrams the kernel refused for want of a route, to be sent again.
    held: Held,
    /// The path MTU to each destination of tunnel datagrams.
    pmtus: crate::pmtu::PathMtus,
    /// The node's extra sockets (extra.rs).
    extra: extra::Extra,
    local_addrs: Vec<SocketAddr>,
    control: StatusSocket,
    signals: SignalFd,
    counters: Counters,
    /// Tunnel datagrams received in one call; packets from the TUN device sealed in place
    /// and sent in one call.
    rx: Inbox,
    tx: Batch,
    /// The poll's events, and the sources that used up their budget with input left:
    /// edge-triggered readiness will not report them again, so they are read on the next
    /// turn without sleeping.
    turn: Turn,
    stop: bool,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("node", &self.node).finish_non_exhaustive()
    }
}

fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let std = std::net::UdpSocket::bind(addr)?;
    std.set_nonblocking(true)?;
    Ok(UdpSocket::from_std(std))
}

/// The configured resolvers, those of a family we have an address of first (a query's
/// first try goes to the first; one we cannot reach would cost a timeout per query): for
/// the agent's own look-ups and for the queries its DNS stub forwards.
fn upstream_order(upstream: &[SocketAddr], local: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut v = upstream.to_vec();
    v.sort_by_key(|u| !local.iter().any(|l| l.is_ipv4() == u.is_ipv4()));
    v
}

/// The destinations, one per family, for which the agent asks the kernel which path it
/// would take: the static DC's address of that family, else the AS's, else a documentation
/// address (RFC 5737, RFC 3849) that only a default route reaches.
fn probe_destinations(dc: &[SocketAddr], account_servers: &[SocketAddr]) -> [IpAddr; 2] {
    let pick = |v4: bool, fallback: IpAddr| {
        dc.iter().chain(account_servers).map(SocketAddr::ip).find(|a| a.is_ipv4() == v4).unwrap_or(fallback)
    };
    [pick(true, IpAddr::from([192, 0, 2, 1])), pick(false, IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1]))]
}

impl Agent {
    /// Opens every socket and the TUN device. Needs CAP_NET_ADMIN.
    pub fn new(cfg: AgentFile, material: Material) -> Result<Self, StartError> {
        let poll = Poll::new()?;
        let Material { tls: tls_cfg, key_pair, credential, routes } = material;
        let cfg_token_mtime = cfg
            .credential
            .oidc_token_file
            .as_ref()
            .and_then(|p| std::fs::metadata(p.as_str()).and_then(|m| m.modified()).ok());

        // Tunnel sockets: one port, both families where the host has them. A family the
        // kernel lacks is skipped; any other error (the port is taken, no permission) stops
        // the agent, which would otherwise run on without ever registering in that family.
        let port = cfg.udp_port;
        let udp4 = tunnel_socket("IPv4", port, bind_udp(SocketAddr::from(([0, 0, 0, 0], port))))?;
        let udp6 = tunnel_socket("IPv6", port, bind_udp6_only(port))?;
        if udp4.is_none() && udp6.is_none() {
            return Err(format!("cannot bind UDP port {port}: this host has neither IPv4 nor IPv6").into());
        }
        // Coalesced groups on receive where the kernel can (see crate::inbox).
        let coalescing = cfg.udp_coalescing && ntm_io::udp::coalescing_works();
        for s in udp4.iter().chain(udp6.iter()) {
            size_buffers(s);
            queue_errors(s);
            if coalescing {
                coalesce(s);
            }
        }

        let mut tun_cfg = tun::Configuration::default();
        tun_cfg.tun_name(cfg.tun.name.as_str()).mtu(cfg.tun.mtu).up();
        // With `tun.offload`, IFF_VNET_HDR: every packet read or written carries a
        // virtio-net header, so the kernel can hand over and take TCP super-packets.
        let offload = cfg.tun.offload;
        tun_cfg.platform_config(|p| {
            p.vnet_hdr(offload);
        });
        let tun = tun::create(&tun_cfg).map_err(|e| format!("TUN device {}: {e}", cfg.tun.name))?;
        tun.set_nonblock()?;
        let mut tun_gso = false;
        if offload {
            // A kernel without them refuses the flags: the header stays, with nothing in it.
            let flags = crate::offload::enable(&tun);
            log::info!("TUN offloads: {flags:#x} (checksum 0x1, TSO 0x6, USO 0x60)");
            tun_gso = flags & crate::offload::TUN_F_TSO != 0;
        }
        let tun_read = if offload { vec![0u8; crate::offload::READ_MAX] } else { Vec::new() };
        let mut netlink = Netlink::open()?;
        let tun_index = netlink.link_index(&cfg.tun.name)?.ok_or("TUN device has no index")?;
        netlink.set_link_up(tun_index, Some(u32::from(cfg.tun.mtu)))?;
        // The kernel drops what the agent has not read when the TUN's queue is full, and a
        // TCP sender sees each drop as congestion: with the default 500 packets a single
        // stream through the tunnel lost about 1 segment in 100. The queue holds a sender's
        // whole window (the default largest TCP send buffer, 4 MiB, in full-size packets).
        if let Err(e) = netlink.set_tx_queue_len(tun_index, TUN_TX_QUEUE) {
            log::warn!("{}: transmit queue length {TUN_TX_QUEUE}: {e}", cfg.tun.name);
        }

        // Forwarding, the nftables table and the LAN's DNS sockets, while still root.
        let mut lan = Lan::start(&cfg, &mut netlink)?;

        let exclude: Vec<(IpAddr, u8)> = routes.iter().map(|r| (r.addr, r.len)).collect();
        // Names among the servers are looked up once the loop runs; until then the node
        // knows only the literal addresses (and its login waits for the rest).
        let as_addrs = ServerAddrs::new("AS", cfg.account_servers());
        let dc_addrs = ServerAddrs::new("static DC", cfg.static_dc_addrs());
        let probes = probe_destinations(&dc_addrs.addrs(), &as_addrs.addrs());
        let local_addrs = netlink.usable_addrs(&probes, &[tun_index], &exclude, cfg.udp_port)?;
        log::info!("local addresses {local_addrs:?}");

        let as_name = cfg.account_server_name.clone().ok_or("account_server_name: missing")?;
        let mut ncfg = NodeConfig::new(as_addrs.addrs(), as_name, credential, local_addrs.clone());
        ncfg.keepalive = if cfg.keepalive.as_str() == "ns" { KeepaliveMethod::Ns } else { KeepaliveMethod::Udp };
        if cfg.public_key_mode {
            ncfg.key_pair = key_pair;
            ncfg.strict_public_key_mode = cfg.strict_public_key_mode;
        }
        ncfg.static_dc = cfg.static_dc.as_ref().map(|d| DcLocation { name: d.name.clone(), addrs: dc_addrs.addrs() });
        ncfg.max_tunnels = usize::from(cfg.max_tunnels);
        ncfg.announced = cfg.announced()?;
        ncfg.virtual_routes = cfg.routes()?.iter().map(Route::prefix).collect::<Result<_, _>>()?;
        ncfg.accept_peer_prefixes = Some(cfg.accepted_peer_prefixes()?);
        // With no address yet (no network at boot), the node starts once one appears.
        let node = Node::new(
            NodeConfig {
                local_addrs: if local_addrs.is_empty() {
                    vec![SocketAddr::from(([0, 0, 0, 0], 0))]
                } else {
                    local_addrs.clone()
                },
                ..ncfg
            },
            Box::new(rand_core::OsRng),
        )?;

        let mut dns_client = bind_udp(cfg.dns.listen).map_err(|e| format!("DNS stub {}: {e}", cfg.dns.listen))?;
        let mut dns_up4 = bind_udp(SocketAddr::from(([0, 0, 0, 0], 0))).ok();
        let mut dns_up6 = bind_udp(SocketAddr::from(([0u16; 8], 0))).ok();
        let stub = DnsStub::new(
            StubConfig {
                ntm_domains: cfg.dns.ntm_domains.to_vec(),
                upstream: upstream_order(&cfg.dns.upstream, &local_addrs),
                ..StubConfig::default()
            },
            Box::new(rand_core::OsRng),
        );
        let locator = Locator::new(
            LocatorConfig {
                nameservers: upstream_order(&cfg.dns.upstream, &local_addrs),
                dc_port: cfg.dns.dc_port,
                ntm_domains: cfg.dns.ntm_domains.to_vec(),
                ..LocatorConfig::default()
            },
            Box::new(rand_core::OsRng),
        );

        let path = std::path::Path::new(cfg.status_socket.as_str());
        // A socket left by an earlier run is replaced; anything else at that path is not ours.
        let control = StatusSocket::bind(path, poll.registry(), CONTROL, STATUS_REPLY_BASE)
            .map_err(|e| format!("status socket {}: {e}", path.display()))?;

        let mut mask = SigSet::empty();
        for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
            mask.add(s);
        }
        mask.thread_block()?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;

        let mut udp4 = udp4;
        let mut udp6 = udp6;
        let r = poll.registry();
        if let Some(s) = udp4.as_mut() {
            r.register(s, UDP4, Interest::READABLE)?;
        }
        if let Some(s) = udp6.as_mut() {
            r.register(s, UDP6, Interest::READABLE)?;
        }
        r.register(&mut SourceFd(&tun.as_raw_fd()), TUN, Interest::READABLE)?;
        r.register(&mut dns_client, DNS_CLIENT, Interest::READABLE)?;
        if let Some(s) = dns_up4.as_mut() {
            r.register(s, DNS_UP4, Interest::READABLE)?;
        }
        if let Some(s) = dns_up6.as_mut() {
            r.register(s, DNS_UP6, Interest::READABLE)?;
        }
        r.register(&mut SourceFd(&netlink.as_raw_fd()), NETLINK, Interest::READABLE)?;
        for (i, (_, s)) in lan.iter_mut().flat_map(|l| l.dns.iter_mut()).enumerate() {
            r.register(s, Token(LAN_DNS_BASE + i), Interest::READABLE)?;
        }
        r.register(&mut SourceFd(&signals.as_raw_fd()), SIGNALS, Interest::READABLE)?;

        Ok(Agent {
            cfg,
            poll,
            clock: Clock::from_zero(),
            node,
            udp4,
            udp6,
            tun,
            offload,
            tun_read,
            tun_gso,
            tun_index,
            tun_addrs: None,
            routes,
            dns_client,
            dns_up4,
            dns_up6,
            stub,
            lan,
            peer_routes: Vec::new(),
            refused_prefixes: BTreeMap::new(),
            registration_refused: None,
            locator,
            resolves: HashMap::new(),
            tls_cfg,
            token_seen: cfg_token_mtime,
            token_checked: std::time::Instant::now(),
            as_conn: None,
            as_connect_by: None,
            as_addrs,
            dc_addrs,
            next_lookup: 1,
            ns_conn: None,
            netlink,
            debounce: ChangeDebounce::default(),
            held: Held::default(),
            pmtus: crate::pmtu::PathMtus::default(),
            extra: extra::Extra::new(coalescing),
            local_addrs,
            control,
            signals,
            counters: Counters::default(),
            rx: Inbox::new(coalescing),
            tx: Batch::new(),
            turn: Turn::new(256),
            stop: false,
        })
    }

    /// The engine's clock: milliseconds since the agent started (monotonic).
    fn now(&self) -> Instant {
        self.clock.now()
    }

    /// A wall-clock instant on the engine's clock.
    fn engine_time(&self, t: std::time::Instant) -> Instant {
        self.clock.at(t)
    }

    /// Runs until SIGTERM or SIGINT.
    pub fn run(&mut self) -> io::Result<()> {
        self.resolve_servers(self.now());
        if !self.local_addrs.is_empty() {
            let now = self.now();
            self.node.start(now);
        } else {
            log::warn!("no usable address yet; waiting for the network");
        }
        while !self.stop {
            let now = self.now();
            self.flush(now);
            let mut next = self.next_deadline();
            // The timers' checks only when one is due: each reads the clock or walks the
            // tunnels, and most turns of a busy tunnel (every packet of an idle one) have
            // nothing due.
            if next.is_some_and(|at| at <= now) {
                self.timers(now);
                self.flush(now);
                next = self.next_deadline();
            }
            let wait = next.map_or(std::time::Duration::from_secs(60), |at| self.clock.until(at));
            // The poll's sources, then those left with input last turn (without sleeping).
            let ready = self.turn.wait(&mut self.poll, wait)?;
            for r in &ready {
                match r.token {
                    UDP4 | UDP6 => {
                        if r.error {
                            self.read_udp_errors(r.token);
                        }
                        self.read_udp(r.token);
                    }
                    TUN => self.read_tun(),
                    DNS_CLIENT => self.read_dns_client(),
                    DNS_UP4 | DNS_UP6 => self.read_dns_upstream(r.token),
                    NETLINK => self.read_netlink(),
                    CONTROL => self.serve_status(),
                    SIGNALS => self.read_signals(),
                    AS_CONN => self.drive_as(),
                    NS_CONN => self.drive_ns(r.writable),
                    t if self.control.owns(t) => self.control.writable(self.poll.registry(), t),
                    t if t.0 >= LAN_DNS_BASE => self.read_dns_lan(t),
                    t => {
                        if let Some(local) = extra::local_of(t) {
                            if r.error {
                                self.read_extra_errors(local);
                            }
                            self.read_extra(local);
                        }
                    }
                }
                // What this source's input produced goes out before the next source is
                // read: the engine's and the stub's queues hold at most one budget's worth.
                let now = self.now();
                self.flush(now);
            }
            self.turn.done(ready);
        }
        self.control.remove_file();
        log::info!("stopped");
        Ok(())
    }

    fn next_deadline(&self) -> Option<Instant> {
        let token_check =
            self.cfg.credential.oidc_token_file.as_ref().map(|_| self.engine_time(self.token_checked + TOKEN_CHECK));
        [
            token_check,
            self.node.poll_timeout(),
            self.stub.poll_timeout(),
            self.locator.poll_timeout(),
            self.debounce.deadline().map(|t| self.engine_time(t)),
            self.held.deadline().map(|t| self.engine_time(t)),
            self.as_addrs.deadline(),
            self.dc_addrs.deadline(),
            self.as_connect_by.map(|t| self.engine_time(t)),
            self.ns_conn.as_ref().filter(|c| c.connecting).map(|c| self.engine_time(c.connect_by)),
            self.control.deadline().map(|t| self.engine_time(t)),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// An ID token file that changed (a helper refreshed the token) replaces the
    /// credential for the next login.
    fn check_token(&mut self) {
        let Some(path) = self.cfg.credential.oidc_token_file.clone() else { return };
        if self.token_checked.elapsed() < TOKEN_CHECK {
            return;
        }
        self.token_checked = std::time::Instant::now();
        let mtime = std::fs::metadata(path.as_str()).and_then(|m| m.modified()).ok();
        if mtime.is_none() || mtime == self.token_seen {
            return;
        }
        self.token_seen = mtime;
        match credential(&self.cfg) {
            Ok(c) => {
                log::info!("{path} changed: the next login uses the new ID token");
                self.node.set_credential(c);
            }
            Err(e) => log::warn!("ID token: {e}; keeping the previous one"),
        }
    }

    fn timers(&mut self, now: Instant) {
        self.check_token();
        if self.node.poll_timeout().is_some_and(|t| t <= now) {
            self.node.handle_timeout(now);
        }
        if self.stub.poll_timeout().is_some_and(|t| t <= now) {
            self.stub.handle_timeout(now);
        }
        if self.locator.poll_timeout().is_some_and(|t| t <= now) {
            self.locator.handle_timeout(now);
        }
        if self.debounce.due(std::time::Instant::now()) {
            self.network_changed(now);
        }
        if self.held.deadline().is_some_and(|t| t <= std::time::Instant::now()) {
            self.send_held();
        }
        if self.as_addrs.deadline().is_some_and(|t| t <= now) {
            self.as_addrs.resolve(now, &mut self.locator, &mut self.next_lookup);
        }
        if self.dc_addrs.deadline().is_some_and(|t| t <= now) {
            self.dc_addrs.resolve(now, &mut self.locator, &mut self.next_lookup);
        }
        self.connect_timeouts(now);
        if self.control.deadline().is_some_and(|t| t <= std::time::Instant::now()) {
            self.control.sweep(self.poll.registry(), std::time::Instant::now());
        }
    }

    /// Looks up the servers given by name again (start, network change).
    fn resolve_servers(&mut self, now: Instant) {
        self.as_addrs.resolve(now, &mut self.locator, &mut self.next_lookup);
        self.dc_addrs.resolve(now, &mut self.locator, &mut self.next_lookup);
    }

    /// A look-up of a server name finished: the node gets the new addresses.
    fn server_answer(&mut self, now: Instant, id: u64, answer: &DnsAnswer) {
        if !self.as_addrs.handle_answer(now, id, answer) && !self.dc_addrs.handle_answer(now, id, answer) {
            return;
        }
        if let Some(addrs) = self.as_addrs.take_changed() {
            self.node.set_account_servers(now, addrs);
        }
        if let Some(addrs) = self.dc_addrs.take_changed() {
            let name = self.cfg.static_dc.as_ref().map(|d| d.name.clone());
            self.node.set_static_dc(name.map(|name| DcLocation { name, addrs }));
        }
    }

    fn read_dns_client(&mut self) {
        let mut buf = [0u8; 1500];
        for _ in 0..READ_BUDGET {
            let (n, from) = match self.dns_client.recv_from(&mut buf) {
                Ok(x) => x,
                Err(_) => return,
            };
            let now = self.now();
            let Some(q) = buf.get(..n) else { continue };
            if let Outcome::Resolve { token, name } = self.stub.handle_query(now, from, q) {
                let id = self.node.resolve(now, name);
                self.resolves.insert(id, token);
            }
        }
        self.turn.spent(DNS_CLIENT);
    }

    /// A query on one of the LAN's stub sockets: answered only for the LAN's own subnets.
    fn read_dns_lan(&mut self, token: Token) {
        let mut buf = [0u8; 1500];
        for _ in 0..READ_BUDGET {
            let Some(lan) = self.lan.as_mut() else { return };
            let Some((_, sock)) = lan.dns.get(token.0 - LAN_DNS_BASE) else { return };
            let (n, from) = match sock.recv_from(&mut buf) {
                Ok(x) => x,
                Err(_) => return,
            };
            if !lan.may_ask(from) {
                // No open resolver: only the LAN's devices.
                lan.dns_refused += 1;
                continue;
            }
            let now = self.now();
            let Some(q) = buf.get(..n) else { continue };
            if let Outcome::Resolve { token, name } = self.stub.handle_query(now, from, q) {
                let id = self.node.resolve(now, name);
                self.resolves.insert(id, token);
            }
        }
        self.turn.spent(token);
    }

    fn read_dns_upstream(&mut self, token: Token) {
        let mut buf = [0u8; 4096];
        for _ in 0..READ_BUDGET {
            let sock = if token == DNS_UP4 { self.dns_up4.as_ref() } else { self.dns_up6.as_ref() };
            let Some(sock) = sock else { return };
            let (n, from) = match sock.recv_from(&mut buf) {
                Ok(x) => x,
                Err(_) => return,
            };
            let now = self.now();
            let Some(reply) = buf.get(..n) else { continue };
            // The stub's forwarded queries and the locator's share the socket; each
            // ignores replies that are not its own (id, question and source checked).
            self.stub.handle_upstream(now, from, reply);
            self.locator.handle_response(now, from, reply);
        }
        self.turn.spent(token);
    }

    fn read_netlink(&mut self) {
        match self.netlink.read_events() {
            Ok(events) if !events.is_empty() => {
                self.debounce.note(std::time::Instant::now());
                // An address or route came or went: what was refused may go now.
                if !self.held.is_empty() {
                    self.send_held();
                }
            }
            Ok(_) => {}
            Err(e) => log::warn!("netlink: {e}"),
        }
    }

    /// The debounced network change: tell the engine if our usable addresses changed.
    fn network_changed(&mut self, now: Instant) {
        let exclude: Vec<(IpAddr, u8)> = self.routes.iter().map(|r| (r.addr, r.len)).collect();
        let probes = probe_destinations(&self.dc_addrs.addrs(), &self.as_addrs.addrs());
        let addrs = match self.netlink.usable_addrs(&probes, &[self.tun_index], &exclude, self.cfg.udp_port) {
            Ok(a) => a,
            Err(e) => {
                log::warn!("netlink dump: {e}");
                return;
            }
        };
        if addrs == self.local_addrs {
            return;
        }
        log::info!("usable addresses changed: {:?} -> {addrs:?}", self.local_addrs);
        self.counters.network_changes += 1;
        // Another network, other paths: every path MTU is asked again at its next use.
        self.pmtus.forget();
        let first = self.local_addrs.is_empty();
        self.local_addrs = addrs.clone();
        // A connection to the NS from an address that went away is replaced now: the
        // node reconnects after a network change, and that must not queue behind it.
        let stale_ns = self.ns_conn.as_ref().map(|c| c.peer).filter(|_| self.ns_conn_stale());
        if let Some(peer) = stale_ns {
            log::info!("the connection to the NS {peer} left from an address we no longer use; closing it");
            self.drop_ns_conn();
        }
        if addrs.is_empty() {
            if let Some(peer) = stale_ns {
                self.node.handle_stream_closed(now, StreamKind::Tcp, peer);
            }
            return; // offline: wait for an address
        }
        // Another network may have another resolver's view, or reach other addresses;
        // resolvers of the families we have now go first.
        let order = upstream_order(&self.cfg.dns.upstream, &self.local_addrs);
        self.stub.set_upstream(order.clone());
        self.locator.set_nameservers(order);
        self.resolve_servers(now);
        if first && self.node.fqdn().is_none() {
            self.node.handle_network_change(now, addrs);
            self.node.start(now);
        } else {
            self.node.handle_network_change(now, addrs);
        }
    }

    fn read_signals(&mut self) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            let sig = i32::try_from(info.ssi_signo).unwrap_or(0);
            if sig == Signal::SIGHUP as i32 {
                log::info!("SIGHUP: nothing to reload (the configuration is read at start)");
            } else {
                log::info!("signal {sig}: stopping");
                self.stop = true;
            }
        }
    }

    fn route(&mut self, now: Instant, t: Transmit) {
        match t.via {
            Via::Udp => self.send_udp(t.dst, &t.payload),
            Via::UdpFrom(local) => self.send_extra(local, t.dst, &t.payload),
            Via::Stream { kind: StreamKind::Tls, .. } => self.send_as(now, t.dst, &t.payload),
            Via::Stream { kind: StreamKind::Tcp, .. } => self.send_ns(now, t.dst, &t.payload),
        }
    }

    /// Puts the virtual addresses on the TUN device and routes the virtual prefixes
    /// into it, once registered.
    fn configure_tun(&mut self, v: VirtualAddrs) {
        if self.tun_addrs == Some(v) {
            return;
        }
        let i = self.tun_index;
        let mut ok = self.netlink.add_address(i, IpAddr::V4(v.v4), 32).is_ok();
        ok &= self.netlink.add_address(i, IpAddr::V6(v.v6), 128).is_ok();
        self.warn_of_overlapping_routes();
        for r in &self.routes {
            if let Err(e) = self.netlink.add_route(i, r.addr, r.len, None) {
                log::warn!("route {}/{} into {}: {e}", r.addr, r.len, self.cfg.tun.name);
                ok = false;
            }
        }
        if ok {
            log::info!("{}: virtual {} and {}", self.cfg.tun.name, v.v4, v.v6);
            self.tun_addrs = Some(v);
        }
    }

    /// Routes the announced prefixes of the peers of established tunnels into the TUN
    /// device, and takes back those no tunnel carries any more (subnet routes, `lan.rs`).
    /// A prefix the node refused (outside `accept_peer_prefixes`, over the virtual routes)
    /// or one over this box's own networks, servers or DNS upstreams
    /// ([`peer_prefix_conflict`]) is not routed: logged once, counted, shown.
    fn route_peer_prefixes(&mut self) {
        let tunnels: Vec<_> = self.node.tunnels().into_iter().filter(|t| t.established).collect();
        // A prefix refused earlier stays refused while a tunnel of its peer announces it:
        // checked (and logged, counted) once. The box's routes are read only for a prefix
        // not seen before.
        let seen = |peer: &Fqdn, p: &Prefix| {
            self.peer_routes.contains(p) || self.refused_prefixes.contains_key(&(peer.to_string(), *p))
        };
        let any_new = tunnels.iter().any(|t| {
            t.peer_prefixes.iter().chain(t.refused_prefixes.iter().map(|(p, _)| p)).any(|p| !seen(&t.peer, p))
        });
        let existing = if any_new { self.netlink.routes().unwrap_or_default() } else { Vec::new() };
        let mut keep: Vec<(IpAddr, &str)> = self.node.server_addrs().into_iter().map(|a| (a, "a server")).collect();
        keep.extend(self.cfg.dns.upstream.iter().map(|a| (a.ip(), "a DNS upstream")));
        keep.extend(self.local_addrs.iter().map(|a| (a.ip(), "an address")));
        let mut want: Vec<Prefix> = Vec::new();
        let mut refused: Vec<(String, Prefix, String)> = Vec::new();
        for t in &tunnels {
            let peer = t.peer.to_string();
            refused.extend(t.refused_prefixes.iter().map(|(p, why)| (peer.clone(), *p, why.to_string())));
            for p in &t.peer_prefixes {
                if let Some(why) = self.refused_prefixes.get(&(peer.clone(), *p)) {
                    refused.push((peer.clone(), *p, why.clone()));
                    continue;
                }
                // One routed already was checked against the box's routes then (which now
                // include it); the servers may have changed since.
                let routes = if self.peer_routes.contains(p) { &[][..] } else { &existing[..] };
                match peer_prefix_conflict(*p, routes, self.tun_index, &keep) {
                    Some(why) => refused.push((peer.clone(), *p, why)),
                    None => want.push(*p),
                }
            }
        }
        let mut now_refused = BTreeMap::new();
        for (peer, p, why) in refused {
            if !self.refused_prefixes.contains_key(&(peer.clone(), p)) {
                log::warn!("{peer}'s announced prefix {p} is not routed: {why}");
                self.counters.peer_prefixes_refused += 1;
            }
            now_refused.insert((peer, p), why);
        }
        self.refused_prefixes = now_refused;
        want.sort();
        want.dedup();
        for p in self.peer_routes.iter().filter(|p| !want.contains(p)) {
            if let Err(e) = self.netlink.del_route(self.tun_index, p.addr(), p.prefix_len()) {
                log::warn!("route {p} out of {}: {e}", self.cfg.tun.name);
            }
        }
        self.peer_routes.retain(|p| want.contains(p));
        for p in want.into_iter().filter(|p| !self.peer_routes.contains(p)).collect::<Vec<_>>() {
            match self.netlink.add_route(self.tun_index, p.addr(), p.prefix_len(), None) {
                Ok(()) => {
                    log::info!("route {p} into {} (a peer's announced prefix)", self.cfg.tun.name);
                    self.peer_routes.push(p);
                }
                Err(e) => log::warn!("route {p} into {}: {e}", self.cfg.tun.name),
            }
        }
    }

    /// Warns of each route already on the box that overlaps a virtual prefix: once the
    /// prefix goes into the TUN device, some addresses go the wrong way (see
    /// [`overlapping_routes`]). A misconfiguration the agent cannot settle, so it
    /// only says so.
    fn warn_of_overlapping_routes(&mut self) {
        let existing = match self.netlink.routes() {
            Ok(r) => r,
            Err(e) => {
                log::debug!("netlink route dump: {e}");
                return;
            }
        };
        for r in &self.routes {
            for o in overlapping_routes(&existing, r.addr, r.len, self.tun_index) {
                log::warn!(
                    "virtual prefix {}/{} overlaps the route {o} already on this box: addresses in both go one way \
                     only; choose virtual prefixes that no network of the box uses (docs/agent.md)",
                    r.addr,
                    r.len
                );
            }
        }
    }

    fn handle_event(&mut self, now: Instant, ev: NodeEvent) {
        match ev {
            NodeEvent::LocalsReleased { locals } => self.release_extra(&locals),
            NodeEvent::LoggedIn { fqdn } => {
                log::info!("logged in as {fqdn}");
                // The login connection is not needed any more.
                self.close_as(now);
            }
            NodeEvent::LoginFailed { reason } => {
                // The engine logged the one error line saying why and that it stopped.
                log::debug!("login stopped: {reason:?}");
                self.close_as(now);
            }
            NodeEvent::LoginRefused { reason } => {
                // The engine logged the refusal; it tries again after its backoff, and the
                // login connection is not needed until then.
                log::debug!("login attempt refused: {reason:?}");
                self.close_as(now);
            }
            NodeEvent::Registered { virtual_addrs, observed, behind_nat } => {
                log::info!("registered; seen as {observed}{}", if behind_nat { " (behind NAT)" } else { "" });
                self.registration_refused = None;
                self.configure_tun(virtual_addrs);
            }
            NodeEvent::RegistrationRefused { reason, detail } => {
                // Once per new refusal: the node asks again after its backoff.
                let text = format!("{reason:?}: {detail}");
                if self.registration_refused.as_ref() != Some(&text) {
                    log::error!("the DC refused our registration: {text}");
                }
                self.registration_refused = Some(text);
            }
            NodeEvent::NotificationsReady => log::info!("the NS keeps us reachable"),
            NodeEvent::GatewayNames { all, names } => {
                if all {
                    log::info!("the DC's gateway carries every ordinary name");
                } else {
                    log::info!("the DC's gateway carries {} name(s)", names.len());
                }
                self.stub.set_gateway_names(all, names);
            }
            NodeEvent::AccountServerUnreachable => {
                // Its name may point elsewhere now (names only; addresses stay as they are).
                self.as_addrs.resolve(now, &mut self.locator, &mut self.next_lookup);
            }
            NodeEvent::Resolved { id, virtual_addrs, name } => {
                if let Some(token) = self.resolves.remove(&id) {
                    log::debug!("{name} is {} / {}", virtual_addrs.v4, virtual_addrs.v6);
                    self.stub.resolved(now, token, Ok(virtual_addrs));
                }
            }
            NodeEvent::ResolveFailed { id, error, name } => {
                if let Some(token) = self.resolves.remove(&id) {
                    log::debug!("{name}: {error:?}");
                    self.stub.resolved(now, token, Err(error));
                }
            }
            NodeEvent::TunnelUp { session, peer, path } => {
                log::info!("tunnel {session} to {peer} up ({path:?})");
                self.route_peer_prefixes();
            }
            NodeEvent::PathChanged { session, peer, path } => log::info!("tunnel {session} to {peer} now {path:?}"),
            NodeEvent::TunnelDown { session, peer } => {
                log::info!("tunnel {session} to {peer} down");
                self.route_peer_prefixes();
            }
            NodeEvent::NsConnectionLost { addr } => {
                // The node's next frame for the NS opens a new connection.
                if self.ns_conn.as_ref().is_some_and(|c| c.peer == addr) {
                    log::info!("closing the connection to the NS {addr}: it stopped answering on it");
                    self.drop_ns_conn();
                }
            }
        }
    }

    /// Drains the engine, the stub and the locator until none has anything more.
    fn flush(&mut self, now: Instant) {
        for _ in 0..64 {
            let mut busy = false;
            while let Some(t) = self.node.poll_transmit() {
                busy = true;
                self.route(now, t);
            }
            while let Some(q) = self.node.poll_dns() {
                busy = true;
                self.locator.start(now, q);
            }
            while let Some((id, a)) = self.locator.poll_answer() {
                busy = true;
                if id & QUERY_BIT != 0 {
                    self.server_answer(now, id, &a);
                } else {
                    self.node.handle_dns(now, id, a);
                }
            }
            while let Some(ev) = self.node.poll_event() {
                busy = true;
                self.handle_event(now, ev);
            }
            while let Some((to, bytes)) = self.locator.poll_transmit() {
                self.send_dns_upstream(to, &bytes);
            }
            while let Some((dest, to, bytes)) = self.stub.poll_transmit() {
                match dest {
                    Dest::Client => {
                        // A LAN device is answered from the LAN socket of its subnet.
                        let sock = self.lan.as_ref().and_then(|l| l.socket_for(to)).unwrap_or(&self.dns_client);
                        let _ = sock.send_to(&bytes, to);
                    }
                    Dest::Upstream => self.send_dns_upstream(to, &bytes),
                }
            }
            if !busy {
                break;
            }
        }
    }

    fn send_dns_upstream(&mut self, to: SocketAddr, bytes: &[u8]) {
        let sock = if to.is_ipv4() { self.dns_up4.as_ref() } else { self.dns_up6.as_ref() };
        if let Some(s) = sock {
            let _ = s.send_to(bytes, to);
        }
    }
}

/// Why a peer's announced prefix must not go into the TUN device, if it must not: it
/// overlaps a route of this box (its LAN, its uplink: the route would replace or shadow
/// the box's own, and that network would go into the tunnel), or it holds an address the
/// box must reach directly (`keep`: its servers, DNS upstreams, own addresses; the
/// default route reaches those, and a peer announcing them would cut the box off them
/// or read its traffic to them).
fn peer_prefix_conflict(p: Prefix, routes: &[KernelRoute], own: u32, keep: &[(IpAddr, &str)]) -> Option<String> {
    if let Some(o) = overlapping_routes(routes, p.addr(), p.prefix_len(), own).first() {
        return Some(format!("it overlaps the route {o} of this box"));
    }
    keep.iter().find(|(a, _)| p.contains(*a)).map(|(a, what)| format!("it holds {a}, {what} of this box"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(s: &str) -> Prefix {
        let (a, l) = s.split_once('/').unwrap();
        Prefix::new(a.parse().unwrap(), l.parse().unwrap()).unwrap()
    }

    #[test]
    fn a_peer_prefix_over_a_server_or_a_route_of_the_box_is_refused() {
        let routes = [
            KernelRoute { dst: "10.1.0.0".parse().unwrap(), prefix_len: 24, ifindex: 2, ifname: "lan0".into() },
            KernelRoute { dst: "10.9.0.0".parse().unwrap(), prefix_len: 16, ifindex: 7, ifname: "ntm0".into() },
        ];
        let keep = [("192.0.2.20".parse().unwrap(), "a server"), ("2001:db8::53".parse().unwrap(), "a DNS upstream")];
        let why = |p: &str| peer_prefix_conflict(prefix(p), &routes, 7, &keep);
        // The servers' subnet, wider or narrower, and the DNS upstream's.
        assert!(why("192.0.2.0/24").unwrap().contains("192.0.2.20, a server"));
        assert!(why("192.0.0.0/8").is_some());
        assert!(why("192.0.2.20/32").is_some());
        assert!(why("2001:db8::/32").unwrap().contains("a DNS upstream"));
        // The box's LAN, wider or narrower; the TUN device's own routes do not count.
        assert!(why("10.1.0.0/16").unwrap().contains("10.1.0.0/24 dev lan0"));
        assert!(why("10.1.0.128/25").is_some());
        assert_eq!(why("10.9.0.0/16"), None);
        // Beside all of them.
        assert_eq!(why("192.0.3.0/24"), None);
        assert_eq!(why("10.2.0.0/24"), None);
        assert_eq!(why("fd00:1::/64"), None);
    }
}
