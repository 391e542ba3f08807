//! AES-128 encryption through VAES on x86_64: two blocks per instruction in 256-bit
//! registers, where the CPU has it (Intel since Ice Lake, AMD since Zen 4 with AVX-512).
//!
//! The `aes` crate of the pinned crypto generation (0.8) has AES-NI only: one block per
//! instruction, at most two instructions a cycle. A pass of eight blocks is then four
//! cycles a round, and a pass that runs beside another (a MAC chain's pass and a counter
//! pass, see `seal_run`) competes with it for those two slots. Here a pass of eight is
//! four instructions a round, so the MAC chains run at the instruction's latency and the
//! counter passes fit in beside them. Two parts:
//! - a backend of the same eight-block passes as the `aes` crate's, handed to the rest of
//!   the crate in its place ([`Keys::encrypt_with_backend`]);
//! - runs of MAC passes over whole blocks with the chains' states kept in registers
//!   ([`Keys::mac_run`]). The backend alone gained little: each pass stored the states
//!   and loaded them again, and the chains waited on those stores and loads more than on
//!   the rounds.
//!
//! The key schedule is AES-128's (FIPS 197), expanded with AES-NI's key-generation assist
//! as Intel's AES-NI white paper describes; it is cleared on drop. The tests compare every
//! block with the `aes` crate's, for random keys.

#![allow(unsafe_code)]
// The VAES intrinsics are stable since Rust 1.89; the workspace's 1.85 holds for the other
// targets, which do not compile this module: x86_64 builds need Rust 1.89 or later.
#![allow(clippy::incompatible_msrv)]

use super::be_block;
use aes::cipher::consts::{U16, U8};
use aes::cipher::inout::InOut;
use aes::cipher::{Block, BlockBackend, BlockClosure, BlockSizeUser, ParBlocks, ParBlocksSizeUser};
use core::arch::x86_64::{
    __m128i, __m256i, _mm256_aesenc_epi128, _mm256_aesenclast_epi128, _mm256_broadcastsi128_si256, _mm256_loadu_si256,
    _mm256_set_m128i, _mm256_setzero_si256, _mm256_storeu2_m128i, _mm256_storeu_si256, _mm256_xor_si256,
    _mm_aesenc_si128, _mm_aesenclast_si128, _mm_aeskeygenassist_si128, _mm_loadu_si128, _mm_setzero_si128,
    _mm_shuffle_epi32, _mm_slli_si128, _mm_storeu_si128, _mm_xor_si128,
};

cpufeatures::new!(vaes_cpu, "aes", "avx2", "vaes");

/// Round keys: the cipher key, then one per round.
const ROUNDS: usize = 11;

/// An expanded AES-128 key, for a CPU with VAES (only [`Keys::new`] makes one).
pub(crate) struct Keys {
    rk: [__m128i; ROUNDS],
}

/// Whether this CPU has AES-NI, AVX2 and VAES, and the kernel saves their registers.
pub(crate) fn available() -> bool {
    vaes_cpu::get()
}

impl Keys {
    /// Expands `key`, if this CPU has AES-NI, AVX2 and VAES ([`available`]); None
    /// otherwise.
    pub(crate) fn new(key: &[u8; 16]) -> Option<Self> {
        if !available() {
            return None;
        }
        // SAFETY: the CPU has AES-NI (checked just above).
        Some(Keys { rk: unsafe { expand(key) } })
    }

    /// Runs `f` with a backend that encrypts through VAES.
    #[inline]
    pub(crate) fn encrypt_with_backend(&self, f: impl BlockClosure<BlockSize = U16>) {
        #[target_feature(enable = "aes,avx,avx2,vaes")]
        fn inner(rk: &[__m128i; ROUNDS], f: impl BlockClosure<BlockSize = U16>) {
            f.call(&mut Backend { rk, wide: broadcast(rk) });
        }
        // SAFETY: a `Keys` exists only where `new` found the features `inner` enables.
        unsafe { inner(&self.rk, f) }
    }

