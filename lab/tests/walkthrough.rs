//! The deployment walk-through of docs/servers.md and docs/agent.md, run as written: the
//! fenced blocks marked `walkthrough=HOST` are taken from the docs themselves and run in
//! their order, on fresh network namespaces, with the release binaries. So the docs cannot
//! drift from what works without this test failing. Needs root, NSD, dig, ping, socat and
//! ss; the binaries come from `cargo build --release --workspace --bins`.
//!
//! The marks (the first word of an info string stays the language, so the docs render as
//! usual):
//!
//! - ```` ```sh walkthrough=srv ```` runs on the server host, `box1` or `box2` on that box,
//!   `box` on both boxes in turn. A line ending in `&` starts a daemon: the lab starts it
//!   (and stops it by PID) and waits until it is ready (its status socket answers, an
//!   `ntmd` is registered, or else it listens); the other lines run with `sh -eu`, and
//!   must succeed.
//! - ```` ```text walkthrough=srv:/etc/nsd/nsd.conf ```` is a file the docs say to write.
//! - ```` ```sh walkthrough=copy ```` holds `scp SOURCE root@box1:DEST` lines: copies from
//!   the server host to each box (`box1` read as `box2` for the second).
//!
//! Every host gets its own root directory in the lab: absolute paths under `/etc/`, `/var/`,
//! `/run/` and `/root/` in the commands, the files and `board/default/*.json` (which the
//! commands copy from a checkout: each host's working directory holds a copy) are moved
//! under it, and nothing outside the lab is written. A box's `/etc/resolv.conf` becomes its
//! namespace's resolver. The network, which the docs leave to the reader: the servers on
//! one host with the addresses of the docs' table, a router, and two boxes with public
//! IPv4 addresses.

#![allow(clippy::print_stderr)]

use ntm_lab::deploy::{bin_dir, or_skip, payload, read_status, Deployment};
use ntm_lab::{tools_or_skip, Lab, Ns};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// One marked block of a doc.
#[derive(Debug)]
struct Block {
    /// Where it is, for messages: `docs/servers.md:42`.
    at: String,
    /// The mark after `walkthrough=`.
    mark: String,
    /// Its text, without the block's indentation.
    body: String,
}

/// The marked blocks of `text` (the doc `name`), in order.
fn marked_blocks(name: &str, text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<(usize, usize, String, Vec<String>)> = None;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some((start, ind, mark, mut body)) = open.take() {
            if trimmed.trim_end() == "```" {
                out.push(Block { at: format!("{name}:{}", start + 1), mark, body: body.join("\n") + "\n" });
            } else {
                body.push(line.get(ind..).unwrap_or(trimmed).to_string());
                open = Some((start, ind, mark, body));
            }
            continue;
        }
        if let Some(info) = trimmed.strip_prefix("```") {
            if let Some(mark) = info.split_whitespace().find_map(|w| w.strip_prefix("walkthrough=")) {
                open = Some((n, indent, mark.to_string(), Vec::new()));
            }
        }
    }
    assert!(open.is_none(), "{name}: a walk-through block is not closed");
    out
}

/// `text` with the absolute paths of a host moved under its root directory.
fn localize(text: &str, root: &Path) -> String {
    let root = root.to_string_lossy();
    let mut out = String::with_capacity(text.len());
    let mut prev = ' ';
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        let starts_path = matches!(prev, ' ' | '\t' | '\n' | '"' | '\'' | '=' | '(' | '>' | '<' | ':')
            && ["/etc/", "/var/", "/run/", "/root/"].iter().any(|p| rest.starts_with(p));
        if starts_path {
            out.push_str(&root);
        }
        let c = rest.chars().next().unwrap_or(' ');
        out.push(c);
        prev = c;
        i += c.len_utf8();
    }
    out
}

/// A host of the walk-through.
struct Host {
    ns: Ns,
    /// Its `/`.
    root: PathBuf,
    /// Its working directory: a checkout's `board/default/`, localized.
    work: PathBuf,
}

struct Walk {
    lab: Lab,
    path: String,
    srv: Host,
    boxes: Vec<Host>,
}

