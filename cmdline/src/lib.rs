//! What the command lines of `ntmd` and the four servers have in common:
//!
//! ```text
//! PROGRAM [run] -c FILE      run the daemon (the default command)
//! PROGRAM check -c FILE      parse and check the configuration and the files it names, then exit
//! PROGRAM status -c FILE     print the running daemon's state (JSON) from its status socket
//! PROGRAM status -s SOCKET   the same, naming the socket
//! PROGRAM WORD ...           a program's own subcommand (the AS's administration)
//! PROGRAM -h | --help        the whole usage, on stdout (PROGRAM WORD --help: that command's)
//! PROGRAM -V | --version     the name, the version and the git commit if known
//! ```
//!
//! the usage text every program prints ([`Usage`]), its logging ([`logging`]: stderr with
//! timestamps, or syslog), the error a configuration file gets when it cannot be used, and
//! the exit codes: every binary maps its failures to a code through [`Failure`], so that
//! the same kind of failure ends every program the same way:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success (also `--help` and `--version`) |
//! | 1 | the program failed at its work: a file it cannot read or write (a certificate, a key, a database), a full disk, a port it cannot bind |
//! | 2 | bad usage or configuration: a command line, a configuration file or a value in it that the user must change |
//!
//! Kept apart from both the
//! agent and the servers so that neither depends on the other; it costs the agent little,
//! which parses its command line with `lexopt` anyway.

// `--help` and `--version` talk to a person: printing is their job.
#![allow(clippy::print_stdout, clippy::print_stderr)]

pub mod logging;
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
    /// `-h`, `--help` or `help [WORD]`: the usage, of one of the program's own commands if
    /// a word names it.
    Help(Option<String>),
    /// `-V` or `--version`.
    Version,
}

