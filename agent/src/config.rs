//! `ntmd`'s configuration: one JSON file, parsed with serde-json-core (no allocator-heavy
//! JSON library on the box). Every field is documented here and in `docs/agent.md`; an
//! example is `board/default/ntmd.json`. Unknown fields are refused, and every error is
//! one line naming the file and the field.

use heapless::{String as HString, Vec as HVec};
use ntm_proto::wire::{Fqdn, Prefix};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

/// Longest configuration file.
pub const CONFIG_MAX: usize = 16 * 1024;
/// Longest string value once unescaped: the longest field is a path or an e-mail address.
const UNESCAPED_MAX: usize = 1024;
/// Longest path in the configuration.
pub type PathStr = HString<256>;

pub use ntm_cmdline::ConfigError;

/// How the agent logs in (exactly one of the three).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialFile {
    /// Device certificate login (the default for boxes): the certificate chain (PEM) and
    /// its P-256 key (PEM, PKCS#8; keep it mode 0600).
    #[serde(default)]
    pub device: Option<DeviceFiles>,
    /// Password login: the account's e-mail and a file holding the password.
    #[serde(default)]
    pub password: Option<PasswordFiles>,
    /// OpenID Connect login: a file holding a current ID token (looked at every 30 s and
    /// re-read when it changed, so a helper can refresh the token).
    #[serde(default)]
    pub oidc_token_file: Option<PathStr>,
}

/// A device certificate and key (both required).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceFiles {
    /// The certificate chain (PEM), issued by the deployment CA.
    #[serde(default)]
    pub cert: PathStr,
    /// The private key (PEM, PKCS#8, P-256).
    #[serde(default)]
    pub key: PathStr,
}

/// Password login (both required).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordFiles {
    /// The account's e-mail address.
    #[serde(default)]
    pub email: HString<254>,
    /// A file holding the password (one line; mode 0600).
    #[serde(default)]
    pub password_file: PathStr,
}

/// The TUN device.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunSettings {
    /// Interface name.
    #[serde(default = "default_tun_name")]
    pub name: HString<15>,
    /// MTU of the TUN device: the physical MTU minus the tunnel's overhead (80 bytes
    /// over IPv6, 60 over IPv4). Packets larger than the path allows get an ICMP "too
    /// big" answer.
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// The TUN offloads (Linux): the device passes TCP super-packets of up to 64 KiB each
    /// way behind virtio-net headers, which the agent cuts into segments and coalesces.
    /// `false`: one packet per read and write.
    #[serde(default = "default_true")]
    pub offload: bool,
}

fn default_true() -> bool {
    true
}

fn default_tun_name() -> HString<15> {
    let mut s = HString::new();
    let _ = s.push_str("ntm0");
    s
}

fn default_mtu() -> u16 {
    1420
}

/// The largest TUN MTU allowed (jumbo frames), so the largest inner packet an agent seals.
pub const TUN_MTU_MAX: u16 = 9000;

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            listen: default_dns_listen(),
            upstream: HVec::new(),
            ntm_domains: HVec::new(),
            dc_port: default_dc_port(),
        }
    }
}

impl Default for TunSettings {
    fn default() -> Self {
        TunSettings { name: default_tun_name(), mtu: default_mtu(), offload: default_true() }
    }
}

/// The DNS hook and how the agent finds its DC.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsSettings {
    /// Where the stub listens; point the box's resolver here.
    #[serde(default = "default_dns_listen")]
    pub listen: SocketAddr,
    /// Upstream resolvers for ordinary names (and the NS lookup of our own zone).
    #[serde(default)]
    pub upstream: HVec<SocketAddr, 4>,
    /// Domains whose names are NTMobile nodes (required).
    #[serde(default)]
    pub ntm_domains: HVec<Fqdn, 8>,
    /// The port DCs listen on.
    #[serde(default = "default_dc_port")]
    pub dc_port: u16,
}

