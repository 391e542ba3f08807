//! The NAT scenarios of issue 5, end to end: the release binaries in network namespaces,
//! NAT routers made with nftables (four behaviours, and a carrier-grade NAT in front of
//! a home NAT), IPv4-only and IPv6-only access networks, NSD, and real applications in
//! the boxes (ping, socat TCP streams, curl against an HTTP server on the other box's
//! virtual address, found by name). Needs root, nft, NSD, dig, socat, ping, curl and
//! tcpdump; the binaries come from `cargo build --release --workspace --bins`.
//!
//! A failing scenario panics inside the lab, whose report names the steps and prints every
//! daemon's log, and keeps the lab directory with the packet captures.

#![allow(clippy::print_stderr)]

use ntm_lab::deploy::{or_skip, payload, Access, Deployment, NatKind};
use ntm_lab::stream::LineStream;
use ntm_lab::{have, tools_or_skip};
use serde_json::Value;
use std::time::{Duration, Instant};

const A: &str = "a.zone-a.test";
const B: &str = "b.zone-b.test";

fn lab(label: &str, access: [Access; 2]) -> Option<Deployment> {
    if !tools_or_skip(label, &["socat", "ping", "curl", "nft"]) {
        return None;
    }
    let mut d = or_skip(Deployment::start_with(label, access), label)?;
    // Captures of the links involved, kept with the report if the scenario fails.
    let srv = d.srv.clone();
    let _ = d.lab.capture(&srv, "eth0", "core");
    for i in 0..2 {
        let ns = d.boxes[i].ns.clone();
        let _ = d.lab.capture(&ns, "eth0", &format!("box-{}", ns.label));
    }
    Some(d)
}

fn v4(s: &Value) -> String {
    s["virtual_ipv4"].as_str().unwrap_or_default().to_string()
}

fn v6(s: &Value) -> String {
    s["virtual_ipv6"].as_str().unwrap_or_default().to_string()
}

/// Box `from` reaches the other box by name: DNS hook, ping, a TCP echo both ways and an
/// HTTP fetch. Returns the tunnel's path as box `from` sees it.
fn talk(d: &mut Deployment, from: usize, st: &[Value; 2], tag: &str) -> String {
    let to = 1 - from;
    let (peer, peer_v4) = (if to == 0 { A } else { B }, v4(&st[to]));
    d.lab.step(format!("{tag}: box {from} resolves {peer} through its DNS hook"));
    assert_eq!(d.dig(from, peer, "A"), peer_v4, "{tag}: the hook answers the peer's virtual address");
    d.lab.step(format!("{tag}: ping, TCP echo, HTTP"));
    assert!(d.ping(from, &peer_v4, 3), "{tag}: ping over the virtual address");
    d.echo_server(to, &format!("{tag}-echo"), "TCP4-LISTEN:7000,reuseaddr,fork").unwrap();
    let data = payload(64 * 1024, 11);
    let back = d.tcp_echo(from, &format!("TCP4:{peer}:7000"), &data, tag);
    assert!(back == data, "{tag}: 64 KiB echoed intact ({} bytes back)", back.len());
    d.http_server(to, 8080, &format!("hello from {peer}")).unwrap();
    let body = d.curl(from, &format!("http://{peer}:8080/"));
    assert_eq!(body, format!("hello from {peer}"), "{tag}: curl by name");
    let t = d.tunnel(from, peer).unwrap_or_else(|| panic!("{tag}: a live tunnel"));
    t["path"].as_str().unwrap_or_default().to_string()
}

#[test]
fn mn_behind_nat_reaches_a_global_cn_directly() {
    let Some(mut d) = lab("nat-mn", [Access::Nat(NatKind::PortRestricted), Access::Global4]) else { return };
    let st = d.up_with(|_, _, _| {}).unwrap();
    assert_eq!(talk(&mut d, 0, &st, "mn-nat"), "direct");
}

#[test]
fn a_global_mn_reaches_a_cn_behind_nat_which_opens_the_tunnel() {
    let Some(mut d) = lab("nat-cn", [Access::Global4, Access::Nat(NatKind::PortRestricted)]) else { return };
    let st = d.up_with(|_, _, _| {}).unwrap();
    assert_eq!(talk(&mut d, 0, &st, "cn-nat"), "direct");
    let log = d.lab.proc(d.boxes[1].proc.unwrap()).log_text();
    assert!(log.contains("Cn Initiate"), "the CN behind the NAT sends the Tunnel Request");
}

