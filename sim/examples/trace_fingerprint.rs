//! A fingerprint of every datagram and frame the nodes send and receive, with its time, in
//! a few long scenarios (relay, route optimization, moves, keepalives, rekeys, idle ends,
//! an RS that restarts or goes silent). Two builds of the node engine that print the same
//! lines (built by the same toolchain: the hash is std's) behave the same on these runs,
//! to the millisecond: a check for refactors.
//!
//! Run: `cargo run --release -p ntm-sim --example trace_fingerprint`, before and after.

// A measuring example: its output is the point, and a failed set-up may panic.
#![allow(clippy::print_stdout, clippy::unwrap_used)]
use ntm_proto::time::Duration;
use ntm_sim::deploy::*;
use ntm_sim::{HostId, NatConfig, RealmConfig};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;

fn fp(d: &Deployment, hosts: &[HostId]) -> (u64, usize) {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut n = 0;
    for &x in hosts {
        for c in d.sim.capture(x) {
            (c.at.as_millis(), format!("{:?}{:?}", c.dir, c.carrier), c.src, c.dst, &c.bytes).hash(&mut h);
            n += 1;
        }
    }
    (h.finish(), n)
}

fn scenario(seed: u64, lifetime: Option<Duration>) {
    let mut d = Deployment::new(seed, Options::default());
    let opts = NodeOpts { tunnel_key_lifetime: lifetime, ..NodeOpts::default() };
    let home = d.home(|o| RealmConfig::v4_only(o).with_nat(NatConfig::port_restricted_cone()));
    let a = d.add_node("a.zone-a.example", home, &[ip("192.168.1.2")], opts.clone());
    let lte = d.home(|o| RealmConfig::v4_only(o).with_nat(NatConfig::symmetric()));
    let b = d.add_node("b.zone-b.example", lte, &[ip("10.64.0.9")], opts.clone());
    let office = d.home(|o| RealmConfig::v4_only(o).with_nat(NatConfig::full_cone()));
    let c = d.add_node("c.zone-b.example", office, &[ip("10.1.0.5")], opts.clone());
    let g =
        d.add_node("g.zone-b.example", ntm_sim::RealmId::INTERNET, &[ip("198.51.100.7"), ip("2001:db8:100::7")], opts);
    let hosts = [a, b, c, g];
    for &h in &hosts {
        d.sim.enable_capture(h);
        assert!(d.bring_up(h));
    }
    for p in ["b.zone-b.example", "c.zone-b.example", "g.zone-b.example"] {
        let _ = d.resolve(a, p);
    }
    for k in 0..40u32 {
        for &(x, y) in &[(a, b), (b, a), (a, c), (c, a), (a, g), (g, a)] {
            let _ = d.ping4(x, y, k);
        }
        d.run_for(Duration::from_secs(7));
        if k == 10 {
            let lte2 = d.home(|o| RealmConfig::v4_only(o).with_nat(NatConfig::symmetric()));
            d.sim.move_host(a, lte2, &[ip("10.200.0.2")]);
            let now = d.now();
            d.node(a).handle_network_change(now, vec![SocketAddr::new(ip("10.200.0.2"), NODE_PORT)]);
        }
        if k == 25 {
            let now = d.now();
            d.sim.move_host(g, ntm_sim::RealmId::INTERNET, &[ip("198.51.100.8")]);
            d.node(g).handle_network_change(now, vec![SocketAddr::new(ip("198.51.100.8"), NODE_PORT)]);
        }
    }
    d.run_for(Duration::from_secs(1300));
    let (h, n) = fp(&d, &hosts);
    let t = d.node(a).tunnels().len();
    println!(
        "seed {seed} lifetime {lifetime:?}: {n} messages, fingerprint {h:016x}, a has {t} tunnels, resent {}",
        d.node(a).resent_packets()
    );
}

fn rs_trouble(seed: u64, restart: bool, cn_sends: bool) {
    use ntm_proto::engine::rs::{Rs, RsConfig};
    let mut d = Deployment::new(seed, Options::default());
    let nat = |d: &mut Deployment| d.home(|o| RealmConfig::v4_only(o).with_nat(NatConfig::symmetric()));
    let r1 = nat(&mut d);
    let mn = d.add_node("mn.zone-a.example", r1, &[ip("192.168.1.2")], NodeOpts::default());
    let r2 = nat(&mut d);
    let cn = d.add_node("cn.zone-b.example", r2, &[ip("192.168.1.2")], NodeOpts::default());
    let hosts = [mn, cn];
    for &h in &hosts {
        d.sim.enable_capture(h);
        assert!(d.bring_up(h));
    }
    assert!(d.resolve(mn, "cn.zone-b.example").is_ok());
    assert!(d.ping4(mn, cn, 1));
    d.run_for(Duration::from_secs(40));
    let rs = d.relays[0];
    if restart {
        let addrs: Vec<SocketAddr> = d.sim.addrs(rs).iter().map(|a| SocketAddr::new(*a, SERVER_PORT)).collect();
        d.sim.replace_engine(rs, Rs::new(RsConfig::new(name("rs1.example"), addrs)).unwrap());
    } else {
        d.sim.set_down(rs, true);
    }
    let (from, to) = if cn_sends { (cn, mn) } else { (mn, cn) };
    for n in 0..60 {
        let _ = d.ping4(from, to, n);
        d.run_for(Duration::from_millis(700));
        if n == 30 {
            d.sim.set_down(rs, false);
        }
    }
    d.run_for(Duration::from_secs(200));
    let (h, n) = fp(&d, &hosts);
    println!("rs seed {seed} restart {restart} cn_sends {cn_sends}: {n} messages, fingerprint {h:016x}");
}

fn main() {
    for seed in [3, 43, 46] {
        for restart in [true, false] {
            for cn_sends in [true, false] {
                rs_trouble(seed, restart, cn_sends);
            }
        }
    }
    for seed in [1, 7, 2026] {
        scenario(seed, None);
        scenario(seed, Some(Duration::from_secs(120)));
    }
}
