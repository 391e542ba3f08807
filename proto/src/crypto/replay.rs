//! A sliding replay window over 64-bit counters (the scheme of RFC 6479).

use super::CryptoError;

const WORDS: usize = 16;
/// Size of the window: the newest accepted counter and the `WINDOW_BITS - 1` before it
/// are tracked; anything older is refused.
pub const WINDOW_BITS: u64 = (WORDS as u64) * 64;

/// Remembers which of the last [`WINDOW_BITS`] counters were accepted.
///
/// The bitmap is a ring indexed by `counter % WINDOW_BITS`; advancing the top clears the
/// slots of the counters skipped over. Checking and committing are separate so that a
/// counter is committed only after its tag verified.
#[derive(Clone, Debug)]
pub struct ReplayWindow {
    /// One more than the newest accepted counter; 0 while nothing was accepted.
    top: u64,
    bits: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    /// An empty window.
    pub const fn new() -> Self {
        ReplayWindow { top: 0, bits: [0; WORDS] }
    }

    /// A window that refuses every counter below `floor`, as if all had been seen: for a
    /// key restored from storage, whose earlier counters must stay unusable.
    pub const fn with_floor(floor: u64) -> Self {
        ReplayWindow { top: floor, bits: [u64::MAX; WORDS] }
    }

    /// One more than the newest accepted counter (0 if none): what to store to build a
    /// [`ReplayWindow::with_floor`] later.
    pub const fn top(&self) -> u64 {
        self.top
    }

    fn slot(counter: u64) -> (usize, u64) {
        let bit = counter % WINDOW_BITS;
        // `bit / 64 < WORDS` because `bit < WINDOW_BITS`.
        ((bit / 64) as usize, 1u64 << (bit % 64))
    }

    fn is_set(&self, counter: u64) -> bool {
        let (w, m) = Self::slot(counter);
        self.bits.get(w).is_some_and(|word| word & m != 0)
    }

    /// Would `counter` be accepted?
    pub fn check(&self, counter: u64) -> Result<(), CryptoError> {
        // No sender ever seals with u64::MAX (Channel refuses it), and accepting it would
        // leave the window unable to record it as the newest counter.
        if counter == u64::MAX {
            return Err(CryptoError::TooOld);
        }
        if counter >= self.top {
            return Ok(());
        }
        if self.top - counter > WINDOW_BITS {
            return Err(CryptoError::TooOld);
        }
        if self.is_set(counter) {
            return Err(CryptoError::Replayed);
        }
        Ok(())
    }

    /// Records `counter` as accepted. Call only after [`ReplayWindow::check`] passed and
    /// the message authenticated. Returns true if `counter` is the newest accepted so far
    /// (it moved the top), false for an older one accepted late (reordered or delayed).
    pub fn commit(&mut self, counter: u64) -> bool {
        let newest = counter >= self.top;
        if newest {
            let advance = counter - self.top + 1;
            if advance >= WINDOW_BITS {
                self.bits = [0; WORDS];
            } else {
                for c in self.top..=counter {
                    let (w, m) = Self::slot(c);
                    if let Some(word) = self.bits.get_mut(w) {
                        *word &= !m;
                    }
                }
            }
            // Saturating: counter u64::MAX is never sealed (Channel refuses it).
            self.top = counter.saturating_add(1);
        }
        let (w, m) = Self::slot(counter);
        if let Some(word) = self.bits.get_mut(w) {
            *word |= m;
        }
        newest
    }

    /// Checks and commits in one step (for callers that authenticated already); the
    /// result says whether `counter` was the newest, as [`ReplayWindow::commit`].
    pub fn accept(&mut self, counter: u64) -> Result<bool, CryptoError> {
        self.check(counter)?;
        Ok(self.commit(counter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_once_in_any_order_within_the_window() {
        let mut w = ReplayWindow::new();
        // Ok(true): the newest so far; Ok(false): accepted late, below the newest.
        assert_eq!(w.accept(5), Ok(true));
        assert_eq!(w.accept(5), Err(CryptoError::Replayed));
        assert_eq!(w.accept(3), Ok(false));
        assert_eq!(w.accept(0), Ok(false));
        assert_eq!(w.accept(3), Err(CryptoError::Replayed));
        assert_eq!(w.accept(6), Ok(true));
        assert_eq!(w.accept(5000), Ok(true));
        // The window holds the newest accepted counter and the WINDOW_BITS - 1 before it.
        assert_eq!(w.accept(5000 - (WINDOW_BITS - 1)), Ok(false));
        assert_eq!(w.accept(5000 - WINDOW_BITS), Err(CryptoError::TooOld));
        assert_eq!(w.accept(7), Err(CryptoError::TooOld));
        // A slot reused after wrapping around the ring is clear again.
        assert_eq!(w.accept(5000 + WINDOW_BITS - 1), Ok(true));
        assert_eq!(w.accept(5000 + 2 * WINDOW_BITS), Ok(true));
        assert_eq!(w.accept(u64::MAX), Err(CryptoError::TooOld));
        assert_eq!(w.accept(u64::MAX - 1), Ok(true));
        assert_eq!(w.accept(u64::MAX - 1), Err(CryptoError::Replayed));
    }

    #[test]
    fn a_floor_refuses_everything_below_it() {
        let mut w = ReplayWindow::with_floor(5000);
        assert_eq!(w.accept(4999), Err(CryptoError::Replayed));
        assert_eq!(w.accept(10), Err(CryptoError::TooOld));
        assert_eq!(w.accept(5000), Ok(true));
        assert_eq!(w.accept(5002), Ok(true));
        assert_eq!(w.accept(5001), Ok(false));
        assert_eq!(w.top(), 5003);
        assert_eq!(ReplayWindow::with_floor(0).accept(0), Ok(true));
    }

    proptest! {
        /// Against a model that remembers every counter: the window accepts exactly the
        /// counters not seen before and not older than the window.
        #[test]
        fn matches_a_model(counters in proptest::collection::vec(0u64..3000, 1..400)) {
            let mut w = ReplayWindow::new();
            let mut seen = std::collections::BTreeSet::new();
            for c in counters {
                let top = seen.iter().next_back().map_or(0, |m| m + 1);
                let expect_ok = !seen.contains(&c) && (c >= top || top - c <= WINDOW_BITS);
                let got = w.accept(c);
                prop_assert_eq!(got.is_ok(), expect_ok, "counter {}", c);
                if expect_ok { prop_assert_eq!(got, Ok(c >= top), "newest: counter {}", c); }
                if got.is_ok() { seen.insert(c); }
            }
        }
    }
}
