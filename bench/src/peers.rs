//! The peers ntmobile is measured against: wireguard-go, boringtun and fastd, started in
//! the same two boxes over the same links.

use crate::util::{e2s, run_in, text, Res};
use ntm_lab::{find_tool, Lab, Ns};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    WireguardGo,
    Boringtun1,
    BoringtunDefault,
    Fastd,
}

impl Peer {
    pub const ALL: [Peer; 4] = [Peer::WireguardGo, Peer::Boringtun1, Peer::BoringtunDefault, Peer::Fastd];

    pub fn name(self) -> &'static str {
        match self {
            Peer::WireguardGo => "wireguard-go",
            Peer::Boringtun1 => "boringtun, 1 thread",
            Peer::BoringtunDefault => "boringtun, default threads (4)",
            Peer::Fastd => "fastd (salsa2012+umac)",
        }
    }

    /// Interface name prefix, inner /24 and UDP port.
    pub fn plan(self) -> (&'static str, &'static str, u16) {
        match self {
            Peer::WireguardGo => ("wgo", "198.19.201", 51821),
            Peer::Boringtun1 => ("bt1", "198.19.202", 51822),
            Peer::BoringtunDefault => ("btd", "198.19.203", 51823),
            Peer::Fastd => ("fsd", "198.19.204", 51824),
        }
    }

    pub fn missing(self) -> Option<String> {
        let need: &[&str] = match self {
            Peer::WireguardGo => &["wireguard-go", "wg"],
            Peer::Boringtun1 | Peer::BoringtunDefault => &["boringtun-cli", "wg"],
            Peer::Fastd => &["fastd"],
        };
        need.iter().find(|t| !have_tool(t)).map(|t| format!("skipped: `{t}` not installed"))
    }
}

/// `have`, also looking in ~/.cargo/bin (where `cargo install` puts boringtun-cli).
pub fn have_tool(t: &str) -> bool {
    tool_path(t).is_some()
}

pub fn tool_path(t: &str) -> Option<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    let p = home.join(".cargo/bin").join(t);
    if p.is_file() {
        return Some(p);
    }
    find_tool(t)
}

pub fn tool(t: &str) -> String {
    tool_path(t).map(|p| p.to_string_lossy().into_owned()).unwrap_or_else(|| t.to_string())
}

/// A running pair of peer daemons.
pub struct PeerUp {
    pub procs: Vec<usize>,
    pub ifaces: [String; 2],
    /// The inner address of box b's end.
    pub target: String,
}

pub fn wg_keys(dir: &Path, tag: &str) -> Res<(PathBuf, String)> {
    let private = Command::new(tool("wg")).arg("genkey").output().map_err(e2s)?;
    let key = String::from_utf8_lossy(&private.stdout).trim().to_string();
    let path = dir.join(format!("{tag}.key"));
    std::fs::write(&path, format!("{key}\n")).map_err(e2s)?;
    let mut child =
        Command::new(tool("wg")).arg("pubkey").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().map_err(e2s)?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(key.as_bytes()).map_err(e2s)?;
    }
    let public = child.wait_with_output().map_err(e2s)?;
    Ok((path, String::from_utf8_lossy(&public.stdout).trim().to_string()))
}

fn wait_iface(lab: &Lab, ns: &Ns, iface: &str, secs: u64) -> bool {
    lab.wait_for(secs, || lab.try_exec(ns, &["ip", "link", "show", iface]).is_ok_and(|o| o.status.success()))
}

