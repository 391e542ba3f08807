//! The path MTU to each place tunnel datagrams go (spec 5: the outer packet must fit the
//! path; an inner packet too big for it gets ICMP "too big").
//!
//! The kernel knows it: the MTU of the interface a datagram leaves by, or, once a router
//! on the way answered ICMP "fragmentation needed" (IPv4) or "packet too big" (IPv6), the
//! smaller path MTU it learned. Datagrams larger than that are cut into IP fragments, and
//! many networks drop fragments (firewalls, NATs, much of the IPv6 Internet): a tunnel
//! that assumes 1500 bytes then carries pings and small packets, but a TCP stream of
//! full-size segments stalls for good. So the agent asks the kernel (a route query over
//! rtnetlink, [`crate::netlink::Netlink::path_mtu`]) for each destination it sends to,
//! again every [`RECHECK`] while it sends there (a learned path MTU expires and the path
//! may widen), and at once when the tunnel socket reports an ICMP error about its own
//! datagrams (`IP_RECVERR`). An inner packet is then allowed what fits: inner TCP learns
//! the smaller size from the agent's ICMP answer and sends segments that need no
//! fragments.

use std::cell::RefCell;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The path MTU assumed before the kernel answered, and the most ever used: an interface
/// with jumbo frames says nothing of the Internet behind it.
pub const LINK_MTU: u16 = 1500;
/// How often a destination's path MTU is asked again while datagrams go there.
pub const RECHECK: Duration = Duration::from_secs(30);
/// Destinations remembered at most (one per tunnel's path, relays included); the one
/// checked longest ago makes room (and is asked again if still used). A short list: a
/// box has few peers, and a batch's look-ups hit the same one (see the data path).
const MAX_ENTRIES: usize = 64;
/// The smallest path MTU taken from the kernel or an ICMP error. Linux's own floor for
/// IPv4 is 552 (`min_pmtu`); IPv6 requires 1280 of every link.
const FLOOR_V4: u16 = 552;
const FLOOR_V6: u16 = 1280;
/// Inner packets never refused below these sizes: hosts do not go under them (IPv6's
/// minimum MTU; Linux's IPv4 floor), so a smaller limit would stall them for good.
/// Such a packet goes anyway, and the kernel fragments its datagram.
const INNER_FLOOR_V4: u16 = 552;
const INNER_FLOOR_V6: u16 = 1280;

/// The least time between two questions to the kernel prompted by ICMP errors about one
/// destination: anyone on the path can send those.
const ICMP_RECHECK: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug)]
struct Entry {
    mtu: u16,
    checked: Instant,
    /// When an ICMP error last made the agent ask.
    icmp_asked: Option<Instant>,
}

/// The known path MTUs, and the destinations to ask the kernel about after this batch.
#[derive(Debug)]
pub struct PathMtus {
    known: Vec<(IpAddr, Entry)>,
    /// Destinations seen with no answer yet, or with one older than [`RECHECK`]; filled
    /// while a batch is sealed (by shared reference), taken by [`PathMtus::take_wanted`].
    wanted: RefCell<Vec<IpAddr>>,
    /// Times the path MTU of a destination changed (status).
    pub changes: u64,
    /// The smallest path MTU known ([`LINK_MTU`] if none is smaller): a datagram no larger
    /// fits every path, without a look-up.
    smallest: u16,
}

impl Default for PathMtus {
    fn default() -> Self {
        PathMtus { known: Vec::new(), wanted: RefCell::new(Vec::new()), changes: 0, smallest: LINK_MTU }
    }
}

impl PathMtus {
    /// The path MTU known for `dst` ([`LINK_MTU`] if none), without noting anything.
    pub fn known(&self, dst: IpAddr) -> u16 {
        self.entry(dst).map_or(LINK_MTU, |e| e.mtu)
    }

    /// The smallest path MTU known.
    pub fn smallest(&self) -> u16 {
        self.smallest
    }

    /// The path MTU to `dst` as known now ([`LINK_MTU`] when not known yet). A
    /// destination not asked about yet, or not for [`RECHECK`], is noted for
    /// [`PathMtus::take_wanted`].
    pub fn get(&self, dst: IpAddr, now: Instant) -> u16 {
        let entry = self.entry(dst);
        if entry.is_none_or(|e| now.saturating_duration_since(e.checked) >= RECHECK) {
            let mut wanted = self.wanted.borrow_mut();
            if !wanted.contains(&dst) && wanted.len() < 8 {
                wanted.push(dst);
            }
        }
        entry.map_or(LINK_MTU, |e| e.mtu)
    }

    /// Forgets every path MTU (the box moved to another network).
    pub fn forget(&mut self) {
        self.known.clear();
        self.smallest = LINK_MTU;
    }

