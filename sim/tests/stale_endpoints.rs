//! The DC's view of where a node is follows the node's current addresses (issue 15): an
//! endpoint of a family the node no longer registers from is dropped when the node's
//! addresses change and when it logs in again, so that the DC reaches a node behind a NAT
//! through its NS instead of sending to where it was once seen.
//!
//! The node here is dual stack (IPv4 behind a NAT, routed IPv6), then moves to an IPv4-only
//! NAT network while it still reports an IPv6 address that leads nowhere (as a box does
//! whose IPv6 address stays configured on a link that lost its carrier): its IPv6
//! registrations never arrive.

use ntm_proto::engine::dc::Dc;
use ntm_proto::engine::node::Node;
use ntm_proto::time::Duration;
use ntm_proto::wire::registration::KeepaliveMethod;
use ntm_sim::deploy::*;
use ntm_sim::{HostId, NatConfig, RealmConfig};
use std::net::{IpAddr, SocketAddr};

const FQDN: &str = "mn.zone-a.example";

/// DC-A's view of the node: its endpoints and whether it reaches it through the NS.
fn dc_view(d: &mut Deployment) -> (Vec<SocketAddr>, bool) {
    let dc = d.dc_a;
    let nodes = d.sim.engine::<Dc>(dc).nodes();
    let n = nodes.iter().find(|n| n.fqdn == name(FQDN)).expect("DC-A holds the node");
    (n.endpoints.iter().map(|(a, _)| *a).collect(), n.via_ns)
}

/// A dual-stack node kept by its NS, registered in both families, then moved to an
/// IPv4-only NAT network (its host has no IPv6 address there).
fn dual_stack_node_moved_to_ipv4_only(d: &mut Deployment) -> (HostId, IpAddr) {
    let home = d.home(RealmConfig::dual_stack);
    let v6 = ip("2001:db8:300::5");
    let opts = NodeOpts { keepalive: KeepaliveMethod::Ns, ..NodeOpts::default() };
    let mn = d.add_node(FQDN, home, &[ip("192.168.1.2"), v6], opts);
    assert!(d.bring_up(mn));
    let now = d.now();
    assert!(d.sim.run_until_cond(now + Duration::from_secs(10), |s| s.engine::<Node>(mn).notifications_ready()));
    d.run_for(Duration::from_secs(2));
    let (endpoints, via_ns) = dc_view(d);
    assert!(endpoints.iter().any(|e| e.ip() == v6), "registered over IPv6 too: {endpoints:?}");
    assert!(!via_ns, "reachable directly over IPv6, so not through the NS");

    let v4_only = d.home(|o| RealmConfig::v4_only(o).with_nat(NatConfig::port_restricted_cone()));
    d.sim.move_host(mn, v4_only, &[ip("192.168.7.2")]);
    (mn, IpAddr::V4(d.sim.nat_outside(v4_only).expect("a NAT")))
}

/// Waits until the DC's only endpoint of the node is the IPv4 NAT's outside address
/// `outside`, and it goes through the NS.
fn no_ipv6_endpoint_and_via_ns(d: &mut Deployment, outside: IpAddr, what: &str) {
    let (dc, now) = (d.dc_a, d.now());
    let ok = d.sim.run_until_cond(now + Duration::from_secs(10), |s| {
        let nodes = s.engine::<Dc>(dc).nodes();
        nodes
            .iter()
            .find(|n| n.fqdn == name(FQDN))
            .is_some_and(|n| n.via_ns && !n.endpoints.is_empty() && n.endpoints.iter().all(|(a, _)| a.ip() == outside))
    });
    assert!(ok, "{what}: the DC holds no IPv6 endpoint and goes through the NS: {:?}", dc_view(d));
}

/// The node's addresses change, its IPv4 registration arrives, its IPv6 one never does:
/// the DC drops the IPv6 endpoint it had.
#[test]
fn a_family_the_node_no_longer_registers_from_is_dropped_when_its_addresses_change() {
    let mut d = Deployment::new(151, Options::default());
    let (mn, outside) = dual_stack_node_moved_to_ipv4_only(&mut d);
    let now = d.now();
    let still_listed = SocketAddr::new(ip("2001:db8:300::5"), NODE_PORT);
    d.node(mn).handle_network_change(now, vec![SocketAddr::new(ip("192.168.7.2"), NODE_PORT), still_listed]);
    no_ipv6_endpoint_and_via_ns(&mut d, outside, "after the move");
}

/// A fresh login (the node restarted) does not inherit where the node was seen before:
/// its IPv6 registration never arrives, so the DC holds no IPv6 endpoint.
#[test]
fn a_new_login_does_not_inherit_an_endpoint_the_node_no_longer_registers_from() {
    let mut d = Deployment::new(152, Options::default());
    let (mn, outside) = dual_stack_node_moved_to_ipv4_only(&mut d);
    // The node restarts, reporting the same addresses as before the move.
    let cfg = d.node(mn).config().clone();
    let fresh = Node::new(cfg, d.sim.rng_for("restarted")).unwrap();
    d.sim.replace_engine(mn, fresh);
    assert!(d.bring_up(mn), "logs in again and registers over IPv4");
    no_ipv6_endpoint_and_via_ns(&mut d, outside, "after the new login");
}
