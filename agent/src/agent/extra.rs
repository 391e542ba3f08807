//! The node's extra sockets ([`Local`]): the many sockets of a search for a direct path
//! through a NAT that maps per destination, and the ones kept for peers found through
//! them (ntm_proto's `engine::node` spray.rs says why).
//!
//! A socket is opened when the engine first sends from it (`Via::UdpFrom`), on an
//! ephemeral port of the destination's family, non-blocking and sized like the tunnel
//! socket, and registered with the poll under a token of its own
//! (`EXTRA_BASE + k` for `Local(k)`). It is read like the tunnel socket (batches, the same
//! budget), its datagrams go to `Node::handle_datagram_on`, and it is closed when the
//! node releases it (`NodeEvent::LocalsReleased`). At most [`LOCALS_MAX`] are open (the
//! engine keeps to it; this is the agent's own bound). A socket that cannot be opened
//! (descriptors, memory) is counted and logged once per run: the search goes on with the
//! others, and what the engine sends from it is counted as a send error.

use super::datapath::{send_one, size_buffers};
use super::{Agent, EXTRA_BASE};
use mio::net::UdpSocket;
use mio::{Interest, Registry, Token};
use ntm_proto::engine::node::LOCALS_MAX;
use ntm_proto::engine::Local;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

/// The extra sockets that are open, with what opening them cost.
#[derive(Debug, Default)]
pub(super) struct Extra {
    open: HashMap<Local, Socket>,
    /// Sockets opened since start.
    pub(super) opened: u64,
    /// Sockets that could not be opened (or were over [`LOCALS_MAX`]).
    pub(super) failures: u64,
    /// New sockets take coalesced groups, as the tunnel sockets do (`crate::inbox`).
    pub(super) coalescing: bool,
}

#[derive(Debug)]
struct Socket {
    sock: UdpSocket,
    v4: bool,
}

/// The token of `local`'s socket.
pub(super) fn token(local: Local) -> Token {
    Token(EXTRA_BASE + usize::from(local.0))
}

/// The extra socket a token names, if it is one.
pub(super) fn local_of(token: Token) -> Option<Local> {
    token.0.checked_sub(EXTRA_BASE).and_then(|k| u16::try_from(k).ok()).map(Local)
}

fn open(registry: &Registry, local: Local, v4: bool, coalescing: bool) -> io::Result<UdpSocket> {
    let mut sock =
        if v4 { super::bind_udp(SocketAddr::from(([0, 0, 0, 0], 0)))? } else { super::datapath::bind_udp6_only(0)? };
    size_buffers(&sock);
    super::datapath::queue_errors(&sock);
    if coalescing {
        super::datapath::coalesce(&sock);
    }
    registry.register(&mut sock, token(local), Interest::READABLE)?;
    Ok(sock)
}

impl Extra {
    /// None open yet; new ones take coalesced groups with `coalescing`.
    pub(super) fn new(coalescing: bool) -> Self {
        Extra { coalescing, ..Extra::default() }
    }

    /// How many are open.
    pub(super) fn len(&self) -> usize {
        self.open.len()
    }

    /// The descriptor of `local`'s socket, if open.
    pub(super) fn fd(&self, local: Local) -> Option<RawFd> {
        self.open.get(&local).map(|s| s.sock.as_raw_fd())
    }

    /// The socket `local` for a datagram to `to`, opened if it is not yet (None if it
    /// cannot be, or it is open in the other family).
    fn socket(&mut self, registry: &Registry, local: Local, to: SocketAddr) -> Option<&UdpSocket> {
        if !self.open.contains_key(&local) {
            let opened = if self.open.len() >= LOCALS_MAX || local == Local::MAIN {
                Err(io::Error::other(format!("{} extra sockets are open already", self.open.len())))
            } else {
                open(registry, local, to.is_ipv4(), self.coalescing)
            };
            match opened {
                Ok(sock) => {
                    self.opened += 1;
                    self.open.insert(local, Socket { sock, v4: to.is_ipv4() });
                }
                Err(e) => {
                    if self.failures == 0 {
                        log::warn!(
                            "cannot open an extra UDP socket for finding a direct path: {e} (counted in status as \
                             traversal.socket_failures; logged once)"
                        );
                    }
                    self.failures += 1;
                    return None;
                }
            }
        }
        self.open.get(&local).filter(|s| s.v4 == to.is_ipv4()).map(|s| &s.sock)
    }

