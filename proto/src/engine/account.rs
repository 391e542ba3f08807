//! The Account Server's protocol logic (spec 4.1, Fig. 2), without its TLS transport.
//!
//! A Login Request arrives over TLS with one of three credentials, all handled by the
//! same sequence: a password (checked by the [`Accounts`] store the daemon provides, which
//! hashes passwords), the device certificate TLS verified (the driver passes its identity),
//! or an OpenID Connect ID token (verified by the [`Accounts`] the daemon provides, against
//! its configured providers: the JWT code lives with the AS daemon, not here). A
//! wrong credential gets a refusal and never a key. For a good one the AS makes K_ntmdc,
//! locates the node's DC (the NS record of the node's zone), hands the key to the DC in a
//! Key Distribution over mutual TLS, and only after the DC's NTM ACK answers the node with
//! the Login Response. In public-key mode it also signs an [`Attestation`] of the node's
//! key, which is what keeps DCs from substituting keys.
//!
//! Time: the driver must pass UNIX-epoch instants (milliseconds), because ID tokens carry
//! UNIX expiry times.
//!
//! Cost: a password check is a deliberately slow hash. With
//! [`AsConfig::defer_password_checks`] the engine does not call [`Accounts::password`]
//! itself: it emits a [`CredentialCheck`] ([`AccountServer::poll_credential_check`]) and
//! takes the verdict later ([`AccountServer::handle_credential_verdict`]), the way DNS
//! look-ups work, so a driver can hash on another thread. Each source address may start
//! only so many logins ([`AsConfig::login_burst`], then one per
//! [`AsConfig::login_interval`]), and a connection has at most one login in progress
//! ([`Engine::stream_ready`] says when the next may be read).

use super::{
    ConfigError, DcLocation, DnsAnswer, DnsQuery, DropCounters, DropReason, Engine, PeerIdentity, Received, Rng, Role,
    StreamKind, Transmit, Via,
};
use crate::crypto::pk::{Attestation, KeyPair, PublicKey};
use crate::crypto::{parse_plain, plain};
use crate::keys::{KNtmDc, KeyGrant};
use crate::time::{Duration, Instant};
use crate::wire::login::{Credential, CredentialKind, KeyDistribution, LoginRequest, LoginResponse, Password};
use crate::wire::refusal::{Reason, Refusal};
use crate::wire::{Fqdn, KeyId, Lifetime, Message, MsgType, RequestId, Sender};
use core::net::{IpAddr, SocketAddr};
use std::collections::{HashMap, VecDeque};

/// An account as the AS logic needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// The node name bound to the account; its zone's DC gets the key.
    pub fqdn: Fqdn,
}

/// What the account store says of a credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Good credential, enabled account.
    Account(Account),
    /// No such account, or the credential does not match it.
    BadCredential,
    /// The account exists and matched, but is disabled.
    Disabled,
}

/// The account store (a database in the daemon). Implementations must compare secrets in
/// constant time and store passwords only as slow salted hashes.
pub trait Accounts {
    /// Checks an e-mail and password.
    fn password(&mut self, email: &str, password: &[u8]) -> Verdict;
    /// Finds the account of a device certificate (already verified by TLS against the
    /// deployment CA).
    fn device(&mut self, identity: &PeerIdentity) -> Verdict;
    /// Verifies an OpenID Connect ID token (signature, issuer, audience and times, with
    /// `now_unix`, seconds since the UNIX epoch, as the clock) and finds the account bound
    /// to its identity. `Err` says why the token itself is not accepted (for the log; the
    /// node is told only that its credential is bad).
    fn id_token(&mut self, token: &[u8], now_unix: u64) -> Result<Verdict, String>;
}

