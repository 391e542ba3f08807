//! Part: the placement matrix with the real binaries. Every ordered pair of the places
//! users put boxes (public IPv4, public IPv6 only, the four NAT behaviours, a home NAT
//! behind a carrier-grade NAT) in a deployment of its own: whether the tunnel ends direct
//! or relayed (as both ends report it), the set-up time (box a's first DNS query for box
//! b to the answer), and whether data passes both ways. The simulator's version of the
//! matrix, which also times every kind of move, is `sim/tests/matrix.rs`.

use crate::deploy::B_NAME;
use crate::table::Table;
use crate::util::{e2s, log, median, ms, text, Res};
use ntm_lab::deploy::{Access, Deployment, NatKind};
use serde_json::Value;
use std::path::Path;

const A_NAME: &str = "a.zone-a.test";

/// The placements, with their names in the table.
const PLACES: [(Access, &str); 7] = [
    (Access::Global4, "public v4"),
    (Access::Global6, "v6-only"),
    (Access::Nat(NatKind::FullCone), "full cone"),
    (Access::Nat(NatKind::AddressRestricted), "addr-restricted"),
    (Access::Nat(NatKind::PortRestricted), "port-restricted"),
    (Access::Nat(NatKind::Symmetric), "symmetric"),
    (Access::DoubleNat(NatKind::PortRestricted), "home NAT + CGN"),
];

/// One pair's outcome.
struct Pair {
    /// Box a's and box b's view of the path ("direct", "relay").
    paths: (String, String),
    setup_secs: f64,
    data: bool,
}

/// Starts a deployment for `a` and `b`, both agents, and box a's first lookup of box b.
fn run_pair(i: usize, a: Access, b: Access, load: &Path) -> Res<Pair> {
    let mut d = Deployment::start_with(&format!("bench-mx{i}"), [a, b]).map_err(e2s)?;
    let mut v4 = Vec::new();
    for k in 0..2 {
        let mut cfg = d.agent_config(k);
        cfg["log_level"] = "info".into();
        d.start_agent(k, &cfg).map_err(e2s)?;
    }
    for k in 0..2 {
        let st = d.wait_registered(k, 30).ok_or_else(|| format!("box {k} not registered within 30 s"))?;
        v4.push(st["virtual_ipv4"].as_str().unwrap_or_default().to_string());
    }
    let out =
        d.lab.try_exec(&d.boxes[0].ns, &[&load.to_string_lossy(), "dns", "127.0.0.53:53", B_NAME]).map_err(e2s)?;
    let v: Value =
        serde_json::from_slice(&out.stdout).map_err(|_| format!("ntm-bench-load dns: {}", text(&out).trim()))?;
    if !v["answers"].as_array().is_some_and(|x| x.iter().any(|y| y == v4[1].as_str())) {
        return Err(format!("no answer {} for {B_NAME}: {v}", v4[1]));
    }
    let setup_secs = v["secs"].as_f64().unwrap_or(f64::NAN);
    // Route optimization runs for up to 3 s after the relayed tunnel is up: wait for the
    // direct path a little longer than that, then take what the ends say.
    let _ = d.wait_path(0, B_NAME, "direct", 5);
    let data = d.ping(0, &v4[1], 3) && d.ping(1, &v4[0], 3);
    let path = |d: &Deployment, k: usize, peer: &str| {
        d.tunnel(k, peer).and_then(|t| t["path"].as_str().map(str::to_string)).unwrap_or_else(|| "none".into())
    };
    let paths = (path(&d, 0, B_NAME), path(&d, 1, A_NAME));
    Ok(Pair { paths, setup_secs, data })
}

pub fn part_matrix(load: &Path) -> Table {
    let mut t = Table::new(
        "Placement matrix (real binaries, a deployment per pair)",
        &["box a → box b", "path (a / b)", "set-up ms", "data both ways"],
    );
    t.intro = "Each ordered pair of placements gets a lab deployment of its own: both agents start, box a asks \
               its DNS hook for box b (timed from the query to the answer, which makes the tunnel), route \
               optimization gets 5 s, then each end's status says the path and ping goes both ways. The NAT \
               behaviours are made with nftables (lab/src/deploy.rs); the CGN maps endpoint-independently \
               and filters by address and port."
        .into();
    let (mut direct, mut total, mut setups) = (0, 0, Vec::new());
    for (i, (a, an)) in PLACES.iter().enumerate() {
        for (j, (b, bn)) in PLACES.iter().enumerate() {
            log(&format!("matrix: {an} → {bn}"));
            let name = format!("{an} → {bn}");
            match run_pair(i * PLACES.len() + j, *a, *b, load) {
                Ok(p) => {
                    total += 1;
                    direct += usize::from(p.paths.0 == "direct" && p.paths.1 == "direct");
                    setups.push(p.setup_secs);
                    t.row(vec![
                        name,
                        format!("{} / {}", p.paths.0, p.paths.1),
                        ms(p.setup_secs),
                        if p.data { "yes".into() } else { "**no**".into() },
                    ]);
                }
                Err(e) => t.skip(&name, &format!("failed: {e}")),
            }
        }
    }
    t.note(format!("{direct} of {total} pairs direct at both ends; median set-up {} ms", ms(median(&setups))));
    t
}
