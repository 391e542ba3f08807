//! Fuzzing entry points (house style, rule 17: a fuzz target per parser and per engine).
//!
//! Each function takes arbitrary bytes and must return normally for every input: a panic
//! here is a bug in the library, either a crash on bad input or a broken invariant that an
//! `assert!` below states. The cargo-fuzz project in `fuzz/` has one target per entry of
//! [`TARGETS`], named alike, and `proto/tests/fuzz_corpus.rs` replays the committed corpus
//! `fuzz/corpus/<name>/` through the same functions on every `cargo test`. A new target
//! is a function here, an entry in [`TARGETS`], a file in `fuzz/fuzz_targets/` and a
//! corpus directory.
//!
//! The parser targets (`envelope`, `body`, `frame`, `channel_open`) are below. The engine
//! targets (`node`, and with the `servers` feature `dc`, `rs`, `ns`, `account`) are
//! structure-aware: each builds its engine in a realistic state with keys the harness
//! holds, then reads the input as a sequence of operations (datagrams, messages the harness
//! seals under those keys, stream frames and closes, DNS answers, time passing, role
//! calls) and checks the engine's invariants after each (`fuzzing/harness.rs`; the targets
//! in `fuzzing/node.rs` and `fuzzing/servers.rs`). The engines' randomness there is a
//! seeded, non-cryptographic RNG, so every input runs the same way each time.
//!
//! Compiled only with the `fuzzing` feature (proto/Cargo.toml says who enables it), so the
//! agent and the servers never carry it. Not part of the API: hidden from the docs and
//! free to change.

mod harness;
mod node;
#[cfg(feature = "servers")]
mod servers;

use crate::crypto::{Channel, CryptoError};
use crate::keys::{Key, NtmDc};
use crate::time::Instant;
use crate::wire::frame::{FrameDecoder, FRAME_MAX};
use crate::wire::{Envelope, Header, KeyId, Message, MsgType, Sender, WireError, HEADER_LEN};

/// One fuzz target: its name (of the cargo-fuzz binary and the corpus directory) and its
/// entry point.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// Name of the fuzz binary and of `fuzz/corpus/<name>/`.
    pub name: &'static str,
    /// Runs one input.
    pub run: fn(&[u8]),
}

/// Every fuzz target.
pub const TARGETS: &[Target] = &[
    Target { name: "envelope", run: envelope },
    Target { name: "body", run: body },
    Target { name: "frame", run: frame },
    Target { name: "channel_open", run: channel_open },
    Target { name: "node", run: node },
    #[cfg(feature = "servers")]
    Target { name: "dc", run: dc },
    #[cfg(feature = "servers")]
    Target { name: "rs", run: rs },
    #[cfg(feature = "servers")]
    Target { name: "ns", run: ns },
    #[cfg(feature = "servers")]
    Target { name: "account", run: account },
];

/// The targets that exist only with the `servers` feature (their corpora stay in place
/// when the library is built without it).
pub const SERVER_TARGETS: &[&str] = &["dc", "rs", "ns", "account"];

/// Looks a target up by name.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().copied().find(|t| t.name == name)
}

/// If `body` parses as a body of type `ty`, it must be the one encoding of what it parses
/// to: the codec has no slack (every flag, length, name and code point is canonical).
fn check_body(ty: MsgType, body: &[u8]) -> Result<Message, WireError> {
    let msg = Message::parse_body(ty, body)?;
    assert_eq!(msg.msg_type(), ty, "parsed body has another type");
    assert_eq!(msg.body_len(), body.len(), "body_len differs from the parsed length");
    assert_eq!(msg.body_to_vec(), body, "re-emitted body differs from the parsed bytes");
    Ok(msg)
}

