//! Configuration files: one JSON document per daemon.
//!
//! Every field is documented here and in `docs/servers.md`, with an example per daemon
//! under `board/default/`. Unknown fields are refused (a typo must not silently fall back
//! to a default), and every error is one line naming the file and the field:
//! `dc.json: field "zones": at least one zone is needed`, `dc.json: field "zones": missing`,
//! `dc.json: field "zonse": unknown field (expected one of ...)` ([`parse`]).

use ntm_proto::engine::DcLocation;
use ntm_proto::time::Duration;
use ntm_proto::wire::Fqdn;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

pub use ntm_cmdline::ConfigError;

/// Reads and parses a configuration file, then checks it.
pub fn load<T: DeserializeOwned + Validate>(path: &Path) -> Result<T, ConfigError> {
    let err = |problem: String| ConfigError { file: path.to_path_buf(), problem };
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
    parse(&text).map_err(err)
}

/// Parses configuration text and checks it. Every error names the field, as
/// `field "dns.dc_port": ...`; unknown top-level fields are looked for first, so that a
/// misspelt required field is reported as the unknown field it is (`field "zonse": unknown
/// field (expected one of ...)`) rather than as the required one missing.
pub fn parse<T: DeserializeOwned + Validate>(text: &str) -> Result<T, String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let Some(object) = value.as_object() else {
        return Err("not a JSON object ({...})".into());
    };
    // serde cannot say which fields a struct with `flatten` knows (and reports a missing
    // field before an unknown one), so the top level is checked against the lists here.
    let common_names = common_fields();
    let mut expected = common_names.clone();
    expected.extend(T::FIELDS.iter().map(|f| (*f).to_owned()));
    if let Some(k) = object.keys().find(|k| !expected.contains(k)) {
        expected.sort_unstable();
        return Err(format!("field \"{k}\": unknown field (expected one of {})", expected.join(", ")));
    }
    // The fields of `Common` reach it through serde's `flatten` buffer, where no path is
    // tracked: parsed alone first, an error in them names its path ("tls.key").
    let common: serde_json::Map<String, serde_json::Value> =
        object.iter().filter(|(k, _)| common_names.contains(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
    if let Err(e) = serde_path_to_error::deserialize::<_, Common>(serde_json::Value::Object(common)) {
        return Err(describe(e.path(), &e.inner().to_string(), None));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let cfg: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let inner = e.inner();
        let place = format!("line {} column {}", inner.line(), inner.column());
        let text = inner.to_string();
        // serde_json appends the place to serde's message.
        let msg = text.strip_suffix(&format!(" at {place}")).unwrap_or(&text);
        describe(e.path(), msg, Some(&place))
    })?;
    cfg.validate().map_err(|(field, problem)| format!("field \"{field}\": {problem}"))?;
    Ok(cfg)
}

/// serde says "missing field `cert`" and "unknown field `x`, expected one of `a`, `b`";
/// say it in the form `field "tls.cert": missing`, with the place in the file if known
/// (but for a missing field, whose place is the end of its object).
fn describe(path: &serde_path_to_error::Path, msg: &str, place: Option<&str>) -> String {
    let path = path.to_string();
    // The path ends at the object holding a missing field, but (for an unknown field) may
    // already end with the field itself.
    let within = |name: &str| match path.as_str() {
        "." | "" => name.to_owned(),
        p if p == name || p.ends_with(&format!(".{name}")) => p.to_owned(),
        p => format!("{p}.{name}"),
    };
    let quoted = |m: &str| m.split('`').nth(1).map(str::to_owned);
    if let Some(name) = msg.strip_prefix("missing field ").and_then(quoted) {
        return format!("field \"{}\": missing", within(&name));
    }
    let at = place.map(|p| format!(" ({p})")).unwrap_or_default();
    if let Some(name) = msg.strip_prefix("unknown field ").and_then(quoted) {
        let expected = msg.split_once("expected ").map(|(_, x)| x.replace('`', "")).unwrap_or_default();
        return format!("field \"{}\": unknown field (expected {expected}){at}", within(&name));
    }
    if path == "." || path.is_empty() {
        format!("{msg}{at}")
    } else {
        format!("field \"{path}\": {msg}{at}")
    }
}

/// Checks a parsed configuration; the error names the field.
pub trait Validate {
    /// The file's own top-level fields (besides [`common_fields`]).
    const FIELDS: &'static [&'static str];

    /// `Err((field, problem))` for the first problem found.
    fn validate(&self) -> Result<(), (&'static str, String)>;
}

/// The fields of [`Common`], which every daemon's file has, as serde knows them: from its
/// own "unknown field ..., expected one of ..." (so that a field added to `Common` needs no
/// second list).
pub fn common_fields() -> Vec<String> {
    let e = serde_json::from_str::<Common>(r#"{"": 0}"#).err().map(|e| e.to_string()).unwrap_or_default();
    let list = e.split_once("expected one of ").map_or("", |(_, l)| l);
    list.split('`').skip(1).step_by(2).map(str::to_owned).collect()
}

/// Log verbosity.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// Normal operation (the default).
    #[default]
    Info,
    /// Detail for debugging.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The `log` crate's filter.
    pub fn filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// Where log lines go.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogTarget {
    /// Standard error, with timestamps (the default).
    #[default]
    Stderr,
    /// The local syslog daemon (`syslog_socket`, `/dev/log`), facility daemon.
    Syslog,
}

impl LogTarget {
    /// As the logger takes it.
    pub fn target(self) -> ntm_cmdline::logging::Target {
        match self {
            LogTarget::Stderr => ntm_cmdline::logging::Target::Stderr,
            LogTarget::Syslog => ntm_cmdline::logging::Target::Syslog,
        }
    }
}

fn default_syslog_socket() -> PathBuf {
    PathBuf::from(ntm_cmdline::logging::SYSLOG_SOCKET)
}

/// The TLS files of a server: the deployment CA and the server's own certificate.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The deployment CA certificate (PEM).
    pub ca: PathBuf,
    /// This server's certificate chain (PEM), issued by the CA.
    pub cert: PathBuf,
    /// This server's private key (PEM, PKCS#8). Keep it mode 0600.
    pub key: PathBuf,
}

