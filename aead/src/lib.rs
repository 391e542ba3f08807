//! AES-128-CCM with a 16-byte tag and a 12-byte nonce, in place and without allocation,
//! one message at a time or several at once.
//!
//! This is a crate of its own for speed without size. The `aes` crate is generic, and
//! generic code is compiled in the crate that names the concrete type. Here that is this
//! small crate, so the workspace's release profile can build it (with `aes` and `cipher`)
//! at opt-level 3 and leave everything else at "z". Keys, nonces and replay rules live in
//! `ntm-proto`, which wraps this.
//!
//! # The composition (RFC 3610, NIST SP 800-38C)
//!
//! With a 12-byte nonce the length field is L = 3 bytes (so a message is under 2^24
//! bytes) and the tag M = 16 bytes. The tag is the CBC-MAC of
//! `B0 | encoded aad | zero padding | payload | zero padding`, where
//! `B0 = flags | nonce | length (3 bytes, big-endian)`, with flags
//! `0x40 if aad is not empty | ((M - 2) / 2) << 3 | (L - 1)`, and the aad is preceded by
//! its length (2 bytes under 0xFF00, else `FF FE` and 4 bytes, else `FF FF` and 8). The
//! tag is sent encrypted with the counter block A0; the payload is encrypted with A1, A2,
//! ..., where `A_i = (L - 1) | nonce | i (3 bytes, big-endian)`.
//!
//! # Why several at once
//!
//! CBC-MAC is a chain: each block's input needs the previous block's output, so one
//! message's MAC waits for the latency of every AES call in turn (tens of cycles a block
//! with AES-NI), while the unit could work on eight independent blocks in that time. So
//! [`Aead::seal_many`] and [`Aead::open_many`] run the MAC chains of up to [`LANES`]
//! messages side by side: each pass through the cipher's parallel block function takes
//! the next MAC block of every message that has one; around the runs of whole payload
//! blocks (B0, the aad, a last partial block) it fills the slots left with counter blocks
//! (CTR has no chain), and the rest go in full passes at the end. When sealing, a counter
//! block for payload block `j` is used only after the MAC read plaintext block `j`. With
//! an AES unit that pipelines (AES-NI, ARMv8), the runs of whole blocks go as many passes
//! at a time as a pass has blocks, and after each MAC pass one lane encrypts a pass of the
//! blocks its MAC read before the run, so the counter passes fill the time the chains wait. When opening, every message is decrypted first (in passes of
//! consecutive counter blocks), so all chains can then run to their ends. The A0 blocks
//! (for the tags) of a batch go in passes of their own. Messages of any lengths go in one batch; a short
//! one leaves its slots to the others once done. A batch of one ([`Aead::seal`], [`Aead::open`]) runs its chain
//! with one block per call and its counter blocks in wide passes before or after it, as
//! the `ccm` crate does (measured as fast: `ntm-bench --only crypto` compares the three).
//!
//! On x86_64 CPUs with VAES (`wide`), the passes go through this crate's own backend:
//! eight blocks in four 256-bit registers, two blocks per instruction, and the runs of
//! whole payload blocks keep the chains' states in registers from pass to pass (with the
//! trailing counter passes between them, when sealing) instead of storing and loading
//! them around every pass. Elsewhere the `aes` crate's backends, as before.
//!
//! Tags are compared in constant time. A message that does not verify has its buffer
//! zeroed (no unverified plaintext leaves), and the others in its batch are unaffected.
//! The key schedule is cleared on drop (the `aes` crate's `zeroize` feature).
//!
//! The `ccm` crate (RustCrypto) is the reference this is tested against.

#![no_std]

#[cfg(target_arch = "x86_64")]
mod wide;

use aes::cipher::consts::U16;
use aes::cipher::generic_array::GenericArray;
use aes::cipher::typenum::Unsigned;
use aes::cipher::{BlockBackend, BlockClosure, BlockEncrypt, BlockSizeUser, KeyInit, ParBlocks};
use aes::Aes128Enc;
use subtle::ConstantTimeEq;

/// Length of the key.
pub const KEY_LEN: usize = 16;
/// Length of the nonce.
pub const NONCE_LEN: usize = 12;
/// Length of the authentication tag.
pub const TAG_LEN: usize = 16;
/// Messages processed side by side: the AES-NI backend's parallel blocks. A batch may be
/// longer; it is processed [`LANES`] messages at a time.
pub const LANES: usize = 8;

/// Whether this CPU runs the passes through VAES (x86_64 with AES-NI, AVX2 and VAES; see
/// `wide`): what every [`Aead::new`] here does.
pub fn vaes_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return wide::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Bytes of the length field (L) for a 12-byte nonce.
const L: usize = 15 - NONCE_LEN;
/// A message must be shorter than this (the L-byte length field).
const MAX_LEN: usize = 1 << (8 * L);
/// B0's flags without the Adata bit: `((M - 2) / 2) << 3 | (L - 1)`.
const B0_FLAGS: u8 = (((TAG_LEN - 2) / 2) << 3) as u8 | (L - 1) as u8;
/// Most parallel blocks used in one pass (no backend of the `aes` crate has more).
const PAR_MAX: usize = 16;

/// Why sealing or opening failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AeadError {
    /// The message is over CCM's limit for a 12-byte nonce (2^24 bytes).
    TooLong,
    /// The tag did not verify: tampered, or sealed under another key or nonce.
    Forged,
}

/// One message of a batch for [`Aead::seal_many`] or [`Aead::open_many`].
pub struct Message<'a> {
    /// Its nonce.
    pub nonce: [u8; NONCE_LEN],
    /// The associated data (authenticated, not encrypted).
    pub aad: &'a [u8],
    /// The payload, encrypted or decrypted in place.
    pub buf: &'a mut [u8],
    /// The tag: written by sealing, checked by opening.
    pub tag: [u8; TAG_LEN],
}

impl core::fmt::Debug for Message<'_> {
    /// Lengths only: the buffer may hold plaintext.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Message").field("aad", &self.aad.len()).field("buf", &self.buf.len()).finish_non_exhaustive()
    }
}

