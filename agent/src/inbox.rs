//! The receiving side of the tunnel sockets: many messages per system call
//! (`ntm_io::udp::RecvMany`), handed to the engine [`BATCH`] datagrams at a time.
//!
//! Where the kernel can (`ntm_io::udp::coalescing_works`, and `udp_coalescing` in the
//! configuration), the tunnel sockets take coalesced groups (`UDP_GRO`): a peer's
//! segmented send arrives whole, one message of up to 64 KiB, so the kernel does not cut
//! it up again in the sender's softirq before the socket's queue, and one receive takes a
//! whole run. Slots must then hold 64 KiB each, so there are fewer of them
//! ([`GROUP_SLOTS`], 512 KiB in all); without coalescing, [`BATCH`] slots of the largest
//! tunnel datagram (397 KiB in all), as before. A group is cut into its datagrams here;
//! the engine sees the same datagrams either way. Nothing here allocates after
//! [`Inbox::new`].

use crate::batch::{BATCH, SLOT_LEN};
use ntm_io::udp::{RecvMany, GROUP_MAX};
use std::net::SocketAddr;
use std::ops::Range;
use std::os::fd::RawFd;

/// Slots with coalescing: each holds a group of up to 64 KiB.
pub const GROUP_SLOTS: usize = 8;

/// Where [`Inbox::next_datagrams`] goes on from: a message of the last receive, and the
/// offset of its next datagram.
#[derive(Debug, Default, Clone, Copy)]
pub struct Cursor {
    msg: usize,
    at: usize,
}

/// What [`Inbox::next_datagrams`] passed over, for the counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Datagrams (a truncated message or one without a sender counts once).
    pub datagrams: u64,
    /// Messages longer than a slot (dropped).
    pub truncated: u64,
    /// Messages that were coalesced groups.
    pub groups: u64,
}

/// The slots of the receiving side.
#[derive(Debug)]
pub struct Inbox {
    recv: RecvMany,
}

impl Inbox {
    /// Slots for coalesced groups (`coalescing`: the sockets take `UDP_GRO`) or for single
    /// datagrams.
    pub fn new(coalescing: bool) -> Self {
        let recv = if coalescing { RecvMany::new(GROUP_SLOTS, GROUP_MAX) } else { RecvMany::new(BATCH, SLOT_LEN) };
        Inbox { recv }
    }

    /// Whether the slots hold coalesced groups (the sockets may be asked for them).
    pub fn coalescing(&self) -> bool {
        self.recv.slot_len() == GROUP_MAX
    }

    /// The most messages one [`Inbox::recv`] takes.
    pub fn slots(&self) -> usize {
        self.recv.slots()
    }

    /// Receives up to [`Inbox::slots`] messages from the non-blocking socket `fd`; how
    /// many (fewer: the socket's queue ran empty).
    pub fn recv(&mut self, fd: RawFd) -> nix::Result<usize> {
        self.recv.recv(fd)
    }

    /// Bytes of the slots, by a range [`Inbox::next_datagrams`] gave (an empty slice if
    /// it is out of range).
    pub fn get(&self, range: Range<usize>) -> &[u8] {
        self.recv.bytes().get(range).unwrap_or_default()
    }

