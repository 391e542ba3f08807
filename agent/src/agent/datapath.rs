//! The tunnel's data path: the UDP sockets (one port, both families where the host has
//! them) and the TUN device. Datagrams come in many per system call (whole coalesced
//! groups of them where the kernel can, see `crate::inbox`) and go to the engine a batch
//! at a time, their inner packets to the TUN device; packets from the TUN device are
//! sealed in place and sent a batch per call. Each source is read for at most
//! `READ_BUDGET` per turn. With the TUN offloads (`tun.offload`, `crate::offload`) a read
//! from the TUN device may be a TCP super-packet, cut into segments that are sealed one to
//! a slot, and the inner TCP segments of a receive batch are coalesced into super-packets
//! before they are written; without them, one packet per read and per write.

use super::{Agent, READ_BUDGET, TUN, UDP4};
use crate::batch::{errno, once_more, BATCH, SLOT_LEN};
use crate::icmp;
use crate::inbox::{Cursor, Inbox, Tally};
use crate::offload::{self, Plan, TcpSeg, VnetHdr, VNET_HDR_LEN};
use crate::pmtu;
use mio::net::UdpSocket;
use mio::Token;
use nix::errno::Errno;
use ntm_proto::crypto::TAG_LEN;
use ntm_proto::engine::node::{Dest, SendError};
use ntm_proto::engine::{Local, Received};
use ntm_proto::wire::HEADER_LEN;
use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};

/// Bytes a tunnel adds to an inner packet: outer IP, UDP, the NTMobile header and tag.
const OVERHEAD_V4: u16 = 20 + 8 + (HEADER_LEN + TAG_LEN) as u16;
const OVERHEAD_V6: u16 = 40 + 8 + (HEADER_LEN + TAG_LEN) as u16;
/// ICMP errors read from a tunnel socket's error queue per readiness event at most (each
/// is charged to the socket's receive buffer while queued).
const ERRORS_PER_EVENT: usize = 256;
/// Room in the kernel for tunnel datagrams while the loop is busy: a TCP burst through
/// the tunnel arrives faster than one thread takes it for a moment, and every datagram
/// the default buffer (about 200 KiB) drops costs the application a retransmission. The
/// receive side holds a whole TCP window (Linux's default largest receive buffer, 6 MiB,
/// opens about 4 MB, and each datagram costs the kernel about 1.5 times its size): at
/// 2 MiB a single iperf3 stream on a busy machine still lost 2 to 140 datagrams in about
/// a third of the runs (`Udp.RcvbufErrors`), at 8 MiB none in 14. The kernel charges only
/// what is queued.
const TUNNEL_RECV_BUFFER: usize = 8 * 1024 * 1024;
const TUNNEL_SEND_BUFFER: usize = 2 * 1024 * 1024;

/// Sets the tunnel socket's buffers (as root beyond the sysctl limits, else up to them).
pub(super) fn size_buffers(sock: &UdpSocket) {
    if !ntm_io::udp::size_buffers(sock, TUNNEL_RECV_BUFFER, TUNNEL_SEND_BUFFER) {
        log::debug!("could not size the tunnel socket's buffers");
    }
}

/// Asks the kernel to queue the ICMP errors about the socket's own datagrams for the agent
/// (`IP_RECVERR`, `IPV6_RECVERR`): "fragmentation needed" and "packet too big" tell it
/// the path MTU at once (see `crate::pmtu`). Without it they only change the kernel's
/// route cache, which the agent reads again within `pmtu::RECHECK`.
/// IPv4 datagrams also carry Don't Fragment (`ntm_io::udp::dont_fragment`: otherwise
/// segmented sends go without it, and a narrow router fragments them silently), but for
/// those larger than the path that must go anyway (`Batch::allow_fragments`).
pub(super) fn queue_errors(sock: &UdpSocket) {
    use nix::sys::socket::{setsockopt, sockopt};
    let r = match sock.local_addr() {
        Ok(a) if a.is_ipv4() => {
            if let Err(e) = ntm_io::udp::dont_fragment(sock.as_raw_fd(), true) {
                log::debug!("IPv4 tunnel datagrams may go without Don't Fragment: {e}");
            }
            setsockopt(sock, sockopt::Ipv4RecvErr, &true)
        }
        Ok(_) => setsockopt(sock, sockopt::Ipv6RecvErr, &true),
        Err(_) => return,
    };
    if let Err(e) = r {
        log::debug!("the tunnel socket will not report ICMP errors: {e}");
    }
}

