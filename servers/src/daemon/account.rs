//! `ntm-as`: the Account Server, and its administration commands ([`ADMIN_USAGE`], which
//! `ntm-as --help` prints): accounts, the attestation key, and the CA commands of `ntm-ca`
//! under `ntm-as ca` ([`crate::ca`]). Keys are written with mode 0600.

// The administration commands talk to a person.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use super::{drops_json, identify, os_rng, reload_tls, tls_configs, StartError};
use crate::admin::{fqdn, need, parse_opts, write_file, Opts};
use crate::config::{secs, AsFile};
use crate::driver::{Daemon, Driver, DriverConfig, Reload};
use crate::oidc::{parse_jwks, verify_id_token, OidcProvider, DEFAULT_LEEWAY_SECS};
use crate::pki::ClientAuth;
use crate::store::accounts::{AccountStore, HashCost};
use ntm_cmdline::Failure;
use ntm_dns::{Locator, LocatorConfig};
use ntm_proto::crypto::pk::KeyPair;
use ntm_proto::engine::account::{AccountServer, Accounts, AsConfig, AsEvent, CredentialCheck, Verdict};
use ntm_proto::engine::Engine;
use ntm_proto::engine::PeerIdentity;
use ntm_proto::time::{Duration, Instant};
use ntm_proto::wire::Fqdn;
use std::ffi::OsString;
use std::io::Read;
use std::path::Path;
use std::sync::mpsc::{channel, sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

/// Checks passwords on threads of their own. argon2id takes tens of milliseconds and
/// about 19 MiB per check; on the event loop, a burst of guesses would silence every
/// other connection. The queue is bounded: a check that finds it full is refused as
/// overloaded at once, so guesses cost the loop nothing but their bytes.
struct PasswordChecker {
    jobs: SyncSender<CredentialCheck>,
    done: Receiver<(u64, Verdict)>,
}

impl PasswordChecker {
    fn start(workers: Vec<PasswordWorker>, queue: usize, waker: Arc<mio::Waker>) -> std::io::Result<Self> {
        let (jobs, waiting) = sync_channel::<CredentialCheck>(queue);
        let waiting = Arc::new(Mutex::new(waiting));
        let (finished, done) = channel();
        for (i, mut worker) in workers.into_iter().enumerate() {
            let (waiting, finished, waker) = (waiting.clone(), finished.clone(), waker.clone());
            std::thread::Builder::new().name(format!("password-{i}")).spawn(move || loop {
                // The lock is held only while waiting for the next check, not during it.
                let next = match waiting.lock() {
                    Ok(w) => w.recv(),
                    Err(_) => return,
                };
                let Ok(check) = next else { return }; // the daemon is stopping
                let verdict = worker.password(&check.email, check.password.expose_secret());
                let id = check.id;
                drop(check);
                if finished.send((id, verdict)).is_err() {
                    return;
                }
                let _ = waker.wake();
            })?;
        }
        Ok(PasswordChecker { jobs, done })
    }
}

/// Largest argon2 memory a stored hash may ask for (blocks of 1 KiB): 256 MiB.
const ARGON2_BLOCKS_MAX: usize = 256 * 1024;

/// One password-checking thread's state: its own read connection to the account
/// database, and argon2's working memory, allocated once and reused. (Memory that argon2
/// allocated and freed per check stayed with the allocator's per-thread arenas: hundreds
/// of MiB after a burst of guesses.) The checks are those of [`AccountStore::password`]:
/// e-mails compared lowercased, constant-time comparison of the hash, and a check of the same cost for an unknown e-mail or an account without a
/// password, so that timing does not tell which e-mails exist.
struct PasswordWorker {
    conn: rusqlite::Connection,
    path: String,
    memory: Vec<argon2::Block>,
}

impl PasswordWorker {
    fn open(path: &Path) -> Result<Self, StartError> {
        use rusqlite::OpenFlags;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = rusqlite::Connection::open_with_flags(path, flags)
            .map_err(|e| format!("{}: opening for password checks: {e}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(PasswordWorker { conn, path: path.display().to_string(), memory: Vec::new() })
    }

    fn password(&mut self, email: &str, password: &[u8]) -> Verdict {
        let row = self
            .conn
            .query_row(
                "SELECT fqdn, password_hash, disabled FROM accounts WHERE email = ?1",
                [email.to_lowercase()],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?, r.get::<_, bool>(2)?)),
            )
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            });
        let row = match row {
            Ok(r) => r,
            Err(e) => {
                // No error path in a verdict: a broken database refuses everyone.
                log::error!("database {}: looking up a login: {e}", self.path);
                None
            }
        };
        match row {
            Some((fqdn, Some(hash), disabled)) => {
                if !self.verify(password, &hash) {
                    return Verdict::BadCredential;
                }
                if disabled {
                    return Verdict::Disabled;
                }
                match Fqdn::new(&fqdn) {
                    Ok(fqdn) => Verdict::Account(ntm_proto::engine::account::Account { fqdn }),
                    Err(e) => {
                        log::error!("database {}: an account has a bad node name: {e}", self.path);
                        Verdict::BadCredential
                    }
                }
            }
            _ => {
                // Unknown e-mail, or no password on the account: spend the same time.
                self.dummy(password);
                Verdict::BadCredential
            }
        }
    }

    /// Checks `password` against a PHC string, in constant time, in the reused memory.
    fn verify(&mut self, password: &[u8], phc: &str) -> bool {
        use argon2::password_hash::PasswordHash;
        use argon2::{Algorithm, Argon2, Params, Version};
        let Ok(hash) = PasswordHash::new(phc) else {
            log::error!("database {}: a stored password hash does not parse", self.path);
            return false;
        };
        let algorithm = Algorithm::try_from(hash.algorithm);
        let version = hash.version.map_or(Ok(Version::default()), Version::try_from);
        let (Ok(algorithm), Ok(version), Ok(params), Some(salt), Some(expected)) =
            (algorithm, version, Params::try_from(&hash), hash.salt, hash.hash)
        else {
            log::error!("database {}: a stored password hash is not a usable argon2 hash", self.path);
            return false;
        };
        let mut salt_buf = [0u8; 64];
        let Ok(salt) = salt.decode_b64(&mut salt_buf) else { return false };
        let mut out = [0u8; 64];
        let Some(out) = out.get_mut(..expected.len()) else { return false };
        if !self.hash_into(Argon2::new(algorithm, version, params), password, salt, out) {
            return false;
        }
        // Output's equality is constant-time.
        argon2::password_hash::Output::new(out).is_ok_and(|o| o == expected)
    }

    /// A check of the default cost whose result is thrown away.
    fn dummy(&mut self, password: &[u8]) {
        use argon2::{Algorithm, Argon2, Params, Version};
        let mut out = [0u8; 32];
        let a = Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::DEFAULT);
        let _ = self.hash_into(a, password, b"NTMobile dummy salt", &mut out);
    }

    fn hash_into(&mut self, a: argon2::Argon2<'_>, password: &[u8], salt: &[u8], out: &mut [u8]) -> bool {
        let blocks = a.params().block_count();
        if blocks > ARGON2_BLOCKS_MAX {
            log::error!("database {}: a stored password hash asks for more than 256 MiB", self.path);
            return false;
        }
        if self.memory.len() < blocks {
            self.memory.resize(blocks, argon2::Block::new());
        }
        let Some(memory) = self.memory.get_mut(..blocks) else { return false };
        a.hash_password_into_with_memory(password, salt, out, memory).is_ok()
    }
}

