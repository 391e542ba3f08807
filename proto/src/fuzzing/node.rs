//! The `node` fuzz target: a [`Node`] logged in at the AS and registered with its DC, fed
//! by a harness that plays its AS, DC, NS, peers and relay with the keys it handed out.
//!
//! Setup: `start`, a Login Response over TLS from the configured AS address, the DNS
//! answer naming the DC (unless the configuration names it), a Registration Response
//! sealed with K_ntmdc for each link, and with the NS keepalive method a Notification Ack
//! under K_ntmns. The configuration byte picks the keepalive method, public-key mode,
//! strict mode, route optimization, a UDP keepalive override, single- or dual-stack and a
//! static DC.
//!
//! Templates: everything a DC (K_ntmdc), an NS (K_ntmns), a peer or an RS (K_tun, from
//! the Route Directions the harness made) and a peer under K_mncn (wrapped by the harness,
//! or unwrapped from the node's own Tunnel Request) send a node. API calls: `resolve`,
//! `handle_network_change`, `send_ip`, `seal_ip`, `start`.
//!
//! Own invariants: a data packet handed back is an IP packet from a tunnel peer's virtual
//! address to ours; no more live tunnels than `max_tunnels`.

use super::harness::{learn, name, run, FuzzRng, Harness, Input, Kind, Script, Slot, Subject, Tpl};
use crate::crypto::pk::{
    unwrap_from_peer, unwrap_with_tmp, wrap_for_peer, wrap_with_tmp, Attestation, AttestedKey, KeyPair, PublicKey,
    TmpWrap,
};
use crate::crypto::plain;
use crate::engine::node::{Node, NodeConfig, NodeEvent};
use crate::engine::{DcLocation, DnsAnswer, PeerIdentity, Received, Role, StreamKind, Transmit};
use crate::keys::{KMnCn, KTmp, Key, KeyGrant, KEY_LEN};
use crate::time::{Duration, Instant};
use crate::wire::data::DataBody;
use crate::wire::login::{Credential, LoginResponse, Password};
use crate::wire::notification::{NotificationAck, NotificationRegistration, Notify, NsKeepaliveAck};
use crate::wire::refusal::{Reason, Refusal};
use crate::wire::registration::{Keepalive, KeepaliveAck, KeepaliveMethod, NsGrant, RegistrationResponse};
use crate::wire::route::{Path, PeerInfo, RouteDirection, RouteDirectionAck, Side, Traversal, TunnelRole};
use crate::wire::tunnel::{
    HolePunch, HolePunchAck, PathProbe, PathProbeAck, TunnelRequest, TunnelResponse, WrappedKey,
};
use crate::wire::{
    Bytes, Fqdn, Header, KeyId, Lifetime, List, Message, MsgType, RequestId, Sender, SessionId, Tails, Text,
    VirtualAddrs,
};
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::OnceLock;

pub(super) const T0: Instant = Instant::from_millis(1_000_000);

pub(super) const fn v4(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), port)
}

pub(super) const fn v6(seg: [u16; 8], port: u16) -> SocketAddr {
    let [a, b, c, d, e, f, g, h] = seg;
    SocketAddr::new(IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)), port)
}

const AS: SocketAddr = v4(192, 0, 2, 10, 4460);
const DC4: SocketAddr = v4(192, 0, 2, 20, 4460);
const DC6: SocketAddr = v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x20], 4460);
const RS4: SocketAddr = v4(192, 0, 2, 30, 4460);
const RS6: SocketAddr = v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x30], 4460);
const NS: SocketAddr = v4(192, 0, 2, 40, 4460);
const PEER4: SocketAddr = v4(203, 0, 113, 9, 1024);
const PEER6: SocketAddr = v6([0x2001, 0xdb8, 0x200, 0, 0, 0, 0, 9], 4500);
const HOME4: SocketAddr = v4(192, 168, 1, 7, 4500);
const LOCAL4: SocketAddr = v4(198, 51, 100, 7, 4500);
const LOCAL6: SocketAddr = v6([0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 7], 4500);
const NAT4: SocketAddr = v4(203, 0, 113, 5, 1024);
const OTHER: SocketAddr = v4(198, 51, 100, 99, 4500);

