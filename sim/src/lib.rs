//! A deterministic network simulator for NTMobile engines.
//!
//! [`Sim`] hosts any number of [`ntm_proto::engine::Engine`]s and connects them over a
//! virtual network in virtual time, so that whole exchanges (login, registration, direct
//! and relayed tunnels, handover) run in one process, reproducibly from a seed:
//!
//! - **Topology** ([`topology`]): a dual-stack internet realm, and access networks under
//!   it whose IPv4 goes through a NAT box and whose IPv6 is routed as is; nesting gives
//!   double NAT. Each uplink and LAN has latency, jitter (which reorders) and loss.
//! - **NATs** ([`nat`]): RFC 4787 mapping and filtering behaviours, port preservation or
//!   random ports, UDP and TCP mapping timeouts, drop counters.
//! - **Hosts** ([`host`]): an engine, its addresses and port (and extra UDP sockets:
//!   a node's for finding direct paths, the DC's mapping port); mobility
//!   ([`Sim::move_host`]), failure ([`Sim::set_down`]), restart ([`Sim::replace_engine`]),
//!   captures of everything sent and received, and the inner IP packets the engine
//!   decrypted.
//! - **Streams** ([`stream`]): TCP and TLS connections with NAT mappings, a round trip to
//!   connect, certificate name checks, in-order lossless delivery, breakage on NAT expiry.
//! - **DNS** ([`dns`]): which DC serves which zone, answered after a latency.
//!
//! Determinism: every random choice of the network comes from one ChaCha20 RNG seeded by
//! [`Sim::new`]; engines get their own seeded RNGs from [`Sim::rng_for`]. Nothing reads a
//! clock, iterates a hash map or depends on addresses in memory, so one seed gives one run,
//! bit for bit.
//!
//! ```
//! use ntm_sim::{probe::Probe, RealmConfig, RealmId, Sim};
//! use ntm_proto::time::Duration;
//!
//! let mut sim = Sim::new(1);
//! let home = sim.add_realm("home", RealmId::INTERNET, RealmConfig::v4_only([203, 0, 113, 1].into()));
//! let server = sim.add_host("server", RealmId::INTERNET, &[[192, 0, 2, 1].into()], 9000, None, Probe::echo());
//! let phone = sim.add_host("phone", home, &[[192, 168, 1, 2].into()], 4000, None, Probe::new());
//!
//! let to = sim.addr_v4(server).unwrap();
//! sim.engine::<Probe>(phone).send(to, b"ping".to_vec());
//! sim.run_for(Duration::from_secs(1));
//!
//! // The server saw the NAT's address; the echo came back through the mapping.
//! let seen = sim.engine_ref::<Probe>(server).datagrams();
//! assert_eq!(seen[0].0, "203.0.113.1:4000".parse().unwrap());
//! assert_eq!(sim.engine_ref::<Probe>(phone).datagrams(), vec![(to, b"ping".to_vec())]);
//! ```

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod deploy;
pub mod dns;
pub mod host;
pub mod nat;
pub mod probe;
mod sim;
pub mod stream;
pub mod topology;

pub use dns::{Dns, DnsLookup};
pub use host::{AnyEngine, Captured, Carrier, Direction, HostId, HostStats, EVENTS_MAX, SOCKETS_MAX};
pub use nat::{Filtering, Mapping, NatConfig, NatStats, PortAllocation};
pub use sim::{Sim, SimStats};
pub use topology::{LinkConfig, LinkId, LinkStats, RealmConfig, RealmId};
