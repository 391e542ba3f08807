//! NAT boxes with the behaviours RFC 4787 (UDP) and RFC 5382 (TCP) name.
//!
//! A NAT box sits on the uplink of an access network and translates IPv4 only; IPv6 is
//! routed through untouched (see `topology`). Contract:
//!
//! - **Mapping** ([`Mapping`], RFC 4787 section 4.1): an outbound packet from internal
//!   endpoint X:x to remote Y:y reuses the mapping that the configured behaviour shares with
//!   earlier destinations, or creates a new one. Outbound packets refresh the mapping and
//!   the permission for Y:y (REQ-6); inbound packets refresh it only if
//!   [`NatConfig::inbound_refresh`] is set.
//! - **Filtering** ([`Filtering`], section 5): an inbound packet to a live mapping passes if
//!   the internal endpoint has sent to the remote's address (ADF), to its address and port
//!   (APDF), or unconditionally (EIF), within the mapping timeout.
//! - **Ports** ([`PortAllocation`], section 4.2.1): external ports are unique per protocol;
//!   port preservation falls back to a random port when the internal port is taken.
//! - **Timeouts**: a mapping unused (outbound) for its protocol's timeout is gone; inbound
//!   packets to it are dropped and counted as [`NatStats::no_mapping`]. TCP mappings are
//!   refreshed by traffic either way, as connection tracking does (RFC 5382 REQ-5).
//!
//! The NAT draws random ports from the simulator's RNG, so a seed fixes every choice.

use core::net::{Ipv4Addr, SocketAddrV4};
use ntm_proto::time::{Duration, Instant};
use rand_core::RngCore;
use std::collections::{BTreeMap, BTreeSet};

/// Which outbound flows share an external address and port (RFC 4787 section 4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mapping {
    /// One mapping per internal endpoint, whatever the destination (REQ-1).
    EndpointIndependent,
    /// One mapping per internal endpoint and destination address.
    AddressDependent,
    /// One mapping per internal endpoint and destination address and port ("symmetric").
    AddressAndPortDependent,
}

/// Which inbound packets a mapping lets in (RFC 4787 section 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Filtering {
    /// Anyone, once the mapping exists.
    EndpointIndependent,
    /// Addresses the internal endpoint has sent to.
    AddressDependent,
    /// Address and port pairs the internal endpoint has sent to.
    AddressAndPortDependent,
}

/// How the external port of a new mapping is chosen (RFC 4787 section 4.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PortAllocation {
    /// Keep the internal port if it is free, else pick a random one.
    Preserving,
    /// Always a random port from 1024-65535.
    Random,
}

/// A NAT's behaviour. [`Default`] is a typical home router: endpoint-independent mapping,
/// address-and-port-dependent filtering, port preservation, 120 s UDP and 7440 s TCP
/// timeouts, hairpinning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatConfig {
    /// Which flows share a mapping.
    pub mapping: Mapping,
    /// Which inbound packets pass.
    pub filtering: Filtering,
    /// How external ports are picked.
    pub ports: PortAllocation,
    /// A UDP mapping unused this long expires (RFC 4787 REQ-5 asks for at least 2 min).
    pub udp_timeout: Duration,
    /// A TCP mapping idle this long expires (RFC 5382 REQ-5: 2 h 4 min).
    pub tcp_timeout: Duration,
    /// Packets from inside to the NAT's own outside address loop back in (REQ-9).
    pub hairpinning: bool,
    /// Inbound UDP packets refresh the mapping too (REQ-6 makes this optional).
    pub inbound_refresh: bool,
}

impl Default for NatConfig {
    fn default() -> Self {
        NatConfig {
            mapping: Mapping::EndpointIndependent,
            filtering: Filtering::AddressAndPortDependent,
            ports: PortAllocation::Preserving,
            udp_timeout: Duration::from_secs(120),
            tcp_timeout: Duration::from_secs(7440),
            hairpinning: true,
            inbound_refresh: false,
        }
    }
}

impl NatConfig {
    /// The traditional "full cone": endpoint-independent mapping and filtering.
    pub fn full_cone() -> Self {
        NatConfig { filtering: Filtering::EndpointIndependent, ..Self::default() }
    }

    /// "Restricted cone": endpoint-independent mapping, address-dependent filtering.
    pub fn restricted_cone() -> Self {
        NatConfig { filtering: Filtering::AddressDependent, ..Self::default() }
    }

    /// "Port-restricted cone": endpoint-independent mapping, address-and-port-dependent
    /// filtering (the default).
    pub fn port_restricted_cone() -> Self {
        Self::default()
    }

