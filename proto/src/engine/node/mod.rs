//! The node engine: everything an NTM node (the agent `ntmd`) does, without I/O.
//!
//! Sequences (spec section 4): login at the AS over TLS (`login.rs`), finding the DC from
//! the NS record of the node's own name, registration and keepalive by UDP or through an
//! NS (`link.rs`), name resolution by Direction Request, Route Directions from the DC,
//! Tunnel Request/Response directly or through an RS, route optimization, the data plane
//! and handover (`tunnel.rs`).
//!
//! Inputs: the [`Engine`] calls, plus [`Node::start`], [`Node::resolve`] (the DNS hook),
//! [`Node::handle_network_change`] (mobility), [`Node::send_ip`] / [`Node::seal_ip`] (a
//! packet from the TUN device). Outputs: [`Engine::poll_transmit`], [`Engine::poll_dns`],
//! [`Engine::poll_timeout`] and [`Node::poll_event`]. Decrypted packets for the TUN device
//! come back from [`Engine::handle_datagram`] as [`Received::Ip`].
//!
//! The data path also takes batches: [`Node::handle_datagrams_on`] and
//! [`Node::seal_ip_batch_within`] give, item by item, what the one-at-a-time calls give in
//! the same order, but run the AES-CCM of consecutive packets of one tunnel side by side
//! (`ntm-aead`'s multi-buffer CCM, about twice the speed per packet of one at a time).

mod link;
mod login;
mod resend;
mod spray;
mod table;
mod timer;
mod tunnel;

use super::{
    Backoff, ConfigError, DcLocation, DnsAnswer, DnsQuery, DropCounters, DropReason, Engine, IdSource, Local,
    PeerIdentity, Received, Rng, StreamKind, Transmit, Via,
};
use crate::crypto::pk::{Attestation, KeyPair, PublicKey};
use crate::crypto::Channel;
use crate::keys::NtmDc;
use crate::time::{Duration, Instant};
use crate::wire::login::Credential;
use crate::wire::refusal::Reason;
use crate::wire::registration::{KeepaliveMethod, NatMapping};
use crate::wire::{Envelope, Fqdn, Message, MsgType, SessionId, VirtualAddrs};
use core::net::{IpAddr, SocketAddr};
use std::collections::VecDeque;

use link::{Link, NsLink};
use login::Login;
pub use spray::{TraversalStats, LOCALS_MAX};
use table::{Timing, Tunnels};
pub use tunnel::{Dest, SendError, TunnelInfo};
use tunnel::{Direction, PendingResolve};

/// How a node is set up. [`NodeConfig::new`] fills in the defaults.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The AS's addresses, of one or both families (resolved from a name by the driver,
    /// see [`Node::set_account_servers`]). Each login attempt goes to one of a family the
    /// node has an address of; an attempt that fails moves on to the next at once, and only
    /// a round in which every one failed waits for the backoff (see `login.rs`).
    pub account_servers: Vec<SocketAddr>,
    /// The AS's name, which its TLS certificate must carry.
    pub account_server_name: Fqdn,
    /// What the node logs in with; kept for re-login.
    pub credential: Credential,
    /// The node's key pair, for public-key mode (K_mncn wrapped for the peer).
    pub key_pair: Option<KeyPair>,
    /// Refuse tunnels whose K_mncn would be wrapped with K_tmp (which the DC knows):
    /// only peers with attested public keys. Stops a DC from downgrading public-key mode.
    pub strict_public_key_mode: bool,
    /// How the DC reaches the node later.
    pub keepalive: KeepaliveMethod,
    /// Overrides the DC's UDP keepalive interval.
    pub udp_keepalive_interval: Option<Duration>,
    /// The node's own addresses with its tunnel port, one or more per family it has.
    pub local_addrs: Vec<SocketAddr>,
    /// The DC to use without a DNS lookup (small static sites).
    pub static_dc: Option<DcLocation>,
    /// Log in again this long before K_ntmdc expires.
    pub relogin_before_expiry: Duration,
    /// Retransmission policy for requests to servers.
    pub backoff: Backoff,
    /// Retransmission policy for tunnel set-up (hole punches, Tunnel Requests): faster
    /// and longer than `backoff`, because these cross up to four lossy links and an
    /// application is waiting for its DNS answer.
    pub tunnel_backoff: Backoff,
    /// Most tunnels at once (further Route Directions are refused).
    pub max_tunnels: usize,
    /// The LAN prefixes this node routes for (subnet routes), announced at registration:
    /// packets from a tunnel may be for these as well as for the node's virtual address.
    pub announced: Vec<crate::wire::Prefix>,
    /// The prefixes the driver routes into its TUN device (the box's `virtual_routes`). A
    /// Route Direction whose peer virtual address lies outside them is refused: the
    /// kernel would send that address's packets another way, in clear. A family without
    /// a prefix here is not checked (empty: none is).
    pub virtual_routes: Vec<crate::wire::Prefix>,
    /// A peer's announced prefix is accepted (sealed to, shown for routing) only inside
    /// one of these, and only if it overlaps neither `virtual_routes` nor `announced`.
    /// `None`: any prefix outside those two.
    pub accept_peer_prefixes: Option<Vec<crate::wire::Prefix>>,
    /// Most DNS-hook queries waiting at once.
    pub max_pending_resolves: usize,
    /// How long a DNS-hook query may wait for its tunnel.
    pub resolve_timeout: Duration,
    /// Try a direct path once a relayed tunnel runs (route optimization).
    pub route_optimization: bool,
    /// Send a keepalive on a tunnel after this much silence while behind NAT, so the
    /// NAT keeps the tunnel's mapping.
    pub tunnel_keepalive: Duration,
    /// Close a tunnel after this long without traffic.
    pub tunnel_idle_timeout: Duration,
    /// Lifetime of K_mncn; the tunnel is renegotiated before it ends.
    pub tunnel_key_lifetime: Duration,
}

