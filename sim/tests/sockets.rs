//! The simulator's extra UDP sockets (host.rs): opened on first use on an ephemeral port,
//! mapped by a NAT like any other inside endpoint, delivered to on their own port, closed
//! when the engine releases them, and bounded.

use ntm_proto::engine::Local;
use ntm_proto::time::Duration;
use ntm_sim::probe::Probe;
use ntm_sim::{HostId, NatConfig, RealmConfig, RealmId, Sim, SOCKETS_MAX};
use std::collections::BTreeSet;
use std::net::SocketAddr;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A phone behind a NAT of kind `nat` and two echo servers on the internet.
fn world(seed: u64, nat: NatConfig) -> (Sim, HostId, HostId, HostId) {
    let mut sim = Sim::new(seed);
    let home = sim.add_realm("home", RealmId::INTERNET, RealmConfig::v4_only([203, 0, 113, 1].into()).with_nat(nat));
    let s1 = sim.add_host("s1", RealmId::INTERNET, &[[192, 0, 2, 1].into()], 9000, None, Probe::echo());
    let s2 = sim.add_host("s2", RealmId::INTERNET, &[[192, 0, 2, 2].into()], 9000, None, Probe::echo());
    let phone = sim.add_host("phone", home, &[[192, 168, 1, 2].into()], 4000, None, Probe::new());
    (sim, phone, s1, s2)
}

#[test]
fn an_extra_socket_opens_on_first_use_and_its_nat_mapping_and_answers_are_its_own() {
    let (mut sim, phone, s1, _) = world(1, NatConfig::port_restricted_cone());
    let to = sim.addr_v4(s1).unwrap();
    sim.engine::<Probe>(phone).send(to, b"main".to_vec());
    sim.engine::<Probe>(phone).send_from(Local(7), to, b"extra".to_vec());
    sim.run_for(Duration::from_secs(1));

    let ports = sim.sockets(phone);
    assert_eq!(ports.len(), 1, "one extra socket: {ports:?}");
    let (local, port) = ports[0];
    assert_eq!(local, Local(7));
    assert!(port >= 49152 && port != 4000, "an ephemeral port: {port}");
    // The server saw two mappings: the NAT preserved each socket's port.
    let seen = sim.engine_ref::<Probe>(s1).datagrams();
    assert_eq!(
        seen,
        vec![(addr("203.0.113.1:4000"), b"main".to_vec()), (addr(&format!("203.0.113.1:{port}")), b"extra".to_vec())]
    );
    // Each echo came back to the socket it answers.
    let p = sim.engine_ref::<Probe>(phone);
    assert_eq!(p.datagrams(), vec![(to, b"main".to_vec())]);
    assert_eq!(p.datagrams_on(), vec![(Local(7), to, b"extra".to_vec())]);
    assert_eq!(sim.host_stats(phone).sockets_opened, 1);
}

#[test]
fn behind_a_symmetric_nat_every_socket_and_destination_gets_a_random_port() {
    let (mut sim, phone, s1, s2) = world(2, NatConfig::symmetric());
    let (to1, to2) = (sim.addr_v4(s1).unwrap(), sim.addr_v4(s2).unwrap());
    for k in 1..=256u16 {
        sim.engine::<Probe>(phone).send_from(Local(k), to1, k.to_be_bytes().to_vec());
    }
    sim.engine::<Probe>(phone).send_from(Local(1), to2, b"other".to_vec());
    sim.run_for(Duration::from_secs(1));
    let seen = sim.engine_ref::<Probe>(s1).datagrams();
    assert_eq!(seen.len(), 256);
    let ports: BTreeSet<u16> = seen.iter().map(|(from, _)| from.port()).collect();
    assert_eq!(ports.len(), 256, "one mapping per socket");
    assert!(ports.iter().all(|&p| p >= 1024), "from 1024-65535");
    // Random, not preserved: spread over the range (the 256 ephemeral ports are 49152-49407).
    assert!(ports.iter().filter(|&&p| p < 49152).count() > 128, "{ports:?}");
    let other = sim.engine_ref::<Probe>(s2).datagrams();
    assert_eq!(other.len(), 1);
    let first = seen.iter().find(|(_, p)| p == &1u16.to_be_bytes().to_vec()).unwrap().0;
    assert_ne!(other[0].0.port(), first.port(), "another destination, another port for the same socket");
    assert_eq!(sim.engine_ref::<Probe>(phone).datagrams_on().len(), 257, "every echo reached its socket");
}

#[test]
fn a_released_socket_is_closed_and_what_arrives_for_it_later_is_unreachable() {
    let (mut sim, phone, s1, _) = world(3, NatConfig::full_cone());
    let to = sim.addr_v4(s1).unwrap();
    sim.engine::<Probe>(phone).send_from(Local(3), to, b"a".to_vec());
    sim.run_for(Duration::from_secs(1));
    let port = sim.sockets(phone)[0].1;
    assert_eq!(sim.engine_ref::<Probe>(phone).datagrams_on().len(), 1);

    sim.engine::<Probe>(phone).release(&[Local(3)]);
    sim.run_for(Duration::from_millis(1));
    assert!(sim.sockets(phone).is_empty());
    // The full cone NAT still maps the port; the host has no socket there any more.
    let outside = addr(&format!("203.0.113.1:{port}"));
    sim.engine::<Probe>(s1).send(outside, b"late".to_vec());
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.engine_ref::<Probe>(phone).datagrams_on().len(), 1, "nothing more delivered");
    let stats = sim.host_stats(phone);
    assert_eq!((stats.port_unreachable, stats.sockets_closed), (1, 1));

    // Sending from it again opens a fresh socket on another port.
    sim.engine::<Probe>(phone).send_from(Local(3), to, b"b".to_vec());
    sim.run_for(Duration::from_secs(1));
    let again = sim.sockets(phone);
    assert_eq!(again.len(), 1);
    assert_ne!(again[0].1, port);
}

#[test]
fn a_host_has_at_most_sockets_max_extra_sockets_open() {
    let (mut sim, phone, s1, _) = world(4, NatConfig::full_cone());
    let to = sim.addr_v4(s1).unwrap();
    let over = 5;
    for k in 1..=u16::try_from(SOCKETS_MAX + over).unwrap() {
        sim.engine::<Probe>(phone).send_from(Local(k), to, b"x".to_vec());
    }
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.sockets(phone).len(), SOCKETS_MAX);
    assert_eq!(sim.host_stats(phone).sockets_refused, u64::try_from(over).unwrap());
    assert_eq!(sim.engine_ref::<Probe>(s1).datagrams().len(), SOCKETS_MAX, "the refused ones were not sent");
}
