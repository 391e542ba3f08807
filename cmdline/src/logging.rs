//! The one logger of every program: lines on stderr with a UTC timestamp, or datagrams to
//! the local syslog daemon.
//!
//! stderr: `2026-12-06T04:55:08.123Z INFO  [ntm_servers::daemon::dc] message`.
//!
//! syslog: one RFC 3164-style datagram per line to a Unix datagram socket (`/dev/log`,
//! where BusyBox syslogd, OpenWrt's logd, rsyslog and journald listen):
//! `<30>ntm-dc[1234]: [ntm_servers::daemon::dc] message`, facility `daemon`, the level as
//! the severity. The line carries no timestamp and no host name: the syslog daemon stamps
//! both, in its own time zone (a UTC stamp from us would read as local time there).
//!
//! The socket is non-blocking: a syslog daemon that stops reading must not stop the
//! program's event loop, so a line that finds its queue full is dropped and counted, and
//! the next line that gets through says how many were lost. A syslog daemon that was
//! restarted is reached again (one reconnection per line); while there is none, lines go to
//! stderr.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::io::{ErrorKind, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Where log lines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Standard error, with timestamps (the default).
    Stderr,
    /// The local syslog daemon.
    Syslog,
}

impl Target {
    /// The configuration's name of a target: `"stderr"` or `"syslog"`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "stderr" => Some(Self::Stderr),
            "syslog" => Some(Self::Syslog),
            _ => None,
        }
    }
}

/// Where the local syslog daemon listens.
pub const SYSLOG_SOCKET: &str = "/dev/log";

/// Longest syslog message sent, in bytes (RFC 3164's limit); longer ones are cut.
const SYSLOG_MAX: usize = 1024;

/// Starts logging at `level` to `target`; `syslog_socket` is where syslog listens
/// ([`SYSLOG_SOCKET`] but in tests). If syslog cannot be reached, says so on stderr and
/// logs to stderr. A second call (tests running several daemons in one process) keeps the
/// first logger and only sets the level.
pub fn init(program: &'static str, level: LevelFilter, target: Target, syslog_socket: &Path) {
    let sink = match target {
        Target::Stderr => Sink::Stderr,
        Target::Syslog => match Syslog::connect(syslog_socket) {
            Ok(s) => Sink::Syslog(s),
            Err(e) => {
                stderr_line(&format!(
                    "{program}: syslog: cannot reach {}: {e}; logging to stderr\n",
                    syslog_socket.display()
                ));
                Sink::Stderr
            }
        },
    };
    let logger: &'static Logger = Box::leak(Box::new(Logger { program, pid: std::process::id(), sink }));
    let _ = log::set_logger(logger);
    log::set_max_level(level);
}

struct Logger {
    program: &'static str,
    pid: u32,
    sink: Sink,
}

enum Sink {
    Stderr,
    Syslog(Syslog),
}

struct Syslog {
    path: PathBuf,
    socket: Mutex<UnixDatagram>,
    /// Lines lost while the socket was full. `usize`: 32-bit MIPS has no 64-bit atomics.
    dropped: AtomicUsize,
}

impl Syslog {
    fn connect(path: &Path) -> std::io::Result<Self> {
        Ok(Syslog { path: path.to_path_buf(), socket: Mutex::new(open(path)?), dropped: AtomicUsize::new(0) })
    }

    /// Sends one message; on a socket the daemon no longer holds, connects again once.
    fn send(&self, msg: &[u8]) -> std::io::Result<()> {
        let mut socket = self.socket.lock().unwrap_or_else(|p| p.into_inner());
        match socket.send(msg) {
            Err(e) if e.kind() != ErrorKind::WouldBlock => {
                *socket = open(&self.path)?;
                socket.send(msg).map(drop)
            }
            r => r.map(drop),
        }
    }
}

fn open(path: &Path) -> std::io::Result<UnixDatagram> {
    let s = UnixDatagram::unbound()?;
    s.connect(path)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let target =
            if record.target().is_empty() { record.module_path().unwrap_or_default() } else { record.target() };
        match &self.sink {
            Sink::Stderr => stderr_line(&format!(
                "{} {:<5} [{target}] {}\n",
                utc_timestamp(SystemTime::now()),
                record.level(),
                record.args()
            )),
            Sink::Syslog(s) => {
                let line = syslog_line(self.program, self.pid, record.level(), target, &record.args().to_string());
                match s.send(line.as_bytes()) {
                    Ok(()) => {
                        let lost = s.dropped.swap(0, Ordering::Relaxed);
                        if lost > 0 {
                            let note = format!("{lost} log lines dropped: syslog was not reading");
                            let _ = s.send(syslog_line(self.program, self.pid, Level::Warn, "log", &note).as_bytes());
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        s.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => stderr_line(&format!(
                        "{} {:<5} [{target}] {}\n",
                        utc_timestamp(SystemTime::now()),
                        record.level(),
                        record.args()
                    )),
                }
            }
        }
    }

    fn flush(&self) {}
}

/// Writes a whole line to stderr at once; an error (stderr closed) is ignored rather than
/// ending the program, as `eprintln!` would.
fn stderr_line(line: &str) {
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// `<PRI>PROGRAM[PID]: [TARGET] MESSAGE`, facility daemon (3), at most [`SYSLOG_MAX`]
/// bytes (cut at a character boundary).
fn syslog_line(program: &str, pid: u32, level: Level, target: &str, msg: &str) -> String {
    let severity = match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    };
    let mut line = format!("<{}>{program}[{pid}]: [{target}] {msg}", 3 * 8 + severity);
    if line.len() > SYSLOG_MAX {
        let mut end = SYSLOG_MAX;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
    }
    line
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn utc_timestamp(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// The date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`, for days >= 0).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        let at = |s: u64, ms: u64| utc_timestamp(UNIX_EPOCH + Duration::from_millis(s * 1000 + ms));
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_798_517_708, 123), "2026-12-29T04:15:08.123Z");
        assert_eq!(at(4_107_542_399, 999), "2100-02-28T23:59:59.999Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000Z");
    }

    #[test]
    fn syslog_lines_carry_facility_daemon_program_and_pid() {
        assert_eq!(syslog_line("ntmd", 42, Level::Error, "t", "boom"), "<27>ntmd[42]: [t] boom");
        assert_eq!(syslog_line("ntmd", 42, Level::Warn, "t", "w"), "<28>ntmd[42]: [t] w");
        assert_eq!(syslog_line("ntmd", 42, Level::Info, "t", "i"), "<30>ntmd[42]: [t] i");
        assert_eq!(syslog_line("ntmd", 42, Level::Trace, "t", "x"), "<31>ntmd[42]: [t] x");
        let long = syslog_line("ntmd", 1, Level::Info, "t", &"é".repeat(2000));
        assert!(long.len() <= SYSLOG_MAX && long.len() > SYSLOG_MAX - 2, "{}", long.len());
    }

    #[test]
    fn target_names() {
        assert_eq!(Target::from_name("syslog"), Some(Target::Syslog));
        assert_eq!(Target::from_name("stderr"), Some(Target::Stderr));
        assert_eq!(Target::from_name("file"), None);
    }
}