impl NodeConfig {
    /// Checks the values the node cannot work with.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.local_addrs.is_empty() {
            return Err(ConfigError::new("local_addrs", "the node needs at least one address"));
        }
        if self.account_servers.iter().any(|a| a.port() == 0) {
            return Err(ConfigError::new("account_servers", "port 0"));
        }
        if self.max_tunnels == 0 || self.max_pending_resolves == 0 {
            return Err(ConfigError::new("max_tunnels", "limits must be at least 1"));
        }
        if self.tunnel_key_lifetime < Duration::from_secs(60) {
            return Err(ConfigError::new("tunnel_key_lifetime", "at least 60 seconds"));
        }
        if self.strict_public_key_mode && self.key_pair.is_none() {
            return Err(ConfigError::new("strict_public_key_mode", "needs a key pair"));
        }
        Ok(())
    }

    /// A configuration with defaults for everything but the essentials.
    pub fn new(
        account_servers: Vec<SocketAddr>,
        account_server_name: Fqdn,
        credential: Credential,
        local_addrs: Vec<SocketAddr>,
    ) -> Self {
        NodeConfig {
            account_servers,
            account_server_name,
            credential,
            key_pair: None,
            strict_public_key_mode: false,
            keepalive: KeepaliveMethod::Udp,
            udp_keepalive_interval: None,
            local_addrs,
            static_dc: None,
            relogin_before_expiry: Duration::from_secs(300),
            backoff: Backoff::DEFAULT,
            tunnel_backoff: Backoff { initial: Duration::from_millis(300), max: Duration::from_secs(2), attempts: 16 },
            max_tunnels: 64,
            announced: Vec::new(),
            virtual_routes: Vec::new(),
            accept_peer_prefixes: None,
            max_pending_resolves: 64,
            resolve_timeout: Duration::from_secs(10),
            route_optimization: true,
            tunnel_keepalive: Duration::from_secs(15),
            tunnel_idle_timeout: Duration::from_secs(600),
            tunnel_key_lifetime: Duration::from_secs(24 * 3600),
        }
    }
}

/// Names one DNS-hook query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResolveId(pub u64);

/// How a tunnel's packets travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathKind {
    /// Straight to the peer.
    Direct,
    /// Through an RS.
    Relay,
}

/// Why a DNS-hook query got no virtual address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResolveError {
    /// Not an NTMobile node: answer it as ordinary DNS.
    NotNtm,
    /// The DC refused (no route, peer unreachable, ...).
    Refused(Reason),
    /// No tunnel in time.
    Timeout,
    /// Too many queries waiting.
    Overloaded,
}