const ME: &str = "mn.zone-a.example";
const PEER: &str = "cn.zone-b.example";
const PEER2: &str = "cn2.zone-a.example";

const VADDRS: VirtualAddrs =
    VirtualAddrs { v4: Ipv4Addr::new(198, 18, 1, 2), v6: Ipv6Addr::new(0x2001, 0xdb8, 0xffa, 0, 0, 0, 0, 2) };
const PEER_V: VirtualAddrs =
    VirtualAddrs { v4: Ipv4Addr::new(198, 18, 2, 2), v6: Ipv6Addr::new(0x2001, 0xdb8, 0xffb, 0, 0, 0, 0, 2) };
const PEER2_V: VirtualAddrs =
    VirtualAddrs { v4: Ipv4Addr::new(198, 18, 1, 3), v6: Ipv6Addr::new(0x2001, 0xdb8, 0xffa, 0, 0, 0, 0, 3) };

/// K_ntmdc of the setup login.
const DC_KEY: [u8; KEY_LEN] = *b"fuzz node ntmdc!";
pub(super) const DC_KEY_ID: u32 = 0x4b00_0001;
/// The K_ntmns grants the harness's DC hands out.
const NS_KEYS: [([u8; KEY_LEN], u32); 2] = [(*b"fuzz node ntmns1", 0x4e53_0001), (*b"fuzz node ntmns2", 0x4e53_0002)];
/// Session ids the Route Direction template uses.
const SESSIONS: [u32; 4] = [0x5e55_0001, 0x5e55_0002, 0x5e55_0003, 0x5e55_0004];
/// Lifetimes (seconds) the templates give keys.
pub(super) const LIFETIMES: [u32; 6] = [0, 1, 60, 3600, 43_200, u32::MAX];
/// Addresses a DC may say it saw the node at.
const OBSERVED: [SocketAddr; 5] = [NAT4, LOCAL4, LOCAL6, HOME4, PEER6];
const ENDPOINT_SETS: [&[SocketAddr]; 5] = [&[PEER4], &[PEER6], &[PEER4, PEER6], &[], &[PEER6, PEER4, OTHER, NAT4]];
const ADDR_SETS: [&[SocketAddr]; 5] = [&[HOME4, LOCAL6], &[HOME4], &[LOCAL6], &[LOCAL4], &[]];
const RESOLVE_NAMES: [&str; 5] = [PEER, PEER2, ME, "www.example.org", "zone-a.example"];
pub(super) const REASONS: [Reason; 16] = [
    Reason::Malformed,
    Reason::UnsupportedVersion,
    Reason::BadCredential,
    Reason::AccountDisabled,
    Reason::UnknownKey,
    Reason::KeyExpired,
    Reason::NotFound,
    Reason::NotNtm,
    Reason::NoRoute,
    Reason::NoRelay,
    Reason::Overloaded,
    Reason::PeerUnreachable,
    Reason::Unauthorized,
    Reason::Internal,
    Reason::Conflict,
    Reason::Displaced,
];

/// Key pairs and attestations, made once per process (P-256 is slow next to the rest).
struct Keys {
    as_public: PublicKey,
    peer: KeyPair,
    mine: KeyPair,
    my_attestation: Attestation,
    my_attested: AttestedKey,
    peer_attestation: Attestation,
    peer2_attestation: Attestation,
    /// An attestation of the peer's key that the AS did not sign.
    forged_attestation: Attestation,
}

fn keys() -> Option<&'static Keys> {
    static KEYS: OnceLock<Option<Keys>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let as_key = KeyPair::from_scalar_bytes(&[0x11; 32]).ok()?;
        let peer = KeyPair::from_scalar_bytes(&[0x22; 32]).ok()?;
        let mine = KeyPair::from_scalar_bytes(&[0x33; 32]).ok()?;
        let as_public = as_key.public();
        let my_attestation = Attestation::issue(&as_key, name(ME), mine.public());
        let my_attested = my_attestation.verify(&as_public, &name(ME)).ok()?;
        Some(Keys {
            peer_attestation: Attestation::issue(&as_key, name(PEER), peer.public()),
            peer2_attestation: Attestation::issue(&as_key, name(PEER2), peer.public()),
            forged_attestation: Attestation::issue(&peer, name(PEER), peer.public()),
            as_public,
            my_attestation,
            my_attested,
            peer,
            mine,
        })
    })
    .as_ref()
}

