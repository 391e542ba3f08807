//! The event loop every daemon runs: one thread, one mio poll, any engine.
//!
//! The driver owns the sockets and nothing else. It reads every source until
//! `WouldBlock` and hands each datagram or framed message to the engine; after every
//! batch of input it drains the engine's outputs (transmits, DNS queries) and sleeps until
//! the next input or the engine's deadline. Streams are TCP or TLS (rustls), framed with a
//! 2-byte length; an outbound TLS stream is opened when the engine first sends to a
//! server and verified against the name the engine gives. DNS queries go to the sans-IO
//! DC locator of `ntm-dns` ([`Locator`]). SIGTERM and SIGINT end the loop cleanly, SIGHUP
//! asks the daemon to reload, and a Unix socket answers `status` with JSON.
//!
//! The pieces every loop needs are `ntm_io`'s, shared with the agent: the turn and its
//! list of sources to read again, the framing of plain streams with its caps, the status
//! socket and its partial writes, and the [`Clock`]. What is the servers' own stays here:
//! TLS (rustls), the connection table and its limits, wildcard UDP sockets.
//!
//! Bad input never ends the loop: malformed datagrams and frames are the engine's to drop
//! and count, and a misbehaving connection (bad TLS, oversize or empty frames, a peer that
//! does not read what we send) is closed and counted here. No source is read for more than
//! a budget per turn, so a flood on one socket cannot starve the others, the timers or the
//! housekeeping.
//!
//! What a connection may cost before it proves itself is capped. An inbound connection is
//! *live* once the engine accepted one of its frames as authentic (`Received::Handled`);
//! until then it must become live within [`HANDSHAKE_TIMEOUT`] of opening, one source
//! address may hold only [`DriverConfig::max_unauthenticated_per_source`] such
//! connections, and when the table is full (or the process is out of file descriptors)
//! one of them is closed to make room, so a legitimate peer always gets in: the one that
//! has shown the least [`Progress`] (silent before talking, talking before a finished TLS
//! handshake, that before a verified client certificate or a frame waiting for the
//! engine), and of those the one that reached its rank first. Only
//! live frames reset the idle timer: garbage keeps nothing open. Bytes buffered for
//! partial frames are capped per connection (one frame) and in total
//! ([`DriverConfig::max_buffered_bytes`]; over it, the connections holding the most are
//! shed). A stream whose engine is busy with its last request ([`Engine::stream_ready`])
//! is not read until the engine is ready. A listener that hit the descriptor limit is
//! tried again on a timer, and a reserve descriptor lets it accept and close connections
//! it cannot serve rather than leave them waiting.

use crate::udp::{Local, Locals, ServerUdp};
use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Interest, Poll, Token};
use ntm_dns::Locator;
use ntm_proto::engine::Local as SocketId;
use ntm_proto::engine::{DnsAnswer, DropReason, Engine, PeerIdentity, Received, StreamKind, Transmit, Via};
use ntm_proto::time::{Duration, Instant};
use ntm_proto::wire::frame::{encode_frame, FRAME_MAX};
use rustls::pki_types::{CertificateDer, ServerName};
use slab::Slab;
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

pub use ntm_io::Clock;
use ntm_io::{Framed, ReadResult, StatusSocket, Turn};

/// What a daemon adds to its engine: status, events, reload, housekeeping.
pub trait Daemon {
    /// The engine the daemon drives.
    type Engine: Engine;
    /// The engine.
    fn engine(&mut self) -> &mut Self::Engine;
    /// Called after every batch of input: take the engine's events (logs, persistence).
    fn after(&mut self, _now: Instant) {}
    /// Given once, when the driver starts: waking it makes the driver call
    /// [`Daemon::handle_wake`] (for work done on other threads).
    fn set_waker(&mut self, _waker: Arc<mio::Waker>) {}
    /// The waker was woken: take what other threads finished.
    fn handle_wake(&mut self, _now: Instant) {}
    /// The state for `status`, as JSON.
    fn status(&mut self, now: Instant) -> serde_json::Value;
    /// SIGHUP: reload what can change without a restart; new TLS configurations, if any.
    fn reload(&mut self) -> Reload {
        Reload::default()
    }
    /// UDP addresses the daemon serves on sockets of its own (the RS's relay workers).
    fn own_udp_addrs(&self) -> Vec<SocketAddr> {
        Vec::new()
    }
    /// The daemon's own next deadline (persistence, ...).
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    /// The daemon's deadline passed.
    fn handle_timeout(&mut self, _now: Instant) {}
    /// A datagram that arrived on one of the extra UDP sockets ([`Driver::bind_extra_udp`]):
    /// the engine's own method for that socket (the DC's mapping port). A daemon without
    /// extra sockets never gets one.
    fn handle_datagram_on(&mut self, _now: Instant, _socket: SocketId, _from: SocketAddr, _buf: &mut [u8]) -> Received {
        Received::Dropped(DropReason::Unexpected)
    }
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
    /// A TLS connection with no whole frame in either direction for this long is closed
    /// (None: never).
    pub tls_idle_timeout: Option<Duration>,
    /// The same for plain TCP (None: never). NS nodes keep alive hourly, so the NS sets
    /// a few keepalive intervals: a connection whose NAT mapping died must not stay forever.
    pub tcp_idle_timeout: Option<Duration>,
    /// Handle SIGTERM, SIGINT and SIGHUP (a daemon does; a test driving a node does not).
    pub signals: bool,
    /// Most inbound connections one source address may hold before they are live.
    pub max_unauthenticated_per_source: usize,
    /// Most bytes held for partial frames, over all connections.
    pub max_buffered_bytes: usize,
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
    /// Connections refused because of `max_connections` (none could be evicted).
    pub refused_full: u64,
    /// Connections refused because their source held its most unauthenticated ones.
    pub refused_source: u64,
    /// Connections not yet live closed to make room for a new one (table full or out of
    /// file descriptors).
    pub evicted: u64,
    /// The same by the [`Progress`] they had made: silent, talking, secured, vouched.
    pub evicted_by_progress: [u64; 4],
    /// Connections closed because the bytes held for partial frames went over the total
    /// cap and they held the most.
    pub shed_buffers: u64,
    /// Accepts and connects that failed for want of file descriptors.
    pub fd_exhausted: u64,
    /// Connections accepted with the reserve descriptor and closed at once.
    pub shed_accepts: u64,
    /// TLS handshakes or records that failed.
    pub tls_errors: u64,
    /// Connections closed for bad framing.
    pub bad_frames: u64,
    /// Connections closed for idling, or for not finishing their handshake or becoming
    /// live in time.
    pub idle_closed: u64,
    /// Connections closed because the peer did not read what we sent (the output buffer
    /// reached its cap).
    pub slow_readers: u64,
    /// Outbound connections that failed.
    pub connect_failures: u64,
    /// Stream messages with no connection to go on.
    pub no_stream: u64,
    /// DNS lookups started for the engine.
    pub dns_lookups: u64,
}

