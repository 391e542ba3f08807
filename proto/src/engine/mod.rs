//! Sans-IO engines, one per role: [`node::Node`], and with the `servers` feature
//! [`dc::Dc`], [`rs::Rs`], [`ns::Ns`] and [`account::AccountServer`].
//!
//! Every engine has the same shape (docs/protocol.md, "Engines"):
//!
//! - **input**: [`Engine::handle_datagram`] (a UDP datagram), [`Engine::handle_stream`] (one
//!   framed message from a TCP or TLS stream, with the identity TLS verified),
//!   [`Engine::handle_stream_closed`], [`Engine::handle_dns`] (the answer to a query the
//!   engine asked), [`Engine::handle_timeout`] (the deadline from `poll_timeout` passed),
//!   plus role-specific calls (a node's `resolve`, `handle_network_change`, ...);
//! - **output**: [`Engine::poll_transmit`] (messages to send), [`Engine::poll_dns`] (names to
//!   look up), [`Engine::poll_timeout`] (when to call `handle_timeout` next), and a
//!   role-specific `poll_event`.
//!
//! After any input, the driver drains the outputs until each returns `None`, then sleeps
//! until the next input or the deadline. Engines never read a clock: `now` comes with
//! every input and must not go backwards. Randomness comes from the [`Rng`] handed to the
//! constructor. Each engine retransmits its own requests with backoff ([`Retry`]) until
//! they are acknowledged, so drivers need no retransmission logic.

mod retransmit;

// The engine of each role: the node's always, the servers' (and their helpers) with the
// `servers` feature.
#[cfg(feature = "servers")]
pub mod account;
#[cfg(feature = "servers")]
pub mod dc;
#[cfg(feature = "servers")]
pub mod gateway;
#[cfg(feature = "servers")]
pub(crate) mod hints;
#[cfg(feature = "servers")]
pub(crate) mod keyshare;
pub mod node;
#[cfg(feature = "servers")]
pub mod ns;
#[cfg(feature = "servers")]
pub mod rs;

pub use retransmit::{Backoff, Retry};

use crate::crypto::pk::PublicKey;
use crate::time::Instant;
use crate::wire::{Fqdn, WireError};
use core::net::SocketAddr;
use core::ops::Range;

/// The randomness an engine draws keys, ids and nonces from.
pub type Rng = Box<dyn rand_core::CryptoRngCore + Send>;

/// The kind of stream a framed message travels on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// Plain TCP (node <-> NS; messages are sealed).
    Tcp,
    /// TLS 1.3 (node <-> AS; mutual TLS between servers).
    Tls,
}

/// One of an engine's UDP sockets. [`Local::MAIN`] is its configured port (one socket per
/// family). The others are extra sockets: a node's for finding a direct path through a
/// NAT that maps per destination (see `node::Node::handle_datagram_on`), and a DC's
/// mapping port (`dc::MAPPING_PORT`).
///
/// A node's driver opens an extra socket on an ephemeral port of the destination's family
/// when the engine first sends from it ([`Via::UdpFrom`]), passes what it receives to
/// `Node::handle_datagram_on`, and closes it when the node raises
/// `NodeEvent::LocalReleased`. The node keeps at most `node::LOCALS_MAX` open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Local(pub u16);

impl Local {
    /// The engine's configured port.
    pub const MAIN: Local = Local(0);
}

/// How a message leaves the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via {
    /// A UDP datagram from the engine's socket of the destination's family.
    Udp,
    /// A UDP datagram from one of the engine's extra sockets ([`Local`]; never
    /// [`Local::MAIN`], which is [`Via::Udp`]).
    UdpFrom(Local),
    /// A framed message on the TCP or TLS stream with the destination. A client names the
    /// server it expects (`server`), and the driver connects and verifies the server's
    /// certificate for that name if no stream is open; a server answers with `None` on the
    /// stream the peer opened.
    Stream {
        /// TCP or TLS.
        kind: StreamKind,
        /// The server's name to verify when connecting.
        server: Option<Fqdn>,
    },
}

/// A message for the driver to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Datagram or stream.
    pub via: Via,
    /// Where to.
    pub dst: SocketAddr,
    /// The whole message (header and body).
    pub payload: Vec<u8>,
}

