//! The box serves its LAN (`lan` in the configuration, docs/agent.md "LAN").
//!
//! Devices behind the box (sensors, cameras, PCs) cannot run an agent; the box carries
//! their traffic. Everything here is set up once, in [`Lan::start`], while the agent still
//! holds root (before `privs.rs` drops it):
//!
//! - **forwarding**: IPv4 forwarding is switched on for each LAN interface and the TUN
//!   device (`/proc/sys/net/ipv4/conf/IF/forwarding`; the router's other interfaces are
//!   left as they are);
//! - **one nftables table of the agent's own**, `inet ntmd`, replaced atomically with
//!   `nft -f -` (so a restart never leaves two sets of rules) and deleted when the agent
//!   ends. It governs only traffic to and from the TUN device, with no drop policy, so the
//!   router's LAN <-> WAN forwarding is untouched: LAN -> tunnel accepted; tunnel -> LAN
//!   only to the announced prefixes and the answers of connections the LAN opened;
//!   anything else to or from the TUN device dropped (`firewall: false` leaves the filter
//!   out). With `masquerade`, LAN sources going into the tunnel are translated by the
//!   kernel to the box's virtual address (the TUN device's own), except sources inside an
//!   announced prefix, which peers route to this box and so keep theirs;
//! - **DNS**: with `dns`, one more stub socket on each LAN interface address (the port of
//!   `dns.listen`); only clients inside the LAN interfaces' subnets are answered, anything
//!   else is dropped and counted, so the box is no open resolver.
//!
//! The kernel does the forwarding and the translation: the agent (which runs on MIPS
//! routers) copies no LAN packet in user space.

use crate::config::AgentFile;
use crate::netlink::{AddrScope, Netlink};
use mio::net::UdpSocket;
use ntm_proto::wire::Prefix;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};

/// The agent's nftables table (family inet).
pub const TABLE: &str = "ntmd";

/// The LAN side of the box, as set up at start.
#[derive(Debug)]
pub struct Lan {
    /// The LAN interfaces' own subnets: who may use the DNS stub.
    pub subnets: Vec<Prefix>,
    /// The stub's sockets on the LAN addresses, with their address.
    pub dns: Vec<(IpAddr, UdpSocket)>,
    /// Queries from outside the LAN subnets, dropped.
    pub dns_refused: u64,
    /// The table is in place (deleted on drop).
    applied: bool,
}

impl Lan {
    /// Sets up forwarding, the table and the LAN DNS sockets; `None` without `lan`. Needs
    /// root (or CAP_NET_ADMIN and CAP_NET_BIND_SERVICE), so it runs before the drop.
    pub fn start(cfg: &AgentFile, netlink: &mut Netlink) -> Result<Option<Lan>, String> {
        let Some(lan) = &cfg.lan else { return Ok(None) };
        let announced = cfg.announced().map_err(|e| format!("lan.announce: {e}"))?;
        let mut indexes = Vec::new();
        for name in &lan.interfaces {
            let i = netlink
                .link_index(name)
                .map_err(|e| format!("lan.interfaces: {e}"))?
                .ok_or_else(|| format!("lan.interfaces: no interface \"{name}\" on this box"))?;
            indexes.push(i);
        }
        let addrs = netlink.addresses().map_err(|e| format!("lan.interfaces: addresses: {e}"))?;
        let own: Vec<(IpAddr, u8)> = addrs
            .iter()
            .filter(|a| indexes.contains(&a.ifindex) && a.scope == AddrScope::Universe)
            .map(|a| (a.addr, a.prefix_len))
            .collect();
        let mut subnets: Vec<Prefix> = own.iter().filter_map(|&(a, l)| Prefix::holding(a, l)).collect();
        subnets.dedup();
        for name in lan.interfaces.iter().chain(std::iter::once(&cfg.tun.name)) {
            let path = format!("/proc/sys/net/ipv4/conf/{name}/forwarding");
            std::fs::write(&path, "1").map_err(|e| format!("lan: {path}: {e}"))?;
        }
        let ruleset = ruleset(cfg, &announced);
        nft(&ruleset).map_err(|e| format!("lan: nftables table inet {TABLE}: {e}"))?;
        let list = |v: &[Prefix]| v.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(" ");
        log::info!(
            "LAN {:?} served: subnets {}, announced {}",
            lan.interfaces.as_slice(),
            list(&subnets),
            if announced.is_empty() { "none".to_string() } else { list(&announced) }
        );
        let mut me = Lan { subnets, dns: Vec::new(), dns_refused: 0, applied: true };
        if lan.dns {
            let port = cfg.dns.listen.port();
            for &(a, _) in &own {
                let at = SocketAddr::new(a, port);
                let s = UdpSocket::bind(at).map_err(|e| format!("lan.dns: DNS stub {at}: {e}"))?;
                me.dns.push((a, s));
            }
        }
        Ok(Some(me))
    }

