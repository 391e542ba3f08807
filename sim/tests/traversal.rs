//! NAT traversal over every placement the spec names: each pair of NAT behaviours, double
//! NAT (CGN), IPv4-only and IPv6-only access networks, the choice of relay, and handover
//! between families.

use ntm_proto::engine::node::{Node, PathKind};
use ntm_proto::engine::rs::Rs;
use ntm_proto::time::Duration;
use ntm_sim::deploy::*;
use ntm_sim::{HostId, NatConfig, RealmConfig, RealmId};
use std::net::SocketAddr;

fn nat_node(d: &mut Deployment, fqdn: &str, nat: NatConfig) -> HostId {
    let realm = d.home(|o| RealmConfig::v4_only(o).with_nat(nat));
    d.add_node(fqdn, realm, &[ip("192.168.1.2")], NodeOpts::default())
}

/// Both nodes behind NATs: the DC sends them through the RS; route optimization then
/// finds the direct path exactly where the two NAT behaviours allow hole punching, and
/// the search of ports (birthday.rs) where one NAT maps per destination and the other
/// keeps one port per socket but filters by address and port.
#[test]
fn nat_type_pairs_end_direct_or_relayed_as_rfc4787_predicts() {
    let full = NatConfig::full_cone;
    let rc = NatConfig::restricted_cone;
    let prc = NatConfig::port_restricted_cone;
    let sym = NatConfig::symmetric;
    type Case = (&'static str, fn() -> NatConfig, fn() -> NatConfig, PathKind);
    let cases: [Case; 8] = [
        ("full/full", full, full, PathKind::Direct),
        ("prc/prc", prc, prc, PathKind::Direct),
        ("rc/prc", rc, prc, PathKind::Direct),
        ("sym/full", sym, full, PathKind::Direct),
        ("sym/rc", sym, rc, PathKind::Direct),
        ("prc/sym", prc, sym, PathKind::Direct),
        ("sym/prc", sym, prc, PathKind::Direct),
        ("sym/sym", sym, sym, PathKind::Relay),
    ];
    for (i, (label, a, b, expect)) in cases.into_iter().enumerate() {
        let mut d = Deployment::new(100 + u64::try_from(i).unwrap(), Options::default());
        let mn = nat_node(&mut d, "mn.zone-a.example", a());
        let cn = nat_node(&mut d, "cn.zone-b.example", b());
        assert!(d.bring_up(mn) && d.bring_up(cn), "{label}: registered");
        assert!(d.resolve(mn, "cn.zone-b.example").is_ok(), "{label}: tunnel");
        d.run_for(Duration::from_secs(6));
        assert_eq!(d.path(mn, "cn.zone-b.example"), Some(expect), "{label}: MN's path");
        assert_eq!(d.path(cn, "mn.zone-a.example"), Some(expect), "{label}: CN's path");
        assert!(d.ping4(mn, cn, 1) && d.ping4(cn, mn, 2), "{label}: data both ways");
        let relay_sessions = d.sim.engine::<Rs>(d.relays[0]).sessions().len();
        assert_eq!(relay_sessions, usize::from(expect == PathKind::Relay), "{label}: relay released iff direct");
    }
}

/// A node behind its home NAT inside a carrier's CGN (double NAT, 100.64.0.0/10).
#[test]
fn double_nat_reaches_a_global_node_directly_and_another_double_nat_via_relay() {
    let mut d = Deployment::new(120, Options::default());
    let cgn_node = |d: &mut Deployment, fqdn: &str, n: u8, cgn_out: &str| {
        let cgn = d.sim.add_realm(
            &format!("cgn{n}"),
            RealmId::INTERNET,
            RealmConfig::v4_only(cgn_out.parse().unwrap()).with_nat(NatConfig::symmetric()),
        );
        let home = d.sim.add_realm(
            &format!("cgn-home{n}"),
            cgn,
            RealmConfig::v4_only(format!("100.64.0.{n}").parse().unwrap()).with_nat(NatConfig::port_restricted_cone()),
        );
        d.add_node(fqdn, home, &[ip("192.168.7.2")], NodeOpts::default())
    };
    let mn = cgn_node(&mut d, "mn.zone-a.example", 1, "203.0.113.101");
    let peer = cgn_node(&mut d, "peer.zone-b.example", 2, "203.0.113.102");
    let cn = d.add_node("cn.zone-b.example", RealmId::INTERNET, &[ip("198.51.100.11")], NodeOpts::default());
    assert!(d.bring_up(mn) && d.bring_up(cn) && d.bring_up(peer));
    assert!(d.resolve(mn, "cn.zone-b.example").is_ok());
    assert_eq!(d.path(mn, "cn.zone-b.example"), Some(PathKind::Direct));
    assert!(d.ping4(mn, cn, 1) && d.ping4(cn, mn, 2));
    assert!(d.resolve(mn, "peer.zone-b.example").is_ok());
    d.run_for(Duration::from_secs(6));
    assert_eq!(d.path(mn, "peer.zone-b.example"), Some(PathKind::Relay));
    assert!(d.ping4(mn, peer, 3) && d.ping4(peer, mn, 4));
}

/// The DC picks the relay with the lowest measured round-trip time, and moves to the next
/// one when the best is full.
#[test]
fn best_relay_by_rtt_then_by_load() {
    let opts = Options { relays: vec![(Duration::from_millis(150), 100), (Duration::ZERO, 1)], ..Options::default() };
    let mut d = Deployment::new(121, opts);
    let (far, near) = (d.relays[0], d.relays[1]);
    let mut pairs = Vec::new();
    for i in 0..2 {
        let mn = nat_node(&mut d, &format!("mn{i}.zone-a.example"), NatConfig::symmetric());
        let cn = nat_node(&mut d, &format!("cn{i}.zone-b.example"), NatConfig::symmetric());
        assert!(d.bring_up(mn) && d.bring_up(cn));
        pairs.push((mn, cn));
    }
    // Let DC_MN measure both relays first.
    d.run_for(Duration::from_secs(2));
    assert!(d.resolve(pairs[0].0, "cn0.zone-b.example").is_ok());
    assert_eq!(d.sim.engine::<Rs>(near).sessions().len(), 1, "the near relay carries the first tunnel");
    assert!(d.sim.engine::<Rs>(far).sessions().is_empty());
    // The near relay holds one session only: the second pair goes to the far one.
    assert!(d.resolve(pairs[1].0, "cn1.zone-b.example").is_ok());
    assert_eq!(d.sim.engine::<Rs>(far).sessions().len(), 1, "the far relay takes the overflow");
    assert!(d.ping4(pairs[1].0, pairs[1].1, 5));
}

/// MN moves from an IPv4-only network to an IPv6-only one during a flow with a dual-stack
/// CN: it re-registers in the other family and the tunnel follows.
#[test]
fn handover_from_ipv4_only_to_ipv6_only() {
    let mut d = Deployment::new(122, Options::default());
    let mn = nat_node(&mut d, "mn.zone-a.example", NatConfig::port_restricted_cone());
    let cn = d.add_node(
        "cn.zone-b.example",
        RealmId::INTERNET,
        &[ip("198.51.100.11"), ip("2001:db8:100::11")],
        NodeOpts::default(),
    );
    assert!(d.bring_up(mn) && d.bring_up(cn));
    assert!(d.resolve(mn, "cn.zone-b.example").is_ok());
    assert!(d.ping4(mn, cn, 1));
    let v6 = d.sim.add_realm("v6net", RealmId::INTERNET, RealmConfig::v6_only());
    d.sim.move_host(mn, v6, &[ip("2001:db8:300::7")]);
    let t0 = d.now();
    d.node(mn).handle_network_change(t0, vec![SocketAddr::new(ip("2001:db8:300::7"), NODE_PORT)]);
    let mut tag = 10;
    let mut ok = false;
    while !ok && d.now() < t0 + Duration::from_secs(10) {
        tag += 1;
        ok = d.ping4(cn, mn, tag);
    }
    assert!(ok, "CN reaches MN on its IPv6-only network");
    assert!(d.ping6(mn, cn, 999));
    assert!(d.sim.engine::<Node>(mn).tunnels().iter().any(|t| t.established && t.remote.is_some_and(|r| r.is_ipv6())));
}
