//! The DNS hook (spec 4.3): a sans-IO DNS stub that the box's resolver points at.
//!
//! An application asks DNS for FQDN_CN; the query reaches this stub. A name below one of
//! the NTM domains is *hooked*: the stub asks the driver to resolve it through the node
//! ([`Outcome::Resolve`], i.e. `Node::resolve`: Direction Request to our DC), and once the
//! node reports the tunnel up ([`DnsStub::resolved`]) it answers with CN's **virtual**
//! address, so the application never sees a real one. Every other name is ordinary DNS and
//! is forwarded to the upstream resolvers.
//!
//! The stub owns no socket and reads no clock. The calls follow the engines' shape:
//!
//! - **input**: [`DnsStub::handle_query`] (a datagram on the client-facing socket),
//!   [`DnsStub::resolved`] (the node's `Resolved`/`ResolveFailed` for a token),
//!   [`DnsStub::handle_upstream`] (a datagram from an upstream resolver),
//!   [`DnsStub::handle_timeout`] (the deadline from `poll_timeout` passed);
//! - **output**: [`DnsStub::poll_transmit`] (datagrams to send, to a client or upstream),
//!   [`DnsStub::poll_timeout`].
//!
//! After any input the driver drains `poll_transmit` until it returns `None`. Every DNS
//! message is decoded and built with `simple-dns`; the stub writes no DNS encoding by hand.
//!
//! # Rules
//!
//! A *standard query* is opcode QUERY, QR clear, exactly one question, no answer or
//! authority records. For its question:
//!
//! 1. **Hooked**: the name lies strictly below a configured NTM domain, class IN, type A or
//!    AAAA. All clients asking the same name (either type) share one [`Outcome::Resolve`].
//!    On `Ok(virtual_addrs)` each gets an A (virtual v4) or AAAA (virtual v6) record with
//!    `answer_ttl`, its own id, its question echoed as asked (case kept, for clients that
//!    randomise it), RD copied, RA set. On [`ResolveError::NotNtm`] each query goes
//!    upstream as ordinary DNS (rule 3). On `Refused`, `Timeout` or `Overloaded`: SERVFAIL.
//!    Should the driver never report back, the stub gives up after [`HOOK_BACKSTOP`] with
//!    SERVFAIL (the node's own `resolve_timeout`, 10 s by default, normally fires first)
//!    and ignores the late token.
//!
//!    A name the DC offered for its gateway to ordinary hosts
//!    ([`DnsStub::set_gateway_names`]) is hooked the same way for class IN, type A or
//!    AAAA, and answered with the synthetic address the DC gave it (AAAA: NODATA, the
//!    gateway is IPv4 only). Its other types are forwarded (rule 3): it is an ordinary
//!    name.
//! 2. **NODATA**: any other type or class for such a name (MX, TXT, HTTPS, SRV, ANY, ...)
//!    is answered NOERROR with no records. It is not sent upstream: the public answer
//!    could carry a real address (HTTPS `ipv4hint`, a CNAME, an MX host) and lead the
//!    application around the tunnel.
//! 3. **Forwarded**: everything else, including the NTM domain apexes themselves (a
//!    configured domain is an ordinary DNS zone that holds NTM zones; it is not a node, and
//!    its NS/SOA/MX must keep working), names that are not valid node names (a `*` or
//!    space in a label, the root), and other classes. The query goes to the first upstream
//!    exactly as the client sent it, except for its id, which is replaced by a fresh random
//!    one that no other forwarded query in flight uses. The id is the two bytes at offset 0
//!    and is rewritten in place rather than by re-encoding, because simple-dns 0.11 drops
//!    the EDNS DO bit when it re-encodes an OPT record (and this also keeps cookies and
//!    padding intact). A reply is relayed only if it comes from an upstream this query was
//!    sent to, carries its id, is a QUERY response, and has exactly the question asked
//!    (name compared case-insensitively, type, class). Anything else is dropped and
//!    counted. The relayed reply is the upstream's bytes with the client's id put back.
//!    To check it, simple-dns decodes the reply's header and question only (the record
//!    counts are masked out of a copy): records are the client's to parse, and a strict
//!    decoder must not drop a valid answer whose record types it does not know well.
//! 4. **Timeouts**: an upstream query unanswered after `upstream_timeout` is sent once
//!    more, with the same id, to the next upstream (the same one if there is only one); a
//!    late reply from the first is still taken. A second timeout answers SERVFAIL.
//!
//! Errors and caps:
//!
//! - Shorter than a DNS header: dropped (`malformed`). QR set (a response on the client
//!   socket): dropped (`ignored`); never answered, so two stubs cannot ping-pong.
//! - Opcode other than QUERY: NOTIMP. A question whose type or class simple-dns 0.11 does
//!   not know (TLSA, SSHFP, ...: it refuses to decode them): NOTIMP (`not_implemented`).
//! - Any other decoding failure, a question count other than one, answer or authority
//!   records, a query longer than [`QUERY_MAX`]: FORMERR with the header's id (`malformed`).
//! - At most `max_pending` client queries in flight (hooked and forwarded together). One
//!   more is answered **SERVFAIL** (`over_limit`): the stub is temporarily out of capacity,
//!   which is what SERVFAIL means (RFC 1035); REFUSED would say "never ask me" and some
//!   resolvers stop using the server. A retransmission of a query already in flight (same
//!   client, id and question) is absorbed and costs nothing.
//! - Answers fit the client's size: 512 bytes without EDNS, else its advertised payload
//!   (at least 512). A larger answer (our own, or an upstream's relayed) is replaced by
//!   its header and question with TC set. Our own answers carry an OPT record (payload
//!   1232, version 0) when the query had one. EDNS versions above 0 are answered as version
//!   0 (no BADVERS: simple-dns 0.11 cannot encode the extended rcode).
//! - No input panics; numbers of bad inputs are in [`StubStats`].
//!
//! Driver notes: the upstream resolvers must not be the box's resolver that points back at
//! this stub (a loop, cut only by `max_pending`); `from` for upstream replies must be the
//! address as configured (an IPv4 server seen through a dual-stack socket as
//! `::ffff:a.b.c.d` would not match). There is no TCP listener: a client that gets TC and
//! retries over TCP needs one in front.

use crate::message::{self, Counts, EDNS_PAYLOAD};
use crate::queries::{Queries, Retry, Servers};
use ntm_proto::engine::node::ResolveError;
use ntm_proto::engine::Rng;
use ntm_proto::time::{Duration, Instant};
use ntm_proto::wire::{Fqdn, VirtualAddrs};
use simple_dns::rdata::{RData, A, AAAA, OPT};
use simple_dns::{
    header_buffer, Name, Packet, PacketFlag, Question, ResourceRecord, SimpleDnsError, CLASS, OPCODE, QCLASS, QTYPE,
    RCODE, TYPE,
};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

/// ANCOUNT, NSCOUNT and ARCOUNT, the last three header fields.
const RECORD_COUNTS: Range<usize> = 6..12;
/// Largest answer for a client without EDNS (RFC 1035, 4.2.1).
const PLAIN_UDP_MAX: usize = 512;
/// Longest query accepted: a question is at most 259 bytes and EDNS options (cookie,
/// padding) a few hundred; the bound caps what `max_pending` stored queries cost.
pub const QUERY_MAX: usize = 4096;
/// How long a hooked query waits for [`DnsStub::resolved`] before it is answered SERVFAIL.
pub const HOOK_BACKSTOP: Duration = Duration::from_secs(30);
/// Sends of a forwarded query in all: the first, and one retry on the next upstream.
const UPSTREAM_TRIES: u32 = 2;

/// How the stub behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StubConfig {
    /// Domains below which names are NTMobile nodes (the apexes themselves are ordinary
    /// DNS).
    pub ntm_domains: Vec<Fqdn>,
    /// Resolvers for ordinary names, with port; the first is asked first.
    pub upstream: Vec<SocketAddr>,
    /// Client queries in flight at once (hooked and forwarded).
    pub max_pending: usize,
    /// Wait for an upstream reply before trying the next upstream (and then giving up).
    pub upstream_timeout: Duration,
    /// TTL of the virtual-address records, in seconds.
    pub answer_ttl: u32,
    /// Look-ups of new node names (each one a negotiation at the DC) one client address
    /// may start per second, on average, and at once: a token bucket per client.
    pub lookups_per_sec: u32,
    /// The bucket's size: look-ups a client may start at once.
    pub lookup_burst: u32,
}

impl StubConfig {
    /// Where and how often forwarded queries go.
    fn servers(&self) -> Servers<'_> {
        Servers { list: &self.upstream, timeout: self.upstream_timeout, tries: UPSTREAM_TRIES }
    }
}

