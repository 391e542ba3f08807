//! Part: server capacity. The DC and the NS alone in a namespace, driven over loopback
//! by `ntm-bench-load`: registrations and key distributions at the DC, idle registered
//! connections at the NS.

use crate::opts::Opts;
use crate::table::Table;
use crate::util::{e2s, log, mib, text, Res};
use ntm_lab::deploy::read_status;
use ntm_lab::{have, proc_kib, Lab, Ns};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub fn capacity_table() -> Table {
    let mut t = Table::new("Server capacity", &["server, what", "rate", "per core", "notes"]);
    t.intro = "The DC and the NS run alone in a namespace and are driven over loopback by \
               `ntm-bench-load` (bench/src/bin/ntm-bench-load/), which speaks the real protocol: as the AS it hands the DC node \
               keys over mutual TLS, as each node it registers over UDP (sealed with the node's K_ntmdc) and \
               checks every answer; as a DC it gives the NS node keys, then opens one TCP connection per \
               node, registers it (sealed with K_ntmns) and leaves it idle. The DC is single-threaded, so \
               its CPU time is one core's."
        .into();
    t
}

/// The hard limit of open files of this process.
fn nofile_hard() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|x| x.starts_with("Max open files"))
                .and_then(|x| x.split_whitespace().nth(4))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(1024)
}

fn admin(bins: &Path, args: &[&str]) -> Res<()> {
    let out = Command::new(bins.join("ntm-as")).args(args).stdin(Stdio::null()).output().map_err(e2s)?;
    if !out.status.success() {
        return Err(format!("ntm-as {}: {}", args.join(" "), text(&out).trim()));
    }
    Ok(())
}

pub fn part_capacity(o: &Opts, bins: &Path, load: &Path, t: &mut Table) {
    if !load.is_file() {
        t.skip(
            "DC, NS",
            &format!("skipped: {} not built (cargo build --profile bench-tool -p ntm-bench)", load.display()),
        );
        return;
    }
    match capacity(o, bins, load, t) {
        Ok(()) => {}
        Err(e) => t.skip("capacity", &format!("failed: {e}")),
    }
}

