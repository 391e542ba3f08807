//! The NS path (spec 4.2, Fig. 4): node <-> NS over TCP sealed with K_ntmns, DC <-> NS
//! over UDP sealed with K_dcns. A DC reaches a node behind NAT by handing the NS a message
//! already sealed for the node (K_ntmdc); the NS forwards it without reading it.
//!
//! ```text
//! NotificationRegistration  request_id u32 | fqdn
//! NotificationAck           request_id u32 | keepalive_interval u32 (s)
//! NsKeepalive               request_id u32
//! NsKeepaliveAck            request_id u32
//! NsProbe                   request_id u32 | delay u32 (s)
//! NsKeyDistribution         request_id u32 | fqdn | key_id u32 | K_ntmns (16) | lifetime u32
//! NsKeyAck                  request_id u32 | key_id u32
//! Notify                    request_id u32 | node_key_id u32 | payload (u16 len <= 1400)
//! NotifyAck                 request_id u32 | delivered u8
//! ```

use super::{wire_struct, Bytes, Fqdn, KeyId, RequestId};
use crate::keys::{KeyGrant, NtmNs};

/// Largest message a DC may have an NS forward.
pub const NOTIFY_PAYLOAD_MAX: usize = 1400;

wire_struct! {
    /// Node -> NS on a new TCP connection: reach me here.
    pub struct NotificationRegistration {
        /// Matches the acknowledgement.
        pub request_id: RequestId,
        /// The node's name.
        pub fqdn: Fqdn,
    }
}

wire_struct! {
    /// NS -> node: registered; keep the connection alive at this interval.
    pub struct NotificationAck {
        /// The registration this acknowledges.
        pub request_id: RequestId,
        /// Keepalive interval in seconds (about an hour).
        pub keepalive_interval: u32,
    }
}

wire_struct! {
    /// Node -> NS, about hourly.
    pub struct NsKeepalive {
        /// Matches the acknowledgement.
        pub request_id: RequestId,
    }
}

wire_struct! {
    /// Node -> NS: acknowledge this after `delay` seconds of silence, so that the
    /// acknowledgement crosses the node's NAT only if its TCP mapping outlived that much
    /// idle time (the node learns its keepalive interval from it).
    pub struct NsProbe {
        /// Matches the acknowledgement (an NsKeepaliveAck).
        pub request_id: RequestId,
        /// Seconds to wait before acknowledging (the NS caps it at its keepalive interval).
        pub delay: u32,
    }
}

wire_struct! {
    /// NS -> node.
    pub struct NsKeepaliveAck {
        /// The keepalive this acknowledges.
        pub request_id: RequestId,
    }
}

wire_struct! {
    /// DC -> NS (K_dcns): the key a node will register with.
    pub struct NsKeyDistribution {
        /// Matches the acknowledgement.
        pub request_id: RequestId,
        /// The node.
        pub fqdn: Fqdn,
        /// The id of K_ntmns.
        pub key_id: KeyId,
        /// K_ntmns and its lifetime.
        pub k_ntmns: KeyGrant<NtmNs>,
    }
}

wire_struct! {
    /// NS -> DC (K_dcns).
    pub struct NsKeyAck {
        /// The distribution this acknowledges.
        pub request_id: RequestId,
        /// The key now held.
        pub key_id: KeyId,
    }
}

wire_struct! {
    /// DC -> NS (K_dcns), then NS -> node (K_ntmns): deliver this DC message.
    pub struct Notify {
        /// Matches the acknowledgement.
        pub request_id: RequestId,
        /// The node's K_ntmns id, which names its connection at the NS.
        pub node_key_id: KeyId,
        /// A whole DC -> node message, sealed with K_ntmdc.
        pub payload: Bytes<NOTIFY_PAYLOAD_MAX>,
    }
}

wire_struct! {
    /// NS -> DC (K_dcns): whether the node's connection took the notification.
    pub struct NotifyAck {
        /// The notification this acknowledges.
        pub request_id: RequestId,
        /// False if the NS has no live connection for the node.
        pub delivered: bool,
    }
}
