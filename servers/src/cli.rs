//! What every daemon's command line has in common: the commands `run`, `check` and
//! `status`, `--help` and `--version` ([`ntm_cmdline::parse`], [`Usage`]), logging, and the
//! files `check` opens.
//!
//! `check` opens every file the configuration names that the daemon reads when it starts
//! (the TLS certificate, key and CA; the AS's attestation key, OIDC keys and database; the
//! DC's database; the status socket's directory), with the same functions as `run`, so
//! that whatever would make `run` stop at start because of a file, `check` reports first.
//! Exit codes: 0 success, 1 the daemon failed (a file it cannot read or use), 2 bad usage or
//! configuration (the table and the mapping are [`ntm_cmdline::Failure`]'s).

// The command line talks to a person: printing is its job.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use crate::config::{self, Common, DcFile, NsFile, RsFile, Validate};
use crate::daemon::{tls_configs, StartError};
use crate::pki::ClientAuth;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

pub use ntm_cmdline::{parse, Command, Failure, Usage};

/// Starts logging as the configuration says (level, stderr or syslog).
pub fn init_logging(program: &'static str, common: &Common) {
    ntm_cmdline::logging::init(program, common.log_level.filter(), common.log_target.target(), &common.syslog_socket);
}

/// Loads a configuration, printing the one-line error and exiting with its code (2) if
/// it is bad.
pub fn load_or_exit<T: DeserializeOwned + Validate>(program: &str, path: &Path) -> T {
    match config::load::<T>(path) {
        Ok(c) => c,
        Err(e) => std::process::exit(fail(program, &Failure::from(e))),
    }
}

/// Prints a failure as one line and returns its exit code.
pub fn fail(program: &str, f: &Failure) -> i32 {
    eprintln!("{program}: {f}");
    i32::from(f.code())
}

/// Prints the status a running daemon reports on its socket.
pub fn print_status(program: &str, socket: &Path) -> i32 {
    match ntm_cmdline::read_status(socket, std::time::Duration::from_secs(30)) {
        Ok(text) => {
            ntm_cmdline::out(&text);
            0
        }
        Err(e) => {
            eprintln!("{program}: {e}");
            1
        }
    }
}

/// The status socket named by `-s`, or by the configuration file's `status_socket`.
pub fn status_socket<T: DeserializeOwned + Validate>(
    config: Option<PathBuf>,
    socket: Option<PathBuf>,
    common: impl Fn(&T) -> &Common,
) -> Result<PathBuf, Failure> {
    if let Some(s) = socket {
        return Ok(s);
    }
    let path = config.ok_or_else(|| Failure::usage("status needs -s SOCKET or -c FILE"))?;
    let cfg: T = config::load(&path)?;
    common(&cfg)
        .status_socket
        .clone()
        .ok_or_else(|| Failure::config(format!("{}: sets no status_socket", path.display())))
}

/// The files a daemon reads when it starts, opened as `run` opens them.
pub trait Files {
    /// The first file that cannot be read or used.
    fn check_files(&self) -> Result<(), StartError>;
}

fn check_common(c: &Common) -> Result<(), StartError> {
    tls_configs(&c.tls, ClientAuth::Required)?;
    if let Some(sock) = &c.status_socket {
        check_status_socket(sock)?;
    }
    Ok(())
}

/// The status socket's directory must exist; a file at the path must be a socket (a
/// running daemon's or a stale one), as the driver requires when it binds.
fn check_status_socket(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let err = |what: &str| format!("status socket {}: {what}", path.display());
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => Err(err("exists and is not a socket")),
        Ok(_) => Ok(()),
        Err(_) => check_directory(path).map_err(|e| err(&e)),
    }
}

fn check_directory(path: &Path) -> Result<(), String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!("{} is not a directory", dir.display())),
        Err(e) => Err(format!("directory {}: {e}", dir.display())),
    }
}

