//! Registration and keepalive (spec 4.2): one [`Link`] per address family the node and
//! its DC share, each registered and kept alive on its own, so a dual-stack node is
//! reachable in both families and an IPv4-only or IPv6-only one in its own. With the NS
//! method, an [`NsLink`] holds the TCP connection to the NS.
//!
//! The DC grants the NS's node address of the family each Registration Request came in
//! (protocol.md, "NS grant"), so a node registered in both families learns one of each.
//! The node keeps every address it was granted for its NS and connects to one of a family
//! it has an address of; a lost connection moves on to the next such address, and a
//! network change picks again.
//!
//! The NS's keepalive interval (an hour) is an upper bound: a NAT may forget an idle
//! TCP mapping sooner, and the node would then be unreachable until its next keepalive.
//! So the node keeps the connection alive with NsProbes, which the NS acknowledges only
//! after the probe's delay of silence: an acknowledgement that does not come in time means
//! the mapping died (the NS's answer hit a NAT that no longer knew the connection).
//! [`KeepaliveLearning`] then falls back to the longest interval that held and grows again
//! step by step, as adaptive push heartbeats do; it settles below the shortest interval
//! that failed (protocol.md, "NS keepalive interval").
//!
//! An NS that restarted has lost our K_ntmns and says so with a plain UnknownKey refusal
//! naming the key: the node then registers again with `ns_key_lost`, and its DC makes a
//! fresh K_ntmns for it (protocol.md, section 10, "Recovery").

use super::login::{jittered, RELOGIN_HINT_INTERVAL};
use super::{Node, NodeEvent};
use crate::crypto::{parse_plain, Channel};
use crate::engine::{Backoff, DropReason, Received, Retry, StreamKind, Via};
use crate::keys::NtmNs;
use crate::time::{Duration, Instant};
use crate::wire::notification::{NotificationRegistration, NsProbe};
use crate::wire::refusal::Reason;
use crate::wire::registration::{
    Keepalive, KeepaliveAck, KeepaliveMethod, MappingOffer, MappingProbe, MappingProbeAck, NatMapping,
    RegistrationRequest, RegistrationResponse, LOCAL_ADDRS_MAX,
};
use crate::wire::{Envelope, Fqdn, List, Message, MsgType, RequestId, Sender};
use core::net::SocketAddr;

/// Wait before registering again after every attempt failed.
const REREGISTER_AFTER: Duration = Duration::from_secs(30);
/// How long a node whose registration another login took over waits before it logs in
/// and registers again: two devices with one credential then take turns every few
/// minutes, each saying so in its log, instead of displacing each other at every message.
pub(super) const DISPLACED_HOLDOFF: Duration = Duration::from_secs(300);
/// Longest wait before reconnecting to the NS.
const NS_RECONNECT_MAX: Duration = Duration::from_secs(60);

enum LinkState {
    ExpectRegistrationResponse { request_id: RequestId, retry: Retry },
    Registered { interval: Option<Duration>, next_keepalive: Option<Instant>, pending: Option<(RequestId, Retry)> },
    Failed { retry_at: Instant },
}

/// The node's registration with its DC in one address family.
pub(super) struct Link {
    /// The DC's address in this family.
    pub(super) dc_addr: SocketAddr,
    /// What the DC saw as our address.
    pub(super) observed: Option<SocketAddr>,
    /// The DC's NAT verdict.
    pub(super) behind_nat: bool,
    /// The DC's mapping test's verdict (registration.rs), for `observed`.
    pub(super) mapping: NatMapping,
    /// The Mapping Probe in flight: its id, its retransmission, where it goes.
    mapping_probe: Option<(RequestId, Retry, SocketAddr)>,
    state: LinkState,
}

/// The Mapping Probe's retransmissions: a lost probe costs only the search for a direct
/// path through a NAT that maps per destination, so a few tries suffice.
const MAPPING_PROBE_BACKOFF: Backoff =
    Backoff { initial: Duration::from_millis(300), max: Duration::from_secs(2), attempts: 4 };

impl Link {
    /// One link per family in which both the node and the DC have an address.
    pub(super) fn for_addrs(local: &[SocketAddr], dc: &[SocketAddr]) -> Vec<Link> {
        [true, false]
            .into_iter()
            .filter(|&v4| local.iter().any(|a| a.is_ipv4() == v4))
            .filter_map(|v4| dc.iter().find(|a| a.is_ipv4() == v4))
            .map(|&dc_addr| Link {
                dc_addr,
                observed: None,
                behind_nat: false,
                mapping: NatMapping::Untested,
                mapping_probe: None,
                state: LinkState::Failed { retry_at: Instant::ZERO },
            })
            .collect()
    }

