//! The RS's relay workers: the UDP side of `ntm-rs`, in batches, on one or more threads.
//!
//! Each worker is a thread with its own UDP socket per listen address. It takes up to
//! [`BATCH`] datagrams per system call (recvmmsg) into slots allocated once, hands each to
//! the engine in place ([`Rs::handle_datagram_on_worker`]: the same checks and counters as
//! any datagram, nothing copied), and sends the forwarded ones in as few calls as it can:
//! a run of datagrams of one length (the last may be shorter) to one destination goes as
//! one message that the kernel cuts into those datagrams (UDP segmentation offload,
//! UDP_SEGMENT), so the stack routes and queues it once; other datagrams go many per call
//! (sendmmsg). A worker also asks the kernel to hand over datagrams that arrived
//! coalesced (UDP_GRO, the receiving half of a peer's segmentation) in one piece, and
//! relays the pieces one by one, each checked and counted like any datagram. Offload is
//! used only after a trial at start-up has shown the kernel cutting a message into the
//! right datagrams (`ntm_io::udp::segmentation_works`), and is given up if the kernel refuses it.
//!
//! All workers share one engine behind a lock, taken once per batch; the control thread
//! (TLS from the DCs, timers, status) takes it for its own calls. A worker drains the
//! datagrams the engine answers with (hole-punch acks, replies to DCs, hints about lost
//! sessions) before it lets go, so an answer leaves from the worker and socket that
//! received what asked for it.
//!
//! With several workers the sockets share the port (SO_REUSEPORT) and the kernel picks a
//! worker for each datagram with a classic BPF program (SO_ATTACH_REUSEPORT_CBPF) that
//! reads the header's key id, which for everything a session carries is the session id:
//! worker `session % workers`. So the two members of a session, writing from different
//! addresses, reach the same worker, and so do a DC's messages under one key. A datagram
//! too short to have a key id goes to worker 0 and is dropped there like anywhere else.

use crate::udp::{packet_info, Local, Locals, ServerUdp};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use nix::errno::Errno;
use nix::sys::socket::{
    cmsg_space, recvmmsg, sendmmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
    MultiHeaders, SockaddrStorage,
};
use ntm_io::Clock;
use ntm_proto::engine::rs::Rs;
use ntm_proto::engine::{Received, Transmit};
use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// Datagrams (or coalesced groups of them) taken per system call.
pub const BATCH: usize = 32;
/// One slot: the largest UDP datagram, or a coalesced group.
const SLOT: usize = 65_536;
/// The most datagrams one coalesced group or one segmented message holds (the kernel's
/// limit, UDP_MAX_SEGMENTS, is 64 on older kernels).
const SEGMENTS_MAX: usize = 64;
/// The largest datagram sent in a segmented run, by family: what a 1500-byte link carries
/// without fragments. Larger ones go one by one.
const SEGMENT_MAX_V4: usize = 1500 - 20 - 8;
const SEGMENT_MAX_V6: usize = 1500 - 40 - 8;
/// The most bytes in one segmented message (under a UDP datagram's limit).
const SEGMENTED_MAX: usize = 65_000;
const WAKE: Token = Token(usize::MAX);

/// A lock on the engine that a panicking holder did not spoil: the engine's state is
/// changed only by whole calls, which do not panic on any input.
pub fn lock(engine: &Mutex<Rs>) -> MutexGuard<'_, Rs> {
    engine.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What one worker did (status).
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Datagrams received (each piece of a coalesced group counts).
    pub datagrams_in: AtomicU64,
    /// Datagrams sent (relayed, and the engine's answers).
    pub datagrams_out: AtomicU64,
    /// Datagrams the engine told this worker to relay.
    pub relayed: AtomicU64,
    /// Datagrams that could not be sent.
    pub send_failures: AtomicU64,
    /// receive calls that returned datagrams.
    pub batches: AtomicU64,
    /// Messages sent with segmentation offload, and the datagrams in them.
    pub segmented_sends: AtomicU64,
    pub segmented_datagrams: AtomicU64,
    /// Groups that arrived coalesced.
    pub coalesced: AtomicU64,
}

