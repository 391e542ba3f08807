//! The placement matrix of issue 15 in the simulator: every ordered pair of the places
//! users put boxes (a public IPv4 address, a public IPv6-only network, the four NAT
//! behaviours of RFC 4787, a home NAT behind a carrier's CGN). For each pair: does the
//! tunnel end direct or relayed, as hole punching allows; how long the set-up takes (DNS
//! query to answer, simulated time); and how long the initiator is unreachable when it
//! switches to another network of the same kind (a Wi-Fi to LTE switch). The table is
//! printed (`cargo test -p ntm-sim --test matrix -- --nocapture`). With the real binaries,
//! lab/tests/nat.rs runs the NAT behaviours pairwise.

// The table is this test's report: printing it is the point.
#![allow(clippy::print_stdout)]

use ntm_proto::engine::node::PathKind;
use ntm_proto::time::{Duration, Instant};
use ntm_sim::deploy::*;
use ntm_sim::{HostId, NatConfig, RealmConfig, RealmId};
use std::net::{IpAddr, SocketAddr};

/// Where a box sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// A public IPv4 address, no NAT, no IPv6.
    Public4,
    /// A public IPv6 address on an IPv6-only network.
    Only6,
    FullCone,
    AddressRestricted,
    PortRestricted,
    Symmetric,
    /// A port-restricted home NAT inside a symmetric carrier-grade NAT (100.64.0.0/10).
    Cgn,
}

const PLACES: [Place; 7] = [
    Place::Public4,
    Place::Only6,
    Place::FullCone,
    Place::AddressRestricted,
    Place::PortRestricted,
    Place::Symmetric,
    Place::Cgn,
];

/// What a placement looks like from outside, for predicting hole punching.
struct Behaviour {
    has_v4: bool,
    has_v6: bool,
    nat: bool,
    /// Endpoint-independent mapping: one external port for every destination.
    eim: bool,
    /// Filtering drops what does not come from the exact endpoint the box sent to.
    port_filter: bool,
}

impl Place {
    fn name(self) -> &'static str {
        match self {
            Place::Public4 => "public v4",
            Place::Only6 => "v6-only",
            Place::FullCone => "full cone",
            Place::AddressRestricted => "addr-restricted",
            Place::PortRestricted => "port-restricted",
            Place::Symmetric => "symmetric",
            Place::Cgn => "home NAT + CGN",
        }
    }

    fn behaviour(self) -> Behaviour {
        let nat = |eim, port_filter| Behaviour { has_v4: true, has_v6: false, nat: true, eim, port_filter };
        match self {
            Place::Public4 => Behaviour { has_v4: true, has_v6: false, nat: false, eim: true, port_filter: false },
            Place::Only6 => Behaviour { has_v4: false, has_v6: true, nat: false, eim: true, port_filter: false },
            Place::FullCone | Place::AddressRestricted => nat(true, false),
            Place::PortRestricted => nat(true, true),
            // The CGN's random port per destination decides: the home NAT inside it only
            // adds a port-restricted filter.
            Place::Symmetric | Place::Cgn => nat(false, true),
        }
    }
}

/// The path RFC 4787 allows between `a` and `b`. Without a common family the RS carries
/// the tunnel. A box without NAT can always be reached. Between two NATs, the punch meets
/// when both keep one external port per socket (each sends to the port the DC saw), or
/// when one side keeps one port and filters by address only: the other side's packets
/// then get in from whatever port its NAT chose, and the answer goes back to that port.
fn predicted(a: Place, b: Place) -> PathKind {
    let (x, y) = (a.behaviour(), b.behaviour());
    let common = (x.has_v4 && y.has_v4) || (x.has_v6 && y.has_v6);
    let punch = (x.eim && (y.eim || !x.port_filter)) || (y.eim && !y.port_filter);
    if !common {
        PathKind::Relay
    } else if !x.nat || !y.nat || punch {
        PathKind::Direct
    } else {
        PathKind::Relay
    }
}

