//! A sans-IO DNS client that answers the engines' [`DnsQuery`]: "which DC serves this
//! name?" (spec section 2, "Discovery is DNS": the NS record of a name's zone names its DC).
//!
//! [`Locator`] builds and parses real DNS messages with `simple-dns` (no DNS encoding is
//! written by hand, and every length from the wire goes through its decoder); the driver
//! owns the UDP socket and the clock. The calls follow the engines' shape:
//!
//! - **input**: [`Locator::start`] (a query from an engine), [`Locator::handle_response`]
//!   (a UDP datagram from a nameserver), [`Locator::handle_timeout`];
//! - **output**: [`Locator::poll_transmit`] (UDP queries to send), [`Locator::poll_answer`]
//!   (finished lookups, to hand to the engine's `handle_dns`), [`Locator::poll_timeout`].
//!
//! After any input the driver drains both `poll_*` queues, then sleeps until the next
//! datagram or `poll_timeout`.
//!
//! How a name is located:
//!
//! 1. A name within a configured static zone answers that zone's [`DcLocation`] at once (the
//!    most specific zone wins; a static zone counts as an NTM domain of its own). A name
//!    within none of the NTM domains answers [`DnsAnswer::NotNtm`] at once, without traffic:
//!    ordinary names never wait on NTMobile.
//! 2. Ask NS for the name, recursion desired. The response settles the zone: (a) NS records
//!    in the answer make the name a zone apex; (c) otherwise an SOA in the authority
//!    section (NODATA, or NXDOMAIN: a node's FQDN need not own any record) names the zone,
//!    and NS is asked for it; (b) otherwise NS records in the authority section (a referral
//!    from an authoritative parent) name the zone and its servers, taken as they are (no
//!    iterative resolution below them; a referral upward, to a zone above the NTM
//!    domains, fails); (d) a CNAME is followed: a chain inside one response is chased (at
//!    most 8 links), and a CNAME that ends without an answer is asked once more, for its
//!    target. Anything else is [`DnsAnswer::Failed`].
//! 3. A zone (or CNAME target) that lies outside every NTM domain answers `NotNtm`: its NS
//!    records name ordinary nameservers, not DCs.
//! 4. The NS targets are taken in canonical order (RFC 4034, 6.1), so every run picks the
//!    same DC. For the first one, glue A/AAAA records in the additional section are used if
//!    present; otherwise A and AAAA are asked (in parallel, and both awaited). The answer
//!    is the target's name with its IPv4 then its IPv6 addresses (each sorted) at the DC
//!    port. A target with no address moves on to the next; when none has one, the lookup
//!    fails.
//!
//! [`Locator::start_addresses`] looks up a server's name instead (a driver's AS or static DC
//! given by name): A and AAAA of exactly that name, asked in parallel as for an NS target in
//! step 4, answered as a [`DnsAnswer::Dc`] of that name with its addresses at the given port
//! (IPv4 first), or [`DnsAnswer::Failed`] when it has none.
//!
//! Every query is sent up to `attempts` times, `timeout` apart, rotating through the
//! nameservers; retransmissions keep the DNS id, so a late answer from an earlier server is
//! still taken. A reply counts only if its id, its question (name, type, class) and its
//! source address (one of the servers this query went to) all match; anything else is
//! ignored and counted in [`LocatorStats`]. An answer with the TC bit, or an rcode other
//! than NOERROR and NXDOMAIN, fails that try and the next one is sent at once. There is no
//! TCP fallback: NS, A and AAAA answers are small, queries advertise an EDNS payload of
//! 1232 bytes, and a truncated answer is treated like a lost one. An address query whose
//! tries all fail counts as "no address of that family". Randomness (the DNS ids) comes
//! from the RNG handed to [`Locator::new`]; the driver should send from a socket with an
//! OS-chosen (random) source port, and report `from` as the nameserver was configured (an
//! IPv4 server reached over a dual-stack socket must not show up as `::ffff:a.b.c.d`).

use crate::message::{self, Counts, EDNS_PAYLOAD};
use crate::queries::{Queries, Retry, Servers};
use core::cmp::Ordering;
use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use ntm_proto::engine::{DcLocation, DnsAnswer, DnsQuery, Rng};
use ntm_proto::time::{Duration, Instant};
use ntm_proto::wire::Fqdn;
use simple_dns::rdata::{RData, OPT};
use simple_dns::{Label, Name, Packet, PacketFlag, ResourceRecord, CLASS, OPCODE, QCLASS, QTYPE, RCODE, TYPE};
use std::collections::{BTreeMap, VecDeque};

/// Longest CNAME chain chased inside one response.
const CNAME_CHAIN_MAX: usize = 8;

/// How a [`Locator`] finds DCs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocatorConfig {
    /// Recursive resolvers (or authoritative servers) to ask, with port; tried in order,
    /// rotating on each retransmission.
    pub nameservers: Vec<SocketAddr>,
    /// The port DCs listen on (NS records carry no port).
    pub dc_port: u16,
    /// The domains under which zones are served by DCs; other names are ordinary DNS.
    pub ntm_domains: Vec<Fqdn>,
    /// Zones whose DC is known without DNS: (zone, location).
    pub static_dcs: Vec<(Fqdn, DcLocation)>,
    /// Wait for an answer before sending a query again (per try).
    pub timeout: Duration,
    /// Sends of each query in all, the first included.
    pub attempts: u32,
    /// Lookups in progress at once; a lookup beyond it fails at once.
    pub max_pending: usize,
}

impl LocatorConfig {
    /// Where and how often queries go.
    fn servers(&self) -> Servers<'_> {
        Servers { list: &self.nameservers, timeout: self.timeout, tries: self.attempts }
    }
}

impl Default for LocatorConfig {
    /// No nameservers, no domains, DC port 4460, 2 s per try, 3 tries, 256 lookups.
    fn default() -> Self {
        LocatorConfig {
            nameservers: Vec::new(),
            dc_port: 4460,
            ntm_domains: Vec::new(),
            static_dcs: Vec::new(),
            timeout: Duration::from_secs(2),
            attempts: 3,
            max_pending: 256,
        }
    }
}

/// What a [`Locator`] refused or lost, for status output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocatorStats {
    /// Datagrams that did not decode as DNS messages.
    pub malformed: u64,
    /// Replies with an unknown id, from a source the query was not sent to, with another
    /// question, or that were not responses.
    pub ignored: u64,
    /// Replies with the TC bit (no TCP fallback: the try failed).
    pub truncated: u64,
    /// Replies with an rcode other than NOERROR and NXDOMAIN (SERVFAIL, REFUSED, ...).
    pub server_errors: u64,
    /// Tries that went unanswered.
    pub timeouts: u64,
    /// Lookups refused because `max_pending` were in progress.
    pub over_limit: u64,
}

/// Where a lookup is: what its outstanding queries wait for.
#[derive(Clone, Debug)]
enum Expect {
    /// NS was asked for `name` (the query's name, or a CNAME target); the response names
    /// the zone.
    Zone { name: DName, followed_cname: bool },
    /// NS was asked for the zone an SOA named.
    ZoneNs { zone: DName },
    /// A and AAAA were asked for an NS target.
    Addresses(Targets),
}

/// The zone's NS targets and what is known of the current one.
#[derive(Clone, Debug)]
struct Targets {
    /// NS targets that are valid names, in canonical order, without duplicates.
    targets: Vec<(DName, Fqdn)>,
    /// Index of the target being resolved.
    current: usize,
    /// Glue from the response that named the targets.
    glue: Vec<(DName, IpAddr)>,
    /// The current target's IPv4 addresses, once its A query finished.
    v4: Option<Vec<IpAddr>>,
    /// The current target's IPv6 addresses, once its AAAA query finished.
    v6: Option<Vec<IpAddr>>,
    /// The port of the answer's addresses.
    port: u16,
}

/// What a step of a lookup leads to.
enum Step {
    /// The lookup is over.
    Done(DnsAnswer),
    /// Send these questions (dropping the lookup's older queries) and wait for their replies.
    Ask(Expect, Vec<(DName, TYPE)>),
    /// Keep waiting for the queries already out.
    Wait(Expect),
}

/// A lookup in progress.
#[derive(Debug)]
struct Lookup {
    /// The engine's query id.
    id: u64,
    expect: Expect,
}

/// What the locator keeps with a query on the wire.
#[derive(Debug)]
struct Outstanding {
    /// The lookup it belongs to.
    lookup: u64,
    /// What was asked; a reply must carry exactly this question.
    question: Asked,
}

/// Locates DCs by DNS; see the module documentation.
pub struct Locator {
    cfg: LocatorConfig,
    next_slot: u64,
    lookups: BTreeMap<u64, Lookup>,
    outstanding: Queries<Outstanding>,
    transmits: VecDeque<(SocketAddr, Vec<u8>)>,
    answers: VecDeque<(u64, DnsAnswer)>,
    stats: LocatorStats,
}

