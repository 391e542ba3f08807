//! Scaffolding for the simulator's own tests: address helpers and a small standard world.
//!
//! Addresses come from the documentation ranges only: servers on 192.0.2.0/24 and
//! 2001:db8::/48, NAT outside addresses on 203.0.113.0/24 (home) and 198.51.100.0/24
//! (carrier), CGN-internal addresses on 100.64.0.0/10, hosts on 192.168.0.0/16, 10.0.0.0/8
//! and 2001:db8:1::/48.

#![allow(dead_code)]

use core::net::{IpAddr, SocketAddr};
use ntm_proto::time::{Duration, Instant};
use ntm_sim::probe::Probe;
use ntm_sim::{HostId, NatConfig, RealmConfig, RealmId, Sim};

pub const SERVER_PORT: u16 = 9000;
pub const CLIENT_PORT: u16 = 4000;

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// `n` seconds after the start.
pub fn at(n: u64) -> Instant {
    Instant::from_millis(n * 1000)
}

/// A client in a home behind one NAT, and two dual-stack servers on the internet.
pub struct World {
    pub sim: Sim,
    pub home: RealmId,
    pub client: HostId,
    /// An echo server at 192.0.2.1 / 2001:db8::1.
    pub s1: HostId,
    /// A listening server at 192.0.2.2 / 2001:db8::2.
    pub s2: HostId,
}

impl World {
    /// The world with this home realm; the client is 192.168.1.2:4000.
    pub fn new(seed: u64, home: RealmConfig) -> Self {
        let mut sim = Sim::new(seed);
        let home = sim.add_realm("home", RealmId::INTERNET, home);
        let s1 = sim.add_host(
            "s1",
            RealmId::INTERNET,
            &[ip("192.0.2.1"), ip("2001:db8::1")],
            SERVER_PORT,
            None,
            Probe::echo(),
        );
        let s2 = sim.add_host(
            "s2",
            RealmId::INTERNET,
            &[ip("192.0.2.2"), ip("2001:db8::2")],
            SERVER_PORT,
            None,
            Probe::new(),
        );
        let client = sim.add_host("client", home, &[ip("192.168.1.2")], CLIENT_PORT, None, Probe::new());
        World { sim, home, client, s1, s2 }
    }

    /// The world with an IPv4-only home behind a NAT of this behaviour at 203.0.113.1.
    pub fn behind(nat: NatConfig) -> Self {
        Self::new(1, RealmConfig::v4_only("203.0.113.1".parse().unwrap()).with_nat(nat))
    }

    /// A host's IPv4 address and port.
    pub fn v4(&self, host: HostId) -> SocketAddr {
        self.sim.addr_v4(host).unwrap()
    }

    /// A host's probe, to script it.
    pub fn probe(&mut self, host: HostId) -> &mut Probe {
        self.sim.engine::<Probe>(host)
    }

    /// The datagrams a host's probe heard, as (source, payload).
    pub fn heard(&self, host: HostId) -> Vec<(SocketAddr, Vec<u8>)> {
        self.sim.engine_ref::<Probe>(host).datagrams()
    }
}
