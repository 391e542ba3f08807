//! The refusal: any request may be answered with one instead of its normal response.
//! It is sealed with the key the request came under when the refuser holds it; otherwise
//! (an unknown key id, a failed login) it is plain, and receivers treat a plain refusal as
//! a hint only, never as proof (see docs/protocol.md, "Refusals").
//!
//! ```text
//! Refusal  in_reply_to u8 (message type) | request_id u32 | reason u8 | detail (u8 len <= 128)
//! ```

use super::{code_enum, known_code_codec, wire_struct, Codec, MsgType, Reader, RequestId, Text, WireError, Writer};

/// Longest human-readable detail.
pub const DETAIL_MAX: usize = 128;

code_enum! {
    /// Why a request was refused. Peers map their errors onto these.
    pub enum Reason {
        /// The request did not parse.
        Malformed = 0x01,
        /// The header's version is not spoken here.
        UnsupportedVersion = 0x02,
        /// Wrong password, certificate or token.
        BadCredential = 0x03,
        /// The account exists but is disabled.
        AccountDisabled = 0x04,
        /// The key id is not known here (log in again).
        UnknownKey = 0x05,
        /// The key's lifetime is over (log in again).
        KeyExpired = 0x06,
        /// No such node.
        NotFound = 0x07,
        /// The name is not an NTMobile node: resolve it as ordinary DNS.
        NotNtm = 0x08,
        /// No path between the two nodes (no common family and no RS).
        NoRoute = 0x09,
        /// No relay server is available.
        NoRelay = 0x0a,
        /// Too busy; retry later.
        Overloaded = 0x0b,
        /// The peer node did not answer.
        PeerUnreachable = 0x0c,
        /// The sender may not ask this.
        Unauthorized = 0x0d,
        /// An internal error at the refuser.
        Internal = 0x0e,
        /// The request conflicts with existing state (e.g. a session id in use).
        Conflict = 0x0f,
        /// Another login for this node's name replaced this one at the DC (the same
        /// credential in use on a second device?); sent sealed with the replaced key.
        Displaced = 0x10,
    }
}
known_code_codec!(Reason, "refusal reason");

/// The type of the refused message; any code point is allowed, so that an unknown type
/// can be refused too.
impl Codec for MsgType {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(MsgType::from(r.u8()?))
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.u8(u8::from(*self))
    }
    fn encoded_len(&self) -> usize {
        1
    }
}

wire_struct! {
    /// A request is refused.
    pub struct Refusal {
        /// The type of the refused message.
        pub in_reply_to: MsgType,
        /// The refused request's id.
        pub request_id: RequestId,
        /// Why.
        pub reason: Reason,
        /// A short human-readable explanation (never secrets).
        pub detail: Text<DETAIL_MAX>,
    }
}

impl Refusal {
    /// Builds a refusal; `detail` is cut at [`DETAIL_MAX`] bytes on a character boundary.
    pub fn new(in_reply_to: MsgType, request_id: RequestId, reason: Reason, detail: &str) -> Self {
        let mut end = detail.len().min(DETAIL_MAX);
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        let detail = Text::new(detail.get(..end).unwrap_or("")).unwrap_or_default();
        Refusal { in_reply_to, request_id, reason, detail }
    }
}