    /// "Symmetric": a random port per destination endpoint, address-and-port-dependent
    /// filtering (many carrier-grade NATs).
    pub fn symmetric() -> Self {
        NatConfig {
            mapping: Mapping::AddressAndPortDependent,
            filtering: Filtering::AddressAndPortDependent,
            ports: PortAllocation::Random,
            ..Self::default()
        }
    }
}

/// What a NAT did, for assertions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatStats {
    /// Mappings created (UDP and TCP).
    pub mappings_created: u64,
    /// Mappings found expired and removed.
    pub mappings_expired: u64,
    /// Inbound packets dropped by filtering.
    pub filtered: u64,
    /// Inbound packets dropped because no live mapping had their port (including expired
    /// ones).
    pub no_mapping: u64,
    /// Outbound packets dropped because no external port was free.
    pub no_ports: u64,
    /// Outbound packets to the NAT's own address dropped because hairpinning is off.
    pub hairpin_refused: u64,
}

/// The transport a mapping is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Proto {
    Udp,
    Tcp,
}

/// What identifies a mapping: the internal endpoint plus as much of the remote as the
/// mapping behaviour distinguishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    proto: Proto,
    internal: SocketAddrV4,
    remote_ip: Option<Ipv4Addr>,
    remote_port: Option<u16>,
}

#[derive(Debug)]
struct Entry {
    key: Key,
    /// Last refresh.
    last: Instant,
    /// Remotes the internal endpoint sent to, with when it last did.
    permits: BTreeMap<SocketAddrV4, Instant>,
}

/// Why an inbound packet did not get through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum InboundDrop {
    NoMapping,
    Filtered,
}

/// One NAT box: its outside address, its mapping tables and its counters.
#[derive(Debug)]
pub(crate) struct Nat {
    pub(crate) cfg: NatConfig,
    pub(crate) outside: Ipv4Addr,
    by_key: BTreeMap<Key, u16>,
    by_port: BTreeMap<(Proto, u16), Entry>,
    /// UDP ports of mappings dropped by [`Nat::rebind_udp`]: never handed out again, so
    /// the next mapping of each internal endpoint gets another port.
    burned: BTreeSet<u16>,
    pub(crate) stats: NatStats,
}

/// Ports below this are never handed out (RFC 4787 REQ-3 keeps the well-known range apart).
const FIRST_PORT: u16 = 1024;
/// Random draws before falling back to a scan for a free port.
const RANDOM_TRIES: usize = 32;

impl Nat {
    pub(crate) fn new(outside: Ipv4Addr, cfg: NatConfig) -> Self {
        Nat {
            cfg,
            outside,
            by_key: BTreeMap::new(),
            by_port: BTreeMap::new(),
            burned: BTreeSet::new(),
            stats: NatStats::default(),
        }
    }

    /// Forgets every UDP mapping, as a NAT that rebooted or rebinds does: what arrives on
    /// the old ports is dropped, and the next packet out of each internal endpoint gets a
    /// new external port.
    pub(crate) fn rebind_udp(&mut self) {
        let gone: Vec<(Proto, u16)> = self.by_port.keys().filter(|(p, _)| *p == Proto::Udp).copied().collect();
        for k in gone {
            if let Some(e) = self.by_port.remove(&k) {
                self.by_key.remove(&e.key);
            }
            self.burned.insert(k.1);
        }
    }

    fn timeout(&self, proto: Proto) -> Duration {
        match proto {
            Proto::Udp => self.cfg.udp_timeout,
            Proto::Tcp => self.cfg.tcp_timeout,
        }
    }

    fn key(&self, proto: Proto, internal: SocketAddrV4, remote: SocketAddrV4) -> Key {
        let (remote_ip, remote_port) = match self.cfg.mapping {
            Mapping::EndpointIndependent => (None, None),
            Mapping::AddressDependent => (Some(*remote.ip()), None),
            Mapping::AddressAndPortDependent => (Some(*remote.ip()), Some(remote.port())),
        };
        Key { proto, internal, remote_ip, remote_port }
    }

    /// Removes the mapping on `port` if it has expired; true if it did.
    fn expire(&mut self, now: Instant, proto: Proto, port: u16) -> bool {
        let timeout = self.timeout(proto);
        let Some(entry) = self.by_port.get(&(proto, port)) else { return false };
        if now.saturating_duration_since(entry.last) < timeout {
            return false;
        }
        let key = entry.key;
        self.by_port.remove(&(proto, port));
        self.by_key.remove(&key);
        self.stats.mappings_expired += 1;
        log::trace!("nat {}: {proto:?} mapping {port} for {} expired", self.outside, key.internal);
        true
    }

