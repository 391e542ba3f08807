//! TUN offloads: the packet work behind `tun.offload` (the device opened with
//! `IFF_VNET_HDR`, TSO and checksum offload turned on with `TUNSETOFFLOAD`).
//!
//! Every read from the device then starts with a virtio-net header ([`VnetHdr`]) and every
//! write must carry one. A read may be a TCP (or, with USO, UDP) super-packet of up to
//! 64 KiB: one IP and transport header followed by the payload of many segments of
//! `gso_size` bytes each, its checksum left for someone else to complete
//! ([`F_NEEDS_CSUM`]). [`plan`] looks at such a read, and [`Split::segment`] writes its
//! segments one by one, each a packet as the kernel would have sent it without TSO (its
//! own lengths, IPv4 ID, TCP sequence number, flags and checksums). On the way in,
//! [`TcpSeg::parse`] and [`TcpSeg::follows`] find consecutive full-sized segments of one
//! TCP flow and [`coalesced_header`] writes the header of the super-packet they make
//! (GRO), which the kernel takes whole, so its stack does its per-packet work once per
//! run.
//!
//! Byte order: the IP and transport fields are big-endian; the virtio-net header is
//! little-endian. The kernel's default for it is the host's order, so [`enable`] asks for
//! little-endian first (TUNSETVNETLE, a no-op on little-endian hosts); where that is
//! refused (an emulator such as qemu-user running a big-endian agent on a little-endian
//! kernel may not pass it on) no offload is turned on and nothing is coalesced, so every
//! header stays zero and its order does not matter.
//! Nothing here allocates or panics on bad input: a read that cannot be split is refused
//! with [`Bad`] and the caller counts and drops it.

use ntm_csum::{fold, sum};
use std::io;
use std::os::fd::AsRawFd;

/// Bytes of the virtio-net header at the start of every read and write.
pub const VNET_HDR_LEN: usize = 10;
/// `flags`: the checksum from `csum_start` to the end is to be completed and stored at
/// `csum_start + csum_offset`.
pub const F_NEEDS_CSUM: u8 = 1;
/// `gso_type` values (linux/virtio_net.h).
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_UDP_L4: u8 = 5;
/// A flag on `gso_type`: the segments carry ECN (CWR only on the first, as TSO does).
const GSO_ECN: u8 = 0x80;

/// TUNSETOFFLOAD flags (linux/if_tun.h).
const TUN_F_CSUM: u32 = 0x01;
const TUN_F_TSO4: u32 = 0x02;
const TUN_F_TSO6: u32 = 0x04;
/// Either TSO flag: the kernel takes TCP super-packets (and so coalesced ones are written).
pub const TUN_F_TSO: u32 = TUN_F_TSO4 | TUN_F_TSO6;
const TUN_F_USO4: u32 = 0x20;
const TUN_F_USO6: u32 = 0x40;

/// The largest super-packet written (an IP total length's limit).
pub const SUPER_MAX: usize = 65_535;
/// Room for one read: the header and the largest super-packet the kernel hands over.
pub const READ_MAX: usize = VNET_HDR_LEN + 65_536;

const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_CWR: u8 = 0x80;
/// Offsets in the TCP header.
const TCP_SEQ: usize = 4;
const TCP_FLAGS: usize = 13;
const TCP_CSUM: usize = 16;
const UDP_CSUM: usize = 6;

/// The virtio-net header (struct virtio_net_hdr, without `num_buffers`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    /// The header at the start of `buf`; None if `buf` is shorter.
    pub fn parse(buf: &[u8]) -> Option<Self> {
        let b = buf.get(..VNET_HDR_LEN)?;
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    pub fn emit(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        for (at, v) in [(2, self.hdr_len), (4, self.gso_size), (6, self.csum_start), (8, self.csum_offset)] {
            b[at..at + 2].copy_from_slice(&v.to_le_bytes());
        }
        b
    }
}

/// Why a read was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    /// Shorter than its headers, or a header pointing outside the packet.
    Truncated,
    /// A segmentation type or IP packet this module does not split.
    Unsupported,
}

/// What to do with one read (the packet after its virtio-net header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// One packet, ready to go as it is (its checksum completed if it was left open).
    One,
    /// A super-packet to cut into [`Split::count`] segments.
    Split(Split),
}