    /// Closes `locals` (those open).
    pub(super) fn close(&mut self, registry: &Registry, locals: &[Local]) {
        for l in locals {
            if let Some(mut s) = self.open.remove(l) {
                let _ = registry.deregister(&mut s.sock);
            }
        }
    }
}

impl Agent {
    /// Sends one datagram from the extra socket `local`, opening it at first use.
    pub(super) fn send_extra(&mut self, local: Local, to: SocketAddr, bytes: &[u8]) {
        let sent = self.extra.socket(self.poll.registry(), local, to).is_some_and(|s| send_one(s, to, bytes).is_ok());
        if sent {
            self.counters.udp_out += 1;
        } else {
            self.counters.send_errors += 1;
        }
    }

    /// Reads the extra socket `local` (as the tunnel socket, within the same budget).
    pub(super) fn read_extra(&mut self, local: Local) {
        let Some(s) = self.extra.open.get(&local) else { return };
        let fd = s.sock.as_raw_fd();
        self.read_tunnel(token(local), fd, local);
    }

    /// The ICMP errors queued for `local`'s socket.
    pub(super) fn read_extra_errors(&mut self, local: Local) {
        let Some(fd) = self.extra.fd(local) else { return };
        self.read_socket_errors(fd);
    }

    /// Closes the sockets the node is done with.
    pub(super) fn release_extra(&mut self, locals: &[Local]) {
        self.extra.close(self.poll.registry(), locals);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_socket_and_no_other_source() {
        for k in [1u16, 2, 288, u16::MAX] {
            assert_eq!(local_of(token(Local(k))), Some(Local(k)));
        }
        assert_eq!(local_of(Token(EXTRA_BASE - 1)), None);
        assert_eq!(local_of(super::super::UDP4), None);
    }

    #[test]
    fn sockets_open_at_first_use_up_to_the_bound_and_close_when_released() {
        let poll = mio::Poll::new().unwrap();
        let mut extra = Extra::default();
        let to: SocketAddr = "127.0.0.1:9".parse().unwrap();
        for k in 1..=u16::try_from(LOCALS_MAX).unwrap() {
            assert!(extra.socket(poll.registry(), Local(k), to).is_some(), "socket {k}");
        }
        let port = extra.socket(poll.registry(), Local(1), to).unwrap().local_addr().unwrap().port();
        assert_ne!(port, 0);
        assert_eq!((extra.len(), extra.opened, extra.failures), (LOCALS_MAX, LOCALS_MAX as u64, 0));
        // One more is refused and counted; the main socket is never an extra one.
        let over = u16::try_from(LOCALS_MAX + 1).unwrap();
        assert!(extra.socket(poll.registry(), Local(over), to).is_none());
        assert!(extra.socket(poll.registry(), Local::MAIN, to).is_none());
        assert_eq!(extra.failures, 2);
        // Open in IPv4: not a socket for IPv6.
        assert!(extra.socket(poll.registry(), Local(1), "[::1]:9".parse().unwrap()).is_none());
        let released: Vec<Local> = (1..=10).map(Local).collect();
        extra.close(poll.registry(), &released);
        assert_eq!(extra.len(), LOCALS_MAX - 10);
        assert!(extra.fd(Local(1)).is_none() && extra.fd(Local(11)).is_some());
        assert!(extra.socket(poll.registry(), Local(over), to).is_some(), "room again");
    }
}
