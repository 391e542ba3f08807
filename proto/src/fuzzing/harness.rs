//! What the engine fuzz targets share: the input reader, a deterministic RNG, the keys the
//! harness holds (so that it can seal what the engine's peers would seal), the driver loop
//! with its invariants, and the operation interpreter.
//!
//! An input is one configuration byte (read by the target) and then a sequence of
//! operations, each an opcode byte and its arguments ([`run`]). After every operation the
//! harness drains every output queue and checks it, then calls `handle_timeout` while
//! `poll_timeout` says a deadline has passed, and checks that this settles.
//!
//! Invariants checked for every engine:
//! - no panic;
//! - every [`Transmit`] is a well-formed message: non-empty, a valid header, a plain one
//!   parses in full, a sealed one has room for its tag;
//! - one operation never makes an engine queue more than [`MAX_OUT_PER_OP`] messages,
//!   [`MAX_DNS_PER_OP`] queries or [`MAX_EVENTS_PER_OP`] events;
//! - after `handle_timeout(now)`, `poll_timeout()` is `None` or later than `now` within
//!   [`SETTLE_ROUNDS`] calls: a deadline that stays in the past would make a driver spin;
//! - a [`Received::Ip`] range lies within the buffer handed in;
//! - plus what each target checks of its own engine ([`Subject`], [`Script::check`]).

use crate::crypto::{parse_plain, Channel, CryptoError, TAG_LEN};
use crate::engine::{DnsAnswer, DnsQuery, Engine, PeerIdentity, Received, StreamKind, Transmit, Via};
use crate::keys::{DcDc, DcNs, DcRs, Key, KeyKind, MnCn, NtmDc, NtmNs, Tun, KEY_LEN};
use crate::time::{Duration, Instant};
use crate::wire::{Envelope, Header, KeyId, Message, MsgType, RequestId, Sender, SessionId, HEADER_LEN};
use core::net::SocketAddr;

/// Most operations one input runs.
pub(super) const MAX_OPS: usize = 64;
/// Most messages one operation may make an engine queue.
pub(super) const MAX_OUT_PER_OP: usize = 512;
/// Most name lookups one operation may make an engine ask for.
pub(super) const MAX_DNS_PER_OP: usize = 64;
/// Most events one operation may make an engine report.
pub(super) const MAX_EVENTS_PER_OP: usize = 256;
/// Calls of `handle_timeout(now)` after which `poll_timeout()` must lie after `now`.
pub(super) const SETTLE_ROUNDS: usize = 8;
/// Deadlines visited one by one in a single advance of time; later ones are jumped over.
const ADVANCE_STEPS: usize = 64;
/// Events kept for the tests of the hand-built seeds.
const EVENTS_KEPT: usize = 256;
/// Keys the harness holds at most (the oldest added ones go first).
const SLOTS_MAX: usize = 24;

/// A deterministic random number generator for the fuzz harness **only**: a SplitMix64
/// counter stream. It is not cryptographically secure and claims [`rand_core::CryptoRng`]
/// solely so that engines accept it; the same input must run the same way every time.
#[derive(Debug, Clone)]
pub(super) struct FuzzRng(u64);

impl FuzzRng {
    pub(super) fn new(seed: u64) -> Self {
        FuzzRng(seed)
    }

    /// A boxed RNG for an engine constructor.
    pub(super) fn boxed(seed: u64) -> crate::engine::Rng {
        Box::new(FuzzRng::new(seed))
    }

    pub(super) fn key(&mut self) -> [u8; KEY_LEN] {
        let mut k = [0u8; KEY_LEN];
        rand_core::RngCore::fill_bytes(self, &mut k);
        k
    }
}

