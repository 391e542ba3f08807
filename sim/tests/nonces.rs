//! Nonces across restarts, and which packets say where a peer is. Every sealed message
//! that crosses the simulated network is checked: no (key id, sender, counter) may carry
//! two different ciphertexts (docs/protocol.md, section 5).

use ntm_proto::engine::dc::Dc;
use ntm_proto::engine::node::Node;
use ntm_proto::engine::StreamKind;
use ntm_proto::time::Duration;
use ntm_proto::wire::registration::KeepaliveMethod;
use ntm_proto::wire::Envelope;
use ntm_sim::deploy::*;
use ntm_sim::{Captured, Carrier, Direction, HostId, NatConfig, RealmConfig, RealmId};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;

fn behind_nat(d: &mut Deployment, fqdn: &str, opts: NodeOpts) -> HostId {
    let realm = d.home(|o| RealmConfig::v4_only(o).with_nat(NatConfig::port_restricted_cone()));
    d.add_node(fqdn, realm, &[ip("192.168.1.2")], opts)
}

fn global(d: &mut Deployment, fqdn: &str, n: u8) -> HostId {
    let v4 = ip(&format!("198.51.100.{n}"));
    let v6 = ip(&format!("2001:db8:100::{n}"));
    d.add_node(fqdn, RealmId::INTERNET, &[v4, v6], NodeOpts::default())
}

/// (key id, sender, counter) of a sealed message.
type Nonce = (u32, u8, u64);

/// Every sealed message in `captures`, by nonce; fails if one nonce sealed two different
/// messages (the same message seen twice, sent and received, is fine).
fn assert_nonces_unique(captures: &[&[Captured]]) -> HashMap<Nonce, Vec<u8>> {
    let mut seen: HashMap<Nonce, Vec<u8>> = HashMap::new();
    for c in captures.iter().flat_map(|c| c.iter()) {
        let Ok(env) = Envelope::new_checked(&c.bytes[..]) else { continue };
        if !env.sealed() {
            continue;
        }
        let nonce = (env.key_id().0, u8::from(env.sender()), env.counter());
        match seen.get(&nonce) {
            Some(first) => assert_eq!(
                first, &c.bytes,
                "key id {:#010x}, sender {:#04x}, counter {} sealed two different messages",
                nonce.0, nonce.1, nonce.2
            ),
            None => {
                seen.insert(nonce, c.bytes.clone());
            }
        }
    }
    seen
}

/// The K_ntmns key ids the node sealed with on its NS connection.
fn ns_key_ids(capture: &[Captured]) -> BTreeSet<u32> {
    capture
        .iter()
        .filter(|c| c.dir == Direction::Out && c.carrier == Carrier::Stream(StreamKind::Tcp))
        .filter_map(|c| Envelope::new_checked(&c.bytes[..]).ok().map(|e| e.key_id().0))
        .collect()
}

/// Restarts the node's engine (a fresh process: no keys, counters from 0) and waits until
/// the NS holds its notifications again; the time that took.
fn restart_node(d: &mut Deployment, h: HostId, label: &str) -> Duration {
    let cfg = d.node(h).config().clone();
    let fresh = Node::new(cfg, d.sim.rng_for(label)).unwrap();
    d.sim.replace_engine(h, fresh);
    let start = d.now();
    d.start(h);
    let ready = d.sim.run_until_cond(start + Duration::from_secs(60), |s| s.engine::<Node>(h).notifications_ready());
    assert!(ready, "{label}: the NS holds the node's notifications again");
    d.now().saturating_duration_since(start)
}

