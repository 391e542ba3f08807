//! What the report says about the run before the tables: when and how it ran, on which
//! machine under which load, what was built, and the peers' versions.

use crate::deploy::NtmBuild;
use crate::opts::Opts;
use crate::peers::{have_tool, tool};
use crate::util::text;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

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

pub fn loadavg() -> String {
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

/// What was built: the commit, whether the checkout had changes, and when each `ntmd` was
/// built.
#[derive(Debug)]
pub struct Build {
    commit: String,
    dirty: bool,
    built: String,
    built_speed: String,
}

impl Build {
    pub fn read(root: &Path, bins: &Path) -> Build {
        let commit = cmd_out("git", &["-C", &root.to_string_lossy(), "rev-parse", "--short", "HEAD"]);
        let dirty = !cmd_out("git", &["-C", &root.to_string_lossy(), "status", "--porcelain", "--untracked-files=no"])
            .is_empty();
        let built = cmd_out("date", &["-u", "-r", &bins.join("ntmd").to_string_lossy(), "+%Y-%m-%d %H:%M UTC"]);
        let speed_ntmd = NtmBuild::Speed.ntmd(bins);
        let built_speed = if speed_ntmd.is_file() {
            cmd_out("date", &["-u", "-r", &speed_ntmd.to_string_lossy(), "+%Y-%m-%d %H:%M UTC"])
        } else {
            "(not built)".into()
        };
        Build { commit, dirty, built, built_speed }
    }
}

/// The report's heading and the list of facts about the run, read now (at its end).
pub fn header(o: &Opts, started: Instant, load_before: &str, build: &Build) -> String {
    let Build { commit, dirty, built, built_speed } = build;
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
        if *dirty { " with uncommitted changes" } else { "" }
    );
    let _ = writeln!(md, "- peers: {}", versions());
    let _ = writeln!(md, "- duration: {:.0} s\n", started.elapsed().as_secs_f64());
    md
}
