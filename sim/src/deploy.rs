//! A whole NTMobile deployment in the simulator, for the sequence tests and the demo: an AS, two DCs
//! with a zone each, relay servers, an NS, the DNS delegations, and helpers to add nodes
//! behind any kind of access network and to drive them like applications would.
//!
//! Addresses (documentation ranges only): servers in 192.0.2.0/24 and 2001:db8::/64,
//! global nodes in 198.51.100.0/24 and 2001:db8:100::/48, NAT outsides in 203.0.113.0/24,
//! CGN inside 100.64.0.0/10, homes in 192.168.0.0/16 and 10.0.0.0/8.

// Test support with fixed, known-good constants (documentation addresses, names): a failed
// unwrap here is a bug in the harness, reported with its location.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use crate::{HostId, LinkConfig, RealmConfig, RealmId, Sim};
use ntm_proto::crypto::pk::KeyPair;
use ntm_proto::engine::account::{Account, AccountServer, Accounts, AsConfig, Verdict};
use ntm_proto::engine::dc::{Dc, DcConfig, NsRef, ServerRef, MAPPING_PORT};
use ntm_proto::engine::node::{Node, NodeConfig, NodeEvent, ResolveError};
use ntm_proto::engine::ns::{Ns, NsConfig};
use ntm_proto::engine::rs::{Rs, RsConfig};
use ntm_proto::engine::{ConfigError, DcLocation, PeerIdentity, Role};
use ntm_proto::time::{Duration, Instant};
use ntm_proto::wire::login::{Credential, Password};
use ntm_proto::wire::registration::KeepaliveMethod;
use ntm_proto::wire::{Fqdn, Text, VirtualAddrs};
use ntm_servers::oidc::{verify_id_token, OidcProvider, ProviderKey, DEFAULT_LEEWAY_SECS};

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

pub const SERVER_PORT: u16 = 4460;
pub const NODE_PORT: u16 = 4500;
/// The DCs' mapping port by default: the daemon's default, its listen port + 4.
pub const DC_MAPPING_PORT: u16 = SERVER_PORT + 4;

pub fn name(s: &str) -> Fqdn {
    Fqdn::new(s).unwrap()
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The account store of the tests: accounts in memory. (The daemon's store hashes
/// passwords with argon2; here plain comparison is enough.)
#[derive(Debug, Default)]
pub struct TestAccounts {
    pub passwords: HashMap<String, (Vec<u8>, Fqdn)>,
    pub devices: HashMap<Fqdn, Fqdn>,
    pub oidc: HashMap<(String, String), Fqdn>,
    pub disabled: Vec<Fqdn>,
    /// The OpenID providers whose tokens are verified (with the AS daemon's verifier).
    pub providers: Vec<OidcProvider>,
}

impl TestAccounts {
    fn verdict(&self, fqdn: Option<&Fqdn>) -> Verdict {
        match fqdn {
            Some(f) if self.disabled.contains(f) => Verdict::Disabled,
            Some(f) => Verdict::Account(Account { fqdn: f.clone() }),
            None => Verdict::BadCredential,
        }
    }
}

impl Accounts for TestAccounts {
    fn password(&mut self, email: &str, password: &[u8]) -> Verdict {
        let found = self.passwords.get(email).filter(|(p, _)| p == password).map(|(_, f)| f);
        self.verdict(found)
    }
    fn device(&mut self, identity: &PeerIdentity) -> Verdict {
        self.verdict(self.devices.get(&identity.name))
    }
    fn id_token(&mut self, token: &[u8], now_unix: u64) -> Result<Verdict, String> {
        let claims =
            verify_id_token(token, &self.providers, now_unix, DEFAULT_LEEWAY_SECS).map_err(|e| e.to_string())?;
        Ok(self.verdict(self.oidc.get(&(claims.issuer, claims.subject))))
    }
}

/// Options for the servers.
#[derive(Clone, Debug)]
pub struct Options {
    /// Loss on every uplink and core link.
    pub loss: f64,
    /// Relay servers: (extra one-way latency to reach it, session capacity).
    pub relays: Vec<(Duration, usize)>,
    /// Sign attestations (public-key mode available).
    pub attest: bool,
    /// An OpenID Connect provider whose key the test holds.
    pub oidc: bool,
    /// The DCs' mapping port ([`DcConfig::mapping_port`]); 0: none, so no node's NAT is
    /// tested and no search for a direct path through a symmetric NAT runs.
    pub mapping_port: u16,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            loss: 0.0,
            relays: vec![(Duration::ZERO, 10_000)],
            attest: false,
            oidc: false,
            mapping_port: DC_MAPPING_PORT,
        }
    }
}

