//! `ntm-dc`: the Direction Coordinator.
//!
//! Besides driving the engine, the daemon keeps the DC's database: virtual address
//! assignments and each node's key state, so that a restart neither renumbers nodes nor
//! makes them log in again. A node is saved when its key arrives, when it registers and
//! when its NS acknowledges its K_ntmns (before the answer goes out: the driver hands
//! over events before transmits), and its Registration Response waits for that save (the
//! engine holds it until [`Dc::registration_saved`]): a registration is acknowledged only
//! once it is durable, so virtual addresses a node was told are never given to another
//! after a crash. A registration whose save failed is saved again every second until it
//! is, and the node's retransmissions are answered then. Nodes are also saved whenever
//! their counters move (checked every second, all due nodes in one transaction):
//! the sealing counter is reserved ahead ([`store::COUNTER_RESERVE`]) so that a crash
//! never reuses a nonce, and the node's own counter is kept as a replay floor. The engine
//! may seal only below what the database holds (`Dc::reserve_counters`, set after every
//! save): however fast it seals between two saves, a restart resumes above it.
//!
//! When the database cannot be written, saves are retried every second. A node whose
//! channel has used three quarters of the stored reservation is retired instead (its
//! channel can no longer seal; the node logs in again with a new key): sealing on past
//! the stored value would repeat nonces after a crash.

use super::{drops_json, identify, key_kinds, os_rng, reload_tls, tls_configs, StartError};
use crate::config::{secs, DcFile};
use crate::driver::{Daemon, Driver, DriverConfig, Reload};
use crate::pki::ClientAuth;
use crate::store::dc::{self as store, DcStore, COUNTER_RESERVE};
use crate::store::StoreError;
use ntm_dns::{Locator, LocatorConfig};
use ntm_proto::engine::dc::{Dc, DcConfig, DcEvent, NodeState, NsRef, ServerRef, MAPPING_PORT};
use ntm_proto::engine::{DropReason, Engine, Local, Received};
use ntm_proto::time::{Duration, Instant};
use ntm_proto::wire::registration::NatMapping;
use ntm_proto::wire::{Fqdn, KeyId, VirtualAddrs};
use std::collections::HashMap;
use std::net::SocketAddr;

/// How often node counters are checked and expired rows pruned.
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// The DC daemon.
pub struct DcDaemon {
    dc: Dc,
    cfg: DcFile,
    store: DcStore,
    /// Per node: what the database holds of it.
    saved: HashMap<Fqdn, Saved>,
    next_refresh: Instant,
    next_prune: Instant,
    store_errors: u64,
}

/// What the database holds of a node's key state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Saved {
    /// The key the row is for: a node that logged in again has a new key, which the old
    /// row's reservation does not cover.
    key_id: KeyId,
    /// The counter a restart resumes sealing at.
    reserved: u64,
    /// The node's counter saved as the replay floor.
    peer: u64,
}

/// True when the node's row must be written again: none yet, the reservation half used,
/// or the replay floor moved. (A new key is saved when it arrives; if that fails, the
/// old key's entry is dropped, so the node has none.)
fn is_due(saved: Option<&Saved>, next: u64, peer: u64) -> bool {
    saved.is_none_or(|s| store::needs_refresh(s.reserved, next) || s.peer != peer)
}

/// True when a node whose save failed must stop sealing: the database holds a
/// reservation for this very key, and the channel has used three quarters of it (the
/// last quarter is the margin for what it seals before the next check). Without a row
/// for this key a crash forgets the key, so no nonce can repeat; a retired channel
/// (at `u64::MAX`) seals nothing.
fn must_retire(saved: Option<&Saved>, key_id: KeyId, next: u64) -> bool {
    saved.is_some_and(|s| {
        s.key_id == key_id && next != u64::MAX && next >= s.reserved.saturating_sub(COUNTER_RESERVE / 4)
    })
}

impl std::fmt::Debug for DcDaemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DcDaemon").field("dc", &self.dc).finish_non_exhaustive()
    }
}

