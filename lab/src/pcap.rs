//! Reading tcpdump's captures: the UDP datagrams of a pcap file, for tests that replay or
//! inspect what crossed a link.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The UDP datagrams of a pcap file: (destination, payload). Reads the link types tcpdump
/// writes for one interface (Ethernet) and for `-i any` (Linux cooked, v1 and v2).
pub fn udp_datagrams(pcap: &[u8]) -> Vec<(SocketAddr, Vec<u8>)> {
    let u16_at = |b: &[u8], i: usize| b.get(i..i + 2).map(|x| u16::from_be_bytes([x[0], x[1]]));
    let Some(head) = pcap.get(..24) else { return Vec::new() };
    let le = head[..4] == [0xd4, 0xc3, 0xb2, 0xa1];
    let u32_at = |b: &[u8], i: usize| {
        b.get(i..i + 4).map(|x| {
            let a = [x[0], x[1], x[2], x[3]];
            if le {
                u32::from_le_bytes(a)
            } else {
                u32::from_be_bytes(a)
            }
        })
    };
    let (link, mut at, mut out) = (u32_at(head, 20).unwrap_or(0), 24, Vec::new());
    while let Some(caplen) = u32_at(pcap, at + 8) {
        let Some(frame) = pcap.get(at + 16..at + 16 + caplen as usize) else { break };
        at += 16 + caplen as usize;
        let (ethertype, ip_at) = match link {
            1 => (u16_at(frame, 12), 14),
            113 => (u16_at(frame, 14), 16),
            276 => (u16_at(frame, 0), 20),
            _ => return out,
        };
        let Some(ip) = frame.get(ip_at..) else { continue };
        let (dst, udp) = match (ethertype, ip.first().map(|b| b >> 4)) {
            (Some(0x0800), Some(4)) if ip.get(9) == Some(&17) => {
                let Some(d) = ip.get(16..20) else { continue };
                let ihl = usize::from(ip[0] & 0x0f) * 4;
                (IpAddr::V4(Ipv4Addr::new(d[0], d[1], d[2], d[3])), ip.get(ihl..))
            }
            (Some(0x86dd), Some(6)) if ip.get(6) == Some(&17) => {
                let Some(d) = ip.get(24..40).and_then(|d| <[u8; 16]>::try_from(d).ok()) else { continue };
                (IpAddr::V6(Ipv6Addr::from(d)), ip.get(40..))
            }
            _ => continue,
        };
        let Some(udp) = udp else { continue };
        let (Some(port), Some(len)) = (u16_at(udp, 2), u16_at(udp, 4)) else { continue };
        if let Some(payload) = udp.get(8..usize::from(len)) {
            out.push((SocketAddr::new(dst, port), payload.to_vec()));
        }
    }
    out
}