impl fmt::Debug for Locator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Locator")
            .field("cfg", &self.cfg)
            .field("lookups", &self.lookups.len())
            .field("outstanding", &self.outstanding.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Locator {
    /// A locator with no lookups in progress. DNS ids are drawn from `rng`.
    pub fn new(cfg: LocatorConfig, rng: Rng) -> Self {
        Locator {
            cfg,
            next_slot: 0,
            lookups: BTreeMap::new(),
            outstanding: Queries::new(rng),
            transmits: VecDeque::new(),
            answers: VecDeque::new(),
            stats: LocatorStats::default(),
        }
    }

    /// Begins a lookup. Static zones, names outside the NTM domains and lookups over the
    /// `max_pending` cap are answered at once (see [`Locator::poll_answer`]).
    pub fn start(&mut self, now: Instant, query: DnsQuery) {
        if let Some(answer) = self.classify(&query.name) {
            self.answers.push_back((query.id, answer));
            return;
        }
        if self.lookups.len() >= self.cfg.max_pending {
            self.stats.over_limit = self.stats.over_limit.saturating_add(1);
            self.answers.push_back((query.id, DnsAnswer::Failed));
            return;
        }
        let name = DName::from_fqdn(&query.name);
        let slot = self.next_slot;
        self.next_slot = self.next_slot.wrapping_add(1);
        let ask = vec![(name.clone(), TYPE::NS)];
        self.apply(now, slot, query.id, Step::Ask(Expect::Zone { name, followed_cname: false }, ask));
    }

    /// Begins a lookup of `name`'s own addresses (A and AAAA, no NTM-domain rules): the
    /// answer, under `id`, is [`DnsAnswer::Dc`] with `name` and its addresses at `port`, or
    /// [`DnsAnswer::Failed`].
    pub fn start_addresses(&mut self, now: Instant, id: u64, name: &Fqdn, port: u16) {
        if self.lookups.len() >= self.cfg.max_pending {
            self.stats.over_limit = self.stats.over_limit.saturating_add(1);
            self.answers.push_back((id, DnsAnswer::Failed));
            return;
        }
        let slot = self.next_slot;
        self.next_slot = self.next_slot.wrapping_add(1);
        let target = (DName::from_fqdn(name), name.clone());
        let st = Targets { targets: vec![target], current: 0, glue: Vec::new(), v4: None, v6: None, port };
        let step = self.next_target(st);
        self.apply(now, slot, id, step);
    }

    /// A UDP datagram arrived from `from`. Anything that is not the awaited reply is
    /// ignored and counted.
    pub fn handle_response(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        let Some(msg) = decode(bytes) else {
            self.stats.malformed = self.stats.malformed.saturating_add(1);
            return;
        };
        let id = msg.id();
        let matches = self.outstanding.awaited(id, from).is_some_and(|out| {
            msg.has_flags(PacketFlag::RESPONSE)
                && msg.opcode() == OPCODE::StandardQuery
                && msg.questions.len() == 1
                && msg.questions.first().is_some_and(|q| out.question.matches(q))
        });
        if !matches {
            self.stats.ignored = self.stats.ignored.saturating_add(1);
            return;
        }
        if msg.has_flags(PacketFlag::TRUNCATION) {
            self.stats.truncated = self.stats.truncated.saturating_add(1);
            self.try_failed(now, id);
            return;
        }
        if !matches!(msg.rcode(), RCODE::NoError | RCODE::NameError) {
            self.stats.server_errors = self.stats.server_errors.saturating_add(1);
            self.try_failed(now, id);
            return;
        }
        if let Some(out) = self.outstanding.remove(id) {
            self.on_reply(now, out, &Reply::new(&msg));
        }
    }

    /// The deadline from [`Locator::poll_timeout`] passed: queries due are sent again, or
    /// fail when their attempts are used up.
    pub fn handle_timeout(&mut self, now: Instant) {
        for id in self.outstanding.due(now) {
            // An earlier failure in this loop may have ended the lookup and its queries.
            if self.outstanding.contains(id) {
                self.stats.timeouts = self.stats.timeouts.saturating_add(1);
                self.try_failed(now, id);
            }
        }
    }

    /// The next UDP query to send: (nameserver, DNS message).
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.transmits.pop_front()
    }

    /// The next finished lookup: (the [`DnsQuery`]'s id, its answer).
    pub fn poll_answer(&mut self) -> Option<(u64, DnsAnswer)> {
        self.answers.pop_front()
    }

    /// When to call [`Locator::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.outstanding.next_deadline()
    }

    /// Replaces the nameservers (same ones, reordered by the driver when its address
    /// families change, so that the first try goes to one it can reach). Queries on the
    /// wire keep the servers they were sent to.
    pub fn set_nameservers(&mut self, nameservers: Vec<SocketAddr>) {
        self.cfg.nameservers = nameservers;
    }

    /// Lookups in progress.
    pub fn pending(&self) -> usize {
        self.lookups.len()
    }

    /// Input refused or lost so far.
    pub fn stats(&self) -> &LocatorStats {
        &self.stats
    }

    /// Answers that need no DNS: a static zone's DC, or `NotNtm` outside the NTM domains.
    fn classify(&self, name: &Fqdn) -> Option<DnsAnswer> {
        let static_dc = self
            .cfg
            .static_dcs
            .iter()
            .filter(|(zone, _)| name.is_within(zone))
            .max_by_key(|(zone, _)| zone.as_str().len());
        if let Some((_, location)) = static_dc {
            return Some(DnsAnswer::Dc(location.clone()));
        }
        if !self.cfg.ntm_domains.iter().any(|domain| name.is_within(domain)) {
            return Some(DnsAnswer::NotNtm);
        }
        None
    }

    /// Carries out a step of lookup `slot` (whose [`Lookup`] is not in the table).
    fn apply(&mut self, now: Instant, slot: u64, id: u64, step: Step) {
        match step {
            Step::Done(answer) => {
                self.outstanding.retain(|out| out.lookup != slot);
                self.answers.push_back((id, answer));
            }
            Step::Wait(stage) => {
                self.lookups.insert(slot, Lookup { id, expect: stage });
            }
            Step::Ask(stage, questions) => {
                self.outstanding.retain(|out| out.lookup != slot);
                self.lookups.insert(slot, Lookup { id, expect: stage });
                for (name, rtype) in questions {
                    if !self.send(now, slot, name, rtype) {
                        self.lookups.remove(&slot);
                        self.apply(now, slot, id, Step::Done(DnsAnswer::Failed));
                        return;
                    }
                }
            }
        }
    }

    /// Sends a new query to the first nameserver. False if there is no nameserver, no
    /// free DNS id or the message does not encode.
    fn send(&mut self, now: Instant, lookup: u64, name: DName, rtype: TYPE) -> bool {
        let question = Asked { name, rtype };
        let Ok(bytes) = question.encode() else { return false };
        match self.outstanding.send(now, self.cfg.servers(), bytes, Outstanding { lookup, question }) {
            Ok(transmit) => {
                self.transmits.push_back(transmit);
                true
            }
            Err(_) => false,
        }
    }

    /// The current try of query `id` failed: send it to the next nameserver, or fail it.
    fn try_failed(&mut self, now: Instant, id: u16) {
        match self.outstanding.retry(now, id, self.cfg.servers()) {
            Some(Retry::Sent(server, bytes)) => self.transmits.push_back((server, bytes)),
            Some(Retry::Failed(out)) => self.on_failure(now, out),
            None => {}
        }
    }

    /// Every try of a query failed.
    fn on_failure(&mut self, now: Instant, out: Outstanding) {
        let Some(lookup) = self.lookups.remove(&out.lookup) else { return };
        let step = match lookup.expect {
            Expect::Addresses(st) => self.address_result(st, out.question.rtype, Vec::new()),
            Expect::Zone { .. } | Expect::ZoneNs { .. } => Step::Done(DnsAnswer::Failed),
        };
        self.apply(now, out.lookup, lookup.id, step);
    }

    /// A reply (NOERROR or NXDOMAIN) to query `out` arrived.
    fn on_reply(&mut self, now: Instant, out: Outstanding, msg: &Reply) {
        let Some(lookup) = self.lookups.remove(&out.lookup) else { return };
        let step = match lookup.expect {
            Expect::Zone { name, followed_cname } => self.on_zone(&name, followed_cname, msg),
            Expect::ZoneNs { zone } => self.on_zone_ns(&zone, msg),
            Expect::Addresses(st) => {
                let owner = chase(&msg.answers, &out.question.name);
                let addrs = msg
                    .answers
                    .iter()
                    .filter(|r| r.owner == owner)
                    .filter_map(|r| address(r, out.question.rtype))
                    .collect();
                self.address_result(st, out.question.rtype, addrs)
            }
        };
        self.apply(now, out.lookup, lookup.id, step);
    }

    /// The reply to NS for `name`: cases (a) to (d) of the module documentation.
    fn on_zone(&self, name: &DName, followed_cname: bool, msg: &Reply) -> Step {
        let current = chase(&msg.answers, name);
        // (a) The name (or the end of its CNAME chain) is a zone apex.
        let targets = ns_targets(&msg.answers, &current);
        if !targets.is_empty() {
            return self.zone_found(&current, targets, msg);
        }
        // (c) NODATA or NXDOMAIN: the SOA's owner is the zone. An SOA owned by the name we
        // asked NS for is a broken zone (an apex has NS records); asking again would loop.
        if let Some(zone) = closest_owner(&msg.authorities, &current, TYPE::SOA) {
            if zone == *name {
                return Step::Done(DnsAnswer::Failed);
            }
            if let Some(answer) = self.classify_name(&zone) {
                return Step::Done(answer);
            }
            return Step::Ask(Expect::ZoneNs { zone: zone.clone() }, vec![(zone, TYPE::NS)]);
        }
        // (b) A referral: the delegated zone and its servers.
        if let Some(zone) = closest_owner(&msg.authorities, &current, TYPE::NS) {
            // A referral points down into the zone that holds the name. One to a zone
            // above the NTM domains (an upward referral from a server outside the NTM
            // tree) says nothing about the name's zone.
            if self.classify_name(&zone) == Some(DnsAnswer::NotNtm) {
                return Step::Done(DnsAnswer::Failed);
            }
            let targets = ns_targets(&msg.authorities, &zone);
            return self.zone_found(&zone, targets, msg);
        }
        // (d) A CNAME whose target the server did not resolve: ask once for the target.
        if current != *name && !followed_cname {
            if let Some(answer) = self.classify_name(&current) {
                return Step::Done(answer);
            }
            let ask = vec![(current.clone(), TYPE::NS)];
            return Step::Ask(Expect::Zone { name: current, followed_cname: true }, ask);
        }
        Step::Done(DnsAnswer::Failed)
    }

    /// The reply to NS for a zone an SOA named: its NS records, in the answer or as a
    /// referral to exactly that zone.
    fn on_zone_ns(&self, zone: &DName, msg: &Reply) -> Step {
        let mut targets = ns_targets(&msg.answers, zone);
        if targets.is_empty() {
            targets = ns_targets(&msg.authorities, zone);
        }
        if targets.is_empty() {
            return Step::Done(DnsAnswer::Failed);
        }
        self.zone_found(zone, targets, msg)
    }

    /// [`Locator::classify`] for a name from the wire.
    fn classify_name(&self, name: &DName) -> Option<DnsAnswer> {
        match name.to_fqdn() {
            Some(fqdn) => self.classify(&fqdn),
            None => Some(DnsAnswer::Failed),
        }
    }

    /// The zone and its NS targets are known: resolve the first target.
    fn zone_found(&self, zone: &DName, targets: Vec<DName>, msg: &Reply) -> Step {
        if let Some(answer) = self.classify_name(zone) {
            return Step::Done(answer);
        }
        let mut targets: Vec<(DName, Fqdn)> =
            targets.into_iter().filter_map(|t| Some((t.to_lowercase(), t.to_fqdn()?))).collect();
        targets.sort();
        targets.dedup();
        let glue = msg
            .additionals
            .iter()
            .filter_map(|r| Some((r.owner.clone(), address(r, TYPE::A).or_else(|| address(r, TYPE::AAAA))?)))
            .collect();
        self.next_target(Targets { targets, current: 0, glue, v4: None, v6: None, port: self.cfg.dc_port })
    }

    /// Resolves the current target: from glue, else by asking A and AAAA.
    fn next_target(&self, st: Targets) -> Step {
        let Some((name, fqdn)) = st.targets.get(st.current) else { return Step::Done(DnsAnswer::Failed) };
        let glue: Vec<IpAddr> = st.glue.iter().filter(|(owner, _)| owner == name).map(|&(_, ip)| ip).collect();
        if !glue.is_empty() {
            return Step::Done(location(fqdn, glue, st.port));
        }
        let ask = vec![(name.clone(), TYPE::A), (name.clone(), TYPE::AAAA)];
        Step::Ask(Expect::Addresses(st), ask)
    }

    /// The A or AAAA query for the current target finished with `addrs` (empty if it
    /// failed): answer when both did, or move on to the next target.
    fn address_result(&self, mut st: Targets, rtype: TYPE, addrs: Vec<IpAddr>) -> Step {
        if rtype == TYPE::A {
            st.v4 = Some(addrs);
        } else {
            st.v6 = Some(addrs);
        }
        let (Some(v4), Some(v6)) = (&st.v4, &st.v6) else { return Step::Wait(Expect::Addresses(st)) };
        let addrs: Vec<IpAddr> = v4.iter().chain(v6).copied().collect();
        if !addrs.is_empty() {
            if let Some((_, fqdn)) = st.targets.get(st.current) {
                return Step::Done(location(fqdn, addrs, st.port));
            }
        }
        st.current = st.current.saturating_add(1);
        st.v4 = None;
        st.v6 = None;
        self.next_target(st)
    }
}