    pub(super) fn is_registered(&self) -> bool {
        matches!(self.state, LinkState::Registered { .. })
    }

    pub(super) fn deadline(&self) -> Option<Instant> {
        let probe = self.mapping_probe.as_ref().map(|(_, r, _)| r.deadline());
        let state = match &self.state {
            LinkState::ExpectRegistrationResponse { retry, .. } => Some(retry.deadline()),
            LinkState::Registered { next_keepalive, pending, .. } => {
                pending.as_ref().map_or(*next_keepalive, |(_, r)| Some(r.deadline()))
            }
            LinkState::Failed { retry_at } => Some(*retry_at),
        };
        [probe, state].into_iter().flatten().min()
    }
}

enum NsState {
    ExpectAck {
        request_id: RequestId,
        retry: Retry,
    },
    /// Registered; a probe goes at `next_keepalive`, and the one in flight (its id,
    /// delay and the time by which its acknowledgement must have come) is `pending`.
    Active {
        next_keepalive: Instant,
        pending: Option<(RequestId, Duration, Instant)>,
    },
    Reconnect {
        at: Instant,
    },
    /// The NS does not know our key: we asked the DC for a new one (a registration with
    /// `ns_key_lost`) and wait for its Registration Response.
    AwaitGrant,
}

/// Most node addresses kept for one NS (a couple per family).
const NS_ADDRS_MAX: usize = 4;

/// Shortest keepalive interval, whatever the NS asks: below this the keepalive traffic
/// is no longer negligible, and a NAT that forgets TCP this fast is broken beyond help.
const KEEPALIVE_FLOOR_MIN: Duration = Duration::from_secs(10);
/// A probe's acknowledgement may come this late (plus a sixteenth of its delay) before we
/// call the mapping dead: TCP retransmissions on a lossy path take a few seconds.
const PROBE_GRACE: Duration = Duration::from_secs(5);

/// The node's keepalive interval toward its NS, learned from which probe delays held.
#[derive(Clone, Copy, Debug)]
pub(super) struct KeepaliveLearning {
    /// The NS's interval: the longest we use.
    max: Duration,
    /// The interval the next probe uses.
    current: Duration,
    /// The longest delay whose acknowledgement came (zero: none yet).
    held: Duration,
    /// The shortest delay whose acknowledgement did not come. Kept until the path
    /// changes: trying a longer delay again would cost reachability each time (the box is
    /// unreachable from the NAT's timeout until the failure is noticed), while a delay
    /// too short costs only a few bytes.
    failed: Option<Duration>,
}

impl KeepaliveLearning {
    fn new(max: Duration) -> Self {
        KeepaliveLearning { max, current: max, held: Duration::ZERO, failed: None }
    }

    /// The shortest interval we fall back to: a sixtieth of the NS's (a minute for an
    /// hour), at least [`KEEPALIVE_FLOOR_MIN`].
    fn floor(&self) -> Duration {
        (self.max / 60).max(KEEPALIVE_FLOOR_MIN).min(self.max)
    }

    /// The NS (again) told us its interval.
    fn set_max(&mut self, max: Duration) {
        if max != self.max {
            *self = KeepaliveLearning { current: self.current.min(max), ..KeepaliveLearning::new(max) };
            self.current = self.current.max(self.floor());
        }
    }

    /// A new path (network change): what failed on the old one says nothing about it.
    /// The interval in use stays, and grows from there while it holds: starting over
    /// from the NS's interval would leave a box that moves between the same networks
    /// unreachable for half an hour after every move behind a NAT that forgets sooner.
    pub(super) fn reset(&mut self) {
        self.held = Duration::ZERO;
        self.failed = None;
    }

    /// True while the interval no longer grows.
    pub(super) fn settled(&self) -> bool {
        self.current >= self.max || self.failed.is_some_and(|f| self.grown() >= f)
    }

    fn grown(&self) -> Duration {
        // Whole seconds, as probes carry them.
        Duration::from_secs((self.current * 3 / 2).as_secs()).min(self.max)
    }