/// A database the daemon opens (creating it if absent) for reading and writing: an
/// existing file must be one it can write and an SQLite database (or empty); an absent
/// one must be creatable, which is tried and undone.
pub fn check_database(path: &Path) -> Result<(), String> {
    use std::io::Read;
    let err = |what: String| format!("database {}: {what}", path.display());
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Err(err("is a directory".into())),
        Ok(_) => {
            let mut f =
                std::fs::OpenOptions::new().read(true).write(true).open(path).map_err(|e| err(e.to_string()))?;
            let mut head = [0u8; 16];
            let mut n = 0;
            while n < head.len() {
                match f.read(&mut head[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) => return Err(err(e.to_string())),
                }
            }
            if n == 0 || head == *b"SQLite format 3\0" {
                Ok(())
            } else {
                Err(err("not an SQLite database".into()))
            }
        }
        Err(_) => {
            check_directory(path).map_err(err)?;
            std::fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(|e| err(e.to_string()))?;
            std::fs::remove_file(path).map_err(|e| err(e.to_string()))
        }
    }
}

impl Files for DcFile {
    fn check_files(&self) -> Result<(), StartError> {
        check_common(&self.common)?;
        Ok(check_database(&self.state)?)
    }
}

#[cfg(feature = "as")]
impl Files for config::AsFile {
    fn check_files(&self) -> Result<(), StartError> {
        check_common(&self.common)?;
        crate::daemon::account::read_key_files(self)?;
        Ok(check_database(&self.accounts)?)
    }
}

impl Files for RsFile {
    fn check_files(&self) -> Result<(), StartError> {
        check_common(&self.common)
    }
}

impl Files for NsFile {
    fn check_files(&self) -> Result<(), StartError> {
        check_common(&self.common)
    }
}

/// A daemon's own subcommands (the AS's administration).
pub type Admin = fn(&str, Vec<std::ffi::OsString>) -> Result<(), Failure>;

/// The whole `main` of a daemon: run, check, status, help, version, and its own subcommands
/// if any.
pub fn main_with<T, D, B>(usage: &Usage, common: fn(&T) -> &Common, build: B, admin: Option<Admin>) -> i32
where
    T: DeserializeOwned + Validate + Files + crate::privs::KeptFiles,
    D: crate::driver::Daemon,
    B: FnOnce(T) -> Result<crate::driver::Driver<D>, crate::daemon::StartError>,
{
    let program = usage.program;
    match parse(std::env::args_os().skip(1).collect()) {
        Ok(Command::Run(path)) => {
            let cfg: T = load_or_exit(program, &path);
            init_logging(program, common(&cfg));
            let (account, kept) = match crate::privs::account(common(&cfg)) {
                Ok(a) => (a, cfg.kept_files()),
                Err(e) => return fail(program, &Failure::config(format!("{}: field \"user\": {e}", path.display()))),
            };
            let started = crate::privs::before_start(account.as_ref()).map_err(Into::into).and_then(|()| build(cfg));
            match started {
                Ok(driver) => match crate::privs::after_start(program, account.as_ref(), &kept) {
                    Ok(()) => crate::daemon::run(program, driver),
                    Err(e) => fail(program, &Failure::runtime(e)),
                },
                Err(e) => fail(program, &Failure::runtime(e.to_string())),
            }
        }
        Ok(Command::Check(path)) => {
            let cfg: T = load_or_exit(program, &path);
            let as_user = || match crate::privs::account(common(&cfg)) {
                Ok(Some(a)) => crate::privs::check_readable_by(&a, &cfg.kept_files()).map_err(StartError::from),
                _ => Ok(()),
            };
            match cfg.check_files().and_then(|()| as_user()) {
                Ok(()) => {
                    ntm_cmdline::out(&format!("{program}: {} and the files it names are valid\n", path.display()));
                    0
                }
                Err(e) => fail(program, &Failure::runtime(format!("{}: {e}", path.display()))),
            }
        }
        Ok(Command::Status { config, socket }) => match status_socket::<T>(config, socket, common) {
            Ok(s) => print_status(program, &s),
            Err(e) => fail(program, &e),
        },
        Ok(Command::Help(word)) => i32::from(usage.print_help(word.as_deref())),
        Ok(Command::Version) => i32::from(usage.print_version()),
        Ok(Command::Other(w, rest)) => match admin {
            Some(f) => match f(&w, rest) {
                Ok(()) => 0,
                Err(Failure::Usage(e)) => i32::from(usage.usage_error(Some(&w), &e)),
                Err(e) => fail(program, &e),
            },
            None => i32::from(usage.usage_error(None, &format!("unknown command \"{w}\""))),
        },
        Err(e) => i32::from(usage.usage_error(None, &e)),
    }
}
