//! The Account Server's protocol logic (spec 4.1, Fig. 2), without its TLS transport.
//!
//! A Login Request arrives over TLS with one of three credentials, all handled by the
//! same sequence: a password (checked by the [`Accounts`] store the daemon provides, which
//! hashes passwords), the device certificate TLS verified (the driver passes its identity),
//! or an OpenID Connect ID token (verified here against the configured providers). A
//! wrong credential gets a refusal and never a key. For a good one the AS makes K_ntmdc,
//! locates the node's DC (the NS record of the node's zone), hands the key to the DC in a
//! Key Distribution over mutual TLS, and only after the DC's NTM ACK answers the node with
//! the Login Response. In public-key mode it also signs an [`Attestation`] of the node's
//! key, which is what keeps DCs from substituting keys.
//!
//! Time: the driver must pass UNIX-epoch instants (milliseconds), because ID tokens carry
//! UNIX expiry times.

use super::oidc::{verify_id_token, IdClaims, OidcProvider};
use super::{
    ConfigError, DcLocation, DnsAnswer, DnsQuery, Drop, DropCounters, Engine, PeerIdentity, Received, Rng, Role,
    StreamKind, Transmit, Via,
};
use crate::crypto::pk::{Attestation, KeyPair, PublicKey};
use crate::crypto::{parse_plain, plain};
use crate::keys::{KNtmDc, KeyGrant};
use crate::time::{Duration, Instant};
use crate::wire::login::{Credential, CredentialKind, KeyDistribution, LoginRequest, LoginResponse};
use crate::wire::refusal::{Reason, Refusal};
use crate::wire::{Fqdn, KeyId, Lifetime, Message, MsgType, RequestId, Sender};
use core::net::SocketAddr;
use std::collections::VecDeque;

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
    /// Finds the account bound to a verified ID token's issuer and subject (or e-mail).
    fn oidc(&mut self, claims: &IdClaims) -> Verdict;
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
    /// Accepted OpenID Connect providers.
    pub oidc_providers: Vec<OidcProvider>,
    /// Clock skew allowed for ID token times.
    pub oidc_leeway: Duration,
    /// DCs known without DNS: zone -> DC.
    pub static_dcs: Vec<(Fqdn, DcLocation)>,
    /// How long the DNS lookup of the node's DC, and then the DC's acknowledgement of the
    /// Key Distribution, may each take. Both together stay under the node's 30 s wait
    /// for its Login Response, so a slow DC never leads to a second key.
    pub dc_timeout: Duration,
    /// Most logins in progress.
    pub max_pending: usize,
}

/// How long a K_ntmdc lasts unless configured otherwise: a day. A node logs in again shortly
/// before its key expires, and a login with registration costs a box behind NAT about 4 KB,
/// as much as seventeen hourly NS keepalives: with a day, a box kept by the NS stays under
/// 10 KB of traffic a day (docs/benchmarks.md). The key protects a few control messages an
/// hour under a counter nonce, far from any wear-out of AES-128.
pub const DEFAULT_KEY_LIFETIME: Duration = Duration::from_secs(24 * 3600);

impl AsConfig {
    /// A configuration with defaults: keys for [`DEFAULT_KEY_LIFETIME`], 60 s leeway.
    pub fn new(name: Fqdn) -> Self {
        AsConfig {
            name,
            key_lifetime: DEFAULT_KEY_LIFETIME,
            attestation_key: None,
            oidc_providers: Vec::new(),
            oidc_leeway: Duration::from_secs(60),
            static_dcs: Vec::new(),
            dc_timeout: Duration::from_secs(10),
            max_pending: 1024,
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

/// The AS engine.
pub struct AccountServer<A: Accounts> {
    cfg: AsConfig,
    accounts: A,
    rng: Rng,
    pending: Vec<Pending>,
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
            .finish_non_exhaustive()
    }
}

impl<A: Accounts> AccountServer<A> {
    /// An AS over an account store.
    pub fn new(cfg: AsConfig, accounts: A, rng: Rng) -> Result<Self, ConfigError> {
        if cfg.key_lifetime < Duration::from_secs(60) {
            return Err(ConfigError::new("key_lifetime", "at least 60 seconds"));
        }
        Ok(AccountServer {
            cfg,
            accounts,
            rng,
            pending: Vec::new(),
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
            Credential::OidcToken(token) => {
                let now_unix = now.as_millis() / 1000;
                match verify_id_token(
                    token.expose_secret(),
                    &self.cfg.oidc_providers,
                    now_unix,
                    self.cfg.oidc_leeway.as_secs(),
                ) {
                    Ok(claims) => self.accounts.oidc(&claims),
                    Err(e) => {
                        log::info!("ID token refused: {e}");
                        return Err((Reason::BadCredential, "ID token not accepted"));
                    }
                }
            }
        };
        match verdict {
            Verdict::Account(a) => Ok(a),
            Verdict::BadCredential => Err((Reason::BadCredential, "unknown account or wrong credential")),
            Verdict::Disabled => Err((Reason::AccountDisabled, "account disabled")),
        }
    }

    fn handle_login(
        &mut self,
        now: Instant,
        from: SocketAddr,
        peer: Option<&PeerIdentity>,
        req: LoginRequest,
    ) -> Received {
        let kind = req.credential.kind();
        if self.pending.len() >= self.cfg.max_pending {
            self.refuse(from, req.request_id, kind, Reason::Overloaded, "too many logins in progress");
            return self.drops.count(Drop::Limit);
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
                self.queries.push_back(DnsQuery { id: query, name: fqdn.clone() });
                Step::ExpectDcLocation { query }
            }
        };
        self.pending.push(Pending {
            node: from,
            request_id: req.request_id,
            fqdn,
            key_id,
            key,
            attestation,
            step,
            started: now,
        });
        Received::Handled
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
            return self.drops.count(Drop::Stale);
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
        self.drops.count(Drop::Unexpected)
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
            return self.drops.count(Drop::Unexpected);
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
                    None => self.drops.count(Drop::Stale),
                }
            }
            Ok(_) => self.drops.count(Drop::Unexpected),
            Err(e) => self.drops.count(Drop::from(e)),
        }
    }

    fn handle_stream_closed(&mut self, _now: Instant, _kind: StreamKind, peer: SocketAddr) {
        // A node that hung up no longer waits for its response; a DC that hung up before
        // its ACK fails the login (on the timeout).
        self.pending.retain(|p| p.node != peer);
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
            .min()
    }

    fn drops(&self) -> &DropCounters {
        &self.drops
    }
}
