//! The fuzz targets of the server roles: `dc`, `rs`, `ns` and `account` (the AS). Each
//! engine is set up with keys the harness holds, as a deployment would set it up, and then
//! driven by the operations of [`super::harness::run`].
//!
//! - `dc`: the AS has distributed two nodes' K_ntmdc (Key Distribution over TLS from an AS
//!   identity), both registered, a peer DC shared K_dcdc, and the DC's own Key Shares with
//!   its relays were acknowledged (K_dcrs) and their status answered. Templates play the
//!   nodes, the peer DC, the relays and the NS (once the DC shared K_dcns and the harness
//!   acknowledged it).
//! - `rs`: a DC shared K_dcrs and set up one relay session whose two ends hole-punched.
//!   Own invariants: a forwarded packet goes from one learned end of its session to the
//!   other; no more sessions than configured; the RS holds only K_dcrs and K_tun.
//! - `ns`: a DC shared K_dcns and distributed one node's K_ntmns; the node registered for
//!   notifications over TCP. Own invariants: the NS writes only to TCP connections that are
//!   open; no more node keys than configured.
//! - `account`: an AS with an account store of passwords, device certificates and OpenID
//!   subjects, an OpenID provider whose key the harness holds, optionally an attestation
//!   key and a static DC. Own invariant: a Login Response carries only a key whose Key
//!   Distribution the DC acknowledged (spec 4.1 step 4).

use super::harness::{name, run, FuzzRng, Harness, Input, Kind, Script, Slot, Subject, Tpl};
use super::node::{ip_packet, v4, v6, LIFETIMES, REASONS, T0};
use crate::crypto::pk::{KeyPair, PublicKey};
use crate::crypto::plain;
use crate::engine::account::{Account, AccountServer, Accounts, AsConfig, AsEvent, Verdict};
use crate::engine::dc::{Dc, DcConfig, DcEvent, NsRef, ServerRef};
use crate::engine::ns::{Ns, NsConfig};
use crate::engine::rs::{Rs, RsConfig};
use crate::engine::{DcLocation, DnsAnswer, PeerIdentity, Received, Role, StreamKind, Transmit, Via};
use crate::keys::{Key, KeyGrant, KEY_LEN};
use crate::time::{Duration, Instant};
use crate::wire::data::DataBody;
use crate::wire::direction::{DirectionRequest, Endpoint, NodeInfo, NodeInfoAnswer, NodeInfoRequest};
use crate::wire::keyshare::{KeyShare, KeyShareAck, SharedKey};
use crate::wire::login::{Credential, IdToken, KeyDistribution, LoginRequest, NtmAck, Password};
use crate::wire::notification::{
    NotificationRegistration, Notify, NotifyAck, NsKeepalive, NsKeyAck, NsKeyDistribution, NsProbe,
};
use crate::wire::refusal::{Reason, Refusal};
use crate::wire::registration::{Keepalive, KeepaliveAck, KeepaliveMethod, RegistrationRequest};
use crate::wire::relay::{RelayDirection, RelayDirectionAck, RelayStatus, RelayStatusAck};
use crate::wire::route::{Path, PeerInfo, RouteDirection, RouteDirectionAck, Side, Traversal, TunnelRole};
use crate::wire::tunnel::{
    HolePunch, HolePunchAck, PathProbe, PathProbeAck, TunnelRequest, TunnelResponse, WrappedKey,
};
use crate::wire::{
    Bytes, Fqdn, Header, KeyId, Lifetime, List, Message, MsgType, RequestId, Sender, SessionId, Tail, Tails, Text,
    VirtualAddrs,
};
use core::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use std::sync::OnceLock;

const AS_ADDR: SocketAddr = v4(192, 0, 2, 10, 4460);
const DC_A: SocketAddr = v4(192, 0, 2, 20, 4460);
const DC_B: SocketAddr = v4(192, 0, 2, 21, 4460);
const DC_C: SocketAddr = v4(192, 0, 2, 22, 4460);
const RS1: SocketAddr = v4(192, 0, 2, 30, 4460);
const RS1_6: SocketAddr = v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x30], 4460);
const RS2: SocketAddr = v4(192, 0, 2, 31, 4460);
const RS2_6: SocketAddr = v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x31], 4460);
const NS1: SocketAddr = v4(192, 0, 2, 40, 4460);
const OTHER: SocketAddr = v4(198, 51, 100, 99, 4500);

const MN: &str = "mn.zone-a.example";
const CN: &str = "cn.zone-a.example";
const N3: &str = "n3.zone-a.example";
const PEER: &str = "peer.zone-b.example";

const SESSIONS: [u32; 4] = [0x5e55_0001, 0x5e55_0002, 0x5e55_0003, 0x5e55_0004];
const PEER_V: VirtualAddrs =
    VirtualAddrs { v4: Ipv4Addr::new(198, 18, 2, 2), v6: Ipv6Addr::new(0x2001, 0xdb8, 0xffb, 0, 0, 0, 0, 2) };

fn identity(n: &str, role: Role) -> Option<PeerIdentity> {
    Some(PeerIdentity { name: name(n), role, public_key: None })
}

fn grant<K: crate::keys::KeyKind>(key: [u8; KEY_LEN], lifetime: u32) -> KeyGrant<K> {
    KeyGrant { key: Key::from_bytes(key), lifetime: Lifetime(lifetime) }
}

/// A Key Share from `from` of kind `kind` (0: K_dcdc, 1: K_dcrs, else K_dcns).
fn key_share(kind: u8, request_id: u32, key_id: u32, key: [u8; KEY_LEN], lifetime: u32, from: &str) -> Message {
    let key = match kind {
        0 => SharedKey::DcDc(grant(key, lifetime)),
        1 => SharedKey::DcRs(grant(key, lifetime)),
        _ => SharedKey::DcNs(grant(key, lifetime)),
    };
    Message::KeyShare(KeyShare { request_id: RequestId(request_id), key_id: KeyId(key_id), key, from: name(from) })
}

/// Where a server named `n` sends from.
fn server_addr(n: &Fqdn) -> SocketAddr {
    match n.as_str() {
        "as.example" => AS_ADDR,
        "dc.zone-a.example" => DC_A,
        "dc.zone-b.example" => DC_B,
        "dc.zone-c.example" => DC_C,
        "rs1.example" => RS1,
        "rs2.example" => RS2,
        "ns1.example" => NS1,
        _ => OTHER,
    }
}

/// The role a server's name gives it in these deployments.
fn server_role(n: &Fqdn) -> Role {
    let s = n.as_str();
    if s.starts_with("rs") {
        Role::Rs
    } else if s.starts_with("ns") {
        Role::Ns
    } else if s.starts_with("dc") {
        Role::Dc
    } else if s.starts_with("as") {
        Role::As
    } else {
        Role::Node
    }
}

/// A Key Share identity: mostly `usual`, sometimes any of the harness's.
fn share_identity<E: Subject>(h: &Harness<E>, usual: usize, input: &mut Input<'_>) -> Option<PeerIdentity> {
    let b = input.u8();
    if b < 0xc0 {
        h.identities.get(usual).cloned().flatten()
    } else {
        input.pick(&h.identities).flatten()
    }
}

// ------------------------------------------------------------------------------------------
// DC

