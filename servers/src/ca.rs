//! The deployment CA (spec section 3) and its command, `ntm-ca` (also `ntm-as ca`): a new CA,
//! certificates with a role for servers and boxes, and signed requests from boxes whose key
//! never leaves them. Certificates are made as [`crate::pki`] reads and checks them: every
//! key ECDSA P-256, the holder's name as a SAN DNS name, its role as one SAN URI
//! `urn:ntmobile:role:<label>`, serverAuth and clientAuth for servers, clientAuth only for
//! devices; the CA is `CA:TRUE, pathlen:0` with keyCertSign. The CA alone decides role,
//! name, usages and lifetime.
//!
//! Only the programs that issue certificates carry this module (feature `ca`): the
//! daemons read certificates and never make one.

// The command talks to a person.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use crate::admin::{need, parse_opts, write_file, Opts};
use crate::pki::{
    bad_cert, only_certificate, p256_from_spki_der, parse_pem, parse_x509, pem_reason, role_uri, PkiError,
    MAX_VALID_DAYS,
};
use ntm_cmdline::Failure;
use ntm_proto::engine::Role;
use ntm_proto::wire::Fqdn;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, SubjectPublicKeyInfoDer};
use std::ffi::OsString;
use std::fmt;
use std::path::Path;
use std::time::Duration;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;
use x509_parser::time::ASN1Time;

/// How far back a new certificate's validity starts, so that a box whose clock runs a
/// little behind the CA's accepts it at once.
const BACKDATE: Duration = Duration::from_secs(3600);

/// The deployment CA: its certificate and signing key.
pub struct Ca {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca").field("cert_der_len", &self.cert_der.len()).field("key", &"<redacted>").finish()
    }
}

/// A certificate with the fresh key pair it certifies.
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM. Secret.
    pub key_pem: String,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued").field("cert_pem", &self.cert_pem).field("key_pem", &"<redacted>").finish()
    }
}

