//! The agent's event loop: one thread, one mio poll, the library's node engine.
//!
//! Sources, each read for at most a budget per loop turn ([`READ_BUDGET`]); one with more
//! waiting is read again on the next turn, after every other ready source had its turn and
//! what the turn produced went out, so a flooded socket neither starves the others nor
//! piles up replies and events:
//! - the tunnel's UDP sockets (one per family, one port): datagrams, up to 32 per system
//!   call (recvmmsg), go to the engine; decrypted inner packets go to the TUN device;
//! - the TUN device: packets are sealed in place for their tunnel, up to 32 of them read
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

use crate::batch::{Batch, BATCH, SLOT_LEN};
use crate::config::{AgentFile, Route};
use crate::control::Json;
use crate::held::Held;
use crate::icmp;
use crate::netlink::{overlapping_routes, usable_local_addrs, ChangeDebounce, Netlink};
use crate::servers::{ServerAddrs, QUERY_BIT};
use crate::tls::{ClientCert, LoginTls, LoginTlsConfig, LoginTlsError};
use mio::net::{TcpStream, UdpSocket, UnixListener};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use ntm_cmdline::Failure;
use ntm_dns::stub::{Dest, DnsStub, Outcome, StubConfig};
use ntm_dns::{Locator, LocatorConfig};
use ntm_proto::crypto::pk::KeyPair;
use ntm_proto::crypto::TAG_LEN;
use ntm_proto::engine::node::{Node, NodeConfig, NodeEvent, PathKind, ResolveId, SendError};
use ntm_proto::engine::{DcLocation, DnsAnswer, Engine, Received, StreamKind, Transmit, Via};
use ntm_proto::time::Instant;
use ntm_proto::wire::frame::{encode_frame, FrameDecoder, FRAME_MAX};
use ntm_proto::wire::login::{Credential, IdToken, Password};
use ntm_proto::wire::registration::KeepaliveMethod;
use ntm_proto::wire::{Text, VirtualAddrs, HEADER_LEN};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

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

/// Bytes a tunnel adds to an inner packet: outer IP, UDP, the NTMobile header and tag.
const OVERHEAD_V4: u16 = 20 + 8 + (HEADER_LEN + TAG_LEN) as u16;
const OVERHEAD_V6: u16 = 40 + 8 + (HEADER_LEN + TAG_LEN) as u16;
/// How often the ID token file is looked at for a new token.
const TOKEN_CHECK: std::time::Duration = std::time::Duration::from_secs(30);
/// The physical MTU assumed for the path (tunnel packets must fit in it).
const LINK_MTU: u16 = 1500;
/// Datagrams or packets read from one source per loop turn (two receive batches).
const READ_BUDGET: usize = 2 * BATCH;
/// Bytes read from the NS stream per loop turn.
const STREAM_READ_BUDGET: usize = 64 * 1024;
/// How long a TCP connection to the AS or the NS may take to open before the node is told
/// it failed and tries the server's next address (one SYN retransmission fits).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
/// How long data sent to the AS or the NS may go unacknowledged before the kernel gives
/// the connection up (TCP_USER_TIMEOUT). Without it a path that died (an address gone, a
/// NAT mapping expired) holds the connection, and whatever we queue on it, for the many
/// minutes of TCP's retransmissions; with it the loss shows as a read error and the node
/// reconnects.
const STREAM_USER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

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
    too_big: u64,
    send_errors: u64,
    /// Tunnel datagrams too large for any agent to have sent (dropped).
    oversized: u64,
    network_changes: u64,
    tls_failures: u64,
    /// Loop turns, and the times a source still had input when its budget ran out.
    turns: u64,
    budget_exhausted: u64,
}

/// A plain TCP stream to the NS.
struct NsConn {
    stream: TcpStream,
    peer: SocketAddr,
    out: Vec<u8>,
    decoder: FrameDecoder,
    connecting: bool,
    /// Given up on if still connecting then.
    connect_by: std::time::Instant,
}

/// The agent.
pub struct Agent {
    cfg: AgentFile,
    /// The ID token file's modification time when last read, and when it was checked.
    token_seen: Option<std::time::SystemTime>,
    token_checked: std::time::Instant,
    poll: Poll,
    start: std::time::Instant,
    node: Node,
    udp4: Option<UdpSocket>,
    udp6: Option<UdpSocket>,
    tun: tun::Device,
    tun_index: u32,
    tun_addrs: Option<VirtualAddrs>,
    routes: Vec<Route>,
    dns_client: UdpSocket,
    dns_up4: Option<UdpSocket>,
    dns_up6: Option<UdpSocket>,
    stub: DnsStub,
    locator: Locator,
    resolves: HashMap<ResolveId, u64>,
    tls_cfg: LoginTlsConfig,
    as_conn: Option<(LoginTls, SocketAddr, FrameDecoder)>,
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
    local_addrs: Vec<SocketAddr>,
    control: UnixListener,
    signals: SignalFd,
    counters: Counters,
    /// Tunnel datagrams received in one call; packets from the TUN device sealed in place
    /// and sent in one call.
    rx: Batch,
    tx: Batch,
    /// Sources that used up their budget with input left: edge-triggered readiness will
    /// not report them again, so they are read on the next turn without sleeping.
    again: Vec<Token>,
    /// The sources to read this turn (kept to reuse its allocation).
    ready: Vec<(Token, bool)>,
    stop: bool,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("node", &self.node).finish_non_exhaustive()
    }
}

