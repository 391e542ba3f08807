//! Part: handover. Box a moves between two links while it pings box b and keeps a TCP
//! stream to it; captures time the first tunnel packet on the new link.

use crate::deploy::{agents_down, agents_up, A_IP, B_IP, B_NAME};
use crate::opts::Opts;
use crate::table::Table;
use crate::util::{e2s, max, median, ms, wall, Res};
use ntm_lab::deploy::Deployment;
use ntm_lab::have;
use ntm_lab::stream::LineStream;
use std::process::Command;
use std::time::{Duration, Instant};

pub fn part_handover(d: &mut Deployment, o: &Opts) -> Table {
    let mut t =
        Table::new("Handover (box a moves between two links)", &["what", "median ms", "max ms", "runs", "notes"]);
    t.intro = format!(
        "Box a moves {} times between its link eth0 (198.51.100.2) and a second link eth1 (198.19.5.2), \
         alternately: one `ip -batch` deletes the old address, adds the new one and replaces the default \
         route. Meanwhile box a pings box b's virtual address every 10 ms and keeps a TCP connection to it \
         with a line sent every 10 ms and echoed back. Time 0 is the start of the address change.",
        o.moves
    );
    match handover(d, o) {
        Ok(Handover { first, stall, lost: lost_lines, moves, repairs }) => {
            t.row(vec![
                "address change → first tunnel packet from the peer on the new link (capture)".into(),
                ms(median(&first)),
                ms(max(&first)),
                format!("{}/{moves}", first.len()),
                "tcpdump on box a's new link: first UDP datagram from box b's tunnel port to the new address".into(),
            ]);
            t.row(vec![
                "TCP stall seen by the application".into(),
                ms(median(&stall)),
                ms(max(&stall)),
                format!("{}/{moves}", stall.len()),
                format!(
                    "longest gap between echoed lines (sent every 10 ms) around each move; moves with a \
                     stall over 100 ms: {}; lines lost or reordered: {lost_lines}",
                    stall.iter().filter(|s| **s > 0.1).count()
                ),
            ]);
            t.note(format!(
                "repairs over all moves: box a held {} datagrams the kernel refused while it had no route and \
                 sent them once the route was back; box b sent {} recent packets again to box a's new address \
                 (`ntmd status`: held_sent, resent_to_moved_peer)",
                repairs.0, repairs.1
            ));
            let target = if max(&first) <= 0.1 && max(&stall) <= 0.1 { "met" } else { "not met" };
            t.note(format!("target: at most 100 ms in the lab ({target} by the maxima above)"));
        }
        Err(e) => t.skip("handover", &format!("failed: {e}")),
    }
    t
}

struct Handover {
    /// Address change to the first packet from the peer on the new link, seconds.
    first: Vec<f64>,
    /// The longest gap in the echoed stream around each move, seconds.
    stall: Vec<f64>,
    /// Lines missing or out of order.
    lost: u64,
    moves: usize,
    /// Datagrams box a held for want of a route and sent later, and packets box b sent
    /// again to box a's new address.
    repairs: (u64, u64),
}

