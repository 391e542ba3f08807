//! The DC's nodes: keys from the AS, registration with NAT detection and virtual
//! addresses, keepalive, and delivery of DC messages by UDP or through the NS.

use super::{Dc, DcEvent, To};
use crate::crypto::Channel;
use crate::engine::ConfigError;
use crate::engine::{DropReason, Received, Retry, Via};
use crate::keys::{KNtmDc, KNtmNs, KeyGrant, NtmDc};
use crate::time::Instant;
use crate::wire::direction::{Endpoint, NodeInfo};
use crate::wire::login::{KeyDistribution, NtmAck};
use crate::wire::notification::{Notify, NsKeyDistribution};
use crate::wire::prefix::ANNOUNCED_MAX;
use crate::wire::refusal::{Reason, Refusal};
use crate::wire::registration::{
    Keepalive, KeepaliveAck, KeepaliveMethod, MappingOffer, MappingProbe, MappingProbeAck, NatMapping, NsGrant,
    RegistrationRequest, RegistrationResponse, LOCAL_ADDRS_MAX,
};
use crate::wire::{
    Bytes, Fqdn, Header, KeyId, Lifetime, List, Message, MsgType, Prefix, RequestId, Sender, Tails, VirtualAddrs,
};
use core::net::SocketAddr;

/// Where the DC last saw a node in one family.
#[derive(Clone, Copy, Debug)]
pub(super) struct Seen {
    pub(super) observed: SocketAddr,
    pub(super) behind_nat: bool,
    /// The mapping test's verdict for `observed` (untested after every change of it).
    pub(super) mapping: NatMapping,
    last_seen: Instant,
}

/// A node's K_ntmns and the NS that holds it.
pub(super) struct NsBinding {
    ns: usize,
    key_id: KeyId,
    key: KNtmNs,
    expires: Instant,
    acked: bool,
}

/// Everything the DC keeps about one node.
pub(super) struct NodeRecord {
    pub(super) fqdn: Fqdn,
    pub(super) channel: Channel<NtmDc>,
    pub(super) attestation: Option<crate::crypto::pk::Attestation>,
    pub(super) virtual_addrs: Option<VirtualAddrs>,
    /// Where the node was seen: [IPv4, IPv6].
    pub(super) seen: [Option<Seen>; 2],
    local_addrs: List<SocketAddr, LOCAL_ADDRS_MAX>,
    /// The prefixes it announced at its last registration (subnet routes).
    pub(super) announced: List<Prefix, ANNOUNCED_MAX>,
    method: KeepaliveMethod,
    ns: Option<NsBinding>,
    /// Registrations waiting for the NS to acknowledge K_ntmns.
    waiting: Vec<(RequestId, SocketAddr)>,
    /// False from a registration until the driver reports the node's state saved (with
    /// [`DcConfig::hold_registrations_until_saved`](super::DcConfig)).
    saved: bool,
    /// Registration Responses held until then (at most [`UNSAVED_MAX`]).
    unsaved: Vec<(RequestId, SocketAddr)>,
    /// When the DC last asked for a push to this node.
    last_push: Option<Instant>,
}

