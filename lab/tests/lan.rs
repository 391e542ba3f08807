//! The box serves its LAN (issue 17, part 2): each box has a LAN namespace behind it (a
//! veth `lan0` to a "LAN host" whose default route is the box). Box b announces its LAN
//! prefix. The LAN host of box a resolves box b's name through box a's DNS stub, then holds
//! two TCP connections: one to box b itself (by the virtual address it resolved; box a
//! masquerades the LAN source) and one to box b's LAN host (the announced prefix). Box a
//! moves to another network in the middle; both connections go on, and the stalls are
//! printed (`--nocapture`). Also: a query from outside the LAN subnets is not answered,
//! a peer cannot send to a LAN address outside the announced prefixes, and an announced
//! prefix overlapping another box's is refused with a clear error.
//!
//! Needs root, nft, NSD, dig and socat; the binaries come from
//! `cargo build --release --workspace --bins` (or `NTM_BIN_DIR`).
//!
//! Addresses: box a's LAN 198.19.31.0/24 (box .1, host .2), box b's LAN 198.19.32.0/24
//! (announced) and 198.19.33.0/24 (not announced), all on `lan0` of each box.

#![allow(clippy::print_stderr)]

use ntm_lab::deploy::{or_skip, Access, Deployment, NatKind};
use ntm_lab::stream::LineStream;
use ntm_lab::{tools_or_skip, Ns};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const B: &str = "b.zone-b.test";
/// Box b's announced LAN prefix.
const B_LAN: &str = "198.19.32.0/24";
/// The longest pause a move may cause in a LAN device's connection (as for the box's own,
/// moves.rs).
const STALL_BUDGET: Duration = Duration::from_secs(1);

/// Where the lab's peers' LAN prefixes lie (not in the private ranges the agent accepts
/// by default).
const PEER_PREFIXES: [&str; 2] = ["198.19.0.0/16", "2001:db8::/32"];

fn lan_cfg(c: &mut Value, announce: &[&str]) {
    c["lan"] = json!({"interfaces": ["lan0"], "announce": announce});
    c["accept_peer_prefixes"] = json!(PEER_PREFIXES);
}

/// The two boxes with their LANs, box a behind a NAT with a spare uplink for the move,
/// box b announcing [`B_LAN`]; both agents registered. (deployment, LAN host a, LAN host b)
fn two_lans(label: &str) -> Option<(Deployment, Ns, Ns)> {
    two_lans_announcing(label, &[B_LAN])
}

/// [`two_lans`] with box b announcing `b_announce`.
fn two_lans_announcing(label: &str, b_announce: &[&str]) -> Option<(Deployment, Ns, Ns)> {
    if !tools_or_skip(label, &["socat", "nft", "dig"]) {
        return None;
    }
    let mut d = or_skip(Deployment::start_with(label, [Access::Nat(NatKind::PortRestricted), Access::Global4]), label)?;
    let host_a = d.lan_host(0, "lanhost-a", &["198.19.31.1/24"], &["198.19.31.2/24"]).unwrap();
    let host_b = d
        .lan_host(1, "lanhost-b", &["198.19.32.1/24", "198.19.33.1/24"], &["198.19.32.2/24", "198.19.33.2/24"])
        .unwrap();
    d.up_with(|_, i, c| lan_cfg(c, if i == 1 { b_announce } else { &[] })).expect("both boxes register");
    Some((d, host_a, host_b))
}

/// `dig +short` from `ns` through the DNS server at `server`, from `source` if given.
fn dig_from(d: &Deployment, ns: &Ns, server: &str, source: Option<&str>, name: &str) -> String {
    let at = format!("@{server}");
    let mut cmd = vec!["dig", "+short", "+time=2", "+tries=1", &at, name, "A"];
    if let Some(s) = source {
        cmd.extend(["-b", s]);
    }
    d.lab.try_exec(ns, &cmd).map(|o| ntm_lab::dig_answer(&o.stdout)).unwrap_or_default()
}

fn lan_counter(d: &Deployment, i: usize, what: &str) -> u64 {
    d.status(i).and_then(|s| s["lan"][what].as_u64()).unwrap_or(0)
}

