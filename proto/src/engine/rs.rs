//! The Relay Server engine (spec 4.4, Fig. 7).
//!
//! A DC sets up a relay session with a Relay Direction that carries K_tun and nothing
//! else: the RS never holds K_tmp or K_mncn (spec section 3), and nothing in its state
//! could hold them. Both nodes hole-punch to the RS with K_tun, which tells the RS where
//! each one's NAT mapping is; from then on the RS forwards the session's packets between
//! the two learned endpoints. It authenticates what it can (hole punches and Tunnel
//! Requests, under K_tun) and forwards what it cannot read (Tunnel Responses, data and
//! probes under K_mncn) only between those two endpoints, within per-session and global
//! limits.
//!
//! Inputs: [`Engine`] calls. Forwarded packets come back from
//! [`Engine::handle_datagram`] as [`Received::Forward`]: the driver sends the unchanged
//! buffer to that address. Nothing is copied or allocated on that path, so a driver can
//! hand over a whole batch of received datagrams in place.
//!
//! A driver may run several relay workers (threads, each with its own socket of the same
//! port) over one engine behind a lock. It then says which worker handled a datagram
//! ([`Rs::handle_datagram_on_worker`]), which each session records for status, and takes
//! the datagrams the engine answers with ([`Rs::poll_udp_transmit`]) separately from what
//! goes on the DCs' TLS streams ([`Rs::poll_stream_transmit`]): a worker drains the first
//! before it lets go of the lock, so each answer leaves from the worker (and socket) whose
//! datagram asked for it.
//!
//! With a [`GatewayConfig`] the RS is also a gateway to ordinary hosts (see
//! [`super::gateway`]): a box's Data of a gateway session comes back from
//! [`Engine::handle_datagram`] as [`Received::Ip`], rewritten for the RS's TUN device, and
//! [`Rs::handle_gateway_packet`] takes what the TUN device gives back.

use super::gateway::{Gateway, GatewayConfig, GatewaySessionInfo, GatewayStats, Refuse};
use super::keyshare::SharedKeys;
use super::{
    ConfigError, DnsAnswer, DnsQuery, DropCounters, DropReason, Engine, PeerIdentity, Received, Role, StreamKind,
    Transmit, Via,
};
use crate::crypto::{parse_plain, plain, Channel};
use crate::keys::{DcRs, Tun};
use crate::time::{Duration, Instant};
use crate::wire::refusal::{Reason, Refusal};
use crate::wire::relay::{GatewayDirection, RelayDirection, RelayDirectionAck, RelayStatusAck};
use crate::wire::route::Side;
use crate::wire::tunnel::HolePunchAck;
use crate::wire::{Envelope, Fqdn, KeyId, List, Message, MsgType, Sender, SessionId};
use core::net::SocketAddr;
use std::collections::{HashMap, VecDeque};

/// How an RS is set up. [`RsConfig::new`] fills in the defaults.
#[derive(Clone, Debug)]
pub struct RsConfig {
    /// The RS's name (its certificate carries it).
    pub name: Fqdn,
    /// The addresses nodes send to (one per family the RS has), advertised to DCs.
    pub relay_addrs: Vec<SocketAddr>,
    /// Most relay sessions at once.
    pub max_sessions: usize,
    /// A session with no packet for this long ends.
    pub session_idle_timeout: Duration,
    /// Most packets per second one session may relay (both directions together).
    pub max_session_pps: u32,
    /// Most DC keys held.
    pub max_dc_keys: usize,
    /// Be a gateway to ordinary hosts (none: Gateway Directions are refused).
    pub gateway: Option<GatewayConfig>,
}

impl RsConfig {
    /// A configuration with defaults.
    pub fn new(name: Fqdn, relay_addrs: Vec<SocketAddr>) -> Self {
        RsConfig {
            name,
            relay_addrs,
            max_sessions: 10_000,
            session_idle_timeout: Duration::from_secs(90),
            max_session_pps: 500_000,
            max_dc_keys: 256,
            gateway: None,
        }
    }
}

/// One relayed tunnel.
struct Session {
    k_tun: Channel<Tun>,
    mn: Option<SocketAddr>,
    cn: Option<SocketAddr>,
    mn_released: bool,
    cn_released: bool,
    last_activity: Instant,
    /// Token bucket: packets allowed in the current second.
    second: u64,
    budget: u32,
    relayed: u64,
    /// The workers that relayed its packets, one bit each (bit `w % 64`).
    workers: u64,
}

impl Session {
    fn endpoint(&self, side: Side) -> Option<SocketAddr> {
        if side == Side::Mn {
            self.mn
        } else {
            self.cn
        }
    }

    /// Which side `from` is, if it is one.
    fn side_of(&self, from: SocketAddr) -> Option<Side> {
        if self.mn == Some(from) {
            Some(Side::Mn)
        } else if self.cn == Some(from) {
            Some(Side::Cn)
        } else {
            None
        }
    }
}

