//! `ntm-rs`: the Relay Server.
//!
//! Two sides over one engine ([`Rs`], behind a lock): the control thread runs the
//! [`Driver`] for the DCs' TLS streams, timers, signals and status, with no UDP socket
//! of its own; the relay workers ([`relay::Workers`]) read and send the UDP port in
//! batches, `workers` of them (the configuration's), each session on one of them.
//!
//! As a gateway to ordinary hosts (`gateway` in the configuration) the RS opens a TUN
//! device at start, while it still has the privilege: the workers write the boxes'
//! packets to it, and a gateway thread reads the hosts' answers from it, hands them to
//! the engine and sends what it gives back from the relay's port (a copy of the first
//! worker's socket). The kernel forwards and masquerades; see docs/servers.md.

use super::relay::{self, Workers};
use super::{drops_json, identify, key_kinds, reload_tls, tls_configs, StartError};
use crate::config::{secs, RsFile, RsGateway};
use crate::driver::{Daemon, Driver, DriverConfig, Reload};
use crate::pki::ClientAuth;
use ntm_proto::engine::gateway::GatewayConfig;
use ntm_proto::engine::rs::{Rs, RsConfig};
use ntm_proto::engine::{DnsAnswer, DnsQuery, DropCounters, Engine, PeerIdentity, Received, StreamKind, Transmit};
use ntm_proto::time::{Duration, Instant};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

/// The engine as the control thread sees it: every call takes the lock. Datagrams are
/// the workers' ([`Rs::poll_udp_transmit`]); this side sends only what goes on streams.
#[derive(Debug)]
pub struct SharedRs {
    rs: Arc<Mutex<Rs>>,
    /// The engine's drop counters as of the last call from this side ([`Engine::drops`]
    /// hands out a reference, which a lock cannot; status reads the engine itself).
    drops: DropCounters,
}

impl SharedRs {
    fn with<T>(&mut self, f: impl FnOnce(&mut Rs) -> T) -> T {
        let mut rs = relay::lock(&self.rs);
        let out = f(&mut rs);
        self.drops = rs.drops().clone();
        out
    }
}

impl Engine for SharedRs {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, buf: &mut [u8]) -> Received {
        self.with(|rs| rs.handle_datagram(now, from, buf))
    }

    fn handle_stream(
        &mut self,
        now: Instant,
        kind: StreamKind,
        from: SocketAddr,
        peer: Option<&PeerIdentity>,
        frame: &[u8],
    ) -> Received {
        self.with(|rs| rs.handle_stream(now, kind, from, peer, frame))
    }

    fn handle_stream_closed(&mut self, now: Instant, kind: StreamKind, peer: SocketAddr) {
        self.with(|rs| rs.handle_stream_closed(now, kind, peer));
    }

    fn handle_dns(&mut self, now: Instant, id: u64, answer: DnsAnswer) {
        self.with(|rs| rs.handle_dns(now, id, answer));
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.with(|rs| rs.handle_timeout(now));
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.with(Rs::poll_stream_transmit)
    }

    fn poll_dns(&mut self) -> Option<DnsQuery> {
        None
    }

    fn poll_timeout(&self) -> Option<Instant> {
        relay::lock(&self.rs).poll_timeout()
    }

    fn drops(&self) -> &DropCounters {
        &self.drops
    }
}

/// The RS daemon: the engine, its workers, and where its TLS files are (for SIGHUP).
#[derive(Debug)]
pub struct RsDaemon {
    rs: SharedRs,
    workers: Workers,
    cfg: RsFile,
}

impl Daemon for RsDaemon {
    type Engine = SharedRs;

    fn engine(&mut self) -> &mut SharedRs {
        &mut self.rs
    }

    fn status(&mut self, _now: Instant) -> serde_json::Value {
        let rs = relay::lock(&self.rs.rs);
        let sessions: Vec<serde_json::Value> = rs
            .sessions()
            .iter()
            .map(|s| {
                let workers: Vec<u32> = (0..64).filter(|w| s.workers & (1 << w) != 0).collect();
                serde_json::json!({
                    "session": s.session.to_string(),
                    "mn": s.mn.map(|a| a.to_string()),
                    "cn": s.cn.map(|a| a.to_string()),
                    "relayed": s.relayed,
                    "workers": workers,
                })
            })
            .collect();
        let workers: Vec<serde_json::Value> = self.workers.stats().iter().enumerate().map(|(i, w)| w.json(i)).collect();
        let gateway = rs.gateway_stats().map(|g| {
            let sessions: Vec<serde_json::Value> = rs
                .gateway_sessions()
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "session": s.session.to_string(),
                        "node": s.node.to_string(),
                        "synthetic": s.synthetic.to_string(),
                        "real": s.real.to_string(),
                        "internal": s.internal.to_string(),
                        "endpoint": s.endpoint.map(|a| a.to_string()),
                        "flows": s.flows,
                        "to_host": s.to_host,
                        "to_box": s.to_box,
                    })
                })
                .collect();
            serde_json::json!({
                "sessions": sessions,
                "to_hosts": g.to_hosts,
                "to_boxes": g.to_boxes,
                "dropped_not_allowed": g.dropped_not_allowed,
                "dropped_limit": g.dropped_limit,
                "dropped_unmapped": g.dropped_unmapped,
                "dropped_malformed": g.dropped_malformed,
                "refused": g.refused,
                "no_answer_warnings": g.no_answer_warnings,
            })
        });
        serde_json::json!({
            "role": "rs",
            "gateway": gateway,
            "name": self.cfg.common.name.as_str(),
            "relay_addrs": self.cfg.advertised().iter().map(ToString::to_string).collect::<Vec<_>>(),
            "udp": self.workers.addrs().iter().map(ToString::to_string).collect::<Vec<_>>(),
            "sessions": sessions,
            "workers": workers,
            "keys": key_kinds(&rs.held_keys()),
            "dropped": drops_json(rs.drops()),
        })
    }

    fn reload(&mut self) -> Reload {
        reload_tls(&self.cfg.common.tls, ClientAuth::Required)
    }

    fn own_udp_addrs(&self) -> Vec<SocketAddr> {
        self.workers.addrs().to_vec()
    }
}

