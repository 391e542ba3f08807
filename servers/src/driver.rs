//! The event loop every daemon runs: one thread, one mio poll, any engine.
//!
//! The driver owns the sockets and nothing else. It reads every source until
//! `WouldBlock` and hands each datagram or framed message to the engine; after every
//! batch of input it drains the engine's outputs (transmits, DNS queries) and sleeps until
//! the next input or the engine's deadline. Streams are TCP or TLS (rustls), framed with a
//! 2-byte length; an outbound TLS stream is opened when the engine first sends to a
//! server and verified against the name the engine gives. DNS queries go to the
//! library's sans-IO [`Locator`]. SIGTERM and SIGINT end the loop cleanly, SIGHUP asks the
//! daemon to reload, and a Unix socket answers `status` with JSON.
//!
//! Bad input never ends the loop: malformed datagrams and frames are the engine's to drop
//! and count, and a misbehaving connection (bad TLS, oversize or empty frames, idling
//! without finishing its handshake) is closed and counted here.

use mio::net::{TcpListener, TcpStream, UdpSocket, UnixListener};
use mio::{Events, Interest, Poll, Token};
use ntm_proto::dns::Locator;
use ntm_proto::engine::{DnsAnswer, Engine, PeerIdentity, Received, StreamKind, Transmit, Via};
use ntm_proto::time::{Duration, Instant};
use ntm_proto::wire::frame::{encode_frame, FrameDecoder, FRAME_MAX};
use rustls::pki_types::{CertificateDer, ServerName};
use slab::Slab;
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// What a daemon adds to its engine: status, events, reload, housekeeping.
pub trait Daemon {
    /// The engine the daemon drives.
    type Engine: Engine;
    /// The engine.
    fn engine(&mut self) -> &mut Self::Engine;
    /// Called after every batch of input: take the engine's events (logs, persistence).
    fn after(&mut self, _now: Instant) {}
    /// The state for `status`, as JSON.
    fn status(&mut self, now: Instant) -> serde_json::Value;
    /// SIGHUP: reload what can change without a restart; new TLS configurations, if any.
    fn reload(&mut self) -> Reload {
        Reload::default()
    }
    /// The daemon's own next deadline (persistence, ...).
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    /// The daemon's deadline passed.
    fn handle_timeout(&mut self, _now: Instant) {}
}

/// New TLS configurations after a reload (certificate rotation).
#[derive(Default)]
pub struct Reload {
    /// For new inbound connections.
    pub tls_server: Option<Arc<rustls::ServerConfig>>,
    /// For new outbound connections.
    pub tls_client: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Reload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reload").finish_non_exhaustive()
    }
}

/// Maps a verified certificate to the identity the engines see.
pub type Identify = fn(&CertificateDer<'_>) -> Option<PeerIdentity>;

/// What to listen on and how.
pub struct DriverConfig {
    /// UDP sockets.
    pub udp: Vec<SocketAddr>,
    /// TLS listeners (TCP).
    pub tls: Vec<SocketAddr>,
    /// Plain TCP listeners (the NS's node side).
    pub tcp: Vec<SocketAddr>,
    /// The TLS server configuration (required if `tls` is not empty).
    pub tls_server: Option<Arc<rustls::ServerConfig>>,
    /// The TLS client configuration for outbound streams.
    pub tls_client: Option<Arc<rustls::ClientConfig>>,
    /// Maps verified certificates to identities.
    pub identify: Identify,
    /// DNS lookups of DCs, if the engine asks any.
    pub locator: Option<Locator>,
    /// The status socket.
    pub status_socket: Option<PathBuf>,
    /// Most TCP/TLS connections at once.
    pub max_connections: usize,
    /// A TLS connection idle this long is closed (None: never). Plain TCP connections are
    /// never closed for idling (NS nodes keep alive hourly).
    pub tls_idle_timeout: Option<Duration>,
    /// Handle SIGTERM, SIGINT and SIGHUP (a daemon does; a test driving a node does not).
    pub signals: bool,
}

impl std::fmt::Debug for DriverConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriverConfig")
            .field("udp", &self.udp)
            .field("tls", &self.tls)
            .field("tcp", &self.tcp)
            .finish_non_exhaustive()
    }
}

