//! The deployment's PKI (spec section 3): one CA, certificates that carry a role, the
//! rustls configurations the daemons use, and the identity a verified certificate grants.
//!
//! **Certificates.** Every key is ECDSA P-256. A certificate names its holder with a SAN DNS
//! name (the server's FQDN, or the node's FQDN for a device certificate) and its role with
//! exactly one SAN URI `urn:ntmobile:role:<node|as|dc|rs|ns>`. Server certificates (AS, DC,
//! RS, NS) carry the extended key usages serverAuth and clientAuth, because servers are also
//! TLS clients of each other (mutual TLS at first contact, spec 3); device certificates carry
//! clientAuth only, so a device can never pose as a server. The CA is `CA:TRUE, pathlen:0`
//! with keyCertSign: it signs end-entity certificates and nothing that could sign further.
//!
//! **Issuing** is `crate::ca`'s (the `ntm-ca` command), which makes certificates as this
//! module reads them.
//!
//! **Loading** ([`TlsMaterial::load`]) checks at start-up everything a peer would check
//! later, and says which file is wrong and how.
//!
//! **TLS** ([`server_config`], [`client_config`]): rustls with the ring provider, TLS 1.3
//! only, the deployment CA as the only trust anchor. The agent's TLS stack speaks TLS 1.3
//! with TLS13_AES_128_GCM_SHA256 on secp256r1; [`provider`] keeps both enabled.
//!
//! **Identity** ([`peer_identity`]) turns a certificate that rustls has verified into the
//! [`PeerIdentity`] the engines take in `handle_stream`.

use ntm_proto::crypto::pk::PublicKey;
use ntm_proto::engine::{PeerIdentity, Role, ROLE_URI_PREFIX};
use ntm_proto::wire::Fqdn;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject, SectionKind};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, InconsistentKeys, RootCertStore};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::prelude::FromDer;
use x509_parser::time::ASN1Time;
use x509_parser::x509::SubjectPublicKeyInfo;

/// The longest lifetime [`Ca`] issues (about 100 years). Longer is a typo, and would
/// overflow the certificate's date range.
pub const MAX_VALID_DAYS: u32 = 36_525;

