//! What a node checks in a Route Direction before it takes a peer (issue 17, part 2): the
//! peer's virtual address must lie inside the node's `virtual_routes` and belong to no
//! other live tunnel's peer, and a peer's announced prefixes are taken only inside the
//! node's `accept_peer_prefixes`. The DC's directions are replayed with one field changed,
//! sealed anew under the node's K_ntmdc as the DC would (a DC mistake, or a DC reusing a
//! synthetic address), and injected.

use ntm_proto::crypto::Channel;
use ntm_proto::engine::dc::Dc;
use ntm_proto::engine::node::{Node, SendError};
use ntm_proto::engine::DropReason;
use ntm_proto::time::Duration;
use ntm_proto::wire::route::RouteDirection;
use ntm_proto::wire::{Message, Prefix, RequestId, Sender, SessionId};
use ntm_sim::deploy::*;
use ntm_sim::{Captured, Direction, HostId, RealmId};

fn prefix(s: &str) -> Prefix {
    let (a, l) = s.split_once('/').unwrap();
    Prefix::new(a.parse().unwrap(), l.parse().unwrap()).unwrap()
}

/// A node on the Internet; with `checks`, its engine has these `virtual_routes` and
/// `accept_peer_prefixes` (as the agent gives it).
fn node(d: &mut Deployment, fqdn: &str, n: u8, announced: &[&str], checks: Option<(&[&str], &[&str])>) -> HostId {
    let v4 = ip(&format!("198.51.100.{n}"));
    let opts = NodeOpts { announced: announced.iter().map(|p| prefix(p)).collect(), ..NodeOpts::default() };
    let h = d.add_node(fqdn, RealmId::INTERNET, &[v4], opts);
    d.sim.enable_capture(h);
    if let Some((virtual_routes, accept)) = checks {
        let mut cfg = d.node(h).config().clone();
        cfg.virtual_routes = virtual_routes.iter().map(|p| prefix(p)).collect();
        cfg.accept_peer_prefixes = Some(accept.iter().map(|p| prefix(p)).collect());
        let fresh = Node::new(cfg, d.sim.rng_for(fqdn)).unwrap();
        d.sim.replace_engine(h, fresh);
    }
    h
}

fn route_direction(d: &Deployment, h: HostId) -> Captured {
    d.sim
        .capture(h)
        .iter()
        .find(|c| c.dir == Direction::In && c.bytes.get(1) == Some(&0x40))
        .expect("a Route Direction")
        .clone()
}

fn refusals_sent(d: &Deployment, h: HostId) -> usize {
    d.sim.capture(h).iter().filter(|c| c.dir == Direction::Out && c.bytes.get(1) == Some(&0x7f)).count()
}

/// Sends node `fqdn` the Route Direction `rd` again, changed by `edit`, under a new session and
/// request id, sealed by "its DC" with a counter the DC has not used (`n` apart).
fn redirect(d: &mut Deployment, fqdn: &str, rd: &Captured, n: u64, edit: impl FnOnce(&mut RouteDirection)) {
    let state = d.sim.engine::<Dc>(d.dc_a).export_node(&name(fqdn)).unwrap();
    let mut as_node = Channel::new(state.key.clone(), state.key_id, Sender::Node, state.expires).unwrap();
    let (_, msg) = as_node.open(d.now(), &rd.bytes).unwrap();
    let Message::RouteDirection(mut m) = msg else { panic!("not a Route Direction") };
    m.session = SessionId(m.session.0 ^ 0x5a5a_0000 ^ n as u32);
    m.request_id = RequestId(m.request_id.0 ^ 0x0a0a_0000 ^ n as u32);
    edit(&mut m);
    let mut as_dc = Channel::new(state.key, state.key_id, Sender::Dc, state.expires).unwrap();
    as_dc.resume_at(state.next_counter + 1_000_000 + 1000 * n);
    let sealed = as_dc.seal(d.now(), &Message::RouteDirection(m)).unwrap();
    d.sim.inject(RealmId::INTERNET, rd.src, rd.dst, sealed);
    d.run_for(Duration::from_secs(2));
}

