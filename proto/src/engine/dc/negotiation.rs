//! Tunnel negotiation (spec 4.3-4.4, Fig. 5-7).
//!
//! As DC_MN, a [`Negotiation`] runs from a node's Direction Request to the two Route
//! Direction acknowledgements:
//!
//! ```text
//! ExpectDcLocation -> ExpectNodeInfo -> [ExpectRelayAck] -> ExpectFirstAck -> ExpectSecondAck -> Finished
//!  (DNS: NS record     (K_dcdc to        (K_dcrs to RS,     (the awaiting      (the initiating
//!   of FQDN_CN)         DC_CN)            relayed only)       node first)        node second)
//! ```
//!
//! The node that awaits the Tunnel Request is directed first, so that it is ready when
//! the initiator's request arrives. Once both acknowledged, the DC forgets K_tun and K_tmp.
//! As DC_CN, a [`Forward`] carries DC_MN's Route Direction to the CN by the CN's
//! keepalive method and returns the acknowledgement.
//!
//! Route decision ([`decide`]): per family (IPv6 first), direct if at least one side is
//! reachable there, the NATed side initiating (both global: MN initiates); if both are
//! behind NAT in every shared family, or they share none (IPv4-only to IPv6-only), via the
//! best RS that has both families, MN initiating.

use super::{Dc, DcEvent, To};
use crate::engine::{DropReason, Received, Retry};
use crate::keys::{KTmp, KTun, KeyGrant};
use crate::time::Instant;
use crate::wire::direction::{DirectionRequest, NodeInfo, NodeInfoAnswer, NodeInfoRequest};
use crate::wire::prefix::v4_mask;
use crate::wire::refusal::{Reason, Refusal};
use crate::wire::registration::NatMapping;
use crate::wire::relay::{GatewayDirection, RelayDirection, RelayDirectionAck};
use crate::wire::route::{Path, PeerInfo, RouteDirection, RouteDirectionAck, Side, Traversal, TunnelRole};
use crate::wire::{Fqdn, Lifetime, List, Message, MsgType, RequestId, SessionId, Tails};
use core::net::{Ipv4Addr, SocketAddr};

/// Who acknowledged a Route Direction.
#[derive(Clone, Copy)]
enum AckFrom<'a> {
    /// One of our nodes.
    Node(&'a Fqdn),
    /// Another DC (for its CN).
    Peer(usize),
}

/// Where the CN's DC is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Home {
    Local,
    Remote(usize),
}

#[derive(Clone, Copy, Debug)]
enum State {
    ExpectDcLocation,
    ExpectNodeInfo { request_id: RequestId, retry: Retry },
    ExpectRelayAck { request_id: RequestId, retry: Retry, relay: usize },
    ExpectFirstAck { request_id: RequestId, retry: Retry },
    ExpectSecondAck { request_id: RequestId, retry: Retry },
    Finished { until: Instant },
}

/// The route chosen for a pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Direct in one family; `initiator` sends the Tunnel Request.
    Direct {
        /// The family.
        v4: bool,
        /// Who sends the Tunnel Request.
        initiator: Side,
    },
    /// Through an RS; MN's side in `mn_v4`'s family, CN's in `cn_v4`'s.
    Relay {
        /// MN's family.
        mn_v4: bool,
        /// CN's family.
        cn_v4: bool,
    },
    /// No shared family and nothing to relay between.
    NoRoute,
    /// To an ordinary host through an RS as its gateway; MN's side in `mn_v4`'s family.
    Gateway {
        /// MN's family.
        mn_v4: bool,
    },
}

/// Which ordinary hosts (hosts without NTMobile) a DC's boxes reach through an RS as
/// their gateway (see docs/servers.md, "gateway"). None in a DC's configuration: nothing
/// changes, an ordinary name is refused NotNtm and the box asks ordinary DNS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayPolicy {
    /// The RSs to use, by name (empty: the usual RS selection among all).
    pub relays: Vec<Fqdn>,
    /// Every name outside the NTM domains.
    pub all: bool,
    /// These names and the names below them.
    pub names: Vec<Fqdn>,
    /// Only real addresses in these prefixes (empty: any).
    pub prefixes: Vec<(Ipv4Addr, u8)>,
    /// The synthetic addresses handed to boxes for ordinary hosts: inside what the boxes
    /// route into their TUN device, outside every DC's virtual prefix.
    pub pool: (Ipv4Addr, u8),
}

/// True if `a` lies in `prefix`.
pub fn in_prefix(a: Ipv4Addr, (p, len): (Ipv4Addr, u8)) -> bool {
    let mask = v4_mask(len);
    u32::from(a) & mask == u32::from(p) & mask
}

impl GatewayPolicy {
    /// True if the box may reach `name` through the gateway.
    pub fn covers(&self, name: &Fqdn) -> bool {
        self.all || self.names.iter().any(|n| name.is_within(n))
    }

    /// True if the gateway may send to `real`.
    pub fn allows(&self, real: Ipv4Addr) -> bool {
        self.prefixes.is_empty() || self.prefixes.iter().any(|&p| in_prefix(real, p))
    }
}

/// The synthetic address of each ordinary host's real address: the same one for the
/// same real address. A box may use a synthetic address for as long as the tunnel key
/// it got with it lives (the RS ends the gateway session when the key expires; a box
/// that goes on renegotiates, which is a lookup again), so an address is given to
/// another real address only when it was not looked up for `hold` (the tunnel key
/// lifetime). With no such address the name is refused: nothing a box still uses is
/// ever redirected to another host. The daemon saves every lookup
/// ([`crate::engine::dc::DcEvent::SyntheticUsed`]) and restores them at start-up
/// ([`SyntheticPool::restore`]), so a restart does not forget what is in use.
pub(super) struct SyntheticPool {
    base: u32,
    hosts: u32,
    hold: crate::time::Duration,
    by_real: std::collections::HashMap<Ipv4Addr, (Ipv4Addr, Instant)>,
    by_synthetic: std::collections::HashMap<Ipv4Addr, Ipv4Addr>,
    /// Lookups refused because every address was held.
    pub(super) full: u64,
}

impl SyntheticPool {
    pub(super) fn new((p, len): (Ipv4Addr, u8), hold: crate::time::Duration) -> Self {
        let mask = v4_mask(len);
        let hosts = (!mask).saturating_sub(1);
        SyntheticPool {
            base: u32::from(p) & mask,
            hosts,
            hold,
            by_real: std::collections::HashMap::new(),
            by_synthetic: std::collections::HashMap::new(),
            full: 0,
        }
    }

    /// True if `a` is one of the pool's host addresses.
    fn holds(&self, a: Ipv4Addr) -> bool {
        let h = u32::from(a).wrapping_sub(self.base);
        (1..=self.hosts).contains(&h)
    }

    /// The synthetic address of `real`, looked up now. None when every address is held
    /// by another real address looked up within the hold time.
    pub(super) fn get(&mut self, now: Instant, real: Ipv4Addr) -> Option<Ipv4Addr> {
        if let Some((synthetic, used)) = self.by_real.get_mut(&real) {
            *used = (*used).max(now);
            return Some(*synthetic);
        }
        let free = (1..=self.hosts).map(|h| Ipv4Addr::from(self.base + h)).find(|a| !self.by_synthetic.contains_key(a));
        let synthetic = match free {
            Some(a) => a,
            None => {
                // The address looked up longest ago, if that is at least the hold time ago.
                let hold = self.hold;
                let (&old, &(a, _)) = self
                    .by_real
                    .iter()
                    .filter(|(_, (_, used))| *used + hold <= now)
                    .min_by_key(|(_, (_, used))| *used)?;
                self.by_real.remove(&old);
                a
            }
        };
        self.by_real.insert(real, (synthetic, now));
        self.by_synthetic.insert(synthetic, real);
        Some(synthetic)
    }

