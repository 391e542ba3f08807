//! Direct paths through a NAT that maps per destination (issue 15, item 3): the DC's
//! mapping test on its second port, and the "birthday" search it sets off between a box
//! behind such a NAT and one behind a NAT that keeps one port per socket but filters by
//! address and port. Read each test as a script over virtual time. The figures the issue
//! asks for (time to the direct path, share of runs that find it, stall after a move) are
//! printed (`cargo test -p ntm-sim --test birthday -- --nocapture`).

// Printing the measured figures is part of these tests' report.
#![allow(clippy::print_stdout)]

use ntm_proto::engine::dc::Dc;
use ntm_proto::engine::node::{Node, PathKind, TraversalStats};
use ntm_proto::time::{Duration, Instant};
use ntm_proto::wire::registration::NatMapping;
use ntm_proto::wire::{Envelope, MsgType};
use ntm_sim::deploy::*;
use ntm_sim::{Direction, HostId, LinkConfig, NatConfig, RealmConfig, RealmId};
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
    let _ = d.sim.run_until_cond(deadline, |s| s.engine_ref::<Node>(h).nat_mapping() != NatMapping::Untested);
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
        d.sim.enable_capture(d.dc_a);
        assert_eq!(tested(&mut d, h), expect, "{label}: the node's verdict");
        // The answer left from the mapping port: a NAT that maps per destination lets in
        // only what comes from where the probe went.
        let acks: Vec<u16> = d
            .sim
            .capture(d.dc_a)
            .iter()
            .filter(|c| c.dir == Direction::Out && c.dst.port() != DC_MAPPING_PORT)
            .filter(|c| Envelope::new_checked(&c.bytes[..]).is_ok_and(|e| e.msg_type() == MsgType::MappingProbeAck))
            .map(|c| c.src.port())
            .collect();
        assert_eq!(acks, [DC_MAPPING_PORT], "{label}: one Mapping Probe Ack, from the mapping port");
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
}

// ---- the search of ports ------------------------------------------------------------

const MN: &str = "mn.zone-a.example";
const CN: &str = "cn.zone-b.example";

/// Where a box of these tests sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Nat {
    Symmetric,
    PortRestricted,
    Cgn,
}

fn place(d: &mut Deployment, fqdn: &str, nat: Nat, n: u8) -> HostId {
    match nat {
        Nat::Symmetric => behind(d, fqdn, NatConfig::symmetric()),
        Nat::PortRestricted => behind(d, fqdn, NatConfig::port_restricted_cone()),
        Nat::Cgn => behind_cgn(d, fqdn, n),
    }
}

/// A deployment with MN (zone a) at `a` and CN (zone b) at `b`, both registered and
/// tested, and MN's tunnel to CN up (on the relay, at first). Returns the time it came up.
fn tunnel(seed: u64, opts: Options, a: Nat, b: Nat) -> (Deployment, HostId, HostId, Instant) {
    let mut d = Deployment::new(seed, opts);
    let mn = place(&mut d, MN, a, 1);
    let cn = place(&mut d, CN, b, 2);
    for h in [mn, cn] {
        let _ = tested(&mut d, h);
    }
    assert!(d.resolve(mn, CN).is_ok(), "seed {seed}: tunnel");
    let up = d.now();
    (d, mn, cn, up)
}

/// Runs until both ends are on the direct path (or `limit` passes); the time it took.
fn until_direct(d: &mut Deployment, mn: HostId, cn: HostId, limit: Duration) -> Option<Duration> {
    let start = d.now();
    let both = d.sim.run_until_cond(start + limit, |s| {
        let direct = |s: &mut ntm_sim::Sim, h: HostId, peer: &str| {
            s.engine_ref::<Node>(h)
                .tunnels()
                .into_iter()
                .any(|t| t.peer == name(peer) && t.established && !t.superseded && t.path == PathKind::Direct)
        };
        direct(s, mn, CN) && direct(s, cn, MN)
    });
    both.then(|| d.now().saturating_duration_since(start))
}

