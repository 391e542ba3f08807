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
use std::collections::BTreeMap;
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
    table: BTreeMap<u16, Query<T>>,
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
        Queries { rng, table: BTreeMap::new() }
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
        let Some(id) = self.free_id() else { return Err(data) };
        if !set_id(&mut bytes, id) {
            return Err(data);
        }
        let transmit = (server, bytes.clone());
        let deadline = now + servers.timeout;
        self.table.insert(id, Query { data, bytes, tries: 1, sent_to: vec![server], deadline });
        Ok(transmit)
    }

    /// A random id that no query in the table uses.
    fn free_id(&mut self) -> Option<u16> {
        let start = self.rng.next_u32().to_be_bytes();
        let start = u16::from_be_bytes([start[2], start[3]]);
        // Probe from the random start: the owners cap the table far below 65536 entries,
        // so this ends at once unless the table is close to full.
        (0..=u16::MAX).map(|i| start.wrapping_add(i)).find(|id| !self.table.contains_key(id))
    }

    /// The current try of query `id` failed: it goes to the next server, or leaves the
    /// table when its tries are used up. `None` for an unknown id.
    pub(crate) fn retry(&mut self, now: Instant, id: u16, servers: Servers<'_>) -> Option<Retry<T>> {
        let query = self.table.get_mut(&id)?;
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
            _ => self.table.remove(&id).map(|query| Retry::Failed(query.data)),
        }
    }

    /// The query that a reply with this id from `from` answers, if there is one.
    pub(crate) fn awaited(&self, id: u16, from: SocketAddr) -> Option<&T> {
        self.table.get(&id).filter(|query| query.sent_to.contains(&from)).map(|query| &query.data)
    }

    /// Takes query `id` out of the table (it was answered).
    pub(crate) fn remove(&mut self, id: u16) -> Option<T> {
        self.table.remove(&id).map(|query| query.data)
    }

    /// Keeps only the queries whose data passes `keep`.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.table.retain(|_, query| keep(&query.data));
    }

    /// True if query `id` is in the table.
    pub(crate) fn contains(&self, id: u16) -> bool {
        self.table.contains_key(&id)
    }

    /// The queries whose current try has timed out by `now`.
    pub(crate) fn due(&self, now: Instant) -> Vec<u16> {
        self.table.iter().filter(|(_, query)| query.deadline <= now).map(|(&id, _)| id).collect()
    }

    /// The earliest deadline of a try.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.table.values().map(|query| query.deadline).min()
    }

    /// The data of every query.
    pub(crate) fn data(&self) -> impl Iterator<Item = &T> {
        self.table.values().map(|query| &query.data)
    }

    /// Queries on the wire.
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }
}