/// A relay session as status shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelaySessionInfo {
    /// The session.
    pub session: SessionId,
    /// MN's endpoint, once it punched.
    pub mn: Option<SocketAddr>,
    /// CN's endpoint, once it punched.
    pub cn: Option<SocketAddr>,
    /// Packets relayed.
    pub relayed: u64,
    /// The driver's workers that relayed them, one bit per worker (bit 0 when the driver
    /// has one).
    pub workers: u64,
}

/// The RS engine.
pub struct Rs {
    cfg: RsConfig,
    dc_keys: SharedKeys<DcRs>,
    sessions: HashMap<SessionId, Session>,
    /// The gateway's sessions, if it is one.
    gateway: Option<Gateway>,
    /// Datagrams to send, and messages for the DCs' streams.
    out: VecDeque<Transmit>,
    out_stream: VecDeque<Transmit>,
    drops: DropCounters,
    /// The second of `now`, and unknown-session refusals sent in it (rate limit).
    hints: crate::engine::hints::HintBudget,
}

/// Unknown-session refusals per second. They answer unauthenticated UDP, so they are
/// capped (and smaller than any packet that can trigger one) to be useless for reflection.
const HINTS_PER_SECOND: u32 = 50;
/// ... and per source address, so that one source cannot use up the total.
const HINTS_PER_SOURCE: u32 = 10;

impl core::fmt::Debug for Rs {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Rs")
            .field("name", &self.cfg.name)
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

fn sender_side(s: Sender) -> Option<Side> {
    match s {
        Sender::Mn => Some(Side::Mn),
        Sender::Cn => Some(Side::Cn),
        _ => None,
    }
}

fn other(side: Side) -> Side {
    if side == Side::Mn {
        Side::Cn
    } else {
        Side::Mn
    }
}

impl Rs {
    /// An RS; fails on a configuration it cannot work with.
    pub fn new(cfg: RsConfig) -> Result<Self, ConfigError> {
        if cfg.relay_addrs.is_empty() {
            return Err(ConfigError::new("relay_addrs", "at least one address nodes can reach"));
        }
        if cfg.relay_addrs.len() > 4 {
            return Err(ConfigError::new("relay_addrs", "at most four addresses"));
        }
        if let Some(g) = &cfg.gateway {
            if g.internal.1 > 30 {
                return Err(ConfigError::new("gateway.internal", "an IPv4 prefix of /30 or wider"));
            }
        }
        Ok(Rs {
            gateway: cfg.gateway.clone().map(Gateway::new),
            dc_keys: SharedKeys::new(cfg.max_dc_keys),
            cfg,
            sessions: HashMap::new(),
            out: VecDeque::new(),
            out_stream: VecDeque::new(),
            drops: DropCounters::default(),
            hints: crate::engine::hints::HintBudget::new(HINTS_PER_SECOND, HINTS_PER_SOURCE),
        })
    }

    /// The relay sessions.
    pub fn sessions(&self) -> Vec<RelaySessionInfo> {
        let mut v: Vec<_> = self
            .sessions
            .iter()
            .map(|(id, s)| RelaySessionInfo {
                session: *id,
                mn: s.mn,
                cn: s.cn,
                relayed: s.relayed,
                workers: s.workers,
            })
            .collect();
        v.sort_by_key(|s| s.session);
        v
    }

    /// Keys the RS holds, as (kind, fingerprint): only K_dcrs and K_tun, ever.
    pub fn held_keys(&self) -> Vec<(&'static str, u64)> {
        let mut v = Vec::new();
        self.dc_keys.held_keys(&mut v);
        for s in self.sessions.values() {
            v.push(("K_tun", s.k_tun.key().fingerprint()));
        }
        if let Some(g) = &self.gateway {
            g.held_keys(&mut v);
        }
        v
    }

    /// The gateway sessions (none if the RS is no gateway).
    pub fn gateway_sessions(&self) -> Vec<GatewaySessionInfo> {
        self.gateway.as_ref().map(Gateway::sessions).unwrap_or_default()
    }

    /// The gateway's counters, if the RS is one.
    pub fn gateway_stats(&self) -> Option<GatewayStats> {
        self.gateway.as_ref().map(Gateway::stats)
    }

    /// An IP packet from the gateway's TUN device (an ordinary host's answer): the
    /// datagram for the box, or nothing (dropped and counted).
    pub fn handle_gateway_packet(&mut self, now: Instant, packet: &[u8]) -> Option<Transmit> {
        let g = self.gateway.as_mut()?;
        g.host_packet(now, packet, &mut self.drops)
    }

    fn is_gateway_session(&self, session: SessionId) -> bool {
        self.gateway.as_ref().is_some_and(|g| g.contains(session))
    }

