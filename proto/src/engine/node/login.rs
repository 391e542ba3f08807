//! Login (spec 4.1): Login Request over TLS to the AS, then the NS record of the node's
//! own name to find its DC. Re-login before K_ntmdc expires, and when the DC says it no
//! longer knows the key.
//!
//! The AS may have addresses of both families. An attempt goes to one of a family the
//! node has an address of (an IPv6-only node does not wait on an IPv4 AS address); when
//! it fails (the connection closes or nothing answers) the next one is tried at once, and
//! when every one of the round failed the node says [`NodeEvent::AccountServerUnreachable`]
//! (the driver may resolve the AS's name again) and waits for the backoff.

use super::link::Link;
use super::{DcSession, Node, NodeEvent, ResolveError};
use crate::crypto::{parse_plain, Channel};
use crate::engine::{DcLocation, DnsAnswer, DropReason, Received, StreamKind, Via};
use crate::time::{Duration, Instant};
use crate::wire::login::{Credential, LoginRequest, LoginResponse};
use crate::wire::refusal::{Reason, Refusal};
use crate::wire::{Message, MsgType, RequestId, Sender};
use core::net::SocketAddr;

/// How long the AS may take to answer over TLS.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the driver's DNS lookup of our DC may take.
const DNS_TIMEOUT: Duration = Duration::from_secs(15);
/// At most one re-login per this interval on the DC's unauthenticated hint.
pub(super) const RELOGIN_HINT_INTERVAL: Duration = Duration::from_secs(10);
/// Longest wait between failed login attempts.
const LOGIN_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Where the login sequence stands.
pub(super) enum Login {
    /// Not started.
    Idle,
    /// Send a Login Request at `at`; `failures` attempts failed before.
    Start { at: Instant, failures: u32 },
    /// Waiting for the AS.
    ExpectLoginResponse { request_id: RequestId, deadline: Instant, failures: u32 },
    /// Logged in at the AS; waiting for the DNS answer naming our DC.
    ExpectDcLocation { query: u64, response: Box<LoginResponse>, failures: u32, deadline: Instant },
    /// Logged in; log in again at `relogin_at`.
    Done { relogin_at: Instant },
    /// The AS refused the credential itself (a refusal that a retry cannot change);
    /// nothing more until `start` or a new credential.
    Failed,
}

impl Login {
    pub(super) fn deadline(&self) -> Option<Instant> {
        match self {
            Login::Start { at, .. } => Some(*at),
            Login::ExpectLoginResponse { deadline, .. } => Some(*deadline),
            Login::Done { relogin_at } => Some(*relogin_at),
            Login::ExpectDcLocation { deadline, .. } => Some(*deadline),
            Login::Idle | Login::Failed => None,
        }
    }
}

/// The wait before login attempt `failures + 1`: 1, 2, 4 ... 60 s, each drawn from the
/// upper half of that span so that boxes refused together (an AS that was down, an
/// account enabled again) do not all come back in the same second.
pub(super) fn jittered(rng: &mut super::Rng, failures: u32, max: Duration) -> Duration {
    let span = Duration::from_secs(1u64 << failures.min(16)).min(max);
    let half = u64::try_from(span.as_millis()).unwrap_or(u64::MAX) / 2;
    let extra = u64::from(rng.next_u32()) % (half + 1);
    Duration::from_millis(half + extra)
}

/// Whether a refusal of our Login Request can change without us changing anything. The
/// AS says BadCredential when a password or device is wrong or unknown, and Unauthorized
/// when it is not allowed at all: only a new credential (a restart with a new
/// configuration) helps. An account that is disabled may be enabled again, an AS or DC
/// that is overloaded or unreachable comes back: those are retried. So is an ID token the
/// AS did not accept: its validity is judged by clocks (the AS's may not be set yet, the
/// token may be issued "in the future" for it), and a helper replaces the token file.
fn refusal_is_final(reason: Reason, credential: &Credential) -> bool {
    match reason {
        Reason::BadCredential => !matches!(credential, Credential::OidcToken(_)),
        Reason::Unauthorized => true,
        _ => false,
    }
}

