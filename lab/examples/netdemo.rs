//! The main job: a whole NTMobile deployment of the real binaries in network namespaces,
//! narrated. Servers (AS, two DCs, RS, NS) and NSD in one namespace, a router, two boxes
//! running `ntmd` behind different NATs (full cone and symmetric). The boxes find each
//! other by name through the agent's DNS hook, the tunnel starts through the relay and
//! moves to the direct path, and box a leaves its NAT for another network during a
//! transfer. Everything is removed at the end, also on Ctrl-C.
//!
//! Needs root, the release binaries (`cargo build --release --workspace --bins`), NSD, dig,
//! ping, and iperf3 for the throughput step. `scripts/demo.sh` does all of it.

#![allow(clippy::print_stdout)]

use ntm_lab::deploy::{Access, Deployment, NatKind};
use ntm_lab::{have, Ns};
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

    say("== starting ntmd in both boxes: TLS login with the device certificate, registration");
    let t = Instant::now();
    let st = d.up_with(|_, _, _| {}).map_err(e)?;
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
