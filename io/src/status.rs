//! The status socket: a Unix stream socket where `status` readers connect, get one
//! answer (JSON, made by the daemon) and see the connection close.
//!
//! An answer can be larger than the socket buffer (a DC lists its nodes), and the loop
//! must never block on a reader: what does not fit is kept and written as the reader
//! drains it, for at most [`STATUS_REPLIES_MAX`] readers at once, each cut off if it has
//! not taken its answer within [`STATUS_REPLY_TIMEOUT`].

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Status readers served at once; a reader that comes when as many are still being
/// written to gets what fits in its socket buffer.
pub const STATUS_REPLIES_MAX: usize = 8;
/// A reader that has not taken its whole answer in this time is cut off.
pub const STATUS_REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// An answer still being written to its reader.
#[derive(Debug)]
struct Reply {
    sock: UnixStream,
    text: Vec<u8>,
    sent: usize,
    opened: std::time::Instant,
}

impl Reply {
    /// Writes what the reader still lacks; true when the reply is finished (all written,
    /// or the reader went away).
    fn write(&mut self) -> bool {
        loop {
            let Some(rest) = self.text.get(self.sent..).filter(|rest| !rest.is_empty()) else { return true };
            match self.sock.write(rest) {
                Ok(0) => return true,
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
    }
}

/// The listening socket and the answers being written.
#[derive(Debug)]
pub struct StatusSocket {
    listener: UnixListener,
    path: PathBuf,
    /// Slot `i` is registered as `Token(reply_base + i)`.
    replies: Vec<Option<Reply>>,
    reply_base: usize,
}

impl StatusSocket {
    /// Binds the socket at `path`, readable and writable by the daemon's user only (the
    /// status names peers and where they are), and registers it as `token`; answers being
    /// written are registered as the tokens from `reply_base` to `reply_base +`
    /// [`STATUS_REPLIES_MAX`]. A socket file left by a run that ended without removing it
    /// is replaced; anything else at the path (a typo naming another file, a daemon
    /// still answering there) is an error rather than something to delete.
    pub fn bind(path: &Path, registry: &Registry, token: Token, reply_base: usize) -> io::Result<Self> {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, "exists and is not a socket"));
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(io::ErrorKind::AddrInUse, "another daemon answers on it"));
            }
            std::fs::remove_file(path)?;
        }
        let mut listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        registry.register(&mut listener, token, Interest::READABLE)?;
        Ok(StatusSocket { listener, path: path.to_owned(), replies: Vec::new(), reply_base })
    }

    /// Where it is bound.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next reader waiting (`WouldBlock` when none is).
    pub fn accept(&self) -> io::Result<UnixStream> {
        self.listener.accept().map(|(s, _)| s)
    }

    /// Gives `text` to a reader: what fits now is written at once, the rest as the
    /// reader drains it (see [`StatusSocket::writable`]).
    pub fn answer(&mut self, registry: &Registry, sock: UnixStream, text: Vec<u8>) {
        let mut reply = Reply { sock, text, sent: 0, opened: std::time::Instant::now() };
        if reply.write() {
            return; // dropping the stream closes it
        }
        let slot = match self.replies.iter().position(Option::is_none) {
            Some(i) => i,
            None if self.replies.len() < STATUS_REPLIES_MAX => {
                self.replies.push(None);
                self.replies.len() - 1
            }
            None => return, // too many slow readers: this one gets what fitted
        };
        let token = Token(self.reply_base + slot);
        if registry.register(&mut reply.sock, token, Interest::WRITABLE).is_ok() {
            if let Some(s) = self.replies.get_mut(slot) {
                *s = Some(reply);
            }
        }
    }

    /// Whether `token` is one of the answers' tokens.
    pub fn owns(&self, token: Token) -> bool {
        (self.reply_base..self.reply_base + STATUS_REPLIES_MAX).contains(&token.0)
    }

    /// The reader of answer `token` may take more.
    pub fn writable(&mut self, registry: &Registry, token: Token) {
        let Some(slot) = token.0.checked_sub(self.reply_base).and_then(|i| self.replies.get_mut(i)) else { return };
        if slot.as_mut().is_some_and(Reply::write) {
            if let Some(mut reply) = slot.take() {
                let _ = registry.deregister(&mut reply.sock);
            }
        }
    }

    /// Answers being written.
    pub fn pending(&self) -> usize {
        self.replies.iter().flatten().count()
    }

    /// When the oldest answer being written is to be cut off.
    pub fn deadline(&self) -> Option<std::time::Instant> {
        self.replies.iter().flatten().map(|r| r.opened + STATUS_REPLY_TIMEOUT).min()
    }

    /// Cuts off the readers that took longer than [`STATUS_REPLY_TIMEOUT`].
    pub fn sweep(&mut self, registry: &Registry, now: std::time::Instant) {
        for slot in &mut self.replies {
            if slot.as_ref().is_some_and(|r| now.saturating_duration_since(r.opened) > STATUS_REPLY_TIMEOUT) {
                if let Some(mut reply) = slot.take() {
                    let _ = registry.deregister(&mut reply.sock);
                }
            }
        }
    }

    /// Removes the socket file (when the daemon stops: a file left behind would only
    /// mislead `status`).
    pub fn remove_file(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll};
    use std::io::Read;

    const LISTEN: Token = Token(1);
    const BASE: usize = 100;

    fn temp_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ntm-io-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("status.sock")
    }

    /// Accepts the reader that just connected (waiting for it at most 5 s).
    fn accept(s: &StatusSocket) -> UnixStream {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match s.accept() {
                Ok(sock) => return sock,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && std::time::Instant::now() < until => {
                    std::thread::yield_now()
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
    }

    #[test]
    fn a_large_answer_is_written_as_the_reader_drains_it_without_blocking() {
        let path = temp_path("large");
        let mut poll = Poll::new().unwrap();
        let mut s = StatusSocket::bind(&path, poll.registry(), LISTEN, BASE).unwrap();
        let mode = std::fs::metadata(&path).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
        assert_eq!(mode.unwrap() & 0o777, 0o600);
        let mut reader = std::os::unix::net::UnixStream::connect(&path).unwrap();
        reader.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        // Far more than a Unix socket buffer holds.
        let text: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
        let started = std::time::Instant::now();
        s.answer(poll.registry(), accept(&s), text.clone());
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "answer blocked");
        assert_eq!(s.pending(), 1, "the rest waits for the reader");
        assert!(s.deadline().is_some());
        // Read it all, driving the writes from the poll as a daemon's loop would.
        let mut got = Vec::new();
        let mut events = Events::with_capacity(8);
        let mut buf = vec![0u8; 64 * 1024];
        while got.len() < text.len() && started.elapsed() < std::time::Duration::from_secs(20) {
            let n = reader.read(&mut buf).unwrap();
            assert!(n > 0, "closed after {} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
            poll.poll(&mut events, Some(std::time::Duration::ZERO)).unwrap();
            for ev in &events {
                assert!(s.owns(ev.token()), "{:?}", ev.token());
                s.writable(poll.registry(), ev.token());
            }
        }
        assert_eq!(got.len(), text.len());
        assert!(got == text, "the answer arrived changed");
        assert_eq!(s.pending(), 0);
        // Finished: the daemon's side is closed.
        assert_eq!(reader.read(&mut buf).unwrap(), 0);
        s.remove_file();
        assert!(!path.exists());
    }

    #[test]
    fn readers_beyond_the_limit_get_what_fits_and_slow_ones_are_cut_off() {
        let path = temp_path("slow");
        let poll = Poll::new().unwrap();
        let mut s = StatusSocket::bind(&path, poll.registry(), LISTEN, BASE).unwrap();
        let text = vec![b'x'; 4_000_000];
        let mut readers = Vec::new();
        for _ in 0..STATUS_REPLIES_MAX + 2 {
            readers.push(std::os::unix::net::UnixStream::connect(&path).unwrap());
            s.answer(poll.registry(), accept(&s), text.clone());
        }
        assert_eq!(s.pending(), STATUS_REPLIES_MAX);
        // The readers over the limit see their answer end early.
        let mut extra = readers.pop().unwrap();
        let mut seen = Vec::new();
        extra.read_to_end(&mut seen).unwrap();
        assert!(!seen.is_empty() && seen.len() < text.len(), "{}", seen.len());
        // A sweep before the timeout keeps the others; one after it cuts them off.
        s.sweep(poll.registry(), std::time::Instant::now());
        assert_eq!(s.pending(), STATUS_REPLIES_MAX);
        assert!(s.deadline().unwrap() <= std::time::Instant::now() + STATUS_REPLY_TIMEOUT);
        let late = std::time::Instant::now() + STATUS_REPLY_TIMEOUT + std::time::Duration::from_millis(1);
        s.sweep(poll.registry(), late);
        assert_eq!(s.pending(), 0);
        assert_eq!(s.deadline(), None);
        s.remove_file();
    }

    #[test]
    fn binding_replaces_a_stale_socket_and_refuses_anything_else() {
        let path = temp_path("bind");
        let poll = Poll::new().unwrap();
        // A socket file nobody answers on (left by a run that was killed).
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let s = StatusSocket::bind(&path, poll.registry(), LISTEN, BASE).unwrap();
        // A daemon answers there now: a second one must not take the path over.
        let e = StatusSocket::bind(&path, poll.registry(), LISTEN, BASE).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        drop(s);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"not a socket").unwrap();
        let e = StatusSocket::bind(&path, poll.registry(), LISTEN, BASE).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
    }
}
