//! One node's flood of requests must not deny service to the other nodes of its DC.

use ntm_proto::engine::dc::Dc;
use ntm_proto::engine::node::{NodeEvent, ResolveError};
use ntm_proto::time::Duration;
use ntm_proto::wire::refusal::Reason;
use ntm_sim::deploy::*;
use ntm_sim::RealmId;

/// A modified agent with no cap of its own asks its DC for 5 000 names that do not exist
/// (each a negotiation the DC keeps 30 s after it fails). Another node of the same DC
/// still gets its tunnel: the DC caps what one node may hold in the shared table.
#[test]
fn a_node_that_floods_its_dc_with_lookups_does_not_shut_out_another_node() {
    let mut d = Deployment::new(11, Options::default());
    let evil_opts = NodeOpts { max_pending_resolves: Some(100_000), ..NodeOpts::default() };
    let evil = d.add_node("evil.zone-a.example", RealmId::INTERNET, &[ip("198.51.100.13")], evil_opts);
    let mn = d.add_node("mn.zone-a.example", RealmId::INTERNET, &[ip("198.51.100.12")], NodeOpts::default());
    let cn = d.add_node("cn.zone-b.example", RealmId::INTERNET, &[ip("198.51.100.11")], NodeOpts::default());
    assert!(d.bring_up(evil) && d.bring_up(mn) && d.bring_up(cn), "registered");

    for round in 0..10 {
        let now = d.sim.now();
        for i in 0..500 {
            d.node(evil).resolve(now, name(&format!("n{round}x{i}.zone-b.example")));
        }
        d.run_for(Duration::from_millis(200));
    }
    let asked = d.sim.now();
    assert!(d.resolve(mn, "cn.zone-b.example").is_ok(), "the other node gets its tunnel");
    let took = d.sim.now().saturating_duration_since(asked);
    assert!(took < Duration::from_secs(2), "... at once, not after the flood's entries expire: {took:?}");

    // The flooding node itself was told to slow down, not left waiting, and it holds no
    // more than its share of the DC's table.
    let refused = d
        .events(evil)
        .iter()
        .filter(|e| matches!(e, NodeEvent::ResolveFailed { error: ResolveError::Refused(Reason::Overloaded), .. }))
        .count();
    assert!(refused > 100, "the flooding node's excess requests are refused: {refused}");
    let dc = d.sim.engine::<Dc>(d.dc_a);
    assert!(dc.negotiation_count() <= 64 + 1, "one node's share: {} negotiations held", dc.negotiation_count());
}
