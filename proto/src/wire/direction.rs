//! Name resolution (spec 4.3, Fig. 5): the node's Direction Request to its DC, and the
//! DC-to-DC information request and answer (sealed with K_dcdc).
//!
//! ```text
//! DirectionRequest  request_id u32 | peer fqdn | previous session? u32
//! NodeInfoRequest   request_id u32 | fqdn | requester fqdn
//! NodeInfoAnswer    request_id u32 | node info
//! node info         fqdn | virtual v4 (4) | virtual v6 (16) | endpoints (list <= 2)
//!                   | local_addrs (list <= 8) | via_ns u8 | attestation?
//!                   | tails?: mappings (list <= 2 of u8, registration.rs; empty = all
//!                     untested) | announced (list <= 8 of prefix, prefix.rs)?
//! endpoint          observed addr | behind_nat u8
//! ```

use super::pk::Attestation;
use super::prefix::{Prefix, ANNOUNCED_MAX};
use super::registration::{NatMapping, LOCAL_ADDRS_MAX};
use super::{wire_struct, Fqdn, List, RequestId, SessionId, Tails, VirtualAddrs};
use core::net::SocketAddr;

wire_struct! {
    /// Node (MN) -> its DC (K_ntmdc): I want to talk to `peer`.
    pub struct DirectionRequest {
        /// Matches the answer (a Route Direction or a Refusal).
        pub request_id: RequestId,
        /// The name the application asked DNS for.
        pub peer: Fqdn,
        /// After a handover: the session this request replaces.
        pub previous: Option<SessionId>,
    }
}

wire_struct! {
    /// Where a DC sees a node in one address family.
    pub struct Endpoint {
        /// The source address of the node's last registration or keepalive.
        pub observed: SocketAddr,
        /// True if that differs from every address the node reported.
        pub behind_nat: bool,
    }
}

wire_struct! {
    /// What a DC knows of one of its nodes.
    pub struct NodeInfo {
        /// The node.
        pub fqdn: Fqdn,
        /// Its virtual addresses.
        pub virtual_addrs: VirtualAddrs,
        /// Its observed endpoints, at most one per family.
        pub endpoints: List<Endpoint, 2>,
        /// Its own addresses.
        pub local_addrs: List<SocketAddr, LOCAL_ADDRS_MAX>,
        /// True if the DC reaches it through an NS.
        pub via_ns: bool,
        /// Its attested public key (public-key mode).
        pub attestation: Option<Attestation>,
        /// `.0`: the mapping test's verdict for each of `endpoints`, in the same order
        /// (none: all untested); `.1`: the prefixes the node announced at registration
        /// (subnet routes). Earlier builds neither send nor read them.
        pub tail: Tails<List<NatMapping, 2>, List<Prefix, ANNOUNCED_MAX>>,
    }
}

wire_struct! {
    /// DC_MN -> DC_CN (K_dcdc): tell me about `fqdn`.
    pub struct NodeInfoRequest {
        /// Matches the answer.
        pub request_id: RequestId,
        /// The node asked for.
        pub fqdn: Fqdn,
        /// The node asking (for DC_CN's policy and logs).
        pub requester: Fqdn,
    }
}

wire_struct! {
    /// DC_CN -> DC_MN (K_dcdc). A node DC_CN does not know gets a Refusal instead.
    pub struct NodeInfoAnswer {
        /// The request this answers.
        pub request_id: RequestId,
        /// The node.
        pub info: NodeInfo,
    }
}
