//! The agent's view of the kernel's addresses, routes and links, over rtnetlink (a raw
//! `NETLINK_ROUTE` socket; messages are built and parsed by the small codec in [`wire`]).
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

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

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

impl AddrScope {
    fn from_raw(s: u8) -> Self {
        match s {
            wire::RT_SCOPE_UNIVERSE => Self::Universe,
            wire::RT_SCOPE_SITE => Self::Site,
            wire::RT_SCOPE_LINK => Self::Link,
            wire::RT_SCOPE_HOST => Self::Host,
            wire::RT_SCOPE_NOWHERE => Self::Nowhere,
            other => Self::Unknown(other),
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
    fn from_bits(flags: u32) -> Self {
        Self {
            tentative: flags & wire::IFA_F_TENTATIVE != 0,
            deprecated: flags & wire::IFA_F_DEPRECATED != 0,
            dad_failed: flags & wire::IFA_F_DADFAILED != 0,
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
    /// A link appeared, changed or went away (`up: false`). Up means administratively up,
    /// with carrier and operationally up (see [`link_is_up`]).
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
    /// The links that are up ([`link_is_up`]), as of the last link dump.
    up: HashSet<u32>,
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
            .field("up", &self.up.len())
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

        let mut nl = Self {
            events,
            requests,
            seq: 0,
            names: HashMap::new(),
            up: HashSet::new(),
            buf: vec![0; RECV_BUF_LEN],
            undecodable: 0,
        };
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
            let datagram = self.buf.get(..n).unwrap_or(&[]);
            for m in wire::messages(datagram, &mut self.undecodable) {
                if !events_from(&m, &mut self.names, &mut out) {
                    self.undecodable += 1;
                }
            }
        }
        Ok(out)
    }

    /// Every IPv4 and IPv6 address of every interface (a dump; also refreshes the link names).
    pub fn addresses(&mut self) -> io::Result<Vec<IfAddr>> {
        self.refresh_names()?;
        let request = |seq| wire::Request::new(wire::RTM_GETADDR, wire::NLM_F_DUMP, seq).ifaddrmsg(0, 0, 0, 0);
        let replies = self.dump(request, |m| match m.kind {
            wire::RTM_NEWADDR => wire::addr(m.payload),
            _ => None,
        })?;
        Ok(replies.iter().filter_map(|a| if_addr(a, &self.names)).collect())
    }

    /// What the kernel would do now with a datagram to `dst` (`ip route get`): the source
    /// address it would pick and the interface it would send it out of. `None` if it has no
    /// route there (unreachable, prohibited, no route of that family at all).
    pub fn route_to(&mut self, dst: IpAddr) -> io::Result<Option<PathChoice>> {
        match self.route_query(dst) {
            Ok(route) => Ok(route.and_then(|r| {
                let ifindex = r.oif?;
                let ifname = self.names.get(&ifindex).cloned().unwrap_or_default();
                Some(PathChoice { dst, src: r.prefsrc, ifindex, ifname })
            })),
            Err(e) if e.raw_os_error().is_some_and(is_no_route) => {
                log::debug!("no path to {dst}: {e}");
                Ok(None)
            }
            // Any other answer (an errno this build does not know, as under qemu-user
            // for MIPS) leaves the family unused until the next network change: the
            // agent must not fail to start or stop following moves over it.
            Err(e) => {
                log::warn!("asking the kernel for its path to {dst}: {e}; that family is not used for now");
                Ok(None)
            }
        }
    }

    /// The kernel's answer to a route query for `dst` (`ip route get`).
    fn route_query(&mut self, dst: IpAddr) -> io::Result<Option<wire::Route>> {
        let seq = self.next_seq();
        let full = if dst.is_ipv4() { 32 } else { 128 };
        let request = wire::Request::new(wire::RTM_GETROUTE, wire::NLM_F_ACK, seq)
            .rtmsg_query(wire::family(dst), full)
            .attr_addr(wire::RTA_DST, dst);
        let routes = |m: &wire::Message| match m.kind {
            wire::RTM_NEWROUTE => wire::route(m.payload),
            _ => None,
        };
        self.exchange(request, routes).map(|(replies, _)| replies.into_iter().next())
    }

    /// The largest datagram the kernel would send to `dst` unfragmented now (IP header
    /// included): the path MTU it learned from an ICMP error (or a route's own MTU), else
    /// the MTU of the interface it would send out of. `None` if it has no route there or
    /// did not say.
    pub fn path_mtu(&mut self, dst: IpAddr) -> io::Result<Option<u32>> {
        let route = match self.route_query(dst) {
            Ok(route) => route,
            Err(e) if e.raw_os_error().is_some_and(is_no_route) => None,
            Err(e) => return Err(e),
        };
        let Some(route) = route else { return Ok(None) };
        if route.mtu.is_some() {
            return Ok(route.mtu);
        }
        let Some(oif) = route.oif else { return Ok(None) };
        let seq = self.next_seq();
        let request = wire::Request::new(wire::RTM_GETLINK, wire::NLM_F_ACK, seq).ifinfomsg(oif, 0, 0);
        let links = |m: &wire::Message| match m.kind {
            wire::RTM_NEWLINK => wire::link(m.payload).and_then(|l| l.mtu),
            _ => None,
        };
        match self.exchange(request, links) {
            Ok((replies, _)) => Ok(replies.first().copied()),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The addresses the node may use now ([`usable_local_addrs`]): the addresses, the
    /// links' state and, for each destination of `probes` (one per family: a server's
    /// address), the kernel's own choice of path, all read afresh.
    pub fn usable_addrs(
        &mut self,
        probes: &[IpAddr],
        exclude_ifindex: &[u32],
        exclude_prefixes: &[(IpAddr, u8)],
        port: u16,
    ) -> io::Result<Vec<SocketAddr>> {
        let addrs = self.addresses()?;
        let mut paths = Vec::new();
        for &dst in probes {
            paths.extend(self.route_to(dst)?);
        }
        Ok(usable_local_addrs(&addrs, &self.up, &paths, exclude_ifindex, exclude_prefixes, port))
    }

    /// The unicast routes of the main table, the one the box routes by (a dump). Default
    /// routes are left out: a more specific route always wins over them.
    pub fn routes(&mut self) -> io::Result<Vec<KernelRoute>> {
        self.refresh_names()?;
        let request =
            |seq| wire::Request::new(wire::RTM_GETROUTE, wire::NLM_F_DUMP, seq).rtmsg(wire::AF_UNSPEC, 0, 0, 0);
        let replies = self.dump(request, |m| match m.kind {
            wire::RTM_NEWROUTE => wire::route(m.payload),
            _ => None,
        })?;
        Ok(replies
            .into_iter()
            .filter(|r| r.table == u32::from(wire::RT_TABLE_MAIN) && r.kind == wire::RTN_UNICAST && r.dst_len > 0)
            .filter_map(|r| {
                let oif = r.oif.unwrap_or(0);
                Some(KernelRoute {
                    dst: r.dst?,
                    prefix_len: r.dst_len,
                    ifindex: oif,
                    ifname: self.names.get(&oif).cloned().unwrap_or_default(),
                })
            })
            .collect())
    }

    /// The index of the interface called `name`, or `None` if there is none.
    pub fn link_index(&mut self, name: &str) -> io::Result<Option<u32>> {
        let seq = self.next_seq();
        let request = wire::Request::new(wire::RTM_GETLINK, wire::NLM_F_ACK, seq)
            .ifinfomsg(0, 0, 0)
            .attr_str(wire::IFLA_IFNAME, name);
        let links = |m: &wire::Message| match m.kind {
            wire::RTM_NEWLINK => wire::link(m.payload).map(|l| l.index),
            _ => None,
        };
        match self.exchange(request, links) {
            Ok((replies, _)) => Ok(replies.first().copied()),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sets the link administratively up, and its MTU if given (spec 5: the TUN's MTU is what
    /// fits the outer packet into the path).
    pub fn set_link_up(&mut self, ifindex: u32, mtu: Option<u32>) -> io::Result<()> {
        let seq = self.next_seq();
        let mut request =
            wire::Request::new(wire::RTM_SETLINK, wire::NLM_F_ACK, seq).ifinfomsg(ifindex, wire::IFF_UP, wire::IFF_UP);
        if let Some(mtu) = mtu {
            request = request.attr_u32(wire::IFLA_MTU, mtu);
        }
        self.exchange(request, none).map(drop)
    }

    /// Sets the length of the interface's transmit queue (for a TUN device: packets the
    /// kernel holds for the agent to read before it drops them).
    pub fn set_tx_queue_len(&mut self, ifindex: u32, len: u32) -> io::Result<()> {
        let seq = self.next_seq();
        let request = wire::Request::new(wire::RTM_SETLINK, wire::NLM_F_ACK, seq)
            .ifinfomsg(ifindex, 0, 0)
            .attr_u32(wire::IFLA_TXQLEN, len);
        self.exchange(request, none).map(drop)
    }

    /// Adds `addr/prefix_len` to the interface (spec 5: the TUN carries the virtual addresses).
    /// An address that is already there is success, so a restart may configure again.
    pub fn add_address(&mut self, ifindex: u32, addr: IpAddr, prefix_len: u8) -> io::Result<()> {
        let seq = self.next_seq();
        let flags = wire::NLM_F_ACK | wire::NLM_F_CREATE | wire::NLM_F_EXCL;
        let request = wire::Request::new(wire::RTM_NEWADDR, flags, seq).ifaddrmsg(
            wire::family(addr),
            prefix_len,
            wire::RT_SCOPE_UNIVERSE,
            ifindex,
        );
        let request = match addr {
            IpAddr::V4(_) => request.attr_addr(wire::IFA_LOCAL, addr).attr_addr(wire::IFA_ADDRESS, addr),
            // The DC assigns the virtual address, unique by construction; duplicate address
            // detection would only hold it tentative (unusable) for a while.
            IpAddr::V6(_) => request.attr_addr(wire::IFA_ADDRESS, addr).attr_u32(wire::IFA_FLAGS, wire::IFA_F_NODAD),
        };
        match self.exchange(request, none) {
            Err(e) if e.raw_os_error() != Some(libc::EEXIST) => Err(e),
            _ => Ok(()),
        }
    }

    /// Routes `dst/prefix_len` into the interface, with a route MTU if given (spec 5: packets
    /// to virtual prefixes go into the TUN). Host bits of `dst` are cleared. An existing route
    /// for the same prefix is replaced rather than kept, so that a changed MTU or a re-created
    /// TUN takes effect; adding the same route twice therefore succeeds.
    pub fn add_route(&mut self, ifindex: u32, dst: IpAddr, prefix_len: u8, mtu: Option<u32>) -> io::Result<()> {
        let seq = self.next_seq();
        let flags = wire::NLM_F_ACK | wire::NLM_F_CREATE | wire::NLM_F_REPLACE;
        let mut request = route_request(wire::RTM_NEWROUTE, flags, seq, ifindex, dst, prefix_len, wire::RT_SCOPE_LINK);
        if let Some(mtu) = mtu {
            request = request.begin_nest(wire::RTA_METRICS).attr_u32(wire::RTAX_MTU, mtu).end_nest();
        }
        match self.exchange(request, none) {
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
        let seq = self.next_seq();
        // Scope "nowhere" in a delete matches a route of any scope.
        let request =
            route_request(wire::RTM_DELROUTE, wire::NLM_F_ACK, seq, ifindex, dst, prefix_len, wire::RT_SCOPE_NOWHERE);
        match self.exchange(request, none) {
            Err(e) if !matches!(e.raw_os_error(), Some(libc::ESRCH | libc::ENOENT)) => Err(e),
            _ => Ok(()),
        }
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn refresh_names(&mut self) -> io::Result<()> {
        let request = |seq| wire::Request::new(wire::RTM_GETLINK, wire::NLM_F_DUMP, seq).ifinfomsg(0, 0, 0);
        let links = self.dump(request, |m| match m.kind {
            wire::RTM_NEWLINK => wire::link(m.payload),
            _ => None,
        })?;
        self.names.clear();
        self.up.clear();
        for l in links {
            if link_is_up(&l) {
                self.up.insert(l.index);
            }
            if let Some(name) = l.name {
                self.names.insert(l.index, name);
            }
        }
        Ok(())
    }

    /// A dump, retried while the kernel says it was interrupted by a change. `request` builds
    /// the request for a sequence number; `parse` keeps the replies of interest.
    fn dump<T>(
        &mut self,
        request: impl Fn(u32) -> wire::Request,
        parse: impl Fn(&wire::Message) -> Option<T>,
    ) -> io::Result<Vec<T>> {
        for _ in 1..DUMP_ATTEMPTS {
            let seq = self.next_seq();
            let (replies, interrupted) = self.exchange(request(seq), &parse)?;
            if !interrupted {
                return Ok(replies);
            }
        }
        // Still changing: a consistent-enough answer beats none; the change that interrupted
        // it also produced an event, which makes the agent read again.
        let seq = self.next_seq();
        self.exchange(request(seq), &parse).map(|(replies, _)| replies)
    }

    /// Sends one request and collects its replies (those `parse` keeps) up to the
    /// acknowledgement, the error or the end of the dump. Returns the replies and whether the
    /// dump was interrupted.
    fn exchange<T>(
        &mut self,
        request: wire::Request,
        parse: impl Fn(&wire::Message) -> Option<T>,
    ) -> io::Result<(Vec<T>, bool)> {
        let seq = request.seq();
        sendto(self.requests.as_raw_fd(), &request.finish(), &NetlinkAddr::new(KERNEL_PORT, 0), MsgFlags::empty())?;
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
            let datagram = self.buf.get(..n).unwrap_or(&[]);
            for m in wire::messages(datagram, &mut self.undecodable) {
                // An answer to an earlier request that timed out is not ours to read.
                if m.seq != seq {
                    continue;
                }
                interrupted |= m.flags & wire::NLM_F_DUMP_INTR != 0;
                match m.kind {
                    wire::NLMSG_ERROR | wire::NLMSG_DONE => {
                        return match wire::error_code(m.payload) {
                            0 => Ok((replies, interrupted)),
                            code => Err(io::Error::from_raw_os_error(code.saturating_abs())),
                        };
                    }
                    wire::NLMSG_OVERRUN => return Err(io::Error::other("netlink: dump overrun")),
                    _ => replies.extend(parse(&m)),
                }
            }
        }
    }
}

/// The parser of a request whose replies are of no interest (only its acknowledgement is).
fn none(_: &wire::Message) -> Option<()> {
    None
}

/// Turns one event message into `NetEvent`s, keeping the link names current. False if a
/// message of a kind the agent reads did not decode.
fn events_from(m: &wire::Message, names: &mut HashMap<u32, String>, out: &mut Vec<NetEvent>) -> bool {
    match m.kind {
        wire::RTM_NEWADDR | wire::RTM_DELADDR => {
            let Some(a) = wire::addr(m.payload) else { return false };
            if let Some(a) = if_addr(&a, names) {
                out.push(if m.kind == wire::RTM_NEWADDR {
                    NetEvent::AddressAdded(a)
                } else {
                    NetEvent::AddressRemoved(a)
                });
            }
        }
        wire::RTM_NEWROUTE | wire::RTM_DELROUTE if !out.contains(&NetEvent::RouteChanged) => {
            out.push(NetEvent::RouteChanged);
        }
        wire::RTM_NEWLINK => {
            let Some(l) = wire::link(m.payload) else { return false };
            let up = link_is_up(&l);
            if let Some(name) = l.name {
                names.insert(l.index, name);
            }
            out.push(NetEvent::LinkChanged { ifindex: l.index, up });
        }
        wire::RTM_DELLINK => {
            let Some(l) = wire::link(m.payload) else { return false };
            names.remove(&l.index);
            out.push(NetEvent::LinkChanged { ifindex: l.index, up: false });
        }
        _ => {}
    }
    true
}

/// Whether a link can carry traffic now: administratively up (`IFF_UP`), with carrier
/// (`IFF_LOWER_UP`) and operationally up (`IFF_RUNNING`, and an `IFLA_OPERSTATE` of up or
/// unknown, which is what drivers without carrier detection report). A link that was set
/// down or lost its carrier keeps its IPv4 addresses, but they are no way out.
fn link_is_up(l: &wire::Link) -> bool {
    let flags = wire::IFF_UP | wire::IFF_RUNNING | wire::IFF_LOWER_UP;
    l.flags & flags == flags && l.operstate.is_none_or(|o| matches!(o, wire::IF_OPER_UP | wire::IF_OPER_UNKNOWN))
}

/// The errors with which the kernel answers a route query for a destination it has no
/// usable route to.
fn is_no_route(errno: i32) -> bool {
    matches!(errno, libc::ENETUNREACH | libc::EHOSTUNREACH | libc::ENETDOWN | libc::EACCES | libc::EINVAL)
}

/// The address of an address message. Like getifaddrs(3), `IFA_LOCAL` (the local end) wins
/// over `IFA_ADDRESS` (the peer's end on a point-to-point link).
fn if_addr(a: &wire::Addr, names: &HashMap<u32, String>) -> Option<IfAddr> {
    if !matches!(a.family, wire::AF_INET | wire::AF_INET6) {
        return None;
    }
    Some(IfAddr {
        ifindex: a.index,
        ifname: names.get(&a.index).cloned().unwrap_or_default(),
        addr: a.local.or(a.address)?,
        prefix_len: a.prefix_len,
        scope: AddrScope::from_raw(a.scope),
        flags: AddrFlags::from_bits(a.flags),
    })
}

/// A main-table static unicast route of `dst/prefix_len` through `ifindex`, no gateway.
fn route_request(
    kind: u16,
    flags: u16,
    seq: u32,
    ifindex: u32,
    dst: IpAddr,
    prefix_len: u8,
    scope: u8,
) -> wire::Request {
    wire::Request::new(kind, flags, seq)
        .rtmsg(wire::family(dst), prefix_len, wire::RTPROT_STATIC, scope)
        // The kernel refuses an IPv4 destination with host bits set.
        .attr_addr(wire::RTA_DST, network(dst, prefix_len))
        .attr_u32(wire::RTA_OIF, ifindex)
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

/// The kernel's choice for one destination ([`Netlink::route_to`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathChoice {
    /// The destination asked about (its family is the path's).
    pub dst: IpAddr,
    /// The source address it would use (`RTA_PREFSRC`), if it said.
    pub src: Option<IpAddr>,
    /// The interface it would send out of.
    pub ifindex: u32,
    /// Its name (empty if not known).
    pub ifname: String,
}

/// A route of the box's main table, as [`Netlink::routes`] reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelRoute {
    pub dst: IpAddr,
    pub prefix_len: u8,
    /// The outgoing interface (0 and an empty name if the route names none).
    pub ifindex: u32,
    pub ifname: String,
}

impl fmt::Display for KernelRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.dst, self.prefix_len)?;
        if !self.ifname.is_empty() {
            write!(f, " dev {}", self.ifname)?;
        }
        Ok(())
    }
}

/// The routes of `routes` that overlap the virtual prefix `dst/prefix_len` (one holds the
/// other), other than those through the interface `own` (the TUN device). Either way some
/// addresses go the wrong way once the virtual prefix is routed into the TUN: a more
/// specific route keeps peers' virtual addresses from the tunnel, a wider one loses those
/// of its hosts that fall in the virtual prefix to it, and an equal one is replaced.
pub fn overlapping_routes(routes: &[KernelRoute], dst: IpAddr, prefix_len: u8, own: u32) -> Vec<&KernelRoute> {
    routes.iter().filter(|r| r.ifindex != own && in_prefix(r.dst, dst, prefix_len.min(r.prefix_len))).collect()
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

/// The addresses a node reports to its DC (spec 4.2: "its real addresses"), decided from
/// what the kernel would do now rather than from the address list alone:
/// - an address is unicast IPv4/IPv6 of global scope, not loopback, link-local, multicast,
///   tentative, deprecated or failed DAD; not on the excluded interfaces (the TUN) and not
///   inside the virtual prefixes (a virtual address is never a real one). Private IPv4 and
///   unique-local IPv6 addresses are reported: the DC compares them with the source it
///   observes to tell that the node is behind NAT;
/// - its link is up (`up`: [`link_is_up`]): a link set down or without carrier keeps its
///   IPv4 addresses configured, but nothing leaves through it;
/// - its family has a path (`paths`: the kernel's answer for a server's address of that
///   family) out of a link that is up and not excluded: without one, nothing of that family
///   reaches the servers, so registering over it would only fail;
/// - the source the kernel would pick for that path comes first in its family, and the
///   families' preferred sources before the other addresses, so that a move of the
///   default route to another link is a change of this list even when the set of addresses
///   stays the same. Otherwise the order is that of `addrs`, without duplicates.
pub fn usable_local_addrs(
    addrs: &[IfAddr],
    up: &HashSet<u32>,
    paths: &[PathChoice],
    exclude_ifindex: &[u32],
    exclude_prefixes: &[(IpAddr, u8)],
    port: u16,
) -> Vec<SocketAddr> {
    let usable_link = |ifindex: u32| up.contains(&ifindex) && !exclude_ifindex.contains(&ifindex);
    // The path of each family, if the kernel's choice leaves through a usable link.
    let path_of = |v4: bool| paths.iter().find(|p| p.dst.is_ipv4() == v4 && usable_link(p.ifindex));
    let usable = |a: &IfAddr| {
        a.scope == AddrScope::Universe
            && !a.flags.tentative
            && !a.flags.deprecated
            && !a.flags.dad_failed
            && is_reportable_ip(a.addr)
            && usable_link(a.ifindex)
            && path_of(a.addr.is_ipv4()).is_some()
            && !exclude_prefixes.iter().any(|&(p, len)| in_prefix(a.addr, p, len))
    };
    let preferred: Vec<IpAddr> = [true, false].into_iter().filter_map(|v4| path_of(v4)?.src).collect();
    let mut out: Vec<SocketAddr> = Vec::new();
    let first = addrs.iter().filter(|a| preferred.contains(&a.addr));
    let rest = addrs.iter().filter(|a| !preferred.contains(&a.addr));
    let mut candidates: Vec<&IfAddr> = first.collect();
    candidates.sort_by_key(|a| preferred.iter().position(|p| *p == a.addr));
    for a in candidates.into_iter().chain(rest) {
        let sa = SocketAddr::new(a.addr, port);
        if usable(a) && !out.contains(&sa) {
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

/// The rtnetlink wire format, as far as the agent needs it: the message header, the fixed
/// headers of link, address and route messages, and their attributes. Everything is in the
/// host's byte order (netlink(7)); lengths are checked before every read. The layouts and
/// numbers are those of the kernel's uapi headers `netlink.h`, `rtnetlink.h`, `if_link.h`
/// and `if_addr.h`.
///
/// The agent speaks rtnetlink with this small codec rather than with `netlink-packet-route`:
/// that crate parses every link kind and traffic-control attribute the kernel knows, a third
/// of the armv7 agent (212 KiB), while the agent reads eight attributes and writes seven.
/// The tests check the codec against that crate in both directions.
mod wire {
    use std::net::IpAddr;

    // netlink.h
    pub const NLMSG_HDRLEN: usize = 16;
    pub const NLMSG_ERROR: u16 = 2;
    pub const NLMSG_DONE: u16 = 3;
    pub const NLMSG_OVERRUN: u16 = 4;
    pub const NLM_F_REQUEST: u16 = 0x01;
    pub const NLM_F_ACK: u16 = 0x04;
    pub const NLM_F_DUMP_INTR: u16 = 0x10;
    pub const NLM_F_DUMP: u16 = 0x300;
    pub const NLM_F_REPLACE: u16 = 0x100;
    pub const NLM_F_EXCL: u16 = 0x200;
    pub const NLM_F_CREATE: u16 = 0x400;
    /// Attribute type bits; the top two are the nested and byte-order flags.
    const NLA_TYPE_MASK: u16 = 0x3fff;
    // rtnetlink.h
    pub const RTM_NEWLINK: u16 = 16;
    pub const RTM_DELLINK: u16 = 17;
    pub const RTM_GETLINK: u16 = 18;
    pub const RTM_SETLINK: u16 = 19;
    pub const RTM_NEWADDR: u16 = 20;
    pub const RTM_DELADDR: u16 = 21;
    pub const RTM_GETADDR: u16 = 22;
    pub const RTM_NEWROUTE: u16 = 24;
    pub const RTM_DELROUTE: u16 = 25;
    pub const RTM_GETROUTE: u16 = 26;
    pub const RTA_DST: u16 = 1;
    pub const RTA_OIF: u16 = 4;
    pub const RTA_PREFSRC: u16 = 7;
    pub const RTA_METRICS: u16 = 8;
    pub const RTA_TABLE: u16 = 15;
    pub const RTAX_MTU: u16 = 2;
    pub const RT_TABLE_MAIN: u8 = 254;
    pub const RTPROT_STATIC: u8 = 4;
    pub const RTN_UNICAST: u8 = 1;
    pub const RT_SCOPE_UNIVERSE: u8 = 0;
    pub const RT_SCOPE_SITE: u8 = 200;
    pub const RT_SCOPE_LINK: u8 = 253;
    pub const RT_SCOPE_HOST: u8 = 254;
    pub const RT_SCOPE_NOWHERE: u8 = 255;
    // if_link.h, if.h
    pub const IFLA_IFNAME: u16 = 3;
    pub const IFLA_MTU: u16 = 4;
    pub const IFLA_TXQLEN: u16 = 13;
    pub const IFF_UP: u32 = 0x1;
    pub const IFF_RUNNING: u32 = 0x40;
    pub const IFF_LOWER_UP: u32 = 0x1_0000;
    pub const IFLA_OPERSTATE: u16 = 16;
    /// `IF_OPER_*` of RFC 2863, as `IFLA_OPERSTATE` carries them.
    pub const IF_OPER_UNKNOWN: u8 = 0;
    pub const IF_OPER_UP: u8 = 6;
    // if_addr.h
    pub const IFA_ADDRESS: u16 = 1;
    pub const IFA_LOCAL: u16 = 2;
    pub const IFA_FLAGS: u16 = 8;
    pub const IFA_F_NODAD: u32 = 0x02;
    pub const IFA_F_DADFAILED: u32 = 0x08;
    pub const IFA_F_DEPRECATED: u32 = 0x20;
    pub const IFA_F_TENTATIVE: u32 = 0x40;
    // socket.h
    pub const AF_UNSPEC: u8 = 0;
    pub const AF_INET: u8 = 2;
    pub const AF_INET6: u8 = 10;

    /// Sizes of the fixed headers after the netlink header.
    pub const IFINFOMSG_LEN: usize = 16;
    pub const IFADDRMSG_LEN: usize = 8;
    pub const RTMSG_LEN: usize = 12;

    const fn align4(n: usize) -> usize {
        (n + 3) & !3
    }

    fn u16_at(b: &[u8], at: usize) -> Option<u16> {
        Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
    }

    fn u32_at(b: &[u8], at: usize) -> Option<u32> {
        Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
    }

    pub fn family(addr: IpAddr) -> u8 {
        match addr {
            IpAddr::V4(_) => AF_INET,
            IpAddr::V6(_) => AF_INET6,
        }
    }

    fn addr_bytes(addr: &IpAddr) -> Vec<u8> {
        match addr {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        }
    }

    /// An address attribute's payload: 4 bytes for IPv4, 16 for IPv6, anything else is none.
    pub fn parse_addr(payload: &[u8]) -> Option<IpAddr> {
        if let Ok(b) = <[u8; 4]>::try_from(payload) {
            Some(IpAddr::from(b))
        } else {
            <[u8; 16]>::try_from(payload).ok().map(IpAddr::from)
        }
    }

    /// One request (`NLM_F_REQUEST` is always set), built in place: the netlink header, a
    /// fixed header, attributes.
    #[derive(Debug)]
    pub struct Request {
        seq: u32,
        buf: Vec<u8>,
        /// Start of each open nest, whose length is written when it is closed.
        nests: Vec<usize>,
    }

    impl Request {
        pub fn new(kind: u16, flags: u16, seq: u32) -> Self {
            let mut buf = Vec::with_capacity(128);
            buf.extend_from_slice(&0u32.to_ne_bytes()); // length, written by `finish`
            buf.extend_from_slice(&kind.to_ne_bytes());
            buf.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
            buf.extend_from_slice(&seq.to_ne_bytes());
            buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
            Self { seq, buf, nests: Vec::new() }
        }

        /// `struct ifinfomsg`: family, type, index, flags, change mask.
        pub fn ifinfomsg(mut self, index: u32, flags: u32, change: u32) -> Self {
            self.buf.extend_from_slice(&[AF_UNSPEC, 0, 0, 0]);
            self.buf.extend_from_slice(&index.to_ne_bytes());
            self.buf.extend_from_slice(&flags.to_ne_bytes());
            self.buf.extend_from_slice(&change.to_ne_bytes());
            self
        }

        /// `struct ifaddrmsg`: family, prefix length, flags (low 8), scope, index.
        pub fn ifaddrmsg(mut self, family: u8, prefix_len: u8, scope: u8, index: u32) -> Self {
            self.buf.extend_from_slice(&[family, prefix_len, 0, scope]);
            self.buf.extend_from_slice(&index.to_ne_bytes());
            self
        }

        /// `struct rtmsg` (12 bytes) of a main-table unicast route; no source, TOS or flags.
        pub fn rtmsg(mut self, family: u8, dst_len: u8, protocol: u8, scope: u8) -> Self {
            self.buf.extend_from_slice(&[family, dst_len, 0, 0, RT_TABLE_MAIN, protocol, scope, RTN_UNICAST]);
            self.buf.extend_from_slice(&0u32.to_ne_bytes());
            self
        }

        /// `struct rtmsg` of a route query (`ip route get`): only the family and the
        /// destination's length; the destination follows as `RTA_DST`.
        pub fn rtmsg_query(mut self, family: u8, dst_len: u8) -> Self {
            self.buf.extend_from_slice(&[family, dst_len, 0, 0, 0, 0, 0, 0]);
            self.buf.extend_from_slice(&0u32.to_ne_bytes());
            self
        }

        pub fn attr(mut self, kind: u16, payload: &[u8]) -> Self {
            let len = 4 + payload.len();
            self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
            self.buf.extend_from_slice(&kind.to_ne_bytes());
            self.buf.extend_from_slice(payload);
            self.buf.resize(align4(self.buf.len()), 0);
            self
        }

        pub fn attr_u32(self, kind: u16, value: u32) -> Self {
            self.attr(kind, &value.to_ne_bytes())
        }

        pub fn attr_addr(self, kind: u16, addr: IpAddr) -> Self {
            self.attr(kind, &addr_bytes(&addr))
        }

        pub fn attr_str(self, kind: u16, s: &str) -> Self {
            let mut b = s.as_bytes().to_vec();
            b.push(0);
            self.attr(kind, &b)
        }

        pub fn begin_nest(mut self, kind: u16) -> Self {
            self.nests.push(self.buf.len());
            self.buf.extend_from_slice(&0u16.to_ne_bytes());
            self.buf.extend_from_slice(&kind.to_ne_bytes());
            self
        }

        pub fn end_nest(mut self) -> Self {
            if let Some(start) = self.nests.pop() {
                let len = (self.buf.len() - start) as u16;
                self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
            }
            self
        }

        pub fn seq(&self) -> u32 {
            self.seq
        }

        /// The datagram, with its length written in.
        pub fn finish(mut self) -> Vec<u8> {
            let len = self.buf.len() as u32;
            self.buf[..4].copy_from_slice(&len.to_ne_bytes());
            self.buf
        }
    }

    /// One message of a datagram: the netlink header's fields and the payload after it.
    #[derive(Clone, Copy, Debug)]
    pub struct Message<'a> {
        pub kind: u16,
        pub flags: u16,
        pub seq: u32,
        pub payload: &'a [u8],
    }

    /// Splits a datagram into its messages. A message whose length field cannot be trusted
    /// ends the datagram and counts as bad (`bad` is incremented).
    pub fn messages<'a>(mut datagram: &'a [u8], bad: &mut u64) -> Vec<Message<'a>> {
        let mut out = Vec::new();
        while !datagram.is_empty() {
            let len = u32_at(datagram, 0).map_or(0, |l| l as usize);
            if len < NLMSG_HDRLEN || len > datagram.len() {
                *bad += 1;
                break;
            }
            let (Some(kind), Some(flags), Some(seq)) = (u16_at(datagram, 4), u16_at(datagram, 6), u32_at(datagram, 8))
            else {
                *bad += 1;
                break;
            };
            out.push(Message { kind, flags, seq, payload: &datagram[NLMSG_HDRLEN..len] });
            // Messages are aligned to 4 bytes; the last one may lack its padding.
            datagram = &datagram[align4(len).min(datagram.len())..];
        }
        out
    }

    /// The attributes after a fixed header of `fixed` bytes: (type without flags, payload).
    /// An attribute whose length does not fit ends the list.
    pub fn attrs(payload: &[u8], fixed: usize) -> impl Iterator<Item = (u16, &[u8])> {
        let mut rest = payload.get(fixed..).unwrap_or(&[]);
        std::iter::from_fn(move || {
            let len = usize::from(u16_at(rest, 0)?);
            let kind = u16_at(rest, 2)? & NLA_TYPE_MASK;
            let value = rest.get(4..len)?;
            rest = rest.get(align4(len)..).unwrap_or(&[]);
            Some((kind, value))
        })
    }

    /// The error code of an `NLMSG_ERROR` or `NLMSG_DONE` payload (0: success, or an
    /// acknowledgement; else a negative errno). An empty `DONE` payload is success.
    pub fn error_code(payload: &[u8]) -> i32 {
        u32_at(payload, 0).map_or(0, |c| c as i32)
    }

    /// What the agent reads of a link message.
    #[derive(Debug, PartialEq, Eq)]
    pub struct Link {
        pub index: u32,
        pub flags: u32,
        pub name: Option<String>,
        /// `IFLA_OPERSTATE` (`IF_OPER_*`), if the kernel sent it.
        pub operstate: Option<u8>,
        /// `IFLA_MTU`, if the kernel sent it.
        pub mtu: Option<u32>,
    }

    pub fn link(payload: &[u8]) -> Option<Link> {
        let index = u32_at(payload, 4)?;
        let flags = u32_at(payload, 8)?;
        let _ = payload.get(..IFINFOMSG_LEN)?;
        let mut l = Link { index, flags, name: None, operstate: None, mtu: None };
        for (kind, value) in attrs(payload, IFINFOMSG_LEN) {
            match kind {
                IFLA_IFNAME => {
                    let v = value.split(|&b| b == 0).next().unwrap_or(value);
                    l.name = std::str::from_utf8(v).ok().map(str::to_owned);
                }
                IFLA_OPERSTATE => l.operstate = value.first().copied(),
                IFLA_MTU => l.mtu = u32_at(value, 0),
                _ => {}
            }
        }
        Some(l)
    }

    /// What the agent reads of a route message.
    #[derive(Debug, PartialEq, Eq)]
    pub struct Route {
        pub family: u8,
        pub dst_len: u8,
        /// `RTA_TABLE` when present (tables past 255), else the header's table.
        pub table: u32,
        /// `RTN_*`: unicast, local, broadcast, ...
        pub kind: u8,
        /// None for a default route.
        pub dst: Option<IpAddr>,
        pub oif: Option<u32>,
        /// The source address the kernel picks (answers to a route query carry it).
        pub prefsrc: Option<IpAddr>,
        /// `RTAX_MTU` of `RTA_METRICS`: a route's own MTU, or in the answer to a route
        /// query the path MTU the kernel learned from an ICMP error.
        pub mtu: Option<u32>,
    }

    pub fn route(payload: &[u8]) -> Option<Route> {
        let &[family, dst_len, _src_len, _tos, table, _protocol, _scope, kind] = payload.get(..8)? else {
            return None;
        };
        let _ = payload.get(..RTMSG_LEN)?;
        let mut r =
            Route { family, dst_len, table: u32::from(table), kind, dst: None, oif: None, prefsrc: None, mtu: None };
        for (k, value) in attrs(payload, RTMSG_LEN) {
            match k {
                RTA_DST => r.dst = parse_addr(value),
                RTA_OIF => r.oif = u32_at(value, 0),
                RTA_PREFSRC => r.prefsrc = parse_addr(value),
                RTA_TABLE => r.table = u32_at(value, 0).unwrap_or(r.table),
                RTA_METRICS => {
                    r.mtu = attrs(value, 0).find(|(k, _)| *k == RTAX_MTU).and_then(|(_, v)| u32_at(v, 0));
                }
                _ => {}
            }
        }
        Some(r)
    }

    /// What the agent reads of an address message.
    #[derive(Debug, PartialEq, Eq)]
    pub struct Addr {
        pub family: u8,
        pub prefix_len: u8,
        pub scope: u8,
        pub index: u32,
        /// `IFA_FLAGS` when present (all flags), else the header's low 8 bits.
        pub flags: u32,
        pub local: Option<IpAddr>,
        pub address: Option<IpAddr>,
    }

    pub fn addr(payload: &[u8]) -> Option<Addr> {
        let &[family, prefix_len, flags8, scope] = payload.get(..4)? else { return None };
        let index = u32_at(payload, 4)?;
        let mut a = Addr { family, prefix_len, scope, index, flags: u32::from(flags8), local: None, address: None };
        for (kind, value) in attrs(payload, IFADDRMSG_LEN) {
            match kind {
                IFA_ADDRESS => a.address = parse_addr(value),
                IFA_LOCAL => a.local = parse_addr(value),
                IFA_FLAGS => a.flags = u32_at(value, 0).unwrap_or(a.flags),
                _ => {}
            }
        }
        Some(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    // The reference for the codec: the maintained crate of the field, in the tests only.
    use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload};
    use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, AddressScope};
    use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
    use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteMetric, RouteScope};
    use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

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
        a.header.family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
        a.header.index = index;
        a.header.prefix_len = prefix_len;
        a.attributes.push(AddressAttribute::Address(addr));
        a.attributes.push(AddressAttribute::Flags(flags));
        a
    }

    fn decode(bytes: &[u8], names: &mut HashMap<u32, String>) -> (Vec<NetEvent>, u64) {
        let mut bad = 0;
        let mut out = Vec::new();
        for m in wire::messages(bytes, &mut bad) {
            if !events_from(&m, names, &mut out) {
                bad += 1;
            }
        }
        (out, bad)
    }

    /// Parses a request of the codec with the reference crate.
    fn reference(bytes: &[u8]) -> NetlinkMessage<RouteNetlinkMessage> {
        NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes).expect("the reference crate parses the request")
    }

    #[test]
    fn requests_read_back_by_the_reference_crate() {
        let v4: IpAddr = "198.18.0.7".parse().unwrap();
        let v6: IpAddr = "2001:db8::7".parse().unwrap();

        let m = reference(
            &wire::Request::new(wire::RTM_SETLINK, wire::NLM_F_ACK, 41)
                .ifinfomsg(9, 1, 1)
                .attr_u32(wire::IFLA_MTU, 1400)
                .finish(),
        );
        assert_eq!(m.header.sequence_number, 41);
        assert_eq!(m.header.flags, wire::NLM_F_REQUEST | wire::NLM_F_ACK);
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::SetLink(l)) = m.payload else { panic!("{m:?}") };
        assert_eq!((l.header.index, l.header.flags, l.header.change_mask), (9, LinkFlags::Up, LinkFlags::Up));
        assert_eq!(l.attributes, vec![LinkAttribute::Mtu(1400)]);
        let m = reference(
            &wire::Request::new(wire::RTM_SETLINK, wire::NLM_F_ACK, 42)
                .ifinfomsg(9, 0, 0)
                .attr_u32(wire::IFLA_TXQLEN, 3000)
                .finish(),
        );
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::SetLink(l)) = m.payload else { panic!("{m:?}") };
        assert_eq!(l.attributes, vec![LinkAttribute::TxQueueLen(3000)]);

        let m = reference(
            &wire::Request::new(wire::RTM_GETLINK, 0, 1)
                .ifinfomsg(0, 0, 0)
                .attr_str(wire::IFLA_IFNAME, "ntm0")
                .finish(),
        );
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetLink(l)) = m.payload else { panic!("{m:?}") };
        assert_eq!(l.attributes, vec![LinkAttribute::IfName("ntm0".into())]);

