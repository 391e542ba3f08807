//! Part: tunnel throughput and latency over the direct path, ntmobile (both builds) beside
//! the bare path and the peers, round after round; each row keeps its best round.

use crate::deploy::{agent_pid, agents_down, agents_up_with, NtmBuild, A_IP, B_IP};
use crate::footprint::Footprint;
use crate::measure::{measure, Measured};
use crate::opts::Opts;
use crate::peers::{peer_down, peer_up, Peer};
use crate::table::Table;
use crate::util::{gbit, log, mib, Res};
use ntm_lab::deploy::Deployment;

pub fn tunnel_header() -> Vec<&'static str> {
    vec![
        "path",
        "a→b Gbit/s",
        "b→a Gbit/s",
        "vs boringtun 1 thread",
        "ping RTT ms (median)",
        "CPU µs per ping (both ends)",
        "CPU s per Gbit (both ends)",
        "TCP retransmits per GB",
        "RSS idle / peak MiB (larger end)",
    ]
}

/// A row; `baseline` is the mean rate the ratio column divides by.
pub fn tunnel_row(name: &str, m: &Measured, baseline: Option<f64>) -> Vec<String> {
    vec![
        name.to_string(),
        gbit(m.fwd_bps),
        gbit(m.rev_bps),
        baseline.filter(|b| *b > 0.0).map(|b| format!("{:.2}x", m.mean_bps() / b)).unwrap_or_else(|| "-".into()),
        format!("{:.3}", m.rtt_ms),
        if m.ping_cpu_us > 0.0 { format!("{:.1}", m.ping_cpu_us) } else { "-".into() },
        if m.cpu > 0.0 { format!("{:.2}", m.cpu_per_gbit()) } else { "-".into() },
        format!("{:.0}", m.retransmits_per_gb()),
        if m.rss.is_empty() { "-".into() } else { format!("{} / {}", mib(m.rss_idle()), mib(m.rss_peak())) },
    ]
}

/// Keeps the round of the best throughput, and the ping RTT (with its CPU per ping) of the
/// round of the lowest RTT: on a shared machine a round whose pings met other work is as
/// unlucky for latency as one whose iperf3 met it is for throughput, and the two need not
/// be the same round.
fn keep_best(slot: &mut Option<Res<Measured>>, r: Res<Measured>) {
    match (&mut *slot, r) {
        (Some(Ok(old)), Ok(new)) => {
            let (rtt, cpu) =
                if old.rtt_ms <= new.rtt_ms { (old.rtt_ms, old.ping_cpu_us) } else { (new.rtt_ms, new.ping_cpu_us) };
            if new.mean_bps() > old.mean_bps() {
                *old = new;
            }
            old.rtt_ms = rtt;
            old.ping_cpu_us = cpu;
        }
        (Some(Ok(_)), Err(_)) => {}
        (_, r) => *slot = Some(r),
    }
}

pub fn part_tunnel(d: &mut Deployment, o: &Opts, fp: &mut Footprint) -> Table {
    let mut t = Table::new("Tunnel throughput and latency (direct)", &tunnel_header());
    t.intro = format!(
        "Box a (198.51.100.2) and box b (203.0.113.2) of the lab deployment, joined through the lab's \
         router by veth links; every row uses these same two namespaces and links, one after the other, \
         in each of {} round(s). iperf3, one TCP stream, {} s each way; 200 pings every 20 ms (10 with --quick) before them, the median shown. Each row \
         keeps its best round: the highest throughput, and the lowest median RTT.",
        o.rounds, o.secs
    );
    let (a, b) = (d.boxes[0].ns.clone(), d.boxes[1].ns.clone());
    let ends = [(a.clone(), A_IP), (b.clone(), B_IP)];
    let mut bare: Option<Res<Measured>> = None;
    // The agent as built for routers (release: opt-level "z", AES-CCM at 3) and for x86_64
    // servers and gateways (profile speed: all at opt-level 3), each its own row.
    let mut ntm: Vec<(NtmBuild, Option<Res<Measured>>)> = NtmBuild::ALL.iter().map(|b| (*b, None)).collect();
    let mut peers: Vec<(Peer, Option<Res<Measured>>)> = Peer::ALL.iter().map(|p| (*p, None)).collect();
    for round in 0..o.rounds {
        log(&format!("tunnel round {}: bare path", round + 1));
        let r = measure(&mut d.lab, (&a, &b), B_IP, &[], &[], o, &format!("bare{round}"));
        keep_best(&mut bare, r);

        for (build, slot) in ntm.iter_mut() {
            let ntmd = build.ntmd(&d.bins);
            if !ntmd.is_file() {
                continue;
            }
            log(&format!("tunnel round {}: {}", round + 1, build.name()));
            let r = agents_up_with(d, "direct", &ntmd).and_then(|b4| {
                let pids: Vec<u32> = (0..2).filter_map(|i| agent_pid(d, i)).collect();
                measure(&mut d.lab, (&a, &b), &b4, &pids, &[], o, &format!("ntm-{}{round}", build.tag()))
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
                    let r =
                        measure(&mut d.lab, (&a, &b), &up.target, &pids, &[], o, &format!("{}{round}", peer.plan().0));
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
    // The yardstick: boringtun with one thread, the fastest userspace peer that
    // runs as one thread like ntmd.
    let baseline = peers.iter().find_map(|(p, r)| match (p, r) {
        (Peer::Boringtun1, Some(Ok(m))) => Some(m.clone()),
        _ => None,
    });
    let base_bps = baseline.as_ref().map(Measured::mean_bps);
    let emit = |t: &mut Table, name: &str, r: &Option<Res<Measured>>| match r {
        Some(Ok(m)) => t.row(tunnel_row(name, m, base_bps)),
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
            "best peer in this run: {}; the ratio column divides the mean of both directions by boringtun's \
             (1 thread) mean",
            p.name()
        ));
    }
    for (build, r) in &ntm {
        if let Some(Ok(m)) = r {
            if let Some(b) = &baseline {
                t.note(format!(
                    "{} against boringtun (1 thread): {:.2}x the throughput (target: at least 3x), {:.2}x its CPU \
                     seconds per Gbit (target: at most 0.33x), {:.2}x its ping RTT (target: at most 1x; CPU per \
                     ping {:.1} against {:.1} µs), {:.0} against {:.0} TCP retransmits per GB (target: no more)",
                    build.name(),
                    m.mean_bps() / b.mean_bps(),
                    m.cpu_per_gbit() / b.cpu_per_gbit(),
                    m.rtt_ms / b.rtt_ms,
                    m.ping_cpu_us,
                    b.ping_cpu_us,
                    m.retransmits_per_gb(),
                    b.retransmits_per_gb(),
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
         any row. CPU per ping: the time on a CPU of every thread of the two tunnel daemons \
         (/proc/PID/task/*/schedstat, in ns) over the pings, divided by their number; softirq work done in a \
         daemon's system call is in it. RSS: VmRSS before the runs and VmHWM after them, of the larger of the two ends.",
    );
    t.note("ntmobile's rows are measured with `log_level: info` (the daemons' default); the peers use their defaults.");
    t
}