/// A box kept reachable through the NS restarts three times. Each new process logs in
/// afresh and must get a new K_ntmns: the one the DC had acknowledged for the previous
/// process was sealed with from counter 0 already, by the node and by the NS.
#[test]
fn a_restarted_node_gets_a_new_k_ntmns_and_repeats_no_nonce() {
    let mut d = Deployment::new(41, Options::default());
    let ns_opts = NodeOpts { keepalive: KeepaliveMethod::Ns, ..NodeOpts::default() };
    let cn = behind_nat(&mut d, "cn.zone-b.example", ns_opts);
    for h in [cn, d.ns, d.dc_b] {
        d.sim.enable_capture(h);
    }
    assert!(d.bring_up(cn));
    assert!(d.sim.run_until_cond(d.now() + Duration::from_secs(10), |s| s.engine::<Node>(cn).notifications_ready()));
    for round in 1..=3 {
        let took = restart_node(&mut d, cn, &format!("cn-incarnation-{round}"));
        // The NS refused nothing as a replay, so the first Notification Registration
        // of each process got through.
        assert!(took < Duration::from_secs(3), "restart {round}: notifications ready after {took:?}");
        d.run_for(Duration::from_secs(5));
    }
    let keys = ns_key_ids(d.sim.capture(cn));
    assert_eq!(keys.len(), 4, "one K_ntmns per process: {keys:?}");
    assert_nonces_unique(&[d.sim.capture(cn), d.sim.capture(d.ns), d.sim.capture(d.dc_b)]);

    // The DC still reaches the node through the NS, under its newest key.
    let mn = global(&mut d, "mn.zone-a.example", 10);
    assert!(d.bring_up(mn));
    assert!(d.resolve(mn, "cn.zone-b.example").is_ok());
    assert!(d.ping4(mn, cn, 1) && d.ping4(cn, mn, 2));
    assert_nonces_unique(&[d.sim.capture(cn), d.sim.capture(d.ns), d.sim.capture(d.dc_b)]);
}

/// The DC restarts from its saved state (twice), and the node restarts in between: the
/// DC resumes sealing above every counter it used under the node's K_ntmdc, and the
/// restarted node still gets a K_ntmns of its own.
#[test]
fn restarts_of_the_dc_and_the_node_repeat_no_nonce() {
    let mut d = Deployment::new(42, Options::default());
    let ns_opts = NodeOpts { keepalive: KeepaliveMethod::Ns, ..NodeOpts::default() };
    let cn = behind_nat(&mut d, "cn.zone-b.example", ns_opts);
    let mn = global(&mut d, "mn.zone-a.example", 10);
    for h in [cn, mn, d.ns, d.dc_a, d.dc_b] {
        d.sim.enable_capture(h);
    }
    assert!(d.bring_up(cn) && d.bring_up(mn));
    assert!(d.sim.run_until_cond(d.now() + Duration::from_secs(10), |s| s.engine::<Node>(cn).notifications_ready()));
    assert!(d.resolve(mn, "cn.zone-b.example").is_ok());

    let (dc_a, dc_b) = (d.dc_a, d.dc_b);
    d.restart_dc_from_saved_state(dc_a, "dc-a-2").unwrap();
    d.restart_dc_from_saved_state(dc_b, "dc-b-2").unwrap();
    // The DCs seal for their nodes again: keepalive acks for mn, and the answers to the
    // registrations of the restarted cn.
    let _ = restart_node(&mut d, cn, "cn-2");
    d.run_for(Duration::from_secs(30));
    d.restart_dc_from_saved_state(dc_a, "dc-a-3").unwrap();
    d.restart_dc_from_saved_state(dc_b, "dc-b-3").unwrap();
    d.run_for(Duration::from_secs(30));
    let mn2 = global(&mut d, "mn2.zone-a.example", 11);
    assert!(d.bring_up(mn2));
    assert!(d.resolve(mn2, "cn.zone-b.example").is_ok());
    assert!(d.ping4(mn2, cn, 3));
    let seen = assert_nonces_unique(&[
        d.sim.capture(cn),
        d.sim.capture(mn),
        d.sim.capture(d.ns),
        d.sim.capture(d.dc_a),
        d.sim.capture(d.dc_b),
    ]);
    // The DCs sealed under restored keys after each restart, so the check covered them:
    // from the first reservation, and from the second.
    let restored = |from: u64, to: u64| seen.keys().filter(|(_, s, c)| *s == 0x02 && (from..to).contains(c)).count();
    assert!(restored(1 << 20, 2 << 20) >= 1, "sealed after the first restart");
    assert!(restored(2 << 20, 3 << 20) >= 1, "sealed after the second restart");
}

