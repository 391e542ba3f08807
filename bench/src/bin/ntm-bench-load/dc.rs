//! `dc` and `dc-engine`: node keys handed to the DC as the AS does, then registrations
//! as the nodes send them; against the real `ntm-dc`, or the library's DC engine in this
//! process.

use crate::common::{cpu_secs, due_again, err, far, key_bytes, proto_now, read_frames, tls_client, Res};
use ntm_proto::crypto::{parse_plain, plain, Channel};
use ntm_proto::engine::dc::{Dc, DcConfig};
use ntm_proto::engine::{Engine, PeerIdentity, Role, StreamKind};
use ntm_proto::keys::{KNtmDc, KeyGrant, NtmDc};
use ntm_proto::wire::frame::{encode_frame, FrameDecoder};
use ntm_proto::wire::login::KeyDistribution;
use ntm_proto::wire::registration::{KeepaliveMethod, RegistrationRequest};
use ntm_proto::wire::{Envelope, Fqdn, KeyId, Lifetime, List, Message, RequestId, Sender};
use serde_json::json;
use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// A node of the load: its name, key id and K_ntmdc channel.
struct LoadNode {
    pub fqdn: Fqdn,
    pub key_id: KeyId,
    pub channel: Channel<NtmDc>,
}

fn make_nodes(zone: &str, count: usize, run: u64) -> Res<Vec<LoadNode>> {
    (0..count)
        .map(|i| {
            let fqdn = Fqdn::new(&format!("n{i}.{zone}")).map_err(err("name"))?;
            let key_id = KeyId(0x4000_0000 + i as u32);
            let channel = Channel::new(KNtmDc::from_bytes(key_bytes(run, i as u64)), key_id, Sender::Node, far())
                .map_err(err("channel"))?;
            Ok(LoadNode { fqdn, key_id, channel })
        })
        .collect()
}

fn key_distribution(n: &LoadNode, run: u64, i: usize) -> Message {
    Message::KeyDistribution(KeyDistribution {
        request_id: RequestId(i as u32 + 1),
        fqdn: n.fqdn.clone(),
        key_id: n.key_id,
        k_ntmdc: KeyGrant { key: KNtmDc::from_bytes(key_bytes(run, i as u64)), lifetime: Lifetime(12 * 3600) },
        attestation: None,
    })
}

fn registration(n: &mut LoadNode, i: usize, local: SocketAddr) -> Res<Vec<u8>> {
    let msg = Message::RegistrationRequest(RegistrationRequest {
        request_id: RequestId(i as u32 + 1),
        local_addrs: List::from_vec(vec![local]).map_err(err("list"))?,
        keepalive: KeepaliveMethod::Udp,
        ns_key_lost: None,
        announced: Default::default(),
    });
    n.channel.seal(proto_now(), &msg).map_err(err("seal"))
}

/// Registers the nodes over UDP with at most `window` requests outstanding, resending what
/// is unanswered after 500 ms. No new node is started after `stop_at`; answers are awaited
/// until `give_up`. Returns (registered, refused, seconds from start to the last answer).
fn register_all(
    sock: &UdpSocket,
    nodes: &mut [LoadNode],
    window: usize,
    stop_at: Instant,
    give_up: Instant,
) -> Res<(usize, usize, f64)> {
    let local = sock.local_addr().map_err(err("local address"))?;
    let by_key: HashMap<KeyId, usize> = nodes.iter().enumerate().map(|(i, n)| (n.key_id, i)).collect();
    let mut answered = vec![false; nodes.len()];
    let mut pending: HashMap<usize, Instant> = HashMap::new();
    let (mut next, mut registered, mut refused) = (0usize, 0usize, 0usize);
    let mut buf = [0u8; 2048];
    sock.set_read_timeout(Some(Duration::from_millis(2))).map_err(err("timeout"))?;
    let start = Instant::now();
    let mut last = start;
    loop {
        let now = Instant::now();
        if now > give_up || (pending.is_empty() && (next == nodes.len() || now > stop_at)) {
            break;
        }
        while pending.len() < window && next < nodes.len() && now <= stop_at {
            let bytes = registration(&mut nodes[next], next, local)?;
            sock.send(&bytes).map_err(err("send"))?;
            pending.insert(next, Instant::now());
            next += 1;
        }
        for i in due_again(&mut pending, now) {
            let bytes = registration(&mut nodes[i], i, local)?;
            sock.send(&bytes).map_err(err("send"))?;
        }
        loop {
            let n = match sock.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break,
                Err(e) => return Err(format!("recv: {e}")),
            };
            let Ok(env) = Envelope::new_checked(&buf[..n]) else { continue };
            let Some(&i) = by_key.get(&env.key_id()) else { continue };
            if answered[i] {
                continue;
            }
            match nodes[i].channel.open(proto_now(), &buf[..n]) {
                Ok((_, Message::RegistrationResponse(_))) => registered += 1,
                Ok((_, Message::Refusal(_))) => refused += 1,
                _ => continue,
            }
            answered[i] = true;
            pending.remove(&i);
            last = Instant::now();
        }
    }
    Ok((registered, refused, last.duration_since(start).as_secs_f64()))
}

