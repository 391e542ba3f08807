//! The benchmarks of issue 7, side by side in one run on this machine: tunnel throughput
//! and latency (ntmobile's direct tunnel beside wireguard-go, boringtun and fastd over the
//! very same links), relayed throughput through the RS, handover time, tunnel set-up
//! time, idle traffic, footprint and server capacity. Not a test: it prints Markdown
//! tables (and writes them to `--out`); `docs/benchmarks.md` keeps the latest full run.
//!
//! ```text
//! ntm-bench [--quick] [--out FILE] [--only tunnel,relay,handover,setup,idle,footprint,capacity]
//!           [--rounds N] [--secs N] [--moves N] [--setups N] [--idle-secs N] [--ns-steps N,N]
//! ```
//!
//! Needs root, the release binaries (`cargo build --release --workspace --bins`, found in
//! `target/release/` beside this program's directory, or in `NTM_BIN_DIR`), the load
//! generator `ntm-bench-load` beside this program (both built by
//! `cargo build --profile bench-tool -p ntm-bench`), NSD, dig, ping, iperf3, socat, tcpdump
//! and nft. The peers are optional (wireguard-go and wg from Debian,
//! `cargo install boringtun-cli`, fastd): a part whose tool is missing prints
//! "skipped: <why>" in its row. The tunnel part also measures the agent's speed build
//! (`cargo build --profile speed -p ntm-agent`, found in `target/speed/` beside the release
//! binaries) as a row of its own, or says it was not built. `scripts/bench.sh` builds
//! everything and runs this.
//!
//! Everything runs in the lab's namespaces (documentation and benchmark address ranges
//! only) and is removed at the end, also on Ctrl-C; every wait is bounded.

use ntm_lab::deploy::{read_status, Access, Deployment, NatKind};
use ntm_lab::stream::LineStream;
use ntm_lab::{find_tool, have, is_root, proc_kib, Lab, Ns};
use ntm_proto::engine::account::DEFAULT_KEY_LIFETIME;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const B_NAME: &str = "b.zone-b.test";
/// Box a and box b on their public IPv4 links (Access::Global4).
const A_IP: &str = "198.51.100.2";
const B_IP: &str = "203.0.113.2";

type Res<T> = Result<T, String>;

fn e2s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Progress on stderr. Never panics: the release profile aborts on a panic, which would
/// skip the lab's clean-up (e.g. when stderr is a closed pipe).
fn log(s: &str) {
    let _ = writeln!(std::io::stderr(), "[bench {}] {s}", clock());
}

/// Wall-clock seconds since the epoch (packet captures use the same clock).
fn wall() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn clock() -> String {
    let s = wall() as u64;
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

// ---------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Opts {
    quick: bool,
    out: Option<PathBuf>,
    only: Vec<String>,
    /// Rounds of the tunnel comparison; each configuration keeps its best round.
    rounds: usize,
    /// Seconds of each iperf3 run.
    secs: u64,
    /// Moves in the handover part (even: box a ends where it started).
    moves: usize,
    /// Fresh tunnels timed in the set-up part, per path.
    setups: usize,
    /// Seconds of the idle-traffic window.
    idle_secs: u64,
    /// Nodes registered at the DC, at most.
    dc_nodes: usize,
    /// Seconds of the DC's load, at most (half for the keys, half for registrations).
    dc_secs: u64,
    /// Idle connections held at the NS (steps).
    ns_steps: Vec<usize>,
    argv: String,
}

const PARTS: [&str; 7] = ["tunnel", "relay", "handover", "setup", "idle", "footprint", "capacity"];

fn parse_opts() -> Res<Opts> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let mut o = Opts {
        quick,
        out: None,
        only: PARTS.iter().map(|s| s.to_string()).collect(),
        rounds: if quick { 1 } else { 2 },
        secs: if quick { 2 } else { 10 },
        moves: if quick { 4 } else { 20 },
        setups: if quick { 3 } else { 10 },
        idle_secs: if quick { 20 } else { 120 },
        dc_nodes: if quick { 1000 } else { 10_000 },
        dc_secs: if quick { 20 } else { 60 },
        ns_steps: if quick { vec![10_000] } else { vec![10_000, 100_000] },
        // The command line as the docs show it: without where the tables were written.
        argv: {
            let mut shown = Vec::new();
            let mut skip = false;
            for a in &args {
                if std::mem::take(&mut skip) {
                    continue;
                }
                skip = a == "--out";
                if !skip {
                    shown.push(a.as_str());
                }
            }
            shown.join(" ")
        },
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--quick" => {}
            "--out" => o.out = Some(PathBuf::from(val()?)),
            "--only" => o.only = val()?.split(',').map(str::to_string).collect(),
            "--rounds" => o.rounds = val()?.parse().map_err(e2s)?,
            "--secs" => o.secs = val()?.parse().map_err(e2s)?,
            "--moves" => o.moves = val()?.parse().map_err(e2s)?,
            "--setups" => o.setups = val()?.parse().map_err(e2s)?,
            "--idle-secs" => o.idle_secs = val()?.parse().map_err(e2s)?,
            "--ns-steps" => {
                o.ns_steps = val()?.split(',').map(|c| c.parse().map_err(e2s)).collect::<Res<_>>()?;
            }
            "-h" | "--help" => {
                return Err(format!(
                    "usage: ntm-bench [--quick] [--out FILE] [--only {}] [--rounds N] [--secs N] [--moves N] \
                     [--setups N] [--idle-secs N] [--ns-steps N,N]",
                    PARTS.join(",")
                ))
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if let Some(p) = o.only.iter().find(|p| !PARTS.contains(&p.as_str())) {
        return Err(format!("unknown part {p} (parts: {})", PARTS.join(",")));
    }
    o.rounds = o.rounds.clamp(1, 5);
    o.secs = o.secs.clamp(1, 60);
    o.moves = (o.moves.clamp(2, 100) / 2) * 2;
    o.setups = o.setups.clamp(1, 100);
    o.idle_secs = o.idle_secs.clamp(10, 3600);
    Ok(o)
}

impl Opts {
    fn wants(&self, part: &str) -> bool {
        self.only.iter().any(|p| p == part)
    }
}

// ---------------------------------------------------------------------------------------
// Tables
// ---------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Table {
    title: String,
    intro: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    notes: Vec<String>,
}