    /// Restores a saved lookup. Refuses an address outside the pool (the pool changed:
    /// no box can route it) or one already restored for another real address.
    pub(super) fn restore(&mut self, real: Ipv4Addr, synthetic: Ipv4Addr, used: Instant) -> Result<(), &'static str> {
        if !self.holds(synthetic) {
            return Err("outside the gateway pool");
        }
        match self.by_synthetic.get(&synthetic) {
            Some(r) if *r != real => return Err("held for another real address"),
            _ => {}
        }
        if let Some((old, _)) = self.by_real.get(&real).copied().filter(|(s, _)| *s != synthetic) {
            self.by_synthetic.remove(&old);
        }
        self.by_real.insert(real, (synthetic, used));
        self.by_synthetic.insert(synthetic, real);
        Ok(())
    }

    /// How many addresses are given out (some may be free again after the hold time).
    pub(super) fn len(&self) -> usize {
        self.by_real.len()
    }
}

/// A gateway negotiation's ordinary host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct GatewayTarget {
    real: Ipv4Addr,
    synthetic: Ipv4Addr,
}

fn endpoint(info: &NodeInfo, v4: bool) -> Option<&crate::wire::direction::Endpoint> {
    info.endpoints.iter().find(|e| e.observed.is_ipv4() == v4)
}

/// The mapping test's verdict for the node's endpoint in one family.
fn mapping(info: &NodeInfo, v4: bool) -> NatMapping {
    let i = info.endpoints.iter().position(|e| e.observed.is_ipv4() == v4);
    i.and_then(|i| info.tail.0.iter().nth(i).copied()).unwrap_or_default()
}

/// The route decision, without the RS choice (see the module documentation).
pub fn decide(mn: &NodeInfo, cn: &NodeInfo) -> Decision {
    for v4 in [false, true] {
        if let (Some(m), Some(c)) = (endpoint(mn, v4), endpoint(cn, v4)) {
            match (m.behind_nat, c.behind_nat) {
                (_, false) => return Decision::Direct { v4, initiator: Side::Mn },
                (false, true) => return Decision::Direct { v4, initiator: Side::Cn },
                (true, true) => {}
            }
        }
    }
    for (mn_v4, cn_v4) in [(true, true), (false, false), (true, false), (false, true)] {
        if endpoint(mn, mn_v4).is_some() && endpoint(cn, cn_v4).is_some() {
            return Decision::Relay { mn_v4, cn_v4 };
        }
    }
    Decision::NoRoute
}

/// What a relayed tunnel's end `me` tries for a direct path besides route optimization
/// (see the node's spray.rs): a search of many ports when both are behind IPv4 NATs and
/// exactly one of those maps per destination. Route optimization alone finds the path
/// when neither does, and a guess cannot meet mappings that both sides hide.
pub fn traversal(decision: Decision, me: &NodeInfo, peer: &NodeInfo) -> Traversal {
    if decision != (Decision::Relay { mn_v4: true, cn_v4: true }) {
        return Traversal::Usual;
    }
    let (Some(m), Some(p)) = (endpoint(me, true), endpoint(peer, true)) else { return Traversal::Usual };
    if !(m.behind_nat && p.behind_nat) {
        return Traversal::Usual;
    }
    match (mapping(me, true), mapping(peer, true)) {
        (NatMapping::Dependent, NatMapping::Independent) => Traversal::OpenPorts,
        (NatMapping::Independent, NatMapping::Dependent) => Traversal::GuessPorts,
        _ => Traversal::Usual,
    }
}

/// One negotiation at DC_MN.
pub(super) struct Negotiation {
    session: SessionId,
    mn: Fqdn,
    mn_request: RequestId,
    cn: Fqdn,
    home: Option<Home>,
    state: State,
    cn_info: Option<NodeInfo>,
    decision: Option<Decision>,
    k_tun: Option<KTun>,
    k_tmp: Option<KTmp>,
    relay: Option<(usize, SocketAddr, SocketAddr)>,
    /// Looking up (or found) an ordinary host for the gateway.
    gateway_lookup: bool,
    gateway: Option<GatewayTarget>,
    expires: Instant,
    /// Why it failed, to answer retransmitted Direction Requests.
    failure: Option<(Reason, String)>,
}

impl Negotiation {
    pub(super) fn deadline(&self) -> Option<Instant> {
        let state = match &self.state {
            State::ExpectDcLocation => None,
            State::ExpectNodeInfo { retry, .. }
            | State::ExpectRelayAck { retry, .. }
            | State::ExpectFirstAck { retry, .. }
            | State::ExpectSecondAck { retry, .. } => Some(retry.deadline()),
            State::Finished { until } => return Some(*until),
        };
        Some(state.map_or(self.expires, |d| d.min(self.expires)))
    }

    pub(super) fn held_keys(&self, out: &mut Vec<(&'static str, u64)>) {
        if let Some(k) = &self.k_tun {
            out.push(("K_tun", k.fingerprint()));
        }
        if let Some(k) = &self.k_tmp {
            out.push(("K_tmp", k.fingerprint()));
        }
    }

    fn finished(&self) -> bool {
        matches!(self.state, State::Finished { .. })
    }

    /// The Route Direction in flight: its request id and the side it went to.
    fn direction_in_flight(&self) -> Option<(RequestId, Side)> {
        match self.state {
            State::ExpectFirstAck { request_id, .. } => Some((request_id, self.first_side())),
            State::ExpectSecondAck { request_id, .. } => Some((request_id, other(self.first_side()))),
            _ => None,
        }
    }

    /// True if `from` is where the direction to `side` went: MN (always ours), or the CN
    /// if it is ours, or DC_CN if it is not.
    fn directed_at(&self, side: Side, from: AckFrom<'_>) -> bool {
        match (side, self.home, from) {
            (Side::Mn, _, AckFrom::Node(f)) => *f == self.mn,
            (Side::Cn, Some(Home::Local), AckFrom::Node(f)) => *f == self.cn,
            (Side::Cn, Some(Home::Remote(p)), AckFrom::Peer(q)) => p == q,
            _ => false,
        }
    }

    fn first_side(&self) -> Side {
        match self.decision {
            Some(Decision::Direct { initiator: Side::Cn, .. }) | Some(Decision::Gateway { .. }) => Side::Mn,
            _ => Side::Cn,
        }
    }
}

/// DC_MN's Route Direction for one of our nodes, on its way to the CN.
pub(super) struct Forward {
    session: SessionId,
    peer: usize,
    dc_request: RequestId,
    cn: Fqdn,
    request_id: RequestId,
    retry: Retry,
    rd: Option<RouteDirection>,
    done_until: Option<Instant>,
}

impl Forward {
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.done_until.or(Some(self.retry.deadline()))
    }

    pub(super) fn held_keys(&self, out: &mut Vec<(&'static str, u64)>) {
        if let Some(rd) = &self.rd {
            out.push(("K_tun", rd.k_tun.key.fingerprint()));
            if let Some(k) = &rd.k_tmp {
                out.push(("K_tmp", k.fingerprint()));
            }
        }
    }
}

/// The shortest first wait for an RS's Relay Direction Ack (see `Dc::direct_relay`).
const RELAY_ACK_MIN_WAIT: crate::time::Duration = crate::time::Duration::from_millis(100);
/// The longest wait between two Relay Directions to a silent RS.
const RELAY_ACK_MAX_WAIT: crate::time::Duration = crate::time::Duration::from_secs(1);

/// How long finished negotiations are kept to recognise duplicates.
const KEEP_FINISHED: crate::time::Duration = crate::time::Duration::from_secs(30);

impl Dc {
    fn neg_index(&self, session: SessionId) -> Option<usize> {
        self.negotiations.iter().position(|n| n.session == session)
    }