/// How a node logs in and keeps alive.
#[derive(Clone, Debug)]
pub enum Login {
    Password,
    Device,
    Oidc,
}

#[derive(Clone, Debug)]
pub struct NodeOpts {
    pub login: Login,
    pub keepalive: KeepaliveMethod,
    pub public_key_mode: bool,
    pub udp_keepalive: Option<Duration>,
    pub tunnel_key_lifetime: Option<Duration>,
    /// The node's own cap on look-ups in flight (a hostile node sets it high).
    pub max_pending_resolves: Option<usize>,
    /// The LAN prefixes it announces (subnet routes).
    pub announced: Vec<ntm_proto::wire::Prefix>,
}

impl Default for NodeOpts {
    fn default() -> Self {
        NodeOpts {
            login: Login::Password,
            keepalive: KeepaliveMethod::Udp,
            public_key_mode: false,
            udp_keepalive: None,
            tunnel_key_lifetime: None,
            max_pending_resolves: None,
            announced: Vec::new(),
        }
    }
}

#[derive(Debug)]
pub struct Deployment {
    pub sim: Sim,
    pub as_host: HostId,
    pub dc_a: HostId,
    pub dc_b: HostId,
    pub relays: Vec<HostId>,
    pub ns: HostId,
    pub zone_a: Fqdn,
    pub zone_b: Fqdn,
    pub as_key: KeyPair,
    pub oidc_key: KeyPair,
    next_home: u8,
    /// Node events seen while waiting for something else, returned by `events`.
    held: HashMap<HostId, Vec<NodeEvent>>,
}

pub fn server_identity(n: &str, role: Role) -> Option<PeerIdentity> {
    Some(PeerIdentity { name: name(n), role, public_key: None })
}

impl Deployment {
    /// Restarts the DC `dc` from what its database would hold (`export_node` of every
    /// node, then `restore_node` into a fresh engine, the counters reserved ahead as the
    /// daemon's store does): a DC process restarted on its database.
    pub fn restart_dc_from_saved_state(&mut self, dc: HostId, label: &str) -> Result<(), ConfigError> {
        let saved: Vec<_> = {
            let e = self.sim.engine_ref::<Dc>(dc);
            e.node_names().iter().filter_map(|f| e.export_node(f)).collect()
        };
        let now = self.now();
        let cfg = self.sim.engine_ref::<Dc>(dc).config().clone();
        let mut fresh = Dc::new(cfg, self.sim.rng_for(label), now)?;
        for s in saved {
            let floor = s.next_counter + (1 << 20);
            fresh.restore_node(now, s, floor)?;
        }
        self.sim.replace_engine(dc, fresh);
        Ok(())
    }

