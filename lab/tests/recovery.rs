//! Recovery end to end (issue 12, items 2 and 3): the release binaries in network
//! namespaces, a server killed with SIGKILL and started again while a box depends on it,
//! and an account disabled and enabled again under a running agent. After each, box a
//! must reach box b by name (its DNS hook, then ping over the virtual address), or log in
//! by itself, within a stated time. Needs root, nft, NSD, dig and ping; the binaries come
//! from `cargo build --release --workspace --bins`.
//!
//! Recovery times are printed (`--nocapture`) and reported in docs/agent.md.

#![allow(clippy::print_stderr)]

use ntm_lab::deploy::{or_skip, Access, Deployment, NatKind};
use ntm_lab::tools_or_skip;
use serde_json::Value;
use std::time::{Duration, Instant};

const B: &str = "b.zone-b.test";
/// The goal of issue 12: every box reachable again within 30 s of a restart.
const RECOVERY: Duration = Duration::from_secs(30);

fn lab(label: &str, access: [Access; 2]) -> Option<Deployment> {
    if !tools_or_skip(label, &["ping", "nft", "dig"]) {
        return None;
    }
    or_skip(Deployment::start_with(label, access), label)
}

fn v4(s: &Value) -> String {
    s["virtual_ipv4"].as_str().unwrap_or_default().to_string()
}

/// SIGKILL to the server `label` (nothing is flushed, no goodbye to anyone), then the same
/// binary with the same configuration and state files again.
fn kill_and_restart(d: &mut Deployment, label: &str) -> Instant {
    let (_, _, p) = d.servers.iter().find(|(l, _, _)| l == label).cloned().expect("a server with that label");
    d.lab.step(format!("kill -9 {label}"));
    d.lab.proc(p).signal(9);
    let killed = Instant::now();
    while d.lab.proc(p).alive() {
        assert!(killed.elapsed() < Duration::from_secs(5), "{label} dies");
        std::thread::sleep(Duration::from_millis(20));
    }
    d.restart_server(label).expect("the server starts again");
    killed
}

