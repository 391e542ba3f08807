//! The benchmarks of issue 7, side by side in one run on this machine: tunnel throughput
//! and latency (ntmobile's direct tunnel beside wireguard-go, boringtun and fastd over the
//! very same links), relayed throughput through the RS, handover time, tunnel set-up
//! time, idle traffic, footprint and server capacity. Not a test: it prints Markdown
//! tables (and writes them to `--out`); `docs/benchmarks.md` keeps the latest full run.
//!
//! ```text
//! ntm-bench [--quick] [--out FILE] [--only tunnel,relay,handover,setup,idle,footprint,capacity,matrix,crypto]
//!           [--rounds N] [--secs N] [--moves N] [--setups N] [--idle-secs N] [--ns-steps N,N]
//!           [--rs-workers N,N]
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
//!
//! One module per part ([`tunnel`], [`relay`], [`handover`], [`setup`], [`idle`],
//! [`footprint`], [`capacity`], [`matrix`], [`crypto`]), each making its table; what they share is in [`measure`]
//! (ping and iperf3 through a path), [`peers`] (the other tunnels), [`deploy`] (the agents in
//! a lab deployment), [`table`] and [`util`]. [`run`] runs the parts over two deployments
//! and [`report`] heads their tables.

mod capacity;
mod crypto;
mod deploy;
mod footprint;
mod handover;
mod idle;
mod matrix;
mod measure;
mod opts;
mod peers;
mod relay;
mod report;
mod setup;
mod table;
mod tunnel;
mod util;

use crate::capacity::{capacity_table, part_capacity};
use crate::deploy::{agents_down, server_pid};
use crate::footprint::{part_footprint, Footprint};
use crate::handover::part_handover;
use crate::idle::part_idle;
use crate::matrix::part_matrix;
use crate::opts::{parse_opts, Opts};
use crate::relay::part_relay;
use crate::report::{header, loadavg, Build};
use crate::setup::{setup_rows, setup_table, setup_times};
use crate::table::Table;
use crate::tunnel::part_tunnel;
use crate::util::{e2s, log, Res};
use ntm_lab::deploy::{Access, Deployment};
use ntm_lab::{have, is_root, proc_kib};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// Runs the parts `o` asks for: those of the direct tunnel in one deployment, those of the
/// relayed tunnel in another, then idle traffic, footprint and capacity. Returns the report
/// and whether a part failed.
fn run(o: &Opts) -> Res<(String, bool)> {
    let started = Instant::now();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new(".")).to_path_buf();
    let bins = ntm_lab::deploy::bin_dir().map_err(e2s)?;
    let load = std::env::current_exe().map_err(e2s)?.with_file_name("ntm-bench-load");
    let load_before = loadavg();
    // What was built, read before anything runs (the checkout may change during the run).
    let build = Build::read(&root, &bins);
    let mut failed = false;
    let mut fp = Footprint::default();
    let mut servers_rss = Vec::new();
    let mut tables: Vec<(usize, Table)> = Vec::new();
    let mut cap = capacity_table();
    let mut setup = setup_table(o);
    for tl in ["iperf3", "ping", "dig", "nsd"] {
        if !have(tl) {
            return Err(format!("`{tl}` is not installed (apt-get install iperf3 iputils-ping dnsutils nsd)"));
        }
    }

    if o.wants("crypto") {
        // First, while no daemon runs: a measure of one core.
        log("AES-CCM micro-benchmark");
        tables.push((8, crypto::part_crypto(o)));
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
    if o.wants("matrix") {
        log("placement matrix");
        tables.push((7, part_matrix(&load)));
    }
    tables.sort_by_key(|t| t.0);
    for (_, t) in &tables {
        failed |= t.rows.iter().any(|r| r.get(1).is_some_and(|c| c.starts_with("failed")));
    }

    let mut md = header(o, started, &load_before, &build);
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
    if let Some(dir) = std::env::current_exe().ok().as_deref().and_then(release_dir) {
        std::env::set_var("NTM_BIN_DIR", dir);
    }
}

/// The release profile's directory beside the one that holds `exe`.
fn release_dir(exe: &Path) -> Option<PathBuf> {
    exe.parent().map(|d| d.with_file_name("release"))
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

#[cfg(test)]
mod tests {
    use super::release_dir;
    use std::path::Path;

    #[test]
    fn the_daemons_are_looked_for_in_the_release_directory_beside_the_program() {
        let got = |exe: &str| release_dir(Path::new(exe)).map(|p| p.display().to_string());
        assert_eq!(got("/w/target/bench-tool/ntm-bench").as_deref(), Some("/w/target/release"));
        assert_eq!(got("/w/target/release/ntm-bench").as_deref(), Some("/w/target/release"));
        assert_eq!(
            got("/w/target/x86_64-unknown-linux-gnu/bench-tool/ntm-bench").as_deref(),
            Some("/w/target/x86_64-unknown-linux-gnu/release")
        );
    }
}