    /// Both ends send a packet to the other every 20 ms, as a TCP connection's data and
    /// acknowledgements do, until a packet sent after the start has arrived each way: the
    /// time until then (a packet may take longer than 20 ms: any that arrives counts), or
    /// None if that did not happen within `limit`. The stall of a move, measured.
    pub fn stall(&mut self, a: HostId, b: HostId, limit: Duration) -> Option<Duration> {
        let start = self.now();
        let (va, vb) = (self.node(a).virtual_addrs()?, self.node(b).virtual_addrs()?);
        let _ = (self.sim.take_ip(a), self.sim.take_ip(b));
        let (mut to_a, mut to_b): (Vec<Vec<u8>>, Vec<Vec<u8>>) = (Vec::new(), Vec::new());
        let (mut a_heard, mut b_heard) = (false, false);
        while self.now() < start + limit {
            let tag = u32::try_from(to_a.len()).unwrap_or(u32::MAX).to_be_bytes();
            let (ab, ba) = (ipv4_packet(va.v4, vb.v4, &tag), ipv4_packet(vb.v4, va.v4, &tag));
            let now = self.now();
            let _ = self.node(a).send_ip(now, &ab);
            let _ = self.node(b).send_ip(now, &ba);
            to_b.push(ab);
            to_a.push(ba);
            let until = self.now() + Duration::from_millis(20);
            let both = self.sim.run_until_cond(until, |s| {
                a_heard |= s.take_ip(a).iter().any(|p| to_a.contains(p));
                b_heard |= s.take_ip(b).iter().any(|p| to_b.contains(p));
                a_heard && b_heard
            });
            if both {
                return Some(self.now().saturating_duration_since(start));
            }
        }
        None
    }

