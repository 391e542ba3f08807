//! Realms and links: where hosts live and what a packet crosses on its way.
//!
//! The topology is a tree of realms. The root, [`RealmId::INTERNET`], is the global
//! dual-stack internet. Every other realm is an access network hanging off a parent realm
//! by an uplink; its IPv4 leaves through a NAT box whose outside address lives in the
//! parent, and its IPv6 (global addresses) is routed without translation. A realm inside a
//! realm behind a CGN gives double NAT. IPv4 addresses are unique within a realm (private
//! ranges repeat across realms); IPv6 addresses are unique in the whole tree.
//!
//! Latency model: a datagram pays the uplink of every realm boundary it crosses, then the
//! LAN of the realm it is delivered in (the last hop to the host). Each crossing of a
//! [`LinkConfig`] draws its own loss and jitter, so jitter reorders packets.

use crate::nat::{Nat, NatConfig};
use core::net::Ipv4Addr;
use ntm_proto::time::Duration;

/// A realm (address space) of the simulated network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RealmId(pub(crate) usize);

impl RealmId {
    /// The global internet, root of every topology.
    pub const INTERNET: RealmId = RealmId(0);
}

/// A link's behaviour. Each packet crossing it is lost with probability `loss`, else takes
/// `latency` plus a uniform draw from `0..=jitter` (millisecond resolution).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkConfig {
    /// Fixed one-way delay.
    pub latency: Duration,
    /// Upper bound of the random extra delay; enough of it reorders packets.
    pub jitter: Duration,
    /// Probability in 0..=1 that a datagram is lost. Streams never lose frames (TCP
    /// retransmits) but still pay latency and jitter.
    pub loss: f64,
}

impl LinkConfig {
    /// A link with this latency, no jitter and no loss.
    pub const fn new(latency: Duration) -> Self {
        LinkConfig { latency, jitter: Duration::ZERO, loss: 0.0 }
    }

    /// The same link with this jitter.
    pub const fn with_jitter(self, jitter: Duration) -> Self {
        LinkConfig { jitter, ..self }
    }

    /// The same link with this loss probability.
    pub const fn with_loss(self, loss: f64) -> Self {
        LinkConfig { loss, ..self }
    }
}

/// The default uplink of an access network: 10 ms, clean.
pub const DEFAULT_UPLINK: LinkConfig = LinkConfig::new(Duration::from_millis(10));
/// The default LAN of an access network: 1 ms, clean.
pub const DEFAULT_LAN: LinkConfig = LinkConfig::new(Duration::from_millis(1));
/// The default last hop inside the internet realm (to a server): 20 ms, clean.
pub const DEFAULT_CORE: LinkConfig = LinkConfig::new(Duration::from_millis(20));

/// How an access network is built. Start from [`RealmConfig::dual_stack`],
/// [`RealmConfig::v4_only`] or [`RealmConfig::v6_only`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RealmConfig {
    /// Hosts here may have IPv4 addresses (behind the NAT). Needs a parent with IPv4.
    pub has_v4: bool,
    /// Hosts here may have global IPv6 addresses. Needs a parent with IPv6.
    pub has_v6: bool,
    /// The NAT's address in the parent realm; required when `has_v4`.
    pub nat_outside: Option<Ipv4Addr>,
    /// The NAT's behaviour.
    pub nat: NatConfig,
    /// The link to the parent; `None` follows the simulator's default uplink.
    pub uplink: Option<LinkConfig>,
    /// The last hop to hosts in this realm.
    pub lan: LinkConfig,
}

impl RealmConfig {
    /// IPv4 behind a default NAT at `outside`, plus routed IPv6.
    pub fn dual_stack(outside: Ipv4Addr) -> Self {
        RealmConfig {
            has_v4: true,
            has_v6: true,
            nat_outside: Some(outside),
            nat: NatConfig::default(),
            uplink: None,
            lan: DEFAULT_LAN,
        }
    }

    /// IPv4 only, behind a default NAT at `outside`.
    pub fn v4_only(outside: Ipv4Addr) -> Self {
        RealmConfig { has_v6: false, ..Self::dual_stack(outside) }
    }

    /// IPv6 only: no NAT.
    pub fn v6_only() -> Self {
        RealmConfig { has_v4: false, has_v6: true, nat_outside: None, ..Self::dual_stack(Ipv4Addr::UNSPECIFIED) }
    }

    /// The same realm with this NAT behaviour.
    pub fn with_nat(self, nat: NatConfig) -> Self {
        RealmConfig { nat, ..self }
    }

    /// The same realm with this uplink.
    pub fn with_uplink(self, uplink: LinkConfig) -> Self {
        RealmConfig { uplink: Some(uplink), ..self }
    }

    /// The same realm with this LAN.
    pub fn with_lan(self, lan: LinkConfig) -> Self {
        RealmConfig { lan, ..self }
    }
}

/// A link whose traffic is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinkId {
    /// The uplink from a realm to its parent (the internet has none).
    Uplink(RealmId),
    /// The last hop to the hosts of a realm.
    Lan(RealmId),
}

/// Datagrams that crossed a link, and datagrams it lost. Stream frames are not counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Datagrams that made it across.
    pub delivered: u64,
    /// Datagrams the link dropped.
    pub lost: u64,
}

/// A realm as the simulator keeps it.
#[derive(Debug)]
pub(crate) struct Realm {
    pub(crate) name: String,
    pub(crate) parent: Option<RealmId>,
    pub(crate) has_v4: bool,
    pub(crate) has_v6: bool,
    /// The IPv4 NAT on the uplink; None for the internet and IPv6-only realms.
    pub(crate) nat: Option<Nat>,
    pub(crate) uplink: Option<LinkConfig>,
    pub(crate) lan: LinkConfig,
    pub(crate) uplink_stats: LinkStats,
    pub(crate) lan_stats: LinkStats,
}
