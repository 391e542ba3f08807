//! The data plane's batches through the real [`Channel`] API: sealing several buffers at
//! once gives the bytes sealing them one at a time gives, spends each counter once and
//! none on a refused batch; opening several at once gives, buffer by buffer, what opening
//! them one at a time in the same order gives, and leaves the replay window the same.

use ntm_proto::crypto::{Channel, CryptoError, Opened, TAG_LEN, WINDOW_BITS};
use ntm_proto::keys::{Key, MnCn};
use ntm_proto::wire::{KeyId, MsgType, Sender, WireError, HEADER_LEN};
use ntm_proto::Instant;
use proptest::prelude::*;

const ID: KeyId = KeyId(0x2002);
const T0: Instant = Instant::from_millis(1_000);
const EXPIRES: Instant = Instant::from_millis(1_000_000);

fn channel(local: Sender) -> Channel<MnCn> {
    Channel::new(Key::from_bytes([0x5c; 16]), ID, local, EXPIRES).unwrap()
}

/// `[header room | payload | tag room]` for a packet of `len` bytes filled with `fill`.
fn frame(len: usize, fill: u8) -> Vec<u8> {
    let mut b = vec![0u8; HEADER_LEN + len + TAG_LEN];
    b[HEADER_LEN..HEADER_LEN + len].fill(fill);
    b
}

fn seal_many(ch: &mut Channel<MnCn>, frames: &mut [Vec<u8>]) -> Result<(), CryptoError> {
    let mut bufs: Vec<&mut [u8]> = frames.iter_mut().map(|f| &mut f[..]).collect();
    ch.seal_many_in_place(T0, MsgType::Data, &mut bufs)
}

fn open_many(ch: &mut Channel<MnCn>, frames: &mut [Vec<u8>]) -> Vec<Result<Opened, CryptoError>> {
    let mut bufs: Vec<&mut [u8]> = frames.iter_mut().map(|f| &mut f[..]).collect();
    let mut out = vec![Err(CryptoError::Forged); bufs.len()];
    ch.open_many_in_place(T0, &mut bufs, &mut out);
    out
}

#[test]
fn a_sealed_batch_is_what_sealing_one_at_a_time_gives() {
    let (mut batch, mut single) = (channel(Sender::Initiator), channel(Sender::Initiator));
    // Lengths around block edges, more than one batch of lanes.
    let lens = [0usize, 1, 15, 16, 17, 1400, 64, 1500, 3, 33, 48];
    let mut frames: Vec<Vec<u8>> = lens.iter().enumerate().map(|(i, &l)| frame(l, i as u8)).collect();
    let mut one_by_one = frames.clone();
    seal_many(&mut batch, &mut frames).unwrap();
    for f in &mut one_by_one {
        single.seal_in_place(T0, MsgType::Data, f).unwrap();
    }
    assert_eq!(frames, one_by_one);
    assert_eq!(batch.next_counter(), lens.len() as u64);
    let mut peer = channel(Sender::Responder);
    for (i, f) in frames.iter_mut().enumerate() {
        let o = peer.open_in_place(T0, f).unwrap();
        assert_eq!(o.body, HEADER_LEN..HEADER_LEN + lens[i]);
        assert!(f[o.body].iter().all(|&b| b == i as u8));
    }
}

#[test]
fn a_refused_batch_seals_nothing_and_spends_no_counter() {
    let mut ch = channel(Sender::Initiator);
    let mut short = vec![frame(10, 1), vec![0u8; HEADER_LEN + TAG_LEN - 1]];
    let before = short.clone();
    assert_eq!(seal_many(&mut ch, &mut short), Err(CryptoError::Wire(WireError::BufferTooSmall)));
    assert_eq!((ch.next_counter(), &short), (0, &before));

    ch.limit_counter(2);
    assert_eq!(ch.counters_left(), 2);
    let mut three = vec![frame(10, 1), frame(20, 2), frame(30, 3)];
    assert_eq!(seal_many(&mut ch, &mut three), Err(CryptoError::CounterNotReserved));
    assert_eq!(ch.next_counter(), 0);
    seal_many(&mut ch, &mut three[..2]).unwrap();
    assert_eq!((ch.next_counter(), ch.counters_left()), (2, 0));
    ch.limit_counter(u64::MAX);

    ch.resume_at(u64::MAX - 2);
    assert_eq!(seal_many(&mut ch, &mut three), Err(CryptoError::CounterExhausted));
    seal_many(&mut ch, &mut three[..2]).unwrap();
    assert_eq!(ch.next_counter(), u64::MAX);

    let mut late = channel(Sender::Initiator);
    assert_eq!(late.seal_many_in_place(EXPIRES, MsgType::Data, &mut []), Err(CryptoError::Expired));
}

