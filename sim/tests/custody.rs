//! Key custody (spec section 3): the RS never holds K_tmp or K_mncn; in public-key mode no
//! DC holds K_mncn or K_tmp; K_mncn is fresh per negotiation and shared by MN and CN only.

use ntm_proto::engine::dc::Dc;
use ntm_proto::engine::node::{Node, PathKind};
use ntm_proto::engine::rs::Rs;
use ntm_proto::keys::{Key, KeyKind, MnCn, Tmp};
use ntm_proto::time::Duration;
use ntm_sim::deploy::*;
use ntm_sim::{HostId, NatConfig, RealmConfig};
use std::collections::BTreeSet;

fn nat_node(d: &mut Deployment, fqdn: &str, opts: NodeOpts) -> HostId {
    let realm = d.home(|o| RealmConfig::v4_only(o).with_nat(NatConfig::symmetric()));
    d.add_node(fqdn, realm, &[ip("192.168.1.2")], opts)
}

fn fingerprints(keys: &[(&'static str, u64)], kind: &str) -> BTreeSet<u64> {
    keys.iter().filter(|(k, _)| *k == kind).map(|(_, f)| *f).collect()
}

/// True if any 16-byte window of `bytes` is a key of kind `K` with one of `fps`.
fn contains_key<K: KeyKind>(bytes: &[u8], fps: &BTreeSet<u64>) -> bool {
    bytes.windows(16).any(|w| fps.contains(&Key::<K>::from_bytes(w.try_into().unwrap()).fingerprint()))
}

#[test]
fn the_key_scan_finds_a_key_where_there_is_one() {
    let k = Key::<Tmp>::from_bytes([7; 16]);
    let mut bytes = vec![1, 2, 3];
    bytes.extend_from_slice(k.expose_secret());
    bytes.push(9);
    let fps = BTreeSet::from([k.fingerprint()]);
    assert!(contains_key::<Tmp>(&bytes, &fps));
    assert!(!contains_key::<MnCn>(&bytes, &fps), "fingerprints are per kind");
    assert!(!contains_key::<Tmp>(&bytes[1..bytes.len() - 2], &fps));
}

#[test]
fn the_relay_never_sees_k_tmp_or_k_mncn() {
    let mut d = Deployment::new(200, Options::default());
    let rs = d.relays[0];
    d.sim.enable_capture(rs);
    let mn = nat_node(&mut d, "mn.zone-a.example", NodeOpts::default());
    let cn = nat_node(&mut d, "cn.zone-b.example", NodeOpts::default());
    assert!(d.bring_up(mn) && d.bring_up(cn));
    // Watch the RS's key table at every step of the negotiation.
    let now = d.now();
    let id = d.node(mn).resolve(now, name("cn.zone-b.example"));
    let mut kinds = BTreeSet::new();
    let mut node_keys = Vec::new();
    let up = d.sim.run_until_cond(d.now() + Duration::from_secs(20), |s| {
        kinds.extend(s.engine::<Rs>(rs).held_keys().into_iter().map(|(k, _)| k));
        node_keys.extend(s.engine::<Node>(mn).held_keys());
        node_keys.extend(s.engine::<Node>(cn).held_keys());
        s.engine::<Node>(mn).tunnels().iter().any(|t| t.established)
    });
    assert!(up, "the relayed tunnel came up");
    let _ = id;
    assert_eq!(d.path(mn, "cn.zone-b.example"), Some(PathKind::Relay));
    assert!(d.ping4(mn, cn, 1) && d.ping4(cn, mn, 2));
    assert_eq!(kinds, BTreeSet::from(["K_dcrs", "K_tun"]), "the RS only ever held K_dcrs and K_tun");

    // Nothing the RS received or sent contains K_tmp or K_mncn in the clear.
    let tmp = fingerprints(&node_keys, "K_tmp");
    let mncn = fingerprints(&node_keys, "K_mncn");
    assert_eq!(tmp.len(), 1, "MN and CN held the same K_tmp");
    assert_eq!(mncn.len(), 1, "MN and CN hold the same K_mncn");
    let captured = d.sim.capture(rs);
    assert!(captured.len() > 10);
    for c in captured {
        assert!(!contains_key::<Tmp>(&c.bytes, &tmp), "K_tmp on the wire at the RS");
        assert!(!contains_key::<MnCn>(&c.bytes, &mncn), "K_mncn on the wire at the RS");
    }
    // K_tmp served one negotiation: neither node keeps it once the tunnel is settled.
    d.run_for(Duration::from_secs(31));
    assert!(fingerprints(&d.node(mn).held_keys(), "K_tmp").is_empty());
    assert!(fingerprints(&d.node(cn).held_keys(), "K_tmp").is_empty());
}

#[test]
fn public_key_mode_keeps_k_tmp_and_k_mncn_from_every_dc() {
    let mut d = Deployment::new(201, Options { attest: true, ..Options::default() });
    let pk = NodeOpts { public_key_mode: true, login: Login::Device, ..NodeOpts::default() };
    let mn = nat_node(&mut d, "mn.zone-a.example", pk.clone());
    let cn = nat_node(&mut d, "cn.zone-b.example", pk.clone());
    let cn2 = d.add_node("cn2.zone-b.example", ntm_sim::RealmId::INTERNET, &[ip("198.51.100.12")], pk);
    assert!(d.bring_up(mn) && d.bring_up(cn) && d.bring_up(cn2));
    assert!(d.node(mn).attestation().is_some(), "the AS attested the device key");

    let (dc_a, dc_b) = (d.dc_a, d.dc_b);
    let mut dc_kinds = BTreeSet::new();
    for peer in ["cn.zone-b.example", "cn2.zone-b.example"] {
        let now = d.now();
        d.node(mn).resolve(now, name(peer));
        let p = name(peer);
        let up = d.sim.run_until_cond(d.now() + Duration::from_secs(20), |s| {
            for dc in [dc_a, dc_b] {
                dc_kinds.extend(s.engine::<Dc>(dc).held_keys().into_iter().map(|(k, _)| k));
            }
            s.engine::<Node>(mn).tunnels().iter().any(|t| t.established && t.peer == p)
        });
        assert!(up, "the tunnel to {peer} came up");
    }
    assert!(d.ping4(mn, cn, 1) && d.ping4(cn, mn, 2) && d.ping4(mn, cn2, 3));
    assert!(!dc_kinds.contains("K_tmp") && !dc_kinds.contains("K_mncn"), "DCs held {dc_kinds:?}");
    assert!(dc_kinds.contains("K_tun"));

    // One K_mncn per negotiation, each shared by exactly its two ends.
    let mn_keys = fingerprints(&d.node(mn).held_keys(), "K_mncn");
    let cn_keys = fingerprints(&d.node(cn).held_keys(), "K_mncn");
    let cn2_keys = fingerprints(&d.node(cn2).held_keys(), "K_mncn");
    assert_eq!(mn_keys.len(), 2);
    assert_eq!(cn_keys.len(), 1);
    assert_eq!(cn2_keys.len(), 1);
    assert!(cn_keys.is_subset(&mn_keys) && cn2_keys.is_subset(&mn_keys) && cn_keys != cn2_keys);
    // No K_tmp anywhere in public-key mode.
    assert!(fingerprints(&d.node(mn).held_keys(), "K_tmp").is_empty());
}

#[test]
fn a_renegotiation_after_handover_makes_a_new_k_mncn() {
    let mut d = Deployment::new(202, Options::default());
    let mn = nat_node(&mut d, "mn.zone-a.example", NodeOpts::default());
    let cn = d.add_node("cn.zone-b.example", ntm_sim::RealmId::INTERNET, &[ip("198.51.100.11")], NodeOpts::default());
    assert!(d.bring_up(mn) && d.bring_up(cn));
    assert!(d.resolve(mn, "cn.zone-b.example").is_ok());
    let first = fingerprints(&d.node(mn).held_keys(), "K_mncn");
    let lte = d.home(|o| RealmConfig::v4_only(o).with_nat(NatConfig::symmetric()));
    d.sim.move_host(mn, lte, &[ip("10.1.1.1")]);
    let now = d.now();
    d.node(mn).handle_network_change(now, vec![std::net::SocketAddr::new(ip("10.1.1.1"), NODE_PORT)]);
    d.run_for(Duration::from_secs(10));
    let after = fingerprints(&d.node(mn).held_keys(), "K_mncn");
    assert_eq!(after.len(), 1, "the superseded session is gone after its grace period");
    assert!(after.is_disjoint(&first), "a new negotiation, a new K_mncn");
    assert_eq!(after, fingerprints(&d.node(cn).held_keys(), "K_mncn"));
    assert!(d.ping4(mn, cn, 1) && d.ping4(cn, mn, 2));
}
