//! An outside tester's scenarios for the path MTU (docs/agent.md, "Path MTU"): topologies
//! and situations `pmtu.rs` does not cover. A narrow link deeper in the path (between a
//! CGN and the home NAT), an MTU that shrinks in the middle of running TCP streams (and
//! widens again), very small MTUs (IPv4 576, IPv6 inner over an IPv4 path of 1300), and
//! forged ICMP "fragmentation needed" at a box (a tiny MTU, a flood, many destinations).
//! Needs root, NSD, dig, nft, ping, socat, iperf3 and python3; the binaries come from
//! `cargo build --release --workspace --bins`.

#![allow(clippy::print_stderr)]

use ntm_lab::deploy::{or_skip, payload, Access, Deployment, NatKind};
use ntm_lab::{tools_or_skip, Ns};
use serde_json::Value;
use std::time::{Duration, Instant};

const TOOLS: &[&str] = &["socat", "ping", "dig", "nft", "iperf3", "python3"];

fn counter(c: &Value, k: &str) -> u64 {
    c[k].as_u64().unwrap_or(0)
}

/// The agent's "path MTU to" log lines of box `i`.
fn pmtu_log(d: &mut Deployment, i: usize) -> Vec<String> {
    let Some(p) = d.boxes[i].proc else { return Vec::new() };
    d.lab.proc(p).log_text().lines().filter(|l| l.contains("path MTU to")).map(str::to_string).collect()
}

fn print_state(d: &mut Deployment, what: &str) {
    for i in 0..2 {
        let (mtus, c) = d.path_mtus(i);
        let shown: Vec<_> = mtus.iter().take(4).collect();
        eprintln!(
            "[{what}] box {i}: path_mtus ({} entries) {shown:?}; too_big {} fragmented {} icmp_errors {} path_mtu_changes {} \
             send_errors {} held_dropped {}",
            mtus.len(),
            counter(&c, "too_big"),
            counter(&c, "fragmented"),
            counter(&c, "icmp_errors"),
            counter(&c, "path_mtu_changes"),
            counter(&c, "send_errors"),
            counter(&c, "held_dropped"),
        );
        let logs = pmtu_log(d, i);
        for l in logs.iter().take(4) {
            eprintln!("[{what}] box {i} log: {l}");
        }
        if logs.len() > 4 {
            eprintln!("[{what}] box {i} log: ... {} 'path MTU to' lines in all", logs.len());
        }
    }
}

/// `len` bytes echoed over TCP from box `i` to `target`; the bytes that came back.
fn echo(d: &Deployment, i: usize, target: &str, len: usize, tag: &str) -> usize {
    let data = payload(len, 7 + len as u64);
    let t = Instant::now();
    let got = d.tcp_echo(i, target, &data, tag);
    let ok = got == data;
    eprintln!("box {i} -> {target}: {} of {len} bytes back in {:?} (intact: {ok})", got.len(), t.elapsed());
    if ok {
        got.len()
    } else {
        got.iter().zip(&data).take_while(|(a, b)| a == b).count()
    }
}

fn echo_servers(d: &mut Deployment) {
    d.echo_server(0, "echo-a4", "TCP4-LISTEN:7000,reuseaddr,fork").unwrap();
    d.echo_server(1, "echo-b4", "TCP4-LISTEN:7000,reuseaddr,fork").unwrap();
    d.echo_server(0, "echo-a6", "TCP6-LISTEN:7006,reuseaddr,fork").unwrap();
    d.echo_server(1, "echo-b6", "TCP6-LISTEN:7006,reuseaddr,fork").unwrap();
}

/// Replies of `ping` from box `i`.
fn ping(d: &Deployment, i: usize, args: &[&str]) -> usize {
    let mut cmd = vec!["ping", "-c", "3", "-i", "0.3", "-W", "2"];
    cmd.extend_from_slice(args);
    let out = d.lab.try_exec(&d.boxes[i].ns, &cmd).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let n = text.matches("bytes from").count();
    eprintln!("box {i} ping {args:?}: {n} of 3 replies");
    n
}

