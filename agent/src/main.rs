//! `ntmd`, the NTMobile agent. `ntmd --help` prints the command line ([`USAGE`],
//! `ntm_cmdline`). Exit codes: 0 success, 1 the agent failed (a file it cannot read or use,
//! a port it cannot bind, no TUN device), 2 bad usage or configuration: [`Failure`] maps them.

// The command line talks to a person: printing is its job.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod agent;
mod batch;
mod config;
mod held;
mod icmp;
mod inbox;
mod lan;
mod material;
mod netlink;
mod offload;
mod pmtu;
mod privs;
mod servers;
mod tls;
mod verify;

use ntm_cmdline::{Command, Failure};
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: ntm_cmdline::Usage = ntm_cmdline::Usage::new(
    "ntmd",
    env!("CARGO_PKG_VERSION"),
    "the NTMobile agent (TUN device, tunnels, DNS hook, login to the AS)",
)
.with_run_note("needs CAP_NET_ADMIN");

fn load(path: &std::path::Path) -> Result<(config::AgentFile, material::Material), Failure> {
    let cfg = config::load(path)?;
    let material = material::Material::load(&cfg).map_err(|e| match e {
        Failure::Usage(m) | Failure::Config(m) => Failure::Config(format!("{}: {m}", path.display())),
        Failure::Runtime(m) => Failure::Runtime(format!("{}: {m}", path.display())),
    })?;
    Ok((cfg, material))
}

/// Prints a failure as one line and ends with its exit code.
fn fail(f: &Failure) -> ExitCode {
    eprintln!("ntmd: {f}");
    ExitCode::from(f.code())
}

fn status(config: Option<PathBuf>, socket: Option<PathBuf>) -> Result<String, Failure> {
    let socket = match (socket, config) {
        (Some(s), _) => s,
        (None, Some(c)) => PathBuf::from(config::load(&c)?.status_socket.as_str()),
        (None, None) => return Err(Failure::usage("status needs -s SOCKET or -c FILE")),
    };
    ntm_cmdline::read_status(&socket, std::time::Duration::from_secs(5))
        .map_err(|e| Failure::runtime(format!("{e} (is ntmd running?)")))
}

fn main() -> ExitCode {
    let cmd = match ntm_cmdline::parse(std::env::args_os().skip(1).collect()) {
        Ok(c) => c,
        Err(e) => return ExitCode::from(USAGE.usage_error(None, &e)),
    };
    match cmd {
        Command::Help(_) => ExitCode::from(USAGE.print_help(None)),
        Command::Version => ExitCode::from(USAGE.print_version()),
        // `ntmd` has no subcommands of its own.
        Command::Other(w, _) => ExitCode::from(USAGE.usage_error(None, &format!("unknown command \"{w}\""))),
        Command::Check(path) => match load(&path).and_then(|(cfg, _)| {
            // What `run` would refuse once it has become the configured user.
            privs::Plan::new(&cfg)
                .and_then(|p| p.check())
                .map_err(|e| Failure::runtime(format!("{}: {e}", path.display())))
        }) {
            Ok(()) => {
                ntm_cmdline::out(&format!("{}: ok\n", path.display()));
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        Command::Status { config, socket } => match status(config, socket) {
            Ok(text) => {
                ntm_cmdline::out(&format!("{text}\n"));
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        Command::Run(path) => {
            let (cfg, material) = match load(&path) {
                Ok(x) => x,
                Err(e) => return fail(&e),
            };
            let level = config::log_filter(&cfg.log_level).unwrap_or(log::LevelFilter::Info);
            let target = ntm_cmdline::logging::Target::from_name(&cfg.log_target)
                .unwrap_or(ntm_cmdline::logging::Target::Stderr);
            ntm_cmdline::logging::init("ntmd", level, target, std::path::Path::new(cfg.syslog_socket.as_str()));
            let plan = match privs::Plan::new(&cfg) {
                Ok(p) => p,
                Err(e) => return fail(&Failure::config(format!("{}: field \"user\": {e}", path.display()))),
            };
            let mut agent = match agent::Agent::new(cfg, material) {
                Ok(a) => a,
                Err(e) => {
                    log::error!("cannot start: {e}");
                    return ExitCode::from(1);
                }
            };
            // Everything is open: from here on, CAP_NET_ADMIN only (and the user's rights).
            if let Err(e) = plan.apply() {
                log::error!("cannot start: {e}");
                return ExitCode::from(1);
            }
            match agent.run() {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    log::error!("stopped: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