const DC_NODE_ADDRS: [SocketAddr; 3] = [v4(203, 0, 113, 5, 1024), v4(198, 51, 100, 8, 4500), N3_ADDR];
const MN_LOCAL: SocketAddr = v4(192, 168, 1, 5, 4500);
const CN6: SocketAddr = v6([0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 8], 4500);
const N3_ADDR: SocketAddr = v6([0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x33], 4500);
const DC_NODE_KEYS: [([u8; KEY_LEN], u32); 2] =
    [(*b"fuzz dc mn ntmdc", 0x4b00_000a), (*b"fuzz dc cn ntmdc", 0x4b00_000b)];
const DCDC_KEY: ([u8; KEY_LEN], u32) = (*b"fuzz dc-b dcdc!!", 0x4b00_00d1);
const LOCAL_SETS: [&[SocketAddr]; 6] = [
    &[MN_LOCAL],
    &[v4(198, 51, 100, 8, 4500), CN6],
    &[],
    &[v4(203, 0, 113, 5, 1024)],
    &[N3_ADDR],
    &[MN_LOCAL, CN6, N3_ADDR, OTHER, RS1, RS2, NS1, DC_B],
];
const PEER_NAMES: [&str; 7] = [CN, MN, PEER, N3, "x.example.org", "unknown.zone-a.example", "peer2.zone-c.example"];
const ENDPOINT_SETS: [&[(SocketAddr, bool)]; 5] = [
    &[(v4(203, 0, 113, 77, 2000), true)],
    &[(v4(198, 51, 100, 77, 4500), false)],
    &[(v6([0x2001, 0xdb8, 0x300, 0, 0, 0, 0, 0x77], 4500), false)],
    &[(v4(203, 0, 113, 77, 2000), true), (v6([0x2001, 0xdb8, 0x300, 0, 0, 0, 0, 0x77], 4500), false)],
    &[],
];

impl Subject for Dc {
    type Event = DcEvent;

    fn next_event(&mut self) -> Option<DcEvent> {
        self.poll_event()
    }

    fn check(&self) {
        assert!(self.node_count() <= self.config().max_nodes, "more nodes than max_nodes");
    }
}

/// A Key Share the DC sent, waiting for the harness to acknowledge it.
#[derive(Debug, Clone)]
struct Share {
    dst: SocketAddr,
    server: Fqdn,
    share: KeyShare,
}

pub(super) struct DcScript {
    shares: Vec<Share>,
}

fn relay_v6(rs: SocketAddr) -> SocketAddr {
    if rs == RS2 {
        RS2_6
    } else {
        RS1_6
    }
}

fn pick_endpoints(input: &mut Input<'_>) -> Option<List<Endpoint, 2>> {
    let set = input.pick(&ENDPOINT_SETS)?;
    List::from_vec(set.iter().map(|&(observed, behind_nat)| Endpoint { observed, behind_nat }).collect()).ok()
}

impl DcScript {
    fn node_message(h: &mut Harness<Dc>, input: &mut Input<'_>) -> Option<Message> {
        Some(match input.u8() % 6 {
            0 => {
                let local_addrs = List::from_vec(input.pick(&LOCAL_SETS)?.to_vec()).ok()?;
                // Selector 3 is the NS method with a lost key (an NS that restarted); the
                // older selectors keep their meaning, so the stored seeds do too.
                let mut ns_key_lost = None;
                let keepalive = match input.u8() % 4 {
                    0 => KeepaliveMethod::Udp,
                    1 => KeepaliveMethod::Ns,
                    2 => KeepaliveMethod::Push(Bytes::new(input.bytes().to_vec()).ok()?),
                    _ => {
                        ns_key_lost = Some(KeyId(input.u32()));
                        KeepaliveMethod::Ns
                    }
                };
                Message::RegistrationRequest(RegistrationRequest {
                    request_id: RequestId(input.u32()),
                    local_addrs,
                    keepalive,
                    ns_key_lost,
                    announced: Tail(List::new()),
                })
            }
            1 => Message::Keepalive(Keepalive { request_id: RequestId(input.u32()) }),
            2 => {
                let request_id = h.seen.request(input);
                let peer = name(input.pick(&PEER_NAMES)?);
                let previous = if input.bool() { Some(h.seen.session(input)) } else { None };
                Message::DirectionRequest(DirectionRequest { request_id, peer, previous })
            }
            3 => Message::RouteDirectionAck(RouteDirectionAck {
                request_id: h.seen.request(input),
                session: h.seen.session(input),
            }),
            4 => {
                let ty = input.pick(&[
                    MsgType::RouteDirection,
                    MsgType::DirectionRequest,
                    MsgType::RegistrationRequest,
                    MsgType::Keepalive,
                ])?;
                Message::Refusal(Refusal::new(ty, h.seen.request(input), input.pick(&REASONS)?, "fuzz"))
            }
            _ => Message::KeepaliveAck(KeepaliveAck { request_id: h.seen.request(input), observed: OTHER }),
        })
    }

    fn peer_message(h: &mut Harness<Dc>, input: &mut Input<'_>) -> Option<Message> {
        Some(match input.u8() % 6 {
            0 => Message::NodeInfoRequest(NodeInfoRequest {
                request_id: RequestId(input.u32()),
                fqdn: name(input.pick(&[MN, CN, N3, PEER, "x.example.org"])?),
                requester: name(PEER),
            }),
            1 => {
                let request_id = h.seen.request(input);
                let fqdn = name(input.pick(&[PEER, CN, "peer2.zone-c.example"])?);
                let endpoints = pick_endpoints(input)?;
                let via_ns = input.bool();
                let info = NodeInfo {
                    fqdn,
                    virtual_addrs: PEER_V,
                    endpoints,
                    local_addrs: List::new(),
                    via_ns,
                    attestation: None,
                    tail: Tails(List::new(), List::new()),
                };
                Message::NodeInfoAnswer(NodeInfoAnswer { request_id, info })
            }
            2 => {
                let request_id = RequestId(input.u32());
                let session = h.seen.session(input);
                let node = name(input.pick(&[MN, CN, N3, PEER])?);
                let side = if input.bool() { Side::Mn } else { Side::Cn };
                let role = if input.bool() { TunnelRole::Initiate } else { TunnelRole::Await };
                let eps: Vec<SocketAddr> = input.pick(&ENDPOINT_SETS)?.iter().map(|e| e.0).collect();
                let path = match input.u8() % 3 {
                    0 => Path::Relay(RS1),
                    1 => Path::Relay(RS1_6),
                    _ => Path::Direct,
                };
                let lifetime = input.pick(&LIFETIMES)?;
                let k_tmp = if input.bool() { Some(Key::from_bytes(h.rng.key())) } else { None };
                Message::RouteDirection(RouteDirection {
                    request_id,
                    session,
                    node,
                    side,
                    role,
                    peer: PeerInfo { fqdn: name(PEER), virtual_addrs: PEER_V, endpoints: List::from_vec(eps).ok()? },
                    path,
                    k_tun: grant(h.rng.key(), lifetime),
                    k_tmp,
                    peer_attestation: None,
                    tail: Tails(Traversal::Usual, List::new()),
                })
            }
            3 => Message::RouteDirectionAck(RouteDirectionAck {
                request_id: h.seen.request(input),
                session: h.seen.session(input),
            }),
            4 => {
                let ty = input.pick(&[MsgType::NodeInfoRequest, MsgType::RouteDirection])?;
                Message::Refusal(Refusal::new(ty, h.seen.request(input), input.pick(&REASONS)?, "fuzz"))
            }
            _ => Message::KeyShareAck(KeyShareAck { request_id: h.seen.request(input), key_id: h.seen.key(input) }),
        })
    }