/// Brings both boxes up and returns their status and box b's virtual address for the DNS
/// record type `record` ("A" or "AAAA"), checked by a look-up from box a.
fn up(d: &mut Deployment, record: &str) -> ([Value; 2], String) {
    let st = d.up_with(|_, _, _| {}).unwrap();
    let key = if record == "AAAA" { "virtual_ipv6" } else { "virtual_ipv4" };
    let b = st[1][key].as_str().unwrap().to_string();
    assert_eq!(d.dig(0, "b.zone-b.test", record), b);
    (st, b)
}

/// Sets the MTU of box `i`'s own link to the router (its `eth0` and the router's end), for
/// a box with a global address (no NAT in between).
fn narrow_own_link(d: &Deployment, i: usize, mtu: u16) {
    let rtr_end = ["a0", "b0"][i];
    d.set_mtu(mtu, &[(&d.boxes[i].ns, "eth0"), (&d.rtr, rtr_end)]).unwrap();
}

fn start(label: &str, access: [Access; 2]) -> Option<Deployment> {
    if !tools_or_skip(label, TOOLS) {
        return None;
    }
    or_skip(Deployment::start_with(label, access), label)
}

/// Scenario 1: The narrow link is deeper in the path: between the carrier-grade NAT and the home
/// NAT (cgn-b lan0 <-> nat-b wan0, 1400 bytes), with fragments dropped at the router, the
/// CGN and the home NAT. Box b learns from its home NAT's ICMP, box a from the CGN's
/// ICMP (translated back by two NATs). Docs: 1 MiB over TCP both ways, each agent lists
/// the other's address with 1400 in `path_mtus`.
#[test]
fn narrow_link_between_cgn_and_home_nat() {
    let label = "opmtu-cgn";
    let Some(mut d) = start(label, [Access::Dual, Access::DoubleNat(NatKind::PortRestricted)]) else { return };
    let (rtr, nat, cgn) = (d.rtr.clone(), d.boxes[1].nat.clone().unwrap(), d.boxes[1].cgn.clone().unwrap());
    d.lab.step("cgn-b lan0 / nat-b wan0 carry 1400 bytes; rtr, CGN and NAT drop fragments");
    d.set_mtu(1400, &[(&cgn, "lan0"), (&nat, "wan0")]).unwrap();
    for ns in [&rtr, &cgn, &nat] {
        d.drop_fragments(ns).unwrap();
    }
    up(&mut d, "A");
    echo_servers(&mut d);
    let len = 1024 * 1024;
    let ab = echo(&d, 0, "TCP4:b.zone-b.test:7000", len, "ab");
    let ba = echo(&d, 1, "TCP4:a.zone-a.test:7000", len, "ba");
    print_state(&mut d, "cgn");
    let t = d.tunnel(0, "b.zone-b.test").unwrap();
    eprintln!("a's tunnel: path {} remote {}", t["path"], t["remote"]);
    eprintln!(
        "fragments dropped: rtr {} cgn {} nat {}",
        d.fragments_dropped(&rtr),
        d.fragments_dropped(&cgn),
        d.fragments_dropped(&nat)
    );
    assert_eq!((ab, ba), (len, len), "1 MiB echoed both ways over a narrow CGN link");
    let (ma, _) = d.path_mtus(0);
    let (mb, _) = d.path_mtus(1);
    assert!(ma.contains(&("203.0.113.2".into(), 1400)), "box a learned 1400 to the CGN's address: {ma:?}");
    assert!(mb.contains(&("198.51.100.2".into(), 1400)), "box b learned 1400 to box a: {mb:?}");
}

