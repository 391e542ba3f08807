//! Direct paths through a NAT that maps per destination (issue 15, item 3): the DC's
//! mapping test on its second port, and the "birthday" search it sets off between a box
//! behind such a NAT and one behind a NAT that keeps one port per socket but filters by
//! address and port. Read each test as a script over virtual time.

use ntm_proto::engine::dc::Dc;
use ntm_proto::time::{Duration, Instant};
use ntm_proto::wire::registration::NatMapping;
use ntm_sim::deploy::*;
use ntm_sim::{HostId, NatConfig, RealmConfig, RealmId};
use std::net::SocketAddr;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A node behind a NAT of its own.
fn behind(d: &mut Deployment, fqdn: &str, nat: NatConfig) -> HostId {
    let realm = d.home(|o| RealmConfig::v4_only(o).with_nat(nat));
    d.add_node(fqdn, realm, &[ip("192.168.1.2")], NodeOpts::default())
}

/// A node behind a port-restricted home NAT inside a carrier's symmetric CGN (the
/// matrix's "home NAT + CGN").
fn behind_cgn(d: &mut Deployment, fqdn: &str, n: u8) -> HostId {
    let cgn = d.sim.add_realm(
        &format!("cgn{n}"),
        RealmId::INTERNET,
        RealmConfig::v4_only(format!("203.0.113.{}", 200 + n).parse().unwrap()).with_nat(NatConfig::symmetric()),
    );
    let home = d.sim.add_realm(
        &format!("cgn-home{n}"),
        cgn,
        RealmConfig::v4_only(format!("100.64.0.{n}").parse().unwrap()).with_nat(NatConfig::port_restricted_cone()),
    );
    d.add_node(fqdn, home, &[ip("192.168.7.2")], NodeOpts::default())
}

/// The DC's mapping verdicts for `fqdn`'s endpoints, with its NAT verdicts.
fn dc_verdicts(d: &Deployment, dc: HostId, fqdn: &str) -> Vec<(SocketAddr, bool, NatMapping)> {
    let status = d.sim.engine_ref::<Dc>(dc).nodes();
    let node = status.iter().find(|n| n.fqdn == name(fqdn)).expect("the DC knows the node");
    node.endpoints.iter().zip(&node.mappings).map(|(&(at, nat), &m)| (at, nat, m)).collect()
}

/// Brings `h` up and runs until its node has the DC's verdict (or 10 s pass).
fn tested(d: &mut Deployment, h: HostId) -> NatMapping {
    assert!(d.bring_up(h), "registered");
    let deadline = d.now() + secs(10);
    let _ = d.sim.run_until_cond(deadline, |s| {
        s.engine_ref::<ntm_proto::engine::node::Node>(h).nat_mapping() != NatMapping::Untested
    });
    d.node(h).nat_mapping()
}

fn mapping_addr(d: &Deployment, dc: HostId) -> SocketAddr {
    SocketAddr::new(d.sim.addr_v4(dc).unwrap().ip(), DC_MAPPING_PORT)
}