/// The real DC: keys over TLS (as the AS), then registrations over UDP (as nodes). Each
/// phase stops at COUNT nodes or after SECS/2 seconds, whichever comes first.
pub fn dc_daemon(args: &[String]) -> Res<serde_json::Value> {
    let [addr, name, zone, ca, cert, key, count, secs, pid] = args else {
        return Err("dc ADDR NAME ZONE CA CERT KEY COUNT SECS DC_PID".into());
    };
    let addr: SocketAddr = addr.parse().map_err(err("address"))?;
    let name = Fqdn::new(name).map_err(err("name"))?;
    let count: usize = count.parse().map_err(err("count"))?;
    let phase = Duration::from_secs_f64(secs.parse::<f64>().map_err(err("seconds"))? / 2.0);
    let pid: u32 = pid.parse().map_err(err("pid"))?;
    let run = u64::from(std::process::id());
    let mut nodes = make_nodes(zone, count, run)?;

    let mut tls = tls_client(addr, &name, ca, cert, key)?;
    let (cpu0, t0) = (cpu_secs(pid), Instant::now());
    let mut dec = FrameDecoder::new();
    let mut acks = Vec::new();
    // In batches, reading the acknowledgements between them: the DC closes a peer that
    // lets its answers pile up.
    let mut keyed = 0usize;
    while keyed < count && t0.elapsed() < phase {
        let batch = (count - keyed).min(200);
        let mut out = Vec::new();
        for (i, n) in nodes.iter().enumerate().skip(keyed).take(batch) {
            out.extend_from_slice(
                &encode_frame(&plain(Sender::As, &key_distribution(n, run, i))).map_err(err("frame"))?,
            );
        }
        tls.write_all(&out).map_err(err("write"))?;
        tls.flush().map_err(err("flush"))?;
        keyed += batch;
        read_frames(&mut tls, &mut dec, keyed, &mut acks)?;
    }
    let keys_ok = acks.iter().filter(|f| matches!(parse_plain(f), Ok((_, Message::NtmAck(_))))).count();
    let (keys_secs, keys_cpu) = (t0.elapsed().as_secs_f64(), cpu_secs(pid) - cpu0);
    drop(tls);
    nodes.truncate(keyed);

    let sock = UdpSocket::bind("127.0.0.1:0").map_err(err("bind"))?;
    sock.connect(addr).map_err(err("connect"))?;
    let (cpu1, t1) = (cpu_secs(pid), Instant::now());
    let (registered, refused, regs_secs) =
        register_all(&sock, &mut nodes, 64, t1 + phase, t1 + phase + Duration::from_secs(5))?;
    let regs_cpu = cpu_secs(pid) - cpu1;
    Ok(json!({
        "nodes": count, "keys_acked": keys_ok, "keys_secs": keys_secs, "keys_cpu": keys_cpu,
        "registered": registered, "refused": refused, "regs_secs": regs_secs, "regs_cpu": regs_cpu,
    }))
}

/// The DC engine in this process: the same messages, no sockets, no database.
pub fn dc_engine(args: &[String]) -> Res<serde_json::Value> {
    let [zone, count] = args else { return Err("dc-engine ZONE COUNT".into()) };
    let count: usize = count.parse().map_err(err("count"))?;
    let run = u64::from(std::process::id());
    let zone_name = Fqdn::new(zone).map_err(err("zone"))?;
    let dc_name = Fqdn::new(&format!("dc.{zone}")).map_err(err("name"))?;
    let cfg = DcConfig::new(
        dc_name,
        vec![zone_name],
        ("198.18.0.0".parse().map_err(err("v4"))?, 15),
        ("2001:db8:ff0::".parse().map_err(err("v6"))?, 96),
    );
    let mut dc = Dc::new(cfg, ntm_servers::daemon::os_rng(), proto_now()).map_err(err("engine"))?;
    let as_peer = PeerIdentity { name: Fqdn::new("as.test").map_err(err("name"))?, role: Role::As, public_key: None };
    let as_addr: SocketAddr = "192.0.2.10:4443".parse().map_err(err("addr"))?;
    let node_addr: SocketAddr = "198.51.100.2:4500".parse().map_err(err("addr"))?;
    let mut nodes = make_nodes(zone, count, run)?;
    let by_key: HashMap<KeyId, usize> = nodes.iter().enumerate().map(|(i, n)| (n.key_id, i)).collect();

    let t0 = Instant::now();
    let mut acks = 0usize;
    for (i, n) in nodes.iter().enumerate() {
        let frame = plain(Sender::As, &key_distribution(n, run, i));
        dc.handle_stream(proto_now(), StreamKind::Tls, as_addr, Some(&as_peer), &frame);
        while let Some(t) = dc.poll_transmit() {
            acks += usize::from(matches!(parse_plain(&t.payload), Ok((_, Message::NtmAck(_)))));
        }
    }
    let keys_secs = t0.elapsed().as_secs_f64();

    // Sealing the requests is the nodes' work: done before the clock starts.
    let mut requests = Vec::with_capacity(count);
    for (i, n) in nodes.iter_mut().enumerate() {
        requests.push(registration(n, i, node_addr)?);
    }
    let t1 = Instant::now();
    let mut answers = Vec::with_capacity(count);
    for mut r in requests {
        dc.handle_datagram(proto_now(), node_addr, &mut r);
        while let Some(t) = dc.poll_transmit() {
            answers.push(t.payload);
        }
    }
    let regs_secs = t1.elapsed().as_secs_f64();
    let mut registered = 0usize;
    for a in answers {
        let Ok(env) = Envelope::new_checked(&a[..]) else { continue };
        let Some(&i) = by_key.get(&env.key_id()) else { continue };
        if let Ok((_, Message::RegistrationResponse(_))) = nodes[i].channel.open(proto_now(), &a) {
            registered += 1;
        }
    }
    Ok(
        json!({"nodes": count, "keys_acked": acks, "keys_secs": keys_secs, "registered": registered, "regs_secs": regs_secs}),
    )
}