impl Table {
    fn new(title: &str, header: &[&str]) -> Table {
        Table { title: title.into(), header: header.iter().map(|s| s.to_string()).collect(), ..Table::default() }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// A row whose first cell names it and whose second says why it has no numbers.
    fn skip(&mut self, name: &str, why: &str) {
        let mut cells = vec![name.to_string(), why.to_string()];
        cells.resize(self.header.len().max(2), String::new());
        self.rows.push(cells);
    }

    fn note(&mut self, n: impl Into<String>) {
        self.notes.push(n.into());
    }

    fn markdown(&self) -> String {
        let mut s = format!("### {}\n\n", self.title);
        if !self.intro.is_empty() {
            let _ = writeln!(s, "{}\n", self.intro);
        }
        let _ = writeln!(s, "| {} |", self.header.join(" | "));
        let _ = writeln!(s, "|{}", self.header.iter().map(|_| "---|").collect::<String>());
        for r in &self.rows {
            // A cell is one line, and a '|' in it would start another cell.
            let mut cells: Vec<String> =
                r.iter().map(|c| c.split_whitespace().collect::<Vec<_>>().join(" ").replace('|', "\\|")).collect();
            cells.resize(self.header.len(), String::new());
            let _ = writeln!(s, "| {} |", cells.join(" | "));
        }
        if !self.notes.is_empty() {
            s.push('\n');
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }
}

// ---------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------

/// utime + stime of `pid`, seconds.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    let Some((_, rest)) = s.rsplit_once(')') else { return 0.0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / clk_tck()
}

fn clk_tck() -> f64 {
    static TCK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn run_in(lab: &Lab, ns: &Ns, cmd: &[&str]) -> Res<String> {
    lab.exec(ns, cmd).map(|o| text(&o)).map_err(e2s)
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

fn gbit(bps: f64) -> String {
    format!("{:.2}", bps / 1e9)
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn ms(s: f64) -> String {
    if s.is_nan() {
        "-".into()
    } else if s < 0.01 {
        format!("{:.2}", s * 1000.0)
    } else if s < 0.1 {
        format!("{:.1}", s * 1000.0)
    } else {
        format!("{:.0}", s * 1000.0)
    }
}

// ---------------------------------------------------------------------------------------
// Throughput and latency through one path
// ---------------------------------------------------------------------------------------

/// What one configuration gave in one round.
#[derive(Debug, Clone, Default)]
struct Measured {
    fwd_bps: f64,
    rev_bps: f64,
    rtt_ms: f64,
    /// CPU seconds of the measured daemons over both runs.
    cpu: f64,
    /// Gigabits moved over both runs.
    gbits: f64,
    /// Per daemon: (idle VmRSS, peak VmHWM), KiB.
    rss: Vec<(u64, u64)>,
    /// Extra CPU seconds, by daemon label (e.g. the RS).
    extra_cpu: Vec<(String, f64)>,
}

impl Measured {
    fn mean_bps(&self) -> f64 {
        (self.fwd_bps + self.rev_bps) / 2.0
    }
    fn cpu_per_gbit(&self) -> f64 {
        if self.gbits > 0.0 {
            self.cpu / self.gbits
        } else {
            f64::NAN
        }
    }
    fn rss_idle(&self) -> u64 {
        self.rss.iter().map(|r| r.0).max().unwrap_or(0)
    }
    fn rss_peak(&self) -> u64 {
        self.rss.iter().map(|r| r.1).max().unwrap_or(0)
    }
}

/// `ping` from `ns` to `dst`: the mean round-trip time in ms.
fn ping_rtt(lab: &Lab, ns: &Ns, dst: &str, count: u32) -> Res<f64> {
    let c = count.to_string();
    let out = lab.try_exec(ns, &["ping", "-q", "-c", &c, "-i", "0.02", "-W", "2", dst]).map_err(e2s)?;
    let t = text(&out);
    // rtt min/avg/max/mdev = 0.061/0.083/0.131/0.018 ms
    let avg = t
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| v.trim().split('/').nth(1))
        .and_then(|v| v.parse().ok());
    avg.ok_or_else(|| format!("ping {dst}: {}", t.trim()))
}

/// How long a client waits for a busy iperf3 server: more than the server's receive timeout.
const IPERF_BUSY_WAIT_SECS: u64 = 15;

/// The iperf3 server of a part. `--rcv-timeout`: a test whose data stops (its tunnel was
/// taken down under it) ends after 5 s instead of the default 120 s, so it cannot keep
/// the server busy for the next row.
const IPERF_SERVER: &[&str] = &["iperf3", "-s", "--rcv-timeout", "5000"];

/// The receiver's rate (bit/s) and bytes of one iperf3 run from box `a` to `dst` (`-R`:
/// from `dst` to box `a`). The iperf3 server runs in the other box.
fn iperf(lab: &mut Lab, a: &Ns, dst: &str, secs: u64, reverse: bool, tag: &str) -> Res<(f64, f64)> {
    let s = secs.to_string();
    let mut cmd = vec!["iperf3", "-c", dst, "-t", &s, "-J", "--connect-timeout", "3000"];
    if reverse {
        // The client receives: a stream whose data stops ends after 5 s (iperf3 takes
        // --rcv-timeout only from the receiving side).
        cmd.extend(["-R", "--rcv-timeout", "5000"]);
    }
    let label = format!("iperf-{tag}-{}", if reverse { "rev" } else { "fwd" });
    // The server runs one test at a time and is "busy" until it has closed the last one
    // (a moment after a normal end; up to its --rcv-timeout after a test whose tunnel was
    // taken down): wait for it rather than fail the row.
    let give_up = std::time::Instant::now() + Duration::from_secs(IPERF_BUSY_WAIT_SECS);
    let v = loop {
        let p = lab.spawn(a, &label, &cmd, &[]).map_err(e2s)?;
        lab.proc(p).wait(secs + 20);
        let log = lab.proc(p).log_text();
        let start = log.find('{').ok_or_else(|| format!("iperf3 to {dst}: {}", log.trim()))?;
        let v: Value = serde_json::from_str(&log[start..]).map_err(|e| format!("iperf3 output: {e}"))?;
        match v["error"].as_str() {
            Some(err) if err.contains("busy") && std::time::Instant::now() < give_up => {
                std::thread::sleep(Duration::from_millis(500));
            }
            Some(err) => return Err(format!("iperf3 to {dst}: {err}")),
            None => break v,
        }
    };
    let r = &v["end"]["sum_received"];
    match (r["bits_per_second"].as_f64(), r["bytes"].as_f64()) {
        (Some(bps), Some(bytes)) if bps > 0.0 => Ok((bps, bytes)),
        _ => Err(format!("iperf3 to {dst}: no result")),
    }
}

/// Ping and iperf3 both ways from box a to `dst`, with the CPU time and memory of `pids`
/// (the tunnel daemons of both ends) and of `extra` (other daemons on the path).
fn measure(
    lab: &mut Lab,
    a: &Ns,
    dst: &str,
    pids: &[u32],
    extra: &[(String, u32)],
    o: &Opts,
    tag: &str,
) -> Res<Measured> {
    // Warm up (a handshake, ARP) and check the path: some peers take a few seconds to
    // finish their first handshake.
    let ok =
        lab.wait_for(10, || lab.try_exec(a, &["ping", "-c", "1", "-W", "1", dst]).is_ok_and(|o| o.status.success()));
    if !ok {
        return Err(format!("no path to {dst} within 10 s"));
    }
    let mut m = Measured {
        rtt_ms: ping_rtt(lab, a, dst, if o.quick { 10 } else { 50 })?,
        rss: pids.iter().map(|p| (proc_kib(*p, "VmRSS"), 0)).collect(),
        ..Measured::default()
    };
    let cpu0: f64 = pids.iter().map(|p| cpu_secs(*p)).sum();
    let extra0: Vec<f64> = extra.iter().map(|(_, p)| cpu_secs(*p)).collect();
    let (fwd, fwd_bytes) = iperf(lab, a, dst, o.secs, false, tag)?;
    let (rev, rev_bytes) = iperf(lab, a, dst, o.secs, true, tag)?;
    m.cpu = pids.iter().map(|p| cpu_secs(*p)).sum::<f64>() - cpu0;
    m.extra_cpu = extra.iter().zip(extra0).map(|((l, p), c0)| (l.clone(), cpu_secs(*p) - c0)).collect();
    m.fwd_bps = fwd;
    m.rev_bps = rev;
    m.gbits = (fwd_bytes + rev_bytes) * 8.0 / 1e9;
    for (r, p) in m.rss.iter_mut().zip(pids) {
        r.1 = proc_kib(*p, "VmHWM");
    }
    Ok(m)
}

// ---------------------------------------------------------------------------------------
// The peers: wireguard-go, boringtun, fastd, in the same boxes over the same links
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Peer {
    WireguardGo,
    Boringtun1,
    BoringtunDefault,
    Fastd,
}

impl Peer {
    const ALL: [Peer; 4] = [Peer::WireguardGo, Peer::Boringtun1, Peer::BoringtunDefault, Peer::Fastd];

    fn name(self) -> &'static str {
        match self {
            Peer::WireguardGo => "wireguard-go",
            Peer::Boringtun1 => "boringtun, 1 thread",
            Peer::BoringtunDefault => "boringtun, default threads (4)",
            Peer::Fastd => "fastd (salsa2012+umac)",
        }
    }

    /// Interface name prefix, inner /24 and UDP port.
    fn plan(self) -> (&'static str, &'static str, u16) {
        match self {
            Peer::WireguardGo => ("wgo", "198.19.201", 51821),
            Peer::Boringtun1 => ("bt1", "198.19.202", 51822),
            Peer::BoringtunDefault => ("btd", "198.19.203", 51823),
            Peer::Fastd => ("fsd", "198.19.204", 51824),
        }
    }

    fn missing(self) -> Option<String> {
        let need: &[&str] = match self {
            Peer::WireguardGo => &["wireguard-go", "wg"],
            Peer::Boringtun1 | Peer::BoringtunDefault => &["boringtun-cli", "wg"],
            Peer::Fastd => &["fastd"],
        };
        need.iter().find(|t| !have_tool(t)).map(|t| format!("skipped: `{t}` not installed"))
    }
}

/// `have`, also looking in ~/.cargo/bin (where `cargo install` puts boringtun-cli).
fn have_tool(t: &str) -> bool {
    tool_path(t).is_some()
}

fn tool_path(t: &str) -> Option<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    let p = home.join(".cargo/bin").join(t);
    if p.is_file() {
        return Some(p);
    }
    find_tool(t)
}

fn tool(t: &str) -> String {
    tool_path(t).map(|p| p.to_string_lossy().into_owned()).unwrap_or_else(|| t.to_string())
}

/// A running pair of peer daemons.
struct PeerUp {
    procs: Vec<usize>,
    ifaces: [String; 2],
    /// The inner address of box b's end.
    target: String,
}

fn wg_keys(dir: &Path, tag: &str) -> Res<(PathBuf, String)> {
    let private = Command::new(tool("wg")).arg("genkey").output().map_err(e2s)?;
    let key = String::from_utf8_lossy(&private.stdout).trim().to_string();
    let path = dir.join(format!("{tag}.key"));
    std::fs::write(&path, format!("{key}\n")).map_err(e2s)?;
    let mut child =
        Command::new(tool("wg")).arg("pubkey").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().map_err(e2s)?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(key.as_bytes()).map_err(e2s)?;
    }
    let public = child.wait_with_output().map_err(e2s)?;
    Ok((path, String::from_utf8_lossy(&public.stdout).trim().to_string()))
}

fn wait_iface(lab: &Lab, ns: &Ns, iface: &str, secs: u64) -> bool {
    lab.wait_for(secs, || lab.try_exec(ns, &["ip", "link", "show", iface]).is_ok_and(|o| o.status.success()))
}