fn capacity(o: &Opts, bins: &Path, load: &Path, t: &mut Table) -> Res<()> {
    let mut lab = Lab::new("bench-cap").map_err(e2s)?;
    let ns = lab.netns("cap", false).map_err(e2s)?;
    // Above the listening ports (4460 and up), which a closed connection could hold in TIME_WAIT.
    lab.sysctl(&ns, "net.ipv4.ip_local_port_range", "10000 65535").map_err(e2s)?;
    let dir = lab.dir().to_path_buf();
    let ca = dir.join("ca");
    let cas = ca.to_string_lossy().into_owned();
    admin(bins, &["ca", "init", "--out", &cas])?;
    let issued = ca.join("issued");
    for (role, name) in [("dc", "dc.bench.test"), ("as", "as.test"), ("ns", "ns1.bench.test")] {
        admin(
            bins,
            &["ca", "issue", "--ca", &cas, "--role", role, "--name", name, "--out", &issued.to_string_lossy()],
        )?;
    }
    let pem = |n: &str, ext: &str| issued.join(format!("{n}.{ext}")).to_string_lossy().into_owned();
    let ca_pem = ca.join("ca.pem").to_string_lossy().into_owned();

    // The DC, driven by ntm-bench-load as the AS and as the nodes.
    let dc_cfg = json!({
        "name": "dc.bench.test", "listen": ["127.0.0.1:4460"],
        "tls": {"ca": ca_pem, "cert": pem("dc.bench.test", "pem"), "key": pem("dc.bench.test", "key")},
        "status_socket": dir.join("dc.sock"),
        "zones": ["bench.test"], "virtual_ipv4": "198.18.0.0/15", "virtual_ipv6": "2001:db8:ff0::/96",
        "state": dir.join("dc.db"),
    });
    std::fs::write(dir.join("dc.json"), dc_cfg.to_string()).map_err(e2s)?;
    let dc = lab
        .spawn(
            &ns,
            "dc",
            &[&bins.join("ntm-dc").to_string_lossy(), "run", "-c", &dir.join("dc.json").to_string_lossy()],
            &[],
        )
        .map_err(e2s)?;
    if !lab.wait_for(15, || read_status(&dir.join("dc.sock")).is_some()) {
        return Err(format!("ntm-dc did not start: {}", lab.proc(dc).log_text()));
    }
    let dc_pid = lab.proc(dc).pid();
    let rss0 = proc_kib(dc_pid, "VmRSS");
    log(&format!("capacity: {} registrations at the DC", o.dc_nodes));
    let out = lab
        .try_exec(
            &ns,
            &[
                &load.to_string_lossy(),
                "dc",
                "127.0.0.1:4460",
                "dc.bench.test",
                "bench.test",
                &ca_pem,
                &pem("as.test", "pem"),
                &pem("as.test", "key"),
                &o.dc_nodes.to_string(),
                &o.dc_secs.to_string(),
                &dc_pid.to_string(),
            ],
        )
        .map_err(e2s)?;
    let line = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().to_string();
    let v: Value = serde_json::from_str(&line).map_err(|_| format!("ntm-bench-load dc: {}", text(&out).trim()))?;
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let n = f("nodes");
    t.row(vec![
        "DC (ntm-dc): registrations".into(),
        format!("{:.0} /s", f("registered") / f("regs_secs")),
        format!("{:.0} per DC CPU-second", f("registered") / f("regs_cpu")),
        format!(
            "{:.0} nodes registered in {:.1} s ({:.0} refused; at most {n:.0} nodes or {} s), 64 requests in \
             flight; each is written to SQLite (WAL, synchronous=FULL) before the answer, all of one turn of \
             the DC's loop in one transaction, and the DC's CPU was busy {:.0}% of the time (the rest it waited for the disk); DC RSS {} → {} MiB",
            f("registered"),
            f("regs_secs"),
            f("refused"),
            o.dc_secs / 2,
            100.0 * f("regs_cpu") / f("regs_secs"),
            mib(rss0),
            mib(proc_kib(dc_pid, "VmRSS"))
        ),
    ]);
    t.row(vec![
        "DC (ntm-dc): key distributions from the AS".into(),
        format!("{:.0} /s", f("keys_acked") / f("keys_secs")),
        format!("{:.0} per DC CPU-second", f("keys_acked") / f("keys_cpu")),
        format!(
            "{:.0} keys in {:.1} s over one TLS connection, 200 per batch, each acknowledged (and saved) by the DC",
            f("keys_acked"),
            f("keys_secs")
        ),
    ]);
    lab.proc(dc).stop();

    // The engine alone, in this process's child, for comparison.
    let out = Command::new(load).args(["dc-engine", "bench.test", &o.dc_nodes.to_string()]).output().map_err(e2s)?;
    let line = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().to_string();
    match serde_json::from_str::<Value>(&line) {
        Ok(v) => {
            let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
            t.row(vec![
                "DC engine alone (ntm_proto::engine::dc, in-process)".into(),
                format!("{:.0} registrations/s", f("registered") / f("regs_secs")),
                "(one thread)".into(),
                format!(
                    "the protocol work without sockets or database: {:.0} of {:.0} registered; key distributions {:.0}/s",
                    f("registered"),
                    f("nodes"),
                    f("keys_acked") / f("keys_secs")
                ),
            ]);
        }
        Err(_) => t.skip("DC engine alone", &format!("failed: {}", text(&out).trim())),
    }

    let certs = Certs {
        ca: ca_pem,
        ns: (pem("ns1.bench.test", "pem"), pem("ns1.bench.test", "key")),
        dc: (pem("dc.bench.test", "pem"), pem("dc.bench.test", "key")),
    };
    for step in o.ns_steps.clone() {
        log(&format!("capacity: {step} idle connections at the NS"));
        if let Err(e) = ns_capacity(&mut lab, &ns, bins, load, &certs, step, t) {
            t.skip(&format!("NS (ntm-ns): {step} idle registered connections"), &format!("failed: {e}"));
        }
    }
    Ok(())
}

struct Certs {
    ca: String,
    /// (certificate, key)
    ns: (String, String),
    dc: (String, String),
}

