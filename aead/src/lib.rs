//! AES-128-CCM with a 16-byte tag and a 12-byte nonce, in place and without allocation.
//!
//! This is a crate of its own for one reason: speed without size. The `aes` and `ccm`
//! crates are generic, and generic code is compiled in the crate that names the concrete
//! type. Here that is this small crate, so the workspace's release profile can build it
//! (with `aes`, `ccm`, `ctr` and `cipher`) at opt-level 3 and leave everything else at
//! "z". Keys, nonces and replay rules live in `ntm-proto`, which wraps this.

#![no_std]

use aes::Aes128Enc;
use ccm::aead::generic_array::GenericArray;
use ccm::aead::{AeadInPlace, KeyInit};
use ccm::consts::{U12, U16};
use ccm::Ccm;

/// Length of the key.
pub const KEY_LEN: usize = 16;
/// Length of the nonce.
pub const NONCE_LEN: usize = 12;
/// Length of the authentication tag.
pub const TAG_LEN: usize = 16;

/// CCM encrypts only (CTR and CBC-MAC): the decryption key schedule is never needed.
type Ccm128 = Ccm<Aes128Enc, U16, U12>;

/// Why sealing or opening failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AeadError {
    /// The message is over CCM's limit for a 12-byte nonce (2^24 bytes).
    TooLong,
    /// The tag did not verify: tampered, or sealed under another key or nonce.
    Forged,
}

/// An AES-128-CCM instance with its key schedule expanded once. The `aes` crate's
/// `zeroize` feature clears the schedule on drop.
pub struct Aead(Ccm128);

impl core::fmt::Debug for Aead {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Aead(redacted)")
    }
}

impl Aead {
    /// Expands `key`.
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        Aead(Ccm128::new(GenericArray::from_slice(key)))
    }

    /// Encrypts `buf` in place and returns the tag.
    pub fn seal(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut [u8]) -> Result<[u8; TAG_LEN], AeadError> {
        let tag = self
            .0
            .encrypt_in_place_detached(GenericArray::from_slice(nonce), aad, buf)
            .map_err(|_| AeadError::TooLong)?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(&tag);
        Ok(out)
    }

    /// Decrypts `buf` in place if `tag` verifies; leaves garbage in `buf` otherwise.
    pub fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AeadError> {
        self.0
            .decrypt_in_place_detached(GenericArray::from_slice(nonce), aad, buf, GenericArray::from_slice(tag))
            .map_err(|_| AeadError::Forged)
    }
}

#[cfg(test)]
extern crate std;

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;

    /// An answer from another implementation: OpenSSL's AES-CCM (through Python's
    /// `cryptography`), key 07.., nonce 01.., 16-byte tag.
    #[test]
    fn matches_openssl() {
        let mut buf = *b"a packet for the tunnel";
        let tag = Aead::new(&[7; KEY_LEN]).seal(&[1; NONCE_LEN], b"header", &mut buf).unwrap();
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<std::string::String>();
        assert_eq!(hex(&buf), "d6ea441fcddf57bf98f66df3ee5b22ad24e400237bf2ff");
        assert_eq!(hex(&tag), "2e3aea33a7239222d8252a1c9625a1bd");
    }

    #[test]
    fn seal_then_open_and_every_change_is_refused() {
        let aead = Aead::new(&[7; KEY_LEN]);
        let nonce = [1u8; NONCE_LEN];
        let mut buf = *b"a packet for the tunnel";
        let tag = aead.seal(&nonce, b"header", &mut buf).unwrap();
        let sealed = buf;
        assert_ne!(&sealed, b"a packet for the tunnel");
        let mut again = *b"a packet for the tunnel";
        assert_eq!(aead.seal(&nonce, b"header", &mut again).unwrap(), tag);
        assert_eq!(again, sealed);
        aead.open(&nonce, b"header", &mut buf, &tag).unwrap();
        assert_eq!(&buf, b"a packet for the tunnel");
        for i in 0..sealed.len() {
            let mut t = sealed;
            t[i] ^= 0x80;
            assert_eq!(aead.open(&nonce, b"header", &mut t, &tag), Err(AeadError::Forged));
        }
        let mut t = sealed;
        let mut bad = tag;
        bad[15] ^= 1;
        assert_eq!(aead.open(&nonce, b"header", &mut t, &bad), Err(AeadError::Forged));
        let mut t = sealed;
        assert_eq!(aead.open(&[2; NONCE_LEN], b"header", &mut t, &tag), Err(AeadError::Forged));
        let mut t = sealed;
        assert_eq!(Aead::new(&[8; KEY_LEN]).open(&nonce, b"header", &mut t, &tag), Err(AeadError::Forged));
    }
}
