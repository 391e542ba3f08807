//! The rtnetlink driver (`agent/src/netlink.rs`) against the real kernel.
//!
//! Isolation: every test that touches the kernel runs inside its own network namespace and
//! changes nothing outside it. The test creates `ntmtest-<pid>-<n>` and re-executes this test
//! binary inside it (`ip netns exec NAME <this binary> <test> --exact --nocapture`, with
//! `NTM_NETLINK_NETNS=NAME`); the child runs the body. Before touching anything the child
//! checks that its network namespace is NAME's (the same inode as `/run/netns/NAME`), so a
//! stray environment variable can never make it configure the host. A guard deletes the
//! namespace when the test ends, also when it panics. Re-executing (rather than `setns` on a
//! thread) needs no unsafe code and no extra nix feature, and the `ip` commands the child runs
//! are in the namespace without `-n`.
//!
//! The kernel tests are skipped with a notice when not run as root, when `ip` is missing, or
//! when network namespaces cannot be created.

#![allow(clippy::print_stderr)]

// The agent is a binary crate; the module is compiled into this test directly.
#[path = "../src/netlink.rs"]
#[allow(dead_code)]
mod netlink;

use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use netlink::{usable_local_addrs, AddrFlags, AddrScope, IfAddr, NetEvent, Netlink, PathChoice};
use std::collections::HashSet;

const ENV: &str = "NTM_NETLINK_NETNS";
const PREFIX: &str = "ntmtest-";

/// Deletes the namespace on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn create() -> Result<Self, String> {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("{PREFIX}{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let out = Command::new("ip").args(["netns", "add", &name]).output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(Self { name })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        match Command::new("ip").args(["netns", "del", &self.name]).status() {
            Ok(s) if s.success() => {}
            other => eprintln!("could not delete network namespace {}: {other:?}", self.name),
        }
    }
}

fn skip_reason() -> Option<String> {
    // The owner of /proc/self is the process's effective user.
    match std::fs::metadata("/proc/self") {
        Ok(m) if m.uid() == 0 => {}
        _ => return Some("not root".into()),
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("`ip` (iproute2) is missing".into()),
    }
}

/// Runs `body` inside a fresh network namespace (see the module doc).
fn in_netns(test: &str, body: fn()) {
    if let Ok(name) = std::env::var(ENV) {
        assert_inside(&name);
        body();
        return;
    }
    if let Some(why) = skip_reason() {
        eprintln!("skipping {test}: {why}");
        return;
    }
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(e) => {
            eprintln!("skipping {test}: cannot create a network namespace: {e}");
            return;
        }
    };
    let exe = std::env::current_exe().expect("path of the test binary");
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(&exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(ENV, &ns.name)
        .output()
        .expect("run ip netns exec");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test} in {} failed ({}):\n{stdout}\n{stderr}",
        ns.name,
        out.status
    );
}

/// The child's safety check: it is in the namespace it was told, never the host's.
fn assert_inside(name: &str) {
    assert!(name.starts_with(PREFIX), "{ENV}={name} is not one of ours");
    let ours = std::fs::metadata("/proc/self/ns/net").expect("own network namespace");
    let named = std::fs::metadata(format!("/run/netns/{name}"))
        .or_else(|_| std::fs::metadata(format!("/var/run/netns/{name}")))
        .expect("the named network namespace");
    assert_eq!(
        (ours.dev(), ours.ino()),
        (named.dev(), named.ino()),
        "not inside network namespace {name}; refusing to touch the network"
    );
}

