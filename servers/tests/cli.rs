//! The servers' command lines as a user meets them, through the real binaries: `--help`
//! and `--version`, usage errors, `check` opening every file `run` opens (with real
//! certificates made by `ntm-ca`), and logging to syslog or stderr.

#![allow(clippy::print_stderr)]

mod common;

use common::{admin, bin, free_port, write_json, Running, TempDir};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const SERVERS: [&str; 4] = ["ntm-as", "ntm-dc", "ntm-rs", "ntm-ns"];

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(bin(program)).args(args).stdin(Stdio::null()).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn help_and_version_exit_0_with_the_whole_usage() {
    for p in SERVERS {
        for flag in ["--help", "-h", "help", "run --help", "check -c x.json -h"] {
            let out = run(p, &flag.split(' ').collect::<Vec<_>>());
            let usage = text(&out.stdout);
            assert_eq!(out.status.code(), Some(0), "{p} {flag}: {}", text(&out.stderr));
            for part in [
                format!("{p} [run] -c FILE"),
                format!("{p} check -c FILE"),
                format!("{p} status -c FILE"),
                format!("{p} status -s SOCKET"),
                format!("{p} -V | --version"),
                "--config FILE".into(),
                "--socket PATH".into(),
                "exit codes".into(),
            ] {
                assert!(usage.contains(&part), "{p} {flag}: {part} missing in\n{usage}");
            }
        }
        for flag in ["--version", "-V"] {
            let out = run(p, &[flag]);
            assert_eq!(out.status.code(), Some(0));
            let line = text(&out.stdout);
            assert!(
                line.starts_with(&format!("{p} {} ", env!("CARGO_PKG_VERSION")))
                    || line.trim_end() == format!("{p} {}", env!("CARGO_PKG_VERSION")),
                "{line}"
            );
        }
    }
    // The AS's own commands, with every option their parser takes.
    let usage = text(&run("ntm-as", &["--help"]).stdout);
    for part in [
        "ntm-as ca init --out DIR [--name CN] [--days N]",
        "ntm-as ca issue --ca DIR --role ROLE --name FQDN --out DIR [--days N]",
        "ntm-as ca sign-csr --ca DIR [--role ROLE] --name FQDN --csr FILE --out FILE [--days N]",
        "ntm-as attestation-key --out FILE",
        "ntm-as account add -c FILE --email E --fqdn N [--password-stdin] [--device N]",
        "ntm-as account list -c FILE",
        "ntm-as account disable|enable|remove -c FILE --account E|N",
        "ntm-as account set-password -c FILE --account E|N",
        "ntm-as account bind-device -c FILE --account E|N --device N",
        "ntm-as account bind-oidc -c FILE --account E|N --issuer URL --subject S",
        "ntm-as account bind-fqdn -c FILE --account E|N --fqdn N",
        "ROLE: node, as, dc, rs or ns",
    ] {
        assert!(usage.contains(part), "{part} missing in\n{usage}");
    }
    for (args, has, lacks) in [
        (&["ca", "--help"][..], "ntm-as ca issue", "account add"),
        (&["ca", "init", "-h"][..], "ntm-as ca init", "account add"),
        (&["account", "--help"][..], "ntm-as account bind-oidc", "ca init"),
        (&["account", "add", "--help"][..], "ntm-as account add", "ca init"),
        (&["help", "attestation-key"][..], "ntm-as attestation-key --out FILE", "account add"),
    ] {
        let out = run("ntm-as", args);
        let t = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(t.contains(has) && !t.contains(lacks), "{args:?}:\n{t}");
    }
}