/// Data packets the RS received since capture began.
fn relayed_data(d: &Deployment) -> usize {
    d.sim
        .capture(d.relays[0])
        .iter()
        .filter(|c| c.dir == Direction::In)
        .filter(|c| Envelope::new_checked(&c.bytes[..]).is_ok_and(|e| e.msg_type() == MsgType::Data))
        .count()
}

/// Guesses per search on the easy side (the node's spray.rs `GUESSES`).
const GUESSES: u64 = 2048;

/// The bounds of one search: at most 3 rounds of 256 probes on the side that opens
/// sockets, [`GUESSES`] on the other.
fn assert_probes_bounded(label: &str, hard: TraversalStats, easy: TraversalStats) {
    assert!(hard.probes <= 256 * 3 * hard.searches, "{label}: hard side sent {} probes", hard.probes);
    assert!(easy.probes <= GUESSES * easy.searches, "{label}: easy side sent {} guesses", easy.probes);
}

/// The search ran and found the path; `hard` keeps one socket for the peer, `easy` none.
fn assert_found_and_tidy(d: &Deployment, label: &str, hard: HostId, easy: HostId) {
    let (hs, es) = (d.sim.engine_ref::<Node>(hard).traversal_stats(), d.sim.engine_ref::<Node>(easy).traversal_stats());
    assert_eq!((hs.searches, es.searches), (1, 1), "{label}: one search each: {hs:?} {es:?}");
    assert!(hs.found + es.found >= 1, "{label}: found by a search: {hs:?} {es:?}");
    // The socket that met the peer is kept; none if a guess landed on the mapping of the
    // hard side's tunnel socket (route optimization's probes made one toward the peer).
    assert!(hs.open_sockets <= 1, "{label}: the hard side keeps at most the socket that met the peer: {hs:?}");
    assert_eq!(es.open_sockets, 0, "{label}: the easy side opens none: {es:?}");
    let open = d.sim.sockets(hard);
    assert_eq!(open.len(), hs.open_sockets, "{label}: the driver closed the others: {open:?}");
    assert!(d.sim.sockets(easy).is_empty(), "{label}");
    assert_probes_bounded(label, hs, es);
}

#[test]
fn symmetric_and_port_restricted_go_direct_whoever_initiates_and_the_relay_carries_no_more_data() {
    for (i, (a, b)) in
        [(Nat::Symmetric, Nat::PortRestricted), (Nat::PortRestricted, Nat::Symmetric)].into_iter().enumerate()
    {
        let label = format!("{a:?} -> {b:?}");
        let (mut d, mn, cn, _) = tunnel(720 + u64::try_from(i).unwrap(), Options::default(), a, b);
        assert_eq!(d.path(mn, CN), Some(PathKind::Relay), "{label}: relayed at first");
        let took = until_direct(&mut d, mn, cn, secs(5));
        assert!(took.is_some(), "{label}: direct within 5 s of the tunnel coming up");
        println!("{label}: direct {:?} after the tunnel came up", took.unwrap());
        let (hard, easy) = if a == Nat::Symmetric { (mn, cn) } else { (cn, mn) };
        assert_found_and_tidy(&d, &label, hard, easy);

        // Data both ways, none of it through the RS.
        d.sim.enable_capture(d.relays[0]);
        d.sim.enable_capture(hard);
        for tag in 0..10 {
            assert!(d.ping4(mn, cn, 2 * tag) && d.ping4(cn, mn, 2 * tag + 1), "{label}: data both ways");
        }
        assert_eq!(relayed_data(&d), 0, "{label}: the RS carries none of it");
        // The data left the hard side from the socket that met the peer.
        let kept = d.sim.sockets(hard).first().map_or(NODE_PORT, |&(_, port)| port);
        let out: Vec<u16> = d
            .sim
            .capture(hard)
            .iter()
            .filter(|c| c.dir == Direction::Out)
            .filter(|c| Envelope::new_checked(&c.bytes[..]).is_ok_and(|e| e.msg_type() == MsgType::Data))
            .map(|c| c.src.port())
            .collect();
        assert!(!out.is_empty() && out.iter().all(|&p| p == kept), "{label}: data from socket {kept}: {out:?}");
        // Later, still direct, on the same socket.
        d.run_for(secs(30));
        assert_eq!((d.path(mn, CN), d.path(cn, MN)), (Some(PathKind::Direct), Some(PathKind::Direct)), "{label}");
        assert!(d.ping4(mn, cn, 100) && d.ping4(cn, mn, 101), "{label}: data after 30 s");
        assert_eq!(d.sim.sockets(hard).first().map_or(NODE_PORT, |&(_, port)| port), kept, "{label}");
    }
}