/// Runs `ip ARGS` (inside the namespace) and returns its standard output.
fn ip(args: &str) -> String {
    let out = Command::new("ip").args(args.split_whitespace()).output().expect("run ip");
    assert!(out.status.success(), "ip {args}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Adds an Ethernet-like test interface: a dummy, or where the kernel has no dummy driver, one
/// end of a veth pair whose other end (`<name>p`) is up, so that `name` has carrier when up.
fn add_test_link(name: &str) {
    let dummy = Command::new("ip").args(["link", "add", name, "type", "dummy"]).output().expect("run ip");
    if !dummy.status.success() {
        ip(&format!("link add {name} type veth peer name {name}p"));
        ip(&format!("link set {name}p up"));
    }
}

fn addr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Waits (with mio, as the agent does) until an event satisfies `want`; returns all events seen.
fn wait_for(nl: &mut Netlink, want: impl Fn(&NetEvent) -> bool) -> Vec<NetEvent> {
    let mut poll = Poll::new().unwrap();
    let fd: RawFd = nl.as_raw_fd();
    poll.registry().register(&mut SourceFd(&fd), Token(0), Interest::READABLE).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    let mut events = Events::with_capacity(4);
    loop {
        seen.extend(nl.read_events().unwrap());
        if seen.iter().any(&want) {
            return seen;
        }
        let now = Instant::now();
        assert!(now < deadline, "event not seen; got {seen:?}");
        poll.poll(&mut events, Some(deadline - now)).unwrap();
    }
}

#[test]
fn dump_lists_the_addresses_of_an_interface() {
    in_netns("dump_lists_the_addresses_of_an_interface", || {
        ip("link set lo up");
        add_test_link("d0");
        ip("link set d0 up");
        ip("addr add 192.0.2.10/24 dev d0");
        // Without duplicate address detection, which would hold the address tentative.
        ip("addr add 2001:db8:1::10/64 dev d0 nodad");

        let mut nl = Netlink::open().unwrap();
        let d0 = nl.link_index("d0").unwrap().expect("d0 exists");
        let addrs = nl.addresses().unwrap();
        let find =
            |a: &str| addrs.iter().find(|x| x.addr == addr(a)).unwrap_or_else(|| panic!("{a} not in {addrs:#?}"));
        for (a, len) in [("192.0.2.10", 24), ("2001:db8:1::10", 64)] {
            let x = find(a);
            assert_eq!((x.ifindex, x.ifname.as_str()), (d0, "d0"));
            assert_eq!(x.prefix_len, len);
            assert_eq!(x.scope, AddrScope::Universe);
            assert_eq!(x.flags, AddrFlags::default());
        }
        let lo = find("127.0.0.1");
        assert_eq!((lo.ifname.as_str(), lo.scope), ("lo", AddrScope::Host));
        assert_eq!(find("::1").ifname, "lo");
        assert!(
            addrs.iter().any(|x| x.ifindex == d0 && x.scope == AddrScope::Link),
            "d0 has an IPv6 link-local address: {addrs:#?}"
        );

        // What the node would report: only the two global addresses of d0.
        let probes = [addr("192.0.2.1"), addr("2001:db8:1::1")];
        let usable = nl.usable_addrs(&probes, &[], &[], 4000).unwrap();
        let expected: Vec<SocketAddr> =
            vec!["192.0.2.10:4000".parse().unwrap(), "[2001:db8:1::10]:4000".parse().unwrap()];
        assert_eq!(usable, expected);
        assert!(nl.usable_addrs(&probes, &[d0], &[], 4000).unwrap().is_empty());
    });
}

#[test]
fn events_follow_address_and_link_changes() {
    in_netns("events_follow_address_and_link_changes", || {
        let mut nl = Netlink::open().unwrap();
        add_test_link("d0");
        ip("link set d0 up");
        let d0 = nl.link_index("d0").unwrap().expect("d0 exists");
        wait_for(&mut nl, |e| *e == NetEvent::LinkChanged { ifindex: d0, up: true });

        let v4 = addr("198.51.100.7");
        ip("addr add 198.51.100.7/24 dev d0");
        let seen = wait_for(&mut nl, |e| matches!(e, NetEvent::AddressAdded(a) if a.addr == v4 && a.prefix_len == 24));
        let added = seen
            .iter()
            .find_map(|e| match e {
                NetEvent::AddressAdded(a) if a.addr == v4 => Some(a),
                _ => None,
            })
            .unwrap();
        assert_eq!((added.ifindex, added.ifname.as_str()), (d0, "d0"));
        // The kernel adds the prefix route with the address.
        if !seen.contains(&NetEvent::RouteChanged) {
            wait_for(&mut nl, |e| *e == NetEvent::RouteChanged);
        }

        ip("addr del 198.51.100.7/24 dev d0");
        wait_for(&mut nl, |e| matches!(e, NetEvent::AddressRemoved(a) if a.addr == v4));

        // IPv6 messages carry no interface name: it comes from the link events.
        let v6 = addr("2001:db8:2::7");
        ip("addr add 2001:db8:2::7/64 dev d0");
        wait_for(&mut nl, |e| matches!(e, NetEvent::AddressAdded(a) if a.addr == v6 && a.ifname == "d0"));
        ip("addr del 2001:db8:2::7/64 dev d0");
        wait_for(&mut nl, |e| matches!(e, NetEvent::AddressRemoved(a) if a.addr == v6));

        ip("link set d0 down");
        wait_for(&mut nl, |e| *e == NetEvent::LinkChanged { ifindex: d0, up: false });
        ip("link del d0");
        wait_for(&mut nl, |e| *e == NetEvent::LinkChanged { ifindex: d0, up: false });

        // Drained: nothing more without a change.
        assert_eq!(nl.read_events().unwrap(), vec![]);
        assert_eq!(nl.undecodable(), 0);
    });
}

#[test]
fn configures_an_interface_like_the_tun() {
    in_netns("configures_an_interface_like_the_tun", || {
        // A TUN device (persistent, no process attached: no carrier, which does not matter).
        ip("tuntap add d1 mode tun");
        let mut nl = Netlink::open().unwrap();
        assert_eq!(nl.link_index("absent0").unwrap(), None);
        let d1 = nl.link_index("d1").unwrap().expect("d1 exists");

        nl.set_link_up(d1, Some(1400)).unwrap();
        let link = ip("-j link show d1");
        assert!(link.contains("\"mtu\":1400"), "{link}");
        assert!(link.contains("\"UP\""), "{link}");

        // Twice each: the second add meets EEXIST, which is success.
        for _ in 0..2 {
            nl.add_address(d1, addr("198.51.100.1"), 24).unwrap();
            nl.add_address(d1, addr("2001:db8:77::1"), 64).unwrap();
        }
        let addrs = ip("-j addr show dev d1");
        assert!(addrs.contains("\"local\":\"198.51.100.1\",\"prefixlen\":24"), "{addrs}");
        assert!(addrs.contains("\"local\":\"2001:db8:77::1\",\"prefixlen\":64"), "{addrs}");
        // No duplicate address detection on the virtual address: usable at once.
        assert!(!addrs.contains("tentative"), "{addrs}");

        for _ in 0..2 {
            nl.add_route(d1, addr("198.18.1.2"), 16, Some(1300)).unwrap();
            nl.add_route(d1, addr("2001:db8:78::"), 48, Some(1300)).unwrap();
        }
        for (family, dst) in [("-4", "198.18.0.0/16"), ("-6", "2001:db8:78::/48")] {
            let route = ip(&format!("{family} -j route show {dst}"));
            assert!(route.contains(&format!("\"dst\":\"{dst}\"")), "{route}");
            assert!(route.contains("\"dev\":\"d1\""), "{route}");
            assert!(route.contains("\"mtu\":1300"), "{route}");
            assert_eq!(route.matches("\"dst\"").count(), 1, "one route: {route}");
        }
        // A changed MTU replaces the route.
        nl.add_route(d1, addr("198.18.0.0"), 16, Some(1280)).unwrap();
        let route = ip("-4 -j route show 198.18.0.0/16");
        assert!(route.contains("\"mtu\":1280"), "{route}");

        // The driver sees what it configured.
        let seen = nl.addresses().unwrap();
        assert!(seen.iter().any(|a| a.ifname == "d1" && a.addr == addr("198.51.100.1")));

        for _ in 0..2 {
            nl.del_route(d1, addr("198.18.0.0"), 16).unwrap();
            nl.del_route(d1, addr("2001:db8:78::"), 48).unwrap();
        }
        assert_eq!(ip("-4 -j route show 198.18.0.0/16").trim(), "[]");
        assert_eq!(ip("-6 -j route show 2001:db8:78::/48").trim(), "[]");

        // Real errors are reported.
        let absent = d1 + 1000;
        assert!(nl.add_address(absent, addr("203.0.113.1"), 24).is_err());
        assert!(nl.add_route(absent, addr("198.19.0.0"), 16, None).is_err());
        assert!(nl.set_link_up(absent, None).is_err());
    });
}

fn ifaddr(ifindex: u32, a: &str, prefix_len: u8) -> IfAddr {
    IfAddr {
        ifindex,
        ifname: format!("if{ifindex}"),
        addr: addr(a),
        prefix_len,
        scope: AddrScope::Universe,
        flags: AddrFlags::default(),
    }
}

#[test]
fn usable_local_addrs_filters() {
    let tun = 9;
    let mut addrs = vec![
        ifaddr(2, "192.0.2.10", 24),       // kept
        ifaddr(2, "10.0.0.5", 8),          // kept: private, the DC detects the NAT
        ifaddr(3, "2001:db8::5", 64),      // kept
        ifaddr(3, "fd12::5", 64),          // kept: unique local
        ifaddr(1, "127.0.0.1", 8),         // loopback
        ifaddr(1, "::1", 128),             // loopback
        ifaddr(2, "169.254.3.4", 16),      // link-local
        ifaddr(3, "fe80::1", 64),          // link-local
        ifaddr(3, "fec0::1", 64),          // site-local (deprecated)
        ifaddr(3, "ff02::1", 64),          // multicast
        ifaddr(2, "224.0.0.1", 4),         // multicast
        ifaddr(2, "0.0.0.0", 0),           // unspecified
        ifaddr(3, "::ffff:192.0.2.1", 96), // IPv4-mapped
        ifaddr(tun, "198.18.0.1", 15),     // on the TUN
        ifaddr(2, "100.64.7.7", 10),       // inside a virtual prefix
        ifaddr(3, "fd00:ffff::7", 64),     // inside a virtual prefix
        ifaddr(2, "192.0.2.10", 24),       // duplicate
    ];
    let mut flagged = |a: &str, f: AddrFlags| {
        let mut x = ifaddr(3, a, 64);
        x.flags = f;
        addrs.push(x);
    };
    flagged("2001:db8::6", AddrFlags { tentative: true, ..Default::default() });
    flagged("2001:db8::7", AddrFlags { deprecated: true, ..Default::default() });
    flagged("2001:db8::8", AddrFlags { dad_failed: true, ..Default::default() });
    let mut site = ifaddr(2, "192.0.2.11", 24);
    site.scope = AddrScope::Link;
    addrs.push(site);

    let virtual_prefixes = [(addr("100.64.0.0"), 10), (addr("fd00:ffff::"), 32)];
    let up: HashSet<u32> = [1, 2, 3, tun].into();
    let paths = [path("192.0.2.1", Some("10.0.0.5"), 2), path("2001:db8::1", Some("2001:db8::5"), 3)];
    let got = usable_local_addrs(&addrs, &up, &paths, &[tun], &virtual_prefixes, 7000);
    // The kernel's preferred sources first, then the rest in the dump's order.
    assert_eq!(got, sockets(&["10.0.0.5", "[2001:db8::5]", "192.0.2.10", "[fd12::5]"], 7000));

    // Without exclusions the TUN's and the virtual addresses would be reported.
    assert_eq!(usable_local_addrs(&addrs, &up, &paths, &[], &[], 7000).len(), 7);
    assert!(usable_local_addrs(&[], &up, &paths, &[], &[], 7000).is_empty());
}

fn path(dst: &str, src: Option<&str>, ifindex: u32) -> PathChoice {
    PathChoice { dst: addr(dst), src: src.map(addr), ifindex, ifname: format!("if{ifindex}") }
}

fn sockets(addrs: &[&str], port: u16) -> Vec<SocketAddr> {
    addrs.iter().map(|a| format!("{a}:{port}").parse().unwrap()).collect()
}

/// Links and routes decide, not the address list alone: an address on a link that is down
/// is not usable, a family without a path (or whose path leaves through a link that is
/// down, or through the TUN) is not usable, and the kernel's preferred source leads.
#[test]
fn usable_local_addrs_follow_links_and_paths() {
    let tun = 9;
    let addrs = [ifaddr(2, "198.19.10.2", 24), ifaddr(3, "198.19.5.2", 24), ifaddr(4, "2001:db8:5::2", 64)];
    let all_up: HashSet<u32> = [2, 3, 4, tun].into();
    let via2 = path("192.0.2.10", Some("198.19.10.2"), 2);
    let via3 = path("192.0.2.10", Some("198.19.5.2"), 3);
    let v6 = path("2001:db8::1", Some("2001:db8:5::2"), 4);
    let usable = |up: &HashSet<u32>, paths: &[PathChoice]| usable_local_addrs(&addrs, up, paths, &[tun], &[], 4500);

    assert_eq!(
        usable(&all_up, &[via2.clone(), v6.clone()]),
        sockets(&["198.19.10.2", "[2001:db8:5::2]", "198.19.5.2"], 4500)
    );
    // The default route moved to the other link, the addresses stayed: another list.
    assert_eq!(
        usable(&all_up, &[via3.clone(), v6.clone()]),
        sockets(&["198.19.5.2", "[2001:db8:5::2]", "198.19.10.2"], 4500)
    );
    // Link 2 set down (its address kept): gone from the list.
    let no2: HashSet<u32> = [3, 4, tun].into();
    assert_eq!(usable(&no2, &[via3.clone(), v6.clone()]), sockets(&["198.19.5.2", "[2001:db8:5::2]"], 4500));
    // No IPv6 path: no IPv6 address, though it is configured on a link that is up.
    assert_eq!(usable(&all_up, std::slice::from_ref(&via2)), sockets(&["198.19.10.2", "198.19.5.2"], 4500));
    // The kernel would still send into link 2 without carrier (a linkdown route it does not
    // ignore): nothing of that family leaves, so none of its addresses is usable.
    assert_eq!(usable(&no2, &[via2.clone(), v6.clone()]), sockets(&["[2001:db8:5::2]"], 4500));
    // A path into the TUN is no way out either.
    assert!(usable(&all_up, &[path("192.0.2.10", None, tun)]).is_empty());
    // A path whose source the kernel did not name still makes the family usable.
    assert_eq!(usable(&all_up, &[path("192.0.2.10", None, 3)]), sockets(&["198.19.10.2", "198.19.5.2"], 4500));
}

/// Against the kernel: two uplinks, the second with a default route of a higher metric.
/// Setting the first down (its address stays) or taking its carrier moves the path, and
/// [`Netlink::usable_addrs`] follows; an IPv6 address without an IPv6 route is not usable.
#[test]
#[cfg_attr(
    any(target_arch = "mips", target_arch = "mips64"),
    ignore = "qemu-user passes the host's errno values inside netlink error messages untranslated, \
              and MIPS numbers them differently (ENETUNREACH is 128, not 101)"
)]
fn usable_addrs_follow_link_state_and_routes() {
    in_netns("usable_addrs_follow_link_state_and_routes", || {
        ip("link set lo up");
        ip("link add w0 type veth peer name w0p");
        ip("link add w1 type veth peer name w1p");
        for l in ["w0", "w0p", "w1", "w1p"] {
            ip(&format!("link set {l} up"));
        }
        ip("addr add 198.19.10.2/24 dev w0");
        ip("addr add 198.19.5.2/24 dev w1");
        ip("addr add 2001:db8:5::2/64 dev w1 nodad");
        ip("route add default via 198.19.10.1 dev w0");
        ip("route add default via 198.19.5.1 dev w1 metric 200");
        let mut nl = Netlink::open().unwrap();
        let probes = [addr("192.0.2.10"), addr("2001:db8::1")];
        let mut usable = || nl.usable_addrs(&probes, &[], &[], 4500).unwrap();
        let w0 = sockets(&["198.19.10.2"], 4500)[0];
        let w1 = sockets(&["198.19.5.2"], 4500)[0];
        // No IPv6 route to the probe: the IPv6 address of w1 is not usable.
        assert_eq!(usable(), vec![w0, w1]);

        // Administratively down: the IPv4 address stays on w0, its routes go.
        ip("link set w0 down");
        assert!(ip("-4 addr show dev w0").contains("198.19.10.2"), "the address stays");
        assert_eq!(usable(), vec![w1]);

        // Up again, then the carrier goes (the other end of the cable): the kernel keeps
        // w0's routes, marked linkdown, and by default still sends into them.
        ip("link set w0 up");
        ip("route add default via 198.19.10.1 dev w0");
        assert_eq!(usable(), vec![w0, w1]);
        ip("link set w0p down");
        assert!(ip("route get 192.0.2.10").contains("dev w0"), "{}", ip("route get 192.0.2.10"));
        assert_eq!(usable(), vec![], "nothing leaves through w0 without carrier");
        // A box told to route around links without carrier takes w1.
        std::fs::write("/proc/sys/net/ipv4/conf/all/ignore_routes_with_linkdown", "1").unwrap();
        std::fs::write("/proc/sys/net/ipv4/conf/w0/ignore_routes_with_linkdown", "1").unwrap();
        assert_eq!(usable(), vec![w1]);

        // An IPv6 default route makes w1's IPv6 address usable, the kernel's source first.
        ip("-6 route add default via 2001:db8:5::1 dev w1");
        assert_eq!(usable(), vec![w1, sockets(&["[2001:db8:5::2]"], 4500)[0]]);
    });
}
