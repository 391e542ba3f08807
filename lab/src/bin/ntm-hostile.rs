//! A bounded hostile TCP client for lab tests: many connections from one address, each
//! holding a server's connection slot in its own way, for at most a count and a time.
//!
//! ```text
//! ntm-hostile hold    ADDR COUNT SECONDS   COUNT silent connections
//! ntm-hostile garbage ADDR COUNT SECONDS   COUNT connections, each sending a whole frame
//!                                          of junk every 500 ms
//! ntm-hostile partial ADDR COUNT SECONDS   COUNT connections, each sending 64 KiB of a
//!                                          frame that never completes
//! ```
//!
//! It prints `ready opened=N` once every connection is made, and at the end
//! `done opened=N closed=M last_close_ms=T` (how many the server closed, and when the last
//! of those closes was seen, counted from `ready`). Run it inside a lab namespace (`ip
//! netns exec`); it only connects to the address given.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: ntm-hostile hold|garbage|partial ADDR COUNT SECONDS";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Hold,
    Garbage,
    Partial,
}

struct Conn {
    sock: TcpStream,
    closed: bool,
}

/// Whether the server closed the connection (a read gives the end or an error).
fn server_closed(sock: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match sock.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [mode, addr, count, secs] => {
            let mode = match *mode {
                "hold" => Some(Mode::Hold),
                "garbage" => Some(Mode::Garbage),
                "partial" => Some(Mode::Partial),
                _ => None,
            };
            match (mode, addr.parse::<SocketAddr>(), count.parse::<usize>(), secs.parse::<u64>()) {
                (Some(m), Ok(a), Ok(c), Ok(s)) => Some((m, a, c, s)),
                _ => None,
            }
        }
        _ => None,
    };
    let Some((mode, to, count, secs)) = parsed else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let mut conns = Vec::new();
    let mut failed = 0u64;
    let partial: Vec<u8> = {
        // A length of 65 535, then 65 534 bytes of it: one byte short, forever.
        let mut v = vec![0xff, 0xff];
        v.extend((0..65_534u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
        v
    };
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id());
    let mut junk = move || {
        let mut f = vec![0, 16];
        for _ in 0..16 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            f.push(x as u8);
        }
        f
    };
    while conns.len() < count && Instant::now() < deadline {
        match TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
            Ok(mut sock) => {
                let _ = sock.set_nodelay(true);
                let first = match mode {
                    Mode::Hold => Ok(()),
                    Mode::Garbage => sock.write_all(&junk()),
                    Mode::Partial => {
                        let _ = sock.set_write_timeout(Some(Duration::from_secs(2)));
                        sock.write_all(&partial)
                    }
                };
                let _ = sock.set_nonblocking(true);
                conns.push(Conn { sock, closed: first.is_err() });
            }
            Err(_) => failed += 1,
        }
    }
    let ready = Instant::now();
    println!("ready opened={} failed={failed} in_ms={}", conns.len(), ready.duration_since(started).as_millis());
    let mut last_close = None;
    while Instant::now() < deadline {
        for c in conns.iter_mut().filter(|c| !c.closed) {
            let gone = server_closed(&mut c.sock)
                || (mode == Mode::Garbage
                    && c.sock.write_all(&junk()).is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock));
            if gone {
                c.closed = true;
                last_close = Some(ready.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let closed = conns.iter().filter(|c| c.closed).count();
    println!(
        "done opened={} closed={closed} last_close_ms={}",
        conns.len(),
        last_close.map_or(-1, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    );
    ExitCode::SUCCESS
}