/// Counters of what the driver itself dropped or refused.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct DriverStats {
    /// Datagrams received.
    pub datagrams_in: u64,
    /// Datagrams sent.
    pub datagrams_out: u64,
    /// Datagrams that could not be sent (no socket of the family, send error).
    pub send_failures: u64,
    /// Connections accepted.
    pub accepted: u64,
    /// Connections refused because of `max_connections`.
    pub refused_full: u64,
    /// TLS handshakes or records that failed.
    pub tls_errors: u64,
    /// Connections closed for bad framing.
    pub bad_frames: u64,
    /// Connections closed for idling.
    pub idle_closed: u64,
    /// Outbound connections that failed.
    pub connect_failures: u64,
    /// Stream messages with no connection to go on.
    pub no_stream: u64,
    /// DNS lookups started for the engine.
    pub dns_lookups: u64,
}

struct Conn {
    sock: TcpStream,
    kind: StreamKind,
    peer: SocketAddr,
    tls: Option<rustls::Connection>,
    identity: Option<PeerIdentity>,
    decoder: FrameDecoder,
    plain_out: Vec<u8>,
    connecting: bool,
    last_activity: std::time::Instant,
}

impl Conn {
    fn wants_write(&self) -> bool {
        self.connecting || !self.plain_out.is_empty() || self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    fn interest(&self) -> Interest {
        if self.wants_write() {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        }
    }
}

const SIGNALS: Token = Token(0);
const STATUS: Token = Token(1);
const UDP_BASE: usize = 16;
const LISTEN_BASE: usize = 64;
const DNS_BASE: usize = 128;
const CONN_BASE: usize = 1 << 20;
/// Largest datagram read.
const DATAGRAM_MAX: usize = 65_536;
/// A TLS handshake must finish within this.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The engine's clock: UNIX milliseconds, advanced by the monotonic clock so that it never
/// goes backwards while the daemon runs.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: std::time::Instant,
    start_unix_ms: u64,
}

impl Clock {
    /// Starts the clock now.
    pub fn start() -> Self {
        let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Clock { start: std::time::Instant::now(), start_unix_ms: u64::try_from(unix.as_millis()).unwrap_or(u64::MAX) }
    }

    /// Now, for the engine.
    pub fn now(&self) -> Instant {
        let elapsed = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        Instant::from_millis(self.start_unix_ms.saturating_add(elapsed))
    }

    /// How long from now until `at` (zero if past).
    pub fn until(&self, at: Instant) -> std::time::Duration {
        at.saturating_duration_since(self.now())
    }
}

/// The event loop of one daemon.
pub struct Driver<D: Daemon> {
    daemon: D,
    poll: Poll,
    clock: Clock,
    udp: Vec<UdpSocket>,
    listeners: Vec<(TcpListener, StreamKind)>,
    dns_sockets: Vec<UdpSocket>,
    locator: Option<Locator>,
    conns: Slab<Conn>,
    by_peer: HashMap<(StreamKind, SocketAddr), usize>,
    tls_server: Option<Arc<rustls::ServerConfig>>,
    tls_client: Option<Arc<rustls::ClientConfig>>,
    identify: Identify,
    signals: signal_hook_mio::v1_0::Signals,
    status: Option<(UnixListener, PathBuf)>,
    max_connections: usize,
    tls_idle_timeout: Option<std::time::Duration>,
    stats: DriverStats,
    buf: Vec<u8>,
    events: Events,
    next_sweep: std::time::Instant,
    stop: bool,
}

impl<D: Daemon> std::fmt::Debug for Driver<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver").field("connections", &self.conns.len()).finish_non_exhaustive()
    }
}

fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        // So that "0.0.0.0:p" and "[::]:p" can both be bound.
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(UdpSocket::from_std(s.into()))
}

fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(TcpListener::from_std(s.into()))
}

