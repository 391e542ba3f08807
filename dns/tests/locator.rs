//! Drives [`ntm_dns::Locator`] against a real DNS server (house style, rule 19):
//! NSD, NLnet Labs' authoritative server, run in the foreground on 127.0.0.1 at a random
//! high port from a temporary directory, serving a parent zone `ntm.test` with two
//! delegated NTM zones:
//!
//! - `a.ntm.test`, delegated to `dc1.a.ntm.test` (in-bailiwick: the referral carries glue),
//!   and not served here, so NSD answers for it with a referral (case b);
//! - `b.ntm.test`, delegated to `dc2.hosts.ntm.test` and served here too, so a name in it
//!   gets NXDOMAIN or NODATA with the zone's SOA (case c), its apex gets NS records in the
//!   answer (case a), and `alias.ntm.test` is a CNAME into it (case d);
//! - `d.ntm.test`, delegated to a DC named in another zone (`dc4.example.net`), whose
//!   addresses the locator must ask for.
//!
//! The test is skipped, with a notice on stderr, when `nsd` is not installed; CI installs
//! it (`apt-get install -y nsd`). The server is stopped by its PID (SIGTERM, then SIGKILL)
//! and its directory removed when the test ends, also when it fails.
// A driver: sockets, clock, processes and files are its job, and the skip notice is printed.
#![allow(clippy::disallowed_methods, clippy::print_stderr)]

use ntm_dns::{Locator, LocatorConfig};
use ntm_proto::engine::{DcLocation, DnsAnswer, DnsQuery};
use ntm_proto::wire::Fqdn;
use ntm_proto::Instant;
use rand_chacha::rand_core::SeedableRng;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const PARENT_ZONE: &str = "\
$ORIGIN ntm.test.
$TTL 300
@          SOA   ns.ntm.test. hostmaster.ntm.test. 1 3600 600 86400 300
@          NS    ns.ntm.test.
ns         A     127.0.0.1
a          NS    dc1.a.ntm.test.
dc1.a      A     192.0.2.1
dc1.a      AAAA  2001:db8::1
b          NS    dc2.hosts.ntm.test.
dc2.hosts  A     192.0.2.2
dc2.hosts  AAAA  2001:db8::2
dc2.hosts  A     192.0.2.12
d          NS    dc4.example.net.
alias      CNAME node1.b.ntm.test.
";

const CHILD_ZONE: &str = "\
$ORIGIN b.ntm.test.
$TTL 300
@          SOA   dc2.hosts.ntm.test. hostmaster.ntm.test. 1 3600 600 86400 300
@          NS    dc2.hosts.ntm.test.
node1      AAAA  2001:db8::100
";

const OTHER_ZONE: &str = "\
$ORIGIN example.net.
$TTL 300
@          SOA   ns.example.net. hostmaster.example.net. 1 3600 600 86400 300
@          NS    ns.example.net.
ns         A     127.0.0.1
dc4        A     198.51.100.4
dc4        AAAA  2001:db8::4
";

