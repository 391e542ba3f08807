//! AES-128-CCM with a 16-byte tag and a 12-byte nonce, in place and without allocation:
//! `ntm-aead` (built for speed, see its documentation) with this crate's keys and errors.

use super::CryptoError;
use crate::keys::{Key, KeyKind, KEY_LEN};
use crate::wire::Sender;
use ntm_aead::AeadError;

pub use crate::wire::TAG_LEN;

// The wire format fixes the tag length; the cipher must produce exactly that.
const _: () = assert!(TAG_LEN == ntm_aead::TAG_LEN);

/// The CCM nonce for (sender, counter): `sender | 0 0 0 | counter` (see the module doc of
/// [`crate::crypto`]).
pub fn nonce(sender: Sender, counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[0] = u8::from(sender);
    n[4..].copy_from_slice(&counter.to_be_bytes());
    n
}

/// An AES-128-CCM instance with its key schedule expanded once (cleared on drop).
#[derive(Debug)]
pub struct Aead(ntm_aead::Aead);

impl Aead {
    /// Expands `key`.
    pub fn new<K: KeyKind>(key: &Key<K>) -> Self {
        Self::from_raw(key.expose_secret())
    }

    /// Expands raw key bytes (for derived keys such as the ECIES wrap key).
    pub(crate) fn from_raw(key: &[u8; KEY_LEN]) -> Self {
        Aead(ntm_aead::Aead::new(key))
    }

    /// Encrypts `buf` in place and returns the tag.
    pub fn seal(&self, nonce: &[u8; 12], aad: &[u8], buf: &mut [u8]) -> Result<[u8; TAG_LEN], CryptoError> {
        // Only fails for messages over the 2^24-byte limit of a 12-byte CCM nonce, which
        // no NTMobile message reaches.
        self.0.seal(nonce, aad, buf).map_err(|_| CryptoError::Wire(crate::wire::WireError::TooLong("sealed body")))
    }

    /// The cipher itself, for batches ([`ntm_aead::Aead::seal_many`] and
    /// [`ntm_aead::Aead::open_many`]; [`super::Channel`] uses them).
    pub(crate) fn batch(&self) -> &ntm_aead::Aead {
        &self.0
    }

    /// Decrypts `buf` in place if `tag` verifies; zeroes `buf` otherwise.
    pub fn open(&self, nonce: &[u8; 12], aad: &[u8], buf: &mut [u8], tag: &[u8; TAG_LEN]) -> Result<(), CryptoError> {
        self.0.open(nonce, aad, buf, tag).map_err(|e| match e {
            AeadError::Forged | AeadError::TooLong => CryptoError::Forged,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KMnCn;

    #[test]
    fn seal_open_and_reject_tampering() {
        let aead = Aead::new(&KMnCn::from_bytes([3; 16]));
        let n = nonce(Sender::Initiator, 9);
        assert_eq!(n, [0x12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9]);
        let mut buf = *b"hello tunnel";
        let tag = aead.seal(&n, b"hdr", &mut buf).unwrap();
        assert_ne!(&buf, b"hello tunnel");
        let sealed = buf;
        aead.open(&n, b"hdr", &mut buf, &tag).unwrap();
        assert_eq!(&buf, b"hello tunnel");

        let mut t = sealed;
        t[0] ^= 1;
        assert_eq!(aead.open(&n, b"hdr", &mut t, &tag), Err(CryptoError::Forged));
        let mut t = sealed;
        assert_eq!(aead.open(&n, b"hdx", &mut t, &tag), Err(CryptoError::Forged));
        let mut t = sealed;
        assert_eq!(aead.open(&nonce(Sender::Responder, 9), b"hdr", &mut t, &tag), Err(CryptoError::Forged));
        let other = Aead::new(&KMnCn::from_bytes([4; 16]));
        let mut t = sealed;
        assert_eq!(other.open(&n, b"hdr", &mut t, &tag), Err(CryptoError::Forged));
    }
}
