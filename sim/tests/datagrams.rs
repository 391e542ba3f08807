//! Datagrams: determinism, links, NAT behaviours (RFC 4787), address families, mobility,
//! failures and the data-plane hooks.

mod common;

use common::*;
use ntm_proto::engine::Engine;
use ntm_sim::probe::{Heard, Probe};
use ntm_sim::{
    Captured, Carrier, Direction, Filtering, LinkConfig, LinkId, Mapping, NatConfig, PortAllocation, RealmConfig,
    RealmId, Sim,
};
use rand_core::RngCore;

/// A lossy, jittery run through a symmetric NAT; returns every host's capture.
fn traced_run(seed: u64) -> Vec<Vec<Captured>> {
    let rough = LinkConfig::new(ms(10)).with_jitter(ms(30)).with_loss(0.2);
    let home = RealmConfig::v4_only("203.0.113.1".parse().unwrap()).with_nat(NatConfig::symmetric()).with_uplink(rough);
    let mut w = World::new(seed, home);
    let hosts = [w.client, w.s1, w.s2];
    for h in hosts {
        w.sim.enable_capture(h);
    }
    let (s1, s2) = (w.v4(w.s1), w.v4(w.s2));
    for i in 0..50u8 {
        w.probe(w.client).send(s1, vec![i]);
        w.probe(w.client).send(s2, vec![i]);
        w.sim.run_for(ms(5));
    }
    w.sim.run_for(secs(2));
    hosts.iter().map(|&h| w.sim.capture(h).to_vec()).collect()
}

#[test]
fn same_seed_gives_the_same_run() {
    let first = traced_run(7);
    assert!(first[0].len() > 100, "the client sent 100 and heard echoes");
    assert_eq!(first, traced_run(7));
    assert_ne!(first, traced_run(8), "another seed loses and reorders other packets");

    // Engine RNGs depend on the seed and the label only.
    let (a, b) = (Sim::new(7), Sim::new(7));
    assert_eq!(a.rng_for("dc").next_u64(), b.rng_for("dc").next_u64());
    assert_ne!(a.rng_for("dc").next_u64(), a.rng_for("rs").next_u64());
    assert_ne!(a.rng_for("dc").next_u64(), Sim::new(8).rng_for("dc").next_u64());
}

#[test]
fn loss_probability_is_roughly_honoured() {
    let mut w = World::behind(NatConfig::default());
    w.sim.set_uplink(w.home, LinkConfig::new(ms(10)).with_loss(0.25));
    let s2 = w.v4(w.s2);
    for _ in 0..4000 {
        w.probe(w.client).send(s2, b"x".to_vec());
    }
    w.sim.run_for(secs(1));

    let heard = w.heard(w.s2).len();
    assert!((2800..=3200).contains(&heard), "{heard} of 4000 arrived at 25% loss");
    let up = w.sim.link_stats(LinkId::Uplink(w.home));
    assert_eq!(up.delivered + up.lost, 4000);
    assert_eq!(up.delivered as usize, heard);
    assert_eq!(w.sim.link_stats(LinkId::Lan(RealmId::INTERNET)).lost, 0);
}

#[test]
fn jitter_reorders_but_delivers_everything() {
    let mut w = World::behind(NatConfig::default());
    w.sim.set_uplink(w.home, LinkConfig::new(ms(10)).with_jitter(ms(40)));
    let s2 = w.v4(w.s2);
    for i in 0..100u8 {
        w.probe(w.client).send(s2, vec![i]);
        w.sim.run_for(ms(1));
    }
    w.sim.run_for(secs(1));

    let order: Vec<u8> = w.heard(w.s2).iter().map(|(_, p)| p[0]).collect();
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    assert_ne!(order, sorted, "40 ms of jitter on 1 ms spacing reorders");
}

#[test]
fn mapping_behaviour_decides_the_outside_port_per_destination() {
    // Address-dependent mapping with one address and two ports is covered by the NAT's
    // unit tests: two servers cannot share an address here.
    for (mapping, shared) in [
        (Mapping::EndpointIndependent, true),
        (Mapping::AddressDependent, false),
        (Mapping::AddressAndPortDependent, false),
    ] {
        let mut w = World::behind(NatConfig { mapping, ..NatConfig::default() });
        let (s1, s2) = (w.v4(w.s1), w.v4(w.s2));
        w.probe(w.client).send(s1, b"a".to_vec());
        w.probe(w.client).send(s2, b"b".to_vec());
        w.sim.run_for(secs(1));

        let seen_by_s1 = w.heard(w.s1)[0].0;
        let seen_by_s2 = w.heard(w.s2)[0].0;
        assert_eq!(seen_by_s1.ip(), ip("203.0.113.1"));
        assert_eq!(seen_by_s1 == seen_by_s2, shared, "{mapping:?}");
        assert_eq!(w.sim.nat_stats(w.home).mappings_created, if shared { 1 } else { 2 });
    }
}