/// Starts `peer` in box a and box b (`ends`: their namespaces and public addresses).
fn peer_up(lab: &mut Lab, ends: &[(Ns, &str); 2], peer: Peer) -> Res<PeerUp> {
    let (pfx, inner, port) = peer.plan();
    let suffix = std::process::id() % 100_000;
    let ifaces = [format!("{pfx}{suffix}a"), format!("{pfx}{suffix}b")];
    let inner_of = |s: usize| format!("{inner}.{}", s + 1);
    let dir = lab.dir().to_path_buf();
    let mut procs = Vec::new();
    if peer == Peer::Fastd {
        let mut keys = Vec::new();
        for _ in 0..2 {
            let out = Command::new("fastd").arg("--generate-key").output().map_err(e2s)?;
            let t = text(&out);
            let get = |k: &str| t.lines().find_map(|l| l.strip_prefix(k)).map(|v| v.trim().to_string());
            keys.push((get("Secret:").ok_or("fastd key")?, get("Public:").ok_or("fastd key")?));
        }
        for s in 0..2 {
            let conf = format!(
                "log level info;\ninterface \"{}\";\nmode tun;\nmethod \"salsa2012+umac\";\nbind {}:{port};\n\
                 secret \"{}\";\nmtu 1420;\npeer \"other\" {{\n  key \"{}\";\n  remote {}:{port};\n}}\n",
                ifaces[s],
                ends[s].1,
                keys[s].0,
                keys[1 - s].1,
                ends[1 - s].1
            );
            let path = dir.join(format!("fastd-{s}.conf"));
            std::fs::write(&path, conf).map_err(e2s)?;
            let p = lab
                .spawn(&ends[s].0, &format!("fastd-{s}"), &["fastd", "--config", &path.to_string_lossy()], &[])
                .map_err(e2s)?;
            procs.push(p);
            // One end at a time: a first handshake sent before the other end listens is
            // retried only seconds later.
            if !wait_iface(lab, &ends[s].0, &ifaces[s], 10) {
                return Err(format!("fastd: interface {} did not appear: {}", ifaces[s], lab.proc(p).log_text()));
            }
        }
    } else {
        let keys = ifaces.iter().map(|i| wg_keys(&dir, i)).collect::<Res<Vec<_>>>()?;
        for s in 0..2 {
            let (ns, iface) = (&ends[s].0, &ifaces[s]);
            let p = match peer {
                Peer::WireguardGo => lab.spawn(
                    ns,
                    &format!("wireguard-go-{s}"),
                    &["wireguard-go", "-f", iface],
                    &[("WG_PROCESS_FOREGROUND", "1")],
                ),
                _ => {
                    let log_file = dir.join(format!("boringtun-{iface}.log"));
                    let mut cmd =
                        vec![tool("boringtun-cli"), "--foreground".into(), "--disable-drop-privileges".into()];
                    if peer == Peer::Boringtun1 {
                        cmd.extend(["--threads".into(), "1".into()]);
                    }
                    cmd.extend(["-l".into(), log_file.to_string_lossy().into_owned(), iface.clone()]);
                    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
                    lab.spawn(ns, &format!("boringtun-{s}"), &cmd, &[("WG_SUDO", "1")])
                }
            }
            .map_err(e2s)?;
            procs.push(p);
            let sock = PathBuf::from(format!("/var/run/wireguard/{iface}.sock"));
            if !lab.wait_for(10, || sock.exists()) {
                return Err(format!("{}: no control socket for {iface}: {}", peer.name(), lab.proc(p).log_text()));
            }
        }
        for s in 0..2 {
            let peer_inner = format!("{}/32", inner_of(1 - s));
            let endpoint = format!("{}:{port}", ends[1 - s].1);
            run_in(
                lab,
                &ends[s].0,
                &[
                    &tool("wg"),
                    "set",
                    &ifaces[s],
                    "private-key",
                    &keys[s].0.to_string_lossy(),
                    "listen-port",
                    &port.to_string(),
                    "peer",
                    &keys[1 - s].1,
                    "allowed-ips",
                    &peer_inner,
                    "endpoint",
                    &endpoint,
                ],
            )?;
        }
    }
    for s in 0..2 {
        if !wait_iface(lab, &ends[s].0, &ifaces[s], 10) {
            return Err(format!(
                "{}: interface {} did not appear: {}",
                peer.name(),
                ifaces[s],
                lab.proc(procs[s]).log_text()
            ));
        }
        run_in(lab, &ends[s].0, &["ip", "addr", "add", &format!("{}/24", inner_of(s)), "dev", &ifaces[s]])?;
        run_in(lab, &ends[s].0, &["ip", "link", "set", &ifaces[s], "mtu", "1420", "up"])?;
    }
    Ok(PeerUp { procs, target: inner_of(1), ifaces })
}

fn peer_down(lab: &mut Lab, ends: &[(Ns, &str); 2], up: &PeerUp) {
    for p in &up.procs {
        lab.proc(*p).stop();
    }
    for ((ns, _), iface) in ends.iter().zip(&up.ifaces) {
        let _ = lab.try_exec(ns, &["ip", "link", "del", iface]);
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{iface}.sock"));
    }
}

/// The two builds of the agent that the tunnel part measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NtmBuild {
    /// `[profile.release]`: opt-level "z" with AES-CCM (ntm-aead and the RustCrypto
    /// crates under it) at 3, as shipped to routers.
    Size,
    /// `[profile.speed]`: the release profile at opt-level 3, for x86_64 gateways.
    Speed,
}

impl NtmBuild {
    const ALL: [NtmBuild; 2] = [NtmBuild::Size, NtmBuild::Speed];

    /// Its row name, Cargo profile, short tag, and the command that builds it.
    fn spec(self) -> [&'static str; 4] {
        match self {
            NtmBuild::Size => [
                "ntmobile direct (AES-128-CCM), release build (opt-level z, AES-CCM at 3)",
                "release",
                "z",
                "cargo build --release -p ntm-agent",
            ],
            NtmBuild::Speed => [
                "ntmobile direct (AES-128-CCM), speed build (profile speed, opt-level 3)",
                "speed",
                "o3",
                "cargo build --profile speed -p ntm-agent",
            ],
        }
    }