/// The answer for server `name` at `addrs`: IPv4 first, each family sorted, at `port`.
fn location(name: &Fqdn, mut addrs: Vec<IpAddr>, port: u16) -> DnsAnswer {
    // IpAddr orders every V4 before every V6.
    addrs.sort();
    addrs.dedup();
    let addrs = addrs.into_iter().map(|ip| SocketAddr::new(ip, port)).collect();
    DnsAnswer::Dc(DcLocation { name: name.clone(), addrs })
}

/// A domain name as a lookup holds it: its labels, leftmost first, spelled as they came.
/// Equality and order ignore ASCII case, as DNS does; the order is the canonical one of
/// RFC 4034, 6.1 (labels compared from the root down, as octet strings).
#[derive(Clone, Debug)]
struct DName(Vec<Vec<u8>>);

impl DName {
    /// An engine's name (always a valid DNS name: labels of 1-63 bytes, 253 bytes at most).
    fn from_fqdn(fqdn: &Fqdn) -> DName {
        DName(fqdn.as_str().split('.').map(|label| label.as_bytes().to_vec()).collect())
    }

    /// A name decoded by simple-dns (its lengths already checked by the decoder).
    fn from_wire(name: &Name<'_>) -> DName {
        DName(name.as_bytes().map(<[u8]>::to_vec).collect())
    }

    /// The name for simple-dns to encode.
    fn to_wire(&self) -> Name<'_> {
        let labels: Vec<Label<'_>> = self.0.iter().map(|label| Label::new_unchecked(label.as_slice())).collect();
        Name::new_with_labels(&labels)
    }

    /// The name in lowercase.
    fn to_lowercase(&self) -> DName {
        DName(self.0.iter().map(|label| label.to_ascii_lowercase()).collect())
    }

    /// True if `self` is `name` or one of its ancestors.
    fn zone_of(&self, name: &DName) -> bool {
        self.0.len() <= name.0.len()
            && self.0.iter().rev().zip(name.0.iter().rev()).all(|(a, b)| a.eq_ignore_ascii_case(b))
    }

    /// The number of labels, a leading wildcard (`*`) not counted.
    fn num_labels(&self) -> usize {
        match self.0.first() {
            Some(first) if first.as_slice() == b"*" => self.0.len().saturating_sub(1),
            _ => self.0.len(),
        }
    }

    /// The name as the engines spell it, if it is a valid [`Fqdn`] (not the root, only
    /// letters, digits, hyphens and underscores).
    fn to_fqdn(&self) -> Option<Fqdn> {
        message::to_fqdn(self.0.iter().map(Vec::as_slice))
    }
}

impl PartialEq for DName {
    fn eq(&self, other: &DName) -> bool {
        message::same_name(&self.0, &other.0)
    }
}

impl Eq for DName {}

impl PartialOrd for DName {
    fn partial_cmp(&self, other: &DName) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for DName {
    fn cmp(&self, other: &DName) -> Ordering {
        for (a, b) in self.0.iter().rev().zip(other.0.iter().rev()) {
            let order = a.iter().map(u8::to_ascii_lowercase).cmp(b.iter().map(u8::to_ascii_lowercase));
            if order != Ordering::Equal {
                return order;
            }
        }
        self.0.len().cmp(&other.0.len())
    }
}

/// A question a query carries (class IN).
#[derive(Clone, Debug)]
struct Asked {
    name: DName,
    rtype: TYPE,
}

impl Asked {
    /// The query: this question, recursion desired, an EDNS(0) payload of [`EDNS_PAYLOAD`].
    /// Its id is 0 until [`Queries::send`] gives it one.
    fn encode(&self) -> simple_dns::Result<Vec<u8>> {
        let mut msg = Packet::new_query(0);
        msg.set_flags(PacketFlag::RECURSION_DESIRED);
        msg.questions.push(simple_dns::Question::new(self.name.to_wire(), self.rtype.into(), CLASS::IN.into(), false));
        *msg.opt_mut() = Some(OPT { opt_codes: Vec::new(), udp_packet_size: EDNS_PAYLOAD, version: 0 });
        msg.build_bytes_vec_compressed()
    }

