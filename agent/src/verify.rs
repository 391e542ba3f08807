//! The agent's check of the Account Server's certificate at login (spec 4.1: "the node
//! verifies the AS certificate against the deployment CA"), as the [`TlsVerifier`] that
//! embedded-tls 0.19 calls during the handshake.
//!
//! embedded-tls as shipped has three holes (shared notes, "embedded-tls 0.19"). This module
//! closes them together with the provider in `tls.rs`:
//!
//! 1. **A missing verifier means "skip".** The provider's `verifier()` always returns an
//!    [`AsVerifier`]; there is no way to build a session without one.
//! 2. **A server Finished without Certificate/CertificateVerify is accepted.** The verifier
//!    records its progress (`ExpectCertificate` -> `ExpectCertificateVerify` -> `Verified`);
//!    after `open()` the session asks for [`AsVerifier::proof`], which exists only once both
//!    [`TlsVerifier::verify_certificate`] and [`TlsVerifier::verify_signature`] succeeded, in
//!    that order, once each. The session never opens without that proof (style rule 10).
//! 3. **No basicConstraints / keyUsage / EKU checks.** [`check_chain`] adds them to the
//!    signature checks of embedded-tls's `rustpki` verifier (which this wraps): every
//!    certificate above the leaf must be a CA (`cA=TRUE`, keyCertSign if keyUsage is present,
//!    path length constraints honoured); the chain must end at the configured deployment CA
//!    (the top entry signed by it: there is no CA-less mode); the leaf must not be a CA, must
//!    carry the serverAuth EKU (and digitalSignature if keyUsage is present), its first SAN DNS
//!    name must be the expected AS name, and its one `urn:ntmobile:role:` SAN URI must be
//!    `urn:ntmobile:role:as` (the agent logs in to an AS and nothing else). Unknown critical
//!    extensions and repeated extensions are refused (RFC 5280 4.2).
//!
//! **Clock.** A router may boot without a wall clock. With `unix_time: None` the validity
//! dates (notBefore/notAfter) are *not* checked; with `Some(now)` every certificate of the
//! chain and the CA itself must be valid at `now`. Everything else is checked either way.
//!
//! **Limits** (from embedded-tls's rustpki parser): names of at most [`SERVER_NAME_MAX`]
//! bytes, at most 7 RDNs per distinguished name and 12 extensions per certificate, ECDSA
//! P-256 with SHA-256 signatures, a chain of at most [`CHAIN_MAX`] bytes.

use core::fmt;
use der::asn1::{AnyRef, BitStringRef, GeneralizedTime, ObjectIdentifier, OctetStringRef, UtcTime};
use der::{Choice, Decode, Reader, Sequence, SliceReader, Tag, TagNumber, Tagged};
use embedded_tls::pki::CertVerifier;
use embedded_tls::{
    Aes128GcmSha256, Certificate, CertificateEntryRef, CertificateRef, CertificateVerifyRef, NoClock, TlsCipherSuite,
    TlsError, TlsVerifier,
};
use ntm_proto::engine::Role;
use ntm_proto::wire::Fqdn;

pub use ntm_proto::engine::ROLE_URI_PREFIX;

/// The only role the agent accepts from the server it logs in to.
const AS_ROLE: Role = Role::As;

/// Longest server name embedded-tls can verify (its names are `heapless::String<64>`).
pub const SERVER_NAME_MAX: usize = 64;

/// Longest certificate chain (bytes of the Certificate message's entries) the inner verifier
/// keeps for the CertificateVerify check. A deployment chain (the AS leaf, perhaps the CA)
/// takes about 1.2 KB.
pub const CHAIN_MAX: usize = 4096;

/// The cipher suite of the login session (the one embedded-tls offers for P-256).
pub type Suite = Aes128GcmSha256;

const OID_BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
const OID_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
const OID_EXT_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
const OID_SUBJECT_ALT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");
const OID_SUBJECT_KEY_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.14");
const OID_AUTHORITY_KEY_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.35");
const OID_KP_SERVER_AUTH: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.1");

/// keyUsage bits (RFC 5280 4.2.1.3), numbered from the most significant bit of the first byte.
const KU_DIGITAL_SIGNATURE: usize = 0;
const KU_KEY_CERT_SIGN: usize = 5;