/// What the AS engine asks of accounts ([`Accounts`]): the database's verdicts, with ID
/// tokens verified first against the configured OpenID providers.
#[derive(Debug)]
pub struct Logins {
    /// The account database.
    pub store: AccountStore,
    /// The providers whose ID tokens log in.
    pub providers: Vec<OidcProvider>,
}

impl Accounts for Logins {
    fn password(&mut self, email: &str, password: &[u8]) -> Verdict {
        self.store.password(email, password)
    }

    fn device(&mut self, identity: &PeerIdentity) -> Verdict {
        self.store.device(identity)
    }

    fn id_token(&mut self, token: &[u8], now_unix: u64) -> Result<Verdict, String> {
        let claims =
            verify_id_token(token, &self.providers, now_unix, DEFAULT_LEEWAY_SECS).map_err(|e| e.to_string())?;
        Ok(self.store.oidc(&claims))
    }
}

/// The AS daemon.
pub struct AsDaemon {
    server: AccountServer<Logins>,
    cfg: AsFile,
    logins: u64,
    refusals: u64,
    /// The checkers' states until the driver gives its waker.
    workers: Vec<PasswordWorker>,
    checker: Option<PasswordChecker>,
    /// Checks refused because the queue was full.
    checks_overloaded: u64,
}

impl std::fmt::Debug for AsDaemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsDaemon").field("server", &self.server).finish_non_exhaustive()
    }
}

impl Daemon for AsDaemon {
    type Engine = AccountServer<Logins>;

    fn engine(&mut self) -> &mut Self::Engine {
        &mut self.server
    }

