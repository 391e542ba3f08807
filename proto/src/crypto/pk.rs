//! Public-key mode on P-256: node key pairs, attestations by the AS, signatures, and
//! K_mncn wrapped for the peer (ECIES: ephemeral ECDH, HKDF-SHA256, AES-128-CCM).
//!
//! Why attestations: a DC carries the public keys between MN and CN (spec 4.4). If nodes
//! trusted whatever key a DC handed them, a DC could substitute its own and read K_mncn.
//! So the AS, which nodes already trust through TLS, signs `(FQDN, public key)` at login
//! ([`Attestation`]), nodes verify the peer's attestation against the AS key they got in
//! their Login Response ([`Attestation::verify`] returns an [`AttestedKey`], the proof the
//! unwrap step requires), and every wrapped key is signed by its sender. With that, no DC
//! can learn K_mncn (spec section 3) even if it lies. Attestations carry no expiry:
//! authorisation to reach a node stays with its DC, which refuses nodes whose K_ntmdc
//! expired or whose account was disabled.
//!
//! In symmetric mode ([`wrap_with_tmp`]) K_mncn is wrapped with K_tmp, which DC_MN made;
//! the RS never holds K_tmp, so it cannot unwrap.
//!
//! The values that travel ([`PublicKey`], [`Signature`], [`Attestation`], [`TmpWrap`],
//! [`PublicWrap`]) are plain data of [`crate::wire::pk`], re-exported here; this module
//! holds the operations on them and the secrets behind them.

use super::{nonce, Aead, CryptoError};
use crate::keys::{KMnCn, KTmp, KEY_LEN};
use crate::wire::{Codec, Fqdn, Sender, SessionId};
use core::fmt;
use hkdf::Hkdf;
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{SigningKey, VerifyingKey};
use rand_core::CryptoRngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

pub use crate::wire::pk::{Attestation, PublicKey, PublicWrap, Signature, TmpWrap, PUBLIC_KEY_LEN, SIGNATURE_LEN};

impl PublicKey {
    /// Verifies `sig` over `msg` (ECDSA P-256 with SHA-256).
    pub fn verify(&self, msg: &[u8], sig: &Signature) -> Result<(), CryptoError> {
        let s = p256::ecdsa::Signature::from_slice(&sig.0).map_err(|_| CryptoError::BadSignature)?;
        VerifyingKey::from(self.as_p256()).verify(msg, &s).map_err(|_| CryptoError::BadSignature)
    }
}

/// A P-256 key pair: a node's (often its device certificate's key) or the AS's
/// attestation key. The secret scalar is zeroized on drop by the p256 crate.
#[derive(Clone)]
pub struct KeyPair {
    secret: p256::SecretKey,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPair(public={:?})", self.public())
    }
}

impl KeyPair {
    /// Draws a new key pair.
    pub fn generate(rng: &mut dyn CryptoRngCore) -> Self {
        let mut rng = rng;
        KeyPair { secret: p256::SecretKey::random(&mut rng) }
    }

    /// Uses an existing secret key (e.g. parsed from the device's PKCS#8 file).
    pub fn from_secret(secret: p256::SecretKey) -> Self {
        KeyPair { secret }
    }

    /// Parses a 32-byte big-endian scalar.
    pub fn from_scalar_bytes(bytes: &[u8; 32]) -> Result<Self, CryptoError> {
        p256::SecretKey::from_slice(bytes).map(|secret| KeyPair { secret }).map_err(|_| CryptoError::BadPublicKey)
    }

    /// The 32-byte scalar, for storage. Never log it.
    pub fn expose_scalar(&self) -> Zeroizing<[u8; 32]> {
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(&self.secret.to_bytes());
        out
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey::from_p256(self.secret.public_key())
    }

    /// Signs `msg` (ECDSA P-256, SHA-256, deterministic nonces per RFC 6979).
    pub fn sign(&self, msg: &[u8]) -> Signature {
        let sig: p256::ecdsa::Signature = SigningKey::from(&self.secret).sign(msg);
        let mut out = [0u8; SIGNATURE_LEN];
        out.copy_from_slice(&sig.to_bytes());
        Signature(out)
    }
}

/// A peer key whose attestation verified: the only form in which a node accepts a peer's
/// public key for unwrapping or signature checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttestedKey {
    fqdn: Fqdn,
    public_key: PublicKey,
}

impl AttestedKey {
    /// The node the key belongs to.
    pub fn fqdn(&self) -> &Fqdn {
        &self.fqdn
    }
    /// The key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public_key
    }
}

impl Attestation {
    fn signed_bytes(fqdn: &Fqdn, public_key: &PublicKey) -> Vec<u8> {
        let mut m = b"NTMobile attestation v1\0".to_vec();
        m.extend_from_slice(&fqdn.to_vec());
        m.extend_from_slice(&public_key.to_bytes());
        m
    }

    /// The AS signs `(fqdn, public_key)` with its attestation key.
    pub fn issue(as_key: &KeyPair, fqdn: Fqdn, public_key: PublicKey) -> Self {
        let signature = as_key.sign(&Self::signed_bytes(&fqdn, &public_key));
        Attestation { fqdn, public_key, signature }
    }