/// Settings every daemon has.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Common {
    /// The server's name; its certificate carries it.
    pub name: Fqdn,
    /// Addresses to listen on (UDP, and TCP for TLS). Give one IPv4 and one IPv6
    /// address to serve both families, e.g. `["0.0.0.0:4460", "[::]:4460"]`.
    pub listen: Vec<SocketAddr>,
    /// The TLS files.
    pub tls: TlsFiles,
    /// A Unix socket where `<daemon> status` reads the state; none if absent.
    #[serde(default)]
    pub status_socket: Option<PathBuf>,
    /// Log verbosity.
    #[serde(default)]
    pub log_level: LogLevel,
    /// Where logs go: "stderr" (the default) or "syslog".
    #[serde(default)]
    pub log_target: LogTarget,
    /// The syslog daemon's socket (with `log_target` "syslog").
    #[serde(default = "default_syslog_socket")]
    pub syslog_socket: PathBuf,
    /// The user (`"name"` or `"name:group"`, names or numbers) to run as once every port
    /// is bound and every file open; none: stay as started (see `privs`).
    #[serde(default)]
    pub user: Option<String>,
    /// Most TCP/TLS connections at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most inbound connections one source address may hold before they are live (have
    /// sent a frame the server accepted as authentic).
    #[serde(default = "default_max_unauthenticated_per_source")]
    pub max_unauthenticated_per_source: usize,
    /// Most bytes held for partial frames over all connections; over it, the connections
    /// holding the most are closed.
    #[serde(default = "default_max_buffered_bytes")]
    pub max_buffered_bytes: usize,
}

fn default_max_connections() -> usize {
    4096
}

fn default_max_unauthenticated_per_source() -> usize {
    64
}

fn default_max_buffered_bytes() -> usize {
    8 << 20
}

impl Common {
    fn check(&self) -> Result<(), (&'static str, String)> {
        if self.listen.is_empty() {
            return Err(("listen", "at least one address".into()));
        }
        if self.max_connections == 0 {
            return Err(("max_connections", "must be at least 1".into()));
        }
        if self.max_unauthenticated_per_source == 0 {
            return Err(("max_unauthenticated_per_source", "must be at least 1".into()));
        }
        if self.max_buffered_bytes < 2 * (2 + ntm_proto::wire::frame::FRAME_MAX) {
            return Err(("max_buffered_bytes", "must hold at least two frames of the largest size (131072)".into()));
        }
        crate::privs::account(self).map_err(|e| ("user", e))?;
        Ok(())
    }

    /// For daemons that also serve UDP on `listen`: the driver sends every datagram from
    /// its socket of the destination's family, so a second address of one family would
    /// answer nodes from an address they did not send to (which their NATs drop).
    fn check_udp(&self) -> Result<(), (&'static str, String)> {
        for v4 in [true, false] {
            if self.listen.iter().filter(|a| a.is_ipv4() == v4).count() > 1 {
                return Err(("listen", "at most one IPv4 and one IPv6 address (UDP answers leave from it)".into()));
            }
        }
        Ok(())
    }
}

/// How to find other DCs (and, for the AS, the node's DC) by DNS.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsSettings {
    /// Recursive resolvers (or authoritative servers) to ask, with port.
    #[serde(default)]
    pub nameservers: Vec<SocketAddr>,
    /// The domains under which names are NTMobile nodes; other names are ordinary DNS.
    #[serde(default)]
    pub ntm_domains: Vec<Fqdn>,
    /// The port DCs listen on (NS records carry no port).
    #[serde(default = "default_dc_port")]
    pub dc_port: u16,
    /// Zones whose DC is known without DNS.
    #[serde(default)]
    pub static_dcs: Vec<StaticDc>,
}

fn default_dc_port() -> u16 {
    4460
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            nameservers: Vec::new(),
            ntm_domains: Vec::new(),
            dc_port: default_dc_port(),
            static_dcs: Vec::new(),
        }
    }
}

/// A zone served by a known DC.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticDc {
    /// The zone.
    pub zone: Fqdn,
    /// The DC's name (its certificate carries it).
    pub dc: Fqdn,
    /// The DC's addresses with port.
    pub addrs: Vec<SocketAddr>,
}

impl StaticDc {
    /// As the engines take it.
    pub fn location(&self) -> (Fqdn, DcLocation) {
        (self.zone.clone(), DcLocation { name: self.dc.clone(), addrs: self.addrs.clone() })
    }
}

impl DnsSettings {
    fn check(&self) -> Result<(), (&'static str, String)> {
        if self.nameservers.is_empty() && self.static_dcs.is_empty() && !self.ntm_domains.is_empty() {
            return Err(("dns.nameservers", "needed to look up the NTM domains (or list static_dcs)".into()));
        }
        if self.dc_port == 0 {
            return Err(("dns.dc_port", "port 0".into()));
        }
        // The driver's DNS sockets are one per family (the IPv6 one IPv6-only), so replies
        // come from the address as configured; a mapped address would be sent to from the
        // IPv6 socket, which cannot reach it.
        if let Some(ns) = self.nameservers.iter().find(|a| is_v4_mapped(a)) {
            return Err(("dns.nameservers", format!("write {ns} as an IPv4 address")));
        }
        for s in &self.static_dcs {
            if s.addrs.is_empty() {
                return Err(("dns.static_dcs", format!("zone {} has no addresses", s.zone)));
            }
        }
        Ok(())
    }
}

fn is_v4_mapped(a: &SocketAddr) -> bool {
    matches!(a, SocketAddr::V6(v6) if v6.ip().to_ipv4_mapped().is_some())
}

/// A prefix written `address/length`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix<A> {
    /// The address.
    pub addr: A,
    /// The length in bits.
    pub len: u8,
}

impl<'de> Deserialize<'de> for Prefix<Ipv4Addr> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_prefix(&String::deserialize(d)?, 32).map_err(serde::de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for Prefix<Ipv6Addr> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_prefix(&String::deserialize(d)?, 128).map_err(serde::de::Error::custom)
    }
}

