//! The driver's connection handling against a scripted engine over real loopback
//! sockets: half-closed peers, peers that do not read, peers that never finish a frame,
//! replaced connections, the status socket, and what connections that are not live may
//! cost: garbage frames, one source's share, a full table, partial frames in total, and
//! frames held back while the engine is busy (and counted in the status).

use ntm_proto::engine::{
    DnsAnswer, DnsQuery, DropCounters, DropReason, Engine, Local, PeerIdentity, Received, StreamKind, Transmit, Via,
};
use ntm_proto::time::Instant;
use ntm_servers::driver::{Daemon, Driver, DriverConfig, HANDSHAKE_TIMEOUT};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Answers `echo...` with the same frame and `flood` with 64 frames of 60 KB, drops
/// `junk...` as malformed, and after `hold` takes no frame from that peer until `busy` is
/// cleared; records what it was told. Answers an `echo...` datagram with the same, and
/// relays a `fwd...` datagram unchanged (the relay's fast path) to the last peer that sent
/// one.
#[derive(Default)]
struct Script {
    udp_peer: Option<SocketAddr>,
    busy: Option<SocketAddr>,
    frames: Vec<(SocketAddr, Vec<u8>)>,
    closed: Vec<SocketAddr>,
    out: VecDeque<Transmit>,
    drops: DropCounters,
}

impl Engine for Script {
    fn handle_datagram(&mut self, _now: Instant, from: SocketAddr, buf: &mut [u8]) -> Received {
        if buf.starts_with(b"echo") {
            self.udp_peer = Some(from);
            self.out.push_back(Transmit { via: Via::Udp, dst: from, payload: buf.to_vec() });
        } else if buf.starts_with(b"fwd") {
            if let Some(to) = self.udp_peer {
                return Received::Forward(to);
            }
        }
        Received::Handled
    }
    fn handle_stream(
        &mut self,
        _now: Instant,
        kind: StreamKind,
        from: SocketAddr,
        _peer: Option<&PeerIdentity>,
        frame: &[u8],
    ) -> Received {
        self.frames.push((from, frame.to_vec()));
        if frame.starts_with(b"junk") {
            return self.drops.count(DropReason::Malformed);
        }
        if frame == b"hold" {
            self.busy = Some(from);
        }
        let via = Via::Stream { kind, server: None };
        if frame.starts_with(b"echo") {
            self.out.push_back(Transmit { via, dst: from, payload: frame.to_vec() });
        } else if frame == b"flood" {
            for _ in 0..64 {
                self.out.push_back(Transmit { via: via.clone(), dst: from, payload: vec![0x55; 60_000] });
            }
        }
        Received::Handled
    }
    fn handle_stream_closed(&mut self, _now: Instant, _kind: StreamKind, peer: SocketAddr) {
        self.closed.push(peer);
    }
    fn handle_dns(&mut self, _now: Instant, _id: u64, _answer: DnsAnswer) {}
    fn handle_timeout(&mut self, _now: Instant) {}
    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }
    fn poll_dns(&mut self) -> Option<DnsQuery> {
        None
    }
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    fn drops(&self) -> &DropCounters {
        &self.drops
    }
    fn stream_ready(&self, _kind: StreamKind, peer: SocketAddr) -> bool {
        self.busy != Some(peer)
    }
}

struct Host {
    engine: Script,
    status_bytes: usize,
}

impl Daemon for Host {
    type Engine = Script;
    fn engine(&mut self) -> &mut Script {
        &mut self.engine
    }
    fn status(&mut self, _now: Instant) -> serde_json::Value {
        serde_json::json!({ "filler": "x".repeat(self.status_bytes) })
    }
    /// On an extra socket: `echo...` comes back from the socket it arrived on, tagged
    /// with the socket.
    fn handle_datagram_on(&mut self, _now: Instant, socket: Local, from: SocketAddr, buf: &mut [u8]) -> Received {
        if !buf.starts_with(b"echo") {
            return Received::Dropped(DropReason::Unexpected);
        }
        let mut payload = format!("on {}: ", socket.0).into_bytes();
        payload.extend_from_slice(buf);
        self.engine.out.push_back(Transmit { via: Via::UdpFrom(socket), dst: from, payload });
        Received::Handled
    }
}