    fn relay_message(h: &mut Harness<Dc>, slot: usize, input: &mut Input<'_>) -> Option<Message> {
        let rs = h.slots.get(slot)?.from;
        let sets: [&[SocketAddr]; 4] = [&[rs, relay_v6(rs)], &[rs], &[relay_v6(rs)], &[]];
        Some(match input.u8() % 4 {
            0 => Message::RelayDirectionAck(RelayDirectionAck {
                request_id: h.seen.request(input),
                session: h.seen.session(input),
                relay_addrs: List::from_vec(input.pick(&sets)?.to_vec()).ok()?,
            }),
            1 => Message::RelayStatusAck(RelayStatusAck {
                request_id: h.seen.request(input),
                sessions: u32::from(input.u8()),
                capacity: input.pick(&[0, 1, 100, u32::MAX])?,
                relay_addrs: List::from_vec(input.pick(&sets)?.to_vec()).ok()?,
            }),
            2 => {
                let reason = input.pick(&[Reason::Overloaded, Reason::Internal, Reason::NoRelay])?;
                Message::Refusal(Refusal::new(MsgType::RelayDirection, h.seen.request(input), reason, "fuzz"))
            }
            _ => Message::RelayStatus(RelayStatus { request_id: h.seen.request(input) }),
        })
    }

    fn ns_message(h: &mut Harness<Dc>, input: &mut Input<'_>) -> Option<Message> {
        Some(match input.u8() % 4 {
            0 => Message::NsKeyAck(NsKeyAck { request_id: h.seen.request(input), key_id: h.seen.key(input) }),
            1 => Message::NotifyAck(NotifyAck { request_id: h.seen.request(input), delivered: input.bool() }),
            2 => {
                let ty = input.pick(&[MsgType::NsKeyDistribution, MsgType::Notify])?;
                Message::Refusal(Refusal::new(ty, h.seen.request(input), input.pick(&REASONS)?, "fuzz"))
            }
            _ => Message::NsKeepalive(NsKeepalive { request_id: h.seen.request(input) }),
        })
    }

    /// Acknowledges Key Share `share` as its server (or, on a bad input, not quite).
    fn ack_share(h: &mut Harness<Dc>, share: &Share, input: &mut Input<'_>) {
        let b = input.u8();
        let right = b < 0xe0;
        let peer = if right {
            Some(PeerIdentity { name: share.server.clone(), role: server_role(&share.server), public_key: None })
        } else {
            input.pick(&h.identities).flatten()
        };
        let key_id = if b & 1 == 0 || right { share.share.key_id } else { KeyId(input.u32()) };
        let ack = Message::KeyShareAck(KeyShareAck { request_id: share.share.request_id, key_id });
        h.frame(StreamKind::Tls, share.dst, peer.as_ref(), &plain(Sender::Rs, &ack));
        if right {
            let (kind, key) = match &share.share.key {
                SharedKey::DcDc(g) => (Kind::DcDc, *g.key.expose_secret()),
                SharedKey::DcRs(g) => (Kind::DcRs, *g.key.expose_secret()),
                SharedKey::DcNs(g) => (Kind::DcNs, *g.key.expose_secret()),
            };
            let me = match server_role(&share.server) {
                Role::Rs => Sender::Rs,
                Role::Ns => Sender::Ns,
                _ => Sender::DcPeer,
            };
            h.add_slot(Slot::new(kind, key, share.share.key_id, me, share.dst));
        }
    }
}

impl Script<Dc> for DcScript {
    fn template(&mut self, h: &mut Harness<Dc>, slot: usize, input: &mut Input<'_>) -> Option<Tpl> {
        match h.slots.get(slot)?.kind {
            Kind::NtmDc => Self::node_message(h, input),
            Kind::DcDc => Self::peer_message(h, input),
            Kind::DcRs => Self::relay_message(h, slot, input),
            Kind::DcNs => Self::ns_message(h, input),
            _ => None,
        }
        .map(Tpl::from)
    }

    fn plain(&mut self, h: &mut Harness<Dc>, input: &mut Input<'_>) {
        match input.u8() % 5 {
            0 => {
                let peer = share_identity(h, 1, input);
                let Some(n) = input.pick(&[MN, CN, N3, PEER, "zone-a.example", "a.b.zone-a.example"]) else { return };
                let key_id = match input.u8() {
                    b @ 0..=0xbf => 0x4b00_000a + u32::from(b & 3),
                    _ => h.seen.keys.pick(input),
                };
                let key = h.rng.key();
                let Some(lifetime) = input.pick(&LIFETIMES) else { return };
                let msg = Message::KeyDistribution(KeyDistribution {
                    request_id: RequestId(key_id),
                    fqdn: name(n),
                    key_id: KeyId(key_id),
                    k_ntmdc: grant(key, lifetime),
                    attestation: None,
                });
                if h.frame(StreamKind::Tls, AS_ADDR, peer.as_ref(), &plain(Sender::As, &msg)) == Received::Handled {
                    let from = match n {
                        MN => DC_NODE_ADDRS[0],
                        CN => DC_NODE_ADDRS[1],
                        _ => N3_ADDR,
                    };
                    h.add_slot(Slot::new(Kind::NtmDc, key, KeyId(key_id), Sender::Node, from));
                }
            }
            1 => {
                let peer = share_identity(h, 2, input);
                let Some(from_name) = input.pick(&["dc.zone-b.example", "dc.zone-c.example", "dc.zone-a.example"])
                else {
                    return;
                };
                let kind = if input.u8() < 0xc0 { 0 } else { input.u8() % 3 };
                let key_id = match input.u8() {
                    b @ 0..=0xbf => 0x4b00_00d1 + u32::from(b & 3),
                    _ => input.u32(),
                };
                let key = h.rng.key();
                let Some(lifetime) = input.pick(&LIFETIMES) else { return };
                let msg = key_share(kind, input.u32(), key_id, key, lifetime, from_name);
                let addr = peer.as_ref().map_or(OTHER, |p| server_addr(&p.name));
                let ok = h.frame(StreamKind::Tls, addr, peer.as_ref(), &plain(Sender::Dc, &msg)) == Received::Handled;
                if ok && kind == 0 {
                    h.add_slot(Slot::new(Kind::DcDc, key, KeyId(key_id), Sender::Dc, addr));
                }
            }
            2 => {
                let Some(i) = input.index(self.shares.len()) else { return };
                let share = self.shares.remove(i);
                Self::ack_share(h, &share, input);
            }
            3 => {
                let peer = share_identity(h, 1, input);
                let msg = match input.u8() % 3 {
                    0 => Message::NtmAck(NtmAck { request_id: h.seen.request(input), key_id: h.seen.key(input) }),
                    1 => Message::Refusal(Refusal::new(MsgType::NtmAck, h.seen.request(input), Reason::Internal, "")),
                    _ => Message::NodeInfoRequest(NodeInfoRequest {
                        request_id: RequestId(input.u32()),
                        fqdn: name(MN),
                        requester: name(PEER),
                    }),
                };
                h.frame(StreamKind::Tls, AS_ADDR, peer.as_ref(), &plain(Sender::As, &msg));
            }
            _ => {
                // A Key Distribution on plain TCP: never to be believed.
                let msg = Message::KeyDistribution(KeyDistribution {
                    request_id: RequestId(1),
                    fqdn: name(N3),
                    key_id: KeyId(input.u32()),
                    k_ntmdc: grant(h.rng.key(), 3600),
                    attestation: None,
                });
                let peer = h.identities.get(1).cloned().flatten();
                h.frame(StreamKind::Tcp, AS_ADDR, peer.as_ref(), &plain(Sender::As, &msg));
            }
        }
    }

