//! A box kept reachable by the NS moves while its connection to the NS cannot come back
//! at once. Its DC must still reach it for the renegotiation of its tunnels: the box has
//! just registered from its new address, so its UDP mapping to the DC is fresh.

use ntm_proto::time::Duration;
use ntm_proto::wire::registration::KeepaliveMethod;
use ntm_sim::deploy::*;
use ntm_sim::{NatConfig, RealmConfig};
use std::net::SocketAddr;

#[test]
fn a_box_that_moves_while_its_ns_is_away_gets_its_route_directions_by_udp() {
    let mut d = Deployment::new(61, Options::default());
    let home = d.home(|o| RealmConfig::v4_only(o).with_nat(NatConfig::port_restricted_cone()));
    let ns_kept = NodeOpts { keepalive: KeepaliveMethod::Ns, ..NodeOpts::default() };
    let cn = d.add_node("cn.zone-b.example", home, &[ip("192.168.1.2")], ns_kept);
    // The peer filters by port: the box's probes from its new address do not get in, so
    // its tunnel must be renegotiated through the DCs.
    let peer_nat = d.home(|o| RealmConfig::v4_only(o).with_nat(NatConfig::port_restricted_cone()));
    let mn = d.add_node("mn.zone-a.example", peer_nat, &[ip("192.168.3.2")], NodeOpts::default());
    assert!(d.bring_up(mn) && d.bring_up(cn));
    d.run_for(Duration::from_secs(5));
    assert!(d.resolve(mn, "cn.zone-b.example").is_ok(), "through the NS");
    assert!(d.ping4(mn, cn, 1) && d.ping4(cn, mn, 2));

    // The NS goes away; then the box moves to another NAT and renegotiates its tunnel.
    d.sim.set_down(d.ns, true);
    let lte = d.home(|o| RealmConfig::v4_only(o).with_nat(NatConfig::symmetric()));
    d.sim.move_host(cn, lte, &[ip("10.9.9.9")]);
    let now = d.now();
    d.node(cn).handle_network_change(now, vec![SocketAddr::new(ip("10.9.9.9"), NODE_PORT)]);
    let moved = d.now();
    let mut back = None;
    for tag in 10..30 {
        if d.ping4(cn, mn, tag) && d.ping4(mn, cn, tag + 100) {
            back = Some(d.now().saturating_duration_since(moved));
            break;
        }
    }
    let back = back.expect("the tunnel follows the box while its NS is away");
    assert!(back < Duration::from_secs(2), "data both ways again after {back:?}");
}
