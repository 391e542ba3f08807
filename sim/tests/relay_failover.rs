//! The relay is no single point of failure (issue 15, item 4): when the RS under a relayed
//! tunnel dies, both nodes notice the silence within a second (a probe of the RS, not a
//! long timeout), the side that opened the tunnel renegotiates, and its DC, which finds
//! the RS silent too, sets the tunnel up again through another RS. With only one RS, the
//! tunnel comes back once the RS does.

#![allow(clippy::print_stderr)]

use ntm_proto::engine::node::{Node, PathKind};
use ntm_proto::engine::rs::{Rs, RsConfig};
use ntm_proto::time::{Duration, Instant};
use ntm_sim::deploy::*;
use ntm_sim::{HostId, NatConfig, RealmConfig};
use std::net::SocketAddr;

fn behind_symmetric_nat(d: &mut Deployment, fqdn: &str) -> HostId {
    let realm = d.home(|o| RealmConfig::v4_only(o).with_nat(NatConfig::symmetric()));
    d.add_node(fqdn, realm, &[ip("192.168.1.2")], NodeOpts::default())
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Two boxes behind symmetric NATs (always relayed), with a ping through the relay.
fn relayed_pair(d: &mut Deployment) -> (HostId, HostId) {
    let mn = behind_symmetric_nat(d, "mn.zone-a.example");
    let cn = behind_symmetric_nat(d, "cn.zone-b.example");
    assert!(d.bring_up(mn) && d.bring_up(cn));
    assert!(d.resolve(mn, "cn.zone-b.example").is_ok());
    assert_eq!(d.path(mn, "cn.zone-b.example"), Some(PathKind::Relay));
    assert!(d.ping4(mn, cn, 1) && d.ping4(cn, mn, 2));
    (mn, cn)
}

/// Where `h`'s live tunnel sends now (the RS's address while relayed).
fn remote(d: &mut Deployment, h: HostId, peer: &str) -> Option<SocketAddr> {
    let p = name(peer);
    d.node(h).tunnels().into_iter().filter(|t| t.peer == p && t.established && !t.superseded).find_map(|t| t.remote)
}

/// The relay host whose address `addr` is.
fn relay_at(d: &Deployment, addr: SocketAddr) -> Option<HostId> {
    d.relays.iter().copied().find(|&r| d.sim.addrs(r).contains(&addr.ip()))
}

/// A ping as `ping -i 0.1` runs it: the MN sends a request every 100 ms, the CN answers
/// each request it gets. Runs until a reply comes back at or after `after`, at most until
/// `until`; when it came.
fn first_reply_after(d: &mut Deployment, mn: HostId, cn: HostId, after: Instant, until: Instant) -> Option<Instant> {
    let (src, dst) = (d.node(mn).virtual_addrs().unwrap(), d.node(cn).virtual_addrs().unwrap());
    let mut tag = 100u32;
    let _ = d.sim.take_ip(mn);
    let _ = d.sim.take_ip(cn);
    while d.now() < until {
        tag += 1;
        let now = d.now();
        let _ = d.node(mn).send_ip(now, &ipv4_packet(src.v4, dst.v4, &tag.to_be_bytes()));
        let deadline = d.now() + ms(100);
        let mut answered = None;
        let _ = d.sim.run_until_cond(deadline, |s| {
            for req in s.take_ip(cn) {
                let now = s.now();
                let payload = req.get(20..).unwrap_or(&[]).to_vec();
                let _ = s.engine::<Node>(cn).send_ip(now, &ipv4_packet(dst.v4, src.v4, &payload));
            }
            if !s.take_ip(mn).is_empty() && s.now() >= after {
                answered = Some(s.now());
            }
            answered.is_some()
        });
        if answered.is_some() {
            return answered;
        }
    }
    None
}

#[test]
fn a_relayed_tunnel_moves_to_the_other_rs_within_two_seconds_of_its_rs_dying() {
    // RS 1 is nearer, so the DC picks it; RS 2 is the spare.
    let opts = Options { relays: vec![(Duration::ZERO, 10_000), (ms(5), 10_000)], ..Options::default() };
    let mut d = Deployment::new(150, opts);
    let (mn, cn) = relayed_pair(&mut d);
    let before = remote(&mut d, mn, "cn.zone-b.example").expect("a relayed tunnel");
    let dead = relay_at(&d, before).expect("the tunnel goes through one of the RSs");
    assert_eq!(dead, d.relays[0], "the nearer RS carries the tunnel");
    // A ping runs; then the RS dies in the middle of it.
    let start = d.now();
    assert!(first_reply_after(&mut d, mn, cn, start, start + ms(2000)).is_some());
    d.run_for(ms(30));
    d.sim.set_down(dead, true);
    let died = d.now();
    let back = first_reply_after(&mut d, mn, cn, died + ms(1), died + Duration::from_secs(30));
    let gap = back.map(|b| b.saturating_duration_since(died));
    eprintln!("RS 1 died under a relayed ping: replies again after {gap:?}");
    let gap = gap.expect("replies again within 30 s");
    assert!(gap <= Duration::from_secs(2), "traffic flows again within 2 s of the RS dying, took {gap:?}");
    let after = remote(&mut d, mn, "cn.zone-b.example").expect("still relayed");
    assert_eq!(relay_at(&d, after), Some(d.relays[1]), "the MN's tunnel moved to RS 2");
    let cn_after = remote(&mut d, cn, "mn.zone-a.example").expect("still relayed");
    assert_eq!(relay_at(&d, cn_after), Some(d.relays[1]), "the CN's tunnel moved to RS 2");
}

/// The only RS process dies (it loses every session and key) and is started again
/// `outage` later: the time from its restart until replies come again.
fn only_rs_returns_after(seed: u64, outage: Duration) -> Duration {
    let mut d = Deployment::new(seed, Options::default());
    let (mn, cn) = relayed_pair(&mut d);
    let rs = d.relays[0];
    let start = d.now();
    assert!(first_reply_after(&mut d, mn, cn, start, start + ms(2000)).is_some());
    d.sim.set_down(rs, true);
    let died = d.now();
    assert!(first_reply_after(&mut d, mn, cn, died + ms(1), died + outage).is_none());
    let addrs: Vec<SocketAddr> = d.sim.addrs(rs).iter().map(|a| SocketAddr::new(*a, SERVER_PORT)).collect();
    d.sim.replace_engine(rs, Rs::new(RsConfig::new(name("rs1.example"), addrs)).unwrap());
    let restarted = d.now();
    let back = first_reply_after(&mut d, mn, cn, restarted, restarted + Duration::from_secs(30));
    let gap = back.map(|b| b.saturating_duration_since(restarted));
    eprintln!("the only RS died and came back {outage:?} later: replies again {gap:?} after its restart");
    gap.expect("replies again within 30 s of the RS's restart")
}

#[test]
fn a_relayed_tunnel_comes_back_when_its_only_rs_returns() {
    let gap = only_rs_returns_after(151, Duration::from_secs(5));
    assert!(gap <= Duration::from_secs(5), "took {gap:?}");
}

#[test]
fn a_relayed_tunnel_comes_back_when_its_only_rs_returns_after_a_minute() {
    // Longer than the DC keeps asking the dead RS for one renegotiation: the refused
    // renegotiation must not leave the tunnel waiting for nothing.
    let gap = only_rs_returns_after(152, Duration::from_secs(60));
    assert!(gap <= Duration::from_secs(5), "took {gap:?}");
}

#[test]
fn a_slow_rs_left_behind_never_shares_a_k_tun_with_the_rs_that_took_over() {
    // RS 1 is not dead but slow: the DC moves the renegotiation to RS 2 before RS 1
    // answers, and RS 1 still takes the session when its Relay Direction arrives. Both
    // seal Hole Punch Acks as Rs from counter 0 under the K_tun they were sent, so the
    // two K_tuns must differ.
    let opts = Options { relays: vec![(Duration::ZERO, 10_000), (ms(5), 10_000)], ..Options::default() };
    let mut d = Deployment::new(153, opts);
    let (mn, cn) = relayed_pair(&mut d);
    let (rs1, rs2) = (d.relays[0], d.relays[1]);
    let before = remote(&mut d, mn, "cn.zone-b.example").expect("a relayed tunnel");
    assert_eq!(relay_at(&d, before), Some(rs1));
    d.sim.set_host_delay(rs1, ms(1500));
    let slowed = d.now();
    let back = first_reply_after(&mut d, mn, cn, slowed + ms(1), slowed + Duration::from_secs(10));
    assert!(back.is_some(), "replies again");
    d.run_for(Duration::from_secs(5)); // RS 1 got its late Relay Direction
    let after = remote(&mut d, mn, "cn.zone-b.example").expect("still relayed");
    assert_eq!(relay_at(&d, after), Some(rs2), "the tunnel moved to RS 2");
    let k_tun = |d: &mut Deployment, rs: HostId| -> Vec<u64> {
        d.sim.engine::<Rs>(rs).held_keys().into_iter().filter(|(k, _)| *k == "K_tun").map(|(_, f)| f).collect()
    };
    let (one, two) = (k_tun(&mut d, rs1), k_tun(&mut d, rs2));
    assert!(one.len() >= 2, "RS 1 holds the old session and the one it got late: {one:?}");
    assert!(!two.is_empty());
    assert!(two.iter().all(|f| !one.contains(f)), "no K_tun at both RSs: {one:?} {two:?}");
}
