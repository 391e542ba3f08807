//! `ntm-dc`: the NTMobile Direction Coordinator. See `ntm_servers::cli` for the command line.

use ntm_servers::{cli, config::DcFile, daemon::dc};

fn main() {
    std::process::exit(cli::main_with("ntm-dc", |c: &DcFile| &c.common, dc::build, None));
}
