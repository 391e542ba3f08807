//! A key in use: seals with a counter that only increases, opens with replay protection.

use super::{nonce, Aead, CryptoError, ReplayWindow, TAG_LEN};
use crate::keys::{Key, KeyKind};
use crate::time::Instant;
use crate::wire::{Envelope, Header, KeyId, Message, Sender, HEADER_LEN};
use core::ops::Range;
use zeroize::Zeroizing;

/// Bodies must be shorter than this: CCM's limit with a 12-byte nonce (2^24 bytes).
const SEAL_MAX: usize = 1 << 24;

/// A message [`Channel::open_in_place`] authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    /// Where the plaintext body is in the buffer.
    pub body: Range<usize>,
    /// True if its counter is the newest accepted from its sender so far (it moved the
    /// replay window's top); false for an older one accepted late (reordered, or delayed
    /// on a path the sender has left). Only the newest says where the sender is now.
    pub newest: bool,
}

/// One symmetric key of kind `K` as held by one role: the only way to seal or open under
/// it. Sealing takes the next counter of `local`'s nonce space; opening checks that the
/// sender may use `K`, is not `local` (a reflection), and that the counter is fresh in
/// that sender's replay window.
#[derive(Debug)]
pub struct Channel<K: KeyKind> {
    key: Key<K>,
    aead: Aead,
    id: KeyId,
    local: Sender,
    next_counter: u64,
    /// The first counter this channel may not seal with (see [`Channel::limit_counter`]).
    limit: u64,
    /// One window per peer sender; at most two peers for any key kind.
    windows: heapless::Vec<(Sender, ReplayWindow), 2>,
    expires: Instant,
}

impl<K: KeyKind> Channel<K> {
    /// Takes `key` into use as `local`, named `id`, until `expires`. Fails if `local` may
    /// not seal under `K` (API misuse).
    pub fn new(key: Key<K>, id: KeyId, local: Sender, expires: Instant) -> Result<Self, CryptoError> {
        if !K::SENDERS.contains(&local) {
            return Err(CryptoError::SenderNotAllowed(local));
        }
        let aead = Aead::new(&key);
        Ok(Channel { key, aead, id, local, next_counter: 0, limit: u64::MAX, windows: heapless::Vec::new(), expires })
    }

    /// The key (to hand it on, e.g. K_tun from DC to RS).
    pub fn key(&self) -> &Key<K> {
        &self.key
    }

    /// The key id carried in headers.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// Our role under this key.
    pub fn local(&self) -> Sender {
        self.local
    }

    /// When the key stops being usable.
    pub fn expires(&self) -> Instant {
        self.expires
    }

    /// Moves the expiry (a re-login or re-share extended the key).
    pub fn set_expires(&mut self, at: Instant) {
        self.expires = at;
    }

    /// True once the lifetime is over.
    pub fn is_expired(&self, now: Instant) -> bool {
        now >= self.expires
    }

    /// The next counter this channel will seal with (for persistence: a restored channel
    /// must resume above every counter it ever used).
    pub fn next_counter(&self) -> u64 {
        self.next_counter
    }

    /// Resumes sealing at `counter` (after restoring from storage). Never lowers it.
    pub fn resume_at(&mut self, counter: u64) {
        self.next_counter = self.next_counter.max(counter);
    }

    /// Seals nothing at or above `limit` (until it is moved up): for a channel whose
    /// counters are reserved in a store before use, so that it can never seal past what
    /// a restart would resume at, however fast it seals between two saves. Sealing then
    /// fails with [`CryptoError::CounterNotReserved`].
    pub fn limit_counter(&mut self, limit: u64) {
        self.limit = limit;
    }

    /// The first counter this channel may not seal with (`u64::MAX` if unlimited).
    pub fn counter_limit(&self) -> u64 {
        self.limit
    }

    /// One more than the newest counter accepted from `peer` (0 if none), to store with a
    /// key so that a restored channel can refuse replays of older messages.
    pub fn peer_top(&self, peer: Sender) -> u64 {
        self.windows.iter().find(|(s, _)| *s == peer).map_or(0, |(_, w)| w.top())
    }