    /// The destinations to ask the kernel about.
    pub fn take_wanted(&mut self) -> Vec<IpAddr> {
        std::mem::take(self.wanted.get_mut())
    }

    /// The kernel's answer for `dst` (`None`: it did not say, so [`LINK_MTU`]), clamped
    /// to [`LINK_MTU`] and the family's floor. True if that changed the path MTU in use.
    pub fn set(&mut self, dst: IpAddr, mtu: Option<u32>, now: Instant) -> bool {
        let floor = if dst.is_ipv4() { FLOOR_V4 } else { FLOOR_V6 };
        let mtu = mtu.map_or(LINK_MTU, |m| u16::try_from(m).unwrap_or(u16::MAX).clamp(floor, LINK_MTU));
        let before = match self.known.iter_mut().find(|(a, _)| *a == dst) {
            Some((_, e)) => {
                e.checked = now;
                std::mem::replace(&mut e.mtu, mtu)
            }
            None => {
                if self.known.len() >= MAX_ENTRIES {
                    let oldest = self.known.iter().enumerate().min_by_key(|(_, (_, e))| e.checked).map(|(i, _)| i);
                    if let Some(i) = oldest {
                        self.known.swap_remove(i);
                    }
                }
                self.known.push((dst, Entry { mtu, checked: now, icmp_asked: None }));
                LINK_MTU
            }
        };
        self.smallest = self.known.iter().map(|(_, e)| e.mtu).min().unwrap_or(LINK_MTU);
        if before != mtu {
            self.changes += 1;
        }
        before != mtu
    }

    /// Whether an ICMP error about a datagram to `dst` is worth asking the kernel about
    /// now (it updated its path MTU before it reported the error): only for a destination
    /// the agent sends to (asked about before), and not if another one made the agent ask
    /// within [`ICMP_RECHECK`]. Anyone who knows the addresses can forge them: a flood
    /// costs at most one question a second per destination the agent uses, and errors
    /// about any other destination cost nothing. Notes the question.
    pub fn worth_asking(&mut self, dst: IpAddr, now: Instant) -> bool {
        let Some((_, e)) = self.known.iter_mut().find(|(a, _)| *a == dst) else { return false };
        if e.icmp_asked.is_some_and(|t| now.saturating_duration_since(t) < ICMP_RECHECK) {
            return false;
        }
        e.icmp_asked = Some(now);
        true
    }

    fn entry(&self, dst: IpAddr) -> Option<&Entry> {
        self.known.iter().find(|(a, _)| *a == dst).map(|(_, e)| e)
    }

    /// The destinations with a path MTU under [`LINK_MTU`], for status.
    pub fn reduced(&self) -> Vec<(IpAddr, u16)> {
        let mut v: Vec<(IpAddr, u16)> =
            self.known.iter().filter(|(_, e)| e.mtu < LINK_MTU).map(|(a, e)| (*a, e.mtu)).collect();
        v.sort();
        v
    }
}

/// Whether `inner` is IPv4 without Don't Fragment (a router on the way may cut it).
pub fn v4_without_df(inner: &[u8]) -> bool {
    inner.first().is_some_and(|b| b >> 4 == 4) && inner.get(6).is_some_and(|b| b & 0x40 == 0)
}

/// The largest inner packet that may go through a path of `path_mtu` bytes after
/// `overhead` bytes of tunnel are added: what fits, but never less than the inner
/// family's floor (see [`INNER_FLOOR_V6`]).
pub fn inner_limit(path_mtu: u16, overhead: u16, inner_v6: bool) -> u16 {
    let floor = if inner_v6 { INNER_FLOOR_V6 } else { INNER_FLOOR_V4 };
    path_mtu.saturating_sub(overhead).max(floor)
}

