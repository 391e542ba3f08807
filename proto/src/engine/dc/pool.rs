//! Virtual address assignment: every node gets one IPv4 and one IPv6 address from the
//! DC's prefixes, the same ones at every registration (spec 4.2 step 2). Host number `n`
//! gives the n-th address of both prefixes, so a node's two addresses correspond.

use crate::engine::ConfigError;
use crate::wire::{Fqdn, VirtualAddrs};
use core::net::{Ipv4Addr, Ipv6Addr};
use std::collections::{HashMap, HashSet};

/// The DC's virtual prefixes and who holds which address.
#[derive(Debug)]
pub struct VirtualPool {
    v4_base: u32,
    v6_base: u128,
    /// Usable host numbers are 2..=last (0 is the network, 1 reserved, the top v4 address
    /// is the broadcast address).
    last: u32,
    /// The prefixes, for the check of announced prefixes (`nodes.rs`).
    prefixes: Vec<crate::wire::Prefix>,
    by_name: HashMap<Fqdn, u32>,
    used: HashSet<u32>,
    next: u32,
}

impl VirtualPool {
    /// A pool over `v4/v4_len` and `v6/v6_len`. The IPv6 prefix must have room for every
    /// IPv4 host number.
    pub fn new(v4: Ipv4Addr, v4_len: u8, v6: Ipv6Addr, v6_len: u8) -> Result<Self, ConfigError> {
        if !(8..=30).contains(&v4_len) {
            return Err(ConfigError::new("virtual_ipv4_prefix", "prefix length must be between 8 and 30"));
        }
        if !(64..=126).contains(&v6_len) || 128 - u32::from(v6_len) < 32 - u32::from(v4_len) {
            return Err(ConfigError::new(
                "virtual_ipv6_prefix",
                "prefix length must be 64..=126 and hold as many hosts as the IPv4 prefix",
            ));
        }
        let v4_mask = u32::MAX << (32 - v4_len);
        let v6_mask = u128::MAX << (128 - v6_len);
        let v4_base = u32::from(v4) & v4_mask;
        let v6_base = u128::from(v6) & v6_mask;
        if v4_base != u32::from(v4) {
            return Err(ConfigError::new("virtual_ipv4_prefix", "address has host bits set"));
        }
        if v6_base != u128::from(v6) {
            return Err(ConfigError::new("virtual_ipv6_prefix", "address has host bits set"));
        }
        let last = (!v4_mask).saturating_sub(1);
        let prefixes = [
            crate::wire::Prefix::new(Ipv4Addr::from(v4_base).into(), v4_len),
            crate::wire::Prefix::new(Ipv6Addr::from(v6_base).into(), v6_len),
        ];
        Ok(VirtualPool {
            v4_base,
            v6_base,
            last,
            prefixes: prefixes.into_iter().flatten().collect(),
            by_name: HashMap::new(),
            used: HashSet::new(),
            next: 2,
        })
    }

    /// The pool's prefixes (IPv4, IPv6).
    pub fn prefixes(&self) -> &[crate::wire::Prefix] {
        &self.prefixes
    }

    fn addrs(&self, host: u32) -> VirtualAddrs {
        VirtualAddrs { v4: Ipv4Addr::from(self.v4_base | host), v6: Ipv6Addr::from(self.v6_base | u128::from(host)) }
    }

    /// The node's addresses, assigning them at its first registration. None when the
    /// pool is full.
    pub fn assign(&mut self, name: &Fqdn) -> Option<VirtualAddrs> {
        if let Some(&h) = self.by_name.get(name) {
            return Some(self.addrs(h));
        }
        let span = self.last.checked_sub(1)?;
        for _ in 0..=span {
            let h = self.next;
            self.next = if self.next >= self.last { 2 } else { self.next + 1 };
            if self.used.insert(h) {
                self.by_name.insert(name.clone(), h);
                return Some(self.addrs(h));
            }
        }
        None
    }

    /// Restores an assignment from storage. Refuses addresses outside the prefixes or
    /// already held by another node.
    pub fn restore(&mut self, name: &Fqdn, addrs: VirtualAddrs) -> Result<(), ConfigError> {
        let host = u32::from(addrs.v4).wrapping_sub(self.v4_base);
        if !(2..=self.last).contains(&host) || addrs != self.addrs(host) {
            return Err(ConfigError::new(
                "virtual addresses",
                format!("{} / {} of {name} do not fit the prefixes", addrs.v4, addrs.v6),
            ));
        }
        if self.used.contains(&host) && self.by_name.get(name) != Some(&host) {
            return Err(ConfigError::new("virtual addresses", format!("{} is held by another node", addrs.v4)));
        }
        self.used.insert(host);
        self.by_name.insert(name.clone(), host);
        Ok(())
    }

    /// Every assignment, for persistence and status.
    pub fn assignments(&self) -> Vec<(Fqdn, VirtualAddrs)> {
        let mut v: Vec<_> = self.by_name.iter().map(|(n, &h)| (n.clone(), self.addrs(h))).collect();
        v.sort_by_key(|(_, a)| a.v4);
        v
    }

    /// The node holding virtual address `ip`.
    pub fn owner(&self, ip: core::net::IpAddr) -> Option<&Fqdn> {
        let host = match ip {
            core::net::IpAddr::V4(a) => u32::from(a).wrapping_sub(self.v4_base),
            core::net::IpAddr::V6(a) => u32::try_from(u128::from(a).wrapping_sub(self.v6_base)).ok()?,
        };
        self.by_name.iter().find(|(_, &h)| h == host).map(|(n, _)| n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> VirtualPool {
        VirtualPool::new("198.18.0.0".parse().unwrap(), 29, "2001:db8:ff::".parse().unwrap(), 120).unwrap()
    }

    #[test]
    fn stable_paired_addresses_until_full() {
        let mut p = pool();
        let a = Fqdn::new("a.example").unwrap();
        let first = p.assign(&a).unwrap();
        assert_eq!(first.v4, "198.18.0.2".parse::<Ipv4Addr>().unwrap());
        assert_eq!(first.v6, "2001:db8:ff::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.assign(&a), Some(first));
        // /29: hosts 2..=6 usable.
        for i in 0..4 {
            assert!(p.assign(&Fqdn::new(&format!("n{i}.example")).unwrap()).is_some());
        }
        assert_eq!(p.assign(&Fqdn::new("full.example").unwrap()), None);
        assert_eq!(p.owner(first.v4.into()), Some(&a));
    }

    #[test]
    fn restore_checks_prefix_and_conflicts() {
        let mut p = pool();
        let a = Fqdn::new("a.example").unwrap();
        let addrs = VirtualAddrs { v4: "198.18.0.5".parse().unwrap(), v6: "2001:db8:ff::5".parse().unwrap() };
        p.restore(&a, addrs).unwrap();
        assert_eq!(p.assign(&a), Some(addrs));
        assert!(p.restore(&Fqdn::new("b.example").unwrap(), addrs).is_err());
        let off = VirtualAddrs { v4: "198.18.0.5".parse().unwrap(), v6: "2001:db8:ff::6".parse().unwrap() };
        assert!(p.restore(&Fqdn::new("c.example").unwrap(), off).is_err());
        assert!(VirtualPool::new("198.18.0.1".parse().unwrap(), 24, "2001:db8::".parse().unwrap(), 64).is_err());
    }
}
