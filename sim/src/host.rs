//! Hosts: an engine, the addresses it owns in one realm, and what the simulator observed.
//!
//! A host binds one port, the same number on each address family, for every datagram it
//! sends and receives, and accepts streams on that port too. Datagrams leave from the
//! host's first address of the destination's family. Streams it opens use ephemeral ports
//! (49152 and up).
//!
//! Extra UDP sockets ([`Local`], other than [`Local::MAIN`]): an engine that sends
//! [`ntm_proto::engine::Via::UdpFrom`] gets that socket opened on a fresh ephemeral port
//! the first time (a node's search for a direct path), or on a port the test bound
//! beforehand ([`crate::Sim::bind_socket`]: the DC's mapping port). What arrives there
//! goes to the engine's handler for that socket (`Node::handle_datagram_on`,
//! `Dc::handle_mapping_datagram`); a node's `NodeEvent::LocalsReleased` closes them, and
//! later datagrams to their ports count as [`HostStats::port_unreachable`]. A host has at
//! most [`SOCKETS_MAX`] extra sockets open; a send that would open one more is dropped and
//! counted ([`HostStats::sockets_refused`]), as `EMFILE` would.

use crate::probe::Probe;
use crate::topology::RealmId;
use core::any::Any;
use core::net::{IpAddr, SocketAddr};
use ntm_proto::engine::dc::{Dc, MAPPING_PORT};
use ntm_proto::engine::node::{Node, NodeEvent, LOCALS_MAX};
use ntm_proto::engine::{Engine, Local, PeerIdentity, Received, StreamKind};
use ntm_proto::time::Duration;
use ntm_proto::time::Instant;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Extra UDP sockets a host may have open at once: a node's own bound (the DC has one).
pub const SOCKETS_MAX: usize = LOCALS_MAX;
/// Node events kept for the test ([`crate::Sim::node_events`]); older ones are dropped
/// and counted ([`HostStats::events_dropped`]).
pub const EVENTS_MAX: usize = 4096;

/// A host of the simulated network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostId(pub(crate) usize);

/// An [`Engine`] the simulator can hand back as its concrete type.
///
/// Implemented for every `Engine + 'static`; tests never implement it themselves.
pub trait AnyEngine: Engine + Any {
    /// For downcasting to the concrete engine.
    fn as_any(&self) -> &dyn Any;
    /// For downcasting to the concrete engine.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<T: Engine + Any> AnyEngine for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Which way a captured message went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The host received it.
    In,
    /// The host sent it.
    Out,
}

/// What a captured message travelled on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Carrier {
    /// A UDP datagram.
    Udp,
    /// A frame on a TCP or TLS stream.
    Stream(StreamKind),
}

/// One message a host sent or received, as the host saw it: sent messages with the
/// host's own source address and the destination it named, received ones with the source
/// after NAT. Received datagrams are recorded before the engine decrypts them in place.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Captured {
    /// When.
    pub at: Instant,
    /// Sent or received.
    pub dir: Direction,
    /// Datagram or frame.
    pub carrier: Carrier,
    /// Source.
    pub src: SocketAddr,
    /// Destination.
    pub dst: SocketAddr,
    /// The bytes on the wire (the frame's payload, for streams).
    pub bytes: Vec<u8>,
}

/// Messages the simulator dropped at or for one host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostStats {
    /// Messages to send to a family the host has no address of.
    pub no_source_addr: u64,
    /// Input that arrived, and output it produced, while the host was down.
    pub dropped_while_down: u64,
    /// Datagrams that reached the host's address on another port.
    pub port_unreachable: u64,
    /// Server-side stream frames with no connection from that peer.
    pub stream_no_conn: u64,
    /// Stream connections that could not be set up (no route, behind a NAT, wrong port,
    /// server down, TLS name mismatch).
    pub stream_refused: u64,
    /// Frames sent on a connection found broken (NAT expiry, mobility, dead peer).
    pub stream_broken: u64,
    /// [`ntm_proto::engine::Received::Ip`] ranges outside the buffer.
    pub bad_ip_range: u64,
    /// Extra sockets opened (by first use or [`crate::Sim::bind_socket`]).
    pub sockets_opened: u64,
    /// Extra sockets closed (released by the engine, or at a restart).
    pub sockets_closed: u64,
    /// Datagrams not sent because opening their extra socket would exceed [`SOCKETS_MAX`]
    /// or no ephemeral port was free.
    pub sockets_refused: u64,
    /// Datagrams that reached an extra socket of an engine that has no handler for it.
    pub no_handler: u64,
    /// Node events dropped because the test did not read them ([`EVENTS_MAX`]).
    pub events_dropped: u64,
}