    pub fn new(seed: u64, opts: Options) -> Self {
        let mut sim = Sim::new(seed);
        if opts.loss > 0.0 {
            // Loss and reordering on every hop: access uplinks and the core's last hops.
            let jitter = Duration::from_millis(8);
            sim.set_default_uplink(LinkConfig::new(Duration::from_millis(10)).with_jitter(jitter).with_loss(opts.loss));
            sim.set_lan(
                RealmId::INTERNET,
                LinkConfig::new(Duration::from_millis(20)).with_jitter(jitter).with_loss(opts.loss),
            );
        }
        let now = sim.now();
        let zone_a = name("zone-a.example");
        let zone_b = name("zone-b.example");
        let dc_a_loc = DcLocation {
            name: name("dc.zone-a.example"),
            addrs: vec![
                SocketAddr::new(ip("192.0.2.20"), SERVER_PORT),
                SocketAddr::new(ip("2001:db8::20"), SERVER_PORT),
            ],
        };
        let dc_b_loc = DcLocation {
            name: name("dc.zone-b.example"),
            addrs: vec![
                SocketAddr::new(ip("192.0.2.21"), SERVER_PORT),
                SocketAddr::new(ip("2001:db8::21"), SERVER_PORT),
            ],
        };
        sim.dns_mut()
            .add_zone(zone_a.clone(), dc_a_loc)
            .add_zone(zone_b.clone(), dc_b_loc)
            .add_ordinary(name("example.org"));

        // Relay servers, dual-stack.
        let mut relay_refs = Vec::new();
        let mut relay_specs = Vec::new();
        for (i, (extra, capacity)) in opts.relays.iter().enumerate() {
            let v4 = ip(&format!("192.0.2.{}", 30 + i));
            let v6 = ip(&format!("2001:db8::{}", 30 + i));
            let rname = format!("rs{}.example", i + 1);
            relay_refs.push(ServerRef { name: name(&rname), addr: SocketAddr::new(v4, SERVER_PORT) });
            relay_specs.push((rname, v4, v6, *extra, *capacity));
        }
        let ns_ref = NsRef {
            server: ServerRef { name: name("ns1.example"), addr: SocketAddr::new(ip("192.0.2.40"), SERVER_PORT) },
            node_addrs: vec![
                SocketAddr::new(ip("192.0.2.40"), SERVER_PORT),
                SocketAddr::new(ip("2001:db8::40"), SERVER_PORT),
            ],
        };

        let dc_cfg = |n: &str, zone: &Fqdn, v4: &str, v6: &str| {
            let mut c =
                DcConfig::new(name(n), vec![zone.clone()], (v4.parse().unwrap(), 24), (v6.parse().unwrap(), 112));
            c.relays = relay_refs.clone();
            c.notification_servers = vec![ns_ref.clone()];
            c.mapping_port = opts.mapping_port;
            c
        };
        let dc_a_cfg = dc_cfg("dc.zone-a.example", &zone_a, "198.18.1.0", "2001:db8:ffa::");
        let dc_b_cfg = dc_cfg("dc.zone-b.example", &zone_b, "198.18.2.0", "2001:db8:ffb::");
        let dc_a = Dc::new(dc_a_cfg, sim.rng_for("dc-a"), now).unwrap();
        let dc_b = Dc::new(dc_b_cfg, sim.rng_for("dc-b"), now).unwrap();
        let dc_a = sim.add_host(
            "dc-a",
            RealmId::INTERNET,
            &[ip("192.0.2.20"), ip("2001:db8::20")],
            SERVER_PORT,
            server_identity("dc.zone-a.example", Role::Dc),
            dc_a,
        );
        let dc_b = sim.add_host(
            "dc-b",
            RealmId::INTERNET,
            &[ip("192.0.2.21"), ip("2001:db8::21")],
            SERVER_PORT,
            server_identity("dc.zone-b.example", Role::Dc),
            dc_b,
        );
        if opts.mapping_port != 0 {
            for dc in [dc_a, dc_b] {
                sim.bind_socket(dc, MAPPING_PORT, opts.mapping_port);
            }
        }

        let mut relays = Vec::new();
        for (rname, v4, v6, extra, capacity) in relay_specs {
            let mut cfg =
                RsConfig::new(name(&rname), vec![SocketAddr::new(v4, SERVER_PORT), SocketAddr::new(v6, SERVER_PORT)]);
            cfg.max_sessions = capacity;
            let rs = Rs::new(cfg).unwrap();
            let h =
                sim.add_host(&rname, RealmId::INTERNET, &[v4, v6], SERVER_PORT, server_identity(&rname, Role::Rs), rs);
            sim.set_host_delay(h, extra);
            relays.push(h);
        }

        let ns = Ns::new(NsConfig::new(name("ns1.example"))).unwrap();
        let ns = sim.add_host(
            "ns1",
            RealmId::INTERNET,
            &[ip("192.0.2.40"), ip("2001:db8::40")],
            SERVER_PORT,
            server_identity("ns1.example", Role::Ns),
            ns,
        );

        let mut rng = sim.rng_for("keys");
        let as_key = KeyPair::generate(&mut *rng);
        let oidc_key = KeyPair::generate(&mut *rng);
        let mut as_cfg = AsConfig::new(name("as.example"));
        if opts.attest {
            as_cfg.attestation_key = Some(as_key.clone());
        }
        let mut accounts = TestAccounts::default();
        if opts.oidc {
            accounts.providers = vec![OidcProvider {
                issuer: "https://id.example".into(),
                audience: "ntmobile".into(),
                keys: vec![ProviderKey { kid: Some("k1".into()), key: oidc_key.public() }],
            }];
        }
        let server = AccountServer::new(as_cfg, accounts, sim.rng_for("as")).unwrap();
        let as_host = sim.add_host(
            "as",
            RealmId::INTERNET,
            &[ip("192.0.2.10"), ip("2001:db8::10")],
            SERVER_PORT,
            server_identity("as.example", Role::As),
            server,
        );

        Deployment {
            sim,
            as_host,
            dc_a,
            dc_b,
            relays,
            ns,
            zone_a,
            zone_b,
            as_key,
            oidc_key,
            next_home: 1,
            held: HashMap::new(),
        }
    }

    pub fn accounts(&mut self) -> &mut TestAccounts {
        self.sim.engine::<AccountServer<TestAccounts>>(self.as_host).accounts()
    }

    /// An access network behind a NAT of the given kind, with a fresh outside address.
    pub fn home(&mut self, cfg: impl FnOnce(std::net::Ipv4Addr) -> RealmConfig) -> RealmId {
        let n = self.next_home;
        self.next_home += 1;
        let outside: std::net::Ipv4Addr = format!("203.0.113.{n}").parse().unwrap();
        self.sim.add_realm(&format!("home{n}"), RealmId::INTERNET, cfg(outside))
    }