    /// [`Engine::handle_datagram`] for a driver with several relay workers: `worker` (its
    /// index) handled the datagram, which the session records if it relays it
    /// ([`RelaySessionInfo::workers`]). The checks and counters are the same for every
    /// worker.
    /// A gateway session's data is opened and rewritten in `buf` ([`Received::Ip`]).
    pub fn handle_datagram_on_worker(
        &mut self,
        now: Instant,
        from: SocketAddr,
        buf: &mut [u8],
        worker: usize,
    ) -> Received {
        let (ty, sealed, key_id) = match Envelope::new_checked(&buf[..]) {
            Ok(e) => (e.msg_type(), e.sealed(), e.key_id()),
            Err(e) => return self.drops.count(DropReason::from(e)),
        };
        if !sealed {
            return self.drops.count(DropReason::Unauthorized);
        }
        let session = SessionId(key_id.0);
        match ty {
            MsgType::RelayDirection | MsgType::RelayStatus | MsgType::GatewayDirection => {
                self.handle_dc_message(now, from, key_id, &buf[..])
            }
            MsgType::HolePunch if self.is_gateway_session(session) => {
                self.handle_gateway_punch(now, from, session, &buf[..])
            }
            MsgType::HolePunch => self.handle_hole_punch(now, from, session, &buf[..]),
            MsgType::TunnelRequest
            | MsgType::TunnelResponse
            | MsgType::Data
            | MsgType::PathProbe
            | MsgType::PathProbeAck => self.forward(now, from, session, ty, buf, worker),
            MsgType::Unknown(_) => self.drops.count(DropReason::Malformed),
            _ => self.drops.count(DropReason::Unexpected),
        }
    }

    /// The next datagram to send (an answer to a datagram: a hole-punch ack, a reply to
    /// a DC, an unknown-session hint), leaving what goes on streams.
    pub fn poll_udp_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    /// The next message for a DC's stream, leaving the datagrams.
    pub fn poll_stream_transmit(&mut self) -> Option<Transmit> {
        self.out_stream.pop_front()
    }

    fn relay_addrs(&self) -> List<SocketAddr, 4> {
        // `new` checked there are at most four.
        List::from_vec(self.cfg.relay_addrs.clone()).unwrap_or_default()
    }

    fn send_dc(&mut self, now: Instant, key_id: KeyId, to: SocketAddr, msg: &Message) {
        let Some((_, ch)) = self.dc_keys.get(key_id) else { return };
        match ch.seal(now, msg) {
            Ok(bytes) => self.out.push_back(Transmit { via: Via::Udp, dst: to, payload: bytes }),
            Err(e) => log::warn!("cannot seal for the DC: {e}"),
        }
    }

    fn handle_dc_message(&mut self, now: Instant, from: SocketAddr, key_id: KeyId, buf: &[u8]) -> Received {
        let Some((_, ch)) = self.dc_keys.get(key_id) else { return self.drops.count(DropReason::UnknownKey) };
        let (_, msg) = match ch.open(now, buf) {
            Ok(m) => m,
            Err(e) => return self.drops.count(DropReason::from(e)),
        };
        let reply = match msg {
            Message::RelayDirection(rd) => self.handle_relay_direction(now, rd),
            Message::GatewayDirection(gd) => self.handle_gateway_direction(now, gd),
            Message::RelayStatus(s) => Message::RelayStatusAck(RelayStatusAck {
                request_id: s.request_id,
                sessions: u32::try_from(self.sessions.len() + self.gateway.as_ref().map_or(0, Gateway::len))
                    .unwrap_or(u32::MAX),
                capacity: u32::try_from(self.cfg.max_sessions).unwrap_or(u32::MAX),
                relay_addrs: self.relay_addrs(),
            }),
            _ => return self.drops.count(DropReason::Unexpected),
        };
        self.send_dc(now, key_id, from, &reply);
        Received::Handled
    }

    fn handle_relay_direction(&mut self, now: Instant, rd: RelayDirection) -> Message {
        let ack = Message::RelayDirectionAck(RelayDirectionAck {
            request_id: rd.request_id,
            session: rd.session,
            relay_addrs: self.relay_addrs(),
        });
        if self.sessions.contains_key(&rd.session) {
            return ack; // a retransmission
        }
        if self.sessions.len() >= self.cfg.max_sessions {
            self.drops.count(DropReason::Limit);
            return Message::Refusal(Refusal::new(
                MsgType::RelayDirection,
                rd.request_id,
                Reason::Overloaded,
                "relay session table full",
            ));
        }
        let expires = now + rd.k_tun.lifetime.duration();
        let Ok(k_tun) = Channel::new(rd.k_tun.key, KeyId(rd.session.0), Sender::Rs, expires) else {
            return Message::Refusal(Refusal::new(
                MsgType::RelayDirection,
                rd.request_id,
                Reason::Internal,
                "unusable K_tun",
            ));
        };
        log::info!("relay session {} set up", rd.session);
        self.sessions.insert(
            rd.session,
            Session {
                k_tun,
                mn: None,
                cn: None,
                mn_released: false,
                cn_released: false,
                last_activity: now,
                second: 0,
                budget: 0,
                relayed: 0,
                workers: 0,
            },
        );
        ack
    }