    fn new_session(&mut self) -> SessionId {
        loop {
            let s = SessionId(self.rng.next_u32());
            if s.0 != 0 && self.neg_index(s).is_none() {
                return s;
            }
        }
    }

    /// A node asks for a peer (spec 4.3 step 1).
    pub(super) fn handle_direction_request(&mut self, now: Instant, mn: &Fqdn, d: DirectionRequest) -> Received {
        if let Some(n) = self.negotiations.iter().find(|n| n.mn == *mn && n.mn_request == d.request_id) {
            // A retransmission: the negotiation is under way, or it failed and our refusal
            // was lost, in which case it is sent again.
            if let Some((reason, detail)) = n.failure.clone() {
                let msg = Message::Refusal(Refusal::new(MsgType::DirectionRequest, d.request_id, reason, &detail));
                self.send_to_node(now, mn, &msg, None);
            }
            return Received::Handled;
        }
        let refusal = |reason, detail: &str| {
            Message::Refusal(Refusal::new(MsgType::DirectionRequest, d.request_id, reason, detail))
        };
        if d.peer == *mn {
            let msg = refusal(Reason::Conflict, "a node cannot direct a tunnel to itself");
            self.send_to_node(now, mn, &msg, None);
            return Received::Handled;
        }
        // One node's share of the table: its oldest finished negotiation makes room (it is
        // kept only to answer retransmissions); while all its share is in progress, it is
        // refused. Others' requests are untouched by one node's flood.
        let mine = self.negotiations.iter().filter(|n| n.mn == *mn).count();
        if mine >= self.cfg.max_negotiations_per_node {
            let oldest_finished = self
                .negotiations
                .iter()
                .enumerate()
                .filter(|(_, n)| n.mn == *mn && n.finished())
                .min_by_key(|(_, n)| n.deadline())
                .map(|(i, _)| i);
            match oldest_finished {
                Some(i) => {
                    self.negotiations.remove(i);
                }
                None => {
                    let msg = refusal(Reason::Overloaded, "too many negotiations in progress for this node");
                    self.send_to_node(now, mn, &msg, None);
                    return self.drops.count(DropReason::Limit);
                }
            }
        }
        // Finished negotiations count too: they are kept for a while to answer
        // retransmissions, and a flood of requests must not grow the table.
        if self.negotiations.len() >= self.cfg.max_negotiations {
            let msg = refusal(Reason::Overloaded, "too many negotiations");
            self.send_to_node(now, mn, &msg, None);
            return self.drops.count(DropReason::Limit);
        }
        let session = self.new_session();
        match d.previous {
            Some(p) => {
                log::info!("{mn} asks for {} again after a network change (session {session} replaces {p})", d.peer)
            }
            None => log::info!("{mn} asks for {} (session {session})", d.peer),
        }
        self.negotiations.push(Negotiation {
            session,
            mn: mn.clone(),
            mn_request: d.request_id,
            cn: d.peer.clone(),
            home: None,
            state: State::ExpectDcLocation,
            cn_info: None,
            decision: None,
            k_tun: None,
            k_tmp: None,
            relay: None,
            gateway_lookup: false,
            gateway: None,
            expires: now + self.cfg.negotiation_timeout,
            failure: None,
        });
        if self.owns(&d.peer) {
            self.cn_is_local(now, session);
        } else if let Some((_, loc)) = self.cfg.static_peers.iter().find(|(z, _)| d.peer.is_within(z)).cloned() {
            self.handle_cn_location(now, session, crate::engine::DnsAnswer::Dc(loc));
        } else {
            self.query(d.peer, session);
        }
        Received::Handled
    }

    fn cn_is_local(&mut self, now: Instant, session: SessionId) {
        let Some(i) = self.neg_index(session) else { return };
        let Some(n) = self.negotiations.get_mut(i) else { return };
        n.home = Some(Home::Local);
        let cn = n.cn.clone();
        match self.node_info(&cn) {
            Some(info) => {
                if let Some(n) = self.negotiations.get_mut(i) {
                    n.cn_info = Some(info);
                }
                self.plan(now, i);
            }
            None if self.knows_node(&cn) => self.fail(now, i, Reason::PeerUnreachable, "peer is not registered"),
            None => self.fail(now, i, Reason::NotFound, "no such node"),
        }
    }

    /// The DNS answer naming DC_CN (spec 4.3 step 2).
    pub(super) fn handle_cn_location(&mut self, now: Instant, session: SessionId, answer: crate::engine::DnsAnswer) {
        let Some(i) = self.neg_index(session) else { return };
        if !matches!(self.negotiations.get(i).map(|n| &n.state), Some(State::ExpectDcLocation)) {
            return;
        }
        if self.negotiations.get(i).is_some_and(|n| n.gateway_lookup) {
            return self.gateway_addresses(now, i, answer);
        }
        let loc = match answer {
            crate::engine::DnsAnswer::Dc(loc) if !loc.addrs.is_empty() => loc,
            crate::engine::DnsAnswer::NotNtm => {
                let cn = self.negotiations.get(i).map(|n| n.cn.clone());
                if let (Some(cn), Some(policy)) = (cn, &self.cfg.gateway) {
                    if policy.covers(&cn) {
                        // An ordinary host the box reaches through the gateway: its own
                        // addresses are looked up next.
                        if let Some(n) = self.negotiations.get_mut(i) {
                            n.gateway_lookup = true;
                        }
                        self.query_addresses(cn, session);
                        return;
                    }
                }
                return self.fail(now, i, Reason::NotNtm, "not an NTMobile name");
            }
            // A lookup that failed says nothing about the name: a temporary refusal, so
            // the node does not take an NTMobile name for an ordinary one.
            _ => return self.fail(now, i, Reason::PeerUnreachable, "DNS lookup of the peer's zone failed"),
        };
        if loc.name == self.cfg.name {
            return self.cn_is_local(now, session);
        }
        let Some(&addr) = loc.addrs.first() else { return };
        let peer = self.peer_index(&loc.name, addr);
        let request_id = self.ids.next();
        let Some(n) = self.negotiations.get_mut(i) else { return };
        n.home = Some(Home::Remote(peer));
        n.state = State::ExpectNodeInfo { request_id, retry: Retry::new(now, self.cfg.negotiation_backoff) };
        let msg = Message::NodeInfoRequest(NodeInfoRequest { request_id, fqdn: n.cn.clone(), requester: n.mn.clone() });
        self.send_server(now, To::Peer(peer), msg);
    }

