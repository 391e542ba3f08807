//! What the loads share: errors as strings, the engines' clock, key bytes, a process's
//! CPU time, a TLS client with the servers' certificates, framed reads and resends.

use ntm_proto::time::Instant as PInstant;
use ntm_proto::wire::frame::FrameDecoder;
use ntm_proto::wire::Fqdn;
use std::collections::HashMap;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub type Res<T> = Result<T, String>;

pub fn err<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// The engines' clock: UNIX milliseconds, as the daemons use.
pub fn proto_now() -> PInstant {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    PInstant::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// Far enough that no channel of a run expires.
pub fn far() -> PInstant {
    PInstant::from_millis(u64::MAX / 4)
}

/// Key bytes for node `i` of this run (not secret: a load test).
pub fn key_bytes(run: u64, i: u64) -> [u8; 16] {
    let mut x = run ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5851_f42d_4c95_7f2d;
    let mut out = [0u8; 16];
    for b in out.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    out
}

/// utime + stime of `pid` in seconds (clock ticks of 10 ms).
pub fn cpu_secs(pid: u32) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return f64::NAN };
    let Some(rest) = s.rsplit_once(')').map(|(_, r)| r) else { return f64::NAN };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    // After the ')' the fields start at field 3 (state): utime is field 14, stime 15.
    (ticks(11) + ticks(12)) / 100.0
}

pub fn tls_client(
    addr: SocketAddr,
    server: &Fqdn,
    ca: &str,
    cert: &str,
    key: &str,
) -> Res<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let material = ntm_servers::pki::TlsMaterial::load(ca, cert, key).map_err(err("TLS files"))?;
    let config: Arc<rustls::ClientConfig> = ntm_servers::pki::client_config(&material).map_err(err("TLS config"))?;
    let name = ntm_servers::pki::server_name(server).map_err(err("server name"))?;
    let conn = rustls::ClientConnection::new(config, name).map_err(err("TLS client"))?;
    let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(err("connect"))?;
    sock.set_read_timeout(Some(Duration::from_secs(10))).map_err(err("timeout"))?;
    sock.set_nodelay(true).map_err(err("nodelay"))?;
    Ok(rustls::StreamOwned::new(conn, sock))
}

/// Reads frames from `s` until `want` of them are in `out`.
pub fn read_frames(s: &mut impl Read, dec: &mut FrameDecoder, want: usize, out: &mut Vec<Vec<u8>>) -> Res<()> {
    let mut buf = [0u8; 16384];
    while out.len() < want {
        while let Some(f) = dec.next_frame().map_err(err("frame"))? {
            out.push(f);
        }
        if out.len() >= want {
            break;
        }
        let n = s.read(&mut buf).map_err(err("read"))?;
        if n == 0 {
            return Err("the server closed the stream".into());
        }
        dec.push(&buf[..n]);
    }
    Ok(())
}

/// The requests of `pending` unanswered for more than 500 ms, stamped `now` again: the
/// caller sends them again.
pub fn due_again(pending: &mut HashMap<usize, Instant>, now: Instant) -> Vec<usize> {
    let late: Vec<usize> =
        pending.iter().filter(|(_, t)| now.duration_since(**t) > Duration::from_millis(500)).map(|(i, _)| *i).collect();
    for i in &late {
        pending.insert(*i, now);
    }
    late
}
