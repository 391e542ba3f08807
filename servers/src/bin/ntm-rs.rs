//! `ntm-rs`: the NTMobile Relay Server. `ntm-rs --help` prints the command line
//! (`ntm_servers::cli`).

use ntm_servers::{cli, config::RsFile, daemon::rs};

const USAGE: cli::Usage = cli::Usage {
    program: "ntm-rs",
    version: env!("CARGO_PKG_VERSION"),
    about: "the NTMobile Relay Server",
    run_note: "",
    commands: &[],
};

fn main() {
    std::process::exit(cli::main_with(&USAGE, |c: &RsFile| &c.common, rs::build, None));
}
