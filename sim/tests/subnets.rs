//! Subnet routes (issue 17, part 2): a box announces its LAN prefix at registration, its
//! DC refuses a prefix that overlaps another node's or its virtual prefixes, and the DC
//! passes the prefix to peers, whose node engine routes it into the tunnel. Run by the real
//! engines over the simulated network; read each test as a script over virtual time.

use ntm_proto::engine::dc::Dc;
use ntm_proto::engine::node::{NodeEvent, SendError};
use ntm_proto::engine::DropReason;
use ntm_proto::time::Duration;
use ntm_proto::wire::refusal::Reason;
use ntm_proto::wire::Prefix;
use ntm_sim::deploy::*;
use ntm_sim::RealmId;
use std::net::Ipv4Addr;

fn prefix(s: &str) -> Prefix {
    let (a, l) = s.split_once('/').unwrap();
    Prefix::new(a.parse().unwrap(), l.parse().unwrap()).unwrap()
}

fn node(d: &mut Deployment, fqdn: &str, n: u8, announced: &[&str]) -> ntm_sim::HostId {
    let v4 = ip(&format!("198.51.100.{n}"));
    let opts = NodeOpts { announced: announced.iter().map(|p| prefix(p)).collect(), ..NodeOpts::default() };
    d.add_node(fqdn, RealmId::INTERNET, &[v4], opts)
}

/// The refusals of registration a node reported: (reason, detail).
fn refusals(d: &mut Deployment, h: ntm_sim::HostId) -> Vec<(Reason, String)> {
    d.events(h)
        .into_iter()
        .filter_map(|e| match e {
            NodeEvent::RegistrationRefused { reason, detail } => Some((reason, detail)),
            _ => None,
        })
        .collect()
}

#[test]
fn an_overlapping_announcement_is_refused_naming_the_prefix_and_the_other_node() {
    let mut d = Deployment::new(31, Options::default());
    let first = node(&mut d, "one.zone-a.example", 10, &["192.168.50.0/24"]);
    assert!(d.bring_up(first), "the first announcement of a prefix is taken");
    let second = node(&mut d, "two.zone-a.example", 11, &["10.1.0.0/16", "192.168.50.128/25"]);
    d.start(second);
    d.run_for(Duration::from_secs(20));
    assert!(!d.node(second).is_registered(), "a box whose prefix another box routes is not registered");
    let r = refusals(&mut d, second);
    let want = "announced prefix 192.168.50.128/25 overlaps 192.168.50.0/24 of one.zone-a.example";
    assert!(r.iter().any(|(reason, detail)| *reason == Reason::Conflict && detail == want), "{r:?}");
    let dc_a = d.dc_a;
    let nodes = d.sim.engine::<Dc>(dc_a).nodes();
    let one = nodes.iter().find(|n| n.fqdn.as_str() == "one.zone-a.example").unwrap();
    assert_eq!(one.announced, vec![prefix("192.168.50.0/24")], "the DC keeps what the first box announced");

    // A DC restarted on its database still knows whose prefix it is.
    d.restart_dc_from_saved_state(dc_a, "dc-a-2").unwrap();
    let _ = refusals(&mut d, second);
    d.run_for(Duration::from_secs(30));
    assert!(!d.node(second).is_registered(), "still refused after the DC's restart");
    let r = refusals(&mut d, second);
    assert!(r.iter().any(|(_, detail)| detail == want), "{r:?}");

    // The DC's own virtual prefix is no LAN prefix either.
    let third = node(&mut d, "three.zone-a.example", 12, &["198.18.0.0/16"]);
    d.start(third);
    d.run_for(Duration::from_secs(20));
    assert!(!d.node(third).is_registered());
    let r = refusals(&mut d, third);
    assert!(r.iter().any(|(_, detail)| detail.contains("overlaps the virtual prefix 198.18.1.0/24")), "{r:?}");
}

/// IPv4 packet from `src` to `dst` carrying `tag`.
fn packet(src: Ipv4Addr, dst: &str, tag: u32) -> Vec<u8> {
    ipv4_packet(src, dst.parse().unwrap(), &tag.to_be_bytes())
}

#[test]
fn a_peer_prefix_is_routed_into_its_tunnel_and_nothing_else_crosses() {
    let mut d = Deployment::new(32, Options::default());
    let mn = node(&mut d, "mn.zone-a.example", 20, &[]);
    let cn = node(&mut d, "cn.zone-b.example", 21, &["192.168.60.0/24"]);
    assert!(d.bring_up(mn) && d.bring_up(cn));
    let vcn = d.resolve(mn, "cn.zone-b.example").expect("the tunnel comes up");
    let vmn = d.node(mn).virtual_addrs().unwrap();
    let t = d.node(mn).tunnels().into_iter().find(|t| t.established).expect("a tunnel");
    assert_eq!(t.peer_prefixes, vec![prefix("192.168.60.0/24")], "the Route Direction carried cn's prefix");
    assert!(d.node(cn).tunnels().iter().all(|t| t.peer_prefixes.is_empty()), "mn announced nothing");

    // To a device on cn's LAN, from mn's virtual address (a masqueraded LAN device of mn).
    let _ = d.sim.take_ip(cn);
    let to_lan = packet(vmn.v4, "192.168.60.7", 1);
    let now = d.now();
    d.node(mn).send_ip(now, &to_lan).expect("routed into cn's tunnel");
    d.run_for(Duration::from_secs(1));
    assert!(d.sim.take_ip(cn).contains(&to_lan), "cn received the packet for its LAN");
    // Its answer, from the device's own address (inside the announced prefix).
    let _ = d.sim.take_ip(mn);
    let back = ipv4_packet("192.168.60.7".parse().unwrap(), vmn.v4, &2u32.to_be_bytes());
    let now = d.now();
    d.node(cn).send_ip(now, &back).expect("to mn's virtual address");
    d.run_for(Duration::from_secs(1));
    assert!(d.sim.take_ip(mn).contains(&back), "mn accepts a source inside cn's announced prefix");

    // Outside the announced prefix: mn has no tunnel for it.
    let now = d.now();
    let outside = packet(vmn.v4, "192.168.61.7", 3);
    assert!(matches!(d.node(mn).send_ip(now, &outside), Err(SendError::NoTunnel(_))));
    // cn sending from a LAN address it did not announce: mn drops and counts it.
    let before = d.sim.drops(mn).get(DropReason::Unauthorized);
    let spoofed = ipv4_packet("192.168.61.7".parse().unwrap(), vmn.v4, &4u32.to_be_bytes());
    let now = d.now();
    d.node(cn).send_ip(now, &spoofed).expect("cn routes by destination");
    d.run_for(Duration::from_secs(1));
    assert!(!d.sim.take_ip(mn).contains(&spoofed), "a source outside cn's prefixes does not cross");
    assert_eq!(d.sim.drops(mn).get(DropReason::Unauthorized), before + 1);
    // And cn's own virtual address still reaches mn as before.
    assert_eq!(vcn.v4, d.node(cn).virtual_addrs().unwrap().v4);
    assert!(d.ping4(cn, mn, 5));
}