    /// True if a reply's question is exactly this one (the name in any case). A class
    /// with the top bit set (mDNS "unicast response") is another class.
    fn matches(&self, question: &simple_dns::Question<'_>) -> bool {
        question.qtype == QTYPE::TYPE(self.rtype)
            && question.qclass == QCLASS::CLASS(CLASS::IN)
            && !question.unicast_response
            && DName::from_wire(&question.qname) == self.name
    }
}

/// A record of class IN, as far as a lookup reads it.
#[derive(Clone, Debug)]
struct Rec {
    owner: DName,
    rtype: TYPE,
    data: Data,
}

/// The part of a record's data a lookup reads.
#[derive(Clone, Debug)]
enum Data {
    Ns(DName),
    Cname(DName),
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Other,
}

/// The sections of a reply, reduced to their records of class IN.
#[derive(Debug)]
struct Reply {
    answers: Vec<Rec>,
    authorities: Vec<Rec>,
    additionals: Vec<Rec>,
}

impl Reply {
    fn new(msg: &Packet<'_>) -> Reply {
        Reply {
            answers: in_class(&msg.answers),
            authorities: in_class(&msg.name_servers),
            additionals: in_class(&msg.additional_records),
        }
    }
}

/// The records of class IN in a section. simple-dns reads the class's top bit as the mDNS
/// cache-flush flag; in unicast DNS that is another class, so such records are left out.
fn in_class(section: &[ResourceRecord<'_>]) -> Vec<Rec> {
    section
        .iter()
        .filter(|r| r.class == CLASS::IN && !r.cache_flush)
        .map(|r| Rec {
            owner: DName::from_wire(&r.name),
            rtype: r.rdata.type_code(),
            data: match &r.rdata {
                RData::NS(ns) => Data::Ns(DName::from_wire(&ns.0)),
                RData::CNAME(cname) => Data::Cname(DName::from_wire(&cname.0)),
                RData::A(a) => Data::A(Ipv4Addr::from(a.address)),
                RData::AAAA(aaaa) => Data::Aaaa(Ipv6Addr::from(aaaa.address)),
                _ => Data::Other,
            },
        })
        .collect()
}

/// Decodes a datagram as a DNS message with simple-dns, once its section counts are known
/// to fit its length ([`Counts::fit`]).
fn decode(bytes: &[u8]) -> Option<Packet<'_>> {
    if !Counts::read(bytes)?.fit(bytes.len()) {
        return None;
    }
    Packet::parse(bytes).ok()
}

/// Follows the CNAME chain from `name` inside a section; returns where it ends.
fn chase(section: &[Rec], name: &DName) -> DName {
    let mut current = name.clone();
    for _ in 0..CNAME_CHAIN_MAX {
        let next = section.iter().find_map(|r| match &r.data {
            Data::Cname(target) if r.owner == current => Some(target.clone()),
            _ => None,
        });
        match next {
            Some(target) => current = target,
            None => break,
        }
    }
    current
}

/// The targets of the NS records owned by `owner` in a section.
fn ns_targets(section: &[Rec], owner: &DName) -> Vec<DName> {
    section
        .iter()
        .filter(|r| r.owner == *owner)
        .filter_map(|r| match &r.data {
            Data::Ns(target) => Some(target.clone()),
            _ => None,
        })
        .collect()
}

/// The owner, closest to `name`, of a record of type `rtype` at `name` or above it.
fn closest_owner(section: &[Rec], name: &DName, rtype: TYPE) -> Option<DName> {
    section
        .iter()
        .filter(|r| r.rtype == rtype && r.owner.zone_of(name))
        .max_by_key(|r| r.owner.num_labels())
        .map(|r| r.owner.clone())
}

/// The address in an A (or AAAA) record, if the record is of type `rtype`.
fn address(record: &Rec, rtype: TYPE) -> Option<IpAddr> {
    match (&record.data, rtype) {
        (Data::A(a), TYPE::A) => Some(IpAddr::V4(*a)),
        (Data::Aaaa(aaaa), TYPE::AAAA) => Some(IpAddr::V6(*aaaa)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::HEADER_LEN;
    use rand_chacha::rand_core::SeedableRng;
    use simple_dns::rdata::{A, AAAA, CNAME, NS, SOA};
    use simple_dns::Question;

    const NS1: &str = "192.0.2.53:53";
    const NS2: &str = "198.51.100.53:53";
    const T0: Instant = Instant::ZERO;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn fq(s: &str) -> Fqdn {
        Fqdn::new(s).unwrap()
    }

    fn n(s: &str) -> Name<'static> {
        Name::new(s).unwrap().into_owned()
    }

    /// A question of class IN.
    fn question(name: &str, rtype: TYPE) -> Question<'static> {
        Question::new(n(name), rtype.into(), CLASS::IN.into(), false)
    }

    /// A query as the locator sent it, decoded.
    #[derive(Debug)]
    struct Sent {
        id: u16,
        response: bool,
        opcode: OPCODE,
        recursion_desired: bool,
        edns_payload: Option<u16>,
        questions: Vec<Question<'static>>,
    }

    impl Sent {
        fn rtype(&self) -> TYPE {
            match self.questions[0].qtype {
                QTYPE::TYPE(t) => t,
                other => panic!("{other:?}"),
            }
        }
    }

    fn cfg() -> LocatorConfig {
        LocatorConfig {
            nameservers: vec![sa(NS1), sa(NS2)],
            ntm_domains: vec![fq("ntm.test")],
            static_dcs: vec![
                (
                    fq("static.ntm.test"),
                    DcLocation { name: fq("dc.static.ntm.test"), addrs: vec![sa("10.0.0.1:4460")] },
                ),
                (fq("inner.static.ntm.test"), DcLocation { name: fq("dc2.x"), addrs: vec![sa("10.0.0.2:4460")] }),
                (fq("lab.example"), DcLocation { name: fq("dc.lab.example"), addrs: vec![sa("10.0.0.3:4460")] }),
            ],
            max_pending: 4,
            ..LocatorConfig::default()
        }
    }

    fn locator(cfg: LocatorConfig) -> Locator {
        Locator::new(cfg, Box::new(rand_chacha::ChaCha8Rng::seed_from_u64(7)))
    }

    fn q(id: u64, name: &str) -> DnsQuery {
        DnsQuery { id, name: fq(name), addresses: false }
    }

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    /// Drains the queries sent, parsed.
    fn sent(loc: &mut Locator) -> Vec<(SocketAddr, Sent)> {
        core::iter::from_fn(|| loc.poll_transmit())
            .map(|(to, b)| {
                let m = Packet::parse(&b).unwrap();
                let sent = Sent {
                    id: m.id(),
                    response: m.has_flags(PacketFlag::RESPONSE),
                    opcode: m.opcode(),
                    recursion_desired: m.has_flags(PacketFlag::RECURSION_DESIRED),
                    edns_payload: m.opt().map(|o| o.udp_packet_size),
                    questions: m.questions.iter().map(|q| q.clone().into_owned()).collect(),
                };
                (to, sent)
            })
            .collect()
    }

    /// The one query sent, checked for its question.
    fn one_query(loc: &mut Locator, name: &str, rtype: TYPE) -> Sent {
        let mut s = sent(loc);
        assert_eq!(s.len(), 1, "{s:?}");
        let (to, m) = s.remove(0);
        assert_eq!(to, sa(NS1));
        assert_question(&m, name, rtype);
        m
    }

    fn assert_question(m: &Sent, name: &str, rtype: TYPE) {
        assert!(!m.response);
        assert_eq!(m.opcode, OPCODE::StandardQuery);
        assert!(m.recursion_desired);
        assert_eq!(m.questions.len(), 1);
        let q = &m.questions[0];
        assert_eq!(q.qname, n(name));
        assert_eq!(q.qtype, QTYPE::TYPE(rtype));
        assert_eq!(q.qclass, QCLASS::CLASS(CLASS::IN));
        assert!(!q.unicast_response);
        assert_eq!(m.edns_payload, Some(EDNS_PAYLOAD));
    }

    /// A response to `query` with no records.
    fn reply(query: &Sent, rcode: RCODE) -> Packet<'static> {
        let mut r = Packet::new_reply(query.id);
        r.set_flags(PacketFlag::RECURSION_DESIRED | PacketFlag::RECURSION_AVAILABLE);
        *r.rcode_mut() = rcode;
        r.questions = query.questions.clone();
        r
    }