    fn answer(&mut self, _h: &mut Harness<Dc>, _name: &Fqdn, input: &mut Input<'_>) -> DnsAnswer {
        let loc = |n: &str, addrs: Vec<SocketAddr>| DnsAnswer::Dc(DcLocation { name: name(n), addrs });
        match input.u8() % 6 {
            0 => loc("dc.zone-b.example", vec![DC_B]),
            1 => loc("dc.zone-a.example", vec![DC_A]),
            2 => loc("dc.zone-c.example", vec![DC_C, v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x22], 4460)]),
            3 => loc("dc.zone-b.example", Vec::new()),
            4 => DnsAnswer::NotNtm,
            _ => DnsAnswer::Failed,
        }
    }

    fn api(&mut self, h: &mut Harness<Dc>, input: &mut Input<'_>) {
        match input.u8() % 2 {
            0 => {
                let Some(n) = input.pick(&[MN, CN, N3, PEER]) else { return };
                let host = input.u8();
                let addrs = VirtualAddrs {
                    v4: Ipv4Addr::new(198, 18, 1, host),
                    v6: Ipv6Addr::new(0x2001, 0xdb8, 0xffa, 0, 0, 0, 0, u16::from(input.u8())),
                };
                let _ = h.engine.restore_assignment(&name(n), addrs);
            }
            _ => {
                let _ = (h.engine.nodes(), h.engine.held_keys(), h.engine.negotiation_count());
            }
        }
        h.finish_op();
    }

    fn learn(&mut self, _h: &mut Harness<Dc>, t: &Transmit, opened: Option<&(Header, Message)>) {
        let Some((_, Message::KeyShare(share))) = opened else { return };
        let Via::Stream { server: Some(server), .. } = &t.via else { return };
        if self.shares.len() >= 8 {
            self.shares.remove(0);
        }
        self.shares.push(Share { dst: t.dst, server: server.clone(), share: share.clone() });
    }
}

fn dc_setup(c: u8) -> Option<(Harness<Dc>, DcScript)> {
    let relays = [("rs1.example", RS1), ("rs2.example", RS2)];
    let relay_count = if c & 2 == 0 { 2 } else { 1 };
    let mut cfg = DcConfig::new(
        name("dc.zone-a.example"),
        vec![name("zone-a.example")],
        (Ipv4Addr::new(198, 18, 1, 0), 29),
        (Ipv6Addr::new(0x2001, 0xdb8, 0xffa, 0, 0, 0, 0, 0), 125),
    );
    cfg.relays = relays.iter().take(relay_count).map(|(n, a)| ServerRef { name: name(n), addr: *a }).collect();
    cfg.notification_servers =
        vec![NsRef { server: ServerRef { name: name("ns1.example"), addr: NS1 }, node_addrs: vec![NS1] }];
    if c & 1 != 0 {
        cfg.static_peers =
            vec![(name("zone-b.example"), DcLocation { name: name("dc.zone-b.example"), addrs: vec![DC_B] })];
    }
    if c & 4 != 0 {
        cfg.ntmns_lifetime = Duration::from_secs(60);
    }
    if c & 8 != 0 {
        cfg.server_key_lifetime = Duration::from_secs(120);
    }
    if c & 0x10 != 0 {
        cfg.negotiation_backoff.attempts = 3;
    }
    cfg.max_nodes = 4;
    cfg.max_negotiations = 3;
    let dc = Dc::new(cfg, FuzzRng::boxed(u64::from(c)), T0).ok()?;
    let mut addrs = vec![AS_ADDR, DC_B, DC_C, RS1, RS1_6, RS2, NS1, MN_LOCAL, CN6, OTHER];
    addrs.extend_from_slice(&DC_NODE_ADDRS);
    let identities = vec![
        None,
        identity("as.example", Role::As),
        identity("dc.zone-b.example", Role::Dc),
        identity("rs1.example", Role::Rs),
        identity("rs2.example", Role::Rs),
        identity("ns1.example", Role::Ns),
        identity(MN, Role::Node),
        identity("dc.zone-c.example", Role::Dc),
    ];
    let mut h = Harness::new(dc, T0, addrs, identities);
    let mut s = DcScript { shares: Vec::new() };
    h.finish_op();
    let as_id = h.identities.get(1).cloned().flatten();
    for (i, (n, (key, id))) in [MN, CN].iter().zip(DC_NODE_KEYS).enumerate() {
        let msg = Message::KeyDistribution(KeyDistribution {
            request_id: RequestId(id),
            fqdn: name(n),
            key_id: KeyId(id),
            k_ntmdc: grant(key, 43_200),
            attestation: None,
        });
        h.frame(StreamKind::Tls, AS_ADDR, as_id.as_ref(), &plain(Sender::As, &msg));
        h.add_slot(Slot::new(Kind::NtmDc, key, KeyId(id), Sender::Node, *DC_NODE_ADDRS.get(i)?));
    }
    let regs: [&[SocketAddr]; 2] = [&[MN_LOCAL], &[v4(198, 51, 100, 8, 4500), CN6]];
    for (i, local) in regs.iter().enumerate() {
        let msg = Message::RegistrationRequest(RegistrationRequest {
            request_id: RequestId(0x100 + i as u32),
            local_addrs: List::from_vec(local.to_vec()).ok()?,
            keepalive: KeepaliveMethod::Udp,
            ns_key_lost: None,
            announced: Tail(List::new()),
        });
        let slot = h.slots.get_mut(i)?;
        let from = slot.from;
        let bytes = slot.seal(Sender::Node, &msg)?;
        h.datagram(from, &bytes);
    }
    let (key, id) = DCDC_KEY;
    let dc_b = h.identities.get(2).cloned().flatten();
    let share = key_share(0, 0xd1, id, key, 86_400, "dc.zone-b.example");
    h.frame(StreamKind::Tls, DC_B, dc_b.as_ref(), &plain(Sender::Dc, &share));
    h.add_slot(Slot::new(Kind::DcDc, key, KeyId(id), Sender::Dc, DC_B));
    // The DC asked its relays for their status and shared keys with them first.
    super::harness::learn(&mut h, &mut s);
    for share in core::mem::take(&mut s.shares) {
        let mut yes = Input::new(&[0]);
        DcScript::ack_share(&mut h, &share, &mut yes);
    }
    for (t, m) in super::node::take_messages(&mut h, &mut s) {
        let Message::RelayStatus(st) = m else { continue };
        let Some(i) = h.slot_by_id(Kind::DcRs, crate::wire::Envelope::new_checked(&t.payload[..]).ok()?.key_id())
        else {
            continue;
        };
        let msg = Message::RelayStatusAck(RelayStatusAck {
            request_id: st.request_id,
            sessions: 0,
            capacity: 100,
            relay_addrs: List::from_vec(vec![t.dst, relay_v6(t.dst)]).ok()?,
        });
        let bytes = h.slots.get_mut(i)?.seal(Sender::Rs, &msg)?;
        h.datagram(t.dst, &bytes);
    }
    assert_eq!(h.engine.nodes().iter().filter(|n| n.virtual_addrs.is_some()).count(), 2, "the DC's setup failed");
    h.fix_slots();
    Some((h, s))
}

pub(super) fn run_dc(data: &[u8]) -> Option<Harness<Dc>> {
    let mut input = Input::new(data);
    let (mut h, mut s) = dc_setup(input.u8())?;
    run(&mut h, &mut s, &mut input);
    Some(h)
}

// ------------------------------------------------------------------------------------------
// RS

