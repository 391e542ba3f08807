//! Paths narrower than 1500 bytes, where IP fragments are dropped (as many firewalls, NATs
//! and much of the IPv6 Internet do): the tunnel must carry full-size TCP segments anyway.
//! Before the agent learned path MTUs, its datagrams of up to 1500 bytes were cut into
//! fragments there and lost: pings and name look-ups worked, every TCP stream stalled.
//! Needs root, NSD, dig, nft, ping and socat; the binaries come from
//! `cargo build --release --workspace --bins`.

#![allow(clippy::print_stderr)]

use ntm_lab::deploy::{or_skip, payload, Access, Deployment, NatKind};
use ntm_lab::{tools_or_skip, Ns};
use serde_json::Value;
use std::time::Instant;

const NARROW: u16 = 1400;

/// Sets the MTU of both ends of a link.
fn narrow(d: &Deployment, ends: [(&Ns, &str); 2]) {
    d.set_mtu(NARROW, &ends).unwrap();
}

/// 1 MiB echoed over TCP by name from box `i` to the other box's echo server on port
/// 7000: every byte comes back.
fn echo_both_ways(d: &mut Deployment) {
    d.echo_server(0, "echo-a", "TCP4-LISTEN:7000,reuseaddr,fork").unwrap();
    d.echo_server(1, "echo-b", "TCP4-LISTEN:7000,reuseaddr,fork").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let data = payload(1024 * 1024, 3);
    for (i, target) in [(0, "TCP4:b.zone-b.test:7000"), (1, "TCP4:a.zone-a.test:7000")] {
        let t = Instant::now();
        let got = d.tcp_echo(i, target, &data, &format!("echo{i}"));
        eprintln!("box {i}: {} of {} bytes back in {:?}", got.len(), data.len(), t.elapsed());
        assert!(got == data, "box {i}: 1 MiB echoed over a path of {NARROW} bytes ({} bytes came back)", got.len());
    }
}

/// Box `i` reports the narrow path MTU to `peer` and answered its TCP with "too big";
/// its counters.
fn assert_learned(d: &Deployment, i: usize, peer: &str) -> Value {
    let (mtus, c) = d.path_mtus(i);
    eprintln!("box {i}: path MTUs {mtus:?}; counters {c}");
    assert!(mtus.contains(&(peer.to_string(), u64::from(NARROW))), "box {i} knows the path MTU to {peer}: {mtus:?}");
    assert!(c["too_big"].as_u64().unwrap() >= 1, "box {i} told its TCP to send less: {c}");
    c
}

/// Box b is behind a NAT whose uplink is narrow, and the router and the NAT drop
/// fragments. Box a learns the path MTU from the router's ICMP "fragmentation needed",
/// box b from its NAT's; each agent answers its applications' full-size packets with
/// ICMP "too big", and TCP goes on with smaller segments.
#[test]
fn a_narrow_uplink_behind_a_nat_that_drops_fragments() {
    let label = "pmtu-nat";
    if !tools_or_skip(label, &["socat", "ping", "dig", "nft"]) {
        return;
    }
    let Some(mut d) =
        or_skip(Deployment::start_with(label, [Access::Dual, Access::Nat(NatKind::PortRestricted)]), label)
    else {
        return;
    };
    let (rtr, nat) = (d.rtr.clone(), d.boxes[1].nat.clone().expect("box b's NAT"));
    d.lab.step(format!("the NAT's uplink (nat-b wan0, rtr b0) carries {NARROW} bytes; rtr and the NAT drop fragments"));
    narrow(&d, [(&nat, "wan0"), (&rtr, "b0")]);
    d.drop_fragments(&rtr).unwrap();
    d.drop_fragments(&nat).unwrap();
    let st = d.up_with(|_, _, _| {}).unwrap();
    let b4 = st[1]["virtual_ipv4"].as_str().unwrap().to_string();
    assert_eq!(d.dig(0, "b.zone-b.test", "A"), b4);
    // Pings of 1420 bytes without Don't Fragment first (as a host sends a big UDP
    // datagram: fragments of the TUN MTU, none of them with Don't Fragment), before any
    // ICMP "too big" from the agent taught box a's kernel a smaller size: the agent cuts
    // them again, as a router would, and box b's kernel puts them together. The first
    // one is lost (it teaches the agent the path MTU).
    d.lab.step("pings of 1420 bytes without Don't Fragment");
    let a = d.boxes[0].ns.clone();
    let ping = d
        .lab
        .try_exec(&a, &["ping", "-4", "-M", "dont", "-s", "1392", "-c", "4", "-i", "0.3", "-W", "2", &b4])
        .unwrap();
    let text = String::from_utf8_lossy(&ping.stdout).to_string();
    let replies = text.matches("bytes from").count();
    assert!(replies >= 2, "unfragmentable pings came back: {text}");
    let (_, c) = d.path_mtus(0);
    assert!(c["fragmented"].as_u64().unwrap() >= 1, "box a cut packets without Don't Fragment: {c}");
    echo_both_ways(&mut d);
    for (i, peer) in [(0, "203.0.113.2"), (1, "198.51.100.2")] {
        let c = assert_learned(&d, i, peer);
        assert!(c["icmp_errors"].as_u64().unwrap() >= 1, "box {i} heard the ICMP error: {c}");
    }
    eprintln!("fragments dropped: rtr {}, NAT {}", d.fragments_dropped(&rtr), d.fragments_dropped(&nat));
}

/// Box b's own link is narrow (as on PPPoE), the tunnel runs over IPv6 and the router
/// drops fragments. Box b knows the MTU from its interface (no ICMP comes), box a learns
/// it from the router's ICMPv6 "packet too big".
#[test]
fn a_narrow_own_link_over_ipv6() {
    let label = "pmtu-v6";
    if !tools_or_skip(label, &["socat", "ping", "dig", "nft"]) {
        return;
    }
    let Some(mut d) = or_skip(Deployment::start_with(label, [Access::Dual, Access::Dual]), label) else {
        return;
    };
    let (rtr, b) = (d.rtr.clone(), d.boxes[1].ns.clone());
    d.lab.step(format!("box b's link (b eth0, rtr b0) carries {NARROW} bytes; rtr drops fragments"));
    narrow(&d, [(&b, "eth0"), (&rtr, "b0")]);
    d.drop_fragments(&rtr).unwrap();
    let st = d.up_with(|_, _, _| {}).unwrap();
    let b4 = st[1]["virtual_ipv4"].as_str().unwrap().to_string();
    assert_eq!(d.dig(0, "b.zone-b.test", "A"), b4);
    echo_both_ways(&mut d);
    let tunnel = d.tunnel(0, "b.zone-b.test").expect("a's tunnel to b");
    assert!(tunnel["remote"].as_str().unwrap_or_default().starts_with("[2001:db8:b::2]"), "over IPv6: {tunnel}");
    for (i, peer) in [(0, "2001:db8:b::2"), (1, "2001:db8:a::2")] {
        assert_learned(&d, i, peer);
    }
    eprintln!("fragments dropped: rtr {}", d.fragments_dropped(&rtr));
}
