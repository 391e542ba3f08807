//! The complete sequences of the paper (spec section 4), run by the real engines over the
//! simulated network, each from a seed. Read each test as a script over virtual time.

use ntm_proto::engine::account::{AccountServer, AsEvent};
use ntm_proto::engine::dc::{Dc, DcEvent};
use ntm_proto::engine::node::{Node, NodeEvent, PathKind, ResolveError};
use ntm_proto::engine::ns::Ns;
use ntm_proto::engine::rs::Rs;
use ntm_proto::engine::{Engine, Received, StreamKind};
use ntm_proto::time::Duration;
use ntm_proto::wire::refusal::Reason;
use ntm_proto::wire::registration::KeepaliveMethod;
use ntm_sim::deploy::*;
use ntm_sim::{Carrier, Direction, NatConfig, RealmConfig, RealmId};

fn global(d: &mut Deployment, fqdn: &str, n: u8, opts: NodeOpts) -> ntm_sim::HostId {
    let v4 = ip(&format!("198.51.100.{n}"));
    let v6 = ip(&format!("2001:db8:100::{n}"));
    d.add_node(fqdn, RealmId::INTERNET, &[v4, v6], opts)
}

fn behind_nat(d: &mut Deployment, fqdn: &str, nat: NatConfig, opts: NodeOpts) -> ntm_sim::HostId {
    let realm = d.home(|o| RealmConfig::v4_only(o).with_nat(nat));
    d.add_node(fqdn, realm, &[ip("192.168.1.2")], opts)
}

fn as_events(d: &mut Deployment) -> Vec<AsEvent> {
    let mut v = Vec::new();
    while let Some(e) = d.sim.engine::<AccountServer<TestAccounts>>(d.as_host).poll_event() {
        v.push(e);
    }
    v
}

fn dc_events(d: &mut Deployment, dc: ntm_sim::HostId) -> Vec<DcEvent> {
    let mut v = Vec::new();
    while let Some(e) = d.sim.engine::<Dc>(dc).poll_event() {
        v.push(e);
    }
    v
}

// ---- login (spec 4.1) ---------------------------------------------------------------

#[test]
fn login_with_password_then_registration_gives_virtual_addresses() {
    let mut d = Deployment::new(1, Options::default());
    let mn = global(&mut d, "mn.zone-a.example", 10, NodeOpts::default());
    assert!(d.bring_up(mn), "node registers");
    let ev = d.events(mn);
    assert!(ev.contains(&NodeEvent::LoggedIn { fqdn: name("mn.zone-a.example") }), "{ev:?}");
    // Dual-stack: one registration per family, both global.
    let regs: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            NodeEvent::Registered { observed, behind_nat, .. } => Some((*observed, *behind_nat)),
            _ => None,
        })
        .collect();
    d.run_for(Duration::from_secs(2));
    let mut more = d.events(mn);
    more.retain(|e| matches!(e, NodeEvent::Registered { .. }));
    let all = regs.len() + more.len();
    assert_eq!(all, 2, "registered in IPv4 and IPv6");
    assert!(regs.iter().all(|(_, nat)| !nat));
    let v = d.node(mn).virtual_addrs().unwrap();
    assert_eq!(v.v4, "198.18.1.2".parse::<std::net::Ipv4Addr>().unwrap());
    assert_eq!(v.v6, "2001:db8:ffa::2".parse::<std::net::Ipv6Addr>().unwrap());
    // The DC got the key from the AS before the node got it (NTM ACK before response).
    let dc_a = d.dc_a;
    let dc = dc_events(&mut d, dc_a);
    assert!(matches!(dc.first(), Some(DcEvent::NodeKeyReceived { .. })));
    assert_eq!(
        as_events(&mut d),
        vec![AsEvent::LoggedIn {
            fqdn: name("mn.zone-a.example"),
            credential: ntm_proto::wire::login::CredentialKind::Password
        }]
    );
    // The node found its DC from the NS record of its own name.
    assert!(d.sim.dns().lookups_within(Some(mn), &d.zone_a) >= 1);
}

#[test]
fn wrong_password_is_refused_and_no_key_is_issued() {
    let mut d = Deployment::new(2, Options::default());
    let mn = global(&mut d, "mn.zone-a.example", 10, NodeOpts::default());
    d.accounts().passwords.get_mut("owner@mn.zone-a.example").unwrap().0 = b"another".to_vec();
    d.start(mn);
    d.run_for(Duration::from_secs(5));
    let ev = d.events(mn);
    assert!(ev.contains(&NodeEvent::LoginFailed { reason: Reason::BadCredential }), "{ev:?}");
    assert!(d.node(mn).fqdn().is_none());
    assert!(d.node(mn).held_keys().is_empty(), "no key after a refusal");
    assert_eq!(d.sim.engine::<Dc>(d.dc_a).node_count(), 0, "the DC never got a key");
}

#[test]
fn disabled_account_is_refused() {
    let mut d = Deployment::new(3, Options::default());
    let mn = global(&mut d, "mn.zone-a.example", 10, NodeOpts::default());
    d.accounts().disabled.push(name("mn.zone-a.example"));
    d.start(mn);
    d.run_for(Duration::from_secs(5));
    assert!(d.events(mn).contains(&NodeEvent::LoginRefused { reason: Reason::AccountDisabled }));
}

