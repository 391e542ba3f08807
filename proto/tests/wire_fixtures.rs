//! Byte fixtures for every message type (house style, rule 16): each fixture is a whole
//! message, a 16-byte header and a body written out field by field. The tests check that
//! each fixture parses to a value built field by field, that emitting that value gives the
//! fixture back byte for byte, that every truncated prefix and every trailing byte is
//! refused, and that every unknown code point is refused.
//!
//! Symmetric keys are literal byte patterns (0x10.. for K_ntmdc, 0x20.. for K_ntmns, ...).
//! P-256 values come from a `ChaCha20Rng` with a fixed seed; they are written out as
//! literals too, and `p256_literals_are_reproducible` recomputes them from the seed.

use core::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use ntm_proto::crypto::pk::{
    unwrap_from_peer, unwrap_with_tmp, wrap_for_peer, wrap_with_tmp, Attestation, KeyPair, PublicKey, PublicWrap,
    Signature, TmpWrap,
};
use ntm_proto::keys::{DcDc, DcNs, DcRs, KMnCn, KTmp, Key, KeyGrant, KeyKind};
use ntm_proto::wire::data::DataBody;
use ntm_proto::wire::direction::{DirectionRequest, Endpoint, NodeInfo, NodeInfoAnswer, NodeInfoRequest};
use ntm_proto::wire::keyshare::{KeyShare, KeyShareAck, SharedKey, SharedKeyKind};
use ntm_proto::wire::login::{
    Credential, CredentialKind, IdToken, KeyDistribution, LoginRequest, LoginResponse, NtmAck, Password,
};
use ntm_proto::wire::notification::{
    NotificationAck, NotificationRegistration, Notify, NotifyAck, NsKeepalive, NsKeepaliveAck, NsKeyAck,
    NsKeyDistribution, NsProbe,
};
use ntm_proto::wire::refusal::{Reason, Refusal};
use ntm_proto::wire::registration::{
    Keepalive, KeepaliveAck, KeepaliveKind, KeepaliveMethod, MappingOffer, MappingProbe, MappingProbeAck, NatMapping,
    NsGrant, RegistrationRequest, RegistrationResponse,
};
use ntm_proto::wire::relay::{GatewayDirection, RelayDirection, RelayDirectionAck, RelayStatus, RelayStatusAck};
use ntm_proto::wire::route::{Path, PeerInfo, RouteDirection, RouteDirectionAck, Side, Traversal, TunnelRole};
use ntm_proto::wire::tunnel::{
    HolePunch, HolePunchAck, PathProbe, PathProbeAck, TunnelRequest, TunnelResponse, WrappedKey,
};
use ntm_proto::wire::{
    Bytes, Envelope, Fqdn, Header, KeyId, Lifetime, List, Message, MsgType, Prefix, RequestId, Sender, SessionId, Tail,
    Tails, Text, VirtualAddrs, WireError, HEADER_LEN,
};
use ntm_proto::Instant;
use rand_chacha::rand_core::SeedableRng;

// ---------------------------------------------------------------------------------------
// Field values, as they appear on the wire.
// ---------------------------------------------------------------------------------------

/// "mn.a.example": length 12, then the name.
const MN_NAME: &[u8] = b"\x0cmn.a.example";
/// "cn.b.example": length 12, then the name.
const CN_NAME: &[u8] = b"\x0ccn.b.example";
/// "dc.a.example": length 12, then the name.
const DC_NAME: &[u8] = b"\x0cdc.a.example";
/// "ns1.a.example": length 13, then the name.
const NS_NAME: &[u8] = b"\x0dns1.a.example";

/// MN's virtual addresses: 100.64.0.1 and fd00::1.
const MN_VADDRS: &[u8] = &[
    100, 64, 0, 1, // virtual v4 100.64.0.1
    0xfd, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, // virtual v6 fd00::1
];
/// CN's virtual addresses: 100.64.0.2 and fd00::2.
const CN_VADDRS: &[u8] = &[
    100, 64, 0, 2, // virtual v4 100.64.0.2
    0xfd, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, // virtual v6 fd00::2
];

/// A node's own address 192.0.2.10:40000.
const LOCAL_V4: &[u8] = &[
    0x04, // family IPv4
    192, 0, 2, 10, // address
    0x9c, 0x40, // port 40000
];
/// A node's own address [2001:db8::10]:40000.
const LOCAL_V6: &[u8] = &[
    0x06, // family IPv6
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x10, // address
    0x9c, 0x40, // port 40000
];
/// An observed (NAT outside) address 198.51.100.7:61000.
const OBSERVED_V4: &[u8] = &[
    0x04, // family IPv4
    198, 51, 100, 7, // address
    0xee, 0x48, // port 61000
];
/// An observed address [2001:db8:ffff::7]:61000.
const OBSERVED_V6: &[u8] = &[
    0x06, // family IPv6
    0x20, 0x01, 0x0d, 0xb8, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x07, // address
    0xee, 0x48, // port 61000
];
/// A relay address 203.0.113.9:3478.
const RELAY_V4: &[u8] = &[
    0x04, // family IPv4
    203, 0, 113, 9, // address
    0x0d, 0x96, // port 3478
];
/// A relay address [2001:db8:5::9]:3478.
const RELAY_V6: &[u8] = &[
    0x06, // family IPv6
    0x20, 0x01, 0x0d, 0xb8, 0x00, 0x05, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x09, // address
    0x0d, 0x96, // port 3478
];
/// An NS address 203.0.113.5:7000.
const NS_ADDR_V4: &[u8] = &[
    0x04, // family IPv4
    203, 0, 113, 5, // address
    0x1b, 0x58, // port 7000
];
/// An NS address [2001:db8:2::5]:7000.
const NS_ADDR_V6: &[u8] = &[
    0x06, // family IPv6
    0x20, 0x01, 0x0d, 0xb8, 0x00, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x05, // address
    0x1b, 0x58, // port 7000
];

const K_NTMDC: [u8; 16] =
    [0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f];
const K_NTMNS: [u8; 16] =
    [0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x2b, 0x2c, 0x2d, 0x2e, 0x2f];
const K_DCDC: [u8; 16] =
    [0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x3b, 0x3c, 0x3d, 0x3e, 0x3f];
const K_DCRS: [u8; 16] =
    [0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x4b, 0x4c, 0x4d, 0x4e, 0x4f];
const K_DCNS: [u8; 16] =
    [0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x5b, 0x5c, 0x5d, 0x5e, 0x5f];
const K_TUN: [u8; 16] =
    [0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f];
const K_TMP: [u8; 16] =
    [0x70, 0x71, 0x72, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x7b, 0x7c, 0x7d, 0x7e, 0x7f];
const K_MNCN: [u8; 16] =
    [0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x8b, 0x8c, 0x8d, 0x8e, 0x8f];

/// The session of the tunnel fixtures; also the key id of their headers.
const SESSION: u32 = 0x5e55_1011;

/// Seed of the RNG that made the P-256 values below (in this order: AS key pair, MN key
/// pair, CN key pair, then the ephemeral key of MN's wrap for CN).
const P256_SEED: u64 = 0x4e54_4d6f;

/// The AS's attestation public key (compressed SEC1).
const AS_PUB: [u8; 33] = [
    0x02, 0x0f, 0x2b, 0xf7, 0x26, 0x78, 0x57, 0x6d, 0x8d, 0x2c, 0x1b, 0x8c, 0xe8, 0x6e, 0x9c, 0x51, 0xa1, 0xc2, 0x16,
    0xbc, 0x3a, 0x6c, 0x21, 0x39, 0x99, 0x92, 0xc3, 0xc7, 0xfe, 0xe1, 0x67, 0x1d, 0xa7,
];
/// MN's public key.
const MN_PUB: [u8; 33] = [
    0x03, 0xe8, 0x8c, 0x9c, 0x7f, 0x07, 0xe2, 0x3c, 0x17, 0x30, 0xd3, 0xbc, 0x01, 0x20, 0xb9, 0x6c, 0x3d, 0xc7, 0xbf,
    0x76, 0x5d, 0x26, 0x4f, 0xc9, 0x00, 0xd0, 0x80, 0x8e, 0x17, 0xa4, 0x00, 0x8c, 0x49,
];
/// CN's public key.
const CN_PUB: [u8; 33] = [
    0x02, 0x68, 0xa5, 0xd3, 0x62, 0x0a, 0x7f, 0xfa, 0xd4, 0x07, 0xd0, 0xd9, 0xb4, 0x83, 0x7d, 0xb9, 0x63, 0xa6, 0x4c,
    0x58, 0x57, 0x5a, 0x4a, 0xbd, 0x95, 0x29, 0x63, 0x4b, 0xbb, 0x41, 0x81, 0x85, 0x60,
];
/// The AS's signature over (mn.a.example, MN_PUB) (RFC 6979, so deterministic).
const MN_ATT_SIG: [u8; 64] = [
    0x24, 0xe4, 0x48, 0x6a, 0xa0, 0xce, 0x06, 0x3a, 0x16, 0xf8, 0x0e, 0x01, 0xc4, 0x88, 0x9d, 0xd1, 0xf2, 0x09, 0xd2,
    0x79, 0x07, 0x84, 0x3a, 0xa0, 0xa2, 0x63, 0x68, 0xfa, 0x14, 0xc3, 0x11, 0xee, 0x04, 0x6a, 0xed, 0x6d, 0x76, 0x30,
    0xaf, 0x09, 0x8d, 0xc8, 0xb0, 0xd3, 0xa8, 0x14, 0xde, 0x3d, 0x23, 0x00, 0x5d, 0x54, 0xb3, 0x1a, 0xaa, 0x48, 0x26,
    0x21, 0xbd, 0x69, 0x8a, 0xa4, 0xe5, 0x21,
];
/// The AS's signature over (cn.b.example, CN_PUB).
const CN_ATT_SIG: [u8; 64] = [
    0xb5, 0x32, 0xee, 0x0b, 0x20, 0xe1, 0x26, 0x5b, 0x63, 0x96, 0xc4, 0xfb, 0x37, 0x56, 0x8a, 0x1f, 0xcf, 0x87, 0x25,
    0xe1, 0xad, 0x36, 0x94, 0xf6, 0xe9, 0xf1, 0x5d, 0x5f, 0x35, 0x14, 0x70, 0xd0, 0x5a, 0x63, 0x7f, 0xe1, 0xa0, 0x84,
    0xf8, 0x95, 0x41, 0x59, 0x19, 0x19, 0x41, 0x14, 0xb3, 0x05, 0x2d, 0x8f, 0x18, 0x6f, 0x32, 0xea, 0x3e, 0xbd, 0x69,
    0x11, 0xce, 0xb8, 0xa4, 0x6a, 0xf0, 0x82,
];
/// The ephemeral ECDH key of MN's wrap of K_MNCN for CN.
const WRAP_EPH: [u8; 33] = [
    0x03, 0xb9, 0x78, 0x5a, 0x86, 0xe5, 0xe4, 0xd1, 0x0e, 0x23, 0xf8, 0x8c, 0x3b, 0xc6, 0x3c, 0x81, 0x4a, 0x52, 0xa6,
    0xab, 0xe2, 0x0f, 0x23, 0x1b, 0xee, 0x76, 0xe6, 0x64, 0x8a, 0x12, 0xea, 0x2d, 0xe0,
];
/// K_MNCN encrypted under the ECIES-derived key.
const WRAP_CT: [u8; 16] =
    [0x59, 0x29, 0x26, 0x23, 0x10, 0xb5, 0xa5, 0x54, 0xe2, 0x79, 0x37, 0x03, 0x2a, 0xdb, 0x42, 0xf0];