/// An AES-128-CCM instance with its key schedule expanded once. The `aes` crate's
/// `zeroize` feature clears the schedule on drop (and `wide::Keys` its own).
pub struct Aead {
    narrow: Aes128Enc,
    /// The same key for VAES, where the CPU has it (x86_64): the passes go through it.
    #[cfg(target_arch = "x86_64")]
    wide: Option<wide::Keys>,
}

impl core::fmt::Debug for Aead {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Aead(redacted)")
    }
}

impl Aead {
    /// Expands `key`.
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        Aead {
            narrow: Aes128Enc::new(GenericArray::from_slice(key)),
            #[cfg(target_arch = "x86_64")]
            wide: wide::Keys::new(key),
        }
    }

    /// Expands `key` for the `aes` crate's backends only, even where the CPU has VAES
    /// (tests and benchmarks compare the two).
    #[doc(hidden)]
    pub fn without_vaes(key: &[u8; KEY_LEN]) -> Self {
        Aead {
            narrow: Aes128Enc::new(GenericArray::from_slice(key)),
            #[cfg(target_arch = "x86_64")]
            wide: None,
        }
    }

    /// Whether the passes go through VAES (x86_64 CPUs that have it).
    pub fn uses_vaes(&self) -> bool {
        #[cfg(target_arch = "x86_64")]
        return self.wide.is_some();
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// Encrypts `buf` in place and returns the tag.
    pub fn seal(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut [u8]) -> Result<[u8; TAG_LEN], AeadError> {
        let mut m = [Message { nonce: *nonce, aad, buf, tag: [0; TAG_LEN] }];
        let mut r = [Ok(())];
        self.seal_many(&mut m, &mut r);
        let [m] = m;
        r[0].map(|()| m.tag)
    }

    /// Decrypts `buf` in place if `tag` verifies; zeroes `buf` otherwise.
    pub fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AeadError> {
        let mut m = [Message { nonce: *nonce, aad, buf, tag: *tag }];
        let mut r = [Ok(())];
        self.open_many(&mut m, &mut r);
        r[0]
    }

    /// Seals every message of `msgs` (in place, tag into [`Message::tag`]); `out[i]` says
    /// whether `msgs[i]` was sealed (it fails only over 2^24 bytes, and is then left as it
    /// was). Messages past the end of `out` are not touched.
    pub fn seal_many(&self, msgs: &mut [Message<'_>], out: &mut [Result<(), AeadError>]) {
        self.run(msgs, out, false);
    }

    /// Opens every message of `msgs` in place; `out[i]` says whether `msgs[i]`'s tag
    /// verified. The buffer of one that failed is zeroed. Messages past the end of `out`
    /// are not touched.
    pub fn open_many(&self, msgs: &mut [Message<'_>], out: &mut [Result<(), AeadError>]) {
        self.run(msgs, out, true);
    }

    fn run(&self, msgs: &mut [Message<'_>], out: &mut [Result<(), AeadError>], open: bool) {
        let n = msgs.len().min(out.len());
        for (msgs, out) in msgs[..n].chunks_mut(LANES).zip(out[..n].chunks_mut(LANES)) {
            let mut lanes = [Lane::default(); LANES];
            for ((lane, m), r) in lanes.iter_mut().zip(msgs.iter()).zip(out.iter_mut()) {
                *r = lane.start(m);
            }
            #[cfg(target_arch = "x86_64")]
            let fast = Fast { vaes: self.wide.as_ref() };
            #[cfg(not(target_arch = "x86_64"))]
            let fast = Fast::default();
            let passes = Passes { lanes: &mut lanes[..msgs.len()], msgs: &mut msgs[..], open, fast };
            #[cfg(target_arch = "x86_64")]
            if let Some(wide) = &self.wide {
                wide.encrypt_with_backend(passes);
            } else {
                self.narrow.encrypt_with_backend(passes);
            }
            #[cfg(not(target_arch = "x86_64"))]
            self.narrow.encrypt_with_backend(passes);
            for ((lane, m), r) in lanes.iter().zip(msgs.iter_mut()).zip(out.iter_mut()) {
                if r.is_err() {
                    continue;
                }
                let tag = xor(&lane.mac, &lane.s0);
                if !open {
                    m.tag = tag;
                } else if !bool::from(tag.ct_eq(&m.tag)) {
                    m.buf.fill(0);
                    *r = Err(AeadError::Forged);
                }
            }
        }
    }
}

/// Where one message is in its MAC chain and its counter blocks.
#[derive(Clone, Copy, Default)]
struct Lane {
    /// The CBC-MAC so far; before the first step, B0 (the chain starts at zero).
    mac: [u8; 16],
    /// The encrypted A0, for the tag.
    s0: [u8; 16],
    /// A0 as a big-endian number: `A_i` is `a0 + i` (the counter is its last L bytes,
    /// and `i` stays under 2^(8L)).
    a0: u128,
    /// The next MAC step: 0 is B0, then `aad_blocks` of encoded aad, then the payload's
    /// blocks; `mac_end` is one past the last.
    mac_next: usize,
    mac_end: usize,
    aad_blocks: usize,
    /// The next counter block (0 is A0, `i` encrypts payload block `i - 1`); `ctr_end` is
    /// one past the last.
    ctr_next: usize,
    ctr_end: usize,
    /// The aad's length as encoded before it.
    head: [u8; 10],
    head_len: usize,
}

impl Lane {
    /// Sets up the lane for `m`; an error leaves it with nothing to do.
    fn start(&mut self, m: &Message<'_>) -> Result<(), AeadError> {
        if m.buf.len() >= MAX_LEN {
            return Err(AeadError::TooLong);
        }
        let a = m.aad.len() as u64;
        self.head_len = if a == 0 {
            0
        } else if a < 0xFF00 {
            self.head[..2].copy_from_slice(&(a as u16).to_be_bytes());
            2
        } else if let Ok(a) = u32::try_from(a) {
            self.head[..2].copy_from_slice(&[0xFF, 0xFE]);
            self.head[2..6].copy_from_slice(&a.to_be_bytes());
            6
        } else {
            self.head[..2].copy_from_slice(&[0xFF, 0xFF]);
            self.head[2..10].copy_from_slice(&a.to_be_bytes());
            10
        };
        let payload_blocks = m.buf.len().div_ceil(16);
        self.aad_blocks = (self.head_len + m.aad.len()).div_ceil(16);
        self.mac_end = 1 + self.aad_blocks + payload_blocks;
        self.ctr_end = 1 + payload_blocks;
        let mut b0 = [0u8; 16];
        b0[0] = B0_FLAGS | if m.aad.is_empty() { 0 } else { 0x40 };
        b0[1..1 + NONCE_LEN].copy_from_slice(&m.nonce);
        // Shorter than MAX_LEN: fits L bytes.
        b0[1 + NONCE_LEN..].copy_from_slice(&(m.buf.len() as u32).to_be_bytes()[4 - L..]);
        self.mac = b0;
        let mut a0 = [0u8; 16];
        a0[0] = (L - 1) as u8;
        a0[1..1 + NONCE_LEN].copy_from_slice(&m.nonce);
        self.a0 = u128::from_be_bytes(a0);
        self.mac_next = 0;
        Ok(())
    }

    /// Payload blocks the MAC has read.
    #[inline(always)]
    fn payload_read(&self) -> usize {
        self.mac_next.saturating_sub(1 + self.aad_blocks)
    }

    /// How many of the MAC's next steps read whole payload blocks that are ready (for
    /// opening: decrypted), from the next one on; 0 if the next is not one.
    #[inline(always)]
    fn whole_blocks_ready(&self, len: usize, open: bool) -> usize {
        if self.mac_next <= self.aad_blocks {
            return 0;
        }
        let j = self.mac_next - 1 - self.aad_blocks;
        let whole = (len / 16).saturating_sub(j);
        if open {
            whole.min(self.ctr_next.saturating_sub(1 + j))
        } else {
            whole
        }
    }

    /// Can the MAC take its next block now? Opening reads only decrypted blocks.
    #[inline(always)]
    fn mac_ready(&self, open: bool) -> bool {
        self.mac_next < self.mac_end
            && (!open || self.mac_next <= self.aad_blocks || self.mac_next - self.aad_blocks < self.ctr_next)
    }

    /// Can the next counter block be used now? Sealing encrypts only blocks the MAC read.
    #[inline(always)]
    fn ctr_ready(&self, open: bool) -> bool {
        self.ctr_next < self.ctr_end && (open || self.ctr_next == 0 || self.ctr_next <= self.payload_read())
    }

    /// The MAC's next input block XORed into the chain.
    #[inline(always)]
    fn mac_input(&self, m: &Message<'_>) -> [u8; 16] {
        if self.mac_next == 0 {
            return self.mac;
        }
        let k = self.mac_next - 1;
        if k >= self.aad_blocks {
            let start = (k - self.aad_blocks) * 16;
            return xor(&self.mac, &load(m.buf.get(start..).unwrap_or_default()));
        }
        // The encoded aad: its length, then its bytes (a few blocks per message).
        let mut input = [0u8; 16];
        let start = k * 16;
        for (i, byte) in input.iter_mut().enumerate() {
            let o = start + i;
            *byte = if o < self.head_len { self.head[o] } else { m.aad.get(o - self.head_len).copied().unwrap_or(0) };
        }
        xor(&self.mac, &input)
    }
}

/// `a ^ b`, as one 128-bit integer: a byte loop would need the loop vectorizer, which a
/// build at opt-level "z" with LTO (the release profile) runs at "z", that is not at all.
#[inline(always)]
fn xor(a: &[u8; 16], b: &[u8; 16]) -> [u8; 16] {
    (u128::from_ne_bytes(*a) ^ u128::from_ne_bytes(*b)).to_ne_bytes()
}

/// The first 16 bytes of `b`, zero-padded.
#[inline(always)]
fn load(b: &[u8]) -> [u8; 16] {
    match b.first_chunk::<16>() {
        Some(full) => *full,
        None => {
            let mut p = [0u8; 16];
            p[..b.len()].copy_from_slice(b);
            p
        }
    }
}

/// `a ^= b` for one block that the cipher reads next, or that was just written by it.
///
/// On x86_64 in one SSE register, with one 16-byte load and store each. The `u128` of
/// [`xor`] compiles to two 8-byte XORs into memory there, and a 16-byte load of what two
/// narrower stores wrote cannot be forwarded from them: it waits until both stores have
/// left the core. That stall came on every block of every pass (the chains' states and
/// the counter blocks go through memory to the cipher's backend) and cost sealing about a
/// third of its time on an Intel Xeon (a batch of eight 1400-byte messages, 930 against
/// 650 ns a message). Elsewhere, the `u128` form.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[inline(always)]
fn xor_block(a: &mut [u8; 16], b: &[u8; 16]) {
    use core::arch::x86_64::{_mm_loadu_si128, _mm_storeu_si128, _mm_xor_si128};
    // SAFETY: every x86_64 target has SSE2; both pointers come from references to 16
    // bytes (valid, and `a`'s exclusive), and the unaligned forms need no alignment.
    unsafe {
        _mm_storeu_si128(
            a.as_mut_ptr().cast(),
            _mm_xor_si128(_mm_loadu_si128(a.as_ptr().cast()), _mm_loadu_si128(b.as_ptr().cast())),
        )
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn xor_block(a: &mut [u8; 16], b: &[u8; 16]) {
    *a = xor(a, b);
}

/// Writes `v` big-endian into `block` (a counter block) with one 16-byte store on x86_64,
/// for the reason of [`xor_block`].
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[inline(always)]
fn put_be(block: &mut [u8; 16], v: u128) {
    // SAFETY: every x86_64 target has SSE2; the pointer comes from a reference to 16 bytes
    // and the unaligned store needs no alignment.
    unsafe { core::arch::x86_64::_mm_storeu_si128(block.as_mut_ptr().cast(), be_block(v)) }
}

/// `v` as a big-endian block in a register (x86_64; SSE2, which every x86_64 has).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[inline(always)]
fn be_block(v: u128) -> core::arch::x86_64::__m128i {
    // Big-endian bytes read as a little-endian number: its low half is the first 8 bytes.
    let le = v.swap_bytes();
    // SAFETY: every x86_64 target has SSE2.
    unsafe { core::arch::x86_64::_mm_set_epi64x((le >> 64) as u64 as i64, le as u64 as i64) }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn put_be(block: &mut [u8; 16], v: u128) {
    *block = v.to_be_bytes();
}

/// XORs `ks` into the first 16 bytes of `b` (all of `b` if shorter).
#[inline(always)]
fn xor_into(b: &mut [u8], ks: &[u8; 16]) {
    match b.first_chunk_mut::<16>() {
        Some(full) => xor_block(full, ks),
        None => {
            for (x, k) in b.iter_mut().zip(ks) {
                *x ^= k;
            }
        }
    }
}

/// Marks a slot of a pass as a MAC step.
const MAC: usize = usize::MAX;

/// The passes of one batch through the cipher's backend (one dispatch per batch).
struct Passes<'l, 'm, 'a> {
    lanes: &'l mut [Lane],
    msgs: &'m mut [Message<'a>],
    open: bool,
    fast: Fast<'l>,
}

/// Runs of MAC passes with the chains' states kept in registers, where the backend is
/// this crate's own (VAES, see `wide`); elsewhere the passes go through the backend one
/// at a time and the states through memory.
#[derive(Clone, Copy, Default)]
struct Fast<'k> {
    #[cfg(target_arch = "x86_64")]
    vaes: Option<&'k wide::Keys>,
    #[cfg(not(target_arch = "x86_64"))]
    none: core::marker::PhantomData<&'k ()>,
}

impl Fast<'_> {
    /// `steps` MAC passes over whole blocks (`wide::Keys::mac_run`), with the counter
    /// passes of `behind` between them; false if they are left to the caller.
    #[inline(always)]
    fn run(self, states: &mut [aes::Block], runs: &[&[u8]], behind: &mut [(&mut [u8], u128)], steps: usize) -> bool {
        #[cfg(target_arch = "x86_64")]
        if let Some(keys) = self.vaes {
            return keys.mac_run(states, runs, behind, steps);
        }
        let _ = (states, runs, behind, steps);
        false
    }
}

impl BlockSizeUser for Passes<'_, '_, '_> {
    type BlockSize = U16;
}

impl BlockClosure for Passes<'_, '_, '_> {
    #[inline(always)]
    fn call<B: BlockBackend<BlockSize = U16>>(self, backend: &mut B) {
        let Passes { lanes, msgs, open, fast } = self;
        if lanes.len() > 1 && pipelined::<B>() {
            first_counter_blocks(backend, lanes);
        }
        if open {
            // Decrypt everything first: then every MAC chain can run to its end.
            for (lane, m) in lanes.iter_mut().zip(msgs.iter_mut()) {
                ctr_all(backend, lane, m);
            }
        }
        if let ([lane], [m]) = (&mut *lanes, &*msgs) {
            // One message: its chain with the least work per block on it; its counter
            // blocks go in wide passes before (opening) or after (sealing) it.
            while lane.mac_next < lane.mac_end {
                let mut b = lane.mac_input(m).into();
                backend.proc_block_inplace(&mut b);
                lane.mac_next += 1;
                // A run of whole payload blocks: the state stays in `b` (see `xor_block`).
                let run = lane.whole_blocks_ready(m.buf.len(), open);
                let at = lane.payload_read() * 16;
                for block in m.buf.get(at..at + run * 16).unwrap_or_default().chunks_exact(16) {
                    if let Some(block) = block.first_chunk::<16>() {
                        xor_block(b.as_mut(), block);
                    }
                    backend.proc_block_inplace(&mut b);
                }
                lane.mac_next += run;
                lane.mac = b.into();
            }
        } else {
            interleave(backend, fast, lanes, msgs, open);
        }
        // What sealing left (nothing, when opening).
        for (lane, m) in lanes.iter_mut().zip(msgs.iter_mut()) {
            ctr_all(backend, lane, m);
        }
    }
}