    fn set_waker(&mut self, waker: Arc<mio::Waker>) {
        let workers = std::mem::take(&mut self.workers);
        match PasswordChecker::start(workers, self.cfg.password_queue, waker) {
            Ok(c) => self.checker = Some(c),
            // Checked on the loop instead: slower under load, but still correct.
            Err(e) => log::error!("cannot start the password checkers: {e}"),
        }
    }

    fn handle_wake(&mut self, now: Instant) {
        let Some(checker) = &self.checker else { return };
        let verdicts: Vec<(u64, Verdict)> = checker.done.try_iter().collect();
        for (id, verdict) in verdicts {
            self.server.handle_credential_verdict(now, id, Some(verdict));
        }
    }

    fn after(&mut self, now: Instant) {
        while let Some(check) = self.server.poll_credential_check() {
            let id = check.id;
            match &self.checker {
                Some(c) => match c.jobs.try_send(check) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                        self.checks_overloaded += 1;
                        self.server.handle_credential_verdict(now, id, None);
                    }
                },
                None => {
                    let verdict = self.server.accounts().password(&check.email, check.password.expose_secret());
                    self.server.handle_credential_verdict(now, id, Some(verdict));
                }
            }
        }
        while let Some(ev) = self.server.poll_event() {
            match ev {
                AsEvent::LoggedIn { fqdn, credential } => {
                    self.logins += 1;
                    log::info!("{fqdn} logged in ({credential:?})");
                }
                AsEvent::Refused { credential, reason } => {
                    self.refusals += 1;
                    log::info!("login refused ({credential:?}): {reason:?}");
                }
            }
        }
    }

    fn status(&mut self, _now: Instant) -> serde_json::Value {
        let accounts = self.server.accounts().store.list().map(|l| l.len()).unwrap_or(0);
        serde_json::json!({
            "role": "as",
            "name": self.cfg.common.name.as_str(),
            "accounts": accounts,
            "logins": self.logins,
            "refusals": self.refusals,
            "logins_in_progress": self.server.logins_in_progress(),
            "password_checks_overloaded": self.checks_overloaded,
            "public_key_mode": self.server.attestation_public_key().is_some(),
            "dropped": drops_json(self.server.drops()),
        })
    }

    fn reload(&mut self) -> Reload {
        reload_tls(&self.cfg.common.tls, ClientAuth::Optional)
    }
}

fn read_key_pair(path: &Path) -> Result<KeyPair, StartError> {
    use p256::pkcs8::DecodePrivateKey;
    let pem = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let secret = p256::SecretKey::from_pkcs8_pem(&pem)
        .map_err(|e| format!("{}: not a P-256 PKCS#8 key: {e}", path.display()))?;
    Ok(KeyPair::from_secret(secret))
}

/// The AS's own key files besides TLS: the attestation key and the OIDC providers' keys.
/// `run` and `check` both read them with this.
pub fn read_key_files(cfg: &AsFile) -> Result<(Option<KeyPair>, Vec<OidcProvider>), StartError> {
    let attestation = cfg.attestation_key.as_deref().map(read_key_pair).transpose()?;
    let mut providers = Vec::new();
    for p in &cfg.oidc {
        let jwks = std::fs::read_to_string(&p.jwks).map_err(|e| format!("{}: {e}", p.jwks.display()))?;
        let keys = parse_jwks(&jwks).map_err(|e| format!("{}: {e}", p.jwks.display()))?;
        providers.push(OidcProvider { issuer: p.issuer.clone(), audience: p.audience.clone(), keys });
    }
    Ok((attestation, providers))
}