impl WorkerStats {
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// As JSON for status.
    pub fn json(&self, index: usize) -> serde_json::Value {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "worker": index,
            "datagrams_in": g(&self.datagrams_in),
            "datagrams_out": g(&self.datagrams_out),
            "relayed": g(&self.relayed),
            "send_failures": g(&self.send_failures),
            "batches": g(&self.batches),
            "segmented_sends": g(&self.segmented_sends),
            "segmented_datagrams": g(&self.segmented_datagrams),
            "coalesced": g(&self.coalesced),
        })
    }
}

/// The gateway's TUN device (see `rs.rs`).
pub struct GatewayTun(pub tun::Device);

impl std::fmt::Debug for GatewayTun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GatewayTun")
    }
}

/// The workers: bound by [`Workers::bind`], running after [`Workers::start`], stopped
/// and joined when dropped.
#[derive(Debug)]
pub struct Workers {
    /// Per worker, its socket of each listen address (until started).
    sockets: Vec<Vec<ServerUdp>>,
    addrs: Vec<SocketAddr>,
    stats: Vec<Arc<WorkerStats>>,
    stop: Arc<AtomicBool>,
    wakers: Vec<Waker>,
    threads: Vec<JoinHandle<()>>,
    /// The gateway's TUN device, where the workers write the boxes' packets to ordinary
    /// hosts ([`Received::Ip`]).
    tun: Option<Arc<GatewayTun>>,
}

fn bind_one(addr: SocketAddr, shared: bool) -> io::Result<UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    if shared {
        setsockopt(&s, sockopt::ReusePort, &true)?;
    }
    s.set_nonblocking(true)?;
    size_buffers(&s);
    s.bind(&addr.into())?;
    Ok(UdpSocket::from_std(s.into()))
}

/// Room in the kernel for relayed datagrams while a worker is busy: a TCP window of a
/// tunnel arrives faster than a worker takes it for a moment, and each datagram the
/// default buffer (about 200 KiB) drops costs the tunnel's application a retransmission.
const RELAY_SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// Sets a relay socket's buffers (as root beyond the sysctl limits, else up to them).
fn size_buffers(s: &socket2::Socket) {
    if !ntm_io::udp::size_buffers(s, RELAY_SOCKET_BUFFER, RELAY_SOCKET_BUFFER) {
        log::debug!("could not size the relay socket's buffers");
    }
}

impl Workers {
    /// Binds `count` sockets on each of `listen` (sharing the port if more than one, a
    /// port of 0 becoming the first socket's), steered by session.
    pub fn bind(listen: &[SocketAddr], count: usize) -> io::Result<Self> {
        let count = count.clamp(1, crate::config::Workers::MAX);
        let shared = count > 1;
        let mut sockets: Vec<Vec<ServerUdp>> = (0..count).map(|_| Vec::new()).collect();
        let mut addrs = Vec::new();
        for &addr in listen {
            let named = |e: io::Error| io::Error::new(e.kind(), format!("cannot bind UDP {addr}: {e}"));
            let first = bind_one(addr, shared).map_err(named)?;
            let bound = first.local_addr()?;
            if shared {
                steer_by_session(&first, count).map_err(|e| {
                    io::Error::new(e.kind(), format!("UDP {addr}: cannot steer datagrams to workers by session: {e}"))
                })?;
            }
            let mut group = vec![first];
            for _ in 1..count {
                group.push(bind_one(SocketAddr::new(addr.ip(), bound.port()), true).map_err(named)?);
            }
            // The kernel numbers a group's sockets in the order they were bound: socket
            // `w` of every address is worker `w`'s, as the steering program expects.
            for (w, sock) in group.into_iter().enumerate() {
                let s = ServerUdp::new(sock, addr).map_err(named)?;
                if let Some(v) = sockets.get_mut(w) {
                    v.push(s);
                }
            }
            addrs.push(bound);
        }
        let stats = (0..count).map(|_| Arc::new(WorkerStats::default())).collect();
        Ok(Workers {
            sockets,
            addrs,
            stats,
            stop: Arc::new(AtomicBool::new(false)),
            wakers: Vec::new(),
            threads: Vec::new(),
            tun: None,
        })
    }

    /// The gateway's TUN device, for the workers to write to (before [`Workers::start`]).
    pub fn set_gateway_tun(&mut self, tun: Arc<GatewayTun>) {
        self.tun = Some(tun);
    }