/// Why a certificate, key or TLS configuration could not be made, loaded or accepted.
/// `Display` gives one line, naming the file where there is one.
#[derive(Debug)]
pub enum PkiError {
    /// The file does not exist.
    Missing {
        /// The file.
        file: String,
    },
    /// The file exists but could not be read.
    Unreadable {
        /// The file.
        file: String,
        /// What the OS said.
        error: std::io::Error,
    },
    /// The file holds no PEM section, or a broken one.
    NotPem {
        /// The file.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// The file holds PEM but no certificate.
    NoCertificate {
        /// The file.
        file: String,
    },
    /// The file holds PEM but no private key.
    NoKey {
        /// The file.
        file: String,
    },
    /// The key cannot be used: several keys, an unsupported type, not P-256.
    BadKey {
        /// The file.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// The private key is not the certificate's.
    KeyMismatch {
        /// The certificate file.
        cert: String,
        /// The key file.
        key: String,
    },
    /// The CA file does not hold a CA certificate.
    NotCa {
        /// The file.
        file: String,
    },
    /// The certificate does not chain to the deployment CA.
    NotSignedByCa {
        /// The certificate file.
        file: String,
        /// The CA file.
        ca: String,
    },
    /// The certificate's validity has ended.
    Expired {
        /// The file.
        file: String,
        /// When it ended.
        not_after: String,
    },
    /// The certificate's validity has not begun.
    NotYetValid {
        /// The file.
        file: String,
        /// When it begins.
        not_before: String,
    },
    /// The certificate cannot be used: does not parse, has no valid role or name, lacks
    /// the usage its role needs, or fails verification for another reason.
    BadCertificate {
        /// The file.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// The bytes are not one X.509 certificate.
    NotX509(String),
    /// The certificate carries no `urn:ntmobile:role:` SAN URI.
    NoRole,
    /// The certificate carries more than one role URI.
    SeveralRoles,
    /// The role URI names no role this build knows.
    UnknownRole(String),
    /// The certificate carries no SAN DNS name.
    NoName,
    /// The SAN DNS name is not a valid FQDN.
    BadName(String),
    /// The certificate's extended key usage does not fit its role.
    WrongPurpose {
        /// The role the certificate claims.
        role: Role,
        /// The usage it lacks.
        needs: &'static str,
    },
    /// The certificate or request claims a P-256 key but the point is invalid.
    BadPublicKey(String),
    /// A key to certify is not ECDSA P-256.
    NotP256,
    /// A lifetime of zero days or more than [`MAX_VALID_DAYS`].
    BadValidity(u32),
    /// The certificate signing request does not parse or its signature is wrong.
    BadCsr(String),
    /// The certificate signing request asks for another name than the CA was told to
    /// certify, or for none.
    CsrName {
        /// What the request names (its CN and SAN DNS names), comma-separated.
        requested: String,
        /// The name the CA was told to certify.
        expected: Fqdn,
    },
    /// Certificate generation failed (rcgen).
    Generate(String),
    /// rustls refused the configuration.
    Tls(rustls::Error),
}

impl fmt::Display for PkiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PkiError::Missing { file } => write!(f, "{file}: no such file"),
            PkiError::Unreadable { file, error } => write!(f, "{file}: cannot read: {error}"),
            PkiError::NotPem { file, reason } => write!(f, "{file}: not PEM: {reason}"),
            PkiError::NoCertificate { file } => write!(f, "{file}: no CERTIFICATE in the file"),
            PkiError::NoKey { file } => write!(f, "{file}: no PRIVATE KEY in the file"),
            PkiError::BadKey { file, reason } => write!(f, "{file}: unusable key: {reason}"),
            PkiError::KeyMismatch { cert, key } => {
                write!(f, "{key}: the private key does not belong to the certificate in {cert}")
            }
            PkiError::NotCa { file } => write!(f, "{file}: not a CA certificate (basicConstraints CA:TRUE missing)"),
            PkiError::NotSignedByCa { file, ca } => {
                write!(f, "{file}: certificate not signed by the deployment CA in {ca}")
            }
            PkiError::Expired { file, not_after } => write!(f, "{file}: certificate expired at {not_after}"),
            PkiError::NotYetValid { file, not_before } => {
                write!(f, "{file}: certificate not valid before {not_before} (check the clock)")
            }
            PkiError::BadCertificate { file, reason } => write!(f, "{file}: unusable certificate: {reason}"),
            PkiError::NotX509(reason) => write!(f, "not an X.509 certificate: {reason}"),
            PkiError::NoRole => write!(f, "certificate has no {ROLE_URI_PREFIX}<role> SAN URI"),
            PkiError::SeveralRoles => write!(f, "certificate has more than one {ROLE_URI_PREFIX} SAN URI"),
            PkiError::UnknownRole(uri) => write!(f, "certificate has an unknown role: {uri}"),
            PkiError::NoName => write!(f, "certificate has no SAN DNS name"),
            PkiError::BadName(name) => write!(f, "certificate's SAN DNS name is not a valid FQDN: {name:?}"),
            PkiError::WrongPurpose { role, needs } => {
                write!(f, "certificate for role {} lacks the extended key usage {needs}", role.label())
            }
            PkiError::BadPublicKey(reason) => write!(f, "invalid public key: {reason}"),
            PkiError::NotP256 => write!(f, "the key is not ECDSA P-256"),
            PkiError::BadValidity(days) => {
                write!(f, "lifetime of {days} days: must be 1 to {MAX_VALID_DAYS} days")
            }
            PkiError::BadCsr(reason) => write!(f, "bad certificate signing request: {reason}"),
            PkiError::CsrName { requested, expected } => {
                write!(f, "certificate signing request names {requested:?}, expected {expected}")
            }
            PkiError::Generate(reason) => write!(f, "certificate generation failed: {reason}"),
            PkiError::Tls(e) => write!(f, "TLS configuration: {e}"),
        }
    }
}