/// Its CCM tag.
const WRAP_TAG: [u8; 16] =
    [0xc5, 0xed, 0xd0, 0x8b, 0x39, 0x63, 0x0d, 0xfd, 0xd1, 0x63, 0x52, 0xe5, 0xa1, 0x74, 0x4f, 0xfb];
/// MN's signature over the wrap.
const WRAP_SIG: [u8; 64] = [
    0x61, 0x6f, 0x39, 0x9b, 0x94, 0xf7, 0xce, 0x41, 0x08, 0x54, 0x65, 0xa1, 0x48, 0x00, 0xac, 0x6f, 0xbc, 0x42, 0x47,
    0x11, 0xd3, 0x4b, 0x1b, 0xbf, 0x1e, 0x78, 0xf1, 0x32, 0x00, 0x15, 0x93, 0x47, 0xaf, 0x7f, 0xbb, 0x7a, 0xaa, 0x5a,
    0xd6, 0x32, 0x57, 0x0c, 0x97, 0x7e, 0xd8, 0xb7, 0xc9, 0xa9, 0x92, 0x68, 0xac, 0xce, 0xc2, 0x7d, 0x4b, 0x68, 0xd9,
    0x05, 0xe5, 0x2e, 0x02, 0x9c, 0xee, 0x72,
];
/// K_MNCN wrapped with K_TMP for (SESSION, mn.a.example -> cn.b.example).
const TMP_CT: [u8; 16] =
    [0xbc, 0xcc, 0x0d, 0x69, 0xe7, 0xde, 0xf5, 0xf9, 0xed, 0xdb, 0xea, 0xc0, 0x73, 0xc1, 0xf3, 0x89];
/// Its CCM tag.
const TMP_TAG: [u8; 16] =
    [0x4c, 0x7a, 0x07, 0xe0, 0xfc, 0xbd, 0x64, 0xc5, 0xd0, 0x16, 0xe7, 0xd9, 0x09, 0xd4, 0xed, 0xf8];

// ---------------------------------------------------------------------------------------
// Owned values, built independently of the bytes above.
// ---------------------------------------------------------------------------------------

