//! Property tests over every message body (house style, rule 16): for arbitrary values of
//! every type, `parse(emit(m)) == m`, `body_len` is the emitted length, every truncation
//! is refused, and parsing arbitrary or mutated bytes never panics and, when it succeeds,
//! re-emits exactly the bytes it read (the encoding is canonical).

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use ntm_proto::crypto::pk::{Attestation, KeyPair, PublicKey, PublicWrap, Signature, TmpWrap};
use ntm_proto::keys::{Key, KeyGrant, KeyKind};
use ntm_proto::wire::data::DataBody;
use ntm_proto::wire::direction::{DirectionRequest, Endpoint, NodeInfo, NodeInfoAnswer, NodeInfoRequest};
use ntm_proto::wire::keyshare::{KeyShare, KeyShareAck, SharedKey};
use ntm_proto::wire::login::{
    Credential, IdToken, KeyDistribution, LoginRequest, LoginResponse, NtmAck, Password, EMAIL_MAX, ID_TOKEN_MAX,
    PASSWORD_MAX,
};
use ntm_proto::wire::notification::{
    NotificationAck, NotificationRegistration, Notify, NotifyAck, NsKeepalive, NsKeepaliveAck, NsKeyAck,
    NsKeyDistribution, NsProbe, NOTIFY_PAYLOAD_MAX,
};
use ntm_proto::wire::refusal::{Reason, Refusal, DETAIL_MAX};
use ntm_proto::wire::registration::{
    Keepalive, KeepaliveAck, KeepaliveMethod, MappingOffer, MappingProbe, MappingProbeAck, NatMapping, NsGrant,
    RegistrationRequest, RegistrationResponse, LOCAL_ADDRS_MAX, PUSH_TOKEN_MAX,
};
use ntm_proto::wire::relay::{GatewayDirection, RelayDirection, RelayDirectionAck, RelayStatus, RelayStatusAck};
use ntm_proto::wire::route::{Path, PeerInfo, RouteDirection, RouteDirectionAck, Side, Traversal, TunnelRole};
use ntm_proto::wire::tunnel::{
    HolePunch, HolePunchAck, PathProbe, PathProbeAck, TunnelRequest, TunnelResponse, WrappedKey,
};
use ntm_proto::wire::{
    Bytes, Codec, Envelope, Fqdn, Header, KeyId, Lifetime, List, Message, MsgType, Prefix, RequestId, Sender,
    SessionId, Tail, Tails, Text, VirtualAddrs, WireError, FQDN_MAX, HEADER_LEN,
};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::BoxedStrategy;
use proptest::test_runner::{Config, TestRunner};
use rand_chacha::rand_core::SeedableRng;
use std::sync::OnceLock;

// ---------------------------------------------------------------------------------------
// Strategies for the field types.
// ---------------------------------------------------------------------------------------

/// A canonical label: 1-63 of [a-z0-9_-], no hyphen at either end.
fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9_]",
        "[a-z0-9_][a-z0-9_-]{0,8}[a-z0-9_]",
        "[a-z0-9_][a-z0-9_-]{61}[a-z0-9_]", // the longest label
    ]
}

/// A canonical name of up to 253 bytes.
fn fqdn() -> impl Strategy<Value = Fqdn> {
    prop::collection::vec(label(), 1..6).prop_filter_map("name too long", |labels| {
        let s = labels.join(".");
        (s.len() <= FQDN_MAX).then(|| Fqdn::new(&s).expect("labels are canonical"))
    })
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(a, p)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), p)),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(a, p)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), p)),
    ]
}

fn list<S: Strategy + 'static, const N: usize>(item: S) -> impl Strategy<Value = List<S::Value, N>>
where
    S::Value: core::fmt::Debug,
{
    prop::collection::vec(item, 0..=N).prop_map(|v| List::from_vec(v).expect("at most N items"))
}

fn virtual_addrs() -> impl Strategy<Value = VirtualAddrs> {
    (any::<[u8; 4]>(), any::<[u8; 16]>())
        .prop_map(|(v4, v6)| VirtualAddrs { v4: Ipv4Addr::from(v4), v6: Ipv6Addr::from(v6) })
}

