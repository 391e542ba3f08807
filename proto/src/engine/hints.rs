//! The budget of unauthenticated hints ("unknown key", "unknown session"): answers a
//! server sends in the clear to a peer whose state it lost, so that the peer re-establishes
//! through an authenticated path. They go to whoever sent a datagram, so they are limited
//! twice each second: in total, which keeps them useless for reflection, and per source,
//! so that one source sending garbage under random key ids cannot use up the total and
//! starve the nodes the hints are for.

use crate::time::Instant;
use core::net::{IpAddr, SocketAddr};

/// Hints allowed per second, in total and per source address (an IPv6 source counts by
/// its /64, which one host usually holds whole).
#[derive(Debug)]
pub(crate) struct HintBudget {
    total_per_second: u32,
    per_source: u32,
    second: u64,
    total: u32,
    /// Sources given a hint this second: at most `total_per_second` of them.
    sources: Vec<(IpAddr, u32)>,
}

impl HintBudget {
    pub(crate) fn new(total_per_second: u32, per_source: u32) -> Self {
        HintBudget { total_per_second, per_source, second: 0, total: 0, sources: Vec::new() }
    }

    /// True if a hint may go to `to` now; counts it.
    pub(crate) fn allow(&mut self, now: Instant, to: &SocketAddr) -> bool {
        let second = now.as_millis() / 1000;
        if second != self.second {
            self.second = second;
            self.total = 0;
            self.sources.clear();
        }
        if self.total >= self.total_per_second {
            return false;
        }
        let source = match to.ip() {
            IpAddr::V6(a) => {
                let mut o = a.octets();
                o[8..].fill(0);
                IpAddr::from(o)
            }
            v4 => v4,
        };
        match self.sources.iter_mut().find(|(s, _)| *s == source) {
            Some((_, n)) if *n >= self.per_source => return false,
            Some((_, n)) => *n += 1,
            None => self.sources.push((source, 1)),
        }
        self.total += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_source_gets_its_share_and_the_rest_stays_for_others() {
        let mut b = HintBudget::new(50, 10);
        let t = Instant::from_millis(5_000);
        let flood = (0..5000).filter(|i| b.allow(t, &sa(&format!("203.0.113.9:{}", 1000 + i % 100)))).count();
        assert_eq!(flood, 10, "one source, whatever its ports");
        assert!(b.allow(t, &sa("198.51.100.2:4500")), "another source still gets one");
        // A /64 is one source; another /64 is another.
        let v6 = (0..20).filter(|i| b.allow(t, &sa(&format!("[2001:db8:1::{i:x}]:4500")))).count();
        assert_eq!(v6, 10);
        assert!(b.allow(t, &sa("[2001:db8:2::1]:4500")));
        // The total caps everything; the next second starts afresh.
        let many = (0..100).filter(|i| b.allow(t, &sa(&format!("192.0.2.{i}:4500")))).count();
        assert_eq!(many, 50 - 10 - 1 - 10 - 1);
        assert!(!b.allow(t, &sa("198.51.100.77:4500")));
        assert!(b.allow(Instant::from_millis(6_000), &sa("203.0.113.9:1000")));
    }
}
