//! The placement matrix of issue 15 in the simulator: every ordered pair of the places
//! users put boxes (a public IPv4 address, a public IPv6-only network, the four NAT
//! behaviours of RFC 4787, a home NAT behind a carrier's CGN). For each pair: does the
//! tunnel end direct or relayed, as hole punching and the search of ports allow; how long the set-up takes (DNS
//! query to answer, simulated time); and, for each kind of move the initiator makes, how
//! long traffic stalls both ways (a new address on the same network, another network of
//! the same kind, its NAT rebinding to a new port unannounced, a network of the other
//! family and back). Moves the node must notice itself from the kernel (a link that goes
//! down with its address kept) are the agent's part and are tested in the lab. The table is
//! printed (`cargo test -p ntm-sim --test matrix -- --nocapture`). With the real binaries,
//! lab/tests/nat.rs runs the NAT behaviours pairwise.

// The table is this test's report: printing it is the point.
#![allow(clippy::print_stdout)]

use ntm_proto::engine::node::PathKind;
use ntm_proto::time::Duration;
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
/// When one keeps one port per socket and the other picks one per destination, the DC's
/// mapping test tells them to search for each other's ports (the node's spray.rs): the
/// side that picks opens 256 mappings, the other guesses 1024 ports, and they meet with a
/// probability of about 98 % (by the birthday paradox). Two NATs that both pick a port
/// per destination hide both ends: no guess can meet them.
fn predicted(a: Place, b: Place) -> PathKind {
    let (x, y) = (a.behaviour(), b.behaviour());
    let common = (x.has_v4 && y.has_v4) || (x.has_v6 && y.has_v6);
    let punch = (x.eim && (y.eim || !x.port_filter)) || (y.eim && !y.port_filter);
    let search = x.eim != y.eim;
    if !common {
        PathKind::Relay
    } else if !x.nat || !y.nat || punch || search {
        PathKind::Direct
    } else {
        PathKind::Relay
    }
}

/// Puts a new node `fqdn` at `place` on a network of its own.
fn place_node(d: &mut Deployment, fqdn: &str, place: Place, n: u8) -> HostId {
    let (realm, addr) = fresh_network(d, place, n);
    d.add_node(fqdn, realm, &[addr], NodeOpts::default())
}

/// A new network of the kind `place` and the address a box gets in it; `n`, different
/// for every call in a run, keeps names and public addresses apart.
fn fresh_network(d: &mut Deployment, place: Place, n: u8) -> (RealmId, IpAddr) {
    let nat = |d: &mut Deployment, cfg: NatConfig| d.home(|o| RealmConfig::v4_only(o).with_nat(cfg));
    match place {
        Place::Public4 => (RealmId::INTERNET, ip(&format!("198.51.100.{}", 100 + n))),
        Place::Only6 => {
            let realm = d.sim.add_realm(&format!("v6only{n}"), RealmId::INTERNET, RealmConfig::v6_only());
            (realm, ip(&format!("2001:db8:60:{n}::2")))
        }
        Place::FullCone => (nat(d, NatConfig::full_cone()), ip("192.168.1.2")),
        Place::AddressRestricted => (nat(d, NatConfig::restricted_cone()), ip("192.168.1.2")),
        Place::PortRestricted => (nat(d, NatConfig::port_restricted_cone()), ip("192.168.1.2")),
        Place::Symmetric => (nat(d, NatConfig::symmetric()), ip("192.168.1.2")),
        Place::Cgn => {
            let outside = format!("203.0.113.{}", 200 + n).parse().unwrap();
            let cgn = d.sim.add_realm(
                &format!("cgn{n}"),
                RealmId::INTERNET,
                RealmConfig::v4_only(outside).with_nat(NatConfig::symmetric()),
            );
            let home = d.sim.add_realm(
                &format!("cgn-home{n}"),
                cgn,
                RealmConfig::v4_only(format!("100.64.0.{n}").parse().unwrap())
                    .with_nat(NatConfig::port_restricted_cone()),
            );
            (home, ip("192.168.7.2"))
        }
    }
}

/// The kinds of move the initiator makes, one after the other, in one run.
#[derive(Clone, Copy, Debug)]
enum Move {
    /// A new address on the same network (a DHCP renumbering).
    Renumber,
    /// Another network of the same kind (Wi-Fi to LTE).
    Switch,
    /// Its NAT gives it a new external port without telling it.
    Rebind,
    /// To a network of the other family (IPv6-only, or IPv4 behind a NAT from IPv6-only).
    OtherFamily,
    /// And back to a network of its own kind.
    Back,
}

const MOVES: [Move; 5] = [Move::Renumber, Move::Switch, Move::Rebind, Move::OtherFamily, Move::Back];

