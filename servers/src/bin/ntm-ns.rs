//! `ntm-ns`: the NTMobile Notification Server. See `ntm_servers::cli` for the command line.

use ntm_servers::{cli, config::NsFile, daemon::ns};

fn main() {
    std::process::exit(cli::main_with("ntm-ns", |c: &NsFile| &c.common, ns::build, None));
}