fn key<K: KeyKind>() -> impl Strategy<Value = Key<K>> {
    any::<[u8; 16]>().prop_map(Key::from_bytes)
}

fn grant<K: KeyKind + core::fmt::Debug>() -> impl Strategy<Value = KeyGrant<K>> {
    (key::<K>(), any::<u32>()).prop_map(|(key, s)| KeyGrant { key, lifetime: Lifetime(s) })
}

/// Public keys of key pairs drawn once from a seeded RNG (arbitrary 33-byte strings are
/// almost never points on the curve).
fn public_key() -> impl Strategy<Value = PublicKey> {
    static KEYS: OnceLock<Vec<PublicKey>> = OnceLock::new();
    let keys = KEYS.get_or_init(|| {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(0x5052_4f50);
        (0..16).map(|_| KeyPair::generate(&mut rng).public()).collect()
    });
    select(keys.clone())
}

fn signature() -> impl Strategy<Value = Signature> {
    any::<[u8; 64]>().prop_map(Signature)
}

fn attestation() -> impl Strategy<Value = Attestation> {
    (fqdn(), public_key(), signature()).prop_map(|(fqdn, public_key, signature)| Attestation {
        fqdn,
        public_key,
        signature,
    })
}

fn text<const MAX: usize>() -> impl Strategy<Value = Text<MAX>> {
    prop_oneof![
        "\\PC{0,40}".prop_filter_map("too long", |s| Text::new(&s).ok()),
        Just(Text::new(&"x".repeat(MAX.min(255))).expect("exactly the cap")),
    ]
}

fn byte_vec(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..=max.min(64)),
        1 => prop::collection::vec(any::<u8>(), 0..=max),
        1 => Just(vec![0xa5; max]),
    ]
}

fn credential() -> impl Strategy<Value = Credential> {
    prop_oneof![
        (text::<EMAIL_MAX>(), byte_vec(PASSWORD_MAX)).prop_map(|(email, pw)| Credential::Password {
            email,
            password: Password::new(&pw).expect("within the cap"),
        }),
        Just(Credential::DeviceCertificate),
        byte_vec(ID_TOKEN_MAX).prop_map(|t| Credential::OidcToken(IdToken::new(&t).expect("within the cap"))),
    ]
}

fn keepalive_method() -> impl Strategy<Value = KeepaliveMethod> {
    prop_oneof![
        Just(KeepaliveMethod::Udp),
        Just(KeepaliveMethod::Ns),
        byte_vec(PUSH_TOKEN_MAX).prop_map(|t| KeepaliveMethod::Push(Bytes::new(t).expect("within the cap"))),
    ]
}

fn ns_grant() -> impl Strategy<Value = NsGrant> {
    (fqdn(), socket_addr(), any::<u32>(), grant()).prop_map(|(ns_fqdn, ns_addr, id, k_ntmns)| NsGrant {
        ns_fqdn,
        ns_addr,
        key_id: KeyId(id),
        k_ntmns,
    })
}

fn shared_key() -> impl Strategy<Value = SharedKey> {
    prop_oneof![grant().prop_map(SharedKey::DcDc), grant().prop_map(SharedKey::DcRs), grant().prop_map(SharedKey::DcNs),]
}

fn node_info() -> impl Strategy<Value = NodeInfo> {
    (
        fqdn(),
        virtual_addrs(),
        list::<_, 2>(
            (socket_addr(), any::<bool>()).prop_map(|(observed, behind_nat)| Endpoint { observed, behind_nat }),
        ),
        list::<_, LOCAL_ADDRS_MAX>(socket_addr()),
        any::<bool>(),
        prop::option::of(attestation()),
        (list::<_, 2>(select(NatMapping::ALL)), list::<_, 8>(prefix())),
    )
        .prop_map(|(fqdn, virtual_addrs, endpoints, local_addrs, via_ns, attestation, (mappings, announced))| {
            NodeInfo {
                fqdn,
                virtual_addrs,
                endpoints,
                local_addrs,
                via_ns,
                attestation,
                tail: Tails(mappings, announced),
            }
        })
}