/// The role a server's certificate gives it (carried in the certificate; the driver maps
/// it after verifying the chain against the deployment CA).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// An NTM node (device certificate).
    Node,
    /// The Account Server.
    As,
    /// A Direction Coordinator.
    Dc,
    /// A Relay Server.
    Rs,
    /// A Notification Server.
    Ns,
}

/// The prefix of the SAN URI that gives a certificate its role:
/// `urn:ntmobile:role:<label>`, with [`Role::label`]. Both ends read it here: the servers
/// when they identify a peer, the agent when it checks the AS's certificate.
pub const ROLE_URI_PREFIX: &str = "urn:ntmobile:role:";

impl Role {
    /// Every role.
    pub const ALL: [Role; 5] = [Role::Node, Role::As, Role::Dc, Role::Rs, Role::Ns];

    /// The role's label in its URI ([`ROLE_URI_PREFIX`]) and on command lines.
    pub fn label(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::As => "as",
            Role::Dc => "dc",
            Role::Rs => "rs",
            Role::Ns => "ns",
        }
    }

    /// The role a label names (the inverse of [`Role::label`]).
    pub fn from_label(label: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.label() == label)
    }
}

/// Who is at the other end of a TLS stream, as verified by the driver's TLS layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The name in the peer's certificate.
    pub name: Fqdn,
    /// The role the certificate grants.
    pub role: Role,
    /// The certificate's public key (a node's device key, for public-key mode).
    pub public_key: Option<PublicKey>,
}

/// A name lookup an engine needs: "which DC serves `name`?" The driver answers with the
/// NS record of the name's zone and that DC's addresses (spec section 2, "Discovery is
/// DNS"), or from static configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsQuery {
    /// Matches the answer.
    pub id: u64,
    /// The name to locate.
    pub name: Fqdn,
    /// Look up the name's own addresses (A and AAAA) instead of its DC: the answer is
    /// [`DnsAnswer::Dc`] with `name` and its addresses (port 0), or [`DnsAnswer::Failed`]
    /// (a DC's gateway to ordinary hosts asks this).
    pub addresses: bool,
}

/// Where a DC is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DcLocation {
    /// The DC's name (the target of the zone's NS record).
    pub name: Fqdn,
    /// Its addresses, with the DC port.
    pub addrs: Vec<SocketAddr>,
}

/// The driver's answer to a [`DnsQuery`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsAnswer {
    /// The name's zone is served by this DC.
    Dc(DcLocation),
    /// The name exists but no NTMobile DC serves its zone: ordinary DNS.
    NotNtm,
    /// The lookup failed (timeout, SERVFAIL, no such name).
    Failed,
}

/// What became of a datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received {
    /// It was a control message and was handled.
    Handled,
    /// It was a data packet; the decrypted inner IP packet is this range of the buffer.
    Ip(Range<usize>),
    /// It was a data packet to forward unchanged (an RS): to this address.
    Forward(SocketAddr),
    /// It was dropped, and counted under this reason.
    Dropped(DropReason),
}

/// Why input was dropped. Every engine counts drops by reason ([`DropCounters`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Did not parse.
    Malformed,
    /// A version this build does not speak.
    Version,
    /// A message type this role does not accept on this path.
    Unexpected,
    /// No key or session with that id.
    UnknownKey,
    /// Authentication failed, a replay, a wrong or expired key.
    Crypto,
    /// Authenticated but not from who may send it (e.g. a data packet with a spoofed
    /// inner source, or a relay packet from an unknown endpoint).
    Unauthorized,
    /// Over a configured limit (queue, session count, rate).
    Limit,
    /// No state is waiting for it (a late duplicate), or its counter was seen already or
    /// is behind the replay window (a replay: checked before the tag, so not proof of one).
    Stale,
}

impl DropReason {
    /// Every reason, for status output.
    pub const ALL: [DropReason; 8] = [
        DropReason::Malformed,
        DropReason::Version,
        DropReason::Unexpected,
        DropReason::UnknownKey,
        DropReason::Crypto,
        DropReason::Unauthorized,
        DropReason::Limit,
        DropReason::Stale,
    ];