fn fq(s: &str) -> Fqdn {
    Fqdn::new(s).unwrap()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn list<T, const N: usize>(v: Vec<T>) -> List<T, N> {
    List::from_vec(v).unwrap()
}

fn grant<K: KeyKind>(bytes: [u8; 16], secs: u32) -> KeyGrant<K> {
    KeyGrant { key: Key::from_bytes(bytes), lifetime: Lifetime(secs) }
}

fn mn_vaddrs() -> VirtualAddrs {
    VirtualAddrs { v4: Ipv4Addr::new(100, 64, 0, 1), v6: "fd00::1".parse::<Ipv6Addr>().unwrap() }
}

fn cn_vaddrs() -> VirtualAddrs {
    VirtualAddrs { v4: Ipv4Addr::new(100, 64, 0, 2), v6: "fd00::2".parse::<Ipv6Addr>().unwrap() }
}

fn local_v4() -> SocketAddr {
    sa("192.0.2.10:40000")
}
fn local_v6() -> SocketAddr {
    sa("[2001:db8::10]:40000")
}
fn observed_v4() -> SocketAddr {
    sa("198.51.100.7:61000")
}
fn observed_v6() -> SocketAddr {
    sa("[2001:db8:ffff::7]:61000")
}
fn relay_v4() -> SocketAddr {
    sa("203.0.113.9:3478")
}
fn relay_v6() -> SocketAddr {
    sa("[2001:db8:5::9]:3478")
}

fn pk(bytes: &[u8; 33]) -> PublicKey {
    PublicKey::from_bytes(bytes).unwrap()
}

fn mn_attestation() -> Attestation {
    Attestation { fqdn: fq("mn.a.example"), public_key: pk(&MN_PUB), signature: Signature(MN_ATT_SIG) }
}

fn cn_attestation() -> Attestation {
    Attestation { fqdn: fq("cn.b.example"), public_key: pk(&CN_PUB), signature: Signature(CN_ATT_SIG) }
}

// ---------------------------------------------------------------------------------------
// The fixtures.
// ---------------------------------------------------------------------------------------

/// One whole message: its header, its body bytes, and the value they mean.
struct Fixture {
    name: &'static str,
    header: Header,
    body: Vec<u8>,
    expected: Message,
}

impl Fixture {
    fn bytes(&self) -> Vec<u8> {
        let mut out = self.header.to_bytes().to_vec();
        out.extend_from_slice(&self.body);
        out
    }
}

/// Joins field chunks into a body.
fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A header for a sealed message (the body below it is the plaintext).
fn sealed(msg_type: MsgType, sender: Sender, key_id: u32, counter: u64) -> Header {
    Header { msg_type, sealed: true, sender, key_id: KeyId(key_id), counter }
}

fn fx(name: &'static str, header: Header, body: Vec<u8>, expected: impl Into<Message>) -> Fixture {
    Fixture { name, header, body, expected: expected.into() }
}

#[rustfmt::skip]
fn fixtures() -> Vec<Fixture> {
    use MsgType as T;
    vec![
        // ---- Login (plain, inside TLS) ----
        fx("login_request_password", Header::plain(T::LoginRequest, Sender::Node), cat(&[
            &[0x00, 0x00, 0x00, 0x01],      // request_id 1
            &[0x01],                        // credential kind: password
            b"\x11alice@example.com",       // email: length 17, text
            b"\x06s3cret",                  // password: length 6, bytes
            &[0x00],                        // public_key: absent
        ]), LoginRequest {
            request_id: RequestId(1),
            credential: Credential::Password {
                email: Text::new("alice@example.com").unwrap(),
                password: Password::new(b"s3cret").unwrap(),
            },
            public_key: None,
        }),
        fx("login_request_device_cert", Header::plain(T::LoginRequest, Sender::Node), cat(&[
            &[0x00, 0x00, 0x00, 0x02],      // request_id 2
            &[0x02],                        // credential kind: device certificate (no bytes)
            &[0x01], &MN_PUB,               // public_key: present, 33-byte compressed point
        ]), LoginRequest {
            request_id: RequestId(2),
            credential: Credential::DeviceCertificate,
            public_key: Some(pk(&MN_PUB)),
        }),
        fx("login_request_oidc", Header::plain(T::LoginRequest, Sender::Node), cat(&[
            &[0x00, 0x00, 0x00, 0x03],      // request_id 3
            &[0x03],                        // credential kind: OpenID Connect
            &[0x00, 0x0d], b"eyJ0.e30.c2ln",  // id_token: u16 length 13, bytes
            &[0x00],                        // public_key: absent
        ]), LoginRequest {
            request_id: RequestId(3),
            credential: Credential::OidcToken(IdToken::new(b"eyJ0.e30.c2ln").unwrap()),
            public_key: None,
        }),
        fx("login_response_symmetric", Header::plain(T::LoginResponse, Sender::As), cat(&[
            &[0x00, 0x00, 0x00, 0x01],      // request_id 1
            MN_NAME,                        // fqdn mn.a.example
            &[0x00, 0x00, 0x10, 0x01],      // key_id 0x1001
            &K_NTMDC,                       // K_ntmdc
            &[0x00, 0x01, 0x51, 0x80],      // lifetime 86400 s
            &[0x00],                        // attestation: absent
            &[0x00],                        // as_public_key: absent
        ]), LoginResponse {
            request_id: RequestId(1),
            fqdn: fq("mn.a.example"),
            key_id: KeyId(0x1001),
            k_ntmdc: grant(K_NTMDC, 86400),
            attestation: None,
            as_public_key: None,
        }),
        fx("login_response_public_key", Header::plain(T::LoginResponse, Sender::As), cat(&[
            &[0x00, 0x00, 0x00, 0x02],      // request_id 2
            MN_NAME,                        // fqdn mn.a.example
            &[0x00, 0x00, 0x10, 0x02],      // key_id 0x1002
            &K_NTMDC,                       // K_ntmdc
            &[0x00, 0x01, 0x51, 0x80],      // lifetime 86400 s
            &[0x01],                        // attestation: present
            MN_NAME, &MN_PUB, &MN_ATT_SIG,  //   fqdn, public key, AS signature
            &[0x01], &AS_PUB,               // as_public_key: present
        ]), LoginResponse {
            request_id: RequestId(2),
            fqdn: fq("mn.a.example"),
            key_id: KeyId(0x1002),
            k_ntmdc: grant(K_NTMDC, 86400),
            attestation: Some(mn_attestation()),
            as_public_key: Some(pk(&AS_PUB)),
        }),
        fx("key_distribution", Header::plain(T::KeyDistribution, Sender::As), cat(&[
            &[0x00, 0x00, 0x00, 0x07],      // request_id 7
            MN_NAME,                        // fqdn mn.a.example
            &[0x00, 0x00, 0x10, 0x02],      // key_id 0x1002
            &K_NTMDC,                       // K_ntmdc
            &[0x00, 0x01, 0x51, 0x80],      // lifetime 86400 s
            &[0x01],                        // attestation: present
            MN_NAME, &MN_PUB, &MN_ATT_SIG,  //   fqdn, public key, AS signature
        ]), KeyDistribution {
            request_id: RequestId(7),
            fqdn: fq("mn.a.example"),
            key_id: KeyId(0x1002),
            k_ntmdc: grant(K_NTMDC, 86400),
            attestation: Some(mn_attestation()),
        }),
        fx("ntm_ack", Header::plain(T::NtmAck, Sender::Dc), cat(&[
            &[0x00, 0x00, 0x00, 0x07],      // request_id 7
            &[0x00, 0x00, 0x10, 0x02],      // key_id 0x1002
        ]), NtmAck { request_id: RequestId(7), key_id: KeyId(0x1002) }),

        // ---- Key Sharing (plain, inside mutual TLS) ----
        fx("key_share_dcdc", Header::plain(T::KeyShare, Sender::Dc), cat(&[
            &[0x00, 0x00, 0x01, 0x00],      // request_id 0x100
            &[0x00, 0x00, 0x40, 0x01],      // key_id 0x4001
            &[0x01],                        // kind: K_dcdc
            &K_DCDC,                        // key
            &[0x00, 0x00, 0x0e, 0x10],      // lifetime 3600 s
            DC_NAME,                        // from dc.a.example
        ]), KeyShare {
            request_id: RequestId(0x100),
            key_id: KeyId(0x4001),
            key: SharedKey::DcDc(grant::<DcDc>(K_DCDC, 3600)),
            from: fq("dc.a.example"),
        }),
        fx("key_share_dcrs", Header::plain(T::KeyShare, Sender::Dc), cat(&[
            &[0x00, 0x00, 0x01, 0x01],      // request_id 0x101
            &[0x00, 0x00, 0x50, 0x01],      // key_id 0x5001
            &[0x02],                        // kind: K_dcrs
            &K_DCRS,                        // key
            &[0x00, 0x00, 0x0e, 0x10],      // lifetime 3600 s
            DC_NAME,                        // from dc.a.example
        ]), KeyShare {
            request_id: RequestId(0x101),
            key_id: KeyId(0x5001),
            key: SharedKey::DcRs(grant::<DcRs>(K_DCRS, 3600)),
            from: fq("dc.a.example"),
        }),
        fx("key_share_dcns", Header::plain(T::KeyShare, Sender::Dc), cat(&[
            &[0x00, 0x00, 0x01, 0x02],      // request_id 0x102
            &[0x00, 0x00, 0x30, 0x01],      // key_id 0x3001
            &[0x03],                        // kind: K_dcns
            &K_DCNS,                        // key
            &[0xff, 0xff, 0xff, 0xff],      // lifetime u32::MAX s
            DC_NAME,                        // from dc.a.example
        ]), KeyShare {
            request_id: RequestId(0x102),
            key_id: KeyId(0x3001),
            key: SharedKey::DcNs(grant::<DcNs>(K_DCNS, u32::MAX)),
            from: fq("dc.a.example"),
        }),
        fx("key_share_ack", Header::plain(T::KeyShareAck, Sender::Rs), cat(&[
            &[0x00, 0x00, 0x01, 0x01],      // request_id 0x101
            &[0x00, 0x00, 0x50, 0x01],      // key_id 0x5001
        ]), KeyShareAck { request_id: RequestId(0x101), key_id: KeyId(0x5001) }),

        // ---- Registration and keepalive (K_ntmdc) ----
        fx("registration_request_udp", sealed(T::RegistrationRequest, Sender::Node, 0x1001, 0), cat(&[
            &[0x00, 0x00, 0x00, 0x10],      // request_id 0x10
            &[0x02],                        // local_addrs: 2 entries
            LOCAL_V4,                       //   192.0.2.10:40000
            LOCAL_V6,                       //   [2001:db8::10]:40000
            &[0x01],                        // keepalive method: UDP
            &[0x00],                        // ns_key_lost: absent
        ]), RegistrationRequest {
            request_id: RequestId(0x10),
            local_addrs: list(vec![local_v4(), local_v6()]),
            keepalive: KeepaliveMethod::Udp,
            ns_key_lost: None,
            announced: Tail(List::new()),
        }),
        fx("registration_request_push", sealed(T::RegistrationRequest, Sender::Node, 0x1001, 1), cat(&[
            &[0x00, 0x00, 0x00, 0x11],      // request_id 0x11
            &[0x00],                        // local_addrs: none
            &[0x03],                        // keepalive method: push
            &[0x00, 0x08], b"fcmtoken",     //   token: u16 length 8, bytes
            &[0x00],                        // ns_key_lost: absent
        ]), RegistrationRequest {
            request_id: RequestId(0x11),
            local_addrs: List::new(),
            keepalive: KeepaliveMethod::Push(Bytes::new(b"fcmtoken".to_vec()).unwrap()),
            ns_key_lost: None,
            announced: Tail(List::new()),
        }),
        fx("registration_request_ns", sealed(T::RegistrationRequest, Sender::Node, 0x1001, 2), cat(&[
            &[0x00, 0x00, 0x00, 0x12],      // request_id 0x12
            &[0x01],                        // local_addrs: 1 entry
            LOCAL_V6,                       //   [2001:db8::10]:40000
            &[0x02],                        // keepalive method: TCP via NS
            &[0x01, 0x00, 0x00, 0x20, 0x01], // ns_key_lost: key id 0x2001
        ]), RegistrationRequest {
            request_id: RequestId(0x12),
            local_addrs: list(vec![local_v6()]),
            keepalive: KeepaliveMethod::Ns,
            ns_key_lost: Some(KeyId(0x2001)),
            announced: Tail(List::new()),
        }),
        fx("registration_request_announced", sealed(T::RegistrationRequest, Sender::Node, 0x1001, 3), cat(&[
            &[0x00, 0x00, 0x00, 0x13],      // request_id 0x13
            &[0x00],                        // local_addrs: none
            &[0x01],                        // keepalive method: UDP
            &[0x00],                        // ns_key_lost: absent
            &[0x01],                        // announced: 1 prefix
            &[0x04, 0x18, 0xc6, 0x33, 0x64, 0x00], // 198.51.100.0/24
        ]), RegistrationRequest {
            request_id: RequestId(0x13),
            local_addrs: List::new(),
            keepalive: KeepaliveMethod::Udp,
            ns_key_lost: None,
            announced: Tail(list(vec![Prefix::new([198, 51, 100, 0].into(), 24).unwrap()])),
        }),
        fx("registration_response_v4", sealed(T::RegistrationResponse, Sender::Dc, 0x1001, 0), cat(&[
            &[0x00, 0x00, 0x00, 0x10],      // request_id 0x10
            MN_VADDRS,                      // virtual v4, virtual v6
            OBSERVED_V4,                    // observed 198.51.100.7:61000
            &[0x01],                        // behind_nat: true
            &[0x00, 0x14],                  // keepalive_interval 20 s
            &[0x00],                        // ns: absent
        ]), RegistrationResponse {
            request_id: RequestId(0x10),
            virtual_addrs: mn_vaddrs(),
            observed: observed_v4(),
            behind_nat: true,
            keepalive_interval: 20,
            ns: None,
        }),
        fx("registration_response_v6_ns_v4", sealed(T::RegistrationResponse, Sender::Dc, 0x1001, 1), cat(&[
            &[0x00, 0x00, 0x00, 0x12],      // request_id 0x12
            MN_VADDRS,                      // virtual v4, virtual v6
            OBSERVED_V6,                    // observed [2001:db8:ffff::7]:61000
            &[0x00],                        // behind_nat: false
            &[0x00, 0x00],                  // keepalive_interval 0
            &[0x01],                        // ns: present
            NS_NAME,                        //   ns_fqdn ns1.a.example
            NS_ADDR_V4,                     //   ns_addr 203.0.113.5:7000
            &[0x00, 0x00, 0x20, 0x01],      //   key_id 0x2001
            &K_NTMNS,                       //   K_ntmns
            &[0x00, 0x01, 0x51, 0x80],      //   lifetime 86400 s
        ]), RegistrationResponse {
            request_id: RequestId(0x12),
            virtual_addrs: mn_vaddrs(),
            observed: observed_v6(),
            behind_nat: false,
            keepalive_interval: 0,
            ns: Some(NsGrant {
                ns_fqdn: fq("ns1.a.example"),
                ns_addr: sa("203.0.113.5:7000"),
                key_id: KeyId(0x2001),
                k_ntmns: grant(K_NTMNS, 86400),
            }),
        }),
        fx("registration_response_v4_ns_v6", sealed(T::RegistrationResponse, Sender::Dc, 0x1001, 2), cat(&[
            &[0x00, 0x00, 0x00, 0x13],      // request_id 0x13
            MN_VADDRS,                      // virtual v4, virtual v6
            OBSERVED_V4,                    // observed 198.51.100.7:61000
            &[0x01],                        // behind_nat: true
            &[0xff, 0xff],                  // keepalive_interval 65535 s
            &[0x01],                        // ns: present
            NS_NAME,                        //   ns_fqdn ns1.a.example
            NS_ADDR_V6,                     //   ns_addr [2001:db8:2::5]:7000
            &[0x00, 0x00, 0x20, 0x02],      //   key_id 0x2002
            &K_NTMNS,                       //   K_ntmns
            &[0x00, 0x00, 0x00, 0x00],      //   lifetime 0 s
        ]), RegistrationResponse {
            request_id: RequestId(0x13),
            virtual_addrs: mn_vaddrs(),
            observed: observed_v4(),
            behind_nat: true,
            keepalive_interval: 0xffff,
            ns: Some(NsGrant {
                ns_fqdn: fq("ns1.a.example"),
                ns_addr: sa("[2001:db8:2::5]:7000"),
                key_id: KeyId(0x2002),
                k_ntmns: grant(K_NTMNS, 0),
            }),
        }),
        fx("keepalive", sealed(T::Keepalive, Sender::Node, 0x1001, 5), cat(&[
            &[0x00, 0x00, 0x00, 0x20],      // request_id 0x20
        ]), Keepalive { request_id: RequestId(0x20) }),
        fx("keepalive_ack_v4", sealed(T::KeepaliveAck, Sender::Dc, 0x1001, 5), cat(&[
            &[0x00, 0x00, 0x00, 0x20],      // request_id 0x20
            OBSERVED_V4,                    // observed 198.51.100.7:61000
        ]), KeepaliveAck { request_id: RequestId(0x20), observed: observed_v4() }),
        fx("keepalive_ack_v6", sealed(T::KeepaliveAck, Sender::Dc, 0x1001, 6), cat(&[
            &[0x00, 0x00, 0x00, 0x21],      // request_id 0x21
            OBSERVED_V6,                    // observed [2001:db8:ffff::7]:61000
        ]), KeepaliveAck { request_id: RequestId(0x21), observed: observed_v6() }),
        fx("mapping_offer", sealed(T::MappingOffer, Sender::Dc, 0x1001, 6), cat(&[
            &[0x11, 0x6c],                  // port 4460
        ]), MappingOffer { port: 4460 }),
        fx("gateway_offer", sealed(T::GatewayOffer, Sender::Dc, 0x1001, 8), cat(&[
            &[0x00],                        // all: no
            &[0x01],                        // names: 1 entry
            b"\x0dplain.example",           //   plain.example
        ]), ntm_proto::wire::route::GatewayOffer {
            all: false,
            names: list(vec![fq("plain.example")]),
        }),
        fx("mapping_probe", sealed(T::MappingProbe, Sender::Node, 0x1001, 7), cat(&[
            &[0x00, 0x00, 0x00, 0x22],      // request_id 0x22
        ]), MappingProbe { request_id: RequestId(0x22) }),
        fx("mapping_probe_ack", sealed(T::MappingProbeAck, Sender::Dc, 0x1001, 7), cat(&[
            &[0x00, 0x00, 0x00, 0x22],      // request_id 0x22
            OBSERVED_V4,                    // observed 198.51.100.7:61000
            &[0x02],                        // mapping: dependent
        ]), MappingProbeAck { request_id: RequestId(0x22), observed: observed_v4(), mapping: NatMapping::Dependent }),

        // ---- Notification Server (K_ntmns, K_dcns) ----
        fx("notification_registration", sealed(T::NotificationRegistration, Sender::Node, 0x2001, 0), cat(&[
            &[0x00, 0x00, 0x00, 0x30],      // request_id 0x30
            MN_NAME,                        // fqdn mn.a.example
        ]), NotificationRegistration { request_id: RequestId(0x30), fqdn: fq("mn.a.example") }),
        fx("notification_ack", sealed(T::NotificationAck, Sender::Ns, 0x2001, 0), cat(&[
            &[0x00, 0x00, 0x00, 0x30],      // request_id 0x30
            &[0x00, 0x00, 0x0e, 0x10],      // keepalive_interval 3600 s
        ]), NotificationAck { request_id: RequestId(0x30), keepalive_interval: 3600 }),
        fx("ns_keepalive", sealed(T::NsKeepalive, Sender::Node, 0x2001, 1), cat(&[
            &[0x00, 0x00, 0x00, 0x31],      // request_id 0x31
        ]), NsKeepalive { request_id: RequestId(0x31) }),
        fx("ns_keepalive_ack", sealed(T::NsKeepaliveAck, Sender::Ns, 0x2001, 1), cat(&[
            &[0x00, 0x00, 0x00, 0x31],      // request_id 0x31
        ]), NsKeepaliveAck { request_id: RequestId(0x31) }),
        fx("ns_probe", sealed(T::NsProbe, Sender::Node, 0x2001, 2), cat(&[
            &[0x00, 0x00, 0x00, 0x33],      // request_id 0x33
            &[0x00, 0x00, 0x05, 0xdc],      // delay 1500 s
        ]), NsProbe { request_id: RequestId(0x33), delay: 1500 }),
        fx("ns_key_distribution", sealed(T::NsKeyDistribution, Sender::Dc, 0x3001, 0), cat(&[
            &[0x00, 0x00, 0x00, 0x32],      // request_id 0x32
            MN_NAME,                        // fqdn mn.a.example
            &[0x00, 0x00, 0x20, 0x01],      // key_id 0x2001
            &K_NTMNS,                       // K_ntmns
            &[0x00, 0x01, 0x51, 0x80],      // lifetime 86400 s
        ]), NsKeyDistribution {
            request_id: RequestId(0x32),
            fqdn: fq("mn.a.example"),
            key_id: KeyId(0x2001),
            k_ntmns: grant(K_NTMNS, 86400),
        }),
        fx("ns_key_ack", sealed(T::NsKeyAck, Sender::Ns, 0x3001, 0), cat(&[
            &[0x00, 0x00, 0x00, 0x32],      // request_id 0x32
            &[0x00, 0x00, 0x20, 0x01],      // key_id 0x2001
        ]), NsKeyAck { request_id: RequestId(0x32), key_id: KeyId(0x2001) }),
        fx("notify", sealed(T::Notify, Sender::Dc, 0x3001, 1), cat(&[
            &[0x00, 0x00, 0x00, 0x33],      // request_id 0x33
            &[0x00, 0x00, 0x20, 0x01],      // node_key_id 0x2001
            &[0x00, 0x06],                  // payload: u16 length 6
            &[0x01, 0x40, 0x01, 0x02, 0xaa, 0xbb], // payload bytes (opaque to the NS)
        ]), Notify {
            request_id: RequestId(0x33),
            node_key_id: KeyId(0x2001),
            payload: Bytes::new(vec![0x01, 0x40, 0x01, 0x02, 0xaa, 0xbb]).unwrap(),
        }),
        fx("notify_ack", sealed(T::NotifyAck, Sender::Ns, 0x3001, 1), cat(&[
            &[0x00, 0x00, 0x00, 0x33],      // request_id 0x33
            &[0x01],                        // delivered: true
        ]), NotifyAck { request_id: RequestId(0x33), delivered: true }),

        // ---- Name resolution (K_ntmdc, K_dcdc) ----
        fx("direction_request", sealed(T::DirectionRequest, Sender::Node, 0x1001, 7), cat(&[
            &[0x00, 0x00, 0x00, 0x40],      // request_id 0x40
            CN_NAME,                        // peer cn.b.example
            &[0x00],                        // previous: absent
        ]), DirectionRequest { request_id: RequestId(0x40), peer: fq("cn.b.example"), previous: None }),
        fx("direction_request_handover", sealed(T::DirectionRequest, Sender::Node, 0x1001, 8), cat(&[
            &[0x00, 0x00, 0x00, 0x41],      // request_id 0x41
            CN_NAME,                        // peer cn.b.example
            &[0x01],                        // previous: present
            &[0x5e, 0x55, 0x10, 0x11],      //   session 0x5e551011
        ]), DirectionRequest {
            request_id: RequestId(0x41),
            peer: fq("cn.b.example"),
            previous: Some(SessionId(SESSION)),
        }),
        fx("node_info_request", sealed(T::NodeInfoRequest, Sender::Dc, 0x4001, 0), cat(&[
            &[0x00, 0x00, 0x00, 0x42],      // request_id 0x42
            CN_NAME,                        // fqdn cn.b.example
            MN_NAME,                        // requester mn.a.example
        ]), NodeInfoRequest {
            request_id: RequestId(0x42),
            fqdn: fq("cn.b.example"),
            requester: fq("mn.a.example"),
        }),
        fx("node_info_answer", sealed(T::NodeInfoAnswer, Sender::DcPeer, 0x4001, 0), cat(&[
            &[0x00, 0x00, 0x00, 0x42],      // request_id 0x42
            CN_NAME,                        // info.fqdn cn.b.example
            CN_VADDRS,                      // info.virtual_addrs
            &[0x02],                        // info.endpoints: 2 entries
            OBSERVED_V4, &[0x01],           //   198.51.100.7:61000, behind_nat true
            OBSERVED_V6, &[0x00],           //   [2001:db8:ffff::7]:61000, behind_nat false
            &[0x02],                        // info.local_addrs: 2 entries
            LOCAL_V4,                       //   192.0.2.10:40000
            LOCAL_V6,                       //   [2001:db8::10]:40000
            &[0x00],                        // info.via_ns: false
            &[0x00],                        // info.attestation: absent
        ]), NodeInfoAnswer {
            request_id: RequestId(0x42),
            info: NodeInfo {
                fqdn: fq("cn.b.example"),
                virtual_addrs: cn_vaddrs(),
                endpoints: list(vec![
                    Endpoint { observed: observed_v4(), behind_nat: true },
                    Endpoint { observed: observed_v6(), behind_nat: false },
                ]),
                local_addrs: list(vec![local_v4(), local_v6()]),
                via_ns: false,
                attestation: None,
                tail: Tails(List::new(), List::new()),
            },
        }),
        // With the mapping test's verdicts: the list follows (absent above: all untested,
        // the bytes of builds before the test).
        fx("node_info_answer_mappings", sealed(T::NodeInfoAnswer, Sender::DcPeer, 0x4001, 2), cat(&[
            &[0x00, 0x00, 0x00, 0x44],      // request_id 0x44
            CN_NAME,                        // info.fqdn cn.b.example
            CN_VADDRS,                      // info.virtual_addrs
            &[0x02],                        // info.endpoints: 2 entries
            OBSERVED_V4, &[0x01],           //   198.51.100.7:61000, behind_nat true
            OBSERVED_V6, &[0x00],           //   [2001:db8:ffff::7]:61000, behind_nat false
            &[0x00],                        // info.local_addrs: none
            &[0x00],                        // info.via_ns: false
            &[0x00],                        // info.attestation: absent
            &[0x02, 0x02, 0x00],            // info.mappings: dependent, untested
        ]), NodeInfoAnswer {
            request_id: RequestId(0x44),
            info: NodeInfo {
                fqdn: fq("cn.b.example"),
                virtual_addrs: cn_vaddrs(),
                endpoints: list(vec![
                    Endpoint { observed: observed_v4(), behind_nat: true },
                    Endpoint { observed: observed_v6(), behind_nat: false },
                ]),
                local_addrs: List::new(),
                via_ns: false,
                attestation: None,
                tail: Tails(list(vec![NatMapping::Dependent, NatMapping::Untested]), List::new()),
            },
        }),
        fx("node_info_answer_public_key", sealed(T::NodeInfoAnswer, Sender::DcPeer, 0x4001, 1), cat(&[
            &[0x00, 0x00, 0x00, 0x43],      // request_id 0x43
            CN_NAME,                        // info.fqdn cn.b.example
            CN_VADDRS,                      // info.virtual_addrs
            &[0x00],                        // info.endpoints: none
            &[0x00],                        // info.local_addrs: none
            &[0x01],                        // info.via_ns: true
            &[0x01],                        // info.attestation: present
            CN_NAME, &CN_PUB, &CN_ATT_SIG,  //   fqdn, public key, AS signature
        ]), NodeInfoAnswer {
            request_id: RequestId(0x43),
            info: NodeInfo {
                fqdn: fq("cn.b.example"),
                virtual_addrs: cn_vaddrs(),
                endpoints: List::new(),
                local_addrs: List::new(),
                via_ns: true,
                attestation: Some(cn_attestation()),
                tail: Tails(List::new(), List::new()),
            },
        }),

        // ---- Route Direction (K_ntmdc, K_dcdc) ----
        fx("route_direction_direct", sealed(T::RouteDirection, Sender::Dc, 0x1001, 9), cat(&[
            &[0x00, 0x00, 0x00, 0x50],      // request_id 0x50
            &[0x5e, 0x55, 0x10, 0x11],      // session 0x5e551011
            MN_NAME,                        // node mn.a.example
            &[0x01],                        // side: MN
            &[0x01],                        // role: initiate
            CN_NAME,                        // peer.fqdn cn.b.example
            CN_VADDRS,                      // peer.virtual_addrs
            &[0x02],                        // peer.endpoints: 2 entries
            OBSERVED_V4,                    //   198.51.100.7:61000
            OBSERVED_V6,                    //   [2001:db8:ffff::7]:61000
            &[0x01],                        // path: direct
            &K_TUN,                         // K_tun
            &[0x00, 0x00, 0x02, 0x58],      // lifetime 600 s
            &[0x01], &K_TMP,                // k_tmp: present
            &[0x00],                        // peer_attestation: absent
        ]), RouteDirection {
            request_id: RequestId(0x50),
            session: SessionId(SESSION),
            node: fq("mn.a.example"),
            side: Side::Mn,
            role: TunnelRole::Initiate,
            peer: PeerInfo {
                fqdn: fq("cn.b.example"),
                virtual_addrs: cn_vaddrs(),
                endpoints: list(vec![observed_v4(), observed_v6()]),
            },
            path: Path::Direct,
            k_tun: grant(K_TUN, 600),
            k_tmp: Some(KTmp::from_bytes(K_TMP)),
            peer_attestation: None,
            tail: Tails(Traversal::Usual, List::new()),
        }),
        fx("route_direction_relay_v6", sealed(T::RouteDirection, Sender::Dc, 0x4001, 2), cat(&[
            &[0x00, 0x00, 0x00, 0x51],      // request_id 0x51
            &[0x5e, 0x55, 0x10, 0x11],      // session 0x5e551011
            CN_NAME,                        // node cn.b.example
            &[0x02],                        // side: CN
            &[0x02],                        // role: await
            MN_NAME,                        // peer.fqdn mn.a.example
            MN_VADDRS,                      // peer.virtual_addrs
            &[0x01],                        // peer.endpoints: 1 entry
            OBSERVED_V6,                    //   [2001:db8:ffff::7]:61000
            &[0x02], RELAY_V6,              // path: relay at [2001:db8:5::9]:3478
            &K_TUN,                         // K_tun
            &[0x00, 0x00, 0x02, 0x58],      // lifetime 600 s
            &[0x00],                        // k_tmp: absent (public-key mode)
            &[0x01],                        // peer_attestation: present
            MN_NAME, &MN_PUB, &MN_ATT_SIG,  //   fqdn, public key, AS signature
        ]), RouteDirection {
            request_id: RequestId(0x51),
            session: SessionId(SESSION),
            node: fq("cn.b.example"),
            side: Side::Cn,
            role: TunnelRole::Await,
            peer: PeerInfo {
                fqdn: fq("mn.a.example"),
                virtual_addrs: mn_vaddrs(),
                endpoints: list(vec![observed_v6()]),
            },
            path: Path::Relay(relay_v6()),
            k_tun: grant(K_TUN, 600),
            k_tmp: None,
            peer_attestation: Some(mn_attestation()),
            tail: Tails(Traversal::Usual, List::new()),
        }),
        fx("route_direction_relay_v4", sealed(T::RouteDirection, Sender::Dc, 0x1001, 10), cat(&[
            &[0x00, 0x00, 0x00, 0x52],      // request_id 0x52
            &[0x5e, 0x55, 0x10, 0x12],      // session 0x5e551012
            MN_NAME,                        // node mn.a.example
            &[0x01],                        // side: MN
            &[0x02],                        // role: await
            CN_NAME,                        // peer.fqdn cn.b.example
            CN_VADDRS,                      // peer.virtual_addrs
            &[0x00],                        // peer.endpoints: none
            &[0x02], RELAY_V4,              // path: relay at 203.0.113.9:3478
            &K_TUN,                         // K_tun
            &[0x00, 0x00, 0x02, 0x58],      // lifetime 600 s
            &[0x01], &K_TMP,                // k_tmp: present
            &[0x00],                        // peer_attestation: absent
        ]), RouteDirection {
            request_id: RequestId(0x52),
            session: SessionId(SESSION + 1),
            node: fq("mn.a.example"),
            side: Side::Mn,
            role: TunnelRole::Await,
            peer: PeerInfo { fqdn: fq("cn.b.example"), virtual_addrs: cn_vaddrs(), endpoints: List::new() },
            path: Path::Relay(relay_v4()),
            k_tun: grant(K_TUN, 600),
            k_tmp: Some(KTmp::from_bytes(K_TMP)),
            peer_attestation: None,
            tail: Tails(Traversal::Usual, List::new()),
        }),
        // The same with a search of ports: the traversal byte follows. Without it (all of
        // the above) the bytes are those of builds before the search, which read them.
        fx("route_direction_relay_v4_search", sealed(T::RouteDirection, Sender::Dc, 0x1001, 11), cat(&[
            &[0x00, 0x00, 0x00, 0x53],      // request_id 0x53
            &[0x5e, 0x55, 0x10, 0x12],      // session 0x5e551012
            MN_NAME,                        // node mn.a.example
            &[0x01],                        // side: MN
            &[0x02],                        // role: await
            CN_NAME,                        // peer.fqdn cn.b.example
            CN_VADDRS,                      // peer.virtual_addrs
            &[0x01], OBSERVED_V4,           // peer.endpoints: 198.51.100.7:61000
            &[0x02], RELAY_V4,              // path: relay at 203.0.113.9:3478
            &K_TUN,                         // K_tun
            &[0x00, 0x00, 0x02, 0x58],      // lifetime 600 s
            &[0x01], &K_TMP,                // k_tmp: present
            &[0x00],                        // peer_attestation: absent
            &[0x01],                        // traversal: open ports
        ]), RouteDirection {
            request_id: RequestId(0x53),
            session: SessionId(SESSION + 1),
            node: fq("mn.a.example"),
            side: Side::Mn,
            role: TunnelRole::Await,
            peer: PeerInfo { fqdn: fq("cn.b.example"), virtual_addrs: cn_vaddrs(), endpoints: list(vec![observed_v4()]) },
            path: Path::Relay(relay_v4()),
            k_tun: grant(K_TUN, 600),
            k_tmp: Some(KTmp::from_bytes(K_TMP)),
            peer_attestation: None,
            tail: Tails(Traversal::OpenPorts, List::new()),
        }),
        fx("route_direction_ack", sealed(T::RouteDirectionAck, Sender::Node, 0x1001, 9), cat(&[
            &[0x00, 0x00, 0x00, 0x50],      // request_id 0x50
            &[0x5e, 0x55, 0x10, 0x11],      // session 0x5e551011
        ]), RouteDirectionAck { request_id: RequestId(0x50), session: SessionId(SESSION) }),

        // ---- Relay Server (K_dcrs) ----
        fx("relay_direction", sealed(T::RelayDirection, Sender::Dc, 0x5001, 0), cat(&[
            &[0x00, 0x00, 0x00, 0x60],      // request_id 0x60
            &[0x5e, 0x55, 0x10, 0x11],      // session 0x5e551011
            &K_TUN,                         // K_tun
            &[0x00, 0x00, 0x02, 0x58],      // lifetime 600 s
        ]), RelayDirection {
            request_id: RequestId(0x60),
            session: SessionId(SESSION),
            k_tun: grant(K_TUN, 600),
        }),
        fx("relay_direction_ack", sealed(T::RelayDirectionAck, Sender::Rs, 0x5001, 0), cat(&[
            &[0x00, 0x00, 0x00, 0x60],      // request_id 0x60
            &[0x5e, 0x55, 0x10, 0x11],      // session 0x5e551011
            &[0x02],                        // relay_addrs: 2 entries
            RELAY_V4,                       //   203.0.113.9:3478
            RELAY_V6,                       //   [2001:db8:5::9]:3478
        ]), RelayDirectionAck {
            request_id: RequestId(0x60),
            session: SessionId(SESSION),
            relay_addrs: list(vec![relay_v4(), relay_v6()]),
        }),
        fx("gateway_direction", sealed(T::GatewayDirection, Sender::Dc, 0x5001, 2), cat(&[
            &[0x00, 0x00, 0x00, 0x62],      // request_id 0x62
            &[0x5e, 0x55, 0x10, 0x11],      // session 0x5e551011
            &K_TUN,                         // K_tun
            &[0x00, 0x00, 0x02, 0x58],      // lifetime 600 s
            &[198, 18, 1, 2],               // node 198.18.1.2
            &[198, 18, 100, 1],             // synthetic 198.18.100.1
            &[198, 19, 80, 80],             // real 198.19.80.80
        ]), GatewayDirection {
            request_id: RequestId(0x62),
            session: SessionId(SESSION),
            k_tun: grant(K_TUN, 600),
            node: [198, 18, 1, 2].into(),
            synthetic: [198, 18, 100, 1].into(),
            real: [198, 19, 80, 80].into(),
        }),
        fx("relay_status", sealed(T::RelayStatus, Sender::Dc, 0x5001, 1), cat(&[
            &[0x00, 0x00, 0x00, 0x61],      // request_id 0x61
        ]), RelayStatus { request_id: RequestId(0x61) }),
        fx("relay_status_ack", sealed(T::RelayStatusAck, Sender::Rs, 0x5001, 1), cat(&[
            &[0x00, 0x00, 0x00, 0x61],      // request_id 0x61
            &[0x00, 0x00, 0x00, 0x2a],      // sessions 42
            &[0x00, 0x00, 0x04, 0x00],      // capacity 1024
            &[0x02],                        // relay_addrs: 2 entries
            RELAY_V6,                       //   [2001:db8:5::9]:3478
            RELAY_V4,                       //   203.0.113.9:3478
        ]), RelayStatusAck {
            request_id: RequestId(0x61),
            sessions: 42,
            capacity: 1024,
            relay_addrs: list(vec![relay_v6(), relay_v4()]),
        }),

        // ---- Tunnel (K_tun, K_mncn; key id = session) ----
        fx("tunnel_request_tmp", sealed(T::TunnelRequest, Sender::Mn, SESSION, 0), cat(&[
            MN_NAME,                        // initiator mn.a.example
            MN_VADDRS,                      // virtual_addrs
            &[0x01],                        // wrapped key: K_tmp
            &TMP_CT,                        //   ciphertext
            &TMP_TAG,                       //   tag
        ]), TunnelRequest {
            initiator: fq("mn.a.example"),
            virtual_addrs: mn_vaddrs(),
            wrapped: WrappedKey::Tmp(TmpWrap { ciphertext: TMP_CT, tag: TMP_TAG }),
        }),
        fx("tunnel_request_public", sealed(T::TunnelRequest, Sender::Mn, SESSION, 1), cat(&[
            MN_NAME,                        // initiator mn.a.example
            MN_VADDRS,                      // virtual_addrs
            &[0x02],                        // wrapped key: public
            &WRAP_EPH,                      //   ephemeral public key
            &WRAP_CT,                       //   ciphertext
            &WRAP_TAG,                      //   tag
            &WRAP_SIG,                      //   signature
        ]), TunnelRequest {
            initiator: fq("mn.a.example"),
            virtual_addrs: mn_vaddrs(),
            wrapped: WrappedKey::Public(PublicWrap {
                ephemeral: pk(&WRAP_EPH),
                ciphertext: WRAP_CT,
                tag: WRAP_TAG,
                signature: Signature(WRAP_SIG),
            }),
        }),
        fx("tunnel_response", sealed(T::TunnelResponse, Sender::Responder, SESSION, 0), cat(&[
            CN_VADDRS,                      // virtual_addrs
        ]), TunnelResponse { virtual_addrs: cn_vaddrs() }),
        fx("hole_punch", sealed(T::HolePunch, Sender::Mn, SESSION, 2), cat(&[
            &[0x01],                        // side: MN
            &[0x00],                        // release: false
        ]), HolePunch { side: Side::Mn, release: false }),
        fx("hole_punch_release", sealed(T::HolePunch, Sender::Cn, SESSION, 4), cat(&[
            &[0x02],                        // side: CN
            &[0x01],                        // release: true
        ]), HolePunch { side: Side::Cn, release: true }),
        fx("hole_punch_ack_v4", sealed(T::HolePunchAck, Sender::Rs, SESSION, 0), cat(&[
            OBSERVED_V4,                    // observed 198.51.100.7:61000
        ]), HolePunchAck { observed: observed_v4() }),
        fx("hole_punch_ack_v6", sealed(T::HolePunchAck, Sender::Rs, SESSION, 1), cat(&[
            OBSERVED_V6,                    // observed [2001:db8:ffff::7]:61000
        ]), HolePunchAck { observed: observed_v6() }),
        fx("path_probe", sealed(T::PathProbe, Sender::Initiator, SESSION, 9), cat(&[
            &[0xca, 0xfe, 0x00, 0x01],      // probe_id 0xcafe0001
        ]), PathProbe { probe_id: 0xcafe_0001 }),
        fx("path_probe_ack_v4", sealed(T::PathProbeAck, Sender::Responder, SESSION, 3), cat(&[
            &[0xca, 0xfe, 0x00, 0x01],      // probe_id 0xcafe0001
            OBSERVED_V4,                    // observed 198.51.100.7:61000
        ]), PathProbeAck { probe_id: 0xcafe_0001, observed: observed_v4() }),
        fx("path_probe_ack_v6", sealed(T::PathProbeAck, Sender::Responder, SESSION, 4), cat(&[
            &[0xca, 0xfe, 0x00, 0x02],      // probe_id 0xcafe0002
            OBSERVED_V6,                    // observed [2001:db8:ffff::7]:61000
        ]), PathProbeAck { probe_id: 0xcafe_0002, observed: observed_v6() }),

        // ---- Data (K_mncn): the body is the inner IP packet ----
        fx("data_v4", sealed(T::Data, Sender::Initiator, SESSION, 10), cat(&[
            &[0x45, 0x00, 0x00, 0x18],      // IPv4: version 4, IHL 5, total length 24
            &[0x00, 0x01, 0x00, 0x00],      //   id 1, no fragmentation
            &[0x40, 0xfd, 0x00, 0x00],      //   TTL 64, protocol 253 (experimental), checksum
            &[100, 64, 0, 1],               //   source 100.64.0.1
            &[100, 64, 0, 2],               //   destination 100.64.0.2
            b"ping",                        //   payload
        ]), DataBody::new(cat(&[
            &[0x45, 0x00, 0x00, 0x18, 0x00, 0x01, 0x00, 0x00, 0x40, 0xfd, 0x00, 0x00],
            &[100, 64, 0, 1, 100, 64, 0, 2],
            b"ping",
        ])).unwrap()),
        fx("data_v6", sealed(T::Data, Sender::Responder, SESSION, 11), cat(&[
            &[0x60, 0x00, 0x00, 0x00],      // IPv6: version 6, traffic class, flow label
            &[0x00, 0x04, 0xfd, 0x40],      //   payload length 4, next header 253, hop limit 64
            &MN_VADDRS[4..],                //   source fd00::1
            &CN_VADDRS[4..],                //   destination fd00::2
            b"pong",                        //   payload
        ]), DataBody::new(cat(&[
            &[0x60, 0, 0, 0, 0x00, 0x04, 0xfd, 0x40],
            &"fd00::1".parse::<Ipv6Addr>().unwrap().octets(),
            &"fd00::2".parse::<Ipv6Addr>().unwrap().octets(),
            b"pong",
        ])).unwrap()),

        // ---- Refusal ----
        fx("refusal", sealed(T::Refusal, Sender::Dc, 0x1001, 11), cat(&[
            &[0x30],                        // in_reply_to: Direction Request
            &[0x00, 0x00, 0x00, 0x40],      // request_id 0x40
            &[0x07],                        // reason: not found
            b"\x09not found",               // detail: length 9, text
        ]), Refusal {
            in_reply_to: MsgType::DirectionRequest,
            request_id: RequestId(0x40),
            reason: Reason::NotFound,
            detail: Text::new("not found").unwrap(),
        }),
        fx("refusal_of_unknown_type", Header::plain(T::Refusal, Sender::As), cat(&[
            &[0x99],                        // in_reply_to: 0x99, a type we do not know
            &[0x00, 0x00, 0x00, 0x00],      // request_id 0
            &[0x01],                        // reason: malformed
            &[0x00],                        // detail: empty
        ]), Refusal {
            in_reply_to: MsgType::Unknown(0x99),
            request_id: RequestId(0),
            reason: Reason::Malformed,
            detail: Text::new("").unwrap(),
        }),
    ]
}

fn fixture(name: &str) -> Fixture {
    fixtures().into_iter().find(|f| f.name == name).unwrap_or_else(|| panic!("no fixture {name}"))
}

/// Parses a whole message the way a receiver of a plain message does.
fn parse(bytes: &[u8]) -> Result<(Header, Message), WireError> {
    let env = Envelope::new_checked(bytes)?;
    let header = Header::parse(&env);
    let msg = Message::parse_body(env.msg_type(), env.body())?;
    Ok((header, msg))
}

/// Parses the fixture `name` with its body byte at `offset` replaced by `value`.
fn parse_with(name: &str, offset: usize, value: u8) -> Result<Message, WireError> {
    let f = fixture(name);
    let mut body = f.body.clone();
    body[offset] = value;
    Message::parse_body(f.header.msg_type, &body)
}

// ---------------------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------------------

#[test]
fn every_message_type_has_a_fixture() {
    assert_eq!(MsgType::ALL.len(), 41);
    let all = fixtures();
    for ty in MsgType::ALL {
        assert!(all.iter().any(|f| f.header.msg_type == *ty), "no fixture for {ty:?}");
    }
    let mut names: Vec<_> = all.iter().map(|f| f.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), all.len(), "fixture names are unique");
}

