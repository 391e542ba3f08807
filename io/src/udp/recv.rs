//! Many UDP messages per system call (recvmmsg) into slots allocated once, with each
//! message's sender and, for a socket with `UDP_GRO`, the datagram length of a coalesced
//! group.
//!
//! With `UDP_GRO` (Linux 5.0) the kernel queues a run of datagrams of one flow, all of one
//! length but the last, as one message: a peer's segmented send arrives as it was sent,
//! and a network card's receive offload joins datagrams the same way. The stack then does
//! its per-datagram work once per run, in the softirq of whoever sent it (on one machine,
//! the sender), instead of cutting the run up again before the socket's queue. A message
//! carries its datagram length in a control message; the reader cuts it up
//! ([`Message::datagrams`]). A slot must hold the largest message (64 KiB): a shorter one
//! would cut a group short.
//!
//! nix's `recvmmsg` does not set the lengths of the sender's address and of the control
//! room again before each call, and the kernel writes back what it used (nothing, for a
//! message without control data): reused headers would then have no room for a later
//! group's length, which would pass for one long datagram. This sets both on every call
//! and allocates nothing after [`RecvMany::new`].

use nix::errno::Errno;
use nix::libc;
use nix::sys::socket::SockaddrStorage;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

/// Control room per message, in 8-byte words: one `UDP_GRO` message (24 bytes on 64-bit
/// targets, 16 on 32-bit ones) with room to spare.
const CONTROL_WORDS: usize = 8;

/// The largest UDP message: a slot this long holds any coalesced group.
pub const GROUP_MAX: usize = 65_536;

/// What one received message holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Message {
    /// Bytes in the slot.
    pub len: usize,
    /// The sender (None if the kernel gave no IPv4 or IPv6 address).
    pub from: Option<SocketAddr>,
    /// The length of each datagram of a coalesced group (the last may be shorter); 0 for
    /// a single datagram.
    pub segment: usize,
    /// The message was longer than the slot, or its control messages did not fit: the
    /// slot holds only its start, or a group that cannot be cut up. To be dropped.
    pub truncated: bool,
}

impl Message {
    /// How far apart its datagrams start: `segment` for a group, else past the end (at
    /// least 1, so that an empty datagram is one too).
    pub fn step(&self) -> usize {
        if self.segment > 0 && self.segment < self.len {
            self.segment
        } else {
            self.len.max(1)
        }
    }

    /// The datagrams of the message as ranges of its slot, in order: one for a single
    /// datagram (an empty one too), `segment` bytes each for a group.
    pub fn datagrams(&self) -> impl Iterator<Item = std::ops::Range<usize>> {
        let (step, len) = (self.step(), self.len);
        (0..len.max(1)).step_by(step).map(move |s| s..(s + step).min(len))
    }
}

/// Room the kernel writes for one message besides its slot: the sender's address and
/// the control messages; and the slot's iovec.
#[derive(Clone, Copy)]
struct Entry {
    name: SockaddrStorage,
    control: [u64; CONTROL_WORDS],
    iov: libc::iovec,
}

/// Slots and the kernel's message headers for [`RecvMany::recv`].
pub struct RecvMany {
    slot_len: usize,
    bufs: Vec<u8>,
    entries: Vec<Entry>,
    /// The headers, one after the other as recvmmsg takes them.
    hdrs: Vec<libc::mmsghdr>,
}

impl std::fmt::Debug for RecvMany {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvMany").field("slots", &self.hdrs.len()).field("slot_len", &self.slot_len).finish()
    }
}

impl RecvMany {
    /// `slots` slots of `slot_len` bytes each (zeroed pages: the kernel backs only those
    /// that get written).
    #[allow(unsafe_code)]
    pub fn new(slots: usize, slot_len: usize) -> Self {
        // SAFETY: all-zero bytes are a valid value of these plain C structures (null
        // pointers, zero lengths); `recv` sets every field the kernel reads before a call.
        let (entry, hdr) = unsafe { (std::mem::zeroed::<Entry>(), std::mem::zeroed::<libc::mmsghdr>()) };
        RecvMany { slot_len, bufs: vec![0u8; slots * slot_len], entries: vec![entry; slots], hdrs: vec![hdr; slots] }
    }

    /// How many slots one call fills at most.
    pub fn slots(&self) -> usize {
        self.hdrs.len()
    }

    /// The length of each slot.
    pub fn slot_len(&self) -> usize {
        self.slot_len
    }

    /// What the last [`RecvMany::recv`] put in slot `i`, for `i` under the count it
    /// returned (an empty message past the slots).
    pub fn message(&self, i: usize) -> Message {
        read(self.slot_len, self.hdrs.get(i), self.entries.get(i))
    }

    /// All slots, one after the other: slot `i` starts at `i * slot_len()`.
    pub fn bytes(&self) -> &[u8] {
        &self.bufs
    }

