//! The agent's status: `ntmd status` connects to the status socket, reads the state as
//! JSON, and the connection closes (the socket and its partial writes are
//! `ntm_io::StatusSocket`'s). The JSON is written here by hand (the agent carries no JSON
//! serializer); every string in it is a name, an address or a fixed word, and is escaped
//! anyway.

use super::{Agent, CONTROL, READ_BUDGET};
use ntm_dns::stub::StubStats;
use ntm_proto::engine::node::PathKind;
use ntm_proto::engine::Engine;
use std::fmt::Write;

/// Builds a JSON object field by field.
#[derive(Debug, Default)]
pub struct Json {
    out: String,
    first: Vec<bool>,
}

impl Json {
    /// An empty document; call [`Json::open`] first.
    pub fn new() -> Self {
        Json::default()
    }

    fn sep(&mut self) {
        if let Some(first) = self.first.last_mut() {
            if !*first {
                self.out.push(',');
            }
            *first = false;
        }
    }

    fn key(&mut self, k: &str) {
        self.sep();
        self.string_raw(k);
        self.out.push(':');
    }

    fn string_raw(&mut self, s: &str) {
        self.out.push('"');
        for c in s.chars() {
            match c {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(self.out, "\\u{:04x}", c as u32);
                }
                c => self.out.push(c),
            }
        }
        self.out.push('"');
    }

    /// Opens the top-level object or an object value under `key` (None at top level or
    /// inside an array).
    pub fn open(&mut self, key: Option<&str>) -> &mut Self {
        match key {
            Some(k) => self.key(k),
            None => self.sep(),
        }
        self.out.push('{');
        self.first.push(true);
        self
    }

    /// Closes the innermost object.
    pub fn close(&mut self) -> &mut Self {
        self.first.pop();
        self.out.push('}');
        self
    }

    /// Opens an array under `key`.
    pub fn array(&mut self, key: &str) -> &mut Self {
        self.key(key);
        self.out.push('[');
        self.first.push(true);
        self
    }

    /// Closes the innermost array.
    pub fn end_array(&mut self) -> &mut Self {
        self.first.pop();
        self.out.push(']');
        self
    }

    /// A string field.
    pub fn str(&mut self, key: &str, v: &str) -> &mut Self {
        self.key(key);
        self.string_raw(v);
        self
    }

    /// A string inside an array.
    pub fn string(&mut self, v: &str) -> &mut Self {
        self.sep();
        self.string_raw(v);
        self
    }

    /// A number field.
    pub fn num(&mut self, key: &str, v: u64) -> &mut Self {
        self.key(key);
        let _ = write!(self.out, "{v}");
        self
    }

    /// A boolean field.
    pub fn bool(&mut self, key: &str, v: bool) -> &mut Self {
        self.key(key);
        self.out.push_str(if v { "true" } else { "false" });
        self
    }

    /// A field that is null.
    pub fn null(&mut self, key: &str) -> &mut Self {
        self.key(key);
        self.out.push_str("null");
        self
    }

    /// The text.
    pub fn finish(mut self) -> String {
        self.out.push('\n');
        self.out
    }
}

impl Agent {
    pub(super) fn serve_status(&mut self) {
        for _ in 0..READ_BUDGET {
            let Ok(sock) = self.control.accept() else { return };
            let text = self.status();
            self.control.answer(self.poll.registry(), sock, text.into_bytes());
        }
        self.turn.spent(CONTROL);
    }