impl rand_core::RngCore for FuzzRng {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        rand_core::impls::fill_bytes_via_next(self, dest);
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

// Fuzz-only: see the type's documentation.
impl rand_core::CryptoRng for FuzzRng {}

/// The fuzz input, read front to back. Reads past the end yield zeros and empty slices,
/// so every input is a valid program.
#[derive(Debug)]
pub(super) struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub(super) fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub(super) fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub(super) fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    pub(super) fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    pub(super) fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    /// Up to `n` bytes.
    pub(super) fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.data.split_at(n.min(self.data.len()));
        self.data = tail;
        head
    }

    /// A length byte, then that many bytes (fewer at the end of the input).
    pub(super) fn bytes(&mut self) -> &'a [u8] {
        let n = usize::from(self.u8());
        self.take(n)
    }

    /// An index below `len`, or None if `len` is zero.
    pub(super) fn index(&mut self, len: usize) -> Option<usize> {
        let b = usize::from(self.u8());
        b.checked_rem(len)
    }

    /// One of `xs`.
    pub(super) fn pick<T: Clone>(&mut self, xs: &[T]) -> Option<T> {
        self.index(xs.len()).and_then(|i| xs.get(i)).cloned()
    }
}

/// The last few distinct values of one kind seen in the engine's output.
#[derive(Debug, Default)]
pub(super) struct Ring(Vec<u32>);

impl Ring {
    const CAP: usize = 16;

    pub(super) fn note(&mut self, v: u32) {
        self.0.retain(|x| *x != v);
        if self.0.len() >= Self::CAP {
            self.0.remove(0);
        }
        self.0.push(v);
    }

    /// Mostly a value seen (so that answers match requests), sometimes any value: a zero
    /// byte picks the newest, bytes below 0xf0 one of the others, higher ones read the value
    /// from the input.
    pub(super) fn pick(&self, input: &mut Input<'_>) -> u32 {
        let b = input.u8();
        let i = match b {
            0 => self.0.len().checked_sub(1),
            0xf0.. => None,
            _ => usize::from(b).checked_rem(self.0.len()),
        };
        match i {
            Some(i) => self.0.get(i).copied().unwrap_or(0),
            None => input.u32(),
        }
    }
}

/// Identifiers seen in the engine's output, for answers that the engine will match.
#[derive(Debug, Default)]
pub(super) struct Seen {
    pub(super) requests: Ring,
    pub(super) sessions: Ring,
    pub(super) keys: Ring,
    pub(super) probes: Ring,
}

impl Seen {
    pub(super) fn request(&self, input: &mut Input<'_>) -> RequestId {
        RequestId(self.requests.pick(input))
    }

    pub(super) fn session(&self, input: &mut Input<'_>) -> SessionId {
        SessionId(self.sessions.pick(input))
    }

    #[cfg_attr(not(feature = "servers"), allow(dead_code))]
    pub(super) fn key(&self, input: &mut Input<'_>) -> KeyId {
        KeyId(self.keys.pick(input))
    }

    pub(super) fn probe(&self, input: &mut Input<'_>) -> u32 {
        self.probes.pick(input)
    }

    /// Notes every identifier `msg` carries.
    pub(super) fn note(&mut self, msg: &Message) {
        use Message as M;
        let (request, session, key) = match msg {
            M::LoginRequest(m) => (Some(m.request_id), None, None),
            M::LoginResponse(m) => (Some(m.request_id), None, Some(m.key_id)),
            M::KeyDistribution(m) => (Some(m.request_id), None, Some(m.key_id)),
            M::NtmAck(m) => (Some(m.request_id), None, Some(m.key_id)),
            M::KeyShare(m) => (Some(m.request_id), None, Some(m.key_id)),
            M::KeyShareAck(m) => (Some(m.request_id), None, Some(m.key_id)),
            M::RegistrationRequest(m) => (Some(m.request_id), None, None),
            M::RegistrationResponse(m) => (Some(m.request_id), None, m.ns.as_ref().map(|g| g.key_id)),
            M::Keepalive(m) => (Some(m.request_id), None, None),
            M::KeepaliveAck(m) => (Some(m.request_id), None, None),
            M::MappingProbe(m) => (Some(m.request_id), None, None),
            M::MappingProbeAck(m) => (Some(m.request_id), None, None),
            M::MappingOffer(_) => (None, None, None),
            M::GatewayOffer(_) => (None, None, None),
            M::NotificationRegistration(m) => (Some(m.request_id), None, None),
            M::NotificationAck(m) => (Some(m.request_id), None, None),
            M::NsKeepalive(m) => (Some(m.request_id), None, None),
            M::NsKeepaliveAck(m) => (Some(m.request_id), None, None),
            M::NsProbe(m) => (Some(m.request_id), None, None),
            M::NsKeyDistribution(m) => (Some(m.request_id), None, Some(m.key_id)),
            M::NsKeyAck(m) => (Some(m.request_id), None, Some(m.key_id)),
            M::Notify(m) => (Some(m.request_id), None, Some(m.node_key_id)),
            M::NotifyAck(m) => (Some(m.request_id), None, None),
            M::DirectionRequest(m) => (Some(m.request_id), m.previous, None),
            M::NodeInfoRequest(m) => (Some(m.request_id), None, None),
            M::NodeInfoAnswer(m) => (Some(m.request_id), None, None),
            M::RouteDirection(m) => (Some(m.request_id), Some(m.session), None),
            M::GatewayDirection(m) => (Some(m.request_id), Some(m.session), None),
            M::RouteDirectionAck(m) => (Some(m.request_id), Some(m.session), None),
            M::RelayDirection(m) => (Some(m.request_id), Some(m.session), None),
            M::RelayDirectionAck(m) => (Some(m.request_id), Some(m.session), None),
            M::RelayStatus(m) => (Some(m.request_id), None, None),
            M::RelayStatusAck(m) => (Some(m.request_id), None, None),
            M::Refusal(m) => (Some(m.request_id), None, None),
            M::PathProbe(m) => {
                self.probes.note(m.probe_id);
                (None, None, None)
            }
            M::PathProbeAck(m) => {
                self.probes.note(m.probe_id);
                (None, None, None)
            }
            M::TunnelRequest(_) | M::TunnelResponse(_) | M::HolePunch(_) | M::HolePunchAck(_) | M::Data(_) => {
                (None, None, None)
            }
        };
        if let Some(r) = request {
            self.requests.note(r.0);
        }
        if let Some(s) = session {
            self.sessions.note(s.0);
        }
        if let Some(k) = key {
            self.keys.note(k.0);
        }
    }
}

