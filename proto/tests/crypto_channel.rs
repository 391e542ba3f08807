//! Sealing and opening through the real [`Channel`] API: a round trip, and every way a
//! message must be refused (tampering, wrong key, replay, age, reflection, a sender the key
//! kind does not admit, expiry, counter exhaustion), each with its own [`CryptoError`]. A
//! refused message must leave the replay window as it was.

use ntm_proto::crypto::{plain, Channel, CryptoError, TAG_LEN, WINDOW_BITS};
use ntm_proto::keys::{KNtmDc, KTun, Key, KeyKind, MnCn, NtmDc, Tun};
use ntm_proto::wire::data::DataBody;
use ntm_proto::wire::registration::Keepalive;
use ntm_proto::wire::route::Side;
use ntm_proto::wire::tunnel::HolePunch;
use ntm_proto::wire::{header_field, KeyId, Message, MsgType, RequestId, Sender, WireError, HEADER_LEN};
use ntm_proto::Instant;
use rand_chacha::rand_core::SeedableRng;

const ID: KeyId = KeyId(0x1001);
const T0: Instant = Instant::from_millis(1_000);
const EXPIRES: Instant = Instant::from_millis(1_000_000);

fn key_bytes(seed: u64) -> [u8; 16] {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    *Key::<NtmDc>::generate(&mut rng).expose_secret()
}

fn channel<K: KeyKind>(seed: u64, local: Sender) -> Channel<K> {
    Channel::new(Key::from_bytes(key_bytes(seed)), ID, local, EXPIRES).unwrap()
}

/// A node and its DC holding the same K_ntmdc.
fn node_and_dc() -> (Channel<NtmDc>, Channel<NtmDc>) {
    (channel(1, Sender::Node), channel(1, Sender::Dc))
}

fn keepalive(n: u32) -> Message {
    Keepalive { request_id: RequestId(n) }.into()
}

#[test]
fn seal_then_open_round_trips_both_ways() {
    let (mut node, mut dc) = node_and_dc();
    for n in 0..5u32 {
        let sealed = node.seal(T0, &keepalive(n)).unwrap();
        assert_eq!(sealed.len(), Channel::<NtmDc>::sealed_len(&keepalive(n)));
        assert_eq!(sealed.len(), HEADER_LEN + 4 + TAG_LEN);
        // The body on the wire is not the plaintext.
        assert_ne!(&sealed[HEADER_LEN..HEADER_LEN + 4], &n.to_be_bytes());
        let (h, m) = dc.open(T0, &sealed).unwrap();
        assert_eq!(m, keepalive(n));
        assert!(h.sealed);
        assert_eq!((h.msg_type, h.sender, h.key_id, h.counter), (MsgType::Keepalive, Sender::Node, ID, u64::from(n)));

        let back = dc.seal(T0, &keepalive(100 + n)).unwrap();
        let (h, m) = node.open(T0, &back).unwrap();
        assert_eq!(m, keepalive(100 + n));
        assert_eq!((h.sender, h.counter), (Sender::Dc, u64::from(n)));
    }
    assert_eq!(node.next_counter(), 5);
    assert_eq!(dc.next_counter(), 5);
}

