//! The node's tunnels, found by id, by session and by peer virtual address, with one timer
//! each.
//!
//! A [`TunnelId`] is the tunnel's creation number: iterating the table goes in creation
//! order, which keeps everything that depends on order (status output, which of two
//! equally good tunnels carries a packet, the order of messages after a timer) the same
//! from run to run, as the simulator needs.
//!
//! Every change to a tunnel goes through a [`TunnelMut`] guard, which on drop files the
//! tunnel's next deadline in the timer set and, when the tunnel came up or was superseded,
//! marks the routes of its peer's virtual addresses to be chosen again before the next
//! lookup (or the next insertion or removal, which keeps that list short). So the data
//! path finds its tunnel with one hash lookup, and [`Tunnels::next_deadline`] is the first
//! entry of a sorted set instead of a fold over every tunnel.

use super::timer::Timers;
use super::tunnel::Tunnel;
use crate::time::{Duration, Instant};
use crate::wire::SessionId;
use core::net::IpAddr;
use core::ops::{Deref, DerefMut};
use std::collections::{BTreeMap, HashMap};

/// Names one tunnel of this node: its creation number (never reused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct TunnelId(u64);

/// The node's settings that a tunnel's deadlines depend on.
#[derive(Clone, Copy, Debug)]
pub(super) struct Timing {
    /// Keepalive after this much silence (`NodeConfig::tunnel_keepalive`).
    pub(super) keepalive: Duration,
    /// Close after this long without data (`NodeConfig::tunnel_idle_timeout`).
    pub(super) idle: Duration,
    /// Lifetime of K_mncn (`NodeConfig::tunnel_key_lifetime`).
    pub(super) key_lifetime: Duration,
}

/// The tunnel table. See the module documentation.
pub(super) struct Tunnels {
    all: BTreeMap<TunnelId, Tunnel>,
    index: Index,
    next_id: u64,
}

/// What the table knows about its tunnels besides the tunnels themselves.
struct Index {
    by_session: HashMap<SessionId, TunnelId>,
    /// For each peer virtual address, the tunnel that carries packets to it now: of the
    /// established tunnels to that address, a live one before a superseded one, then the
    /// one established last, then the one created last.
    routes: HashMap<IpAddr, TunnelId>,
    /// Peer virtual addresses whose route is chosen again before the next lookup (a
    /// tunnel to them came up or was superseded).
    stale: Vec<IpAddr>,
    timers: Timers<TunnelId>,
    timing: Timing,
}

impl Tunnels {
    pub(super) fn new(timing: Timing) -> Self {
        let index = Index {
            by_session: HashMap::new(),
            routes: HashMap::new(),
            stale: Vec::new(),
            timers: Timers::new(),
            timing,
        };
        Tunnels { all: BTreeMap::new(), index, next_id: 0 }
    }

    pub(super) fn timing(&self) -> &Timing {
        &self.index.timing
    }

    pub(super) fn len(&self) -> usize {
        self.all.len()
    }

    /// Adds a tunnel; its session must not be in the table (the caller checked).
    pub(super) fn insert(&mut self, tunnel: Tunnel) -> TunnelId {
        self.next_id += 1;
        let id = TunnelId(self.next_id);
        self.index.by_session.insert(tunnel.session(), id);
        self.index.timers.set(id, tunnel.deadline(&self.index.timing));
        if tunnel.is_established() {
            self.index.stale.extend(tunnel.peer_addrs());
        }
        self.all.insert(id, tunnel);
        self.reroute();
        id
    }

    pub(super) fn remove(&mut self, id: TunnelId) -> Option<Tunnel> {
        let tunnel = self.all.remove(&id)?;
        self.index.by_session.remove(&tunnel.session());
        self.index.timers.set(id, None);
        self.index.stale.extend(tunnel.peer_addrs());
        self.reroute();
        Some(tunnel)
    }

    pub(super) fn get(&self, id: TunnelId) -> Option<&Tunnel> {
        self.all.get(&id)
    }

    /// The tunnel for changing; its timer and route follow when the guard drops.
    pub(super) fn get_mut(&mut self, id: TunnelId) -> Option<TunnelMut<'_>> {
        let tunnel = self.all.get_mut(&id)?;
        let key = tunnel.route_key();
        Some(TunnelMut { tunnel, index: &mut self.index, id, key })
    }

    pub(super) fn by_session(&self, session: SessionId) -> Option<TunnelId> {
        self.index.by_session.get(&session).copied()
    }

    /// The tunnel that carries packets to the peer virtual address `dst`.
    pub(super) fn route(&mut self, dst: IpAddr) -> Option<TunnelId> {
        self.reroute();
        self.index.routes.get(&dst).copied()
    }

    /// The tunnels in creation order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (TunnelId, &Tunnel)> + '_ {
        self.all.iter().map(|(id, t)| (*id, t))
    }

    /// The ids of all tunnels, in creation order (to change each in turn).
    pub(super) fn ids(&self) -> Vec<TunnelId> {
        self.all.keys().copied().collect()
    }

    /// The tunnels whose deadline is at or before `now`, in creation order.
    pub(super) fn due(&self, now: Instant) -> Vec<TunnelId> {
        self.index.timers.due(now)
    }

    /// The earliest deadline of any tunnel.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.index.timers.first()
    }

    /// Chooses again the tunnel for each stale address. The same choice as a scan of
    /// every tunnel at send time: the greatest (live, established at) wins, the later
    /// created on a tie.
    fn reroute(&mut self) {
        if self.index.stale.is_empty() {
            return;
        }
        let mut stale = core::mem::take(&mut self.index.stale);
        stale.sort_unstable();
        stale.dedup();
        for addr in stale {
            let best = self
                .all
                .iter()
                .filter(|(_, t)| t.is_established() && t.carries(addr))
                .max_by_key(|(_, t)| t.route_key())
                .map(|(id, _)| *id);
            match best {
                Some(id) => self.index.routes.insert(addr, id),
                None => self.index.routes.remove(&addr),
            };
        }
    }
}

/// A tunnel being changed. On drop its timer is filed again, and if it came up or was
/// superseded its peer's routes are marked for choosing again.
pub(super) struct TunnelMut<'a> {
    tunnel: &'a mut Tunnel,
    index: &'a mut Index,
    id: TunnelId,
    /// The tunnel's [`Tunnel::route_key`] before the change.
    key: RouteKey,
}

/// What decides whether a tunnel carries packets: (established, live, established at).
pub(super) type RouteKey = (bool, bool, Option<Instant>);

impl Deref for TunnelMut<'_> {
    type Target = Tunnel;
    fn deref(&self) -> &Tunnel {
        self.tunnel
    }
}

impl DerefMut for TunnelMut<'_> {
    fn deref_mut(&mut self) -> &mut Tunnel {
        self.tunnel
    }
}

impl Drop for TunnelMut<'_> {
    fn drop(&mut self) {
        self.index.timers.set(self.id, self.tunnel.deadline(&self.index.timing));
        if self.tunnel.route_key() != self.key {
            self.index.stale.extend(self.tunnel.peer_addrs());
        }
    }
}