/// Builds the AS from its configuration.
pub fn build(cfg: AsFile) -> Result<Driver<AsDaemon>, StartError> {
    let (server_tls, client_tls) = tls_configs(&cfg.common.tls, ClientAuth::Optional)?;
    let mut ac = AsConfig::new(cfg.common.name.clone());
    ac.key_lifetime = secs(cfg.key_lifetime_secs);
    ac.static_dcs = cfg.dns.static_dcs.iter().map(|s| s.location()).collect();
    ac.defer_password_checks = true;
    ac.login_burst = cfg.login_burst;
    ac.login_interval = Duration::from_millis(cfg.login_interval_ms);
    let (attestation_key, providers) = read_key_files(&cfg)?;
    ac.attestation_key = attestation_key;
    let accounts = Logins { store: AccountStore::open(&cfg.accounts)?, providers };
    let workers =
        (0..cfg.password_workers).map(|_| PasswordWorker::open(&cfg.accounts)).collect::<Result<Vec<_>, _>>()?;
    let server = AccountServer::new(ac, accounts, os_rng())?;
    let locator = Locator::new(
        LocatorConfig {
            nameservers: cfg.dns.nameservers.clone(),
            dc_port: cfg.dns.dc_port,
            ntm_domains: cfg.dns.ntm_domains.clone(),
            static_dcs: cfg.dns.static_dcs.iter().map(|s| s.location()).collect(),
            ..LocatorConfig::default()
        },
        os_rng(),
    );
    let dc = DriverConfig {
        udp: Vec::new(),
        tls: cfg.common.listen.clone(),
        tcp: Vec::new(),
        tls_server: Some(server_tls),
        tls_client: Some(client_tls),
        identify,
        locator: Some(locator),
        status_socket: cfg.common.status_socket.clone(),
        max_connections: cfg.common.max_connections,
        // A login takes a round trip or two; a connection idle for long is abandoned.
        tls_idle_timeout: Some(Duration::from_secs(60)),
        tcp_idle_timeout: None,
        signals: true,
        max_unauthenticated_per_source: cfg.common.max_unauthenticated_per_source,
        max_buffered_bytes: cfg.common.max_buffered_bytes,
    };
    let daemon = AsDaemon { server, cfg, logins: 0, refusals: 0, workers, checker: None, checks_overloaded: 0 };
    Ok(Driver::new(dc, daemon)?)
}

/// The administration commands, by first word, as `ntm-as --help` and `ntm-as WORD --help`
/// print them; [`admin`] runs them.
pub const ADMIN_USAGE: &[(&str, &str)] = &[
    ("ca", crate::ca::AS_ALIAS_USAGE),
    (
        "attestation-key",
        "  ntm-as attestation-key --out FILE
                                a P-256 key for signing attestations (public-key mode)
",
    ),
    (
        "account",
        "  ntm-as account add -c FILE --email E --fqdn N [--password-stdin] [--device N]
                                an account bound to node name N (password read from stdin)
  ntm-as account list -c FILE   every account: e-mail, name, credentials, DISABLED
  ntm-as account disable|enable|remove -c FILE --account E|N
  ntm-as account set-password -c FILE --account E|N
                                the new password read from stdin
  ntm-as account bind-device -c FILE --account E|N --device N
  ntm-as account bind-oidc -c FILE --account E|N --issuer URL --subject S
  ntm-as account bind-fqdn -c FILE --account E|N --fqdn N
                                E: the account's e-mail, N: a node name (FQDN); FILE: as.json
",
    ),
];

fn read_password() -> Result<Vec<u8>, Failure> {
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s).map_err(|e| format!("reading the password: {e}"))?;
    let pw = s.trim_end_matches(['\n', '\r']).as_bytes().to_vec();
    if pw.is_empty() {
        return Err(Failure::usage("empty password"));
    }
    Ok(pw)
}

fn accounts(o: &Opts) -> Result<AccountStore, Failure> {
    let cfg_path = need(&o.config, "-c as.json")?;
    let cfg: AsFile = crate::config::load(&cfg_path)?;
    AccountStore::open_with(&cfg.accounts, HashCost::Default).map_err(|e| Failure::runtime(e.to_string()))
}

