//! What the agent reads from files besides its configuration: the CA, the device
//! certificate and key, the password or ID token file. Read at start and by `ntmd check`,
//! so a typo in a path shows before the box reboots into it; the ID token file is read
//! again when it changes (`Agent::check_token`).

use crate::config::{AgentFile, Route};
use crate::tls::{ClientCert, LoginTlsConfig};
use ntm_cmdline::Failure;
use ntm_proto::crypto::pk::KeyPair;
use ntm_proto::wire::login::{Credential, IdToken, Password};
use ntm_proto::wire::Text;

/// Seconds since 1970 if the system clock is plausibly set (past 2025-01-01).
pub(crate) fn wall_clock() -> Option<u64> {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    (secs > 1_735_689_600).then_some(secs)
}

fn read_pem_chain(path: &str) -> Result<Vec<Vec<u8>>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let end_marker = "-----END CERTIFICATE-----";
        let Some(end) = rest[start..].find(end_marker) else { break };
        let block = &rest[start..start + end + end_marker.len()];
        let (_, der) = pem_rfc7468::decode_vec(block.as_bytes()).map_err(|e| format!("{path}: {e}"))?;
        out.push(der);
        rest = &rest[start + end + end_marker.len()..];
    }
    if out.is_empty() {
        return Err(format!("{path}: no certificate"));
    }
    Ok(out)
}

fn read_key(path: &str) -> Result<p256::SecretKey, String> {
    use p256::pkcs8::DecodePrivateKey;
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    p256::SecretKey::from_pkcs8_pem(&text).map_err(|e| format!("{path}: not a P-256 PKCS#8 key: {e}"))
}

fn read_secret_line(path: &str) -> Result<Vec<u8>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let line = text.lines().next().unwrap_or("").as_bytes().to_vec();
    if line.is_empty() {
        return Err(format!("{path}: empty"));
    }
    Ok(line)
}

/// The current credential, read from its files (an ID token file is looked at again every
/// 30 s and re-read when it changed).
pub(crate) fn credential(cfg: &AgentFile) -> Result<Credential, Failure> {
    if cfg.credential.device.is_some() {
        return Ok(Credential::DeviceCertificate);
    }
    if let Some(p) = &cfg.credential.password {
        let pw = read_secret_line(&p.password_file)?;
        let password = Password::new(&pw).map_err(|e| format!("{}: {e}", p.password_file))?;
        let email = Text::new(&p.email).map_err(|e| Failure::usage(format!("credential.password.email: {e}")))?;
        return Ok(Credential::Password { email, password });
    }
    if let Some(path) = &cfg.credential.oidc_token_file {
        let t = read_secret_line(path)?;
        return Ok(Credential::OidcToken(IdToken::new(&t).map_err(|e| format!("{path}: {e}"))?));
    }
    Err(Failure::usage("no credential"))
}

/// What the agent reads from files besides its configuration: checked by `ntmd check`
/// as well as at start, so a typo in a path shows before the box reboots into it.
pub struct Material {
    pub(crate) tls: LoginTlsConfig,
    pub(crate) key_pair: Option<KeyPair>,
    pub(crate) credential: Credential,
    pub(crate) routes: Vec<Route>,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material").field("routes", &self.routes).finish_non_exhaustive()
    }
}

impl Material {
    /// Reads the CA, the device certificate and key or the password or token file.
    /// A value of the configuration is a usage error (exit 2); a file it names that cannot
    /// be read or used (a missing or garbage key, a certificate that does not match it) is
    /// a failure at run time (exit 1).
    pub fn load(cfg: &AgentFile) -> Result<Self, Failure> {
        let routes = cfg.routes().map_err(|e| Failure::usage(format!("virtual_routes: {e}")))?;
        let as_name = cfg.account_server_name.as_ref().ok_or_else(|| Failure::usage("account_server_name: missing"))?;
        let ca_der =
            read_pem_chain(&cfg.ca)?.into_iter().next().ok_or_else(|| Failure::runtime("no CA certificate"))?;
        let (client, key_pair) = match &cfg.credential.device {
            Some(d) => {
                let key = read_key(&d.key)?;
                let kp = KeyPair::from_secret(key.clone());
                (Some(ClientCert { chain_der: read_pem_chain(&d.cert)?, key }), Some(kp))
            }
            None => (None, None),
        };
        let tls = LoginTlsConfig { ca_der, server_name: as_name.to_string(), client, unix_time: wall_clock() };
        tls.check().map_err(|e| format!("certificates: {e}"))?;
        Ok(Material { tls, key_pair, credential: credential(cfg)?, routes })
    }
}
