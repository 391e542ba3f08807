//! Replays the committed fuzz corpus (house style, rule 17): every file under
//! `fuzz/corpus/<target>/` goes through the same `ntm_proto::fuzzing` entry point as the
//! fuzzer calls, so an input that once crashed stays fixed. A target without a corpus
//! directory, or with an empty one, fails the test: add seeds with the target.
//!
//! The hand-built seeds of the engine targets (`ntm_proto::fuzzing::seeds`) must be in the
//! corpus byte for byte; after changing one, `NTM_WRITE_SEEDS=1 cargo test -p ntm-proto
//! --test fuzz_corpus` writes them.
#![allow(clippy::disallowed_methods)] // the test harness reads corpus files; the library never does

use ntm_proto::fuzzing::{seeds, Target, SERVER_TARGETS, TARGETS};
use std::path::{Path, PathBuf};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("fuzz").join("corpus").join(target)
}

/// Runs every input of `target`'s corpus; returns how many there were.
fn replay(target: &Target) -> usize {
    let dir = corpus_dir(target.name);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("fuzz target {:?} has no corpus at {}: {e}", target.name, dir.display()));
    let mut files: Vec<PathBuf> =
        entries.map(|e| e.expect("readable corpus directory").path()).filter(|p| p.is_file()).collect();
    files.sort();
    for path in &files {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let outcome = std::panic::catch_unwind(|| (target.run)(&data));
        assert!(outcome.is_ok(), "fuzz target {:?} panicked on {}", target.name, path.display());
    }
    files.len()
}

#[test]
fn every_target_has_a_corpus_and_replays_it() {
    assert!(!TARGETS.is_empty());
    for target in TARGETS {
        let n = replay(target);
        assert!(n > 0, "the corpus of fuzz target {:?} is empty", target.name);
    }
}

#[test]
fn every_corpus_directory_belongs_to_a_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("fuzz").join("corpus");
    for entry in std::fs::read_dir(&root).expect("fuzz/corpus exists") {
        let name = entry.expect("readable").file_name().into_string().expect("UTF-8 name");
        // Without the `servers` feature the server roles' targets do not exist.
        let known = TARGETS.iter().any(|t| t.name == name) || SERVER_TARGETS.contains(&name.as_str());
        assert!(known, "fuzz/corpus/{name} has no target in ntm_proto::fuzzing");
    }
}

/// Each cargo-fuzz binary calls the entry point of the same name.
#[test]
fn every_target_has_a_fuzz_binary() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("fuzz").join("fuzz_targets");
    for target in TARGETS {
        let path = dir.join(format!("{}.rs", target.name));
        let src = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let call = format!("ntm_proto::fuzzing::{}(", target.name);
        assert!(String::from_utf8_lossy(&src).contains(&call), "{} does not call {call}..)", path.display());
    }
}

/// The hand-built seeds, which drive each engine target down its main paths, are kept.
#[test]
fn hand_built_seeds_are_in_the_corpus() {
    let write = std::env::var_os("NTM_WRITE_SEEDS").is_some();
    for (target, name, data) in seeds() {
        let path = corpus_dir(target).join(name);
        if write {
            std::fs::write(&path, &data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        let kept = std::fs::read(&path).unwrap_or_else(|e| panic!("seed {}: {e}", path.display()));
        assert!(kept == data, "{} differs from the seed of that name", path.display());
    }
}
