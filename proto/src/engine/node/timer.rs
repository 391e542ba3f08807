//! The node's timer table: the next deadline of each tunnel, of the Direction Requests
//! and of each DNS-hook query, sorted by time, so the earliest is found without looking
//! at the others and the due ones without looking at those not due. Ties go in key
//! order, so a simulated run is the same every time.

use super::table::TunnelId;
use super::ResolveId;
use crate::time::Instant;

/// What a timer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Timer {
    /// A tunnel's next deadline (`Tunnel::deadline`).
    Tunnel(TunnelId),
    /// The first retransmission of any Direction Request in flight.
    Directions,
    /// A DNS-hook query's deadline.
    Resolve(ResolveId),
}

/// One deadline per key, in two Vecs: one sorted by time, one by key. They hold a few
/// dozen entries (a tunnel's deadline moves at most once per millisecond of traffic), so
/// binary search and a short memmove beat a tree, in time and in the agent's code size.
pub(super) struct Timers {
    by_time: Vec<(Instant, Timer)>,
    by_key: Vec<(Timer, Instant)>,
}

impl Timers {
    pub(super) fn new() -> Self {
        Timers { by_time: Vec::new(), by_key: Vec::new() }
    }

    /// Sets `key`'s deadline (`None`: it has none).
    pub(super) fn set(&mut self, key: Timer, at: Option<Instant>) {
        let old = match (self.by_key.binary_search_by_key(&key, |e| e.0), at) {
            (Ok(i), Some(at)) => self.by_key.get_mut(i).map(|e| core::mem::replace(&mut e.1, at)),
            (Ok(i), None) => Some(self.by_key.remove(i).1),
            (Err(i), Some(at)) => {
                self.by_key.insert(i, (key, at));
                None
            }
            (Err(_), None) => None,
        };
        if old == at {
            return;
        }
        if let Some(i) = old.and_then(|old| self.by_time.binary_search(&(old, key)).ok()) {
            self.by_time.remove(i);
        }
        if let Some(at) = at {
            if let Err(i) = self.by_time.binary_search(&(at, key)) {
                self.by_time.insert(i, (at, key));
            }
        }
    }

    /// The earliest deadline.
    pub(super) fn first(&self) -> Option<Instant> {
        self.by_time.first().map(|e| e.0)
    }

    /// True if a key for which `which` holds is due at `now`.
    pub(super) fn any_due(&self, now: Instant, which: impl Fn(&Timer) -> bool) -> bool {
        self.by_time.iter().take_while(|(at, _)| *at <= now).any(|(_, k)| which(k))
    }

    /// The tunnels whose deadline is at or before `now`, in creation order.
    pub(super) fn due_tunnels(&self, now: Instant) -> Vec<TunnelId> {
        let mut due: Vec<TunnelId> = Vec::new();
        for (_, k) in self.by_time.iter().take_while(|(at, _)| *at <= now) {
            if let Timer::Tunnel(id) = k {
                // A handful at a time: keep them sorted as they come.
                due.insert(due.partition_point(|d| d < id), *id);
            }
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn r(n: u64) -> Timer {
        Timer::Resolve(ResolveId(n))
    }

    #[test]
    fn the_first_deadline_follows_every_change_and_due_keys_are_found() {
        let mut t = Timers::new();
        t.set(r(3), Some(at(30)));
        t.set(r(1), Some(at(50)));
        t.set(Timer::Directions, Some(at(10)));
        assert_eq!(t.first(), Some(at(10)));
        t.set(Timer::Directions, Some(at(40)));
        assert_eq!(t.first(), Some(at(30)));
        assert!(t.any_due(at(45), |k| *k == r(3)) && t.any_due(at(45), |k| *k == Timer::Directions));
        assert!(!t.any_due(at(45), |k| *k == r(1)));
        assert!(t.due_tunnels(at(100)).is_empty());
        t.set(r(3), None);
        t.set(Timer::Directions, None);
        assert_eq!(t.first(), Some(at(50)));
        assert!(!t.any_due(at(49), |_| true));
        t.set(r(1), None);
        assert_eq!(t.first(), None);
    }
}