/// How a super-packet is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    v6: bool,
    tcp: bool,
    /// Length of the IP header, and of the IP and transport headers.
    l4: usize,
    hdrs: usize,
    mss: usize,
    payload: usize,
    /// Segments.
    pub count: usize,
}

/// Looks at `pkt`, read after the header `h`: completes a checksum left open on a single
/// packet (in place) or describes the cut of a super-packet.
pub fn plan(h: &VnetHdr, pkt: &mut [u8]) -> Result<Plan, Bad> {
    let gso = h.gso_type & !GSO_ECN;
    if gso == GSO_NONE {
        if h.flags & F_NEEDS_CSUM != 0 {
            complete_checksum(pkt, usize::from(h.csum_start), usize::from(h.csum_offset))?;
        }
        return Ok(Plan::One);
    }
    let (v6, l4, proto) = ip_header(pkt).ok_or(Bad::Truncated)?;
    let tcp = match (gso, v6, proto) {
        (GSO_TCPV4, false, PROTO_TCP) | (GSO_TCPV6, true, PROTO_TCP) => true,
        (GSO_UDP_L4, _, PROTO_UDP) => false,
        _ => return Err(Bad::Unsupported),
    };
    let l4_len = if tcp { usize::from(pkt.get(l4 + 12).ok_or(Bad::Truncated)? >> 4) * 4 } else { 8 };
    let hdrs = l4 + l4_len;
    if (tcp && l4_len < 20) || hdrs > pkt.len() {
        return Err(Bad::Truncated);
    }
    let mss = usize::from(h.gso_size);
    let payload = pkt.len() - hdrs;
    if mss == 0 {
        return Err(Bad::Unsupported);
    }
    if payload <= mss {
        // One segment's worth: a packet that needs only its checksum.
        let at = if tcp { TCP_CSUM } else { UDP_CSUM };
        write_l4_checksum(pkt, v6, l4, at, tcp);
        return Ok(Plan::One);
    }
    Ok(Plan::Split(Split { v6, tcp, l4, hdrs, mss, payload, count: payload.div_ceil(mss) }))
}

impl Split {
    /// Writes segment `k` of the super-packet `pkt` into `out`; its length, or None if
    /// `k` is past the last or `out` is too short.
    pub fn segment(&self, pkt: &[u8], k: usize, out: &mut [u8]) -> Option<usize> {
        let from = k.checked_mul(self.mss)?;
        let len = self.payload.checked_sub(from).filter(|&l| l > 0)?.min(self.mss);
        let total = self.hdrs + len;
        let body = pkt.get(self.hdrs + from..self.hdrs + from + len)?;
        let out = out.get_mut(..total)?;
        out[..self.hdrs].copy_from_slice(pkt.get(..self.hdrs)?);
        out[self.hdrs..].copy_from_slice(body);
        let l4 = self.l4;
        if self.v6 {
            put16(out, 4, u16::try_from(total - 40).ok()?);
        } else {
            put16(out, 2, u16::try_from(total).ok()?);
            // Each segment its own IPv4 ID, counting up from the super-packet's, as TSO does.
            put16(out, 4, get16(out, 4).wrapping_add(k as u16));
            put16(out, 10, 0);
            let c = !fold(sum(&out[..l4], 0));
            put16(out, 10, c);
        }
        if self.tcp {
            let seq = get32(out, l4 + TCP_SEQ).wrapping_add(from as u32);
            out[l4 + TCP_SEQ..l4 + TCP_SEQ + 4].copy_from_slice(&seq.to_be_bytes());
            if k + 1 < self.count {
                out[l4 + TCP_FLAGS] &= !(TCP_FIN | TCP_PSH);
            }
            if k > 0 {
                out[l4 + TCP_FLAGS] &= !TCP_CWR;
            }
            write_l4_checksum(out, self.v6, l4, TCP_CSUM, true);
        } else {
            put16(out, l4 + 4, u16::try_from(total - l4).ok()?);
            write_l4_checksum(out, self.v6, l4, UDP_CSUM, false);
        }
        Some(total)
    }
}

/// IPv4 or IPv6, the transport header's offset and protocol of `pkt` (no IPv6 extension
/// headers: a packet with them is not split).
fn ip_header(pkt: &[u8]) -> Option<(bool, usize, u8)> {
    match pkt.first()? >> 4 {
        4 => {
            let ihl = usize::from(pkt.first()? & 0x0f) * 4;
            (ihl >= 20 && pkt.len() >= ihl).then_some((false, ihl, *pkt.get(9)?))
        }
        6 => (pkt.len() >= 40).then_some((true, 40, *pkt.get(6)?)),
        _ => None,
    }
}