#[test]
fn login_with_device_certificate() {
    let mut d = Deployment::new(4, Options::default());
    let mn = global(&mut d, "box.zone-a.example", 10, NodeOpts { login: Login::Device, ..NodeOpts::default() });
    assert!(d.bring_up(mn));
    assert_eq!(d.node(mn).fqdn(), Some(&name("box.zone-a.example")));
    // A device whose certificate is not bound to an account is refused.
    let other = global(&mut d, "stray.zone-a.example", 11, NodeOpts { login: Login::Device, ..NodeOpts::default() });
    d.accounts().devices.clear();
    d.start(other);
    d.run_for(Duration::from_secs(5));
    assert!(d.events(other).contains(&NodeEvent::LoginFailed { reason: Reason::BadCredential }));
}

#[test]
fn device_certificate_credential_without_a_certificate_is_refused() {
    let mut d = Deployment::new(5, Options::default());
    // A node whose TLS carries no client certificate claims the device credential.
    let mn = global(&mut d, "liar.zone-a.example", 10, NodeOpts::default());
    d.accounts().devices.insert(name("liar.zone-a.example"), name("liar.zone-a.example"));
    d.node(mn).set_credential(ntm_proto::wire::login::Credential::DeviceCertificate);
    d.start(mn);
    d.run_for(Duration::from_secs(5));
    assert!(d.events(mn).contains(&NodeEvent::LoginFailed { reason: Reason::BadCredential }));
}

#[test]
fn login_with_openid_token_and_refusal_of_expired_or_foreign_tokens() {
    let mut d = Deployment::new(6, Options { oidc: true, ..Options::default() });
    let mn = global(&mut d, "oidc.zone-a.example", 10, NodeOpts { login: Login::Oidc, ..NodeOpts::default() });
    assert!(d.bring_up(mn));
    assert_eq!(
        as_events(&mut d),
        vec![AsEvent::LoggedIn {
            fqdn: name("oidc.zone-a.example"),
            credential: ntm_proto::wire::login::CredentialKind::OidcToken
        }]
    );

    for (i, (aud, valid)) in [("ntmobile", -600i64), ("someone-else", 3600)].into_iter().enumerate() {
        let fqdn = format!("o{i}.zone-a.example");
        let h = global(
            &mut d,
            &fqdn,
            20 + u8::try_from(i).unwrap(),
            NodeOpts { login: Login::Oidc, ..NodeOpts::default() },
        );
        let token = d.id_token(&format!("sub-{fqdn}"), aud, valid);
        d.node(h).set_credential(ntm_proto::wire::login::Credential::OidcToken(
            ntm_proto::wire::login::IdToken::new(token.as_bytes()).unwrap(),
        ));
        d.start(h);
        d.run_for(Duration::from_secs(5));
        assert!(d.events(h).contains(&NodeEvent::LoginRefused { reason: Reason::BadCredential }), "token {i} refused");
    }
}

// ---- registration, NAT detection, keepalive (spec 4.2) -----------------------------

#[test]
fn registration_detects_nat_and_udp_keepalive_keeps_the_node_reachable() {
    let mut d = Deployment::new(7, Options::default());
    let nat = NatConfig { udp_timeout: Duration::from_secs(30), ..NatConfig::port_restricted_cone() };
    let cn = behind_nat(&mut d, "cn.zone-a.example", nat, NodeOpts::default());
    assert!(d.bring_up(cn));
    let ev = d.events(cn);
    let reg = ev
        .iter()
        .find_map(|e| match e {
            NodeEvent::Registered { observed, behind_nat, .. } => Some((*observed, *behind_nat)),
            _ => None,
        })
        .unwrap();
    assert!(reg.1, "behind NAT");
    assert_eq!(reg.0.ip(), ip("203.0.113.1"), "the DC saw the NAT's outside address");
    // Ten minutes: the 30 s NAT timeout would have closed the mapping without the 20 s
    // keepalives. A global MN can still reach the CN.
    d.run_for(Duration::from_secs(600));
    let mn = global(&mut d, "mn.zone-a.example", 10, NodeOpts::default());
    assert!(d.bring_up(mn));
    assert!(d.resolve(mn, "cn.zone-a.example").is_ok());
    assert!(d.ping4(mn, cn, 1) && d.ping4(cn, mn, 2));
}

