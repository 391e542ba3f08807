//! What `ntmd` keeps of root once started: `CAP_NET_ADMIN`, and nothing else.
//!
//! At start the agent creates its TUN device and sizes its tunnel sockets' buffers beyond
//! the sysctl limits (`CAP_NET_ADMIN`) and binds its DNS stub, on port 53 by default
//! (`CAP_NET_BIND_SERVICE`). Afterwards it only needs `CAP_NET_ADMIN`: registration puts
//! the virtual addresses on the TUN device and the virtual routes into it over netlink,
//! which the kernel checks against the sending thread at every message, not only when the
//! socket was opened. It uses no raw sockets (ICMP answers are written into the TUN
//! device) and binds nothing after start.
//!
//! So, once [`crate::agent::Agent::new`] has opened everything, [`Plan::apply`]:
//! narrows the bounding set to `CAP_NET_ADMIN` and sets `no_new_privs`; with `user` set,
//! gives the status socket to the user and becomes the user keeping its permitted
//! capabilities across the change (`PR_SET_KEEPCAPS`); and leaves exactly `CAP_NET_ADMIN`
//! in the permitted and effective sets, nothing inheritable or ambient (the shared steps
//! are `ntm_cmdline::privs`). Without `user` the agent stays uid 0, which still owns root's
//! files: the field is the better choice where the box has a user to spare.
//!
//! What the user must be able to read afterwards: an OIDC token file (looked at again
//! every 30 s). The CA, the device certificate and key and the password file are read
//! once, before the drop.

use crate::config::AgentFile;
use ntm_cmdline::privs::{self as shared, Account, Capability, RunAs};
use std::path::PathBuf;

/// The capabilities the running agent keeps.
pub const KEPT: &[Capability] = &[Capability::CAP_NET_ADMIN];

/// The `user` field, resolved: `None` if absent, an error naming no user of this system.
pub fn account(cfg: &AgentFile) -> Result<Option<Account>, String> {
    cfg.user.as_ref().map(|u| RunAs::parse(u)?.resolve()).transpose()
}

/// What to drop once the agent has started, taken from its configuration before it
/// starts (the agent keeps the configuration).
#[derive(Debug)]
pub struct Plan {
    account: Option<Account>,
    status_socket: PathBuf,
    reread: Option<PathBuf>,
}

impl Plan {
    /// For `check`: what [`Plan::apply`] would refuse once it is the user, judged without
    /// becoming it ([`Account::may_read`]).
    pub fn check(&self) -> Result<(), String> {
        match (&self.account, &self.reread) {
            (Some(a), Some(p)) if !a.may_read(p) => Err(unreadable(p, a)),
            _ => Ok(()),
        }
    }

    /// The plan for `cfg`; an error if its user cannot be resolved.
    pub fn new(cfg: &AgentFile) -> Result<Self, String> {
        Ok(Plan {
            account: account(cfg)?,
            status_socket: PathBuf::from(cfg.status_socket.as_str()),
            reread: cfg.credential.oidc_token_file.as_ref().map(|p| PathBuf::from(p.as_str())),
        })
    }

    /// Drops everything but [`KEPT`] (see the module's description).
    pub fn apply(&self) -> Result<(), String> {
        shared::narrow_bounding_set(KEPT)?;
        if let Some(a) = &self.account {
            nix::unistd::chown(&self.status_socket, Some(a.uid), Some(a.gid))
                .map_err(|e| format!("status socket {}: cannot give it to {a}: {e}", self.status_socket.display()))?;
            shared::switch_user(a, true)?;
        }
        shared::limit_capabilities(KEPT)?;
        if let Some(a) = &self.account {
            shared::check_switched(a)?;
        }
        if let (Some(a), Some(p)) = (&self.account, &self.reread) {
            if nix::unistd::access(p, nix::unistd::AccessFlags::R_OK).is_err() {
                return Err(unreadable(p, a));
            }
        }
        match &self.account {
            Some(a) => log::info!("running as {a} with CAP_NET_ADMIN only"),
            None => log::info!("running with CAP_NET_ADMIN only"),
        }
        Ok(())
    }
}

fn unreadable(p: &std::path::Path, a: &Account) -> String {
    format!(
        "credential.oidc_token_file {}: user {} cannot read it, and the agent reads it again when it changes",
        p.display(),
        a.name
    )
}

#[cfg(test)]
mod tests {
    use crate::config::tests::MIN;

    #[test]
    fn the_user_field_is_resolved_when_the_file_is_checked() {
        let with = |u: &str| MIN.replacen('{', &format!("{{ \"user\": \"{u}\","), 1);
        let err = crate::config::parse(&with("no-such-user-here")).unwrap_err();
        assert!(err.contains("field \"user\": no user \"no-such-user-here\""), "{err}");
        assert!(crate::config::parse(&with("root")).unwrap_err().contains("field \"user\""));
        let c = crate::config::parse(&with("4000123:4000124")).unwrap();
        let a = super::account(&c).unwrap().unwrap();
        assert_eq!((a.uid.as_raw(), a.gid.as_raw()), (4000123, 4000124));
        assert!(super::account(&crate::config::parse(MIN).unwrap()).unwrap().is_none());
    }
}