fn default_dns_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 53], 53))
}

fn default_dc_port() -> u16 {
    4460
}

/// A server as the configuration gives it: `"192.0.2.10:4443"`, `"[2001:db8::10]:4443"`
/// or `"as.example.net:4443"` (a name, resolved through `dns.upstream`, A and AAAA).
pub type ServerStr = HString<262>;

/// A server entry, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerAddr {
    /// An address with port.
    Addr(SocketAddr),
    /// A DNS name with port: every address of both families it has.
    Name(Fqdn, u16),
}

impl ServerAddr {
    /// Parses `address:port`, `[address]:port` or `name:port`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(ServerAddr::Addr(a));
        }
        let bad = || format!("\"{s}\" is not address:port, [address]:port or name:port");
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        // An address that did not parse with its port is not a name either.
        if host.contains([':', '[', ']']) || host.parse::<IpAddr>().is_ok() || port == 0 {
            return Err(bad());
        }
        let name = Fqdn::new(host).map_err(|_| bad())?;
        Ok(ServerAddr::Name(name, port))
    }
}

/// A DC known without DNS lookups of node names.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticDc {
    /// Its name (its certificate carries it).
    pub name: Fqdn,
    /// Its addresses with port, of one or both families; an entry may also be a name with
    /// port, resolved through `dns.upstream`.
    pub addrs: HVec<ServerStr, 4>,
}

/// The whole file. Required fields are parsed as optional and checked afterwards, so
/// that a missing one is named in the error.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    /// The AS: an address with port, or a name with port resolved through `dns.upstream`
    /// (both families). This or `account_server_addrs` is required.
    #[serde(default)]
    pub account_server: Option<ServerStr>,
    /// More of the AS's addresses (or names), e.g. one per family; tried after
    /// `account_server`, each login attempt with one of a family the box has.
    #[serde(default)]
    pub account_server_addrs: HVec<ServerStr, 4>,
    /// The AS's name, which its certificate must carry (required).
    #[serde(default)]
    pub account_server_name: Option<Fqdn>,
    /// The deployment CA certificate (PEM) (required).
    #[serde(default)]
    pub ca: PathStr,
    /// How to log in (required: exactly one kind).
    #[serde(default)]
    pub credential: CredentialFile,
    /// Wrap K_mncn for the peer's public key (needs a device certificate and an AS that
    /// attests keys). With `strict`, refuse peers without one.
    #[serde(default)]
    pub public_key_mode: bool,
    /// Refuse K_tmp-wrapped tunnels (public-key mode only).
    #[serde(default)]
    pub strict_public_key_mode: bool,
    /// "udp" (keepalive to the DC every 20 s) or "ns" (TCP to an NS, hourly).
    #[serde(default = "default_keepalive")]
    pub keepalive: HString<8>,
    /// The tunnel's UDP port (both families).
    #[serde(default = "default_udp_port")]
    pub udp_port: u16,
    /// The tunnel sockets take runs of datagrams as coalesced groups (UDP_GRO, Linux 5.0)
    /// where the kernel can: 512 KiB of receive slots instead of 289 KiB. `false`: one
    /// datagram per slot; for kernels or emulators where coalescing misbehaves.
    #[serde(default = "default_true")]
    pub udp_coalescing: bool,
    /// The TUN device.
    #[serde(default)]
    pub tun: TunSettings,
    /// Virtual prefixes routed into the TUN device (all DCs' prefixes of the
    /// deployment), e.g. "198.18.0.0/15" (required).
    #[serde(default)]
    pub virtual_routes: HVec<HString<48>, 8>,
    /// Where peers' announced prefixes may lie for the box to route them into the TUN
    /// device; each must also stay clear of the box's own networks, servers and DNS
    /// upstreams and of the virtual routes (docs/agent.md). Absent: the private ranges
    /// ([`DEFAULT_PEER_PREFIXES`]); `[]`: none.
    #[serde(default)]
    pub accept_peer_prefixes: Option<HVec<HString<48>, 16>>,
    /// The DNS hook (required: its `ntm_domains`).
    #[serde(default)]
    pub dns: DnsSettings,
    /// Our DC, without DNS (small sites).
    #[serde(default)]
    pub static_dc: Option<StaticDc>,
    /// The status socket for `ntmd status`.
    #[serde(default = "default_status")]
    pub status_socket: PathStr,
    /// error, warn, info, debug or trace.
    #[serde(default = "default_log")]
    pub log_level: HString<8>,
    /// Where logs go: "stderr" (the default) or "syslog".
    #[serde(default = "default_log_target")]
    pub log_target: HString<8>,
    /// The syslog daemon's socket (with `log_target` "syslog").
    #[serde(default = "default_syslog_socket")]
    pub syslog_socket: PathStr,
    /// Most tunnels.
    #[serde(default = "default_max_tunnels")]
    pub max_tunnels: u16,
    /// The user (`"name"` or `"name:group"`, names or numbers) to run as once started,
    /// keeping only CAP_NET_ADMIN (`privs.rs`); none: stay root, also with only that.
    #[serde(default)]
    pub user: Option<HString<64>>,
    /// The box serves the LAN behind it (`lan.rs`); absent: only the box's own processes
    /// use the tunnels.
    #[serde(default)]
    pub lan: Option<LanSettings>,
}