impl NodeRecord {
    pub(super) fn held_keys(&self, out: &mut Vec<(&'static str, u64)>) {
        out.push(("K_ntmdc", self.channel.key().fingerprint()));
        if let Some(b) = &self.ns {
            out.push(("K_ntmns", b.key.fingerprint()));
        }
    }

    fn via_ns(&self) -> bool {
        let behind = self.seen.iter().flatten().all(|s| s.behind_nat);
        matches!(self.method, KeepaliveMethod::Ns) && self.ns.as_ref().is_some_and(|b| b.acked) && behind
    }
}

/// An NsKeyDistribution waiting for its acknowledgement.
pub(super) struct PendingNsKey {
    fqdn: Fqdn,
    request_id: RequestId,
    msg: Message,
    ns: usize,
    pub(super) retry: Retry,
}

fn family(addr: &SocketAddr) -> usize {
    if addr.is_ipv4() {
        0
    } else {
        1
    }
}

/// Most Registration Responses held per node while its registration is not saved: the
/// node retransmits with the same request id, so a few cover every family.
const UNSAVED_MAX: usize = 4;

/// Least time between two push requests for one node.
const PUSH_INTERVAL: crate::time::Duration = crate::time::Duration::from_secs(10);
/// A node heard from within this long still has its NAT's UDP mapping to the DC: NATs
/// keep an idle one for 30 s at the least in practice (RFC 4787 REQ-5 asks for 2 min).
const UDP_FRESH: crate::time::Duration = crate::time::Duration::from_secs(20);

/// Plain refusals (for unknown keys) allowed per second, in total and per source: they
/// are unauthenticated, so they are rate-limited to stay useless for reflection, and one
/// source gets only its share (see `engine::hints::HintBudget`).
pub(super) const PLAIN_REFUSALS_PER_SECOND: u32 = 50;
pub(super) const PLAIN_REFUSALS_PER_SOURCE: u32 = 10;

impl Dc {
    /// Key Distribution from the AS (spec 4.1 step 2): hold the node's K_ntmdc.
    pub(super) fn handle_key_distribution(&mut self, now: Instant, from: SocketAddr, kd: KeyDistribution) -> Received {
        let refuse = |reason, detail: &str| {
            Message::Refusal(Refusal::new(MsgType::KeyDistribution, kd.request_id, reason, detail))
        };
        if !self.owns(&kd.fqdn) {
            let msg = refuse(Reason::NotFound, "name is not in this DC's zones");
            self.reply_tls(from, &msg);
            return self.drops.count(DropReason::Unauthorized);
        }
        if !self.nodes.contains_key(&kd.fqdn) && self.nodes.len() >= self.cfg.max_nodes {
            let msg = refuse(Reason::Overloaded, "node table full");
            self.reply_tls(from, &msg);
            return self.drops.count(DropReason::Limit);
        }
        self.tell_displaced(now, &kd.fqdn, kd.key_id);
        let KeyGrant { key, lifetime } = kd.k_ntmdc;
        let channel = match Channel::new(key, kd.key_id, Sender::Dc, now + lifetime.duration()) {
            Ok(c) => c,
            Err(_) => return self.drops.count(DropReason::Malformed),
        };
        match self.nodes.get_mut(&kd.fqdn) {
            // The key we hold already, again: its channel keeps its counter (a new channel
            // would seal from 0 again under the same key).
            Some(rec) if rec.channel.id() == kd.key_id && rec.channel.key() == channel.key() => {}
            Some(rec) => {
                // Re-login: the new key replaces the old; registration state stays. The NS
                // binding does not: a node that logged in afresh may have restarted and
                // lost its K_ntmns counter, so the same K_ntmns again would have it seal
                // counters 0, 1, 2... a second time. Its next registration binds a new one
                // (docs/protocol.md, section 5).
                self.keys.remove(&rec.channel.id());
                rec.channel = channel;
                rec.attestation = kd.attestation;
                // Nor do the places it was seen, past its next registration: the node
                // registers right after its login, from every family it has now, and an
                // endpoint it no longer registers from (a network it left while the DC was
                // not told) would keep the DC sending there instead of through the NS.
                // With no address list held, that first registration counts as a move and
                // drops the other family's endpoint until that family registers too; until
                // then the DC can still reach the node where it was.
                rec.local_addrs = List::new();
                rec.ns = None;
                rec.waiting.clear();
                self.pending_ns.retain(|p| p.fqdn != kd.fqdn);
                self.abandon_directions_to(now, &kd.fqdn);
            }
            None => {
                self.nodes.insert(
                    kd.fqdn.clone(),
                    NodeRecord {
                        fqdn: kd.fqdn.clone(),
                        channel,
                        attestation: kd.attestation,
                        virtual_addrs: None,
                        seen: [None, None],
                        local_addrs: List::new(),
                        announced: List::new(),
                        method: KeepaliveMethod::Udp,
                        ns: None,
                        waiting: Vec::new(),
                        saved: true,
                        unsaved: Vec::new(),
                        last_push: None,
                    },
                );
            }
        }
        self.keys.insert(kd.key_id, kd.fqdn.clone());
        log::info!("key {} for {} from the AS", kd.key_id, kd.fqdn);
        let ack = Message::NtmAck(NtmAck { request_id: kd.request_id, key_id: kd.key_id });
        self.reply_tls(from, &ack);
        self.emit(DcEvent::NodeKeyReceived { fqdn: kd.fqdn });
        Received::Handled
    }

    /// A new key for a node that is registered under another one: a second login for the
    /// same name (the same credential on two devices, or the node renewing its key). The
    /// holder of the old key is told, sealed with that key, so that a device whose
    /// registration was taken over by a copy of its credential can say so (the node
    /// ignores it while it is logging in itself). An AS retransmission (same key id)
    /// tells no one.
    fn tell_displaced(&mut self, now: Instant, fqdn: &Fqdn, new_key: KeyId) {
        let Some(rec) = self.nodes.get(fqdn) else { return };
        let seen: Vec<SocketAddr> = rec.seen.iter().flatten().map(|s| s.observed).collect();
        if rec.channel.id() == new_key || seen.is_empty() || rec.channel.is_expired(now) {
            return;
        }
        log::warn!(
            "{fqdn}: a new login (key {new_key}) replaces the one registered from {seen:?} (key {}); telling that node",
            rec.channel.id()
        );
        let request_id = self.ids.next();
        let msg = Message::Refusal(Refusal::new(
            MsgType::RegistrationRequest,
            request_id,
            Reason::Displaced,
            "another login for this name took over the registration",
        ));
        self.send_to_node(now, fqdn, &msg, None);
    }

    /// Opens a datagram sealed with a node's K_ntmdc (`key_id`): the node and the message.
    fn open_from_node(&mut self, now: Instant, key_id: KeyId, buf: &[u8]) -> Result<(Fqdn, Message), DropReason> {
        let fqdn = self.keys.get(&key_id).cloned().ok_or(DropReason::UnknownKey)?;
        let rec = self.nodes.get_mut(&fqdn).ok_or(DropReason::UnknownKey)?;
        let (_, msg) = rec.channel.open(now, buf).map_err(DropReason::from)?;
        Ok((fqdn, msg))
    }