/// A minimal IPv4 or IPv6 packet from `src` to `dst`.
pub(super) fn ip_packet(src: IpAddr, dst: IpAddr, payload: &[u8]) -> Vec<u8> {
    let mut p = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = u16::try_from(20 + payload.len()).unwrap_or(u16::MAX).to_be_bytes();
            let mut p = vec![0x45, 0, total[0], total[1], 0, 0, 0x40, 0, 64, 17, 0, 0];
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p
        }
        (s, d) => {
            let len = u16::try_from(payload.len()).unwrap_or(u16::MAX).to_be_bytes();
            let mut p = vec![0x60, 0, 0, 0, len[0], len[1], 17, 64];
            let six = |a: IpAddr| match a {
                IpAddr::V6(a) => a.octets(),
                IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            };
            p.extend_from_slice(&six(s));
            p.extend_from_slice(&six(d));
            p
        }
    };
    p.extend_from_slice(payload);
    p
}

fn addr(v: VirtualAddrs, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(v.v4)
    } else {
        IpAddr::V6(v.v6)
    }
}

/// A tunnel the harness directed the node into.
#[derive(Clone, Debug)]
struct TunCtx {
    session: SessionId,
    /// The node's side.
    side: Side,
    k_tun: [u8; KEY_LEN],
    k_tmp: Option<[u8; KEY_LEN]>,
    peer: Fqdn,
    peer_v: VirtualAddrs,
    /// Where the peer's (or the RS's) messages come from.
    from: SocketAddr,
}

pub(super) struct NodeScript {
    keys: &'static Keys,
    dc: DcLocation,
    tunnels: Vec<TunCtx>,
}

impl Subject for Node {
    type Event = NodeEvent;

    fn next_event(&mut self) -> Option<NodeEvent> {
        self.poll_event()
    }

    fn check_received(&self, _from: SocketAddr, after: &[u8], r: &Received) {
        let Received::Ip(range) = r else { return };
        let inner = after.get(range.clone()).unwrap_or_default();
        let ends = crate::engine::node::ip_endpoints(inner);
        assert!(ends.is_some(), "Received::Ip is not an IP packet");
        let Some((src, dst)) = ends else { return };
        let me = self.virtual_addrs();
        assert!(me.is_some_and(|v| dst == addr(v, true) || dst == addr(v, false)), "packet for {dst} handed up");
        let from_peer =
            self.tunnels().iter().any(|t| src == addr(t.peer_virtual, true) || src == addr(t.peer_virtual, false));
        assert!(from_peer, "packet from {src}, no tunnel peer's address, handed up");
    }

    fn check(&self) {
        let live = self.tunnels().iter().filter(|t| !t.superseded).count();
        assert!(live <= self.config().max_tunnels, "{live} live tunnels, more than max_tunnels");
    }
}

fn tun_sender(side: Side) -> Sender {
    if side == Side::Mn {
        Sender::Mn
    } else {
        Sender::Cn
    }
}

fn other_side(side: Side) -> Side {
    if side == Side::Mn {
        Side::Cn
    } else {
        Side::Mn
    }
}

impl NodeScript {
    fn latest_dc_slot(h: &Harness<Node>) -> Option<usize> {
        h.slots.iter().rposition(|s| s.kind == Kind::NtmDc)
    }

