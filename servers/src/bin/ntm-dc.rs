//! `ntm-dc`: the NTMobile Direction Coordinator (registration, virtual addresses, routes). `ntm-dc --help` prints the command line
//! (`ntm_servers::cli`).

use ntm_servers::{cli, config::DcFile, daemon::dc};

const USAGE: cli::Usage = cli::Usage {
    program: "ntm-dc",
    version: env!("CARGO_PKG_VERSION"),
    about: "the NTMobile Direction Coordinator (registration, virtual addresses, routes)",
    run_note: "",
    commands: &[],
};

fn main() {
    std::process::exit(cli::main_with(&USAGE, |c: &DcFile| &c.common, dc::build, None));
}