#[test]
fn port_allocation_preserves_or_randomises() {
    for (ports, preserved) in [(PortAllocation::Preserving, true), (PortAllocation::Random, false)] {
        let mut w = World::behind(NatConfig { ports, ..NatConfig::default() });
        let s2 = w.v4(w.s2);
        w.probe(w.client).send(s2, b"a".to_vec());
        w.sim.run_for(secs(1));
        assert_eq!(w.heard(w.s2)[0].0.port() == CLIENT_PORT, preserved, "{ports:?}");
    }
}

#[test]
fn filtering_behaviour_decides_who_gets_in() {
    for (filtering, other_port_gets_in, other_host_gets_in) in [
        (Filtering::EndpointIndependent, true, true),
        (Filtering::AddressDependent, true, false),
        (Filtering::AddressAndPortDependent, false, false),
    ] {
        let mut w = World::behind(NatConfig { filtering, ..NatConfig::default() });
        let s1 = w.v4(w.s1);
        w.probe(w.client).send(s1, b"hello".to_vec());
        w.sim.run_for(secs(1));
        let mapped = w.heard(w.s1)[0].0;
        assert_eq!(w.heard(w.client), vec![(s1, b"hello".to_vec())], "{filtering:?}: the answer always gets in");

        // The same server from another port (spoofed onto the internet), then a stranger.
        let other_port = sa("192.0.2.1:9999");
        w.sim.inject(RealmId::INTERNET, other_port, mapped, b"other port".to_vec());
        w.probe(w.s2).send(mapped, b"stranger".to_vec());
        w.sim.run_for(secs(1));

        let heard: Vec<_> = w.heard(w.client).into_iter().skip(1).collect();
        let mut expected = Vec::new();
        if other_port_gets_in {
            expected.push((other_port, b"other port".to_vec()));
        }
        if other_host_gets_in {
            expected.push((w.v4(w.s2), b"stranger".to_vec()));
        }
        assert_eq!(heard, expected, "{filtering:?}");
        let refused = u64::from(!other_port_gets_in) + u64::from(!other_host_gets_in);
        assert_eq!(w.sim.nat_stats(w.home).filtered, refused, "{filtering:?}");
    }
}

#[test]
fn an_expired_mapping_drops_inbound_until_refreshed() {
    let mut w = World::behind(NatConfig { udp_timeout: secs(30), ..NatConfig::full_cone() });
    let s2 = w.v4(w.s2);
    w.probe(w.client).send(s2, b"open".to_vec());
    w.sim.run_for(secs(1));
    let mapped = w.heard(w.s2)[0].0;

    // 20 s after the outbound packet the mapping holds; inbound traffic does not refresh it.
    w.sim.run_until(at(20));
    w.probe(w.s2).send(mapped, b"early".to_vec());
    w.sim.run_until(at(31));
    w.probe(w.s2).send(mapped, b"late".to_vec());
    w.sim.run_until(at(32));
    assert_eq!(w.heard(w.client), vec![(s2, b"early".to_vec())]);
    let nat = w.sim.nat_stats(w.home);
    assert_eq!((nat.no_mapping, nat.mappings_expired), (1, 1));

    // Keepalives every 20 s keep a new mapping for two minutes.
    for t in (40..=160).step_by(20) {
        w.sim.run_until(at(t));
        w.probe(w.client).send(s2, b"keepalive".to_vec());
    }
    w.sim.run_until(at(170));
    let mapped = w.heard(w.s2).last().unwrap().0;
    w.probe(w.s2).send(mapped, b"still there".to_vec());
    w.sim.run_for(secs(1));
    assert_eq!(w.heard(w.client).last().unwrap().1, b"still there");
    assert_eq!(w.sim.nat_stats(w.home).no_mapping, 1);
}