fn config(tcp: usize, status_socket: Option<std::path::PathBuf>) -> DriverConfig {
    DriverConfig {
        udp: Vec::new(),
        tls: Vec::new(),
        tcp: vec!["127.0.0.1:0".parse().unwrap(); tcp],
        tls_server: None,
        tls_client: None,
        identify: ntm_servers::daemon::identify,
        locator: None,
        status_socket,
        max_connections: 64,
        tls_idle_timeout: None,
        tcp_idle_timeout: None,
        signals: false,
        max_unauthenticated_per_source: 64,
        max_buffered_bytes: 8 << 20,
    }
}

fn driver(tcp: usize) -> Driver<Host> {
    driver_with(config(tcp, None))
}

fn driver_with(cfg: DriverConfig) -> Driver<Host> {
    Driver::new(cfg, Host { engine: Script::default(), status_bytes: 0 }).unwrap()
}

/// True once the peer has closed `c` (read gives the end or an error), waiting at most 2 s.
fn closed_by_server(c: &mut TcpStream) -> bool {
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return true,
            Ok(_) => {}
        }
    }
}

fn frame(msg: &[u8]) -> Vec<u8> {
    let mut v = u16::try_from(msg.len()).unwrap().to_be_bytes().to_vec();
    v.extend_from_slice(msg);
    v
}

/// Turns the loop until `cond` or `secs` pass.
fn turn_until(d: &mut Driver<Host>, secs: u64, mut cond: impl FnMut(&mut Driver<Host>) -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        d.turn(Duration::from_millis(20)).unwrap();
        if cond(d) {
            return true;
        }
    }
    false
}

#[test]
fn a_half_closed_peer_gets_its_answer_then_the_connection_closes() {
    let mut d = driver(1);
    let addr = d.listen_addrs()[0];
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(&frame(b"echo one")).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let me = c.local_addr().unwrap();
    // The frame is handled, the answer written, and the connection closed: the engine
    // is told, and the peer reads the answer and then the end of the stream.
    assert!(turn_until(&mut d, 5, |d| !d.daemon().engine.closed.is_empty()), "the connection closes");
    assert_eq!(d.daemon().engine.frames, vec![(me, b"echo one".to_vec())]);
    assert_eq!(d.daemon().engine.closed, vec![me]);
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got, frame(b"echo one"));
}

#[test]
fn a_peer_that_does_not_read_is_cut_off() {
    let mut d = driver(1);
    let addr = d.listen_addrs()[0];
    let mut c = TcpStream::connect(addr).unwrap();
    let me = c.local_addr().unwrap();
    // Each request asks for ~3.8 MB; the peer never reads any of it.
    for _ in 0..8 {
        c.write_all(&frame(b"flood")).unwrap();
    }
    assert!(
        turn_until(&mut d, 10, |d| d.stats().slow_readers > 0),
        "the driver stops queueing for a peer that does not read"
    );
    // (Told again for each answer still queued for it.)
    assert!(turn_until(&mut d, 5, |d| d.daemon().engine.closed.first() == Some(&me)), "the engine is told");
}

#[test]
fn a_peer_that_never_completes_a_frame_is_closed() {
    let mut d = driver(1);
    let addr = d.listen_addrs()[0];
    let mut c = TcpStream::connect(addr).unwrap();
    let me = c.local_addr().unwrap();
    // A frame length, then a byte now and then: never a whole frame.
    c.write_all(&[0, 100]).unwrap();
    let mut last_drip = std::time::Instant::now();
    let closed = turn_until(&mut d, HANDSHAKE_TIMEOUT.as_secs() + 5, |d| {
        if last_drip.elapsed() >= Duration::from_millis(500) {
            let _ = c.write_all(b"x");
            last_drip = std::time::Instant::now();
        }
        !d.daemon().engine.closed.is_empty()
    });
    assert!(closed, "a slow-drip connection is closed: {:?}", d.stats());
    assert_eq!(d.daemon().engine.closed, vec![me]);
    assert!(d.stats().idle_closed >= 1);
    assert!(d.daemon().engine.frames.is_empty());
}

