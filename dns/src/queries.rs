//! DNS queries on the wire to a list of servers: the locator's own questions and the
//! stub's forwarded ones.
//!
//! A query goes out under a random id that no other query in the table uses, to the first
//! server. When its try times out (or its owner counts a reply as a failed try) it is sent
//! again as it is, the same id included, to the next server in turn, until it has been
//! sent `tries` times. A reply counts only if it carries the id and comes from one of the
//! servers the query went to, so a late answer to an earlier try is still taken. Servers
//! are given with each call: the owner may reorder them while queries are on the wire.

use crate::message::set_id;
use ntm_proto::engine::Rng;
use ntm_proto::time::{Duration, Instant};
use std::net::SocketAddr;

/// Where queries go and how often.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Servers<'a> {
    /// Servers with port; the first gets a query's first send.
    pub(crate) list: &'a [SocketAddr],
    /// Wait for a reply before the next try.
    pub(crate) timeout: Duration,
    /// Sends of each query in all, the first included.
    pub(crate) tries: u32,
}

/// Queries on the wire, each with what its owner keeps with it (`T`).
pub(crate) struct Queries<T> {
    rng: Rng,
    /// By id, in ascending order (so every walk over it goes in id order, as a map's
    /// would). A sorted vector rather than a `BTreeMap`: the owners cap it at a few hundred
    /// entries, boxed so that a move is 16 bytes each, and the map's code for two value
    /// types made `ntmd` about 19 KB larger.
    table: Vec<(u16, Box<Query<T>>)>,
}

/// A query on the wire.
struct Query<T> {
    data: T,
    /// The message, sent again as it is.
    bytes: Vec<u8>,
    /// Sends so far.
    tries: u32,
    /// Servers it was sent to (a server is listed once).
    sent_to: Vec<SocketAddr>,
    /// When the current try times out.
    deadline: Instant,
}

/// What became of a query whose try failed.
pub(crate) enum Retry<T> {
    /// Sent again: (server, message) to transmit.
    Sent(SocketAddr, Vec<u8>),
    /// All its tries failed; it left the table.
    Failed(T),
}

impl<T> Queries<T> {
    /// No queries; ids are drawn from `rng`.
    pub(crate) fn new(rng: Rng) -> Self {
        Queries { rng, table: Vec::new() }
    }

    /// Sends `bytes` (its id field overwritten with a fresh id) to the first server and
    /// returns (server, message) to transmit. `data` comes back if there is no server, no
    /// free id, or `bytes` is shorter than a DNS header.
    pub(crate) fn send(
        &mut self,
        now: Instant,
        servers: Servers<'_>,
        mut bytes: Vec<u8>,
        data: T,
    ) -> Result<(SocketAddr, Vec<u8>), T> {
        let Some(&server) = servers.list.first() else { return Err(data) };
        let Some((id, at)) = self.free_id() else { return Err(data) };
        if !set_id(&mut bytes, id) {
            return Err(data);
        }
        let transmit = (server, bytes.clone());
        let deadline = now + servers.timeout;
        let query = Box::new(Query { data, bytes, tries: 1, sent_to: vec![server], deadline });
        // `at` is where the search for `id` ended, at most the length: no panic.
        self.table.insert(at, (id, query));
        Ok(transmit)
    }

    /// A random id that no query in the table uses, and where it goes in the table.
    fn free_id(&mut self) -> Option<(u16, usize)> {
        let start = self.rng.next_u32().to_be_bytes();
        let start = u16::from_be_bytes([start[2], start[3]]);
        // Probe from the random start: the owners cap the table far below 65536 entries,
        // so this ends at once unless the table is close to full.
        (0..=u16::MAX).map(|i| start.wrapping_add(i)).find_map(|id| Some((id, self.find(id).err()?)))
    }

    /// The index of query `id`, or where it would go.
    fn find(&self, id: u16) -> Result<usize, usize> {
        self.table.binary_search_by_key(&id, |&(id, _)| id)
    }

    /// Query `id`.
    fn get(&self, id: u16) -> Option<&Query<T>> {
        self.table.get(self.find(id).ok()?).map(|(_, query)| &**query)
    }

    /// The current try of query `id` failed: it goes to the next server, or leaves the
    /// table when its tries are used up. `None` for an unknown id.
    pub(crate) fn retry(&mut self, now: Instant, id: u16, servers: Servers<'_>) -> Option<Retry<T>> {
        let at = self.find(id).ok()?;
        let (_, query) = self.table.get_mut(at)?;
        let list = servers.list;
        let next = usize::try_from(query.tries).ok().and_then(|t| list.get(t.checked_rem(list.len())?));
        match next {
            Some(&server) if query.tries < servers.tries.max(1) => {
                query.tries = query.tries.saturating_add(1);
                query.deadline = now + servers.timeout;
                if !query.sent_to.contains(&server) {
                    query.sent_to.push(server);
                }
                Some(Retry::Sent(server, query.bytes.clone()))
            }
            // `at` holds query `id` (found above, the table unchanged since): no panic.
            _ => Some(Retry::Failed(self.table.remove(at).1.data)),
        }
    }

    /// The query that a reply with this id from `from` answers, if there is one.
    pub(crate) fn awaited(&self, id: u16, from: SocketAddr) -> Option<&T> {
        self.get(id).filter(|query| query.sent_to.contains(&from)).map(|query| &query.data)
    }

    /// Takes query `id` out of the table (it was answered).
    pub(crate) fn remove(&mut self, id: u16) -> Option<T> {
        let at = self.find(id).ok()?;
        // `at` holds query `id`: no panic.
        Some(self.table.remove(at).1.data)
    }