/// The LAN the box serves: its devices reach peers through the tunnels.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LanSettings {
    /// The LAN interfaces (e.g. "br-lan"); each must exist when the agent starts.
    #[serde(default)]
    pub interfaces: HVec<HString<15>, 4>,
    /// LAN sources are translated to the box's virtual address on their way into the
    /// tunnels (except sources inside `announce`, which keep theirs).
    #[serde(default = "yes")]
    pub masquerade: bool,
    /// Prefixes of the LAN that peers may reach (subnet routes), sent to the DC at
    /// registration; at most 8.
    #[serde(default)]
    pub announce: HVec<HString<48>, 8>,
    /// The DNS stub also answers queries from the LAN, on the LAN interfaces' addresses.
    #[serde(default = "yes")]
    pub dns: bool,
    /// Forwarding to and from the TUN device limited to: LAN to tunnel, tunnel to the
    /// announced prefixes (and the answers of connections the LAN opened).
    #[serde(default = "yes")]
    pub firewall: bool,
}

fn yes() -> bool {
    true
}

fn default_keepalive() -> HString<8> {
    let mut s = HString::new();
    let _ = s.push_str("udp");
    s
}

fn default_udp_port() -> u16 {
    4500
}

fn default_status() -> PathStr {
    let mut s = HString::new();
    let _ = s.push_str("/run/ntmd.sock");
    s
}

fn default_log() -> HString<8> {
    let mut s = HString::new();
    let _ = s.push_str("info");
    s
}

fn default_log_target() -> HString<8> {
    let mut s = HString::new();
    let _ = s.push_str("stderr");
    s
}

fn default_syslog_socket() -> PathStr {
    let mut s = HString::new();
    let _ = s.push_str(ntm_cmdline::logging::SYSLOG_SOCKET);
    s
}

/// The peers' prefixes accepted without `accept_peer_prefixes`: the private ranges.
pub const DEFAULT_PEER_PREFIXES: [&str; 4] = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"];

fn default_max_tunnels() -> u16 {
    64
}

/// A prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// Network address.
    pub addr: IpAddr,
    /// Prefix length.
    pub len: u8,
}