impl Default for StubConfig {
    /// No domains, no upstreams, 256 queries, 2 s per upstream try, a 30 s TTL, 20 new
    /// node names a second per client with bursts of 64.
    fn default() -> Self {
        StubConfig {
            ntm_domains: Vec::new(),
            upstream: Vec::new(),
            max_pending: 256,
            upstream_timeout: Duration::from_secs(2),
            answer_ttl: 30,
            lookups_per_sec: 20,
            lookup_burst: 64,
        }
    }
}

/// What a client query asks of the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Resolve `name` through the node (`Node::resolve`) and report the result with
    /// [`DnsStub::resolved`] under `token`.
    Resolve {
        /// Names this resolve for [`DnsStub::resolved`].
        token: u64,
        /// The node's name, canonical.
        name: Fqdn,
    },
    /// Nothing for the driver beyond draining [`DnsStub::poll_transmit`].
    Nothing,
}

/// Which socket a datagram leaves by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// The client-facing socket (an answer).
    Client,
    /// The upstream socket (a forwarded query).
    Upstream,
}

/// What the stub did and what it refused, for status output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StubStats {
    /// Client queries hooked (each joined the resolve of its name).
    pub hooked: u64,
    /// Client queries sent upstream (first sends; retries are not counted).
    pub forwarded: u64,
    /// NOERROR answers made by the stub itself: virtual addresses and NODATA.
    pub answered: u64,
    /// Of `answered`, those that carried an NTM virtual address (an A or AAAA record).
    pub virtual_answers: u64,
    /// Upstream replies relayed to clients.
    pub relayed: u64,
    /// SERVFAIL answers, for any reason (the `over_limit` ones included).
    pub servfail: u64,
    /// Datagrams that did not decode, or queries that were not well-formed standard
    /// queries (answered FORMERR if their header decoded, else dropped).
    pub malformed: u64,
    /// Queries answered NOTIMP: another opcode, or a type or class simple-dns cannot
    /// decode.
    pub not_implemented: u64,
    /// Queries refused (SERVFAIL) because `max_pending` were in flight.
    pub over_limit: u64,
    /// Queries for new node names refused (SERVFAIL) because their client used up its
    /// look-up budget (`lookups_per_sec`).
    pub rate_limited: u64,
    /// Upstream tries that went unanswered.
    pub upstream_timeouts: u64,
    /// Datagrams dropped: upstream replies from the wrong source, with an unknown id or
    /// another question, or not responses; responses on the client socket; unknown tokens.
    pub ignored: u64,
}

/// A client's query in flight: everything needed to answer it or send it upstream.
#[derive(Clone, Debug)]
struct ClientQuery {
    client: SocketAddr,
    /// The client's id.
    id: u16,
    rd: bool,
    cd: bool,
    /// The question as asked (case kept).
    question: Question<'static>,
    /// The client's EDNS payload size, if it sent an OPT record.
    edns: Option<u16>,
    /// The query as received. It moves to the upstream table when it goes upstream, and
    /// its id field is rewritten there.
    bytes: Vec<u8>,
}

impl ClientQuery {
    /// The largest answer this client takes over UDP.
    fn limit(&self) -> usize {
        self.edns.map_or(PLAIN_UDP_MAX, |size| usize::from(size).max(PLAIN_UDP_MAX))
    }

    /// True for a retransmission of `self`.
    fn same(&self, other: &ClientQuery) -> bool {
        self.client == other.client && self.id == other.id && same_question(&self.question, &other.question)
    }
}

/// A hooked name waiting for the node.
#[derive(Debug)]
struct Hook {
    name: Fqdn,
    waiters: Vec<ClientQuery>,
    /// The backstop: SERVFAIL if the node has not answered by then.
    deadline: Instant,
}

/// The header fields the stub reads before (or without) decoding the whole message.
#[derive(Clone, Copy, Debug)]
struct RawHeader {
    id: u16,
    opcode: OPCODE,
    response: bool,
    rd: bool,
}

impl RawHeader {
    fn read(bytes: &[u8]) -> Option<RawHeader> {
        // header_buffer's readers index the buffer: only call them on a whole header.
        if bytes.len() < message::HEADER_LEN {
            return None;
        }
        Some(RawHeader {
            id: header_buffer::id(bytes).ok()?,
            opcode: header_buffer::opcode(bytes).ok()?,
            response: header_buffer::has_flags(bytes, PacketFlag::RESPONSE).ok()?,
            rd: header_buffer::has_flags(bytes, PacketFlag::RECURSION_DESIRED).ok()?,
        })
    }
}

/// Why a client's datagram is not a standard query we can serve.
enum Bad {
    /// FORMERR.
    Format,
    /// NOTIMP.
    NotImplemented,
}

/// The DNS hook; see the module documentation.
pub struct DnsStub {
    cfg: StubConfig,
    next_token: u64,
    /// Hooked names by token.
    hooks: BTreeMap<u64, Hook>,
    /// The token of each hooked name.
    by_name: BTreeMap<Fqdn, u64>,
    /// Forwarded queries, by their upstream id.
    forwards: Queries<ClientQuery>,
    transmits: VecDeque<(Dest, SocketAddr, Vec<u8>)>,
    /// Look-up budgets by client address (at most [`CLIENTS_MAX`]), and of all clients
    /// together ([`TOTAL_SHARES`] clients' worth), so that many client addresses do not
    /// multiply the budget.
    buckets: Vec<(IpAddr, Bucket)>,
    total: Option<Bucket>,
    stats: StubStats,
    /// The DC's gateway names: every ordinary name, or these and the names below them.
    gateway_all: bool,
    gateway_names: Vec<Fqdn>,
}

/// Clients whose look-up budget is remembered; the one heard from longest ago makes room.
const CLIENTS_MAX: usize = 64;
/// The budget of all clients together, in single clients' budgets.
const TOTAL_SHARES: u64 = 4;

/// A look-up budget: tokens in thousandths, refilled with time.
#[derive(Debug)]
struct Bucket {
    milli_tokens: u64,
    at: Instant,
}

impl Bucket {
    /// Adds what the bucket earned since it was last looked at (`rate` tokens a second,
    /// in thousandths), up to `burst`.
    fn refill(&mut self, now: Instant, rate: u64, burst: u64) {
        let waited = u64::try_from(now.saturating_duration_since(self.at).as_millis()).unwrap_or(u64::MAX);
        self.milli_tokens = self.milli_tokens.saturating_add(waited.saturating_mul(rate)).min(burst);
        self.at = now;
    }
}