/// Seconds since 1970 if the system clock is plausibly set (past 2025-01-01).
fn wall_clock() -> Option<u64> {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    (secs > 1_735_689_600).then_some(secs)
}

fn read_pem_chain(path: &str) -> Result<Vec<Vec<u8>>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let end_marker = "-----END CERTIFICATE-----";
        let Some(end) = rest[start..].find(end_marker) else { break };
        let block = &rest[start..start + end + end_marker.len()];
        let (_, der) = pem_rfc7468::decode_vec(block.as_bytes()).map_err(|e| format!("{path}: {e}"))?;
        out.push(der);
        rest = &rest[start + end + end_marker.len()..];
    }
    if out.is_empty() {
        return Err(format!("{path}: no certificate"));
    }
    Ok(out)
}

fn read_key(path: &str) -> Result<p256::SecretKey, String> {
    use p256::pkcs8::DecodePrivateKey;
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    p256::SecretKey::from_pkcs8_pem(&text).map_err(|e| format!("{path}: not a P-256 PKCS#8 key: {e}"))
}

fn read_secret_line(path: &str) -> Result<Vec<u8>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let line = text.lines().next().unwrap_or("").as_bytes().to_vec();
    if line.is_empty() {
        return Err(format!("{path}: empty"));
    }
    Ok(line)
}

fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let std = std::net::UdpSocket::bind(addr)?;
    std.set_nonblocking(true)?;
    Ok(UdpSocket::from_std(std))
}

/// Room in the kernel for tunnel datagrams while the loop is busy: a TCP burst through
/// the tunnel arrives faster than one thread takes it for a moment, and every datagram
/// the default buffer (about 200 KiB) drops costs the application a retransmission.
const TUNNEL_SOCKET_BUFFER: usize = 2 * 1024 * 1024;

/// Sets the tunnel socket's buffers (as root beyond the sysctl limits, else up to them).
fn size_buffers(sock: &UdpSocket) {
    use nix::sys::socket::{setsockopt, sockopt};
    use std::os::fd::AsFd;
    let fd = sock.as_fd();
    let n = &TUNNEL_SOCKET_BUFFER;
    let forced = setsockopt(&fd, sockopt::RcvBufForce, n).and_then(|()| setsockopt(&fd, sockopt::SndBufForce, n));
    if forced.is_err()
        && setsockopt(&fd, sockopt::RcvBuf, n).and_then(|()| setsockopt(&fd, sockopt::SndBuf, n)).is_err()
    {
        log::debug!("could not size the tunnel socket's buffers");
    }
}

