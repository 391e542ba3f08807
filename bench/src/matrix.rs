//! Part: the placement matrix with the real binaries. Every ordered pair of the places
//! users put boxes (public IPv4, public IPv6 only, the four NAT behaviours, a home NAT
//! behind a carrier-grade NAT) in a deployment of its own: whether the tunnel ends direct
//! or relayed (as both ends report it), the set-up time (box a's first DNS query for box
//! b to the answer), and whether data passes both ways, against the path expected
//! ([`expected`]). The simulator's version of the matrix, which also times every kind of
//! move, is `sim/tests/matrix.rs`.

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

/// The path a pair should end on. IPv4 and IPv6-only meet only through the (dual-stack)
/// RS. Otherwise direct, but for two NATs that both map per destination ("symmetric"):
/// route optimization reaches a box whose NAT keeps one port per socket, and when that NAT
/// also filters by address and port (port-restricted, or a home NAT behind a CGN) and the
/// other maps per destination, the DCs' mapping test starts the search of ports
/// ("birthday" traversal, docs/protocol.md 7.8.2), which meets on one.
fn expected(a: Access, b: Access) -> &'static str {
    let v6_only = |x: Access| x == Access::Global6;
    let symmetric = |x: Access| matches!(x, Access::Nat(NatKind::Symmetric) | Access::DoubleNat(NatKind::Symmetric));
    if v6_only(a) != v6_only(b) || (symmetric(a) && symmetric(b)) {
        "relay"
    } else {
        "direct"
    }
}

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
    // Route optimization runs for up to 3 s after the relayed tunnel is up, and a search of
    // ports (a symmetric NAT facing a port-restricted one) for up to 3.5 s after the DC's
    // direction: wait for the direct path a little longer than that, then take what the
    // ends say.
    let _ = d.wait_path(0, B_NAME, "direct", 8);
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
        &["box a → box b", "path (a / b)", "expected", "set-up ms", "data both ways"],
    );
    t.intro = "Each ordered pair of placements gets a lab deployment of its own: both agents start, box a asks \
               its DNS hook for box b (timed from the query to the answer, which makes the tunnel), route \
               optimization and the search of ports get 8 s, then each end's status says the path and ping \
               goes both ways. The NAT behaviours are made with nftables (lab/src/deploy.rs); the CGN maps \
               endpoint-independently and filters by address and port. Expected: direct unless the boxes \
               have no address family in common or both NATs are symmetric; a symmetric NAT facing a \
               port-restricted one (alone or as a home NAT behind the CGN) goes direct through the DCs' \
               mapping test and the search of ports (issue 15, item 3)."
        .into();
    let (mut direct, mut total, mut setups) = (0, 0, Vec::new());
    // Pairs that are not both symmetric and share a family, and the direct ones of them.
    let (mut eligible, mut eligible_direct, mut unexpected) = (0, 0, Vec::new());
    for (i, (a, an)) in PLACES.iter().enumerate() {
        for (j, (b, bn)) in PLACES.iter().enumerate() {
            log(&format!("matrix: {an} → {bn}"));
            let name = format!("{an} → {bn}");
            match run_pair(i * PLACES.len() + j, *a, *b, load) {
                Ok(p) => {
                    total += 1;
                    let is_direct = p.paths.0 == "direct" && p.paths.1 == "direct";
                    direct += usize::from(is_direct);
                    let want = expected(*a, *b);
                    if want == "direct" {
                        eligible += 1;
                        eligible_direct += usize::from(is_direct);
                    }
                    let matches = p.paths.0 == want && p.paths.1 == want;
                    if !matches {
                        unexpected.push(name.clone());
                    }
                    setups.push(p.setup_secs);
                    t.row(vec![
                        name,
                        format!("{} / {}", p.paths.0, p.paths.1),
                        if matches { want.into() } else { format!("**{want}**") },
                        ms(p.setup_secs),
                        if p.data { "yes".into() } else { "**no**".into() },
                    ]);
                }
                Err(e) => t.skip(&name, &format!("failed: {e}")),
            }
        }
    }
    t.note(format!("{direct} of {total} pairs direct at both ends; median set-up {} ms", ms(median(&setups))));
    t.note(format!(
        "{eligible_direct} of {eligible} pairs that can be direct (a family in common, not both symmetric) are \
         direct; {} not as expected{}",
        unexpected.len(),
        if unexpected.is_empty() { String::new() } else { format!(": {}", unexpected.join(", ")) }
    ));
    t
}
