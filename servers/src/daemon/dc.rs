//! `ntm-dc`: the Direction Coordinator.
//!
//! Besides driving the engine, the daemon keeps the DC's database: virtual address
//! assignments and each node's key state, so that a restart neither renumbers nodes nor
//! makes them log in again. A node is saved when its key arrives, when it registers, and
//! whenever its counters move (checked every second): the sealing counter is reserved
//! ahead ([`store::COUNTER_RESERVE`]) so that a crash never reuses a nonce, and the node's
//! own counter is kept as a replay floor.

use super::{drops_json, identify, key_kinds, os_rng, tls_configs, StartError};
use crate::config::{secs, DcFile};
use crate::driver::{Daemon, Driver, DriverConfig, Reload};
use crate::pki::ClientAuth;
use crate::store::{self, DcStore, NodeSnapshot, NsSnapshot};
use ntm_proto::dns::{Locator, LocatorConfig};
use ntm_proto::engine::dc::{Dc, DcConfig, DcEvent, NodeState, NsRef, NsState, ServerRef};
use ntm_proto::engine::Engine;
use ntm_proto::time::{Duration, Instant};
use ntm_proto::wire::Fqdn;
use std::collections::HashMap;

/// How often node counters are checked and expired rows pruned.
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// The DC daemon.
pub struct DcDaemon {
    dc: Dc,
    cfg: DcFile,
    store: DcStore,
    /// Per node: the counter reserved in the database and the node's counter saved.
    saved: HashMap<Fqdn, (u64, u64)>,
    next_refresh: Instant,
    next_prune: Instant,
    store_errors: u64,
}

impl std::fmt::Debug for DcDaemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DcDaemon").field("dc", &self.dc).finish_non_exhaustive()
    }
}

fn to_snapshot(s: NodeState) -> NodeSnapshot {
    NodeSnapshot {
        fqdn: s.fqdn,
        key_id: s.key_id,
        key: s.key,
        expires_ms: s.expires.as_millis(),
        next_counter: s.next_counter,
        peer_counter: s.peer_counter,
        attestation: s.attestation,
        virtual_addrs: s.virtual_addrs,
        endpoints: s.endpoints,
        local_addrs: s.local_addrs,
        keepalive: s.keepalive,
        ns: s.ns.map(|n| NsSnapshot { ns: n.ns, key_id: n.key_id, key: n.key, expires_ms: n.expires.as_millis() }),
    }
}

fn to_state(s: NodeSnapshot) -> NodeState {
    NodeState {
        fqdn: s.fqdn,
        key_id: s.key_id,
        key: s.key,
        expires: Instant::from_millis(s.expires_ms),
        next_counter: s.next_counter,
        peer_counter: s.peer_counter,
        attestation: s.attestation,
        virtual_addrs: s.virtual_addrs,
        endpoints: s.endpoints,
        local_addrs: s.local_addrs,
        keepalive: s.keepalive,
        ns: s.ns.map(|n| NsState {
            ns: n.ns,
            key_id: n.key_id,
            key: n.key,
            expires: Instant::from_millis(n.expires_ms),
        }),
    }
}

impl DcDaemon {
    fn save(&mut self, fqdn: &Fqdn) {
        let Some(state) = self.dc.export_node(fqdn) else { return };
        let peer = state.peer_counter;
        if let Some(v) = state.virtual_addrs {
            if let Err(e) = self.store.save_assignment(fqdn, v) {
                self.store_errors += 1;
                log::error!("{e}");
            }
        }
        match self.store.save_node(&to_snapshot(state)) {
            Ok(reserved) => {
                self.saved.insert(fqdn.clone(), (reserved, peer));
            }
            Err(e) => {
                self.store_errors += 1;
                log::error!("{e}");
            }
        }
    }

    /// Saves every node whose counters moved past what the database holds.
    fn refresh(&mut self) {
        let due: Vec<Fqdn> = self
            .dc
            .node_names()
            .into_iter()
            .filter(|f| {
                let Some((next, peer)) = self.dc.node_counters(f) else { return false };
                match self.saved.get(f) {
                    Some(&(reserved, saved_peer)) => store::needs_refresh(reserved, next) || peer != saved_peer,
                    None => true,
                }
            })
            .collect();
        for f in due {
            self.save(&f);
        }
    }
}

impl Daemon for DcDaemon {
    type Engine = Dc;

    fn engine(&mut self) -> &mut Dc {
        &mut self.dc
    }