impl Walk {
    fn host(&self, name: &str) -> &Host {
        match name {
            "srv" => &self.srv,
            "box1" => &self.boxes[0],
            "box2" => &self.boxes[1],
            _ => panic!("no host {name}"),
        }
    }

    /// Runs a block's commands on `host`.
    fn run(&mut self, host: &str, b: &Block) {
        let text = localize(&b.body, &self.host(host).root);
        let mut chunk = String::new();
        let mut pending = String::new();
        for line in text.lines() {
            // A continued line is one command with the next.
            pending.push_str(line);
            pending.push('\n');
            if line.ends_with('\\') {
                continue;
            }
            let cmd = std::mem::take(&mut pending);
            if let Some(daemon) = cmd.trim().strip_suffix('&') {
                self.shell(host, b, &std::mem::take(&mut chunk));
                self.daemon(host, b, daemon.trim());
            } else {
                chunk.push_str(&cmd);
            }
        }
        self.shell(host, b, &chunk);
    }

    fn shell(&mut self, host: &str, b: &Block, script: &str) {
        if script.trim().is_empty() {
            return;
        }
        self.lab.step(format!("{} on {host}: {}", b.at, script.trim()));
        let h = self.host(host);
        let out = Command::new("ip")
            .args(["netns", "exec", &h.ns.name, "sh", "-euc", script])
            .current_dir(&h.work)
            .env("PATH", &self.path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} on {host}: the commands failed ({}):\n{script}\nstdout: {}\nstderr: {}",
            b.at,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.resolver(host);
    }

    /// A box's `/etc/resolv.conf` is its namespace's resolver.
    fn resolver(&mut self, host: &str) {
        let h = self.host(host);
        if let Ok(text) = std::fs::read_to_string(h.root.join("etc/resolv.conf")) {
            let ns = h.ns.clone();
            self.lab.resolv_conf(&ns, &text).unwrap();
        }
    }

    /// Starts a daemon and waits until it is ready.
    fn daemon(&mut self, host: &str, b: &Block, cmd: &str) {
        self.lab.step(format!("{} on {host}: start {cmd}", b.at));
        let (ns, work) = (self.host(host).ns.clone(), self.host(host).work.clone());
        let program = cmd.split_whitespace().next().unwrap_or("").to_string();
        let label = format!("{host}-{program}");
        let script = format!("cd '{}' && exec {cmd}", work.display());
        let i = self.lab.spawn(&ns, &label, &["sh", "-c", &script], &[("PATH", &self.path)]).unwrap();
        let pid = self.lab.proc(i).pid();
        // The status socket its configuration names, if any.
        let words: Vec<&str> = cmd.split_whitespace().collect();
        let config = words.windows(2).find(|w| w[0] == "-c").map(|w| w[1]);
        let socket = config
            .and_then(|c| std::fs::read_to_string(c).ok())
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["status_socket"].as_str().map(PathBuf::from));
        let ready = match socket {
            Some(s) if program == "ntmd" => {
                self.lab.wait_for(30, || read_status(&s).is_some_and(|st| st["registered"] == true))
            }
            Some(s) => self.lab.wait_for(15, || read_status(&s).is_some()),
            None => self.lab.wait_for(15, || {
                self.lab
                    .try_exec(&ns, &["ss", "-Hlnp"])
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("pid={pid},")))
            }),
        };
        let alive = self.lab.proc(i).alive();
        assert!(
            ready && alive,
            "{}: `{cmd}` on {host} is not ready (alive: {alive}):\n{}",
            b.at,
            self.lab.proc(i).log_text()
        );
    }

    /// Writes a file the docs give.
    fn write(&mut self, target: &str, b: &Block) {
        let (host, path) = target.split_once(':').unwrap_or_else(|| panic!("{}: no host in {target}", b.at));
        let root = self.host(host).root.clone();
        let file = PathBuf::from(localize(path, &root));
        self.lab.step(format!("{} on {host}: write {path}", b.at));
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, localize(&b.body, &root)).unwrap();
    }

    /// `scp SOURCE root@box1:DEST` lines, from the server host to each box.
    fn copy(&mut self, b: &Block) {
        for (i, name) in ["box1", "box2"].into_iter().enumerate() {
            for line in b.body.lines().map(str::trim).filter(|l| l.starts_with("scp ")) {
                let line = line.replace("box1", name);
                let words: Vec<&str> = line.split_whitespace().collect();
                let [_, src, dst] = words[..] else { panic!("{}: not `scp SOURCE DEST`: {line}", b.at) };
                let dst = dst.split_once(':').map(|(_, p)| p).unwrap_or_else(|| panic!("{}: {dst}", b.at));
                let src = localize(src, &self.srv.root);
                let dst = localize(dst, &self.boxes[i].root);
                self.lab.step(format!("{}: copy {src} to {name}:{dst}", b.at));
                std::fs::copy(&src, &dst).unwrap_or_else(|e| panic!("{}: copy {src} to {dst}: {e}", b.at));
            }
        }
    }
}

