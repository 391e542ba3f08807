//! Running with as little of root as a daemon needs, once it has started.
//!
//! A daemon starts as root, binds its ports and opens its files, and then gives up what it
//! no longer needs, in this order:
//!
//! 1. [`narrow_bounding_set`]: every capability but the ones it keeps leaves the bounding
//!    set, and `no_new_privs` is set, so that nothing the process runs can gain privileges
//!    again (set-user-ID programs and file capabilities have no effect). Done before any
//!    thread is started, as both are per thread and inherited.
//! 2. [`switch_user`]: the supplementary groups, the group and the user of the configured
//!    [`RunAs`]; all threads follow (the C library applies `setuid` to each).
//! 3. [`limit_capabilities`]: the permitted and effective sets hold exactly the kept
//!    capabilities (none for the servers, `CAP_NET_ADMIN` for `ntmd`); the inheritable and
//!    ambient sets are emptied.
//! 4. [`check_switched`]: `setuid(0)` and `setgid(0)` must fail now, or the daemon
//!    refuses to go on.
//!
//! [`RunAs`] is the `user` field of every daemon's configuration: `"name"` or
//! `"name:group"`, each a name or a number. It is resolved when the configuration is
//! checked, so a user this system does not have is a configuration error (exit 2).

use caps::{CapSet, CapsHashSet};
use nix::unistd::{Gid, Group, Uid, User};
use std::ffi::CString;

pub use caps::Capability;

/// Whom a daemon runs as after start-up: the `user` field, parsed (not yet looked up).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    user: String,
    group: Option<String>,
}

/// A [`RunAs`] resolved against this system's user and group databases.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// The user's name (its number when the user database has no entry for it).
    pub name: String,
    /// The user id.
    pub uid: Uid,
    /// The group id: the one named, else the user's primary group.
    pub gid: Gid,
    /// The supplementary groups: the user's groups in the group database (none for a
    /// number the user database does not know).
    pub groups: Vec<Gid>,
}

impl RunAs {
    /// Parses `"user"` or `"user:group"`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (user, group) = match s.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (s, None),
        };
        let plausible = |w: &str| !w.is_empty() && !w.contains([':', '/', '\0']) && !w.contains(char::is_whitespace);
        if !plausible(user) || group.is_some_and(|g| !plausible(g)) {
            return Err(format!("\"{s}\" is not \"user\" or \"user:group\""));
        }
        Ok(RunAs { user: user.to_string(), group: group.map(str::to_string) })
    }

    /// Looks the user and group up. Root is refused: the field is there to leave it (a
    /// daemon without it stays root).
    pub fn resolve(&self) -> Result<Account, String> {
        let lookup_err = |what: &str, e: nix::Error| format!("cannot look up {what} \"{}\": {e}", self.user);
        let entry = match self.user.parse::<u32>() {
            Ok(n) => User::from_uid(Uid::from_raw(n)).map_err(|e| lookup_err("user", e))?,
            Err(_) => Some(
                User::from_name(&self.user)
                    .map_err(|e| lookup_err("user", e))?
                    .ok_or_else(|| format!("no user \"{}\" on this system", self.user))?,
            ),
        };
        let uid = match (&entry, self.user.parse::<u32>()) {
            (Some(u), _) => u.uid,
            (None, Ok(n)) => Uid::from_raw(n),
            (None, Err(_)) => return Err(format!("no user \"{}\" on this system", self.user)),
        };
        let gid = match &self.group {
            Some(g) => match g.parse::<u32>() {
                Ok(n) => Gid::from_raw(n),
                Err(_) => {
                    Group::from_name(g)
                        .map_err(|e| format!("cannot look up group \"{g}\": {e}"))?
                        .ok_or_else(|| format!("no group \"{g}\" on this system"))?
                        .gid
                }
            },
            None => match &entry {
                Some(u) => u.gid,
                None => return Err(format!("user {} has no entry here: name its group (\"{0}:group\")", self.user)),
            },
        };
        if uid.is_root() || gid.as_raw() == 0 {
            return Err("name an unprivileged user and group (without the field the daemon stays root)".into());
        }
        let (name, groups) = match entry {
            Some(u) => {
                let c = CString::new(u.name.clone()).map_err(|_| format!("user name \"{}\" holds a NUL", u.name))?;
                let groups = nix::unistd::getgrouplist(&c, gid)
                    .map_err(|e| format!("cannot list the groups of \"{}\": {e}", u.name))?;
                (u.name, groups)
            }
            None => (uid.to_string(), Vec::new()),
        };
        if groups.iter().any(|g| g.as_raw() == 0) {
            return Err(format!("user \"{name}\" is in group 0 (root): choose a user outside it"));
        }
        Ok(Account { name, uid, gid, groups })
    }
}