impl DcDaemon {
    /// Saves the nodes that registered or got a key in one turn of the loop, in one
    /// transaction: the answers wait for the commit, and one fsync per turn rather than two
    /// per node is what lets the DC keep up with a burst (docs/benchmarks.md). If the batch
    /// fails, each node is saved on its own, so that one bad row (an address the database
    /// holds for another node) cannot hold back the others. The registrations saved are
    /// reported to the engine, which then sends their answers.
    fn save_turn(&mut self, now: Instant, fqdns: &[Fqdn]) {
        if fqdns.len() < 2 {
            fqdns.iter().for_each(|f| self.save(now, f));
            return;
        }
        let nodes: Vec<NodeState> = fqdns.iter().filter_map(|f| self.dc.export_node(f)).collect();
        let assignments: Vec<(Fqdn, VirtualAddrs)> =
            nodes.iter().filter_map(|s| s.virtual_addrs.map(|v| (s.fqdn.clone(), v))).collect();
        match self.store.save_registrations(&assignments, &nodes) {
            Ok(reserved) => {
                for (n, reserved) in nodes.iter().zip(reserved) {
                    self.saved_as(&n.fqdn, Saved { key_id: n.key_id, reserved, peer: n.peer_counter });
                    self.dc.registration_saved(now, &n.fqdn);
                }
            }
            Err(e) => {
                log::warn!("saving {} nodes at once: {e}; saving them one by one", nodes.len());
                fqdns.iter().for_each(|f| self.save(now, f));
            }
        }
    }

    /// Saves one node, its assignment with it (one transaction).
    fn save(&mut self, now: Instant, fqdn: &Fqdn) {
        let Some(state) = self.dc.export_node(fqdn) else { return };
        let (key_id, next, peer) = (state.key_id, state.next_counter, state.peer_counter);
        match self.store.save_node(&state) {
            Ok(reserved) => {
                self.saved_as(fqdn, Saved { key_id, reserved, peer });
                self.dc.registration_saved(now, fqdn);
            }
            Err(e) => {
                self.store_errors += 1;
                log::error!("{e}");
                if self.saved.get(fqdn).is_some_and(|s| s.key_id != key_id) {
                    // The entry is the old key's: with none, the refresh retries the new one.
                    self.saved.remove(fqdn);
                }
                self.not_saved(now, fqdn, key_id, next);
            }
        }
    }

    /// Saves every node whose row is out of date or whose registration is not saved yet,
    /// in one transaction: after a restart every node is due at once, and one commit per
    /// node would stall the loop.
    fn refresh(&mut self, now: Instant) {
        let unsaved = self.dc.unsaved_registrations();
        let due: Vec<NodeState> = self
            .dc
            .node_names()
            .into_iter()
            .filter(|f| {
                let Some((next, peer)) = self.dc.node_counters(f) else { return false };
                is_due(self.saved.get(f), next, peer) || unsaved.binary_search(f).is_ok()
            })
            .filter_map(|f| self.dc.export_node(&f))
            .collect();
        if due.is_empty() {
            return;
        }
        match self.store.save_nodes(&due) {
            Ok(reserved) => {
                for (n, reserved) in due.iter().zip(reserved) {
                    self.saved_as(&n.fqdn, Saved { key_id: n.key_id, reserved, peer: n.peer_counter });
                    self.dc.registration_saved(now, &n.fqdn);
                }
            }
            Err(e @ StoreError::Duplicate { .. }) if due.len() > 1 => {
                // One row the database refuses (addresses it holds for another node, as
                // after a manual edit) must not hold back every other node's refresh.
                log::warn!("saving {} nodes at once: {e}; saving them one by one", due.len());
                due.iter().for_each(|n| self.save(now, &n.fqdn));
            }
            Err(e) => {
                self.store_errors += 1;
                log::error!("{e}");
                for n in &due {
                    self.not_saved(now, &n.fqdn, n.key_id, n.next_counter);
                }
            }
        }
    }

    /// The database now holds `saved` for the node: the engine may seal under that key up
    /// to the stored reservation and no further, so a crash never resumes below a
    /// counter that was used, however many messages go out before the next save.
    fn saved_as(&mut self, fqdn: &Fqdn, saved: Saved) {
        self.dc.reserve_counters(fqdn, saved.key_id, saved.reserved);
        self.saved.insert(fqdn.clone(), saved);
    }

