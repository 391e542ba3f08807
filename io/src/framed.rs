//! The framing state of one stream: each message is preceded by its length as a
//! big-endian u16 (`ntm_proto::wire::frame`). The socket stays the caller's: a plain TCP
//! stream is read and written through [`Framed::read_from`] and [`Framed::write_to`], and
//! a TLS session hands its plaintext to [`Framed::push`].
//!
//! What a peer may cost is capped here. Input: a peer that sends a length and never the
//! frame holds at most one frame (plus one read) of our memory; past that
//! [`Framed::over_cap`] says to close the stream. Output: at most the `out_max` given at
//! creation is queued for a peer that does not read; a frame that would go over it is
//! refused ([`Refused::Full`]).

use ntm_proto::wire::frame::{encode_frame, FrameDecoder, FRAME_MAX};
use ntm_proto::wire::WireError;
use std::io::{self, Read, Write};

/// What reading a stream gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadResult {
    /// This many bytes. From [`Framed::fill`]: its budget ran out, and more may wait.
    Bytes(usize),
    /// Nothing (more) for now.
    Empty,
    /// The peer closed the stream.
    End,
    /// An error: close the stream.
    Fail,
}

/// Why a message was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Longer than a frame can be.
    TooLong,
    /// The peer has not read enough of what it was sent: the output is at its cap.
    Full,
}

/// Frames in, frames out, for one stream.
#[derive(Debug)]
pub struct Framed {
    decoder: FrameDecoder,
    out: Vec<u8>,
    out_max: usize,
}

impl Framed {
    /// An empty stream state that queues at most `out_max` bytes of output.
    pub fn new(out_max: usize) -> Self {
        Framed { decoder: FrameDecoder::new(), out: Vec::new(), out_max }
    }

    /// Appends bytes that arrived some other way (the plaintext of a TLS session).
    pub fn push(&mut self, bytes: &[u8]) {
        self.decoder.push(bytes);
    }

    /// One read from `src` (retried if interrupted), of at most `scratch.len()` bytes:
    /// the caller's buffer, so that each chooses what its stack can spare.
    pub fn read_from(&mut self, src: &mut impl Read, scratch: &mut [u8]) -> ReadResult {
        loop {
            return match src.read(scratch) {
                Ok(0) => ReadResult::End,
                Ok(n) => {
                    self.decoder.push(scratch.get(..n).unwrap_or(&[]));
                    ReadResult::Bytes(n)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => ReadResult::Empty,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => ReadResult::Fail,
            };
        }
    }

    /// Reads from `src` until it has nothing more, ends or fails, or `budget` bytes came
    /// (then [`ReadResult::Bytes`]: the caller reads again on its next turn).
    pub fn fill(&mut self, src: &mut impl Read, scratch: &mut [u8], budget: usize) -> ReadResult {
        let mut left = budget;
        loop {
            if left == 0 {
                return ReadResult::Bytes(budget);
            }
            match self.read_from(src, scratch) {
                ReadResult::Bytes(n) => left = left.saturating_sub(n),
                other => return other,
            }
        }
    }

    /// Takes the next whole frame, if one is buffered; an error (an empty frame) means
    /// the stream must be closed.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        self.decoder.next_frame()
    }

    /// Takes every whole frame buffered into `out`, in order. An error means a bad frame
    /// came after those taken: the stream must be closed.
    pub fn take_frames(&mut self, out: &mut Vec<Vec<u8>>) -> Result<(), WireError> {
        while let Some(frame) = self.next_frame()? {
            out.push(frame);
        }
        Ok(())
    }

    /// Bytes held and not yet taken as frames.
    pub fn buffered(&self) -> usize {
        self.decoder.buffered()
    }

    /// More than one frame's worth is held: the peer sent a length and is not sending
    /// the frame, or sends faster than its frames are taken. Close the stream.
    pub fn over_cap(&self) -> bool {
        self.decoder.buffered() > 2 + FRAME_MAX
    }

    /// Gives back the memory of a large frame once nothing is held.
    pub fn release(&mut self) {
        if self.decoder.buffered() == 0 {
            self.decoder = FrameDecoder::new();
        }
    }

    /// Queues `msg` as one frame.
    pub fn queue(&mut self, msg: &[u8]) -> Result<(), Refused> {
        let framed = encode_frame(msg).map_err(|_| Refused::TooLong)?;
        if self.out.len().saturating_add(framed.len()) > self.out_max {
            return Err(Refused::Full);
        }
        self.out.extend_from_slice(&framed);
        Ok(())
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.out.len()
    }