/// SAN GeneralName tags: `[2] IMPLICIT IA5String` dNSName, `[6] IMPLICIT IA5String` URI.
const GN_DNS_NAME: u32 = 2;
const GN_URI: u32 = 6;

/// Why the server's certificate, its proof of the key, or the configured CA was refused.
/// Certificates are numbered by depth: 0 is the server's own (leaf) certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifyError {
    /// The configured CA certificate does not parse, is not a CA, or is outside its validity.
    BadCa(&'static str),
    /// The configured server name is not a valid name, or is longer than [`SERVER_NAME_MAX`].
    BadServerName,
    /// The server sent an empty certificate chain.
    NoCertificate,
    /// The server sent a raw public key instead of X.509 certificates.
    NotX509,
    /// A certificate does not parse as DER X.509.
    Malformed {
        /// Which certificate.
        depth: usize,
    },
    /// The chain does not verify up to the deployment CA: another CA, a self-signed
    /// (CA-less) certificate, a broken signature, or an unsupported algorithm.
    NotSignedByCa,
    /// A certificate above the leaf is not a CA (basicConstraints cA=TRUE missing), or may
    /// not sign certificates (keyUsage without keyCertSign). A device certificate signing a
    /// fake server certificate ends here.
    NotCa {
        /// Which certificate.
        depth: usize,
    },
    /// A CA's pathLenConstraint forbids the intermediates below it.
    PathTooLong,
    /// The server's own certificate is a CA certificate.
    LeafIsCa,
    /// The server's certificate lacks the serverAuth extended key usage.
    NotServerAuth,
    /// The server's certificate has keyUsage without digitalSignature.
    NoDigitalSignature,
    /// The server's first SAN DNS name is not the expected name (`None`: no SAN DNS name).
    WrongName {
        /// The name found, if any.
        found: Option<String>,
    },
    /// The server's certificate carries no role, several, or a role other than `as`.
    WrongRole {
        /// The role URI found, if exactly one.
        found: Option<String>,
    },
    /// A certificate (or the CA) is not yet valid at the configured time.
    NotYetValid {
        /// Which certificate (`None`: the CA).
        depth: Option<usize>,
    },
    /// A certificate (or the CA) has expired at the configured time.
    Expired {
        /// Which certificate (`None`: the CA).
        depth: Option<usize>,
    },
    /// A critical extension this verifier does not process (RFC 5280 4.2), or an extension
    /// that appears twice.
    UnhandledExtension {
        /// Which certificate.
        depth: usize,
    },
    /// The server's CertificateVerify signature does not verify with its certificate's key.
    BadSignature,
    /// Certificate and CertificateVerify did not come once each, in that order.
    OutOfOrder,
    /// The handshake ended without both checks having run (hole 2): no Certificate, or no
    /// CertificateVerify.
    NotVerified {
        /// Whether the chain was verified.
        certificate: bool,
        /// Whether the CertificateVerify signature was verified.
        signature: bool,
    },
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let depth =
            |d: &Option<usize>| d.map_or_else(|| "the CA certificate".to_owned(), |d| format!("certificate {d}"));
        match self {
            VerifyError::BadCa(why) => write!(f, "the configured CA certificate is unusable: {why}"),
            VerifyError::BadServerName => {
                write!(f, "the configured AS name is not a valid name of at most {SERVER_NAME_MAX} bytes")
            }
            VerifyError::NoCertificate => write!(f, "the server sent no certificate"),
            VerifyError::NotX509 => write!(f, "the server sent a raw public key, not a certificate"),
            VerifyError::Malformed { depth } => write!(f, "certificate {depth} is not DER X.509"),
            VerifyError::NotSignedByCa => write!(f, "the server's chain is not signed by the deployment CA"),
            VerifyError::NotCa { depth } => write!(f, "certificate {depth} signs certificates but is not a CA"),
            VerifyError::PathTooLong => write!(f, "the chain has more intermediate CAs than its CA allows"),
            VerifyError::LeafIsCa => write!(f, "the server's certificate is a CA certificate"),
            VerifyError::NotServerAuth => write!(f, "the server's certificate lacks the serverAuth usage"),
            VerifyError::NoDigitalSignature => write!(f, "the server's certificate may not sign (keyUsage)"),
            VerifyError::WrongName { found: Some(name) } => write!(f, "the server's certificate is for {name:?}"),
            VerifyError::WrongName { found: None } => write!(f, "the server's certificate has no SAN DNS name"),
            VerifyError::WrongRole { found: Some(uri) } => write!(f, "the server's certificate has the role {uri:?}"),
            VerifyError::WrongRole { found: None } => {
                write!(f, "the server's certificate has no single {ROLE_URI_PREFIX} role")
            }
            VerifyError::NotYetValid { depth: d } => write!(f, "{} is not valid yet (check the clock)", depth(d)),
            VerifyError::Expired { depth: d } => write!(f, "{} has expired", depth(d)),
            VerifyError::UnhandledExtension { depth } => {
                write!(f, "certificate {depth} has an unknown critical or a repeated extension")
            }
            VerifyError::BadSignature => write!(f, "the server's CertificateVerify signature is wrong"),
            VerifyError::OutOfOrder => write!(f, "Certificate/CertificateVerify out of order or repeated"),
            VerifyError::NotVerified { certificate, signature } => write!(
                f,
                "the handshake ended unauthenticated (certificate verified: {certificate}, signature verified: {signature})"
            ),
        }
    }
}