/// The kinds of symmetric key the harness may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "servers"), allow(dead_code))]
pub(super) enum Kind {
    NtmDc,
    DcDc,
    DcRs,
    DcNs,
    NtmNs,
    Tun,
    MnCn,
}

impl Kind {
    fn senders(self) -> &'static [Sender] {
        match self {
            Kind::NtmDc => NtmDc::SENDERS,
            Kind::DcDc => DcDc::SENDERS,
            Kind::DcRs => DcRs::SENDERS,
            Kind::DcNs => DcNs::SENDERS,
            Kind::NtmNs => NtmNs::SENDERS,
            Kind::Tun => Tun::SENDERS,
            Kind::MnCn => MnCn::SENDERS,
        }
    }
}

/// A [`Channel`] of any kind, behind one interface.
trait AnyChannel {
    fn seal_in_place(&mut self, now: Instant, ty: MsgType, buf: &mut [u8]) -> Result<(), CryptoError>;
    fn open(&mut self, now: Instant, bytes: &[u8]) -> Result<(Header, Message), CryptoError>;
    fn resume_at(&mut self, counter: u64);
    fn next_counter(&self) -> u64;
}

impl<K: KeyKind> AnyChannel for Channel<K> {
    fn seal_in_place(&mut self, now: Instant, ty: MsgType, buf: &mut [u8]) -> Result<(), CryptoError> {
        Channel::seal_in_place(self, now, ty, buf)
    }
    fn open(&mut self, now: Instant, bytes: &[u8]) -> Result<(Header, Message), CryptoError> {
        Channel::open(self, now, bytes)
    }
    fn resume_at(&mut self, counter: u64) {
        Channel::resume_at(self, counter);
    }
    fn next_counter(&self) -> u64 {
        Channel::next_counter(self)
    }
}

fn any_channel(kind: Kind, key: [u8; KEY_LEN], id: KeyId, local: Sender) -> Option<Box<dyn AnyChannel>> {
    fn make<K: KeyKind>(key: [u8; KEY_LEN], id: KeyId, local: Sender) -> Option<Box<dyn AnyChannel>> {
        // The harness's copies never expire: expiry is the engine's to enforce.
        let ch = Channel::<K>::new(Key::from_bytes(key), id, local, Instant::FAR_FUTURE).ok()?;
        Some(Box::new(ch))
    }
    match kind {
        Kind::NtmDc => make::<NtmDc>(key, id, local),
        Kind::DcDc => make::<DcDc>(key, id, local),
        Kind::DcRs => make::<DcRs>(key, id, local),
        Kind::DcNs => make::<DcNs>(key, id, local),
        Kind::NtmNs => make::<NtmNs>(key, id, local),
        Kind::Tun => make::<Tun>(key, id, local),
        Kind::MnCn => make::<MnCn>(key, id, local),
    }
}

