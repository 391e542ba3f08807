//! The simulated DNS: which DC serves which zone.
//!
//! Engines ask "which DC serves this name?" ([`ntm_proto::engine::DnsQuery`]). The table
//! answers from the longest registered zone that contains the name
//! ([`Fqdn::is_within`]): [`DnsAnswer::Dc`] for an NTMobile zone, [`DnsAnswer::NotNtm`] for
//! an ordinary one, [`DnsAnswer::Failed`] for a name under no zone. Answers are computed
//! when the query is asked and arrive [`Dns::latency`] later. Every query is logged so tests
//! can assert who looked up what.

use crate::host::HostId;
use ntm_proto::engine::{DcLocation, DnsAnswer};
use ntm_proto::time::{Duration, Instant};
use ntm_proto::wire::Fqdn;

/// What a zone is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Zone {
    Ntm(DcLocation),
    Ordinary,
}

/// One query an engine asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsLookup {
    /// When it was asked.
    pub at: Instant,
    /// Who asked.
    pub host: HostId,
    /// The name asked for.
    pub name: Fqdn,
}

/// The zone table, answer latency and query log.
#[derive(Clone, Debug)]
pub struct Dns {
    zones: Vec<(Fqdn, Zone)>,
    latency: Duration,
    lookups: Vec<DnsLookup>,
}

impl Default for Dns {
    fn default() -> Self {
        Dns { zones: Vec::new(), latency: Duration::from_millis(10), lookups: Vec::new() }
    }
}

impl Dns {
    /// Registers (or replaces) an NTMobile zone served by `dc`.
    pub fn add_zone(&mut self, zone: Fqdn, dc: DcLocation) -> &mut Self {
        self.set(zone, Zone::Ntm(dc))
    }

    /// Registers (or replaces) an ordinary zone: its names answer [`DnsAnswer::NotNtm`].
    pub fn add_ordinary(&mut self, zone: Fqdn) -> &mut Self {
        self.set(zone, Zone::Ordinary)
    }

    /// Forgets a zone; its names then fall to an enclosing zone or fail.
    pub fn remove_zone(&mut self, zone: &Fqdn) -> &mut Self {
        self.zones.retain(|(z, _)| z != zone);
        self
    }

    fn set(&mut self, zone: Fqdn, what: Zone) -> &mut Self {
        match self.zones.iter_mut().find(|(z, _)| *z == zone) {
            Some(entry) => entry.1 = what,
            None => self.zones.push((zone, what)),
        }
        self
    }

    /// Sets how long answers take (default 10 ms).
    pub fn set_latency(&mut self, latency: Duration) -> &mut Self {
        self.latency = latency;
        self
    }

    /// How long answers take.
    pub fn latency(&self) -> Duration {
        self.latency
    }

    /// The answer for `name` now, from the longest zone containing it.
    pub fn answer(&self, name: &Fqdn) -> DnsAnswer {
        let best = self.zones.iter().filter(|(z, _)| name.is_within(z)).max_by_key(|(z, _)| z.as_str().len());
        match best {
            Some((_, Zone::Ntm(dc))) => DnsAnswer::Dc(dc.clone()),
            Some((_, Zone::Ordinary)) => DnsAnswer::NotNtm,
            None => DnsAnswer::Failed,
        }
    }

    /// Every query so far, oldest first.
    pub fn lookups(&self) -> &[DnsLookup] {
        &self.lookups
    }

    /// How many queries `host` (or anyone, for None) asked for names within `zone`.
    pub fn lookups_within(&self, host: Option<HostId>, zone: &Fqdn) -> usize {
        self.lookups.iter().filter(|l| host.is_none_or(|h| h == l.host) && l.name.is_within(zone)).count()
    }

    pub(crate) fn log(&mut self, at: Instant, host: HostId, name: Fqdn) {
        self.lookups.push(DnsLookup { at, host, name });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::SocketAddr;

    fn name(s: &str) -> Fqdn {
        Fqdn::new(s).unwrap()
    }

    #[test]
    fn longest_zone_wins() {
        let dc = |n: &str| DcLocation { name: name(n), addrs: vec![SocketAddr::from(([192, 0, 2, 10], 9000))] };
        let mut dns = Dns::default();
        dns.add_zone(name("example.net"), dc("dc.example.net"))
            .add_ordinary(name("plain.example.net"))
            .add_zone(name("mobile.plain.example.net"), dc("dc.mobile.plain.example.net"));
        assert_eq!(dns.answer(&name("a.example.net")), DnsAnswer::Dc(dc("dc.example.net")));
        assert_eq!(dns.answer(&name("www.plain.example.net")), DnsAnswer::NotNtm);
        assert_eq!(dns.answer(&name("n.mobile.plain.example.net")), DnsAnswer::Dc(dc("dc.mobile.plain.example.net")));
        assert_eq!(dns.answer(&name("example.org")), DnsAnswer::Failed);
        // "notexample.net" is not within "example.net".
        assert_eq!(dns.answer(&name("notexample.net")), DnsAnswer::Failed);
        dns.remove_zone(&name("plain.example.net"));
        assert_eq!(dns.answer(&name("www.plain.example.net")), DnsAnswer::Dc(dc("dc.example.net")));
    }
}