    fn status(&self) -> String {
        let mut j = Json::new();
        j.open(None);
        match self.node.fqdn() {
            Some(f) => j.str("fqdn", f.as_str()),
            None => j.null("fqdn"),
        };
        j.bool("registered", self.node.is_registered());
        match &self.registration_refused {
            Some(r) => j.str("registration_refused", r),
            None => j.null("registration_refused"),
        };
        j.bool("displaced", self.node.is_displaced());
        j.bool("notifications_ready", self.node.notifications_ready());
        // The NS keepalive interval learned for this path, and the NS's (the longest used).
        match self.node.ns_keepalive() {
            Some((interval, max, settled)) => {
                j.open(Some("ns_keepalive"))
                    .num("interval_secs", interval.as_secs())
                    .num("max_secs", max.as_secs())
                    .bool("settled", settled)
                    .close();
            }
            None => {
                j.null("ns_keepalive");
            }
        }
        match self.node.virtual_addrs() {
            Some(v) => {
                j.str("virtual_ipv4", &v.v4.to_string()).str("virtual_ipv6", &v.v6.to_string());
            }
            None => {
                j.null("virtual_ipv4").null("virtual_ipv6");
            }
        }
        j.str("nat_mapping", self.node.nat_mapping().label());
        let t = self.node.traversal_stats();
        j.open(Some("traversal"))
            .num("searches", t.searches)
            .num("found", t.found)
            .num("probes", t.probes)
            .num("open_sockets", t.open_sockets as u64)
            .num("sockets_open_now", self.extra.len() as u64)
            .num("sockets_opened", self.extra.opened)
            .num("socket_failures", self.extra.failures)
            .close();
        j.array("local_addrs");
        for a in &self.local_addrs {
            j.open(None).str("addr", &a.to_string()).close();
        }
        j.end_array();
        j.array("tunnels");
        for t in self.node.tunnels() {
            j.open(None)
                .str("peer", t.peer.as_str())
                .str("session", &t.session.to_string())
                .str("peer_ipv4", &t.peer_virtual.v4.to_string())
                .str("peer_ipv6", &t.peer_virtual.v6.to_string())
                .bool("up", t.established)
                .str(
                    "path",
                    match t.path {
                        PathKind::Relay if t.gateway => "gateway",
                        PathKind::Relay => "relay",
                        PathKind::Direct => "direct",
                    },
                )
                .str("remote", &t.remote.map(|r| r.to_string()).unwrap_or_default())
                .str("relay", &t.relay.map(|r| r.to_string()).unwrap_or_default())
                .bool("superseded", t.superseded)
                .num("rx_packets", t.rx_packets)
                .num("tx_packets", t.tx_packets);
            j.array("peer_prefixes");
            for p in &t.peer_prefixes {
                j.string(&p.to_string());
            }
            j.end_array();
            j.close();
        }
        j.end_array();
        // Peers' announced prefixes not routed, and why (docs/agent.md).
        j.array("refused_peer_prefixes");
        for ((peer, p), why) in &self.refused_prefixes {
            j.open(None).str("peer", peer).str("prefix", &p.to_string()).str("reason", why).close();
        }
        j.end_array();
        // The destinations whose path MTU is under 1500 bytes (crate::pmtu).
        j.array("path_mtus");
        for (dst, mtu) in self.pmtus.reduced() {
            j.open(None).str("to", &dst.to_string()).num("mtu", u64::from(mtu)).close();
        }
        j.end_array();
        // Whether the tunnel sockets take coalesced groups (crate::inbox).
        j.bool("udp_coalescing", self.rx.coalescing());
        // Whether AES-CCM runs through VAES (x86_64 CPUs that have it; ntm_aead).
        j.bool("aes_vaes", ntm_proto::crypto::vaes_available());
        let c = &self.counters;
        j.open(Some("counters"))
            .num("tun_in", c.tun_in)
            .num("tun_out", c.tun_out)
            .num("udp_in", c.udp_in)
            .num("udp_groups_in", c.udp_groups_in)
            .num("udp_out", c.udp_out)
            .num("no_tunnel", c.no_tunnel)
            .num("not_unicast", c.not_unicast)
            .num("too_big", c.too_big)
            .num("icmp_errors", c.icmp_errors)
            .num("fragmented", c.fragmented)
            .num("path_mtu_changes", self.pmtus.changes)
            .num("send_errors", c.send_errors)
            .num("oversized", c.oversized)
            .num("tun_super_in", c.tun_super_in)
            .num("tun_super_out", c.tun_super_out)
            .num("tun_bad", c.tun_bad)
            .num("network_changes", c.network_changes)
            .num("held_no_route", self.held.stats().held)
            .num("held_sent", self.held.stats().sent)
            .num("held_dropped", self.held.stats().dropped)
            .num("resent_to_moved_peer", self.node.resent_packets())
            .num("tls_failures", c.tls_failures)
            .num("peer_prefixes_refused", c.peer_prefixes_refused)
            .num("netlink_undecodable", self.netlink.undecodable())
            .num("loop_turns", self.turn.turns())
            .num("budget_exhausted", self.turn.budget_exhausted())
            .close();
        j.open(Some("dropped"));
        for why in ntm_proto::engine::DropReason::ALL {
            j.num(why.name(), self.node.drops().get(why));
        }
        j.close();
        dns_stats(&mut j, self.stub.stats());
        if let Some(lan) = &self.lan {
            j.open(Some("lan")).num("dns_refused", lan.dns_refused).close();
        }
        j.close();
        j.finish()
    }
}

/// The DNS stub's counters, as the `dns` object of the status.
fn dns_stats(j: &mut Json, s: &StubStats) {
    j.open(Some("dns"))
        .num("hooked", s.hooked)
        .num("forwarded", s.forwarded)
        .num("answered", s.answered)
        .num("virtual_answers", s.virtual_answers)
        .num("relayed", s.relayed)
        .num("servfail", s.servfail)
        .num("malformed", s.malformed)
        .num("not_implemented", s.not_implemented)
        .num("over_limit", s.over_limit)
        .num("rate_limited", s.rate_limited)
        .num("upstream_timeouts", s.upstream_timeouts)
        .num("ignored", s.ignored)
        .close();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_nested_json() {
        let mut j = Json::new();
        j.open(None).str("name", "box\"1").num("n", 3).array("list");
        j.open(None).bool("up", true).close();
        j.open(None).null("x").close();
        j.end_array().open(Some("inner")).str("a", "b").close().close();
        assert_eq!(
            j.finish(),
            "{\"name\":\"box\\\"1\",\"n\":3,\"list\":[{\"up\":true},{\"x\":null}],\"inner\":{\"a\":\"b\"}}\n"
        );
    }

    #[test]
    fn dns_object_carries_the_virtual_answers() {
        let stats = StubStats { answered: 5, virtual_answers: 3, ..StubStats::default() };
        let mut j = Json::new();
        j.open(None);
        dns_stats(&mut j, &stats);
        j.close();
        let text = j.finish();
        assert!(
            text.starts_with("{\"dns\":{\"hooked\":0,\"forwarded\":0,\"answered\":5,\"virtual_answers\":3,"),
            "{text}"
        );
    }
}