/// A key the harness shares with the engine, and how the harness's messages under it reach
/// the engine.
#[derive(Debug, Clone)]
pub(super) struct Slot {
    pub(super) kind: Kind,
    pub(super) key: [u8; KEY_LEN],
    pub(super) id: KeyId,
    /// The harness's role under the key.
    pub(super) me: Sender,
    /// Where the harness's messages come from.
    pub(super) from: SocketAddr,
    /// Delivered as TCP frames (node <-> NS) rather than datagrams.
    pub(super) tcp: bool,
    /// Next counter of each sender role the harness sealed as.
    counters: Vec<(Sender, u64)>,
}

impl Slot {
    pub(super) fn new(kind: Kind, key: [u8; KEY_LEN], id: KeyId, me: Sender, from: SocketAddr) -> Self {
        Slot { kind, key, id, me, from, tcp: false, counters: Vec::new() }
    }

    pub(super) fn over_tcp(mut self) -> Self {
        self.tcp = true;
        self
    }

    /// Seals `body` as a message of type `ty` from `sender` (who may be a role that must
    /// not use this key: then nothing is sealed).
    pub(super) fn seal_raw(&mut self, sender: Sender, ty: MsgType, body: &[u8]) -> Option<Vec<u8>> {
        let mut ch = any_channel(self.kind, self.key, self.id, sender)?;
        let counter = self.counters.iter().find(|(s, _)| *s == sender).map_or(0, |(_, c)| *c);
        ch.resume_at(counter);
        let mut buf = vec![0u8; HEADER_LEN + body.len() + TAG_LEN];
        buf.get_mut(HEADER_LEN..HEADER_LEN + body.len())?.copy_from_slice(body);
        ch.seal_in_place(Instant::ZERO, ty, &mut buf).ok()?;
        let next = ch.next_counter();
        match self.counters.iter_mut().find(|(s, _)| *s == sender) {
            Some((_, c)) => *c = next,
            None => self.counters.push((sender, next)),
        }
        Some(buf)
    }

    pub(super) fn seal(&mut self, sender: Sender, msg: &Message) -> Option<Vec<u8>> {
        self.seal_raw(sender, msg.msg_type(), &msg.body_to_vec())
    }

    /// Opens a message the engine sealed under this key (as any role but the sender's).
    pub(super) fn open(&self, bytes: &[u8]) -> Option<(Header, Message)> {
        let sender = Envelope::new_checked(bytes).ok()?.sender();
        let local = self.kind.senders().iter().copied().find(|s| *s != sender)?;
        any_channel(self.kind, self.key, self.id, local)?.open(Instant::ZERO, bytes).ok()
    }

    pub(super) fn senders(&self) -> &'static [Sender] {
        self.kind.senders()
    }
}

/// What an engine under test offers beyond [`Engine`].
pub(super) trait Subject: Engine {
    type Event;
    fn next_event(&mut self) -> Option<Self::Event>;
    /// Checks the verdict on a datagram from `from` (`after` is the buffer after the call:
    /// decrypted in place, perhaps).
    fn check_received(&self, _from: SocketAddr, _after: &[u8], _r: &Received) {}
    /// Checks the engine's own bounds after every operation.
    fn check(&self) {}
}

/// Something delivered to the engine, kept to replay it.
#[derive(Debug, Clone)]
enum Delivery {
    Datagram(SocketAddr, Vec<u8>),
    Frame(StreamKind, SocketAddr, Option<PeerIdentity>, Vec<u8>),
}