/// Completes the checksum the kernel left open: the ones' complement sum from `start` to
/// the end (the field holds the pseudo-header's sum), stored at `start + offset`.
fn complete_checksum(pkt: &mut [u8], start: usize, offset: usize) -> Result<(), Bad> {
    let at = start.checked_add(offset).filter(|&a| a + 2 <= pkt.len() && start < pkt.len()).ok_or(Bad::Truncated)?;
    let c = !fold(sum(&pkt[start..], 0));
    // 0 and 0xffff are the same number; UDP reserves 0 for "no checksum".
    put16(pkt, at, if c == 0 { 0xffff } else { c });
    Ok(())
}

/// Computes the TCP or UDP checksum of the packet `pkt` whose transport header starts at
/// `l4` (the checksum field at `l4 + at`) and stores it. The caller checked the lengths.
fn write_l4_checksum(pkt: &mut [u8], v6: bool, l4: usize, at: usize, tcp: bool) {
    put16(pkt, l4 + at, 0);
    let proto = if tcp { PROTO_TCP } else { PROTO_UDP };
    let s = sum(&pkt[l4..], pseudo(pkt, v6, proto, pkt.len() - l4));
    let c = !fold(s);
    put16(pkt, l4 + at, if c == 0 && !tcp { 0xffff } else { c });
}

/// The unfolded sum of the pseudo-header of `pkt` for `proto` and `len` bytes of it.
/// The addresses' order does not change it, so it also serves an answer to `pkt`.
pub fn pseudo(pkt: &[u8], v6: bool, proto: u8, len: usize) -> u64 {
    let addrs = if v6 { pkt.get(8..40) } else { pkt.get(12..20) };
    sum(addrs.unwrap_or_default(), u64::from(proto) + len as u64)
}

fn get16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn get32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// A TCP segment that may be coalesced with its neighbours: IPv4 without options or
/// fragmentation, or IPv6 without extension headers; ACK and maybe PSH, nothing else;
/// some payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSeg {
    v6: bool,
    l4: usize,
    /// IP and TCP headers.
    pub hdrs: usize,
    pub payload: usize,
    seq: u32,
    psh: bool,
}

impl TcpSeg {
    /// Whether the segment has PSH (it ends a run).
    pub fn psh(&self) -> bool {
        self.psh
    }

    pub fn parse(pkt: &[u8]) -> Option<TcpSeg> {
        let (v6, l4, proto) = ip_header(pkt)?;
        let ip_len = if v6 { 40 + usize::from(get16(pkt, 4)) } else { usize::from(get16(pkt, 2)) };
        // IPv4: no options, not a fragment (MF clear, offset 0).
        if proto != PROTO_TCP || ip_len != pkt.len() || (!v6 && (l4 != 20 || get16(pkt, 6) & 0x3fff != 0)) {
            return None;
        }
        let hdrs = l4 + usize::from(pkt.get(l4 + 12)? >> 4) * 4;
        let flags = *pkt.get(l4 + TCP_FLAGS)?;
        if hdrs < l4 + 20 || hdrs >= pkt.len() || flags & !TCP_PSH != TCP_ACK {
            return None;
        }
        Some(TcpSeg {
            v6,
            l4,
            hdrs,
            payload: pkt.len() - hdrs,
            seq: get32(pkt, l4 + TCP_SEQ),
            psh: flags & TCP_PSH != 0,
        })
    }