    /// Refuses every counter from `peer` below `floor` (after restoring from storage).
    pub fn set_peer_floor(&mut self, peer: Sender, floor: u64) {
        if !K::SENDERS.contains(&peer) || peer == self.local {
            return;
        }
        match self.windows.iter_mut().find(|(s, _)| *s == peer) {
            Some((_, w)) if w.top() >= floor => {}
            Some((_, w)) => *w = ReplayWindow::with_floor(floor),
            None => {
                // At most two peers per kind (see `window_for`), so this fits.
                let _ = self.windows.push((peer, ReplayWindow::with_floor(floor)));
            }
        }
    }

    fn take_counter(&mut self) -> Result<u64, CryptoError> {
        let c = self.next_counter;
        // u64::MAX is never used, so `c + 1` cannot overflow and the window's top stays
        // representable.
        if c == u64::MAX {
            return Err(CryptoError::CounterExhausted);
        }
        if c >= self.limit {
            return Err(CryptoError::CounterNotReserved);
        }
        self.next_counter = c + 1;
        Ok(c)
    }

    /// Seals `msg` into a new buffer: header, ciphertext, tag.
    pub fn seal(&mut self, now: Instant, msg: &Message) -> Result<Vec<u8>, CryptoError> {
        let body_len = msg.body_len();
        let mut buf = vec![0u8; HEADER_LEN + body_len + TAG_LEN];
        let body = buf
            .get_mut(HEADER_LEN..HEADER_LEN + body_len)
            .ok_or(CryptoError::Wire(crate::wire::WireError::BufferTooSmall))?;
        msg.emit_body(body)?;
        self.seal_in_place(now, msg.msg_type(), &mut buf)?;
        Ok(buf)
    }

    /// Seals in place. `buf` is `[header space | plaintext body | tag space]`; the header
    /// and tag are written here. This is the data plane's path: no allocation.
    pub fn seal_in_place(
        &mut self,
        now: Instant,
        msg_type: crate::wire::MsgType,
        buf: &mut [u8],
    ) -> Result<(), CryptoError> {
        if self.is_expired(now) {
            return Err(CryptoError::Expired);
        }
        let body_end = buf
            .len()
            .checked_sub(TAG_LEN)
            .filter(|&e| e >= HEADER_LEN)
            .ok_or(CryptoError::Wire(crate::wire::WireError::BufferTooSmall))?;
        let counter = self.take_counter()?;
        let header = Header { msg_type, sealed: true, sender: self.local, key_id: self.id, counter };
        let hbytes = header.to_bytes();
        let (head, rest) = buf.split_at_mut(HEADER_LEN);
        head.copy_from_slice(&hbytes);
        let (body, tag_space) = rest.split_at_mut(body_end - HEADER_LEN);
        let tag = self.aead.seal(&nonce(self.local, counter), &hbytes, body)?;
        tag_space.copy_from_slice(&tag);
        Ok(())
    }

    /// How many more messages this channel can seal before its counter runs out or
    /// reaches its limit ([`Channel::limit_counter`]).
    pub fn counters_left(&self) -> u64 {
        // The limit is at most u64::MAX, which is never used.
        self.limit.saturating_sub(self.next_counter)
    }

