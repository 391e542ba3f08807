//! A foreign build of `ntmd` (another architecture, run under qemu-user) and the host's
//! `ntmd` talk to each other through the real servers: the proof that what one byte order
//! writes, the other reads — login, registration, the DNS hook, tunnel set-up and the
//! sealed data packets.
//!
//! The foreign binary comes from the environment, as `cross/build.sh` passes it:
//!
//! * `NTM_FOREIGN_NTMD`: path of the foreign `ntmd`;
//! * `NTM_FOREIGN_RUNNER`: the program that runs it, split at spaces (e.g.
//!   `qemu-mips -L /usr/mips-linux-gnu`); empty or unset runs the binary directly.
//!
//! Without `NTM_FOREIGN_NTMD` the test is skipped with a notice, unless
//! `NTM_REQUIRE_FOREIGN` is set (then it fails, and so does a lab that cannot run). Like
//! `tests/agent.rs` it needs root, NSD, dig, socat and ping, and the host's release
//! binaries (`cargo build --release --workspace --bins`).
//!
//! Box `a` runs the host's `ntmd`, box `b` the foreign one.

#![allow(clippy::print_stderr)]

use ntm_lab::deploy::{payload, Deployment};
use ntm_lab::{have, LabError};
use serde_json::Value;
use std::time::Instant;

/// How long the foreign box may take to log in and register. Under qemu-user it took
/// 0.3-0.6 s here (the host's agent: a few ms); the margin is for a loaded machine.
const REGISTER_SECS: u64 = 120;

fn required() -> bool {
    std::env::var_os("NTM_REQUIRE_FOREIGN").is_some()
}

fn skip(why: &str) {
    assert!(!required(), "foreign agent test required (NTM_REQUIRE_FOREIGN) but: {why}");
    ntm_lab::notice(&format!("SKIPPED foreign agent test: {why}"));
}

/// The command that runs the foreign `ntmd` (runner words, then the binary).
fn foreign_command() -> Option<Vec<String>> {
    let bin = std::env::var("NTM_FOREIGN_NTMD").ok().filter(|b| !b.is_empty())?;
    let mut cmd: Vec<String> =
        std::env::var("NTM_FOREIGN_RUNNER").unwrap_or_default().split_whitespace().map(String::from).collect();
    cmd.push(bin);
    Some(cmd)
}

/// The ELF machine and data encoding of `path` (e_machine, EI_DATA), for the report and
/// to make sure the binary really is foreign.
fn elf_kind(path: &str) -> Option<(u16, u8)> {
    let head = std::fs::read(path).ok()?;
    if head.get(..4)? != b"\x7fELF" {
        return None;
    }
    let data = *head.get(5)?;
    let m = [*head.get(18)?, *head.get(19)?];
    let machine = if data == 2 { u16::from_be_bytes(m) } else { u16::from_le_bytes(m) };
    Some((machine, data))
}

fn addr(s: &Value, key: &str) -> String {
    s[key].as_str().unwrap_or_else(|| panic!("{key} in {s}")).to_string()
}

