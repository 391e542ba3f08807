//! The node's tunnels, found by id, by session and by peer virtual address, with one timer
//! each.
//!
//! A [`TunnelId`] is the tunnel's creation number: iterating the table goes in creation
//! order, which keeps everything that depends on order (status output, which of two
//! equally good tunnels carries a packet, the order of messages after a timer) the same
//! from run to run, as the simulator needs.
//!
//! Every change to a tunnel goes through a [`TunnelMut`] guard, which on drop marks the
//! tunnel's deadline to be filed again in the timer set and, when the tunnel came up or was superseded,
//! marks the routes of its peer's virtual addresses to be chosen again before the next
//! lookup (or the next insertion or removal, which keeps that list short). So the data
//! path finds its tunnel with a binary search, and the next deadline is the first entry of
//! a sorted list instead of a fold over every tunnel. A deadline is filed again once per
//! turn of the caller's loop, not once per packet: the guard only notes the tunnel, the
//! next deadline is the earlier of the table's first entry and those of the noted tunnels,
//! and the noted tunnels are filed before the due ones are looked for. An entry that went
//! stale can only wake the node early, to find nothing due. The table also holds the node's
//! other timers (`timer.rs`): every tunnel change must reach the one table.
//!
//! The indexes are sorted Vecs: a few dozen entries (`max_tunnels`), looked up by binary
//! search, changed only when a tunnel is created, comes up or ends; they cost the agent
//! far less code than maps would.

use super::timer::{Timer, Timers};
use super::tunnel::Tunnel;
use crate::time::{Duration, Instant};
use crate::wire::{Prefix, SessionId};
use core::net::IpAddr;
use core::ops::{Deref, DerefMut};

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
    /// Sorted by id, which is creation order: a new tunnel goes at the end.
    all: Vec<(TunnelId, Tunnel)>,
    index: Index,
    next_id: u64,
}

/// What the table knows about its tunnels besides the tunnels themselves.
struct Index {
    /// Sorted by session.
    by_session: Vec<(SessionId, TunnelId)>,
    /// For each peer virtual address (sorted), the tunnel that carries packets to it now:
    /// of the established tunnels to that address, a live one before a superseded one,
    /// then the one established last, then the one created last.
    routes: Vec<(IpAddr, TunnelId)>,
    /// Peer virtual addresses whose route is chosen again before the next lookup (a
    /// tunnel to them came up or was superseded).
    stale: Vec<IpAddr>,
    /// The peers' announced prefixes (subnet routes), longest first, each with the tunnel
    /// chosen as for `routes`; chosen again whenever any route is (they change rarely).
    prefixes: Vec<(Prefix, TunnelId)>,
    prefixes_stale: bool,
    /// Tunnels changed since their deadline was last filed in `timers` (each once).
    unfiled: Vec<TunnelId>,
    timers: Timers,
    timing: Timing,
}

impl Index {
    /// The routes of `addrs` are to be chosen again.
    fn mark(&mut self, addrs: [IpAddr; 2]) {
        self.prefixes_stale = true;
        for a in addrs {
            if !self.stale.contains(&a) {
                self.stale.push(a);
            }
        }
    }
}

/// Sets `key`'s entry in a Vec sorted by key (`None`: removes it).
fn put<K: Ord + Copy, V>(v: &mut Vec<(K, V)>, key: K, value: Option<V>) {
    match (v.binary_search_by_key(&key, |e| e.0), value) {
        (Ok(i), Some(value)) => {
            if let Some(e) = v.get_mut(i) {
                e.1 = value;
            }
        }
        (Ok(i), None) => {
            v.remove(i);
        }
        (Err(i), Some(value)) => v.insert(i, (key, value)),
        (Err(_), None) => {}
    }
}

/// `key`'s entry in a Vec sorted by key.
fn find<K: Ord + Copy, V: Copy>(v: &[(K, V)], key: K) -> Option<V> {
    v.binary_search_by_key(&key, |e| e.0).ok().and_then(|i| v.get(i)).map(|e| e.1)
}

impl Tunnels {
    pub(super) fn new(timing: Timing) -> Self {
        let index = Index {
            by_session: Vec::new(),
            routes: Vec::new(),
            stale: Vec::new(),
            prefixes: Vec::new(),
            prefixes_stale: false,
            unfiled: Vec::new(),
            timers: Timers::new(),
            timing,
        };
        Tunnels { all: Vec::new(), index, next_id: 0 }
    }

    pub(super) fn timing(&self) -> &Timing {
        &self.index.timing
    }

    /// The node's timer table, for its timers other than the tunnels'.
    pub(super) fn timers(&mut self) -> &mut Timers {
        &mut self.index.timers
    }

    /// The earliest deadline in the node's timer table.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let unfiled = self.index.unfiled.iter().filter_map(|id| self.get(*id)?.deadline(&self.index.timing)).min();
        match (self.index.timers.first(), unfiled) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// True if a timer for which `which` holds is due at `now`. For the node's other timers:
    /// a tunnel's entry may wait to be filed again (`due` files them).
    pub(super) fn any_due(&self, now: Instant, which: impl Fn(&Timer) -> bool) -> bool {
        self.index.timers.any_due(now, which)
    }