    fn rec(name: &str, data: RData<'static>) -> ResourceRecord<'static> {
        ResourceRecord::new(n(name), CLASS::IN, 300, data)
    }
    fn ns(owner: &str, target: &str) -> ResourceRecord<'static> {
        rec(owner, RData::NS(NS(n(target))))
    }
    fn a(owner: &str, ip: &str) -> ResourceRecord<'static> {
        rec(owner, RData::A(A::from(ip.parse::<Ipv4Addr>().unwrap())))
    }
    fn aaaa(owner: &str, ip: &str) -> ResourceRecord<'static> {
        rec(owner, RData::AAAA(AAAA::from(ip.parse::<Ipv6Addr>().unwrap())))
    }
    fn cname(owner: &str, target: &str) -> ResourceRecord<'static> {
        rec(owner, RData::CNAME(CNAME(n(target))))
    }
    fn soa(owner: &str) -> ResourceRecord<'static> {
        rec(
            owner,
            RData::SOA(SOA {
                mname: n("ns.ntm.test."),
                rname: n("hostmaster.ntm.test."),
                serial: 1,
                refresh: 3600,
                retry: 600,
                expire: 86400,
                minimum: 300,
            }),
        )
    }

    /// Delivers `m`, encoded with name compression as servers do.
    fn deliver(loc: &mut Locator, now: Instant, from: &str, m: &Packet<'_>) {
        loc.handle_response(now, sa(from), &m.build_bytes_vec_compressed().unwrap());
    }

    fn answers(loc: &mut Locator) -> Vec<(u64, DnsAnswer)> {
        core::iter::from_fn(|| loc.poll_answer()).collect()
    }

    fn dc(name: &str, addrs: &[&str]) -> DnsAnswer {
        DnsAnswer::Dc(DcLocation { name: fq(name), addrs: addrs.iter().map(|s| sa(s)).collect() })
    }

    /// Answers the A and AAAA queries for `target` with these addresses.
    fn answer_addresses(loc: &mut Locator, target: &str, v4: &[&str], v6: &[&str]) {
        let s = sent(loc);
        assert_eq!(s.len(), 2, "{s:?}");
        for (to, m) in s {
            assert_eq!(to, sa(NS1));
            let mut r = reply(&m, RCODE::NoError);
            let rtype = m.rtype();
            assert_question(&m, target, rtype);
            for ip in if rtype == TYPE::A { v4 } else { v6 } {
                r.answers.push(if rtype == TYPE::A { a(target, ip) } else { aaaa(target, ip) });
            }
            deliver(loc, T0, NS1, &r);
        }
    }

    #[test]
    fn names_outside_the_ntm_domains_answer_at_once_without_traffic() {
        let mut loc = locator(cfg());
        loc.start(T0, q(1, "www.example.org"));
        loc.start(T0, q(2, "ntm.test.example"));
        loc.start(T0, q(3, "xntm.test"));
        assert_eq!(answers(&mut loc), vec![(1, DnsAnswer::NotNtm), (2, DnsAnswer::NotNtm), (3, DnsAnswer::NotNtm)]);
        assert!(loc.poll_transmit().is_none());
        assert_eq!(loc.poll_timeout(), None);
        assert_eq!(loc.pending(), 0);
    }

    #[test]
    fn static_zones_answer_at_once_most_specific_first() {
        let mut loc = locator(cfg());
        loc.start(T0, q(1, "node.static.ntm.test"));
        loc.start(T0, q(2, "node.inner.static.ntm.test"));
        // A static zone outside the NTM domains is an NTM domain of its own.
        loc.start(T0, q(3, "lab.example"));
        assert_eq!(
            answers(&mut loc),
            vec![
                (1, dc("dc.static.ntm.test", &["10.0.0.1:4460"])),
                (2, dc("dc2.x", &["10.0.0.2:4460"])),
                (3, dc("dc.lab.example", &["10.0.0.3:4460"])),
            ]
        );
        assert!(loc.poll_transmit().is_none());
    }

    #[test]
    fn a_zone_apex_uses_its_ns_records_and_glue() {
        let mut loc = locator(cfg());
        loc.start(T0, q(9, "zone.ntm.test"));
        let m = one_query(&mut loc, "zone.ntm.test.", TYPE::NS);
        assert_eq!(loc.poll_timeout(), Some(at(2000)));
        let mut r = reply(&m, RCODE::NoError);
        // Canonical order picks dc1 whatever the order on the wire.
        r.answers.push(ns("zone.ntm.test.", "dc2.zone.ntm.test."));
        r.answers.push(ns("zone.ntm.test.", "DC1.zone.ntm.test."));
        r.additional_records.push(aaaa("dc1.zone.ntm.test.", "2001:db8::1"));
        r.additional_records.push(a("dc1.zone.ntm.test.", "192.0.2.9"));
        r.additional_records.push(a("dc1.zone.ntm.test.", "192.0.2.1"));
        r.additional_records.push(a("dc2.zone.ntm.test.", "192.0.2.2"));
        deliver(&mut loc, T0, NS1, &r);
        assert_eq!(
            answers(&mut loc),
            vec![(9, dc("dc1.zone.ntm.test", &["192.0.2.1:4460", "192.0.2.9:4460", "[2001:db8::1]:4460"]))]
        );
        assert!(loc.poll_transmit().is_none());
        assert_eq!(loc.poll_timeout(), None);
        assert_eq!(loc.pending(), 0);
        assert_eq!(loc.stats(), &LocatorStats::default());
    }

    #[test]
    fn a_referral_names_the_zone_and_its_servers() {
        let mut loc = locator(cfg());
        loc.start(T0, q(1, "node.a.ntm.test"));
        let m = one_query(&mut loc, "node.a.ntm.test.", TYPE::NS);
        let mut r = reply(&m, RCODE::NoError);
        r.remove_flags(PacketFlag::RECURSION_AVAILABLE);
        r.name_servers.push(ns("a.ntm.test.", "dc.a.ntm.test."));
        r.additional_records.push(a("dc.a.ntm.test.", "192.0.2.10"));
        r.additional_records.push(aaaa("dc.a.ntm.test.", "2001:db8::10"));
        // Glue for another name is not this target's.
        r.additional_records.push(a("other.ntm.test.", "192.0.2.99"));
        deliver(&mut loc, T0, NS1, &r);
        assert_eq!(answers(&mut loc), vec![(1, dc("dc.a.ntm.test", &["192.0.2.10:4460", "[2001:db8::10]:4460"]))]);
    }

    #[test]
    fn an_upward_referral_fails() {
        let mut loc = locator(cfg());
        loc.start(T0, q(1, "node.a.ntm.test"));
        let m = one_query(&mut loc, "node.a.ntm.test.", TYPE::NS);
        let mut r = reply(&m, RCODE::NoError);
        r.name_servers.push(ns("test.", "ns.nic.test."));
        r.additional_records.push(a("ns.nic.test.", "192.0.2.100"));
        deliver(&mut loc, T0, NS1, &r);
        assert_eq!(answers(&mut loc), vec![(1, DnsAnswer::Failed)]);
    }

    #[test]
    fn nxdomain_with_an_soa_asks_ns_for_the_zone_then_the_addresses() {
        let mut loc = locator(cfg());
        loc.start(T0, q(1, "node.b.ntm.test"));
        let m = one_query(&mut loc, "node.b.ntm.test.", TYPE::NS);
        let mut r = reply(&m, RCODE::NameError);
        r.name_servers.push(soa("ntm.test."));
        r.name_servers.push(soa("b.ntm.test."));
        deliver(&mut loc, T0, NS1, &r);
        assert!(answers(&mut loc).is_empty());
        let m = one_query(&mut loc, "b.ntm.test.", TYPE::NS);
        let mut r = reply(&m, RCODE::NoError);
        r.answers.push(ns("b.ntm.test.", "dc.hosts.example."));
        deliver(&mut loc, T0, NS1, &r);
        assert!(answers(&mut loc).is_empty());
        answer_addresses(&mut loc, "dc.hosts.example.", &["192.0.2.20"], &["2001:db8::20", "2001:db8::3"]);
        assert_eq!(
            answers(&mut loc),
            vec![(1, dc("dc.hosts.example", &["192.0.2.20:4460", "[2001:db8::3]:4460", "[2001:db8::20]:4460"]))]
        );
        assert_eq!(loc.poll_timeout(), None);
    }

    #[test]
    fn nodata_with_an_soa_asks_ns_for_the_zone() {
        let mut loc = locator(cfg());
        loc.start(T0, q(1, "host.c.ntm.test"));
        let m = one_query(&mut loc, "host.c.ntm.test.", TYPE::NS);
        let mut r = reply(&m, RCODE::NoError);
        r.name_servers.push(soa("c.ntm.test."));
        deliver(&mut loc, T0, NS1, &r);
        let m = one_query(&mut loc, "c.ntm.test.", TYPE::NS);
        // An authoritative parent may answer with a referral to exactly that zone.
        let mut r = reply(&m, RCODE::NoError);
        r.name_servers.push(ns("c.ntm.test.", "dc.c.ntm.test."));
        r.additional_records.push(a("dc.c.ntm.test.", "192.0.2.30"));
        deliver(&mut loc, T0, NS1, &r);
        assert_eq!(answers(&mut loc), vec![(1, dc("dc.c.ntm.test", &["192.0.2.30:4460"]))]);
    }

    #[test]
    fn an_soa_for_the_name_itself_or_nothing_at_all_fails() {
        let mut loc = locator(cfg());
        loc.start(T0, q(1, "broken.ntm.test"));
        let m = one_query(&mut loc, "broken.ntm.test.", TYPE::NS);
        let mut r = reply(&m, RCODE::NoError);
        r.name_servers.push(soa("broken.ntm.test."));
        deliver(&mut loc, T0, NS1, &r);
        loc.start(T0, q(2, "empty.ntm.test"));
        let m = one_query(&mut loc, "empty.ntm.test.", TYPE::NS);
        deliver(&mut loc, T0, NS1, &reply(&m, RCODE::NameError));
        // The SOA's zone answers NS without any: no zone.
        loc.start(T0, q(3, "x.d.ntm.test"));
        let m = one_query(&mut loc, "x.d.ntm.test.", TYPE::NS);
        let mut r = reply(&m, RCODE::NameError);
        r.name_servers.push(soa("d.ntm.test."));
        deliver(&mut loc, T0, NS1, &r);
        let m = one_query(&mut loc, "d.ntm.test.", TYPE::NS);
        let mut r = reply(&m, RCODE::NoError);
        r.name_servers.push(soa("d.ntm.test."));
        deliver(&mut loc, T0, NS1, &r);
        assert_eq!(answers(&mut loc), vec![(1, DnsAnswer::Failed), (2, DnsAnswer::Failed), (3, DnsAnswer::Failed)]);
        assert_eq!(loc.pending(), 0);
        assert_eq!(loc.poll_timeout(), None);
    }

    #[test]
    fn a_zone_outside_the_ntm_domains_is_not_ntm() {
        let mut c = cfg();
        c.ntm_domains = vec![fq("nodes.ntm.test")];
        let mut loc = locator(c);
        loc.start(T0, q(1, "x.nodes.ntm.test"));
        let m = one_query(&mut loc, "x.nodes.ntm.test.", TYPE::NS);
        let mut r = reply(&m, RCODE::NameError);
        r.name_servers.push(soa("ntm.test."));
        deliver(&mut loc, T0, NS1, &r);
        assert_eq!(answers(&mut loc), vec![(1, DnsAnswer::NotNtm)]);
        assert!(loc.poll_transmit().is_none());
    }

    #[test]
    fn a_cname_is_followed_once() {
        let mut loc = locator(cfg());
        loc.start(T0, q(1, "alias.ntm.test"));
        let m = one_query(&mut loc, "alias.ntm.test.", TYPE::NS);
        let mut r = reply(&m, RCODE::NoError);
        r.answers.push(cname("alias.ntm.test.", "node.e.ntm.test."));
        deliver(&mut loc, T0, NS1, &r);
        let m = one_query(&mut loc, "node.e.ntm.test.", TYPE::NS);
        let mut r = reply(&m, RCODE::NoError);
        r.answers.push(cname("node.e.ntm.test.", "again.ntm.test."));
        deliver(&mut loc, T0, NS1, &r);
        // A second CNAME without an answer is not followed.
        assert_eq!(answers(&mut loc), vec![(1, DnsAnswer::Failed)]);
        assert!(loc.poll_transmit().is_none());

        loc.start(T0, q(2, "alias.ntm.test"));
        let m = one_query(&mut loc, "alias.ntm.test.", TYPE::NS);
        let mut r = reply(&m, RCODE::NoError);
        r.answers.push(cname("alias.ntm.test.", "node.e.ntm.test."));
        deliver(&mut loc, T0, NS1, &r);
        let m = one_query(&mut loc, "node.e.ntm.test.", TYPE::NS);
        let mut r = reply(&m, RCODE::NameError);
        r.name_servers.push(soa("e.ntm.test."));
        deliver(&mut loc, T0, NS1, &r);
        let m = one_query(&mut loc, "e.ntm.test.", TYPE::NS);
        let mut r = reply(&m, RCODE::NoError);
        r.answers.push(ns("e.ntm.test.", "dc.e.ntm.test."));
        r.additional_records.push(aaaa("dc.e.ntm.test.", "2001:db8::e"));
        deliver(&mut loc, T0, NS1, &r);
        assert_eq!(answers(&mut loc), vec![(2, dc("dc.e.ntm.test", &["[2001:db8::e]:4460"]))]);
    }

    #[test]
    fn a_cname_chain_inside_one_response_is_chased() {
        let mut loc = locator(cfg());
        loc.start(T0, q(1, "alias.ntm.test"));
        let m = one_query(&mut loc, "alias.ntm.test.", TYPE::NS);
        let mut r = reply(&m, RCODE::NameError);
        r.answers.push(cname("alias.ntm.test.", "mid.ntm.test."));
        r.answers.push(cname("mid.ntm.test.", "node.f.ntm.test."));
        r.name_servers.push(soa("f.ntm.test."));
        deliver(&mut loc, T0, NS1, &r);
        one_query(&mut loc, "f.ntm.test.", TYPE::NS);

        // A CNAME out of the NTM domains is ordinary DNS.
        loc.start(T0, q(2, "out.ntm.test"));
        let m = one_query(&mut loc, "out.ntm.test.", TYPE::NS);
        let mut r = reply(&m, RCODE::NoError);
        r.answers.push(cname("out.ntm.test.", "www.example.org."));
        deliver(&mut loc, T0, NS1, &r);
        assert_eq!(answers(&mut loc), vec![(2, DnsAnswer::NotNtm)]);

        // A CNAME loop ends after a bounded chase, then fails.
        loc.start(T0, q(3, "loop.ntm.test"));
        let m = one_query(&mut loc, "loop.ntm.test.", TYPE::NS);
        let mut r = reply(&m, RCODE::NoError);
        r.answers.push(cname("loop.ntm.test.", "pool.ntm.test."));
        r.answers.push(cname("pool.ntm.test.", "loop.ntm.test."));
        deliver(&mut loc, T0, NS1, &r);
        assert_eq!(answers(&mut loc), vec![(3, DnsAnswer::Failed)]);
    }

    #[test]
    fn a_server_name_is_looked_up_in_both_families_whatever_its_domain() {
        let mut loc = locator(cfg());
        // Outside the NTM domains, and not an NS question: A and AAAA of the name itself.
        loc.start_addresses(T0, 7, &fq("as.example.org"), 4443);
        answer_addresses(&mut loc, "as.example.org.", &["192.0.2.10"], &["2001:db8::10", "2001:db8::9"]);
        let want = dc("as.example.org", &["192.0.2.10:4443", "[2001:db8::9]:4443", "[2001:db8::10]:4443"]);
        assert_eq!(answers(&mut loc), vec![(7, want)]);
        // One family is enough; none is a failure.
        loc.start_addresses(T0, 8, &fq("as6.example.org"), 4443);
        answer_addresses(&mut loc, "as6.example.org.", &[], &["2001:db8::10"]);
        assert_eq!(answers(&mut loc), vec![(8, dc("as6.example.org", &["[2001:db8::10]:4443"]))]);
        loc.start_addresses(T0, 9, &fq("none.example.org"), 4443);
        answer_addresses(&mut loc, "none.example.org.", &[], &[]);
        assert_eq!(answers(&mut loc), vec![(9, DnsAnswer::Failed)]);
    }

    #[test]
    fn the_next_target_is_tried_when_one_has_no_address() {
        let mut loc = locator(cfg());
        loc.start(T0, q(1, "g.ntm.test"));
        let m = one_query(&mut loc, "g.ntm.test.", TYPE::NS);
        let mut r = reply(&m, RCODE::NoError);
        r.answers.push(ns("g.ntm.test.", "b.dc.example."));
        r.answers.push(ns("g.ntm.test.", "a.dc.example."));
        r.answers.push(ns("g.ntm.test.", "."));
        deliver(&mut loc, T0, NS1, &r);
        answer_addresses(&mut loc, "a.dc.example.", &[], &[]);
        assert!(answers(&mut loc).is_empty());
        answer_addresses(&mut loc, "b.dc.example.", &[], &["2001:db8::b"]);
        assert_eq!(answers(&mut loc), vec![(1, dc("b.dc.example", &["[2001:db8::b]:4460"]))]);

        // None resolves: Failed.
        loc.start(T0, q(2, "g.ntm.test"));
        let m = one_query(&mut loc, "g.ntm.test.", TYPE::NS);
        let mut r = reply(&m, RCODE::NoError);
        r.answers.push(ns("g.ntm.test.", "b.dc.example."));
        r.answers.push(ns("g.ntm.test.", "a.dc.example."));
        deliver(&mut loc, T0, NS1, &r);
        answer_addresses(&mut loc, "a.dc.example.", &[], &[]);
        answer_addresses(&mut loc, "b.dc.example.", &[], &[]);
        assert_eq!(answers(&mut loc), vec![(2, DnsAnswer::Failed)]);
        assert_eq!(loc.pending(), 0);
    }

    #[test]
    fn address_answers_follow_a_cname_and_skip_other_owners() {
        let mut loc = locator(cfg());
        loc.start(T0, q(1, "h.ntm.test"));
        let m = one_query(&mut loc, "h.ntm.test.", TYPE::NS);
        let mut r = reply(&m, RCODE::NoError);
        r.answers.push(ns("h.ntm.test.", "dc.h.ntm.test."));
        deliver(&mut loc, T0, NS1, &r);
        for (_, m) in sent(&mut loc) {
            let mut r = reply(&m, RCODE::NoError);
            if m.rtype() == TYPE::A {
                r.answers.push(cname("dc.h.ntm.test.", "real.h.ntm.test."));
                r.answers.push(a("real.h.ntm.test.", "192.0.2.40"));
                r.answers.push(a("unrelated.h.ntm.test.", "192.0.2.41"));
            }
            deliver(&mut loc, T0, NS1, &r);
        }
        assert_eq!(answers(&mut loc), vec![(1, dc("dc.h.ntm.test", &["192.0.2.40:4460"]))]);
    }

    #[test]
    fn queries_are_retransmitted_rotating_servers_then_fail() {
        let mut loc = locator(cfg());
        loc.start(T0, q(1, "slow.ntm.test"));
        let first = one_query(&mut loc, "slow.ntm.test.", TYPE::NS);
        assert_eq!(loc.poll_timeout(), Some(at(2000)));
        loc.handle_timeout(at(1999));
        assert!(loc.poll_transmit().is_none());
        loc.handle_timeout(at(2000));
        let s = sent(&mut loc);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].0, sa(NS2));
        assert_eq!(s[0].1.id, first.id);
        assert_eq!(loc.poll_timeout(), Some(at(4000)));
        loc.handle_timeout(at(4000));
        let s = sent(&mut loc);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].0, sa(NS1));
        assert!(answers(&mut loc).is_empty());
        loc.handle_timeout(at(6000));
        assert!(loc.poll_transmit().is_none());
        assert_eq!(answers(&mut loc), vec![(1, DnsAnswer::Failed)]);
        assert_eq!(loc.stats().timeouts, 3);
        assert_eq!(loc.poll_timeout(), None);
        assert_eq!(loc.pending(), 0);
    }

    #[test]
    fn a_late_answer_from_an_earlier_server_is_taken() {
        let mut loc = locator(cfg());
        loc.start(T0, q(1, "late.ntm.test"));
        let m = one_query(&mut loc, "late.ntm.test.", TYPE::NS);
        loc.handle_timeout(at(2000));
        assert_eq!(sent(&mut loc).len(), 1);
        let mut r = reply(&m, RCODE::NoError);
        r.answers.push(ns("late.ntm.test.", "dc.late.ntm.test."));
        r.additional_records.push(a("dc.late.ntm.test.", "192.0.2.50"));
        deliver(&mut loc, at(2100), NS1, &r);
        assert_eq!(answers(&mut loc), vec![(1, dc("dc.late.ntm.test", &["192.0.2.50:4460"]))]);
        // The duplicate from the second server finds nothing waiting.
        deliver(&mut loc, at(2200), NS2, &r);
        assert_eq!(loc.stats().ignored, 1);
        assert!(answers(&mut loc).is_empty());
    }

    #[test]
    fn a_failed_address_family_counts_as_empty() {
        let mut c = cfg();
        c.attempts = 1;
        let mut loc = locator(c);
        loc.start(T0, q(1, "i.ntm.test"));
        let m = one_query(&mut loc, "i.ntm.test.", TYPE::NS);
        let mut r = reply(&m, RCODE::NoError);
        r.answers.push(ns("i.ntm.test.", "dc.i.ntm.test."));
        deliver(&mut loc, T0, NS1, &r);
        for (_, m) in sent(&mut loc) {
            if m.rtype() == TYPE::A {
                let mut r = reply(&m, RCODE::NoError);
                r.answers.push(a("dc.i.ntm.test.", "192.0.2.60"));
                deliver(&mut loc, T0, NS1, &r);
            }
        }
        assert!(answers(&mut loc).is_empty());
        loc.handle_timeout(at(2000));
        assert_eq!(answers(&mut loc), vec![(1, dc("dc.i.ntm.test", &["192.0.2.60:4460"]))]);
    }

    #[test]
    fn wrong_id_source_or_question_is_ignored_and_counted() {
        let mut loc = locator(cfg());
        loc.start(T0, q(1, "j.ntm.test"));
        let m = one_query(&mut loc, "j.ntm.test.", TYPE::NS);
        let mut good = reply(&m, RCODE::NoError);
        good.answers.push(ns("j.ntm.test.", "dc.j.ntm.test."));
        good.additional_records.push(a("dc.j.ntm.test.", "192.0.2.70"));

        let mut wrong_id = good.clone();
        wrong_id.set_id(m.id.wrapping_add(1));
        deliver(&mut loc, T0, NS1, &wrong_id);
        // NS2 was not asked yet.
        deliver(&mut loc, T0, NS2, &good);
        deliver(&mut loc, T0, "192.0.2.53:5353", &good);
        let mut wrong_question = good.clone();
        wrong_question.questions = vec![question("evil.ntm.test.", TYPE::NS)];
        deliver(&mut loc, T0, NS1, &wrong_question);
        let mut wrong_type = good.clone();
        wrong_type.questions = vec![question("j.ntm.test.", TYPE::A)];
        deliver(&mut loc, T0, NS1, &wrong_type);
        let mut two_questions = good.clone();
        two_questions.questions.push(question("j.ntm.test.", TYPE::NS));
        deliver(&mut loc, T0, NS1, &two_questions);
        let mut not_a_response = good.clone();
        not_a_response.remove_flags(PacketFlag::RESPONSE);
        deliver(&mut loc, T0, NS1, &not_a_response);
        loc.handle_response(T0, sa(NS1), b"\x12");
        assert!(answers(&mut loc).is_empty());
        assert_eq!(loc.stats().ignored, 7);
        assert_eq!(loc.stats().malformed, 1);
        assert!(loc.poll_transmit().is_none());

        // The question's name matches whatever its case.
        let mut upper = good.clone();
        upper.questions = vec![question("J.NTM.test.", TYPE::NS)];
        deliver(&mut loc, T0, NS1, &upper);
        assert_eq!(answers(&mut loc), vec![(1, dc("dc.j.ntm.test", &["192.0.2.70:4460"]))]);
    }

    #[test]
    fn truncated_or_server_failure_moves_to_the_next_try_at_once() {
        let mut loc = locator(cfg());
        loc.start(T0, q(1, "k.ntm.test"));
        let m = one_query(&mut loc, "k.ntm.test.", TYPE::NS);
        let mut tc = reply(&m, RCODE::NoError);
        tc.set_flags(PacketFlag::TRUNCATION);
        deliver(&mut loc, at(10), NS1, &tc);
        let s = sent(&mut loc);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].0, sa(NS2));
        assert_eq!(loc.poll_timeout(), Some(at(2010)));
        deliver(&mut loc, at(20), NS2, &reply(&m, RCODE::ServerFailure));
        assert_eq!(sent(&mut loc).len(), 1);
        deliver(&mut loc, at(30), NS1, &reply(&m, RCODE::Refused));
        assert!(loc.poll_transmit().is_none());
        assert_eq!(answers(&mut loc), vec![(1, DnsAnswer::Failed)]);
        assert_eq!(loc.stats().truncated, 1);
        assert_eq!(loc.stats().server_errors, 2);
    }

    #[test]
    fn pending_lookups_are_capped() {
        let mut loc = locator(cfg());
        for id in 0..4 {
            loc.start(T0, q(id, &format!("n{id}.ntm.test")));
        }
        assert_eq!(sent(&mut loc).len(), 4);
        loc.start(T0, q(4, "n4.ntm.test"));
        assert!(loc.poll_transmit().is_none());
        assert_eq!(answers(&mut loc), vec![(4, DnsAnswer::Failed)]);
        assert_eq!(loc.stats().over_limit, 1);
        // Outside names and static zones are not lookups and are still answered.
        loc.start(T0, q(5, "www.example.org"));
        loc.start(T0, q(6, "a.static.ntm.test"));
        assert_eq!(answers(&mut loc).len(), 2);
        // Once lookups end, there is room again.
        for t in [2000, 4000, 6000] {
            loc.handle_timeout(at(t));
        }
        assert_eq!(sent(&mut loc).len(), 8);
        assert_eq!(answers(&mut loc).len(), 4);
        loc.start(at(6000), q(7, "n7.ntm.test"));
        assert_eq!(sent(&mut loc).len(), 1);
    }

    #[test]
    fn without_nameservers_lookups_fail_at_once() {
        let mut c = cfg();
        c.nameservers.clear();
        let mut loc = locator(c);
        loc.start(T0, q(1, "l.ntm.test"));
        assert_eq!(answers(&mut loc), vec![(1, DnsAnswer::Failed)]);
        assert_eq!(loc.pending(), 0);
        assert_eq!(loc.poll_timeout(), None);
    }

    #[test]
    fn ids_are_distinct_and_drawn_from_the_rng() {
        let ids = |seed| {
            let mut loc = Locator::new(cfg(), Box::new(rand_chacha::ChaCha8Rng::seed_from_u64(seed)));
            for id in 0..4 {
                loc.start(T0, q(id, &format!("n{id}.ntm.test")));
            }
            sent(&mut loc).into_iter().map(|(_, m)| m.id).collect::<Vec<_>>()
        };
        let a = ids(1);
        assert_eq!(a, ids(1));
        assert_ne!(a, ids(2));
        let mut d = a.clone();
        d.sort();
        d.dedup();
        assert_eq!(d.len(), a.len());
    }

    #[test]
    fn no_input_panics() {
        // Every prefix of a valid answer, and every single-byte corruption of it.
        let mut loc = locator(cfg());
        loc.start(T0, q(1, "m.ntm.test"));
        let m = one_query(&mut loc, "m.ntm.test.", TYPE::NS);
        let mut r = reply(&m, RCODE::NoError);
        r.answers.push(ns("m.ntm.test.", "dc.m.ntm.test."));
        r.answers.push(cname("m.ntm.test.", "m.ntm.test."));
        r.name_servers.push(soa("ntm.test."));
        r.additional_records.push(a("dc.m.ntm.test.", "192.0.2.80"));
        let bytes = r.build_bytes_vec_compressed().unwrap();
        for len in 0..bytes.len() {
            loc.handle_response(T0, sa(NS1), &bytes[..len]);
        }
        for i in 0..bytes.len() {
            for v in [0u8, 0x3f, 0xc0, 0xff] {
                let mut b = bytes.clone();
                b[i] = v;
                let mut fresh = locator(cfg());
                fresh.start(T0, q(1, "m.ntm.test"));
                let id = sent(&mut fresh)[0].1.id.to_be_bytes();
                b[0] = id[0];
                b[1] = id[1];
                fresh.handle_response(T0, sa(NS1), &b);
                for (_, m) in sent(&mut fresh) {
                    let mut r = reply(&m, RCODE::NoError);
                    r.answers.push(a("dc.m.ntm.test.", "192.0.2.81"));
                    deliver(&mut fresh, T0, NS1, &r);
                }
                fresh.handle_timeout(at(60_000));
            }
        }
    }

    #[test]
    fn section_counts_beyond_the_datagram_are_malformed() {
        let mut loc = locator(cfg());
        loc.start(T0, q(1, "o.ntm.test"));
        let m = one_query(&mut loc, "o.ntm.test.", TYPE::NS);
        let mut r = reply(&m, RCODE::NoError);
        r.answers.push(ns("o.ntm.test.", "dc.o.ntm.test."));
        r.additional_records.push(a("dc.o.ntm.test.", "192.0.2.90"));
        let good = r.build_bytes_vec_compressed().unwrap();
        // A header alone claiming 65535 entries in every section; then the reply with one
        // answer more than it holds.
        let id = m.id.to_be_bytes();
        loc.handle_response(T0, sa(NS1), &[id[0], id[1], 0x81, 0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        let mut more = good.clone();
        more[7] += 1;
        loc.handle_response(T0, sa(NS1), &more);
        // Short datagrams, the empty one included.
        for len in 0..HEADER_LEN {
            loc.handle_response(T0, sa(NS1), &good[..len]);
        }
        assert_eq!(loc.stats().malformed, 2 + HEADER_LEN as u64);
        assert!(answers(&mut loc).is_empty());
        loc.handle_response(T0, sa(NS1), &good);
        assert_eq!(answers(&mut loc), vec![(1, dc("dc.o.ntm.test", &["192.0.2.90:4460"]))]);
    }

    #[test]
    fn only_class_in_counts() {
        let mut loc = locator(cfg());
        loc.start(T0, q(1, "p.ntm.test"));
        let m = one_query(&mut loc, "p.ntm.test.", TYPE::NS);
        // A question of class IN with the top bit set (mDNS "unicast response") is another
        // question.
        let mut unicast = reply(&m, RCODE::NoError);
        unicast.questions[0].unicast_response = true;
        deliver(&mut loc, T0, NS1, &unicast);
        let mut chaos = reply(&m, RCODE::NoError);
        chaos.questions[0].qclass = QCLASS::CLASS(CLASS::CH);
        deliver(&mut loc, T0, NS1, &chaos);
        assert_eq!(loc.stats().ignored, 2);
        // Records of class CH, or IN with the top bit set (mDNS "cache flush"), are not read.
        let mut r = reply(&m, RCODE::NoError);
        let mut other = ns("p.ntm.test.", "dc.p.ntm.test.");
        other.class = CLASS::CH;
        r.answers.push(other);
        r.answers.push(ns("p.ntm.test.", "dc.p.ntm.test.").with_cache_flush(true));
        r.additional_records.push(a("dc.p.ntm.test.", "192.0.2.91"));
        deliver(&mut loc, T0, NS1, &r);
        assert_eq!(answers(&mut loc), vec![(1, DnsAnswer::Failed)]);

        loc.start(T0, q(2, "p.ntm.test"));
        let m = one_query(&mut loc, "p.ntm.test.", TYPE::NS);
        let mut r = reply(&m, RCODE::NoError);
        r.answers.push(ns("p.ntm.test.", "dc.p.ntm.test."));
        r.additional_records.push(a("dc.p.ntm.test.", "192.0.2.91").with_cache_flush(true));
        r.additional_records.push(a("dc.p.ntm.test.", "192.0.2.92"));
        deliver(&mut loc, T0, NS1, &r);
        assert_eq!(answers(&mut loc), vec![(2, dc("dc.p.ntm.test", &["192.0.2.92:4460"]))]);
    }

    #[test]
    fn names_compare_without_case_in_canonical_order() {
        let d = |s: &str| DName::from_wire(&Name::new_unchecked(s));
        // The example of RFC 4034, 6.1 (less its labels \001 and \200), below a TLD.
        let rfc =
            ["example", "a.example", "yljkjljk.a.example", "Z.a.example", "zABC.a.EXAMPLE", "z.example", "*.z.example"];
        let mut names: Vec<DName> = rfc.iter().rev().map(|s| d(s)).collect();
        names.sort();
        let sorted: Vec<String> = names.iter().map(|n| String::from_utf8(n.0.join(&b'.')).unwrap()).collect();
        assert_eq!(sorted, rfc);
        assert_eq!(d("A.Example"), d("a.example"));
        assert_ne!(d("a.example"), d("a.example.net"));
        assert!(d("EXAMPLE").zone_of(&d("a.example")));
        assert!(d("a.example").zone_of(&d("a.example")));
        assert!(!d("a.example").zone_of(&d("example")));
        assert!(d("").zone_of(&d("example")));
        assert_eq!(d("*.z.example").num_labels(), 2);
        // Spelled as the engines spell names, when it is one.
        assert_eq!(d("Dc1.Zone.ntm.test").to_fqdn(), Some(fq("dc1.zone.ntm.test")));
        assert_eq!(d("").to_fqdn(), None);
        assert_eq!(d("*.ntm.test").to_fqdn(), None);
        assert_eq!(d("-a.ntm.test").to_fqdn(), None);
        let dotted = DName(vec![b"a.b".to_vec(), b"test".to_vec()]);
        assert_eq!(dotted.to_fqdn(), None);
        let spaced = DName(vec![b"a b".to_vec(), b"test".to_vec()]);
        assert_eq!(spaced.to_fqdn(), None);
        let high = DName(vec![vec![0xc3, 0xa9], b"test".to_vec()]);
        assert_eq!(high.to_fqdn(), None);
    }

    proptest::proptest! {
        #[test]
        fn no_datagram_panics(body in proptest::collection::vec(proptest::num::u8::ANY, 0..600), flags in 0u16..) {
            // Any bytes after the awaited id, and any header flags.
            let mut loc = locator(cfg());
            loc.start(T0, q(1, "r.ntm.test"));
            let id = sent(&mut loc)[0].1.id;
            let mut b = id.to_be_bytes().to_vec();
            b.extend_from_slice(&flags.to_be_bytes());
            b.extend_from_slice(&body);
            loc.handle_response(T0, sa(NS1), &b);
            for (_, m) in sent(&mut loc) {
                let mut r = reply(&m, RCODE::NoError);
                r.answers.push(a("dc.r.ntm.test.", "192.0.2.93"));
                deliver(&mut loc, T0, NS1, &r);
            }
            loc.handle_timeout(at(60_000));
        }

        #[test]
        fn no_patched_reply_panics(at_byte in 0usize..200, patch in proptest::collection::vec(proptest::num::u8::ANY, 1..24)) {
            // A full reply (compressed names, every section, EDNS) with a run of bytes
            // overwritten anywhere after the id.
            let mut loc = locator(cfg());
            loc.start(T0, q(1, "s.ntm.test"));
            let m = one_query(&mut loc, "s.ntm.test.", TYPE::NS);
            let mut r = reply(&m, RCODE::NoError);
            r.answers.push(cname("s.ntm.test.", "t.s.ntm.test."));
            r.answers.push(ns("t.s.ntm.test.", "dc.s.ntm.test."));
            r.name_servers.push(soa("ntm.test."));
            r.additional_records.push(a("dc.s.ntm.test.", "192.0.2.94"));
            r.additional_records.push(aaaa("dc.s.ntm.test.", "2001:db8::94"));
            *r.opt_mut() = Some(OPT { opt_codes: Vec::new(), udp_packet_size: 1232, version: 0 });
            let mut b = r.build_bytes_vec_compressed().unwrap();
            let start = 2 + at_byte % (b.len() - 2);
            for (i, v) in patch.into_iter().enumerate() {
                if let Some(x) = b.get_mut(start + i) {
                    *x = v;
                }
            }
            loc.handle_response(T0, sa(NS1), &b);
            for (_, m) in sent(&mut loc) {
                let mut r = reply(&m, RCODE::NoError);
                r.answers.push(a("dc.s.ntm.test.", "192.0.2.95"));
                deliver(&mut loc, T0, NS1, &r);
            }
            loc.handle_timeout(at(60_000));
        }
    }
}
