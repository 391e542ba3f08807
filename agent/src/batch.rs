//! Batches of tunnel datagrams to send: many per system call (sendmmsg) instead of one.
//! (The receiving side is `crate::inbox`.)
//!
//! A [`Batch`] owns [`BATCH`] slots of [`SLOT_LEN`] bytes, allocated once when the agent
//! starts. The caller fills slots one by one (a packet from the TUN device, sealed in
//! place, [`Batch::slot_mut`]), notes each with [`Batch::set`], and [`Batch::send_all`]
//! sends them in order.
//!
//! Sending uses UDP segmentation offload (UDP_SEGMENT, Linux 4.18) where it can: a run of
//! datagrams to one destination, all of one length but the last, which may be shorter,
//! goes to the kernel as one message. The kernel (or the network card) cuts it into the
//! same datagrams on the wire, so the peer sees no difference, but the stack does its
//! per-packet work (routing, filtering, the device queue) once per run. A TCP stream
//! through the tunnel gives such runs: full-sized segments one after another. Other
//! datagrams go with sendmmsg, many messages per call. If the kernel refuses segmentation
//! (a device or IPsec policy without it), those datagrams go one by one and segmentation is
//! not tried again. A kernel older than 4.18 does not refuse: it ignores the control
//! message and would send each run as one long datagram. So segmentation is used only
//! after a trial on loopback at start-up has shown the kernel cutting a message into the
//! right datagrams (`ntm_io::udp::segmentation_works`). Nothing here allocates after [`Batch::new`].

use nix::errno::Errno;
use nix::sys::socket::{sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage};
use ntm_proto::crypto::TAG_LEN;
use ntm_proto::engine::Local;
use ntm_proto::wire::HEADER_LEN;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::ops::Range;
use std::os::fd::RawFd;

/// Datagrams handled per system call. 44 tunnel datagrams of the default TUN MTU (1420,
/// 1 452 bytes each) are 63 888 bytes: one whole segmented message under
/// [`SEGMENTED_MAX`]. With 32, a TCP stream went out in messages of 32 datagrams and came
/// in as groups of 32, and the stack's work per message (the socket buffer, routing, the
/// peer's queue and wake-up) was done about 1.4 times as often: a single stream through
/// the tunnel moved 18 % more with 44 in one run of the bench (docs/benchmarks.md).
pub const BATCH: usize = 44;

/// The largest datagram sent in a segmented run, by family: what a 1500-byte link carries
/// without IP fragmentation (the agent assumes that link MTU). Larger datagrams (IPv4
/// without Don't Fragment, fragmented on the way) go one by one.
const SEGMENT_MAX_V4: usize = 1500 - 20 - 8;
const SEGMENT_MAX_V6: usize = 1500 - 40 - 8;
/// The most bytes in one segmented message (a UDP datagram's limit, with room to spare).
const SEGMENTED_MAX: usize = 65_000;

/// One slot: room for the largest tunnel datagram an agent sends, an inner packet of a TUN
/// MTU of at most [`crate::config::TUN_MTU_MAX`] with the header in front and the tag
/// behind. A larger datagram does not fit and is dropped (`crate::inbox` counts it).
pub const SLOT_LEN: usize = HEADER_LEN + crate::config::TUN_MTU_MAX as usize + TAG_LEN;

/// The slots and the kernel's message headers for one direction of the data path.
pub struct Batch {
    bufs: Vec<u8>,
    headers: MultiHeaders<SockaddrStorage>,
    /// Headers with room for one UDP_SEGMENT control message each.
    segmented: MultiHeaders<SockaddrStorage>,
    /// Per slot to send: its length, destination and the socket it leaves from, and
    /// whether its IPv4 datagram may go without Don't Fragment.
    lens: [usize; BATCH],
    dsts: [Option<SockaddrStorage>; BATCH],
    locals: [Local; BATCH],
    fragments: [bool; BATCH],
    /// Whether to try UDP segmentation offload (cleared when the kernel refuses it).
    offload: bool,
    /// A segmented message went out: the kernel can do it, so a later refusal is about
    /// that message (its segments were larger than the path MTU the kernel just learned).
    segmented_sent: bool,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch").field("slots", &BATCH).field("slot_len", &SLOT_LEN).finish_non_exhaustive()
    }
}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