impl std::error::Error for PkiError {}

/// The SAN URI that grants `role`.
pub fn role_uri(role: Role) -> String {
    format!("{ROLE_URI_PREFIX}{}", role.label())
}

// ---------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------

/// What a daemon needs for TLS: the deployment CA, its own certificate chain and key, and
/// the identity its certificate grants. Made only by [`TlsMaterial::load`] or
/// [`TlsMaterial::from_pem`], which check it fits together.
pub struct TlsMaterial {
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    identity: PeerIdentity,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("identity", &self.identity)
            .field("chain_len", &self.chain.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Clone for TlsMaterial {
    fn clone(&self) -> Self {
        TlsMaterial {
            ca: self.ca.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            identity: self.identity.clone(),
        }
    }
}

impl TlsMaterial {
    /// Reads the CA certificate, our certificate chain (end entity first) and our private
    /// key (PKCS#8, SEC1 or PKCS#1 PEM), and checks what a peer would check: the CA file
    /// holds exactly one CA certificate, in its validity; the key is the certificate's; the
    /// certificate is ECDSA P-256, carries a valid role and name with the usages its role
    /// needs (clientAuth always, serverAuth for servers), chains to the CA and is in its
    /// validity. Each error names the file and what is wrong with it.
    pub fn load(
        ca_path: impl AsRef<Path>,
        cert_path: impl AsRef<Path>,
        key_path: impl AsRef<Path>,
    ) -> Result<TlsMaterial, PkiError> {
        let ca_file = ca_path.as_ref().display().to_string();
        let cert_file = cert_path.as_ref().display().to_string();
        let key_file = key_path.as_ref().display().to_string();
        let ca = parse_pem(&ca_file, &read_file(ca_path.as_ref(), &ca_file)?)?;
        let cert = parse_pem(&cert_file, &read_file(cert_path.as_ref(), &cert_file)?)?;
        let key = parse_pem(&key_file, &read_file(key_path.as_ref(), &key_file)?)?;
        Self::from_sections((&ca_file, ca), (&cert_file, cert), (&key_file, key))
    }

    /// [`TlsMaterial::load`] from PEM text instead of files (errors name "CA certificate",
    /// "certificate" and "key").
    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<TlsMaterial, PkiError> {
        let (ca_file, cert_file, key_file) = ("CA certificate", "certificate", "key");
        let ca = parse_pem(ca_file, ca_pem.as_bytes())?;
        let cert = parse_pem(cert_file, cert_pem.as_bytes())?;
        let key = parse_pem(key_file, key_pem.as_bytes())?;
        Self::from_sections((ca_file, ca), (cert_file, cert), (key_file, key))
    }

    fn from_sections(
        (ca_file, ca): (&str, Vec<(SectionKind, Vec<u8>)>),
        (cert_file, cert): (&str, Vec<(SectionKind, Vec<u8>)>),
        (key_file, key): (&str, Vec<(SectionKind, Vec<u8>)>),
    ) -> Result<TlsMaterial, PkiError> {
        let ca = check_ca(ca_file, ca)?;
        let chain = certificates(cert_file, cert)?;
        let key = private_key(key_file, key)?;
        let Some((end_entity, intermediates)) = chain.split_first() else {
            return Err(PkiError::NoCertificate { file: cert_file.into() });
        };
        let identity = peer_identity(end_entity).map_err(|e| bad_cert(cert_file, e))?;
        if identity.public_key.is_none() {
            // The agent's TLS stack verifies ECDSA P-256 only (spec section 3: P-256 keys).
            return Err(PkiError::BadCertificate {
                file: cert_file.into(),
                reason: "the key is not ECDSA P-256".into(),
            });
        }
        let provider = provider();
        CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider).map_err(|e| match e {
            rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch) => {
                PkiError::KeyMismatch { cert: cert_file.into(), key: key_file.into() }
            }
            e => PkiError::BadKey { file: key_file.into(), reason: e.to_string() },
        })?;
        verify_chain(&ca, end_entity, intermediates, provider).map_err(|e| match e {
            ChainError::NotSignedByCa => PkiError::NotSignedByCa { file: cert_file.into(), ca: ca_file.into() },
            ChainError::Expired(not_after) => PkiError::Expired { file: cert_file.into(), not_after },
            ChainError::NotYetValid(not_before) => PkiError::NotYetValid { file: cert_file.into(), not_before },
            ChainError::Other(reason) => PkiError::BadCertificate { file: cert_file.into(), reason },
        })?;
        Ok(TlsMaterial { ca, chain, key, identity })
    }