impl<D: Daemon> Driver<D> {
    /// Binds everything; errors name the address that failed.
    pub fn new(cfg: DriverConfig, daemon: D) -> io::Result<Self> {
        let poll = Poll::new()?;
        let named =
            |what: &str, addr: SocketAddr, e: io::Error| io::Error::new(e.kind(), format!("{what} {addr}: {e}"));
        let mut udp = Vec::new();
        for (i, addr) in cfg.udp.iter().enumerate() {
            let mut s = bind_udp(*addr).map_err(|e| named("cannot bind UDP", *addr, e))?;
            poll.registry().register(&mut s, Token(UDP_BASE + i), Interest::READABLE)?;
            udp.push(s);
        }
        if !cfg.tls.is_empty() && cfg.tls_server.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "TLS listeners without a TLS server configuration",
            ));
        }
        let mut listeners = Vec::new();
        let all = cfg.tls.iter().map(|a| (*a, StreamKind::Tls)).chain(cfg.tcp.iter().map(|a| (*a, StreamKind::Tcp)));
        for (i, (addr, kind)) in all.enumerate() {
            let mut l = bind_tcp(addr).map_err(|e| named("cannot listen on TCP", addr, e))?;
            poll.registry().register(&mut l, Token(LISTEN_BASE + i), Interest::READABLE)?;
            listeners.push((l, kind));
        }
        let mut dns_sockets = Vec::new();
        if cfg.locator.is_some() {
            for (i, any) in ["0.0.0.0:0", "[::]:0"].iter().enumerate() {
                let addr: SocketAddr = any.parse().map_err(|_| io::Error::other("address"))?;
                // A host without IPv6 cannot bind the IPv6 socket; DNS then goes over IPv4.
                if let Ok(mut s) = bind_udp(addr) {
                    poll.registry().register(&mut s, Token(DNS_BASE + i), Interest::READABLE)?;
                    dns_sockets.push(s);
                }
            }
        }
        let wanted: &[i32] = if cfg.signals {
            &[signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT, signal_hook::consts::SIGHUP]
        } else {
            &[]
        };
        let mut signals = signal_hook_mio::v1_0::Signals::new(wanted)?;
        poll.registry().register(&mut signals, SIGNALS, Interest::READABLE)?;
        let status = match &cfg.status_socket {
            Some(path) => {
                // A socket file left by a previous run would make bind fail.
                let _ = std::fs::remove_file(path);
                let mut l = UnixListener::bind(path)
                    .map_err(|e| io::Error::new(e.kind(), format!("status socket {}: {e}", path.display())))?;
                poll.registry().register(&mut l, STATUS, Interest::READABLE)?;
                Some((l, path.clone()))
            }
            None => None,
        };
        Ok(Driver {
            daemon,
            poll,
            clock: Clock::start(),
            udp,
            listeners,
            dns_sockets,
            locator: cfg.locator,
            conns: Slab::new(),
            by_peer: HashMap::new(),
            tls_server: cfg.tls_server,
            tls_client: cfg.tls_client,
            identify: cfg.identify,
            signals,
            status,
            max_connections: cfg.max_connections,
            tls_idle_timeout: cfg.tls_idle_timeout.map(|d| std::time::Duration::from_millis(d.as_millis() as u64)),
            stats: DriverStats::default(),
            buf: vec![0u8; DATAGRAM_MAX],
            events: Events::with_capacity(1024),
            next_sweep: std::time::Instant::now(),
            stop: false,
        })
    }

    /// The bound UDP addresses (a port of 0 in the configuration becomes the real one).
    pub fn udp_addrs(&self) -> Vec<SocketAddr> {
        self.udp.iter().filter_map(|s| s.local_addr().ok()).collect()
    }

    /// The bound listener addresses.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().filter_map(|(l, _)| l.local_addr().ok()).collect()
    }

    /// What the driver itself dropped or refused.
    pub fn stats(&self) -> &DriverStats {
        &self.stats
    }

    /// The daemon.
    pub fn daemon(&mut self) -> &mut D {
        &mut self.daemon
    }

    /// Runs until SIGTERM or SIGINT.
    pub fn run(&mut self) -> io::Result<()> {
        while !self.stop {
            self.turn(std::time::Duration::from_secs(60))?;
        }
        if let Some((_, path)) = &self.status {
            let _ = std::fs::remove_file(path);
        }
        log::info!("stopped");
        Ok(())
    }

    /// One turn of the loop: timers, then wait at most `max_wait` for input and handle
    /// it. Tests drive a driver turn by turn.
    pub fn turn(&mut self, max_wait: std::time::Duration) -> io::Result<()> {
        let now = self.clock.now();
        self.run_timers(now);
        self.flush(now);
        if std::time::Instant::now() >= self.next_sweep {
            self.sweep_connections();
            self.next_sweep = std::time::Instant::now() + std::time::Duration::from_secs(1);
        }
        let timeout = self.next_deadline().map(|at| self.clock.until(at)).unwrap_or(max_wait);
        let timeout = timeout.min(max_wait).min(self.next_sweep.saturating_duration_since(std::time::Instant::now()));
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        let ready: Vec<(Token, bool, bool)> =
            self.events.iter().map(|e| (e.token(), e.is_readable(), e.is_writable())).collect();
        for (token, r, w) in ready {
            self.dispatch(token, r, w);
        }
        let now = self.clock.now();
        self.flush(now);
        Ok(())
    }

    /// True once a stop signal arrived.
    pub fn stopped(&self) -> bool {
        self.stop
    }

    /// The engine's clock.
    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        let e = self.daemon.engine().poll_timeout();
        let l = self.locator.as_ref().and_then(Locator::poll_timeout);
        let d = self.daemon.poll_timeout();
        [e, l, d].into_iter().flatten().min()
    }

    fn run_timers(&mut self, now: Instant) {
        if self.daemon.engine().poll_timeout().is_some_and(|t| t <= now) {
            self.daemon.engine().handle_timeout(now);
        }
        if let Some(l) = self.locator.as_mut() {
            if l.poll_timeout().is_some_and(|t| t <= now) {
                l.handle_timeout(now);
            }
        }
        if self.daemon.poll_timeout().is_some_and(|t| t <= now) {
            self.daemon.handle_timeout(now);
        }
    }

    fn dispatch(&mut self, token: Token, readable: bool, writable: bool) {
        match token.0 {
            0 => self.handle_signals(),
            1 => self.serve_status(),
            t if (UDP_BASE..LISTEN_BASE).contains(&t) => self.read_udp(t - UDP_BASE),
            t if (LISTEN_BASE..DNS_BASE).contains(&t) => self.accept(t - LISTEN_BASE),
            t if (DNS_BASE..CONN_BASE).contains(&t) => self.read_dns(t - DNS_BASE),
            t if t >= CONN_BASE => self.conn_ready(t - CONN_BASE, readable, writable),
            _ => {}
        }
    }

    fn handle_signals(&mut self) {
        let pending: Vec<i32> = self.signals.pending().collect();
        for sig in pending {
            match sig {
                signal_hook::consts::SIGHUP => {
                    log::info!("SIGHUP: reloading");
                    let r = self.daemon.reload();
                    if r.tls_server.is_some() {
                        self.tls_server = r.tls_server;
                    }
                    if r.tls_client.is_some() {
                        self.tls_client = r.tls_client;
                    }
                }
                _ => {
                    log::info!("signal {sig}: stopping");
                    self.stop = true;
                }
            }
        }
    }

    fn serve_status(&mut self) {
        let Some((listener, _)) = &self.status else { return };
        loop {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let now = self.clock.now();
                    let mut status = self.daemon.status(now);
                    if let Some(obj) = status.as_object_mut() {
                        obj.insert("driver".into(), serde_json::to_value(&self.stats).unwrap_or_default());
                        obj.insert("connections".into(), self.conns.len().into());
                        if let Some(l) = &self.locator {
                            let st = l.stats();
                            obj.insert(
                                "dns".into(),
                                serde_json::json!({
                                    "lookups": self.stats.dns_lookups,
                                    "pending": l.pending(),
                                    "timeouts": st.timeouts,
                                    "server_errors": st.server_errors,
                                    "malformed": st.malformed,
                                    "ignored": st.ignored,
                                }),
                            );
                        }
                    }
                    let mut text = serde_json::to_string_pretty(&status).unwrap_or_default();
                    text.push('\n');
                    // The status socket is a local, trusted reader; a short blocking-style
                    // write of a few KB either fits the socket buffer or is cut short.
                    let _ = s.write_all(text.as_bytes());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::warn!("status socket: {e}");
                    return;
                }
            }
        }
    }

    fn read_udp(&mut self, i: usize) {
        loop {
            let Some(sock) = self.udp.get(i) else { return };
            let (n, from) = match sock.recv_from(&mut self.buf) {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::debug!("UDP receive: {e}");
                    return;
                }
            };
            self.stats.datagrams_in += 1;
            let now = self.clock.now();
            let Some(data) = self.buf.get_mut(..n) else { continue };
            match self.daemon.engine().handle_datagram(now, from, data) {
                Received::Forward(to) => {
                    // The relay's fast path: the same bytes, unchanged, to the other end.
                    let bytes = self.buf.get(..n).map(<[u8]>::to_vec).unwrap_or_default();
                    self.send_udp(to, &bytes);
                }
                Received::Dropped(why) => log::trace!("dropped a datagram from {from}: {}", why.name()),
                Received::Handled | Received::Ip(_) => {}
            }
        }
    }

    fn send_udp(&mut self, to: SocketAddr, bytes: &[u8]) {
        let Some(sock) = self.udp.iter().find(|s| s.local_addr().is_ok_and(|a| a.is_ipv4() == to.is_ipv4())) else {
            self.stats.send_failures += 1;
            log::debug!("no UDP socket of {to}'s family");
            return;
        };
        match sock.send_to(bytes, to) {
            Ok(_) => self.stats.datagrams_out += 1,
            Err(e) => {
                // A full socket buffer drops the datagram; the engines retransmit.
                self.stats.send_failures += 1;
                log::debug!("UDP send to {to}: {e}");
            }
        }
    }

    fn read_dns(&mut self, i: usize) {
        let mut buf = [0u8; 4096];
        loop {
            let Some(sock) = self.dns_sockets.get(i) else { return };
            let (n, from) = match sock.recv_from(&mut buf) {
                Ok(x) => x,
                Err(_) => return,
            };
            let now = self.clock.now();
            if let (Some(l), Some(data)) = (self.locator.as_mut(), buf.get(..n)) {
                l.handle_response(now, from, data);
            }
        }
    }

    fn accept(&mut self, i: usize) {
        loop {
            let Some((listener, kind)) = self.listeners.get(i) else { return };
            let kind = *kind;
            let (mut sock, peer) = match listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::warn!("accept: {e}");
                    return;
                }
            };
            if self.conns.len() >= self.max_connections {
                self.stats.refused_full += 1;
                continue; // dropping `sock` closes it
            }
            let tls = match (kind, &self.tls_server) {
                (StreamKind::Tls, Some(cfg)) => match rustls::ServerConnection::new(cfg.clone()) {
                    Ok(c) => Some(rustls::Connection::Server(c)),
                    Err(e) => {
                        log::warn!("TLS: {e}");
                        continue;
                    }
                },
                (StreamKind::Tls, None) => continue,
                (StreamKind::Tcp, _) => None,
            };
            let _ = sock.set_nodelay(true);
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            if self.poll.registry().register(&mut sock, Token(CONN_BASE + key), Interest::READABLE).is_err() {
                continue;
            }
            entry.insert(Conn {
                sock,
                kind,
                peer,
                tls,
                identity: None,
                decoder: FrameDecoder::new(),
                plain_out: Vec::new(),
                connecting: false,
                last_activity: std::time::Instant::now(),
            });
            // A newer connection from the same address replaces an older one.
            self.by_peer.insert((kind, peer), key);
            self.stats.accepted += 1;
        }
    }

    /// Opens an outbound stream to `to`, verifying the server as `server` for TLS.
    fn connect(&mut self, kind: StreamKind, to: SocketAddr, server: &ntm_proto::wire::Fqdn) -> Option<usize> {
        if self.conns.len() >= self.max_connections {
            self.stats.refused_full += 1;
            return None;
        }
        let tls = match kind {
            StreamKind::Tls => {
                let cfg = self.tls_client.clone()?;
                let name = ServerName::try_from(server.as_str().to_owned()).ok()?;
                match rustls::ClientConnection::new(cfg, name) {
                    Ok(c) => Some(rustls::Connection::Client(c)),
                    Err(e) => {
                        log::warn!("TLS client: {e}");
                        return None;
                    }
                }
            }
            StreamKind::Tcp => None,
        };
        let mut sock = match TcpStream::connect(to) {
            Ok(s) => s,
            Err(e) => {
                self.stats.connect_failures += 1;
                log::debug!("connect {to}: {e}");
                return None;
            }
        };
        let _ = sock.set_nodelay(true);
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        self.poll
            .registry()
            .register(&mut sock, Token(CONN_BASE + key), Interest::READABLE | Interest::WRITABLE)
            .ok()?;
        entry.insert(Conn {
            sock,
            kind,
            peer: to,
            tls,
            identity: None,
            decoder: FrameDecoder::new(),
            plain_out: Vec::new(),
            connecting: true,
            last_activity: std::time::Instant::now(),
        });
        self.by_peer.insert((kind, to), key);
        Some(key)
    }

    fn conn_ready(&mut self, key: usize, readable: bool, writable: bool) {
        let Some(c) = self.conns.get_mut(key) else { return };
        if c.connecting && (writable || readable) {
            // A non-blocking connect finished, one way or the other.
            let failed = match c.sock.take_error() {
                Ok(Some(e)) | Err(e) => Some(e),
                Ok(None) => match c.sock.peer_addr() {
                    Ok(_) => None,
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => return, // not yet
                    Err(e) => Some(e),
                },
            };
            if let Some(e) = failed {
                self.stats.connect_failures += 1;
                log::info!("cannot connect to {}: {e}", c.peer);
                return self.close(key);
            }
            c.connecting = false;
        }
        if readable && !self.read_conn(key) {
            return self.close(key);
        }
        if !self.write_conn(key) {
            self.close(key);
        }
    }

    /// Reads what the connection has; false if it must be closed.
    fn read_conn(&mut self, key: usize) -> bool {
        let identify = self.identify;
        let mut frames = Vec::new();
        let (kind, peer, identity) = {
            let Some(c) = self.conns.get_mut(key) else { return false };
            c.last_activity = std::time::Instant::now();
            let mut eof = false;
            match c.tls.as_mut() {
                Some(tls) => {
                    loop {
                        match tls.read_tls(&mut c.sock) {
                            Ok(0) => {
                                eof = true;
                                break;
                            }
                            Ok(_) => {}
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(_) => return false,
                        }
                        if let Err(e) = tls.process_new_packets() {
                            self.stats.tls_errors += 1;
                            log::info!("TLS with {}: {e}", c.peer);
                            // Send the alert rustls queued, then close.
                            let _ = tls.write_tls(&mut c.sock);
                            return false;
                        }
                        let mut plain = [0u8; 16 * 1024];
                        loop {
                            match tls.reader().read(&mut plain) {
                                Ok(0) => break,
                                Ok(n) => c.decoder.push(plain.get(..n).unwrap_or(&[])),
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                                Err(_) => return false,
                            }
                        }
                    }
                    if c.identity.is_none() && !tls.is_handshaking() {
                        c.identity =
                            tls.peer_certificates().and_then(|certs| certs.first()).and_then(|cert| identify(cert));
                    }
                }
                None => {
                    let mut plain = [0u8; 16 * 1024];
                    loop {
                        match c.sock.read(&mut plain) {
                            Ok(0) => {
                                eof = true;
                                break;
                            }
                            Ok(n) => c.decoder.push(plain.get(..n).unwrap_or(&[])),
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            Err(_) => return false,
                        }
                    }
                }
            }
            loop {
                match c.decoder.next_frame() {
                    Ok(Some(f)) => frames.push(f),
                    Ok(None) => break,
                    Err(_) => {
                        self.stats.bad_frames += 1;
                        return false;
                    }
                }
            }
            // A peer that sends a length and never the frame cannot hold more than one
            // frame's worth of our memory.
            if c.decoder.buffered() > 2 + FRAME_MAX {
                self.stats.bad_frames += 1;
                return false;
            }
            if eof && frames.is_empty() {
                return false;
            }
            (c.kind, c.peer, c.identity.clone())
        };
        let now = self.clock.now();
        for f in frames {
            self.daemon.engine().handle_stream(now, kind, peer, identity.as_ref(), &f);
        }
        true
    }

    /// Writes what is queued; false if the connection must be closed.
    fn write_conn(&mut self, key: usize) -> bool {
        let Some(c) = self.conns.get_mut(key) else { return false };
        if c.connecting {
            return true;
        }
        match c.tls.as_mut() {
            Some(tls) => {
                while tls.wants_write() {
                    match tls.write_tls(&mut c.sock) {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => return false,
                    }
                }
            }
            None => {
                while !c.plain_out.is_empty() {
                    match c.sock.write(&c.plain_out) {
                        Ok(0) => return false,
                        Ok(n) => {
                            c.plain_out.drain(..n);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => return false,
                    }
                }
            }
        }
        let interest = c.interest();
        self.poll.registry().reregister(&mut c.sock, Token(CONN_BASE + key), interest).is_ok()
    }

    fn close(&mut self, key: usize) {
        if !self.conns.contains(key) {
            return;
        }
        let mut c = self.conns.remove(key);
        let _ = self.poll.registry().deregister(&mut c.sock);
        if self.by_peer.get(&(c.kind, c.peer)) == Some(&key) {
            self.by_peer.remove(&(c.kind, c.peer));
        }
        let now = self.clock.now();
        self.daemon.engine().handle_stream_closed(now, c.kind, c.peer);
    }

    /// Closes TLS connections that idle or never finish their handshake.
    fn sweep_connections(&mut self) {
        let now = std::time::Instant::now();
        let idle = self.tls_idle_timeout;
        let stale: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                let quiet = now.saturating_duration_since(c.last_activity);
                let handshaking = c.tls.as_ref().is_some_and(|t| t.is_handshaking());
                (handshaking && quiet > HANDSHAKE_TIMEOUT) || (c.tls.is_some() && idle.is_some_and(|d| quiet > d))
            })
            .map(|(k, _)| k)
            .collect();
        for k in stale {
            self.stats.idle_closed += 1;
            self.close(k);
        }
    }

    /// Hands one engine output to the network.
    fn route(&mut self, t: Transmit) {
        match t.via {
            Via::Udp => self.send_udp(t.dst, &t.payload),
            Via::Stream { kind, server } => {
                let existing = self.by_peer.get(&(kind, t.dst)).copied();
                let key = match (existing, server) {
                    (Some(k), _) => Some(k),
                    (None, Some(name)) => self.connect(kind, t.dst, &name),
                    (None, None) => None,
                };
                let Some(key) = key else {
                    self.stats.no_stream += 1;
                    let now = self.clock.now();
                    self.daemon.engine().handle_stream_closed(now, kind, t.dst);
                    return;
                };
                let Ok(framed) = encode_frame(&t.payload) else { return };
                let ok = match self.conns.get_mut(key) {
                    Some(c) => match c.tls.as_mut() {
                        Some(tls) => tls.writer().write_all(&framed).is_ok(),
                        None => {
                            c.plain_out.extend_from_slice(&framed);
                            true
                        }
                    },
                    None => false,
                };
                if !ok || !self.write_conn(key) {
                    self.close(key);
                }
            }
        }
    }

    /// Drains the engine and the locator until neither has anything more.
    fn flush(&mut self, now: Instant) {
        for _ in 0..64 {
            let mut busy = false;
            while let Some(t) = self.daemon.engine().poll_transmit() {
                busy = true;
                self.route(t);
            }
            while let Some(q) = self.daemon.engine().poll_dns() {
                busy = true;
                self.stats.dns_lookups += 1;
                match self.locator.as_mut() {
                    Some(l) => l.start(now, q),
                    None => self.daemon.engine().handle_dns(now, q.id, DnsAnswer::Failed),
                }
            }
            let answers: Vec<(u64, DnsAnswer)> = match self.locator.as_mut() {
                Some(l) => std::iter::from_fn(|| l.poll_answer()).collect(),
                None => Vec::new(),
            };
            for (id, a) in answers {
                busy = true;
                self.daemon.engine().handle_dns(now, id, a);
            }
            let queries: Vec<(SocketAddr, Vec<u8>)> = match self.locator.as_mut() {
                Some(l) => std::iter::from_fn(|| l.poll_transmit()).collect(),
                None => Vec::new(),
            };
            for (to, bytes) in queries {
                if let Some(s) =
                    self.dns_sockets.iter().find(|s| s.local_addr().is_ok_and(|a| a.is_ipv4() == to.is_ipv4()))
                {
                    let _ = s.send_to(&bytes, to);
                }
            }
            self.daemon.after(now);
            if !busy {
                break;
            }
        }
    }
}