/// A host's namespace, root directory and working directory.
fn host(lab: &mut Lab, label: &str, repo: &Path) -> Host {
    let ns = lab.netns(label, false).unwrap();
    let root = lab.dir().join(label);
    // What a Debian host with the packages installed has.
    for d in ["etc", "run/nsd", "var/lib/nsd", "root"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let work = lab.dir().join(format!("{label}-checkout"));
    let board = work.join("board/default");
    std::fs::create_dir_all(&board).unwrap();
    for e in std::fs::read_dir(repo.join("board/default")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            let text = std::fs::read_to_string(&p).unwrap();
            std::fs::write(board.join(p.file_name().unwrap()), localize(&text, &root)).unwrap();
        }
    }
    Host { ns, root, work }
}

/// The network of the walk-through: the server host with the docs' addresses (NSD's
/// first: the kernel's choice of source for the wildcard-bound DC is then not the DC's
/// address, so the DC must answer from the address asked), a router, two boxes, box2
/// behind a NAT (masquerade), which drops an answer from another address.
fn network(lab: &mut Lab, repo: &Path) -> (Host, Vec<Host>) {
    let srv = host(lab, "srv", repo);
    let rtr = lab.netns("rtr", true).unwrap();
    lab.link(&srv.ns, "eth0", &rtr, "srv0").unwrap();
    for ip in ["192.0.2.53", "192.0.2.20", "192.0.2.10", "192.0.2.30", "192.0.2.40"] {
        lab.addr(&srv.ns, "eth0", &format!("{ip}/24")).unwrap();
    }
    for ip in ["2001:db8::53", "2001:db8::20", "2001:db8::30"] {
        lab.addr(&srv.ns, "eth0", &format!("{ip}/64")).unwrap();
    }
    lab.addr(&rtr, "srv0", "192.0.2.1/24").unwrap();
    lab.addr(&rtr, "srv0", "2001:db8::1/64").unwrap();
    lab.route(&srv.ns, &["default", "via", "192.0.2.1"]).unwrap();
    lab.route(&srv.ns, &["default", "via", "2001:db8::1"]).unwrap();
    let mut boxes = Vec::new();
    for (label, net) in [("box1", "198.51.100"), ("box2", "203.0.113")] {
        let b = host(lab, label, repo);
        let rif = format!("{label}-0");
        lab.link(&b.ns, "eth0", &rtr, &rif).unwrap();
        lab.addr(&rtr, &rif, &format!("{net}.1/24")).unwrap();
        lab.addr(&b.ns, "eth0", &format!("{net}.2/24")).unwrap();
        lab.route(&b.ns, &["default", "via", &format!("{net}.1")]).unwrap();
        boxes.push(b);
    }
    let nat = "table ip walk_nat {\n  chain post {\n    type nat hook postrouting priority 100; policy accept;\n    \
               ip saddr 203.0.113.0/24 oifname \"srv0\" masquerade\n  }\n}\n";
    lab.nft(&rtr, nat).unwrap();
    (srv, boxes)
}