/// Puts a new node `fqdn` at `place` on a network of its own; `n` makes its addresses unique.
fn place_node(d: &mut Deployment, fqdn: &str, place: Place, n: u8) -> HostId {
    let nat_realm = |d: &mut Deployment, nat: NatConfig| d.home(|o| RealmConfig::v4_only(o).with_nat(nat));
    let (realm, addr): (RealmId, IpAddr) = match place {
        Place::Public4 => (RealmId::INTERNET, ip(&format!("198.51.100.{}", 100 + n))),
        Place::Only6 => {
            let realm = d.sim.add_realm(&format!("v6only{n}"), RealmId::INTERNET, RealmConfig::v6_only());
            (realm, ip(&format!("2001:db8:60:{n}::2")))
        }
        Place::FullCone => (nat_realm(d, NatConfig::full_cone()), ip("192.168.1.2")),
        Place::AddressRestricted => (nat_realm(d, NatConfig::restricted_cone()), ip("192.168.1.2")),
        Place::PortRestricted => (nat_realm(d, NatConfig::port_restricted_cone()), ip("192.168.1.2")),
        Place::Symmetric => (nat_realm(d, NatConfig::symmetric()), ip("192.168.1.2")),
        Place::Cgn => {
            let cgn = d.sim.add_realm(
                &format!("cgn{n}"),
                RealmId::INTERNET,
                RealmConfig::v4_only(format!("203.0.113.{}", 200 + n).parse().unwrap())
                    .with_nat(NatConfig::symmetric()),
            );
            let home = d.sim.add_realm(
                &format!("cgn-home{n}"),
                cgn,
                RealmConfig::v4_only(format!("100.64.0.{n}").parse().unwrap())
                    .with_nat(NatConfig::port_restricted_cone()),
            );
            (home, ip("192.168.7.2"))
        }
    };
    d.add_node(fqdn, realm, &[addr], NodeOpts::default())
}

/// Moves `h` to a new network of the same kind as `place` and tells it so.
fn switch_network(d: &mut Deployment, h: HostId, place: Place, n: u8) {
    let probe = place_node_realm(d, place, n);
    d.sim.move_host(h, probe.0, &[probe.1]);
    let now = d.now();
    d.node(h).handle_network_change(now, vec![SocketAddr::new(probe.1, NODE_PORT)]);
}

/// A fresh network of the kind `place` and the address a box gets in it.
fn place_node_realm(d: &mut Deployment, place: Place, n: u8) -> (RealmId, IpAddr) {
    match place {
        Place::Public4 => (RealmId::INTERNET, ip(&format!("198.51.100.{}", 150 + n))),
        Place::Only6 => {
            let realm = d.sim.add_realm(&format!("v6only-b{n}"), RealmId::INTERNET, RealmConfig::v6_only());
            (realm, ip(&format!("2001:db8:61:{n}::2")))
        }
        Place::Cgn => {
            let cgn = d.sim.add_realm(
                &format!("cgn-b{n}"),
                RealmId::INTERNET,
                RealmConfig::v4_only(format!("203.0.113.{}", 230 + n).parse().unwrap())
                    .with_nat(NatConfig::symmetric()),
            );
            let home = d.sim.add_realm(
                &format!("cgn-home-b{n}"),
                cgn,
                RealmConfig::v4_only(format!("100.64.1.{n}").parse().unwrap())
                    .with_nat(NatConfig::port_restricted_cone()),
            );
            (home, ip("192.168.8.2"))
        }
        nat => {
            let cfg = match nat {
                Place::FullCone => NatConfig::full_cone(),
                Place::AddressRestricted => NatConfig::restricted_cone(),
                Place::PortRestricted => NatConfig::port_restricted_cone(),
                _ => NatConfig::symmetric(),
            };
            (d.home(|o| RealmConfig::v4_only(o).with_nat(cfg)), ip("192.168.2.2"))
        }
    }
}

/// Sends a packet from `a` to `b` every 20 ms until one of them arrives; the time until
/// then (each packet may take longer than 20 ms: any that arrives counts).
fn time_to_reach(d: &mut Deployment, a: HostId, b: HostId, limit: Duration) -> Option<Duration> {
    let start = d.now();
    let src = d.node(a).virtual_addrs()?;
    let dst = d.node(b).virtual_addrs()?;
    let _ = d.sim.take_ip(b);
    let mut sent: Vec<Vec<u8>> = Vec::new();
    while d.now() < start + limit {
        let tag = u32::try_from(sent.len()).unwrap_or(u32::MAX);
        let pkt = ipv4_packet(src.v4, dst.v4, &tag.to_be_bytes());
        let now = d.now();
        let _ = d.node(a).send_ip(now, &pkt);
        sent.push(pkt);
        let until: Instant = d.now() + Duration::from_millis(20);
        if d.sim.run_until_cond(until, |s| s.take_ip(b).iter().any(|p| sent.contains(p))) {
            return Some(d.now().saturating_duration_since(start));
        }
    }
    None
}