#[test]
fn over_fifty_seeds_nearly_every_symmetric_port_restricted_pair_goes_direct_within_five_seconds() {
    let (mut direct, mut times, mut failed) = (0, Vec::new(), Vec::new());
    let seeds = 50u64;
    for seed in 0..seeds {
        // Both orders, and the CGN as the hard side in every fifth run.
        let (a, b) = match seed % 5 {
            0 => (Nat::Cgn, Nat::PortRestricted),
            1 | 3 => (Nat::PortRestricted, Nat::Symmetric),
            _ => (Nat::Symmetric, Nat::PortRestricted),
        };
        let (mut d, mn, cn, _) = tunnel(1000 + seed, Options::default(), a, b);
        let (hard, easy) = if a == Nat::PortRestricted { (cn, mn) } else { (mn, cn) };
        let label = format!("seed {}: {a:?} -> {b:?}", 1000 + seed);
        match until_direct(&mut d, mn, cn, secs(5)) {
            Some(t) => {
                direct += 1;
                times.push(t);
                assert_found_and_tidy(&d, &label, hard, easy);
                assert!(d.ping4(mn, cn, 1) && d.ping4(cn, mn, 2), "{label}: data both ways");
            }
            None => {
                failed.push(label.clone());
                // A search that found nothing leaves no socket open and the relay working.
                let (hs, es) = (
                    d.sim.engine_ref::<Node>(hard).traversal_stats(),
                    d.sim.engine_ref::<Node>(easy).traversal_stats(),
                );
                assert_eq!((hs.open_sockets, es.open_sockets), (0, 0), "{label}: {hs:?} {es:?}");
                assert!(d.sim.sockets(hard).is_empty(), "{label}: {:?}", d.sim.sockets(hard));
                assert_probes_bounded(&label, hs, es);
                assert!(d.ping4(mn, cn, 1) && d.ping4(cn, mn, 2), "{label}: still relayed");
            }
        }
    }
    times.sort();
    let median = times.get(times.len() / 2).copied().unwrap_or_default();
    let worst = times.last().copied().unwrap_or_default();
    println!(
        "symmetric <-> port-restricted: {direct} of {seeds} direct ({:.0} %), median {median:?}, slowest {worst:?}; \
         relayed: {failed:?}",
        100.0 * f64::from(direct) / seeds as f64
    );
    assert!(f64::from(direct) >= 0.9 * seeds as f64, "{direct} of {seeds} direct; relayed: {failed:?}");
}

#[test]
fn two_symmetric_nats_stay_relayed_and_search_nothing() {
    for (i, (a, b)) in [(Nat::Symmetric, Nat::Symmetric), (Nat::Symmetric, Nat::Cgn)].into_iter().enumerate() {
        let label = format!("{a:?} -> {b:?}");
        let (mut d, mn, cn, _) = tunnel(730 + u64::try_from(i).unwrap(), Options::default(), a, b);
        assert_eq!(d.node(mn).nat_mapping(), NatMapping::Dependent, "{label}");
        assert_eq!(d.node(cn).nat_mapping(), NatMapping::Dependent, "{label}");
        assert!(until_direct(&mut d, mn, cn, secs(10)).is_none(), "{label}: no direct path");
        assert_eq!((d.path(mn, CN), d.path(cn, MN)), (Some(PathKind::Relay), Some(PathKind::Relay)), "{label}");
        for h in [mn, cn] {
            assert_eq!(d.node(h).traversal_stats(), TraversalStats::default(), "{label}: no search");
            assert_eq!(d.sim.host_stats(h).sockets_opened, 0, "{label}: no extra socket");
        }
        assert!(d.ping4(mn, cn, 1) && d.ping4(cn, mn, 2), "{label}: relayed data");
    }
}

