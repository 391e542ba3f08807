//! A whole deployment of the real daemons on loopback addresses: AS 127.0.0.10, DC_A
//! 127.0.0.21 (zone-a.test), DC_B 127.0.0.22 (zone-b.test), RS 127.0.0.30, NS 127.0.0.40.
//! With NSD installed, DCs and the AS find DCs through it (NS records of the zones);
//! otherwise through static entries.

use super::*;
use ntm_proto::engine::DcLocation;

pub struct SiteOptions {
    pub dns: bool,
    pub relay: bool,
    pub ns: bool,
    pub oidc_jwks: Option<String>,
    pub v6: bool,
}

impl Default for SiteOptions {
    fn default() -> Self {
        SiteOptions { dns: true, relay: true, ns: true, oidc_jwks: None, v6: false }
    }
}

pub struct Site {
    pub pki: Pki,
    pub dir: TempDir,
    pub as_: Running,
    pub dc_a: Running,
    pub dc_b: Running,
    pub rs: Option<Running>,
    pub ns: Option<Running>,
    pub nsd: Option<Nsd>,
    pub as_addr: SocketAddr,
    pub dc_a_loc: DcLocation,
    pub dc_b_loc: DcLocation,
    pub dc_port: u16,
    pub used_dns: bool,
    pub v6: bool,
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

impl Site {
    pub fn start(opts: SiteOptions) -> Site {
        let pki = Pki::new();
        let dir = TempDir::new("site");
        let d = dir.path();
        // IPv6 loopback has one address only: the servers then differ by port, and DCs
        // are found by static entries (an NS record cannot name a port).
        let v6 = opts.v6;
        let host = |v4: &str| if v6 { ip("::1") } else { ip(v4) };
        let (as_ip, a_ip, b_ip, rs_ip, ns_ip) =
            (host("127.0.0.10"), host("127.0.0.21"), host("127.0.0.22"), host("127.0.0.30"), host("127.0.0.40"));
        let dc_port = loop {
            let p = free_port(a_ip);
            if !v6
                && std::net::TcpListener::bind(SocketAddr::new(b_ip, p)).is_ok()
                && UdpSocket::bind(SocketAddr::new(b_ip, p)).is_ok()
            {
                break p;
            }
            if v6 {
                break p;
            }
        };
        let dc_b_port = if v6 { free_port(b_ip) } else { dc_port };
        let as_addr = SocketAddr::new(as_ip, free_port(as_ip));
        let rs_addr = SocketAddr::new(rs_ip, free_port(rs_ip));
        let ns_addr = SocketAddr::new(ns_ip, free_port(ns_ip));
        let ns_node_addr = SocketAddr::new(ns_ip, free_port(ns_ip));
        let dc_a_loc = DcLocation { name: name("dc.zone-a.test"), addrs: vec![SocketAddr::new(a_ip, dc_port)] };
        let dc_b_loc = DcLocation { name: name("dc.zone-b.test"), addrs: vec![SocketAddr::new(b_ip, dc_b_port)] };

        let zone = |z: &str, dc_ip: IpAddr| {
            format!("$ORIGIN {z}.\n$TTL 60\n@ SOA dc.{z}. admin.{z}. 1 60 60 600 60\n@ NS dc.{z}.\ndc A {dc_ip}\n")
        };
        let nsd = if opts.dns && !v6 {
            Nsd::start(&[("zone-a.test", zone("zone-a.test", a_ip)), ("zone-b.test", zone("zone-b.test", b_ip))])
        } else {
            None
        };
        let used_dns = nsd.is_some();
        let dns = match &nsd {
            Some(n) => {
                serde_json::json!({"nameservers": [n.addr.to_string()], "ntm_domains": ["test"], "dc_port": dc_port})
            }
            None => serde_json::json!({
                "ntm_domains": ["test"],
                "dc_port": dc_port,
                "static_dcs": [
                    {"zone": "zone-a.test", "dc": "dc.zone-a.test", "addrs": [dc_a_loc.addrs[0].to_string()]},
                    {"zone": "zone-b.test", "dc": "dc.zone-b.test", "addrs": [dc_b_loc.addrs[0].to_string()]},
                ]
            }),
        };
        let relays = if opts.relay {
            serde_json::json!([{"name": "rs1.test", "addr": rs_addr.to_string()}])
        } else {
            serde_json::json!([])
        };
        let nss = if opts.ns {
            serde_json::json!([{"name": "ns1.test", "addr": ns_addr.to_string(), "node_addr": ns_node_addr.to_string()}])
        } else {
            serde_json::json!([])
        };

        let start = |program: &str, label: &str, cfg: serde_json::Value| {
            let path = d.join(format!("{label}.json"));
            write_json(&path, &cfg);
            Running::start(program, &path, &d.join(format!("{label}.sock")), &d.join(format!("{label}.log")))
        };
        let common = |n: &str, role: &str, listen: SocketAddr, label: &str| {
            serde_json::json!({
                "name": n, "listen": [listen.to_string()], "tls": pki.tls_json(role, n),
                "status_socket": d.join(format!("{label}.sock")), "log_level": "debug"
            })
        };
        let merge = |mut a: serde_json::Value, b: serde_json::Value| {
            for (k, v) in b.as_object().unwrap() {
                a.as_object_mut().unwrap().insert(k.clone(), v.clone());
            }
            a
        };

        let rs = opts.relay.then(|| start("ntm-rs", "rs", common("rs1.test", "rs", rs_addr, "rs")));
        let ns = opts.ns.then(|| {
            start(
                "ntm-ns",
                "ns",
                merge(
                    common("ns1.test", "ns", ns_addr, "ns"),
                    serde_json::json!({"node_listen": [ns_node_addr.to_string()]}),
                ),
            )
        });
        let dc = |label: &str, n: &str, z: &str, addr: SocketAddr, v4: &str, v6p: &str| {
            // A free port for the mapping test (the default, the listen port + 1, may be
            // another test's).
            let extra = serde_json::json!({
                "zones": [z], "virtual_ipv4": v4, "virtual_ipv6": v6p, "state": d.join(format!("{label}.db")),
                "relays": relays, "notification_servers": nss, "dns": dns, "mapping_port": free_port(addr.ip()),
            });
            start("ntm-dc", label, merge(common(n, "dc", addr, label), extra))
        };
        let dc_a =
            dc("dc-a", "dc.zone-a.test", "zone-a.test", dc_a_loc.addrs[0], "198.18.1.0/24", "2001:db8:ffa::/112");
        let dc_b =
            dc("dc-b", "dc.zone-b.test", "zone-b.test", dc_b_loc.addrs[0], "198.18.2.0/24", "2001:db8:ffb::/112");
        let mut as_extra =
            serde_json::json!({ "accounts": d.join("accounts.db"), "dns": dns, "key_lifetime_secs": 3600 });
        if let Some(jwks) = &opts.oidc_jwks {
            let path = d.join("jwks.json");
            std::fs::write(&path, jwks).unwrap();
            as_extra.as_object_mut().unwrap().insert(
                "oidc".into(),
                serde_json::json!([{"issuer": "https://id.test", "audience": "ntmobile", "jwks": path}]),
            );
        }
        let as_ = start("ntm-as", "as", merge(common("as.test", "as", as_addr, "as"), as_extra));
        Site { pki, dir, as_, dc_a, dc_b, rs, ns, nsd, as_addr, dc_a_loc, dc_b_loc, dc_port, used_dns, v6 }
    }