/// Box 0 resolves box 1's name through its DNS hook and pings its virtual address, again
/// and again until that works or `within` has passed since `since`. The time it took.
fn reach_b(d: &mut Deployment, b_v4: &str, since: Instant, within: Duration, what: &str) -> Duration {
    d.lab.step(format!("{what}: box a resolves {B} and pings {b_v4}"));
    let a = d.boxes[0].ns.clone();
    // One echo request per attempt, waiting 1 s for it, so the time is known to a second.
    let ping = |d: &Deployment| {
        d.lab.try_exec(&a, &["ping", "-4", "-c", "1", "-W", "1", b_v4]).is_ok_and(|o| o.status.success())
    };
    let ok = loop {
        if d.dig(0, B, "A") == b_v4 && ping(d) {
            break true;
        }
        if since.elapsed() >= within {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = since.elapsed();
    assert!(ok, "{what}: box a reaches box b within {within:?} (gave up after {took:?})");
    eprintln!(
        "{what}: box a reached box b {took:?} after {}",
        if what.contains("restart") { "the kill" } else { "its start" }
    );
    took
}

/// Box b is behind a NAT that forgets idle UDP mappings after 3 s and keeps itself
/// reachable through the NS only; box a is on a public address. Both registered, b idle,
/// no tunnel yet: a Route Direction for b can only go through the NS.
fn ns_kept_b(label: &str) -> Option<(Deployment, String)> {
    let mut d = lab(label, [Access::Global4, Access::Nat(NatKind::PortRestricted)])?;
    let st = d.up_with_b_kept_by_ns().expect("b registers and uses the NS");
    // Idle long enough for b's UDP mapping to be gone: only the NS reaches b now.
    std::thread::sleep(Duration::from_secs(5));
    Some((d, v4(&st[1])))
}

/// The NS is killed and restarted while b is idle: it has lost b's K_ntmns. Box a must
/// still reach b, through the NS, within 30 s.
#[test]
fn an_ns_kept_box_is_reachable_soon_after_its_ns_restarts() {
    let Some((mut d, b_v4)) = ns_kept_b("recovery-ns") else { return };
    let killed = kill_and_restart(&mut d, "ns");
    reach_b(&mut d, &b_v4, killed, RECOVERY, "NS restart");
    // (Box a may have got through before that: b's registration with its DC, which asked
    // for the new K_ntmns, opened a fresh UDP mapping the DC could use meanwhile.)
    assert!(
        d.lab.wait_for(10, || d.status(1).is_some_and(|s| s["notifications_ready"] == true)),
        "b is registered with the restarted NS"
    );
    let log = d.lab.proc(d.boxes[1].proc.unwrap()).log_text();
    assert!(log.contains("does not know our key"), "b learnt that the NS lost its key");
}

/// Box b's DC is killed and restarted (from its database) while b is idle and kept by
/// the NS: box a must reach b within 30 s.
#[test]
fn an_ns_kept_box_is_reachable_soon_after_its_dc_restarts() {
    let Some((mut d, b_v4)) = ns_kept_b("recovery-dc") else { return };
    let killed = kill_and_restart(&mut d, "dc-b");
    reach_b(&mut d, &b_v4, killed, RECOVERY, "DC restart");
}

/// Both boxes behind symmetric NATs: their tunnel runs through the RS. The RS is killed
/// and restarted while the tunnel is idle; box a's next packets must get through a new
/// relay session within 3 s of the kill.
#[test]
fn a_relayed_tunnel_comes_back_soon_after_the_rs_restarts() {
    let Some(mut d) = lab("recovery-rs", [Access::Nat(NatKind::Symmetric), Access::Nat(NatKind::Symmetric)]) else {
        return;
    };
    let st = d.up_with(|_, _, _| {}).unwrap();
    let b_v4 = v4(&st[1]);
    let start = Instant::now();
    reach_b(&mut d, &b_v4, start, RECOVERY, "first contact");
    assert!(d.wait_path(0, B, "relay", 10), "the tunnel is relayed");
    std::thread::sleep(Duration::from_secs(3)); // idle

    let killed = kill_and_restart(&mut d, "rs");
    // The RS answers box a's first packet for the lost session with an "unknown session"
    // hint and box a renegotiates at once (about 1.2 s after the kill here, the restart
    // included). Without the hint box a only notices a dead path after three unanswered
    // packets, 400 ms of silence and three punches 200 ms apart: with one ping a second
    // that is 2.6 s after the restart before its renegotiation starts, so 2.5 s
    // separates the two.
    reach_b(&mut d, &b_v4, killed, Duration::from_millis(2500), "RS restart");
    assert!(d.wait_path(0, B, "relay", 10), "relayed again");
}

/// An agent whose account is disabled is refused; once the account is enabled again it
/// logs in by itself (the refusal can change, so it is retried with a capped backoff).
#[test]
fn a_refused_box_logs_in_by_itself_once_its_account_is_enabled() {
    let Some(mut d) = lab("recovery-account", [Access::Global4, Access::Global4]) else { return };
    let as_cfg = d.lab.dir().join("as.json").to_string_lossy().into_owned();
    let email = d.boxes[0].email.clone();
    d.lab.step("disable box a's account, then start its agent");
    d.admin(&["account", "disable", "-c", &as_cfg, "--account", &email]).unwrap();
    let cfg = d.agent_config(0);
    let p = d.start_agent(0, &cfg).unwrap();
    let started = Instant::now();
    while d.lab.proc(p).log_text().matches("login refused for now: AccountDisabled").count() < 2 {
        assert!(started.elapsed() < Duration::from_secs(20), "refused, and tried again");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(d.lab.proc(p).alive(), "the agent keeps running");
    assert!(d.status(0).is_some_and(|s| s["registered"] != true));

    d.lab.step("enable the account again");
    d.admin(&["account", "enable", "-c", &as_cfg, "--account", &email]).unwrap();
    let enabled = Instant::now();
    // Two or three attempts failed so far: the next one comes within 8 s (jittered,
    // never more than 60 s however long the account stays disabled).
    assert!(d.wait_registered(0, 20).is_some(), "box a logs in and registers by itself");
    eprintln!("account enabled: box a registered {:?} later", enabled.elapsed());
}

/// What a healthy box's status says: registered with its DC, not displaced, and for a box
/// kept by the NS, its NS connection acknowledged.
fn healthy(s: &Value, ns_kept: bool) -> bool {
    s["registered"] == true && s["displaced"] == false && (!ns_kept || s["notifications_ready"] == true)
}

/// Both boxes up (b kept by the NS, idle, no tunnel yet); the servers `labels` are
/// restarted together. Both boxes must be healthy again within 30 s, stay so, and box a
/// must reach the idle box b by name (a Route Direction through the NS).
fn restart_and_check(label: &str, labels: &[&str]) {
    let Some((mut d, b_v4)) = ns_kept_b(label) else { return };
    let what = format!("{} restart", labels.join("+"));
    let restarted = Instant::now();
    for l in labels {
        d.restart_server(l).expect("the server starts again");
    }
    for i in 0..2 {
        let ok = d.lab.wait_for(RECOVERY.as_secs(), || d.status(i).is_some_and(|s| healthy(&s, i == 1)));
        let s = d.status(i).unwrap_or_default();
        assert!(ok, "{what}: box {i} healthy within {RECOVERY:?}: {s}");
    }
    eprintln!("{what}: both boxes healthy {:?} after the restart", restarted.elapsed());
    // Well after the restart: still healthy, and box b (idle since) reachable through the NS.
    std::thread::sleep(Duration::from_secs(20));
    for i in 0..2 {
        let s = d.status(i).unwrap_or_default();
        assert!(healthy(&s, i == 1), "{what}: box {i} still healthy 20 s later: {s}");
    }
    reach_b(&mut d, &b_v4, Instant::now(), Duration::from_secs(10), &format!("after the {what}"));
    assert!(d.lab.wait_for(10, || d.status(1).is_some_and(|s| healthy(&s, true))), "{what}: b healthy at the end");
}

#[test]
fn both_boxes_are_healthy_after_the_ns_restarts() {
    restart_and_check("health-ns", &["ns"]);
}

#[test]
fn both_boxes_are_healthy_after_the_as_restarts() {
    restart_and_check("health-as", &["as"]);
}

#[test]
fn both_boxes_are_healthy_after_their_dc_restarts() {
    restart_and_check("health-dc", &["dc-b"]);
}

#[test]
fn both_boxes_are_healthy_after_the_ns_and_the_dc_restart_together() {
    restart_and_check("health-ns-dc", &["ns", "dc-b"]);
}

/// Both boxes behind NATs and kept by the NS; the servers `labels` are killed (SIGKILL)
/// and started again together. Both must be healthy within 30 s and stay so, and each
/// must reach the other, idle, by name.
fn kill_both_ns_kept(label: &str, labels: &[&str]) {
    let Some(mut d) = lab(label, [Access::Nat(NatKind::PortRestricted), Access::Nat(NatKind::PortRestricted)]) else {
        return;
    };
    for i in 0..2 {
        let nat = d.boxes[i].nat.clone().expect("a NAT");
        for k in ["nf_conntrack_udp_timeout", "nf_conntrack_udp_timeout_stream"] {
            d.lab.sysctl(&nat, &format!("net.netfilter.{k}"), "3").unwrap();
        }
    }
    let st = d.up_with(|_, _, c| c["keepalive"] = "ns".into()).unwrap();
    assert!(d.lab.wait_for(10, || (0..2).all(|i| d.status(i).is_some_and(|s| healthy(&s, true)))));
    std::thread::sleep(Duration::from_secs(5));
    let what = format!("{} killed", labels.join("+"));
    let killed = Instant::now();
    for l in labels {
        kill_and_restart(&mut d, l);
    }
    let ok = d.lab.wait_for(RECOVERY.as_secs(), || (0..2).all(|i| d.status(i).is_some_and(|s| healthy(&s, true))));
    assert!(ok, "{what}: both healthy within {RECOVERY:?}: {:?} / {:?}", d.status(0), d.status(1));
    eprintln!("{what}: both boxes healthy {:?} after the kill", killed.elapsed());
    std::thread::sleep(Duration::from_secs(20));
    for i in 0..2 {
        let s = d.status(i).unwrap_or_default();
        assert!(healthy(&s, true), "{what}: box {i} still healthy 20 s later: {s}");
    }
    reach_b(&mut d, &v4(&st[1]), Instant::now(), Duration::from_secs(10), &format!("after {what}"));
}

#[test]
fn two_ns_kept_boxes_are_healthy_after_the_ns_is_killed() {
    kill_both_ns_kept("health-kill-ns", &["ns"]);
}

#[test]
fn two_ns_kept_boxes_are_healthy_after_the_ns_and_a_dc_are_killed() {
    kill_both_ns_kept("health-kill-ns-dc", &["ns", "dc-b", "dc-a"]);
}

/// The AS hands out keys for 60 s, so boxes log in again every 30 s; the AS is killed
/// and restarted. Across the next relogins (well after the restart) both boxes stay
/// healthy and box b, kept by the NS, stays reachable.
#[test]
fn boxes_stay_healthy_across_relogins_after_the_as_restarts() {
    let Some(mut d) = lab("health-as-relogin", [Access::Global4, Access::Nat(NatKind::PortRestricted)]) else {
        return;
    };
    let path = d.lab.dir().join("as.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg["key_lifetime_secs"] = 60.into();
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    d.restart_server("as").unwrap();
    let st = d.up_with_b_kept_by_ns().expect("b registers and uses the NS");
    std::thread::sleep(Duration::from_secs(5));
    kill_and_restart(&mut d, "as");
    // Two relogins of each box go by; health is checked all along.
    let until = Instant::now() + Duration::from_secs(75);
    let mut unhealthy = Duration::ZERO;
    while Instant::now() < until {
        let t = Instant::now();
        std::thread::sleep(Duration::from_millis(500));
        if !(0..2).all(|i| d.status(i).is_some_and(|s| healthy(&s, i == 1))) {
            unhealthy += t.elapsed();
        }
    }
    eprintln!("AS restart, relogins every 30 s: unhealthy for {unhealthy:?} of 75 s");
    for i in 0..2 {
        let s = d.status(i).unwrap_or_default();
        assert!(healthy(&s, i == 1), "box {i} healthy after its relogins: {s}");
    }
    reach_b(&mut d, &v4(&st[1]), Instant::now(), Duration::from_secs(10), "after the AS restart and relogins");
}
