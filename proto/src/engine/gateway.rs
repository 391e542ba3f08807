//! The RS as a gateway to ordinary hosts (hosts without NTMobile).
//!
//! A DC sets up a gateway session with a Gateway Direction: the box's virtual address,
//! the synthetic address the DC gave the box for the ordinary host, the host's real
//! address, and K_tun. The box hole-punches as on a relayed tunnel and then sends its
//! packets to the synthetic address as Data sealed under the data key derived from K_tun
//! (the box as `Initiator`, the RS as `Responder`). The RS opens them, lets through only
//! packets from the box's virtual address to the synthetic one (no open relay), and
//! rewrites them: destination synthetic -> real, source box -> an internal address of its
//! own, one per (box, synthetic address, real address) triple, so that every answer maps
//! back to exactly one box and one host. The driver writes them to a TUN device; the kernel masquerades the internal
//! pool behind the RS's address. An answer read from the TUN device is mapped back
//! (source real -> synthetic, destination internal -> box), sealed, and sent to where the
//! box last punched from, so a box that moves keeps its connections: the ordinary host
//! only ever sees the RS's address.
//!
//! A renegotiated session of the same box to the same host (after a move, or a new key)
//! takes over the pair's internal address, so the kernel's NAT state, and with it the
//! host's view of every connection, stays the same. A session of the same box and
//! synthetic address to another real address (a DC that gave the address to another
//! host) is another pair with an internal address of its own: it never takes over the
//! first pair's, so the kernel's NAT state of the first host's connections cannot carry
//! them to the second host.
//!
//! Flows: a TCP flow ends with a RST or a FIN each way and no longer counts toward
//! `max_flows_per_session`; other flows (UDP, ICMP) and ended TCP flows are forgotten
//! after `flow_idle_timeout`, an open TCP flow after the session's `idle_timeout`.

use super::{DropCounters, DropReason, Received, Transmit, Via};
use crate::crypto::{Channel, TAG_LEN};
use crate::keys::{MnCn, Tun};
use crate::time::{Duration, Instant};
use crate::wire::prefix::v4_mask;
use crate::wire::{MsgType, SessionId, HEADER_LEN};
use core::net::{Ipv4Addr, SocketAddr};
use std::collections::HashMap;

/// How an RS is a gateway. [`GatewayConfig::new`] fills in the defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayConfig {
    /// The internal IPv4 prefix: its first address is the TUN device's, each of the
    /// others one (box, ordinary host) pair's, masqueraded behind the RS's address by the
    /// kernel.
    pub internal: (Ipv4Addr, u8),
    /// Most gateway sessions at once.
    pub max_sessions: usize,
    /// Most ordinary hosts (pairs of synthetic and real address) one box (by its virtual
    /// address) reaches at once; each pair has at most [`SESSIONS_PER_PAIR`] sessions.
    pub max_hosts_per_box: usize,
    /// Most flows (protocol, ports) one session has open at once.
    pub max_flows_per_session: usize,
    /// A session with no packet for this long ends; an open TCP flow with none for this
    /// long no longer counts.
    pub idle_timeout: Duration,
    /// A UDP or ICMP flow with no packet for this long no longer counts (an ended TCP
    /// flow counts no more at once, and is forgotten after this).
    pub flow_idle_timeout: Duration,
    /// Most packets per second one session may carry (both directions together).
    pub max_session_pps: u32,
}

impl GatewayConfig {
    /// Defaults for the internal prefix `internal`.
    pub fn new(internal: (Ipv4Addr, u8)) -> Self {
        GatewayConfig {
            internal,
            max_sessions: 1024,
            max_hosts_per_box: 16,
            max_flows_per_session: 256,
            idle_timeout: Duration::from_secs(300),
            flow_idle_timeout: Duration::from_secs(60),
            max_session_pps: 100_000,
        }
    }
}

/// Gateway counters for status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GatewayStats {
    /// Packets from boxes sent on to ordinary hosts.
    pub to_hosts: u64,
    /// Packets from ordinary hosts returned to boxes.
    pub to_boxes: u64,
    /// Box packets to anything but the session's synthetic address, or from anything
    /// but the box's virtual address (no open relay).
    pub dropped_not_allowed: u64,
    /// Packets over a session's rate, or a new flow over its flow limit.
    pub dropped_limit: u64,
    /// Packets from the TUN device for no session, or not from the session's host.
    pub dropped_unmapped: u64,
    /// Packets that are not IPv4 or do not parse.
    pub dropped_malformed: u64,
    /// Gateway Directions refused (no gateway configured, table full).
    pub refused: u64,
    /// Times the RS warned that packets go on to hosts and no host has ever answered
    /// (at most once per run): the sign of a host without the operator's translation rule.
    pub no_answer_warnings: u64,
}

/// No host has answered since the RS started, and at least this many packets went on to
/// hosts, the first this long ago: the RS warns once that the answers may have no way back.
/// A TCP connection's first SYN and its first retransmission (one second later) are enough.
const NO_ANSWER_PACKETS: u64 = 2;
const NO_ANSWER_AFTER: Duration = Duration::from_secs(1);

