//! What every daemon's command line has in common:
//!
//! ```text
//! ntm-xx [run] -c FILE      run the daemon (the default command)
//! ntm-xx check -c FILE      parse and check the configuration, then exit
//! ntm-xx status -c FILE     print the running daemon's state (JSON) from its status socket
//! ntm-xx status -s SOCKET   the same, naming the socket
//! ```
//! Exit codes: 0 success, 1 the daemon failed, 2 bad usage or configuration (the table and
//! the mapping are [`ntm_cmdline::Failure`]'s).

// The command line talks to a person: printing is its job.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use crate::config::{self, Common, LogLevel, Validate};
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

pub use ntm_cmdline::{parse, Command, Failure};

/// Starts logging to stderr at `level`.
pub fn init_logging(level: LogLevel) {
    // A second call (tests running several daemons in one process) keeps the first logger.
    let _ = simple_logger::SimpleLogger::new().with_level(level.filter()).init();
    log::set_max_level(level.filter());
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
            print!("{text}");
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
    program: &str,
    config: Option<PathBuf>,
    socket: Option<PathBuf>,
    common: impl Fn(&T) -> &Common,
) -> Result<PathBuf, String> {
    if let Some(s) = socket {
        return Ok(s);
    }
    let path = config.ok_or("status needs -s SOCKET or -c FILE")?;
    let cfg: T = config::load(&path).map_err(|e| e.to_string())?;
    common(&cfg).status_socket.clone().ok_or_else(|| format!("{program}: {} sets no status_socket", path.display()))
}

/// A daemon's own subcommands (the AS's administration).
pub type Admin = fn(&str, Vec<std::ffi::OsString>) -> Result<(), Failure>;

/// The whole `main` of a daemon: run, check, status, and its own subcommands if any.
pub fn main_with<T, D, B>(program: &str, common: fn(&T) -> &Common, build: B, admin: Option<Admin>) -> i32
where
    T: DeserializeOwned + Validate + crate::privs::KeptFiles,
    D: crate::driver::Daemon,
    B: FnOnce(T) -> Result<crate::driver::Driver<D>, crate::daemon::StartError>,
{
    match parse(std::env::args_os().skip(1).collect()) {
        Ok(Command::Run(path)) => {
            let cfg: T = load_or_exit(program, &path);
            init_logging(common(&cfg).log_level);
            let (account, kept) = match crate::privs::account(common(&cfg)) {
                Ok(a) => (a, cfg.kept_files()),
                Err(e) => return fail(program, &Failure::usage(format!("{}: field \"user\": {e}", path.display()))),
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
            let _: T = load_or_exit(program, &path);
            println!("{program}: {} is valid", path.display());
            0
        }
        Ok(Command::Status { config, socket }) => match status_socket::<T>(program, config, socket, common) {
            Ok(s) => print_status(program, &s),
            Err(e) => fail(program, &Failure::usage(e)),
        },
        Ok(Command::Other(w, rest)) => match admin {
            Some(f) => match f(&w, rest) {
                Ok(()) => 0,
                Err(e) => fail(program, &e),
            },
            None => fail(program, &Failure::usage(format!("unknown command \"{w}\" (run, check, status)"))),
        },
        Err(e) => fail(
            program,
            &Failure::usage(format!(
                "{e}\nusage: {program} [run|check] -c FILE | {program} status (-c FILE | -s SOCKET)"
            )),
        ),
    }
}
