//! [`Probe`], a minimal [`Engine`] for exercising the simulator itself (and for playing a
//! dumb peer or attacker in protocol tests).
//!
//! A probe sends exactly what the test tells it to, logs everything it is handed in
//! [`Probe::log`], and optionally echoes. It gives the data-plane hooks something to do:
//! a datagram starting with [`IP_PREFIX`] is "decrypted" to the rest of the buffer
//! ([`Received::Ip`]), and a relay probe forwards every datagram ([`Received::Forward`]).
//! It can send from extra sockets ([`Probe::send_from`]) and release them
//! ([`Probe::release`]), as a node does in its search for a direct path.

use core::net::SocketAddr;
use ntm_proto::engine::{
    DnsAnswer, DnsQuery, DropCounters, Engine, Local, PeerIdentity, Received, StreamKind, Transmit, Via,
};
use ntm_proto::time::Instant;
use ntm_proto::wire::Fqdn;
use std::collections::VecDeque;

/// A datagram starting with this is a "data packet"; the rest is its inner IP packet.
pub const IP_PREFIX: &[u8] = b"ip:";

/// One thing a probe was handed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Heard {
    /// `handle_datagram`.
    Datagram {
        /// When.
        at: Instant,
        /// Source, after NAT.
        from: SocketAddr,
        /// The datagram.
        payload: Vec<u8>,
    },
    /// A datagram on an extra socket.
    DatagramOn {
        /// When.
        at: Instant,
        /// The socket.
        local: Local,
        /// Source, after NAT.
        from: SocketAddr,
        /// The datagram.
        payload: Vec<u8>,
    },
    /// `handle_stream`.
    Frame {
        /// When.
        at: Instant,
        /// TCP or TLS.
        kind: StreamKind,
        /// The peer's address, after NAT.
        from: SocketAddr,
        /// The name TLS verified.
        peer: Option<Fqdn>,
        /// The frame.
        payload: Vec<u8>,
    },
    /// `handle_stream_closed`.
    Closed {
        /// When.
        at: Instant,
        /// TCP or TLS.
        kind: StreamKind,
        /// The peer's address.
        peer: SocketAddr,
    },
    /// `handle_dns`.
    Dns {
        /// When.
        at: Instant,
        /// The query's id.
        id: u64,
        /// The answer.
        answer: DnsAnswer,
    },
    /// `handle_timeout`.
    Timeout {
        /// When.
        at: Instant,
    },
}

/// What a probe does with input besides logging it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Listen,
    Echo,
    Relay(SocketAddr),
}

/// A scriptable engine; see the module documentation.
#[derive(Debug)]
pub struct Probe {
    mode: Mode,
    outbox: VecDeque<Transmit>,
    queries: VecDeque<DnsQuery>,
    timer: Option<Instant>,
    /// Everything handed to the probe, oldest first.
    pub log: Vec<Heard>,
    drops: DropCounters,
    /// Extra sockets released and not yet taken by the simulator.
    released: Vec<Local>,
}

impl Default for Probe {
    fn default() -> Self {
        Self::new()
    }
}

impl Probe {
    /// A probe that only listens.
    pub fn new() -> Self {
        Probe {
            mode: Mode::Listen,
            outbox: VecDeque::new(),
            queries: VecDeque::new(),
            timer: None,
            log: Vec::new(),
            drops: DropCounters::default(),
            released: Vec::new(),
        }
    }

    /// A probe that sends every datagram back to its source and every frame back on its
    /// stream.
    pub fn echo() -> Self {
        Probe { mode: Mode::Echo, ..Self::new() }
    }

    /// A probe that forwards every datagram, unchanged, to `to` (a toy relay server).
    pub fn relay(to: SocketAddr) -> Self {
        Probe { mode: Mode::Relay(to), ..Self::new() }
    }

    /// Sends a datagram.
    pub fn send(&mut self, dst: SocketAddr, payload: impl Into<Vec<u8>>) {
        self.outbox.push_back(Transmit { via: Via::Udp, dst, payload: payload.into() });
    }

    /// Sends a datagram from extra socket `local` (opened on first use).
    pub fn send_from(&mut self, local: Local, dst: SocketAddr, payload: impl Into<Vec<u8>>) {
        self.outbox.push_back(Transmit { via: Via::UdpFrom(local), dst, payload: payload.into() });
    }

