//! A bulk TCP transfer through the tunnel with the real agents, with the TUN offloads on
//! (`tun.offload`: virtio-net headers, TCP super-packets split on the way in and coalesced
//! on the way out) and the tunnel sockets taking coalesced groups (`udp_coalescing`), and
//! with both off (one packet per read and write, one datagram per slot): iperf3 one stream each way,
//! its retransmissions and the kernel's drop counters in both boxes printed; and, with
//! strace, the order of the agent's system calls for one packet of an idle tunnel. Needs
//! root, iperf3 and strace; the binaries come from `cargo build --release --workspace --bins`.

#![allow(clippy::print_stderr)]

use ntm_lab::deploy::{or_skip, Deployment};
use ntm_lab::{proc_kib, tools_or_skip, Ns};
use serde_json::Value;
use std::collections::BTreeMap;

/// Seconds of each iperf3 run.
const SECS: &str = "4";
/// Most TCP retransmissions per GB carried (both directions together) that pass. A
/// lossless link loses nothing in the tunnel; with the TUN's default queue of 500 packets
/// a run without offloads retransmitted 260 to 18 000 per GB (most runs over 1 000), with
/// a 2 MiB receive buffer on the tunnel socket up to 526 in some runs; after both fixes
/// 0 to 12.
const RETRANS_PER_GB_MAX: f64 = 100.0;

/// The kernel's counters in `ns` that say where packets die: TCP retransmissions, UDP
/// socket buffer overflows, and the TUN device's drops.
fn counters(d: &Deployment, ns: &Ns) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for file in ["/proc/net/snmp", "/proc/net/netstat"] {
        let text = d.lab.exec(ns, &["cat", file]).map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        let text = text.unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        // Pairs of lines: "Tcp: Name Name ..." then "Tcp: 1 2 ...".
        for pair in lines.chunks(2) {
            let [names, values] = pair else { continue };
            let mut n = names.split_whitespace();
            let prefix = n.next().unwrap_or("").trim_end_matches(':');
            for (name, value) in n.zip(values.split_whitespace().skip(1)) {
                if let Ok(v) = value.parse::<u64>() {
                    out.insert(format!("{prefix}.{name}"), v);
                }
            }
        }
    }
    let link = d.lab.exec(ns, &["ip", "-s", "-j", "link", "show", "ntm0"]).map(|o| o.stdout).unwrap_or_default();
    let link: Value = serde_json::from_slice(&link).unwrap_or_default();
    for dir in ["rx", "tx"] {
        for what in ["dropped", "errors", "packets"] {
            if let Some(v) = link[0]["stats64"][dir][what].as_u64() {
                out.insert(format!("ntm0.{dir}_{what}"), v);
            }
        }
    }
    out
}

