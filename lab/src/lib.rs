//! A network lab in the real kernel for end-to-end tests: network namespaces joined by
//! veth links and bridges, addresses and routes, nftables NAT, processes started inside
//! namespaces, packet captures and a readable report when something fails.
//!
//! Safety rules (DEVELOPERS.md, "Network safety"): everything is created inside network
//! namespaces this lab made, whose names carry a prefix unique to the run
//! (`ntmt<pid>x<n>-`); the host's own interfaces, routes and firewall are never touched;
//! no namespace is routed to the host's uplink. [`Lab`]'s `Drop` stops every process it
//! started (by PID) and deletes every namespace it made, also when a test panics; a lab
//! created later removes namespaces left by runs that were killed.

pub mod deploy;
pub mod pcap;
pub mod stream;

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Name prefix of every namespace a lab makes.
pub const PREFIX: &str = "ntmt";

/// Why the lab cannot run here.
#[derive(Debug)]
pub enum LabError {
    /// Not root (network namespaces need CAP_SYS_ADMIN).
    NotRoot,
    /// A tool is missing.
    Missing(&'static str),
    /// A command failed.
    Command {
        /// What was run.
        what: String,
        /// Its stderr.
        stderr: String,
    },
    /// An I/O error.
    Io(io::Error),
}

impl std::fmt::Display for LabError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LabError::NotRoot => f.write_str("the lab needs root (network namespaces)"),
            LabError::Missing(t) => write!(f, "the lab needs `{t}` (apt-get install the package that has it)"),
            LabError::Command { what, stderr } => write!(f, "`{what}` failed: {}", stderr.trim()),
            LabError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for LabError {}

impl From<io::Error> for LabError {
    fn from(e: io::Error) -> Self {
        LabError::Io(e)
    }
}

/// A result in the lab.
pub type Result<T> = std::result::Result<T, LabError>;

/// True if `tool` is on PATH (or in the sbin directories).
pub fn have(tool: &str) -> bool {
    find_tool(tool).is_some()
}

/// Where `tool` is on PATH (or in the sbin directories).
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// True if the effective user is root (what the lab needs).
pub fn is_root() -> bool {
    unsafe_euid() == 0
}

/// A memory field of `/proc/PID/status` ("VmRSS", "VmHWM", ...) in KiB; 0 if unreadable.
pub fn proc_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find(|l| l.split(':').next() == Some(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn run(cmd: &mut Command) -> Result<Output> {
    let what = format!("{cmd:?}");
    let out = cmd.stdin(Stdio::null()).output()?;
    if !out.status.success() {
        return Err(LabError::Command { what, stderr: String::from_utf8_lossy(&out.stderr).into_owned() });
    }
    Ok(out)
}

fn ip(args: &[&str]) -> Result<Output> {
    run(Command::new("ip").args(args))
}

/// A network namespace of the lab.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ns {
    /// The full name (with the run's prefix).
    pub name: String,
    /// The short name given by the test.
    pub label: String,
}

/// A process started in a namespace; stopped by PID when dropped.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    /// What it is, for reports.
    pub label: String,
    /// Its combined stdout and stderr.
    pub log: PathBuf,
}

impl Proc {
    /// Its PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while it runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Its standard input, if it was started with pipes (once).
    pub fn take_stdin(&mut self) -> Option<std::process::ChildStdin> {
        self.child.stdin.take()
    }

    /// Its standard output, if it was started with pipes (once).
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `sig` (a number) to it.
    pub fn signal(&self, sig: i32) {
        let _ = Command::new("kill").arg(format!("-{sig}")).arg(self.pid().to_string()).stderr(Stdio::null()).status();
    }

    /// SIGTERM, wait up to 5 s, then SIGKILL. The exit code, if it exited normally.
    /// Processes it started that outlive it (socat's `fork` children serving a connection,
    /// a shell's background jobs) are found before it is signalled and killed after it,
    /// by PID: otherwise they outlived a failing test, holding ports and namespaces.
    pub fn stop(&mut self) -> Option<i32> {
        let children = descendants(self.pid());
        let code = self.stop_main();
        for pid in children {
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).stderr(Stdio::null()).status();
        }
        code
    }

    fn stop_main(&mut self) -> Option<i32> {
        if !self.alive() {
            return self.child.wait().ok().and_then(|s| s.code());
        }
        self.signal(15);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.child.wait().ok().and_then(|s| s.code())
    }

    /// Waits for it to exit (up to `secs`), killing it after that.
    pub fn wait(&mut self, secs: u64) -> Option<i32> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.stop()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.alive() {
            self.stop();
        }
        if let Ok(mut l) = SPAWNED.lock() {
            l.retain(|p| *p != self.pid());
        }
    }
}

