//! DC <-> RS (spec 4.4, Fig. 7), sealed with K_dcrs: Relay Direction sets up a relay
//! session knowing K_tun only (never K_tmp); Relay Status lets the DC measure each RS's
//! round-trip time and load to pick the best one.
//!
//! ```text
//! RelayDirection     request_id u32 | session u32 | K_tun (16) | lifetime u32
//! RelayDirectionAck  request_id u32 | session u32 | relay_addrs (list <= 4)
//! RelayStatus        request_id u32
//! RelayStatusAck     request_id u32 | sessions u32 | capacity u32 | relay_addrs (list <= 4)
//! GatewayDirection   request_id u32 | session u32 | K_tun (16) | lifetime u32 | node v4 | synthetic v4 | real v4
//! ```

use super::{wire_struct, List, RequestId, SessionId};
use crate::keys::{KeyGrant, Tun};
use core::net::{Ipv4Addr, SocketAddr};

wire_struct! {
    /// DC_MN -> RS: relay this session.
    pub struct RelayDirection {
        /// Matches the acknowledgement.
        pub request_id: RequestId,
        /// The session to relay.
        pub session: SessionId,
        /// K_tun, to authenticate the nodes' hole punches and Tunnel Request/Response.
        pub k_tun: KeyGrant<Tun>,
    }
}

wire_struct! {
    /// RS -> DC_MN: the session exists.
    pub struct RelayDirectionAck {
        /// The direction this acknowledges.
        pub request_id: RequestId,
        /// Its session.
        pub session: SessionId,
        /// The relay's addresses the nodes should send to (one per family it has).
        pub relay_addrs: List<SocketAddr, 4>,
    }
}

wire_struct! {
    /// DC -> RS: how are you?
    pub struct RelayStatus {
        /// Matches the answer.
        pub request_id: RequestId,
    }
}

wire_struct! {
    /// RS -> DC: load and addresses.
    pub struct RelayStatusAck {
        /// The request this answers.
        pub request_id: RequestId,
        /// Sessions relayed now.
        pub sessions: u32,
        /// Most sessions the RS accepts.
        pub capacity: u32,
        /// The relay's addresses.
        pub relay_addrs: List<SocketAddr, 4>,
    }
}

wire_struct! {
    /// DC_MN -> RS: be the gateway of this box's session to an ordinary host (one without
    /// NTMobile). The RS opens the box's Data under K_tun (the data key derived from it,
    /// see [`crate::keys::KTun::gateway_data_key`]), sends packets to `synthetic` on to
    /// `real` from its own address, and returns the answers. Acknowledged with a
    /// [`RelayDirectionAck`].
    pub struct GatewayDirection {
        /// Matches the acknowledgement.
        pub request_id: RequestId,
        /// The box's session.
        pub session: SessionId,
        /// K_tun, for the box's hole punches and (derived) its data.
        pub k_tun: KeyGrant<Tun>,
        /// The box's virtual IPv4 address: the only source its packets may have.
        pub node: Ipv4Addr,
        /// The address the box was given for the ordinary host: the only destination.
        pub synthetic: Ipv4Addr,
        /// The ordinary host's real address, where the RS sends the packets.
        pub real: Ipv4Addr,
    }
}
