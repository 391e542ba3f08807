//! How fast the node engine moves data packets through its tunnels: a hub node with
//! tunnels to `--peers N` others seals 1400-byte IPv4 packets to each in turn
//! (`Node::seal_ip`) and opens theirs ([`ntm_proto::engine::Engine::handle_datagram`]).
//! Only the engine calls are timed (no simulated network): the crypto plus the tunnel
//! lookups, which is what grows with the number of tunnels.
//!
//! Run: `cargo run --release -p ntm-sim --example tunnel_speed -- --peers 48`.

// A measuring example: its output is the point, and a failed set-up may panic.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use ntm_proto::crypto::TAG_LEN;
use ntm_proto::engine::{Engine, Received};
use ntm_proto::wire::HEADER_LEN;
use ntm_sim::deploy::*;
use ntm_sim::{HostId, RealmId};
use std::net::SocketAddr;

fn arg(name: &str, default: usize) -> usize {
    std::env::args().skip_while(|a| a != name).nth(1).and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn main() {
    let peers = arg("--peers", 1);
    let rounds = arg("--packets", 200_000);
    let mut d = Deployment::new(7, Options::default());
    let hub = d.add_node("hub.zone-a.example", RealmId::INTERNET, &[ip("198.51.100.1")], NodeOpts::default());
    assert!(d.bring_up(hub));
    let mut others: Vec<(HostId, SocketAddr)> = Vec::new();
    for k in 0..peers {
        let n = u8::try_from(k + 10).unwrap();
        let fqdn = format!("p{k}.zone-b.example");
        let h = d.add_node(&fqdn, RealmId::INTERNET, &[ip(&format!("198.51.100.{n}"))], NodeOpts::default());
        assert!(d.bring_up(h));
        assert!(d.resolve(hub, &fqdn).is_ok(), "tunnel to {fqdn}");
        assert!(d.ping4(hub, h, 1) && d.ping4(h, hub, 2));
        others.push((h, SocketAddr::new(ip(&format!("198.51.100.{n}")), 4500)));
    }
    let hub_addr: SocketAddr = "198.51.100.1:4500".parse().unwrap();
    let hub_v4 = d.node(hub).virtual_addrs().unwrap().v4;
    let now = d.now();
    let packet = |src, dst| ipv4_packet(src, dst, &[0x5a; 1400 - 28]);
    let frames: Vec<Vec<u8>> = others
        .iter()
        .map(|&(h, _)| {
            let inner = packet(hub_v4, d.node(h).virtual_addrs().unwrap().v4);
            let mut buf = vec![0u8; HEADER_LEN + inner.len() + TAG_LEN];
            buf[HEADER_LEN..HEADER_LEN + inner.len()].copy_from_slice(&inner);
            buf
        })
        .collect();
    let back: Vec<Vec<u8>> = others
        .iter()
        .map(|&(h, _)| {
            let inner = packet(d.node(h).virtual_addrs().unwrap().v4, hub_v4);
            let mut buf = vec![0u8; HEADER_LEN + inner.len() + TAG_LEN];
            buf[HEADER_LEN..HEADER_LEN + inner.len()].copy_from_slice(&inner);
            buf
        })
        .collect();

    // Sealed at the hub, opened by each peer.
    let mut buf = Vec::new();
    let (mut seal, mut open) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
    for r in 0..rounds {
        let k = r % peers;
        buf.clear();
        buf.extend_from_slice(&frames[k]);
        let t = std::time::Instant::now();
        d.node(hub).seal_ip(now, &mut buf).unwrap();
        seal += t.elapsed();
        let t = std::time::Instant::now();
        let got = d.node(others[k].0).handle_datagram(now, hub_addr, &mut buf);
        open += t.elapsed();
        assert!(matches!(got, Received::Ip(_)), "{got:?}");
    }
    // Sealed by each peer, opened at the hub.
    let mut hub_open = std::time::Duration::ZERO;
    for r in 0..rounds {
        let k = r % peers;
        buf.clear();
        buf.extend_from_slice(&back[k]);
        d.node(others[k].0).seal_ip(now, &mut buf).unwrap();
        let t = std::time::Instant::now();
        let got = d.node(hub).handle_datagram(now, others[k].1, &mut buf);
        hub_open += t.elapsed();
        assert!(matches!(got, Received::Ip(_)), "{got:?}");
    }
    let per = |e: std::time::Duration| e.as_nanos() as f64 / rounds as f64;
    let mbit = |e: std::time::Duration| (rounds as f64 * 1400.0 * 8.0) / e.as_secs_f64() / 1e6;
    println!(
        "{peers} tunnels, {rounds} packets of 1400 B: hub seal_ip {:.0} ns ({:.0} Mbit/s), peer open {:.0} ns, \
         hub open {:.0} ns ({:.0} Mbit/s)",
        per(seal),
        mbit(seal),
        per(open),
        per(hub_open),
        mbit(hub_open)
    );
}
