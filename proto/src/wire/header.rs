//! The common header that starts every message, and a zero-copy view over a whole message.
//!
//! ```text
//!  0        1        2        3        4                 8                                16
//! +--------+--------+--------+--------+-----------------+---------------------------------+
//! |version |  type  | flags  | sender |  key id (u32)   |          counter (u64)          |
//! +--------+--------+--------+--------+-----------------+---------------------------------+
//! | body: plain (inside TLS only), or AES-CCM ciphertext followed by its 16-byte tag     ...
//! ```
//!
//! All integers are big-endian. For a sealed message the 16 header bytes are the AEAD's
//! associated data and (sender, counter) is its nonce (see [`crate::crypto`]); for a plain
//! message key id and counter are zero unless the body's type says otherwise.

use super::{code_enum, KeyId, MsgType, WireError};

/// The protocol version this build speaks.
pub const VERSION: u8 = 1;
/// Length of the common header.
pub const HEADER_LEN: usize = 16;
/// Length of the AES-CCM tag that ends every sealed body (and every wrapped key).
pub const TAG_LEN: usize = 16;
/// Flag: the body is AES-CCM ciphertext and tag. No other flag is defined; a set
/// reserved bit is refused so that a later version can give it a meaning.
pub const FLAG_SEALED: u8 = 0x01;

/// Byte offsets of the header fields.
pub mod field {
    use core::ops::{Range, RangeFrom};
    /// Protocol version.
    pub const VERSION: usize = 0;
    /// Message type.
    pub const TYPE: usize = 1;
    /// Flags.
    pub const FLAGS: usize = 2;
    /// Sender (nonce space).
    pub const SENDER: usize = 3;
    /// Key id.
    pub const KEY_ID: Range<usize> = 4..8;
    /// Counter.
    pub const COUNTER: Range<usize> = 8..16;
    /// Body.
    pub const BODY: RangeFrom<usize> = 16..;
}

code_enum! {
    /// Who sealed a message: its role towards the key. Each key kind admits a fixed set
    /// of senders, each with its own nonce space and replay window (spec section 3:
    /// "separate nonce spaces per direction/sender").
    pub enum Sender {
        /// A node, towards its DC or its NS.
        Node = 0x01,
        /// A DC; for K_dcdc, the DC that made the key.
        Dc = 0x02,
        /// A Notification Server.
        Ns = 0x03,
        /// A Relay Server.
        Rs = 0x04,
        /// The Account Server.
        As = 0x05,
        /// For K_dcdc, the DC that received the key.
        DcPeer = 0x06,
        /// The node that asked for a tunnel (holder of K_tun).
        Mn = 0x10,
        /// The node that was asked for (holder of K_tun).
        Cn = 0x11,
        /// Under K_mncn: the node that sent the Tunnel Request.
        Initiator = 0x12,
        /// Under K_mncn: the node that answered it.
        Responder = 0x13,
    }
}

/// A zero-copy view of a message: the header fields and the body, over any buffer.
///
/// [`Envelope::new_checked`] establishes that the buffer holds a whole header of a known
/// version with no reserved flag set; after that no accessor can panic.
#[derive(Debug, Clone)]
pub struct Envelope<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Envelope<T> {
    /// Wraps a buffer without checking it. Accessors may panic unless
    /// [`Envelope::check`] passed; use [`Envelope::new_checked`].
    pub const fn new_unchecked(buffer: T) -> Self {
        Envelope { buffer }
    }