const RS_MN: SocketAddr = v4(203, 0, 113, 5, 1024);
const RS_MN2: SocketAddr = v4(203, 0, 113, 5, 1025);
const RS_CN: SocketAddr = v6([0x2001, 0xdb8, 0x200, 0, 0, 0, 0, 9], 4500);
const DCRS_KEY: ([u8; KEY_LEN], u32) = (*b"fuzz rs1 dcrs!!!", 0x4b00_00e1);
const RS_TUN_KEY: [u8; KEY_LEN] = *b"fuzz rs1 k_tun!!";

impl Subject for Rs {
    type Event = ();

    fn next_event(&mut self) -> Option<()> {
        None
    }

    fn check_received(&self, from: SocketAddr, after: &[u8], r: &Received) {
        let Received::Forward(to) = r else { return };
        let env = crate::wire::Envelope::new_checked(after);
        assert!(env.is_ok(), "forwarded a packet without a valid header");
        let Ok(env) = env else { return };
        let session = SessionId(env.key_id().0);
        let info = self.sessions().into_iter().find(|s| s.session == session);
        assert!(info.is_some(), "forwarded a packet of session {session}, which does not exist");
        let Some(s) = info else { return };
        let between = (s.mn == Some(from) && s.cn == Some(*to)) || (s.cn == Some(from) && s.mn == Some(*to));
        assert!(between, "forwarded {from} -> {to}, not between the ends of session {session}: {s:?}");
    }

    fn check(&self) {
        let ok = self.held_keys().iter().all(|(k, _)| *k == "K_dcrs" || *k == "K_tun");
        assert!(ok, "the RS holds a key other than K_dcrs and K_tun");
    }
}

pub(super) struct RsScript {
    max_sessions: usize,
}

fn side_end(side: Side, input: &mut Input<'_>) -> (Sender, SocketAddr) {
    match side {
        Side::Mn => (Sender::Mn, if input.u8() < 0xe0 { RS_MN } else { RS_MN2 }),
        _ => (Sender::Cn, RS_CN),
    }
}

impl Script<Rs> for RsScript {
    fn template(&mut self, h: &mut Harness<Rs>, slot: usize, input: &mut Input<'_>) -> Option<Tpl> {
        match h.slots.get(slot)?.kind {
            Kind::DcRs => Some(Tpl::from(match input.u8() % 3 {
                0 => {
                    let request_id = RequestId(input.u32());
                    let b = input.u8();
                    let session = match b {
                        0..=0xbf => SESSIONS.get(usize::from(b & 3)).copied().unwrap_or(1),
                        _ => h.seen.sessions.pick(input),
                    };
                    let lifetime = input.pick(&LIFETIMES)?;
                    // A retransmission carries the same K_tun.
                    let key = match h.slot_by_id(Kind::Tun, KeyId(session)).and_then(|i| h.slots.get(i)) {
                        Some(s) => s.key,
                        None => {
                            let key = h.rng.key();
                            h.pending_slots.push(Slot::new(Kind::Tun, key, KeyId(session), Sender::Mn, RS_MN));
                            key
                        }
                    };
                    Message::RelayDirection(RelayDirection {
                        request_id,
                        session: SessionId(session),
                        k_tun: grant(key, lifetime),
                    })
                }
                1 => Message::RelayStatus(RelayStatus { request_id: RequestId(input.u32()) }),
                _ => Message::RelayDirectionAck(RelayDirectionAck {
                    request_id: RequestId(input.u32()),
                    session: h.seen.session(input),
                    relay_addrs: List::new(),
                }),
            })),
            Kind::Tun => {
                let side = if input.bool() { Side::Mn } else { Side::Cn };
                let (sender, from) = side_end(side, input);
                let msg = match input.u8() % 4 {
                    0 => Message::HolePunch(HolePunch { side, release: input.u8() >= 0xc0 }),
                    1 => Message::TunnelRequest(TunnelRequest {
                        initiator: name(MN),
                        virtual_addrs: PEER_V,
                        wrapped: WrappedKey::Tmp(crate::crypto::pk::TmpWrap { ciphertext: [1; 16], tag: [2; 16] }),
                    }),
                    2 => match input.u8() % 4 {
                        0 => Message::PathProbe(PathProbe { probe_id: input.u32() }),
                        1 => Message::TunnelResponse(TunnelResponse { virtual_addrs: PEER_V }),
                        2 => Message::PathProbeAck(PathProbeAck { probe_id: input.u32(), observed: from }),
                        _ => Message::Data(
                            DataBody::new(ip_packet(PEER_V.v4.into(), PEER_V.v4.into(), input.bytes())).ok()?,
                        ),
                    },
                    _ => Message::HolePunchAck(HolePunchAck { observed: from }),
                };
                Some(Tpl::from(msg).by(sender).sent_from(from))
            }
            _ => None,
        }
    }

    fn plain(&mut self, h: &mut Harness<Rs>, input: &mut Input<'_>) {
        let peer = share_identity(h, 1, input);
        let addr = peer.as_ref().map_or(OTHER, |p| server_addr(&p.name));
        match input.u8() % 3 {
            0 => {
                let Some(from) = input.pick(&["dc.zone-a.example", "dc.zone-b.example"]) else { return };
                let kind = if input.u8() < 0xc0 { 1 } else { input.u8() % 3 };
                let key_id = match input.u8() {
                    b @ 0..=0xbf => 0x4b00_00e1 + u32::from(b & 3),
                    _ => input.u32(),
                };
                let key = h.rng.key();
                let Some(lifetime) = input.pick(&LIFETIMES) else { return };
                let msg = key_share(kind, input.u32(), key_id, key, lifetime, from);
                if h.frame(StreamKind::Tls, addr, peer.as_ref(), &plain(Sender::Dc, &msg)) == Received::Handled {
                    h.add_slot(Slot::new(Kind::DcRs, key, KeyId(key_id), Sender::Dc, addr));
                }
            }
            1 => {
                let msg = Message::RelayStatus(RelayStatus { request_id: RequestId(input.u32()) });
                h.frame(StreamKind::Tls, addr, peer.as_ref(), &plain(Sender::Dc, &msg));
            }
            _ => {
                let msg = key_share(1, 7, input.u32(), h.rng.key(), 3600, "dc.zone-a.example");
                h.frame(StreamKind::Tcp, addr, peer.as_ref(), &plain(Sender::Dc, &msg));
            }
        }
    }

    fn answer(&mut self, _h: &mut Harness<Rs>, _name: &Fqdn, _input: &mut Input<'_>) -> DnsAnswer {
        DnsAnswer::Failed
    }

    fn api(&mut self, h: &mut Harness<Rs>, _input: &mut Input<'_>) {
        let _ = (h.engine.sessions(), h.engine.held_keys());
    }

    fn check(&mut self, h: &Harness<Rs>) {
        let n = h.engine.sessions().len();
        assert!(n <= self.max_sessions, "{n} relay sessions, more than max_sessions");
    }
}