/// The processes below `pid` (its children, theirs, ...), from the parent PIDs in
/// `/proc/*/stat`. One that exits between this listing and a kill a few seconds later
/// leaves its PID free, but the kernel hands PIDs out in rising order up to `pid_max`,
/// so another process gets it only if the counter wraps around in between.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if let Some((_, ppid)) = proc_state(p) {
            parent_of.push((p, ppid));
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(parent_of.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    found.remove(0);
    found
}

/// The state letter (R, S, Z, ...) and parent PID of process `pid`, from `/proc/PID/stat`;
/// None if there is no such process.
pub fn proc_state(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    let mut rest = stat.rsplit_once(')')?.1.split_whitespace();
    let state = rest.next()?.chars().next()?;
    Some((state, rest.next()?.parse().ok()?))
}

/// PIDs of the processes labs started and have not yet reaped, for [`emergency_cleanup`].
static SPAWNED: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

fn register(pid: u32) {
    if let Ok(mut l) = SPAWNED.lock() {
        l.push(pid);
    }
}

/// For a Ctrl-C handler, which cannot reach the [`Lab`]s: sends SIGTERM to every process
/// the labs of this program started (by PID), waits a moment, and deletes every namespace
/// this program made.
pub fn emergency_cleanup() {
    let pids: Vec<u32> = SPAWNED.lock().map(|l| l.clone()).unwrap_or_default();
    for pid in &pids {
        let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).stderr(Stdio::null()).status();
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    for pid in &pids {
        let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).stderr(Stdio::null()).status();
    }
    remove_namespaces_of(std::process::id());
}

/// For lab programs built with `panic = "abort"` (the workspace's release profile): a panic
/// aborts without running a single destructor, so no [`Lab`] would delete its namespaces
/// or stop its daemons. This panic hook does that with [`emergency_cleanup`] after the
/// usual message is printed. Tests need none: the test harness unwinds.
pub fn clean_up_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        emergency_cleanup();
    }));
}

/// A lab: namespaces, processes and a working directory, all removed on drop.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    procs: Vec<Proc>,
    captures: Vec<Proc>,
    dir: PathBuf,
    keep_dir: bool,
    steps: Vec<String>,
    etc_dirs: Vec<PathBuf>,
}

static RUN: AtomicU32 = AtomicU32::new(0);

/// Deletes every namespace (and its `/etc/netns` directory) made by the process `pid`:
/// for a program's Ctrl-C handler, which cannot reach its [`Lab`].
pub fn remove_namespaces_of(pid: u32) {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    let mine = format!("{PREFIX}{pid}x");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if name.starts_with(&mine) {
            let _ = Command::new("ip").args(["netns", "delete", name]).status();
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(name));
        }
    }
}

/// Removes namespaces of earlier runs whose process is gone (a killed test run).
fn reap_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let pid: Option<u32> = rest.split('x').next().and_then(|p| p.parse().ok());
        if let Some(pid) = pid {
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = Command::new("ip").args(["netns", "delete", name]).status();
                let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(name));
            }
        }
    }
}

impl Lab {
    /// A new lab, or why it cannot run here (callers skip with a notice).
    pub fn new(label: &str) -> Result<Lab> {
        if !Path::new("/proc/self/ns/net").exists() || !is_root() {
            return Err(LabError::NotRoot);
        }
        if !have("ip") {
            return Err(LabError::Missing("ip"));
        }
        reap_stale();
        let n = RUN.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{PREFIX}{}x{n}", std::process::id());
        let dir = std::env::temp_dir().join(format!("{prefix}-{label}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Lab {
            prefix,
            namespaces: Vec::new(),
            procs: Vec::new(),
            captures: Vec::new(),
            dir,
            keep_dir: std::env::var_os("NTM_LAB_KEEP").is_some(),
            steps: Vec::new(),
            etc_dirs: Vec::new(),
        })
    }

    /// The lab's working directory (configs, logs, captures).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Notes a step for the failure report.
    pub fn step(&mut self, what: impl Into<String>) {
        let what = what.into();
        log::info!("lab step: {what}");
        self.steps.push(what);
    }