#[test]
fn the_deployment_walk_through_of_the_docs_works() {
    let what = "walk-through";
    if !tools_or_skip(what, &["nsd", "nsd-checkconf", "dig", "ping", "socat", "ss"]) {
        return;
    }
    let Some(mut lab) = or_skip(Lab::new("walkthrough"), what) else { return };
    let bins = bin_dir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let began = Instant::now();
    let (srv, boxes) = network(&mut lab, &repo);
    let path = format!("{}:{}", bins.display(), std::env::var("PATH").unwrap_or_default());
    let mut w = Walk { lab, path, srv, boxes };

    let mut blocks = Vec::new();
    for doc in ["docs/servers.md", "docs/agent.md"] {
        let text = std::fs::read_to_string(repo.join(doc)).unwrap();
        blocks.extend(marked_blocks(doc, &text));
    }
    assert!(blocks.len() >= 8, "the docs' walk-through blocks are found: {blocks:?}");
    for b in &blocks {
        match b.mark.as_str() {
            "srv" | "box1" | "box2" => {
                let host = b.mark.clone();
                w.run(&host, b);
            }
            "box" => {
                w.run("box1", b);
                w.run("box2", b);
            }
            "copy" => w.copy(b),
            m if m.contains(':') => w.write(m, b),
            m => panic!("{}: unknown walk-through mark {m}", b.at),
        }
    }
    eprintln!("walk-through: every step of the docs ran in {:.1?}", began.elapsed());

    // A TCP connection between the boxes, by name.
    w.lab.step("TCP echo from box1 to box2 by name");
    let b2 = w.boxes[1].ns.clone();
    w.lab.spawn(&b2, "box2-echo", &["socat", "TCP-LISTEN:7000,reuseaddr,fork", "EXEC:cat"], &[]).unwrap();
    let listening = w
        .lab
        .wait_for(5, || w.lab.try_exec(&b2, &["ss", "-Hlnt", "sport = :7000"]).is_ok_and(|o| !o.stdout.is_empty()));
    assert!(listening, "the echo server listens");
    let data = payload(64 * 1024, 13);
    let (inp, out) = (w.lab.dir().join("echo.in"), w.lab.dir().join("echo.out"));
    std::fs::write(&inp, &data).unwrap();
    let cmd = format!("socat -t 10 -T 20 - TCP:box2.home.ntm.example.net:7000 <{} >{}", inp.display(), out.display());
    let b1 = w.boxes[0].ns.clone();
    let _ = w.lab.try_exec(&b1, &["sh", "-c", &cmd]);
    let back = std::fs::read(&out).unwrap_or_default();
    assert!(back == data, "64 KiB echoed intact over the tunnel ({} bytes back)", back.len());

    // The example's virtual prefixes meet no route of the boxes.
    for i in 0..2 {
        let log = std::fs::read_to_string(w.lab.dir().join(format!("box{}-ntmd.log", i + 1))).unwrap();
        assert!(!log.contains("overlaps the route"), "box{}: no overlap warning: {log}", i + 1);
    }
    eprintln!("walk-through: whole test {:.1?} ({} blocks)", began.elapsed(), blocks.len());
}

/// `ntmd` warns, once per route and prefix, when a virtual prefix it routes into its TUN
/// device overlaps a route already on the box; the box still registers.
#[test]
fn a_virtual_prefix_overlapping_a_route_on_the_box_is_warned_of() {
    let label = "overlap";
    let Some(mut d) = or_skip(Deployment::start(label), label) else { return };
    let ns = d.boxes[0].ns.clone();
    // A route inside the agent's virtual prefix 198.18.0.0/16, beside DC-A's 198.18.1.0/24.
    d.lab.route(&ns, &["198.18.200.0/24", "via", "198.51.100.1"]).unwrap();
    let cfg = d.agent_config(0);
    d.start_agent(0, &cfg).unwrap();
    d.wait_registered(0, 30).expect("box a registers");
    let log = d.lab.proc(d.boxes[0].proc.unwrap()).log_text();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("overlaps the route")).collect();
    assert_eq!(warnings.len(), 1, "one warning: {log}");
    assert!(warnings[0].contains("WARN"), "{}", warnings[0]);
    assert!(
        warnings[0].contains("virtual prefix 198.18.0.0/16 overlaps the route 198.18.200.0/24 dev eth0"),
        "it names both: {}",
        warnings[0]
    );
    eprintln!("{}", warnings[0]);
}