/// An IPv4 or IPv6 prefix with its host bits clear.
fn prefix() -> impl Strategy<Value = Prefix> {
    prop_oneof![
        (any::<u32>(), 0..=32u8).prop_map(|(a, len)| {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            Prefix::new(Ipv4Addr::from(a & mask).into(), len).unwrap()
        }),
        (any::<u128>(), 0..=128u8).prop_map(|(a, len)| {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            Prefix::new(Ipv6Addr::from(a & mask).into(), len).unwrap()
        }),
    ]
}

fn path() -> impl Strategy<Value = Path> {
    prop_oneof![Just(Path::Direct), socket_addr().prop_map(Path::Relay), socket_addr().prop_map(Path::Gateway)]
}

fn wrapped_key() -> impl Strategy<Value = WrappedKey> {
    prop_oneof![
        (any::<[u8; 16]>(), any::<[u8; 16]>())
            .prop_map(|(ciphertext, tag)| WrappedKey::Tmp(TmpWrap { ciphertext, tag })),
        (public_key(), any::<[u8; 16]>(), any::<[u8; 16]>(), signature()).prop_map(
            |(ephemeral, ciphertext, tag, signature)| WrappedKey::Public(PublicWrap {
                ephemeral,
                ciphertext,
                tag,
                signature
            })
        ),
    ]
}

fn data_body() -> impl Strategy<Value = DataBody> {
    (prop_oneof![0x40u8..0x50, 0x60u8..0x70], byte_vec(1500)).prop_map(|(first, rest)| {
        let mut p = vec![first];
        p.extend(rest);
        DataBody::new(p).expect("IPv4 or IPv6 version nibble")
    })
}

fn rid() -> impl Strategy<Value = RequestId> {
    any::<u32>().prop_map(RequestId)
}
fn kid() -> impl Strategy<Value = KeyId> {
    any::<u32>().prop_map(KeyId)
}
fn sid() -> impl Strategy<Value = SessionId> {
    any::<u32>().prop_map(SessionId)
}

// ---------------------------------------------------------------------------------------
// One strategy per message type. The match is exhaustive, so a new type does not compile
// until it has a strategy here.
// ---------------------------------------------------------------------------------------