#[test]
fn ns_path_delivers_route_direction_after_the_udp_mapping_expired() {
    let mut d = Deployment::new(8, Options::default());
    let nat = NatConfig { udp_timeout: Duration::from_secs(30), ..NatConfig::port_restricted_cone() };
    let cn = behind_nat(
        &mut d,
        "cn.zone-b.example",
        nat,
        NodeOpts { keepalive: KeepaliveMethod::Ns, ..NodeOpts::default() },
    );
    assert!(d.bring_up(cn));
    assert!(d.sim.run_until_cond(d.now() + Duration::from_secs(10), |s| s
        .engine::<ntm_proto::engine::node::Node>(cn)
        .notifications_ready()));
    assert_eq!(d.sim.engine::<Ns>(d.ns).connected(), 1);
    // No UDP keepalive on the NS path: after 15 minutes the NAT forgot the UDP mapping.
    let cn_realm = d.sim.host_realm(cn);
    let observed = d.sim.engine::<Dc>(d.dc_b).nodes()[0].endpoints[0].0;
    d.sim.enable_capture(cn);
    d.sim.enable_capture(d.ns);
    d.run_for(Duration::from_secs(900));
    let udp_out = d.sim.capture(cn).iter().filter(|c| c.dir == Direction::Out && c.carrier == Carrier::Udp).count();
    assert_eq!(udp_out, 0, "no UDP traffic while idle");
    // The DC's UDP path to the CN is gone: a datagram to the old mapping is dropped.
    let dc_addr = d.sim.addr_v4(d.dc_b).unwrap();
    d.sim.inject(RealmId::INTERNET, dc_addr, observed, vec![0; 32]);
    d.run_for(Duration::from_secs(1));
    assert_eq!(d.sim.nat_stats(cn_realm).mappings_expired, 1, "the UDP mapping expired");

    let mn = global(&mut d, "mn.zone-a.example", 10, NodeOpts::default());
    assert!(d.bring_up(mn));
    let v = d.resolve(mn, "cn.zone-b.example").expect("reached through the NS");
    assert_eq!(v, d.node(cn).virtual_addrs().unwrap());
    // The Route Direction went DC -> NS -> node over the node's TCP connection.
    let notified = d
        .sim
        .capture(d.ns)
        .iter()
        .filter(|c| {
            c.dir == Direction::Out && c.carrier == Carrier::Stream(StreamKind::Tcp) && c.bytes.get(1) == Some(&0x26)
        })
        .count();
    assert!(notified >= 1, "a Notify went to the node");
    assert!(d.ping4(mn, cn, 7) && d.ping4(cn, mn, 8));
}

// ---- name resolution and tunnels (spec 4.3, 4.4) --------------------------------------

#[test]
fn direct_tunnel_both_global_across_two_dcs_found_by_dns() {
    let mut d = Deployment::new(9, Options::default());
    let mn = global(&mut d, "mn.zone-a.example", 10, NodeOpts::default());
    let cn = global(&mut d, "cn.zone-b.example", 11, NodeOpts::default());
    assert!(d.bring_up(mn) && d.bring_up(cn));
    let v = d.resolve(mn, "cn.zone-b.example").unwrap();
    assert_eq!(v, d.node(cn).virtual_addrs().unwrap());
    // DC_MN looked up the NS record of CN's zone.
    assert!(d.sim.dns().lookups_within(Some(d.dc_a), &d.zone_b) >= 1);
    assert_eq!(d.path(mn, "cn.zone-b.example"), Some(PathKind::Direct));
    assert!(d.ping4(mn, cn, 1) && d.ping4(cn, mn, 2) && d.ping6(mn, cn, 3) && d.ping6(cn, mn, 4));
    // An ordinary name is answered as ordinary DNS.
    assert_eq!(d.resolve(mn, "www.example.org"), Err(ResolveError::NotNtm));
}

#[test]
fn direct_tunnel_mn_behind_nat() {
    let mut d = Deployment::new(10, Options::default());
    let mn = behind_nat(&mut d, "mn.zone-a.example", NatConfig::symmetric(), NodeOpts::default());
    let cn = global(&mut d, "cn.zone-b.example", 11, NodeOpts::default());
    assert!(d.bring_up(mn) && d.bring_up(cn));
    assert!(d.resolve(mn, "cn.zone-b.example").is_ok());
    assert_eq!(d.path(mn, "cn.zone-b.example"), Some(PathKind::Direct));
    assert!(d.ping4(mn, cn, 1) && d.ping4(cn, mn, 2));
}

#[test]
fn direct_tunnel_cn_behind_nat_cn_opens_it() {
    let mut d = Deployment::new(11, Options::default());
    let mn = global(&mut d, "mn.zone-a.example", 10, NodeOpts::default());
    let cn = behind_nat(&mut d, "cn.zone-b.example", NatConfig::symmetric(), NodeOpts::default());
    assert!(d.bring_up(mn) && d.bring_up(cn));
    assert!(d.resolve(mn, "cn.zone-b.example").is_ok());
    d.run_for(Duration::from_millis(500));
    assert_eq!(d.path(cn, "mn.zone-a.example"), Some(PathKind::Direct));
    assert!(d.ping4(mn, cn, 1) && d.ping4(cn, mn, 2));
}

