//! The agent's view of the kernel's addresses, routes and links, over rtnetlink (a raw
//! `NETLINK_ROUTE` socket; every message is built and parsed by `netlink-packet-route`/`-core`,
//! never by hand).
//!
//! Two sockets with different jobs:
//! - the **event socket** is non-blocking and joined to the link, IPv4/IPv6 address and IPv4/IPv6
//!   route groups. The driver registers [`Netlink::as_raw_fd`] with mio and calls
//!   [`Netlink::read_events`] when it is readable; a change of real address is what makes the
//!   node re-register (spec 4.5). Bursts (a DHCP renew removes, then adds) are smoothed by
//!   [`ChangeDebounce`] before the agent re-reads [`Netlink::addresses`].
//! - the **request socket** is blocking with a timeout, for synchronous request/acknowledge:
//!   the address dump at start-up and after a change, and the TUN configuration of spec 5
//!   (link up with its MTU, the virtual addresses, routes for the virtual prefixes). These
//!   need `CAP_NET_ADMIN`, so the driver makes them before it drops privileges; reading events
//!   needs none.
//!
//! Only the kernel (port id 0) is believed: a datagram from another process's netlink socket is
//! dropped, so a local user cannot fake an address change. Messages that do not decode, or that
//! the agent has no use for, are ignored and counted ([`Netlink::undecodable`]); they never end
//! the daemon.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR,
    NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteMetric, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use nix::errno::Errno;
use nix::libc;
use nix::sys::socket::{
    bind, recvfrom, sendto, setsockopt, socket, sockopt, AddressFamily as SockFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};
use nix::sys::time::TimeVal;

/// Multicast groups of the event socket: links, IPv4/IPv6 addresses and routes.
const EVENT_GROUPS: u32 = (libc::RTMGRP_LINK
    | libc::RTMGRP_IPV4_IFADDR
    | libc::RTMGRP_IPV4_ROUTE
    | libc::RTMGRP_IPV6_IFADDR
    | libc::RTMGRP_IPV6_ROUTE) as u32;
/// One datagram; the kernel sizes dump datagrams to at most 32 KiB, events to a page.
const RECV_BUF_LEN: usize = 64 * 1024;
/// Kernel receive buffer of the event socket: room for the burst of a busy interface flap
/// between two turns of the loop. An overrun is still survivable ([`NetEvent::Lost`]).
const EVENT_SOCKET_RCVBUF: usize = 1 << 20;
/// How long a request waits for the kernel: it answers at once, so this only bounds a bug.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// A dump that the kernel marks interrupted (the table changed meanwhile) is retried this often.
const DUMP_ATTEMPTS: usize = 5;
/// The kernel's port id: the only sender believed.
const KERNEL_PORT: u32 = 0;

/// Scope of an address, as the kernel reports it (`RT_SCOPE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AddrScope {
    #[default]
    Universe,
    Site,
    Link,
    Host,
    Nowhere,
    Unknown(u8),
}

impl From<AddressScope> for AddrScope {
    fn from(s: AddressScope) -> Self {
        match s {
            AddressScope::Universe => Self::Universe,
            AddressScope::Site => Self::Site,
            AddressScope::Link => Self::Link,
            AddressScope::Host => Self::Host,
            AddressScope::Nowhere => Self::Nowhere,
            other => Self::Unknown(u8::from(other)),
        }
    }
}

/// The address flags that decide whether an address may be reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AddrFlags {
    /// Duplicate address detection still runs (IPv6): the address cannot be used yet.
    pub tentative: bool,
    /// Preferred lifetime over: kept for existing flows, not for new ones.
    pub deprecated: bool,
    /// Duplicate address detection failed: the address is never usable.
    pub dad_failed: bool,
}

impl AddrFlags {
    fn from_bits(flags: AddressFlags) -> Self {
        Self {
            tentative: flags.contains(AddressFlags::Tentative),
            deprecated: flags.contains(AddressFlags::Deprecated),
            dad_failed: flags.contains(AddressFlags::Dadfailed),
        }
    }
}

/// One address of one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfAddr {
    pub ifindex: u32,
    /// Empty if the interface's name is not known (an event racing the link's creation).
    pub ifname: String,
    pub addr: IpAddr,
    pub prefix_len: u8,
    pub scope: AddrScope,
    pub flags: AddrFlags,
}

