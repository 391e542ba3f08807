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
//!   outside port nobody knows; it does so [`OPEN_ROUNDS`] times, a second apart, so that
//!   a probe also crosses the peer's filter once a guess has opened it;
//! - the easy side sends [`GUESSES`] Path Probes from its tunnel port to as many distinct
//!   random ports of the hard side's outside address, [`GUESS_BATCH`] every
//!   [`GUESS_EVERY`]: each opens its own NAT's filter for that port, and one that lands on
//!   a mapping of the hard side reaches one of its sockets.
//!
//! With 256 mappings among about 64 500 ports, 2048 distinct guesses miss them all with
//! probability below (1 - 256/64 512)^2048, about 0.03 % (1024 would miss 1.8 % of the
//! time, and did in 2 of 22 lab runs). Whatever is heard first, authenticated
//! with the tunnel's K_mncn, from the peer on a new path ends the search: the hard side
//! keeps the socket that heard it for that peer (everything for the peer's address leaves
//! from it) and closes the others; both sides move the tunnel off the relay.
//!
//! Bounds: one search at a time per node (others wait in a short queue, [`WAITING_MAX`]);
//! a search lasts at most [`SEARCH_TIME`]; the hard side sends at most 768 probes, the
//! easy side 2048; at most [`LOCALS_MAX`] extra sockets are open at once. A search starts
//! [`SEARCH_DELAY`] after the relayed tunnel came up, and not at all if route optimization
//! found a direct path by then; it ends when route optimization does. Copies of one
//! probe that a NAT filtering by address lets in from many sockets move the peer once
//! (tunnel.rs, `followed_probe`). A box that moves closes every extra socket: their
//! mappings were the old NAT's. Where the search cannot succeed (an easy side behind a
//! NAT without a firewall gate): docs/protocol.md 7.8.2.

use super::table::TunnelId;
use super::Node;
use crate::engine::{Local, Via};
use crate::time::{Duration, Instant};
use crate::wire::route::Traversal;
use crate::wire::tunnel::PathProbe;
use crate::wire::{Message, SessionId};
use core::net::SocketAddr;
use rand_core::RngCore;
use std::collections::VecDeque;

/// The extra sockets of one search on the hard side.
pub const OPEN_SOCKETS: u16 = 256;
/// Rounds of probes from them, [`OPEN_EVERY`] apart.
const OPEN_ROUNDS: u32 = 3;
const OPEN_EVERY: Duration = Duration::from_secs(1);
/// The easy side's guesses per search (distinct ports), sent in batches.
pub const GUESSES: u32 = 2048;
const GUESS_BATCH: u32 = 64;
const GUESS_EVERY: Duration = Duration::from_millis(50);
/// The easy side starts this much after its tunnel came up plus [`SEARCH_DELAY`], so that
/// the hard side's mappings are open when the guesses arrive (a guess that reaches the
/// hard NAT before them is lost, and a Linux NAT then avoids its port).
const GUESS_LAG: Duration = Duration::from_millis(200);
/// Route optimization's chance first: it finds the path within its first retries (250 ms
/// apart) where the filtering side's NAT lets the hard side's new port in; a search
/// started meanwhile would send 256 probes for nothing.
const SEARCH_DELAY: Duration = Duration::from_millis(600);
/// Longest a search lasts, from its start: the guesses take 1.6 s, and the hard side's
/// last round goes 2 s after its first.
const SEARCH_TIME: Duration = Duration::from_millis(3500);
/// The ports guessed at: those a NAT gives out (Linux picks from 1024-65535 when the
/// inside port is 1024 or above).
const PORT_LOW: u32 = 1024;
const PORT_COUNT: u32 = 65536 - PORT_LOW;
/// Searches waiting for the running one to end.
const WAITING_MAX: usize = 8;
/// Kept sockets at most (one per peer reached through one).
pub const KEPT_MAX: usize = 32;
/// Extra sockets a node has open at most: a search's and the kept ones.
pub const LOCALS_MAX: usize = OPEN_SOCKETS as usize + KEPT_MAX;
/// How often kept sockets are checked for a tunnel that still sends through them.
const KEPT_CHECK: Duration = Duration::from_secs(10);

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

/// A search asked for by a tunnel.
#[derive(Clone, Copy)]
struct Plan {
    session: SessionId,
    open: bool,
    /// The peer's outside address as the DC saw it (the hard side sends there; the easy
    /// side guesses ports at its address).
    peer: SocketAddr,
    not_before: Instant,
}