    /// A node's save failed: retire its channel if it is about to seal past what the
    /// database reserved (see [`must_retire`]); otherwise the next refresh retries.
    fn not_saved(&mut self, now: Instant, fqdn: &Fqdn, key_id: KeyId, next: u64) {
        if !must_retire(self.saved.get(fqdn), key_id, next) {
            return;
        }
        let Some(state) = self.dc.export_node(fqdn) else { return };
        log::error!(
            "{fqdn}: the database cannot extend the counter reservation; its key is retired and it must log in again"
        );
        // Taking the node back with its counter at the top leaves everything else as it
        // is; the channel refuses to seal from then on.
        if let Err(e) = self.dc.restore_node(now, state, u64::MAX) {
            log::warn!("{fqdn}: {e}");
        }
    }
}

impl Daemon for DcDaemon {
    type Engine = Dc;

    fn engine(&mut self) -> &mut Dc {
        &mut self.dc
    }

    fn after(&mut self, now: Instant) {
        let mut to_save: Vec<Fqdn> = Vec::new();
        let mut synthetic = Vec::new();
        while let Some(ev) = self.dc.poll_event() {
            match ev {
                DcEvent::NodeKeyReceived { fqdn }
                | DcEvent::NodeRegistered { fqdn, .. }
                | DcEvent::NsBound { fqdn }
                | DcEvent::MappingTested { fqdn, .. } => to_save.push(fqdn),
                DcEvent::TunnelDirected { session, mn, cn, relay } => match relay {
                    Some(rs) => log::info!("tunnel {session}: {mn} <-> {cn} via {rs}"),
                    None => log::info!("tunnel {session}: {mn} <-> {cn} direct"),
                },
                DcEvent::TunnelRefused { session, mn, cn, reason } => {
                    log::info!("tunnel {session}: {mn} -> {cn} refused: {reason:?}")
                }
                DcEvent::SyntheticUsed { real, synthetic: s, at } => synthetic.push((real, s, at.as_millis())),
                DcEvent::PushNeeded { fqdn, .. } => {
                    log::warn!("{fqdn} must be woken by a push notification; no push service is configured")
                }
            }
        }
        if !synthetic.is_empty() {
            if let Err(e) = self.store.save_synthetic(&synthetic) {
                self.store_errors += 1;
                log::error!("{e}");
            }
        }
        // A node's state is exported at save time, so one save covers all its events.
        to_save.sort_unstable();
        to_save.dedup();
        self.save_turn(now, &to_save);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Some(self.next_refresh.min(self.next_prune))
    }

    fn handle_timeout(&mut self, now: Instant) {
        if now >= self.next_refresh {
            self.next_refresh = now + REFRESH_INTERVAL;
            self.refresh(now);
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
                    "endpoints": n.endpoints.iter().zip(n.mappings.iter().copied().chain(std::iter::repeat(NatMapping::Untested))).map(|((a, nat), mapping)| serde_json::json!({"addr": a.to_string(), "behind_nat": nat, "mapping": mapping.label()})).collect::<Vec<_>>(),
                    "via_ns": n.via_ns,
                    "announced": n.announced.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
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
            "gateway": self.dc.synthetic_stats().map(|(given, full)| serde_json::json!({
                "synthetic_given": given,
                "refused_pool_full": full,
            })),
        })
    }

    fn reload(&mut self) -> Reload {
        reload_tls(&self.cfg.common.tls, ClientAuth::Required)
    }

    fn handle_datagram_on(&mut self, now: Instant, socket: Local, from: SocketAddr, buf: &mut [u8]) -> Received {
        if socket == MAPPING_PORT {
            self.dc.handle_mapping_datagram(now, from, buf)
        } else {
            Received::Dropped(DropReason::Unexpected)
        }
    }
}