/// What happened, for the driver (logs, status, the DNS stub).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeEvent {
    /// Logged in at the AS; K_ntmdc received.
    LoggedIn {
        /// The node's name.
        fqdn: Fqdn,
    },
    /// The AS refused the credential itself (BadCredential, Unauthorized): a retry
    /// cannot change that, so the node stops trying until [`Node::start`] or
    /// [`Node::set_credential`].
    LoginFailed {
        /// The AS's reason.
        reason: Reason,
    },
    /// The AS refused the login for a reason that can change (a disabled account, an
    /// overloaded AS, an unreachable DC): the node tries again after a backoff.
    LoginRefused {
        /// The AS's reason.
        reason: Reason,
    },
    /// Registered with the DC in one address family.
    Registered {
        /// The node's virtual addresses.
        virtual_addrs: VirtualAddrs,
        /// The address the DC saw.
        observed: SocketAddr,
        /// The DC's NAT verdict.
        behind_nat: bool,
    },
    /// The DC refused a Registration Request (e.g. `Conflict`: an announced prefix
    /// overlaps another node's). The node tries again after its backoff.
    RegistrationRefused {
        /// The DC's reason.
        reason: Reason,
        /// The DC's explanation (names the prefix and the other node for a conflict).
        detail: String,
    },
    /// The NS accepted the node's Notification Registration.
    NotificationsReady,
    /// The DC is a gateway to ordinary hosts (a Gateway Offer): the DNS hook should ask
    /// the DC ([`Node::resolve`]) for these names too, not only for NTM names.
    GatewayNames {
        /// Every ordinary name.
        all: bool,
        /// These names and the names below them.
        names: Vec<Fqdn>,
    },
    /// Every AS address of a login round failed (no connection, or no answer): the
    /// driver may resolve the AS's name again and give the result to
    /// [`Node::set_account_servers`]. The node tries again after its backoff.
    AccountServerUnreachable,
    /// A DNS-hook query is answered.
    Resolved {
        /// The query.
        id: ResolveId,
        /// The name asked for.
        name: Fqdn,
        /// The peer's virtual addresses.
        virtual_addrs: VirtualAddrs,
    },
    /// A DNS-hook query failed.
    ResolveFailed {
        /// The query.
        id: ResolveId,
        /// The name asked for.
        name: Fqdn,
        /// Why.
        error: ResolveError,
    },
    /// A tunnel is up.
    TunnelUp {
        /// Its session.
        session: SessionId,
        /// The peer.
        peer: Fqdn,
        /// Direct or relayed.
        path: PathKind,
    },
    /// A tunnel moved to another path (route optimization).
    PathChanged {
        /// Its session.
        session: SessionId,
        /// The peer.
        peer: Fqdn,
        /// The new path.
        path: PathKind,
    },
    /// A tunnel ended (idle, superseded after handover, or its key expired).
    TunnelDown {
        /// Its session.
        session: SessionId,
        /// The peer.
        peer: Fqdn,
    },
    /// The node gave up on its TCP connection to the NS at `addr` (the NS stopped
    /// answering on it): the driver closes that connection now. The node's next frame for
    /// the NS then opens a new one, from the address the kernel picks at that time; the
    /// old one may be bound to an address the node no longer has, and a kernel keeps such
    /// a connection open for as long as its retransmissions go on.
    NsConnectionLost {
        /// The NS address the connection went to.
        addr: SocketAddr,
    },
    /// The node is done with these extra sockets ([`crate::engine::Local`]): the driver
    /// closes them. Nothing more is sent from them, and what still arrives on them is
    /// dropped.
    LocalsReleased {
        /// The sockets.
        locals: Vec<Local>,
    },
}

/// What the node holds after login.
struct DcSession {
    fqdn: Fqdn,
    dc: DcLocation,
    channel: Channel<NtmDc>,
    attestation: Option<Attestation>,
    as_key: Option<PublicKey>,
}

