//! Part: idle traffic. nftables counters on both boxes' uplinks while they are
//! registered and idle, scaled to a day; wireguard-go's keepalive beside them.

use crate::opts::Opts;
use crate::peers::{tool, wg_keys, Peer};
use crate::table::Table;
use crate::util::{e2s, log, run_in, Res};
use ntm_lab::deploy::{Access, Deployment, NatKind};
use ntm_lab::{have, Lab, Ns};
use ntm_proto::engine::account::DEFAULT_KEY_LIFETIME;
use serde_json::Value;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

/// What the idle part counts on a box's uplink: (protocol, port, whether the port is the
/// box's own, counter comment). Each gets a counter per direction; "all" counts everything.
const COUNTED: [(&str, u16, bool, &str); 4] = [
    ("udp", 4500, true, "ntm-udp"),
    ("tcp", 4463, false, "ntm-ns"),
    ("tcp", 4443, false, "ntm-as"),
    ("udp", 51820, true, "wg"),
];

/// The nftables counters of [`COUNTED`] on eth0, both directions.
fn counters_ruleset() -> String {
    let chain = |name: &str, hook: &str, dev: &str, incoming: bool| {
        let mut c = format!("  chain {name} {{\n    type filter hook {hook} priority 0; policy accept;\n");
        for (proto, port, own, comment) in COUNTED {
            // The box's own port is the destination of what comes in, the source of what goes out.
            let side = if own == incoming { "dport" } else { "sport" };
            let _ = writeln!(c, "    {dev} \"eth0\" {proto} {side} {port} counter comment \"{comment}\"");
        }
        let _ = writeln!(c, "    {dev} \"eth0\" counter comment \"all\"\n  }}");
        c
    };
    format!(
        "table inet ntmbench\ndelete table inet ntmbench\ntable inet ntmbench {{\n{}{}}}\n",
        chain("in", "input", "iifname", true),
        chain("out", "output", "oifname", false)
    )
}

/// (packets, bytes) by counter comment, both directions summed.
pub fn counters(lab: &Lab, ns: &Ns) -> std::collections::HashMap<String, (u64, u64)> {
    let mut m = std::collections::HashMap::new();
    let Ok(out) = lab.try_exec(ns, &["nft", "-j", "list", "table", "inet", "ntmbench"]) else { return m };
    let Ok(v) = serde_json::from_slice::<Value>(&out.stdout) else { return m };
    for item in v["nftables"].as_array().into_iter().flatten() {
        let rule = &item["rule"];
        let Some(c) = rule["comment"].as_str() else { continue };
        for e in rule["expr"].as_array().into_iter().flatten() {
            if let (Some(p), Some(b)) = (e["counter"]["packets"].as_u64(), e["counter"]["bytes"].as_u64()) {
                let x = m.entry(c.to_string()).or_insert((0, 0));
                x.0 += p;
                x.1 += b;
            }
        }
    }
    m
}

/// Logins a day at the AS's default key lifetime: a node logs in again min(300 s, lifetime / 2)
/// before its key expires (docs/protocol.md, "Re-login").
fn logins_per_day() -> f64 {
    let lifetime = DEFAULT_KEY_LIFETIME.as_secs();
    let period = lifetime - (lifetime / 2).min(300);
    86_400.0 / period.max(1) as f64
}