    /// Adds a node `fqdn` in `realm` at `addrs`, with an account, not yet started.
    pub fn add_node(&mut self, fqdn: &str, realm: RealmId, addrs: &[IpAddr], opts: NodeOpts) -> HostId {
        let f = name(fqdn);
        let key_pair = if opts.public_key_mode || matches!(opts.login, Login::Device) {
            let mut rng = self.sim.rng_for(&format!("{fqdn}-key"));
            Some(KeyPair::generate(&mut *rng))
        } else {
            None
        };
        let credential = match opts.login {
            Login::Password => {
                let email = format!("owner@{fqdn}");
                self.accounts().passwords.insert(email.clone(), (b"correct horse".to_vec(), f.clone()));
                Credential::Password {
                    email: Text::new(&email).unwrap(),
                    password: Password::new(b"correct horse").unwrap(),
                }
            }
            Login::Device => {
                self.accounts().devices.insert(f.clone(), f.clone());
                Credential::DeviceCertificate
            }
            Login::Oidc => {
                self.accounts().oidc.insert(("https://id.example".into(), format!("sub-{fqdn}")), f.clone());
                let token = self.id_token(&format!("sub-{fqdn}"), "ntmobile", 3600);
                Credential::OidcToken(ntm_proto::wire::login::IdToken::new(token.as_bytes()).unwrap())
            }
        };
        let local: Vec<SocketAddr> = addrs.iter().map(|a| SocketAddr::new(*a, NODE_PORT)).collect();
        // The AS's addresses of both families, as a box configured for any network has
        // them: the node picks one of a family it has.
        let as_addrs =
            vec![SocketAddr::new(ip("192.0.2.10"), SERVER_PORT), SocketAddr::new(ip("2001:db8::10"), SERVER_PORT)];
        let mut cfg = NodeConfig::new(as_addrs, name("as.example"), credential, local);
        cfg.keepalive = opts.keepalive;
        cfg.udp_keepalive_interval = opts.udp_keepalive;
        if let Some(l) = opts.tunnel_key_lifetime {
            cfg.tunnel_key_lifetime = l;
        }
        if let Some(m) = opts.max_pending_resolves {
            cfg.max_pending_resolves = m;
        }
        cfg.key_pair = if opts.public_key_mode { key_pair.clone() } else { None };
        cfg.announced = opts.announced;
        let node = Node::new(cfg, self.sim.rng_for(fqdn)).unwrap();
        let identity = match (&opts.login, &key_pair) {
            (Login::Device, Some(k)) => Some(PeerIdentity { name: f, role: Role::Node, public_key: Some(k.public()) }),
            _ => None,
        };
        self.sim.add_host(fqdn, realm, addrs, NODE_PORT, identity, node)
    }

