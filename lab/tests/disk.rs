//! A full disk under the DC's database, with the real binaries in network namespaces: a
//! registration the DC cannot save is not acknowledged, it completes once space is freed,
//! and after a kill -9 while the disk is full no virtual address is ever given to two boxes.
//!
//! The database lives on a 2 MiB tmpfs mounted in a private mount namespace that a holder
//! process keeps (`unshare -m`); the DC is started inside it with `nsenter -m`, so the
//! machine's own mounts never change and the filesystem outlives a killed DC. Needs root,
//! NSD, dig, unshare and nsenter; the binaries come from
//! `cargo build --release --workspace --bins`.

#![allow(clippy::print_stderr)]

use ntm_lab::deploy::{or_skip, read_status, Deployment};
use ntm_lab::tools_or_skip;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn tools(what: &str) -> bool {
    tools_or_skip(what, &["unshare", "nsenter", "dd"])
}

/// DC-A with its database on a small tmpfs of its own.
struct SmallDisk {
    /// The PID of the process that keeps the mount namespace (and so the tmpfs) alive.
    holder: String,
    /// Where the tmpfs is mounted (inside the holder's mount namespace only).
    dir: PathBuf,
    /// DC-A's configuration, its state on the tmpfs.
    config: PathBuf,
    /// DC-A's lab process.
    dc: Option<usize>,
}

impl SmallDisk {
    /// Stops the deployment's DC-A and starts it again on a fresh 2 MiB tmpfs.
    fn replace_dc_a(d: &mut Deployment) -> SmallDisk {
        let i = d.servers.iter().position(|(l, _, _)| l == "dc-a").expect("dc-a runs");
        let (_, _, p) = d.servers.remove(i);
        d.lab.proc(p).stop();
        let dir = d.lab.dir().join("dc-a-disk");
        std::fs::create_dir_all(&dir).unwrap();
        let dir_s = dir.to_str().unwrap().to_owned();
        let srv = d.srv.clone();
        let script = format!("mount -t tmpfs -o size=2m ntm-lab-disk {dir_s} && exec sleep 3600");
        let holder = d
            .lab
            .spawn(&srv, "disk-holder", &["unshare", "-m", "--propagation", "private", "sh", "-c", &script], &[])
            .unwrap();
        let holder = d.lab.proc(holder).pid().to_string();
        let mut s = SmallDisk { holder, dir, config: d.lab.dir().join("dc-a-small.json"), dc: None };
        let mounted = d.lab.wait_for(10, || s.sh(&format!("mountpoint -q {dir_s}")));
        assert!(mounted, "the tmpfs is mounted in the holder's namespace");
        let mut cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.lab.dir().join("dc-a.json")).unwrap()).unwrap();
        cfg["state"] = s.dir.join("dc-a.db").to_str().unwrap().into();
        std::fs::write(&s.config, serde_json::to_vec(&cfg).unwrap()).unwrap();
        s.start_dc(d);
        s
    }

    /// Runs `script` in the holder's mount namespace; true if it succeeded.
    fn sh(&self, script: &str) -> bool {
        Command::new("nsenter").args(["-t", &self.holder, "-m", "sh", "-c", script]).status().is_ok_and(|s| s.success())
    }

    fn start_dc(&mut self, d: &mut Deployment) {
        let pid = self.holder.clone();
        let bin = d.bins.join("ntm-dc");
        let srv = d.srv.clone();
        let cmd =
            ["nsenter", "-t", &pid, "-m", "--", bin.to_str().unwrap(), "run", "-c", self.config.to_str().unwrap()];
        let p = d.lab.spawn(&srv, "dc-a-small", &cmd, &[]).unwrap();
        let sock = d.lab.dir().join("dc-a.sock");
        let up = d.lab.wait_for(15, || read_status(&sock).is_some());
        assert!(up, "DC-A starts on the small disk: {}", d.lab.proc(p).log_text());
        self.dc = Some(p);
    }

    /// Fills the tmpfs; the database then cannot grow.
    fn fill(&self, d: &mut Deployment) {
        let dir = self.dir.to_str().unwrap();
        assert!(!self.sh(&format!("dd if=/dev/zero of={dir}/fill bs=64k 2>/dev/null")), "dd stops at a full disk");
        d.lab.step("the DC's disk is full");
    }

    fn free(&self, d: &mut Deployment) {
        assert!(self.sh(&format!("rm {}/fill", self.dir.to_str().unwrap())));
        d.lab.step("space freed on the DC's disk");
    }

    fn dc_status(d: &Deployment) -> Option<serde_json::Value> {
        read_status(&d.lab.dir().join("dc-a.sock"))
    }
}