/// An engine under test with the state of its simulated surroundings.
pub(super) struct Harness<E: Subject> {
    pub(super) engine: E,
    pub(super) now: Instant,
    pub(super) slots: Vec<Slot>,
    /// Slots added by setup, never evicted.
    pub(super) fixed_slots: usize,
    /// Slots a template created, added once its message was delivered.
    pub(super) pending_slots: Vec<Slot>,
    pub(super) seen: Seen,
    /// Lookups the engine asked for (the most recent few).
    pub(super) queries: Vec<DnsQuery>,
    /// Source addresses to pick from.
    pub(super) addrs: Vec<SocketAddr>,
    /// Stream peer identities to pick from.
    pub(super) identities: Vec<Option<PeerIdentity>>,
    /// Events so far (the first [`EVENTS_KEPT`]).
    pub(super) events: Vec<E::Event>,
    /// Engine output not yet looked at by the script.
    pub(super) sent: Vec<Transmit>,
    /// The latest engine output, to reflect it back.
    recent: Vec<Transmit>,
    history: Vec<Delivery>,
    /// TCP connections the harness opened to the engine and has not closed.
    pub(super) open_tcp: Vec<SocketAddr>,
    /// Inputs the engine reported as handled, and data it handed back.
    pub(super) handled: usize,
    pub(super) ip: usize,
    pub(super) forwarded: usize,
    /// The harness's own randomness (keys of templates).
    pub(super) rng: FuzzRng,
}

impl<E: Subject> Harness<E> {
    pub(super) fn new(engine: E, now: Instant, addrs: Vec<SocketAddr>, identities: Vec<Option<PeerIdentity>>) -> Self {
        Harness {
            engine,
            now,
            slots: Vec::new(),
            fixed_slots: 0,
            pending_slots: Vec::new(),
            seen: Seen::default(),
            queries: Vec::new(),
            addrs,
            identities,
            events: Vec::new(),
            sent: Vec::new(),
            recent: Vec::new(),
            history: Vec::new(),
            open_tcp: Vec::new(),
            handled: 0,
            ip: 0,
            forwarded: 0,
            rng: FuzzRng::new(0x5eed_0f4a_5500),
        }
    }

    /// Adds a key the harness holds (evicting the oldest non-fixed one when full).
    pub(super) fn add_slot(&mut self, slot: Slot) {
        if self.slots.iter().any(|s| s.kind == slot.kind && s.id == slot.id && s.key == slot.key) {
            return;
        }
        if self.slots.len() >= SLOTS_MAX && self.slots.len() > self.fixed_slots {
            self.slots.remove(self.fixed_slots);
        }
        self.slots.push(slot);
    }

    /// Ends setup: the slots so far stay.
    pub(super) fn fix_slots(&mut self) {
        self.fixed_slots = self.slots.len();
    }

    #[cfg_attr(not(feature = "servers"), allow(dead_code))]
    pub(super) fn slot_by_id(&self, kind: Kind, id: KeyId) -> Option<usize> {
        self.slots.iter().rposition(|s| s.kind == kind && s.id == id)
    }

    pub(super) fn pick_addr(&self, input: &mut Input<'_>) -> SocketAddr {
        input.pick(&self.addrs).unwrap_or(SocketAddr::from(([192, 0, 2, 99], 9)))
    }

    pub(super) fn pick_identity(&self, input: &mut Input<'_>) -> Option<PeerIdentity> {
        input.pick(&self.identities).flatten()
    }

    fn remember(&mut self, d: Delivery) {
        if self.history.len() >= 8 {
            self.history.remove(0);
        }
        self.history.push(d);
    }

    /// A datagram from `from`.
    pub(super) fn datagram(&mut self, from: SocketAddr, bytes: &[u8]) -> Received {
        self.remember(Delivery::Datagram(from, bytes.to_vec()));
        let mut buf = bytes.to_vec();
        let r = self.engine.handle_datagram(self.now, from, &mut buf);
        match &r {
            Received::Ip(range) => {
                assert!(
                    range.start <= range.end && range.end <= buf.len(),
                    "Received::Ip({range:?}) outside the buffer"
                );
                self.ip += 1;
            }
            Received::Forward(_) => self.forwarded += 1,
            Received::Handled => self.handled += 1,
            Received::Dropped(_) => {}
        }
        self.engine.check_received(from, &buf, &r);
        self.finish_op();
        r
    }

    /// A framed message on a stream from `from`.
    pub(super) fn frame(
        &mut self,
        kind: StreamKind,
        from: SocketAddr,
        peer: Option<&PeerIdentity>,
        bytes: &[u8],
    ) -> Received {
        self.remember(Delivery::Frame(kind, from, peer.cloned(), bytes.to_vec()));
        if kind == StreamKind::Tcp && !self.open_tcp.contains(&from) {
            self.open_tcp.push(from);
        }
        let r = self.engine.handle_stream(self.now, kind, from, peer, bytes);
        assert!(!matches!(r, Received::Ip(_) | Received::Forward(_)), "a stream frame gave {r:?}");
        if r == Received::Handled {
            self.handled += 1;
        }
        self.finish_op();
        r
    }

