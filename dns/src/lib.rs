//! NTMobile's DNS (spec section 2, "Discovery is DNS", and 4.3, the DNS hook), sans-IO like
//! the engines of `ntm_proto`: no sockets, clock or OS randomness here. Time comes in as
//! `now`, randomness from the RNG handed in, datagrams in and out through `handle_*` and
//! `poll_*` calls that a driver connects to its UDP sockets.
//!
//! - [`locator`]: the DC locator, a DNS client that answers the engines' `DnsQuery`
//!   ("which DC serves this name?") from the NS records of the name's zone. The DC, the AS
//!   and the agent use it.
//! - [`stub`]: the agent's DNS hook, the stub the box's resolver points at: names of
//!   NTMobile nodes are answered with the virtual address of a tunnel, every other name is
//!   forwarded to the upstream resolvers.
//!
//! Both ask DNS servers the same way, so that part is written once: a table of queries on
//! the wire, with random ids, retransmission to the next server and the rule for which
//! reply counts, and the checks on a message's header before it is decoded. Every DNS
//! message is built and parsed with `simple-dns`; no DNS encoding is written by hand.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]
#![cfg_attr(not(test), warn(clippy::indexing_slicing))]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod locator;
mod message;
mod queries;
pub mod stub;

pub use locator::{Locator, LocatorConfig, LocatorStats};
pub use stub::{DnsStub, Outcome, StubConfig, StubStats};