fn parse_prefix<A: std::str::FromStr>(s: &str, max: u8) -> Result<Prefix<A>, String> {
    let (a, l) = s.split_once('/').ok_or_else(|| format!("\"{s}\" is not address/length"))?;
    let addr = a.parse().map_err(|_| format!("\"{a}\" is not an address of this family"))?;
    let len: u8 = l.parse().map_err(|_| format!("\"{l}\" is not a prefix length"))?;
    if len > max {
        return Err(format!("prefix length {len} is over {max}"));
    }
    Ok(Prefix { addr, len })
}

/// A relay server the DC may use.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayEntry {
    /// Its name.
    pub name: Fqdn,
    /// Its control address (UDP and TLS).
    pub addr: SocketAddr,
}

/// A notification server the DC may hand nodes to.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NsEntry {
    /// Its name.
    pub name: Fqdn,
    /// Its control address (UDP and TLS).
    pub addr: SocketAddr,
    /// The TCP addresses nodes connect to: one address (`"192.0.2.40:4463"`) or a list,
    /// one per family (`["192.0.2.40:4463", "[2001:db8::40]:4463"]`). A node is granted
    /// the one of the family it registered in.
    #[serde(deserialize_with = "one_or_more_addrs")]
    pub node_addr: Vec<SocketAddr>,
}

/// An address, or a list of addresses, as a list.
fn one_or_more_addrs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    struct Addrs;
    impl<'de> serde::de::Visitor<'de> for Addrs {
        type Value = Vec<SocketAddr>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an address with port, or a list of them")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            v.parse().map(|a| vec![a]).map_err(|_| E::custom(format!("\"{v}\" is not an address with port")))
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(a) = seq.next_element::<SocketAddr>()? {
                out.push(a);
            }
            Ok(out)
        }
    }
    d.deserialize_any(Addrs)
}

/// `ntm-dc`'s configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DcFile {
    /// Name, listen addresses, TLS, status, logs.
    #[serde(flatten)]
    pub common: Common,
    /// The zones this DC manages.
    pub zones: Vec<Fqdn>,
    /// Virtual IPv4 prefix, e.g. "198.18.0.0/16".
    pub virtual_ipv4: Prefix<Ipv4Addr>,
    /// Virtual IPv6 prefix, e.g. "2001:db8:ffff::/96".
    pub virtual_ipv6: Prefix<Ipv6Addr>,
    /// The database file (node keys, virtual addresses), kept across restarts.
    pub state: PathBuf,
    /// UDP keepalive interval asked of nodes, seconds (default 20).
    #[serde(default = "default_keepalive")]
    pub keepalive_interval_secs: u64,
    /// Relay servers.
    #[serde(default)]
    pub relays: Vec<RelayEntry>,
    /// Notification servers.
    #[serde(default)]
    pub notification_servers: Vec<NsEntry>,
    /// Finding other DCs.
    #[serde(default)]
    pub dns: DnsSettings,
    /// Most nodes (default 100000).
    #[serde(default = "default_max_nodes")]
    pub max_nodes: usize,
    /// The second UDP port for the NAT mapping test, on each `listen` address; absent:
    /// the listen port + [`MAPPING_PORT_OFFSET`] (none if the listen port is 0, an
    /// ephemeral one); 0: none, so no node is told to search for a direct path through a
    /// NAT that maps per destination. See [`DcFile::mapping_port`].
    #[serde(default)]
    pub mapping_port: Option<u16>,
    /// The gateway to ordinary hosts through RSs (absent: none, nothing changes).
    #[serde(default)]
    pub gateway: Option<DcGateway>,
}

/// A DC's `gateway`: which ordinary hosts (without NTMobile) its boxes reach through an
/// RS, which keeps their connections across the boxes' moves.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DcGateway {
    /// The relays to use, by name, among `relays` (absent or empty: the usual choice).
    #[serde(default)]
    pub rs: Vec<Fqdn>,
    /// Names that go this way, each with the names below it; `["*"]`: every name that is
    /// not an NTMobile node's.
    pub names: Vec<String>,
    /// Only ordinary hosts whose address lies in one of these IPv4 prefixes (absent:
    /// any).
    #[serde(default)]
    pub prefixes: Vec<Prefix<Ipv4Addr>>,
    /// The synthetic addresses boxes get for ordinary hosts: an IPv4 prefix inside what
    /// the boxes route into their TUN device (`virtual_routes`), outside every DC's
    /// virtual prefix.
    pub pool: Prefix<Ipv4Addr>,
}

impl DcGateway {
    /// The names as the engine takes them: every name, or these.
    pub fn names(&self) -> Result<(bool, Vec<Fqdn>), String> {
        if self.names.iter().any(|n| n == "*") {
            if self.names.len() > 1 {
                return Err("\"*\" stands alone".into());
            }
            return Ok((true, Vec::new()));
        }
        if self.names.is_empty() || self.names.len() > 16 {
            return Err("1 to 16 names, or [\"*\"]".into());
        }
        let names: Result<Vec<Fqdn>, String> =
            self.names.iter().map(|n| Fqdn::new(n).map_err(|e| format!("\"{n}\": {e}"))).collect();
        names.map(|v| (false, v))
    }
}

/// True if `p`'s address has bits set beyond its length (198.18.100.7/24): a mistake
/// the engine would silently mask.
fn has_host_bits(p: &Prefix<Ipv4Addr>) -> bool {
    ntm_proto::wire::Prefix::new(p.addr.into(), p.len).is_none()
}

/// The default mapping port's distance from the DC's port: 4464 beside 4460. Not the
/// next port: the usual plan (board/default, docs/servers.md) puts the RS on UDP 4461 and
/// the NS on 4462, often on the same host as a DC listening on every address, which then
/// could not bind its mapping port (or would take the RS's, by start order).
pub const MAPPING_PORT_OFFSET: u16 = 4;

impl DcFile {
    /// The mapping port in use (0: none): the configured one, or the first listen
    /// address's port + [`MAPPING_PORT_OFFSET`].
    pub fn mapping_port(&self) -> u16 {
        match self.mapping_port {
            Some(p) => p,
            None => self.common.listen.first().map_or(0, |a| {
                if a.port() == 0 {
                    0
                } else {
                    a.port().saturating_add(MAPPING_PORT_OFFSET)
                }
            }),
        }
    }
}

fn default_keepalive() -> u64 {
    20
}