impl Node {
    pub(super) fn drive_login(&mut self, now: Instant) {
        let failures = match self.login {
            Login::Start { at, failures } if now >= at => failures,
            Login::ExpectLoginResponse { deadline, failures, .. } if now >= deadline => {
                log::warn!("no Login Response from the AS within {LOGIN_TIMEOUT:?}");
                self.as_attempt_failed(now, failures);
                return;
            }
            Login::ExpectDcLocation { deadline, failures, .. } if now >= deadline => {
                log::warn!("no DNS answer locating our DC within {DNS_TIMEOUT:?}");
                self.login_failed_retry(now, failures);
                return;
            }
            Login::Done { relogin_at } if now >= relogin_at => 0,
            _ => return,
        };
        let candidates = self.as_candidates();
        let Some(dst) = self.as_tried.checked_rem(candidates.len()).and_then(|i| candidates.get(i)).copied() else {
            log::warn!("no address of the AS {} known yet", self.cfg.account_server_name);
            self.emit(NodeEvent::AccountServerUnreachable);
            self.login_failed_retry(now, failures);
            return;
        };
        self.as_current = Some(dst);
        let request_id = self.ids.next();
        let public_key = self.cfg.key_pair.as_ref().map(|k| k.public());
        let req = LoginRequest { request_id, credential: self.cfg.credential.clone(), public_key };
        let bytes = crate::crypto::plain(Sender::Node, &Message::LoginRequest(req));
        let via = Via::Stream { kind: StreamKind::Tls, server: Some(self.cfg.account_server_name.clone()) };
        self.transmit(via, dst, bytes);
        self.login = Login::ExpectLoginResponse { request_id, deadline: now + LOGIN_TIMEOUT, failures };
    }

    /// The AS addresses worth trying: those of a family the node has an address of, or
    /// all of them when it has none of either (no network yet: each attempt fails fast).
    fn as_candidates(&self) -> Vec<SocketAddr> {
        let has = |v4: bool| self.cfg.local_addrs.iter().any(|a| a.is_ipv4() == v4 && !a.ip().is_unspecified());
        let usable: Vec<SocketAddr> = self.cfg.account_servers.iter().filter(|a| has(a.is_ipv4())).copied().collect();
        if usable.is_empty() {
            self.cfg.account_servers.clone()
        } else {
            usable
        }
    }

    /// Replaces the AS's addresses (the driver resolved its name again). A changed list
    /// starts a new round; a login waiting for its backoff tries the new addresses now.
    pub fn set_account_servers(&mut self, now: Instant, addrs: Vec<SocketAddr>) {
        if addrs == self.cfg.account_servers {
            return;
        }
        log::info!("AS {} at {addrs:?}", self.cfg.account_server_name);
        self.cfg.account_servers = addrs;
        self.as_tried = 0;
        if let Login::Start { at, .. } = &mut self.login {
            *at = (*at).min(now);
        }
    }

    /// Replaces the static DC's addresses (the driver resolved its name again); used from
    /// the next login on.
    pub fn set_static_dc(&mut self, dc: Option<DcLocation>) {
        self.cfg.static_dc = dc;
    }

    /// The node's addresses changed: the AS addresses usable now may differ, so a login
    /// waiting for its backoff starts a new round at once.
    pub(super) fn login_network_changed(&mut self, now: Instant) {
        self.as_tried = 0;
        if let Login::Start { at, .. } = &mut self.login {
            *at = (*at).min(now);
        }
    }

    /// The attempt at the AS address `as_current` failed: try the next address at once,
    /// or back off when this round tried them all.
    fn as_attempt_failed(&mut self, now: Instant, failures: u32) {
        self.as_current = None;
        self.as_tried = self.as_tried.saturating_add(1);
        if self.as_tried < self.as_candidates().len() {
            log::info!("trying the AS's next address");
            self.login = Login::Start { at: now, failures };
            self.drive_login(now);
        } else {
            self.as_tried = 0;
            self.emit(NodeEvent::AccountServerUnreachable);
            self.login_failed_retry(now, failures);
        }
    }