fn rs_setup(c: u8) -> Option<(Harness<Rs>, RsScript)> {
    let mut cfg = RsConfig::new(name("rs1.example"), vec![RS1, RS1_6]);
    cfg.max_sessions = if c & 2 == 0 { 3 } else { 1 };
    if c & 1 != 0 {
        cfg.max_session_pps = 3;
    }
    if c & 4 != 0 {
        cfg.session_idle_timeout = Duration::from_secs(5);
    }
    cfg.max_dc_keys = 2;
    let max_sessions = cfg.max_sessions;
    let rs = Rs::new(cfg).ok()?;
    let addrs = vec![DC_A, DC_B, RS_MN, RS_MN2, RS_CN, OTHER];
    let identities = vec![
        None,
        identity("dc.zone-a.example", Role::Dc),
        identity("dc.zone-b.example", Role::Dc),
        identity("ns1.example", Role::Ns),
        identity(MN, Role::Node),
    ];
    let mut h = Harness::new(rs, T0, addrs, identities);
    let (key, id) = DCRS_KEY;
    let dc_a = h.identities.get(1).cloned().flatten();
    let share = key_share(1, 0xe1, id, key, 86_400, "dc.zone-a.example");
    h.frame(StreamKind::Tls, DC_A, dc_a.as_ref(), &plain(Sender::Dc, &share));
    h.add_slot(Slot::new(Kind::DcRs, key, KeyId(id), Sender::Dc, DC_A));
    let session = SessionId(SESSIONS[0]);
    let rd =
        Message::RelayDirection(RelayDirection { request_id: RequestId(1), session, k_tun: grant(RS_TUN_KEY, 86_400) });
    let bytes = h.slots.first_mut()?.seal(Sender::Dc, &rd)?;
    h.datagram(DC_A, &bytes);
    let mut tun = Slot::new(Kind::Tun, RS_TUN_KEY, KeyId(session.0), Sender::Mn, RS_MN);
    for (side, sender, from) in [(Side::Mn, Sender::Mn, RS_MN), (Side::Cn, Sender::Cn, RS_CN)] {
        let bytes = tun.seal(sender, &Message::HolePunch(HolePunch { side, release: false }))?;
        h.datagram(from, &bytes);
    }
    h.add_slot(tun);
    let ends = h.engine.sessions();
    assert!(ends.first().is_some_and(|s| s.mn.is_some() && s.cn.is_some()), "the RS's setup failed: {ends:?}");
    h.fix_slots();
    Some((h, RsScript { max_sessions }))
}

pub(super) fn run_rs(data: &[u8]) -> Option<Harness<Rs>> {
    let mut input = Input::new(data);
    let (mut h, mut s) = rs_setup(input.u8())?;
    run(&mut h, &mut s, &mut input);
    Some(h)
}

// ------------------------------------------------------------------------------------------
// NS

const NS_CONNS: [SocketAddr; 3] =
    [v4(203, 0, 113, 5, 40_001), v4(203, 0, 113, 6, 40_002), v6([0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 7], 40_003)];
const NS_NODES: [&str; 3] = [MN, CN, N3];
const NTMNS_IDS: [u32; 4] = [0x4e53_0001, 0x4e53_0002, 0x4e53_0003, 0x4e53_0004];
const DCNS_KEY: ([u8; KEY_LEN], u32) = (*b"fuzz ns1 dcns!!!", 0x4b00_00f1);

impl Subject for Ns {
    type Event = ();

    fn next_event(&mut self) -> Option<()> {
        None
    }

    fn check(&self) {
        assert!(self.connected() <= self.node_keys(), "more NS connections than node keys");
    }
}

pub(super) struct NsScript {
    max_nodes: usize,
    /// The node each K_ntmns was given for.
    owners: Vec<(KeyId, Fqdn)>,
}

impl NsScript {
    fn owner(&self, id: KeyId) -> Option<Fqdn> {
        self.owners.iter().rev().find(|(k, _)| *k == id).map(|(_, f)| f.clone())
    }
}

impl Script<Ns> for NsScript {
    fn template(&mut self, h: &mut Harness<Ns>, slot: usize, input: &mut Input<'_>) -> Option<Tpl> {
        let s = h.slots.get(slot)?;
        let (kind, id) = (s.kind, s.id);
        Some(Tpl::from(match kind {
            Kind::DcNs => match input.u8() % 3 {
                0 => {
                    let request_id = RequestId(input.u32());
                    let node = input.index(NS_NODES.len())?;
                    let fqdn = name(NS_NODES.get(node)?);
                    let b = input.u8();
                    let key_id = KeyId(match b {
                        0..=0xbf => NTMNS_IDS.get(usize::from(b & 3)).copied().unwrap_or(1),
                        _ => h.seen.keys.pick(input),
                    });
                    let lifetime = input.pick(&LIFETIMES)?;
                    let key = match h.slot_by_id(Kind::NtmNs, key_id).and_then(|i| h.slots.get(i)) {
                        Some(s) => s.key,
                        None => h.rng.key(),
                    };
                    let from = *NS_CONNS.get(node)?;
                    h.pending_slots.push(Slot::new(Kind::NtmNs, key, key_id, Sender::Node, from).over_tcp());
                    if self.owners.len() >= 16 {
                        self.owners.remove(0);
                    }
                    self.owners.push((key_id, fqdn.clone()));
                    Message::NsKeyDistribution(NsKeyDistribution {
                        request_id,
                        fqdn,
                        key_id,
                        k_ntmns: grant(key, lifetime),
                    })
                }
                1 => {
                    let request_id = RequestId(input.u32());
                    let ids: Vec<KeyId> = h.slots.iter().filter(|s| s.kind == Kind::NtmNs).map(|s| s.id).collect();
                    let node_key_id = match input.pick(&ids) {
                        Some(k) if input.u8() < 0xe0 => k,
                        _ => KeyId(input.u32()),
                    };
                    let payload = Bytes::new(input.bytes().to_vec()).ok()?;
                    Message::Notify(Notify { request_id, node_key_id, payload })
                }
                _ => Message::NsKeyAck(NsKeyAck { request_id: RequestId(input.u32()), key_id: id }),
            },
            Kind::NtmNs => match input.u8() % 3 {
                0 => {
                    let own = self.owner(id).unwrap_or_else(|| name(MN));
                    let fqdn = if input.u8() < 0xe0 { own } else { name(input.pick(&NS_NODES)?) };
                    Message::NotificationRegistration(NotificationRegistration {
                        request_id: RequestId(input.u32()),
                        fqdn,
                    })
                }
                1 if input.bool() => Message::NsProbe(NsProbe {
                    request_id: RequestId(input.u32()),
                    delay: input.pick(&[0u32, 1, 60, u32::MAX])?,
                }),
                1 => Message::NsKeepalive(NsKeepalive { request_id: RequestId(input.u32()) }),
                _ => Message::Notify(Notify {
                    request_id: RequestId(input.u32()),
                    node_key_id: id,
                    payload: Bytes::new(input.bytes().to_vec()).ok()?,
                }),
            },
            _ => return None,
        }))
    }

    fn plain(&mut self, h: &mut Harness<Ns>, input: &mut Input<'_>) {
        let peer = share_identity(h, 1, input);
        let addr = peer.as_ref().map_or(OTHER, |p| server_addr(&p.name));
        match input.u8() % 2 {
            0 => {
                let Some(from) = input.pick(&["dc.zone-a.example", "dc.zone-b.example"]) else { return };
                let kind = if input.u8() < 0xc0 { 2 } else { input.u8() % 3 };
                let key_id = match input.u8() {
                    b @ 0..=0xbf => 0x4b00_00f1 + u32::from(b & 3),
                    _ => input.u32(),
                };
                let key = h.rng.key();
                let Some(lifetime) = input.pick(&LIFETIMES) else { return };
                let msg = key_share(kind, input.u32(), key_id, key, lifetime, from);
                if h.frame(StreamKind::Tls, addr, peer.as_ref(), &plain(Sender::Dc, &msg)) == Received::Handled {
                    h.add_slot(Slot::new(Kind::DcNs, key, KeyId(key_id), Sender::Dc, addr));
                }
            }
            _ => {
                let msg = Message::NsKeyAck(NsKeyAck { request_id: RequestId(input.u32()), key_id: KeyId(1) });
                h.frame(StreamKind::Tls, addr, peer.as_ref(), &plain(Sender::Dc, &msg));
            }
        }
    }