fn default_max_nodes() -> usize {
    100_000
}

impl Validate for DcFile {
    const FIELDS: &'static [&'static str] = &[
        "zones",
        "virtual_ipv4",
        "virtual_ipv6",
        "state",
        "keepalive_interval_secs",
        "relays",
        "notification_servers",
        "dns",
        "max_nodes",
        "mapping_port",
        "gateway",
    ];

    fn validate(&self) -> Result<(), (&'static str, String)> {
        self.common.check()?;
        self.common.check_udp()?;
        self.dns.check()?;
        if self.zones.is_empty() {
            return Err(("zones", "at least one zone is needed".into()));
        }
        if self.keepalive_interval_secs == 0 || self.keepalive_interval_secs > 3600 {
            return Err(("keepalive_interval_secs", "between 1 and 3600".into()));
        }
        if self.max_nodes == 0 {
            return Err(("max_nodes", "must be at least 1".into()));
        }
        if self.notification_servers.iter().any(|n| n.node_addr.is_empty()) {
            return Err(("notification_servers.node_addr", "at least one address".into()));
        }
        let mapping = self.mapping_port();
        if self.mapping_port.is_none() && self.common.listen.iter().any(|a| a.port() > u16::MAX - MAPPING_PORT_OFFSET) {
            return Err((
                "mapping_port",
                format!("no default (the listen port + {MAPPING_PORT_OFFSET}) above 65535: give one, or 0 for none"),
            ));
        }
        if mapping != 0 && self.common.listen.iter().any(|a| a.port() == mapping) {
            return Err(("mapping_port", format!("{mapping} is a listen port: the mapping test needs a second port")));
        }
        if let Some(g) = &self.gateway {
            g.names().map_err(|e| ("gateway.names", e))?;
            if let Some(r) = g.rs.iter().find(|r| !self.relays.iter().any(|c| c.name == **r)) {
                return Err(("gateway.rs", format!("{r} is not among \"relays\"")));
            }
            if g.rs.is_empty() && self.relays.is_empty() {
                return Err(("gateway", "needs \"relays\"".into()));
            }
            if let Some(p) = g.prefixes.iter().find(|p| has_host_bits(p)) {
                return Err(("gateway.prefixes", format!("{}/{} has host bits set", p.addr, p.len)));
            }
            if has_host_bits(&g.pool) {
                return Err(("gateway.pool", format!("{}/{} has host bits set", g.pool.addr, g.pool.len)));
            }
            let v = self.virtual_ipv4;
            let overlap = ntm_proto::engine::dc::in_prefix(g.pool.addr, (v.addr, v.len.min(g.pool.len)));
            if g.pool.len > 30 || overlap {
                return Err(("gateway.pool", "an IPv4 prefix of /30 or wider outside \"virtual_ipv4\"".into()));
            }
        }
        Ok(())
    }
}

/// An OpenID Connect provider the AS accepts.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcEntry {
    /// The issuer (`iss`), exactly.
    pub issuer: String,
    /// Our client id at the provider (`aud`).
    pub audience: String,
    /// The provider's signing keys: a JWKS document saved from its `jwks_uri`.
    pub jwks: PathBuf,
}

/// `ntm-as`'s configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AsFile {
    /// Name, listen addresses, TLS, status, logs.
    #[serde(flatten)]
    pub common: Common,
    /// The accounts database.
    pub accounts: PathBuf,
    /// Lifetime of K_ntmdc, seconds (default 86400: 24 h, `account::DEFAULT_KEY_LIFETIME`).
    #[serde(default = "default_key_lifetime")]
    pub key_lifetime_secs: u64,
    /// A P-256 private key (PEM) that signs attestations of node keys (public-key
    /// mode); none disables the mode.
    #[serde(default)]
    pub attestation_key: Option<PathBuf>,
    /// Accepted OpenID Connect providers.
    #[serde(default)]
    pub oidc: Vec<OidcEntry>,
    /// Finding the node's DC.
    #[serde(default)]
    pub dns: DnsSettings,
    /// Threads that check passwords (argon2id), off the event loop.
    #[serde(default = "default_password_workers")]
    pub password_workers: usize,
    /// Password checks waiting for a thread; when full, a login is refused as overloaded.
    #[serde(default = "default_password_queue")]
    pub password_queue: usize,
    /// Logins one source address may start at once ...
    #[serde(default = "default_login_burst")]
    pub login_burst: u32,
    /// ... and then one per this many milliseconds.
    #[serde(default = "default_login_interval_ms")]
    pub login_interval_ms: u64,
}

fn default_password_workers() -> usize {
    2
}

fn default_password_queue() -> usize {
    32
}

fn default_login_burst() -> u32 {
    10
}

fn default_login_interval_ms() -> u64 {
    2000
}

fn default_key_lifetime() -> u64 {
    ntm_proto::engine::account::DEFAULT_KEY_LIFETIME.as_secs()
}

impl Validate for AsFile {
    const FIELDS: &'static [&'static str] = &[
        "accounts",
        "key_lifetime_secs",
        "attestation_key",
        "oidc",
        "dns",
        "password_workers",
        "password_queue",
        "login_burst",
        "login_interval_ms",
    ];

    fn validate(&self) -> Result<(), (&'static str, String)> {
        self.common.check()?;
        self.dns.check()?;
        if self.key_lifetime_secs < 60 {
            return Err(("key_lifetime_secs", "at least 60".into()));
        }
        if !(1..=64).contains(&self.password_workers) {
            return Err(("password_workers", "1 to 64".into()));
        }
        if self.password_queue == 0 {
            return Err(("password_queue", "at least 1".into()));
        }
        if self.login_burst == 0 || self.login_interval_ms == 0 {
            return Err(("login_burst", "login_burst and login_interval_ms must be at least 1".into()));
        }
        if self.dns.ntm_domains.is_empty() && self.dns.static_dcs.is_empty() {
            return Err(("dns", "list the NTM domains (with nameservers) or static_dcs to find nodes' DCs".into()));
        }
        Ok(())
    }
}

