//! How `ntmd` ends when it cannot work, run as on a box in a network namespace: one clear
//! line and exit code 1 for a failure at run time (a port it cannot bind, a key file it
//! cannot read or use), 2 for bad usage or configuration (docs/agent.md). Needs root and
//! socat; the binaries come from `cargo build --release --workspace --bins`.

#![allow(clippy::print_stderr)]

use ntm_lab::deploy::{or_skip, Deployment};
use ntm_lab::tools_or_skip;

fn socat(what: &str) -> bool {
    tools_or_skip(what, &["socat"])
}

/// An IPv4-only box whose tunnel port another program holds: the agent must stop at once
/// with exit 1 and say which port, rather than run on without ever registering.
#[test]
fn a_taken_ipv4_tunnel_port_stops_the_agent_with_one_clear_line() {
    let label = "exit-port";
    if !socat(label) {
        return;
    }
    let Some(mut d) = or_skip(Deployment::start(label), label) else { return };
    let port = "4599";
    let ns = d.boxes[0].ns.clone();
    let holder = d.lab.spawn(&ns, "holder", &["socat", "-u", &format!("UDP4-RECV:{port}"), "/dev/null"], &[]).unwrap();
    let bound = d.lab.wait_for(10, || {
        d.lab.try_exec(&ns, &["ss", "-Hnul", &format!("sport = :{port}")]).is_ok_and(|o| !o.stdout.is_empty())
    });
    assert!(bound, "socat holds UDP {port}");
    let mut cfg = d.agent_config(0);
    cfg["udp_port"] = port.parse::<u16>().unwrap().into();
    let p = d.start_agent(0, &cfg).unwrap();
    let code = d.lab.proc(p).wait(10);
    let log = d.lab.proc(p).log_text();
    assert_eq!(code, Some(1), "ntmd exits 1 when its IPv4 tunnel port is taken; log:\n{log}");
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "one line says why: {log}");
    assert!(errors[0].contains(&format!("cannot bind the IPv4 tunnel port UDP {port}")), "{log}");
    assert!(d.lab.proc(holder).alive(), "the holder was not disturbed");
}

/// `ntmd check` and `ntmd run` with a key file that is missing or not a key: 1 (a file
/// it cannot use); with a bad value in the configuration: 2.
#[test]
fn a_missing_or_garbage_key_file_exits_1_and_a_bad_field_exits_2() {
    let label = "exit-key";
    let Some(mut d) = or_skip(Deployment::start(label), label) else { return };
    let dir = d.lab.dir().to_path_buf();
    let garbage = dir.join("garbage.key");
    std::fs::write(&garbage, "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n").unwrap();
    let cases = [
        ("missing key", serde_json::json!(dir.join("nonexistent.key")), None, 1),
        ("garbage key", serde_json::json!(garbage), None, 1),
        ("bad field", serde_json::json!(d.boxes[0].key), Some(("udp_port", serde_json::json!("many"))), 2),
    ];
    let ns = d.boxes[0].ns.clone();
    for (what, key, field, want) in cases {
        let mut cfg = d.agent_config(0);
        cfg["credential"]["device"]["key"] = key;
        if let Some((f, v)) = field {
            cfg[f] = v;
        }
        let path = dir.join(format!("{}.json", what.replace(' ', "-")));
        std::fs::write(&path, serde_json::to_vec(&cfg).unwrap()).unwrap();
        let bin = d.bins.join("ntmd");
        for cmd in ["check", "run"] {
            let out = d.lab.try_exec(&ns, &[bin.to_str().unwrap(), cmd, "-c", path.to_str().unwrap()]).unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(want), "ntmd {cmd} with a {what}: {err}");
            assert_eq!(err.lines().count(), 1, "one line: {err}");
        }
    }
    let p = d.start_agent(0, &d.agent_config(0)).unwrap();
    assert!(d.wait_registered(0, 30).is_some(), "the unchanged configuration works: {}", d.lab.proc(p).log_text());
}

/// A `lan` section on a box without the `nft` command: the agent stops at start with exit
/// 1 and one line naming what is missing, instead of serving a LAN without its rules.
#[test]
fn a_lan_section_without_nft_stops_the_agent_with_one_clear_line() {
    let label = "exit-nft";
    let Some(d) = or_skip(Deployment::start(label), label) else { return };
    let dir = d.lab.dir().to_path_buf();
    let ns = d.boxes[0].ns.clone();
    d.lab.exec(&ns, &["ip", "link", "add", "lan0", "type", "veth", "peer", "name", "lan0p"]).unwrap();
    d.lab.exec(&ns, &["ip", "addr", "add", "198.19.31.1/24", "dev", "lan0"]).unwrap();
    d.lab.exec(&ns, &["ip", "link", "set", "lan0", "up"]).unwrap();
    let mut cfg = d.agent_config(0);
    cfg["lan"] = serde_json::json!({"interfaces": ["lan0"]});
    let path = dir.join("lan-no-nft.json");
    std::fs::write(&path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let bin = d.bins.join("ntmd");
    // A PATH without nft (ntmd is named by its full path).
    let empty = dir.join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let path_var = format!("PATH={}", empty.display());
    let out =
        d.lab.try_exec(&ns, &["env", &path_var, bin.to_str().unwrap(), "run", "-c", path.to_str().unwrap()]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "ntmd run with lan and no nft: {err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.contains("ERROR") || l.contains("ntmd:")).collect();
    assert!(errors.iter().any(|l| l.contains("nft not found")), "one line says nft is missing: {err}");
}
