//! The NTMobile demo in the simulator: a whole deployment (AS, two DCs with their DNS
//! zones, a relay, a notification server) and three boxes behind different NATs, narrated
//! step by step with virtual-time measurements.
//!
//! Run: `./scripts/demo.sh` (or `cargo run --release -p ntm-sim --example demo -- --seed 7`).

// A narrating example: its output is the point.
#![allow(clippy::print_stdout)]

use ntm_proto::engine::node::{Node, PathKind};
use ntm_proto::engine::rs::Rs;
use ntm_proto::time::{Duration, Instant};
use ntm_proto::wire::registration::KeepaliveMethod;
use ntm_sim::deploy::*;
use ntm_sim::{HostId, NatConfig, RealmConfig};
use std::net::SocketAddr;

fn main() {
    let seed = std::env::args().skip_while(|a| a != "--seed").nth(1).and_then(|s| s.parse().ok()).unwrap_or(2026);
    println!("NTMobile demo (simulated network, seed {seed}; times are virtual)\n");

    let mut d = Deployment::new(seed, Options::default());
    println!("Servers: AS as.example, DC dc.zone-a.example and dc.zone-b.example (found by the NS");
    println!("records of their zones), relay rs1.example, notification server ns1.example.\n");

    let device = NodeOpts { login: Login::Device, ..NodeOpts::default() };
    let home = d.home(|o| RealmConfig::v4_only(o).with_nat(NatConfig::port_restricted_cone()));
    let a = d.add_node("box-a.zone-a.example", home, &[ip("192.168.1.2")], device.clone());
    let lte = d.home(|o| RealmConfig::v4_only(o).with_nat(NatConfig::symmetric()));
    let b_opts = NodeOpts { keepalive: KeepaliveMethod::Ns, ..device.clone() };
    let b = d.add_node("box-b.zone-b.example", lte, &[ip("10.64.0.9")], b_opts);
    let office = d.home(|o| RealmConfig::v4_only(o).with_nat(NatConfig::full_cone()));
    let c = d.add_node("box-c.zone-b.example", office, &[ip("10.1.0.5")], device);

    println!("1. Three boxes log in with their device certificates and register.");
    for (h, what) in [
        (a, "home router, port-restricted NAT"),
        (b, "LTE gateway, symmetric CGN, NS keepalive"),
        (c, "office, full-cone NAT"),
    ] {
        let t0 = d.now();
        assert!(d.bring_up(h), "{} registers", d.sim.host_name(h));
        let ms = d.now().saturating_duration_since(t0).as_millis();
        let v = d.node(h).virtual_addrs().unwrap();
        let seen = registered_as(&mut d, h);
        println!("   {:<22} {what}", d.sim.host_name(h));
        println!("   {:<22} virtual {} / {}, DC saw {seen}, up in {ms} ms", "", v.v4, v.v6);
    }

    println!("\n2. box-b stays reachable through its NS while idle: 15 minutes pass.");
    d.sim.enable_capture(b);
    d.run_for(Duration::from_secs(900));
    let udp = d.sim.capture(b).iter().filter(|m| m.carrier == ntm_sim::Carrier::Udp).count();
    println!("   box-b sent {udp} UDP datagrams meanwhile; its NAT's UDP mapping has long expired.");

    println!("\n3. On box-a, an application looks up box-b.zone-b.example.");
    let t0 = d.now();
    let v = d.resolve(a, "box-b.zone-b.example").expect("resolved");
    let setup = d.now().saturating_duration_since(t0).as_millis();
    println!("   The DNS hook answers {} / {} after {setup} ms:", v.v4, v.v6);
    println!("   DC_MN found DC_CN by DNS, reached box-b through the NS, and both NATs block");
    println!(
        "   direct traffic (one is symmetric), so the tunnel runs via the relay: {:?}.",
        d.path(a, "box-b.zone-b.example").unwrap()
    );
    let ok = d.ping4(a, b, 1) && d.ping4(b, a, 2) && d.ping6(a, b, 3) && d.ping6(b, a, 4);
    println!("   IPv4 and IPv6 packets both ways over the virtual addresses: {}", verdict(ok));

    println!("\n4. box-a looks up box-c.zone-b.example (full-cone NAT).");
    let t0 = d.now();
    d.resolve(a, "box-c.zone-b.example").expect("resolved");
    println!(
        "   Tunnel up via the relay after {} ms; route optimization probes the direct path...",
        d.now().saturating_duration_since(t0).as_millis()
    );
    let switched = wait_for_direct(&mut d, a, "box-c.zone-b.example", t0);
    match switched {
        Some(ms) => println!("   ...direct after {ms} ms, and the relay session was released."),
        None => println!("   ...no direct path; staying on the relay."),
    }
    d.run_for(Duration::from_secs(2));
    println!("   Relay sessions now: {} (box-a <-> box-b only)", d.sim.engine::<Rs>(d.relays[0]).sessions().len());

    println!("\n5. box-a moves to another network (e.g. from Wi-Fi to LTE) in the middle of a flow.");
    let gap = handover(&mut d, a, c);
    println!("   Virtual addresses unchanged; packets flowed again {gap} ms after the move.");

    println!("\n6. Who holds which key (fingerprints only):");
    let mncn = |d: &mut Deployment, h: HostId| -> std::collections::BTreeSet<u64> {
        d.node(h).held_keys().into_iter().filter(|(k, _)| *k == "K_mncn").map(|(_, f)| f).collect()
    };
    let (ka, kb) = (mncn(&mut d, a), mncn(&mut d, b));
    for k in ka.intersection(&kb) {
        println!("   box-a and box-b share K_mncn {k:016x}; nobody else holds it.");
    }
    let rs_kinds: std::collections::BTreeSet<&str> =
        d.sim.engine::<Rs>(d.relays[0]).held_keys().into_iter().map(|(k, _)| k).collect();
    println!("   rs1.example            {rs_kinds:?} -- never K_tmp or K_mncn: it relays ciphertext only.");
    println!("\nDone.");
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "FAILED"
    }
}