    fn answer(&mut self, _h: &mut Harness<Ns>, _name: &Fqdn, _input: &mut Input<'_>) -> DnsAnswer {
        DnsAnswer::Failed
    }

    fn api(&mut self, h: &mut Harness<Ns>, _input: &mut Input<'_>) {
        let _ = (h.engine.connected_nodes(), h.engine.held_keys());
    }

    fn learn(&mut self, h: &mut Harness<Ns>, t: &Transmit, _opened: Option<&(Header, Message)>) {
        if let Via::Stream { kind: StreamKind::Tcp, .. } = t.via {
            assert!(h.open_tcp.contains(&t.dst), "the NS writes to {}, a TCP connection that is not open", t.dst);
        }
    }

    fn check(&mut self, h: &Harness<Ns>) {
        let n = h.engine.node_keys();
        assert!(n <= self.max_nodes, "{n} node keys, more than max_nodes");
    }
}

fn ns_setup(c: u8) -> Option<(Harness<Ns>, NsScript)> {
    let mut cfg = NsConfig::new(name("ns1.example"));
    cfg.max_nodes = if c & 1 == 0 { 3 } else { 1 };
    cfg.max_dc_keys = if c & 2 == 0 { 2 } else { 1 };
    let max_nodes = cfg.max_nodes;
    let ns = Ns::new(cfg).ok()?;
    let mut addrs = vec![DC_A, DC_B, OTHER];
    addrs.extend_from_slice(&NS_CONNS);
    let identities = vec![
        None,
        identity("dc.zone-a.example", Role::Dc),
        identity("dc.zone-b.example", Role::Dc),
        identity("rs1.example", Role::Rs),
        identity(MN, Role::Node),
    ];
    let mut h = Harness::new(ns, T0, addrs, identities);
    let (key, id) = DCNS_KEY;
    let dc_a = h.identities.get(1).cloned().flatten();
    let share = key_share(2, 0xf1, id, key, 86_400, "dc.zone-a.example");
    h.frame(StreamKind::Tls, DC_A, dc_a.as_ref(), &plain(Sender::Dc, &share));
    h.add_slot(Slot::new(Kind::DcNs, key, KeyId(id), Sender::Dc, DC_A));
    let node_key = *b"fuzz ns1 ntmns!!";
    let kd = Message::NsKeyDistribution(NsKeyDistribution {
        request_id: RequestId(1),
        fqdn: name(MN),
        key_id: KeyId(NTMNS_IDS[0]),
        k_ntmns: grant(node_key, 86_400),
    });
    let bytes = h.slots.first_mut()?.seal(Sender::Dc, &kd)?;
    h.datagram(DC_A, &bytes);
    let mut slot = Slot::new(Kind::NtmNs, node_key, KeyId(NTMNS_IDS[0]), Sender::Node, NS_CONNS[0]).over_tcp();
    let reg = Message::NotificationRegistration(NotificationRegistration { request_id: RequestId(2), fqdn: name(MN) });
    let bytes = slot.seal(Sender::Node, &reg)?;
    h.frame(StreamKind::Tcp, NS_CONNS[0], None, &bytes);
    h.add_slot(slot);
    assert_eq!(h.engine.connected(), 1, "the NS's setup failed");
    h.fix_slots();
    Some((h, NsScript { max_nodes, owners: vec![(KeyId(NTMNS_IDS[0]), name(MN))] }))
}

pub(super) fn run_ns(data: &[u8]) -> Option<Harness<Ns>> {
    let mut input = Input::new(data);
    let (mut h, mut s) = ns_setup(input.u8())?;
    run(&mut h, &mut s, &mut input);
    Some(h)
}

// ------------------------------------------------------------------------------------------
// AS

/// UNIX time in milliseconds: ID tokens carry UNIX times.
const AS_T0: Instant = Instant::from_millis(1_700_000_000_000);
const AS_NODES: [SocketAddr; 3] =
    [v4(198, 51, 100, 7, 50_001), v4(198, 51, 100, 8, 50_002), v6([0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 7], 50_003)];
const ISSUER: &str = "https://id.example";

/// The prefix of the fuzz target's ID tokens: `fuzz-id-token <good> <subject>`.
const TOKEN_PREFIX: &str = "fuzz-id-token ";

/// The account store of the fuzz target: a fixed table. ID tokens are verified by the AS
/// daemon (servers/src/oidc.rs, which has tests of its own); here a token says itself
/// whether it passed ([`AsScript::id_token`] decides as the verifier would).
#[derive(Debug)]
pub(super) struct FuzzAccounts;

fn verdict(fqdn: Option<&str>) -> Verdict {
    match fqdn {
        Some("d.zone-a.example") => Verdict::Disabled,
        Some(f) => Verdict::Account(Account { fqdn: name(f) }),
        None => Verdict::BadCredential,
    }
}

impl Accounts for FuzzAccounts {
    fn password(&mut self, email: &str, password: &[u8]) -> Verdict {
        verdict(match (email, password) {
            ("owner@mn.zone-a.example", b"correct horse") => Some(MN),
            ("owner@cn.zone-b.example", b"pw") => Some("cn.zone-b.example"),
            ("disabled@zone-a.example", b"x") => Some("d.zone-a.example"),
            _ => None,
        })
    }

    fn device(&mut self, identity: &PeerIdentity) -> Verdict {
        verdict((identity.name.as_str() == "dev.zone-a.example").then_some("dev.zone-a.example"))
    }

    fn id_token(&mut self, token: &[u8], _now_unix: u64) -> Result<Verdict, String> {
        let text = core::str::from_utf8(token).map_err(|_| "not UTF-8".to_owned())?;
        match text.strip_prefix(TOKEN_PREFIX).and_then(|t| t.split_once(' ')) {
            Some(("1", "sub-1")) => Ok(verdict(Some(MN))),
            Some(("1", "sub-2")) => Ok(verdict(Some("d.zone-a.example"))),
            Some(("1", _)) => Ok(verdict(None)),
            _ => Err("not a good token".to_owned()),
        }
    }
}

struct AsKeys {
    attestation: KeyPair,
    device: PublicKey,
    other: PublicKey,
}

fn as_keys() -> Option<&'static AsKeys> {
    static KEYS: OnceLock<Option<AsKeys>> = OnceLock::new();
    KEYS.get_or_init(|| {
        Some(AsKeys {
            attestation: KeyPair::from_scalar_bytes(&[0x11; 32]).ok()?,
            device: KeyPair::from_scalar_bytes(&[0x66; 32]).ok()?.public(),
            other: KeyPair::from_scalar_bytes(&[0x77; 32]).ok()?.public(),
        })
    })
    .as_ref()
}

impl Subject for AccountServer<FuzzAccounts> {
    type Event = AsEvent;

    fn next_event(&mut self) -> Option<AsEvent> {
        self.poll_event()
    }
}

pub(super) struct AsScript {
    keys: &'static AsKeys,
    /// Key ids whose Key Distribution a DC acknowledged.
    acked: Vec<KeyId>,
    /// Login Responses sent.
    pub(super) responses: usize,
}

