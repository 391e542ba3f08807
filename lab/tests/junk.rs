//! An outside attacker at every UDP port: junk, and real datagrams captured on the path and
//! sent again. Afterwards every daemon is alive and small, the replays were refused (no
//! message is acted on twice), and a box still logs in, registers and reaches its peer.

#![allow(clippy::print_stderr)]

use ntm_lab::deploy::{or_skip, read_status, Deployment};
use ntm_lab::{proc_kib, tools_or_skip};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn dropped_total(status: &serde_json::Value) -> u64 {
    status["dropped"].as_object().map_or(0, |m| m.values().filter_map(serde_json::Value::as_u64).sum())
}

#[test]
fn junk_and_replayed_datagrams_at_every_udp_port_leave_every_daemon_alive_small_and_serving() {
    const LABEL: &str = "junk";
    if !tools_or_skip(LABEL, &["tcpdump", "ping", "dig"]) {
        return;
    }
    let Some(mut d) = or_skip(Deployment::start(LABEL), LABEL) else { return };
    let (rtr, srv) = (d.rtr.clone(), d.srv.clone());
    // Every UDP datagram from the start: between the servers (inside their namespace) and
    // crossing the router (boxes to servers, box to box). Logins are TLS over TCP.
    let mut caps = Vec::new();
    for (ns, label) in [(&srv, "srv"), (&rtr, "rtr")] {
        let pcap = d.lab.dir().join(format!("udp-{label}.pcap"));
        let cmd = ["tcpdump", "-n", "-U", "-s", "0", "-i", "any", "-w", pcap.to_str().unwrap(), "udp"];
        caps.push((d.lab.spawn(ns, &format!("tcpdump-{label}"), &cmd, &[]).unwrap(), pcap));
    }
    std::thread::sleep(Duration::from_millis(500));
    let [_, sb] = d
        .up_with(|_, i, cfg| {
            if i == 1 {
                cfg["keepalive"] = "ns".into();
            }
        })
        .expect("both boxes register");
    let b4 = sb["virtual_ipv4"].as_str().unwrap().to_string();
    assert_eq!(d.dig(0, "b.zone-b.test", "A"), b4);
    assert!(d.ping(0, &b4, 3), "ping before");
    // A DC hears from the NS and the RS at least when it sends them something: a name
    // looked up again after the tunnel's key is known is enough for the NS (box b is
    // NS-kept, so its tunnel's Route Direction went through it).
    std::thread::sleep(Duration::from_millis(300));
    for (p, _) in &caps {
        d.lab.proc(*p).signal(2);
        d.lab.proc(*p).wait(5);
    }

    // The captured datagrams to the servers' and the boxes' ports, each once.
    let ports = [4460, 4461, 4462, 4500];
    let mut by_dst: BTreeMap<SocketAddr, Vec<Vec<u8>>> = BTreeMap::new();
    let all = caps.iter().flat_map(|(_, pcap)| ntm_lab::pcap::udp_datagrams(&std::fs::read(pcap).expect("capture")));
    for (dst, payload) in all {
        let list = by_dst.entry(dst).or_default();
        if ports.contains(&dst.port()) && !list.contains(&payload) {
            list.push(payload);
        }
    }
    by_dst.retain(|_, l| !l.is_empty());
    let captured: usize = by_dst.values().map(Vec::len).sum();
    eprintln!("captured {captured} datagrams to {} addresses: {:?}", by_dst.len(), by_dst.keys().collect::<Vec<_>>());
    assert!(by_dst.keys().any(|a| a.port() == 4460), "DC traffic was captured");
    assert!(by_dst.keys().any(|a| a.port() == 4500), "tunnel traffic was captured");

    let servers: Vec<(String, u32)> =
        d.servers.clone().into_iter().map(|(label, _, p)| (label, d.lab.proc(p).pid())).collect();
    let rss_before: Vec<u64> = servers.iter().map(|(_, pid)| proc_kib(*pid, "VmRSS")).collect();
    let agent_pids: Vec<u32> = (0..2).map(|i| d.lab.proc(d.boxes[i].proc.unwrap()).pid()).collect();
    let agent_rss_before: Vec<u64> = agent_pids.iter().map(|p| proc_kib(*p, "VmRSS")).collect();
    let status_of = |d: &Deployment, label: &str| read_status(&d.lab.dir().join(format!("{label}.sock")));
    let dropped_before: Vec<u64> =
        servers.iter().map(|(l, _)| status_of(&d, l).map_or(0, |s| dropped_total(&s))).collect();

    let bin = d.bins.join("ntm-flood");
    let bin = bin.to_str().unwrap().to_string();
    let run_floods = |d: &mut Deployment, jobs: Vec<(String, Vec<String>)>| -> u64 {
        let procs: Vec<usize> = jobs
            .iter()
            .map(|(label, args)| {
                let mut cmd = vec![bin.as_str()];
                cmd.extend(args.iter().map(String::as_str));
                d.lab.spawn(&rtr, label, &cmd, &[]).unwrap()
            })
            .collect();
        let mut sent = 0;
        for p in procs {
            d.lab.proc(p).wait(30);
            sent += d.lab.proc(p).log_text().split_whitespace().nth(1).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        }
        sent
    };
    let stale =
        |d: &Deployment, label: &str| status_of(d, label).and_then(|s| s["dropped"]["stale"].as_u64()).unwrap_or(0);
    let server_at = |a: &SocketAddr| match a.to_string().as_str() {
        "192.0.2.21:4460" | "[2001:db8:2::21]:4460" => Some("dc-a"),
        "192.0.2.22:4460" | "[2001:db8:2::22]:4460" => Some("dc-b"),
        "192.0.2.30:4461" | "[2001:db8:2::30]:4461" => Some("rs"),
        "192.0.2.40:4462" => Some("ns"),
        _ => None,
    };

    d.lab.step("every captured datagram sent again 20 times, from the router");
    let stale_before: Vec<u64> = ["dc-a", "dc-b", "rs", "ns"].iter().map(|l| stale(&d, l)).collect();
    let box_stale_before: Vec<u64> =
        (0..2).map(|i| d.status(i).and_then(|s| s["dropped"]["stale"].as_u64()).unwrap_or(0)).collect();
    let mut jobs = Vec::new();
    let mut expected: BTreeMap<&str, u64> = BTreeMap::new();
    for (n, (dst, list)) in by_dst.iter().enumerate() {
        let file = d.lab.dir().join(format!("replay-{n}.hex"));
        let hex: String =
            list.iter().map(|p| p.iter().map(|b| format!("{b:02x}")).collect::<String>() + "\n").collect();
        std::fs::write(&file, hex).unwrap();
        let count = list.len() * 20;
        if let Some(l) = server_at(dst) {
            *expected.entry(l).or_default() += count as u64;
        }
        let args = ["replay", &dst.to_string(), file.to_str().unwrap(), &count.to_string(), "5"].map(String::from);
        jobs.push((format!("replay-{n}"), args.to_vec()));
    }
    let sent = run_floods(&mut d, jobs);
    std::thread::sleep(Duration::from_millis(500));
    eprintln!("replayed {sent} datagrams; expected at the servers: {expected:?}");
    // Every replay is refused as one (authentic, its counter seen): none is acted on again.
    for (k, l) in ["dc-a", "dc-b", "rs", "ns"].iter().enumerate() {
        let got = stale(&d, l) - stale_before[k];
        let want = expected.get(l).copied().unwrap_or(0);
        eprintln!("{l}: {got} of {want} replays refused as stale");
        assert!(got >= want * 9 / 10, "{l} refuses every replay as stale: {got} of {want}");
    }
    for (i, before) in box_stale_before.iter().enumerate() {
        let got = d.status(i).and_then(|s| s["dropped"]["stale"].as_u64()).unwrap_or(0) - before;
        eprintln!("box {i}: {got} replays refused as stale");
        assert!(got > 0, "box {i} refuses replays");
    }

    d.lab.step("the same datagrams forged (a new counter, one bit changed), 20 times each");
    let dropped = |d: &Deployment, label: &str, why: &str| {
        status_of(d, label).and_then(|s| s["dropped"][why].as_u64()).unwrap_or(0)
    };
    let crypto_before: Vec<u64> = ["dc-a", "dc-b", "rs", "ns"].iter().map(|l| dropped(&d, l, "crypto")).collect();
    let jobs = by_dst
        .iter()
        .enumerate()
        .map(|(n, (dst, list))| {
            let file = d.lab.dir().join(format!("replay-{n}.hex"));
            let args = ["forge", &dst.to_string(), file.to_str().unwrap(), &(list.len() * 20).to_string(), "5"];
            (format!("forge-{n}"), args.map(String::from).to_vec())
        })
        .collect();
    run_floods(&mut d, jobs);
    std::thread::sleep(Duration::from_millis(500));
    for (k, l) in ["dc-a", "dc-b", "rs", "ns"].iter().enumerate() {
        let got = dropped(&d, l, "crypto") - crypto_before[k];
        let want = expected.get(l).copied().unwrap_or(0);
        eprintln!("{l}: {got} of {want} forgeries refused by the tag check");
        assert!(got >= want * 9 / 10, "{l} refuses every forgery: {got} of {want}");
    }
    // A forged counter far ahead did not move the replay windows: the boxes still talk.
    assert!(d.ping(0, &b4, 3), "ping after the forgeries");

    d.lab.step("junk at every UDP port, from the router");
    let t = Instant::now();
    let targets = [
        "192.0.2.21:4460",
        "192.0.2.22:4460",
        "192.0.2.30:4461",
        "192.0.2.40:4462",
        "198.51.100.2:4500",
        "203.0.113.2:4500",
    ];
    let jobs = targets
        .iter()
        .enumerate()
        .map(|(n, dst)| (format!("junk-{n}"), ["junk", dst, "30000", "5"].map(String::from).to_vec()))
        .collect();
    let sent = run_floods(&mut d, jobs);
    eprintln!("sent {sent} junk datagrams in {:?}", t.elapsed());
    std::thread::sleep(Duration::from_secs(1));

    // Every daemon alive, small, and counting what it refused.
    for (k, (label, pid)) in servers.iter().enumerate() {
        let (_, _, p) = d.servers[k].clone();
        assert!(d.lab.proc(p).alive(), "{label} survives");
        let after = proc_kib(*pid, "VmRSS");
        let s = status_of(&d, label).unwrap_or_else(|| panic!("{label} answers its status"));
        let dropped = dropped_total(&s) - dropped_before[k];
        eprintln!("{label}: {} KiB -> {after} KiB; dropped {dropped}: {}", rss_before[k], s["dropped"]);
        assert!(after < rss_before[k] + 4096, "{label} stays small: {} KiB -> {after} KiB", rss_before[k]);
        if label != "as" {
            assert!(dropped > 1000, "{label} drops and counts junk and replays: {}", s["dropped"]);
        }
    }
    for (i, pid) in agent_pids.iter().enumerate() {
        let after = proc_kib(*pid, "VmRSS");
        eprintln!("box {i}: {} KiB -> {after} KiB", agent_rss_before[i]);
        assert!(d.lab.proc(d.boxes[i].proc.unwrap()).alive(), "box {i}'s agent survives");
        assert!(after < agent_rss_before[i] + 4096, "box {i} stays small");
    }

    d.lab.step("the boxes still work, and box a logs in and registers again");
    assert!(d.ping(0, &b4, 3), "ping after");
    d.stop_agent(0);
    let t = Instant::now();
    let cfg = d.agent_config(0);
    d.start_agent(0, &cfg).unwrap();
    d.wait_registered(0, 20).expect("box a registers again");
    eprintln!("box a logged in and registered again in {:?}", t.elapsed());
    assert_eq!(d.dig(0, "b.zone-b.test", "A"), b4);
    assert!(d.ping(0, &b4, 3), "ping after the restart");
}