pub fn part_idle(o: &Opts) -> Table {
    let mut t = Table::new(
        "Idle traffic of a registered, reachable box",
        &[
            "box",
            "keepalive",
            "in the window: packets / bytes",
            "per day: keepalive",
            "per day: with re-login",
            "notes",
        ],
    );
    let ns_interval = 10u64;
    let lifetime_h = DEFAULT_KEY_LIFETIME.as_secs() / 3600;
    let logins = logins_per_day();
    t.intro = format!(
        "Both boxes behind port-restricted NATs, registered, no tunnel; nftables counters on each box's \
         uplink (IP bytes, both directions) over a {} s window after everything settled. The NS asks for \
         a keepalive every {ns_interval} s in this run instead of every 3600 s, so the window holds {} of \
         them; the bytes of one are scaled to 24 a day. UDP keepalives go every 20 s (the DC's default), so \
         their window bytes scale by time. \"With re-login\" adds {logins:.3} logins a day (the AS's default \
         key lifetime is {lifetime_h} h), each costing what the start-up cost here (all IP traffic of the box \
         until the window: DNS, TLS login, registration, NS registration).",
        o.idle_secs,
        o.idle_secs / ns_interval
    );
    if !have("nft") {
        t.skip("all", "skipped: `nft` not installed");
        return t;
    }
    match idle(o, ns_interval) {
        Ok(rows) => {
            for r in rows {
                t.row(r);
            }
        }
        Err(e) => t.skip("idle", &format!("failed: {e}")),
    }
    t.note("target: at most 10 KB a day with the NS (the per-day columns are the estimate to hold against it)");
    t
}

fn idle(o: &Opts, ns_interval: u64) -> Res<Vec<Vec<String>>> {
    let mut d = Deployment::start_with(
        "bench-idle",
        [Access::Nat(NatKind::PortRestricted), Access::Nat(NatKind::PortRestricted)],
    )
    .map_err(e2s)?;
    // The NS asks for a keepalive every `ns_interval` seconds in this run.
    let ns_json = d.lab.dir().join("ns.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&ns_json).map_err(e2s)?).map_err(e2s)?;
    cfg["keepalive_interval_secs"] = ns_interval.into();
    std::fs::write(&ns_json, cfg.to_string()).map_err(e2s)?;
    d.restart_server("ns").map_err(e2s)?;
    let (a, b, srv) = (d.boxes[0].ns.clone(), d.boxes[1].ns.clone(), d.srv.clone());
    for ns in [&a, &b] {
        d.lab.nft(ns, &counters_ruleset()).map_err(e2s)?;
    }
    // Beside box a's agent: wireguard-go to a peer in the server namespace, with the
    // persistent keepalive of 25 s that peers behind NAT use. Started before the agent.
    let mut wg_note = String::from("skipped: wireguard-go or wg not installed");
    let wg = if Peer::WireguardGo.missing().is_none() {
        match idle_wg(&mut d, &a, &srv) {
            Ok(iface) => Some(iface),
            Err(e) => {
                wg_note = format!("failed: {e}");
                None
            }
        }
    } else {
        None
    };
    d.up_with(|_, i, c| {
        c["log_level"] = "info".into();
        if i == 1 {
            c["keepalive"] = "ns".into();
        }
    })
    .map_err(e2s)?;
    if !d.lab.wait_for(15, || d.status(1).is_some_and(|s| s["notifications_ready"] == true)) {
        return Err("box b is not reachable through the NS".into());
    }
    std::thread::sleep(Duration::from_secs(3));
    let start = [counters(&d.lab, &a), counters(&d.lab, &b)];
    log(&format!("idle: counting for {} s", o.idle_secs));
    std::thread::sleep(Duration::from_secs(o.idle_secs));
    let end = [counters(&d.lab, &a), counters(&d.lab, &b)];
    let delta = |i: usize, k: &str| {
        let s = start[i].get(k).copied().unwrap_or_default();
        let e = end[i].get(k).copied().unwrap_or_default();
        (e.0.saturating_sub(s.0), e.1.saturating_sub(s.1))
    };
    // Everything on the link up to the window but wireguard-go's: DNS, login, registration.
    let startup = |i: usize| {
        let all = start[i].get("all").copied().unwrap_or_default().1;
        all.saturating_sub(start[i].get("wg").copied().unwrap_or_default().1)
    };
    let w = o.idle_secs as f64;
    let day = 86_400.0;
    let kb = |b: f64| format!("{:.1} KB", b / 1000.0);
    let mut rows = Vec::new();
    // Box a: UDP keepalive; everything of the agent is on its UDP port.
    let (pa, ba) = delta(0, "ntm-udp");
    let a_day = ba as f64 * day / w;
    rows.push(vec![
        "a (ntmd)".into(),
        "UDP to the DC, every 20 s".into(),
        format!("{pa} / {ba} B"),
        kb(a_day),
        kb(a_day + logins_per_day() * startup(0) as f64),
        format!("start-up {} B; all IP traffic on the link in the window: {} B", startup(0), delta(0, "all").1),
    ]);
    // Box b: NS keepalive; one exchange per interval, scaled to hourly. Anything on its UDP
    // port scales by time.
    let (pn, bn) = delta(1, "ntm-ns");
    let (pu, bu) = delta(1, "ntm-udp");
    let exchanges = (w / ns_interval as f64).max(1.0);
    let b_day = bn as f64 / exchanges * 24.0 + bu as f64 * day / w;
    rows.push(vec![
        "**b (ntmd)**".into(),
        format!("TCP to the NS, hourly (measured every {ns_interval} s)"),
        format!("{} / {} B", pn + pu, bn + bu),
        kb(b_day),
        kb(b_day + logins_per_day() * startup(1) as f64),
        format!(
            "{:.0} B per keepalive exchange; UDP in the window {bu} B; start-up {} B; all IP traffic on the link in the window: {} B",
            bn as f64 / exchanges,
            startup(1),
            delta(1, "all").1
        ),
    ]);
    if let Some(iface) = wg {
        let (pw, bw) = delta(0, "wg");
        let shook = d
            .lab
            .try_exec(&a, &[&tool("wg"), "show", &iface, "latest-handshakes"])
            .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().nth(1).is_some_and(|t| t != "0"))
            .unwrap_or(false);
        let mut note = format!(
            "scaled by time; includes its periodic handshakes; start-up {} B; handshake {}",
            start[0].get("wg").copied().unwrap_or_default().1,
            if shook { "done" } else { "NOT done" }
        );
        if o.idle_secs < 25 {
            note.push_str("; the window is shorter than one keepalive interval, so this row means little");
        }
        rows.push(vec![
            "a (wireguard-go)".into(),
            "persistent keepalive 25 s (to a peer in the server namespace)".into(),
            format!("{pw} / {bw} B"),
            kb(bw as f64 * day / w),
            "-".into(),
            note,
        ]);
    } else {
        rows.push(vec!["a (wireguard-go)".into(), wg_note]);
    }
    Ok(rows)
}