    fn name(self) -> &'static str {
        self.spec()[0]
    }

    fn profile(self) -> &'static str {
        self.spec()[1]
    }

    fn tag(self) -> &'static str {
        self.spec()[2]
    }

    fn how(self) -> &'static str {
        self.spec()[3]
    }

    /// Where this build's `ntmd` is: the release binaries' directory, or its sibling
    /// `speed` (`target/release` and `target/speed`).
    fn ntmd(self, bins: &Path) -> PathBuf {
        match self {
            NtmBuild::Size => bins.join("ntmd"),
            NtmBuild::Speed => bins.with_file_name("speed").join("ntmd"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Deployments
// ---------------------------------------------------------------------------------------

fn agent_pid(d: &mut Deployment, i: usize) -> Option<u32> {
    let p = d.boxes[i].proc?;
    Some(d.lab.proc(p).pid())
}

fn server_pid(d: &mut Deployment, label: &str) -> Option<u32> {
    let i = d.servers.iter().find(|(l, _, _)| l == label).map(|s| s.2)?;
    Some(d.lab.proc(i).pid())
}

/// Starts both agents (log level info, as in production) and makes the tunnel from a to
/// b by name; b's virtual IPv4 address.
fn agents_up(d: &mut Deployment, path: &str) -> Res<String> {
    let ntmd = d.bins.join("ntmd");
    agents_up_with(d, path, &ntmd)
}

/// [`agents_up`] with the agent binary `ntmd` (the release build or the speed build).
fn agents_up_with(d: &mut Deployment, path: &str, ntmd: &Path) -> Res<String> {
    let program = ntmd.to_string_lossy().into_owned();
    for i in 0..2 {
        let mut cfg = d.agent_config(i);
        cfg["log_level"] = "info".into();
        d.start_agent_with(i, &cfg, &[&program]).map_err(e2s)?;
    }
    let mut b4 = String::new();
    for i in 0..2 {
        let st = d.wait_registered(i, 30).ok_or_else(|| format!("box {i} not registered within 30 s"))?;
        b4 = st["virtual_ipv4"].as_str().unwrap_or_default().to_string();
    }
    let got = d.dig(0, B_NAME, "A");
    if got != b4 {
        return Err(format!("the DNS hook answered {got:?}, not {b4}"));
    }
    if !d.wait_path(0, B_NAME, path, 15) {
        return Err(format!("the tunnel did not settle on the {path} path: {:?}", d.tunnel(0, B_NAME)));
    }
    Ok(b4)
}

fn agents_down(d: &mut Deployment) {
    d.stop_agent(0);
    d.stop_agent(1);
}

/// Results kept for the footprint table.
#[derive(Debug, Default)]
struct Footprint {
    /// (what, idle RSS KiB, peak RSS KiB)
    rss: Vec<(String, u64, u64)>,
}

// ---------------------------------------------------------------------------------------
// Part: tunnel throughput and latency, direct
// ---------------------------------------------------------------------------------------

fn tunnel_header() -> Vec<&'static str> {
    vec![
        "path",
        "a→b Gbit/s",
        "b→a Gbit/s",
        "vs best peer",
        "ping RTT ms",
        "CPU s per Gbit (both ends)",
        "RSS idle / peak MiB (larger end)",
    ]
}

fn tunnel_row(name: &str, m: &Measured, best: Option<f64>) -> Vec<String> {
    vec![
        name.to_string(),
        gbit(m.fwd_bps),
        gbit(m.rev_bps),
        best.filter(|b| *b > 0.0).map(|b| format!("{:.2}x", m.mean_bps() / b)).unwrap_or_else(|| "-".into()),
        format!("{:.3}", m.rtt_ms),
        if m.cpu > 0.0 { format!("{:.2}", m.cpu_per_gbit()) } else { "-".into() },
        if m.rss.is_empty() { "-".into() } else { format!("{} / {}", mib(m.rss_idle()), mib(m.rss_peak())) },
    ]
}

fn keep_best(slot: &mut Option<Res<Measured>>, r: Res<Measured>) {
    let better = match (&*slot, &r) {
        (None, _) | (Some(Err(_)), Ok(_)) => true,
        (Some(Ok(old)), Ok(new)) => new.mean_bps() > old.mean_bps(),
        _ => false,
    };
    if better {
        *slot = Some(r);
    }
}

fn part_tunnel(d: &mut Deployment, o: &Opts, fp: &mut Footprint) -> Table {
    let mut t = Table::new("Tunnel throughput and latency (direct)", &tunnel_header());
    t.intro = format!(
        "Box a (198.51.100.2) and box b (203.0.113.2) of the lab deployment, joined through the lab's \
         router by veth links; every row uses these same two namespaces and links, one after the other, \
         in each of {} round(s). iperf3, one TCP stream, {} s each way; ping every 20 ms. Each row \
         keeps its best round.",
        o.rounds, o.secs
    );
    let (a, b) = (d.boxes[0].ns.clone(), d.boxes[1].ns.clone());
    // One iperf3 server in box b for the whole part (it listens on every address).
    if let Err(e) = d.lab.spawn(&b, "iperf-server", IPERF_SERVER, &[]) {
        t.skip("all", &format!("failed: iperf3 server: {e}"));
        return t;
    }
    std::thread::sleep(Duration::from_millis(300));
    let ends = [(a.clone(), A_IP), (b.clone(), B_IP)];
    let mut bare: Option<Res<Measured>> = None;
    // The agent as built for routers (release: opt-level "z", AES-CCM at 3) and for x86_64
    // servers and gateways (profile speed: all at opt-level 3), each its own row.
    let mut ntm: Vec<(NtmBuild, Option<Res<Measured>>)> = NtmBuild::ALL.iter().map(|b| (*b, None)).collect();
    let mut peers: Vec<(Peer, Option<Res<Measured>>)> = Peer::ALL.iter().map(|p| (*p, None)).collect();
    for round in 0..o.rounds {
        log(&format!("tunnel round {}: bare path", round + 1));
        let r = measure(&mut d.lab, &a, B_IP, &[], &[], o, &format!("bare{round}"));
        keep_best(&mut bare, r);

        for (build, slot) in ntm.iter_mut() {
            let ntmd = build.ntmd(&d.bins);
            if !ntmd.is_file() {
                continue;
            }
            log(&format!("tunnel round {}: {}", round + 1, build.name()));
            let r = agents_up_with(d, "direct", &ntmd).and_then(|b4| {
                let pids: Vec<u32> = (0..2).filter_map(|i| agent_pid(d, i)).collect();
                measure(&mut d.lab, &a, &b4, &pids, &[], o, &format!("ntm-{}{round}", build.tag()))
            });
            if let Err(e) = &r {
                log(&format!("{}: {e}", build.name()));
            }
            keep_best(slot, r);
            agents_down(d);
        }

        for (peer, slot) in peers.iter_mut() {
            if peer.missing().is_some() {
                continue;
            }
            log(&format!("tunnel round {}: {}", round + 1, peer.name()));
            let r = match peer_up(&mut d.lab, &ends, *peer) {
                Ok(up) => {
                    let pids: Vec<u32> = up.procs.iter().map(|p| d.lab.proc(*p).pid()).collect();
                    let r = measure(&mut d.lab, &a, &up.target, &pids, &[], o, &format!("{}{round}", peer.plan().0));
                    peer_down(&mut d.lab, &ends, &up);
                    r
                }
                Err(e) => Err(e),
            };
            if let Err(e) = &r {
                log(&format!("{}: {e}", peer.name()));
            }
            keep_best(slot, r);
        }
    }
    let best_peer = peers
        .iter()
        .filter_map(|(p, r)| match r {
            Some(Ok(m)) => Some((*p, m.mean_bps())),
            _ => None,
        })
        .max_by(|x, y| x.1.total_cmp(&y.1));
    let best = best_peer.map(|b| b.1);
    let emit = |t: &mut Table, name: &str, r: &Option<Res<Measured>>| match r {
        Some(Ok(m)) => t.row(tunnel_row(name, m, best)),
        Some(Err(e)) => t.skip(name, &format!("failed: {e}")),
        None => t.skip(name, "skipped"),
    };
    emit(&mut t, "bare path (no tunnel)", &bare);
    for (build, r) in &ntm {
        let ntmd = build.ntmd(&d.bins);
        if ntmd.is_file() {
            emit(&mut t, &format!("**{}**", build.name()), r);
        } else {
            t.skip(
                &format!("**{}**", build.name()),
                &format!("skipped: {} not built ({})", ntmd.display(), build.how()),
            );
        }
    }
    for (p, r) in &peers {
        match (p.missing(), r) {
            (Some(why), _) => t.skip(p.name(), &why),
            (None, r) => emit(&mut t, p.name(), r),
        }
    }
    if let Some((p, _)) = best_peer {
        t.note(format!(
            "best peer in this run: {} (the ratio column divides the mean of both directions by its mean)",
            p.name()
        ));
    }
    for (build, r) in &ntm {
        if let Some(Ok(m)) = r {
            if let Some(b) = best {
                t.note(format!(
                    "{} against the best peer: {:.2}x (target: at least 1.2x)",
                    build.name(),
                    m.mean_bps() / b
                ));
            }
            fp.rss.push((format!("ntmd, {} (each box)", build.profile()), m.rss_idle(), m.rss_peak()));
        }
    }
    for (p, r) in &peers {
        if let Some(Ok(m)) = r {
            fp.rss.push((p.name().into(), m.rss_idle(), m.rss_peak()));
        }
    }
    t.note(
        "CPU: utime+stime of the two tunnel daemons (/proc/PID/stat) over both iperf3 runs, divided by the \
         gigabits received; kernel work done outside the daemons' system calls (softirq) is not in it, for \
         any row. RSS: VmRSS before the runs and VmHWM after them, of the larger of the two ends.",
    );
    t.note("ntmobile's rows are measured with `log_level: info` (the daemons' default); the peers use their defaults.");
    t
}

// ---------------------------------------------------------------------------------------
// Part: relayed throughput (and the RS's packet rate)
// ---------------------------------------------------------------------------------------

/// Sum of the RS's relayed packet counters.
fn rs_relayed(d: &Deployment) -> u64 {
    read_status(&d.lab.dir().join("rs.sock"))
        .and_then(|s| s["sessions"].as_array().map(|a| a.iter().filter_map(|x| x["relayed"].as_u64()).sum()))
        .unwrap_or(0)
}

fn part_relay(d: &mut Deployment, o: &Opts, cap: &mut Table) -> Table {
    let mut t = Table::new("Relayed throughput (through the RS)", &tunnel_header());
    t.intro = format!(
        "Box a has only IPv4 and box b only IPv6, so the DC sends their tunnel through the RS (dual stack). \
         Same measurements as above; iperf3 {} s each way.",
        o.secs
    );
    let (a, b) = (d.boxes[0].ns.clone(), d.boxes[1].ns.clone());
    let r = (|| -> Res<(Measured, f64, u64)> {
        d.lab.spawn(&b, "iperf-server", IPERF_SERVER, &[]).map_err(e2s)?;
        let b4 = agents_up(d, "relay")?;
        let pids: Vec<u32> = (0..2).filter_map(|i| agent_pid(d, i)).collect();
        let rs = server_pid(d, "rs").ok_or("no RS process")?;
        let relayed0 = rs_relayed(d);
        let t0 = Instant::now();
        let m = measure(&mut d.lab, &a, &b4, &pids, &[("RS".into(), rs)], o, "relay")?;
        let wall_secs = t0.elapsed().as_secs_f64();
        Ok((m, wall_secs, rs_relayed(d) - relayed0))
    })();
    match r {
        Ok((m, wall_secs, relayed)) => {
            t.row(tunnel_row("**ntmobile via RS**", &m, None));
            let rs_cpu = m.extra_cpu.first().map(|x| x.1).unwrap_or(0.0);
            t.note(format!(
                "the RS itself: {:.2} CPU s per Gbit, {relayed} packets relayed in {:.1} s",
                rs_cpu / m.gbits.max(1e-9),
                wall_secs
            ));
            t.note("CPU and RSS columns: the two agents (the RS's CPU is in the note above).");
            let per_cpu = if rs_cpu > 0.0 { format!("{:.0}", relayed as f64 / rs_cpu) } else { "-".into() };
            cap.row(vec![
                "RS (ntm-rs), packets relayed for the iperf3 runs above".into(),
                format!("{:.0} packets/s (wall, limited by the agents)", relayed as f64 / wall_secs.max(1e-9)),
                format!("{per_cpu} packets per RS CPU-second"),
                format!("{relayed} packets, RS CPU {rs_cpu:.2} s"),
            ]);
        }
        Err(e) => {
            t.skip("ntmobile via RS", &format!("failed: {e}"));
            cap.skip("RS (ntm-rs)", &format!("failed: {e}"));
        }
    }
    t
}

// ---------------------------------------------------------------------------------------
// Part: handover
// ---------------------------------------------------------------------------------------

fn part_handover(d: &mut Deployment, o: &Opts) -> Table {
    let mut t =
        Table::new("Handover (box a moves between two links)", &["what", "median ms", "max ms", "runs", "notes"]);
    t.intro = format!(
        "Box a moves {} times between its link eth0 (198.51.100.2) and a second link eth1 (198.19.5.2), \
         alternately: one `ip -batch` deletes the old address, adds the new one and replaces the default \
         route. Meanwhile box a pings box b's virtual address every 10 ms and keeps a TCP connection to it \
         with a line sent every 10 ms and echoed back. Time 0 is the start of the address change.",
        o.moves
    );
    match handover(d, o) {
        Ok(Handover { first, stall, lost: lost_lines, moves, repairs }) => {
            t.row(vec![
                "address change → first tunnel packet from the peer on the new link (capture)".into(),
                ms(median(&first)),
                ms(max(&first)),
                format!("{}/{moves}", first.len()),
                "tcpdump on box a's new link: first UDP datagram from box b's tunnel port to the new address".into(),
            ]);
            t.row(vec![
                "TCP stall seen by the application".into(),
                ms(median(&stall)),
                ms(max(&stall)),
                format!("{}/{moves}", stall.len()),
                format!(
                    "longest gap between echoed lines (sent every 10 ms) around each move; moves with a \
                     stall over 100 ms: {}; lines lost or reordered: {lost_lines}",
                    stall.iter().filter(|s| **s > 0.1).count()
                ),
            ]);
            t.note(format!(
                "repairs over all moves: box a held {} datagrams the kernel refused while it had no route and \
                 sent them once the route was back; box b sent {} recent packets again to box a's new address \
                 (`ntmd status`: held_sent, resent_to_moved_peer)",
                repairs.0, repairs.1
            ));
            let target = if max(&first) <= 0.1 && max(&stall) <= 0.1 { "met" } else { "not met" };
            t.note(format!("target: at most 100 ms in the lab ({target} by the maxima above)"));
        }
        Err(e) => t.skip("handover", &format!("failed: {e}")),
    }
    t
}

struct Handover {
    /// Address change to the first packet from the peer on the new link, seconds.
    first: Vec<f64>,
    /// The longest gap in the echoed stream around each move, seconds.
    stall: Vec<f64>,
    /// Lines missing or out of order.
    lost: u64,
    moves: usize,
    /// Datagrams box a held for want of a route and sent later, and packets box b sent
    /// again to box a's new address.
    repairs: (u64, u64),
}

fn handover(d: &mut Deployment, o: &Opts) -> Res<Handover> {
    for tl in ["tcpdump", "socat"] {
        if !have(tl) {
            return Err(format!("skipped: `{tl}` not installed"));
        }
    }
    let (a, b) = (d.boxes[0].ns.clone(), d.boxes[1].ns.clone());
    let b4 = agents_up(d, "direct")?;
    d.lab.capture(&a, "eth0", "ho-eth0").map_err(e2s)?;
    d.lab.capture(&a, "eth1", "ho-eth1").map_err(e2s)?;
    // The inner packets too, for a look at the TCP stream when the lab is kept (NTM_LAB_KEEP).
    d.lab.capture(&a, "ntm0", "ho-tun").map_err(e2s)?;
    d.echo_server(1, "ho-echo", "TCP4-LISTEN:7000,reuseaddr,fork").map_err(e2s)?;
    let _ = b;
    let settle = if o.quick { 1.5 } else { 2.0 };
    let total_secs = (o.moves as f64 * settle + 10.0) as u64;
    let count = (total_secs * 100).to_string();
    let pinger =
        d.lab.spawn(&a, "ho-ping", &["ping", "-q", "-i", "0.01", "-c", &count, "-W", "1", &b4], &[]).map_err(e2s)?;
    let stream = LineStream::start_paced(
        d,
        0,
        &format!("TCP4:{B_NAME}:7000"),
        Duration::from_millis(10),
        Duration::from_secs(total_secs),
    )
    .map_err(e2s)?;
    if !d.lab.wait_for(10, || stream.count() >= 50) {
        let _ = stream.finish(d);
        return Err("the echoed line stream did not start".into());
    }
    let batch_dir = d.lab.dir().to_path_buf();
    // (wall time for the captures, the same moment for the echoes, new link, new address)
    let mut moves: Vec<(f64, Instant, &str, &str)> = Vec::new();
    let mut failure = None;
    for k in 0..o.moves {
        // Odd moves go to eth1, even ones back to eth0.
        let (old_if, old, new_if, new, gw, new_ip) = if k % 2 == 0 {
            ("eth0", "198.51.100.2/24", "eth1", "198.19.5.2/24", "198.19.5.1", "198.19.5.2")
        } else {
            ("eth1", "198.19.5.2/24", "eth0", "198.51.100.2/24", "198.51.100.1", A_IP)
        };
        let batch = batch_dir.join(format!("move-{k}.batch"));
        let cmds =
            format!("address del {old} dev {old_if}\naddress add {new} dev {new_if}\nroute replace default via {gw}\n");
        if let Err(e) = std::fs::write(&batch, cmds) {
            failure = Some(e.to_string());
            break;
        }
        let (t0, at) = (wall(), Instant::now());
        if let Err(e) = d.lab.exec(&a, &["ip", "-batch", &batch.to_string_lossy()]) {
            failure = Some(format!("move {k}: {e}"));
            break;
        }
        moves.push((t0, at, new_if, new_ip));
        std::thread::sleep(Duration::from_secs_f64(settle));
    }
    std::thread::sleep(Duration::from_millis(500));
    let counter = |i: usize, name: &str| d.status(i).and_then(|s| s["counters"][name].as_u64()).unwrap_or(0);
    let repairs = (counter(0, "held_sent"), counter(1, "resent_to_moved_peer"));
    let got = stream.echoes();
    let _ = stream.finish(d);
    d.lab.proc(pinger).stop();
    d.lab.stop_capture("ho-eth0");
    d.lab.stop_capture("ho-eth1");
    d.lab.stop_capture("ho-tun");
    if let Some(f) = failure {
        return Err(f);
    }

    // First datagram from box b's tunnel port to the new address on the new link.
    let mut first = Vec::new();
    for (t0, _, iface, ip) in &moves {
        let pcap = d.lab.dir().join(format!("ho-{iface}.pcap"));
        let out = Command::new("tcpdump")
            .args(["-tt", "-n", "-r"])
            .arg(&pcap)
            .args(["udp", "and", "src", "host", B_IP, "and", "src", "port", "4500"])
            .output()
            .map_err(e2s)?;
        let want = format!("> {ip}.4500:");
        let hit = String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
            let ts: f64 = l.split_whitespace().next()?.parse().ok()?;
            (ts > *t0 && l.contains(&want)).then_some(ts - t0)
        });
        if let Some(h) = hit {
            first.push(h);
        }
    }
    // Longest gap between two echoes that ends after this move and no later than the next
    // one: a gap that spans the next move belongs to that move alone.
    let lost = got.iter().enumerate().filter(|(i, (_, n))| *n != *i as u64).count() as u64;
    let mut stall = Vec::new();
    for (k, (_, at, _, _)) in moves.iter().enumerate() {
        let end = moves.get(k + 1).map(|m| m.1);
        let gap = got
            .windows(2)
            .filter(|w| w[1].0 > *at && end.is_none_or(|e| w[1].0 <= e))
            .map(|w| w[1].0.duration_since(w[0].0).as_secs_f64())
            .fold(0.0, f64::max);
        stall.push(gap);
    }
    agents_down(d);
    Ok(Handover { first, stall, lost, moves: moves.len(), repairs })
}

