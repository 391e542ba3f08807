//! Exit codes of the servers' command lines, as docs/servers.md gives them: 1 when the
//! program fails at its work (here a full disk under the account database), 2 for bad
//! usage or configuration. The full disk is a small tmpfs mounted in a private mount
//! namespace (`unshare -m`), so nothing of the machine's mounts changes; that part needs
//! root and is skipped otherwise (unless NTM_REQUIRE_LAB is set).

#![allow(clippy::print_stderr)]

mod common;

use common::{bin, write_json, TempDir};
use std::process::Command;

fn as_config(dir: &std::path::Path, accounts: &std::path::Path) -> std::path::PathBuf {
    let tls =
        serde_json::json!({"ca": "/nonexistent/ca.pem", "cert": "/nonexistent/c.pem", "key": "/nonexistent/k.pem"});
    let path = dir.join("as.json");
    write_json(
        &path,
        &serde_json::json!({"name": "as.test", "listen": ["127.0.0.1:1"], "tls": tls, "accounts": accounts,
            "dns": {"static_dcs": [{"zone": "zone-a.test", "dc": "dc.zone-a.test", "addrs": ["127.0.0.1:1"]}]}}),
    );
    path
}

fn can_mount() -> bool {
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    let unshare = Command::new("unshare").arg("--version").output().is_ok_and(|o| o.status.success());
    if root && unshare {
        return true;
    }
    assert!(std::env::var_os("NTM_REQUIRE_LAB").is_none(), "a full disk needs root and unshare");
    eprintln!("SKIPPED: a full disk needs root and unshare");
    false
}

#[test]
fn account_add_on_a_full_disk_exits_1_and_bad_usage_exits_2() {
    let dir = TempDir::new("exit-codes");
    let disk = dir.path().join("disk");
    std::fs::create_dir_all(&disk).unwrap();
    let cfg = as_config(dir.path(), &disk.join("accounts.db"));
    let add = |email: &str, fqdn: &str| {
        format!("{} account add -c {} --email {email} --fqdn {fqdn}", bin("ntm-as").display(), cfg.display())
    };

    // Usage: a flag missing.
    let out = Command::new(bin("ntm-as")).args(["account", "add", "-c"]).arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    // Configuration: a file that is not one.
    let out = Command::new(bin("ntm-as"))
        .args(["account", "add", "--email", "a@example.org", "--fqdn", "a.zone-a.test", "-c", "/nonexistent/as.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));

    if !can_mount() {
        return;
    }
    // The first account fits; then the disk is filled and the second cannot be written.
    let script = format!(
        "set -e; mount -t tmpfs -o size=512k ntm-full {disk}; {first}; \
         dd if=/dev/zero of={disk}/fill bs=4k 2>/dev/null || true; \
         rc=0; {second} || rc=$?; echo \"rc=$rc\"",
        disk = disk.display(),
        first = add("a@example.org", "a.zone-a.test"),
        second = add("b@example.org", "b.zone-a.test"),
    );
    let out = Command::new("unshare").args(["-m", "--propagation", "private", "sh", "-c", &script]).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("account a@example.org bound to a.zone-a.test"), "{stdout}{stderr}");
    assert!(stdout.contains("rc=1"), "a full disk is a failure at run time (1), not bad usage: {stdout}{stderr}");
    assert!(stderr.contains("accounts.db"), "the error names the database: {stderr}");
}