#[test]
fn a_replaced_connection_closes_without_closing_the_engines_stream() {
    // Two listeners; two client sockets bound to the same address and port reach one
    // each, so the driver sees the same peer address twice.
    let mut d = driver(2);
    let (a, b) = (d.listen_addrs()[0], d.listen_addrs()[1]);
    let bound = |to: SocketAddr, from: Option<SocketAddr>| {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_reuse_address(true).unwrap();
        s.bind(&from.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()).into()).unwrap();
        s.connect(&to.into()).unwrap();
        TcpStream::from(s)
    };
    let mut first = bound(a, None);
    let me = first.local_addr().unwrap();
    first.write_all(&frame(b"echo first")).unwrap();
    assert!(turn_until(&mut d, 5, |d| d.daemon().engine.frames.len() == 1));
    let mut second = bound(b, Some(me));
    second.write_all(&frame(b"echo second")).unwrap();
    assert!(turn_until(&mut d, 5, |d| d.daemon().engine.frames.len() == 2));
    // The older connection was closed; the engine's stream with `me` is the newer one.
    first.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let _ = first.read_to_end(&mut got);
    drop(first);
    for _ in 0..20 {
        d.turn(Duration::from_millis(10)).unwrap();
    }
    assert!(d.daemon().engine.closed.is_empty(), "the live stream was not reported closed");
    second.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = vec![0u8; frame(b"echo second").len()];
    second.read_exact(&mut buf).unwrap();
    assert_eq!(buf, frame(b"echo second"));
}

#[test]
fn the_status_socket_is_private_and_answers_in_full() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("ntm-driver-status-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // A file that is not a socket is never removed to make room.
    let precious = dir.join("dc.db");
    std::fs::write(&precious, b"data").unwrap();
    let host = || Host { engine: Script::default(), status_bytes: 4 << 20 };
    let err = Driver::new(config(0, Some(precious.clone())), host()).unwrap_err();
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&precious).unwrap(), b"data");

    let path = dir.join("status.sock");
    let mut d = Driver::new(config(0, Some(path.clone())), host()).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    // A second daemon on the same socket is refused rather than stealing it.
    assert!(Driver::new(config(0, Some(path.clone())), host()).is_err());
    // Several megabytes, far over a socket buffer, arrive whole.
    let v = read_status(&mut d, &path);
    assert_eq!(v["filler"].as_str().map(str::len), Some(4 << 20));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn garbage_frames_do_not_keep_a_connection_open() {
    let mut d = driver(1);
    let addr = d.listen_addrs()[0];
    let mut c = TcpStream::connect(addr).unwrap();
    let me = c.local_addr().unwrap();
    // Whole frames, but nothing the engine accepts: the connection never becomes live.
    let mut last = std::time::Instant::now() - Duration::from_secs(1);
    let closed = turn_until(&mut d, HANDSHAKE_TIMEOUT.as_secs() + 5, |d| {
        if last.elapsed() >= Duration::from_millis(300) {
            let _ = c.write_all(&frame(b"junk junk"));
            last = std::time::Instant::now();
        }
        !d.daemon().engine.closed.is_empty()
    });
    assert!(closed, "a connection sending only garbage is closed: {:?}", d.stats());
    assert_eq!(d.daemon().engine.closed, vec![me]);
    assert!(d.daemon().engine.frames.len() > 3, "the frames were handed over (and dropped)");
    assert!(d.stats().idle_closed >= 1);
}