    /// The ordinary host's addresses: its first IPv4 address the policy allows gets a
    /// synthetic address, and the RS is directed. A host the gateway does not serve (no
    /// such address, or the lookup failed) is refused NotNtm, so the box asks ordinary
    /// DNS as it would without a gateway.
    fn gateway_addresses(&mut self, now: Instant, i: usize, answer: crate::engine::DnsAnswer) {
        let Some(policy) = self.cfg.gateway.clone() else { return };
        let addrs = match answer {
            crate::engine::DnsAnswer::Dc(loc) => loc.addrs,
            _ => Vec::new(),
        };
        let real = addrs.iter().find_map(|a| match a.ip() {
            core::net::IpAddr::V4(v4) if policy.allows(v4) => Some(v4),
            _ => None,
        });
        let Some(real) = real else {
            return self.fail(now, i, Reason::NotNtm, "not an NTMobile name; not for the gateway");
        };
        let Some(mn_info) = self.negotiations.get(i).and_then(|n| self.node_info(&n.mn)) else {
            return self.fail(now, i, Reason::Internal, "asking node is not registered");
        };
        let mn_v4 = endpoint(&mn_info, true).is_some();
        if !mn_v4 && endpoint(&mn_info, false).is_none() {
            return self.fail(now, i, Reason::NoRoute, "asking node has no endpoint");
        }
        let Some(pool) = self.synthetic.as_mut() else { return };
        let Some(synthetic) = pool.get(now, real) else {
            // Every address may still be in use: refused rather than recycled, so the box
            // asks ordinary DNS (and nothing it still uses goes to another host).
            pool.full += 1;
            log::warn!("gateway pool full: every synthetic address was looked up within the hold time; {real} refused");
            return self.fail(now, i, Reason::NotNtm, "gateway pool full");
        };
        self.emit(super::DcEvent::SyntheticUsed { real, synthetic, at: now });
        let relay = if policy.relays.is_empty() {
            self.select_relay(mn_v4, true)
        } else {
            self.relays
                .iter()
                .enumerate()
                .filter(|(_, r)| policy.relays.contains(&r.link.name))
                .min_by_key(|(_, r)| (r.silent_since.is_some(), r.rtt))
                .map(|(x, _)| x)
        };
        let Some(relay) = relay else {
            return self.fail(now, i, Reason::NoRelay, "no gateway relay server");
        };
        let k_tun = KTun::generate(&mut *self.rng);
        let Some(n) = self.negotiations.get_mut(i) else { return };
        log::info!(
            "negotiation {}: {} reaches ordinary host {} ({real}) as {synthetic} via gateway",
            n.session,
            n.mn,
            n.cn
        );
        n.home = Some(Home::Local);
        n.decision = Some(Decision::Gateway { mn_v4 });
        n.gateway = Some(GatewayTarget { real, synthetic });
        n.k_tun = Some(k_tun);
        n.k_tmp = None;
        self.direct_relay(now, i, relay, None);
    }

    /// Messages from another DC, sealed with K_dcdc.
    pub(super) fn handle_peer_message(&mut self, now: Instant, peer: usize, msg: Message) -> Received {
        match msg {
            Message::NodeInfoRequest(r) => {
                let reply = match self.node_info(&r.fqdn).filter(|_| self.owns(&r.fqdn)) {
                    Some(info) => Message::NodeInfoAnswer(NodeInfoAnswer { request_id: r.request_id, info }),
                    None => Message::Refusal(Refusal::new(
                        MsgType::NodeInfoRequest,
                        r.request_id,
                        Reason::NotFound,
                        "no such registered node",
                    )),
                };
                self.send_server(now, To::Peer(peer), reply);
                Received::Handled
            }
            Message::NodeInfoAnswer(a) => {
                let Some(i) = self.negotiations.iter().position(|n| {
                    n.home == Some(Home::Remote(peer))
                        && matches!(n.state, State::ExpectNodeInfo { request_id, .. } if request_id == a.request_id)
                }) else {
                    return self.drops.count(DropReason::Stale);
                };
                if self.negotiations.get(i).is_some_and(|n| n.cn != a.info.fqdn) {
                    return self.drops.count(DropReason::Unauthorized);
                }
                if let Some(n) = self.negotiations.get_mut(i) {
                    n.cn_info = Some(a.info);
                }
                self.plan(now, i);
                Received::Handled
            }
            Message::RouteDirection(rd) => self.handle_forward(now, peer, rd),
            Message::RouteDirectionAck(a) => self.handle_route_ack(now, AckFrom::Peer(peer), a),
            Message::Refusal(r) => {
                // A refusal of our NodeInfoRequest or of a Route Direction we sent.
                let from = AckFrom::Peer(peer);
                let found = self.negotiations.iter().position(|n| match n.state {
                    State::ExpectNodeInfo { request_id, .. } => {
                        request_id == r.request_id && n.home == Some(Home::Remote(peer))
                    }
                    _ => n
                        .direction_in_flight()
                        .is_some_and(|(id, side)| id == r.request_id && n.directed_at(side, from)),
                });
                match found {
                    Some(i) => {
                        self.fail(now, i, r.reason, r.detail.as_str());
                        Received::Handled
                    }
                    None => self.drops.count(DropReason::Stale),
                }
            }
            _ => self.drops.count(DropReason::Unexpected),
        }
    }

    /// The best RS for a pair (spec 4.4, "RS selection"): one with both families, not
    /// full, lowest measured round-trip time plus a load penalty. An RS whose status is
    /// unknown is a last resort, and one that has fallen silent comes after all others
    /// (it is still tried when it is the only one: it may be back).
    pub fn select_relay(&self, mn_v4: bool, cn_v4: bool) -> Option<usize> {
        self.select_relay_except(mn_v4, cn_v4, None)
    }

    /// [`Dc::select_relay`] without the RS `except`.
    fn select_relay_except(&self, mn_v4: bool, cn_v4: bool, except: Option<usize>) -> Option<usize> {
        self.relays
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                r.addrs.is_empty()
                    || (r.addrs.iter().any(|a| a.is_ipv4() == mn_v4) && r.addrs.iter().any(|a| a.is_ipv4() == cn_v4))
            })
            .filter(|(_, r)| r.capacity == 0 || r.sessions < r.capacity)
            .filter(|(i, _)| Some(*i) != except)
            .min_by_key(|(_, r)| {
                let rtt = r.rtt.map_or(60_000, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                let load = if r.capacity > 0 { u64::from(r.sessions) * 1000 / u64::from(r.capacity) } else { 0 };
                (r.silent_since.is_some(), rtt.saturating_add(load))
            })
            .map(|(i, _)| i)
    }

    /// Both ends are known: decide the route and start directing.
    fn plan(&mut self, now: Instant, i: usize) {
        let Some(n) = self.negotiations.get(i) else { return };
        let mn = n.mn.clone();
        let Some(mn_info) = self.node_info(&mn) else {
            return self.fail(now, i, Reason::Internal, "asking node is not registered");
        };
        let Some(cn_info) = n.cn_info.clone() else { return };
        let decision = decide(&mn_info, &cn_info);
        let k_tun = KTun::generate(&mut *self.rng);
        // Public-key mode when both ends have attested keys: then no DC holds K_tmp and
        // none can unwrap K_mncn (spec section 3).
        let k_tmp = match (&mn_info.attestation, &cn_info.attestation) {
            (Some(_), Some(_)) => None,
            _ => Some(KTmp::generate(&mut *self.rng)),
        };
        {
            let Some(n) = self.negotiations.get_mut(i) else { return };
            n.decision = Some(decision);
            n.k_tun = Some(k_tun);
            n.k_tmp = k_tmp;
        }
        match decision {
            Decision::NoRoute => self.fail(now, i, Reason::NoRoute, "no address family to reach the peer"),
            // Only an ordinary host's addresses lead there (`gateway_addresses`).
            Decision::Gateway { .. } => self.fail(now, i, Reason::Internal, "gateway decision for a node"),
            Decision::Direct { .. } => self.send_direction(now, i, true),
            Decision::Relay { mn_v4, cn_v4 } => {
                let Some(relay) = self.select_relay(mn_v4, cn_v4) else {
                    return self.fail(now, i, Reason::NoRelay, "no relay server with both address families");
                };
                self.direct_relay(now, i, relay, None);
            }
        }
    }

