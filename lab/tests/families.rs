//! One configuration for boxes on networks of one address family (issue 13, 1b): box a
//! is on an IPv6-only access network, box b on an IPv4-only one, and both run the same
//! `ntmd` configuration but for their own certificate and paths: the AS given by name
//! (NSD has `as.plain.example` with A and AAAA) or as a list of an IPv4 and an IPv6
//! address, the IPv4 one first; the NS keeps both reachable (keepalive "ns"), and it
//! listens for nodes on both families, the DCs listing both of its node addresses. Each
//! box must log in, register, get its NS connection in its own family, and be reached
//! by the other by name. Last, an AS address that drops every packet is given up after
//! 3 s for the next one. Needs root, NSD, dig, ping and nft.

#![allow(clippy::print_stderr)]

use ntm_lab::deploy::{or_skip, Access, Deployment, NSD_IP, NSD_IP6};
use ntm_lab::tools_or_skip;
use serde_json::{json, Value};

const NAMES: [&str; 2] = ["a.zone-a.test", "b.zone-b.test"];
const NS_NODE_ADDRS: [&str; 2] = ["192.0.2.40:4463", "[2001:db8:2::40]:4463"];

/// The lab with an IPv6-only box a and an IPv4-only box b, and the NS taking nodes on
/// both families (its configuration and the DCs' changed, then restarted).
fn lab(label: &str) -> Option<Deployment> {
    if !tools_or_skip(label, &["ping", "nft"]) {
        return None;
    }
    let mut d = or_skip(Deployment::start_with(label, [Access::Global6, Access::Global4]), label)?;
    let dir = d.lab.dir().to_path_buf();
    let edit = |label: &str, f: &dyn Fn(&mut Value)| {
        let path = dir.join(format!("{label}.json"));
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    };
    d.lab.step("the NS takes nodes on both families; the DCs grant both of its node addresses");
    edit("ns", &|v| v["node_listen"] = json!(NS_NODE_ADDRS));
    for dc in ["dc-a", "dc-b"] {
        edit(dc, &|v| v["notification_servers"][0]["node_addr"] = json!(NS_NODE_ADDRS));
    }
    for server in ["ns", "dc-a", "dc-b"] {
        d.restart_server(server).unwrap();
    }
    Some(d)
}

/// Box `i`'s configuration: the shared part is `account` (the AS fields) and the rest
/// below; only the certificate, key and socket paths are the box's own.
fn config(d: &Deployment, i: usize, account: &Value) -> Value {
    let mut c = d.agent_config(i);
    let obj = c.as_object_mut().unwrap();
    obj.remove("account_server");
    if let Value::Object(a) = account {
        obj.extend(a.clone());
    }
    c["keepalive"] = "ns".into();
    c["dns"]["upstream"] = json!([format!("[{NSD_IP6}]:53"), format!("{NSD_IP}:53")]);
    c
}

/// Starts both agents with `account`, and checks login, registration, the NS connection
/// (in the box's own family) and reachability by name both ways.
fn both_boxes_work(d: &mut Deployment, account: &Value, tag: &str) {
    for i in 0..2 {
        let c = config(d, i, account);
        d.start_agent(i, &c).unwrap();
    }
    let t0 = std::time::Instant::now();
    let mut st = Vec::new();
    for (i, family) in [(0, "IPv6"), (1, "IPv4")] {
        d.lab.step(format!("{tag}: box {} ({family} only) logs in and registers", NAMES[i]));
        let s = d.wait_registered(i, 40);
        assert!(s.is_some(), "{tag}: box {i} ({family} only) registered: {:?}", d.status(i));
        assert!(
            d.lab.wait_for(15, || d.status(i).is_some_and(|s| s["notifications_ready"] == true)),
            "{tag}: box {i}'s NS connection is up: {:?}",
            d.status(i)
        );
        let took = t0.elapsed();
        eprintln!("{tag}: box {i} ({family} only) registered and at the NS {took:?} after the start");
        // About 0.1 s here; a first try at a resolver of the family the box lacks would
        // cost 2 s for each of the AS's and the DC's lookups.
        assert!(took < std::time::Duration::from_secs(3), "{tag}: box {i} took {took:?}");
        st.push(s.unwrap_or_default());
    }
    // Each box's TCP connection to the NS is in its own family.
    let ns = d.srv.clone();
    let out = d.lab.try_exec(&ns, &["ss", "-Htn", "state", "established", "sport", "=", ":4463"]).unwrap();
    let conns = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(conns.contains("[2001:db8:a::2]"), "{tag}: box a at the NS over IPv6:\n{conns}");
    assert!(conns.contains("203.0.113.2:"), "{tag}: box b at the NS over IPv4:\n{conns}");
    for (from, to) in [(1, 0), (0, 1)] {
        d.lab.step(format!("{tag}: box {from} reaches {} by name", NAMES[to]));
        let v4 = st[to]["virtual_ipv4"].as_str().unwrap_or_default().to_string();
        assert_eq!(d.dig(from, NAMES[to], "A"), v4, "{tag}: the hook answers the peer's virtual address");
        assert!(d.ping(from, &v4, 3), "{tag}: ping {} from box {from}", NAMES[to]);
        // An ordinary name through the box's stub: its first try goes to a resolver of the
        // box's own family, not to the unreachable one listed first (2 s per name before).
        let t = std::time::Instant::now();
        assert_eq!(d.dig(from, "www.plain.example", "A"), "192.0.2.80", "{tag}: box {from} resolves an ordinary name");
        let took = t.elapsed();
        assert!(took < std::time::Duration::from_millis(1500), "{tag}: box {from}: an ordinary name took {took:?}");
    }
    d.stop_agent(0);
    d.stop_agent(1);
}

#[test]
fn one_configuration_serves_ipv6_only_and_ipv4_only_boxes() {
    let Some(mut d) = lab("families") else { return };
    // The AS by name: A and AAAA through the configured resolvers.
    let named = json!({"account_server": "as.plain.example:4443"});
    both_boxes_work(&mut d, &named, "AS by name");
    // The AS as a list of both families, the IPv4 address first: the IPv6-only box must
    // not wait on it.
    let listed = json!({"account_server_addrs": ["192.0.2.10:4443", "[2001:db8:2::10]:4443"]});
    both_boxes_work(&mut d, &listed, "AS as a list");

    // An AS address that has a route but goes nowhere (the router drops everything to
    // it): the connection is given up after 3 s and the next address tried, instead of
    // waiting out the TCP connect timeout and the 30 s login timeout.
    d.lab.step("an AS address that swallows every packet comes first");
    let rtr = d.rtr.clone();
    let drop =
        "table inet blackhole {\n  chain drop_silent {\n    type filter hook forward priority 0; policy accept;\n    \
                ip daddr 192.0.2.99 drop\n  }\n}\n";
    d.lab.nft(&rtr, drop).unwrap();
    let c = config(&d, 1, &json!({"account_server_addrs": ["192.0.2.99:4443", "192.0.2.10:4443"]}));
    let t0 = std::time::Instant::now();
    d.start_agent(1, &c).unwrap();
    assert!(d.wait_registered(1, 20).is_some(), "registered after giving the silent address up");
    let took = t0.elapsed();
    eprintln!("silent first AS address: box b registered {took:?} after the start");
    assert!(took < std::time::Duration::from_secs(8), "{took:?}");
}
