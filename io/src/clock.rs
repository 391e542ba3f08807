//! The engines' clock.

use ntm_proto::time::Instant;

/// The engine's clock: milliseconds from an origin, advanced by the monotonic clock so
/// that it never goes backwards while the daemon runs. The servers count from the UNIX
/// epoch ([`Clock::start`]: their engines stamp times that outlive the process); the agent
/// from its own start ([`Clock::from_zero`]).
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: std::time::Instant,
    start_ms: u64,
}

impl Clock {
    /// Starts the clock now, at the current UNIX time in milliseconds.
    pub fn start() -> Self {
        let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Clock { start: std::time::Instant::now(), start_ms: u64::try_from(unix.as_millis()).unwrap_or(u64::MAX) }
    }

    /// Starts the clock now, at zero.
    pub fn from_zero() -> Self {
        Clock { start: std::time::Instant::now(), start_ms: 0 }
    }

    /// Now, for the engine.
    pub fn now(&self) -> Instant {
        self.at(std::time::Instant::now())
    }

    /// A monotonic instant on the engine's clock (the origin if it is earlier than the
    /// clock's start).
    pub fn at(&self, t: std::time::Instant) -> Instant {
        let elapsed = u64::try_from(t.saturating_duration_since(self.start).as_millis()).unwrap_or(u64::MAX);
        Instant::from_millis(self.start_ms.saturating_add(elapsed))
    }

    /// How long from now until `at` (zero if past).
    pub fn until(&self, at: Instant) -> std::time::Duration {
        at.saturating_duration_since(self.now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_from_zero_counts_from_its_start_and_maps_later_instants() {
        let c = Clock::from_zero();
        let later = std::time::Instant::now() + std::time::Duration::from_millis(1500);
        let at = c.at(later);
        assert!(at >= Instant::from_millis(1500) && at < Instant::from_millis(1600), "{at:?}");
        assert!(c.now() < Instant::from_millis(1000));
        // An instant before the start is the origin, not a wrap.
        assert_eq!(Clock::from_zero().at(c.start), Instant::from_millis(0));
    }

    #[test]
    fn a_started_clock_reads_unix_time_and_waits_until_a_deadline() {
        let c = Clock::start();
        let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        let now = c.now();
        assert!(now.saturating_duration_since(Instant::from_millis(unix)) < std::time::Duration::from_secs(1));
        let deadline = now + std::time::Duration::from_secs(5);
        let wait = c.until(deadline);
        assert!(wait <= std::time::Duration::from_secs(5) && wait > std::time::Duration::from_secs(4));
        assert_eq!(c.until(Instant::from_millis(0)), std::time::Duration::ZERO);
    }
}