#[test]
fn one_source_holds_only_its_share_of_connections_that_are_not_live() {
    let mut cfg = config(1, None);
    cfg.max_unauthenticated_per_source = 4;
    let mut d = driver_with(cfg);
    let addr = d.listen_addrs()[0];
    let mut silent: Vec<TcpStream> = (0..10).map(|_| TcpStream::connect(addr).unwrap()).collect();
    assert!(turn_until(&mut d, 5, |d| d.stats().accepted + d.stats().refused_source == 10));
    assert_eq!((d.stats().accepted, d.stats().refused_source), (4, 6), "{:?}", d.stats());
    // One of them proves itself: it no longer counts, and the source may open another.
    silent[0].write_all(&frame(b"echo live")).unwrap();
    assert!(turn_until(&mut d, 5, |d| d.daemon().engine.frames.len() == 1));
    let mut again = TcpStream::connect(addr).unwrap();
    assert!(turn_until(&mut d, 5, |d| d.stats().accepted == 5), "{:?}", d.stats());
    again.write_all(&frame(b"echo again")).unwrap();
    assert!(turn_until(&mut d, 5, |d| d.daemon().engine.frames.len() == 2));
    let mut buf = vec![0u8; frame(b"echo again").len()];
    again.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    again.read_exact(&mut buf).unwrap();
}

#[test]
fn a_full_table_makes_room_by_closing_the_oldest_connection_that_is_not_live() {
    let mut cfg = config(1, None);
    cfg.max_connections = 4;
    let mut d = driver_with(cfg);
    let addr = d.listen_addrs()[0];
    let mut live = TcpStream::connect(addr).unwrap();
    live.write_all(&frame(b"echo live")).unwrap();
    assert!(turn_until(&mut d, 5, |d| d.daemon().engine.frames.len() == 1));
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(addr).unwrap());
        assert!(turn_until(&mut d, 5, |d| d.stats().accepted as usize == silent.len() + 1));
    }
    // The table is full; a newcomer closes the oldest silent one, not the live one.
    let mut newcomer = TcpStream::connect(addr).unwrap();
    assert!(turn_until(&mut d, 5, |d| d.stats().accepted == 5), "{:?}", d.stats());
    assert_eq!((d.stats().evicted, d.stats().refused_full), (1, 0));
    assert!(closed_by_server(&mut silent[0]), "the oldest connection that is not live was closed");
    newcomer.write_all(&frame(b"echo new")).unwrap();
    live.write_all(&frame(b"echo still")).unwrap();
    assert!(turn_until(&mut d, 5, |d| d.daemon().engine.frames.len() == 3), "both are served");
}

#[test]
fn partial_frames_over_the_total_cap_shed_the_connection_holding_most() {
    let mut cfg = config(1, None);
    cfg.max_buffered_bytes = 200_000;
    let mut d = driver_with(cfg);
    let addr = d.listen_addrs()[0];
    let mut conns = Vec::new();
    for (i, n) in [40_000usize, 60_000, 50_000, 50_000, 45_000].into_iter().enumerate() {
        let mut c = TcpStream::connect(addr).unwrap();
        let mut bytes = vec![0xff, 0xff];
        bytes.resize(2 + n, i as u8);
        c.write_all(&bytes).unwrap();
        conns.push(c);
        assert!(turn_until(&mut d, 5, |d| d.stats().accepted as usize == i + 1));
        // Let the driver read all of it.
        for _ in 0..20 {
            d.turn(Duration::from_millis(5)).unwrap();
        }
    }
    // 245 000 bytes were sent; over 200 000 the one holding 60 000 goes.
    assert_eq!(d.stats().shed_buffers, 1, "{:?}", d.stats());
    assert!(closed_by_server(&mut conns[1]), "the largest holder was closed");
    let mut others = conns;
    others.remove(1);
    for c in &mut others {
        c.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        assert!(matches!(c.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock), "the others stay");
    }
}