/// Every virtual IPv4 address box `i`'s agent was told, from its log.
fn told(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| l.split("registered: virtual ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Holds for `secs`: box `i` never says it is registered.
fn never_registered(d: &Deployment, i: usize, secs: u64) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if d.status(i).is_some_and(|s| s["registered"] == true) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

#[test]
fn a_registration_is_not_acknowledged_while_the_dc_disk_is_full_and_completes_once_freed() {
    let label = "disk-full";
    if !tools(label) {
        return;
    }
    let Some(mut d) = or_skip(Deployment::start(label), label) else { return };
    let disk = SmallDisk::replace_dc_a(&mut d);
    disk.fill(&mut d);

    let cfg = d.agent_config(0);
    d.start_agent(0, &cfg).unwrap();
    let failing =
        d.lab.wait_for(20, || SmallDisk::dc_status(&d).is_some_and(|s| s["database_errors"].as_u64().unwrap_or(0) > 0));
    assert!(failing, "the DC tried to save the box and could not");
    assert!(never_registered(&d, 0, 5), "no acknowledgement while the registration is not saved");
    let p = d.boxes[0].proc.unwrap();
    assert!(told(&d.lab.proc(p).log_text()).is_empty(), "the box was told no address");

    disk.free(&mut d);
    let freed = Instant::now();
    let s = d.wait_registered(0, 30).expect("the box registers once the DC can save it");
    eprintln!("registered {:?} after the space was freed", freed.elapsed());
    assert!(s["virtual_ipv4"].is_string());
    let dc = SmallDisk::dc_status(&d).unwrap();
    let nodes = dc["nodes"].as_array().unwrap();
    assert!(nodes.iter().any(|n| n["virtual_ipv4"] == s["virtual_ipv4"]), "{dc}");
}

#[test]
fn after_a_kill_while_the_dc_disk_is_full_no_address_goes_to_two_boxes() {
    let label = "disk-kill";
    if !tools(label) {
        return;
    }
    let Some(mut d) = or_skip(Deployment::start(label), label) else { return };
    // Box b runs a second node of zone a, so that both boxes take addresses from DC-A.
    let (cert, key) = d.issue("node", "c.zone-a.test").unwrap();
    let as_cfg = d.lab.dir().join("as.json");
    d.admin(&[
        "account",
        "add",
        "-c",
        as_cfg.to_str().unwrap(),
        "--email",
        "c@zone-a.test",
        "--fqdn",
        "c.zone-a.test",
        "--device",
        "c.zone-a.test",
    ])
    .unwrap();
    let mut disk = SmallDisk::replace_dc_a(&mut d);
    let cfg_a = d.agent_config(0);
    let mut cfg_c = d.agent_config(1);
    cfg_c["credential"] = serde_json::json!({"device": {"cert": cert, "key": key}});

    // Both boxes register while the disk is full, a first; then the DC is killed.
    disk.fill(&mut d);
    d.start_agent(0, &cfg_a).unwrap();
    let failing =
        d.lab.wait_for(20, || SmallDisk::dc_status(&d).is_some_and(|s| s["database_errors"].as_u64().unwrap_or(0) > 0));
    assert!(failing, "the DC could not save box a");
    d.start_agent(1, &cfg_c).unwrap();
    assert!(never_registered(&d, 0, 4) && never_registered(&d, 1, 4), "nothing acknowledged while full");
    let dc = disk.dc.take().unwrap();
    d.lab.proc(dc).signal(9);
    assert_eq!(d.lab.proc(dc).wait(5), None, "killed");
    d.lab.step("DC-A killed (-9) with its disk full");

    // The other order after the restart: box c first, then box a.
    let mut logs = Vec::new();
    let first_a = d.boxes[0].proc.unwrap();
    d.stop_agent(0);
    logs.push(d.lab.proc(first_a).log_text());
    disk.free(&mut d);
    disk.start_dc(&mut d);
    let c = d.wait_registered(1, 60).expect("box c registers after the restart");
    d.start_agent(0, &cfg_a).unwrap();
    let a = d.wait_registered(0, 60).expect("box a registers after the restart");
    assert_ne!(a["virtual_ipv4"], c["virtual_ipv4"]);
    assert_ne!(a["virtual_ipv6"], c["virtual_ipv6"]);

    // Every address each box was ever told, before the kill and after.
    for i in 0..2 {
        logs.push(d.lab.proc(d.boxes[i].proc.unwrap()).log_text());
    }
    let before_a = told(&logs[0]);
    let (now_a, now_c) = (told(&logs[1]), told(&logs[2]));
    let all_a: Vec<&String> = before_a.iter().chain(&now_a).collect();
    for addr in &now_c {
        assert!(!all_a.contains(&addr), "{addr} was given to box a and to box c: a {all_a:?}, c {now_c:?}");
    }
    eprintln!("box a was told {all_a:?}, box c {now_c:?}");
}
