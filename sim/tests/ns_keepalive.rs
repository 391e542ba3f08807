//! The NS keepalive interval learned on a path whose NAT forgets idle TCP sooner than the
//! NS's hourly interval (issue 15, item 6): the box notices that the NS's delayed answer
//! no longer comes, falls back, grows the interval again step by step and settles below
//! the NAT's timeout, and then stays reachable through the NS however long it idles.

#![allow(clippy::print_stderr)]

use ntm_proto::engine::node::Node;
use ntm_proto::engine::StreamKind;
use ntm_proto::time::Duration;
use ntm_proto::wire::registration::KeepaliveMethod;
use ntm_sim::deploy::*;
use ntm_sim::{Carrier, HostId, NatConfig, RealmConfig, RealmId};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A CN behind a NAT that forgets UDP after 30 s and TCP after `tcp_timeout`, kept
/// reachable by the NS; and `mns` global MNs to reach it from.
fn deploy(seed: u64, tcp_timeout: Duration, mns: u8) -> (Deployment, HostId, Vec<HostId>) {
    let mut d = Deployment::new(seed, Options::default());
    let nat = NatConfig { udp_timeout: secs(30), tcp_timeout, ..NatConfig::port_restricted_cone() };
    let realm = d.home(|o| RealmConfig::v4_only(o).with_nat(nat));
    let opts = NodeOpts { keepalive: KeepaliveMethod::Ns, ..NodeOpts::default() };
    let cn = d.add_node("cn.zone-b.example", realm, &[ip("192.168.1.2")], opts);
    let mns: Vec<HostId> = (0..mns)
        .map(|i| {
            let (v4, v6) = (ip(&format!("198.51.100.{}", 10 + i)), ip(&format!("2001:db8:100::{}", 10 + i)));
            d.add_node(&format!("mn{i}.zone-a.example"), RealmId::INTERNET, &[v4, v6], NodeOpts::default())
        })
        .collect();
    assert!(d.bring_up(cn));
    for &mn in &mns {
        assert!(d.bring_up(mn));
    }
    assert!(d.sim.run_until_cond(d.now() + secs(10), |s| s.engine::<Node>(cn).notifications_ready()));
    (d, cn, mns)
}

#[test]
fn a_nat_forgetting_idle_tcp_after_30_minutes_is_learned_and_the_box_stays_reachable() {
    let (mut d, cn, mns) = deploy(150, secs(1800), 4);
    assert_eq!(d.node(cn).ns_keepalive(), Some((secs(3600), secs(3600), true)), "the NS's interval at first");
    // Learning: the hourly probe fails, the interval falls back and grows again.
    d.run_for(secs(12 * 3600));
    let (interval, max, settled) = d.node(cn).ns_keepalive().expect("connected to the NS");
    eprintln!("learned NS keepalive interval: {interval:?} (NS's {max:?}, settled {settled})");
    assert!(settled, "settled after 12 h: {interval:?}");
    assert!(interval < secs(1800), "below the NAT's TCP timeout: {interval:?}");
    assert!(interval >= secs(1800) * 2 / 3, "within one growth step of the NAT's timeout: {interval:?}");
    assert!(d.node(cn).notifications_ready());

    // Now reachable through the NS at any moment, however long the box has idled: each MN
    // reaches it for the first time at another point of the keepalive cycle.
    d.sim.enable_capture(cn);
    let ns_bytes_from = d.now();
    for (i, &mn) in mns.iter().enumerate() {
        d.run_for(secs(1000 + 377 * i as u64));
        assert!(d.resolve(mn, "cn.zone-b.example").is_ok(), "MN {i} resolves the idle CN");
        assert!(d.ping4(mn, cn, i as u32), "MN {i} reaches the idle CN through the NS");
    }
    d.run_for(secs(86_400).saturating_sub(d.now().saturating_duration_since(ns_bytes_from)));
    let ns_bytes: usize = d
        .sim
        .take_capture(cn)
        .iter()
        .filter(|c| c.carrier == Carrier::Stream(StreamKind::Tcp))
        .map(|c| c.bytes.len())
        .sum();
    eprintln!("NS stream payload over a day at {interval:?}: {ns_bytes} bytes");
    assert_eq!(d.node(cn).ns_keepalive().map(|k| k.0), Some(interval), "the learned interval holds");
}

#[test]
fn a_nat_that_keeps_tcp_for_hours_keeps_the_hourly_interval() {
    let (mut d, cn, _) = deploy(151, secs(7440), 0);
    d.run_for(secs(6 * 3600));
    assert_eq!(d.node(cn).ns_keepalive(), Some((secs(3600), secs(3600), true)));
    assert!(d.node(cn).notifications_ready());
}

#[test]
fn after_a_move_the_interval_is_learned_again_for_the_new_nat() {
    let (mut d, cn, mns) = deploy(152, secs(1800), 1);
    d.run_for(secs(12 * 3600));
    assert_eq!(d.node(cn).ns_keepalive().map(|k| (k.0, k.2)), Some((secs(1531), true)));

    // To a network whose NAT keeps TCP for the RFC's 2 h 4 min: the interval grows back
    // to the NS's, without a failure on the way.
    let good = d.home(|o| RealmConfig::v4_only(o).with_nat(NatConfig::port_restricted_cone()));
    d.sim.move_host(cn, good, &[ip("10.30.0.2")]);
    let now = d.now();
    d.node(cn).handle_network_change(now, vec![std::net::SocketAddr::new(ip("10.30.0.2"), NODE_PORT)]);
    assert_eq!(d.node(cn).ns_keepalive().map(|k| k.2), Some(false), "learning again");
    d.run_for(secs(4 * 3600));
    assert_eq!(d.node(cn).ns_keepalive(), Some((secs(3600), secs(3600), true)));

    // To one whose NAT forgets TCP after 10 minutes: a failure, then it settles below.
    let bad = NatConfig { udp_timeout: secs(30), tcp_timeout: secs(600), ..NatConfig::port_restricted_cone() };
    let bad = d.home(|o| RealmConfig::v4_only(o).with_nat(bad));
    d.sim.move_host(cn, bad, &[ip("10.40.0.2")]);
    let now = d.now();
    d.node(cn).handle_network_change(now, vec![std::net::SocketAddr::new(ip("10.40.0.2"), NODE_PORT)]);
    d.run_for(secs(8 * 3600));
    let (interval, _, settled) = d.node(cn).ns_keepalive().unwrap();
    eprintln!("after moving behind a 10-minute NAT: {interval:?}");
    assert!(settled && interval < secs(600) && interval >= secs(400), "{interval:?}");
    assert!(d.resolve(mns[0], "cn.zone-b.example").is_ok() && d.ping4(mns[0], cn, 7));
}
