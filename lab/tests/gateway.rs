//! Ordinary hosts through the RS (issue 17, part 1): a box reaches a host that runs no
//! NTMobile through the RS as its gateway, and keeps its TCP connections to it across
//! moves, since the host only ever sees the RS's address.
//!
//! The ordinary host `host.plain.example` (198.19.80.80, a namespace of its own behind the
//! router) runs an iperf3 server and busybox's web server. DC-A offers its boxes the
//! gateway for `plain.example` with real addresses in 198.19.80.0/24 and synthetic ones in
//! 198.18.100.0/24; the RS has its TUN device with the internal prefix 100.100.0.0/24,
//! which nftables in the server namespace translates to the RS's address (the operator's
//! part, as docs/servers.md shows it). DC-B has no gateway. Box a sits behind a NAT and
//! moves to its second uplink and back while it downloads. Needs root, nft, NSD, dig,
//! iperf3, curl and busybox; the binaries come from `cargo build --release --workspace
//! --bins` (or `NTM_BIN_DIR`). The stalls are printed (`--nocapture`).

#![allow(clippy::print_stderr)]

use ntm_lab::deploy::{or_skip, payload, read_status, Access, Deployment, NatKind};
use ntm_lab::tools_or_skip;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const HOST: &str = "host.plain.example";
const HOST_IP: &str = "198.19.80.80";
const RS_IP: &str = "192.0.2.30";
/// The longest pause a move may cause in the download (as for tunnels between boxes,
/// issue 15, plus the iperf3 report's granularity of 100 ms).
const STALL_BUDGET: Duration = Duration::from_millis(1100);

/// The RS's status.
fn rs_status(d: &Deployment) -> Value {
    read_status(&d.lab.dir().join("rs.sock")).unwrap_or_default()
}

/// Box a moves from the NAT on eth0 to its uplink eth1 (`away`), or back.
fn move_a(d: &Deployment, away: bool) {
    let a = d.boxes[0].ns.clone();
    let (from, to) = if away {
        (("eth0", "198.19.10.2/24"), ("eth1", "198.19.5.2/24", "198.19.5.1"))
    } else {
        (("eth1", "198.19.5.2/24"), ("eth0", "198.19.10.2/24", "198.19.10.1"))
    };
    d.lab.del_addr(&a, from.0, from.1).expect("old address goes");
    d.lab.addr(&a, to.0, to.1).expect("new address comes");
    d.lab.route(&a, &["default", "via", to.2]).expect("new default route");
}

