//! A whole NTMobile deployment in namespaces, built from the project's release binaries:
//! the four servers and NSD in a server namespace, a router, and boxes running `ntmd`.
//!
//! ```text
//!   srv 192.0.2.0/24          rtr ──┬── [nat-a ──] box a   a0: 198.51.100.0/24, 2001:db8:a::/64
//!       2001:db8:2::/64 ──────┤     │                      a1: 198.19.5.0/24, 2001:db8:5::/64 (spare,
//!   AS .10  DC-A .21          │     │                          unaddressed on the box: for moves)
//!   DC-B .22  RS .30          │     └── [nat-b ──] box b   b0: 203.0.113.0/24, 2001:db8:b::/64
//!   NS .40  NSD .53 (and ::10, ::21, ...)
//! ```
//!
//! Each box's access network is an [`Access`]: public IPv4, IPv6 or both, or behind a NAT
//! router (a `nat-a` / `nat-b` namespace: LAN 198.19.10.0/24 or 198.19.20.0/24, nftables
//! with one of the [`NatKind`] behaviours), or behind a home NAT behind a carrier-grade NAT
//! (`cgn-a` / `cgn-b`, 100.64.1.0/24 or 100.64.2.0/24 between them).
//!
//! Zones `zone-a.test` (DC-A, virtual 198.18.1.0/24 and 2001:db8:ffa::/112) and
//! `zone-b.test` (DC-B, 198.18.2.0/24 and 2001:db8:ffb::/112); NSD also serves
//! `plain.example` (`www` is 192.0.2.80) for names that are not NTMobile nodes. Box `a`
//! is `a.zone-a.test`, box `b` is `b.zone-b.test`; both log in with device certificates
//! issued by the deployment CA.

use crate::{have, Lab, LabError, Ns, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The AS's name and address.
pub const AS_NAME: &str = "as.test";
/// Where the AS listens.
pub const AS_ADDR: &str = "192.0.2.10:4443";
/// The NSD server.
pub const NSD_IP: &str = "192.0.2.53";
/// The NSD server's IPv6 address.
pub const NSD_IP6: &str = "2001:db8:2::53";
/// Where the AS listens over IPv6.
pub const AS_ADDR6: &str = "[2001:db8:2::10]:4443";

/// How a box reaches the core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// A public IPv4 address only.
    Global4,
    /// Public IPv4 and IPv6 addresses.
    Dual,
    /// A public IPv6 address only.
    Global6,
    /// Behind a NAT router (IPv4 only).
    Nat(NatKind),
    /// Behind a home NAT of this kind behind a carrier-grade NAT (which maps endpoint
    /// independently and filters by address and port, as CGNs do).
    DoubleNat(NatKind),
}

/// NAT behaviours (RFC 4787 terms), made with nftables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatKind {
    /// Endpoint-independent mapping and filtering ("full cone"): anyone may send to the
    /// mapped port.
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering: hosts the box has sent
    /// to may send from any port.
    AddressRestricted,
    /// Endpoint-independent mapping, address-and-port-dependent filtering: only the
    /// exact endpoints the box has sent to (Linux masquerade's own behaviour).
    PortRestricted,
    /// Address-and-port-dependent mapping (a random port per destination): hole
    /// punching cannot work through it.
    Symmetric,
    /// [`NatKind::PortRestricted`] without the gate: a Linux host that masquerades with its
    /// input left open (no firewall), so conntrack keeps an entry for every unsolicited
    /// packet, and the box's own later packet to that sender gets another outside port.
    /// Not in [`NatKind::ALL`] (the matrix's kinds).
    PortRestrictedUngated,
}

impl NatKind {
    /// All four.
    pub const ALL: [NatKind; 4] =
        [NatKind::FullCone, NatKind::AddressRestricted, NatKind::PortRestricted, NatKind::Symmetric];

    /// The nftables ruleset of a NAT router whose outside interface is `wan`, for a box
    /// at `box_ip` whose tunnel port is `port` (the port the cone kinds forward).
    pub fn ruleset(self, wan: &str, box_ip: &str, port: u16) -> String {
        let masq = if self == NatKind::Symmetric { "masquerade random" } else { "masquerade" };
        let inbound = match self {
            NatKind::FullCone => format!("iifname \"{wan}\" udp dport {port} dnat to {box_ip}:{port}"),
            NatKind::AddressRestricted => {
                format!("iifname \"{wan}\" udp dport {port} ip saddr @contacted dnat to {box_ip}:{port}")
            }
            NatKind::PortRestricted | NatKind::PortRestrictedUngated | NatKind::Symmetric => String::new(),
        };
        // Unsolicited packets are dropped before conntrack confirms an entry for them: a
        // kept entry would make the box's own later packet to that peer clash with it
        // and get another port, which real NATs of these kinds do not do.
        let gate = match self {
            NatKind::FullCone | NatKind::PortRestrictedUngated => String::new(),
            NatKind::AddressRestricted => format!("iifname \"{wan}\" ct state new ip saddr != @contacted drop"),
            NatKind::PortRestricted | NatKind::Symmetric => format!("iifname \"{wan}\" ct state new drop"),
        };
        format!(
            "table ip ntmnat\ndelete table ip ntmnat\ntable ip ntmnat {{\n\
             \tchain gate {{ type filter hook prerouting priority -150; policy accept;\n\t\t{gate}\n\t}}\n\
             \tset contacted {{ type ipv4_addr; flags dynamic, timeout; timeout 10m; }}\n\
             \tchain inbound {{ type nat hook prerouting priority dstnat; policy accept;\n\t\t{inbound}\n\t}}\n\
             \tchain track {{ type filter hook forward priority filter; policy accept;\n\
             \t\toifname \"{wan}\" update @contacted {{ ip daddr }}\n\t}}\n\
             \tchain outbound {{ type nat hook postrouting priority srcnat; policy accept;\n\
             \t\toifname \"{wan}\" {masq}\n\t}}\n}}\n"
        )
    }
}