    /// A DNS client the LAN stub may answer.
    pub fn may_ask(&self, from: SocketAddr) -> bool {
        self.subnets.iter().any(|p| p.contains(from.ip()))
    }

    /// The LAN socket to answer `to` from: the one whose address shares its subnet.
    pub fn socket_for(&self, to: SocketAddr) -> Option<&UdpSocket> {
        let p = self.subnets.iter().find(|p| p.contains(to.ip()))?;
        self.dns.iter().find(|(a, _)| p.contains(*a)).map(|(_, s)| s)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        if self.applied {
            match nft(&format!("table inet {TABLE}\ndelete table inet {TABLE}\n")) {
                Ok(()) => log::info!("nftables table inet {TABLE} deleted"),
                Err(e) => log::warn!("nftables table inet {TABLE} left in place: {e}"),
            }
        }
    }
}

/// The table's text for `nft -f -`: created empty if absent, then deleted and written
/// anew in the same transaction (an atomic replacement).
pub fn ruleset(cfg: &AgentFile, announced: &[Prefix]) -> String {
    let Some(lan) = &cfg.lan else { return String::new() };
    let tun = cfg.tun.name.as_str();
    let lans: Vec<String> = lan.interfaces.iter().map(|i| format!("\"{i}\"")).collect();
    let lans = lans.join(", ");
    let set = |v6: bool| -> Option<String> {
        let v: Vec<String> = announced.iter().filter(|p| p.addr().is_ipv6() == v6).map(|p| p.to_string()).collect();
        (!v.is_empty()).then(|| v.join(", "))
    };
    let mut t = String::new();
    let _ = writeln!(t, "table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{");
    if lan.firewall {
        let _ = writeln!(t, "  chain forward {{\n    type filter hook forward priority filter; policy accept;");
        let _ = writeln!(t, "    iifname {{ {lans} }} oifname \"{tun}\" accept");
        let _ = writeln!(t, "    iifname \"{tun}\" ct state established,related accept");
        for (v6, fam) in [(false, "ip"), (true, "ip6")] {
            if let Some(s) = set(v6) {
                let _ = writeln!(t, "    iifname \"{tun}\" oifname {{ {lans} }} {fam} daddr {{ {s} }} accept");
            }
        }
        let _ = writeln!(t, "    iifname \"{tun}\" counter drop\n    oifname \"{tun}\" counter drop\n  }}");
    }
    if lan.masquerade {
        let _ = writeln!(t, "  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;");
        for (v6, fam) in [(false, "ip"), (true, "ip6")] {
            if let Some(s) = set(v6) {
                let _ = writeln!(t, "    oifname \"{tun}\" {fam} saddr {{ {s} }} return");
            }
        }
        let _ = writeln!(t, "    iifname {{ {lans} }} oifname \"{tun}\" masquerade\n  }}");
    }
    t.push_str("}\n");
    t
}