    /// A probe of `delay` was acknowledged: the mapping outlived that much silence.
    fn held(&mut self, delay: Duration) {
        self.held = self.held.max(delay);
        if delay < self.current {
            return; // an older, shorter probe
        }
        if !self.settled() {
            self.current = self.grown();
        }
    }

    /// A probe of `delay` went unanswered: the mapping died sooner.
    fn failed(&mut self, delay: Duration) {
        self.failed = Some(self.failed.map_or(delay, |f| f.min(delay)));
        if self.held >= delay {
            self.held = Duration::ZERO; // the path changed under us: start again from the floor
        }
        self.current = self.held.max(self.floor()).min(delay);
        log::warn!(
            "NS keepalive of {delay:?} went unanswered (a NAT forgetting idle TCP?); now every {:?}",
            self.current
        );
    }

    /// The interval in use and the NS's.
    pub(super) fn interval(&self) -> (Duration, Duration) {
        (self.current, self.max)
    }
}

/// The node's TCP connection to its NS.
pub(super) struct NsLink {
    name: Fqdn,
    /// The NS's node addresses granted so far, and the one in use.
    addrs: Vec<SocketAddr>,
    current: usize,
    channel: Channel<NtmNs>,
    state: NsState,
    /// Connection attempts that failed in a row (reset by a Notification Ack).
    failures: u32,
    /// The NS said it does not hold this key; the next registrations tell the DC.
    lost: bool,
    /// The keepalive interval learned for the path to the NS (None until the first
    /// Notification Ack says the NS's).
    pub(super) learning: Option<KeepaliveLearning>,
}

impl NsLink {
    /// The NS's node addresses granted so far.
    pub(super) fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub(super) fn addr(&self) -> SocketAddr {
        // `current` always indexes `addrs`, which is never empty (see `learn`, `pick`).
        self.addrs.get(self.current).or(self.addrs.first()).copied().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Keeps a node address the DC granted (at most [`NS_ADDRS_MAX`]).
    fn learn(&mut self, addr: SocketAddr) {
        if !self.addrs.contains(&addr) && self.addrs.len() < NS_ADDRS_MAX {
            self.addrs.push(addr);
        }
    }

    /// Uses an address of a family in `local` (starting after the current one when
    /// `next`); true if the address in use changed.
    fn pick(&mut self, local: &[SocketAddr], next: bool) -> bool {
        let has = |a: &SocketAddr| local.iter().any(|l| l.is_ipv4() == a.is_ipv4() && !l.ip().is_unspecified());
        let n = self.addrs.len();
        let start = if next { 1 } else { 0 };
        let found =
            (start..n + start).map(|k| (self.current + k) % n.max(1)).find(|&i| self.addrs.get(i).is_some_and(has));
        match found {
            Some(i) if i != self.current => {
                self.current = i;
                true
            }
            _ => false,
        }
    }

    pub(super) fn is_active(&self) -> bool {
        matches!(self.state, NsState::Active { .. })
    }

    pub(super) fn key_fingerprint(&self) -> u64 {
        self.channel.key().fingerprint()
    }

    pub(super) fn deadline(&self) -> Option<Instant> {
        match &self.state {
            NsState::ExpectAck { retry, .. } => Some(retry.deadline()),
            NsState::Active { next_keepalive, pending } => Some(pending.map_or(*next_keepalive, |(.., due)| due)),
            NsState::Reconnect { at, .. } => Some(*at),
            NsState::AwaitGrant => None,
        }
    }

    pub(super) fn connection_lost(&mut self, now: Instant, rng: &mut super::Rng, local: &[SocketAddr]) {
        if matches!(self.state, NsState::AwaitGrant) {
            return; // the DC's answer decides what comes next
        }
        // The next attempt goes to another of the NS's addresses, if it has one we can use.
        self.pick(local, true);
        // Back off while attempts keep failing; a registered connection that drops is
        // retried after 1 to 2 s. The wait is drawn at random within its span: when an NS
        // restarts, all its nodes lose their connections at once, and their reconnects
        // (and the registrations that follow) should not arrive in the same instant.
        if !matches!(self.state, NsState::Active { .. }) {
            self.failures = self.failures.saturating_add(1);
        }
        let wait = jittered(rng, self.failures.saturating_add(1), NS_RECONNECT_MAX);
        log::info!("connection to NS {} lost; reconnecting in {} ms", self.name, wait.as_millis());
        self.state = NsState::Reconnect { at: now + wait };
    }
}

impl Node {
    fn registration_request(&self, request_id: RequestId) -> Message {
        let mut local_addrs = List::new();
        for a in self.cfg.local_addrs.iter().take(LOCAL_ADDRS_MAX) {
            // `take` keeps us within the list's capacity.
            let _ = local_addrs.push(*a);
        }
        Message::RegistrationRequest(RegistrationRequest {
            request_id,
            local_addrs,
            keepalive: self.cfg.keepalive.clone(),
            ns_key_lost: self.ns.as_ref().filter(|ns| ns.lost).map(|ns| ns.channel.id()),
            // At most ANNOUNCED_MAX are kept (the agent's configuration holds no more).
            announced: crate::wire::Tail(
                List::from_vec(self.cfg.announced.iter().take(crate::wire::prefix::ANNOUNCED_MAX).copied().collect())
                    .unwrap_or_default(),
            ),
        })
    }

