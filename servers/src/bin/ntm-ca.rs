//! `ntm-ca`: the NTMobile deployment CA: a new CA, certificates with roles, signed
//! requests. `ntm-ca --help` prints the command line (`ntm_servers::ca`).

fn main() {
    std::process::exit(ntm_servers::ca::main(std::env::args_os().skip(1).collect()));
}
