//! What the command lines of `ntmd` and the four servers have in common:
//!
//! ```text
//! PROGRAM [run] -c FILE      run the daemon (the default command)
//! PROGRAM check -c FILE      parse and check the configuration, then exit
//! PROGRAM status -c FILE     print the running daemon's state (JSON) from its status socket
//! PROGRAM status -s SOCKET   the same, naming the socket
//! PROGRAM WORD ...           a program's own subcommand (the AS's administration)
//! ```
//!
//! the error a configuration file gets when it cannot be used, and the exit codes: every
//! binary maps its failures to a code through [`Failure`], so that the same kind of failure
//! ends every program the same way:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the program failed at its work: a file it cannot read or write (a certificate, a key, a database), a full disk, a port it cannot bind |
//! | 2 | bad usage or configuration: a command line, a configuration file or a value in it that the user must change |
//!
//! Kept apart from both the
//! agent and the servers so that neither depends on the other; it costs the agent nothing,
//! which parses its command line with `lexopt` anyway.

pub mod privs;

use std::ffi::OsString;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A parsed command line.
#[derive(Debug)]
pub enum Command {
    /// Run the daemon.
    Run(PathBuf),
    /// Check the configuration.
    Check(PathBuf),
    /// Print the running daemon's status; at least one of the two is given.
    Status { config: Option<PathBuf>, socket: Option<PathBuf> },
    /// Anything else (a program's own subcommands): the first word and the rest, unparsed.
    Other(String, Vec<OsString>),
}

/// Parses `args` (without the program name). The error is one line for the user.
pub fn parse(args: Vec<OsString>) -> Result<Command, String> {
    let mut it = args.into_iter().peekable();
    let word = it.peek().and_then(|a| a.to_str()).map(str::to_owned);
    let cmd = match word.as_deref() {
        Some("run" | "check" | "status") => {
            it.next();
            word.unwrap_or_default()
        }
        Some(w) if !w.starts_with('-') => {
            let w = w.to_owned();
            it.next();
            return Ok(Command::Other(w, it.collect()));
        }
        _ => "run".to_owned(),
    };
    let mut parser = lexopt::Parser::from_args(it);
    let (mut config, mut socket) = (None, None);
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            lexopt::Arg::Short('c') | lexopt::Arg::Long("config") => {
                config = Some(PathBuf::from(parser.value().map_err(|e| e.to_string())?))
            }
            lexopt::Arg::Short('s') | lexopt::Arg::Long("socket") => {
                socket = Some(PathBuf::from(parser.value().map_err(|e| e.to_string())?))
            }
            other => return Err(other.unexpected().to_string()),
        }
    }
    match cmd.as_str() {
        "status" if config.is_none() && socket.is_none() => Err("status needs -s SOCKET or -c FILE".into()),
        "status" => Ok(Command::Status { config, socket }),
        "check" => config.map(Command::Check).ok_or_else(|| "check needs -c FILE".into()),
        _ => config.map(Command::Run).ok_or_else(|| "run needs -c FILE".into()),
    }
}

/// Reads what a running daemon reports on its status socket. A daemon that hangs makes
/// this fail after `timeout` rather than hang with it.
pub fn read_status(socket: &Path, timeout: Duration) -> Result<String, String> {
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("cannot reach the daemon at {}: {e}", socket.display()))?;
    s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| format!("reading {}: {e}", socket.display()))?;
    Ok(text)
}

/// A configuration that could not be used.
#[derive(Debug)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// What is wrong, naming the field.
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.problem)
    }
}

impl std::error::Error for ConfigError {}

/// Why a command failed; its [`code`](Failure::code) is the process's exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The command line or the configuration is wrong: the user must change it. Exit 2.
    Usage(String),
    /// The program could not do its work (I/O, a full disk, a file it cannot use, a port
    /// in use). Exit 1.
    Runtime(String),
}

impl Failure {
    /// A usage or configuration error.
    pub fn usage(msg: impl Into<String>) -> Self {
        Self::Usage(msg.into())
    }

    /// A failure at run time.
    pub fn runtime(msg: impl Into<String>) -> Self {
        Self::Runtime(msg.into())
    }

    /// The exit code: 2 for usage and configuration, 1 for everything that failed at run time.
    pub const fn code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            Self::Runtime(_) => 1,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(m) | Self::Runtime(m) => f.write_str(m),
        }
    }
}

/// A configuration that cannot be used is the user's to fix.
impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Self::Usage(e.to_string())
    }
}

/// A bare message is a failure at run time (I/O and the like): usage errors say so
/// explicitly with [`Failure::usage`], so that no run-time failure is reported as the
/// user's mistake.
impl From<String> for Failure {
    fn from(m: String) -> Self {
        Self::Runtime(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<OsString> {
        s.split_whitespace().map(Into::into).collect()
    }

    #[test]
    fn commands_parse() {
        assert!(matches!(parse(args("-c x.json")), Ok(Command::Run(p)) if p == Path::new("x.json")));
        assert!(matches!(parse(args("run --config x.json")), Ok(Command::Run(_))));
        assert!(matches!(parse(args("check -c x.json")), Ok(Command::Check(_))));
        assert!(matches!(parse(args("status -s /run/x.sock")), Ok(Command::Status { socket: Some(_), .. })));
        assert!(matches!(parse(args("status -c x.json")), Ok(Command::Status { config: Some(_), socket: None })));
        assert!(
            matches!(parse(args("account add --email a@b")), Ok(Command::Other(w, rest)) if w == "account" && rest.len() == 3)
        );
    }

    #[test]
    fn bad_command_lines_say_what_is_missing() {
        assert_eq!(parse(args("run")).unwrap_err(), "run needs -c FILE");
        assert_eq!(parse(args("")).unwrap_err(), "run needs -c FILE");
        assert_eq!(parse(args("check")).unwrap_err(), "check needs -c FILE");
        assert_eq!(parse(args("status")).unwrap_err(), "status needs -s SOCKET or -c FILE");
        assert!(parse(args("-c x.json --bogus")).unwrap_err().contains("--bogus"));
        assert!(parse(args("-c")).is_err(), "a flag without its value");
    }

    #[test]
    fn exit_codes_say_whose_fault_it_is() {
        let config = ConfigError { file: "x.json".into(), problem: "field \"zones\": missing".into() };
        assert_eq!(Failure::from(config).code(), 2);
        assert_eq!(Failure::usage("--email is needed").code(), 2);
        assert_eq!(Failure::from("accounts.db: database or disk is full".to_string()).code(), 1);
        assert_eq!(Failure::runtime("box.key: not a key").code(), 1);
    }

    #[test]
    fn status_of_nothing_is_a_clear_error() {
        let e = read_status(Path::new("/nonexistent/ntm.sock"), Duration::from_secs(1)).unwrap_err();
        assert!(e.starts_with("cannot reach the daemon at /nonexistent/ntm.sock"), "{e}");
    }
}