/// A carrier-grade NAT at 198.51.100.1 with two homes inside it (NATs at 100.64.0.2 and
/// 100.64.0.3), one client in each, every NAT full-cone.
fn double_nat(cgn: NatConfig) -> (World, RealmId, ntm_sim::HostId) {
    let mut sim = Sim::new(3);
    let carrier = sim.add_realm(
        "carrier",
        RealmId::INTERNET,
        RealmConfig::v4_only("198.51.100.1".parse().unwrap()).with_nat(cgn),
    );
    let home_a = sim.add_realm(
        "home a",
        carrier,
        RealmConfig::v4_only("100.64.0.2".parse().unwrap()).with_nat(NatConfig::full_cone()),
    );
    let home_b = sim.add_realm(
        "home b",
        carrier,
        RealmConfig::v4_only("100.64.0.3".parse().unwrap()).with_nat(NatConfig::full_cone()),
    );
    let s1 = sim.add_host("s1", RealmId::INTERNET, &[ip("192.0.2.1")], SERVER_PORT, None, Probe::echo());
    let s2 = sim.add_host("s2", RealmId::INTERNET, &[ip("192.0.2.2")], SERVER_PORT, None, Probe::new());
    let a = sim.add_host("a", home_a, &[ip("192.168.1.2")], CLIENT_PORT, None, Probe::new());
    // The same private address in another home is another host.
    let b = sim.add_host("b", home_b, &[ip("192.168.1.2")], CLIENT_PORT, None, Probe::new());
    (World { sim, home: home_a, client: a, s1, s2 }, carrier, b)
}

#[test]
fn double_nat_works_both_ways() {
    let (mut w, carrier, _) = double_nat(NatConfig::full_cone());
    let s1 = w.v4(w.s1);
    w.probe(w.client).send(s1, b"through two NATs".to_vec());
    w.sim.run_for(secs(1));

    let mapped = w.heard(w.s1)[0].0;
    assert_eq!(mapped.ip(), ip("198.51.100.1"), "the server sees the carrier's address");
    assert_eq!(w.heard(w.client), vec![(s1, b"through two NATs".to_vec())]);

    // Both NATs filter nothing, so once mapped, a stranger gets in through both.
    w.probe(w.s2).send(mapped, b"inbound".to_vec());
    w.sim.run_for(secs(1));
    assert_eq!(w.heard(w.client).last().unwrap(), &(w.v4(w.s2), b"inbound".to_vec()));
    assert_eq!(w.sim.nat_stats(carrier).mappings_created, 1);
    assert_eq!(w.sim.nat_stats(w.home).mappings_created, 1);
}

#[test]
fn the_outer_nat_filters_too() {
    let (mut w, carrier, _) = double_nat(NatConfig::port_restricted_cone());
    let s1 = w.v4(w.s1);
    w.probe(w.client).send(s1, b"out".to_vec());
    w.sim.run_for(secs(1));
    let mapped = w.heard(w.s1)[0].0;
    w.probe(w.s2).send(mapped, b"stranger".to_vec());
    w.sim.run_for(secs(1));
    assert_eq!(w.heard(w.client).len(), 1, "only the echo");
    assert_eq!(w.sim.nat_stats(carrier).filtered, 1);
}

#[test]
fn hairpinning_at_the_carrier_nat() {
    for hairpinning in [true, false] {
        let (mut w, carrier, b) = double_nat(NatConfig { hairpinning, ..NatConfig::full_cone() });
        let s1 = w.v4(w.s1);
        w.probe(b).send(s1, b"b".to_vec());
        w.sim.run_for(secs(1));
        let b_mapped = w.heard(w.s1)[0].0;

        // A reaches B at its public address: out through two NATs, back in through two.
        w.probe(w.client).send(b_mapped, b"neighbour".to_vec());
        w.sim.run_for(secs(1));
        let heard = w.sim.engine_ref::<Probe>(b).datagrams();
        if hairpinning {
            let (from, payload) = heard.last().unwrap();
            assert_eq!(from.ip(), ip("198.51.100.1"), "B sees A's public address");
            assert_eq!(payload, b"neighbour");
        } else {
            assert_eq!(heard.len(), 1, "only the echo from s1");
            assert_eq!(w.sim.nat_stats(carrier).hairpin_refused, 1);
        }
    }
}