fn handover(d: &mut Deployment, o: &Opts) -> Res<Handover> {
    for tl in ["tcpdump", "socat"] {
        if !have(tl) {
            return Err(format!("skipped: `{tl}` not installed"));
        }
    }
    let (a, b) = (d.boxes[0].ns.clone(), d.boxes[1].ns.clone());
    let b4 = agents_up(d, "direct")?;
    d.lab.capture(&a, "eth0", "ho-eth0").map_err(e2s)?;
    d.lab.capture(&a, "eth1", "ho-eth1").map_err(e2s)?;
    // The inner packets too, for a look at the TCP stream when the lab is kept (NTM_LAB_KEEP).
    d.lab.capture(&a, "ntm0", "ho-tun").map_err(e2s)?;
    d.echo_server(1, "ho-echo", "TCP4-LISTEN:7000,reuseaddr,fork").map_err(e2s)?;
    let _ = b;
    let settle = if o.quick { 1.5 } else { 2.0 };
    let total_secs = (o.moves as f64 * settle + 10.0) as u64;
    let count = (total_secs * 100).to_string();
    let pinger =
        d.lab.spawn(&a, "ho-ping", &["ping", "-q", "-i", "0.01", "-c", &count, "-W", "1", &b4], &[]).map_err(e2s)?;
    let stream = LineStream::start_paced(
        d,
        0,
        &format!("TCP4:{B_NAME}:7000"),
        Duration::from_millis(10),
        Duration::from_secs(total_secs),
    )
    .map_err(e2s)?;
    if !d.lab.wait_for(10, || stream.count() >= 50) {
        let _ = stream.finish(d);
        return Err("the echoed line stream did not start".into());
    }
    let batch_dir = d.lab.dir().to_path_buf();
    // (wall time for the captures, the same moment for the echoes, new link, new address)
    let mut moves: Vec<(f64, Instant, &str, &str)> = Vec::new();
    let mut failure = None;
    for k in 0..o.moves {
        // Odd moves go to eth1, even ones back to eth0.
        let (old_if, old, new_if, new, gw, new_ip) = if k % 2 == 0 {
            ("eth0", "198.51.100.2/24", "eth1", "198.19.5.2/24", "198.19.5.1", "198.19.5.2")
        } else {
            ("eth1", "198.19.5.2/24", "eth0", "198.51.100.2/24", "198.51.100.1", A_IP)
        };
        let batch = batch_dir.join(format!("move-{k}.batch"));
        let cmds =
            format!("address del {old} dev {old_if}\naddress add {new} dev {new_if}\nroute replace default via {gw}\n");
        if let Err(e) = std::fs::write(&batch, cmds) {
            failure = Some(e.to_string());
            break;
        }
        let (t0, at) = (wall(), Instant::now());
        if let Err(e) = d.lab.exec(&a, &["ip", "-batch", &batch.to_string_lossy()]) {
            failure = Some(format!("move {k}: {e}"));
            break;
        }
        moves.push((t0, at, new_if, new_ip));
        std::thread::sleep(Duration::from_secs_f64(settle));
    }
    std::thread::sleep(Duration::from_millis(500));
    let counter = |i: usize, name: &str| d.status(i).and_then(|s| s["counters"][name].as_u64()).unwrap_or(0);
    let repairs = (counter(0, "held_sent"), counter(1, "resent_to_moved_peer"));
    let got = stream.echoes();
    let _ = stream.finish(d);
    d.lab.proc(pinger).stop();
    d.lab.stop_capture("ho-eth0");
    d.lab.stop_capture("ho-eth1");
    d.lab.stop_capture("ho-tun");
    if let Some(f) = failure {
        return Err(f);
    }

    // First datagram from box b's tunnel port to the new address on the new link.
    let mut first = Vec::new();
    for (t0, _, iface, ip) in &moves {
        let pcap = d.lab.dir().join(format!("ho-{iface}.pcap"));
        let out = Command::new("tcpdump")
            .args(["-tt", "-n", "-r"])
            .arg(&pcap)
            .args(["udp", "and", "src", "host", B_IP, "and", "src", "port", "4500"])
            .output()
            .map_err(e2s)?;
        let want = format!("> {ip}.4500:");
        let hit = String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
            let ts: f64 = l.split_whitespace().next()?.parse().ok()?;
            (ts > *t0 && l.contains(&want)).then_some(ts - t0)
        });
        if let Some(h) = hit {
            first.push(h);
        }
    }
    // Longest gap between two echoes that ends after this move and no later than the next
    // one: a gap that spans the next move belongs to that move alone.
    let lost = got.iter().enumerate().filter(|(i, (_, n))| *n != *i as u64).count() as u64;
    let mut stall = Vec::new();
    for (k, (_, at, _, _)) in moves.iter().enumerate() {
        let end = moves.get(k + 1).map(|m| m.1);
        let gap = got
            .windows(2)
            .filter(|w| w[1].0 > *at && end.is_none_or(|e| w[1].0 <= e))
            .map(|w| w[1].0.duration_since(w[0].0).as_secs_f64())
            .fold(0.0, f64::max);
        stall.push(gap);
    }
    agents_down(d);
    Ok(Handover { first, stall, lost, moves: moves.len(), repairs })
}