#[test]
fn data_plane_seals_and_opens_in_place() {
    let mut a: Channel<MnCn> = channel(2, Sender::Initiator);
    let mut b: Channel<MnCn> = channel(2, Sender::Responder);
    let packet = [0x45, 0, 0, 20, 1, 2, 3, 4, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
    let mut buf = vec![0u8; HEADER_LEN + packet.len() + TAG_LEN];
    buf[HEADER_LEN..HEADER_LEN + packet.len()].copy_from_slice(&packet);
    a.seal_in_place(T0, MsgType::Data, &mut buf).unwrap();
    let copy = buf.clone();
    let opened = b.open_in_place(T0, &mut buf).unwrap();
    assert!(opened.newest);
    assert_eq!(&buf[opened.body], &packet);
    // The owned path agrees.
    let mut b2: Channel<MnCn> = channel(2, Sender::Responder);
    let (_, m) = b2.open(T0, &copy).unwrap();
    assert_eq!(m, Message::Data(DataBody::new(packet.to_vec()).unwrap()));
    // Buffers too short for a header and a tag are refused, not overrun.
    let mut tiny = vec![0u8; HEADER_LEN + TAG_LEN - 1];
    assert_eq!(a.seal_in_place(T0, MsgType::Data, &mut tiny), Err(CryptoError::Wire(WireError::BufferTooSmall)));
}

#[test]
fn tampered_ciphertext_or_tag_is_forged() {
    let (mut node, mut dc) = node_and_dc();
    let sealed = node.seal(T0, &keepalive(7)).unwrap();
    for i in HEADER_LEN..sealed.len() {
        for bit in [0x01, 0x80] {
            let mut t = sealed.clone();
            t[i] ^= bit;
            assert_eq!(dc.open(T0, &t), Err(CryptoError::Forged), "byte {i} bit {bit:#x}");
        }
    }
    // A cut tag, or a message cut to the tag alone.
    assert_eq!(dc.open(T0, &sealed[..sealed.len() - 1]), Err(CryptoError::Forged));
    assert_eq!(dc.open(T0, &sealed[..HEADER_LEN + TAG_LEN]), Err(CryptoError::Forged));
    assert_eq!(dc.open(T0, &sealed[..HEADER_LEN + TAG_LEN - 1]), Err(CryptoError::Wire(WireError::Truncated)));
    assert_eq!(dc.open(T0, &sealed[..HEADER_LEN - 1]), Err(CryptoError::Wire(WireError::Truncated)));
    // None of that moved the window: the genuine message still opens, once.
    assert_eq!(dc.open(T0, &sealed).map(|(_, m)| m), Ok(keepalive(7)));
    assert_eq!(dc.open(T0, &sealed), Err(CryptoError::Replayed));
}

#[test]
fn tampered_header_is_refused() {
    let (mut node, mut dc) = node_and_dc();
    let sealed = node.seal(T0, &keepalive(7)).unwrap();
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut t = sealed.clone();
        f(&mut t);
        t
    };

    // Type: the header is associated data.
    for ty in [MsgType::KeepaliveAck, MsgType::NsKeepalive, MsgType::PathProbe, MsgType::Unknown(0x0f)] {
        let t = with(&|t| t[header_field::TYPE] = u8::from(ty));
        assert_eq!(dc.open(T0, &t), Err(CryptoError::Forged), "{ty:?}");
    }
    // Counter: it is part of the nonce and of the associated data.
    for c in [1u64, 2, 1 << 40, u64::MAX - 1] {
        let t = with(&|t| t[header_field::COUNTER].copy_from_slice(&c.to_be_bytes()));
        assert_eq!(dc.open(T0, &t), Err(CryptoError::Forged), "counter {c}");
    }
    // Key id: not the key tried.
    let t = with(&|t| t[header_field::KEY_ID].copy_from_slice(&0x1002u32.to_be_bytes()));
    assert_eq!(dc.open(T0, &t), Err(CryptoError::WrongKeyId));
    // Sender: our own role is a reflection; a role outside K_ntmdc is not allowed.
    let t = with(&|t| t[header_field::SENDER] = u8::from(Sender::Dc));
    assert_eq!(dc.open(T0, &t), Err(CryptoError::Reflected));
    for s in [Sender::Ns, Sender::Rs, Sender::Mn, Sender::Initiator, Sender::Unknown(0x7e)] {
        let t = with(&|t| t[header_field::SENDER] = u8::from(s));
        assert_eq!(dc.open(T0, &t), Err(CryptoError::SenderNotAllowed(s)));
    }
    // Flags: a cleared seal bit is a plain message; a reserved bit is malformed.
    let t = with(&|t| t[header_field::FLAGS] = 0);
    assert_eq!(dc.open(T0, &t), Err(CryptoError::NotSealed));
    let t = with(&|t| t[header_field::FLAGS] = 0x03);
    assert_eq!(dc.open(T0, &t), Err(CryptoError::Wire(WireError::BadValue("header flags"))));
    let t = with(&|t| t[header_field::VERSION] = 2);
    assert_eq!(dc.open(T0, &t), Err(CryptoError::Wire(WireError::UnsupportedVersion(2))));

    // Sender swapped between two roles that may both use the key (K_tun: MN and CN, with
    // the RS opening): the nonce differs, so the tag fails.
    let mut mn: Channel<Tun> = channel(3, Sender::Mn);
    let mut rs: Channel<Tun> = channel(3, Sender::Rs);
    let punch: Message = HolePunch { side: Side::Mn, release: false }.into();
    let sealed = mn.seal(T0, &punch).unwrap();
    let mut t = sealed.clone();
    t[header_field::SENDER] = u8::from(Sender::Cn);
    assert_eq!(rs.open(T0, &t), Err(CryptoError::Forged));

    // After all of that, the genuine messages still open.
    assert_eq!(rs.open(T0, &sealed).map(|(_, m)| m), Ok(punch));
    let genuine = node.seal(T0, &keepalive(8)).unwrap();
    assert_eq!(dc.open(T0, &genuine).map(|(_, m)| m), Ok(keepalive(8)));
}