    /// The deployment CA certificate.
    pub fn ca(&self) -> &CertificateDer<'static> {
        &self.ca
    }

    /// Our certificate chain, end entity first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The identity our certificate grants (our name and role, as peers will see them).
    pub fn identity(&self) -> &PeerIdentity {
        &self.identity
    }
}

/// Reads the deployment CA certificate alone (for clients without a certificate of their
/// own), with the same checks as [`TlsMaterial::load`] makes on the CA file.
pub fn load_ca(path: impl AsRef<Path>) -> Result<CertificateDer<'static>, PkiError> {
    let file = path.as_ref().display().to_string();
    check_ca(&file, parse_pem(&file, &read_file(path.as_ref(), &file)?)?)
}

fn read_file(path: &Path, file: &str) -> Result<Vec<u8>, PkiError> {
    std::fs::read(path).map_err(|error| match error.kind() {
        std::io::ErrorKind::NotFound => PkiError::Missing { file: file.into() },
        _ => PkiError::Unreadable { file: file.into(), error },
    })
}

/// Every PEM section of a kind pki-types knows; at least one.
pub(crate) fn parse_pem(file: &str, bytes: &[u8]) -> Result<Vec<(SectionKind, Vec<u8>)>, PkiError> {
    let mut sections = Vec::new();
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(bytes) {
        sections.push(section.map_err(|e| PkiError::NotPem { file: file.into(), reason: pem_reason(&e) })?);
    }
    if sections.is_empty() {
        return Err(PkiError::NotPem { file: file.into(), reason: "no -----BEGIN ...----- section".into() });
    }
    Ok(sections)
}

pub(crate) fn pem_reason(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a section has no -----END line".into(),
        pem::Error::IllegalSectionStart { .. } => "malformed -----BEGIN line".into(),
        pem::Error::Base64Decode(_) => "invalid base64 inside a section".into(),
        pem::Error::NoItemsFound => "no section of the expected kind".into(),
        e => e.to_string(),
    }
}

fn certificates(file: &str, sections: Vec<(SectionKind, Vec<u8>)>) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs: Vec<_> = sections.into_iter().filter_map(|(kind, der)| CertificateDer::from_pem(kind, der)).collect();
    if certs.is_empty() {
        return Err(PkiError::NoCertificate { file: file.into() });
    }
    Ok(certs)
}

pub(crate) fn only_certificate(
    file: &str,
    sections: Vec<(SectionKind, Vec<u8>)>,
) -> Result<CertificateDer<'static>, PkiError> {
    let mut certs = certificates(file, sections)?;
    match certs.pop() {
        Some(cert) if certs.is_empty() => Ok(cert),
        _ => Err(PkiError::BadCertificate {
            file: file.into(),
            reason: format!("{} certificates; expected exactly one, the deployment CA", certs.len() + 1),
        }),
    }
}

