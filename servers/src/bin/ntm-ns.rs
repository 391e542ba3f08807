//! `ntm-ns`: the NTMobile Notification Server (TCP keepalive for nodes behind NAT). `ntm-ns --help` prints the command line
//! (`ntm_servers::cli`).

use ntm_servers::{cli, config::NsFile, daemon::ns};

const USAGE: cli::Usage = cli::Usage {
    program: "ntm-ns",
    version: env!("CARGO_PKG_VERSION"),
    about: "the NTMobile Notification Server (TCP keepalive for nodes behind NAT)",
    run_note: "",
    commands: &[],
};

fn main() {
    std::process::exit(cli::main_with(&USAGE, |c: &NsFile| &c.common, ns::build, None));
}
