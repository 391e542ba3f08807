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
//! updates the route of its peer's virtual addresses. So the data path finds its tunnel
//! with one hash lookup, and [`Tunnels::next_deadline`] is the first entry of a sorted set
//! instead of a fold over every tunnel.

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
    by_session: HashMap<SessionId, TunnelId>,
    /// For each peer virtual address, the tunnel that carries packets to it now: of the
    /// established tunnels to that address, a live one before a superseded one, then the
    /// one established last, then the one created last.
    routes: HashMap<IpAddr, TunnelId>,
    timers: Timers<TunnelId>,
    timing: Timing,
    next_id: u64,
}

impl Tunnels {
    pub(super) fn new(timing: Timing) -> Self {
        Tunnels {
            all: BTreeMap::new(),
            by_session: HashMap::new(),
            routes: HashMap::new(),
            timers: Timers::new(),
            timing,
            next_id: 0,
        }
    }

    pub(super) fn timing(&self) -> &Timing {
        &self.timing
    }

    pub(super) fn len(&self) -> usize {
        self.all.len()
    }

    /// Adds a tunnel; its session must not be in the table (the caller checked).
    pub(super) fn insert(&mut self, tunnel: Tunnel) -> TunnelId {
        self.next_id += 1;
        let id = TunnelId(self.next_id);
        self.by_session.insert(tunnel.session(), id);
        self.timers.set(id, tunnel.deadline(&self.timing));
        let addrs = tunnel.is_established().then(|| tunnel.peer_addrs());
        self.all.insert(id, tunnel);
        if let Some(addrs) = addrs {
            self.reroute(addrs);
        }
        id
    }

    pub(super) fn remove(&mut self, id: TunnelId) -> Option<Tunnel> {
        let tunnel = self.all.remove(&id)?;
        self.by_session.remove(&tunnel.session());
        self.timers.set(id, None);
        self.reroute(tunnel.peer_addrs());
        Some(tunnel)
    }

    pub(super) fn get(&self, id: TunnelId) -> Option<&Tunnel> {
        self.all.get(&id)
    }

    /// The tunnel for changing; its timer and route follow when the guard drops.
    pub(super) fn get_mut(&mut self, id: TunnelId) -> Option<TunnelMut<'_>> {
        let key = self.all.get(&id).map(Tunnel::route_key)?;
        Some(TunnelMut { table: self, id, key })
    }

    pub(super) fn by_session(&self, session: SessionId) -> Option<TunnelId> {
        self.by_session.get(&session).copied()
    }

    /// The tunnel that carries packets to the peer virtual address `dst`.
    pub(super) fn route(&self, dst: IpAddr) -> Option<TunnelId> {
        self.routes.get(&dst).copied()
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
        self.timers.due(now)
    }

    /// The earliest deadline of any tunnel.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.timers.first()
    }

    /// Chooses again the tunnel for each of `addrs` (a tunnel to them came up, was
    /// superseded or ended). The same choice as a scan of every tunnel at send time:
    /// the greatest (live, established at) wins, the later created on a tie.
    fn reroute(&mut self, addrs: [IpAddr; 2]) {
        for addr in addrs {
            let best = self
                .all
                .iter()
                .filter(|(_, t)| t.is_established() && t.carries(addr))
                .max_by_key(|(_, t)| t.route_key())
                .map(|(id, _)| *id);
            match best {
                Some(id) => self.routes.insert(addr, id),
                None => self.routes.remove(&addr),
            };
        }
    }
}

/// A tunnel being changed. On drop its timer is filed again, and its peer's routes are
/// chosen again if it came up or was superseded.
pub(super) struct TunnelMut<'a> {
    table: &'a mut Tunnels,
    id: TunnelId,
    /// The tunnel's [`Tunnel::route_key`] before the change.
    key: RouteKey,
}

/// What decides whether a tunnel carries packets: (established, live, established at).
pub(super) type RouteKey = (bool, bool, Option<Instant>);

impl Deref for TunnelMut<'_> {
    type Target = Tunnel;
    fn deref(&self) -> &Tunnel {
        match self.table.all.get(&self.id) {
            Some(t) => t,
            // The guard is made only for an id in the table, and holds the table.
            None => unreachable!("a TunnelMut for a tunnel not in the table"),
        }
    }
}

impl DerefMut for TunnelMut<'_> {
    fn deref_mut(&mut self) -> &mut Tunnel {
        match self.table.all.get_mut(&self.id) {
            Some(t) => t,
            // As in `deref`.
            None => unreachable!("a TunnelMut for a tunnel not in the table"),
        }
    }
}

impl Drop for TunnelMut<'_> {
    fn drop(&mut self) {
        let t = &mut *self.table;
        let Some(tunnel) = t.all.get(&self.id) else { return };
        t.timers.set(self.id, tunnel.deadline(&t.timing));
        if tunnel.route_key() != self.key {
            let addrs = tunnel.peer_addrs();
            t.reroute(addrs);
        }
    }
}
