//! What the locator and the stub both need of a DNS message beside simple-dns: the checks on
//! a header before a message is decoded, its id field, and names compared and spelled as
//! NTMobile does.

use core::ops::Range;
use ntm_proto::wire::Fqdn;
use simple_dns::header_buffer;

/// Length of the DNS header.
pub(crate) const HEADER_LEN: usize = 12;
/// The message id, the first header field (RFC 1035, 4.1.1).
const ID_FIELD: Range<usize> = 0..2;
/// Shortest question on the wire: the root name, type and class.
const QUESTION_MIN: usize = 5;
/// Shortest resource record on the wire: the root name, type, class, TTL and RDLENGTH.
const RECORD_MIN: usize = 11;
/// The UDP payload size our messages advertise with EDNS(0) (the DNS Flag Day 2020 value:
/// no fragmentation on any common path).
pub(crate) const EDNS_PAYLOAD: u16 = 1232;

/// The entry counts of a message's four sections, as its header states them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Counts {
    pub(crate) questions: usize,
    pub(crate) answers: usize,
    pub(crate) authorities: usize,
    pub(crate) additionals: usize,
}

impl Counts {
    /// The counts, if `bytes` holds a whole header.
    pub(crate) fn read(bytes: &[u8]) -> Option<Counts> {
        // header_buffer's readers index the buffer: only call them on a whole header.
        if bytes.len() < HEADER_LEN {
            return None;
        }
        let count = |read: fn(&[u8]) -> simple_dns::Result<u16>| read(bytes).ok().map(usize::from);
        Some(Counts {
            questions: count(header_buffer::questions)?,
            answers: count(header_buffer::answers)?,
            authorities: count(header_buffer::name_servers)?,
            additionals: count(header_buffer::additional_records)?,
        })
    }

    /// True if a message of `len` bytes can hold this many entries (a question takes 5
    /// bytes at least, a record 11). simple-dns reserves room for every counted entry
    /// before it reads any, so a short datagram must not make it reserve megabytes: check
    /// this before decoding.
    pub(crate) fn fit(&self, len: usize) -> bool {
        // At most 3 x 65535 records of 11 bytes: no overflow even where usize has 32 bits.
        let records = self.answers + self.authorities + self.additionals;
        HEADER_LEN + QUESTION_MIN * self.questions + RECORD_MIN * records <= len
    }
}

/// Puts `id` into a message's id field; false if `bytes` is shorter than a header.
pub(crate) fn set_id(bytes: &mut [u8], id: u16) -> bool {
    if bytes.len() < HEADER_LEN {
        return false;
    }
    match bytes.get_mut(ID_FIELD) {
        Some(field) => {
            field.copy_from_slice(&id.to_be_bytes());
            true
        }
        None => false,
    }
}

/// True if two names, given as their labels, are one name: the same labels but for ASCII
/// case, which DNS ignores (and resolvers may randomise).
pub(crate) fn same_name<A: AsRef<[u8]>, B: AsRef<[u8]>>(a: &[A], b: &[B]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.as_ref().eq_ignore_ascii_case(y.as_ref()))
}

/// The name as the engines spell it, if it is a valid [`Fqdn`] (not the root; only
/// letters, digits, hyphens and underscores). Labels are checked before they are joined,
/// so a label holding a dot cannot pass for two.
pub(crate) fn to_fqdn<'a>(labels: impl IntoIterator<Item = &'a [u8]>) -> Option<Fqdn> {
    let mut text = String::new();
    for label in labels {
        if !label.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return None;
        }
        if !text.is_empty() {
            text.push('.');
        }
        text.extend(label.iter().map(|&b| char::from(b)));
    }
    Fqdn::new(&text).ok()
}