    /// Whether `next` (parsed as `n`) continues the run that began with `first` (parsed
    /// as `self`) and so far ends with `last`, carrying `payload` bytes: the same flow and
    /// headers (but PSH), its sequence number next, every segment before it full-sized
    /// and without PSH, and the whole within [`SUPER_MAX`].
    pub fn follows(&self, first: &[u8], last: &TcpSeg, payload: usize, next: &[u8], n: &TcpSeg) -> bool {
        if n.v6 != self.v6 || n.hdrs != self.hdrs || last.psh || last.payload != self.payload {
            return false;
        }
        if n.payload > self.payload || self.hdrs + payload + n.payload > SUPER_MAX {
            return false;
        }
        if n.seq != last.seq.wrapping_add(last.payload as u32) {
            return false;
        }
        let (Some(a), Some(b)) = (first.get(..self.hdrs), next.get(..self.hdrs)) else { return false };
        let l4 = self.l4;
        // IP: version, traffic class (TOS), flow label; TTL or hop limit, protocol,
        // addresses; IPv4's DF.
        let ip_same = if self.v6 {
            a[..4] == b[..4] && a[6..40] == b[6..40]
        } else {
            a[..2] == b[..2] && a[8..10] == b[8..10] && a[12..20] == b[12..20] && (a[6] ^ b[6]) & 0x40 == 0
        };
        // TCP: ports, ACK number, header length, flags but PSH, window, urgent pointer,
        // options.
        let tcp_same = a[l4..l4 + 4] == b[l4..l4 + 4]
            && a[l4 + 8..l4 + 13] == b[l4 + 8..l4 + 13]
            && (a[l4 + 13] ^ b[l4 + 13]) & !TCP_PSH == 0
            && a[l4 + 14..l4 + 16] == b[l4 + 14..l4 + 16]
            && a[l4 + 18..] == b[l4 + 18..];
        ip_same && tcp_same
    }
}

/// Writes into `out` the virtio-net header and the IP and TCP headers of the super-packet
/// made of `first` (parsed as `f`) and the segments after it, `payload` bytes in all, the
/// last with PSH if `psh`: lengths and the IPv4 checksum for the whole, the TCP checksum
/// field holding the pseudo-header's sum for the kernel to complete (as a device's GRO
/// leaves it). Returns the bytes written; None if `out` is too short.
pub fn coalesced_header(first: &[u8], f: &TcpSeg, payload: usize, psh: bool, out: &mut [u8]) -> Option<usize> {
    let n = VNET_HDR_LEN + f.hdrs;
    let out = out.get_mut(..n)?;
    let total = f.hdrs + payload;
    let h = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: if f.v6 { GSO_TCPV6 } else { GSO_TCPV4 },
        hdr_len: f.hdrs as u16,
        gso_size: u16::try_from(f.payload).ok()?,
        csum_start: f.l4 as u16,
        csum_offset: TCP_CSUM as u16,
    };
    out[..VNET_HDR_LEN].copy_from_slice(&h.emit());
    let p = &mut out[VNET_HDR_LEN..];
    p.copy_from_slice(first.get(..f.hdrs)?);
    if f.v6 {
        put16(p, 4, u16::try_from(total - 40).ok()?);
    } else {
        put16(p, 2, u16::try_from(total).ok()?);
        put16(p, 10, 0);
        let c = !fold(sum(&p[..f.l4], 0));
        put16(p, 10, c);
    }
    if psh {
        p[f.l4 + TCP_FLAGS] |= TCP_PSH;
    }
    let partial = fold(pseudo(p, f.v6, PROTO_TCP, total - f.l4));
    put16(p, f.l4 + TCP_CSUM, partial);
    Some(n)
}

/// Turns on the offloads of the TUN device `dev` (opened with `IFF_VNET_HDR`): checksums,
/// TSO for IPv4 and IPv6, and UDP segmentation where the kernel has it (Linux 6.2). A
/// kernel that refuses a set gets the next smaller one; the set it took (0 if none).
/// Nothing is turned on unless the header can be little-endian (see the module's
/// documentation).
pub fn enable(dev: &tun::Device) -> u32 {
    let fd = dev.as_raw_fd();
    if let Err(e) = sys::set_vnet_le(fd) {
        log::info!("TUNSETVNETLE: {e}: no TUN offloads");
        return 0;
    }
    let base = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
    for flags in [base | TUN_F_USO4 | TUN_F_USO6, base, TUN_F_CSUM, 0] {
        match sys::set_offload(fd, flags) {
            Ok(()) => return flags,
            Err(e) => log::debug!("TUNSETOFFLOAD {flags:#x}: {e}"),
        }
    }
    0
}

/// Reads one packet (with its header) from the TUN device `dev` into `buf`.
pub fn read(dev: &tun::Device, buf: &mut [u8]) -> io::Result<usize> {
    Ok(nix::unistd::read(sys::borrow(dev), buf)?)
}