fn private_key(file: &str, sections: Vec<(SectionKind, Vec<u8>)>) -> Result<PrivateKeyDer<'static>, PkiError> {
    let mut keys: Vec<_> = sections.into_iter().filter_map(|(kind, der)| PrivateKeyDer::from_pem(kind, der)).collect();
    match keys.pop() {
        None => Err(PkiError::NoKey { file: file.into() }),
        Some(key) if keys.is_empty() => Ok(key),
        Some(_) => Err(PkiError::BadKey {
            file: file.into(),
            reason: format!("{} private keys; expected one", keys.len() + 1),
        }),
    }
}

/// The one certificate of a CA file, if it is a CA certificate in its validity and rustls
/// accepts it as a trust anchor. (webpki does not check a trust anchor's dates; we do, so
/// that an expired CA is reported as such and not as every peer's fault.)
fn check_ca(file: &str, sections: Vec<(SectionKind, Vec<u8>)>) -> Result<CertificateDer<'static>, PkiError> {
    let ca = only_certificate(file, sections)?;
    let x509 = parse_x509(&ca).map_err(|e| bad_cert(file, e))?;
    if !x509.is_ca() {
        return Err(PkiError::NotCa { file: file.into() });
    }
    let validity = x509.validity();
    let now = ASN1Time::now();
    if now > validity.not_after {
        return Err(PkiError::Expired { file: file.into(), not_after: validity.not_after.to_string() });
    }
    if now < validity.not_before {
        return Err(PkiError::NotYetValid { file: file.into(), not_before: validity.not_before.to_string() });
    }
    roots(&ca).map_err(|e| PkiError::BadCertificate { file: file.into(), reason: e.to_string() })?;
    Ok(ca)
}

enum ChainError {
    NotSignedByCa,
    Expired(String),
    NotYetValid(String),
    Other(String),
}

/// Verifies a chain against the CA as a server verifies a client (path to the CA,
/// signatures, dates, clientAuth): every certificate of the deployment is a TLS client.
fn verify_chain(
    ca: &CertificateDer<'static>,
    end_entity: &CertificateDer<'static>,
    intermediates: &[CertificateDer<'static>],
    provider: Arc<CryptoProvider>,
) -> Result<(), ChainError> {
    let roots = roots(ca).map_err(|e| ChainError::Other(e.to_string()))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
        .build()
        .map_err(|e| ChainError::Other(e.to_string()))?;
    match verifier.verify_client_cert(end_entity, intermediates, UnixTime::now()) {
        Ok(_) => Ok(()),
        Err(rustls::Error::InvalidCertificate(e)) => Err(match e {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => ChainError::NotSignedByCa,
            CertificateError::ExpiredContext { not_after, .. } => ChainError::Expired(time_text(not_after)),
            CertificateError::Expired => ChainError::Expired("an unknown time".into()),
            CertificateError::NotValidYetContext { not_before, .. } => ChainError::NotYetValid(time_text(not_before)),
            CertificateError::NotValidYet => ChainError::NotYetValid("an unknown time".into()),
            e => ChainError::Other(rustls::Error::InvalidCertificate(e).to_string()),
        }),
        Err(e) => Err(ChainError::Other(e.to_string())),
    }
}

fn time_text(t: UnixTime) -> String {
    i64::try_from(t.as_secs())
        .ok()
        .and_then(|secs| ASN1Time::from_timestamp(secs).ok())
        .map_or_else(|| format!("{} seconds after the epoch", t.as_secs()), |t| t.to_string())
}

pub(crate) fn bad_cert(file: &str, e: PkiError) -> PkiError {
    PkiError::BadCertificate { file: file.into(), reason: e.to_string() }
}

// ---------------------------------------------------------------------------------------
// TLS configurations
// ---------------------------------------------------------------------------------------

/// Whether a server asks TLS clients for a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every client must present a certificate from the deployment CA (DC, RS, NS: their
    /// TLS clients are servers).
    Required,
    /// A client may present one; if it does, it must be from the deployment CA (the AS:
    /// password and OIDC logins come without a certificate, device logins with one).
    Optional,
}

