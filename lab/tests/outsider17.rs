//! Issue 17 seen by an outside tester (deployed from the docs only): scenarios that
//! gateway.rs and lan.rs do not cover.
//!
//! Gateway: box a behind a symmetric home NAT behind a CGN, box b behind a port-restricted
//! NAT; both DCs have a gateway policy to the same ordinary host through the one RS, with
//! the same synthetic pool (DC-B with `names: ["*"]`), so both boxes may get the same
//! synthetic address. Both boxes talk to the host at once from the same source port (their
//! flows must not mix), over TCP, UDP and ICMP, also with replays, forgeries and junk at the RS; box a then opens more flows than the RS's
//! `max_flows_per_session` (counted, box b unaffected); DC-A and the RS restart (a
//! restarted DC, and a full pool, never give a synthetic address in use to another host).
//!
//! LAN: both boxes announce a LAN prefix (two-way subnet routing, no masquerade) over a
//! relayed tunnel (both behind NATs); a source outside the announced prefix is
//! masqueraded; box b's LAN device holds a stream to box a's LAN device while box a moves;
//! box a's agent is killed with SIGKILL and started again (its nftables table replaced,
//! not doubled); IPv6 LAN prefixes announced both ways.
//!
//! Needs root, nft, NSD, dig, socat, curl, ping; the binaries come from
//! `cargo build --release --workspace --bins` (or `NTM_BIN_DIR`).

#![allow(clippy::print_stderr)]

use ntm_lab::deploy::{or_skip, payload, read_status, Access, Deployment, NatKind};
use ntm_lab::stream::LineStream;
use ntm_lab::{tools_or_skip, Ns};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const HOST: &str = "host.plain.example";
const HOST_IP: &str = "198.19.80.80";
const RS_IP: &str = "192.0.2.30";
/// The RS's flow cap per gateway session in these tests.
const FLOW_CAP: usize = 8;

fn rs_gateway(d: &Deployment) -> Value {
    read_status(&d.lab.dir().join("rs.sock")).map(|s| s["gateway"].clone()).unwrap_or_default()
}

fn counter(v: &Value, what: &str) -> u64 {
    v[what].as_u64().unwrap_or(0)
}

/// Runs `script` with `sh -c` in `ns` and waits for it (at most `secs`); its exit code.
fn sh(d: &mut Deployment, ns: &Ns, label: &str, script: &str, secs: u64) -> Option<i32> {
    let p = d.lab.spawn(ns, label, &["sh", "-c", script], &[]).unwrap();
    d.lab.proc(p).wait(secs)
}

/// One UDP datagram to `dst` from source port `sport` (0: any); true if it came back.
fn udp_echo(d: &mut Deployment, ns: &Ns, dst: &str, sport: u16, tag: &str) -> bool {
    let out = d.lab.dir().join(format!("{tag}.udp"));
    let sp = if sport == 0 { String::new() } else { format!(",sourceport={sport}") };
    let script = format!("echo 'datagram {tag}' | socat -t 2 -T 2 - UDP4:{dst}:7001{sp} > {}", out.display());
    let _ = sh(d, ns, &format!("udp-{tag}"), &script, 10);
    std::fs::read_to_string(&out).unwrap_or_default().trim() == format!("datagram {tag}")
}

/// The ordinary host behind the router, with a TCP and a UDP echo server; the RS as
/// gateway (the operator's forwarding and nft rule, as docs/servers.md shows them), with
/// `FLOW_CAP` flows per session; DC-A offers `plain.example`, DC-B every ordinary name,
/// both from the same pool.
fn gateway_deployment(label: &str) -> Option<(Deployment, Ns)> {
    gateway_deployment_with(label, true)
}

/// [`gateway_deployment`], with or without the operator's nft rule on the RS host.
fn gateway_deployment_with(label: &str, nft_rule: bool) -> Option<(Deployment, Ns)> {
    if !tools_or_skip(label, &["socat", "nft", "dig", "ping"]) {
        return None;
    }
    let access = [Access::DoubleNat(NatKind::Symmetric), Access::Nat(NatKind::PortRestricted)];
    let mut d = or_skip(Deployment::start_with(label, access), label)?;
    let (srv, rtr) = (d.srv.clone(), d.rtr.clone());
    d.lab.step("ordinary host 198.19.80.80: TCP echo :7000, UDP echo :7001");
    let host = d.lab.netns("host", false).unwrap();
    d.lab.link(&host, "eth0", &rtr, "h0").unwrap();
    d.lab.addr(&rtr, "h0", "198.19.80.1/24").unwrap();
    d.lab.addr(&host, "eth0", &format!("{HOST_IP}/24")).unwrap();
    d.lab.route(&host, &["default", "via", "198.19.80.1"]).unwrap();
    d.lab.spawn(&host, "tcp-echo-host", &["socat", "TCP4-LISTEN:7000,reuseaddr,fork", "EXEC:cat"], &[]).unwrap();
    d.lab.spawn(&host, "udp-echo-host", &["socat", "UDP4-RECVFROM:7001,fork", "EXEC:cat"], &[]).unwrap();
    // www.plain.example (192.0.2.80 in NSD) is a second address of the host: each address
    // says its name on TCP port 7003.
    d.lab.addr(&host, "eth0", "192.0.2.80/32").unwrap();
    d.lab.route(&rtr, &["192.0.2.80/32", "via", HOST_IP]).unwrap();
    d.lab.route(&srv, &["192.0.2.80/32", "via", "192.0.2.1"]).unwrap();
    for (ip, name) in [(HOST_IP, "host"), ("192.0.2.80", "www")] {
        let listen = format!("TCP4-LISTEN:7003,bind={ip},reuseaddr,fork");
        let say = format!("SYSTEM:echo {name}");
        d.lab.spawn(&host, &format!("name-{name}"), &["socat", &listen, &say], &[]).unwrap();
    }

    d.lab.step("RS host: ip_forward, /etc/ntmobile/gateway.nft as documented");
    d.lab.sysctl(&srv, "net.ipv4.ip_forward", "1").unwrap();
    if nft_rule {
        gateway_nft(&d);
    }
    d.restart_server_with("rs", |c| {
        c["gateway"] = json!({"internal": "100.100.0.0/24", "max_flows_per_session": FLOW_CAP});
    })
    .unwrap();
    d.restart_server_with("dc-a", |c| {
        c["gateway"] = json!({
            "names": ["plain.example"], "prefixes": ["198.19.80.0/24", "192.0.2.80/32"], "pool": "198.18.100.0/24"
        });
    })
    .unwrap();
    d.restart_server_with("dc-b", |c| {
        c["gateway"] = json!({"names": ["*"], "prefixes": ["198.19.80.0/24"], "pool": "198.18.100.0/24"});
    })
    .unwrap();
    d.up_with(|_, _, _| {}).expect("both boxes register");
    Some((d, host))
}

