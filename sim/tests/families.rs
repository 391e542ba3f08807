//! Boxes on networks of one address family: every node of the deployment is configured
//! with the AS's addresses of both families, and the DC grants the NS's node address of
//! the family a node registered in. A node picks what it can reach, and follows when it
//! moves between an IPv4-only and an IPv6-only network.

use ntm_proto::engine::node::{Node, NodeEvent};
use ntm_proto::engine::ns::Ns;
use ntm_proto::time::Duration;
use ntm_proto::wire::registration::KeepaliveMethod;
use ntm_sim::deploy::*;
use ntm_sim::{Carrier, Direction, HostId, NatConfig, RealmConfig, RealmId};
use std::net::SocketAddr;

fn ns_opts() -> NodeOpts {
    NodeOpts { keepalive: KeepaliveMethod::Ns, ..NodeOpts::default() }
}

fn v6_only_node(d: &mut Deployment, fqdn: &str, addr: &str) -> HostId {
    let realm = d.sim.add_realm(&format!("v6 {fqdn}"), RealmId::INTERNET, RealmConfig::v6_only());
    d.add_node(fqdn, realm, &[ip(addr)], ns_opts())
}

fn notifications_ready_within(d: &mut Deployment, h: HostId, limit: Duration) -> bool {
    let deadline = d.now() + limit;
    d.sim.run_until_cond(deadline, |s| s.engine::<Node>(h).notifications_ready())
}

/// The NS's stream frames from `h`'s current addresses since capture began.
fn ns_frames_from(d: &Deployment, h: HostId) -> Vec<SocketAddr> {
    let mine = d.sim.addrs(h).to_vec();
    d.sim
        .capture(d.ns)
        .iter()
        .filter(|c| c.dir == Direction::In && matches!(c.carrier, Carrier::Stream(_)) && mine.contains(&c.src.ip()))
        .map(|c| c.dst)
        .collect()
}

#[test]
fn an_ipv6_only_node_logs_in_and_is_reachable_through_the_ns_over_ipv6() {
    let mut d = Deployment::new(31, Options::default());
    let cn = v6_only_node(&mut d, "cn.zone-b.example", "2001:db8:200::5");
    d.sim.enable_capture(d.ns);
    assert!(d.bring_up(cn), "logs in at the AS's IPv6 address and registers");
    assert!(notifications_ready_within(&mut d, cn, Duration::from_secs(10)), "the NS holds its notifications");
    let to = ns_frames_from(&d, cn);
    assert!(!to.is_empty() && to.iter().all(SocketAddr::is_ipv6), "the NS's IPv6 node address: {to:?}");
    // Never an attempt that could not work: no AS round failed.
    assert!(!d.events(cn).contains(&NodeEvent::AccountServerUnreachable));

    let mn = d.add_node("mn.zone-a.example", RealmId::INTERNET, &[ip("198.51.100.10"), ip("2001:db8:100::10")], {
        NodeOpts::default()
    });
    assert!(d.bring_up(mn));
    let v = d.resolve(mn, "cn.zone-b.example").expect("reached through the NS");
    assert_eq!(v, d.node(cn).virtual_addrs().unwrap());
    assert_eq!(d.sim.engine::<Ns>(d.ns).connected_nodes(), vec![name("cn.zone-b.example")]);
}

#[test]
fn an_ipv4_only_node_with_the_same_configuration_uses_ipv4() {
    let mut d = Deployment::new(32, Options::default());
    let realm = d.home(|o| RealmConfig::v4_only(o).with_nat(NatConfig::port_restricted_cone()));
    let cn = d.add_node("cn.zone-b.example", realm, &[ip("192.168.1.2")], ns_opts());
    d.sim.enable_capture(d.ns);
    assert!(d.bring_up(cn));
    assert!(notifications_ready_within(&mut d, cn, Duration::from_secs(10)));
    // Seen at the NS from the NAT's outside address, to the IPv4 node address.
    let to: Vec<SocketAddr> = d
        .sim
        .capture(d.ns)
        .iter()
        .filter(|c| c.dir == Direction::In && matches!(c.carrier, Carrier::Stream(_)))
        .map(|c| c.dst)
        .collect();
    assert!(!to.is_empty() && to.iter().all(SocketAddr::is_ipv4), "{to:?}");
    assert!(!d.events(cn).contains(&NodeEvent::AccountServerUnreachable));
}