/// Every pair of NAT behaviours: the tunnel starts through the RS, then route
/// optimization probes the direct path; it moves there when hole punching can work, a
/// symmetric NAT facing a port-restricted one through the DCs' mapping test and the search
/// of ports (birthday.rs), and stays relayed when both NATs are symmetric. Traffic flows in
/// every case.
#[test]
fn both_behind_nat_every_pair_of_behaviours() {
    let Some(mut d) = lab("nat-pairs", [Access::Nat(NatKind::FullCone), Access::Nat(NatKind::FullCone)]) else {
        return;
    };
    let mut results = Vec::new();
    let mut round = 0u16;
    for (x, ka) in NatKind::ALL.iter().enumerate() {
        for kb in &NatKind::ALL[x..] {
            round += 1;
            // A fresh port each round: no conntrack entry of an earlier round applies.
            let port = 4500 + round;
            d.set_nat(0, *ka, port).unwrap();
            d.set_nat(1, *kb, port).unwrap();
            let st = d
                .up_with(|_, _, c| {
                    c["udp_port"] = port.into();
                })
                .unwrap();
            let tag = format!("{ka:?}-{kb:?}");
            d.lab.step(format!("{tag}: a resolves b"));
            assert_eq!(d.dig(0, B, "A"), v4(&st[1]), "{tag}");
            assert!(d.ping(0, &v4(&st[1]), 3), "{tag}: ping");
            let punchable = !matches!((ka, kb), (NatKind::Symmetric, NatKind::Symmetric));
            let want = if punchable { "direct" } else { "relay" };
            let settled = d.wait_path(0, B, want, 10);
            // Whatever the path, a TCP echo goes through.
            d.echo_server(1, &format!("echo-{round}"), &format!("TCP4-LISTEN:{},reuseaddr,fork", 7000 + round))
                .unwrap();
            let data = payload(16 * 1024, u64::from(round));
            let back = d.tcp_echo(0, &format!("TCP4:{B}:{}", 7000 + round), &data, &tag);
            let path = d.tunnel(0, B).map(|t| t["path"].as_str().unwrap_or("").to_string()).unwrap_or_default();
            eprintln!("{tag}: path {path} (expected {want}), echo {}", if back == data { "ok" } else { "FAILED" });
            results.push((tag.clone(), path.clone(), want, back == data));
            assert!(back == data, "{tag}: TCP echo intact");
            assert!(settled, "{tag}: path {path}, expected {want}");
            d.stop_agent(0);
            d.stop_agent(1);
        }
    }
    eprintln!("NAT pairs: {results:?}");
}

#[test]
fn double_nat_behind_a_cgn() {
    let Some(mut d) = lab("nat-double", [Access::DoubleNat(NatKind::PortRestricted), Access::Global4]) else {
        return;
    };
    let st = d.up_with(|_, _, _| {}).unwrap();
    assert_eq!(talk(&mut d, 0, &st, "double-nat"), "direct");
    assert_eq!(talk(&mut d, 1, &st, "to-double-nat"), "direct");
}

