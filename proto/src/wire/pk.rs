//! The public-key fields of the messages (spec 4.1, 4.4): a node's or the AS's P-256
//! public key, an ECDSA signature, the AS's attestation of a node's key, and K_mncn wrapped
//! for the peer. These are data only; signing, verifying and (un)wrapping them is the work
//! of [`crate::crypto::pk`], which re-exports them under its own path.
//!
//! ```text
//! public key   compressed SEC1 point (33): 0x02 or 0x03 | x (32)
//! signature    r (32) | s (32)
//! Attestation  fqdn | public key (33) | signature (64)
//! TmpWrap      ciphertext (16) | tag (16)
//! PublicWrap   ephemeral public key (33) | ciphertext (16) | tag (16) | signature (64)
//! ```
//!
//! A public key is checked when decoded: a point that is not compressed or not on the
//! curve makes the whole message malformed, so no engine ever holds an invalid key.

use super::{wire_struct, Codec, Fqdn, Reader, WireError, Writer, TAG_LEN};
use crate::keys::KEY_LEN;
use core::fmt;
use p256::elliptic_curve::sec1::ToEncodedPoint;

/// Length of a compressed SEC1 P-256 point.
pub const PUBLIC_KEY_LEN: usize = 33;
/// Length of a fixed-size (r, s) ECDSA P-256 signature.
pub const SIGNATURE_LEN: usize = 64;

/// A P-256 public key; on the wire as a 33-byte compressed SEC1 point. Holding one means
/// the point is on the curve.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(p256::PublicKey);

impl PublicKey {
    /// The 33-byte compressed encoding.
    pub fn to_bytes(&self) -> [u8; PUBLIC_KEY_LEN] {
        let point = self.0.to_encoded_point(true);
        let mut out = [0u8; PUBLIC_KEY_LEN];
        // A compressed P-256 point is always 33 bytes.
        if let Some(src) = point.as_bytes().get(..PUBLIC_KEY_LEN) {
            out.copy_from_slice(src);
        }
        out
    }

    /// Parses a compressed point, refusing anything not on the curve.
    pub fn from_bytes(bytes: &[u8; PUBLIC_KEY_LEN]) -> Result<Self, WireError> {
        if !matches!(bytes.first(), Some(0x02 | 0x03)) {
            return Err(WireError::BadValue("public key"));
        }
        p256::PublicKey::from_sec1_bytes(bytes).map(PublicKey).map_err(|_| WireError::BadValue("public key"))
    }

    /// The inner p256 key (for the crypto module and X.509 code in drivers).
    pub fn as_p256(&self) -> &p256::PublicKey {
        &self.0
    }

    /// Wraps a p256 key (e.g. from a device certificate).
    pub fn from_p256(key: p256::PublicKey) -> Self {
        PublicKey(key)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey(")?;
        for b in self.to_bytes().iter().take(8) {
            write!(f, "{b:02x}")?;
        }
        write!(f, "..)")
    }
}

impl Codec for PublicKey {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        PublicKey::from_bytes(&r.array()?)
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.put(&self.to_bytes())
    }
    fn encoded_len(&self) -> usize {
        PUBLIC_KEY_LEN
    }
}

/// An ECDSA P-256 signature as (r, s), 64 bytes. Checked only when verified.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; SIGNATURE_LEN]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Signature(..)")
    }
}

impl Codec for Signature {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Signature(r.array()?))
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.put(&self.0)
    }
    fn encoded_len(&self) -> usize {
        SIGNATURE_LEN
    }
}

wire_struct! {
    /// The AS's statement that `public_key` belongs to the node `fqdn` (issued and verified
    /// by [`crate::crypto::pk`]).
    pub struct Attestation {
        /// The node.
        pub fqdn: Fqdn,
        /// The node's public key.
        pub public_key: PublicKey,
        /// The AS's signature over both.
        pub signature: Signature,
    }
}

wire_struct! {
    /// K_mncn wrapped with K_tmp: ciphertext and tag.
    pub struct TmpWrap {
        /// K_mncn encrypted.
        pub ciphertext: [u8; KEY_LEN],
        /// CCM tag.
        pub tag: [u8; TAG_LEN],
    }
}

wire_struct! {
    /// K_mncn wrapped for the peer's public key, signed by the sender's node key.
    pub struct PublicWrap {
        /// The sender's ephemeral ECDH key.
        pub ephemeral: PublicKey,
        /// K_mncn encrypted under the derived key.
        pub ciphertext: [u8; KEY_LEN],
        /// CCM tag.
        pub tag: [u8; TAG_LEN],
        /// The sender's signature over the wrap.
        pub signature: Signature,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generator of P-256, compressed (SEC 2, section 2.4.2).
    const G: [u8; PUBLIC_KEY_LEN] = [
        0x03, 0x6b, 0x17, 0xd1, 0xf2, 0xe1, 0x2c, 0x42, 0x47, 0xf8, 0xbc, 0xe6, 0xe5, 0x63, 0xa4, 0x40, 0xf2, 0x77,
        0x03, 0x7d, 0x81, 0x2d, 0xeb, 0x33, 0xa0, 0xf4, 0xa1, 0x39, 0x45, 0xd8, 0x98, 0xc2, 0x96,
    ];

    #[test]
    fn public_key_round_trip_and_invalid_points() {
        let pk = PublicKey::from_bytes(&G).unwrap();
        assert_eq!(pk.to_bytes(), G);
        assert_eq!(PublicKey::from_bytes(&pk.to_vec().try_into().unwrap()), Ok(pk));
        // An uncompressed prefix, and x >= p (not a field element): both refused, by the
        // codec as well.
        assert_eq!(PublicKey::from_bytes(&[0x04; 33]), Err(WireError::BadValue("public key")));
        let mut bad = G;
        bad[1..].fill(0xff);
        assert_eq!(PublicKey::from_bytes(&bad), Err(WireError::BadValue("public key")));
        assert_eq!(<PublicKey as Codec>::from_bytes(&bad), Err(WireError::BadValue("public key")));
    }
}