/// How an AS is set up. [`AsConfig::new`] fills in the defaults.
#[derive(Clone, Debug)]
pub struct AsConfig {
    /// The AS's name.
    pub name: Fqdn,
    /// Lifetime of K_ntmdc (no re-login needed before it ends).
    pub key_lifetime: Duration,
    /// The key that signs attestations (public-key mode); None disables the mode.
    pub attestation_key: Option<KeyPair>,
    /// DCs known without DNS: zone -> DC.
    pub static_dcs: Vec<(Fqdn, DcLocation)>,
    /// How long the DNS lookup of the node's DC, and then the DC's acknowledgement of the
    /// Key Distribution, may each take. Both together stay under the node's 30 s wait
    /// for its Login Response, so a slow DC never leads to a second key.
    pub dc_timeout: Duration,
    /// Most logins in progress (password checks included).
    pub max_pending: usize,
    /// Leave password checks to the driver ([`CredentialCheck`]) instead of calling
    /// [`Accounts::password`] inline. A daemon sets this: the hash takes tens of
    /// milliseconds, which must not stall every other connection.
    pub defer_password_checks: bool,
    /// Logins one source address may start at once ...
    pub login_burst: u32,
    /// ... and then one per this interval (a token bucket per address).
    pub login_interval: Duration,
    /// Most source addresses tracked by the rate limit; when full, the address idle
    /// longest is forgotten (its bucket was the fullest, so little is lost).
    pub max_login_sources: usize,
}

/// How long a K_ntmdc lasts unless configured otherwise: a day. A node logs in again shortly
/// before its key expires, and a login with registration costs a box behind NAT about 4 KB,
/// as much as seventeen hourly NS keepalives: with a day, a box kept by the NS stays under
/// 10 KB of traffic a day (docs/benchmarks.md). The key protects a few control messages an
/// hour under a counter nonce, far from any wear-out of AES-128.
pub const DEFAULT_KEY_LIFETIME: Duration = Duration::from_secs(24 * 3600);

impl AsConfig {
    /// A configuration with defaults: keys for [`DEFAULT_KEY_LIFETIME`].
    pub fn new(name: Fqdn) -> Self {
        AsConfig {
            name,
            key_lifetime: DEFAULT_KEY_LIFETIME,
            attestation_key: None,
            static_dcs: Vec::new(),
            dc_timeout: Duration::from_secs(10),
            max_pending: 1024,
            defer_password_checks: false,
            login_burst: 10,
            login_interval: Duration::from_secs(2),
            max_login_sources: 4096,
        }
    }
}

enum Step {
    ExpectDcLocation { query: u64 },
    ExpectNtmAck { dc: DcLocation, deadline: Instant },
}

/// A login between the credential check and the Login Response.
struct Pending {
    node: SocketAddr,
    request_id: RequestId,
    fqdn: Fqdn,
    key_id: KeyId,
    key: KNtmDc,
    attestation: Option<Attestation>,
    step: Step,
    started: Instant,
}

/// A password for the driver to check against the account store (see
/// [`AsConfig::defer_password_checks`]); answer with
/// [`AccountServer::handle_credential_verdict`] and the same `id`.
#[derive(Clone, Debug)]
pub struct CredentialCheck {
    /// Matches the verdict.
    pub id: u64,
    /// The account's e-mail address, as sent.
    pub email: String,
    /// The password (zeroized on drop, never printed).
    pub password: Password,
}

/// A Login Request whose password is being checked.
struct ExpectVerdict {
    id: u64,
    node: SocketAddr,
    request_id: RequestId,
    public_key: Option<PublicKey>,
    started: Instant,
}

/// A source address's login allowance.
#[derive(Clone, Copy)]
struct Bucket {
    tokens: u32,
    /// When the last whole token was added (or the bucket was found full).
    refilled: Instant,
}

/// What happened, for logs and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AsEvent {
    /// A node logged in.
    LoggedIn {
        /// The node.
        fqdn: Fqdn,
        /// With what.
        credential: CredentialKind,
    },
    /// A login was refused.
    Refused {
        /// With what it was tried.
        credential: CredentialKind,
        /// Why.
        reason: Reason,
    },
}