    /// Anything a DC seals for its node.
    fn dc_message(&mut self, h: &mut Harness<Node>, input: &mut Input<'_>) -> Option<Message> {
        Some(match input.u8() % 5 {
            0 => {
                let request_id = h.seen.request(input);
                let virtual_addrs = if input.u8() < 0xe0 { VADDRS } else { PEER_V };
                let observed = input.pick(&OBSERVED)?;
                let behind_nat = input.bool();
                let keepalive_interval = input.pick(&[0u16, 1, 20, u16::MAX])?;
                let ns = if input.bool() {
                    let (key, id) = input.pick(&NS_KEYS)?;
                    let lifetime = Lifetime(input.pick(&LIFETIMES)?);
                    h.pending_slots.push(Slot::new(Kind::NtmNs, key, KeyId(id), Sender::Ns, NS).over_tcp());
                    Some(NsGrant {
                        ns_fqdn: name("ns1.example"),
                        ns_addr: NS,
                        key_id: KeyId(id),
                        k_ntmns: KeyGrant { key: Key::from_bytes(key), lifetime },
                    })
                } else {
                    None
                };
                Message::RegistrationResponse(RegistrationResponse {
                    request_id,
                    virtual_addrs,
                    observed,
                    behind_nat,
                    keepalive_interval,
                    ns,
                })
            }
            1 => Message::KeepaliveAck(KeepaliveAck {
                request_id: h.seen.request(input),
                observed: input.pick(&OBSERVED)?,
            }),
            2 => self.route_direction(h, input)?,
            3 => {
                let ty = input.pick(&[
                    MsgType::RegistrationRequest,
                    MsgType::Keepalive,
                    MsgType::DirectionRequest,
                    MsgType::RouteDirection,
                    MsgType::RouteDirectionAck,
                    MsgType::LoginRequest,
                ])?;
                let request_id = h.seen.request(input);
                Message::Refusal(Refusal::new(ty, request_id, input.pick(&REASONS)?, "fuzz"))
            }
            _ => Message::Keepalive(Keepalive { request_id: h.seen.request(input) }),
        })
    }

    fn route_direction(&mut self, h: &mut Harness<Node>, input: &mut Input<'_>) -> Option<Message> {
        let b = input.u8();
        let existing = if b < 0x60 { usize::from(b).checked_rem(self.tunnels.len()) } else { None };
        let session = match existing.and_then(|i| self.tunnels.get(i)) {
            Some(t) => t.session,
            None if b < 0xc0 => SessionId(SESSIONS.get(usize::from(b & 3)).copied().unwrap_or(1)),
            None => h.seen.session(input),
        };
        let node = if input.u8() < 0xf0 { name(ME) } else { name(PEER) };
        let side = if input.bool() { Side::Mn } else { Side::Cn };
        let role = if input.bool() { TunnelRole::Initiate } else { TunnelRole::Await };
        let p = input.u8();
        let (peer, peer_v) = if p & 1 == 0 { (name(PEER), PEER_V) } else { (name(PEER2), PEER2_V) };
        let eps = ENDPOINT_SETS.get(usize::from(p >> 1) % ENDPOINT_SETS.len()).copied().unwrap_or_default();
        let endpoints = List::from_vec(eps.to_vec()).ok()?;
        let path = match input.u8() % 3 {
            0 => Path::Relay(RS4),
            1 => Path::Relay(RS6),
            _ => Path::Direct,
        };
        let with_tmp = input.u8() < 0xc0;
        let lifetime = Lifetime(input.pick(&LIFETIMES)?);
        let attestation = match input.u8() % 4 {
            0 => None,
            3 => Some(self.keys.forged_attestation.clone()),
            _ if p & 1 == 0 => Some(self.keys.peer_attestation.clone()),
            _ => Some(self.keys.peer2_attestation.clone()),
        };
        let ctx = match self.tunnels.iter().find(|t| t.session == session) {
            // A retransmission carries the same keys.
            Some(t) => t.clone(),
            None => {
                let from = match path {
                    Path::Relay(a) | Path::Gateway(a) => a,
                    Path::Direct => eps.first().copied().unwrap_or(PEER4),
                };
                let k_tmp = if with_tmp { Some(h.rng.key()) } else { None };
                let ctx = TunCtx { session, side, k_tun: h.rng.key(), k_tmp, peer: peer.clone(), peer_v, from };
                if self.tunnels.len() >= 8 {
                    self.tunnels.remove(0);
                }
                self.tunnels.push(ctx.clone());
                ctx
            }
        };
        let me = tun_sender(other_side(ctx.side));
        h.pending_slots.push(Slot::new(Kind::Tun, ctx.k_tun, KeyId(session.0), me, ctx.from));
        Some(Message::RouteDirection(RouteDirection {
            request_id: RequestId(input.u32()),
            session,
            node,
            side,
            role,
            peer: PeerInfo { fqdn: peer, virtual_addrs: peer_v, endpoints },
            path,
            k_tun: KeyGrant { key: Key::from_bytes(ctx.k_tun), lifetime },
            k_tmp: ctx.k_tmp.map(Key::from_bytes),
            peer_attestation: attestation,
            tail: Tails(Traversal::Usual, List::new()),
        }))
    }