    fn login_failed_retry(&mut self, now: Instant, failures: u32) {
        let wait = jittered(&mut self.rng, failures, LOGIN_BACKOFF_MAX);
        log::info!("next login attempt in {} ms", wait.as_millis());
        self.login = Login::Start { at: now + wait, failures: failures + 1 };
    }

    pub(super) fn handle_as_closed(&mut self, now: Instant) {
        if let Login::ExpectLoginResponse { failures, .. } = self.login {
            log::warn!("TLS connection to the AS closed before the Login Response");
            self.as_attempt_failed(now, failures);
        }
    }

    pub(super) fn handle_as_frame(&mut self, now: Instant, frame: &[u8]) -> Received {
        let Login::ExpectLoginResponse { request_id, failures, .. } = self.login else {
            return self.drops.count(DropReason::Stale);
        };
        let msg = match parse_plain(frame) {
            Ok((_, m)) => m,
            Err(e) => return self.drops.count(DropReason::from(e)),
        };
        if matches!(&msg, Message::LoginResponse(r) if r.request_id == request_id)
            || matches!(&msg, Message::Refusal(r) if r.request_id == request_id)
        {
            // The AS answered: a later round starts again from the first address.
            self.as_tried = 0;
        }
        match msg {
            Message::LoginResponse(r) if r.request_id == request_id => {
                if self.cfg.key_pair.is_some() && (r.attestation.is_none() || r.as_public_key.is_none()) {
                    log::warn!("the AS did not attest our public key; public-key mode needs it");
                    self.login_failed_retry(now, failures);
                    return Received::Handled;
                }
                let same_dc = self.session.as_ref().filter(|s| s.fqdn == r.fqdn).map(|s| s.dc.clone());
                match (same_dc, self.cfg.static_dc.clone()) {
                    (None, Some(dc)) if dc.addrs.is_empty() => {
                        // A static DC given by a name the driver has not resolved yet.
                        log::warn!("no address of our DC {} known yet", dc.name);
                        self.login_failed_retry(now, failures);
                    }
                    (Some(dc), _) | (None, Some(dc)) => self.complete_login(now, r, dc),
                    (None, None) => {
                        let query = self.query(r.fqdn.clone());
                        self.login = Login::ExpectDcLocation {
                            query,
                            response: Box::new(r),
                            failures,
                            deadline: now + DNS_TIMEOUT,
                        };
                    }
                }
                Received::Handled
            }
            Message::Refusal(r) if r.request_id == request_id => {
                if refusal_is_final(r.reason, &self.cfg.credential) {
                    log::error!(
                        "the AS refused our credential: {:?} ({}); not trying again: fix the credential and restart",
                        r.reason,
                        r.detail.as_str()
                    );
                    self.login = Login::Failed;
                    self.emit(NodeEvent::LoginFailed { reason: r.reason });
                } else {
                    log::warn!("login refused for now: {:?} ({}); trying again later", r.reason, r.detail.as_str());
                    self.emit(NodeEvent::LoginRefused { reason: r.reason });
                    self.login_failed_retry(now, failures);
                }
                Received::Handled
            }
            _ => self.drops.count(DropReason::Unexpected),
        }
    }

    pub(super) fn handle_dc_location(&mut self, now: Instant, id: u64, answer: DnsAnswer) {
        let Login::ExpectDcLocation { query, .. } = &self.login else { return };
        if *query != id {
            return;
        }
        let Login::ExpectDcLocation { response, failures, .. } = core::mem::replace(&mut self.login, Login::Idle)
        else {
            return;
        };
        match answer {
            DnsAnswer::Dc(dc) if !dc.addrs.is_empty() => self.complete_login(now, *response, dc),
            other => {
                log::warn!("cannot locate the DC of {}: {other:?}", response.fqdn);
                self.login_failed_retry(now, failures);
            }
        }
    }