    fn after(&mut self, _now: Instant) {
        while let Some(ev) = self.dc.poll_event() {
            match ev {
                DcEvent::NodeKeyReceived { fqdn } | DcEvent::NodeRegistered { fqdn, .. } => self.save(&fqdn),
                DcEvent::TunnelDirected { session, mn, cn, relay } => match relay {
                    Some(rs) => log::info!("tunnel {session}: {mn} <-> {cn} via {rs}"),
                    None => log::info!("tunnel {session}: {mn} <-> {cn} direct"),
                },
                DcEvent::TunnelRefused { session, mn, cn, reason } => {
                    log::info!("tunnel {session}: {mn} -> {cn} refused: {reason:?}")
                }
                DcEvent::PushNeeded { fqdn, .. } => {
                    log::warn!("{fqdn} must be woken by a push notification; no push service is configured")
                }
            }
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Some(self.next_refresh.min(self.next_prune))
    }

    fn handle_timeout(&mut self, now: Instant) {
        if now >= self.next_refresh {
            self.next_refresh = now + REFRESH_INTERVAL;
            self.refresh();
        }
        if now >= self.next_prune {
            self.next_prune = now + PRUNE_INTERVAL;
            match self.store.prune_expired(now.as_millis()) {
                Ok(n) if n > 0 => log::info!("{n} expired node keys removed from the database"),
                Ok(_) => {}
                Err(e) => {
                    self.store_errors += 1;
                    log::error!("{e}");
                }
            }
            let live: std::collections::HashSet<Fqdn> = self.dc.node_names().into_iter().collect();
            self.saved.retain(|f, _| live.contains(f));
        }
    }

    fn status(&mut self, _now: Instant) -> serde_json::Value {
        let nodes: Vec<serde_json::Value> = self
            .dc
            .nodes()
            .iter()
            .map(|n| {
                serde_json::json!({
                    "fqdn": n.fqdn.as_str(),
                    "virtual_ipv4": n.virtual_addrs.map(|v| v.v4.to_string()),
                    "virtual_ipv6": n.virtual_addrs.map(|v| v.v6.to_string()),
                    "endpoints": n.endpoints.iter().map(|(a, nat)| serde_json::json!({"addr": a.to_string(), "behind_nat": nat})).collect::<Vec<_>>(),
                    "via_ns": n.via_ns,
                    "key_expires_unix_ms": n.key_expires.as_millis(),
                })
            })
            .collect();
        serde_json::json!({
            "role": "dc",
            "name": self.cfg.common.name.as_str(),
            "zones": self.cfg.zones.iter().map(Fqdn::as_str).collect::<Vec<_>>(),
            "nodes": nodes,
            "negotiations": self.dc.negotiation_count(),
            "keys": key_kinds(&self.dc.held_keys()),
            "dropped": drops_json(self.dc.drops()),
            "database_errors": self.store_errors,
        })
    }

    fn reload(&mut self) -> Reload {
        match tls_configs(&self.cfg.common.tls, ClientAuth::Required) {
            Ok((server, client)) => Reload { tls_server: Some(server), tls_client: Some(client) },
            Err(e) => {
                log::error!("reload: keeping the old TLS files: {e}");
                Reload::default()
            }
        }
    }
}

/// Builds the DC from its configuration, restoring its database.
pub fn build(cfg: DcFile) -> Result<Driver<DcDaemon>, StartError> {
    let (server, client) = tls_configs(&cfg.common.tls, ClientAuth::Required)?;
    let mut dcfg = DcConfig::new(
        cfg.common.name.clone(),
        cfg.zones.clone(),
        (cfg.virtual_ipv4.addr, cfg.virtual_ipv4.len),
        (cfg.virtual_ipv6.addr, cfg.virtual_ipv6.len),
    );
    dcfg.keepalive_interval = secs(cfg.keepalive_interval_secs);
    dcfg.relays = cfg.relays.iter().map(|r| ServerRef { name: r.name.clone(), addr: r.addr }).collect();
    dcfg.notification_servers = cfg
        .notification_servers
        .iter()
        .map(|n| NsRef { server: ServerRef { name: n.name.clone(), addr: n.addr }, node_addr: n.node_addr })
        .collect();
    dcfg.static_peers = cfg.dns.static_dcs.iter().map(|s| s.location()).collect();
    dcfg.max_nodes = cfg.max_nodes;
    let clock = crate::driver::Clock::start();
    let now = clock.now();
    let mut dc = Dc::new(dcfg, os_rng(), now)?;

    let store = DcStore::open(&cfg.state)?;
    for (fqdn, addrs) in store.load_assignments()? {
        if let Err(e) = dc.restore_assignment(&fqdn, addrs) {
            log::warn!("database {}: assignment of {fqdn} not restored: {e}", cfg.state.display());
        }
    }
    let mut saved = HashMap::new();
    let mut restored = 0usize;
    for snap in store.load_nodes()? {
        let (fqdn, reserved, peer) = (snap.fqdn.clone(), snap.next_counter, snap.peer_counter);
        match dc.restore_node(now, to_state(snap), reserved) {
            Ok(()) => {
                // Resumed at the reservation: the next refresh reserves anew.
                saved.insert(fqdn, (reserved, peer));
                restored += 1;
            }
            Err(e) => log::info!("database {}: {fqdn} not restored: {e}", cfg.state.display()),
        }
    }
    log::info!("{restored} nodes restored from {}", cfg.state.display());

    let locator = Locator::new(
        LocatorConfig {
            nameservers: cfg.dns.nameservers.clone(),
            dc_port: cfg.dns.dc_port,
            ntm_domains: cfg.dns.ntm_domains.clone(),
            static_dcs: cfg.dns.static_dcs.iter().map(|s| s.location()).collect(),
            ..LocatorConfig::default()
        },
        os_rng(),
    );
    let driver_cfg = DriverConfig {
        udp: cfg.common.listen.clone(),
        tls: cfg.common.listen.clone(),
        tcp: Vec::new(),
        tls_server: Some(server),
        tls_client: Some(client),
        identify,
        locator: Some(locator),
        status_socket: cfg.common.status_socket.clone(),
        max_connections: cfg.common.max_connections,
        tls_idle_timeout: Some(Duration::from_secs(120)),
        signals: true,
    };
    let daemon = DcDaemon { dc, cfg, store, saved, next_refresh: now, next_prune: now, store_errors: 0 };
    Ok(Driver::new(driver_cfg, daemon)?)
}