    /// Sends negotiation `i`'s Relay Direction (K_tun only) to `relay`: a new request, or
    /// a retransmission of `again`.
    fn direct_relay(&mut self, now: Instant, i: usize, relay: usize, again: Option<RequestId>) {
        let lifetime = Lifetime::from_duration(self.cfg.tunnel_key_lifetime);
        let request_id = again.unwrap_or_else(|| self.ids.next());
        // An RS answers a Relay Direction at once: with its round-trip time measured, the
        // first wait is a few of them (at least RELAY_ACK_MIN_WAIT), so that a dead RS
        // costs a renegotiation little before another is tried (`relay_failover`). With
        // no other RS, it is asked at least every RELAY_ACK_MAX_WAIT, so that the tunnel
        // is set up soon after it is back.
        let mut policy = self.cfg.negotiation_backoff;
        if let Some(rtt) = self.relays.get(relay).and_then(|r| r.rtt) {
            policy.initial = policy.initial.min(rtt.saturating_mul(3).max(RELAY_ACK_MIN_WAIT));
        }
        policy.max = policy.max.min(RELAY_ACK_MAX_WAIT).max(policy.initial);
        let node_v4 = self.negotiations.get(i).and_then(|n| self.node_info(&n.mn)).map(|m| m.virtual_addrs.v4);
        let Some(n) = self.negotiations.get_mut(i) else { return };
        let Some(key) = n.k_tun.clone() else { return };
        if again.is_none() {
            n.state = State::ExpectRelayAck { request_id, retry: Retry::new(now, policy), relay };
        }
        let k_tun = KeyGrant { key, lifetime };
        let msg = match (n.gateway, node_v4) {
            (Some(g), Some(node)) => Message::GatewayDirection(GatewayDirection {
                request_id,
                session: n.session,
                k_tun,
                node,
                synthetic: g.synthetic,
                real: g.real,
            }),
            _ => Message::RelayDirection(RelayDirection { request_id, session: n.session, k_tun }),
        };
        self.send_server(now, To::Relay(relay), msg);
    }

    /// Negotiation `i`'s Relay Direction to `relay` went unanswered. If it went sealed
    /// (no Key Share was under way, which a slow TLS handshake could explain), the RS is
    /// silent: noted, so that other negotiations avoid it too, and the negotiation moves
    /// to the best other RS if there is one that is not silent (true), with a new K_tun.
    /// With none, the same RS is asked again (it may be restarting).
    fn relay_failover(&mut self, now: Instant, i: usize, relay: usize) -> bool {
        let Some(r) = self.relays.get_mut(relay) else { return false };
        if r.link.sharing() {
            return false;
        }
        r.fell_silent(now);
        let fams = match self.negotiations.get(i).and_then(|n| n.decision) {
            Some(Decision::Relay { mn_v4, cn_v4 }) => (mn_v4, cn_v4),
            Some(Decision::Gateway { mn_v4 }) => (mn_v4, true),
            _ => return false,
        };
        let next = self
            .select_relay_except(fams.0, fams.1, Some(relay))
            .filter(|&x| self.relays.get(x).is_some_and(|r| r.silent_since.is_none()));
        let Some(next) = next else { return false };
        let names =
            (self.relays.get(relay).map(|r| r.link.name.clone()), self.relays.get(next).map(|r| r.link.name.clone()));
        if let (Some(from), Some(to), Some(n)) = (names.0, names.1, self.negotiations.get(i)) {
            log::info!("negotiation {}: relay {from} does not answer; trying relay {to}", n.session);
        }
        // The silent RS may still take the session with the K_tun it was sent and answer a
        // (replayed) punch under it, sealing as Rs from counter 0 as the next RS will: the
        // next RS gets a fresh K_tun, so no (key, sender, counter) is sealed twice. No node
        // has a K_tun of this negotiation yet (the Route Directions follow the RS's ack).
        let k_tun = KTun::generate(&mut *self.rng);
        if let Some(n) = self.negotiations.get_mut(i) {
            n.k_tun = Some(k_tun);
        }
        self.direct_relay(now, i, next, None);
        true
    }

    pub(super) fn handle_relay_ack(&mut self, now: Instant, relay: usize, a: RelayDirectionAck) -> Received {
        let Some(i) = self.negotiations.iter().position(|n| {
            n.session == a.session
                && matches!(n.state, State::ExpectRelayAck { request_id, relay: r, .. } if request_id == a.request_id && r == relay)
        }) else {
            return self.drops.count(DropReason::Stale);
        };
        let (mn_v4, cn_v4) = match self.negotiations.get(i).and_then(|n| n.decision) {
            Some(Decision::Relay { mn_v4, cn_v4 }) => (mn_v4, cn_v4),
            Some(Decision::Gateway { mn_v4 }) => (mn_v4, true),
            _ => return Received::Handled,
        };
        let pick = |v4: bool| a.relay_addrs.iter().find(|x| x.is_ipv4() == v4).copied();
        match (pick(mn_v4), pick(cn_v4)) {
            (Some(m), Some(c)) => {
                if let Some(n) = self.negotiations.get_mut(i) {
                    n.relay = Some((relay, m, c));
                }
                // Count the session until the next status report says otherwise, so a
                // burst of negotiations spreads over the relays by load.
                if let Some(r) = self.relays.get_mut(relay) {
                    r.sessions = r.sessions.saturating_add(1);
                }
                self.send_direction(now, i, true);
            }
            _ => self.fail(now, i, Reason::NoRelay, "relay lacks an address family"),
        }
        Received::Handled
    }

    /// The Route Direction for `side` of negotiation `i`.
    fn route_direction(&mut self, i: usize, side: Side) -> Option<RouteDirection> {
        let n = self.negotiations.get(i)?;
        if let (Some(g), Some((_, m, _))) = (n.gateway, n.relay) {
            // The box's only direction: the ordinary host by its name and synthetic
            // address, behind the RS; no endpoints, no K_tmp.
            let virtual_addrs = crate::wire::VirtualAddrs { v4: g.synthetic, v6: core::net::Ipv6Addr::UNSPECIFIED };
            let peer = PeerInfo { fqdn: n.cn.clone(), virtual_addrs, endpoints: List::default() };
            let (node, session, key) = (n.mn.clone(), n.session, n.k_tun.clone()?);
            return Some(RouteDirection {
                request_id: self.ids.next(),
                session,
                node,
                side: Side::Mn,
                role: TunnelRole::Initiate,
                peer,
                path: Path::Gateway(m),
                k_tun: KeyGrant { key, lifetime: Lifetime::from_duration(self.cfg.tunnel_key_lifetime) },
                k_tmp: None,
                peer_attestation: None,
                tail: Tails(Traversal::Usual, List::new()),
            });
        }
        let mn_info = self.node_info(&n.mn)?;
        let cn_info = n.cn_info.clone()?;
        let decision = n.decision?;
        let (me, peer) = if side == Side::Mn { (&mn_info, &cn_info) } else { (&cn_info, &mn_info) };
        let role = match decision {
            Decision::Direct { initiator, .. } if initiator == side => TunnelRole::Initiate,
            Decision::Direct { .. } => TunnelRole::Await,
            _ if side == Side::Mn => TunnelRole::Initiate,
            _ => TunnelRole::Await,
        };
        let path = match (n.relay, side) {
            (Some((_, m, _)), Side::Mn) => Path::Relay(m),
            (Some((_, _, c)), _) => Path::Relay(c),
            (None, _) => Path::Direct,
        };
        // The peer's endpoints, the decided family first.
        let mut eps: Vec<SocketAddr> = peer.endpoints.iter().map(|e| e.observed).collect();
        if let Decision::Direct { v4, .. } = decision {
            eps.sort_by_key(|a| a.is_ipv4() != v4);
        }
        let endpoints = List::from_vec(eps.into_iter().take(4).collect()).ok()?;
        let k_tun = n.k_tun.clone()?;
        let peer_attestation = if n.k_tmp.is_none() { peer.attestation.clone() } else { None };
        let traversal = traversal(decision, me, peer);
        Some(RouteDirection {
            request_id: self.ids.next(),
            session: n.session,
            node: me.fqdn.clone(),
            side,
            role,
            peer: PeerInfo { fqdn: peer.fqdn.clone(), virtual_addrs: peer.virtual_addrs, endpoints },
            path,
            k_tun: KeyGrant { key: k_tun, lifetime: Lifetime::from_duration(self.cfg.tunnel_key_lifetime) },
            k_tmp: n.k_tmp.clone(),
            peer_attestation,
            tail: Tails(traversal, peer.tail.1.clone()),
        })
    }