#[test]
fn wrong_key_is_forged() {
    let mut node: Channel<NtmDc> = channel(1, Sender::Node);
    let mut other_dc: Channel<NtmDc> = channel(99, Sender::Dc);
    let sealed = node.seal(T0, &keepalive(1)).unwrap();
    assert_eq!(other_dc.open(T0, &sealed), Err(CryptoError::Forged));
    // Same bytes under another kind of key: the sender role gives it away before the tag.
    let mut as_tun: Channel<Tun> = channel(1, Sender::Mn);
    let mut dc: Channel<NtmDc> = channel(1, Sender::Dc);
    let sealed = as_tun.seal(T0, &keepalive(1)).unwrap();
    assert_eq!(dc.open(T0, &sealed), Err(CryptoError::SenderNotAllowed(Sender::Mn)));
}

#[test]
fn replays_are_refused_and_reordering_is_not() {
    let (mut node, mut dc) = node_and_dc();
    let msgs: Vec<_> = (0..6).map(|n| node.seal(T0, &keepalive(n)).unwrap()).collect();
    for i in [3, 0, 5, 1, 4, 2] {
        assert_eq!(dc.open(T0, &msgs[i]).map(|(_, m)| m), Ok(keepalive(i as u32)), "message {i}");
    }
    for m in &msgs {
        assert_eq!(dc.open(T0, m), Err(CryptoError::Replayed));
    }
}

#[test]
fn counters_older_than_the_window_are_refused() {
    let (mut node, mut dc) = node_and_dc();
    let m0 = node.seal(T0, &keepalive(0)).unwrap();
    let m1 = node.seal(T0, &keepalive(1)).unwrap();
    node.resume_at(WINDOW_BITS);
    let newest = node.seal(T0, &keepalive(2)).unwrap();
    assert_eq!(dc.open(T0, &newest).unwrap().0.counter, WINDOW_BITS);
    // The window holds the newest counter and the WINDOW_BITS - 1 before it: 1 is the
    // oldest still inside, 0 is outside.
    assert_eq!(dc.open(T0, &m0), Err(CryptoError::TooOld));
    assert_eq!(dc.open(T0, &m1).map(|(_, m)| m), Ok(keepalive(1)));
    assert_eq!(dc.open(T0, &m1), Err(CryptoError::Replayed));
}

#[test]
fn reflected_messages_are_refused() {
    let (mut node, _) = node_and_dc();
    let sealed = node.seal(T0, &keepalive(1)).unwrap();
    assert_eq!(node.open(T0, &sealed), Err(CryptoError::Reflected));
    // A reflected K_mncn packet too.
    let mut a: Channel<MnCn> = channel(2, Sender::Initiator);
    let sealed = a.seal(T0, &keepalive(1)).unwrap();
    assert_eq!(a.open(T0, &sealed), Err(CryptoError::Reflected));
}

