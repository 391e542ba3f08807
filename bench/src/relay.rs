//! Part: throughput relayed through the RS, and the RS's packet rate (a row of the
//! capacity table), once per RS worker count of `--rs-workers` (the RS restarted with
//! that `workers` before each row).

use crate::deploy::{agent_pid, agents_down, agents_up, server_pid};
use crate::measure::{measure, Measured};
use crate::opts::Opts;
use crate::table::Table;
use crate::tunnel::{tunnel_header, tunnel_row};
use crate::util::{e2s, Res};
use ntm_lab::deploy::{read_status, Deployment};
use std::time::Instant;

/// Sum of the RS's relayed packet counters.
fn rs_relayed(d: &Deployment) -> u64 {
    read_status(&d.lab.dir().join("rs.sock"))
        .and_then(|s| s["sessions"].as_array().map(|a| a.iter().filter_map(|x| x["relayed"].as_u64()).sum()))
        .unwrap_or(0)
}

pub fn part_relay(d: &mut Deployment, o: &Opts, cap: &mut Table) -> Table {
    let mut t = Table::new("Relayed throughput (through the RS)", &tunnel_header());
    t.intro = format!(
        "Box a has only IPv4 and box b only IPv6, so the DC sends their tunnel through the RS (dual stack). \
         Same measurements as above; iperf3 {} s each way; one row per RS `workers` ({}), the RS \
         restarted with that count before each row (but a first row of one, the deployment's own).",
        o.secs,
        o.rs_workers.iter().map(ToString::to_string).collect::<Vec<_>>().join(", then ")
    );
    let b = d.boxes[1].ns.clone();
    for (k, &workers) in o.rs_workers.iter().enumerate() {
        let plural = if workers == 1 { "" } else { "s" };
        let name = format!("**ntmobile via RS**, {workers} worker{plural}");
        let r = (|| -> Res<(Measured, f64, u64)> {
            if k > 0 {
                agents_down(d);
            }
            // The deployment's RS has the default, one worker.
            if k > 0 || workers != 1 {
                d.restart_server_with("rs", |c| c["workers"] = workers.into()).map_err(e2s)?;
            }
            let b4 = agents_up(d, "relay")?;
            let a = d.boxes[0].ns.clone();
            let pids: Vec<u32> = (0..2).filter_map(|i| agent_pid(d, i)).collect();
            let rs = server_pid(d, "rs").ok_or("no RS process")?;
            let relayed0 = rs_relayed(d);
            let t0 = Instant::now();
            let m = measure(&mut d.lab, (&a, &b), &b4, &pids, &[("RS".into(), rs)], o, &format!("relay-{workers}"))?;
            let wall_secs = t0.elapsed().as_secs_f64();
            Ok((m, wall_secs, rs_relayed(d) - relayed0))
        })();
        match r {
            Ok((m, wall_secs, relayed)) => {
                t.row(tunnel_row(&name, &m, None));
                let rs_cpu = m.extra_cpu.first().map(|x| x.1).unwrap_or(0.0);
                let per_cpu = if rs_cpu > 0.0 { format!("{:.0}", relayed as f64 / rs_cpu) } else { "-".into() };
                t.note(format!(
                    "the RS with {workers} worker{plural}: {:.2} CPU s per Gbit, {relayed} packets relayed in {:.1} s, \
                     {per_cpu} packets per RS CPU-second",
                    rs_cpu / m.gbits.max(1e-9),
                    wall_secs
                ));
                cap.row(vec![
                    format!("RS (ntm-rs, {workers} worker{plural}), packets relayed for the iperf3 runs above"),
                    format!("{:.0} packets/s (wall, limited by the agents)", relayed as f64 / wall_secs.max(1e-9)),
                    format!("{per_cpu} packets per RS CPU-second"),
                    format!("{relayed} packets, RS CPU {rs_cpu:.2} s"),
                ]);
            }
            Err(e) => {
                t.skip(&name, &format!("failed: {e}"));
                cap.skip(&format!("RS (ntm-rs, {workers} worker{plural})"), &format!("failed: {e}"));
            }
        }
    }
    t.note("CPU and RSS columns: the two agents (the RS's CPU is in the notes above).");
    t
}
