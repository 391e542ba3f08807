//! Load generators for the server-capacity and set-up parts of the benchmarks (`ntm-bench`
//! starts them inside a lab namespace; they only talk to the addresses given).
//!
//! ```text
//! ntm-bench-load dc ADDR NAME ZONE CA CERT KEY COUNT SECS DC_PID  the real ntm-dc over loopback
//! ntm-bench-load dc-engine ZONE COUNT                             the library's DC engine in-process
//! ntm-bench-load ns ADDR NODE_ADDRS NAME CA CERT KEY COUNTS       idle node connections to the real ntm-ns
//! ntm-bench-load dns ADDR NAME                                    one A query, timed to the microsecond
//! ```
//!
//! `dc` plays the AS (a TLS client with an AS certificate): it hands the DC `COUNT` node
//! keys (Key Distribution, as the AS does after a login), then registers every node over
//! UDP exactly as `ntmd` does (a Registration Request sealed with the node's K_ntmdc),
//! opens each answer with that node's key and counts it. Each phase stops after `COUNT`
//! nodes or `SECS`/2 seconds. It prints one JSON line: nodes done, wall time and the DC's
//! CPU time (read from /proc/DC_PID/stat) for each phase.
//!
//! `dc-engine` does the same against `ntm_proto::engine::dc::Dc` in this process, with no
//! sockets and no database: the protocol work alone, on one core.
//!
//! `ns` plays a DC (a TLS client with a DC certificate): it shares K_dcns with the NS, hands
//! it `COUNT` node keys over UDP (NS Key Distribution), then opens one TCP connection per
//! node to one of `NODE_ADDRS` (comma-separated), registers the node on it (a sealed
//! Notification Registration, answered by a Notification Ack that is opened and checked),
//! and keeps the connection idle. `COUNTS` is a comma-separated list of steps (e.g.
//! `10000,100000`): after each it prints `reached N` and waits for a line on its standard
//! input; at the end of input it closes everything and exits.
//!
//! `dns` sends one A query for NAME to ADDR (an agent's DNS hook) and prints how long the
//! answer took and the addresses in it, as JSON.
//!
//! Every phase has a deadline; nothing runs unbounded.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use ntm_proto::crypto::{parse_plain, plain, Channel};
use ntm_proto::engine::dc::{Dc, DcConfig};
use ntm_proto::engine::{Engine, PeerIdentity, Role, StreamKind};
use ntm_proto::keys::{DcNs, KDcNs, KNtmDc, KNtmNs, KeyGrant, NtmDc};
use ntm_proto::time::Instant as PInstant;
use ntm_proto::wire::frame::{encode_frame, FrameDecoder};
use ntm_proto::wire::keyshare::{KeyShare, SharedKey};
use ntm_proto::wire::login::KeyDistribution;
use ntm_proto::wire::notification::{NotificationRegistration, NsKeyDistribution};
use ntm_proto::wire::registration::{KeepaliveMethod, RegistrationRequest};
use ntm_proto::wire::{Envelope, Fqdn, KeyId, Lifetime, List, Message, RequestId, Sender};
use serde_json::json;
use std::collections::HashMap;
use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

type Res<T> = Result<T, String>;

fn err<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// The engines' clock: UNIX milliseconds, as the daemons use.
fn proto_now() -> PInstant {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    PInstant::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// Far enough that no channel of a run expires.
fn far() -> PInstant {
    PInstant::from_millis(u64::MAX / 4)
}

/// Key bytes for node `i` of this run (not secret: a load test).
fn key_bytes(run: u64, i: u64) -> [u8; 16] {
    let mut x = run ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5851_f42d_4c95_7f2d;
    let mut out = [0u8; 16];
    for b in out.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    out
}

/// utime + stime of `pid` in seconds (clock ticks of 10 ms).
fn cpu_secs(pid: u32) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return f64::NAN };
    let Some(rest) = s.rsplit_once(')').map(|(_, r)| r) else { return f64::NAN };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    // After the ')' the fields start at field 3 (state): utime is field 14, stime 15.
    (ticks(11) + ticks(12)) / 100.0
}

fn tls_client(
    addr: SocketAddr,
    server: &Fqdn,
    ca: &str,
    cert: &str,
    key: &str,
) -> Res<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let material = ntm_servers::pki::TlsMaterial::load(ca, cert, key).map_err(err("TLS files"))?;
    let config: Arc<rustls::ClientConfig> = ntm_servers::pki::client_config(&material).map_err(err("TLS config"))?;
    let name = ntm_servers::pki::server_name(server).map_err(err("server name"))?;
    let conn = rustls::ClientConnection::new(config, name).map_err(err("TLS client"))?;
    let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(err("connect"))?;
    sock.set_read_timeout(Some(Duration::from_secs(10))).map_err(err("timeout"))?;
    sock.set_nodelay(true).map_err(err("nodelay"))?;
    Ok(rustls::StreamOwned::new(conn, sock))
}

