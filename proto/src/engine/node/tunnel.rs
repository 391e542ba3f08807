//! Name resolution, tunnels and the data plane (spec 4.3-4.5 and section 5).
//!
//! A DNS-hook query becomes a Direction Request to the DC; the DC answers with a Route
//! Direction (the MN's part), and the CN gets one unasked. Each Route Direction creates a
//! [`Tunnel`] whose state says what it waits for: the RS's hole-punch acknowledgement, the
//! peer's Tunnel Request, or the peer's Tunnel Response. The node behaves the same with or
//! without an RS (spec section 7, "one sequence for all cases"); only where it sends
//! differs.
//!
//! Once a relayed tunnel runs, both nodes probe each other's observed addresses (route
//! optimization); a probe acknowledged on the direct path moves the tunnel there and
//! releases the relay. On a network change the node re-registers, tells its peers its new
//! address at once (a probe or hole punch from the new address), and asks the DC for a
//! fresh negotiation of every live tunnel; the new session supersedes the old one, which
//! keeps receiving for a grace period so nothing in flight is lost.

use super::link::Link;
use super::table::{RouteKey, Timing, TunnelId};
use super::timer::Timer;
use super::{ip_endpoints, Node, NodeEvent, PathKind, ResolveError, ResolveId};
use crate::crypto::pk::{unwrap_from_peer, unwrap_with_tmp, wrap_for_peer, wrap_with_tmp, AttestedKey};
use crate::crypto::{Channel, CryptoError, Opened, TAG_LEN};
use crate::engine::{DropReason, Local, Received, Retry, Via};
use crate::keys::{KMnCn, KTmp, MnCn, Tun};
use crate::time::{Duration, Instant};
use crate::wire::direction::DirectionRequest;
use crate::wire::prefix::{Prefix, ANNOUNCED_MAX};
use crate::wire::refusal::{Reason, Refusal};
use crate::wire::route::{Path, PeerInfo, RouteDirection, RouteDirectionAck, Side, Traversal, TunnelRole};
use crate::wire::tunnel::{
    HolePunch, HolePunchAck, PathProbe, PathProbeAck, TunnelRequest, TunnelResponse, WrappedKey,
};
use crate::wire::{
    Envelope, Fqdn, Header, KeyId, List, Message, MsgType, RequestId, Sender, SessionId, VirtualAddrs, HEADER_LEN,
};
use core::net::{IpAddr, SocketAddr};

/// Most data packets of one tunnel sealed or opened in one multi-buffer call (a receive
/// or send batch of the agent holds up to 64).
pub(super) const DATA_RUN_MAX: usize = 64;
/// How long a superseded session keeps receiving after its replacement is up.
const SUPERSEDED_GRACE: Duration = Duration::from_secs(5);
/// How long to wait for the peer's Tunnel Request.
const AWAIT_TUNNEL_REQUEST: Duration = Duration::from_secs(60);
/// How long the node remembers a session whose tunnel ended. A DC retransmits a Route
/// Direction until it is acknowledged, at most for its negotiation timeout (60 s by
/// default); one arriving after the tunnel ended must not take the session's K_tun into
/// use again, since the new channel would seal from counter 0 once more.
pub(super) const ENDED_MEMORY: Duration = Duration::from_secs(600);
/// Most ended sessions remembered (the oldest are forgotten first).
const ENDED_MAX: usize = 4096;
/// Reasons for refused Route Directions remembered, so each is logged at warn once.
pub(super) const REFUSALS_KEPT: usize = 32;
/// The responder keeps K_tmp this long after the tunnel is up, to answer a retransmitted
/// Tunnel Request; then K_tmp is gone (it protects one negotiation only).
const K_TMP_AFTER_SETUP: Duration = Duration::from_secs(30);
/// Route-optimization probes: every 250 ms, 12 times (3 s), then stay on the relay.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);
const PROBE_ATTEMPTS: u32 = 12;

/// Where a sealed packet goes: the address, and the socket it leaves from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dest {
    /// The peer or its RS.
    pub to: SocketAddr,
    /// The socket: [`Local::MAIN`] but for a peer reached through an extra socket.
    pub local: Local,
}

/// Why a packet from the TUN device could not be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// The buffer does not hold an IP packet with header and tag room.
    NotIp,
    /// No tunnel is up for this destination.
    NoTunnel(IpAddr),
    /// Sealing failed (expired key, exhausted counter).
    Crypto(CryptoError),
    /// The packet is larger than the path to the peer carries: at most `mtu` bytes of
    /// inner packet fit. The buffer is left as it was (for an ICMP "too big" answer).
    TooBig {
        /// The largest inner packet the path carries.
        mtu: u16,
    },
}

/// How long a tunnel may send without hearing anything back before its path is checked:
/// longer than a round trip, short enough that a dead RS, or a NAT that rebound, is
/// noticed well within a second of the first packet lost to it.
const PATH_SILENCE: Duration = Duration::from_millis(400);
/// The check of the path: a hole punch to the RS (relayed) or a Path Probe to the peer
/// (direct) every 200 ms, three in all; when nothing is heard 200 ms after the last, the
/// path is dead. One check at a time per tunnel, and a new one only after another
/// `PATH_SILENCE`, so a tunnel that sends into a silent peer costs at most a punch or a
/// probe every 400 ms.
const PATH_CHECK_INTERVAL: Duration = Duration::from_millis(200);
const PATH_CHECK_ATTEMPTS: u32 = 3;
/// Packets sent into the silence before it counts: a lone datagram that gets no answer
/// (a ping, a DNS query) is not a sign of a dead path, and under loss its checks would
/// now and then all be lost too.
const PATH_SILENT_SENDS: u32 = 3;

/// A Direction Request in flight.
pub(super) struct Direction {
    pub(super) peer: Fqdn,
    pub(super) request_id: RequestId,
    retry: Retry,
    previous: Option<SessionId>,
    sent: bool,
}

impl Direction {
    pub(super) fn deadline(&self) -> Instant {
        // An unsent request waits for a registration, not for a time.
        if self.sent {
            self.retry.deadline()
        } else {
            Instant::FAR_FUTURE
        }
    }
}

/// A DNS-hook query waiting for its tunnel.
pub(super) struct PendingResolve {
    id: ResolveId,
    name: Fqdn,
    pub(super) deadline: Instant,
}

/// What a tunnel waits for; once up, its key and where its packets go.
enum TunnelState {
    /// Hole punching to the RS, waiting for its acknowledgement.
    Punching { retry: Retry },
    /// Waiting for the peer's Tunnel Request.
    ExpectTunnelRequest { until: Instant },
    /// Sent the Tunnel Request (to `target`) with K_mncn wrapped in it; waiting for the
    /// Tunnel Response. K_mncn already opens what the peer sends once it has answered.
    ExpectTunnelResponse { retry: Retry, request: Box<TunnelRequest>, target: SocketAddr, mncn: Channel<MnCn> },
    /// Up.
    Established(Established),
}

/// An established tunnel.
struct Established {
    mncn: Channel<MnCn>,
    /// When the tunnel came up.
    since: Instant,
    route: Route,
}

/// Where an established tunnel's packets go.
enum Route {
    /// Straight to the peer at `to`; `probe` tells the peer our new address after a
    /// handover, until it answers.
    Direct {
        to: SocketAddr,
        probe: Option<Probe>,
        /// The Path Probes asking the peer whether the path still works, after a silence;
        /// cleared by anything heard on the tunnel.
        check: Option<Retry>,
    },
    /// Through the RS at `rs` (the tunnel's relay).
    Relay {
        rs: SocketAddr,
        /// Route optimization, or the handover's punches to the RS.
        probe: Option<RelayProbe>,
        /// The punches asking the RS whether it still relays the session, after a
        /// silence; cleared by anything heard on the tunnel.
        check: Option<Retry>,
    },
}

/// A round of path probes to the peer's addresses.
struct Probe {
    id: u32,
    targets: Vec<SocketAddr>,
    retry: Retry,
}

/// What a relayed tunnel probes.
enum RelayProbe {
    /// The peer's observed addresses, for a direct path (route optimization).
    Direct(Probe),
    /// The RS, with hole punches, after a handover: until it acknowledges one.
    Punch(Retry),
}

impl Established {
    /// Up since `now`, sending to `to`: through the relay if `to` is the tunnel's RS.
    fn new(now: Instant, mncn: Channel<MnCn>, relay: Option<SocketAddr>, to: SocketAddr) -> Self {
        let route = if relay == Some(to) {
            Route::Relay { rs: to, probe: None, check: None }
        } else {
            Route::Direct { to, probe: None, check: None }
        };
        Established { mncn, since: now, route }
    }
}

impl Route {
    fn to(&self) -> SocketAddr {
        match self {
            Route::Direct { to, .. } => *to,
            Route::Relay { rs, .. } => *rs,
        }
    }

    /// The check of the path after a silence, whichever the path.
    fn check(&self) -> Option<&Retry> {
        match self {
            Route::Direct { check, .. } | Route::Relay { check, .. } => check.as_ref(),
        }
    }

    fn check_mut(&mut self) -> &mut Option<Retry> {
        match self {
            Route::Direct { check, .. } | Route::Relay { check, .. } => check,
        }
    }

    fn probe_deadline(&self) -> Option<Instant> {
        match self {
            Route::Direct { probe: Some(p), .. } | Route::Relay { probe: Some(RelayProbe::Direct(p)), .. } => {
                Some(p.retry.deadline())
            }
            Route::Relay { probe: Some(RelayProbe::Punch(retry)), .. } => Some(retry.deadline()),
            _ => None,
        }
    }
}

fn probe_policy() -> crate::engine::Backoff {
    crate::engine::Backoff { initial: PROBE_INTERVAL, max: PROBE_INTERVAL, attempts: PROBE_ATTEMPTS }
}

fn path_check_policy() -> crate::engine::Backoff {
    crate::engine::Backoff { initial: PATH_CHECK_INTERVAL, max: PATH_CHECK_INTERVAL, attempts: PATH_CHECK_ATTEMPTS }
}