/// `ntm-rs`'s configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RsFile {
    /// Name, listen addresses, TLS, status, logs.
    #[serde(flatten)]
    pub common: Common,
    /// The addresses nodes send to, as they reach us (one per family); default: the
    /// `listen` addresses that are not wildcards.
    #[serde(default)]
    pub relay_addrs: Vec<SocketAddr>,
    /// Most relay sessions (default 10000).
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// Idle time that ends a session, seconds (default 90).
    #[serde(default = "default_session_idle")]
    pub session_idle_secs: u64,
    /// Most packets per second one session relays, both directions together (default
    /// 500000: about 5.6 Gbit/s of full-sized packets).
    #[serde(default = "default_session_pps")]
    pub max_session_pps: u32,
    /// Relay workers: threads that each read and send datagrams on their own socket of
    /// the listen port (SO_REUSEPORT), a session's packets always to the same one; a
    /// number from 1 to 64, or "auto" for one per CPU (default 1).
    #[serde(default)]
    pub workers: Workers,
    /// Be a gateway to ordinary hosts (absent: Gateway Directions are refused).
    #[serde(default)]
    pub gateway: Option<RsGateway>,
}

/// An RS's `gateway`: the TUN device its boxes' packets to ordinary hosts go out by,
/// and the limits. The kernel forwards them and must masquerade `internal` (see
/// docs/servers.md for the nftables rule and the forwarding setting).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RsGateway {
    /// The TUN device's name (default "ntmgw0").
    #[serde(default = "default_gateway_tun")]
    pub tun: String,
    /// The internal IPv4 prefix: the TUN device takes its first address, each (box,
    /// ordinary host) pair one of the others.
    pub internal: Prefix<Ipv4Addr>,
    /// Most gateway sessions (default 1024).
    #[serde(default = "default_gateway_sessions")]
    pub max_sessions: usize,
    /// Most gateway sessions of one box (default 16).
    #[serde(default = "default_gateway_hosts_per_box")]
    pub max_hosts_per_box: usize,
    /// Most flows (protocol and ports) of one session (default 256).
    #[serde(default = "default_gateway_flows")]
    pub max_flows_per_session: usize,
    /// Idle time that ends a gateway session, seconds (default 300).
    #[serde(default = "default_gateway_idle")]
    pub idle_secs: u64,
    /// Idle time after which a UDP or ICMP flow, or a TCP connection that ended, no
    /// longer counts, seconds (default 60).
    #[serde(default = "default_gateway_flow_idle")]
    pub flow_idle_secs: u64,
}

fn default_gateway_flow_idle() -> u64 {
    60
}

fn default_gateway_tun() -> String {
    "ntmgw0".into()
}

fn default_gateway_sessions() -> usize {
    1024
}

fn default_gateway_hosts_per_box() -> usize {
    16
}

fn default_gateway_flows() -> usize {
    256
}

fn default_gateway_idle() -> u64 {
    300
}

/// The RS's `workers`: a count, or one per CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workers {
    /// This many.
    Count(u64),
    /// One per CPU the process may run on (at most [`Workers::MAX`]).
    Auto,
}

impl Default for Workers {
    fn default() -> Self {
        Workers::Count(1)
    }
}

impl Workers {
    /// The most workers (a session records its workers in a 64-bit set).
    pub const MAX: usize = 64;