    /// A datagram sealed with a node's K_ntmdc.
    pub(super) fn handle_node_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        key_id: KeyId,
        buf: &[u8],
    ) -> Received {
        let (fqdn, msg) = match self.open_from_node(now, key_id, buf) {
            Ok(m) => m,
            Err(why) => return self.drops.count(why),
        };
        match msg {
            Message::RegistrationRequest(r) => self.handle_registration(now, &fqdn, from, r),
            Message::Keepalive(k) => self.handle_keepalive(now, &fqdn, from, k),
            Message::DirectionRequest(d) => self.handle_direction_request(now, &fqdn, d),
            Message::RouteDirectionAck(a) => self.handle_route_ack_from_node(now, &fqdn, a),
            Message::Refusal(r) => self.handle_node_refusal(now, &fqdn, r),
            _ => self.drops.count(DropReason::Unexpected),
        }
    }

    /// Why `fqdn` may not announce `announced`: a prefix overlapping this DC's virtual
    /// prefixes or another node's announced prefix (two boxes cannot both route it).
    fn announce_conflict(&self, fqdn: &Fqdn, announced: &[Prefix]) -> Option<String> {
        for p in announced {
            if let Some(v) = self.pool.prefixes().iter().find(|v| v.overlaps(p)) {
                return Some(format!("announced prefix {p} overlaps the virtual prefix {v}"));
            }
            for (other, rec) in self.nodes.iter().filter(|(n, _)| *n != fqdn) {
                if let Some(o) = rec.announced.iter().find(|o| o.overlaps(p)) {
                    return Some(format!("announced prefix {p} overlaps {o} of {other}"));
                }
            }
        }
        None
    }

    fn handle_registration(&mut self, now: Instant, fqdn: &Fqdn, from: SocketAddr, r: RegistrationRequest) -> Received {
        if let Some(detail) = self.announce_conflict(fqdn, r.announced.0.as_slice()) {
            log::warn!("{fqdn}: registration refused: {detail}");
            let msg =
                Message::Refusal(Refusal::new(MsgType::RegistrationRequest, r.request_id, Reason::Conflict, &detail));
            self.send_to_node_at(now, fqdn, from, &msg);
            return self.drops.count(DropReason::Unauthorized);
        }
        let Some(virtual_addrs) = self.pool.assign(fqdn) else {
            let msg = Message::Refusal(Refusal::new(
                MsgType::RegistrationRequest,
                r.request_id,
                Reason::Overloaded,
                "virtual address pool exhausted",
            ));
            self.send_to_node_at(now, fqdn, from, &msg);
            return self.drops.count(DropReason::Limit);
        };
        let ns_count = self.ns.len();
        let ns_lifetime = self.cfg.ntmns_lifetime;
        let Some(rec) = self.nodes.get_mut(fqdn) else { return self.drops.count(DropReason::UnknownKey) };
        // NAT detection (spec 4.2 step 2): the source we see is none of the node's own
        // addresses, so something between us rewrote it.
        let behind_nat = !r.local_addrs.iter().any(|a| *a == from);
        let fam = family(&from);
        // The node's addresses changed (it moved): where it was seen in the other family
        // is no longer known to hold. The node registers from every family it has after a
        // change, so that family's registration puts it back; one that never comes (the
        // family has no way out on the new network) leaves no stale endpoint behind.
        let moved = rec.local_addrs.as_slice() != r.local_addrs.as_slice();
        for (f, slot) in rec.seen.iter_mut().enumerate() {
            // A family the node no longer has an address in is no longer a way to reach it
            // (it moved from a dual-stack network to a single-stack one).
            if f != fam && (moved || !r.local_addrs.iter().any(|a| family(a) == f)) {
                *slot = None;
            }
        }
        if let Some(slot) = rec.seen.get_mut(fam) {
            // The verdict holds while the node is seen at the same place.
            let mapping = slot.filter(|s| s.observed == from).map_or(NatMapping::Untested, |s| s.mapping);
            *slot = Some(Seen { observed: from, behind_nat, mapping, last_seen: now });
        }
        rec.virtual_addrs = Some(virtual_addrs);
        rec.local_addrs = r.local_addrs;
        rec.announced = r.announced.0;
        rec.method = r.keepalive;
        rec.saved = false;
        let ns_key_lost = r.ns_key_lost;
        self.emit(DcEvent::NodeRegistered { fqdn: fqdn.clone(), virtual_addrs, observed: from, behind_nat });
        let wants_ns = matches!(self.nodes.get(fqdn).map(|n| &n.method), Some(KeepaliveMethod::Ns)) && ns_count > 0;
        if !wants_ns {
            self.respond_registration(now, fqdn, r.request_id, from);
            return Received::Handled;
        }
        let Some(rec) = self.nodes.get_mut(fqdn) else { return Received::Handled };
        let renew = rec.ns.as_ref().is_none_or(|b| now >= b.expires - ns_lifetime / 10);
        // Recovery: the node's NS told it that it does not know this K_ntmns (it
        // restarted). The key is never given out again, to that NS or any other: the NS
        // would start its counters over under it. A fresh one is made and distributed.
        let lost = ns_key_lost.is_some_and(|id| rec.ns.as_ref().is_some_and(|b| b.key_id == id));
        if lost {
            log::info!("{fqdn}: its NS lost the node's K_ntmns; binding a new one");
        }
        let renew = renew || lost;
        if !renew && rec.ns.as_ref().is_some_and(|b| b.acked) {
            self.respond_registration(now, fqdn, r.request_id, from);
            return Received::Handled;
        }
        if !rec.waiting.iter().any(|(id, _)| *id == r.request_id) {
            rec.waiting.push((r.request_id, from));
        }
        if renew {
            self.bind_ns(now, fqdn);
        }
        Received::Handled
    }

