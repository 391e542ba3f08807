//! Running with as little of root as possible: every server restarted with `user` set to
//! Debian's `nobody` (in its forms "nobody", "nobody:nogroup" and numbers), and `ntmd`
//! keeping only CAP_NET_ADMIN, as `nobody` in box a and as root in box b. The credentials
//! and capability sets are read from /proc/PID/status (of every thread), and the
//! deployment must still work: logins, registrations (the agent's addresses and routes,
//! set after the drop), pings through the tunnels, SIGHUP reloads, a move of box a.
//! Needs root, NSD, dig and ping.

#![allow(clippy::print_stderr)]

use ntm_lab::deploy::{or_skip, Deployment};
use ntm_lab::tools_or_skip;
use serde_json::Value;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// No capabilities, as /proc prints a set.
const NONE: &str = "0000000000000000";
/// CAP_NET_ADMIN (12) alone.
const NET_ADMIN: &str = "0000000000001000";

/// The uid (or gid) of `name` in `/etc/passwd` (or `/etc/group`).
fn id_of(db: &str, name: &str) -> u32 {
    let text = std::fs::read_to_string(db).unwrap_or_default();
    text.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&name)).then(|| f.get(2).and_then(|n| n.parse().ok())).flatten()
        })
        .unwrap_or_else(|| panic!("{name} is not in {db} (Debian has it)"))
}

/// `Field: value` lines of a /proc status file.
fn field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The status files of every thread of `pid`.
fn threads(pid: u32) -> Vec<(PathBuf, String)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).expect("the process runs").flatten() {
        let p = e.path().join("status");
        if let Ok(text) = std::fs::read_to_string(&p) {
            v.push((p, text));
        }
    }
    assert!(!v.is_empty(), "no threads of {pid}");
    v
}

/// Every thread of `pid` runs as `uid`/`gid` (real, effective, saved, file system), with
/// exactly `caps` permitted, effective and bounding, nothing inheritable or ambient, and
/// no_new_privs.
fn assert_runs_as(what: &str, pid: u32, uid: u32, gid: u32, caps: &str) {
    for (path, s) in threads(pid) {
        let at = format!("{what}, {}", path.display());
        assert_eq!(field(&s, "Uid"), format!("{uid} {uid} {uid} {uid}"), "{at}");
        assert_eq!(field(&s, "Gid"), format!("{gid} {gid} {gid} {gid}"), "{at}");
        for set in ["CapPrm", "CapEff", "CapBnd"] {
            assert_eq!(field(&s, set), caps, "{at}: {set}");
        }
        for set in ["CapInh", "CapAmb"] {
            assert_eq!(field(&s, set), NONE, "{at}: {set}");
        }
        assert_eq!(field(&s, "NoNewPrivs"), "1", "{at}");
    }
}

