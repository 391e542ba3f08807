//! Recovery after a server restart and after a refusal that can change (issue 12, items 2
//! and 3): a restarted NS, DC or RS loses what it held in memory, and its peers must notice
//! and set it up again without a person stepping in; a login the AS refused for a reason
//! that can change is tried again.

#![allow(clippy::print_stderr)]

use ntm_proto::engine::dc::{Dc, DcEvent, NodeState};
use ntm_proto::engine::node::{Node, NodeEvent, PathKind};
use ntm_proto::engine::ns::{Ns, NsConfig};
use ntm_proto::engine::rs::{Rs, RsConfig};
use ntm_proto::time::Duration;
use ntm_proto::wire::refusal::Reason;
use ntm_proto::wire::registration::KeepaliveMethod;
use ntm_proto::wire::Fqdn;
use ntm_sim::deploy::*;
use ntm_sim::{HostId, NatConfig, RealmConfig, RealmId};
use std::collections::HashMap;
use std::net::SocketAddr;

fn global(d: &mut Deployment, fqdn: &str, n: u8) -> HostId {
    let v4 = ip(&format!("198.51.100.{n}"));
    let v6 = ip(&format!("2001:db8:100::{n}"));
    d.add_node(fqdn, RealmId::INTERNET, &[v4, v6], NodeOpts::default())
}

