//! The codec every message body is built from.
//!
//! A body is a fixed sequence of fields, each encoded by its [`Codec`] impl, all integers
//! big-endian (spec section 6: byte order is explicit in every wire format). Reading goes
//! through [`Reader`], whose every accessor checks the remaining length first, so no input
//! can make a decoder index out of bounds; writing goes through [`Writer`], which refuses
//! to run past the caller's buffer instead of panicking.

use super::WireError;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// A cursor over received bytes. Every read is length-checked.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.buf.len() {
            return Err(WireError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Takes the next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian u16.
    pub fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian u32.
    pub fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian u64.
    pub fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// Ends a whole message: spec'd formats have no slack, so leftover bytes are an error.
    pub fn finish(self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::TrailingBytes)
        }
    }
}

/// A cursor over an output buffer. Running past its end is an error, not a panic.
#[derive(Debug)]
pub struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    /// Starts writing at the beginning of `buf`.
    pub fn new(buf: &'a mut [u8]) -> Self {
        Writer { buf, pos: 0 }
    }

    /// Bytes written so far.
    pub fn written(&self) -> usize {
        self.pos
    }

    /// Appends `bytes`.
    pub fn put(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        let end = self.pos.checked_add(bytes.len()).ok_or(WireError::BufferTooSmall)?;
        let dst = self.buf.get_mut(self.pos..end).ok_or(WireError::BufferTooSmall)?;
        dst.copy_from_slice(bytes);
        self.pos = end;
        Ok(())
    }

    /// Appends one byte.
    pub fn u8(&mut self, v: u8) -> Result<(), WireError> {
        self.put(&[v])
    }

    /// Appends a big-endian u16.
    pub fn u16(&mut self, v: u16) -> Result<(), WireError> {
        self.put(&v.to_be_bytes())
    }

    /// Appends a big-endian u32.
    pub fn u32(&mut self, v: u32) -> Result<(), WireError> {
        self.put(&v.to_be_bytes())
    }

    /// Appends a big-endian u64.
    pub fn u64(&mut self, v: u64) -> Result<(), WireError> {
        self.put(&v.to_be_bytes())
    }
}

/// A field type with one wire encoding.
pub trait Codec: Sized {
    /// Reads one value, leaving the reader after it.
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError>;
    /// Writes the value.
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError>;
    /// The exact number of bytes [`Codec::encode`] writes.
    fn encoded_len(&self) -> usize;

    /// Decodes a whole buffer that must hold exactly one value.
    fn from_bytes(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let v = Self::decode(&mut r)?;
        r.finish()?;
        Ok(v)
    }

    /// Encodes into a new vector of exactly [`Codec::encoded_len`] bytes.
    fn to_vec(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.encoded_len()];
        let mut w = Writer::new(&mut out);
        // Invariant: `encoded_len` is exact, so the buffer is large enough; a mismatch is
        // our bug and shows up as a short vector in the round-trip tests.
        let res = self.encode(&mut w);
        debug_assert!(res.is_ok() && w.written() == out.len());
        out
    }
}

macro_rules! int_codec {
    ($t:ty, $read:ident, $write:ident) => {
        impl Codec for $t {
            fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
                r.$read()
            }
            fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
                w.$write(*self)
            }
            fn encoded_len(&self) -> usize {
                core::mem::size_of::<$t>()
            }
        }
    };
}
int_codec!(u8, u8, u8);
int_codec!(u16, u16, u16);
int_codec!(u32, u32, u32);
int_codec!(u64, u64, u64);

impl Codec for bool {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        match r.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError::BadValue("boolean")),
        }
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.u8(u8::from(*self))
    }
    fn encoded_len(&self) -> usize {
        1
    }
}

impl<const N: usize> Codec for [u8; N] {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        r.array()
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.put(self)
    }
    fn encoded_len(&self) -> usize {
        N
    }
}

impl Codec for Ipv4Addr {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Ipv4Addr::from(r.array::<4>()?))
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.put(&self.octets())
    }
    fn encoded_len(&self) -> usize {
        4
    }
}

impl Codec for Ipv6Addr {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Ipv6Addr::from(r.array::<16>()?))
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.put(&self.octets())
    }
    fn encoded_len(&self) -> usize {
        16
    }
}

/// Address family code points: 4 and 6, as in the IP version field.
const FAMILY_V4: u8 = 4;
const FAMILY_V6: u8 = 6;