#[test]
fn roles_outside_the_key_kind_cannot_seal_or_be_accepted() {
    for s in [Sender::Ns, Sender::Rs, Sender::As, Sender::DcPeer, Sender::Mn, Sender::Unknown(0)] {
        assert_eq!(
            Channel::<NtmDc>::new(KNtmDc::from_bytes([1; 16]), ID, s, EXPIRES).err(),
            Some(CryptoError::SenderNotAllowed(s))
        );
    }
    assert_eq!(
        Channel::<Tun>::new(KTun::from_bytes([1; 16]), ID, Sender::Initiator, EXPIRES).err(),
        Some(CryptoError::SenderNotAllowed(Sender::Initiator))
    );
    // An RS holds K_tun and may seal under it, but never under K_mncn.
    assert!(Channel::<Tun>::new(KTun::from_bytes([1; 16]), ID, Sender::Rs, EXPIRES).is_ok());
    assert!(Channel::<MnCn>::new(Key::from_bytes([1; 16]), ID, Sender::Rs, EXPIRES).is_err());
}

#[test]
fn expired_keys_neither_seal_nor_open() {
    let (mut node, mut dc) = node_and_dc();
    let before = node.seal(EXPIRES - ntm_proto::Duration::from_millis(1), &keepalive(1)).unwrap();
    assert_eq!(node.seal(EXPIRES, &keepalive(2)), Err(CryptoError::Expired));
    // A refused seal used no counter.
    assert_eq!(node.next_counter(), 1);
    assert_eq!(dc.open(EXPIRES, &before), Err(CryptoError::Expired));
    assert!(dc.is_expired(EXPIRES));
    // Extending the key makes the same message acceptable: the refusal did not commit it.
    dc.set_expires(EXPIRES + ntm_proto::Duration::from_secs(60));
    assert_eq!(dc.open(EXPIRES, &before).map(|(_, m)| m), Ok(keepalive(1)));
}

#[test]
fn counter_exhaustion_is_refused() {
    let (mut node, mut dc) = node_and_dc();
    node.resume_at(u64::MAX - 1);
    let last = node.seal(T0, &keepalive(1)).unwrap();
    assert_eq!(node.next_counter(), u64::MAX);
    assert_eq!(node.seal(T0, &keepalive(2)), Err(CryptoError::CounterExhausted));
    assert_eq!(node.seal(T0, &keepalive(3)), Err(CryptoError::CounterExhausted));
    let mut buf = vec![0u8; HEADER_LEN + 4 + TAG_LEN];
    assert_eq!(node.seal_in_place(T0, MsgType::Keepalive, &mut buf), Err(CryptoError::CounterExhausted));
    // The last counter still opens, and the window copes with its top at u64::MAX.
    assert_eq!(dc.open(T0, &last).unwrap().0.counter, u64::MAX - 1);
    assert_eq!(dc.open(T0, &last), Err(CryptoError::Replayed));

    let (mut fresh, _) = node_and_dc();
    fresh.resume_at(u64::MAX);
    assert_eq!(fresh.seal(T0, &keepalive(1)), Err(CryptoError::CounterExhausted));
    // resume_at never lowers the counter.
    fresh.resume_at(5);
    assert_eq!(fresh.next_counter(), u64::MAX);
}

#[test]
fn a_counter_limit_stops_sealing_until_it_is_raised() {
    let (mut node, _) = node_and_dc();
    assert_eq!(node.counter_limit(), u64::MAX, "unlimited by default");
    node.limit_counter(2);
    node.seal(T0, &keepalive(1)).unwrap();
    node.seal(T0, &keepalive(2)).unwrap();
    assert_eq!(node.seal(T0, &keepalive(3)), Err(CryptoError::CounterNotReserved));
    let mut buf = vec![0u8; HEADER_LEN + 4 + TAG_LEN];
    assert_eq!(node.seal_in_place(T0, MsgType::Keepalive, &mut buf), Err(CryptoError::CounterNotReserved));
    // A refused seal used no counter; a raised limit lets it go on from there.
    assert_eq!(node.next_counter(), 2);
    node.limit_counter(3);
    assert_eq!(node.seal(T0, &keepalive(3)).map(|b| b[15]), Ok(2));
}