impl fmt::Debug for DnsStub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsStub")
            .field("cfg", &self.cfg)
            .field("hooks", &self.hooks.len())
            .field("forwards", &self.forwards.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl DnsStub {
    /// A stub with nothing in flight. Upstream ids are drawn from `rng`.
    pub fn new(cfg: StubConfig, rng: Rng) -> Self {
        DnsStub {
            cfg,
            next_token: 1,
            hooks: BTreeMap::new(),
            by_name: BTreeMap::new(),
            forwards: Queries::new(rng),
            transmits: VecDeque::new(),
            buckets: Vec::new(),
            total: None,
            stats: StubStats::default(),
            gateway_all: false,
            gateway_names: Vec::new(),
        }
    }

    /// The names the DC's gateway carries (a Gateway Offer): hooked like NTM names, and
    /// forwarded upstream when the DC refuses them as not NTMobile names.
    pub fn set_gateway_names(&mut self, all: bool, names: Vec<Fqdn>) {
        self.gateway_all = all;
        self.gateway_names = names;
    }

    /// A query from a client (the box's resolver or an application) arrived from `from`.
    /// Returns [`Outcome::Resolve`] when the driver must ask the node for a name.
    pub fn handle_query(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) -> Outcome {
        let Some(header) = RawHeader::read(bytes) else {
            bump(&mut self.stats.malformed);
            return Outcome::Nothing;
        };
        if header.response {
            bump(&mut self.stats.ignored);
            return Outcome::Nothing;
        }
        let query = match decode_query(from, &header, bytes) {
            Ok(query) => query,
            Err(Bad::Format) => {
                bump(&mut self.stats.malformed);
                self.reply_header_only(from, &header, RCODE::FormatError);
                return Outcome::Nothing;
            }
            Err(Bad::NotImplemented) => {
                bump(&mut self.stats.not_implemented);
                self.reply_header_only(from, &header, RCODE::NotImplemented);
                return Outcome::Nothing;
            }
        };

        let hookable = query.question.qclass == QCLASS::CLASS(CLASS::IN)
            && !query.question.unicast_response
            && matches!(query.question.qtype, QTYPE::TYPE(TYPE::A) | QTYPE::TYPE(TYPE::AAAA));
        let Some(name) = self.ntm_name(&query.question.qname) else {
            if let Some(name) = self.gateway_name(&query.question.qname).filter(|_| hookable) {
                return self.hook(now, name, query);
            }
            return self.start_forward(now, query);
        };
        if !hookable {
            // Rule 2: never upstream, never a real address.
            bump(&mut self.stats.answered);
            self.respond(&query, RCODE::NoError, None);
            return Outcome::Nothing;
        }
        self.hook(now, name, query)
    }

    /// The node's answer for the name hooked under `token` (`Resolved` gives `Ok`,
    /// `ResolveFailed` gives `Err`). An unknown or expired token is ignored.
    pub fn resolved(&mut self, now: Instant, token: u64, result: Result<VirtualAddrs, ResolveError>) {
        let Some(hook) = self.hooks.remove(&token) else {
            bump(&mut self.stats.ignored);
            return;
        };
        self.by_name.remove(&hook.name);
        for query in hook.waiters {
            match result {
                Ok(addrs) => self.answer_virtual(&query, addrs),
                // Spec 4.3 step 2: not an NTM node, so ordinary DNS.
                Err(ResolveError::NotNtm) => self.forward(now, query),
                Err(ResolveError::Refused(_) | ResolveError::Timeout | ResolveError::Overloaded) => {
                    self.servfail(&query);
                }
            }
        }
    }

    /// A datagram arrived on the upstream socket from `from`. Only the reply awaited by a
    /// forwarded query is relayed; anything else is dropped and counted.
    pub fn handle_upstream(&mut self, _now: Instant, from: SocketAddr, bytes: &[u8]) {
        let Some(header) = RawHeader::read(bytes) else {
            bump(&mut self.stats.malformed);
            return;
        };
        let Some(query) = self.forwards.awaited(header.id, from) else {
            bump(&mut self.stats.ignored);
            return;
        };
        if !header.response || header.opcode != OPCODE::StandardQuery {
            bump(&mut self.stats.ignored);
            return;
        }
        let rcode = match reply_question_matches(bytes, &query.question) {
            Some((true, rcode)) => rcode,
            Some((false, _)) => {
                bump(&mut self.stats.ignored);
                return;
            }
            None => {
                bump(&mut self.stats.malformed);
                return;
            }
        };
        let Some(query) = self.forwards.remove(header.id) else { return };
        bump(&mut self.stats.relayed);
        if bytes.len() > query.limit() {
            self.respond_truncated(&query, rcode);
            return;
        }
        let mut relay = bytes.to_vec();
        if message::set_id(&mut relay, query.id) {
            self.transmits.push_back((Dest::Client, query.client, relay));
        }
    }
    /// Puts the upstream resolvers in a new order (the agent puts those of the families it
    /// has an address of first, as a box moves between IPv4-only and IPv6-only networks): a
    /// query's first send goes to the first. Queries in flight keep the servers they went
    /// to, and a reply from any of those still counts.
    pub fn set_upstream(&mut self, upstream: Vec<SocketAddr>) {
        self.cfg.upstream = upstream;
    }

    /// The deadline from [`DnsStub::poll_timeout`] passed: upstream tries due are sent to
    /// the next upstream or answered SERVFAIL; hooked names past the backstop are answered
    /// SERVFAIL.
    pub fn handle_timeout(&mut self, now: Instant) {
        for id in self.forwards.due(now) {
            bump(&mut self.stats.upstream_timeouts);
            match self.forwards.retry(now, id, self.cfg.servers()) {
                Some(Retry::Sent(server, bytes)) => self.transmits.push_back((Dest::Upstream, server, bytes)),
                Some(Retry::Failed(query)) => self.servfail(&query),
                None => {}
            }
        }

        let expired: Vec<u64> = self.hooks.iter().filter(|(_, h)| h.deadline <= now).map(|(&t, _)| t).collect();
        for token in expired {
            if let Some(hook) = self.hooks.remove(&token) {
                self.by_name.remove(&hook.name);
                for query in &hook.waiters {
                    self.servfail(query);
                }
            }
        }
    }

    /// When to call [`DnsStub::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let hooks = self.hooks.values().map(|h| h.deadline).min();
        self.forwards.next_deadline().into_iter().chain(hooks).min()
    }

    /// The next datagram to send: (socket, destination, DNS message).
    pub fn poll_transmit(&mut self) -> Option<(Dest, SocketAddr, Vec<u8>)> {
        self.transmits.pop_front()
    }

    /// Client queries in flight (hooked and forwarded).
    pub fn pending(&self) -> usize {
        let waiting: usize = self.hooks.values().map(|h| h.waiters.len()).sum();
        waiting.saturating_add(self.forwards.len())
    }

    /// What the stub did and refused so far.
    pub fn stats(&self) -> &StubStats {
        &self.stats
    }

    /// The canonical name if `qname` lies strictly below an NTM domain (rules 1 and 2).
    fn ntm_name(&self, qname: &Name<'_>) -> Option<Fqdn> {
        let name = message::to_fqdn(qname.as_bytes())?;
        let domains = &self.cfg.ntm_domains;
        let below = domains.iter().any(|d| name.is_within(d)) && !domains.contains(&name);
        below.then_some(name)
    }

    /// The name if the DC's gateway carries it (rule 1).
    fn gateway_name(&self, qname: &Name<'_>) -> Option<Fqdn> {
        if !self.gateway_all && self.gateway_names.is_empty() {
            return None;
        }
        let name = message::to_fqdn(qname.as_bytes())?;
        let carried = self.gateway_all || self.gateway_names.iter().any(|d| name.is_within(d));
        carried.then_some(name)
    }

    /// Rule 1: joins or starts the resolve of `name`.
    fn hook(&mut self, now: Instant, name: Fqdn, query: ClientQuery) -> Outcome {
        let existing = self.by_name.get(&name).copied();
        if let Some(hook) = existing.and_then(|token| self.hooks.get(&token)) {
            if hook.waiters.iter().any(|w| w.same(&query)) {
                return Outcome::Nothing;
            }
        }
        if existing.is_none() && !self.take_lookup(now, query.client.ip()) {
            bump(&mut self.stats.rate_limited);
            self.servfail(&query);
            return Outcome::Nothing;
        }
        if !self.admit(&query) {
            return Outcome::Nothing;
        }
        bump(&mut self.stats.hooked);
        if let Some(hook) = existing.and_then(|token| self.hooks.get_mut(&token)) {
            hook.waiters.push(query);
            return Outcome::Nothing;
        }
        let token = self.next_token;
        self.next_token = self.next_token.wrapping_add(1);
        self.by_name.insert(name.clone(), token);
        self.hooks.insert(token, Hook { name: name.clone(), waiters: vec![query], deadline: now + HOOK_BACKSTOP });
        Outcome::Resolve { token, name }
    }

    /// Rule 3 for a new client query.
    fn start_forward(&mut self, now: Instant, query: ClientQuery) -> Outcome {
        if self.forwards.data().any(|q| q.same(&query)) {
            return Outcome::Nothing;
        }
        if self.admit(&query) {
            self.forward(now, query);
        }
        Outcome::Nothing
    }

    /// Takes one look-up from `client`'s budget and from the total; false if either has
    /// none left.
    fn take_lookup(&mut self, now: Instant, client: IpAddr) -> bool {
        let (rate, burst) = (u64::from(self.cfg.lookups_per_sec), u64::from(self.cfg.lookup_burst) * 1000);
        let i = match self.buckets.iter().position(|(c, _)| *c == client) {
            Some(i) => i,
            None => {
                if self.buckets.len() >= CLIENTS_MAX {
                    let oldest = self.buckets.iter().enumerate().min_by_key(|(_, (_, b))| b.at).map(|(i, _)| i);
                    if let Some(i) = oldest {
                        self.buckets.swap_remove(i);
                    }
                }
                self.buckets.push((client, Bucket { milli_tokens: burst, at: now }));
                self.buckets.len() - 1
            }
        };
        let total_burst = burst * TOTAL_SHARES;
        let total = self.total.get_or_insert(Bucket { milli_tokens: total_burst, at: now });
        total.refill(now, rate * TOTAL_SHARES, total_burst);
        let Some((_, b)) = self.buckets.get_mut(i) else { return false };
        b.refill(now, rate, burst);
        if b.milli_tokens < 1000 || total.milli_tokens < 1000 {
            return false;
        }
        b.milli_tokens -= 1000;
        total.milli_tokens -= 1000;
        true
    }

    /// The `max_pending` cap: false (and SERVFAIL sent) if it is reached.
    fn admit(&mut self, query: &ClientQuery) -> bool {
        if self.pending() < self.cfg.max_pending {
            return true;
        }
        bump(&mut self.stats.over_limit);
        self.servfail(query);
        false
    }

    /// Sends `query` to the first upstream under a fresh id; SERVFAIL if there is no
    /// upstream or no free id.
    fn forward(&mut self, now: Instant, mut query: ClientQuery) {
        let bytes = std::mem::take(&mut query.bytes);
        match self.forwards.send(now, self.cfg.servers(), bytes, query) {
            Ok((server, bytes)) => {
                bump(&mut self.stats.forwarded);
                self.transmits.push_back((Dest::Upstream, server, bytes));
            }
            Err(query) => self.servfail(&query),
        }
    }

    /// Rule 1: the virtual address of the type asked for.
    fn answer_virtual(&mut self, query: &ClientQuery, addrs: VirtualAddrs) {
        let rdata = match query.question.qtype {
            QTYPE::TYPE(TYPE::A) if !addrs.v4.is_unspecified() => Some(RData::A(A { address: u32::from(addrs.v4) })),
            QTYPE::TYPE(TYPE::AAAA) if !addrs.v6.is_unspecified() => {
                Some(RData::AAAA(AAAA { address: u128::from(addrs.v6) }))
            }
            // No address of that family: NODATA.
            _ => None,
        };
        bump(&mut self.stats.answered);
        if rdata.is_some() {
            bump(&mut self.stats.virtual_answers);
        }
        self.respond(query, RCODE::NoError, rdata);
    }

    fn servfail(&mut self, query: &ClientQuery) {
        bump(&mut self.stats.servfail);
        self.respond(query, RCODE::ServerFailure, None);
    }

    /// Sends our own answer to `query`: its question, `answer` (owned by the question's
    /// name) if any, OPT if the client used EDNS; TC instead of the answer if it does not
    /// fit.
    fn respond(&mut self, query: &ClientQuery, rcode: RCODE, answer: Option<RData<'static>>) {
        let mut msg = reply_to(query, rcode);
        if let Some(rdata) = answer {
            msg.answers.push(ResourceRecord::new(query.question.qname.clone(), CLASS::IN, self.cfg.answer_ttl, rdata));
        }
        match msg.build_bytes_vec_compressed() {
            Ok(bytes) if bytes.len() <= query.limit() => self.transmits.push_back((Dest::Client, query.client, bytes)),
            _ => self.respond_truncated(query, rcode),
        }
    }

    /// The header and question of an answer that does not fit, with TC set.
    fn respond_truncated(&mut self, query: &ClientQuery, rcode: RCODE) {
        let mut msg = reply_to(query, rcode);
        msg.set_flags(PacketFlag::TRUNCATION);
        // A question is at most 259 bytes and the OPT record 11: this fits in 512, and a
        // message that does not encode is dropped (the client retries).
        if let Ok(bytes) = msg.build_bytes_vec_compressed() {
            self.transmits.push_back((Dest::Client, query.client, bytes));
        }
    }

    /// FORMERR or NOTIMP to a query whose question we could not take: header only.
    fn reply_header_only(&mut self, to: SocketAddr, header: &RawHeader, rcode: RCODE) {
        let mut msg = Packet::new_reply(header.id);
        *msg.opcode_mut() = header.opcode;
        *msg.rcode_mut() = rcode;
        if header.rd {
            msg.set_flags(PacketFlag::RECURSION_DESIRED);
        }
        msg.set_flags(PacketFlag::RECURSION_AVAILABLE);
        if let Ok(bytes) = msg.build_bytes_vec_compressed() {
            self.transmits.push_back((Dest::Client, to, bytes));
        }
    }
}