/// A whole message: the checked [`Envelope`] view, its [`Header`], and the body parsed for
/// the header's type.
pub fn envelope(data: &[u8]) {
    let Ok(env) = Envelope::new_checked(data) else { return };
    let header = Header::parse(&env);
    assert_eq!(&header.to_bytes()[..], env.header(), "header does not re-emit to its bytes");
    assert_eq!(env.body().len() + HEADER_LEN, data.len());
    let parsed = check_body(header.msg_type, env.body());
    // The plain path (TLS-carried messages) agrees with the view.
    match crate::crypto::parse_plain(data) {
        Ok((h, m)) => {
            assert!(!header.sealed);
            assert_eq!(h, header);
            assert_eq!(Ok(m), parsed);
        }
        Err(_) => assert!(header.sealed || parsed.is_err()),
    }
}

/// A body alone: the first byte is the type code, the rest the body. Whatever parses must
/// re-emit to exactly the same bytes.
pub fn body(data: &[u8]) {
    let Some((&ty, rest)) = data.split_first() else { return };
    let _ = check_body(MsgType::from(ty), rest);
}

/// Splits a frame stream the way a simple reader would, as the reference for [`frame`].
fn reference_frames(stream: &[u8]) -> (Vec<Vec<u8>>, bool) {
    let mut frames = Vec::new();
    let mut rest = stream;
    while let [hi, lo, tail @ ..] = rest {
        let n = usize::from(u16::from_be_bytes([*hi, *lo]));
        if n == 0 {
            return (frames, true);
        }
        let Some((frame, after)) = (n <= tail.len()).then(|| tail.split_at(n)) else { break };
        frames.push(frame.to_vec());
        rest = after;
    }
    (frames, false)
}

/// A stream of length-prefixed frames ([`FrameDecoder`]) delivered in chunks. The first
/// byte seeds the chunk sizes; the frames must not depend on how the stream was cut, and
/// each frame is then parsed as a message.
pub fn frame(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else { return };
    let mut decoder = FrameDecoder::new();
    let mut frames = Vec::new();
    let mut failed = false;
    let mut pos = 0;
    let mut step = usize::from(seed);
    'feed: while pos < stream.len() {
        // Chunk sizes cycle through 1..=64 from the seed: splits land everywhere,
        // including inside the length prefix.
        let len = (step % 64 + 1).min(stream.len() - pos);
        step = step.wrapping_mul(31).wrapping_add(7);
        decoder.push(stream.get(pos..pos + len).unwrap_or_default());
        pos += len;
        loop {
            match decoder.next_frame() {
                Ok(Some(f)) => {
                    assert!(!f.is_empty() && f.len() <= FRAME_MAX, "frame of length {}", f.len());
                    frames.push(f);
                }
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break 'feed;
                }
            }
        }
    }
    let (want, want_failed) = reference_frames(stream);
    assert_eq!(failed, want_failed, "decoder and reference disagree on the error");
    assert_eq!(frames, want, "decoder and reference disagree on the frames");
    if !failed {
        let consumed: usize = frames.iter().map(|f| 2 + f.len()).sum();
        assert_eq!(decoder.buffered(), stream.len() - consumed, "bytes lost or invented");
    }
    for f in &frames {
        envelope(f);
    }
}

/// The key [`channel_open`] opens with (K_ntmdc, as a DC holds it).
pub const CHANNEL_KEY: [u8; 16] = *b"fuzzing K_ntmdc!";
/// The key id [`channel_open`] expects.
pub const CHANNEL_KEY_ID: KeyId = KeyId(0x0f0f_1001);
/// The time [`channel_open`] opens at; the key expires an hour later.
pub const CHANNEL_NOW: Instant = Instant::from_millis(1_000_000);

fn channel(local: Sender) -> Option<Channel<NtmDc>> {
    let expires = Instant::from_millis(CHANNEL_NOW.as_millis() + 3_600_000);
    Channel::new(Key::from_bytes(CHANNEL_KEY), CHANNEL_KEY_ID, local, expires).ok()
}

