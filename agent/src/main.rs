//! `ntmd`, the NTMobile agent.
//!
//! ```text
//! ntmd [run] -c FILE       run the agent (needs CAP_NET_ADMIN for the TUN device)
//! ntmd check -c FILE       check the configuration and the files it names, then exit
//! ntmd status -s SOCKET    print the running agent's state (JSON)
//! ntmd status -c FILE      the same, taking the socket from the configuration
//! ```
//! Exit codes: 0 success, 1 the agent failed, 2 bad usage or configuration.

// The command line talks to a person: printing is its job.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod agent;
mod batch;
mod config;
mod control;
mod dnsstub;
mod held;
mod icmp;
mod netlink;
mod tls;
mod verify;

use ntm_cmdline::Command;
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: ntmd [run|check] -c FILE | ntmd status (-s SOCKET | -c FILE)";

fn load(path: &std::path::Path) -> Result<(config::AgentFile, agent::Material), String> {
    let cfg = config::load(path).map_err(|e| e.to_string())?;
    let material = agent::Material::load(&cfg).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((cfg, material))
}

fn status(config: Option<PathBuf>, socket: Option<PathBuf>) -> Result<String, String> {
    let socket = match (socket, config) {
        (Some(s), _) => s,
        (None, Some(c)) => PathBuf::from(config::load(&c).map_err(|e| e.to_string())?.status_socket.as_str()),
        (None, None) => return Err(USAGE.into()),
    };
    ntm_cmdline::read_status(&socket, std::time::Duration::from_secs(5)).map_err(|e| format!("{e} (is ntmd running?)"))
}

fn main() -> ExitCode {
    let cmd = match ntm_cmdline::parse(std::env::args_os().skip(1).collect()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ntmd: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match cmd {
        // `ntmd` has no subcommands of its own.
        Command::Other(w, _) => {
            eprintln!("ntmd: unknown command \"{w}\"\n{USAGE}");
            ExitCode::from(2)
        }
        Command::Check(path) => match load(&path) {
            Ok(_) => {
                println!("{}: ok", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ntmd: {e}");
                ExitCode::from(2)
            }
        },
        Command::Status { config, socket } => match status(config, socket) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ntmd: {e}");
                ExitCode::from(1)
            }
        },
        Command::Run(path) => {
            let (cfg, material) = match load(&path) {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("ntmd: {e}");
                    return ExitCode::from(2);
                }
            };
            let level = config::log_filter(&cfg.log_level).unwrap_or(log::LevelFilter::Info);
            let _ = simple_logger::SimpleLogger::new().with_level(level).init();
            let mut agent = match agent::Agent::new(cfg, material) {
                Ok(a) => a,
                Err(e) => {
                    log::error!("cannot start: {e}");
                    return ExitCode::from(1);
                }
            };
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