/// The source a login counts against: its IPv4 address, or the /64 of its IPv6 address
/// (one host commonly holds a whole /64).
fn login_source(from: SocketAddr) -> IpAddr {
    match from.ip() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(core::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

fn verdict_account(verdict: Verdict) -> Result<Account, (Reason, &'static str)> {
    match verdict {
        Verdict::Account(a) => Ok(a),
        Verdict::BadCredential => Err((Reason::BadCredential, "unknown account or wrong credential")),
        Verdict::Disabled => Err((Reason::AccountDisabled, "account disabled")),
    }
}

/// The AS engine.
pub struct AccountServer<A: Accounts> {
    cfg: AsConfig,
    accounts: A,
    rng: Rng,
    pending: Vec<Pending>,
    checking: Vec<ExpectVerdict>,
    checks: VecDeque<CredentialCheck>,
    next_check: u64,
    buckets: HashMap<IpAddr, Bucket>,
    next_query: u64,
    out: VecDeque<Transmit>,
    queries: VecDeque<DnsQuery>,
    events: VecDeque<AsEvent>,
    drops: DropCounters,
}

impl<A: Accounts> core::fmt::Debug for AccountServer<A> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AccountServer")
            .field("name", &self.cfg.name)
            .field("pending", &self.pending.len())
            .field("checking", &self.checking.len())
            .finish_non_exhaustive()
    }
}

impl<A: Accounts> AccountServer<A> {
    /// An AS over an account store.
    pub fn new(cfg: AsConfig, accounts: A, rng: Rng) -> Result<Self, ConfigError> {
        if cfg.key_lifetime < Duration::from_secs(60) {
            return Err(ConfigError::new("key_lifetime", "at least 60 seconds"));
        }
        if cfg.login_burst == 0 || cfg.login_interval.is_zero() || cfg.max_login_sources == 0 {
            return Err(ConfigError::new("login_burst", "the login rate limit must allow some logins"));
        }
        Ok(AccountServer {
            cfg,
            accounts,
            rng,
            pending: Vec::new(),
            checking: Vec::new(),
            checks: VecDeque::new(),
            next_check: 1,
            buckets: HashMap::new(),
            next_query: 1,
            out: VecDeque::new(),
            queries: VecDeque::new(),
            events: VecDeque::new(),
            drops: DropCounters::default(),
        })
    }

    /// The account store.
    pub fn accounts(&mut self) -> &mut A {
        &mut self.accounts
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<AsEvent> {
        self.events.pop_front()
    }

    /// The next password to check (with [`AsConfig::defer_password_checks`]).
    pub fn poll_credential_check(&mut self) -> Option<CredentialCheck> {
        self.checks.pop_front()
    }

    /// The verdict on a [`CredentialCheck`]; `None` if it could not be checked (the
    /// checker is overloaded): the node is told to retry later. A verdict for a login
    /// that is gone (the node hung up, the check timed out) is ignored.
    pub fn handle_credential_verdict(&mut self, now: Instant, id: u64, verdict: Option<Verdict>) {
        let Some(i) = self.checking.iter().position(|c| c.id == id) else {
            self.drops.count(DropReason::Stale);
            return;
        };
        let c = self.checking.swap_remove(i);
        let kind = CredentialKind::Password;
        let verdict = match verdict {
            Some(v) => v,
            None => {
                self.refuse(c.node, c.request_id, kind, Reason::Overloaded, "overloaded: retry later");
                return;
            }
        };
        match verdict_account(verdict) {
            Ok(account) => self.admit(now, c.node, c.request_id, kind, account, c.public_key),
            Err((reason, detail)) => {
                log::info!("login with {kind:?} from {} refused: {detail}", c.node);
                self.refuse(c.node, c.request_id, kind, reason, detail);
            }
        }
    }

    /// Logins in progress: password checks and key distributions.
    pub fn logins_in_progress(&self) -> usize {
        self.pending.len() + self.checking.len()
    }

    /// Takes one login from `ip`'s allowance; false if it has none left.
    fn take_login_token(&mut self, now: Instant, ip: IpAddr) -> bool {
        let (burst, interval) = (self.cfg.login_burst, self.cfg.login_interval);
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= self.cfg.max_login_sources {
            // Full buckets are as good as none: forget those first, else the stalest.
            self.buckets.retain(|_, b| {
                let earned = now.saturating_duration_since(b.refilled).as_millis() / interval.as_millis().max(1);
                u128::from(b.tokens) + earned < u128::from(burst)
            });
            if self.buckets.len() >= self.cfg.max_login_sources {
                if let Some(oldest) = self.buckets.iter().min_by_key(|(_, b)| b.refilled).map(|(ip, _)| *ip) {
                    self.buckets.remove(&oldest);
                }
            }
        }
        let b = self.buckets.entry(ip).or_insert(Bucket { tokens: burst, refilled: now });
        let step = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX).max(1);
        let earned = now.saturating_duration_since(b.refilled).as_millis() / u128::from(step);
        let earned = u32::try_from(earned).unwrap_or(u32::MAX);
        if earned > 0 {
            b.tokens = b.tokens.saturating_add(earned).min(burst);
            // Keep the fraction of a token already earned, unless the bucket is full.
            b.refilled = if b.tokens == burst { now } else { b.refilled + interval * earned };
        }
        if b.tokens == 0 {
            return false;
        }
        b.tokens -= 1;
        true
    }