impl Codec for IpAddr {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        match r.u8()? {
            FAMILY_V4 => Ok(IpAddr::V4(Ipv4Addr::decode(r)?)),
            FAMILY_V6 => Ok(IpAddr::V6(Ipv6Addr::decode(r)?)),
            _ => Err(WireError::BadValue("address family")),
        }
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        match self {
            IpAddr::V4(a) => {
                w.u8(FAMILY_V4)?;
                a.encode(w)
            }
            IpAddr::V6(a) => {
                w.u8(FAMILY_V6)?;
                a.encode(w)
            }
        }
    }
    fn encoded_len(&self) -> usize {
        match self {
            IpAddr::V4(_) => 1 + 4,
            IpAddr::V6(_) => 1 + 16,
        }
    }
}

/// An IPv4 or IPv6 address and a UDP/TCP port. IPv6 flow info and scope are not carried:
/// NTMobile endpoints are global or NAT-outside addresses, never link-local.
impl Codec for SocketAddr {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let ip = IpAddr::decode(r)?;
        let port = r.u16()?;
        Ok(SocketAddr::new(ip, port))
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        self.ip().encode(w)?;
        w.u16(self.port())
    }
    fn encoded_len(&self) -> usize {
        self.ip().encoded_len() + 2
    }
}

/// Optional fields: one presence byte (0 or 1), then the value if present.
impl<T: Codec> Codec for Option<T> {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        match r.u8()? {
            0 => Ok(None),
            1 => Ok(Some(T::decode(r)?)),
            _ => Err(WireError::BadValue("presence flag")),
        }
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        match self {
            None => w.u8(0),
            Some(v) => {
                w.u8(1)?;
                v.encode(w)
            }
        }
    }
    fn encoded_len(&self) -> usize {
        1 + self.as_ref().map_or(0, Codec::encoded_len)
    }
}

/// A field that earlier builds neither send nor expect, at the very end of a message
/// body: absent, it reads as `T::default()`; it is written only when it is not the
/// default. So a message whose new field does not matter is byte for byte what an
/// earlier build sends and reads, and an earlier build's message reads here. The default
/// written out is refused, so each message keeps one encoding. Only the last field of a
/// body may be one (anything after it would be taken for it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Tail<T>(pub T);

impl<T: Codec + Default + PartialEq> Codec for Tail<T> {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        if r.remaining() == 0 {
            return Ok(Tail(T::default()));
        }
        // The default is never written: one encoding per message.
        match T::decode(r)? {
            v if v == T::default() => Err(WireError::BadValue("tail field written as its default")),
            v => Ok(Tail(v)),
        }
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        if self.0 == T::default() {
            return Ok(());
        }
        self.0.encode(w)
    }
    fn encoded_len(&self) -> usize {
        if self.0 == T::default() {
            0
        } else {
            self.0.encoded_len()
        }
    }
}

/// Two fields that earlier builds neither send nor expect, at the very end of a body,
/// when a later build adds a second one after a [`Tail`]: absent, both read as their
/// defaults; else `A` is written in full (its default too) and `B` follows as a [`Tail`].
/// So a message with `B` at its default is byte for byte the message with `Tail<A>`, and
/// each message keeps one encoding (both written as defaults is refused).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Tails<A, B>(pub A, pub B);

impl<A: Codec + Default + PartialEq, B: Codec + Default + PartialEq> Codec for Tails<A, B> {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        if r.remaining() == 0 {
            return Ok(Tails(A::default(), B::default()));
        }
        let a = A::decode(r)?;
        let Tail(b) = Tail::<B>::decode(r)?;
        if a == A::default() && b == B::default() {
            return Err(WireError::BadValue("tail field written as its default"));
        }
        Ok(Tails(a, b))
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        if self.0 == A::default() && self.1 == B::default() {
            return Ok(());
        }
        self.0.encode(w)?;
        if self.1 == B::default() {
            return Ok(());
        }
        self.1.encode(w)
    }
    fn encoded_len(&self) -> usize {
        if self.0 == A::default() && self.1 == B::default() {
            0
        } else {
            self.0.encoded_len() + if self.1 == B::default() { 0 } else { self.1.encoded_len() }
        }
    }
}

/// A list of at most `MAX` values (`MAX` <= 255): a count byte, then the values.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct List<T, const MAX: usize>(Vec<T>);

impl<T, const MAX: usize> Default for List<T, MAX> {
    fn default() -> Self {
        List(Vec::new())
    }
}

impl<T, const MAX: usize> List<T, MAX> {
    /// An empty list.
    pub fn new() -> Self {
        List(Vec::new())
    }

    /// Builds a list, refusing more than `MAX` items.
    pub fn from_vec(v: Vec<T>) -> Result<Self, WireError> {
        if v.len() > MAX || v.len() > usize::from(u8::MAX) {
            return Err(WireError::TooLong("list"));
        }
        Ok(List(v))
    }