/// wireguard-go in box a and in the server namespace; box a's interface.
fn idle_wg(d: &mut Deployment, a: &Ns, srv: &Ns) -> Res<String> {
    let suffix = std::process::id() % 100_000;
    let (ia, is) = (format!("wgi{suffix}a"), format!("wgi{suffix}s"));
    let dir = d.lab.dir().to_path_buf();
    let (ka, pa) = wg_keys(&dir, &ia)?;
    let (ks, ps) = wg_keys(&dir, &is)?;
    for (ns, iface) in [(a, &ia), (srv, &is)] {
        d.lab
            .spawn(ns, &format!("idle-{iface}"), &["wireguard-go", "-f", iface], &[("WG_PROCESS_FOREGROUND", "1")])
            .map_err(e2s)?;
        let sock = PathBuf::from(format!("/var/run/wireguard/{iface}.sock"));
        if !d.lab.wait_for(10, || sock.exists()) {
            return Err(format!("no control socket for {iface}"));
        }
    }
    let wg = tool("wg");
    run_in(
        &d.lab,
        srv,
        &[
            &wg,
            "set",
            &is,
            "private-key",
            &ks.to_string_lossy(),
            "listen-port",
            "51820",
            "peer",
            &pa,
            "allowed-ips",
            "198.19.210.1/32",
        ],
    )?;
    run_in(&d.lab, srv, &["ip", "link", "set", &is, "up"])?;
    run_in(
        &d.lab,
        a,
        &[
            &wg,
            "set",
            &ia,
            "private-key",
            &ka.to_string_lossy(),
            "listen-port",
            "51820",
            "peer",
            &ps,
            "allowed-ips",
            "198.19.210.2/32",
            "endpoint",
            "192.0.2.2:51820",
            "persistent-keepalive",
            "25",
        ],
    )?;
    run_in(&d.lab, a, &["ip", "link", "set", &ia, "up"])?;
    Ok(ia)
}