impl Ca {
    /// A new CA with a fresh P-256 key: `CA:TRUE, pathlen:0`, keyCertSign and cRLSign,
    /// subject CN `common_name`, valid for `valid_days` from now.
    pub fn generate(common_name: &str, valid_days: u32) -> Result<Ca, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate_error)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        // pathlen 0: the CA signs end-entity certificates only, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial());
        set_validity(&mut params, valid_days)?;
        let cert = params.self_signed(&key).map_err(generate_error)?;
        Ok(Ca { cert_pem: cert.pem(), cert_der: cert.der().clone(), issuer: Issuer::new(params, key) })
    }

    /// The CA from its certificate and its PKCS#8 private key, both PEM (as written by
    /// [`Ca::cert_pem`] and [`Ca::key_pem`]). Refuses a certificate that is not a CA, a key
    /// that is not P-256, and a key that is not the certificate's.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        const CERT: &str = "CA certificate";
        const KEY: &str = "CA key";
        let sections = parse_pem(CERT, cert_pem.as_bytes())?;
        let cert_der = only_certificate(CERT, sections)?;
        // cert_pem() hands this text out as it is (to every server and node), so it must
        // hold the certificate and nothing else, least of all the key.
        let text = cert_pem.trim();
        if !text.starts_with("-----BEGIN CERTIFICATE-----") || text.matches("-----BEGIN ").count() != 1 {
            return Err(PkiError::BadCertificate {
                file: CERT.into(),
                reason: "the CA certificate PEM must hold the certificate and nothing else".into(),
            });
        }
        let x509 = parse_x509(&cert_der).map_err(|e| bad_cert(CERT, e))?;
        if !x509.is_ca() {
            return Err(PkiError::NotCa { file: CERT.into() });
        }
        let key =
            KeyPair::from_pem(key_pem).map_err(|e| PkiError::BadKey { file: KEY.into(), reason: e.to_string() })?;
        if key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(PkiError::BadKey { file: KEY.into(), reason: "not ECDSA P-256".into() });
        }
        if key.public_key_raw() != x509.public_key().subject_public_key.data.as_ref() {
            return Err(PkiError::KeyMismatch { cert: CERT.into(), key: KEY.into() });
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(generate_error)?;
        Ok(Ca { cert_pem: format!("{text}\n"), cert_der, issuer })
    }

    /// The CA certificate, PEM: what every server and node trusts.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA private key, PKCS#8 PEM. Secret: keep it off the servers.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A certificate for `name` in `role`, with a fresh P-256 key pair.
    pub fn issue(&self, role: Role, name: &Fqdn, valid_days: u32) -> Result<Issued, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate_error)?;
        let params = leaf_params(role, name, valid_days)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(generate_error)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// A certificate (PEM) for `name` in `role` certifying a key that stays on the box:
    /// `spki` is its SubjectPublicKeyInfo, DER. The key must be P-256.
    pub fn issue_for_key(
        &self,
        role: Role,
        name: &Fqdn,
        spki: &SubjectPublicKeyInfoDer<'_>,
        valid_days: u32,
    ) -> Result<String, PkiError> {
        p256_from_spki_der(spki)?.ok_or(PkiError::NotP256)?;
        let key = rcgen::SubjectPublicKeyInfo::from_der(spki).map_err(|e| PkiError::BadPublicKey(e.to_string()))?;
        let params = leaf_params(role, name, valid_days)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(generate_error)?;
        Ok(cert.pem())
    }

    /// [`Ca::issue_for_key`] with the public key as PEM (`-----BEGIN PUBLIC KEY-----`).
    pub fn issue_for_key_pem(
        &self,
        role: Role,
        name: &Fqdn,
        public_key_pem: &str,
        valid_days: u32,
    ) -> Result<String, PkiError> {
        let spki = SubjectPublicKeyInfoDer::from_pem_slice(public_key_pem.as_bytes())
            .map_err(|e| PkiError::BadPublicKey(format!("no PUBLIC KEY PEM: {}", pem_reason(&e))))?;
        self.issue_for_key(role, name, &spki, valid_days)
    }

    /// Signs a PKCS#10 certificate signing request (PEM) for `name` in `role`; returns the
    /// certificate, PEM.
    ///
    /// The request's signature must verify (the box holds the key), its key must be P-256,
    /// and the names it asks for (subject CN and SAN DNS names; at least one) must all be
    /// `name`, so an admin who signs the wrong box's request is told. Everything else in the
    /// request (other SANs, key usages, basic constraints, lifetime) is ignored: the CA
    /// alone decides role, name, usages and lifetime.
    pub fn sign_csr(&self, role: Role, name: &Fqdn, csr_pem: &str, valid_days: u32) -> Result<String, PkiError> {
        let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
            .map_err(|e| PkiError::BadCsr(format!("no CERTIFICATE REQUEST PEM: {}", pem_reason(&e))))?;
        // rcgen parses the request and verifies its self-signature; we keep only the proof.
        CertificateSigningRequestParams::from_der(&der).map_err(|e| PkiError::BadCsr(e.to_string()))?;
        let (rest, csr) = X509CertificationRequest::from_der(&der).map_err(|e| PkiError::BadCsr(e.to_string()))?;
        if !rest.is_empty() {
            return Err(PkiError::BadCsr("trailing bytes after the request".into()));
        }
        let info = &csr.certification_request_info;
        let mut requested = Vec::new();
        for cn in info.subject.iter_common_name() {
            let cn = cn.as_str().map_err(|e| PkiError::BadCsr(format!("subject CN: {e}")))?;
            requested.push(cn.to_owned());
        }
        for ext in csr.requested_extensions().into_iter().flatten() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for general in &san.general_names {
                    if let GeneralName::DNSName(dns) = general {
                        requested.push((*dns).to_owned());
                    }
                }
            }
        }
        let matches = |r: &String| Fqdn::new(r).map(|r| &r == name).unwrap_or(false);
        if requested.is_empty() || !requested.iter().all(matches) {
            return Err(PkiError::CsrName { requested: requested.join(","), expected: name.clone() });
        }
        let spki = SubjectPublicKeyInfoDer::from(info.subject_pki.raw);
        self.issue_for_key(role, name, &spki, valid_days)
    }
}

/// The parameters of an end-entity certificate: SAN DNS name and role URI, EKU by role.
fn leaf_params(role: Role, name: &Fqdn, valid_days: u32) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name.as_str());
    params.distinguished_name = dn;
    let dns = name.as_str().try_into().map_err(generate_error)?;
    let uri = role_uri(role).try_into().map_err(generate_error)?;
    params.subject_alt_names = vec![SanType::DnsName(dns), SanType::URI(uri)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match role {
        // A device certificate authenticates a client only: it can never pose as a server.
        Role::Node => vec![ExtendedKeyUsagePurpose::ClientAuth],
        // Servers are TLS clients of each other too (mutual TLS, spec 3).
        Role::As | Role::Dc | Role::Rs | Role::Ns => {
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
        }
    };
    params.use_authority_key_identifier_extension = true;
    // Random, not rcgen's hash of the key: a renewed certificate for the same key must
    // not repeat a serial number.
    params.serial_number = Some(random_serial());
    set_validity(&mut params, valid_days)?;
    Ok(params)
}