/// An IPv4 packet without Don't Fragment cut into fragments of at most `max` bytes (RFC
/// 791), as a router on the way must do when the tunnel is narrower than the packet:
/// IPv4 tunnel datagrams themselves are never fragmented (they carry Don't Fragment), so
/// the agent cuts the inner packet and the peer's host puts it together again. A packet
/// that is itself a fragment is cut further. `None` for a packet that may not or cannot
/// be cut this way: Don't Fragment set, IP options (which ones to copy differs per
/// option; such packets are rare), a length that does not match, or `max` under 28.
pub fn fragment_v4(pkt: &[u8], max: usize) -> Option<Vec<Vec<u8>>> {
    use ntm_csum::{fold, sum};
    let header = pkt.get(..20)?;
    let total = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let flags = u16::from_be_bytes([header[6], header[7]]);
    let (df, more, offset) = (flags & 0x4000 != 0, flags & 0x2000 != 0, usize::from(flags & 0x1fff));
    if header[0] != 0x45 || df || total != pkt.len() || max < 28 {
        return None;
    }
    let step = (max - 20) / 8 * 8;
    let payload = pkt.get(20..)?;
    let count = payload.len().div_ceil(step);
    let mut out = Vec::with_capacity(count);
    for (k, piece) in payload.chunks(step).enumerate() {
        let mut f = Vec::with_capacity(20 + piece.len());
        f.extend_from_slice(header);
        f.extend_from_slice(piece);
        let len = u16::try_from(f.len()).ok()?;
        let last = k + 1 == count;
        let off = u16::try_from(offset + k * step / 8).ok().filter(|o| *o <= 0x1fff)?;
        let flags = off | if last && !more { 0 } else { 0x2000 };
        f[2..4].copy_from_slice(&len.to_be_bytes());
        f[6..8].copy_from_slice(&flags.to_be_bytes());
        f[10..12].copy_from_slice(&[0, 0]);
        let c = !fold(sum(&f[..20], 0));
        f[10..12].copy_from_slice(&c.to_be_bytes());
        out.push(f);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 UDP packet of `len` bytes in all, its flags and fragment offset `flags`,
    /// with a correct header checksum; the payload counts up.
    fn v4(len: usize, flags: u16) -> Vec<u8> {
        use ntm_csum::{fold, sum};
        let mut p: Vec<u8> = (0..len).map(|i| i as u8).collect();
        p[..20].copy_from_slice(&[0x45, 0, 0, 0, 0x12, 0x34, 0, 0, 64, 17, 0, 0, 198, 18, 1, 2, 198, 18, 2, 2]);
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[6..8].copy_from_slice(&flags.to_be_bytes());
        let c = !fold(sum(&p[..20], 0));
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p
    }

    /// Puts fragments together again as a receiving host does (by offset), checking
    /// each fragment's header on the way; the payload and the last fragment's MF.
    fn reassemble(frags: &[Vec<u8>], max: usize) -> (Vec<u8>, bool) {
        use ntm_csum::{fold, sum};
        let mut payload = Vec::new();
        let mut last_more = false;
        for f in frags {
            assert!(f.len() <= max, "{} > {max}", f.len());
            assert_eq!(fold(sum(&f[..20], 0)), 0xffff, "header checksum");
            assert_eq!(usize::from(u16::from_be_bytes([f[2], f[3]])), f.len());
            assert_eq!(&f[4..6], &[0x12, 0x34], "the identification is kept");
            let flags = u16::from_be_bytes([f[6], f[7]]);
            let at = usize::from(flags & 0x1fff) * 8;
            if payload.len() < at + f.len() - 20 {
                payload.resize(at + f.len() - 20, 0);
            }
            payload[at..at + f.len() - 20].copy_from_slice(&f[20..]);
            last_more = flags & 0x2000 != 0;
        }
        (payload, last_more)
    }

    #[test]
    fn a_packet_without_dont_fragment_is_cut_where_it_fits() {
        for (len, max) in [(1420, 1340), (1420, 1400), (3000, 576), (1340, 1340), (29, 28)] {
            let p = v4(len, 0);
            let frags = fragment_v4(&p, max).unwrap();
            assert_eq!(frags.len(), (len - 20).div_ceil((max - 20) / 8 * 8), "{len} {max}");
            let (payload, more) = reassemble(&frags, max);
            assert_eq!(payload, p[20..].to_vec(), "{len} {max}");
            assert!(!more, "the last fragment ends the packet");
            for f in &frags[..frags.len() - 1] {
                assert_eq!((f.len() - 20) % 8, 0, "fragments but the last carry multiples of 8 bytes");
            }
        }
    }

    #[test]
    fn a_fragment_is_cut_further_keeping_its_place() {
        // The first fragment of something larger (MF set, offset 0), and a middle one.
        for offset in [0u16, 185] {
            let p = v4(1420, 0x2000 | offset);
            let frags = fragment_v4(&p, 1000).unwrap();
            let first = u16::from_be_bytes([frags[0][6], frags[0][7]]);
            assert_eq!(first & 0x1fff, offset);
            let (payload, more) = reassemble(&frags, 1000);
            assert_eq!(&payload[usize::from(offset) * 8..], &p[20..]);
            assert!(more, "more fragments still follow the original one");
        }
    }

    #[test]
    fn what_may_not_be_cut_is_not() {
        assert!(fragment_v4(&v4(1420, 0x4000), 1340).is_none(), "Don't Fragment");
        let mut opts = v4(1420, 0);
        opts[0] = 0x46;
        assert!(fragment_v4(&opts, 1340).is_none(), "options");
        assert!(fragment_v4(&v4(1420, 0)[..1000], 1340).is_none(), "a length that does not match");
        assert!(fragment_v4(&v4(1420, 0), 27).is_none(), "no room for 8 bytes");
        assert!(fragment_v4(&[0x60; 40], 1340).is_none(), "IPv6");
        assert!(fragment_v4(&[], 1340).is_none());
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_unknown_destination_is_assumed_1500_and_asked_about_once() {
        let mut m = PathMtus::default();
        let t = Instant::now();
        assert_eq!(m.get(ip("203.0.113.2"), t), LINK_MTU);
        assert_eq!(m.get(ip("203.0.113.2"), t), LINK_MTU);
        assert_eq!(m.take_wanted(), vec![ip("203.0.113.2")]);
        assert!(m.take_wanted().is_empty());
        assert!(m.set(ip("203.0.113.2"), Some(1400), t));
        assert_eq!(m.get(ip("203.0.113.2"), t + Duration::from_secs(1)), 1400);
        assert!(m.take_wanted().is_empty(), "answered just now");
        assert_eq!(m.get(ip("203.0.113.2"), t + RECHECK), 1400, "kept while asked again");
        assert_eq!(m.take_wanted(), vec![ip("203.0.113.2")]);
        assert!(!m.set(ip("203.0.113.2"), Some(1400), t + RECHECK), "no change");
        assert_eq!(m.changes, 1);
        assert_eq!(m.reduced(), vec![(ip("203.0.113.2"), 1400)]);
        assert_eq!((m.smallest(), m.known(ip("203.0.113.2")), m.known(ip("203.0.113.9"))), (1400, 1400, LINK_MTU));
        m.forget();
        assert_eq!(m.smallest(), LINK_MTU);
        assert_eq!(m.get(ip("203.0.113.2"), t + RECHECK), LINK_MTU, "asked again after a move");
        assert!(m.reduced().is_empty());
    }

    #[test]
    fn answers_are_clamped_to_1500_and_the_family_floor() {
        let mut m = PathMtus::default();
        let t = Instant::now();
        for (dst, said, used) in [
            ("203.0.113.2", Some(9000), 1500),
            ("203.0.113.3", Some(68), 552),
            ("203.0.113.4", None, 1500),
            ("2001:db8::2", Some(1000), 1280),
            ("2001:db8::3", Some(1492), 1492),
            ("2001:db8::4", Some(u32::MAX), 1500),
        ] {
            m.set(ip(dst), said, t);
            assert_eq!(m.get(ip(dst), t), used, "{dst} {said:?}");
        }
        assert_eq!(m.changes, 3, "68, 1000 and 1492 changed it; 9000, None and u32::MAX left 1500");
    }

    #[test]
    fn icmp_errors_make_the_agent_ask_at_most_once_a_second() {
        let mut m = PathMtus::default();
        let t = Instant::now();
        let dst = ip("203.0.113.2");
        assert!(!m.worth_asking(dst, t), "not a destination the agent sends to (yet)");
        m.set(dst, Some(1400), t);
        assert!(m.worth_asking(dst, t));
        assert!(!m.worth_asking(dst, t + Duration::from_millis(500)), "within a second of the last");
        m.set(dst, Some(1300), t + Duration::from_millis(600));
        assert!(!m.worth_asking(dst, t + Duration::from_millis(900)), "an answer does not reset it");
        assert!(m.worth_asking(dst, t + ICMP_RECHECK));
        m.set(ip("203.0.113.3"), None, t);
        assert!(m.worth_asking(ip("203.0.113.3"), t), "per destination");
        for i in 0..1000u32 {
            assert!(!m.worth_asking(IpAddr::from(std::net::Ipv4Addr::from(0xc612_0000 + i)), t), "made-up ones");
        }
        assert_eq!(m.known.len(), 2);
    }

    #[test]
    fn the_table_is_bounded() {
        let mut m = PathMtus::default();
        let t = Instant::now();
        for i in 0..(MAX_ENTRIES as u32 + 10) {
            m.set(
                IpAddr::from(std::net::Ipv4Addr::from(0xc612_0000 + i)),
                Some(1400),
                t + Duration::from_millis(i.into()),
            );
        }
        assert_eq!(m.known.len(), MAX_ENTRIES);
        assert!(m.entry(IpAddr::from(std::net::Ipv4Addr::from(0xc612_0000))).is_none(), "the oldest went");
        assert!(m.entry(IpAddr::from(std::net::Ipv4Addr::from(0xc612_0000 + MAX_ENTRIES as u32 + 9))).is_some());
    }

    #[test]
    fn inner_limits_keep_the_family_floor() {
        // IPv6 outer: 40 + 8 + header and tag (80 bytes in all with ntmobile's header).
        assert_eq!(inner_limit(1500, 80, false), 1420);
        assert_eq!(inner_limit(1400, 80, true), 1320);
        assert_eq!(inner_limit(1280, 80, true), 1280, "IPv6 inside never under 1280");
        assert_eq!(inner_limit(600, 60, false), 552, "IPv4 inside never under Linux's floor");
        assert_eq!(inner_limit(40, 80, false), 552);
    }
}
