//! Test support: a deployment of the real daemons on loopback, nodes driven by the
//! library's node engine over real sockets, and a real DNS server (NSD) for discovery.
//!
//! Everything lives in a fresh temporary directory; daemons are child processes stopped by
//! their PID (SIGTERM, then SIGKILL) when the test ends, also when it fails; their logs
//! are printed on failure.

#![allow(dead_code, clippy::print_stderr)]

use ntm_dns::{Locator, LocatorConfig};
use ntm_proto::crypto::pk::KeyPair;
use ntm_proto::engine::node::{Node, NodeConfig, NodeEvent, ResolveError};
use ntm_proto::engine::DcLocation;
use ntm_proto::time::{Duration, Instant};
use ntm_proto::wire::login::{Credential, Password};
use ntm_proto::wire::registration::KeepaliveMethod;
use ntm_proto::wire::{Fqdn, Text, VirtualAddrs};
use ntm_servers::driver::{Daemon, Driver, DriverConfig};
use ntm_servers::pki;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

pub fn name(s: &str) -> Fqdn {
    Fqdn::new(s).unwrap()
}

/// A port free a moment ago on `ip`, for both UDP and TCP. It is taken below the kernel's
/// ephemeral range (32768 and up by default), and each port is handed out once per
/// process: a port the kernel picked for port 0 was free to be picked again, for another
/// test's socket or a daemon's client socket, between this check and the test's own bind
/// (CI failed once with "Address already in use").
pub fn free_port(ip: IpAddr) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 32_768 - FIRST;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(97) % COUNT;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (start + n) % COUNT) as u16;
        let addr = SocketAddr::new(ip, port);
        if UdpSocket::bind(addr).is_ok() && std::net::TcpListener::bind(addr).is_ok() {
            return port;
        }
    }
}

/// A temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("ntm-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn bin(name: &str) -> PathBuf {
    match name {
        "ntm-as" => PathBuf::from(env!("CARGO_BIN_EXE_ntm-as")),
        "ntm-dc" => PathBuf::from(env!("CARGO_BIN_EXE_ntm-dc")),
        "ntm-rs" => PathBuf::from(env!("CARGO_BIN_EXE_ntm-rs")),
        "ntm-ca" => PathBuf::from(env!("CARGO_BIN_EXE_ntm-ca")),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_ntm-ns")),
    }
}

/// Runs an administration command, `ca ...` with `ntm-ca` and the rest with `ntm-as`;
/// panics with its output if it fails.
pub fn admin(args: &[&str], stdin: Option<&str>) {
    let (program, args) = match args.split_first() {
        Some((&"ca", rest)) => ("ntm-ca", rest),
        _ => ("ntm-as", args),
    };
    let mut cmd = Command::new(bin(program));
    cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(s) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A running daemon; stopped by PID on drop, its log printed if the test is failing.
pub struct Running {
    pub program: String,
    pub child: Child,
    pub status: PathBuf,
    pub log: PathBuf,
    pub config: PathBuf,
}

impl Running {
    pub fn start(program: &str, config: &Path, status: &Path, log: &Path) -> Running {
        let out = std::fs::File::create(log).unwrap();
        let child = Command::new(bin(program))
            .arg("run")
            .arg("-c")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let mut r =
            Running { program: program.into(), child, status: status.into(), log: log.into(), config: config.into() };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while r.try_status().is_none() {
            if let Ok(Some(code)) = r.child.try_wait() {
                panic!("{program} exited ({code}) at start:\n{}", r.log_text());
            }
            assert!(std::time::Instant::now() < deadline, "{program} did not come up:\n{}", r.log_text());
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        r
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn try_status(&self) -> Option<serde_json::Value> {
        use std::io::Read;
        let mut s = std::os::unix::net::UnixStream::connect(&self.status).ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn status(&self) -> serde_json::Value {
        self.try_status().unwrap_or_else(|| panic!("{} status unavailable:\n{}", self.program, self.log_text()))
    }

    /// True if the process still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then wait (SIGKILL after 5 s). Returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").arg("-TERM").arg(&pid).stderr(Stdio::null()).status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.child.wait().ok().and_then(|s| s.code())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.alive() {
            self.stop();
        }
        if std::thread::panicking() {
            eprintln!("----- {} log -----\n{}", self.program, self.log_text());
        }
    }
}

/// NSD serving the deployment's zones on loopback.
pub struct Nsd {
    child: Child,
    pub addr: SocketAddr,
    _dir: TempDir,
}

pub fn nsd_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join("nsd"))
        .find(|p| p.is_file())
}