    /// Sends the first or second Route Direction (fresh state) and arms its retry.
    fn send_direction(&mut self, now: Instant, i: usize, first: bool) {
        let Some(n) = self.negotiations.get(i) else { return };
        let side = if first { n.first_side() } else { other(n.first_side()) };
        let Some(rd) = self.route_direction(i, side) else {
            return self.fail(now, i, Reason::Internal, "cannot build Route Direction");
        };
        let request_id = rd.request_id;
        let retry = Retry::new(now, self.cfg.negotiation_backoff);
        if let Some(n) = self.negotiations.get_mut(i) {
            n.state = if first {
                State::ExpectFirstAck { request_id, retry }
            } else {
                State::ExpectSecondAck { request_id, retry }
            };
        }
        self.deliver_direction(now, i, side, rd);
    }

    fn deliver_direction(&mut self, now: Instant, i: usize, side: Side, rd: RouteDirection) {
        let Some(n) = self.negotiations.get(i) else { return };
        let prefer_v4 = match n.decision {
            Some(Decision::Direct { v4, .. }) => Some(v4),
            Some(Decision::Relay { mn_v4, cn_v4 }) => Some(if side == Side::Mn { mn_v4 } else { cn_v4 }),
            Some(Decision::Gateway { mn_v4 }) => Some(mn_v4),
            _ => None,
        };
        let msg = Message::RouteDirection(rd);
        match (side, n.home) {
            (Side::Cn, Some(Home::Remote(peer))) => self.send_server(now, To::Peer(peer), msg),
            (Side::Cn, _) => {
                let cn = n.cn.clone();
                self.send_to_node(now, &cn, &msg, prefer_v4);
            }
            _ => {
                let mn = n.mn.clone();
                self.send_to_node(now, &mn, &msg, prefer_v4);
            }
        }
    }

    /// An acknowledgement of a Route Direction, from one of our nodes (`peer` None) or
    /// from DC_CN.
    fn handle_route_ack(&mut self, now: Instant, from: AckFrom<'_>, a: RouteDirectionAck) -> Received {
        let Some(i) = self
            .negotiations
            .iter()
            .position(|n| n.session == a.session && n.direction_in_flight().is_some_and(|(id, _)| id == a.request_id))
        else {
            return self.drops.count(DropReason::Stale);
        };
        let Some(n) = self.negotiations.get_mut(i) else { return Received::Handled };
        // Only the side the direction went to may acknowledge it.
        if !n.direction_in_flight().is_some_and(|(_, side)| n.directed_at(side, from)) {
            return self.drops.count(DropReason::Unauthorized);
        }
        match n.state {
            // A gateway session has one node: its acknowledgement finishes it.
            State::ExpectFirstAck { .. } if n.gateway.is_none() => self.send_direction(now, i, false),
            _ => {
                n.state = State::Finished { until: now + KEEP_FINISHED };
                // The DC's part is done: it forgets the tunnel keys.
                n.k_tun = None;
                n.k_tmp = None;
                let relay = n.relay.and_then(|(r, _, _)| self.relays.get(r)).map(|r| r.link.name.clone());
                let ev = DcEvent::TunnelDirected { session: n.session, mn: n.mn.clone(), cn: n.cn.clone(), relay };
                self.emit(ev);
            }
        }
        Received::Handled
    }

    /// A node acknowledged a Route Direction: ours (as DC_MN) or one we forwarded (as
    /// DC_CN).
    pub(super) fn handle_route_ack_from_node(&mut self, now: Instant, fqdn: &Fqdn, a: RouteDirectionAck) -> Received {
        if let Some(f) =
            self.forwards.iter_mut().find(|f| f.session == a.session && f.request_id == a.request_id && f.cn == *fqdn)
        {
            if f.done_until.is_none() {
                f.done_until = Some(now + KEEP_FINISHED);
                f.rd = None;
            }
            let (peer, msg) = (
                f.peer,
                Message::RouteDirectionAck(RouteDirectionAck { request_id: f.dc_request, session: f.session }),
            );
            self.send_server(now, To::Peer(peer), msg);
            return Received::Handled;
        }
        let ours = self.negotiations.iter().any(|n| n.session == a.session && (n.mn == *fqdn || n.cn == *fqdn));
        if !ours {
            return self.drops.count(DropReason::Stale);
        }
        self.handle_route_ack(now, AckFrom::Node(fqdn), a)
    }

    /// A node refused a Route Direction (full, or an attestation that did not verify).
    pub(super) fn handle_node_refusal(&mut self, now: Instant, fqdn: &Fqdn, r: Refusal) -> Received {
        if r.in_reply_to != MsgType::RouteDirection {
            return self.drops.count(DropReason::Unexpected);
        }
        if let Some(fi) = self.forwards.iter().position(|f| f.request_id == r.request_id && f.cn == *fqdn) {
            let f = self.forwards.swap_remove(fi);
            let msg =
                Message::Refusal(Refusal::new(MsgType::RouteDirection, f.dc_request, r.reason, r.detail.as_str()));
            self.send_server(now, To::Peer(f.peer), msg);
            return Received::Handled;
        }
        let from = AckFrom::Node(fqdn);
        let found = self.negotiations.iter().position(|n| {
            n.direction_in_flight().is_some_and(|(id, side)| id == r.request_id && n.directed_at(side, from))
        });
        match found {
            Some(i) => {
                self.fail(now, i, r.reason, r.detail.as_str());
                Received::Handled
            }
            None => self.drops.count(DropReason::Stale),
        }
    }

    /// As DC_CN: deliver DC_MN's Route Direction to our node.
    fn handle_forward(&mut self, now: Instant, peer: usize, rd: RouteDirection) -> Received {
        if let Some(f) = self.forwards.iter().find(|f| f.session == rd.session && f.peer == peer) {
            if f.done_until.is_some() {
                let msg =
                    Message::RouteDirectionAck(RouteDirectionAck { request_id: rd.request_id, session: rd.session });
                self.send_server(now, To::Peer(peer), msg);
            }
            return Received::Handled;
        }
        if self.forwards.len() >= self.cfg.max_negotiations {
            let msg = Message::Refusal(Refusal::new(
                MsgType::RouteDirection,
                rd.request_id,
                Reason::Overloaded,
                "too many negotiations",
            ));
            self.send_server(now, To::Peer(peer), msg);
            return self.drops.count(DropReason::Limit);
        }
        if !self.owns(&rd.node) || !self.knows_node(&rd.node) {
            let msg = Message::Refusal(Refusal::new(
                MsgType::RouteDirection,
                rd.request_id,
                Reason::NotFound,
                "no such node here",
            ));
            self.send_server(now, To::Peer(peer), msg);
            return Received::Handled;
        }
        let dc_request = rd.request_id;
        let mut ours = rd;
        ours.request_id = self.ids.next();
        let cn = ours.node.clone();
        let prefer_v4 = ours.peer.endpoints.iter().next().map(SocketAddr::is_ipv4);
        self.send_to_node(now, &cn, &Message::RouteDirection(ours.clone()), prefer_v4);
        self.forwards.push(Forward {
            session: ours.session,
            peer,
            dc_request,
            cn,
            request_id: ours.request_id,
            retry: Retry::new(now, self.cfg.negotiation_backoff),
            rd: Some(ours),
            done_until: None,
        });
        Received::Handled
    }