/// A response to `query` with its id, question and flags, no records.
fn reply_to(query: &ClientQuery, rcode: RCODE) -> Packet<'static> {
    let mut msg = Packet::new_reply(query.id);
    *msg.rcode_mut() = rcode;
    msg.set_flags(PacketFlag::RECURSION_AVAILABLE);
    if query.rd {
        msg.set_flags(PacketFlag::RECURSION_DESIRED);
    }
    if query.cd {
        msg.set_flags(PacketFlag::CHECKING_DISABLED);
    }
    msg.questions.push(query.question.clone());
    if query.edns.is_some() {
        *msg.opt_mut() = Some(OPT { opt_codes: Vec::new(), udp_packet_size: EDNS_PAYLOAD, version: 0 });
    }
    msg
}

/// Decodes a client's datagram (not a response) as a standard query.
fn decode_query(from: SocketAddr, header: &RawHeader, bytes: &[u8]) -> Result<ClientQuery, Bad> {
    if header.opcode != OPCODE::StandardQuery {
        return Err(Bad::NotImplemented);
    }
    if bytes.len() > QUERY_MAX {
        return Err(Bad::Format);
    }
    // One question, no answers or authority (RFC 9619); the additional section may hold
    // OPT, a cookie's, or TSIG. Checking the counts against the length first also keeps the
    // decoder from reserving room for 65535 records of a 20-byte datagram.
    let counts = Counts::read(bytes).ok_or(Bad::Format)?;
    if counts.questions != 1 || counts.answers != 0 || counts.authorities != 0 || !counts.fit(bytes.len()) {
        return Err(Bad::Format);
    }
    let msg = Packet::parse(bytes).map_err(|e| match e {
        SimpleDnsError::InvalidQType(_) | SimpleDnsError::InvalidQClass(_) | SimpleDnsError::InvalidClass(_) => {
            Bad::NotImplemented
        }
        _ => Bad::Format,
    })?;
    let question = msg.questions.first().ok_or(Bad::Format)?.clone().into_owned();
    Ok(ClientQuery {
        client: from,
        id: header.id,
        rd: msg.has_flags(PacketFlag::RECURSION_DESIRED),
        cd: msg.has_flags(PacketFlag::CHECKING_DISABLED),
        question,
        edns: msg.opt().map(|opt| opt.udp_packet_size),
        bytes: bytes.to_vec(),
    })
}

/// Decodes an upstream reply's header and single question and compares the question with
/// `asked`: `(matches, rcode)`, or `None` if they do not decode. The record counts are
/// zeroed in a copy, so simple-dns stops after the question (see rule 3).
fn reply_question_matches(bytes: &[u8], asked: &Question<'_>) -> Option<(bool, RCODE)> {
    if Counts::read(bytes).is_none_or(|counts| counts.questions != 1) {
        return Some((false, RCODE::NoError));
    }
    let mut head = bytes.to_vec();
    head.get_mut(RECORD_COUNTS)?.fill(0);
    let msg = Packet::parse(&head).ok()?;
    let question = msg.questions.first()?;
    Some((same_question(question, asked), msg.rcode()))
}

/// Same type, class and name (ASCII case-insensitive: resolvers may randomise case).
fn same_question(a: &Question<'_>, b: &Question<'_>) -> bool {
    a.qtype == b.qtype
        && a.qclass == b.qclass
        && a.unicast_response == b.unicast_response
        && message::same_name(a.qname.get_labels(), b.qname.get_labels())
}