    /// A copy of the first worker's socket of each listen address (the same socket, so
    /// nothing changes in the steering group), for the gateway to send the answers of
    /// ordinary hosts from the relay's port. Before [`Workers::start`].
    pub fn senders(&self) -> io::Result<Vec<std::net::UdpSocket>> {
        let Some(first) = self.sockets.first() else { return Ok(Vec::new()) };
        first
            .iter()
            .map(|s| {
                let fd = std::os::fd::AsFd::as_fd(&s.sock).try_clone_to_owned()?;
                Ok(std::net::UdpSocket::from(fd))
            })
            .collect()
    }

    /// The bound addresses.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// How many workers.
    pub fn count(&self) -> usize {
        self.stats.len()
    }

    /// Each worker's counters.
    pub fn stats(&self) -> &[Arc<WorkerStats>] {
        &self.stats
    }

    /// Starts the threads over `engine`, on the control thread's `clock`.
    pub fn start(&mut self, engine: &Arc<Mutex<Rs>>, clock: Clock) -> io::Result<()> {
        let offload = ntm_io::udp::segmentation_works();
        // Coalescing on receive (UDP_GRO) only with one worker: the kernel picks the
        // socket of a group of the same addresses and ports by its first datagram, and a
        // box's datagrams of several sessions through this relay share those, so with
        // more workers a group could carry another worker's sessions to this one.
        let gro = self.sockets.len() == 1;
        for (index, mut sockets) in std::mem::take(&mut self.sockets).into_iter().enumerate() {
            let poll = Poll::new()?;
            for (i, s) in sockets.iter_mut().enumerate() {
                poll.registry().register(&mut s.sock, Token(i), Interest::READABLE)?;
                // Coalesced groups are a saving only; a kernel without UDP_GRO sends
                // each datagram as it is.
                if gro {
                    let _ = setsockopt(&s.sock, sockopt::UdpGroSegment, &true);
                }
            }
            self.wakers.push(Waker::new(poll.registry(), WAKE)?);
            let (engine, stats, stop) =
                (Arc::clone(engine), self.stats.get(index).cloned().unwrap_or_default(), Arc::clone(&self.stop));
            let tun = self.tun.clone();
            let thread = std::thread::Builder::new().name(format!("relay-{index}")).spawn(move || {
                let mut w = Worker {
                    index,
                    sockets,
                    poll,
                    locals: Locals::default(),
                    engine,
                    clock,
                    stats,
                    stop,
                    slots: vec![0u8; BATCH * SLOT],
                    received: [Arrived::default(); BATCH],
                    out: Vec::with_capacity(BATCH * SEGMENTS_MAX),
                    answers: Vec::new(),
                    headers: MultiHeaders::preallocate(BATCH, None),
                    offload,
                    tun,
                    to_tun: Vec::new(),
                };
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.run())).is_err() {
                    // A worker gone would leave its share of the sessions unrelayed.
                    log::error!("relay worker {index} failed: stopping");
                    std::process::exit(70);
                }
            })?;
            self.threads.push(thread);
        }
        Ok(())
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for w in &self.wakers {
            let _ = w.wake();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Makes the kernel give each datagram of the port to socket `key id % count` of the
/// group (`sock` is one of them): a classic BPF program run on the UDP payload, whose
/// bytes 4..8 are the header's key id (big-endian, as BPF loads words).
fn steer_by_session(sock: &UdpSocket, count: usize) -> io::Result<()> {
    use nix::libc;
    let count = u32::try_from(count).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let key_id_offset = u32::try_from(ntm_proto::wire::header_field::KEY_ID.start).unwrap_or(4);
    let mut program = [
        // A = the word at the key id (a shorter datagram ends the program with 0: worker 0).
        libc::sock_filter { code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16, jt: 0, jf: 0, k: key_id_offset },
        // A = A % count
        libc::sock_filter { code: (libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K) as u16, jt: 0, jf: 0, k: count },
        // the socket at index A
        libc::sock_filter { code: (libc::BPF_RET | libc::BPF_A) as u16, jt: 0, jf: 0, k: 0 },
    ];
    let fprog = libc::sock_fprog { len: program.len() as u16, filter: program.as_mut_ptr() };
    // SAFETY: setsockopt reads `size_of::<sock_fprog>()` bytes at `&fprog`, a live local,
    // and the kernel copies the `len` instructions `fprog.filter` points to (`program`,
    // alive until this function returns) before the call returns; `sock` is an open socket.
    #[allow(unsafe_code)]
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            std::ptr::from_ref(&fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What one received slot holds.
#[derive(Clone, Copy, Debug, Default)]
struct Arrived {
    len: usize,
    from: Option<SocketAddr>,
    /// The length of each datagram if the slot holds a coalesced group (the last may be
    /// shorter), else 0.
    segment: usize,
}

/// A datagram to send: bytes of the slots, destination, socket, source address.
#[derive(Clone, Copy, Debug)]
struct Out {
    start: usize,
    len: usize,
    to: SocketAddr,
    socket: usize,
    local: Option<Local>,
}

struct Worker {
    index: usize,
    sockets: Vec<ServerUdp>,
    poll: Poll,
    /// The local address each peer wrote to (wildcard sockets), this worker's peers only:
    /// a session's members and a DC's key all come to the same worker.
    locals: Locals,
    engine: Arc<Mutex<Rs>>,
    clock: Clock,
    stats: Arc<WorkerStats>,
    stop: Arc<AtomicBool>,
    slots: Vec<u8>,
    received: [Arrived; BATCH],
    out: Vec<Out>,
    answers: Vec<Transmit>,
    headers: MultiHeaders<SockaddrStorage>,
    offload: bool,
    /// The gateway's TUN device, and the slots' packets for it (start, length).
    tun: Option<Arc<GatewayTun>>,
    to_tun: Vec<(usize, usize)>,
}

impl Worker {
    fn run(&mut self) {
        let mut events = Events::with_capacity(8);
        while !self.stop.load(Ordering::Relaxed) {
            if let Err(e) = self.poll.poll(&mut events, Some(std::time::Duration::from_secs(1))) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("relay worker {}: {e}", self.index);
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                continue;
            }
            // Every socket until all are empty (the readiness is edge-triggered), one
            // batch of each in turn so that none starves the others.
            loop {
                let mut more = false;
                for socket in 0..self.sockets.len() {
                    match self.recv(socket) {
                        Ok(0) => {}
                        Ok(n) => {
                            more = true;
                            self.handle(n);
                            self.send();
                        }
                        Err(Errno::EAGAIN) => {}
                        Err(Errno::EINTR) => more = true,
                        Err(e) => log::debug!("relay worker {}: UDP receive: {e}", self.index),
                    }
                }
                if !more || self.stop.load(Ordering::Relaxed) {
                    break;
                }
            }
        }
    }

    /// Receives up to [`BATCH`] slots from socket `socket`.
    fn recv(&mut self, socket: usize) -> nix::Result<usize> {
        let Some(s) = self.sockets.get(socket) else { return Ok(0) };
        // Fresh headers for each call (three allocations a batch, none a datagram): the
        // kernel writes the lengths of the sender's address and of the control messages
        // back into them, and nix sets neither again, so reused headers would have no
        // room for the next batch's packet info and coalescing sizes (which would then
        // read a coalesced group as one datagram).
        let room = vec![0u8; cmsg_space::<nix::libc::in6_pktinfo>() + cmsg_space::<i32>()];
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, Some(room));
        let mut chunks = self.slots.chunks_exact_mut(SLOT);
        let mut iovs: [[IoSliceMut<'_>; 1]; BATCH] =
            std::array::from_fn(|_| [IoSliceMut::new(chunks.next().unwrap_or_default())]);
        let results = recvmmsg(s.sock.as_raw_fd(), &mut headers, iovs.iter_mut(), MsgFlags::MSG_DONTWAIT, None)?;
        let mut n = 0;
        for (msg, slot) in results.zip(self.received.iter_mut()) {
            let from = msg.address.as_ref().and_then(crate::udp::socket_addr);
            let mut segment = 0;
            let mut dst = None;
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::UdpGroSegments(seg) = c {
                        segment = usize::try_from(seg).unwrap_or(0);
                    } else if let Some(d) = packet_info(&c) {
                        dst = Some(d);
                    }
                }
            }
            if let (Some(from), Some((addr, ifindex))) = (from, dst) {
                self.locals.learn(from, Local { socket, addr, ifindex });
            }
            let len = msg.bytes.min(SLOT);
            if msg.flags.intersects(MsgFlags::MSG_CTRUNC | MsgFlags::MSG_TRUNC) {
                // Without its control messages a coalesced group would pass for one
                // datagram (never seen: the room above fits them all).
                log::debug!("relay worker {}: a datagram with its control messages cut: dropped", self.index);
                *slot = Arrived::default();
                n += 1;
                continue;
            }
            *slot = Arrived { len, from, segment: if segment > 0 && segment < len { segment } else { 0 } };
            n += 1;
        }
        Ok(n)
    }

    /// Hands the `n` received slots to the engine, datagram by datagram, under one lock;
    /// notes what to send.
    fn handle(&mut self, n: usize) {
        self.out.clear();
        let (mut datagrams, mut relayed, mut coalesced) = (0u64, 0u64, 0u64);
        let mut engine = lock(&self.engine);
        // Read under the lock: the engine never sees time go back between workers.
        let now = self.clock.now();
        for (i, a) in self.received.iter().take(n).enumerate() {
            let Some(from) = a.from else { continue };
            let slot = i * SLOT;
            let step = if a.segment > 0 { a.segment } else { a.len.max(1) };
            coalesced += u64::from(a.segment > 0);
            // Each datagram of the slot once; an empty one too (the engine counts it as
            // malformed, as any driver's).
            let mut start = 0;
            loop {
                let len = step.min(a.len - start);
                let Some(bytes) = self.slots.get_mut(slot + start..slot + start + len) else { break };
                datagrams += 1;
                match engine.handle_datagram_on_worker(now, from, bytes, self.index) {
                    // A gateway session's packet for an ordinary host, rewritten in place.
                    Received::Ip(r) => self.to_tun.push((slot + start + r.start, r.len())),
                    Received::Forward(to) => {
                        relayed += 1;
                        let socket = self.sockets.iter().position(|s| s.v4 == to.is_ipv4());
                        let local = self.locals.get(&to);
                        let socket = local.map(|l| l.socket).or(socket);
                        if let Some(socket) = socket {
                            self.out.push(Out { start: slot + start, len, to, socket, local });
                        } else {
                            WorkerStats::add(&self.stats.send_failures, 1);
                        }
                    }
                    Received::Dropped(why) => log::trace!("dropped a datagram from {from}: {}", why.name()),
                    Received::Handled => {}
                }
                start += len;
                if start >= a.len {
                    break;
                }
            }
        }
        while let Some(t) = engine.poll_udp_transmit() {
            self.answers.push(t);
        }
        drop(engine);
        WorkerStats::add(&self.stats.batches, 1);
        WorkerStats::add(&self.stats.datagrams_in, datagrams);
        WorkerStats::add(&self.stats.relayed, relayed);
        WorkerStats::add(&self.stats.coalesced, coalesced);
    }

    /// Sends what [`Worker::handle`] noted, then the engine's answers.
    fn send(&mut self) {
        for (start, len) in self.to_tun.drain(..) {
            let packet = self.slots.get(start..start + len).unwrap_or_default();
            if let Some(tun) = &self.tun {
                if tun.0.send(packet).is_err() {
                    WorkerStats::add(&self.stats.send_failures, 1);
                }
            }
        }
        let mut i = 0;
        while i < self.out.len() {
            let run = self.segment_run(i);
            if run > 1 {
                match self.send_segmented(i, run) {
                    Ok(()) => {
                        WorkerStats::add(&self.stats.datagrams_out, run as u64);
                        WorkerStats::add(&self.stats.segmented_sends, 1);
                        WorkerStats::add(&self.stats.segmented_datagrams, run as u64);
                        i += run;
                        continue;
                    }
                    Err(e @ (Errno::EIO | Errno::EINVAL | Errno::ENOPROTOOPT | Errno::EOPNOTSUPP)) => {
                        log::info!("relay worker {}: UDP segmentation refused ({e}): not used again", self.index);
                        self.offload = false;
                    }
                    // No room, or too big for the route: each on its own below.
                    Err(_) => {}
                }
            }
            // Many per call: from here to the next run that can be segmented, on one
            // socket, without a source address to give.
            let Some(first) = self.out.get(i).copied() else { break };
            let mut end = i + 1;
            if first.local.is_none() {
                while end < self.out.len() && end - i < BATCH {
                    let Some(o) = self.out.get(end) else { break };
                    if o.socket != first.socket || o.local.is_some() || self.segment_run(end) > 1 {
                        break;
                    }
                    end += 1;
                }
            }
            self.send_many(i, end);
            i = end;
        }
        for t in std::mem::take(&mut self.answers) {
            let socket = self.sockets.iter().position(|s| s.v4 == t.dst.is_ipv4());
            let local = self.locals.get(&t.dst);
            match local.map(|l| l.socket).or(socket) {
                Some(socket) => {
                    send_one(&self.sockets, &mut self.locals, &self.stats, (socket, t.dst, local), &t.payload)
                }
                None => WorkerStats::add(&self.stats.send_failures, 1),
            }
        }
    }

    /// How many datagrams from `i` can go as one segmented message: one destination,
    /// socket and source, the length of the first (the last may be shorter), at most
    /// [`SEGMENTS_MAX`] and [`SEGMENTED_MAX`] bytes.
    fn segment_run(&self, i: usize) -> usize {
        let Some(first) = self.out.get(i) else { return 0 };
        let max = if first.to.is_ipv4() { SEGMENT_MAX_V4 } else { SEGMENT_MAX_V6 };
        if !self.offload || first.len > max || first.len == 0 {
            return 1;
        }
        let mut total = first.len;
        let mut n = 1;
        for o in self.out.iter().skip(i + 1).take(SEGMENTS_MAX - 1) {
            if o.to != first.to
                || o.socket != first.socket
                || o.local != first.local
                || o.len > first.len
                || o.len == 0
                || total + o.len > SEGMENTED_MAX
            {
                break;
            }
            total += o.len;
            n += 1;
            if o.len < first.len {
                break;
            }
        }
        n
    }

    fn send_segmented(&mut self, i: usize, run: usize) -> nix::Result<()> {
        let Some(first) = self.out.get(i).copied() else { return Ok(()) };
        let Some(s) = self.sockets.get(first.socket) else { return Err(Errno::EBADF) };
        let segment = u16::try_from(first.len).map_err(|_| Errno::EMSGSIZE)?;
        let mut iovs: [IoSlice<'_>; SEGMENTS_MAX] = std::array::from_fn(|_| IoSlice::new(&[]));
        for (iov, o) in iovs.iter_mut().zip(self.out.iter().skip(i).take(run)) {
            *iov = IoSlice::new(self.slots.get(o.start..o.start + o.len).unwrap_or_default());
        }
        let iovs = iovs.get(..run).unwrap_or_default();
        let to = SockaddrStorage::from(first.to);
        let gso = ControlMessage::UdpGsoSegments(&segment);
        let info = first.local.filter(|_| s.wildcard).map(crate::udp::SourceInfo::new);
        match info.as_ref().map(crate::udp::SourceInfo::message) {
            Some(pi) => sendmsg(s.sock.as_raw_fd(), iovs, &[gso, pi], MsgFlags::MSG_DONTWAIT, Some(&to)),
            None => sendmsg(s.sock.as_raw_fd(), iovs, &[gso], MsgFlags::MSG_DONTWAIT, Some(&to)),
        }
        .map(|_| ())
    }

    /// Sends `self.out[i..end]` (one socket): many per call when they need no source
    /// address, else one by one.
    fn send_many(&mut self, i: usize, end: usize) {
        let Some(first) = self.out.get(i).copied() else { return };
        if first.local.is_some() || end - i == 1 {
            for j in i..end {
                let Some(o) = self.out.get(j).copied() else { continue };
                let bytes = self.slots.get(o.start..o.start + o.len).unwrap_or_default();
                send_one(&self.sockets, &mut self.locals, &self.stats, (o.socket, o.to, o.local), bytes);
            }
            return;
        }
        let Some(s) = self.sockets.get(first.socket) else { return };
        let mut j = i;
        while j < end {
            let count = (end - j).min(BATCH);
            let mut iovs: [[IoSlice<'_>; 1]; BATCH] = std::array::from_fn(|_| [IoSlice::new(&[])]);
            let mut dsts: [Option<SockaddrStorage>; BATCH] = [None; BATCH];
            for ((iov, dst), o) in iovs.iter_mut().zip(dsts.iter_mut()).zip(self.out.iter().skip(j).take(count)) {
                *iov = [IoSlice::new(self.slots.get(o.start..o.start + o.len).unwrap_or_default())];
                *dst = Some(SockaddrStorage::from(o.to));
            }
            let iovs = iovs.get(..count).unwrap_or_default();
            let dsts = dsts.get(..count).unwrap_or_default();
            let none: [ControlMessage<'_>; 0] = [];
            match sendmmsg(s.sock.as_raw_fd(), &mut self.headers, iovs, dsts, none, MsgFlags::MSG_DONTWAIT) {
                Ok(sent) => {
                    let k = sent.count();
                    WorkerStats::add(&self.stats.datagrams_out, k as u64);
                    if k < count {
                        // The next one was refused (the error comes again on its own).
                        WorkerStats::add(&self.stats.send_failures, 1);
                    }
                    j += k + usize::from(k < count);
                }
                Err(e) => {
                    log::debug!("relay worker {}: UDP send: {e}", self.index);
                    WorkerStats::add(&self.stats.send_failures, 1);
                    j += 1;
                }
            }
        }
    }
}

/// Sends one datagram on socket `socket` to `to`, from `local` if known (a wildcard
/// socket's), as the driver does.
fn send_one(
    sockets: &[ServerUdp],
    locals: &mut Locals,
    stats: &WorkerStats,
    (socket, to, local): (usize, SocketAddr, Option<Local>),
    bytes: &[u8],
) {
    let Some(s) = sockets.get(socket) else { return };
    let mut sent = s.send(bytes, to, local);
    if let (Err(e), Some(_)) = (&sent, local) {
        // The address the peer wrote to is gone from the host: the kernel's choice.
        if matches!(e.raw_os_error(), Some(99 | 22)) {
            locals.forget(&to);
            sent = s.send(bytes, to, None);
        }
    }
    match sent {
        Ok(()) => WorkerStats::add(&stats.datagrams_out, 1),
        Err(e) => {
            log::debug!("relay: UDP send to {to}: {e}");
            WorkerStats::add(&stats.send_failures, 1);
        }
    }
}

#[cfg(test)]
// A kernel without segmentation offload skips a part, and says so.
#[allow(clippy::print_stderr)]
mod tests {
    use super::*;
    use ntm_proto::engine::rs::RsConfig;
    use std::net::Ipv4Addr;

    /// A worker on one socket of 127.0.0.1 (not started: the test calls its steps).
    fn worker(offload: bool) -> Worker {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let mut w = Workers::bind(&[addr], 1).unwrap();
        let sockets = w.sockets.pop().unwrap();
        let _ = setsockopt(&sockets[0].sock, sockopt::UdpGroSegment, &true);
        let name = ntm_proto::wire::Fqdn::new("rs1.test").unwrap();
        let rs = Rs::new(RsConfig::new(name, vec![sockets[0].sock.local_addr().unwrap()])).unwrap();
        Worker {
            index: 0,
            sockets,
            poll: Poll::new().unwrap(),
            locals: Locals::default(),
            engine: Arc::new(Mutex::new(rs)),
            clock: Clock::start(),
            stats: Arc::default(),
            stop: Arc::default(),
            slots: vec![0u8; BATCH * SLOT],
            received: [Arrived::default(); BATCH],
            out: Vec::new(),
            answers: Vec::new(),
            headers: MultiHeaders::preallocate(BATCH, None),
            offload,
            tun: None,
            to_tun: Vec::new(),
        }
    }

    fn receiver() -> std::net::UdpSocket {
        let rx = std::net::UdpSocket::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
        rx
    }

    #[test]
    fn relayed_datagrams_leave_whole_and_in_order_with_or_without_segmentation() {
        // Runs of one length to one destination (the last shorter), a lone one, and one
        // to another destination in the middle.
        let lens = [1200, 1200, 1200, 700, 1300, 90, 90, 1200, 1200];
        for offload in [false, true] {
            if offload && !ntm_io::udp::segmentation_works() {
                eprintln!("NOTICE: no UDP segmentation offload here: only the plain path was tested");
                continue;
            }
            let mut w = worker(offload);
            let (rx, other) = (receiver(), receiver());
            let (to, to_other) = (rx.local_addr().unwrap(), other.local_addr().unwrap());
            for (i, len) in lens.iter().enumerate() {
                let start = i * SLOT + 3; // not at the start of a slot, as a coalesced group's pieces
                w.slots[start..start + len].fill(u8::try_from(i).unwrap());
                let dst = if i == 4 { to_other } else { to };
                w.out.push(Out { start, len: *len, to: dst, socket: 0, local: None });
            }
            w.send();
            let mut buf = [0u8; 2048];
            for (i, len) in lens.iter().enumerate() {
                let sock = if i == 4 { &other } else { &rx };
                let n = sock.recv(&mut buf).unwrap();
                assert_eq!(n, *len, "datagram {i}, offload {offload}");
                assert!(buf[..n].iter().all(|b| usize::from(*b) == i), "datagram {i} whole, offload {offload}");
            }
            let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
            assert_eq!(g(&w.stats.datagrams_out), lens.len() as u64);
            assert_eq!(g(&w.stats.send_failures), 0);
            // With offload: [1200 x3, 700], [90, 90] and [1200, 1200] went segmented.
            let want = if offload { (3, 8) } else { (0, 0) };
            assert_eq!((g(&w.stats.segmented_sends), g(&w.stats.segmented_datagrams)), want);
        }
    }

    #[test]
    fn each_datagram_of_a_coalesced_group_and_an_empty_one_go_to_the_engine() {
        let mut w = worker(false);
        let from = SocketAddr::from((Ipv4Addr::LOCALHOST, 9));
        w.slots[..350].fill(0xff); // no header of this version: each piece is refused alone
        w.received[0] = Arrived { len: 350, from: Some(from), segment: 100 };
        w.received[1] = Arrived { len: 0, from: Some(from), segment: 0 };
        w.handle(2);
        let drops = ntm_proto::engine::Engine::drops(&*lock(&w.engine)).clone();
        let version = drops.get(ntm_proto::engine::DropReason::Version);
        let malformed = drops.get(ntm_proto::engine::DropReason::Malformed);
        assert_eq!((version, malformed), (4, 1), "{drops:?}");
        assert_eq!(w.stats.datagrams_in.load(Ordering::Relaxed), 5);
        assert_eq!(w.stats.coalesced.load(Ordering::Relaxed), 1);
        assert!(w.out.is_empty());
    }

    /// Also after a batch that came without control messages (the kernel writes their
    /// length, 0, back into the message headers).
    #[test]
    fn a_coalesced_group_arrives_with_its_datagram_length() {
        if !ntm_io::udp::segmentation_works() {
            eprintln!("NOTICE: no UDP segmentation offload here: no coalesced group to receive");
            return;
        }
        let mut w = worker(true);
        let to = SockaddrStorage::from(w.sockets[0].sock.local_addr().unwrap());
        let tx = std::net::UdpSocket::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
        let recv = |w: &mut Worker| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            loop {
                match w.recv(0) {
                    Ok(n) if n > 0 => break n,
                    _ => assert!(std::time::Instant::now() < deadline, "nothing arrived"),
                }
            }
        };
        tx.send_to(&[1u8; 40], w.sockets[0].sock.local_addr().unwrap()).unwrap();
        assert_eq!((recv(&mut w), w.received[0].len, w.received[0].segment), (1, 40, 0));
        let message = [9u8; 350];
        let segment: u16 = 100;
        let iov = [IoSlice::new(&message)];
        sendmsg(tx.as_raw_fd(), &iov, &[ControlMessage::UdpGsoSegments(&segment)], MsgFlags::empty(), Some(&to))
            .unwrap();
        let n = recv(&mut w);
        // Over loopback a segmented message reaches a socket with UDP_GRO whole.
        let a = w.received[0];
        assert_eq!((n, a.len, a.segment), (1, 350, 100));
        assert_eq!(a.from, Some(tx.local_addr().unwrap()));
    }
}