    /// A free external port for `proto` (expired mappings count as free), or None.
    fn allocate(&mut self, now: Instant, proto: Proto, internal_port: u16, rng: &mut dyn RngCore) -> Option<u16> {
        let free = |nat: &mut Nat, port: u16| {
            port >= FIRST_PORT
                && !(proto == Proto::Udp && nat.burned.contains(&port))
                && (!nat.by_port.contains_key(&(proto, port)) || nat.expire(now, proto, port))
        };
        if self.cfg.ports == PortAllocation::Preserving && free(self, internal_port) {
            return Some(internal_port);
        }
        let span = u32::from(u16::MAX - FIRST_PORT) + 1;
        let random = |rng: &mut dyn RngCore| {
            // `span` fits the port range, so the sum stays within u16.
            FIRST_PORT.saturating_add(u16::try_from(rng.next_u32() % span).unwrap_or(0))
        };
        for _ in 0..RANDOM_TRIES {
            let port = random(rng);
            if free(self, port) {
                return Some(port);
            }
        }
        // Nearly full: scan from a random start so the choice still depends on the seed.
        let start = random(rng);
        (start..=u16::MAX).chain(FIRST_PORT..start).find(|&port| free(self, port))
    }

    /// Translates an outbound packet from `internal` to `remote`: the external endpoint, or
    /// None if no port was free (counted).
    pub(crate) fn outbound(
        &mut self,
        now: Instant,
        proto: Proto,
        internal: SocketAddrV4,
        remote: SocketAddrV4,
        rng: &mut dyn RngCore,
    ) -> Option<SocketAddrV4> {
        let key = self.key(proto, internal, remote);
        let existing = self.by_key.get(&key).copied();
        let port = match existing {
            Some(port) if !self.expire(now, proto, port) => port,
            _ => {
                let Some(port) = self.allocate(now, proto, internal.port(), rng) else {
                    self.stats.no_ports += 1;
                    return None;
                };
                self.by_key.insert(key, port);
                self.by_port.insert((proto, port), Entry { key, last: now, permits: BTreeMap::new() });
                self.stats.mappings_created += 1;
                log::trace!("nat {}: {proto:?} {internal} -> {remote} mapped to port {port}", self.outside);
                port
            }
        };
        if let Some(entry) = self.by_port.get_mut(&(proto, port)) {
            entry.last = now;
            entry.permits.insert(remote, now);
        }
        Some(SocketAddrV4::new(self.outside, port))
    }

    /// Translates an inbound packet from `remote` to external `port`: the internal endpoint,
    /// or why it was dropped (counted).
    pub(crate) fn inbound(
        &mut self,
        now: Instant,
        proto: Proto,
        remote: SocketAddrV4,
        port: u16,
    ) -> Result<SocketAddrV4, InboundDrop> {
        if self.expire(now, proto, port) || !self.by_port.contains_key(&(proto, port)) {
            self.stats.no_mapping += 1;
            return Err(InboundDrop::NoMapping);
        }
        let timeout = self.timeout(proto);
        let (filtering, refresh) = (self.cfg.filtering, self.cfg.inbound_refresh || proto == Proto::Tcp);
        let Some(entry) = self.by_port.get_mut(&(proto, port)) else {
            self.stats.no_mapping += 1;
            return Err(InboundDrop::NoMapping);
        };
        let live = |sent: &Instant| now.saturating_duration_since(*sent) < timeout;
        let allowed = match filtering {
            Filtering::EndpointIndependent => true,
            Filtering::AddressDependent => entry.permits.iter().any(|(r, sent)| r.ip() == remote.ip() && live(sent)),
            Filtering::AddressAndPortDependent => entry.permits.get(&remote).is_some_and(live),
        };
        if !allowed {
            self.stats.filtered += 1;
            return Err(InboundDrop::Filtered);
        }
        if refresh {
            entry.last = now;
        }
        Ok(entry.key.internal)
    }