    pub(super) fn closed(&mut self, kind: StreamKind, peer: SocketAddr) {
        if kind == StreamKind::Tcp {
            self.open_tcp.retain(|a| *a != peer);
        }
        self.engine.handle_stream_closed(self.now, kind, peer);
        self.finish_op();
    }

    pub(super) fn dns(&mut self, id: u64, answer: DnsAnswer) {
        self.engine.handle_dns(self.now, id, answer);
        self.finish_op();
    }

    /// Time passes: every deadline up to `now + d` is served in order (the first
    /// [`ADVANCE_STEPS`] of them), as a driver would.
    pub(super) fn advance(&mut self, d: Duration) {
        let target = self.now + d;
        for _ in 0..ADVANCE_STEPS {
            match self.engine.poll_timeout() {
                Some(t) if t <= target => {
                    self.now = self.now.max(t);
                    self.engine.handle_timeout(self.now);
                    self.finish_op();
                }
                _ => break,
            }
        }
        self.now = target;
        self.finish_op();
    }

    /// Drains the outputs (checking each) and serves deadlines that have passed.
    pub(super) fn finish_op(&mut self) {
        self.drain();
        for round in 0..=SETTLE_ROUNDS {
            let Some(t) = self.engine.poll_timeout().filter(|&t| t <= self.now) else { break };
            assert!(
                round < SETTLE_ROUNDS,
                "poll_timeout() is still {t:?}, not after now = {:?}, after {SETTLE_ROUNDS} calls of handle_timeout(now)",
                self.now
            );
            self.engine.handle_timeout(self.now);
            self.drain();
        }
        self.engine.check();
    }

    fn drain(&mut self) {
        let mut n = 0;
        while let Some(t) = self.engine.poll_transmit() {
            n += 1;
            assert!(n <= MAX_OUT_PER_OP, "more than {MAX_OUT_PER_OP} messages queued by one operation");
            check_transmit(&t);
            if self.recent.len() >= 8 {
                self.recent.remove(0);
            }
            self.recent.push(t.clone());
            if self.sent.len() < MAX_OUT_PER_OP {
                self.sent.push(t);
            }
        }
        let mut n = 0;
        while let Some(q) = self.engine.poll_dns() {
            n += 1;
            assert!(n <= MAX_DNS_PER_OP, "more than {MAX_DNS_PER_OP} lookups asked for by one operation");
            if self.queries.len() >= 8 {
                self.queries.remove(0);
            }
            self.queries.push(q);
        }
        let mut n = 0;
        while let Some(e) = self.engine.next_event() {
            n += 1;
            assert!(n <= MAX_EVENTS_PER_OP, "more than {MAX_EVENTS_PER_OP} events from one operation");
            if self.events.len() < EVENTS_KEPT {
                self.events.push(e);
            }
        }
    }

    /// Delivers `bytes` sealed under slot `i`'s key the way that slot's messages travel.
    fn deliver_sealed(&mut self, tcp: bool, from: SocketAddr, bytes: &[u8]) -> Received {
        if tcp {
            self.frame(StreamKind::Tcp, from, None, bytes)
        } else {
            self.datagram(from, bytes)
        }
    }

    /// Replays something delivered before, or reflects something the engine sent.
    fn replay(&mut self, input: &mut Input<'_>) {
        if input.bool() {
            let Some(d) = input.pick(&self.history) else { return };
            match d {
                Delivery::Datagram(from, bytes) => {
                    self.datagram(from, &bytes);
                }
                Delivery::Frame(kind, from, peer, bytes) => {
                    self.frame(kind, from, peer.as_ref(), &bytes);
                }
            }
        } else {
            let Some(t) = input.pick(&self.recent) else { return };
            match t.via {
                Via::Udp | Via::UdpFrom(_) => {
                    self.datagram(t.dst, &t.payload);
                }
                Via::Stream { kind, .. } => {
                    let peer = self.pick_identity(input);
                    self.frame(kind, t.dst, peer.as_ref(), &t.payload);
                }
            }
        }
    }
}