/// Prefixes every agent routes into its TUN device.
pub const VIRTUAL_ROUTES: [&str; 2] = ["198.18.0.0/16", "2001:db8:ff0::/44"];

/// Where the project's binaries are: `NTM_BIN_DIR`, or the target directory this test
/// binary was built in (`target/<profile>/deps/..`).
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("NTM_BIN_DIR") {
        return Ok(PathBuf::from(d));
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default();
    for b in ["ntmd", "ntm-as", "ntm-dc", "ntm-rs", "ntm-ns", "ntm-ca", "ntm-flood"] {
        if !dir.join(b).is_file() {
            return Err(LabError::Command {
                what: format!("find {b} in {}", dir.display()),
                stderr: "build the binaries first: cargo build --release --workspace --bins".into(),
            });
        }
    }
    Ok(dir)
}

/// A box: a namespace running `ntmd`.
#[derive(Debug)]
pub struct NodeBox {
    /// Its namespace.
    pub ns: Ns,
    /// How it reaches the core.
    pub access: Access,
    /// Its own IPv4 address on eth0 (a LAN address behind a NAT), if it has one.
    pub ipv4: Option<String>,
    /// Its own IPv6 address on eth0, if it has one.
    pub ipv6: Option<String>,
    /// The NAT router in front of it (the home NAT for a double NAT).
    pub nat: Option<Ns>,
    /// The carrier-grade NAT in front of the home NAT.
    pub cgn: Option<Ns>,
    /// Its name.
    pub fqdn: String,
    /// Its device certificate and key.
    pub cert: PathBuf,
    /// The key of `cert`.
    pub key: PathBuf,
    /// Its account's e-mail address (device certificate or password login).
    pub email: String,
    /// A file holding its account's password.
    pub password_file: PathBuf,
    /// Its `ntmd` configuration.
    pub config: PathBuf,
    /// Its status socket.
    pub status: PathBuf,
    /// Its `ntmd` process in the lab, once started.
    pub proc: Option<usize>,
}