#[test]
fn two_copies_of_one_counter_in_one_batch_open_once() {
    let mut mn = channel(Sender::Initiator);
    let mut frames = vec![frame(100, 1), frame(200, 2)];
    seal_many(&mut mn, &mut frames).unwrap();
    // counter 0, its copy, counter 1, and counter 0 once more.
    let mut batch = vec![frames[0].clone(), frames[0].clone(), frames[1].clone(), frames[0].clone()];
    let mut cn = channel(Sender::Responder);
    let got = open_many(&mut cn, &mut batch);
    let body = |len: usize| HEADER_LEN..HEADER_LEN + len;
    assert_eq!(
        got,
        [
            Ok(Opened { body: body(100), newest: true }),
            Err(CryptoError::Replayed),
            Ok(Opened { body: body(200), newest: true }),
            Err(CryptoError::Replayed),
        ]
    );
    assert_eq!(cn.peer_top(Sender::Initiator), 2);
}

#[test]
fn a_forged_copy_ahead_of_the_genuine_one_does_not_take_its_counter() {
    let mut mn = channel(Sender::Initiator);
    let mut frames = vec![frame(50, 1)];
    seal_many(&mut mn, &mut frames).unwrap();
    let mut forged = frames[0].clone();
    forged[HEADER_LEN] ^= 1;
    let mut batch = vec![forged, frames[0].clone()];
    let mut cn = channel(Sender::Responder);
    let got = open_many(&mut cn, &mut batch);
    assert_eq!(got[0], Err(CryptoError::Forged));
    assert_eq!(got[1], Ok(Opened { body: HEADER_LEN..HEADER_LEN + 50, newest: true }));
}

/// What a test datagram is made of.
#[derive(Clone, Debug)]
enum Item {
    /// The sealed packet with this counter.
    Genuine(usize),
    /// It with one bit flipped (header, body or tag).
    Flipped(usize, usize),
    /// Its first `n` bytes.
    Truncated(usize, usize),
    /// Sealed by ourselves (a reflection).
    Own(usize),
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        6 => (0usize..40).prop_map(Item::Genuine),
        1 => (0usize..40, any::<usize>()).prop_map(|(c, b)| Item::Flipped(c, b)),
        1 => (0usize..40, 0usize..60).prop_map(|(c, n)| Item::Truncated(c, n)),
        1 => (0usize..4).prop_map(Item::Own),
    ]
}

proptest! {
    /// Random batches of genuine packets (in any order, repeated), forged, truncated and
    /// reflected ones, and counters far apart (older than the window): the batch gives
    /// each buffer the result and plaintext opening them one at a time gives, and leaves
    /// the window in the same state (the same datagrams fed again give the same results).
    #[test]
    fn an_opened_batch_is_what_opening_one_at_a_time_gives(
        items in proptest::collection::vec(item(), 0..24),
        jump in any::<bool>(),
        split in 0usize..24,
    ) {
        let mut mn = channel(Sender::Initiator);
        let mut sealed: Vec<Vec<u8>> = (0..40).map(|i| frame(i * 37 % 1500, i as u8)).collect();
        seal_many(&mut mn, &mut sealed).unwrap();
        if jump {
            // Counters WINDOW_BITS apart: the first ones are too old once a late one opened.
            mn.resume_at(WINDOW_BITS + 20);
            seal_many(&mut mn, &mut sealed[20..]).unwrap();
        }
        let mut cn_own = channel(Sender::Responder);
        let mut own: Vec<Vec<u8>> = (0..4).map(|i| frame(10 + i, 9)).collect();
        seal_many(&mut cn_own, &mut own).unwrap();
        let bytes: Vec<Vec<u8>> = items.iter().map(|it| match *it {
            Item::Genuine(c) => sealed[c].clone(),
            Item::Flipped(c, b) => {
                let mut f = sealed[c].clone();
                let bit = b % (f.len() * 8);
                f[bit / 8] ^= 1 << (bit % 8);
                f
            }
            Item::Truncated(c, n) => sealed[c][..n.min(sealed[c].len())].to_vec(),
            Item::Own(c) => own[c].clone(),
        }).collect();

        let (mut batch, mut single) = (channel(Sender::Responder), channel(Sender::Responder));
        // Two batches (the split moves), so the second starts from a window the first moved.
        let split = split.min(bytes.len());
        let mut frames = bytes.clone();
        let (a, b) = frames.split_at_mut(split);
        let mut got = open_many(&mut batch, a);
        got.extend(open_many(&mut batch, b));
        let mut one_by_one = bytes.clone();
        let want: Vec<_> = one_by_one.iter_mut().map(|f| single.open_in_place(T0, f)).collect();
        prop_assert_eq!(&got, &want);
        for (i, r) in want.iter().enumerate() {
            if let Ok(o) = r {
                prop_assert_eq!(&frames[i][o.body.clone()], &one_by_one[i][o.body.clone()]);
            }
        }
        prop_assert_eq!(batch.peer_top(Sender::Initiator), single.peer_top(Sender::Initiator));
        let mut again = bytes.clone();
        let mut again2 = bytes;
        let after_batch: Vec<_> = again.iter_mut().map(|f| batch.open_in_place(T0, f)).collect();
        let after_single: Vec<_> = again2.iter_mut().map(|f| single.open_in_place(T0, f)).collect();
        prop_assert_eq!(after_batch, after_single);
    }
}