#[test]
fn relayed_tunnel_when_both_are_behind_symmetric_nats_stays_on_the_relay() {
    let mut d = Deployment::new(12, Options::default());
    let mn = behind_nat(&mut d, "mn.zone-a.example", NatConfig::symmetric(), NodeOpts::default());
    let cn = behind_nat(&mut d, "cn.zone-b.example", NatConfig::symmetric(), NodeOpts::default());
    assert!(d.bring_up(mn) && d.bring_up(cn));
    assert!(d.resolve(mn, "cn.zone-b.example").is_ok());
    assert_eq!(d.path(mn, "cn.zone-b.example"), Some(PathKind::Relay));
    assert!(d.ping4(mn, cn, 1) && d.ping4(cn, mn, 2));
    // Route optimization cannot work through two symmetric NATs: still relayed later.
    d.run_for(Duration::from_secs(10));
    assert_eq!(d.path(mn, "cn.zone-b.example"), Some(PathKind::Relay));
    assert_eq!(d.path(cn, "mn.zone-a.example"), Some(PathKind::Relay));
    assert!(d.ping4(mn, cn, 3) && d.ping4(cn, mn, 4));
    assert_eq!(d.sim.engine::<Rs>(d.relays[0]).sessions().len(), 1);
}

#[test]
fn route_optimization_moves_a_relayed_tunnel_to_the_direct_path() {
    let mut d = Deployment::new(13, Options::default());
    let mn = behind_nat(&mut d, "mn.zone-a.example", NatConfig::port_restricted_cone(), NodeOpts::default());
    let cn = behind_nat(&mut d, "cn.zone-b.example", NatConfig::restricted_cone(), NodeOpts::default());
    assert!(d.bring_up(mn) && d.bring_up(cn));
    assert!(d.resolve(mn, "cn.zone-b.example").is_ok());
    let up = d.events(mn);
    assert!(up.iter().any(|e| matches!(e, NodeEvent::TunnelUp { path: PathKind::Relay, .. })), "{up:?}");
    d.run_for(Duration::from_secs(5));
    assert_eq!(d.path(mn, "cn.zone-b.example"), Some(PathKind::Direct));
    assert_eq!(d.path(cn, "mn.zone-a.example"), Some(PathKind::Direct));
    assert!(d.events(mn).iter().any(|e| matches!(e, NodeEvent::PathChanged { path: PathKind::Direct, .. })));
    assert!(d.sim.engine::<Rs>(d.relays[0]).sessions().is_empty(), "the relay session was released");
    assert!(d.ping4(mn, cn, 1) && d.ping4(cn, mn, 2));
}

#[test]
fn ipv4_only_to_ipv6_only_goes_through_the_relay() {
    let mut d = Deployment::new(14, Options::default());
    let mn = behind_nat(&mut d, "mn.zone-a.example", NatConfig::port_restricted_cone(), NodeOpts::default());
    let v6 = d.sim.add_realm("v6only", RealmId::INTERNET, RealmConfig::v6_only());
    let cn = d.add_node("cn.zone-b.example", v6, &[ip("2001:db8:200::5")], NodeOpts::default());
    assert!(d.bring_up(mn) && d.bring_up(cn));
    assert!(d.resolve(mn, "cn.zone-b.example").is_ok());
    assert_eq!(d.path(mn, "cn.zone-b.example"), Some(PathKind::Relay));
    // Both virtual address families work over the relay whatever the real families are.
    assert!(d.ping4(mn, cn, 1) && d.ping6(cn, mn, 2));
    d.run_for(Duration::from_secs(5));
    assert_eq!(d.path(mn, "cn.zone-b.example"), Some(PathKind::Relay), "no direct path between families");
}

#[test]
fn handover_keeps_the_virtual_addresses_and_the_flow() {
    let mut d = Deployment::new(15, Options::default());
    let mn = behind_nat(&mut d, "mn.zone-a.example", NatConfig::port_restricted_cone(), NodeOpts::default());
    let cn = global(&mut d, "cn.zone-b.example", 11, NodeOpts::default());
    assert!(d.bring_up(mn) && d.bring_up(cn));
    assert!(d.resolve(mn, "cn.zone-b.example").is_ok());
    let before = d.node(mn).virtual_addrs().unwrap();
    assert!(d.ping4(mn, cn, 1));
    let seen_before = d
        .events(mn)
        .iter()
        .rev()
        .find_map(|e| if let NodeEvent::Registered { observed, .. } = e { Some(*observed) } else { None })
        .expect("the first registration was reported");

    // MN moves to another access network (LTE, behind a symmetric CGN).
    let lte = d.home(|o| RealmConfig::v4_only(o).with_nat(NatConfig::symmetric()));
    d.sim.move_host(mn, lte, &[ip("10.20.0.7")]);
    let t0 = d.now();
    d.node(mn).handle_network_change(t0, vec![std::net::SocketAddr::new(ip("10.20.0.7"), NODE_PORT)]);
    // Data keeps flowing on the same virtual addresses.
    let mut tag = 100;
    // The MN registers again from the new network: the DC now sees the LTE NAT's address.
    let mut seen_after = None;
    let registered = d.sim.run_until_cond(t0 + Duration::from_secs(10), |s| {
        for e in s.node_events(mn) {
            if let NodeEvent::Registered { observed, .. } = e {
                seen_after = Some(observed);
            }
        }
        seen_after.is_some()
    });
    assert!(registered, "the MN registered again after the move");
    assert_ne!(seen_after, Some(seen_before), "the DC saw the new address");
    let mut first_ok = None;
    for _ in 0..50 {
        tag += 1;
        if d.ping4(cn, mn, tag) {
            first_ok = Some(d.now().saturating_duration_since(t0));
            break;
        }
    }
    let handover = first_ok.expect("CN reaches MN after the move");
    assert!(handover < Duration::from_secs(3), "handover took {handover:?}");
    assert_eq!(d.node(mn).virtual_addrs().unwrap(), before);
    assert!(d.ping4(mn, cn, 999));
}