    fn handle_gateway_direction(&mut self, now: Instant, gd: GatewayDirection) -> Message {
        let refusal = |reason, detail: &str| {
            Message::Refusal(Refusal::new(MsgType::GatewayDirection, gd.request_id, reason, detail))
        };
        let Some(g) = self.gateway.as_mut() else {
            self.drops.count(DropReason::Unexpected);
            return refusal(Reason::Unauthorized, "this relay is no gateway");
        };
        match g.open(now, gd.session, gd.k_tun, gd.node, gd.synthetic, gd.real) {
            Ok(()) => Message::RelayDirectionAck(RelayDirectionAck {
                request_id: gd.request_id,
                session: gd.session,
                relay_addrs: self.relay_addrs(),
            }),
            Err(Refuse::Full) => {
                self.drops.count(DropReason::Limit);
                refusal(Reason::Overloaded, "gateway session table full")
            }
            Err(Refuse::BadKey) => refusal(Reason::Internal, "unusable K_tun"),
        }
    }

    /// A box's hole punch on a gateway session: authenticated with K_tun, it says where
    /// the box is now (answers go there).
    fn handle_gateway_punch(&mut self, now: Instant, from: SocketAddr, session: SessionId, buf: &[u8]) -> Received {
        let Some(s) = self.gateway.as_mut().and_then(|g| g.get_mut(session)) else {
            return self.drops.count(DropReason::UnknownKey);
        };
        let (header, msg) = match s.k_tun.open(now, buf) {
            Ok(m) => m,
            Err(e) => return self.drops.count(DropReason::from(e)),
        };
        let Message::HolePunch(p) = msg else { return self.drops.count(DropReason::Unexpected) };
        if header.sender != Sender::Mn || p.side != Side::Mn {
            return self.drops.count(DropReason::Unauthorized);
        }
        s.last_activity = now;
        if s.endpoint != Some(from) {
            log::info!("gateway session {session}: the box is at {from}");
        }
        let again = s.moved(now, from);
        self.out.extend(again);
        let ack = Message::HolePunchAck(HolePunchAck { observed: from });
        match s.k_tun.seal(now, &ack) {
            Ok(bytes) => self.out.push_back(Transmit { via: Via::Udp, dst: from, payload: bytes }),
            Err(e) => log::warn!("cannot seal hole-punch ack: {e}"),
        }
        Received::Handled
    }

    /// A hole punch: authenticate it with K_tun and record the sender's endpoint.
    fn handle_hole_punch(&mut self, now: Instant, from: SocketAddr, session: SessionId, buf: &[u8]) -> Received {
        let Some(s) = self.sessions.get_mut(&session) else { return self.refuse_unknown_session(now, from, buf) };
        let (header, msg) = match s.k_tun.open(now, buf) {
            Ok(m) => m,
            Err(e) => return self.drops.count(DropReason::from(e)),
        };
        let Message::HolePunch(p) = msg else { return self.drops.count(DropReason::Unexpected) };
        if sender_side(header.sender) != Some(p.side) {
            return self.drops.count(DropReason::Unauthorized);
        }
        s.last_activity = now;
        match p.side {
            Side::Mn => {
                s.mn = Some(from);
                s.mn_released |= p.release;
            }
            _ => {
                s.cn = Some(from);
                s.cn_released |= p.release;
            }
        }
        let done = s.mn_released && s.cn_released;
        let ack = Message::HolePunchAck(HolePunchAck { observed: from });
        match s.k_tun.seal(now, &ack) {
            Ok(bytes) => self.out.push_back(Transmit { via: Via::Udp, dst: from, payload: bytes }),
            Err(e) => log::warn!("cannot seal hole-punch ack: {e}"),
        }
        if done {
            // Route optimization moved both nodes to a direct path.
            log::info!("relay session {session} released by both nodes");
            self.sessions.remove(&session);
        }
        Received::Handled
    }

    /// A node's packet for a session we do not have (we restarted and lost it, or it
    /// ended): tell the node in the clear, naming the session in the header, so that it
    /// sets up its tunnel again through the DCs rather than after a silence. A hint only:
    /// the node acts on it just by asking its DC, over its authenticated channel. The
    /// refusal (23 bytes, no detail) is smaller than any sealed packet (32 or more).
    fn refuse_unknown_session(&mut self, now: Instant, to: SocketAddr, buf: &[u8]) -> Received {
        if self.hints.allow(now, &to) {
            if let Ok(env) = Envelope::new_checked(buf) {
                let refusal = Refusal::new(env.msg_type(), crate::wire::RequestId(0), Reason::UnknownKey, "");
                let mut header = crate::wire::Header::plain(MsgType::Refusal, Sender::Rs);
                header.key_id = env.key_id();
                let mut bytes = header.to_bytes().to_vec();
                bytes.extend_from_slice(&Message::Refusal(refusal).body_to_vec());
                self.out.push_back(Transmit { via: Via::Udp, dst: to, payload: bytes });
            }
        }
        self.drops.count(DropReason::UnknownKey)
    }