/// What changed, from the event socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetEvent {
    /// An address appeared, or its flags changed (the kernel reports the end of DAD or the
    /// start of deprecation as a new RTM_NEWADDR for the same address).
    AddressAdded(IfAddr),
    AddressRemoved(IfAddr),
    /// Some route was added or removed; at most one per [`Netlink::read_events`] call.
    RouteChanged,
    /// A link appeared, changed or went away (`up: false`). Up means administratively up
    /// and running (`IFF_UP` and `IFF_RUNNING`).
    LinkChanged {
        ifindex: u32,
        up: bool,
    },
    /// The kernel dropped events (receive buffer overrun, `ENOBUFS`): the agent must re-read
    /// the state with [`Netlink::addresses`] as if anything had changed.
    Lost,
}

/// The rtnetlink driver: an event socket for mio and a request socket for configuration.
pub struct Netlink {
    events: OwnedFd,
    requests: OwnedFd,
    seq: u32,
    /// ifindex -> name, from the link dump at `open` and kept current by link events, because
    /// IPv6 address messages carry no interface name.
    names: HashMap<u32, String>,
    buf: Vec<u8>,
    undecodable: u64,
}

impl fmt::Debug for Netlink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netlink")
            .field("events", &self.events)
            .field("requests", &self.requests)
            .field("seq", &self.seq)
            .field("links", &self.names.len())
            .field("undecodable", &self.undecodable)
            .finish()
    }
}

impl Netlink {
    /// Opens both sockets, joins the event socket to its groups, and reads the link names.
    pub fn open() -> io::Result<Self> {
        let events = socket(
            SockFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )?;
        setsockopt(&events, sockopt::RcvBuf, &EVENT_SOCKET_RCVBUF)?;
        bind(events.as_raw_fd(), &NetlinkAddr::new(0, EVENT_GROUPS))?;

        let requests = socket(SockFamily::Netlink, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkRoute)?;
        let timeout = TimeVal::new(REQUEST_TIMEOUT.as_secs() as _, 0);
        setsockopt(&requests, sockopt::ReceiveTimeout, &timeout)?;
        bind(requests.as_raw_fd(), &NetlinkAddr::new(0, 0))?;

        let mut nl =
            Self { events, requests, seq: 0, names: HashMap::new(), buf: vec![0; RECV_BUF_LEN], undecodable: 0 };
        // The event socket is bound first, so a link created after this dump is seen as an event.
        nl.refresh_names()?;
        Ok(nl)
    }

    /// The event socket, to register with mio (`SourceFd`) for readability.
    pub fn as_raw_fd(&self) -> RawFd {
        self.events.as_raw_fd()
    }

    /// Messages dropped because they did not decode or did not come from the kernel.
    pub fn undecodable(&self) -> u64 {
        self.undecodable
    }