    /// Makes K_ntmns for a node and gives it to the node's NS (spec 4.2, Fig. 4).
    fn bind_ns(&mut self, now: Instant, fqdn: &Fqdn) {
        let Some(ns) = fqdn.as_str().bytes().map(usize::from).sum::<usize>().checked_rem(self.ns.len()) else { return };
        let key = KNtmNs::generate(&mut *self.rng);
        let key_id = KeyId(self.rng.next_u32());
        let lifetime = self.cfg.ntmns_lifetime;
        let Some(rec) = self.nodes.get_mut(fqdn) else { return };
        rec.ns = Some(NsBinding { ns, key_id, key: key.clone(), expires: now + lifetime, acked: false });
        let request_id = self.ids.next();
        let msg = Message::NsKeyDistribution(NsKeyDistribution {
            request_id,
            fqdn: fqdn.clone(),
            key_id,
            k_ntmns: KeyGrant { key, lifetime: Lifetime::from_duration(lifetime) },
        });
        self.pending_ns.retain(|p| p.fqdn != *fqdn);
        self.pending_ns.push(PendingNsKey {
            fqdn: fqdn.clone(),
            request_id,
            msg: msg.clone(),
            ns,
            retry: Retry::new(now, self.cfg.backoff),
        });
        self.send_server(now, To::Ns(ns), msg);
    }

    fn respond_registration(&mut self, now: Instant, fqdn: &Fqdn, request_id: RequestId, to: SocketAddr) {
        let keepalive_secs = u16::try_from(self.cfg.keepalive_interval.as_secs()).unwrap_or(u16::MAX);
        let hold = self.cfg.hold_registrations_until_saved;
        if let Some(rec) = self.nodes.get_mut(fqdn).filter(|r| hold && !r.saved) {
            // Not durable yet: answered once the driver saved it (registration_saved).
            rec.unsaved.retain(|(id, _)| *id != request_id);
            if rec.unsaved.len() >= UNSAVED_MAX {
                rec.unsaved.remove(0);
            }
            rec.unsaved.push((request_id, to));
            return;
        }
        let Some(rec) = self.nodes.get(fqdn) else { return };
        let Some(virtual_addrs) = rec.virtual_addrs else { return };
        let seen = rec.seen.get(family(&to)).copied().flatten();
        let behind_nat = seen.is_some_and(|s| s.behind_nat);
        let untested = seen.is_some_and(|s| s.mapping == NatMapping::Untested);
        let ns = match (&rec.method, &rec.ns) {
            (KeepaliveMethod::Ns, Some(b)) if b.acked => self.ns.get(b.ns).and_then(|n| {
                Some(NsGrant {
                    ns_fqdn: n.link.name.clone(),
                    ns_addr: n.node.node_addr_for(&to)?,
                    key_id: b.key_id,
                    k_ntmns: KeyGrant {
                        key: b.key.clone(),
                        lifetime: Lifetime::from_duration(b.expires.saturating_duration_since(now)),
                    },
                })
            }),
            _ => None,
        };
        let keepalive_interval = if ns.is_some() { 0 } else { keepalive_secs };
        let msg = Message::RegistrationResponse(RegistrationResponse {
            request_id,
            virtual_addrs,
            observed: to,
            behind_nat,
            keepalive_interval,
            ns,
        });
        self.send_to_node_at(now, fqdn, to, &msg);
        // The mapping test, offered behind a NAT until it has a verdict. A box of an
        // earlier build drops the offer, a type it does not know, and stays untested.
        if behind_nat && untested && self.cfg.mapping_port != 0 {
            let offer = Message::MappingOffer(MappingOffer { port: self.cfg.mapping_port });
            self.send_to_node_at(now, fqdn, to, &offer);
        }
        // The names the gateway serves, for the box's DNS hook. A box of an earlier build
        // drops the offer and never asks for them: nothing changes for it.
        if let Some(g) = &self.cfg.gateway {
            let names = crate::wire::List::from_vec(g.names.iter().take(16).cloned().collect()).unwrap_or_default();
            let offer = Message::GatewayOffer(crate::wire::route::GatewayOffer { all: g.all, names });
            self.send_to_node_at(now, fqdn, to, &offer);
        }
    }