    /// Verifies the AS's signature and that the attestation is for `expected`.
    pub fn verify(&self, as_public: &PublicKey, expected: &Fqdn) -> Result<AttestedKey, CryptoError> {
        if &self.fqdn != expected {
            return Err(CryptoError::BadSignature);
        }
        as_public.verify(&Self::signed_bytes(&self.fqdn, &self.public_key), &self.signature)?;
        Ok(AttestedKey { fqdn: self.fqdn.clone(), public_key: self.public_key })
    }
}

fn wrap_aad(session: SessionId, from: &Fqdn, to: &Fqdn) -> Vec<u8> {
    let mut aad = b"NTMobile K_mncn wrap v1\0".to_vec();
    aad.extend_from_slice(&session.0.to_be_bytes());
    aad.extend_from_slice(&from.to_vec());
    aad.extend_from_slice(&to.to_vec());
    aad
}

/// Wraps K_mncn with K_tmp. K_tmp wraps exactly one key in one negotiation, so the
/// nonce (Initiator, 0) is used once per K_tmp; a retransmitted Tunnel Request carries the
/// same wrap, never a second one.
pub fn wrap_with_tmp(
    k_tmp: &KTmp,
    session: SessionId,
    from: &Fqdn,
    to: &Fqdn,
    k_mncn: &KMnCn,
) -> Result<TmpWrap, CryptoError> {
    let mut ciphertext = *k_mncn.expose_secret();
    let tag = Aead::new(k_tmp).seal(&nonce(Sender::Initiator, 0), &wrap_aad(session, from, to), &mut ciphertext)?;
    Ok(TmpWrap { ciphertext, tag })
}

/// Unwraps K_mncn with K_tmp.
pub fn unwrap_with_tmp(
    k_tmp: &KTmp,
    session: SessionId,
    from: &Fqdn,
    to: &Fqdn,
    wrap: &TmpWrap,
) -> Result<KMnCn, CryptoError> {
    let mut key = Zeroizing::new(wrap.ciphertext);
    Aead::new(k_tmp).open(&nonce(Sender::Initiator, 0), &wrap_aad(session, from, to), &mut *key, &wrap.tag)?;
    Ok(KMnCn::from_bytes(*key))
}

fn derive_wrap_key(
    shared: &[u8],
    session: SessionId,
    ephemeral: &PublicKey,
    recipient: &PublicKey,
) -> Zeroizing<[u8; KEY_LEN]> {
    let mut info = b"NTMobile ECIES P-256 v1\0".to_vec();
    info.extend_from_slice(&ephemeral.to_bytes());
    info.extend_from_slice(&recipient.to_bytes());
    let hk = Hkdf::<Sha256>::new(Some(&session.0.to_be_bytes()), shared);
    let mut okm = Zeroizing::new([0u8; KEY_LEN]);
    // Expanding 16 bytes from SHA-256 is far below HKDF's 255 * 32 limit.
    let _ = hk.expand(&info, &mut *okm);
    okm
}

fn public_wrap_signed_bytes(aad: &[u8], ephemeral: &PublicKey, ciphertext: &[u8], tag: &[u8]) -> Vec<u8> {
    let mut m = b"NTMobile Tunnel Request signature v1\0".to_vec();
    m.extend_from_slice(aad);
    m.extend_from_slice(&ephemeral.to_bytes());
    m.extend_from_slice(ciphertext);
    m.extend_from_slice(tag);
    m
}

/// Wraps K_mncn for `peer` (ECIES) and signs the wrap with `own`.
pub fn wrap_for_peer(
    rng: &mut dyn CryptoRngCore,
    own: &KeyPair,
    peer: &AttestedKey,
    session: SessionId,
    from: &Fqdn,
    k_mncn: &KMnCn,
) -> Result<PublicWrap, CryptoError> {
    let mut rng = rng;
    let eph = p256::ecdh::EphemeralSecret::random(&mut rng);
    let ephemeral = PublicKey::from_p256(eph.public_key());
    let shared = eph.diffie_hellman(peer.public_key.as_p256());
    let wrap_key = derive_wrap_key(shared.raw_secret_bytes(), session, &ephemeral, &peer.public_key);
    let aad = wrap_aad(session, from, &peer.fqdn);
    let mut ciphertext = *k_mncn.expose_secret();
    // The wrap key is fresh per ephemeral key, so the fixed nonce is used once per key.
    let tag = Aead::from_raw(&wrap_key).seal(&nonce(Sender::Initiator, 0), &aad, &mut ciphertext)?;
    let signature = own.sign(&public_wrap_signed_bytes(&aad, &ephemeral, &ciphertext, &tag));
    Ok(PublicWrap { ephemeral, ciphertext, tag, signature })
}