    /// `steps` MAC passes over whole blocks with the chains' states in registers: the
    /// chain in `states[i]` takes `runs[i]`'s blocks one per pass (a lane past the end of
    /// `runs` takes zero blocks; its state is ignored), and after pass `s` the pass of
    /// counter blocks `behind[s]` (eight blocks from its first counter) is encrypted into
    /// its bytes, between the chains' rounds (see `seal_run`). Through memory, each pass
    /// stored the states and loaded them again, and the chains waited for that too.
    /// False, with nothing done, unless there are eight states, at most eight runs of
    /// `steps` blocks or more each, and every pass of `behind` is 128 bytes or empty.
    pub(crate) fn mac_run(
        &self,
        states: &mut [aes::Block],
        runs: &[&[u8]],
        behind: &mut [(&mut [u8], u128)],
        steps: usize,
    ) -> bool {
        let fits = states.len() == 8
            && runs.len() <= 8
            && runs.iter().all(|r| r.len() >= steps * 16)
            && behind.len() <= steps
            && behind.iter().all(|(p, _)| p.is_empty() || p.len() == 128);
        if fits {
            // SAFETY: a `Keys` exists only where `new` found these features; the sizes
            // `run8` relies on were checked just above.
            unsafe { run8(&self.rk, states, runs, behind, steps) };
        }
        fits
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        for k in &mut self.rk {
            // SAFETY: `k` is a valid, aligned `__m128i` owned by `self`; a volatile write
            // keeps the compiler from leaving the clearing out.
            unsafe { core::ptr::write_volatile(k, _mm_setzero_si128()) };
        }
    }
}

/// One round of the key schedule: the next round key from `prev` and the round's
/// constant (FIPS 197, 5.2, for a 128-bit key).
macro_rules! next_key {
    ($prev:expr, $rcon:literal) => {{
        let prev = $prev;
        let assist = _mm_shuffle_epi32::<0xff>(_mm_aeskeygenassist_si128::<$rcon>(prev));
        let mut k = _mm_xor_si128(prev, _mm_slli_si128::<4>(prev));
        k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
        k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
        _mm_xor_si128(k, assist)
    }};
}

#[target_feature(enable = "aes")]
fn expand(key: &[u8; 16]) -> [__m128i; ROUNDS] {
    // SAFETY: `key` is 16 readable bytes; the unaligned load needs no alignment.
    let k0 = unsafe { _mm_loadu_si128(key.as_ptr().cast()) };
    let k1 = next_key!(k0, 0x01);
    let k2 = next_key!(k1, 0x02);
    let k3 = next_key!(k2, 0x04);
    let k4 = next_key!(k3, 0x08);
    let k5 = next_key!(k4, 0x10);
    let k6 = next_key!(k5, 0x20);
    let k7 = next_key!(k6, 0x40);
    let k8 = next_key!(k7, 0x80);
    let k9 = next_key!(k8, 0x1b);
    let k10 = next_key!(k9, 0x36);
    [k0, k1, k2, k3, k4, k5, k6, k7, k8, k9, k10]
}

/// The backend handed to the passes: the round keys, and each broadcast to both halves
/// of a 256-bit register.
struct Backend<'a> {
    rk: &'a [__m128i; ROUNDS],
    wide: [__m256i; ROUNDS],
}

impl BlockSizeUser for Backend<'_> {
    type BlockSize = U16;
}

impl ParBlocksSizeUser for Backend<'_> {
    type ParBlocksSize = U8;
}