/// Opening under a fixed key, twice over:
/// 1. `data` as a sealed message received by the DC: refused unless genuine, and a genuine
///    one is refused as a replay the second time.
/// 2. `data` as a type code and a plaintext body that the node seals and the DC opens: the
///    crypto must accept it, the body must parse exactly as it would in the clear, and
///    the counter is spent either way.
pub fn channel_open(data: &[u8]) {
    let (Some(mut dc), Some(mut node)) = (channel(Sender::Dc), channel(Sender::Node)) else { return };

    if dc.open(CHANNEL_NOW, data).is_ok() {
        assert_eq!(dc.open(CHANNEL_NOW, data).err(), Some(CryptoError::Replayed));
    }

    let Some((&ty, plaintext)) = data.split_first() else { return };
    let ty = MsgType::from(ty);
    let mut buf = vec![0u8; HEADER_LEN + plaintext.len() + crate::crypto::TAG_LEN];
    if let Some(dst) = buf.get_mut(HEADER_LEN..HEADER_LEN + plaintext.len()) {
        dst.copy_from_slice(plaintext);
    }
    assert_eq!(node.seal_in_place(CHANNEL_NOW, ty, &mut buf), Ok(()));
    let Some(mut dc) = channel(Sender::Dc) else { return };
    let mut opened = buf.clone();
    assert_eq!(
        dc.open_in_place(CHANNEL_NOW, &mut opened).map(|o| o.body),
        Ok(HEADER_LEN..HEADER_LEN + plaintext.len())
    );
    assert_eq!(opened.get(HEADER_LEN..HEADER_LEN + plaintext.len()), Some(plaintext));

    let Some(mut dc) = channel(Sender::Dc) else { return };
    let clear = Message::parse_body(ty, plaintext);
    match dc.open(CHANNEL_NOW, &buf) {
        Ok((h, m)) => {
            assert_eq!((h.msg_type, h.sender, h.key_id, h.counter), (ty, Sender::Node, CHANNEL_KEY_ID, 0));
            assert_eq!(Ok(m), clear);
        }
        // Authentic but malformed: refused exactly as the clear body is, for no other
        // reason.
        Err(e) => assert_eq!(Err(e), clear.map(|_| ()).map_err(CryptoError::Wire)),
    }
    assert_eq!(dc.open(CHANNEL_NOW, &buf).err(), Some(CryptoError::Replayed));
}

/// The node engine, logged in and registered, driven by a sequence of operations: see
/// `fuzzing/node.rs` for the setup and the templates, `fuzzing/harness.rs` for the
/// operations and the invariants checked after each.
pub fn node(data: &[u8]) {
    let _ = node::run_node(data);
}

/// The DC engine with two registered nodes, a peer DC's key and its relays' keys: see
/// `fuzzing/servers.rs`.
#[cfg(feature = "servers")]
pub fn dc(data: &[u8]) {
    let _ = servers::run_dc(data);
}

/// The RS engine with a DC's key and one relay session whose ends hole-punched: see
/// `fuzzing/servers.rs`.
#[cfg(feature = "servers")]
pub fn rs(data: &[u8]) {
    let _ = servers::run_rs(data);
}

/// The NS engine with a DC's key and one node connected: see `fuzzing/servers.rs`.
#[cfg(feature = "servers")]
pub fn ns(data: &[u8]) {
    let _ = servers::run_ns(data);
}

/// The Account Server (AS) engine with a fixed account store and an OpenID provider whose
/// key the harness holds: see `fuzzing/servers.rs`. (Named after its module, `account`:
/// `as` is a keyword.)
#[cfg(feature = "servers")]
pub fn account(data: &[u8]) {
    let _ = servers::run_account(data);
}

