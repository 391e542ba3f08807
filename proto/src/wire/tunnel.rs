//! Tunnel creation between nodes (spec 4.4): Tunnel Request (sealed with K_tun) carries
//! K_mncn wrapped with K_tmp or the peer's public key; Tunnel Response (sealed with K_mncn)
//! confirms it. Hole Punch (K_tun) registers a node's NAT mapping at the RS; Path Probe
//! (K_mncn) tests a direct path for route optimization and after handover. For all of
//! these the header's key id is the session id.
//!
//! ```text
//! TunnelRequest   initiator fqdn | virtual v4 (4) | virtual v6 (16) | wrapped key
//! wrapped key     0x01 K_tmp: ciphertext (16) | tag (16)
//!                 0x02 public: ephemeral (33) | ciphertext (16) | tag (16) | signature (64)
//! TunnelResponse  virtual v4 (4) | virtual v6 (16)
//! HolePunch       side u8 | release u8
//! HolePunchAck    observed addr
//! PathProbe       probe_id u32
//! PathProbeAck    probe_id u32 | observed addr
//! ```

use super::pk::{PublicWrap, TmpWrap};
use super::route::Side;
use super::{wire_struct, Codec, Fqdn, Reader, VirtualAddrs, WireError, Writer};
use core::net::SocketAddr;

/// K_mncn as carried in the Tunnel Request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WrappedKey {
    /// Wrapped with K_tmp (symmetric mode).
    Tmp(TmpWrap),
    /// Wrapped for the peer's public key and signed (public-key mode).
    Public(PublicWrap),
}

impl Codec for WrappedKey {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        match r.u8()? {
            0x01 => Ok(WrappedKey::Tmp(Codec::decode(r)?)),
            0x02 => Ok(WrappedKey::Public(Codec::decode(r)?)),
            _ => Err(WireError::BadValue("wrapped key kind")),
        }
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        match self {
            WrappedKey::Tmp(t) => {
                w.u8(0x01)?;
                t.encode(w)
            }
            WrappedKey::Public(p) => {
                w.u8(0x02)?;
                p.encode(w)
            }
        }
    }
    fn encoded_len(&self) -> usize {
        1 + match self {
            WrappedKey::Tmp(t) => t.encoded_len(),
            WrappedKey::Public(p) => p.encoded_len(),
        }
    }
}

wire_struct! {
    /// Initiator -> responder (directly or through the RS), sealed with K_tun.
    pub struct TunnelRequest {
        /// The initiator's name.
        pub initiator: Fqdn,
        /// The initiator's virtual addresses.
        pub virtual_addrs: VirtualAddrs,
        /// The new K_mncn, wrapped.
        pub wrapped: WrappedKey,
    }
}

wire_struct! {
    /// Responder -> initiator, sealed with K_mncn: proof the responder holds the key.
    pub struct TunnelResponse {
        /// The responder's virtual addresses.
        pub virtual_addrs: VirtualAddrs,
    }
}

wire_struct! {
    /// Node -> RS (K_tun): my NAT mapping for this session is where this came from.
    pub struct HolePunch {
        /// Which node sends it.
        pub side: Side,
        /// True when the node is done with the relay (route optimization succeeded).
        pub release: bool,
    }
}

wire_struct! {
    /// RS -> node (K_tun): mapping recorded.
    pub struct HolePunchAck {
        /// The source address the RS saw.
        pub observed: SocketAddr,
    }
}

wire_struct! {
    /// Node -> node (K_mncn) over a candidate direct path.
    pub struct PathProbe {
        /// Matches the acknowledgement.
        pub probe_id: u32,
    }
}

wire_struct! {
    /// Node -> node (K_mncn): the probe arrived; the direct path works both ways.
    pub struct PathProbeAck {
        /// The probe this acknowledges.
        pub probe_id: u32,
        /// The source address the probe came from.
        pub observed: SocketAddr,
    }
}