impl std::error::Error for VerifyError {}

// ---------------------------------------------------------------------------------------
// The verifier
// ---------------------------------------------------------------------------------------

/// Proof that the server's certificate chain and its CertificateVerify signature were both
/// verified in this handshake. Only [`AsVerifier::proof`] makes one; the session opens only
/// with it.
#[derive(Debug)]
pub struct ServerVerified {
    _private: (),
}

/// What the verifier waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Progress {
    ExpectCertificate,
    ExpectCertificateVerify,
    Verified,
    Failed,
}

/// The verifier of the AS certificate (see the module documentation). Wraps embedded-tls's
/// `rustpki` [`CertVerifier`] (signatures along the chain up to the CA, the CertificateVerify
/// signature) and adds the policy of [`check_chain`] and the progress record.
pub struct AsVerifier<'a> {
    inner: CertVerifier<'a, Suite, NoClock, CHAIN_MAX>,
    ca: &'a [u8],
    server_name: Fqdn,
    unix_time: Option<u64>,
    progress: Progress,
    failure: Option<VerifyError>,
}

impl fmt::Debug for AsVerifier<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsVerifier")
            .field("server_name", &self.server_name)
            .field("unix_time", &self.unix_time)
            .field("progress", &self.progress)
            .field("failure", &self.failure)
            .finish_non_exhaustive()
    }
}

impl<'a> AsVerifier<'a> {
    /// A verifier for the AS named `server_name` with the deployment CA `ca_der`. Refuses a CA
    /// that is not a CA certificate (or, with a clock, is outside its validity) and a name
    /// that is invalid or too long for embedded-tls.
    pub fn new(ca_der: &'a [u8], server_name: &str, unix_time: Option<u64>) -> Result<Self, VerifyError> {
        check_ca(ca_der, unix_time)?;
        let server_name = expected_name(server_name)?;
        Ok(AsVerifier {
            inner: CertVerifier::new(Certificate::X509(ca_der)),
            ca: ca_der,
            server_name,
            unix_time,
            progress: Progress::ExpectCertificate,
            failure: None,
        })
    }

    /// The proof that the server was authenticated: both checks ran and passed. Hole 2: a
    /// server Finished without Certificate or CertificateVerify leaves no proof.
    pub fn proof(&self) -> Result<ServerVerified, VerifyError> {
        if let Some(e) = &self.failure {
            return Err(e.clone());
        }
        match self.progress {
            Progress::Verified => Ok(ServerVerified { _private: () }),
            Progress::ExpectCertificate => Err(VerifyError::NotVerified { certificate: false, signature: false }),
            Progress::ExpectCertificateVerify => Err(VerifyError::NotVerified { certificate: true, signature: false }),
            // A failure is always recorded with its reason; keep a reason if it were not.
            Progress::Failed => Err(VerifyError::OutOfOrder),
        }
    }

    /// Whether both checks have passed (the provider presents the device certificate only
    /// to a server that has proven itself).
    pub fn is_verified(&self) -> bool {
        self.progress == Progress::Verified && self.failure.is_none()
    }