impl AsScript {
    /// An ID token, valid or subtly not, from the input: what an ES256 token would carry
    /// (key id, issuer, subject, audience, expiry, issue time, signer), judged as the
    /// daemon's verifier judges it (60 s leeway), and written as [`FuzzAccounts`] reads it.
    fn id_token(&self, input: &mut Input<'_>) -> Option<IdToken> {
        let kid_known = input.pick(&[true, false, true])?;
        let iss = input.pick(&[ISSUER, "https://evil.example"])?;
        let sub = input.pick(&["sub-1", "sub-2", "sub-3", ""])?;
        let aud_ok = input.pick(&[true, false, true, false])?;
        let exp_offset = input.pick(&[-3600i64, -30, 30, 3600])?;
        let iat_ok = input.pick(&[true, true, false])?;
        let signed_right = input.u8() < 0xe0;
        let good =
            kid_known && iss == ISSUER && !sub.is_empty() && aud_ok && exp_offset > -60 && iat_ok && signed_right;
        let token = format!("{TOKEN_PREFIX}{} {sub}", u8::from(good));
        IdToken::new(token.as_bytes()).ok()
    }
}

impl Script<AccountServer<FuzzAccounts>> for AsScript {
    fn template(
        &mut self,
        _h: &mut Harness<AccountServer<FuzzAccounts>>,
        _slot: usize,
        _input: &mut Input<'_>,
    ) -> Option<Tpl> {
        None
    }

    fn plain(&mut self, h: &mut Harness<AccountServer<FuzzAccounts>>, input: &mut Input<'_>) {
        match input.u8() % 4 {
            0 => {
                let from = h.pick_addr(input);
                let peer = h.pick_identity(input);
                let credential = match input.u8() % 5 {
                    0 | 4 => {
                        let Some(email) = input.pick(&[
                            "owner@mn.zone-a.example",
                            "owner@cn.zone-b.example",
                            "disabled@zone-a.example",
                            "",
                        ]) else {
                            return;
                        };
                        let Some(password) = input.pick(&[&b"correct horse"[..], b"pw", b"x", b""]) else { return };
                        let (Ok(email), Ok(password)) = (Text::new(email), Password::new(password)) else { return };
                        Credential::Password { email, password }
                    }
                    1 => Credential::DeviceCertificate,
                    2 => match self.id_token(input) {
                        Some(t) => Credential::OidcToken(t),
                        None => return,
                    },
                    _ => match IdToken::new(input.bytes()) {
                        Ok(t) => Credential::OidcToken(t),
                        Err(_) => return,
                    },
                };
                let public_key = match input.u8() % 3 {
                    0 => None,
                    1 => Some(self.keys.device),
                    _ => Some(self.keys.other),
                };
                let msg =
                    Message::LoginRequest(LoginRequest { request_id: RequestId(input.u32()), credential, public_key });
                h.frame(StreamKind::Tls, from, peer.as_ref(), &plain(Sender::Node, &msg));
            }
            1 => {
                let peer = share_identity(h, 3, input);
                let request_id = h.seen.request(input);
                let key_id = h.seen.key(input);
                let addr = peer.as_ref().map_or(OTHER, |p| server_addr(&p.name));
                let msg = Message::NtmAck(NtmAck { request_id, key_id });
                if h.frame(StreamKind::Tls, addr, peer.as_ref(), &plain(Sender::Dc, &msg)) == Received::Handled {
                    self.acked.push(key_id);
                }
            }
            2 => {
                let peer = share_identity(h, 3, input);
                let key_id = h.seen.key(input);
                let Some(reason) = input.pick(&REASONS) else { return };
                let addr = peer.as_ref().map_or(OTHER, |p| server_addr(&p.name));
                let msg = Message::Refusal(Refusal::new(MsgType::KeyDistribution, RequestId(key_id.0), reason, "fuzz"));
                h.frame(StreamKind::Tls, addr, peer.as_ref(), &plain(Sender::Dc, &msg));
            }
            _ => {
                let peer = h.pick_identity(input);
                let msg = Message::KeyDistribution(KeyDistribution {
                    request_id: RequestId(1),
                    fqdn: name(MN),
                    key_id: KeyId(input.u32()),
                    k_ntmdc: grant(h.rng.key(), 3600),
                    attestation: None,
                });
                let kind = if input.bool() { StreamKind::Tls } else { StreamKind::Tcp };
                h.frame(kind, DC_A, peer.as_ref(), &plain(Sender::Dc, &msg));
            }
        }
    }

    fn answer(
        &mut self,
        _h: &mut Harness<AccountServer<FuzzAccounts>>,
        _name: &Fqdn,
        input: &mut Input<'_>,
    ) -> DnsAnswer {
        let loc = |n: &str, addrs: Vec<SocketAddr>| DnsAnswer::Dc(DcLocation { name: name(n), addrs });
        match input.u8() % 5 {
            0 => loc("dc.zone-a.example", vec![DC_A]),
            1 => loc("dc.zone-b.example", vec![DC_B]),
            2 => loc("dc.zone-a.example", Vec::new()),
            3 => DnsAnswer::NotNtm,
            _ => DnsAnswer::Failed,
        }
    }

    fn api(&mut self, h: &mut Harness<AccountServer<FuzzAccounts>>, _input: &mut Input<'_>) {
        let _ = h.engine.attestation_public_key();
    }

    fn learn(
        &mut self,
        _h: &mut Harness<AccountServer<FuzzAccounts>>,
        t: &Transmit,
        opened: Option<&(Header, Message)>,
    ) {
        if let Some((_, Message::LoginResponse(r))) = opened {
            self.responses += 1;
            assert!(
                self.acked.contains(&r.key_id),
                "Login Response to {} with key {} that no DC acknowledged",
                t.dst,
                r.key_id
            );
        }
    }
}

fn as_setup(c: u8) -> Option<(Harness<AccountServer<FuzzAccounts>>, AsScript)> {
    let keys = as_keys()?;
    let mut cfg = AsConfig::new(name("as.example"));
    if c & 1 != 0 {
        cfg.attestation_key = Some(keys.attestation.clone());
    }
    if c & 2 != 0 {
        cfg.static_dcs =
            vec![(name("zone-b.example"), DcLocation { name: name("dc.zone-b.example"), addrs: vec![DC_B] })];
    }
    cfg.max_pending = if c & 4 == 0 { 3 } else { 1 };
    if c & 8 != 0 {
        cfg.dc_timeout = Duration::from_secs(1);
    }
    let server = AccountServer::new(cfg, FuzzAccounts, FuzzRng::boxed(u64::from(c))).ok()?;
    let mut addrs = AS_NODES.to_vec();
    addrs.extend_from_slice(&[DC_A, DC_B, OTHER]);
    let identities = vec![
        None,
        Some(PeerIdentity { name: name("dev.zone-a.example"), role: Role::Node, public_key: Some(keys.device) }),
        identity("dev.zone-a.example", Role::Node),
        identity("dc.zone-a.example", Role::Dc),
        identity("dc.zone-b.example", Role::Dc),
        Some(PeerIdentity { name: name("evil.zone-a.example"), role: Role::Node, public_key: Some(keys.other) }),
        identity("as.example", Role::As),
    ];
    let h = Harness::new(server, AS_T0, addrs, identities);
    Some((h, AsScript { keys, acked: Vec::new(), responses: 0 }))
}

pub(super) fn run_account(data: &[u8]) -> Option<(Harness<AccountServer<FuzzAccounts>>, AsScript)> {
    let mut input = Input::new(data);
    let (mut h, mut s) = as_setup(input.u8())?;
    run(&mut h, &mut s, &mut input);
    Some((h, s))
}