    /// Receives up to [`RecvMany::slots`] messages from the non-blocking socket `fd`; how
    /// many. Fewer than the slots means the socket's queue ran empty (or an error came
    /// after some messages; the kernel reports it on the next call).
    #[allow(unsafe_code)]
    pub fn recv(&mut self, fd: RawFd) -> nix::Result<usize> {
        let name_len = std::mem::size_of::<SockaddrStorage>();
        let control_len = std::mem::size_of::<[u64; CONTROL_WORDS]>();
        let slots = self.bufs.chunks_exact_mut(self.slot_len.max(1));
        let mut count = 0;
        for ((hdr, e), slot) in self.hdrs.iter_mut().zip(&mut self.entries).zip(slots) {
            e.iov.iov_base = slot.as_mut_ptr().cast();
            e.iov.iov_len = slot.len();
            let h = &mut hdr.msg_hdr;
            h.msg_name = std::ptr::from_mut(&mut e.name).cast();
            h.msg_namelen = name_len as libc::socklen_t;
            h.msg_iov = std::ptr::from_mut(&mut e.iov);
            h.msg_iovlen = 1;
            h.msg_control = e.control.as_mut_ptr().cast();
            h.msg_controllen = control_len as _;
            h.msg_flags = 0;
            hdr.msg_len = 0;
            count += 1;
        }
        // SAFETY: the first `count` headers point at this struct's own names, iovecs
        // (each one slot of `bufs`) and control buffers, with their true lengths, set just
        // above; none of them moves or is touched until the call returns.
        let r =
            unsafe { libc::recvmmsg(fd, self.hdrs.as_mut_ptr(), count as _, libc::MSG_DONTWAIT, std::ptr::null_mut()) };
        Errno::result(r).map(|n| n as usize)
    }

    /// The slots to change in place, and what the last [`RecvMany::recv`] put in each
    /// (as [`RecvMany::message`]).
    pub fn parts_mut(&mut self) -> (&mut [u8], impl Fn(usize) -> Message + '_) {
        let (slot_len, hdrs, entries) = (self.slot_len, &self.hdrs, &self.entries);
        (&mut self.bufs, move |i| read(slot_len, hdrs.get(i), entries.get(i)))
    }
}

/// What the kernel wrote of one message into `hdr` and `e` (a slot of `slot_len` bytes).
#[inline(never)] // one copy for the receive path and the start-up trial (the agent's size)
fn read(slot_len: usize, hdr: Option<&libc::mmsghdr>, e: Option<&Entry>) -> Message {
    let (Some(hdr), Some(e)) = (hdr, e) else { return Message::default() };
    let bytes = hdr.msg_len as usize;
    Message {
        len: bytes.min(slot_len),
        from: if hdr.msg_hdr.msg_namelen > 0 { super::socket_addr(&e.name) } else { None },
        segment: group_segment(&hdr.msg_hdr),
        truncated: hdr.msg_hdr.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 || bytes > slot_len,
    }
}

/// The datagram length of a coalesced group from a received message's control messages
/// (0: none, a single datagram).
#[allow(unsafe_code)]
fn group_segment(hdr: &libc::msghdr) -> usize {
    // SAFETY: `hdr` is a header the kernel just filled: its control pointer and length
    // (set back by the kernel to what it wrote) describe a live buffer of this struct, and
    // CMSG_FIRSTHDR looks only within them. The only control message asked for is this
    // one, so it comes first if at all; its data is read unaligned, as an int.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(hdr);
        if c.is_null() || (*c).cmsg_level != libc::SOL_UDP || (*c).cmsg_type != libc::UDP_GRO {
            return 0;
        }
        usize::try_from(std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>())).unwrap_or(0)
    }
}

/// Asks the kernel to queue runs of datagrams as coalesced groups (`UDP_GRO`) on `fd`,
/// once [`super::coalescing_works`] has shown that it can.
pub fn coalesce(fd: impl std::os::fd::AsFd) -> nix::Result<()> {
    nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::UdpGroSegment, &true)
}