impl Route {
    /// Parses `address/length`.
    pub fn parse(r: &str) -> Result<Route, String> {
        let (a, l) = r.split_once('/').ok_or_else(|| format!("\"{r}\" is not address/length"))?;
        let addr: IpAddr = a.parse().map_err(|_| format!("\"{a}\" is not an address"))?;
        let len: u8 = l.parse().map_err(|_| format!("\"{l}\" is not a prefix length"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(format!("prefix length {len} over {max}"));
        }
        Ok(Route { addr, len })
    }

    /// The prefix as a wire prefix (host bits must be clear).
    pub fn prefix(&self) -> Result<Prefix, String> {
        Prefix::new(self.addr, self.len).ok_or_else(|| format!("{}/{}: host bits set", self.addr, self.len))
    }
}

impl AgentFile {
    /// The routes, parsed.
    pub fn routes(&self) -> Result<Vec<Route>, String> {
        self.virtual_routes.iter().map(|r| Route::parse(r)).collect()
    }

    /// Where peers' announced prefixes may lie (`accept_peer_prefixes`, or the private
    /// ranges without it).
    pub fn accepted_peer_prefixes(&self) -> Result<Vec<Prefix>, String> {
        match &self.accept_peer_prefixes {
            Some(list) => list.iter().map(|p| Route::parse(p)?.prefix()).collect(),
            None => DEFAULT_PEER_PREFIXES.iter().map(|p| Route::parse(p)?.prefix()).collect(),
        }
    }

    /// The prefixes `lan.announce` gives, checked (no host bits, none overlapping a
    /// virtual prefix or another of them); empty without `lan`.
    pub fn announced(&self) -> Result<Vec<Prefix>, String> {
        let Some(lan) = &self.lan else { return Ok(Vec::new()) };
        let virt: Vec<Prefix> = self.routes()?.iter().filter_map(|r| r.prefix().ok()).collect();
        let mut out: Vec<Prefix> = Vec::new();
        for a in &lan.announce {
            let p = Route::parse(a)?.prefix()?;
            if let Some(v) = virt.iter().find(|v| v.overlaps(&p)) {
                return Err(format!("{p} overlaps the virtual prefix {v}"));
            }
            if let Some(o) = out.iter().find(|o| o.overlaps(&p)) {
                return Err(format!("{p} overlaps {o}"));
            }
            out.push(p);
        }
        Ok(out)
    }

    /// The AS's entries, `account_server` first (checked by `parse`, so none is dropped
    /// here from a loaded file).
    pub fn account_servers(&self) -> Vec<ServerAddr> {
        self.account_server.iter().chain(&self.account_server_addrs).filter_map(|s| ServerAddr::parse(s).ok()).collect()
    }