    /// A node logged in afresh (a new K_ntmdc): it may be a new process, which lost the
    /// K_tun and K_tmp of the Route Directions sent to the old one. A retransmission would
    /// hand them to a process that seals from counter 0 again under that K_tun (and wraps
    /// a new K_mncn under that K_tmp at its one fixed nonce), so every direction to the
    /// node still waiting for its ack fails instead; MN asks again and gets new keys
    /// (docs/protocol.md, section 5).
    pub(super) fn abandon_directions_to(&mut self, now: Instant, fqdn: &Fqdn) {
        let waiting: Vec<usize> = (0..self.negotiations.len())
            .filter(|&i| {
                self.negotiations.get(i).is_some_and(|n| {
                    n.direction_in_flight().is_some_and(|(_, side)| n.directed_at(side, AckFrom::Node(fqdn)))
                })
            })
            .collect();
        // `fail` keeps the negotiation in place (finished), so the indices stay valid.
        for i in waiting {
            self.fail(now, i, Reason::PeerUnreachable, "the node logged in again");
        }
        let (gone, kept): (Vec<Forward>, Vec<Forward>) =
            core::mem::take(&mut self.forwards).into_iter().partition(|f| f.cn == *fqdn && f.done_until.is_none());
        self.forwards = kept;
        for f in gone {
            let msg = Message::Refusal(Refusal::new(
                MsgType::RouteDirection,
                f.dc_request,
                Reason::PeerUnreachable,
                "the node logged in again",
            ));
            self.send_server(now, To::Peer(f.peer), msg);
        }
    }

    /// Ends negotiation `i` with a refusal to MN.
    fn fail(&mut self, now: Instant, i: usize, reason: Reason, detail: &str) {
        let Some(n) = self.negotiations.get_mut(i) else { return };
        if n.finished() {
            return;
        }
        log::info!("negotiation {} ({} -> {}) failed: {reason:?} ({detail})", n.session, n.mn, n.cn);
        n.state = State::Finished { until: now + KEEP_FINISHED };
        n.k_tun = None;
        n.k_tmp = None;
        n.failure = Some((reason, detail.to_string()));
        let (mn, cn, session, request_id) = (n.mn.clone(), n.cn.clone(), n.session, n.mn_request);
        let msg = Message::Refusal(Refusal::new(MsgType::DirectionRequest, request_id, reason, detail));
        self.send_to_node(now, &mn, &msg, None);
        self.emit(DcEvent::TunnelRefused { session, mn, cn, reason });
    }

    /// Retransmissions and timeouts of negotiations and forwards.
    pub(super) fn drive_negotiations(&mut self, now: Instant) {
        self.negotiations.retain(|n| !matches!(n.state, State::Finished { until } if now >= until));
        // DNS queries whose negotiation is over (or whose answer never came) are forgotten.
        let waiting: std::collections::HashSet<SessionId> = self
            .negotiations
            .iter()
            .filter(|n| matches!(n.state, State::ExpectDcLocation))
            .map(|n| n.session)
            .collect();
        self.dns_waits.retain(|_, s| waiting.contains(s));
        for i in 0..self.negotiations.len() {
            let Some(n) = self.negotiations.get_mut(i) else { continue };
            if n.finished() {
                continue;
            }
            if now >= n.expires {
                self.fail(now, i, Reason::PeerUnreachable, "negotiation timed out");
                continue;
            }
            let retry = match &mut n.state {
                State::ExpectNodeInfo { retry, .. }
                | State::ExpectRelayAck { retry, .. }
                | State::ExpectFirstAck { retry, .. }
                | State::ExpectSecondAck { retry, .. } => retry,
                _ => continue,
            };
            if !retry.due(now) {
                continue;
            }
            if !retry.again(now) {
                let reason = match n.state {
                    State::ExpectRelayAck { .. } => Reason::NoRelay,
                    _ => Reason::PeerUnreachable,
                };
                self.fail(now, i, reason, "no answer");
                continue;
            }
            let (cn, mn, home) = (n.cn.clone(), n.mn.clone(), n.home);
            match n.state {
                // A server that does not answer a sealed request may have restarted and
                // lost our key: the retry goes with a fresh Key Share (it waits in the
                // link's queue until the share is acknowledged).
                State::ExpectNodeInfo { request_id, .. } => {
                    if let Some(Home::Remote(peer)) = home {
                        if let Some(p) = self.peers.get_mut(peer) {
                            p.forget_keys(now);
                            let msg = Message::NodeInfoRequest(NodeInfoRequest { request_id, fqdn: cn, requester: mn });
                            self.send_server(now, To::Peer(peer), msg);
                        }
                    }
                }
                State::ExpectRelayAck { request_id, relay, .. } => {
                    if self.relay_failover(now, i, relay) {
                        continue;
                    }
                    if let Some(r) = self.relays.get_mut(relay) {
                        r.link.forget_keys(now);
                        self.direct_relay(now, i, relay, Some(request_id));
                    }
                }
                State::ExpectFirstAck { request_id, .. } | State::ExpectSecondAck { request_id, .. } => {
                    let first = matches!(n.state, State::ExpectFirstAck { .. });
                    let side = if first { n.first_side() } else { other(n.first_side()) };
                    if let Some(mut rd) = self.route_direction(i, side) {
                        rd.request_id = request_id;
                        self.deliver_direction(now, i, side, rd);
                    }
                }
                _ => {}
            }
        }
        // Forwards (as DC_CN).
        self.forwards.retain(|f| f.done_until.is_none_or(|u| now < u));
        let mut resend = Vec::new();
        let mut failed = Vec::new();
        for (i, f) in self.forwards.iter_mut().enumerate() {
            if f.done_until.is_some() || !f.retry.due(now) {
                continue;
            }
            if f.retry.again(now) {
                if let Some(rd) = &f.rd {
                    resend.push((f.cn.clone(), rd.clone()));
                }
            } else {
                failed.push(i);
            }
        }
        for (cn, rd) in resend {
            let prefer_v4 = rd.peer.endpoints.iter().next().map(SocketAddr::is_ipv4);
            self.send_to_node(now, &cn, &Message::RouteDirection(rd), prefer_v4);
        }
        for i in failed.into_iter().rev() {
            let f = self.forwards.swap_remove(i);
            let msg = Message::Refusal(Refusal::new(
                MsgType::RouteDirection,
                f.dc_request,
                Reason::PeerUnreachable,
                "node does not answer",
            ));
            self.send_server(now, To::Peer(f.peer), msg);
        }
    }

    /// A refusal from an RS.
    pub(super) fn handle_server_refusal(&mut self, now: Instant, relay: usize, r: Refusal) -> Received {
        let found = self.negotiations.iter().position(
            |n| matches!(n.state, State::ExpectRelayAck { request_id, relay: x, .. } if request_id == r.request_id && x == relay),
        );
        let Some(i) = found else { return self.drops.count(DropReason::Stale) };
        // A full relay: note it and try the next best one, if any.
        if r.reason == Reason::Overloaded {
            if let Some(rl) = self.relays.get_mut(relay) {
                rl.capacity = rl.capacity.max(1);
                rl.sessions = rl.capacity;
            }
            let fams = match self.negotiations.get(i).and_then(|n| n.decision) {
                Some(Decision::Relay { mn_v4, cn_v4 }) => Some((mn_v4, cn_v4)),
                _ => None,
            };
            let next = fams.and_then(|(m, c)| self.select_relay(m, c)).filter(|&x| x != relay);
            if let Some(next) = next {
                log::info!("relay {relay} is full; trying relay {next}");
                self.direct_relay(now, i, next, None);
                return Received::Handled;
            }
        }
        self.fail(now, i, Reason::NoRelay, r.detail.as_str());
        Received::Handled
    }
}