    /// [`Channel::seal_in_place`] for several buffers at once, each with the next counter
    /// in order, sealed side by side ([`ntm_aead::Aead::seal_many`]): the data plane's
    /// batch. Everything that can fail is checked before any counter is taken (the key's
    /// expiry, every buffer's room for header and tag, enough counters left for all), and
    /// then nothing fails: either every buffer is sealed or none is and no counter is
    /// spent. The error is the one [`Channel::seal_in_place`] would give for the first
    /// buffer that fails in turn.
    pub fn seal_many_in_place(
        &mut self,
        now: Instant,
        msg_type: crate::wire::MsgType,
        bufs: &mut [&mut [u8]],
    ) -> Result<(), CryptoError> {
        if self.is_expired(now) {
            return Err(CryptoError::Expired);
        }
        for b in bufs.iter() {
            let body = b
                .len()
                .checked_sub(TAG_LEN + HEADER_LEN)
                .ok_or(CryptoError::Wire(crate::wire::WireError::BufferTooSmall))?;
            if body >= SEAL_MAX {
                return Err(CryptoError::Wire(crate::wire::WireError::TooLong("sealed body")));
            }
        }
        let left = self.counters_left();
        if (bufs.len() as u64) > left {
            // The counter the first buffer without one would take.
            return Err(if self.next_counter.saturating_add(left) == u64::MAX {
                CryptoError::CounterExhausted
            } else {
                CryptoError::CounterNotReserved
            });
        }
        let first = self.next_counter;
        // Checked above: `first + len` is at most the limit.
        self.next_counter = first + bufs.len() as u64;
        let mut counter = first;
        for chunk in bufs.chunks_mut(ntm_aead::LANES) {
            let mut msgs: heapless::Vec<ntm_aead::Message<'_>, { ntm_aead::LANES }> = heapless::Vec::new();
            let mut tags: heapless::Vec<&mut [u8], { ntm_aead::LANES }> = heapless::Vec::new();
            for b in chunk.iter_mut() {
                let header = Header { msg_type, sealed: true, sender: self.local, key_id: self.id, counter };
                let (head, rest) = b.split_at_mut(HEADER_LEN);
                head.copy_from_slice(&header.to_bytes());
                let body_len = rest.len() - TAG_LEN;
                let (body, tag) = rest.split_at_mut(body_len);
                let m =
                    ntm_aead::Message { nonce: nonce(self.local, counter), aad: head, buf: body, tag: [0; TAG_LEN] };
                // At most LANES of each: the chunk's length.
                let _ = msgs.push(m);
                let _ = tags.push(tag);
                counter += 1;
            }
            let mut out = [Ok(()); ntm_aead::LANES];
            self.aead.batch().seal_many(&mut msgs, &mut out);
            for ((m, tag), r) in msgs.iter().zip(tags.iter_mut()).zip(out) {
                // Lengths were checked above; a failure here would be a bug, and the
                // counters it took stay spent.
                r.map_err(|_| CryptoError::Wire(crate::wire::WireError::TooLong("sealed body")))?;
                tag.copy_from_slice(&m.tag);
            }
        }
        Ok(())
    }

    /// [`Channel::open_in_place`] for several buffers at once: `out[i]` is exactly what
    /// opening `bufs[i]` after `bufs[..i]`, one at a time, would give. The headers are
    /// checked first (replay window included), the messages that pass are opened side by
    /// side ([`ntm_aead::Aead::open_many`]), and then, in order, each is checked against
    /// the replay window again and committed to it only if its tag verified: so of two
    /// copies of one counter in a batch one opens and the other is
    /// [`CryptoError::Replayed`], and a forged message never moves the window. The body of
    /// a buffer whose result is an error may hold garbage. Buffers past the end of `out`
    /// are not touched.
    pub fn open_many_in_place(
        &mut self,
        now: Instant,
        bufs: &mut [&mut [u8]],
        out: &mut [Result<Opened, CryptoError>],
    ) {
        let n = bufs.len().min(out.len());
        let (bufs, out) = (bufs.get_mut(..n).unwrap_or_default(), out.get_mut(..n).unwrap_or_default());
        for (bufs, out) in bufs.chunks_mut(ntm_aead::LANES).zip(out.chunks_mut(ntm_aead::LANES)) {
            self.open_lanes(now, bufs, out);
        }
    }

