//! Load generators for the server-capacity and set-up parts of the benchmarks (`ntm-bench`
//! starts them inside a lab namespace; they only talk to the addresses given).
//!
//! ```text
//! ntm-bench-load dc ADDR NAME ZONE CA CERT KEY COUNT SECS DC_PID  the real ntm-dc over loopback
//! ntm-bench-load dc-engine ZONE COUNT                             the library's DC engine in-process
//! ntm-bench-load ns ADDR NODE_ADDRS NAME CA CERT KEY COUNTS       idle node connections to the real ntm-ns
//! ntm-bench-load dns ADDR NAME                                    one A query, timed to the microsecond
//! ```
//!
//! `dc` plays the AS (a TLS client with an AS certificate): it hands the DC `COUNT` node
//! keys (Key Distribution, as the AS does after a login), then registers every node over
//! UDP exactly as `ntmd` does (a Registration Request sealed with the node's K_ntmdc),
//! opens each answer with that node's key and counts it. Each phase stops after `COUNT`
//! nodes or `SECS`/2 seconds. It prints one JSON line: nodes done, wall time and the DC's
//! CPU time (read from /proc/DC_PID/stat) for each phase.
//!
//! `dc-engine` does the same against `ntm_proto::engine::dc::Dc` in this process, with no
//! sockets and no database: the protocol work alone, on one core.
//!
//! `ns` plays a DC (a TLS client with a DC certificate): it shares K_dcns with the NS, hands
//! it `COUNT` node keys over UDP (NS Key Distribution), then opens one TCP connection per
//! node to one of `NODE_ADDRS` (comma-separated), registers the node on it (a sealed
//! Notification Registration, answered by a Notification Ack that is opened and checked),
//! and keeps the connection idle. `COUNTS` is a comma-separated list of steps (e.g.
//! `10000,100000`): after each it prints `reached N` and waits for a line on its standard
//! input; at the end of input it closes everything and exits.
//!
//! `dns` sends one A query for NAME to ADDR (an agent's DNS hook) and prints how long the
//! answer took and the addresses in it, as JSON.
//!
//! Every phase has a deadline; nothing runs unbounded.

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod common;
mod dc;
mod dns;
mod ns;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        eprintln!("usage: ntm-bench-load dc|dc-engine|ns|dns ...");
        return ExitCode::from(2);
    };
    let r = match cmd.as_str() {
        "dc" => dc::dc_daemon(rest).map(|v| println!("{v}")),
        "dc-engine" => dc::dc_engine(rest).map(|v| println!("{v}")),
        "ns" => ns::ns_daemon(rest),
        "dns" => dns::dns(rest).map(|v| println!("{v}")),
        _ => Err(format!("unknown command {cmd}")),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ntm-bench-load {cmd}: {e}");
            println!("error {e}");
            ExitCode::FAILURE
        }
    }
}
