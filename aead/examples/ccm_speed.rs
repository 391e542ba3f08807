//! Micro-benchmark of AES-128-CCM sealing and opening: the `ccm` crate one packet at a
//! time, this crate one packet at a time, and this crate eight packets at once, for
//! 64-, 512- and 1400-byte packets with a 20-byte header as aad (the tunnel's data
//! packets). Prints a Markdown table of nanoseconds per packet and Gbit/s of payload.
//!
//! `cargo run --release -p ntm-aead --example ccm_speed [MILLISECONDS per cell]`
//! (the release profile builds this crate and `aes` at opt-level 3, as in the daemons).

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use ccm::aead::generic_array::GenericArray;
use ccm::aead::{AeadInPlace, KeyInit};
use ccm::consts::{U12, U16};
use ntm_aead::{Aead, Message, LANES, NONCE_LEN, TAG_LEN};
use std::hint::black_box;
use std::time::{Duration, Instant};

type Reference = ccm::Ccm<aes::Aes128Enc, U16, U12>;

const AAD_LEN: usize = 20;

/// Runs `f` (which handles `per_call` packets) in five rounds of about `budget / 5` each;
/// nanoseconds per packet in the fastest round (the machine may be shared).
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

fn main() {
    let ms = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(300);
    let budget = Duration::from_millis(ms);
    let key = [0x42u8; 16];
    let reference = Reference::new(GenericArray::from_slice(&key));
    let ours = Aead::new(&key);
    let aad = [7u8; AAD_LEN];
    println!("| packet | operation | ccm crate, per packet | ntm-aead, per packet | ntm-aead, batch of {LANES} |");
    println!("|---|---|---|---|---|");
    for size in [64usize, 512, 1400] {
        let mut one = vec![0x5au8; size];
        let mut many: Vec<Vec<u8>> = (0..LANES).map(|_| vec![0x5au8; size]).collect();
        let cell = |ns: f64| format!("{ns:.0} ns, {:.2} Gbit/s", size as f64 * 8.0 / ns);

        let seal_ref = time(budget, 1, |i| {
            let t = reference.encrypt_in_place_detached(GenericArray::from_slice(&nonce(i)), &aad, &mut one).unwrap();
            black_box(t);
        });
        let seal_one = time(budget, 1, |i| {
            black_box(ours.seal(&nonce(i), &aad, &mut one).unwrap());
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
        println!("| {size} B | seal | {} | {} | {} |", cell(seal_ref), cell(seal_one), cell(seal_many));

        // Open packets that verify: sealed once, opened from a fresh copy each time.
        let plain = vec![0x5au8; size];
        let mut sealed = plain.clone();
        let tag = ours.seal(&nonce(1), &aad, &mut sealed).unwrap();
        let open_ref = time(budget, 1, |_| {
            one.copy_from_slice(&sealed);
            reference
                .decrypt_in_place_detached(
                    GenericArray::from_slice(&nonce(1)),
                    &aad,
                    &mut one,
                    GenericArray::from_slice(&tag),
                )
                .unwrap();
        });
        let open_one = time(budget, 1, |_| {
            one.copy_from_slice(&sealed);
            ours.open(&nonce(1), &aad, &mut one, &tag).unwrap();
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
            assert!(out.iter().all(Result::is_ok));
        });
        println!("| {size} B | open | {} | {} | {} |", cell(open_ref), cell(open_one), cell(open_many));
    }
}