    /// Makes a namespace with loopback up. `forwarding` turns on IPv4 and IPv6 routing
    /// (for router namespaces).
    pub fn netns(&mut self, label: &str, forwarding: bool) -> Result<Ns> {
        let name = format!("{}-{label}", self.prefix);
        ip(&["netns", "add", &name])?;
        self.namespaces.push(name.clone());
        let ns = Ns { name, label: label.into() };
        self.exec(&ns, &["ip", "link", "set", "lo", "up"])?;
        if forwarding {
            self.sysctl(&ns, "net.ipv4.ip_forward", "1")?;
            self.sysctl(&ns, "net.ipv6.conf.all.forwarding", "1")?;
        }
        // No duplicate address detection delay: addresses are usable at once.
        self.sysctl(&ns, "net.ipv6.conf.all.accept_dad", "0")?;
        self.sysctl(&ns, "net.ipv6.conf.default.accept_dad", "0")?;
        Ok(ns)
    }

    /// Sets a sysctl inside `ns`.
    pub fn sysctl(&self, ns: &Ns, key: &str, value: &str) -> Result<()> {
        self.exec(ns, &["sysctl", "-q", "-w", &format!("{key}={value}")])?;
        Ok(())
    }

    /// Runs a command inside `ns` and returns its output (an error if it failed).
    pub fn exec(&self, ns: &Ns, cmd: &[&str]) -> Result<Output> {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns.name]).args(cmd);
        run(&mut c)
    }

    /// Runs a command inside `ns`, returning its output whatever its status.
    pub fn try_exec(&self, ns: &Ns, cmd: &[&str]) -> Result<Output> {
        Ok(Command::new("ip").args(["netns", "exec", &ns.name]).args(cmd).stdin(Stdio::null()).output()?)
    }

    /// A veth pair: `a_if` in `a`, `b_if` in `b`, both up.
    pub fn link(&self, a: &Ns, a_if: &str, b: &Ns, b_if: &str) -> Result<()> {
        ip(&["link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns", &b.name])?;
        self.exec(a, &["ip", "link", "set", a_if, "up"])?;
        self.exec(b, &["ip", "link", "set", b_if, "up"])?;
        Ok(())
    }

    /// A bridge `br` in `ns` with `members` enslaved, all up.
    pub fn bridge(&self, ns: &Ns, br: &str, members: &[&str]) -> Result<()> {
        self.exec(ns, &["ip", "link", "add", br, "type", "bridge"])?;
        for m in members {
            self.exec(ns, &["ip", "link", "set", m, "master", br])?;
        }
        self.exec(ns, &["ip", "link", "set", br, "up"])?;
        Ok(())
    }

    /// Adds `cidr` (e.g. "198.51.100.10/24") to `dev` in `ns`.
    pub fn addr(&self, ns: &Ns, dev: &str, cidr: &str) -> Result<()> {
        let v6 = cidr.contains(':');
        let mut args = vec!["ip"];
        if v6 {
            args.push("-6");
        }
        args.extend(["addr", "add", cidr, "dev", dev]);
        if v6 {
            args.push("nodad");
        }
        self.exec(ns, &args)?;
        Ok(())
    }

    /// Removes `cidr` from `dev` in `ns`.
    pub fn del_addr(&self, ns: &Ns, dev: &str, cidr: &str) -> Result<()> {
        self.exec(ns, &["ip", "addr", "del", cidr, "dev", dev])?;
        Ok(())
    }

    /// Adds a route, e.g. `["default", "via", "198.51.100.1"]`.
    pub fn route(&self, ns: &Ns, spec: &[&str]) -> Result<()> {
        let v6 = spec.iter().any(|s| s.contains(':'));
        let mut args = vec!["ip"];
        if v6 {
            args.push("-6");
        }
        args.extend(["route", "replace"]);
        args.extend_from_slice(spec);
        self.exec(ns, &args)?;
        Ok(())
    }

    /// Loads an nftables ruleset into `ns`.
    pub fn nft(&self, ns: &Ns, ruleset: &str) -> Result<()> {
        if !have("nft") {
            return Err(LabError::Missing("nft"));
        }
        let path = self.dir.join(format!("{}-nft-{}.conf", ns.label, self.steps.len()));
        std::fs::write(&path, ruleset)?;
        self.exec(ns, &["nft", "-f", path.to_str().unwrap_or("")])?;
        Ok(())
    }

    /// Starts `cmd` inside `ns` in the background; its output goes to a log file in the
    /// lab directory. Stopped (by PID) when the lab is dropped.
    pub fn spawn(&mut self, ns: &Ns, label: &str, cmd: &[&str], env: &[(&str, &str)]) -> Result<usize> {
        let log = self.dir.join(format!("{label}.log"));
        let out = std::fs::File::create(&log)?;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns.name]).args(cmd);
        for (k, v) in env {
            c.env(k, v);
        }
        let child = c.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out).spawn()?;
        register(child.id());
        self.procs.push(Proc { child, label: label.into(), log });
        Ok(self.procs.len() - 1)
    }

    /// Starts an iperf3 server in `ns` (port 5201) and waits until it listens. A test
    /// stops it ([`Proc::stop`]) once its runs through one path are done: a server kept
    /// across paths can still hold the last test of a path that was taken down under it,
    /// and answer the next path's client "busy" (the bench's fastd row failed so in CI on
    /// 2026-12-07). `--rcv-timeout`: a receiving test whose data stops ends after 5 s.
    pub fn iperf_server(&mut self, ns: &Ns, label: &str) -> Result<usize> {
        let p = self.spawn(ns, label, &["iperf3", "-s", "--rcv-timeout", "5000"], &[])?;
        let listening = self.wait_for(5, || {
            self.try_exec(ns, &["ss", "-Hltn", "sport = :5201"]).is_ok_and(|o| !o.stdout.trim_ascii().is_empty())
        });
        if !listening {
            let log = self.proc(p).log_text();
            self.proc(p).stop();
            let what = format!("iperf3 -s in {} (not listening within 5 s)", ns.name);
            return Err(LabError::Command { what, stderr: log });
        }
        Ok(p)
    }

    /// Like [`Lab::spawn`], but stdin and stdout are pipes for the test (see
    /// [`Proc::take_stdin`]); stderr goes to the log.
    pub fn spawn_piped(&mut self, ns: &Ns, label: &str, cmd: &[&str]) -> Result<usize> {
        let log = self.dir.join(format!("{label}.log"));
        let err = std::fs::File::create(&log)?;
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .args(cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()?;
        register(child.id());
        self.procs.push(Proc { child, label: label.into(), log });
        Ok(self.procs.len() - 1)
    }

    /// Gives `ns` its own resolv.conf: `ip netns exec` bind-mounts
    /// `/etc/netns/<namespace>/resolv.conf` over `/etc/resolv.conf` for the commands it
    /// runs. Only that per-namespace directory is written; it is removed with the lab.
    pub fn resolv_conf(&mut self, ns: &Ns, text: &str) -> Result<()> {
        let d = Path::new("/etc/netns").join(&ns.name);
        std::fs::create_dir_all(&d)?;
        self.etc_dirs.push(d.clone());
        std::fs::write(d.join("resolv.conf"), text)?;
        Ok(())
    }

    /// A process started by [`Lab::spawn`].
    pub fn proc(&mut self, i: usize) -> &mut Proc {
        &mut self.procs[i]
    }

    /// Starts tcpdump on `dev` in `ns`, writing `label.pcap` in the lab directory (for the
    /// failure report). Skipped if tcpdump is missing.
    pub fn capture(&mut self, ns: &Ns, dev: &str, label: &str) -> Result<()> {
        if !have("tcpdump") {
            return Ok(());
        }
        let pcap = self.dir.join(format!("{label}.pcap"));
        let log = self.dir.join(format!("{label}.tcpdump.log"));
        let out = std::fs::File::create(&log)?;
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "tcpdump", "-n", "-U", "-s", "256", "-i", dev, "-w"])
            .arg(&pcap)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        register(child.id());
        self.captures.push(Proc { child, label: format!("capture {label}"), log });
        Ok(())
    }

    /// Stops the capture `label` (tcpdump flushes its file on SIGINT), so that the test can
    /// read `label.pcap` in the lab directory.
    pub fn stop_capture(&mut self, label: &str) {
        let name = format!("capture {label}");
        if let Some(c) = self.captures.iter_mut().find(|c| c.label == name) {
            c.signal(2);
            c.wait(2);
        }
    }

    /// Waits until `cond` holds, polling every 50 ms, for at most `secs`.
    #[must_use = "the condition may not have held: assert it or handle false"]
    pub fn wait_for(&self, secs: u64, mut cond: impl FnMut() -> bool) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while std::time::Instant::now() < deadline {
            if cond() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        cond()
    }

    /// A report of the run so far: the steps, every process's log and the captures.
    pub fn report(&self) -> String {
        let mut r = String::new();
        let _ = writeln!(r, "==== lab {} ({})", self.prefix, self.dir.display());
        let _ = writeln!(r, "steps:");
        for s in &self.steps {
            let _ = writeln!(r, "  - {s}");
        }
        for p in &self.procs {
            let _ = writeln!(r, "---- {} (pid {}) log ----\n{}", p.label, p.child.id(), p.log_text());
        }
        for c in &self.captures {
            let _ = writeln!(r, "---- {} ----", c.label);
        }
        let _ = writeln!(r, "captures and logs kept in {}", self.dir.display());
        r
    }

    /// Keeps the lab directory after drop (for a failure report).
    pub fn keep(&mut self) {
        self.keep_dir = true;
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let failing = std::thread::panicking();
        for p in self.procs.iter_mut().rev() {
            p.stop();
        }
        for c in self.captures.iter_mut() {
            // SIGINT makes tcpdump flush its file.
            c.signal(2);
            c.wait(2);
        }
        if failing {
            self.keep_dir = true;
            log::error!("{}", self.report());
            eprint_report(&self.report());
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "delete", ns]).stderr(Stdio::null()).status();
        }
        for d in &self.etc_dirs {
            let _ = std::fs::remove_dir_all(d);
        }
        if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[allow(clippy::print_stderr)]