/// The search running now.
struct Search {
    plan: Plan,
    probe_id: u32,
    /// The hard side's sockets: `first` and the next [`OPEN_SOCKETS`] - 1 ids.
    first: Option<Local>,
    /// What is left to send: rounds (hard side) or guesses (easy side).
    left: u32,
    /// The easy side's walk over the ports: guess `i` is port
    /// `PORT_LOW + (offset + i * stride) mod PORT_COUNT`; a stride prime to `PORT_COUNT`
    /// (2^10 * 3^2 * 7) visits every port once.
    offset: u32,
    stride: u32,
    next: Instant,
    ends: Instant,
}

impl Search {
    fn owns(&self, local: Local) -> bool {
        self.first.is_some_and(|f| local.0 >= f.0 && u32::from(local.0) < u32::from(f.0) + u32::from(OPEN_SOCKETS))
    }

    fn locals(&self) -> Vec<Local> {
        self.first.map_or_else(Vec::new, |f| (0..OPEN_SOCKETS).map(|i| Local(f.0 + i)).collect())
    }
}

/// The node's extra sockets and its searches.
#[derive(Default)]
pub(super) struct Locals {
    kept: Vec<Kept>,
    search: Option<Search>,
    waiting: VecDeque<Plan>,
    next_check: Option<Instant>,
    /// The first id of the next search's sockets.
    next_id: u16,
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

    /// True while a search runs.
    pub(super) fn searching(&self) -> bool {
        self.search.is_some()
    }

    /// True if `local` is open (kept, or part of the running search).
    pub(super) fn is_open(&self, local: Local) -> bool {
        self.kept.iter().any(|k| k.local == local) || self.search.as_ref().is_some_and(|s| s.owns(local))
    }

    pub(super) fn stats(&self) -> TraversalStats {
        let searching = self.search.as_ref().and_then(|s| s.first).map_or(0, |_| usize::from(OPEN_SOCKETS));
        TraversalStats { open_sockets: self.kept.len() + searching, ..self.stats }
    }

    pub(super) fn deadline(&self) -> Option<Instant> {
        let search = self.search.as_ref().map(|s| s.next.min(s.ends));
        // A waiting search is due only once the running one ended.
        let waiting = if self.search.is_none() { self.waiting.iter().map(|p| p.not_before).min() } else { None };
        [search, waiting, self.next_check].into_iter().flatten().min()
    }

    /// A relayed tunnel that the DC asked to search (`traversal`) came up at `now`.
    pub(super) fn plan(&mut self, now: Instant, session: SessionId, traversal: Traversal, peer: SocketAddr) {
        let open = match traversal {
            Traversal::OpenPorts => true,
            Traversal::GuessPorts => false,
            _ => return,
        };
        if !peer.is_ipv4() || self.waiting.iter().any(|p| p.session == session) {
            return;
        }
        if self.waiting.len() >= WAITING_MAX {
            self.waiting.pop_front();
        }
        let lag = if open { Duration::ZERO } else { GUESS_LAG };
        self.waiting.push_back(Plan { session, open, peer, not_before: now + SEARCH_DELAY + lag });
    }

    /// Fresh ids for `n` consecutive extra sockets. They follow the last search's, so an
    /// id comes back only some 250 searches later (its socket long closed), and never one
    /// that is kept.
    fn allocate(&mut self, n: u16) -> Option<Local> {
        for _ in 0..2 {
            let start = self.next_id.max(1);
            let Some(end) = start.checked_add(n) else {
                self.next_id = 1;
                continue;
            };
            if let Some(k) = self.kept.iter().filter(|k| k.local.0 >= start && k.local.0 < end).map(|k| k.local.0).max()
            {
                self.next_id = k.saturating_add(1);
                continue;
            }
            self.next_id = end;
            return Some(Local(start));
        }
        None
    }

    /// Ends the running search; the sockets not kept are released.
    fn finish(&mut self, keep: Option<(Local, SocketAddr)>) -> Vec<Local> {
        let Some(s) = self.search.take() else { return Vec::new() };
        let mut released = s.locals();
        if let Some((local, peer)) = keep {
            released.retain(|l| *l != local);
            // A socket kept for this peer before (its NAT has moved on since) goes.
            released.extend(self.kept.iter().filter(|k| k.peer == peer).map(|k| k.local));
            self.kept.retain(|k| k.peer != peer);
            if self.kept.len() >= KEPT_MAX {
                released.push(self.kept.remove(0).local);
            }
            self.kept.push(Kept { peer, local });
        }
        released
    }
}