/// iperf3 --bidir JSON: per interval (bytes a->b, bytes b->a).
fn bidir_intervals(json: &str) -> Vec<(f64, u64, u64)> {
    let Some(start) = json.find('{') else { return Vec::new() };
    let Ok(v) = serde_json::from_str::<Value>(&json[start..]) else { return Vec::new() };
    v["intervals"]
        .as_array()
        .map(|iv| {
            iv.iter()
                .map(|i| {
                    let (mut up, mut down) = (0, 0);
                    for s in i["streams"].as_array().into_iter().flatten() {
                        let b = s["bytes"].as_u64().unwrap_or(0);
                        if s["sender"] == true {
                            up += b;
                        } else {
                            down += b;
                        }
                    }
                    let t = i["sum"]["end"].as_f64().or_else(|| i["streams"][0]["end"].as_f64()).unwrap_or(0.0);
                    (t, up, down)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The longest run of silent intervals (0.5 s each) after time `after`, in seconds.
fn longest_silence(iv: &[(f64, u64, u64)], after: f64, dir: usize) -> f64 {
    let (mut best, mut run) = (0.0f64, 0.0f64);
    for (t, up, down) in iv {
        if *t <= after {
            continue;
        }
        let b = if dir == 0 { *up } else { *down };
        if b < 2000 {
            run += 0.5;
            best = best.max(run);
        } else {
            run = 0.0;
        }
    }
    best
}

/// Scenario 2: The path narrows in the middle of running TCP streams (both ways at once, iperf3
/// --bidir over a direct IPv4 tunnel): 4 s in, box b's own link (b eth0, rtr b0) goes to
/// 1400 and the router drops fragments. Box b's agent can only learn it from its own
/// interface (its kernel refuses the big datagrams locally; no ICMP comes), box a from
/// the router's ICMP. Docs: "The datagrams in flight when the MTU drops are lost (a few;
/// counted in send_errors), and TCP sends them again in the smaller size". So neither
/// direction should stall for long (we allow 3 s, the ICMP rate limit is 1 s). Then the
/// link widens again: box b asks the kernel every 30 s while it sends, so within about
/// 30 s its `path_mtus` no longer lists box a.
#[test]
fn own_link_narrows_mid_stream_then_widens() {
    let label = "opmtu-mid";
    let Some(mut d) = start(label, [Access::Global4, Access::Global4]) else { return };
    let (rtr, b) = (d.rtr.clone(), d.boxes[1].ns.clone());
    d.drop_fragments(&rtr).unwrap();
    let (st, b4) = up(&mut d, "A");
    d.lab.spawn(&b, "iperf3-s", &["iperf3", "-s", "-p", "5201"], &[]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let a = d.boxes[0].ns.clone();
    let client = d
        .lab
        .spawn(
            &a,
            "iperf3-c",
            &["iperf3", "-c", &b4, "-p", "5201", "--bidir", "-t", "12", "-i", "0.5", "-b", "200M", "-J"],
            &[],
        )
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    d.lab.step("box b's link narrows to 1400 mid-stream");
    let narrowed = Instant::now();
    narrow_own_link(&d, 1, 1400);
    d.lab.proc(client).wait(30);
    let text = d.lab.proc(client).log_text();
    let iv = bidir_intervals(&text);
    let total: (u64, u64) = iv.iter().fold((0, 0), |s, (_, u, dn)| (s.0 + u, s.1 + dn));
    let after: (u64, u64) = iv.iter().filter(|x| x.0 > 5.0).fold((0, 0), |s, (_, u, dn)| (s.0 + u, s.1 + dn));
    let (sa, sb) = (longest_silence(&iv, 4.0, 0), longest_silence(&iv, 4.0, 1));
    eprintln!(
        "iperf3 --bidir: {} intervals; a->b {} bytes ({} after 5 s), b->a {} bytes ({} after 5 s); longest silence \
         after the change a->b {sa} s, b->a {sb} s",
        iv.len(),
        total.0,
        after.0,
        total.1,
        after.1
    );
    for (t, u, dn) in &iv {
        eprint!("[{t:.1} {}k/{}k] ", u / 1000, dn / 1000);
    }
    eprintln!();
    print_state(&mut d, "narrowed");
    eprintln!("fragments dropped at rtr: {}", d.fragments_dropped(&rtr));
    let (mb, cb) = d.path_mtus(1);
    let (ma, _) = d.path_mtus(0);
    let narrow_ok = mb.contains(&("198.51.100.2".into(), 1400)) && ma.contains(&("203.0.113.2".into(), 1400));

    // Widen again; keep traffic going so that box b asks again (every 30 s while it sends).
    d.lab.step("box b's link widens to 1500 again");
    narrow_own_link(&d, 1, 1500);
    let widened = Instant::now();
    let a4 = st[0]["virtual_ipv4"].as_str().unwrap().to_string();
    let mut forgot = None;
    while widened.elapsed() < Duration::from_secs(40) {
        let _ = d.lab.try_exec(&b, &["ping", "-c", "1", "-W", "1", "-s", "1000", &a4]);
        if !d.path_mtus(1).0.iter().any(|(to, _)| to == "198.51.100.2") {
            forgot = Some(widened.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "after widening: box b forgot the narrow path after {forgot:?} (narrowed {:?} ago); box a's path_mtus {:?}",
        narrowed.elapsed(),
        d.path_mtus(0).0
    );
    print_state(&mut d, "widened");
    assert!(iv.len() >= 20, "iperf3 ran (its output: {})", &text[..text.len().min(2000)]);
    assert!(narrow_ok, "both learned 1400: a {ma:?}, b {mb:?} (b's counters {cb})");
    assert!(sa <= 3.0 && sb <= 3.0, "no direction stalled more than 3 s: a->b {sa} s, b->a {sb} s");
    assert!(forgot.is_some(), "box b noticed its wider link within 40 s");
}

/// Scenario 3: IPv6 inside, IPv4 outside, on a path of 1300 bytes that does NOT drop fragments.
/// The IPv4 tunnel datagram for a 1280-byte inner IPv6 packet is 1340 bytes. Docs: inner
/// IPv6 is never refused under 1280 bytes (hosts do not go below) — so these must be
/// carried somehow; for the IPv6 outer case the docs say the kernel fragments. Here the
/// agent's IPv4 datagrams always carry DF. What we assert is the docs' goal: the tunnel
/// keeps working (1 MiB over TCP to the IPv6 virtual address, and pings of 1280 bytes).
#[test]
fn ipv6_inside_ipv4_on_a_1300_byte_path() {
    let label = "opmtu-6in4";
    let Some(mut d) = start(label, [Access::Global4, Access::Global4]) else { return };
    d.lab.step("box b's link carries 1300 bytes; fragments are allowed");
    narrow_own_link(&d, 1, 1300);
    let (_, b6) = up(&mut d, "AAAA");
    echo_servers(&mut d);
    // IPv4 inside first (limit 1240, above 552: should be fine).
    let len = 1024 * 1024;
    let v4 = echo(&d, 0, "TCP4:b.zone-b.test:7000", len, "ab4");
    let p6 = ping(&d, 0, &["-6", "-s", "1232", &b6]);
    let v6 = echo(&d, 0, "TCP6:b.zone-b.test:7006", len, "ab6");
    let v6r = echo(&d, 1, "TCP6:a.zone-a.test:7006", len, "ba6");
    print_state(&mut d, "6in4");
    assert_eq!(v4, len, "IPv4 inside: 1 MiB");
    assert!(p6 >= 2, "pings of 1280 bytes over IPv6 inside: {p6} of 3");
    assert_eq!((v6, v6r), (len, len), "IPv6 inside over an IPv4 path of 1300 bytes: 1 MiB both ways");
}

/// Scenario 4: An IPv4 path of 576 bytes (the IPv4 minimum every host must take), fragments
/// allowed. Docs: the path MTU is clamped to 552 at least, so 576 is taken as it is;
/// inner IPv4 is never refused under 552. The tunnel datagram for a 552-byte inner
/// packet is 612 bytes, more than the path. The goal: TCP still works.
#[test]
fn ipv4_path_of_576_bytes() {
    let label = "opmtu-576";
    let Some(mut d) = start(label, [Access::Global4, Access::Global4]) else { return };
    d.lab.step("box b's link carries 576 bytes; fragments are allowed");
    narrow_own_link(&d, 1, 576);
    let (_, b4) = up(&mut d, "A");
    echo_servers(&mut d);
    let small = ping(&d, 0, &["-4", "-s", "400", &b4]);
    let len = 256 * 1024;
    let ab = echo(&d, 0, "TCP4:b.zone-b.test:7000", len, "ab");
    let ba = echo(&d, 1, "TCP4:a.zone-a.test:7000", len, "ba");
    print_state(&mut d, "576");
    let (ma, _) = d.path_mtus(0);
    assert!(small >= 2, "small pings over a 576 path");
    assert!(ma.contains(&("203.0.113.2".into(), 576)), "box a learned 576: {ma:?}");
    assert_eq!((ab, ba), (len, len), "256 KiB echoed both ways over an IPv4 path of 576 bytes");
}

/// A python3 program that sends forged ICMP "fragmentation needed" to `dst` about a
/// datagram `src:sport -> inner_dst:dport`, `count` times with the MTU `mtu` (0: random
/// from 0 to 1500), cycling the inner destination over `n_dsts` addresses of
/// 203.0.113.0/24 (1: `inner_dst` only).
const FORGE: &str = r#"
import socket, struct, sys, random
dst, src, sport, inner_dst, dport, mtu, count, n_dsts = sys.argv[1:9]
sport, dport, mtu, count, n_dsts = int(sport), int(dport), int(mtu), int(count), int(n_dsts)
def csum(b):
    if len(b) % 2: b += b'\0'
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff); s += s >> 16
    return (~s) & 0xffff
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
base = list(map(int, inner_dst.split('.')))
for k in range(count):
    d = inner_dst if n_dsts <= 1 else '203.0.113.%d' % (10 + k % n_dsts) if n_dsts < 240 else '198.18.%d.%d' % (100 + (k // 250) % 100, 1 + k % 250)
    m = mtu if mtu > 0 else random.randint(0, 1500)
    ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 1500, k & 0xffff, 0x4000, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(d))
    ip = ip[:10] + struct.pack('!H', csum(ip)) + ip[12:]
    udp = struct.pack('!HHHH', sport, dport, 1480, 0)
    body = struct.pack('!HH', 0, m) + ip + udp
    icmp = struct.pack('!BBH', 3, 4, 0) + body
    icmp = icmp[:2] + struct.pack('!H', csum(icmp)) + icmp[4:]
    s.sendto(icmp, (dst, 0))
"#;

fn forge(d: &Deployment, from: &Ns, args: &[&str]) {
    let script = d.lab.dir().join("forge.py");
    std::fs::write(&script, FORGE).unwrap();
    let mut cmd = vec!["/usr/bin/python3", script.to_str().unwrap()];
    cmd.extend_from_slice(args);
    let out = d.lab.try_exec(from, &cmd).unwrap();
    assert!(out.status.success(), "forge: {}", String::from_utf8_lossy(&out.stderr));
}

/// Scenario 5: Forged ICMP "fragmentation needed" at box a, sent from the servers' namespace (off
/// the path between the boxes: the kernel does not check where ICMP comes from), quoting box a's tunnel datagram to box b, with an MTU of 68: docs say the path
/// MTU is clamped to the family's floor (552), inner IPv4 under 552 is never refused. The
/// tunnel must keep carrying TCP (the forgery may cost speed, not the connection).
#[test]
fn forged_fragmentation_needed_with_a_tiny_mtu() {
    let label = "opmtu-forge";
    let Some(mut d) = start(label, [Access::Global4, Access::Global4]) else { return };
    let srv = d.srv.clone();
    let (_, b4) = up(&mut d, "A");
    echo_servers(&mut d);
    let len = 256 * 1024;
    assert_eq!(echo(&d, 0, "TCP4:b.zone-b.test:7000", len, "before"), len, "works before the forgery");
    let t = d.tunnel(0, "b.zone-b.test").unwrap();
    eprintln!("a's tunnel remote {}", t["remote"]);
    d.lab.step("forged ICMP fragmentation needed, MTU 68, at box a from srv (off-path)");
    forge(&d, &srv, &["198.51.100.2", "198.51.100.2", "4500", "203.0.113.2", "4500", "68", "3", "1"]);
    std::thread::sleep(Duration::from_millis(300));
    let route = d.lab.try_exec(&d.boxes[0].ns, &["ip", "route", "get", "203.0.113.2"]).unwrap();
    eprintln!("box a's kernel: {}", String::from_utf8_lossy(&route.stdout).trim());
    print_state(&mut d, "forged 68");
    let (ma, ca) = d.path_mtus(0);
    let p = ping(&d, 0, &["-4", "-s", "500", &b4]);
    let after = echo(&d, 0, "TCP4:b.zone-b.test:7000", len, "after");
    let after_r = echo(&d, 1, "TCP4:a.zone-a.test:7000", len, "after_r");
    print_state(&mut d, "after forged 68");
    assert!(counter(&ca, "icmp_errors") >= 1, "box a read the ICMP error: {ca}");
    assert!(ma.iter().all(|(_, m)| *m >= 552), "never below the floor of 552: {ma:?}");
    assert!(p >= 2, "pings of 528 bytes still come back after the forgery");
    assert_eq!((after, after_r), (len, len), "TCP still works after a forged MTU of 68 (at the floor of 552)");
}

/// Scenario 6: A flood of forged "fragmentation needed" at box a. First 3 about its datagrams to
/// box b with an MTU of 1400 (plausible: the agent learns 1400 and TCP goes on), then 5 000
/// with random MTUs about 2 000 destinations it never sends to (its socket is unconnected,
/// so the kernel hands it every one). Docs: the agent learns the path MTU "of every
/// destination it sends tunnel datagrams to (a peer, or the RS of a relayed tunnel)", an
/// ICMP error prompts a question "at most once a second per destination", and each
/// change is one log line. So: no `path_mtus` entries for addresses it never sent to, at
/// most one change per destination in the (sub-second) flood, a bounded log, the agent
/// responsive, and the tunnel to box b still working.
#[test]
fn forged_icmp_flood_about_many_destinations() {
    let label = "opmtu-flood";
    let Some(mut d) = start(label, [Access::Global4, Access::Global4]) else { return };
    let rtr = d.rtr.clone();
    let (_, b4) = up(&mut d, "A");
    echo_servers(&mut d);
    let pid = d.lab.proc(d.boxes[0].proc.unwrap()).pid();
    let rss0 = ntm_lab::proc_kib(pid, "VmRSS");
    d.lab.step("3 forged ICMP about box b (MTU 1400), then 5 000 about 2 000 other destinations (random MTUs)");
    forge(&d, &rtr, &["198.51.100.2", "198.51.100.2", "4500", "203.0.113.2", "4500", "1400", "3", "1"]);
    std::thread::sleep(Duration::from_millis(200));
    // The kernel took it; the agent asks the kernel when it first sends data to box b
    // (before, only the tunnel's set-up went there).
    ping(&d, 0, &["-4", "-s", "100", &b4]);
    let before = d.path_mtus(0);
    eprintln!("after 3 forged (1400) about box b and a ping: {:?}", before.0);
    let t = Instant::now();
    forge(&d, &rtr, &["198.51.100.2", "198.51.100.2", "4500", "203.0.113.2", "4500", "0", "5000", "2000"]);
    eprintln!("flood sent in {:?}", t.elapsed());
    std::thread::sleep(Duration::from_millis(300));
    let responsive = d.status(0).is_some();
    let (ma, ca) = d.path_mtus(0);
    let foreign: Vec<_> = ma.iter().filter(|(to, _)| to != "203.0.113.2" && !to.starts_with("192.0.2.")).collect();
    let changes = counter(&ca, "path_mtu_changes") - counter(&before.1, "path_mtu_changes");
    let n_logs = pmtu_log(&mut d, 0).len();
    eprintln!(
        "box a: {} path_mtus entries ({} for addresses it never sent to; box b's: {:?}); icmp_errors {} \
         path_mtu_changes in the flood {changes}; {n_logs} 'path MTU to' log lines; RSS {rss0} -> {} KiB",
        ma.len(),
        foreign.len(),
        ma.iter().find(|(to, _)| to == "203.0.113.2"),
        counter(&ca, "icmp_errors"),
        ntm_lab::proc_kib(pid, "VmRSS"),
    );
    let p = ping(&d, 0, &["-4", "-s", "1300", &b4]);
    let len = 1024 * 1024;
    let after = echo(&d, 0, "TCP4:b.zone-b.test:7000", len, "after");
    print_state(&mut d, "flood");
    assert!(responsive, "status answered right after the flood");
    assert!(before.0.contains(&("203.0.113.2".into(), 1400)), "learned 1400 (the kernel took the plausible ICMP)");
    assert!(p >= 2, "pings of 1328 bytes after the flood (cut or refused and retried)");
    assert_eq!(after, len, "TCP after the flood");
    assert!(foreign.is_empty(), "no path MTU kept for {} addresses box a never sent to", foreign.len());
    assert!(changes <= 2001, "at most once a second per destination: {changes} changes in under a second");
}

/// Scenario 7: A relayed tunnel (box a IPv4-only, box b IPv6-only: through the RS) with box a's own
/// link narrow (1400); fragments are allowed (docs, Known gaps: for a relayed tunnel the
/// agent learns the path to the RS; the RS's path to the peer is the RS kernel's affair,
/// "it fragments where it must"). Box a learns 1400 to the RS from its interface; 1 MiB
/// echoed both ways (each echo uses both directions, so RS -> box a carries full-size
/// segments too).
#[test]
fn relayed_tunnel_with_a_narrow_side() {
    let label = "opmtu-relay";
    let Some(mut d) = start(label, [Access::Global4, Access::Global6]) else { return };
    d.lab.step("box a's link carries 1400; fragments allowed");
    narrow_own_link(&d, 0, 1400);
    up(&mut d, "A");
    echo_servers(&mut d);
    let t = d.tunnel(0, "b.zone-b.test").unwrap();
    eprintln!("a's tunnel: path {} remote {}", t["path"], t["remote"]);
    let len = 1024 * 1024;
    let ab = echo(&d, 0, "TCP4:b.zone-b.test:7000", len, "ab");
    let ba = echo(&d, 1, "TCP4:a.zone-a.test:7000", len, "ba");
    print_state(&mut d, "relay");
    let (ma, _) = d.path_mtus(0);
    assert_eq!(t["path"], "relay", "relayed");
    assert!(ma.contains(&("192.0.2.30".into(), 1400)), "box a learned 1400 to the RS: {ma:?}");
    assert_eq!((ab, ba), (len, len), "relayed, 1 MiB echoed both ways");
}

/// Scenario 8: The IPv6 minimum: box b's own link carries 1280 bytes, both boxes dual-stack (the
/// tunnel runs over IPv6), fragments allowed. Docs: the answer is clamped to the IPv6
/// floor of 1280 (so 1280 is kept as it is); inner IPv6 is never refused under 1280, and
/// "on a path narrower than that such a datagram over IPv6 is fragmented by the kernel".
/// 1 MiB over TCP to both virtual addresses, both ways; pings of 1280 bytes inside.
#[test]
fn ipv6_path_of_1280_bytes() {
    let label = "opmtu-1280";
    let Some(mut d) = start(label, [Access::Dual, Access::Dual]) else { return };
    d.lab.step("box b's link carries 1280 bytes; fragments are allowed");
    narrow_own_link(&d, 1, 1280);
    let (_, b6) = up(&mut d, "AAAA");
    echo_servers(&mut d);
    let t = d.tunnel(0, "b.zone-b.test").unwrap();
    eprintln!("a's tunnel remote {}", t["remote"]);
    let p6 = ping(&d, 0, &["-6", "-s", "1232", &b6]);
    let len = 1024 * 1024;
    let r = [
        echo(&d, 0, "TCP4:b.zone-b.test:7000", len, "ab4"),
        echo(&d, 1, "TCP4:a.zone-a.test:7000", len, "ba4"),
        echo(&d, 0, "TCP6:b.zone-b.test:7006", len, "ab6"),
        echo(&d, 1, "TCP6:a.zone-a.test:7006", len, "ba6"),
    ];
    print_state(&mut d, "1280");
    let (ma, _) = d.path_mtus(0);
    assert!(t["remote"].as_str().unwrap_or_default().starts_with('['), "over IPv6: {t}");
    assert!(ma.contains(&("2001:db8:b::2".into(), 1280)), "box a learned 1280: {ma:?}");
    assert!(p6 >= 2, "pings of 1280 bytes over IPv6 inside: {p6} of 3");
    assert_eq!(r, [len; 4], "1 MiB both ways over both families on an IPv6 path of 1280 bytes");
}

/// iperf3 UDP from box `i` to `dst`: (datagrams lost, sent), from the client's JSON.
fn udp_iperf(d: &mut Deployment, i: usize, dst: &str, extra: &[&str]) -> (u64, u64, String) {
    let ns = d.boxes[i].ns.clone();
    let mut cmd =
        vec!["timeout", "20", "iperf3", "-c", dst, "-p", "5202", "-u", "-l", "1400", "-b", "20M", "-t", "3", "-J"];
    cmd.extend_from_slice(extra);
    let out = d.lab.try_exec(&ns, &cmd).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let v: Value = serde_json::from_str(&text).unwrap_or_default();
    let s = &v["end"]["sum"];
    let (lost, total) = (s["lost_packets"].as_u64().unwrap_or(u64::MAX), s["packets"].as_u64().unwrap_or(0));
    eprintln!("box {i} iperf3 -u -l 1400 {extra:?} to {dst}: lost {lost} of {total} ({})", s["lost_percent"]);
    (lost, total, text)
}

/// Scenario 9: Large UDP datagrams (iperf3 -u -l 1400: inner IPv4 packets of 1428 bytes) both ways
/// over a path of 1400 bytes that drops fragments. Docs: an inner packet over the limit
/// is answered with ICMP "fragmentation needed" (the sending kernel then cuts its UDP
/// datagrams into fragments that fit, as it does under Path MTU discovery), or cut by the
/// agent if it has no DF. Either way the datagrams arrive: little loss after the first.
#[test]
fn large_udp_datagrams_over_a_narrow_path() {
    let label = "opmtu-udp";
    let Some(mut d) = start(label, [Access::Global4, Access::Global4]) else { return };
    let (rtr, b) = (d.rtr.clone(), d.boxes[1].ns.clone());
    d.lab.step("box b's link carries 1400; rtr drops fragments");
    narrow_own_link(&d, 1, 1400);
    d.drop_fragments(&rtr).unwrap();
    let (_, b4) = up(&mut d, "A");
    d.lab.spawn(&b, "iperf3-s", &["iperf3", "-s", "-p", "5202"], &[]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let up = udp_iperf(&mut d, 0, &b4, &[]);
    let down = udp_iperf(&mut d, 0, &b4, &["-R"]);
    print_state(&mut d, "udp");
    eprintln!("fragments dropped at rtr: {}", d.fragments_dropped(&rtr));
    for (what, (lost, total, text)) in [("a->b", up), ("b->a", down)] {
        assert!(total > 1000, "{what}: iperf3 ran: {}", &text[..text.len().min(1500)]);
        assert!(lost * 20 <= total, "{what}: at most 5% of 1400-byte UDP datagrams lost: {lost} of {total}");
    }
}