    /// A datagram to the mapping port ([`super::MAPPING_PORT`]): only a node's Mapping
    /// Probe is taken there. The verdict compares where the probe came from with where the
    /// node's registration or keepalive came from, in the same family: the same outside
    /// address and port means one mapping whatever the destination.
    pub fn handle_mapping_datagram(&mut self, now: Instant, from: SocketAddr, buf: &[u8]) -> Received {
        let (ty, sealed, key_id) = match crate::wire::Envelope::new_checked(buf) {
            Ok(e) => (e.msg_type(), e.sealed(), e.key_id()),
            Err(e) => return self.drops.count(DropReason::from(e)),
        };
        if !sealed || ty != MsgType::MappingProbe {
            return self.drops.count(DropReason::Unexpected);
        }
        let (fqdn, request_id) = match self.open_from_node(now, key_id, buf) {
            Ok((fqdn, Message::MappingProbe(MappingProbe { request_id }))) => (fqdn, request_id),
            Ok(_) => return self.drops.count(DropReason::Unexpected),
            Err(why) => return self.drops.count(why),
        };
        let Some(rec) = self.nodes.get_mut(&fqdn) else { return self.drops.count(DropReason::UnknownKey) };
        // Only a node registered in this family is tested: its registration is the other
        // observation.
        let Some(Some(seen)) = rec.seen.get_mut(family(&from)) else { return self.drops.count(DropReason::Stale) };
        let mapping = match (seen.observed.ip() == from.ip(), seen.observed.port() == from.port()) {
            (true, true) => NatMapping::Independent,
            (true, false) => NatMapping::Dependent,
            // Another outside address (a NAT with a pool of them): a guess of ports at one
            // address would miss.
            (false, _) => NatMapping::Untested,
        };
        let changed = seen.mapping != mapping;
        if changed {
            log::info!("{fqdn}: NAT mapping at {} is {mapping:?} (mapping port saw {from})", seen.observed);
        }
        seen.mapping = mapping;
        let msg = Message::MappingProbeAck(MappingProbeAck { request_id, observed: from, mapping });
        match rec.channel.seal(now, &msg) {
            Ok(bytes) => self.transmit(Via::UdpFrom(super::MAPPING_PORT), from, bytes),
            Err(e) => log::warn!("cannot seal for {fqdn}: {e}"),
        }
        if changed {
            // Part of the node's saved state: a DC restarted from it still knows.
            self.emit(DcEvent::MappingTested { fqdn, mapping });
        }
        Received::Handled
    }

    fn handle_keepalive(&mut self, now: Instant, fqdn: &Fqdn, from: SocketAddr, k: Keepalive) -> Received {
        let Some(rec) = self.nodes.get_mut(fqdn) else { return self.drops.count(DropReason::UnknownKey) };
        let fam = family(&from);
        if let Some(Some(seen)) = rec.seen.get_mut(fam) {
            if seen.observed != from {
                log::info!("{fqdn}: NAT rebinding, now seen at {from}");
                seen.observed = from;
                seen.mapping = NatMapping::Untested;
            }
            seen.last_seen = now;
        }
        let msg = Message::KeepaliveAck(KeepaliveAck { request_id: k.request_id, observed: from });
        self.send_to_node_at(now, fqdn, from, &msg);
        Received::Handled
    }

    /// Seals `msg` for the node and sends it to `to` over UDP.
    pub(super) fn send_to_node_at(&mut self, now: Instant, fqdn: &Fqdn, to: SocketAddr, msg: &Message) {
        let Some(rec) = self.nodes.get_mut(fqdn) else { return };
        match rec.channel.seal(now, msg) {
            Ok(bytes) => self.transmit(Via::Udp, to, bytes),
            Err(e) => log::warn!("cannot seal for {fqdn}: {e}"),
        }
    }

    /// Delivers a message to a node by its keepalive method (spec 4.2 step 4): through
    /// its NS if it keeps its NAT state there, else by UDP to where it was last seen
    /// (`prefer_v4` picks the family when it has both). False if the node is unreachable.
    pub(super) fn send_to_node(&mut self, now: Instant, fqdn: &Fqdn, msg: &Message, prefer_v4: Option<bool>) -> bool {
        let Some(rec) = self.nodes.get_mut(fqdn) else { return false };
        let bytes = match rec.channel.seal(now, msg) {
            Ok(b) => b,
            Err(e) => {
                log::warn!("cannot seal for {fqdn}: {e}");
                return false;
            }
        };
        if let KeepaliveMethod::Push(token) = &rec.method {
            if rec.seen.iter().flatten().all(|s| s.behind_nat) {
                // One push per PUSH_INTERVAL, however often the message is retransmitted.
                let due = rec.last_push.is_none_or(|t| now >= t + PUSH_INTERVAL);
                let ev = due.then(|| DcEvent::PushNeeded { fqdn: fqdn.clone(), token: token.as_slice().to_vec() });
                if due {
                    rec.last_push = Some(now);
                }
                // Still try UDP: the mapping may be alive.
                let to = rec.seen.iter().flatten().map(|s| s.observed).next();
                if let Some(ev) = ev {
                    self.emit(ev);
                }
                if let Some(to) = to {
                    self.transmit(Via::Udp, to, bytes);
                }
                return true;
            }
        }
        if rec.via_ns() {
            let Some(b) = rec.ns.as_ref() else { return false };
            let (ns, node_key_id) = (b.ns, b.key_id);
            // A node heard from moments ago (it has just registered, after a move) still
            // has its UDP mapping, while its connection to the NS may not be up again
            // yet: send straight to it as well. The copy that arrives second is a replay
            // to the node and dropped.
            let fresh = rec
                .seen
                .iter()
                .flatten()
                .filter(|s| now.saturating_duration_since(s.last_seen) < UDP_FRESH)
                .max_by_key(|s| s.last_seen)
                .map(|s| s.observed);
            if let Some(to) = fresh {
                self.transmit(Via::Udp, to, bytes.clone());
            }
            let Ok(payload) = Bytes::new(bytes) else { return false };
            let request_id = self.ids.next();
            self.send_server(now, To::Ns(ns), Message::Notify(Notify { request_id, node_key_id, payload }));
            return true;
        }
        let order: [usize; 2] = if prefer_v4 == Some(false) { [1, 0] } else { [0, 1] };
        let to = order.iter().filter_map(|&f| rec.seen.get(f).copied().flatten()).map(|s| s.observed).next();
        match to {
            Some(to) => {
                self.transmit(Via::Udp, to, bytes);
                true
            }
            None => false,
        }
    }

