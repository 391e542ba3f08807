//! `ntm-as`: the NTMobile Account Server and its administration commands. `ntm-as --help`
//! prints the whole command line (`ntm_servers::cli`, `ntm_servers::daemon::account`).

use ntm_servers::{cli, config::AsFile, daemon::account};

const USAGE: cli::Usage = cli::Usage::new(
    "ntm-as",
    env!("CARGO_PKG_VERSION"),
    "the NTMobile Account Server (accounts, login) and its administration commands",
)
.with_commands(account::ADMIN_USAGE);

fn main() {
    std::process::exit(cli::main_with(&USAGE, |c: &AsFile| &c.common, account::build, Some(account::admin)));
}