    /// The attestation public key nodes verify peers with.
    pub fn attestation_public_key(&self) -> Option<PublicKey> {
        self.cfg.attestation_key.as_ref().map(KeyPair::public)
    }

    fn send_tls(&mut self, dst: SocketAddr, server: Option<Fqdn>, msg: &Message) {
        let via = Via::Stream { kind: StreamKind::Tls, server };
        self.out.push_back(Transmit { via, dst, payload: plain(Sender::As, msg) });
    }

    fn refuse(&mut self, node: SocketAddr, request_id: RequestId, kind: CredentialKind, reason: Reason, detail: &str) {
        let msg = Message::Refusal(Refusal::new(MsgType::LoginRequest, request_id, reason, detail));
        self.send_tls(node, None, &msg);
        self.events.push_back(AsEvent::Refused { credential: kind, reason });
    }

    /// Checks the credential (spec 4.1 step 1). Returns the account, or the refusal.
    fn check(
        &mut self,
        now: Instant,
        req: &LoginRequest,
        peer: Option<&PeerIdentity>,
    ) -> Result<Account, (Reason, &'static str)> {
        let verdict = match &req.credential {
            Credential::Password { email, password } => {
                self.accounts.password(email.as_str(), password.expose_secret())
            }
            Credential::DeviceCertificate => match peer {
                Some(id) if id.role == Role::Node => self.accounts.device(id),
                _ => return Err((Reason::BadCredential, "no device certificate was presented")),
            },
            Credential::OidcToken(token) => match self.accounts.id_token(token.expose_secret(), now.as_millis() / 1000)
            {
                Ok(verdict) => verdict,
                Err(e) => {
                    log::info!("ID token refused: {e}");
                    return Err((Reason::BadCredential, "ID token not accepted"));
                }
            },
        };
        verdict_account(verdict)
    }

    fn handle_login(
        &mut self,
        now: Instant,
        from: SocketAddr,
        peer: Option<&PeerIdentity>,
        req: LoginRequest,
    ) -> Received {
        let kind = req.credential.kind();
        // One login at a time per connection: a driver holds further frames back
        // (`stream_ready`); one that does not gets them refused here.
        if !self.stream_ready(StreamKind::Tls, from) {
            self.refuse(from, req.request_id, kind, Reason::Overloaded, "a login is already in progress");
            return self.drops.count(DropReason::Limit);
        }
        if !self.take_login_token(now, login_source(from)) {
            self.refuse(from, req.request_id, kind, Reason::Overloaded, "too many logins from this address");
            return self.drops.count(DropReason::Limit);
        }
        if self.logins_in_progress() >= self.cfg.max_pending {
            self.refuse(from, req.request_id, kind, Reason::Overloaded, "too many logins in progress");
            return self.drops.count(DropReason::Limit);
        }
        if let (true, Credential::Password { email, password }) = (self.cfg.defer_password_checks, &req.credential) {
            let id = self.next_check;
            self.next_check += 1;
            self.checks.push_back(CredentialCheck { id, email: email.as_str().to_owned(), password: password.clone() });
            self.checking.push(ExpectVerdict {
                id,
                node: from,
                request_id: req.request_id,
                public_key: req.public_key,
                started: now,
            });
            return Received::Handled;
        }
        let account = match self.check(now, &req, peer) {
            Ok(a) => a,
            Err((reason, detail)) => {
                log::info!("login with {kind:?} from {from} refused: {detail}");
                self.refuse(from, req.request_id, kind, reason, detail);
                return Received::Handled;
            }
        };
        // The key to attest: a device's certificate key, or the key the node sent (which
        // must then be the same if both exist).
        let cert_key = peer.and_then(|p| p.public_key);
        let public_key = match (cert_key, req.public_key, &req.credential) {
            (Some(c), Some(k), Credential::DeviceCertificate) if c != k => {
                self.refuse(
                    from,
                    req.request_id,
                    kind,
                    Reason::BadCredential,
                    "public key differs from the certificate's",
                );
                return Received::Handled;
            }
            (Some(c), _, Credential::DeviceCertificate) => Some(c),
            (_, k, _) => k,
        };
        self.admit(now, from, req.request_id, kind, account, public_key);
        Received::Handled
    }