/// An IPv6-only socket on `port`: the IPv4 socket owns the port's IPv4 side (the kernel's
/// default would let `[::]` take IPv4 too and the second bind would fail).
fn bind_udp6_only(port: u16) -> io::Result<UdpSocket> {
    use nix::sys::socket::{bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn6};
    let fd = socket(AddressFamily::Inet6, SockType::Datagram, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    let any = std::net::SocketAddrV6::new(std::net::Ipv6Addr::UNSPECIFIED, port, 0, 0);
    bind(fd.as_raw_fd(), &SockaddrIn6::from(any))?;
    Ok(UdpSocket::from_std(std::net::UdpSocket::from(fd)))
}

/// A tunnel socket, or None if this host lacks the family (its kernel has no IPv6, or no
/// address of it at all); an error for everything else.
fn tunnel_socket(family: &str, port: u16, bound: io::Result<UdpSocket>) -> Result<Option<UdpSocket>, String> {
    match bound {
        Ok(s) => Ok(Some(s)),
        Err(e)
            if matches!(
                e.raw_os_error().map(Errno::from_raw),
                Some(Errno::EAFNOSUPPORT | Errno::EADDRNOTAVAIL | Errno::EPROTONOSUPPORT)
            ) =>
        {
            log::info!("no {family} tunnel socket: {e}");
            Ok(None)
        }
        Err(e) => Err(format!("cannot bind the {family} tunnel port UDP {port}: {e}")),
    }
}

/// The configured resolvers, those of a family we have an address of first (a query's
/// first try goes to the first; one we cannot reach would cost a timeout per query): for
/// the agent's own look-ups and for the queries its DNS stub forwards.
fn upstream_order(upstream: &[SocketAddr], local: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut v = upstream.to_vec();
    v.sort_by_key(|u| !local.iter().any(|l| l.is_ipv4() == u.is_ipv4()));
    v
}

/// The current credential, read from its files (an ID token file is looked at again every
/// 30 s and re-read when it changed).
fn credential(cfg: &AgentFile) -> Result<Credential, Failure> {
    if cfg.credential.device.is_some() {
        return Ok(Credential::DeviceCertificate);
    }
    if let Some(p) = &cfg.credential.password {
        let pw = read_secret_line(&p.password_file)?;
        let password = Password::new(&pw).map_err(|e| format!("{}: {e}", p.password_file))?;
        let email = Text::new(&p.email).map_err(|e| Failure::usage(format!("credential.password.email: {e}")))?;
        return Ok(Credential::Password { email, password });
    }
    if let Some(path) = &cfg.credential.oidc_token_file {
        let t = read_secret_line(path)?;
        return Ok(Credential::OidcToken(IdToken::new(&t).map_err(|e| format!("{path}: {e}"))?));
    }
    Err(Failure::usage("no credential"))
}

/// What the agent reads from files besides its configuration: checked by `ntmd check`
/// as well as at start, so a typo in a path shows before the box reboots into it.
pub struct Material {
    tls: LoginTlsConfig,
    key_pair: Option<KeyPair>,
    credential: Credential,
    routes: Vec<Route>,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material").field("routes", &self.routes).finish_non_exhaustive()
    }
}

impl Material {
    /// Reads the CA, the device certificate and key or the password or token file.
    /// A value of the configuration is a usage error (exit 2); a file it names that cannot
    /// be read or used (a missing or garbage key, a certificate that does not match it) is
    /// a failure at run time (exit 1).
    pub fn load(cfg: &AgentFile) -> Result<Self, Failure> {
        let routes = cfg.routes().map_err(|e| Failure::usage(format!("virtual_routes: {e}")))?;
        let as_name = cfg.account_server_name.as_ref().ok_or_else(|| Failure::usage("account_server_name: missing"))?;
        let ca_der =
            read_pem_chain(&cfg.ca)?.into_iter().next().ok_or_else(|| Failure::runtime("no CA certificate"))?;
        let (client, key_pair) = match &cfg.credential.device {
            Some(d) => {
                let key = read_key(&d.key)?;
                let kp = KeyPair::from_secret(key.clone());
                (Some(ClientCert { chain_der: read_pem_chain(&d.cert)?, key }), Some(kp))
            }
            None => (None, None),
        };
        let tls = LoginTlsConfig { ca_der, server_name: as_name.to_string(), client, unix_time: wall_clock() };
        tls.check().map_err(|e| format!("certificates: {e}"))?;
        Ok(Material { tls, key_pair, credential: credential(cfg)?, routes })
    }
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
        for s in udp4.iter().chain(udp6.iter()) {
            size_buffers(s);
        }

        let mut tun_cfg = tun::Configuration::default();
        tun_cfg.tun_name(cfg.tun.name.as_str()).mtu(cfg.tun.mtu).up();
        let tun = tun::create(&tun_cfg).map_err(|e| format!("TUN device {}: {e}", cfg.tun.name))?;
        tun.set_nonblock()?;
        let mut netlink = Netlink::open()?;
        let tun_index = netlink.link_index(&cfg.tun.name)?.ok_or("TUN device has no index")?;
        netlink.set_link_up(tun_index, Some(u32::from(cfg.tun.mtu)))?;

        let exclude: Vec<(IpAddr, u8)> = routes.iter().map(|r| (r.addr, r.len)).collect();
        let local_addrs = usable_local_addrs(&netlink.addresses()?, &[tun_index], &exclude, cfg.udp_port);
        log::info!("local addresses {local_addrs:?}");

