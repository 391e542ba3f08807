//! Route Direction and its acknowledgement (spec 4.4, Fig. 6 and 7). DC_MN tells each
//! node its part in the tunnel: DC -> node sealed with K_ntmdc, DC_MN -> DC_CN sealed with
//! K_dcdc (DC_CN then forwards to CN by CN's keepalive method).
//!
//! ```text
//! RouteDirection     request_id u32 | session u32 | node fqdn | side u8 | role u8
//!                    | peer: fqdn, virtual v4, virtual v6, endpoints (list <= 4)
//!                    | path: 0x01 direct | 0x02 relay: relay addr | 0x03 gateway: RS addr
//!                    | K_tun (16) | lifetime u32 | K_tmp? (16) | peer attestation?
//!                    | tails?: traversal u8 (0x00 usual, 0x01 open ports, 0x02 guess ports)
//!                      | peer's announced prefixes (list <= 8 of prefix)?
//! RouteDirectionAck  request_id u32 | session u32
//! GatewayOffer       all u8 | names (list <= 16 fqdn)
//! ```
//!
//! A Route Direction with the gateway path is for a tunnel to an ordinary host (one
//! without NTMobile) through the RS at that address: the peer is the host's name, its
//! virtual addresses the synthetic ones the DC gave it, with no endpoints; the node sends
//! no Tunnel Request (there is no peer to answer it) and seals its data under the key
//! derived from K_tun ([`crate::keys::KTun::gateway_data_key`]) for the RS.

use super::pk::Attestation;
use super::prefix::{Prefix, ANNOUNCED_MAX};
use super::{
    code_enum, known_code_codec, wire_struct, Codec, Fqdn, List, Reader, RequestId, SessionId, Tails, VirtualAddrs,
    WireError, Writer,
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

code_enum! {
    /// How a relayed tunnel looks for a direct path besides route optimization.
    pub enum Traversal {
        /// Route optimization only: probe the peer's observed addresses.
        Usual = 0x00,
        /// This node's NAT maps per destination and the peer's does not: open many
        /// mappings toward the peer (many sockets, one probe each) for its guesses to meet.
        OpenPorts = 0x01,
        /// The peer's NAT maps per destination and this node's does not: send probes to
        /// many ports of the peer's outside address, one of which may meet its mappings.
        GuessPorts = 0x02,
    }
}
known_code_codec!(Traversal, "traversal");

// code_enum! holds the derives; the default of a field an earlier build does not send.
#[allow(clippy::derivable_impls)]
impl Default for Traversal {
    fn default() -> Self {
        Traversal::Usual
    }
}

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
    /// To an ordinary host, through the Relay Server at this address as its gateway.
    Gateway(SocketAddr),
}

impl Codec for Path {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        match r.u8()? {
            0x01 => Ok(Path::Direct),
            0x02 => Ok(Path::Relay(Codec::decode(r)?)),
            0x03 => Ok(Path::Gateway(Codec::decode(r)?)),
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
            Path::Gateway(a) => {
                w.u8(0x03)?;
                a.encode(w)
            }
        }
    }
    fn encoded_len(&self) -> usize {
        1 + match self {
            Path::Direct => 0,
            Path::Relay(a) | Path::Gateway(a) => a.encoded_len(),
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
        /// `.0`: what to try for a direct path while relayed (usual for every node of
        /// earlier builds); `.1`: the peer's announced prefixes (subnet routes into this
        /// tunnel). Absent: usual and none; earlier builds neither send nor read them.
        pub tail: Tails<Traversal, List<Prefix, ANNOUNCED_MAX>>,
    }
}