    /// Drains the event socket to `WouldBlock`. Messages the agent has no use for are ignored.
    pub fn read_events(&mut self) -> io::Result<Vec<NetEvent>> {
        let mut out = Vec::new();
        loop {
            let n = match recvfrom::<NetlinkAddr>(self.events.as_raw_fd(), &mut self.buf) {
                Ok((n, from)) if from.map(|a| a.pid()) == Some(KERNEL_PORT) => n,
                Ok(_) => {
                    self.undecodable += 1;
                    continue;
                }
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => continue,
                Err(Errno::ENOBUFS) => {
                    if out.last() != Some(&NetEvent::Lost) {
                        out.push(NetEvent::Lost);
                    }
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let (messages, bad) = split_datagram(&self.buf[..n]);
            self.undecodable += bad;
            for m in messages {
                if let NetlinkPayload::InnerMessage(m) = m.payload {
                    events_from(m, &mut self.names, &mut out);
                }
            }
        }
        Ok(out)
    }

    /// Every IPv4 and IPv6 address of every interface (a dump; also refreshes the link names).
    pub fn addresses(&mut self) -> io::Result<Vec<IfAddr>> {
        self.refresh_names()?;
        let request = RouteNetlinkMessage::GetAddress(AddressMessage::default());
        let replies = self.dump(request)?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => if_addr(&a, &self.names),
                _ => None,
            })
            .collect())
    }

    /// The index of the interface called `name`, or `None` if there is none.
    pub fn link_index(&mut self, name: &str) -> io::Result<Option<u32>> {
        let mut link = LinkMessage::default();
        link.attributes.push(LinkAttribute::IfName(name.to_owned()));
        match self.request(RouteNetlinkMessage::GetLink(link), 0) {
            Ok(replies) => Ok(replies.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sets the link administratively up, and its MTU if given (spec 5: the TUN's MTU is what
    /// fits the outer packet into the path).
    pub fn set_link_up(&mut self, ifindex: u32, mtu: Option<u32>) -> io::Result<()> {
        let mut link = LinkMessage::default();
        link.header.index = ifindex;
        link.header.flags = LinkFlags::Up;
        link.header.change_mask = LinkFlags::Up;
        if let Some(mtu) = mtu {
            link.attributes.push(LinkAttribute::Mtu(mtu));
        }
        self.request(RouteNetlinkMessage::SetLink(link), 0).map(drop)
    }

    /// Adds `addr/prefix_len` to the interface (spec 5: the TUN carries the virtual addresses).
    /// An address that is already there is success, so a restart may configure again.
    pub fn add_address(&mut self, ifindex: u32, addr: IpAddr, prefix_len: u8) -> io::Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = family(addr);
        msg.header.prefix_len = prefix_len;
        msg.header.index = ifindex;
        msg.header.scope = AddressScope::Universe;
        match addr {
            IpAddr::V4(_) => {
                msg.attributes.push(AddressAttribute::Local(addr));
                msg.attributes.push(AddressAttribute::Address(addr));
            }
            IpAddr::V6(_) => {
                msg.attributes.push(AddressAttribute::Address(addr));
                // The DC assigns the virtual address, unique by construction; duplicate
                // address detection would only hold it tentative (unusable) for a while.
                msg.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
        }
        let flags = NLM_F_CREATE | NLM_F_EXCL;
        match self.request(RouteNetlinkMessage::NewAddress(msg), flags) {
            Err(e) if e.raw_os_error() != Some(libc::EEXIST) => Err(e),
            _ => Ok(()),
        }
    }

    /// Routes `dst/prefix_len` into the interface, with a route MTU if given (spec 5: packets
    /// to virtual prefixes go into the TUN). Host bits of `dst` are cleared. An existing route
    /// for the same prefix is replaced rather than kept, so that a changed MTU or a re-created
    /// TUN takes effect; adding the same route twice therefore succeeds.
    pub fn add_route(&mut self, ifindex: u32, dst: IpAddr, prefix_len: u8, mtu: Option<u32>) -> io::Result<()> {
        let mut msg = route_message(ifindex, dst, prefix_len, RouteScope::Link);
        if let Some(mtu) = mtu {
            msg.attributes.push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
        }
        let flags = NLM_F_CREATE | NLM_F_REPLACE;
        match self.request(RouteNetlinkMessage::NewRoute(msg), flags) {
            Err(e) if e.raw_os_error() != Some(libc::EEXIST) => Err(e),
            _ => Ok(()),
        }
    }

    /// Removes the route for `dst/prefix_len` through the interface that [`Netlink::add_route`]
    /// made (the delete names its protocol, so the kernel's own prefix route of an address is
    /// left alone). A route that is not there is success (the kernel also removes a device's
    /// routes when the device goes).
    #[allow(dead_code)] // the agent's routes leave with its TUN device; the tests use it
    pub fn del_route(&mut self, ifindex: u32, dst: IpAddr, prefix_len: u8) -> io::Result<()> {
        // Scope "nowhere" in a delete matches a route of any scope.
        let msg = route_message(ifindex, dst, prefix_len, RouteScope::NoWhere);
        match self.request(RouteNetlinkMessage::DelRoute(msg), 0) {
            Err(e) if !matches!(e.raw_os_error(), Some(libc::ESRCH | libc::ENOENT)) => Err(e),
            _ => Ok(()),
        }
    }

    fn refresh_names(&mut self) -> io::Result<()> {
        let replies = self.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?;
        self.names.clear();
        for m in replies {
            if let RouteNetlinkMessage::NewLink(l) = m {
                if let Some(name) = link_name(&l) {
                    self.names.insert(l.header.index, name);
                }
            }
        }
        Ok(())
    }

    /// A dump, retried while the kernel says it was interrupted by a change.
    fn dump(&mut self, request: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        for _ in 1..DUMP_ATTEMPTS {
            let (replies, interrupted) = self.exchange(request.clone(), NLM_F_DUMP)?;
            if !interrupted {
                return Ok(replies);
            }
        }
        // Still changing: a consistent-enough answer beats none; the change that interrupted
        // it also produced an event, which makes the agent read again.
        self.exchange(request, NLM_F_DUMP).map(|(replies, _)| replies)
    }

    /// A request answered by an acknowledgement (and possibly replies before it).
    fn request(&mut self, request: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.exchange(request, flags | NLM_F_ACK).map(|(replies, _)| replies)
    }

    /// Sends one request and collects its replies up to the acknowledgement, the error or the
    /// end of the dump. Returns the replies and whether the dump was interrupted.
    fn exchange(&mut self, request: RouteNetlinkMessage, flags: u16) -> io::Result<(Vec<RouteNetlinkMessage>, bool)> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(request));
        msg.finalize();
        let mut out = vec![0; msg.buffer_len()];
        msg.serialize(&mut out);
        sendto(self.requests.as_raw_fd(), &out, &NetlinkAddr::new(KERNEL_PORT, 0), MsgFlags::empty())?;

        let mut replies = Vec::new();
        let mut interrupted = false;
        loop {
            let n = match recvfrom::<NetlinkAddr>(self.requests.as_raw_fd(), &mut self.buf) {
                Ok((n, from)) if from.map(|a| a.pid()) == Some(KERNEL_PORT) => n,
                Ok(_) => {
                    self.undecodable += 1;
                    continue;
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "netlink: no answer from the kernel"))
                }
                Err(e) => return Err(e.into()),
            };
            let (messages, bad) = split_datagram(&self.buf[..n]);
            self.undecodable += bad;
            for m in messages {
                // An answer to an earlier request that timed out is not ours to read.
                if m.header.sequence_number != seq {
                    continue;
                }
                interrupted |= m.header.flags & NLM_F_DUMP_INTR != 0;
                match m.payload {
                    NetlinkPayload::InnerMessage(r) => replies.push(r),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok((replies, interrupted)),
                            Some(_) => Err(e.to_io()),
                        };
                    }
                    NetlinkPayload::Done(d) => {
                        return match d.code {
                            0 => Ok((replies, interrupted)),
                            code => Err(io::Error::from_raw_os_error(code.saturating_abs())),
                        };
                    }
                    NetlinkPayload::Overrun(_) => {
                        return Err(io::Error::other("netlink: dump overrun"));
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Splits a datagram into its messages. A message whose length field cannot be trusted ends
/// the datagram; a well-framed one that does not decode is skipped. Returns the messages and
/// how many were dropped.
fn split_datagram(mut datagram: &[u8]) -> (Vec<NetlinkMessage<RouteNetlinkMessage>>, u64) {
    let mut messages = Vec::new();
    let mut bad = 0;
    while !datagram.is_empty() {
        // `new_checked` ensures header_len <= length <= datagram.len().
        let Ok(buf) = NetlinkBuffer::new_checked(datagram) else {
            bad += 1;
            break;
        };
        let len = buf.length() as usize;
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&datagram[..len]) {
            Ok(m) => messages.push(m),
            Err(_) => bad += 1,
        }
        // Messages are aligned to 4 bytes; the last one may lack its padding.
        let next = len.next_multiple_of(4).min(datagram.len());
        datagram = &datagram[next..];
    }
    (messages, bad)
}

/// Turns one event message into `NetEvent`s, keeping the link names current.
fn events_from(message: RouteNetlinkMessage, names: &mut HashMap<u32, String>, out: &mut Vec<NetEvent>) {
    match message {
        RouteNetlinkMessage::NewAddress(a) => {
            out.extend(if_addr(&a, names).map(NetEvent::AddressAdded));
        }
        RouteNetlinkMessage::DelAddress(a) => {
            out.extend(if_addr(&a, names).map(NetEvent::AddressRemoved));
        }
        RouteNetlinkMessage::NewRoute(_) | RouteNetlinkMessage::DelRoute(_)
            if !out.contains(&NetEvent::RouteChanged) =>
        {
            out.push(NetEvent::RouteChanged);
        }
        RouteNetlinkMessage::NewLink(l) => {
            if let Some(name) = link_name(&l) {
                names.insert(l.header.index, name);
            }
            let up = l.header.flags.contains(LinkFlags::Up | LinkFlags::Running);
            out.push(NetEvent::LinkChanged { ifindex: l.header.index, up });
        }
        RouteNetlinkMessage::DelLink(l) => {
            names.remove(&l.header.index);
            out.push(NetEvent::LinkChanged { ifindex: l.header.index, up: false });
        }
        _ => {}
    }
}

fn link_name(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

/// The address of an address message. Like getifaddrs(3), `IFA_LOCAL` (the local end) wins
/// over `IFA_ADDRESS` (the peer's end on a point-to-point link).
fn if_addr(msg: &AddressMessage, names: &HashMap<u32, String>) -> Option<IfAddr> {
    if !matches!(msg.header.family, AddressFamily::Inet | AddressFamily::Inet6) {
        return None;
    }
    let mut local = None;
    let mut address = None;
    // IFA_FLAGS, when present, holds all the flags; the header has room for the low 8.
    let mut flags = AddressFlags::from_bits_retain(u32::from(msg.header.flags.bits()));
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(a) => local = Some(*a),
            AddressAttribute::Address(a) => address = Some(*a),
            AddressAttribute::Flags(f) => flags = *f,
            _ => {}
        }
    }
    Some(IfAddr {
        ifindex: msg.header.index,
        ifname: names.get(&msg.header.index).cloned().unwrap_or_default(),
        addr: local.or(address)?,
        prefix_len: msg.header.prefix_len,
        scope: msg.header.scope.into(),
        flags: AddrFlags::from_bits(flags),
    })
}

fn family(addr: IpAddr) -> AddressFamily {
    match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// A main-table unicast route of `dst/prefix_len` through `ifindex`, no gateway.
fn route_message(ifindex: u32, dst: IpAddr, prefix_len: u8, scope: RouteScope) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = family(dst);
    msg.header.destination_prefix_length = prefix_len;
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::Static;
    msg.header.scope = scope;
    msg.header.kind = RouteType::Unicast;
    // The kernel refuses an IPv4 destination with host bits set.
    msg.attributes.push(RouteAttribute::Destination(RouteAddress::from(network(dst, prefix_len))));
    msg.attributes.push(RouteAttribute::Oif(ifindex));
    msg
}

/// `addr` with the bits after `prefix_len` cleared (a length past the address means all bits).
fn network(addr: IpAddr, prefix_len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32u32.saturating_sub(prefix_len.into())).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128u32.saturating_sub(prefix_len.into())).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
        }
    }
}