fn eprint_report(r: &str) {
    eprintln!("{r}");
}

/// Prints a notice for the person running the tests (a skipped lab test).
pub fn notice(text: &str) {
    eprint_report(text);
}

/// True if every command of `tools` is installed. Otherwise the test `what` is skipped
/// with a notice (false), or fails when the run requires the lab (`NTM_REQUIRE_LAB`, as
/// CI does).
pub fn tools_or_skip(what: &str, tools: &[&str]) -> bool {
    let Some(t) = tools.iter().find(|t| !have(t)) else { return true };
    assert!(std::env::var_os("NTM_REQUIRE_LAB").is_none(), "{what}: {t} is missing");
    notice(&format!("SKIPPED {what}: {t} is missing"));
    false
}

/// The answer lines of `dig +short` output. dig writes its own remarks there too (";;"
/// lines, e.g. a try that timed out before a retry got the answer); they are dropped,
/// so a slow first try does not read as a wrong answer.
pub fn dig_answer(stdout: &[u8]) -> String {
    let text = String::from_utf8_lossy(stdout);
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with(';')).collect();
    lines.join("\n")
}

/// The effective user id, read from /proc (no libc dependency).
fn unsafe_euid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2))
                .and_then(|u| u.parse().ok())
        })
        .unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dig_answers_lose_digs_remarks_but_keep_every_record() {
        let out = b";; communications error to 127.0.0.53#53: timed out\n198.18.2.2\n";
        assert_eq!(dig_answer(out), "198.18.2.2");
        assert_eq!(dig_answer(b"198.18.2.2\n2001:db8::2\n"), "198.18.2.2\n2001:db8::2");
        assert_eq!(dig_answer(b";; connection timed out; no servers could be reached\n"), "");
    }

    /// A lab for a self-test, or None (reported) where labs cannot run and none is required.
    fn self_test_lab() -> Option<Lab> {
        match Lab::new("selftest") {
            Ok(l) => Some(l),
            Err(e) => {
                assert!(std::env::var_os("NTM_REQUIRE_LAB").is_none(), "{e}");
                eprint_report(&format!("SKIPPED: {e}"));
                None
            }
        }
    }

    #[test]
    fn namespaces_are_made_linked_and_removed() {
        let Some(mut lab) = self_test_lab() else { return };
        let a = lab.netns("a", false).unwrap();
        let b = lab.netns("b", false).unwrap();
        lab.link(&a, "va", &b, "vb").unwrap();
        lab.addr(&a, "va", "192.0.2.1/24").unwrap();
        lab.addr(&b, "vb", "192.0.2.2/24").unwrap();
        lab.step("ping across the veth");
        if have("ping") {
            lab.exec(&a, &["ping", "-c", "1", "-W", "2", "192.0.2.2"]).unwrap();
        }
        let names = [a.name.clone(), b.name.clone()];
        drop(lab);
        let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
        let list = String::from_utf8_lossy(&out.stdout);
        for n in names {
            assert!(!list.contains(&n), "{n} removed");
        }
    }

    /// A process that leaves a child behind when it is stopped (as socat's `fork` children
    /// did after a failing test): stopping it stops the child too.
    #[test]
    fn a_stopped_process_takes_its_children_with_it() {
        let Some(mut lab) = self_test_lab() else { return };
        let a = lab.netns("a", false).unwrap();
        // sh ends on SIGTERM while it waits; the sleep it started would live on.
        let i = lab.spawn(&a, "parent", &["sh", "-c", "sleep 300 & wait"], &[]).unwrap();
        let parent = lab.proc(i).pid();
        assert!(lab.wait_for(5, || !descendants(parent).is_empty()), "the child started");
        let children = descendants(parent);
        lab.proc(i).stop();
        for c in children {
            let gone = lab.wait_for(5, || proc_state(c).is_none_or(|(state, _)| state == 'Z'));
            assert!(gone, "child {c} of {parent} still runs");
        }
    }
}