    fn register_link(&mut self, now: Instant, i: usize) {
        let request_id = self.ids.next();
        let msg = self.registration_request(request_id);
        let Some(link) = self.links.get_mut(i) else { return };
        link.state = LinkState::ExpectRegistrationResponse { request_id, retry: Retry::new(now, self.cfg.backoff) };
        // A test still in flight is of where we registered from before; this
        // registration's offer starts the next.
        link.mapping_probe = None;
        let dst = link.dc_addr;
        self.send_to_dc(now, dst, &msg);
    }

    /// Sends a Registration Request on every link (start-up, network change, new key).
    pub(super) fn register_all(&mut self, now: Instant) {
        for i in 0..self.links.len() {
            self.register_link(now, i);
        }
    }

    /// Mobility (spec 4.5): the node's addresses changed. Register again from the new
    /// addresses and re-establish every live tunnel; the virtual addresses stay.
    pub fn handle_network_change(&mut self, now: Instant, local_addrs: Vec<SocketAddr>) {
        log::info!("network change: local addresses now {local_addrs:?}");
        self.cfg.local_addrs = local_addrs;
        self.login_network_changed(now);
        if self.session.is_none() {
            return;
        }
        self.links = Link::for_addrs(&self.cfg.local_addrs, &self.session_dc_addrs());
        self.register_all(now);
        // The TCP connection to the NS left from the old address: open a new one now
        // rather than when the next hourly keepalive finds it dead.
        if let Some(ns) = self.ns.as_mut() {
            ns.pick(&self.cfg.local_addrs, false);
            if let Some(l) = ns.learning.as_mut() {
                l.reset();
            }
            ns.state = NsState::Reconnect { at: now };
        }
        self.drive_ns(now);
        self.begin_handover(now);
    }

    /// A push notification arrived (push keepalive method): the DC wants to reach us.
    /// Register again on every link, which opens fresh NAT mappings the DC can answer
    /// through; its retransmitted message then arrives.
    pub fn handle_push(&mut self, now: Instant) {
        if self.session.is_some() {
            self.register_all(now);
        }
    }

