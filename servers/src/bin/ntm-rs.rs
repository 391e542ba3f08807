//! `ntm-rs`: the NTMobile Relay Server. `ntm-rs --help` prints the command line
//! (`ntm_servers::cli`).

use ntm_servers::{cli, config::RsFile, daemon::rs};

const USAGE: cli::Usage = cli::Usage::new("ntm-rs", env!("CARGO_PKG_VERSION"), "the NTMobile Relay Server");

fn main() {
    std::process::exit(cli::main_with(&USAGE, |c: &RsFile| &c.common, rs::build, None));
}
