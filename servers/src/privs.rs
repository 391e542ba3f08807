//! The servers drop root once started.
//!
//! A server needs root (or `CAP_NET_BIND_SERVICE`) only to bind ports below 1024, and
//! its files only to be opened. With the `user` field set, [`before_start`] narrows the
//! bounding set to nothing and sets `no_new_privs` (before any thread exists), the daemon
//! binds and opens everything, and [`after_start`] then:
//!
//! 1. gives the files the daemon itself keeps writing to the user: its database (with
//!    SQLite's `-wal` and `-shm` files beside it; the store keeps them mode 0600, so only
//!    their owner can use them) and its status socket;
//! 2. becomes the user, with no capabilities left (`ntm_cmdline::privs`);
//! 3. checks what it will open again as that user: the TLS files, which SIGHUP reloads
//!    (not readable is an error: the rotation would fail on the day it is needed), and
//!    the directories of the database and the status socket, where SQLite removes its
//!    `-wal` file and the daemon its socket when it stops (not writable is a warning: both
//!    are replaced at the next start).
//!
//! Without the field a daemon started as root stays root, and says so once at start.

use crate::config::{AsFile, Common, DcFile, NsFile, RsFile};
use nix::unistd::AccessFlags;
use ntm_cmdline::privs::{self as shared, Account, RunAs};
use std::path::{Path, PathBuf};

/// The `user` field, resolved: `None` if absent, an error naming no user of this system.
pub fn account(c: &Common) -> Result<Option<Account>, String> {
    c.user.as_deref().map(|u| RunAs::parse(u)?.resolve()).transpose()
}

/// How a daemon uses a file after dropping root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// Read again later (the TLS files on SIGHUP): the user must be able to read it.
    Reread,
    /// A database the daemon writes: given to the user with SQLite's files beside it.
    Database,
    /// The status socket the daemon made: given to the user.
    Socket,
}

/// A file a daemon uses after dropping root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kept {
    /// The configuration field naming it.
    pub field: &'static str,
    /// The file.
    pub path: PathBuf,
    /// What the daemon does with it.
    pub usage: Use,
}

/// The files a daemon uses after start-up, by configuration.
pub trait KeptFiles {
    /// Every file this daemon opens, writes or removes after it has started.
    fn kept_files(&self) -> Vec<Kept>;
}

fn common_files(c: &Common) -> Vec<Kept> {
    let mut v = vec![
        Kept { field: "tls.ca", path: c.tls.ca.clone(), usage: Use::Reread },
        Kept { field: "tls.cert", path: c.tls.cert.clone(), usage: Use::Reread },
        Kept { field: "tls.key", path: c.tls.key.clone(), usage: Use::Reread },
    ];
    if let Some(s) = &c.status_socket {
        v.push(Kept { field: "status_socket", path: s.clone(), usage: Use::Socket });
    }
    v
}

impl KeptFiles for AsFile {
    fn kept_files(&self) -> Vec<Kept> {
        // The attestation key and the JWKS files are read once, at start.
        let mut v = common_files(&self.common);
        v.push(Kept { field: "accounts", path: self.accounts.clone(), usage: Use::Database });
        v
    }
}

impl KeptFiles for DcFile {
    fn kept_files(&self) -> Vec<Kept> {
        let mut v = common_files(&self.common);
        v.push(Kept { field: "state", path: self.state.clone(), usage: Use::Database });
        v
    }
}

impl KeptFiles for RsFile {
    fn kept_files(&self) -> Vec<Kept> {
        common_files(&self.common)
    }
}

impl KeptFiles for NsFile {
    fn kept_files(&self) -> Vec<Kept> {
        common_files(&self.common)
    }
}

/// Before the daemon binds and opens anything (and starts threads): with a user to become,
/// no capability stays in the bounding set and `no_new_privs` is set.
pub fn before_start(account: Option<&Account>) -> Result<(), String> {
    match account {
        Some(_) => shared::narrow_bounding_set(&[]),
        None => Ok(()),
    }
}

/// Once every port is bound and every file open: becomes the configured user (see the
/// module's description), or warns that the daemon runs as root.
pub fn after_start(program: &str, account: Option<&Account>, files: &[Kept]) -> Result<(), String> {
    let Some(a) = account else {
        if shared::is_root() {
            log::warn!(
                "{program} runs as root: set \"user\" in its configuration to run as an unprivileged user once started"
            );
        }
        return Ok(());
    };
    for f in files {
        give(f, a)?;
    }
    shared::switch_user(a, false)?;
    shared::limit_capabilities(&[])?;
    shared::check_switched(a)?;
    for f in files {
        check(f, a)?;
    }
    log::info!("running as {a}, without capabilities");
    Ok(())
}

/// The paths of a kept file that the user must own.
fn owned_paths(f: &Kept) -> Vec<PathBuf> {
    match f.usage {
        Use::Reread => Vec::new(),
        Use::Socket => vec![f.path.clone()],
        Use::Database => {
            let with = |suffix: &str| {
                let mut p = f.path.clone().into_os_string();
                p.push(suffix);
                PathBuf::from(p)
            };
            // SQLite makes these as the process that opens the database first; they exist
            // by now (the store enabled WAL mode at start) and must be the user's too.
            vec![f.path.clone(), with("-wal"), with("-shm")]
        }
    }
}

