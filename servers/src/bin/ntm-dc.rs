//! `ntm-dc`: the NTMobile Direction Coordinator (registration, virtual addresses, routes). `ntm-dc --help` prints the command line
//! (`ntm_servers::cli`).

use ntm_servers::{cli, config::DcFile, daemon::dc};

const USAGE: cli::Usage = cli::Usage::new(
    "ntm-dc",
    env!("CARGO_PKG_VERSION"),
    "the NTMobile Direction Coordinator (registration, virtual addresses, routes)",
);

fn main() {
    std::process::exit(cli::main_with(&USAGE, |c: &DcFile| &c.common, dc::build, None));
}
