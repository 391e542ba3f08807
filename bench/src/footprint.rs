//! Part: footprint. Binary sizes (this build, the speed build, cross builds, the peers)
//! and resident memory (from the tunnel part and the idle servers).

use crate::deploy::NtmBuild;
use crate::peers::tool_path;
use crate::table::Table;
use crate::util::mib;
use ntm_lab::have;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Results kept for the footprint table.
#[derive(Debug, Default)]
pub struct Footprint {
    /// (what, idle RSS KiB, peak RSS KiB)
    pub rss: Vec<(String, u64, u64)>,
}

fn file_size(p: &Path) -> Option<u64> {
    std::fs::metadata(p).ok().map(|m| m.len())
}

fn stripped(p: &Path) -> &'static str {
    match Command::new("file").arg("-L").arg(p).output() {
        Ok(o) if String::from_utf8_lossy(&o.stdout).contains("not stripped") => " (not stripped)",
        _ => "",
    }
}

/// The size of a stripped copy of `p`, KiB, if it was not stripped.
fn stripped_copy(p: &Path) -> Option<f64> {
    if stripped(p).is_empty() || !have("strip") {
        return None;
    }
    let tmp = std::env::temp_dir().join(format!("ntm-bench-strip-{}", std::process::id()));
    let ok = Command::new("strip").arg("-o").arg(&tmp).arg(p).status().is_ok_and(|s| s.success());
    let size = file_size(&tmp);
    let _ = std::fs::remove_file(&tmp);
    if ok {
        size.map(|s| s as f64 / 1024.0)
    } else {
        None
    }
}

pub fn part_footprint(root: &Path, bins: &Path, fp: &Footprint, servers_rss: &[(String, u64)]) -> Vec<Table> {
    let names = ["ntmd", "ntm-as", "ntm-dc", "ntm-rs", "ntm-ns"];
    let mut cols: Vec<(String, PathBuf)> = vec![("x86_64 (this build)".into(), bins.to_path_buf())];
    if let Ok(rd) = std::fs::read_dir(root.join("target/cross")) {
        let mut triples: Vec<PathBuf> = rd.flatten().map(|e| e.path()).filter(|p| p.join("release").is_dir()).collect();
        triples.sort();
        for t in triples {
            let rel = t.join("release");
            if names.iter().any(|n| rel.join(n).is_file()) {
                cols.push((t.file_name().unwrap_or_default().to_string_lossy().into_owned(), rel));
            }
        }
    }
    let mut header = vec!["binary".to_string()];
    header.extend(cols.iter().map(|c| format!("{} KiB", c.0)));
    let mut t = Table { title: "Footprint: binary sizes".into(), header, ..Table::default() };
    t.intro = "Sizes of the files as built (the release profile strips them; `(not stripped)` where `file` \
               says otherwise). Cross builds are whatever `cross/build.sh` left in `target/cross/`."
        .into();
    for n in names {
        let mut row = vec![format!("`{n}`")];
        for (_, dir) in &cols {
            let p = dir.join(n);
            row.push(match file_size(&p) {
                Some(s) => format!("{:.1}{}", s as f64 / 1024.0, stripped(&p)),
                None => "not built".into(),
            });
        }
        t.row(row);
    }
    let speed = NtmBuild::Speed.ntmd(bins);
    let mut row = vec!["`ntmd`, profile speed (opt-level 3)".to_string()];
    row.push(match file_size(&speed) {
        Some(s) => format!("{:.1}{}", s as f64 / 1024.0, stripped(&speed)),
        None => format!("not built ({})", NtmBuild::Speed.how()),
    });
    row.extend(cols.iter().skip(1).map(|_| "-".to_string()));
    t.row(row);
    if cols.len() == 1 {
        t.note("no cross build found under target/cross/ (cross/build.sh makes them)");
    }
    let mut peers = Table::new("Footprint: the peers' binaries (x86_64, as installed)", &["binary", "KiB", "notes"]);
    for (name, note) in [
        ("wireguard-go", "Debian package; Go, statically linked"),
        ("boringtun-cli", "`cargo install boringtun-cli`"),
        ("fastd", "Debian package; links shared libraries (not counted)"),
    ] {
        match tool_path(name) {
            Some(p) => peers.row(vec![
                format!("`{name}`"),
                format!("{:.1}{}", file_size(&p).unwrap_or(0) as f64 / 1024.0, stripped(&p)),
                match stripped_copy(&p) {
                    Some(kib) => format!("{note}; {kib:.1} KiB after `strip`"),
                    None => note.into(),
                },
            ]),
            None => peers.skip(&format!("`{name}`"), "skipped: not installed"),
        }
    }
    let mut rss = Table::new("Footprint: resident memory", &["process", "idle MiB", "peak under load MiB", "from"]);
    for (what, idle, peak) in &fp.rss {
        rss.row(vec![
            what.clone(),
            mib(*idle),
            mib(*peak),
            "the direct tunnel runs above (VmRSS before, VmHWM after)".into(),
        ]);
    }
    for (what, kib) in servers_rss {
        rss.row(vec![what.clone(), mib(*kib), "-".into(), "the lab deployment, idle after the runs (VmRSS)".into()]);
    }
    if fp.rss.is_empty() && servers_rss.is_empty() {
        rss.skip("all", "skipped: the tunnel part did not run");
    }
    vec![t, peers, rss]
}
