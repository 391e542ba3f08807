//! Route Direction and its acknowledgement (spec 4.4, Fig. 6 and 7). DC_MN tells each
//! node its part in the tunnel: DC -> node sealed with K_ntmdc, DC_MN -> DC_CN sealed with
//! K_dcdc (DC_CN then forwards to CN by CN's keepalive method).
//!
//! ```text
//! RouteDirection     request_id u32 | session u32 | node fqdn | side u8 | role u8
//!                    | peer: fqdn, virtual v4, virtual v6, endpoints (list <= 4)
//!                    | path: 0x01 direct | 0x02 relay: relay addr
//!                    | K_tun (16) | lifetime u32 | K_tmp? (16) | peer attestation?
//! RouteDirectionAck  request_id u32 | session u32
//! ```

use super::pk::Attestation;
use super::{
    code_enum, known_code_codec, wire_struct, Codec, Fqdn, List, Reader, RequestId, SessionId, VirtualAddrs, WireError,
    Writer,
};
use crate::keys::{KTmp, KeyGrant, Tun};
use core::net::SocketAddr;

code_enum! {
    /// Which end of the negotiation a node is; selects its K_tun nonce space.
    pub enum Side {
        /// The node that sent the Direction Request.
        Mn = 0x01,
        /// The node that was asked for.
        Cn = 0x02,
    }
}
known_code_codec!(Side, "side");

code_enum! {
    /// What the node does next.
    pub enum TunnelRole {
        /// Make K_mncn and send the Tunnel Request.
        Initiate = 0x01,
        /// Wait for the peer's Tunnel Request.
        Await = 0x02,
    }
}
known_code_codec!(TunnelRole, "tunnel role");

wire_struct! {
    /// The peer as the node needs to know it.
    pub struct PeerInfo {
        /// The peer's name.
        pub fqdn: Fqdn,
        /// The peer's virtual addresses.
        pub virtual_addrs: VirtualAddrs,
        /// Addresses where the peer may be reached directly, best first (its observed
        /// endpoints). Used for the direct path and for route optimization.
        pub endpoints: List<SocketAddr, 4>,
    }
}

/// How the tunnel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Straight between the nodes' real addresses.
    Direct,
    /// Through a Relay Server at this address.
    Relay(SocketAddr),
}

impl Codec for Path {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        match r.u8()? {
            0x01 => Ok(Path::Direct),
            0x02 => Ok(Path::Relay(Codec::decode(r)?)),
            _ => Err(WireError::BadValue("path")),
        }
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        match self {
            Path::Direct => w.u8(0x01),
            Path::Relay(a) => {
                w.u8(0x02)?;
                a.encode(w)
            }
        }
    }
    fn encoded_len(&self) -> usize {
        1 + match self {
            Path::Direct => 0,
            Path::Relay(a) => a.encoded_len(),
        }
    }
}

wire_struct! {
    /// DC -> node (or DC_MN -> DC_CN for CN): set up your end of this tunnel.
    pub struct RouteDirection {
        /// Matches the acknowledgement.
        pub request_id: RequestId,
        /// The negotiation; also the tunnel's session id.
        pub session: SessionId,
        /// The node this direction is for.
        pub node: Fqdn,
        /// Whether the node is MN or CN in this negotiation.
        pub side: Side,
        /// Whether it sends or awaits the Tunnel Request.
        pub role: TunnelRole,
        /// The other end.
        pub peer: PeerInfo,
        /// Direct, or through which RS.
        pub path: Path,
        /// K_tun for Tunnel Request and hole punching.
        pub k_tun: KeyGrant<Tun>,
        /// K_tmp to wrap K_mncn; absent in public-key mode.
        pub k_tmp: Option<KTmp>,
        /// The peer's attested public key (public-key mode).
        pub peer_attestation: Option<Attestation>,
    }
}

wire_struct! {
    /// Node -> DC, or DC_CN -> DC_MN: the direction is in place.
    pub struct RouteDirectionAck {
        /// The direction this acknowledges.
        pub request_id: RequestId,
        /// Its session.
        pub session: SessionId,
    }
}