    /// Adds an item, refusing to grow past `MAX`.
    pub fn push(&mut self, item: T) -> Result<(), WireError> {
        if self.0.len() >= MAX {
            return Err(WireError::TooLong("list"));
        }
        self.0.push(item);
        Ok(())
    }

    /// The items.
    pub fn as_slice(&self) -> &[T] {
        &self.0
    }

    /// Iterates over the items.
    pub fn iter(&self) -> core::slice::Iter<'_, T> {
        self.0.iter()
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True if there are no items.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a, T, const MAX: usize> IntoIterator for &'a List<T, MAX> {
    type Item = &'a T;
    type IntoIter = core::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<T: Codec, const MAX: usize> Codec for List<T, MAX> {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let n = usize::from(r.u8()?);
        if n > MAX {
            return Err(WireError::TooLong("list"));
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(T::decode(r)?);
        }
        Ok(List(v))
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        let n = u8::try_from(self.0.len()).map_err(|_| WireError::TooLong("list"))?;
        w.u8(n)?;
        self.0.iter().try_for_each(|v| v.encode(w))
    }
    fn encoded_len(&self) -> usize {
        1 + self.0.iter().map(Codec::encoded_len).sum::<usize>()
    }
}

/// Opaque bytes of at most `MAX` (<= 65535): a u16 length, then the bytes.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Bytes<const MAX: usize>(Vec<u8>);

impl<const MAX: usize> Bytes<MAX> {
    /// Wraps `v`, refusing more than `MAX` bytes.
    pub fn new(v: Vec<u8>) -> Result<Self, WireError> {
        if v.len() > MAX || v.len() > usize::from(u16::MAX) {
            return Err(WireError::TooLong("bytes"));
        }
        Ok(Bytes(v))
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }
}

impl<const MAX: usize> core::fmt::Debug for Bytes<MAX> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Bytes(len={})", self.0.len())
    }
}

impl<const MAX: usize> Codec for Bytes<MAX> {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let n = usize::from(r.u16()?);
        if n > MAX {
            return Err(WireError::TooLong("bytes"));
        }
        Ok(Bytes(r.take(n)?.to_vec()))
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        let n = u16::try_from(self.0.len()).map_err(|_| WireError::TooLong("bytes"))?;
        w.u16(n)?;
        w.put(&self.0)
    }
    fn encoded_len(&self) -> usize {
        2 + self.0.len()
    }
}

/// UTF-8 text of at most `MAX` bytes (<= 255): a length byte, then the text. Used for
/// account e-mail addresses and other printable identifiers, never for secrets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Text<const MAX: usize>(String);