impl Node {
    /// Starts, continues and ends searches (called from `handle_timeout`).
    pub(super) fn drive_search(&mut self, now: Instant) {
        self.check_kept(now);
        if let Some(session) = self.locals.search.as_ref().filter(|s| now >= s.ends).map(|s| s.plan.session) {
            log::info!("tunnel {session}: no direct path found by guessing ports; staying on the relay");
            self.release(now, None);
            // The next search opens its sockets on the next call: a driver that sends
            // before it takes events would otherwise hold both searches' sockets at once.
            return;
        }
        if self.locals.search.is_none() {
            self.start_search(now);
        }
        let Some(s) = self.locals.search.as_ref() else { return };
        if now < s.next {
            return;
        }
        let (session, open, peer, probe_id, first) = (s.plan.session, s.plan.open, s.plan.peer, s.probe_id, s.first);
        // Still relayed? Route optimization or the other side may have found the path.
        let Some(id) = self.searching_tunnel(session) else {
            self.release(now, None);
            return;
        };
        let mut sends: Vec<(Via, SocketAddr, Vec<u8>)> = Vec::new();
        let msg = Message::PathProbe(PathProbe { probe_id });
        if let Some(mut t) = self.tunnels.get_mut(id) {
            if open {
                for l in (0..OPEN_SOCKETS).filter_map(|i| first.map(|f| Local(f.0 + i))) {
                    if let Some((dst, bytes)) = t.seal_mncn(now, peer, &msg) {
                        sends.push((Via::UdpFrom(l), dst, bytes));
                    }
                }
            } else {
                let batch = s.left.min(GUESS_BATCH);
                let done = GUESSES - s.left;
                for i in done..done + batch {
                    let port = guess_port(s.offset, s.stride, i);
                    if let Some((dst, bytes)) = t.seal_mncn(now, SocketAddr::new(peer.ip(), port), &msg) {
                        sends.push((Via::Udp, dst, bytes));
                    }
                }
            }
        }
        if let Some(s) = self.locals.search.as_mut() {
            let (used, every) = if open { (1, OPEN_EVERY) } else { (GUESS_BATCH, GUESS_EVERY) };
            s.left = s.left.saturating_sub(used);
            s.next = if s.left == 0 { s.ends } else { now + every };
        }
        self.locals.stats.probes += sends.len() as u64;
        for (via, dst, bytes) in sends {
            self.transmit(via, dst, bytes);
        }
    }

    /// The next waiting search that is due and still wanted.
    fn start_search(&mut self, now: Instant) {
        while let Some(plan) = self.locals.waiting.front().copied() {
            if now < plan.not_before {
                return;
            }
            self.locals.waiting.pop_front();
            if self.searching_tunnel(plan.session).is_none() {
                continue;
            }
            let first = if plan.open {
                match self.locals.allocate(OPEN_SOCKETS) {
                    Some(f) => Some(f),
                    None => continue,
                }
            } else {
                None
            };
            let probe_id = self.rng.next_u32();
            let left = if plan.open { OPEN_ROUNDS } else { GUESSES };
            let offset = self.rng.next_u32() % PORT_COUNT;
            let stride = stride_from(self.rng.next_u32());
            log::info!(
                "tunnel {}: searching for a direct path to {} ({})",
                plan.session,
                plan.peer,
                if plan.open { "opening 256 ports toward it" } else { "guessing its ports" }
            );
            self.locals.stats.searches += 1;
            self.locals.search =
                Some(Search { plan, probe_id, first, left, offset, stride, next: now, ends: now + SEARCH_TIME });
            return;
        }
    }

    /// The tunnel of `session` if it is up and still relayed.
    fn searching_tunnel(&self, session: SessionId) -> Option<TunnelId> {
        let id = self.tunnels.by_session(session)?;
        self.tunnels.get(id).filter(|t| t.is_relayed()).map(|_| id)
    }