/// A gateway session as status shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewaySessionInfo {
    /// The session.
    pub session: SessionId,
    /// The box's virtual address.
    pub node: Ipv4Addr,
    /// The synthetic address and the real one behind it.
    pub synthetic: Ipv4Addr,
    /// The ordinary host.
    pub real: Ipv4Addr,
    /// The internal address its packets leave from.
    pub internal: Ipv4Addr,
    /// Where the box last punched from.
    pub endpoint: Option<SocketAddr>,
    /// Flows open now (counted toward the limit).
    pub flows: usize,
    /// Packets each way: to the host, to the box.
    pub to_host: u64,
    /// Packets to the box.
    pub to_box: u64,
}

pub(super) struct GatewaySession {
    pub(super) k_tun: Channel<Tun>,
    data: Channel<MnCn>,
    node: Ipv4Addr,
    synthetic: Ipv4Addr,
    real: Ipv4Addr,
    internal: Ipv4Addr,
    pub(super) endpoint: Option<SocketAddr>,
    pub(super) last_activity: Instant,
    second: u64,
    budget: u32,
    flows: HashMap<(u8, u16, u16), Flow>,
    to_host: u64,
    to_box: u64,
    /// The last datagrams sent to the box (when, where, the sealed bytes), to send again
    /// when it turns up at a new address ([`GatewaySession::moved`]).
    recent: std::collections::VecDeque<(Instant, SocketAddr, Vec<u8>)>,
}

/// Datagrams to the box kept for a move, and how old and how many bytes of them go again
/// (as the node keeps its own, see node/resend.rs): what went to the box's old address
/// between its move and its first punch from the new one would otherwise be lost, and the
/// ordinary host's TCP would wait for its retransmission timer.
const RECENT_SLOTS: usize = 48;
const RECENT_WINDOW: Duration = Duration::from_millis(300);
const RECENT_BYTES_MAX: usize = 64 * 1024;

impl GatewaySession {
    fn pair(&self) -> Pair {
        (self.node, self.synthetic, self.real)
    }

    /// The box punched from `to`: it is there now. If that is a new address, the recent
    /// datagrams that went to the old one go again, oldest first (a copy the box had
    /// received after all is refused by its replay window: nothing is delivered twice,
    /// and nothing is sealed again).
    pub(super) fn moved(&mut self, now: Instant, to: SocketAddr) -> Vec<Transmit> {
        let old = self.endpoint.replace(to);
        let Some(old) = old.filter(|o| *o != to) else { return Vec::new() };
        let mut bytes = 0;
        let mut again: Vec<Transmit> = self
            .recent
            .iter()
            .rev()
            .filter(|(at, dst, _)| *dst == old && now < *at + RECENT_WINDOW)
            .take_while(|(_, _, b)| {
                bytes += b.len();
                bytes <= RECENT_BYTES_MAX
            })
            .map(|(_, _, b)| Transmit { via: Via::Udp, dst: to, payload: b.clone() })
            .collect();
        again.reverse();
        again
    }
}

/// A flow of a session: (protocol, box port, host port).
#[derive(Clone, Copy, Debug)]
struct Flow {
    last: Instant,
    tcp: bool,
    /// TCP: the box's SYN seen (an open connection, kept for the session's idle time;
    /// a TCP flow first seen mid-connection is kept for the flow idle time).
    syn: bool,
    /// TCP: a FIN seen from the box, from the host.
    fin_box: bool,
    fin_host: bool,
    /// TCP: a RST seen, or a FIN each way: the connection is over.
    ended: bool,
}

impl Flow {
    fn new(now: Instant, tcp: bool) -> Self {
        Flow { last: now, tcp, syn: false, fin_box: false, fin_host: false, ended: false }
    }

    /// Counts toward the session's flow limit at `now`.
    fn open(&self, now: Instant, idle: Duration, flow_idle: Duration) -> bool {
        let timeout = if self.syn && !self.ended { idle } else { flow_idle };
        !self.ended && now < self.last + timeout
    }

    /// A packet of the flow with TCP flags `flags`, from the box or from the host.
    fn seen(&mut self, now: Instant, flags: Option<u8>, from_box: bool) {
        self.last = now;
        let Some(f) = flags.filter(|_| self.tcp) else { return };
        if f & TCP_SYN != 0 && f & TCP_ACK == 0 && from_box {
            // A new connection (or one on an ended one's ports).
            *self = Flow::new(now, true);
            self.syn = true;
        }
        if f & TCP_FIN != 0 {
            if from_box {
                self.fin_box = true;
            } else {
                self.fin_host = true;
            }
        }
        if f & TCP_RST != 0 || (self.fin_box && self.fin_host) {
            self.ended = true;
        }
    }
}

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// Most sessions of one (box, synthetic address, real address) pair.
pub const SESSIONS_PER_PAIR: usize = 4;

/// A pair: the box's virtual address, the synthetic address, the real address.
type Pair = (Ipv4Addr, Ipv4Addr, Ipv4Addr);

/// One (box, synthetic address, real address) pair's internal address.
struct Mapping {
    internal: Ipv4Addr,
    /// The session answers go back on: the last one the box sent on.
    session: SessionId,
}