#[test]
fn a_busy_engine_leaves_further_frames_in_the_socket() {
    let mut d = driver(1);
    let addr = d.listen_addrs()[0];
    let mut c = TcpStream::connect(addr).unwrap();
    let me = c.local_addr().unwrap();
    // A request the engine works on, and 2 000 more behind it in one write.
    let mut bytes = frame(b"hold");
    for i in 0..2000 {
        bytes.extend(frame(format!("echo {i}").as_bytes()));
    }
    c.write_all(&bytes).unwrap();
    assert!(turn_until(&mut d, 5, |d| !d.daemon().engine.frames.is_empty()));
    for _ in 0..50 {
        d.turn(Duration::from_millis(5)).unwrap();
    }
    assert_eq!(d.daemon().engine.frames.len(), 1, "nothing more is taken while the engine is busy");
    // Ready again: the rest follows, in order.
    d.daemon().engine.busy = None;
    assert!(turn_until(&mut d, 5, |d| d.daemon().engine.frames.len() == 2001), "{}", d.daemon().engine.frames.len());
    assert!(d.daemon().engine.frames.iter().all(|(from, _)| *from == me));
    assert_eq!(d.daemon().engine.frames[2000].1, b"echo 1999");
}

/// The status JSON, read from the socket at `path` while `d` turns.
fn read_status(d: &mut Driver<Host>, path: &std::path::Path) -> serde_json::Value {
    let reader = std::thread::spawn({
        let path = path.to_path_buf();
        move || {
            let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
            let mut text = String::new();
            s.read_to_string(&mut text).unwrap();
            text
        }
    });
    while !reader.is_finished() {
        d.turn(Duration::from_millis(5)).unwrap();
    }
    serde_json::from_str(&reader.join().unwrap()).expect("the whole JSON document")
}