/// An IPv4-only box and an IPv6-only box: only the RS (dual stack) can join them. The
/// capture at the server side shows no plaintext of the stream.
#[test]
fn ipv4_only_to_ipv6_only_through_the_relay_which_sees_only_ciphertext() {
    if !have("tcpdump") {
        assert!(std::env::var_os("NTM_REQUIRE_LAB").is_none(), "tcpdump is missing");
        return;
    }
    let Some(mut d) = lab("v4-v6", [Access::Global4, Access::Global6]) else { return };
    let srv = d.srv.clone();
    d.lab.capture(&srv, "eth0", "relay-port").unwrap();
    let st = d.up_with(|_, _, _| {}).unwrap();
    assert!(st[1]["local_addrs"].to_string().contains("2001:db8:b::2"), "{}", st[1]);
    assert_eq!(talk(&mut d, 0, &st, "v4-to-v6"), "relay");
    assert!(d.ping(0, &v6(&st[1]), 3), "virtual IPv6 over the relay");
    assert!(d.ping(1, &v4(&st[0]), 3), "and back");
    // A recognisable plaintext through the relay.
    let marker = b"NTMOBILE-PLAINTEXT-MARKER-0123456789".repeat(200);
    d.echo_server(1, "marker-echo", "TCP4-LISTEN:7100,reuseaddr,fork").unwrap();
    assert!(d.tcp_echo(0, &format!("TCP4:{B}:7100"), &marker, "marker") == marker);
    std::thread::sleep(Duration::from_millis(500));
    d.lab.stop_capture("relay-port");
    let pcap = std::fs::read(d.lab.dir().join("relay-port.pcap")).unwrap_or_default();
    assert!(pcap.len() > 10_000, "the capture holds the relayed stream ({} bytes)", pcap.len());
    let needle = b"NTMOBILE-PLAINTEXT";
    assert!(!pcap.windows(needle.len()).any(|w| w == needle), "no plaintext on the wire to and from the RS");
    // What the running RS holds while it relays: K_tun for the session and its keys with
    // the DCs, never K_tmp or K_mncn.
    let rs = ntm_lab::deploy::read_status(&d.lab.dir().join("rs.sock")).expect("RS status");
    let keys = rs["keys"].as_object().expect("the RS lists the key kinds it holds");
    assert!(keys.get("K_tun").and_then(Value::as_u64).unwrap_or(0) >= 1, "the RS holds K_tun: {keys:?}");
    assert!(!keys.contains_key("K_tmp") && !keys.contains_key("K_mncn"), "the RS holds no K_tmp or K_mncn: {keys:?}");
}

/// Both behind full-cone NATs: the tunnel starts relayed and moves to the direct path
/// while a TCP connection runs, without a reset or a lost byte.
#[test]
fn relay_to_direct_upgrade_keeps_a_tcp_connection() {
    let Some(mut d) = lab("upgrade", [Access::Nat(NatKind::FullCone), Access::Nat(NatKind::FullCone)]) else {
        return;
    };
    let st = d.up_with(|_, _, _| {}).unwrap();
    d.echo_server(1, "echo", "TCP4-LISTEN:7000,reuseaddr,fork").unwrap();
    let stream = LineStream::start(&mut d, 0, &format!("TCP4:{B}:7000")).unwrap();
    assert!(d.lab.wait_for(15, || stream.count() >= 20), "the stream runs");
    assert!(d.wait_path(0, B, "direct", 15), "the tunnel moves to the direct path");
    let n = stream.count();
    assert!(d.lab.wait_for(10, || stream.count() >= n + 20), "the stream goes on after the upgrade");
    let log = d.lab.proc(d.boxes[0].proc.unwrap()).log_text();
    let (relay_at, direct_at) = (log.find("up (Relay"), log.find("now Direct"));
    assert!(relay_at.is_some() && direct_at.is_some() && relay_at < direct_at, "relay first, then direct");
    finish(stream, &mut d);
    let _ = st;
}

/// Box a leaves its IPv4 network for an IPv6-only one during a TCP stream; box b has
/// IPv4 only, so the tunnel has to go through the RS afterwards. The stream survives and
/// the handover time is printed.
#[test]
fn a_move_from_ipv4_only_to_ipv6_only_keeps_the_stream() {
    let Some(mut d) = lab("move-v6", [Access::Global4, Access::Global4]) else { return };
    let st = d
        .up_with(|_, i, c| {
            if i == 0 {
                c["dns"]["upstream"] = serde_json::json!(["192.0.2.53:53", "[2001:db8:2::53]:53"]);
            }
        })
        .unwrap();
    d.echo_server(1, "echo", "TCP4-LISTEN:7000,reuseaddr,fork").unwrap();
    let stream = LineStream::start(&mut d, 0, &format!("TCP4:{B}:7000")).unwrap();
    assert!(d.lab.wait_for(15, || stream.count() >= 20), "the stream runs");
    let a = d.boxes[0].ns.clone();
    d.lab.step("box a: 198.51.100.2 goes, 2001:db8:5::2 (IPv6 only) comes");
    let moved = Instant::now();
    d.lab.del_addr(&a, "eth0", "198.51.100.2/24").unwrap();
    d.lab.addr(&a, "eth1", "2001:db8:5::2/64").unwrap();
    d.lab.route(&a, &["default", "via", "2001:db8:5::1"]).unwrap();
    let n = stream.count();
    assert!(d.lab.wait_for(30, || stream.count() >= n + 40), "the stream goes on after the move");
    let gap = stream.longest_gap_after(moved);
    eprintln!("move IPv4-only -> IPv6-only: longest pause in the stream {gap:?}");
    assert!(d.wait_path(0, B, "relay", 10), "relayed across the families");
    let s = d.status(0).unwrap();
    assert!(s["local_addrs"].to_string().contains("2001:db8:5::2"), "{}", s["local_addrs"]);
    finish(stream, &mut d);
    let _ = st;
}

