//! `ntm-as`: the NTMobile Account Server and its administration commands. See
//! `ntm_servers::daemon::account` for the command line.

use ntm_servers::{cli, config::AsFile, daemon::account};

fn main() {
    std::process::exit(cli::main_with("ntm-as", |c: &AsFile| &c.common, account::build, Some(account::admin)));
}