/// A host as the simulator keeps it.
pub(crate) struct Host {
    pub(crate) name: String,
    pub(crate) realm: RealmId,
    pub(crate) addrs: Vec<IpAddr>,
    pub(crate) port: u16,
    pub(crate) identity: Option<PeerIdentity>,
    pub(crate) engine: Box<dyn AnyEngine>,
    pub(crate) down: bool,
    /// The engine may have output that has not been drained yet.
    pub(crate) dirty: bool,
    /// Bumped by `replace_engine`, so that answers meant for the old engine are dropped.
    pub(crate) incarnation: u64,
    /// When `handle_timeout` last ran, to stop an engine that keeps asking for a deadline
    /// in the past from stalling virtual time.
    pub(crate) last_fired: Option<Instant>,
    pub(crate) next_ephemeral: u16,
    pub(crate) ip_inbox: Vec<Vec<u8>>,
    pub(crate) capture: Option<Vec<Captured>>,
    pub(crate) stats: HostStats,
    /// Extra one-way delay of datagrams delivered to this host (a server farther away).
    pub(crate) extra_delay: Duration,
    /// Open extra UDP sockets and their ports (at most [`SOCKETS_MAX`]).
    pub(crate) sockets: BTreeMap<Local, u16>,
    /// The sockets of `sockets` bound to a configured port (`Sim::bind_socket`).
    pub(crate) bound: BTreeSet<Local>,
    /// A node's events, drained after every input so that `LocalsReleased` closes its
    /// sockets; the test reads them with `Sim::node_events`.
    pub(crate) events: VecDeque<NodeEvent>,
}

/// First ephemeral port (RFC 6335's dynamic range).
pub(crate) const EPHEMERAL_FIRST: u16 = 49152;

impl Host {
    /// The address datagrams to `dst` leave from.
    pub(crate) fn source_for(&self, dst: &SocketAddr) -> Option<IpAddr> {
        self.addrs.iter().copied().find(|a| a.is_ipv4() == dst.is_ipv4())
    }

    pub(crate) fn owns(&self, ip: IpAddr) -> bool {
        self.addrs.contains(&ip)
    }

    pub(crate) fn ephemeral_port(&mut self) -> u16 {
        let port = self.next_ephemeral;
        self.next_ephemeral = self.next_ephemeral.checked_add(1).unwrap_or(EPHEMERAL_FIRST);
        port
    }

    /// The socket bound to `port`, if any.
    pub(crate) fn socket_at(&self, port: u16) -> Option<Local> {
        if port == self.port {
            return Some(Local::MAIN);
        }
        self.sockets.iter().find(|(_, &p)| p == port).map(|(&l, _)| l)
    }

    /// The port of socket `local`, opening it on a fresh ephemeral port on first use; None
    /// if the table is full or no port is free (counted).
    pub(crate) fn socket_port(&mut self, local: Local) -> Option<u16> {
        if local == Local::MAIN {
            return Some(self.port);
        }
        if let Some(&port) = self.sockets.get(&local) {
            return Some(port);
        }
        if self.sockets.len() >= SOCKETS_MAX {
            self.stats.sockets_refused += 1;
            log::debug!("{}: no room for socket {local:?} ({SOCKETS_MAX} open)", self.name);
            return None;
        }
        // The ephemeral range holds far more ports than the table, so a free one turns up
        // within the table's size plus the main port.
        for _ in 0..=SOCKETS_MAX + 1 {
            let port = self.ephemeral_port();
            if self.socket_at(port).is_none() {
                self.sockets.insert(local, port);
                self.stats.sockets_opened += 1;
                return Some(port);
            }
        }
        self.stats.sockets_refused += 1;
        None
    }

    /// Closes extra sockets (what arrives on their ports from now on is unreachable).
    pub(crate) fn close_sockets(&mut self, locals: impl IntoIterator<Item = Local>) {
        for local in locals {
            self.bound.remove(&local);
            if self.sockets.remove(&local).is_some() {
                self.stats.sockets_closed += 1;
            }
        }
    }

    /// Takes the engine's events if it is a node, closing the sockets it released, and
    /// keeps them for the test.
    pub(crate) fn drain_events(&mut self) {
        if let Some(probe) = self.engine.as_any_mut().downcast_mut::<Probe>() {
            let released = probe.take_released();
            return self.close_sockets(released);
        }
        let Some(node) = self.engine.as_any_mut().downcast_mut::<Node>() else { return };
        let mut released = Vec::new();
        let mut taken = Vec::new();
        while let Some(ev) = node.poll_event() {
            if let NodeEvent::LocalsReleased { locals } = &ev {
                released.extend_from_slice(locals);
            }
            taken.push(ev);
        }
        self.close_sockets(released);
        for ev in taken {
            if self.events.len() >= EVENTS_MAX {
                self.events.pop_front();
                self.stats.events_dropped += 1;
            }
            self.events.push_back(ev);
        }
    }
}

/// A datagram that arrived on extra socket `local`, for the engines that have them; None
/// if this engine has no handler for that socket.
pub(crate) fn handle_datagram_on(
    engine: &mut dyn AnyEngine,
    now: Instant,
    local: Local,
    from: SocketAddr,
    buf: &mut [u8],
) -> Option<Received> {
    let any = engine.as_any_mut();
    if let Some(node) = any.downcast_mut::<Node>() {
        return Some(node.handle_datagram_on(now, local, from, buf));
    }
    if let Some(probe) = any.downcast_mut::<Probe>() {
        return Some(probe.handle_datagram_on(now, local, from, buf));
    }
    match any.downcast_mut::<Dc>() {
        Some(dc) if local == MAPPING_PORT => Some(dc.handle_mapping_datagram(now, from, buf)),
        _ => None,
    }
}

impl core::fmt::Debug for Host {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Host")
            .field("name", &self.name)
            .field("realm", &self.realm)
            .field("addrs", &self.addrs)
            .field("port", &self.port)
            .field("down", &self.down)
            .finish_non_exhaustive()
    }
}