    fn tunnel(&self, id: KeyId) -> Option<TunCtx> {
        self.tunnels.iter().rev().find(|t| t.session.0 == id.0).cloned()
    }

    /// Under K_tun: the peer's Tunnel Request, the RS's Hole Punch Ack.
    fn tun_message(&mut self, h: &mut Harness<Node>, slot: usize, input: &mut Input<'_>) -> Option<Tpl> {
        let ctx = self.tunnel(h.slots.get(slot)?.id)?;
        let peer_sender = tun_sender(other_side(ctx.side));
        Some(match input.u8() % 3 {
            0 => {
                let initiator = if input.u8() < 0xf0 { ctx.peer.clone() } else { name(ME) };
                let virtual_addrs = if input.u8() < 0xf0 { ctx.peer_v } else { VADDRS };
                let k_mncn = h.rng.key();
                let key = KMnCn::from_bytes(k_mncn);
                let how = input.u8() % 4;
                let wrapped = match (how, &ctx.k_tmp) {
                    (0 | 1, Some(t)) => WrappedKey::Tmp(
                        wrap_with_tmp(&KTmp::from_bytes(*t), ctx.session, &initiator, &name(ME), &key).ok()?,
                    ),
                    (0..=2, _) => WrappedKey::Public(
                        wrap_for_peer(
                            &mut h.rng,
                            &self.keys.peer,
                            &self.keys.my_attested,
                            ctx.session,
                            &initiator,
                            &key,
                        )
                        .ok()?,
                    ),
                    _ => WrappedKey::Tmp(TmpWrap { ciphertext: k_mncn, tag: [0; 16] }),
                };
                h.pending_slots.push(Slot::new(Kind::MnCn, k_mncn, KeyId(ctx.session.0), Sender::Initiator, ctx.from));
                Tpl::from(Message::TunnelRequest(TunnelRequest { initiator, virtual_addrs, wrapped })).by(peer_sender)
            }
            1 => Tpl::from(Message::HolePunchAck(HolePunchAck { observed: input.pick(&OBSERVED)? })).by(Sender::Rs),
            _ => Tpl::from(Message::HolePunch(HolePunch { side: other_side(ctx.side), release: input.bool() }))
                .by(peer_sender),
        })
    }

    /// Under K_mncn: the peer's Tunnel Response, probes, data.
    fn mncn_message(&mut self, h: &mut Harness<Node>, slot: usize, input: &mut Input<'_>) -> Option<Tpl> {
        let ctx = self.tunnel(h.slots.get(slot)?.id)?;
        let from = input.pick(&[ctx.from, PEER4, PEER6, OTHER])?;
        let msg = match input.u8() % 5 {
            0 => Message::TunnelResponse(TunnelResponse {
                virtual_addrs: if input.u8() < 0xf0 { ctx.peer_v } else { VADDRS },
            }),
            1 => Message::PathProbe(PathProbe { probe_id: input.u32() }),
            2 => {
                Message::PathProbeAck(PathProbeAck { probe_id: h.seen.probe(input), observed: input.pick(&OBSERVED)? })
            }
            3 => {
                let b = input.u8();
                let v4 = b & 1 == 0;
                let src = if b & 2 == 0 { addr(ctx.peer_v, v4) } else { addr(PEER2_V, v4) };
                let dst = if b & 4 == 0 { addr(VADDRS, v4) } else { addr(PEER_V, v4) };
                Message::Data(DataBody::new(ip_packet(src, dst, input.bytes())).ok()?)
            }
            _ => Message::RouteDirectionAck(RouteDirectionAck {
                request_id: h.seen.request(input),
                session: ctx.session,
            }),
        };
        Some(Tpl::from(msg).sent_from(from))
    }