    /// Writes what is queued until `dst` would block; false if the stream must be closed
    /// (an error, or a write of nothing).
    pub fn write_to(&mut self, dst: &mut impl Write) -> bool {
        while !self.out.is_empty() {
            match dst.write(&self.out) {
                Ok(0) => return false,
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A socket that hands out scripted reads and takes at most `room` bytes per write.
    struct Script {
        reads: VecDeque<io::Result<Vec<u8>>>,
        written: Vec<u8>,
        room: usize,
    }

    impl Script {
        fn new(reads: Vec<io::Result<Vec<u8>>>, room: usize) -> Self {
            Script { reads: reads.into(), written: Vec::new(), room }
        }
    }

    fn would_block() -> io::Error {
        io::ErrorKind::WouldBlock.into()
    }

    impl Read for Script {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let bytes = self.reads.pop_front().unwrap_or_else(|| Err(would_block()))?;
            buf[..bytes.len()].copy_from_slice(&bytes);
            Ok(bytes.len())
        }
    }

    impl Write for Script {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(would_block());
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            self.written.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn frames_read_in_pieces_come_out_whole_and_an_interrupted_read_is_retried() {
        let mut wire = encode_frame(b"hello").unwrap();
        wire.extend(encode_frame(b"world!").unwrap());
        let reads = vec![Ok(wire[..3].to_vec()), Err(io::ErrorKind::Interrupted.into()), Ok(wire[3..].to_vec())];
        let mut s = Script::new(reads, 0);
        let mut f = Framed::new(1024);
        let mut scratch = [0u8; 4096];
        assert_eq!(f.read_from(&mut s, &mut scratch), ReadResult::Bytes(3));
        assert_eq!(f.next_frame().unwrap(), None);
        assert_eq!(f.read_from(&mut s, &mut scratch), ReadResult::Bytes(wire.len() - 3));
        assert_eq!(f.next_frame().unwrap().as_deref(), Some(&b"hello"[..]));
        assert_eq!(f.next_frame().unwrap().as_deref(), Some(&b"world!"[..]));
        assert_eq!(f.read_from(&mut s, &mut scratch), ReadResult::Empty);
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn fill_stops_at_its_budget_and_reports_the_end_and_errors() {
        let reads = (0..10).map(|_| Ok(vec![0u8; 1000])).collect();
        let mut s = Script::new(reads, 0);
        let mut f = Framed::new(0);
        let mut scratch = [0u8; 4096];
        assert_eq!(f.fill(&mut s, &mut scratch, 2500), ReadResult::Bytes(2500));
        assert_eq!(f.buffered(), 3000, "the read that crossed the budget is kept");
        assert_eq!(f.fill(&mut s, &mut scratch, 100_000), ReadResult::Empty);
        assert_eq!(f.buffered(), 10_000);

        let mut ended = Script::new(vec![Ok(vec![0, 1]), Ok(Vec::new())], 0);
        assert_eq!(Framed::new(0).fill(&mut ended, &mut scratch, 100), ReadResult::End);
        let mut broken = Script::new(vec![Err(io::ErrorKind::ConnectionReset.into())], 0);
        assert_eq!(Framed::new(0).fill(&mut broken, &mut scratch, 100), ReadResult::Fail);
    }

    #[test]
    fn a_peer_holds_at_most_one_frame_of_input() {
        let mut f = Framed::new(0);
        // A length of the largest frame, then the frame short by a byte: still fine.
        f.push(&[0xff, 0xff]);
        f.push(&vec![7u8; FRAME_MAX - 1]);
        assert!(!f.over_cap());
        assert_eq!(f.next_frame().unwrap(), None);
        // Whole, and one byte of the next: more than a frame held until it is taken.
        f.push(&[7, 0]);
        assert!(f.over_cap());
        assert_eq!(f.next_frame().unwrap().map(|m| m.len()), Some(FRAME_MAX));
        assert!(!f.over_cap());
        // An empty frame is an error, not a message.
        f.push(&[0]);
        assert!(f.next_frame().is_err());
    }

    #[test]
    fn output_is_refused_over_its_cap_and_written_as_the_peer_takes_it() {
        let mut f = Framed::new(3 * (2 + 100));
        for _ in 0..3 {
            f.queue(&[1u8; 100]).unwrap();
        }
        assert_eq!(f.queue(&[1]), Err(Refused::Full));
        assert_eq!(f.queue(&vec![0u8; FRAME_MAX + 1]), Err(Refused::TooLong));
        assert_eq!(f.queued(), 306);
        // The peer takes 250 bytes, then would block: the rest stays queued, in order.
        let mut s = Script::new(Vec::new(), 250);
        assert!(f.write_to(&mut s));
        assert_eq!(f.queued(), 56);
        f.queue(&[2u8; 100]).unwrap();
        s.room = 1000;
        assert!(f.write_to(&mut s));
        assert_eq!(f.queued(), 0);
        let mut expect = Vec::new();
        for m in [[1u8; 100], [1; 100], [1; 100], [2; 100]] {
            expect.extend(encode_frame(&m).unwrap());
        }
        assert_eq!(s.written, expect);
        // A write of nothing, or an error, closes the stream.
        f.queue(b"x").unwrap();
        assert!(!f.write_to(&mut Zero));
    }

    struct Zero;
    impl Write for Zero {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Ok(0)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
}