/// A running NSD; stopped and cleaned up on drop.
struct Nsd {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Nsd {
    /// Starts NSD at a free port, or None if it would not come up.
    fn start(binary: &Path) -> Option<Nsd> {
        for attempt in 0..3 {
            let port = free_port();
            let dir = std::env::temp_dir().join(format!("ntm-dns-locator-{}-{attempt}-{port}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("temporary directory");
            write_config(&dir, port);
            let child = Command::new(binary)
                .arg("-d")
                .arg("-c")
                .arg(dir.join("nsd.conf"))
                .current_dir(&dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let child = match child {
                Ok(child) => child,
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    panic!("cannot run {}: {e}", binary.display());
                }
            };
            let mut nsd = Nsd { child, dir, addr: SocketAddr::from(([127, 0, 0, 1], port)) };
            if nsd.wait_ready() {
                return Some(nsd);
            }
            let log = std::fs::read_to_string(nsd.dir.join("nsd.log")).unwrap_or_default();
            eprintln!("nsd did not come up on port {port} (attempt {attempt}):\n{log}");
            drop(nsd);
        }
        None
    }

    /// Waits until NSD answers (it loads the zones after binding), up to 10 s.
    fn wait_ready(&mut self) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return false;
            }
            let cfg = LocatorConfig {
                nameservers: vec![self.addr],
                ntm_domains: vec![fqdn("ntm.test")],
                timeout: Duration::from_millis(200),
                attempts: 1,
                ..LocatorConfig::default()
            };
            if matches!(Driver::new(cfg).resolve("b.ntm.test").0, DnsAnswer::Dc(_)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for Nsd {
    fn drop(&mut self) {
        // SIGTERM lets NSD stop its server and xfrd processes (they also exit when the
        // main process dies, so SIGKILL is a safe fallback).
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").arg("-TERM").arg(&pid).stderr(Stdio::null()).status();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write_config(dir: &Path, port: u16) {
    let d = dir.display();
    let conf = format!(
        "server:
  ip-address: 127.0.0.1@{port}
  do-ip6: no
  username: \"\"
  chroot: \"\"
  zonesdir: \"{d}\"
  database: \"\"
  pidfile: \"{d}/nsd.pid\"
  xfrdfile: \"{d}/xfrd.state\"
  zonelistfile: \"{d}/zone.list\"
  xfrdir: \"{d}\"
  logfile: \"{d}/nsd.log\"
  server-count: 1
  verbosity: 1
remote-control:
  control-enable: no
zone:
  name: ntm.test
  zonefile: ntm.test.zone
zone:
  name: b.ntm.test
  zonefile: b.ntm.test.zone
zone:
  name: example.net
  zonefile: example.net.zone
"
    );
    for (name, text) in [
        ("nsd.conf", conf.as_str()),
        ("ntm.test.zone", PARENT_ZONE),
        ("b.ntm.test.zone", CHILD_ZONE),
        ("example.net.zone", OTHER_ZONE),
    ] {
        std::fs::write(dir.join(name), text).expect("write nsd file");
    }
}

/// A port that was free a moment ago (UDP; NSD binds TCP on it too, and a clash only
/// costs a retry).
fn free_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("local address").port()
}

fn nsd_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join("nsd"))
        .find(|p| p.is_file())
}

fn fqdn(s: &str) -> Fqdn {
    Fqdn::new(s).expect("valid name")
}

/// A minimal driver: one UDP socket, the wall clock, the locator's deadlines.
struct Driver {
    locator: Locator,
    socket: UdpSocket,
    epoch: std::time::Instant,
    next_id: u64,
}

impl Driver {
    fn new(cfg: LocatorConfig) -> Self {
        let rng = Box::new(rand_chacha::ChaCha8Rng::seed_from_u64(42));
        Driver {
            locator: Locator::new(cfg, rng),
            socket: UdpSocket::bind("127.0.0.1:0").expect("bind"),
            epoch: std::time::Instant::now(),
            next_id: 1,
        }
    }