fn body(ty: MsgType) -> BoxedStrategy<Message> {
    fn b<S: Strategy + 'static>(s: S) -> BoxedStrategy<Message>
    where
        S::Value: Into<Message>,
    {
        s.prop_map(Into::into).boxed()
    }
    match ty {
        MsgType::LoginRequest => b((rid(), credential(), prop::option::of(public_key()))
            .prop_map(|(request_id, credential, public_key)| LoginRequest { request_id, credential, public_key })),
        MsgType::LoginResponse => {
            b((rid(), fqdn(), kid(), grant(), prop::option::of(attestation()), prop::option::of(public_key()))
                .prop_map(|(request_id, fqdn, key_id, k_ntmdc, attestation, as_public_key)| LoginResponse {
                    request_id,
                    fqdn,
                    key_id,
                    k_ntmdc,
                    attestation,
                    as_public_key,
                }))
        }
        MsgType::KeyDistribution => b((rid(), fqdn(), kid(), grant(), prop::option::of(attestation())).prop_map(
            |(request_id, fqdn, key_id, k_ntmdc, attestation)| KeyDistribution {
                request_id,
                fqdn,
                key_id,
                k_ntmdc,
                attestation,
            },
        )),
        MsgType::NtmAck => b((rid(), kid()).prop_map(|(request_id, key_id)| NtmAck { request_id, key_id })),
        MsgType::KeyShare => b((rid(), kid(), shared_key(), fqdn())
            .prop_map(|(request_id, key_id, key, from)| KeyShare { request_id, key_id, key, from })),
        MsgType::KeyShareAck => b((rid(), kid()).prop_map(|(request_id, key_id)| KeyShareAck { request_id, key_id })),
        MsgType::RegistrationRequest => {
            b((rid(), list(socket_addr()), keepalive_method(), prop::option::of(kid()), list::<_, 8>(prefix()))
                .prop_map(|(request_id, local_addrs, keepalive, ns_key_lost, announced)| RegistrationRequest {
                    request_id,
                    local_addrs,
                    keepalive,
                    ns_key_lost,
                    announced: Tail(announced),
                }))
        }
        MsgType::RegistrationResponse => {
            b((rid(), virtual_addrs(), socket_addr(), any::<bool>(), any::<u16>(), prop::option::of(ns_grant()))
                .prop_map(|(request_id, virtual_addrs, observed, behind_nat, keepalive_interval, ns)| {
                    RegistrationResponse { request_id, virtual_addrs, observed, behind_nat, keepalive_interval, ns }
                }))
        }
        MsgType::Keepalive => b(rid().prop_map(|request_id| Keepalive { request_id })),
        MsgType::KeepaliveAck => {
            b((rid(), socket_addr()).prop_map(|(request_id, observed)| KeepaliveAck { request_id, observed }))
        }
        MsgType::MappingOffer => b(any::<u16>().prop_map(|port| MappingOffer { port })),
        MsgType::GatewayOffer => {
            b((any::<bool>(), list(fqdn()))
                .prop_map(|(all, names)| ntm_proto::wire::route::GatewayOffer { all, names }))
        }
        MsgType::MappingProbe => b(rid().prop_map(|request_id| MappingProbe { request_id })),
        MsgType::MappingProbeAck => b((rid(), socket_addr(), select(NatMapping::ALL))
            .prop_map(|(request_id, observed, mapping)| MappingProbeAck { request_id, observed, mapping })),
        MsgType::NotificationRegistration => {
            b((rid(), fqdn()).prop_map(|(request_id, fqdn)| NotificationRegistration { request_id, fqdn }))
        }
        MsgType::NotificationAck => b((rid(), any::<u32>())
            .prop_map(|(request_id, keepalive_interval)| NotificationAck { request_id, keepalive_interval })),
        MsgType::NsKeepalive => b(rid().prop_map(|request_id| NsKeepalive { request_id })),
        MsgType::NsKeepaliveAck => b(rid().prop_map(|request_id| NsKeepaliveAck { request_id })),
        MsgType::NsProbe => b((rid(), any::<u32>()).prop_map(|(request_id, delay)| NsProbe { request_id, delay })),
        MsgType::NsKeyDistribution => b((rid(), fqdn(), kid(), grant())
            .prop_map(|(request_id, fqdn, key_id, k_ntmns)| NsKeyDistribution { request_id, fqdn, key_id, k_ntmns })),
        MsgType::NsKeyAck => b((rid(), kid()).prop_map(|(request_id, key_id)| NsKeyAck { request_id, key_id })),
        MsgType::Notify => {
            b((rid(), kid(), byte_vec(NOTIFY_PAYLOAD_MAX)).prop_map(|(request_id, node_key_id, payload)| Notify {
                request_id,
                node_key_id,
                payload: Bytes::new(payload).expect("within the cap"),
            }))
        }
        MsgType::NotifyAck => {
            b((rid(), any::<bool>()).prop_map(|(request_id, delivered)| NotifyAck { request_id, delivered }))
        }
        MsgType::DirectionRequest => b((rid(), fqdn(), prop::option::of(sid()))
            .prop_map(|(request_id, peer, previous)| DirectionRequest { request_id, peer, previous })),
        MsgType::NodeInfoRequest => b((rid(), fqdn(), fqdn())
            .prop_map(|(request_id, fqdn, requester)| NodeInfoRequest { request_id, fqdn, requester })),
        MsgType::NodeInfoAnswer => {
            b((rid(), node_info()).prop_map(|(request_id, info)| NodeInfoAnswer { request_id, info }))
        }
        MsgType::RouteDirection => b((
            (rid(), sid(), fqdn(), select(Side::ALL), select(TunnelRole::ALL)),
            (fqdn(), virtual_addrs(), list(socket_addr())),
            (
                path(),
                grant(),
                prop::option::of(key()),
                prop::option::of(attestation()),
                (select(Traversal::ALL), list::<_, 8>(prefix())).prop_map(|(t, p)| Tails(t, p)),
            ),
        )
            .prop_map(
                |(
                    (request_id, session, node, side, role),
                    (fqdn, virtual_addrs, endpoints),
                    (path, k_tun, k_tmp, peer_attestation, traversal),
                )| RouteDirection {
                    request_id,
                    session,
                    node,
                    side,
                    role,
                    peer: PeerInfo { fqdn, virtual_addrs, endpoints },
                    path,
                    k_tun,
                    k_tmp,
                    peer_attestation,
                    tail: traversal,
                },
            )),
        MsgType::RouteDirectionAck => {
            b((rid(), sid()).prop_map(|(request_id, session)| RouteDirectionAck { request_id, session }))
        }
        MsgType::RelayDirection => b((rid(), sid(), grant()).prop_map(|(request_id, session, k_tun)| RelayDirection {
            request_id,
            session,
            k_tun,
        })),
        MsgType::RelayDirectionAck => b((rid(), sid(), list(socket_addr()))
            .prop_map(|(request_id, session, relay_addrs)| RelayDirectionAck { request_id, session, relay_addrs })),
        MsgType::RelayStatus => b(rid().prop_map(|request_id| RelayStatus { request_id })),
        MsgType::GatewayDirection => b((rid(), sid(), grant(), any::<[u8; 4]>(), any::<[u8; 4]>(), any::<[u8; 4]>())
            .prop_map(|(request_id, session, k_tun, node, synthetic, real)| GatewayDirection {
                request_id,
                session,
                k_tun,
                node: Ipv4Addr::from(node),
                synthetic: Ipv4Addr::from(synthetic),
                real: Ipv4Addr::from(real),
            })),
        MsgType::RelayStatusAck => b((rid(), any::<u32>(), any::<u32>(), list(socket_addr())).prop_map(
            |(request_id, sessions, capacity, relay_addrs)| RelayStatusAck {
                request_id,
                sessions,
                capacity,
                relay_addrs,
            },
        )),
        MsgType::TunnelRequest => b((fqdn(), virtual_addrs(), wrapped_key())
            .prop_map(|(initiator, virtual_addrs, wrapped)| TunnelRequest { initiator, virtual_addrs, wrapped })),
        MsgType::TunnelResponse => b(virtual_addrs().prop_map(|virtual_addrs| TunnelResponse { virtual_addrs })),
        MsgType::HolePunch => {
            b((select(Side::ALL), any::<bool>()).prop_map(|(side, release)| HolePunch { side, release }))
        }
        MsgType::HolePunchAck => b(socket_addr().prop_map(|observed| HolePunchAck { observed })),
        MsgType::PathProbe => b(any::<u32>().prop_map(|probe_id| PathProbe { probe_id })),
        MsgType::PathProbeAck => {
            b((any::<u32>(), socket_addr()).prop_map(|(probe_id, observed)| PathProbeAck { probe_id, observed }))
        }
        MsgType::Data => b(data_body()),
        MsgType::Refusal => b((any::<u8>().prop_map(MsgType::from), rid(), select(Reason::ALL), text::<DETAIL_MAX>())
            .prop_map(|(in_reply_to, request_id, reason, detail)| Refusal { in_reply_to, request_id, reason, detail })),
        MsgType::Unknown(t) => unreachable!("no body for unknown type {t:#x}"),
    }
}