        let as_name = cfg.account_server_name.clone().ok_or("account_server_name: missing")?;
        // Names among the servers are looked up once the loop runs; until then the node
        // knows only the literal addresses (and its login waits for the rest).
        let as_addrs = ServerAddrs::new("AS", cfg.account_servers());
        let dc_addrs = ServerAddrs::new("static DC", cfg.static_dc_addrs());
        let mut ncfg = NodeConfig::new(as_addrs.addrs(), as_name, credential, local_addrs.clone());
        ncfg.keepalive = if cfg.keepalive.as_str() == "ns" { KeepaliveMethod::Ns } else { KeepaliveMethod::Udp };
        if cfg.public_key_mode {
            ncfg.key_pair = key_pair;
            ncfg.strict_public_key_mode = cfg.strict_public_key_mode;
        }
        ncfg.static_dc = cfg.static_dc.as_ref().map(|d| DcLocation { name: d.name.clone(), addrs: dc_addrs.addrs() });
        ncfg.max_tunnels = usize::from(cfg.max_tunnels);
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
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(format!("status socket {}: exists and is not a socket", path.display()).into());
            }
            let _ = std::fs::remove_file(path);
        }
        let mut control = UnixListener::bind(path).map_err(|e| format!("status socket {}: {e}", path.display()))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| format!("status socket {}: {e}", path.display()))?;
        }

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
        r.register(&mut control, CONTROL, Interest::READABLE)?;
        r.register(&mut SourceFd(&signals.as_raw_fd()), SIGNALS, Interest::READABLE)?;

        Ok(Agent {
            cfg,
            poll,
            start: std::time::Instant::now(),
            node,
            udp4,
            udp6,
            tun,
            tun_index,
            tun_addrs: None,
            routes,
            dns_client,
            dns_up4,
            dns_up6,
            stub,
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
            local_addrs,
            control,
            signals,
            counters: Counters::default(),
            rx: Batch::new(),
            tx: Batch::new(),
            again: Vec::new(),
            ready: Vec::new(),
            stop: false,
        })
    }

    /// The engine's clock: milliseconds since the agent started (monotonic).
    fn now(&self) -> Instant {
        Instant::from_millis(u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    /// A wall-clock instant on the engine's clock.
    fn engine_time(&self, t: std::time::Instant) -> Instant {
        let ms = t.saturating_duration_since(self.start).as_millis();
        Instant::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
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
        let mut events = Events::with_capacity(256);
        while !self.stop {
            let now = self.now();
            self.timers(now);
            self.flush(now);
            let wait = if self.again.is_empty() {
                self.next_deadline().map_or(std::time::Duration::from_secs(60), |at| {
                    std::time::Duration::from_millis(at.saturating_duration_since(self.now()).as_millis() as u64)
                })
            } else {
                std::time::Duration::ZERO
            };
            match self.poll.poll(&mut events, Some(wait)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            self.counters.turns += 1;
            let mut ready = std::mem::take(&mut self.ready);
            ready.clear();
            ready.extend(events.iter().map(|ev| (ev.token(), ev.is_writable())));
            for t in self.again.drain(..) {
                if !ready.iter().any(|(r, _)| *r == t) {
                    ready.push((t, false));
                }
            }
            for &(token, writable) in &ready {
                match token {
                    UDP4 | UDP6 => self.read_udp(token),
                    TUN => self.read_tun(),
                    DNS_CLIENT => self.read_dns_client(),
                    DNS_UP4 | DNS_UP6 => self.read_dns_upstream(token),
                    NETLINK => self.read_netlink(),
                    CONTROL => self.serve_status(),
                    SIGNALS => self.read_signals(),
                    AS_CONN => self.drive_as(),
                    NS_CONN => self.drive_ns(writable),
                    _ => {}
                }
                // What this source's input produced goes out before the next source is
                // read: the engine's and the stub's queues hold at most one budget's worth.
                let now = self.now();
                self.flush(now);
            }
            self.ready = ready;
        }
        let _ = std::fs::remove_file(self.cfg.status_socket.as_str());
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

    /// A connection to the AS or the NS that did not open in time is given up: the node
    /// then tries the server's next address (an address of a family that has a route but
    /// goes nowhere must not hold the login up for the whole TCP connect timeout).
    fn connect_timeouts(&mut self, now: Instant) {
        let wall = std::time::Instant::now();
        if self.as_connect_by.is_some_and(|t| t <= wall) {
            if let Some((_, peer, _)) = &self.as_conn {
                log::warn!("no connection to the AS {peer} within {CONNECT_TIMEOUT:?}");
            }
            self.close_as(now);
        }
        if self.ns_conn.as_ref().is_some_and(|c| c.connecting && c.connect_by <= wall) {
            if let Some(mut c) = self.ns_conn.take() {
                log::warn!("no connection to the NS {} within {CONNECT_TIMEOUT:?}", c.peer);
                let _ = self.poll.registry().deregister(&mut c.stream);
                self.node.handle_stream_closed(now, StreamKind::Tcp, c.peer);
            }
        }
    }

    fn socket_for(&self, to: &SocketAddr) -> Option<&UdpSocket> {
        if to.is_ipv4() {
            self.udp4.as_ref()
        } else {
            self.udp6.as_ref()
        }
    }

    fn send_udp(&mut self, to: SocketAddr, bytes: &[u8]) {
        let ok = self.socket_for(&to).map(|s| s.send_to(bytes, to));
        match ok {
            Some(Ok(_)) => self.counters.udp_out += 1,
            _ => self.counters.send_errors += 1,
        }
    }

    fn read_udp(&mut self, token: Token) {
        let sock = if token == UDP4 { self.udp4.as_ref() } else { self.udp6.as_ref() };
        let Some(fd) = sock.map(|s| s.as_raw_fd()) else { return };
        let mut read = 0;
        loop {
            if read >= READ_BUDGET {
                self.budget_spent(token);
                return;
            }
            // WouldBlock ends the drain; so does any other error (as for one datagram at
            // a time before: the next readiness event tries again).
            let Ok(n) = self.rx.recv(fd, token == UDP6) else { return };
            read += n;
            let now = self.now();
            for i in 0..n {
                self.counters.udp_in += 1;
                let r = self.rx.received(i);
                let Some(from) = r.from else { continue };
                if r.truncated {
                    self.counters.oversized += 1;
                    continue;
                }
                let Some(data) = self.rx.slot_mut(i).get_mut(..r.len) else { continue };
                if let Received::Ip(range) = self.node.handle_datagram(now, from, data) {
                    if let Some(pkt) = data.get(range) {
                        match self.tun.send(pkt) {
                            Ok(_) => self.counters.tun_out += 1,
                            Err(_) => self.counters.send_errors += 1,
                        }
                    }
                }
            }
            // A short batch means the queue ran empty (recvmmsg stops at the first
            // WouldBlock): no need for another call to hear it again.
            if n < BATCH {
                return;
            }
        }
    }

    /// Packets from applications: read up to a batch of them, seal each in place for its
    /// tunnel, and send the batch.
    fn read_tun(&mut self) {
        let mut read = 0;
        loop {
            if read >= READ_BUDGET {
                self.budget_spent(TUN);
                return;
            }
            let now = self.now();
            let mut sealed = 0;
            let mut drained = false;
            while sealed < BATCH {
                let slot = self.tx.slot_mut(sealed);
                let space = slot.get_mut(HEADER_LEN..SLOT_LEN - TAG_LEN).unwrap_or_default();
                let room = space.len();
                let n = match self.tun.recv(space) {
                    Ok(n) if room > 0 => n,
                    // WouldBlock, or an error (as before: stop until the next event).
                    _ => {
                        drained = true;
                        break;
                    }
                };
                self.counters.tun_in += 1;
                read += 1;
                if n > room {
                    // Larger than the TUN MTU allows (TUN_MTU_MAX): cut short by the read.
                    self.counters.send_errors += 1;
                    continue;
                }
                let total = HEADER_LEN + n + TAG_LEN;
                let Some(frame) = slot.get_mut(..total) else { continue };
                // IPv4 without Don't Fragment may be as large as it likes: the outer datagram
                // is fragmented instead. Everything else must fit the path.
                let inner = frame.get(HEADER_LEN..).unwrap_or(&[]);
                let may_fragment =
                    inner.first().is_some_and(|b| b >> 4 == 4) && inner.get(6).is_some_and(|b| b & 0x40 == 0);
                let path_mtu = |to: &SocketAddr| match (may_fragment, to.is_ipv4()) {
                    (true, _) => u16::MAX,
                    (false, true) => LINK_MTU - OVERHEAD_V4,
                    (false, false) => LINK_MTU - OVERHEAD_V6,
                };
                match self.node.seal_ip_within(now, frame, path_mtu) {
                    Ok(dst) => {
                        self.tx.set(sealed, total, dst);
                        sealed += 1;
                    }
                    Err(SendError::TooBig { mtu }) => {
                        // Too big for the path: tell the sender (the packet is dropped).
                        self.counters.too_big += 1;
                        let reply = frame.get(HEADER_LEN..HEADER_LEN + n).and_then(|p| icmp::too_big(p, mtu));
                        if let Some(r) = reply {
                            let _ = self.tun.send(&r);
                        }
                    }
                    Err(SendError::NoTunnel(_)) => {
                        self.counters.no_tunnel += 1;
                        let reply = frame.get(HEADER_LEN..HEADER_LEN + n).and_then(icmp::unreachable);
                        if let Some(r) = reply {
                            let _ = self.tun.send(&r);
                        }
                    }
                    Err(_) => self.counters.send_errors += 1,
                }
            }
            self.send_sealed(sealed);
            if drained {
                return;
            }
        }
    }

    /// Sends the first `count` slots of the send batch, in order, on the socket of each
    /// one's family. A datagram the kernel refuses for want of a route is held (see
    /// held.rs); any other it refuses is counted and dropped. The rest go.
    fn send_sealed(&mut self, count: usize) {
        let fd4 = self.udp4.as_ref().map(|s| s.as_raw_fd());
        let fd6 = self.udp6.as_ref().map(|s| s.as_raw_fd());
        let (held, now) = (&mut self.held, std::time::Instant::now());
        let mut kept = 0;
        let (sent, failed) = self.tx.send_all(count, fd4, fd6, |to, bytes, e| {
            if held.hold(now, to, bytes, e) {
                kept += 1;
            }
        });
        self.counters.udp_out += sent;
        self.counters.send_errors += failed.saturating_sub(kept);
        // Something went out: the route may be back for what is held too.
        if sent > 0 && !self.held.is_empty() {
            self.send_held();
        }
    }

    /// Tries the datagrams held for want of a route again.
    fn send_held(&mut self) {
        let (udp4, udp6) = (self.udp4.as_ref(), self.udp6.as_ref());
        let sent = self.held.retry(std::time::Instant::now(), |to, bytes| {
            let sock = if to.is_ipv4() { udp4 } else { udp6 };
            match sock.map(|s| s.send_to(bytes, to)) {
                Some(Ok(_)) => Ok(()),
                Some(Err(e)) => Err(e.raw_os_error().map_or(Errno::EIO, Errno::from_raw)),
                None => Err(Errno::EAFNOSUPPORT),
            }
        });
        self.counters.udp_out += sent;
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
        self.budget_spent(DNS_CLIENT);
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
        self.budget_spent(token);
    }

    /// `token` still had input when its budget for this turn ran out.
    fn budget_spent(&mut self, token: Token) {
        self.counters.budget_exhausted += 1;
        self.again.push(token);
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
        let addrs = match self.netlink.addresses() {
            Ok(a) => usable_local_addrs(&a, &[self.tun_index], &exclude, self.cfg.udp_port),
            Err(e) => {
                log::warn!("netlink dump: {e}");
                return;
            }
        };
        if addrs == self.local_addrs {
            return;
        }
        log::info!("addresses changed: {:?} -> {addrs:?}", self.local_addrs);
        self.counters.network_changes += 1;
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

    fn drive_as(&mut self) {
        let now = self.now();
        let Some((tls, peer, decoder)) = self.as_conn.as_mut() else { return };
        let peer = *peer;
        if tls.stream_mut().peer_addr().is_ok() {
            self.as_connect_by = None;
        }
        let result = tls.drive();
        decoder.push(&tls.take_received());
        let mut frames = Vec::new();
        let mut bad = false;
        loop {
            match decoder.next_frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(_) => {
                    bad = true;
                    break;
                }
            }
        }
        let interest = if tls.wants_write() { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
        let _ = self.poll.registry().reregister(tls.stream_mut(), AS_CONN, interest);
        for f in frames {
            self.node.handle_stream(now, StreamKind::Tls, peer, None, &f);
        }
        if let Err(LoginTlsError::PeerClosed { during_handshake: false }) = result {
            log::debug!("the AS {peer} closed the login session");
            self.close_as(now);
        } else if let Err(e) = result {
            log::warn!("TLS to the AS {peer}: {e}");
            self.counters.tls_failures += 1;
            self.close_as(now);
        } else if bad {
            self.close_as(now);
        }
    }

    fn close_as(&mut self, now: Instant) {
        self.as_connect_by = None;
        if let Some((mut tls, peer, _)) = self.as_conn.take() {
            tls.close();
            let _ = self.poll.registry().deregister(tls.stream_mut());
            self.node.handle_stream_closed(now, StreamKind::Tls, peer);
        }
    }

    fn send_as(&mut self, now: Instant, dst: SocketAddr, payload: &[u8]) {
        if self.as_conn.as_ref().is_some_and(|(_, p, _)| *p != dst) {
            self.close_as(now);
        }
        if self.as_conn.is_none() {
            let mut stream = match TcpStream::connect(dst) {
                Ok(s) => s,
                Err(e) => {
                    log::warn!("cannot connect to the AS {dst}: {e}");
                    self.node.handle_stream_closed(now, StreamKind::Tls, dst);
                    return;
                }
            };
            set_user_timeout(&stream);
            if self.poll.registry().register(&mut stream, AS_CONN, Interest::READABLE | Interest::WRITABLE).is_err() {
                return;
            }
            // Certificate dates are checked when the clock is plausible (after boot
            // without a real-time clock it reads 1970; then dates cannot be judged).
            self.tls_cfg.unix_time = wall_clock();
            let tls = LoginTls::new(stream, &self.tls_cfg, rand_core::OsRng);
            self.as_conn = Some((tls, dst, FrameDecoder::new()));
            self.as_connect_by = Some(std::time::Instant::now() + CONNECT_TIMEOUT);
        }
        let Ok(framed) = encode_frame(payload) else { return };
        if let Some((tls, _, _)) = self.as_conn.as_mut() {
            if let Err(e) = tls.send(&framed) {
                log::warn!("TLS to the AS: {e}");
            }
        }
        self.drive_as();
    }

    fn drive_ns(&mut self, writable: bool) {
        let now = self.now();
        let Some(c) = self.ns_conn.as_mut() else { return };
        let peer = c.peer;
        let (mut dead, mut more) = (false, false);
        if c.connecting && writable {
            match c.stream.take_error() {
                Ok(None) if c.stream.peer_addr().is_ok() => c.connecting = false,
                Ok(None) => {}
                _ => dead = true,
            }
        }
        let mut frames = Vec::new();
        if !dead && !c.connecting {
            let mut buf = [0u8; 4096];
            let mut budget = STREAM_READ_BUDGET;
            loop {
                if budget == 0 {
                    more = true;
                    break;
                }
                match c.stream.read(&mut buf) {
                    Ok(0) => {
                        dead = true;
                        break;
                    }
                    Ok(n) => {
                        budget = budget.saturating_sub(n);
                        c.decoder.push(buf.get(..n).unwrap_or(&[]));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        dead = true;
                        break;
                    }
                }
            }
            loop {
                match c.decoder.next_frame() {
                    Ok(Some(f)) => frames.push(f),
                    Ok(None) => break,
                    Err(_) => {
                        dead = true;
                        break;
                    }
                }
            }
            if c.decoder.buffered() > 2 + FRAME_MAX {
                dead = true;
            }
            while !c.out.is_empty() && !dead {
                match c.stream.write(&c.out) {
                    Ok(0) => dead = true,
                    Ok(n) => {
                        c.out.drain(..n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => dead = true,
                }
            }
        }
        let interest = if c.connecting || !c.out.is_empty() {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        let _ = self.poll.registry().reregister(&mut c.stream, NS_CONN, interest);
        for f in frames {
            self.node.handle_stream(now, StreamKind::Tcp, peer, None, &f);
        }
        if dead {
            self.drop_ns_conn();
            self.node.handle_stream_closed(now, StreamKind::Tcp, peer);
        } else if more {
            self.budget_spent(NS_CONN);
        }
    }

    /// Closes the connection to the NS, if any, at once: a reset rather than a FIN, so
    /// a connection on a dead path does not linger in the kernel retransmitting what was
    /// queued on it.
    fn drop_ns_conn(&mut self) {
        if let Some(mut c) = self.ns_conn.take() {
            let _ = self.poll.registry().deregister(&mut c.stream);
            let abort = nix::libc::linger { l_onoff: 1, l_linger: 0 };
            let _ = nix::sys::socket::setsockopt(&c.stream, nix::sys::socket::sockopt::Linger, &abort);
        }
    }

    /// Whether the connection to the NS left from an address that is gone, or from one
    /// the kernel would no longer use for the NS: after a network change it may be bound
    /// to an address that was deleted, and such a connection does not fail by itself
    /// until its retransmissions run out, many minutes later.
    fn ns_conn_stale(&self) -> bool {
        let Some(c) = self.ns_conn.as_ref() else { return false };
        let Ok(local) = c.stream.local_addr() else { return true };
        if !self.local_addrs.iter().any(|a| a.ip() == local.ip()) {
            return true;
        }
        source_for(c.peer).is_none_or(|ip| ip != local.ip())
    }

    fn send_ns(&mut self, now: Instant, dst: SocketAddr, payload: &[u8]) {
        if self.ns_conn.as_ref().is_some_and(|c| c.peer != dst) {
            self.drop_ns_conn();
        }
        if self.ns_conn.is_none() {
            let mut stream = match TcpStream::connect(dst) {
                Ok(s) => s,
                Err(e) => {
                    log::warn!("cannot connect to the NS {dst}: {e}");
                    self.node.handle_stream_closed(now, StreamKind::Tcp, dst);
                    return;
                }
            };
            set_user_timeout(&stream);
            if self.poll.registry().register(&mut stream, NS_CONN, Interest::READABLE | Interest::WRITABLE).is_err() {
                return;
            }
            self.ns_conn = Some(NsConn {
                stream,
                peer: dst,
                out: Vec::new(),
                decoder: FrameDecoder::new(),
                connecting: true,
                connect_by: std::time::Instant::now() + CONNECT_TIMEOUT,
            });
        }
        let Ok(framed) = encode_frame(payload) else { return };
        if let Some(c) = self.ns_conn.as_mut() {
            // A peer that never reads cannot make us buffer without bound.
            if c.out.len() + framed.len() <= 64 * 1024 {
                c.out.extend_from_slice(&framed);
            }
        }
        self.drive_ns(true);
    }

    fn route(&mut self, now: Instant, t: Transmit) {
        match t.via {
            Via::Udp => self.send_udp(t.dst, &t.payload),
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
                self.configure_tun(virtual_addrs);
            }
            NodeEvent::NotificationsReady => log::info!("the NS keeps us reachable"),
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
            NodeEvent::TunnelUp { session, peer, path } => log::info!("tunnel {session} to {peer} up ({path:?})"),
            NodeEvent::PathChanged { session, peer, path } => log::info!("tunnel {session} to {peer} now {path:?}"),
            NodeEvent::TunnelDown { session, peer } => log::info!("tunnel {session} to {peer} down"),
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
                        let _ = self.dns_client.send_to(&bytes, to);
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

    fn serve_status(&mut self) {
        for _ in 0..READ_BUDGET {
            let (mut s, _) = match self.control.accept() {
                Ok(x) => x,
                Err(_) => return,
            };
            let text = self.status();
            let _ = s.write_all(text.as_bytes());
        }
        self.budget_spent(CONTROL);
    }

    fn status(&self) -> String {
        let mut j = Json::new();
        j.open(None);
        match self.node.fqdn() {
            Some(f) => j.str("fqdn", f.as_str()),
            None => j.null("fqdn"),
        };
        j.bool("registered", self.node.is_registered());
        j.bool("displaced", self.node.is_displaced());
        j.bool("notifications_ready", self.node.notifications_ready());
        match self.node.virtual_addrs() {
            Some(v) => {
                j.str("virtual_ipv4", &v.v4.to_string()).str("virtual_ipv6", &v.v6.to_string());
            }
            None => {
                j.null("virtual_ipv4").null("virtual_ipv6");
            }
        }
        j.array("local_addrs");
        for a in &self.local_addrs {
            j.open(None).str("addr", &a.to_string()).close();
        }
        j.end_array();
        j.array("tunnels");
        for t in self.node.tunnels() {
            j.open(None)
                .str("peer", t.peer.as_str())
                .str("session", &t.session.to_string())
                .str("peer_ipv4", &t.peer_virtual.v4.to_string())
                .str("peer_ipv6", &t.peer_virtual.v6.to_string())
                .bool("up", t.established)
                .str("path", if t.path == PathKind::Relay { "relay" } else { "direct" })
                .str("remote", &t.remote.map(|r| r.to_string()).unwrap_or_default())
                .bool("superseded", t.superseded)
                .num("rx_packets", t.rx_packets)
                .num("tx_packets", t.tx_packets)
                .close();
        }
        j.end_array();
        let c = &self.counters;
        j.open(Some("counters"))
            .num("tun_in", c.tun_in)
            .num("tun_out", c.tun_out)
            .num("udp_in", c.udp_in)
            .num("udp_out", c.udp_out)
            .num("no_tunnel", c.no_tunnel)
            .num("too_big", c.too_big)
            .num("send_errors", c.send_errors)
            .num("oversized", c.oversized)
            .num("network_changes", c.network_changes)
            .num("held_no_route", self.held.stats().held)
            .num("held_sent", self.held.stats().sent)
            .num("held_dropped", self.held.stats().dropped)
            .num("resent_to_moved_peer", self.node.resent_packets())
            .num("tls_failures", c.tls_failures)
            .num("netlink_undecodable", self.netlink.undecodable())
            .num("loop_turns", c.turns)
            .num("budget_exhausted", c.budget_exhausted)
            .close();
        j.open(Some("dropped"));
        for why in ntm_proto::engine::DropReason::ALL {
            j.num(why.name(), self.node.drops().get(why));
        }
        j.close();
        let s = self.stub.stats();
        j.open(Some("dns"))
            .num("hooked", s.hooked)
            .num("forwarded", s.forwarded)
            .num("answered", s.answered)
            .num("relayed", s.relayed)
            .num("servfail", s.servfail)
            .num("malformed", s.malformed)
            .num("not_implemented", s.not_implemented)
            .num("over_limit", s.over_limit)
            .num("rate_limited", s.rate_limited)
            .num("upstream_timeouts", s.upstream_timeouts)
            .num("ignored", s.ignored)
            .close();
        j.close();
        j.finish()
    }
}

/// The source address the kernel would use toward `peer` now, if it has a route.
fn source_for(peer: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr =
        if peer.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
    // Connecting a UDP socket sends nothing; it only makes the kernel pick a route.
    let probe = std::net::UdpSocket::bind(any).ok()?;
    probe.connect(peer).ok()?;
    probe.local_addr().ok().map(|a| a.ip())
}

/// Sets [`STREAM_USER_TIMEOUT`] on a connection to a server.
fn set_user_timeout(stream: &TcpStream) {
    let ms = u32::try_from(STREAM_USER_TIMEOUT.as_millis()).unwrap_or(u32::MAX);
    if let Err(e) = nix::sys::socket::setsockopt(stream, nix::sys::socket::sockopt::TcpUserTimeout, &ms) {
        log::debug!("TCP_USER_TIMEOUT: {e}");
    }
}