    pub(super) fn handle_registration_response(
        &mut self,
        now: Instant,
        _from: Option<SocketAddr>,
        r: RegistrationResponse,
    ) -> Received {
        let Some(i) = self.links.iter().position(|l| {
            matches!(l.state, LinkState::ExpectRegistrationResponse { request_id, .. } if request_id == r.request_id)
        }) else {
            return self.drops.count(DropReason::Stale);
        };
        // UDP keepalive when that is our method, and also when we asked for the NS path
        // but the DC has no NS for us (it then asks for UDP keepalives instead).
        let udp = matches!(self.cfg.keepalive, KeepaliveMethod::Udp)
            || (matches!(self.cfg.keepalive, KeepaliveMethod::Ns) && r.ns.is_none());
        let interval = match (udp, self.cfg.udp_keepalive_interval, r.keepalive_interval) {
            (true, Some(d), _) => Some(d),
            (true, None, s) if s > 0 => Some(Duration::from_secs(u64::from(s))),
            _ => None,
        };
        let Some(link) = self.links.get_mut(i) else { return Received::Handled };
        if link.observed != Some(r.observed) {
            // Seen elsewhere: the old verdict says nothing (a test in flight is this
            // registration's: its offer may have overtaken this response).
            link.mapping = NatMapping::Untested;
        }
        link.observed = Some(r.observed);
        link.behind_nat = r.behind_nat;
        self.displaced = false;
        link.state = LinkState::Registered { interval, next_keepalive: interval.map(|d| now + d), pending: None };
        log::info!(
            "registered: virtual {} / {}, seen as {} ({})",
            r.virtual_addrs.v4,
            r.virtual_addrs.v6,
            r.observed,
            if r.behind_nat { "behind NAT" } else { "global" }
        );
        self.virtual_addrs = Some(r.virtual_addrs);
        self.emit(NodeEvent::Registered {
            virtual_addrs: r.virtual_addrs,
            observed: r.observed,
            behind_nat: r.behind_nat,
        });
        match (&self.cfg.keepalive, r.ns) {
            (KeepaliveMethod::Ns, Some(grant)) => {
                let fresh = self.ns.as_ref().is_none_or(|ns| ns.channel.id() != grant.key_id);
                if fresh {
                    self.setup_ns(now, grant);
                } else if let Some(ns) = self.ns.as_mut().filter(|ns| matches!(ns.state, NsState::AwaitGrant)) {
                    // The DC granted the key the NS refused (it had not seen our report
                    // yet): try the NS again later, on a new connection; a second
                    // refusal reports it again.
                    let addr = ns.addr();
                    ns.state = NsState::Reconnect { at: now };
                    ns.connection_lost(now, &mut self.rng, &self.cfg.local_addrs);
                    self.emit(NodeEvent::NsConnectionLost { addr });
                } else if let Some(ns) = self.ns.as_mut() {
                    // The same key, perhaps another family's address of the NS: keep it,
                    // and move to it if the one in use is of a family we no longer have.
                    ns.learn(grant.ns_addr);
                    if ns.pick(&self.cfg.local_addrs, false) && !matches!(ns.state, NsState::AwaitGrant) {
                        log::info!("NS {} now at {}", ns.name, ns.addr());
                        ns.state = NsState::Reconnect { at: now };
                    }
                }
            }
            (KeepaliveMethod::Ns, None) if self.ns.as_ref().is_some_and(|ns| ns.lost) => {
                // No NS for us now: the DC asked for UDP keepalives instead.
                log::info!("the DC has no NS binding for us; keeping alive over UDP");
                self.ns = None;
            }
            _ => {}
        }
        self.on_registered(now);
        Received::Handled
    }

    /// The DC says another login for our name replaced ours (its key is no longer ours):
    /// say so, stop counting as registered, and register again after
    /// [`DISPLACED_HOLDOFF`] (the DC then refuses our old key and we log in anew).
    pub(super) fn handle_displaced(&mut self, now: Instant) {
        let name = self.session.as_ref().map(|s| s.fqdn.to_string()).unwrap_or_default();
        log::error!(
            "the DC says another login for {name} took over our registration: another device may hold a copy of \
             this one's certificate and key (revoke it and issue a new one); registering again in {}s",
            DISPLACED_HOLDOFF.as_secs()
        );
        self.displaced = true;
        for link in &mut self.links {
            link.state = LinkState::Failed { retry_at: now + DISPLACED_HOLDOFF };
        }
    }

    pub(super) fn handle_keepalive_ack(&mut self, now: Instant, a: KeepaliveAck) -> Received {
        let Some(i) = self.links.iter().position(
            |l| matches!(l.state, LinkState::Registered { pending: Some((id, _)), .. } if id == a.request_id),
        ) else {
            return self.drops.count(DropReason::Stale);
        };
        let rebound = {
            let Some(link) = self.links.get_mut(i) else { return Received::Handled };
            if let LinkState::Registered { pending, .. } = &mut link.state {
                *pending = None;
            }
            link.observed.is_some_and(|o| o != a.observed)
        };
        if rebound {
            // The NAT gave us a new outside address (rebinding): tell the DC, and follow
            // with every tunnel as after a handover.
            log::info!("NAT rebinding detected (now seen as {}); registering again", a.observed);
            self.register_link(now, i);
            self.begin_handover(now);
        }
        Received::Handled
    }

