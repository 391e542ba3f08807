//! A bounded load generator for lab tests: sends datagrams to one address as fast as the
//! socket takes them, for at most a count and a time, then prints what it sent and how
//! many answers came back.
//!
//! ```text
//! ntm-flood dns  ADDR ZONE COUNT SECONDS   A queries for unique names below ZONE
//! ntm-flood junk ADDR COUNT SECONDS        random datagrams of 1 to 1400 bytes
//! ```
//!
//! Run it inside a lab namespace (`ip netns exec`); it only sends to the address given.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use simple_dns::{Name, Packet, PacketFlag, Question, CLASS, TYPE};
use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: ntm-flood dns ADDR ZONE COUNT SECONDS | ntm-flood junk ADDR COUNT SECONDS";

fn query(id: u16, name: &str) -> Option<Vec<u8>> {
    let mut msg = Packet::new_query(id);
    msg.set_flags(PacketFlag::RECURSION_DESIRED);
    msg.questions.push(Question::new(Name::new(name).ok()?, TYPE::A.into(), CLASS::IN.into(), false));
    msg.build_bytes_vec().ok()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["dns", addr, zone, count, secs] => Some((true, *addr, *zone, *count, *secs)),
        ["junk", addr, count, secs] => Some((false, *addr, "", *count, *secs)),
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
