//! A box kept reachable by its NS (`keepalive: "ns"`) whose address is replaced on the
//! same link: a new address added, the old one deleted. The TCP connection to the NS left
//! from the old address, and a kernel keeps such a connection up (queueing whatever is
//! sent on it) until its retransmissions run out, many minutes later. The agent must
//! replace it at once: the NS holds the box's notifications again within a few seconds,
//! no connection from the old address is left, and the other box reaches this one by name
//! through the NS. Needs root, nft, NSD, dig, ping and ss; the binaries come from
//! `cargo build --release --workspace --bins`.
//!
//! The time from the address change to the NS holding the box again is printed
//! (`--nocapture`).

#![allow(clippy::print_stderr)]

use ntm_lab::deploy::{or_skip, Access, Deployment, NatKind};
use ntm_lab::tools_or_skip;
use serde_json::Value;
use std::time::{Duration, Instant};

const B: &str = "b.zone-b.test";
/// How soon after the address change the NS must hold box b again.
const BACK_WITHIN: Duration = Duration::from_secs(5);

fn lab(label: &str, access: [Access; 2]) -> Option<Deployment> {
    if !tools_or_skip(label, &["ping", "nft", "dig", "ss"]) {
        return None;
    }
    or_skip(Deployment::start_with(label, access), label)
}

fn v4(s: &Value) -> String {
    s["virtual_ipv4"].as_str().unwrap_or_default().to_string()
}

/// Where the NS takes nodes' connections (lab/src/deploy.rs).
const NS_NODE_PORT: &str = ":4463";

/// Box b's TCP connections to the NS (in any state, listening sockets aside) as `ss`
/// prints them.
fn b_tcp(d: &Deployment) -> String {
    let ns = d.boxes[1].ns.clone();
    let all = d
        .lab
        .try_exec(&ns, &["ss", "-Htn", "state", "all", "exclude", "listening"])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    all.lines().filter(|l| l.trim_end().ends_with(NS_NODE_PORT)).map(|l| format!("{l}\n")).collect()
}