    /// Why the verifier refused the server, if it did.
    pub fn failure(&self) -> Option<&VerifyError> {
        self.failure.as_ref()
    }

    fn fail(&mut self, e: VerifyError) -> TlsError {
        log::warn!("AS certificate refused: {e}");
        let error = match e {
            VerifyError::BadSignature => TlsError::InvalidSignature,
            _ => TlsError::InvalidCertificate,
        };
        self.progress = Progress::Failed;
        // Keep the first reason: a later one is a consequence.
        self.failure.get_or_insert(e);
        // Not AbortHandshake: embedded-tls 0.19 sends that alert in a record typed
        // change_cipher_spec, which the server reports as a misbehaving middlebox. Without
        // an alert the server sees the connection close.
        error
    }
}

impl TlsVerifier<Suite> for AsVerifier<'_> {
    fn set_hostname_verification(&mut self, hostname: &str) -> Result<(), TlsError> {
        // The session passes the configured name; the inner verifier checks it too (with its
        // own, laxer rules: wildcards, CN fallback), and check_chain checks it strictly.
        self.inner.set_hostname_verification(hostname)
    }

    fn verify_certificate(
        &mut self,
        transcript: &<Suite as TlsCipherSuite>::Hash,
        cert: CertificateRef,
    ) -> Result<(), TlsError> {
        if self.progress != Progress::ExpectCertificate {
            return Err(self.fail(VerifyError::OutOfOrder));
        }
        let mut chain: heapless::Vec<&[u8], 16> = heapless::Vec::new();
        for entry in &cert.entries {
            match entry {
                CertificateEntryRef::X509(der) => {
                    // Cannot overflow: embedded-tls parses at most 16 entries.
                    if chain.push(der).is_err() {
                        return Err(self.fail(VerifyError::NotSignedByCa));
                    }
                }
                CertificateEntryRef::RawPublicKey(_) => return Err(self.fail(VerifyError::NotX509)),
            }
        }
        if let Err(e) = check_chain(self.ca, &chain, &self.server_name, self.unix_time) {
            return Err(self.fail(e));
        }
        // Signatures from the CA down to the leaf, and embedded-tls's own name match.
        if let Err(e) = self.inner.verify_certificate(transcript, cert) {
            log::debug!("rustpki verifier: {e:?}");
            return Err(self.fail(VerifyError::NotSignedByCa));
        }
        self.progress = Progress::ExpectCertificateVerify;
        Ok(())
    }

    fn verify_signature(&mut self, verify: CertificateVerifyRef) -> Result<(), TlsError> {
        // The inner verifier panics on a CertificateVerify without a verified Certificate
        // (it unwraps the saved transcript); it is reached only in the right state.
        if self.progress != Progress::ExpectCertificateVerify {
            return Err(self.fail(VerifyError::OutOfOrder));
        }
        if let Err(e) = self.inner.verify_signature(verify) {
            log::debug!("rustpki verifier: {e:?}");
            return Err(self.fail(VerifyError::BadSignature));
        }
        self.progress = Progress::Verified;
        Ok(())
    }
}

/// Checks the configured CA: a CA certificate, within its validity if there is a clock.
pub fn check_ca(ca_der: &[u8], unix_time: Option<u64>) -> Result<(), VerifyError> {
    let ca = Parsed::parse(ca_der).map_err(|_| VerifyError::BadCa("not DER X.509"))?;
    if !ca.is_ca {
        return Err(VerifyError::BadCa("basicConstraints cA=TRUE missing"));
    }
    if ca.key_usage.is_some_and(|ku| !ku.has(KU_KEY_CERT_SIGN)) {
        return Err(VerifyError::BadCa("keyUsage without keyCertSign"));
    }
    if ca.unhandled_extension {
        return Err(VerifyError::BadCa("unknown critical or repeated extension"));
    }
    ca.check_time(unix_time, None)
}

fn expected_name(server_name: &str) -> Result<Fqdn, VerifyError> {
    if server_name.len() > SERVER_NAME_MAX {
        return Err(VerifyError::BadServerName);
    }
    Fqdn::new(server_name).map_err(|_| VerifyError::BadServerName)
}