    /// The static DC's entries.
    pub fn static_dc_addrs(&self) -> Vec<ServerAddr> {
        self.static_dc.iter().flat_map(|d| &d.addrs).filter_map(|s| ServerAddr::parse(s).ok()).collect()
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        let missing = |field| Err((field, "missing".to_string()));
        if self.account_server.is_none() && self.account_server_addrs.is_empty() {
            return missing("account_server");
        }
        let mut names = false;
        for s in self.account_server.iter().chain(&self.account_server_addrs) {
            let field = if Some(s) == self.account_server.as_ref() { "account_server" } else { "account_server_addrs" };
            names |= matches!(ServerAddr::parse(s).map_err(|e| (field, e))?, ServerAddr::Name(..));
        }
        if let Some(d) = &self.static_dc {
            if d.addrs.is_empty() {
                return missing("static_dc.addrs");
            }
            for s in &d.addrs {
                names |= matches!(ServerAddr::parse(s).map_err(|e| ("static_dc.addrs", e))?, ServerAddr::Name(..));
            }
        }
        if names && self.dns.upstream.is_empty() {
            return Err(("dns.upstream", "needed to resolve the servers given by name".into()));
        }
        if self.account_server_name.is_none() {
            return missing("account_server_name");
        }
        if self.ca.is_empty() {
            return missing("ca");
        }
        let c = &self.credential;
        if let Some(d) = &c.device {
            if d.cert.is_empty() {
                return missing("credential.device.cert");
            }
            if d.key.is_empty() {
                return missing("credential.device.key");
            }
        }
        if let Some(p) = &c.password {
            if p.email.is_empty() {
                return missing("credential.password.email");
            }
            if p.password_file.is_empty() {
                return missing("credential.password.password_file");
            }
        }
        let n = usize::from(c.device.is_some())
            + usize::from(c.password.is_some())
            + usize::from(c.oidc_token_file.is_some());
        if n != 1 {
            return Err(("credential", "give exactly one of device, password, oidc_token_file".into()));
        }
        if self.public_key_mode && c.device.is_none() {
            return Err(("public_key_mode", "needs a device certificate (its key is the node key)".into()));
        }
        if self.strict_public_key_mode && !self.public_key_mode {
            return Err(("strict_public_key_mode", "needs public_key_mode".into()));
        }
        if !matches!(self.keepalive.as_str(), "udp" | "ns") {
            return Err(("keepalive", format!("\"{}\": udp or ns", self.keepalive)));
        }
        if self.udp_port == 0 {
            return Err(("udp_port", "port 0".into()));
        }
        // IPv6 needs 1280 on the link carrying the virtual IPv6 address.
        if !(1280..=TUN_MTU_MAX).contains(&self.tun.mtu) {
            return Err(("tun.mtu", format!("between 1280 and {TUN_MTU_MAX}")));
        }
        if self.tun.name.is_empty() {
            return Err(("tun.name", "empty".into()));
        }
        if self.virtual_routes.is_empty() {
            return Err(("virtual_routes", "missing: at least one prefix".into()));
        }
        self.routes().map_err(|e| ("virtual_routes", e))?;
        self.accepted_peer_prefixes().map_err(|e| ("accept_peer_prefixes", e))?;
        if self.dns.ntm_domains.is_empty() {
            return Err(("dns.ntm_domains", "missing: at least one domain".into()));
        }
        if self.dns.upstream.is_empty() && self.static_dc.is_none() {
            return Err(("dns.upstream", "needed to find our DC (or set static_dc)".into()));
        }
        if log_filter(&self.log_level).is_none() {
            return Err(("log_level", format!("\"{}\": error, warn, info, debug or trace", self.log_level)));
        }
        if ntm_cmdline::logging::Target::from_name(&self.log_target).is_none() {
            return Err(("log_target", format!("\"{}\": stderr or syslog", self.log_target)));
        }
        if self.max_tunnels == 0 {
            return Err(("max_tunnels", "at least 1".into()));
        }
        crate::privs::account(self).map_err(|e| ("user", e))?;
        if let Some(lan) = &self.lan {
            if lan.interfaces.is_empty() {
                return Err(("lan.interfaces", "missing: at least one interface".into()));
            }
            if lan.interfaces.iter().any(|i| i.is_empty() || *i == self.tun.name) {
                return Err(("lan.interfaces", "an empty name, or the TUN device".into()));
            }
            self.announced().map_err(|e| ("lan.announce", e))?;
        }
        Ok(())
    }
}

/// The `log` filter of a level name.
pub fn log_filter(level: &str) -> Option<log::LevelFilter> {
    Some(match level {
        "error" => log::LevelFilter::Error,
        "warn" => log::LevelFilter::Warn,
        "info" => log::LevelFilter::Info,
        "debug" => log::LevelFilter::Debug,
        "trace" => log::LevelFilter::Trace,
        _ => return None,
    })
}

/// Parses configuration text.
///
/// serde-json-core's own error messages are not used: with its `custom-error-messages`
/// feature it panics on a message over 64 bytes (serde's "unknown field ..., expected one
/// of ..." is one), so the path to the bad value comes from serde_path_to_error instead.
///
/// Strings are unescaped (`\/`, `\u002e`...) into a buffer as long as the longest string
/// field: without one serde-json-core hands over the escaped text as it stands, and
/// OpenWrt's jshn writes every `/` of a path or prefix as `\/`.
pub fn parse(text: &str) -> Result<AgentFile, String> {
    let mut unescaped = [0u8; UNESCAPED_MAX];
    let mut de = serde_json_core::de::Deserializer::new(text.as_bytes(), Some(&mut unescaped));
    let cfg: AgentFile = serde_path_to_error::deserialize(&mut de).map_err(|e| describe(&e))?;
    de.end().map_err(|_| "not valid JSON: text after the closing brace".to_string())?;
    cfg.validate().map_err(|(field, problem)| format!("field \"{field}\": {problem}"))?;
    Ok(cfg)
}

fn describe(e: &serde_path_to_error::Error<serde_json_core::de::Error>) -> String {
    use serde_json_core::de::Error as E;
    let path = e.path().to_string();
    let what = match e.inner() {
        E::EofWhileParsingObject | E::EofWhileParsingList | E::EofWhileParsingString | E::EofWhileParsingValue => {
            return "not valid JSON: the file ends too early".into();
        }
        E::CustomError => "an unknown field, or a value that is not valid here",
        E::InvalidType => "a value of the wrong type",
        E::InvalidNumber | E::InvalidEscapeSequence | E::InvalidUnicodeCodePoint | E::EscapedStringIsTooLong => {
            "a value that is not valid"
        }
        _ => return format!("not valid JSON near field \"{path}\""),
    };
    if path == "." || path.is_empty() {
        format!("at the top level: {what}")
    } else {
        format!("field \"{path}\": {what}")
    }
}

/// Reads and parses the configuration file.
pub fn load(path: &Path) -> Result<AgentFile, ConfigError> {
    let err = |problem: String| ConfigError { file: path.to_path_buf(), problem };
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
    if text.len() > CONFIG_MAX {
        return Err(err(format!("longer than {CONFIG_MAX} bytes")));
    }
    parse(&text).map_err(err)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The smallest valid file; other modules' tests build on it too.
    pub(crate) const MIN: &str = r#"{
        "account_server": "192.0.2.10:4443", "account_server_name": "as.example.net",
        "ca": "/etc/ntmobile/ca.pem",
        "credential": {"device": {"cert": "/etc/ntmobile/box.pem", "key": "/etc/ntmobile/box.key"}},
        "virtual_routes": ["198.18.0.0/15", "2001:db8:ff00::/40"],
        "dns": {"upstream": ["192.0.2.53:53"], "ntm_domains": ["ntm.example.net"]}
    }"#;