    /// Over the TCP connection to the NS, under K_ntmns.
    fn ns_message(&mut self, h: &mut Harness<Node>, input: &mut Input<'_>) -> Option<Tpl> {
        Some(Tpl::from(match input.u8() % 4 {
            0 => Message::NotificationAck(NotificationAck {
                request_id: h.seen.request(input),
                keepalive_interval: input.pick(&[0u32, 1, 3600, u32::MAX])?,
            }),
            1 => Message::NsKeepaliveAck(NsKeepaliveAck { request_id: h.seen.request(input) }),
            2 => {
                let request_id = RequestId(input.u32());
                let inner = self.dc_message(h, input)?;
                let dc = Self::latest_dc_slot(h)?;
                let slot = h.slots.get_mut(dc)?;
                let node_key_id = slot.id;
                let payload = Bytes::new(slot.seal(Sender::Dc, &inner)?).ok()?;
                Message::Notify(Notify { request_id, node_key_id, payload })
            }
            _ => Message::NotificationRegistration(NotificationRegistration {
                request_id: h.seen.request(input),
                fqdn: name(ME),
            }),
        }))
    }
}

impl Script<Node> for NodeScript {
    fn template(&mut self, h: &mut Harness<Node>, slot: usize, input: &mut Input<'_>) -> Option<Tpl> {
        match h.slots.get(slot)?.kind {
            Kind::NtmDc => self.dc_message(h, input).map(Tpl::from),
            Kind::NtmNs => self.ns_message(h, input),
            Kind::Tun => self.tun_message(h, slot, input),
            Kind::MnCn => self.mncn_message(h, slot, input),
            _ => None,
        }
    }

    fn plain(&mut self, h: &mut Harness<Node>, input: &mut Input<'_>) {
        match input.u8() % 4 {
            0 => {
                let request_id = h.seen.request(input);
                let fqdn = if input.u8() < 0xf0 { name(ME) } else { name(PEER2) };
                let key_id = KeyId(if input.bool() { DC_KEY_ID } else { 0x4b00_0000 | u32::from(input.u8()) });
                let key = h.rng.key();
                let Some(lifetime) = input.pick(&LIFETIMES) else { return };
                let a = input.u8();
                let from = if input.u8() < 0xf0 { AS } else { OTHER };
                let msg = Message::LoginResponse(LoginResponse {
                    request_id,
                    fqdn,
                    key_id,
                    k_ntmdc: KeyGrant { key: Key::from_bytes(key), lifetime: Lifetime(lifetime) },
                    attestation: (a & 1 != 0).then(|| self.keys.my_attestation.clone()),
                    as_public_key: (a & 2 != 0).then_some(self.keys.as_public),
                });
                if h.frame(StreamKind::Tls, from, None, &plain(Sender::As, &msg)) == Received::Handled {
                    h.add_slot(Slot::new(Kind::NtmDc, key, key_id, Sender::Dc, DC4));
                }
            }
            1 => {
                let request_id = h.seen.request(input);
                let Some(reason) = input.pick(&REASONS) else { return };
                let msg = Message::Refusal(Refusal::new(MsgType::LoginRequest, request_id, reason, "fuzz"));
                h.frame(StreamKind::Tls, AS, None, &plain(Sender::As, &msg));
            }
            2 => {
                // The DC's clear refusal of a key it does not know.
                let current = Self::latest_dc_slot(h).and_then(|i| h.slots.get(i)).map(|s| s.id);
                let key_id = match (input.bool(), current) {
                    (true, Some(id)) => id,
                    _ => KeyId(input.u32()),
                };
                let (Some(ty), Some(reason)) = (
                    input.pick(&[MsgType::Keepalive, MsgType::RegistrationRequest, MsgType::DirectionRequest]),
                    input.pick(&[Reason::UnknownKey, Reason::KeyExpired, Reason::Internal]),
                ) else {
                    return;
                };
                let Some(from) = input.pick(&[DC4, DC6, OTHER]) else { return };
                let mut header = Header::plain(MsgType::Refusal, Sender::Dc);
                header.key_id = key_id;
                let mut bytes = header.to_bytes().to_vec();
                bytes.extend_from_slice(&Message::Refusal(Refusal::new(ty, RequestId(0), reason, "")).body_to_vec());
                h.datagram(from, &bytes);
            }
            _ => {
                // A DC message in the clear, by datagram: never to be believed.
                let Some(msg) = self.dc_message(h, input) else { return };
                h.pending_slots.clear();
                h.datagram(DC4, &plain(Sender::Dc, &msg));
            }
        }
    }