/// A message the engine sends must be well formed.
pub(super) fn check_transmit(t: &Transmit) {
    assert!(!t.payload.is_empty(), "empty payload to {}", t.dst);
    let env = Envelope::new_checked(&t.payload[..]);
    assert!(env.is_ok(), "transmit to {} has no valid header: {env:?}", t.dst);
    if env.as_ref().is_ok_and(|e| e.sealed()) {
        assert!(t.payload.len() >= HEADER_LEN + TAG_LEN, "sealed transmit to {} without room for a tag", t.dst);
    } else {
        let parsed = parse_plain(&t.payload);
        assert!(parsed.is_ok(), "plain transmit to {} does not parse: {parsed:?}", t.dst);
    }
}

/// A message made by a template: what to seal, and who seals it from where if not the
/// slot's defaults.
#[derive(Debug)]
pub(super) struct Tpl {
    pub(super) msg: Message,
    pub(super) sender: Option<Sender>,
    pub(super) from: Option<SocketAddr>,
}

impl From<Message> for Tpl {
    fn from(msg: Message) -> Self {
        Tpl { msg, sender: None, from: None }
    }
}

impl Tpl {
    pub(super) fn by(mut self, sender: Sender) -> Self {
        self.sender = Some(sender);
        self
    }

    pub(super) fn sent_from(mut self, from: SocketAddr) -> Self {
        self.from = Some(from);
        self
    }
}