/// Writes the pieces `iov` to the TUN device `dev` as one packet (the first piece its
/// virtio-net header).
pub fn write(dev: &tun::Device, iov: &[io::IoSlice<'_>]) -> io::Result<usize> {
    Ok(nix::sys::uio::writev(sys::borrow(dev), iov)?)
}

/// The calls the safe wrappers lack.
#[allow(unsafe_code)]
mod sys {
    use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

    // TUNSETOFFLOAD = _IOW('T', 208, unsigned int): the flags by value.
    nix::ioctl_write_int!(tun_set_offload, b'T', 208);

    pub fn set_offload(fd: RawFd, flags: u32) -> nix::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes an integer, not a pointer: the kernel reads nothing
        // of ours. A descriptor that is not a TUN device gets an error, nothing else.
        unsafe { tun_set_offload(fd, flags.into()) }.map(drop)
    }

    // TUNSETVNETLE = _IOW('T', 220, int): a pointer to the flag.
    nix::ioctl_write_ptr!(tun_set_vnet_le, b'T', 220, nix::libc::c_int);

    pub fn set_vnet_le(fd: RawFd) -> nix::Result<()> {
        let on: nix::libc::c_int = 1;
        // SAFETY: the kernel reads one int through the pointer, which points to `on` for
        // the whole call.
        unsafe { tun_set_vnet_le(fd, &on) }.map(drop)
    }

    /// The device's descriptor (the tun crate offers only `AsRawFd`).
    pub fn borrow(dev: &tun::Device) -> BorrowedFd<'_> {
        // SAFETY: the device owns its descriptor and closes it only when dropped; the
        // borrow cannot outlive the device it was taken from.
        unsafe { BorrowedFd::borrow_raw(dev.as_raw_fd()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The folded sum of `data` (`ntm_csum` checks its sum against the plain 16-bit way;
    /// these tests check which bytes each checksum covers and where it is written).
    fn folded(data: &[u8]) -> u16 {
        fold(sum(data, 0))
    }

    /// Whether `pkt`'s IPv4 header checksum (if IPv4) and TCP/UDP checksum verify.
    fn verifies(pkt: &[u8]) -> bool {
        let v6 = pkt[0] >> 4 == 6;
        let (l4, proto) = if v6 { (40, pkt[6]) } else { (usize::from(pkt[0] & 15) * 4, pkt[9]) };
        if !v6 && folded(&pkt[..l4]) != 0xffff {
            return false;
        }
        let mut ph = Vec::new();
        if v6 {
            ph.extend_from_slice(&pkt[8..40]);
            ph.extend_from_slice(&(pkt.len() as u32 - 40).to_be_bytes());
            ph.extend_from_slice(&[0, 0, 0, proto]);
        } else {
            ph.extend_from_slice(&pkt[12..20]);
            ph.extend_from_slice(&[0, proto]);
            ph.extend_from_slice(&((pkt.len() - l4) as u16).to_be_bytes());
        }
        ph.extend_from_slice(&pkt[l4..]);
        folded(&ph) == 0xffff
    }

    fn ip(v6: bool, proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut p = if v6 {
            let mut h = vec![0x60, 0, 0, 0];
            h.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            h.extend_from_slice(&[proto, 64]);
            h.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0xfa, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
            h.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0xfb, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
            h
        } else {
            let mut h = vec![0x45, 0];
            h.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
            h.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, proto, 0, 0, 198, 18, 1, 1, 198, 18, 2, 1]);
            h
        };
        p.extend_from_slice(l4);
        p
    }

    /// A TCP segment from 40000 to 5201: `flags`, 12 bytes of options (timestamps),
    /// `payload` bytes counting from `seq`.
    fn tcp(v6: bool, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut t = vec![0x9c, 0x40, 0x14, 0x51];
        t.extend_from_slice(&seq.to_be_bytes());
        t.extend_from_slice(&0x0102_0304u32.to_be_bytes());
        t.extend_from_slice(&[0x80, flags, 0x01, 0xf5, 0, 0, 0, 0]);
        t.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9]);
        t.extend_from_slice(payload);
        let mut p = ip(v6, PROTO_TCP, &t);
        let l4 = if v6 { 40 } else { 20 };
        if !v6 {
            let c = !folded(&p[..20]);
            p[10..12].copy_from_slice(&c.to_be_bytes());
        }
        write_l4_checksum(&mut p, v6, l4, TCP_CSUM, true);
        p
    }

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    /// What the kernel hands over with TSO: one header, the whole payload, the TCP
    /// checksum field holding the pseudo-header's sum over the whole length.
    fn super_packet(v6: bool, flags: u8, payload: &[u8], mss: u16) -> (VnetHdr, Vec<u8>) {
        let mut p = tcp(v6, 1000, flags, payload);
        let l4 = if v6 { 40 } else { 20 };
        let partial = fold(pseudo(&p, v6, PROTO_TCP, p.len() - l4));
        p[l4 + 16..l4 + 18].copy_from_slice(&partial.to_be_bytes());
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: if v6 { GSO_TCPV6 } else { GSO_TCPV4 },
            hdr_len: (l4 + 32) as u16,
            gso_size: mss,
            csum_start: l4 as u16,
            csum_offset: 16,
        };
        (h, p)
    }

    fn split_all(h: &VnetHdr, p: &mut [u8]) -> Vec<Vec<u8>> {
        let Ok(Plan::Split(s)) = plan(h, p) else { panic!("a super-packet") };
        let mut out = Vec::new();
        let mut buf = vec![0u8; 2000];
        for k in 0..s.count {
            let n = s.segment(p, k, &mut buf).unwrap();
            out.push(buf[..n].to_vec());
        }
        assert_eq!(s.segment(p, s.count, &mut buf), None);
        out
    }

    #[test]
    fn the_header_round_trips_little_endian() {
        let h = VnetHdr { flags: 1, gso_type: 4, hdr_len: 72, gso_size: 1348, csum_start: 40, csum_offset: 16 };
        let b = h.emit();
        assert_eq!(VnetHdr::parse(&b), Some(h));
        assert_eq!(&b[4..6], &[0x44, 0x05], "little-endian");
        assert_eq!(VnetHdr::parse(&b[..9]), None);
    }

    #[test]
    fn a_super_packet_splits_into_segments_that_verify() {
        for v6 in [false, true] {
            let payload = bytes(10_000, 3);
            let mss = 1348;
            let (h, mut p) = super_packet(v6, TCP_ACK | TCP_PSH | TCP_FIN | TCP_CWR, &payload, mss);
            let segs = split_all(&h, &mut p);
            assert_eq!(segs.len(), 8, "10000 bytes at 1348 a segment");
            let l4 = if v6 { 40 } else { 20 };
            let mut joined = Vec::new();
            for (k, s) in segs.iter().enumerate() {
                assert!(verifies(s), "v6 {v6} segment {k} checksums");
                let plen = if k < 7 { 1348 } else { 10_000 - 7 * 1348 };
                assert_eq!(s.len(), l4 + 32 + plen);
                if v6 {
                    assert_eq!(u16::from_be_bytes([s[4], s[5]]) as usize, 32 + plen);
                } else {
                    assert_eq!(u16::from_be_bytes([s[2], s[3]]) as usize, s.len());
                    assert_eq!(u16::from_be_bytes([s[4], s[5]]), 0x1234 + k as u16, "IPv4 ID counts up");
                }
                let seq = u32::from_be_bytes([s[l4 + 4], s[l4 + 5], s[l4 + 6], s[l4 + 7]]);
                assert_eq!(seq, 1000 + (k * 1348) as u32);
                let flags = s[l4 + 13];
                let last = k == 7;
                assert_eq!(flags & (TCP_FIN | TCP_PSH) != 0, last, "FIN and PSH on the last only ({k})");
                assert_eq!(flags & TCP_CWR != 0, k == 0, "CWR on the first only ({k})");
                assert_eq!(flags & TCP_ACK, TCP_ACK);
                // Options and the rest of the header unchanged.
                assert_eq!(s[l4 + 8..l4 + 13], p[l4 + 8..l4 + 13]);
                assert_eq!(s[l4 + 14..l4 + 16], p[l4 + 14..l4 + 16]);
                assert_eq!(s[l4 + 20..l4 + 32], p[l4 + 20..l4 + 32]);
                joined.extend_from_slice(&s[l4 + 32..]);
            }
            assert_eq!(joined, payload);
        }
    }

    #[test]
    fn splitting_then_coalescing_gives_the_super_packet_back() {
        for v6 in [false, true] {
            let payload = bytes(60_000, 9);
            let (h, mut p) = super_packet(v6, TCP_ACK | TCP_PSH, &payload, 1380);
            let orig = p.clone();
            let segs = split_all(&h, &mut p);
            let first = TcpSeg::parse(&segs[0]).unwrap();
            let (mut last, mut total) = (first, first.payload);
            for s in &segs[1..] {
                let n = TcpSeg::parse(s).unwrap();
                assert!(first.follows(&segs[0], &last, total, s, &n));
                last = n;
                total += n.payload;
            }
            let mut out = [0u8; 200];
            let n = coalesced_header(&segs[0], &first, total, last.psh, &mut out).unwrap();
            let hdr = VnetHdr::parse(&out).unwrap();
            assert_eq!(hdr, VnetHdr { hdr_len: h.hdr_len, gso_size: 1380, ..h });
            let mut whole = out[VNET_HDR_LEN..n].to_vec();
            for s in &segs {
                whole.extend_from_slice(&s[first.hdrs..]);
            }
            // The IPv4 ID of the first segment, the checksum field the pseudo-header sum:
            // the super-packet as the kernel gave it.
            assert_eq!(whole, orig, "v6 {v6}");
            // The kernel completes the checksum as plan() does for an unsegmented one.
            let l4 = if v6 { 40 } else { 20 };
            complete_checksum(&mut whole, l4, 16).unwrap();
            assert!(verifies(&whole));
        }
    }

    #[test]
    fn coalescing_stops_where_the_flow_or_sequence_breaks() {
        let seg = |seq: u32, flags: u8, n: usize| tcp(false, seq, flags, &bytes(n, 1));
        let a = seg(1000, TCP_ACK, 1000);
        let fa = TcpSeg::parse(&a).unwrap();
        let follows = |next: &[u8]| TcpSeg::parse(next).is_some_and(|n| fa.follows(&a, &fa, 1000, next, &n));
        assert!(follows(&seg(2000, TCP_ACK, 1000)));
        assert!(follows(&seg(2000, TCP_ACK | TCP_PSH, 500)), "a shorter last one with PSH");
        assert!(!follows(&seg(2001, TCP_ACK, 1000)), "a gap");
        assert!(!follows(&seg(2000, TCP_ACK, 1001)), "larger than the first");
        assert!(!follows(&seg(2000, TCP_ACK | TCP_FIN, 1000)), "FIN is not coalesced");
        let mut other_port = seg(2000, TCP_ACK, 1000);
        other_port[21] ^= 1;
        assert!(!follows(&other_port));
        let mut other_ts = seg(2000, TCP_ACK, 1000);
        other_ts[20 + 27] ^= 1;
        assert!(!follows(&other_ts), "options differ");
        let mut other_ttl = seg(2000, TCP_ACK, 1000);
        other_ttl[8] = 63;
        assert!(!follows(&other_ttl));
        // After a short one or one with PSH nothing more.
        let short = seg(2000, TCP_ACK, 500);
        let fs = TcpSeg::parse(&short).unwrap();
        let next = seg(2500, TCP_ACK, 500);
        assert!(!fa.follows(&a, &fs, 1500, &next, &TcpSeg::parse(&next).unwrap()));
        let psh = seg(2000, TCP_ACK | TCP_PSH, 1000);
        let fp = TcpSeg::parse(&psh).unwrap();
        let next = seg(3000, TCP_ACK, 1000);
        assert!(!fa.follows(&a, &fp, 2000, &next, &TcpSeg::parse(&next).unwrap()));
        // Within 64 KiB.
        let next = seg(2000, TCP_ACK, 1000);
        assert!(!fa.follows(&a, &fa, SUPER_MAX - 52 - 999, &next, &TcpSeg::parse(&next).unwrap()));
        // Not coalesced at all: SYN, no payload, fragments, IPv4 options.
        assert_eq!(TcpSeg::parse(&seg(1, 0x02, 0)), None);
        assert_eq!(TcpSeg::parse(&seg(1, TCP_ACK, 0)), None);
        let mut frag = seg(1, TCP_ACK, 100);
        frag[6] = 0x20;
        assert_eq!(TcpSeg::parse(&frag), None);
    }

    #[test]
    fn a_packet_with_its_checksum_left_open_is_completed() {
        for v6 in [false, true] {
            // TCP as the kernel leaves it with TUN_F_CSUM and no segmentation.
            let (mut h, mut p) = super_packet(v6, TCP_ACK | TCP_PSH, &bytes(777, 5), 1400);
            h.gso_type = GSO_NONE;
            assert!(!verifies(&p));
            assert_eq!(plan(&h, &mut p), Ok(Plan::One));
            assert!(verifies(&p), "v6 {v6}");
            // UDP: field at offset 6.
            let mut u = vec![0x30, 0x39, 0x00, 0x35, 0, 0, 0, 0];
            u.extend_from_slice(&bytes(301, 2));
            let ulen = u.len() as u16;
            u[4..6].copy_from_slice(&ulen.to_be_bytes());
            let mut p = ip(v6, PROTO_UDP, &u);
            let l4 = if v6 { 40 } else { 20 };
            if !v6 {
                let c = !folded(&p[..20]);
                p[10..12].copy_from_slice(&c.to_be_bytes());
            }
            let partial = fold(pseudo(&p, v6, PROTO_UDP, p.len() - l4));
            p[l4 + 6..l4 + 8].copy_from_slice(&partial.to_be_bytes());
            let h = VnetHdr { flags: F_NEEDS_CSUM, csum_start: l4 as u16, csum_offset: 6, ..VnetHdr::default() };
            assert_eq!(plan(&h, &mut p), Ok(Plan::One));
            assert!(verifies(&p));
        }
        // A plain read passes untouched.
        let mut p = tcp(false, 5, TCP_ACK, b"x");
        let before = p.clone();
        assert_eq!(plan(&VnetHdr::default(), &mut p), Ok(Plan::One));
        assert_eq!(p, before);
    }

    #[test]
    fn udp_super_packets_split_too() {
        for v6 in [false, true] {
            let mut u = vec![0x30, 0x39, 0x00, 0x35, 0, 0, 0, 0];
            u.extend_from_slice(&bytes(3000, 4));
            let mut p = ip(v6, PROTO_UDP, &u);
            let l4 = if v6 { 40 } else { 20 };
            let h = VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: GSO_UDP_L4,
                hdr_len: (l4 + 8) as u16,
                gso_size: 1200,
                csum_start: l4 as u16,
                csum_offset: 6,
            };
            let segs = split_all(&h, &mut p);
            assert_eq!(segs.iter().map(|s| s.len() - l4 - 8).collect::<Vec<_>>(), [1200, 1200, 600]);
            for s in &segs {
                assert!(verifies(s));
                assert_eq!(u16::from_be_bytes([s[l4 + 4], s[l4 + 5]]) as usize, s.len() - l4);
            }
        }
    }

    #[test]
    fn bad_reads_are_refused_without_panic() {
        let (h, p) = super_packet(false, TCP_ACK, &bytes(5000, 1), 1000);
        // Every prefix of the super-packet: refused or planned, never a panic, and every
        // segment of a plan within the bytes read.
        for cut in 0..p.len() {
            let mut q = p[..cut].to_vec();
            if let Ok(Plan::Split(s)) = plan(&h, &mut q) {
                let mut buf = vec![0u8; 2000];
                for k in 0..s.count {
                    assert!(s.segment(&q, k, &mut buf).is_some());
                }
            }
        }
        let mut q = p.clone();
        assert_eq!(plan(&h, &mut q[..30]), Err(Bad::Truncated));
        assert_eq!(plan(&VnetHdr { gso_type: GSO_TCPV6, ..h }, &mut q), Err(Bad::Unsupported), "v4 as TCPv6");
        assert_eq!(plan(&VnetHdr { gso_type: 3, ..h }, &mut q), Err(Bad::Unsupported), "UFO");
        assert_eq!(plan(&VnetHdr { gso_size: 0, ..h }, &mut q), Err(Bad::Unsupported));
        let open = VnetHdr { flags: F_NEEDS_CSUM, csum_start: 5040, csum_offset: 16, ..VnetHdr::default() };
        assert_eq!(plan(&open, &mut q), Err(Bad::Truncated));
        let open = VnetHdr { flags: F_NEEDS_CSUM, csum_start: u16::MAX, csum_offset: u16::MAX, ..open };
        assert_eq!(plan(&open, &mut q), Err(Bad::Truncated));
        let mut junk = vec![0xffu8; 100];
        assert!(plan(&h, &mut junk).is_err());
        assert_eq!(TcpSeg::parse(&junk), None);
        assert_eq!(TcpSeg::parse(&[]), None);
        // A segment buffer too small: None.
        let Ok(Plan::Split(s)) = plan(&h, &mut q) else { panic!() };
        assert_eq!(s.segment(&q, 0, &mut [0u8; 100]), None);
    }
}