/// Reads frames from `s` until `want` of them are in `out`.
fn read_frames(s: &mut impl Read, dec: &mut FrameDecoder, want: usize, out: &mut Vec<Vec<u8>>) -> Res<()> {
    let mut buf = [0u8; 16384];
    while out.len() < want {
        while let Some(f) = dec.next_frame().map_err(err("frame"))? {
            out.push(f);
        }
        if out.len() >= want {
            break;
        }
        let n = s.read(&mut buf).map_err(err("read"))?;
        if n == 0 {
            return Err("the server closed the stream".into());
        }
        dec.push(&buf[..n]);
    }
    Ok(())
}

/// A node of the load: its name, key id and K_ntmdc channel.
struct LoadNode {
    fqdn: Fqdn,
    key_id: KeyId,
    channel: Channel<NtmDc>,
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
    });
    n.channel.seal(proto_now(), &msg).map_err(err("seal"))
}

/// The requests of `pending` unanswered for more than 500 ms, stamped `now` again: the
/// caller sends them again.
fn due_again(pending: &mut HashMap<usize, Instant>, now: Instant) -> Vec<usize> {
    let late: Vec<usize> =
        pending.iter().filter(|(_, t)| now.duration_since(**t) > Duration::from_millis(500)).map(|(i, _)| *i).collect();
    for i in &late {
        pending.insert(*i, now);
    }
    late
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
fn dc_daemon(args: &[String]) -> Res<serde_json::Value> {
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
fn dc_engine(args: &[String]) -> Res<serde_json::Value> {
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

/// Idle node connections to the real NS.
fn ns_daemon(args: &[String]) -> Res<()> {
    let [addr, node_addrs, name, ca, cert, key, counts] = args else {
        return Err("ns ADDR NODE_ADDRS NAME CA CERT KEY COUNTS".into());
    };
    let addr: SocketAddr = addr.parse().map_err(err("address"))?;
    let node_addrs: Vec<SocketAddr> =
        node_addrs.split(',').map(|a| a.parse().map_err(err("node address"))).collect::<Res<_>>()?;
    let ns_name = Fqdn::new(name).map_err(err("name"))?;
    let steps: Vec<usize> = counts.split(',').map(|c| c.parse().map_err(err("count"))).collect::<Res<_>>()?;
    let total = steps.iter().copied().max().unwrap_or(0);
    let run = u64::from(std::process::id());
    let dc_name = Fqdn::new("dc.bench.test").map_err(err("name"))?;

    // K_dcns over mutual TLS, as a DC shares it.
    let dcns_id = KeyId(0x7000_0001);
    let dcns = key_bytes(run, u64::MAX);
    let mut tls = tls_client(addr, &ns_name, ca, cert, key)?;
    let share = Message::KeyShare(KeyShare {
        request_id: RequestId(1),
        key_id: dcns_id,
        key: SharedKey::DcNs(KeyGrant { key: KDcNs::from_bytes(dcns), lifetime: Lifetime(24 * 3600) }),
        from: dc_name,
    });
    tls.write_all(&encode_frame(&plain(Sender::Dc, &share)).map_err(err("frame"))?).map_err(err("write"))?;
    tls.flush().map_err(err("flush"))?;
    let mut frames = Vec::new();
    read_frames(&mut tls, &mut FrameDecoder::new(), 1, &mut frames)?;
    if !matches!(frames.first().map(|f| parse_plain(f)), Some(Ok((_, Message::KeyShareAck(_))))) {
        return Err("the NS did not acknowledge K_dcns".into());
    }
    drop(tls);
    let mut to_ns = Channel::new(KDcNs::from_bytes(dcns), dcns_id, Sender::Dc, far()).map_err(err("channel"))?;

    // For each step: the step's nodes get their K_ntmns over UDP, sealed with K_dcns (and
    // acknowledged), then one TCP connection each, registered and left idle. Keys and
    // connections grow together, so each step's memory is that of its nodes alone.
    let sock = UdpSocket::bind("127.0.0.1:0").map_err(err("bind"))?;
    sock.connect(addr).map_err(err("connect"))?;
    sock.set_read_timeout(Some(Duration::from_millis(2))).map_err(err("timeout"))?;
    let ntmns = |i: usize| KNtmNs::from_bytes(key_bytes(run, i as u64 + 1_000_000));
    let fqdn = |i: usize| Fqdn::new(&format!("n{i}.bench.test")).map_err(err("name"));
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut acked = vec![false; total];
    let mut buf = [0u8; 2048];
    let send_key = |i: usize, to_ns: &mut Channel<DcNs>| -> Res<()> {
        let kd = Message::NsKeyDistribution(NsKeyDistribution {
            request_id: RequestId(i as u32 + 1),
            fqdn: fqdn(i)?,
            key_id: KeyId(0x5000_0000 + i as u32),
            k_ntmns: KeyGrant { key: ntmns(i), lifetime: Lifetime(24 * 3600) },
        });
        sock.send(&to_ns.seal(proto_now(), &kd).map_err(err("seal"))?).map_err(err("send"))?;
        Ok(())
    };
    let mut conns: Vec<TcpStream> = Vec::with_capacity(total);
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let t0 = Instant::now();
    for step in steps {
        let mut pending: HashMap<usize, Instant> = HashMap::new();
        let (mut next, mut got) = (conns.len(), conns.len());
        while got < step {
            if Instant::now() > deadline {
                return Err(format!("deadline: {got} of {step} NS keys acknowledged"));
            }
            while pending.len() < 256 && next < step {
                send_key(next, &mut to_ns)?;
                pending.insert(next, Instant::now());
                next += 1;
            }
            let now = Instant::now();
            for i in due_again(&mut pending, now) {
                send_key(i, &mut to_ns)?;
            }
            while let Ok(n) = sock.recv(&mut buf) {
                if let Ok((_, Message::NsKeyAck(a))) = to_ns.open(proto_now(), &buf[..n]) {
                    let i = (a.request_id.0 as usize).wrapping_sub(1);
                    if i < step && !acked[i] {
                        acked[i] = true;
                        got += 1;
                        pending.remove(&i);
                    }
                }
            }
        }
        while conns.len() < step {
            let i = conns.len();
            if Instant::now() > deadline {
                return Err(format!("deadline: {i} connections"));
            }
            let to = node_addrs[i % node_addrs.len()];
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(10)).map_err(err("connect"))?;
            s.set_read_timeout(Some(Duration::from_secs(10))).map_err(err("timeout"))?;
            let mut ch =
                Channel::new(ntmns(i), KeyId(0x5000_0000 + i as u32), Sender::Node, far()).map_err(err("channel"))?;
            let reg = Message::NotificationRegistration(NotificationRegistration {
                request_id: RequestId(1),
                fqdn: fqdn(i)?,
            });
            s.write_all(&encode_frame(&ch.seal(proto_now(), &reg).map_err(err("seal"))?).map_err(err("frame"))?)
                .map_err(err("write"))?;
            let mut frames = Vec::new();
            read_frames(&mut s, &mut FrameDecoder::new(), 1, &mut frames).map_err(|e| format!("node {i}: {e}"))?;
            match frames.first().map(|f| ch.open(proto_now(), f)) {
                Some(Ok((_, Message::NotificationAck(_)))) => {}
                other => return Err(format!("node {i}: no Notification Ack ({other:?})")),
            }
            conns.push(s);
        }
        println!("reached {} in {:.1} s", conns.len(), t0.elapsed().as_secs_f64());
        let _ = std::io::stdout().flush();
        if lines.next().is_none() {
            break;
        }
    }
    // Hold them until our input ends.
    while lines.next().is_some() {}
    Ok(())
}

/// One A query, timed.
fn dns(args: &[String]) -> Res<serde_json::Value> {
    use simple_dns::{rdata::RData, Name, Packet, PacketFlag, Question, CLASS, TYPE};
    let [addr, name] = args else { return Err("dns ADDR NAME".into()) };
    let to: SocketAddr = addr.parse().map_err(err("address"))?;
    let id = (std::process::id() & 0xffff) as u16;
    let mut q = Packet::new_query(id);
    q.set_flags(PacketFlag::RECURSION_DESIRED);
    q.questions.push(Question::new(Name::new(name).map_err(err("name"))?, TYPE::A.into(), CLASS::IN.into(), false));
    let bytes = q.build_bytes_vec().map_err(err("query"))?;
    let sock = UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).map_err(err("bind"))?;
    sock.set_read_timeout(Some(Duration::from_secs(15))).map_err(err("timeout"))?;
    let mut buf = [0u8; 4096];
    let t0 = Instant::now();
    sock.send_to(&bytes, to).map_err(err("send"))?;
    loop {
        let (n, from) = sock.recv_from(&mut buf).map_err(err("no answer"))?;
        let secs = t0.elapsed().as_secs_f64();
        let Ok(p) = Packet::parse(&buf[..n]) else { continue };
        if from != to || p.id() != id {
            continue;
        }
        let answers: Vec<String> = p
            .answers
            .iter()
            .filter_map(|r| match &r.rdata {
                RData::A(a) => Some(std::net::Ipv4Addr::from(a.address).to_string()),
                _ => None,
            })
            .collect();
        return Ok(json!({"secs": secs, "answers": answers}));
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        eprintln!("usage: ntm-bench-load dc|dc-engine|ns|dns ...");
        return ExitCode::from(2);
    };
    let r = match cmd.as_str() {
        "dc" => dc_daemon(rest).map(|v| println!("{v}")),
        "dc-engine" => dc_engine(rest).map(|v| println!("{v}")),
        "ns" => ns_daemon(rest),
        "dns" => dns(rest).map(|v| println!("{v}")),
        _ => Err(format!("unknown command {cmd}")),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ntm-bench-load {cmd}: {e}");
            println!("error {e}");
            ExitCode::FAILURE
        }
    }
}