fn other(side: Side) -> Side {
    if side == Side::Mn {
        Side::Cn
    } else {
        Side::Mn
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::direction::Endpoint;
    use crate::wire::VirtualAddrs;

    fn info(eps: &[(&str, bool)]) -> NodeInfo {
        mapped(eps, NatMapping::Untested)
    }

    fn mapped(eps: &[(&str, bool)], mapping: NatMapping) -> NodeInfo {
        let mut endpoints = List::new();
        let mut mappings = List::new();
        for (a, nat) in eps {
            endpoints.push(Endpoint { observed: a.parse().unwrap(), behind_nat: *nat }).unwrap();
            mappings.push(mapping).unwrap();
        }
        NodeInfo {
            fqdn: Fqdn::new("n.example").unwrap(),
            virtual_addrs: VirtualAddrs { v4: "198.18.0.2".parse().unwrap(), v6: "2001:db8:ff::2".parse().unwrap() },
            endpoints,
            local_addrs: List::new(),
            via_ns: false,
            attestation: None,
            tail: Tails(mappings, List::new()),
        }
    }

    #[test]
    fn a_gateway_policy_and_its_synthetic_addresses() {
        let policy = GatewayPolicy {
            relays: Vec::new(),
            all: false,
            names: vec![Fqdn::new("plain.example").unwrap()],
            prefixes: vec![([198, 51, 100, 0].into(), 24)],
            pool: ([198, 18, 100, 0].into(), 30),
        };
        assert!(policy.covers(&Fqdn::new("www.plain.example").unwrap()));
        assert!(policy.covers(&Fqdn::new("plain.example").unwrap()));
        assert!(!policy.covers(&Fqdn::new("plain.example.org").unwrap()));
        assert!(policy.allows([198, 51, 100, 7].into()) && !policy.allows([198, 51, 101, 7].into()));
        // A /30 has two hosts: the same real address keeps its synthetic one; a third
        // host is refused while both were looked up within the hold time, and takes the
        // one looked up longest ago once that is the hold time ago.
        let hold = crate::time::Duration::from_secs(100);
        let mut pool = SyntheticPool::new(policy.pool, hold);
        let t = |ms| Instant::from_millis(ms);
        let (a, b, c): (Ipv4Addr, Ipv4Addr, Ipv4Addr) =
            ([192, 0, 2, 1].into(), [192, 0, 2, 2].into(), [192, 0, 2, 3].into());
        assert_eq!(pool.get(t(1), a), Some([198, 18, 100, 1].into()));
        assert_eq!(pool.get(t(2), b), Some([198, 18, 100, 2].into()));
        assert_eq!(pool.get(t(3), a), Some([198, 18, 100, 1].into()), "the same host, the same address");
        assert_eq!(pool.get(t(4), c), None, "both addresses may be in use: c is refused, not given one");
        assert_eq!(pool.get(t(99_000), c), None, "b was looked up less than the hold time ago");
        assert_eq!(pool.get(t(100_002), c), Some([198, 18, 100, 2].into()), "b was not looked up for the hold time");
        assert_eq!(pool.get(t(100_003), a), Some([198, 18, 100, 1].into()));
        assert_eq!(pool.get(t(100_004), b), None, "b's address went to c, a's is held");
    }

    #[test]
    fn a_restored_pool_keeps_what_was_in_use() {
        // What a restarted DC restores: a lookup saved before the restart keeps its address
        // from every other host for the hold time.
        let hold = crate::time::Duration::from_secs(100);
        let t = |ms| Instant::from_millis(ms);
        let (host, www): (Ipv4Addr, Ipv4Addr) = ([198, 19, 80, 2].into(), [198, 19, 80, 3].into());
        let s1: Ipv4Addr = [198, 18, 100, 1].into();
        let mut pool = SyntheticPool::new(([198, 18, 100, 0].into(), 24), hold);
        pool.restore(host, s1, t(1_000)).unwrap();
        assert_ne!(pool.get(t(2_000), www), Some(s1), "www does not get the host's address");
        assert_eq!(pool.get(t(2_001), host), Some(s1), "the host keeps it");
        assert!(pool.restore(www, s1, t(1)).is_err(), "one address, one real address");
        assert!(pool.restore(www, [198, 18, 101, 1].into(), t(1)).is_err(), "outside the pool");
        let mut small = SyntheticPool::new(([198, 18, 100, 0].into(), 30), hold);
        small.restore(host, s1, t(1_000)).unwrap();
        small.restore(www, [198, 18, 100, 2].into(), t(1_000)).unwrap();
        assert_eq!(small.get(t(2_000), [198, 19, 80, 4].into()), None, "a restored full pool refuses");
    }

    #[test]
    fn route_decisions_for_each_placement() {
        let global4 = info(&[("192.0.2.1:4500", false)]);
        let nat4 = info(&[("203.0.113.9:1024", true)]);
        let nat4b = info(&[("198.51.100.9:2048", true)]);
        let only6 = info(&[("[2001:db8:2::5]:4500", false)]);
        let dual = info(&[("203.0.113.7:999", true), ("[2001:db8:3::5]:4500", false)]);
        assert_eq!(decide(&global4, &global4), Decision::Direct { v4: true, initiator: Side::Mn });
        assert_eq!(decide(&nat4, &global4), Decision::Direct { v4: true, initiator: Side::Mn });
        assert_eq!(decide(&global4, &nat4), Decision::Direct { v4: true, initiator: Side::Cn });
        assert_eq!(decide(&nat4, &nat4b), Decision::Relay { mn_v4: true, cn_v4: true });
        assert_eq!(decide(&nat4, &only6), Decision::Relay { mn_v4: true, cn_v4: false });
        assert_eq!(decide(&only6, &nat4), Decision::Relay { mn_v4: false, cn_v4: true });
        // IPv6 is preferred: no NAT there.
        assert_eq!(decide(&dual, &only6), Decision::Direct { v4: false, initiator: Side::Mn });
        assert_eq!(decide(&info(&[]), &global4), Decision::NoRoute);
    }

    #[test]
    fn a_search_of_ports_is_directed_only_when_exactly_one_nat_maps_per_destination() {
        let hard = mapped(&[("203.0.113.9:40000", true)], NatMapping::Dependent);
        let easy = mapped(&[("198.51.100.9:4500", true)], NatMapping::Independent);
        let hard2 = mapped(&[("192.0.2.77:50000", true)], NatMapping::Dependent);
        let easy2 = mapped(&[("192.0.2.88:4500", true)], NatMapping::Independent);
        let untested = mapped(&[("192.0.2.99:4500", true)], NatMapping::Untested);
        let public = mapped(&[("192.0.2.1:4500", false)], NatMapping::Independent);
        let t = |a: &NodeInfo, b: &NodeInfo| (traversal(decide(a, b), a, b), traversal(decide(a, b), b, a));
        assert_eq!(t(&hard, &easy), (Traversal::OpenPorts, Traversal::GuessPorts));
        assert_eq!(t(&easy, &hard), (Traversal::GuessPorts, Traversal::OpenPorts));
        // Both symmetric: no guess can meet mappings that both sides hide.
        assert_eq!(t(&hard, &hard2), (Traversal::Usual, Traversal::Usual));
        // Both cone: route optimization finds the path.
        assert_eq!(t(&easy, &easy2), (Traversal::Usual, Traversal::Usual));
        // Not tested: nothing is known, nothing is spent.
        assert_eq!(t(&hard, &untested), (Traversal::Usual, Traversal::Usual));
        // One side public: the tunnel is direct, no search.
        assert_eq!(t(&hard, &public), (Traversal::Usual, Traversal::Usual));
    }
}