    /// How many threads to run.
    pub fn count(self) -> usize {
        match self {
            Workers::Count(n) => usize::try_from(n).unwrap_or(Self::MAX).clamp(1, Self::MAX),
            Workers::Auto => std::thread::available_parallelism().map_or(1, usize::from).min(Self::MAX),
        }
    }
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Workers;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number of workers or \"auto\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Workers, E> {
                Ok(Workers::Count(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Workers, E> {
                u64::try_from(v).map(Workers::Count).map_err(|_| E::custom("1 to 64, or \"auto\""))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Workers, E> {
                match v {
                    "auto" => Ok(Workers::Auto),
                    _ => Err(E::custom(format!("\"{v}\": 1 to 64, or \"auto\""))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

fn default_max_sessions() -> usize {
    10_000
}

fn default_session_idle() -> u64 {
    90
}

fn default_session_pps() -> u32 {
    500_000
}

impl RsFile {
    /// The advertised relay addresses.
    pub fn advertised(&self) -> Vec<SocketAddr> {
        if !self.relay_addrs.is_empty() {
            return self.relay_addrs.clone();
        }
        self.common.listen.iter().filter(|a| !a.ip().is_unspecified()).copied().collect()
    }
}

impl Validate for RsFile {
    const FIELDS: &'static [&'static str] =
        &["relay_addrs", "max_sessions", "session_idle_secs", "max_session_pps", "workers", "gateway"];

    fn validate(&self) -> Result<(), (&'static str, String)> {
        self.common.check()?;
        self.common.check_udp()?;
        let adv = self.advertised();
        if adv.is_empty() {
            return Err(("relay_addrs", "the listen addresses are wildcards: say where nodes reach the relay".into()));
        }
        if adv.len() > 4 {
            return Err(("relay_addrs", "at most four".into()));
        }
        if adv.iter().any(|a| a.ip().is_unspecified() || a.port() == 0) {
            return Err(("relay_addrs", "need concrete addresses and ports".into()));
        }
        if self.max_sessions == 0 || self.session_idle_secs == 0 || self.max_session_pps == 0 {
            return Err(("max_sessions", "limits must be at least 1".into()));
        }
        if let Workers::Count(n) = self.workers {
            if !(1..=Workers::MAX as u64).contains(&n) {
                return Err(("workers", format!("{n}: 1 to {}, or \"auto\"", Workers::MAX)));
            }
        }
        if let Some(g) = &self.gateway {
            if g.tun.is_empty() || g.tun.len() > 15 {
                return Err(("gateway.tun", "a device name of 1 to 15 characters".into()));
            }
            if g.internal.len > 30 {
                return Err(("gateway.internal", "an IPv4 prefix of /30 or wider".into()));
            }
            if has_host_bits(&g.internal) {
                return Err(("gateway.internal", format!("{}/{} has host bits set", g.internal.addr, g.internal.len)));
            }
            if g.max_sessions == 0
                || g.max_hosts_per_box == 0
                || g.max_flows_per_session == 0
                || g.idle_secs == 0
                || g.flow_idle_secs == 0
            {
                return Err(("gateway", "limits must be at least 1".into()));
            }
        }
        Ok(())
    }
}

/// `ntm-ns`'s configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NsFile {
    /// Name, listen addresses (UDP and TLS, for DCs), TLS, status, logs.
    #[serde(flatten)]
    pub common: Common,
    /// TCP addresses nodes connect to.
    pub node_listen: Vec<SocketAddr>,
    /// Keepalive interval asked of nodes, seconds (default 3600).
    #[serde(default = "default_ns_keepalive")]
    pub keepalive_interval_secs: u64,
    /// Most nodes (connections) held (default 200000).
    #[serde(default = "default_ns_nodes")]
    pub max_nodes: usize,
}

fn default_ns_keepalive() -> u64 {
    3600
}

fn default_ns_nodes() -> usize {
    200_000
}

impl Validate for NsFile {
    const FIELDS: &'static [&'static str] = &["node_listen", "keepalive_interval_secs", "max_nodes"];

    fn validate(&self) -> Result<(), (&'static str, String)> {
        self.common.check()?;
        self.common.check_udp()?;
        if self.node_listen.is_empty() {
            return Err(("node_listen", "at least one address".into()));
        }
        if self.keepalive_interval_secs < 10 {
            return Err(("keepalive_interval_secs", "at least 10".into()));
        }
        if self.max_nodes == 0 {
            return Err(("max_nodes", "must be at least 1".into()));
        }
        Ok(())
    }
}

/// Seconds as a duration.
pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// True if `addr` can be bound here: a wildcard, or an address of this host (checked by
/// binding when the daemon starts; this only catches obvious mistakes).
pub fn plausible_listen(addr: &SocketAddr) -> bool {
    !matches!(addr.ip(), IpAddr::V4(v) if v.is_broadcast() || v.is_multicast()) && !addr.ip().is_multicast()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DC: &str = r#"{
        "name": "dc.zone-a.example", "listen": ["127.0.0.1:4460"],
        "tls": {"ca": "ca.pem", "cert": "dc.pem", "key": "dc.key"},
        "zones": ["zone-a.example"], "virtual_ipv4": "198.18.0.0/16",
        "virtual_ipv6": "2001:db8:ffff::/96", "state": "dc.db"
    }"#;

    const AS: &str = r#"{"name": "as.example", "listen": ["192.0.2.1:4443"],
        "tls": {"ca": "a", "cert": "b", "key": "c"}, "accounts": "a.db",
        "dns": {"static_dcs": [{"zone": "z.example", "dc": "dc.z.example", "addrs": ["192.0.2.2:4460"]}]}}"#;
    const RS: &str =
        r#"{"name": "rs.example", "listen": ["192.0.2.30:4460"], "tls": {"ca": "a", "cert": "b", "key": "c"}}"#;
    const NS: &str = r#"{"name": "ns.example", "listen": ["192.0.2.40:4460"], "node_listen": ["192.0.2.40:4461"],
        "tls": {"ca": "a", "cert": "b", "key": "c"}}"#;

    /// For every daemon's file: a misspelt required field is named as the unknown field
    /// it is, with the known ones; a missing one as missing; nested ones with their path.
    fn unknown_and_missing_fields_are_named<T: DeserializeOwned + Validate + std::fmt::Debug>(
        json: &str,
        required: &str,
    ) {
        assert!(parse::<T>(json).is_ok(), "{json}");
        let misspelt = json.replacen(&format!("\"{required}\""), "\"x_misspelt\"", 1);
        let err = parse::<T>(&misspelt).unwrap_err();
        assert!(err.starts_with("field \"x_misspelt\": unknown field (expected one of "), "{err}");
        assert!(err.contains(required) && err.contains("log_target"), "{err}");
        let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
        v.as_object_mut().unwrap().remove(required);
        assert_eq!(parse::<T>(&v.to_string()).unwrap_err(), format!("field \"{required}\": missing"));
        let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
        v["tls"].as_object_mut().unwrap().remove("key");
        assert_eq!(parse::<T>(&v.to_string()).unwrap_err(), "field \"tls.key\": missing");
        v["tls"]["kye"] = "c".into();
        let err = parse::<T>(&v.to_string()).unwrap_err();
        assert!(err.starts_with("field \"tls.kye\": unknown field (expected one of ca, cert, key)"), "{err}");
        let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
        v["log_target"] = "file".into();
        let err = parse::<T>(&v.to_string()).unwrap_err();
        assert!(err.starts_with("field \"log_target\": unknown variant `file`"), "{err}");
        // Every listed field is one serde knows: a wrong value is a wrong value, not unknown.
        for f in common_fields().iter().map(String::as_str).chain(T::FIELDS.iter().copied()) {
            let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
            v[f] = true.into();
            let err = parse::<T>(&v.to_string()).unwrap_err();
            assert!(err.starts_with(&format!("field \"{f}")) && !err.contains("unknown field"), "{f}: {err}");
        }
    }

    #[test]
    fn every_daemon_names_unknown_and_missing_fields() {
        unknown_and_missing_fields_are_named::<DcFile>(DC, "zones");
        unknown_and_missing_fields_are_named::<DcFile>(DC, "virtual_ipv4");
        unknown_and_missing_fields_are_named::<AsFile>(AS, "accounts");
        unknown_and_missing_fields_are_named::<RsFile>(RS, "listen");
        unknown_and_missing_fields_are_named::<NsFile>(NS, "node_listen");
        unknown_and_missing_fields_are_named::<NsFile>(NS, "name");
        let mut v: serde_json::Value = serde_json::from_str(DC).unwrap();
        v["dns"] = serde_json::json!({"dc_port": "x"});
        let err = parse::<DcFile>(&v.to_string()).unwrap_err();
        assert!(err.starts_with("field \"dns.dc_port\": invalid type"), "{err}");
        assert!(parse::<DcFile>("[1]").unwrap_err().contains("not a JSON object"));
    }

    #[test]
    fn common_fields_are_serdes() {
        let f = common_fields();
        for name in ["name", "listen", "tls", "log_level", "log_target", "syslog_socket", "max_buffered_bytes"] {
            assert!(f.iter().any(|x| x == name), "{name} in {f:?}");
        }
    }

    #[test]
    fn the_example_files_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../board/default");
        load::<AsFile>(&dir.join("as.json")).unwrap();
        load::<DcFile>(&dir.join("dc.json")).unwrap();
        load::<RsFile>(&dir.join("rs.json")).unwrap();
        load::<NsFile>(&dir.join("ns.json")).unwrap();
    }