/// Replaces box b's address `old` on eth0 with `new` (same prefix `len`), waits until
/// its agent has seen the change, then until its NS holds it again; asserts that no
/// connection from `old` is left. The time from the deletion to the NS holding b.
fn replace_b_address(d: &mut Deployment, old: &str, new: &str, len: u8, gateway: &str) -> Duration {
    let ns = d.boxes[1].ns.clone();
    let from_old = if old.contains(':') { format!("[{old}]:") } else { format!("{old}:") };
    assert!(b_tcp(d).contains(&from_old), "before the change b's NS connection leaves from {old}:\n{}", b_tcp(d));
    d.lab.step(format!("box b: add {new}/{len}, delete {old}/{len}"));
    d.lab.addr(&ns, "eth0", &format!("{new}/{len}")).expect("add the new address");
    d.lab.del_addr(&ns, "eth0", &format!("{old}/{len}")).expect("delete the old address");
    let changed = Instant::now();
    // Deleting an IPv4 address may take the default route with it; put it back.
    d.lab.route(&ns, &["default", "via", gateway]).expect("default route");
    let seen = d.lab.wait_for(10, || {
        d.status(1).is_some_and(|s| {
            let addrs: Vec<String> = s["local_addrs"]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x["addr"].as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            addrs.iter().any(|a| a.contains(new)) && !addrs.iter().any(|a| a.contains(&from_old))
        })
    });
    assert!(seen, "b's agent sees the new address");
    let back = loop {
        if d.status(1).is_some_and(|s| s["notifications_ready"] == true && s["registered"] == true) {
            break true;
        }
        if changed.elapsed() >= BACK_WITHIN {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = changed.elapsed();
    assert!(back, "the NS holds b again within {BACK_WITHIN:?} of the change:\n{}", b_tcp(d));
    eprintln!("NS connection replaced {took:?} after the address change");
    let left = b_tcp(d);
    assert!(!left.contains(&from_old), "no connection from the old address {old} is left:\n{left}");
    took
}

/// Box a resolves b's name through its DNS hook and pings b's virtual address, until
/// that works or `within` has passed.
fn a_reaches_b(d: &Deployment, b_v4: &str, within: Duration) {
    let a = d.boxes[0].ns.clone();
    let start = Instant::now();
    let ping = || d.lab.try_exec(&a, &["ping", "-4", "-c", "1", "-W", "1", b_v4]).is_ok_and(|o| o.status.success());
    let ok = loop {
        if d.dig(0, B, "A") == b_v4 && ping() {
            break true;
        }
        if start.elapsed() >= within {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(ok, "box a reaches {B} ({b_v4}) within {within:?}");
    eprintln!("box a reached box b {:?} after it started trying", start.elapsed());
}

/// Box b behind a NAT that forgets idle UDP mappings after 3 s, kept by the NS only. Its
/// address changes; then it idles until its UDP mapping is gone, so box a's Route
/// Direction can reach it through the NS only.
#[test]
fn a_box_behind_a_nat_replaces_its_ns_connection_when_its_address_changes() {
    let Some(mut d) = lab("ns-move-nat", [Access::Global4, Access::Nat(NatKind::PortRestricted)]) else { return };
    let st = d.up_with_b_kept_by_ns().expect("b registers and uses the NS");
    let b_v4 = v4(&st[1]);
    let ns = d.boxes[1].ns.clone();
    // The new address stays when the old (primary) one is deleted.
    d.lab.sysctl(&ns, "net.ipv4.conf.eth0.promote_secondaries", "1").expect("sysctl");
    replace_b_address(&mut d, "198.19.20.2", "198.19.20.3", 24, "198.19.20.1");
    // Idle long enough for b's UDP mapping to be gone: only the NS reaches b now.
    std::thread::sleep(Duration::from_secs(5));
    a_reaches_b(&d, &b_v4, Duration::from_secs(10));
}

/// Box b on an IPv6-only network, kept by the NS: `ip -6 addr add ::9`, then delete ::2.
#[test]
fn an_ipv6_only_box_replaces_its_ns_connection_when_its_address_changes() {
    let Some(mut d) = lab("ns-move-v6", [Access::Dual, Access::Global6]) else { return };
    let st = d
        .up_with(|_, i, c| {
            if i == 1 {
                c["keepalive"] = "ns".into();
            }
        })
        .expect("both register");
    assert!(d.lab.wait_for(10, || d.status(1).is_some_and(|s| s["notifications_ready"] == true)), "b uses the NS");
    let b_v4 = v4(&st[1]);
    replace_b_address(&mut d, "2001:db8:b::2", "2001:db8:b::9", 64, "2001:db8:b::1");
    a_reaches_b(&d, &b_v4, Duration::from_secs(10));
}

/// The local port of box b's established connection to the NS, if it has one.
fn b_ns_port(d: &Deployment) -> Option<String> {
    let conns = b_tcp(d);
    let line = conns.lines().find(|l| l.starts_with("ESTAB"))?;
    let local = line.split_whitespace().nth(3)?;
    local.rsplit(':').next().map(str::to_string)
}

/// The NS stops answering on box b's connection while its kernel still acknowledges what
/// b sends (the NS process is stopped), so TCP itself never fails. A network change that
/// leaves b's address in place makes b register with the NS again on that connection; once
/// b gives up waiting for the answer (about 45 s), it must close that connection and open
/// a new one rather than keep sending into the old one.
#[test]
fn a_box_replaces_an_ns_connection_the_ns_stopped_answering_on() {
    let Some(mut d) = lab("ns-silent", [Access::Global4, Access::Nat(NatKind::PortRestricted)]) else { return };
    d.up_with_b_kept_by_ns().expect("b registers and uses the NS");
    let old = b_ns_port(&d).expect("b is connected to the NS");
    let (_, _, ns_proc) = d.servers.iter().find(|(l, _, _)| l == "ns").cloned().expect("the NS");
    d.lab.step("SIGSTOP the NS; box b gets another address (the old one stays)");
    d.lab.proc(ns_proc).signal(19);
    let ns = d.boxes[1].ns.clone();
    d.lab.addr(&ns, "eth0", "198.19.20.7/24").expect("add an address");
    let changed = Instant::now();
    assert!(
        d.lab.wait_for(10, || d.status(1).is_some_and(|s| s["notifications_ready"] == false)),
        "b registers with the NS again after the network change"
    );
    let replaced = d.lab.wait_for(70, || b_ns_port(&d).is_some_and(|p| p != old));
    d.lab.proc(ns_proc).signal(18);
    assert!(replaced, "b opened a new connection to the NS within 70 s:\n{}", b_tcp(&d));
    eprintln!("new NS connection {:?} after the change", changed.elapsed());
    assert!(
        d.lab.wait_for(15, || d.status(1).is_some_and(|s| s["notifications_ready"] == true)),
        "the NS holds b again on the new connection"
    );
    assert!(!b_tcp(&d).contains(&format!(":{old} ")), "the old connection is gone:\n{}", b_tcp(&d));
}