#[test]
fn a_host_only_sends_in_families_it_has() {
    let mut sim = Sim::new(1);
    let v4_home = sim.add_realm("v4 home", RealmId::INTERNET, RealmConfig::v4_only("203.0.113.1".parse().unwrap()));
    let v6_home = sim.add_realm("v6 home", RealmId::INTERNET, RealmConfig::v6_only());
    let server = sim.add_host(
        "server",
        RealmId::INTERNET,
        &[ip("192.0.2.1"), ip("2001:db8::1")],
        SERVER_PORT,
        None,
        Probe::echo(),
    );
    let v4 = sim.add_host("v4", v4_home, &[ip("192.168.1.2")], CLIENT_PORT, None, Probe::new());
    let v6 = sim.add_host("v6", v6_home, &[ip("2001:db8:1::2")], CLIENT_PORT, None, Probe::new());
    let (server_v4, server_v6) = (sim.addr_v4(server).unwrap(), sim.addr_v6(server).unwrap());

    sim.engine::<Probe>(v4).send(server_v6, b"no v6 here".to_vec());
    sim.engine::<Probe>(v6).send(server_v4, b"no v4 here".to_vec());
    sim.engine::<Probe>(v6).send(server_v6, b"v6".to_vec());
    sim.run_for(secs(1));

    assert_eq!(sim.host_stats(v4).no_source_addr, 1);
    assert_eq!(sim.host_stats(v6).no_source_addr, 1);
    // IPv6 is routed without translation: the server sees the host's own address.
    assert_eq!(sim.engine_ref::<Probe>(server).datagrams(), vec![(sa("[2001:db8:1::2]:4000"), b"v6".to_vec())]);
    assert_eq!(sim.engine_ref::<Probe>(v6).datagrams(), vec![(server_v6, b"v6".to_vec())]);
}

#[test]
#[should_panic(expected = "has no IPv6")]
fn an_ipv4_only_realm_refuses_ipv6_addresses() {
    let mut sim = Sim::new(1);
    let home = sim.add_realm("home", RealmId::INTERNET, RealmConfig::v4_only("203.0.113.1".parse().unwrap()));
    sim.add_host("h", home, &[ip("2001:db8:1::2")], CLIENT_PORT, None, Probe::new());
}

#[test]
fn latency_adds_up_along_the_path() {
    let mut w = World::behind(NatConfig::default());
    w.sim.enable_capture(w.s2);
    let s2 = w.v4(w.s2);
    w.probe(w.client).send(s2, b"x".to_vec());
    w.sim.run_for(secs(1));
    // Home uplink 10 ms, then the internet's last hop to the server 20 ms.
    let got = &w.sim.capture(w.s2)[0];
    assert_eq!(
        (got.at, got.dir, got.carrier),
        (ntm_proto::time::Instant::from_millis(30), Direction::In, Carrier::Udp)
    );
}

#[test]
fn mobility_moves_the_source_address_and_loses_packets_in_flight() {
    let mut w = World::behind(NatConfig::full_cone());
    let office = w.sim.add_realm("office", RealmId::INTERNET, RealmConfig::dual_stack("203.0.113.2".parse().unwrap()));
    let (s1, s2) = (w.v4(w.s1), w.v4(w.s2));
    w.probe(w.client).send(s2, b"from home".to_vec());
    w.sim.run_for(secs(1));
    let old = w.heard(w.s2)[0].0;

    // A packet is on its way to the old address when the host moves.
    w.probe(w.s2).send(old, b"too late".to_vec());
    w.sim.run_for(ms(5));
    w.sim.move_host(w.client, office, &[ip("10.0.0.2"), ip("2001:db8:2::2")]);
    w.probe(w.client).send(s1, b"from the office".to_vec());
    w.sim.run_for(secs(1));

    assert_eq!(w.heard(w.client), vec![(s1, b"from the office".to_vec())]);
    assert_eq!(w.heard(w.s1)[0].0.ip(), ip("203.0.113.2"));
    assert_eq!(w.sim.addr_v6(w.client), Some(sa("[2001:db8:2::2]:4000")));
}