/// Hand-built inputs that drive the engine targets down their main paths: `(target, corpus
/// file name, input)`. `proto/tests/fuzz_corpus.rs` checks that the committed corpus holds
/// each of them, and this module's tests that each still reaches what it is named after. The
/// byte layout is the one `fuzzing/harness.rs` and the targets' templates read.
pub fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    // Sealed template `[2, slot, route 0, ...]`; plain `[4, ...]`; DNS answer `[6, query,
    // ...]`; wait `[7, unit, hi, lo]`; API call `[8, ...]`; stream closed `[5, tcp?, addr]`.
    let v: Vec<(&'static str, &'static str, Vec<u8>)> = vec![
        // The node awaits a direct tunnel (K_tmp), gets the Tunnel Request, then data.
        (
            "node",
            "seed-tunnel-await-data",
            [
                &[0x00][..],
                &[2, 0, 0, 2, 0x80, 0, 0, 0, 0, 2, 0, 3, 0, 0, 0, 0, 1],
                &[2, 1, 0, 0, 0, 0, 0],
                &[2, 2, 0, 0, 3, 0, 4, b'p', b'i', b'n', b'g'],
            ]
            .concat(),
        ),
        // The node initiates through a relay, then route optimization finds the direct path.
        (
            "node",
            "seed-tunnel-relay-optimized",
            [
                &[0x00][..],
                &[2, 0, 0, 2, 0x81, 0, 1, 1, 0, 0, 0, 3, 0, 0, 0, 0, 2],
                &[2, 1, 0, 1, 0],
                &[2, 2, 0, 0, 0, 0],
                &[2, 2, 0, 1, 2, 0, 0],
            ]
            .concat(),
        ),
        // The DNS hook: resolve, the DC directs, the node initiates, the peer responds.
        (
            "node",
            "seed-resolve",
            [&[0x00][..], &[8, 0, 0], &[2, 0, 0, 2, 0x82, 0, 1, 1, 0, 2, 0, 3, 0, 0, 0, 0, 3], &[2, 2, 0, 0, 0, 0]]
                .concat(),
        ),
        // NS keepalive method: a Route Direction arrives inside the NS's Notify.
        (
            "node",
            "seed-ns-notify",
            [&[0x01][..], &[2, 1, 0, 2, 0, 0, 0, 9, 2, 0x80, 0, 0, 0, 0, 2, 0, 3, 0, 0, 0, 0, 1]].concat(),
        ),
        // Regression: a keepalive pending longer than the keepalive interval (5 s).
        ("node", "regress-keepalive-deadline", vec![0x20, 7, 2, 0x00, 0x0b]),
        // Regression: a Direction Request queued while re-registering.
        ("node", "regress-unsent-direction", vec![0x00, 8, 1, 0, 8, 0, 0, 7, 2, 0, 1]),
        // Regression: a Direction Request in flight when the node loses every address.
        ("node", "regress-offline-direction", vec![0x00, 8, 0, 0, 8, 1, 4, 7, 2, 0, 1]),
    ];
    #[cfg(feature = "servers")]
    let v = [
        v,
        vec![
            // MN asks for CN of the same zone: direct; CN directed first, then MN.
            (
                "dc",
                "seed-local-direct",
                [&[0x00][..], &[2, 0, 0, 2, 0xf0, 0, 0, 0, 0x42, 0, 0], &[2, 1, 0, 3, 0, 0], &[2, 0, 0, 3, 0, 0]]
                    .concat(),
            ),
            // MN asks for a node of another zone: DNS, Node Info from the peer DC, relayed.
            (
                "dc",
                "seed-remote-relayed",
                [
                    &[0x00][..],
                    &[2, 0, 0, 2, 0xf0, 0, 0, 0, 0x43, 2, 0],
                    &[6, 0, 0],
                    &[2, 2, 0, 1, 0, 0, 0, 0],
                    &[2, 3, 0, 0, 0, 0, 0],
                    &[2, 2, 0, 3, 0, 0],
                    &[2, 0, 0, 3, 0, 0],
                ]
                .concat(),
            ),
            // MN registers with the NS method: Key Share with the NS, K_ntmns, then CN asks
            // for MN, whose Route Direction goes through the NS.
            (
                "dc",
                "seed-ns-binding",
                [
                    &[0x00][..],
                    &[2, 0, 0, 0, 0, 1, 0, 0, 0, 0x55],
                    &[4, 2, 0, 0],
                    &[2, 5, 0, 0, 0, 0],
                    &[2, 1, 0, 2, 0xf0, 0, 0, 0, 0x44, 1, 0],
                ]
                .concat(),
            ),
            // Relayed packets both ways, a second session, then both ends release the first.
            (
                "rs",
                "seed-forward-release",
                [
                    &[0x00][..],
                    &[2, 1, 0, 1, 0, 2, 0, 0, 0, 0, 7],
                    &[2, 1, 0, 0, 2, 3, 2, b'h', b'i'],
                    &[2, 0, 0, 0, 0, 0, 0, 2, 1, 3],
                    &[2, 1, 0, 1, 0, 0, 0xc0],
                    &[2, 1, 0, 0, 0, 0xc0],
                ]
                .concat(),
            ),
            // A notification delivered, a keepalive, a second node registering, a connection
            // closing.
            // Regression: a second node registers on the first one's connection, which closes;
            // the first node's notification must not go to the closed connection.
            (
                "ns",
                "regress-shared-connection",
                [
                    &[0x00][..],
                    &[2, 0, 0, 0, 0, 0, 0, 7, 1, 1, 3],
                    &[2, 2, 0x30, 3, 0, 0, 0, 0, 0, 8],
                    &[5, 0, 3],
                    &[2, 0, 0, 1, 0, 0, 0, 5, 0, 0, 3, 1, 2, 3],
                ]
                .concat(),
            ),
            (
                "ns",
                "seed-notify-register-close",
                [
                    &[0x00][..],
                    &[2, 0, 0, 1, 0, 0, 0, 5, 0, 0, 3, 1, 2, 3],
                    &[2, 1, 0, 1, 0, 0, 0, 6],
                    &[2, 0, 0, 0, 0, 0, 0, 7, 1, 1, 3],
                    &[2, 2, 0, 0, 0, 0, 0, 0, 8],
                    &[5, 0, 3],
                ]
                .concat(),
            ),
            // Password login: DNS for the node's DC, Key Distribution, NTM ACK, Login Response.
            (
                "account",
                "seed-password-login",
                [&[0x00][..], &[4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], &[6, 0, 0], &[4, 1, 0, 0, 0]].concat(),
            ),
            // OpenID Connect login with a public key to attest.
            (
                "account",
                "seed-oidc-login-attested",
                [&[0x01][..], &[4, 0, 0, 0, 2, 0, 0, 0, 0, 3, 1, 0, 1, 0, 0, 0, 2], &[6, 0, 0], &[4, 1, 0, 0, 0]]
                    .concat(),
            ),
            // Device certificate login.
            (
                "account",
                "seed-device-login",
                [&[0x00][..], &[4, 0, 0, 1, 1, 0, 0, 0, 0, 3], &[6, 0, 0], &[4, 1, 0, 0, 0]].concat(),
            ),
        ],
    ]
    .concat();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_engine_setup_succeeds_for_every_configuration() {
        for c in 0..=255u8 {
            assert!(node::run_node(&[c]).is_some(), "node setup failed for configuration {c:#04x}");
            #[cfg(feature = "servers")]
            assert!(servers::run_dc(&[c]).is_some(), "dc setup failed for configuration {c:#04x}");
            #[cfg(feature = "servers")]
            assert!(servers::run_rs(&[c]).is_some(), "rs setup failed for configuration {c:#04x}");
            #[cfg(feature = "servers")]
            assert!(servers::run_ns(&[c]).is_some(), "ns setup failed for configuration {c:#04x}");
            #[cfg(feature = "servers")]
            assert!(servers::run_account(&[c]).is_some(), "account setup failed for configuration {c:#04x}");
        }
    }

    #[test]
    fn engines_survive_pseudo_random_inputs() {
        use rand_chacha::rand_core::{RngCore, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(17);
        for _ in 0..300 {
            let mut data = vec![0u8; (rng.next_u32() % 600) as usize];
            rng.fill_bytes(&mut data);
            for t in TARGETS {
                (t.run)(&data);
            }
        }
    }

    fn seed(name: &str) -> Vec<u8> {
        let found = seeds().into_iter().find(|(_, n, _)| *n == name);
        assert!(found.is_some(), "no seed {name}");
        found.map(|(_, _, d)| d).unwrap_or_default()
    }

    #[test]
    fn seeds_name_their_targets() {
        for (t, n, _) in seeds() {
            assert!(target(t).is_some(), "seed {n} of unknown target {t}");
        }
    }

    #[test]
    fn node_seeds_reach_their_milestones() {
        use crate::engine::node::{NodeEvent, PathKind};
        let up = |h: &harness::Harness<crate::engine::node::Node>| {
            h.events.iter().any(|e| matches!(e, NodeEvent::TunnelUp { .. }))
        };
        let h = node::run_node(&seed("seed-tunnel-await-data")).unwrap();
        assert!(up(&h) && h.ip == 1, "{:?}", h.events);
        let h = node::run_node(&seed("seed-tunnel-relay-optimized")).unwrap();
        assert!(up(&h), "{:?}", h.events);
        assert!(h.events.iter().any(|e| matches!(e, NodeEvent::PathChanged { path: PathKind::Direct, .. })));
        let h = node::run_node(&seed("seed-resolve")).unwrap();
        assert!(h.events.iter().any(|e| matches!(e, NodeEvent::Resolved { .. })), "{:?}", h.events);
        let h = node::run_node(&seed("seed-ns-notify")).unwrap();
        assert!(h.engine.notifications_ready());
        assert_eq!(h.engine.tunnels().len(), 1);
        node(&seed("regress-keepalive-deadline"));
        node(&seed("regress-unsent-direction"));
        node(&seed("regress-offline-direction"));
    }

    #[cfg(feature = "servers")]
    #[test]
    fn server_seeds_reach_their_milestones() {
        use crate::engine::account::AsEvent;
        use crate::engine::dc::DcEvent;
        let h = servers::run_dc(&seed("seed-local-direct")).unwrap();
        assert!(h.events.iter().any(|e| matches!(e, DcEvent::TunnelDirected { relay: None, .. })), "{:?}", h.events);
        let h = servers::run_dc(&seed("seed-remote-relayed")).unwrap();
        assert!(h.events.iter().any(|e| matches!(e, DcEvent::TunnelDirected { relay: Some(_), .. })), "{:?}", h.events);
        let h = servers::run_dc(&seed("seed-ns-binding")).unwrap();
        assert!(h.engine.nodes().iter().any(|n| n.via_ns), "{:?}", h.engine.nodes());
        let h = servers::run_rs(&seed("seed-forward-release")).unwrap();
        assert_eq!(h.forwarded, 2);
        assert_eq!(h.engine.sessions().len(), 1);
        let h = servers::run_ns(&seed("seed-notify-register-close")).unwrap();
        assert_eq!((h.engine.node_keys(), h.engine.connected()), (2, 1));
        let h = servers::run_ns(&seed("regress-shared-connection")).unwrap();
        assert_eq!((h.engine.node_keys(), h.engine.connected()), (2, 0));
        for name in ["seed-password-login", "seed-oidc-login-attested", "seed-device-login"] {
            let (h, s) = servers::run_account(&seed(name)).unwrap();
            assert!(h.events.iter().any(|e| matches!(e, AsEvent::LoggedIn { .. })), "{name}: {:?}", h.events);
            assert_eq!(s.responses, 1, "{name}");
        }
    }

    #[test]
    fn targets_are_named_uniquely_and_accept_trivial_input() {
        for (i, t) in TARGETS.iter().enumerate() {
            assert!(TARGETS[..i].iter().all(|o| o.name != t.name));
            assert_eq!(target(t.name).map(|f| f.name), Some(t.name));
            for input in [&[][..], &[0], &[0xff; 40]] {
                (t.run)(input);
            }
        }
    }
}
