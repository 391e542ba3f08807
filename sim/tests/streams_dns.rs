//! Streams (TCP and TLS through NATs, breakage, identities) and DNS.

mod common;

use common::*;
use ntm_proto::engine::{DcLocation, DnsAnswer, PeerIdentity, Role, StreamKind};
use ntm_proto::time::Instant;
use ntm_proto::wire::Fqdn;
use ntm_sim::probe::{Heard, Probe};
use ntm_sim::{LinkConfig, NatConfig, RealmId};

fn name(s: &str) -> Fqdn {
    Fqdn::new(s).unwrap()
}

fn identity(n: &str, role: Role) -> Option<PeerIdentity> {
    Some(PeerIdentity { name: name(n), role, public_key: None })
}

/// When each frame reached the probe, with the TLS name it came with.
fn frames_heard(w: &World, host: ntm_sim::HostId) -> Vec<(Instant, Option<Fqdn>, Vec<u8>)> {
    w.sim
        .engine_ref::<Probe>(host)
        .log
        .iter()
        .filter_map(|h| match h {
            Heard::Frame { at, peer, payload, .. } => Some((*at, peer.clone(), payload.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_tcp_stream_crosses_the_nat_and_breaks_when_its_mapping_expires() {
    let mut w = World::behind(NatConfig { tcp_timeout: secs(600), ..NatConfig::default() });
    let s1 = w.v4(w.s1);
    let server = Some(name("s1.example.net"));
    w.probe(w.client).send_stream(StreamKind::Tcp, server.clone(), s1, b"hello".to_vec());
    w.sim.run_for(secs(1));

    // One round trip to connect (2 x 30 ms), then 30 ms one way; the server sees the
    // NAT's address and the client's preserved ephemeral port.
    assert_eq!(frames_heard(&w, w.s1), vec![(Instant::from_millis(90), None, b"hello".to_vec())]);
    assert_eq!(w.sim.engine_ref::<Probe>(w.s1).frames()[0].0, sa("203.0.113.1:49152"));
    assert_eq!(w.sim.engine_ref::<Probe>(w.client).frames(), vec![(s1, b"hello".to_vec())]);
    assert_eq!(w.sim.open_streams(w.client), 1);

    // Idle past the TCP timeout, the next frame finds the connection broken: both ends hear.
    w.sim.run_for(secs(601));
    w.probe(w.client).send_stream(StreamKind::Tcp, server.clone(), s1, b"anyone?".to_vec());
    w.sim.run_for(secs(1));
    assert_eq!(w.sim.engine_ref::<Probe>(w.client).closed(), vec![(StreamKind::Tcp, s1)]);
    assert_eq!(w.sim.engine_ref::<Probe>(w.s1).closed(), vec![(StreamKind::Tcp, sa("203.0.113.1:49152"))]);
    assert_eq!(w.sim.host_stats(w.client).stream_broken, 1);
    assert_eq!(w.sim.engine_ref::<Probe>(w.s1).frames().len(), 1);
    assert_eq!(w.sim.open_streams(w.client), 0);

    // The engine's retransmission opens a new connection.
    w.probe(w.client).send_stream(StreamKind::Tcp, server, s1, b"again".to_vec());
    w.sim.run_for(secs(1));
    assert_eq!(w.sim.engine_ref::<Probe>(w.s1).frames()[1], (sa("203.0.113.1:49153"), b"again".to_vec()));
}

#[test]
fn stream_frames_stay_in_order_through_jitter() {
    let mut w = World::behind(NatConfig::default());
    w.sim.set_uplink(w.home, LinkConfig::new(ms(10)).with_jitter(ms(50)));
    let s2 = w.v4(w.s2);
    for i in 0..50u8 {
        w.probe(w.client).send_stream(StreamKind::Tcp, Some(name("s2.example.net")), s2, vec![i]);
        w.sim.run_for(ms(1));
    }
    w.sim.run_for(secs(1));
    let got: Vec<u8> = w.sim.engine_ref::<Probe>(w.s2).frames().iter().map(|(_, f)| f[0]).collect();
    assert_eq!(got, (0..50).collect::<Vec<_>>());
}

#[test]
fn tls_checks_the_server_name_and_reports_identities() {
    let mut w = World::behind(NatConfig::default());
    let account = w.sim.add_host(
        "as",
        RealmId::INTERNET,
        &[ip("192.0.2.10")],
        443,
        identity("as.example.net", Role::As),
        Probe::echo(),
    );
    let dc = w.sim.add_host(
        "dc",
        RealmId::INTERNET,
        &[ip("192.0.2.20")],
        443,
        identity("dc.example.net", Role::Dc),
        Probe::echo(),
    );
    let phone = w.sim.add_host(
        "phone",
        w.home,
        &[ip("192.168.1.3")],
        CLIENT_PORT,
        identity("phone.example.net", Role::Node),
        Probe::new(),
    );
    let (as_addr, dc_addr) = (w.v4(account), w.v4(dc));

    w.probe(phone).send_stream(StreamKind::Tls, Some(name("as.example.net")), as_addr, b"login".to_vec());
    // The DC's certificate does not say "as.example.net".
    w.probe(phone).send_stream(StreamKind::Tls, Some(name("as.example.net")), dc_addr, b"login".to_vec());
    // Plain TCP verifies nobody.
    w.probe(w.client).send_stream(StreamKind::Tcp, Some(name("as.example.net")), as_addr, b"plain".to_vec());
    w.sim.run_for(secs(1));

    let mut to_as: Vec<_> = frames_heard(&w, account).into_iter().map(|(_, peer, f)| (f, peer)).collect();
    to_as.sort();
    assert_eq!(to_as, vec![(b"login".to_vec(), Some(name("phone.example.net"))), (b"plain".to_vec(), None)]);
    let to_phone: Vec<_> = frames_heard(&w, phone).into_iter().map(|(_, peer, f)| (peer, f)).collect();
    assert_eq!(to_phone, vec![(Some(name("as.example.net")), b"login".to_vec())]);

    assert!(frames_heard(&w, dc).is_empty());
    assert_eq!(w.sim.engine_ref::<Probe>(phone).closed(), vec![(StreamKind::Tls, dc_addr)]);
    assert_eq!(w.sim.host_stats(phone).stream_refused, 1);
}

#[test]
fn refused_and_unmatched_streams() {
    let mut w = World::behind(NatConfig::full_cone());
    let (s1, s2) = (w.v4(w.s1), w.v4(w.s2));
    // Even a full-cone NAT forwards no incoming connections.
    w.probe(w.s2).send_stream(StreamKind::Tcp, Some(name("client.example.net")), sa("203.0.113.1:4000"), b"x".to_vec());
    // Nothing listens on another port.
    w.probe(w.client).send_stream(StreamKind::Tcp, Some(name("s1.example.net")), sa("192.0.2.1:9999"), b"x".to_vec());
    // A server-side frame with no stream from that peer.
    w.probe(w.s1).send_stream(StreamKind::Tcp, None, s2, b"x".to_vec());
    w.sim.run_for(secs(1));

    assert_eq!(w.sim.host_stats(w.s2).stream_refused, 1);
    assert_eq!(w.sim.engine_ref::<Probe>(w.s2).closed(), vec![(StreamKind::Tcp, sa("203.0.113.1:4000"))]);
    assert_eq!(w.sim.host_stats(w.client).stream_refused, 1);
    assert_eq!(w.sim.host_stats(w.s1).stream_no_conn, 1);
    assert!(w.sim.engine_ref::<Probe>(w.client).frames().is_empty());
    let _ = s1;
}

#[test]
fn streams_break_when_a_host_moves_and_reset_when_it_restarts() {
    let mut w = World::behind(NatConfig::default());
    let office =
        w.sim.add_realm("office", RealmId::INTERNET, ntm_sim::RealmConfig::v4_only("203.0.113.2".parse().unwrap()));
    let (s1, s2) = (w.v4(w.s1), w.v4(w.s2));
    let s1_name = Some(name("s1.example.net"));
    w.probe(w.client).send_stream(StreamKind::Tcp, s1_name.clone(), s1, b"a".to_vec());
    w.probe(w.client).send_stream(StreamKind::Tcp, Some(name("s2.example.net")), s2, b"b".to_vec());
    w.sim.run_for(secs(1));
    assert_eq!(w.sim.open_streams(w.client), 2);

    // The server restarts: the client hears the reset, the new engine hears nothing.
    w.sim.replace_engine(w.s2, Probe::new());
    w.sim.run_for(secs(1));
    assert_eq!(w.sim.engine_ref::<Probe>(w.client).closed(), vec![(StreamKind::Tcp, s2)]);
    assert!(w.sim.engine_ref::<Probe>(w.s2).log.is_empty());

    // The client moves: nobody is told until it uses the stream.
    w.sim.move_host(w.client, office, &[ip("10.0.0.2")]);
    w.sim.run_for(secs(1));
    assert_eq!(w.sim.engine_ref::<Probe>(w.client).closed().len(), 1);
    w.probe(w.client).send_stream(StreamKind::Tcp, s1_name, s1, b"moved".to_vec());
    w.sim.run_for(secs(1));
    assert_eq!(w.sim.engine_ref::<Probe>(w.client).closed().len(), 2);
    assert_eq!(w.sim.engine_ref::<Probe>(w.s1).closed(), vec![(StreamKind::Tcp, sa("203.0.113.1:49152"))]);
}

#[test]
fn close_streams_tells_both_ends() {
    let mut w = World::behind(NatConfig::default());
    let s1 = w.v4(w.s1);
    w.probe(w.client).send_stream(StreamKind::Tcp, Some(name("s1.example.net")), s1, b"a".to_vec());
    w.sim.run_for(secs(1));
    w.sim.close_streams(w.s1);
    w.sim.run_for(secs(1));
    assert_eq!(w.sim.engine_ref::<Probe>(w.client).closed(), vec![(StreamKind::Tcp, s1)]);
    assert_eq!(w.sim.engine_ref::<Probe>(w.s1).closed(), vec![(StreamKind::Tcp, sa("203.0.113.1:49152"))]);
}

#[test]
fn dns_answers_from_the_longest_zone_after_its_latency() {
    let mut w = World::behind(NatConfig::default());
    let dc = DcLocation { name: name("dc.example.net"), addrs: vec![sa("192.0.2.20:9000"), sa("[2001:db8::20]:9000")] };
    w.sim
        .dns_mut()
        .add_zone(name("example.net"), dc.clone())
        .add_ordinary(name("plain.example.net"))
        .set_latency(ms(25));
    w.probe(w.client).resolve(1, name("cn.example.net"));
    w.probe(w.client).resolve(2, name("www.plain.example.net"));
    w.probe(w.client).resolve(3, name("nowhere.example.org"));
    w.sim.run_for(secs(1));

    let t = Instant::from_millis(25);
    assert_eq!(
        w.sim.engine_ref::<Probe>(w.client).log,
        vec![
            Heard::Dns { at: t, id: 1, answer: DnsAnswer::Dc(dc) },
            Heard::Dns { at: t, id: 2, answer: DnsAnswer::NotNtm },
            Heard::Dns { at: t, id: 3, answer: DnsAnswer::Failed },
        ]
    );
    assert_eq!(w.sim.dns().lookups_within(Some(w.client), &name("example.net")), 2);
    assert_eq!(w.sim.dns().lookups_within(Some(w.s1), &name("example.net")), 0);
    assert_eq!(w.sim.dns().lookups().len(), 3);
}