/// What a target adds to the common operations.
pub(super) trait Script<E: Subject> {
    /// A message for the engine under slot `slot`'s key, built from a few input bytes.
    fn template(&mut self, h: &mut Harness<E>, slot: usize, input: &mut Input<'_>) -> Option<Tpl>;
    /// A plain message (TLS) or a clear datagram, built and delivered.
    fn plain(&mut self, h: &mut Harness<E>, input: &mut Input<'_>);
    /// The answer to a lookup of `name`.
    fn answer(&mut self, h: &mut Harness<E>, name: &crate::wire::Fqdn, input: &mut Input<'_>) -> DnsAnswer;
    /// A role-specific call.
    fn api(&mut self, _h: &mut Harness<E>, _input: &mut Input<'_>) {}
    /// Looks at one message the engine sent (opened if the harness holds its key).
    fn learn(&mut self, _h: &mut Harness<E>, _t: &Transmit, _opened: Option<&(Header, Message)>) {}
    /// Checks after every operation.
    fn check(&mut self, _h: &Harness<E>) {}
}

/// Opcodes of the operations.
pub(super) mod op {
    pub(in crate::fuzzing) const RAW_DATAGRAM: u8 = 0;
    pub(in crate::fuzzing) const SEALED_RAW: u8 = 1;
    pub(in crate::fuzzing) const SEALED: u8 = 2;
    pub(in crate::fuzzing) const RAW_FRAME: u8 = 3;
    pub(in crate::fuzzing) const PLAIN: u8 = 4;
    pub(in crate::fuzzing) const CLOSED: u8 = 5;
    pub(in crate::fuzzing) const DNS: u8 = 6;
    pub(in crate::fuzzing) const WAIT: u8 = 7;
    pub(in crate::fuzzing) const API: u8 = 8;
    pub(in crate::fuzzing) const REPLAY: u8 = 9;
    pub(in crate::fuzzing) const COUNT: u8 = 10;
}

/// Opens (where the harness holds the key), notes and shows the script everything the
/// engine sent since the last call.
pub(super) fn learn<E: Subject, S: Script<E>>(h: &mut Harness<E>, s: &mut S) {
    let sent = core::mem::take(&mut h.sent);
    for t in &sent {
        let opened = match Envelope::new_checked(&t.payload[..]) {
            Ok(env) if env.sealed() => {
                let id = env.key_id();
                h.slots.iter().rev().filter(|s| s.id == id).find_map(|s| s.open(&t.payload))
            }
            Ok(_) => parse_plain(&t.payload).ok(),
            Err(_) => None,
        };
        if let Some((_, msg)) = &opened {
            h.seen.note(msg);
        }
        s.learn(h, t, opened.as_ref());
    }
}

/// Units of time for [`op::WAIT`]: 1 ms, 20 ms, 1 s, 1 min (up to 65535 of them).
const UNITS_MS: [u64; 4] = [1, 20, 1000, 60_000];

/// Runs the operations of `input` (after the target read its configuration).
pub(super) fn run<E: Subject, S: Script<E>>(h: &mut Harness<E>, s: &mut S, input: &mut Input<'_>) {
    learn(h, s);
    let mut ops = 0;
    while !input.is_empty() && ops < MAX_OPS {
        ops += 1;
        match input.u8() % op::COUNT {
            op::RAW_DATAGRAM => {
                let from = h.pick_addr(input);
                let bytes = input.bytes();
                h.datagram(from, bytes);
            }
            op::SEALED_RAW => sealed(h, s, input, false),
            op::SEALED => sealed(h, s, input, true),
            op::RAW_FRAME => {
                let kind = if input.bool() { StreamKind::Tls } else { StreamKind::Tcp };
                let from = h.pick_addr(input);
                let peer = h.pick_identity(input);
                let bytes = input.bytes();
                h.frame(kind, from, peer.as_ref(), bytes);
            }
            op::PLAIN => s.plain(h, input),
            op::CLOSED => {
                let kind = if input.bool() { StreamKind::Tls } else { StreamKind::Tcp };
                let peer = h.pick_addr(input);
                h.closed(kind, peer);
            }
            op::DNS => {
                let (id, name) = match input.pick(&h.queries) {
                    Some(q) => (q.id, q.name),
                    None => (u64::from(input.u8()), name("fuzz.example")),
                };
                let answer = s.answer(h, &name, input);
                h.dns(id, answer);
            }
            op::WAIT => {
                let unit = UNITS_MS.get(usize::from(input.u8() & 3)).copied().unwrap_or(1);
                let d = Duration::from_millis(u64::from(input.u16()) * unit);
                h.advance(d);
            }
            op::API => s.api(h, input),
            op::REPLAY => h.replay(input),
            _ => {}
        }
        learn(h, s);
        s.check(h);
    }
}

/// Seals a message under one of the harness's keys and delivers it: a raw body of a chosen
/// type, or a template of the script. The route byte may make another role seal it
/// (`route & 0xc0 == 0xc0`, then a byte picks the role), send it from another address
/// (`route & 0x30 == 0x30`, then a byte picks it), or send it the other way, datagram
/// versus TCP frame (`route & 0x0f == 0x0f`).
fn sealed<E: Subject, S: Script<E>>(h: &mut Harness<E>, s: &mut S, input: &mut Input<'_>, template: bool) {
    let Some(i) = input.index(h.slots.len()) else { return };
    let route = input.u8();
    let sender = if route & 0xc0 == 0xc0 { h.slots.get(i).and_then(|s| input.pick(s.senders())) } else { None };
    let from = if route & 0x30 == 0x30 { Some(h.pick_addr(input)) } else { None };
    h.pending_slots.clear();
    let (tpl, raw) = if template {
        let Some(t) = s.template(h, i, input) else { return };
        (Some(t), None)
    } else {
        let ty = MsgType::from(input.u8());
        (None, Some((ty, input.bytes())))
    };
    let Some(slot) = h.slots.get_mut(i) else { return };
    let sender = sender.or(tpl.as_ref().and_then(|t| t.sender)).unwrap_or(slot.me);
    let from = from.or(tpl.as_ref().and_then(|t| t.from)).unwrap_or(slot.from);
    let tcp = slot.tcp != (route & 0x0f == 0x0f);
    let bytes = match (&tpl, raw) {
        (Some(t), _) => slot.seal(sender, &t.msg),
        (None, Some((ty, body))) => slot.seal_raw(sender, ty, body),
        (None, None) => None,
    };
    let Some(bytes) = bytes else { return };
    h.deliver_sealed(tcp, from, &bytes);
    for slot in core::mem::take(&mut h.pending_slots) {
        h.add_slot(slot);
    }
}

/// A name from the harness's constants.
// Invariant: every constant passed is a valid name; the unit tests run every target, and
// so build each of them.
#[allow(clippy::expect_used)]
pub(super) fn name(s: &str) -> crate::wire::Fqdn {
    crate::wire::Fqdn::new(s).expect("the harness's names are valid")
}