// ---------------------------------------------------------------------------------------
// Part: tunnel set-up time
// ---------------------------------------------------------------------------------------

/// Restarts box a's agent `runs` times and times the first lookup of box b through its DNS
/// hook (a fresh tunnel each time). Returns (query times, registration times), seconds.
fn setup_times(d: &mut Deployment, load: &Path, runs: usize, path: &str) -> Res<(Vec<f64>, Vec<f64>)> {
    let b4 = agents_up(d, path)?;
    let mut cfg = d.agent_config(0);
    cfg["log_level"] = "info".into();
    let (mut query, mut reg) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        d.stop_agent(0);
        let t0 = Instant::now();
        d.start_agent(0, &cfg).map_err(e2s)?;
        d.wait_registered(0, 30).ok_or("box a did not register again")?;
        reg.push(t0.elapsed().as_secs_f64());
        let out =
            d.lab.try_exec(&d.boxes[0].ns, &[&load.to_string_lossy(), "dns", "127.0.0.53:53", B_NAME]).map_err(e2s)?;
        let v: Value =
            serde_json::from_slice(&out.stdout).map_err(|_| format!("ntm-bench-load dns: {}", text(&out).trim()))?;
        if !v["answers"].as_array().is_some_and(|a| a.iter().any(|x| x == b4.as_str())) {
            return Err(format!("no answer {b4} for {B_NAME}: {v}"));
        }
        query.push(v["secs"].as_f64().unwrap_or(f64::NAN));
        if !d.wait_path(0, B_NAME, path, 10) {
            return Err(format!("the new tunnel is not on the {path} path"));
        }
    }
    agents_down(d);
    Ok((query, reg))
}