/// The gateway sessions of an RS.
pub(super) struct Gateway {
    cfg: GatewayConfig,
    sessions: HashMap<SessionId, GatewaySession>,
    mappings: HashMap<Pair, Mapping>,
    by_internal: HashMap<Ipv4Addr, Pair>,
    /// Where the search for a free internal address starts (host 2 + this).
    next_internal: u32,
    stats: GatewayStats,
    /// A packet came back from the TUN device: the kernel translates answers back.
    heard_back: bool,
    /// When the first packet went on to a host (while none has come back).
    first_sent: Option<Instant>,
}

/// Why a Gateway Direction is refused.
pub(super) enum Refuse {
    /// The table is full, or the box has its share.
    Full,
    /// K_tun cannot be used.
    BadKey,
}

impl Gateway {
    pub(super) fn new(cfg: GatewayConfig) -> Self {
        Gateway {
            cfg,
            sessions: HashMap::new(),
            mappings: HashMap::new(),
            by_internal: HashMap::new(),
            next_internal: 0,
            stats: GatewayStats::default(),
            heard_back: false,
            first_sent: None,
        }
    }

    pub(super) fn stats(&self) -> GatewayStats {
        self.stats
    }

    pub(super) fn contains(&self, session: SessionId) -> bool {
        self.sessions.contains_key(&session)
    }

    pub(super) fn get_mut(&mut self, session: SessionId) -> Option<&mut GatewaySession> {
        self.sessions.get_mut(&session)
    }

    pub(super) fn len(&self) -> usize {
        self.sessions.len()
    }

    pub(super) fn held_keys(&self, out: &mut Vec<(&'static str, u64)>) {
        for s in self.sessions.values() {
            out.push(("K_tun", s.k_tun.key().fingerprint()));
        }
    }

    pub(super) fn sessions(&self) -> Vec<GatewaySessionInfo> {
        let mut v: Vec<_> = self
            .sessions
            .iter()
            .map(|(id, s)| GatewaySessionInfo {
                session: *id,
                node: s.node,
                synthetic: s.synthetic,
                real: s.real,
                internal: s.internal,
                endpoint: s.endpoint,
                flows: s.flows.values().filter(|f| !f.ended).count(),
                to_host: s.to_host,
                to_box: s.to_box,
            })
            .collect();
        v.sort_by_key(|s| s.session);
        v
    }

    /// A new session (a Gateway Direction); a retransmission is no new one.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn open(
        &mut self,
        now: Instant,
        session: SessionId,
        k_tun: crate::keys::KeyGrant<Tun>,
        node: Ipv4Addr,
        synthetic: Ipv4Addr,
        real: Ipv4Addr,
    ) -> Result<(), Refuse> {
        if self.sessions.contains_key(&session) {
            return Ok(());
        }
        let pair = (node, synthetic, real);
        let new_pair = !self.mappings.contains_key(&pair);
        let hosts = self.mappings.keys().filter(|(n, _, _)| *n == node).count();
        if self.sessions.len() >= self.cfg.max_sessions || (new_pair && hosts >= self.cfg.max_hosts_per_box) {
            self.stats.refused += 1;
            return Err(Refuse::Full);
        }
        // A box that moves often renegotiates often: the pair's least recently active
        // session makes room (the box has left it; its tunnel ended after its grace).
        let of_pair: Vec<(SessionId, Instant)> =
            self.sessions.iter().filter(|(_, s)| s.pair() == pair).map(|(id, s)| (*id, s.last_activity)).collect();
        if of_pair.len() >= SESSIONS_PER_PAIR {
            if let Some((old, _)) = of_pair.iter().min_by_key(|(_, at)| *at) {
                log::info!("gateway session {old} ended: replaced by {session}");
                self.sessions.remove(old);
            }
        }
        let live = &self.sessions;
        let internal = match self.mappings.get_mut(&pair) {
            // The pair's address, so the kernel's NAT state (and the host's view) stays.
            // Answers go on the pair's session until the box sends on this one.
            Some(m) => {
                if !live.contains_key(&m.session) {
                    m.session = session;
                }
                m.internal
            }
            None => {
                let Some(internal) = self.free_internal() else {
                    self.stats.refused += 1;
                    return Err(Refuse::Full);
                };
                if self.mappings.keys().any(|(n, s, _)| (*n, *s) == (node, synthetic)) {
                    log::warn!(
                        "gateway session {session}: {node} -> {synthetic} is now {real}, while a session to \
                         another real address lives: a pair of its own (leaves as {internal})"
                    );
                }
                self.mappings.insert(pair, Mapping { internal, session });
                self.by_internal.insert(internal, pair);
                internal
            }
        };
        let expires = now + k_tun.lifetime.duration();
        let id = crate::wire::KeyId(session.0);
        let data_key = k_tun.key.gateway_data_key();
        let (Ok(k_tun), Ok(data)) = (
            Channel::new(k_tun.key, id, crate::wire::Sender::Rs, expires),
            Channel::new(data_key, id, crate::wire::Sender::Responder, expires),
        ) else {
            self.stats.refused += 1;
            return Err(Refuse::BadKey);
        };
        log::info!("gateway session {session}: {node} -> {synthetic} is {real}, leaves as {internal}");
        self.sessions.insert(
            session,
            GatewaySession {
                k_tun,
                data,
                node,
                synthetic,
                real,
                internal,
                endpoint: None,
                last_activity: now,
                second: 0,
                budget: 0,
                flows: HashMap::new(),
                to_host: 0,
                to_box: 0,
                recent: std::collections::VecDeque::new(),
            },
        );
        Ok(())
    }