fn header(ty: MsgType) -> impl Strategy<Value = Header> {
    (any::<bool>(), any::<u8>(), any::<u32>(), any::<u64>()).prop_map(move |(sealed, s, id, counter)| Header {
        msg_type: ty,
        sealed,
        sender: Sender::from(s),
        key_id: KeyId(id),
        counter,
    })
}

/// A whole message of any type.
fn message() -> impl Strategy<Value = (Header, Message)> {
    select(MsgType::ALL).prop_flat_map(|ty| (header(ty), body(ty)))
}

fn whole(h: &Header, m: &Message) -> Vec<u8> {
    let mut out = h.to_bytes().to_vec();
    out.extend_from_slice(&m.body_to_vec());
    out
}

fn parse(bytes: &[u8]) -> Result<(Header, Message), WireError> {
    let env = Envelope::new_checked(bytes)?;
    let msg = Message::parse_body(env.msg_type(), env.body())?;
    Ok((Header::parse(&env), msg))
}

/// Runs `check` on `cases` values of every message type, so that each variant is covered
/// whatever the random draws.
fn for_every_type(cases: u32, check: impl Fn(MsgType, Header, Message) -> Result<(), TestCaseError>) {
    for ty in MsgType::ALL {
        let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
        runner.run(&(header(*ty), body(*ty)), |(h, m)| check(*ty, h, m)).unwrap_or_else(|e| panic!("{ty:?}: {e}"));
    }
}

