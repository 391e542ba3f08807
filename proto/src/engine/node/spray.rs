//! Direct paths through a NAT that maps per destination ("birthday" traversal).
//!
//! Route optimization (tunnel.rs) finds a direct path whenever at least one side's NAT
//! keeps one outside port per inside socket: that side's port, seen by the DC, is where
//! the other can reach it. When one side's NAT maps per destination (the "hard" side) and
//! the other filters by address and port, neither knows a port the other will accept.
//! The DC sees this from its mapping test and tells both (`Traversal` in the Route
//! Direction):
//!
//! - the hard side opens [`OPEN_SOCKETS`] extra sockets and sends one Path Probe from each
//!   to the peer's outside address, which opens as many mappings toward it, each on an
//!   outside port nobody knows;
//! - the easy side sends [`GUESSES`] Path Probes from its tunnel port to random ports of
//!   the hard side's outside address: each opens its own NAT's filter for that port, and
//!   one that lands on a mapping of the hard side reaches one of its sockets.
//!
//! With 256 mappings among about 64 000 ports, 1024 guesses miss them all with
//! probability (1 - 256/64 512)^1024, under 2 %. The socket that heard the peer is kept
//! for that peer's tunnels (the engine sends everything for the peer from it); the
//! others are closed. One search runs at a time per node, bounded in packets and time.

use crate::engine::Local;
use core::net::SocketAddr;

/// The extra sockets of one search on the hard side.
pub const OPEN_SOCKETS: u16 = 256;
/// The easy side's guesses per search.
#[allow(dead_code)] // TODO: the search itself
pub const GUESSES: u32 = 1024;
/// Kept sockets at most (one per peer reached through one).
pub const KEPT_MAX: usize = 32;
/// Extra sockets a node has open at most: a search's and the kept ones.
pub const LOCALS_MAX: usize = OPEN_SOCKETS as usize + KEPT_MAX;

/// What the searches did, for status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraversalStats {
    /// Searches started (either side).
    pub searches: u64,
    /// Searches that found a direct path.
    pub found: u64,
    /// Path Probes sent by searches (from extra sockets, or as guesses).
    pub probes: u64,
    /// Extra sockets open now.
    pub open_sockets: usize,
}

/// A socket kept for a peer reached through it.
struct Kept {
    /// The peer's address, as seen from that socket.
    peer: SocketAddr,
    local: Local,
}

/// The node's extra sockets.
#[derive(Default)]
pub(super) struct Locals {
    kept: Vec<Kept>,
    stats: TraversalStats,
}

impl Locals {
    /// The socket a datagram to `to` leaves from.
    pub(super) fn local_for(&self, to: SocketAddr) -> Local {
        if self.kept.is_empty() {
            return Local::MAIN;
        }
        self.kept.iter().find(|k| k.peer == to).map_or(Local::MAIN, |k| k.local)
    }

    pub(super) fn stats(&self) -> TraversalStats {
        TraversalStats { open_sockets: self.kept.len(), ..self.stats }
    }

    /// True if `local` is open (kept, or part of the running search).
    pub(super) fn is_open(&self, local: Local) -> bool {
        self.kept.iter().any(|k| k.local == local)
    }
}