#[test]
fn packets_sent_to_a_moving_peer_before_it_is_heard_from_again_are_sent_again() {
    let mut d = Deployment::new(23, Options::default());
    let mn = global(&mut d, "mn.zone-a.example", 10, NodeOpts::default());
    let cn = global(&mut d, "cn.zone-b.example", 11, NodeOpts::default());
    assert!(d.bring_up(mn) && d.bring_up(cn));
    assert!(d.resolve(mn, "cn.zone-b.example").is_ok());
    assert_eq!(d.path(mn, "cn.zone-b.example"), Some(PathKind::Direct));
    let (from, to) = (d.node(cn).virtual_addrs().unwrap().v4, d.node(mn).virtual_addrs().unwrap().v4);
    let _ = d.sim.take_ip(mn);

    // The CN sends a packet every 10 ms. The MN moves to new addresses after 25 ms and
    // notices only 40 ms later, so the CN keeps sending to the old address meanwhile.
    let new = [ip("198.51.100.77"), ip("2001:db8:100::77")];
    let mut sent = Vec::new();
    for k in 0u32..30 {
        if k == 3 {
            d.sim.move_host(mn, RealmId::INTERNET, &new);
        }
        if k == 7 {
            let now = d.now();
            d.node(mn)
                .handle_network_change(now, new.iter().map(|a| std::net::SocketAddr::new(*a, NODE_PORT)).collect());
        }
        let pkt = ipv4_packet(from, to, &k.to_be_bytes());
        let now = d.now();
        d.node(cn).send_ip(now, &pkt).unwrap();
        sent.push(pkt);
        d.run_for(Duration::from_millis(10));
    }
    d.run_for(Duration::from_millis(500));

    // Every packet arrives, once, although some went to the old address.
    let got = d.sim.take_ip(mn);
    for (k, p) in sent.iter().enumerate() {
        assert_eq!(got.iter().filter(|g| *g == p).count(), 1, "packet {k} of {}: got {got:?}", sent.len());
    }
    assert!(d.node(cn).resent_packets() >= 3, "resent {}", d.node(cn).resent_packets());
    // The copies that had arrived after all are refused by the replay window as stale.
    let stale = d.sim.drops(mn).get(ntm_proto::engine::DropReason::Stale);
    assert!(stale <= d.node(cn).resent_packets(), "stale {stale}");
}

#[test]
fn dc_state_is_per_node_and_stray_datagrams_are_counted_not_fatal() {
    let mut d = Deployment::new(16, Options::default());
    let mn = global(&mut d, "mn.zone-a.example", 10, NodeOpts::default());
    assert!(d.bring_up(mn));
    let dc = d.sim.addr_v4(d.dc_a).unwrap();
    for junk in [vec![], vec![1u8; 3], vec![1, 0x10, 1, 1, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3], vec![9; 64]] {
        d.sim.inject(RealmId::INTERNET, "198.51.100.99:1".parse().unwrap(), dc, junk);
    }
    d.run_for(Duration::from_secs(1));
    assert!(d.sim.engine::<Dc>(d.dc_a).drops().total() >= 4);
    assert!(d.node(mn).is_registered());
}

// ---- recovery and lifetimes ------------------------------------------------------

#[test]
fn a_dc_that_lost_its_state_makes_its_nodes_log_in_again() {
    let mut d = Deployment::new(17, Options::default());
    let mn = global(&mut d, "mn.zone-a.example", 10, NodeOpts::default());
    assert!(d.bring_up(mn));
    let before = d.node(mn).virtual_addrs();
    let _ = d.events(mn);
    // The DC restarts with empty memory (no database yet).
    let now = d.now();
    let cfg = d.sim.engine::<Dc>(d.dc_a).config().clone();
    let fresh = Dc::new(cfg, d.sim.rng_for("dc-a-2"), now).unwrap();
    d.sim.replace_engine(d.dc_a, fresh);
    // The next keepalive meets an unknown key; the DC's plain refusal names it; the
    // node logs in again, and the AS gives the new DC its key.
    d.run_for(Duration::from_secs(60));
    let ev = d.events(mn);
    assert!(ev.iter().any(|e| matches!(e, NodeEvent::LoggedIn { .. })), "{ev:?}");
    assert!(ev.iter().any(|e| matches!(e, NodeEvent::Registered { .. })));
    assert_eq!(d.sim.engine::<Dc>(d.dc_a).node_count(), 1);
    assert_eq!(d.node(mn).virtual_addrs(), before, "assigned in the same order, so the same");
}