// ---------------------------------------------------------------------------------------
// Properties.
// ---------------------------------------------------------------------------------------

#[test]
fn parse_of_emit_is_identity_for_every_type() {
    for_every_type(96, |ty, h, m| {
        prop_assert_eq!(m.msg_type(), ty);
        let body = m.body_to_vec();
        prop_assert_eq!(Message::parse_body(ty, &body), Ok(m.clone()));
        let bytes = whole(&h, &m);
        prop_assert_eq!(parse(&bytes), Ok((h, m)));
        Ok(())
    });
}

#[test]
fn body_len_is_the_emitted_length() {
    for_every_type(64, |_, _, m| {
        let n = m.body_len();
        // Emitting into a larger buffer writes exactly body_len bytes and no more.
        let mut big = vec![0xeeu8; n + 8];
        prop_assert_eq!(m.emit_body(&mut big), Ok(n));
        prop_assert!(big[n..].iter().all(|b| *b == 0xee));
        prop_assert_eq!(m.body_to_vec().len(), n);
        // Any shorter buffer is refused.
        if n > 0 {
            let mut short = vec![0u8; n - 1];
            prop_assert_eq!(m.emit_body(&mut short), Err(WireError::BufferTooSmall));
        }
        Ok(())
    });
}

/// The message ends with `Tails` whose second field is absent: a byte more is read as it.
fn second_tail_absent(m: &Message) -> bool {
    match m {
        Message::RouteDirection(rd) => rd.tail.1.is_empty(),
        Message::NodeInfoAnswer(a) => a.info.tail.1.is_empty(),
        _ => false,
    }
}

/// The bytes of the body's last field if it is a `Tail` (a field earlier builds neither
/// send nor read): None for types without one, Some(0) when it is absent.
fn tail_len(m: &Message) -> Option<usize> {
    match m {
        Message::RouteDirection(rd) => Some(rd.tail.encoded_len()),
        Message::NodeInfoAnswer(a) => Some(a.info.tail.encoded_len()),
        Message::RegistrationRequest(r) => Some(r.announced.encoded_len()),
        _ => None,
    }
}

#[test]
fn every_truncation_is_refused() {
    for_every_type(24, |ty, h, m| {
        let bytes = whole(&h, &m);
        // Without a tail that is there, a message is what an earlier build sends: it reads.
        let whole_but_tail = tail_len(&m).filter(|t| *t > 0).map(|t| bytes.len() - t);
        for n in 0..bytes.len() {
            let got = parse(&bytes[..n]);
            if ty == MsgType::Data && n > HEADER_LEN {
                // The Data body is the rest of the message: a cut is a shorter packet.
                prop_assert!(got.is_ok());
            } else if Some(n) == whole_but_tail {
                prop_assert!(got.is_ok(), "without its tail: {:?}", got);
            } else if whole_but_tail.is_some_and(|w| n > w) {
                // Inside two tail fields (`Tails`): a cut between them reads (or is the
                // first written as its default, refused); a cut inside one is short.
                let default = WireError::BadValue("tail field written as its default");
                let e = got.as_ref().err();
                prop_assert!(
                    e.is_none() || e == Some(&WireError::Truncated) || e == Some(&default),
                    "cut at {}: {:?}",
                    n,
                    e
                );
            } else {
                prop_assert_eq!(got.err(), Some(WireError::Truncated), "cut at {}", n);
            }
        }
        Ok(())
    });
}