/// The coalescing trial (see [`super::coalescing_works`]) on the sockets of the
/// segmentation trial, which passed.
pub(super) fn try_coalescing(rx: &std::net::UdpSocket, tx: &std::net::UdpSocket) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    coalesce(rx)?;
    super::send_trial(rx, tx)?;
    let mut inbox = RecvMany::new(1, 1024);
    for _ in 0..40 {
        if inbox.recv(rx.as_raw_fd()).is_ok() {
            // One message: the whole trial, with its datagram length.
            let m = inbox.message(0);
            return Ok(m.len == 250 && m.segment == 100 && !m.truncated);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, SockaddrStorage};
    use std::os::fd::AsRawFd;

    fn pair(addr: &str) -> (std::net::UdpSocket, std::net::UdpSocket) {
        let rx = std::net::UdpSocket::bind(addr).unwrap();
        rx.set_nonblocking(true).unwrap();
        (rx, std::net::UdpSocket::bind(addr).unwrap())
    }

    /// Receives until `want` messages came (or a second passed).
    fn recv_all(inbox: &mut RecvMany, fd: RawFd, want: usize) -> Vec<(Message, Vec<u8>)> {
        let mut out = Vec::new();
        for _ in 0..200 {
            match inbox.recv(fd) {
                Ok(n) => {
                    for i in 0..n {
                        let m = inbox.message(i);
                        let start = i * inbox.slot_len();
                        out.push((m, inbox.bytes()[start..start + m.len].to_vec()));
                    }
                }
                Err(Errno::EAGAIN) if out.len() >= want => break,
                Err(Errno::EAGAIN) => std::thread::sleep(std::time::Duration::from_millis(5)),
                Err(e) => panic!("{e}"),
            }
        }
        out
    }

    fn send_segmented(tx: &std::net::UdpSocket, to: SocketAddr, message: &[u8], segment: u16) {
        let to = SockaddrStorage::from(to);
        let cmsgs = [ControlMessage::UdpGsoSegments(&segment)];
        sendmsg(tx.as_raw_fd(), &[io::IoSlice::new(message)], &cmsgs, MsgFlags::empty(), Some(&to)).unwrap();
    }

    #[test]
    fn a_group_is_cut_into_its_datagrams() {
        let m = Message { len: 250, from: None, segment: 100, truncated: false };
        assert_eq!(m.datagrams().collect::<Vec<_>>(), vec![0..100, 100..200, 200..250]);
        let m = Message { len: 200, segment: 100, ..m };
        assert_eq!(m.datagrams().collect::<Vec<_>>(), vec![0..100, 100..200]);
        // A single datagram, an empty one, and a length no smaller than the message.
        for (len, segment) in [(90, 0), (0, 0), (90, 90), (90, 200), (0, 100)] {
            let m = Message { len, segment, ..m };
            assert_eq!(m.datagrams().collect::<Vec<_>>(), vec![0..len], "{len} {segment}");
        }
    }

    #[test]
    fn senders_of_both_families_come_through_one_set_of_headers() {
        let mut inbox = RecvMany::new(4, 2048);
        for addr in ["127.0.0.1:0", "[::1]:0", "127.0.0.1:0", "[::1]:0"] {
            let (rx, tx) = pair(addr);
            for k in 0..3u8 {
                tx.send_to(&[k; 7], rx.local_addr().unwrap()).unwrap();
            }
            let got = recv_all(&mut inbox, rx.as_raw_fd(), 3);
            let from = Some(tx.local_addr().unwrap());
            let want: Vec<_> =
                (0..3u8).map(|k| (Message { len: 7, from, segment: 0, truncated: false }, vec![k; 7])).collect();
            assert_eq!(got, want, "{addr}");
        }
    }

    #[test]
    fn a_message_longer_than_its_slot_is_marked_truncated() {
        let (rx, tx) = pair("127.0.0.1:0");
        tx.send_to(&[1u8; 300], rx.local_addr().unwrap()).unwrap();
        tx.send_to(&[2u8; 100], rx.local_addr().unwrap()).unwrap();
        let mut inbox = RecvMany::new(4, 200);
        let got = recv_all(&mut inbox, rx.as_raw_fd(), 2);
        assert_eq!(got.len(), 2);
        assert!(got[0].0.truncated && got[0].0.len == 200, "{:?}", got[0].0);
        assert!(!got[1].0.truncated && got[1].0.len == 100, "{:?}", got[1].0);
    }

    /// Groups, single datagrams, then groups again through the same headers: the control
    /// room is given again on every call (with nix's recvmmsg the group after a single
    /// datagram arrived without its length and passed for one datagram).
    #[test]
    #[allow(clippy::print_stderr)]
    fn groups_keep_their_datagram_length_after_single_datagrams() {
        if !super::super::coalescing_works() {
            eprintln!("NOTICE: no UDP receive coalescing here (qemu-user or an old kernel): nothing to check");
            return;
        }
        let (rx, tx) = pair("127.0.0.1:0");
        coalesce(&rx).unwrap();
        let to = rx.local_addr().unwrap();
        let mut inbox = RecvMany::new(2, GROUP_MAX);
        let message: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        for round in 0..3 {
            send_segmented(&tx, to, &message, 1400);
            let got = recv_all(&mut inbox, rx.as_raw_fd(), 1);
            assert_eq!(got.len(), 1, "round {round}");
            assert_eq!((got[0].0.segment, got[0].0.len), (1400, 3000), "round {round}");
            assert_eq!(got[0].1, message);
            tx.send_to(&[9u8; 50], to).unwrap();
            let got = recv_all(&mut inbox, rx.as_raw_fd(), 1);
            assert_eq!(got.iter().map(|g| (g.0.segment, g.0.len)).collect::<Vec<_>>(), vec![(0, 50)]);
        }
    }
}