impl BlockBackend for Backend<'_> {
    #[inline(always)]
    fn proc_block(&mut self, mut block: InOut<'_, '_, Block<Self>>) {
        let mut b = *block.get_in();
        // SAFETY: a `Backend` is made only inside `Keys::encrypt_with_backend`, whose
        // `Keys` exists only where the CPU has these features.
        unsafe { encrypt1(self.rk, &mut b) };
        *block.get_out() = b;
    }

    #[inline(always)]
    fn proc_par_blocks(&mut self, mut blocks: InOut<'_, '_, ParBlocks<Self>>) {
        let mut b = *blocks.get_in();
        // SAFETY: as in `proc_block`.
        unsafe { encrypt8(&self.wide, &mut b) };
        *blocks.get_out() = b;
    }

    #[inline(always)]
    fn proc_block_inplace(&mut self, block: &mut Block<Self>) {
        // SAFETY: as in `proc_block`.
        unsafe { encrypt1(self.rk, block) };
    }

    #[inline(always)]
    fn proc_par_blocks_inplace(&mut self, blocks: &mut ParBlocks<Self>) {
        // SAFETY: as in `proc_block`.
        unsafe { encrypt8(&self.wide, blocks) };
    }
}

/// Encrypts one block in place.
#[inline]
#[target_feature(enable = "aes,avx")]
fn encrypt1(rk: &[__m128i; ROUNDS], block: &mut Block<Backend<'_>>) {
    let p = block.as_mut_ptr();
    // SAFETY: `block` is 16 bytes, readable and writable; unaligned forms.
    let mut b = unsafe { _mm_loadu_si128(p.cast()) };
    b = _mm_xor_si128(b, rk[0]);
    for k in &rk[1..ROUNDS - 1] {
        b = _mm_aesenc_si128(b, *k);
    }
    b = _mm_aesenclast_si128(b, rk[ROUNDS - 1]);
    // SAFETY: as above.
    unsafe { _mm_storeu_si128(p.cast(), b) };
}

/// Each round key broadcast to both halves of a 256-bit register.
#[inline]
#[target_feature(enable = "avx,avx2")]
fn broadcast(rk: &[__m128i; ROUNDS]) -> [__m256i; ROUNDS] {
    let mut wide = [_mm256_setzero_si256(); ROUNDS];
    for (w, k) in wide.iter_mut().zip(rk) {
        *w = _mm256_broadcastsi128_si256(*k);
    }
    wide
}

/// The blocks at `lo` and `hi` in one register (`lo` in the low half), with two 16-byte
/// loads.
///
/// # Safety
/// Both point to 16 readable bytes (no alignment needed).
#[inline]
#[target_feature(enable = "avx,avx2")]
unsafe fn pair(lo: *const u8, hi: *const u8) -> __m256i {
    // SAFETY: the caller's promise; unaligned loads.
    unsafe { _mm256_set_m128i(_mm_loadu_si128(hi.cast()), _mm_loadu_si128(lo.cast())) }
}

/// Encrypts eight blocks in place, two to a register.
#[inline]
#[target_feature(enable = "aes,avx,avx2,vaes")]
fn encrypt8(wide: &[__m256i; ROUNDS], blocks: &mut ParBlocks<Backend<'_>>) {
    // The eight blocks are 128 contiguous bytes (arrays of arrays of bytes).
    let p: *mut u8 = blocks.as_mut_ptr().cast();
    // Each block is loaded on its own, two 16-byte loads to a register: the callers write
    // the blocks with 16-byte stores just before, and a 32-byte load across two of them
    // cannot be forwarded from the stores (it waits until they have left the core).
    // The second address of each pair goes through `black_box`: the compiler cannot tell
    // that the blocks are adjacent, and keeps two 16-byte loads instead of merging them.
    // SAFETY: `blocks` is 128 bytes; `p.add(32 * i)` and `p.add(32 * i + 16)` for i < 4
    // stay inside them.
    let load = |i: usize| unsafe { pair(p.add(32 * i), core::hint::black_box(p.add(32 * i + 16))) };
    let mut b = [load(0), load(1), load(2), load(3)];
    rounds(&mut b, wide);
    // Stored a block at a time too: the callers read them back one block at a time.
    for (i, x) in b.iter().enumerate() {
        // SAFETY: as above; unaligned stores.
        unsafe { _mm256_storeu2_m128i(p.add(32 * i + 16).cast(), p.add(32 * i).cast(), *x) };
    }
}