fn set_validity(params: &mut CertificateParams, valid_days: u32) -> Result<(), PkiError> {
    if valid_days == 0 || valid_days > MAX_VALID_DAYS {
        return Err(PkiError::BadValidity(valid_days));
    }
    let now = ASN1Time::now().to_datetime();
    params.not_before = now - BACKDATE;
    // At most MAX_VALID_DAYS (about a century) ahead: within the date range, no overflow.
    params.not_after = now + Duration::from_secs(u64::from(valid_days) * 86_400);
    Ok(())
}

fn random_serial() -> SerialNumber {
    use rand_core::RngCore;
    let mut bytes = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut bytes);
    // A positive INTEGER that keeps all 16 bytes: top bit clear, never all-zero leading.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn generate_error(e: rcgen::Error) -> PkiError {
    PkiError::Generate(e.to_string())
}

// ---------------------------------------------------------------------------------------
// The command
// ---------------------------------------------------------------------------------------

/// The CA commands' usage, as `PROGRAM` prints it (`ntm-ca`, or `ntm-as ca` for the alias).
macro_rules! ca_usage {
    ($p:literal) => {
        concat!(
            "  ",
            $p,
            " init --out DIR [--name CN] [--days N]\n",
            "                                a new deployment CA: DIR/ca.pem, DIR/ca.key (default 3650 days)\n",
            "  ",
            $p,
            " issue --ca DIR --role ROLE --name FQDN --out DIR [--days N]\n",
            "                                a certificate and key: DIR/FQDN.pem, DIR/FQDN.key (default 825 days)\n",
            "  ",
            $p,
            " sign-csr --ca DIR [--role ROLE] --name FQDN --csr FILE --out FILE [--days N]\n",
            "                                sign a device's request, its key never leaving it (role default node)\n",
            "                                ROLE: node, as, dc, rs or ns; keys are written mode 0600\n",
        )
    };
}

/// `ntm-ca`'s commands, as its `--help` prints them.
pub const USAGE: &str = ca_usage!("ntm-ca");

/// The same commands under `ntm-as ca`, which runs them too (the AS's administrators have
/// used it from the start).
pub const AS_ALIAS_USAGE: &str = ca_usage!("ntm-as ca");

fn load_ca(dir: &Path) -> Result<Ca, String> {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).map_err(|e| format!("{}: {e}", dir.join(f).display()));
    Ca::from_pem(&read("ca.pem")?, &read("ca.key")?).map_err(|e| e.to_string())
}

fn role(label: &str) -> Result<Role, Failure> {
    Role::from_label(label).ok_or_else(|| Failure::usage("--role: node, as, dc, rs or ns"))
}

/// Runs one CA command (`init`, `issue`, `sign-csr`) with its options. Usage errors are
/// [`Failure::Usage`]; a file that cannot be read or written is a run-time failure.
pub fn command(sub: &str, o: Opts) -> Result<(), Failure> {
    let days = o.days.unwrap_or(825);
    match sub {
        "init" => {
            let out = need(&o.out, "--out DIR")?;
            std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
            let ca = Ca::generate(o.name.as_deref().unwrap_or("NTMobile deployment CA"), o.days.unwrap_or(3650))
                .map_err(|e| e.to_string())?;
            write_file(&out.join("ca.pem"), ca.cert_pem(), false)?;
            write_file(&out.join("ca.key"), &ca.key_pem(), true)?;
            ntm_cmdline::out(&format!(
                "deployment CA written to {}/ca.pem and ca.key (keep ca.key offline)\n",
                out.display()
            ));
        }
        "issue" => {
            let ca = load_ca(&need(&o.ca, "--ca DIR")?)?;
            let role = role(&need(&o.role, "--role")?)?;
            let name = crate::admin::fqdn(&need(&o.name, "--name FQDN")?)?;
            let out = need(&o.out, "--out DIR")?;
            std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
            let issued = ca.issue(role, &name, days).map_err(|e| e.to_string())?;
            write_file(&out.join(format!("{name}.pem")), &issued.cert_pem, false)?;
            write_file(&out.join(format!("{name}.key")), &issued.key_pem, true)?;
            ntm_cmdline::out(&format!("{} certificate for {name} written to {}\n", role.label(), out.display()));
        }
        "sign-csr" => {
            let ca = load_ca(&need(&o.ca, "--ca DIR")?)?;
            let role = role(o.role.as_deref().unwrap_or("node"))?;
            let name = crate::admin::fqdn(&need(&o.name, "--name FQDN")?)?;
            let csr_path = need(&o.csr, "--csr FILE")?;
            let csr = std::fs::read_to_string(&csr_path).map_err(|e| format!("{}: {e}", csr_path.display()))?;
            let cert = ca.sign_csr(role, &name, &csr, days).map_err(|e| e.to_string())?;
            write_file(&need(&o.out, "--out FILE")?, &cert, false)?;
            ntm_cmdline::out(&format!("signed {name} as {}\n", role.label()));
        }
        other => return Err(Failure::usage(format!("unknown command \"{other}\""))),
    }
    Ok(())
}

