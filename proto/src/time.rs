//! Time as the engines see it.
//!
//! Engines never read a clock (docs/protocol.md, "Engines"). The driver hands in `now` as an
//! [`Instant`]: milliseconds since an epoch of the driver's choosing. The agent uses a
//! monotonic boot clock, the servers use UNIX time so that expiries they persist stay
//! meaningful across restarts, and the simulator starts at zero. Lifetimes travel on the
//! wire as relative seconds, so two engines never need to agree on the epoch.

use core::ops::{Add, Sub};
pub use core::time::Duration;

/// A point in time, in milliseconds since the driver's epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    /// The driver's epoch itself.
    pub const ZERO: Instant = Instant(0);
    /// A time later than any the engines will meet; used for "no deadline".
    pub const FAR_FUTURE: Instant = Instant(u64::MAX);

    /// Builds an instant from milliseconds since the driver's epoch.
    pub const fn from_millis(ms: u64) -> Self {
        Instant(ms)
    }

    /// Milliseconds since the driver's epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Time elapsed from `earlier` to `self`, or zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    /// Saturates at [`Instant::FAR_FUTURE`] instead of overflowing.
    fn add(self, d: Duration) -> Instant {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Instant(self.0.saturating_add(ms))
    }
}

impl Sub<Duration> for Instant {
    type Output = Instant;
    /// Saturates at [`Instant::ZERO`].
    fn sub(self, d: Duration) -> Instant {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Instant(self.0.saturating_sub(ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(Instant::FAR_FUTURE + Duration::from_secs(1), Instant::FAR_FUTURE);
        assert_eq!(Instant::ZERO - Duration::from_secs(1), Instant::ZERO);
        let t = Instant::from_millis(1500);
        assert_eq!((t + Duration::from_millis(500)).as_millis(), 2000);
        assert_eq!(t.saturating_duration_since(Instant::from_millis(2000)), Duration::ZERO);
        assert_eq!(t.saturating_duration_since(Instant::from_millis(500)), Duration::from_secs(1));
    }
}
