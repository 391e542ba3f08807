//! Wire formats of every NTMobile message (spec section 4, docs/protocol.md).
//!
//! Every message is one [`Envelope`]: a 16-byte common header (version, type, flags,
//! sender, key id, counter) and a body. A sealed body is AES-CCM ciphertext with the header
//! as associated data ([`crate::crypto`]); a plain body travels only inside TLS. The body
//! of each type is a struct in the file of its family; [`Message`] is the union of them and
//! the one place that maps a type code to a body.
//!
//! Decoding never panics and never reads out of bounds: lengths are checked before every
//! read ([`Reader`]), lists and strings have caps, enums refuse unknown code points, and a
//! body with trailing bytes is refused.

mod codec;
pub mod frame;
mod header;
mod message;
mod name;

pub mod data;
pub mod direction;
pub mod keyshare;
pub mod login;
pub mod notification;
pub mod pk;
pub mod prefix;
pub mod refusal;
pub mod registration;
pub mod relay;
pub mod route;
pub mod tunnel;

pub(crate) use codec::{code_enum, known_code_codec, wire_struct};
pub use codec::{Bytes, Codec, List, Reader, Tail, Tails, Text, Writer};
pub use header::{field as header_field, Envelope, Header, Sender, FLAG_SEALED, HEADER_LEN, TAG_LEN, VERSION};
pub use message::{Message, MsgType};
pub use name::{Fqdn, FQDN_MAX};
pub use prefix::Prefix;

use core::fmt;
use core::time::Duration;

/// Why bytes could not be decoded (or a value could not be encoded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// The input ended before the format did.
    Truncated,
    /// A whole message was followed by extra bytes.
    TrailingBytes,
    /// The header names a protocol version this build does not speak.
    UnsupportedVersion(u8),
    /// The header names a message type this build does not know.
    UnknownType(u8),
    /// A field holds a value outside its domain; names the field.
    BadValue(&'static str),
    /// A list, string or byte field is longer than its cap; names the kind.
    TooLong(&'static str),
    /// The output buffer is shorter than the encoding.
    BufferTooSmall,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Truncated => f.write_str("message truncated"),
            WireError::TrailingBytes => f.write_str("trailing bytes after message"),
            WireError::UnsupportedVersion(v) => write!(f, "unsupported protocol version {v}"),
            WireError::UnknownType(t) => write!(f, "unknown message type 0x{t:02x}"),
            WireError::BadValue(what) => write!(f, "invalid {what}"),
            WireError::TooLong(what) => write!(f, "{what} longer than allowed"),
            WireError::BufferTooSmall => f.write_str("output buffer too small"),
        }
    }
}

impl std::error::Error for WireError {}

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u32);

        impl Codec for $name {
            fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
                Ok($name(r.u32()?))
            }
            fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
                w.u32(self.0)
            }
            fn encoded_len(&self) -> usize {
                4
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:08x}", self.0)
            }
        }
    };
}

id_type!(
    /// Names a symmetric key to its receiver: carried in the header of every sealed message.
    KeyId
);
id_type!(
    /// Names one tunnel negotiation; also the key id of its data packets and relay session.
    SessionId
);
id_type!(
    /// Matches a response or acknowledgement to its request; retransmissions reuse it.
    RequestId
);

/// A key's or a grant's lifetime, in whole seconds, relative to its receipt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lifetime(pub u32);

impl Lifetime {
    /// The lifetime as a duration.
    pub fn duration(self) -> Duration {
        Duration::from_secs(u64::from(self.0))
    }

    /// Rounds a duration down to whole seconds, saturating.
    pub fn from_duration(d: Duration) -> Self {
        Lifetime(u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
    }
}

impl Codec for Lifetime {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Lifetime(r.u32()?))
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.u32(self.0)
    }
    fn encoded_len(&self) -> usize {
        4
    }
}

/// A node's virtual addresses: one IPv4 and one IPv6, stable for the node (spec 4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VirtualAddrs {
    /// The virtual IPv4 address.
    pub v4: core::net::Ipv4Addr,
    /// The virtual IPv6 address.
    pub v6: core::net::Ipv6Addr,
}

impl Codec for VirtualAddrs {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(VirtualAddrs { v4: Codec::decode(r)?, v6: Codec::decode(r)? })
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        self.v4.encode(w)?;
        self.v6.encode(w)
    }
    fn encoded_len(&self) -> usize {
        20
    }
}
