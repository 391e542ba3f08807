//! Hosts: an engine, the addresses it owns in one realm, and what the simulator observed.
//!
//! A host binds one port, the same number on each address family, for every datagram it
//! sends and receives, and accepts streams on that port too. Datagrams leave from the
//! host's first address of the destination's family. Streams it opens use ephemeral ports
//! (49152 and up).

use crate::topology::RealmId;
use core::any::Any;
use core::net::{IpAddr, SocketAddr};
use ntm_proto::engine::{Engine, PeerIdentity, StreamKind};
use ntm_proto::time::Duration;
use ntm_proto::time::Instant;

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