#[test]
fn fixture_headers_are_consistent() {
    for f in fixtures() {
        assert_eq!(f.header.msg_type, f.expected.msg_type(), "{}", f.name);
    }
}

#[test]
fn header_helpers_write_the_documented_bytes() {
    assert_eq!(
        Header::plain(MsgType::LoginRequest, Sender::Node).to_bytes(),
        [
            0x01, // version 1
            0x01, // type: Login Request
            0x00, // flags: plain
            0x01, // sender: node
            0x00, 0x00, 0x00, 0x00, // key id 0
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // counter 0
        ]
    );
    assert_eq!(
        sealed(MsgType::TunnelRequest, Sender::Mn, SESSION, 0x0102_0304_0506_0708).to_bytes(),
        [
            0x01, // version 1
            0x60, // type: Tunnel Request
            0x01, // flags: sealed
            0x10, // sender: MN
            0x5e, 0x55, 0x10, 0x11, // key id = session 0x5e551011
            0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, // counter
        ]
    );
}

#[test]
fn fixtures_parse_to_their_values() {
    for f in fixtures() {
        let bytes = f.bytes();
        let env = Envelope::new_checked(&bytes[..]).unwrap_or_else(|e| panic!("{}: {e}", f.name));
        assert_eq!(env.header(), &f.header.to_bytes()[..], "{}", f.name);
        assert_eq!(env.body(), &f.body[..], "{}", f.name);
        assert_eq!(Header::parse(&env), f.header, "{}", f.name);
        assert_eq!(Message::parse_body(env.msg_type(), env.body()).as_ref(), Ok(&f.expected), "{}", f.name);
    }
}

