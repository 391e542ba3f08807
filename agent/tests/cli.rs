//! `ntmd`'s command line through the real binary: `--help` and `--version`, usage errors,
//! and its log lines, on stderr with timestamps or to syslog. The agent is made to stop at
//! start (its tunnel port is held by the test), which it logs as an error: no TUN device
//! and no privilege are needed.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn ntmd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ntmd")).args(args).stdin(Stdio::null()).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> Self {
        let p = std::env::temp_dir().join(format!("ntmd-cli-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn help_and_version_exit_0_and_usage_errors_exit_2() {
    for flag in ["--help", "-h", "help", "run --help", "check -c x.json -h"] {
        let out = ntmd(&flag.split(' ').collect::<Vec<_>>());
        let usage = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{flag}");
        for part in ["ntmd [run] -c FILE", "CAP_NET_ADMIN", "ntmd check -c FILE", "ntmd status -s SOCKET", "--version"]
        {
            assert!(usage.contains(part), "{flag}: {part} in\n{usage}");
        }
    }
    for flag in ["-V", "--version"] {
        let out = ntmd(&[flag]);
        assert_eq!(out.status.code(), Some(0));
        assert!(text(&out.stdout).starts_with(&format!("ntmd {}", env!("CARGO_PKG_VERSION"))));
    }
    for args in [&["--bogus"][..], &[][..], &["check"][..], &["status"][..], &["frobnicate"][..]] {
        let out = ntmd(args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.starts_with("ntmd: ") && err.contains("ntmd [run] -c FILE"), "{args:?}: {err}");
        assert!(out.stdout.is_empty());
    }
}

/// A configuration that loads (a real CA certificate, a password login) and whose tunnel
/// port is `port`.
fn config(dir: &Path, port: u16, extra: &[(&str, &str)]) -> PathBuf {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "test CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    std::fs::write(dir.join("ca.pem"), params.self_signed(&key).unwrap().pem()).unwrap();
    std::fs::write(dir.join("password"), "secret\n").unwrap();
    let mut cfg = format!(
        r#"{{"account_server": "127.0.0.1:1", "account_server_name": "as.test", "ca": "{ca}",
            "credential": {{"password": {{"email": "a@b.test", "password_file": "{pw}"}}}},
            "virtual_routes": ["198.18.0.0/15"], "udp_port": {port}, "status_socket": "{sock}",
            "dns": {{"listen": "127.0.0.1:0", "upstream": ["127.0.0.1:53"], "ntm_domains": ["ntm.test"]}}"#,
        ca = dir.join("ca.pem").display(),
        pw = dir.join("password").display(),
        sock = dir.join("ntmd.sock").display(),
    );
    for (k, v) in extra {
        cfg.push_str(&format!(r#", "{k}": "{v}""#));
    }
    cfg.push('}');
    let path = dir.join("ntmd.json");
    std::fs::write(&path, cfg).unwrap();
    path
}

/// Runs the agent while the test holds its tunnel port: it stops at start, exit 1.
fn run_with_port_taken(dir: &Path, extra: &[(&str, &str)]) -> (u32, String) {
    let held = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    let path = config(dir, held.local_addr().unwrap().port(), extra);
    let child = Command::new(env!("CARGO_BIN_EXE_ntmd"))
        .args(["run", "-c"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Bounded: the agent stops at once when its port is taken.
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    (pid, err)
}

#[test]
fn log_lines_carry_timestamps() {
    let dir = TempDir::new("stamps");
    let (_, err) = run_with_port_taken(&dir.0, &[]);
    let line = err.lines().find(|l| l.contains("cannot start")).unwrap_or_else(|| panic!("{err}"));
    // 2026-12-06T04:55:08.123Z ERROR [ntmd] cannot start: ...
    let b = line.as_bytes();
    let stamped = b.len() > 30
        && b[..4].iter().all(u8::is_ascii_digit)
        && (b[4], b[7], b[10], b[13], b[16], b[19], b[23], b[24]) == (b'-', b'-', b'T', b':', b':', b'.', b'Z', b' ');
    assert!(stamped && line[25..].starts_with("ERROR "), "{line}");
}

#[test]
fn syslog_gets_the_lines() {
    let dir = TempDir::new("syslog");
    let sock_path = dir.0.join("log.sock");
    let syslog = UnixDatagram::bind(&sock_path).unwrap();
    let (pid, err) =
        run_with_port_taken(&dir.0, &[("log_target", "syslog"), ("syslog_socket", sock_path.to_str().unwrap())]);
    assert!(!err.contains("cannot start"), "the line went to syslog, not stderr: {err}");
    syslog.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 2048];
    let mut lines = Vec::new();
    while let Ok(n) = syslog.recv(&mut buf) {
        lines.push(text(&buf[..n]));
    }
    let want = format!("<27>ntmd[{pid}]: ");
    assert!(lines.iter().any(|l| l.starts_with(&want) && l.contains("cannot start")), "{lines:?}");

    // No syslog there: said on stderr, and the lines go to stderr.
    let missing = dir.0.join("no-such-socket");
    let (_, err) =
        run_with_port_taken(&dir.0, &[("log_target", "syslog"), ("syslog_socket", missing.to_str().unwrap())]);
    assert!(err.starts_with("ntmd: syslog: cannot reach ") && err.contains("cannot start"), "{err}");
}

/// `ntmd --help | head -1`: a reader that went away ends the output quietly (no panic,
/// exit 0), as for `ntmd status | head`, which writes through the same function.
#[test]
fn output_into_a_closed_pipe_is_not_a_panic() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out =
        Command::new(env!("CARGO_BIN_EXE_ntmd")).arg("--help").stdin(Stdio::null()).stdout(writer).output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// With `user` set, `check` refuses what `run` would refuse once it is the user: an OIDC
/// token file that user cannot read (the agent reads it again when it changes).
#[test]
#[allow(clippy::print_stderr)]
fn check_and_run_agree_on_what_the_user_can_read() {
    use std::os::unix::fs::PermissionsExt;
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: becoming another user needs root");
        return;
    }
    let dir = TempDir::new("user-read");
    let mode = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    mode(&dir.0, 0o755);
    let path = config(&dir.0, 4500, &[("user", "nobody")]);
    let token = dir.0.join("token");
    std::fs::write(&token, "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln\n").unwrap();
    let cfg = std::fs::read_to_string(&path).unwrap();
    let (start, end) = (cfg.find(r#""credential""#).unwrap(), cfg.find(r#""virtual_routes""#).unwrap());
    let cfg =
        format!(r#"{}"credential": {{"oidc_token_file": "{}"}}, {}"#, &cfg[..start], token.display(), &cfg[end..]);
    std::fs::write(&path, cfg).unwrap();
    mode(&token, 0o600);
    let out = ntmd(&["check", "-c", path.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("oidc_token_file") && err.contains("cannot read"), "{err}");
    mode(&token, 0o644);
    let out = ntmd(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}