/// Whether `addr` lies in `prefix/prefix_len` (of the same family).
fn in_prefix(addr: IpAddr, prefix: IpAddr, prefix_len: u8) -> bool {
    addr.is_ipv4() == prefix.is_ipv4() && network(addr, prefix_len) == network(prefix, prefix_len)
}

fn is_reportable_ip(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => {
            !(a.is_unspecified() || a.is_loopback() || a.is_link_local() || a.is_multicast() || a.is_broadcast())
        }
        IpAddr::V6(a) => {
            let seg0 = a.segments()[0];
            !(a.is_unspecified()
                || a.is_loopback()
                || a.is_multicast()
                || seg0 & 0xffc0 == 0xfe80 // link-local fe80::/10
                || seg0 & 0xffc0 == 0xfec0 // site-local fec0::/10, deprecated (RFC 3879)
                || a.to_ipv4_mapped().is_some())
        }
    }
}

/// The addresses a node reports to its DC (spec 4.2: "its real addresses"): unicast IPv4/IPv6
/// of global scope, not loopback, link-local, multicast, tentative, deprecated or failed DAD;
/// not on the excluded interfaces (the TUN) and not inside the virtual prefixes (a virtual
/// address is never a real one). Private IPv4 and unique-local IPv6 addresses are reported:
/// the DC compares them with the source it observes to tell that the node is behind NAT.
/// The order is that of `addrs`, without duplicates.
pub fn usable_local_addrs(
    addrs: &[IfAddr],
    exclude_ifindex: &[u32],
    exclude_prefixes: &[(IpAddr, u8)],
    port: u16,
) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for a in addrs {
        let usable = a.scope == AddrScope::Universe
            && !a.flags.tentative
            && !a.flags.deprecated
            && !a.flags.dad_failed
            && is_reportable_ip(a.addr)
            && !exclude_ifindex.contains(&a.ifindex)
            && !exclude_prefixes.iter().any(|&(p, len)| in_prefix(a.addr, p, len));
        let sa = SocketAddr::new(a.addr, port);
        if usable && !out.contains(&sa) {
            out.push(sa);
        }
    }
    out
}