/// The policy checks on the server's chain (`chain[0]` is the leaf), beyond the signatures
/// that embedded-tls's verifier checks (see the module documentation). `ca_der` is the
/// deployment CA; a copy of it at the top of the chain is allowed and skipped.
pub fn check_chain(
    ca_der: &[u8],
    chain: &[&[u8]],
    server_name: &Fqdn,
    unix_time: Option<u64>,
) -> Result<(), VerifyError> {
    let Some((leaf_der, above)) = chain.split_first() else { return Err(VerifyError::NoCertificate) };
    let ca = Parsed::parse(ca_der).map_err(|_| VerifyError::BadCa("not DER X.509"))?;
    // A server may send the root too; it is the configured CA itself, not an intermediate.
    let above = match above.split_last() {
        Some((top, rest)) if *top == ca_der => rest,
        _ => above,
    };
    // Another CA's root on top: say so, rather than what else is wrong with the chain.
    if let Some(top) = above.last() {
        if Parsed::parse(top).is_ok_and(|top| top.is_ca && top.self_issued) {
            return Err(VerifyError::NotSignedByCa);
        }
    }

    let leaf = Parsed::parse(leaf_der).map_err(|_| VerifyError::Malformed { depth: 0 })?;
    if leaf.unhandled_extension {
        return Err(VerifyError::UnhandledExtension { depth: 0 });
    }
    leaf.check_time(unix_time, Some(0))?;

    for (i, der) in above.iter().enumerate() {
        let depth = i + 1;
        let cert = Parsed::parse(der).map_err(|_| VerifyError::Malformed { depth })?;
        if cert.unhandled_extension {
            return Err(VerifyError::UnhandledExtension { depth });
        }
        // Hole 3: a certificate that signed the one below it must be a CA. A device's
        // clientAuth certificate (cA absent) signing a fake AS certificate fails here.
        if !cert.is_ca || cert.key_usage.is_some_and(|ku| !ku.has(KU_KEY_CERT_SIGN)) {
            return Err(VerifyError::NotCa { depth });
        }
        // `i` intermediate CAs lie between this one and the leaf.
        if cert.path_len.is_some_and(|max| i > usize::from(max)) {
            return Err(VerifyError::PathTooLong);
        }
        cert.check_time(unix_time, Some(depth))?;
    }
    if ca.path_len.is_some_and(|max| above.len() > usize::from(max)) {
        return Err(VerifyError::PathTooLong);
    }

    if leaf.is_ca {
        return Err(VerifyError::LeafIsCa);
    }
    if !leaf.server_auth {
        return Err(VerifyError::NotServerAuth);
    }
    if leaf.key_usage.is_some_and(|ku| !ku.has(KU_DIGITAL_SIGNATURE)) {
        return Err(VerifyError::NoDigitalSignature);
    }
    // The name the servers' peer_identity() reads: the first SAN DNS name.
    let name = leaf.first_dns_name.map(|n| String::from_utf8_lossy(n).into_owned());
    if name.as_deref().and_then(|n| Fqdn::new(n).ok()).as_ref() != Some(server_name) {
        return Err(VerifyError::WrongName { found: name });
    }
    match (leaf.role_uris, leaf.role_uri) {
        (1, Some(uri)) if uri.strip_prefix(ROLE_URI_PREFIX.as_bytes()) == Some(AS_ROLE.label().as_bytes()) => Ok(()),
        (1, Some(uri)) => Err(VerifyError::WrongRole { found: Some(String::from_utf8_lossy(uri).into_owned()) }),
        _ => Err(VerifyError::WrongRole { found: None }),
    }
}

// ---------------------------------------------------------------------------------------
// X.509, as much as the checks need (der 0.8, shared with embedded-tls)
// ---------------------------------------------------------------------------------------

#[derive(Sequence)]
struct CertificateAsn1<'a> {
    tbs_certificate: TbsAsn1<'a>,
    signature_algorithm: AnyRef<'a>,
    signature: BitStringRef<'a>,
}

#[derive(Sequence)]
struct TbsAsn1<'a> {
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    version: Option<u8>,
    serial_number: AnyRef<'a>,
    signature: AnyRef<'a>,
    issuer: AnyRef<'a>,
    validity: ValidityAsn1,
    subject: AnyRef<'a>,
    subject_public_key_info: SpkiAsn1<'a>,
    #[asn1(context_specific = "1", tag_mode = "IMPLICIT", optional = "true")]
    issuer_unique_id: Option<BitStringRef<'a>>,
    #[asn1(context_specific = "2", tag_mode = "IMPLICIT", optional = "true")]
    subject_unique_id: Option<BitStringRef<'a>>,
    #[asn1(context_specific = "3", tag_mode = "EXPLICIT", optional = "true")]
    extensions: Option<AnyRef<'a>>,
}