    /// A free internal address, the one after the last given out first: an address is
    /// given again only after the whole pool was, so that the kernel's translation
    /// entries of a pair that ended (a TCP entry lives for days) have long gone before
    /// another pair gets its address.
    fn free_internal(&mut self) -> Option<Ipv4Addr> {
        let (p, len) = self.cfg.internal;
        let m = v4_mask(len);
        let base = u32::from(p) & m;
        // The first address is the TUN device's own: hosts 2 to `last`.
        let last = (!m).saturating_sub(1);
        let count = last.checked_sub(1)?;
        let start = self.next_internal;
        let found = (0..count)
            .map(|i| 2 + (start + i) % count)
            .map(|h| Ipv4Addr::from(base + h))
            .find(|a| !self.by_internal.contains_key(a))?;
        self.next_internal = (u32::from(found) - base - 2 + 1) % count;
        Some(found)
    }

    /// A Data datagram of gateway session `session` from the box: opened, checked and
    /// rewritten in place: [`Received::Ip`] with the range of `buf` to write to the TUN
    /// device, or the drop.
    pub(super) fn box_packet(
        &mut self,
        now: Instant,
        session: SessionId,
        buf: &mut [u8],
        drops: &mut DropCounters,
    ) -> Received {
        let max_pps = self.cfg.max_session_pps;
        let (max_flows, idle, flow_idle) =
            (self.cfg.max_flows_per_session, self.cfg.idle_timeout, self.cfg.flow_idle_timeout);
        let Some(s) = self.sessions.get_mut(&session) else { return drops.count(DropReason::UnknownKey) };
        if !take_budget(s, now, max_pps) {
            self.stats.dropped_limit += 1;
            return drops.count(DropReason::Limit);
        }
        let opened = match s.data.open_in_place(now, buf) {
            Ok(o) => o,
            Err(e) => return drops.count(DropReason::from(e)),
        };
        let body = opened.body;
        let Some(packet) = buf.get_mut(body.clone()) else { return drops.count(DropReason::Malformed) };
        let Some(ip) = Ipv4::parse(packet) else {
            self.stats.dropped_malformed += 1;
            return drops.count(DropReason::Malformed);
        };
        if ip.src != s.node || ip.dst != s.synthetic {
            // Anything but the box to its ordinary host: no open relay.
            self.stats.dropped_not_allowed += 1;
            return drops.count(DropReason::Unauthorized);
        }
        let key = (ip.proto, ip.src_port.unwrap_or(0), ip.dst_port.unwrap_or(0));
        let reopens = |f: &Flow| f.ended && ip.tcp_flags.is_some_and(|x| x & TCP_SYN != 0 && x & TCP_ACK == 0);
        if s.flows.get(&key).is_none_or(|f| reopens(f) || (!f.ended && !f.open(now, idle, flow_idle))) {
            // A new flow (or a new connection on an ended one's ports): within the limit
            // of open flows. Ended and idle flows are forgotten when the table fills.
            if s.flows.len() >= max_flows {
                s.flows.retain(|_, f| f.open(now, idle, flow_idle));
            }
            let open = s.flows.values().filter(|f| f.open(now, idle, flow_idle)).count();
            if open >= max_flows {
                self.stats.dropped_limit += 1;
                return drops.count(DropReason::Limit);
            }
        }
        s.flows.entry(key).or_insert_with(|| Flow::new(now, ip.proto == TCP)).seen(now, ip.tcp_flags, true);
        rewrite(packet, &ip, s.internal, s.real);
        s.last_activity = now;
        s.to_host += 1;
        self.stats.to_hosts += 1;
        if let Some(m) = self.mappings.get_mut(&s.pair()) {
            m.session = session;
        }
        self.check_answers(now);
        Received::Ip(body)
    }

    /// Warns once if packets keep going on to hosts and nothing has ever come back. The
    /// usual cause is an RS host that does not translate the internal addresses to its own
    /// (ip_forward and the nft rule of docs/servers.md): the hosts then answer addresses
    /// that lead nowhere, and without this the RS would say nothing at all.
    fn check_answers(&mut self, now: Instant) {
        if self.heard_back || self.stats.no_answer_warnings > 0 {
            return;
        }
        let first = *self.first_sent.get_or_insert(now);
        if self.stats.to_hosts >= NO_ANSWER_PACKETS && now.saturating_duration_since(first) >= NO_ANSWER_AFTER {
            self.stats.no_answer_warnings += 1;
            log::warn!(
                "gateway: {} packets went on to ordinary hosts over {} s and no host has answered since the RS \
                 started: check that this host forwards and translates the internal prefix {}/{} to its own \
                 address (ip_forward and the nft rule, docs/servers.md \"Gateway\"); without them no answer \
                 can come back",
                self.stats.to_hosts,
                now.saturating_duration_since(first).as_secs(),
                self.cfg.internal.0,
                self.cfg.internal.1
            );
        }
    }