impl Batch {
    /// Allocates the slots (zeroed pages: the kernel backs only those that get used).
    #[inline(never)] // called once; kept out of `Agent::new` (the agent's size on small boxes)
    pub fn new() -> Self {
        Batch {
            bufs: vec![0u8; BATCH * SLOT_LEN],
            headers: MultiHeaders::preallocate(BATCH, None),
            segmented: MultiHeaders::preallocate(1, Some(nix::cmsg_space!(u16))),
            lens: [0; BATCH],
            dsts: [None; BATCH],
            locals: [Local::MAIN; BATCH],
            fragments: [false; BATCH],
            offload: ntm_io::udp::segmentation_works(),
            segmented_sent: false,
        }
    }

    /// Forces UDP segmentation offload on or off (tests).
    #[cfg(test)]
    fn with_offload(mut self, on: bool) -> Self {
        self.offload = on;
        self
    }

    /// Slot `i` (an empty slice if `i` is out of range).
    pub fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        self.bufs.get_mut(i * SLOT_LEN..(i + 1) * SLOT_LEN).unwrap_or_default()
    }

    /// Slot `i`, to read (an empty slice if `i` is out of range).
    pub fn slot(&self, i: usize) -> &[u8] {
        self.bufs.get(i * SLOT_LEN..(i + 1) * SLOT_LEN).unwrap_or_default()
    }

    /// Every slot, in order, each [`SLOT_LEN`] bytes: to hand a whole batch to the engine.
    pub fn slots_mut(&mut self) -> std::slice::ChunksExactMut<'_, u8> {
        self.bufs.chunks_exact_mut(SLOT_LEN)
    }

    /// Notes that slot `i` holds nothing to send ([`Batch::send_all`] passes over it).
    pub fn clear(&mut self, i: usize) {
        if let (Some(l), Some(d)) = (self.lens.get_mut(i), self.dsts.get_mut(i)) {
            *l = 0;
            *d = None;
        }
    }

    /// Notes that slot `i` holds `len` bytes to send to `to` from the socket `local`.
    pub fn set(&mut self, i: usize, len: usize, to: SocketAddr, local: Local) {
        if let (Some(l), Some(d), Some(s)) = (self.lens.get_mut(i), self.dsts.get_mut(i), self.locals.get_mut(i)) {
            *l = len.min(SLOT_LEN);
            *d = Some(SockaddrStorage::from(to));
            *s = local;
        }
        if let Some(f) = self.fragments.get_mut(i) {
            *f = false;
        }
    }

    /// Lets slot `i`'s IPv4 datagram go without Don't Fragment (the tunnel sockets set it,
    /// see `ntm_io::udp::dont_fragment`): it is larger than its path and must go anyway,
    /// so the kernel fragments it. It is sent on its own.
    pub fn allow_fragments(&mut self, i: usize) {
        if let Some(f) = self.fragments.get_mut(i) {
            *f = true;
        }
    }

    fn fragments(&self, i: usize) -> bool {
        self.fragments.get(i).copied().unwrap_or(false)
    }

    /// The socket noted for slot `i`.
    fn local(&self, i: usize) -> Local {
        self.locals.get(i).copied().unwrap_or(Local::MAIN)
    }

    /// The destination noted for slot `i`.
    pub fn destination(&self, i: usize) -> Option<SocketAddr> {
        self.dsts.get(i).copied().flatten().as_ref().and_then(ntm_io::udp::socket_addr)
    }

    /// Sends the first `count` slots (noted with [`Batch::set`]) in order, each on its
    /// socket (`fd(is IPv4, socket)`: the tunnel socket of its family for
    /// [`Local::MAIN`]); how many the kernel took and how many it refused (the rest still
    /// go, as one datagram at a time would). Each refused one is shown to `refused` with
    /// its destination, socket, bytes and error.
    pub fn send_all(
        &mut self,
        count: usize,
        fd: impl Fn(bool, Local) -> Option<RawFd>,
        mut refused: impl FnMut(SocketAddr, Local, &[u8], Errno),
    ) -> (u64, u64) {
        let count = count.min(BATCH);
        let (mut sent, mut failed) = (0u64, 0u64);
        let mut i = 0;
        while i < count {
            // A cleared slot (its packet was refused before sealing).
            let Some(v4) = self.destination(i).map(|d| d.is_ipv4()) else {
                i += 1;
                continue;
            };
            let local = self.local(i);
            let Some(fd) = fd(v4, local) else {
                self.report(i, Errno::EAFNOSUPPORT, &mut refused);
                failed += 1;
                i += 1;
                continue;
            };
            let run = self.segment_run(i, count);
            if run.len() >= 2 {
                match self.send_segmented(fd, run.clone()) {
                    Ok(()) => {
                        sent += run.len() as u64;
                        self.segmented_sent = true;
                        i = run.end;
                        continue;
                    }
                    // Segments larger than the path MTU the kernel knows (EINVAL on some
                    // kernels, EMSGSIZE on others) once segmented messages went out.
                    Err(Errno::EINVAL) if self.segmented_sent => {}
                    Err(e @ (Errno::EIO | Errno::EINVAL | Errno::ENOPROTOOPT | Errno::EOPNOTSUPP)) => {
                        log::info!("UDP segmentation offload refused ({e}): sending datagrams one by one");
                        self.offload = false;
                    }
                    // Too big for the route's MTU, or no room: each goes on its own below.
                    Err(_) => {}
                }
            }
            // One by one (many per call): this run, and what follows up to the next run
            // that can be segmented or the next datagram of the other family or socket.
            // A datagram allowed to fragment goes alone (its socket option is set for it).
            let alone = self.fragments(i);
            let mut end = run.end.max(i + 1);
            while end < count
                && !alone
                && !self.fragments(end)
                && self.destination(end).is_some_and(|d| d.is_ipv4() == v4)
                && self.local(end) == local
                && self.segment_run(end, count).len() < 2
            {
                end += 1;
            }
            let mut j = i;
            while j < end {
                let result = if self.fragments(j) {
                    // Without Don't Fragment for this one datagram (see allow_fragments).
                    let _ = ntm_io::udp::dont_fragment(fd, false);
                    let r = self.send(fd, j..j + 1);
                    let _ = ntm_io::udp::dont_fragment(fd, true);
                    r
                } else {
                    self.send(fd, j..end)
                };
                match result {
                    Ok(k) if k > 0 => {
                        sent += k as u64;
                        j += k;
                    }
                    r => {
                        self.report(j, r.err().unwrap_or(Errno::EAGAIN), &mut refused);
                        failed += 1;
                        j += 1;
                    }
                }
            }
            i = end;
        }
        (sent, failed)
    }

    fn report(&self, i: usize, e: Errno, refused: &mut impl FnMut(SocketAddr, Local, &[u8], Errno)) {
        let len = self.lens.get(i).copied().unwrap_or(0);
        let bytes = self.bufs.chunks_exact(SLOT_LEN).nth(i).and_then(|c| c.get(..len));
        if let (Some(to), Some(bytes)) = (self.destination(i), bytes) {
            refused(to, self.local(i), bytes, e);
        }
    }

    /// The slots from `start` that can go as one segmented message: one destination and
    /// socket, the length of the first, except the last, which may be shorter. Just `start` when
    /// offload is off or the first is too large to be sent without fragmentation.
    fn segment_run(&self, start: usize, count: usize) -> Range<usize> {
        let (Some(dst), Some(&seg)) = (self.dsts.get(start).copied().flatten(), self.lens.get(start)) else {
            return start..start + 1;
        };
        let seg_max = if dst.as_sockaddr_in().is_some() { SEGMENT_MAX_V4 } else { SEGMENT_MAX_V6 };
        if !self.offload || seg == 0 || seg > seg_max || self.fragments(start) {
            return start..start + 1;
        }
        let local = self.local(start);
        let key = self.key_id(start);
        let mut end = start + 1;
        let mut total = seg;
        while end < count {
            let (Some(d), Some(&len)) = (self.dsts.get(end).copied().flatten(), self.lens.get(end)) else { break };
            if d != dst
                || self.fragments(end)
                || len > seg
                || len == 0
                || total + len > SEGMENTED_MAX
                || self.local(end) != local
                || self.key_id(end) != key
            {
                break;
            }
            total += len;
            end += 1;
            if len < seg {
                break; // a shorter one ends the run
            }
        }
        start..end
    }

    /// The key id in the header of the datagram in slot `i` (the session, for data). A
    /// segmented message holds one session's datagrams only: a receiver sees it as one
    /// (the kernel picks a relay's worker by the first datagram's key id,
    /// SO_REUSEPORT, and GRO may keep the message whole), so datagrams of two sessions
    /// to one relay in one message would reach one session's worker.
    fn key_id(&self, i: usize) -> Option<&[u8]> {
        self.bufs.chunks_exact(SLOT_LEN).nth(i).and_then(|slot| slot.get(ntm_proto::wire::header_field::KEY_ID))
    }

    /// Sends the slots `run` to their one destination as one message that the kernel cuts
    /// into datagrams of the first slot's length.
    fn send_segmented(&mut self, fd: RawFd, run: Range<usize>) -> nix::Result<()> {
        let seg = self.lens.get(run.start).copied().unwrap_or(0);
        let seg = u16::try_from(seg).map_err(|_| Errno::EMSGSIZE)?;
        let mut iovs: [IoSlice<'_>; BATCH] = std::array::from_fn(|_| IoSlice::new(&[]));
        for ((iov, i), chunk) in iovs.iter_mut().zip(run.clone()).zip(self.bufs.chunks_exact(SLOT_LEN).skip(run.start))
        {
            let len = self.lens.get(i).copied().unwrap_or(0);
            *iov = IoSlice::new(chunk.get(..len).unwrap_or_default());
        }
        let iovs = iovs.get(..run.len()).unwrap_or_default();
        let dst = self.dsts.get(run.start..run.start + 1).unwrap_or_default();
        let message = [iovs];
        let cmsgs = [ControlMessage::UdpGsoSegments(&seg)];
        let segmented = &mut self.segmented;
        let sent = once_more(|| {
            sendmmsg(fd, &mut *segmented, message.iter(), dst, cmsgs, MsgFlags::MSG_DONTWAIT).map(|r| r.count())
        })?;
        if sent == 1 {
            Ok(())
        } else {
            Err(Errno::EAGAIN)
        }
    }

    /// Sends the slots `range` one datagram each, in one call; how many of them, from the
    /// first, the kernel took. An error means the first of them was not sent.
    fn send(&mut self, fd: RawFd, range: Range<usize>) -> nix::Result<usize> {
        let range = range.start.min(BATCH)..range.end.min(BATCH);
        let mut iovs: [[IoSlice<'_>; 1]; BATCH] = std::array::from_fn(|_| [IoSlice::new(&[])]);
        for ((iov, i), chunk) in
            iovs.iter_mut().zip(range.clone()).zip(self.bufs.chunks_exact(SLOT_LEN).skip(range.start))
        {
            let len = self.lens.get(i).copied().unwrap_or(0);
            *iov = [IoSlice::new(chunk.get(..len).unwrap_or_default())];
        }
        let iovs = iovs.get(..range.len()).unwrap_or_default();
        let dsts = self.dsts.get(range).unwrap_or_default();
        let no_cmsgs: [ControlMessage<'_>; 0] = [];
        let headers = &mut self.headers;
        once_more(|| sendmmsg(fd, &mut *headers, iovs, dsts, no_cmsgs, MsgFlags::MSG_DONTWAIT).map(|r| r.count()))
    }
}

/// A send (or receive) system call, made a second time if the first failed with an error
/// that may have been the socket's pending one. The tunnel sockets report ICMP errors
/// (`IP_RECVERR`): the kernel then also keeps the last one as the socket's pending error
/// and fails the socket's next send with it, whatever that send was. Anyone who can
/// guess the two tunnel endpoints can forge such errors (port unreachable, or protocol
/// unreachable, which would have read as "segmentation refused" and turned it off for
/// good); without the second try each one cost a batch of datagrams. A real failure fails
/// again. A full buffer is not retried: it cannot be a pending error.
pub fn once_more<T>(mut call: impl FnMut() -> nix::Result<T>) -> nix::Result<T> {
    // One call site, so that the system call's code is there once (the agent's size).
    let mut first = true;
    loop {
        match call() {
            Err(e) if first && !matches!(e, Errno::EAGAIN | Errno::ENOBUFS) => first = false,
            r => return r,
        }
    }
}

/// The error number of a failed system call (EIO if it had none).
pub fn errno(e: std::io::Error) -> Errno {
    e.raw_os_error().map_or(Errno::EIO, Errno::from_raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// Sends `lens[i]` bytes of value `i` from slot `i` and returns the datagrams received.
    fn round_trip(out: Batch, lens: &[usize]) -> Vec<Vec<u8>> {
        let mut out = out;
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        for (i, len) in lens.iter().enumerate() {
            let slot = &mut out.slot_mut(i)[..*len];
            slot.fill(i as u8);
            // One session's datagrams (runs are cut where the key id changes).
            slot.iter_mut().take(KEY.end).skip(KEY.start).for_each(|b| *b = 0xAB);
            out.set(i, *len, to, Local::MAIN);
        }
        assert_eq!(out.destination(0), Some(to));
        let fd = tx.as_raw_fd();
        assert_eq!(
            out.send_all(
                lens.len(),
                |v4, local| (v4 && local == Local::MAIN).then_some(fd),
                |_, _, _, e| panic!("{e}")
            ),
            (lens.len() as u64, 0)
        );

        // Received one datagram per slot (no coalescing), as sent.
        let mut inb = ntm_io::udp::RecvMany::new(BATCH, SLOT_LEN);
        let mut got = Vec::new();
        for _ in 0..200 {
            match inb.recv(rx.as_raw_fd()) {
                Ok(n) => {
                    for i in 0..n {
                        let r = inb.message(i);
                        assert_eq!(r.from, Some(tx.local_addr().unwrap()));
                        assert!(!r.truncated && r.segment == 0);
                        got.push(inb.bytes()[i * SLOT_LEN..][..r.len].to_vec());
                    }
                }
                Err(Errno::EAGAIN) if got.len() == lens.len() => break,
                Err(Errno::EAGAIN) => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => panic!("{e}"),
            }
        }
        got
    }

    const KEY: Range<usize> = ntm_proto::wire::header_field::KEY_ID;

    fn check(got: &[Vec<u8>], lens: &[usize]) {
        assert_eq!(got.len(), lens.len());
        for (i, (d, len)) in got.iter().zip(lens).enumerate() {
            assert_eq!(d.len(), *len, "datagram {i}");
            let want = |k: usize| if KEY.contains(&k) { 0xAB } else { i as u8 };
            assert!(d.iter().enumerate().all(|(k, b)| *b == want(k)), "datagram {i}");
        }
    }

    /// A UDP socket on loopback that reports ICMP errors, as the tunnel sockets do.
    fn reporting_socket() -> std::net::UdpSocket {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Ipv4RecvErr, &true).unwrap();
        s
    }

    /// Receives on `rx` until `want` datagrams came (or a second passed): their lengths.
    fn lengths(rx: &std::net::UdpSocket, want: usize) -> Vec<usize> {
        rx.set_nonblocking(true).unwrap();
        let (mut got, mut buf) = (Vec::new(), [0u8; 2000]);
        for _ in 0..200 {
            match rx.recv(&mut buf) {
                Ok(n) => got.push(n),
                Err(_) if got.len() >= want => break,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        }
        got
    }

    /// A datagram to a closed port on loopback comes back as ICMP port unreachable: the
    /// kernel keeps it as the socket's pending error and fails the socket's next send
    /// with it, whatever that send is. The batch behind it still goes (found by an
    /// outside tester: forged errors cost the sender a batch each).
    #[test]
    fn a_pending_icmp_error_does_not_cost_the_next_datagrams() {
        let tx = reporting_socket();
        let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let fd = tx.as_raw_fd();
        // Segmented too where the kernel does it right (not under qemu-user for a
        // big-endian guest, where it would glue the datagrams).
        for offload in [false, ntm_io::udp::segmentation_works()] {
            tx.send_to(b"to nobody", closed).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
            let mut out = Batch::new().with_offload(offload);
            for i in 0..3 {
                out.set(i, 500, rx.local_addr().unwrap(), Local::MAIN);
            }
            let sent = out.send_all(3, |_, _| Some(fd), |_, _, _, e| panic!("offload {offload}: refused: {e}"));
            assert_eq!(sent, (3, 0), "offload {offload}");
            assert_eq!(lengths(&rx, 3), vec![500; 3], "offload {offload}");
        }
    }

    /// A forged ICMP "protocol unreachable" about a tunnel socket's datagram leaves the
    /// socket's pending error ENOPROTOOPT, which a segmented send took for the kernel
    /// refusing segmentation and turned it off for good. Needs root (a raw socket).
    #[test]
    fn a_forged_protocol_unreachable_leaves_segmentation_on() {
        use nix::sys::socket::{sendto, socket, AddressFamily, SockFlag, SockProtocol, SockType, SockaddrIn};
        if !ntm_io::udp::segmentation_works() || !nix::unistd::geteuid().is_root() {
            eprintln!("NOTICE: needs root and UDP segmentation offload: nothing to check");
            return;
        }
        let tx = reporting_socket();
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (from, to) = (tx.local_addr().unwrap().port(), rx.local_addr().unwrap().port());
        // ICMP type 3 code 2 quoting an IPv4 header and the UDP header of a datagram from
        // tx to rx.
        let mut icmp = vec![3u8, 2, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&[0x45, 0, 0, 28 + 8, 0, 1, 0x40, 0, 64, 17, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1]);
        icmp.extend_from_slice(&from.to_be_bytes());
        icmp.extend_from_slice(&to.to_be_bytes());
        icmp.extend_from_slice(&[0, 16, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
        let c = !ntm_csum::fold(ntm_csum::sum(&icmp, 0));
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let raw = socket(AddressFamily::Inet, SockType::Raw, SockFlag::empty(), SockProtocol::Icmp).unwrap();
        let lo = SockaddrIn::from(std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 0));
        sendto(raw.as_raw_fd(), &icmp, &lo, MsgFlags::empty()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut out = Batch::new();
        for i in 0..3 {
            out.slot_mut(i).iter_mut().take(KEY.end).skip(KEY.start).for_each(|b| *b = 0xAB);
            out.set(i, 500, rx.local_addr().unwrap(), Local::MAIN);
        }
        let fd = tx.as_raw_fd();
        assert_eq!(out.send_all(3, |_, _| Some(fd), |_, _, _, e| panic!("refused: {e}")), (3, 0));
        assert!(out.offload, "segmentation is still on");
        assert!(out.segmented_sent, "the run went as one segmented message");
        assert_eq!(lengths(&rx, 3), vec![500; 3]);
    }

    #[test]
    fn a_batch_segments_where_the_kernel_trial_says_so() {
        assert_eq!(Batch::new().offload, ntm_io::udp::segmentation_works());
    }

    #[test]
    fn datagrams_go_out_and_come_back_in_order() {
        let lens = [100, 101, 102, 103, 104];
        check(&round_trip(Batch::new().with_offload(false), &lens), &lens);
        check(&round_trip(Batch::new(), &lens), &lens);
    }

    #[test]
    fn runs_of_one_length_are_segmented_into_the_same_datagrams() {
        // Two runs (the second ends with a shorter one), a datagram too large to be
        // segmented, and single ones.
        let lens = [1200, 1200, 1200, 700, 1400, 1400, 3000, 60, 60, 60, 50, 80];
        let b = Batch::new().with_offload(true);
        assert_eq!(b.segment_run(0, 0), 0..1);
        check(&round_trip(Batch::new(), &lens), &lens);
        check(&round_trip(Batch::new().with_offload(false), &lens), &lens);
    }

    #[test]
    fn a_run_stops_at_another_length_or_destination() {
        let mut b = Batch::new().with_offload(true);
        let x: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let y: SocketAddr = "192.0.2.2:4000".parse().unwrap();
        for (i, (len, to)) in [(1000, x), (1000, x), (900, x), (1000, x), (1000, y), (1000, y), (1001, y), (2000, y)]
            .into_iter()
            .enumerate()
        {
            b.set(i, len, to, Local::MAIN);
        }
        assert_eq!(b.segment_run(0, 8), 0..3);
        assert_eq!(b.segment_run(3, 8), 3..4);
        assert_eq!(b.segment_run(4, 8), 4..6);
        assert_eq!(b.segment_run(6, 8), 6..7);
        assert_eq!(b.segment_run(7, 8), 7..8, "over the link MTU: not segmented");
        // Another session's datagram (its key id) to the same destination ends a run: a
        // relay steers the whole message to the worker of the first one's session.
        b.slot_mut(1)[KEY].copy_from_slice(&[0, 0, 0, 7]);
        assert_eq!(b.segment_run(0, 8), 0..1);
        assert_eq!(b.segment_run(1, 8), 1..2);
        b.slot_mut(2)[KEY].copy_from_slice(&[0, 0, 0, 7]);
        assert_eq!(b.segment_run(1, 8), 1..3);
        assert_eq!(b.with_offload(false).segment_run(0, 8), 0..1);
    }

    /// A datagram larger than its path that must go anyway is sent on its own (the socket
    /// without Don't Fragment for it), and everything around it still arrives in order.
    #[test]
    fn a_datagram_allowed_to_fragment_goes_alone() {
        // Segmentation as the start-up trial finds it: qemu-user for a big-endian guest
        // hands the segment size to the host kernel in the guest's byte order.
        let mut b = Batch::new();
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        ntm_io::udp::dont_fragment(tx.as_raw_fd(), true).unwrap();
        let to = rx.local_addr().unwrap();
        for i in 0..6 {
            let slot = &mut b.slot_mut(i)[..1000];
            slot.fill(i as u8);
            slot.iter_mut().take(KEY.end).skip(KEY.start).for_each(|x| *x = 0xAB);
            b.set(i, 1000, to, Local::MAIN);
        }
        b.allow_fragments(2);
        if b.offload {
            assert_eq!(b.segment_run(0, 6), 0..2, "a run stops before it");
            assert_eq!(b.segment_run(3, 6), 3..6);
        }
        assert_eq!(b.segment_run(2, 6), 2..3, "it is a run of its own");
        let fd = tx.as_raw_fd();
        assert_eq!(b.send_all(6, |_, _| Some(fd), |_, _, _, e| panic!("{e}")), (6, 0));
        let mut buf = [0u8; 2000];
        for i in 0..6 {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!((n, buf[KEY.end]), (1000, i as u8));
        }
        b.set(2, 1000, to, Local::MAIN);
        assert!(!b.fragments(2), "set again, the slot is an ordinary one");
        if b.offload {
            assert_eq!(b.segment_run(0, 6), 0..6);
        }
    }

    /// Each datagram leaves from the socket noted for it: a run to one destination is cut
    /// where the socket changes (segmented or not), and the order per socket is kept.
    #[test]
    fn each_datagram_leaves_from_its_socket() {
        // With offload as the start-up trial finds it (an emulator such as qemu-user may
        // not pass UDP segmentation on, and the trial then turns it off), and without.
        for offload in [true, false] {
            let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            rx.set_nonblocking(true).unwrap();
            let to = rx.local_addr().unwrap();
            let main = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let extra = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let (fd_main, fd_extra) = (main.as_raw_fd(), extra.as_raw_fd());
            let mut out = if offload { Batch::new() } else { Batch::new().with_offload(false) };
            let mut runs = Batch::new().with_offload(true);
            // Main, main, extra, extra, main, extra: equal lengths, one destination.
            let locals = [Local::MAIN, Local::MAIN, Local(7), Local(7), Local::MAIN, Local(7)];
            for (i, l) in locals.iter().enumerate() {
                out.slot_mut(i)[..1000].fill(i as u8);
                out.set(i, 1000, to, *l);
                runs.set(i, 1000, to, *l);
            }
            // Segmented runs end where the socket changes.
            assert_eq!(runs.segment_run(0, 6), 0..2);
            assert_eq!(runs.segment_run(2, 6), 2..4);
            let fd = |_: bool, l: Local| Some(if l == Local::MAIN { fd_main } else { fd_extra });
            assert_eq!(out.send_all(6, fd, |_, _, _, e| panic!("{e}")), (6, 0));
            let mut got: Vec<(SocketAddr, u8)> = Vec::new();
            let mut buf = [0u8; 2000];
            for _ in 0..200 {
                match rx.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        assert_eq!(n, 1000);
                        got.push((from, buf[0]));
                    }
                    Err(_) if got.len() == 6 => break,
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                }
            }
            let (m, e) = (main.local_addr().unwrap(), extra.local_addr().unwrap());
            let from_main: Vec<u8> = got.iter().filter(|(f, _)| *f == m).map(|(_, i)| *i).collect();
            let from_extra: Vec<u8> = got.iter().filter(|(f, _)| *f == e).map(|(_, i)| *i).collect();
            assert_eq!((from_main, from_extra), (vec![0, 1, 4], vec![2, 3, 5]), "offload {offload}");
        }
        // A socket that is not open: refused with its socket, the rest still go.
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let main = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let fd_main = main.as_raw_fd();
        let mut out = Batch::new();
        out.set(0, 10, rx.local_addr().unwrap(), Local(3));
        out.set(1, 10, rx.local_addr().unwrap(), Local::MAIN);
        let mut refused = Vec::new();
        let fd = |_: bool, l: Local| (l == Local::MAIN).then_some(fd_main);
        assert_eq!(out.send_all(2, fd, |_, l, _, e| refused.push((l, e))), (1, 1));
        assert_eq!(refused, vec![(Local(3), Errno::EAFNOSUPPORT)]);
    }
}