    pub(super) fn len(&self) -> usize {
        self.all.len()
    }

    /// Adds a tunnel; its session must not be in the table (the caller checked).
    pub(super) fn insert(&mut self, tunnel: Tunnel) -> TunnelId {
        self.next_id += 1;
        let id = TunnelId(self.next_id);
        put(&mut self.index.by_session, tunnel.session(), Some(id));
        self.index.timers.set(Timer::Tunnel(id), tunnel.deadline(&self.index.timing));
        if tunnel.is_established() {
            self.index.mark(tunnel.peer_addrs());
        }
        // Ids only grow: the end keeps the Vec sorted.
        self.all.push((id, tunnel));
        self.reroute();
        id
    }

    pub(super) fn remove(&mut self, id: TunnelId) -> Option<Tunnel> {
        let i = self.all.binary_search_by_key(&id, |e| e.0).ok()?;
        let (_, tunnel) = self.all.remove(i);
        put(&mut self.index.by_session, tunnel.session(), None);
        self.index.timers.set(Timer::Tunnel(id), None);
        self.index.unfiled.retain(|u| *u != id);
        self.index.mark(tunnel.peer_addrs());
        self.reroute();
        Some(tunnel)
    }

    pub(super) fn get(&self, id: TunnelId) -> Option<&Tunnel> {
        let i = self.all.binary_search_by_key(&id, |e| e.0).ok()?;
        self.all.get(i).map(|e| &e.1)
    }

    /// The tunnel for changing; its timer and route follow when the guard drops.
    pub(super) fn get_mut(&mut self, id: TunnelId) -> Option<TunnelMut<'_>> {
        let i = self.all.binary_search_by_key(&id, |e| e.0).ok()?;
        let tunnel = self.all.get_mut(i).map(|e| &mut e.1)?;
        let key = tunnel.route_key();
        Some(TunnelMut { tunnel, index: &mut self.index, id, key })
    }

    pub(super) fn by_session(&self, session: SessionId) -> Option<TunnelId> {
        find(&self.index.by_session, session)
    }

    /// The tunnel that carries packets to the peer virtual address `dst`.
    pub(super) fn route(&mut self, dst: IpAddr) -> Option<TunnelId> {
        self.reroute();
        // A virtual address first; else the longest announced prefix holding `dst`.
        find(&self.index.routes, dst)
            .or_else(|| self.index.prefixes.iter().find(|(p, _)| p.contains(dst)).map(|(_, id)| *id))
    }

    /// The tunnels in creation order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (TunnelId, &Tunnel)> + '_ {
        self.all.iter().map(|(id, t)| (*id, t))
    }

    /// The ids of all tunnels, in creation order (to change each in turn).
    pub(super) fn ids(&self) -> Vec<TunnelId> {
        self.all.iter().map(|e| e.0).collect()
    }

    /// The tunnels whose deadline is at or before `now`, in creation order.
    pub(super) fn due(&mut self, now: Instant) -> Vec<TunnelId> {
        self.file_deadlines();
        self.index.timers.due_tunnels(now)
    }

    /// Files the deadline of every tunnel changed since the last time.
    fn file_deadlines(&mut self) {
        for id in core::mem::take(&mut self.index.unfiled) {
            if let Ok(i) = self.all.binary_search_by_key(&id, |e| e.0) {
                let deadline = self.all.get(i).and_then(|e| e.1.deadline(&self.index.timing));
                self.index.timers.set(Timer::Tunnel(id), deadline);
            }
        }
    }

    /// Chooses again the tunnel for each stale address. The same choice as a scan of
    /// every tunnel at send time: the greatest (live, established at) wins, the later
    /// created on a tie.
    fn reroute(&mut self) {
        if core::mem::take(&mut self.index.prefixes_stale) {
            let mut prefixes: Vec<(Prefix, TunnelId)> = Vec::new();
            let mut all: Vec<Prefix> = self.all.iter().flat_map(|(_, t)| t.peer_prefixes().iter().copied()).collect();
            all.sort_by(|a, b| b.prefix_len().cmp(&a.prefix_len()).then(a.cmp(b)));
            all.dedup();
            for p in all {
                let best = self
                    .all
                    .iter()
                    .filter(|(_, t)| t.is_established() && t.peer_prefixes().contains(&p))
                    .max_by_key(|(_, t)| t.route_key())
                    .map(|(id, _)| *id);
                if let Some(id) = best {
                    prefixes.push((p, id));
                }
            }
            self.index.prefixes = prefixes;
        }
        if self.index.stale.is_empty() {
            return;
        }
        for addr in core::mem::take(&mut self.index.stale) {
            let best = self
                .all
                .iter()
                .filter(|(_, t)| t.is_established() && t.carries(addr))
                .max_by_key(|(_, t)| t.route_key())
                .map(|(id, _)| *id);
            put(&mut self.index.routes, addr, best);
        }
    }
}

/// A tunnel being changed. On drop its timer is marked to be filed again, and if it came up or was
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
        let unfiled = &mut self.index.unfiled;
        if unfiled.last() != Some(&self.id) && !unfiled.contains(&self.id) {
            unfiled.push(self.id);
        }
        if self.tunnel.route_key() != self.key {
            self.index.mark(self.tunnel.peer_addrs());
        }
    }
}