#[derive(Sequence)]
struct SpkiAsn1<'a> {
    algorithm: AnyRef<'a>,
    subject_public_key: BitStringRef<'a>,
}

#[derive(Sequence)]
struct ValidityAsn1 {
    not_before: TimeAsn1,
    not_after: TimeAsn1,
}

#[derive(Choice)]
enum TimeAsn1 {
    #[asn1(type = "UTCTime")]
    Utc(UtcTime),
    #[asn1(type = "GeneralizedTime")]
    General(GeneralizedTime),
}

impl TimeAsn1 {
    fn unix_secs(&self) -> u64 {
        match self {
            TimeAsn1::Utc(t) => t.to_unix_duration().as_secs(),
            TimeAsn1::General(t) => t.to_unix_duration().as_secs(),
        }
    }
}

#[derive(Sequence)]
struct ExtensionAsn1<'a> {
    extn_id: ObjectIdentifier,
    #[asn1(default = "Default::default")]
    critical: bool,
    extn_value: &'a OctetStringRef,
}

#[derive(Sequence)]
struct BasicConstraintsAsn1 {
    #[asn1(default = "Default::default")]
    ca: bool,
    path_len_constraint: Option<u8>,
}

#[derive(Clone, Copy)]
struct KeyUsage<'a>(BitStringRef<'a>);

impl KeyUsage<'_> {
    fn has(self, bit: usize) -> bool {
        self.0.get(bit).unwrap_or(false)
    }
}

/// What the checks read from one certificate.
struct Parsed<'a> {
    not_before: u64,
    not_after: u64,
    is_ca: bool,
    path_len: Option<u8>,
    key_usage: Option<KeyUsage<'a>>,
    server_auth: bool,
    first_dns_name: Option<&'a [u8]>,
    /// How many `urn:ntmobile:role:` URIs, and the last one.
    role_uris: usize,
    role_uri: Option<&'a [u8]>,
    /// An unknown critical extension, or a known one twice.
    unhandled_extension: bool,
    /// Issuer and subject are the same name (a root, or a self-signed leaf).
    self_issued: bool,
}

impl<'a> Parsed<'a> {
    fn parse(der_bytes: &'a [u8]) -> der::Result<Self> {
        // from_der refuses trailing bytes.
        let cert = CertificateAsn1::from_der(der_bytes)?;
        let tbs = cert.tbs_certificate;
        let mut parsed = Parsed {
            not_before: tbs.validity.not_before.unix_secs(),
            not_after: tbs.validity.not_after.unix_secs(),
            is_ca: false,
            path_len: None,
            key_usage: None,
            server_auth: false,
            first_dns_name: None,
            role_uris: 0,
            role_uri: None,
            unhandled_extension: false,
            self_issued: tbs.issuer == tbs.subject,
        };
        let Some(extensions) = tbs.extensions else { return Ok(parsed) };
        let mut seen = [false; 6];
        let mut reader = sequence_reader(extensions)?;
        while !reader.is_finished() {
            let ext = ExtensionAsn1::decode(&mut reader)?;
            let value = ext.extn_value.as_bytes();
            let slot = match ext.extn_id {
                OID_BASIC_CONSTRAINTS => {
                    let bc = BasicConstraintsAsn1::from_der(value)?;
                    parsed.is_ca = bc.ca;
                    parsed.path_len = bc.path_len_constraint;
                    0
                }
                OID_KEY_USAGE => {
                    parsed.key_usage = Some(KeyUsage(BitStringRef::from_der(value)?));
                    1
                }
                OID_EXT_KEY_USAGE => {
                    let mut oids = sequence_reader(AnyRef::from_der(value)?)?;
                    while !oids.is_finished() {
                        if ObjectIdentifier::decode(&mut oids)? == OID_KP_SERVER_AUTH {
                            parsed.server_auth = true;
                        }
                    }
                    2
                }
                OID_SUBJECT_ALT_NAME => {
                    let mut names = sequence_reader(AnyRef::from_der(value)?)?;
                    while !names.is_finished() {
                        let name = AnyRef::decode(&mut names)?;
                        match name.tag() {
                            Tag::ContextSpecific { constructed: false, number: TagNumber(GN_DNS_NAME) } => {
                                parsed.first_dns_name.get_or_insert(name.value());
                            }
                            Tag::ContextSpecific { constructed: false, number: TagNumber(GN_URI) }
                                if name.value().starts_with(ROLE_URI_PREFIX.as_bytes()) =>
                            {
                                parsed.role_uris += 1;
                                parsed.role_uri = Some(name.value());
                            }
                            _ => {}
                        }
                    }
                    3
                }
                OID_SUBJECT_KEY_ID => 4,
                OID_AUTHORITY_KEY_ID => 5,
                _ => {
                    // A non-critical extension we do not know may be ignored (RFC 5280 4.2).
                    parsed.unhandled_extension |= ext.critical;
                    continue;
                }
            };
            // A repeated extension is malformed (RFC 5280 4.2), and could hide a second EKU.
            if let Some(seen) = seen.get_mut(slot) {
                parsed.unhandled_extension |= *seen;
                *seen = true;
            }
        }
        Ok(parsed)
    }

