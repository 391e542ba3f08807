//! The AES-CCM micro-benchmark (part `crypto`): sealing and opening of data packets on one
//! core, the `ccm` crate one packet at a time beside `ntm-aead` one at a time and eight at
//! once (its multi-buffer CCM, which the node's batch calls use), for 64-, 512- and
//! 1400-byte packets with a 20-byte header as associated data. This program is built with
//! the release profile's code generation, as the daemons are, and all three are compiled
//! in `ntm-aead` (at opt-level 3; the `ccm` crate through its `reference` feature).
//! (`./scripts/bench.sh --only crypto` runs just this part, in a few seconds.)

use crate::opts::Opts;
use crate::table::Table;
use ntm_aead::reference::Reference;
use ntm_aead::{Aead, Message, LANES, NONCE_LEN, TAG_LEN};
use std::hint::black_box;
use std::time::{Duration, Instant};

const AAD_LEN: usize = 20;

/// Runs `f` (which handles `per_call` packets) in five rounds of about `budget / 5`;
/// nanoseconds per packet in the fastest round (other work on the machine only slows).
fn time(budget: Duration, per_call: usize, mut f: impl FnMut(u64)) -> f64 {
    for i in 0..1000 {
        f(i);
    }
    let mut best = f64::MAX;
    let mut calls = 0u64;
    for _ in 0..5 {
        let start = Instant::now();
        let first = calls;
        while start.elapsed() < budget / 5 {
            for _ in 0..50 {
                f(calls);
                calls += 1;
            }
        }
        let ns = start.elapsed().as_nanos() as f64 / ((calls - first) as f64 * per_call as f64);
        best = best.min(ns);
    }
    best
}

fn nonce(i: u64) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[4..].copy_from_slice(&i.to_be_bytes());
    n
}

pub fn part_crypto(o: &Opts) -> Table {
    let budget = Duration::from_millis(if o.quick { 100 } else { 500 });
    let mut t = Table::new(
        "AES-128-CCM on one core (ns per packet, Gbit/s of payload)",
        &["packet", "operation", "ccm crate, per packet", "ntm-aead, per packet", "ntm-aead, batch of 8"],
    );
    let key = [0x42u8; 16];
    let reference = Reference::new(&key);
    let ours = Aead::new(&key);
    let aad = [7u8; AAD_LEN];
    for size in [64usize, 512, 1400] {
        let mut one = vec![0x5au8; size];
        let mut many: Vec<Vec<u8>> = (0..LANES).map(|_| vec![0x5au8; size]).collect();
        let cell = |ns: f64| format!("{ns:.0} ns, {:.2} Gbit/s", size as f64 * 8.0 / ns);
        let seal_ref = time(budget, 1, |i| {
            let _ = black_box(reference.seal(&nonce(i), &aad, &mut one));
        });
        let seal_one = time(budget, 1, |i| {
            let _ = black_box(ours.seal(&nonce(i), &aad, &mut one));
        });
        let seal_many = time(budget, LANES, |i| {
            let mut msgs: Vec<Message<'_>> = many
                .iter_mut()
                .enumerate()
                .map(|(k, b)| Message { nonce: nonce(i * 8 + k as u64), aad: &aad, buf: b, tag: [0; TAG_LEN] })
                .collect();
            let mut out = [Ok(()); LANES];
            ours.seal_many(&mut msgs, &mut out);
            black_box(&msgs);
        });
        t.row(vec![format!("{size} B"), "seal".into(), cell(seal_ref), cell(seal_one), cell(seal_many)]);

        // Packets that verify: sealed once, opened from a fresh copy each time.
        let mut sealed = vec![0x5au8; size];
        let Ok(tag) = ours.seal(&nonce(1), &aad, &mut sealed) else { continue };
        let open_ref = time(budget, 1, |_| {
            one.copy_from_slice(&sealed);
            let _ = black_box(reference.open(&nonce(1), &aad, &mut one, &tag));
        });
        let open_one = time(budget, 1, |_| {
            one.copy_from_slice(&sealed);
            let _ = black_box(ours.open(&nonce(1), &aad, &mut one, &tag));
        });
        let open_many = time(budget, LANES, |_| {
            let mut msgs: Vec<Message<'_>> = many
                .iter_mut()
                .map(|b| {
                    b.copy_from_slice(&sealed);
                    Message { nonce: nonce(1), aad: &aad, buf: b, tag }
                })
                .collect();
            let mut out = [Ok(()); LANES];
            ours.open_many(&mut msgs, &mut out);
            black_box(&out);
        });
        t.row(vec![format!("{size} B"), "open".into(), cell(open_ref), cell(open_one), cell(open_many)]);
    }
    t.note("the fastest of five rounds per cell; batch cells are per packet of a call that seals or opens eight");
    t
}