#[test]
fn values_emit_exactly_the_fixtures() {
    for f in fixtures() {
        let bytes = f.bytes();
        assert_eq!(f.expected.body_len(), f.body.len(), "{}: body_len", f.name);
        assert_eq!(f.expected.body_to_vec(), f.body, "{}: body", f.name);

        let mut out = vec![0u8; HEADER_LEN + f.expected.body_len()];
        f.header.emit(&mut out).unwrap();
        let n = f.expected.emit_body(&mut out[HEADER_LEN..]).unwrap();
        assert_eq!(n, f.body.len(), "{}", f.name);
        assert_eq!(out, bytes, "{}: whole message", f.name);

        // A buffer one byte short is refused, not overrun.
        let mut short = vec![0u8; f.body.len() - 1];
        assert_eq!(f.expected.emit_body(&mut short), Err(WireError::BufferTooSmall), "{}", f.name);

        if !f.header.sealed {
            assert_eq!(ntm_proto::crypto::plain(f.header.sender, &f.expected), bytes, "{}", f.name);
            assert_eq!(ntm_proto::crypto::parse_plain(&bytes).map(|(_, m)| m).as_ref(), Ok(&f.expected));
        }
    }
}

/// Messages whose body ends with a field earlier builds do not send (`Tail`), and how
/// many bytes of it the fixture holds (0: absent, as earlier builds send it).
fn tail_len(f: &Fixture) -> Option<usize> {
    match f.name {
        "route_direction_relay_v4_search" => Some(1),
        "node_info_answer_mappings" => Some(3),
        "registration_request_announced" => Some(7),
        _ if matches!(
            f.header.msg_type,
            MsgType::RouteDirection | MsgType::NodeInfoAnswer | MsgType::RegistrationRequest
        ) =>
        {
            Some(0)
        }
        _ => None,
    }
}