fn is_help(a: &OsString) -> bool {
    a == "-h" || a == "--help"
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
        Some("help") => {
            it.next();
            return Ok(Command::Help(it.next().and_then(|w| w.into_string().ok())));
        }
        Some(w) if !w.starts_with('-') => {
            let w = w.to_owned();
            it.next();
            let rest: Vec<OsString> = it.collect();
            // The program's own parser sees no help flag: `ntm-as account add --help`
            // asks for the account commands' usage.
            if rest.iter().any(is_help) {
                return Ok(Command::Help(Some(w)));
            }
            return Ok(Command::Other(w, rest));
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
            lexopt::Arg::Short('h') | lexopt::Arg::Long("help") => return Ok(Command::Help(None)),
            lexopt::Arg::Short('V') | lexopt::Arg::Long("version") => return Ok(Command::Version),
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

/// The git commit the program was built from, if the build knew it (see `build.rs`).
pub const GIT_COMMIT: Option<&str> = option_env!("NTM_GIT_COMMIT");

/// What a program's `--help` and `--version` print, and what a usage error shows.
#[derive(Debug)]
pub struct Usage {
    /// The program's name.
    pub program: &'static str,
    /// Its crate's version (`env!("CARGO_PKG_VERSION")`).
    pub version: &'static str,
    /// One line: what it is.
    pub about: &'static str,
    /// Notes on `run` (what it needs), one line or none.
    pub run_note: &'static str,
    /// The program's own commands, by first word, each with its whole usage text.
    pub commands: &'static [(&'static str, &'static str)],
}

impl Usage {
    /// A program with only the common commands and nothing to note on `run`; `version` is
    /// its crate's `env!("CARGO_PKG_VERSION")`.
    pub const fn new(program: &'static str, version: &'static str, about: &'static str) -> Usage {
        Usage { program, version, about, run_note: "", commands: &[] }
    }

    /// The same usage with a note on what `run` needs.
    pub const fn with_run_note(self, run_note: &'static str) -> Usage {
        Usage { run_note, ..self }
    }

    /// The same usage with the program's own commands (first word, whole usage text).
    pub const fn with_commands(self, commands: &'static [(&'static str, &'static str)]) -> Usage {
        Usage { commands, ..self }
    }

    /// `PROGRAM VERSION (commit C)`.
    pub fn version_line(&self) -> String {
        match GIT_COMMIT {
            Some(c) => format!("{} {} (commit {c})", self.program, self.version),
            None => format!("{} {}", self.program, self.version),
        }
    }

    /// The whole usage: the shared commands, the program's own, the options, the exit codes.
    pub fn text(&self) -> String {
        let p = self.program;
        let run = if self.run_note.is_empty() {
            "run the daemon (the default command)".to_owned()
        } else {
            format!("run the daemon (the default command); {}", self.run_note)
        };
        let mut t = format!("{p}: {}\n\nusage:\n", self.about);
        let mut line = |cmd: String, what: &str| {
            // The explanations start in column 33, as in the programs' own command texts.
            t.push_str(&format!("  {cmd:<29} {what}\n"));
        };
        line(format!("{p} [run] -c FILE"), &run);
        line(format!("{p} check -c FILE"), "check the configuration and every file it names, then exit");
        line(format!("{p} status -c FILE"), "print the running daemon's state (JSON) from its status socket");
        line(format!("{p} status -s SOCKET"), "the same, naming the socket");
        for (_, text) in self.commands {
            t.push_str(text);
        }
        let mut line = |cmd: String, what: &str| t.push_str(&format!("  {cmd:<29} {what}\n"));
        if self.commands.is_empty() {
            line(format!("{p} -h | --help"), "this text");
        } else {
            line(format!("{p} -h | --help"), &format!("this text ({p} WORD --help: the commands of WORD)"));
        }
        line(format!("{p} -V | --version"), "the version");
        t.push_str(
            "\noptions:\n\
             \x20 -c, --config FILE             the configuration file (JSON)\n\
             \x20 -s, --socket PATH             the daemon's status socket\n\n\
             exit codes: 0 success, 1 the program failed at its work (a file, a port, a full disk),\n\
             2 bad usage or configuration\n",
        );
        t
    }

    /// The usage of one of the program's own commands, or the whole usage if `word` names
    /// none of them.
    pub fn topic(&self, word: Option<&str>) -> String {
        match self.commands.iter().find(|(w, _)| Some(*w) == word) {
            Some((_, text)) => format!("usage:\n{text}"),
            None => self.text(),
        }
    }

    /// Answers `--help` (on stdout); exit code 0.
    pub fn print_help(&self, word: Option<&str>) -> u8 {
        out(&self.topic(word));
        0
    }

    /// Answers `--version` (on stdout); exit code 0.
    pub fn print_version(&self) -> u8 {
        out(&format!("{}\n", self.version_line()));
        0
    }

    /// Reports a command line that cannot be used: the error, then the usage (of `word`'s
    /// commands if it names one), on stderr; exit code 2.
    pub fn usage_error(&self, word: Option<&str>, error: &str) -> u8 {
        eprint!("{}: {error}\n\n{}", self.program, self.topic(word));
        2
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
    /// The command line is wrong: the user must change it. Exit 2, and the usage is shown.
    Usage(String),
    /// The configuration file (or a value in it) is wrong: the user must change it. Exit 2.
    Config(String),
    /// The program could not do its work (I/O, a full disk, a file it cannot use, a port
    /// in use). Exit 1.
    Runtime(String),
}

impl Failure {
    /// A usage or configuration error.
    pub fn usage(msg: impl Into<String>) -> Self {
        Self::Usage(msg.into())
    }

    /// A configuration that cannot be used.
    pub fn config(msg: impl Into<String>) -> Self {
        Self::Config(msg.into())
    }

    /// A failure at run time.
    pub fn runtime(msg: impl Into<String>) -> Self {
        Self::Runtime(msg.into())
    }

    /// The exit code: 2 for usage and configuration, 1 for everything that failed at run time.
    pub const fn code(&self) -> u8 {
        match self {
            Self::Usage(_) | Self::Config(_) => 2,
            Self::Runtime(_) => 1,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(m) | Self::Config(m) | Self::Runtime(m) => f.write_str(m),
        }
    }
}

/// A configuration that cannot be used is the user's to fix.
impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Self::Config(e.to_string())
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

/// Writes `text` to stdout as it is. A reader that went away (`ntmd status | head -c 100`)
/// is not an error worth a word: `print!` would panic on it, this stops writing quietly.
pub fn out(text: &str) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_all(text.as_bytes()).and_then(|()| o.flush()) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("cannot write to stdout: {e}");
        }
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
    fn help_and_version_are_commands_anywhere() {
        for line in ["-h", "--help", "run --help", "check -c x.json -h", "status --help", "help", "-c x.json --help"] {
            assert!(matches!(parse(args(line)), Ok(Command::Help(None))), "{line}");
        }
        for line in ["-V", "--version", "run -V", "check -c x.json --version"] {
            assert!(matches!(parse(args(line)), Ok(Command::Version)), "{line}");
        }
        for line in ["account --help", "account add -c as.json --help", "help account", "account -h"] {
            assert!(matches!(parse(args(line)), Ok(Command::Help(Some(w))) if w == "account"), "{line}");
        }
    }

    const AS: Usage = Usage {
        program: "ntm-x",
        version: "9.8.7",
        about: "a test program",
        run_note: "needs nothing",
        commands: &[("ca", "  ntm-x ca init --out DIR\n"), ("account", "  ntm-x account list -c FILE\n")],
    };

    #[test]
    fn the_usage_is_whole_and_a_topic_is_its_part() {
        let t = AS.text();
        for part in [
            "ntm-x [run] -c FILE",
            "needs nothing",
            "ntm-x check -c FILE",
            "ntm-x status -c FILE",
            "ntm-x status -s SOCKET",
            "ntm-x ca init --out DIR",
            "ntm-x account list -c FILE",
            "--help",
            "--version",
            "exit codes",
        ] {
            assert!(t.contains(part), "{part} in:\n{t}");
        }
        let ca = AS.topic(Some("ca"));
        assert!(ca.contains("ntm-x ca init") && !ca.contains("account"), "{ca}");
        assert_eq!(AS.topic(Some("nothing")), t);
        assert!(AS.version_line().starts_with("ntm-x 9.8.7"), "{}", AS.version_line());
    }

    #[test]
    fn exit_codes_say_whose_fault_it_is() {
        let config = ConfigError { file: "x.json".into(), problem: "field \"zones\": missing".into() };
        assert_eq!(Failure::from(config).code(), 2);
        assert!(matches!(Failure::from(ConfigError { file: "x".into(), problem: "y".into() }), Failure::Config(_)));
        assert_eq!(Failure::usage("--email is needed").code(), 2);
        assert_eq!(Failure::config("x.json: field \"a\": missing").code(), 2);
        assert_eq!(Failure::from("accounts.db: database or disk is full".to_string()).code(), 1);
        assert_eq!(Failure::runtime("box.key: not a key").code(), 1);
    }

    #[test]
    fn status_of_nothing_is_a_clear_error() {
        let e = read_status(Path::new("/nonexistent/ntm.sock"), Duration::from_secs(1)).unwrap_err();
        assert!(e.starts_with("cannot reach the daemon at /nonexistent/ntm.sock"), "{e}");
    }
}