/// Traffic on a tunnel.
#[derive(Clone, Copy)]
struct Activity {
    last_rx: Instant,
    last_tx: Instant,
    /// The first packet sent to where the tunnel sends since anything was last heard:
    /// what the path's silence is measured from.
    unanswered_since: Option<Instant>,
    /// Packets sent to where the tunnel sends since anything was last heard.
    unanswered: u32,
    /// Last data packet either way: what the idle timeout looks at.
    last_data: Instant,
    rx_packets: u64,
    tx_packets: u64,
}

/// One tunnel negotiation and, once up, its data path.
pub(super) struct Tunnel {
    session: SessionId,
    peer: PeerInfo,
    side: Side,
    role: TunnelRole,
    /// The RS, for a relayed session (hole punches go there in any state).
    relay: Option<SocketAddr>,
    /// The peer is an ordinary host behind `relay` as its gateway: no Tunnel Request,
    /// the data key is derived from K_tun, the tunnel is up once the RS acknowledges a
    /// punch (see [`Path::Gateway`]).
    gateway: bool,
    k_tun: Channel<Tun>,
    k_tmp: Option<KTmp>,
    peer_key: Option<AttestedKey>,
    state: TunnelState,
    activity: Activity,
    /// Set once a newer session to the same peer is up: this one still receives until then.
    superseded_until: Option<Instant>,
    /// Renegotiate through the DCs once registered again (after a network change).
    reestablish: bool,
    /// A renegotiation was asked for (K_mncn nears its end, or the relay stopped
    /// answering): not again for this session.
    rekey_requested: bool,
    /// Where the peer's Path Probe came from straight, before our end was up (it can
    /// overtake the Tunnel Response on the relay). Behind a NAT that picks a port per
    /// destination that is the only address of the peer our probe can reach, so route
    /// optimization probes it too.
    heard_direct: Option<SocketAddr>,
    /// That renegotiation is for a path that stopped answering (a relay, or the RS lost
    /// the session; a direct path): if it fails, the path is watched again and the tunnel
    /// tries once more.
    path_lost: bool,
    /// What the DC asked us to try for a direct path while relayed (spray.rs).
    traversal: Traversal,
    /// The peer's announced LAN prefixes (subnet routes into this tunnel).
    peer_prefixes: List<Prefix, ANNOUNCED_MAX>,
    /// The peer's announced prefixes this node refused, each with why
    /// ([`Node::check_peer_prefix`]): never sealed to.
    refused_prefixes: Vec<(Prefix, &'static str)>,
    /// The id of the Path Probe we last followed to a new address of the peer: its other
    /// copies (a search sends one id from 256 sockets) are no move of the peer.
    followed_probe: Option<u32>,
}

/// A tunnel as status output shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunnelInfo {
    /// The session.
    pub session: SessionId,
    /// The peer's name.
    pub peer: Fqdn,
    /// The peer's virtual addresses.
    pub peer_virtual: VirtualAddrs,
    /// True once the Tunnel Response confirmed K_mncn.
    pub established: bool,
    /// Direct or relayed now.
    pub path: PathKind,
    /// Where packets go now (the peer or the RS).
    pub remote: Option<SocketAddr>,
    /// The RS the DC chose for this session, if relayed (kept after route optimization
    /// moved the tunnel to a direct path; a tunnel moved to another RS is a new session).
    pub relay: Option<SocketAddr>,
    /// True if a newer session to the same peer replaced this one.
    pub superseded: bool,
    /// Data packets received.
    pub rx_packets: u64,
    /// Data packets sent.
    pub tx_packets: u64,
    /// The peer's announced LAN prefixes (routed into this tunnel while it is up).
    pub peer_prefixes: Vec<Prefix>,
    /// The peer's announced prefixes this node refused, each with why (not in
    /// `peer_prefixes`; the driver logs and shows them).
    pub refused_prefixes: Vec<(Prefix, &'static str)>,
    /// The peer is an ordinary host and the RS at `relay` its gateway (path relay).
    pub gateway: bool,
}

fn side_sender(side: Side) -> Sender {
    match side {
        Side::Cn => Sender::Cn,
        _ => Sender::Mn,
    }
}

impl Tunnel {
    pub(super) fn session(&self) -> SessionId {
        self.session
    }

    pub(super) fn is_established(&self) -> bool {
        matches!(self.state, TunnelState::Established(_))
    }

    fn established(&self) -> Option<&Established> {
        match &self.state {
            TunnelState::Established(e) => Some(e),
            _ => None,
        }
    }

    fn established_mut(&mut self) -> Option<&mut Established> {
        match &mut self.state {
            TunnelState::Established(e) => Some(e),
            _ => None,
        }
    }

    fn established_at(&self) -> Option<Instant> {
        self.established().map(|e| e.since)
    }

    /// K_mncn, once made (initiator) or received (responder).
    fn mncn(&self) -> Option<&Channel<MnCn>> {
        match &self.state {
            TunnelState::ExpectTunnelResponse { mncn, .. } | TunnelState::Established(Established { mncn, .. }) => {
                Some(mncn)
            }
            _ => None,
        }
    }

    fn mncn_mut(&mut self) -> Option<&mut Channel<MnCn>> {
        match &mut self.state {
            TunnelState::ExpectTunnelResponse { mncn, .. } | TunnelState::Established(Established { mncn, .. }) => {
                Some(mncn)
            }
            _ => None,
        }
    }

    pub(super) fn is_live(&self) -> bool {
        self.superseded_until.is_none()
    }

    /// What decides whether this tunnel carries packets to its peer (see `table.rs`).
    pub(super) fn route_key(&self) -> RouteKey {
        (self.is_established(), self.is_live(), self.established_at())
    }

    /// Relayed: on the RS once up, and until then if the DC chose an RS.
    fn on_relay(&self) -> bool {
        match self.established() {
            Some(e) => matches!(e.route, Route::Relay { .. }),
            None => self.relay.is_some(),
        }
    }

    /// True while the path's silence is watched (see `drive_tunnel`).
    fn watches_path(&self) -> bool {
        self.is_established() && self.is_live() && !self.rekey_requested
    }

    fn path(&self) -> PathKind {
        if self.on_relay() {
            PathKind::Relay
        } else {
            PathKind::Direct
        }
    }

    /// Where packets go, once up.
    fn send_to(&self) -> Option<SocketAddr> {
        self.established().map(|e| e.route.to())
    }

    /// True if the tunnel is up and sends to `to` (directly or as its RS).
    pub(super) fn sends_to(&self, to: SocketAddr) -> bool {
        self.send_to() == Some(to)
    }

    /// The tunnel's RS, if relayed.
    pub(super) fn relay(&self) -> Option<SocketAddr> {
        self.relay
    }

    /// True if the tunnel is up on its relay.
    pub(super) fn is_relayed(&self) -> bool {
        self.established().is_some_and(|e| matches!(e.route, Route::Relay { .. }))
    }

    /// `dst` is the peer's: its virtual address or inside a prefix it announced.
    pub(super) fn carries(&self, dst: IpAddr) -> bool {
        let virtual_addr = match dst {
            IpAddr::V4(a) => a == self.peer.virtual_addrs.v4,
            IpAddr::V6(a) => a == self.peer.virtual_addrs.v6,
        };
        virtual_addr || self.peer_prefixes.iter().any(|p| p.contains(dst))
    }

    /// The peer's announced prefixes.
    pub(super) fn peer_prefixes(&self) -> &[Prefix] {
        self.peer_prefixes.as_slice()
    }

    pub(super) fn peer_addrs(&self) -> [IpAddr; 2] {
        [IpAddr::V4(self.peer.virtual_addrs.v4), IpAddr::V6(self.peer.virtual_addrs.v6)]
    }

    /// Something authentic came in on the tunnel: the path works, so a pending check of
    /// it is answered.
    fn heard(&mut self, now: Instant) {
        self.activity.last_rx = now;
        self.activity.unanswered_since = None;
        self.activity.unanswered = 0;
        if let Some(e) = self.established_mut() {
            *e.route.check_mut() = None;
        }
    }

    /// The initiator's Tunnel Response came from `to`: K_mncn is confirmed.
    fn establish(&mut self, now: Instant, to: SocketAddr) {
        // K_mncn moves from the old state to the new; the state in between is never seen.
        let between = TunnelState::ExpectTunnelRequest { until: now };
        self.state = match core::mem::replace(&mut self.state, between) {
            TunnelState::ExpectTunnelResponse { mncn, .. } => {
                TunnelState::Established(Established::new(now, mncn, self.relay, to))
            }
            other => other,
        };
        self.up(now);
    }

    /// What coming up changes besides the state.
    fn up(&mut self, now: Instant) {
        if self.role == TunnelRole::Initiate {
            self.k_tmp = None; // wrapped once, confirmed: no further use
        }
        self.activity.last_data = now;
        self.heard(now);
    }

