//! The main job: a whole NTMobile deployment of the real binaries in network namespaces,
//! narrated. Servers (AS, two DCs, RS, NS) and NSD in one namespace, a router, two boxes
//! running `ntmd` behind different NATs (full cone and symmetric). The boxes find each
//! other by name through the agent's DNS hook, the tunnel starts through the relay and
//! moves to the direct path, and box a leaves its NAT for another network during a
//! transfer. Then the two things a router does for others: a PC on box a's LAN (no agent)
//! reaches box b and a camera on box b's announced LAN through the tunnel, and box a
//! downloads from an ordinary web server (no NTMobile) through the RS as its gateway,
//! moving back behind its NAT in the middle. Everything is removed at the end, also on
//! Ctrl-C.
//!
//! Needs root, the release binaries (`cargo build --release --workspace --bins`), NSD, dig,
//! ping, nft, curl and busybox (the web server), and iperf3 for the throughput step.
//! `scripts/demo.sh` does all of it.

#![allow(clippy::print_stdout)]

use ntm_lab::deploy::{payload, Access, Deployment, NatKind};
use ntm_lab::{have, Ns};
use serde_json::json;
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn say(s: &str) {
    println!("{s}");
}

fn out(d: &Deployment, ns: &Ns, cmd: &[&str]) -> String {
    match d.lab.try_exec(ns, cmd) {
        Ok(o) => format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
        Err(e) => format!("({e})"),
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].iter().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

fn status_line(d: &Deployment, i: usize, peer: &str) -> String {
    match d.tunnel(i, peer) {
        Some(t) => format!(
            "path {}, sending to {}, {} packets out / {} in",
            t["path"].as_str().unwrap_or("?"),
            t["remote"].as_str().unwrap_or("?"),
            t["tx_packets"],
            t["rx_packets"]
        ),
        None => "no tunnel".into(),
    }
}

fn run() -> Result<(), String> {
    let e = |e: ntm_lab::LabError| e.to_string();
    say("== building the network");
    say("   srv: AS, DC-A (zone-a.test), DC-B (zone-b.test), RS, NS, NSD -- all real daemons");
    say("   box a behind a full-cone NAT, box b behind a symmetric NAT (random port per peer)");
    let t = Instant::now();
    let mut d =
        Deployment::start_with("demo", [Access::Nat(NatKind::FullCone), Access::Nat(NatKind::Symmetric)]).map_err(e)?;
    say(&format!("   servers up in {:?}; logs in {}", t.elapsed(), d.lab.dir().display()));
    let (host, pc, camera) = extras(&mut d).map_err(e)?;

    say("== starting ntmd in both boxes: TLS login with the device certificate, registration");
    let t = Instant::now();
    // Both boxes serve a LAN; box b announces its LAN's prefix (subnet route), box a
    // masquerades its LAN behind its own virtual address.
    let st = d
        .up_with(|_, i, c| {
            let announce: &[&str] = if i == 1 { &[CAMERA_LAN] } else { &[] };
            c["lan"] = json!({"interfaces": ["lan0"], "announce": announce});
            // The demo's LANs are in 198.19.0.0/16, not the private ranges accepted by default.
            c["accept_peer_prefixes"] = json!(["198.19.0.0/16"]);
        })
        .map_err(e)?;
    for s in &st {
        say(&format!(
            "   {} has virtual {} and {}; its own address is {} (behind NAT)",
            s["fqdn"].as_str().unwrap_or("?"),
            s["virtual_ipv4"].as_str().unwrap_or("?"),
            s["virtual_ipv6"].as_str().unwrap_or("?"),
            s["local_addrs"][0]["addr"].as_str().unwrap_or("?"),
        ));
    }
    say(&format!("   both registered {:?} after start", t.elapsed()));
    let b4 = st[1]["virtual_ipv4"].as_str().unwrap_or("").to_string();
    let b6 = st[1]["virtual_ipv6"].as_str().unwrap_or("").to_string();

    say("== box a looks up b.zone-b.test with its ordinary resolver (the agent's DNS hook answers)");
    let t = Instant::now();
    let a_answer = d.dig(0, "b.zone-b.test", "A");
    say(&format!("   A    {a_answer}   ({:?}: Direction Request, DCs negotiate, tunnel up)", t.elapsed()));
    say(&format!("   AAAA {}", d.dig(0, "b.zone-b.test", "AAAA")));
    say(&format!("   an ordinary name is forwarded: www.plain.example is {}", d.dig(0, "www.plain.example", "A")));
    say(&format!("   tunnel: {}", status_line(&d, 0, "b.zone-b.test")));

    say("== ping over the virtual addresses");
    let a = d.boxes[0].ns.clone();
    say(&last_lines(&out(&d, &a, &["ping", "-c", "3", "-i", "0.2", &b4]), 2));
    say(&last_lines(&out(&d, &a, &["ping", "-6", "-c", "3", "-i", "0.2", &b6]), 2));
    say("   both NATs were punched through: the tunnel left the relay for the direct path");
    say(&format!("   tunnel: {}", status_line(&d, 0, "b.zone-b.test")));

    let b = d.boxes[1].ns.clone();
    if have("iperf3") {
        say("== box a leaves its NAT for another network (a public address) during an iperf3 transfer");
        let server = d.lab.spawn(&b, "iperf-server", &["iperf3", "-s", "-1"], &[]).map_err(e)?;
        std::thread::sleep(Duration::from_millis(300));
        let client = d
            .lab
            .spawn(&a, "iperf-client", &["iperf3", "-c", "b.zone-b.test", "-t", "6", "-f", "m"], &[])
            .map_err(e)?;
        std::thread::sleep(Duration::from_secs(2));
        move_box_a(&mut d)?;
        d.lab.proc(client).wait(15);
        d.lab.proc(server).wait(3);
        let log = d.lab.proc(client).log_text();
        for l in log.lines().filter(|l| l.contains("sec") && (l.contains("Mbits") || l.contains("receiver"))) {
            say(&format!("    {}", l.trim()));
        }
    } else {
        say("== box a leaves its NAT for another network (a public address) during a ping every 50 ms");
        let p = d.lab.spawn(&a, "ping-move", &["ping", "-c", "80", "-i", "0.05", "-W", "1", &b4], &[]).map_err(e)?;
        std::thread::sleep(Duration::from_secs(1));
        move_box_a(&mut d)?;
        d.lab.proc(p).wait(15);
        say(&last_lines(&d.lab.proc(p).log_text(), 2));
    }
    if let Some(s) = d.status(0) {
        say(&format!(
            "   box a now at {}, registered {}, network changes {}",
            s["local_addrs"][0]["addr"].as_str().unwrap_or("?"),
            s["registered"],
            s["counters"]["network_changes"]
        ));
    }
    say(&format!("   tunnel: {}", status_line(&d, 0, "b.zone-b.test")));
    lan_chapter(&mut d, &pc, &camera, &b4);
    gateway_chapter(&mut d, &host)?;
    say("== ntmd status in box a (what `ntmd status` prints)");
    let sock = d.boxes[0].status.clone();
    let status = std::process::Command::new(d.bins.join("ntmd"))
        .arg("status")
        .arg("-s")
        .arg(&sock)
        .output()
        .map_err(|e| e.to_string())?;
    say(&String::from_utf8_lossy(&status.stdout));
    say("== done: stopping everything and deleting the namespaces");
    Ok(())
}

/// Box b's LAN, announced: the camera is 198.19.32.2.
const CAMERA_LAN: &str = "198.19.32.0/24";
const CAMERA: &str = "198.19.32.2";
/// Box a's LAN (not announced: masqueraded): the PC is 198.19.31.2, box a is .1.
const PC: &str = "198.19.31.2";
const BOX_A_LAN: &str = "198.19.31.1";
/// The ordinary web server (no NTMobile), its name in NSD's zone plain.example.
const HOST: &str = "host.plain.example";
const HOST_IP: &str = "198.19.80.80";
const WEB_FILE_BYTES: usize = 24 << 20;

/// The parts beyond the two boxes, made before the agents start: a LAN behind each box
/// (a PC behind box a, a camera behind box b), the ordinary web server behind the router,
/// and the gateway in the servers' namespace (the RS's TUN device, the operator's nft
/// rule, DC-A's policy for plain.example). (web server, PC, camera)
fn extras(d: &mut Deployment) -> ntm_lab::Result<(Ns, Ns, Ns)> {
    say("   a PC on box a's LAN, a camera on box b's LAN (no agent on either)");
    let pc = d.lan_host(0, "pc", &[&format!("{BOX_A_LAN}/24")], &[&format!("{PC}/24")])?;
    let camera = d.lan_host(1, "camera", &["198.19.32.1/24"], &[&format!("{CAMERA}/24")])?;
    say("   an ordinary web server (no NTMobile) at 198.19.80.80 behind the router; the RS is its gateway");
    let (srv, rtr) = (d.srv.clone(), d.rtr.clone());
    let host = d.lab.netns("host", false)?;
    d.lab.link(&host, "eth0", &rtr, "h0")?;
    d.lab.addr(&rtr, "h0", "198.19.80.1/24")?;
    d.lab.addr(&host, "eth0", &format!("{HOST_IP}/24"))?;
    d.lab.route(&host, &["default", "via", "198.19.80.1"])?;
    let web = d.lab.dir().join("www");
    std::fs::create_dir_all(&web)?;
    std::fs::write(web.join("big"), payload(WEB_FILE_BYTES, 17))?;
    let web = web.to_string_lossy().to_string();
    d.lab.spawn(&host, "httpd", &["busybox", "httpd", "-f", "-p", "8080", "-h", &web], &[])?;
    // The web server's link: 40 Mbit/s, as a WAN link might be (the download takes 5 s).
    d.lab.exec(
        &host,
        &["tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "40mbit", "burst", "64kb", "latency", "50ms"],
    )?;
    d.lab.sysctl(&srv, "net.ipv4.ip_forward", "1")?;
    d.lab.nft(
        &srv,
        "table ip ntm-gateway {\n chain post {\n  type nat hook postrouting priority srcnat; policy accept;\n  \
         ip saddr 100.100.0.0/24 oifname \"eth0\" snat to 192.0.2.30\n }\n}\n",
    )?;
    d.restart_server_with("rs", |c| c["gateway"] = json!({"internal": "100.100.0.0/24"}))?;
    d.restart_server_with("dc-a", |c| {
        c["gateway"] = json!({"names": ["plain.example"], "prefixes": ["198.19.80.0/24"], "pool": "198.18.100.0/24"});
    })?;
    Ok((host, pc, camera))
}

/// A PC on box a's LAN looks up box b through box a and reaches box b and the camera on
/// box b's announced LAN.
fn lan_chapter(d: &mut Deployment, pc: &Ns, camera: &Ns, b4: &str) {
    say("== a PC on box a's LAN (no agent) uses the tunnel through its router, box a");
    let at = format!("@{BOX_A_LAN}");
    let answer = out(d, pc, &["dig", "+short", "+time=2", "+tries=1", &at, "b.zone-b.test", "A"]);
    say(&format!("   the PC asks box a for b.zone-b.test: {}", answer.trim()));
    say(&last_lines(&out(d, pc, &["ping", "-c", "3", "-i", "0.2", b4]), 1));
    say("   and reaches the camera on box b's LAN (box b announced 198.19.32.0/24 when it registered):");
    say(&last_lines(&out(d, pc, &["ping", "-c", "3", "-i", "0.2", CAMERA]), 1));
    // The camera tells each TCP client the address it sees.
    let told = d
        .lab
        .spawn(camera, "camera-tell", &["socat", "TCP4-LISTEN:7001,reuseaddr", "SYSTEM:echo $SOCAT_PEERADDR"], &[])
        .is_ok();
    std::thread::sleep(Duration::from_millis(200));
    let seen = if told { out(d, pc, &["socat", "-T", "3", "-", "TCP4:198.19.32.2:7001"]) } else { String::new() };
    say(&format!("   the camera sees the PC as {} (box a's virtual address: box a masquerades its LAN)", seen.trim()));
}

/// Box a downloads from the ordinary web server through the RS and moves back behind its
/// NAT in the middle; the same connection completes.
fn gateway_chapter(d: &mut Deployment, host: &Ns) -> Result<(), String> {
    say("== an ordinary web server (no NTMobile) through the RS: box a downloads and moves mid-download");
    let synthetic = d.dig(0, HOST, "A");
    say(&format!(
        "   DC-A's policy sends plain.example through the RS: {HOST} answers {synthetic} in box a (really {HOST_IP})"
    ));
    let a = d.boxes[0].ns.clone();
    let file = d.lab.dir().join("big.out");
    let url = format!("http://{HOST}:8080/big");
    let o = file.to_string_lossy().to_string();
    let curl = ["curl", "-s", "-f", "-m", "40", "-o", &o, &url];
    let dl = d.lab.spawn(&a, "curl", &curl, &[]).map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_secs(2));
    // busybox httpd listens on IPv6 too: its peers show as [::ffff:a.b.c.d]:port.
    let seen = out(d, host, &["ss", "-tnH"]);
    let peer = seen
        .lines()
        .filter(|l| l.starts_with("ESTAB"))
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| p.replace("[::ffff:", "").replace(']', ""))
        .find(|p| !p.is_empty())
        .unwrap_or_else(|| "?".into());
    say(&format!("   the web server sees its client at {peer}: the RS, not box a"));
    move_box_a_back(d)?;
    let done = d.lab.proc(dl).wait(45);
    let got = std::fs::metadata(&file).map_or(0, |m| m.len());
    say(&format!(
        "   curl {}: {got} of {WEB_FILE_BYTES} bytes over one TCP connection",
        if done == Some(0) { "completed" } else { "failed" }
    ));
    let rs = ntm_lab::deploy::read_status(&d.lab.dir().join("rs.sock")).unwrap_or_default();
    let g = &rs["gateway"];
    say(&format!(
        "   RS gateway: {} packets to the host, {} back to the box, {} refused as not allowed",
        g["to_hosts"], g["to_boxes"], g["dropped_not_allowed"]
    ));
    Ok(())
}