#[test]
fn usage_errors_exit_2_with_the_usage_on_stderr() {
    for p in SERVERS {
        for args in [&["--bogus"][..], &[][..], &["check"][..], &["status"][..], &["-c"][..]] {
            let out = run(p, args);
            let err = text(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{p} {args:?}: {err}");
            assert!(out.stdout.is_empty(), "{p} {args:?}");
            assert!(
                err.starts_with(&format!("{p}: ")) && err.contains(&format!("{p} [run] -c FILE")),
                "{p} {args:?}: {err}"
            );
        }
    }
    for p in ["ntm-dc", "ntm-rs", "ntm-ns"] {
        let out = run(p, &["account", "list"]);
        assert_eq!(out.status.code(), Some(2));
        assert!(text(&out.stderr).starts_with(&format!("{p}: unknown command \"account\"")));
    }
    // An AS command without what it needs: its own usage.
    let out = run("ntm-as", &["ca", "init"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.starts_with("ntm-as: --out DIR is needed") && err.contains("ntm-as ca sign-csr"), "{err}");
    assert!(!err.contains("ntm-as account add"), "{err}");
    // A lifetime no certificate can have is bad usage, told before anything is written.
    for days in ["0", "99999999", "ten"] {
        let out = run("ntm-as", &["ca", "init", "--out", "/nonexistent/ca", "--days", days]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--days {days}: {err}");
        assert!(err.contains("--days takes a number of days from 1 to"), "--days {days}: {err}");
    }
    let out = run("ntm-as", &["account", "add", "--bogus"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--bogus") && err.contains("ntm-as account bind-fqdn"), "{err}");
    // A configuration that cannot be used is no usage error: one line.
    let out =
        run("ntm-as", &["account", "add", "-c", "/nonexistent/as.json", "--email", "a@b.test", "--fqdn", "a.b.test"]);
    let err = text(&out.stderr);
    assert_eq!((out.status.code(), err.lines().count()), (Some(2), 1), "{err}");
}

/// The CA is its own command, `ntm-ca`, with the usage and exit codes of the others; the
/// AS runs the same commands as `ntm-as ca`, and either reads what the other wrote.
#[test]
fn the_ca_is_ntm_ca_and_ntm_as_ca_is_its_alias() {
    for flag in ["--help", "-h", "help", "init --help"] {
        let out = run("ntm-ca", &flag.split(' ').collect::<Vec<_>>());
        let usage = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{flag}: {}", text(&out.stderr));
        for part in [
            "ntm-ca init --out DIR [--name CN] [--days N]",
            "ntm-ca issue --ca DIR --role ROLE --name FQDN --out DIR [--days N]",
            "ntm-ca sign-csr --ca DIR [--role ROLE] --name FQDN --csr FILE --out FILE [--days N]",
            "ROLE: node, as, dc, rs or ns",
            "ntm-ca -V | --version",
            "exit codes",
        ] {
            assert!(usage.contains(part), "{flag}: {part} missing in\n{usage}");
        }
        assert!(!usage.contains("ntm-ca [run]") && !usage.contains("account"), "{usage}");
    }
    let out = run("ntm-ca", &["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).starts_with(&format!("ntm-ca {}", env!("CARGO_PKG_VERSION"))));
    for (args, says) in [
        (&[][..], "ntm-ca: which command?"),
        (&["init"][..], "ntm-ca: --out DIR is needed"),
        (&["bogus"][..], "ntm-ca: unknown command \"bogus\""),
        (&["issue", "--bogus"][..], "--bogus"),
        (&["init", "--out", "/nonexistent/ca", "--days", "0"][..], "--days takes a number of days from 1 to"),
    ] {
        let out = run("ntm-ca", args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(out.stdout.is_empty() && err.contains(says) && err.contains("ntm-ca sign-csr"), "{args:?}: {err}");
    }
    // A failure at work is exit 1, one line.
    let out =
        run("ntm-ca", &["issue", "--ca", "/nonexistent/ca", "--role", "dc", "--name", "dc.test", "--out", "/tmp"]);
    let err = text(&out.stderr);
    assert_eq!((out.status.code(), err.lines().count()), (Some(1), 1), "{err}");

    // A CA made by `ntm-as ca` issues with `ntm-ca`, and the other way round.
    let dir = TempDir::new("ca-alias");
    let d = |p: &str| dir.path().join(p).to_str().unwrap().to_owned();
    for (init, issue) in [("ntm-as", "ntm-ca"), ("ntm-ca", "ntm-as")] {
        let ca = d(&format!("{init}-ca"));
        let prefix = |p: &str| if p == "ntm-as" { vec!["ca"] } else { vec![] };
        let mut args = prefix(init);
        args.extend(["init", "--out", &ca]);
        assert_eq!(run(init, &args).status.code(), Some(0), "{init} init");
        let out_dir = d(&format!("{issue}-issued"));
        let mut args = prefix(issue);
        args.extend(["issue", "--ca", &ca, "--role", "dc", "--name", "dc.zone-a.test", "--out", &out_dir]);
        let out = run(issue, &args);
        assert_eq!(out.status.code(), Some(0), "{issue} issue: {}", text(&out.stderr));
        let cert = Path::new(&out_dir).join("dc.zone-a.test.pem");
        let key = Path::new(&out_dir).join("dc.zone-a.test.key");
        let material = ntm_servers::pki::TlsMaterial::load(Path::new(&ca).join("ca.pem"), &cert, &key).unwrap();
        assert_eq!(material.identity().role, ntm_proto::engine::Role::Dc);
    }
}

/// A deployment's files, made with `ntm-ca`: the CA, a DC's and an AS's certificates, a
/// second CA with a DC certificate of its own, an attestation key.
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = TempDir::new("cli-pki");
        let d = |s: &str| dir.path().join(s).to_str().unwrap().to_owned();
        admin(&["ca", "init", "--out", &d("ca")], None);
        admin(&["ca", "init", "--out", &d("other-ca")], None);
        for (ca, role, name) in
            [("ca", "dc", "dc.zone-a.test"), ("ca", "as", "as.test"), ("other-ca", "dc", "dc.zone-a.test")]
        {
            admin(
                &["ca", "issue", "--ca", &d(ca), "--role", role, "--name", name, "--out", &d(&format!("{ca}-issued"))],
                None,
            );
        }
        admin(&["attestation-key", "--out", &d("attestation.key")], None);
        std::fs::create_dir_all(dir.path().join("lib")).unwrap();
        std::fs::create_dir_all(dir.path().join("run")).unwrap();
        Pki { dir }
    }

    fn path(&self, s: &str) -> PathBuf {
        self.dir.path().join(s)
    }

    fn tls(&self, name: &str) -> serde_json::Value {
        serde_json::json!({"ca": self.path("ca/ca.pem"), "cert": self.path(&format!("ca-issued/{name}.pem")),
            "key": self.path(&format!("ca-issued/{name}.key"))})
    }

    fn dc(&self) -> serde_json::Value {
        let port = free_port("127.0.0.1".parse().unwrap());
        serde_json::json!({"name": "dc.zone-a.test", "listen": [format!("127.0.0.1:{port}")], "tls": self.tls("dc.zone-a.test"),
            "status_socket": self.path("run/dc.sock"), "zones": ["zone-a.test"], "virtual_ipv4": "198.18.0.0/16",
            "virtual_ipv6": "2001:db8:ff::/96", "state": self.path("lib/dc.db")})
    }

    fn as_(&self) -> serde_json::Value {
        let port = free_port("127.0.0.1".parse().unwrap());
        serde_json::json!({"name": "as.test", "listen": [format!("127.0.0.1:{port}")], "tls": self.tls("as.test"),
            "accounts": self.path("lib/accounts.db"), "attestation_key": self.path("attestation.key"),
            "dns": {"static_dcs": [{"zone": "zone-a.test", "dc": "dc.zone-a.test", "addrs": ["127.0.0.1:1"]}]}})
    }
}

/// Runs `run -c` on a configuration that must fail at start; kills it (by PID) if it
/// runs on instead.
fn run_at_start(program: &str, config: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(bin(program))
        .args(["run", "-c"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return (None, "still running".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (out.status.code(), text(&out.stderr))
}

#[test]
fn check_opens_every_file_run_opens_and_both_agree() {
    let pki = Pki::new();
    let p = |s: &str| serde_json::Value::from(pki.path(s).to_str().unwrap());
    let cfg_path = pki.path("server.json");
    let check = |program: &str, cfg: &serde_json::Value| {
        write_json(&cfg_path, cfg);
        let out = run(program, &["check", "-c", cfg_path.to_str().unwrap()]);
        (out.status.code(), text(&out.stderr), text(&out.stdout))
    };

    for (program, good) in [("ntm-dc", pki.dc()), ("ntm-as", pki.as_())] {
        let (code, err, out) = check(program, &good);
        assert_eq!(code, Some(0), "{program}: {err}");
        assert!(out.contains("valid"), "{out}");
    }
    // `check` left no database behind.
    assert!(!pki.path("lib/dc.db").exists() && !pki.path("lib/accounts.db").exists());
    std::fs::write(pki.path("garbage.pem"), "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
        .unwrap();
    std::fs::write(pki.path("not-a-db"), "this is not a database, it is a text file of some length").unwrap();
    std::fs::write(pki.path("run/not-a-socket"), "x").unwrap();

    // (program, what, field path, value, a word the error must name)
    let cases: Vec<(&str, &str, &[&str], serde_json::Value, &str)> = vec![
        ("ntm-dc", "a CA file that is missing", &["tls", "ca"], p("nothing.pem"), "nothing.pem"),
        ("ntm-dc", "a certificate that does not parse", &["tls", "cert"], p("garbage.pem"), "garbage.pem"),
        ("ntm-dc", "a key that is not the certificate's", &["tls", "key"], p("ca-issued/as.test.key"), "as.test.key"),
        ("ntm-dc", "a CA that did not issue the certificate", &["tls", "ca"], p("other-ca/ca.pem"), "other-ca/ca.pem"),
        (
            "ntm-dc",
            "a certificate of another CA",
            &["tls", "cert"],
            p("other-ca-issued/dc.zone-a.test.pem"),
            "dc.zone-a.test.pem",
        ),
        ("ntm-dc", "a database directory that is missing", &["state"], p("nowhere/dc.db"), "nowhere"),
        ("ntm-dc", "a database that is not one", &["state"], p("not-a-db"), "not-a-db"),
        ("ntm-dc", "a status socket directory that is missing", &["status_socket"], p("nowhere/dc.sock"), "nowhere"),
        ("ntm-dc", "a status socket path that is a file", &["status_socket"], p("run/not-a-socket"), "not-a-socket"),
        ("ntm-as", "a certificate that does not parse", &["tls", "cert"], p("garbage.pem"), "garbage.pem"),
        ("ntm-as", "an attestation key that is missing", &["attestation_key"], p("nothing.key"), "nothing.key"),
        ("ntm-as", "an attestation key that is not one", &["attestation_key"], p("ca/ca.pem"), "ca/ca.pem"),
        (
            "ntm-as",
            "an OIDC key file that is missing",
            &["oidc"],
            serde_json::json!([{"issuer": "https://id.test", "audience": "ntm", "jwks": p("nothing.jwks")}]),
            "nothing.jwks",
        ),
        ("ntm-as", "an accounts directory that is missing", &["accounts"], p("nowhere/accounts.db"), "nowhere"),
        ("ntm-as", "an accounts file that is not a database", &["accounts"], p("not-a-db"), "not-a-db"),
    ];
    for (program, what, field, value, named) in cases {
        let mut cfg = if program == "ntm-dc" { pki.dc() } else { pki.as_() };
        match field {
            [a] => cfg[*a] = value,
            [a, b] => cfg[*a][*b] = value,
            _ => unreachable!(),
        }
        let (code, err, _) = check(program, &cfg);
        assert_eq!(code, Some(1), "{program} check with {what}: {err}");
        assert!(
            err.lines().count() == 1 && err.contains(named),
            "{program} check with {what}: one line naming {named}: {err}"
        );
        let (code, err) = run_at_start(program, &cfg_path);
        assert_eq!(code, Some(1), "{program} run with {what}: {err}");
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every datagram the socket holds now.
fn drain(sock: &UnixDatagram) -> Vec<String> {
    sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    let mut lines = Vec::new();
    while let Ok(n) = sock.recv(&mut buf) {
        lines.push(text(&buf[..n]));
    }
    lines
}

#[test]
fn syslog_gets_the_lines_at_the_configured_level() {
    let pki = Pki::new();
    let syslog_path = pki.path("log.sock");
    let syslog = UnixDatagram::bind(&syslog_path).unwrap();
    let cfg_path = pki.path("dc.json");
    for level in ["info", "warn"] {
        // A database others can read: the DC warns (and sets mode 0600) at start.
        let _ = std::fs::remove_file(pki.path("lib/dc.db"));
        std::fs::write(pki.path("lib/dc.db"), "").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(pki.path("lib/dc.db"), std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut cfg = pki.dc();
        cfg["log_level"] = level.into();
        cfg["log_target"] = "syslog".into();
        cfg["syslog_socket"] = syslog_path.to_str().unwrap().into();
        write_json(&cfg_path, &cfg);
        let mut dc = Running::start("ntm-dc", &cfg_path, &pki.path("run/dc.sock"), &pki.path("dc.log"));
        let pid = dc.child.id();
        assert_eq!(dc.stop(), Some(0));
        let lines = drain(&syslog);
        let prefix = |pri: u8| format!("<{pri}>ntm-dc[{pid}]: ");
        assert!(lines.iter().any(|l| l.starts_with(&prefix(28)) && l.contains("0600")), "{level}: {lines:?}");
        let infos = lines.iter().filter(|l| l.starts_with(&prefix(30))).count();
        match level {
            "info" => assert!(lines.iter().any(|l| l.starts_with(&prefix(30)) && l.contains("running")), "{lines:?}"),
            _ => assert_eq!(infos, 0, "warn lets no info line through: {lines:?}"),
        }
        assert!(lines.iter().all(|l| l.starts_with('<') && l.contains(&format!("ntm-dc[{pid}]: "))), "{lines:?}");
        // Nothing went to stderr.
        assert!(!dc.log_text().contains("running"), "{}", dc.log_text());
    }
}

#[test]
fn without_syslog_the_lines_go_to_stderr_with_timestamps() {
    let pki = Pki::new();
    let cfg_path = pki.path("dc.json");
    let mut cfg = pki.dc();
    cfg["log_target"] = "syslog".into();
    cfg["syslog_socket"] = pki.path("no-syslog-here").to_str().unwrap().into();
    write_json(&cfg_path, &cfg);
    let mut dc = Running::start("ntm-dc", &cfg_path, &pki.path("run/dc.sock"), &pki.path("dc.log"));
    wait_for("the running line", || dc.log_text().contains("running"));
    assert_eq!(dc.stop(), Some(0));
    let log = dc.log_text();
    let mut lines = log.lines();
    let first = lines.next().unwrap_or_default();
    assert!(first.starts_with("ntm-dc: syslog: cannot reach ") && first.contains("no-syslog-here"), "{log}");
    for line in lines {
        // 2026-12-06T04:55:08.123Z INFO  [target] message
        let b = line.as_bytes();
        let stamp = b.len() > 25
            && b[..4].iter().all(u8::is_ascii_digit)
            && (b[4], b[7], b[10], b[13], b[16], b[19], b[23], b[24])
                == (b'-', b'-', b'T', b':', b':', b'.', b'Z', b' ');
        assert!(stamp, "a timestamp opens every line: {line:?}\n{log}");
    }
}

/// A reader that went away (`ntm-as --help | head -1`) ends the output quietly: no panic,
/// no backtrace, exit 0. `print!` panics on the broken pipe.
#[test]
fn output_into_a_closed_pipe_is_not_a_panic() {
    for p in SERVERS {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(bin(p)).arg("--help").stdin(Stdio::null()).stdout(writer).output().unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{p}: {err}");
        assert!(!err.contains("panicked"), "{p}: {err}");
    }
}

/// With `user` set, `check` says what `run` would refuse once it is the user: a TLS file
/// that user cannot read (SIGHUP reads it again). It judges by the permission bits, as it
/// cannot become the user itself.
#[test]
fn check_and_run_agree_on_what_the_user_can_read() {
    use std::os::unix::fs::PermissionsExt;
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: becoming another user needs root");
        return;
    }
    let pki = Pki::new();
    let mode = |s: &str, m: u32| std::fs::set_permissions(pki.path(s), std::fs::Permissions::from_mode(m)).unwrap();
    for d in ["", "ca", "ca-issued", "lib", "run"] {
        mode(d, 0o755);
    }
    mode("ca/ca.pem", 0o644);
    mode("ca-issued/dc.zone-a.test.pem", 0o644);
    // The key as `ca issue` writes it: root's alone.
    mode("ca-issued/dc.zone-a.test.key", 0o600);
    let cfg_path = pki.path("dc.json");
    let mut cfg = pki.dc();
    cfg["user"] = "nobody".into();
    write_json(&cfg_path, &cfg);

    let out = run("ntm-dc", &["check", "-c", cfg_path.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "check: {err}");
    assert!(err.contains("tls.key") && err.contains("cannot read"), "check: {err}");
    let (code, err) = run_at_start("ntm-dc", &cfg_path);
    assert_eq!(code, Some(1), "run: {err}");
    assert!(err.contains("tls.key") && err.contains("cannot read"), "run: {err}");

    // A directory above it that the user cannot enter is the same refusal.
    mode("ca-issued/dc.zone-a.test.key", 0o644);
    mode("ca-issued", 0o700);
    let out = run("ntm-dc", &["check", "-c", cfg_path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "check: {}", text(&out.stderr));

    mode("ca-issued", 0o755);
    let out = run("ntm-dc", &["check", "-c", cfg_path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "check: {}", text(&out.stderr));
}