/// Box b keeps itself reachable only by the NS's TCP connection; its NAT forgets UDP
/// mappings after 3 s. Well after that, box a resolves it: the DC reaches b through the
/// NS and the tunnel comes up.
#[test]
fn a_box_kept_only_by_the_ns_is_reachable_after_its_udp_mapping_expired() {
    let Some(mut d) = lab("ns-only", [Access::Global4, Access::Nat(NatKind::PortRestricted)]) else { return };
    let st = d.up_with_b_kept_by_ns().expect("b registers and uses the NS");
    d.lab.step("wait until b's UDP mapping has expired");
    std::thread::sleep(Duration::from_secs(6));
    let udp_out = d.status(1).unwrap()["counters"]["udp_out"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(d.status(1).unwrap()["counters"]["udp_out"].as_u64().unwrap(), udp_out, "b sends no UDP while idle");
    assert_eq!(talk(&mut d, 0, &st, "ns-only"), "direct");
}

/// DC, RS and NS restart while a relayed stream runs: traffic recovers.
#[test]
fn server_restarts_mid_stream() {
    let Some(mut d) = lab("restarts", [Access::Global4, Access::Global6]) else { return };
    let _st = d.up_with(|_, _, _| {}).unwrap();
    d.echo_server(1, "echo", "TCP4-LISTEN:7000,reuseaddr,fork").unwrap();
    let stream = LineStream::start(&mut d, 0, &format!("TCP4:{B}:7000")).unwrap();
    assert!(d.lab.wait_for(15, || stream.count() >= 20), "the stream runs (relayed)");
    for server in ["dc-a", "dc-b", "ns", "rs"] {
        let t = Instant::now();
        d.restart_server(server).unwrap();
        let n = stream.count();
        assert!(d.lab.wait_for(30, || stream.count() >= n + 20), "the stream recovers after {server} restarts");
        eprintln!("{server} restarted: stream flowing again {:?} after the restart began", t.elapsed());
    }
    finish(stream, &mut d);
}

/// 10% loss on every link of the core router: login, registration and the tunnel still
/// come up, and traffic flows. (Reordering needs tc netem, which this kernel lacks.)
#[test]
fn tunnels_come_up_with_ten_percent_loss_in_the_core() {
    let Some(mut d) = lab("loss", [Access::Nat(NatKind::PortRestricted), Access::Global4]) else { return };
    let rtr = d.rtr.clone();
    d.lab
        .nft(
            &rtr,
            "table inet ntmloss {\n\tchain lose { type filter hook forward priority filter; policy accept;\n\
             \t\tnumgen random mod 10 0 counter drop\n\t}\n}\n",
        )
        .unwrap();
    let st = d.up_with(|_, _, _| {}).unwrap();
    // The answer waits for the tunnel, whose set-up crosses the lossy core several
    // times; each lost message costs a retransmission timeout, so one 3 s try of dig
    // may not be enough (CI once saw "communications error ... timed out" before the
    // answer).
    assert_eq!(d.dig_tries(0, B, "A", 4), v4(&st[1]));
    assert!(d.ping(0, &v4(&st[1]), 10), "ping through the lossy core");
    let out = d.lab.exec(&rtr, &["nft", "list", "table", "inet", "ntmloss"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!text.contains("packets 0 "), "the core really dropped packets: {text}");
}

/// Ends the stream: every line came back once, in order, and the connection ended
/// cleanly (no reset: socat exits 0 after the half-close).
fn finish(stream: LineStream, d: &mut Deployment) {
    let end = stream.finish(d);
    assert!(end.complete(), "every line comes back once, in order: {:?}", end.lines);
    assert_eq!(end.exit, Some(0), "the TCP connection ended cleanly, never reset: {}", end.log);
}