fn bump(counter: &mut u64) {
    *counter = counter.saturating_add(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::set_id;
    use ntm_proto::wire::refusal::Reason;
    use rand_chacha::rand_core::{CryptoRng, RngCore, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const C1: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(192, 168, 1, 10)), 40000);
    const C2: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(192, 168, 1, 11)), 40001);
    const U1: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(192, 0, 2, 53)), 53);
    const U2: SocketAddr = SocketAddr::new(std::net::IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x53)), 53);
    const T0: Instant = Instant::from_millis(1_000_000);

    fn at(ms: u64) -> Instant {
        Instant::from_millis(T0.as_millis() + ms)
    }

    fn vaddrs() -> VirtualAddrs {
        VirtualAddrs { v4: Ipv4Addr::new(10, 64, 0, 7), v6: "fd00:1::7".parse().unwrap() }
    }

    fn cfg() -> StubConfig {
        StubConfig {
            ntm_domains: vec![Fqdn::new("ntm.test").unwrap()],
            upstream: vec![U1, U2],
            ..StubConfig::default()
        }
    }

    fn stub(cfg: StubConfig) -> DnsStub {
        DnsStub::new(cfg, Box::new(ChaCha8Rng::seed_from_u64(7)))
    }

    fn query_msg(id: u16, name: &str, qtype: TYPE, edns: bool) -> Vec<u8> {
        let mut msg = Packet::new_query(id);
        msg.set_flags(PacketFlag::RECURSION_DESIRED);
        msg.questions.push(Question::new(Name::new_unchecked(name), qtype.into(), CLASS::IN.into(), false));
        if edns {
            *msg.opt_mut() = Some(OPT { opt_codes: Vec::new(), udp_packet_size: 1232, version: 0 });
        }
        msg.build_bytes_vec().unwrap()
    }

    fn query(id: u16, name: &str, qtype: TYPE) -> Vec<u8> {
        query_msg(id, name, qtype, false)
    }

    /// An upstream's reply to `query` (as it went upstream) with the given answers.
    fn upstream_reply(query: &[u8], answers: &[(&str, Ipv4Addr)]) -> Vec<u8> {
        let q = Packet::parse(query).unwrap();
        let mut r = Packet::new_reply(q.id());
        r.set_flags(PacketFlag::RECURSION_DESIRED | PacketFlag::RECURSION_AVAILABLE);
        r.questions.push(q.questions[0].clone());
        for (name, ip) in answers {
            r.answers.push(ResourceRecord::new(
                Name::new_unchecked(name),
                CLASS::IN,
                300,
                RData::A(A { address: u32::from(*ip) }),
            ));
        }
        r.build_bytes_vec().unwrap()
    }

    fn drain(s: &mut DnsStub) -> Vec<(Dest, SocketAddr, Vec<u8>)> {
        std::iter::from_fn(|| s.poll_transmit()).collect()
    }

    fn one(s: &mut DnsStub, dest: Dest, to: SocketAddr) -> Vec<u8> {
        let mut out = drain(s);
        assert_eq!(out.len(), 1, "{out:?}");
        let (d, addr, bytes) = out.remove(0);
        assert_eq!((d, addr), (dest, to));
        bytes
    }

    fn resolve(outcome: Outcome, name: &str) -> u64 {
        match outcome {
            Outcome::Resolve { token, name: n } => {
                assert_eq!(n.as_str(), name);
                token
            }
            Outcome::Nothing => panic!("expected a Resolve"),
        }
    }

    fn id_of(bytes: &[u8]) -> u16 {
        header_buffer::id(bytes).unwrap()
    }

    #[test]
    fn hooks_a_and_answers_the_virtual_v4() {
        let mut s = stub(cfg());
        let token = resolve(s.handle_query(T0, C1, &query(0x1234, "Node1.A.ntm.test", TYPE::A)), "node1.a.ntm.test");
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.pending(), 1);
        assert_eq!(s.poll_timeout(), Some(T0 + HOOK_BACKSTOP));
        s.resolved(at(300), token, Ok(vaddrs()));
        let bytes = one(&mut s, Dest::Client, C1);
        let r = Packet::parse(&bytes).unwrap();
        assert_eq!(r.id(), 0x1234);
        assert!(r.has_flags(PacketFlag::RESPONSE | PacketFlag::RECURSION_DESIRED | PacketFlag::RECURSION_AVAILABLE));
        assert!(!r.has_flags(PacketFlag::TRUNCATION));
        assert_eq!(r.rcode(), RCODE::NoError);
        assert_eq!(r.questions.len(), 1);
        // The question is echoed as asked, case included.
        assert_eq!(r.questions[0].qname.to_string(), "Node1.A.ntm.test");
        assert_eq!(r.questions[0].qtype, QTYPE::TYPE(TYPE::A));
        assert_eq!(r.answers.len(), 1);
        assert_eq!(r.answers[0].ttl, 30);
        assert_eq!(r.answers[0].class, CLASS::IN);
        assert_eq!(r.answers[0].name.to_string(), "Node1.A.ntm.test");
        assert_eq!(r.answers[0].rdata, RData::A(A { address: u32::from(Ipv4Addr::new(10, 64, 0, 7)) }));
        assert!(r.opt().is_none());
        assert_eq!(s.pending(), 0);
        assert_eq!(s.poll_timeout(), None);
        assert_eq!((s.stats().hooked, s.stats().answered, s.stats().forwarded), (1, 1, 0));
    }

    #[test]
    fn gateway_names_are_hooked_once_the_dc_offers_them() {
        let mut s = stub(cfg());
        // Before the offer an ordinary name goes upstream.
        assert!(matches!(s.handle_query(T0, C1, &query(1, "www.plain.example", TYPE::A)), Outcome::Nothing));
        assert_eq!(drain(&mut s).first().map(|(d, to, _)| (*d, *to)), Some((Dest::Upstream, U1)));
        s.set_gateway_names(false, vec![Fqdn::new("plain.example").unwrap()]);
        let token = resolve(s.handle_query(T0, C1, &query(2, "www.plain.example", TYPE::A)), "www.plain.example");
        s.resolved(T0, token, Ok(VirtualAddrs { v6: std::net::Ipv6Addr::UNSPECIFIED, ..vaddrs() }));
        let answer = one(&mut s, Dest::Client, C1);
        let r = Packet::parse(&answer).unwrap();
        assert_eq!(r.answers[0].rdata, RData::A(A { address: u32::from(vaddrs().v4) }), "the synthetic address");
        // Other types of an ordinary name, and names the offer does not name: upstream.
        assert!(matches!(s.handle_query(T0, C1, &query(3, "www.plain.example", TYPE::MX)), Outcome::Nothing));
        assert_eq!(drain(&mut s).first().map(|(d, _, _)| *d), Some(Dest::Upstream));
        assert!(matches!(s.handle_query(T0, C1, &query(4, "plain.example.org", TYPE::A)), Outcome::Nothing));
        assert_eq!(drain(&mut s).first().map(|(d, _, _)| *d), Some(Dest::Upstream));
        // The DC refuses it as not NTMobile (outside its prefixes): ordinary DNS after all.
        let token = resolve(s.handle_query(T0, C1, &query(5, "other.plain.example", TYPE::A)), "other.plain.example");
        s.resolved(T0, token, Err(ResolveError::NotNtm));
        assert_eq!(drain(&mut s).first().map(|(d, _, _)| *d), Some(Dest::Upstream));
        // Every name: NTM names stay NTM names.
        s.set_gateway_names(true, Vec::new());
        resolve(s.handle_query(T0, C1, &query(6, "anything.example", TYPE::A)), "anything.example");
        resolve(s.handle_query(T0, C1, &query(7, "node.ntm.test", TYPE::A)), "node.ntm.test");
        s.handle_query(T0, C1, &query(8, "node.ntm.test", TYPE::MX));
        assert_eq!(drain(&mut s).first().map(|(d, _, _)| *d), Some(Dest::Client), "NODATA for an NTM name");
    }

    #[test]
    fn hooks_aaaa_with_edns_and_answers_the_virtual_v6() {
        let mut s = stub(StubConfig { answer_ttl: 5, ..cfg() });
        let q = query_msg(7, "node2.ntm.test.", TYPE::AAAA, true);
        let token = resolve(s.handle_query(T0, C2, &q), "node2.ntm.test");
        s.resolved(T0, token, Ok(vaddrs()));
        let r = one(&mut s, Dest::Client, C2);
        let r = Packet::parse(&r).unwrap();
        assert_eq!(r.id(), 7);
        assert_eq!(r.answers.len(), 1);
        assert_eq!(r.answers[0].ttl, 5);
        assert_eq!(r.answers[0].rdata, RData::AAAA(AAAA { address: u128::from(vaddrs().v6) }));
        assert_eq!(r.opt().map(|o| o.udp_packet_size), Some(EDNS_PAYLOAD));
    }

    #[test]
    fn counts_answers_with_a_virtual_address_apart_from_nodata() {
        let mut s = stub(cfg());
        // A virtual IPv4 address: counted.
        let token = resolve(s.handle_query(T0, C1, &query(1, "node.ntm.test", TYPE::A)), "node.ntm.test");
        s.resolved(T0, token, Ok(vaddrs()));
        one(&mut s, Dest::Client, C1);
        // The peer has no IPv6 virtual address: NODATA, answered but not counted.
        let token = resolve(s.handle_query(T0, C1, &query(2, "node.ntm.test", TYPE::AAAA)), "node.ntm.test");
        s.resolved(T0, token, Ok(VirtualAddrs { v6: std::net::Ipv6Addr::UNSPECIFIED, ..vaddrs() }));
        assert!(Packet::parse(&one(&mut s, Dest::Client, C1)).unwrap().answers.is_empty());
        // Another type for an NTM name: NODATA, not counted.
        s.handle_query(T0, C1, &query(3, "node.ntm.test", TYPE::MX));
        one(&mut s, Dest::Client, C1);
        // A refused resolve: SERVFAIL, not counted.
        let token = resolve(s.handle_query(T0, C1, &query(4, "other.ntm.test", TYPE::A)), "other.ntm.test");
        s.resolved(T0, token, Err(ResolveError::Timeout));
        one(&mut s, Dest::Client, C1);
        assert_eq!((s.stats().answered, s.stats().virtual_answers, s.stats().servfail), (3, 1, 1));
    }

    #[test]
    fn clients_asking_the_same_name_share_one_resolve() {
        let mut s = stub(cfg());
        let token = resolve(s.handle_query(T0, C1, &query(1, "node.ntm.test", TYPE::A)), "node.ntm.test");
        // Another client, the other type, other case: the same resolve.
        assert_eq!(s.handle_query(at(10), C2, &query(2, "NODE.ntm.test", TYPE::AAAA)), Outcome::Nothing);
        // A retransmission is absorbed.
        assert_eq!(s.handle_query(at(20), C1, &query(1, "node.ntm.test", TYPE::A)), Outcome::Nothing);
        assert_eq!(s.pending(), 2);
        assert_eq!(s.stats().hooked, 2);
        s.resolved(at(50), token, Ok(vaddrs()));
        let out = drain(&mut s);
        assert_eq!(out.len(), 2);
        let (d1, a1, r1) = &out[0];
        let (d2, a2, r2) = &out[1];
        assert_eq!((*d1, *a1, *d2, *a2), (Dest::Client, C1, Dest::Client, C2));
        let (r1, r2) = (Packet::parse(r1).unwrap(), Packet::parse(r2).unwrap());
        assert_eq!((r1.id(), r2.id()), (1, 2));
        assert_eq!(r1.answers[0].rdata, RData::A(A { address: u32::from(vaddrs().v4) }));
        assert_eq!(r2.answers[0].rdata, RData::AAAA(AAAA { address: u128::from(vaddrs().v6) }));
        // The name can be hooked again afterwards.
        assert!(matches!(s.handle_query(at(60), C1, &query(3, "node.ntm.test", TYPE::A)), Outcome::Resolve { .. }));
    }

    #[test]
    fn not_ntm_goes_upstream_with_a_new_id_and_the_reply_comes_back_with_the_original() {
        let mut s = stub(cfg());
        let q = query(0xbeef, "dc.zone.ntm.test", TYPE::A);
        let token = resolve(s.handle_query(T0, C1, &q), "dc.zone.ntm.test");
        s.resolved(at(100), token, Err(ResolveError::NotNtm));
        let up = one(&mut s, Dest::Upstream, U1);
        assert_ne!(id_of(&up), 0xbeef);
        // Only the id differs.
        assert_eq!(up[2..], q[2..]);
        assert_eq!(s.stats().forwarded, 1);
        assert_eq!(s.poll_timeout(), Some(at(2100)));
        let reply = upstream_reply(&up, &[("dc.zone.ntm.test", Ipv4Addr::new(192, 0, 2, 7))]);
        s.handle_upstream(at(150), U1, &reply);
        let back = one(&mut s, Dest::Client, C1);
        assert_eq!(id_of(&back), 0xbeef);
        assert_eq!(back[2..], reply[2..]);
        assert_eq!(s.pending(), 0);
        assert_eq!(s.stats().relayed, 1);
    }

    #[test]
    fn a_new_order_of_upstreams_sends_the_next_query_to_the_new_first() {
        let mut s = stub(cfg());
        s.handle_query(T0, C1, &query(1, "www.example.com", TYPE::A));
        let first = one(&mut s, Dest::Upstream, U1);
        s.set_upstream(vec![U2, U1]);
        s.handle_query(T0, C1, &query(2, "www.example.org", TYPE::A));
        one(&mut s, Dest::Upstream, U2);
        // The query already in flight is still answered by the server it went to.
        let reply = upstream_reply(&first, &[("www.example.com", Ipv4Addr::new(192, 0, 2, 8))]);
        s.handle_upstream(at(10), U1, &reply);
        assert_eq!(id_of(&one(&mut s, Dest::Client, C1)), 1);
    }

    #[test]
    fn ordinary_names_and_the_apex_are_forwarded_at_once() {
        let mut s = stub(cfg());
        let q = query_msg(0x0102, "www.Example.com", TYPE::HTTPS, true);
        assert_eq!(s.handle_query(T0, C1, &q), Outcome::Nothing);
        let up = one(&mut s, Dest::Upstream, U1);
        assert_ne!(id_of(&up), 0x0102);
        assert_eq!(up[2..], q[2..]);
        // The NTM domain's apex is ordinary DNS, whatever the type.
        for (id, t) in [(3, TYPE::A), (4, TYPE::NS), (5, TYPE::MX)] {
            assert_eq!(s.handle_query(T0, C1, &query(id, "ntm.test", t)), Outcome::Nothing);
            one(&mut s, Dest::Upstream, U1);
        }
        // So is a name below the domain that cannot be a node.
        assert_eq!(s.handle_query(T0, C1, &query(6, "*.ntm.test", TYPE::A)), Outcome::Nothing);
        one(&mut s, Dest::Upstream, U1);
        assert_eq!(s.stats().forwarded, 5);
        assert_eq!(s.stats().hooked, 0);
    }

    #[test]
    fn upstream_replies_that_do_not_match_are_dropped() {
        let mut s = stub(cfg());
        s.handle_query(T0, C1, &query(0x0a0b, "www.example.com", TYPE::A));
        let up = one(&mut s, Dest::Upstream, U1);
        let good = upstream_reply(&up, &[("www.example.com", Ipv4Addr::new(198, 51, 100, 1))]);

        // From a server it was not sent to.
        s.handle_upstream(T0, U2, &good);
        // From the right server but another port.
        s.handle_upstream(T0, SocketAddr::new(U1.ip(), 5353), &good);
        // Another id.
        let mut wrong_id = good.clone();
        set_id(&mut wrong_id, id_of(&up).wrapping_add(1));
        s.handle_upstream(T0, U1, &wrong_id);
        // Another question (name, then type).
        let other = upstream_reply(&query(id_of(&up), "www.example.org", TYPE::A), &[]);
        s.handle_upstream(T0, U1, &other);
        let other = upstream_reply(&query(id_of(&up), "www.example.com", TYPE::AAAA), &[]);
        s.handle_upstream(T0, U1, &other);
        // Not a response at all.
        s.handle_upstream(T0, U1, &up);
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.stats().ignored, 6);
        assert_eq!(s.pending(), 1);

        // The question may come back in another case.
        let mut upper = Packet::parse(&good).unwrap();
        upper.questions[0].qname = Name::new_unchecked("WWW.EXAMPLE.COM");
        let upper = upper.build_bytes_vec().unwrap();
        s.handle_upstream(T0, U1, &upper);
        let back = one(&mut s, Dest::Client, C1);
        assert_eq!(id_of(&back), 0x0a0b);
        // A duplicate of the reply is now unknown.
        s.handle_upstream(T0, U1, &good);
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.stats().ignored, 7);
    }

    #[test]
    fn an_upstream_timeout_retries_on_the_next_upstream_then_servfails() {
        let mut s = stub(cfg());
        s.handle_query(T0, C1, &query(9, "slow.example.com", TYPE::A));
        let first = one(&mut s, Dest::Upstream, U1);
        assert_eq!(s.poll_timeout(), Some(at(2000)));
        s.handle_timeout(at(1999));
        assert!(drain(&mut s).is_empty());
        s.handle_timeout(at(2000));
        let second = one(&mut s, Dest::Upstream, U2);
        assert_eq!(second, first);
        assert_eq!(s.poll_timeout(), Some(at(4000)));
        s.handle_timeout(at(4000));
        let b = one(&mut s, Dest::Client, C1);
        let r = Packet::parse(&b).unwrap();
        assert_eq!((r.id(), r.rcode()), (9, RCODE::ServerFailure));
        assert_eq!(r.questions[0].qname.to_string(), "slow.example.com");
        assert_eq!(s.stats().upstream_timeouts, 2);
        assert_eq!(s.stats().servfail, 1);
        assert_eq!(s.pending(), 0);
        assert_eq!(s.poll_timeout(), None);
        // The SERVFAIL ended it: a late reply is unknown.
        s.handle_upstream(at(4100), U2, &upstream_reply(&first, &[]));
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.stats().ignored, 1);
    }

    #[test]
    fn the_final_timeout_answers_servfail_and_a_late_first_reply_still_counts() {
        let mut s = stub(cfg());
        s.handle_query(T0, C1, &query(9, "slow.example.com", TYPE::A));
        let up = one(&mut s, Dest::Upstream, U1);
        s.handle_timeout(at(2000));
        one(&mut s, Dest::Upstream, U2);
        // The first upstream answers late: still taken.
        s.handle_upstream(at(2500), U1, &upstream_reply(&up, &[]));
        assert_eq!(id_of(&one(&mut s, Dest::Client, C1)), 9);

        s.handle_query(T0, C2, &query(11, "slower.example.com", TYPE::A));
        drain(&mut s);
        s.handle_timeout(at(2000));
        drain(&mut s);
        s.handle_timeout(at(4000));
        let b = one(&mut s, Dest::Client, C2);
        let r = Packet::parse(&b).unwrap();
        assert_eq!(r.id(), 11);
        assert_eq!(r.rcode(), RCODE::ServerFailure);
        assert_eq!(r.questions[0].qname.to_string(), "slower.example.com");
    }

    #[test]
    fn a_single_upstream_is_retried_once_and_none_servfails_at_once() {
        let mut s = stub(StubConfig { upstream: vec![U1], ..cfg() });
        s.handle_query(T0, C1, &query(1, "a.example", TYPE::A));
        one(&mut s, Dest::Upstream, U1);
        s.handle_timeout(at(2000));
        one(&mut s, Dest::Upstream, U1);
        s.handle_timeout(at(4000));
        assert_eq!(Packet::parse(&one(&mut s, Dest::Client, C1)).unwrap().rcode(), RCODE::ServerFailure);

        let mut s = stub(StubConfig { upstream: vec![], ..cfg() });
        s.handle_query(T0, C1, &query(1, "a.example", TYPE::A));
        assert_eq!(Packet::parse(&one(&mut s, Dest::Client, C1)).unwrap().rcode(), RCODE::ServerFailure);
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn refused_timeout_and_overloaded_answer_servfail() {
        let mut s = stub(cfg());
        let errors = [ResolveError::Refused(Reason::NoRoute), ResolveError::Timeout, ResolveError::Overloaded];
        for (i, error) in errors.into_iter().enumerate() {
            let id = u16::try_from(i).unwrap();
            let name = format!("n{i}.ntm.test");
            let token = resolve(s.handle_query(T0, C1, &query(id, &name, TYPE::A)), &name);
            s.resolved(T0, token, Err(error));
            let b = one(&mut s, Dest::Client, C1);
            let r = Packet::parse(&b).unwrap();
            assert_eq!(r.id(), id);
            assert_eq!(r.rcode(), RCODE::ServerFailure);
            assert!(r.answers.is_empty());
            assert_eq!(r.questions.len(), 1);
        }
        assert_eq!(s.stats().servfail, 3);
        assert_eq!(s.stats().forwarded, 0);
        // A token used up (or never issued) is ignored.
        s.resolved(T0, 1, Ok(vaddrs()));
        s.resolved(T0, 999, Err(ResolveError::NotNtm));
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.stats().ignored, 2);
    }

    #[test]
    fn a_hook_the_node_never_answers_servfails_at_the_backstop() {
        let mut s = stub(cfg());
        let token = resolve(s.handle_query(T0, C1, &query(4, "quiet.ntm.test", TYPE::A)), "quiet.ntm.test");
        s.handle_timeout(T0 + HOOK_BACKSTOP);
        assert_eq!(Packet::parse(&one(&mut s, Dest::Client, C1)).unwrap().rcode(), RCODE::ServerFailure);
        s.resolved(T0 + HOOK_BACKSTOP, token, Ok(vaddrs()));
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn other_types_for_ntm_names_get_nodata_and_stay_local() {
        let mut s = stub(cfg());
        for (id, t) in [(1, TYPE::MX), (2, TYPE::TXT), (3, TYPE::HTTPS), (4, TYPE::NS), (5, TYPE::CNAME)] {
            assert_eq!(s.handle_query(T0, C1, &query_msg(id, "node.ntm.test", t, id % 2 == 0)), Outcome::Nothing);
            let b = one(&mut s, Dest::Client, C1);
            let r = Packet::parse(&b).unwrap();
            assert_eq!(r.id(), id);
            assert_eq!(r.rcode(), RCODE::NoError);
            assert!(r.answers.is_empty() && r.name_servers.is_empty() && r.additional_records.is_empty());
            assert_eq!(r.questions[0].qtype, QTYPE::TYPE(t));
            assert_eq!(r.opt().is_some(), id % 2 == 0);
        }
        // QTYPE ANY and class CH as well.
        let mut any = Packet::new_query(6);
        any.questions.push(Question::new(Name::new_unchecked("node.ntm.test"), QTYPE::ANY, CLASS::IN.into(), false));
        s.handle_query(T0, C1, &any.build_bytes_vec().unwrap());
        assert_eq!(Packet::parse(&one(&mut s, Dest::Client, C1)).unwrap().rcode(), RCODE::NoError);
        let mut ch = Packet::new_query(7);
        ch.questions.push(Question::new(Name::new_unchecked("node.ntm.test"), TYPE::A.into(), CLASS::CH.into(), false));
        assert_eq!(s.handle_query(T0, C1, &ch.build_bytes_vec().unwrap()), Outcome::Nothing);
        assert_eq!(Packet::parse(&one(&mut s, Dest::Client, C1)).unwrap().rcode(), RCODE::NoError);
        assert_eq!(s.stats().answered, 7);
        assert_eq!(s.stats().forwarded, 0);
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn malformed_queries_get_formerr_or_are_dropped() {
        let mut s = stub(cfg());
        // Shorter than a header: dropped.
        s.handle_query(T0, C1, &[0x12, 0x34, 0x01]);
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.stats().malformed, 1);

        // A header, then garbage: FORMERR with the id.
        let mut bad = query(0x4242, "www.example.com", TYPE::A);
        bad.truncate(20);
        s.handle_query(T0, C1, &bad);
        let b = one(&mut s, Dest::Client, C1);
        let r = Packet::parse(&b).unwrap();
        assert_eq!((r.id(), r.rcode()), (0x4242, RCODE::FormatError));
        assert!(r.has_flags(PacketFlag::RESPONSE | PacketFlag::RECURSION_DESIRED));

        // Two questions, and zero questions: FORMERR.
        let mut two = Packet::new_query(5);
        two.questions.push(Question::new(Name::new_unchecked("a.example"), TYPE::A.into(), CLASS::IN.into(), false));
        two.questions.push(Question::new(Name::new_unchecked("b.example"), TYPE::A.into(), CLASS::IN.into(), false));
        s.handle_query(T0, C1, &two.build_bytes_vec().unwrap());
        assert_eq!(Packet::parse(&one(&mut s, Dest::Client, C1)).unwrap().rcode(), RCODE::FormatError);
        s.handle_query(T0, C1, &Packet::new_query(6).build_bytes_vec().unwrap());
        assert_eq!(Packet::parse(&one(&mut s, Dest::Client, C1)).unwrap().rcode(), RCODE::FormatError);

        // Record counts the datagram cannot hold: FORMERR without decoding.
        let mut many = query(8, "a.example", TYPE::A);
        many[10..12].copy_from_slice(&[0xff, 0xff]);
        s.handle_query(T0, C1, &many);
        assert_eq!(Packet::parse(&one(&mut s, Dest::Client, C1)).unwrap().rcode(), RCODE::FormatError);
        assert_eq!(s.stats().malformed, 5);

        // A response on the client socket: dropped.
        let reply = upstream_reply(&query(7, "a.example", TYPE::A), &[]);
        s.handle_query(T0, C1, &reply);
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.stats().ignored, 1);

        // Another opcode, and a type simple-dns does not know (TLSA, 52): NOTIMP.
        let mut notify = Packet::new_query(9);
        *notify.opcode_mut() = OPCODE::Notify;
        s.handle_query(T0, C1, &notify.build_bytes_vec().unwrap());
        assert_eq!(Packet::parse(&one(&mut s, Dest::Client, C1)).unwrap().rcode(), RCODE::NotImplemented);
        let mut tlsa = query(10, "_443._tcp.example.com", TYPE::A);
        let n = tlsa.len();
        tlsa[n - 4..n - 2].copy_from_slice(&52u16.to_be_bytes());
        s.handle_query(T0, C1, &tlsa);
        let b = one(&mut s, Dest::Client, C1);
        let r = Packet::parse(&b).unwrap();
        assert_eq!((r.id(), r.rcode()), (10, RCODE::NotImplemented));
        assert_eq!(s.stats().not_implemented, 2);
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn a_client_that_asks_for_too_many_new_node_names_gets_servfail_until_its_budget_refills() {
        let mut s = stub(StubConfig { lookups_per_sec: 10, lookup_burst: 4, ..cfg() });
        let resolves = |s: &mut DnsStub, t: u64, from: SocketAddr, n: u32| {
            (0..n)
                .filter(|i| {
                    let q = query(7, &format!("n{t}x{i}.ntm.test"), TYPE::A);
                    matches!(s.handle_query(Instant::from_millis(t), from, &q), Outcome::Resolve { .. })
                })
                .count()
        };
        assert_eq!(resolves(&mut s, 0, C1, 10), 4, "the burst");
        assert_eq!(s.stats().rate_limited, 6);
        assert_eq!(resolves(&mut s, 1, C2, 4), 4, "another client has its own budget");
        assert_eq!(resolves(&mut s, 300, C1, 10), 3, "10 a second: 3 more after 300 ms");
        // A name already being looked up costs nothing more.
        let again = query(8, "n300x0.ntm.test", TYPE::AAAA);
        assert_eq!(s.handle_query(Instant::from_millis(300), C1, &again), Outcome::Nothing);
        assert_eq!(s.stats().rate_limited, 13);
        let refused = drain(&mut s)
            .iter()
            .filter(|(d, to, m)| {
                *d == Dest::Client && *to == C1 && Packet::parse(m).is_ok_and(|r| r.rcode() == RCODE::ServerFailure)
            })
            .count();
        assert_eq!(refused, 13, "each refused query is answered SERVFAIL");
    }

    #[test]
    fn many_client_addresses_share_one_total_look_up_budget() {
        let mut s = stub(StubConfig { lookups_per_sec: 10, lookup_burst: 4, max_pending: 10_000, ..cfg() });
        let started = (0..200u32)
            .filter(|i| {
                let client = SocketAddr::from(([127, 1, (i / 250) as u8, (i % 250) as u8], 5353));
                let q = query(9, &format!("c{i}.ntm.test"), TYPE::A);
                matches!(s.handle_query(T0, client, &q), Outcome::Resolve { .. })
            })
            .count();
        assert_eq!(started, 16, "four clients' bursts in all");
        assert_eq!(s.stats().rate_limited, 184);
    }

    #[test]
    fn the_pending_cap_answers_servfail() {
        let mut s = stub(StubConfig { max_pending: 2, ..cfg() });
        let token = resolve(s.handle_query(T0, C1, &query(1, "node.ntm.test", TYPE::A)), "node.ntm.test");
        s.handle_query(T0, C1, &query(2, "www.example.com", TYPE::A));
        one(&mut s, Dest::Upstream, U1);
        assert_eq!(s.pending(), 2);
        // Retransmissions of queries in flight cost nothing and are not refused.
        s.handle_query(T0, C1, &query(1, "node.ntm.test", TYPE::A));
        s.handle_query(T0, C1, &query(2, "www.example.com", TYPE::A));
        assert!(drain(&mut s).is_empty());
        // A new query, even for a hooked name, is over the cap.
        assert_eq!(s.handle_query(T0, C2, &query(3, "node.ntm.test", TYPE::AAAA)), Outcome::Nothing);
        let b = one(&mut s, Dest::Client, C2);
        let r = Packet::parse(&b).unwrap();
        assert_eq!((r.id(), r.rcode()), (3, RCODE::ServerFailure));
        s.handle_query(T0, C2, &query(4, "other.example.com", TYPE::A));
        assert_eq!(Packet::parse(&one(&mut s, Dest::Client, C2)).unwrap().rcode(), RCODE::ServerFailure);
        assert_eq!(s.stats().over_limit, 2);
        // NODATA answers need no slot.
        s.handle_query(T0, C2, &query(5, "node.ntm.test", TYPE::MX));
        assert_eq!(Packet::parse(&one(&mut s, Dest::Client, C2)).unwrap().rcode(), RCODE::NoError);
        // Once one finishes, a new query fits.
        s.resolved(T0, token, Ok(vaddrs()));
        one(&mut s, Dest::Client, C1);
        assert!(matches!(s.handle_query(T0, C2, &query(6, "n2.ntm.test", TYPE::A)), Outcome::Resolve { .. }));
        assert_eq!(s.pending(), 2);
    }

    #[test]
    fn a_big_reply_reaches_a_plain_client_truncated() {
        let mut s = stub(cfg());
        s.handle_query(T0, C1, &query(77, "big.example.com", TYPE::A));
        let up = one(&mut s, Dest::Upstream, U1);
        let answers: Vec<(&str, Ipv4Addr)> =
            (0..30).map(|i| ("big.example.com", Ipv4Addr::new(198, 51, 100, i))).collect();
        let reply = upstream_reply(&up, &answers);
        assert!(reply.len() > PLAIN_UDP_MAX);
        s.handle_upstream(T0, U1, &reply);
        let back = one(&mut s, Dest::Client, C1);
        assert!(back.len() <= PLAIN_UDP_MAX);
        let r = Packet::parse(&back).unwrap();
        assert_eq!(r.id(), 77);
        assert!(r.has_flags(PacketFlag::TRUNCATION));
        assert!(r.answers.is_empty());
        assert_eq!(r.questions[0].qname.to_string(), "big.example.com");

        // An EDNS client that takes 1232 bytes gets the whole reply.
        s.handle_query(T0, C2, &query_msg(78, "big.example.com", TYPE::A, true));
        let up = one(&mut s, Dest::Upstream, U1);
        let reply = upstream_reply(&up, &answers);
        s.handle_upstream(T0, U1, &reply);
        let back = one(&mut s, Dest::Client, C2);
        assert_eq!(back[2..], reply[2..]);
    }

    /// Always zero: every id draw collides with the last.
    struct Zero;
    impl RngCore for Zero {
        fn next_u32(&mut self) -> u32 {
            0
        }
        fn next_u64(&mut self) -> u64 {
            0
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            dest.fill(0);
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_chacha::rand_core::Error> {
            dest.fill(0);
            Ok(())
        }
    }
    impl CryptoRng for Zero {}

    #[test]
    fn upstream_ids_in_flight_are_distinct() {
        let mut s = DnsStub::new(cfg(), Box::new(Zero));
        let mut ids = std::collections::BTreeSet::new();
        for i in 0..100u16 {
            s.handle_query(T0, C1, &query(7, &format!("h{i}.example.com"), TYPE::A));
            assert!(ids.insert(id_of(&one(&mut s, Dest::Upstream, U1))));
        }
        assert_eq!(s.pending(), 100);
    }

    /// Random and mutated datagrams on both sockets, random tokens and results, time
    /// moving on: nothing panics, every transmit is a DNS message, the cap holds.
    #[test]
    fn garbage_never_panics() {
        let mut rng = ChaCha8Rng::seed_from_u64(0x5eed);
        let mut s = stub(StubConfig { max_pending: 16, ..cfg() });
        let names = ["node.ntm.test", "ntm.test", "www.example.com", "Node.NTM.test", "x.y.ntm.test"];
        let types = [TYPE::A, TYPE::AAAA, TYPE::MX, TYPE::HTTPS];
        let mut seen_upstream: Vec<Vec<u8>> = Vec::new();
        let mut now = T0;
        for round in 0..100_000u32 {
            let pick = rng.next_u32();
            let mut bytes = match pick % 4 {
                0 => {
                    let len = (rng.next_u32() % 64) as usize;
                    let mut b = vec![0u8; len];
                    rng.fill_bytes(&mut b);
                    b
                }
                1 => {
                    let name = names[(rng.next_u32() as usize) % names.len()];
                    let t = types[(rng.next_u32() as usize) % types.len()];
                    query_msg(rng.next_u32() as u16, name, t, rng.next_u32() % 2 == 0)
                }
                2 => match seen_upstream.last() {
                    Some(q) => upstream_reply(q, &[("www.example.com", Ipv4Addr::new(1, 2, 3, 4))]),
                    None => vec![0; 12],
                },
                _ => seen_upstream.last().cloned().unwrap_or_default(),
            };
            // Flip a few bits, cut or extend.
            for _ in 0..(rng.next_u32() % 4) {
                if !bytes.is_empty() {
                    let i = (rng.next_u32() as usize) % bytes.len();
                    bytes[i] ^= 1 << (rng.next_u32() % 8);
                }
            }
            match rng.next_u32() % 5 {
                0 => bytes.truncate((rng.next_u32() as usize) % (bytes.len() + 1)),
                1 => bytes.extend((0..rng.next_u32() % 8).map(|_| rng.next_u32() as u8)),
                _ => {}
            }
            let from = if rng.next_u32() % 2 == 0 { U1 } else { C1 };
            if rng.next_u32() % 2 == 0 {
                if let Outcome::Resolve { token, .. } = s.handle_query(now, from, &bytes) {
                    if rng.next_u32() % 3 != 0 {
                        let result = match rng.next_u32() % 4 {
                            0 => Ok(vaddrs()),
                            1 => Err(ResolveError::NotNtm),
                            2 => Err(ResolveError::Timeout),
                            _ => Err(ResolveError::Overloaded),
                        };
                        s.resolved(now, token, result);
                    }
                }
            } else {
                s.handle_upstream(now, from, &bytes);
            }
            if round % 7 == 0 {
                s.resolved(now, u64::from(rng.next_u32() % 64), Ok(vaddrs()));
            }
            now = now + Duration::from_millis(u64::from(rng.next_u32() % 300));
            if s.poll_timeout().is_some_and(|t| t <= now) {
                s.handle_timeout(now);
            }
            assert!(s.pending() <= 16);
            for (dest, _, out) in drain(&mut s) {
                // Answers are responses, forwarded queries are not (the QR bit).
                let qr = header_buffer::has_flags(&out, PacketFlag::RESPONSE).unwrap();
                assert_eq!(qr, dest == Dest::Client);
                if dest == Dest::Upstream {
                    seen_upstream.push(out);
                    if seen_upstream.len() > 8 {
                        seen_upstream.remove(0);
                    }
                }
            }
        }
        let st = s.stats();
        assert!(st.malformed > 0 && st.ignored > 0 && st.hooked > 0 && st.forwarded > 0 && st.relayed > 0);
    }
}
