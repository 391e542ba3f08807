//! A bounded load generator for lab tests: sends datagrams to one address as fast as the
//! socket takes them, for at most a count and a time, then prints what it sent and how
//! many answers came back.
//!
//! ```text
//! ntm-flood dns  ADDR ZONE COUNT SECONDS   A queries for unique names below ZONE
//! ntm-flood junk ADDR COUNT SECONDS        random datagrams of 1 to 1400 bytes
//! ntm-flood replay ADDR FILE COUNT SECONDS the datagrams of FILE (one in hex per line),
//!                                          in turn: captured traffic sent again
//! ntm-flood forge ADDR FILE COUNT SECONDS  the same, each with a new counter far ahead
//!                                          and one byte of its body changed: forgeries
//!                                          that only the tag check can refuse
//! ```
//!
//! Run it inside a lab namespace (`ip netns exec`); it only sends to the address given.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use simple_dns::{Name, Packet, PacketFlag, Question, CLASS, TYPE};
use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: ntm-flood dns ADDR ZONE COUNT SECONDS | ntm-flood junk ADDR COUNT SECONDS \
                     | ntm-flood replay|forge ADDR FILE COUNT SECONDS";

/// The datagrams of a replay file: one per line, in hex.
fn read_replays(path: &str) -> Result<Vec<Vec<u8>>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let hex = |line: &str| -> Option<Vec<u8>> {
        let b = line.trim().as_bytes();
        if b.is_empty() || b.len() % 2 != 0 {
            return None;
        }
        b.chunks(2).map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok()).collect()
    };
    let out: Vec<Vec<u8>> = text.lines().filter_map(hex).collect();
    if out.is_empty() {
        return Err(format!("{path}: no datagram (one in hex per line)"));
    }
    Ok(out)
}

fn query(id: u16, name: &str) -> Option<Vec<u8>> {
    let mut msg = Packet::new_query(id);
    msg.set_flags(PacketFlag::RECURSION_DESIRED);
    msg.questions.push(Question::new(Name::new(name).ok()?, TYPE::A.into(), CLASS::IN.into(), false));
    msg.build_bytes_vec().ok()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut replays, mut forge) = (Vec::new(), false);
    let parsed = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["dns", addr, zone, count, secs] => Some((true, *addr, *zone, *count, *secs)),
        ["junk", addr, count, secs] => Some((false, *addr, "", *count, *secs)),
        [mode @ ("replay" | "forge"), addr, file, count, secs] => match read_replays(file) {
            Ok(r) => {
                replays = r;
                forge = *mode == "forge";
                Some((false, *addr, "", *count, *secs))
            }
            Err(e) => {
                eprintln!("ntm-flood: {e}");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    let Some((dns, addr, zone, count, secs)) = parsed else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let (Ok(to), Ok(count), Ok(secs)) = (addr.parse::<SocketAddr>(), count.parse::<u64>(), secs.parse::<u64>()) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let bind = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let sock = match UdpSocket::bind(bind).and_then(|s| s.set_nonblocking(true).map(|()| s)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ntm-flood: {e}");
            return ExitCode::from(1);
        }
    };
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id());
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let (mut sent, mut answers) = (0u64, 0u64);
    let mut buf = [0u8; 2048];
    while sent < count && Instant::now() < deadline {
        let datagram = if dns {
            query(next() as u16, &format!("n{sent}x{:x}.{zone}", next() & 0xffff))
        } else if !replays.is_empty() {
            replays.get(sent as usize % replays.len()).cloned().map(|mut d| {
                if forge && d.len() > 16 {
                    // The header's counter (bytes 8..16) far ahead of any in use, and one
                    // bit of the ciphertext or tag flipped.
                    d[8..16].copy_from_slice(&((1u64 << 40) + (next() >> 24)).to_be_bytes());
                    let at = 16 + (next() as usize) % (d.len() - 16);
                    d[at] ^= 1 << (next() % 8);
                }
                d
            })
        } else {
            let len = 1 + (next() % 1400) as usize;
            Some((0..len).map(|_| next() as u8).collect())
        };
        let Some(d) = datagram else { continue };
        match sock.send_to(&d, to) {
            Ok(_) => sent += 1,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_micros(200)),
            Err(_) => sent += 1, // e.g. ICMP unreachable reported on a later send
        }
        while sock.recv_from(&mut buf).is_ok() {
            answers += 1;
        }
    }
    // Answers still on the way.
    let settle = Instant::now() + Duration::from_millis(500);
    while Instant::now() < settle {
        match sock.recv_from(&mut buf) {
            Ok(_) => answers += 1,
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    println!("sent {sent} answers {answers}");
    ExitCode::SUCCESS
}