/// Sends one datagram from a tunnel socket (a second time if the first try failed with
/// what may have been a forged ICMP error, see `crate::batch::once_more`).
pub(super) fn send_one(sock: &UdpSocket, to: SocketAddr, bytes: &[u8]) -> nix::Result<()> {
    once_more(|| sock.send_to(bytes, to).map_err(errno)).map(drop)
}

/// Asks the kernel for coalesced groups on a tunnel socket (see `crate::inbox`), once the
/// start-up trial showed that it gives them. The receive slots hold them whether it takes
/// the option or not, so a refusal changes nothing but the speed.
pub(super) fn coalesce(sock: &UdpSocket) {
    let _ = ntm_io::udp::coalesce(sock);
}

/// An IPv6-only socket on `port`: the IPv4 socket owns the port's IPv4 side (the kernel's
/// default would let `[::]` take IPv4 too and the second bind would fail).
pub(super) fn bind_udp6_only(port: u16) -> io::Result<UdpSocket> {
    use nix::sys::socket::{bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn6};
    let fd = socket(AddressFamily::Inet6, SockType::Datagram, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    let any = std::net::SocketAddrV6::new(std::net::Ipv6Addr::UNSPECIFIED, port, 0, 0);
    bind(fd.as_raw_fd(), &SockaddrIn6::from(any))?;
    Ok(UdpSocket::from_std(std::net::UdpSocket::from(fd)))
}

/// A tunnel socket, or None if this host lacks the family (its kernel has no IPv6, or no
/// address of it at all); an error for everything else.
pub(super) fn tunnel_socket(
    family: &str,
    port: u16,
    bound: io::Result<UdpSocket>,
) -> Result<Option<UdpSocket>, String> {
    match bound {
        Ok(s) => Ok(Some(s)),
        Err(e)
            if matches!(
                e.raw_os_error().map(Errno::from_raw),
                Some(Errno::EAFNOSUPPORT | Errno::EADDRNOTAVAIL | Errno::EPROTONOSUPPORT)
            ) =>
        {
            log::info!("no {family} tunnel socket: {e}");
            Ok(None)
        }
        Err(e) => Err(format!("cannot bind the {family} tunnel port UDP {port}: {e}")),
    }
}

impl Agent {
    pub(super) fn socket_for(&self, to: &SocketAddr) -> Option<&UdpSocket> {
        if to.is_ipv4() {
            self.udp4.as_ref()
        } else {
            self.udp6.as_ref()
        }
    }

    pub(super) fn send_udp(&mut self, to: SocketAddr, bytes: &[u8]) {
        if self.socket_for(&to).is_some_and(|s| send_one(s, to, bytes).is_ok()) {
            self.counters.udp_out += 1;
        } else {
            self.counters.send_errors += 1;
        }
    }

    /// The ICMP errors queued for a main tunnel socket.
    pub(super) fn read_udp_errors(&mut self, token: Token) {
        let sock = if token == UDP4 { self.udp4.as_ref() } else { self.udp6.as_ref() };
        if let Some(fd) = sock.map(|s| s.as_raw_fd()) {
            self.read_socket_errors(fd);
        }
    }

    pub(super) fn read_udp(&mut self, token: Token) {
        let sock = if token == UDP4 { self.udp4.as_ref() } else { self.udp6.as_ref() };
        let Some(fd) = sock.map(|s| s.as_raw_fd()) else { return };
        self.read_tunnel(token, fd, Local::MAIN);
    }

    /// Reads one tunnel socket, the main one of a family or an extra one (`local`), for
    /// at most `READ_BUDGET` datagrams.
    pub(super) fn read_tunnel(&mut self, token: Token, fd: RawFd, local: Local) {
        let mut read = 0;
        loop {
            if read >= READ_BUDGET {
                self.turn.spent(token);
                return;
            }
            // WouldBlock ends the drain. An ICMP error about a datagram this socket sent
            // (IP_RECVERR) is the socket's pending error, returned by the next receive
            // even while datagrams wait: the receive is made once more, as a send is
            // (`once_more`). Any other error ends the drain (the next readiness event
            // tries again).
            let Ok(n) = once_more(|| self.rx.recv(fd)) else { return };
            let now = self.now();
            // The datagrams of the messages, a batch at a time (a coalesced group may hold
            // more than one batch), all at once to the engine: consecutive ones of one
            // tunnel are opened side by side (see `ntm_aead`).
            let (mut at, mut tally) = (Cursor::default(), Tally::default());
            while !Inbox::done(&at, n) {
                let mut starts: heapless::Vec<usize, BATCH> = heapless::Vec::new();
                let mut results: [Received; BATCH] = std::array::from_fn(|_| Received::Handled);
                {
                    let mut datagrams = heapless::Vec::new();
                    self.rx.next_datagrams(n, &mut at, &mut datagrams, &mut starts, &mut tally);
                    self.node.handle_datagrams_on(now, local, &mut datagrams, &mut results);
                }
                // Where each datagram's inner packet is in the slots (empty for a datagram
                // that held none).
                let mut opened: [Range<usize>; BATCH] = std::array::from_fn(|_| 0..0);
                for ((r, &start), o) in results.iter().zip(&starts).zip(opened.iter_mut()) {
                    if let Received::Ip(range) = r {
                        *o = start + range.start..start + range.end;
                    }
                }
                let opened = opened.get(..starts.len()).unwrap_or_default();
                if self.offload {
                    // Coalesced where they can be.
                    self.write_coalesced(opened);
                } else {
                    for range in opened {
                        let pkt = self.rx.get(range.clone());
                        if pkt.is_empty() {
                            continue;
                        }
                        match self.tun.send(pkt) {
                            Ok(_) => self.counters.tun_out += 1,
                            Err(_) => self.counters.send_errors += 1,
                        }
                    }
                }
            }
            self.counters.udp_in += tally.datagrams;
            self.counters.oversized += tally.truncated;
            self.counters.udp_groups_in += tally.groups;
            read += usize::try_from(tally.datagrams).unwrap_or(usize::MAX);
            // A short receive means the queue ran empty (recvmmsg stops at the first
            // WouldBlock): no need for another call to hear it again.
            if n < self.rx.slots() {
                return;
            }
        }
    }

    /// Packets from applications: read up to a batch of them, seal each in place for its
    /// tunnel, and send the batch. The first packet read after a wake-up is sent on its own
    /// before the next read: on an idle tunnel that next read finds the device empty, and
    /// the packet would wait out that system call (a ping's round trip holds two such
    /// waits). Under load a wake-up's later reads fill whole batches as before, so this
    /// costs one more send per wake-up, not per packet.
    pub(super) fn read_tun(&mut self) {
        if self.offload {
            return self.read_tun_offload();
        }
        let mut read = 0;
        loop {
            if read >= READ_BUDGET {
                self.turn.spent(TUN);
                return;
            }
            // The inner packet's length in each send slot filled so far.
            let mut lens: heapless::Vec<usize, BATCH> = heapless::Vec::new();
            let mut drained = false;
            while !lens.is_full() {
                let slot = self.tx.slot_mut(lens.len());
                let space = slot.get_mut(HEADER_LEN..SLOT_LEN - TAG_LEN).unwrap_or_default();
                let room = space.len();
                let n = match self.tun.recv(space) {
                    Ok(n) if room > 0 => n,
                    // WouldBlock, or an error (as before: stop until the next event).
                    _ => {
                        drained = true;
                        break;
                    }
                };
                self.counters.tun_in += 1;
                read += 1;
                if n > room {
                    // Larger than the TUN MTU allows (TUN_MTU_MAX): cut short by the read.
                    self.counters.send_errors += 1;
                    continue;
                }
                let _ = lens.push(n);
                if read == 1 {
                    // The first packet of a wake-up goes at once (see `Agent::read_tun`).
                    break;
                }
            }
            let now = self.now();
            self.seal_and_send(now, &lens);
            if drained {
                return;
            }
        }
    }

    /// [`Agent::read_tun`] with the TUN offloads (see `crate::offload`): each read is one
    /// packet or a super-packet behind a virtio-net header; its segments are written one to
    /// a send slot, sealed, and sent a batch at a time (a full batch goes out and the next
    /// segment takes its first slot, so no segment waits for a slot or is dropped for
    /// want of one).
    fn read_tun_offload(&mut self) {
        let mut read = 0;
        // The inner packet's length in each send slot filled so far.
        let mut lens: heapless::Vec<usize, BATCH> = heapless::Vec::new();
        while read < READ_BUDGET {
            // WouldBlock, or an error (as in read_tun: stop until the next event).
            let Ok(n) = offload::read(&self.tun, &mut self.tun_read) else {
                let now = self.now();
                self.seal_and_send(now, &lens);
                return;
            };
            let now = self.now();
            let h = VnetHdr::parse(&self.tun_read);
            let pkt = self.tun_read.get_mut(VNET_HDR_LEN..n).unwrap_or_default();
            let plan = h.ok_or(offload::Bad::Truncated).and_then(|h| offload::plan(&h, pkt));
            let (split, count) = match plan {
                Ok(Plan::One) => (None, 1),
                Ok(Plan::Split(s)) => (Some(s), s.count),
                Err(_) => {
                    self.counters.tun_bad += 1;
                    read += 1;
                    continue;
                }
            };
            self.counters.tun_in += count as u64;
            self.counters.tun_super_in += u64::from(split.is_some());
            read += count;
            for k in 0..count {
                if lens.is_full() {
                    self.seal_and_send(now, &lens);
                    lens.clear();
                }
                let pkt = self.tun_read.get(VNET_HDR_LEN..n).unwrap_or_default();
                let space = self.tx.slot_mut(lens.len()).get_mut(HEADER_LEN..SLOT_LEN - TAG_LEN).unwrap_or_default();
                let len = match &split {
                    Some(s) => s.segment(pkt, k, space),
                    None => space.get_mut(..pkt.len()).map(|d| d.copy_from_slice(pkt)).map(|()| pkt.len()),
                };
                let Some(len) = len else {
                    // Larger than a slot (TUN_MTU_MAX).
                    self.counters.send_errors += 1;
                    continue;
                };
                let _ = lens.push(len);
            }
            if read == 1 {
                // A lone packet first in a wake-up goes at once (see `Agent::read_tun`).
                self.seal_and_send(now, &lens);
                lens.clear();
            }
        }
        let now = self.now();
        self.seal_and_send(now, &lens);
        self.turn.spent(TUN);
    }

    /// Seals the inner packets in the first send slots (`lens[i]` bytes at `HEADER_LEN` of
    /// slot `i`) for their tunnels, all in one call to the engine (consecutive packets of
    /// one tunnel are sealed side by side, see `ntm_aead`), and sends them. A packet that
    /// cannot go is counted, and answered with ICMP where that helps the sender.
    fn seal_and_send(&mut self, now: ntm_proto::time::Instant, lens: &[usize]) {
        let mut to_cut = Vec::new();
        self.seal_and_send_some(now, lens, &mut to_cut);
        if !to_cut.is_empty() {
            self.send_fragments(now, to_cut);
        }
    }

    /// IPv4 packets without Don't Fragment that did not fit their tunnel's path, cut into
    /// fragments that do (`pmtu::fragment_v4`), sealed and sent a batch at a time.
    fn send_fragments(&mut self, now: ntm_proto::time::Instant, packets: Vec<(Vec<u8>, u16)>) {
        let mut lens: heapless::Vec<usize, BATCH> = heapless::Vec::new();
        let mut left = Vec::new();
        for (pkt, limit) in packets {
            let Some(frags) = pmtu::fragment_v4(&pkt, usize::from(limit)) else {
                self.counters.too_big += 1;
                continue;
            };
            self.counters.fragmented += 1;
            for f in frags {
                if lens.is_full() {
                    self.seal_and_send_some(now, &lens, &mut left);
                    lens.clear();
                }
                let space = self.tx.slot_mut(lens.len()).get_mut(HEADER_LEN..SLOT_LEN - TAG_LEN).unwrap_or_default();
                if let Some(d) = space.get_mut(..f.len()) {
                    d.copy_from_slice(&f);
                    let _ = lens.push(f.len());
                }
            }
        }
        self.seal_and_send_some(now, &lens, &mut left);
        // A fragment that did not fit either (the path narrowed meanwhile) is dropped.
        self.counters.too_big += left.len() as u64;
    }

    /// [`Agent::seal_and_send`], but IPv4 packets without Don't Fragment too big for their
    /// path are added to `to_cut` (with the size that fits) instead of being answered.
    fn seal_and_send_some(&mut self, now: ntm_proto::time::Instant, lens: &[usize], to_cut: &mut Vec<(Vec<u8>, u16)>) {
        let count = lens.len().min(BATCH);
        if count == 0 {
            return;
        }
        let mut out: [Result<Dest, SendError>; BATCH] = std::array::from_fn(|_| Err(SendError::NotIp));
        {
            let mut frames: heapless::Vec<&mut [u8], BATCH> = heapless::Vec::new();
            for (slot, &n) in self.tx.slots_mut().zip(lens) {
                let _ = frames.push(slot.get_mut(..HEADER_LEN + n + TAG_LEN).unwrap_or_default());
            }
            // Everything must fit the path to its destination (crate::pmtu), but for IPv4
            // without Don't Fragment over IPv6: its datagram may be fragmented by the
            // kernel (IPv4 datagrams never are, see `queue_errors`).
            let (mtus, clock) = (&self.pmtus, std::time::Instant::now());
            // The last destination's path MTU: a batch mostly goes to one.
            let last: std::cell::Cell<Option<(IpAddr, u16)>> = std::cell::Cell::new(None);
            let path_mtu = |inner: &[u8], to: &SocketAddr| {
                if to.is_ipv6() && pmtu::v4_without_df(inner) {
                    return u16::MAX;
                }
                let link = match last.get() {
                    Some((ip, mtu)) if ip == to.ip() => mtu,
                    _ => {
                        let mtu = mtus.get(to.ip(), clock);
                        last.set(Some((to.ip(), mtu)));
                        mtu
                    }
                };
                let overhead = if to.is_ipv4() { OVERHEAD_V4 } else { OVERHEAD_V6 };
                pmtu::inner_limit(link, overhead, inner.first().is_some_and(|b| b >> 4 == 6))
            };
            let out = out.get_mut(..count).unwrap_or_default();
            self.node.seal_ip_batch_within(now, &mut frames, path_mtu, out);
        }
        for (i, (r, &n)) in out.iter().zip(lens).enumerate().take(count) {
            match r {
                Ok(dst) => {
                    let len = HEADER_LEN + n + TAG_LEN;
                    self.tx.set(i, len, dst.to, dst.local);
                    // An inner packet at its family's floor on a path narrower than that
                    // (pmtu::inner_limit): its IPv4 datagram goes without Don't Fragment
                    // and the kernel fragments it. (IPv6 datagrams it fragments anyway.)
                    let outer = n + usize::from(OVERHEAD_V4);
                    if dst.to.is_ipv4()
                        && outer > usize::from(self.pmtus.smallest())
                        && outer > usize::from(self.pmtus.known(dst.to.ip()))
                    {
                        self.tx.allow_fragments(i);
                    }
                }
                Err(SendError::TooBig { mtu }) if self.may_cut(i, n) => {
                    let pkt = self.tx.slot(i).get(HEADER_LEN..HEADER_LEN + n).unwrap_or_default().to_vec();
                    self.tx.clear(i);
                    to_cut.push((pkt, *mtu));
                }
                Err(e) => {
                    self.tx.clear(i);
                    self.refused(i, n, e);
                }
            }
        }
        self.send_sealed(count);
        self.check_path_mtus(&[]);
    }

    /// Whether the inner packet of `n` bytes in send slot `i` is IPv4 without Don't
    /// Fragment (a router may cut it).
    fn may_cut(&self, i: usize, n: usize) -> bool {
        pmtu::v4_without_df(self.tx.slot(i).get(HEADER_LEN..HEADER_LEN + n).unwrap_or_default())
    }

    /// Asks the kernel for the path MTU of the destinations sealing met without a recent
    /// answer, and of `also`.
    pub(super) fn check_path_mtus(&mut self, also: &[IpAddr]) {
        let mut ask = self.pmtus.take_wanted();
        for dst in also {
            if !ask.contains(dst) {
                ask.push(*dst);
            }
        }
        let now = std::time::Instant::now();
        for dst in ask {
            let mtu = match self.netlink.path_mtu(dst) {
                Ok(m) => m,
                Err(e) => {
                    log::debug!("asking the kernel for the path MTU to {dst}: {e}");
                    None
                }
            };
            if self.pmtus.set(dst, mtu, now) {
                log::info!("path MTU to {dst}: {} bytes", self.pmtus.known(dst));
            }
        }
    }

    /// Reads the ICMP errors the kernel queued about datagrams a tunnel socket sent
    /// (IP_RECVERR). The kernel updated its path MTU for the datagram's destination before
    /// it queued the error ("fragmentation needed", "packet too big"), so the agent asks
    /// it again for each destination named; other errors (a peer's port unreachable, say)
    /// change nothing there, and the tunnel's own timers deal with a peer that went away.
    /// The errors' own contents are not decoded: the destination is all the agent needs.
    pub(super) fn read_socket_errors(&mut self, fd: RawFd) {
        use nix::sys::socket::{recvmsg, MsgFlags, SockaddrStorage};
        let mut dsts: Vec<IpAddr> = Vec::new();
        for _ in 0..ERRORS_PER_EVENT {
            // The start of the datagram the error is about: not needed, so kept short.
            let mut head = [0u8; 64];
            let mut iov = [std::io::IoSliceMut::new(&mut head)];
            let flags = MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT;
            let Ok(msg) = recvmsg::<SockaddrStorage>(fd, &mut iov, None, flags) else { break };
            self.counters.icmp_errors += 1;
            if let Some(dst) = msg.address.as_ref().and_then(ntm_io::udp::socket_addr).map(|a| a.ip()) {
                if !dsts.contains(&dst) {
                    dsts.push(dst);
                }
            }
        }
        let now = std::time::Instant::now();
        dsts.retain(|dst| self.pmtus.worth_asking(*dst, now));
        if !dsts.is_empty() {
            self.check_path_mtus(&dsts);
        }
    }

    /// Counts the packet of `n` bytes in send slot `i` that the engine refused to seal
    /// (so it is still in clear), and answers it with ICMP where that helps the sender.
    fn refused(&mut self, i: usize, n: usize, e: &SendError) {
        let inner = self.tx.slot(i).get(HEADER_LEN..HEADER_LEN + n).unwrap_or_default();
        match e {
            SendError::TooBig { mtu } => {
                // Too big for the path: tell the sender (the packet is dropped).
                self.counters.too_big += 1;
                if let Some(r) = icmp::too_big(inner, *mtu) {
                    let _ = self.tun_send(&r);
                }
            }
            SendError::NoTunnel(dst) if !icmp::answerable(*dst) => self.counters.not_unicast += 1,
            SendError::NoTunnel(_) => {
                self.counters.no_tunnel += 1;
                if let Some(r) = icmp::unreachable(inner) {
                    let _ = self.tun_send(&r);
                }
            }
            _ => self.counters.send_errors += 1,
        }
    }

    /// Writes one packet to the TUN device (behind a virtio-net header that asks nothing
    /// of the kernel, with the offloads on).
    fn tun_send(&self, pkt: &[u8]) -> io::Result<usize> {
        if self.offload {
            offload::write(&self.tun, &[IoSlice::new(&[0; VNET_HDR_LEN]), IoSlice::new(pkt)])
        } else {
            self.tun.send(pkt)
        }
    }

    /// Writes the inner packets of a batch of received datagrams (`opened[i]`: where
    /// datagram `i`'s packet is in the slots, empty for one that held none) to the TUN
    /// device with the offloads
    /// on: consecutive segments of one TCP flow as one super-packet (GRO, see
    /// `crate::offload`; only where the kernel took TSO), every other packet on its own.
    fn write_coalesced(&mut self, opened: &[Range<usize>]) {
        let (tun, rx, gso) = (&self.tun, &self.rx, self.tun_gso);
        let inner = |i: usize| rx.get(opened.get(i).cloned().unwrap_or_default());
        let mut i = 0;
        while i < opened.len() {
            let first = inner(i);
            if first.is_empty() {
                i += 1;
                continue;
            }
            // The run: the slots of the segments that follow the first.
            let mut run = [0usize; BATCH];
            let mut len = 1;
            let mut end = i + 1;
            if let Some(f) = TcpSeg::parse(first).filter(|_| gso) {
                let (mut last, mut payload) = (f, f.payload);
                while end < opened.len() && len < BATCH {
                    let next = inner(end);
                    match TcpSeg::parse(next) {
                        _ if next.is_empty() => {}
                        Some(n) if f.follows(first, &last, payload, next, &n) => {
                            run[len] = end;
                            len += 1;
                            (last, payload) = (n, payload + n.payload);
                        }
                        _ => break,
                    }
                    end += 1;
                }
                let mut hdr = [0u8; VNET_HDR_LEN + 120];
                let h =
                    if len > 1 { offload::coalesced_header(first, &f, payload, last.psh(), &mut hdr) } else { None };
                if let Some(h) = h {
                    run[0] = i;
                    let mut iov = [IoSlice::new(&[]); BATCH + 1];
                    iov[0] = IoSlice::new(hdr.get(..h).unwrap_or_default());
                    for (v, &k) in iov[1..].iter_mut().zip(&run[..len]) {
                        *v = IoSlice::new(inner(k).get(f.hdrs..).unwrap_or_default());
                    }
                    match offload::write(tun, &iov[..=len]) {
                        Ok(_) => {
                            self.counters.tun_out += len as u64;
                            self.counters.tun_super_out += 1;
                        }
                        Err(_) => self.counters.send_errors += 1,
                    }
                    i = end;
                    continue;
                }
            }
            match offload::write(tun, &[IoSlice::new(&[0; VNET_HDR_LEN]), IoSlice::new(first)]) {
                Ok(_) => self.counters.tun_out += 1,
                Err(_) => self.counters.send_errors += 1,
            }
            i += 1;
        }
    }

    /// Sends the first `count` slots of the send batch, in order, each from its socket:
    /// the tunnel socket of its family, or the extra socket the engine reaches that peer
    /// through. A datagram the kernel refuses for want of a route is held (see held.rs;
    /// only from the tunnel socket: a kept extra socket's peer is reached from that
    /// socket only, and the engine sends its next packets there anyway); any other it
    /// refuses is counted and dropped. The rest go.
    pub(super) fn send_sealed(&mut self, count: usize) {
        let fd4 = self.udp4.as_ref().map(|s| s.as_raw_fd());
        let fd6 = self.udp6.as_ref().map(|s| s.as_raw_fd());
        let extra = &self.extra;
        let fd = |v4: bool, local: Local| match (local == Local::MAIN, v4) {
            (true, true) => fd4,
            (true, false) => fd6,
            (false, _) => extra.fd(local),
        };
        let (held, now) = (&mut self.held, std::time::Instant::now());
        let mut kept = 0;
        let (sent, failed) = self.tx.send_all(count, fd, |to, local, bytes, e| {
            if local == Local::MAIN && held.hold(now, to, bytes, e) {
                kept += 1;
            }
        });
        self.counters.udp_out += sent;
        self.counters.send_errors += failed.saturating_sub(kept);
        // Something went out: the route may be back for what is held too.
        if sent > 0 && !self.held.is_empty() {
            self.send_held();
        }
    }

    /// Tries the datagrams held for want of a route again.
    pub(super) fn send_held(&mut self) {
        let (udp4, udp6) = (self.udp4.as_ref(), self.udp6.as_ref());
        let sent = self.held.retry(std::time::Instant::now(), |to, bytes| {
            let sock = if to.is_ipv4() { udp4 } else { udp6 };
            sock.map_or(Err(Errno::EAFNOSUPPORT), |s| send_one(s, to, bytes))
        });
        self.counters.udp_out += sent;
    }
}