/// Runs `nft -f -` with `script` on its standard input; nft's error output if it fails.
///
/// The child is started with posix_spawn (through nix), not `std::process::Command`,
/// whose machinery would be most of this module's size in the router builds (about
/// 10 KiB of armv7 code). After the drop of privileges the agent keeps only
/// CAP_NET_ADMIN, which an executed program keeps only as an ambient capability: the
/// agent raises it as one before the spawn (nft is the only program it ever runs), so
/// deleting the table at exit works also under `user`.
fn nft(script: &str) -> Result<(), String> {
    use nix::fcntl::OFlag;
    use nix::spawn::{posix_spawnp, PosixSpawnAttr, PosixSpawnFileActions};
    use nix::sys::wait::{waitpid, WaitStatus};
    use std::io::Read as _;
    use std::os::fd::AsRawFd as _;
    {
        use caps::{CapSet, Capability};
        if caps::has_cap(None, CapSet::Permitted, Capability::CAP_NET_ADMIN).unwrap_or(false) {
            let _ = caps::raise(None, CapSet::Inheritable, Capability::CAP_NET_ADMIN);
            let _ = caps::raise(None, CapSet::Ambient, Capability::CAP_NET_ADMIN);
        }
    }
    let err = |what: &str, e: nix::Error| format!("nft: {what}: {e}");
    // Both pipes close on exec; the child gets their other ends as its standard input
    // and outputs.
    let (in_r, in_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| err("pipe", e))?;
    let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| err("pipe", e))?;
    let mut actions = PosixSpawnFileActions::init().map_err(|e| err("spawn", e))?;
    actions.add_dup2(in_r.as_raw_fd(), 0).map_err(|e| err("spawn", e))?;
    // nft says nothing on its standard output when it succeeds: both outputs are its
    // message when it fails.
    actions.add_dup2(err_w.as_raw_fd(), 1).map_err(|e| err("spawn", e))?;
    actions.add_dup2(err_w.as_raw_fd(), 2).map_err(|e| err("spawn", e))?;
    let attr = PosixSpawnAttr::init().map_err(|e| err("spawn", e))?;
    let no_env: [&std::ffi::CStr; 0] = [];
    let pid = posix_spawnp(c"nft", &actions, &attr, &[c"nft", c"-f", c"-"], &no_env).map_err(|e| match e {
        nix::Error::ENOENT => NFT_MISSING.to_string(),
        e => err("spawn", e),
    })?;
    drop((in_r, err_w));
    // A write error (nft gone early) shows in its exit status and error output below.
    let _ = std::fs::File::from(in_w).write_all(script.as_bytes());
    let mut said = String::new();
    let _ = std::fs::File::from(err_r).take(4096).read_to_string(&mut said);
    match waitpid(pid, None) {
        Ok(WaitStatus::Exited(_, 0)) => Ok(()),
        Ok(WaitStatus::Exited(_, 127)) => Err(NFT_MISSING.to_string()),
        Ok(status) => Err(format!("nft: {} ({status:?})", said.trim())),
        Err(e) => Err(err("wait", e)),
    }
}

/// The error when the `nft` command is not there.
const NFT_MISSING: &str = "nft not found: the lan section needs nftables (the nft command)";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, tests::MIN};

    fn with_lan(lan: &str) -> Result<AgentFile, String> {
        parse(&MIN.replacen('{', &format!("{{ \"lan\": {lan},"), 1))
    }

    #[test]
    fn the_lan_section_is_checked() {
        let c = with_lan(r#"{"interfaces": ["br-lan"], "announce": ["192.168.2.0/24"]}"#).unwrap();
        let lan = c.lan.as_ref().unwrap();
        assert!(lan.masquerade && lan.dns && lan.firewall);
        assert_eq!(c.announced().unwrap()[0].to_string(), "192.168.2.0/24");
        for (bad, says) in [
            (r#"{"interfaces": []}"#, "lan.interfaces"),
            (r#"{"interfaces": ["ntm0"]}"#, "lan.interfaces"),
            (r#"{"interfaces": ["br-lan"], "announce": ["192.168.2.1/24"]}"#, "host bits"),
            (r#"{"interfaces": ["br-lan"], "announce": ["192.168.2.0/33"]}"#, "over 32"),
            (r#"{"interfaces": ["br-lan"], "announce": ["198.19.0.0/16"]}"#, "overlaps the virtual prefix"),
            (r#"{"interfaces": ["br-lan"], "announce": ["10.0.0.0/8", "10.1.0.0/16"]}"#, "overlaps 10.0.0.0/8"),
            (r#"{"interfaces": ["br-lan"], "nat": true}"#, "lan"),
        ] {
            let err = with_lan(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
        assert!(parse(MIN).unwrap().lan.is_none());
    }

    #[test]
    fn the_ruleset_governs_only_the_tun_device() {
        let c = with_lan(r#"{"interfaces": ["br-lan"], "announce": ["192.168.2.0/24"]}"#).unwrap();
        let t = ruleset(&c, &c.announced().unwrap());
        assert!(t.starts_with("table inet ntmd\ndelete table inet ntmd\n"), "{t}");
        assert!(t.contains("iifname \"ntm0\" oifname { \"br-lan\" } ip daddr { 192.168.2.0/24 } accept"), "{t}");
        assert!(t.contains("oifname \"ntm0\" ip saddr { 192.168.2.0/24 } return"), "{t}");
        assert!(t.contains("masquerade"), "{t}");
        // No drop policy: the router's own forwarding is not ours to block.
        assert!(!t.contains("policy drop"), "{t}");
        for line in t.lines().filter(|l| l.contains("drop")) {
            assert!(line.contains("\"ntm0\""), "{line}");
        }
        let c = with_lan(r#"{"interfaces": ["br-lan"], "masquerade": false, "firewall": false}"#).unwrap();
        let t = ruleset(&c, &[]);
        assert!(!t.contains("masquerade") && !t.contains("drop"), "{t}");
    }
}
