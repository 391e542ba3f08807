//! The servers' UDP sockets, and replies from the address a peer wrote to.
//!
//! A socket bound to a wildcard address (`0.0.0.0:p`, `[::]:p`) receives on every address
//! of the host, but a plain `send_to` lets the kernel pick the source address by route,
//! which on a host with several addresses need not be the one the peer wrote to; a NAT
//! in front of the peer drops such a reply, and a connected peer socket ignores it. So a
//! wildcard socket asks for each datagram's destination (IP_PKTINFO / IPV6_RECVPKTINFO),
//! the driver remembers, per peer, which socket and address it last wrote to
//! ([`Locals`]), and a datagram to that peer leaves from that address (`sendmsg` with the
//! address as the packet info's source). A peer never heard from (a server the daemon
//! writes to first) gets the kernel's choice. A socket bound to one address needs none
//! of this and keeps plain `recv_from` / `send_to`.

use mio::net::UdpSocket;
use nix::libc;
use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags, SockaddrStorage,
};
use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;

/// Most peers whose local address is remembered; over it the map starts again (a peer
/// that is forgotten is remembered again at its next datagram, and until then gets the
/// kernel's choice of source), so no source can grow it.
pub const LOCALS_MAX: usize = 1 << 16;

/// Where a peer's datagrams arrived: the socket (index in the driver's list), the
/// destination address, and for an IPv6 link-local one the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Local {
    /// The socket's index.
    pub socket: usize,
    /// The address the peer wrote to.
    pub addr: IpAddr,
    /// The interface, kept for IPv6 link-local addresses only (0 otherwise: the route
    /// decides, as for any other datagram).
    pub ifindex: u32,
}

/// The local address each peer last wrote to (wildcard sockets only), bounded.
#[derive(Debug, Default)]
pub struct Locals {
    map: HashMap<SocketAddr, Local>,
}

impl Locals {
    /// Records that `peer` wrote to `local`.
    pub fn learn(&mut self, peer: SocketAddr, local: Local) {
        if self.map.get(&peer) == Some(&local) {
            return;
        }
        if self.map.len() >= LOCALS_MAX && !self.map.contains_key(&peer) {
            self.map.clear();
        }
        self.map.insert(peer, local);
    }

    /// Where `peer` last wrote to, if known.
    pub fn get(&self, peer: &SocketAddr) -> Option<Local> {
        if self.map.is_empty() {
            return None;
        }
        self.map.get(peer).copied()
    }

    /// Forgets `peer` (its local address went away).
    pub fn forget(&mut self, peer: &SocketAddr) {
        self.map.remove(peer);
    }

    /// How many peers are remembered.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True if none is.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// A received datagram's destination address, and for an IPv6 link-local one the
/// interface it came in on (0 otherwise).
pub type Dst = (IpAddr, u32);

/// One of a server's UDP sockets.
#[derive(Debug)]
pub struct ServerUdp {
    /// The socket.
    pub sock: UdpSocket,
    /// Its family (known at bind: asking the socket is a system call, too dear per
    /// relayed packet).
    pub v4: bool,
    /// Bound to a wildcard address: receives with the destination, replies from it.
    pub wildcard: bool,
    /// Which of the engine's sockets it is: [`ntm_proto::engine::Local::MAIN`] for the
    /// configured port, another for an extra one (the DC's mapping port).
    pub local: ntm_proto::engine::Local,
}

/// Control message room for one packet info of either family.
pub fn cmsg_buffer() -> Vec<u8> {
    let v4 = nix::sys::socket::cmsg_space::<libc::in_pktinfo>();
    let v6 = nix::sys::socket::cmsg_space::<libc::in6_pktinfo>();
    vec![0u8; v4.max(v6)]
}

impl ServerUdp {
    /// Wraps a bound socket; on a wildcard one, asks the kernel for each datagram's
    /// destination.
    pub fn new(sock: UdpSocket, bound: SocketAddr) -> io::Result<Self> {
        let wildcard = bound.ip().is_unspecified();
        if wildcard {
            if bound.is_ipv4() {
                setsockopt(&sock, sockopt::Ipv4PacketInfo, &true)?;
            } else {
                setsockopt(&sock, sockopt::Ipv6RecvPacketInfo, &true)?;
            }
        }
        Ok(ServerUdp { sock, v4: bound.is_ipv4(), wildcard, local: ntm_proto::engine::Local::MAIN })
    }