    #[test]
    fn logs_go_to_stderr_unless_syslog_is_asked_for() {
        let c: RsFile = parse(RS).unwrap();
        assert_eq!((c.common.log_target, c.common.syslog_socket.as_path()), (LogTarget::Stderr, Path::new("/dev/log")));
        let mut v: serde_json::Value = serde_json::from_str(RS).unwrap();
        v["log_target"] = "syslog".into();
        v["syslog_socket"] = "/tmp/log.sock".into();
        let c: RsFile = parse(&v.to_string()).unwrap();
        assert_eq!(
            (c.common.log_target, c.common.syslog_socket.as_path()),
            (LogTarget::Syslog, Path::new("/tmp/log.sock"))
        );
    }

    #[test]
    fn the_rs_workers_are_a_count_from_1_to_64_or_auto() {
        let with = |w: serde_json::Value| {
            let mut v: serde_json::Value = serde_json::from_str(RS).unwrap();
            v["workers"] = w;
            parse::<RsFile>(&v.to_string())
        };
        assert_eq!(parse::<RsFile>(RS).unwrap().workers.count(), 1);
        assert_eq!(with(2.into()).unwrap().workers, Workers::Count(2));
        assert_eq!(with(64.into()).unwrap().workers.count(), 64);
        let auto = with("auto".into()).unwrap().workers;
        assert_eq!(auto, Workers::Auto);
        assert!((1..=Workers::MAX).contains(&auto.count()));
        assert_eq!(with(0.into()).unwrap_err(), "field \"workers\": 0: 1 to 64, or \"auto\"");
        assert_eq!(with(65.into()).unwrap_err(), "field \"workers\": 65: 1 to 64, or \"auto\"");
        let err = with((-1).into()).unwrap_err();
        assert!(err.starts_with("field \"workers\": 1 to 64, or \"auto\""), "{err}");
        let err = with("many".into()).unwrap_err();
        assert!(err.starts_with("field \"workers\": \"many\": 1 to 64, or \"auto\""), "{err}");
    }

    #[test]
    fn a_minimal_dc_file_parses_with_defaults() {
        let c: DcFile = parse(DC).unwrap();
        assert_eq!(c.keepalive_interval_secs, 20);
        assert_eq!(c.virtual_ipv4, Prefix { addr: "198.18.0.0".parse().unwrap(), len: 16 });
        assert_eq!(c.dns.dc_port, 4460);
        assert_eq!(c.common.log_level, LogLevel::Info);
    }