    pub(super) fn held_keys(&self, out: &mut Vec<(&'static str, u64)>) {
        out.push(("K_tun", self.k_tun.key().fingerprint()));
        if let Some(k) = &self.k_tmp {
            out.push(("K_tmp", k.fingerprint()));
        }
        if let Some(m) = self.mncn() {
            out.push(("K_mncn", m.key().fingerprint()));
        }
    }

    pub(super) fn deadline(&self, timing: &Timing) -> Option<Instant> {
        let a = &self.activity;
        let state = match &self.state {
            TunnelState::Punching { retry } | TunnelState::ExpectTunnelResponse { retry, .. } => Some(retry.deadline()),
            TunnelState::ExpectTunnelRequest { until } => Some(*until),
            TunnelState::Established(_) => {
                let idle = a.last_data + timing.idle;
                // A superseded tunnel sends no keepalive (`drive_state`): a keepalive time
                // that passed would wake the node again and again until the tunnel ends.
                if self.is_live() {
                    Some(idle.min(a.last_tx + timing.keepalive))
                } else {
                    Some(idle)
                }
            }
        };
        let probe = self.established().and_then(|e| e.route.probe_deadline());
        let expiry = self.mncn().map(Channel::expires);
        let rekey = self.rekey_at(timing);
        let tmp = self.k_tmp.as_ref().and(self.established_at()).map(|t| t + K_TMP_AFTER_SETUP);
        let check = self.established().and_then(|e| e.route.check());
        let watch = match (self.watches_path(), check) {
            (true, Some(retry)) => Some(retry.deadline()),
            (true, None) if a.unanswered >= PATH_SILENT_SENDS => a.unanswered_since.map(|t| t + PATH_SILENCE),
            _ => None,
        };
        [state, probe, expiry, rekey, tmp, self.superseded_until, watch].into_iter().flatten().min()
    }

    /// When this node asks for a fresh negotiation, ahead of K_mncn's expiry.
    ///
    /// Each node applies its own key lifetime, so either end may be the first to need a
    /// new key: MN renews at 90% of its lifetime and CN at 95% of its own. With equal
    /// settings MN's renewal supersedes the tunnel before CN's comes due, so there is one
    /// renegotiation, not two.
    fn rekey_at(&self, timing: &Timing) -> Option<Instant> {
        if self.rekey_requested || !self.is_live() {
            return None;
        }
        let e = self.established()?;
        let margin = match self.side {
            Side::Mn => timing.key_lifetime / 10,
            _ => timing.key_lifetime / 20,
        };
        Some(e.mncn.expires() - margin)
    }

    fn info(&self) -> TunnelInfo {
        TunnelInfo {
            session: self.session,
            peer: self.peer.fqdn.clone(),
            peer_virtual: self.peer.virtual_addrs,
            established: self.is_established(),
            path: self.path(),
            remote: self.send_to(),
            relay: self.relay,
            superseded: !self.is_live(),
            rx_packets: self.activity.rx_packets,
            tx_packets: self.activity.tx_packets,
            peer_prefixes: self.peer_prefixes.as_slice().to_vec(),
            refused_prefixes: self.refused_prefixes.clone(),
            gateway: self.gateway,
        }
    }

    /// `msg` sealed with K_tun.
    fn seal_tun(&mut self, now: Instant, msg: &Message) -> Option<Vec<u8>> {
        self.k_tun.seal(now, msg).map_err(|e| log::warn!("cannot seal {:?} with K_tun: {e}", msg.msg_type())).ok()
    }

    /// `msg` sealed with K_mncn for `dst`; counts as sent on the tunnel.
    pub(super) fn seal_mncn(&mut self, now: Instant, dst: SocketAddr, msg: &Message) -> Option<(SocketAddr, Vec<u8>)> {
        let ch = self.mncn_mut()?;
        match ch.seal(now, msg) {
            Ok(bytes) => {
                self.sent(now, dst);
                Some((dst, bytes))
            }
            Err(e) => {
                log::warn!("cannot seal {:?} with K_mncn: {e}", msg.msg_type());
                None
            }
        }
    }

    /// Something went to `dst`; if that is where the tunnel sends, an answer is due.
    fn sent(&mut self, now: Instant, dst: SocketAddr) {
        self.activity.last_tx = now;
        if self.send_to() == Some(dst) {
            self.activity.unanswered_since.get_or_insert(now);
            self.activity.unanswered = self.activity.unanswered.saturating_add(1);
        }
    }

    /// A Hole Punch for the RS (`release`: we leave the relay for a direct path).
    fn hole_punch(&mut self, now: Instant, release: bool) -> Option<(SocketAddr, Vec<u8>)> {
        let relay = self.relay?;
        let msg = Message::HolePunch(HolePunch { side: self.side, release });
        self.seal_tun(now, &msg).map(|b| (relay, b))
    }

    /// A Path Probe to `to`, or to where the tunnel sends now.
    fn path_probe(&mut self, now: Instant, probe_id: u32, to: Option<SocketAddr>) -> Option<(SocketAddr, Vec<u8>)> {
        let dst = to.or(self.send_to())?;
        self.seal_mncn(now, dst, &Message::PathProbe(PathProbe { probe_id }))
    }

    /// The timers of the tunnel's state: retransmissions while it is set up, probes and
    /// keepalives once it is up. Pushes what to send to `sends`; false when the tunnel
    /// is over.
    fn drive_state(
        &mut self,
        now: Instant,
        timing: &Timing,
        sends: &mut Vec<Option<(SocketAddr, Vec<u8>)>>,
        rng: &mut super::Rng,
        links: &[Link],
    ) -> bool {
        enum Act {
            None,
            Punch,
            Request(Box<TunnelRequest>, SocketAddr),
            Probe(u32, Vec<SocketAddr>),
            Keepalive,
        }
        let mut act = Act::None;
        let a = self.activity;
        let live = self.is_live();
        match &mut self.state {
            TunnelState::Punching { retry } if retry.due(now) => {
                if !retry.again(now) {
                    log::warn!("RS does not answer hole punching for tunnel {}", self.session);
                    return false;
                }
                act = Act::Punch;
            }
            TunnelState::ExpectTunnelResponse { retry, request, target, .. } if retry.due(now) => {
                if !retry.again(now) {
                    log::warn!("no Tunnel Response from {} for tunnel {}", self.peer.fqdn, self.session);
                    return false;
                }
                act = Act::Request(request.clone(), *target);
            }
            TunnelState::ExpectTunnelRequest { until } if now >= *until => return false,
            TunnelState::Established(e) => {
                if now >= a.last_data + timing.idle {
                    log::info!("tunnel {} to {} idle; closing", self.session, self.peer.fqdn);
                    return false;
                }
                let mut over = false;
                match &mut e.route {
                    Route::Direct { probe: Some(p), .. } | Route::Relay { probe: Some(RelayProbe::Direct(p)), .. }
                        if p.retry.due(now) =>
                    {
                        if p.retry.again(now) {
                            act = Act::Probe(p.id, p.targets.clone());
                        } else {
                            over = true;
                        }
                    }
                    Route::Relay { probe: Some(RelayProbe::Punch(retry)), .. } if retry.due(now) => {
                        if retry.again(now) {
                            act = Act::Punch;
                        } else {
                            over = true;
                        }
                    }
                    _ => {}
                }
                if over {
                    match &mut e.route {
                        Route::Direct { probe, .. } => *probe = None,
                        Route::Relay { probe, .. } => {
                            if matches!(probe, Some(RelayProbe::Direct(_))) {
                                log::info!("no direct path to {}; staying on the relay", self.peer.fqdn);
                            }
                            *probe = None;
                        }
                    }
                }
                if matches!(act, Act::None) && now >= a.last_tx + timing.keepalive && live {
                    act = Act::Keepalive;
                }
            }
            _ => {}
        }
        match act {
            Act::None => {}
            Act::Punch => sends.push(self.hole_punch(now, false)),
            Act::Request(req, dst) => {
                let msg = Message::TunnelRequest(*req);
                sends.push(self.seal_tun(now, &msg).map(|b| (dst, b)));
            }
            Act::Probe(id, targets) => {
                for dst in targets {
                    sends.push(self.path_probe(now, id, Some(dst)));
                }
            }
            Act::Keepalive => {
                // Keep the NAT mappings on the path open: punch the RS, or probe the peer
                // when we are behind NAT (a global node needs no keepalive).
                if self.on_relay() {
                    let punch = self.hole_punch(now, false);
                    if let Some((rs, _)) = &punch {
                        self.sent(now, *rs);
                    }
                    sends.push(punch);
                } else if self.send_to().is_some_and(|a| super::behind_nat(links, &a)) {
                    let id = rng.next_u32();
                    sends.push(self.path_probe(now, id, None));
                } else {
                    self.activity.last_tx = now;
                }
            }
        }
        true
    }
}

impl Node {
    /// The DNS hook (spec 4.3): an application asked for `name`. The answer comes as a
    /// [`NodeEvent::Resolved`] once a tunnel to `name` is up, or a
    /// [`NodeEvent::ResolveFailed`] (with [`ResolveError::NotNtm`] the driver answers the
    /// query as ordinary DNS).
    pub fn resolve(&mut self, now: Instant, name: Fqdn) -> ResolveId {
        let id = ResolveId(self.next_resolve);
        self.next_resolve += 1;
        if let (Some(me), Some(v)) = (self.fqdn(), self.virtual_addrs) {
            if *me == name {
                self.emit(NodeEvent::Resolved { id, name, virtual_addrs: v });
                return id;
            }
        }
        if let Some(t) = self.best_tunnel_to(&name) {
            let virtual_addrs = t.peer.virtual_addrs;
            self.emit(NodeEvent::Resolved { id, name, virtual_addrs });
            return id;
        }
        if self.resolves.len() >= self.cfg.max_pending_resolves {
            self.emit(NodeEvent::ResolveFailed { id, name, error: ResolveError::Overloaded });
            return id;
        }
        let negotiating = self.tunnels.iter().any(|(_, t)| t.peer.fqdn == name && t.is_live());
        if !negotiating {
            self.request_direction(now, name.clone(), None);
        }
        let deadline = now + self.cfg.resolve_timeout;
        self.resolves.push(PendingResolve { id, name, deadline });
        self.tunnels.timers().set(Timer::Resolve(id), Some(deadline));
        id
    }

    /// The tunnels, for status output.
    pub fn tunnels(&self) -> Vec<TunnelInfo> {
        self.tunnels.iter().map(|(_, t)| t.info()).collect()
    }

    fn best_tunnel_to(&self, name: &Fqdn) -> Option<&Tunnel> {
        self.tunnels
            .iter()
            .map(|(_, t)| t)
            .filter(|t| t.peer.fqdn == *name && t.is_established() && t.is_live())
            .max_by_key(|t| t.established_at())
    }

    fn request_direction(&mut self, now: Instant, peer: Fqdn, previous: Option<SessionId>) {
        if self.directions.iter().any(|d| d.peer == peer) {
            return;
        }
        let request_id = self.ids.next();
        let retry = Retry::new(now, self.cfg.backoff);
        self.directions.push(Direction { peer, request_id, retry, previous, sent: false });
        if self.is_registered() {
            self.send_pending_directions(now);
        }
        self.rearm_directions();
    }

    /// Files the first deadline of the Direction Requests after a change to them.
    fn rearm_directions(&mut self) {
        let first = self.directions.iter().map(Direction::deadline).min();
        self.tunnels.timers().set(Timer::Directions, first);
    }

