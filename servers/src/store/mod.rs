//! The embedded databases, one SQLite file per role that keeps state: the AS's accounts
//! ([`accounts`]) and the DC's registrations ([`dc`]). What they share is here: opening a
//! file, its schema version, and the errors.
//!
//! Both files are created with mode 0600 (they hold password hashes or keys) and use WAL
//! mode, `synchronous = FULL` (a committed counter reservation survives power loss, not
//! just a crash), `secure_delete` (replaced rows, old keys and hashes among them, are
//! overwritten) and `PRAGMA user_version` for the schema version; a file from a newer
//! build is refused rather than misread. Errors are [`StoreError`]s with a one-line
//! message naming the file and what failed; nothing here panics on I/O or on stored data.

#[cfg(feature = "as")]
pub mod accounts;
#[cfg(feature = "dc")]
pub mod dc;

use core::fmt;
use rusqlite::{Connection, ErrorCode, TransactionBehavior};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// A store operation's result.
pub type Result<T, E = StoreError> = core::result::Result<T, E>;

/// What went wrong in a store. Displays as one line naming the file and the failed step;
/// never includes a password, hash or key.
#[derive(Debug)]
pub enum StoreError {
    /// The database could not be opened or configured.
    Open {
        /// The database file.
        path: String,
        /// What was being done.
        action: &'static str,
        /// SQLite's reason.
        source: rusqlite::Error,
    },
    /// The file itself (creation, permissions) failed.
    File {
        /// The database file.
        path: String,
        /// What was being done.
        action: &'static str,
        /// The OS's reason.
        source: std::io::Error,
    },
    /// The file cannot be used as this store needs (e.g. WAL mode is refused).
    Unsupported {
        /// The database file.
        path: String,
        /// What is missing.
        detail: String,
    },
    /// The file's schema is newer than this build understands.
    SchemaTooNew {
        /// The database file.
        path: String,
        /// `PRAGMA user_version` in the file.
        found: i64,
        /// The newest version this build knows.
        known: i64,
    },
    /// A statement failed.
    Sql {
        /// The database file.
        path: String,
        /// What was being done.
        action: &'static str,
        /// SQLite's reason.
        source: rusqlite::Error,
    },
    /// The value is already bound to another account (or address to another node).
    Duplicate {
        /// Which kind of value ("e-mail", "node name", ...).
        what: &'static str,
        /// The value.
        value: String,
    },
    /// No account has this e-mail or node name.
    NoSuchAccount(String),
    /// An argument is not acceptable (a malformed e-mail, an empty password, ...).
    Invalid {
        /// Which argument.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// Hashing a password failed (or the OS random source did).
    Hash(String),
    /// A stored row does not decode.
    Corrupt {
        /// The database file.
        path: String,
        /// Which row.
        row: String,
        /// What is wrong with it.
        detail: String,
    },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Open { path, action, source } => write!(f, "database {path}: cannot {action}: {source}"),
            StoreError::File { path, action, source } => write!(f, "database {path}: cannot {action}: {source}"),
            StoreError::Unsupported { path, detail } => write!(f, "database {path}: {detail}"),
            StoreError::SchemaTooNew { path, found, known } => write!(
                f,
                "database {path}: schema version {found} is newer than this build's {known}; use a newer build"
            ),
            StoreError::Sql { path, action, source } => write!(f, "database {path}: {action} failed: {source}"),
            StoreError::Duplicate { what, value } => write!(f, "{what} {value:?} is already taken"),
            StoreError::NoSuchAccount(a) => write!(f, "no account {a:?}"),
            StoreError::Invalid { what, detail } => write!(f, "bad {what}: {detail}"),
            StoreError::Hash(e) => write!(f, "password hashing failed: {e}"),
            StoreError::Corrupt { path, row, detail } => write!(f, "database {path}: {row} is corrupt: {detail}"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Open { source, .. } | StoreError::Sql { source, .. } => Some(source),
            StoreError::File { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Names the in-memory databases in messages.
const IN_MEMORY: &str = ":memory:";

fn sql_err<'a>(path: &'a str, action: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError + 'a {
    move |source| StoreError::Sql { path: path.to_owned(), action, source }
}

/// Which UNIQUE column (named as in SQLite's message, `table.column`) a failed write
/// violated, mapped to a [`StoreError::Duplicate`]; any other error is an SQL error.
fn unique_err(
    path: &str,
    action: &'static str,
    err: rusqlite::Error,
    columns: &[(&str, &'static str, &str)],
) -> StoreError {
    if let rusqlite::Error::SqliteFailure(e, Some(msg)) = &err {
        if e.code == ErrorCode::ConstraintViolation {
            if let Some((_, what, value)) = columns.iter().find(|(col, _, _)| msg.contains(col)) {
                return StoreError::Duplicate { what, value: (*value).to_owned() };
            }
        }
    }
    StoreError::Sql { path: path.to_owned(), action, source: err }
}

fn unix_now_ms() -> u64 {
    // A clock before 1970 is a broken host; 0 keeps the timestamps merely wrong.
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Times are clamped to `i64::MAX` ms (292 million years: still "far future") so that SQL
/// can compare them.
fn time_to_sql(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// Creates the file with mode 0600 if it is missing, and tightens an existing file that
/// others could read (it holds password hashes or keys). SQLite gives its `-wal` and
/// `-shm` files the main file's mode.
fn prepare_file(path: &Path) -> Result<()> {
    let name = path.display().to_string();
    let file_err = |action| {
        let name = name.clone();
        move |source| StoreError::File { path: name, action, source }
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let file = opts.open(path).map_err(file_err("create or open the file"))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = file.metadata().map_err(file_err("read the file's mode"))?;
        if meta.permissions().mode() & 0o077 != 0 {
            log::warn!("database {}: others could read it; setting mode 0600", path.display());
            file.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(file_err("set mode 0600"))?;
        }
    }
    drop(file);
    Ok(())
}

/// Opens (creating if needed) and configures a database, then brings its schema to the
/// newest of `migrations` (migration `i` takes version `i` to `i + 1`).
fn open_db(path: Option<&Path>, migrations: &[&str]) -> Result<(Connection, String)> {
    let name = path.map_or_else(|| IN_MEMORY.to_owned(), |p| p.display().to_string());
    let open_err = |action| {
        let name = name.clone();
        move |source| StoreError::Open { path: name, action, source }
    };
    let mut conn = match path {
        Some(p) => {
            prepare_file(p)?;
            Connection::open(p).map_err(open_err("open"))?
        }
        None => Connection::open_in_memory().map_err(open_err("open"))?,
    };
    // An administrator's command may hold the file briefly while the daemon runs.
    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(open_err("set the busy timeout"))?;
    if path.is_some() {
        let mode: String =
            conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(open_err("enable WAL mode"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Unsupported {
                path: name,
                detail: format!("journal mode stays {mode:?}, not WAL"),
            });
        }
    }
    // FULL: a commit (a counter reservation in particular) is durable before we go on.
    conn.pragma_update(None, "synchronous", 2).map_err(open_err("set synchronous = FULL"))?;
    // Deleted and replaced rows (old keys, old hashes) are overwritten, not left in free pages.
    conn.pragma_update(None, "secure_delete", 1).map_err(open_err("enable secure_delete"))?;
    migrate(&mut conn, &name, migrations)?;
    Ok((conn, name))
}

fn migrate(conn: &mut Connection, name: &str, migrations: &[&str]) -> Result<()> {
    let known = i64::try_from(migrations.len()).unwrap_or(i64::MAX);
    let read = |conn: &Connection| -> Result<i64> {
        conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(sql_err(name, "read the schema version"))
    };
    if read(conn)? == known {
        return Ok(());
    }
    // IMMEDIATE: two processes creating the same new file do not both run the migrations.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql_err(name, "begin the schema update"))?;
    let found = read(&tx)?;
    if found > known {
        return Err(StoreError::SchemaTooNew { path: name.to_owned(), found, known });
    }
    let from = usize::try_from(found).map_err(|_| StoreError::Corrupt {
        path: name.to_owned(),
        row: "the schema version".to_owned(),
        detail: format!("negative version {found}"),
    })?;
    for sql in migrations.iter().skip(from) {
        tx.execute_batch(sql).map_err(sql_err(name, "create the schema"))?;
    }
    tx.pragma_update(None, "user_version", known).map_err(sql_err(name, "write the schema version"))?;
    tx.commit().map_err(sql_err(name, "commit the schema"))
}