    /// [`Channel::open_many_in_place`] for at most `ntm_aead::LANES` buffers.
    fn open_lanes(&mut self, now: Instant, bufs: &mut [&mut [u8]], out: &mut [Result<Opened, CryptoError>]) {
        /// What the checks before opening found for one buffer.
        enum Pre {
            /// Refused by its header (not by the replay window): final.
            Refused(CryptoError),
            /// Its header is ours: (sender, counter), and the body's end if there is
            /// room for a tag (else it is truncated). Whether it was opened is in `lane`,
            /// whether it authenticated in `verified`.
            Admitted(Sender, u64, Option<usize>),
        }
        let mut pre: heapless::Vec<Pre, { ntm_aead::LANES }> = heapless::Vec::new();
        let mut msgs: heapless::Vec<ntm_aead::Message<'_>, { ntm_aead::LANES }> = heapless::Vec::new();
        // For each buffer: the index of its message in `msgs`, if it is opened.
        let mut lane: [Option<usize>; ntm_aead::LANES] = [None; ntm_aead::LANES];
        for (i, b) in bufs.iter_mut().enumerate() {
            let admitted =
                Envelope::new_checked(&b[..]).map_err(CryptoError::from).and_then(|env| self.admit_header(now, &env));
            let (sender, counter) = match admitted {
                Ok(sc) => sc,
                Err(e) => {
                    let _ = pre.push(Pre::Refused(e));
                    continue;
                }
            };
            let body_end = b.len().checked_sub(TAG_LEN).filter(|&e| e >= HEADER_LEN);
            let _ = pre.push(Pre::Admitted(sender, counter, body_end));
            // A counter the window refuses now it refuses after any commit too (the
            // window only moves up and fills): no need to open it.
            let (Some(end), Ok(())) = (body_end, self.check_window(sender, counter)) else { continue };
            let (head, rest) = b.split_at_mut(HEADER_LEN);
            let (body, tag) = rest.split_at_mut(end - HEADER_LEN);
            let mut t = [0u8; TAG_LEN];
            t.copy_from_slice(tag);
            if let Some(slot) = lane.get_mut(i) {
                *slot = Some(msgs.len());
            }
            let _ = msgs.push(ntm_aead::Message { nonce: nonce(sender, counter), aad: head, buf: body, tag: t });
        }
        let mut verified = [Ok(()); ntm_aead::LANES];
        self.aead.batch().open_many(&mut msgs, &mut verified);
        drop(msgs);
        // In order, as one at a time: the window as the earlier buffers left it, then the
        // length, then the tag; commit only what authenticated.
        for ((p, o), l) in pre.iter().zip(out.iter_mut()).zip(lane) {
            *o = match *p {
                Pre::Refused(e) => Err(e),
                Pre::Admitted(sender, counter, body_end) => self.check_window(sender, counter).and_then(|()| {
                    let end = body_end.ok_or(CryptoError::Wire(crate::wire::WireError::Truncated))?;
                    match l.and_then(|k| verified.get(k)) {
                        Some(Ok(())) => {}
                        _ => return Err(CryptoError::Forged),
                    }
                    let newest = self.window_for(sender).commit(counter);
                    Ok(Opened { body: HEADER_LEN..end, newest })
                }),
            };
        }
    }

    /// Checks the header of `buf` against this channel and returns (sender, counter).
    fn admit(&self, now: Instant, env: &Envelope<&[u8]>) -> Result<(Sender, u64), CryptoError> {
        let (sender, counter) = self.admit_header(now, env)?;
        self.check_window(sender, counter)?;
        Ok((sender, counter))
    }

    /// Is `counter` from `sender` fresh in its replay window (now)?
    fn check_window(&self, sender: Sender, counter: u64) -> Result<(), CryptoError> {
        match self.windows.iter().find(|(s, _)| *s == sender) {
            Some((_, w)) => w.check(counter),
            None => Ok(()),
        }
    }

    /// [`Channel::admit`] but for the replay window.
    fn admit_header(&self, now: Instant, env: &Envelope<&[u8]>) -> Result<(Sender, u64), CryptoError> {
        if !env.sealed() {
            return Err(CryptoError::NotSealed);
        }
        if env.key_id() != self.id {
            return Err(CryptoError::WrongKeyId);
        }
        let sender = env.sender();
        if sender == self.local {
            return Err(CryptoError::Reflected);
        }
        if !K::SENDERS.contains(&sender) {
            return Err(CryptoError::SenderNotAllowed(sender));
        }
        if self.is_expired(now) {
            return Err(CryptoError::Expired);
        }
        Ok((sender, env.counter()))
    }