fn behind_nat(d: &mut Deployment, fqdn: &str, nat: NatConfig, opts: NodeOpts) -> HostId {
    let realm = d.home(|o| RealmConfig::v4_only(o).with_nat(nat));
    d.add_node(fqdn, realm, &[ip("192.168.1.2")], opts)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A CN kept reachable only by the NS (its UDP mapping has expired), and a global MN.
fn ns_kept_pair(seed: u64) -> (Deployment, HostId, HostId) {
    let mut d = Deployment::new(seed, Options::default());
    let nat = NatConfig { udp_timeout: secs(30), ..NatConfig::port_restricted_cone() };
    let opts = NodeOpts { keepalive: KeepaliveMethod::Ns, ..NodeOpts::default() };
    let cn = behind_nat(&mut d, "cn.zone-b.example", nat, opts);
    let mn = global(&mut d, "mn.zone-a.example", 10);
    assert!(d.bring_up(cn) && d.bring_up(mn));
    assert!(d.sim.run_until_cond(d.now() + secs(10), |s| s.engine::<Node>(cn).notifications_ready()));
    d.run_for(secs(60)); // idle: the UDP mapping is gone, only the NS reaches the CN
    (d, mn, cn)
}

#[test]
fn an_ns_restart_is_noticed_and_its_boxes_get_fresh_keys_within_seconds() {
    let (mut d, mn, cn) = ns_kept_pair(40);
    let before = d.node(cn).held_keys();
    let _ = d.events(cn);
    let restarted = d.now();
    d.sim.replace_engine(d.ns, Ns::new(NsConfig::new(name("ns1.example"))).unwrap());
    // The CN reconnects with its old K_ntmns, the NS says it does not know it, the CN asks
    // its DC for a new one, the DC shares a new K_dcns with the NS and distributes it.
    assert!(
        d.sim.run_until_cond(restarted + secs(30), |s| s.engine::<Ns>(d.ns).connected() == 1),
        "the CN is connected to the restarted NS again"
    );
    let took = d.now().saturating_duration_since(restarted);
    eprintln!("NS restart: the CN is registered with the NS again after {took:?}");
    assert!(took < secs(10), "{took:?}");
    let after = d.node(cn).held_keys();
    let ntmns = |k: &[(&'static str, u64)]| k.iter().find(|(n, _)| *n == "K_ntmns").map(|(_, f)| *f);
    assert!(ntmns(&after).is_some() && ntmns(&after) != ntmns(&before), "a fresh K_ntmns, never the old one again");
    assert!(!d.events(cn).iter().any(|e| matches!(e, NodeEvent::LoggedIn { .. })), "no login needed");
    // The MN reaches it: the Route Direction goes through the NS.
    assert!(d.resolve(mn, "cn.zone-b.example").is_ok());
    assert!(d.ping4(mn, cn, 1) && d.ping4(cn, mn, 2));
}

#[test]
fn a_plain_ns_refusal_for_another_key_is_ignored() {
    let (mut d, _mn, cn) = ns_kept_pair(41);
    let before = d.node(cn).held_keys();
    // The NS restarts; a forged refusal naming a key the CN does not hold changes nothing,
    // and the genuine one still works.
    d.sim.replace_engine(d.ns, Ns::new(NsConfig::new(name("ns1.example"))).unwrap());
    let refusal = ntm_proto::wire::Message::Refusal(ntm_proto::wire::refusal::Refusal::new(
        ntm_proto::wire::MsgType::NotificationRegistration,
        ntm_proto::wire::RequestId(0),
        Reason::UnknownKey,
        "unknown key",
    ));
    let mut header = ntm_proto::wire::Header::plain(ntm_proto::wire::MsgType::Refusal, ntm_proto::wire::Sender::Ns);
    header.key_id = ntm_proto::wire::KeyId(0x5eed);
    let mut frame = header.to_bytes().to_vec();
    frame.extend_from_slice(&refusal.body_to_vec());
    let now = d.now();
    let ns_addr: SocketAddr = d.sim.addr_v4(d.ns).unwrap();
    let r = ntm_proto::engine::Engine::handle_stream(
        d.node(cn),
        now,
        ntm_proto::engine::StreamKind::Tcp,
        ns_addr,
        None,
        &frame,
    );
    assert_eq!(r, ntm_proto::engine::Received::Dropped(ntm_proto::engine::DropReason::Unauthorized));
    assert_eq!(d.node(cn).held_keys(), before);
    assert!(d.sim.run_until_cond(d.now() + secs(30), |s| s.engine::<Ns>(d.ns).connected() == 1));
}

/// Runs until `cond`, keeping DC `dc`'s node states as `ntm-dc` saves them: exported at
/// the events after which the daemon writes a node (its counters do not move otherwise
/// here, so no periodic save would add anything).
fn run_saving(
    d: &mut Deployment,
    dc: HostId,
    limit: Duration,
    saved: &mut HashMap<Fqdn, NodeState>,
    mut cond: impl FnMut(&mut ntm_sim::Sim) -> bool,
) -> bool {
    let until = d.now() + limit;
    d.sim.run_until_cond(until, |s| {
        let e = s.engine::<Dc>(dc);
        while let Some(ev) = e.poll_event() {
            let fqdn = match ev {
                DcEvent::NodeKeyReceived { fqdn }
                | DcEvent::NodeRegistered { fqdn, .. }
                | DcEvent::NsBound { fqdn } => fqdn,
                _ => continue,
            };
            if let Some(state) = e.export_node(&fqdn) {
                saved.insert(fqdn, state);
            }
        }
        cond(s)
    })
}

#[test]
fn a_dc_restarted_from_its_saved_state_reaches_its_ns_kept_box() {
    let mut d = Deployment::new(42, Options::default());
    let nat = NatConfig { udp_timeout: secs(30), ..NatConfig::port_restricted_cone() };
    let opts = NodeOpts { keepalive: KeepaliveMethod::Ns, ..NodeOpts::default() };
    let cn = behind_nat(&mut d, "cn.zone-b.example", nat, opts);
    let mn = global(&mut d, "mn.zone-a.example", 10);
    let dc_b = d.dc_b;
    let mut saved = HashMap::new();
    d.start(cn);
    let up = run_saving(&mut d, dc_b, secs(30), &mut saved, |s| s.engine::<Node>(cn).notifications_ready());
    assert!(up && d.bring_up(mn));
    // Idle: the UDP mapping is gone, only the NS reaches the CN.
    assert!(!run_saving(&mut d, dc_b, secs(60), &mut saved, |_| false));
    let now = d.now();
    let cfg = d.sim.engine::<Dc>(dc_b).config().clone();
    let mut fresh = Dc::new(cfg, d.sim.rng_for("dc-b-restored"), now).unwrap();
    for s in saved.into_values() {
        let floor = s.next_counter + (1 << 20);
        fresh.restore_node(now, s, floor).unwrap();
    }
    d.sim.replace_engine(dc_b, fresh);
    let restarted = d.now();
    // The restored DC knows the CN's NS binding (saved when the NS acknowledged it) and
    // has no K_dcns: it shares a new one with the NS before the Notify.
    assert!(d.resolve(mn, "cn.zone-b.example").is_ok());
    eprintln!("DC restart: resolved through the NS {:?} after", d.now().saturating_duration_since(restarted));
    assert!(d.ping4(mn, cn, 1) && d.ping4(cn, mn, 2));
}

#[test]
fn an_rs_restart_under_an_idle_relayed_tunnel_is_recovered() {
    // The RS answers the MN's first packet with an "unknown session" hint: the MN
    // renegotiates at once instead of after 8 s of silence and an unanswered punch.
    let took = rs_restart(43, false);
    assert!(took < secs(3), "{took:?}");
}

#[test]
fn an_rs_restart_is_recovered_when_the_awaiting_side_sends_first() {
    // The CN does not renegotiate (only the side that opened the tunnel does); the MN
    // learns of the loss at its next keepalive punch (every 15 s).
    let took = rs_restart(46, true);
    assert!(took < secs(17), "{took:?}");
}

/// An idle relayed tunnel, the RS restarted, then pings until one gets through (at most
/// 30 s); the time that took.
fn rs_restart(seed: u64, cn_sends: bool) -> Duration {
    let mut d = Deployment::new(seed, Options::default());
    let mn = behind_nat(&mut d, "mn.zone-a.example", NatConfig::symmetric(), NodeOpts::default());
    let cn = behind_nat(&mut d, "cn.zone-b.example", NatConfig::symmetric(), NodeOpts::default());
    assert!(d.bring_up(mn) && d.bring_up(cn));
    assert!(d.resolve(mn, "cn.zone-b.example").is_ok());
    assert_eq!(d.path(mn, "cn.zone-b.example"), Some(PathKind::Relay));
    assert!(d.ping4(mn, cn, 1));
    d.run_for(secs(40));
    let rs = d.relays[0];
    let addrs: Vec<SocketAddr> = d.sim.addrs(rs).iter().map(|a| SocketAddr::new(*a, SERVER_PORT)).collect();
    d.sim.replace_engine(rs, Rs::new(RsConfig::new(name("rs1.example"), addrs)).unwrap());
    let restarted = d.now();
    // Packets from the MN now meet a relay without the session; the tunnel notices and is
    // set up again through the DCs, which share new keys with the RS.
    let mut n = 10;
    let (from, to) = if cn_sends { (cn, mn) } else { (mn, cn) };
    let ok = loop {
        n += 1;
        if d.ping4(from, to, n) {
            break true;
        }
        if d.now() >= restarted + secs(30) {
            break false;
        }
    };
    let took = d.now().saturating_duration_since(restarted);
    eprintln!("RS restart: packets through the relay again after {took:?}");
    assert!(ok, "traffic through a new relay session within 30 s");
    took
}

#[test]
fn a_disabled_account_logs_in_by_itself_once_enabled() {
    let mut d = Deployment::new(44, Options::default());
    let mn = global(&mut d, "mn.zone-a.example", 10);
    d.accounts().disabled.push(name("mn.zone-a.example"));
    d.start(mn);
    d.run_for(secs(20));
    let ev = d.events(mn);
    let refusals = ev.iter().filter(|e| **e == NodeEvent::LoginRefused { reason: Reason::AccountDisabled }).count();
    // Attempts at 0 s and then after 0.5-1, 1-2, 2-4, 4-8 s (jittered): 4 or 5 by 20 s.
    assert!((3..=6).contains(&refusals), "refused and tried again with backoff: {ev:?}");
    assert!(!ev.iter().any(|e| matches!(e, NodeEvent::LoginFailed { .. })), "not given up: {ev:?}");
    d.accounts().disabled.clear();
    let enabled = d.now();
    // The wait never exceeds 60 s.
    assert!(d.sim.run_until_cond(enabled + secs(61), |s| s.engine::<Node>(mn).is_registered()));
    eprintln!("account enabled: logged in {:?} later", d.now().saturating_duration_since(enabled));
}

#[test]
fn a_wrong_credential_stops_until_a_new_one_is_set() {
    let mut d = Deployment::new(45, Options::default());
    let mn = global(&mut d, "mn.zone-a.example", 10);
    let right = d.accounts().passwords.get("owner@mn.zone-a.example").unwrap().0.clone();
    d.accounts().passwords.get_mut("owner@mn.zone-a.example").unwrap().0 = b"another".to_vec();
    d.start(mn);
    d.run_for(secs(120));
    let ev = d.events(mn);
    let failed = ev.iter().filter(|e| matches!(e, NodeEvent::LoginFailed { .. })).count();
    assert_eq!(failed, 1, "one refusal, then no more attempts: {ev:?}");
    // The right password comes back (a new configuration): the node tries again at once.
    d.accounts().passwords.get_mut("owner@mn.zone-a.example").unwrap().0 = right.clone();
    let cred = ntm_proto::wire::login::Credential::Password {
        email: ntm_proto::wire::Text::new("owner@mn.zone-a.example").unwrap(),
        password: ntm_proto::wire::login::Password::new(&right).unwrap(),
    };
    d.node(mn).set_credential(cred);
    assert!(d.sim.run_until_cond(d.now() + secs(5), |s| s.engine::<Node>(mn).is_registered()));
}

#[test]
fn after_an_ns_restart_its_boxes_come_back_spread_out_and_without_logging_in() {
    let mut d = Deployment::new(47, Options::default());
    let opts = NodeOpts { keepalive: KeepaliveMethod::Ns, ..NodeOpts::default() };
    let boxes: Vec<HostId> = (0..20)
        .map(|i| behind_nat(&mut d, &format!("box{i}.zone-b.example"), NatConfig::port_restricted_cone(), opts.clone()))
        .collect();
    for &b in &boxes {
        assert!(d.bring_up(b));
    }
    let all_ready = |s: &mut ntm_sim::Sim| boxes.iter().all(|&b| s.engine::<Node>(b).notifications_ready());
    assert!(d.sim.run_until_cond(d.now() + secs(10), all_ready));
    for &b in &boxes {
        let _ = d.events(b);
    }
    d.sim.replace_engine(d.ns, Ns::new(NsConfig::new(name("ns1.example"))).unwrap());
    d.sim.enable_capture(d.ns);
    let restarted = d.now();
    assert!(
        d.sim.run_until_cond(restarted + secs(10), |s| s.engine::<Ns>(d.ns).connected() == boxes.len()),
        "every box is back on the NS within 10 s"
    );
    // Each box's first frame to the restarted NS: they are spread over a second or more,
    // not all in the same instant.
    let mut first = std::collections::BTreeMap::new();
    for c in d.sim.capture(d.ns) {
        if c.dir == ntm_sim::Direction::In && c.carrier == ntm_sim::Carrier::Stream(ntm_proto::engine::StreamKind::Tcp)
        {
            first.entry(c.src.ip()).or_insert(c.at);
        }
    }
    assert_eq!(first.len(), boxes.len());
    let (lo, hi) = (first.values().min().copied().unwrap(), first.values().max().copied().unwrap());
    let spread = hi.saturating_duration_since(lo);
    eprintln!(
        "NS restart, {} boxes: first reconnect {:?} after, spread over {spread:?}",
        boxes.len(),
        lo.saturating_duration_since(restarted)
    );
    assert!(spread >= Duration::from_millis(500), "reconnects spread out: {spread:?}");
    for &b in &boxes {
        assert!(!d.events(b).iter().any(|e| matches!(e, NodeEvent::LoggedIn { .. })), "no login storm");
    }
}

#[test]
fn an_id_token_from_the_future_of_the_as_clock_is_retried_until_it_is_valid() {
    use base64ct::{Base64UrlUnpadded, Encoding};
    let mut d = Deployment::new(48, Options { oidc: true, ..Options::default() });
    let fqdn = "oidc.zone-a.example";
    let h = d.add_node(
        fqdn,
        RealmId::INTERNET,
        &[ip("198.51.100.10"), ip("2001:db8:100::10")],
        NodeOpts { login: Login::Oidc, ..NodeOpts::default() },
    );
    // Issued two minutes ahead of the AS's clock (which was set late, or runs behind):
    // beyond the 60 s leeway, so "not yet valid" for the next minute.
    let now = i64::try_from(d.now().as_millis() / 1000).unwrap();
    let header = Base64UrlUnpadded::encode_string(br#"{"alg":"ES256","kid":"k1","typ":"JWT"}"#);
    let claims = format!(
        r#"{{"iss":"https://id.example","sub":"sub-{fqdn}","aud":"ntmobile","exp":{},"iat":{}}}"#,
        now + 3600,
        now + 120
    );
    let input = format!("{header}.{}", Base64UrlUnpadded::encode_string(claims.as_bytes()));
    let token = format!("{input}.{}", Base64UrlUnpadded::encode_string(&d.oidc_key.sign(input.as_bytes()).0));
    d.node(h).set_credential(ntm_proto::wire::login::Credential::OidcToken(
        ntm_proto::wire::login::IdToken::new(token.as_bytes()).unwrap(),
    ));
    d.start(h);
    d.run_for(secs(30));
    let ev = d.events(h);
    assert!(ev.contains(&NodeEvent::LoginRefused { reason: Reason::BadCredential }), "{ev:?}");
    assert!(!d.node(h).is_registered());
    // Once the AS's clock reaches the token's time (less the leeway), the next attempt
    // (at most 60 s later) logs in.
    assert!(d.sim.run_until_cond(d.now() + secs(100), |s| s.engine::<Node>(h).is_registered()));
}
