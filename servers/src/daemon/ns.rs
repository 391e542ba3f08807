//! `ntm-ns`: the Notification Server.

use super::{drops_json, identify, key_kinds, reload_tls, tls_configs, StartError};
use crate::config::{secs, NsFile};
use crate::driver::{Daemon, Driver, DriverConfig, Reload};
use crate::pki::ClientAuth;
use ntm_proto::engine::ns::{Ns, NsConfig};
use ntm_proto::engine::Engine;
use ntm_proto::time::{Duration, Instant};

/// The NS daemon.
#[derive(Debug)]
pub struct NsDaemon {
    ns: Ns,
    cfg: NsFile,
}

impl Daemon for NsDaemon {
    type Engine = Ns;

    fn engine(&mut self) -> &mut Ns {
        &mut self.ns
    }

    fn status(&mut self, _now: Instant) -> serde_json::Value {
        serde_json::json!({
            "role": "ns",
            "name": self.cfg.common.name.as_str(),
            "connected_nodes": self.ns.connected(),
            "node_keys": self.ns.node_keys(),
            "nodes": self.ns.connected_nodes().iter().map(|f| f.as_str()).collect::<Vec<_>>(),
            "keys": key_kinds(&self.ns.held_keys()),
            "dropped": drops_json(self.ns.drops()),
        })
    }

    fn reload(&mut self) -> Reload {
        reload_tls(&self.cfg.common.tls, ClientAuth::Required)
    }
}

/// Builds the NS from its configuration.
pub fn build(cfg: NsFile) -> Result<Driver<NsDaemon>, StartError> {
    let (server, _) = tls_configs(&cfg.common.tls, ClientAuth::Required)?;
    let mut nc = NsConfig::new(cfg.common.name.clone());
    nc.keepalive_interval = secs(cfg.keepalive_interval_secs);
    nc.max_nodes = cfg.max_nodes;
    let ns = Ns::new(nc)?;
    let dc = DriverConfig {
        udp: cfg.common.listen.clone(),
        tls: cfg.common.listen.clone(),
        tcp: cfg.node_listen.clone(),
        tls_server: Some(server),
        tls_client: None,
        identify,
        locator: None,
        status_socket: cfg.common.status_socket.clone(),
        // Each node holds one idle TCP connection: allow them all.
        max_connections: cfg.common.max_connections.max(cfg.max_nodes),
        tls_idle_timeout: Some(Duration::from_secs(120)),
        // A node keeps alive every interval; one silent for three is gone (its NAT
        // mapping with it), and its connection would otherwise stay forever.
        tcp_idle_timeout: Some(secs(cfg.keepalive_interval_secs.saturating_mul(3))),
        signals: true,
        max_unauthenticated_per_source: cfg.common.max_unauthenticated_per_source,
        max_buffered_bytes: cfg.common.max_buffered_bytes,
    };
    Ok(Driver::new(dc, NsDaemon { ns, cfg })?)
}