    pub fn as_config(&self) -> PathBuf {
        self.as_.config.clone()
    }

    /// Adds an account with a password for `fqdn`.
    pub fn add_password_account(&self, email: &str, fqdn: &str, password: &str) {
        let c = self.as_config();
        admin(
            &["account", "add", "-c", c.to_str().unwrap(), "--email", email, "--fqdn", fqdn, "--password-stdin"],
            Some(password),
        );
    }

    /// Adds a device account and issues its certificate; returns (cert, key).
    pub fn add_device(&self, fqdn: &str) -> (PathBuf, PathBuf) {
        let c = self.as_config();
        let email = format!("owner@{fqdn}");
        admin(
            &["account", "add", "-c", c.to_str().unwrap(), "--email", &email, "--fqdn", fqdn, "--device", fqdn],
            None,
        );
        self.pki.issue("node", fqdn)
    }

    /// How a node of `zone` is set up.
    pub fn setup(&self, zone: &str) -> NodeSetup {
        let dc = if zone == "zone-a.test" { self.dc_a_loc.clone() } else { self.dc_b_loc.clone() };
        NodeSetup {
            as_addr: self.as_addr,
            ca: self.pki.ca_pem(),
            dc,
            zone: name(zone),
            fake_nat: false,
            keepalive: KeepaliveMethod::Udp,
            route_optimization: true,
            bind_ip: if self.v6 { ip("::1") } else { ip("127.0.0.1") },
        }
    }
}