/// The longest run of iperf3 intervals (100 ms each) in which nothing arrived, and the
/// bytes received in all.
fn longest_silence(report: &Value) -> (Duration, f64) {
    let (mut longest, mut run) = (0.0f64, 0.0f64);
    for i in report["intervals"].as_array().cloned().unwrap_or_default() {
        let s = &i["sum"];
        let secs = s["end"].as_f64().unwrap_or(0.0) - s["start"].as_f64().unwrap_or(0.0);
        if s["bytes"].as_f64().unwrap_or(0.0) == 0.0 {
            run += secs;
            longest = longest.max(run);
        } else {
            run = 0.0;
        }
    }
    (Duration::from_secs_f64(longest), report["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0))
}

#[test]
fn a_box_keeps_its_download_from_an_ordinary_host_through_the_rs_across_moves() {
    let label = "gateway";
    if !tools_or_skip(label, &["iperf3", "curl", "busybox", "nft", "dig"]) {
        return;
    }
    let Some(mut d) =
        or_skip(Deployment::start_with(label, [Access::Nat(NatKind::PortRestricted), Access::Global4]), label)
    else {
        return;
    };
    let (srv, rtr) = (d.srv.clone(), d.rtr.clone());
    d.lab.step("ordinary host 198.19.80.80 behind the router");
    let host = d.lab.netns("host", false).unwrap();
    d.lab.link(&host, "eth0", &rtr, "h0").unwrap();
    d.lab.addr(&rtr, "h0", "198.19.80.1/24").unwrap();
    d.lab.addr(&host, "eth0", &format!("{HOST_IP}/24")).unwrap();
    d.lab.route(&host, &["default", "via", "198.19.80.1"]).unwrap();

    d.lab.step("RS: gateway TUN 100.100.0.0/24, forwarding, translated to the RS's address");
    d.lab.sysctl(&srv, "net.ipv4.ip_forward", "1").unwrap();
    d.lab
        .nft(
            &srv,
            "table ip ntm-gateway {\n chain post {\n  type nat hook postrouting priority srcnat; policy accept;\n  \
             ip saddr 100.100.0.0/24 oifname \"eth0\" snat to 192.0.2.30\n }\n}\n",
        )
        .unwrap();
    d.restart_server_with("rs", |c| c["gateway"] = json!({"internal": "100.100.0.0/24"})).unwrap();
    d.restart_server_with("dc-a", |c| {
        c["gateway"] = json!({"names": ["plain.example"], "prefixes": ["198.19.80.0/24"], "pool": "198.18.100.0/24"});
    })
    .unwrap();
    let _st = d.up_with(|_, _, _| {}).unwrap();

    // DC-B has no gateway: its box resolves the host as ordinary DNS, as before.
    assert_eq!(d.dig(1, HOST, "A"), HOST_IP, "without a gateway policy nothing changes");
    // Box a gets a synthetic address routed into its tunnel.
    let synthetic = d.dig(0, HOST, "A");
    assert!(synthetic.starts_with("198.18.100."), "box a gets a synthetic address for {HOST}: {synthetic:?}");
    assert_eq!(d.dig(0, HOST, "AAAA"), "", "the gateway is IPv4 only: no AAAA");
    // An ordinary name the policy does not cover (its address is outside the prefixes)
    // falls back to ordinary DNS.
    assert_eq!(d.dig(0, "www.plain.example", "A"), "192.0.2.80", "outside the policy: ordinary DNS");
    let t = d.tunnel(0, HOST).expect("box a has a tunnel to the ordinary host");
    assert_eq!(t["path"], "gateway", "{t}");
    assert!(t["remote"].as_str().is_some_and(|r| r.starts_with(RS_IP)), "through the RS: {t}");

    d.lab.step("ordinary host: iperf3 server (one test at a time) and busybox httpd with a 24 MB file");
    let web = d.lab.dir().join("www");
    std::fs::create_dir_all(&web).unwrap();
    let big = payload(24 << 20, 17);
    std::fs::write(web.join("big"), &big).unwrap();
    let web_dir = web.to_str().unwrap().to_string();
    d.lab.spawn(&host, "httpd-host", &["busybox", "httpd", "-f", "-p", "8080", "-h", &web_dir], &[]).unwrap();

    // iperf3 from the host to box a for 8 s, box a moving after 3 s: to eth1, then back
    // behind its NAT. Each time the same connections carry on.
    let mut stalls = Vec::new();
    for (away, what) in [(true, "NAT on eth0 -> eth1 (198.19.5.2)"), (false, "eth1 -> NAT on eth0")] {
        let tag = if away { "away" } else { "back" };
        let server = d.lab.spawn(&host, &format!("iperf-host-{tag}"), &["iperf3", "-s", "-1", "-J"], &[]).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let a = d.boxes[0].ns.clone();
        let cmd = ["iperf3", "-c", HOST, "-R", "-t", "8", "-i", "0.1", "-b", "40M", "-J", "--rcv-timeout", "5000"];
        let client = d.lab.spawn(&a, &format!("iperf-a-{tag}"), &cmd, &[]).unwrap();
        std::thread::sleep(Duration::from_secs(3));
        d.lab.step(format!("box a moves: {what}, mid-transfer"));
        move_a(&d, away);
        assert!(d.lab.proc(client).wait(30).is_some(), "iperf3 ends");
        let log = d.lab.proc(client).log_text();
        let report: Value = serde_json::from_str(&log[log.find('{').unwrap_or(0)..]).expect("iperf3 -J output");
        assert!(report["error"].is_null(), "iperf3 through the gateway ({what}): {}", report["error"]);
        let (stall, bytes) = longest_silence(&report);
        eprintln!("gateway, box moves {what} (iperf3 -R, 40 Mbit/s): longest silence {stall:?}, {bytes} bytes");
        assert!(bytes > 20e6, "the transfer ran: {bytes} bytes");
        stalls.push((what, stall));
        // The host saw the RS, never the box.
        assert!(d.lab.proc(server).wait(10).is_some(), "the iperf3 server ends after its test");
        let slog = d.lab.proc(server).log_text();
        let sreport: Value = serde_json::from_str(&slog[slog.find('{').unwrap_or(0)..]).expect("iperf3 server -J");
        let peers: Vec<String> = sreport["start"]["connected"]
            .as_array()
            .map(|c| c.iter().filter_map(|x| x["remote_host"].as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        assert!(!peers.is_empty() && peers.iter().all(|p| p == RS_IP), "the host sees only the RS: {peers:?}");
    }

    // A download from the web server, box a moving to eth1 in the middle: curl does not
    // reconnect, so the whole file means the same connection carried it. The host's link
    // is a 40 Mbit/s bottleneck (tc, as a WAN link would be), so that the file crosses
    // the network during the move: unpaced, it would be at the box within a second, in
    // socket buffers (and curl's --limit-rate only slows curl's reading of them).
    let a = d.boxes[0].ns.clone();
    let tbf =
        ["tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "40mbit", "burst", "64kb", "latency", "50ms"];
    d.lab.exec(&host, &tbf).unwrap();
    let out = d.lab.dir().join("big.out");
    let url = format!("http://{HOST}:8080/big");
    let o = out.to_str().unwrap().to_string();
    let curl = ["curl", "-s", "-f", "-m", "40", "-o", &o, &url];
    let dl = d.lab.spawn(&a, "curl-a", &curl, &[]).unwrap();
    // The download runs: box a moves once a good part of the file has arrived.
    let size = || std::fs::metadata(&out).map_or(0, |m| m.len());
    assert!(d.lab.wait_for(15, || size() >= 4 << 20), "the download runs before box a moves ({} bytes)", size());
    let to_box = |d: &Deployment| rs_status(d)["gateway"]["to_boxes"].as_u64().unwrap_or(0);
    let to_box_at_move = to_box(&d);
    d.lab.step("box a moves to eth1, mid-download");
    let moved = Instant::now();
    move_a(&d, true);
    // The longest time the file did not grow after the move (sampled every 10 ms).
    let (mut last, mut grew_at, mut pause) = (size(), moved, Duration::ZERO);
    while d.lab.proc(dl).alive() && moved.elapsed() < Duration::from_secs(45) {
        std::thread::sleep(Duration::from_millis(10));
        let now = size();
        if now != last {
            pause = pause.max(grew_at.elapsed());
            (last, grew_at) = (now, Instant::now());
        }
    }
    eprintln!("gateway, box moves to eth1 (curl, 40 Mbit/s link): longest pause in the download {pause:?}");
    assert_eq!(d.lab.proc(dl).wait(45), Some(0), "curl completes: {}", d.lab.proc(dl).log_text());
    // Much of the file crossed the network after the move (not only out of buffers at
    // the box): the RS sent box a thousands of datagrams more.
    let after = to_box(&d) - to_box_at_move;
    eprintln!("gateway: the RS sent box a {after} datagrams after the move");
    assert!(after >= 3000, "the download went on through the RS after the move: {after} datagrams");
    assert!(std::fs::read(&out).unwrap_or_default() == big, "the whole file, byte for byte");

    // The RS: one session pair's mapping for the host, nothing dropped as not allowed.
    let s = rs_status(&d);
    let g = &s["gateway"];
    let sessions = g["sessions"].as_array().cloned().unwrap_or_default();
    assert!(!sessions.is_empty() && sessions.iter().all(|x| x["real"] == HOST_IP), "{g}");
    assert!(g["to_hosts"].as_u64().unwrap_or(0) > 1000 && g["to_boxes"].as_u64().unwrap_or(0) > 10_000, "{g}");
    assert_eq!(g["dropped_not_allowed"], 0, "nothing the box sent was refused: {g}");
    eprintln!("RS gateway: {g}");

    // Nothing else is reachable through the gateway: an address of the synthetic pool the
    // DC never gave out has no tunnel, and a packet into the tunnel from any source but
    // the box's virtual address (a second address on its TUN device) is dropped and
    // counted by the RS.
    assert!(!d.ping(0, "198.18.100.200", 2), "no tunnel to an address the DC did not give");
    d.lab.exec(&a, &["ip", "addr", "add", "198.18.1.99/32", "dev", "ntm0"]).unwrap();
    let spoofed =
        d.lab.try_exec(&a, &["ping", "-4", "-c", "3", "-i", "0.2", "-W", "1", "-I", "198.18.1.99", &synthetic]);
    assert!(!spoofed.is_ok_and(|o| o.status.success()), "no answer to another source");
    let dropped = || rs_status(&d)["gateway"]["dropped_not_allowed"].as_u64().unwrap_or(0);
    assert!(d.lab.wait_for(5, || dropped() >= 3), "the RS drops and counts them: {}", dropped());
    for (what, stall) in stalls {
        assert!(stall <= STALL_BUDGET, "{what}: silence {stall:?} over {STALL_BUDGET:?}");
    }
}