    fn answer(&mut self, _h: &mut Harness<Node>, _name: &Fqdn, input: &mut Input<'_>) -> DnsAnswer {
        match input.u8() % 6 {
            0 | 1 => DnsAnswer::Dc(self.dc.clone()),
            2 => DnsAnswer::Dc(DcLocation { name: self.dc.name.clone(), addrs: vec![DC6] }),
            3 => DnsAnswer::Dc(DcLocation { name: self.dc.name.clone(), addrs: Vec::new() }),
            4 => DnsAnswer::NotNtm,
            _ => DnsAnswer::Failed,
        }
    }

    fn api(&mut self, h: &mut Harness<Node>, input: &mut Input<'_>) {
        let now = h.now;
        match input.u8() % 5 {
            0 => {
                let Some(n) = input.pick(&RESOLVE_NAMES) else { return };
                h.engine.resolve(now, name(n));
            }
            1 => {
                let Some(set) = input.pick(&ADDR_SETS) else { return };
                h.engine.handle_network_change(now, set.to_vec());
            }
            2 => {
                let b = input.u8();
                let v4 = b & 1 == 0;
                let src = if b & 2 == 0 { addr(VADDRS, v4) } else { addr(PEER2_V, v4) };
                let dst = if b & 4 == 0 { addr(PEER_V, v4) } else { addr(PEER2_V, v4) };
                let _ = h.engine.send_ip(now, &ip_packet(src, dst, input.bytes()));
            }
            3 => h.engine.start(now),
            _ => {
                let mut buf = input.bytes().to_vec();
                if let Ok(to) = h.engine.seal_ip(now, &mut buf) {
                    let t = Transmit { via: crate::engine::Via::Udp, dst: to.to, payload: buf };
                    super::harness::check_transmit(&t);
                }
            }
        }
        h.finish_op();
    }

    fn learn(&mut self, h: &mut Harness<Node>, t: &Transmit, opened: Option<&(Header, Message)>) {
        // The node's own Tunnel Request: unwrap K_mncn as the peer would.
        let Some((header, Message::TunnelRequest(tr))) = opened else { return };
        let Some(ctx) = self.tunnel(header.key_id) else { return };
        let k = match (&tr.wrapped, &ctx.k_tmp) {
            (WrappedKey::Tmp(w), Some(t)) => {
                unwrap_with_tmp(&KTmp::from_bytes(*t), ctx.session, &tr.initiator, &ctx.peer, w).ok()
            }
            (WrappedKey::Public(w), _) => {
                unwrap_from_peer(&self.keys.peer, &ctx.peer, &self.keys.my_attested, ctx.session, w).ok()
            }
            _ => None,
        };
        if let Some(k) = k {
            h.add_slot(Slot::new(Kind::MnCn, *k.expose_secret(), KeyId(ctx.session.0), Sender::Responder, t.dst));
        }
    }
}