    fn complete_login(&mut self, now: Instant, r: LoginResponse, dc: DcLocation) {
        let lifetime = r.k_ntmdc.lifetime.duration();
        let expires = now + lifetime;
        let channel = match Channel::new(r.k_ntmdc.key, r.key_id, Sender::Node, expires) {
            Ok(c) => c,
            Err(e) => {
                log::error!("unusable K_ntmdc: {e}");
                return;
            }
        };
        // Log in again ahead of expiry; for very short lifetimes, at half-life.
        let margin = self.cfg.relogin_before_expiry.min(lifetime / 2);
        self.login = Login::Done { relogin_at: expires - margin };
        let relogin = self.session.is_some();
        log::info!("logged in as {} (key {}), DC {}", r.fqdn, r.key_id, dc.name);
        self.emit(NodeEvent::LoggedIn { fqdn: r.fqdn.clone() });
        self.session =
            Some(DcSession { fqdn: r.fqdn, dc, channel, attestation: r.attestation, as_key: r.as_public_key });
        if relogin && !self.links.is_empty() {
            // Same DC, new key id: register again so the DC binds us to the new key.
            self.register_all(now);
        } else {
            self.links = Link::for_addrs(&self.cfg.local_addrs, &self.session_dc_addrs());
            self.register_all(now);
        }
    }

    pub(super) fn session_dc_addrs(&self) -> Vec<core::net::SocketAddr> {
        self.session.as_ref().map(|s| s.dc.addrs.clone()).unwrap_or_default()
    }

    /// Log in again at once (the DC lost or expired our key).
    pub(super) fn relogin_now(&mut self, now: Instant) {
        if let Login::Done { .. } = self.login {
            log::info!("the DC no longer accepts our key; logging in again");
            self.login = Login::Start { at: now, failures: 0 };
            self.drive_login(now);
        }
    }

    /// A plain Refusal: the DC could not seal it, because it does not know our key id (it
    /// restarted without state, or the key expired there). The DC names the key id in the
    /// header; the refusal is unauthenticated, so it counts only if that is our current
    /// key, and at most triggers a re-login (which the AS authenticates), at most once per
    /// [`RELOGIN_HINT_INTERVAL`].
    pub(super) fn handle_plain_refusal(&mut self, now: Instant, from: SocketAddr, buf: &[u8]) -> Received {
        let (header, r) = match parse_plain(buf) {
            Ok((h, Message::Refusal(r))) => (h, r),
            Ok(_) => return self.drops.count(DropReason::Unexpected),
            Err(e) => return self.drops.count(DropReason::from(e)),
        };
        if header.sender == Sender::Rs && r.reason == Reason::UnknownKey {
            return self.handle_relay_lost_session(now, from, crate::wire::SessionId(header.key_id.0));
        }
        let ours = self.session.as_ref().is_some_and(|s| s.channel.id() == header.key_id);
        if !ours || !matches!(r.reason, Reason::UnknownKey | Reason::KeyExpired) {
            return self.drops.count(DropReason::Unauthorized);
        }
        if !matches!(self.login, Login::Done { .. }) {
            return Received::Handled; // a login is already under way
        }
        if self.last_relogin_hint.is_some_and(|t| now < t + RELOGIN_HINT_INTERVAL) {
            return self.drops.count(DropReason::Limit);
        }
        self.last_relogin_hint = Some(now);
        self.relogin_now(now);
        Received::Handled
    }

    /// A sealed Refusal from the DC.
    pub(super) fn handle_dc_refusal(&mut self, now: Instant, r: Refusal) -> Received {
        log::info!("DC refused {:?}: {:?} ({})", r.in_reply_to, r.reason, r.detail.as_str());
        match (r.in_reply_to, r.reason) {
            (_, Reason::UnknownKey | Reason::KeyExpired) => self.relogin_now(now),
            (_, Reason::Displaced) => {
                // While we log in ourselves, the new login the DC saw is ours.
                if matches!(self.login, Login::Done { .. }) {
                    self.handle_displaced(now);
                }
            }
            (MsgType::RegistrationRequest, reason) => {
                self.emit(NodeEvent::RegistrationRefused { reason, detail: r.detail.as_str().to_string() });
            }
            (MsgType::DirectionRequest, reason) => {
                let error = if reason == Reason::NotNtm { ResolveError::NotNtm } else { ResolveError::Refused(reason) };
                self.fail_direction(r.request_id, error);
            }
            _ => {}
        }
        Received::Handled
    }
}
