//! The command line: which parts run and how long, with the `--quick` defaults.

use crate::util::{e2s, Res};
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct Opts {
    pub quick: bool,
    pub out: Option<PathBuf>,
    pub only: Vec<String>,
    /// Rounds of the tunnel comparison; each configuration keeps its best round.
    pub rounds: usize,
    /// Seconds of each iperf3 run.
    pub secs: u64,
    /// Moves in the handover part (even: box a ends where it started).
    pub moves: usize,
    /// Fresh tunnels timed in the set-up part, per path.
    pub setups: usize,
    /// Seconds of the idle-traffic window.
    pub idle_secs: u64,
    /// Nodes registered at the DC, at most.
    pub dc_nodes: usize,
    /// Seconds of the DC's load, at most (half for the keys, half for registrations).
    pub dc_secs: u64,
    /// Idle connections held at the NS (steps).
    pub ns_steps: Vec<usize>,
    /// The RS's `workers` of each row of the relay part.
    pub rs_workers: Vec<u64>,
    pub argv: String,
}

const PARTS: [&str; 9] = ["tunnel", "relay", "handover", "setup", "idle", "footprint", "capacity", "matrix", "crypto"];

pub fn parse_opts() -> Res<Opts> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let mut o = Opts {
        quick,
        out: None,
        // The matrix starts 49 deployments: a quick run leaves it out unless asked for.
        only: PARTS.iter().filter(|p| !(quick && **p == "matrix")).map(|s| s.to_string()).collect(),
        rounds: if quick { 1 } else { 2 },
        secs: if quick { 2 } else { 10 },
        moves: if quick { 4 } else { 20 },
        setups: if quick { 3 } else { 10 },
        idle_secs: if quick { 20 } else { 120 },
        dc_nodes: if quick { 1000 } else { 10_000 },
        dc_secs: if quick { 20 } else { 60 },
        ns_steps: if quick { vec![10_000] } else { vec![10_000, 100_000] },
        rs_workers: if quick { vec![1] } else { vec![1, 2] },
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
            "--rs-workers" => {
                o.rs_workers = val()?.split(',').map(|c| c.parse().map_err(e2s)).collect::<Res<_>>()?;
            }
            "-h" | "--help" => {
                return Err(format!(
                    "usage: ntm-bench [--quick] [--out FILE] [--only {}] [--rounds N] [--secs N] [--moves N] \
                     [--setups N] [--idle-secs N] [--ns-steps N,N] [--rs-workers N,N]",
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
    if o.rs_workers.is_empty() || o.rs_workers.iter().any(|w| !(1..=64).contains(w)) {
        return Err("--rs-workers: numbers from 1 to 64".into());
    }
    Ok(o)
}

impl Opts {
    pub fn wants(&self, part: &str) -> bool {
        self.only.iter().any(|p| p == part)
    }
}
