//! Registration and UDP keepalive (spec 4.2, Fig. 3 and 4), node <-> DC over UDP, sealed
//! with K_ntmdc.
//!
//! ```text
//! RegistrationRequest   request_id u32 | local_addrs (list <= 8) | keepalive method
//!                       | ns_key_lost key_id u32? | announced (list <= 8 of prefix)?
//! keepalive method      0x01 UDP | 0x02 TCP via NS | 0x03 push: token (u16 len <= 512)
//! RegistrationResponse  request_id u32 | virtual v4 (4) | virtual v6 (16) | observed addr
//!                       | behind_nat u8 | keepalive_interval u16 (s) | ns grant?
//! ns grant              ns fqdn | ns addr | key_id u32 | K_ntmns (16) | lifetime u32
//! Keepalive             request_id u32
//! KeepaliveAck          request_id u32 | observed addr
//! MappingOffer          port u16                            (after a Registration Response)
//! MappingProbe          request_id u32                      (to the DC's mapping port)
//! MappingProbeAck       request_id u32 | observed addr | mapping u8   (from that port)
//! ```
//!
//! The DC offers the test in a message of its own, not in the Registration Response, so
//! that boxes of earlier builds (which drop a message type they do not know) still read
//! every Registration Response.
//!
//! The mapping test (RFC 5780 section 4.3, with a second port instead of a second
//! address): the node sends a Mapping Probe from its tunnel port to the DC's second UDP
//! port, and the DC compares where it saw the probe with where it saw the registration.
//! The same outside port means the node's NAT keeps one mapping per inside socket
//! (endpoint-independent); another port means a new mapping per destination.
//! Addresses are `family u8 (4|6) | address | port u16`.

use super::prefix::{Prefix, ANNOUNCED_MAX};
use super::{
    code_enum, known_code_codec, wire_struct, Bytes, Codec, Fqdn, KeyId, List, Reader, RequestId, Tail, VirtualAddrs,
    WireError, Writer,
};
use crate::keys::{KeyGrant, NtmNs};
use core::net::SocketAddr;

/// Most local addresses a node reports.
pub const LOCAL_ADDRS_MAX: usize = 8;
/// Longest push-notification device token.
pub const PUSH_TOKEN_MAX: usize = 512;

code_enum! {
    /// How the node's NAT maps its tunnel socket (RFC 4787 section 4.1), as the DC's
    /// mapping test found it.
    pub enum NatMapping {
        /// Not tested (yet), or the test could not tell (another outside address).
        Untested = 0x00,
        /// One outside port whatever the destination ("cone"): a peer that knows it can
        /// reach the node there once the node has sent to the peer.
        Independent = 0x01,
        /// A new outside port per destination ("symmetric"): nobody can know the port
        /// the node's next destination will see.
        Dependent = 0x02,
    }
}
known_code_codec!(NatMapping, "NAT mapping");

impl NatMapping {
    /// The verdict's name in status output: "untested", "independent", "dependent".
    pub fn label(self) -> &'static str {
        match self {
            NatMapping::Independent => "independent",
            NatMapping::Dependent => "dependent",
            NatMapping::Untested | NatMapping::Unknown(_) => "untested",
        }
    }
}

// code_enum! holds the derives; the default of a field an earlier build does not send.
#[allow(clippy::derivable_impls)]
impl Default for NatMapping {
    fn default() -> Self {
        NatMapping::Untested
    }
}

code_enum! {
    /// Keepalive method code points.
    pub enum KeepaliveKind {
        /// UDP keepalive to the DC every ~20 s.
        Udp = 0x01,
        /// TCP to an NS with an ~hourly keepalive.
        Ns = 0x02,
        /// A push service (FCM/APNs) token.
        Push = 0x03,
    }
}

/// How the DC can reach the node later (spec 4.2 step 4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeepaliveMethod {
    /// The node keeps its NAT mapping open with UDP keepalives to the DC.
    Udp,
    /// The node keeps a TCP connection to an NS; the DC reaches it through the NS.
    Ns,
    /// The DC reaches the node through a push service with this device token.
    Push(Bytes<PUSH_TOKEN_MAX>),
}

