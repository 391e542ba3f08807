//! The symmetric keys of Table 1, one type each, so that one can never stand in for
//! another (K_tun is not interchangeable with K_tmp).
//!
//! Every key is 128 bits for AES-128-CCM. A key zeroizes its bytes when dropped, prints
//! as `K_tun(redacted)`, and compares in constant time. Each kind lists the roles that may
//! seal under it ([`KeyKind::SENDERS`]); each of those roles has its own nonce space and
//! replay window ([`crate::crypto::Channel`]). Lifetimes travel as [`KeyGrant`]s
//! (key plus relative lifetime); the holder turns them into an absolute expiry on receipt.

use crate::wire::{Codec, Lifetime, Reader, Sender, WireError, Writer};
use core::fmt;
use core::marker::PhantomData;
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

/// Key length in bytes (AES-128).
pub const KEY_LEN: usize = 16;

mod sealed {
    pub trait Sealed {}
}

/// A kind of key from Table 1. Implemented only by the marker types of this module.
pub trait KeyKind: sealed::Sealed + 'static {
    /// The name used in the paper, and in redacted debug output.
    const NAME: &'static str;
    /// The roles that seal messages under this key.
    const SENDERS: &'static [Sender];
}

macro_rules! key_kinds {
    ($( $(#[$m:meta])* $marker:ident, $alias:ident, $name:literal, [$($s:ident),*]; )*) => {
        $(
            $(#[$m])*
            #[derive(Debug, Clone, Copy, PartialEq, Eq)]
            pub enum $marker {}
            impl sealed::Sealed for $marker {}
            impl KeyKind for $marker {
                const NAME: &'static str = $name;
                const SENDERS: &'static [Sender] = &[$(Sender::$s),*];
            }
            $(#[$m])*
            pub type $alias = Key<$marker>;
        )*
    };
}

key_kinds! {
    /// K_ntmdc: made by the AS, held by a node and its DC; protects node <-> DC.
    NtmDc, KNtmDc, "K_ntmdc", [Node, Dc];
    /// K_dcns: made by a DC, held by the DC and an NS; protects DC <-> NS.
    DcNs, KDcNs, "K_dcns", [Dc, Ns];
    /// K_ntmns: made by a DC, held by a node and its NS; protects node <-> NS.
    NtmNs, KNtmNs, "K_ntmns", [Node, Ns];
    /// K_dcdc: made by DC_MN, held by two DCs; protects DC <-> DC.
    DcDc, KDcDc, "K_dcdc", [Dc, DcPeer];
    /// K_dcrs: made by a DC, held by the DC and an RS; protects DC <-> RS.
    DcRs, KDcRs, "K_dcrs", [Dc, Rs];
    /// K_tun: made by DC_MN per negotiation, held by MN, CN and the RS; protects Tunnel
    /// Request and hole punching.
    Tun, KTun, "K_tun", [Mn, Cn, Rs];
    /// K_tmp: made by DC_MN per negotiation, held by MN and CN, never by an RS; wraps
    /// K_mncn.
    Tmp, KTmp, "K_tmp", [Initiator];
    /// K_mncn: made by the node that sends the Tunnel Request, held by MN and CN only;
    /// protects application packets.
    MnCn, KMnCn, "K_mncn", [Initiator, Responder];
}

/// A 128-bit key of kind `K`.
pub struct Key<K: KeyKind> {
    bytes: [u8; KEY_LEN],
    kind: PhantomData<fn() -> K>,
}

impl<K: KeyKind> Key<K> {
    /// Draws a fresh key from `rng`.
    pub fn generate(rng: &mut dyn CryptoRngCore) -> Self {
        let mut bytes = [0u8; KEY_LEN];
        rng.fill_bytes(&mut bytes);
        Key { bytes, kind: PhantomData }
    }

    /// Takes key material from storage. The caller should zeroize its copy.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Key { bytes, kind: PhantomData }
    }

    /// The key material, for the AEAD and for storage. Never log it.
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }

    /// A one-way 64-bit fingerprint: safe to compare and to show in tests and status
    /// output (it reveals nothing usable about the key).
    pub fn fingerprint(&self) -> u64 {
        let mut h = Sha256::new();
        h.update(b"NTMobile key fingerprint v1\0");
        h.update(K::NAME.as_bytes());
        h.update(self.bytes);
        let d = h.finalize();
        let mut f = [0u8; 8];
        f.copy_from_slice(d.get(..8).unwrap_or(&[0; 8]));
        u64::from_be_bytes(f)
    }
}

impl<K: KeyKind> Clone for Key<K> {
    fn clone(&self) -> Self {
        Key { bytes: self.bytes, kind: PhantomData }
    }
}

impl<K: KeyKind> Drop for Key<K> {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl<K: KeyKind> fmt::Debug for Key<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}(redacted)", K::NAME)
    }
}

