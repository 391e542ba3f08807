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

/// Seals the eight buffers of `many` with `aead` in one call (nonces from `i`).
fn seal_eight(aead: &Aead, aad: &[u8], many: &mut [Vec<u8>], i: u64) {
    let mut msgs: Vec<Message<'_>> = many
        .iter_mut()
        .enumerate()
        .map(|(k, b)| Message { nonce: nonce(i * 8 + k as u64), aad, buf: b, tag: [0; TAG_LEN] })
        .collect();
    let mut out = [Ok(()); LANES];
    aead.seal_many(&mut msgs, &mut out);
    black_box(&msgs);
}

/// Opens eight fresh copies of `sealed` with `aead` in one call.
fn open_eight(aead: &Aead, aad: &[u8], many: &mut [Vec<u8>], sealed: &[u8], tag: [u8; TAG_LEN]) {
    let mut msgs: Vec<Message<'_>> = many
        .iter_mut()
        .map(|b| {
            b.copy_from_slice(sealed);
            Message { nonce: nonce(1), aad, buf: b, tag }
        })
        .collect();
    let mut out = [Ok(()); LANES];
    aead.open_many(&mut msgs, &mut out);
    black_box(&out);
}

pub fn part_crypto(o: &Opts) -> Table {
    let budget = Duration::from_millis(if o.quick { 100 } else { 500 });
    let key = [0x42u8; 16];
    let reference = Reference::new(&key);
    let ours = Aead::new(&key);
    // Where the CPU has VAES, ntm-aead's batches go through it; the same batches through
    // the `aes` crate's AES-NI backend are measured beside them.
    let narrow = ours.uses_vaes().then(|| Aead::without_vaes(&key));
    let mut head = vec!["packet", "operation", "ccm crate, per packet", "ntm-aead, per packet", "ntm-aead, batch of 8"];
    if narrow.is_some() {
        head[4] = "ntm-aead, batch of 8 (VAES)";
        head.push("ntm-aead, batch of 8 (AES-NI only)");
    }
    let mut t = Table::new("AES-128-CCM on one core (ns per packet, Gbit/s of payload)", &head);
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
        let seal_many = time(budget, LANES, |i| seal_eight(&ours, &aad, &mut many, i));
        let mut row = vec![format!("{size} B"), "seal".into(), cell(seal_ref), cell(seal_one), cell(seal_many)];
        if let Some(n) = &narrow {
            row.push(cell(time(budget, LANES, |i| seal_eight(n, &aad, &mut many, i))));
        }
        t.row(row);

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
        let open_many = time(budget, LANES, |_| open_eight(&ours, &aad, &mut many, &sealed, tag));
        let mut row = vec![format!("{size} B"), "open".into(), cell(open_ref), cell(open_one), cell(open_many)];
        if let Some(n) = &narrow {
            row.push(cell(time(budget, LANES, |_| open_eight(n, &aad, &mut many, &sealed, tag))));
        }
        t.row(row);
    }
    t.note("the fastest of five rounds per cell; batch cells are per packet of a call that seals or opens eight");
    t
}