/// Item 13 of issue 12: a packet the peer sent before it moved, delayed on the old path,
/// arrives after packets from its new address. It is delivered (it is authentic and new
/// to the replay window) but must not point us back at the old address, nor make us
/// send our recent packets there.
#[test]
fn a_late_packet_from_the_old_address_does_not_move_the_peer_back() {
    let mut d = Deployment::new(43, Options::default());
    let mn = global(&mut d, "mn.zone-a.example", 10);
    let cn = global(&mut d, "cn.zone-b.example", 11);
    assert!(d.bring_up(mn) && d.bring_up(cn));
    assert!(d.resolve(mn, "cn.zone-b.example").is_ok());
    assert!(d.ping4(mn, cn, 1) && d.ping4(cn, mn, 2));
    let remote = |d: &mut Deployment| {
        d.node(mn).tunnels().into_iter().find(|t| t.established && !t.superseded).and_then(|t| t.remote)
    };
    let old = remote(&mut d).expect("mn sends to cn");
    let moved: SocketAddr =
        if old.is_ipv4() { "198.51.100.99:4500".parse().unwrap() } else { "[2001:db8:100::99]:4500".parse().unwrap() };

    // cn seals two packets; the first is held up on the old path, the second arrives
    // from cn's new address.
    let seal = |d: &mut Deployment, tag: u32| {
        let (src, dst) = (d.node(cn).virtual_addrs().unwrap().v4, d.node(mn).virtual_addrs().unwrap().v4);
        let inner = ipv4_packet(src, dst, &tag.to_be_bytes());
        let mut buf = vec![0u8; ntm_proto::wire::HEADER_LEN + inner.len() + ntm_proto::crypto::TAG_LEN];
        buf[ntm_proto::wire::HEADER_LEN..ntm_proto::wire::HEADER_LEN + inner.len()].copy_from_slice(&inner);
        let now = d.now();
        d.node(cn).seal_ip(now, &mut buf).unwrap();
        (buf, inner)
    };
    let mn_ip = match old {
        SocketAddr::V4(_) => d.sim.addr_v4(mn).unwrap(),
        SocketAddr::V6(_) => d.sim.addr_v6(mn).unwrap(),
    };
    let (late, late_inner) = seal(&mut d, 10);
    let (newer, _) = seal(&mut d, 11);
    // From here on cn sends nothing itself: the real cn is still at the old address, and
    // anything newer it sent from there (its check of a path gone silent) would rightly
    // bring mn back. Only the two packets above are in play.
    d.sim.set_down(cn, true);
    d.sim.inject(RealmId::INTERNET, moved, mn_ip, newer);
    d.run_for(Duration::from_millis(200));
    assert_eq!(remote(&mut d), Some(moved), "mn follows cn to its new address");
    // mn sends to cn's new address from now on.
    let now = d.now();
    let (src, dst) = (d.node(mn).virtual_addrs().unwrap().v4, d.node(cn).virtual_addrs().unwrap().v4);
    d.node(mn).send_ip(now, &ipv4_packet(src, dst, b"to-new")).unwrap();
    d.run_for(Duration::from_millis(200));
    let resent = d.node(mn).resent_packets();
    let _ = d.sim.take_ip(mn);

    // The late packet from the old address.
    d.sim.inject(RealmId::INTERNET, old, mn_ip, late);
    d.run_for(Duration::from_millis(200));
    assert!(d.sim.take_ip(mn).contains(&late_inner), "the late packet is still delivered");
    assert_eq!(remote(&mut d), Some(moved), "a late packet from the old address does not move cn back");
    assert_eq!(d.node(mn).resent_packets(), resent, "nor sends the recent packets to the old address");
}