#[test]
fn refused_messages_do_not_move_the_window() {
    let (mut node, mut dc) = node_and_dc();
    let genuine: Vec<_> = (0..3).map(|n| node.seal(T0, &keepalive(n)).unwrap()).collect();

    // A forgery claiming a counter far ahead: had it been committed, every genuine message
    // would now be too old.
    let mut ahead = genuine[0].clone();
    ahead[header_field::COUNTER].copy_from_slice(&(1u64 << 50).to_be_bytes());
    assert_eq!(dc.open(T0, &ahead), Err(CryptoError::Forged));
    // A forgery with the counter of a genuine message: had it been committed, the genuine
    // one would now be a replay.
    let mut same = genuine[1].clone();
    *same.last_mut().unwrap() ^= 1;
    assert_eq!(dc.open(T0, &same), Err(CryptoError::Forged));
    // Refusals of other kinds, all for counter 2's slot.
    let mut wrong_id = genuine[2].clone();
    wrong_id[header_field::KEY_ID].copy_from_slice(&[0, 0, 0, 9]);
    assert_eq!(dc.open(T0, &wrong_id), Err(CryptoError::WrongKeyId));
    assert_eq!(dc.open(EXPIRES, &genuine[2]), Err(CryptoError::Expired));

    // The data plane's in-place path follows the same rule.
    let mut buf = ahead.clone();
    assert_eq!(dc.open_in_place(T0, &mut buf), Err(CryptoError::Forged));

    for (n, m) in genuine.iter().enumerate() {
        assert_eq!(dc.open(T0, m).map(|(_, m)| m), Ok(keepalive(n as u32)), "message {n}");
    }
}

#[test]
fn each_peer_sender_has_its_own_window() {
    // K_tun: the RS hears MN and CN, each counting from 0.
    let mut mn: Channel<Tun> = channel(3, Sender::Mn);
    let mut cn: Channel<Tun> = channel(3, Sender::Cn);
    let mut rs: Channel<Tun> = channel(3, Sender::Rs);
    let from_mn = mn.seal(T0, &HolePunch { side: Side::Mn, release: false }.into()).unwrap();
    let from_cn = cn.seal(T0, &HolePunch { side: Side::Cn, release: false }.into()).unwrap();
    assert_eq!(from_mn[header_field::COUNTER], from_cn[header_field::COUNTER]);
    // Same plaintext layout, same counter, different sender: different nonces.
    assert_ne!(from_mn[HEADER_LEN..], from_cn[HEADER_LEN..]);
    assert!(rs.open(T0, &from_mn).is_ok());
    assert!(rs.open(T0, &from_cn).is_ok());
    assert_eq!(rs.open(T0, &from_mn), Err(CryptoError::Replayed));
    assert_eq!(rs.open(T0, &from_cn), Err(CryptoError::Replayed));
    // MN hears both CN and the RS.
    let from_rs = rs.seal(T0, &keepalive(1)).unwrap();
    assert!(mn.open(T0, &from_cn).is_ok());
    assert!(mn.open(T0, &from_rs).is_ok());
}

#[test]
fn plain_messages_are_not_accepted_as_sealed() {
    let (_, mut dc) = node_and_dc();
    let p = plain(Sender::Node, &keepalive(1));
    // A plain header has key id 0; with the right id it is still not sealed.
    assert_eq!(dc.open(T0, &p), Err(CryptoError::NotSealed));
    let mut p2 = p.clone();
    p2[header_field::KEY_ID].copy_from_slice(&ID.0.to_be_bytes());
    p2.extend_from_slice(&[0; TAG_LEN]);
    assert_eq!(dc.open(T0, &p2), Err(CryptoError::NotSealed));
}
