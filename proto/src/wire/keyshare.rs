//! Key Sharing between servers (spec section 3): at first contact two servers authenticate
//! each other with mutual TLS and the DC sends a symmetric key over it; later messages
//! between them are sealed with that key until it expires.
//!
//! ```text
//! KeyShare     request_id u32 | key_id u32 | kind u8 | key (16) | lifetime u32 | from fqdn
//! KeyShareAck  request_id u32 | key_id u32
//! ```

use super::{code_enum, wire_struct, Codec, Fqdn, KeyId, Reader, RequestId, WireError, Writer};
use crate::keys::{DcDc, DcNs, DcRs, KeyGrant};

code_enum! {
    /// Which server key a Key Share carries.
    pub enum SharedKeyKind {
        /// K_dcdc, DC_MN to DC_CN.
        DcDc = 0x01,
        /// K_dcrs, DC to RS.
        DcRs = 0x02,
        /// K_dcns, DC to NS.
        DcNs = 0x03,
    }
}

/// A server key, typed by kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SharedKey {
    /// K_dcdc.
    DcDc(KeyGrant<DcDc>),
    /// K_dcrs.
    DcRs(KeyGrant<DcRs>),
    /// K_dcns.
    DcNs(KeyGrant<DcNs>),
}

impl SharedKey {
    /// The key's kind.
    pub fn kind(&self) -> SharedKeyKind {
        match self {
            SharedKey::DcDc(_) => SharedKeyKind::DcDc,
            SharedKey::DcRs(_) => SharedKeyKind::DcRs,
            SharedKey::DcNs(_) => SharedKeyKind::DcNs,
        }
    }
}

impl Codec for SharedKey {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        match SharedKeyKind::from(r.u8()?) {
            SharedKeyKind::DcDc => Ok(SharedKey::DcDc(Codec::decode(r)?)),
            SharedKeyKind::DcRs => Ok(SharedKey::DcRs(Codec::decode(r)?)),
            SharedKeyKind::DcNs => Ok(SharedKey::DcNs(Codec::decode(r)?)),
            SharedKeyKind::Unknown(_) => Err(WireError::BadValue("shared key kind")),
        }
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.u8(u8::from(self.kind()))?;
        match self {
            SharedKey::DcDc(g) => g.encode(w),
            SharedKey::DcRs(g) => g.encode(w),
            SharedKey::DcNs(g) => g.encode(w),
        }
    }
    fn encoded_len(&self) -> usize {
        1 + 20
    }
}

wire_struct! {
    /// DC -> DC, RS or NS, inside mutual TLS: a key for our later messages.
    pub struct KeyShare {
        /// Matches the acknowledgement.
        pub request_id: RequestId,
        /// The id that will name the key in headers.
        pub key_id: KeyId,
        /// The key, its kind and lifetime.
        pub key: SharedKey,
        /// The sharing server's name (TLS authenticated it; this must match).
        pub from: Fqdn,
    }
}

wire_struct! {
    /// The receiver holds the key.
    pub struct KeyShareAck {
        /// The Key Share this acknowledges.
        pub request_id: RequestId,
        /// The key now held.
        pub key_id: KeyId,
    }
}
