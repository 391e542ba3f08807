//! One turn of a mio loop, and the sources to read again.
//!
//! Every source is read for at most a budget per turn (the caller's, per kind of
//! source), so a flood on one socket cannot starve the others, the timers or the
//! housekeeping. A source that used up its budget with input left is not reported by the
//! poll again (readiness is edge-triggered): the reader says so with [`Turn::spent`], and
//! the next turn hands it out again without sleeping, after every other ready source.

use mio::{Events, Poll, Token};
use std::io;

/// A source to handle this turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ready {
    /// The source.
    pub token: Token,
    /// It may have input (always, for a source read again).
    pub readable: bool,
    /// It may take output.
    pub writable: bool,
    /// It reported an error (EPOLLERR): for a socket with IP_RECVERR, its error queue has
    /// something (an ICMP error about a datagram it sent).
    pub error: bool,
}

/// The poll's events, and the sources to read on the next turn.
#[derive(Debug)]
pub struct Turn {
    events: Events,
    again: Vec<Token>,
    /// The list handed out by [`Turn::wait`], given back by [`Turn::done`] to reuse its
    /// allocation.
    spare: Vec<Ready>,
    turns: u64,
    spent: u64,
}

impl Turn {
    /// Room for `events` readiness events per turn.
    pub fn new(events: usize) -> Self {
        Turn { events: Events::with_capacity(events), again: Vec::new(), spare: Vec::new(), turns: 0, spent: 0 }
    }

    /// Waits for input for at most `timeout`, or not at all if a source is to be read
    /// again; then the sources to handle: those the poll reported, then those read again
    /// (each once). Nothing if a signal interrupted the wait.
    pub fn wait(&mut self, poll: &mut Poll, timeout: std::time::Duration) -> io::Result<Vec<Ready>> {
        let timeout = if self.again.is_empty() { timeout } else { std::time::Duration::ZERO };
        let mut ready = std::mem::take(&mut self.spare);
        ready.clear();
        match poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(ready),
            Err(e) => return Err(e),
        }
        self.turns += 1;
        ready.extend(self.events.iter().map(|e| Ready {
            token: e.token(),
            readable: e.is_readable(),
            writable: e.is_writable(),
            error: e.is_error(),
        }));
        for token in self.again.drain(..) {
            match ready.iter_mut().find(|r| r.token == token) {
                Some(r) => r.readable = true,
                None => ready.push(Ready { token, readable: true, writable: false, error: false }),
            }
        }
        Ok(ready)
    }

    /// Gives back the list [`Turn::wait`] returned, for the next turn to reuse.
    pub fn done(&mut self, ready: Vec<Ready>) {
        self.spare = ready;
    }

    /// `token` used up its read budget with input left: read it on the next turn.
    pub fn spent(&mut self, token: Token) {
        self.spent += 1;
        self.again(token);
    }

    /// Read `token` on the next turn (it was held back, or its retry time came).
    pub fn again(&mut self, token: Token) {
        if !self.again.contains(&token) {
            self.again.push(token);
        }
    }

    /// Whether a source waits to be read again (the next wait will not sleep).
    pub fn pending(&self) -> bool {
        !self.again.is_empty()
    }

    /// Turns taken (waits that were not interrupted).
    pub fn turns(&self) -> u64 {
        self.turns
    }

    /// Times a source used up its budget with input left.
    pub fn budget_exhausted(&self) -> u64 {
        self.spent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::net::UdpSocket;
    use mio::Interest;
    use std::time::Duration;

    #[test]
    fn a_source_that_spent_its_budget_is_handed_out_again_without_sleeping() {
        let mut poll = Poll::new().unwrap();
        let mut turn = Turn::new(16);
        let (a, b) = (Token(1), Token(2));
        let mut sock = UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        poll.registry().register(&mut sock, b, Interest::READABLE).unwrap();
        // Nothing to read and nothing to read again: the wait sleeps its timeout.
        let started = std::time::Instant::now();
        let ready = turn.wait(&mut poll, Duration::from_millis(50)).unwrap();
        assert!(ready.is_empty());
        assert!(started.elapsed() >= Duration::from_millis(50));
        turn.done(ready);
        // A spent source comes back at once, and only once however often it is named.
        turn.spent(a);
        turn.spent(a);
        assert!(turn.pending());
        let started = std::time::Instant::now();
        let ready = turn.wait(&mut poll, Duration::from_secs(10)).unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(ready, vec![Ready { token: a, readable: true, writable: false, error: false }]);
        turn.done(ready);
        assert!(!turn.pending());
        assert_eq!(turn.budget_exhausted(), 2);
        // Reported by the poll and read again: one entry, the poll's first.
        let to = sock.local_addr().unwrap();
        UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap().send_to(b"x", to).unwrap();
        turn.again(b);
        turn.again(a);
        let ready = turn.wait(&mut poll, Duration::from_secs(5)).unwrap();
        let tokens: Vec<Token> = ready.iter().map(|r| r.token).collect();
        assert!(tokens == vec![b, a], "{tokens:?}");
        assert_eq!(turn.turns(), 3);
        assert_eq!(turn.budget_exhausted(), 2);
    }
}