/// Box a goes back from its public address to its NAT.
fn move_box_a_back(d: &mut Deployment) -> Result<(), String> {
    let a = d.boxes[0].ns.clone();
    let t = Instant::now();
    let moved = (|| -> ntm_lab::Result<()> {
        d.lab.del_addr(&a, "eth1", "198.19.5.2/24")?;
        d.lab.addr(&a, "eth0", "198.19.10.2/24")?;
        d.lab.route(&a, &["default", "via", "198.19.10.1"])
    })();
    moved.map_err(|e| e.to_string())?;
    let ok = d.lab.wait_for(10, || d.status(0).is_some_and(|s| s["local_addrs"].to_string().contains("198.19.10.2")));
    say(&format!(
        "   moved back: 198.19.5.2 -> 198.19.10.2 (behind NAT); the agent re-registered{} in {:?}",
        if ok { "" } else { " (not yet)" },
        t.elapsed()
    ));
    Ok(())
}

fn move_box_a(d: &mut Deployment) -> Result<(), String> {
    let a = d.boxes[0].ns.clone();
    let t = Instant::now();
    let moved = (|| -> ntm_lab::Result<()> {
        d.lab.del_addr(&a, "eth0", "198.19.10.2/24")?;
        d.lab.addr(&a, "eth1", "198.19.5.2/24")?;
        d.lab.route(&a, &["default", "via", "198.19.5.1"])
    })();
    moved.map_err(|e| e.to_string())?;
    let ok = d.lab.wait_for(10, || {
        d.tunnel(0, "b.zone-b.test").is_some_and(|t| t["remote"].as_str().is_some())
            && d.status(0).is_some_and(|s| s["local_addrs"].to_string().contains("198.19.5.2"))
    });
    say(&format!(
        "   moved: 198.19.10.2 (behind NAT) -> 198.19.5.2; the agent noticed and re-registered{} in {:?}",
        if ok { "" } else { " (not yet)" },
        t.elapsed()
    ));
    Ok(())
}

fn main() -> ExitCode {
    // A panic (an abort in the release build) or Ctrl-C: stop every daemon and delete every
    // namespace before leaving.
    ntm_lab::clean_up_on_panic();
    let _ = ctrlc::set_handler(|| {
        say("\n== interrupted: stopping everything and deleting the namespaces");
        ntm_lab::emergency_cleanup();
        std::process::exit(130);
    });
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say(&format!("demo failed: {e}"));
            ExitCode::FAILURE
        }
    }
}
