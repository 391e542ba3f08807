//! `ntm-as`: the NTMobile Account Server and its administration commands. `ntm-as --help`
//! prints the whole command line (`ntm_servers::cli`, `ntm_servers::daemon::account`).

use ntm_servers::{cli, config::AsFile, daemon::account};

const USAGE: cli::Usage = cli::Usage {
    program: "ntm-as",
    version: env!("CARGO_PKG_VERSION"),
    about: "the NTMobile Account Server (accounts, login) and its administration commands",
    run_note: "",
    commands: account::ADMIN_USAGE,
};

fn main() {
    std::process::exit(cli::main_with(&USAGE, |c: &AsFile| &c.common, account::build, Some(account::admin)));
}
