//! An outsider's checks of issue 16 (TUN offloads, batched sealing, the RS's batched relay
//! and workers) on a topology the other tests do not use: box a behind a home NAT behind
//! a carrier-grade NAT (100.64.0.0/10, symmetric home NAT), IPv4 only, with a TUN MTU of
//! 1280; box b IPv6-only with a TUN MTU of 9000. Their tunnel goes through the RS, which
//! runs with `workers: 2`. For every combination of `tun.offload` on the two boxes, files
//! of known content cross the tunnel both ways over both virtual families and must arrive
//! byte for byte; pings of sizes around the MTUs, iperf3 with many streams, an odd MSS and
//! big UDP datagrams run; and an attacker on the router floods the RS with junk and sends
//! box b replayed and forged tunnel datagrams during a transfer. Needs root, NSD, dig,
//! socat, iperf3, tcpdump; the binaries come from `cargo build --release --workspace --bins`
//! (or `NTM_BIN_DIR`). `--nocapture` prints every figure.

#![allow(clippy::print_stderr)]

use ntm_lab::deploy::{or_skip, payload, read_status, Access, Deployment, NatKind};
use ntm_lab::tools_or_skip;
use serde_json::Value;
use std::time::{Duration, Instant};

const B: &str = "b.zone-b.test";
const A: &str = "a.zone-a.test";
const PORT: &str = "5001";

/// The agent counters of box `i` that are not zero.
fn nonzero(d: &Deployment, i: usize) -> String {
    let s = d.status(i).unwrap_or_default();
    let mut out = Vec::new();
    for group in ["counters", "dropped"] {
        if let Some(m) = s[group].as_object() {
            for (k, v) in m {
                if v.as_u64().is_some_and(|v| v > 0) {
                    out.push(format!("{group}.{k}={v}"));
                }
            }
        }
    }
    out.join(" ")
}

fn counter(d: &Deployment, i: usize, name: &str) -> u64 {
    let s = d.status(i).unwrap_or_default();
    s["counters"][name].as_u64().or_else(|| s["dropped"][name].as_u64()).unwrap_or(0)
}

