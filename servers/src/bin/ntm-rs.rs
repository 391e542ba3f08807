//! `ntm-rs`: the NTMobile Relay Server. See `ntm_servers::cli` for the command line.

use ntm_servers::{cli, config::RsFile, daemon::rs};

fn main() {
    std::process::exit(cli::main_with("ntm-rs", |c: &RsFile| &c.common, rs::build, None));
}