    #[test]
    fn each_required_dc_field_missing_is_named() {
        let full: serde_json::Value = serde_json::from_str(DC).unwrap();
        for field in ["name", "listen", "tls", "zones", "virtual_ipv4", "virtual_ipv6", "state"] {
            let mut v = full.clone();
            v.as_object_mut().unwrap().remove(field);
            let err = parse::<DcFile>(&v.to_string()).unwrap_err();
            assert!(err.contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn bad_values_are_refused_with_the_field_named() {
        let full: serde_json::Value = serde_json::from_str(DC).unwrap();
        let cases = [
            ("zones", serde_json::json!([]), "zones"),
            ("virtual_ipv4", serde_json::json!("198.18.0.0"), "address/length"),
            ("virtual_ipv4", serde_json::json!("2001:db8::/64"), "not an address"),
            ("virtual_ipv6", serde_json::json!("2001:db8::/129"), "over 128"),
            ("keepalive_interval_secs", serde_json::json!(0), "keepalive_interval_secs"),
            ("name", serde_json::json!("not a name!"), "invalid name"),
            ("surprise", serde_json::json!(1), "unknown field"),
        ];
        for (field, value, expect) in cases {
            let mut v = full.clone();
            v.as_object_mut().unwrap().insert(field.into(), value);
            let err = parse::<DcFile>(&v.to_string()).map(|_| ()).unwrap_err();
            assert!(err.contains(expect), "{field}: {err}");
        }
        assert!(parse::<DcFile>("{").unwrap_err().starts_with("not valid JSON"));
    }

    #[test]
    fn the_mapping_port_is_the_listen_port_plus_four_unless_given() {
        let dc = |extra: serde_json::Value| {
            let mut v: serde_json::Value = serde_json::from_str(DC).unwrap();
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            parse::<DcFile>(&v.to_string())
        };
        let port = |c: Result<DcFile, String>| c.unwrap().mapping_port();
        assert_eq!(port(dc(serde_json::json!({"listen": ["192.0.2.21:4460"]}))), 4464);
        assert_eq!(port(dc(serde_json::json!({"listen": ["192.0.2.21:4460"], "mapping_port": 5000}))), 5000);
        assert_eq!(port(dc(serde_json::json!({"listen": ["192.0.2.21:4460"], "mapping_port": 0}))), 0);
        assert_eq!(port(dc(serde_json::json!({"listen": ["127.0.0.1:0"]}))), 0);
        let err = dc(serde_json::json!({"listen": ["192.0.2.21:4460"], "mapping_port": 4460})).unwrap_err();
        assert!(err.starts_with("field \"mapping_port\": 4460 is a listen port"), "{err}");
        let err = dc(serde_json::json!({"listen": ["192.0.2.21:65533"]})).unwrap_err();
        assert!(err.starts_with("field \"mapping_port\": no default (the listen port + 4) above 65535"), "{err}");
        assert_eq!(port(dc(serde_json::json!({"listen": ["192.0.2.21:65533"], "mapping_port": 9}))), 9);
    }

    #[test]
    fn udp_daemons_listen_on_one_address_per_family() {
        let mut v: serde_json::Value = serde_json::from_str(DC).unwrap();
        v["listen"] = serde_json::json!(["192.0.2.1:4460", "[2001:db8::1]:4460"]);
        assert!(parse::<DcFile>(&v.to_string()).is_ok());
        v["listen"] = serde_json::json!(["192.0.2.1:4460", "198.51.100.1:4460"]);
        assert!(parse::<DcFile>(&v.to_string()).unwrap_err().contains("\"listen\""));
        // The AS serves TLS only: any number of addresses.
        let as_file = AS.replace(r#"["192.0.2.1:4443"]"#, r#"["192.0.2.1:4443", "198.51.100.1:4443"]"#);
        assert_eq!(parse::<AsFile>(&as_file).unwrap().common.listen.len(), 2);
    }

    #[test]
    fn an_ns_node_address_is_one_address_or_a_list() {
        let mut v: serde_json::Value = serde_json::from_str(DC).unwrap();
        let ns = |node_addr: serde_json::Value| serde_json::json!([{"name": "ns1.example", "addr": "192.0.2.40:4462", "node_addr": node_addr}]);
        v["notification_servers"] = ns(serde_json::json!("192.0.2.40:4463"));
        let c = parse::<DcFile>(&v.to_string()).unwrap();
        assert_eq!(c.notification_servers[0].node_addr, vec!["192.0.2.40:4463".parse().unwrap()]);
        v["notification_servers"] = ns(serde_json::json!(["192.0.2.40:4463", "[2001:db8::40]:4463"]));
        assert_eq!(parse::<DcFile>(&v.to_string()).unwrap().notification_servers[0].node_addr.len(), 2);
        for bad in [serde_json::json!([]), serde_json::json!("ns1.example:4463"), serde_json::json!(4463)] {
            v["notification_servers"] = ns(bad.clone());
            let err = parse::<DcFile>(&v.to_string()).map(|_| ()).unwrap_err();
            assert!(err.contains("node_addr") || err.contains("address with port"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_v4_mapped_nameserver_is_refused() {
        let mut v: serde_json::Value = serde_json::from_str(DC).unwrap();
        v["dns"] = serde_json::json!({"nameservers": ["[::ffff:192.0.2.53]:53"], "ntm_domains": ["zone-a.example"]});
        assert!(parse::<DcFile>(&v.to_string()).unwrap_err().contains("dns.nameservers"));
        v["dns"]["nameservers"] = serde_json::json!(["192.0.2.53:53", "[2001:db8::53]:53"]);
        assert!(parse::<DcFile>(&v.to_string()).is_ok());
    }

    #[test]
    fn relay_needs_concrete_advertised_addresses() {
        let rs = r#"{"name": "rs.example", "listen": ["0.0.0.0:4460"], "tls": {"ca": "a", "cert": "b", "key": "c"}}"#;
        assert!(parse::<RsFile>(rs).unwrap_err().contains("relay_addrs"));
        let rs =
            r#"{"name": "rs.example", "listen": ["192.0.2.30:4460"], "tls": {"ca": "a", "cert": "b", "key": "c"}}"#;
        assert_eq!(parse::<RsFile>(rs).unwrap().advertised(), vec!["192.0.2.30:4460".parse().unwrap()]);
    }

    #[test]
    fn gateway_settings_are_checked_with_the_field_named() {
        let mut v: serde_json::Value = serde_json::from_str(DC).unwrap();
        v["relays"] = serde_json::json!([{"name": "rs1.example", "addr": "192.0.2.30:4461"}]);
        let ok =
            serde_json::json!({"names": ["plain.example"], "prefixes": ["198.51.100.0/24"], "pool": "198.19.100.0/24"});
        v["gateway"] = ok.clone();
        let c = parse::<DcFile>(&v.to_string()).unwrap();
        assert_eq!(c.gateway.unwrap().names(), Ok((false, vec![Fqdn::new("plain.example").unwrap()])));
        v["gateway"]["names"] = serde_json::json!(["*"]);
        assert_eq!(parse::<DcFile>(&v.to_string()).unwrap().gateway.unwrap().names(), Ok((true, Vec::new())));
        for (field, bad) in [
            ("gateway.names", serde_json::json!({"names": ["*", "plain.example"], "pool": "198.19.100.0/24"})),
            ("gateway.names", serde_json::json!({"names": [], "pool": "198.19.100.0/24"})),
            ("gateway.names", serde_json::json!({"names": ["bad name!"], "pool": "198.19.100.0/24"})),
            ("gateway.pool", serde_json::json!({"names": ["*"], "pool": "198.18.7.0/24"})),
            ("gateway.pool", serde_json::json!({"names": ["*"], "pool": "198.19.100.1/32"})),
            ("gateway.pool", serde_json::json!({"names": ["*"], "pool": "198.19.100.7/24"})),
            (
                "gateway.prefixes",
                serde_json::json!({"names": ["*"], "prefixes": ["198.51.100.7/24"], "pool": "198.19.100.0/24"}),
            ),
            ("gateway.rs", serde_json::json!({"names": ["*"], "rs": ["rs9.example"], "pool": "198.19.100.0/24"})),
        ] {
            v["gateway"] = bad.clone();
            let err = parse::<DcFile>(&v.to_string()).map(|_| ()).unwrap_err();
            assert!(err.contains(field), "{bad}: {err}");
        }
        let mut rs: serde_json::Value = serde_json::from_str(RS).unwrap();
        rs["gateway"] = serde_json::json!({"internal": "100.100.0.0/24"});
        let g = parse::<RsFile>(&rs.to_string()).unwrap().gateway.unwrap();
        assert_eq!((g.tun.as_str(), g.max_hosts_per_box, g.idle_secs), ("ntmgw0", 16, 300));
        for (field, bad) in [
            ("gateway.internal", serde_json::json!({"internal": "100.100.0.0/31"})),
            ("gateway.internal", serde_json::json!({"internal": "100.100.0.7/24"})),
            ("gateway", serde_json::json!({"internal": "100.100.0.0/24", "flow_idle_secs": 0})),
            ("gateway.tun", serde_json::json!({"internal": "100.100.0.0/24", "tun": "a-name-far-too-long"})),
            ("gateway", serde_json::json!({"internal": "100.100.0.0/24", "max_flows_per_session": 0})),
        ] {
            rs["gateway"] = bad.clone();
            let err = parse::<RsFile>(&rs.to_string()).map(|_| ()).unwrap_err();
            assert!(err.contains(field), "{bad}: {err}");
        }
    }
}
