//! Fuzzing entry points (house style, rule 17: a fuzz target per parser and per engine).
//!
//! Each function takes arbitrary bytes and must return normally for every input: a panic
//! here is a bug in the library, either a crash on bad input or a broken invariant that an
//! `assert!` below states. The cargo-fuzz project in `fuzz/` has one target per entry of
//! [`TARGETS`], named alike, and `proto/tests/fuzz_corpus.rs` replays the committed corpus
//! `fuzz/corpus/<name>/` through the same functions on every `cargo test`. A new target
//! (an engine, say) is a function here, an entry in [`TARGETS`], a file in
//! `fuzz/fuzz_targets/` and a corpus directory.
//!
//! Not part of the API: hidden from the docs and free to change.

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
];

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
    assert_eq!(dc.open_in_place(CHANNEL_NOW, &mut opened), Ok(HEADER_LEN..HEADER_LEN + plaintext.len()));
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

#[cfg(test)]
mod tests {
    use super::*;

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