    /// Anything else for a session: forward between the two learned endpoints.
    fn forward(
        &mut self,
        now: Instant,
        from: SocketAddr,
        session: SessionId,
        ty: MsgType,
        buf: &mut [u8],
        worker: usize,
    ) -> Received {
        let max_pps = self.cfg.max_session_pps;
        let Some(s) = self.sessions.get_mut(&session) else {
            // Not a relayed session: a gateway's (looked up only here, so a relayed
            // session's packets cost nothing more), or none.
            if let Some(g) = self.gateway.as_mut().filter(|g| g.contains(session)) {
                if ty == MsgType::Data {
                    return g.box_packet(now, session, buf, &mut self.drops);
                }
                return self.drops.count(DropReason::Unexpected);
            }
            return self.refuse_unknown_session(now, from, buf);
        };
        let Some(side) = s.side_of(from) else { return self.drops.count(DropReason::Unauthorized) };
        if ty == MsgType::TunnelRequest {
            // Under K_tun, so the RS can and does check it before passing it on. Only the
            // outer layer: K_mncn inside is wrapped with K_tmp or a public key.
            match s.k_tun.open(now, buf) {
                Ok((h, _)) if sender_side(h.sender) == Some(side) => {}
                Ok(_) => return self.drops.count(DropReason::Unauthorized),
                Err(e) => return self.drops.count(DropReason::from(e)),
            }
        }
        let Some(to) = s.endpoint(other(side)) else { return self.drops.count(DropReason::Stale) };
        let second = now.as_millis() / 1000;
        if s.second != second {
            s.second = second;
            s.budget = max_pps;
        }
        if s.budget == 0 {
            return self.drops.count(DropReason::Limit);
        }
        s.budget -= 1;
        s.last_activity = now;
        s.relayed += 1;
        s.workers |= 1 << (worker % 64);
        Received::Forward(to)
    }
}

impl Engine for Rs {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, buf: &mut [u8]) -> Received {
        self.handle_datagram_on_worker(now, from, buf, 0)
    }

    fn handle_stream(
        &mut self,
        now: Instant,
        kind: StreamKind,
        from: SocketAddr,
        peer: Option<&PeerIdentity>,
        frame: &[u8],
    ) -> Received {
        let Some(peer) = peer.filter(|p| kind == StreamKind::Tls && p.role == Role::Dc) else {
            return self.drops.count(DropReason::Unauthorized);
        };
        match parse_plain(frame) {
            Ok((_, Message::KeyShare(ks))) => match self.dc_keys.accept(now, &peer.name, Sender::Rs, ks) {
                Some(ack) => {
                    let via = Via::Stream { kind: StreamKind::Tls, server: None };
                    self.out_stream.push_back(Transmit { via, dst: from, payload: plain(Sender::Rs, &ack) });
                    Received::Handled
                }
                None => self.drops.count(DropReason::Unauthorized),
            },
            Ok(_) => self.drops.count(DropReason::Unexpected),
            Err(e) => self.drops.count(DropReason::from(e)),
        }
    }

    fn handle_stream_closed(&mut self, _now: Instant, _kind: StreamKind, _peer: SocketAddr) {}

    fn handle_dns(&mut self, _now: Instant, _id: u64, _answer: DnsAnswer) {}

    fn handle_timeout(&mut self, now: Instant) {
        if let Some(g) = self.gateway.as_mut() {
            g.expire(now);
        }
        let idle = self.cfg.session_idle_timeout;
        self.sessions.retain(|id, s| {
            let keep = now < s.last_activity + idle && !s.k_tun.is_expired(now);
            if !keep {
                log::info!("relay session {id} ended (idle or key expired)");
            }
            keep
        });
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out_stream.pop_front().or_else(|| self.out.pop_front())
    }

    fn poll_dns(&mut self) -> Option<DnsQuery> {
        None
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let idle = self.cfg.session_idle_timeout;
        let relayed = self.sessions.values().map(|s| (s.last_activity + idle).min(s.k_tun.expires())).min();
        [relayed, self.gateway.as_ref().and_then(Gateway::deadline)].into_iter().flatten().min()
    }