/// Waits for a burst of address changes to settle before the agent re-reads the addresses
/// and re-registers (spec 4.5): a DHCP renew or an interface flap sends several events within
/// milliseconds. Due once `quiet` has passed without a new change, or `max_wait` after the
/// first change of a burst, so that a flapping link cannot postpone re-registration forever.
/// Time comes in as `now`; the driver adds [`ChangeDebounce::deadline`] to its poll timeout.
#[derive(Clone, Debug)]
pub struct ChangeDebounce {
    quiet: Duration,
    max_wait: Duration,
    /// First and latest change of the pending burst.
    pending: Option<(Instant, Instant)>,
}

impl Default for ChangeDebounce {
    fn default() -> Self {
        Self::new(Self::QUIET, Self::MAX_WAIT)
    }
}

impl ChangeDebounce {
    pub const QUIET: Duration = Duration::from_millis(200);
    pub const MAX_WAIT: Duration = Duration::from_secs(2);

    pub fn new(quiet: Duration, max_wait: Duration) -> Self {
        Self { quiet, max_wait, pending: None }
    }

    /// A change was seen at `now`.
    pub fn note(&mut self, now: Instant) {
        self.pending = Some(match self.pending {
            Some((first, last)) => (first, last.max(now)),
            None => (now, now),
        });
    }