        let m = reference(
            &wire::Request::new(wire::RTM_NEWADDR, wire::NLM_F_CREATE, 2)
                .ifaddrmsg(wire::AF_INET6, 64, 0, 3)
                .attr_addr(wire::IFA_ADDRESS, v6)
                .attr_u32(wire::IFA_FLAGS, wire::IFA_F_NODAD)
                .finish(),
        );
        assert_eq!(m.header.flags, wire::NLM_F_REQUEST | wire::NLM_F_CREATE);
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(a)) = m.payload else { panic!("{m:?}") };
        assert_eq!((a.header.family, a.header.prefix_len, a.header.index), (AddressFamily::Inet6, 64, 3));
        assert_eq!(a.header.scope, AddressScope::Universe);
        assert_eq!(a.attributes, vec![AddressAttribute::Address(v6), AddressAttribute::Flags(AddressFlags::Nodad)]);

        let r = route_request(wire::RTM_NEWROUTE, 0, 3, 5, v4, 15, wire::RT_SCOPE_LINK)
            .begin_nest(wire::RTA_METRICS)
            .attr_u32(wire::RTAX_MTU, 1280)
            .end_nest();
        let m = reference(&r.finish());
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)) = m.payload else { panic!("{m:?}") };
        assert_eq!((r.header.address_family, r.header.destination_prefix_length), (AddressFamily::Inet, 15));
        assert_eq!((r.header.scope, r.header.table), (RouteScope::Link, 254));
        assert_eq!(
            r.attributes,
            vec![
                RouteAttribute::Destination(RouteAddress::from("198.18.0.0".parse::<IpAddr>().unwrap())),
                RouteAttribute::Oif(5),
                RouteAttribute::Metrics(vec![RouteMetric::Mtu(1280)]),
            ]
        );
    }

    #[test]
    fn addresses_and_links_from_the_reference_crate() {
        let mut a = new_addr(4, "2001:db8::9".parse().unwrap(), 56, AddressFlags::Deprecated | AddressFlags::Dadfailed);
        a.header.scope = AddressScope::Site;
        let bytes = datagram(vec![RouteNetlinkMessage::NewAddress(a)]);
        let mut bad = 0;
        let ms = wire::messages(&bytes, &mut bad);
        assert_eq!((ms.len(), bad), (1, 0));
        let got = wire::addr(ms[0].payload).expect("decodes");
        assert_eq!((got.family, got.prefix_len, got.index), (wire::AF_INET6, 56, 4));
        assert_eq!(got.scope, wire::RT_SCOPE_SITE);
        assert_eq!(got.address, Some("2001:db8::9".parse().unwrap()));
        assert_eq!(got.local, None);
        let flags = AddrFlags::from_bits(got.flags);
        assert!(flags.deprecated && flags.dad_failed && !flags.tentative);

        let mut l = LinkMessage::default();
        l.header.index = 12;
        l.header.flags = LinkFlags::Up;
        l.attributes.push(LinkAttribute::Mtu(1500));
        l.attributes.push(LinkAttribute::IfName("eth-wan".into()));
        let bytes = datagram(vec![RouteNetlinkMessage::NewLink(l)]);
        let ms = wire::messages(&bytes, &mut bad);
        let got = wire::link(ms[0].payload).expect("decodes");
        assert_eq!(
            got,
            wire::Link {
                index: 12,
                flags: wire::IFF_UP,
                name: Some("eth-wan".into()),
                operstate: None,
                mtu: Some(1500)
            }
        );
    }

    /// A main-table unicast route message of `family` and prefix length `len`, no attributes.
    fn unicast_route(family: AddressFamily, len: u8) -> RouteMessage {
        let mut r = RouteMessage::default();
        r.header.address_family = family;
        r.header.destination_prefix_length = len;
        r.header.table = 254;
        r.header.kind = netlink_packet_route::route::RouteType::Unicast;
        r
    }

    /// The fields the move detection reads (a route reply's source and interface, a link's
    /// operational state and carrier), built by the reference crate in this host's byte
    /// order: the big-endian builds check them here, the captured bytes below being
    /// little-endian.
    #[test]
    fn route_replies_and_link_states_from_the_reference_crate() {
        let mut r = unicast_route(AddressFamily::Inet6, 128);
        r.attributes.push(RouteAttribute::Destination(RouteAddress::from("2001:db8::1".parse::<IpAddr>().unwrap())));
        r.attributes.push(RouteAttribute::PrefSource(RouteAddress::from("2001:db8:a::2".parse::<IpAddr>().unwrap())));
        r.attributes.push(RouteAttribute::Oif(3));
        let bytes = datagram(vec![RouteNetlinkMessage::NewRoute(r)]);
        let mut bad = 0;
        let ms = wire::messages(&bytes, &mut bad);
        let got = wire::route(ms[0].payload).expect("decodes");
        assert_eq!((got.family, got.oif), (wire::AF_INET6, Some(3)));
        assert_eq!(got.prefsrc, Some("2001:db8:a::2".parse().unwrap()));
        assert_eq!(got.mtu, None);

        // The answer for a destination whose path MTU the kernel learned from an ICMP
        // error carries it among the route's metrics.
        let mut r = unicast_route(AddressFamily::Inet, 32);
        r.attributes.push(RouteAttribute::Oif(3));
        r.attributes.push(RouteAttribute::Metrics(vec![RouteMetric::Lock(0), RouteMetric::Mtu(1400)]));
        let bytes = datagram(vec![RouteNetlinkMessage::NewRoute(r)]);
        let ms = wire::messages(&bytes, &mut bad);
        assert_eq!(wire::route(ms[0].payload).expect("decodes").mtu, Some(1400));

        use netlink_packet_route::link::State;
        for (flags, state, usable) in [
            (LinkFlags::Up | LinkFlags::Running | LinkFlags::LowerUp, State::Up, true),
            (LinkFlags::Up, State::LowerLayerDown, false),
            (LinkFlags::empty(), State::Down, false),
        ] {
            let mut l = LinkMessage::default();
            l.header.index = 3;
            l.header.flags = flags;
            l.attributes.push(LinkAttribute::IfName("wan0".into()));
            l.attributes.push(LinkAttribute::OperState(state));
            let bytes = datagram(vec![RouteNetlinkMessage::NewLink(l)]);
            let ms = wire::messages(&bytes, &mut bad);
            let got = wire::link(ms[0].payload).expect("decodes");
            assert_eq!(got.operstate, Some(u8::from(state)), "{state:?}");
            assert_eq!(link_is_up(&got), usable, "{got:?}");
        }
        assert_eq!(bad, 0);
    }

    #[test]
    fn routes_from_the_reference_crate() {
        let mut r = unicast_route(AddressFamily::Inet, 24);
        r.attributes.push(RouteAttribute::Table(1000));
        r.attributes.push(RouteAttribute::Destination(RouteAddress::from("198.19.10.0".parse::<IpAddr>().unwrap())));
        r.attributes.push(RouteAttribute::Oif(7));
        let bytes = datagram(vec![RouteNetlinkMessage::NewRoute(r)]);
        let mut bad = 0;
        let ms = wire::messages(&bytes, &mut bad);
        let got = wire::route(ms[0].payload).expect("decodes");
        assert_eq!(
            got,
            wire::Route {
                family: wire::AF_INET,
                dst_len: 24,
                table: 1000,
                kind: wire::RTN_UNICAST,
                dst: Some("198.19.10.0".parse().unwrap()),
                oif: Some(7),
                prefsrc: None,
                mtu: None,
            }
        );
        assert_eq!(wire::route(&ms[0].payload[..8]), None, "a short header is no route");

        let m = reference(
            &wire::Request::new(wire::RTM_GETROUTE, wire::NLM_F_DUMP, 4).rtmsg(wire::AF_UNSPEC, 0, 0, 0).finish(),
        );
        assert_eq!(m.header.flags, wire::NLM_F_REQUEST | wire::NLM_F_DUMP);
        assert!(matches!(m.payload, NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetRoute(_))), "{m:?}");
    }

    #[test]
    fn routes_overlapping_a_virtual_prefix() {
        let route = |dst: &str, prefix_len, ifindex| KernelRoute {
            dst: dst.parse().unwrap(),
            prefix_len,
            ifindex,
            ifname: format!("eth{ifindex}"),
        };
        let on_box = [
            route("198.19.10.0", 24, 1),     // a LAN inside the virtual prefix
            route("198.18.0.0", 15, 2),      // a wider route holding it
            route("198.19.0.0", 16, 3),      // the same prefix
            route("198.20.0.0", 16, 1),      // beside it
            route("192.0.2.0", 24, 1),       // elsewhere
            route("2001:db8:ffff::", 48, 1), // the other family
            route("198.19.0.0", 16, 9),      // through the TUN device itself
        ];
        let got = overlapping_routes(&on_box, "198.19.0.0".parse().unwrap(), 16, 9);
        assert_eq!(got, vec![&on_box[0], &on_box[1], &on_box[2]]);
        assert_eq!(on_box[0].to_string(), "198.19.10.0/24 dev eth1");
        let got = overlapping_routes(&on_box, "2001:db8:ffff:1::".parse().unwrap(), 64, 9);
        assert_eq!(got, vec![&on_box[5]]);
        assert!(overlapping_routes(&on_box, "100.64.0.0".parse().unwrap(), 10, 9).is_empty());
    }

    /// Real kernel messages (Linux 6.x, x86_64), captured in a scratch network namespace with
    /// a veth pair `wan0`/`wan1`, 198.51.100.2/24 and 2001:db8:a::2/64 on `wan0` (index 3),
    /// and routes to 192.0.2.0/24 and 2001:db8::/64 through it (agent/testdata/netlink/).
    fn fixture(hex: &str) -> Vec<u8> {
        let hex = hex.trim();
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
    }

    const ROUTE4_REPLY: &str = include_str!("../testdata/netlink/route4-reply.hex");
    const ROUTE6_REPLY: &str = include_str!("../testdata/netlink/route6-reply.hex");
    const ROUTE4_UNREACHABLE: &str = include_str!("../testdata/netlink/route4-unreachable.hex");
    const LINK_UP: &str = include_str!("../testdata/netlink/link-up.hex");
    const LINK_NO_CARRIER: &str = include_str!("../testdata/netlink/link-no-carrier.hex");
    const LINK_DOWN: &str = include_str!("../testdata/netlink/link-down.hex");

    #[test]
    fn route_query_request_read_back_by_the_reference_crate() {
        let dst: IpAddr = "2001:db8::1".parse().unwrap();
        let m = reference(
            &wire::Request::new(wire::RTM_GETROUTE, wire::NLM_F_ACK, 9)
                .rtmsg_query(wire::AF_INET6, 128)
                .attr_addr(wire::RTA_DST, dst)
                .finish(),
        );
        assert_eq!(m.header.flags, wire::NLM_F_REQUEST | wire::NLM_F_ACK);
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetRoute(r)) = m.payload else { panic!("{m:?}") };
        assert_eq!((r.header.address_family, r.header.destination_prefix_length), (AddressFamily::Inet6, 128));
        assert_eq!(r.attributes, vec![RouteAttribute::Destination(RouteAddress::from(dst))]);
    }

    /// The answers to `ip route get 192.0.2.1` and `ip route get 2001:db8::1`: the source the
    /// kernel picks and the interface it sends out of. Netlink speaks the host's byte order
    /// and these bytes come from a little-endian kernel, so a big-endian build (mips, under
    /// qemu) skips them; the tests that build messages with the reference crate run there.
    #[test]
    #[cfg_attr(target_endian = "big", ignore = "bytes captured from a little-endian kernel")]
    fn route_query_replies_from_the_kernel() {
        for (hex, family, dst, src) in [
            (ROUTE4_REPLY, wire::AF_INET, "192.0.2.1", "198.51.100.2"),
            (ROUTE6_REPLY, wire::AF_INET6, "2001:db8::1", "2001:db8:a::2"),
        ] {
            let bytes = fixture(hex);
            let mut bad = 0;
            let ms = wire::messages(&bytes, &mut bad);
            assert_eq!((ms.len(), bad, ms[0].kind), (1, 0, wire::RTM_NEWROUTE));
            let r = wire::route(ms[0].payload).expect("decodes");
            assert_eq!((r.family, r.oif), (family, Some(3)));
            assert_eq!(r.dst, Some(dst.parse().unwrap()));
            assert_eq!(r.prefsrc, Some(src.parse().unwrap()));
            for n in 1..bytes.len() {
                let mut bad = 0;
                assert!(wire::messages(&bytes[..n], &mut bad).is_empty() && bad == 1, "prefix {n}");
            }
        }
        // With the link down the kernel has no route: an error, read as "no path".
        let bytes = fixture(ROUTE4_UNREACHABLE);
        let mut bad = 0;
        let ms = wire::messages(&bytes, &mut bad);
        assert_eq!((ms.len(), ms[0].kind), (1, wire::NLMSG_ERROR));
        assert_eq!(wire::error_code(ms[0].payload), -libc::ENETUNREACH);
        assert!(is_no_route(libc::ENETUNREACH));
    }

    /// `wan0` up; without carrier (`wan1` set down); set down itself. Little-endian bytes,
    /// like the route replies above.
    #[test]
    #[cfg_attr(target_endian = "big", ignore = "bytes captured from a little-endian kernel")]
    fn link_state_from_the_kernel() {
        for (hex, flags_up, operstate, usable) in [
            (LINK_UP, true, wire::IF_OPER_UP, true),
            (LINK_NO_CARRIER, true, 3, false), // IF_OPER_LOWERLAYERDOWN
            (LINK_DOWN, false, 2, false),      // IF_OPER_DOWN
        ] {
            let bytes = fixture(hex);
            let mut bad = 0;
            let ms = wire::messages(&bytes, &mut bad);
            assert_eq!((ms.len(), bad, ms[0].kind), (1, 0, wire::RTM_NEWLINK));
            let l = wire::link(ms[0].payload).expect("decodes");
            assert_eq!((l.index, l.name.as_deref()), (3, Some("wan0")));
            assert_eq!(l.flags & wire::IFF_UP != 0, flags_up);
            assert_eq!(l.operstate, Some(operstate));
            assert_eq!(link_is_up(&l), usable, "{l:?}");
            let mut names = HashMap::new();
            let (events, bad) = decode(&bytes, &mut names);
            assert_eq!((events, bad), (vec![NetEvent::LinkChanged { ifindex: 3, up: usable }], 0));
        }
    }

    #[test]
    fn acknowledgements_and_errors() {
        // An NLMSG_ERROR carries a negative errno (0 is an acknowledgement) and the request.
        let mut bytes = wire::Request::new(wire::NLMSG_ERROR, 0, 7).finish();
        bytes.extend_from_slice(&(-libc::EEXIST).to_ne_bytes());
        bytes.extend_from_slice(&[0; 16]);
        let len = bytes.len() as u32;
        bytes[..4].copy_from_slice(&len.to_ne_bytes());
        let mut bad = 0;
        let ms = wire::messages(&bytes, &mut bad);
        assert_eq!((ms[0].kind, ms[0].seq, bad), (wire::NLMSG_ERROR, 7, 0));
        assert_eq!(wire::error_code(ms[0].payload), -libc::EEXIST);
        assert_eq!(wire::error_code(&[]), 0, "a DONE without payload is success");
    }

    #[test]
    fn events_from_a_datagram() {
        let mut link = LinkMessage::default();
        link.header.index = 7;
        link.header.flags = LinkFlags::Up | LinkFlags::Running | LinkFlags::LowerUp;
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
        let b = wire::Request::new(0x7777, 0, 1).finish();
        let (events, bad) = decode(&b, &mut HashMap::new());
        assert!(events.is_empty());
        assert_eq!(bad, 0);
        // A length field past the datagram, or shorter than the header, ends it as bad.
        for len in [15u32, 17, 1000] {
            let mut b = b.clone();
            b[..4].copy_from_slice(&len.to_ne_bytes());
            assert_eq!(decode(&b, &mut HashMap::new()).1, 1, "length {len}");
        }
        // A link message too short for its fixed header is counted.
        let b = wire::Request::new(wire::RTM_NEWLINK, 0, 1).attr_u32(1, 0).finish();
        assert_eq!(decode(&b, &mut HashMap::new()), (vec![], 1));
    }
}
