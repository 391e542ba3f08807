//! Encryption and authentication: AES-128-CCM with a nonce that can never repeat under one
//! key, a sliding replay window, and the public-key mode on P-256.
//!
//! Nonce rule (docs/protocol.md, "Nonces and replay"): the 12-byte CCM nonce is
//! `sender (1 byte) | 0 0 0 | counter (8 bytes, big-endian)`. Sender and counter are the
//! header's fields, so the nonce is authenticated as part of the associated data. Each
//! role sealing under a key has its own sender code ([`crate::keys::KeyKind::SENDERS`]), and
//! the only way to seal is through a [`Channel`], whose counter only increases and refuses
//! to wrap. Two senders therefore never share a nonce, and one sender never repeats one.
//!
//! The receiver keeps one [`ReplayWindow`] per peer sender and commits a counter only after
//! the tag verified, so forged packets cannot move the window.

mod aead;
mod channel;
pub mod pk;
mod replay;

pub use aead::{nonce, Aead, TAG_LEN};
pub use channel::{parse_plain, plain, Channel, Opened};
/// Whether AES-CCM runs through VAES on this CPU (`ntm_aead`).
pub use ntm_aead::vaes_available;
pub use replay::{ReplayWindow, WINDOW_BITS};

use crate::wire::{Sender, WireError};
use core::fmt;

/// Why a message could not be sealed or opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CryptoError {
    /// The message is plain where a sealed one was required.
    NotSealed,
    /// The header's key id is not the key tried.
    WrongKeyId,
    /// The header's sender may not seal under this kind of key.
    SenderNotAllowed(Sender),
    /// The header claims our own role: a reflected message.
    Reflected,
    /// The counter was already accepted.
    Replayed,
    /// The counter is older than the replay window.
    TooOld,
    /// The tag did not verify: tampered, or sealed under another key.
    Forged,
    /// The key's lifetime is over.
    Expired,
    /// This sender used every counter value; the key must be replaced.
    CounterExhausted,
    /// The next counter is not reserved yet (see `Channel::limit_counter`); sealing can
    /// go on once the reservation is extended.
    CounterNotReserved,
    /// A signature did not verify.
    BadSignature,
    /// A public key or point is invalid.
    BadPublicKey,
    /// The bytes around the ciphertext are malformed.
    Wire(WireError),
}

impl From<WireError> for CryptoError {
    fn from(e: WireError) -> Self {
        CryptoError::Wire(e)
    }
}

impl fmt::Display for CryptoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CryptoError::NotSealed => f.write_str("message is not sealed"),
            CryptoError::WrongKeyId => f.write_str("message is for another key"),
            CryptoError::SenderNotAllowed(s) => write!(f, "sender {s:?} may not use this key"),
            CryptoError::Reflected => f.write_str("reflected message (our own sender role)"),
            CryptoError::Replayed => f.write_str("replayed message"),
            CryptoError::TooOld => f.write_str("message older than the replay window"),
            CryptoError::Forged => f.write_str("authentication failed"),
            CryptoError::Expired => f.write_str("key expired"),
            CryptoError::CounterExhausted => f.write_str("nonce counter exhausted"),
            CryptoError::CounterNotReserved => f.write_str("nonce counter not reserved yet"),
            CryptoError::BadSignature => f.write_str("signature does not verify"),
            CryptoError::BadPublicKey => f.write_str("invalid public key"),
            CryptoError::Wire(e) => write!(f, "malformed: {e}"),
        }
    }
}

impl std::error::Error for CryptoError {}