/// Starts `peer` in box a and box b (`ends`: their namespaces and public addresses).
pub fn peer_up(lab: &mut Lab, ends: &[(Ns, &str); 2], peer: Peer) -> Res<PeerUp> {
    let (pfx, inner, port) = peer.plan();
    let suffix = std::process::id() % 100_000;
    let ifaces = [format!("{pfx}{suffix}a"), format!("{pfx}{suffix}b")];
    let inner_of = |s: usize| format!("{inner}.{}", s + 1);
    let dir = lab.dir().to_path_buf();
    let mut procs = Vec::new();
    if peer == Peer::Fastd {
        let mut keys = Vec::new();
        for _ in 0..2 {
            let out = Command::new("fastd").arg("--generate-key").output().map_err(e2s)?;
            let t = text(&out);
            let get = |k: &str| t.lines().find_map(|l| l.strip_prefix(k)).map(|v| v.trim().to_string());
            keys.push((get("Secret:").ok_or("fastd key")?, get("Public:").ok_or("fastd key")?));
        }
        for s in 0..2 {
            let conf = format!(
                "log level info;\ninterface \"{}\";\nmode tun;\nmethod \"salsa2012+umac\";\nbind {}:{port};\n\
                 secret \"{}\";\nmtu 1420;\npeer \"other\" {{\n  key \"{}\";\n  remote {}:{port};\n}}\n",
                ifaces[s],
                ends[s].1,
                keys[s].0,
                keys[1 - s].1,
                ends[1 - s].1
            );
            let path = dir.join(format!("fastd-{s}.conf"));
            std::fs::write(&path, conf).map_err(e2s)?;
            let p = lab
                .spawn(&ends[s].0, &format!("fastd-{s}"), &["fastd", "--config", &path.to_string_lossy()], &[])
                .map_err(e2s)?;
            procs.push(p);
            // One end at a time: a first handshake sent before the other end listens is
            // retried only seconds later.
            if !wait_iface(lab, &ends[s].0, &ifaces[s], 10) {
                return Err(format!("fastd: interface {} did not appear: {}", ifaces[s], lab.proc(p).log_text()));
            }
        }
    } else {
        let keys = ifaces.iter().map(|i| wg_keys(&dir, i)).collect::<Res<Vec<_>>>()?;
        for s in 0..2 {
            let (ns, iface) = (&ends[s].0, &ifaces[s]);
            let p = match peer {
                Peer::WireguardGo => lab.spawn(
                    ns,
                    &format!("wireguard-go-{s}"),
                    &["wireguard-go", "-f", iface],
                    &[("WG_PROCESS_FOREGROUND", "1")],
                ),
                _ => {
                    let log_file = dir.join(format!("boringtun-{iface}.log"));
                    let mut cmd =
                        vec![tool("boringtun-cli"), "--foreground".into(), "--disable-drop-privileges".into()];
                    if peer == Peer::Boringtun1 {
                        cmd.extend(["--threads".into(), "1".into()]);
                    }
                    cmd.extend(["-l".into(), log_file.to_string_lossy().into_owned(), iface.clone()]);
                    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
                    lab.spawn(ns, &format!("boringtun-{s}"), &cmd, &[("WG_SUDO", "1")])
                }
            }
            .map_err(e2s)?;
            procs.push(p);
            let sock = PathBuf::from(format!("/var/run/wireguard/{iface}.sock"));
            if !lab.wait_for(10, || sock.exists()) {
                return Err(format!("{}: no control socket for {iface}: {}", peer.name(), lab.proc(p).log_text()));
            }
        }
        for s in 0..2 {
            let peer_inner = format!("{}/32", inner_of(1 - s));
            let endpoint = format!("{}:{port}", ends[1 - s].1);
            run_in(
                lab,
                &ends[s].0,
                &[
                    &tool("wg"),
                    "set",
                    &ifaces[s],
                    "private-key",
                    &keys[s].0.to_string_lossy(),
                    "listen-port",
                    &port.to_string(),
                    "peer",
                    &keys[1 - s].1,
                    "allowed-ips",
                    &peer_inner,
                    "endpoint",
                    &endpoint,
                ],
            )?;
        }
    }
    for s in 0..2 {
        if !wait_iface(lab, &ends[s].0, &ifaces[s], 10) {
            return Err(format!(
                "{}: interface {} did not appear: {}",
                peer.name(),
                ifaces[s],
                lab.proc(procs[s]).log_text()
            ));
        }
        run_in(lab, &ends[s].0, &["ip", "addr", "add", &format!("{}/24", inner_of(s)), "dev", &ifaces[s]])?;
        run_in(lab, &ends[s].0, &["ip", "link", "set", &ifaces[s], "mtu", "1420", "up"])?;
    }
    Ok(PeerUp { procs, target: inner_of(1), ifaces })
}

pub fn peer_down(lab: &mut Lab, ends: &[(Ns, &str); 2], up: &PeerUp) {
    for p in &up.procs {
        lab.proc(*p).stop();
    }
    for ((ns, _), iface) in ends.iter().zip(&up.ifaces) {
        let _ = lab.try_exec(ns, &["ip", "link", "del", iface]);
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{iface}.sock"));
    }
}