    /// Opens a sealed message in place: where its plaintext body is in `buf`, and whether
    /// it is the newest from its sender. On any error `buf`'s body may hold garbage and
    /// the window is unchanged.
    pub fn open_in_place(&mut self, now: Instant, buf: &mut [u8]) -> Result<Opened, CryptoError> {
        let (sender, counter) = {
            let env = Envelope::new_checked(&buf[..])?;
            self.admit(now, &env)?
        };
        let body_end = buf
            .len()
            .checked_sub(TAG_LEN)
            .filter(|&e| e >= HEADER_LEN)
            .ok_or(CryptoError::Wire(crate::wire::WireError::Truncated))?;
        let (head, rest) = buf.split_at_mut(HEADER_LEN);
        let (body, tag) = rest.split_at_mut(body_end - HEADER_LEN);
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(tag);
        self.aead.open(&nonce(sender, counter), head, body, &t)?;
        let newest = self.window_for(sender).commit(counter);
        Ok(Opened { body: HEADER_LEN..body_end, newest })
    }

    fn window_for(&mut self, sender: Sender) -> &mut ReplayWindow {
        if let Some(i) = self.windows.iter().position(|(s, _)| *s == sender) {
            // `i` came from `position`, so it is in bounds.
            #[allow(clippy::indexing_slicing)]
            return &mut self.windows[i].1;
        }
        // `admit` let through only senders in K::SENDERS other than `local`. No kind has
        // more than three senders, so there are at most two peers and the push succeeds.
        let _ = self.windows.push((sender, ReplayWindow::new()));
        let last = self.windows.len() - 1;
        #[allow(clippy::indexing_slicing)]
        &mut self.windows[last].1
    }

    /// Opens a sealed message into a new, self-zeroizing buffer and parses its body.
    pub fn open(&mut self, now: Instant, bytes: &[u8]) -> Result<(Header, Message), CryptoError> {
        self.open_ordered(now, bytes).map(|(header, msg, _)| (header, msg))
    }

    /// [`Channel::open`], also saying whether the message is the newest from its sender
    /// ([`Opened::newest`]).
    pub fn open_ordered(&mut self, now: Instant, bytes: &[u8]) -> Result<(Header, Message, bool), CryptoError> {
        let mut buf = Zeroizing::new(bytes.to_vec());
        let opened = self.open_in_place(now, &mut buf)?;
        let env = Envelope::new_checked(&buf[..])?;
        let header = Header::parse(&env);
        let body = buf.get(opened.body).ok_or(CryptoError::Wire(crate::wire::WireError::Truncated))?;
        let msg = Message::parse_body(header.msg_type, body)?;
        Ok((header, msg, opened.newest))
    }
}

/// Encodes a plain (TLS-carried) message: header then body, no tag.
pub fn plain(sender: Sender, msg: &Message) -> Vec<u8> {
    let header = Header::plain(msg.msg_type(), sender);
    let mut out = header.to_bytes().to_vec();
    out.extend_from_slice(&msg.body_to_vec());
    out
}

/// Parses a plain message (one that TLS protects).
pub fn parse_plain(bytes: &[u8]) -> Result<(Header, Message), CryptoError> {
    let env = Envelope::new_checked(bytes)?;
    if env.sealed() {
        return Err(CryptoError::Wire(crate::wire::WireError::BadValue("sealed message where plain expected")));
    }
    let header = Header::parse(&env);
    let msg = Message::parse_body(header.msg_type, env.body())?;
    Ok((header, msg))
}

impl<K: KeyKind> Channel<K> {
    /// Encoded length helper for callers sizing buffers.
    pub fn sealed_len(msg: &Message) -> usize {
        HEADER_LEN + msg.body_len() + TAG_LEN
    }
}
