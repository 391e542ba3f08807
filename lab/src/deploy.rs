//! A whole NTMobile deployment in namespaces, built from the project's release binaries:
//! the four servers and NSD in a server namespace, a router, and boxes running `ntmd`.
//!
//! ```text
//!   srv 192.0.2.0/24 ── rtr ──┬── box a  198.51.100.0/24 (eth0), 198.19.5.0/24 (eth1, spare)
//!   AS .10  DC-A .21          └── box b  203.0.113.0/24
//!   DC-B .22  RS .30  NS .40  NSD .53
//! ```
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
    for b in ["ntmd", "ntm-as", "ntm-dc", "ntm-rs", "ntm-ns", "ntm-flood"] {
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
    /// Builds the network and starts NSD and the servers (no agents yet). Fails if a tool
    /// is missing (the caller skips with a notice unless the run requires the lab).
    pub fn start(label: &str) -> Result<Deployment> {
        for tool in ["nsd", "dig"] {
            if !have(tool) {
                return Err(LabError::Missing(tool));
            }
        }
        let bins = bin_dir()?;
        let mut lab = Lab::new(label)?;
        let srv = lab.netns("srv", false)?;
        let rtr = lab.netns("rtr", true)?;
        let a = lab.netns("a", false)?;
        let b = lab.netns("b", false)?;
        lab.step("links: srv-rtr, a-rtr (two), b-rtr");
        lab.link(&srv, "eth0", &rtr, "srv0")?;
        lab.link(&a, "eth0", &rtr, "a0")?;
        lab.link(&a, "eth1", &rtr, "a1")?;
        lab.link(&b, "eth0", &rtr, "b0")?;
        for ip in ["192.0.2.2/24", "192.0.2.10/24", "192.0.2.11/24", "192.0.2.12/24"] {
            lab.addr(&srv, "eth0", ip)?;
        }
        for ip in ["192.0.2.21/24", "192.0.2.22/24", "192.0.2.30/24", "192.0.2.40/24", "192.0.2.53/24"] {
            lab.addr(&srv, "eth0", ip)?;
        }
        lab.route(&srv, &["default", "via", "192.0.2.1"])?;
        lab.addr(&rtr, "srv0", "192.0.2.1/24")?;
        lab.addr(&rtr, "a0", "198.51.100.1/24")?;
        lab.addr(&rtr, "a1", "198.19.5.1/24")?;
        lab.addr(&rtr, "b0", "203.0.113.1/24")?;
        lab.addr(&a, "eth0", "198.51.100.2/24")?;
        lab.route(&a, &["default", "via", "198.51.100.1"])?;
        lab.addr(&b, "eth0", "203.0.113.2/24")?;
        lab.route(&b, &["default", "via", "203.0.113.1"])?;

        let dir = lab.dir().to_path_buf();
        let ca = dir.join("ca");
        let mut dep = Deployment { lab, srv, rtr, boxes: Vec::new(), bins, ca };
        dep.lab.step("PKI: deployment CA and server certificates");
        dep.admin(&["ca", "init", "--out", &path_str(&dep.ca)])?;
        dep.start_nsd()?;
        dep.start_servers()?;
        for (ns, fqdn) in [(a, "a.zone-a.test"), (b, "b.zone-b.test")] {
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

    /// Runs `ntm-as` for administration (not in a namespace: it only writes files).
    pub fn admin(&self, args: &[&str]) -> Result<()> {
        self.admin_with_stdin(args, "")
    }

    /// [`Deployment::admin`] with `input` on its standard input.
    pub fn admin_with_stdin(&self, args: &[&str], input: &str) -> Result<()> {
        use std::io::Write;
        let mut child = Command::new(self.bins.join("ntm-as"))
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
                what: format!("ntm-as {}", args.join(" ")),
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
            format!("$ORIGIN {z}.\n$TTL 60\n@ SOA dc.{z}. admin.{z}. 1 60 60 600 60\n@ NS dc.{z}.\ndc A {dc}\n")
        };
        let zones = [
            ("zone-a.test", zone("zone-a.test", "192.0.2.21")),
            ("zone-b.test", zone("zone-b.test", "192.0.2.22")),
            (
                "plain.example",
                "$ORIGIN plain.example.\n$TTL 60\n@ SOA ns.plain.example. admin.plain.example. 1 60 60 600 60\n\
                 @ NS ns.plain.example.\nns A 192.0.2.53\nwww A 192.0.2.80\n"
                    .to_string(),
            ),
        ];
        let dd = d.display();
        let mut conf = format!(
            "server:\n  ip-address: {NSD_IP}\n  do-ip6: no\n  username: \"\"\n  chroot: \"\"\n  zonesdir: \"{dd}\"\n  \
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
        Ok(())
    }

    /// The configuration every server shares.
    fn common(&self, name: &str, role: &str, listen: &str, label: &str) -> Result<Value> {
        let (cert, key) = self.issue(role, name)?;
        Ok(json!({
            "name": name, "listen": [listen],
            "tls": {"ca": self.ca.join("ca.pem"), "cert": cert, "key": key},
            "status_socket": self.lab.dir().join(format!("{label}.sock")), "log_level": "debug"
        }))
    }

    fn start_servers(&mut self) -> Result<()> {
        self.lab.step("servers: RS, NS, DC-A, DC-B, AS");
        let dir = self.lab.dir().to_path_buf();
        let dns = json!({"nameservers": [format!("{NSD_IP}:53")], "ntm_domains": ["test"], "dc_port": 4460});
        let relays = json!([{"name": "rs1.test", "addr": "192.0.2.30:4461"}]);
        let nss = json!([{"name": "ns1.test", "addr": "192.0.2.40:4462", "node_addr": "192.0.2.40:4463"}]);
        let rs = self.common("rs1.test", "rs", "192.0.2.30:4461", "rs")?;
        self.server("ntm-rs", "rs", rs)?;
        let mut ns = self.common("ns1.test", "ns", "192.0.2.40:4462", "ns")?;
        merge(&mut ns, json!({"node_listen": ["192.0.2.40:4463"]}));
        self.server("ntm-ns", "ns", ns)?;
        for (label, name, zone, listen, v4, v6) in [
            ("dc-a", "dc.zone-a.test", "zone-a.test", "192.0.2.21:4460", "198.18.1.0/24", "2001:db8:ffa::/112"),
            ("dc-b", "dc.zone-b.test", "zone-b.test", "192.0.2.22:4460", "198.18.2.0/24", "2001:db8:ffb::/112"),
        ] {
            let mut c = self.common(name, "dc", listen, label)?;
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
        let mut c = self.common(AS_NAME, "as", AS_ADDR, "as")?;
        merge(&mut c, json!({"accounts": dir.join("accounts.db"), "dns": dns, "key_lifetime_secs": 3600}));
        // Accounts are added with the AS's configuration file before it starts.
        write_json(&dir.join("as.json"), &c)?;
        self.server("ntm-as", "as", c)
    }

    /// The `ntmd` configuration of box `i` (device certificate login, UDP keepalive).
    pub fn agent_config(&self, i: usize) -> Value {
        let b = &self.boxes[i];
        json!({
            "account_server": AS_ADDR,
            "account_server_name": AS_NAME,
            "ca": self.ca.join("ca.pem"),
            "credential": {"device": {"cert": b.cert, "key": b.key}},
            "keepalive": "udp",
            "virtual_routes": VIRTUAL_ROUTES,
            "dns": {"listen": "127.0.0.53:53", "upstream": [format!("{NSD_IP}:53")], "ntm_domains": ["test"]},
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
