//! Moves the kernel shows in other ways than an address coming and going (issue 15): an
//! uplink set down or losing its carrier while its address stays configured on it, with
//! another uplink already up; and a move from an IPv4 NAT to an IPv6-only network and back
//! made the same way. A TCP stream over the tunnel runs through each move; the longest
//! pause in it must stay within [`STALL_BUDGET`]. Needs root, nft, NSD, dig and socat; the
//! binaries come from `cargo build --release --workspace --bins` (or `NTM_BIN_DIR`).
//!
//! Box a sits behind a NAT on eth0 (198.19.10.2); its second uplink is eth1, straight to the
//! router (198.19.5.2/24 and 2001:db8:5::2/64, see lab/src/deploy.rs). The stalls are printed
//! (`--nocapture`).

#![allow(clippy::print_stderr)]

use ntm_lab::deploy::{or_skip, read_status, Access, Deployment, NatKind};
use ntm_lab::stream::LineStream;
use ntm_lab::tools_or_skip;
use serde_json::Value;
use std::time::{Duration, Instant};

const B: &str = "b.zone-b.test";
const A: &str = "a.zone-a.test";
/// The longest pause a move may cause in the stream (issue 15: at most 1 s on every move).
const STALL_BUDGET: Duration = Duration::from_secs(1);

fn lab(label: &str, access: [Access; 2]) -> Option<Deployment> {
    if !tools_or_skip(label, &["socat", "nft", "dig"]) {
        return None;
    }
    or_skip(Deployment::start_with(label, access), label)
}

/// Runs `ip ARGS` in box a's namespace.
fn ip_a(d: &Deployment, args: &[&str]) {
    let a = d.boxes[0].ns.clone();
    let mut cmd = vec!["ip"];
    cmd.extend_from_slice(args);
    d.lab.exec(&a, &cmd).unwrap_or_else(|e| panic!("ip {}: {e}", args.join(" ")));
}