    /// When the pending burst becomes due, if there is one.
    pub fn deadline(&self) -> Option<Instant> {
        self.pending.map(|(first, last)| (last + self.quiet).min(first + self.max_wait))
    }

    /// Whether the burst has settled by `now`; true once per burst (it is then forgotten).
    pub fn due(&mut self, now: Instant) -> bool {
        match self.deadline() {
            Some(d) if now >= d => {
                self.pending = None;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debounce_waits_for_quiet() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut d = ChangeDebounce::default();
        assert!(!d.due(t0));
        assert_eq!(d.deadline(), None);
        d.note(t0);
        assert!(!d.due(t0 + ms(100)));
        d.note(t0 + ms(150)); // the add after the remove of a DHCP renew
        assert!(!d.due(t0 + ms(300)));
        assert_eq!(d.deadline(), Some(t0 + ms(350)));
        assert!(d.due(t0 + ms(350)));
        assert!(!d.due(t0 + ms(400)), "due once per burst");
        assert_eq!(d.deadline(), None);
    }

    #[test]
    fn debounce_caps_a_storm() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut d = ChangeDebounce::new(ms(200), ms(1000));
        let mut t = t0;
        let mut fired = None;
        while t < t0 + ms(3000) {
            d.note(t);
            if d.due(t) {
                fired = Some(t);
                break;
            }
            t += ms(100);
        }
        assert_eq!(fired, Some(t0 + ms(1000)));
    }

    #[test]
    fn debounce_ignores_a_late_note_from_the_past() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut d = ChangeDebounce::default();
        d.note(t0 + ms(100));
        d.note(t0);
        assert_eq!(d.deadline(), Some(t0 + ms(300)));
    }

    #[test]
    fn prefixes() {
        let v4 = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(network(v4("10.1.2.3"), 16), v4("10.1.0.0"));
        assert_eq!(network(v4("10.1.2.3"), 0), v4("0.0.0.0"));
        assert_eq!(network(v4("10.1.2.3"), 32), v4("10.1.2.3"));
        assert_eq!(network(v4("10.1.2.3"), 200), v4("10.1.2.3"));
        assert_eq!(network(v4("fd00:1:2::3"), 48), v4("fd00:1:2::"));
        assert_eq!(network(v4("fd00:1:2::3"), 128), v4("fd00:1:2::3"));
        assert!(in_prefix(v4("10.1.2.3"), v4("10.1.0.0"), 16));
        assert!(!in_prefix(v4("10.2.2.3"), v4("10.1.0.0"), 16));
        assert!(!in_prefix(v4("::a01:203"), v4("10.1.0.0"), 16), "families differ");
    }

