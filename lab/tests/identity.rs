//! A cloned device certificate, with the real binaries in network namespaces: box b runs
//! with a copy of box a's certificate and key. The DC takes the second login and tells box
//! a, which says so in its status and its log. Needs root, NSD and dig; the binaries come
//! from `cargo build --release --workspace --bins`.

use ntm_lab::deploy::{or_skip, Deployment};

#[test]
fn a_box_whose_certificate_is_used_by_another_says_it_was_displaced() {
    let label = "clone";
    let Some(mut d) = or_skip(Deployment::start(label), label) else { return };
    let cfg_a = d.agent_config(0);
    d.start_agent(0, &cfg_a).unwrap();
    let a = d.wait_registered(0, 30).expect("box a registers");
    assert_eq!(a["displaced"], false);

    // Box b with box a's certificate and key.
    let mut cfg_b = d.agent_config(1);
    cfg_b["credential"] = cfg_a["credential"].clone();
    d.start_agent(1, &cfg_b).unwrap();
    let b = d.wait_registered(1, 30).expect("the copy logs in and registers as box a");
    assert_eq!(b["fqdn"], a["fqdn"]);

    let told = d.lab.wait_for(10, || d.status(0).is_some_and(|s| s["displaced"] == true));
    assert!(told, "box a says it was displaced");
    assert_eq!(d.status(0).unwrap()["registered"], false, "and no longer says it is registered");
    let pa = d.boxes[0].proc.unwrap();
    let log = d.lab.proc(pa).log_text();
    assert!(log.contains("took over our registration"), "box a logs it: {log}");
    let dc = std::fs::read_to_string(d.lab.dir().join("dc-a.log")).unwrap();
    assert!(dc.contains("replaces the one registered from"), "the DC logs it");
    assert_eq!(d.status(1).unwrap()["displaced"], false, "the copy holds the registration for now");
}