/// The node engine. See the module documentation for the order of calls.
pub struct Node {
    cfg: NodeConfig,
    rng: Rng,
    ids: IdSource,
    login: Login,
    /// The AS address the current login attempt went to (streams from others are not
    /// the AS's), and how many attempts of this round failed so far.
    as_current: Option<SocketAddr>,
    as_tried: usize,
    session: Option<DcSession>,
    links: Vec<Link>,
    virtual_addrs: Option<VirtualAddrs>,
    ns: Option<NsLink>,
    tunnels: Tunnels,
    /// Sessions whose tunnel ended, and when: a late Route Direction for one of them must
    /// not take its K_tun into use a second time (see `tunnel::ENDED_MEMORY`).
    ended: VecDeque<(SessionId, Instant)>,
    directions: Vec<Direction>,
    resolves: Vec<PendingResolve>,
    next_resolve: u64,
    next_query: u64,
    last_relogin_hint: Option<Instant>,
    /// When the NS last said it does not know our K_ntmns (rate limit of that hint).
    last_ns_hint: Option<Instant>,
    out: VecDeque<Transmit>,
    events: VecDeque<NodeEvent>,
    queries: VecDeque<DnsQuery>,
    drops: DropCounters,
    /// The last sealed data packets, for a peer that moves.
    recent: resend::Recent,
    /// The extra sockets: the ones kept for direct paths found through a NAT that maps
    /// per destination, and the search that opens them.
    locals: spray::Locals,
    /// Data packets sent again after a peer moved.
    resent: u64,
    /// Another login for our name took over our registration (until we register again).
    displaced: bool,
    /// Refusals of a Route Direction already logged at warn (see `tunnel::REFUSALS_KEPT`).
    refusals_warned: VecDeque<String>,
}

impl core::fmt::Debug for Node {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Node")
            .field("fqdn", &self.session.as_ref().map(|s| &s.fqdn))
            .field("virtual_addrs", &self.virtual_addrs)
            .field("tunnels", &self.tunnels.len())
            .finish_non_exhaustive()
    }
}

/// Most events buffered for the driver; older ones are discarded first. A driver that
/// never polls events must not make the node grow.
const EVENTS_MAX: usize = 256;
/// Most messages buffered for sending.
const OUT_MAX: usize = 1024;

