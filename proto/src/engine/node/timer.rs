//! A timer table: the next deadline of each of a set of keys, sorted by time, so the
//! earliest is found without looking at the others and the due ones without looking at
//! those not due. Ties go in key order, so a simulated run is the same every time.

use crate::time::Instant;
use std::collections::{BTreeMap, BTreeSet};

/// One deadline per key.
pub(super) struct Timers<K> {
    by_time: BTreeSet<(Instant, K)>,
    by_key: BTreeMap<K, Instant>,
}

impl<K: Ord + Copy> Timers<K> {
    pub(super) fn new() -> Self {
        Timers { by_time: BTreeSet::new(), by_key: BTreeMap::new() }
    }

    /// Sets `key`'s deadline (`None`: it has none).
    pub(super) fn set(&mut self, key: K, at: Option<Instant>) {
        let old = match at {
            Some(at) => self.by_key.insert(key, at),
            None => self.by_key.remove(&key),
        };
        if old == at {
            return;
        }
        if let Some(old) = old {
            self.by_time.remove(&(old, key));
        }
        if let Some(at) = at {
            self.by_time.insert((at, key));
        }
    }

    /// The earliest deadline.
    pub(super) fn first(&self) -> Option<Instant> {
        self.by_time.first().map(|(at, _)| *at)
    }

    /// True if a key for which `which` holds is due at `now`.
    pub(super) fn any_due(&self, now: Instant, which: impl Fn(&K) -> bool) -> bool {
        self.by_time.iter().take_while(|(at, _)| *at <= now).any(|(_, k)| which(k))
    }

    /// The keys whose deadline is at or before `now`, in key order.
    pub(super) fn due(&self, now: Instant) -> Vec<K> {
        let mut due: Vec<K> = self.by_time.iter().take_while(|(at, _)| *at <= now).map(|(_, k)| *k).collect();
        due.sort_unstable();
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    #[test]
    fn the_first_deadline_follows_every_change_and_due_keys_come_in_key_order() {
        let mut t = Timers::new();
        t.set(3u32, Some(at(30)));
        t.set(1, Some(at(50)));
        t.set(2, Some(at(10)));
        assert_eq!(t.first(), Some(at(10)));
        t.set(2, Some(at(40)));
        assert_eq!(t.first(), Some(at(30)));
        assert_eq!(t.due(at(45)), [2, 3]);
        assert!(t.any_due(at(45), |k| *k == 3) && !t.any_due(at(45), |k| *k == 1));
        t.set(3, None);
        t.set(2, None);
        assert_eq!(t.first(), Some(at(50)));
        assert_eq!(t.due(at(49)), Vec::<u32>::new());
        t.set(1, None);
        assert_eq!(t.first(), None);
    }
}
