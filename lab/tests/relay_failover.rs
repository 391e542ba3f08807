//! The relay is no single point of failure (issue 15, item 4), with the release binaries
//! in network namespaces: two RS processes in the DCs' configuration, both boxes behind
//! symmetric NATs (so their tunnel is relayed), a ping every 100 ms from box a to box b.
//! The RS carrying the tunnel is killed with SIGKILL; replies must come again, through
//! the other RS, within 2 s of the kill. Needs root, nft, NSD, dig and ping; the binaries
//! come from `cargo build --release --workspace --bins`.
//!
//! The gap is printed (`--nocapture`) and reported in docs/protocol.md.

#![allow(clippy::print_stderr)]

use ntm_lab::deploy::{or_skip, Access, Deployment, NatKind, RS2};
use ntm_lab::tools_or_skip;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const B: &str = "b.zone-b.test";
const A: &str = "a.zone-a.test";
/// The budget of issue 15: relayed traffic flows again within 2 s of its RS dying.
const BUDGET: f64 = 2.0;

/// The reply times (seconds since the epoch) in the output of `ping -D`.
fn reply_times(log: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains("bytes from") && l.contains("icmp_seq="))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse::<f64>().ok())
        .collect()
}

/// Where box `i`'s live tunnel to `peer` sends (the RS's address while relayed).
fn remote(d: &Deployment, i: usize, peer: &str) -> String {
    d.tunnel(i, peer).and_then(|t| t["remote"].as_str().map(str::to_string)).unwrap_or_default()
}

#[test]
fn a_relayed_ping_moves_to_the_other_rs_within_two_seconds_of_its_rs_dying() {
    let label = "relay-failover";
    if !tools_or_skip(label, &["ping", "nft", "dig"]) {
        return;
    }
    let access = [Access::Nat(NatKind::Symmetric), Access::Nat(NatKind::Symmetric)];
    let Some(mut d) = or_skip(Deployment::start_with(label, access), label) else { return };
    d.add_second_rs().expect("a second RS, and both DCs configured with both");
    let st = d.up_with(|_, _, _| {}).expect("both boxes register");
    let b_v4 = st[1]["virtual_ipv4"].as_str().unwrap_or_default().to_string();

    d.lab.step(format!("box a resolves {B} and pings {b_v4} through the relay"));
    let a = d.boxes[0].ns.clone();
    let first = Instant::now();
    let reached = loop {
        if d.dig(0, B, "A") == b_v4 && d.ping(0, &b_v4, 1) {
            break true;
        }
        if first.elapsed() > Duration::from_secs(30) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(reached, "box a reaches box b");
    assert!(d.wait_path(0, B, "relay", 10), "the tunnel is relayed");
    let before = remote(&d, 0, B);
    let (dead, spare) = if before.starts_with(RS2.2) { ("rs2", "192.0.2.30") } else { ("rs", RS2.2) };
    eprintln!("the tunnel runs through {before} ({dead})");

    // A ping every 100 ms for 12 s; the RS carrying the tunnel dies 3 s into it.
    let ping = d
        .lab
        .spawn(&a, "ping-relayed", &["ping", "-4", "-n", "-D", "-i", "0.1", "-w", "12", &b_v4], &[])
        .expect("ping starts");
    std::thread::sleep(Duration::from_secs(3));
    let (_, _, rs) = d.servers.iter().find(|(l, _, _)| l == dead).cloned().expect("the RS's process");
    let pid = d.lab.proc(rs).pid();
    d.lab.step(format!("kill -9 {dead} (pid {pid})"));
    let killed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    d.lab.proc(rs).signal(9);
    assert!(d.lab.proc(ping).wait(20).is_some(), "ping ends");
    let replies = reply_times(&d.lab.proc(ping).log_text());
    assert!(replies.iter().any(|&t| t < killed), "replies before the kill");
    let back = replies.iter().copied().find(|&t| t > killed);
    let longest = replies.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    eprintln!(
        "{dead} killed under a relayed ping (every 100 ms): replies again {:.3} s after the kill; \
         longest gap between replies {longest:.3} s; {} replies",
        back.map_or(f64::NAN, |b| b - killed),
        replies.len()
    );
    let back = back.expect("replies after the kill");
    assert!(back - killed <= BUDGET, "traffic flows again within {BUDGET} s of the kill: {:.3} s", back - killed);
    assert!(remote(&d, 0, B).starts_with(spare), "box a's tunnel moved to the other RS: {}", remote(&d, 0, B));
    assert!(remote(&d, 1, A).starts_with(spare), "box b's tunnel moved to the other RS: {}", remote(&d, 1, A));
    let relay = d.tunnel(0, B).and_then(|t| t["relay"].as_str().map(str::to_string)).unwrap_or_default();
    assert!(relay.starts_with(spare), "status names the tunnel's RS: {relay}");
}
