//! Throughput and latency through one path: ping, then iperf3 both ways, with the CPU
//! time and memory of the daemons on the path.

use crate::opts::Opts;
use crate::util::{cpu_ns, cpu_secs, e2s, text, Res};
use ntm_lab::{proc_kib, Lab, Ns};
use serde_json::Value;
use std::time::Duration;

/// What one configuration gave in one round.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    pub fwd_bps: f64,
    pub rev_bps: f64,
    pub rtt_ms: f64,
    /// CPU microseconds the measured daemons spent per ping (request and reply, both ends).
    pub ping_cpu_us: f64,
    /// CPU seconds of the measured daemons over both runs.
    pub cpu: f64,
    /// Gigabits moved over both runs.
    pub gbits: f64,
    /// Per daemon: (idle VmRSS, peak VmHWM), KiB.
    pub rss: Vec<(u64, u64)>,
    /// Extra CPU seconds, by daemon label (e.g. the RS).
    pub extra_cpu: Vec<(String, f64)>,
    /// TCP retransmissions of the sending iperf3 over both runs.
    pub retransmits: u64,
    /// Bytes received over both runs.
    pub bytes: f64,
}

impl Measured {
    pub fn mean_bps(&self) -> f64 {
        (self.fwd_bps + self.rev_bps) / 2.0
    }
    pub fn cpu_per_gbit(&self) -> f64 {
        if self.gbits > 0.0 {
            self.cpu / self.gbits
        } else {
            f64::NAN
        }
    }
    /// TCP retransmissions per gigabyte received (10^9 bytes).
    pub fn retransmits_per_gb(&self) -> f64 {
        if self.bytes > 0.0 {
            self.retransmits as f64 / (self.bytes / 1e9)
        } else {
            f64::NAN
        }
    }
    pub fn rss_idle(&self) -> u64 {
        self.rss.iter().map(|r| r.0).max().unwrap_or(0)
    }
    pub fn rss_peak(&self) -> u64 {
        self.rss.iter().map(|r| r.1).max().unwrap_or(0)
    }
}

/// `ping` from `ns` to `dst`: the median round-trip time in ms. The median, not the mean:
/// on a shared virtual machine one late wake-up of any process on the path (ping, either
/// daemon) adds a millisecond to a sample, and a few of those moved the mean of 50
/// samples by half from run to run, for every row alike.
fn ping_rtt(lab: &Lab, ns: &Ns, dst: &str, count: u32) -> Res<f64> {
    let c = count.to_string();
    let out = lab.try_exec(ns, &["ping", "-c", &c, "-i", "0.02", "-W", "2", dst]).map_err(e2s)?;
    let t = text(&out);
    // 64 bytes from 198.18.2.2: icmp_seq=1 ttl=63 time=0.083 ms
    let mut times: Vec<f64> = t
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|v| v.split_whitespace().next())
        .filter_map(|v| v.parse().ok())
        .collect();
    times.sort_by(f64::total_cmp);
    times.get(times.len() / 2).copied().ok_or_else(|| format!("ping {dst}: {}", t.trim()))
}

/// How long a client waits for a busy iperf3 server: more than the server's receive timeout.
const IPERF_BUSY_WAIT_SECS: u64 = 15;

/// Runs `f` with a fresh iperf3 server in `ns` ([`Lab::iperf_server`]), and stops the
/// server (and anything it forked) afterwards, whatever `f` gave. One server per path,
/// not per part: a server that outlived a row could still hold that row's last test, and
/// the next row found it "busy" until it gave up (CI, 2026-12-07: the fastd row).
fn with_iperf_server<T>(lab: &mut Lab, ns: &Ns, tag: &str, f: impl FnOnce(&mut Lab) -> Res<T>) -> Res<T> {
    let p = lab.iperf_server(ns, &format!("iperf-server-{tag}")).map_err(e2s)?;
    let r = f(lab);
    lab.proc(p).stop();
    r
}

/// One iperf3 run: the receiver's rate and bytes, and the sender's TCP retransmissions.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub bps: f64,
    pub bytes: f64,
    pub retransmits: u64,
}

/// One iperf3 run from box `a` to `dst` (`-R`: from `dst` to box `a`). The iperf3 server
/// runs in the other box ([`with_iperf_server`]). With `-R` the client's report carries the server's sender
/// statistics, so the retransmissions are the sender's either way.
fn iperf(lab: &mut Lab, a: &Ns, dst: &str, secs: u64, reverse: bool, tag: &str) -> Res<Run> {
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
    let retransmits = v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
    match (r["bits_per_second"].as_f64(), r["bytes"].as_f64()) {
        (Some(bps), Some(bytes)) if bps > 0.0 => Ok(Run { bps, bytes, retransmits }),
        _ => Err(format!("iperf3 to {dst}: no result")),
    }
}

/// Ping and iperf3 both ways from box `a` to `dst`, an address of box `b` (where the iperf3
/// server runs), with the CPU time and memory of `pids` (the tunnel daemons of both ends)
/// and of `extra` (other daemons on the path).
pub fn measure(
    lab: &mut Lab,
    (a, b): (&Ns, &Ns),
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
    let pings = if o.quick { 10 } else { 200 };
    let ns0: u64 = pids.iter().map(|p| cpu_ns(*p)).sum();
    let rtt_ms = ping_rtt(lab, a, dst, pings)?;
    let ns1: u64 = pids.iter().map(|p| cpu_ns(*p)).sum();
    let mut m = Measured {
        rtt_ms,
        ping_cpu_us: ns1.saturating_sub(ns0) as f64 / 1e3 / f64::from(pings),
        rss: pids.iter().map(|p| (proc_kib(*p, "VmRSS"), 0)).collect(),
        ..Measured::default()
    };
    let cpu0: f64 = pids.iter().map(|p| cpu_secs(*p)).sum();
    let extra0: Vec<f64> = extra.iter().map(|(_, p)| cpu_secs(*p)).collect();
    let (fwd, rev) = with_iperf_server(lab, b, tag, |lab| {
        Ok((iperf(lab, a, dst, o.secs, false, tag)?, iperf(lab, a, dst, o.secs, true, tag)?))
    })?;
    m.cpu = pids.iter().map(|p| cpu_secs(*p)).sum::<f64>() - cpu0;
    m.extra_cpu = extra.iter().zip(extra0).map(|((l, p), c0)| (l.clone(), cpu_secs(*p) - c0)).collect();
    m.fwd_bps = fwd.bps;
    m.rev_bps = rev.bps;
    m.bytes = fwd.bytes + rev.bytes;
    m.gbits = m.bytes * 8.0 / 1e9;
    m.retransmits = fwd.retransmits + rev.retransmits;
    for (r, p) in m.rss.iter_mut().zip(pids) {
        r.1 = proc_kib(*p, "VmHWM");
    }
    Ok(m)
}