    fn now(&self) -> Instant {
        Instant::from_millis(u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    /// Looks `name` up; returns the answer and the number of queries sent.
    fn resolve(&mut self, name: &str) -> (DnsAnswer, usize) {
        let id = self.next_id;
        self.next_id += 1;
        self.locator.start(self.now(), DnsQuery { id, name: fqdn(name), addresses: false });
        let mut sent = 0;
        let mut buf = [0u8; 4096];
        loop {
            while let Some((to, bytes)) = self.locator.poll_transmit() {
                self.socket.send_to(&bytes, to).expect("send");
                sent += 1;
            }
            if let Some((got, answer)) = self.locator.poll_answer() {
                assert_eq!(got, id);
                return (answer, sent);
            }
            let deadline = self.locator.poll_timeout().expect("a lookup in progress has a deadline");
            let wait = Duration::from_millis(deadline.as_millis().saturating_sub(self.now().as_millis()).max(1));
            self.socket.set_read_timeout(Some(wait)).expect("read timeout");
            match self.socket.recv_from(&mut buf) {
                Ok((n, from)) => self.locator.handle_response(self.now(), from, &buf[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    self.locator.handle_timeout(self.now());
                }
                Err(e) => panic!("recv: {e}"),
            }
        }
    }
}

fn dc(name: &str, addrs: &[&str]) -> DnsAnswer {
    DnsAnswer::Dc(DcLocation {
        name: fqdn(name),
        addrs: addrs.iter().map(|a| a.parse().expect("socket address")).collect(),
    })
}

#[test]
fn locates_dcs_through_a_real_dns_server() {
    let Some(binary) = nsd_binary() else {
        eprintln!("SKIPPED locates_dcs_through_a_real_dns_server: nsd not found (apt-get install -y nsd)");
        return;
    };
    let nsd = Nsd::start(&binary).expect("nsd starts");
    let mut driver = Driver::new(LocatorConfig {
        nameservers: vec![nsd.addr],
        dc_port: 4460,
        ntm_domains: vec![fqdn("a.ntm.test"), fqdn("b.ntm.test"), fqdn("c.ntm.test"), fqdn("d.ntm.test")],
        static_dcs: vec![(
            fqdn("static.ntm.test"),
            DcLocation { name: fqdn("dc.static.ntm.test"), addrs: vec!["10.0.0.1:4460".parse().expect("address")] },
        )],
        timeout: Duration::from_secs(1),
        ..LocatorConfig::default()
    });
    let dc_a = dc("dc1.a.ntm.test", &["192.0.2.1:4460", "[2001:db8::1]:4460"]);
    let dc_b = dc("dc2.hosts.ntm.test", &["192.0.2.2:4460", "192.0.2.12:4460", "[2001:db8::2]:4460"]);
    let dc_d = dc("dc4.example.net", &["198.51.100.4:4460", "[2001:db8::4]:4460"]);

    // (b) A referral from the parent, with glue: one query.
    assert_eq!(driver.resolve("node1.a.ntm.test"), (dc_a.clone(), 1));
    assert_eq!(driver.resolve("a.ntm.test"), (dc_a, 1));
    // (c) NXDOMAIN or NODATA with the SOA of b.ntm.test, then NS for the zone.
    let (answer, sent) = driver.resolve("nobody.b.ntm.test");
    assert_eq!(answer, dc_b);
    assert!(sent >= 2, "{sent}");
    assert_eq!(driver.resolve("node1.b.ntm.test").0, dc_b);
    // (a) The zone apex.
    assert_eq!(driver.resolve("b.ntm.test").0, dc_b);
    // A DC named in another zone: no glue, A and AAAA asked.
    let (answer, sent) = driver.resolve("node.d.ntm.test");
    assert_eq!(answer, dc_d);
    assert_eq!(sent, 3);
    // c.ntm.test is configured as NTM but not delegated: its zone is ntm.test, no DC.
    assert_eq!(driver.resolve("node.c.ntm.test").0, DnsAnswer::NotNtm);
    // Outside the NTM domains and static zones: answered without traffic.
    assert_eq!(driver.resolve("alias.ntm.test"), (DnsAnswer::NotNtm, 0));
    assert_eq!(driver.resolve("www.example.org"), (DnsAnswer::NotNtm, 0));
    assert_eq!(driver.resolve("n.static.ntm.test"), (dc("dc.static.ntm.test", &["10.0.0.1:4460"]), 0));
    assert_eq!(driver.locator.stats(), &Default::default());
    assert_eq!(driver.locator.pending(), 0);

    // (d) With ntm.test itself an NTM domain, the CNAME leads into b.ntm.test.
    let mut wide = Driver::new(LocatorConfig {
        nameservers: vec![nsd.addr],
        ntm_domains: vec![fqdn("ntm.test")],
        ..LocatorConfig::default()
    });
    assert_eq!(wide.resolve("alias.ntm.test").0, dc_b);
    // A name of the parent zone itself is served by the parent's NS (here: ns.ntm.test).
    assert_eq!(wide.resolve("stray.ntm.test").0, dc("ns.ntm.test", &["127.0.0.1:4460"]));
    drop(nsd);
}

#[test]
fn a_silent_server_fails_after_the_attempts() {
    // Nothing listens on this port (the socket is bound and never read), so every try
    // times out: no DNS server needed.
    let silent = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut driver = Driver::new(LocatorConfig {
        nameservers: vec![silent.local_addr().expect("address")],
        ntm_domains: vec![fqdn("ntm.test")],
        timeout: Duration::from_millis(50),
        attempts: 3,
        ..LocatorConfig::default()
    });
    assert_eq!(driver.resolve("node.ntm.test"), (DnsAnswer::Failed, 3));
    assert_eq!(driver.locator.stats().timeouts, 3);
}