/// Gives the engine the assignments and node states of the database; what the database
/// holds of each node restored. Each node resumes sealing at its stored counter, which is
/// also its limit until the next save reserves more: a crash before that save resumes
/// there again, so nothing may be sealed at it yet.
fn restore(dc: &mut Dc, store: &DcStore, now: Instant) -> Result<HashMap<Fqdn, Saved>, StartError> {
    for (fqdn, addrs) in store.load_assignments()? {
        if let Err(e) = dc.restore_assignment(&fqdn, addrs) {
            log::warn!("database {}: assignment of {fqdn} not restored: {e}", store.path());
        }
    }
    for (real, synthetic, at) in store.load_synthetic()? {
        if let Err(e) = dc.restore_synthetic(real, synthetic, Instant::from_millis(at)) {
            log::info!("database {}: gateway address of {real} not restored: {e}", store.path());
        }
    }
    let mut saved = HashMap::new();
    for snap in store.load_nodes()? {
        let (fqdn, key_id, reserved, peer) = (snap.fqdn.clone(), snap.key_id, snap.next_counter, snap.peer_counter);
        match dc.restore_node(now, snap, reserved) {
            Ok(()) => {
                dc.reserve_counters(&fqdn, key_id, reserved);
                saved.insert(fqdn, Saved { key_id, reserved, peer });
            }
            Err(e) => log::info!("database {}: {fqdn} not restored: {e}", store.path()),
        }
    }
    log::info!("{} nodes restored from {}", saved.len(), store.path());
    Ok(saved)
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
        .map(|n| NsRef { server: ServerRef { name: n.name.clone(), addr: n.addr }, node_addrs: n.node_addr.clone() })
        .collect();
    dcfg.static_peers = cfg.dns.static_dcs.iter().map(|s| s.location()).collect();
    dcfg.max_nodes = cfg.max_nodes;
    dcfg.hold_registrations_until_saved = true;
    dcfg.mapping_port = cfg.mapping_port();
    if let Some(g) = &cfg.gateway {
        // `validate` checked the names.
        let (all, names) = g.names().map_err(|e| StartError::from(format!("gateway.names: {e}")))?;
        dcfg.gateway = Some(ntm_proto::engine::dc::GatewayPolicy {
            relays: g.rs.clone(),
            all,
            names,
            prefixes: g.prefixes.iter().map(|p| (p.addr, p.len)).collect(),
            pool: (g.pool.addr, g.pool.len),
        });
    }
    let clock = crate::driver::Clock::start();
    let now = clock.now();
    let mut dc = Dc::new(dcfg, os_rng(), now)?;

    let store = DcStore::open(&cfg.state)?;
    let saved = restore(&mut dc, &store, now)?;

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
        tcp_idle_timeout: None,
        signals: true,
        max_unauthenticated_per_source: cfg.common.max_unauthenticated_per_source,
        max_buffered_bytes: cfg.common.max_buffered_bytes,
    };
    let mut daemon = DcDaemon { dc, cfg, store, saved, next_refresh: now, next_prune: now, store_errors: 0 };
    // Reserve counters for the restored nodes before anything is sealed for them.
    daemon.refresh(now);
    let mapping_port = daemon.cfg.mapping_port();
    let mapping_addrs: Vec<SocketAddr> =
        daemon.cfg.common.listen.iter().map(|a| SocketAddr::new(a.ip(), mapping_port)).collect();
    let mut driver = Driver::new(driver_cfg, daemon)?;
    if mapping_port != 0 {
        // The same address as the main socket: the mapping test compares what one NAT
        // does toward two ports of one destination address.
        for addr in mapping_addrs {
            driver.bind_extra_udp(MAPPING_PORT, addr).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("mapping_port: {e} (set \"mapping_port\" to a free port, or 0 for no mapping test)"),
                )
            })?;
        }
    }
    Ok(driver)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node's state as the engine exports it: key `[byte; 16]` for an hour from `now`,
    /// UDP keepalive, nothing else known yet.
    fn node_state(fqdn: Fqdn, key_id: KeyId, byte: u8, now: Instant, next: u64, peer: u64) -> NodeState {
        NodeState {
            fqdn,
            key_id,
            key: KNtmDc::from_bytes([byte; 16]),
            expires: now + Duration::from_secs(3600),
            next_counter: next,
            peer_counter: peer,
            attestation: None,
            virtual_addrs: None,
            endpoints: Vec::new(),
            local_addrs: Vec::new(),
            announced: Vec::new(),
            keepalive: KeepaliveMethod::Udp,
            ns: None,
        }
    }
    use ntm_proto::engine::Transmit;
    use ntm_proto::keys::KNtmDc;
    use ntm_proto::wire::registration::{KeepaliveMethod, RegistrationRequest};
    use ntm_proto::wire::Sender;
    use ntm_proto::wire::{Message, RequestId};

    fn name(s: &str) -> Fqdn {
        Fqdn::new(s).unwrap()
    }

    /// An empty directory of this test run.
    fn scratch(label: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ntm-dc-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A DC daemon on a fresh database, holding `nodes` (name, next counter) whose rows
    /// the database has, each reserved at its counter (as after a restore).
    fn daemon(dir: &std::path::Path, now: Instant, nodes: &[(&str, u64)]) -> DcDaemon {
        let cfg: DcFile = serde_json::from_value(serde_json::json!({
            "name": "dc.zone-a.test", "listen": ["127.0.0.1:0"],
            "tls": {"ca": "ca.pem", "cert": "dc.pem", "key": "dc.key"},
            "zones": ["zone-a.test"], "virtual_ipv4": "198.18.0.0/16",
            "virtual_ipv6": "2001:db8:ffff::/96", "state": dir.join("dc.db"),
        }))
        .unwrap();
        let dcfg = DcConfig::new(
            cfg.common.name.clone(),
            cfg.zones.clone(),
            (cfg.virtual_ipv4.addr, cfg.virtual_ipv4.len),
            (cfg.virtual_ipv6.addr, cfg.virtual_ipv6.len),
        );
        let mut dc = Dc::new(dcfg, os_rng(), now).unwrap();
        let mut store = DcStore::open(&cfg.state).unwrap();
        let mut saved = HashMap::new();
        for (i, (n, next)) in nodes.iter().enumerate() {
            let key_id = KeyId(u32::try_from(i).unwrap() + 1);
            let state = node_state(name(n), key_id, 7, now, *next, 5);
            store.save_node(&state).unwrap();
            dc.restore_node(now, state, *next).unwrap();
            saved.insert(name(n), Saved { key_id, reserved: *next, peer: 5 });
        }
        DcDaemon { dc, cfg, store, saved, next_refresh: now, next_prune: now, store_errors: 0 }
    }

    /// A restart resumes a node's channel at the counter its row holds. Until the
    /// database reserves more, nothing may be sealed there: a crash before that save would
    /// resume at the same counter again. After every save the engine may seal up to the
    /// stored value and no further.
    #[test]
    fn the_engine_seals_only_below_what_the_database_holds() {
        use ntm_proto::crypto::Channel;
        use ntm_proto::keys::NtmDc;
        use ntm_proto::wire::registration::Keepalive;
        use ntm_proto::wire::{Message, RequestId, Sender};
        let (dir, now) = (scratch("limit"), Instant::from_millis(1_700_000_000_000));
        let mut d = daemon(&dir, now, &[]);
        let n = name("n.zone-a.test");
        let state = node_state(n.clone(), KeyId(9), 7, now, 500, 0);
        d.store.save_node(&state).unwrap();
        // The restart: the row says resume at 500 + COUNTER_RESERVE.
        let stored = 500 + COUNTER_RESERVE;
        d.saved = restore(&mut d.dc, &d.store, now).unwrap();
        assert_eq!(d.dc.node_counters(&n).map(|c| c.0), Some(stored));

        let mut node: Channel<NtmDc> =
            Channel::new(KNtmDc::from_bytes([7; 16]), KeyId(9), Sender::Node, now + Duration::from_secs(3600)).unwrap();
        let from: std::net::SocketAddr = "198.51.100.7:4500".parse().unwrap();
        let mut keepalive = |d: &mut DcDaemon, id: u32| -> Vec<u64> {
            let mut buf = node.seal(now, &Message::Keepalive(Keepalive { request_id: RequestId(id) })).unwrap();
            let _ = d.dc.handle_datagram(now, from, &mut buf);
            let mut counters = Vec::new();
            while let Some(t) = d.dc.poll_transmit() {
                counters.push(u64::from_be_bytes(t.payload[8..16].try_into().unwrap()));
            }
            counters
        };
        assert_eq!(keepalive(&mut d, 1), Vec::<u64>::new(), "nothing sealed at the stored counter before a save");
        d.refresh(now);
        let rows = d.store.load_nodes().unwrap();
        assert_eq!(rows[0].next_counter, stored + COUNTER_RESERVE, "reserved anew");
        assert_eq!(d.dc.counter_limit(&n), Some(stored + COUNTER_RESERVE), "sealing may go as far as that");
        assert_eq!(keepalive(&mut d, 2), vec![stored], "answered above everything used before the restart");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failed_save_retires_only_a_channel_near_its_reservation() {
        let (dir, now) = (scratch("daemon"), Instant::from_millis(1_700_000_000_000));
        let mut d = daemon(&dir, now, &[("near.zone-a.test", 1000), ("far.zone-a.test", 1000)]);
        let (near, far) = (name("near.zone-a.test"), name("far.zone-a.test"));
        // "near" resumed at its stored reservation: it has used it all and is due. "far"
        // has a reservation well ahead and is due only because its replay floor moved.
        d.saved.get_mut(&far).unwrap().reserved = 1000 + COUNTER_RESERVE;
        d.saved.get_mut(&far).unwrap().peer = 4;

        // Another process holds the database's write lock: every write fails.
        let blocker = rusqlite::Connection::open(&d.cfg.state).unwrap();
        blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
        d.refresh(now);
        assert_eq!(d.store_errors, 1, "one transaction for all due nodes");
        assert_eq!(d.dc.node_counters(&near).map(|c| c.0), Some(u64::MAX), "near: retired, it seals no more");
        assert_eq!(d.dc.node_counters(&far).map(|c| c.0), Some(1000), "far: kept, retried later");

        // Once the database works again, the next refresh saves both; a restart resumes
        // the retired channel at the top (it still seals nothing) and the other above
        // everything it used.
        blocker.execute_batch("ROLLBACK").unwrap();
        d.refresh(now);
        assert_eq!(d.store_errors, 1);
        let rows = d.store.load_nodes().unwrap();
        let row = |f: &Fqdn| rows.iter().find(|r| &r.fqdn == f).map(|r| r.next_counter);
        assert_eq!(row(&near), Some(u64::MAX));
        assert_eq!(row(&far), Some(1000 + COUNTER_RESERVE));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Gives a restored node virtual addresses, as a registration does.
    fn assign(d: &mut DcDaemon, now: Instant, fqdn: &Fqdn, v: VirtualAddrs) {
        let mut state = d.dc.export_node(fqdn).unwrap();
        state.virtual_addrs = Some(v);
        d.dc.restore_assignment(fqdn, v).unwrap();
        let next = state.next_counter;
        d.dc.restore_node(now, state, next).unwrap();
    }

    #[test]
    fn a_turn_is_saved_at_once_and_a_bad_row_only_fails_itself() {
        let (dir, now) = (scratch("turn"), Instant::from_millis(1_700_000_000_000));
        let names = ["a.zone-a.test", "b.zone-a.test", "c.zone-a.test"];
        let mut d = daemon(&dir, now, &[(names[0], 10), (names[1], 20), (names[2], 30)]);
        let fqdns: Vec<Fqdn> = names.iter().map(|n| name(n)).collect();
        let v = |i: u8| VirtualAddrs {
            v4: [198, 18, 0, i].into(),
            v6: [0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, i.into()].into(),
        };
        for (i, f) in fqdns.iter().enumerate() {
            assign(&mut d, now, f, v(i as u8 + 10));
        }

        let errors_before = d.store_errors;
        d.save_turn(now, &fqdns);
        assert_eq!(d.store_errors, errors_before, "the batch commits");
        let stored = d.store.load_assignments().unwrap();
        assert_eq!(stored, fqdns.iter().enumerate().map(|(i, f)| (f.clone(), v(i as u8 + 10))).collect::<Vec<_>>());
        let rows = d.store.load_nodes().unwrap();
        for (f, next) in fqdns.iter().zip([10, 20, 30]) {
            let row = rows.iter().find(|r| &r.fqdn == f).unwrap();
            assert_eq!(row.next_counter, store::reserved_counter(next));
            assert_eq!(d.saved[f].reserved, store::reserved_counter(next), "the refresh knows it is saved");
        }

        // The database holds b's addresses for another node (as after a manual edit): the
        // batch is refused as a whole, then a and c are saved on their own and only b's
        // assignment fails.
        let other = name("other.zone-a.test");
        d.store.save_assignment(&fqdns[1], v(9)).unwrap();
        d.store.save_assignment(&other, v(11)).unwrap();
        d.save_turn(now, &fqdns);
        assert_eq!(d.store_errors, errors_before + 1, "only b's assignment failed");
        let stored = d.store.load_assignments().unwrap();
        let addr_of = |f: &Fqdn| stored.iter().find(|(n, _)| n == f).map(|(_, a)| *a);
        assert_eq!(addr_of(&fqdns[0]), Some(v(10)));
        assert_eq!(addr_of(&fqdns[2]), Some(v(12)));
        assert_eq!(addr_of(&other), Some(v(11)));
        assert_eq!(addr_of(&fqdns[1]), Some(v(9)), "b's row is left as it was");

        // The same in the counter refresh: b's refused row does not hold back a and c.
        d.saved.clear();
        d.refresh(now);
        assert!(d.saved.contains_key(&fqdns[0]) && d.saved.contains_key(&fqdns[2]), "a and c are saved");
        assert!(!d.saved.contains_key(&fqdns[1]), "b is not");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A DC daemon as `build` makes it (holding registrations until saved, restored from
    /// the database in `dir`), without sockets.
    fn started(dir: &std::path::Path, now: Instant) -> DcDaemon {
        let mut d = daemon(dir, now, &[]);
        let mut dcfg = d.dc.config().clone();
        dcfg.hold_registrations_until_saved = true;
        d.dc = Dc::new(dcfg, os_rng(), now).unwrap();
        d.saved = restore(&mut d.dc, &d.store, now).unwrap();
        d.store.set_busy_timeout(std::time::Duration::from_millis(20)).unwrap();
        d
    }

    /// A node of the test: its K_ntmdc channel, as the node end holds it.
    struct TestNode {
        fqdn: Fqdn,
        key_id: KeyId,
        channel: ntm_proto::crypto::Channel<ntm_proto::keys::NtmDc>,
        addr: std::net::SocketAddr,
        request: u32,
    }

    impl TestNode {
        fn new(i: u8, now: Instant) -> Self {
            let key_id = KeyId(100 + u32::from(i));
            let expires = now + Duration::from_secs(3600);
            let channel =
                ntm_proto::crypto::Channel::new(KNtmDc::from_bytes([i; 16]), key_id, Sender::Node, expires).unwrap();
            let addr = std::net::SocketAddr::from(([192, 0, 2, i], 4500));
            TestNode { fqdn: name(&format!("n{i}.zone-a.test")), key_id, channel, addr, request: 1000 * u32::from(i) }
        }

        /// The AS hands the node's key to the DC (as Key Distribution does).
        fn give_key(&self, d: &mut DcDaemon, now: Instant) {
            let i = self.addr.ip().to_string().rsplit('.').next().unwrap().parse::<u8>().unwrap();
            let state = node_state(self.fqdn.clone(), self.key_id, i, now, 0, 0);
            d.dc.restore_node(now, state, 0).unwrap();
        }

        /// Sends a Registration Request (a new one, or `again` the last one) through one
        /// turn of the daemon; the virtual addresses of the response, if one went out.
        fn register(&mut self, d: &mut DcDaemon, now: Instant, again: bool) -> Option<VirtualAddrs> {
            if !again {
                self.request += 1;
            }
            let local = ntm_proto::wire::List::from_vec(vec![self.addr]).unwrap();
            let msg = Message::RegistrationRequest(RegistrationRequest {
                request_id: RequestId(self.request),
                local_addrs: local,
                keepalive: KeepaliveMethod::Udp,
                ns_key_lost: None,
                announced: Default::default(),
            });
            let mut bytes = self.channel.seal(now, &msg).unwrap();
            d.dc.handle_datagram(now, self.addr, &mut bytes);
            d.after(now);
            let sent: Vec<Transmit> = std::iter::from_fn(|| d.dc.poll_transmit()).collect();
            self.answer(now, &sent)
        }

        /// The virtual addresses of a Registration Response among what the daemon sent.
        fn answer(&mut self, now: Instant, sent: &[Transmit]) -> Option<VirtualAddrs> {
            let mut got = None;
            for t in sent.iter().filter(|t| t.dst == self.addr) {
                if let Ok((_, Message::RegistrationResponse(r))) = self.channel.open(now, &t.payload) {
                    assert_eq!(r.request_id, RequestId(self.request));
                    got = Some(r.virtual_addrs);
                }
            }
            got
        }
    }

    /// With the database unwritable, registrations are not acknowledged; once it works
    /// again the held answers go out; and across a crash while it failed no virtual
    /// address is ever acknowledged to two nodes.
    #[test]
    fn registrations_are_acknowledged_only_once_saved_and_no_address_goes_to_two_nodes() {
        let (dir, mut now) = (scratch("durable"), Instant::from_millis(1_700_000_000_000));
        let mut acked: Vec<(Fqdn, VirtualAddrs)> = Vec::new();
        let mut d = started(&dir, now);
        let mut nodes: Vec<TestNode> = (1..=4).map(|i| TestNode::new(i, now)).collect();
        for n in &nodes {
            n.give_key(&mut d, now);
        }
        // n1 registers while the database works: answered at once.
        let a = nodes[0].register(&mut d, now, false).expect("n1 is answered");
        acked.push((nodes[0].fqdn.clone(), a));

        // Another process holds the database's write lock: every write fails.
        let blocker = rusqlite::Connection::open(&d.cfg.state).unwrap();
        blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let errors = d.store_errors;
        for n in nodes.iter_mut().skip(1).take(2) {
            assert_eq!(n.register(&mut d, now, false), None, "{}: no answer for an unsaved registration", n.fqdn);
        }
        // The nodes retransmit, the refresh retries: still nothing while the database fails.
        now = now + Duration::from_secs(1);
        d.handle_timeout(now);
        assert_eq!(nodes[1].register(&mut d, now, true), None);
        assert!(d.store_errors > errors, "the failures are counted");

        // The database works again: the next refresh saves n2 and the held answer goes out.
        blocker.execute_batch("ROLLBACK").unwrap();
        now = now + Duration::from_secs(1);
        d.handle_timeout(now);
        let sent: Vec<Transmit> = std::iter::from_fn(|| d.dc.poll_transmit()).collect();
        let b = nodes[1].answer(now, &sent).expect("n2 is answered once saved");
        acked.push((nodes[1].fqdn.clone(), b));
        let c = nodes[2].answer(now, &sent).expect("n3 too");
        acked.push((nodes[2].fqdn.clone(), c));

        // The disk fails again; n4 registers and is not answered; the DC is killed.
        blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
        assert_eq!(nodes[3].register(&mut d, now, false), None);
        drop(d);
        blocker.execute_batch("ROLLBACK").unwrap();

        // Restarted: the nodes register again, in another order, after n4 logs in afresh.
        let mut d = started(&dir, now);
        nodes[3].give_key(&mut d, now);
        for i in [3, 2, 1, 0] {
            let n = &mut nodes[i];
            let v = n.register(&mut d, now, false).expect("answered after the restart");
            acked.push((n.fqdn.clone(), v));
        }
        for (f, v) in &acked {
            for (g, w) in &acked {
                assert!(f == g || (v.v4 != w.v4 && v.v6 != w.v6), "{f} and {g} were both given {v:?} / {w:?}");
            }
        }
        let mut first: HashMap<&Fqdn, VirtualAddrs> = HashMap::new();
        for (f, v) in &acked {
            assert_eq!(*first.entry(f).or_insert(*v), *v, "{f} keeps its addresses");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn due_and_retire_rules() {
        let k1 = KeyId(1);
        let old = Saved { key_id: k1, reserved: 10 + COUNTER_RESERVE, peer: 0 };
        // The old key's entry would hide a new key's fresh counters: the entry is dropped.
        assert!(!is_due(Some(&old), 0, 0));
        assert!(is_due(None, 0, 0));
        assert!(!must_retire(Some(&old), KeyId(2), u64::MAX - 1), "no stored row for the new key");
        assert!(must_retire(Some(&old), k1, 10 + COUNTER_RESERVE - COUNTER_RESERVE / 4));
        assert!(!must_retire(Some(&old), k1, 10 + COUNTER_RESERVE / 2));
        assert!(!must_retire(Some(&old), k1, u64::MAX), "already retired");
    }
}