    fn send_pending_directions(&mut self, now: Instant) {
        let Some(dst) = self.any_dc_addr() else { return };
        let unsent: Vec<Message> = self
            .directions
            .iter_mut()
            .filter(|d| !d.sent)
            .map(|d| {
                d.sent = true;
                d.retry = Retry::new(now, self.cfg.backoff);
                Message::DirectionRequest(DirectionRequest {
                    request_id: d.request_id,
                    peer: d.peer.clone(),
                    previous: d.previous,
                })
            })
            .collect();
        self.rearm_directions();
        for msg in unsent {
            self.send_to_dc(now, dst, &msg);
        }
    }

    /// A link registered: send what waited for it.
    pub(super) fn on_registered(&mut self, now: Instant) {
        let mut renew = Vec::new();
        for id in self.tunnels.ids() {
            let Some(mut t) = self.tunnels.get_mut(id) else { continue };
            if t.reestablish {
                t.reestablish = false;
                renew.push((t.peer.fqdn.clone(), t.session));
            }
        }
        for (peer, session) in renew {
            self.request_direction(now, peer, Some(session));
        }
        self.send_pending_directions(now);
    }

    /// After a network change: tell each peer (or its RS) our new address at once, and
    /// mark every live tunnel for renegotiation once we are registered again.
    pub(super) fn begin_handover(&mut self, now: Instant) {
        // The extra sockets' mappings belong to the NAT we were behind: a kept one would
        // go on sending from a port the peer's filter has never seen.
        self.release_locals(now);
        for id in self.tunnels.ids() {
            let Some(mut t) = self.tunnels.get_mut(id) else { continue };
            if !t.is_live() {
                continue;
            }
            // Every live tunnel is renegotiated, also one still being set up: the peer
            // may be about to answer at our old address.
            t.reestablish = true;
            // Tell the peer (or the RS) where we are now, repeating until it answers: the
            // fast path of a handover, before the renegotiation through the DCs ends.
            let Some(e) = t.established_mut() else { continue };
            let probe_id = self.rng.next_u32();
            let retry = Retry::new(now, probe_policy());
            let send = match &mut e.route {
                Route::Relay { probe, .. } => {
                    *probe = Some(RelayProbe::Punch(retry));
                    t.hole_punch(now, false)
                }
                Route::Direct { to, probe, .. } => {
                    *probe = Some(Probe { id: probe_id, targets: vec![*to], retry });
                    t.path_probe(now, probe_id, None)
                }
            };
            drop(t);
            self.send_udp(send);
        }
        if self.is_registered() {
            self.on_registered(now);
        }
    }

    pub(super) fn fail_direction(&mut self, request_id: RequestId, error: ResolveError) {
        let Some(i) = self.directions.iter().position(|d| d.request_id == request_id) else { return };
        let d = self.directions.swap_remove(i);
        self.rearm_directions();
        // A tunnel whose dead path this request was to replace watches its path again:
        // once it has sent into silence for another PATH_SILENCE and a check, it asks
        // again (the RS or the peer may be back, or the DC may know another RS by then).
        for id in self.tunnels.ids() {
            let Some(mut t) = self.tunnels.get_mut(id) else { continue };
            if t.path_lost && t.peer.fqdn == d.peer && t.is_live() {
                t.path_lost = false;
                t.rekey_requested = false;
                t.activity.unanswered_since = None;
                t.activity.unanswered = 0;
            }
        }
        self.fail_resolves(&d.peer, error);
    }

    fn fail_resolves(&mut self, name: &Fqdn, error: ResolveError) {
        let (failed, kept): (Vec<_>, Vec<_>) =
            core::mem::take(&mut self.resolves).into_iter().partition(|r| r.name == *name);
        self.resolves = kept;
        for r in failed {
            self.tunnels.timers().set(Timer::Resolve(r.id), None);
            self.emit(NodeEvent::ResolveFailed { id: r.id, name: r.name, error });
        }
    }

    fn complete_resolves(&mut self, name: &Fqdn, virtual_addrs: VirtualAddrs) {
        let (done, kept): (Vec<_>, Vec<_>) =
            core::mem::take(&mut self.resolves).into_iter().partition(|r| r.name == *name);
        self.resolves = kept;
        for r in done {
            self.tunnels.timers().set(Timer::Resolve(r.id), None);
            self.emit(NodeEvent::Resolved { id: r.id, name: r.name, virtual_addrs });
        }
    }

    pub(super) fn drive_directions(&mut self, now: Instant) {
        if !self.tunnels.any_due(now, |t| *t == Timer::Directions) {
            return;
        }
        // With no link (no address at all) the attempts still run out: the deadline moves.
        let dst = self.any_dc_addr();
        let mut resend = Vec::new();
        let mut failed = Vec::new();
        for d in self.directions.iter_mut().filter(|d| d.sent && d.retry.due(now)) {
            if d.retry.again(now) {
                resend.push(Message::DirectionRequest(DirectionRequest {
                    request_id: d.request_id,
                    peer: d.peer.clone(),
                    previous: d.previous,
                }));
            } else {
                failed.push(d.request_id);
            }
        }
        self.rearm_directions();
        for (dst, msg) in resend.into_iter().filter_map(|m| dst.map(|d| (d, m))) {
            self.send_to_dc(now, dst, &msg);
        }
        for id in failed {
            log::warn!("DC does not answer our Direction Request {id}");
            self.fail_direction(id, ResolveError::Timeout);
        }
    }

    pub(super) fn drive_resolves(&mut self, now: Instant) {
        if !self.tunnels.any_due(now, |t| matches!(t, Timer::Resolve(_))) {
            return;
        }
        let (late, kept): (Vec<_>, Vec<_>) =
            core::mem::take(&mut self.resolves).into_iter().partition(|r| now >= r.deadline);
        self.resolves = kept;
        for r in late {
            self.tunnels.timers().set(Timer::Resolve(r.id), None);
            self.emit(NodeEvent::ResolveFailed { id: r.id, name: r.name, error: ResolveError::Timeout });
        }
    }

    fn refuse_to_dc(
        &mut self,
        now: Instant,
        in_reply_to: MsgType,
        request_id: RequestId,
        reason: Reason,
        detail: &str,
    ) {
        if let Some(dst) = self.any_dc_addr() {
            let msg = Message::Refusal(Refusal::new(in_reply_to, request_id, reason, detail));
            self.send_to_dc(now, dst, &msg);
        }
    }

    /// Sends a sealed tunnel message, if there is one.
    fn send_udp(&mut self, sealed: Option<(SocketAddr, Vec<u8>)>) {
        if let Some((dst, bytes)) = sealed {
            self.transmit(Via::Udp, dst, bytes);
        }
    }

    /// A Route Direction from our DC (spec 4.4): set up our end of a tunnel.
    pub(super) fn handle_route_direction(&mut self, now: Instant, rd: RouteDirection) -> Received {
        let Some(me) = self.fqdn().cloned() else { return self.drops.count(DropReason::Stale) };
        if rd.node != me {
            return self.drops.count(DropReason::Unauthorized);
        }
        let ack = Message::RouteDirectionAck(RouteDirectionAck { request_id: rd.request_id, session: rd.session });
        let ended = self.ended.iter().any(|(s, _)| *s == rd.session);
        if ended || self.tunnels.by_session(rd.session).is_some() {
            // The DC retransmitted: our acknowledgement was lost. (If the tunnel ended
            // meanwhile, its K_tun stays out of use: see ENDED_MEMORY.)
            if let Some(dst) = self.any_dc_addr() {
                self.send_to_dc(now, dst, &ack);
            }
            return Received::Handled;
        }
        // The cap counts live tunnels; superseded ones end within SUPERSEDED_GRACE.
        let live = self.tunnels.iter().filter(|(_, t)| t.is_live()).count();
        if live >= self.cfg.max_tunnels {
            self.refuse_to_dc(now, MsgType::RouteDirection, rd.request_id, Reason::Overloaded, "tunnel table full");
            return self.drops.count(DropReason::Limit);
        }
        // Which wrapping: the peer's attested public key if both ends have key pairs,
        // else K_tmp. A node set to strict public-key mode refuses K_tmp, so a DC cannot
        // downgrade it to a mode in which the DC could learn K_mncn.
        let peer_key = match (&self.cfg.key_pair, &rd.peer_attestation) {
            (Some(_), Some(att)) => {
                let verified = self
                    .session
                    .as_ref()
                    .and_then(|s| s.as_key.as_ref())
                    .map(|as_key| att.verify(as_key, &rd.peer.fqdn));
                match verified {
                    Some(Ok(k)) => Some(k),
                    _ => {
                        log::warn!("Route Direction for {} with an attestation that does not verify", rd.peer.fqdn);
                        self.refuse_to_dc(
                            now,
                            MsgType::RouteDirection,
                            rd.request_id,
                            Reason::Unauthorized,
                            "peer attestation invalid",
                        );
                        return self.drops.count(DropReason::Unauthorized);
                    }
                }
            }
            _ => None,
        };
        let gateway = matches!(rd.path, Path::Gateway(_));
        // A gateway tunnel wraps no K_mncn: its data key comes from K_tun, which the RS
        // at its other end holds.
        if !gateway && peer_key.is_none() && (rd.k_tmp.is_none() || self.cfg.strict_public_key_mode) {
            self.refuse_to_dc(
                now,
                MsgType::RouteDirection,
                rd.request_id,
                Reason::Unauthorized,
                "no usable key wrapping",
            );
            return self.drops.count(DropReason::Unauthorized);
        }
        if let Some(detail) = self.check_peer_virtual(&rd.peer) {
            let line = format!("Route Direction for {} refused: {detail}", rd.peer.fqdn);
            if self.first_refusal(&line) {
                log::warn!("{line}");
            } else {
                log::debug!("{line}");
            }
            self.refuse_to_dc(now, MsgType::RouteDirection, rd.request_id, Reason::Unauthorized, &detail);
            return self.drops.count(DropReason::Unauthorized);
        }
        let mut peer_prefixes = List::new();
        let mut refused_prefixes = Vec::new();
        for p in rd.tail.1.as_slice() {
            match self.check_peer_prefix(p) {
                None => {
                    let _ = peer_prefixes.push(*p);
                }
                Some(why) => refused_prefixes.push((*p, why)),
            }
        }
        let expires = now + rd.k_tun.lifetime.duration();
        let k_tun = match Channel::new(rd.k_tun.key, KeyId(rd.session.0), side_sender(rd.side), expires) {
            Ok(c) => c,
            Err(_) => return self.drops.count(DropReason::Malformed),
        };
        if rd.side == Side::Mn {
            if let Some(i) = self.directions.iter().position(|d| d.peer == rd.peer.fqdn) {
                self.directions.swap_remove(i);
                self.rearm_directions();
            }
        }
        let relay = match rd.path {
            Path::Relay(a) | Path::Gateway(a) => Some(a),
            Path::Direct => None,
        };
        log::info!(
            "Route Direction {}: {:?} {:?} with {} {}",
            rd.session,
            rd.side,
            rd.role,
            rd.peer.fqdn,
            relay.map_or("directly".to_string(), |a| format!("via RS {a}{}", if gateway { " (gateway)" } else { "" }))
        );
        let state = match relay {
            Some(_) => TunnelState::Punching { retry: Retry::new(now, self.cfg.tunnel_backoff) },
            None => TunnelState::ExpectTunnelRequest { until: now + AWAIT_TUNNEL_REQUEST },
        };
        let id = self.tunnels.insert(Tunnel {
            session: rd.session,
            peer: rd.peer,
            side: rd.side,
            role: rd.role,
            relay,
            gateway,
            k_tun,
            k_tmp: rd.k_tmp,
            peer_key,
            state,
            activity: Activity {
                last_rx: now,
                last_tx: now,
                unanswered_since: None,
                unanswered: 0,
                last_data: now,
                rx_packets: 0,
                tx_packets: 0,
            },
            superseded_until: None,
            reestablish: false,
            rekey_requested: false,
            heard_direct: None,
            traversal: rd.tail.0,
            peer_prefixes,
            refused_prefixes,
            followed_probe: None,
            path_lost: false,
        });
        if let Some(dst) = self.any_dc_addr() {
            self.send_to_dc(now, dst, &ack);
        }
        if relay.is_some() {
            let punch = self.tunnels.get_mut(id).and_then(|mut t| t.hole_punch(now, false));
            self.send_udp(punch);
        } else if rd.role == TunnelRole::Initiate {
            self.start_tunnel_request(now, id);
        }
        Received::Handled
    }