    /// The DC offers the mapping test (after a Registration Response, behind a NAT): a
    /// Mapping Probe from the tunnel socket to its mapping port, until the Ack comes.
    pub(super) fn handle_mapping_offer(&mut self, now: Instant, from: Option<SocketAddr>, o: MappingOffer) -> Received {
        let probe_id = self.ids.next();
        let Some(link) = self.links.iter_mut().find(|l| Some(l.dc_addr) == from) else {
            return self.drops.count(DropReason::Stale);
        };
        // The DC offers only to a node it saw behind a NAT and has no verdict for (the
        // offer may overtake the Registration Response it follows, so until that is here
        // the DC's word counts).
        let wanted = link.behind_nat || !link.is_registered();
        if !wanted || o.port == 0 || link.mapping_probe.is_some() {
            return Received::Handled;
        }
        let to = SocketAddr::new(link.dc_addr.ip(), o.port);
        link.mapping_probe = Some((probe_id, Retry::new(now, MAPPING_PROBE_BACKOFF), to));
        self.send_to_dc(now, to, &Message::MappingProbe(MappingProbe { request_id: probe_id }));
        Received::Handled
    }

    /// The DC's verdict on how our NAT maps (the answer to our Mapping Probe).
    pub(super) fn handle_mapping_probe_ack(&mut self, a: MappingProbeAck) -> Received {
        let Some(link) =
            self.links.iter_mut().find(|l| l.mapping_probe.as_ref().is_some_and(|(id, _, _)| *id == a.request_id))
        else {
            return self.drops.count(DropReason::Stale);
        };
        link.mapping_probe = None;
        link.mapping = a.mapping;
        log::info!("NAT mapping: {:?} (the DC's mapping port saw us as {})", a.mapping, a.observed);
        Received::Handled
    }

    /// Asks the DC on every registered link how it sees us now: a Keepalive, whose Ack
    /// carries the address the DC saw. A NAT that rebound to another port shows there, and
    /// `handle_keepalive_ack` then registers again and follows every tunnel as after a
    /// move. A link with a keepalive already in flight is left to it.
    pub(super) fn check_mapping(&mut self, now: Instant) {
        for i in 0..self.links.len() {
            if matches!(self.links.get(i).map(|l| &l.state), Some(LinkState::Registered { pending: None, .. })) {
                self.send_keepalive(now, i);
            }
        }
    }

    /// Sends link `i` a fresh Keepalive and waits for its Ack (`pending`).
    fn send_keepalive(&mut self, now: Instant, i: usize) {
        let request_id = self.ids.next();
        let Some(link) = self.links.get_mut(i) else { return };
        let LinkState::Registered { pending, .. } = &mut link.state else { return };
        *pending = Some((request_id, Retry::new(now, self.cfg.backoff)));
        let dst = link.dc_addr;
        self.send_to_dc(now, dst, &Message::Keepalive(Keepalive { request_id }));
    }

    pub(super) fn drive_links(&mut self, now: Instant) {
        for i in 0..self.links.len() {
            let Some(link) = self.links.get_mut(i) else { continue };
            if let Some((id, retry, to)) = &mut link.mapping_probe {
                if retry.due(now) {
                    if retry.again(now) {
                        let (request_id, to) = (*id, *to);
                        self.send_to_dc(now, to, &Message::MappingProbe(MappingProbe { request_id }));
                    } else {
                        // Firewalled, or an older DC: no verdict, no search of ports.
                        log::info!("the DC's mapping port {to} does not answer; NAT mapping untested");
                        link.mapping_probe = None;
                    }
                }
            }
            let Some(link) = self.links.get_mut(i) else { continue };
            let dst = link.dc_addr;
            let mut resend = None;
            let mut reregister = false;
            let mut keepalive = false;
            match &mut link.state {
                LinkState::ExpectRegistrationResponse { request_id, retry } if retry.due(now) => {
                    if retry.again(now) {
                        resend = Some(*request_id);
                    } else {
                        log::warn!("DC {dst} does not answer our registration; retrying in {REREGISTER_AFTER:?}");
                        link.state = LinkState::Failed { retry_at: now + REREGISTER_AFTER };
                    }
                }
                LinkState::Registered { interval, next_keepalive, pending } => {
                    if let Some((id, retry)) = pending {
                        if retry.due(now) {
                            if retry.again(now) {
                                let msg = Message::Keepalive(Keepalive { request_id: *id });
                                self.send_to_dc(now, dst, &msg);
                            } else {
                                log::warn!("DC {dst} stopped acknowledging keepalives; registering again");
                                reregister = true;
                            }
                        }
                    } else if let (Some(at), Some(d)) = (*next_keepalive, *interval) {
                        if now >= at {
                            *next_keepalive = Some(now + d);
                            keepalive = true;
                        }
                    }
                }
                LinkState::Failed { retry_at } if now >= *retry_at => reregister = true,
                _ => {}
            }
            if keepalive {
                self.send_keepalive(now, i);
            }
            if let Some(request_id) = resend {
                let msg = self.registration_request(request_id);
                self.send_to_dc(now, dst, &msg);
            }
            if reregister {
                self.register_link(now, i);
            }
        }
    }

