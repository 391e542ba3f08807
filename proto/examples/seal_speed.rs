//! How fast one core seals and opens 1400-byte data packets with AES-128-CCM (the
//! tunnel's crypto), in this build's profile: `cargo run --release -p ntm-proto --example
//! seal_speed`. The release profile's opt-level "z" (for small router binaries) makes this
//! several times slower than opt-level 3; see docs/agent.md.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::disallowed_methods)]
use ntm_proto::crypto::{Channel, TAG_LEN};
use ntm_proto::keys::{Key, MnCn};
use ntm_proto::time::{Duration, Instant};
use ntm_proto::wire::{KeyId, MsgType, Sender, HEADER_LEN};
fn main() {
    let key = Key::<MnCn>::from_bytes([7; 16]);
    let mut tx =
        Channel::new(key.clone(), KeyId(1), Sender::Initiator, Instant::ZERO + Duration::from_secs(3600)).unwrap();
    let mut rx = Channel::new(key, KeyId(1), Sender::Responder, Instant::ZERO + Duration::from_secs(3600)).unwrap();
    let n = 200_000;
    let mut buf = vec![0u8; HEADER_LEN + 1400 + TAG_LEN];
    let t = std::time::Instant::now();
    for _ in 0..n {
        tx.seal_in_place(Instant::ZERO, MsgType::Data, &mut buf).unwrap();
        rx.open_in_place(Instant::ZERO, &mut buf).unwrap();
    }
    let e = t.elapsed();
    println!(
        "{n} seal+open of 1400 B in {e:?}: {:.0} Mbit/s each way",
        (n as f64 * 1400.0 * 8.0) / e.as_secs_f64() / 1e6
    );
}