impl Nsd {
    /// Serves `zones` (name, zone file text); None (with a notice) if NSD is missing.
    pub fn start(zones: &[(&str, String)]) -> Option<Nsd> {
        let Some(binary) = nsd_binary() else {
            assert!(std::env::var_os("NTM_REQUIRE_LAB").is_none(), "nsd is required (NTM_REQUIRE_LAB is set)");
            eprintln!("NOTICE: nsd not installed (apt-get install -y nsd): DNS discovery tests skipped");
            return None;
        };
        let dir = TempDir::new("nsd");
        let port = free_port(IpAddr::from([127, 0, 0, 1]));
        let d = dir.path().display();
        let mut conf = format!(
            "server:\n  ip-address: 127.0.0.1@{port}\n  do-ip6: no\n  username: \"\"\n  chroot: \"\"\n  zonesdir: \"{d}\"\n  database: \"\"\n  pidfile: \"{d}/nsd.pid\"\n  xfrdfile: \"{d}/xfrd.state\"\n  zonelistfile: \"{d}/zone.list\"\n  xfrdir: \"{d}\"\n  logfile: \"{d}/nsd.log\"\n  server-count: 1\nremote-control:\n  control-enable: no\n"
        );
        for (zone, text) in zones {
            conf.push_str(&format!("zone:\n  name: {zone}\n  zonefile: {zone}.zone\n"));
            std::fs::write(dir.path().join(format!("{zone}.zone")), text).unwrap();
        }
        std::fs::write(dir.path().join("nsd.conf"), conf).unwrap();
        let child = Command::new(binary)
            .arg("-d")
            .arg("-c")
            .arg(dir.path().join("nsd.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let nsd = Nsd { child, addr: SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port), _dir: dir };
        // NSD answers once its zones are loaded; wait for an SOA answer.
        let zone = zones.first().map(|(z, _)| name(z)).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let mut l = Locator::new(
                LocatorConfig {
                    nameservers: vec![nsd.addr],
                    ntm_domains: vec![zone.clone()],
                    timeout: Duration::from_millis(200),
                    attempts: 1,
                    ..LocatorConfig::default()
                },
                Box::new(rand_core::OsRng),
            );
            let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
            sock.set_read_timeout(Some(std::time::Duration::from_millis(300))).unwrap();
            l.start(Instant::ZERO, ntm_proto::engine::DnsQuery { id: 1, name: zone.clone(), addresses: false });
            while let Some((to, b)) = l.poll_transmit() {
                let _ = sock.send_to(&b, to);
            }
            let mut buf = [0u8; 2048];
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                l.handle_response(Instant::ZERO, from, &buf[..n]);
                while let Some((to, b)) = l.poll_transmit() {
                    let _ = sock.send_to(&b, to);
                    if let Ok((n, from)) = sock.recv_from(&mut buf) {
                        l.handle_response(Instant::ZERO, from, &buf[..n]);
                    }
                }
                if l.poll_answer().is_some() {
                    return Some(nsd);
                }
            }
            assert!(std::time::Instant::now() < deadline, "nsd did not answer");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

impl Drop for Nsd {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).stderr(Stdio::null()).status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The files of a deployment: CA and certificates.
pub struct Pki {
    pub dir: TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = TempDir::new("pki");
        let ca = dir.path().join("ca");
        admin(&["ca", "init", "--out", ca.to_str().unwrap()], None);
        Pki { dir }
    }

    pub fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    pub fn ca_pem(&self) -> PathBuf {
        self.ca_dir().join("ca.pem")
    }

    /// Issues a certificate; returns (cert, key) paths.
    pub fn issue(&self, role: &str, fqdn: &str) -> (PathBuf, PathBuf) {
        let out = self.dir.path().join("certs");
        let ca = self.ca_dir();
        admin(
            &[
                "ca",
                "issue",
                "--ca",
                ca.to_str().unwrap(),
                "--role",
                role,
                "--name",
                fqdn,
                "--out",
                out.to_str().unwrap(),
            ],
            None,
        );
        (out.join(format!("{fqdn}.pem")), out.join(format!("{fqdn}.key")))
    }

    pub fn tls_json(&self, role: &str, fqdn: &str) -> serde_json::Value {
        let (cert, key) = self.issue(role, fqdn);
        serde_json::json!({"ca": self.ca_pem(), "cert": cert, "key": key})
    }
}

/// A node's engine in a test: the driver's daemon.
pub struct NodeHost {
    pub node: Node,
    pub events: Vec<NodeEvent>,
}

impl Daemon for NodeHost {
    type Engine = Node;
    fn engine(&mut self) -> &mut Node {
        &mut self.node
    }
    fn after(&mut self, _now: Instant) {
        while let Some(e) = self.node.poll_event() {
            self.events.push(e);
        }
    }
    fn status(&mut self, _now: Instant) -> serde_json::Value {
        serde_json::json!({})
    }
}

/// How a test node logs in.
pub enum Cred {
    Password(String, String),
    Device(PathBuf, PathBuf),
    Token(String),
}

pub struct TestNode {
    pub driver: Driver<NodeHost>,
    pub addr: SocketAddr,
}

pub struct NodeSetup {
    pub as_addr: SocketAddr,
    pub ca: PathBuf,
    pub dc: DcLocation,
    pub zone: Fqdn,
    /// Pretend the local address is another one, so the DC sees "behind NAT".
    pub fake_nat: bool,
    pub keepalive: KeepaliveMethod,
    pub route_optimization: bool,
    pub bind_ip: IpAddr,
}

impl TestNode {
    pub fn new(setup: &NodeSetup, cred: Cred) -> TestNode {
        let port = free_port(setup.bind_ip);
        let addr = SocketAddr::new(setup.bind_ip, port);
        let (credential, tls) = match &cred {
            Cred::Password(email, pw) => (
                Credential::Password {
                    email: Text::new(email).unwrap(),
                    password: Password::new(pw.as_bytes()).unwrap(),
                },
                pki::client_config_without_cert(&pki::load_ca(&setup.ca).unwrap()).unwrap(),
            ),
            Cred::Device(cert, key) => {
                let m = pki::TlsMaterial::load(&setup.ca, cert, key).unwrap();
                (Credential::DeviceCertificate, pki::client_config(&m).unwrap())
            }
            Cred::Token(t) => (
                Credential::OidcToken(ntm_proto::wire::login::IdToken::new(t.as_bytes()).unwrap()),
                pki::client_config_without_cert(&pki::load_ca(&setup.ca).unwrap()).unwrap(),
            ),
        };
        let reported = if setup.fake_nat { SocketAddr::new(setup.bind_ip, 9) } else { addr };
        let mut cfg = NodeConfig::new(vec![setup.as_addr], name("as.test"), credential, vec![reported]);
        cfg.static_dc = Some(setup.dc.clone());
        cfg.keepalive = setup.keepalive.clone();
        cfg.route_optimization = setup.route_optimization;
        let node = Node::new(cfg, Box::new(rand_core::OsRng)).unwrap();
        let dc = DriverConfig {
            udp: vec![addr],
            tls: Vec::new(),
            tcp: Vec::new(),
            tls_server: None,
            tls_client: Some(tls),
            identify: ntm_servers::daemon::identify,
            locator: None,
            status_socket: None,
            max_connections: 16,
            tls_idle_timeout: None,
            tcp_idle_timeout: None,
            signals: false,
            max_unauthenticated_per_source: 64,
            max_buffered_bytes: 8 << 20,
        };
        let driver = Driver::new(dc, NodeHost { node, events: Vec::new() }).unwrap();
        TestNode { driver, addr }
    }

    pub fn node(&mut self) -> &mut Node {
        &mut self.driver.daemon().node
    }

    pub fn start(&mut self) {
        let now = self.driver.now();
        self.node().start(now);
    }

    pub fn events(&mut self) -> Vec<NodeEvent> {
        std::mem::take(&mut self.driver.daemon().events)
    }
}

/// Turns every node's loop until `cond` or `secs` pass; returns whether `cond` held.
pub fn run_until(nodes: &mut [&mut TestNode], secs: u64, mut cond: impl FnMut(&mut [&mut TestNode]) -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        for n in nodes.iter_mut() {
            n.driver.turn(std::time::Duration::from_millis(2)).unwrap();
        }
        if cond(nodes) {
            return true;
        }
    }
    false
}

/// Logs in and registers; true once registered.
pub fn bring_up(n: &mut TestNode) -> bool {
    n.start();
    run_until(&mut [n], 20, |ns| ns[0].node().is_registered())
}

/// Resolves `peer` from `n` (both keep running); the answer.
pub fn resolve(nodes: &mut [&mut TestNode], from: usize, peer: &str) -> Result<VirtualAddrs, ResolveError> {
    let now = nodes[from].driver.now();
    let id = nodes[from].node().resolve(now, name(peer));
    let mut answer = None;
    run_until(nodes, 30, |ns| {
        for e in ns[from].events() {
            match e {
                NodeEvent::Resolved { id: i, virtual_addrs, .. } if i == id => answer = Some(Ok(virtual_addrs)),
                NodeEvent::ResolveFailed { id: i, error, .. } if i == id => answer = Some(Err(error)),
                _ => {}
            }
        }
        answer.is_some()
    });
    answer.unwrap_or(Err(ResolveError::Timeout))
}

/// A minimal IPv4 packet between virtual addresses.
pub fn ipv4(src: std::net::Ipv4Addr, dst: std::net::Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    let total = u16::try_from(20 + payload.len()).unwrap();
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(payload);
    p
}

/// Sends a packet from `a` to `b` over their tunnel; true if `b` received it (the node
/// driver hands decrypted packets to no TUN here, so the check is the peer's counter).
pub fn ping(nodes: &mut [&mut TestNode], a: usize, b: usize) -> bool {
    let src = nodes[a].node().virtual_addrs().unwrap().v4;
    let dst = nodes[b].node().virtual_addrs().unwrap().v4;
    let before: u64 = nodes[b].node().tunnels().iter().map(|t| t.rx_packets).sum();
    let now = nodes[a].driver.now();
    if nodes[a].node().send_ip(now, &ipv4(src, dst, b"ping")).is_err() {
        return false;
    }
    run_until(nodes, 3, |ns| ns[b].node().tunnels().iter().map(|t| t.rx_packets).sum::<u64>() > before)
}

pub fn keypair() -> KeyPair {
    KeyPair::generate(&mut rand_core::OsRng)
}

pub fn write_json(path: &Path, v: &serde_json::Value) {
    std::fs::write(path, serde_json::to_string_pretty(v).unwrap()).unwrap();
}

pub fn arc<T>(t: T) -> Arc<T> {
    Arc::new(t)
}
pub mod site;