    /// Wraps a buffer after checking it holds a valid header.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let e = Self::new_unchecked(buffer);
        e.check()?;
        Ok(e)
    }

    /// Checks the header: length, version, reserved flags.
    pub fn check(&self) -> Result<(), WireError> {
        let b = self.buffer.as_ref();
        let header = b.get(..HEADER_LEN).ok_or(WireError::Truncated)?;
        // Invariant for the indexing below: `header` has exactly HEADER_LEN bytes.
        #[allow(clippy::indexing_slicing)]
        {
            if header[field::VERSION] != VERSION {
                return Err(WireError::UnsupportedVersion(header[field::VERSION]));
            }
            if header[field::FLAGS] & !FLAG_SEALED != 0 {
                return Err(WireError::BadValue("header flags"));
            }
        }
        Ok(())
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    // Invariant for all accessors: `check` passed, so the header's 16 bytes exist.
    #[allow(clippy::indexing_slicing)]
    fn header_bytes(&self) -> &[u8] {
        &self.buffer.as_ref()[..HEADER_LEN]
    }

    /// The 16 header bytes: the associated data of a sealed message.
    pub fn header(&self) -> &[u8] {
        self.header_bytes()
    }

    /// Protocol version.
    #[allow(clippy::indexing_slicing)]
    pub fn version(&self) -> u8 {
        self.header_bytes()[field::VERSION]
    }

    /// Message type.
    #[allow(clippy::indexing_slicing)]
    pub fn msg_type(&self) -> MsgType {
        MsgType::from(self.header_bytes()[field::TYPE])
    }

    /// True if the body is sealed (AES-CCM).
    #[allow(clippy::indexing_slicing)]
    pub fn sealed(&self) -> bool {
        self.header_bytes()[field::FLAGS] & FLAG_SEALED != 0
    }

    /// The sender's role, which selects the nonce space.
    #[allow(clippy::indexing_slicing)]
    pub fn sender(&self) -> Sender {
        Sender::from(self.header_bytes()[field::SENDER])
    }

    /// The key id.
    pub fn key_id(&self) -> KeyId {
        let mut b = [0u8; 4];
        #[allow(clippy::indexing_slicing)]
        b.copy_from_slice(&self.header_bytes()[field::KEY_ID]);
        KeyId(u32::from_be_bytes(b))
    }

    /// The counter (the variable part of the nonce).
    pub fn counter(&self) -> u64 {
        let mut b = [0u8; 8];
        #[allow(clippy::indexing_slicing)]
        b.copy_from_slice(&self.header_bytes()[field::COUNTER]);
        u64::from_be_bytes(b)
    }

    /// The body (ciphertext and tag if sealed).
    #[allow(clippy::indexing_slicing)]
    pub fn body(&self) -> &[u8] {
        &self.buffer.as_ref()[field::BODY]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Envelope<T> {
    /// The body, writable (decryption happens in place).
    #[allow(clippy::indexing_slicing)]
    pub fn body_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::BODY]
    }

    /// Splits into the header and the writable body.
    #[allow(clippy::indexing_slicing)]
    pub fn split_mut(&mut self) -> (&[u8], &mut [u8]) {
        let (h, b) = self.buffer.as_mut().split_at_mut(HEADER_LEN);
        (h, b)
    }
}

/// The owned form of a header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Message type.
    pub msg_type: MsgType,
    /// True if the body is sealed.
    pub sealed: bool,
    /// The sender's role.
    pub sender: Sender,
    /// Which key (or session) the message belongs to.
    pub key_id: KeyId,
    /// The nonce counter; zero for plain messages.
    pub counter: u64,
}

impl Header {
    /// A header for a plain (TLS-carried) message.
    pub fn plain(msg_type: MsgType, sender: Sender) -> Self {
        Header { msg_type, sealed: false, sender, key_id: KeyId(0), counter: 0 }
    }

    /// Reads the header of a checked envelope.
    pub fn parse<T: AsRef<[u8]>>(env: &Envelope<T>) -> Self {
        Header {
            msg_type: env.msg_type(),
            sealed: env.sealed(),
            sender: env.sender(),
            key_id: env.key_id(),
            counter: env.counter(),
        }
    }

    /// Writes the header into the first [`HEADER_LEN`] bytes of `buf`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), WireError> {
        let h = buf.get_mut(..HEADER_LEN).ok_or(WireError::BufferTooSmall)?;
        h.copy_from_slice(&self.to_bytes());
        Ok(())
    }

    /// The 16 header bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        let flags = if self.sealed { FLAG_SEALED } else { 0 };
        let id = self.key_id.0.to_be_bytes();
        let ctr = self.counter.to_be_bytes();
        let fixed = [VERSION, u8::from(self.msg_type), flags, u8::from(self.sender)];
        for (dst, src) in h.iter_mut().zip(fixed.iter().chain(id.iter()).chain(ctr.iter())) {
            *dst = *src;
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: [u8; 18] =
        [0x01, 0x70, 0x01, 0x12, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0, 0, 0, 0x01, 0x02, 0xaa, 0xbb];

    #[test]
    fn view_reads_every_field() {
        let e = Envelope::new_checked(&FIXTURE[..]).unwrap();
        assert_eq!(e.version(), 1);
        assert_eq!(e.msg_type(), MsgType::Data);
        assert!(e.sealed());
        assert_eq!(e.sender(), Sender::Initiator);
        assert_eq!(e.key_id(), KeyId(0xdeadbeef));
        assert_eq!(e.counter(), 0x0102);
        assert_eq!(e.body(), &[0xaa, 0xbb]);
        let h = Header::parse(&e);
        assert_eq!(&h.to_bytes()[..], &FIXTURE[..HEADER_LEN]);
    }

    #[test]
    fn refuses_short_old_and_flagged_headers() {
        for n in 0..HEADER_LEN {
            assert_eq!(Envelope::new_checked(&FIXTURE[..n]).unwrap_err(), WireError::Truncated);
        }
        let mut v2 = FIXTURE;
        v2[0] = 2;
        assert_eq!(Envelope::new_checked(&v2[..]).unwrap_err(), WireError::UnsupportedVersion(2));
        let mut flagged = FIXTURE;
        flagged[2] = 0x81;
        assert_eq!(Envelope::new_checked(&flagged[..]).unwrap_err(), WireError::BadValue("header flags"));
    }
}
