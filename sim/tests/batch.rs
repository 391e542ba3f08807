//! The node's batch functions against its one-at-a-time ones: two deployments built from
//! the same seed hold the same node `a`, with tunnels to `b` and `c`; one `a` gets random
//! batches through `Node::handle_datagrams_on` / `Node::seal_ip_batch_within`, the other
//! the same datagrams or frames one by one through `Node::handle_datagram_on` /
//! `Node::seal_ip_within`. Everything either shows must be the same: each result, the
//! bytes, the drop counters, what the node sends and reports, its tunnels, and (through
//! replays in later batches and a move of the peer) its replay windows and the copies it
//! keeps of sent packets.

use ntm_proto::crypto::TAG_LEN;
use ntm_proto::engine::node::{Dest, Node, SendError};
use ntm_proto::engine::{Engine, Local, Received, Transmit};
use ntm_proto::time::{Duration, Instant};
use ntm_proto::wire::HEADER_LEN;
use ntm_sim::deploy::*;
use ntm_sim::{Carrier, Direction, HostId, RealmId};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use std::net::SocketAddr;

struct World {
    d: Deployment,
    a: HostId,
    b: HostId,
    c: HostId,
}

fn global(d: &mut Deployment, fqdn: &str, n: u8) -> HostId {
    let v4 = ip(&format!("198.51.100.{n}"));
    let v6 = ip(&format!("2001:db8:100::{n}"));
    d.add_node(fqdn, RealmId::INTERNET, &[v4, v6], NodeOpts::default())
}

/// `a` with tunnels up to `b` and `c`, everything `a` received captured.
fn world(seed: u64) -> World {
    let mut d = Deployment::new(seed, Options::default());
    let a = global(&mut d, "a.zone-a.example", 10);
    let b = global(&mut d, "b.zone-b.example", 11);
    let c = global(&mut d, "c.zone-a.example", 12);
    d.sim.enable_capture(a);
    assert!(d.bring_up(a) && d.bring_up(b) && d.bring_up(c));
    assert!(d.resolve(a, "b.zone-b.example").is_ok());
    assert!(d.resolve(a, "c.zone-a.example").is_ok());
    assert!(d.ping4(a, b, 1) && d.ping6(b, a, 2) && d.ping4(c, a, 3) && d.ping4(a, c, 4));
    d.run_for(Duration::from_millis(500));
    World { d, a, b, c }
}

/// Everything `a` shows after a step, to compare.
#[derive(Debug, PartialEq)]
struct Seen {
    drops: ntm_proto::engine::DropCounters,
    transmits: Vec<Transmit>,
    events: Vec<ntm_proto::engine::node::NodeEvent>,
    tunnels: Vec<ntm_proto::engine::node::TunnelInfo>,
    resent: u64,
    timeout: Option<Instant>,
}

fn seen(n: &mut Node) -> Seen {
    Seen {
        drops: n.drops().clone(),
        transmits: std::iter::from_fn(|| n.poll_transmit()).collect(),
        events: std::iter::from_fn(|| n.poll_event()).collect(),
        tunnels: n.tunnels(),
        resent: n.resent_packets(),
        timeout: n.poll_timeout(),
    }
}

/// A data packet for `a`, sealed by `from` with inner source `src` (host) and destination
/// `a` (IPv4 or IPv6).
fn sealed_by(w: &mut World, from: HostId, src: HostId, v6: bool, payload: &[u8]) -> Vec<u8> {
    let s = w.d.node(src).virtual_addrs().unwrap();
    let dst = w.d.node(w.a).virtual_addrs().unwrap();
    let inner = if v6 { ipv6_packet(s.v6, dst.v6, payload) } else { ipv4_packet(s.v4, dst.v4, payload) };
    let mut buf = vec![0u8; HEADER_LEN + inner.len() + TAG_LEN];
    buf[HEADER_LEN..HEADER_LEN + inner.len()].copy_from_slice(&inner);
    let now = w.d.now();
    w.d.node(from).seal_ip(now, &mut buf).unwrap();
    buf
}

/// Where `a` sends to `peer`'s tunnel (where the peer is, as `a` sees it).
fn remote_of(w: &mut World, peer: HostId) -> SocketAddr {
    let name = w.d.node(peer).fqdn().unwrap().clone();
    w.d.node(w.a).tunnels().into_iter().find(|t| t.peer == name && t.established).and_then(|t| t.remote).unwrap()
}