/// One NS row: `step` idle registered node connections. Each end holds a descriptor per
/// connection, and the open-file limit is per process. When it cannot be raised (no
/// CAP_SYS_RESOURCE) and one process may not hold `step`, the connections are spread over
/// as many NS processes as it takes, each with its own load generator (a deployment has
/// several NSs, and a DC spreads its nodes over them); the row adds up their memory.
fn ns_capacity(lab: &mut Lab, ns: &Ns, bins: &Path, load: &Path, certs: &Certs, step: usize, t: &mut Table) -> Res<()> {
    if !have("prlimit") {
        t.skip("NS idle connections", "skipped: `prlimit` (util-linux) not installed");
        return Ok(());
    }
    let hard = nofile_hard();
    let raisable = Command::new("prlimit")
        .arg(format!("--nofile={0}:{0}", step + 1000))
        .arg("true")
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let per_process = if raisable { step } else { (hard.saturating_sub(1000) / 1000) * 1000 };
    if per_process == 0 {
        return Err(format!("the open-file limit here is {hard}"));
    }
    let shards = step.div_ceil(per_process);
    let counts: Vec<usize> = (0..shards).map(|k| step / shards + usize::from(k < step % shards)).collect();
    let limit = if raisable { step + 1000 } else { hard };
    let nofile = format!("--nofile={limit}:{limit}");
    let dir = lab.dir().to_path_buf();
    let mut servers = Vec::new();
    for (k, n) in counts.iter().enumerate() {
        let port = 4462 + 2 * k;
        let sock = dir.join(format!("ns-{step}-{k}.sock"));
        let cfg = json!({
            "name": "ns1.bench.test", "listen": [format!("127.0.0.1:{port}")],
            "tls": {"ca": certs.ca, "cert": certs.ns.0, "key": certs.ns.1},
            "status_socket": sock,
            "node_listen": [format!("127.0.0.1:{}", port + 1), format!("[::1]:{}", port + 1)],
            "max_nodes": n + 1000,
        });
        let file = dir.join(format!("ns-{step}-{k}.json"));
        std::fs::write(&file, cfg.to_string()).map_err(e2s)?;
        let ntm_ns = bins.join("ntm-ns").to_string_lossy().into_owned();
        let p = lab
            .spawn(
                ns,
                &format!("ns-{step}-{k}"),
                &["prlimit", &nofile, &ntm_ns, "run", "-c", &file.to_string_lossy()],
                &[],
            )
            .map_err(e2s)?;
        servers.push((p, sock, port));
    }
    for (p, sock, _) in &servers {
        if !lab.wait_for(15, || read_status(sock).is_some()) {
            return Err(format!("ntm-ns did not start: {}", lab.proc(*p).log_text()));
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let rss = |lab: &mut Lab| servers.iter().map(|(p, _, _)| proc_kib(lab.proc(*p).pid(), "VmRSS")).sum::<u64>();
    let base = rss(lab);
    let t0 = Instant::now();
    let mut gens = Vec::new();
    for ((_, _, port), n) in servers.iter().zip(&counts) {
        let g = lab
            .spawn_piped(
                ns,
                &format!("ns-load-{step}-{port}"),
                &[
                    "prlimit",
                    &nofile,
                    &load.to_string_lossy(),
                    "ns",
                    &format!("127.0.0.1:{port}"),
                    &format!("127.0.0.1:{0},[::1]:{0}", port + 1),
                    "ns1.bench.test",
                    &certs.ca,
                    &certs.dc.0,
                    &certs.dc.1,
                    &n.to_string(),
                ],
            )
            .map_err(e2s)?;
        let input = lab.proc(g).take_stdin().ok_or("stdin")?;
        let output = lab.proc(g).take_stdout().ok_or("stdout")?;
        gens.push((g, input, BufReader::new(output)));
    }
    // Each generator prints one line when all its nodes are connected and registered.
    for (g, _, out) in &mut gens {
        let mut line = String::new();
        if out.read_line(&mut line).map_err(e2s)? == 0 || !line.starts_with("reached") {
            return Err(format!("ntm-bench-load ns: {} {}", line.trim(), lab.proc(*g).log_text()));
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    let connected: u64 = servers
        .iter()
        .map(|(_, sock, _)| read_status(sock).and_then(|s| s["connected_nodes"].as_u64()).unwrap_or(0))
        .sum();
    let kib = rss(lab);
    for (g, input, _) in gens {
        drop(input);
        lab.proc(g).wait(30);
    }
    for (p, _, _) in servers {
        lab.proc(p).stop();
    }
    let spread = if shards == 1 {
        "one NS process".to_string()
    } else {
        format!(
            "{shards} NS processes of {} connections each (the open-file limit here is {hard} per process and \
             cannot be raised: no CAP_SYS_RESOURCE), memory added up",
            counts.first().copied().unwrap_or(0)
        )
    };
    t.row(vec![
        format!("NS (ntm-ns): {step} idle registered connections"),
        format!("RSS {} MiB", mib(kib)),
        format!("{:.2} KiB per connection", (kib.saturating_sub(base)) as f64 / step.max(1) as f64),
        format!(
            "{spread}; {connected} nodes connected per the status sockets; {} MiB with none; all connected and \
             registered in {secs:.1} s (keys, then connections, one node after another per generator); kernel \
             socket memory is not in RSS",
            mib(base)
        ),
    ]);
    Ok(())
}