/// The running deployment.
#[derive(Debug)]
pub struct Deployment {
    /// The lab (namespaces and processes).
    pub lab: Lab,
    /// Servers' namespace.
    pub srv: Ns,
    /// The router between servers and boxes.
    pub rtr: Ns,
    /// Box `a` (index 0) and box `b` (index 1).
    pub boxes: Vec<NodeBox>,
    /// The binaries.
    pub bins: PathBuf,
    /// The deployment CA directory (`ca.pem`, `ca.key`).
    pub ca: PathBuf,
    /// Running servers: (label, program, lab process).
    pub servers: Vec<(String, String, usize)>,
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    std::fs::write(path, serde_json::to_vec_pretty(v).unwrap_or_default())?;
    Ok(())
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Reads a daemon's status socket (JSON), if it answers.
pub fn read_status(sock: &Path) -> Option<Value> {
    use std::io::Read;
    let mut s = std::os::unix::net::UnixStream::connect(sock).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

impl Deployment {
    /// [`Deployment::start_with`] with both boxes on public IPv4 addresses.
    pub fn start(label: &str) -> Result<Deployment> {
        Deployment::start_with(label, [Access::Global4, Access::Global4])
    }

    /// Builds the network and starts NSD and the servers (no agents yet). Fails if a tool
    /// is missing (the caller skips with a notice unless the run requires the lab).
    pub fn start_with(label: &str, access: [Access; 2]) -> Result<Deployment> {
        let mut tools = vec!["nsd", "dig"];
        if access.iter().any(|a| matches!(a, Access::Nat(_) | Access::DoubleNat(_))) {
            tools.push("nft");
        }
        for tool in tools {
            if !have(tool) {
                return Err(LabError::Missing(tool));
            }
        }
        let bins = bin_dir()?;
        let mut lab = Lab::new(label)?;
        let srv = lab.netns("srv", false)?;
        let rtr = lab.netns("rtr", true)?;
        lab.step("core: srv - rtr, dual stack");
        lab.link(&srv, "eth0", &rtr, "srv0")?;
        for ip in ["192.0.2.2/24", "192.0.2.10/24", "192.0.2.11/24", "192.0.2.12/24", "192.0.2.21/24"] {
            lab.addr(&srv, "eth0", ip)?;
        }
        for ip in ["192.0.2.22/24", "192.0.2.30/24", "192.0.2.40/24", "192.0.2.53/24"] {
            lab.addr(&srv, "eth0", ip)?;
        }
        for ip in ["::2", "::10", "::21", "::22", "::30", "::40", "::53"] {
            lab.addr(&srv, "eth0", &format!("2001:db8:2{ip}/64"))?;
        }
        lab.route(&srv, &["default", "via", "192.0.2.1"])?;
        lab.route(&srv, &["default", "via", "2001:db8:2::1"])?;
        lab.addr(&rtr, "srv0", "192.0.2.1/24")?;
        lab.addr(&rtr, "srv0", "2001:db8:2::1/64")?;
        let mut made = Vec::new();
        for (i, acc) in access.into_iter().enumerate() {
            made.push(Self::access_network(&mut lab, &rtr, i, acc)?);
        }

        let dir = lab.dir().to_path_buf();
        let ca = dir.join("ca");
        let mut dep = Deployment { lab, srv, rtr, boxes: Vec::new(), bins, ca, servers: Vec::new() };
        dep.lab.step("PKI: deployment CA and server certificates");
        dep.admin(&["ca", "init", "--out", &path_str(&dep.ca)])?;
        dep.start_nsd()?;
        dep.start_servers()?;
        for ((ns, acc, ipv4, ipv6, nat, cgn), fqdn) in made.into_iter().zip(["a.zone-a.test", "b.zone-b.test"]) {
            let (cert, key) = dep.issue("node", fqdn)?;
            let email = format!("owner@{fqdn}");
            let as_cfg = path_str(&dir.join("as.json"));
            let password = format!("a passphrase for {fqdn}");
            let password_file = dir.join(format!("{}.password", ns.label));
            std::fs::write(&password_file, format!("{password}\n"))?;
            dep.admin_with_stdin(
                &[
                    "account",
                    "add",
                    "-c",
                    &as_cfg,
                    "--email",
                    &email,
                    "--fqdn",
                    fqdn,
                    "--device",
                    fqdn,
                    "--password-stdin",
                ],
                &password,
            )?;
            // Names inside the box resolve through the agent's DNS hook.
            dep.lab.resolv_conf(&ns, "nameserver 127.0.0.53\n")?;
            let label = ns.label.clone();
            dep.boxes.push(NodeBox {
                ns,
                access: acc,
                ipv4,
                ipv6,
                nat,
                cgn,
                fqdn: fqdn.into(),
                cert,
                key,
                email,
                password_file,
                config: dir.join(format!("ntmd-{label}.json")),
                status: dir.join(format!("ntmd-{label}.sock")),
                proc: None,
            });
        }
        Ok(dep)
    }

    /// Makes box `i`'s namespace and its access network. Box a (0) also gets a spare link
    /// `eth1` to the router (198.19.5.0/24, 2001:db8:5::/64 on the router's side) for moves.
    #[allow(clippy::type_complexity)]
    fn access_network(
        lab: &mut Lab,
        rtr: &Ns,
        i: usize,
        access: Access,
    ) -> Result<(Ns, Access, Option<String>, Option<String>, Option<Ns>, Option<Ns>)> {
        let x = if i == 0 { "a" } else { "b" };
        let (pub4, pub6) = if i == 0 { ("198.51.100", "2001:db8:a:") } else { ("203.0.113", "2001:db8:b:") };
        let lan = if i == 0 { "198.19.10" } else { "198.19.20" };
        let carrier = if i == 0 { "100.64.1" } else { "100.64.2" };
        let bx = lab.netns(x, false)?;
        lab.step(format!("box {x}: {access:?}"));
        let rif = format!("{x}0");
        let rtr_side = |lab: &mut Lab| -> Result<()> {
            lab.addr(rtr, &rif, &format!("{pub4}.1/24"))?;
            lab.addr(rtr, &rif, &format!("{pub6}:1/64"))
        };
        if i == 0 {
            lab.link(&bx, "eth1", rtr, "a1")?;
            lab.addr(rtr, "a1", "198.19.5.1/24")?;
            lab.addr(rtr, "a1", "2001:db8:5::1/64")?;
        }
        let (mut v4, mut v6, mut nat, mut cgn) = (None, None, None, None);
        match access {
            Access::Global4 | Access::Dual | Access::Global6 => {
                lab.link(&bx, "eth0", rtr, &rif)?;
                rtr_side(lab)?;
                if access != Access::Global6 {
                    lab.addr(&bx, "eth0", &format!("{pub4}.2/24"))?;
                    lab.route(&bx, &["default", "via", &format!("{pub4}.1")])?;
                    v4 = Some(format!("{pub4}.2"));
                }
                if access != Access::Global4 {
                    lab.addr(&bx, "eth0", &format!("{pub6}:2/64"))?;
                    lab.route(&bx, &["default", "via", &format!("{pub6}:1")])?;
                    v6 = Some(format!("{pub6}:2"));
                }
            }
            Access::Nat(kind) => {
                let n = lab.netns(&format!("nat-{x}"), true)?;
                lab.link(&n, "wan0", rtr, &rif)?;
                rtr_side(lab)?;
                lab.link(&bx, "eth0", &n, "lan0")?;
                lab.addr(&n, "wan0", &format!("{pub4}.2/24"))?;
                lab.route(&n, &["default", "via", &format!("{pub4}.1")])?;
                lab.addr(&n, "lan0", &format!("{lan}.1/24"))?;
                lab.addr(&bx, "eth0", &format!("{lan}.2/24"))?;
                lab.route(&bx, &["default", "via", &format!("{lan}.1")])?;
                lab.nft(&n, &kind.ruleset("wan0", &format!("{lan}.2"), 4500))?;
                v4 = Some(format!("{lan}.2"));
                nat = Some(n);
            }
            Access::DoubleNat(kind) => {
                let c = lab.netns(&format!("cgn-{x}"), true)?;
                let n = lab.netns(&format!("nat-{x}"), true)?;
                lab.link(&c, "wan0", rtr, &rif)?;
                rtr_side(lab)?;
                lab.link(&n, "wan0", &c, "lan0")?;
                lab.link(&bx, "eth0", &n, "lan0")?;
                lab.addr(&c, "wan0", &format!("{pub4}.2/24"))?;
                lab.route(&c, &["default", "via", &format!("{pub4}.1")])?;
                lab.addr(&c, "lan0", &format!("{carrier}.1/24"))?;
                lab.addr(&n, "wan0", &format!("{carrier}.2/24"))?;
                lab.route(&n, &["default", "via", &format!("{carrier}.1")])?;
                lab.addr(&n, "lan0", &format!("{lan}.1/24"))?;
                lab.addr(&bx, "eth0", &format!("{lan}.2/24"))?;
                lab.route(&bx, &["default", "via", &format!("{lan}.1")])?;
                lab.nft(&c, &NatKind::PortRestricted.ruleset("wan0", &format!("{carrier}.2"), 4500))?;
                lab.nft(&n, &kind.ruleset("wan0", &format!("{lan}.2"), 4500))?;
                v4 = Some(format!("{lan}.2"));
                nat = Some(n);
                cgn = Some(c);
            }
        }
        Ok((bx, access, v4, v6, nat, cgn))
    }

    /// Replaces the NAT behaviour in front of box `i` (its tunnel port is `port`).
    pub fn set_nat(&mut self, i: usize, kind: NatKind, port: u16) -> Result<()> {
        let b = &self.boxes[i];
        let (Some(n), Some(ip)) = (b.nat.clone(), b.ipv4.clone()) else {
            return Err(LabError::Command { what: format!("set_nat on box {i}"), stderr: "no NAT in front".into() });
        };
        self.lab.step(format!("NAT of box {i}: {kind:?}, port {port}"));
        self.lab.nft(&n, &kind.ruleset("wan0", &ip, port))
    }

    /// Runs an administration command (not in a namespace: it only writes files): `ca ...`
    /// with `ntm-ca`, the rest with `ntm-as`.
    pub fn admin(&self, args: &[&str]) -> Result<()> {
        self.admin_with_stdin(args, "")
    }

    /// [`Deployment::admin`] with `input` on its standard input.
    pub fn admin_with_stdin(&self, args: &[&str], input: &str) -> Result<()> {
        use std::io::Write;
        let (program, args) = match args.split_first() {
            Some((&"ca", rest)) => ("ntm-ca", rest),
            _ => ("ntm-as", args),
        };
        let mut child = Command::new(self.bins.join(program))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut i) = child.stdin.take() {
            i.write_all(input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(LabError::Command {
                what: format!("{program} {}", args.join(" ")),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(())
    }

    /// Issues a certificate from the deployment CA; (certificate, key).
    pub fn issue(&self, role: &str, name: &str) -> Result<(PathBuf, PathBuf)> {
        self.issue_from(&self.ca, role, name)
    }

    /// Issues a certificate from the CA in `ca`; (certificate, key).
    pub fn issue_from(&self, ca: &Path, role: &str, name: &str) -> Result<(PathBuf, PathBuf)> {
        let out = ca.join("issued");
        self.admin(&["ca", "issue", "--ca", &path_str(ca), "--role", role, "--name", name, "--out", &path_str(&out)])?;
        Ok((out.join(format!("{name}.pem")), out.join(format!("{name}.key"))))
    }

    fn start_nsd(&mut self) -> Result<()> {
        self.lab.step("NSD on 192.0.2.53: zone-a.test, zone-b.test, plain.example");
        let d = self.lab.dir().join("nsd");
        std::fs::create_dir_all(&d)?;
        let zone = |z: &str, dc: &str| {
            format!(
                "$ORIGIN {z}.\n$TTL 60\n@ SOA dc.{z}. admin.{z}. 1 60 60 600 60\n@ NS dc.{z}.\ndc A {dc}\n\
                 dc AAAA 2001:db8:2::{}\n",
                dc.rsplit('.').next().unwrap_or("")
            )
        };
        let zones = [
            ("zone-a.test", zone("zone-a.test", "192.0.2.21")),
            ("zone-b.test", zone("zone-b.test", "192.0.2.22")),
            (
                "plain.example",
                "$ORIGIN plain.example.\n$TTL 60\n@ SOA ns.plain.example. admin.plain.example. 1 60 60 600 60\n\
                 @ NS ns.plain.example.\nns A 192.0.2.53\nwww A 192.0.2.80\nhost A 198.19.80.80\n\
                 as A 192.0.2.10\nas AAAA 2001:db8:2::10\n"
                    .to_string(),
            ),
        ];
        let dd = d.display();
        let mut conf = format!(
            "server:\n  ip-address: {NSD_IP}\n  ip-address: {NSD_IP6}\n  username: \"\"\n  chroot: \"\"\n  zonesdir: \"{dd}\"\n  \
             database: \"\"\n  pidfile: \"{dd}/nsd.pid\"\n  xfrdfile: \"{dd}/xfrd.state\"\n  zonelistfile: \
             \"{dd}/zone.list\"\n  xfrdir: \"{dd}\"\n  logfile: \"{dd}/nsd.log\"\n  server-count: 1\n\
             remote-control:\n  control-enable: no\n"
        );
        for (z, text) in &zones {
            conf.push_str(&format!("zone:\n  name: {z}\n  zonefile: {z}.zone\n"));
            std::fs::write(d.join(format!("{z}.zone")), text)?;
        }
        let conf_path = d.join("nsd.conf");
        std::fs::write(&conf_path, conf)?;
        let nsd = if Path::new("/usr/sbin/nsd").is_file() { "/usr/sbin/nsd".to_string() } else { "nsd".to_string() };
        let srv = self.srv.clone();
        self.lab.spawn(&srv, "nsd", &[&nsd, "-d", "-c", &path_str(&conf_path)], &[])?;
        let ok = self.lab.wait_for(10, || {
            self.lab
                .try_exec(&srv, &["dig", "+short", "+time=1", "+tries=1", "@192.0.2.53", "zone-a.test", "SOA"])
                .map(|o| !o.stdout.is_empty())
                .unwrap_or(false)
        });
        if !ok {
            return Err(LabError::Command { what: "NSD start".into(), stderr: "no SOA answer in 10 s".into() });
        }
        Ok(())
    }

    fn server(&mut self, program: &str, label: &str, cfg: Value) -> Result<()> {
        let dir = self.lab.dir().to_path_buf();
        let path = dir.join(format!("{label}.json"));
        write_json(&path, &cfg)?;
        let sock = dir.join(format!("{label}.sock"));
        let srv = self.srv.clone();
        let i =
            self.lab.spawn(&srv, label, &[&path_str(&self.bins.join(program)), "run", "-c", &path_str(&path)], &[])?;
        let up = self.lab.wait_for(15, || read_status(&sock).is_some());
        if !up || !self.lab.proc(i).alive() {
            return Err(LabError::Command { what: format!("{program} start"), stderr: self.lab.proc(i).log_text() });
        }
        self.servers.push((label.to_string(), program.to_string(), i));
        Ok(())
    }

    /// The configuration every server shares.
    fn common(&self, name: &str, role: &str, listen: &[&str], label: &str) -> Result<Value> {
        let (cert, key) = self.issue(role, name)?;
        Ok(json!({
            "name": name, "listen": listen,
            "tls": {"ca": self.ca.join("ca.pem"), "cert": cert, "key": key},
            "status_socket": self.lab.dir().join(format!("{label}.sock")), "log_level": "debug"
        }))
    }

    fn start_servers(&mut self) -> Result<()> {
        self.lab.step("servers: RS, NS, DC-A, DC-B, AS");
        let dir = self.lab.dir().to_path_buf();
        let dns = json!({"nameservers": [format!("{NSD_IP}:53")], "ntm_domains": ["test"], "dc_port": 4460});
        let relays = json!([{"name": "rs1.test", "addr": "192.0.2.30:4461"}]);
        let nss = json!([{
            "name": "ns1.test",
            "addr": "192.0.2.40:4462",
            "node_addr": ["192.0.2.40:4463", "[2001:db8:2::40]:4463"]
        }]);
        let rs = self.common("rs1.test", "rs", &["192.0.2.30:4461", "[2001:db8:2::30]:4461"], "rs")?;
        self.server("ntm-rs", "rs", rs)?;
        let mut ns = self.common("ns1.test", "ns", &["192.0.2.40:4462"], "ns")?;
        merge(&mut ns, json!({"node_listen": ["192.0.2.40:4463", "[2001:db8:2::40]:4463"]}));
        self.server("ntm-ns", "ns", ns)?;
        for (label, name, zone, listen, v4, v6) in [
            (
                "dc-a",
                "dc.zone-a.test",
                "zone-a.test",
                ["192.0.2.21:4460", "[2001:db8:2::21]:4460"],
                "198.18.1.0/24",
                "2001:db8:ffa::/112",
            ),
            (
                "dc-b",
                "dc.zone-b.test",
                "zone-b.test",
                ["192.0.2.22:4460", "[2001:db8:2::22]:4460"],
                "198.18.2.0/24",
                "2001:db8:ffb::/112",
            ),
        ] {
            let mut c = self.common(name, "dc", &listen, label)?;
            merge(
                &mut c,
                json!({
                    "zones": [zone], "virtual_ipv4": v4, "virtual_ipv6": v6,
                    "state": dir.join(format!("{label}.db")), "relays": relays,
                    "notification_servers": nss, "dns": dns,
                }),
            );
            self.server("ntm-dc", label, c)?;
        }
        let mut c = self.common(AS_NAME, "as", &[AS_ADDR, AS_ADDR6], "as")?;
        merge(&mut c, json!({"accounts": dir.join("accounts.db"), "dns": dns, "key_lifetime_secs": 3600}));
        // Accounts are added with the AS's configuration file before it starts.
        write_json(&dir.join("as.json"), &c)?;
        self.server("ntm-as", "as", c)
    }

    /// The `ntmd` configuration of box `i` (device certificate login, UDP keepalive).
    pub fn agent_config(&self, i: usize) -> Value {
        let b = &self.boxes[i];
        let (as_addr, dns) = if b.access == Access::Global6 {
            (AS_ADDR6, format!("[{NSD_IP6}]:53"))
        } else {
            (AS_ADDR, format!("{NSD_IP}:53"))
        };
        json!({
            "account_server": as_addr,
            "account_server_name": AS_NAME,
            "ca": self.ca.join("ca.pem"),
            "credential": {"device": {"cert": b.cert, "key": b.key}},
            "keepalive": "udp",
            "virtual_routes": VIRTUAL_ROUTES,
            "dns": {"listen": "127.0.0.53:53", "upstream": [dns], "ntm_domains": ["test"]},
            "status_socket": b.status,
            "log_level": "debug"
        })
    }

    /// Starts `ntmd` in box `i` with `cfg`; returns its lab process index.
    pub fn start_agent(&mut self, i: usize, cfg: &Value) -> Result<usize> {
        let bin = path_str(&self.bins.join("ntmd"));
        self.start_agent_with(i, cfg, &[&bin])
    }

    /// Starts an agent in box `i` with `cfg` through `program` (e.g. `["qemu-mips", "-L",
    /// "/usr/mips-linux-gnu", "path/to/ntmd"]` for a foreign build); `run -c FILE` is
    /// appended. Returns its lab process index.
    pub fn start_agent_with(&mut self, i: usize, cfg: &Value, program: &[&str]) -> Result<usize> {
        let b = &self.boxes[i];
        write_json(&b.config, cfg)?;
        let (ns, label, config) = (b.ns.clone(), format!("ntmd-{}", b.ns.label), path_str(&b.config));
        self.lab.step(format!("start {} in box {}", program.join(" "), ns.label));
        let mut cmd: Vec<&str> = program.to_vec();
        cmd.extend(["run", "-c", &config]);
        let p = self.lab.spawn(&ns, &label, &cmd, &[])?;
        self.boxes[i].proc = Some(p);
        Ok(p)
    }

    /// Box `i`'s configuration with password login instead of its device certificate.
    pub fn agent_config_password(&self, i: usize) -> Value {
        let b = &self.boxes[i];
        let mut c = self.agent_config(i);
        c["credential"] = json!({"password": {"email": b.email, "password_file": b.password_file}});
        c
    }

    /// The status of box `i`'s agent.
    pub fn status(&self, i: usize) -> Option<Value> {
        read_status(&self.boxes[i].status)
    }

    /// Waits until box `i` is registered with its virtual addresses on the TUN device;
    /// returns its status.
    pub fn wait_registered(&mut self, i: usize, secs: u64) -> Option<Value> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if let Some(s) = self.status(i) {
                if s["registered"] == true && s["virtual_ipv4"].is_string() {
                    let v4 = s["virtual_ipv4"].as_str().unwrap_or("").to_string();
                    let ns = self.boxes[i].ns.clone();
                    let on_tun = self
                        .lab
                        .try_exec(&ns, &["ip", "-o", "addr", "show", "dev", "ntm0"])
                        .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("{v4}/32")))
                        .unwrap_or(false);
                    if on_tun {
                        return Some(s);
                    }
                }
            }
            if let Some(p) = self.boxes[i].proc {
                if !self.lab.proc(p).alive() {
                    return None;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

fn merge(a: &mut Value, b: Value) {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
}

/// The lab or a skip: with `NTM_REQUIRE_LAB` set (CI), a lab that cannot run is an error.
pub fn or_skip<T>(r: Result<T>, what: &str) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e @ (LabError::NotRoot | LabError::Missing(_))) if std::env::var_os("NTM_REQUIRE_LAB").is_none() => {
            crate::notice(&format!("SKIPPED {what}: {e}"));
            None
        }
        Err(e) => panic!("{what}: {e}"),
    }
}

/// What the scenario tests do with a running deployment: real applications in the boxes.
impl Deployment {
    /// Starts both agents with their default configurations changed by `tweak(self, box,
    /// config)` and waits until both are registered; their statuses.
    pub fn up_with(&mut self, tweak: impl Fn(&Deployment, usize, &mut Value)) -> Result<[Value; 2]> {
        for i in 0..2 {
            let mut cfg = self.agent_config(i);
            tweak(self, i, &mut cfg);
            self.start_agent(i, &cfg)?;
        }
        let mut st = Vec::new();
        for i in 0..2 {
            let s = self.wait_registered(i, 30).ok_or_else(|| LabError::Command {
                what: format!("box {i} registers"),
                stderr: "not registered within 30 s".into(),
            })?;
            st.push(s);
        }
        let b = st.pop().unwrap_or_default();
        let a = st.pop().unwrap_or_default();
        Ok([a, b])
    }

    /// Box b (behind a NAT) keeps itself reachable through the NS only, and its NAT
    /// forgets idle UDP mappings after 3 s: starts both agents (b with `keepalive: "ns"`)
    /// and waits until both are registered and b's NS connection is ready; their statuses.
    pub fn up_with_b_kept_by_ns(&mut self) -> Result<[Value; 2]> {
        let nat = self.boxes[1].nat.clone().ok_or_else(|| LabError::Command {
            what: "box b kept by the NS".into(),
            stderr: "box b has no NAT in front".into(),
        })?;
        for k in ["nf_conntrack_udp_timeout", "nf_conntrack_udp_timeout_stream"] {
            self.lab.sysctl(&nat, &format!("net.netfilter.{k}"), "3")?;
        }
        let st = self.up_with(|_, i, c| {
            if i == 1 {
                c["keepalive"] = "ns".into();
            }
        })?;
        if !self.lab.wait_for(10, || self.status(1).is_some_and(|s| s["notifications_ready"] == true)) {
            return Err(LabError::Command { what: "box b uses the NS".into(), stderr: "not ready within 10 s".into() });
        }
        Ok(st)
    }

    /// Stops box `i`'s agent.
    pub fn stop_agent(&mut self, i: usize) {
        if let Some(p) = self.boxes[i].proc.take() {
            self.lab.proc(p).stop();
        }
    }

    /// `dig +short` through box `i`'s DNS hook.
    pub fn dig(&self, i: usize, name: &str, ty: &str) -> String {
        self.dig_tries(i, name, ty, 2)
    }

    /// [`Deployment::dig`] with `tries` tries of 3 s each, for a lossy network where the
    /// tunnel behind the answer may need several retransmissions.
    pub fn dig_tries(&self, i: usize, name: &str, ty: &str, tries: u32) -> String {
        let ns = &self.boxes[i].ns;
        let tries = format!("+tries={tries}");
        match self.lab.try_exec(ns, &["dig", "+short", "+time=3", &tries, "@127.0.0.53", name, ty]) {
            Ok(o) => crate::dig_answer(&o.stdout),
            Err(_) => String::new(),
        }
    }

    /// Makes `ns` drop every IPv4 and IPv6 fragment that reaches it, counting them: before
    /// conntrack puts fragments together (priority -450), as a firewall in front would.
    pub fn drop_fragments(&mut self, ns: &Ns) -> Result<()> {
        self.lab.nft(
            ns,
            "table inet nofrag {\n\tchain pre { type filter hook prerouting priority -450; policy accept;\n\
             \t\tip frag-off & 0x3fff != 0 counter drop\n\t\tip6 nexthdr ipv6-frag counter drop\n\t}\n}\n",
        )
    }

    /// The fragments `ns` dropped since [`Deployment::drop_fragments`] (0 without it).
    pub fn fragments_dropped(&self, ns: &Ns) -> u64 {
        let Ok(out) = self.lab.try_exec(ns, &["nft", "list", "table", "inet", "nofrag"]) else { return 0 };
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.split("counter packets ").skip(1).filter_map(|t| t.split(' ').next()?.parse::<u64>().ok()).sum()
    }

    /// Sets the MTU of the interfaces `ends` (namespace, device).
    pub fn set_mtu(&self, mtu: u16, ends: &[(&Ns, &str)]) -> Result<()> {
        for (ns, dev) in ends {
            self.lab.exec(ns, &["ip", "link", "set", dev, "mtu", &mtu.to_string()])?;
        }
        Ok(())
    }

    /// The path MTUs box `i`'s agent reports (`path_mtus` of `ntmd status`: destination,
    /// bytes), and its counters.
    pub fn path_mtus(&self, i: usize) -> (Vec<(String, u64)>, Value) {
        let s = self.status(i).unwrap_or_default();
        let mtus = s["path_mtus"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|m| (m["to"].as_str().unwrap_or_default().to_string(), m["mtu"].as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        (mtus, s["counters"].clone())
    }

    /// `ping` from box `i`: true if at least one of `count` answers came.
    pub fn ping(&self, i: usize, dst: &str, count: u32) -> bool {
        let fam = if dst.contains(':') { "-6" } else { "-4" };
        let c = count.to_string();
        self.lab
            .try_exec(&self.boxes[i].ns, &["ping", fam, "-c", &c, "-i", "0.2", "-W", "2", dst])
            .is_ok_and(|o| o.status.success())
    }

    /// Gives box `i` a LAN: a namespace `label` (a LAN host without an agent) joined to
    /// the box by a veth, `lan0` on the box with `box_cidrs` and `eth0` on the host with
    /// `host_cidrs`; the host's default route is the box's first address.
    pub fn lan_host(&mut self, i: usize, label: &str, box_cidrs: &[&str], host_cidrs: &[&str]) -> Result<Ns> {
        let host = self.lab.netns(label, false)?;
        let bx = self.boxes[i].ns.clone();
        self.lab.step(format!("{label}: behind box {i}, lan0 {box_cidrs:?}, host {host_cidrs:?}"));
        self.lab.link(&bx, "lan0", &host, "eth0")?;
        for c in box_cidrs {
            self.lab.addr(&bx, "lan0", c)?;
        }
        for c in host_cidrs {
            self.lab.addr(&host, "eth0", c)?;
        }
        let gw = box_cidrs.first().and_then(|c| c.split('/').next()).unwrap_or_default().to_string();
        self.lab.route(&host, &["default", "via", &gw])?;
        Ok(host)
    }

    /// Starts an echo server (socat, `EXEC:cat`) in box `i` on `listen` (a socat
    /// address such as `TCP4-LISTEN:7000,reuseaddr,fork`).
    pub fn echo_server(&mut self, i: usize, label: &str, listen: &str) -> Result<usize> {
        let ns = self.boxes[i].ns.clone();
        let p = self.lab.spawn(&ns, label, &["socat", listen, "EXEC:cat"], &[])?;
        std::thread::sleep(Duration::from_millis(200));
        Ok(p)
    }

    /// Sends `data` from box `i` through a TCP connection to `target` (a socat address,
    /// names resolved through the box's DNS hook) and returns what came back.
    pub fn tcp_echo(&self, i: usize, target: &str, data: &[u8], tag: &str) -> Vec<u8> {
        let dir = self.lab.dir();
        let (inp, out) = (dir.join(format!("{tag}.in")), dir.join(format!("{tag}.out")));
        if std::fs::write(&inp, data).is_err() {
            return Vec::new();
        }
        let cmd = format!("socat -t 10 -T 20 - {target} < {} > {}", inp.display(), out.display());
        let _ = self.lab.try_exec(&self.boxes[i].ns, &["sh", "-c", &cmd]);
        std::fs::read(&out).unwrap_or_default()
    }

    /// Starts a tiny HTTP server in box `i` on `port` answering every request with `body`.
    pub fn http_server(&mut self, i: usize, port: u16, body: &str) -> Result<usize> {
        let file = self.lab.dir().join(format!("http-{i}-{port}.txt"));
        std::fs::write(&file, format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()))?;
        let ns = self.boxes[i].ns.clone();
        let listen = format!("TCP-LISTEN:{port},reuseaddr,fork");
        let reply = format!("SYSTEM:sleep 0.1; cat {}", file.display());
        let p = self.lab.spawn(&ns, &format!("http-{i}"), &["socat", &listen, &reply], &[])?;
        std::thread::sleep(Duration::from_millis(200));
        Ok(p)
    }

    /// `curl` from box `i`; the body.
    pub fn curl(&self, i: usize, url: &str) -> String {
        match self.lab.try_exec(&self.boxes[i].ns, &["curl", "-s", "-m", "10", url]) {
            Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
            Err(_) => String::new(),
        }
    }

    /// Box `i`'s live tunnel to `peer` (not superseded), from its status.
    pub fn tunnel(&self, i: usize, peer: &str) -> Option<Value> {
        let s = self.status(i)?;
        s["tunnels"]
            .as_array()?
            .iter()
            .find(|t| t["peer"] == peer && t["up"] == true && t["superseded"] == false)
            .cloned()
    }

    /// Waits until box `i`'s tunnel to `peer` has `path` ("direct" or "relay").
    pub fn wait_path(&self, i: usize, peer: &str, path: &str, secs: u64) -> bool {
        self.lab.wait_for(secs, || self.tunnel(i, peer).is_some_and(|t| t["path"] == path))
    }

    /// Stops the server `label` ("dc-a", "rs", ...) and starts it again with the same
    /// configuration; waits until it answers on its status socket.
    pub fn restart_server(&mut self, label: &str) -> Result<()> {
        self.restart_server_with(label, |_| {})
    }

    /// [`Deployment::restart_server`] with its configuration changed by `tweak` first
    /// (kept for later restarts).
    pub fn restart_server_with(&mut self, label: &str, tweak: impl FnOnce(&mut Value)) -> Result<()> {
        let Some(i) = self.servers.iter().position(|(l, _, _)| l == label) else {
            return Err(LabError::Command { what: format!("restart {label}"), stderr: "no such server".into() });
        };
        let (_, program, p) = self.servers[i].clone();
        self.lab.step(format!("restart {label}"));
        self.lab.proc(p).stop();
        let cfg = std::fs::read_to_string(self.lab.dir().join(format!("{label}.json")))?;
        let mut v: Value = serde_json::from_str(&cfg)
            .map_err(|e| LabError::Command { what: "config".into(), stderr: e.to_string() })?;
        tweak(&mut v);
        self.servers.remove(i);
        let log = self.lab.dir().join(format!("{label}.log"));
        let _ = std::fs::rename(&log, self.lab.dir().join(format!("{label}.before-restart.log")));
        self.server(&program, label, v)
    }
}

/// Test bytes from a seed (xorshift).
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The second Relay Server of [`Deployment::add_second_rs`]: its label, name, addresses.
pub const RS2: (&str, &str, &str, &str) = ("rs2", "rs2.test", "192.0.2.31", "2001:db8:2::31");

impl Deployment {
    /// Starts a second RS (label "rs2", 192.0.2.31 and 2001:db8:2::31, port 4461) and
    /// restarts both DCs with both RSs in their `relays`. Call it before the agents start.
    pub fn add_second_rs(&mut self) -> Result<()> {
        let (label, name, v4, v6) = RS2;
        let srv = self.srv.clone();
        self.lab.addr(&srv, "eth0", &format!("{v4}/24"))?;
        self.lab.addr(&srv, "eth0", &format!("{v6}/64"))?;
        let (l4, l6) = (format!("{v4}:4461"), format!("[{v6}]:4461"));
        let rs = self.common(name, "rs", &[&l4, &l6], label)?;
        self.server("ntm-rs", label, rs)?;
        let relays = json!([{"name": "rs1.test", "addr": "192.0.2.30:4461"}, {"name": name, "addr": l4}]);
        for dc in ["dc-a", "dc-b"] {
            let path = self.lab.dir().join(format!("{dc}.json"));
            let text = std::fs::read_to_string(&path)?;
            let mut v: Value = serde_json::from_str(&text)
                .map_err(|e| LabError::Command { what: format!("{dc} config"), stderr: e.to_string() })?;
            merge(&mut v, json!({ "relays": relays }));
            write_json(&path, &v)?;
            self.restart_server(dc)?;
        }
        Ok(())
    }
}