fn owner(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).map(|m| m.uid()).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn read_config(d: &Deployment, label: &str) -> Value {
    let path = d.lab.dir().join(format!("{label}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).expect("server config")).expect("JSON")
}

fn server_pid(d: &mut Deployment, label: &str) -> u32 {
    let i = d.servers.iter().find(|(l, _, _)| l == label).map(|s| s.2).expect("server");
    d.lab.proc(i).pid()
}

/// Waits until the log of server `label` holds `text` `n` times.
fn wait_log(d: &mut Deployment, label: &str, text: &str, n: usize) -> bool {
    let i = d.servers.iter().find(|(l, _, _)| l == label).map(|s| s.2).expect("server");
    let log = d.lab.proc(i).log.clone();
    d.lab.wait_for(10, || std::fs::read_to_string(&log).unwrap_or_default().matches(text).count() >= n)
}

#[test]
fn servers_run_as_an_unprivileged_user_and_still_serve_and_reload() {
    let label = "privs-servers";
    if !tools_or_skip(label, &["ping", "dig"]) {
        return;
    }
    let Some(mut d) = or_skip(Deployment::start(label), label) else { return };
    let (uid, gid) = (id_of("/etc/passwd", "nobody"), id_of("/etc/group", "nogroup"));
    // Each form of the field once; the key files are given to the user (they are the
    // test's), the CA and certificates are world-readable as `ntm-ca` writes them.
    let users = [
        ("rs", "nobody".to_string()),
        ("ns", format!("{uid}:{gid}")),
        ("dc-a", "nobody:nogroup".to_string()),
        ("dc-b", format!("nobody:{gid}")),
        ("as", "nobody".to_string()),
    ];
    for (server, user) in &users {
        let mut cfg = read_config(&d, server);
        cfg["user"] = user.as_str().into();
        let key = PathBuf::from(cfg["tls"]["key"].as_str().expect("key path"));
        std::os::unix::fs::chown(&key, Some(uid), Some(gid)).expect("chown the test's key");
        let path = d.lab.dir().join(format!("{server}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
        d.restart_server(server).unwrap_or_else(|e| panic!("{server} restarts with user {user}: {e}"));
    }
    for (server, _) in &users {
        let pid = server_pid(&mut d, server);
        assert_runs_as(server, pid, uid, gid, NONE);
    }
    // The AS checks passwords on threads of its own: they dropped too (checked above with
    // every thread); its database and the DCs' are the user's now, with SQLite's files.
    let dir = d.lab.dir().to_path_buf();
    for db in ["accounts.db", "dc-a.db", "dc-b.db"] {
        for suffix in ["", "-wal", "-shm"] {
            let p = dir.join(format!("{db}{suffix}"));
            assert_eq!(owner(&p), uid, "{}", p.display());
        }
    }
    assert_eq!(owner(&dir.join("dc-a.sock")), uid, "the status socket is the user's");

    // Logins (AS database), registrations (DC databases written), the relay and the NS
    // all work as the user: both boxes register (b kept through the NS) and ping.
    let [sa, sb] = d
        .up_with(|_, i, c| {
            if i == 1 {
                c["keepalive"] = "ns".into();
            }
        })
        .expect("both boxes register with the servers running as nobody");
    assert_eq!(sb["notifications_ready"], true, "box b is kept through the NS: {sb}");
    let b4 = sb["virtual_ipv4"].as_str().unwrap().to_string();
    assert_eq!(d.dig(0, "b.zone-b.test", "A"), b4, "a's DNS hook answers b's virtual address");
    assert!(d.ping(0, &b4, 3), "a pings b's virtual address");

    // SIGHUP reads the TLS files again, as the user.
    for (server, _) in &users {
        let i = d.servers.iter().find(|(l, _, _)| l == server).map(|s| s.2).unwrap();
        d.lab.proc(i).signal(1);
        // Logged only when every file was read and used (a failure keeps the old ones).
        assert!(wait_log(&mut d, server, "reload: TLS files read again", 1), "{server} reloads its TLS files");
        assert!(d.lab.proc(i).alive(), "{server} runs on");
    }
    // New TLS connections use what was read again: box a logs in and registers anew.
    d.stop_agent(0);
    let cfg = d.agent_config(0);
    d.start_agent(0, &cfg).expect("ntmd starts again");
    let sa2 = d.wait_registered(0, 30).expect("box a logs in again after the reloads");
    assert_eq!(sa2["virtual_ipv4"], sa["virtual_ipv4"], "the DC kept a's address in its database");
    assert_eq!(d.dig(0, "b.zone-b.test", "A"), b4);
    assert!(d.ping(0, &b4, 3), "a pings b after the reloads");
}

#[test]
fn ntmd_keeps_only_cap_net_admin_as_its_user_and_as_root() {
    let label = "privs-agent";
    if !tools_or_skip(label, &["ping", "dig"]) {
        return;
    }
    let Some(mut d) = or_skip(Deployment::start(label), label) else { return };
    let (uid, gid) = (id_of("/etc/passwd", "nobody"), id_of("/etc/group", "nogroup"));
    // Box a runs as nobody, box b stays root: both keep CAP_NET_ADMIN only. Registration,
    // which puts the virtual addresses on ntm0 and the routes into it, comes after the drop.
    let [sa, sb] = d
        .up_with(|_, i, c| {
            if i == 0 {
                c["user"] = "nobody".into();
            }
        })
        .expect("both boxes register");
    let pid = |d: &mut Deployment, i: usize| {
        let p = d.boxes[i].proc.expect("started");
        d.lab.proc(p).pid()
    };
    let (pa, pb) = (pid(&mut d, 0), pid(&mut d, 1));
    assert_runs_as("ntmd in box a", pa, uid, gid, NET_ADMIN);
    assert_runs_as("ntmd in box b", pb, 0, 0, NET_ADMIN);
    assert_eq!(owner(&d.boxes[0].status), uid, "a's status socket is the user's");
    let a = d.boxes[0].ns.clone();
    let routes = d.lab.exec(&a, &["ip", "route", "show", "dev", "ntm0"]).expect("ip route");
    assert!(String::from_utf8_lossy(&routes.stdout).contains("198.18.0.0/16"), "the agent's route into ntm0");
    let routes6 = d.lab.exec(&a, &["ip", "-6", "route", "show", "dev", "ntm0"]).expect("ip route");
    assert!(String::from_utf8_lossy(&routes6.stdout).contains("2001:db8:ff0::/44"), "the agent's IPv6 route");

    let (b4, b6) = (sb["virtual_ipv4"].as_str().unwrap().to_string(), sb["virtual_ipv6"].as_str().unwrap().to_string());
    let a4 = sa["virtual_ipv4"].as_str().unwrap().to_string();
    // A name looked up through the DNS hook opens the tunnel.
    assert_eq!(d.dig(0, "b.zone-b.test", "A"), b4);
    assert_eq!(d.dig(0, "b.zone-b.test", "AAAA"), b6);
    assert!(d.ping(0, &b4, 3), "a pings b over IPv4");
    assert!(d.ping(0, &b6, 3), "a pings b over IPv6");
    assert!(d.ping(1, &a4, 3), "b pings a");

    d.lab.step("box a moves: 198.51.100.2 on eth0 goes, 198.19.5.2 on eth1 comes");
    d.lab.del_addr(&a, "eth0", "198.51.100.2/24").expect("del");
    d.lab.addr(&a, "eth1", "198.19.5.2/24").expect("add");
    d.lab.route(&a, &["default", "via", "198.19.5.1"]).expect("route");
    let moved = d.lab.wait_for(20, || {
        d.status(0).is_some_and(|s| s["registered"] == true && s["local_addrs"].to_string().contains("198.19.5.2"))
    });
    assert!(moved, "a registers from its new address: {:?}", d.status(0));
    assert!(d.ping(0, &b4, 5), "a pings b after the move");
    assert!(d.ping(1, &a4, 5), "b pings a after the move");
    assert_runs_as("ntmd in box a after the move", pa, uid, gid, NET_ADMIN);
}
