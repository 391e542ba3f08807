//! Bad input and bad configuration: the daemons keep serving and say why.

#![allow(clippy::print_stderr)]

mod common;

use common::site::{Site, SiteOptions};
use common::*;
use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::Command;

/// Reads the UDP and TCP addresses a daemon's configuration listens on.
fn listen_addrs(r: &Running) -> Vec<SocketAddr> {
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&r.config).unwrap()).unwrap();
    let mut v: Vec<SocketAddr> =
        cfg["listen"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().parse().unwrap()).collect();
    if let Some(nl) = cfg["node_listen"].as_array() {
        v.extend(nl.iter().map(|a| a.as_str().unwrap().parse::<SocketAddr>().unwrap()));
    }
    v
}

fn total_dropped(status: &serde_json::Value) -> u64 {
    status["dropped"].as_object().map_or(0, |m| m.values().filter_map(serde_json::Value::as_u64).sum())
}

#[test]
fn random_and_truncated_datagrams_and_garbage_streams_are_dropped_and_counted() {
    let site = Site::start(SiteOptions::default());
    site.add_password_account("a@example.org", "mn.zone-a.test", "pw");
    let mut mn = TestNode::new(&site.setup("zone-a.test"), Cred::Password("a@example.org".into(), "pw".into()));
    assert!(bring_up(&mut mn));

    // Real messages to cut short: a node's registration, captured by sealing one here.
    let mut seed = 0x1234_5678_u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let daemons: Vec<&Running> =
        [Some(&site.as_), Some(&site.dc_a), Some(&site.dc_b), site.rs.as_ref(), site.ns.as_ref()]
            .into_iter()
            .flatten()
            .collect();
    let header = [1u8, 0x10, 1, 1, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0, 0, 0, 0, 1];
    for d in &daemons {
        for addr in listen_addrs(d) {
            // Datagrams: random, truncated headers, and plausible headers with junk bodies.
            for i in 0..200 {
                let len = (rand() % 300) as usize;
                let mut junk: Vec<u8> = (0..len).map(|_| rand() as u8).collect();
                if i % 3 == 0 {
                    junk = header[..(i % 17).min(16)].to_vec();
                } else if i % 3 == 1 {
                    let mut h = header.to_vec();
                    h[1] = (rand() % 0x80) as u8;
                    h.extend(junk);
                    junk = h;
                }
                let _ = sock.send_to(&junk, addr);
            }
            // Streams: garbage, a TLS-looking hello cut short, an oversize frame length.
            for garbage in [
                b"GET / HTTP/1.0\r\n\r\n".to_vec(),
                vec![0x16, 3, 1, 0, 200, 1, 0],
                vec![0xff, 0xff, 1, 2, 3],
                vec![0, 0],
            ] {
                if let Ok(mut s) = TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(1)) {
                    let _ = s.write_all(&garbage);
                }
            }
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    for d in &daemons {
        let st = d.status();
        let tls_errors =
            st["driver"]["tls_errors"].as_u64().unwrap_or(0) + st["driver"]["bad_frames"].as_u64().unwrap_or(0);
        eprintln!(
            "{}: dropped {} datagrams by reason {}, TLS/frame errors {tls_errors}",
            d.program,
            total_dropped(&st),
            st["dropped"]
        );
        assert!(total_dropped(&st) >= 100 || d.program == "ntm-as", "{} counted its drops: {st}", d.program);
        assert!(tls_errors >= 1, "{}: garbage on TLS counted: {st}", d.program);
    }
    // Everyone is still up, and the node still works.
    let mut cn_setup = site.setup("zone-b.test");
    cn_setup.route_optimization = true;
    site.add_password_account("b@example.org", "cn.zone-b.test", "pw");
    let mut cn = TestNode::new(&cn_setup, Cred::Password("b@example.org".into(), "pw".into()));
    assert!(bring_up(&mut cn));
    assert!(resolve(&mut [&mut mn, &mut cn], 0, "cn.zone-b.test").is_ok());
    for d in daemons {
        let mut_alive = d.try_status().is_some();
        assert!(mut_alive, "{} still serves", d.program);
    }
}

fn check(program: &str, cfg: &serde_json::Value, dir: &std::path::Path) -> (i32, String) {
    let path = dir.join(format!("{program}.json"));
    write_json(&path, cfg);
    let out = Command::new(bin(program)).arg("check").arg("-c").arg(&path).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn each_missing_required_field_is_named_and_refused() {
    let dir = TempDir::new("configs");
    let tls =
        serde_json::json!({"ca": "/nonexistent/ca.pem", "cert": "/nonexistent/c.pem", "key": "/nonexistent/k.pem"});
    let configs = [
        (
            "ntm-dc",
            serde_json::json!({"name": "dc.zone-a.test", "listen": ["127.0.0.1:1"], "tls": tls, "zones": ["zone-a.test"],
                "virtual_ipv4": "198.18.0.0/16", "virtual_ipv6": "2001:db8:ff::/96", "state": "/tmp/x.db"}),
            vec!["name", "listen", "tls", "zones", "virtual_ipv4", "virtual_ipv6", "state"],
        ),
        (
            "ntm-as",
            serde_json::json!({"name": "as.test", "listen": ["127.0.0.1:1"], "tls": tls, "accounts": "/tmp/a.db",
                "dns": {"static_dcs": [{"zone": "zone-a.test", "dc": "dc.zone-a.test", "addrs": ["127.0.0.1:1"]}]}}),
            vec!["name", "listen", "tls", "accounts"],
        ),
        (
            "ntm-rs",
            serde_json::json!({"name": "rs.test", "listen": ["127.0.0.1:1"], "tls": tls}),
            vec!["name", "listen", "tls"],
        ),
        (
            "ntm-ns",
            serde_json::json!({"name": "ns.test", "listen": ["127.0.0.1:1"], "tls": tls, "node_listen": ["127.0.0.1:2"]}),
            vec!["name", "listen", "tls", "node_listen"],
        ),
    ];
    for (program, full, required) in configs {
        // The configuration is valid; `check` then opens the files it names (exit 1).
        let (code, err) = check(program, &full, dir.path());
        assert!(code == 1 && err.contains("/nonexistent/ca.pem"), "{program}: the full configuration is valid: {err}");
        for field in required {
            let mut cfg = full.clone();
            cfg.as_object_mut().unwrap().remove(field);
            let (code, err) = check(program, &cfg, dir.path());
            assert_eq!(code, 2, "{program} without {field}");
            assert!(err.lines().count() == 1 && err.contains(field), "{program} without {field}: {err}");
        }
        // A nested TLS field too.
        let mut cfg = full.clone();
        cfg["tls"].as_object_mut().unwrap().remove("key");
        let (code, err) = check(program, &cfg, dir.path());
        assert!(code == 2 && err.contains("key"), "{program} without tls.key: {err}");
    }
    // A configuration that parses but whose files are missing: `run` says which file.
    let path = dir.path().join("dc-files.json");
    write_json(
        &path,
        &serde_json::json!({"name": "dc.zone-a.test", "listen": ["127.0.0.1:1"], "tls": tls, "zones": ["zone-a.test"],
            "virtual_ipv4": "198.18.0.0/16", "virtual_ipv6": "2001:db8:ff::/96", "state": "/tmp/x.db"}),
    );
    let out = Command::new(bin("ntm-dc")).arg("-c").arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
}

#[test]
fn status_command_sighup_and_sigterm() {
    let mut site = Site::start(SiteOptions { relay: false, ns: false, ..SiteOptions::default() });
    // `ntm-dc status -c FILE` prints the same JSON as the socket.
    let out = Command::new(bin("ntm-dc")).arg("status").arg("-c").arg(&site.dc_a.config).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["role"], "dc");
    // SIGHUP reloads and keeps serving.
    let pid = site.dc_a.child.id().to_string();
    assert!(Command::new("kill").arg("-HUP").arg(&pid).status().unwrap().success());
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(site.dc_a.alive() && site.dc_a.try_status().is_some());
    assert!(site.dc_a.log_text().contains("SIGHUP"));
    // SIGTERM ends it cleanly and removes its status socket.
    let sock = site.dc_a.status.clone();
    assert_eq!(site.dc_a.stop(), Some(0));
    assert!(!sock.exists());
}

#[test]
fn the_example_configurations_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../board/default");
    for d in ["as", "dc", "rs", "ns"] {
        let out = Command::new(bin(&format!("ntm-{d}")))
            .arg("check")
            .arg("-c")
            .arg(dir.join(format!("{d}.json")))
            .output()
            .unwrap();
        // Valid: `check` gets as far as the files, which exist only on a deployed machine.
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.code() == Some(1) && err.contains("/etc/ntmobile/"), "board/default/{d}.json: {err}");
    }
}