impl<const MAX: usize> Text<MAX> {
    /// Wraps `s`, refusing more than `MAX` bytes.
    pub fn new(s: &str) -> Result<Self, WireError> {
        if s.len() > MAX || s.len() > usize::from(u8::MAX) {
            return Err(WireError::TooLong("text"));
        }
        Ok(Text(s.to_owned()))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<const MAX: usize> Codec for Text<MAX> {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let n = usize::from(r.u8()?);
        if n > MAX {
            return Err(WireError::TooLong("text"));
        }
        let s = core::str::from_utf8(r.take(n)?).map_err(|_| WireError::BadValue("UTF-8 text"))?;
        Ok(Text(s.to_owned()))
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        let n = u8::try_from(self.0.len()).map_err(|_| WireError::TooLong("text"))?;
        w.u8(n)?;
        w.put(self.0.as_bytes())
    }
    fn encoded_len(&self) -> usize {
        1 + self.0.len()
    }
}

/// Declares a body struct whose fields are encoded in declaration order.
macro_rules! wire_struct {
    (
        $(#[$m:meta])*
        pub struct $name:ident {
            $( $(#[$fm:meta])* pub $f:ident : $t:ty ),* $(,)?
        }
    ) => {
        $(#[$m])*
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub struct $name {
            $( $(#[$fm])* pub $f: $t ),*
        }

        impl $crate::wire::Codec for $name {
            fn decode(
                #[allow(unused_variables)] r: &mut $crate::wire::Reader<'_>,
            ) -> Result<Self, $crate::wire::WireError> {
                // Struct expressions evaluate their fields in source order, which is the
                // wire order.
                Ok(Self { $( $f: <$t as $crate::wire::Codec>::decode(r)? ),* })
            }
            fn encode(
                &self,
                #[allow(unused_variables)] w: &mut $crate::wire::Writer<'_>,
            ) -> Result<(), $crate::wire::WireError> {
                $( $crate::wire::Codec::encode(&self.$f, w)?; )*
                Ok(())
            }
            fn encoded_len(&self) -> usize {
                0 $( + $crate::wire::Codec::encoded_len(&self.$f) )*
            }
        }
    };
}
pub(crate) use wire_struct;

/// Declares a one-byte code-point enum with an `Unknown(u8)` arm.
macro_rules! code_enum {
    (
        $(#[$m:meta])*
        pub enum $name:ident {
            $( $(#[$vm:meta])* $v:ident = $code:literal ),* $(,)?
        }
    ) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vm])* $v, )*
            /// A code point this implementation does not know.
            Unknown(u8),
        }

        impl From<u8> for $name {
            fn from(v: u8) -> Self {
                match v {
                    $( $code => $name::$v, )*
                    other => $name::Unknown(other),
                }
            }
        }

        impl From<$name> for u8 {
            fn from(v: $name) -> u8 {
                match v {
                    $( $name::$v => $code, )*
                    $name::Unknown(other) => other,
                }
            }
        }

        impl $name {
            /// Every known code point, in declaration order.
            pub const ALL: &'static [$name] = &[ $( $name::$v ),* ];
        }
    };
}
pub(crate) use code_enum;

/// Declares a [`Codec`] for a code-point enum that refuses unknown values.
macro_rules! known_code_codec {
    ($name:ident, $what:literal) => {
        impl $crate::wire::Codec for $name {
            fn decode(r: &mut $crate::wire::Reader<'_>) -> Result<Self, $crate::wire::WireError> {
                match $name::from(r.u8()?) {
                    $name::Unknown(_) => Err($crate::wire::WireError::BadValue($what)),
                    known => Ok(known),
                }
            }
            fn encode(&self, w: &mut $crate::wire::Writer<'_>) -> Result<(), $crate::wire::WireError> {
                w.u8(u8::from(*self))
            }
            fn encoded_len(&self) -> usize {
                1
            }
        }
    };
}
pub(crate) use known_code_codec;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_checks_every_length() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16(), Ok(0x0102));
        assert_eq!(r.u16(), Err(WireError::Truncated));
        assert_eq!(r.u8(), Ok(3));
        assert_eq!(r.take(1), Err(WireError::Truncated));
        assert_eq!(r.finish(), Ok(()));
        assert_eq!(Reader::new(&[0]).finish(), Err(WireError::TrailingBytes));
    }

    #[test]
    fn writer_refuses_overflow() {
        let mut buf = [0u8; 3];
        let mut w = Writer::new(&mut buf);
        assert_eq!(w.u16(0xabcd), Ok(()));
        assert_eq!(w.u16(1), Err(WireError::BufferTooSmall));
        assert_eq!(w.u8(0xef), Ok(()));
        assert_eq!(buf, [0xab, 0xcd, 0xef]);
    }

    #[test]
    fn addresses_round_trip_in_both_families() {
        let v4: SocketAddr = "192.0.2.7:4500".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::7]:4500".parse().unwrap();
        assert_eq!(v4.to_vec(), [4, 192, 0, 2, 7, 0x11, 0x94]);
        assert_eq!(SocketAddr::from_bytes(&v4.to_vec()), Ok(v4));
        assert_eq!(SocketAddr::from_bytes(&v6.to_vec()), Ok(v6));
        assert_eq!(v6.encoded_len(), 19);
        assert_eq!(SocketAddr::from_bytes(&[5, 0, 0, 0, 0, 0, 0]), Err(WireError::BadValue("address family")));
    }

    #[test]
    fn lists_and_options_respect_their_caps() {
        let l: List<u16, 2> = List::from_vec(vec![1, 2]).unwrap();
        assert_eq!(l.to_vec(), [2, 0, 1, 0, 2]);
        assert!(List::<u16, 2>::from_vec(vec![1, 2, 3]).is_err());
        assert_eq!(List::<u16, 2>::from_bytes(&[3, 0, 1, 0, 2, 0, 3]), Err(WireError::TooLong("list")));
        assert_eq!(Option::<u8>::from_bytes(&[2, 0]), Err(WireError::BadValue("presence flag")));
        assert_eq!(Option::<u8>::from_bytes(&[1, 9]), Ok(Some(9)));
        assert_eq!(bool::from_bytes(&[2]), Err(WireError::BadValue("boolean")));
        assert_eq!(Text::<4>::from_bytes(&[2, 0xff, 0xfe]), Err(WireError::BadValue("UTF-8 text")));
        assert_eq!(Bytes::<2>::from_bytes(&[0, 3, 1, 2, 3]), Err(WireError::TooLong("bytes")));
    }
}
