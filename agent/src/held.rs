//! Tunnel datagrams the kernel refused for want of a route, kept for a moment.
//!
//! During a move the old address goes before the new one and its default route arrive,
//! and a sealed packet sent in that gap is refused (`ENETUNREACH` and friends). For a
//! quiet TCP flow that one lost segment costs a retransmission timeout, 200 ms or more.
//! The agent keeps such datagrams, sealed as they are, and sends them as soon as a
//! netlink event says the network changed, or at the latest every [`RETRY`], until they
//! are [`MAX_AGE`] old. The peer's replay window makes sure nothing is delivered twice.

use nix::errno::Errno;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Most datagrams held; the oldest goes first when more are refused.
pub const MAX: usize = 32;
/// A held datagram older than this is dropped: the application has retransmitted it.
pub const MAX_AGE: Duration = Duration::from_millis(300);
/// How often the held datagrams are tried again while no netlink event comes.
pub const RETRY: Duration = Duration::from_millis(5);

/// Whether a send error means there is no route or source address now (held), rather
/// than a problem with the datagram (dropped).
pub fn is_no_route(e: Errno) -> bool {
    matches!(e, Errno::ENETUNREACH | Errno::EHOSTUNREACH | Errno::EADDRNOTAVAIL | Errno::ENETDOWN)
}

/// What became of held datagrams.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeldStats {
    /// Refused for want of a route and held.
    pub held: u64,
    /// Sent later.
    pub sent: u64,
    /// Dropped: too old, pushed out by newer ones, or refused for another reason later.
    pub dropped: u64,
}

#[derive(Default)]
pub struct Held {
    queue: VecDeque<(Instant, SocketAddr, Vec<u8>)>,
    last_try: Option<Instant>,
    stats: HeldStats,
}

impl Held {
    /// Keeps a copy of a datagram the kernel refused with `e`, if that error means no
    /// route; true if it was kept.
    pub fn hold(&mut self, now: Instant, to: SocketAddr, datagram: &[u8], e: Errno) -> bool {
        if !is_no_route(e) {
            return false;
        }
        if self.queue.is_empty() {
            self.last_try = Some(now);
        }
        if self.queue.len() >= MAX {
            self.queue.pop_front();
            self.stats.dropped += 1;
        }
        self.queue.push_back((now, to, datagram.to_vec()));
        self.stats.held += 1;
        true
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// When to try again, if anything is held.
    pub fn deadline(&self) -> Option<Instant> {
        if self.queue.is_empty() {
            return None;
        }
        self.last_try.map(|t| t + RETRY)
    }

    /// Sends what is held, oldest first, with `send`. It stops at the first datagram
    /// still refused for want of a route (the route is not back yet) and keeps that one
    /// and the rest; expired ones and ones refused for another reason are dropped. Returns
    /// how many went out.
    pub fn retry(&mut self, now: Instant, mut send: impl FnMut(SocketAddr, &[u8]) -> Result<(), Errno>) -> u64 {
        self.last_try = Some(now);
        let before = self.stats.sent;
        while let Some((at, to, bytes)) = self.queue.front() {
            if now.saturating_duration_since(*at) > MAX_AGE {
                self.queue.pop_front();
                self.stats.dropped += 1;
                continue;
            }
            match send(*to, bytes) {
                Ok(()) => self.stats.sent += 1,
                // No route yet, or no room in the socket buffer: try again next round.
                Err(e) if is_no_route(e) || e == Errno::EAGAIN => break,
                Err(_) => self.stats.dropped += 1,
            }
            self.queue.pop_front();
        }
        self.stats.sent - before
    }

    pub fn stats(&self) -> HeldStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to() -> SocketAddr {
        "192.0.2.1:4500".parse().unwrap()
    }

    #[test]
    fn only_a_missing_route_holds_a_datagram() {
        let mut h = Held::default();
        let now = Instant::now();
        assert!(!h.hold(now, to(), b"x", Errno::EMSGSIZE));
        assert!(!h.hold(now, to(), b"x", Errno::EAGAIN));
        assert!(h.is_empty() && h.deadline().is_none());
        assert!(h.hold(now, to(), b"x", Errno::ENETUNREACH));
        assert_eq!(h.deadline(), Some(now + RETRY));
    }

    #[test]
    fn held_datagrams_go_in_order_once_the_route_is_back() {
        let mut h = Held::default();
        let t0 = Instant::now();
        for k in 0u8..3 {
            h.hold(t0, to(), &[k], Errno::ENETUNREACH);
        }
        let mut out = Vec::new();
        // Still no route: the first is refused again, nothing is lost.
        h.retry(t0 + RETRY, |_, _| Err(Errno::ENETUNREACH));
        assert_eq!(h.stats(), HeldStats { held: 3, sent: 0, dropped: 0 });
        h.retry(t0 + 2 * RETRY, |_, b| {
            out.push(b.to_vec());
            Ok(())
        });
        assert_eq!(out, [vec![0], vec![1], vec![2]]);
        assert!(h.is_empty() && h.deadline().is_none());
        assert_eq!(h.stats(), HeldStats { held: 3, sent: 3, dropped: 0 });
    }

    #[test]
    fn old_and_surplus_datagrams_are_dropped_and_counted() {
        let mut h = Held::default();
        let t0 = Instant::now();
        h.hold(t0, to(), b"old", Errno::EHOSTUNREACH);
        let t1 = t0 + MAX_AGE;
        for k in 0..MAX {
            h.hold(t1, to(), &[k as u8], Errno::ENETUNREACH);
        }
        // The queue was full: the oldest made room.
        assert_eq!(h.stats().dropped, 1);
        let mut out = Vec::new();
        h.retry(t1 + Duration::from_millis(1), |_, b| {
            out.push(b.to_vec());
            Ok(())
        });
        assert_eq!(out.len(), MAX);
        assert_eq!(out.first(), Some(&vec![0u8]));
        // Past the age limit nothing goes.
        h.hold(t1, to(), b"late", Errno::ENETUNREACH);
        h.retry(t1 + MAX_AGE + Duration::from_millis(1), |_, _| panic!("an expired datagram was sent"));
        assert_eq!(h.stats().dropped, 2);
        assert!(h.is_empty());
    }
}