/// Every run, sorted, in ms.
fn all_runs(v: &[f64]) -> String {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s.iter().map(|x| ms(*x)).collect::<Vec<_>>().join(", ")
}

fn setup_rows(t: &mut Table, name: &str, r: Res<(Vec<f64>, Vec<f64>)>) {
    match r {
        Ok((q, reg)) => {
            t.row(vec![
                format!("DNS query → answer with the virtual address, {name}"),
                ms(median(&q)),
                ms(max(&q)),
                q.len().to_string(),
                all_runs(&q),
            ]);
            t.row(vec![
                format!("agent start → registered ({name} deployment)"),
                ms(median(&reg)),
                ms(max(&reg)),
                reg.len().to_string(),
                "status socket polled every 100 ms".into(),
            ]);
        }
        Err(e) => t.skip(&format!("set-up, {name}"), &format!("failed: {e}")),
    }
}

// ---------------------------------------------------------------------------------------
// Part: idle traffic
// ---------------------------------------------------------------------------------------

/// What the idle part counts on a box's uplink: (protocol, port, whether the port is the
/// box's own, counter comment). Each gets a counter per direction; "all" counts everything.
const COUNTED: [(&str, u16, bool, &str); 4] = [
    ("udp", 4500, true, "ntm-udp"),
    ("tcp", 4463, false, "ntm-ns"),
    ("tcp", 4443, false, "ntm-as"),
    ("udp", 51820, true, "wg"),
];

/// The nftables counters of [`COUNTED`] on eth0, both directions.
fn counters_ruleset() -> String {
    let chain = |name: &str, hook: &str, dev: &str, incoming: bool| {
        let mut c = format!("  chain {name} {{\n    type filter hook {hook} priority 0; policy accept;\n");
        for (proto, port, own, comment) in COUNTED {
            // The box's own port is the destination of what comes in, the source of what goes out.
            let side = if own == incoming { "dport" } else { "sport" };
            let _ = writeln!(c, "    {dev} \"eth0\" {proto} {side} {port} counter comment \"{comment}\"");
        }
        let _ = writeln!(c, "    {dev} \"eth0\" counter comment \"all\"\n  }}");
        c
    };
    format!(
        "table inet ntmbench\ndelete table inet ntmbench\ntable inet ntmbench {{\n{}{}}}\n",
        chain("in", "input", "iifname", true),
        chain("out", "output", "oifname", false)
    )
}

/// (packets, bytes) by counter comment, both directions summed.
fn counters(lab: &Lab, ns: &Ns) -> std::collections::HashMap<String, (u64, u64)> {
    let mut m = std::collections::HashMap::new();
    let Ok(out) = lab.try_exec(ns, &["nft", "-j", "list", "table", "inet", "ntmbench"]) else { return m };
    let Ok(v) = serde_json::from_slice::<Value>(&out.stdout) else { return m };
    for item in v["nftables"].as_array().into_iter().flatten() {
        let rule = &item["rule"];
        let Some(c) = rule["comment"].as_str() else { continue };
        for e in rule["expr"].as_array().into_iter().flatten() {
            if let (Some(p), Some(b)) = (e["counter"]["packets"].as_u64(), e["counter"]["bytes"].as_u64()) {
                let x = m.entry(c.to_string()).or_insert((0, 0));
                x.0 += p;
                x.1 += b;
            }
        }
    }
    m
}

/// Logins a day at the AS's default key lifetime: a node logs in again min(300 s, lifetime / 2)
/// before its key expires (docs/protocol.md, "Re-login").
fn logins_per_day() -> f64 {
    let lifetime = DEFAULT_KEY_LIFETIME.as_secs();
    let period = lifetime - (lifetime / 2).min(300);
    86_400.0 / period.max(1) as f64
}

fn part_idle(o: &Opts) -> Table {
    let mut t = Table::new(
        "Idle traffic of a registered, reachable box",
        &[
            "box",
            "keepalive",
            "in the window: packets / bytes",
            "per day: keepalive",
            "per day: with re-login",
            "notes",
        ],
    );
    let ns_interval = 10u64;
    let lifetime_h = DEFAULT_KEY_LIFETIME.as_secs() / 3600;
    let logins = logins_per_day();
    t.intro = format!(
        "Both boxes behind port-restricted NATs, registered, no tunnel; nftables counters on each box's \
         uplink (IP bytes, both directions) over a {} s window after everything settled. The NS asks for \
         a keepalive every {ns_interval} s in this run instead of every 3600 s, so the window holds {} of \
         them; the bytes of one are scaled to 24 a day. UDP keepalives go every 20 s (the DC's default), so \
         their window bytes scale by time. \"With re-login\" adds {logins:.3} logins a day (the AS's default \
         key lifetime is {lifetime_h} h), each costing what the start-up cost here (all IP traffic of the box \
         until the window: DNS, TLS login, registration, NS registration).",
        o.idle_secs,
        o.idle_secs / ns_interval
    );
    if !have("nft") {
        t.skip("all", "skipped: `nft` not installed");
        return t;
    }
    match idle(o, ns_interval) {
        Ok(rows) => {
            for r in rows {
                t.row(r);
            }
        }
        Err(e) => t.skip("idle", &format!("failed: {e}")),
    }
    t.note("target: at most 10 KB a day with the NS (the per-day columns are the estimate to hold against it)");
    t
}

fn idle(o: &Opts, ns_interval: u64) -> Res<Vec<Vec<String>>> {
    let mut d = Deployment::start_with(
        "bench-idle",
        [Access::Nat(NatKind::PortRestricted), Access::Nat(NatKind::PortRestricted)],
    )
    .map_err(e2s)?;
    // The NS asks for a keepalive every `ns_interval` seconds in this run.
    let ns_json = d.lab.dir().join("ns.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&ns_json).map_err(e2s)?).map_err(e2s)?;
    cfg["keepalive_interval_secs"] = ns_interval.into();
    std::fs::write(&ns_json, cfg.to_string()).map_err(e2s)?;
    d.restart_server("ns").map_err(e2s)?;
    let (a, b, srv) = (d.boxes[0].ns.clone(), d.boxes[1].ns.clone(), d.srv.clone());
    for ns in [&a, &b] {
        d.lab.nft(ns, &counters_ruleset()).map_err(e2s)?;
    }
    // Beside box a's agent: wireguard-go to a peer in the server namespace, with the
    // persistent keepalive of 25 s that peers behind NAT use. Started before the agent.
    let mut wg_note = String::from("skipped: wireguard-go or wg not installed");
    let wg = if Peer::WireguardGo.missing().is_none() {
        match idle_wg(&mut d, &a, &srv) {
            Ok(iface) => Some(iface),
            Err(e) => {
                wg_note = format!("failed: {e}");
                None
            }
        }
    } else {
        None
    };
    d.up_with(|_, i, c| {
        c["log_level"] = "info".into();
        if i == 1 {
            c["keepalive"] = "ns".into();
        }
    })
    .map_err(e2s)?;
    if !d.lab.wait_for(15, || d.status(1).is_some_and(|s| s["notifications_ready"] == true)) {
        return Err("box b is not reachable through the NS".into());
    }
    std::thread::sleep(Duration::from_secs(3));
    let start = [counters(&d.lab, &a), counters(&d.lab, &b)];
    log(&format!("idle: counting for {} s", o.idle_secs));
    std::thread::sleep(Duration::from_secs(o.idle_secs));
    let end = [counters(&d.lab, &a), counters(&d.lab, &b)];
    let delta = |i: usize, k: &str| {
        let s = start[i].get(k).copied().unwrap_or_default();
        let e = end[i].get(k).copied().unwrap_or_default();
        (e.0.saturating_sub(s.0), e.1.saturating_sub(s.1))
    };
    // Everything on the link up to the window but wireguard-go's: DNS, login, registration.
    let startup = |i: usize| {
        let all = start[i].get("all").copied().unwrap_or_default().1;
        all.saturating_sub(start[i].get("wg").copied().unwrap_or_default().1)
    };
    let w = o.idle_secs as f64;
    let day = 86_400.0;
    let kb = |b: f64| format!("{:.1} KB", b / 1000.0);
    let mut rows = Vec::new();
    // Box a: UDP keepalive; everything of the agent is on its UDP port.
    let (pa, ba) = delta(0, "ntm-udp");
    let a_day = ba as f64 * day / w;
    rows.push(vec![
        "a (ntmd)".into(),
        "UDP to the DC, every 20 s".into(),
        format!("{pa} / {ba} B"),
        kb(a_day),
        kb(a_day + logins_per_day() * startup(0) as f64),
        format!("start-up {} B; all IP traffic on the link in the window: {} B", startup(0), delta(0, "all").1),
    ]);
    // Box b: NS keepalive; one exchange per interval, scaled to hourly. Anything on its UDP
    // port scales by time.
    let (pn, bn) = delta(1, "ntm-ns");
    let (pu, bu) = delta(1, "ntm-udp");
    let exchanges = (w / ns_interval as f64).max(1.0);
    let b_day = bn as f64 / exchanges * 24.0 + bu as f64 * day / w;
    rows.push(vec![
        "**b (ntmd)**".into(),
        format!("TCP to the NS, hourly (measured every {ns_interval} s)"),
        format!("{} / {} B", pn + pu, bn + bu),
        kb(b_day),
        kb(b_day + logins_per_day() * startup(1) as f64),
        format!(
            "{:.0} B per keepalive exchange; UDP in the window {bu} B; start-up {} B; all IP traffic on the link in the window: {} B",
            bn as f64 / exchanges,
            startup(1),
            delta(1, "all").1
        ),
    ]);
    if let Some(iface) = wg {
        let (pw, bw) = delta(0, "wg");
        let shook = d
            .lab
            .try_exec(&a, &[&tool("wg"), "show", &iface, "latest-handshakes"])
            .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().nth(1).is_some_and(|t| t != "0"))
            .unwrap_or(false);
        let mut note = format!(
            "scaled by time; includes its periodic handshakes; start-up {} B; handshake {}",
            start[0].get("wg").copied().unwrap_or_default().1,
            if shook { "done" } else { "NOT done" }
        );
        if o.idle_secs < 25 {
            note.push_str("; the window is shorter than one keepalive interval, so this row means little");
        }
        rows.push(vec![
            "a (wireguard-go)".into(),
            "persistent keepalive 25 s (to a peer in the server namespace)".into(),
            format!("{pw} / {bw} B"),
            kb(bw as f64 * day / w),
            "-".into(),
            note,
        ]);
    } else {
        rows.push(vec!["a (wireguard-go)".into(), wg_note]);
    }
    Ok(rows)
}