#[test]
fn a_dc_restarted_from_its_saved_state_serves_nodes_without_a_new_login() {
    let mut d = Deployment::new(23, Options::default());
    let mn = global(&mut d, "mn.zone-a.example", 10, NodeOpts::default());
    let cn = global(&mut d, "cn.zone-b.example", 11, NodeOpts::default());
    d.sim.enable_capture(d.dc_a);
    assert!(d.bring_up(mn) && d.bring_up(cn));
    d.run_for(Duration::from_secs(30)); // a keepalive or two
    let mn_addr = d.sim.addr_v4(mn).unwrap();
    let old = d
        .sim
        .capture(d.dc_a)
        .iter()
        .rev()
        .find(|c| c.src == mn_addr && c.carrier == ntm_sim::Carrier::Udp)
        .unwrap()
        .clone();
    let before = d.node(mn).virtual_addrs();
    let _ = d.events(mn);
    // What the daemon writes to its database, then a restart that reads it back (with the
    // counter reserved ahead, as the database does).
    let dc_a = d.dc_a;
    let saved: Vec<_> = {
        let dc = d.sim.engine::<Dc>(dc_a);
        dc.node_names().iter().filter_map(|f| dc.export_node(f)).collect()
    };
    assert_eq!(saved.len(), 1);
    assert!(format!("{saved:?}").contains("K_ntmdc(redacted)"), "keys stay redacted in debug output");
    let now = d.now();
    let cfg = d.sim.engine::<Dc>(dc_a).config().clone();
    let mut fresh = Dc::new(cfg, d.sim.rng_for("dc-a-restored"), now).unwrap();
    for s in saved {
        let floor = s.next_counter + (1 << 20);
        fresh.restore_node(now, s, floor).unwrap();
    }
    d.sim.replace_engine(dc_a, fresh);
    // A message the node sent before the restart is still a replay after it.
    d.sim.inject(RealmId::INTERNET, old.src, old.dst, old.bytes.clone());
    d.run_for(Duration::from_millis(100));
    assert_eq!(
        d.sim.engine::<Dc>(dc_a).drops().get(ntm_proto::engine::DropReason::Stale),
        1,
        "replay refused as stale"
    );
    d.run_for(Duration::from_secs(60));
    let ev = d.events(mn);
    assert!(!ev.iter().any(|e| matches!(e, NodeEvent::LoggedIn { .. })), "no re-login: {ev:?}");
    assert_eq!(d.node(mn).virtual_addrs(), before);
    // The restored DC still directs tunnels for its node.
    assert!(d.resolve(mn, "cn.zone-b.example").is_ok());
    assert!(d.ping4(mn, cn, 1));
}

#[test]
fn a_plain_refusal_naming_another_key_is_ignored() {
    let mut d = Deployment::new(18, Options::default());
    let mn = global(&mut d, "mn.zone-a.example", 10, NodeOpts::default());
    assert!(d.bring_up(mn));
    let _ = d.events(mn);
    // An off-path attacker forges "unknown key" refusals from the DC's address.
    let refusal = ntm_proto::wire::Message::Refusal(ntm_proto::wire::refusal::Refusal::new(
        ntm_proto::wire::MsgType::Keepalive,
        ntm_proto::wire::RequestId(0),
        Reason::UnknownKey,
        "",
    ));
    let mut forged = ntm_proto::crypto::plain(ntm_proto::wire::Sender::Dc, &refusal);
    forged[4..8].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    let dc = d.sim.addr_v4(d.dc_a).unwrap();
    let node = d.sim.addr_v4(mn).unwrap();
    d.sim.inject(RealmId::INTERNET, dc, node, forged);
    d.run_for(Duration::from_secs(2));
    assert!(!d.events(mn).iter().any(|e| matches!(e, NodeEvent::LoggedIn { .. })), "no re-login");
    assert!(d.sim.drops(mn).get(ntm_proto::engine::DropReason::Unauthorized) >= 1);
}

#[test]
fn tunnels_are_renegotiated_before_k_mncn_expires() {
    let mut d = Deployment::new(19, Options::default());
    let short = NodeOpts { tunnel_key_lifetime: Some(Duration::from_secs(60)), ..NodeOpts::default() };
    let mn = global(&mut d, "mn.zone-a.example", 10, short.clone());
    let cn = global(&mut d, "cn.zone-b.example", 11, short);
    assert!(d.bring_up(mn) && d.bring_up(cn));
    assert!(d.resolve(mn, "cn.zone-b.example").is_ok());
    let first: Vec<u64> = d.node(mn).held_keys().into_iter().filter(|(k, _)| *k == "K_mncn").map(|(_, f)| f).collect();
    // Keep traffic going through several key lifetimes.
    for i in 0..30 {
        d.run_for(Duration::from_secs(5));
        assert!((0..3).any(|j| d.ping4(mn, cn, i * 10 + j)), "round {i}");
    }
    let now: Vec<u64> = d.node(mn).held_keys().into_iter().filter(|(k, _)| *k == "K_mncn").map(|(_, f)| f).collect();
    assert!(now.iter().all(|k| !first.contains(k)), "K_mncn was replaced");
}