#[test]
fn a_down_host_drops_everything_and_a_restart_forgets() {
    let mut w = World::behind(NatConfig::default());
    let s1 = w.v4(w.s1);
    w.sim.set_down(w.s1, true);
    w.probe(w.s1).set_timer(at(1));
    w.probe(w.client).send(s1, b"anyone?".to_vec());
    w.sim.run_for(secs(2));
    assert!(w.heard(w.s1).is_empty());
    assert!(!w.sim.engine_ref::<Probe>(w.s1).log.iter().any(|h| matches!(h, Heard::Timeout { .. })));
    assert_eq!(w.sim.host_stats(w.s1).dropped_while_down, 1);

    // Back up, the engine's state is intact: the overdue timer fires at once.
    w.sim.set_down(w.s1, false);
    w.sim.run_for(ms(1));
    assert_eq!(w.sim.engine_ref::<Probe>(w.s1).log, vec![Heard::Timeout { at: at(2) }]);

    // A crash and a restart: the new engine runs, up.
    w.sim.set_down(w.s1, true);
    w.sim.replace_engine(w.s1, Probe::echo());
    assert!(!w.sim.is_down(w.s1));
    w.probe(w.client).send(s1, b"again".to_vec());
    w.sim.run_for(secs(1));
    assert_eq!(w.heard(w.s1).len(), 1, "the new engine heard only what came after the restart");
    assert_eq!(w.heard(w.client), vec![(s1, b"again".to_vec())]);
}

#[test]
fn timeouts_fire_on_time_and_time_only_moves_forward() {
    let mut w = World::behind(NatConfig::default());
    w.probe(w.s2).set_timer(at(5));
    w.sim.run_until(at(4));
    assert!(w.sim.engine_ref::<Probe>(w.s2).log.is_empty());
    w.sim.run_until(at(10));
    assert_eq!(w.sim.engine_ref::<Probe>(w.s2).log, vec![Heard::Timeout { at: at(5) }]);
    assert_eq!(w.sim.now(), at(10));
    w.sim.run_until(at(3));
    assert_eq!(w.sim.now(), at(10), "now never goes back");

    // run_until_cond stops as soon as the condition holds.
    w.probe(w.s2).set_timer(at(12));
    let s2 = w.sim.engine_ref::<Probe>(w.s2).poll_timeout();
    assert_eq!(s2, Some(at(12)));
    let held = w.sim.run_until_cond(at(60), |sim| sim.engine_ref::<Probe>(w.s2).log.len() == 2);
    assert!(held);
    assert_eq!(w.sim.now(), at(12));
    assert!(!w.sim.run_until_cond(at(70), |_| false));
    assert_eq!(w.sim.now(), at(70));
}

#[test]
fn decrypted_packets_are_kept_and_forwards_are_sent() {
    let mut w = World::behind(NatConfig::default());
    let relay_to = w.v4(w.s2);
    let relay = w.sim.add_host("rs", RealmId::INTERNET, &[ip("192.0.2.3")], SERVER_PORT, None, Probe::relay(relay_to));
    let rs = w.v4(relay);
    w.sim.enable_capture(relay);
    w.probe(w.client).send(rs, b"ip:inner packet".to_vec());
    w.sim.run_for(secs(1));

    // The relay forwarded the buffer unchanged from its own socket; s2 "decrypted" it.
    assert!(w.sim.take_ip(relay).is_empty());
    assert_eq!(w.sim.take_ip(w.s2), vec![b"inner packet".to_vec()]);
    assert_eq!(w.heard(w.s2), vec![(rs, b"ip:inner packet".to_vec())]);
    assert!(w.sim.take_ip(w.s2).is_empty(), "taken");
    let out = w.sim.capture(relay).iter().find(|c| c.dir == Direction::Out).unwrap();
    assert_eq!((out.src, out.dst), (rs, relay_to));
}

#[test]
fn captures_show_each_side_of_the_nat() {
    let mut w = World::behind(NatConfig::default());
    w.sim.enable_capture(w.client);
    w.sim.enable_capture(w.s1);
    let s1 = w.v4(w.s1);
    w.probe(w.client).send(s1, b"secret?".to_vec());
    w.sim.run_for(secs(1));

    let client: Vec<_> = w.sim.capture(w.client).iter().map(|c| (c.dir, c.src, c.dst)).collect();
    assert_eq!(client, vec![(Direction::Out, sa("192.168.1.2:4000"), s1), (Direction::In, s1, sa("192.168.1.2:4000"))]);
    let server: Vec<_> = w.sim.capture(w.s1).iter().map(|c| (c.dir, c.src, c.dst)).collect();
    assert_eq!(server, vec![(Direction::In, sa("203.0.113.1:4000"), s1), (Direction::Out, s1, sa("203.0.113.1:4000"))]);
    assert!(w.sim.capture(w.s1).iter().all(|c| c.bytes == b"secret?"));
}