    /// A short name for logs and status.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::Version => "version",
            DropReason::Unexpected => "unexpected",
            DropReason::UnknownKey => "unknown_key",
            DropReason::Crypto => "crypto",
            DropReason::Unauthorized => "unauthorized",
            DropReason::Limit => "limit",
            DropReason::Stale => "stale",
        }
    }
}

impl From<WireError> for DropReason {
    fn from(e: WireError) -> Self {
        match e {
            WireError::UnsupportedVersion(_) => DropReason::Version,
            _ => DropReason::Malformed,
        }
    }
}

impl From<crate::crypto::CryptoError> for DropReason {
    fn from(e: crate::crypto::CryptoError) -> Self {
        match e {
            crate::crypto::CryptoError::Wire(w) => DropReason::from(w),
            crate::crypto::CryptoError::WrongKeyId => DropReason::UnknownKey,
            // Authentic but already seen (a replay or a late duplicate): not a forgery.
            crate::crypto::CryptoError::Replayed | crate::crypto::CryptoError::TooOld => DropReason::Stale,
            _ => DropReason::Crypto,
        }
    }
}

/// Dropped input, counted by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DropCounters([u64; 8]);

impl DropCounters {
    /// Counts one drop and returns the verdict for the caller to pass on.
    pub fn count(&mut self, why: DropReason) -> Received {
        if let Some(c) = self.0.get_mut(why as usize) {
            *c = c.saturating_add(1);
        }
        Received::Dropped(why)
    }

    /// Drops counted for one reason.
    pub fn get(&self, why: DropReason) -> u64 {
        self.0.get(why as usize).copied().unwrap_or(0)
    }

    /// All drops.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

/// The calls every engine answers; the simulator and generic drivers use this.
pub trait Engine {
    /// A UDP datagram arrived from `from`. `buf` may be decrypted in place.
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, buf: &mut [u8]) -> Received;
    /// A framed message arrived on a stream from `from`; `peer` is the identity TLS
    /// verified (None for plain TCP or a TLS client without a certificate).
    fn handle_stream(
        &mut self,
        now: Instant,
        kind: StreamKind,
        from: SocketAddr,
        peer: Option<&PeerIdentity>,
        frame: &[u8],
    ) -> Received;
    /// The stream with `peer` closed or failed.
    fn handle_stream_closed(&mut self, now: Instant, kind: StreamKind, peer: SocketAddr);
    /// The answer to a [`DnsQuery`].
    fn handle_dns(&mut self, now: Instant, id: u64, answer: DnsAnswer);
    /// The deadline from [`Engine::poll_timeout`] has passed.
    fn handle_timeout(&mut self, now: Instant);
    /// The next message to send.
    fn poll_transmit(&mut self) -> Option<Transmit>;
    /// The next name to look up.
    fn poll_dns(&mut self) -> Option<DnsQuery>;
    /// When to call [`Engine::handle_timeout`] next.
    fn poll_timeout(&self) -> Option<Instant>;
    /// Dropped input so far.
    fn drops(&self) -> &DropCounters;
    /// Whether the engine takes another frame from the stream with `peer` now. An engine
    /// still working on that peer's last request (an AS checking a password) says no; the
    /// driver then leaves the peer's further bytes in its socket, not in memory, and asks
    /// again after the engine's next output.
    fn stream_ready(&self, _kind: StreamKind, _peer: SocketAddr) -> bool {
        true
    }
}

/// Allocates request ids: random start, then sequential, never zero.
#[derive(Debug)]
pub(crate) struct IdSource(u32);

impl IdSource {
    pub(crate) fn new(rng: &mut dyn rand_core::CryptoRngCore) -> Self {
        IdSource(rng.next_u32())
    }

    pub(crate) fn next(&mut self) -> crate::wire::RequestId {
        self.0 = self.0.wrapping_add(1);
        if self.0 == 0 {
            self.0 = 1;
        }
        crate::wire::RequestId(self.0)
    }
}

/// A configuration value an engine cannot work with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The offending field.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    pub(crate) fn new(field: &'static str, problem: impl Into<String>) -> Self {
        ConfigError { field, problem: problem.into() }
    }
}
