//! The union of all bodies, keyed by the header's type code.

use super::data::DataBody;
use super::direction::{DirectionRequest, NodeInfoAnswer, NodeInfoRequest};
use super::keyshare::{KeyShare, KeyShareAck};
use super::login::{KeyDistribution, LoginRequest, LoginResponse, NtmAck};
use super::notification::{
    NotificationAck, NotificationRegistration, Notify, NotifyAck, NsKeepalive, NsKeepaliveAck, NsKeyAck,
    NsKeyDistribution, NsProbe,
};
use super::refusal::Refusal;
use super::registration::{
    Keepalive, KeepaliveAck, MappingOffer, MappingProbe, MappingProbeAck, RegistrationRequest, RegistrationResponse,
};
use super::relay::{GatewayDirection, RelayDirection, RelayDirectionAck, RelayStatus, RelayStatusAck};
use super::route::{GatewayOffer, RouteDirection, RouteDirectionAck};
use super::tunnel::{HolePunch, HolePunchAck, PathProbe, PathProbeAck, TunnelRequest, TunnelResponse};
use super::{code_enum, Codec, Reader, WireError, Writer};

macro_rules! messages {
    ($( $(#[$m:meta])* $variant:ident($body:ty) = $code:literal, )*) => {
        code_enum! {
            /// Message type code points (the header's second byte).
            pub enum MsgType {
                $( $(#[$m])* $variant = $code, )*
            }
        }

        /// Any message body, tagged by its type.
        #[derive(Clone, Debug, PartialEq, Eq)]
        #[allow(clippy::large_enum_variant)]
        pub enum Message {
            $( $(#[$m])* $variant($body), )*
        }

        $(
            impl From<$body> for Message {
                fn from(b: $body) -> Self {
                    Message::$variant(b)
                }
            }
        )*

        impl Message {
            /// The body's type code.
            pub fn msg_type(&self) -> MsgType {
                match self {
                    $( Message::$variant(_) => MsgType::$variant, )*
                }
            }

            /// Parses a body of type `ty`; the body must be consumed exactly.
            pub fn parse_body(ty: MsgType, body: &[u8]) -> Result<Self, WireError> {
                let mut r = Reader::new(body);
                let msg = match ty {
                    $( MsgType::$variant => Message::$variant(<$body as Codec>::decode(&mut r)?), )*
                    MsgType::Unknown(t) => return Err(WireError::UnknownType(t)),
                };
                r.finish()?;
                Ok(msg)
            }

            /// The exact length of the encoded body.
            pub fn body_len(&self) -> usize {
                match self {
                    $( Message::$variant(b) => b.encoded_len(), )*
                }
            }

            /// Writes the body into `buf` (at least [`Message::body_len`] bytes) and returns
            /// the length written.
            pub fn emit_body(&self, buf: &mut [u8]) -> Result<usize, WireError> {
                let mut w = Writer::new(buf);
                match self {
                    $( Message::$variant(b) => b.encode(&mut w)?, )*
                }
                Ok(w.written())
            }
        }
    };
}

messages! {
    /// Node -> AS (TLS).
    LoginRequest(LoginRequest) = 0x01,
    /// AS -> node (TLS).
    LoginResponse(LoginResponse) = 0x02,
    /// AS -> DC (mutual TLS).
    KeyDistribution(KeyDistribution) = 0x03,
    /// DC -> AS (mutual TLS).
    NtmAck(NtmAck) = 0x04,
    /// Server -> server (mutual TLS).
    KeyShare(KeyShare) = 0x05,
    /// Server -> server (mutual TLS).
    KeyShareAck(KeyShareAck) = 0x06,
    /// Node -> DC (K_ntmdc).
    RegistrationRequest(RegistrationRequest) = 0x10,
    /// DC -> node (K_ntmdc).
    RegistrationResponse(RegistrationResponse) = 0x11,
    /// Node -> DC (K_ntmdc).
    Keepalive(Keepalive) = 0x12,
    /// DC -> node (K_ntmdc).
    KeepaliveAck(KeepaliveAck) = 0x13,
    /// Node -> the DC's mapping port (K_ntmdc).
    MappingProbe(MappingProbe) = 0x14,
    /// The DC's mapping port -> node (K_ntmdc).
    MappingProbeAck(MappingProbeAck) = 0x15,
    /// DC -> node (K_ntmdc).
    MappingOffer(MappingOffer) = 0x16,
    /// DC -> node (K_ntmdc).
    GatewayOffer(GatewayOffer) = 0x17,
    /// Node -> NS (K_ntmns, TCP).
    NotificationRegistration(NotificationRegistration) = 0x20,
    /// NS -> node (K_ntmns, TCP).
    NotificationAck(NotificationAck) = 0x21,
    /// Node -> NS (K_ntmns, TCP).
    NsKeepalive(NsKeepalive) = 0x22,
    /// NS -> node (K_ntmns, TCP).
    NsKeepaliveAck(NsKeepaliveAck) = 0x23,
    /// DC -> NS (K_dcns).
    NsKeyDistribution(NsKeyDistribution) = 0x24,
    /// NS -> DC (K_dcns).
    NsKeyAck(NsKeyAck) = 0x25,
    /// DC -> NS (K_dcns) and NS -> node (K_ntmns).
    Notify(Notify) = 0x26,
    /// NS -> DC (K_dcns).
    NotifyAck(NotifyAck) = 0x27,
    /// Node -> NS (K_ntmns, TCP).
    NsProbe(NsProbe) = 0x28,
    /// Node -> DC (K_ntmdc).
    DirectionRequest(DirectionRequest) = 0x30,
    /// DC -> DC (K_dcdc).
    NodeInfoRequest(NodeInfoRequest) = 0x31,
    /// DC -> DC (K_dcdc).
    NodeInfoAnswer(NodeInfoAnswer) = 0x32,
    /// DC -> node (K_ntmdc), DC -> DC (K_dcdc).
    RouteDirection(RouteDirection) = 0x40,
    /// Node -> DC (K_ntmdc), DC -> DC (K_dcdc).
    RouteDirectionAck(RouteDirectionAck) = 0x41,
    /// DC -> RS (K_dcrs).
    RelayDirection(RelayDirection) = 0x50,
    /// RS -> DC (K_dcrs).
    RelayDirectionAck(RelayDirectionAck) = 0x51,
    /// DC -> RS (K_dcrs).
    RelayStatus(RelayStatus) = 0x52,
    /// RS -> DC (K_dcrs).
    RelayStatusAck(RelayStatusAck) = 0x53,
    /// DC -> RS (K_dcrs); acknowledged with a Relay Direction Ack.
    GatewayDirection(GatewayDirection) = 0x54,
    /// Node -> node, maybe via RS (K_tun).
    TunnelRequest(TunnelRequest) = 0x60,
    /// Node -> node, maybe via RS (K_mncn).
    TunnelResponse(TunnelResponse) = 0x61,
    /// Node -> RS (K_tun).
    HolePunch(HolePunch) = 0x62,
    /// RS -> node (K_tun).
    HolePunchAck(HolePunchAck) = 0x63,
    /// Node -> node (K_mncn).
    PathProbe(PathProbe) = 0x64,
    /// Node -> node (K_mncn).
    PathProbeAck(PathProbeAck) = 0x65,
    /// Node -> node, maybe via RS (K_mncn).
    Data(DataBody) = 0x70,
    /// Any -> any: a request is refused.
    Refusal(Refusal) = 0x7f,
}

impl Message {
    /// The body as a new vector.
    pub fn body_to_vec(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.body_len()];
        // `body_len` is exact (checked by the round-trip tests), so this cannot fail.
        let _ = self.emit_body(&mut out);
        out
    }
}