    fn check_time(&self, unix_time: Option<u64>, depth: Option<usize>) -> Result<(), VerifyError> {
        // No clock (a router at boot): dates are deliberately not checked; everything else is.
        let Some(now) = unix_time else { return Ok(()) };
        if now < self.not_before {
            return Err(VerifyError::NotYetValid { depth });
        }
        if now > self.not_after {
            return Err(VerifyError::Expired { depth });
        }
        Ok(())
    }
}

/// The subjectPublicKey of a certificate (for an EC key, the SEC1 point); `None` if the
/// certificate does not parse.
pub fn certificate_public_key(der_bytes: &[u8]) -> Option<&[u8]> {
    let cert = CertificateAsn1::from_der(der_bytes).ok()?;
    cert.tbs_certificate.subject_public_key_info.subject_public_key.as_bytes()
}

/// A reader over the contents of a SEQUENCE.
fn sequence_reader(any: AnyRef<'_>) -> der::Result<SliceReader<'_>> {
    any.tag().assert_eq(Tag::Sequence)?;
    SliceReader::new(any.value())
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_tls::Sha256;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        SanType, PKCS_ECDSA_P256_SHA256,
    };

    struct Ca {
        der: Vec<u8>,
        issuer: Issuer<'static, KeyPair>,
    }

    fn ca() -> Ca {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "unit CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        Ca { der: cert.der().to_vec(), issuer: Issuer::new(params, key) }
    }

    fn leaf(ca: &Ca, name: &str, role: &str, eku: Vec<ExtendedKeyUsagePurpose>) -> Vec<u8> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.subject_alt_names = vec![
            SanType::DnsName(name.try_into().unwrap()),
            SanType::URI(format!("{ROLE_URI_PREFIX}{role}").try_into().unwrap()),
        ];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = eku;
        params.signed_by(&key, &ca.issuer).unwrap().der().to_vec()
    }

    fn server_eku() -> Vec<ExtendedKeyUsagePurpose> {
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
    }

    fn name(s: &str) -> Fqdn {
        Fqdn::new(s).unwrap()
    }

    #[test]
    fn policy_accepts_an_as_certificate_and_refuses_the_rest() {
        let ca = ca();
        let good = leaf(&ca, "as.example.net", "as", server_eku());
        let n = name("as.example.net");
        assert_eq!(check_chain(&ca.der, &[&good], &n, None), Ok(()));
        // The server may send the CA itself on top.
        assert_eq!(check_chain(&ca.der, &[&good, &ca.der], &n, None), Ok(()));
        assert_eq!(check_chain(&ca.der, &[], &n, None), Err(VerifyError::NoCertificate));
        assert_eq!(
            check_chain(&ca.der, &[&good], &name("other.example.net"), None),
            Err(VerifyError::WrongName { found: Some("as.example.net".into()) })
        );
        let dc = leaf(&ca, "as.example.net", "dc", server_eku());
        assert_eq!(
            check_chain(&ca.der, &[&dc], &n, None),
            Err(VerifyError::WrongRole { found: Some("urn:ntmobile:role:dc".into()) })
        );
        let client_only = leaf(&ca, "as.example.net", "as", vec![ExtendedKeyUsagePurpose::ClientAuth]);
        assert_eq!(check_chain(&ca.der, &[&client_only], &n, None), Err(VerifyError::NotServerAuth));
        // A device certificate above the leaf is not a CA.
        let device = leaf(&ca, "node.example.net", "node", vec![ExtendedKeyUsagePurpose::ClientAuth]);
        assert_eq!(check_chain(&ca.der, &[&good, &device], &n, None), Err(VerifyError::NotCa { depth: 1 }));
        // The CA as the server's own certificate.
        assert_eq!(check_chain(&ca.der, &[&ca.der], &n, None), Err(VerifyError::LeafIsCa));
        assert_eq!(check_chain(&ca.der, &[b"junk"], &n, None), Err(VerifyError::Malformed { depth: 0 }));
    }

    #[test]
    fn dates_are_checked_only_with_a_clock() {
        let ca = ca();
        let good = leaf(&ca, "as.example.net", "as", server_eku());
        let n = name("as.example.net");
        // rcgen's default validity: 1975 to 4096.
        assert_eq!(check_chain(&ca.der, &[&good], &n, Some(1_700_000_000)), Ok(()));
        assert_eq!(check_chain(&ca.der, &[&good], &n, Some(0)), Err(VerifyError::NotYetValid { depth: Some(0) }));
        assert_eq!(check_chain(&ca.der, &[&good], &n, Some(u64::MAX)), Err(VerifyError::Expired { depth: Some(0) }));
        assert_eq!(check_ca(&ca.der, Some(0)), Err(VerifyError::NotYetValid { depth: None }));
        assert_eq!(check_ca(&ca.der, None), Ok(()));
        assert!(matches!(check_ca(&good, None), Err(VerifyError::BadCa(_))));
    }

    #[test]
    fn names_too_long_for_embedded_tls_are_refused_up_front() {
        let ca = ca();
        let long = format!("{}.example.net", "a".repeat(60));
        assert!(matches!(AsVerifier::new(&ca.der, &long, None), Err(VerifyError::BadServerName)));
        assert!(matches!(AsVerifier::new(&ca.der, "bad name", None), Err(VerifyError::BadServerName)));
    }

    /// Hole 2, on the wrapper's state: a handshake that never presented a Certificate, or
    /// never a CertificateVerify, leaves no proof; a CertificateVerify without a verified
    /// Certificate is refused (the inner verifier would panic).
    #[test]
    fn no_proof_unless_both_checks_ran() {
        let ca = ca();
        let good = leaf(&ca, "as.example.net", "as", server_eku());
        let fresh = || AsVerifier::new(&ca.der, "as.example.net", None).unwrap();

        // Finished straight after EncryptedExtensions: neither check ran.
        let v = fresh();
        assert!(!v.is_verified());
        assert_eq!(v.proof().unwrap_err(), VerifyError::NotVerified { certificate: false, signature: false });

        // Certificate verified, CertificateVerify never came.
        let mut v = fresh();
        v.set_hostname_verification("as.example.net").unwrap();
        let mut cert = CertificateRef::with_context(&[]);
        cert.add(CertificateEntryRef::X509(&good)).unwrap();
        v.verify_certificate(&Sha256::default(), cert).unwrap();
        assert!(!v.is_verified());
        assert_eq!(v.proof().unwrap_err(), VerifyError::NotVerified { certificate: true, signature: false });

        // A second Certificate is out of order, and stays refused.
        let mut again = CertificateRef::with_context(&[]);
        again.add(CertificateEntryRef::X509(&good)).unwrap();
        assert!(v.verify_certificate(&Sha256::default(), again).is_err());
        assert_eq!(v.proof().unwrap_err(), VerifyError::OutOfOrder);

        // CertificateVerify without a Certificate: refused, not a panic.
        let mut v = fresh();
        let verify = CertificateVerifyRef {
            signature_scheme: embedded_tls::SignatureScheme::EcdsaSecp256r1Sha256,
            signature: &[0x30, 0x00],
        };
        assert!(v.verify_signature(verify).is_err());
        assert_eq!(v.proof().unwrap_err(), VerifyError::OutOfOrder);
        assert!(!v.is_verified());
    }
}