    /// An IP packet the RS's TUN device gave back (an ordinary host's answer): mapped
    /// back, sealed for the box and addressed to where it last punched from.
    pub(super) fn host_packet(&mut self, now: Instant, packet: &[u8], drops: &mut DropCounters) -> Option<Transmit> {
        let max_pps = self.cfg.max_session_pps;
        if packet.first().is_some_and(|b| b >> 4 == 6) {
            // The kernel's own IPv6 on the device (router solicitations, MLD): no host's
            // answer, nothing to count.
            return None;
        }
        let Some(ip) = Ipv4::parse(packet) else {
            self.stats.dropped_malformed += 1;
            drops.count(DropReason::Malformed);
            return None;
        };
        self.heard_back = true;
        let session = self.by_internal.get(&ip.dst).and_then(|pair| self.mappings.get(pair)).map(|m| m.session);
        let Some(s) = session.and_then(|id| self.sessions.get_mut(&id)) else {
            self.stats.dropped_unmapped += 1;
            drops.count(DropReason::UnknownKey);
            return None;
        };
        let (Some(to), true) = (s.endpoint, ip.src == s.real) else {
            self.stats.dropped_unmapped += 1;
            drops.count(DropReason::Unauthorized);
            return None;
        };
        if !take_budget(s, now, max_pps) {
            self.stats.dropped_limit += 1;
            drops.count(DropReason::Limit);
            return None;
        }
        let mut out = vec![0u8; HEADER_LEN + packet.len() + TAG_LEN];
        let inner = out.get_mut(HEADER_LEN..HEADER_LEN + packet.len())?;
        inner.copy_from_slice(packet);
        rewrite(inner, &ip, s.synthetic, s.node);
        // The host's side of a flow the box opened: its FIN or RST ends a TCP flow.
        let key = (ip.proto, ip.dst_port.unwrap_or(0), ip.src_port.unwrap_or(0));
        if let Some(f) = s.flows.get_mut(&key).filter(|_| ip.proto == TCP) {
            f.seen(now, ip.tcp_flags, false);
        }
        if let Err(e) = s.data.seal_in_place(now, MsgType::Data, &mut out) {
            log::warn!("gateway session: cannot seal for the box: {e}");
            return None;
        }
        s.last_activity = now;
        s.to_box += 1;
        self.stats.to_boxes += 1;
        if s.recent.len() >= RECENT_SLOTS {
            s.recent.pop_front();
        }
        s.recent.push_back((now, to, out.clone()));
        Some(Transmit { via: Via::Udp, dst: to, payload: out })
    }

    /// Ends idle and expired sessions, and frees the internal addresses no session uses.
    pub(super) fn expire(&mut self, now: Instant) {
        let idle = self.cfg.idle_timeout;
        self.sessions.retain(|id, s| {
            let keep = now < s.last_activity + idle && !s.k_tun.is_expired(now);
            if !keep {
                log::info!("gateway session {id} ended (idle or key expired)");
            }
            keep
        });
        let sessions = &self.sessions;
        let mut freed = Vec::new();
        for (pair, m) in self.mappings.iter_mut() {
            if sessions.contains_key(&m.session) {
                continue;
            }
            match sessions.iter().filter(|(_, s)| s.pair() == *pair).max_by_key(|(_, s)| s.last_activity) {
                Some((id, _)) => m.session = *id,
                None => freed.push(*pair),
            }
        }
        for pair in freed {
            if let Some(m) = self.mappings.remove(&pair) {
                self.by_internal.remove(&m.internal);
            }
        }
    }

    pub(super) fn deadline(&self) -> Option<Instant> {
        let idle = self.cfg.idle_timeout;
        self.sessions.values().map(|s| (s.last_activity + idle).min(s.k_tun.expires())).min()
    }
}

fn take_budget(s: &mut GatewaySession, now: Instant, max_pps: u32) -> bool {
    let second = now.as_millis() / 1000;
    if s.second != second {
        s.second = second;
        s.budget = max_pps;
    }
    if s.budget == 0 {
        return false;
    }
    s.budget -= 1;
    true
}

/// What the gateway reads of an IPv4 packet.
struct Ipv4 {
    ihl: usize,
    proto: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    /// Ports (TCP, UDP) or the echo identifier (ICMP, as the source), first fragments
    /// only.
    src_port: Option<u16>,
    dst_port: Option<u16>,
    /// The transport header is in this packet (not a later fragment).
    first_fragment: bool,
    /// TCP's flags (first fragments only).
    tcp_flags: Option<u8>,
}

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;

impl Ipv4 {
    fn parse(p: &[u8]) -> Option<Ipv4> {
        let b = |i: usize| p.get(i).copied();
        if b(0)? >> 4 != 4 {
            return None;
        }
        let ihl = usize::from(b(0)? & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([b(2)?, b(3)?]));
        if ihl < 20 || total < ihl || total > p.len() {
            return None;
        }
        let offset = u16::from_be_bytes([b(6)?, b(7)?]) & 0x1fff;
        let proto = b(9)?;
        let addr = |i: usize| Some(Ipv4Addr::new(b(i)?, b(i + 1)?, b(i + 2)?, b(i + 3)?));
        let first_fragment = offset == 0;
        let port =
            |i: usize| if first_fragment { Some(u16::from_be_bytes([b(ihl + i)?, b(ihl + i + 1)?])) } else { None };
        let (src_port, dst_port) = match proto {
            TCP | UDP => (port(0), port(2)),
            ICMP => (port(4), None),
            _ => (None, None),
        };
        let tcp_flags = if proto == TCP && first_fragment { b(ihl + 13) } else { None };
        Some(Ipv4 { ihl, proto, src: addr(12)?, dst: addr(16)?, src_port, dst_port, first_fragment, tcp_flags })
    }
}