    /// Whether this refusal is logged for the first time. The DC sends the same Route
    /// Direction again on each look-up of the name and on each retry, and the box refuses
    /// each: the reason goes to the log at warn once, then at debug. The last
    /// [`REFUSALS_KEPT`] reasons are remembered.
    fn first_refusal(&mut self, line: &str) -> bool {
        if self.refusals_warned.iter().any(|l| l == line) {
            return false;
        }
        if self.refusals_warned.len() >= REFUSALS_KEPT {
            self.refusals_warned.pop_front();
        }
        self.refusals_warned.push_back(line.to_string());
        true
    }

    /// Why a Route Direction's peer virtual address cannot be taken, if it cannot: one
    /// outside `virtual_routes` would leave by another route, in clear, and one a live
    /// tunnel to another peer already carries would take that peer's packets (a renewed
    /// session to the same peer supersedes its old one instead). An unspecified address
    /// (a gateway peer has no IPv6 one) is no address; a family `virtual_routes` has no
    /// prefix of is not checked (nor routed by the box).
    fn check_peer_virtual(&self, peer: &PeerInfo) -> Option<String> {
        let v = peer.virtual_addrs;
        let addrs = [IpAddr::V4(v.v4), IpAddr::V6(v.v6)];
        let routes = &self.cfg.virtual_routes;
        for a in addrs.into_iter().filter(|a| !a.is_unspecified()) {
            let family = routes.iter().any(|r| r.addr().is_ipv4() == a.is_ipv4());
            if family && !routes.iter().any(|r| r.contains(a)) {
                let list: Vec<String> = routes.iter().map(|r| r.to_string()).collect();
                return Some(format!("peer virtual address {a} outside virtual_routes [{}]", list.join(", ")));
            }
            let other = self
                .tunnels
                .iter()
                .find(|(_, t)| t.is_live() && t.peer.fqdn != peer.fqdn && t.peer_addrs().contains(&a));
            if let Some((_, t)) = other {
                return Some(format!("peer virtual address {a} is already {}'s", t.peer.fqdn));
            }
        }
        None
    }

    /// Why a peer's announced prefix is not taken, if it is not: outside
    /// `accept_peer_prefixes`, or over the virtual prefixes or this node's own announced
    /// ones (it would take packets meant for other peers or for the node's LAN).
    pub(super) fn check_peer_prefix(&self, p: &Prefix) -> Option<&'static str> {
        if self.cfg.virtual_routes.iter().any(|r| r.overlaps(p)) {
            return Some("overlaps the virtual routes");
        }
        if self.cfg.announced.iter().any(|a| a.overlaps(p)) {
            return Some("overlaps a prefix this box announces");
        }
        let allow = self.cfg.accept_peer_prefixes.as_ref();
        if allow.is_some_and(|l| !l.iter().any(|a| a.prefix_len() <= p.prefix_len() && a.contains(p.addr()))) {
            return Some("outside accept_peer_prefixes");
        }
        None
    }

    /// Where the Tunnel Request goes: the RS, or the peer's first endpoint in a family we
    /// are registered in.
    fn tunnel_request_target(&self, t: &Tunnel) -> Option<SocketAddr> {
        t.relay.or_else(|| {
            let eps = t.peer.endpoints.as_slice();
            eps.iter().find(|a| self.has_family(a)).or(eps.first()).copied()
        })
    }

    /// Makes K_mncn, wraps it for the peer and sends the Tunnel Request (spec 4.4 step 4).
    fn start_tunnel_request(&mut self, now: Instant, id: TunnelId) {
        let (Some(me), Some(my_virtual)) = (self.fqdn().cloned(), self.virtual_addrs) else { return };
        let lifetime = self.cfg.tunnel_key_lifetime;
        let Some(t) = self.tunnels.get(id) else { return };
        let session = t.session;
        let k_mncn = KMnCn::generate(&mut *self.rng);
        let wrapped = match (&t.peer_key, &self.cfg.key_pair, &t.k_tmp) {
            (Some(peer), Some(own), _) => {
                wrap_for_peer(&mut *self.rng, own, peer, session, &me, &k_mncn).map(WrappedKey::Public)
            }
            (_, _, Some(k_tmp)) => wrap_with_tmp(k_tmp, session, &me, &t.peer.fqdn, &k_mncn).map(WrappedKey::Tmp),
            _ => Err(CryptoError::BadPublicKey),
        };
        let wrapped = match wrapped {
            Ok(w) => w,
            Err(e) => {
                log::warn!("cannot wrap K_mncn for {}: {e}", t.peer.fqdn);
                return;
            }
        };
        let Some(dst) = self.tunnel_request_target(t) else { return };
        let Ok(mncn) = Channel::new(k_mncn, KeyId(session.0), Sender::Initiator, now + lifetime) else { return };
        let request = TunnelRequest { initiator: me, virtual_addrs: my_virtual, wrapped };
        let msg = Message::TunnelRequest(request.clone());
        let retry = Retry::new(now, self.cfg.tunnel_backoff);
        let Some(mut t) = self.tunnels.get_mut(id) else { return };
        t.state = TunnelState::ExpectTunnelResponse { retry, request: Box::new(request), target: dst, mncn };
        let sealed = t.seal_tun(now, &msg).map(|b| (dst, b));
        drop(t);
        self.send_udp(sealed);
    }

    /// Tunnel Request (from the peer) and Hole Punch Ack (from the RS), sealed with K_tun.
    pub(super) fn handle_tun_message(&mut self, now: Instant, from: SocketAddr, buf: &[u8]) -> Received {
        let Ok(env) = Envelope::new_checked(buf) else { return self.drops.count(DropReason::Malformed) };
        let Some(id) = self.tunnels.by_session(SessionId(env.key_id().0)) else {
            return self.drops.count(DropReason::UnknownKey);
        };
        let Some(mut t) = self.tunnels.get_mut(id) else { return self.drops.count(DropReason::UnknownKey) };
        let opened = t.k_tun.open(now, buf);
        drop(t);
        let (header, msg) = match opened {
            Ok(m) => m,
            Err(e) => return self.drops.count(DropReason::from(e)),
        };
        match msg {
            Message::TunnelRequest(tr) => self.handle_tunnel_request(now, id, from, header, tr),
            Message::HolePunchAck(a) => self.handle_hole_punch_ack(now, id, header, a),
            _ => self.drops.count(DropReason::Unexpected),
        }
    }

    fn handle_hole_punch_ack(&mut self, now: Instant, id: TunnelId, header: Header, _a: HolePunchAck) -> Received {
        let Some(mut t) = self.tunnels.get_mut(id) else { return Received::Handled };
        if header.sender != Sender::Rs {
            return self.drops.count(DropReason::Unauthorized);
        }
        if !matches!(t.state, TunnelState::Punching { .. }) {
            // A keepalive's, a handover's or a liveness check's punch was acknowledged:
            // the relay still knows the session.
            t.heard(now);
            if let Some(Established { route: Route::Relay { probe, .. }, .. }) = t.established_mut() {
                if matches!(probe, Some(RelayProbe::Punch(_))) {
                    *probe = None;
                }
            }
            return Received::Handled;
        }
        if t.gateway {
            // The RS is the other end and holds the session: the tunnel is up.
            let key = t.k_tun.key().gateway_data_key();
            let (Some(rs), expires) = (t.relay, t.k_tun.expires()) else { return Received::Handled };
            let Ok(data) = Channel::new(key, KeyId(t.session.0), Sender::Initiator, expires) else {
                return Received::Handled;
            };
            t.state = TunnelState::Established(Established::new(now, data, Some(rs), rs));
            t.up(now);
            drop(t);
            self.tunnel_established(now, id);
        } else if t.role == TunnelRole::Initiate {
            drop(t);
            self.start_tunnel_request(now, id);
        } else {
            t.state = TunnelState::ExpectTunnelRequest { until: now + AWAIT_TUNNEL_REQUEST };
        }
        Received::Handled
    }