/// The whole `main` of `ntm-ca`; returns the exit code (0, 1 or 2 as [`Failure`] maps them).
pub fn main(args: Vec<OsString>) -> i32 {
    const PROGRAM: &str = "ntm-ca";
    let help = || {
        format!(
            "{PROGRAM}: the NTMobile deployment CA (certificates with roles for servers and boxes)\n\nusage:\n{USAGE}  \
             {PROGRAM} -h | --help              this text\n  {PROGRAM} -V | --version           the version\n\n\
             exit codes: 0 success, 1 the program failed at its work (a file, a full disk),\n2 bad usage\n"
        )
    };
    let usage_error = |e: &str| {
        eprint!("{PROGRAM}: {e}\n\n{}", help());
        2
    };
    let mut args = args.into_iter();
    let Some(first) = args.next() else { return usage_error("which command?") };
    let rest: Vec<OsString> = args.collect();
    match first.to_str() {
        Some("-h" | "--help" | "help") => ntm_cmdline::out(&help()),
        Some("-V" | "--version") => {
            ntm_cmdline::Usage::new(PROGRAM, env!("CARGO_PKG_VERSION"), "").print_version();
        }
        Some(_) if rest.iter().any(|a| a == "-h" || a == "--help") => ntm_cmdline::out(&help()),
        Some(sub) => {
            let result = parse_opts(rest).map_err(Failure::Usage).and_then(|o| command(sub, o));
            match result {
                Ok(()) => {}
                Err(Failure::Usage(e)) => return usage_error(&e),
                Err(e) => {
                    eprintln!("{PROGRAM}: {e}");
                    return i32::from(e.code());
                }
            }
        }
        None => return usage_error("which command?"),
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::peer_identity;

    #[test]
    fn issued_certificates_carry_role_name_and_usages() {
        let ca = Ca::generate("test CA", 1).unwrap();
        let ca_x509 = parse_x509(ca.cert_der()).unwrap();
        assert!(ca_x509.is_ca());
        let constraints = ca_x509.basic_constraints().unwrap().unwrap().value;
        assert_eq!(constraints.path_len_constraint, Some(0));
        assert!(ca_x509.key_usage().unwrap().unwrap().value.key_cert_sign());

        for role in Role::ALL {
            let name = Fqdn::new("x.example.net").unwrap();
            let issued = ca.issue(role, &name, 1).unwrap();
            let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
            let id = peer_identity(&der).unwrap();
            assert_eq!((id.role, id.name), (role, name));
            let x509 = parse_x509(&der).unwrap();
            assert!(!x509.is_ca());
            let eku = x509.extended_key_usage().unwrap().unwrap().value;
            assert!(eku.client_auth);
            assert_eq!(eku.server_auth, role != Role::Node);
            // Backdated a little, valid for the days asked.
            let validity = x509.validity();
            let lifetime = validity.not_after.timestamp() - validity.not_before.timestamp();
            assert_eq!(lifetime, 86_400 + BACKDATE.as_secs() as i64);
        }
    }

    #[test]
    fn validity_is_bounded() {
        let mut params = CertificateParams::default();
        assert!(matches!(set_validity(&mut params, 0), Err(PkiError::BadValidity(0))));
        assert!(matches!(set_validity(&mut params, MAX_VALID_DAYS + 1), Err(PkiError::BadValidity(_))));
        assert!(set_validity(&mut params, MAX_VALID_DAYS).is_ok());
        assert!(matches!(set_validity(&mut params, u32::MAX), Err(PkiError::BadValidity(_))));
    }
}