/// wireguard-go in box a and in the server namespace; box a's interface.
fn idle_wg(d: &mut Deployment, a: &Ns, srv: &Ns) -> Res<String> {
    let suffix = std::process::id() % 100_000;
    let (ia, is) = (format!("wgi{suffix}a"), format!("wgi{suffix}s"));
    let dir = d.lab.dir().to_path_buf();
    let (ka, pa) = wg_keys(&dir, &ia)?;
    let (ks, ps) = wg_keys(&dir, &is)?;
    for (ns, iface) in [(a, &ia), (srv, &is)] {
        d.lab
            .spawn(ns, &format!("idle-{iface}"), &["wireguard-go", "-f", iface], &[("WG_PROCESS_FOREGROUND", "1")])
            .map_err(e2s)?;
        let sock = PathBuf::from(format!("/var/run/wireguard/{iface}.sock"));
        if !d.lab.wait_for(10, || sock.exists()) {
            return Err(format!("no control socket for {iface}"));
        }
    }
    let wg = tool("wg");
    run_in(
        &d.lab,
        srv,
        &[
            &wg,
            "set",
            &is,
            "private-key",
            &ks.to_string_lossy(),
            "listen-port",
            "51820",
            "peer",
            &pa,
            "allowed-ips",
            "198.19.210.1/32",
        ],
    )?;
    run_in(&d.lab, srv, &["ip", "link", "set", &is, "up"])?;
    run_in(
        &d.lab,
        a,
        &[
            &wg,
            "set",
            &ia,
            "private-key",
            &ka.to_string_lossy(),
            "listen-port",
            "51820",
            "peer",
            &ps,
            "allowed-ips",
            "198.19.210.2/32",
            "endpoint",
            "192.0.2.2:51820",
            "persistent-keepalive",
            "25",
        ],
    )?;
    run_in(&d.lab, a, &["ip", "link", "set", &ia, "up"])?;
    Ok(ia)
}

// ---------------------------------------------------------------------------------------
// Part: footprint
// ---------------------------------------------------------------------------------------

fn file_size(p: &Path) -> Option<u64> {
    std::fs::metadata(p).ok().map(|m| m.len())
}

fn stripped(p: &Path) -> &'static str {
    match Command::new("file").arg("-L").arg(p).output() {
        Ok(o) if String::from_utf8_lossy(&o.stdout).contains("not stripped") => " (not stripped)",
        _ => "",
    }
}

/// The size of a stripped copy of `p`, KiB, if it was not stripped.
fn stripped_copy(p: &Path) -> Option<f64> {
    if stripped(p).is_empty() || !have("strip") {
        return None;
    }
    let tmp = std::env::temp_dir().join(format!("ntm-bench-strip-{}", std::process::id()));
    let ok = Command::new("strip").arg("-o").arg(&tmp).arg(p).status().is_ok_and(|s| s.success());
    let size = file_size(&tmp);
    let _ = std::fs::remove_file(&tmp);
    if ok {
        size.map(|s| s as f64 / 1024.0)
    } else {
        None
    }
}

fn part_footprint(root: &Path, bins: &Path, fp: &Footprint, servers_rss: &[(String, u64)]) -> Vec<Table> {
    let names = ["ntmd", "ntm-as", "ntm-dc", "ntm-rs", "ntm-ns"];
    let mut cols: Vec<(String, PathBuf)> = vec![("x86_64 (this build)".into(), bins.to_path_buf())];
    if let Ok(rd) = std::fs::read_dir(root.join("target/cross")) {
        let mut triples: Vec<PathBuf> = rd.flatten().map(|e| e.path()).filter(|p| p.join("release").is_dir()).collect();
        triples.sort();
        for t in triples {
            let rel = t.join("release");
            if names.iter().any(|n| rel.join(n).is_file()) {
                cols.push((t.file_name().unwrap_or_default().to_string_lossy().into_owned(), rel));
            }
        }
    }
    let mut header = vec!["binary".to_string()];
    header.extend(cols.iter().map(|c| format!("{} KiB", c.0)));
    let mut t = Table { title: "Footprint: binary sizes".into(), header, ..Table::default() };
    t.intro = "Sizes of the files as built (the release profile strips them; `(not stripped)` where `file` \
               says otherwise). Cross builds are whatever `cross/build.sh` left in `target/cross/`."
        .into();
    for n in names {
        let mut row = vec![format!("`{n}`")];
        for (_, dir) in &cols {
            let p = dir.join(n);
            row.push(match file_size(&p) {
                Some(s) => format!("{:.1}{}", s as f64 / 1024.0, stripped(&p)),
                None => "not built".into(),
            });
        }
        t.row(row);
    }
    let speed = NtmBuild::Speed.ntmd(bins);
    let mut row = vec!["`ntmd`, profile speed (opt-level 3)".to_string()];
    row.push(match file_size(&speed) {
        Some(s) => format!("{:.1}{}", s as f64 / 1024.0, stripped(&speed)),
        None => format!("not built ({})", NtmBuild::Speed.how()),
    });
    row.extend(cols.iter().skip(1).map(|_| "-".to_string()));
    t.row(row);
    if cols.len() == 1 {
        t.note("no cross build found under target/cross/ (cross/build.sh makes them)");
    }
    let mut peers = Table::new("Footprint: the peers' binaries (x86_64, as installed)", &["binary", "KiB", "notes"]);
    for (name, note) in [
        ("wireguard-go", "Debian package; Go, statically linked"),
        ("boringtun-cli", "`cargo install boringtun-cli`"),
        ("fastd", "Debian package; links shared libraries (not counted)"),
    ] {
        match tool_path(name) {
            Some(p) => peers.row(vec![
                format!("`{name}`"),
                format!("{:.1}{}", file_size(&p).unwrap_or(0) as f64 / 1024.0, stripped(&p)),
                match stripped_copy(&p) {
                    Some(kib) => format!("{note}; {kib:.1} KiB after `strip`"),
                    None => note.into(),
                },
            ]),
            None => peers.skip(&format!("`{name}`"), "skipped: not installed"),
        }
    }
    let mut rss = Table::new("Footprint: resident memory", &["process", "idle MiB", "peak under load MiB", "from"]);
    for (what, idle, peak) in &fp.rss {
        rss.row(vec![
            what.clone(),
            mib(*idle),
            mib(*peak),
            "the direct tunnel runs above (VmRSS before, VmHWM after)".into(),
        ]);
    }
    for (what, kib) in servers_rss {
        rss.row(vec![what.clone(), mib(*kib), "-".into(), "the lab deployment, idle after the runs (VmRSS)".into()]);
    }
    if fp.rss.is_empty() && servers_rss.is_empty() {
        rss.skip("all", "skipped: the tunnel part did not run");
    }
    vec![t, peers, rss]
}

// ---------------------------------------------------------------------------------------
// Part: server capacity
// ---------------------------------------------------------------------------------------