    fn handle_tunnel_request(
        &mut self,
        now: Instant,
        id: TunnelId,
        from: SocketAddr,
        header: Header,
        tr: TunnelRequest,
    ) -> Received {
        let Some(me) = self.fqdn().cloned() else { return self.drops.count(DropReason::Stale) };
        let Some(my_virtual) = self.virtual_addrs else { return self.drops.count(DropReason::Stale) };
        let lifetime = self.cfg.tunnel_key_lifetime;
        let Some(mut t) = self.tunnels.get_mut(id) else { return Received::Handled };
        let peer_sender = side_sender(if t.side == Side::Mn { Side::Cn } else { Side::Mn });
        if header.sender != peer_sender || t.role != TunnelRole::Await {
            return self.drops.count(DropReason::Unauthorized);
        }
        if tr.initiator != t.peer.fqdn || tr.virtual_addrs != t.peer.virtual_addrs {
            return self.drops.count(DropReason::Unauthorized);
        }
        let k_mncn = match (&tr.wrapped, &t.k_tmp, &t.peer_key, &self.cfg.key_pair) {
            (WrappedKey::Tmp(w), Some(k_tmp), _, _) => unwrap_with_tmp(k_tmp, t.session, &t.peer.fqdn, &me, w),
            (WrappedKey::Public(w), _, Some(peer), Some(own)) => unwrap_from_peer(own, &me, peer, t.session, w),
            _ => Err(CryptoError::BadPublicKey),
        };
        let k_mncn = match k_mncn {
            Ok(k) => k,
            Err(e) => {
                log::warn!("Tunnel Request from {} does not unwrap: {e}", t.peer.fqdn);
                return self.drops.count(DropReason::Crypto);
            }
        };
        let msg = Message::TunnelResponse(TunnelResponse { virtual_addrs: my_virtual });
        // The responder holds K_mncn only once established.
        match t.established_mut() {
            // The initiator retransmitted (our response was lost): answer again, where it
            // is now (it may have moved since).
            Some(e) if *e.mncn.key() == k_mncn => {
                if let Route::Direct { to, .. } = &mut e.route {
                    *to = from;
                }
                let sealed = t.seal_mncn(now, from, &msg);
                drop(t);
                self.send_udp(sealed);
            }
            Some(_) => return self.drops.count(DropReason::Stale),
            None => {
                let Ok(mncn) = Channel::new(k_mncn, KeyId(t.session.0), Sender::Responder, now + lifetime) else {
                    return self.drops.count(DropReason::Malformed);
                };
                t.state = TunnelState::Established(Established::new(now, mncn, t.relay, from));
                t.up(now);
                drop(t);
                self.tunnel_established(now, id);
                let sealed = self.tunnels.get_mut(id).and_then(|mut t| t.seal_mncn(now, from, &msg));
                self.send_udp(sealed);
            }
        }
        Received::Handled
    }

    /// The tunnel `id` came up ([`Tunnel::establish`]): supersede older ones to the
    /// same peer, answer the DNS hook, start route optimization.
    fn tunnel_established(&mut self, now: Instant, id: TunnelId) {
        let route_opt = self.cfg.route_optimization;
        let Some(t) = self.tunnels.get(id) else { return };
        let (session, peer, virtual_addrs, path) = (t.session, t.peer.fqdn.clone(), t.peer.virtual_addrs, t.path());
        log::info!("tunnel {session} to {peer} is up ({path:?}, via {:?})", t.send_to());
        // A newer negotiation with the same peer replaces older ones after a grace
        // period. An older one that comes up late (its response was delayed past a
        // handover) is itself the one replaced.
        let newer_up = self.tunnels.iter().any(|(o, t)| t.peer.fqdn == peer && o > id && t.is_established());
        let replaced: Vec<TunnelId> = self
            .tunnels
            .iter()
            .filter(|(o, t)| {
                let older = *o < id && t.peer.fqdn == peer;
                let me = *o == id;
                t.is_live() && ((older && !newer_up) || (me && newer_up))
            })
            .map(|(o, _)| o)
            .collect();
        for o in replaced {
            if let Some(mut t) = self.tunnels.get_mut(o) {
                t.superseded_until = Some(now + SUPERSEDED_GRACE);
            }
        }
        self.emit(NodeEvent::TunnelUp { session, peer: peer.clone(), path });
        self.complete_resolves(&peer, virtual_addrs);
        if route_opt && path == PathKind::Relay {
            self.start_probe(now, id);
            if let Some(t) = self.tunnels.get(id) {
                // The DC's verdict on both NATs asks for a search of ports (spray.rs), at
                // the peer's IPv4 outside address.
                let peer = t.peer.endpoints.iter().find(|a| a.is_ipv4()).copied();
                if let (Some(peer), traversal) = (peer, t.traversal) {
                    self.locals.plan(now, session, traversal, peer);
                }
            }
        }
    }

    /// Route optimization: probe the peer's observed addresses directly.
    fn start_probe(&mut self, now: Instant, id: TunnelId) {
        let Some(t) = self.tunnels.get(id) else { return };
        let mut targets: Vec<SocketAddr> = t.peer.endpoints.iter().filter(|a| self.has_family(a)).copied().collect();
        if let Some(seen) = t.heard_direct.filter(|a| !targets.contains(a)) {
            targets.push(seen);
        }
        if targets.is_empty() {
            return;
        }
        let probe_id = self.rng.next_u32();
        let Some(mut t) = self.tunnels.get_mut(id) else { return };
        t.heard_direct = None;
        let mut sends = Vec::with_capacity(targets.len());
        for &dst in &targets {
            sends.push(t.path_probe(now, probe_id, Some(dst)));
        }
        if let Some(Established { route: Route::Relay { probe, .. }, .. }) = t.established_mut() {
            *probe = Some(RelayProbe::Direct(Probe { id: probe_id, targets, retry: Retry::new(now, probe_policy()) }));
        }
        drop(t);
        for s in sends {
            self.send_udp(s);
        }
    }

    /// Tunnel Response, Path Probe and Path Probe Ack, sealed with K_mncn.
    pub(super) fn handle_mncn_message(&mut self, now: Instant, local: Local, from: SocketAddr, buf: &[u8]) -> Received {
        let Ok(env) = Envelope::new_checked(buf) else { return self.drops.count(DropReason::Malformed) };
        let Some(id) = self.tunnels.by_session(SessionId(env.key_id().0)) else {
            return self.drops.count(DropReason::UnknownKey);
        };
        let Some(mut t) = self.tunnels.get_mut(id) else { return self.drops.count(DropReason::UnknownKey) };
        let Some(ch) = t.mncn_mut() else { return self.drops.count(DropReason::Stale) };
        let (_, msg, newest) = match ch.open_ordered(now, buf) {
            Ok(m) => m,
            Err(e) => return self.drops.count(DropReason::from(e)),
        };
        t.heard(now);
        if self.locals.searching() {
            // Perhaps the answer to a search of ports (spray.rs): the path it came on works.
            let session = t.session;
            drop(t);
            if self.search_heard(now, session, local, from) {
                self.switch_to_direct(now, id, from);
            }
            let Some(t2) = self.tunnels.get_mut(id) else { return Received::Handled };
            t = t2;
        }
        match msg {
            Message::TunnelResponse(r) => {
                if !matches!(t.state, TunnelState::ExpectTunnelResponse { .. }) {
                    return Received::Handled; // duplicate response
                }
                if r.virtual_addrs != t.peer.virtual_addrs {
                    return self.drops.count(DropReason::Unauthorized);
                }
                t.establish(now, from);
                drop(t);
                self.tunnel_established(now, id);
                Received::Handled
            }
            Message::PathProbe(p) => {
                if !t.is_established() && t.relay.is_some_and(|rs| rs != from) {
                    t.heard_direct = Some(from);
                }
                // One probe id moves us once: a search's copies of it from its other
                // sockets, which a NAT that filters by address alone lets in too, would
                // each look like a move and send the recent packets again.
                let follow = newest && t.followed_probe != Some(p.probe_id);
                if follow && t.send_to().is_some_and(|to| to != from) {
                    t.followed_probe = Some(p.probe_id);
                }
                drop(t);
                if follow {
                    self.follow_peer(now, id, from);
                }
                let msg = Message::PathProbeAck(PathProbeAck { probe_id: p.probe_id, observed: from });
                let sealed = self.tunnels.get_mut(id).and_then(|mut t| t.seal_mncn(now, from, &msg));
                self.send_udp(sealed);
                Received::Handled
            }
            Message::PathProbeAck(a) => {
                let relay = t.relay;
                let switch = match t.established_mut().map(|e| &mut e.route) {
                    Some(Route::Relay { probe, .. })
                        if probe.as_ref().is_some_and(|p| matches!(p, RelayProbe::Direct(p) if p.id == a.probe_id)) =>
                    {
                        // The peer answered on the relay: the direct path is not shown
                        // to work, and this round is over.
                        if relay == Some(from) {
                            *probe = None;
                        }
                        relay != Some(from)
                    }
                    Some(Route::Direct { probe, .. }) if probe.as_ref().is_some_and(|p| p.id == a.probe_id) => {
                        *probe = None; // the handover probe got through
                        false
                    }
                    _ => false,
                };
                drop(t);
                if switch {
                    self.switch_to_direct(now, id, from);
                } else if newest {
                    self.follow_peer(now, id, from);
                }
                Received::Handled
            }
            _ => self.drops.count(DropReason::Unexpected),
        }
    }