fn give(f: &Kept, a: &Account) -> Result<(), String> {
    for p in owned_paths(f) {
        if f.usage == Use::Database && p != f.path && !p.exists() {
            continue;
        }
        nix::unistd::chown(&p, Some(a.uid), Some(a.gid))
            .map_err(|e| format!("{} {}: cannot give it to {a}: {e}", f.field, p.display()))?;
    }
    Ok(())
}

/// For `check`, which stays who it is: whether `a` could read every file the daemon reads
/// again after dropping root ([`Account::may_read`]).
pub fn check_readable_by(a: &Account, files: &[Kept]) -> Result<(), String> {
    for f in files.iter().filter(|f| f.usage == Use::Reread) {
        if !a.may_read(&f.path) {
            return Err(unreadable(f, a));
        }
    }
    Ok(())
}

fn unreadable(f: &Kept, a: &Account) -> String {
    format!(
        "{} {}: user {} cannot read it, and SIGHUP reads it again: make it readable by the user or its group",
        f.field,
        f.path.display(),
        a.name
    )
}

fn check(f: &Kept, a: &Account) -> Result<(), String> {
    let can = |p: &Path, mode| nix::unistd::access(p, mode).is_ok();
    match f.usage {
        Use::Reread if !can(&f.path, AccessFlags::R_OK) => Err(unreadable(f, a)),
        Use::Database if !can(&f.path, AccessFlags::R_OK | AccessFlags::W_OK) => {
            Err(format!("{} {}: user {} cannot write it", f.field, f.path.display(), a.name))
        }
        Use::Database | Use::Socket => {
            let dir = match f.path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            if !can(dir, AccessFlags::W_OK | AccessFlags::X_OK) {
                let left = if f.usage == Use::Socket { "the socket" } else { "SQLite's -wal and -shm files" };
                log::warn!(
                    "{} {}: user {} cannot write the directory, so {left} will stay there when the daemon stops",
                    f.field,
                    f.path.display(),
                    a.name
                );
            }
            Ok(())
        }
        Use::Reread => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_daemon_names_the_files_it_uses_after_start() {
        let dc: DcFile = serde_json::from_str(
            r#"{"name": "dc.z.example", "listen": ["127.0.0.1:4460"],
            "tls": {"ca": "/e/ca.pem", "cert": "/e/dc.pem", "key": "/e/dc.key"}, "status_socket": "/run/ntm/dc.sock",
            "zones": ["z.example"], "virtual_ipv4": "198.18.0.0/16", "virtual_ipv6": "2001:db8:ffff::/96",
            "state": "/var/lib/ntm/dc.db"}"#,
        )
        .unwrap();
        let kept = dc.kept_files();
        let fields: Vec<_> = kept.iter().map(|k| (k.field, k.usage)).collect();
        assert_eq!(
            fields,
            [
                ("tls.ca", Use::Reread),
                ("tls.cert", Use::Reread),
                ("tls.key", Use::Reread),
                ("status_socket", Use::Socket),
                ("state", Use::Database)
            ]
        );
        let db = kept.iter().find(|k| k.usage == Use::Database).unwrap();
        let owned: Vec<_> = owned_paths(db).iter().map(|p| p.display().to_string()).collect();
        assert_eq!(owned, ["/var/lib/ntm/dc.db", "/var/lib/ntm/dc.db-wal", "/var/lib/ntm/dc.db-shm"]);
    }

    #[test]
    fn an_unknown_user_is_a_configuration_error_naming_the_field() {
        let text = r#"{"name": "rs.example", "listen": ["192.0.2.30:4460"], "tls": {"ca": "a", "cert": "b", "key": "c"},
            "user": "no-such-user-here"}"#;
        let dir = std::env::temp_dir().join(format!("ntm-privs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rs.json");
        std::fs::write(&path, text).unwrap();
        let err = crate::config::load::<RsFile>(&path).unwrap_err().to_string();
        assert!(err.contains("field \"user\": no user \"no-such-user-here\""), "{err}");
        std::fs::write(&path, text.replace("no-such-user-here", "a:b:c")).unwrap();
        let err = crate::config::load::<RsFile>(&path).unwrap_err().to_string();
        assert!(err.contains("field \"user\""), "{err}");
        std::fs::write(&path, text.replace("no-such-user-here", "root")).unwrap();
        assert!(crate::config::load::<RsFile>(&path).unwrap_err().to_string().contains("field \"user\""));
        std::fs::write(&path, text.replace(r#""user": "no-such-user-here""#, r#""user": "4000123:4000123""#)).unwrap();
        let rs = crate::config::load::<RsFile>(&path).unwrap();
        assert_eq!(account(&rs.common).unwrap().unwrap().uid.as_raw(), 4000123);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