/// Builds the node from the configuration byte and brings it to "registered".
fn setup(c: u8) -> Option<(Harness<Node>, NodeScript)> {
    let keys = keys()?;
    let keepalive = match c & 3 {
        1 => KeepaliveMethod::Ns,
        2 => KeepaliveMethod::Push(Bytes::new(b"fuzz push token".to_vec()).ok()?),
        _ => KeepaliveMethod::Udp,
    };
    let pk = c & 4 != 0;
    let local = if c & 0x40 != 0 { vec![HOME4] } else { vec![HOME4, LOCAL6] };
    let credential = Credential::Password {
        email: Text::new("owner@mn.zone-a.example").ok()?,
        password: Password::new(b"correct horse").ok()?,
    };
    let dc = DcLocation { name: name("dc.zone-a.example"), addrs: vec![DC4, DC6] };
    let mut cfg = NodeConfig::new(vec![AS], name("as.example"), credential, local);
    cfg.keepalive = keepalive.clone();
    cfg.key_pair = pk.then(|| keys.mine.clone());
    cfg.strict_public_key_mode = pk && c & 8 != 0;
    cfg.route_optimization = c & 0x10 == 0;
    cfg.udp_keepalive_interval = (c & 0x20 != 0).then(|| Duration::from_secs(5));
    cfg.static_dc = (c & 0x80 != 0).then(|| dc.clone());
    cfg.max_tunnels = 4;
    cfg.max_pending_resolves = 4;
    let node = Node::new(cfg, FuzzRng::boxed(u64::from(c))).ok()?;
    let addrs = vec![AS, DC4, DC6, RS4, RS6, NS, PEER4, PEER6, OTHER];
    let as_identity = Some(PeerIdentity { name: name("as.example"), role: Role::As, public_key: None });
    let mut h = Harness::new(node, T0, addrs, vec![None, as_identity.clone()]);
    let mut s = NodeScript { keys, dc: dc.clone(), tunnels: Vec::new() };

    h.engine.start(h.now);
    h.finish_op();
    let login = take_messages(&mut h, &mut s).into_iter().find_map(|(_, m)| match m {
        Message::LoginRequest(r) => Some(r.request_id),
        _ => None,
    })?;
    let response = Message::LoginResponse(LoginResponse {
        request_id: login,
        fqdn: name(ME),
        key_id: KeyId(DC_KEY_ID),
        k_ntmdc: KeyGrant { key: Key::from_bytes(DC_KEY), lifetime: Lifetime(43_200) },
        attestation: pk.then(|| keys.my_attestation.clone()),
        as_public_key: pk.then_some(keys.as_public),
    });
    h.frame(StreamKind::Tls, AS, as_identity.as_ref(), &plain(Sender::As, &response));
    h.add_slot(Slot::new(Kind::NtmDc, DC_KEY, KeyId(DC_KEY_ID), Sender::Dc, DC4));
    if let Some(q) = h.queries.last().cloned() {
        h.dns(q.id, DnsAnswer::Dc(dc));
    }
    let ns = matches!(keepalive, KeepaliveMethod::Ns).then_some(NS_KEYS[0]);
    for (t, m) in take_messages(&mut h, &mut s) {
        let Message::RegistrationRequest(r) = m else { continue };
        let v4 = t.dst.is_ipv4();
        let msg = Message::RegistrationResponse(RegistrationResponse {
            request_id: r.request_id,
            virtual_addrs: VADDRS,
            observed: if v4 { NAT4 } else { LOCAL6 },
            behind_nat: v4,
            keepalive_interval: 20,
            ns: ns.map(|(key, id)| NsGrant {
                ns_fqdn: name("ns1.example"),
                ns_addr: NS,
                key_id: KeyId(id),
                k_ntmns: KeyGrant { key: Key::from_bytes(key), lifetime: Lifetime(86_400) },
            }),
        });
        let bytes = h.slots.first_mut()?.seal(Sender::Dc, &msg)?;
        h.datagram(t.dst, &bytes);
    }
    if let Some((key, id)) = ns {
        h.add_slot(Slot::new(Kind::NtmNs, key, KeyId(id), Sender::Ns, NS).over_tcp());
        for (_, m) in take_messages(&mut h, &mut s) {
            let Message::NotificationRegistration(r) = m else { continue };
            let ack = Message::NotificationAck(NotificationAck { request_id: r.request_id, keepalive_interval: 3600 });
            let bytes = h.slots.last_mut()?.seal(Sender::Ns, &ack)?;
            h.frame(StreamKind::Tcp, NS, None, &bytes);
        }
    }
    assert!(h.engine.is_registered(), "the node's setup did not register it");
    h.fix_slots();
    Some((h, s))
}

/// The messages the engine sent so far that the harness can read.
pub(super) fn take_messages<E: Subject, S: Script<E>>(h: &mut Harness<E>, s: &mut S) -> Vec<(Transmit, Message)> {
    let sent = h.sent.clone();
    learn(h, s);
    sent.into_iter()
        .filter_map(|t| {
            let m = match crate::wire::Envelope::new_checked(&t.payload[..]) {
                Ok(env) if env.sealed() => {
                    let id = env.key_id();
                    h.slots.iter().rev().filter(|s| s.id == id).find_map(|s| s.open(&t.payload))
                }
                _ => crate::crypto::parse_plain(&t.payload).ok(),
            };
            m.map(|(_, m)| (t, m))
        })
        .collect()
}

/// Runs one input; returns the harness for the tests of the seeds.
pub(super) fn run_node(data: &[u8]) -> Option<Harness<Node>> {
    let mut input = Input::new(data);
    let (mut h, mut s) = setup(input.u8())?;
    run(&mut h, &mut s, &mut input);
    Some(h)
}