    fn datagram(messages: Vec<RouteNetlinkMessage>) -> Vec<u8> {
        let mut out = Vec::new();
        for m in messages {
            let mut msg = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(m));
            msg.finalize();
            let start = out.len();
            out.resize(start + msg.buffer_len().next_multiple_of(4), 0);
            msg.serialize(&mut out[start..]);
        }
        out
    }

    fn new_addr(index: u32, addr: IpAddr, prefix_len: u8, flags: AddressFlags) -> AddressMessage {
        let mut a = AddressMessage::default();
        a.header.family = family(addr);
        a.header.index = index;
        a.header.prefix_len = prefix_len;
        a.attributes.push(AddressAttribute::Address(addr));
        a.attributes.push(AddressAttribute::Flags(flags));
        a
    }

    fn decode(bytes: &[u8], names: &mut HashMap<u32, String>) -> (Vec<NetEvent>, u64) {
        let (messages, bad) = split_datagram(bytes);
        let mut out = Vec::new();
        for m in messages {
            if let NetlinkPayload::InnerMessage(m) = m.payload {
                events_from(m, names, &mut out);
            }
        }
        (out, bad)
    }

    #[test]
    fn events_from_a_datagram() {
        let mut link = LinkMessage::default();
        link.header.index = 7;
        link.header.flags = LinkFlags::Up | LinkFlags::Running;
        link.attributes.push(LinkAttribute::IfName("wan0".into()));
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let mut v4 = new_addr(7, "192.0.2.1".parse().unwrap(), 24, AddressFlags::empty());
        // IPv4 point-to-point: the local end is ours, not the peer's.
        v4.attributes.insert(0, AddressAttribute::Local("192.0.2.9".parse().unwrap()));
        let bytes = datagram(vec![
            RouteNetlinkMessage::NewLink(link.clone()),
            RouteNetlinkMessage::NewAddress(new_addr(7, v6, 64, AddressFlags::Tentative)),
            RouteNetlinkMessage::NewRoute(RouteMessage::default()),
            RouteNetlinkMessage::DelRoute(RouteMessage::default()),
            RouteNetlinkMessage::DelAddress(v4),
            RouteNetlinkMessage::DelLink(link),
        ]);
        let mut names = HashMap::new();
        let (events, bad) = decode(&bytes, &mut names);
        assert_eq!(bad, 0);
        let tentative = AddrFlags { tentative: true, ..AddrFlags::default() };
        assert_eq!(
            events,
            vec![
                NetEvent::LinkChanged { ifindex: 7, up: true },
                NetEvent::AddressAdded(IfAddr {
                    ifindex: 7,
                    ifname: "wan0".into(),
                    addr: v6,
                    prefix_len: 64,
                    scope: AddrScope::Universe,
                    flags: tentative,
                }),
                NetEvent::RouteChanged,
                NetEvent::AddressRemoved(IfAddr {
                    ifindex: 7,
                    ifname: "wan0".into(),
                    addr: "192.0.2.9".parse().unwrap(),
                    prefix_len: 24,
                    scope: AddrScope::Universe,
                    flags: AddrFlags::default(),
                }),
                NetEvent::LinkChanged { ifindex: 7, up: false },
            ]
        );
        assert!(names.is_empty(), "the link is gone");
    }

    #[test]
    fn truncated_and_garbled_datagrams_do_not_panic() {
        let bytes = datagram(vec![
            RouteNetlinkMessage::NewAddress(new_addr(3, "2001:db8::2".parse().unwrap(), 64, AddressFlags::empty())),
            RouteNetlinkMessage::NewRoute(RouteMessage::default()),
        ]);
        for n in 0..bytes.len() {
            let (events, _) = decode(&bytes[..n], &mut HashMap::new());
            assert!(events.len() <= 1, "prefix {n}: {events:?}");
        }
        for i in 0..bytes.len() {
            for v in [0x00, 0xff, 0x7f] {
                let mut b = bytes.clone();
                b[i] = v;
                let _ = decode(&b, &mut HashMap::new());
            }
        }
        // Unknown message types decode to nothing.
        let mut header = NetlinkHeader::default();
        header.message_type = 0x7777;
        header.length = 16;
        let mut b = vec![0; 16];
        netlink_packet_core::Emitable::emit(&header, &mut b);
        let (events, _) = decode(&b, &mut HashMap::new());
        assert!(events.is_empty());
    }
}