#[test]
fn a_trailing_byte_is_refused() {
    for_every_type(32, |ty, h, m| {
        let mut bytes = whole(&h, &m);
        bytes.push(0);
        if ty == MsgType::Data {
            prop_assert!(parse(&bytes).is_ok());
        } else if tail_len(&m) == Some(0) || second_tail_absent(&m) {
            // Read as the absent tail, written out as its default (or cut short): refused.
            prop_assert!(parse(&bytes).is_err());
        } else {
            prop_assert_eq!(parse(&bytes).err(), Some(WireError::TrailingBytes));
        }
        Ok(())
    });
}

/// If bytes parse, they are the one encoding of what they parse to.
fn check_canonical(ty: MsgType, bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(m) = Message::parse_body(ty, bytes) {
        prop_assert_eq!(m.msg_type(), ty);
        prop_assert_eq!(m.body_to_vec(), bytes);
        prop_assert_eq!(m.body_len(), bytes.len());
    }
    Ok(())
}

proptest! {
    #![proptest_config(Config { cases: 2048, ..Config::default() })]

    /// Arbitrary bytes as the body of any type code: never a panic.
    #[test]
    fn arbitrary_bodies_never_panic(t in any::<u8>(), bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        check_canonical(MsgType::from(t), &bytes)?;
    }

    /// Arbitrary whole messages: the header view and the body parser never panic.
    #[test]
    fn arbitrary_messages_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(env) = Envelope::new_checked(&bytes[..]) {
            let h = Header::parse(&env);
            prop_assert_eq!(&h.to_bytes()[..], env.header());
            check_canonical(env.msg_type(), env.body())?;
        }
    }

    /// Valid messages with a few bytes overwritten reach deep into the parsers: never a
    /// panic, and whatever still parses re-emits the same bytes.
    #[test]
    fn mutated_messages_never_panic(
        (h, m) in message(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
        do_cut in any::<bool>(),
    ) {
        let mut bytes = whole(&h, &m);
        for (i, v) in edits {
            let i = i.index(bytes.len());
            bytes[i] = v;
        }
        if do_cut {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        if let Ok(env) = Envelope::new_checked(&bytes[..]) {
            check_canonical(env.msg_type(), env.body())?;
        }
    }

    /// Header fields round trip through the view whatever their values.
    #[test]
    fn headers_round_trip((h, m) in message()) {
        let bytes = whole(&h, &m);
        let env = Envelope::new_checked(&bytes[..]).unwrap();
        prop_assert_eq!(Header::parse(&env), h);
        prop_assert_eq!(env.sealed(), h.sealed);
        prop_assert_eq!(env.sender(), h.sender);
        prop_assert_eq!(env.key_id(), h.key_id);
        prop_assert_eq!(env.counter(), h.counter);
    }

    /// Any name a user may type is canonicalised to one that round trips.
    #[test]
    fn names_round_trip(name in fqdn(), upper in any::<bool>(), dot in any::<bool>()) {
        let mut typed = if upper { name.as_str().to_ascii_uppercase() } else { name.as_str().to_owned() };
        if dot { typed.push('.'); }
        let parsed = Fqdn::new(&typed);
        prop_assert_eq!(parsed.as_ref(), Ok(&name));
        let mut bytes = vec![u8::try_from(name.as_str().len()).unwrap()];
        bytes.extend_from_slice(name.as_str().as_bytes());
        let msg = Message::NotificationRegistration(NotificationRegistration { request_id: RequestId(1), fqdn: name });
        prop_assert_eq!(&msg.body_to_vec()[4..], &bytes[..]);
    }
}