fn capacity_table() -> Table {
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

fn part_capacity(o: &Opts, bins: &Path, load: &Path, t: &mut Table) {
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

// ---------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------

fn cmd_out(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
        .unwrap_or_default();
    let cores = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<u64>().ok()))
        .unwrap_or(0);
    format!("{cores} cores ({model}), {:.0} GiB memory, Linux {}", mem as f64 / 1048576.0, cmd_out("uname", &["-r"]))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn versions() -> String {
    let first = |cmd: &str, args: &[&str]| {
        if !have_tool(cmd) {
            return format!("{cmd}: not installed");
        }
        let o = Command::new(tool(cmd)).args(args).output();
        o.map(|o| text(&o).lines().find(|l| !l.trim().is_empty()).unwrap_or_default().trim().to_string())
            .unwrap_or_default()
    };
    [
        first("wireguard-go", &["--version"]),
        first("boringtun-cli", &["--version"]),
        first("fastd", &["--version"]),
        first("iperf3", &["--version"]),
    ]
    .join("; ")
}

fn run(o: &Opts) -> Res<(String, bool)> {
    let started = Instant::now();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new(".")).to_path_buf();
    let bins = ntm_lab::deploy::bin_dir().map_err(e2s)?;
    let load = std::env::current_exe().map_err(e2s)?.with_file_name("ntm-bench-load");
    let load_before = loadavg();
    // What was built, read before anything runs (the checkout may change during the run).
    let commit = cmd_out("git", &["-C", &root.to_string_lossy(), "rev-parse", "--short", "HEAD"]);
    let dirty =
        !cmd_out("git", &["-C", &root.to_string_lossy(), "status", "--porcelain", "--untracked-files=no"]).is_empty();
    let built = cmd_out("date", &["-u", "-r", &bins.join("ntmd").to_string_lossy(), "+%Y-%m-%d %H:%M UTC"]);
    let speed_ntmd = NtmBuild::Speed.ntmd(&bins);
    let built_speed = if speed_ntmd.is_file() {
        cmd_out("date", &["-u", "-r", &speed_ntmd.to_string_lossy(), "+%Y-%m-%d %H:%M UTC"])
    } else {
        "(not built)".into()
    };
    let mut failed = false;
    let mut fp = Footprint::default();
    let mut servers_rss = Vec::new();
    let mut tables: Vec<(usize, Table)> = Vec::new();
    let mut cap = capacity_table();
    let mut setup = Table::new("Tunnel set-up time", &["what", "median ms", "max ms", "runs", "every run, ms"]);
    setup.intro = format!(
        "Box a's agent is restarted before each run (so each lookup makes a new tunnel), then box a asks its \
         DNS hook for b.zone-b.test (one A query from `ntm-bench-load dns`, timed from sending to the answer): the Direction Request, the DCs' \
         negotiation, the Route Directions and the Tunnel Request/Response, until the answer carries b's \
         virtual address. {} runs per path.",
        o.setups
    );
    for tl in ["iperf3", "ping", "dig", "nsd"] {
        if !have(tl) {
            return Err(format!("`{tl}` is not installed (apt-get install iperf3 iputils-ping dnsutils nsd)"));
        }
    }

    let direct_parts = ["tunnel", "handover", "setup"].iter().any(|p| o.wants(p));
    if direct_parts || o.wants("footprint") {
        log("deployment: both boxes on public IPv4 (direct tunnel)");
        match Deployment::start_with("bench-direct", [Access::Global4, Access::Global4]) {
            Ok(mut d) => {
                if o.wants("tunnel") || o.wants("footprint") {
                    tables.push((0, part_tunnel(&mut d, o, &mut fp)));
                }
                if o.wants("handover") {
                    log("handover");
                    tables.push((2, part_handover(&mut d, o)));
                }
                if o.wants("setup") {
                    log("set-up time, direct");
                    setup_rows(&mut setup, "direct", setup_times(&mut d, &load, o.setups, "direct"));
                }
                for (label, what) in
                    [("as", "AS (ntm-as)"), ("dc-a", "DC (ntm-dc)"), ("rs", "RS (ntm-rs)"), ("ns", "NS (ntm-ns)")]
                {
                    if let Some(p) = server_pid(&mut d, label) {
                        servers_rss.push((what.to_string(), proc_kib(p, "VmRSS")));
                    }
                }
            }
            Err(e) => {
                failed = true;
                let mut t = Table::new("Direct tunnel, handover, set-up", &["part", "result"]);
                t.skip("all", &format!("failed: the deployment did not start: {e}"));
                tables.push((0, t));
            }
        }
    }
    if o.wants("relay") || o.wants("setup") || o.wants("capacity") {
        log("deployment: box a IPv4 only, box b IPv6 only (relayed tunnel)");
        match Deployment::start_with("bench-relay", [Access::Global4, Access::Global6]) {
            Ok(mut d) => {
                if o.wants("relay") || o.wants("capacity") {
                    let t = part_relay(&mut d, o, &mut cap);
                    if o.wants("relay") {
                        tables.push((1, t));
                    }
                    agents_down(&mut d);
                }
                if o.wants("setup") {
                    log("set-up time, relayed");
                    setup_rows(&mut setup, "via the RS", setup_times(&mut d, &load, o.setups, "relay"));
                }
            }
            Err(e) => {
                failed = true;
                let mut t = Table::new("Relayed tunnel", &["part", "result"]);
                t.skip("all", &format!("failed: the deployment did not start: {e}"));
                tables.push((1, t));
            }
        }
    }
    if o.wants("setup") {
        tables.push((3, setup));
    }
    if o.wants("idle") {
        log("idle traffic");
        tables.push((4, part_idle(o)));
    }
    if o.wants("footprint") {
        for t in part_footprint(&root, &bins, &fp, &servers_rss) {
            tables.push((5, t));
        }
    }
    if o.wants("capacity") {
        log("server capacity");
        part_capacity(o, &bins, &load, &mut cap);
        tables.push((6, cap));
    }
    tables.sort_by_key(|t| t.0);
    for (_, t) in &tables {
        failed |= t.rows.iter().any(|r| r.get(1).is_some_and(|c| c.starts_with("failed")));
    }

    let mut md = String::new();
    let date = cmd_out("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let _ = writeln!(md, "## Run of {date} ({} mode)\n", if o.quick { "quick" } else { "full" });
    let _ = writeln!(md, "- command: `{}`", format!("scripts/bench.sh {}", o.argv).trim_end());
    let _ = writeln!(md, "- machine: {}", machine());
    let _ = writeln!(
        md,
        "- load average (1, 5, 15 min) before: {load_before}; after: {} — other work on the machine shows here",
        loadavg()
    );
    let _ = writeln!(
        md,
        "- build: commit {commit}{} at the start of the run; ntmd built {built} (release), {built_speed} (speed)",
        if dirty { " with uncommitted changes" } else { "" }
    );
    let _ = writeln!(md, "- peers: {}", versions());
    let _ = writeln!(md, "- duration: {:.0} s\n", started.elapsed().as_secs_f64());
    for (_, t) in &tables {
        md.push_str(&t.markdown());
        md.push('\n');
    }
    Ok((md, failed))
}

/// The lab finds the daemons in `NTM_BIN_DIR`, or else beside the program that runs it.
/// This program is built with its own profile (`target/bench-tool/`), the daemons with the
/// release profile: unless told otherwise, the daemons are in the `release` directory
/// beside this program's (its own when it was built with `--release`). Called before any
/// thread is started.
fn use_release_binaries() {
    if std::env::var_os("NTM_BIN_DIR").is_some() {
        return;
    }
    if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.with_file_name("release"))) {
        std::env::set_var("NTM_BIN_DIR", dir);
    }
}

fn main() -> ExitCode {
    let o = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "{e}");
            return ExitCode::from(2);
        }
    };
    use_release_binaries();
    if cfg!(panic = "abort") {
        // Built with the release profile rather than its own: see there.
        ntm_lab::clean_up_on_panic();
    }
    let _ = ctrlc::set_handler(|| {
        let _ = writeln!(std::io::stderr(), "\ninterrupted: stopping every process and deleting the namespaces");
        ntm_lab::emergency_cleanup();
        std::process::exit(130);
    });
    if !is_root() || !have("ip") {
        let _ = writeln!(std::io::stdout(), "skipped: the benchmarks need root and iproute2 (network namespaces)");
        if std::env::var_os("NTM_REQUIRE_LAB").is_some() {
            return ExitCode::FAILURE;
        }
        return ExitCode::SUCCESS;
    }
    match run(&o) {
        Ok((md, failed)) => {
            let _ = writeln!(std::io::stdout(), "{md}");
            if let Some(p) = &o.out {
                if let Some(dir) = p.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                if let Err(e) = std::fs::write(p, &md) {
                    let _ = writeln!(std::io::stderr(), "cannot write {}: {e}", p.display());
                    return ExitCode::FAILURE;
                }
                let _ = writeln!(std::io::stderr(), "tables written to {}", p.display());
            }
            if failed {
                let _ = writeln!(std::io::stderr(), "some parts failed (see the tables)");
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "ntm-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