    /// Something authenticated with `session`'s K_mncn came from `from` on `local`. True
    /// if that ends the running search: it came straight from the peer, on one of the
    /// hard side's sockets, or to the easy side from the peer's address but not the RS.
    pub(super) fn search_heard(&mut self, now: Instant, session: SessionId, local: Local, from: SocketAddr) -> bool {
        let Some(s) = self.locals.search.as_ref().filter(|s| s.plan.session == session) else { return false };
        let relay = self.tunnels.by_session(session).and_then(|id| self.tunnels.get(id)).and_then(|t| t.relay());
        if relay == Some(from) {
            return false;
        }
        // The hard side's tunnel socket has a mapping toward the peer too (route
        // optimization's probes made it): a guess may land there.
        let hit = if s.plan.open {
            s.owns(local) || (local == Local::MAIN && from == s.plan.peer)
        } else {
            local == Local::MAIN && from.ip() == s.plan.peer.ip()
        };
        if !hit {
            return false;
        }
        log::info!("tunnel {session}: direct path to {from} found by the search (socket {})", local.0);
        self.locals.stats.found += 1;
        let keep = (local != Local::MAIN).then_some((local, from));
        self.release(now, keep);
        true
    }

    /// The tunnel of `session` left its relay: a search for it ends, without a socket to
    /// keep (it goes on from the socket that found the path).
    pub(super) fn search_over(&mut self, now: Instant, session: SessionId) {
        self.locals.waiting.retain(|p| p.session != session);
        if self.locals.search.as_ref().is_some_and(|s| s.plan.session == session) {
            self.release(now, None);
        }
    }

    /// We moved (or our NAT rebound): every extra socket goes, the running search and
    /// the ones waiting end (the renegotiated tunnels ask for new ones).
    pub(super) fn release_locals(&mut self, now: Instant) {
        self.locals.waiting.clear();
        self.release(now, None);
        let kept: Vec<Local> = self.locals.kept.drain(..).map(|k| k.local).collect();
        self.locals.next_check = None;
        if !kept.is_empty() {
            log::info!("moved: closing {} socket(s) kept for direct paths", kept.len());
            self.emit(super::NodeEvent::LocalsReleased { locals: kept });
        }
    }

    /// Ends the running search, keeping `keep`'s socket.
    fn release(&mut self, now: Instant, keep: Option<(Local, SocketAddr)>) {
        let locals = self.locals.finish(keep);
        if !locals.is_empty() {
            self.emit(super::NodeEvent::LocalsReleased { locals });
        }
        if !self.locals.kept.is_empty() && self.locals.next_check.is_none() {
            self.locals.next_check = Some(now + KEPT_CHECK);
        }
    }

    /// Every [`KEPT_CHECK`]: a kept socket that no tunnel sends through any more (the
    /// tunnel ended, or its peer moved) is released.
    fn check_kept(&mut self, now: Instant) {
        if self.locals.next_check.is_none_or(|at| now < at) {
            return;
        }
        let tunnels = &self.tunnels;
        let mut released = Vec::new();
        self.locals.kept.retain(|k| {
            let used = tunnels.iter().any(|(_, t)| t.sends_to(k.peer));
            if !used {
                released.push(k.local);
            }
            used
        });
        self.locals.next_check = (!self.locals.kept.is_empty()).then_some(now + KEPT_CHECK);
        if !released.is_empty() {
            self.emit(super::NodeEvent::LocalsReleased { locals: released });
        }
    }
}

/// A stride prime to [`PORT_COUNT`] from a random number: odd, and neither a multiple of
/// 3 nor of 7.
fn stride_from(r: u32) -> u32 {
    let mut stride = (r % PORT_COUNT) | 1;
    while stride % 3 == 0 || stride % 7 == 0 {
        stride += 2;
    }
    stride
}

/// The port of guess `i` of the walk (`offset`, `stride`).
fn guess_port(offset: u32, stride: u32, i: u32) -> u16 {
    let walked = (u64::from(offset) + u64::from(i) * u64::from(stride)) % u64::from(PORT_COUNT);
    u16::try_from(u64::from(PORT_LOW) + walked).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_walk_of_guesses_never_repeats_a_port_and_stays_in_the_range_nats_give_out() {
        for (offset, r) in [(0, 0), (17, 3), (64_511, 63), (1000, 0xffff_ffff), (33_333, 21), (5, 64_511)] {
            let stride = stride_from(r);
            assert!(stride % 2 == 1 && stride % 3 != 0 && stride % 7 != 0, "stride {stride}");
            let mut seen = std::collections::HashSet::new();
            for i in 0..PORT_COUNT {
                let port = guess_port(offset, stride, i);
                assert!(port >= 1024, "port {port}");
                assert!(seen.insert(port), "offset {offset} stride {stride}: port {port} again at {i}");
            }
            assert_eq!(seen.len() as u32, PORT_COUNT);
        }
    }
}