#[test]
fn without_the_dcs_mapping_port_symmetric_and_port_restricted_stay_relayed() {
    // The baseline the search improves on: no verdicts, no search, the relay.
    let opts = Options { mapping_port: 0, ..Options::default() };
    let (mut d, mn, cn, _) = tunnel(740, opts, Nat::Symmetric, Nat::PortRestricted);
    assert!(until_direct(&mut d, mn, cn, secs(10)).is_none());
    assert_eq!((d.path(mn, CN), d.path(cn, MN)), (Some(PathKind::Relay), Some(PathKind::Relay)));
    for h in [mn, cn] {
        assert_eq!(d.node(h).traversal_stats().searches, 0);
    }
}

#[test]
fn a_search_that_finds_nothing_closes_every_socket_and_leaves_the_tunnel_on_the_relay() {
    let (mut d, mn, cn, _) = tunnel(750, Options::default(), Nat::Symmetric, Nat::PortRestricted);
    // The easy side's guesses all go astray: its uplink loses everything for a while
    // (the relayed tunnel too, which comes back with it).
    let easy_realm = d.sim.host_realm(cn);
    d.sim.set_uplink(easy_realm, LinkConfig::new(Duration::from_millis(10)).with_loss(1.0));
    d.run_for(secs(6));
    d.sim.set_uplink(easy_realm, LinkConfig::new(Duration::from_millis(10)));
    let (hs, es) = (d.node(mn).traversal_stats(), d.node(cn).traversal_stats());
    assert_eq!((hs.searches, hs.found, es.found), (1, 0, 0), "{hs:?} {es:?}");
    assert_eq!(hs.open_sockets, 0, "every socket released: {hs:?}");
    assert!(d.sim.sockets(mn).is_empty(), "and closed by the driver: {:?}", d.sim.sockets(mn));
    assert_eq!(d.sim.host_stats(mn).sockets_opened, 256);
    assert_eq!(d.sim.host_stats(mn).sockets_closed, 256);
    assert_probes_bounded("lossy", hs, es);
    assert!(hs.probes > 0 && hs.probes <= 768, "{hs:?}");
    // The tunnel is still there, relayed.
    let ok = d.sim.run_until_cond(d.now() + secs(20), |_| true);
    assert!(ok);
    let mut up = false;
    for tag in 0..20 {
        if d.ping4(mn, cn, 2 * tag) && d.ping4(cn, mn, 2 * tag + 1) {
            up = true;
            break;
        }
    }
    assert!(up, "relayed data flows again");
    assert_eq!(d.path(mn, CN), Some(PathKind::Relay));
}

#[test]
fn the_hard_side_moving_after_going_direct_continues_the_stream_within_a_second() {
    for (i, (a, b)) in
        [(Nat::Symmetric, Nat::PortRestricted), (Nat::PortRestricted, Nat::Symmetric)].into_iter().enumerate()
    {
        let label = format!("{a:?} -> {b:?}");
        let (mut d, mn, cn, _) = tunnel(760 + u64::try_from(i).unwrap(), Options::default(), a, b);
        assert!(until_direct(&mut d, mn, cn, secs(5)).is_some(), "{label}: direct");
        let hard = if a == Nat::Symmetric { mn } else { cn };
        // The hard side switches to another symmetric network (Wi-Fi to LTE).
        let lte = d.home(|o| RealmConfig::v4_only(o).with_nat(NatConfig::symmetric()));
        let addr = ip("10.20.0.7");
        d.sim.move_host(hard, lte, &[addr]);
        let now = d.now();
        d.node(hard).handle_network_change(now, vec![SocketAddr::new(addr, NODE_PORT)]);
        let stalled = d.stall(mn, cn, secs(10));
        println!("{label}: the hard side moved; stall {stalled:?}");
        assert!(stalled.is_some_and(|t| t <= secs(1)), "{label}: stall {stalled:?}");
        // It settles: data keeps flowing, on at most one kept socket.
        d.run_for(secs(30));
        assert!(d.ping4(mn, cn, 1) && d.ping4(cn, mn, 2), "{label}: data after the move");
        let open = d.node(hard).traversal_stats().open_sockets;
        assert!(open <= 1, "{label}: {open} sockets");
    }
}