/// A second peer claiming the virtual address of a live tunnel's peer is refused (it would
/// take that peer's packets: how a reused synthetic address redirected connections); the
/// same peer under a new session (a renegotiation) is taken.
#[test]
fn a_second_peer_claiming_a_live_tunnels_address_is_refused() {
    let mut d = Deployment::new(61, Options::default());
    let mn = node(&mut d, "mn.zone-a.example", 10, &[], None);
    let cn = node(&mut d, "cn.zone-b.example", 11, &[], None);
    assert!(d.bring_up(mn) && d.bring_up(cn));
    let vcn = d.resolve(mn, "cn.zone-b.example").expect("the tunnel comes up");
    assert!(d.ping4(mn, cn, 1));
    let rd = route_direction(&d, mn);
    let refused = refusals_sent(&d, mn);
    let unauthorized = d.sim.drops(mn).get(DropReason::Unauthorized);

    redirect(&mut d, "mn.zone-a.example", &rd, 1, |m| m.peer.fqdn = name("other.zone-b.example"));
    let tunnels = d.node(mn).tunnels();
    assert!(tunnels.iter().all(|t| t.peer.as_str() == "cn.zone-b.example"), "{tunnels:?}");
    assert_eq!(refusals_sent(&d, mn), refused + 1, "the DC hears the refusal");
    assert_eq!(d.sim.drops(mn).get(DropReason::Unauthorized), unauthorized + 1);
    assert!(d.ping4(mn, cn, 1), "cn's tunnel still carries its address {}", vcn.v4);

    redirect(&mut d, "mn.zone-a.example", &rd, 2, |_| {});
    assert_eq!(d.node(mn).tunnels().len(), 2, "the same peer under a new session is taken");
    assert_eq!(refusals_sent(&d, mn), refused + 1);
}

/// A peer virtual address outside the node's `virtual_routes` would leave the box by its
/// default route, in clear: the direction is refused, and the look-up fails.
#[test]
fn a_peer_address_outside_virtual_routes_is_refused() {
    let mut d = Deployment::new(62, Options::default());
    let mn = node(&mut d, "mn.zone-a.example", 10, &[], Some((&["198.18.0.0/15", "2001:db8:ff0::/44"], &[])));
    let cn = node(&mut d, "cn.zone-b.example", 11, &[], None);
    assert!(d.bring_up(mn) && d.bring_up(cn));
    assert!(d.resolve(mn, "cn.zone-b.example").is_ok(), "inside virtual_routes: taken");
    let rd = route_direction(&d, mn);
    let refused = refusals_sent(&d, mn);
    redirect(&mut d, "mn.zone-a.example", &rd, 1, |m| {
        m.peer.fqdn = name("far.zone-b.example");
        m.peer.virtual_addrs.v4 = "198.19.200.1".parse().unwrap();
        m.peer.virtual_addrs.v6 = "2001:db8:ff::77".parse().unwrap();
    });
    assert!(d.node(mn).tunnels().iter().all(|t| t.peer.as_str() != "far.zone-b.example"));
    assert_eq!(refusals_sent(&d, mn), refused + 1);
}

/// Announced prefixes outside `accept_peer_prefixes`, or over the virtual routes, are not
/// taken (shown as refused, never sealed to); the peer's other prefixes are.
#[test]
fn a_peer_prefix_outside_the_allowlist_is_not_sealed_to() {
    let mut d = Deployment::new(63, Options::default());
    let mn = node(
        &mut d,
        "mn.zone-a.example",
        10,
        &[],
        Some((&["198.18.0.0/15", "2001:db8:ff0::/44"], &["192.168.0.0/16"])),
    );
    let cn = node(&mut d, "cn.zone-b.example", 11, &["192.168.60.0/24", "203.0.113.0/24"], None);
    assert!(d.bring_up(mn) && d.bring_up(cn));
    assert!(d.resolve(mn, "cn.zone-b.example").is_ok());
    let t = d.node(mn).tunnels().into_iter().find(|t| t.established).expect("a tunnel");
    assert_eq!(t.peer_prefixes, vec![prefix("192.168.60.0/24")]);
    assert_eq!(t.refused_prefixes, vec![(prefix("203.0.113.0/24"), "outside accept_peer_prefixes")]);
    let vmn = d.node(mn).virtual_addrs().unwrap();
    let now = d.now();
    let out = ipv4_packet(vmn.v4, "203.0.113.7".parse().unwrap(), b"x");
    assert!(matches!(d.node(mn).send_ip(now, &out), Err(SendError::NoTunnel(_))), "not sealed to");
    let ok = ipv4_packet(vmn.v4, "192.168.60.7".parse().unwrap(), b"y");
    assert!(d.node(mn).send_ip(now, &ok).is_ok());

    // A prefix over the virtual routes would take other peers' packets.
    let rd = route_direction(&d, mn);
    redirect(&mut d, "mn.zone-a.example", &rd, 1, |m| {
        m.tail.1 = ntm_proto::wire::List::new();
        let _ = m.tail.1.push(prefix("198.18.0.0/16"));
    });
    let t = d.node(mn).tunnels().into_iter().find(|t| t.refused_prefixes.iter().any(|(p, _)| p.prefix_len() == 16));
    let t = t.expect("the renewed tunnel");
    assert!(t.peer_prefixes.is_empty());
    assert_eq!(t.refused_prefixes[0].1, "overlaps the virtual routes");
}