impl Account {
    /// Whether this user may read `path`, judged by the owner, group and mode of the file
    /// and of every directory above it (ACLs are not read). For `check`, which stays who it
    /// is; `run` asks the kernel once it is the user, and the two agree for plain modes.
    pub fn may_read(&self, path: &std::path::Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        let has = |p: &std::path::Path, want: u32| match std::fs::metadata(p) {
            Ok(m) => {
                let shift = if m.uid() == self.uid.as_raw() {
                    6
                } else if m.gid() == self.gid.as_raw() || self.groups.iter().any(|g| g.as_raw() == m.gid()) {
                    3
                } else {
                    0
                };
                (m.mode() >> shift) & want == want
            }
            Err(_) => false,
        };
        let Ok(full) = std::path::absolute(path) else { return false };
        full.ancestors().skip(1).all(|d| has(d, 0o1)) && has(&full, 0o4)
    }
}

impl std::fmt::Display for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (uid {}, gid {})", self.name, self.uid, self.gid)
    }
}

/// True if this process runs as root (effective user id 0).
pub fn is_root() -> bool {
    Uid::effective().is_root()
}

/// Takes every capability but `keep` out of the calling thread's bounding set and sets
/// `no_new_privs`; threads started afterwards inherit both. Needs `CAP_SETPCAP` for the
/// bounding set: without it (a daemon started unprivileged) the set stays as it is and
/// `no_new_privs` alone keeps executed programs from gaining anything.
pub fn narrow_bounding_set(keep: &[Capability]) -> Result<(), String> {
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("cannot set no_new_privs: {e}"))?;
    let can = caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false);
    if !can {
        return Ok(());
    }
    for c in caps::all() {
        if !keep.contains(&c) && caps::has_cap(None, CapSet::Bounding, c).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, c).map_err(|e| format!("bounding set: {e}"))?;
        }
    }
    Ok(())
}

/// Becomes `account`: supplementary groups, group, user. With `keep_caps` the permitted
/// capabilities survive the change of user (for [`limit_capabilities`] to narrow); without
/// it the kernel clears them all. Nothing to do if the process already runs as that user
/// and group. [`check_switched`] checks the result.
pub fn switch_user(account: &Account, keep_caps: bool) -> Result<(), String> {
    use nix::unistd::{getgid, getuid, setgid, setgroups, setuid};
    if getuid() == account.uid && Uid::effective() == account.uid && getgid() == account.gid {
        return Ok(());
    }
    if !is_root() {
        return Err(format!("cannot become {account}: not started as root"));
    }
    let fail = |what: &str, e: nix::Error| format!("cannot become {account}: {what}: {e}");
    if keep_caps {
        caps::securebits::set_keepcaps(true).map_err(|e| format!("cannot become {account}: {e}"))?;
    }
    setgroups(&account.groups).map_err(|e| fail("setgroups", e))?;
    setgid(account.gid).map_err(|e| fail("setgid", e))?;
    setuid(account.uid).map_err(|e| fail("setuid", e))?;
    if keep_caps {
        caps::securebits::set_keepcaps(false).map_err(|e| format!("{e}"))?;
    }
    Ok(())
}

/// Checks, once the capabilities are limited too, that the process is `account` in
/// every id and cannot become root again.
pub fn check_switched(account: &Account) -> Result<(), String> {
    use nix::unistd::{getgid, getuid, setgid, setuid};
    if setuid(Uid::from_raw(0)).is_ok() || setgid(Gid::from_raw(0)).is_ok() {
        return Err(format!("became {account} but could become root again"));
    }
    if getuid() != account.uid || Uid::effective() != account.uid || getgid() != account.gid {
        return Err(format!("became {account} only in part"));
    }
    Ok(())
}