wire_struct! {
    /// DC -> node, after its Registration Response when the DC is a gateway to ordinary
    /// hosts: the names the node's DNS hook should ask the DC about rather than ordinary
    /// DNS. A node of an earlier build drops it (a type it does not know).
    pub struct GatewayOffer {
        /// Every name outside the NTM domains.
        pub all: bool,
        /// These names and the names below them.
        pub names: List<Fqdn, 16>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Key;
    use crate::wire::{Lifetime, Message, MsgType};

    fn direction() -> RouteDirection {
        let fq = |s| Fqdn::new(s).unwrap();
        RouteDirection {
            request_id: RequestId(0x51),
            session: SessionId(0x5e55_1011),
            node: fq("mn.a.example"),
            side: Side::Mn,
            role: TunnelRole::Initiate,
            peer: PeerInfo {
                fqdn: fq("cn.b.example"),
                virtual_addrs: VirtualAddrs { v4: [100, 64, 0, 2].into(), v6: "fd00::2".parse().unwrap() },
                endpoints: List::from_vec(vec!["198.51.100.7:61000".parse().unwrap()]).unwrap(),
            },
            path: Path::Relay("[2001:db8:5::9]:3478".parse().unwrap()),
            k_tun: KeyGrant { key: Key::from_bytes([0x11; 16]), lifetime: Lifetime(600) },
            k_tmp: Some(KTmp::from_bytes([0x22; 16])),
            peer_attestation: None,
            tail: Tails(Traversal::GuessPorts, List::new()),
        }
    }

    fn parse(body: &[u8]) -> Result<Message, WireError> {
        Message::parse_body(MsgType::RouteDirection, body)
    }

    #[test]
    fn a_truncated_route_direction_is_refused() {
        let msg = direction();
        let body = Message::RouteDirection(msg.clone()).body_to_vec();
        assert_eq!(body.len(), msg.encoded_len());
        assert_eq!(parse(&body), Ok(Message::RouteDirection(msg.clone())));
        // Without its last byte it is the same direction as an earlier build sends it,
        // with no search of ports (the traversal is a `Tail`).
        let usual = RouteDirection { tail: Tails(Traversal::Usual, List::new()), ..msg.clone() };
        assert_eq!(parse(&body[..body.len() - 1]), Ok(Message::RouteDirection(usual)));
        // Cut anywhere before that: the input ends before the format does.
        for n in 0..body.len() - 1 {
            assert_eq!(parse(&body[..n]), Err(WireError::Truncated), "cut at {n} of {}", body.len());
        }
        // A length byte that claims more than the body holds: the node's name, 255 bytes.
        let mut long_name = body.clone();
        long_name[8] = 0xff;
        assert_eq!(parse(&long_name), Err(WireError::Truncated));
        // The peer's endpoint count over its cap of 4 is refused before anything is read.
        let count_at = 4 + 4 + msg.node.encoded_len() + 1 + 1 + msg.peer.fqdn.encoded_len() + 20;
        assert_eq!(body[count_at], 1);
        let mut many = body.clone();
        many[count_at] = 5;
        assert_eq!(parse(&many), Err(WireError::TooLong("list")));
        // A byte more is an empty list of prefixes written out: refused (one encoding).
        let mut longer = body.clone();
        longer.push(0);
        assert_eq!(parse(&longer), Err(WireError::BadValue("tail field written as its default")));
        // The peer's announced prefixes follow the traversal, written even when usual.
        let lan = Prefix::new([192, 168, 2, 0].into(), 24).unwrap();
        let routed = RouteDirection { tail: Tails(Traversal::Usual, List::from_vec(vec![lan]).unwrap()), ..msg };
        let b = Message::RouteDirection(routed.clone()).body_to_vec();
        assert_eq!(&b[body.len() - 1..], &[0x00, 1, 4, 24, 192, 168, 2, 0]);
        assert_eq!(parse(&b), Ok(Message::RouteDirection(routed)));
        let mut more = b;
        more.push(0);
        assert_eq!(parse(&more), Err(WireError::TrailingBytes));
    }

    #[test]
    fn a_gateway_path_and_offer_round_trip() {
        let msg =
            RouteDirection { path: Path::Gateway("192.0.2.30:4461".parse().unwrap()), k_tmp: None, ..direction() };
        let body = Message::RouteDirection(msg.clone()).body_to_vec();
        assert_eq!(parse(&body), Ok(Message::RouteDirection(msg.clone())));
        // The path's code: 0x03, then the RS's address (family 4, address, port).
        let at = 4 + 4 + msg.node.encoded_len() + 2 + msg.peer.encoded_len();
        assert_eq!(body.get(at..at + 8), Some(&[0x03, 0x04, 192, 0, 2, 30, 0x11, 0x6d][..]));
        let mut unknown = body.clone();
        unknown[at] = 0x04;
        assert_eq!(parse(&unknown), Err(WireError::BadValue("path")));

        let offer =
            GatewayOffer { all: false, names: List::from_vec(vec![Fqdn::new("example.org").unwrap()]).unwrap() };
        let body = Message::GatewayOffer(offer.clone()).body_to_vec();
        assert_eq!(body, [&[0x00, 0x01, 0x0b][..], b"example.org"].concat());
        assert_eq!(Message::parse_body(MsgType::GatewayOffer, &body), Ok(Message::GatewayOffer(offer)));
        for n in 0..body.len() {
            assert_eq!(Message::parse_body(MsgType::GatewayOffer, &body[..n]), Err(WireError::Truncated));
        }
    }
}
