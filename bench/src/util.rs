//! Small helpers of every part: errors as strings, progress on stderr, the clock, a
//! process's CPU time, commands in a namespace, statistics and number formats.

use ntm_lab::{Lab, Ns};
use std::io::Write;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

pub type Res<T> = Result<T, String>;

pub fn e2s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Progress on stderr. Never panics (as `eprintln!` does when stderr is a closed pipe): a
/// progress line is not worth ending a run for.
pub fn log(s: &str) {
    let _ = writeln!(std::io::stderr(), "[bench {}] {s}", clock());
}

/// Wall-clock seconds since the epoch (packet captures use the same clock).
pub fn wall() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn clock() -> String {
    let s = wall() as u64;
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

/// utime + stime of `pid`, seconds.
pub fn cpu_secs(pid: u32) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    let Some((_, rest)) = s.rsplit_once(')') else { return 0.0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / clk_tck()
}

/// Nanoseconds that every thread of process `pid` has spent on a CPU
/// (/proc/PID/task/*/schedstat, first field): precise enough to charge single packets,
/// which /proc/PID/stat's clock ticks (10 ms) are not.
pub fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
        .sum()
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

pub fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

pub fn run_in(lab: &Lab, ns: &Ns, cmd: &[&str]) -> Res<String> {
    lab.exec(ns, cmd).map(|o| text(&o)).map_err(e2s)
}

pub fn median(v: &[f64]) -> f64 {
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

pub fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

pub fn gbit(bps: f64) -> String {
    format!("{:.2}", bps / 1e9)
}

pub fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

pub fn ms(s: f64) -> String {
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