impl Key<Tun> {
    /// The key a gateway session's data is sealed under (box as `Initiator`, its RS as
    /// `Responder`): one-way derived from K_tun, so that both ends of the session have it
    /// from the K_tun the DC gave them, and it is a distinct key of the data kind: no
    /// (key, sender, counter) of K_tun's own messages can meet one of the data.
    pub fn gateway_data_key(&self) -> KMnCn {
        let mut h = Sha256::new();
        h.update(b"NTMobile gateway data key v1\0");
        h.update(self.bytes);
        let d = h.finalize();
        let mut bytes = [0u8; KEY_LEN];
        bytes.copy_from_slice(d.get(..KEY_LEN).unwrap_or(&[0; KEY_LEN]));
        Key::from_bytes(bytes)
    }
}

/// Constant-time comparison: the time taken does not depend on where keys differ.
impl<K: KeyKind> PartialEq for Key<K> {
    fn eq(&self, other: &Self) -> bool {
        self.bytes.iter().zip(other.bytes.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}
impl<K: KeyKind> Eq for Key<K> {}

/// The raw 16 bytes. Keys only ever travel inside sealed bodies or TLS.
impl<K: KeyKind> Codec for Key<K> {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Key::from_bytes(r.array()?))
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.put(&self.bytes)
    }
    fn encoded_len(&self) -> usize {
        KEY_LEN
    }
}

/// A key handed to its holder with its lifetime (seconds from receipt).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyGrant<K: KeyKind> {
    /// The key.
    pub key: Key<K>,
    /// How long the receiver may use it.
    pub lifetime: Lifetime,
}

impl<K: KeyKind> Codec for KeyGrant<K> {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(KeyGrant { key: Key::decode(r)?, lifetime: Lifetime::decode(r)? })
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        self.key.encode(w)?;
        self.lifetime.encode(w)
    }
    fn encoded_len(&self) -> usize {
        KEY_LEN + 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;

    #[test]
    fn keys_are_redacted_and_compared_by_value() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let a = KTun::generate(&mut rng);
        let b = KTun::generate(&mut rng);
        assert_eq!(format!("{a:?}"), "K_tun(redacted)");
        assert_ne!(a, b);
        assert_eq!(a, a.clone());
        assert_ne!(a.fingerprint(), b.fingerprint());
        // The same bytes under two kinds have different fingerprints.
        let t = KTmp::from_bytes(*a.expose_secret());
        assert_ne!(t.fingerprint(), a.fingerprint());
    }

    #[test]
    fn grant_round_trips() {
        let g = KeyGrant { key: KNtmDc::from_bytes([7; 16]), lifetime: Lifetime(3600) };
        let bytes = g.to_vec();
        assert_eq!(bytes.len(), 20);
        assert_eq!(&bytes[16..], &[0, 0, 0x0e, 0x10]);
        assert_eq!(KeyGrant::<NtmDc>::from_bytes(&bytes), Ok(g));
    }
}