/// A zero block: the input of the lanes that have no run.
static ZERO: [u8; 16] = [0; 16];

/// The ten rounds of AES-128 on four registers of two blocks.
#[inline]
#[target_feature(enable = "aes,avx,avx2,vaes")]
fn rounds(b: &mut [__m256i; 4], wide: &[__m256i; ROUNDS]) {
    for x in b.iter_mut() {
        *x = _mm256_xor_si256(*x, wide[0]);
    }
    for k in &wide[1..ROUNDS - 1] {
        for x in b.iter_mut() {
            *x = _mm256_aesenc_epi128(*x, *k);
        }
    }
    for x in b.iter_mut() {
        *x = _mm256_aesenclast_epi128(*x, wide[ROUNDS - 1]);
    }
}

/// [`Keys::mac_run`], once its sizes are checked: `states` is eight blocks, `runs` at
/// most eight of at least `steps * 16` bytes each, `behind` at most `steps` passes of 128
/// bytes or none.
#[inline]
#[target_feature(enable = "aes,avx,avx2,vaes")]
unsafe fn run8(
    rk: &[__m128i; ROUNDS],
    states: &mut [aes::Block],
    runs: &[&[u8]],
    behind: &mut [(&mut [u8], u128)],
    steps: usize,
) {
    let wide = broadcast(rk);
    // Each lane's next input block, and how far it moves per pass (0: the zero block).
    let mut at: [*const u8; 8] = [ZERO.as_ptr(); 8];
    let mut stride = [0usize; 8];
    for ((a, s), r) in at.iter_mut().zip(stride.iter_mut()).zip(runs) {
        *a = r.as_ptr();
        *s = 16;
    }
    let sp: *mut u8 = states.as_mut_ptr().cast();
    // SAFETY (the loads and stores below): `states` is eight 16-byte blocks (the caller
    // checked), so `sp` and the 16-byte steps from it up to 112 are inside them; a run has
    // at least `steps` blocks, so block `step` of a lane with a run is inside it, and a
    // lane without one reads `ZERO` with a stride of 0; a pass of `behind` is 128 bytes.
    // All forms are unaligned.
    unsafe {
        let mut s = [
            pair(sp, sp.add(16)),
            pair(sp.add(32), sp.add(48)),
            pair(sp.add(64), sp.add(80)),
            pair(sp.add(96), sp.add(112)),
        ];
        for step in 0..steps {
            for (j, x) in s.iter_mut().enumerate() {
                let (l, h) = (2 * j, 2 * j + 1);
                let input = pair(at[l].add(step * stride[l]), at[h].add(step * stride[h]));
                *x = _mm256_xor_si256(*x, input);
            }
            rounds(&mut s, &wide);
            if let Some((pass, first)) = behind.get_mut(step).filter(|(p, _)| !p.is_empty()) {
                let mut c = [_mm256_setzero_si256(); 4];
                for (j, x) in c.iter_mut().enumerate() {
                    let n = *first + 2 * j as u128;
                    *x = _mm256_set_m128i(be_block(n + 1), be_block(n));
                }
                rounds(&mut c, &wide);
                let pp = pass.as_mut_ptr();
                for (j, x) in c.iter().enumerate() {
                    let d = pp.add(32 * j);
                    _mm256_storeu_si256(d.cast(), _mm256_xor_si256(_mm256_loadu_si256(d.cast()), *x));
                }
            }
        }
        for (j, x) in s.iter().enumerate() {
            _mm256_storeu2_m128i(sp.add(32 * j + 16).cast(), sp.add(32 * j).cast(), *x);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes::cipher::generic_array::GenericArray;
    use aes::cipher::{BlockEncrypt, KeyInit};
    use proptest::prelude::*;

    /// Runs one block and eight blocks through the VAES backend.
    type One = GenericArray<u8, U16>;
    type Eight = GenericArray<One, U8>;

    struct Both<'a> {
        one: &'a mut One,
        eight: &'a mut Eight,
    }
    impl BlockSizeUser for Both<'_> {
        type BlockSize = U16;
    }
    impl BlockClosure for Both<'_> {
        fn call<B: BlockBackend<BlockSize = U16>>(self, backend: &mut B) {
            assert_eq!(core::mem::size_of::<ParBlocks<B>>(), 128);
            backend.proc_block_inplace(self.one);
            // The same bytes, typed for `B` (eight blocks of 16 bytes both).
            let mut par = ParBlocks::<B>::default();
            for (d, s) in par.iter_mut().zip(self.eight.iter()) {
                d.copy_from_slice(s);
            }
            backend.proc_par_blocks_inplace(&mut par);
            let mut by_value = ParBlocks::<B>::default();
            for (d, s) in by_value.iter_mut().zip(self.eight.iter()) {
                d.copy_from_slice(s);
            }
            let mut out = ParBlocks::<B>::default();
            backend.proc_par_blocks((&by_value, &mut out).into());
            assert!(out == par, "in place and not agree");
            for (d, s) in self.eight.iter_mut().zip(par.iter()) {
                d.copy_from_slice(s);
            }
        }
    }

    /// FIPS 197 appendix B: the cipher example.
    #[test]
    fn fips_197_example() {
        let Some(keys) = Keys::new(&[
            0x2b, 0x7e, 0x15, 0x16, 0x28, 0xae, 0xd2, 0xa6, 0xab, 0xf7, 0x15, 0x88, 0x09, 0xcf, 0x4f, 0x3c,
        ]) else {
            return; // no VAES on this CPU: the `aes` crate's backend does the work
        };
        let input = [0x32, 0x43, 0xf6, 0xa8, 0x88, 0x5a, 0x30, 0x8d, 0x31, 0x31, 0x98, 0xa2, 0xe0, 0x37, 0x07, 0x34];
        let mut one = GenericArray::from(input);
        let mut eight = Eight::default();
        for b in eight.iter_mut() {
            b.copy_from_slice(&input);
        }
        keys.encrypt_with_backend(Both { one: &mut one, eight: &mut eight });
        let want = [0x39, 0x25, 0x84, 0x1d, 0x02, 0xdc, 0x09, 0xfb, 0xdc, 0x11, 0x85, 0x97, 0x19, 0x6a, 0x0b, 0x32];
        assert_eq!(one.as_slice(), &want);
        assert!(eight.iter().all(|b| b.as_slice() == want));
    }

    proptest! {
        /// Every block, alone or eight at once, as the `aes` crate encrypts it.
        #[test]
        fn blocks_match_the_aes_crate(key in any::<[u8; 16]>(), blocks in any::<[[u8; 16]; 9]>()) {
            let Some(keys) = Keys::new(&key) else { return Ok(()) };
            let reference = aes::Aes128Enc::new(GenericArray::from_slice(&key));
            let mut one = GenericArray::from(blocks[0]);
            let mut eight = Eight::default();
            for (d, s) in eight.iter_mut().zip(&blocks[1..]) {
                d.copy_from_slice(s);
            }
            keys.encrypt_with_backend(Both { one: &mut one, eight: &mut eight });
            let mut want = GenericArray::from(blocks[0]);
            reference.encrypt_block(&mut want);
            prop_assert_eq!(one, want);
            for (got, b) in eight.iter().zip(&blocks[1..]) {
                let mut want = GenericArray::from(*b);
                reference.encrypt_block(&mut want);
                prop_assert_eq!(got.as_slice(), want.as_slice());
            }
        }
    }
}