#[test]
fn every_truncated_prefix_is_refused() {
    for f in fixtures() {
        let bytes = f.bytes();
        let is_data = f.header.msg_type == MsgType::Data;
        // Without its tail a message is what an earlier build sends: it reads.
        let whole_but_tail = tail_len(&f).map(|t| bytes.len() - t);
        for n in 0..bytes.len() {
            let got = parse(&bytes[..n]);
            if Some(n) == whole_but_tail {
                assert!(got.is_ok(), "{} without its tail: {got:?}", f.name);
            } else if n < HEADER_LEN {
                assert_eq!(got.err(), Some(WireError::Truncated), "{} cut at {n}", f.name);
            } else if n == HEADER_LEN || !is_data {
                // Every body ends with a field of at least one byte, so any cut lands
                // inside a field.
                assert_eq!(got.err(), Some(WireError::Truncated), "{} cut at {n}", f.name);
            }
        }
    }
}

#[test]
fn a_trailing_byte_is_refused() {
    // A message without its tail takes a byte there as the tail (below); with the tail,
    // or with none possible, a byte more is refused.
    let fixtures = fixtures().into_iter().filter(|f| f.header.msg_type != MsgType::Data && tail_len(f) != Some(0));
    for f in fixtures {
        // A Route Direction or Node Info with its first tail field (traversal, mappings)
        // takes a byte more as the start of its second (announced prefixes), which is
        // then refused as cut short, over its cap or written as its default.
        let second_tail = matches!(f.name, "route_direction_relay_v4_search" | "node_info_answer_mappings");
        for extra in [0x00, 0x01, 0xff] {
            let mut bytes = f.bytes();
            bytes.push(extra);
            let got = parse(&bytes).err();
            if second_tail {
                assert!(got.is_some() && got != Some(WireError::TrailingBytes), "{} + {extra:#x}: {got:?}", f.name);
            } else {
                assert_eq!(got, Some(WireError::TrailingBytes), "{} + {extra:#x}", f.name);
            }
        }
    }
}