/// Whether the backend is an AES unit whose passes pipeline (AES-NI, ARMv8's AES: eight
/// blocks a pass), so that independent passes run in the time a MAC chain waits. The
/// bit-sliced software backends (two or four blocks a pass) gain nothing from reordering,
/// and leaving the reordering out of their build keeps small agents small (armv7's ntmd
/// grew by 4 KiB with it). Known when the backend's code is generated.
#[inline(always)]
fn pipelined<B: BlockBackend<BlockSize = U16>>() -> bool {
    B::ParBlocksSize::USIZE >= LANES
}

/// A0 of every lane (the block that encrypts the tag) in passes of `width` lanes, instead
/// of one block at a time in `ctr_all`: alone, a block waits out the whole latency of its
/// ten rounds.
#[inline(always)]
fn first_counter_blocks<B: BlockBackend<BlockSize = U16>>(backend: &mut B, lanes: &mut [Lane]) {
    let mut par = ParBlocks::<B>::default();
    let width = par.len();
    let mut pending = lanes.iter_mut().filter(|l| l.ctr_next == 0 && l.ctr_end > 0).peekable();
    while pending.peek().is_some() {
        let mut taken: [Option<&mut Lane>; PAR_MAX] = Default::default();
        for ((slot, block), lane) in taken.iter_mut().zip(par.iter_mut()).take(width).zip(&mut pending) {
            put_be(block.as_mut(), lane.a0);
            *slot = Some(lane);
        }
        backend.proc_par_blocks_inplace(&mut par);
        for (lane, block) in taken.iter_mut().zip(par.iter()) {
            if let Some(lane) = lane {
                lane.s0 = (*block).into();
                lane.ctr_next = 1;
            }
        }
    }
}