    /// Uses the TCP mapping on `port` for a segment of an established connection: false if
    /// it has expired (the connection is broken), else refreshes it.
    pub(crate) fn touch_tcp(&mut self, now: Instant, port: u16) -> bool {
        if self.expire(now, Proto::Tcp, port) {
            return false;
        }
        match self.by_port.get_mut(&(Proto::Tcp, port)) {
            Some(entry) => {
                entry.last = now;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    const INSIDE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 2), 4000);
    const Y1: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 5000);
    const Y1_OTHER_PORT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 5001);
    const Y2: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 2), 5000);

    fn nat(mapping: Mapping, filtering: Filtering) -> Nat {
        let cfg = NatConfig { mapping, filtering, ..NatConfig::default() };
        Nat::new(Ipv4Addr::new(203, 0, 113, 1), cfg)
    }

    fn at(s: u64) -> Instant {
        Instant::from_millis(s * 1000)
    }

    #[test]
    fn mapping_behaviours_share_ports_as_rfc_4787_says() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        for (mapping, same_ip_shares, other_ip_shares) in [
            (Mapping::EndpointIndependent, true, true),
            (Mapping::AddressDependent, true, false),
            (Mapping::AddressAndPortDependent, false, false),
        ] {
            let mut n = nat(mapping, Filtering::EndpointIndependent);
            let first = n.outbound(at(0), Proto::Udp, INSIDE, Y1, &mut rng).unwrap();
            let same_ip = n.outbound(at(0), Proto::Udp, INSIDE, Y1_OTHER_PORT, &mut rng).unwrap();
            let other_ip = n.outbound(at(0), Proto::Udp, INSIDE, Y2, &mut rng).unwrap();
            assert_eq!(first == same_ip, same_ip_shares, "{mapping:?}");
            assert_eq!(first == other_ip, other_ip_shares, "{mapping:?}");
            assert_eq!(first.port(), INSIDE.port(), "the first mapping preserves the port");
        }
    }

    #[test]
    fn filtering_behaviours_admit_as_rfc_4787_says() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        for (filtering, other_port_passes, other_ip_passes) in [
            (Filtering::EndpointIndependent, true, true),
            (Filtering::AddressDependent, true, false),
            (Filtering::AddressAndPortDependent, false, false),
        ] {
            let mut n = nat(Mapping::EndpointIndependent, filtering);
            let ext = n.outbound(at(0), Proto::Udp, INSIDE, Y1, &mut rng).unwrap();
            assert_eq!(n.inbound(at(1), Proto::Udp, Y1, ext.port()), Ok(INSIDE));
            assert_eq!(n.inbound(at(1), Proto::Udp, Y1_OTHER_PORT, ext.port()).is_ok(), other_port_passes);
            assert_eq!(n.inbound(at(1), Proto::Udp, Y2, ext.port()).is_ok(), other_ip_passes);
            let refused = u64::from(!other_port_passes) + u64::from(!other_ip_passes);
            assert_eq!(n.stats.filtered, refused, "{filtering:?}");
        }
    }

    #[test]
    fn mappings_expire_unless_refreshed_outbound() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let mut n = nat(Mapping::EndpointIndependent, Filtering::EndpointIndependent);
        let ext = n.outbound(at(0), Proto::Udp, INSIDE, Y1, &mut rng).unwrap();
        // Inbound traffic does not refresh (inbound_refresh is off).
        assert!(n.inbound(at(100), Proto::Udp, Y1, ext.port()).is_ok());
        assert_eq!(n.inbound(at(120), Proto::Udp, Y1, ext.port()), Err(InboundDrop::NoMapping));
        assert_eq!((n.stats.no_mapping, n.stats.mappings_expired), (1, 1));

        let ext = n.outbound(at(200), Proto::Udp, INSIDE, Y1, &mut rng).unwrap();
        n.outbound(at(300), Proto::Udp, INSIDE, Y1, &mut rng).unwrap();
        assert!(n.inbound(at(400), Proto::Udp, Y1, ext.port()).is_ok(), "refreshed at 300 s");
    }

    #[test]
    fn preserved_port_collision_falls_back_to_a_random_port() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let mut n = nat(Mapping::EndpointIndependent, Filtering::EndpointIndependent);
        let other = SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 3), INSIDE.port());
        let a = n.outbound(at(0), Proto::Udp, INSIDE, Y1, &mut rng).unwrap();
        let b = n.outbound(at(0), Proto::Udp, other, Y1, &mut rng).unwrap();
        assert_eq!(a.port(), INSIDE.port());
        assert_ne!(b.port(), INSIDE.port());
        assert!(b.port() >= FIRST_PORT);
        // TCP has its own port space.
        let t = n.outbound(at(0), Proto::Tcp, INSIDE, Y1, &mut rng).unwrap();
        assert_eq!(t.port(), INSIDE.port());
    }

    #[test]
    fn tcp_mappings_break_after_idling() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let mut n = nat(Mapping::EndpointIndependent, Filtering::AddressAndPortDependent);
        let ext = n.outbound(at(0), Proto::Tcp, INSIDE, Y1, &mut rng).unwrap();
        assert!(n.touch_tcp(at(7000), ext.port()));
        assert!(n.touch_tcp(at(14000), ext.port()), "refreshed at 7000 s");
        assert!(!n.touch_tcp(at(14000 + 7440), ext.port()));
    }
}