impl Node {
    /// A node that has not started yet; fails on a configuration it cannot work with.
    pub fn new(cfg: NodeConfig, mut rng: Rng) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let ids = IdSource::new(&mut *rng);
        let timing = Timing {
            keepalive: cfg.tunnel_keepalive,
            idle: cfg.tunnel_idle_timeout,
            key_lifetime: cfg.tunnel_key_lifetime,
        };
        Ok(Node {
            cfg,
            rng,
            ids,
            login: Login::Idle,
            as_current: None,
            as_tried: 0,
            session: None,
            links: Vec::new(),
            virtual_addrs: None,
            ns: None,
            tunnels: Tunnels::new(timing),
            ended: VecDeque::new(),
            directions: Vec::new(),
            resolves: Vec::new(),
            next_resolve: 1,
            next_query: 1,
            last_relogin_hint: None,
            last_ns_hint: None,
            out: VecDeque::new(),
            events: VecDeque::new(),
            queries: VecDeque::new(),
            drops: DropCounters::default(),
            recent: resend::Recent::default(),
            locals: spray::Locals::default(),
            resent: 0,
            displaced: false,
            refusals_warned: VecDeque::new(),
        })
    }

    /// Starts (or restarts after a refused login): log in now.
    pub fn start(&mut self, now: Instant) {
        self.login = Login::Start { at: now, failures: 0 };
        self.drive_login(now);
    }

    /// Replaces the credential for the next login (a fresh ID token, a changed password).
    /// A login the AS refused for its credential starts again with the new one.
    pub fn set_credential(&mut self, credential: Credential) {
        self.cfg.credential = credential;
        if matches!(self.login, Login::Failed) {
            // Due at once: the driver's next timer call sends the Login Request.
            self.login = Login::Start { at: Instant::ZERO, failures: 0 };
        }
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<NodeEvent> {
        self.events.pop_front()
    }

    /// The node's name, once logged in.
    pub fn fqdn(&self) -> Option<&Fqdn> {
        self.session.as_ref().map(|s| &s.fqdn)
    }

    /// The node's virtual addresses, once registered.
    pub fn virtual_addrs(&self) -> Option<VirtualAddrs> {
        self.virtual_addrs
    }

    /// The AS's attestation of our public key (public-key mode), once logged in.
    pub fn attestation(&self) -> Option<&Attestation> {
        self.session.as_ref().and_then(|s| s.attestation.as_ref())
    }

    /// True once at least one family is registered with the DC.
    pub fn is_registered(&self) -> bool {
        self.links.iter().any(Link::is_registered)
    }

    /// True if the DC told us that another login for our name took over our registration
    /// (a copy of our credential in use elsewhere?), until we are registered again.
    pub fn is_displaced(&self) -> bool {
        self.displaced
    }

    /// True if the NS accepted our Notification Registration.
    pub fn notifications_ready(&self) -> bool {
        self.ns.as_ref().is_some_and(NsLink::is_active)
    }

    /// The keepalive interval toward the NS in use, the NS's own (the longest we use),
    /// and whether learning settled (protocol.md, "NS keepalive interval"); None before
    /// the NS first acknowledged us.
    pub fn ns_keepalive(&self) -> Option<(Duration, Duration, bool)> {
        let l = self.ns.as_ref()?.learning?;
        let (current, max) = l.interval();
        Some((current, max, l.settled()))
    }

    /// The node's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    /// Data packets sent a second time because their peer had moved (see `resend.rs`).
    pub fn resent_packets(&self) -> u64 {
        self.resent
    }

    /// How our NAT maps in IPv4, as the DC's mapping test found it (status).
    pub fn nat_mapping(&self) -> NatMapping {
        self.links.iter().find(|l| l.dc_addr.is_ipv4()).map_or(NatMapping::Untested, |l| l.mapping)
    }

    /// The searches for a direct path through a NAT that maps per destination (status).
    pub fn traversal_stats(&self) -> TraversalStats {
        self.locals.stats()
    }

    /// Keys the node holds now, as (kind, fingerprint): for status output and for tests of
    /// key custody. Fingerprints reveal nothing about the keys.
    pub fn held_keys(&self) -> Vec<(&'static str, u64)> {
        let mut v = Vec::new();
        if let Some(s) = &self.session {
            v.push(("K_ntmdc", s.channel.key().fingerprint()));
        }
        if let Some(ns) = &self.ns {
            v.push(("K_ntmns", ns.key_fingerprint()));
        }
        for (_, t) in self.tunnels.iter() {
            t.held_keys(&mut v);
        }
        v
    }

    fn emit(&mut self, ev: NodeEvent) {
        if self.events.len() >= EVENTS_MAX {
            self.events.pop_front();
        }
        self.events.push_back(ev);
    }

    /// Queues a message. A datagram to a peer that is reached through one of the extra
    /// sockets leaves from that socket.
    fn transmit(&mut self, via: Via, dst: SocketAddr, payload: Vec<u8>) {
        if self.out.len() >= OUT_MAX {
            self.drops.count(DropReason::Limit);
            return;
        }
        let via = match (via, self.locals.local_for(dst)) {
            (Via::Udp, local) if local != Local::MAIN => Via::UdpFrom(local),
            (via, _) => via,
        };
        self.out.push_back(Transmit { via, dst, payload });
    }

    fn query(&mut self, name: Fqdn) -> u64 {
        let id = self.next_query;
        self.next_query += 1;
        self.queries.push_back(DnsQuery { id, name, addresses: false });
        id
    }

    /// Seals `msg` for the DC and sends it to the DC address of `family`'s link (or any
    /// link's if that family has none).
    fn send_to_dc(&mut self, now: Instant, dst: SocketAddr, msg: &Message) {
        let Some(s) = self.session.as_mut() else { return };
        match s.channel.seal(now, msg) {
            Ok(bytes) => self.transmit(Via::Udp, dst, bytes),
            Err(e) => log::warn!("cannot seal {:?} for the DC: {e}", msg.msg_type()),
        }
    }

    /// The DC address to use when no particular link is implied: the first registered
    /// link's, else the first link's.
    /// The addresses of the servers the node talks to: the AS, its DCs (static or
    /// registered with), its NS and the RSs of its tunnels. A driver must keep them out
    /// of the TUN device (see `accept_peer_prefixes`).
    pub fn server_addrs(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self.cfg.account_servers.iter().map(|a| a.ip()).collect();
        v.extend(self.cfg.static_dc.iter().flat_map(|d| d.addrs.iter().map(|a| a.ip())));
        v.extend(self.links.iter().map(|l| l.dc_addr.ip()));
        v.extend(self.ns.iter().flat_map(|ns| ns.addrs().iter().map(|a| a.ip())));
        v.extend(self.tunnels.iter().filter_map(|(_, t)| t.relay()).map(|a| a.ip()));
        v.sort();
        v.dedup();
        v
    }

    fn any_dc_addr(&self) -> Option<SocketAddr> {
        self.links.iter().find(|l| l.is_registered()).or(self.links.first()).map(|l| l.dc_addr)
    }

    /// Does the node have a registered link in `addr`'s family?
    fn has_family(&self, addr: &SocketAddr) -> bool {
        self.links.iter().any(|l| l.is_registered() && l.dc_addr.is_ipv4() == addr.is_ipv4())
    }

    /// A message sealed with K_ntmdc arrived (over UDP, or inside an NS notification).
    fn handle_dc_message(&mut self, now: Instant, from: Option<SocketAddr>, buf: &[u8]) -> Received {
        let Some(s) = self.session.as_mut() else { return self.drops.count(DropReason::UnknownKey) };
        let (_, msg) = match s.channel.open(now, buf) {
            Ok(m) => m,
            Err(e) => return self.drops.count(DropReason::from(e)),
        };
        match msg {
            Message::RegistrationResponse(r) => self.handle_registration_response(now, from, r),
            Message::KeepaliveAck(a) => self.handle_keepalive_ack(now, a),
            Message::MappingProbeAck(a) => self.handle_mapping_probe_ack(a),
            Message::MappingOffer(o) => self.handle_mapping_offer(now, from, o),
            Message::GatewayOffer(o) => {
                // The DC's word on which ordinary names its RSs carry: the driver's DNS
                // hook asks for them as for NTM names.
                let names = o.names.iter().cloned().collect();
                self.emit(NodeEvent::GatewayNames { all: o.all, names });
                Received::Handled
            }
            Message::RouteDirection(rd) => self.handle_route_direction(now, rd),
            Message::Refusal(r) => self.handle_dc_refusal(now, r),
            _ => self.drops.count(DropReason::Unexpected),
        }
    }
}

