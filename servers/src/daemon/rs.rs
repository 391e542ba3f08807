//! `ntm-rs`: the Relay Server.

use super::{drops_json, identify, key_kinds, reload_tls, tls_configs, StartError};
use crate::config::{secs, RsFile};
use crate::driver::{Daemon, Driver, DriverConfig, Reload};
use crate::pki::ClientAuth;
use ntm_proto::engine::rs::{Rs, RsConfig};
use ntm_proto::engine::Engine;
use ntm_proto::time::{Duration, Instant};

/// The RS daemon: the engine and where its TLS files are (for SIGHUP).
#[derive(Debug)]
pub struct RsDaemon {
    rs: Rs,
    cfg: RsFile,
}

impl Daemon for RsDaemon {
    type Engine = Rs;

    fn engine(&mut self) -> &mut Rs {
        &mut self.rs
    }

    fn status(&mut self, _now: Instant) -> serde_json::Value {
        let sessions: Vec<serde_json::Value> = self
            .rs
            .sessions()
            .iter()
            .map(|s| {
                serde_json::json!({
                    "session": s.session.to_string(),
                    "mn": s.mn.map(|a| a.to_string()),
                    "cn": s.cn.map(|a| a.to_string()),
                    "relayed": s.relayed,
                })
            })
            .collect();
        serde_json::json!({
            "role": "rs",
            "name": self.cfg.common.name.as_str(),
            "relay_addrs": self.cfg.advertised().iter().map(ToString::to_string).collect::<Vec<_>>(),
            "sessions": sessions,
            "keys": key_kinds(&self.rs.held_keys()),
            "dropped": drops_json(self.rs.drops()),
        })
    }

    fn reload(&mut self) -> Reload {
        reload_tls(&self.cfg.common.tls, ClientAuth::Required)
    }
}

/// Builds the RS from its configuration.
pub fn build(cfg: RsFile) -> Result<Driver<RsDaemon>, StartError> {
    let (server, _) = tls_configs(&cfg.common.tls, ClientAuth::Required)?;
    let mut rc = RsConfig::new(cfg.common.name.clone(), cfg.advertised());
    rc.max_sessions = cfg.max_sessions;
    rc.session_idle_timeout = secs(cfg.session_idle_secs);
    rc.max_session_pps = cfg.max_session_pps;
    let rs = Rs::new(rc)?;
    let dc = DriverConfig {
        udp: cfg.common.listen.clone(),
        tls: cfg.common.listen.clone(),
        tcp: Vec::new(),
        tls_server: Some(server),
        tls_client: None,
        identify,
        locator: None,
        status_socket: cfg.common.status_socket.clone(),
        max_connections: cfg.common.max_connections,
        tls_idle_timeout: Some(Duration::from_secs(120)),
        tcp_idle_timeout: None,
        signals: true,
        max_unauthenticated_per_source: cfg.common.max_unauthenticated_per_source,
        max_buffered_bytes: cfg.common.max_buffered_bytes,
    };
    Ok(Driver::new(dc, RsDaemon { rs, cfg })?)
}