    /// A node whose credential was good: make its key and send it to its DC.
    fn admit(
        &mut self,
        now: Instant,
        from: SocketAddr,
        request_id: RequestId,
        kind: CredentialKind,
        account: Account,
        public_key: Option<PublicKey>,
    ) {
        let attestation = match (&self.cfg.attestation_key, public_key) {
            (Some(as_key), Some(pk)) => Some(Attestation::issue(as_key, account.fqdn.clone(), pk)),
            _ => None,
        };
        let key = KNtmDc::generate(&mut *self.rng);
        let key_id = KeyId(self.rng.next_u32());
        let fqdn = account.fqdn;
        log::info!("{fqdn} authenticated with {kind:?}; distributing key {key_id}");
        self.events.push_back(AsEvent::LoggedIn { fqdn: fqdn.clone(), credential: kind });
        let static_dc = self.cfg.static_dcs.iter().find(|(z, _)| fqdn.is_within(z)).map(|(_, d)| d.clone());
        let step = match static_dc {
            Some(dc) => self.distribute(now, dc, &fqdn, key_id, &key, &attestation),
            None => {
                let query = self.next_query;
                self.next_query += 1;
                self.queries.push_back(DnsQuery { id: query, name: fqdn.clone(), addresses: false });
                Step::ExpectDcLocation { query }
            }
        };
        self.pending.push(Pending { node: from, request_id, fqdn, key_id, key, attestation, step, started: now });
    }

    /// Sends the Key Distribution to the node's DC (spec 4.1 step 2).
    fn distribute(
        &mut self,
        now: Instant,
        dc: DcLocation,
        fqdn: &Fqdn,
        key_id: KeyId,
        key: &KNtmDc,
        attestation: &Option<Attestation>,
    ) -> Step {
        let kd = Message::KeyDistribution(KeyDistribution {
            request_id: RequestId(key_id.0),
            fqdn: fqdn.clone(),
            key_id,
            k_ntmdc: KeyGrant { key: key.clone(), lifetime: Lifetime::from_duration(self.cfg.key_lifetime) },
            attestation: attestation.clone(),
        });
        if let Some(&addr) = dc.addrs.first() {
            self.send_tls(addr, Some(dc.name.clone()), &kd);
        }
        Step::ExpectNtmAck { dc, deadline: now + self.cfg.dc_timeout }
    }

    fn handle_ntm_ack(&mut self, peer: Option<&PeerIdentity>, ack: crate::wire::login::NtmAck) -> Received {
        let Some(i) = self.pending.iter().position(|p| {
            p.key_id == ack.key_id
                && matches!(&p.step, Step::ExpectNtmAck { dc, .. } if Some(&dc.name) == peer.map(|x| &x.name))
        }) else {
            return self.drops.count(DropReason::Stale);
        };
        let p = self.pending.swap_remove(i);
        // Spec 4.1 step 4: only now, with the DC holding the key, does the node get it.
        let resp = Message::LoginResponse(LoginResponse {
            request_id: p.request_id,
            fqdn: p.fqdn,
            key_id: p.key_id,
            k_ntmdc: KeyGrant { key: p.key, lifetime: Lifetime::from_duration(self.cfg.key_lifetime) },
            attestation: p.attestation,
            as_public_key: self.attestation_public_key(),
        });
        self.send_tls(p.node, None, &resp);
        Received::Handled
    }