impl Node {
    /// A datagram that arrived on the socket `local` ([`Engine::handle_datagram`] is this
    /// for [`Local::MAIN`]). An extra socket carries only tunnel traffic: the Path Probes
    /// of a search for a direct path, and the tunnels that found one through it.
    pub fn handle_datagram_on(&mut self, now: Instant, local: Local, from: SocketAddr, buf: &mut [u8]) -> Received {
        let (ty, sealed, key_id) = match Envelope::new_checked(&buf[..]) {
            Ok(e) => (e.msg_type(), e.sealed(), e.key_id()),
            Err(e) => return self.drops.count(DropReason::from(e)),
        };
        if local != Local::MAIN {
            if !self.locals.is_open(local) {
                return self.drops.count(DropReason::Stale);
            }
            return match ty {
                MsgType::Data => self.handle_data(now, local, from, buf),
                MsgType::PathProbe | MsgType::PathProbeAck => self.handle_mncn_message(now, local, from, buf),
                _ => self.drops.count(DropReason::Unexpected),
            };
        }
        let from_dc = self.session.as_ref().is_some_and(|s| s.channel.id() == key_id);
        match ty {
            MsgType::Data => self.handle_data(now, Local::MAIN, from, buf),
            MsgType::TunnelRequest | MsgType::HolePunchAck => self.handle_tun_message(now, from, buf),
            MsgType::TunnelResponse | MsgType::PathProbe | MsgType::PathProbeAck => {
                self.handle_mncn_message(now, Local::MAIN, from, buf)
            }
            MsgType::Refusal if !sealed => self.handle_plain_refusal(now, from, buf),
            MsgType::RegistrationResponse
            | MsgType::KeepaliveAck
            | MsgType::MappingOffer
            | MsgType::GatewayOffer
            | MsgType::MappingProbeAck
            | MsgType::RouteDirection
            | MsgType::Refusal
                if from_dc =>
            {
                self.handle_dc_message(now, Some(from), buf)
            }
            MsgType::RegistrationResponse
            | MsgType::KeepaliveAck
            | MsgType::MappingOffer
            | MsgType::GatewayOffer
            | MsgType::MappingProbeAck
            | MsgType::RouteDirection
            | MsgType::Refusal => self.drops.count(DropReason::UnknownKey),
            MsgType::Unknown(_) => self.drops.count(DropReason::Malformed),
            _ => self.drops.count(DropReason::Unexpected),
        }
    }
}