/// While a renegotiated session and the one it superseded are both up (the grace
/// period), packets go with the new session's key, in both directions, and the old one
/// still opens what was sealed under it.
#[test]
fn during_the_grace_period_packets_go_through_the_new_session() {
    let mut d = Deployment::new(23, Options::default());
    let short = NodeOpts { tunnel_key_lifetime: Some(Duration::from_secs(60)), ..NodeOpts::default() };
    let mn = global(&mut d, "mn.zone-a.example", 10, short.clone());
    let cn = global(&mut d, "cn.zone-b.example", 11, short);
    assert!(d.bring_up(mn) && d.bring_up(cn));
    assert!(d.resolve(mn, "cn.zone-b.example").is_ok());
    let sessions = |d: &mut Deployment, h| {
        let t = d.node(h).tunnels();
        let live = t.iter().filter(|t| t.established && !t.superseded).map(|t| t.session).collect::<Vec<_>>();
        let old = t.iter().filter(|t| t.established && t.superseded).map(|t| t.session).collect::<Vec<_>>();
        (live, old)
    };
    // Sealed by `from` for `to`'s IPv4 virtual address: the session it went with.
    let seal = |d: &mut Deployment, from, to| {
        let (src, dst) = (d.node(from).virtual_addrs().unwrap().v4, d.node(to).virtual_addrs().unwrap().v4);
        let inner = ipv4_packet(src, dst, b"grace");
        let mut buf = vec![0u8; ntm_proto::wire::HEADER_LEN + inner.len() + ntm_proto::crypto::TAG_LEN];
        buf[ntm_proto::wire::HEADER_LEN..ntm_proto::wire::HEADER_LEN + inner.len()].copy_from_slice(&inner);
        let now = d.now();
        d.node(from).seal_ip(now, &mut buf).unwrap();
        (ntm_proto::wire::SessionId(ntm_proto::wire::Envelope::new_checked(&buf[..]).unwrap().key_id().0), buf)
    };
    let (first, _) = sessions(&mut d, mn);
    assert_eq!(first.len(), 1);
    let (s0, early) = seal(&mut d, mn, cn);
    assert_eq!(s0, first[0]);
    // MN renegotiates at 90 % of the 60 s key lifetime; step until both ends hold the new
    // session with the first one superseded.
    let mut both = false;
    for _ in 0..600 {
        d.run_for(Duration::from_millis(100));
        let (a, b) = (sessions(&mut d, mn), sessions(&mut d, cn));
        if a.1 == first && b.1 == first && a.0.len() == 1 && b.0 == a.0 {
            both = true;
            break;
        }
    }
    assert!(both, "a renegotiated session superseded the first on both ends");
    let (live, _) = sessions(&mut d, mn);
    let (s1, to_cn) = seal(&mut d, mn, cn);
    let (s2, to_mn) = seal(&mut d, cn, mn);
    assert_eq!((s1, s2), (live[0], live[0]), "both ends send with the new session, not {first:?}");
    let now = d.now();
    let from_mn = d.sim.addrs(mn)[0];
    let from_cn = d.sim.addrs(cn)[0];
    let mut b = to_cn;
    assert!(matches!(
        d.node(cn).handle_datagram(now, std::net::SocketAddr::new(from_mn, NODE_PORT), &mut b),
        Received::Ip(_)
    ));
    let mut b = to_mn;
    assert!(matches!(
        d.node(mn).handle_datagram(now, std::net::SocketAddr::new(from_cn, NODE_PORT), &mut b),
        Received::Ip(_)
    ));
    // Sealed under the first session before the renegotiation, arriving late: opened.
    let mut b = early;
    assert!(matches!(
        d.node(cn).handle_datagram(now, std::net::SocketAddr::new(from_mn, NODE_PORT), &mut b),
        Received::Ip(_)
    ));
}

/// A superseded tunnel sends no keepalive, so its keepalive time is no deadline: the node
/// must not ask to be woken at a time already past, over and over, until the tunnel ends
/// (the agent would spin for the rest of the grace period).
#[test]
fn a_superseded_tunnel_does_not_keep_its_node_awake() {
    let mut d = Deployment::new(24, Options::default());
    let short = NodeOpts { tunnel_key_lifetime: Some(Duration::from_secs(60)), ..NodeOpts::default() };
    let mn = global(&mut d, "mn.zone-a.example", 10, short.clone());
    let cn = global(&mut d, "cn.zone-b.example", 11, short);
    assert!(d.bring_up(mn) && d.bring_up(cn));
    assert!(d.resolve(mn, "cn.zone-b.example").is_ok());
    // The last packet on the first session 14 s before MN renegotiates (at 90 % of the key
    // lifetime): its keepalive would fall due after the new session is up.
    d.run_for(Duration::from_secs(40));
    assert!(d.ping4(mn, cn, 1));
    let mut superseded = false;
    for _ in 0..300 {
        d.run_for(Duration::from_millis(100));
        let now = d.now();
        for h in [mn, cn] {
            let next = d.node(h).poll_timeout();
            assert!(next.is_none_or(|t| t > now), "woken for {next:?} at {now:?}");
        }
        superseded |= d.node(mn).tunnels().iter().any(|t| t.superseded);
    }
    assert!(superseded, "the first session was superseded meanwhile");
}