/// The counters that moved between `before` and `after` among those that show loss.
fn moved(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> String {
    let interesting = ["RetransSegs", "RcvbufErrors", "SndbufErrors", "TCPLost", "Retrans", "dropped", "errors"];
    after
        .iter()
        .filter(|(k, _)| interesting.iter().any(|i| k.contains(i)))
        .filter_map(|(k, v)| {
            let d = v.saturating_sub(before.get(k).copied().unwrap_or(0));
            (d > 0).then(|| format!("{k}={d}"))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Packets dropped by the kernel's per-CPU backlog so far (/proc/net/softnet_stat, the
/// second column: the whole machine, not one namespace).
fn softnet_drops() -> u64 {
    let text = std::fs::read_to_string("/proc/net/softnet_stat").unwrap_or_default();
    text.lines().filter_map(|l| l.split_whitespace().nth(1)).filter_map(|h| u64::from_str_radix(h, 16).ok()).sum()
}

/// One iperf3 run from box a to `dst` (`reverse`: from `dst` to box a): bytes received,
/// the receiver's rate in Gbit/s and the sender's retransmissions as iperf3 reports them.
/// With `stall`, that process (the receiving agent) is stopped for 40 ms every 200 ms
/// while the transfer runs, as a busy box deschedules it.
fn iperf(d: &mut Deployment, dst: &str, reverse: bool, tag: &str, stall: Option<usize>) -> (f64, f64, u64) {
    let a = d.boxes[0].ns.clone();
    let mut cmd = vec!["iperf3", "-c", dst, "-t", SECS, "-J", "--connect-timeout", "3000"];
    if reverse {
        cmd.extend(["-R", "--rcv-timeout", "5000"]);
    }
    let p = d.lab.spawn(&a, tag, &cmd, &[]).expect("iperf3 client");
    if let Some(agent) = stall {
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while d.lab.proc(p).alive() && std::time::Instant::now() < give_up {
            d.lab.proc(agent).signal(19); // SIGSTOP
            std::thread::sleep(std::time::Duration::from_millis(40));
            d.lab.proc(agent).signal(18); // SIGCONT
            std::thread::sleep(std::time::Duration::from_millis(160));
        }
    }
    assert!(d.lab.proc(p).wait(30).is_some(), "iperf3 {tag} ends");
    let log = d.lab.proc(p).log_text();
    let v: Value = serde_json::from_str(&log[log.find('{').unwrap_or(0)..]).expect("iperf3 -J output");
    assert!(v["error"].is_null(), "iperf3 {tag}: {}", v["error"]);
    let r = &v["end"]["sum_received"];
    let bytes = r["bytes"].as_f64().unwrap_or(0.0);
    let gbps = r["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9;
    let retrans = v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
    (bytes, gbps, retrans)
}

/// Box `i`'s agent's super-packets read and written, and coalesced groups of tunnel
/// datagrams received (see `ntmd status`); asserts it dropped nothing: no send error, no
/// unusable TUN read, no tunnel datagram too long for its slot.
fn super_packets(d: &Deployment, i: usize) -> (u64, u64, u64) {
    let s = d.status(i).expect("status");
    let c = &s["counters"];
    let dropped = (c["send_errors"].as_u64(), c["tun_bad"].as_u64(), c["oversized"].as_u64());
    assert_eq!(dropped, (Some(0), Some(0), Some(0)), "box {i}: {c}");
    let n = |k: &str| c[k].as_u64().unwrap_or(0);
    (n("tun_super_in"), n("tun_super_out"), n("udp_groups_in"))
}

#[test]
fn bulk_tcp_through_the_tunnel_with_and_without_tun_offloads() {
    let label = "offload";
    if !tools_or_skip(label, &["iperf3", "ping"]) {
        return;
    }
    let Some(mut d) = or_skip(Deployment::start(label), label) else { return };
    let (a, b) = (d.boxes[0].ns.clone(), d.boxes[1].ns.clone());
    // Offloads on, off, and on with the receiving agent stalled now and then: the tunnel
    // socket's receive buffer must hold what arrives meanwhile. "Off" is the plain path of
    // an old kernel: no TUN offloads and no coalesced groups on the tunnel sockets
    // (`udp_coalescing`; the sender still segments its runs, which the receiving kernel
    // then cuts up).
    for (offload, stalls) in [(true, false), (false, false), (true, true)] {
        d.lab.step(format!("agents with tun.offload and udp_coalescing {offload}, stalls {stalls}"));
        let st = d
            .up_with(|_, _, cfg| {
                cfg["tun"] = serde_json::json!({ "offload": offload });
                cfg["udp_coalescing"] = offload.into();
                cfg["log_level"] = "info".into();
            })
            .expect("both agents register");
        for i in 0..2 {
            let s = d.status(i).expect("status");
            assert_eq!(s["udp_coalescing"].as_bool(), Some(offload), "box {i}: udp_coalescing in status");
        }
        // A server of this configuration's own (see `Lab::iperf_server`).
        let server = d.lab.iperf_server(&b, &format!("iperf-server-{offload}-{stalls}")).expect("iperf3 server");
        let b4 = st[1]["virtual_ipv4"].as_str().expect("b's virtual IPv4").to_string();
        // The name through box a's DNS hook opens the tunnel.
        assert_eq!(d.dig(0, "b.zone-b.test", "A"), b4);
        let reach = || d.lab.try_exec(&a, &["ping", "-c", "1", "-W", "1", &b4]).is_ok_and(|o| o.status.success());
        assert!(d.lab.wait_for(10, reach), "the tunnel to b is up");
        let pids: Vec<u32> = (0..2).filter_map(|i| d.boxes[i].proc.map(|p| d.lab.proc(p).pid())).collect();
        let idle: Vec<u64> = pids.iter().map(|p| proc_kib(*p, "VmRSS")).collect();
        let (ca, cb, soft) = (counters(&d, &a), counters(&d, &b), softnet_drops());
        let (mut total, mut retransmitted) = (0.0, 0);
        let b6 = st[1]["virtual_ipv6"].as_str().expect("b's virtual IPv6").to_string();
        // IPv4 both ways; IPv6 both ways too (TCPv6 super-packets) when not stalling.
        let mut runs = vec![(false, "a->b", &b4)];
        if !stalls {
            runs.extend([(true, "b->a", &b4), (false, "a->b-ipv6", &b6), (true, "b->a-ipv6", &b6)]);
        }
        for (reverse, dir, dst) in runs {
            let (sa, sb) = (counters(&d, &a), counters(&d, &b));
            let stall = if stalls { d.boxes[1].proc } else { None };
            let (bytes, gbps, retrans) = iperf(&mut d, dst, reverse, &format!("iperf-{offload}-{dir}"), stall);
            let sender = if reverse { &b } else { &a };
            let before = if reverse { &sb } else { &sa };
            let kernel = counters(&d, sender)["Tcp.RetransSegs"].saturating_sub(before["Tcp.RetransSegs"]);
            eprintln!(
                "offload {offload}{} {dir}: {gbps:.2} Gbit/s, {:.0} MB, iperf3 retransmits {retrans}, sender's \
                 RetransSegs {kernel}: {:.0} per GB",
                if stalls { " (receiver stalled)" } else { "" },
                bytes / 1e6,
                kernel as f64 / (bytes / 1e9).max(1e-9)
            );
            assert!(bytes > 1e6, "offload {offload} {dir}: the transfer carried data ({bytes} bytes)");
            total += bytes;
            retransmitted += kernel;
        }
        let per_gb = retransmitted as f64 / (total / 1e9);
        assert!(
            per_gb <= RETRANS_PER_GB_MAX,
            "offload {offload}, stalls {stalls}: {retransmitted} TCP retransmissions in {:.0} MB ({per_gb:.0} per GB)",
            total / 1e6
        );
        let peak: Vec<u64> = pids.iter().map(|p| proc_kib(*p, "VmHWM")).collect();
        eprintln!("offload {offload}: {:.0} MB in all; agents' RSS idle {idle:?} KiB, peak {peak:?} KiB", total / 1e6);
        eprintln!("  box a: {}", moved(&ca, &counters(&d, &a)));
        eprintln!("  box b: {}", moved(&cb, &counters(&d, &b)));
        eprintln!("  softnet drops (whole machine): {}", softnet_drops() - soft);
        let (sup_a, sup_b) = (super_packets(&d, 0), super_packets(&d, 1));
        eprintln!("  super-packets read/written, groups received: box a {sup_a:?}, box b {sup_b:?}");
        if stalls {
            assert!(sup_a.0 > 0 && sup_b.1 > 0, "super-packets a->b: a {sup_a:?} b {sup_b:?}");
            assert!(sup_b.2 > 0, "b received a's segmented runs as groups: {sup_b:?}");
        } else if offload {
            // The kernel handed each agent TCP super-packets to cut, and each wrote
            // coalesced ones (both directions ran); each received the other's segmented
            // runs whole.
            assert!(sup_a.0 > 0 && sup_b.0 > 0, "super-packets read: a {sup_a:?} b {sup_b:?}");
            assert!(sup_a.1 > 0 && sup_b.1 > 0, "super-packets written: a {sup_a:?} b {sup_b:?}");
            assert!(sup_a.2 > 0 && sup_b.2 > 0, "groups received: a {sup_a:?} b {sup_b:?}");
        } else {
            assert_eq!((sup_a, sup_b), ((0, 0, 0), (0, 0, 0)), "no offload: one packet per read and write");
        }
        d.lab.proc(server).stop();
        d.stop_agent(0);
        d.stop_agent(1);
    }
}

/// The TUN device's file descriptor in process `pid` (its link is /dev/net/tun).
fn tun_fd(pid: u32) -> String {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("the agent's fds");
    dir.flatten()
        .find(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == "/dev/net/tun"))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .expect("the agent has the TUN device open")
}

/// On an idle tunnel a packet from an application is sent as soon as it is read: the
/// agent's next system call on the path after reading it from the TUN device is the send,
/// not another read of the device (which finds it empty and would delay every packet of a
/// quiet tunnel by one system call; two per ping). Watched with strace on box a's agent
/// while one ping of a size no other packet has goes to box b, offloads on and off.
#[test]
fn an_idle_packet_is_sent_before_the_device_is_read_again() {
    let label = "idlesend";
    if !tools_or_skip(label, &["ping", "strace"]) {
        return;
    }
    let Some(mut d) = or_skip(Deployment::start(label), label) else { return };
    let a = d.boxes[0].ns.clone();
    for offload in [true, false] {
        d.lab.step(format!("agents with tun.offload {offload}"));
        let st = d
            .up_with(|_, _, cfg| cfg["tun"] = serde_json::json!({ "offload": offload }))
            .expect("both agents register");
        let b4 = st[1]["virtual_ipv4"].as_str().expect("b's virtual IPv4").to_string();
        assert_eq!(d.dig(0, "b.zone-b.test", "A"), b4);
        let reach = || d.lab.try_exec(&a, &["ping", "-c", "1", "-W", "1", &b4]).is_ok_and(|o| o.status.success());
        assert!(d.lab.wait_for(10, reach), "the tunnel to b is up");
        let pid = d.boxes[0].proc.map(|p| d.lab.proc(p).pid()).expect("box a's agent");
        let fd = tun_fd(pid);
        let trace = d.lab.dir().join(format!("strace-{offload}.txt"));
        let trace_arg = trace.to_string_lossy().into_owned();
        // In the lab, so that a failing test still stops it (strace then detaches).
        let argv =
            ["strace", "-p", &pid.to_string(), "-e", "trace=read,readv,sendmmsg,sendmsg,sendto", "-o", &trace_arg];
        let strace = d.lab.spawn(&a, &format!("strace-{offload}"), &argv, &[]).expect("strace starts");
        let log = d.lab.proc(strace).log.clone();
        let attached = || std::fs::read_to_string(&log).is_ok_and(|t| t.contains("attached"));
        assert!(d.lab.wait_for(5, attached), "strace attached to {pid}");
        // 1000 bytes of ICMP data: a 1028-byte IPv4 packet, 1038 bytes with the virtio-net
        // header of the offload path.
        let ping = d.lab.try_exec(&a, &["ping", "-c", "1", "-W", "2", "-s", "1000", &b4]);
        assert!(ping.is_ok_and(|o| o.status.success()), "the ping through the tunnel");
        std::thread::sleep(std::time::Duration::from_millis(200));
        d.lab.proc(strace).stop();
        let text = std::fs::read_to_string(&trace).expect("strace's output");
        let on_tun = format!("read({fd}, ");
        let size = if offload { "= 1038" } else { "= 1028" };
        let mut lines = text.lines().filter(|l| l.starts_with(&on_tun) || l.starts_with("send"));
        assert!(
            lines.any(|l| l.starts_with(&on_tun) && l.trim_end().ends_with(size)),
            "offload {offload}: the agent read the ping's packet from fd {fd}:\n{text}"
        );
        let next = lines.next().unwrap_or("(nothing)");
        assert!(
            next.starts_with("sendmmsg("),
            "offload {offload}: after the ping's packet came {next}, not its send:\n{text}"
        );
        d.stop_agent(0);
        d.stop_agent(1);
    }
}