    /// Keeps only the queries whose data passes `keep`.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.table.retain(|(_, query)| keep(&query.data));
    }

    /// True if query `id` is in the table.
    pub(crate) fn contains(&self, id: u16) -> bool {
        self.find(id).is_ok()
    }

    /// The queries whose current try has timed out by `now`.
    pub(crate) fn due(&self, now: Instant) -> Vec<u16> {
        self.table.iter().filter(|(_, query)| query.deadline <= now).map(|&(id, _)| id).collect()
    }

    /// The earliest deadline of a try.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.table.iter().map(|(_, query)| query.deadline).min()
    }

    /// The data of every query.
    pub(crate) fn data(&self) -> impl Iterator<Item = &T> {
        self.table.iter().map(|(_, query)| &query.data)
    }

    /// Queries on the wire.
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::{CryptoRng, Error, RngCore};

    const S1: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)), 53);
    const S2: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2)), 53);
    const T0: Instant = Instant::ZERO;

    /// Draws the same number every time: each id is the first free one from its low 16 bits.
    struct Fixed(u32);
    impl RngCore for Fixed {
        fn next_u32(&mut self) -> u32 {
            self.0
        }
        fn next_u64(&mut self) -> u64 {
            u64::from(self.0)
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            dest.fill(0);
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), Error> {
            dest.fill(0);
            Ok(())
        }
    }
    impl CryptoRng for Fixed {}

    fn servers(list: &[SocketAddr], tries: u32) -> Servers<'_> {
        Servers { list, timeout: Duration::from_secs(2), tries }
    }

    /// A query message whose id `send` overwrites.
    fn message() -> Vec<u8> {
        vec![0xaa; 17]
    }

    #[test]
    fn a_query_goes_round_the_servers_until_its_tries_are_used_up() {
        let mut q = Queries::new(Box::new(Fixed(0x1234_0007)));
        let list = [S1, S2];
        let (to, bytes) = q.send(T0, servers(&list, 3), message(), "a").ok().unwrap();
        assert_eq!((to, &bytes[..2], &bytes[2..]), (S1, &[0, 7][..], &message()[2..]));
        assert_eq!(q.next_deadline(), Some(Instant::from_millis(2000)));
        // Only a server it went to may answer.
        assert_eq!(q.awaited(7, S1), Some(&"a"));
        assert_eq!(q.awaited(7, S2), None);
        assert_eq!(q.awaited(8, S1), None);

        let later = Instant::from_millis(2000);
        assert_eq!(q.due(later), vec![7]);
        let Some(Retry::Sent(to, again)) = q.retry(later, 7, servers(&list, 3)) else { panic!() };
        assert_eq!((to, &again), (S2, &bytes));
        assert_eq!(q.next_deadline(), Some(Instant::from_millis(4000)));
        // A late reply from the first server still counts.
        assert_eq!(q.awaited(7, S1), Some(&"a"));
        assert_eq!(q.awaited(7, S2), Some(&"a"));
        // The third send wraps round to the first server.
        let Some(Retry::Sent(to, _)) = q.retry(later, 7, servers(&list, 3)) else { panic!() };
        assert_eq!(to, S1);
        assert!(matches!(q.retry(later, 7, servers(&list, 3)), Some(Retry::Failed("a"))));
        assert!(q.retry(later, 7, servers(&list, 3)).is_none());
        assert_eq!((q.len(), q.next_deadline()), (0, None));
    }

    #[test]
    fn without_servers_or_a_header_nothing_is_sent() {
        let mut q = Queries::new(Box::new(Fixed(0)));
        assert_eq!(q.send(T0, servers(&[], 3), message(), 1).err(), Some(1));
        assert_eq!(q.send(T0, servers(&[S1], 3), vec![0; 11], 2).err(), Some(2));
        assert_eq!(q.len(), 0);
        // A server list that emptied while a query was out: its next try fails it.
        q.send(T0, servers(&[S1], 3), message(), 3).ok().unwrap();
        assert!(matches!(q.retry(T0, 0, servers(&[], 3)), Some(Retry::Failed(3))));
    }

    #[test]
    fn ids_in_flight_are_distinct_and_walked_in_order() {
        // Every draw starts at 0xfffe: the ids are the free ones from there, wrapping.
        let mut q = Queries::new(Box::new(Fixed(0xfffe)));
        let list = [S1];
        let ids: Vec<u16> = (0..4u8)
            .map(|i| {
                let (_, bytes) = q.send(T0, servers(&list, 1), message(), i).ok().unwrap();
                u16::from_be_bytes([bytes[0], bytes[1]])
            })
            .collect();
        assert_eq!(ids, vec![0xfffe, 0xffff, 0, 1]);
        assert_eq!(q.due(T0 + Duration::from_secs(2)), vec![0, 1, 0xfffe, 0xffff]);
        assert_eq!(q.data().copied().collect::<Vec<u8>>(), vec![2, 3, 0, 1]);
        assert!(q.contains(0xffff));
        assert_eq!(q.remove(0xffff), Some(1));
        assert_eq!(q.remove(0xffff), None);
        q.retain(|&d| d != 2);
        assert_eq!(q.data().copied().collect::<Vec<u8>>(), vec![3, 0]);
        // A freed id is taken again.
        let (_, bytes) = q.send(T0, servers(&list, 1), message(), 9).ok().unwrap();
        assert_eq!(u16::from_be_bytes([bytes[0], bytes[1]]), 0xffff);
        assert_eq!(q.due(T0 + Duration::from_secs(2)), vec![1, 0xfffe, 0xffff]);
    }
}