/// The counter blocks of `lane` not used yet, in passes of consecutive blocks. Only when
/// they may all be used: for sealing, after the MAC read the whole payload.
#[inline(always)]
fn ctr_all<B: BlockBackend<BlockSize = U16>>(backend: &mut B, lane: &mut Lane, m: &mut Message<'_>) {
    if lane.ctr_next == 0 && lane.ctr_end > 0 {
        let mut b = lane.a0.to_be_bytes().into();
        backend.proc_block_inplace(&mut b);
        lane.s0 = b.into();
        lane.ctr_next = 1;
    }
    let mut par = ParBlocks::<B>::default();
    let width = par.len();
    while lane.ctr_next < lane.ctr_end {
        let n = (lane.ctr_end - lane.ctr_next).min(width);
        for (k, block) in par.iter_mut().enumerate().take(n) {
            put_be(block.as_mut(), lane.a0 + (lane.ctr_next + k) as u128);
        }
        if n == 1 {
            backend.proc_block_inplace(&mut par[0]);
        } else {
            backend.proc_par_blocks_inplace(&mut par);
        }
        let start = (lane.ctr_next - 1) * 16;
        let whole = if pipelined::<B>() && n == width { m.buf.get_mut(start..start + 16 * width) } else { None };
        if let Some(run) = whole {
            // A whole pass of whole blocks: no per-block length checks (sealing 1400-byte
            // messages in batches of eight took 520 instead of 585 ns each on an Intel
            // Xeon). Only where passes are wide: on the small software ones the plain loop
            // is as fast and the second loop only adds code.
            for (chunk, block) in run.chunks_exact_mut(16).zip(par.iter()) {
                if let Some(chunk) = chunk.first_chunk_mut::<16>() {
                    xor_block(chunk, block.as_ref());
                }
            }
        } else {
            let chunks = m.buf.get_mut(start..).unwrap_or_default().chunks_mut(16);
            for (chunk, block) in chunks.zip(par.iter()).take(n) {
                xor_into(chunk, block.as_ref());
            }
        }
        lane.ctr_next += n;
    }
}