    fn fail_pending(&mut self, i: usize, detail: &str) {
        let p = self.pending.swap_remove(i);
        log::warn!("login of {} failed: {detail}", p.fqdn);
        let msg = Message::Refusal(Refusal::new(MsgType::LoginRequest, p.request_id, Reason::PeerUnreachable, detail));
        self.send_tls(p.node, None, &msg);
    }
}

impl<A: Accounts> Engine for AccountServer<A> {
    fn handle_datagram(&mut self, _now: Instant, _from: SocketAddr, _buf: &mut [u8]) -> Received {
        // The AS speaks only TLS.
        self.drops.count(DropReason::Unexpected)
    }

    fn handle_stream(
        &mut self,
        now: Instant,
        kind: StreamKind,
        from: SocketAddr,
        peer: Option<&PeerIdentity>,
        frame: &[u8],
    ) -> Received {
        if kind != StreamKind::Tls {
            return self.drops.count(DropReason::Unexpected);
        }
        match parse_plain(frame) {
            Ok((_, Message::LoginRequest(req))) => self.handle_login(now, from, peer, req),
            Ok((_, Message::NtmAck(ack))) if peer.is_some_and(|p| p.role == Role::Dc) => self.handle_ntm_ack(peer, ack),
            Ok((_, Message::Refusal(r))) if peer.is_some_and(|p| p.role == Role::Dc) => {
                // Only the DC the key went to may refuse it.
                let from = peer.map(|p| &p.name);
                let found = self.pending.iter().position(|p| {
                    p.key_id.0 == r.request_id.0
                        && matches!(&p.step, Step::ExpectNtmAck { dc, .. } if Some(&dc.name) == from)
                });
                match found {
                    Some(i) => {
                        self.fail_pending(i, "the DC refused the key");
                        Received::Handled
                    }
                    None => self.drops.count(DropReason::Stale),
                }
            }
            Ok(_) => self.drops.count(DropReason::Unexpected),
            Err(e) => self.drops.count(DropReason::from(e)),
        }
    }

    fn handle_stream_closed(&mut self, _now: Instant, _kind: StreamKind, peer: SocketAddr) {
        // A node that hung up no longer waits for its response; a DC that hung up before
        // its ACK fails the login (on the timeout).
        self.pending.retain(|p| p.node != peer);
        self.checking.retain(|c| c.node != peer);
    }