/// The operator's translation of the RS's internal prefix (docs/servers.md).
fn gateway_nft(d: &Deployment) {
    d.lab
        .nft(
            &d.srv,
            "table ip ntm-gateway {\n chain post {\n  type nat hook postrouting priority srcnat; policy accept;\n  \
             ip saddr 100.100.0.0/24 oifname \"eth0\" snat to 192.0.2.30\n }\n}\n",
        )
        .unwrap();
}

/// Two boxes use one ordinary host at once through the gateway: the same synthetic
/// address, the same source ports, TCP, UDP and ICMP; their data never mixes. Then box a
/// opens more flows than the cap (counted, box b unaffected, box a's new connections
/// refused), and the host's real address routed into the tunnel reaches nothing.
#[test]
fn two_boxes_share_an_ordinary_host_through_the_gateway() {
    let Some((mut d, _host)) = gateway_deployment("o17-gw-share") else { return };
    let (a, b) = (d.boxes[0].ns.clone(), d.boxes[1].ns.clone());

    // DC-B's `*` takes ordinary names only: an NTM node keeps its virtual address.
    let va = d.dig(1, "a.zone-a.test", "A");
    assert!(va.starts_with("198.18.1."), "an NTM name under `*` is still the node's virtual address: {va:?}");
    assert_eq!(d.dig(1, "www.plain.example", "A"), "192.0.2.80", "outside the prefixes: ordinary DNS");
    let syn_a = d.dig(0, HOST, "A");
    let syn_b = d.dig(1, HOST, "A");
    eprintln!("synthetic addresses: box a {syn_a}, box b {syn_b}");
    assert!(syn_a.starts_with("198.18.100.") && syn_b.starts_with("198.18.100."), "{syn_a:?} {syn_b:?}");
    for i in 0..2 {
        let t = d.tunnel(i, HOST).expect("a tunnel to the ordinary host");
        assert!(t["remote"].as_str().is_some_and(|r| r.starts_with(RS_IP)), "through the RS: {t}");
    }

    d.lab.step("both boxes: 3 MiB TCP echoes to the host at once, both from source port 40000");
    let mut runs = Vec::new();
    for (i, ns, syn) in [(0usize, &a, &syn_a), (1, &b, &syn_b)] {
        let data = payload(3 << 20, 100 + i as u64);
        let (inp, out) = (d.lab.dir().join(format!("tcp{i}.in")), d.lab.dir().join(format!("tcp{i}.out")));
        std::fs::write(&inp, &data).unwrap();
        let script =
            format!("socat -t 10 -T 20 - TCP4:{syn}:7000,sourceport=40000 < {} > {}", inp.display(), out.display());
        let p = d.lab.spawn(ns, &format!("tcp-echo-{i}"), &["sh", "-c", &script], &[]).unwrap();
        runs.push((p, data, out));
    }
    for (i, (p, data, out)) in runs.into_iter().enumerate() {
        assert!(d.lab.proc(p).wait(60).is_some(), "box {i}: the echo ends");
        let got = std::fs::read(&out).unwrap_or_default();
        assert!(got == data, "box {i}: its own 3 MiB back, byte for byte (got {} bytes)", got.len());
    }
    assert!(udp_echo(&mut d, &a, &syn_a, 40001, "a1"), "UDP through the gateway, box a");
    assert!(udp_echo(&mut d, &b, &syn_b, 40001, "b1"), "UDP through the gateway, box b");
    assert!(d.ping(0, &syn_a, 3), "ICMP echo to the host through the gateway, box a");
    assert!(d.ping(1, &syn_b, 3), "ICMP echo to the host through the gateway, box b");
    let g = rs_gateway(&d);
    eprintln!("RS gateway after the shared use: {g}");
    let sessions = g["sessions"].as_array().cloned().unwrap_or_default();
    let internals: Vec<&str> = sessions.iter().filter_map(|s| s["internal"].as_str()).collect();
    assert!(sessions.len() >= 2 && sessions.iter().all(|s| s["real"] == HOST_IP), "{g}");
    let mut uniq = internals.clone();
    uniq.sort_unstable();
    uniq.dedup();
    assert!(uniq.len() >= 2, "each box its own internal address: {internals:?}");
    assert_eq!(counter(&g, "dropped_not_allowed"), 0, "{g}");

    d.lab.step(format!("box a: 24 UDP flows at once (the cap is {FLOW_CAP} per session)"));
    let limit_before = counter(&rs_gateway(&d), "dropped_limit");
    let dir = d.lab.dir().display().to_string();
    let script = format!(
        "for p in $(seq 41000 41023); do (echo flow$p | socat -t 2 -T 2 - UDP4:{syn_a}:7001,sourceport=$p \
         > {dir}/flow$p.out) & done; wait"
    );
    assert_eq!(sh(&mut d, &a, "flows-a", &script, 20), Some(0));
    let answered = (41000..41024)
        .filter(|p| std::fs::read_to_string(format!("{dir}/flow{p}.out")).is_ok_and(|s| s.trim() == format!("flow{p}")))
        .count();
    let g = rs_gateway(&d);
    eprintln!("flows over the cap: {answered} of 24 answered; RS gateway {g}");
    assert!(answered < FLOW_CAP, "at most the cap's flows (some taken already): {answered}");
    assert!(counter(&g, "dropped_limit") > limit_before, "the refused flows are counted: {g}");
    assert!(read_status(&d.lab.dir().join("rs.sock")).is_some(), "the RS is still up");
    assert!(udp_echo(&mut d, &b, &syn_b, 41005, "b-after-flood"), "box b's session is not limited by box a's flows");

    d.lab.step("box a routes the host's real prefix into ntm0: no tunnel for it");
    d.lab.exec(&a, &["ip", "route", "add", "198.19.80.0/24", "dev", "ntm0"]).unwrap();
    assert!(!d.ping(0, HOST_IP, 2), "the real address is not reachable through the tunnel");
    d.lab.exec(&a, &["ip", "route", "del", "198.19.80.0/24", "dev", "ntm0"]).unwrap();

    let fresh = d.tcp_echo(0, &format!("TCP4:{syn_a}:7000,connect-timeout=3"), b"x", "a-after-flood");
    assert!(fresh.is_empty(), "box a's session is full: a new TCP connection is refused too");
}