#[test]
fn a_foreign_agent_and_the_host_agent_talk_through_the_real_servers() {
    let Some(foreign) = foreign_command() else {
        skip("NTM_FOREIGN_NTMD is not set (cross/build.sh sets it)");
        return;
    };
    let bin = foreign.last().cloned().unwrap_or_default();
    let kind = elf_kind(&bin).unwrap_or_else(|| panic!("{bin} is not an ELF binary"));
    let host = std::env::current_exe().ok().and_then(|e| elf_kind(&e.to_string_lossy()));
    assert_ne!(Some(kind), host, "{bin} is built for this machine, not a foreign one");
    for tool in ["socat", "ping", "dig"].into_iter().chain(foreign.first().map(String::as_str)) {
        if !have(tool) && !std::path::Path::new(tool).is_file() {
            return skip(&format!("{tool} is missing"));
        }
    }
    let mut d = match Deployment::start("foreign") {
        Ok(d) => d,
        Err(e @ (LabError::NotRoot | LabError::Missing(_))) if std::env::var_os("NTM_REQUIRE_LAB").is_none() => {
            return skip(&e.to_string());
        }
        Err(e) => panic!("foreign: {e}"),
    };
    let endian = if kind.1 == 2 { "big" } else { "little" };
    eprintln!("foreign ntmd: ELF machine {} ({endian} endian), run as {}", kind.0, foreign.join(" "));

    let cfg_a = d.agent_config(0);
    d.start_agent(0, &cfg_a).expect("host ntmd starts");
    let cfg_b = d.agent_config(1);
    let words: Vec<&str> = foreign.iter().map(String::as_str).collect();
    let t = Instant::now();
    d.start_agent_with(1, &cfg_b, &words).expect("foreign ntmd starts");
    let sa = d.wait_registered(0, 30).expect("box a (host ntmd) logs in and registers");
    let Some(sb) = d.wait_registered(1, REGISTER_SECS) else {
        let p = d.boxes[1].proc.expect("started");
        panic!("box b (foreign ntmd) did not register:\n{}", d.lab.proc(p).log_text());
    };
    eprintln!("foreign ntmd logged in and registered in {:?}", t.elapsed());
    let (a4, a6) = (addr(&sa, "virtual_ipv4"), addr(&sa, "virtual_ipv6"));
    let (b4, b6) = (addr(&sb, "virtual_ipv4"), addr(&sb, "virtual_ipv6"));
    assert_eq!(sb["fqdn"], "b.zone-b.test", "{sb}");
    assert!(b4.starts_with("198.18.2.") && b6.starts_with("2001:db8:ffb::"), "{b4} {b6}");

    d.lab.step("DNS hooks: each box resolves the other's name to its virtual addresses");
    assert_eq!(d.dig(0, "b.zone-b.test", "A"), b4, "the host box resolves the foreign box (A)");
    assert_eq!(d.dig(0, "b.zone-b.test", "AAAA"), b6, "the host box resolves the foreign box (AAAA)");
    assert_eq!(d.dig(1, "a.zone-a.test", "A"), a4, "the foreign box's hook resolves the host box (A)");
    assert_eq!(d.dig(1, "a.zone-a.test", "AAAA"), a6, "the foreign box's hook resolves the host box (AAAA)");
    assert_eq!(d.dig(1, "www.plain.example", "A"), "192.0.2.80", "the foreign hook forwards other names");

    d.lab.step("ping over the virtual addresses, both ways, IPv4 and IPv6");
    for (i, dst) in [(0, &b4), (0, &b6), (1, &a4), (1, &a6)] {
        assert!(d.ping(i, dst, 3), "ping from box {i} to {dst}");
    }

    d.lab.step("TCP echo by name through the tunnel, both directions, IPv4 and IPv6");
    for (i, label, listen) in [
        (1, "echo-b4", "TCP4-LISTEN:7000,reuseaddr,fork"),
        (1, "echo-b6", "TCP6-LISTEN:7001,reuseaddr,fork"),
        (0, "echo-a4", "TCP4-LISTEN:7000,reuseaddr,fork"),
    ] {
        let p = d.echo_server(i, label, listen).expect("socat starts");
        assert!(d.lab.proc(p).alive(), "echo server {label} runs");
    }
    let data = payload(128 * 1024, 11);
    let t = Instant::now();
    assert!(d.tcp_echo(0, "TCP4:b.zone-b.test:7000", &data, "a-b4") == data, "a -> b (IPv4) echoed intact");
    eprintln!("128 KiB each way through the foreign agent in {:?}", t.elapsed());
    assert!(d.tcp_echo(0, "TCP6:b.zone-b.test:7001", &data, "a-b6") == data, "a -> b (IPv6) echoed intact");
    let back = payload(64 * 1024, 5);
    assert!(d.tcp_echo(1, "TCP4:a.zone-a.test:7000", &back, "b-a4") == back, "b -> a (IPv4) echoed intact");

    for (i, peer) in [(0, "b.zone-b.test"), (1, "a.zone-a.test")] {
        let t = d.tunnel(i, peer).unwrap_or_else(|| panic!("box {i} has a live tunnel to {peer}: {:?}", d.status(i)));
        assert_eq!(t["path"], "direct", "{t}");
        let (tx, rx) = (t["tx_packets"].as_u64().unwrap_or(0), t["rx_packets"].as_u64().unwrap_or(0));
        assert!(tx > 50 && rx > 50, "box {i} counts the traffic through its tunnel: {t}");
    }
    let pb = d.boxes[1].proc.expect("started");
    assert!(d.lab.proc(pb).alive(), "the foreign agent is still running");
}
