//! What the agent's and the relay's batched UDP paths share: whether the kernel segments
//! a message into datagrams for us (UDP segmentation offload), the size of a busy
//! socket's buffers, and receiving many messages per call, coalesced groups among them
//! ([`RecvMany`]).

mod recv;

pub use recv::{coalesce, Message, RecvMany, GROUP_MAX};

use nix::sys::socket::{sendmsg, setsockopt, sockopt, ControlMessage, MsgFlags, SockaddrStorage};
use std::io::IoSlice;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::OnceLock;
use std::time::Duration;

/// Whether UDP segmentation offload (UDP_SEGMENT, Linux 4.18) works on this machine, tried
/// once per process: a message of 250 bytes with a segment size of 100 is sent over
/// loopback and must arrive as datagrams of 100, 100 and 50 bytes. A kernel before 4.18
/// ignores the control message and would send one long datagram; qemu-user hands the
/// control message of a big-endian guest to the host kernel in the guest's byte order.
pub fn segmentation_works() -> bool {
    trials().0
}

/// Whether a socket with `UDP_GRO` receives a segmented message whole, with its datagram
/// length, on this machine; tried once per process over loopback after the segmentation
/// trial, with the same message. A kernel before 5.0 refuses the option; under qemu-user
/// the control message may not come through as sent.
pub fn coalescing_works() -> bool {
    trials().1
}

/// Both trials, once per process: (segmentation, coalescing).
fn trials() -> (bool, bool) {
    static WORKS: OnceLock<(bool, bool)> = OnceLock::new();
    *WORKS.get_or_init(|| {
        let (segments, coalesces) = try_both().unwrap_or((false, false));
        let said = match (segments, coalesces) {
            (true, true) => "used, both",
            (true, false) => "segmentation used, receive coalescing not available",
            _ => "not available",
        };
        log::info!("UDP segmentation offload and receive coalescing: {said}");
        (segments, coalesces)
    })
}

/// The segmentation trial, then (if it passed) the coalescing trial on the same sockets.
fn try_both() -> std::io::Result<(bool, bool)> {
    // An address, not the string "127.0.0.1:0": binding to a string may resolve it, which
    // links the C library's DNS resolver into the static binaries (28 KiB on MIPS).
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let rx = std::net::UdpSocket::bind(loopback)?;
    rx.set_read_timeout(Some(Duration::from_millis(200)))?;
    let tx = std::net::UdpSocket::bind(loopback)?;
    send_trial(&rx, &tx)?;
    let mut buf = [0u8; 300];
    for want in [100, 100, 50] {
        let (n, from) = rx.recv_from(&mut buf)?;
        if n != want || from != tx.local_addr()? {
            return Ok((false, false));
        }
    }
    Ok((true, recv::try_coalescing(&rx, &tx).unwrap_or(false)))
}

/// Sends the trial message from `tx` to `rx`: 250 bytes with a segment size of 100.
fn send_trial(rx: &std::net::UdpSocket, tx: &std::net::UdpSocket) -> std::io::Result<()> {
    let to = SockaddrStorage::from(rx.local_addr()?);
    let message = [0x5a_u8; 250];
    let segment: u16 = 100;
    let cmsgs = [ControlMessage::UdpGsoSegments(&segment)];
    sendmsg(tx.as_raw_fd(), &[IoSlice::new(&message)], &cmsgs, MsgFlags::empty(), Some(&to))?;
    Ok(())
}

/// The IPv4 or IPv6 address in `s` (None for any other family).
pub fn socket_addr(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(a) = s.as_sockaddr_in() {
        return Some(SocketAddr::from(std::net::SocketAddrV4::from(*a)));
    }
    s.as_sockaddr_in6().map(|a| SocketAddr::from(std::net::SocketAddrV6::from(*a)))
}

/// Sets a socket's receive and send buffers to `recv` and `send` bytes: as root beyond the
/// sysctl limits (SO_RCVBUFFORCE), else up to them. Whether either way took; the kernel
/// charges only what is queued.
pub fn size_buffers(fd: impl AsFd, recv: usize, send: usize) -> bool {
    let fd = fd.as_fd();
    let forced =
        setsockopt(&fd, sockopt::RcvBufForce, &recv).and_then(|()| setsockopt(&fd, sockopt::SndBufForce, &send));
    forced.is_ok()
        || setsockopt(&fd, sockopt::RcvBuf, &recv).and_then(|()| setsockopt(&fd, sockopt::SndBuf, &send)).is_ok()
}

/// With `on`, an IPv4 UDP socket sets Don't Fragment on every datagram it sends and the
/// kernel refuses (EMSGSIZE) a datagram larger than the path MTU it knows instead of
/// fragmenting it (`IP_MTU_DISCOVER` = `IP_PMTUDISC_DO`); without, the kernel's default
/// (`IP_PMTUDISC_WANT`), which fragments what is larger. The default decides Don't
/// Fragment by the size of what the socket hands over, which for a segmented message is
/// the whole message: its datagrams go without it, routers on a narrow path cut them into
/// fragments without a word, and where fragments are dropped the tunnel stalls. With it,
/// such a router answers ICMP "fragmentation needed" and the sender learns the path MTU.
/// nix 0.31 has no wrapper for this option.
#[allow(unsafe_code)]
pub fn dont_fragment(fd: RawFd, on: bool) -> std::io::Result<()> {
    use nix::libc;
    let value: libc::c_int = if on { libc::IP_PMTUDISC_DO } else { libc::IP_PMTUDISC_WANT };
    let len = libc::socklen_t::try_from(std::mem::size_of_val(&value)).unwrap_or(4);
    // SAFETY: the kernel reads `len` bytes from a pointer to an int that outlives the call;
    // a descriptor that is not an open socket gets an error (EBADF, ENOTSOCK), nothing else.
    let r = unsafe { libc::setsockopt(fd, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, (&raw const value).cast(), len) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_segmentation_trial_is_answered_by_the_kernel() {
        // Linux 4.18 and later (this host's kernel) cut the trial message correctly; under
        // qemu-user for a big-endian guest the trial must fail rather than glue datagrams.
        if cfg!(target_endian = "little") {
            assert!(segmentation_works());
        }
    }

    #[test]
    fn dont_fragment_is_taken_by_a_udp_socket_only() {
        let s = std::net::UdpSocket::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
        dont_fragment(s.as_raw_fd(), true).expect("an IPv4 UDP socket takes it");
        dont_fragment(s.as_raw_fd(), false).expect("and back");
        let not_a_socket = std::fs::File::open("/dev/null").unwrap();
        let e = dont_fragment(not_a_socket.as_raw_fd(), true).expect_err("not a socket");
        assert_eq!(e.raw_os_error(), Some(nix::libc::ENOTSOCK), "{e}");
    }

    #[test]
    fn buffers_are_sized() {
        let s = std::net::UdpSocket::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
        // Sizes under the sysctl limits, so that either way (forced as root, or not) sets
        // them; Linux reports twice what it was given (its bookkeeping).
        assert!(size_buffers(&s, 6000, 5000));
        assert_eq!(nix::sys::socket::getsockopt(&s, sockopt::RcvBuf).unwrap(), 12000);
        assert_eq!(nix::sys::socket::getsockopt(&s, sockopt::SndBuf).unwrap(), 10000);
    }
}