/// How far an inbound connection that is not live has come towards proving itself; the
/// table, when full, evicts from the lowest rank first. Each rank costs a peer more than
/// the one before: bytes; a whole TLS handshake (a key exchange and the server's
/// signature checked); a client certificate signed by the deployment CA, which no
/// stranger has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Progress {
    /// Nothing received.
    Silent = 0,
    /// Bytes received: a TLS handshake begun, or part of a frame.
    Talking = 1,
    /// A TLS handshake finished without a client certificate.
    Secured = 2,
    /// A TLS handshake finished with a client certificate the CA vouches for, or a frame
    /// waits for the engine, which is busy with this peer's request.
    Vouched = 3,
}

const RANKS: usize = 4;

struct Conn {
    sock: TcpStream,
    kind: StreamKind,
    peer: SocketAddr,
    /// Boxed: a TLS state is over a kilobyte, and most connections to an NS have none.
    tls: Option<Box<rustls::Connection>>,
    identity: Option<PeerIdentity>,
    /// The certificate was looked at (once, when the handshake finished), whatever it gave.
    identified: bool,
    /// The frames read and, on plain TCP, those to write (rustls holds TLS's).
    framed: Framed,
    connecting: bool,
    /// The peer accepted the connection from us (false) or opened it (true).
    inbound: bool,
    /// The engine accepted a frame of it as authentic (or we opened it).
    live: bool,
    /// Not read until the engine is ready for its next frame.
    paused: bool,
    /// How far it came before being live (inbound ones only).
    progress: Progress,
    /// Tells this connection from a later one that reuses its key in the table.
    serial: u64,
    /// The decoder's bytes as counted in the driver's total.
    counted: usize,
    opened: std::time::Instant,
    /// The last live frame in either direction. Bytes alone, or frames the engine
    /// dropped, do not count, so a peer trickling bytes or sending garbage cannot keep a
    /// connection open.
    last_activity: std::time::Instant,
}

impl Conn {
    fn new(
        sock: TcpStream,
        kind: StreamKind,
        peer: SocketAddr,
        tls: Option<Box<rustls::Connection>>,
        inbound: bool,
        serial: u64,
    ) -> Self {
        let now = std::time::Instant::now();
        Conn {
            sock,
            kind,
            peer,
            tls,
            identity: None,
            identified: false,
            framed: Framed::new(STREAM_OUT_MAX),
            connecting: !inbound,
            inbound,
            live: !inbound,
            paused: false,
            progress: Progress::Silent,
            serial,
            counted: 0,
            opened: now,
            last_activity: now,
        }
    }