/// Leaves the calling thread exactly `keep` in its permitted and effective sets (those of
/// it that it has) and nothing in its inheritable and ambient sets; checks the result.
pub fn limit_capabilities(keep: &[Capability]) -> Result<(), String> {
    let err = |e: caps::errors::CapsError| format!("capabilities: {e}");
    let permitted = caps::read(None, CapSet::Permitted).map_err(err)?;
    let kept: CapsHashSet = keep.iter().copied().filter(|c| permitted.contains(c)).collect();
    // The ambient set needs kernel 4.3; an older kernel has none to clear.
    let _ = caps::clear(None, CapSet::Ambient);
    caps::clear(None, CapSet::Inheritable).map_err(err)?;
    // Effective first: the kernel refuses an effective set larger than the permitted one.
    caps::set(None, CapSet::Effective, &kept).map_err(err)?;
    caps::set(None, CapSet::Permitted, &kept).map_err(err)?;
    let now = caps::read(None, CapSet::Permitted).map_err(err)?;
    if now != kept || caps::read(None, CapSet::Effective).map_err(err)? != kept {
        return Err(format!("capabilities: {now:?} remain, not {kept:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_and_group_are_parsed() {
        assert_eq!(RunAs::parse("ntm").unwrap(), RunAs { user: "ntm".into(), group: None });
        assert_eq!(RunAs::parse("ntm:daemon").unwrap(), RunAs { user: "ntm".into(), group: Some("daemon".into()) });
        assert_eq!(RunAs::parse("65534:65534").unwrap().group.as_deref(), Some("65534"));
        for bad in ["", ":", "ntm:", ":ntm", "a:b:c", "a b", "../x"] {
            assert!(RunAs::parse(bad).is_err(), "{bad}");
        }
    }

    /// The whole drop, as `ntmd` does it, in a child process (the test binary run again
    /// for this test alone): it must end as `nobody` with CAP_NET_ADMIN and nothing else.
    /// Needs root and a `nobody` user; passes without doing anything otherwise.
    #[test]
    fn a_process_drops_to_its_user_keeping_only_what_it_names() {
        const NAME: &str = "privs::tests::a_process_drops_to_its_user_keeping_only_what_it_names";
        if std::env::var_os("NTM_PRIVS_CHILD").is_some() {
            return drop_in_this_process();
        }
        if !is_root() || !matches!(User::from_name("nobody"), Ok(Some(_))) {
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args([NAME, "--exact", "--test-threads=1"])
            .env("NTM_PRIVS_CHILD", "1")
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && text.contains("1 passed"), "{text}");
    }

    fn drop_in_this_process() {
        let a = RunAs::parse("nobody").unwrap().resolve().unwrap();
        let keep = [Capability::CAP_NET_ADMIN];
        narrow_bounding_set(&keep).unwrap();
        switch_user(&a, true).unwrap();
        limit_capabilities(&keep).unwrap();
        check_switched(&a).unwrap();
        // Capabilities are per thread: this thread's.
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        };
        let (u, g) = (a.uid.to_string(), a.gid.to_string());
        assert_eq!(field("Uid:").unwrap(), [u.as_str(); 4].join(" "));
        assert_eq!(field("Gid:").unwrap(), [g.as_str(); 4].join(" "));
        for set in ["CapPrm:", "CapEff:", "CapBnd:"] {
            assert_eq!(field(set).unwrap(), "0000000000001000", "{set}");
        }
        for set in ["CapInh:", "CapAmb:"] {
            assert_eq!(field(set).unwrap(), "0000000000000000", "{set}");
        }
        assert_eq!(field("NoNewPrivs:").unwrap(), "1");
        assert!(nix::unistd::setuid(Uid::from_raw(0)).is_err());
    }

    #[test]
    fn names_and_numbers_resolve_and_root_is_refused() {
        // Every Linux system has root; `nobody` (65534) is on Debian and most others.
        let e = RunAs::parse("root").unwrap().resolve().unwrap_err();
        assert!(e.contains("unprivileged"), "{e}");
        assert!(RunAs::parse("0:0").unwrap().resolve().is_err());
        let e = RunAs::parse("no-such-user-here").unwrap().resolve().unwrap_err();
        assert!(e.contains("no user \"no-such-user-here\""), "{e}");
        let e = RunAs::parse("nobody:no-such-group-here").unwrap().resolve().unwrap_err();
        assert!(e.contains("no group \"no-such-group-here\""), "{e}");
        // A number without an entry needs its group named.
        let e = RunAs::parse("4000123").unwrap().resolve().unwrap_err();
        assert!(e.contains("name its group"), "{e}");
        let a = RunAs::parse("4000123:4000123").unwrap().resolve().unwrap();
        assert_eq!((a.uid.as_raw(), a.gid.as_raw(), a.groups.len()), (4000123, 4000123, 0));
        if let Ok(Some(nobody)) = User::from_name("nobody") {
            let a = RunAs::parse("nobody").unwrap().resolve().unwrap();
            assert_eq!((a.uid, a.gid), (nobody.uid, nobody.gid));
            assert!(a.groups.contains(&nobody.gid), "{:?}", a.groups);
            let by_number = RunAs::parse(&nobody.uid.to_string()).unwrap().resolve().unwrap();
            assert_eq!(by_number, a);
        }
    }
}