/// A random batch of datagrams for `a`: data of both tunnels (from where the peer is, or
/// now and then from a new address: a move), inner sources the peer may not use, copies
/// of earlier datagrams (also in the same batch), bit flips, truncations, garbage, and
/// control messages `a` received before.
fn datagrams(
    w: &mut World,
    rng: &mut ChaCha8Rng,
    history: &mut Vec<(SocketAddr, Vec<u8>)>,
) -> Vec<(SocketAddr, Vec<u8>)> {
    let control: Vec<(SocketAddr, Vec<u8>)> =
        w.d.sim
            .capture(w.a)
            .iter()
            .filter(|c| c.dir == Direction::In && c.carrier == Carrier::Udp)
            .map(|c| (c.src, c.bytes.clone()))
            .collect();
    let (at_b, at_c) = (remote_of(w, w.b), remote_of(w, w.c));
    let moved: SocketAddr =
        if at_b.is_ipv4() { "198.51.100.99:4500" } else { "[2001:db8:100::99]:4500" }.parse().unwrap();
    let n = 1 + rng.next_u32() as usize % 40;
    let mut out: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    for k in 0..n {
        let pick = rng.next_u32() % 100;
        let len = 1 + rng.next_u32() as usize % 1400;
        let payload: Vec<u8> = (0..len).map(|i| (i + k) as u8).collect();
        let v6 = rng.next_u32() % 2 == 0;
        let d = match pick {
            0..=34 => (at_b, sealed_by(w, w.b, w.b, v6, &payload)),
            35..=54 => (at_c, sealed_by(w, w.c, w.c, v6, &payload)),
            55..=57 => (moved, sealed_by(w, w.b, w.b, v6, &payload)),
            58..=60 => (at_b, sealed_by(w, w.b, w.c, v6, &payload)),
            61..=72 if !out.is_empty() => out[rng.next_u32() as usize % out.len()].clone(),
            73..=80 if !history.is_empty() => history[rng.next_u32() as usize % history.len()].clone(),
            81..=85 if !out.is_empty() => {
                let (from, mut b) = out[rng.next_u32() as usize % out.len()].clone();
                let bit = rng.next_u32() as usize % (b.len() * 8);
                b[bit / 8] ^= 1 << (bit % 8);
                (from, b)
            }
            86..=88 if !out.is_empty() => {
                let (from, b) = out[rng.next_u32() as usize % out.len()].clone();
                let cut = rng.next_u32() as usize % b.len();
                (from, b[..cut].to_vec())
            }
            89..=90 => (at_c, payload),
            91..=99 if !control.is_empty() => control[rng.next_u32() as usize % control.len()].clone(),
            _ => (at_b, sealed_by(w, w.b, w.b, v6, &payload)),
        };
        out.push(d);
    }
    history.extend(out.iter().cloned());
    out
}

#[test]
fn a_batch_of_datagrams_is_handled_as_one_at_a_time() {
    let (mut w1, mut w2) = (world(71), world(71));
    let (a1, a2) = (w1.a, w2.a);
    assert_eq!(seen(w1.d.node(a1)), seen(w2.d.node(a2)), "the two worlds start alike");
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut history = Vec::new();
    let mut batched_runs = 0;
    for round in 0..60u64 {
        let batch = datagrams(&mut w1, &mut rng, &mut history);
        // Neither simulation runs from here on (the peers sealed in world 1 only): only
        // the two `a`s move, by the clock given to them.
        let now = w1.d.now() + Duration::from_millis(round * 7);
        let mut bufs1: Vec<(SocketAddr, Vec<u8>)> = batch.clone();
        let mut bufs2 = batch.clone();
        let mut views: Vec<(SocketAddr, &mut [u8])> = bufs1.iter_mut().map(|(f, b)| (*f, &mut b[..])).collect();
        let mut got = vec![Received::Handled; views.len()];
        w1.d.node(a1).handle_datagrams_on(now, Local::MAIN, &mut views, &mut got);
        let want: Vec<Received> =
            bufs2.iter_mut().map(|(from, b)| w2.d.node(a2).handle_datagram_on(now, Local::MAIN, *from, b)).collect();
        assert_eq!(got, want, "round {round}");
        for (i, r) in want.iter().enumerate() {
            if let Received::Ip(range) = r {
                assert_eq!(bufs1[i].1[range.clone()], bufs2[i].1[range.clone()], "round {round}, datagram {i}");
            }
        }
        batched_runs += want.windows(2).filter(|p| matches!(p, [Received::Ip(_), Received::Ip(_)])).count();
        assert_eq!(seen(w1.d.node(a1)), seen(w2.d.node(a2)), "round {round}");
    }
    assert!(batched_runs > 100, "the batches had runs of data to open together ({batched_runs})");
    let stale = w1.d.node(a1).drops().get(ntm_proto::engine::DropReason::Stale);
    assert!(stale > 20, "copies were refused ({stale})");
}