/// The crypto provider of every configuration here: ring, with TLS 1.3 suites and groups
/// listed explicitly so that what the agent speaks (TLS13_AES_128_GCM_SHA256 on secp256r1)
/// cannot silently drop out with a change of rustls defaults.
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::{cipher_suite, kx_group};
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    provider.kx_groups = vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1];
    Arc::new(provider)
}

/// A root store holding the deployment CA and nothing else.
fn roots(ca: &CertificateDer<'_>) -> Result<Arc<RootCertStore>, PkiError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).map_err(PkiError::Tls)?;
    Ok(Arc::new(roots))
}

/// A TLS 1.3 server presenting our chain. Client certificates are verified by webpki
/// against the deployment CA only (and must carry clientAuth); map them to an identity
/// with [`peer_identity`] once the handshake is done.
pub fn server_config(m: &TlsMaterial, client_auth: ClientAuth) -> Result<Arc<rustls::ServerConfig>, PkiError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(&m.ca)?, provider.clone());
    let verifier = match client_auth {
        ClientAuth::Required => verifier,
        ClientAuth::Optional => verifier.allow_unauthenticated(),
    };
    let verifier = verifier.build().map_err(|e| PkiError::Tls(rustls::Error::General(e.to_string())))?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(PkiError::Tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(m.chain.clone(), m.key.clone_key())
        .map_err(PkiError::Tls)?;
    Ok(Arc::new(config))
}

/// A TLS 1.3 client that verifies the server against the deployment CA only (name and
/// serverAuth included) and presents our chain: mutual TLS between servers (spec 3), or a
/// node's device-certificate login.
pub fn client_config(m: &TlsMaterial) -> Result<Arc<rustls::ClientConfig>, PkiError> {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(PkiError::Tls)?
        .with_root_certificates(roots(&m.ca)?)
        .with_client_auth_cert(m.chain.clone(), m.key.clone_key())
        .map_err(PkiError::Tls)?;
    Ok(Arc::new(config))
}

/// A TLS 1.3 client that verifies the server against the deployment CA and presents no
/// certificate (a node logging in with a password or an ID token; test clients).
pub fn client_config_without_cert(ca: &CertificateDer<'_>) -> Result<Arc<rustls::ClientConfig>, PkiError> {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(PkiError::Tls)?
        .with_root_certificates(roots(ca)?)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The name a client verifies the server's certificate for.
pub fn server_name(name: &Fqdn) -> Result<ServerName<'static>, PkiError> {
    ServerName::try_from(name.as_str().to_owned()).map_err(|_| PkiError::BadName(name.as_str().into()))
}

// ---------------------------------------------------------------------------------------
// Identity
// ---------------------------------------------------------------------------------------

/// The identity an end-entity certificate grants: its role (exactly one
/// `urn:ntmobile:role:` SAN URI), its name (the first SAN DNS name, a valid FQDN) and its
/// public key if it is P-256. Refuses a certificate whose extended key usage does not fit
/// the role: a node's must carry clientAuth, a server's serverAuth.
///
/// This does **not** verify the certificate. Call it only on a certificate rustls has
/// already verified against the deployment CA: the end entity of a completed handshake
/// (see [`connection_identity`]), or one [`TlsMaterial`] checked.
pub fn peer_identity(end_entity: &CertificateDer<'_>) -> Result<PeerIdentity, PkiError> {
    let x509 = parse_x509(end_entity)?;
    let san = x509.subject_alternative_name().map_err(|e| PkiError::NotX509(format!("subjectAltName: {e}")))?;
    let mut role = None;
    let mut name = None;
    for general in san.iter().flat_map(|san| san.value.general_names.iter()) {
        match general {
            GeneralName::URI(uri) => {
                if let Some(label) = uri.strip_prefix(ROLE_URI_PREFIX) {
                    if role.is_some() {
                        return Err(PkiError::SeveralRoles);
                    }
                    role = Some(Role::from_label(label).ok_or_else(|| PkiError::UnknownRole((*uri).into()))?);
                }
            }
            GeneralName::DNSName(dns) if name.is_none() => name = Some(*dns),
            _ => {}
        }
    }
    let role = role.ok_or(PkiError::NoRole)?;
    let name = name.ok_or(PkiError::NoName)?;
    let name = Fqdn::new(name).map_err(|_| PkiError::BadName(name.into()))?;

    let eku = x509
        .extended_key_usage()
        .map_err(|e| PkiError::NotX509(format!("extendedKeyUsage: {e}")))?
        .map(|eku| eku.value);
    let (has, needs) = match role {
        Role::Node => (eku.is_some_and(|eku| eku.client_auth), "clientAuth"),
        Role::As | Role::Dc | Role::Rs | Role::Ns => (eku.is_some_and(|eku| eku.server_auth), "serverAuth"),
    };
    if !has {
        return Err(PkiError::WrongPurpose { role, needs });
    }

    let public_key = p256_from_spki(x509.public_key())?.map(PublicKey::from_p256);
    Ok(PeerIdentity { name, role, public_key })
}

