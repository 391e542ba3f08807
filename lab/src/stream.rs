//! A long-lived TCP connection from a box, for tests of what applications see: socat
//! carries a numbered line every 50 ms (or as asked) to an echo server; every echoed line is
//! timed.
//! The longest gap between echoes is the stall an application sees (a handover, an
//! upgrade, a server restart), and the end tells whether the connection was reset.

use crate::deploy::Deployment;
use crate::Result;
use std::io::{BufRead, BufReader, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Lines are written at most this long.
const MAX_RUN: Duration = Duration::from_secs(90);
/// One line every this often.
const EVERY: Duration = Duration::from_millis(50);

/// The running connection.
#[derive(Debug)]
pub struct LineStream {
    proc: usize,
    echoes: Arc<Mutex<Vec<(Instant, u64)>>>,
    stop: Arc<AtomicBool>,
    writer: std::thread::JoinHandle<()>,
    reader: std::thread::JoinHandle<()>,
}

/// How it ended.
#[derive(Debug)]
pub struct StreamEnd {
    /// The numbers of the echoed lines, in the order they came back.
    pub lines: Vec<u64>,
    /// socat's exit code: 0 after a clean close, 1 after a reset or an error.
    pub exit: Option<i32>,
    /// socat's messages.
    pub log: String,
}

impl StreamEnd {
    /// True if every line came back once, in order.
    pub fn complete(&self) -> bool {
        self.lines.iter().enumerate().all(|(i, n)| *n == i as u64)
    }
}

impl LineStream {
    /// Connects from box `i` to `target` (a socat address, e.g. `TCP4:b.zone-b.test:7000`,
    /// names resolved through the box's DNS hook) and starts the lines.
    pub fn start(d: &mut Deployment, i: usize, target: &str) -> Result<LineStream> {
        Self::start_paced(d, i, target, EVERY, MAX_RUN)
    }

    /// As [`LineStream::start`], with one line every `every` (paced against the start, so
    /// the rate holds) for at most `run_for`.
    pub fn start_paced(
        d: &mut Deployment,
        i: usize,
        target: &str,
        every: Duration,
        run_for: Duration,
    ) -> Result<LineStream> {
        let ns = d.boxes[i].ns.clone();
        Self::start_in(d, &ns, target, every, run_for)
    }

    /// As [`LineStream::start_paced`], from any namespace of the lab (e.g. a device on a
    /// box's LAN).
    pub fn start_in(
        d: &mut Deployment,
        ns: &crate::Ns,
        target: &str,
        every: Duration,
        run_for: Duration,
    ) -> Result<LineStream> {
        let proc = d.lab.spawn_piped(ns, "stream", &["socat", "-T", "90", "-", target])?;
        let (Some(mut input), Some(output)) = (d.lab.proc(proc).take_stdin(), d.lab.proc(proc).take_stdout()) else {
            return Err(crate::LabError::Command { what: "socat pipes".into(), stderr: String::new() });
        };
        let echoes: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
        let reader = {
            let echoes = echoes.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(output).lines() {
                    let Ok(line) = line else { break };
                    if let Some(n) = line.strip_prefix("line ").and_then(|n| n.parse().ok()) {
                        if let Ok(mut e) = echoes.lock() {
                            e.push((Instant::now(), n));
                        }
                    }
                }
            })
        };
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut n = 0u32;
                while start.elapsed() < run_for && !stop.load(Ordering::Relaxed) {
                    if writeln!(input, "line {n}").and_then(|()| input.flush()).is_err() {
                        break;
                    }
                    n += 1;
                    if let Some(wait) = (every * n).checked_sub(start.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
            })
        };
        Ok(LineStream { proc, echoes, stop, writer, reader })
    }

    /// Lines echoed so far.
    pub fn count(&self) -> usize {
        self.echoes.lock().map(|e| e.len()).unwrap_or(0)
    }

    /// Every echo so far: (when it came back, the line's number).
    pub fn echoes(&self) -> Vec<(Instant, u64)> {
        self.echoes.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Waits (at most 30 s) until the stream has gone on for 40 more echoes after a move
    /// made at `moved`, and prints its longest pause after it (`what` names the move);
    /// `None` if the stream did not go on.
    pub fn stall_after(&self, d: &Deployment, moved: Instant, what: &str) -> Option<Duration> {
        let n = self.count();
        if !d.lab.wait_for(30, || self.count() >= n + 40) {
            return None;
        }
        let gap = self.longest_gap_after(moved);
        let _ = writeln!(std::io::stderr(), "{what}: longest pause in the stream {gap:?}");
        Some(gap)
    }

    /// The longest time between two echoes, counting those that came after `t`.
    pub fn longest_gap_after(&self, t: Instant) -> Duration {
        let Ok(e) = self.echoes.lock() else { return Duration::ZERO };
        e.windows(2).filter(|w| w[1].0 > t).map(|w| w[1].0.duration_since(w[0].0)).max().unwrap_or_default()
    }

    /// Stops writing, lets socat half-close and end, and says how it ended.
    pub fn finish(self, d: &mut Deployment) -> StreamEnd {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.writer.join();
        let exit = d.lab.proc(self.proc).wait(10);
        let _ = self.reader.join();
        let lines = self.echoes.lock().map(|e| e.iter().map(|(_, n)| *n).collect()).unwrap_or_default();
        StreamEnd { lines, exit, log: d.lab.proc(self.proc).log_text() }
    }
}