    /// Closes extra sockets (the simulator takes them, as a node's driver takes
    /// `NodeEvent::LocalsReleased`).
    pub fn release(&mut self, locals: &[Local]) {
        self.released.extend_from_slice(locals);
    }

    /// The sockets released since the last call (for the simulator).
    pub(crate) fn take_released(&mut self) -> Vec<Local> {
        core::mem::take(&mut self.released)
    }

    /// A datagram on extra socket `local`: logged, and echoed from that socket if the
    /// probe echoes.
    pub fn handle_datagram_on(&mut self, now: Instant, local: Local, from: SocketAddr, buf: &[u8]) -> Received {
        self.log.push(Heard::DatagramOn { at: now, local, from, payload: buf.to_vec() });
        if self.mode == Mode::Echo {
            self.send_from(local, from, buf.to_vec());
        }
        Received::Handled
    }

    /// The datagrams heard on extra sockets, as (socket, source, payload).
    pub fn datagrams_on(&self) -> Vec<(Local, SocketAddr, Vec<u8>)> {
        self.log
            .iter()
            .filter_map(|h| match h {
                Heard::DatagramOn { local, from, payload, .. } => Some((*local, *from, payload.clone())),
                _ => None,
            })
            .collect()
    }

    /// Sends a frame on a stream; `server` names the server to connect to (client side) or
    /// is None to answer on a stream the peer opened.
    pub fn send_stream(
        &mut self,
        kind: StreamKind,
        server: Option<Fqdn>,
        dst: SocketAddr,
        payload: impl Into<Vec<u8>>,
    ) {
        self.outbox.push_back(Transmit { via: Via::Stream { kind, server }, dst, payload: payload.into() });
    }

    /// Asks which DC serves `name`.
    pub fn resolve(&mut self, id: u64, name: Fqdn) {
        self.queries.push_back(DnsQuery { id, name, addresses: false });
    }

    /// Asks for `handle_timeout` at `at`.
    pub fn set_timer(&mut self, at: Instant) {
        self.timer = Some(at);
    }

    /// The datagrams heard, as (source, payload).
    pub fn datagrams(&self) -> Vec<(SocketAddr, Vec<u8>)> {
        self.log
            .iter()
            .filter_map(|h| match h {
                Heard::Datagram { from, payload, .. } => Some((*from, payload.clone())),
                _ => None,
            })
            .collect()
    }

    /// The stream frames heard, as (source, payload).
    pub fn frames(&self) -> Vec<(SocketAddr, Vec<u8>)> {
        self.log
            .iter()
            .filter_map(|h| match h {
                Heard::Frame { from, payload, .. } => Some((*from, payload.clone())),
                _ => None,
            })
            .collect()
    }

    /// The streams reported closed, as (kind, peer).
    pub fn closed(&self) -> Vec<(StreamKind, SocketAddr)> {
        self.log
            .iter()
            .filter_map(|h| match h {
                Heard::Closed { kind, peer, .. } => Some((*kind, *peer)),
                _ => None,
            })
            .collect()
    }
}

impl Engine for Probe {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, buf: &mut [u8]) -> Received {
        self.log.push(Heard::Datagram { at: now, from, payload: buf.to_vec() });
        match self.mode {
            Mode::Relay(to) => return Received::Forward(to),
            Mode::Echo => self.send(from, buf.to_vec()),
            Mode::Listen => {}
        }
        if buf.starts_with(IP_PREFIX) {
            Received::Ip(IP_PREFIX.len()..buf.len())
        } else {
            Received::Handled
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
        let peer = peer.map(|p| p.name.clone());
        self.log.push(Heard::Frame { at: now, kind, from, peer, payload: frame.to_vec() });
        if self.mode == Mode::Echo {
            self.send_stream(kind, None, from, frame.to_vec());
        }
        Received::Handled
    }

    fn handle_stream_closed(&mut self, now: Instant, kind: StreamKind, peer: SocketAddr) {
        self.log.push(Heard::Closed { at: now, kind, peer });
    }

    fn handle_dns(&mut self, now: Instant, id: u64, answer: DnsAnswer) {
        self.log.push(Heard::Dns { at: now, id, answer });
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.timer.is_some_and(|t| t <= now) {
            self.timer = None;
            self.log.push(Heard::Timeout { at: now });
        }
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.outbox.pop_front()
    }

    fn poll_dns(&mut self) -> Option<DnsQuery> {
        self.queries.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.timer
    }

    fn drops(&self) -> &DropCounters {
        &self.drops
    }
}
