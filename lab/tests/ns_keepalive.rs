//! The NS keepalive interval learned behind a NAT that forgets idle TCP sooner than the
//! NS's interval (issue 15, item 6), end to end: the release binaries in network
//! namespaces, box b behind a Linux NAT whose conntrack drops an idle established TCP
//! connection after 12 s, and an NS asking for a keepalive every 30 s (the hour and the
//! 30-minute NATs of the field, scaled down). Box b must learn an interval that holds,
//! show it in its status, and stay reachable through the NS after idling past the NAT's
//! timeout. Needs root, nft, NSD, dig, ping and socat; the binaries come from
//! `cargo build --release --workspace --bins`.

#![allow(clippy::print_stderr)]

use ntm_lab::deploy::{or_skip, payload, Access, Deployment, NatKind};
use ntm_lab::tools_or_skip;
use serde_json::Value;
use std::time::{Duration, Instant};

const B: &str = "b.zone-b.test";
/// The NS's interval, and how long box b's NAT keeps an idle TCP connection.
const NS_INTERVAL: u64 = 30;
const NAT_TCP_TIMEOUT: u64 = 12;

fn keepalive(s: &Value) -> (u64, u64, bool) {
    let k = &s["ns_keepalive"];
    (k["interval_secs"].as_u64().unwrap_or(0), k["max_secs"].as_u64().unwrap_or(0), k["settled"] == true)
}

#[test]
fn a_box_behind_a_nat_forgetting_idle_tcp_learns_its_interval_and_stays_reachable() {
    let label = "ns-keepalive";
    if !tools_or_skip(label, &["ping", "nft", "dig", "socat"]) {
        return;
    }
    let Some(mut d) =
        or_skip(Deployment::start_with(label, [Access::Global4, Access::Nat(NatKind::PortRestricted)]), label)
    else {
        return;
    };
    d.lab.step(format!("the NS asks for a keepalive every {NS_INTERVAL} s"));
    let path = d.lab.dir().join("ns.json");
    let mut ns: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    ns["keepalive_interval_secs"] = NS_INTERVAL.into();
    std::fs::write(&path, serde_json::to_vec_pretty(&ns).unwrap()).unwrap();
    d.restart_server("ns").unwrap();
    d.lab.step(format!("box b's NAT forgets idle established TCP after {NAT_TCP_TIMEOUT} s"));
    let nat = d.boxes[1].nat.clone().expect("box b is behind a NAT");
    d.lab.sysctl(&nat, "net.netfilter.nf_conntrack_tcp_timeout_established", &NAT_TCP_TIMEOUT.to_string()).unwrap();
    let st = d.up_with_b_kept_by_ns().expect("b registers and uses the NS");
    let b_v4 = st[1]["virtual_ipv4"].as_str().unwrap_or_default().to_string();
    let start = Instant::now();
    assert_eq!(keepalive(&st[1]).1, NS_INTERVAL, "the NS's interval is the longest: {}", st[1]["ns_keepalive"]);

    d.lab.step("box b learns an interval its NAT holds");
    // The first probe (30 s) fails and is noticed at about 37 s; then 10 s (the floor)
    // holds and 15 s fails (noticed at about 70 s), and the interval settles at 10 s.
    let learned = d.lab.wait_for(150, || {
        d.status(1).is_some_and(|s| {
            let (interval, _, settled) = keepalive(&s);
            settled && interval > 0 && interval < NAT_TCP_TIMEOUT && s["notifications_ready"] == true
        })
    });
    let s = d.status(1).unwrap_or_default();
    assert!(learned, "box b settles below the NAT's timeout: {}", s["ns_keepalive"]);
    let (interval, _, _) = keepalive(&s);
    eprintln!("learned NS keepalive interval: {interval} s after {:?}", start.elapsed());
    let log = d.lab.proc(d.boxes[1].proc.unwrap()).log_text();
    assert!(log.contains("went unanswered"), "box b noticed that a longer interval failed");

    d.lab.step("box b idles past its NAT's TCP timeout; box a reaches it through the NS");
    d.echo_server(1, "echo-b", "TCP4-LISTEN:7000,reuseaddr,fork").unwrap();
    // Idle on purpose: the NAT's UDP mapping (3 s) and any TCP mapping not kept alive
    // (12 s) are gone; only the NS connection, kept at the learned interval, is left.
    std::thread::sleep(Duration::from_secs(NAT_TCP_TIMEOUT + 5));
    assert!(d.status(1).is_some_and(|s| s["notifications_ready"] == true));
    let data = payload(2000, 6);
    let got = d.tcp_echo(0, &format!("TCP4:{B}:7000"), &data, "after-idle");
    assert!(
        got == data,
        "a new TCP connection from box a to the idle box b works ({} of {} bytes)",
        got.len(),
        data.len()
    );
    assert!(d.ping(0, &b_v4, 3), "box a pings box b");
    // Idle traffic per interval: one NsProbe and one NsKeepaliveAck frame (16-byte header,
    // 8- and 4-byte bodies, 16-byte tag, 2-byte length) in two segments, and their two
    // TCP acknowledgements: four times 52 bytes of IPv4 and TCP headers.
    let per_cycle = 42 + 38 + 4 * 52;
    eprintln!(
        "idle traffic at {interval} s: {} bytes/day (scaled: at {} s for an hourly NS, {} bytes/day)",
        86_400 / interval * per_cycle,
        interval * (3600 / NS_INTERVAL),
        86_400 / (interval * (3600 / NS_INTERVAL)) * per_cycle
    );
}
