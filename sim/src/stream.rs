//! Stream connections (TCP, TLS) as the simulator keeps them.
//!
//! Contract, from the engines' side:
//!
//! - A client sends `Via::Stream { kind, server: Some(name) }` to `dst`. The first frame to
//!   a `(kind, dst)` with no open connection opens one from an ephemeral port; it is
//!   usable one round trip later, and frames sent meanwhile wait. A connection is refused
//!   (no route, destination behind a NAT: there is no port forwarding, nobody listening on
//!   that port, server down) or, for TLS, fails because the server host's identity name is
//!   not `name`: the client then gets `handle_stream_closed` one round trip later.
//! - Frames arrive whole, once, in order, after the path's latency plus jitter; streams
//!   never lose frames.
//! - The server side gets `handle_stream` with `from` = the client's address after NAT and,
//!   for TLS, the client host's identity; the client gets the server's identity likewise.
//!   A server answers with `Via::Stream { kind, server: None }` to that `from`.
//! - A connection breaks when a NAT's TCP mapping on its path expires, when either host
//!   moves or goes down. Nobody is told until someone sends on it: that send fails, and both
//!   ends (if up) get `handle_stream_closed`, the sender at once, the other end after the
//!   one-way latency (as a reset would arrive). Except when the server sends on a
//!   connection whose TCP mapping expired: the NAT no longer knows it, so the segment stops
//!   there (a Linux router answers it with a reset) and only the server hears; the client
//!   learns when it next sends, as a box behind a NAT that forgot its idle connection does.
//!   A restarted engine's connections are reset at once: the peers are told, the new
//!   engine is not.

use crate::host::HostId;
use crate::topology::{LinkId, RealmId};
use core::net::SocketAddr;
use ntm_proto::engine::StreamKind;
use ntm_proto::time::Instant;

#[derive(Debug)]
pub(crate) enum ConnState {
    /// Handshaking; these frames wait for it.
    Connecting(Vec<Vec<u8>>),
    Open,
    /// Broken, not yet noticed by either end.
    Broken,
    /// Broken, and this end was told (a reset reached it); the other end learns when it
    /// next sends.
    Reset(Side),
}

/// Which end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    Client,
    Server,
}

impl Side {
    pub(crate) fn other(self) -> Side {
        match self {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) kind: StreamKind,
    pub(crate) client: HostId,
    pub(crate) server: HostId,
    /// The server's address as the client named it.
    pub(crate) server_addr: SocketAddr,
    /// The client's own address and ephemeral port.
    pub(crate) client_local: SocketAddr,
    /// The client's address as the server sees it (after NAT).
    pub(crate) seen_from: SocketAddr,
    /// Links crossed, client to server.
    pub(crate) links: Vec<LinkId>,
    /// The TCP mappings the connection lives on: NAT realm and external port.
    pub(crate) nat_ports: Vec<(RealmId, u16)>,
    pub(crate) state: ConnState,
    /// Latest arrival scheduled towards the server and towards the client, so that jitter
    /// never reorders a stream.
    pub(crate) last_arrival: [Instant; 2],
}

impl Conn {
    pub(crate) fn host(&self, side: Side) -> HostId {
        match side {
            Side::Client => self.client,
            Side::Server => self.server,
        }
    }

    /// The address `side` knows its peer by.
    pub(crate) fn peer_addr(&self, side: Side) -> SocketAddr {
        match side {
            Side::Client => self.server_addr,
            Side::Server => self.seen_from,
        }
    }

    /// The address `side` sends from, as it knows it.
    pub(crate) fn local_addr(&self, side: Side) -> SocketAddr {
        match side {
            Side::Client => self.client_local,
            Side::Server => self.server_addr,
        }
    }

    pub(crate) fn involves(&self, host: HostId) -> bool {
        self.client == host || self.server == host
    }
}