    /// Fills `out` with the next datagrams of the first `n` messages of the last receive,
    /// from `at` on, each with its sender, until `out` is full or the messages end (then
    /// [`Inbox::done`]); `starts` gets where each begins in the slots (for
    /// [`Inbox::get`]). Truncated messages and those without a sender are passed over and
    /// counted in `tally`.
    pub fn next_datagrams<'a>(
        &'a mut self,
        n: usize,
        at: &mut Cursor,
        out: &mut heapless::Vec<(SocketAddr, &'a mut [u8]), BATCH>,
        starts: &mut heapless::Vec<usize, BATCH>,
        tally: &mut Tally,
    ) {
        let slot_len = self.recv.slot_len();
        let n = n.min(self.recv.slots());
        // The slots not yet handed out, and where they begin.
        let (mut rest, message): (&'a mut [u8], _) = self.recv.parts_mut();
        let mut rest_start = 0;
        while at.msg < n && !out.is_full() {
            let m = message(at.msg);
            let Some(from) = m.from.filter(|_| !m.truncated) else {
                tally.datagrams += 1;
                tally.truncated += u64::from(m.truncated);
                *at = Cursor { msg: at.msg + 1, at: 0 };
                continue;
            };
            let step = m.step();
            if at.at == 0 && step < m.len {
                tally.groups += 1;
            }
            let start = at.msg * slot_len + at.at;
            let end = at.msg * slot_len + (at.at + step).min(m.len);
            let cut = std::mem::take(&mut rest)
                .get_mut(start - rest_start..)
                .and_then(|t| t.split_at_mut_checked(end - start));
            let Some((piece, tail)) = cut else {
                // Cannot happen: each datagram lies in its slot, after the one before. The
                // rest of the receive is passed over rather than looped on.
                *at = Cursor { msg: n, at: 0 };
                break;
            };
            (rest, rest_start) = (tail, end);
            // Both have room: `out` is not full, and `starts` fills alongside it.
            let _ = out.push((from, piece));
            let _ = starts.push(start);
            tally.datagrams += 1;
            at.at += step;
            if at.at >= m.len {
                *at = Cursor { msg: at.msg + 1, at: 0 };
            }
        }
    }

    /// Whether `at` is past the first `n` messages.
    pub fn done(at: &Cursor, n: usize) -> bool {
        at.msg >= n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, SockaddrStorage};
    use std::os::fd::AsRawFd;

    /// Receives everything `rx` has (at least `want` datagrams) and hands it out as the
    /// agent does: (sender, bytes) per datagram in order, and the tally.
    fn drain(inbox: &mut Inbox, rx: &std::net::UdpSocket, want: usize) -> (Vec<(SocketAddr, Vec<u8>)>, Tally) {
        let (mut got, mut tally) = (Vec::new(), Tally::default());
        for _ in 0..200 {
            let n = match inbox.recv(rx.as_raw_fd()) {
                Ok(n) => n,
                Err(_) if got.len() >= want => break,
                Err(_) => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    continue;
                }
            };
            let mut at = Cursor::default();
            while !Inbox::done(&at, n) {
                let mut out = heapless::Vec::new();
                let mut starts = heapless::Vec::new();
                inbox.next_datagrams(n, &mut at, &mut out, &mut starts, &mut tally);
                assert!(!out.is_empty() || Inbox::done(&at, n), "progress");
                let lens: Vec<(SocketAddr, usize)> = out.iter().map(|(f, b)| (*f, b.len())).collect();
                drop(out);
                for ((from, len), start) in lens.into_iter().zip(starts) {
                    got.push((from, inbox.get(start..start + len).to_vec()));
                }
            }
        }
        (got, tally)
    }

    #[test]
    fn single_datagrams_come_out_in_order_and_a_long_one_is_counted() {
        for coalescing in [false, true] {
            let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            rx.set_nonblocking(true).unwrap();
            let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let to = rx.local_addr().unwrap();
            let mut sent = Vec::new();
            for k in 0..70u8 {
                let d = vec![k; 1 + usize::from(k) * 7];
                tx.send_to(&d, to).unwrap();
                sent.push((tx.local_addr().unwrap(), d));
            }
            tx.send_to(&[], to).unwrap();
            sent.push((tx.local_addr().unwrap(), Vec::new()));
            // Longer than a slot without coalescing (dropped, counted); with it, it fits.
            let long = vec![7u8; SLOT_LEN + 1];
            tx.send_to(&long, to).unwrap();
            if coalescing {
                sent.push((tx.local_addr().unwrap(), long));
            }
            let mut inbox = Inbox::new(coalescing);
            let (got, tally) = drain(&mut inbox, &rx, sent.len());
            assert_eq!(got, sent, "coalescing {coalescing}");
            let truncated = u64::from(!coalescing);
            assert_eq!(tally, Tally { datagrams: 72, truncated, groups: 0 }, "coalescing {coalescing}");
        }
    }

    /// Groups of 45 datagrams (more than a batch) and single datagrams between them come
    /// out as the datagrams that were sent, in order, batch after batch.
    #[test]
    fn groups_are_cut_into_their_datagrams_across_batches() {
        if !ntm_io::udp::coalescing_works() {
            eprintln!("NOTICE: no UDP receive coalescing here (qemu-user or an old kernel): nothing to check");
            return;
        }
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        ntm_io::udp::coalesce(&rx).unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (to, from) = (rx.local_addr().unwrap(), tx.local_addr().unwrap());
        let mut sent = Vec::new();
        for round in 0..3u8 {
            // 45 datagrams of 1400 bytes, the last 100: one message.
            let message: Vec<u8> = (0..44 * 1400 + 100).map(|i| (i / 1400) as u8 ^ round).collect();
            let segment: u16 = 1400;
            let cmsgs = [ControlMessage::UdpGsoSegments(&segment)];
            let dst = SockaddrStorage::from(to);
            sendmsg(tx.as_raw_fd(), &[std::io::IoSlice::new(&message)], &cmsgs, MsgFlags::empty(), Some(&dst)).unwrap();
            sent.extend(message.chunks(1400).map(|c| (from, c.to_vec())));
            tx.send_to(&[round; 33], to).unwrap();
            sent.push((from, vec![round; 33]));
        }
        let mut inbox = Inbox::new(true);
        let (got, tally) = drain(&mut inbox, &rx, sent.len());
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "the datagrams as sent, in order");
        assert_eq!(tally, Tally { datagrams: 3 * 46, truncated: 0, groups: 3 });
    }
}