/// The addresses box `i`'s agent reports as its own.
fn local_addrs(d: &Deployment, i: usize) -> Vec<String> {
    let s = d.status(i).unwrap_or_default();
    s["local_addrs"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x["addr"].as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

fn network_changes(d: &Deployment, i: usize) -> u64 {
    d.status(i).and_then(|s| s["counters"]["network_changes"].as_u64()).unwrap_or(0)
}

/// Box a with a second uplink already up: eth1 with 198.19.5.2/24 and a default route
/// through it that is used only once eth0's is gone (a higher metric).
fn second_uplink_v4(d: &mut Deployment) {
    d.lab.step("box a: second uplink eth1 198.19.5.2/24, default route metric 200");
    ip_a(d, &["addr", "add", "198.19.5.2/24", "dev", "eth1"]);
    ip_a(d, &["route", "add", "default", "via", "198.19.5.1", "dev", "eth1", "metric", "200"]);
}

/// The uplink box a uses goes away while its address stays on it (`down` does that), the
/// second uplink is already up: the stream continues within the budget, the agent counts a
/// network change and no longer lists the address of the dead link.
fn uplink_lost_with_its_address_kept(label: &str, what: &str, down: impl Fn(&mut Deployment)) {
    let Some(mut d) = lab(label, [Access::Nat(NatKind::PortRestricted), Access::Global4]) else { return };
    second_uplink_v4(&mut d);
    let _st = d.up_with(|_, _, _| {}).unwrap();
    let before = local_addrs(&d, 0);
    assert!(before.iter().any(|a| a == "198.19.10.2:4500"), "eth0's address is usable: {before:?}");
    assert!(before.iter().any(|a| a == "198.19.5.2:4500"), "eth1's address is usable too: {before:?}");
    d.echo_server(1, "echo", "TCP4-LISTEN:7000,reuseaddr,fork").unwrap();
    let stream = LineStream::start(&mut d, 0, &format!("TCP4:{B}:7000")).unwrap();
    assert!(d.lab.wait_for(15, || stream.count() >= 20), "the stream runs");
    let changes = network_changes(&d, 0);
    d.lab.step(format!("box a: {what}; 198.19.10.2 stays on eth0"));
    let moved = Instant::now();
    down(&mut d);
    let a = d.boxes[0].ns.clone();
    let addr = d.lab.exec(&a, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).unwrap();
    assert!(String::from_utf8_lossy(&addr.stdout).contains("198.19.10.2"), "the address stays on the dead link");
    let gap = stream.stall_after(&d, moved, what).expect("the stream goes on after the move");
    let after = local_addrs(&d, 0);
    assert!(!after.iter().any(|a| a.starts_with("198.19.10.2:")), "no address of the dead link: {after:?}");
    assert_eq!(after.first().map(String::as_str), Some("198.19.5.2:4500"), "{after:?}");
    assert!(network_changes(&d, 0) > changes, "the agent counts the move as a network change");
    // The DC reaches the box where it is now, not at the NAT it left.
    let at_new = d.lab.wait_for(5, || dc_view_of_a(&d).0 == vec!["198.19.5.2:4500".to_string()]);
    assert!(at_new, "the DC has box a at its new address only: {:?}", dc_view_of_a(&d));
    let end = stream.finish(&mut d);
    assert!(end.complete(), "every line came back once, in order: {:?}", end.exit);
    assert!(gap <= STALL_BUDGET, "{what}: pause {gap:?} over {STALL_BUDGET:?}");
}

/// (a) eth0 is set down (`ip link set eth0 down`): its IPv4 address stays configured.
#[test]
fn uplink_set_down_with_its_address_kept_is_a_move() {
    uplink_lost_with_its_address_kept("moves-down", "eth0 set down", |d| ip_a(d, &["link", "set", "eth0", "down"]));
}

/// (b) eth0 loses its carrier: the NAT router's end of the cable goes down. The box is set
/// to route around links without carrier (`ignore_routes_with_linkdown`, as a box with two
/// uplinks has to be: else the kernel keeps sending into the dead link, whatever any
/// program does).
#[test]
fn uplink_losing_its_carrier_with_its_address_kept_is_a_move() {
    uplink_lost_with_its_address_kept("moves-carrier", "eth0 loses its carrier", |d| {
        let a = d.boxes[0].ns.clone();
        for k in ["all", "eth0"] {
            d.lab.sysctl(&a, &format!("net.ipv4.conf.{k}.ignore_routes_with_linkdown"), "1").unwrap();
        }
        let nat = d.boxes[0].nat.clone().expect("box a is behind a NAT");
        d.lab.exec(&nat, &["ip", "link", "set", "lan0", "down"]).unwrap();
    });
}

/// DC-A's view of box a: (its endpoints, whether it reaches it through the NS).
fn dc_view_of_a(d: &Deployment) -> (Vec<String>, bool) {
    let s = read_status(&d.lab.dir().join("dc-a.sock")).unwrap_or_default();
    let nodes = s["nodes"].as_array().cloned().unwrap_or_default();
    let Some(n) = nodes.iter().find(|n| n["fqdn"] == A) else { return (Vec::new(), false) };
    let endpoints =
        n["endpoints"].as_array().map(|e| e.iter().filter_map(|x| x["addr"].as_str().map(str::to_string)).collect());
    (endpoints.unwrap_or_default(), n["via_ns"] == Value::Bool(true))
}

/// (c) Box a, behind an IPv4 NAT and kept reachable by the NS, moves to an IPv6-only
/// network by link state alone: eth0 goes down with its address kept, eth1 comes up with
/// 2001:db8:5::2 and a default route. Box b has IPv4 only, so the tunnel goes through the
/// dual-stack RS. Then back: eth1 down (its address kept), eth0 up. The stream continues
/// both times, and afterwards the DC holds no IPv6 endpoint of box a and reaches it
/// through the NS again.
#[test]
fn ipv4_nat_to_ipv6_only_and_back_by_link_state_keeps_the_stream() {
    let Some(mut d) = lab("moves-family", [Access::Nat(NatKind::PortRestricted), Access::Global4]) else { return };
    let a = d.boxes[0].ns.clone();
    d.lab.step("box a: eth1 down, with 2001:db8:5::2/64 kept across downs");
    for k in ["all", "default", "eth1"] {
        d.lab.sysctl(&a, &format!("net.ipv6.conf.{k}.keep_addr_on_down"), "1").unwrap();
    }
    ip_a(&d, &["link", "set", "eth1", "down"]);
    ip_a(&d, &["addr", "add", "2001:db8:5::2/64", "dev", "eth1", "nodad"]);
    let _st = d
        .up_with(|_, i, c| {
            if i == 0 {
                c["keepalive"] = "ns".into();
                c["dns"]["upstream"] = serde_json::json!(["192.0.2.53:53", "[2001:db8:2::53]:53"]);
            }
        })
        .unwrap();
    assert!(d.lab.wait_for(10, || d.status(0).is_some_and(|s| s["notifications_ready"] == true)), "a uses the NS");
    assert!(d.lab.wait_for(10, || dc_view_of_a(&d).1), "the DC reaches a through the NS: {:?}", dc_view_of_a(&d));
    // eth1 is down: its IPv6 address is no way out (checked at the end, so that an agent
    // that lists it still shows what the moves do to the stream).
    let before = local_addrs(&d, 0);
    d.echo_server(1, "echo", "TCP4-LISTEN:7000,reuseaddr,fork").unwrap();
    let stream = LineStream::start(&mut d, 0, &format!("TCP4:{B}:7000")).unwrap();
    assert!(d.lab.wait_for(15, || stream.count() >= 20), "the stream runs");

    d.lab.step("box a: eth0 down (198.19.10.2 kept), eth1 up with its IPv6 default route");
    let moved = Instant::now();
    ip_a(&d, &["link", "set", "eth0", "down"]);
    ip_a(&d, &["link", "set", "eth1", "up"]);
    ip_a(&d, &["-6", "route", "add", "default", "via", "2001:db8:5::1", "dev", "eth1"]);
    let away =
        stream.stall_after(&d, moved, "IPv4 NAT -> IPv6 only (link down)").expect("the stream goes on after the move");
    assert!(d.wait_path(0, B, "relay", 10), "relayed across the families");
    assert_eq!(local_addrs(&d, 0), vec!["[2001:db8:5::2]:4500".to_string()], "only the IPv6 address is usable");

    d.lab.step("box a: eth1 down (2001:db8:5::2 kept), eth0 up with its IPv4 default route");
    let back_at = Instant::now();
    ip_a(&d, &["link", "set", "eth1", "down"]);
    ip_a(&d, &["link", "set", "eth0", "up"]);
    ip_a(&d, &["route", "add", "default", "via", "198.19.10.1", "dev", "eth0"]);
    let back = stream
        .stall_after(&d, back_at, "IPv6 only -> IPv4 NAT (link down)")
        .expect("the stream goes on after the move");
    let end = stream.finish(&mut d);
    assert!(end.complete(), "every line came back once, in order: {:?}", end.exit);
    assert_eq!(local_addrs(&d, 0), vec!["198.19.10.2:4500".to_string()], "the IPv6 address is on a dead link");
    let ok = d.lab.wait_for(10, || {
        let (endpoints, via_ns) = dc_view_of_a(&d);
        via_ns && !endpoints.is_empty() && endpoints.iter().all(|e| !e.contains("2001:db8:5::"))
    });
    assert!(ok, "the DC reaches a through the NS again, with no IPv6 endpoint: {:?}", dc_view_of_a(&d));
    assert_eq!(before, vec!["198.19.10.2:4500".to_string()], "before the moves eth1 was down: not usable");
    assert!(away <= STALL_BUDGET, "to IPv6 only: pause {away:?} over {STALL_BUDGET:?}");
    assert!(back <= STALL_BUDGET, "back to the NAT: pause {back:?} over {STALL_BUDGET:?}");
}