/// Sends `data` with socat from box `from` to a socat listener in box `to` at `dst` (a
/// virtual address of `to`); returns what arrived and how long it took.
fn transfer(d: &mut Deployment, from: usize, to: usize, dst: &str, data: &[u8], tag: &str) -> (Vec<u8>, Duration) {
    let dir = d.lab.dir().to_path_buf();
    let src = dir.join(format!("send-{tag}"));
    let dst_file = dir.join(format!("recv-{tag}"));
    std::fs::write(&src, data).expect("write the file to send");
    let v6 = dst.contains(':');
    let listen = if v6 { "TCP6-LISTEN" } else { "TCP4-LISTEN" };
    let cmd = format!("socat -u {listen}:{PORT},reuseaddr OPEN:{},creat,trunc", dst_file.display());
    let (to_ns, from_ns) = (d.boxes[to].ns.clone(), d.boxes[from].ns.clone());
    let l = d.lab.spawn(&to_ns, &format!("listen-{tag}"), &["sh", "-c", &cmd], &[]).expect("socat listener");
    let listening =
        || d.lab.try_exec(&to_ns, &["ss", "-ltnH", &format!("sport = :{PORT}")]).is_ok_and(|o| !o.stdout.is_empty());
    assert!(d.lab.wait_for(5, listening), "{tag}: the listener is up");
    let target = if v6 { format!("TCP:[{dst}]:{PORT}") } else { format!("TCP:{dst}:{PORT}") };
    let t0 = Instant::now();
    let out = d
        .lab
        .try_exec(&from_ns, &["timeout", "60", "socat", "-u", &format!("OPEN:{}", src.display()), &target])
        .expect("socat sender");
    let done = d.lab.proc(l).wait(60);
    let took = t0.elapsed();
    assert!(out.status.success(), "{tag}: the sender: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(done, Some(0), "{tag}: the listener ends");
    (std::fs::read(&dst_file).unwrap_or_default(), took)
}

/// `ping` in box `i`: (success, a short summary of its output).
fn ping(d: &Deployment, i: usize, args: &[&str]) -> (bool, String) {
    let mut cmd = vec!["ping", "-c", "3", "-i", "0.2", "-W", "1"];
    cmd.extend(args);
    let o = d.lab.try_exec(&d.boxes[i].ns, &cmd).expect("ping runs");
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    let summary: Vec<&str> =
        text.lines().filter(|l| l.contains("transmitted") || l.contains("too") || l.contains("Frag")).collect();
    (o.status.success(), summary.join(" | "))
}

/// iperf3 -J from box a with `args`: (receiver's Mbit/s, sender's retransmits, lost
/// datagrams percent for UDP, error).
fn iperf(d: &Deployment, args: &[&str]) -> (f64, u64, f64, String) {
    let mut cmd = vec!["timeout", "40", "iperf3", "-J", "--connect-timeout", "3000", "-t", "3"];
    cmd.extend(args);
    let o = d.lab.try_exec(&d.boxes[0].ns, &cmd).expect("iperf3 runs");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    let end = &v["end"];
    let (rate, lost) = if end["sum"]["lost_percent"].is_number() {
        (end["sum"]["bits_per_second"].as_f64().unwrap_or(0.0), end["sum"]["lost_percent"].as_f64().unwrap_or(0.0))
    } else {
        (end["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0), 0.0)
    };
    let err = v["error"].as_str().unwrap_or("").to_string();
    (rate / 1e6, end["sum_sent"]["retransmits"].as_u64().unwrap_or(0), lost, err)
}

fn rs_status(d: &Deployment) -> Value {
    read_status(&d.lab.dir().join("rs.sock")).unwrap_or_default()
}

#[test]
fn cgn_box_to_ipv6_box_relayed_by_two_workers_with_every_offload_combination() {
    let label = "outsider16";
    if !tools_or_skip(label, &["dig", "ping", "socat", "iperf3", "tcpdump", "ss"]) {
        return;
    }
    let access = [Access::DoubleNat(NatKind::Symmetric), Access::Global6];
    let Some(mut d) = or_skip(Deployment::start_with(label, access), label) else { return };
    d.restart_server_with("rs", |c| c["workers"] = 2.into()).expect("the RS starts with 2 workers");
    let data = payload(8 << 20, 16);
    let mut failures = Vec::new();
    for (oa, ob) in [(true, true), (false, true), (true, false), (false, false)] {
        d.lab.step(format!("offload a {oa}, b {ob}; TUN MTU a 1280, b 9000"));
        let st = d
            .up_with(|_, i, c| {
                c["tun"] = serde_json::json!({ "offload": if i == 0 { oa } else { ob }, "mtu": if i == 0 { 1280 } else { 9000 } });
                c["log_level"] = "info".into();
            })
            .expect("both boxes register");
        let (a4, a6) =
            (st[0]["virtual_ipv4"].as_str().unwrap().to_string(), st[0]["virtual_ipv6"].as_str().unwrap().to_string());
        let (b4, b6) =
            (st[1]["virtual_ipv4"].as_str().unwrap().to_string(), st[1]["virtual_ipv6"].as_str().unwrap().to_string());
        let answer = d.dig(0, B, "A");
        assert!(answer.ends_with(&b4), "a resolves b: {answer}");
        assert!(d.lab.wait_for(15, || d.ping(0, &b4, 1)), "a reaches b");
        assert!(d.wait_path(0, B, "relay", 10), "relayed");
        // b learns a's name too (the tunnel exists; this only exercises the hook).
        let _ = d.dig(1, A, "AAAA");
        let tag = format!("{}{}", u8::from(oa), u8::from(ob));
        for (from, to, dst) in [(0, 1, &b4), (1, 0, &a4), (0, 1, &b6), (1, 0, &a6)] {
            let t = format!("{tag}-{from}to{to}-{}", if dst.contains(':') { "v6" } else { "v4" });
            let (got, took) = transfer(&mut d, from, to, dst, &data, &t);
            let same = got == data;
            let first_bad = got.iter().zip(&data).position(|(x, y)| x != y);
            eprintln!(
                "transfer {t}: {} of {} bytes, identical {same}, first difference {first_bad:?}, {:.2} s ({:.0} Mbit/s)",
                got.len(),
                data.len(),
                took.as_secs_f64(),
                data.len() as f64 * 8.0 / 1e6 / took.as_secs_f64()
            );
            if !same {
                failures.push(format!("transfer {t}: {} bytes, first difference {first_bad:?}", got.len()));
            }
        }
        for (i, args) in [
            (0, vec!["-M", "do", "-s", "1252", b4.as_str()]),
            (0, vec!["-M", "do", "-s", "1253", b4.as_str()]),
            (1, vec!["-M", "do", "-s", "1372", a4.as_str()]),
            (1, vec!["-M", "do", "-s", "1472", a4.as_str()]),
            (1, vec!["-s", "8000", a4.as_str()]),
            (1, vec!["-s", "1400", a6.as_str()]),
            (1, vec!["-s", "8000", a6.as_str()]),
            (0, vec!["-s", "4000", b4.as_str()]),
            (0, vec!["-s", "4000", b6.as_str()]),
        ] {
            let (ok, text) = ping(&d, i, &args);
            eprintln!("{tag} box {i} ping {}: ok {ok}: {text}", args.join(" "));
        }
        // The iperf3 battery (figures only; the counters below are checked) where box b
        // takes offloads, box a with and without: the other two combinations have their
        // known-content transfers only, to keep the test's time down.
        if ob {
            iperf_battery(&mut d, &tag, &b4, &b6);
        }
        let rs = rs_status(&d);
        let per_worker: Vec<u64> =
            rs["workers"].as_array().unwrap_or(&Vec::new()).iter().filter_map(|w| w["relayed"].as_u64()).collect();
        let sessions: u64 =
            rs["sessions"].as_array().map(|a| a.iter().filter_map(|s| s["relayed"].as_u64()).sum()).unwrap_or(0);
        eprintln!("{tag} RS: per worker {per_worker:?}, sessions {sessions}, dropped {}", rs["dropped"]);
        for i in 0..2 {
            eprintln!("{tag} box {i}: {}", nonzero(&d, i));
            for c in ["send_errors", "tun_bad"] {
                let v = counter(&d, i, c);
                if v > 0 {
                    failures.push(format!("{tag} box {i}: {c} = {v}"));
                }
            }
        }
        if (oa, ob) == (true, true) {
            attack(&mut d, &b4, &data, &mut failures);
        }
        d.stop_agent(0);
        d.stop_agent(1);
    }
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
}

/// iperf3 runs from box a to box b (one stream both ways, 8 streams, MSS 500, big and
/// small UDP datagrams), printed.
fn iperf_battery(d: &mut Deployment, tag: &str, b4: &str, b6: &str) {
    d.lab.step("iperf3 runs");
    let srv = d.lab.iperf_server(&d.boxes[1].ns.clone(), &format!("iperf-s-{tag}")).unwrap();
    for args in [
        vec!["-c", b4],
        vec!["-c", b4, "-R"],
        vec!["-c", b4, "-P", "8"],
        vec!["-c", b6, "-M", "500"],
        vec!["-c", b4, "-u", "-l", "8000", "-b", "200M", "-R"],
        vec!["-c", b4, "-u", "-l", "1200", "-b", "200M"],
        vec!["-c", b6, "-u", "-l", "1200", "-b", "200M", "-R"],
    ] {
        let (mbit, retrans, lost, err) = iperf(d, &args);
        eprintln!("{tag} iperf3 {}: {mbit:.0} Mbit/s, retransmits {retrans}, lost {lost:.1}% {err}", args.join(" "));
    }
    d.lab.proc(srv).stop();
}

/// During transfers a->b: junk at the RS from the router, then box b's captured tunnel
/// datagrams replayed and forged at box b. The data must arrive intact.
fn attack(d: &mut Deployment, b4: &str, data: &[u8], failures: &mut Vec<String>) {
    let rtr = d.rtr.clone();
    let flood = d.bins.join("ntm-flood").to_string_lossy().into_owned();
    d.lab.step("capture on the router during a transfer");
    let pcap = d.lab.dir().join("attack.pcap");
    let cap = d
        .lab
        .spawn(
            &rtr,
            "tcpdump-attack",
            &["tcpdump", "-n", "-U", "-s", "0", "-i", "any", "-w", pcap.to_str().unwrap(), "udp"],
            &[],
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let (got, took) = transfer(d, 0, 1, b4, &data[..1 << 20], "capture");
    assert_eq!(got, data[..1 << 20], "the captured transfer");
    // The relay sends runs of datagrams as one segmented message, which the capture sees
    // as one; pings give single datagrams.
    let a = d.boxes[0].ns.clone();
    let _ = d.lab.try_exec(&a, &["ping", "-c", "300", "-i", "0.002", "-s", "1000", "-q", b4]);
    std::thread::sleep(Duration::from_millis(300));
    d.lab.proc(cap).signal(2);
    d.lab.proc(cap).wait(5);
    let to_b: Vec<Vec<u8>> = ntm_lab::pcap::udp_datagrams(&std::fs::read(&pcap).unwrap_or_default())
        .into_iter()
        .filter(|(a, _)| a.to_string() == "[2001:db8:b::2]:4500")
        .map(|(_, p)| p)
        .collect();
    eprintln!("captured {} datagrams to box b in {:.2} s", to_b.len(), took.as_secs_f64());
    assert!(to_b.len() > 200, "tunnel datagrams to b captured");
    let hex: String =
        to_b.iter().take(2000).map(|p| p.iter().map(|b| format!("{b:02x}")).collect::<String>() + "\n").collect();
    let file = d.lab.dir().join("replay-b.hex");
    std::fs::write(&file, hex).unwrap();
    let file = file.to_string_lossy().into_owned();

    let rs_before = rs_status(d);
    let b_before = d.status(1).unwrap_or_default();
    d.lab.step("junk at the RS, replays and forgeries at box b, during a transfer a->b");
    let jobs = [
        vec![flood.as_str(), "junk", "192.0.2.30:4461", "300000", "6"],
        vec![flood.as_str(), "replay", "[2001:db8:b::2]:4500", &file, "200000", "6"],
        vec![flood.as_str(), "forge", "[2001:db8:b::2]:4500", &file, "200000", "6"],
        vec![flood.as_str(), "junk", "[2001:db8:b::2]:4500", "200000", "6"],
    ];
    let procs: Vec<usize> =
        jobs.iter().enumerate().map(|(n, j)| d.lab.spawn(&rtr, &format!("flood-{n}"), j, &[]).unwrap()).collect();
    let (got, took) = transfer(d, 0, 1, b4, data, "under-attack");
    let mut sent = Vec::new();
    for p in procs {
        d.lab.proc(p).wait(20);
        sent.push(d.lab.proc(p).log_text().trim().to_string());
    }
    let same = got == data;
    eprintln!(
        "transfer under attack: {} bytes, identical {same}, {:.2} s ({:.0} Mbit/s); floods: {sent:?}",
        got.len(),
        took.as_secs_f64(),
        data.len() as f64 * 8.0 / 1e6 / took.as_secs_f64()
    );
    if !same {
        failures.push("the transfer under attack was corrupted".into());
    }
    let rs = rs_status(d);
    eprintln!("RS dropped before {} after {}", rs_before["dropped"], rs["dropped"]);
    let b = d.status(1).unwrap_or_default();
    eprintln!("box b dropped before {} after {}", b_before["dropped"], b["dropped"]);
    eprintln!("box b counters after {}", b["counters"]);
    let ok = d.lab.wait_for(5, || read_status(&d.lab.dir().join("rs.sock")).is_some());
    if !ok {
        failures.push("the RS's status socket does not answer after the flood".into());
    }
}

/// Adds an IPv6-only box named `NAME.zone-b.test` on its own link to the router
/// (2001:db8:N::2/64), with a certificate and an account; its index in `d.boxes`.
fn add_v6_box(d: &mut Deployment, name: &str, net: &str) -> usize {
    use ntm_lab::deploy::NodeBox;
    let fqdn = format!("{name}.zone-b.test");
    let bx = d.lab.netns(name, false).expect("namespace");
    let rtr = d.rtr.clone();
    let rif = format!("{name}0");
    d.lab.link(&bx, "eth0", &rtr, &rif).expect("link");
    d.lab.addr(&rtr, &rif, &format!("{net}::1/64")).expect("router address");
    d.lab.addr(&bx, "eth0", &format!("{net}::2/64")).expect("box address");
    d.lab.route(&bx, &["default", "via", &format!("{net}::1")]).expect("route");
    let (cert, key) = d.issue("node", &fqdn).expect("certificate");
    let dir = d.lab.dir().to_path_buf();
    let as_cfg = dir.join("as.json").to_string_lossy().into_owned();
    let email = format!("owner@{fqdn}");
    let password = format!("a passphrase for {fqdn}");
    let password_file = dir.join(format!("{name}.password"));
    std::fs::write(&password_file, format!("{password}\n")).unwrap();
    let args =
        ["account", "add", "-c", &as_cfg, "--email", &email, "--fqdn", &fqdn, "--device", &fqdn, "--password-stdin"];
    d.admin_with_stdin(&args, &password).expect("account");
    d.lab.resolv_conf(&bx, "nameserver 127.0.0.53\n").expect("resolv.conf");
    let label = bx.label.clone();
    d.boxes.push(NodeBox {
        ns: bx,
        access: Access::Global6,
        ipv4: None,
        ipv6: Some(format!("{net}::2")),
        nat: None,
        cgn: None,
        fqdn,
        cert,
        key,
        email,
        password_file,
        config: dir.join(format!("ntmd-{label}.json")),
        status: dir.join(format!("ntmd-{label}.sock")),
        proc: None,
    });
    d.boxes.len() - 1
}

#[test]
fn four_relayed_sessions_at_once_through_two_workers() {
    four_relayed_sessions(2);
}

#[test]
fn four_relayed_sessions_at_once_through_one_worker() {
    four_relayed_sessions(1);
}

/// Box a (IPv4 only, behind the CGN) and four IPv6-only boxes: four sessions through the
/// RS with `workers`, iperf3 to all four at once both ways; no session starved, no
/// budget drops, each session on the worker its id steers to, the counts add up.
fn four_relayed_sessions(workers: u64) {
    let label = format!("outsider16c{workers}");
    let label = label.as_str();
    if !tools_or_skip(label, &["dig", "ping", "iperf3", "ss"]) {
        return;
    }
    let access = [Access::DoubleNat(NatKind::Symmetric), Access::Global6];
    let Some(mut d) = or_skip(Deployment::start_with(label, access), label) else { return };
    d.restart_server_with("rs", |c| c["workers"] = workers.into()).expect("the RS starts with its workers");
    let extra: Vec<usize> = [("c", "2001:db8:c"), ("d", "2001:db8:d"), ("e", "2001:db8:e")]
        .iter()
        .map(|(n, net)| add_v6_box(&mut d, n, net))
        .collect();
    d.up_with(|_, _, c| c["log_level"] = "info".into()).expect("a and b register");
    for &i in &extra {
        let mut cfg = d.agent_config(i);
        cfg["log_level"] = "info".into();
        d.start_agent(i, &cfg).expect("agent");
    }
    let peers: Vec<usize> = std::iter::once(1).chain(extra.iter().copied()).collect();
    let mut dsts = Vec::new();
    for &i in &peers {
        let st = d.wait_registered(i, 30).expect("registers");
        let v4 = st["virtual_ipv4"].as_str().unwrap().to_string();
        let fqdn = d.boxes[i].fqdn.clone();
        assert!(d.dig(0, &fqdn, "A").ends_with(&v4), "a resolves {fqdn}");
        assert!(d.lab.wait_for(15, || d.ping(0, &v4, 1)), "a reaches {fqdn}");
        assert!(d.wait_path(0, &fqdn, "relay", 10), "{fqdn} relayed");
        let ns = d.boxes[i].ns.clone();
        d.lab.iperf_server(&ns, &format!("iperf-s-{i}")).unwrap();
        dsts.push(v4);
    }
    let rs0 = rs_status(&d);
    eprintln!("RS sessions: {}", rs0["sessions"]);
    let mut failures = Vec::new();
    for reverse in [false, true] {
        d.lab.step(format!("four iperf3 at once from a, reverse {reverse}"));
        let a = d.boxes[0].ns.clone();
        let procs: Vec<usize> = dsts
            .iter()
            .enumerate()
            .map(|(n, dst)| {
                let mut cmd = vec!["iperf3", "-c", dst.as_str(), "-t", "4", "-J", "--connect-timeout", "3000"];
                if reverse {
                    cmd.push("-R");
                }
                d.lab.spawn(&a, &format!("iperf-{reverse}-{n}"), &cmd, &[]).unwrap()
            })
            .collect();
        let mut rates = Vec::new();
        for p in procs {
            d.lab.proc(p).wait(30);
            let log = d.lab.proc(p).log_text();
            let v: Value = serde_json::from_str(&log[log.find('{').unwrap_or(0)..]).unwrap_or_default();
            let rate = v["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0) / 1e6;
            let retrans = v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
            let zero_secs = v["intervals"]
                .as_array()
                .map(|a| a.iter().filter(|i| i["sum"]["bytes"].as_u64() == Some(0)).count())
                .unwrap_or(99);
            rates.push((rate.round(), retrans, zero_secs));
        }
        let stale: Vec<u64> = (0..d.boxes.len()).map(|i| counter(&d, i, "stale")).collect();
        eprintln!("workers {workers}, reverse {reverse}: stale drops per box so far {stale:?}");
        eprintln!(
            "workers {workers}, reverse {reverse}: (Mbit/s, retransmits, seconds with nothing) per session: {rates:?}"
        );
        let total: f64 = rates.iter().map(|r| r.0).sum();
        // Lossless links and a budget above what these streams carry: TCP should
        // retransmit next to nothing (relay_workers.rs allows 100 per GB).
        let retrans: u64 = rates.iter().map(|r| r.1).sum();
        let per_gb = retrans as f64 / (total * 4.0 / 8.0 / 1000.0);
        if per_gb > 100.0 {
            failures.push(format!(
                "workers {workers}, reverse {reverse}: {retrans} TCP retransmissions, {per_gb:.0} per GB"
            ));
        }
        for (n, r) in rates.iter().enumerate() {
            if r.0 < total / 4.0 / 4.0 || r.2 > 0 {
                failures.push(format!("reverse {reverse}: session {n} starved: {r:?} of {total} Mbit/s"));
            }
        }
    }
    let rs = rs_status(&d);
    let sessions = rs["sessions"].as_array().cloned().unwrap_or_default();
    let per_worker: Vec<u64> =
        rs["workers"].as_array().unwrap_or(&Vec::new()).iter().filter_map(|w| w["relayed"].as_u64()).collect();
    let by_session: u64 = sessions.iter().filter_map(|s| s["relayed"].as_u64()).sum();
    eprintln!(
        "RS: {} sessions, per worker {per_worker:?} (sum {}), sessions' sum {by_session}, dropped {}",
        sessions.len(),
        per_worker.iter().sum::<u64>(),
        rs["dropped"]
    );
    for s in &sessions {
        eprintln!("  session {} relayed {} workers {}", s["session"], s["relayed"], s["workers"]);
        let id = u32::from_str_radix(s["session"].as_str().unwrap_or_default(), 16).unwrap_or(0);
        if s["workers"] != serde_json::json!([u64::from(id) % workers]) && s["relayed"].as_u64().unwrap_or(0) > 0 {
            failures.push(format!("session {id:08x} on workers {}", s["workers"]));
        }
    }
    if per_worker.iter().sum::<u64>() != by_session {
        failures.push(format!("workers' relayed {per_worker:?} do not add up to the sessions' {by_session}"));
    }
    if rs["dropped"]["limit"].as_u64().unwrap_or(0) > 0 {
        failures.push(format!("RS dropped over the budget: {}", rs["dropped"]));
    }
    for i in 0..d.boxes.len() {
        eprintln!("box {i}: {}", nonzero(&d, i));
    }
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
}

#[test]
fn a_small_session_budget_is_counted_and_the_stream_goes_on() {
    let label = "outsider16e";
    if !tools_or_skip(label, &["dig", "ping", "iperf3"]) {
        return;
    }
    let Some(mut d) = or_skip(Deployment::start_with(label, [Access::Global4, Access::Global6]), label) else {
        return;
    };
    d.restart_server_with("rs", |c| {
        c["workers"] = 2.into();
        c["max_session_pps"] = 20_000.into();
    })
    .expect("the RS restarts");
    let st = d.up_with(|_, _, c| c["log_level"] = "info".into()).expect("both boxes register");
    let b4 = st[1]["virtual_ipv4"].as_str().unwrap().to_string();
    assert!(d.dig(0, B, "A").ends_with(&b4));
    assert!(d.lab.wait_for(15, || d.ping(0, &b4, 1)), "a reaches b");
    assert!(d.wait_path(0, B, "relay", 10), "relayed");
    let b = d.boxes[1].ns.clone();
    d.lab.iperf_server(&b, "iperf-s").unwrap();
    let (mbit, retrans, _, err) = iperf(&d, &["-c", &b4]);
    let rs = rs_status(&d);
    eprintln!("budget 20000 pps: {mbit:.0} Mbit/s, {retrans} retransmits {err}; RS dropped {}", rs["dropped"]);
    // 20 000 datagrams a second both ways, about 1/3 of them ACKs: about 200 Mbit/s at most.
    assert!(mbit > 1.0 && mbit < 300.0, "{mbit} Mbit/s");
    assert!(rs["dropped"]["limit"].as_u64().unwrap_or(0) > 0, "{rs}");
}