    fn setup_ns(&mut self, now: Instant, grant: crate::wire::registration::NsGrant) {
        let expires = now + grant.k_ntmns.lifetime.duration();
        let channel = match Channel::new(grant.k_ntmns.key, grant.key_id, Sender::Node, expires) {
            Ok(c) => c,
            Err(e) => {
                log::error!("unusable K_ntmns: {e}");
                return;
            }
        };
        let request_id = self.ids.next();
        let retry = Retry::new(now, self.cfg.backoff);
        // A new key for the same NS: the addresses granted before still hold.
        let known = self.ns.as_ref().filter(|ns| ns.name == grant.ns_fqdn).map(|ns| ns.addrs.clone());
        let mut link = NsLink {
            name: grant.ns_fqdn,
            addrs: vec![grant.ns_addr],
            current: 0,
            channel,
            state: NsState::ExpectAck { request_id, retry },
            failures: 0,
            lost: false,
            learning: self.ns.as_ref().and_then(|ns| ns.learning),
        };
        for a in known.unwrap_or_default() {
            link.learn(a);
        }
        link.pick(&self.cfg.local_addrs, false);
        self.ns = Some(link);
        self.send_notification_registration(now, request_id);
    }

    fn send_to_ns(&mut self, now: Instant, msg: &Message) {
        let Some(ns) = self.ns.as_mut() else { return };
        match ns.channel.seal(now, msg) {
            Ok(bytes) => {
                let via = Via::Stream { kind: StreamKind::Tcp, server: Some(ns.name.clone()) };
                let dst = ns.addr();
                self.transmit(via, dst, bytes);
            }
            Err(e) => log::warn!("cannot seal for the NS: {e}"),
        }
    }

    fn send_notification_registration(&mut self, now: Instant, request_id: RequestId) {
        let Some(fqdn) = self.fqdn().cloned() else { return };
        let msg = Message::NotificationRegistration(NotificationRegistration { request_id, fqdn });
        self.send_to_ns(now, &msg);
    }

    pub(super) fn handle_ns_frame(&mut self, now: Instant, frame: &[u8]) -> Received {
        let plain_refusal = Envelope::new_checked(frame).is_ok_and(|e| !e.sealed() && e.msg_type() == MsgType::Refusal);
        if plain_refusal {
            return self.handle_ns_plain_refusal(now, frame);
        }
        let Some(ns) = self.ns.as_mut() else { return self.drops.count(DropReason::Unexpected) };
        let msg = match ns.channel.open(now, frame) {
            Ok((_, m)) => m,
            Err(e) => return self.drops.count(DropReason::from(e)),
        };
        match msg {
            Message::NotificationAck(a) => {
                let NsState::ExpectAck { request_id, .. } = ns.state else {
                    return self.drops.count(DropReason::Stale);
                };
                if request_id != a.request_id {
                    return self.drops.count(DropReason::Stale);
                }
                let max = Duration::from_secs(u64::from(a.keepalive_interval.max(1)));
                let learning = ns.learning.get_or_insert(KeepaliveLearning::new(max));
                learning.set_max(max);
                let interval = learning.current;
                // The first probe goes at once: the acknowledgement just refreshed the
                // mapping, and the probe's answer tells whether it outlives `interval`.
                ns.state = NsState::Active { next_keepalive: now, pending: None };
                ns.failures = 0;
                ns.lost = false;
                log::info!("NS {} holds our notifications; keepalive every {interval:?}", ns.name);
                self.emit(NodeEvent::NotificationsReady);
                Received::Handled
            }
            Message::NsKeepaliveAck(a) => {
                if let NsState::Active { pending, next_keepalive } = &mut ns.state {
                    if let Some((_, delay, _)) = pending.filter(|(id, ..)| *id == a.request_id) {
                        *pending = None;
                        // The answer came after `delay` of silence, and crossing the NAT
                        // refreshed the mapping: the next probe starts a new idle spell now.
                        *next_keepalive = now;
                        if let Some(l) = ns.learning.as_mut() {
                            l.held(delay);
                        }
                        return Received::Handled;
                    }
                }
                self.drops.count(DropReason::Stale)
            }
            Message::Notify(n) => {
                // A DC message sealed for us with K_ntmdc; the NS could not read it.
                let payload = n.payload.as_slice().to_vec();
                self.handle_dc_message(now, None, &payload)
            }
            _ => self.drops.count(DropReason::Unexpected),
        }
    }