    fn drops(&self) -> &DropCounters {
        &self.drops
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{Key, KeyGrant};
    use crate::wire::keyshare::{KeyShare, SharedKey};
    use crate::wire::tunnel::HolePunch;
    use crate::wire::{Header, Lifetime, RequestId};

    const DC: SocketAddr = SocketAddr::new(core::net::IpAddr::V4(core::net::Ipv4Addr::new(192, 0, 2, 21)), 4460);
    const MN: SocketAddr = SocketAddr::new(core::net::IpAddr::V4(core::net::Ipv4Addr::new(198, 51, 100, 2)), 1024);
    const CN: SocketAddr = SocketAddr::new(core::net::IpAddr::V4(core::net::Ipv4Addr::new(203, 0, 113, 2)), 2048);
    const SESSION: SessionId = SessionId(0x0102_0305);

    fn grant<K: crate::keys::KeyKind>(key: [u8; 16]) -> KeyGrant<K> {
        KeyGrant { key: Key::from_bytes(key), lifetime: Lifetime(3600) }
    }

    fn name(s: &str) -> Fqdn {
        Fqdn::new(s).unwrap()
    }

    /// An RS with a DC's key (over TLS) and one session both of whose nodes punched.
    /// Checks on the way that stream answers and datagram answers come apart.
    fn rs_with_session(now: Instant) -> Rs {
        let (mut rs, mut dcrs) = rs_and_dc(now, false);
        let rd = Message::RelayDirection(RelayDirection {
            request_id: RequestId(2),
            session: SESSION,
            k_tun: grant(*b"k_tun of 16 byte"),
        });
        let mut bytes = dcrs.seal(now, &rd).unwrap();
        assert_eq!(rs.handle_datagram(now, DC, &mut bytes), Received::Handled);
        assert_eq!(rs.poll_stream_transmit(), None, "a Relay Direction is answered with a datagram");
        assert!(rs.poll_udp_transmit().is_some_and(|t| t.via == Via::Udp && t.dst == DC));

        for (side, sender, from) in [(Side::Mn, Sender::Mn, MN), (Side::Cn, Sender::Cn, CN)] {
            let mut tun = Channel::<Tun>::new(
                Key::from_bytes(*b"k_tun of 16 byte"),
                KeyId(SESSION.0),
                sender,
                Instant::FAR_FUTURE,
            )
            .unwrap();
            let mut bytes = tun.seal(now, &Message::HolePunch(HolePunch { side, release: false })).unwrap();
            assert_eq!(rs.handle_datagram(now, from, &mut bytes), Received::Handled);
            assert!(rs.poll_udp_transmit().is_some_and(|t| t.dst == from), "the hole-punch ack");
        }
        rs
    }

    /// A Data datagram of the session (K_mncn inside: the RS forwards it unread).
    fn data(sender: Sender) -> Vec<u8> {
        let header = Header { msg_type: MsgType::Data, sealed: true, sender, key_id: KeyId(SESSION.0), counter: 9 };
        let mut bytes = header.to_bytes().to_vec();
        bytes.extend_from_slice(&[0x5a; 48]);
        bytes
    }

    #[test]
    fn each_session_records_the_workers_that_relayed_it() {
        let now = Instant::from_millis(1_000_000);
        let mut rs = rs_with_session(now);
        assert_eq!(rs.handle_datagram_on_worker(now, MN, &mut data(Sender::Initiator), 3), Received::Forward(CN));
        assert_eq!(rs.handle_datagram_on_worker(now, CN, &mut data(Sender::Responder), 3), Received::Forward(MN));
        let s = rs.sessions();
        assert_eq!((s[0].relayed, s[0].workers), (2, 1 << 3));
        // The checks are the same on any worker: a stranger's datagram is not relayed.
        let stranger: SocketAddr = "198.51.100.9:1024".parse().unwrap();
        let r = rs.handle_datagram_on_worker(now, stranger, &mut data(Sender::Initiator), 5);
        assert_eq!(r, Received::Dropped(DropReason::Unauthorized));
        assert_eq!(rs.handle_datagram(now, MN, &mut data(Sender::Initiator)), Received::Forward(CN));
        let s = rs.sessions();
        assert_eq!((s[0].relayed, s[0].workers), (3, 1 << 3 | 1));
        assert_eq!(rs.poll_transmit(), None);
    }

    const NODE: core::net::Ipv4Addr = core::net::Ipv4Addr::new(198, 18, 1, 2);
    const SYNTHETIC: core::net::Ipv4Addr = core::net::Ipv4Addr::new(198, 18, 100, 1);
    const REAL: core::net::Ipv4Addr = core::net::Ipv4Addr::new(198, 19, 80, 80);
    const INTERNAL: core::net::Ipv4Addr = core::net::Ipv4Addr::new(100, 100, 0, 2);
    const K_TUN: [u8; 16] = *b"gateway k_tun 16";

    /// An RS with a DC's key (over TLS; checks that the stream answers it) and, if
    /// `gateway`, a gateway with 100.100.0.0/24.
    fn rs_and_dc(now: Instant, gateway: bool) -> (Rs, Channel<DcRs>) {
        let addr: SocketAddr = "192.0.2.30:4461".parse().unwrap();
        let mut cfg = RsConfig::new(name("rs1.test"), vec![addr]);
        if gateway {
            cfg.gateway = Some(GatewayConfig::new((core::net::Ipv4Addr::new(100, 100, 0, 0), 24)));
        }
        let mut rs = Rs::new(cfg).unwrap();
        let dc = PeerIdentity { name: name("dc.zone-a.test"), role: Role::Dc, public_key: None };
        let share = Message::KeyShare(KeyShare {
            request_id: RequestId(1),
            key_id: KeyId(77),
            key: SharedKey::DcRs(grant(*b"dc-rs key 16 byt")),
            from: name("dc.zone-a.test"),
        });
        let r = rs.handle_stream(now, StreamKind::Tls, DC, Some(&dc), &plain(Sender::Dc, &share));
        assert_eq!(r, Received::Handled);
        assert_eq!(rs.poll_udp_transmit(), None, "a Key Share is answered on its stream");
        assert!(rs.poll_stream_transmit().is_some_and(|t| matches!(t.via, Via::Stream { .. }) && t.dst == DC));
        let dcrs =
            Channel::<DcRs>::new(Key::from_bytes(*b"dc-rs key 16 byt"), KeyId(77), Sender::Dc, Instant::FAR_FUTURE)
                .unwrap();
        (rs, dcrs)
    }

    /// Directs gateway session `session` for the box and returns the RS's answer.
    fn direct_gateway(rs: &mut Rs, dcrs: &mut Channel<DcRs>, now: Instant, session: SessionId) -> Message {
        let gd = Message::GatewayDirection(GatewayDirection {
            request_id: RequestId(session.0),
            session,
            k_tun: grant(K_TUN),
            node: NODE,
            synthetic: SYNTHETIC,
            real: REAL,
        });
        let mut bytes = dcrs.seal(now, &gd).unwrap();
        assert_eq!(rs.handle_datagram(now, DC, &mut bytes), Received::Handled);
        let reply = rs.poll_udp_transmit().expect("an answer to the DC");
        dcrs.open(now, &reply.payload).unwrap().1
    }

    /// The box's two channels of a gateway session: K_tun (punches) and the data key.
    fn box_channels(session: SessionId) -> (Channel<Tun>, Channel<crate::keys::MnCn>) {
        let k = Key::<Tun>::from_bytes(K_TUN);
        let data = Channel::new(k.gateway_data_key(), KeyId(session.0), Sender::Initiator, Instant::FAR_FUTURE);
        (Channel::new(k, KeyId(session.0), Sender::Mn, Instant::FAR_FUTURE).unwrap(), data.unwrap())
    }

    fn punch(rs: &mut Rs, tun: &mut Channel<Tun>, now: Instant, from: SocketAddr) {
        let mut bytes = tun.seal(now, &Message::HolePunch(HolePunch { side: Side::Mn, release: false })).unwrap();
        assert_eq!(rs.handle_datagram(now, from, &mut bytes), Received::Handled);
    }

    fn sealed_packet(data: &mut Channel<crate::keys::MnCn>, now: Instant, dst: core::net::Ipv4Addr) -> Vec<u8> {
        let ip = crate::engine::gateway::tests::packet(crate::engine::gateway::tests::TCP_PROTO, NODE, dst, b"GET /");
        let body = crate::wire::data::DataBody::new(ip).unwrap();
        data.seal(now, &Message::Data(body)).unwrap()
    }

    #[test]
    fn a_gateway_session_carries_only_the_box_to_its_host_and_back() {
        let now = Instant::from_millis(1_000_000);
        let session = SessionId(0x6a7e_0001);
        let (mut rs, mut dcrs) = rs_and_dc(now, true);
        let ack = direct_gateway(&mut rs, &mut dcrs, now, session);
        assert!(matches!(ack, Message::RelayDirectionAck(a) if a.session == session), "acknowledged");
        let (mut tun, mut data) = box_channels(session);
        punch(&mut rs, &mut tun, now, MN);
        let punch_ack = rs.poll_udp_transmit().expect("the punch is acknowledged");
        assert_eq!(tun.open(now, &punch_ack.payload).map(|(h, _)| h.sender), Ok(Sender::Rs));

        // To the synthetic address: opened, and rewritten to leave from the internal one.
        let mut bytes = sealed_packet(&mut data, now, SYNTHETIC);
        let Received::Ip(r) = rs.handle_datagram(now, MN, &mut bytes) else { panic!("not for the TUN device") };
        let mut out = bytes[r].to_vec();
        assert_eq!((&out[12..16], &out[16..20]), (&INTERNAL.octets()[..], &REAL.octets()[..]));
        let mut fixed = out.clone();
        crate::engine::gateway::tests::fill_checksums(&mut fixed);
        assert_eq!(out, fixed, "checksums right after the rewrite");

        // Anything else the box sends is no one's business: dropped and counted.
        let mut other = sealed_packet(&mut data, now, core::net::Ipv4Addr::new(192, 0, 2, 99));
        assert_eq!(rs.handle_datagram(now, MN, &mut other), Received::Dropped(DropReason::Unauthorized));
        assert_eq!(rs.gateway_stats().map(|g| g.dropped_not_allowed), Some(1));

        // The host's answer goes back to the box, as from the synthetic address.
        out[12..20].copy_from_slice(&[REAL.octets(), INTERNAL.octets()].concat());
        crate::engine::gateway::tests::fill_checksums(&mut out);
        let t = rs.handle_gateway_packet(now, &out).expect("an answer for the box");
        assert_eq!(t.dst, MN);
        let (h, msg) = data.open(now, &t.payload).unwrap();
        assert_eq!(h.sender, Sender::Responder);
        let Message::Data(body) = msg else { panic!("data") };
        let ip = body.as_slice();
        assert_eq!((&ip[12..16], &ip[16..20]), (&SYNTHETIC.octets()[..], &NODE.octets()[..]));
        // From anyone but the host, to the internal address: not the box's business.
        out[12..16].copy_from_slice(&[192, 0, 2, 99]);
        assert_eq!(rs.handle_gateway_packet(now, &out), None);
        assert_eq!(rs.gateway_stats().map(|g| (g.to_hosts, g.to_boxes, g.dropped_unmapped)), Some((1, 1, 1)));

        // The box moves: its punch from the new address brings the recent answer again.
        let moved: SocketAddr = "198.19.5.2:4500".parse().unwrap();
        let later = now + Duration::from_millis(100);
        punch(&mut rs, &mut tun, later, moved);
        let again = rs.poll_udp_transmit().expect("the recent answer again");
        assert_eq!((again.dst, &again.payload), (moved, &t.payload), "the same sealed bytes, not sealed again");
        assert!(rs.poll_udp_transmit().is_some_and(|a| a.dst == moved), "then the punch's ack");
        assert_eq!(rs.handle_gateway_packet(later, &fixed_answer(&out)).map(|t| t.dst), Some(moved));
    }

    /// `packet` from the host again (source put back).
    fn fixed_answer(packet: &[u8]) -> Vec<u8> {
        let mut p = packet.to_vec();
        p[12..16].copy_from_slice(&REAL.octets());
        crate::engine::gateway::tests::fill_checksums(&mut p);
        p
    }

    #[test]
    fn a_renegotiated_gateway_session_keeps_the_internal_address() {
        let now = Instant::from_millis(1_000_000);
        let (mut rs, mut dcrs) = rs_and_dc(now, true);
        for s in [SessionId(11), SessionId(12)] {
            assert!(matches!(direct_gateway(&mut rs, &mut dcrs, now, s), Message::RelayDirectionAck(_)));
        }
        let sessions = rs.gateway_sessions();
        assert_eq!(sessions.len(), 2);
        assert!(sessions.iter().all(|s| s.internal == INTERNAL), "one address for the pair: {sessions:?}");
        // Both end: the address is free, but the next pair gets the next one (the
        // kernel may still hold translation entries of this one).
        let later = now + Duration::from_secs(301);
        rs.handle_timeout(later);
        assert!(rs.gateway_sessions().is_empty());
        assert!(matches!(direct_gateway(&mut rs, &mut dcrs, later, SessionId(13)), Message::RelayDirectionAck(_)));
        let next = core::net::Ipv4Addr::new(100, 100, 0, 3);
        assert_eq!(rs.gateway_sessions().first().map(|s| s.internal), Some(next));
    }

    #[test]
    fn a_box_that_moves_often_keeps_a_few_sessions_per_host_and_its_hosts_are_capped() {
        let now = Instant::from_millis(1_000_000);
        let (mut rs, mut dcrs) = rs_and_dc(now, true);
        // Twenty renegotiations to one host: the four most recent sessions stay.
        for n in 0..20u32 {
            let at = now + Duration::from_secs(u64::from(n));
            assert!(matches!(
                direct_gateway(&mut rs, &mut dcrs, at, SessionId(100 + n)),
                Message::RelayDirectionAck(_)
            ));
        }
        let sessions: Vec<u32> = rs.gateway_sessions().iter().map(|s| s.session.0).collect();
        assert_eq!(sessions, vec![116, 117, 118, 119]);
        assert!(rs.gateway_sessions().iter().all(|s| s.internal == INTERNAL));
        // Other hosts count against the box's cap (16 by default), its own renegotiations do not.
        let mut refused = 0;
        for h in 2..=17u8 {
            let gd = Message::GatewayDirection(GatewayDirection {
                request_id: RequestId(u32::from(h)),
                session: SessionId(1000 + u32::from(h)),
                k_tun: grant(K_TUN),
                node: NODE,
                synthetic: core::net::Ipv4Addr::new(198, 18, 100, h),
                real: REAL,
            });
            let mut bytes = dcrs.seal(now, &gd).unwrap();
            rs.handle_datagram(now, DC, &mut bytes);
            let reply = rs.poll_udp_transmit().unwrap();
            refused += usize::from(matches!(dcrs.open(now, &reply.payload).unwrap().1, Message::Refusal(_)));
        }
        assert_eq!(refused, 1, "the 17th host of one box is refused");
        assert!(matches!(direct_gateway(&mut rs, &mut dcrs, now, SessionId(120)), Message::RelayDirectionAck(_)));
    }

    #[test]
    fn an_rs_without_a_gateway_refuses_gateway_directions() {
        let now = Instant::from_millis(1_000_000);
        let (mut rs, mut dcrs) = rs_and_dc(now, false);
        let answer = direct_gateway(&mut rs, &mut dcrs, now, SessionId(5));
        assert!(matches!(&answer, Message::Refusal(r) if r.reason == Reason::Unauthorized), "{answer:?}");
        assert!(rs.held_keys().iter().all(|(k, _)| *k == "K_dcrs"), "no K_tun taken");
    }

    #[test]
    fn a_lost_session_is_answered_on_the_worker_that_asked() {
        let now = Instant::from_millis(1_000_000);
        let mut rs = rs_with_session(now);
        let mut other = data(Sender::Initiator);
        other.get_mut(4..8).unwrap().copy_from_slice(&0x0a0b_0c0du32.to_be_bytes());
        let r = rs.handle_datagram_on_worker(now, MN, &mut other, 1);
        assert_eq!(r, Received::Dropped(DropReason::UnknownKey));
        let hint = rs.poll_udp_transmit().expect("the unknown-session hint");
        assert_eq!((hint.dst, hint.payload.get(4..8)), (MN, Some(&0x0a0b_0c0du32.to_be_bytes()[..])));
        assert_eq!(rs.poll_stream_transmit(), None);
    }
}