/// Builds the RS from its configuration: binds the workers' sockets and the TLS
/// listeners, then starts the workers.
pub fn build(cfg: RsFile) -> Result<Driver<RsDaemon>, StartError> {
    let (server, _) = tls_configs(&cfg.common.tls, ClientAuth::Required)?;
    let mut rc = RsConfig::new(cfg.common.name.clone(), cfg.advertised());
    rc.max_sessions = cfg.max_sessions;
    rc.session_idle_timeout = secs(cfg.session_idle_secs);
    rc.max_session_pps = cfg.max_session_pps;
    if let Some(g) = &cfg.gateway {
        let mut gc = GatewayConfig::new((g.internal.addr, g.internal.len));
        gc.max_sessions = g.max_sessions;
        gc.max_hosts_per_box = g.max_hosts_per_box;
        gc.max_flows_per_session = g.max_flows_per_session;
        gc.idle_timeout = secs(g.idle_secs);
        gc.flow_idle_timeout = secs(g.flow_idle_secs);
        gc.max_session_pps = cfg.max_session_pps;
        rc.gateway = Some(gc);
    }
    let rs = Arc::new(Mutex::new(Rs::new(rc)?));
    let mut workers = Workers::bind(&cfg.common.listen, cfg.workers.count())?;
    let gateway = match &cfg.gateway {
        Some(g) => {
            let tun = Arc::new(relay::GatewayTun(open_tun(g)?));
            workers.set_gateway_tun(Arc::clone(&tun));
            Some((tun, workers.senders()?))
        }
        None => None,
    };
    let dc = DriverConfig {
        udp: Vec::new(),
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
    let shared = SharedRs { rs: Arc::clone(&rs), drops: DropCounters::default() };
    let mut driver = Driver::new(dc, RsDaemon { rs: shared, workers, cfg })?;
    let clock = driver.clock();
    let d = driver.daemon();
    d.workers.start(&rs, clock)?;
    log::info!("relay: {} worker(s)", d.workers.count());
    if let Some((tun, senders)) = gateway {
        std::thread::Builder::new().name("gateway".into()).spawn(move || run_gateway(&tun.0, &rs, clock, &senders))?;
    }
    Ok(driver)
}

/// The gateway's TUN device: up, with the internal prefix's first address.
fn open_tun(g: &RsGateway) -> Result<tun::Device, StartError> {
    let len = g.internal.len.min(32);
    let mask = ntm_proto::wire::prefix::v4_mask(len);
    let own = Ipv4Addr::from((u32::from(g.internal.addr) & mask) + 1);
    let mut tc = tun::Configuration::default();
    tc.tun_name(g.tun.as_str()).address(own).netmask(Ipv4Addr::from(mask)).mtu(1500).up();
    let dev = tun::create(&tc).map_err(|e| format!("gateway TUN device {}: {e}", g.tun))?;
    log::info!("gateway: TUN device {} with {own}/{len}", g.tun);
    Ok(dev)
}

/// The gateway thread: answers of ordinary hosts from the TUN device, back to the boxes.
fn run_gateway(tun: &tun::Device, rs: &Arc<Mutex<Rs>>, clock: ntm_io::Clock, senders: &[std::net::UdpSocket]) {
    let families: Vec<bool> = senders.iter().map(|s| s.local_addr().is_ok_and(|a| a.is_ipv4())).collect();
    let mut buf = vec![0u8; 65_536];
    loop {
        let n = match tun.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted || e.kind() == std::io::ErrorKind::WouldBlock => {
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                continue;
            }
            Err(e) => {
                log::error!("gateway TUN device: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        };
        let Some(packet) = buf.get(..n) else { continue };
        let out = {
            let mut engine = relay::lock(rs);
            let now = clock.now();
            engine.handle_gateway_packet(now, packet)
        };
        let Some(t) = out else { continue };
        let sock = families.iter().position(|&v4| v4 == t.dst.is_ipv4()).and_then(|i| senders.get(i));
        if sock.is_none_or(|s| s.send_to(&t.payload, t.dst).is_err()) {
            log::debug!("gateway: an answer to {} not sent", t.dst);
        }
    }
}
