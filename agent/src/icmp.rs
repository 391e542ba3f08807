//! ICMP errors the agent writes back into the TUN device (spec section 5: "oversize inner
//! packets get the proper ICMP 'too big' answer"): Fragmentation Needed (ICMPv4 type 3
//! code 4, RFC 1191) and Packet Too Big (ICMPv6 type 2, RFC 4443), addressed from the
//! packet's destination (the peer's virtual address) back to its source, quoting as much
//! of the packet as the rules allow. Also Destination Unreachable for packets to a virtual
//! address no tunnel serves.

use crate::offload::pseudo;
use ntm_csum::{fold, sum};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The Internet checksum (RFC 1071) of `data`, starting from the unfolded sum `initial`
/// (`ntm_csum`'s ones' complement sum, which the data path uses too).
fn checksum(initial: u64, data: &[u8]) -> u16 {
    !fold(sum(data, initial))
}

fn v4_header(src: Ipv4Addr, dst: Ipv4Addr, payload_len: usize) -> Option<[u8; 20]> {
    let total = u16::try_from(20 + payload_len).ok()?;
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[8] = 64; // TTL
    h[9] = 1; // ICMP
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let c = checksum(0, &h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    Some(h)
}

fn icmp4(pkt: &[u8], kind: u8, code: u8, rest: [u8; 4]) -> Option<Vec<u8>> {
    if pkt.len() < 20 || pkt[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    // Never answer an ICMP error with one (RFC 1122 3.2.2).
    if pkt[9] == 1 && pkt.get(ihl).is_some_and(|t| matches!(t, 3 | 4 | 5 | 11 | 12)) {
        return None;
    }
    let src = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
    let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
    // The original header and the first 8 bytes of its payload (RFC 792).
    let quote = &pkt[..pkt.len().min(ihl + 8)];
    let mut icmp = vec![kind, code, 0, 0];
    icmp.extend_from_slice(&rest);
    icmp.extend_from_slice(quote);
    let c = checksum(0, &icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut out = v4_header(dst, src, icmp.len())?.to_vec();
    out.extend(icmp);
    Some(out)
}

fn icmp6(pkt: &[u8], kind: u8, code: u8, rest: [u8; 4]) -> Option<Vec<u8>> {
    if pkt.len() < 40 || pkt[0] >> 4 != 6 {
        return None;
    }
    // Never answer an ICMPv6 error (types below 128) with one (RFC 4443 2.4 e).
    if pkt[6] == 58 && pkt.get(40).is_some_and(|t| *t < 128) {
        return None;
    }
    let mut s = [0u8; 16];
    s.copy_from_slice(&pkt[8..24]);
    let mut d = [0u8; 16];
    d.copy_from_slice(&pkt[24..40]);
    let (src, dst) = (Ipv6Addr::from(s), Ipv6Addr::from(d));
    // As much of the packet as fits in the minimum MTU (RFC 4443 2.4 c).
    let quote = &pkt[..pkt.len().min(1280 - 40 - 8)];
    let mut icmp = vec![kind, code, 0, 0];
    icmp.extend_from_slice(&rest);
    icmp.extend_from_slice(quote);
    // The answer's pseudo-header has the packet's two addresses, swapped.
    let c = checksum(pseudo(pkt, true, 58, icmp.len()), &icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut out = vec![0x60, 0, 0, 0];
    out.extend_from_slice(&u16::try_from(icmp.len()).ok()?.to_be_bytes());
    out.extend_from_slice(&[58, 64]);
    out.extend_from_slice(&dst.octets());
    out.extend_from_slice(&src.octets());
    out.extend(icmp);
    Some(out)
}

/// The "too big" answer to `pkt` for a path that carries at most `mtu` bytes of inner
/// packet, or None if none is due (IPv4 without Don't Fragment is fragmented by the
/// kernel instead; errors are never answered).
pub fn too_big(pkt: &[u8], mtu: u16) -> Option<Vec<u8>> {
    match pkt.first()? >> 4 {
        4 => {
            if crate::pmtu::v4_without_df(pkt) {
                return None;
            }
            let m = mtu.to_be_bytes();
            icmp4(pkt, 3, 4, [0, 0, m[0], m[1]])
        }
        6 => icmp6(pkt, 2, 0, u32::from(mtu).to_be_bytes()),
        _ => None,
    }
}

/// True if a packet to `dst` may be answered with an ICMP error: not one to a multicast,
/// broadcast, unspecified or link-local address (RFC 1812 section 4.3.2.7, RFC 4443
/// section 2.4 (e)). The kernel sends such packets on the TUN link by itself (IPv6 router
/// solicitations to ff02::2); they are nobody's tunnel traffic.
pub fn answerable(dst: IpAddr) -> bool {
    match dst {
        IpAddr::V4(a) => !(a.is_multicast() || a.is_broadcast() || a.is_unspecified() || a.is_link_local()),
        IpAddr::V6(a) => {
            let link_local = a.segments()[0] & 0xffc0 == 0xfe80;
            !(a.is_multicast() || a.is_unspecified() || link_local)
        }
    }
}

/// "Destination unreachable" for a packet no tunnel carries (host unreachable for IPv4,
/// address unreachable for IPv6).
pub fn unreachable(pkt: &[u8]) -> Option<Vec<u8>> {
    match pkt.first()? >> 4 {
        4 => icmp4(pkt, 3, 1, [0; 4]),
        6 => icmp6(pkt, 1, 3, [0; 4]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A known answer, so that the checks below (which verify with the same function) would
    /// notice a wrong sum: the IPv4 header 192.168.0.1 -> 192.168.0.199 of the usual
    /// textbook example has the checksum 0xb861; an odd length pads with a zero byte.
    #[test]
    fn checksum_matches_a_known_header() {
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8,
            0x00, 0xc7,
        ];
        assert_eq!(checksum(0, &h), 0xb861);
        h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(checksum(0, &h), 0);
        assert_eq!(checksum(0, &[0x12, 0x34, 0x56]), !(0x1234u16 + 0x5600));
    }

    fn v4_packet(len: usize, df: bool) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[6] = if df { 0x40 } else { 0 };
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&[198, 18, 1, 2]);
        p[16..20].copy_from_slice(&[198, 18, 2, 2]);
        let c = checksum(0, &p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p
    }

    #[test]
    fn no_error_answers_multicast_broadcast_or_link_local_destinations() {
        for a in ["ff02::2", "ff05::1:3", "fe80::1", "::", "224.0.0.251", "255.255.255.255", "169.254.1.1", "0.0.0.0"] {
            assert!(!answerable(a.parse().unwrap()), "{a}");
        }
        for a in ["198.18.2.2", "2001:db8:ffb::2", "192.0.2.1", "fd00::1"] {
            assert!(answerable(a.parse().unwrap()), "{a}");
        }
    }

    #[test]
    fn ipv4_fragmentation_needed() {
        let pkt = v4_packet(1500, true);
        let icmp = too_big(&pkt, 1400).unwrap();
        assert_eq!(checksum(0, &icmp[..20]), 0, "IP header checksum");
        assert_eq!(&icmp[12..16], &[198, 18, 2, 2], "from the packet's destination");
        assert_eq!(&icmp[16..20], &[198, 18, 1, 2], "to its source");
        assert_eq!((icmp[20], icmp[21]), (3, 4));
        assert_eq!(u16::from_be_bytes([icmp[26], icmp[27]]), 1400);
        assert_eq!(checksum(0, &icmp[20..]), 0, "ICMP checksum");
        assert_eq!(icmp.len(), 20 + 8 + 28, "quotes the header and 8 bytes");
        assert!(too_big(&v4_packet(1500, false), 1400).is_none(), "no DF: fragmented instead");
        // Never an error about an error.
        assert!(too_big(&icmp, 100).is_none() && unreachable(&icmp).is_none());
    }

    #[test]
    fn ipv6_packet_too_big() {
        let mut pkt = vec![0u8; 1500];
        pkt[0] = 0x60;
        pkt[4..6].copy_from_slice(&1460u16.to_be_bytes());
        pkt[6] = 17;
        pkt[7] = 64;
        pkt[8..24].copy_from_slice(&"2001:db8:ffa::2".parse::<Ipv6Addr>().unwrap().octets());
        pkt[24..40].copy_from_slice(&"2001:db8:ffb::2".parse::<Ipv6Addr>().unwrap().octets());
        let icmp = too_big(&pkt, 1280).unwrap();
        assert_eq!(icmp.len(), 1280, "fills the minimum MTU and no more");
        assert_eq!(icmp[6], 58);
        assert_eq!(&icmp[8..24], &pkt[24..40]);
        assert_eq!((icmp[40], icmp[41]), (2, 0));
        assert_eq!(u32::from_be_bytes([icmp[44], icmp[45], icmp[46], icmp[47]]), 1280);
        // Verify the checksum over the pseudo-header.
        let pseudo = sum(&icmp[8..40], (icmp.len() - 40) as u64 + 58);
        assert_eq!(checksum(pseudo, &icmp[40..]), 0);
        assert!(too_big(&icmp, 1280).is_none());
        assert!(unreachable(&pkt).is_some());
    }

    #[test]
    fn garbage_gets_no_answer() {
        for p in [vec![], vec![0x45], vec![0x60; 10], vec![0x90; 60]] {
            assert!(too_big(&p, 1280).is_none() && unreachable(&p).is_none());
        }
    }
}