    /// What DC_MN needs to know about one of our nodes (spec 4.3 step 2).
    pub(super) fn node_info(&self, fqdn: &Fqdn) -> Option<NodeInfo> {
        let rec = self.nodes.get(fqdn)?;
        let virtual_addrs = rec.virtual_addrs?;
        let (mut endpoints, mut mappings) = (List::new(), List::new());
        for s in rec.seen.iter().flatten() {
            // At most two families, within the lists' capacity of two.
            let _ = endpoints.push(Endpoint { observed: s.observed, behind_nat: s.behind_nat });
            let _ = mappings.push(s.mapping);
        }
        // All untested: no list (what an earlier build sends, and all it can read).
        if mappings.iter().all(|m| *m == NatMapping::Untested) {
            mappings = List::new();
        }
        if endpoints.is_empty() {
            return None;
        }
        Some(NodeInfo {
            fqdn: fqdn.clone(),
            virtual_addrs,
            endpoints,
            local_addrs: rec.local_addrs.clone(),
            via_ns: rec.via_ns(),
            attestation: rec.attestation.clone(),
            tail: Tails(mappings, rec.announced.clone()),
        })
    }

    /// True if the node's key is held (it logged in) even if it never registered.
    pub(super) fn knows_node(&self, fqdn: &Fqdn) -> bool {
        self.nodes.contains_key(fqdn)
    }

    /// A datagram under a key id we do not know, of a type only nodes send: answer in
    /// the clear so the node logs in again. The refusal's header names the key id (a node
    /// acts only on refusals naming its own key), its body cannot name the request.
    pub(super) fn refuse_unknown_key(&mut self, now: Instant, from: SocketAddr, ty: MsgType, buf: &[u8]) {
        if !self.plain_refusals.allow(now, &from) {
            return;
        }
        let Ok(env) = crate::wire::Envelope::new_checked(buf) else { return };
        let refusal = Message::Refusal(Refusal::new(ty, RequestId(0), Reason::UnknownKey, "unknown key; log in again"));
        let mut header = Header::plain(MsgType::Refusal, Sender::Dc);
        header.key_id = env.key_id();
        let mut bytes = header.to_bytes().to_vec();
        bytes.extend_from_slice(&refusal.body_to_vec());
        self.transmit(Via::Udp, from, bytes);
    }

    pub(super) fn handle_ns_message(&mut self, now: Instant, _i: usize, msg: Message) -> Received {
        match msg {
            Message::NsKeyAck(a) => {
                let Some(p) = self.pending_ns.iter().position(|p| p.request_id == a.request_id) else {
                    return self.drops.count(DropReason::Stale);
                };
                let p = self.pending_ns.swap_remove(p);
                let mut bound = false;
                let waiting = match self.nodes.get_mut(&p.fqdn) {
                    Some(rec) => {
                        if let Some(b) = rec.ns.as_mut().filter(|b| b.key_id == a.key_id) {
                            b.acked = true;
                            bound = true;
                        }
                        core::mem::take(&mut rec.waiting)
                    }
                    None => Vec::new(),
                };
                if bound {
                    // Before the Registration Responses: the driver hands over events
                    // before transmits, so the binding is saved before the node uses it.
                    self.emit(DcEvent::NsBound { fqdn: p.fqdn.clone() });
                }
                for (request_id, to) in waiting {
                    self.respond_registration(now, &p.fqdn, request_id, to);
                }
                Received::Handled
            }
            Message::NotifyAck(a) => {
                if !a.delivered {
                    log::info!("NS could not deliver notification {} (node not connected)", a.request_id);
                }
                Received::Handled
            }
            Message::Refusal(r) => {
                log::warn!("NS refused {:?}: {:?} ({})", r.in_reply_to, r.reason, r.detail.as_str());
                Received::Handled
            }
            _ => self.drops.count(DropReason::Unexpected),
        }
    }

