//! Data packets (spec section 5): one IP packet from the TUN device, sealed with K_mncn.
//! The header's key id is the session id and its counter the packet number; there is no
//! body structure beyond the sealed IP packet itself.
//!
//! ```text
//! header (16, type 0x70, sealed) | AES-CCM(IP packet) | tag (16)
//! ```
//! The data plane seals and opens in place ([`crate::crypto::Channel::seal_in_place`]);
//! [`DataBody`] is the owned form used by tests, fuzzing and the simulator.

use super::{Codec, Reader, WireError, Writer, HEADER_LEN, TAG_LEN};

/// Bytes a data packet adds to the IP packet it carries.
pub const DATA_OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// Largest inner IP packet.
pub const INNER_MAX: usize = 65535;

/// An inner IP packet. It must start with an IPv4 or IPv6 version nibble.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataBody(Vec<u8>);

impl DataBody {
    /// Wraps an IP packet, checking its version nibble and length.
    pub fn new(packet: Vec<u8>) -> Result<Self, WireError> {
        Self::check(&packet)?;
        Ok(DataBody(packet))
    }

    fn check(packet: &[u8]) -> Result<(), WireError> {
        if packet.len() > INNER_MAX {
            return Err(WireError::TooLong("IP packet"));
        }
        match packet.first().map(|b| b >> 4) {
            Some(4 | 6) => Ok(()),
            Some(_) => Err(WireError::BadValue("IP version")),
            None => Err(WireError::Truncated),
        }
    }

    /// The IP packet.
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    /// Takes the IP packet.
    pub fn into_inner(self) -> Vec<u8> {
        self.0
    }
}

/// The body is the rest of the message, so decoding consumes everything left.
impl Codec for DataBody {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let all = r.take(r.remaining())?;
        Self::check(all)?;
        Ok(DataBody(all.to_vec()))
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.put(&self.0)
    }
    fn encoded_len(&self) -> usize {
        self.0.len()
    }
}