    /// An authenticated packet came from `from`. On a direct path the newest source is
    /// where the peer is now (it moved, or its NAT rebound); on a relayed path, a packet
    /// straight from the peer means it found the direct path. Call it only for the newest
    /// packet from the peer ([`crate::crypto::Opened::newest`]): an older one accepted late
    /// may have been delayed on a path the peer has left, and following it would point us
    /// back there (and send the recent packets there again).
    fn follow_peer(&mut self, now: Instant, id: TunnelId, from: SocketAddr) {
        // Nearly always the peer is where we send: nothing to change.
        if self.tunnels.get(id).is_none_or(|t| t.send_to().is_none_or(|to| to == from)) {
            return;
        }
        let Some(mut t) = self.tunnels.get_mut(id) else { return };
        let (session, relay) = (t.session, t.relay);
        let old = match t.established_mut().map(|e| &mut e.route) {
            Some(Route::Relay { rs, .. }) if *rs != from && relay != Some(from) => {
                drop(t);
                self.switch_to_direct(now, id, from);
                return;
            }
            // Still in flight through the relay, or the peer has not yet seen the direct
            // path work: the RS is not where the peer is. Keep sending directly; its next
            // direct packet moves it too.
            Some(Route::Direct { to, .. }) if *to != from && relay != Some(from) => core::mem::replace(to, from),
            _ => return,
        };
        log::info!("peer {} of tunnel {session} now at {from}", t.peer.fqdn);
        drop(t);
        // What went to the old address since the peer left it is lost: send the recent
        // packets again (see resend.rs).
        let again = self.recent.redirect(now, session, old, from);
        self.resent += again.len() as u64;
        for b in again {
            self.transmit(Via::Udp, from, b);
        }
    }

    fn switch_to_direct(&mut self, now: Instant, id: TunnelId, to: SocketAddr) {
        let Some(mut t) = self.tunnels.get_mut(id) else { return };
        let Some(e) = t.established_mut() else { return };
        e.route = Route::Direct { to, probe: None, check: None };
        let (session, peer) = (t.session, t.peer.fqdn.clone());
        log::info!("tunnel {session} to {peer}: direct path {to} works; leaving the relay");
        let punch = t.hole_punch(now, true);
        drop(t);
        // Route optimization got there first: a search for this tunnel is over.
        self.search_over(now, session);
        self.send_udp(punch);
        self.emit(NodeEvent::PathChanged { session, peer, path: PathKind::Direct });
    }

    /// A data packet: open it in place and hand back the inner packet if it is from the
    /// peer's virtual address to ours (anything else is dropped: a peer may only send as
    /// itself).
    pub(super) fn handle_data(&mut self, now: Instant, local: Local, from: SocketAddr, buf: &mut [u8]) -> Received {
        let Ok(env) = Envelope::new_checked(&buf[..]) else { return self.drops.count(DropReason::Malformed) };
        let Some(id) = self.tunnels.by_session(SessionId(env.key_id().0)) else {
            return self.drops.count(DropReason::UnknownKey);
        };
        let Some(mut t) = self.tunnels.get_mut(id) else { return self.drops.count(DropReason::UnknownKey) };
        let Some(ch) = t.mncn_mut() else { return self.drops.count(DropReason::Stale) };
        let opened = ch.open_in_place(now, buf);
        drop(t);
        self.data_opened(now, local, from, id, opened, buf)
    }

    /// The tunnel a data datagram arriving on `local` would be opened with, if it can go
    /// in a batch ([`Node::handle_datagrams_on`]) with the same results as one at a time:
    /// a data packet of a tunnel that holds K_mncn, while no search for a direct path
    /// runs. (Handling a data packet changes nothing this depends on, except through a
    /// search, which may close `local` or end on the packet.)
    pub(super) fn data_batch_tunnel(&self, local: Local, buf: &[u8]) -> Option<TunnelId> {
        if self.locals.searching() || (local != Local::MAIN && !self.locals.is_open(local)) {
            return None;
        }
        let env = Envelope::new_checked(buf).ok()?;
        if env.msg_type() != MsgType::Data {
            return None;
        }
        let id = self.tunnels.by_session(SessionId(env.key_id().0))?;
        self.tunnels.get(id)?.mncn().map(|_| id)
    }

    /// Data datagrams of tunnel `id` ([`Node::data_batch_tunnel`]), at most
    /// `DATA_RUN_MAX`: opened with one multi-buffer call, then each handled in order as
    /// [`Node::handle_data`] would, into `out`.
    pub(super) fn handle_data_run(
        &mut self,
        now: Instant,
        local: Local,
        id: TunnelId,
        datagrams: &mut [(SocketAddr, &mut [u8])],
        out: &mut [Received],
    ) {
        let mut opened: heapless::Vec<Result<Opened, CryptoError>, DATA_RUN_MAX> = heapless::Vec::new();
        {
            let mut bufs: heapless::Vec<&mut [u8], DATA_RUN_MAX> = heapless::Vec::new();
            for (_, b) in datagrams.iter_mut() {
                if bufs.push(&mut **b).is_err() {
                    break;
                }
                let _ = opened.push(Err(CryptoError::Forged));
            }
            match self.tunnels.get_mut(id) {
                Some(mut t) => match t.mncn_mut() {
                    Some(ch) => ch.open_many_in_place(now, &mut bufs, &mut opened),
                    None => opened.iter_mut().for_each(|o| *o = Err(CryptoError::WrongKeyId)),
                },
                None => opened.iter_mut().for_each(|o| *o = Err(CryptoError::WrongKeyId)),
            }
        }
        for (((from, buf), o), r) in datagrams.iter_mut().zip(out.iter_mut()).zip(opened) {
            *o = self.data_opened(now, local, *from, id, r, buf);
        }
    }

    /// What follows opening a data packet of tunnel `id` from `from` on `local`.
    fn data_opened(
        &mut self,
        now: Instant,
        local: Local,
        from: SocketAddr,
        id: TunnelId,
        opened: Result<Opened, CryptoError>,
        buf: &[u8],
    ) -> Received {
        let (range, newest) = match opened {
            Ok(o) => (o.body, o.newest),
            // A copy of a data packet (the network's, or sent again after a handover)
            // is a late duplicate; it was delivered once, or is too late to matter.
            Err(CryptoError::Replayed | CryptoError::TooOld) => return self.drops.count(DropReason::Stale),
            // The tunnel went between the check and the opening (not on any path today).
            Err(CryptoError::WrongKeyId) => return self.drops.count(DropReason::UnknownKey),
            Err(e) => return self.drops.count(DropReason::from(e)),
        };
        let my_virtual = self.virtual_addrs;
        let Some(mut t) = self.tunnels.get_mut(id) else { return self.drops.count(DropReason::UnknownKey) };
        let inner = buf.get(range.clone()).unwrap_or(&[]);
        // From the peer (its virtual address or a prefix it announced), to us (our
        // virtual address or a prefix we announced): nothing else crosses the tunnel.
        let ok = match (ip_endpoints(inner), my_virtual) {
            (Some((src, dst)), Some(me)) => {
                t.carries(src)
                    && (dst == IpAddr::V4(me.v4)
                        || dst == IpAddr::V6(me.v6)
                        || self.cfg.announced.iter().any(|p| p.contains(dst)))
            }
            _ => false,
        };
        if !ok {
            return self.drops.count(DropReason::Unauthorized);
        }
        t.heard(now);
        t.activity.last_data = now;
        t.activity.rx_packets += 1;
        let session = t.session;
        drop(t);
        // Data can be the first thing heard on the path a search of ports opened.
        if self.locals.searching() && self.search_heard(now, session, local, from) {
            self.switch_to_direct(now, id, from);
        }
        if newest {
            self.follow_peer(now, id, from);
        }
        Received::Ip(range)
    }

    /// Seals a packet from the TUN device in place for its tunnel and returns where to
    /// send it. `buf` is `[HEADER_LEN spare bytes | IP packet | TAG_LEN spare bytes]`.
    pub fn seal_ip(&mut self, now: Instant, buf: &mut [u8]) -> Result<Dest, SendError> {
        self.seal_ip_within(now, buf, |_| u16::MAX)
    }

    /// [`Node::seal_ip`] for a path that carries at most `path_mtu(destination)` bytes of
    /// inner packet: a larger packet is refused with [`SendError::TooBig`] before
    /// anything is sealed.
    pub fn seal_ip_within(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        path_mtu: impl Fn(&SocketAddr) -> u16,
    ) -> Result<Dest, SendError> {
        // A batch of one: the batch's path is the only one that seals data.
        let mut out = [Err(SendError::NotIp)];
        self.seal_ip_batch_within(now, &mut [buf], |_, to| path_mtu(to), &mut out);
        let [r] = out;
        r
    }

    /// [`Node::seal_ip_within`] for a batch of packets from the TUN device: `out[i]` is
    /// what `seal_ip_within(now, frames[i], ..)` would give after the frames before it,
    /// with the same effects (counters, the copies kept for a peer that moves, the
    /// tunnels' activity), but consecutive packets for one tunnel are sealed with one
    /// multi-buffer call ([`Channel::seal_many_in_place`]). A frame refused before
    /// sealing (not IP, no tunnel, too big) does not end such a run. `path_mtu` gets the
    /// inner packet and where it would go. Frames past the end of `out` are not touched.
    pub fn seal_ip_batch_within(
        &mut self,
        now: Instant,
        frames: &mut [&mut [u8]],
        path_mtu: impl Fn(&[u8], &SocketAddr) -> u16,
        out: &mut [Result<Dest, SendError>],
    ) {
        let n = frames.len().min(out.len());
        // The run being gathered: its tunnel and first frame; the frames routed to it are
        // the `Ok` ones of `out[start..]` (the refused ones have their error already).
        let mut run: Option<(TunnelId, usize)> = None;
        for i in 0..n {
            let Some(frame) = frames.get(i) else { break };
            let routed = self.route_frame(frame, &path_mtu);
            if let (Some((id, start)), Ok((to_id, _))) = (run, &routed) {
                if *to_id != id || i - start >= DATA_RUN_MAX {
                    self.seal_run(
                        now,
                        id,
                        frames.get_mut(start..i).unwrap_or_default(),
                        out.get_mut(start..i).unwrap_or_default(),
                    );
                    run = None;
                }
            }
            if let Some(o) = out.get_mut(i) {
                *o = match routed {
                    Ok((id, to)) => {
                        run.get_or_insert((id, i));
                        Ok(Dest { to, local: Local::MAIN })
                    }
                    Err(e) => Err(e),
                };
            }
        }
        if let Some((id, start)) = run {
            self.seal_run(
                now,
                id,
                frames.get_mut(start..n).unwrap_or_default(),
                out.get_mut(start..n).unwrap_or_default(),
            );
        }
    }

