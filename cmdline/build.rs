//! Gives `--version` the git commit it was built from, as `NTM_GIT_COMMIT`, when that is
//! cheap to know: the variable set by whoever builds (a packager), or else this workspace is
//! a git checkout and git is installed. A release tarball, vendored sources, a tree unpacked
//! inside some other repository (a Buildroot or OpenWrt build directory), or no git at all
//! give no commit, and the build goes on: nothing here can fail it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=NTM_GIT_COMMIT");
    if let Ok(commit) = std::env::var("NTM_GIT_COMMIT") {
        println!("cargo:rustc-env=NTM_GIT_COMMIT={commit}");
        return;
    }
    let Some(root) =
        std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from).and_then(|d| d.parent().map(Path::to_path_buf))
    else {
        return;
    };
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git").arg("-C").arg(&root).args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    // Only a repository whose top is this workspace: not one that merely contains it.
    let same = |a: &Path, b: &Path| a.canonicalize().ok().is_some_and(|a| b.canonicalize().is_ok_and(|b| a == b));
    match git(&["rev-parse", "--show-toplevel"]) {
        Some(top) if same(Path::new(&top), &root) => {}
        _ => return,
    }
    let Some(commit) = git(&["rev-parse", "--short=12", "HEAD"]) else { return };
    println!("cargo:rustc-env=NTM_GIT_COMMIT={commit}");
    // Built again when HEAD moves: HEAD itself, the branch it names, and packed refs.
    let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for name in watched {
        // A file that does not exist would make cargo run this script on every build.
        if let Some(p) = git(&["rev-parse", "--git-path", &name]).map(|p| root.join(p)).filter(|p| p.exists()) {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
}
