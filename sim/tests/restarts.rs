//! A server down for a while, then started again (issue 15, item 5): every box must be
//! healthy again (registered, and with the NS method its NS connection acknowledged)
//! within a bounded time of the server's return, never stuck in a state only a restart
//! of the box leaves.

#![allow(clippy::print_stderr)]

use ntm_proto::engine::node::Node;
use ntm_proto::engine::ns::{Ns, NsConfig};
use ntm_proto::time::Duration;
use ntm_proto::wire::registration::KeepaliveMethod;
use ntm_sim::deploy::*;
use ntm_sim::{HostId, NatConfig, RealmConfig, RealmId};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn pair(seed: u64) -> (Deployment, HostId, HostId) {
    let mut d = Deployment::new(seed, Options::default());
    let nat = NatConfig { udp_timeout: secs(30), ..NatConfig::port_restricted_cone() };
    let realm = d.home(|o| RealmConfig::v4_only(o).with_nat(nat));
    let opts = NodeOpts { keepalive: KeepaliveMethod::Ns, ..NodeOpts::default() };
    let cn = d.add_node("cn.zone-b.example", realm, &[ip("192.168.1.2")], opts);
    let mn = d.add_node(
        "mn.zone-a.example",
        RealmId::INTERNET,
        &[ip("198.51.100.10"), ip("2001:db8:100::10")],
        NodeOpts::default(),
    );
    assert!(d.bring_up(cn) && d.bring_up(mn));
    assert!(d.sim.run_until_cond(d.now() + secs(10), |s| s.engine::<Node>(cn).notifications_ready()));
    d.run_for(secs(60));
    (d, mn, cn)
}

fn healthy(d: &mut Deployment, cn: HostId, mn: HostId) -> bool {
    d.node(mn).is_registered() && d.node(cn).is_registered() && d.node(cn).notifications_ready()
}

/// The NS is down for `down`, then starts again with nothing.
fn ns_down_for(seed: u64, down: Duration) {
    let (mut d, mn, cn) = pair(seed);
    // Stopped: its connections are closed (the boxes hear), then it is gone.
    d.sim.close_streams(d.ns);
    d.sim.set_down(d.ns, true);
    d.run_for(down);
    d.sim.replace_engine(d.ns, Ns::new(NsConfig::new(name("ns1.example"))).unwrap());
    d.sim.set_down(d.ns, false);
    let back = d.now();
    // A box retries the NS at most a minute apart: healthy within 90 s of its return.
    let ok = d.sim.run_until_cond(back + secs(90), |s| {
        s.engine::<Node>(cn).notifications_ready() && s.engine::<Node>(cn).is_registered()
    });
    assert!(ok, "NS down {down:?}: the CN uses the NS again within 90 s");
    eprintln!("NS down {down:?}: CN healthy {:?} after its return", d.now().saturating_duration_since(back));
    d.run_for(secs(120));
    assert!(healthy(&mut d, cn, mn), "still healthy");
    assert!(d.resolve(mn, "cn.zone-b.example").is_ok() && d.ping4(mn, cn, 1));
}

#[test]
fn boxes_use_the_ns_again_after_it_was_down_for_ten_seconds() {
    ns_down_for(160, secs(10));
}

#[test]
fn boxes_use_the_ns_again_after_it_was_down_for_five_minutes() {
    ns_down_for(161, secs(300));
}

/// The NS restarts, and goes down again just as the box, told that its key is unknown,
/// asks its DC for a new one: the DC cannot give the key to the NS and answers without a
/// grant. Once the NS is back, the box must use it again within a bounded time, not only
/// at its next login.
#[test]
fn a_box_whose_ns_was_down_when_it_asked_for_a_new_key_uses_it_again_once_back() {
    let (mut d, mn, cn) = pair(162);
    d.sim.replace_engine(d.ns, Ns::new(NsConfig::new(name("ns1.example"))).unwrap());
    let ns = d.ns;
    // The box reconnects and is told its key is unknown; then the NS goes down.
    assert!(d
        .sim
        .run_until_cond(d.now() + secs(30), |s| { s.drops(ns).get(ntm_proto::engine::DropReason::UnknownKey) > 0 }));
    d.sim.close_streams(ns);
    d.sim.set_down(ns, true);
    d.run_for(secs(120));
    d.sim.replace_engine(ns, Ns::new(NsConfig::new(name("ns1.example"))).unwrap());
    d.sim.set_down(ns, false);
    let back = d.now();
    let ok = d.sim.run_until_cond(back + secs(300), |s| s.engine::<Node>(cn).notifications_ready());
    assert!(ok, "the CN uses the NS again within 5 minutes of its return");
    eprintln!(
        "NS down while the CN asked for a key: CN back on the NS {:?} after its return",
        d.now().saturating_duration_since(back)
    );
    assert!(healthy(&mut d, cn, mn));
    assert!(d.resolve(mn, "cn.zone-b.example").is_ok() && d.ping4(mn, cn, 1));
}