#[test]
fn the_status_counts_streams_paused_for_a_busy_engine() {
    let dir = std::env::temp_dir().join(format!("ntm-driver-paused-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("status.sock");
    let mut d = driver_with(config(1, Some(path.clone())));
    assert_eq!(read_status(&mut d, &path)["paused_streams"], 0);
    let mut c = TcpStream::connect(d.listen_addrs()[0]).unwrap();
    let mut bytes = frame(b"hold");
    bytes.extend(frame(b"echo 1"));
    c.write_all(&bytes).unwrap();
    assert!(turn_until(&mut d, 5, |d| !d.daemon().engine.frames.is_empty()));
    let st = read_status(&mut d, &path);
    assert_eq!((st["connections"].as_u64(), st["paused_streams"].as_u64()), (Some(1), Some(1)), "{st}");
    // Ready again: the stream is read and no longer counted.
    d.daemon().engine.busy = None;
    assert!(turn_until(&mut d, 5, |d| d.daemon().engine.frames.len() == 2));
    assert_eq!(read_status(&mut d, &path)["paused_streams"], 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// True while the server has neither closed `c` nor sent anything on it.
fn still_open(c: &mut TcpStream) -> bool {
    c.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 16];
    let open = matches!(c.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    c.set_nonblocking(false).unwrap();
    open
}

#[test]
fn a_full_table_closes_silent_connections_before_one_that_has_begun_to_talk() {
    let mut cfg = config(1, None);
    cfg.max_connections = 3;
    let mut d = driver_with(cfg);
    let addr = d.listen_addrs()[0];
    // The oldest has sent bytes (a frame the engine drops: it stays not live), which is
    // more than silence.
    let mut talking = TcpStream::connect(addr).unwrap();
    talking.write_all(&frame(b"junk")).unwrap();
    assert!(turn_until(&mut d, 5, |d| d.daemon().engine.frames.len() == 1));
    let mut silent = Vec::new();
    for n in 2..=3 {
        silent.push(TcpStream::connect(addr).unwrap());
        assert!(turn_until(&mut d, 5, |d| d.stats().accepted == n));
    }
    // Each newcomer closes the oldest silent connection, never the talking one, though
    // it is the oldest of all.
    for n in 4..=7 {
        silent.push(TcpStream::connect(addr).unwrap());
        assert!(turn_until(&mut d, 5, |d| d.stats().accepted == n), "{:?}", d.stats());
    }
    assert_eq!((d.stats().evicted, d.stats().refused_full), (4, 0));
    for (i, c) in silent.iter_mut().enumerate().take(4) {
        assert!(closed_by_server(c), "silent connection {i} was closed");
    }
    assert!(still_open(&mut talking), "the talking connection stays");
    // Once every connection left talks, the first to talk goes first.
    for c in silent.iter_mut().skip(4) {
        c.write_all(&frame(b"junk")).unwrap();
    }
    assert!(turn_until(&mut d, 5, |d| d.daemon().engine.frames.len() == 3));
    let _newcomer = TcpStream::connect(addr).unwrap();
    assert!(turn_until(&mut d, 5, |d| d.stats().accepted == 8), "{:?}", d.stats());
    assert!(closed_by_server(&mut talking), "the first to talk goes when all talk");
    assert!(still_open(&mut silent[4]) && still_open(&mut silent[5]));
}

/// Runs `f` on a thread of its own in a new network namespace whose loopback holds
/// 192.0.2.10, 192.0.2.20, 2001:db8::53 and 2001:db8::20; None (and a notice) if this
/// process may not make one (it needs root).
#[allow(clippy::print_stderr)]
fn in_namespace_with_two_addresses<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: making a network namespace needs root");
        return None;
    }
    let t = std::thread::spawn(move || {
        // Only this thread moves; the commands it starts inherit its namespace.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("a new network namespace");
        let ip = |args: &[&str]| {
            let out = std::process::Command::new("ip").args(args).output().expect("ip runs");
            assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        ip(&["link", "set", "lo", "up"]);
        for a in ["192.0.2.10/32", "192.0.2.20/32"] {
            ip(&["addr", "add", a, "dev", "lo"]);
        }
        for a in ["2001:db8::53/128", "2001:db8::20/128"] {
            ip(&["-6", "addr", "add", a, "dev", "lo", "nodad"]);
        }
        // The kernel adds an IPv6 address's local route a moment later; a socket that
        // connects before then keeps a route that loops the datagrams back unreachable.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let out = std::process::Command::new("ip").args(["-6", "route", "show", "table", "local"]).output();
            let routes = String::from_utf8_lossy(&out.expect("ip runs").stdout).into_owned();
            if ["local 2001:db8::53 ", "local 2001:db8::20 "].iter().all(|r| routes.contains(r)) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the IPv6 addresses' local routes: {routes}");
            std::thread::sleep(Duration::from_millis(10));
        }
        f()
    });
    Some(t.join().expect("the namespace thread"))
}

/// Sends `msg` on `from` and waits (turning the driver) for a datagram on `to`, a
/// connected socket: it takes datagrams from its peer only, so one from another source
/// address never arrives. Three tries of a second each (UDP).
fn udp_answer(
    d: &mut Driver<Host>,
    from: &std::net::UdpSocket,
    msg: &[u8],
    to: &std::net::UdpSocket,
) -> Option<Vec<u8>> {
    to.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 256];
    let mut got = None;
    for _ in 0..3 {
        from.send(msg).unwrap();
        let answered = turn_until(d, 1, |_| match to.recv(&mut buf) {
            Ok(n) => {
                got = Some(buf[..n].to_vec());
                true
            }
            Err(_) => false,
        });
        if answered {
            break;
        }
    }
    got
}

/// A socket bound to a wildcard address on a host with two addresses answers from the
/// address the peer wrote to, the engine's replies and relayed datagrams alike: a peer
/// behind a NAT, or on a connected socket, takes nothing else. Both families.
#[test]
fn a_wildcard_socket_answers_from_the_address_the_peer_wrote_to() {
    let failures = in_namespace_with_two_addresses(|| {
        let mut cfg = config(0, None);
        cfg.udp = vec!["0.0.0.0:0".parse().unwrap(), "[::]:0".parse().unwrap()];
        let mut d = driver_with(cfg);
        let ports: Vec<u16> = d.udp_addrs().iter().map(|a| a.port()).collect();
        let mut failures = Vec::new();
        for (port, first, second) in
            [(ports[0], "192.0.2.10", "192.0.2.20"), (ports[1], "2001:db8::53", "2001:db8::20")]
        {
            let at = |ip: &str, port: u16| SocketAddr::new(ip.parse().unwrap(), port);
            // The peer writes from the first address to the second: the kernel's own
            // choice of source towards the first address is the first address.
            let peer = std::net::UdpSocket::bind(at(first, 0)).unwrap();
            peer.connect(at(second, port)).unwrap();
            match udp_answer(&mut d, &peer, b"echo to the second address", &peer) {
                Some(got) if got == b"echo to the second address" => {}
                other => failures.push(format!("the echo to {second} came back from it: {other:?}")),
            }
            // Another peer writes to the first address; what it sends is relayed to the
            // first peer, which must see it come from the second address, as before.
            let other = std::net::UdpSocket::bind(at(first, 0)).unwrap();
            other.connect(at(first, port)).unwrap();
            match udp_answer(&mut d, &other, b"fwd from the other peer", &peer) {
                Some(got) if got == b"fwd from the other peer" => {}
                got => failures.push(format!("the relayed datagram came to the peer from {second}: {got:?}")),
            }
            // And the first address still answers from itself.
            match udp_answer(&mut d, &other, b"echo to the first address", &other) {
                Some(got) if got == b"echo to the first address" => {}
                got => failures.push(format!("the echo to {first} came back from it: {got:?}")),
            }
        }
        failures
    });
    if let Some(failures) = failures {
        assert!(failures.is_empty(), "{failures:#?}");
    }
}

/// An extra socket (the DC's mapping port): what arrives there goes to the daemon's
/// `handle_datagram_on` with that socket, and the answer leaves from it, not from the
/// main socket, even to a peer that also wrote to the main one (each socket keeps its
/// own idea of where a peer wrote to). The peers' connected sockets take datagrams from
/// the one address and port they are connected to only.
#[test]
fn an_extra_socket_hears_and_answers_on_its_own_port() {
    let mut cfg = config(0, None);
    cfg.udp = vec!["127.0.0.1:0".parse().unwrap()];
    let mut d = driver_with(cfg);
    let main = d.udp_addrs()[0];
    let extra = d.bind_extra_udp(Local(1), "0.0.0.0:0".parse().unwrap()).unwrap();
    assert_ne!(extra.port(), main.port());
    assert_eq!(d.udp_addrs(), vec![main], "the extra socket is not one of the configured ones");
    let extra = SocketAddr::new(main.ip(), extra.port());
    let to_main = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    to_main.connect(main).unwrap();
    assert_eq!(udp_answer(&mut d, &to_main, b"echo 1", &to_main).as_deref(), Some(&b"echo 1"[..]));
    // The same peer's socket, now connected to the extra port.
    to_main.connect(extra).unwrap();
    assert_eq!(udp_answer(&mut d, &to_main, b"echo 2", &to_main).as_deref(), Some(&b"on 1: echo 2"[..]));
    // And the main socket still answers from the main port.
    to_main.connect(main).unwrap();
    assert_eq!(udp_answer(&mut d, &to_main, b"echo 3", &to_main).as_deref(), Some(&b"echo 3"[..]));
    assert!(d.bind_extra_udp(Local::MAIN, "127.0.0.1:0".parse().unwrap()).is_err());
    let taken = d.bind_extra_udp(Local(1), main).unwrap_err().to_string();
    assert!(taken.contains(&format!("cannot bind UDP {main}")), "{taken}");
}
