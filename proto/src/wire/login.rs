//! Login (spec 4.1, Fig. 2): Login Request and Response between node and AS, Key
//! Distribution and NTM ACK between AS and DC. All four travel inside TLS (plain bodies).
//!
//! ```text
//! LoginRequest     request_id u32 | credential | public_key? (33)
//! credential       0x01 password: email (u8 len) | password (u8 len, secret)
//!                  0x02 device certificate (identity from the TLS client certificate)
//!                  0x03 OpenID Connect: id_token (u16 len, secret)
//! LoginResponse    request_id u32 | fqdn | key_id u32 | K_ntmdc (16) | lifetime u32
//!                  | attestation? | as_public_key? (33)
//! KeyDistribution  request_id u32 | fqdn | key_id u32 | K_ntmdc (16) | lifetime u32 | attestation?
//! NtmAck           request_id u32 | key_id u32
//! ```

use super::pk::{Attestation, PublicKey};
use super::{code_enum, wire_struct, Codec, Fqdn, KeyId, Reader, RequestId, Text, WireError, Writer};
use crate::keys::{KeyGrant, NtmDc};
use core::fmt;
use zeroize::Zeroize;

/// Longest account e-mail address (RFC 5321 path limit).
pub const EMAIL_MAX: usize = 254;
/// Longest password.
pub const PASSWORD_MAX: usize = 128;
/// Longest OpenID Connect ID token.
pub const ID_TOKEN_MAX: usize = 8192;

/// Secret bytes (a password or a bearer token): zeroized on drop, never printed.
/// `WIDE` selects a u16 length prefix instead of a u8 one.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<const MAX: usize, const WIDE: bool>(Vec<u8>);

impl<const MAX: usize, const WIDE: bool> Secret<MAX, WIDE> {
    /// Wraps secret bytes, refusing more than `MAX`.
    pub fn new(bytes: &[u8]) -> Result<Self, WireError> {
        let cap = if WIDE { usize::from(u16::MAX) } else { usize::from(u8::MAX) };
        if bytes.len() > MAX || bytes.len() > cap {
            return Err(WireError::TooLong("secret"));
        }
        Ok(Secret(bytes.to_vec()))
    }

    /// The secret. Never log it.
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }
}

impl<const MAX: usize, const WIDE: bool> Drop for Secret<MAX, WIDE> {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl<const MAX: usize, const WIDE: bool> fmt::Debug for Secret<MAX, WIDE> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

impl<const MAX: usize, const WIDE: bool> Codec for Secret<MAX, WIDE> {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let n = if WIDE { usize::from(r.u16()?) } else { usize::from(r.u8()?) };
        if n > MAX {
            return Err(WireError::TooLong("secret"));
        }
        Ok(Secret(r.take(n)?.to_vec()))
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        if WIDE {
            w.u16(u16::try_from(self.0.len()).map_err(|_| WireError::TooLong("secret"))?)?;
        } else {
            w.u8(u8::try_from(self.0.len()).map_err(|_| WireError::TooLong("secret"))?)?;
        }
        w.put(&self.0)
    }
    fn encoded_len(&self) -> usize {
        usize::from(if WIDE { 2u8 } else { 1 }) + self.0.len()
    }
}

/// A password (u8 length prefix).
pub type Password = Secret<PASSWORD_MAX, false>;
/// An OpenID Connect ID token (u16 length prefix).
pub type IdToken = Secret<ID_TOKEN_MAX, true>;

code_enum! {
    /// Credential code points.
    pub enum CredentialKind {
        /// Account e-mail and password.
        Password = 0x01,
        /// The device certificate presented in mutual TLS.
        DeviceCertificate = 0x02,
        /// An OpenID Connect ID token.
        OidcToken = 0x03,
    }
}

/// What the node proves itself with (spec 4.1). All three use the same sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// E-mail and password.
    Password {
        /// The account's e-mail address.
        email: Text<EMAIL_MAX>,
        /// The password.
        password: Password,
    },
    /// No bytes: the identity is the client certificate TLS verified.
    DeviceCertificate,
    /// An ID token from a configured OpenID Connect provider.
    OidcToken(IdToken),
}

impl Credential {
    /// The credential's code point.
    pub fn kind(&self) -> CredentialKind {
        match self {
            Credential::Password { .. } => CredentialKind::Password,
            Credential::DeviceCertificate => CredentialKind::DeviceCertificate,
            Credential::OidcToken(_) => CredentialKind::OidcToken,
        }
    }
}

impl Codec for Credential {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        match CredentialKind::from(r.u8()?) {
            CredentialKind::Password => {
                Ok(Credential::Password { email: Codec::decode(r)?, password: Codec::decode(r)? })
            }
            CredentialKind::DeviceCertificate => Ok(Credential::DeviceCertificate),
            CredentialKind::OidcToken => Ok(Credential::OidcToken(Codec::decode(r)?)),
            CredentialKind::Unknown(_) => Err(WireError::BadValue("credential kind")),
        }
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.u8(u8::from(self.kind()))?;
        match self {
            Credential::Password { email, password } => {
                email.encode(w)?;
                password.encode(w)
            }
            Credential::DeviceCertificate => Ok(()),
            Credential::OidcToken(t) => t.encode(w),
        }
    }
    fn encoded_len(&self) -> usize {
        1 + match self {
            Credential::Password { email, password } => email.encoded_len() + password.encoded_len(),
            Credential::DeviceCertificate => 0,
            Credential::OidcToken(t) => t.encoded_len(),
        }
    }
}

wire_struct! {
    /// Node -> AS, inside TLS: log me in.
    pub struct LoginRequest {
        /// Matches the response.
        pub request_id: RequestId,
        /// The proof of identity.
        pub credential: Credential,
        /// The node's public key, for public-key mode (the AS attests it). With a device
        /// certificate it must equal the certificate's key.
        pub public_key: Option<PublicKey>,
    }
}

wire_struct! {
    /// AS -> node, inside TLS: you are logged in.
    pub struct LoginResponse {
        /// The request this answers.
        pub request_id: RequestId,
        /// The node's name; its zone's NS record names its DC.
        pub fqdn: Fqdn,
        /// The id under which the DC knows K_ntmdc.
        pub key_id: KeyId,
        /// K_ntmdc and its lifetime.
        pub k_ntmdc: KeyGrant<NtmDc>,
        /// The AS's attestation of the node's public key (public-key mode).
        pub attestation: Option<Attestation>,
        /// The AS's attestation key, to verify peers' attestations.
        pub as_public_key: Option<PublicKey>,
    }
}

wire_struct! {
    /// AS -> DC, inside mutual TLS: a node logged in; here is its key.
    pub struct KeyDistribution {
        /// Matches the NTM ACK.
        pub request_id: RequestId,
        /// The node.
        pub fqdn: Fqdn,
        /// The key's id.
        pub key_id: KeyId,
        /// K_ntmdc and its lifetime.
        pub k_ntmdc: KeyGrant<NtmDc>,
        /// The node's attested public key (public-key mode).
        pub attestation: Option<Attestation>,
    }
}

wire_struct! {
    /// DC -> AS, inside mutual TLS: the key is in place.
    pub struct NtmAck {
        /// The Key Distribution this acknowledges.
        pub request_id: RequestId,
        /// The key now held.
        pub key_id: KeyId,
    }
}