/// Runs an administration command (`ca`, `attestation-key`, `account`).
/// Usage errors exit 2, everything that fails at run time (a file, the database, a full
/// disk) exits 1: see [`Failure`].
pub fn admin(word: &str, args: Vec<OsString>) -> Result<(), Failure> {
    let mut args = args.into_iter();
    let sub = match word {
        "attestation-key" => String::new(),
        _ => args
            .next()
            .and_then(|s| s.into_string().ok())
            .ok_or_else(|| Failure::usage(format!("{word}: which command?")))?,
    };
    let o = parse_opts(args.collect()).map_err(Failure::Usage)?;
    match (word, sub.as_str()) {
        ("ca", "init" | "issue" | "sign-csr") => return crate::ca::command(&sub, o),
        ("attestation-key", _) => {
            use p256::pkcs8::EncodePrivateKey;
            let out = need(&o.out, "--out FILE")?;
            let kp = KeyPair::generate(&mut rand_core::OsRng);
            let scalar = kp.expose_scalar();
            let secret = p256::SecretKey::from_slice(&*scalar).map_err(|e| e.to_string())?;
            let pem = secret.to_pkcs8_pem(p256::pkcs8::LineEnding::LF).map_err(|e| e.to_string())?;
            write_file(&out, &pem, true)?;
            ntm_cmdline::out(&format!("attestation key written to {}\n", out.display()));
        }
        ("account", "add") => {
            let mut store = accounts(&o)?;
            let email = need(&o.email, "--email")?;
            let name = fqdn(&need(&o.fqdn, "--fqdn")?)?;
            let password = if o.password_stdin { Some(read_password()?) } else { None };
            store.add_account(&email, password.as_deref(), &name).map_err(|e| e.to_string())?;
            if let Some(dev) = &o.device {
                store.bind_device(&email, &fqdn(dev)?).map_err(|e| e.to_string())?;
            }
            ntm_cmdline::out(&format!("account {email} bound to {name}\n"));
        }
        ("account", "list") => {
            let store = accounts(&o)?;
            for a in store.list().map_err(|e| e.to_string())? {
                ntm_cmdline::out(&format!(
                    "{}\t{}\t{}{}{}{}\n",
                    a.email,
                    a.fqdn,
                    if a.has_password { "password " } else { "" },
                    a.device.as_ref().map(|d| format!("device={d} ")).unwrap_or_default(),
                    a.oidc.as_ref().map(|b| format!("oidc={}#{} ", b.issuer, b.subject)).unwrap_or_default(),
                    if a.disabled { "DISABLED" } else { "" }
                ));
            }
        }
        ("account", cmd) => {
            // An unknown word is a usage error before anything else is looked at (the
            // store's configuration included).
            const WORDS: [&str; 7] =
                ["disable", "enable", "remove", "set-password", "bind-device", "bind-fqdn", "bind-oidc"];
            if !WORDS.contains(&cmd) {
                return Err(Failure::usage(format!(
                    "account {cmd}: unknown command (add, list, {})",
                    WORDS.join(", ")
                )));
            }
            let mut store = accounts(&o)?;
            let who = need(&o.account, "--account E|FQDN")?;
            let r = match cmd {
                "disable" => store.disable(&who),
                "enable" => store.enable(&who),
                "remove" => store.remove(&who),
                "set-password" => {
                    let pw = read_password()?;
                    store.set_password(&who, Some(&pw))
                }
                "bind-device" => store.bind_device(&who, &fqdn(&need(&o.device, "--device")?)?),
                "bind-fqdn" => store.bind_fqdn(&who, &fqdn(&need(&o.fqdn, "--fqdn")?)?),
                "bind-oidc" => store.bind_oidc(&who, &need(&o.issuer, "--issuer")?, &need(&o.subject, "--subject")?),
                other => return Err(Failure::usage(format!("account {other}: unknown command"))),
            };
            r.map_err(|e| e.to_string())?;
            ntm_cmdline::out(&format!("account {who}: {cmd} done\n"));
        }
        (w, s) => return Err(Failure::usage(format!("unknown command \"{w} {s}\""))),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_account_command_is_named_before_the_configuration_is_asked_for() {
        for word in ["--helpp", "disabel"] {
            match admin("account", vec![word.into()]) {
                Err(Failure::Usage(m)) => assert!(m.contains("unknown command") && m.contains(word), "{m}"),
                other => panic!("{word}: {other:?}"),
            }
        }
        // A known command without its options still asks for them.
        match admin("account", vec!["disable".into()]) {
            Err(Failure::Usage(m)) => assert!(m.contains("-c"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    /// The password threads' checks give the account store's verdicts, in both hash
    /// costs.
    #[test]
    fn a_password_worker_agrees_with_the_account_store() {
        for cost in [HashCost::Cheap, HashCost::Default] {
            let dir = std::env::temp_dir().join(format!("ntm-as-worker-{cost:?}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("accounts.db");
            let mut store = AccountStore::open_with(&path, cost).unwrap();
            let name = |s: &str| Fqdn::new(s).unwrap();
            store.add_account("Owner@A.example", Some(b"right"), &name("a.zone.example")).unwrap();
            store.add_account("off@b.example", Some(b"right"), &name("b.zone.example")).unwrap();
            store.disable("off@b.example").unwrap();
            store.add_account("nopw@c.example", None, &name("c.zone.example")).unwrap();
            let mut worker = PasswordWorker::open(&path).unwrap();
            let cases: [(&str, &[u8]); 6] = [
                ("owner@a.example", b"right"),
                ("OWNER@a.example", b"right"),
                ("owner@a.example", b"wrong"),
                ("off@b.example", b"right"),
                ("nopw@c.example", b"right"),
                ("nobody@d.example", b"right"),
            ];
            for (email, pw) in cases {
                assert_eq!(worker.password(email, pw), store.password(email, pw), "{cost:?} {email}");
            }
            assert!(matches!(worker.password("owner@a.example", b"right"), Verdict::Account(_)));
            assert_eq!(worker.password("off@b.example", b"right"), Verdict::Disabled);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