#[test]
fn a_message_of_an_earlier_build_reads_as_before_and_one_byte_more_is_its_tail() {
    // An earlier build's Route Direction (no traversal byte) is a search-free one, and
    // this build writes a search-free one byte for byte as the earlier build did.
    let f = fixture("route_direction_relay_v4");
    let (_, m) = parse(&f.bytes()).unwrap();
    let Message::RouteDirection(rd) = &m else { panic!("{m:?}") };
    assert_eq!(rd.tail, Tails(Traversal::Usual, List::new()));
    assert_eq!(m.body_to_vec(), f.body);
    // The default is never written: 0x00 there is refused, as an unknown code is.
    for (byte, want) in [(0x02, Ok(Traversal::GuessPorts)), (0x00, Err(())), (0x07, Err(()))] {
        let mut bytes = f.bytes();
        bytes.push(byte);
        let got = parse(&bytes).map_err(|_| ()).and_then(|(_, m)| match m {
            Message::RouteDirection(rd) => Ok(rd.tail.0),
            _ => Err(()),
        });
        assert_eq!(got, want, "traversal byte {byte:#x}");
    }
    // The same for Node Info: no verdicts sent when all are untested.
    let f = fixture("node_info_answer");
    let (_, m) = parse(&f.bytes()).unwrap();
    let Message::NodeInfoAnswer(a) = &m else { panic!("{m:?}") };
    assert!(a.info.tail.0.is_empty());
    assert_eq!(m.body_to_vec(), f.body);
}

/// The Data body is the rest of the message by definition: a shorter or longer body is a
/// shorter or longer IP packet. What is checked is the version nibble and the length.
#[test]
fn data_body_rules() {
    for name in ["data_v4", "data_v6"] {
        let f = fixture(name);
        let bytes = f.bytes();
        for n in HEADER_LEN + 1..=bytes.len() {
            let want = DataBody::new(bytes[HEADER_LEN..n].to_vec()).unwrap();
            assert_eq!(parse(&bytes[..n]).map(|(_, m)| m), Ok(Message::Data(want)), "{name} cut at {n}");
        }
        let mut longer = bytes.clone();
        longer.push(0xee);
        let (_, m) = parse(&longer).unwrap();
        assert_eq!(m, Message::Data(DataBody::new(longer[HEADER_LEN..].to_vec()).unwrap()));
        assert_eq!(m.body_to_vec(), &longer[HEADER_LEN..]);
    }
    // Empty: not an IP packet at all.
    assert_eq!(Message::parse_body(MsgType::Data, &[]), Err(WireError::Truncated));
    assert_eq!(DataBody::new(Vec::new()), Err(WireError::Truncated));
    // Only IP versions 4 and 6.
    for first in 0..=255u8 {
        let got = Message::parse_body(MsgType::Data, &[first, 0, 0, 0]);
        if first >> 4 == 4 || first >> 4 == 6 {
            assert!(got.is_ok(), "{first:#x}");
        } else {
            assert_eq!(got, Err(WireError::BadValue("IP version")), "{first:#x}");
            assert_eq!(DataBody::new(vec![first]), Err(WireError::BadValue("IP version")));
        }
    }
    // At most 65535 bytes.
    let mut big = vec![0x45; 65535];
    assert!(Message::parse_body(MsgType::Data, &big).is_ok());
    big.push(0);
    assert_eq!(Message::parse_body(MsgType::Data, &big), Err(WireError::TooLong("IP packet")));
    assert_eq!(DataBody::new(big), Err(WireError::TooLong("IP packet")));
}

#[test]
fn header_refuses_other_versions_and_reserved_flags() {
    let bytes = fixture("keepalive").bytes();
    for v in (0..=255u8).filter(|v| *v != 1) {
        let mut b = bytes.clone();
        b[0] = v;
        assert_eq!(Envelope::new_checked(&b[..]).err(), Some(WireError::UnsupportedVersion(v)));
    }
    for flags in 0x02..=0xffu8 {
        let mut b = bytes.clone();
        b[2] = flags;
        assert_eq!(Envelope::new_checked(&b[..]).err(), Some(WireError::BadValue("header flags")), "{flags:#x}");
    }
}

#[test]
fn unknown_message_types_are_refused() {
    let body = fixture("keepalive").body;
    let mut unknown = 0;
    for t in 0..=255u8 {
        let ty = MsgType::from(t);
        if MsgType::ALL.contains(&ty) {
            assert_eq!(u8::from(ty), t);
            continue;
        }
        unknown += 1;
        assert_eq!(ty, MsgType::Unknown(t));
        let mut bytes = Header::plain(ty, Sender::Node).to_bytes().to_vec();
        bytes.extend_from_slice(&body);
        // The header itself is fine: the type is the body's business.
        let env = Envelope::new_checked(&bytes[..]).unwrap();
        assert_eq!(env.msg_type(), MsgType::Unknown(t));
        assert_eq!(Message::parse_body(env.msg_type(), env.body()), Err(WireError::UnknownType(t)));
        assert_eq!(parse(&bytes).err(), Some(WireError::UnknownType(t)));
    }
    assert_eq!(unknown, 256 - 41);
}

#[test]
fn unknown_credential_kinds_are_refused() {
    for v in (0..=255u8).filter(|v| matches!(CredentialKind::from(*v), CredentialKind::Unknown(_))) {
        // body: request_id (4) | credential kind
        assert_eq!(parse_with("login_request_password", 4, v), Err(WireError::BadValue("credential kind")), "{v}");
    }
}

#[test]
fn unknown_keepalive_kinds_are_refused() {
    // body: request_id (4) | local_addrs count (1) | one IPv6 address | keepalive kind
    let offset = 4 + 1 + LOCAL_V6.len();
    assert_eq!(fixture("registration_request_ns").body[offset], 0x02);
    for v in (0..=255u8).filter(|v| matches!(KeepaliveKind::from(*v), KeepaliveKind::Unknown(_))) {
        assert_eq!(parse_with("registration_request_ns", offset, v), Err(WireError::BadValue("keepalive method")));
    }
}

#[test]
fn unknown_sides_and_roles_are_refused() {
    // Route Direction body: request_id (4) | session (4) | node fqdn | side | role
    let side = 4 + 4 + MN_NAME.len();
    let role = side + 1;
    for v in (0..=255u8).filter(|v| matches!(Side::from(*v), Side::Unknown(_))) {
        assert_eq!(parse_with("route_direction_direct", side, v), Err(WireError::BadValue("side")), "{v}");
        // Hole Punch body: side | release
        assert_eq!(parse_with("hole_punch", 0, v), Err(WireError::BadValue("side")), "{v}");
    }
    for v in (0..=255u8).filter(|v| matches!(TunnelRole::from(*v), TunnelRole::Unknown(_))) {
        assert_eq!(parse_with("route_direction_direct", role, v), Err(WireError::BadValue("tunnel role")), "{v}");
    }
}

