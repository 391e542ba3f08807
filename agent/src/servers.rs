//! Where the AS and the static DC are: the configured entries (addresses, or names with
//! port) turned into addresses of both families.
//!
//! Names are looked up through the DC locator's resolvers (`dns.upstream`), A and AAAA,
//! by asynchronous UDP through the agent's loop ([`Locator::start_addresses`]); nothing
//! blocks. A name is looked up at start, again on every network change and whenever the
//! node says none of the AS's addresses answered, and after a failed lookup again with a
//! growing wait (1, 2, 4 ... 60 s). A name's last addresses are kept while a new lookup
//! fails, so a resolver that is briefly unreachable does not take the server away.

use crate::config::ServerAddr;
use ntm_dns::Locator;
use ntm_proto::engine::DnsAnswer;
use ntm_proto::time::{Duration, Instant};
use std::net::SocketAddr;

/// Query ids of these lookups have this bit set; the node's own DNS queries count up
/// from 1 and never reach it.
pub const QUERY_BIT: u64 = 1 << 63;
/// Longest wait before looking up a name again after failures.
const RETRY_MAX: Duration = Duration::from_secs(60);

/// One server's entries and what they resolved to.
#[derive(Debug)]
pub struct ServerAddrs {
    /// What the entries are of ("AS", "static DC"), for the log.
    what: &'static str,
    entries: Vec<ServerAddr>,
    /// Per entry: its addresses (a literal's own; a name's from its last good lookup).
    found: Vec<Vec<SocketAddr>>,
    /// Lookups in flight: (query id, entry).
    pending: Vec<(u64, usize)>,
    /// Rounds of lookups that failed in a row, and when to try again.
    failures: u32,
    retry_at: Option<Instant>,
    /// The addresses changed since [`ServerAddrs::take_changed`] was last called.
    changed: bool,
}

impl ServerAddrs {
    /// The entries, literals already known.
    pub fn new(what: &'static str, entries: Vec<ServerAddr>) -> Self {
        let found = entries
            .iter()
            .map(|e| match e {
                ServerAddr::Addr(a) => vec![*a],
                ServerAddr::Name(..) => Vec::new(),
            })
            .collect();
        ServerAddrs { what, entries, found, pending: Vec::new(), failures: 0, retry_at: None, changed: false }
    }

    /// Every address known now, in the order of the entries, without repeats.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = Vec::new();
        for a in self.found.iter().flatten() {
            if !out.contains(a) {
                out.push(*a);
            }
        }
        out
    }

    /// Looks up every name again (those not already being looked up); `next_id` hands
    /// out query ids.
    pub fn resolve(&mut self, now: Instant, locator: &mut Locator, next_id: &mut u64) {
        for (i, e) in self.entries.iter().enumerate() {
            let ServerAddr::Name(name, port) = e else { continue };
            if self.pending.iter().any(|&(_, j)| j == i) {
                continue;
            }
            let id = QUERY_BIT | *next_id;
            *next_id = next_id.wrapping_add(1) & !QUERY_BIT;
            self.pending.push((id, i));
            log::debug!("looking up the {} {name}", self.what);
            locator.start_addresses(now, id, name, *port);
        }
        self.retry_at = None;
    }

    /// An answer from the locator; false if it is not one of ours.
    pub fn handle_answer(&mut self, now: Instant, id: u64, answer: &DnsAnswer) -> bool {
        let Some(k) = self.pending.iter().position(|&(q, _)| q == id) else { return false };
        let (_, i) = self.pending.swap_remove(k);
        let name = match self.entries.get(i) {
            Some(ServerAddr::Name(n, _)) => n.clone(),
            _ => return true,
        };
        match answer {
            DnsAnswer::Dc(loc) if !loc.addrs.is_empty() => {
                log::info!("{} {name} is at {:?}", self.what, loc.addrs);
                if let Some(f) = self.found.get_mut(i) {
                    if *f != loc.addrs {
                        f.clone_from(&loc.addrs);
                        self.changed = true;
                    }
                }
                self.failures = 0;
            }
            _ => {
                let wait = Duration::from_secs(1u64 << self.failures.min(6)).min(RETRY_MAX);
                log::warn!("cannot resolve the {} {name}; trying again in {}s", self.what, wait.as_secs());
                self.failures = self.failures.saturating_add(1);
                let at = now + wait;
                self.retry_at = Some(self.retry_at.map_or(at, |t| t.min(at)));
            }
        }
        true
    }

    /// When to look up again after a failure.
    pub fn deadline(&self) -> Option<Instant> {
        self.retry_at
    }

    /// The addresses, if they changed since the last call.
    pub fn take_changed(&mut self) -> Option<Vec<SocketAddr>> {
        std::mem::take(&mut self.changed).then(|| self.addrs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ntm_dns::LocatorConfig;
    use ntm_proto::engine::DcLocation;
    use ntm_proto::wire::Fqdn;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn names_are_resolved_kept_on_failure_and_retried_with_backoff() {
        let name = Fqdn::new("as.example.net").unwrap();
        let mut s =
            ServerAddrs::new("AS", vec![ServerAddr::Addr(sa("192.0.2.10:4443")), ServerAddr::Name(name.clone(), 4443)]);
        assert_eq!(s.addrs(), vec![sa("192.0.2.10:4443")]);
        let cfg = LocatorConfig { nameservers: vec![sa("192.0.2.53:53")], ..LocatorConfig::default() };
        let mut loc = Locator::new(cfg, Box::new(rand_core::OsRng));
        let mut ids = 1;
        let t0 = Instant::ZERO;
        s.resolve(t0, &mut loc, &mut ids);
        assert_eq!(core::iter::from_fn(|| loc.poll_transmit()).count(), 2, "A and AAAA");
        let id = QUERY_BIT | 1;
        assert!(!s.handle_answer(t0, 5, &DnsAnswer::Failed), "not ours");
        let v6 = vec![sa("[2001:db8::10]:4443")];
        assert!(s.handle_answer(t0, id, &DnsAnswer::Dc(DcLocation { name: name.clone(), addrs: v6 })));
        assert_eq!(s.take_changed(), Some(vec![sa("192.0.2.10:4443"), sa("[2001:db8::10]:4443")]));
        assert_eq!(s.take_changed(), None);
        assert_eq!(s.deadline(), None);
        // A failed lookup keeps the addresses and schedules another, later each time.
        s.resolve(t0, &mut loc, &mut ids);
        assert!(s.handle_answer(t0, QUERY_BIT | 2, &DnsAnswer::Failed));
        assert_eq!(s.addrs().len(), 2);
        assert_eq!(s.deadline(), Some(t0 + Duration::from_secs(1)));
        s.resolve(t0, &mut loc, &mut ids);
        assert!(s.handle_answer(t0, QUERY_BIT | 3, &DnsAnswer::Failed));
        assert_eq!(s.deadline(), Some(t0 + Duration::from_secs(2)));
    }
}