/// Runs the MAC chains of all lanes side by side, one block of each per pass, and fills
/// the slots left with counter blocks that may be used already.
#[inline(always)]
fn interleave<B: BlockBackend<BlockSize = U16>>(
    backend: &mut B,
    fast: Fast<'_>,
    lanes: &mut [Lane],
    msgs: &mut [Message<'_>],
    open: bool,
) {
    let mut par = ParBlocks::<B>::default();
    let width = par.len().min(PAR_MAX);
    // What each slot holds: (lane, MAC or counter index).
    let mut what = [(0usize, 0usize); PAR_MAX];
    // The lane whose counter blocks fill the next pass first, in turn.
    let mut next_ctr_lane = 0;
    let count = lanes.len();
    loop {
        // The common case first: every unfinished chain is inside its payload, with whole
        // blocks ready. Then a run of passes needs no bookkeeping per slot. When sealing
        // fewer messages than the pass is wide, the free slots stay empty and the counter
        // blocks wait for `ctr_all`'s full passes: filling those slots here cost more in
        // bookkeeping per slot than the passes it saved (a batch of three 1400-byte
        // messages sealed about a fifth faster this way on an Intel Xeon with AES-NI).
        let mut active = [0usize; PAR_MAX];
        let mut k = 0;
        let mut steps = usize::MAX;
        for (li, (lane, m)) in lanes.iter().zip(msgs.iter()).enumerate() {
            if lane.mac_next == lane.mac_end {
                continue;
            }
            let full = lane.whole_blocks_ready(m.buf.len(), open);
            if full == 0 || k == width {
                steps = 0;
                break;
            }
            active[k] = li;
            k += 1;
            steps = steps.min(full);
        }
        if k > 0 && steps > 0 {
            if !open && pipelined::<B>() {
                seal_run(backend, fast, lanes, msgs, &active[..k], steps.min(width));
                continue;
            }
            // The chain's state stays in its slot from pass to pass: each pass XORs the
            // next plaintext block into it, read from a slice cut once for the run.
            let mut runs: [&[u8]; PAR_MAX] = [&[]; PAR_MAX];
            for ((slot, run), &li) in par.iter_mut().zip(runs.iter_mut()).zip(&active[..k]) {
                let lane = &mut lanes[li];
                let at = (lane.mac_next - 1 - lane.aad_blocks) * 16;
                *run = msgs[li].buf.get(at..at + steps * 16).unwrap_or_default();
                *slot = lane.mac.into();
                lane.mac_next += steps;
            }
            if !fast.run(&mut par, &runs[..k], &mut [], steps) {
                for step in 0..steps {
                    mac_pass(backend, &mut par, &runs[..k], step);
                }
            }
            for (slot, &li) in par.iter().zip(&active[..k]) {
                lanes[li].mac = (*slot).into();
            }
            continue;
        }
        let mut n = 0;
        for (li, (lane, m)) in lanes.iter_mut().zip(msgs.iter()).enumerate() {
            if n == width {
                break;
            }
            if lane.mac_ready(open) {
                par[n] = lane.mac_input(m).into();
                what[n] = (li, MAC);
                lane.mac_next += 1;
                n += 1;
            }
        }
        if n == 0 {
            // Every chain is done: an unfinished MAC of a message being sealed is always
            // ready, and one being opened was decrypted first. What is left is counter
            // blocks, which `ctr_all` runs in passes of consecutive blocks with no
            // bookkeeping per slot (taking them here cost sealing a quarter of its time).
            debug_assert!(lanes.iter().all(|l| l.mac_next == l.mac_end));
            return;
        }
        let first = next_ctr_lane;
        for j in 0..count {
            if n == width {
                break;
            }
            let li = (first + j) % count;
            let lane = &mut lanes[li];
            let before = n;
            while n < width && lane.ctr_ready(open) {
                put_be(par[n].as_mut(), lane.a0 + lane.ctr_next as u128);
                what[n] = (li, lane.ctr_next);
                lane.ctr_next += 1;
                n += 1;
            }
            if n > before {
                next_ctr_lane = (li + 1) % count;
            }
        }
        if n == 1 {
            backend.proc_block_inplace(&mut par[0]);
        } else {
            backend.proc_par_blocks_inplace(&mut par);
        }
        for (block, &(li, i)) in par.iter().zip(what.iter()).take(n) {
            let out: &[u8; 16] = block.as_ref();
            let lane = &mut lanes[li];
            if i == MAC {
                lane.mac = *out;
            } else if i == 0 {
                lane.s0 = *out;
            } else {
                xor_into(msgs[li].buf.get_mut((i - 1) * 16..).unwrap_or_default(), out);
            }
        }
    }
}

/// Pass `step` of a run over whole blocks: the chain in slot `i` of `par` takes block
/// `step` of `runs[i]`, then the pass goes through the cipher.
#[inline(always)]
fn mac_pass<B: BlockBackend<BlockSize = U16>>(backend: &mut B, par: &mut ParBlocks<B>, runs: &[&[u8]], step: usize) {
    for (slot, run) in par.iter_mut().zip(runs) {
        let block: &mut [u8; 16] = slot.as_mut();
        if let Some(p) = run.get(step * 16..).and_then(|r| r.first_chunk::<16>()) {
            xor_block(block, p);
        }
    }
    if runs.len() == 1 {
        backend.proc_block_inplace(&mut par[0]);
    } else {
        backend.proc_par_blocks_inplace(par);
    }
}

/// A run of `steps` (at most a pass's width) MAC passes over whole plaintext blocks of
/// the `active` lanes when sealing with a pipelined AES unit ([`pipelined`]).
///
/// After MAC pass `i`, the lane in slot `i` encrypts a pass's worth of the blocks its MAC
/// read before the run, if it has that many waiting. The MAC passes wait on their chains;
/// the counter passes depend on nothing, and the core runs them in those waits. Each
/// lane's counter blocks then trail its MAC by about one run, and `ctr_all` does the rest.
/// Sealing a batch of eight 1400-byte messages took about 500 instead of 520 ns a message
/// with this on an Intel Xeon (and 585 before `ctr_all`'s whole passes).
#[inline(always)]
fn seal_run<B: BlockBackend<BlockSize = U16>>(
    backend: &mut B,
    fast: Fast<'_>,
    lanes: &mut [Lane],
    msgs: &mut [Message<'_>],
    active: &[usize],
    steps: usize,
) {
    let mut par = ParBlocks::<B>::default();
    let mut ks = ParBlocks::<B>::default();
    let width = par.len();
    // Per slot: the next plaintext blocks for the MAC, and the blocks to encrypt after
    // that pass with their first counter.
    let mut runs: [&[u8]; PAR_MAX] = [&[]; PAR_MAX];
    let mut behind: [(&mut [u8], u128); PAR_MAX] = Default::default();
    let mut next = active.iter().enumerate().peekable();
    for (li, (lane, m)) in lanes.iter_mut().zip(msgs.iter_mut()).enumerate() {
        let Some((slot, _)) = next.next_if(|&(_, &a)| a == li) else { continue };
        let at = (lane.mac_next - 1 - lane.aad_blocks) * 16;
        let (read, ahead) = m.buf.split_at_mut(at.min(m.buf.len()));
        let ahead: &[u8] = ahead;
        runs[slot] = ahead.get(..steps * 16).unwrap_or_default();
        let from = lane.ctr_next.saturating_sub(1) * 16;
        if slot < steps && lane.ctr_next > 0 {
            if let Some(pass) = read.get_mut(from..from + 16 * width) {
                behind[slot] = (pass, lane.a0 + lane.ctr_next as u128);
                lane.ctr_next += width;
            }
        }
        par[slot] = lane.mac.into();
        lane.mac_next += steps;
    }
    let k = active.len();
    let fast_done = fast.run(&mut par, &runs[..k], behind.get_mut(..steps).unwrap_or_default(), steps);
    for step in (0..steps).filter(|_| !fast_done) {
        mac_pass(backend, &mut par, &runs[..k], step);
        if let Some((pass, first)) = behind.get_mut(step).filter(|(p, _)| !p.is_empty()) {
            for (j, block) in ks.iter_mut().enumerate() {
                put_be(block.as_mut(), *first + j as u128);
            }
            backend.proc_par_blocks_inplace(&mut ks);
            for (chunk, block) in pass.chunks_exact_mut(16).zip(ks.iter()) {
                if let Some(chunk) = chunk.first_chunk_mut::<16>() {
                    xor_block(chunk, block.as_ref());
                }
            }
        }
    }
    for (slot, &li) in par.iter().zip(active) {
        lanes[li].mac = (*slot).into();
    }
}

/// The RustCrypto `ccm` crate with this crate's parameters (the reference the tests
/// compare with), compiled here: a benchmark that names it gets the code generation the
/// daemons had for AES-CCM before this crate's own.
#[cfg(feature = "reference")]
pub mod reference {
    use super::{AeadError, NONCE_LEN, TAG_LEN};
    use aes::cipher::generic_array::GenericArray;
    use ccm::aead::{AeadInPlace, KeyInit};
    use ccm::consts::{U12, U16};

    /// AES-128-CCM of the `ccm` crate, 16-byte tag, 12-byte nonce.
    pub struct Reference(ccm::Ccm<aes::Aes128Enc, U16, U12>);

    impl core::fmt::Debug for Reference {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str("Reference(redacted)")
        }
    }

    impl Reference {
        /// Expands `key`.
        pub fn new(key: &[u8; 16]) -> Self {
            Reference(ccm::Ccm::new(GenericArray::from_slice(key)))
        }

        /// Encrypts `buf` in place and returns the tag.
        pub fn seal(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut [u8]) -> Result<[u8; TAG_LEN], AeadError> {
            let tag = self
                .0
                .encrypt_in_place_detached(GenericArray::from_slice(nonce), aad, buf)
                .map_err(|_| AeadError::TooLong)?;
            Ok(tag.into())
        }

        /// Decrypts `buf` in place if `tag` verifies.
        pub fn open(
            &self,
            nonce: &[u8; NONCE_LEN],
            aad: &[u8],
            buf: &mut [u8],
            tag: &[u8; TAG_LEN],
        ) -> Result<(), AeadError> {
            self.0
                .decrypt_in_place_detached(GenericArray::from_slice(nonce), aad, buf, GenericArray::from_slice(tag))
                .map_err(|_| AeadError::Forged)
        }
    }
}

#[cfg(test)]
extern crate std;

#[cfg(test)]
mod tests {
    use super::*;
    use ccm::aead::AeadInPlace;
    use ccm::consts::U12;
    use proptest::prelude::*;
    use std::format;
    use std::vec::Vec;

    type Reference = ccm::Ccm<aes::Aes128, U16, U12>;

    /// An answer from another implementation: OpenSSL's AES-CCM (through Python's
    /// `cryptography`), key 07.., nonce 01.., 16-byte tag.
    #[test]
    fn matches_openssl() {
        let mut buf = *b"a packet for the tunnel";
        let tag = Aead::new(&[7; KEY_LEN]).seal(&[1; NONCE_LEN], b"header", &mut buf).unwrap();
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<std::string::String>();
        assert_eq!(hex(&buf), "d6ea441fcddf57bf98f66df3ee5b22ad24e400237bf2ff");
        assert_eq!(hex(&tag), "2e3aea33a7239222d8252a1c9625a1bd");
    }

    /// RFC 3610's packet vector #1 has an 8-byte tag and 13-byte nonce, which this
    /// crate does not do; SP 800-38C example 3 neither. The reference crate covers the
    /// composition for our parameters; this checks the length edge that no random test
    /// reaches: the empty message with empty aad.
    #[test]
    fn empty_message_matches_the_reference() {
        let key = [9u8; KEY_LEN];
        let nonce = [3u8; NONCE_LEN];
        let mut ours: [u8; 0] = [];
        let tag = Aead::new(&key).seal(&nonce, &[], &mut ours).unwrap();
        let r = Reference::new(GenericArray::from_slice(&key));
        let want = r.encrypt_in_place_detached(GenericArray::from_slice(&nonce), &[], &mut []).unwrap();
        assert_eq!(&tag[..], &want[..]);
        Aead::new(&key).open(&nonce, &[], &mut [], &tag).unwrap();
    }

    #[test]
    fn seal_then_open_and_every_change_is_refused() {
        let aead = Aead::new(&[7; KEY_LEN]);
        let nonce = [1u8; NONCE_LEN];
        let mut buf = *b"a packet for the tunnel";
        let tag = aead.seal(&nonce, b"header", &mut buf).unwrap();
        let sealed = buf;
        assert_ne!(&sealed, b"a packet for the tunnel");
        let mut again = *b"a packet for the tunnel";
        assert_eq!(aead.seal(&nonce, b"header", &mut again).unwrap(), tag);
        assert_eq!(again, sealed);
        aead.open(&nonce, b"header", &mut buf, &tag).unwrap();
        assert_eq!(&buf, b"a packet for the tunnel");
        for i in 0..sealed.len() {
            let mut t = sealed;
            t[i] ^= 0x80;
            assert_eq!(aead.open(&nonce, b"header", &mut t, &tag), Err(AeadError::Forged));
            assert_eq!(t, [0; 23], "no unverified plaintext is left");
        }
        let mut t = sealed;
        let mut bad = tag;
        bad[15] ^= 1;
        assert_eq!(aead.open(&nonce, b"header", &mut t, &bad), Err(AeadError::Forged));
        let mut t = sealed;
        assert_eq!(aead.open(&[2; NONCE_LEN], b"header", &mut t, &tag), Err(AeadError::Forged));
        let mut t = sealed;
        assert_eq!(Aead::new(&[8; KEY_LEN]).open(&nonce, b"header", &mut t, &tag), Err(AeadError::Forged));
    }

    #[test]
    fn over_the_length_limit_is_refused_and_left_alone_without_harming_the_batch() {
        let aead = Aead::new(&[5; KEY_LEN]);
        let mut big = std::vec![7u8; MAX_LEN];
        let mut small = *b"small";
        let mut msgs = [
            Message { nonce: [1; NONCE_LEN], aad: b"a", buf: &mut big, tag: [0; TAG_LEN] },
            Message { nonce: [2; NONCE_LEN], aad: b"b", buf: &mut small, tag: [0; TAG_LEN] },
        ];
        let mut out = [Ok(()); 2];
        aead.seal_many(&mut msgs, &mut out);
        assert_eq!(out, [Err(AeadError::TooLong), Ok(())]);
        assert!(msgs[0].buf.iter().all(|&b| b == 7));
        let tag = msgs[1].tag;
        assert_eq!(aead.open(&[2; NONCE_LEN], b"b", &mut small, &tag), Ok(()));
        assert_eq!(&small, b"small");
    }

    /// Batches of messages of one length, as a TSO super-packet's segments are: every
    /// lane runs its chain in step with the others, and sealing encrypts each lane's
    /// blocks a pass behind its MAC (`interleave`). Lengths around whole passes of blocks,
    /// batches narrower than, as wide as and wider than `LANES`; against the reference.
    #[test]
    fn equal_lengths_in_full_batches_match_the_reference() {
        let key = [0x2a; KEY_LEN];
        for aead in both(&key) {
            equal_lengths_match_the_reference(&key, &aead);
        }
    }

    /// The instance of `Aead::new`, and where that one uses VAES, one that does not.
    fn both(key: &[u8; KEY_LEN]) -> Vec<Aead> {
        let ours = Aead::new(key);
        let narrow = ours.uses_vaes().then(|| Aead::without_vaes(key));
        std::iter::once(ours).chain(narrow).collect()
    }

    fn equal_lengths_match_the_reference(key: &[u8; KEY_LEN], aead: &Aead) {
        let key = *key;
        for len in [127, 128, 129, 384, 1399, 1400, 9000] {
            for count in [2, 3, LANES, LANES + 1, 2 * LANES + 3] {
                let cases: Vec<Case> = (0..count)
                    .map(|i| Case {
                        nonce: [i as u8; NONCE_LEN],
                        aad: std::vec![i as u8; 20],
                        plain: (0..len).map(|b| (b * 7 + i) as u8).collect(),
                    })
                    .collect();
                let mut bufs: Vec<Vec<u8>> = cases.iter().map(|c| c.plain.clone()).collect();
                let tags = std::vec![[0u8; TAG_LEN]; count];
                let mut out = std::vec![Err(AeadError::Forged); count];
                let mut msgs = messages(&cases, &mut bufs, &tags);
                aead.seal_many(&mut msgs, &mut out);
                let got: Vec<[u8; TAG_LEN]> = msgs.iter().map(|m| m.tag).collect();
                drop(msgs);
                for (i, c) in cases.iter().enumerate() {
                    let (ct, tag) = reference_seal(&key, c);
                    assert_eq!(out[i], Ok(()));
                    assert!(bufs[i] == ct && got[i] == tag, "message {i} of {count}, {len} bytes");
                }
                let mut msgs = messages(&cases, &mut bufs, &got);
                aead.open_many(&mut msgs, &mut out);
                drop(msgs);
                for (i, c) in cases.iter().enumerate() {
                    assert!(out[i].is_ok() && bufs[i] == c.plain, "opening message {i} of {count}, {len} bytes");
                }
            }
        }
    }

    /// One message of a random batch: key is per batch.
    #[derive(Clone, Debug)]
    struct Case {
        nonce: [u8; NONCE_LEN],
        aad: Vec<u8>,
        plain: Vec<u8>,
    }

    fn case() -> impl Strategy<Value = Case> {
        // Aad lengths: empty, short, over 14 (more than one block with its length).
        let aad = prop_oneof![Just(0usize), 1usize..15, 15usize..70];
        let plain = prop_oneof![0usize..40, 0usize..3000];
        (any::<[u8; NONCE_LEN]>(), aad, plain).prop_flat_map(|(nonce, a, p)| {
            (Just(nonce), proptest::collection::vec(any::<u8>(), a), proptest::collection::vec(any::<u8>(), p))
                .prop_map(|(nonce, aad, plain)| Case { nonce, aad, plain })
        })
    }

    fn reference_seal(key: &[u8; KEY_LEN], c: &Case) -> (Vec<u8>, [u8; TAG_LEN]) {
        let r = Reference::new(GenericArray::from_slice(key));
        let mut buf = c.plain.clone();
        let tag = r.encrypt_in_place_detached(GenericArray::from_slice(&c.nonce), &c.aad, &mut buf).unwrap();
        (buf, tag.into())
    }

    fn messages<'a>(cases: &'a [Case], bufs: &'a mut [Vec<u8>], tags: &[[u8; TAG_LEN]]) -> Vec<Message<'a>> {
        cases
            .iter()
            .zip(bufs.iter_mut())
            .zip(tags.iter())
            .map(|((c, b), t)| Message { nonce: c.nonce, aad: &c.aad, buf: b, tag: *t })
            .collect()
    }

    /// [`batches_match_the_ccm_crate`] for one instance.
    fn batch_matches(key: &[u8; KEY_LEN], aead: &Aead, cases: &[Case]) -> Result<(), TestCaseError> {
        let key = *key;
        let want: Vec<_> = cases.iter().map(|c| reference_seal(&key, c)).collect();
        let mut bufs: Vec<Vec<u8>> = cases.iter().map(|c| c.plain.clone()).collect();
        let tags = std::vec![[0u8; TAG_LEN]; cases.len()];
        let mut out = std::vec![Err(AeadError::Forged); cases.len()];
        let mut msgs = messages(cases, &mut bufs, &tags);
        aead.seal_many(&mut msgs, &mut out);
        let got_tags: Vec<[u8; TAG_LEN]> = msgs.iter().map(|m| m.tag).collect();
        drop(msgs);
        for (i, (c, (ct, tag))) in cases.iter().zip(&want).enumerate() {
            prop_assert_eq!(out[i], Ok(()));
            prop_assert_eq!(&bufs[i], ct, "ciphertext of message {}", i);
            prop_assert_eq!(&got_tags[i], tag, "tag of message {}", i);
            let mut one = c.plain.clone();
            prop_assert_eq!(&aead.seal(&c.nonce, &c.aad, &mut one).unwrap(), tag);
            prop_assert_eq!(&one, ct);
            aead.open(&c.nonce, &c.aad, &mut one, tag).unwrap();
            prop_assert_eq!(&one, &c.plain);
        }
        let mut msgs = messages(cases, &mut bufs, &got_tags);
        aead.open_many(&mut msgs, &mut out);
        drop(msgs);
        for (i, c) in cases.iter().enumerate() {
            prop_assert_eq!(out[i], Ok(()));
            prop_assert_eq!(&bufs[i], &c.plain);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// seal_many gives the reference's ciphertexts and tags for a batch of random
        /// messages of mixed lengths (more than LANES of them at times), open_many
        /// gives back the plaintexts, and seal/open one at a time agree too.
        #[test]
        fn batches_match_the_ccm_crate(key in any::<[u8; KEY_LEN]>(), cases in proptest::collection::vec(case(), 1..12)) {
            for aead in both(&key) {
                batch_matches(&key, &aead, &cases)?;
            }
        }

        /// In a batch sealed by the reference, one bit flipped in one message's
        /// ciphertext, aad or tag fails that message only.
        #[test]
        fn open_many_refuses_each_flipped_bit_in_its_lane_only(
            key in any::<[u8; KEY_LEN]>(),
            cases in proptest::collection::vec(case(), 1..10),
            victim in any::<prop::sample::Index>(),
            part in 0u8..3,
            at in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let aead = Aead::new(&key);
            let sealed: Vec<_> = cases.iter().map(|c| reference_seal(&key, c)).collect();
            let v = victim.index(cases.len());
            let mut cases = cases;
            let mut bufs: Vec<Vec<u8>> = sealed.iter().map(|s| s.0.clone()).collect();
            let mut tags: Vec<[u8; TAG_LEN]> = sealed.iter().map(|s| s.1).collect();
            // Flip in the chosen part, or in the tag where that part is empty.
            match part {
                0 if !bufs[v].is_empty() => { let i = at.index(bufs[v].len()); bufs[v][i] ^= 1 << bit }
                1 if !cases[v].aad.is_empty() => { let i = at.index(cases[v].aad.len()); cases[v].aad[i] ^= 1 << bit }
                _ => tags[v][at.index(TAG_LEN)] ^= 1 << bit,
            }
            let mut out = std::vec![Ok(()); cases.len()];
            let mut msgs = messages(&cases, &mut bufs, &tags);
            aead.open_many(&mut msgs, &mut out);
            drop(msgs);
            for (i, c) in cases.iter().enumerate() {
                if i == v {
                    prop_assert_eq!(out[i], Err(AeadError::Forged));
                    prop_assert!(bufs[i].iter().all(|&b| b == 0));
                } else {
                    prop_assert_eq!(out[i], Ok(()), "message {} is untouched by {}'s flip", i, v);
                    prop_assert_eq!(&bufs[i], &c.plain);
                }
            }
        }
    }
}
