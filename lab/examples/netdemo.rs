//! The main job: a whole NTMobile deployment of the real binaries in network namespaces,
//! narrated. Servers (AS, two DCs, RS, NS) and NSD in one namespace, a router, two boxes
//! running `ntmd`. The boxes find each other by name through the agent's DNS hook, ping
//! and stream over their virtual addresses, and box a moves to another subnet while a ping
//! runs. Everything is removed at the end (a run killed half-way is cleaned up by the next).
//!
//! Needs root, the release binaries (`cargo build --release --workspace --bins`), NSD, dig,
//! ping, and iperf3 for the throughput step. `scripts/demo.sh` does all of it.

#![allow(clippy::print_stdout)]

use ntm_lab::deploy::Deployment;
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

fn iperf(d: &mut Deployment, server: &Ns, client: &Ns, target: &str, label: &str) -> String {
    let p = match d.lab.spawn(server, label, &["iperf3", "-s", "-1", "-p", "5201"], &[]) {
        Ok(p) => p,
        Err(e) => return format!("({e})"),
    };
    std::thread::sleep(Duration::from_millis(300));
    let text = out(d, client, &["iperf3", "-c", target, "-p", "5201", "-t", "3", "-f", "m"]);
    d.lab.proc(p).wait(5);
    text.lines().filter(|l| l.contains("receiver")).map(|l| l.trim().to_string()).next().unwrap_or(text)
}

fn run() -> Result<(), String> {
    say("== building the network: srv (AS, DC-A, DC-B, RS, NS, NSD) -- rtr -- box a, box b");
    let t = Instant::now();
    let mut d = Deployment::start("demo").map_err(|e| e.to_string())?;
    say(&format!("   servers up in {:?}; lab directory {}", t.elapsed(), d.lab.dir().display()));

    say("== starting ntmd in both boxes (device certificate login)");
    for i in 0..2 {
        let cfg = d.agent_config(i);
        d.start_agent(i, &cfg).map_err(|e| e.to_string())?;
    }
    let mut st = Vec::new();
    for i in 0..2 {
        let s = d.wait_registered(i, 30).ok_or(format!("box {i} did not register"))?;
        say(&format!(
            "   {} registered: virtual {} and {}, seen as {}",
            s["fqdn"].as_str().unwrap_or("?"),
            s["virtual_ipv4"].as_str().unwrap_or("?"),
            s["virtual_ipv6"].as_str().unwrap_or("?"),
            s["local_addrs"][0]["addr"].as_str().unwrap_or("?")
        ));
        st.push(s);
    }
    let (a, b) = (d.boxes[0].ns.clone(), d.boxes[1].ns.clone());
    let b4 = st[1]["virtual_ipv4"].as_str().unwrap_or("").to_string();
    let b6 = st[1]["virtual_ipv6"].as_str().unwrap_or("").to_string();

    say("== box a asks its resolver for b.zone-b.test (the agent's DNS hook answers)");
    say(&format!("   A    {}", out(&d, &a, &["dig", "+short", "b.zone-b.test", "A"]).trim()));
    say(&format!("   AAAA {}", out(&d, &a, &["dig", "+short", "b.zone-b.test", "AAAA"]).trim()));
    say(&format!(
        "   and an ordinary name, forwarded: www.plain.example {}",
        out(&d, &a, &["dig", "+short", "www.plain.example"]).trim()
    ));

    say("== ping over the virtual addresses");
    say(&last_lines(&out(&d, &a, &["ping", "-c", "3", "-i", "0.2", &b4]), 2));
    say(&last_lines(&out(&d, &a, &["ping", "-6", "-c", "3", "-i", "0.2", &b6]), 2));

    if have("iperf3") {
        say("== TCP throughput, iperf3 for 3 s: over the tunnel by name, then the real addresses (baseline)");
        let tunnel = iperf(&mut d, &b, &a, "b.zone-b.test", "iperf-tunnel");
        say(&format!("   tunnel  {tunnel}"));
        let plain = iperf(&mut d, &b, &a, "203.0.113.2", "iperf-plain");
        say(&format!("   direct  {plain}"));
    }

    say("== box a moves to another subnet (198.51.100.2 -> 198.19.5.2) during a ping every 50 ms");
    let p = d
        .lab
        .spawn(&a, "ping-move", &["ping", "-c", "80", "-i", "0.05", "-W", "1", &b4], &[])
        .map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(1000));
    let moved = (|| -> ntm_lab::Result<()> {
        d.lab.del_addr(&a, "eth0", "198.51.100.2/24")?;
        d.lab.addr(&a, "eth1", "198.19.5.2/24")?;
        d.lab.route(&a, &["default", "via", "198.19.5.1"])
    })();
    moved.map_err(|e| e.to_string())?;
    d.lab.proc(p).wait(15);
    say(&last_lines(&d.lab.proc(p).log_text(), 2));
    if let Some(s) = d.status(0) {
        say(&format!(
            "   box a now: registered {}, local {}, network changes {}",
            s["registered"],
            s["local_addrs"][0]["addr"].as_str().unwrap_or("?"),
            s["counters"]["network_changes"]
        ));
    }
    say("== ntmd status in box a");
    let bin = d.bins.join("ntmd");
    let sock = d.boxes[0].status.clone();
    let status =
        std::process::Command::new(bin).arg("status").arg("-s").arg(&sock).output().map_err(|e| e.to_string())?;
    say(&String::from_utf8_lossy(&status.stdout));
    say("== done: stopping everything and deleting the namespaces");
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say(&format!("demo failed: {e}"));
            ExitCode::FAILURE
        }
    }
}
