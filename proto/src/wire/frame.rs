//! Framing on streams (TCP to the NS, TLS to the AS and between servers): each message is
//! preceded by its length as a big-endian u16. [`FrameDecoder`] reassembles messages from
//! whatever chunks the stream delivers, with a bounded buffer.

use super::WireError;

/// Longest framed message.
pub const FRAME_MAX: usize = u16::MAX as usize;

/// Prefixes `msg` with its length.
pub fn encode_frame(msg: &[u8]) -> Result<Vec<u8>, WireError> {
    let n = u16::try_from(msg.len()).map_err(|_| WireError::TooLong("frame"))?;
    let mut out = Vec::with_capacity(2 + msg.len());
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(msg);
    Ok(out)
}

/// Reassembles frames from a byte stream. Holds at most one partial frame plus one chunk.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        FrameDecoder { buf: Vec::new() }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Takes the next whole frame, if one is buffered. A zero-length frame is an error
    /// (no message is empty), so a peer cannot make us spin on empty frames.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        let Some(len_bytes) = self.buf.get(..2) else { return Ok(None) };
        let n = usize::from(u16::from_be_bytes([
            len_bytes.first().copied().unwrap_or(0),
            len_bytes.get(1).copied().unwrap_or(0),
        ]));
        if n == 0 {
            return Err(WireError::BadValue("empty frame"));
        }
        if self.buf.len() < 2 + n {
            return Ok(None);
        }
        let frame = self.buf.get(2..2 + n).map(<[u8]>::to_vec).ok_or(WireError::Truncated)?;
        self.buf.drain(..2 + n);
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reassembles_frames_split_anywhere() {
        let mut stream = encode_frame(b"first").unwrap();
        stream.extend(encode_frame(b"second message").unwrap());
        for split in 0..stream.len() {
            let mut d = FrameDecoder::new();
            let mut got = Vec::new();
            d.push(&stream[..split]);
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
            d.push(&stream[split..]);
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
            assert_eq!(got, vec![b"first".to_vec(), b"second message".to_vec()]);
            assert_eq!(d.buffered(), 0);
        }
        let mut d = FrameDecoder::new();
        d.push(&[0, 0]);
        assert!(d.next_frame().is_err());
        assert!(encode_frame(&vec![0; FRAME_MAX + 1]).is_err());
    }
}
