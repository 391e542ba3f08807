//! The agent's streams to its servers: the TLS login session to the AS (embedded-tls)
//! and the plain TCP stream to the NS, both framed by `ntm_io::Framed`. A connection
//! that does not open within [`CONNECT_TIMEOUT`] is given up so the node tries the
//! server's next address; the NS stream is read for at most [`STREAM_READ_BUDGET`] bytes
//! a turn and holds at most [`NS_OUT_MAX`] bytes for an NS that does not read.

use super::{Agent, AS_CONN, NS_CONN};
use crate::material::wall_clock;
use crate::tls::{LoginTls, LoginTlsError};
use mio::net::TcpStream;
use mio::{Interest, Token};
use ntm_io::{Framed, ReadResult, Refused};
use ntm_proto::engine::{Engine, StreamKind};
use ntm_proto::time::Instant;
use ntm_proto::wire::frame::encode_frame;
use std::net::{IpAddr, SocketAddr};

/// Bytes read from the NS stream per loop turn.
const STREAM_READ_BUDGET: usize = 64 * 1024;
/// Most bytes queued for the NS: a peer that never reads cannot make us buffer without
/// bound (a frame that would go over is dropped; the node's retries cover it).
const NS_OUT_MAX: usize = 64 * 1024;
/// How long a TCP connection to the AS or the NS may take to open before the node is told
/// it failed and tries the server's next address (one SYN retransmission fits).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
/// How long data sent to the AS or the NS may go unacknowledged before the kernel gives
/// the connection up (TCP_USER_TIMEOUT). Without it a path that died (an address gone, a
/// NAT mapping expired) holds the connection, and whatever we queue on it, for the many
/// minutes of TCP's retransmissions; with it the loss shows as a read error and the node
/// reconnects.
const STREAM_USER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// A plain TCP stream to the NS.
pub(super) struct NsConn {
    stream: TcpStream,
    pub(super) peer: SocketAddr,
    framed: Framed,
    pub(super) connecting: bool,
    /// Given up on if still connecting then.
    pub(super) connect_by: std::time::Instant,
}

impl Agent {
    /// A connection to the AS or the NS that did not open in time is given up: the node
    /// then tries the server's next address (an address of a family that has a route but
    /// goes nowhere must not hold the login up for the whole TCP connect timeout).
    pub(super) fn connect_timeouts(&mut self, now: Instant) {
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

    pub(super) fn drive_as(&mut self) {
        let now = self.now();
        let Some((tls, peer, framed)) = self.as_conn.as_mut() else { return };
        let peer = *peer;
        if tls.stream_mut().peer_addr().is_ok() {
            self.as_connect_by = None;
        }
        let result = tls.drive();
        framed.push(&tls.take_received());
        let mut frames = Vec::new();
        let bad = framed.take_frames(&mut frames).is_err();
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

    pub(super) fn close_as(&mut self, now: Instant) {
        self.as_connect_by = None;
        if let Some((mut tls, peer, _)) = self.as_conn.take() {
            tls.close();
            let _ = self.poll.registry().deregister(tls.stream_mut());
            self.node.handle_stream_closed(now, StreamKind::Tls, peer);
        }
    }

    /// Opens a connection to the AS (`Tls`) or the NS (`Tcp`) and registers it as
    /// `token`; if it cannot be opened, the node hears that the stream closed.
    fn connect(&mut self, now: Instant, kind: StreamKind, dst: SocketAddr, token: Token) -> Option<TcpStream> {
        let what = if kind == StreamKind::Tls { "AS" } else { "NS" };
        let mut stream = match TcpStream::connect(dst) {
            Ok(s) => s,
            Err(e) => {
                log::warn!("cannot connect to the {what} {dst}: {e}");
                self.node.handle_stream_closed(now, kind, dst);
                return None;
            }
        };
        set_user_timeout(&stream);
        self.poll.registry().register(&mut stream, token, Interest::READABLE | Interest::WRITABLE).ok()?;
        Some(stream)
    }

    pub(super) fn send_as(&mut self, now: Instant, dst: SocketAddr, payload: &[u8]) {
        if self.as_conn.as_ref().is_some_and(|(_, p, _)| *p != dst) {
            self.close_as(now);
        }
        if self.as_conn.is_none() {
            let Some(stream) = self.connect(now, StreamKind::Tls, dst, AS_CONN) else { return };
            // Certificate dates are checked when the clock is plausible (after boot
            // without a real-time clock it reads 1970; then dates cannot be judged).
            self.tls_cfg.unix_time = wall_clock();
            let tls = LoginTls::new(stream, &self.tls_cfg, rand_core::OsRng);
            // Its frames go out through the TLS session, which holds them.
            self.as_conn = Some((tls, dst, Framed::new(0)));
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

    pub(super) fn drive_ns(&mut self, writable: bool) {
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
            let mut scratch = [0u8; 4096];
            match c.framed.fill(&mut c.stream, &mut scratch, STREAM_READ_BUDGET) {
                ReadResult::Bytes(_) => more = true,
                ReadResult::Empty => {}
                ReadResult::End | ReadResult::Fail => dead = true,
            }
            if c.framed.take_frames(&mut frames).is_err() {
                dead = true;
            }
            if c.framed.over_cap() || (!dead && !c.framed.write_to(&mut c.stream)) {
                dead = true;
            }
        }
        let interest = if c.connecting || c.framed.queued() > 0 {
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
            self.turn.spent(NS_CONN);
        }
    }

    /// Closes the connection to the NS, if any, at once: a reset rather than a FIN, so
    /// a connection on a dead path does not linger in the kernel retransmitting what was
    /// queued on it.
    pub(super) fn drop_ns_conn(&mut self) {
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
    pub(super) fn ns_conn_stale(&self) -> bool {
        let Some(c) = self.ns_conn.as_ref() else { return false };
        let Ok(local) = c.stream.local_addr() else { return true };
        if !self.local_addrs.iter().any(|a| a.ip() == local.ip()) {
            return true;
        }
        source_for(c.peer).is_none_or(|ip| ip != local.ip())
    }

    pub(super) fn send_ns(&mut self, now: Instant, dst: SocketAddr, payload: &[u8]) {
        if self.ns_conn.as_ref().is_some_and(|c| c.peer != dst) {
            self.drop_ns_conn();
        }
        if self.ns_conn.is_none() {
            let Some(stream) = self.connect(now, StreamKind::Tcp, dst, NS_CONN) else { return };
            self.ns_conn = Some(NsConn {
                stream,
                peer: dst,
                framed: Framed::new(NS_OUT_MAX),
                connecting: true,
                connect_by: std::time::Instant::now() + CONNECT_TIMEOUT,
            });
        }
        if let Some(c) = self.ns_conn.as_mut() {
            // Over NS_OUT_MAX the frame is dropped.
            if c.framed.queue(payload) == Err(Refused::TooLong) {
                return;
            }
        }
        self.drive_ns(true);
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