    fn wants_write(&self) -> bool {
        self.connecting || self.framed.queued() > 0 || self.tls.as_ref().is_some_and(|t| t.wants_write())
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
const WAKE: Token = Token(2);
const UDP_BASE: usize = 16;
const LISTEN_BASE: usize = 64;
const DNS_BASE: usize = 128;
const STATUS_REPLY_BASE: usize = 256;
const CONN_BASE: usize = 1 << 20;
/// Largest datagram read.
const DATAGRAM_MAX: usize = 65_536;
/// A TLS handshake, and an inbound connection's first live frame, must arrive within this.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How soon a listener that ran out of file descriptors is tried again.
const ACCEPT_RETRY: std::time::Duration = std::time::Duration::from_millis(250);
/// Most bytes queued for a plain TCP peer (rustls caps TLS at 64 KiB by itself). Room for
/// a few frames of the largest size; a peer that lets more pile up does not read.
pub const STREAM_OUT_MAX: usize = 4 * (2 + FRAME_MAX);
/// Most datagrams, connections accepted, or stream bytes taken from one source in one
/// turn before the others get their go; the rest is read on the next turn.
const DATAGRAM_BUDGET: usize = 1024;
const ACCEPT_BUDGET: usize = 256;
const STREAM_READ_BUDGET: usize = 256 * 1024;

/// The event loop of one daemon.
pub struct Driver<D: Daemon> {
    daemon: D,
    poll: Poll,
    clock: Clock,
    /// The UDP sockets of the configuration, then the extra ones
    /// ([`Driver::bind_extra_udp`]).
    udp: Vec<ServerUdp>,
    /// For wildcard sockets: the socket and address each peer last wrote to, which
    /// datagrams to it leave from; one map for the configured sockets, one for the extra
    /// ones (a node writes to both, and each answer leaves from the socket it is for).
    locals: Locals,
    extra_locals: Locals,
    /// Room for a received datagram's packet info.
    cmsg: Vec<u8>,
    listeners: Vec<(TcpListener, StreamKind)>,
    dns_sockets: Vec<UdpSocket>,
    locator: Option<Locator>,
    conns: Slab<Conn>,
    by_peer: HashMap<(StreamKind, SocketAddr), usize>,
    tls_server: Option<Arc<rustls::ServerConfig>>,
    tls_client: Option<Arc<rustls::ClientConfig>>,
    identify: Identify,
    signals: signal_hook_mio::v1_0::Signals,
    status: Option<StatusSocket>,
    max_connections: usize,
    tls_idle_timeout: Option<std::time::Duration>,
    tcp_idle_timeout: Option<std::time::Duration>,
    max_unauthenticated_per_source: usize,
    /// Inbound connections not yet live, by source address.
    unauthenticated: HashMap<IpAddr, usize>,
    /// Inbound connections not yet live, one queue per [`Progress`] rank, in the order
    /// they reached it, as (key, serial). Entries of connections that closed, became
    /// live or moved up are skipped when met and pruned when a queue grows long, so an
    /// eviction costs O(1) amortized, not a scan of the table.
    unproven: [VecDeque<(usize, u64)>; RANKS],
    next_serial: u64,
    max_buffered_bytes: usize,
    /// Bytes held for partial frames over all connections.
    buffered: usize,
    /// Connections waiting for the engine to take their next frame.
    paused: Vec<usize>,
    /// Listeners to try again at this time (they met the descriptor limit).
    accept_retry: Option<std::time::Instant>,
    /// A descriptor held in reserve: closed to accept (and close) a connection when the
    /// process has no other, so that queued peers hear at once instead of waiting.
    reserve: Option<std::fs::File>,
    stats: DriverStats,
    buf: Vec<u8>,
    /// The poll's events, and the sources that used up their budget and have more to
    /// read (edge-triggered readiness will not report them again).
    turn: Turn,
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
        // Each kind of source has its own range of tokens.
        if cfg.udp.len() > LISTEN_BASE - UDP_BASE || cfg.tls.len() + cfg.tcp.len() > DNS_BASE - LISTEN_BASE {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many listen addresses"));
        }
        let poll = Poll::new()?;
        let named =
            |what: &str, addr: SocketAddr, e: io::Error| io::Error::new(e.kind(), format!("{what} {addr}: {e}"));
        let mut udp = Vec::new();
        for (i, addr) in cfg.udp.iter().enumerate() {
            let s = bind_udp(*addr).and_then(|s| ServerUdp::new(s, *addr));
            let mut s = s.map_err(|e| named("cannot bind UDP", *addr, e))?;
            poll.registry().register(&mut s.sock, Token(UDP_BASE + i), Interest::READABLE)?;
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
        let mut daemon = daemon;
        daemon.set_waker(Arc::new(mio::Waker::new(poll.registry(), WAKE)?));
        let status = match &cfg.status_socket {
            Some(path) => {
                let s = StatusSocket::bind(path, poll.registry(), STATUS, STATUS_REPLY_BASE)
                    .map_err(|e| io::Error::new(e.kind(), format!("status socket {}: {e}", path.display())))?;
                Some(s)
            }
            None => None,
        };
        Ok(Driver {
            daemon,
            poll,
            clock: Clock::start(),
            udp,
            locals: Locals::default(),
            extra_locals: Locals::default(),
            cmsg: crate::udp::cmsg_buffer(),
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
            tls_idle_timeout: cfg.tls_idle_timeout,
            tcp_idle_timeout: cfg.tcp_idle_timeout,
            max_unauthenticated_per_source: cfg.max_unauthenticated_per_source.max(1),
            unauthenticated: HashMap::new(),
            unproven: Default::default(),
            next_serial: 0,
            max_buffered_bytes: cfg.max_buffered_bytes,
            buffered: 0,
            paused: Vec::new(),
            accept_retry: None,
            reserve: std::fs::File::open("/dev/null").ok(),
            stats: DriverStats::default(),
            buf: vec![0u8; DATAGRAM_MAX],
            turn: Turn::new(1024),
            next_sweep: std::time::Instant::now(),
            stop: false,
        })
    }

    /// The bound UDP addresses (a port of 0 in the configuration becomes the real one),
    /// the driver's and then the daemon's own.
    pub fn udp_addrs(&self) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> =
            self.udp.iter().filter(|s| s.local == SocketId::MAIN).filter_map(|s| s.sock.local_addr().ok()).collect();
        v.extend(self.daemon.own_udp_addrs());
        v
    }

    /// The addresses of the extra UDP sockets ([`Driver::bind_extra_udp`]).
    pub fn extra_udp_addrs(&self) -> Vec<SocketAddr> {
        self.udp.iter().filter(|s| s.local != SocketId::MAIN).filter_map(|s| s.sock.local_addr().ok()).collect()
    }

    /// Binds one of the engine's extra UDP sockets (`socket`, not
    /// [`SocketId::MAIN`]) on `addr`: what arrives there goes to
    /// [`Daemon::handle_datagram_on`], read within the same budget as the configured
    /// sockets, and the engine's [`Via::UdpFrom`] datagrams for it leave from it. One per
    /// family; the address it was bound to (with the real port if `addr` had 0).
    pub fn bind_extra_udp(&mut self, socket: SocketId, addr: SocketAddr) -> io::Result<SocketAddr> {
        if socket == SocketId::MAIN {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "the main socket is not an extra one"));
        }
        let i = self.udp.len();
        if i >= LISTEN_BASE - UDP_BASE {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many UDP sockets"));
        }
        let named = |e: io::Error| io::Error::new(e.kind(), format!("cannot bind UDP {addr}: {e}"));
        let mut s = bind_udp(addr).and_then(|s| ServerUdp::new(s, addr)).map_err(named)?;
        s.local = socket;
        self.poll.registry().register(&mut s.sock, Token(UDP_BASE + i), Interest::READABLE)?;
        let bound = s.sock.local_addr()?;
        self.udp.push(s);
        Ok(bound)
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
        let mut result = Ok(());
        while !self.stop && result.is_ok() {
            result = self.turn(std::time::Duration::from_secs(60));
        }
        // Also after a failure: a socket file left behind would only mislead `status`.
        if let Some(s) = &self.status {
            s.remove_file();
        }
        log::info!("stopped");
        result
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
        if self.accept_retry.is_some_and(|t| std::time::Instant::now() >= t) {
            self.accept_retry = None;
            for i in 0..self.listeners.len() {
                self.turn.again(Token(LISTEN_BASE + i));
            }
            self.turn.again(STATUS);
        }
        self.resume_paused();
        let timeout = self.next_deadline().map(|at| self.clock.until(at)).unwrap_or(max_wait);
        let mut timeout =
            timeout.min(max_wait).min(self.next_sweep.saturating_duration_since(std::time::Instant::now()));
        if let Some(t) = self.accept_retry {
            timeout = timeout.min(t.saturating_duration_since(std::time::Instant::now()));
        }
        // Sources left with input last turn come after the poll's (without sleeping);
        // new input pushes them there again.
        let ready = self.turn.wait(&mut self.poll, timeout)?;
        for r in &ready {
            self.dispatch(r.token, r.readable, r.writable);
        }
        self.turn.done(ready);
        let now = self.clock.now();
        self.flush(now);
        self.resume_paused();
        Ok(())
    }

    /// Streams the engine is ready for again are read on the next turn.
    fn resume_paused(&mut self) {
        if self.paused.is_empty() {
            return;
        }
        let mut still = Vec::new();
        for key in std::mem::take(&mut self.paused) {
            let Some(c) = self.conns.get_mut(key) else { continue };
            if !c.paused {
                continue;
            }
            let (kind, peer) = (c.kind, c.peer);
            if self.daemon.engine().stream_ready(kind, peer) {
                if let Some(c) = self.conns.get_mut(key) {
                    c.paused = false;
                }
                self.turn.again(Token(CONN_BASE + key));
            } else {
                still.push(key);
            }
        }
        self.paused = still;
    }

    /// True once a stop signal arrived.
    pub fn stopped(&self) -> bool {
        self.stop
    }

    /// The engine's clock (for threads that call the same engine).
    pub fn clock(&self) -> Clock {
        self.clock
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
        match token {
            SIGNALS => self.handle_signals(),
            STATUS => self.serve_status(),
            WAKE => {
                let now = self.clock.now();
                self.daemon.handle_wake(now);
            }
            Token(t) if (UDP_BASE..LISTEN_BASE).contains(&t) => self.read_udp(t - UDP_BASE),
            Token(t) if (LISTEN_BASE..DNS_BASE).contains(&t) => self.accept(t - LISTEN_BASE),
            Token(t) if (DNS_BASE..STATUS_REPLY_BASE).contains(&t) => self.read_dns(t - DNS_BASE),
            Token(t) if (STATUS_REPLY_BASE..CONN_BASE).contains(&t) => self.write_status(token),
            Token(t) if t >= CONN_BASE => self.conn_ready(t - CONN_BASE, readable, writable),
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

    fn status_text(&mut self) -> Vec<u8> {
        let now = self.clock.now();
        let mut status = self.daemon.status(now);
        if let Some(obj) = status.as_object_mut() {
            obj.insert("driver".into(), serde_json::to_value(&self.stats).unwrap_or_default());
            obj.insert("connections".into(), self.conns.len().into());
            obj.insert("unauthenticated".into(), self.unauthenticated.values().sum::<usize>().into());
            obj.insert("buffered_bytes".into(), self.buffered.into());
            // A gauge: connections not read until the engine is ready for their next frame.
            obj.insert("paused_streams".into(), self.conns.iter().filter(|(_, c)| c.paused).count().into());
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
        text.into_bytes()
    }

    /// Answers every waiting status reader. The answer can be large (a DC lists its
    /// nodes), so what does not fit the socket buffer is written as the reader drains it,
    /// without ever blocking the loop.
    fn serve_status(&mut self) {
        loop {
            let Some(status) = &self.status else { return };
            let sock = match status.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if out_of_descriptors(&e) => {
                    // Asked again with the listeners (see `accept`).
                    self.stats.fd_exhausted += 1;
                    self.accept_retry = Some(std::time::Instant::now() + ACCEPT_RETRY);
                    return;
                }
                Err(e) => {
                    log::warn!("status socket: {e}");
                    return;
                }
            };
            let text = self.status_text();
            if let Some(status) = self.status.as_mut() {
                status.answer(self.poll.registry(), sock, text);
            }
        }
    }

    fn write_status(&mut self, token: Token) {
        if let Some(status) = self.status.as_mut() {
            status.writable(self.poll.registry(), token);
        }
    }

    fn read_udp(&mut self, i: usize) {
        let Some(socket) = self.udp.get(i).map(|s| s.local) else { return };
        for _ in 0..DATAGRAM_BUDGET {
            let Some(sock) = self.udp.get(i) else { return };
            let (n, from) = match sock.recv(&mut self.buf, &mut self.cmsg) {
                Ok((n, from, local)) => {
                    if let Some((addr, ifindex)) = local {
                        let map = if socket == SocketId::MAIN { &mut self.locals } else { &mut self.extra_locals };
                        map.learn(from, Local { socket: i, addr, ifindex });
                    }
                    (n, from)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::debug!("UDP receive: {e}");
                    return;
                }
            };
            self.stats.datagrams_in += 1;
            let now = self.clock.now();
            let Some(data) = self.buf.get_mut(..n) else { continue };
            let received = if socket == SocketId::MAIN {
                self.daemon.engine().handle_datagram(now, from, data)
            } else {
                self.daemon.handle_datagram_on(now, socket, from, data)
            };
            match received {
                Received::Forward(to) => {
                    // The relay's fast path: the same bytes, unchanged, to the other end.
                    let bytes = self.buf.get(..n).unwrap_or_default();
                    send_udp(&self.udp, &mut self.locals, &mut self.stats, SocketId::MAIN, to, bytes);
                }
                Received::Dropped(why) => log::trace!("dropped a datagram from {from}: {}", why.name()),
                Received::Handled | Received::Ip(_) => {}
            }
        }
        self.turn.spent(Token(UDP_BASE + i));
    }

    fn send_udp(&mut self, socket: SocketId, to: SocketAddr, bytes: &[u8]) {
        let locals = if socket == SocketId::MAIN { &mut self.locals } else { &mut self.extra_locals };
        send_udp(&self.udp, locals, &mut self.stats, socket, to, bytes);
    }

    fn read_dns(&mut self, i: usize) {
        let mut buf = [0u8; 4096];
        for _ in 0..DATAGRAM_BUDGET {
            let Some(sock) = self.dns_sockets.get(i) else { return };
            let (n, from) = match sock.recv_from(&mut buf) {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            let now = self.clock.now();
            if let (Some(l), Some(data)) = (self.locator.as_mut(), buf.get(..n)) {
                l.handle_response(now, from, data);
            }
        }
        self.turn.spent(Token(DNS_BASE + i));
    }

    fn accept(&mut self, i: usize) {
        for _ in 0..ACCEPT_BUDGET {
            let Some((listener, kind)) = self.listeners.get(i) else { return };
            let kind = *kind;
            let (mut sock, peer) = match listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted || e.kind() == io::ErrorKind::ConnectionAborted => {
                    continue
                }
                Err(e) if out_of_descriptors(&e) => {
                    self.stats.fd_exhausted += 1;
                    if self.accept_retry.is_none() {
                        log::warn!("accept: {e}; closing connections that are not live to make room");
                    }
                    // Readiness is edge-triggered: what waits in the backlog is not reported
                    // again until a new connection comes, so try again on a timer.
                    self.accept_retry = Some(std::time::Instant::now() + ACCEPT_RETRY);
                    if self.evict_unproven() {
                        continue;
                    }
                    // Nothing to give up: accept with the reserve and close at once, so the
                    // peer hears now and retries, instead of waiting in the queue.
                    if self.reserve.take().is_some() {
                        // The accepted socket is closed as soon as it is taken.
                        let shed = self.listeners.get(i).is_some_and(|(l, _)| l.accept().is_ok());
                        self.reserve = std::fs::File::open("/dev/null").ok();
                        if shed {
                            self.stats.shed_accepts += 1;
                            continue;
                        }
                    }
                    return;
                }
                Err(e) => {
                    log::warn!("accept: {e}");
                    return;
                }
            };
            let source = source_of(peer);
            if self.unauthenticated.get(&source).copied().unwrap_or(0) >= self.max_unauthenticated_per_source {
                self.stats.refused_source += 1;
                log::debug!("refusing a connection from {source}: it holds its most that are not live");
                continue; // dropping `sock` closes it
            }
            if self.conns.len() >= self.max_connections && !self.evict_unproven() {
                self.stats.refused_full += 1;
                continue;
            }
            let tls = match (kind, &self.tls_server) {
                (StreamKind::Tls, Some(cfg)) => match rustls::ServerConnection::new(cfg.clone()) {
                    Ok(c) => Some(Box::new(rustls::Connection::Server(c))),
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
            let serial = self.next_serial;
            self.next_serial += 1;
            entry.insert(Conn::new(sock, kind, peer, tls, true, serial));
            self.enqueue_unproven(Progress::Silent, key, serial);
            *self.unauthenticated.entry(source).or_insert(0) += 1;
            // A newer connection from the same address replaces an older one, which is
            // closed: nothing would reach it any more. The engine is not told, since its
            // stream with that address is the new one.
            if let Some(old) = self.by_peer.insert((kind, peer), key) {
                self.close(old);
            }
            self.stats.accepted += 1;
            // Read what came with it now (a ClientHello waits in the socket when the
            // backlog was long): its rank must show before later accepts of this turn,
            // under a flood hundreds, pick what to evict.
            self.conn_ready(key, true, false);
        }
        self.turn.spent(Token(LISTEN_BASE + i));
    }

    /// Closes the inbound connection not yet live that has made the least progress (of
    /// those, the first to reach its rank); false if there is none.
    fn evict_unproven(&mut self) -> bool {
        for rank in 0..RANKS {
            while let Some((key, serial)) = self.unproven.get_mut(rank).and_then(|q| q.pop_front()) {
                if self.unproven_at(key, serial) == Some(rank) {
                    self.stats.evicted += 1;
                    if let Some(n) = self.stats.evicted_by_progress.get_mut(rank) {
                        *n += 1;
                    }
                    self.close(key);
                    return true;
                }
            }
        }
        false
    }

    /// The rank of connection `key` if it is still the one numbered `serial`, inbound
    /// and not live.
    fn unproven_at(&self, key: usize, serial: u64) -> Option<usize> {
        self.conns.get(key).filter(|c| c.serial == serial && c.inbound && !c.live).map(|c| c.progress as usize)
    }

    fn enqueue_unproven(&mut self, rank: Progress, key: usize, serial: u64) {
        let limit = 2 * self.max_connections.max(64);
        let Some(q) = self.unproven.get_mut(rank as usize) else { return };
        q.push_back((key, serial));
        if q.len() > limit {
            // Mostly entries of connections gone or moved on: drop those (amortized O(1),
            // since the queue must double again before the next pruning).
            let mut q = std::mem::take(&mut self.unproven[rank as usize]);
            q.retain(|&(k, s)| self.unproven_at(k, s) == Some(rank as usize));
            self.unproven[rank as usize] = q;
        }
    }

    /// Raises an inbound connection's progress (never lowers it) while it is not live.
    fn progress(&mut self, key: usize, to: Progress) {
        let Some(c) = self.conns.get_mut(key) else { return };
        if !c.inbound || c.live || c.progress >= to {
            return;
        }
        c.progress = to;
        let serial = c.serial;
        self.enqueue_unproven(to, key, serial);
    }

    /// Marks a connection live: it proved itself, so the idle timer applies from now on.
    fn make_live(&mut self, key: usize) {
        let Some(c) = self.conns.get_mut(key) else { return };
        c.last_activity = std::time::Instant::now();
        if c.live {
            return;
        }
        c.live = true;
        let source = source_of(c.peer);
        self.forget_unauthenticated(source);
    }

    fn forget_unauthenticated(&mut self, source: IpAddr) {
        if let Some(n) = self.unauthenticated.get_mut(&source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.unauthenticated.remove(&source);
            }
        }
    }

    /// Brings the total of buffered bytes up to date with connection `key`'s decoder.
    fn recount(&mut self, key: usize) {
        let Some(c) = self.conns.get_mut(key) else { return };
        let now = c.framed.buffered();
        self.buffered = self.buffered.saturating_sub(c.counted).saturating_add(now);
        c.counted = now;
        c.framed.release();
    }

    /// While the bytes held for partial frames are over the total cap, closes the
    /// connection holding the most (not yet live ones first among equals).
    fn shed_buffers(&mut self) {
        while self.buffered > self.max_buffered_bytes {
            let Some(k) = self.conns.iter().max_by_key(|(_, c)| (c.counted, !c.live)).map(|(k, _)| k) else { return };
            if self.conns.get(k).is_none_or(|c| c.counted == 0) {
                return;
            }
            self.stats.shed_buffers += 1;
            if let Some(c) = self.conns.get(k) {
                log::info!("closing the stream with {}: it holds {} bytes of a partial frame", c.peer, c.counted);
            }
            self.close(k);
        }
    }

    /// Opens an outbound stream to `to`, verifying the server as `server` for TLS.
    fn connect(&mut self, kind: StreamKind, to: SocketAddr, server: &ntm_proto::wire::Fqdn) -> Option<usize> {
        if self.conns.len() >= self.max_connections && !self.evict_unproven() {
            self.stats.refused_full += 1;
            return None;
        }
        let tls = match kind {
            StreamKind::Tls => {
                let cfg = self.tls_client.clone()?;
                let name = ServerName::try_from(server.as_str().to_owned()).ok()?;
                match rustls::ClientConnection::new(cfg, name) {
                    Ok(c) => Some(Box::new(rustls::Connection::Client(c))),
                    Err(e) => {
                        log::warn!("TLS client: {e}");
                        return None;
                    }
                }
            }
            StreamKind::Tcp => None,
        };
        let mut attempt = TcpStream::connect(to);
        if attempt.as_ref().is_err_and(out_of_descriptors) {
            self.stats.fd_exhausted += 1;
            if self.evict_unproven() {
                attempt = TcpStream::connect(to);
            }
        }
        let mut sock = match attempt {
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
        let serial = self.next_serial;
        self.next_serial += 1;
        entry.insert(Conn::new(sock, kind, to, tls, false, serial));
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

    /// Hands the connection's whole frames to the engine while it takes them, and reads
    /// more (up to the read budget) when none is left; false if it must be closed.
    fn read_conn(&mut self, key: usize) -> bool {
        let mut budget = STREAM_READ_BUDGET;
        let mut delivered = false;
        loop {
            match self.deliver(key) {
                Delivery::Close => return false,
                Delivery::Delivered => delivered = true,
                Delivery::Nothing => {}
            }
            let Some(c) = self.conns.get_mut(key) else { return false };
            if c.paused {
                // The rest waits in the socket until the engine is ready for it.
                return true;
            }
            if budget == 0 {
                self.turn.spent(Token(CONN_BASE + key));
                return true;
            }
            match self.read_some(key) {
                ReadResult::Bytes(n) => budget = budget.saturating_sub(n),
                // Frames that came with the end of the stream were handled: their answers
                // are written this turn, and the next read reports the end again.
                ReadResult::End => return delivered,
                ReadResult::Empty => return true,
                ReadResult::Fail => return false,
            }
            self.recount(key);
            // A peer that sends a length and never the frame cannot hold more than one
            // frame's worth of our memory ...
            if self.conns.get(key).is_some_and(|c| c.framed.over_cap()) {
                self.stats.bad_frames += 1;
                return false;
            }
            // ... and all such peers together no more than the total cap.
            self.shed_buffers();
            if !self.conns.contains(key) {
                return false;
            }
        }
    }

    /// Hands over the connection's decoded frames, one at a time, while the engine is
    /// ready for them.
    fn deliver(&mut self, key: usize) -> Delivery {
        let mut delivered = false;
        loop {
            let Some(c) = self.conns.get_mut(key) else { return Delivery::Close };
            let (kind, peer) = (c.kind, c.peer);
            if !self.daemon.engine().stream_ready(kind, peer) {
                if let Some(c) = self.conns.get_mut(key) {
                    if !c.paused {
                        c.paused = true;
                        self.paused.push(key);
                    }
                }
                self.progress(key, Progress::Vouched);
                break;
            }
            let Some(c) = self.conns.get_mut(key) else { return Delivery::Close };
            let frame = match c.framed.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => {
                    self.stats.bad_frames += 1;
                    return Delivery::Close;
                }
            };
            let identity = c.identity.clone();
            let now = self.clock.now();
            delivered = true;
            match self.daemon.engine().handle_stream(now, kind, peer, identity.as_ref(), &frame) {
                Received::Handled => self.make_live(key),
                Received::Dropped(why) => log::trace!("dropped a frame from {peer}: {}", why.name()),
                Received::Ip(_) | Received::Forward(_) => {}
            }
        }
        self.recount(key);
        if delivered {
            Delivery::Delivered
        } else {
            Delivery::Nothing
        }
    }

    /// One read from the connection's socket into its decoder.
    fn read_some(&mut self, key: usize) -> ReadResult {
        let identify = self.identify;
        let Some(c) = self.conns.get_mut(key) else { return ReadResult::Fail };
        let mut plain = [0u8; 16 * 1024];
        loop {
            let n = match c.tls.as_mut() {
                Some(tls) => match tls.read_tls(&mut c.sock) {
                    Ok(0) => return ReadResult::End,
                    Ok(n) => {
                        if let Err(e) = tls.process_new_packets() {
                            self.stats.tls_errors += 1;
                            log::info!("TLS with {}: {e}", c.peer);
                            // Send the alert rustls queued, then close.
                            let _ = tls.write_tls(&mut c.sock);
                            return ReadResult::Fail;
                        }
                        loop {
                            match tls.reader().read(&mut plain) {
                                Ok(0) => break,
                                Ok(m) => c.framed.push(plain.get(..m).unwrap_or(&[])),
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                                Err(_) => return ReadResult::Fail,
                            }
                        }
                        // The identity is settled once, when the handshake is over: every
                        // frame of the connection is handed over with the same one, and a
                        // certificate without a usable identity is reported once.
                        if !c.identified && !tls.is_handshaking() {
                            c.identified = true;
                            c.identity =
                                tls.peer_certificates().and_then(|certs| certs.first()).and_then(|cert| identify(cert));
                        }
                        n
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadResult::Empty,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return ReadResult::Fail,
                },
                None => match c.framed.read_from(&mut c.sock, &mut plain) {
                    ReadResult::Bytes(n) => n,
                    other => return other,
                },
            };
            // What the peer showed so far: bytes, a finished handshake, a certificate
            // the CA signed (rustls verified it during the handshake).
            let progress = match c.tls.as_ref() {
                Some(t) if !t.is_handshaking() && t.peer_certificates().is_some_and(|p| !p.is_empty()) => {
                    Progress::Vouched
                }
                Some(t) if !t.is_handshaking() => Progress::Secured,
                _ => Progress::Talking,
            };
            self.progress(key, progress);
            return ReadResult::Bytes(n);
        }
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
                        Ok(0) => return false,
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => return false,
                    }
                }
            }
            None => {
                if !c.framed.write_to(&mut c.sock) {
                    return false;
                }
            }
        }
        let interest = c.interest();
        self.poll.registry().reregister(&mut c.sock, Token(CONN_BASE + key), interest).is_ok()
    }

    /// Closes the connection. The engine hears of it only if the connection is its
    /// stream with that peer: an older one, replaced by a newer from the same address,
    /// closes silently.
    fn close(&mut self, key: usize) {
        if !self.conns.contains(key) {
            return;
        }
        let mut c = self.conns.remove(key);
        let _ = self.poll.registry().deregister(&mut c.sock);
        self.buffered = self.buffered.saturating_sub(c.counted);
        if c.inbound && !c.live {
            self.forget_unauthenticated(source_of(c.peer));
        }
        if self.by_peer.get(&(c.kind, c.peer)) == Some(&key) {
            self.by_peer.remove(&(c.kind, c.peer));
            let now = self.clock.now();
            self.daemon.engine().handle_stream_closed(now, c.kind, c.peer);
        }
    }

    /// Closes connections that idle, never finish their handshake or do not become live
    /// in time; and status readers that do not read.
    fn sweep_connections(&mut self) {
        let now = std::time::Instant::now();
        let (tls_idle, tcp_idle) = (self.tls_idle_timeout, self.tcp_idle_timeout);
        let stale: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                let age = now.saturating_duration_since(c.opened);
                let quiet = now.saturating_duration_since(c.last_activity);
                let handshaking = c.tls.as_ref().is_some_and(|t| t.is_handshaking());
                let idle = if c.tls.is_some() { tls_idle } else { tcp_idle };
                // Deadlines from the opening, not from the last byte: a peer trickling
                // bytes must not hold a connection slot forever.
                (handshaking && age > HANDSHAKE_TIMEOUT)
                    || (c.inbound && !c.live && age > HANDSHAKE_TIMEOUT)
                    || idle.is_some_and(|d| quiet > d)
            })
            .map(|(k, _)| k)
            .collect();
        for k in stale {
            self.stats.idle_closed += 1;
            self.close(k);
        }
        if let Some(status) = self.status.as_mut() {
            status.sweep(self.poll.registry(), now);
        }
    }

    /// Hands one engine output to the network.
    fn route(&mut self, t: Transmit) {
        match t.via {
            Via::Udp => self.send_udp(SocketId::MAIN, t.dst, &t.payload),
            Via::UdpFrom(socket) => self.send_udp(socket, t.dst, &t.payload),
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
                let Ok(framed) = encode_frame(&t.payload) else {
                    self.stats.send_failures += 1;
                    log::warn!("a message of {} bytes is too long for a frame", t.payload.len());
                    return;
                };
                let Some(c) = self.conns.get_mut(key) else { return };
                c.last_activity = std::time::Instant::now();
                let queued = match c.tls.as_mut() {
                    // rustls takes at most its buffer limit (64 KiB) of unsent data, then
                    // refuses (WriteZero).
                    Some(tls) => tls.writer().write_all(&framed).is_ok(),
                    // At most STREAM_OUT_MAX.
                    None => c.framed.queue(&t.payload).is_ok(),
                };
                if !queued {
                    // The peer does not read what it is sent: holding more for it would
                    // let it grow our memory without bound.
                    self.stats.slow_readers += 1;
                    log::info!("closing the stream with {}: it does not read", t.dst);
                    self.close(key);
                } else if !self.write_conn(key) {
                    self.close(key);
                }
            }
        }
    }

    /// Drains the engine and the locator until neither has anything more.
    fn flush(&mut self, now: Instant) {
        for _ in 0..64 {
            // Events first: a daemon that persists state (the DC's counters and
            // assignments) saves it before the messages the same input produced go out.
            self.daemon.after(now);
            let mut busy = false;
            while let Some(t) = self.daemon.engine().poll_transmit() {
                busy = true;
                self.route(t);
            }
            while let Some(q) = self.daemon.engine().poll_dns() {
                busy = true;
                self.stats.dns_lookups += 1;
                match self.locator.as_mut() {
                    Some(l) if q.addresses => l.start_addresses(now, q.id, &q.name, 0),
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
                let sock = self.dns_sockets.iter().find(|s| s.local_addr().is_ok_and(|a| a.is_ipv4() == to.is_ipv4()));
                // A lost query is retried by the locator, then fails the lookup.
                if sock.is_none_or(|s| s.send_to(&bytes, to).is_err()) {
                    self.stats.send_failures += 1;
                    log::debug!("DNS query to {to} not sent");
                }
            }
            if !busy {
                break;
            }
        }
    }
}

