//! The Internet checksum (RFC 1071): the ones' complement sum of 16-bit big-endian words.
//!
//! A crate of its own for the same reason as `ntm-aead`: the release profile builds the
//! workspace at opt-level "z" and this crate at 3. A sending agent sums every segment it
//! cuts from a TSO super-packet, about 1 400 bytes each, hundreds of thousands a second.
//! Built at "z" inside the agent, the sum and the slice splitting it called (which "z" did
//! not inline) took about a tenth of the sending agent's time in a single TCP stream
//! (`perf record`, 2026-12-07, Intel Xeon); here the same loop vectorizes.

#![no_std]

/// The ones' complement sum of `data` (big-endian 16-bit words, an odd last byte padded
/// with zero) added to `initial`, unfolded: add more to it, then [`fold`] it. `initial`
/// and the result stay far below `u64::MAX` for any packet (under 2^48 for 2^32 bytes).
///
/// Runs of 16 bytes are read as four native 32-bit words, each added to its own 64-bit
/// sum: no carry chains between the additions, which the compiler turns into vector adds.
/// The ones' complement sum is the same over any word size once folded (RFC 1071,
/// section 2: "byte order independence"), and in the other byte order it comes out
/// byte-swapped, which the end undoes.
pub fn sum(data: &[u8], initial: u64) -> u64 {
    let mut acc = [0u64; 4];
    let mut runs = data.chunks_exact(16);
    for run in &mut runs {
        for (a, w) in acc.iter_mut().zip(run.chunks_exact(4)) {
            *a += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
        }
    }
    let s = acc[0] + acc[1] + acc[2] + acc[3];
    let native = fold(s);
    tail(runs.remainder(), initial + u64::from(u16::from_be_bytes(native.to_ne_bytes())))
}

/// [`sum`] four bytes at a time, for what is left after the 16-byte runs.
fn tail(data: &[u8], initial: u64) -> u64 {
    let mut s = initial;
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        s += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut pairs = rest.chunks_exact(2);
    for p in &mut pairs {
        s += u64::from(u16::from_be_bytes([p[0], p[1]]));
    }
    if let [b] = pairs.remainder() {
        s += u64::from(*b) << 8;
    }
    s
}

/// A sum folded to 16 bits (not inverted: the checksum field holds `!fold(..)`).
pub fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checksum computed the plain way (16-bit words, one at a time, folded as it goes),
    /// independent of [`sum`].
    fn naive(data: &[u8]) -> u16 {
        let mut s: u32 = 0;
        let mut i = 0;
        while i < data.len() {
            let hi = u32::from(data[i]) << 8;
            let lo = data.get(i + 1).map_or(0, |b| u32::from(*b));
            s += hi | lo;
            s = (s & 0xffff) + (s >> 16);
            i += 2;
        }
        s as u16
    }

    /// The 16-byte runs of [`sum`] and its tail, against the plain way: random bytes (and
    /// all ones, all zeros), every length up to 300 and around a segment's, at every
    /// alignment of the first byte, from random starting sums.
    #[test]
    fn the_sum_of_wide_words_is_the_sum_of_16_bit_words() {
        use rand_chacha::rand_core::{RngCore, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(16);
        let mut random = [0u8; 1600];
        rng.fill_bytes(&mut random);
        let lens = (0..=300).chain(1380..=1500);
        for len in lens {
            for data in [&random[..], &[0xff; 1600][..], &[0; 1600][..]] {
                let at = (rng.next_u32() % 8) as usize;
                let d = &data[at..at + len];
                let initial = u64::from(rng.next_u32() % 0x3_0000);
                assert_eq!(fold(sum(d, initial)), fold(u64::from(naive(d)) + initial), "{len} bytes from {at}");
            }
        }
    }

    /// The largest packet a super-packet can be (64 KiB of ones, the worst case for the
    /// sums' sizes) still sums right.
    #[test]
    fn a_whole_super_packet_of_ones_sums_right() {
        let d = [0xffu8; 65_535];
        assert_eq!(fold(sum(&d, 0xffff)), fold(u64::from(naive(&d)) + 0xffff));
    }

    /// Known values: RFC 1071's example (section 3), and an IPv4 header whose checksum
    /// field makes the whole sum to 0xffff.
    #[test]
    fn known_sums() {
        assert_eq!(fold(sum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7], 0)), 0xddf2);
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8,
            0x00, 0xc7,
        ];
        assert_eq!(fold(sum(&header, 0)), 0xffff);
    }
}
