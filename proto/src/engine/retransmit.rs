//! Retransmission with exponential backoff: every request an engine sends is repeated
//! until its response or acknowledgement arrives, or the attempts run out.
//!
//! Each attempt is sealed anew (a fresh counter), so a duplicate that arrives after its
//! original is not a replay: receivers treat requests idempotently by request id and
//! answer duplicates again.

use crate::time::{Duration, Instant};

/// A retransmission policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Wait before the first retransmission.
    pub initial: Duration,
    /// Longest wait between attempts.
    pub max: Duration,
    /// Attempts in all, the first included; then the request fails.
    pub attempts: u32,
}

impl Backoff {
    /// 0.5 s, doubling to 8 s, 9 attempts: about 45 s before giving up. Under 10% loss a
    /// request/response pair is lost with p = 0.19, so nine attempts fail with
    /// p < 4e-7.
    pub const DEFAULT: Backoff =
        Backoff { initial: Duration::from_millis(500), max: Duration::from_secs(8), attempts: 9 };
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::DEFAULT
    }
}

/// The retransmission state of one outstanding request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    policy: Backoff,
    sent: u32,
    wait: Duration,
    next: Instant,
}

impl Retry {
    /// A request first sent at `now`.
    pub fn new(now: Instant, policy: Backoff) -> Self {
        Retry { policy, sent: 1, wait: policy.initial, next: now + policy.initial }
    }

    /// When to send again.
    pub fn deadline(&self) -> Instant {
        self.next
    }

    /// True if the deadline passed.
    pub fn due(&self, now: Instant) -> bool {
        now >= self.next
    }

    /// Attempts made so far.
    pub fn attempts(&self) -> u32 {
        self.sent
    }

    /// Records another attempt at `now`. Returns false when the attempts are used up and
    /// the request has failed.
    pub fn again(&mut self, now: Instant) -> bool {
        if self.sent >= self.policy.attempts {
            return false;
        }
        self.sent += 1;
        self.wait = (self.wait * 2).min(self.policy.max);
        self.next = now + self.wait;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_then_gives_up() {
        let p = Backoff { initial: Duration::from_secs(1), max: Duration::from_secs(3), attempts: 4 };
        let mut r = Retry::new(Instant::ZERO, p);
        assert_eq!(r.deadline(), Instant::from_millis(1000));
        assert!(!r.due(Instant::from_millis(999)));
        assert!(r.again(Instant::from_millis(1000)));
        assert_eq!(r.deadline(), Instant::from_millis(3000));
        assert!(r.again(Instant::from_millis(3000)));
        assert_eq!(r.deadline(), Instant::from_millis(6000));
        assert!(r.again(Instant::from_millis(6000)));
        assert_eq!(r.attempts(), 4);
        assert!(!r.again(Instant::from_millis(9000)));
    }
}