    pub(super) fn drive_nodes(&mut self, now: Instant) {
        let mut resend = Vec::new();
        let mut failed = Vec::new();
        for (i, p) in self.pending_ns.iter_mut().enumerate() {
            if p.retry.due(now) {
                if p.retry.again(now) {
                    resend.push((p.ns, p.msg.clone()));
                } else {
                    failed.push(i);
                }
            }
        }
        for (ns, msg) in resend {
            // An NS that does not answer a sealed request may have restarted and lost
            // K_dcns too: the retry goes with a fresh Key Share, as for an RS or a DC
            // (negotiation.rs).
            if let Some(n) = self.ns.get_mut(ns) {
                n.link.forget_keys(now);
            }
            self.send_server(now, To::Ns(ns), msg);
        }
        for i in failed.into_iter().rev() {
            let p = self.pending_ns.swap_remove(i);
            log::warn!("NS does not acknowledge K_ntmns for {}; answering with UDP keepalive", p.fqdn);
            let waiting = self.nodes.get_mut(&p.fqdn).map(|r| {
                r.ns = None;
                core::mem::take(&mut r.waiting)
            });
            for (request_id, to) in waiting.unwrap_or_default() {
                self.respond_registration(now, &p.fqdn, request_id, to);
            }
        }
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + crate::time::Duration::from_secs(60);
        // Forget nodes whose key expired; their virtual addresses stay assigned.
        let expired: Vec<Fqdn> =
            self.nodes.values().filter(|n| n.channel.is_expired(now)).map(|n| n.fqdn.clone()).collect();
        for f in expired {
            if let Some(rec) = self.nodes.remove(&f) {
                self.keys.remove(&rec.channel.id());
                log::info!("{f}: K_ntmdc expired; node forgotten until it logs in again");
            }
        }
    }

    /// The driver saved the node's state as [`Dc::export_node`] gave it after its last
    /// registration: the Registration Responses held for it go out now.
    pub fn registration_saved(&mut self, now: Instant, fqdn: &Fqdn) {
        let Some(rec) = self.nodes.get_mut(fqdn) else { return };
        rec.saved = true;
        for (request_id, to) in core::mem::take(&mut rec.unsaved) {
            self.respond_registration(now, fqdn, request_id, to);
        }
    }

    /// The nodes whose last registration is not saved yet (their answers are held).
    pub fn unsaved_registrations(&self) -> Vec<Fqdn> {
        let mut v: Vec<Fqdn> = self.nodes.values().filter(|r| !r.saved).map(|r| r.fqdn.clone()).collect();
        v.sort();
        v
    }

    /// When node state next needs attention.
    pub(super) fn nodes_deadline(&self) -> Option<Instant> {
        let ns = self.pending_ns.iter().map(|p| p.retry.deadline()).min();
        [ns, Some(self.next_sweep)].into_iter().flatten().min()
    }

    /// A node's whole state, for the DC's database: with it a restarted DC serves the
    /// node without a new login. Contains K_ntmdc and K_ntmns: store it as a secret.
    pub fn export_node(&self, fqdn: &Fqdn) -> Option<NodeState> {
        let r = self.nodes.get(fqdn)?;
        Some(NodeState {
            fqdn: r.fqdn.clone(),
            key_id: r.channel.id(),
            key: r.channel.key().clone(),
            expires: r.channel.expires(),
            next_counter: r.channel.next_counter(),
            peer_counter: r.channel.peer_top(Sender::Node),
            attestation: r.attestation.clone(),
            virtual_addrs: r.virtual_addrs,
            endpoints: r.seen.iter().flatten().map(|s| (s.observed, s.behind_nat, s.mapping)).collect(),
            local_addrs: r.local_addrs.as_slice().to_vec(),
            announced: r.announced.as_slice().to_vec(),
            keepalive: r.method.clone(),
            ns: r.ns.as_ref().filter(|b| b.acked).and_then(|b| {
                let name = self.ns.get(b.ns)?.link.name.clone();
                Some(NsState { ns: name, key_id: b.key_id, key: b.key.clone(), expires: b.expires })
            }),
        })
    }

    /// Takes a node back from the database at start-up. `counter_floor` must be above
    /// every counter the DC may have sealed with before (the database reserves ahead), so
    /// no nonce is ever used twice. An expired key is refused.
    pub fn restore_node(&mut self, now: Instant, state: NodeState, counter_floor: u64) -> Result<(), ConfigError> {
        if now >= state.expires {
            return Err(ConfigError::new("node state", format!("{}: key expired", state.fqdn)));
        }
        if !self.owns(&state.fqdn) {
            return Err(ConfigError::new("node state", format!("{} is not in this DC's zones", state.fqdn)));
        }
        let mut channel = Channel::new(state.key, state.key_id, Sender::Dc, state.expires)
            .map_err(|e| ConfigError::new("node state", e.to_string()))?;
        channel.resume_at(state.next_counter.max(counter_floor));
        // Messages the node sent before the restart stay replays.
        channel.set_peer_floor(Sender::Node, state.peer_counter);
        if let Some(v) = state.virtual_addrs {
            self.pool.restore(&state.fqdn, v)?;
        }
        let mut seen = [None, None];
        for (observed, behind_nat, mapping) in state.endpoints {
            if let Some(slot) = seen.get_mut(family(&observed)) {
                *slot = Some(Seen { observed, behind_nat, mapping, last_seen: now });
            }
        }
        let ns = state.ns.and_then(|n| {
            let i = self.ns.iter().position(|l| l.link.name == n.ns)?;
            Some(NsBinding { ns: i, key_id: n.key_id, key: n.key, expires: n.expires, acked: true })
        });
        let local_addrs =
            List::from_vec(state.local_addrs.into_iter().take(LOCAL_ADDRS_MAX).collect()).unwrap_or_default();
        let announced = List::from_vec(state.announced.into_iter().take(ANNOUNCED_MAX).collect()).unwrap_or_default();
        if let Some(old) = self.nodes.get(&state.fqdn) {
            self.keys.remove(&old.channel.id());
        }
        self.keys.insert(state.key_id, state.fqdn.clone());
        self.nodes.insert(
            state.fqdn.clone(),
            NodeRecord {
                fqdn: state.fqdn,
                channel,
                attestation: state.attestation,
                virtual_addrs: state.virtual_addrs,
                seen,
                local_addrs,
                announced,
                method: state.keepalive,
                ns,
                waiting: Vec::new(),
                saved: true,
                unsaved: Vec::new(),
                last_push: None,
            },
        );
        Ok(())
    }