impl KeepaliveMethod {
    /// The method's code point.
    pub fn kind(&self) -> KeepaliveKind {
        match self {
            KeepaliveMethod::Udp => KeepaliveKind::Udp,
            KeepaliveMethod::Ns => KeepaliveKind::Ns,
            KeepaliveMethod::Push(_) => KeepaliveKind::Push,
        }
    }
}

impl Codec for KeepaliveMethod {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        match KeepaliveKind::from(r.u8()?) {
            KeepaliveKind::Udp => Ok(KeepaliveMethod::Udp),
            KeepaliveKind::Ns => Ok(KeepaliveMethod::Ns),
            KeepaliveKind::Push => Ok(KeepaliveMethod::Push(Codec::decode(r)?)),
            KeepaliveKind::Unknown(_) => Err(WireError::BadValue("keepalive method")),
        }
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.u8(u8::from(self.kind()))?;
        match self {
            KeepaliveMethod::Push(t) => t.encode(w),
            _ => Ok(()),
        }
    }
    fn encoded_len(&self) -> usize {
        1 + match self {
            KeepaliveMethod::Push(t) => t.encoded_len(),
            _ => 0,
        }
    }
}

wire_struct! {
    /// Node -> DC: here I am (at start-up and after every network change).
    pub struct RegistrationRequest {
        /// Matches the response.
        pub request_id: RequestId,
        /// The node's own (pre-NAT) addresses and its tunnel port.
        pub local_addrs: List<SocketAddr, LOCAL_ADDRS_MAX>,
        /// How the DC can reach the node later.
        pub keepalive: KeepaliveMethod,
        /// The K_ntmns id our NS said it does not know (it restarted or dropped the
        /// key): the DC makes a fresh K_ntmns instead of granting that one again.
        pub ns_key_lost: Option<KeyId>,
        /// The LAN prefixes the node routes for (subnet routes, `lan.announce`), for the DC
        /// to pass on to its peers (none: earlier builds neither send nor read it).
        pub announced: Tail<List<Prefix, ANNOUNCED_MAX>>,
    }
}

wire_struct! {
    /// What the DC tells a node about its NS.
    pub struct NsGrant {
        /// The NS's name.
        pub ns_fqdn: Fqdn,
        /// The NS's TCP address.
        pub ns_addr: SocketAddr,
        /// The id of K_ntmns.
        pub key_id: KeyId,
        /// K_ntmns and its lifetime.
        pub k_ntmns: KeyGrant<NtmNs>,
    }
}

wire_struct! {
    /// DC -> node: your virtual addresses and what I saw of you.
    pub struct RegistrationResponse {
        /// The request this answers.
        pub request_id: RequestId,
        /// The node's virtual addresses, stable across registrations.
        pub virtual_addrs: VirtualAddrs,
        /// The source address the DC saw (the NAT's outside address if behind NAT).
        pub observed: SocketAddr,
        /// The DC's verdict: the observed address is none of the node's own.
        pub behind_nat: bool,
        /// UDP keepalive interval in seconds (0 when not keeping alive over UDP).
        pub keepalive_interval: u16,
        /// The NS to use, when the method is TCP via NS.
        pub ns: Option<NsGrant>,
    }
}

wire_struct! {
    /// Node -> DC every keepalive interval.
    pub struct Keepalive {
        /// Matches the acknowledgement.
        pub request_id: RequestId,
    }
}

wire_struct! {
    /// DC -> node; the observed address lets the node notice NAT rebinding.
    pub struct KeepaliveAck {
        /// The keepalive this acknowledges.
        pub request_id: RequestId,
        /// The source address the DC saw.
        pub observed: SocketAddr,
    }
}

wire_struct! {
    /// DC -> node, behind a NAT, after its Registration Response: test your NAT's mapping
    /// by sending a Mapping Probe to this port of my address.
    pub struct MappingOffer {
        /// The DC's mapping port.
        pub port: u16,
    }
}

wire_struct! {
    /// Node -> the DC's mapping port: where do you see me from here?
    pub struct MappingProbe {
        /// Matches the acknowledgement.
        pub request_id: RequestId,
    }
}

wire_struct! {
    /// DC -> node, from the mapping port: what the DC saw and concluded.
    pub struct MappingProbeAck {
        /// The probe this acknowledges.
        pub request_id: RequestId,
        /// The source address the DC saw on its mapping port.
        pub observed: SocketAddr,
        /// The verdict, from the registration's observed address and this one.
        pub mapping: NatMapping,
    }
}