#[test]
fn unknown_paths_are_refused() {
    // Route Direction body: request_id | session | node | side | role | peer (fqdn,
    // virtual addrs, endpoint count, two endpoints) | path
    let offset = 4 + 4 + MN_NAME.len() + 2 + CN_NAME.len() + 20 + 1 + OBSERVED_V4.len() + OBSERVED_V6.len();
    assert_eq!(fixture("route_direction_direct").body[offset], 0x01);
    // 0x03 (gateway) is known: an address follows, where the direct path has K_tun.
    for v in (0..=255u8).filter(|v| !matches!(v, 1..=3)) {
        assert_eq!(parse_with("route_direction_direct", offset, v), Err(WireError::BadValue("path")), "{v}");
    }
}

#[test]
fn unknown_reasons_are_refused() {
    // Refusal body: in_reply_to (1) | request_id (4) | reason
    for v in (0..=255u8).filter(|v| matches!(Reason::from(*v), Reason::Unknown(_))) {
        assert_eq!(parse_with("refusal", 5, v), Err(WireError::BadValue("refusal reason")), "{v}");
    }
    // in_reply_to takes any code point, so that an unknown type can be refused too.
    for v in 0..=255u8 {
        let Message::Refusal(r) = parse_with("refusal", 0, v).unwrap() else { panic!() };
        assert_eq!(u8::from(r.in_reply_to), v);
    }
}

#[test]
fn unknown_shared_key_kinds_are_refused() {
    // Key Share body: request_id (4) | key_id (4) | kind
    for v in (0..=255u8).filter(|v| matches!(SharedKeyKind::from(*v), SharedKeyKind::Unknown(_))) {
        assert_eq!(parse_with("key_share_dcdc", 8, v), Err(WireError::BadValue("shared key kind")), "{v}");
    }
}

#[test]
fn unknown_wrapped_key_kinds_are_refused() {
    // Tunnel Request body: initiator fqdn | virtual addrs (20) | wrapped key kind
    let offset = MN_NAME.len() + 20;
    for v in (0..=255u8).filter(|v| !matches!(v, 1 | 2)) {
        assert_eq!(parse_with("tunnel_request_tmp", offset, v), Err(WireError::BadValue("wrapped key kind")));
    }
}

#[test]
fn presence_flags_other_than_0_and_1_are_refused() {
    // Login Request (device certificate) body: request_id (4) | kind (1) | presence
    for v in 2..=255u8 {
        assert_eq!(parse_with("login_request_device_cert", 5, v), Err(WireError::BadValue("presence flag")));
        // Direction Request body: request_id (4) | peer fqdn | presence
        let offset = 4 + CN_NAME.len();
        assert_eq!(parse_with("direction_request_handover", offset, v), Err(WireError::BadValue("presence flag")));
    }
}

#[test]
fn booleans_other_than_0_and_1_are_refused() {
    for v in 2..=255u8 {
        // Notify ACK body: request_id (4) | delivered
        assert_eq!(parse_with("notify_ack", 4, v), Err(WireError::BadValue("boolean")), "{v}");
        // Hole Punch body: side | release
        assert_eq!(parse_with("hole_punch", 1, v), Err(WireError::BadValue("boolean")), "{v}");
    }
}

#[test]
fn unknown_address_families_are_refused() {
    for v in (0..=255u8).filter(|v| !matches!(v, 4 | 6)) {
        // Keepalive ACK body: request_id (4) | family
        assert_eq!(parse_with("keepalive_ack_v4", 4, v), Err(WireError::BadValue("address family")), "{v}");
        assert_eq!(parse_with("keepalive_ack_v6", 4, v), Err(WireError::BadValue("address family")), "{v}");
        // Hole Punch ACK body: family first
        assert_eq!(parse_with("hole_punch_ack_v6", 0, v), Err(WireError::BadValue("address family")), "{v}");
    }
}

#[test]
fn non_canonical_names_are_refused() {
    // Notification Registration body: request_id (4) | fqdn length | fqdn
    assert_eq!(parse_with("notification_registration", 5, b'M'), Err(WireError::BadValue("name character")));
    assert_eq!(parse_with("notification_registration", 5, b'-'), Err(WireError::BadValue("name label hyphen")));
    assert_eq!(parse_with("notification_registration", 6, b'.'), Err(WireError::BadValue("name label length")));
    assert_eq!(parse_with("notification_registration", 4, 0), Err(WireError::BadValue("name length")));
}

#[test]
fn invalid_public_keys_are_refused() {
    // Login Request (device certificate) body: request_id (4) | kind (1) | presence (1) | key
    for prefix in [0x00, 0x04, 0x05, 0xff] {
        assert_eq!(parse_with("login_request_device_cert", 6, prefix), Err(WireError::BadValue("public key")));
    }
    let f = fixture("login_request_device_cert");
    let mut body = f.body.clone();
    body[7..].fill(0xff); // x >= p
    assert_eq!(Message::parse_body(MsgType::LoginRequest, &body), Err(WireError::BadValue("public key")));
}

#[test]
fn list_and_length_caps_are_enforced() {
    // Registration Request: a count of 9 local addresses is over the cap of 8.
    assert_eq!(parse_with("registration_request_udp", 4, 9), Err(WireError::TooLong("list")));
    // Relay Direction ACK: a count of 5 relay addresses is over the cap of 4.
    assert_eq!(parse_with("relay_direction_ack", 8, 5), Err(WireError::TooLong("list")));
    // Notify: a payload length of 1401 is over the cap of 1400.
    let f = fixture("notify");
    let mut body = f.body.clone();
    body[8..10].copy_from_slice(&1401u16.to_be_bytes());
    assert_eq!(Message::parse_body(MsgType::Notify, &body), Err(WireError::TooLong("bytes")));
    // Login Request: a password of 129 bytes is over the cap of 128.
    let mut body = vec![0, 0, 0, 1, 0x01, 0x00, 129];
    body.extend_from_slice(&[b'x'; 129]);
    body.push(0);
    assert_eq!(Message::parse_body(MsgType::LoginRequest, &body), Err(WireError::TooLong("secret")));
}

#[test]
fn p256_literals_are_reproducible() {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(P256_SEED);
    let as_key = KeyPair::generate(&mut rng);
    let mn = KeyPair::generate(&mut rng);
    let cn = KeyPair::generate(&mut rng);
    assert_eq!(as_key.public().to_bytes(), AS_PUB);
    assert_eq!(mn.public().to_bytes(), MN_PUB);
    assert_eq!(cn.public().to_bytes(), CN_PUB);

    let (mn_name, cn_name) = (fq("mn.a.example"), fq("cn.b.example"));
    assert_eq!(Attestation::issue(&as_key, mn_name.clone(), mn.public()), mn_attestation());
    assert_eq!(Attestation::issue(&as_key, cn_name.clone(), cn.public()), cn_attestation());
    let mn_att = mn_attestation().verify(&pk(&AS_PUB), &mn_name).unwrap();
    let cn_att = cn_attestation().verify(&pk(&AS_PUB), &cn_name).unwrap();

    let k_mncn = KMnCn::from_bytes(K_MNCN);
    let wrap = wrap_for_peer(&mut rng, &mn, &cn_att, SessionId(SESSION), &mn_name, &k_mncn).unwrap();
    let Message::TunnelRequest(TunnelRequest { wrapped: WrappedKey::Public(fixture_wrap), .. }) =
        fixture("tunnel_request_public").expected
    else {
        panic!("tunnel_request_public carries a public wrap")
    };
    assert_eq!(wrap, fixture_wrap);
    assert_eq!(unwrap_from_peer(&cn, &cn_name, &mn_att, SessionId(SESSION), &fixture_wrap).unwrap(), k_mncn);

    let tmp = TmpWrap { ciphertext: TMP_CT, tag: TMP_TAG };
    let k_tmp = KTmp::from_bytes(K_TMP);
    assert_eq!(wrap_with_tmp(&k_tmp, SessionId(SESSION), &mn_name, &cn_name, &k_mncn).unwrap(), tmp);
    assert_eq!(unwrap_with_tmp(&k_tmp, SessionId(SESSION), &mn_name, &cn_name, &tmp).unwrap(), k_mncn);
}

/// Writes the fixtures as seeds for the fuzz corpus, one directory per fuzz target, when
/// `NTM_WRITE_FIXTURES` names a directory (it is unset in normal runs):
/// `NTM_WRITE_FIXTURES=/tmp/seeds cargo test -p ntm-proto --test wire_fixtures write_`.
#[test]
#[allow(clippy::disallowed_methods)] // a test helper writing seed files, not library code
fn write_fuzz_seeds_when_asked() {
    use ntm_proto::fuzzing::{CHANNEL_KEY, CHANNEL_KEY_ID, CHANNEL_NOW};
    use ntm_proto::keys::KNtmDc;
    use ntm_proto::wire::frame::encode_frame;
    let Some(dir) = std::env::var_os("NTM_WRITE_FIXTURES") else { return };
    let dir = std::path::PathBuf::from(dir);
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let d = dir.join(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), bytes).unwrap();
    };
    let expires = Instant::from_millis(CHANNEL_NOW.as_millis() + 1);
    let mut node =
        ntm_proto::crypto::Channel::new(KNtmDc::from_bytes(CHANNEL_KEY), CHANNEL_KEY_ID, Sender::Node, expires)
            .unwrap();
    let all = fixtures();
    for f in &all {
        let typed_body = [&[u8::from(f.header.msg_type)][..], &f.body].concat();
        write("envelope", f.name, &f.bytes());
        write("body", f.name, &typed_body);
        write("frame", f.name, &[&[0x03][..], &encode_frame(&f.bytes()).unwrap()].concat());
        write("channel_open", &format!("{}.plain", f.name), &typed_body);
        write("channel_open", &format!("{}.sealed", f.name), &node.seal(CHANNEL_NOW, &f.expected).unwrap());
    }
    let stream: Vec<u8> = all.iter().take(4).flat_map(|f| encode_frame(&f.bytes()).unwrap()).collect();
    write("frame", "four_frames", &[&[0x2a][..], &stream].concat());
    // Every fixture in one stream: one corpus file that reaches every body parser.
    let stream: Vec<u8> = all.iter().flat_map(|f| encode_frame(&f.bytes()).unwrap()).collect();
    write("frame", "all_fixtures", &[&[0x11][..], &stream].concat());
}