    /// JSON writers may escape any character: OpenWrt's jshn (json-c) writes every "/"
    /// as "\/", so a path or a prefix reaches us escaped.
    #[test]
    fn escaped_strings_are_read_unescaped() {
        let text = MIN.replace('/', "\\/").replace("box.key", "box\\u002ekey");
        assert!(text.contains(r#""\/etc\/ntmobile\/ca.pem""#));
        let c = parse(&text).unwrap();
        assert_eq!(c.ca.as_str(), "/etc/ntmobile/ca.pem");
        assert_eq!(c.credential.device.as_ref().unwrap().key.as_str(), "/etc/ntmobile/box.key");
        assert_eq!(c.routes().unwrap()[0], Route { addr: "198.18.0.0".parse().unwrap(), len: 15 });
    }

    #[test]
    fn a_minimal_file_parses_with_defaults() {
        let c = parse(MIN).unwrap();
        assert_eq!(c.udp_port, 4500);
        assert_eq!(c.tun.name.as_str(), "ntm0");
        assert_eq!(c.tun.mtu, 1420);
        assert!(c.tun.offload);
        let c = parse(&MIN.replacen('{', r#"{ "tun": {"offload": false},"#, 1)).unwrap();
        assert!(!c.tun.offload);
        for bad in [r#""off""#, "0", "null"] {
            let err = parse(&MIN.replacen('{', &format!(r#"{{ "tun": {{"offload": {bad}}},"#), 1)).unwrap_err();
            assert!(err.contains("tun.offload"), "{bad}: {err}");
        }
        assert!(parse(MIN).unwrap().udp_coalescing);
        assert!(!parse(&MIN.replacen('{', r#"{ "udp_coalescing": false,"#, 1)).unwrap().udp_coalescing);
        let err = parse(&MIN.replacen('{', r#"{ "udp_coalescing": "yes","#, 1)).unwrap_err();
        assert!(err.contains("udp_coalescing"), "{err}");
        assert_eq!(c.keepalive.as_str(), "udp");
        assert_eq!(c.dns.listen, "127.0.0.53:53".parse().unwrap());
        assert_eq!(c.routes().unwrap()[0], Route { addr: "198.18.0.0".parse().unwrap(), len: 15 });
        assert_eq!((c.log_target.as_str(), c.syslog_socket.as_str()), ("stderr", "/dev/log"));
        let c = parse(&MIN.replacen('{', r#"{ "log_target": "syslog", "syslog_socket": "/tmp/l","#, 1)).unwrap();
        assert_eq!((c.log_target.as_str(), c.syslog_socket.as_str()), ("syslog", "/tmp/l"));
    }

    #[test]
    fn the_board_example_parses() {
        let c = parse(include_str!("../../board/default/ntmd.json")).unwrap();
        assert_eq!(c.keepalive.as_str(), "ns");
        assert_eq!(c.account_server_name.as_ref().unwrap().as_str(), "as.example.net");
        // The AS in both families, so that a box on an IPv4-only or an IPv6-only network
        // logs in with the same file.
        let both: Vec<ServerAddr> =
            ["192.0.2.10:4443", "[2001:db8::10]:4443"].iter().map(|a| ServerAddr::Addr(a.parse().unwrap())).collect();
        assert_eq!(c.account_servers(), both);
        assert!(c.credential.device.is_some());
    }

    #[test]
    fn servers_are_addresses_or_names_of_both_families() {
        // The single literal of older files still parses.
        let c = parse(MIN).unwrap();
        assert_eq!(c.account_servers(), vec![ServerAddr::Addr("192.0.2.10:4443".parse().unwrap())]);
        let named = MIN.replace("192.0.2.10:4443", "AS.Example.net:4443");
        let c = parse(&named).unwrap();
        assert_eq!(c.account_servers(), vec![ServerAddr::Name(Fqdn::new("as.example.net").unwrap(), 4443)]);
        let both = MIN.replace(
            r#""account_server": "192.0.2.10:4443","#,
            r#""account_server_addrs": ["192.0.2.10:4443", "[2001:db8::10]:4443"],"#,
        );
        let c = parse(&both).unwrap();
        assert_eq!(c.account_servers().len(), 2);
        let dc = MIN.replacen(
            '{',
            r#"{ "static_dc": {"name": "dc.example.net", "addrs": ["dc.example.net:4460", "[2001:db8::20]:4460"]},"#,
            1,
        );
        let c = parse(&dc).unwrap();
        assert_eq!(c.static_dc_addrs()[1], ServerAddr::Addr("[2001:db8::20]:4460".parse().unwrap()));
        for bad in [
            "as.example.net",
            "as.example.net:0",
            "2001:db8::10:4443",
            "[as.example.net]:4443",
            "-x.net:1",
            "192.0.2.10:99999",
        ] {
            let err = parse(&MIN.replace("192.0.2.10:4443", bad)).unwrap_err();
            assert!(err.contains("\"account_server\"") && err.contains("name:port"), "{bad}: {err}");
        }
        // A name needs the resolvers.
        let no_upstream = named.replace(r#""upstream": ["192.0.2.53:53"], "#, "").replacen(
            '{',
            r#"{ "static_dc": {"name": "dc.example.net", "addrs": ["192.0.2.20:4460"]},"#,
            1,
        );
        let err = parse(&no_upstream).unwrap_err();
        assert!(err.contains("dns.upstream") && err.contains("by name"), "{err}");
    }

    #[test]
    fn peer_prefixes_default_to_the_private_ranges() {
        let c = parse(MIN).unwrap();
        let got: Vec<String> = c.accepted_peer_prefixes().unwrap().iter().map(|p| p.to_string()).collect();
        assert_eq!(got, DEFAULT_PEER_PREFIXES);
        let none = parse(&MIN.replacen('{', r#"{ "accept_peer_prefixes": [],"#, 1)).unwrap();
        assert!(none.accepted_peer_prefixes().unwrap().is_empty());
        let lab = parse(&MIN.replacen('{', r#"{ "accept_peer_prefixes": ["198.19.0.0/16"],"#, 1)).unwrap();
        assert_eq!(lab.accepted_peer_prefixes().unwrap()[0].to_string(), "198.19.0.0/16");
        let bad = MIN.replacen('{', r#"{ "accept_peer_prefixes": ["198.19.0.1/16"],"#, 1);
        assert!(parse(&bad).unwrap_err().contains("accept_peer_prefixes"));
    }

    #[test]
    fn missing_and_bad_fields_are_named() {
        for field in ["account_server", "account_server_name", "ca", "credential", "virtual_routes", "dns"] {
            let json = MIN.replace(&format!("\"{field}\""), "\"x_removed\"");
            let err = parse(&json).unwrap_err();
            assert!(err.contains(field) || err.contains("x_removed"), "{field}: {err}");
            assert!(err.contains("unknown field"), "{field}: {err}");
        }
        let cases = [
            (r#""keepalive": "tcp","#, "keepalive"),
            (r#""log_level": "loud","#, "log_level"),
            (r#""udp_port": 0,"#, "udp_port"),
            (r#""log_target": "file","#, "log_target"),
            (r#""strict_public_key_mode": true,"#, "strict_public_key_mode"),
        ];
        for (patch, field) in cases {
            let json = MIN.replacen('{', &format!("{{ {patch}"), 1);
            let err = parse(&json).unwrap_err();
            assert!(err.contains(field), "{patch}: {err}");
        }
        let two = MIN.replace(r#""credential": {"device""#, r#""credential": {"oidc_token_file": "/t", "device""#);
        assert!(parse(&two).unwrap_err().contains("exactly one"));
        let badroute = MIN.replace("198.18.0.0/15", "198.18.0.0/33");
        assert!(parse(&badroute).unwrap_err().contains("virtual_routes"));
        assert!(parse("{").unwrap_err().contains("not valid JSON"));
        // Absent required fields are named.
        for (field, cut) in [
            ("account_server", r#""account_server": "192.0.2.10:4443","#),
            ("account_server_name", r#""account_server_name": "as.example.net","#),
            ("ca", r#""ca": "/etc/ntmobile/ca.pem","#),
            ("credential.device.key", r#", "key": "/etc/ntmobile/box.key""#),
        ] {
            let err = parse(&MIN.replace(cut, "")).unwrap_err();
            assert!(err.contains(&format!("\"{field}\": missing")), "{field}: {err}");
        }
        // Long unknown names and enum-like values give an error, not a panic (serde-json-core
        // with custom-error-messages panicked on messages over 64 bytes).
        let long = "z".repeat(300);
        let err = parse(&MIN.replacen('{', &format!("{{ \"{long}\": 1,"), 1)).unwrap_err();
        assert!(err.contains("unknown field"), "{err}");
        let err = parse(&MIN.replace("as.example.net", &long)).unwrap_err();
        assert!(err.contains("account_server_name"), "{err}");
        assert!(parse(&format!("{MIN} x")).unwrap_err().contains("after the closing brace"));
    }
}