/// Another address in the same subnet, clear of the others this test hands out.
fn next_addr(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(a) => IpAddr::V4(std::net::Ipv4Addr::from(u32::from(a) + 40)),
        IpAddr::V6(a) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(a) + 40)),
    }
}

/// Makes the move `m` of `h` (placed at `place`); false if it does not apply there.
fn make_move(d: &mut Deployment, h: HostId, place: Place, m: Move, n: u8) -> bool {
    let tell = |d: &mut Deployment, addr: IpAddr| {
        let now = d.now();
        d.node(h).handle_network_change(now, vec![SocketAddr::new(addr, NODE_PORT)]);
    };
    match m {
        Move::Renumber => {
            let (realm, addr) = (d.sim.host_realm(h), next_addr(d.sim.addrs(h)[0]));
            d.sim.move_host(h, realm, &[addr]);
            tell(d, addr);
        }
        Move::Switch | Move::Back => {
            let (realm, addr) = fresh_network(d, place, n);
            d.sim.move_host(h, realm, &[addr]);
            tell(d, addr);
        }
        Move::Rebind => {
            if !place.behaviour().nat {
                return false;
            }
            let realm = d.sim.host_realm(h);
            d.sim.rebind_nat(realm);
        }
        Move::OtherFamily => {
            let other = if place.behaviour().has_v4 { Place::Only6 } else { Place::PortRestricted };
            let (realm, addr) = fresh_network(d, other, n);
            d.sim.move_host(h, realm, &[addr]);
            tell(d, addr);
        }
    }
    true
}

struct Row {
    path: Option<PathKind>,
    setup: Duration,
    /// Per move: None if it does not apply, else the stall (None inside: never recovered).
    moves: Vec<Option<Option<Duration>>>,
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
        let trouble = Some(format!("paths {path:?}/{peer_path:?}, pings {pings}"));
        return Row { path: None, setup, moves: Vec::new(), trouble };
    }
    let mut moves = Vec::new();
    for (k, m) in MOVES.into_iter().enumerate() {
        if !make_move(&mut d, mn, a, m, 3 + u8::try_from(k).unwrap()) {
            moves.push(None);
            continue;
        }
        moves.push(Some(d.stall(mn, cn, Duration::from_secs(10))));
        // Let the move settle (new sessions, relay released) before the next one.
        d.run_for(Duration::from_secs(5));
    }
    Row { path, setup, moves, trouble: None }
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

#[test]
fn every_pair_of_placements_goes_direct_where_hole_punching_allows_and_survives_every_move() {
    let mut table = String::from(
        "| initiator -> peer | path | set-up ms | renumber | switch | NAT rebind | other family | back |\n|---|---|---|---|---|---|---|---|\n",
    );
    let (mut direct, mut mismatches, mut slow) = (0, Vec::new(), Vec::new());
    let mut paths = Vec::new();
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
            paths.push(((a, b), row.path));
            let mut cells = Vec::new();
            for (m, stalled) in MOVES.iter().zip(&row.moves) {
                cells.push(match stalled {
                    None => "-".to_string(),
                    Some(Some(t)) => ms(*t),
                    Some(None) => "never".to_string(),
                });
                if let Some(t) = stalled {
                    if t.is_none_or(|t| t > Duration::from_secs(1)) {
                        slow.push(format!("{} -> {}: {m:?}: {t:?}", a.name(), b.name()));
                    }
                }
            }
            table.push_str(&format!(
                "| {} -> {} | {:?} | {} | {} |\n",
                a.name(),
                b.name(),
                row.path,
                ms(row.setup),
                cells.join(" | ")
            ));
        }
    }
    // The share that matters, as measured: pairs with a family in common, not both
    // behind a NAT that picks a port per destination (which hides both ends).
    let hard = |p: Place| !p.behaviour().eim;
    let (mut eligible, mut eligible_direct) = (0, 0);
    for ((a, b), path) in &paths {
        let (x, y) = (a.behaviour(), b.behaviour());
        if ((x.has_v4 && y.has_v4) || (x.has_v6 && y.has_v6)) && !(hard(*a) && hard(*b)) {
            eligible += 1;
            eligible_direct += usize::from(*path == Some(PathKind::Direct));
        }
    }
    println!(
        "{table}\n{direct} of {} ordered pairs direct; {eligible_direct} of {eligible} with a common family and not both symmetric",
        PLACES.len() * PLACES.len()
    );
    assert!(mismatches.is_empty(), "paths other than predicted:\n{}", mismatches.join("\n"));
    assert!(slow.is_empty(), "moves that stalled over 1 s:\n{}", slow.join("\n"));
}