/// RFC 1624: the one's-complement checksum `sum` after 32 bits `old` became `new`.
fn adjust(sum: u16, old: Ipv4Addr, new: Ipv4Addr) -> u16 {
    let (o, n) = (u32::from(old), u32::from(new));
    let mut acc = u32::from(!sum);
    for shift in [16, 0] {
        let (o16, n16) = ((o >> shift) as u16, (n >> shift) as u16);
        acc += u32::from(!o16) + u32::from(n16);
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

fn adjust_at(p: &mut [u8], at: usize, old: Ipv4Addr, new: Ipv4Addr, udp: bool) {
    let Some(field) = p.get_mut(at..at + 2) else { return };
    let mut bytes = [0u8; 2];
    bytes.copy_from_slice(field);
    let sum = u16::from_be_bytes(bytes);
    if udp && sum == 0 {
        return; // no checksum
    }
    let mut next = adjust(sum, old, new);
    if udp && next == 0 {
        next = 0xffff;
    }
    field.copy_from_slice(&next.to_be_bytes());
}

/// Sets the packet's source to `src` and destination to `dst`, with the IPv4 header's
/// checksum and TCP's or UDP's (their pseudo-header has the addresses) updated. ICMP's
/// checksum does not cover the addresses.
fn rewrite(p: &mut [u8], ip: &Ipv4, src: Ipv4Addr, dst: Ipv4Addr) {
    let l4 = match (ip.proto, ip.first_fragment) {
        (TCP, true) => Some((ip.ihl + 16, false)),
        (UDP, true) => Some((ip.ihl + 6, true)),
        _ => None,
    };
    for (old, new, at) in [(ip.src, src, 12), (ip.dst, dst, 16)] {
        adjust_at(p, 10, old, new, false);
        if let Some((sum_at, udp)) = l4 {
            adjust_at(p, sum_at, old, new, udp);
        }
        if let Some(field) = p.get_mut(at..at + 4) {
            field.copy_from_slice(&new.octets());
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const TCP_PROTO: u8 = TCP;

    /// The one's-complement sum over `data`, folded and inverted.
    fn checksum(data: &[u8], init: u32) -> u16 {
        let mut acc = init;
        for c in data.chunks(2) {
            acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        !(acc as u16)
    }

    /// An IPv4 TCP or UDP packet with correct checksums.
    pub(crate) fn packet(proto: u8, src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
        let l4_len = if proto == TCP { 20 } else { 8 } + payload.len();
        let total = 20 + l4_len;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&src.octets());
        p[16..20].copy_from_slice(&dst.octets());
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&80u16.to_be_bytes());
        if proto == TCP {
            p[32] = 0x50;
            p[40..].copy_from_slice(payload);
        } else {
            p[24..26].copy_from_slice(&(l4_len as u16).to_be_bytes());
            p[28..].copy_from_slice(payload);
        }
        fill_checksums(&mut p);
        p
    }

    pub(crate) fn fill_checksums(p: &mut [u8]) {
        p[10..12].copy_from_slice(&[0, 0]);
        let h = checksum(&p[..20], 0);
        p[10..12].copy_from_slice(&h.to_be_bytes());
        let proto = p[9];
        let at = if proto == TCP { 36 } else { 26 };
        p[at..at + 2].copy_from_slice(&[0, 0]);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&p[12..20]);
        pseudo.extend_from_slice(&[0, proto]);
        pseudo.extend_from_slice(&((p.len() - 20) as u16).to_be_bytes());
        pseudo.extend_from_slice(&p[20..]);
        let mut s = checksum(&pseudo, 0);
        if proto == UDP && s == 0 {
            s = 0xffff;
        }
        p[at..at + 2].copy_from_slice(&s.to_be_bytes());
    }

    #[test]
    fn a_rewrite_keeps_every_checksum_right() {
        let (a, b) = (Ipv4Addr::new(198, 18, 1, 2), Ipv4Addr::new(198, 18, 100, 1));
        let (c, d) = (Ipv4Addr::new(100, 127, 0, 1), Ipv4Addr::new(203, 0, 113, 80));
        for proto in [TCP, UDP] {
            for payload in [&b""[..], b"x", b"odd length payload!", &[0xff; 100]] {
                let mut p = packet(proto, a, b, payload);
                let ip = Ipv4::parse(&p).unwrap();
                assert_eq!((ip.src, ip.dst, ip.src_port, ip.dst_port), (a, b, Some(40000), Some(80)));
                rewrite(&mut p, &ip, c, d);
                let mut want = p.clone();
                fill_checksums(&mut want);
                assert_eq!(p, want, "proto {proto}, {} bytes of payload", payload.len());
                assert_eq!(&p[12..20], &[c.octets(), d.octets()].concat()[..]);
            }
        }
    }

    use crate::keys::{Key, KeyGrant};
    use crate::wire::{KeyId, Lifetime, Message, Sender};

    const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
    const SYNTHETIC: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);

    fn k_tun(session: SessionId) -> [u8; 16] {
        let mut k = *b"gateway k_tun 16";
        k[..4].copy_from_slice(&session.0.to_be_bytes());
        k
    }

    fn open_session(gw: &mut Gateway, now: Instant, session: SessionId, real: Ipv4Addr) -> Channel<MnCn> {
        let grant = KeyGrant { key: Key::from_bytes(k_tun(session)), lifetime: Lifetime(3600) };
        assert!(gw.open(now, session, grant, NODE, SYNTHETIC, real).is_ok());
        gw.get_mut(session).unwrap().endpoint = Some("198.51.100.2:1024".parse().unwrap());
        let key = Key::<Tun>::from_bytes(k_tun(session)).gateway_data_key();
        Channel::new(key, KeyId(session.0), Sender::Initiator, Instant::FAR_FUTURE).unwrap()
    }

    /// A TCP segment with ports and flags.
    fn segment(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        let mut p = packet(TCP, src, dst, b"");
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p[33] = flags;
        fill_checksums(&mut p);
        p
    }

    /// The box's packet through session `session`: what goes to the TUN device, or None.
    fn from_box(
        gw: &mut Gateway,
        data: &mut Channel<MnCn>,
        now: Instant,
        session: SessionId,
        ip: Vec<u8>,
    ) -> Option<Vec<u8>> {
        let body = crate::wire::data::DataBody::new(ip).unwrap();
        let mut bytes = data.seal(now, &Message::Data(body)).unwrap();
        match gw.box_packet(now, session, &mut bytes, &mut DropCounters::default()) {
            Received::Ip(r) => Some(bytes[r].to_vec()),
            _ => None,
        }
    }

    #[test]
    fn a_synthetic_address_given_to_another_host_never_takes_over_the_first_hosts_pair() {
        let mut gw = Gateway::new(GatewayConfig::new((Ipv4Addr::new(100, 100, 0, 0), 24)));
        let now = Instant::from_millis(1_000_000);
        let (host, www) = (Ipv4Addr::new(198, 19, 80, 2), Ipv4Addr::new(198, 19, 80, 3));
        let (a, b) = (SessionId(0x6a7e_0001), SessionId(0x6a7e_0002));
        let mut data_a = open_session(&mut gw, now, a, host);
        // The DC gave the same synthetic address for another host (a restart, a recycle).
        let mut data_b = open_session(&mut gw, now, b, www);
        let out_a = from_box(&mut gw, &mut data_a, now, a, segment(NODE, SYNTHETIC, 40000, 7000, 0x10)).unwrap();
        let out_b = from_box(&mut gw, &mut data_b, now, b, segment(NODE, SYNTHETIC, 40001, 7003, 0x02)).unwrap();
        let (internal_a, internal_b) = (&out_a[12..16], &out_b[12..16]);
        assert_eq!((&out_a[16..20], &out_b[16..20]), (&host.octets()[..], &www.octets()[..]));
        assert_ne!(internal_a, internal_b, "each real address leaves from an internal address of its own");
        // The first host's answer still goes on the first session, and only there.
        let mut ans = segment(host, Ipv4Addr::from(<[u8; 4]>::try_from(internal_a).unwrap()), 7000, 40000, 0x10);
        let t = gw.host_packet(now, &ans, &mut DropCounters::default()).expect("the host's answer");
        assert!(data_a.open(now, &t.payload).is_ok(), "sealed for session a");
        // Session a keeps its pair when a packet comes on b, and the other way round.
        from_box(&mut gw, &mut data_b, now, b, segment(NODE, SYNTHETIC, 40001, 7003, 0x10)).unwrap();
        let t = gw.host_packet(now, &ans, &mut DropCounters::default()).expect("the host's answer");
        assert!(data_a.open(now, &t.payload).is_ok(), "still sealed for session a");
        ans[12..16].copy_from_slice(&www.octets());
        fill_checksums(&mut ans);
        assert!(gw.host_packet(now, &ans, &mut DropCounters::default()).is_none(), "www cannot answer on host's pair");
        assert_eq!(gw.sessions().len(), 2);
    }

    #[test]
    fn closed_tcp_connections_free_their_flows() {
        let mut cfg = GatewayConfig::new((Ipv4Addr::new(100, 100, 0, 0), 24));
        cfg.max_flows_per_session = 8;
        let mut gw = Gateway::new(cfg);
        let real = Ipv4Addr::new(198, 19, 80, 2);
        let session = SessionId(0x6a7e_0003);
        let mut now = Instant::from_millis(1_000_000);
        let mut data = open_session(&mut gw, now, session, real);
        let internal = gw.sessions()[0].internal;
        let host = |gw: &mut Gateway, now, sport, flags| {
            let p = segment(real, internal, 7000, sport, flags);
            assert!(gw.host_packet(now, &p, &mut DropCounters::default()).is_some());
        };
        // 1000 short connections one after another, half closed by the box first, half
        // reset: every one gets through under a limit of 8 open flows.
        for i in 0..1000u16 {
            let port = 20000 + i;
            let mut send = |gw: &mut Gateway, flags| {
                from_box(gw, &mut data, now, session, segment(NODE, SYNTHETIC, port, 7000, flags))
            };
            assert!(send(&mut gw, 0x02).is_some(), "connection {i}: SYN");
            host(&mut gw, now, port, 0x12);
            assert!(send(&mut gw, 0x10).is_some(), "connection {i}: ACK");
            if i % 2 == 0 {
                assert!(send(&mut gw, 0x11).is_some(), "connection {i}: FIN");
                host(&mut gw, now, port, 0x11);
                assert!(send(&mut gw, 0x10).is_some(), "connection {i}: the last ACK");
            } else {
                assert!(send(&mut gw, 0x04).is_some(), "connection {i}: RST");
            }
            now = now + Duration::from_millis(10);
        }
        assert_eq!(gw.stats().dropped_limit, 0);
        // The limit still bounds open flows: 8 open connections, the ninth is refused.
        for i in 0..8u16 {
            assert!(
                from_box(&mut gw, &mut data, now, session, segment(NODE, SYNTHETIC, 30000 + i, 7000, 0x02)).is_some()
            );
        }
        assert!(from_box(&mut gw, &mut data, now, session, segment(NODE, SYNTHETIC, 30009, 7000, 0x02)).is_none());
        assert_eq!(gw.stats().dropped_limit, 1);
        assert_eq!(gw.sessions()[0].flows, 8);
    }

    #[test]
    fn udp_flows_free_themselves_after_the_flow_idle_time() {
        let mut cfg = GatewayConfig::new((Ipv4Addr::new(100, 100, 0, 0), 24));
        cfg.max_flows_per_session = 8;
        let flow_idle = cfg.flow_idle_timeout;
        assert!(flow_idle < cfg.idle_timeout);
        let mut gw = Gateway::new(cfg);
        let session = SessionId(0x6a7e_0004);
        let mut now = Instant::from_millis(1_000_000);
        let mut data = open_session(&mut gw, now, session, Ipv4Addr::new(198, 19, 80, 2));
        let udp = |sport: u16| {
            let mut p = packet(UDP, NODE, SYNTHETIC, b"q");
            p[20..22].copy_from_slice(&sport.to_be_bytes());
            fill_checksums(&mut p);
            p
        };
        for i in 0..8 {
            assert!(from_box(&mut gw, &mut data, now, session, udp(5000 + i)).is_some());
        }
        assert!(from_box(&mut gw, &mut data, now, session, udp(5100)).is_none(), "the ninth at once: refused");
        now = now + flow_idle;
        // The session lives (one flow goes on), the other flows are over.
        assert!(from_box(&mut gw, &mut data, now, session, udp(5000)).is_some());
        assert!(from_box(&mut gw, &mut data, now, session, udp(5100)).is_some(), "a new one after the flow idle time");
    }

    #[test]
    fn packets_to_hosts_that_never_answer_are_warned_of_once() {
        let (host, session) = (Ipv4Addr::new(198, 19, 80, 2), SessionId(0x6a7e_0005));
        let syn = |port| segment(NODE, SYNTHETIC, port, 7000, 0x02);
        // No answer ever: the SYN and its retransmission a second later warn, once.
        let mut gw = Gateway::new(GatewayConfig::new((Ipv4Addr::new(100, 100, 0, 0), 24)));
        let mut now = Instant::from_millis(1_000_000);
        let mut data = open_session(&mut gw, now, session, host);
        assert!(from_box(&mut gw, &mut data, now, session, syn(40000)).is_some());
        assert_eq!(gw.stats().no_answer_warnings, 0, "one packet is no sign");
        now = now + Duration::from_millis(500);
        assert!(from_box(&mut gw, &mut data, now, session, syn(40000)).is_some());
        assert_eq!(gw.stats().no_answer_warnings, 0, "half a second is no sign");
        now = now + Duration::from_millis(500);
        assert!(from_box(&mut gw, &mut data, now, session, syn(40000)).is_some());
        assert_eq!(gw.stats().no_answer_warnings, 1, "a second of silence is");
        for i in 0..10 {
            now = now + Duration::from_secs(1);
            assert!(from_box(&mut gw, &mut data, now, session, syn(40001 + i)).is_some());
        }
        assert_eq!(gw.stats().no_answer_warnings, 1, "once per run");
        // A host answered once: a silent one later is no sign of a missing rule.
        let mut gw = Gateway::new(GatewayConfig::new((Ipv4Addr::new(100, 100, 0, 0), 24)));
        let mut data = open_session(&mut gw, now, session, host);
        let internal = gw.sessions()[0].internal;
        assert!(from_box(&mut gw, &mut data, now, session, syn(40000)).is_some());
        assert!(gw
            .host_packet(now, &segment(host, internal, 7000, 40000, 0x12), &mut DropCounters::default())
            .is_some());
        for i in 0..10 {
            now = now + Duration::from_secs(1);
            assert!(from_box(&mut gw, &mut data, now, session, syn(41000 + i)).is_some());
        }
        assert_eq!(gw.stats().no_answer_warnings, 0);
    }

    #[test]
    fn what_is_not_a_whole_ipv4_packet_does_not_parse() {
        let p = packet(TCP, Ipv4Addr::new(198, 18, 1, 2), Ipv4Addr::new(198, 18, 100, 1), b"abc");
        for n in 0..p.len() {
            assert!(Ipv4::parse(&p[..n]).is_none(), "cut at {n}");
        }
        let mut v6 = p.clone();
        v6[0] = 0x60;
        assert!(Ipv4::parse(&v6).is_none());
    }
}