    /// A signed ES256 ID token from the test's OpenID provider, valid for `valid_secs`
    /// (negative: already expired). The simulator's clock is the AS's UNIX time.
    pub fn id_token(&self, subject: &str, audience: &str, valid_secs: i64) -> String {
        use base64ct::{Base64UrlUnpadded, Encoding};
        let now = i64::try_from(self.sim.now().as_millis() / 1000).unwrap();
        let header = Base64UrlUnpadded::encode_string(br#"{"alg":"ES256","kid":"k1","typ":"JWT"}"#);
        let claims = format!(
            r#"{{"iss":"https://id.example","sub":"{subject}","aud":"{audience}","exp":{},"iat":{}}}"#,
            now + valid_secs,
            now
        );
        let payload = Base64UrlUnpadded::encode_string(claims.as_bytes());
        let signing_input = format!("{header}.{payload}");
        let sig = self.oidc_key.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", Base64UrlUnpadded::encode_string(&sig.0))
    }

    pub fn node(&mut self, h: HostId) -> &mut Node {
        self.sim.engine::<Node>(h)
    }

    pub fn start(&mut self, h: HostId) {
        let now = self.sim.now();
        self.node(h).start(now);
    }

    /// Starts `h` and runs until it is registered (or `limit` passes).
    pub fn bring_up(&mut self, h: HostId) -> bool {
        self.start(h);
        let deadline = self.sim.now() + Duration::from_secs(120);
        self.sim.run_until_cond(deadline, |s| s.engine::<Node>(h).is_registered())
    }

    /// All events a node produced so far (drained).
    pub fn events(&mut self, h: HostId) -> Vec<NodeEvent> {
        let mut v = self.held.remove(&h).unwrap_or_default();
        v.extend(self.sim.node_events(h));
        v
    }

    /// The DNS hook: resolves `peer` from `h` and runs until the answer.
    pub fn resolve(&mut self, h: HostId, peer: &str) -> Result<VirtualAddrs, ResolveError> {
        let now = self.sim.now();
        let id = self.node(h).resolve(now, name(peer));
        let deadline = self.sim.now() + Duration::from_secs(90);
        let mut answer = None;
        let mut other = Vec::new();
        // `answer` says whether the answer came (None: Timeout below).
        let _ = self.sim.run_until_cond(deadline, |s| {
            for e in s.node_events(h) {
                match e {
                    NodeEvent::Resolved { id: i, virtual_addrs, .. } if i == id => answer = Some(Ok(virtual_addrs)),
                    NodeEvent::ResolveFailed { id: i, error, .. } if i == id => answer = Some(Err(error)),
                    e => other.push(e),
                }
            }
            answer.is_some()
        });
        self.held.entry(h).or_default().extend(other);
        answer.unwrap_or(Err(ResolveError::Timeout))
    }

    /// Sends one IPv4 packet from `a`'s virtual address to `b`'s and reports whether `b`
    /// received exactly it within a second.
    pub fn ping4(&mut self, a: HostId, b: HostId, tag: u32) -> bool {
        let src = self.node(a).virtual_addrs().unwrap();
        let dst = self.node(b).virtual_addrs().unwrap();
        let pkt = ipv4_packet(src.v4, dst.v4, &tag.to_be_bytes());
        self.ping_with(a, b, pkt)
    }

    /// The same over the IPv6 virtual addresses.
    pub fn ping6(&mut self, a: HostId, b: HostId, tag: u32) -> bool {
        let src = self.node(a).virtual_addrs().unwrap();
        let dst = self.node(b).virtual_addrs().unwrap();
        let pkt = ipv6_packet(src.v6, dst.v6, &tag.to_be_bytes());
        self.ping_with(a, b, pkt)
    }

    fn ping_with(&mut self, a: HostId, b: HostId, pkt: Vec<u8>) -> bool {
        let _ = self.sim.take_ip(b);
        let now = self.sim.now();
        if self.node(a).send_ip(now, &pkt).is_err() {
            return false;
        }
        let deadline = self.sim.now() + Duration::from_secs(1);
        self.sim.run_until_cond(deadline, |s| s.take_ip(b).contains(&pkt))
    }

    /// The current path of `h`'s newest live tunnel to `peer`.
    pub fn path(&mut self, h: HostId, peer: &str) -> Option<ntm_proto::engine::node::PathKind> {
        let p = name(peer);
        self.node(h)
            .tunnels()
            .into_iter()
            .filter(|t| t.peer == p && t.established && !t.superseded)
            .map(|t| t.path)
            .next_back()
    }

    pub fn run_for(&mut self, d: Duration) {
        self.sim.run_for(d);
    }

    pub fn now(&self) -> Instant {
        self.sim.now()
    }
}

/// A minimal IPv4 packet (header fields the agent looks at, then `payload`).
pub fn ipv4_packet(src: std::net::Ipv4Addr, dst: std::net::Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    let total = u16::try_from(20 + payload.len()).unwrap();
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(payload);
    p
}

/// A minimal IPv6 packet.
pub fn ipv6_packet(src: std::net::Ipv6Addr, dst: std::net::Ipv6Addr, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
    p.extend_from_slice(&[17, 64]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(payload);
    p
}