#[test]
fn a_socket_kept_for_a_peer_is_closed_when_a_later_search_keeps_another_for_it() {
    // The hard side goes direct, moves, and searches again: the new search keeps a new
    // socket for the same peer address, and the old one must be released to the driver.
    let (mut d, mn, cn, _) = tunnel(760, Options::default(), Nat::Symmetric, Nat::PortRestricted);
    assert!(until_direct(&mut d, mn, cn, secs(5)).is_some(), "direct");
    let first = d.sim.sockets(mn);
    assert_eq!(first.len(), 1);
    let lte = d.home(|o| RealmConfig::v4_only(o).with_nat(NatConfig::symmetric()));
    let addr = ip("10.20.0.7");
    d.sim.move_host(mn, lte, &[addr]);
    let now = d.now();
    d.node(mn).handle_network_change(now, vec![SocketAddr::new(addr, NODE_PORT)]);
    d.run_for(secs(30));
    let stats = d.node(mn).traversal_stats();
    assert_eq!((stats.searches, stats.found), (2, 2), "a second search after the move found the path: {stats:?}");
    assert!(d.ping4(mn, cn, 1) && d.ping4(cn, mn, 2));
    let now_open = d.sim.sockets(mn);
    assert_eq!(now_open.len(), stats.open_sockets, "the driver has the node's sockets open, no more: {now_open:?}");
    assert!(!now_open.contains(&first[0]), "the first search's socket is closed: {now_open:?}");
}