    fn handle_dns(&mut self, now: Instant, id: u64, answer: DnsAnswer) {
        let Some(i) =
            self.pending.iter().position(|p| matches!(p.step, Step::ExpectDcLocation { query } if query == id))
        else {
            return;
        };
        match answer {
            DnsAnswer::Dc(dc) if !dc.addrs.is_empty() => {
                let Some(p) = self.pending.get(i) else { return };
                let (fqdn, key_id, key, att) = (p.fqdn.clone(), p.key_id, p.key.clone(), p.attestation.clone());
                let step = self.distribute(now, dc, &fqdn, key_id, &key, &att);
                if let Some(p) = self.pending.get_mut(i) {
                    p.step = step;
                }
            }
            _ => self.fail_pending(i, "no DC serves the node's zone"),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        let late: Vec<usize> = self
            .pending
            .iter()
            .enumerate()
            .filter(|(_, p)| match &p.step {
                Step::ExpectNtmAck { deadline, .. } => now >= *deadline,
                Step::ExpectDcLocation { .. } => now >= p.started + self.cfg.dc_timeout,
            })
            .map(|(i, _)| i)
            .collect();
        for i in late.into_iter().rev() {
            let detail = match self.pending.get(i).map(|p| &p.step) {
                Some(Step::ExpectDcLocation { .. }) => "the node's DC could not be located in time",
                _ => "the DC did not acknowledge the key",
            };
            self.fail_pending(i, detail);
        }
        // A verdict that never comes (a stuck checker) must not hold the node forever.
        let timeout = self.cfg.dc_timeout;
        let (late, on_time): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.checking).into_iter().partition(|c| now >= c.started + timeout);
        self.checking = on_time;
        for c in late {
            self.refuse(c.node, c.request_id, CredentialKind::Password, Reason::Overloaded, "overloaded: retry later");
        }
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    fn poll_dns(&mut self) -> Option<DnsQuery> {
        self.queries.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.pending
            .iter()
            .map(|p| match &p.step {
                Step::ExpectNtmAck { deadline, .. } => *deadline,
                Step::ExpectDcLocation { .. } => p.started + self.cfg.dc_timeout,
            })
            .chain(self.checking.iter().map(|c| c.started + self.cfg.dc_timeout))
            .min()
    }

    fn stream_ready(&self, _kind: StreamKind, peer: SocketAddr) -> bool {
        !self.checking.iter().any(|c| c.node == peer) && !self.pending.iter().any(|p| p.node == peer)
    }

    fn drops(&self) -> &DropCounters {
        &self.drops
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    /// Every password is "right" for owner@a.example, whose node is n.zone.example.
    struct Fixed;

    impl Accounts for Fixed {
        fn password(&mut self, email: &str, password: &[u8]) -> Verdict {
            if email == "owner@a.example" && password == b"right" {
                Verdict::Account(Account { fqdn: Fqdn::new("n.zone.example").unwrap() })
            } else {
                Verdict::BadCredential
            }
        }
        fn device(&mut self, _identity: &PeerIdentity) -> Verdict {
            Verdict::BadCredential
        }
        fn id_token(&mut self, _token: &[u8], _now_unix: u64) -> Result<Verdict, String> {
            Ok(Verdict::BadCredential)
        }
    }

    fn server(defer: bool) -> AccountServer<Fixed> {
        let mut cfg = AsConfig::new(Fqdn::new("as.example").unwrap());
        cfg.defer_password_checks = defer;
        let dc =
            DcLocation { name: Fqdn::new("dc.zone.example").unwrap(), addrs: vec!["192.0.2.21:4460".parse().unwrap()] };
        cfg.static_dcs = vec![(Fqdn::new("zone.example").unwrap(), dc)];
        AccountServer::new(cfg, Fixed, Box::new(rand_chacha::ChaCha20Rng::seed_from_u64(7))).unwrap()
    }

    fn login(request: u32, password: &[u8]) -> Vec<u8> {
        let req = LoginRequest {
            request_id: RequestId(request),
            credential: Credential::Password {
                email: crate::wire::Text::new("owner@a.example").unwrap(),
                password: Password::new(password).unwrap(),
            },
            public_key: None,
        };
        plain(Sender::Node, &Message::LoginRequest(req))
    }

    /// What went out: (destination, message).
    fn sent(s: &mut AccountServer<Fixed>) -> Vec<(SocketAddr, Message)> {
        std::iter::from_fn(|| s.poll_transmit()).map(|t| (t.dst, parse_plain(&t.payload).unwrap().1)).collect()
    }

    fn refused(out: &[(SocketAddr, Message)], to: SocketAddr) -> Option<Reason> {
        out.iter().find_map(|(d, m)| match m {
            Message::Refusal(r) if *d == to => Some(r.reason),
            _ => None,
        })
    }

    const T0: Instant = Instant::from_millis(1_700_000_000_000);

    #[test]
    fn a_deferred_password_check_holds_the_connection_until_its_verdict() {
        let mut s = server(true);
        let node: SocketAddr = "198.51.100.2:40000".parse().unwrap();
        assert_eq!(s.handle_stream(T0, StreamKind::Tls, node, None, &login(1, b"right")), Received::Handled);
        assert!(sent(&mut s).is_empty(), "nothing is decided before the verdict");
        let check = s.poll_credential_check().expect("a check is emitted");
        assert_eq!(check.email, "owner@a.example");
        assert_eq!(check.password.expose_secret(), b"right");
        assert!(!s.stream_ready(StreamKind::Tls, node), "one login at a time per connection");
        assert!(s.stream_ready(StreamKind::Tls, "198.51.100.2:40001".parse().unwrap()));
        s.handle_credential_verdict(T0, check.id, Some(Fixed.password(&check.email, b"right")));
        let out = sent(&mut s);
        assert!(matches!(out.as_slice(), [(_, Message::KeyDistribution(_))]), "the key goes to the DC: {out:?}");
        // Still busy until the Login Response; a wrong password frees the connection.
        assert!(!s.stream_ready(StreamKind::Tls, node));
        let other: SocketAddr = "198.51.100.3:40000".parse().unwrap();
        s.handle_stream(T0, StreamKind::Tls, other, None, &login(2, b"wrong"));
        let check = s.poll_credential_check().unwrap();
        s.handle_credential_verdict(T0, check.id, Some(Fixed.password(&check.email, b"wrong")));
        assert_eq!(refused(&sent(&mut s), other), Some(Reason::BadCredential));
        assert!(s.stream_ready(StreamKind::Tls, other));
    }

    #[test]
    fn an_overloaded_or_stuck_checker_refuses_with_overloaded() {
        let mut s = server(true);
        let (a, b): (SocketAddr, SocketAddr) = ("198.51.100.2:1".parse().unwrap(), "198.51.100.2:2".parse().unwrap());
        s.handle_stream(T0, StreamKind::Tls, a, None, &login(1, b"right"));
        s.handle_stream(T0, StreamKind::Tls, b, None, &login(2, b"right"));
        let first = s.poll_credential_check().unwrap();
        s.handle_credential_verdict(T0, first.id, None);
        assert_eq!(refused(&sent(&mut s), a), Some(Reason::Overloaded));
        // The other verdict never comes: the login is refused at the deadline.
        let deadline = s.poll_timeout().unwrap();
        s.handle_timeout(deadline);
        assert_eq!(refused(&sent(&mut s), b), Some(Reason::Overloaded));
        assert_eq!(s.logins_in_progress(), 0);
    }

    #[test]
    fn each_source_address_has_a_login_allowance() {
        let mut s = server(false);
        let from = |ip: &str, port: u16| SocketAddr::new(ip.parse().unwrap(), port);
        for port in 0..10 {
            s.handle_stream(T0, StreamKind::Tls, from("198.51.100.2", port), None, &login(1, b"wrong"));
        }
        let out = sent(&mut s);
        assert_eq!(
            out.iter().filter(|(_, m)| matches!(m, Message::Refusal(r) if r.reason == Reason::BadCredential)).count(),
            10
        );
        // The eleventh is refused before any password check, from any port of the address.
        s.handle_stream(T0, StreamKind::Tls, from("198.51.100.2", 99), None, &login(1, b"right"));
        assert_eq!(refused(&sent(&mut s), from("198.51.100.2", 99)), Some(Reason::Overloaded));
        assert_eq!(s.drops().get(DropReason::Limit), 1);
        // Another address is not affected; the first earns one login back per interval.
        s.handle_stream(T0, StreamKind::Tls, from("203.0.113.2", 1), None, &login(1, b"right"));
        assert!(matches!(sent(&mut s).as_slice(), [(_, Message::KeyDistribution(_))]));
        let later = T0 + Duration::from_secs(2);
        s.handle_stream(later, StreamKind::Tls, from("198.51.100.2", 100), None, &login(1, b"wrong"));
        assert_eq!(refused(&sent(&mut s), from("198.51.100.2", 100)), Some(Reason::BadCredential));
        s.handle_stream(later, StreamKind::Tls, from("198.51.100.2", 101), None, &login(1, b"wrong"));
        assert_eq!(refused(&sent(&mut s), from("198.51.100.2", 101)), Some(Reason::Overloaded));
        // IPv6 addresses count by their /64.
        for i in 0..10 {
            s.handle_stream(T0, StreamKind::Tls, from(&format!("2001:db8:a::{i}"), 1), None, &login(1, b"wrong"));
        }
        s.handle_stream(T0, StreamKind::Tls, from("2001:db8:a::ffff:1", 1), None, &login(1, b"wrong"));
        assert_eq!(refused(&sent(&mut s), from("2001:db8:a::ffff:1", 1)), Some(Reason::Overloaded));
        s.handle_stream(T0, StreamKind::Tls, from("2001:db8:b::1", 1), None, &login(1, b"wrong"));
        assert_eq!(refused(&sent(&mut s), from("2001:db8:b::1", 1)), Some(Reason::BadCredential));
    }
}
