//! The last sealed data packets, kept for a moment so that a handover loses none.
//!
//! When the peer moves, everything we sent to its old address between its move and the
//! first packet from its new one is lost. For a bulk transfer TCP repairs that at once
//! (later segments bring selective acknowledgements), but a quiet, interactive flow loses
//! its only segment in flight and waits for the retransmission timer: 200 ms or more.
//! So the node keeps copies of its last few sealed data packets and, when a peer turns up
//! at a new address, sends the recent ones that went to the old address once more. A copy
//! that had arrived after all is refused by the peer's replay window (counted as stale);
//! nothing is delivered twice.
//!
//! The copies are ciphertext sealed under K_mncn; no key and no plaintext is kept.

use crate::time::{Duration, Instant};
use crate::wire::SessionId;
use core::net::SocketAddr;

/// How many sealed packets are kept, for all tunnels together.
pub(super) const SLOTS: usize = 32;
/// At most this many bytes go again for one move, the newest packets first: a burst of
/// old full-size packets must not hold up new traffic on a slow uplink.
pub(super) const BYTES_MAX: usize = 16 * 1024;
/// How old a packet may be and still be sent again. It covers the peer noticing its own
/// move and reaching us from the new address; anything older has been retransmitted by
/// the application's own transport by now.
pub(super) const WINDOW: Duration = Duration::from_millis(300);

struct Sent {
    at: Instant,
    /// None once the session ended.
    session: Option<SessionId>,
    to: SocketAddr,
    bytes: Vec<u8>,
}

/// A ring of the last [`SLOTS`] sealed data packets.
#[derive(Default)]
pub(super) struct Recent {
    slots: Vec<Sent>,
    /// The slot the next packet overwrites, once all are in use.
    next: usize,
}

impl Recent {
    /// Keeps a copy of a sealed packet sent to `to` for `session`. A slot's buffer is
    /// reused, so the ring stops allocating once every slot has held a full-size packet.
    pub(super) fn record(&mut self, at: Instant, session: SessionId, to: SocketAddr, sealed: &[u8]) {
        if self.slots.len() < SLOTS {
            self.slots.push(Sent { at, session: Some(session), to, bytes: sealed.to_vec() });
            return;
        }
        if let Some(s) = self.slots.get_mut(self.next) {
            s.at = at;
            s.session = Some(session);
            s.to = to;
            s.bytes.clear();
            s.bytes.extend_from_slice(sealed);
        }
        self.next = (self.next + 1) % SLOTS;
    }

    /// Copies of the packets of `session` sent to `old` within [`WINDOW`] of `now`, the
    /// newest up to [`BYTES_MAX`] in all, oldest first. Each is then marked as sent to
    /// `new`, so that it goes out again only if the peer moves once more.
    pub(super) fn redirect(
        &mut self,
        now: Instant,
        session: SessionId,
        old: SocketAddr,
        new: SocketAddr,
    ) -> Vec<Vec<u8>> {
        let len = self.slots.len();
        // Send order: the ring starts at `next` (which stays 0 until the ring is full).
        let matching: Vec<usize> = (0..len)
            .map(|k| (self.next + k) % len)
            .filter(|&i| {
                self.slots.get(i).is_some_and(|s| {
                    s.session == Some(session) && s.to == old && now.saturating_duration_since(s.at) <= WINDOW
                })
            })
            .collect();
        let mut budget = BYTES_MAX;
        let newest = matching
            .iter()
            .rev()
            .take_while(|&&i| {
                let len = self.slots.get(i).map_or(0, |s| s.bytes.len());
                budget = budget.saturating_sub(len);
                len > 0 && budget > 0
            })
            .count();
        let chosen = matching.get(matching.len() - newest..).unwrap_or_default();
        let mut out = Vec::with_capacity(chosen.len());
        for &i in chosen {
            if let Some(s) = self.slots.get_mut(i) {
                out.push(s.bytes.clone());
                s.to = new;
            }
        }
        out
    }

