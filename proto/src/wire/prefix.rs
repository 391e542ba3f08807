//! An IP prefix on the wire: the subnet routes a box announces for its LAN (`lan.announce`)
//! and the DC passes on to its peers.
//!
//! ```text
//! prefix  family u8 (4|6) | length u8 | address (4 or 16), host bits clear
//! ```
//!
//! A prefix with host bits set, or a length over its family's width, is refused, so each
//! prefix has one encoding and two equal prefixes compare equal.

use super::{Codec, Reader, WireError, Writer};
use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Most prefixes a node announces.
pub const ANNOUNCED_MAX: usize = 8;

/// An IPv4 or IPv6 prefix with its host bits clear.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

fn mask_bits(addr: IpAddr) -> (u128, u8) {
    match addr {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    }
}

/// The top `len` bits of a `width`-bit number as a mask.
fn mask(len: u8, width: u8) -> u128 {
    if len == 0 {
        0
    } else {
        // len <= width <= 128, so the shift is below 128.
        (u128::MAX << (128 - u32::from(len))) >> (128 - u32::from(width))
    }
}

/// The netmask of an IPv4 prefix of length `len` (a length over 32 counts as 32).
pub fn v4_mask(len: u8) -> u32 {
    // The top `len` bits of a 32-bit number: below 2^32, so the cast keeps them all.
    mask(len.min(32), 32) as u32
}

impl Prefix {
    /// The prefix of length `len` that holds `addr` (its host bits cleared, as for an
    /// interface address); `None` if `len` is over the family's width.
    pub fn holding(addr: IpAddr, len: u8) -> Option<Prefix> {
        let (bits, width) = mask_bits(addr);
        let net = bits & mask(len.min(width), width);
        let addr = match addr {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(net as u32)),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(net)),
        };
        Prefix::new(addr, len)
    }

    /// `addr/len`; `None` if `len` is over the family's width or host bits are set.
    pub fn new(addr: IpAddr, len: u8) -> Option<Prefix> {
        let (bits, width) = mask_bits(addr);
        (len <= width && bits & !mask(len, width) == 0).then_some(Prefix { addr, len })
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// `ip` lies inside the prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (net, width) = mask_bits(self.addr);
        let (bits, w) = mask_bits(ip);
        w == width && bits & mask(self.len, width) == net
    }

    /// The two prefixes share an address (one holds the other).
    pub fn overlaps(&self, other: &Prefix) -> bool {
        if self.len <= other.len {
            self.contains(other.addr)
        } else {
            other.contains(self.addr)
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Codec for Prefix {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let family = r.u8()?;
        let len = r.u8()?;
        let addr = match family {
            4 => IpAddr::V4(Ipv4Addr::decode(r)?),
            6 => IpAddr::V6(Ipv6Addr::decode(r)?),
            _ => return Err(WireError::BadValue("address family")),
        };
        Prefix::new(addr, len).ok_or(WireError::BadValue("prefix"))
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        match self.addr {
            IpAddr::V4(a) => {
                w.u8(4)?;
                w.u8(self.len)?;
                a.encode(w)
            }
            IpAddr::V6(a) => {
                w.u8(6)?;
                w.u8(self.len)?;
                a.encode(w)
            }
        }
    }
    fn encoded_len(&self) -> usize {
        2 + if self.addr.is_ipv4() { 4 } else { 16 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        let (a, l) = s.split_once('/').unwrap();
        Prefix::new(a.parse().unwrap(), l.parse().unwrap()).unwrap()
    }

    #[test]
    fn host_bits_and_lengths_are_checked() {
        assert!(Prefix::new("192.168.2.1".parse().unwrap(), 24).is_none());
        assert!(Prefix::new("192.168.2.0".parse().unwrap(), 33).is_none());
        assert!(Prefix::new("2001:db8::".parse().unwrap(), 129).is_none());
        assert!(Prefix::new("0.0.0.0".parse().unwrap(), 0).is_some());
        assert!(Prefix::new("10.0.0.1".parse().unwrap(), 32).is_some());
    }

    #[test]
    fn the_prefix_holding_an_address_and_the_v4_mask() {
        assert_eq!(Prefix::holding("192.168.2.77".parse().unwrap(), 24), Some(p("192.168.2.0/24")));
        assert_eq!(Prefix::holding("2001:db8:1::9".parse().unwrap(), 48), Some(p("2001:db8:1::/48")));
        assert_eq!(Prefix::holding("10.1.2.3".parse().unwrap(), 0), Some(p("0.0.0.0/0")));
        assert_eq!(Prefix::holding("10.1.2.3".parse().unwrap(), 33), None);
        assert_eq!((v4_mask(0), v4_mask(24), v4_mask(32), v4_mask(40)), (0, 0xffff_ff00, u32::MAX, u32::MAX));
    }

    #[test]
    fn containment_and_overlap() {
        let lan = p("192.168.2.0/24");
        assert!(lan.contains("192.168.2.77".parse().unwrap()));
        assert!(!lan.contains("192.168.3.1".parse().unwrap()));
        assert!(!lan.contains("::ffff:192.168.2.1".parse().unwrap()));
        assert!(lan.overlaps(&p("192.168.0.0/16")) && p("192.168.0.0/16").overlaps(&lan));
        assert!(!lan.overlaps(&p("192.168.3.0/24")));
        assert!(p("2001:db8:1::/48").overlaps(&p("2001:db8:1:2::/64")));
        assert!(!p("2001:db8:1::/48").overlaps(&p("2001:db8:2::/48")));
        assert!(p("0.0.0.0/0").contains("203.0.113.1".parse().unwrap()));
    }

    #[test]
    fn round_trip_and_every_truncation_fails() {
        for s in ["192.168.2.0/24", "2001:db8:1::/48", "0.0.0.0/0"] {
            let v = p(s);
            let mut buf = vec![0u8; v.encoded_len()];
            v.encode(&mut Writer::new(&mut buf)).unwrap();
            assert_eq!(Prefix::decode(&mut Reader::new(&buf)).unwrap(), v);
            for n in 0..buf.len() {
                assert!(Prefix::decode(&mut Reader::new(&buf[..n])).is_err(), "{s}: {n}");
            }
        }
        // Host bits set on the wire: refused.
        let bad = [4, 24, 192, 168, 2, 1];
        assert_eq!(Prefix::decode(&mut Reader::new(&bad)), Err(WireError::BadValue("prefix")));
        assert!(Prefix::decode(&mut Reader::new(&[5, 0, 0, 0, 0, 0])).is_err());
    }
}
