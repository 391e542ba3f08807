//! Part: tunnel set-up time. Box a's agent is restarted and looks box b up through its
//! DNS hook: the time to the answer that carries b's virtual address.

use crate::deploy::{agents_down, agents_up, B_NAME};
use crate::opts::Opts;
use crate::table::Table;
use crate::util::{e2s, max, median, ms, text, Res};
use ntm_lab::deploy::Deployment;
use serde_json::Value;
use std::path::Path;
use std::time::Instant;

/// The part's table, without rows yet: both deployments add theirs.
pub fn setup_table(o: &Opts) -> Table {
    let mut t = Table::new("Tunnel set-up time", &["what", "median ms", "max ms", "runs", "every run, ms"]);
    t.intro = format!(
        "Box a's agent is restarted before each run (so each lookup makes a new tunnel), then box a asks its \
         DNS hook for b.zone-b.test (one A query from `ntm-bench-load dns`, timed from sending to the answer): the Direction Request, the DCs' \
         negotiation, the Route Directions and the Tunnel Request/Response, until the answer carries b's \
         virtual address. {} runs per path.",
        o.setups
    );
    t
}

/// Restarts box a's agent `runs` times and times the first lookup of box b through its DNS
/// hook (a fresh tunnel each time). Returns (query times, registration times), seconds.
pub fn setup_times(d: &mut Deployment, load: &Path, runs: usize, path: &str) -> Res<(Vec<f64>, Vec<f64>)> {
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

pub fn setup_rows(t: &mut Table, name: &str, r: Res<(Vec<f64>, Vec<f64>)>) {
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