    /// Forgets the packets of a session that ended.
    pub(super) fn forget(&mut self, session: SessionId) {
        for s in self.slots.iter_mut().filter(|s| s.session == Some(session)) {
            s.session = None;
            s.bytes.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn resent(r: &mut Recent, now: u64, session: u32, old: &str, new: &str) -> Vec<Vec<u8>> {
        r.redirect(Instant::from_millis(now), SessionId(session), addr(old), addr(new))
    }

    #[test]
    fn only_recent_packets_of_the_session_to_the_old_address_go_again_in_order() {
        let mut r = Recent::default();
        let (old, other, new) = ("192.0.2.1:4500", "192.0.2.9:4500", "198.51.100.7:4500");
        r.record(Instant::from_millis(100), SessionId(1), addr(old), b"too old");
        r.record(Instant::from_millis(500), SessionId(1), addr(old), b"first");
        r.record(Instant::from_millis(510), SessionId(2), addr(old), b"other session");
        r.record(Instant::from_millis(520), SessionId(1), addr(other), b"other address");
        r.record(Instant::from_millis(530), SessionId(1), addr(old), b"second");
        let got = resent(&mut r, 700, 1, old, new);
        assert_eq!(got, [b"first".to_vec(), b"second".to_vec()]);
        // They now count as sent to the new address: not again for the same move...
        assert!(resent(&mut r, 710, 1, old, new).is_empty());
        // ...but again if the peer moves on before the window ends.
        assert_eq!(resent(&mut r, 720, 1, new, old).len(), 2);
    }

    #[test]
    fn the_ring_keeps_the_newest_and_resends_them_in_send_order_across_the_wrap() {
        let mut r = Recent::default();
        let (old, new) = ("[2001:db8::1]:4500", "[2001:db8::2]:4500");
        let total = SLOTS + 5;
        for k in 0..total {
            // Two packets per millisecond: the order within one comes from the ring.
            let at = Instant::from_millis(1000 + k as u64 / 2);
            r.record(at, SessionId(3), addr(old), &(k as u32).to_be_bytes());
        }
        let got = resent(&mut r, 1100, 3, old, new);
        let want: Vec<Vec<u8>> = (total - SLOTS..total).map(|k| (k as u32).to_be_bytes().to_vec()).collect();
        assert_eq!(got, want);
        assert_eq!(r.slots.len(), SLOTS);
    }

    #[test]
    fn large_packets_go_again_only_up_to_the_byte_limit_newest_first() {
        let mut r = Recent::default();
        let (old, new) = ("192.0.2.1:4500", "192.0.2.2:4500");
        for k in 0u8..20 {
            r.record(Instant::from_millis(100 + u64::from(k)), SessionId(6), addr(old), &[k; 1400]);
        }
        let got = resent(&mut r, 150, 6, old, new);
        let fit = BYTES_MAX / 1400;
        assert!(fit < 20 && got.len() <= fit && got.len() + 1 >= fit, "{} of 20", got.len());
        let firsts: Vec<u8> = got.iter().map(|p| p[0]).collect();
        let want: Vec<u8> = (20 - got.len() as u8..20).collect();
        assert_eq!(firsts, want, "the newest, in send order");
    }

    #[test]
    fn a_forgotten_session_has_nothing_to_resend() {
        let mut r = Recent::default();
        let (old, new) = ("192.0.2.1:4500", "192.0.2.2:4500");
        r.record(Instant::from_millis(10), SessionId(4), addr(old), b"x");
        r.record(Instant::from_millis(10), SessionId(5), addr(old), b"y");
        r.forget(SessionId(4));
        assert!(resent(&mut r, 20, 4, old, new).is_empty());
        assert_eq!(resent(&mut r, 20, 5, old, new), [b"y".to_vec()]);
    }
}