/// The LAN host of box a reaches box b (masquerade) and box b's LAN host (announced
/// prefix) by name through box a, and both connections survive box a's move.
#[test]
fn a_lan_device_reaches_a_peer_and_its_lan_across_a_move() {
    let Some((mut d, host_a, host_b)) = two_lans("lan-move") else { return };
    d.lab.step("LAN host a: dig b.zone-b.test @198.19.31.1");
    let vb = dig_from(&d, &host_a, "198.19.31.1", None, B);
    assert!(vb.starts_with("198.18.2."), "box b's virtual address through box a's stub: {vb:?}");

    d.echo_server(1, "echo-b", "TCP4-LISTEN:7000,reuseaddr,fork").unwrap();
    d.lab.spawn(&host_b, "echo-lanhost-b", &["socat", "TCP4-LISTEN:7001,reuseaddr,fork", "EXEC:cat"], &[]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let every = Duration::from_millis(50);
    let run = Duration::from_secs(90);
    let to_box = LineStream::start_in(&mut d, &host_a, &format!("TCP4:{vb}:7000"), every, run).unwrap();
    let to_lan = LineStream::start_in(&mut d, &host_a, "TCP4:198.19.32.2:7001", every, run).unwrap();
    assert!(d.lab.wait_for(15, || to_box.count() >= 20), "LAN host a -> box b runs");
    assert!(d.lab.wait_for(15, || to_lan.count() >= 20), "LAN host a -> LAN host b runs");

    d.lab.step("box a: second uplink eth1 198.19.5.2/24, then eth0 down");
    let a = d.boxes[0].ns.clone();
    d.lab.exec(&a, &["ip", "addr", "add", "198.19.5.2/24", "dev", "eth1"]).unwrap();
    d.lab.exec(&a, &["ip", "route", "add", "default", "via", "198.19.5.1", "dev", "eth1", "metric", "200"]).unwrap();
    let moved = Instant::now();
    d.lab.exec(&a, &["ip", "link", "set", "eth0", "down"]).unwrap();
    let gap_box = to_box
        .stall_after(&d, moved, "LAN host a -> box b (masquerade), box a moves")
        .expect("the stream goes on after the move");
    let gap_lan = to_lan
        .stall_after(&d, moved, "LAN host a -> LAN host b (announced), box a moves")
        .expect("the stream goes on after the move");
    let end_box = to_box.finish(&mut d);
    let end_lan = to_lan.finish(&mut d);
    assert!(end_box.complete(), "to box b: every line back once, in order, one connection: {:?}", end_box.exit);
    assert!(end_lan.complete(), "to LAN host b: every line back once, in order, one connection: {:?}", end_lan.exit);
    assert!(gap_box <= STALL_BUDGET, "to box b: pause {gap_box:?} over {STALL_BUDGET:?}");
    assert!(gap_lan <= STALL_BUDGET, "to LAN host b: pause {gap_lan:?} over {STALL_BUDGET:?}");
}

/// The TCP peers that `ns` sees on its local port `port` (`ss`), as "address:port".
fn tcp_peers(d: &Deployment, ns: &Ns, port: u16) -> String {
    let filter = format!("( sport = :{port} )");
    let o = d.lab.try_exec(ns, &["ss", "-tnH", "state", "established", &filter]);
    o.map(|o| String::from_utf8_lossy(&o.stdout).to_string()).unwrap_or_default()
}

/// What each side sees, and what the box refuses: box b and its LAN host see box a's
/// virtual address (masquerade: box a announces nothing); the LAN stub answers its own
/// subnet only; a peer reaches none of the LAN outside the announced prefixes; a peer's
/// prefix that overlaps box a's own LAN is not routed into the tunnel; a prefix
/// overlapping the virtual prefixes is refused with a clear error.
#[test]
fn lan_sources_are_masqueraded_and_nothing_else_crosses() {
    // Box b also announces box a's LAN (198.19.31.0/24; another DC, so no refusal).
    let Some((mut d, host_a, host_b)) = two_lans_announcing("lan-edges", &[B_LAN, "198.19.31.0/24"]) else { return };
    let va = d.status(0).and_then(|s| s["virtual_ipv4"].as_str().map(str::to_string)).unwrap_or_default();
    let vb = dig_from(&d, &host_a, "198.19.31.1", None, B);
    assert!(vb.starts_with("198.18.2."), "{vb:?}");
    d.echo_server(1, "echo-b", "TCP4-LISTEN:7000,reuseaddr,fork").unwrap();
    d.lab.spawn(&host_b, "echo-lanhost-b", &["socat", "TCP4-LISTEN:7001,reuseaddr,fork", "EXEC:cat"], &[]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let every = Duration::from_millis(50);
    let run = Duration::from_secs(20);
    let to_box = LineStream::start_in(&mut d, &host_a, &format!("TCP4:{vb}:7000"), every, run).unwrap();
    let to_lan = LineStream::start_in(&mut d, &host_a, "TCP4:198.19.32.2:7001", every, run).unwrap();
    assert!(d.lab.wait_for(15, || to_box.count() >= 5 && to_lan.count() >= 5), "both connections run");
    let bx = d.boxes[1].ns.clone();
    let (on_box, on_lan) = (tcp_peers(&d, &bx, 7000), tcp_peers(&d, &host_b, 7001));
    assert!(on_box.contains(&format!("{va}:")), "box b sees box a's virtual address {va}: {on_box}");
    assert!(on_lan.contains(&format!("{va}:")), "LAN host b sees box a's virtual address {va}: {on_lan}");
    assert!(!on_box.contains("198.19.31.") && !on_lan.contains("198.19.31."), "no LAN address of box a crosses");
    let _ = (to_box.finish(&mut d), to_lan.finish(&mut d));

    d.lab.step("LAN host a asks box a's stub from 198.19.34.7, outside the LAN's subnet");
    d.lab.addr(&host_a, "eth0", "198.19.34.7/32").unwrap();
    let refused = lan_counter(&d, 0, "dns_refused");
    let outside = dig_from(&d, &host_a, "198.19.31.1", Some("198.19.34.7"), B);
    assert!(outside.is_empty() || outside.contains("timed out"), "no answer outside the LAN: {outside:?}");
    assert!(outside.is_empty() || !outside.contains("198.18."), "{outside:?}");
    assert!(lan_counter(&d, 0, "dns_refused") > refused, "the stub counted the query it dropped");

    d.lab.step("box a routes 198.19.33.0/24 (box b's, not announced) into ntm0 and pings 198.19.33.2");
    let a = d.boxes[0].ns.clone();
    d.lab.exec(&a, &["ip", "route", "add", "198.19.33.0/24", "dev", "ntm0"]).unwrap();
    let no_tunnel = d.status(0).and_then(|s| s["counters"]["no_tunnel"].as_u64()).unwrap_or(0);
    assert!(!d.ping(0, "198.19.33.2", 2), "nothing reaches box b's LAN outside its announced prefix");
    let counted = d.status(0).and_then(|s| s["counters"]["no_tunnel"].as_u64()).unwrap_or(0);
    assert!(counted > no_tunnel, "box a has no tunnel for it: {no_tunnel} -> {counted}");
    assert!(d.ping(0, "198.19.32.2", 2), "the announced prefix is reachable from box a itself");
    let routes = d.lab.exec(&a, &["ip", "-4", "route", "show", "198.19.31.0/24"]).unwrap();
    let routes = String::from_utf8_lossy(&routes.stdout).to_string();
    assert!(routes.contains("dev lan0") && !routes.contains("ntm0"), "box a's own LAN stays on lan0: {routes}");
    assert!(d.ping(0, "198.19.31.2", 2), "box a still reaches its own LAN host");
    let log = d.boxes[0].proc.map(|p| d.lab.proc(p).log_text()).unwrap_or_default();
    assert!(
        log.contains("prefix 198.19.31.0/24 is not routed: it overlaps the route 198.19.31.0/24 dev lan0"),
        "{log}"
    );

    d.lab.step("ntmd check: a prefix overlapping the virtual prefixes is refused");
    let mut cfg = d.agent_config(0);
    lan_cfg(&mut cfg, &["198.18.1.0/24"]);
    let path = d.lab.dir().join("overlap.json");
    std::fs::write(&path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let bin = d.bins.join("ntmd");
    let o = std::process::Command::new(&bin).args(["check", "-c"]).arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("lan.announce") && err.contains("overlaps the virtual prefix 198.18.0.0/16"), "{err}");

    d.lab.step("box a stops: its nftables table goes with it");
    let table = |d: &Deployment| {
        d.lab.try_exec(&a, &["nft", "list", "table", "inet", "ntmd"]).is_ok_and(|o| o.status.success())
    };
    assert!(table(&d), "the agent's table is in place while it runs");
    d.stop_agent(0);
    assert!(!table(&d), "the agent deleted its table when it stopped");

    d.lab.step("box a again, announcing 198.18.1.128/25 (inside DC-A's virtual prefix, which it does not route)");
    let mut cfg = d.agent_config(0);
    cfg["virtual_routes"] = json!(["198.18.2.0/24", "2001:db8:ff0::/44"]);
    lan_cfg(&mut cfg, &["198.18.1.128/25"]);
    // As an unprivileged user this time: the table must still go when it stops.
    cfg["user"] = "nobody".into();
    let p = d.start_agent(0, &cfg).unwrap();
    let want = "announced prefix 198.18.1.128/25 overlaps the virtual prefix 198.18.1.0/24";
    let refused =
        || d.status(0).and_then(|s| s["registration_refused"].as_str().map(str::to_string)).unwrap_or_default();
    assert!(d.lab.wait_for(20, || refused().contains(want)), "the DC's refusal in the status: {:?}", refused());
    assert!(d.status(0).is_some_and(|s| s["registered"] == false), "not registered");
    let log = d.lab.proc(p).log_text();
    assert!(
        log.contains("ERROR") && log.contains(&format!("the DC refused our registration: Conflict: {want}")),
        "{log}"
    );
    assert!(log.contains("running as nobody"), "{log}");
    assert!(table(&d), "the table of the agent running as nobody");
    d.stop_agent(0);
    assert!(!table(&d), "deleted at exit also by an agent left with CAP_NET_ADMIN only: {}", d.lab.proc(p).log_text());
}