#[test]
fn the_dcs_mapping_test_finds_what_rfc_4787_predicts_behind_every_kind_of_nat() {
    type Case = (&'static str, Option<NatConfig>, NatMapping);
    let cases: [Case; 5] = [
        ("full cone", Some(NatConfig::full_cone()), NatMapping::Independent),
        ("restricted cone", Some(NatConfig::restricted_cone()), NatMapping::Independent),
        ("port-restricted cone", Some(NatConfig::port_restricted_cone()), NatMapping::Independent),
        ("symmetric", Some(NatConfig::symmetric()), NatMapping::Dependent),
        // The home NAT keeps the port, the CGN in front of it picks one per destination.
        ("home NAT + CGN", None, NatMapping::Dependent),
    ];
    for (i, (label, nat, expect)) in cases.into_iter().enumerate() {
        let mut d = Deployment::new(700 + u64::try_from(i).unwrap(), Options::default());
        let h = match nat {
            Some(nat) => behind(&mut d, "mn.zone-a.example", nat),
            None => behind_cgn(&mut d, "mn.zone-a.example", 1),
        };
        assert_eq!(tested(&mut d, h), expect, "{label}: the node's verdict");
        let v = dc_verdicts(&d, d.dc_a, "mn.zone-a.example");
        assert_eq!(v.len(), 1, "{label}: one IPv4 endpoint: {v:?}");
        assert_eq!((v[0].1, v[0].2), (true, expect), "{label}: the DC's verdict: {v:?}");
        // One probe answered, none pending: the node sends no more.
        let probes_sent = |d: &Deployment| d.sim.capture(h).iter().filter(|c| c.dst.port() == DC_MAPPING_PORT).count();
        d.sim.enable_capture(h);
        d.run_for(secs(30));
        assert_eq!(probes_sent(&d), 0, "{label}: no probe after the verdict");
    }
}

#[test]
fn a_public_node_is_not_tested_and_sends_no_mapping_probe() {
    let mut d = Deployment::new(710, Options::default());
    let h = d.add_node("mn.zone-a.example", RealmId::INTERNET, &[ip("198.51.100.7"), ip("2001:db8:100::7")], {
        NodeOpts::default()
    });
    d.sim.enable_capture(h);
    assert!(d.bring_up(h));
    d.run_for(secs(10));
    for (at, nat, mapping) in dc_verdicts(&d, d.dc_a, "mn.zone-a.example") {
        assert!(!nat, "{at}: not behind a NAT");
        assert_eq!(mapping, NatMapping::Untested, "{at}");
    }
    assert_eq!(d.node(h).nat_mapping(), NatMapping::Untested);
    assert!(!d.sim.capture(h).iter().any(|c| c.dst.port() == DC_MAPPING_PORT), "no Mapping Probe");
}

#[test]
fn a_dc_without_a_mapping_port_leaves_every_node_untested() {
    let mut d = Deployment::new(711, Options { mapping_port: 0, ..Options::default() });
    let sym = behind(&mut d, "mn.zone-a.example", NatConfig::symmetric());
    let prc = behind(&mut d, "cn.zone-a.example", NatConfig::port_restricted_cone());
    for h in [sym, prc] {
        d.sim.enable_capture(h);
        assert!(d.bring_up(h));
    }
    d.run_for(secs(10));
    for (h, fqdn) in [(sym, "mn.zone-a.example"), (prc, "cn.zone-a.example")] {
        assert_eq!(d.node(h).nat_mapping(), NatMapping::Untested, "{fqdn}");
        let v = dc_verdicts(&d, d.dc_a, fqdn);
        assert_eq!(v.iter().map(|e| (e.1, e.2)).collect::<Vec<_>>(), [(true, NatMapping::Untested)], "{fqdn}");
        assert!(!d.sim.capture(h).iter().any(|c| c.dst.port() == DC_MAPPING_PORT), "{fqdn}: no Mapping Probe");
    }
}

#[test]
fn a_lost_mapping_probe_is_sent_again_and_a_dc_that_never_answers_is_given_up() {
    // Two probes lost: the third gets the verdict.
    let mut d = Deployment::new(712, Options::default());
    let h = behind(&mut d, "mn.zone-a.example", NatConfig::symmetric());
    d.sim.drop_next_to(mapping_addr(&d, d.dc_a), 2);
    d.sim.enable_capture(h);
    let t0 = d.now();
    assert_eq!(tested(&mut d, h), NatMapping::Dependent);
    assert_eq!(d.sim.stats().dropped_by_rule, 2);
    let sent = d.sim.capture(h).iter().filter(|c| c.dst.port() == DC_MAPPING_PORT).count();
    assert_eq!(sent, 3, "two lost, the third answered");
    assert!(d.now() < t0 + secs(5), "verdict within the retries' few seconds");

    // Every probe lost: a bounded number of tries, then no verdict and no more probes.
    let mut d = Deployment::new(713, Options::default());
    let h = behind(&mut d, "mn.zone-a.example", NatConfig::symmetric());
    d.sim.drop_next_to(mapping_addr(&d, d.dc_a), 1000);
    d.sim.enable_capture(h);
    assert!(d.bring_up(h));
    d.run_for(secs(60));
    assert_eq!(d.node(h).nat_mapping(), NatMapping::Untested);
    let sent = d.sim.capture(h).iter().filter(|c| c.dst.port() == DC_MAPPING_PORT).count();
    assert!((2..=5).contains(&sent), "a few tries, then given up: {sent}");
    assert_eq!(dc_verdicts(&d, d.dc_a, "mn.zone-a.example")[0].2, NatMapping::Untested);
    let _: Instant = d.now();
}
