//! The same sequences with 10% loss and jitter-induced reordering on every link:
//! retransmission with backoff makes each of them converge. Many seeds each.

use ntm_proto::engine::node::PathKind;
use ntm_proto::time::Duration;
use ntm_proto::wire::registration::KeepaliveMethod;
use ntm_sim::deploy::*;
use ntm_sim::{HostId, NatConfig, RealmConfig, RealmId};

const LOSS: f64 = 0.10;
/// 500 seeds: a few seconds in the release profile. (3000 seeds were run while tuning the
/// retransmission policies; all converged.)
const SEEDS: [u64; 500] = {
    let mut s = [0u64; 500];
    let mut i = 0;
    while i < 500 {
        s[i] = 300 + i as u64;
        i += 1;
    }
    s
};

fn lossy(seed: u64) -> Deployment {
    Deployment::new(seed, Options { loss: LOSS, ..Options::default() })
}

fn nat_node(d: &mut Deployment, fqdn: &str, nat: NatConfig, opts: NodeOpts) -> HostId {
    let realm = d.home(|o| RealmConfig::v4_only(o).with_nat(nat));
    d.add_node(fqdn, realm, &[ip("192.168.1.2")], opts)
}

/// DNS clients retry a query that timed out; so does this.
fn resolve_retrying(
    d: &mut Deployment,
    h: HostId,
    peer: &str,
) -> Result<ntm_proto::wire::VirtualAddrs, ntm_proto::engine::node::ResolveError> {
    let mut last = d.resolve(h, peer);
    for _ in 0..3 {
        if last.is_ok() {
            break;
        }
        last = d.resolve(h, peer);
    }
    last
}

/// A single packet may be lost; an application would retry. True if one of ten gets
/// through.
fn ping_retrying(d: &mut Deployment, a: HostId, b: HostId, tag: u32) -> bool {
    (0..10).any(|i| d.ping4(a, b, tag * 100 + i))
}

#[test]
fn login_registration_and_direct_tunnel_converge_under_loss() {
    let (mut delivered, mut lost) = (0u64, 0u64);
    for seed in SEEDS {
        let mut d = lossy(seed);
        let mn = nat_node(&mut d, "mn.zone-a.example", NatConfig::port_restricted_cone(), NodeOpts::default());
        let cn = d.add_node("cn.zone-b.example", RealmId::INTERNET, &[ip("198.51.100.11")], NodeOpts::default());
        assert!(d.bring_up(mn) && d.bring_up(cn), "seed {seed}: registered");
        assert!(resolve_retrying(&mut d, mn, "cn.zone-b.example").is_ok(), "seed {seed}: tunnel");
        assert!(ping_retrying(&mut d, mn, cn, 1) && ping_retrying(&mut d, cn, mn, 2), "seed {seed}: data");
        let core = d.sim.link_stats(ntm_sim::LinkId::Lan(RealmId::INTERNET));
        delivered += core.delivered;
        lost += core.lost;
    }
    // The loss really happened, at about the configured rate.
    let rate = lost as f64 / (lost + delivered) as f64;
    assert!((0.05..0.15).contains(&rate), "core loss rate {rate}");
}

#[test]
fn relayed_tunnel_and_route_optimization_converge_under_loss() {
    for seed in SEEDS {
        let mut d = lossy(seed);
        let mn = nat_node(&mut d, "mn.zone-a.example", NatConfig::port_restricted_cone(), NodeOpts::default());
        let cn = nat_node(&mut d, "cn.zone-b.example", NatConfig::full_cone(), NodeOpts::default());
        let sym = nat_node(&mut d, "sym.zone-b.example", NatConfig::symmetric(), NodeOpts::default());
        let sym2 = nat_node(&mut d, "sym2.zone-a.example", NatConfig::symmetric(), NodeOpts::default());
        for h in [mn, cn, sym, sym2] {
            assert!(d.bring_up(h), "seed {seed}: registered");
        }
        assert!(resolve_retrying(&mut d, mn, "cn.zone-b.example").is_ok(), "seed {seed}: relayed tunnel");
        d.run_for(Duration::from_secs(8));
        assert_eq!(d.path(mn, "cn.zone-b.example"), Some(PathKind::Direct), "seed {seed}: optimized");
        assert!(ping_retrying(&mut d, mn, cn, 1) && ping_retrying(&mut d, cn, mn, 2));
        let r = resolve_retrying(&mut d, sym2, "sym.zone-b.example");
        assert!(r.is_ok(), "seed {seed}: symmetric pair: {r:?}");
        d.run_for(Duration::from_secs(8));
        assert_eq!(d.path(sym2, "sym.zone-b.example"), Some(PathKind::Relay), "seed {seed}: stays relayed");
        assert!(ping_retrying(&mut d, sym2, sym, 3) && ping_retrying(&mut d, sym, sym2, 4));
    }
}

#[test]
fn ns_path_and_handover_converge_under_loss() {
    for seed in SEEDS {
        let mut d = lossy(seed);
        let nat = NatConfig { udp_timeout: Duration::from_secs(30), ..NatConfig::port_restricted_cone() };
        let cn = nat_node(
            &mut d,
            "cn.zone-b.example",
            nat,
            NodeOpts { keepalive: KeepaliveMethod::Ns, ..NodeOpts::default() },
        );
        let mn = d.add_node("mn.zone-a.example", RealmId::INTERNET, &[ip("198.51.100.10")], NodeOpts::default());
        assert!(d.bring_up(mn) && d.bring_up(cn), "seed {seed}: registered");
        d.run_for(Duration::from_secs(300));
        assert!(resolve_retrying(&mut d, mn, "cn.zone-b.example").is_ok(), "seed {seed}: through the NS");
        assert!(ping_retrying(&mut d, mn, cn, 1));
        // CN moves; the tunnel follows.
        let lte = d.home(|o| RealmConfig::v4_only(o).with_nat(NatConfig::symmetric()));
        d.sim.move_host(cn, lte, &[ip("10.9.9.9")]);
        let now = d.now();
        d.node(cn).handle_network_change(now, vec![std::net::SocketAddr::new(ip("10.9.9.9"), NODE_PORT)]);
        d.run_for(Duration::from_secs(5));
        assert!(ping_retrying(&mut d, mn, cn, 2) && ping_retrying(&mut d, cn, mn, 3), "seed {seed}: after the move");
    }
}
