//! Fully qualified domain names, the identity of every node and server.
//!
//! Names are compared and signed byte for byte, so the wire carries exactly one spelling
//! of each: lowercase letters, digits, hyphens and (for service labels such as `_ntm`)
//! underscores, labels of 1-63 bytes joined by dots, 253 bytes at most, no trailing dot.
//! [`Fqdn::new`] accepts what a user types (any case, a trailing dot) and canonicalises;
//! decoding from the wire refuses anything that is not already canonical.

use super::{Codec, Reader, WireError, Writer};
use core::fmt;
use core::str::FromStr;

/// Longest name, without the trailing dot (RFC 1035, 2.3.4 less the root label).
pub const FQDN_MAX: usize = 253;
const LABEL_MAX: usize = 63;

/// A canonical fully qualified domain name. Stored on the heap at its exact length, so
/// that messages and tables holding names stay small to move.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fqdn(Box<str>);

impl Fqdn {
    /// Parses a name as a user or a config file writes it: case-insensitive, an optional
    /// trailing dot.
    pub fn new(name: &str) -> Result<Self, WireError> {
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.len() > FQDN_MAX {
            return Err(WireError::TooLong("name"));
        }
        let s = name.to_ascii_lowercase();
        Self::check(s.as_bytes())?;
        Ok(Fqdn(s.into_boxed_str()))
    }

    fn check(name: &[u8]) -> Result<(), WireError> {
        if name.is_empty() || name.len() > FQDN_MAX {
            return Err(WireError::BadValue("name length"));
        }
        for label in name.split(|&b| b == b'.') {
            if label.is_empty() || label.len() > LABEL_MAX {
                return Err(WireError::BadValue("name label length"));
            }
            if label.first() == Some(&b'-') || label.last() == Some(&b'-') {
                return Err(WireError::BadValue("name label hyphen"));
            }
            let ok = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'_';
            if !label.iter().all(ok) {
                return Err(WireError::BadValue("name character"));
            }
        }
        Ok(())
    }

    /// The name without a trailing dot.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name's parent (the name with its first label removed), if it has one.
    pub fn parent(&self) -> Option<Fqdn> {
        let (_, rest) = self.0.split_once('.')?;
        Fqdn::new(rest).ok()
    }

    /// True if `self` equals `zone` or lies below it.
    pub fn is_within(&self, zone: &Fqdn) -> bool {
        let (me, z) = (self.as_str(), zone.as_str());
        me == z || (me.len() > z.len() && me.ends_with(z) && me.as_bytes().get(me.len() - z.len() - 1) == Some(&b'.'))
    }
}

impl FromStr for Fqdn {
    type Err = WireError;
    fn from_str(s: &str) -> Result<Self, WireError> {
        Fqdn::new(s)
    }
}

impl fmt::Display for Fqdn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Fqdn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fqdn({})", self.0)
    }
}

/// In configuration files a name is a string, written as a user would (any case, an
/// optional trailing dot).
#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Fqdn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Fqdn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a domain name")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Fqdn, E> {
                Fqdn::new(s).map_err(|e| E::custom(format_args!("\"{s}\": {e}")))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Fqdn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A length byte, then the canonical name.
impl Codec for Fqdn {
    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let n = usize::from(r.u8()?);
        let bytes = r.take(n)?;
        Self::check(bytes)?;
        let text = core::str::from_utf8(bytes).map_err(|_| WireError::BadValue("name character"))?;
        Ok(Fqdn(text.into()))
    }
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        let n = u8::try_from(self.0.len()).map_err(|_| WireError::TooLong("name"))?;
        w.u8(n)?;
        w.put(self.0.as_bytes())
    }
    fn encoded_len(&self) -> usize {
        1 + self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonicalises_user_input() {
        let n = Fqdn::new("Box1.Home.Example.").unwrap();
        assert_eq!(n.as_str(), "box1.home.example");
        assert_eq!(n.to_vec(), b"\x11box1.home.example");
        assert_eq!(n.parent().unwrap().as_str(), "home.example");
        assert!(n.is_within(&Fqdn::new("example").unwrap()));
        assert!(!n.is_within(&Fqdn::new("me.example").unwrap()));
    }

    #[test]
    fn refuses_bad_names() {
        for bad in ["", ".", "a..b", "-a.b", "a-.b", "a b.c", "é.example"] {
            assert!(Fqdn::new(bad).is_err(), "{bad:?}");
        }
        assert!(Fqdn::new(&"a".repeat(64)).is_err());
        assert!(Fqdn::new(&vec!["a".repeat(63); 4].join(".")).is_err()); // 255 bytes
                                                                         // Uppercase is not canonical on the wire.
        assert_eq!(Fqdn::from_bytes(b"\x03ABC"), Err(WireError::BadValue("name character")));
    }
}
