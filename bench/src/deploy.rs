//! The lab deployments of the parts: the two agent builds measured, and starting both
//! agents until the tunnel from box a to box b is up.

use crate::util::{e2s, Res};
use ntm_lab::deploy::Deployment;
use std::path::{Path, PathBuf};

pub const B_NAME: &str = "b.zone-b.test";
/// Box a and box b on their public IPv4 links (Access::Global4).
pub const A_IP: &str = "198.51.100.2";
pub const B_IP: &str = "203.0.113.2";

/// The two builds of the agent that the tunnel part measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NtmBuild {
    /// `[profile.release]`: opt-level "z" with AES-CCM (ntm-aead and the RustCrypto
    /// crates under it) at 3, as shipped to routers.
    Size,
    /// `[profile.speed]`: the release profile at opt-level 3, for x86_64 gateways.
    Speed,
}

impl NtmBuild {
    pub const ALL: [NtmBuild; 2] = [NtmBuild::Size, NtmBuild::Speed];

    /// Its row name, Cargo profile, short tag, and the command that builds it.
    pub fn spec(self) -> [&'static str; 4] {
        match self {
            NtmBuild::Size => [
                "ntmobile direct (AES-128-CCM), release build (opt-level z, AES-CCM at 3)",
                "release",
                "z",
                "cargo build --release -p ntm-agent",
            ],
            NtmBuild::Speed => [
                "ntmobile direct (AES-128-CCM), speed build (profile speed, opt-level 3)",
                "speed",
                "o3",
                "cargo build --profile speed -p ntm-agent",
            ],
        }
    }

    pub fn name(self) -> &'static str {
        self.spec()[0]
    }

    pub fn profile(self) -> &'static str {
        self.spec()[1]
    }

    pub fn tag(self) -> &'static str {
        self.spec()[2]
    }

    pub fn how(self) -> &'static str {
        self.spec()[3]
    }

    /// Where this build's `ntmd` is: the release binaries' directory, or its sibling
    /// `speed` (`target/release` and `target/speed`).
    pub fn ntmd(self, bins: &Path) -> PathBuf {
        match self {
            NtmBuild::Size => bins.join("ntmd"),
            NtmBuild::Speed => bins.with_file_name("speed").join("ntmd"),
        }
    }
}

pub fn agent_pid(d: &mut Deployment, i: usize) -> Option<u32> {
    let p = d.boxes[i].proc?;
    Some(d.lab.proc(p).pid())
}

pub fn server_pid(d: &mut Deployment, label: &str) -> Option<u32> {
    let i = d.servers.iter().find(|(l, _, _)| l == label).map(|s| s.2)?;
    Some(d.lab.proc(i).pid())
}

/// Starts both agents (log level info, as in production) and makes the tunnel from a to
/// b by name; b's virtual IPv4 address.
pub fn agents_up(d: &mut Deployment, path: &str) -> Res<String> {
    let ntmd = d.bins.join("ntmd");
    agents_up_with(d, path, &ntmd)
}

/// [`agents_up`] with the agent binary `ntmd` (the release build or the speed build).
pub fn agents_up_with(d: &mut Deployment, path: &str, ntmd: &Path) -> Res<String> {
    let program = ntmd.to_string_lossy().into_owned();
    for i in 0..2 {
        let mut cfg = d.agent_config(i);
        cfg["log_level"] = "info".into();
        d.start_agent_with(i, &cfg, &[&program]).map_err(e2s)?;
    }
    let mut b4 = String::new();
    for i in 0..2 {
        let st = d.wait_registered(i, 30).ok_or_else(|| format!("box {i} not registered within 30 s"))?;
        b4 = st["virtual_ipv4"].as_str().unwrap_or_default().to_string();
    }
    let got = d.dig(0, B_NAME, "A");
    if got != b4 {
        return Err(format!("the DNS hook answered {got:?}, not {b4}"));
    }
    if !d.wait_path(0, B_NAME, path, 15) {
        return Err(format!("the tunnel did not settle on the {path} path: {:?}", d.tunnel(0, B_NAME)));
    }
    Ok(b4)
}

pub fn agents_down(d: &mut Deployment) {
    d.stop_agent(0);
    d.stop_agent(1);
}