/// MN restarts while its Route Direction waits for the ack (the DC was down when it
/// came). The new process logs in afresh; the DC must not hand it the old negotiation's
/// K_tun and K_tmp again: the old process sealed its Tunnel Request under that K_tun from
/// counter 0 already, and wrapped its K_mncn under that K_tmp at the one fixed nonce.
#[test]
fn a_node_restarted_during_its_negotiation_gets_no_old_tunnel_keys() {
    let mut d = Deployment::new(44, Options::default());
    let mn = global(&mut d, "mn.zone-a.example", 10);
    let cn = global(&mut d, "cn.zone-b.example", 11);
    for h in [mn, cn, d.dc_a, d.dc_b] {
        d.sim.enable_capture(h);
    }
    assert!(d.bring_up(mn) && d.bring_up(cn));
    let now = d.now();
    let _ = d.node(mn).resolve(now, name("cn.zone-b.example"));
    // MN took its Route Direction: its ack and its Tunnel Request are on their way.
    let got = d.sim.run_until_cond(d.now() + Duration::from_secs(10), |s| !s.engine::<Node>(mn).tunnels().is_empty());
    assert!(got, "MN got its Route Direction");
    let old_sessions: Vec<_> = d.node(mn).tunnels().iter().map(|t| t.session).collect();
    let dc_a = d.dc_a;
    d.sim.set_down(dc_a, true);
    d.run_for(Duration::from_millis(500));
    d.sim.set_down(dc_a, false);
    let _ = restart_node_plain(&mut d, mn, "mn-2");
    d.run_for(Duration::from_secs(60));
    let sessions: Vec<_> = d.node(mn).tunnels().iter().map(|t| t.session).collect();
    assert!(sessions.iter().all(|s| !old_sessions.contains(s)), "the new process has no old session: {sessions:?}");
    assert_nonces_unique(&[d.sim.capture(mn), d.sim.capture(cn), d.sim.capture(d.dc_a), d.sim.capture(d.dc_b)]);
    // The new process reaches CN with a negotiation of its own.
    assert!(d.resolve(mn, "cn.zone-b.example").is_ok());
    assert!(d.ping4(mn, cn, 1));
}

/// Restarts a node's engine and waits until it is registered again.
fn restart_node_plain(d: &mut Deployment, h: HostId, label: &str) -> bool {
    let cfg = d.node(h).config().clone();
    let fresh = Node::new(cfg, d.sim.rng_for(label)).unwrap();
    d.sim.replace_engine(h, fresh);
    d.bring_up(h)
}

/// A Route Direction the DC sent again arrives after the tunnel it set up has ended (its
/// acks were lost for long enough, or it was delayed). The node acknowledges it again but
/// must not take its K_tun into use a second time: a new channel would seal from
/// counter 0 again (here, the Tunnel Request of an initiator, with a new K_mncn).
#[test]
fn a_route_direction_for_an_ended_tunnel_is_not_taken_again() {
    use ntm_proto::crypto::Channel;
    use ntm_proto::wire::{Message, Sender};
    let mut d = Deployment::new(45, Options::default());
    let mn = global(&mut d, "mn.zone-a.example", 10);
    let cn = global(&mut d, "cn.zone-b.example", 11);
    for h in [mn, cn] {
        d.sim.enable_capture(h);
    }
    assert!(d.bring_up(mn) && d.bring_up(cn));
    assert!(d.resolve(mn, "cn.zone-b.example").is_ok());
    assert!(d.ping4(mn, cn, 1));
    let session = d.node(mn).tunnels()[0].session;
    let rd = d
        .sim
        .capture(mn)
        .iter()
        .find(|c| c.dir == Direction::In && c.bytes.get(1) == Some(&0x40))
        .expect("MN's Route Direction")
        .clone();
    // The tunnel goes idle and ends.
    d.run_for(Duration::from_secs(700));
    assert!(d.node(mn).tunnels().iter().all(|t| t.session != session), "the tunnel ended");

    // The DC's retransmission of that Route Direction, sealed anew (as the DC does) under
    // MN's K_ntmdc with a counter the DC has not used.
    let state = d.sim.engine::<Dc>(d.dc_a).export_node(&name("mn.zone-a.example")).unwrap();
    let mut as_node = Channel::new(state.key.clone(), state.key_id, Sender::Node, state.expires).unwrap();
    let (_, msg) = as_node.open(d.now(), &rd.bytes).unwrap();
    assert!(matches!(msg, Message::RouteDirection(_)));
    let mut as_dc = Channel::new(state.key, state.key_id, Sender::Dc, state.expires).unwrap();
    as_dc.resume_at(state.next_counter + 1_000_000);
    let again = as_dc.seal(d.now(), &msg).unwrap();
    d.sim.inject(RealmId::INTERNET, rd.src, rd.dst, again);
    d.run_for(Duration::from_secs(5));
    assert!(d.node(mn).tunnels().iter().all(|t| t.session != session), "the ended session is not set up again");
    assert_nonces_unique(&[d.sim.capture(mn), d.sim.capture(cn)]);
}