fn registered_as(d: &mut Deployment, h: HostId) -> String {
    let events = d.events(h);
    events
        .iter()
        .find_map(|e| match e {
            ntm_proto::engine::node::NodeEvent::Registered { observed, behind_nat, .. } => {
                Some(format!("{observed} ({})", if *behind_nat { "behind NAT" } else { "global" }))
            }
            _ => None,
        })
        .unwrap_or_else(|| "?".into())
}

fn wait_for_direct(d: &mut Deployment, h: HostId, peer: &str, since: Instant) -> Option<u128> {
    let deadline = d.now() + Duration::from_secs(10);
    let p = name(peer);
    let done = d.sim.run_until_cond(deadline, |s| {
        s.engine::<Node>(h)
            .tunnels()
            .iter()
            .any(|t| t.peer == p && t.established && t.path == PathKind::Direct && !t.superseded)
    });
    done.then(|| d.now().saturating_duration_since(since).as_millis())
}

/// Sends a packet every 10 ms from `peer` to `mover` (a stream of datagrams), moves
/// `mover`, and returns the time from the move to the first packet that arrived on the
/// new network.
fn handover(d: &mut Deployment, mover: HostId, peer: HostId) -> u128 {
    let src = d.node(peer).virtual_addrs().unwrap().v4;
    let dst = d.node(mover).virtual_addrs().unwrap().v4;
    let tick = Duration::from_millis(10);
    for i in 0..20u32 {
        send_tagged(d, peer, src, dst, i);
        d.run_for(tick);
    }
    let _ = d.sim.take_ip(mover);
    let lte = d.home(|o| RealmConfig::v4_only(o).with_nat(NatConfig::symmetric()));
    d.sim.move_host(mover, lte, &[ip("10.200.0.2")]);
    let t0 = d.now();
    d.node(mover).handle_network_change(t0, vec![SocketAddr::new(ip("10.200.0.2"), NODE_PORT)]);
    for i in 20..2000u32 {
        send_tagged(d, peer, src, dst, i);
        d.run_for(tick);
        if !d.sim.take_ip(mover).is_empty() {
            return d.now().saturating_duration_since(t0).as_millis();
        }
    }
    panic!("no packet after the move");
}

fn send_tagged(d: &mut Deployment, from: HostId, src: std::net::Ipv4Addr, dst: std::net::Ipv4Addr, tag: u32) {
    let now = d.now();
    let _ = d.node(from).send_ip(now, &ipv4_packet(src, dst, &tag.to_be_bytes()));
}