#[test]
fn behind_a_nat_that_filters_by_address_only_the_peer_of_a_symmetric_nat_reaches_it_one_way() {
    // The DC's verdicts (one Independent, one Dependent) start a search here too, though
    // route optimization finds the path alone: the hard side's probes from its 256
    // sockets all pass the easy side's filter. Whatever path the two end on, a one-way
    // stream from the easy side (nothing coming back to show it a new address) must arrive.
    let mut failures = Vec::new();
    for (i, (easy_nat, easy_first)) in
        [(NatConfig::full_cone(), true), (NatConfig::restricted_cone(), true), (NatConfig::restricted_cone(), false)]
            .into_iter()
            .enumerate()
    {
        let seed = 770 + u64::try_from(i).unwrap();
        let mut d = Deployment::new(seed, Options::default());
        let (easy_name, hard_name) = if easy_first { (MN, CN) } else { (CN, MN) };
        let easy = behind(&mut d, easy_name, easy_nat);
        let hard = behind_cgn(&mut d, hard_name, 2);
        for h in [easy, hard] {
            let _ = tested(&mut d, h);
        }
        let (mn, cn) = if easy_first { (easy, hard) } else { (hard, easy) };
        assert!(d.resolve(mn, CN).is_ok(), "seed {seed}: tunnel");
        assert!(until_direct(&mut d, mn, cn, secs(5)).is_some(), "seed {seed}: direct");
        d.run_for(secs(6));
        let (ve, vh) = (d.node(easy).virtual_addrs().unwrap(), d.node(hard).virtual_addrs().unwrap());
        let _ = d.sim.take_ip(hard);
        let mut arrived = 0;
        for tag in 0..10u32 {
            let pkt = ipv4_packet(ve.v4, vh.v4, &tag.to_be_bytes());
            let now = d.now();
            let _ = d.node(easy).send_ip(now, &pkt);
            d.run_for(Duration::from_millis(20));
            arrived += d.sim.take_ip(hard).len();
        }
        d.run_for(Duration::from_millis(500));
        arrived += d.sim.take_ip(hard).len();
        if arrived < 10 {
            let to = d.node(easy).tunnels().into_iter().find_map(|t| t.remote);
            failures.push(format!(
                "seed {seed}: {arrived} of 10 arrived; the easy side sends to {to:?}, the hard side's sockets {:?}, \
                 no socket there: {}",
                d.sim.sockets(hard),
                d.sim.host_stats(hard).port_unreachable
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_nat_that_maps_per_destination_address_looks_independent_and_its_search_fails_harmlessly() {
    // The documented limit of a mapping test with a second port on one address
    // (protocol.md 7.3.1): a NAT that maps per destination address keeps its port toward
    // both of the DC's ports, so the DC finds it independent and sets off a search with a
    // symmetric peer, which cannot meet (its guesses leave from a mapping the peer's
    // probes do not reach). It must cost no more than a bounded search.
    let adm = NatConfig { mapping: ntm_sim::Mapping::AddressDependent, ..NatConfig::port_restricted_cone() };
    let mut d = Deployment::new(780, Options::default());
    let mn = behind(&mut d, MN, adm);
    let cn = behind(&mut d, CN, NatConfig::symmetric());
    assert_eq!(tested(&mut d, mn), NatMapping::Independent, "looks independent");
    assert_eq!(tested(&mut d, cn), NatMapping::Dependent);
    assert!(d.resolve(mn, CN).is_ok());
    assert!(until_direct(&mut d, mn, cn, secs(10)).is_none(), "no direct path");
    let (hs, es) = (d.node(cn).traversal_stats(), d.node(mn).traversal_stats());
    assert_eq!((hs.searches, es.searches, hs.found, es.found), (1, 1, 0, 0), "{hs:?} {es:?}");
    assert_probes_bounded("address-dependent", hs, es);
    assert_eq!((hs.open_sockets, es.open_sockets), (0, 0));
    assert!(d.sim.sockets(cn).is_empty() && d.sim.sockets(mn).is_empty());
    assert!(d.ping4(mn, cn, 1) && d.ping4(cn, mn, 2), "still relayed");
    assert_eq!((d.path(mn, CN), d.path(cn, MN)), (Some(PathKind::Relay), Some(PathKind::Relay)));
}

#[test]
fn under_loss_on_every_hop_the_search_still_finds_most_paths_and_data_flows_every_time() {
    // 2 % loss on every hop: probes, guesses and answers get lost too.
    let (mut direct, mut relayed) = (0, Vec::new());
    let seeds = 20u64;
    for seed in 2000..2000 + seeds {
        let opts = Options { loss: 0.02, ..Options::default() };
        let (a, b) =
            if seed % 2 == 0 { (Nat::Symmetric, Nat::PortRestricted) } else { (Nat::PortRestricted, Nat::Symmetric) };
        let (mut d, mn, cn, _) = tunnel(seed, opts, a, b);
        d.run_for(secs(8));
        // A stream both ways: data reaches each end within a second, whatever the path.
        let took = d.stall(mn, cn, secs(5));
        assert!(took.is_some_and(|t| t <= secs(1)), "seed {seed}: data both ways took {took:?}");
        d.run_for(secs(1));
        let paths = (d.path(mn, CN), d.path(cn, MN));
        if paths == (Some(PathKind::Direct), Some(PathKind::Direct)) {
            direct += 1;
        } else {
            relayed.push(format!("seed {seed}: {paths:?}"));
        }
        for h in [mn, cn] {
            let s = d.node(h).traversal_stats();
            assert_eq!(d.sim.sockets(h).len(), s.open_sockets, "seed {seed}: the driver's sockets are the node's");
            assert!(s.open_sockets <= 1 && s.searches <= 1, "seed {seed}: {s:?}");
        }
    }
    println!("under 2 % loss: {direct} of {seeds} direct; not direct: {relayed:?}");
    assert!(f64::from(direct) >= 0.9 * seeds as f64, "{direct} of {seeds}: {relayed:?}");
}

#[test]
fn a_stream_to_a_peer_behind_a_symmetric_nat_is_not_sent_again_for_every_probe_of_a_search() {
    // The easy side's NAT filters by address only: every probe of a search by the hard
    // side gets in (the engine once ran one here besides route optimization, and the
    // easy side followed each of its 256 probes, sending its recent packets again each
    // time: 1280 for 500). Its stream must not be sent again per probe (they share their
    // search's id; none of them is the peer moving), nor to sockets about to close.
    let mut d = Deployment::new(771, Options::default());
    let easy = behind(&mut d, MN, NatConfig::restricted_cone());
    let hard = behind_cgn(&mut d, CN, 2);
    for h in [easy, hard] {
        let _ = tested(&mut d, h);
    }
    d.sim.enable_capture(easy);
    assert!(d.resolve(easy, CN).is_ok());
    let (ve, vh) = (d.node(easy).virtual_addrs().unwrap(), d.node(hard).virtual_addrs().unwrap());
    let sent = 500u32;
    for t in 0..sent {
        let pkt = ipv4_packet(ve.v4, vh.v4, &[t.to_be_bytes().to_vec(), vec![0; 1000]].concat());
        let now = d.now();
        let _ = d.node(easy).send_ip(now, &pkt);
        d.run_for(Duration::from_millis(10));
    }
    assert!(d.node(hard).traversal_stats().searches <= 1);
    let resent = d.node(easy).resent_packets();
    let data_out = d
        .sim
        .capture(easy)
        .iter()
        .filter(|c| c.dir == Direction::Out)
        .filter(|c| Envelope::new_checked(&c.bytes[..]).is_ok_and(|e| e.msg_type() == MsgType::Data))
        .count();
    // A real move sends again at most the ring of recent packets (32), once.
    assert!(resent <= 32, "{resent} data packets sent again for {sent} sent");
    assert!(data_out <= 500 + 32, "{data_out} data datagrams for {sent} packets");
    // What reaches the search's closed sockets: at most an answer per probe (the easy
    // side answers each; the hard side closes them at the first answer) and one ring.
    let unreachable = d.sim.host_stats(hard).port_unreachable;
    assert!(unreachable <= 256 + 32, "{unreachable} datagrams to the hard side's closed sockets");
}

#[test]
fn searches_for_two_peers_run_one_after_the_other_within_the_socket_bound() {
    // The hard side resolves two peers behind port-restricted NATs at once: one search
    // waits for the other. The first finds nothing (its peer's uplink is cut meanwhile),
    // and the second starts as it ends: the driver must close the first's sockets before
    // opening the second's, or it would hold twice the node's bound.
    let mut d = Deployment::new(790, Options::default());
    let hard = behind(&mut d, MN, NatConfig::symmetric());
    let cn1 = behind(&mut d, CN, NatConfig::port_restricted_cone());
    let cn2 = behind(&mut d, "cn2.zone-b.example", NatConfig::port_restricted_cone());
    for h in [hard, cn1, cn2] {
        let _ = tested(&mut d, h);
    }
    assert!(d.resolve(hard, CN).is_ok());
    assert!(d.resolve(hard, "cn2.zone-b.example").is_ok());
    let cut = d.sim.host_realm(cn1);
    d.sim.set_uplink(cut, LinkConfig::new(Duration::from_millis(10)).with_loss(1.0));
    let mut most = 0;
    let end = d.now() + secs(10);
    while d.now() < end {
        d.run_for(Duration::from_millis(10));
        most = most.max(d.sim.sockets(hard).len());
    }
    d.sim.set_uplink(cut, LinkConfig::new(Duration::from_millis(10)));
    let s = d.node(hard).traversal_stats();
    println!("two searches: {s:?}, most sockets open at once {most}");
    assert_eq!(s.searches, 2, "{s:?}");
    assert_eq!(d.sim.host_stats(hard).sockets_refused, 0, "no socket refused");
    assert!(most <= ntm_proto::engine::node::LOCALS_MAX, "{most} sockets open at once");
    assert_eq!(d.path(hard, "cn2.zone-b.example"), Some(PathKind::Direct), "the second search found its peer");
}

#[test]
fn a_dc_restarted_from_its_saved_nodes_keeps_their_mapping_verdicts_and_still_directs_a_search() {
    let mut d = Deployment::new(780, Options::default());
    let mn = place(&mut d, MN, Nat::Symmetric, 1);
    let cn = place(&mut d, CN, Nat::PortRestricted, 2);
    assert_eq!((tested(&mut d, mn), tested(&mut d, cn)), (NatMapping::Dependent, NatMapping::Independent));
    // Both DCs restart from their saved state; the nodes do not register again (nothing
    // about them changed), so only the saved verdicts can tell the DCs.
    let (dc_a, dc_b) = (d.dc_a, d.dc_b);
    d.restart_dc_from_saved_state(dc_a, "dc-a-2").unwrap();
    d.restart_dc_from_saved_state(dc_b, "dc-b-2").unwrap();
    assert_eq!(dc_verdicts(&d, dc_a, MN).first().map(|v| v.2), Some(NatMapping::Dependent), "DC-A still knows");
    assert_eq!(dc_verdicts(&d, dc_b, CN).first().map(|v| v.2), Some(NatMapping::Independent), "DC-B still knows");
    d.run_for(secs(1));
    assert!(d.resolve(mn, CN).is_ok(), "tunnel after the restarts");
    assert!(until_direct(&mut d, mn, cn, secs(5)).is_some(), "direct through a search directed after the restarts");
    assert_eq!(d.node(mn).traversal_stats().found, 1, "the search found it");
}

#[test]
fn a_mapping_offer_that_overtakes_its_registration_response_still_starts_the_test() {
    // With loss the sim also reorders: in this seed the DC's offer reaches the node before
    // the Registration Response it follows (checked below, so the case is the one meant).
    let mut d = Deployment::new(2000, Options { loss: 0.02, ..Options::default() });
    let mn = place(&mut d, MN, Nat::Symmetric, 1);
    d.sim.enable_capture(mn);
    assert_eq!(tested(&mut d, mn), NatMapping::Dependent, "tested although the offer came first");
    let arrived: Vec<MsgType> = d
        .sim
        .capture(mn)
        .iter()
        .filter(|c| c.dir == Direction::In)
        .filter_map(|c| Envelope::new_checked(&c.bytes[..]).ok().map(|e| e.msg_type()))
        .filter(|t| matches!(t, MsgType::MappingOffer | MsgType::RegistrationResponse))
        .collect();
    assert_eq!(arrived.first(), Some(&MsgType::MappingOffer), "the offer overtook the response: {arrived:?}");
}

#[test]
fn a_hard_side_that_leaves_its_nat_closes_its_kept_socket_and_keeps_the_stream() {
    // An outside tester's case: the box behind the symmetric NAT goes direct through a
    // kept socket, then moves out from behind the NAT (a public address) or behind a
    // port-restricted one. The kept socket's mapping was its old NAT's: sending on from it
    // reached nobody, for minutes.
    let out_of_nat: [(&str, Option<NatConfig>); 2] =
        [("public", None), ("port-restricted", Some(NatConfig::port_restricted_cone()))];
    for (i, (label, nat)) in out_of_nat.into_iter().enumerate() {
        let (mut d, mn, cn, _) =
            tunnel(790 + u64::try_from(i).unwrap(), Options::default(), Nat::Symmetric, Nat::PortRestricted);
        assert!(until_direct(&mut d, mn, cn, secs(5)).is_some(), "{label}: direct");
        assert_eq!(d.node(mn).traversal_stats().open_sockets, 1, "{label}: one kept socket");
        let (realm, addr) = match nat {
            None => (RealmId::INTERNET, ip("198.51.100.77")),
            Some(nat) => (d.home(|o| RealmConfig::v4_only(o).with_nat(nat)), ip("192.168.44.7")),
        };
        d.sim.move_host(mn, realm, &[addr]);
        let now = d.now();
        d.node(mn).handle_network_change(now, vec![SocketAddr::new(addr, NODE_PORT)]);
        let stalled = d.stall(mn, cn, secs(10));
        println!("{label}: the hard side left its NAT; stall {stalled:?}");
        assert!(stalled.is_some_and(|t| t <= secs(1)), "{label}: stall {stalled:?}");
        assert_eq!(d.node(mn).traversal_stats().open_sockets, 0, "{label}: the kept socket is closed");
        assert!(d.sim.sockets(mn).is_empty(), "{label}: and the driver closed it: {:?}", d.sim.sockets(mn));
        d.run_for(secs(30));
        assert!(d.ping4(mn, cn, 1) && d.ping4(cn, mn, 2), "{label}: data 30 s after the move");
    }
}