impl Node {
    /// [`Node::handle_datagram_on`] for a batch of datagrams that arrived on `local`, each
    /// with its sender: `out[i]` is what handling `datagrams[i]` after `datagrams[..i]`,
    /// one at a time, would give, with the same effects, in the same order. Consecutive
    /// data datagrams of one tunnel are opened with one multi-buffer call
    /// ([`Channel::open_many_in_place`]); anything else goes through
    /// [`Node::handle_datagram_on`] in its turn. Datagrams past the end of `out` are not
    /// touched.
    pub fn handle_datagrams_on(
        &mut self,
        now: Instant,
        local: Local,
        datagrams: &mut [(SocketAddr, &mut [u8])],
        out: &mut [Received],
    ) {
        let n = datagrams.len().min(out.len());
        let mut i = 0;
        while i < n {
            let id = datagrams.get(i).and_then(|(_, b)| self.data_batch_tunnel(local, b));
            // A run: the datagrams that go with this one (see `data_batch_tunnel` for why
            // they can all be looked at before any is handled).
            let mut end = i + 1;
            if id.is_some() {
                while end < n
                    && end - i < tunnel::DATA_RUN_MAX
                    && datagrams.get(end).and_then(|(_, b)| self.data_batch_tunnel(local, b)) == id
                {
                    end += 1;
                }
            }
            match (id, datagrams.get_mut(i..end), out.get_mut(i..end)) {
                (Some(id), Some(d), Some(o)) if end - i > 1 => self.handle_data_run(now, local, id, d, o),
                (_, Some([(from, buf), ..]), Some([o, ..])) => *o = self.handle_datagram_on(now, local, *from, buf),
                _ => {}
            }
            i = end;
        }
    }
}

impl Engine for Node {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, buf: &mut [u8]) -> Received {
        self.handle_datagram_on(now, Local::MAIN, from, buf)
    }

    fn handle_stream(
        &mut self,
        now: Instant,
        kind: StreamKind,
        from: SocketAddr,
        _peer: Option<&PeerIdentity>,
        frame: &[u8],
    ) -> Received {
        match kind {
            StreamKind::Tls if Some(from) == self.as_current => self.handle_as_frame(now, frame),
            StreamKind::Tcp if self.ns.as_ref().is_some_and(|ns| ns.addr() == from) => self.handle_ns_frame(now, frame),
            _ => self.drops.count(DropReason::Unexpected),
        }
    }

    fn handle_stream_closed(&mut self, now: Instant, kind: StreamKind, peer: SocketAddr) {
        match kind {
            StreamKind::Tls if Some(peer) == self.as_current => self.handle_as_closed(now),
            StreamKind::Tcp => {
                if let Some(ns) = self.ns.as_mut().filter(|ns| ns.addr() == peer) {
                    ns.connection_lost(now, &mut self.rng, &self.cfg.local_addrs);
                }
            }
            StreamKind::Tls => {}
        }
    }

    fn handle_dns(&mut self, now: Instant, id: u64, answer: DnsAnswer) {
        self.handle_dc_location(now, id, answer);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.drive_login(now);
        self.drive_links(now);
        self.drive_ns(now);
        self.drive_directions(now);
        self.drive_tunnels(now);
        self.drive_search(now);
        self.drive_resolves(now);
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    fn poll_dns(&mut self) -> Option<DnsQuery> {
        self.queries.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let deadlines = [
            self.login.deadline(),
            self.links.iter().filter_map(Link::deadline).min(),
            self.ns.as_ref().and_then(NsLink::deadline),
            self.tunnels.next_deadline(),
            self.locals.deadline(),
        ];
        deadlines.into_iter().flatten().min()
    }

    fn drops(&self) -> &DropCounters {
        &self.drops
    }
}

/// True if the DC says we are behind NAT in `addr`'s family (on one of `links`).
fn behind_nat(links: &[Link], addr: &SocketAddr) -> bool {
    links.iter().any(|l| l.dc_addr.is_ipv4() == addr.is_ipv4() && l.behind_nat)
}

/// The source and destination of an IP packet, if it is one.
pub(crate) fn ip_endpoints(pkt: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match pkt.first()? >> 4 {
        4 => {
            let src: [u8; 4] = pkt.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = pkt.get(16..20)?.try_into().ok()?;
            Some((IpAddr::from(src), IpAddr::from(dst)))
        }
        6 => {
            let src: [u8; 16] = pkt.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = pkt.get(24..40)?.try_into().ok()?;
            Some((IpAddr::from(src), IpAddr::from(dst)))
        }
        _ => None,
    }
}