    /// The checks of [`Node::seal_ip_within`] before sealing: the tunnel and where to.
    fn route_frame(
        &mut self,
        buf: &[u8],
        path_mtu: &impl Fn(&[u8], &SocketAddr) -> u16,
    ) -> Result<(TunnelId, SocketAddr), SendError> {
        let end = buf.len().checked_sub(TAG_LEN).filter(|&e| e > HEADER_LEN).ok_or(SendError::NotIp)?;
        let inner = buf.get(HEADER_LEN..end).ok_or(SendError::NotIp)?;
        let (_, dst) = ip_endpoints(inner).ok_or(SendError::NotIp)?;
        let id = self.tunnels.route(dst).ok_or(SendError::NoTunnel(dst))?;
        let to = self.tunnels.get(id).and_then(Tunnel::send_to).ok_or(SendError::NoTunnel(dst))?;
        let mtu = path_mtu(inner, &to);
        if inner.len() > usize::from(mtu) {
            return Err(SendError::TooBig { mtu });
        }
        Ok((id, to))
    }

    /// Seals the frames of `frames` whose `out` is `Ok` (routed to tunnel `id`) and
    /// applies the effects of each in order; an `Ok` becomes the error sealing gave.
    fn seal_run(&mut self, now: Instant, id: TunnelId, frames: &mut [&mut [u8]], out: &mut [Result<Dest, SendError>]) {
        if self.tunnels.get(id).and_then(Tunnel::established).is_none() {
            // Not on any path: the run was routed to `id` just now, and routing, sealing
            // and the effects of sealing leave every tunnel's state as it was.
            for (f, o) in frames.iter().zip(out.iter_mut()).filter(|(_, o)| o.is_ok()) {
                let dst = f.get(HEADER_LEN..).and_then(ip_endpoints).map(|(_, d)| d);
                *o = Err(dst.map_or(SendError::NotIp, SendError::NoTunnel));
            }
            return;
        }
        let Some(mut t) = self.tunnels.get_mut(id) else { return };
        let session = t.session;
        let Some(e) = t.established_mut() else { return };
        let (to, direct) = (e.route.to(), matches!(e.route, Route::Direct { .. }));
        let mut bufs: heapless::Vec<&mut [u8], DATA_RUN_MAX> = heapless::Vec::new();
        for (f, _) in frames.iter_mut().zip(out.iter()).filter(|(_, o)| o.is_ok()) {
            let _ = bufs.push(&mut **f);
        }
        if e.mncn.seal_many_in_place(now, MsgType::Data, &mut bufs).is_err() {
            // Refused as a whole before any counter was taken: one at a time gives each
            // frame its own outcome, as without the batch.
            let routed = out.iter_mut().filter(|o| o.is_ok());
            for (f, o) in bufs.iter_mut().zip(routed) {
                if let Err(err) = e.mncn.seal_in_place(now, MsgType::Data, f) {
                    *o = Err(SendError::Crypto(err));
                }
            }
        }
        drop(bufs);
        let dest = Dest { to, local: self.locals.local_for(to) };
        for (f, o) in frames.iter_mut().zip(out.iter_mut()).filter(|(_, o)| o.is_ok()) {
            // Only a direct path loses packets to a moving peer; the RS stays where it is.
            if direct {
                self.recent.record(now, session, to, f);
            }
            t.sent(now, to);
            t.activity.last_data = now;
            t.activity.tx_packets += 1;
            *o = Ok(dest);
        }
    }

    /// Convenience over [`Node::seal_ip`] for callers that do not manage buffers: seals a
    /// copy of `packet` and queues it for [`crate::engine::Engine::poll_transmit`].
    pub fn send_ip(&mut self, now: Instant, packet: &[u8]) -> Result<(), SendError> {
        let mut buf = vec![0u8; HEADER_LEN + packet.len() + TAG_LEN];
        buf.get_mut(HEADER_LEN..HEADER_LEN + packet.len()).ok_or(SendError::NotIp)?.copy_from_slice(packet);
        let dst = self.seal_ip(now, &mut buf)?;
        self.transmit(Via::Udp, dst.to, buf);
        Ok(())
    }

    /// Runs the timers of the tunnels that are due, in creation order; a tunnel not due
    /// has nothing to do.
    pub(super) fn drive_tunnels(&mut self, now: Instant) {
        for id in self.tunnels.due(now) {
            if !self.drive_tunnel(now, id) {
                self.end_tunnel(now, id);
            }
        }
    }

    fn end_tunnel(&mut self, now: Instant, id: TunnelId) {
        let Some(t) = self.tunnels.remove(id) else { return };
        self.recent.forget(t.session);
        self.ended.retain(|(_, at)| now < *at + ENDED_MEMORY);
        if self.ended.len() >= ENDED_MAX {
            self.ended.pop_front();
        }
        self.ended.push_back((t.session, now));
        let peer = t.peer.fqdn.clone();
        let still = self.tunnels.iter().any(|(_, o)| o.peer.fqdn == peer && o.is_established());
        if t.is_established() && !still {
            self.emit(NodeEvent::TunnelDown { session: t.session, peer });
        } else if !t.is_established() && !still {
            self.fail_resolves(&peer, ResolveError::Timeout);
        }
    }

    /// The RS says it has no session `session` (it restarted): a hint, as unauthenticated
    /// as the silence it replaces, so it counts only for a tunnel that is on the relay at
    /// `from`, and only makes the side that opened the tunnel renegotiate through the DCs
    /// (once per tunnel: `rekey_requested`). The other side waits for that renegotiation,
    /// as after a silence (two renegotiations could leave each side on another session).
    pub(super) fn handle_relay_lost_session(&mut self, now: Instant, from: SocketAddr, session: SessionId) -> Received {
        let t = self.tunnels.by_session(session).and_then(|id| self.tunnels.get_mut(id));
        let Some(mut t) = t.filter(|t| t.on_relay() && t.relay == Some(from) && t.is_live()) else {
            return self.drops.count(DropReason::Unauthorized);
        };
        if t.rekey_requested || t.role != TunnelRole::Initiate {
            return Received::Handled;
        }
        t.rekey_requested = true;
        t.path_lost = true;
        if let Some(Established { route: Route::Relay { check, .. }, .. }) = t.established_mut() {
            *check = None;
        }
        let peer = t.peer.fqdn.clone();
        drop(t);
        log::warn!("the relay lost tunnel {session} to {peer}; renegotiating");
        self.request_direction(now, peer, Some(session));
        Received::Handled
    }

    /// Runs one tunnel's timers; false when the tunnel is over.
    fn drive_tunnel(&mut self, now: Instant, id: TunnelId) -> bool {
        let timing = *self.tunnels.timing();
        let Some(mut t) = self.tunnels.get_mut(id) else { return false };
        if t.superseded_until.is_some_and(|u| now >= u) || t.mncn().is_some_and(|c| c.is_expired(now)) {
            return false;
        }
        if t.k_tmp.is_some() && t.established_at().is_some_and(|e| now >= e + K_TMP_AFTER_SETUP) {
            t.k_tmp = None;
        }
        // What to send, in order, once the tunnel is let go of; at most one of the two
        // renegotiations below happens (either sets `rekey_requested`, which ends both).
        let mut sends = Vec::new();
        let mut renegotiate = None;
        if t.rekey_at(&timing).is_some_and(|at| now >= at) {
            t.rekey_requested = true;
            let (peer, session) = (t.peer.fqdn.clone(), t.session);
            log::info!("K_mncn of tunnel {session} to {peer} nears its end; renegotiating");
            renegotiate = Some((peer, session));
        }
        // A tunnel we send on but hear nothing back from: on a relay the RS died or
        // restarted and lost the session, or the path to it broke; on a direct path a NAT
        // on the way rebound to a new port, or the peer left. After PATH_SILENCE, ask: the
        // RS with punches, the peer with Path Probes, and the DC how it sees us now (a
        // Keepalive: its Ack shows our own NAT's rebinding, which is then handled as a
        // move, `handle_keepalive_ack`). If nothing is heard, the path is dead and the
        // tunnel is renegotiated through the DCs, which set it up again on a path that
        // works (docs/protocol.md, "Dead paths"). Anything heard meanwhile ends the check
        // (`Tunnel::heard`).
        let mut ask_dc = false;
        if t.watches_path() {
            let (session, role, a, relayed) = (t.session, t.role, t.activity, t.on_relay());
            let (mut ask, mut silent) = (false, false);
            if let Some(e) = t.established_mut() {
                let check = e.route.check_mut();
                match check {
                    Some(retry) if retry.due(now) => {
                        if retry.again(now) {
                            ask = true;
                        } else {
                            *check = None;
                            silent = true;
                            // Only the side that opened the tunnel renegotiates: when both
                            // did, each side could keep a different one of the two new
                            // sessions. The DC moves both sides.
                            if role != TunnelRole::Initiate {
                                log::debug!("the path of tunnel {session} stopped answering; the peer renegotiates");
                            }
                        }
                    }
                    None if a.unanswered >= PATH_SILENT_SENDS
                        && a.unanswered_since.is_some_and(|at| now >= at + PATH_SILENCE) =>
                    {
                        *check = Some(Retry::new(now, path_check_policy()));
                        ask = true;
                        ask_dc = !relayed;
                    }
                    _ => {}
                }
            }
            if silent {
                // The next check, if this side goes on waiting, only after another silence.
                t.activity.unanswered_since = Some(now);
            }
            if silent && role == TunnelRole::Initiate {
                t.rekey_requested = true;
                t.path_lost = true;
                let peer = t.peer.fqdn.clone();
                let what = if relayed { "relay" } else { "direct path" };
                log::warn!("the {what} of tunnel {session} to {peer} stopped answering; renegotiating");
                renegotiate = Some((peer, session));
            }
            if ask && relayed {
                sends.push(t.hole_punch(now, false));
            } else if ask {
                let id = self.rng.next_u32();
                sends.push(t.path_probe(now, id, None));
            }
        }
        let alive = t.drive_state(now, &timing, &mut sends, &mut self.rng, &self.links);
        drop(t);
        if ask_dc {
            self.check_mapping(now);
        }
        if let Some((peer, session)) = renegotiate {
            self.request_direction(now, peer, Some(session));
        }
        for s in sends {
            self.send_udp(s);
        }
        alive
    }
}