/// What [`Driver::deliver`] did.
enum Delivery {
    /// Handed at least one frame to the engine.
    Delivered,
    /// Had no whole frame, or the engine was not ready.
    Nothing,
    /// The connection must be closed (bad framing, or it is gone).
    Close,
}

/// The source a connection counts against: its IPv4 address, or the /64 of its IPv6
/// address (one host commonly holds a whole /64, so single IPv6 addresses are free).
pub fn source_of(peer: SocketAddr) -> IpAddr {
    match peer.ip() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

/// True for the errors that mean the process (or the system) has no descriptor to give.
fn out_of_descriptors(e: &io::Error) -> bool {
    // EMFILE, ENFILE, ENOBUFS, ENOMEM on Linux.
    matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12))
}

/// Sends one datagram from one of the engine's sockets (`socket`: the configured ones,
/// or an extra one): to a peer that wrote to a wildcard socket of them, from that socket
/// and the address it wrote to; to any other, on the first of them of `to`'s family
/// (`locals` is the map of those sockets). A failure is counted (a full socket buffer
/// drops the datagram, and the engines retransmit what matters).
fn send_udp(
    udp: &[ServerUdp],
    locals: &mut Locals,
    stats: &mut DriverStats,
    socket: SocketId,
    to: SocketAddr,
    bytes: &[u8],
) {
    let known = locals.get(&to).and_then(|l| Some((udp.get(l.socket).filter(|s| s.local == socket)?, l)));
    let (sock, local) = match known {
        Some((s, l)) => (s, Some(l)),
        None => match udp.iter().find(|s| s.v4 == to.is_ipv4() && s.local == socket) {
            Some(s) => (s, None),
            None => {
                stats.send_failures += 1;
                log::debug!("no UDP socket {} of {to}'s family", socket.0);
                return;
            }
        },
    };
    let mut sent = sock.send(bytes, to, local);
    if let (Err(e), Some(l)) = (&sent, local) {
        // The address the peer wrote to is gone from the host (EADDRNOTAVAIL, EINVAL):
        // forget it and let the kernel choose.
        if matches!(e.raw_os_error(), Some(99 | 22)) {
            log::debug!("UDP send to {to} from {}: {e}; from the kernel's choice instead", l.addr);
            locals.forget(&to);
            sent = sock.send(bytes, to, None);
        }
    }
    match sent {
        Ok(()) => stats.datagrams_out += 1,
        Err(e) => {
            stats.send_failures += 1;
            log::debug!("UDP send to {to}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::source_of;

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_slash_64s() {
        let src = |s: &str| source_of(s.parse().unwrap()).to_string();
        assert_eq!(src("198.51.100.2:1"), "198.51.100.2");
        assert_eq!(src("[2001:db8:a:1:2:3:4:5]:1"), "2001:db8:a:1::");
        assert_eq!(src("[2001:db8:a:1::9]:2"), "2001:db8:a:1::");
        assert_eq!(src("[::ffff:198.51.100.2]:1"), "198.51.100.2");
    }
}
