//! `ntm_lab::clean_up_on_panic`: the lab programs (the demo, the benchmarks) are built with
//! the release profile, whose `panic = "abort"` runs no destructor, so a panic would leave
//! their namespaces and daemons behind unless the panic hook removes them.
//!
//! The test re-executes itself as a child (`NTM_CLEANUP_CHILD` set) that makes a lab with a
//! namespace and a process in it, *forgets* the lab so that no destructor can clean up, and
//! panics. The parent then checks that the namespace and the process are gone: only the hook
//! can have removed them.

#![allow(clippy::print_stdout)]

use ntm_lab::deploy::or_skip;
use ntm_lab::Lab;
use std::process::Command;

const CHILD: &str = "NTM_CLEANUP_CHILD";
const TEST: &str = "a_panicking_lab_program_leaves_no_namespace_or_process";

fn child() {
    ntm_lab::clean_up_on_panic();
    let Some(mut lab) = or_skip(Lab::new("panic"), "panic clean-up") else {
        println!("child: skipped");
        return;
    };
    let ns = lab.netns("a", false).expect("namespace");
    let i = lab.spawn(&ns, "sleeper", &["sleep", "60"], &[]).expect("spawn");
    let pid = lab.proc(i).pid();
    println!("child: ns {} pid {pid}", ns.name);
    std::mem::forget(lab);
    panic!("a panic on purpose, with the lab forgotten");
}

/// Whether `pid` is a live process (a zombie waiting for its reaper is not).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

#[test]
fn a_panicking_lab_program_leaves_no_namespace_or_process() {
    if std::env::var_os(CHILD).is_some() {
        child();
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe).args([TEST, "--exact", "--nocapture"]).env(CHILD, "1").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stdout.contains("child: skipped") {
        return;
    }
    assert!(!out.status.success(), "the child panicked: {stdout}\n{stderr}");
    assert!(stderr.contains("a panic on purpose"), "the usual panic message still comes first: {stderr}");
    let line = stdout.lines().find_map(|l| l.strip_prefix("child: ns ")).expect("the child made its lab");
    let (ns, pid) = line.split_once(" pid ").unwrap();
    let pid: u32 = pid.trim().parse().unwrap();

    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(!list.lines().any(|l| l.split_whitespace().next() == Some(ns)), "namespace {ns} is gone: {list}");
    assert!(!alive(pid), "process {pid} was stopped");
}