/// Verifies the sender's signature, then unwraps K_mncn with our own key.
pub fn unwrap_from_peer(
    own: &KeyPair,
    own_fqdn: &Fqdn,
    sender: &AttestedKey,
    session: SessionId,
    wrap: &PublicWrap,
) -> Result<KMnCn, CryptoError> {
    let aad = wrap_aad(session, &sender.fqdn, own_fqdn);
    sender
        .public_key
        .verify(&public_wrap_signed_bytes(&aad, &wrap.ephemeral, &wrap.ciphertext, &wrap.tag), &wrap.signature)?;
    let shared = p256::ecdh::diffie_hellman(own.secret.to_nonzero_scalar(), wrap.ephemeral.as_p256().as_affine());
    let wrap_key = derive_wrap_key(shared.raw_secret_bytes(), session, &wrap.ephemeral, &own.public());
    let mut key = Zeroizing::new(wrap.ciphertext);
    Aead::from_raw(&wrap_key).open(&nonce(Sender::Initiator, 0), &aad, &mut *key, &wrap.tag)?;
    Ok(KMnCn::from_bytes(*key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Key;
    use rand_chacha::rand_core::SeedableRng;

    fn rng() -> rand_chacha::ChaCha20Rng {
        rand_chacha::ChaCha20Rng::seed_from_u64(7)
    }

    #[test]
    fn a_generated_public_key_round_trips() {
        let mut r = rng();
        let kp = KeyPair::generate(&mut r);
        let pk = kp.public();
        assert_eq!(PublicKey::from_bytes(&pk.to_bytes()), Ok(pk));
        // The invalid points are refused by the wire form (`wire::pk` tests).
    }

    #[test]
    fn attestation_binds_name_and_key() {
        let mut r = rng();
        let as_key = KeyPair::generate(&mut r);
        let node = KeyPair::generate(&mut r);
        let name = Fqdn::new("cn.zone-b.example").unwrap();
        let att = Attestation::issue(&as_key, name.clone(), node.public());
        let proof = att.verify(&as_key.public(), &name).unwrap();
        assert_eq!(proof.public_key(), &node.public());
        // Another name, another signer, a swapped key: all refused.
        assert!(att.verify(&as_key.public(), &Fqdn::new("mn.example").unwrap()).is_err());
        assert!(att.verify(&node.public(), &name).is_err());
        let mut swapped = att.clone();
        swapped.public_key = KeyPair::generate(&mut r).public();
        assert_eq!(swapped.verify(&as_key.public(), &name), Err(CryptoError::BadSignature));
        assert_eq!(Attestation::from_bytes(&att.to_vec()), Ok(att));
    }

    #[test]
    fn tmp_wrap_round_trip_and_wrong_key() {
        let mut r = rng();
        let (a, b) = (Fqdn::new("a.example").unwrap(), Fqdn::new("b.example").unwrap());
        let k_tmp = KTmp::generate(&mut r);
        let k = KMnCn::generate(&mut r);
        let w = wrap_with_tmp(&k_tmp, SessionId(5), &a, &b, &k).unwrap();
        assert_eq!(unwrap_with_tmp(&k_tmp, SessionId(5), &a, &b, &w).unwrap(), k);
        assert!(unwrap_with_tmp(&Key::generate(&mut r), SessionId(5), &a, &b, &w).is_err());
        assert!(unwrap_with_tmp(&k_tmp, SessionId(6), &a, &b, &w).is_err());
        assert!(unwrap_with_tmp(&k_tmp, SessionId(5), &b, &a, &w).is_err());
    }

    #[test]
    fn ecies_wrap_needs_the_right_keys_and_signature() {
        let mut r = rng();
        let as_key = KeyPair::generate(&mut r);
        let (mn, cn) = (KeyPair::generate(&mut r), KeyPair::generate(&mut r));
        let (mn_name, cn_name) = (Fqdn::new("mn.a.example").unwrap(), Fqdn::new("cn.b.example").unwrap());
        let cn_att =
            Attestation::issue(&as_key, cn_name.clone(), cn.public()).verify(&as_key.public(), &cn_name).unwrap();
        let mn_att =
            Attestation::issue(&as_key, mn_name.clone(), mn.public()).verify(&as_key.public(), &mn_name).unwrap();
        let k = KMnCn::generate(&mut r);
        let w = wrap_for_peer(&mut r, &mn, &cn_att, SessionId(9), &mn_name, &k).unwrap();
        assert_eq!(PublicWrap::from_bytes(&w.to_vec()).as_ref(), Ok(&w));
        assert_eq!(unwrap_from_peer(&cn, &cn_name, &mn_att, SessionId(9), &w).unwrap(), k);
        // Not the recipient: the signature checks out but the ECDH secret differs.
        assert_eq!(unwrap_from_peer(&mn, &cn_name, &mn_att, SessionId(9), &w), Err(CryptoError::Forged));
        // A wrap re-signed by someone else (a DC that swapped keys) is refused.
        let mut forged = w.clone();
        forged.signature = KeyPair::generate(&mut r).sign(b"x");
        assert_eq!(unwrap_from_peer(&cn, &cn_name, &mn_att, SessionId(9), &forged), Err(CryptoError::BadSignature));
        let mut tampered = w;
        tampered.ciphertext[0] ^= 1;
        assert_eq!(unwrap_from_peer(&cn, &cn_name, &mn_att, SessionId(9), &tampered), Err(CryptoError::BadSignature));
    }
}