/// DC-A restarts while box a holds a connection to the host through the gateway; box a
/// then looks up another ordinary host. The restarted DC's pool starts afresh, so it may
/// hand out the synthetic address box a still uses for the first host: the first host's
/// connections must not be carried to the second one.
#[test]
fn a_dc_restart_does_not_redirect_a_synthetic_address_to_another_host() {
    let Some((mut d, _host)) = gateway_deployment("o17-gw-dc") else { return };
    let syn_a = d.dig(0, HOST, "A");
    assert!(syn_a.starts_with("198.18.100."), "{syn_a:?}");
    d.lab.step("box a: a line stream to the host; DC-A restarts (its synthetic addresses are saved)");
    let every = Duration::from_millis(50);
    let stream =
        LineStream::start_paced(&mut d, 0, &format!("TCP4:{syn_a}:7000"), every, Duration::from_secs(60)).unwrap();
    assert!(d.lab.wait_for(15, || stream.count() >= 10), "the stream runs");
    let t0 = Instant::now();
    d.restart_server("dc-a").unwrap();
    d.lab.step("box a resolves www.plain.example (a second ordinary host) after the restart");
    let mut syn_www = String::new();
    assert!(
        d.lab.wait_for(30, || {
            syn_www = d.dig(0, "www.plain.example", "A");
            syn_www.starts_with("198.18.100.")
        }),
        "box a gets a synthetic address for www after the DC restart: {syn_www:?}"
    );
    let name_at = |d: &Deployment, ip: &str| {
        let target = format!("TCP4:{ip}:7003,connect-timeout=5");
        d.lab
            .try_exec(&d.boxes[0].ns, &["socat", "-T", "5", "-", &target])
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let (at_www, at_host) = (name_at(&d, &syn_www), name_at(&d, &syn_a));
    let n = stream.count();
    let flowing = d.lab.wait_for(5, || stream.count() >= n + 20);
    eprintln!(
        "DC-A restart: host still at {syn_a}, www now at {syn_www} ({:?} after the restart); {syn_www} answers \
         {at_www:?}, {syn_a} answers {at_host:?}; the stream to the host goes on: {flowing}",
        t0.elapsed()
    );
    let end = stream.finish(&mut d);
    assert_eq!(at_www, "www", "the synthetic address given for www reaches www");
    assert_eq!(at_host, "host", "the host's synthetic address still reaches the host");
    assert!(flowing && end.complete(), "the open connection to the host is not taken over: {:?}", end.exit);
}

/// The RS restarts while box a holds a TCP line stream to the ordinary host through it:
/// the stream recovers (the host keeps seeing the same RS address) or at least a new
/// connection works. The recovery time is printed.
#[test]
fn the_gateway_stream_across_an_rs_restart() {
    let Some((mut d, _host)) = gateway_deployment("o17-gw-rs") else { return };
    let syn = d.dig(0, HOST, "A");
    assert!(syn.starts_with("198.18.100."), "{syn:?}");
    let every = Duration::from_millis(50);
    let stream =
        LineStream::start_paced(&mut d, 0, &format!("TCP4:{syn}:7000"), every, Duration::from_secs(60)).unwrap();
    assert!(d.lab.wait_for(15, || stream.count() >= 20), "the stream runs through the gateway");
    let restarted = Instant::now();
    d.restart_server("rs").unwrap();
    let n = stream.count();
    let flowing = d.lab.wait_for(40, || stream.count() >= n + 20);
    let gap = stream.longest_gap_after(restarted);
    eprintln!("gateway stream across an RS restart: flowing again {flowing}, longest pause {gap:?}");
    let end = stream.finish(&mut d);
    assert!(flowing, "the stream through the gateway goes on after the RS restart (pause so far {gap:?})");
    assert!(end.complete(), "every line once, in order, one connection: {:?}", end.exit);
}

/// Where the lab's peers' LAN prefixes lie (not in the private ranges the agent accepts
/// by default).
const PEER_PREFIXES: [&str; 2] = ["198.19.0.0/16", "2001:db8::/32"];

/// The established TCP peers of `ns` on local port `port`.
fn tcp_peers(d: &Deployment, ns: &Ns, port: u16) -> String {
    let filter = format!("( sport = :{port} )");
    let o = d.lab.try_exec(ns, &["ss", "-tnH", "state", "established", &filter]);
    o.map(|o| String::from_utf8_lossy(&o.stdout).to_string()).unwrap_or_default()
}

/// The agent's nftables table without handles, and its rule count.
fn table_text(d: &Deployment, ns: &Ns) -> String {
    d.lab
        .try_exec(ns, &["nft", "list", "table", "inet", "ntmd"])
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default()
}

/// Routes in `ns` for `prefix`.
fn routes(d: &Deployment, ns: &Ns, prefix: &str) -> String {
    d.lab
        .try_exec(ns, &["ip", "-4", "route", "show", prefix])
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default()
}

/// Both boxes announce their LAN (relayed tunnel, both behind NATs): each LAN sees the
/// other's device address, a non-announced source is masqueraded, box b's LAN device keeps
/// its stream to box a's LAN device while box a moves, and box a's agent killed with
/// SIGKILL comes back with the same nftables table (not doubled) and routes.
#[test]
fn two_announced_lans_route_both_ways_across_a_move_and_a_kill() {
    let label = "o17-lan";
    if !tools_or_skip(label, &["socat", "nft", "dig"]) {
        return;
    }
    let access = [Access::DoubleNat(NatKind::Symmetric), Access::Nat(NatKind::Symmetric)];
    let Some(mut d) = or_skip(Deployment::start_with(label, access), label) else { return };
    let host_a =
        d.lan_host(0, "lan-a", &["198.19.31.1/24", "198.19.36.1/24"], &["198.19.31.2/24", "198.19.36.2/24"]).unwrap();
    let host_b =
        d.lan_host(1, "lan-b", &["198.19.32.1/24", "198.19.33.1/24"], &["198.19.32.2/24", "198.19.33.2/24"]).unwrap();
    let cfg = |i: usize, c: &mut Value| {
        let announce = if i == 0 { "198.19.31.0/24" } else { "198.19.32.0/24" };
        c["lan"] = json!({"interfaces": ["lan0"], "announce": [announce]});
        c["accept_peer_prefixes"] = json!(PEER_PREFIXES);
    };
    d.up_with(|_, i, c| cfg(i, c)).expect("both boxes register");
    let (a, b) = (d.boxes[0].ns.clone(), d.boxes[1].ns.clone());
    let va = d.status(0).and_then(|s| s["virtual_ipv4"].as_str().map(str::to_string)).unwrap_or_default();
    let vb = d.status(1).and_then(|s| s["virtual_ipv4"].as_str().map(str::to_string)).unwrap_or_default();

    d.lab.step("LAN host b resolves a.zone-a.test through box b's stub");
    let got = d
        .lab
        .try_exec(&host_b, &["dig", "+short", "+time=3", "+tries=2", "@198.19.32.1", "a.zone-a.test", "A"])
        .map(|o| ntm_lab::dig_answer(&o.stdout))
        .unwrap_or_default();
    assert_eq!(got, va, "box a's virtual address through box b's LAN stub");
    for (h, port) in [(&host_a, "7002"), (&host_b, "7001")] {
        let listen = format!("TCP4-LISTEN:{port},reuseaddr,fork");
        d.lab.spawn(h, &format!("echo-{}", h.label), &["socat", &listen, "EXEC:cat"], &[]).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    let every = Duration::from_millis(50);
    let run = Duration::from_secs(60);
    d.lab.step("LAN a -> LAN b and LAN b -> LAN a (both announced), LAN b from 198.19.33.2 (not announced)");
    let a_to_b = LineStream::start_in(&mut d, &host_a, "TCP4:198.19.32.2:7001", every, run).unwrap();
    let b_to_a = LineStream::start_in(&mut d, &host_b, "TCP4:198.19.31.2:7002", every, run).unwrap();
    let masq = LineStream::start_in(&mut d, &host_b, "TCP4:198.19.31.2:7002,bind=198.19.33.2", every, run).unwrap();
    assert!(
        d.lab.wait_for(20, || a_to_b.count() >= 10 && b_to_a.count() >= 10 && masq.count() >= 10),
        "all three streams run: {} {} {}",
        a_to_b.count(),
        b_to_a.count(),
        masq.count()
    );
    let tunnel = d.tunnel(0, "b.zone-b.test").unwrap_or_default();
    eprintln!("box a's tunnel to box b: path {} remote {}", tunnel["path"], tunnel["remote"]);
    let on_b = tcp_peers(&d, &host_b, 7001);
    assert!(on_b.contains("198.19.31.2:"), "LAN host b sees LAN host a's own address (announced): {on_b}");
    let on_a = tcp_peers(&d, &host_a, 7002);
    assert!(on_a.contains("198.19.32.2:"), "LAN host a sees LAN host b's own address: {on_a}");
    assert!(on_a.contains(&format!("{vb}:")), "the non-announced source arrives as box b's address {vb}: {on_a}");
    assert!(!on_a.contains("198.19.33."), "no non-announced LAN address crosses: {on_a}");

    d.lab.step("box a moves: eth1 198.19.5.2/24 (global), then eth0 down");
    d.lab.exec(&a, &["ip", "addr", "add", "198.19.5.2/24", "dev", "eth1"]).unwrap();
    d.lab.exec(&a, &["ip", "route", "add", "default", "via", "198.19.5.1", "dev", "eth1", "metric", "200"]).unwrap();
    let moved = Instant::now();
    d.lab.exec(&a, &["ip", "link", "set", "eth0", "down"]).unwrap();
    for (s, what) in [(&a_to_b, "LAN a -> LAN b"), (&b_to_a, "LAN b -> LAN a"), (&masq, "LAN b (masq) -> LAN a")] {
        let n = s.count();
        assert!(d.lab.wait_for(30, || s.count() >= n + 40), "{what}: goes on after box a's move");
        eprintln!("{what}, box a moves: longest pause {:?}", s.longest_gap_after(moved));
    }
    let gaps: Vec<Duration> = [&a_to_b, &b_to_a, &masq].iter().map(|s| s.longest_gap_after(moved)).collect();
    for (s, what) in [(a_to_b, "a->b"), (b_to_a, "b->a"), (masq, "masq")] {
        let end = s.finish(&mut d);
        assert!(end.complete(), "{what}: every line once, in order, one connection: {:?}", end.exit);
    }
    for g in gaps {
        assert!(g <= Duration::from_secs(2), "pause {g:?} across the move");
    }

    d.lab.step("box a's agent: SIGKILL, then started again");
    let before = table_text(&d, &a);
    let rules = before.lines().count();
    assert!(before.contains("table inet ntmd"), "the agent's table: {before}");
    assert!(routes(&d, &b, "198.19.31.0/24").contains("ntm0"), "box b routes box a's prefix into its tunnel");
    let p = d.boxes[0].proc.take().unwrap();
    d.lab.proc(p).signal(9);
    let gone = Instant::now() + Duration::from_secs(5);
    while d.lab.proc(p).alive() && Instant::now() < gone {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!d.lab.proc(p).alive(), "killed");
    let mut c = d.agent_config(0);
    cfg(0, &mut c);
    d.start_agent(0, &c).unwrap();
    assert!(d.wait_registered(0, 30).is_some(), "box a registers again");
    let after = table_text(&d, &a);
    eprintln!("nft table: {rules} lines before the kill, {} after the restart", after.lines().count());
    assert_eq!(after, before, "the restarted agent's table is the same (replaced, not doubled)");
    let t0 = Instant::now();
    let data = payload(32 << 10, 3);
    let mut got = Vec::new();
    let ok = d.lab.wait_for(20, || {
        let out = d.lab.dir().join("after-kill.out");
        let inp = d.lab.dir().join("after-kill.in");
        let _ = std::fs::write(&inp, &data);
        let script = format!("socat -t 3 -T 5 - TCP4:198.19.32.2:7001 < {} > {}", inp.display(), out.display());
        let _ = d.lab.try_exec(&host_a, &["sh", "-c", &script]);
        got = std::fs::read(&out).unwrap_or_default();
        got == data
    });
    eprintln!("LAN a -> LAN b after box a's restart: {ok} after {:?}", t0.elapsed());
    assert!(ok, "LAN host a reaches LAN host b again after box a's restart ({} bytes)", got.len());
    let rb = routes(&d, &b, "198.19.31.0/24");
    assert_eq!(rb.lines().count(), 1, "box b has one route for box a's prefix: {rb}");
    let ra = routes(&d, &a, "198.19.32.0/24");
    assert_eq!(ra.lines().count(), 1, "box a has one route for box b's prefix: {ra}");

    d.lab.step("box a stops: its table goes, box b's LAN stub still answers");
    d.stop_agent(0);
    assert!(!table_text(&d, &a).contains("table inet ntmd"), "the table goes with the agent");
}

/// A LAN interface `lan0` without devices behind it (a veth pair, both ends up).
fn lan_link(d: &Deployment, ns: &Ns) {
    d.lab.exec(ns, &["ip", "link", "add", "lan0", "type", "veth", "peer", "name", "lan0p"]).unwrap();
    d.lab.exec(ns, &["ip", "link", "set", "lan0p", "up"]).unwrap();
    d.lab.exec(ns, &["ip", "link", "set", "lan0", "up"]).unwrap();
}

/// A third box of zone a (`c.zone-a.test`, on its own link to the router) announces a
/// prefix overlapping box a's: DC-A refuses it with the documented detail; once box a
/// registers again without its prefix, box c registers with it.
#[test]
fn an_overlapping_announcement_in_the_same_dc_is_refused_until_given_up() {
    let label = "o17-overlap";
    if !tools_or_skip(label, &["nft", "dig"]) {
        return;
    }
    let Some(mut d) = or_skip(Deployment::start_with(label, [Access::Global4, Access::Global4]), label) else {
        return;
    };
    let a = d.boxes[0].ns.clone();
    lan_link(&d, &a);
    d.lab.addr(&a, "lan0", "198.19.31.1/24").unwrap();
    let lan_a = |c: &mut Value, announce: &[&str]| {
        c["lan"] = json!({"interfaces": ["lan0"], "announce": announce});
        c["accept_peer_prefixes"] = json!(PEER_PREFIXES);
    };
    d.up_with(|_, i, c| {
        if i == 0 {
            lan_a(c, &["198.19.31.0/24"]);
        }
    })
    .expect("both boxes register");

    d.lab.step("box c: c.zone-a.test on 198.19.41.2/24, lan0 198.19.31.129/25 announced");
    let rtr = d.rtr.clone();
    let c_ns = d.lab.netns("c", false).unwrap();
    d.lab.link(&c_ns, "eth0", &rtr, "c0").unwrap();
    d.lab.addr(&rtr, "c0", "198.19.41.1/24").unwrap();
    d.lab.addr(&c_ns, "eth0", "198.19.41.2/24").unwrap();
    d.lab.route(&c_ns, &["default", "via", "198.19.41.1"]).unwrap();
    lan_link(&d, &c_ns);
    d.lab.addr(&c_ns, "lan0", "198.19.31.129/25").unwrap();
    d.lab.resolv_conf(&c_ns, "nameserver 127.0.0.53\n").unwrap();
    let fqdn = "c.zone-a.test";
    let (cert, key) = d.issue("node", fqdn).unwrap();
    let as_cfg = d.lab.dir().join("as.json").display().to_string();
    d.admin_with_stdin(
        &[
            "account",
            "add",
            "-c",
            &as_cfg,
            "--email",
            "owner@c.zone-a.test",
            "--fqdn",
            fqdn,
            "--device",
            fqdn,
            "--password-stdin",
        ],
        "a passphrase for c",
    )
    .unwrap();
    let sock = d.lab.dir().join("ntmd-c.sock");
    let mut cfg = d.agent_config(0);
    cfg["credential"] = json!({"device": {"cert": cert, "key": key}});
    cfg["status_socket"] = json!(sock);
    lan_a(&mut cfg, &["198.19.31.128/25"]);
    let path = d.lab.dir().join("ntmd-c.json");
    std::fs::write(&path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let bin = d.bins.join("ntmd").display().to_string();
    let started = Instant::now();
    let pc = d.lab.spawn(&c_ns, "ntmd-c", &[&bin, "run", "-c", &path.display().to_string()], &[]).unwrap();
    let want = "announced prefix 198.19.31.128/25 overlaps 198.19.31.0/24 of a.zone-a.test";
    let refused = || read_status(&sock).and_then(|s| s["registration_refused"].as_str().map(str::to_string));
    assert!(
        d.lab.wait_for(20, || refused().is_some_and(|r| r.contains(want))),
        "box c's status shows the DC's refusal: {:?}",
        refused()
    );
    let log = d.lab.proc(pc).log_text();
    eprintln!("box c refused after {:?}", started.elapsed());
    assert!(log.contains("ERROR") && log.contains(want), "box c logs the refusal: {log}");
    let errors = |log: &str| log.lines().filter(|l| l.contains("ERROR") && l.contains(want)).count();
    assert_eq!(errors(&log), 1, "logged once as an error: {log}");
    let dc_a = read_status(&d.lab.dir().join("dc-a.sock")).unwrap_or_default();
    let nodes = dc_a["nodes"].as_array().cloned().unwrap_or_default();
    let node_a = nodes.iter().find(|n| n.to_string().contains("a.zone-a.test")).cloned().unwrap_or_default();
    assert!(node_a["announced"].to_string().contains("198.19.31.0/24"), "DC-A shows box a's prefix: {node_a}");

    d.lab.step("box a registers again without its prefix; box c then registers");
    d.stop_agent(0);
    let mut c0 = d.agent_config(0);
    lan_a(&mut c0, &[]);
    d.start_agent(0, &c0).unwrap();
    assert!(d.wait_registered(0, 30).is_some(), "box a registers without announcing");
    let given_up = Instant::now();
    let registered = || read_status(&sock).is_some_and(|s| s["registered"] == true);
    let ok = d.lab.wait_for(70, registered);
    eprintln!("box c registered {ok} {:?} after box a gave the prefix up", given_up.elapsed());
    assert!(ok, "box c registers once the prefix is free: {:?}", refused());
    assert!(read_status(&sock).is_some_and(|s| s["registration_refused"].is_null()), "the refusal is cleared");
    let log = d.lab.proc(pc).log_text();
    eprintln!("box c logged the refusal as an error {} time(s) while it kept asking", errors(&log));
    assert!(errors(&log) <= 3, "not one error per retry: {log}");
}

/// Box b announces the servers' own subnet (192.0.2.0/24: AS, DCs, RS, NSD) beside its
/// LAN; DC-B has no reason to refuse it (no overlap with its nodes or virtual prefix). Box
/// a, accepting any peer prefix, opens a tunnel to box b: its agent must not route its own
/// servers into that tunnel, or any box could cut its peers off their DC and read their
/// traffic to any prefix it likes. Box b's LAN prefix is still routed.
#[test]
fn a_peer_announcing_the_servers_subnet_does_not_capture_them() {
    let label = "o17-hijack";
    if !tools_or_skip(label, &["nft", "dig"]) {
        return;
    }
    let Some(mut d) = or_skip(Deployment::start_with(label, [Access::Global4, Access::Global4]), label) else {
        return;
    };
    let b = d.boxes[1].ns.clone();
    lan_link(&d, &b);
    d.lab.addr(&b, "lan0", "198.19.32.1/24").unwrap();
    d.up_with(|_, i, c| {
        if i == 1 {
            c["lan"] = json!({"interfaces": ["lan0"], "announce": ["192.0.2.0/24", "198.19.32.0/24"]});
        } else {
            // Whatever the allowlist lets through, the servers stay out of the tunnel.
            c["accept_peer_prefixes"] = json!(["0.0.0.0/0", "::/0"]);
        }
    })
    .expect("both boxes register (DC-B accepts the announcement)");
    let vb = d.dig(0, "b.zone-b.test", "A");
    assert!(vb.starts_with("198.18.2."), "{vb:?}");
    assert!(d.ping(0, &vb, 2), "box a reaches box b");
    let a = d.boxes[0].ns.clone();
    let route_to = |dst: &str| {
        d.lab
            .try_exec(&a, &["ip", "-4", "route", "get", dst])
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default()
    };
    // Box b's LAN prefix is routed once the tunnel is up: then both were looked at.
    assert!(d.lab.wait_for(10, || route_to("198.19.32.1").contains("ntm0")), "box b's LAN prefix is routed");
    let route = route_to("192.0.2.21");
    let prefixes = d.tunnel(0, "b.zone-b.test").map(|t| t["peer_prefixes"].clone()).unwrap_or_default();
    eprintln!("box b's announced prefixes at box a: {prefixes}; box a's route to its DC: {route}");
    // Box a's own lookups (NSD at 192.0.2.53) and its DC must still be reached directly.
    let www = d.dig(0, "www.plain.example", "A");
    assert!(!route.contains("ntm0"), "box a's route to its DC goes into box b's tunnel: {route}");
    assert_eq!(www, "192.0.2.80", "box a's upstream DNS still answers");
    assert!(d.ping(0, "198.19.32.1", 2), "box b's other prefix still works");
    let status = d.status(0).unwrap_or_default();
    let refused = status["refused_peer_prefixes"].to_string();
    eprintln!("box a's refused peer prefixes: {refused}");
    assert!(refused.contains("192.0.2.0/24") && refused.contains("b.zone-b.test"), "{status}");
    assert_eq!(status["counters"]["peer_prefixes_refused"], 1, "{status}");
    let log = d.boxes[0].proc.map(|p| d.lab.proc(p).log_text()).unwrap_or_default();
    let warned = log.lines().filter(|l| l.contains("WARN") && l.contains("prefix 192.0.2.0/24 is not routed")).count();
    assert_eq!(warned, 1, "one warning naming the peer and the reason: {log}");
    assert!(log.contains("b.zone-b.test's announced prefix 192.0.2.0/24 is not routed: it holds 192.0.2."), "{log}");
}

/// The RS host without the operator's nft rule: nothing comes back, the RS's counters
/// show it (packets to the host, none back), and the RS warns once, naming the rule; the
/// rule added later works at once.
#[test]
fn without_the_nft_rule_the_counters_show_it() {
    let Some((d, _host)) = gateway_deployment_with("o17-gw-nonft", false) else { return };
    let syn = d.dig(0, HOST, "A");
    assert!(syn.starts_with("198.18.100."), "{syn:?}");
    let got = d.tcp_echo(0, &format!("TCP4:{syn}:7000,connect-timeout=3"), b"hello", "no-nft");
    let g = rs_gateway(&d);
    let log = std::fs::read_to_string(d.lab.dir().join("rs.log")).unwrap_or_default();
    let hints: Vec<&str> = log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
    eprintln!("without the nft rule: echo {:?}; RS gateway {g}; RS warnings {hints:#?}", String::from_utf8_lossy(&got));
    assert!(got.is_empty(), "nothing comes back without the translation");
    assert!(counter(&g, "to_hosts") > 0 && counter(&g, "to_boxes") == 0, "{g}");
    assert_eq!(counter(&g, "no_answer_warnings"), 1, "{g}");
    let hint = hints.iter().filter(|l| l.contains("no host has answered") && l.contains("nft rule")).count();
    assert_eq!(hint, 1, "one warning that names the missing rule: {hints:#?}");
    gateway_nft(&d);
    let got = d.tcp_echo(0, &format!("TCP4:{syn}:7000,connect-timeout=3"), b"hello", "with-nft");
    assert_eq!(got, b"hello", "the rule added later works at once");
}

/// A DC pool outside the boxes' `virtual_routes` (a deployment mistake the DC cannot see):
/// the box must not answer a synthetic address that its kernel sends out of the default
/// route in clear. Box a refuses the Route Direction with a warning naming the address
/// and its virtual_routes; the look-up fails as for any refused negotiation.
#[test]
fn a_pool_outside_virtual_routes_is_not_answered() {
    let Some((mut d, _host)) = gateway_deployment("o17-gw-pool") else { return };

    d.lab.step("DC-A's pool 198.19.200.0/24, outside the boxes' virtual_routes 198.18.0.0/16");
    d.restart_server_with("dc-a", |c| {
        c["gateway"] = json!({
            "names": ["plain.example"], "prefixes": ["198.19.80.0/24", "192.0.2.80/32"], "pool": "198.19.200.0/24"
        });
    })
    .unwrap();
    let a_log = |d: &mut Deployment| d.boxes[0].proc.map(|p| d.lab.proc(p).log_text()).unwrap_or_default();
    let warned = |log: &str| {
        log.lines().any(|l| {
            l.contains("WARN") && l.contains("198.19.200.") && l.contains("outside virtual_routes [198.18.0.0/16")
        })
    };
    let mut answers = Vec::new();
    let mut refused = false;
    let start = Instant::now();
    while !refused && start.elapsed() < Duration::from_secs(20) {
        answers.push(d.dig(0, "www.plain.example", "A"));
        refused = warned(&a_log(&mut d));
        if !refused {
            std::thread::sleep(Duration::from_millis(200)); // paces the look-ups
        }
    }
    // More look-ups: each brings the same Route Direction again, refused again, and
    // logged at warn only the first time.
    for _ in 0..3 {
        answers.push(d.dig(0, "www.plain.example", "A"));
    }
    let log = a_log(&mut d);
    let hints: Vec<&str> = log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
    eprintln!("pool outside virtual_routes: www -> {answers:?}; box a warnings {hints:#?}");
    assert!(refused, "box a warns of the address outside its virtual_routes: {hints:#?}");
    assert_eq!(hints.iter().filter(|l| warned(l)).count(), 1, "warned once: {hints:#?}");
    assert!(
        answers.iter().all(|a| !a.contains("198.19.200.")),
        "box a answers an address it does not route: {answers:?}"
    );
    assert!(d.tunnel(0, "www.plain.example").is_none(), "no tunnel for it");
}

/// DC-A's pool is small (/30) and box a looks up more ordinary hosts than it holds, while
/// it still has a connection to the first: the DC recycles the least recently used
/// synthetic address, which box a still uses for that host.
#[test]
fn a_full_pool_does_not_redirect_a_synthetic_address_in_use() {
    let Some((mut d, _host)) = gateway_deployment("o17-gw-pool30") else { return };
    d.restart_server_with("dc-a", |c| {
        c["gateway"] = json!({
            "names": ["plain.example"], "prefixes": ["198.19.80.0/24", "192.0.2.0/24"], "pool": "198.18.100.0/30"
        });
    })
    .unwrap();
    let mut syn = String::new();
    assert!(
        d.lab.wait_for(20, || {
            syn = d.dig(0, HOST, "A");
            syn.starts_with("198.18.100.")
        }),
        "{syn:?}"
    );
    let every = Duration::from_millis(50);
    let stream =
        LineStream::start_paced(&mut d, 0, &format!("TCP4:{syn}:7000"), every, Duration::from_secs(60)).unwrap();
    assert!(d.lab.wait_for(15, || stream.count() >= 10), "the stream to the host runs");
    let mut answers = Vec::new();
    for name in ["www.plain.example", "ns.plain.example", "as.plain.example"] {
        answers.push((name, d.dig(0, name, "A")));
    }
    let target = format!("TCP4:{syn}:7003,connect-timeout=5");
    let at_host = d
        .lab
        .try_exec(&d.boxes[0].ns, &["socat", "-T", "5", "-", &target])
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let n = stream.count();
    let flowing = d.lab.wait_for(5, || stream.count() >= n + 20);
    eprintln!("pool /30: host at {syn}; then {answers:?}; {syn} answers {at_host:?}; the stream goes on: {flowing}");
    let end = stream.finish(&mut d);
    assert!(answers.iter().all(|(_, a)| a != &syn), "another host was given the host's synthetic address {syn}");
    assert_eq!(at_host, "host", "the host's synthetic address still reaches the host");
    assert!(flowing && end.complete(), "the open connection to the host is not taken over: {:?}", end.exit);
}

/// Announced IPv6 LAN prefixes (docs: `lan.announce` takes IPv6 too; IPv6 forwarding is
/// the router's, switched on here as OpenWrt does): box a's LAN device reaches box b's
/// LAN device over IPv6 inside a tunnel over IPv4, with ping and a TCP echo, and sees its
/// own address.
#[test]
fn announced_ipv6_lans_reach_each_other() {
    let label = "o17-lan6";
    if !tools_or_skip(label, &["socat", "nft", "dig", "ping"]) {
        return;
    }
    let Some(mut d) = or_skip(Deployment::start_with(label, [Access::Global4, Access::Nat(NatKind::FullCone)]), label)
    else {
        return;
    };
    let host_a = d
        .lan_host(0, "lan-a", &["198.19.31.1/24", "2001:db8:31::1/64"], &["198.19.31.2/24", "2001:db8:31::2/64"])
        .unwrap();
    let host_b = d
        .lan_host(1, "lan-b", &["198.19.32.1/24", "2001:db8:32::1/64"], &["198.19.32.2/24", "2001:db8:32::2/64"])
        .unwrap();
    for (h, gw) in [(&host_a, "2001:db8:31::1"), (&host_b, "2001:db8:32::1")] {
        d.lab.route(h, &["default", "via", gw]).unwrap();
    }
    for i in 0..2 {
        let ns = d.boxes[i].ns.clone();
        d.lab.sysctl(&ns, "net.ipv6.conf.all.forwarding", "1").unwrap();
    }
    d.up_with(|_, i, c| {
        let announce =
            if i == 0 { ["198.19.31.0/24", "2001:db8:31::/64"] } else { ["198.19.32.0/24", "2001:db8:32::/64"] };
        c["lan"] = json!({"interfaces": ["lan0"], "announce": announce});
        c["accept_peer_prefixes"] = json!(PEER_PREFIXES);
    })
    .expect("both boxes register");
    let vb = d.dig(0, "b.zone-b.test", "A");
    assert!(vb.starts_with("198.18.2."), "a tunnel to box b: {vb:?}");
    let prefixes = d.tunnel(0, "b.zone-b.test").map(|t| t["peer_prefixes"].to_string()).unwrap_or_default();
    assert!(prefixes.contains("2001:db8:32::/64"), "box a learned box b's IPv6 prefix: {prefixes}");
    let ping6 = |d: &Deployment, dst: &str| {
        d.lab
            .try_exec(&host_a, &["ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", dst])
            .is_ok_and(|o| o.status.success())
    };
    assert!(ping6(&d, "2001:db8:32::2"), "LAN host a pings LAN host b over IPv6");
    d.lab.spawn(&host_b, "echo6-b", &["socat", "TCP6-LISTEN:7006,reuseaddr,fork", "EXEC:cat"], &[]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let stream = LineStream::start_in(
        &mut d,
        &host_a,
        "TCP6:[2001:db8:32::2]:7006",
        Duration::from_millis(50),
        Duration::from_secs(20),
    )
    .unwrap();
    assert!(d.lab.wait_for(15, || stream.count() >= 10), "a TCP stream over IPv6 between the LANs");
    let peers = tcp_peers(&d, &host_b, 7006);
    let end = stream.finish(&mut d);
    assert!(end.complete(), "{:?}", end.exit);
    assert!(peers.contains("2001:db8:31::2"), "LAN host b sees LAN host a's own IPv6 address: {peers}");
    let table = table_text(&d, &d.boxes[1].ns.clone());
    eprintln!("box b's table with IPv6 prefixes:\n{table}");
}

/// An attacker next to the router replays box a's captured gateway datagrams at the RS
/// from its own address, forges variants of them, and sends junk, while both boxes
/// use the host: the RS must not move box a's session to the attacker, and both boxes'
/// data arrives intact.
#[test]
fn replays_and_junk_at_the_rs_gateway_session() {
    if !tools_or_skip("o17-gw-replay", &["tcpdump"]) {
        return;
    }
    let Some((mut d, _host)) = gateway_deployment("o17-gw-replay") else { return };
    let syn_a = d.dig(0, HOST, "A");
    let syn_b = d.dig(1, HOST, "A");
    assert!(syn_a.starts_with("198.18.100.") && syn_b.starts_with("198.18.100."), "{syn_a:?} {syn_b:?}");
    let rtr = d.rtr.clone();
    let pcap = d.lab.dir().join("gw.pcap");
    let pcap_s = pcap.display().to_string();
    let cap = d
        .lab
        .spawn(&rtr, "tcpdump-gw", &["tcpdump", "-n", "-U", "-s", "0", "-i", "srv0", "-w", &pcap_s, "udp"], &[])
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let data = payload(1 << 20, 5);
    assert!(d.tcp_echo(0, &format!("TCP4:{syn_a}:7000"), &data, "captured") == data, "the captured echo");
    let _ = d.lab.try_exec(&d.boxes[0].ns, &["ping", "-c", "100", "-i", "0.01", "-q", &syn_a]);
    std::thread::sleep(Duration::from_millis(300));
    d.lab.proc(cap).signal(2);
    d.lab.proc(cap).wait(5);
    let to_rs: Vec<Vec<u8>> = ntm_lab::pcap::udp_datagrams(&std::fs::read(&pcap).unwrap_or_default())
        .into_iter()
        .filter(|(a, _)| a.to_string() == "192.0.2.30:4461")
        .map(|(_, p)| p)
        .collect();
    assert!(to_rs.len() > 100, "box a's datagrams to the RS captured: {}", to_rs.len());
    let hex: String =
        to_rs.iter().take(2000).map(|p| p.iter().map(|b| format!("{b:02x}")).collect::<String>() + "\n").collect();
    let file = d.lab.dir().join("replay-rs.hex");
    std::fs::write(&file, hex).unwrap();
    let file = file.display().to_string();
    let endpoint = |d: &Deployment| {
        rs_gateway(d)["sessions"]
            .as_array()
            .and_then(|s| s.iter().find(|x| x["node"].as_str().is_some_and(|n| n.starts_with("198.18.1."))).cloned())
            .map(|s| s["endpoint"].to_string())
            .unwrap_or_default()
    };
    let before = endpoint(&d);

    d.lab.step("replays, forgeries and junk at the RS from the router, during echoes of both boxes");
    let flood = d.bins.join("ntm-flood").display().to_string();
    let jobs = [
        vec![flood.as_str(), "replay", "192.0.2.30:4461", &file, "100000", "5"],
        vec![flood.as_str(), "forge", "192.0.2.30:4461", &file, "100000", "5"],
        vec![flood.as_str(), "junk", "192.0.2.30:4461", "100000", "5"],
    ];
    let procs: Vec<usize> =
        jobs.iter().enumerate().map(|(n, j)| d.lab.spawn(&rtr, &format!("flood-{n}"), j, &[]).unwrap()).collect();
    let (da, db) = (payload(2 << 20, 8), payload(2 << 20, 9));
    let got_a = d.tcp_echo(0, &format!("TCP4:{syn_a}:7000"), &da, "under-attack-a");
    let got_b = d.tcp_echo(1, &format!("TCP4:{syn_b}:7000"), &db, "under-attack-b");
    let mut sent = Vec::new();
    for p in procs {
        d.lab.proc(p).wait(20);
        sent.push(d.lab.proc(p).log_text().trim().to_string());
    }
    let after = endpoint(&d);
    let g = rs_gateway(&d);
    let rs = read_status(&d.lab.dir().join("rs.sock")).unwrap_or_default();
    eprintln!(
        "floods {sent:?}; box a's endpoint at the RS {before} -> {after}; RS dropped {}; gateway {g}",
        rs["dropped"]
    );
    assert!(got_a == da, "box a's echo intact under attack ({} bytes)", got_a.len());
    assert!(got_b == db, "box b's echo intact under attack ({} bytes)", got_b.len());
    assert_eq!(after, before, "the RS did not move box a's session to the attacker");
}