/// The identity of the peer of a completed handshake: `None` if it presented no
/// certificate (a password or OIDC login at the AS).
pub fn connection_identity(conn: &rustls::CommonState) -> Result<Option<PeerIdentity>, PkiError> {
    match conn.peer_certificates().and_then(|chain| chain.first()) {
        None => Ok(None),
        Some(end_entity) => peer_identity(end_entity).map(Some),
    }
}

pub(crate) fn parse_x509(der: &[u8]) -> Result<X509Certificate<'_>, PkiError> {
    let (rest, x509) = X509Certificate::from_der(der).map_err(|e| PkiError::NotX509(e.to_string()))?;
    if !rest.is_empty() {
        return Err(PkiError::NotX509("trailing bytes after the certificate".into()));
    }
    Ok(x509)
}

/// The key if it is an EC key on P-256; `None` for other algorithms and curves.
fn p256_from_spki(spki: &SubjectPublicKeyInfo<'_>) -> Result<Option<p256::PublicKey>, PkiError> {
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY {
        return Ok(None);
    }
    let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
    if curve.as_ref() != Some(&OID_EC_P256) {
        return Ok(None);
    }
    p256::PublicKey::from_sec1_bytes(&spki.subject_public_key.data)
        .map(Some)
        .map_err(|_| PkiError::BadPublicKey("not a point on P-256".into()))
}

/// A SubjectPublicKeyInfo (DER) as a P-256 key; `None` for another kind of key. (The CA
/// checks the key of a certificate it is asked for.)
#[cfg(feature = "ca")]
pub(crate) fn p256_from_spki_der(der: &[u8]) -> Result<Option<p256::PublicKey>, PkiError> {
    let (rest, spki) = SubjectPublicKeyInfo::from_der(der).map_err(|e| PkiError::BadPublicKey(e.to_string()))?;
    if !rest.is_empty() {
        return Err(PkiError::BadPublicKey("trailing bytes after the SubjectPublicKeyInfo".into()));
    }
    p256_from_spki(&spki)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_labels_round_trip() {
        for role in Role::ALL {
            assert_eq!(Role::from_label(role.label()), Some(role));
            assert!(role_uri(role).starts_with(ROLE_URI_PREFIX));
        }
        assert_eq!(Role::from_label("DC"), None);
        assert_eq!(Role::from_label(""), None);
    }

    #[test]
    fn provider_keeps_what_the_agent_speaks() {
        let provider = provider();
        assert!(provider.cipher_suites.iter().any(|s| s.suite() == rustls::CipherSuite::TLS13_AES_128_GCM_SHA256));
        assert!(provider.kx_groups.iter().any(|g| g.name() == rustls::NamedGroup::secp256r1));
        assert!(provider.cipher_suites.iter().all(|s| s.version() == &rustls::version::TLS13));
    }
}