struct Row {
    path: Option<PathKind>,
    setup: Duration,
    after_move: Option<Duration>,
    /// The ends disagree about the path, or data does not pass.
    trouble: Option<String>,
}

fn run_pair(i: usize, a: Place, b: Place) -> Row {
    let mut d = Deployment::new(500 + u64::try_from(i).unwrap(), Options::default());
    let mn = place_node(&mut d, "mn.zone-a.example", a, 1);
    let cn = place_node(&mut d, "cn.zone-b.example", b, 2);
    assert!(d.bring_up(mn) && d.bring_up(cn), "{} -> {}: registered", a.name(), b.name());
    let t0 = d.now();
    assert!(d.resolve(mn, "cn.zone-b.example").is_ok(), "{} -> {}: tunnel", a.name(), b.name());
    let setup = d.now().saturating_duration_since(t0);
    // Route optimization has its time; then the path is what it will stay.
    d.run_for(Duration::from_secs(6));
    let (path, peer_path) = (d.path(mn, "cn.zone-b.example"), d.path(cn, "mn.zone-a.example"));
    let pings = d.ping4(mn, cn, 1) && d.ping4(cn, mn, 2);
    if path != peer_path || !pings {
        return Row {
            path: None,
            setup,
            after_move: None,
            trouble: Some(format!("paths {path:?}/{peer_path:?}, pings {pings}")),
        };
    }
    switch_network(&mut d, mn, a, 3);
    let after_move = time_to_reach(&mut d, cn, mn, Duration::from_secs(10));
    Row { path, setup, after_move, trouble: None }
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

#[test]
fn every_pair_of_placements_goes_direct_where_hole_punching_allows_and_survives_a_switch() {
    let mut table = String::from(
        "| initiator \\ peer | path | set-up ms | peer reaches it after a network switch, ms |\n|---|---|---|---|\n",
    );
    let (mut direct, mut mismatches, mut slow) = (0, Vec::new(), Vec::new());
    let mut i = 0;
    for a in PLACES {
        for b in PLACES {
            let row = run_pair(i, a, b);
            i += 1;
            let expect = predicted(a, b);
            if let Some(t) = &row.trouble {
                mismatches.push(format!("{} -> {}: {t}", a.name(), b.name()));
            } else if row.path != Some(expect) {
                mismatches.push(format!("{} -> {}: {:?}, predicted {expect:?}", a.name(), b.name(), row.path));
            }
            direct += usize::from(row.path == Some(PathKind::Direct));
            match row.after_move {
                Some(t) if t <= Duration::from_secs(1) => {}
                other => slow.push(format!("{} -> {}: {other:?}", a.name(), b.name())),
            }
            table.push_str(&format!(
                "| {} -> {} | {:?} | {} | {} |\n",
                a.name(),
                b.name(),
                row.path,
                ms(row.setup),
                row.after_move.map_or("never".into(), ms)
            ));
        }
    }
    // The share that matters: pairs with a family in common, not both behind a NAT
    // that picks a port per destination (no traversal without guessing ports).
    let hard = |p: Place| !p.behaviour().eim;
    let (mut eligible, mut eligible_direct) = (0, 0);
    for a in PLACES {
        for b in PLACES {
            let (x, y) = (a.behaviour(), b.behaviour());
            if ((x.has_v4 && y.has_v4) || (x.has_v6 && y.has_v6)) && !(hard(a) && hard(b)) {
                eligible += 1;
                eligible_direct += usize::from(predicted(a, b) == PathKind::Direct);
            }
        }
    }
    println!(
        "{table}\n{direct} of {} ordered pairs direct; {eligible_direct} of {eligible} with a common family and not both symmetric",
        PLACES.len() * PLACES.len()
    );
    assert!(mismatches.is_empty(), "paths other than predicted:\n{}", mismatches.join("\n"));
    assert!(slow.is_empty(), "peer unreachable over 1 s after the switch:\n{}", slow.join("\n"));
}