    /// The names of the nodes whose key the DC holds.
    pub fn node_names(&self) -> Vec<Fqdn> {
        let mut v: Vec<Fqdn> = self.nodes.keys().cloned().collect();
        v.sort();
        v
    }

    /// Lets the DC seal for `fqdn` under key `key_id` at counters below `limit` only: the
    /// driver sets it to what its store reserved, after every save, so no crash can
    /// resume below a counter that was used ([`Channel::limit_counter`]). Ignored if the
    /// node has another key by now.
    pub fn reserve_counters(&mut self, fqdn: &Fqdn, key_id: KeyId, limit: u64) {
        if let Some(rec) = self.nodes.get_mut(fqdn).filter(|r| r.channel.id() == key_id) {
            rec.channel.limit_counter(limit);
        }
    }

    /// The counter below which the DC may seal for `fqdn` ([`Dc::reserve_counters`]).
    pub fn counter_limit(&self, fqdn: &Fqdn) -> Option<u64> {
        self.nodes.get(fqdn).map(|r| r.channel.counter_limit())
    }

    /// A node's channel counters now: (our next sealing counter, one more than the
    /// newest counter accepted from the node). The database saves a node again when the
    /// first nears its reservation or the second moved.
    pub fn node_counters(&self, fqdn: &Fqdn) -> Option<(u64, u64)> {
        self.nodes.get(fqdn).map(|r| (r.channel.next_counter(), r.channel.peer_top(Sender::Node)))
    }

    /// Status: every node with its addresses and NAT verdicts.
    pub fn nodes(&self) -> Vec<NodeStatus> {
        let mut v: Vec<NodeStatus> = self
            .nodes
            .values()
            .map(|r| NodeStatus {
                fqdn: r.fqdn.clone(),
                virtual_addrs: r.virtual_addrs,
                endpoints: r.seen.iter().flatten().map(|s| (s.observed, s.behind_nat)).collect(),
                mappings: r.seen.iter().flatten().map(|s| s.mapping).collect(),
                announced: r.announced.as_slice().to_vec(),
                last_seen: r.seen.iter().flatten().map(|s| s.last_seen).max(),
                via_ns: r.via_ns(),
                key_expires: r.channel.expires(),
            })
            .collect();
        v.sort_by(|a, b| a.fqdn.cmp(&b.fqdn));
        v
    }
}

/// A node's state as the DC's database keeps it ([`Dc::export_node`],
/// [`Dc::restore_node`]). Holds keys: never log it, store it readable by the DC only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeState {
    /// The node.
    pub fqdn: Fqdn,
    /// Its K_ntmdc id.
    pub key_id: KeyId,
    /// K_ntmdc.
    pub key: KNtmDc,
    /// When K_ntmdc expires.
    pub expires: Instant,
    /// The DC's next sealing counter under K_ntmdc.
    pub next_counter: u64,
    /// One more than the newest counter accepted from the node: a restored DC refuses
    /// the node's older messages (replays of them).
    pub peer_counter: u64,
    /// Its attested public key.
    pub attestation: Option<crate::crypto::pk::Attestation>,
    /// Its virtual addresses, once registered.
    pub virtual_addrs: Option<VirtualAddrs>,
    /// Where it was seen, with the NAT verdict and the mapping test's.
    pub endpoints: Vec<(SocketAddr, bool, NatMapping)>,
    /// Its own addresses.
    pub local_addrs: Vec<SocketAddr>,
    /// The prefixes it announced (subnet routes).
    pub announced: Vec<Prefix>,
    /// Its keepalive method.
    pub keepalive: KeepaliveMethod,
    /// Its NS and K_ntmns, if it keeps alive through one.
    pub ns: Option<NsState>,
}

/// A node's NS binding as the database keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NsState {
    /// The NS's name.
    pub ns: Fqdn,
    /// K_ntmns's id.
    pub key_id: KeyId,
    /// K_ntmns.
    pub key: KNtmNs,
    /// When it expires.
    pub expires: Instant,
}

/// One node, as DC status shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    /// The node.
    pub fqdn: Fqdn,
    /// Its virtual addresses, once registered.
    pub virtual_addrs: Option<VirtualAddrs>,
    /// Where it was seen, with the NAT verdict.
    pub endpoints: Vec<(SocketAddr, bool)>,
    /// The mapping test's verdict for each of `endpoints`, in the same order.
    pub mappings: Vec<NatMapping>,
    /// The prefixes it announced (subnet routes).
    pub announced: Vec<Prefix>,
    /// True if the DC reaches it through an NS.
    pub via_ns: bool,
    /// When it last registered or kept alive.
    pub last_seen: Option<Instant>,
    /// When its K_ntmdc expires.
    pub key_expires: Instant,
}