#[test]
fn a_node_that_moves_from_ipv4_only_to_ipv6_only_reaches_its_ns_again() {
    let mut d = Deployment::new(33, Options::default());
    let home = d.home(|o| RealmConfig::v4_only(o).with_nat(NatConfig::port_restricted_cone()));
    let cn = d.add_node("cn.zone-b.example", home, &[ip("192.168.1.2")], ns_opts());
    assert!(d.bring_up(cn));
    assert!(notifications_ready_within(&mut d, cn, Duration::from_secs(10)));

    let v6 = d.sim.add_realm("v6 only", RealmId::INTERNET, RealmConfig::v6_only());
    d.sim.move_host(cn, v6, &[ip("2001:db8:200::7")]);
    d.sim.enable_capture(d.ns);
    let now = d.now();
    d.node(cn).handle_network_change(now, vec![SocketAddr::new(ip("2001:db8:200::7"), NODE_PORT)]);
    assert!(
        d.sim.run_until_cond(now + Duration::from_secs(10), |s| s.engine::<Node>(cn).notifications_ready()),
        "back at the NS after the move"
    );
    let to = ns_frames_from(&d, cn);
    assert!(!to.is_empty() && to.iter().all(SocketAddr::is_ipv6), "over IPv6 now: {to:?}");

    let mn = d.add_node("mn.zone-a.example", RealmId::INTERNET, &[ip("198.51.100.10"), ip("2001:db8:100::10")], {
        NodeOpts::default()
    });
    assert!(d.bring_up(mn));
    assert!(d.resolve(mn, "cn.zone-b.example").is_ok(), "reachable at its new place");
}

#[test]
fn a_failing_as_address_moves_the_login_to_the_next_at_once() {
    let mut d = Deployment::new(34, Options::default());
    let addrs = [ip("198.51.100.10"), ip("2001:db8:100::10")];
    let mn = d.add_node("mn.zone-a.example", RealmId::INTERNET, &addrs, NodeOpts::default());
    let nobody = SocketAddr::new(ip("192.0.2.99"), SERVER_PORT);
    let now = d.now();
    d.node(mn).set_account_servers(now, vec![nobody, SocketAddr::new(ip("2001:db8::10"), SERVER_PORT)]);
    let t0 = d.now();
    assert!(d.bring_up(mn));
    let took = d.now().saturating_duration_since(t0);
    assert!(took < Duration::from_millis(500), "no backoff between the addresses of one round: {took:?}");
    assert!(!d.events(mn).contains(&NodeEvent::AccountServerUnreachable));

    // When every address of a round fails, the node says so (the driver then looks the
    // AS's name up again) and waits before the next round.
    let cn = d.add_node("cn.zone-b.example", RealmId::INTERNET, &[ip("198.51.100.11")], NodeOpts::default());
    let now = d.now();
    d.node(cn).set_account_servers(now, vec![nobody]);
    d.start(cn);
    d.run_for(Duration::from_millis(200));
    let failed = d.events(cn).iter().filter(|e| **e == NodeEvent::AccountServerUnreachable).count();
    assert_eq!(failed, 1, "one failed round, then a backoff");
    // Addresses that work (a fresh lookup) end the wait at once.
    let now = d.now();
    d.node(cn).set_account_servers(now, vec![SocketAddr::new(ip("192.0.2.10"), SERVER_PORT)]);
    let t1 = d.now();
    assert!(d.sim.run_until_cond(t1 + Duration::from_millis(500), |s| s.engine::<Node>(cn).is_registered()));
}