    /// Receives one datagram: its length, its source, and (on a wildcard socket) the
    /// address it was sent to with the interface it came in on.
    pub fn recv(&self, buf: &mut [u8], cmsg: &mut [u8]) -> io::Result<(usize, SocketAddr, Option<Dst>)> {
        if !self.wildcard {
            let (n, from) = self.sock.recv_from(buf)?;
            return Ok((n, from, None));
        }
        let mut iov = [IoSliceMut::new(buf)];
        let msg = recvmsg::<SockaddrStorage>(self.sock.as_raw_fd(), &mut iov, Some(cmsg), MsgFlags::empty())
            .map_err(io::Error::from)?;
        let from = msg.address.as_ref().and_then(socket_addr).ok_or_else(|| io::Error::other("no source address"))?;
        let mut local = None;
        // A truncated control buffer (it is sized for one packet info) gives no address:
        // the reply then leaves from the kernel's choice, as without packet info.
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let Some(d) = packet_info(&c) {
                    local = Some(d);
                }
            }
        }
        Ok((msg.bytes, from, local))
    }

    /// Sends one datagram to `to`, from `local` if given (a wildcard socket's) or from the
    /// kernel's choice.
    pub fn send(&self, bytes: &[u8], to: SocketAddr, local: Option<Local>) -> io::Result<()> {
        let Some(local) = local.filter(|_| self.wildcard) else {
            return self.sock.send_to(bytes, to).map(|_| ());
        };
        let iov = [IoSlice::new(bytes)];
        let dst = SockaddrStorage::from(to);
        let info = SourceInfo::new(local);
        let sent = sendmsg(self.sock.as_raw_fd(), &iov, &[info.message()], MsgFlags::empty(), Some(&dst));
        sent.map(|_| ()).map_err(io::Error::from)
    }
}

/// The destination address (and for IPv6 link-local, the interface) a packet info
/// control message gives; None for other messages and for addresses no reply can leave
/// from (unspecified, broadcast, multicast).
pub fn packet_info(c: &ControlMessageOwned) -> Option<Dst> {
    match c {
        ControlMessageOwned::Ipv4PacketInfo(pi) => {
            let addr = Ipv4Addr::from(u32::from_be(pi.ipi_addr.s_addr));
            (!addr.is_unspecified() && !addr.is_broadcast() && !addr.is_multicast()).then_some((IpAddr::V4(addr), 0))
        }
        ControlMessageOwned::Ipv6PacketInfo(pi) => {
            let addr = Ipv6Addr::from(pi.ipi6_addr.s6_addr);
            let ifindex = if addr.is_unicast_link_local() { pi.ipi6_ifindex } else { 0 };
            (!addr.is_unspecified() && !addr.is_multicast()).then_some((IpAddr::V6(addr), ifindex))
        }
        _ => None,
    }
}

/// The packet info that makes a datagram leave from a local address.
pub(crate) enum SourceInfo {
    /// IPv4.
    V4(libc::in_pktinfo),
    /// IPv6.
    V6(libc::in6_pktinfo),
}

impl SourceInfo {
    /// From `local`.
    pub(crate) fn new(local: Local) -> Self {
        match local.addr {
            IpAddr::V4(a) => SourceInfo::V4(libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr { s_addr: u32::from(a).to_be() },
                ipi_addr: libc::in_addr { s_addr: 0 },
            }),
            IpAddr::V6(a) => SourceInfo::V6(libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr { s6_addr: a.octets() },
                ipi6_ifindex: local.ifindex,
            }),
        }
    }

    /// As a control message.
    pub(crate) fn message(&self) -> ControlMessage<'_> {
        match self {
            SourceInfo::V4(pi) => ControlMessage::Ipv4PacketInfo(pi),
            SourceInfo::V6(pi) => ControlMessage::Ipv6PacketInfo(pi),
        }
    }
}

/// The standard form of a received source address.
pub use ntm_io::udp::socket_addr;

#[cfg(test)]
mod tests {
    use super::{Local, Locals, LOCALS_MAX};
    use std::net::SocketAddr;

    #[test]
    fn the_map_of_local_addresses_stays_bounded() {
        let mut m = Locals::default();
        let local = Local { socket: 0, addr: "192.0.2.20".parse().unwrap(), ifindex: 0 };
        for port in 0..=LOCALS_MAX {
            let peer = SocketAddr::from(([198, 51, 100, 2], u16::try_from(port % 65_536).unwrap()));
            m.learn(peer, local);
            let other = SocketAddr::from(([198, 51, 100, 3], u16::try_from(port % 65_536).unwrap()));
            m.learn(other, local);
            assert!(m.len() <= LOCALS_MAX);
        }
        let peer: SocketAddr = "198.51.100.3:7".parse().unwrap();
        m.learn(peer, local);
        assert_eq!(m.get(&peer), Some(local));
    }
}