    /// A plain Refusal on the NS connection: the NS does not hold the key id it names
    /// (it restarted, or swept the key). Unauthenticated, so it counts only for our current
    /// K_ntmns and at most once per [`RELOGIN_HINT_INTERVAL`], and it only makes us ask
    /// the DC, over our authenticated channel, for a new key.
    fn handle_ns_plain_refusal(&mut self, now: Instant, frame: &[u8]) -> Received {
        let (header, r) = match parse_plain(frame) {
            Ok((h, Message::Refusal(r))) => (h, r),
            Ok(_) => return self.drops.count(DropReason::Unexpected),
            Err(e) => return self.drops.count(DropReason::from(e)),
        };
        let Some(ns) = self.ns.as_mut() else { return self.drops.count(DropReason::Unexpected) };
        if ns.channel.id() != header.key_id || !matches!(r.reason, Reason::UnknownKey | Reason::KeyExpired) {
            return self.drops.count(DropReason::Unauthorized);
        }
        if matches!(ns.state, NsState::AwaitGrant) {
            return Received::Handled; // already asked
        }
        if self.last_ns_hint.is_some_and(|t| now < t + RELOGIN_HINT_INTERVAL) {
            return self.drops.count(DropReason::Limit);
        }
        self.last_ns_hint = Some(now);
        log::warn!("NS {} does not know our key {}; asking the DC for a new one", ns.name, header.key_id);
        ns.lost = true;
        ns.state = NsState::AwaitGrant;
        self.register_all(now);
        Received::Handled
    }

    pub(super) fn drive_ns(&mut self, now: Instant) {
        let backoff: Backoff = self.cfg.backoff;
        let Some(ns) = self.ns.as_mut() else { return };
        let mut send_reg = None;
        let mut send_keepalive = None;
        // The connection the NS stopped answering on: the driver closes it, so the
        // reconnect opens a new one instead of queueing behind the dead one.
        let mut gave_up = None;
        match &mut ns.state {
            NsState::ExpectAck { request_id, retry } if retry.due(now) => {
                if retry.again(now) {
                    send_reg = Some(*request_id);
                } else {
                    gave_up = Some(ns.addr());
                    ns.connection_lost(now, &mut self.rng, &self.cfg.local_addrs);
                }
            }
            NsState::Active { next_keepalive, pending } => match *pending {
                Some((_, delay, due)) if now >= due => {
                    // The answer did not cross back: the NAT forgot the connection (or the
                    // NS is gone). Learn from it, and reconnect.
                    if let Some(l) = ns.learning.as_mut() {
                        l.failed(delay);
                    }
                    gave_up = Some(ns.addr());
                    ns.connection_lost(now, &mut self.rng, &self.cfg.local_addrs);
                }
                None if now >= *next_keepalive => {
                    let delay = ns.learning.map_or(Duration::from_secs(3600), |l| l.current);
                    let id = self.ids.next();
                    let grace = PROBE_GRACE + delay / 16 + backoff.initial;
                    *pending = Some((id, delay, now + delay + grace));
                    *next_keepalive = now + delay;
                    send_keepalive = Some((id, delay));
                }
                _ => {}
            },
            NsState::Reconnect { at, .. } if now >= *at => {
                let request_id = self.ids.next();
                ns.state = NsState::ExpectAck { request_id, retry: Retry::new(now, backoff) };
                send_reg = Some(request_id);
            }
            _ => {}
        }
        if let Some(addr) = gave_up {
            self.emit(NodeEvent::NsConnectionLost { addr });
        }
        if let Some(id) = send_reg {
            self.send_notification_registration(now, id);
        }
        if let Some((request_id, delay)) = send_keepalive {
            let delay = u32::try_from(delay.as_secs()).unwrap_or(u32::MAX);
            self.send_to_ns(now, &Message::NsProbe(NsProbe { request_id, delay }));
        }
    }
}