/// A random batch of frames from `a`'s TUN device: to `b` and `c` (IPv4 and IPv6),
/// interleaved, to addresses without a tunnel, not IP, and too big for the path.
fn frames(w: &mut World, rng: &mut ChaCha8Rng) -> Vec<Vec<u8>> {
    let me = w.d.node(w.a).virtual_addrs().unwrap();
    let (b, c) = (w.d.node(w.b).virtual_addrs().unwrap(), w.d.node(w.c).virtual_addrs().unwrap());
    let n = 1 + rng.next_u32() as usize % 70;
    (0..n)
        .map(|k| {
            let len = 1 + rng.next_u32() as usize % 1500;
            let payload: Vec<u8> = (0..len).map(|i| (i * 3 + k) as u8).collect();
            let inner = match rng.next_u32() % 20 {
                0..=8 => ipv4_packet(me.v4, b.v4, &payload),
                9..=10 => ipv6_packet(me.v6, b.v6, &payload),
                11..=15 => ipv4_packet(me.v4, c.v4, &payload),
                16 => ipv4_packet(me.v4, "198.18.9.9".parse().unwrap(), &payload),
                17 => payload,
                18 => return vec![0u8; HEADER_LEN + TAG_LEN],
                _ => ipv6_packet(me.v6, c.v6, &payload),
            };
            let mut buf = vec![0u8; HEADER_LEN + inner.len() + TAG_LEN];
            buf[HEADER_LEN..HEADER_LEN + inner.len()].copy_from_slice(&inner);
            buf
        })
        .collect()
}

#[test]
fn a_batch_of_frames_is_sealed_as_one_at_a_time() {
    let (mut w1, mut w2) = (world(72), world(72));
    let (a1, a2) = (w1.a, w2.a);
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    // IPv6 paths carry less, so some packets are too big for one path and not the other.
    let mtu = |inner: &[u8], to: &SocketAddr| if to.is_ipv4() && inner.len() > 1200 { 1200 } else { 1400 };
    let mut ok = 0;
    for round in 0..40u64 {
        let batch = frames(&mut w1, &mut rng);
        let now = w1.d.now() + Duration::from_millis(round * 3);
        let mut f1 = batch.clone();
        let mut f2 = batch;
        let mut views: Vec<&mut [u8]> = f1.iter_mut().map(|b| &mut b[..]).collect();
        let mut got = vec![Err(SendError::NotIp); views.len()];
        w1.d.node(a1).seal_ip_batch_within(now, &mut views, mtu, &mut got);
        let want: Vec<Result<Dest, SendError>> = f2
            .iter_mut()
            .map(|b| {
                let inner_len = b.len() - HEADER_LEN - TAG_LEN;
                let probe = vec![0u8; inner_len];
                w2.d.node(a2).seal_ip_within(now, b, |to| mtu(&probe, to))
            })
            .collect();
        assert_eq!(got, want, "round {round}");
        assert_eq!(f1, f2, "round {round}: the same bytes (counters in the same order)");
        ok += want.iter().filter(|r| r.is_ok()).count();
        assert_eq!(seen(w1.d.node(a1)), seen(w2.d.node(a2)), "round {round}");
    }
    assert!(ok > 500, "most frames were sealed ({ok})");
    // The copies kept for a peer that moves: b turns up at a new address, and each `a`
    // sends it the recent packets again.
    let moved: SocketAddr = "198.51.100.98:4500".parse().unwrap();
    let b1 = w1.b;
    let from_b = sealed_by(&mut w1, b1, b1, false, b"moved");
    let now = w1.d.now() + Duration::from_millis(121);
    let (mut x1, mut x2) = (from_b.clone(), from_b);
    let r1 = w1.d.node(a1).handle_datagram_on(now, Local::MAIN, moved, &mut x1);
    let r2 = w2.d.node(a2).handle_datagram_on(now, Local::MAIN, moved, &mut x2);
    assert!(matches!(r1, Received::Ip(_)) && r1 == r2);
    let (s1, s2) = (seen(w1.d.node(a1)), seen(w2.d.node(a2)));
    assert!(s1.resent > 0, "b's move sent the recent packets again");
    assert_eq!(s1, s2);
}