#[test]
fn the_end_with_the_shorter_key_lifetime_renegotiates() {
    let mut d = Deployment::new(22, Options::default());
    let mn = global(&mut d, "mn.zone-a.example", 10, NodeOpts::default());
    let short = NodeOpts { tunnel_key_lifetime: Some(Duration::from_secs(60)), ..NodeOpts::default() };
    let cn = global(&mut d, "cn.zone-b.example", 11, short);
    assert!(d.bring_up(mn) && d.bring_up(cn));
    assert!(d.resolve(mn, "cn.zone-b.example").is_ok());
    for i in 0..40 {
        d.run_for(Duration::from_secs(5));
        assert!((0..3).any(|j| d.ping4(mn, cn, i * 10 + j) && d.ping4(cn, mn, i * 10 + j)), "round {i}");
    }
}

#[test]
fn a_failed_dns_lookup_is_not_taken_for_an_ordinary_name() {
    let mut d = Deployment::new(20, Options::default());
    let mn = global(&mut d, "mn.zone-a.example", 10, NodeOpts::default());
    assert!(d.bring_up(mn));
    // No zone, no ordinary entry: the lookup fails (SERVFAIL, timeout).
    assert_eq!(d.resolve(mn, "cn.unknown.example"), Err(ResolveError::Refused(Reason::PeerUnreachable)));
    assert_eq!(d.resolve(mn, "www.example.org"), Err(ResolveError::NotNtm));
}

#[test]
fn a_push_node_is_woken_through_the_push_interface() {
    let mut d = Deployment::new(21, Options::default());
    let token = ntm_proto::wire::Bytes::new(b"fcm-token-123".to_vec()).unwrap();
    let phone = behind_nat(
        &mut d,
        "phone.zone-b.example",
        NatConfig::symmetric(),
        NodeOpts { keepalive: KeepaliveMethod::Push(token), ..NodeOpts::default() },
    );
    let mn = global(&mut d, "mn.zone-a.example", 10, NodeOpts::default());
    assert!(d.bring_up(phone) && d.bring_up(mn));
    // The phone's NAT forgets its mapping while it sleeps (no keepalives with push).
    d.run_for(Duration::from_secs(300));
    let now = d.now();
    let id = d.node(mn).resolve(now, name("phone.zone-b.example"));
    d.run_for(Duration::from_secs(1));
    let dc_b = d.dc_b;
    let pushes: Vec<_> = dc_events(&mut d, dc_b)
        .into_iter()
        .filter(|e| matches!(e, DcEvent::PushNeeded { token, .. } if token == b"fcm-token-123"))
        .collect();
    assert_eq!(pushes.len(), 1, "one push request, however often the DC retransmits");
    // The push service delivers; the phone's driver tells the engine, which registers
    // again from a fresh mapping; the DC's retransmission then reaches it.
    let now = d.now();
    d.node(phone).handle_push(now);
    let deadline = d.now() + Duration::from_secs(20);
    let mut up = false;
    let resolved = d.sim.run_until_cond(deadline, |s| {
        for e in s.node_events(mn) {
            up |= matches!(e, NodeEvent::Resolved { id: i, .. } if i == id);
        }
        up
    });
    assert!(resolved, "the tunnel to the pushed phone came up");
    assert!(d.ping4(mn, phone, 1) && d.ping4(phone, mn, 2));
}

/// A second device logs in with the same credential (a cloned certificate, here the same
/// password): the DC tells the node whose registration it took over, sealed with that
/// node's key, and the displaced node says so and stops counting itself registered. A node
/// that logs in again itself (a key renewal, a restart) is not displaced.
#[test]
fn a_second_login_with_the_same_credential_tells_the_displaced_node() {
    let mut d = Deployment::new(31, Options::default());
    let a = global(&mut d, "mn.zone-a.example", 10, NodeOpts::default());
    assert!(d.bring_up(a));

    // The same device logs in again (as at a key renewal): nothing is reported.
    let now = d.now();
    d.node(a).start(now);
    d.run_for(Duration::from_secs(5));
    assert!(d.node(a).is_registered() && !d.node(a).is_displaced(), "its own new login displaces no one");

    let clone = global(&mut d, "mn.zone-a.example", 12, NodeOpts::default());
    assert!(d.bring_up(clone));
    let told = d.sim.run_until_cond(d.now() + Duration::from_secs(5), |s| s.engine::<Node>(a).is_displaced());
    assert!(told, "the DC told the first device");
    assert!(!d.node(a).is_registered(), "the displaced device no longer says it is registered");
    assert!(d.node(clone).is_registered() && !d.node(clone).is_displaced());

    // After its hold-off the first device logs in and registers again; now the other one
    // is told. Each says so in turn instead of fighting at every message.
    let back = d.sim.run_until_cond(d.now() + Duration::from_secs(400), |s| s.engine::<Node>(a).is_registered());
    assert!(back, "the first device registers again after its hold-off");
    assert!(!d.node(a).is_displaced());
    let told = d.sim.run_until_cond(d.now() + Duration::from_secs(5), |s| s.engine::<Node>(clone).is_displaced());
    assert!(told, "the second device is told in turn");
}
