//! `ntm-ns`: the NTMobile Notification Server (TCP keepalive for nodes behind NAT). `ntm-ns --help` prints the command line
//! (`ntm_servers::cli`).

use ntm_servers::{cli, config::NsFile, daemon::ns};

const USAGE: cli::Usage = cli::Usage::new(
    "ntm-ns",
    env!("CARGO_PKG_VERSION"),
    "the NTMobile Notification Server (TCP keepalive for nodes behind NAT)",
);

fn main() {
    std::process::exit(cli::main_with(&USAGE, |c: &NsFile| &c.common, ns::build, None));
}
