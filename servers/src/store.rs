//! The embedded databases: the AS's accounts and the DC's node state, one SQLite file each.
//!
//! Contract:
//! - [`AccountStore`] holds accounts and implements the AS engine's [`Accounts`] trait.
//!   Passwords are kept only as argon2id PHC strings and checked with argon2's
//!   constant-time verification; an unknown e-mail costs the same hash as a known one. A
//!   disabled account answers [`Verdict::Disabled`] only to a credential that was right,
//!   so the verdict never tells a guesser that an account exists.
//! - [`DcStore`] holds virtual address assignments and [`NodeSnapshot`]s, so that a DC
//!   restart neither renumbers nodes nor makes them all log in again. Node rows hold
//!   K_ntmdc: the file is created with mode 0600, SQLite's `secure_delete` overwrites
//!   replaced rows, and key bytes are never logged (the key travels as [`KNtmDc`], which
//!   zeroizes itself and prints redacted).
//! - Sealing counters are saved *reserved ahead* ([`COUNTER_RESERVE`]): see
//!   [`DcStore::save_node`] and [`needs_refresh`]. A restored channel resumes above every
//!   counter it can have used before a crash, so no nonce is ever reused.
//!
//! Both files use WAL mode, `synchronous = FULL` (a committed counter reservation
//! survives power loss, not just a crash) and `PRAGMA user_version` for the schema
//! version; a file from a newer build is refused rather than misread. Errors are
//! [`StoreError`]s with a one-line message naming the file and what failed; nothing here
//! panics on I/O or on stored data.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use core::fmt;
use core::net::SocketAddr;
use ntm_proto::crypto::pk::Attestation;
use ntm_proto::engine::account::{Account, Accounts, Verdict};
use ntm_proto::engine::oidc::IdClaims;
use ntm_proto::engine::{PeerIdentity, Role};
use ntm_proto::keys::{KNtmDc, KNtmNs};
use ntm_proto::wire::registration::KeepaliveMethod;
use ntm_proto::wire::{Codec, Fqdn, KeyId, VirtualAddrs};
use rand_core::{OsRng, RngCore};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};
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

/// SQLite integers are signed; times and counters are unsigned. Counters are stored as
/// the same 64 bits (exact, and never compared in SQL).
fn u64_to_sql(v: u64) -> i64 {
    i64::from_be_bytes(v.to_be_bytes())
}

fn u64_from_sql(v: i64) -> u64 {
    u64::from_be_bytes(v.to_be_bytes())
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

// ---------------------------------------------------------------------------------------
// AS: accounts
// ---------------------------------------------------------------------------------------

/// The account schema, one migration per version.
const ACCOUNT_MIGRATIONS: &[&str] = &["
    CREATE TABLE accounts (
        id            INTEGER PRIMARY KEY,
        email         TEXT NOT NULL UNIQUE,          -- lowercase
        password_hash TEXT,                          -- argon2id PHC string; NULL: no password login
        fqdn          TEXT NOT NULL UNIQUE,          -- the node name bound to the account
        device_name   TEXT UNIQUE,                   -- the device certificate's DNS name
        oidc_issuer   TEXT,
        oidc_subject  TEXT,
        disabled      INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
        created_at    INTEGER NOT NULL,              -- UNIX seconds
        updated_at    INTEGER NOT NULL,              -- UNIX seconds
        UNIQUE (oidc_issuer, oidc_subject),
        CHECK ((oidc_issuer IS NULL) = (oidc_subject IS NULL))
    ) STRICT;
"];

/// An account's row id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AccountId(pub i64);

/// An account bound to an OpenID Connect identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OidcBinding {
    /// The provider (`iss`).
    pub issuer: String,
    /// The account at the provider (`sub`).
    pub subject: String,
}

/// One account as listed: everything but the password hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountRow {
    /// Row id.
    pub id: AccountId,
    /// Lowercase e-mail.
    pub email: String,
    /// True if the account can log in with a password.
    pub has_password: bool,
    /// The node name bound to the account.
    pub fqdn: Fqdn,
    /// The device certificate name that logs in as this account.
    pub device: Option<Fqdn>,
    /// The OpenID Connect identity that logs in as this account.
    pub oidc: Option<OidcBinding>,
    /// Disabled accounts cannot log in.
    pub disabled: bool,
    /// Creation time, UNIX seconds.
    pub created: u64,
    /// Last change, UNIX seconds.
    pub updated: u64,
}

/// How expensive password hashes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashCost {
    /// argon2's recommended argon2id parameters (19 MiB, 2 passes, 1 lane): production.
    Default,
    /// The cheapest parameters argon2 accepts (8 KiB, 1 pass): tests only, since such
    /// hashes are cheap to brute-force.
    Cheap,
}

impl HashCost {
    fn params(self) -> Result<Params> {
        match self {
            HashCost::Default => Ok(Params::DEFAULT),
            HashCost::Cheap => Params::new(Params::MIN_M_COST, 1, 1, None).map_err(|e| StoreError::Hash(e.to_string())),
        }
    }
}

/// The AS's account database.
pub struct AccountStore {
    conn: Connection,
    path: String,
    cost: HashCost,
    argon2: Argon2<'static>,
    /// Verified against when the e-mail is unknown (or has no password), so that such a
    /// refusal takes as long as a wrong password.
    dummy_hash: String,
}

impl fmt::Debug for AccountStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountStore").field("path", &self.path).field("cost", &self.cost).finish_non_exhaustive()
    }
}

/// What a credential check needs of a row.
struct Found {
    id: i64,
    fqdn: String,
    hash: Option<String>,
    disabled: bool,
    oidc_bound: bool,
}

const FOUND_COLUMNS: &str = "id, fqdn, password_hash, disabled, oidc_issuer IS NOT NULL";

fn found_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Found> {
    Ok(Found { id: r.get(0)?, fqdn: r.get(1)?, hash: r.get(2)?, disabled: r.get(3)?, oidc_bound: r.get(4)? })
}

const ROW_COLUMNS: &str = "id, email, password_hash IS NOT NULL, fqdn, device_name, oidc_issuer, oidc_subject, \
                           disabled, created_at, updated_at";

type RawRow = (i64, String, bool, String, Option<String>, Option<String>, Option<String>, bool, i64, i64);

fn raw_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?, r.get(9)?))
}

/// Lowercases an e-mail and checks it is plausibly one: `local@domain`, no spaces or
/// control characters, at most 254 bytes (RFC 5321).
fn normalize_email(email: &str) -> Result<String> {
    let bad = |detail: &str| StoreError::Invalid { what: "e-mail", detail: format!("{email:?}: {detail}") };
    if email.is_empty() || email.len() > 254 {
        return Err(bad("must be 1 to 254 bytes"));
    }
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("contains spaces or control characters"));
    }
    match email.rsplit_once('@') {
        Some((local, domain)) if !local.is_empty() && !domain.is_empty() => Ok(email.to_lowercase()),
        _ => Err(bad("not of the form name@domain")),
    }
}

impl AccountStore {
    /// Opens (or creates, mode 0600) the account database at `path`, with production
    /// hash parameters.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, HashCost::Default)
    }

    /// Opens with the given hash cost (for new hashes; stored hashes carry their own
    /// parameters and verify whatever the current cost).
    pub fn open_with(path: impl AsRef<Path>, cost: HashCost) -> Result<Self> {
        let (conn, path) = open_db(Some(path.as_ref()), ACCOUNT_MIGRATIONS)?;
        Self::with_conn(conn, path, cost)
    }

    /// A fresh database in memory (tests).
    pub fn open_in_memory(cost: HashCost) -> Result<Self> {
        let (conn, path) = open_db(None, ACCOUNT_MIGRATIONS)?;
        Self::with_conn(conn, path, cost)
    }

    fn with_conn(conn: Connection, path: String, cost: HashCost) -> Result<Self> {
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, cost.params()?);
        let dummy_hash = hash_password(&argon2, b"NTMobile dummy password")?;
        Ok(AccountStore { conn, path, cost, argon2, dummy_hash })
    }

    /// The database file (":memory:" for in-memory stores).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Adds an account. `password` None makes a device- or OIDC-only account. Refuses an
    /// e-mail or node name already in use.
    pub fn add_account(&mut self, email: &str, password: Option<&[u8]>, fqdn: &Fqdn) -> Result<AccountId> {
        let email = normalize_email(email)?;
        let hash = password.map(|p| self.hash(p)).transpose()?;
        let now = unix_now_ms() / 1000;
        self.conn
            .execute(
                "INSERT INTO accounts (email, password_hash, fqdn, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)",
                params![email, hash, fqdn.as_str(), time_to_sql(now)],
            )
            .map_err(|e| {
                unique_err(
                    &self.path,
                    "adding the account",
                    e,
                    &[("accounts.email", "e-mail", &email), ("accounts.fqdn", "node name", fqdn.as_str())],
                )
            })?;
        Ok(AccountId(self.conn.last_insert_rowid()))
    }

    fn hash(&self, password: &[u8]) -> Result<String> {
        if password.is_empty() {
            return Err(StoreError::Invalid { what: "password", detail: "empty".to_owned() });
        }
        hash_password(&self.argon2, password)
    }

    /// Finds an account by e-mail (anything with an `@`) or else by node name.
    fn resolve(&self, account: &str) -> Result<i64> {
        let found = if account.contains('@') {
            self.conn
                .query_row("SELECT id FROM accounts WHERE email = ?1", [account.to_lowercase()], |r| r.get(0))
                .optional()
        } else {
            let Ok(fqdn) = Fqdn::new(account) else { return Err(StoreError::NoSuchAccount(account.to_owned())) };
            self.conn.query_row("SELECT id FROM accounts WHERE fqdn = ?1", [fqdn.as_str()], |r| r.get(0)).optional()
        };
        found
            .map_err(sql_err(&self.path, "looking up the account"))?
            .ok_or_else(|| StoreError::NoSuchAccount(account.to_owned()))
    }

    /// Runs one UPDATE on the account (`?1` is its id, `?2` the time), mapping UNIQUE
    /// failures through `columns`.
    fn update(
        &mut self,
        account: &str,
        action: &'static str,
        sql: &str,
        extra: &[&dyn rusqlite::ToSql],
        columns: &[(&str, &'static str, &str)],
    ) -> Result<()> {
        let id = self.resolve(account)?;
        let now = time_to_sql(unix_now_ms() / 1000);
        let mut args: Vec<&dyn rusqlite::ToSql> = vec![&id, &now];
        args.extend_from_slice(extra);
        let n = self.conn.execute(sql, args.as_slice()).map_err(|e| unique_err(&self.path, action, e, columns))?;
        if n == 0 {
            return Err(StoreError::NoSuchAccount(account.to_owned()));
        }
        Ok(())
    }

    /// Sets (Some) or removes (None) the account's password. `account` is an e-mail or
    /// a node name.
    pub fn set_password(&mut self, account: &str, password: Option<&[u8]>) -> Result<()> {
        let hash = password.map(|p| self.hash(p)).transpose()?;
        let sql = "UPDATE accounts SET password_hash = ?3, updated_at = ?2 WHERE id = ?1";
        self.update(account, "setting the password", sql, &[&hash], &[])
    }

    /// Lets the device certificate named `device` log in as the account.
    pub fn bind_device(&mut self, account: &str, device: &Fqdn) -> Result<()> {
        let sql = "UPDATE accounts SET device_name = ?3, updated_at = ?2 WHERE id = ?1";
        let cols = [("accounts.device_name", "device", device.as_str())];
        self.update(account, "binding the device", sql, &[&device.as_str()], &cols)
    }

    /// Removes the account's device binding.
    pub fn unbind_device(&mut self, account: &str) -> Result<()> {
        let sql = "UPDATE accounts SET device_name = NULL, updated_at = ?2 WHERE id = ?1";
        self.update(account, "unbinding the device", sql, &[], &[])
    }

    /// Lets the OpenID Connect identity (`iss`, `sub`) log in as the account.
    pub fn bind_oidc(&mut self, account: &str, issuer: &str, subject: &str) -> Result<()> {
        if issuer.is_empty() || subject.is_empty() {
            return Err(StoreError::Invalid { what: "OIDC identity", detail: "issuer and subject must be set".into() });
        }
        let sql = "UPDATE accounts SET oidc_issuer = ?3, oidc_subject = ?4, updated_at = ?2 WHERE id = ?1";
        let value = format!("{issuer} {subject}");
        let cols = [("accounts.oidc_issuer", "OIDC identity", value.as_str())];
        self.update(account, "binding the OIDC identity", sql, &[&issuer, &subject], &cols)
    }

    /// Removes the account's OpenID Connect binding (its verified e-mail may bind it
    /// again at the next login).
    pub fn unbind_oidc(&mut self, account: &str) -> Result<()> {
        let sql = "UPDATE accounts SET oidc_issuer = NULL, oidc_subject = NULL, updated_at = ?2 WHERE id = ?1";
        self.update(account, "unbinding the OIDC identity", sql, &[], &[])
    }

    /// Binds the account to another node name.
    pub fn bind_fqdn(&mut self, account: &str, fqdn: &Fqdn) -> Result<()> {
        let sql = "UPDATE accounts SET fqdn = ?3, updated_at = ?2 WHERE id = ?1";
        let cols = [("accounts.fqdn", "node name", fqdn.as_str())];
        self.update(account, "binding the node name", sql, &[&fqdn.as_str()], &cols)
    }

    /// Disables the account: its credentials stop working.
    pub fn disable(&mut self, account: &str) -> Result<()> {
        let sql = "UPDATE accounts SET disabled = 1, updated_at = ?2 WHERE id = ?1";
        self.update(account, "disabling the account", sql, &[], &[])
    }

    /// Enables a disabled account.
    pub fn enable(&mut self, account: &str) -> Result<()> {
        let sql = "UPDATE accounts SET disabled = 0, updated_at = ?2 WHERE id = ?1";
        self.update(account, "enabling the account", sql, &[], &[])
    }

    /// Deletes the account.
    pub fn remove(&mut self, account: &str) -> Result<()> {
        let id = self.resolve(account)?;
        self.conn
            .execute("DELETE FROM accounts WHERE id = ?1", [id])
            .map_err(sql_err(&self.path, "removing the account"))?;
        Ok(())
    }

    /// Every account, by e-mail (no hashes).
    pub fn list(&self) -> Result<Vec<AccountRow>> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {ROW_COLUMNS} FROM accounts ORDER BY email"))
            .map_err(sql_err(&self.path, "listing accounts"))?;
        let raws = stmt
            .query_map([], raw_from_row)
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(sql_err(&self.path, "listing accounts"))?;
        raws.into_iter().map(|r| self.to_row(r)).collect()
    }

    /// The account with this e-mail or node name.
    pub fn get(&self, account: &str) -> Result<Option<AccountRow>> {
        let id = match self.resolve(account) {
            Ok(id) => id,
            Err(StoreError::NoSuchAccount(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let raw = self
            .conn
            .query_row(&format!("SELECT {ROW_COLUMNS} FROM accounts WHERE id = ?1"), [id], raw_from_row)
            .optional()
            .map_err(sql_err(&self.path, "reading the account"))?;
        raw.map(|r| self.to_row(r)).transpose()
    }

    fn to_row(&self, raw: RawRow) -> Result<AccountRow> {
        let (id, email, has_password, fqdn, device, issuer, subject, disabled, created, updated) = raw;
        let corrupt =
            |detail: String| StoreError::Corrupt { path: self.path.clone(), row: format!("account {id}"), detail };
        let fqdn = Fqdn::new(&fqdn).map_err(|e| corrupt(format!("node name: {e}")))?;
        let device = device.map(|d| Fqdn::new(&d)).transpose().map_err(|e| corrupt(format!("device name: {e}")))?;
        let oidc = match (issuer, subject) {
            (Some(issuer), Some(subject)) => Some(OidcBinding { issuer, subject }),
            _ => None,
        };
        Ok(AccountRow {
            id: AccountId(id),
            email,
            has_password,
            fqdn,
            device,
            oidc,
            disabled,
            created: u64::try_from(created).unwrap_or(0),
            updated: u64::try_from(updated).unwrap_or(0),
        })
    }

    fn find(&self, condition: &str, value: &str) -> Option<Found> {
        let sql = format!("SELECT {FOUND_COLUMNS} FROM accounts WHERE {condition}");
        match self.conn.query_row(&sql, [value], found_from_row).optional() {
            Ok(f) => f,
            Err(e) => {
                // The trait has no error path: a broken database refuses everyone.
                log::error!("{}", StoreError::Sql { path: self.path.clone(), action: "looking up a login", source: e });
                None
            }
        }
    }

    /// Constant-time check by argon2 (the hash's own parameters apply).
    fn verify(&self, password: &[u8], hash: &str) -> bool {
        match PasswordHash::new(hash) {
            Ok(parsed) => self.argon2.verify_password(password, &parsed).is_ok(),
            Err(_) => {
                log::error!("database {}: a stored password hash does not parse", self.path);
                false
            }
        }
    }

    /// The verdict for an account whose credential was right.
    fn verdict(&self, found: &Found) -> Verdict {
        if found.disabled {
            return Verdict::Disabled;
        }
        match Fqdn::new(&found.fqdn) {
            Ok(fqdn) => Verdict::Account(Account { fqdn }),
            Err(e) => {
                log::error!("database {}: account {} has a bad node name: {e}", self.path, found.id);
                Verdict::BadCredential
            }
        }
    }
}

fn hash_password(argon2: &Argon2<'_>, password: &[u8]) -> Result<String> {
    let mut salt = [0u8; 16];
    OsRng.try_fill_bytes(&mut salt).map_err(|e| StoreError::Hash(format!("no randomness for the salt: {e}")))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| StoreError::Hash(e.to_string()))?;
    argon2.hash_password(password, &salt).map(|h| h.to_string()).map_err(|e| StoreError::Hash(e.to_string()))
}

impl Accounts for AccountStore {
    fn password(&mut self, email: &str, password: &[u8]) -> Verdict {
        let found = self.find("email = ?1", &email.to_lowercase());
        match found {
            Some(f) => match f.hash.as_deref() {
                Some(hash) if self.verify(password, hash) => self.verdict(&f),
                Some(_) => Verdict::BadCredential,
                None => {
                    // No password on this account: spend the same time as a wrong one.
                    let _ = self.verify(password, &self.dummy_hash);
                    Verdict::BadCredential
                }
            },
            None => {
                // Unknown e-mail: same cost, so timing does not reveal which e-mails exist.
                let _ = self.verify(password, &self.dummy_hash);
                Verdict::BadCredential
            }
        }
    }

    fn device(&mut self, identity: &PeerIdentity) -> Verdict {
        // Only node certificates log in; a server's certificate naming a node must not.
        if identity.role != Role::Node {
            return Verdict::BadCredential;
        }
        match self.find("device_name = ?1", identity.name.as_str()) {
            Some(f) => self.verdict(&f),
            None => Verdict::BadCredential,
        }
    }

    fn oidc(&mut self, claims: &IdClaims) -> Verdict {
        let sql = format!("SELECT {FOUND_COLUMNS} FROM accounts WHERE oidc_issuer = ?1 AND oidc_subject = ?2");
        let bound = self.conn.query_row(&sql, [&claims.issuer, &claims.subject], found_from_row).optional();
        match bound {
            Ok(Some(f)) => return self.verdict(&f),
            Ok(None) => {}
            Err(e) => {
                log::error!("{}", StoreError::Sql { path: self.path.clone(), action: "looking up a login", source: e });
                return Verdict::BadCredential;
            }
        }
        // Fallback: a verified e-mail names an account with no OIDC identity yet. Only a
        // verified address counts, else anyone could claim any e-mail at their provider.
        let email = match (&claims.email, claims.email_verified) {
            (Some(e), true) => e.to_lowercase(),
            _ => return Verdict::BadCredential,
        };
        let Some(f) = self.find("email = ?1", &email) else { return Verdict::BadCredential };
        if f.oidc_bound {
            // Bound to another identity (a recycled address, or a second provider): only
            // the bound one logs in.
            log::info!("account {}: verified e-mail matches, but another OIDC identity is bound", f.id);
            return Verdict::BadCredential;
        }
        if !f.disabled {
            // Trust on first use: from now on this (issuer, subject) is the account's, and
            // another identity that later shows the same e-mail is refused.
            let now = time_to_sql(unix_now_ms() / 1000);
            let res = self.conn.execute(
                "UPDATE accounts SET oidc_issuer = ?1, oidc_subject = ?2, updated_at = ?3 \
                 WHERE id = ?4 AND oidc_issuer IS NULL",
                params![claims.issuer, claims.subject, now, f.id],
            );
            if let Err(e) = res {
                log::warn!(
                    "{}",
                    StoreError::Sql { path: self.path.clone(), action: "binding the OIDC identity", source: e }
                );
            }
        }
        self.verdict(&f)
    }
}

// ---------------------------------------------------------------------------------------
// DC: virtual addresses and node state
// ---------------------------------------------------------------------------------------

/// The DC schema, one migration per version.
const DC_MIGRATIONS: &[&str] = &["
    CREATE TABLE assignments (
        fqdn TEXT PRIMARY KEY,
        v4   TEXT NOT NULL UNIQUE,
        v6   TEXT NOT NULL UNIQUE
    ) STRICT;
    CREATE TABLE nodes (
        fqdn         TEXT PRIMARY KEY,
        key_id       INTEGER NOT NULL,
        key          BLOB NOT NULL CHECK (length(key) = 16),  -- K_ntmdc: secret
        expires_ms   INTEGER NOT NULL,                        -- UNIX ms
        next_counter INTEGER NOT NULL,                        -- reserved ahead: resume here
        peer_counter INTEGER NOT NULL,                        -- replay floor for the node's counters
        attestation  BLOB,                                    -- wire encoding
        v4           TEXT,
        v6           TEXT,
        endpoints    TEXT NOT NULL,                           -- JSON [{addr, nat}]
        local_addrs  TEXT NOT NULL,                           -- JSON [addr]
        keepalive    BLOB NOT NULL,                           -- wire encoding
        saved_ms     INTEGER NOT NULL,
        CHECK ((v4 IS NULL) = (v6 IS NULL))
    ) STRICT;
    CREATE TABLE node_ns (
        fqdn       TEXT PRIMARY KEY,                          -- a row of nodes
        ns         TEXT NOT NULL,                             -- the NS's name
        key_id     INTEGER NOT NULL,
        key        BLOB NOT NULL CHECK (length(key) = 16),    -- K_ntmns: secret
        expires_ms INTEGER NOT NULL
    ) STRICT;
"];

/// How far ahead of the channel's next counter [`DcStore::save_node`] reserves. A DC that
/// crashes resumes at the saved value, skipping at most this many counters (of 2^64).
pub const COUNTER_RESERVE: u64 = 1 << 20;

/// The counter [`DcStore::save_node`] stores for a channel whose next counter is `next`.
pub fn reserved_counter(next: u64) -> u64 {
    // Saturating: a channel resumed at u64::MAX refuses to seal, so the node logs in
    // again; nothing is reused.
    next.saturating_add(COUNTER_RESERVE)
}

/// True when the node must be saved again before its channel seals much more: the
/// channel has used half of the reservation `saved_reserved` (the value `save_node`
/// returned, or `next_counter` of the loaded snapshot). Right after a restore it is
/// true, since the resumed channel has no reservation of its own yet.
///
/// Check it after every engine call that may seal for the node, and save before
/// sending what the call produced: half a reservation of slack means no single step can
/// seal past the stored value.
pub fn needs_refresh(saved_reserved: u64, current_next: u64) -> bool {
    current_next >= saved_reserved.saturating_sub(COUNTER_RESERVE / 2)
}

/// What a DC must keep of a node so that a restart does not force it to log in again.
///
/// The same fields the DC engine's node record has; plain data, so the driver can move
/// it between the engine and the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSnapshot {
    /// The node.
    pub fqdn: Fqdn,
    /// The id of its K_ntmdc.
    pub key_id: KeyId,
    /// K_ntmdc (zeroized on drop, redacted in `Debug`).
    pub key: KNtmDc,
    /// When K_ntmdc expires, UNIX ms.
    pub expires_ms: u64,
    /// The DC's sealing counter. Given to `save_node`: the channel's next counter. From
    /// `load_nodes`: the counter to resume at, already reserved ahead.
    pub next_counter: u64,
    /// One more than the newest counter the DC accepted from the node (its replay
    /// window's top); a restored channel must refuse node counters below it.
    pub peer_counter: u64,
    /// The AS's attestation of the node's public key (public-key mode).
    pub attestation: Option<Attestation>,
    /// Its virtual addresses, once registered.
    pub virtual_addrs: Option<VirtualAddrs>,
    /// Where it was seen, at most one per address family: (observed address, behind NAT).
    pub endpoints: Vec<(SocketAddr, bool)>,
    /// The node's own addresses from its last registration.
    pub local_addrs: Vec<SocketAddr>,
    /// How the DC reaches it.
    pub keepalive: KeepaliveMethod,
    /// Its NS and K_ntmns, if it keeps alive through one.
    pub ns: Option<NsSnapshot>,
}

/// A node's NS binding: which NS holds its K_ntmns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NsSnapshot {
    /// The NS's name.
    pub ns: Fqdn,
    /// The id of K_ntmns.
    pub key_id: KeyId,
    /// K_ntmns (zeroized on drop, redacted in `Debug`).
    pub key: KNtmNs,
    /// When it expires, UNIX ms.
    pub expires_ms: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct EndpointJson {
    addr: SocketAddr,
    nat: bool,
}

/// The DC's database.
pub struct DcStore {
    conn: Connection,
    path: String,
}

impl fmt::Debug for DcStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DcStore").field("path", &self.path).finish_non_exhaustive()
    }
}

type NodeColumns =
    (String, i64, i64, i64, i64, Option<Vec<u8>>, Option<String>, Option<String>, String, String, Vec<u8>);

impl DcStore {
    /// Opens (or creates, mode 0600) the DC database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let (conn, path) = open_db(Some(path.as_ref()), DC_MIGRATIONS)?;
        Ok(DcStore { conn, path })
    }

    /// A fresh database in memory (tests).
    pub fn open_in_memory() -> Result<Self> {
        let (conn, path) = open_db(None, DC_MIGRATIONS)?;
        Ok(DcStore { conn, path })
    }

    /// The database file (":memory:" for in-memory stores).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// How long a write waits for another connection's lock (5 s unless set; tests that
    /// hold the lock to make writes fail shorten it).
    pub fn set_busy_timeout(&self, wait: std::time::Duration) -> Result<()> {
        self.conn.busy_timeout(wait).map_err(sql_err(&self.path, "setting the busy timeout"))
    }

    /// Records (or moves) a node's virtual addresses. Refuses addresses stored for
    /// another node.
    pub fn save_assignment(&mut self, fqdn: &Fqdn, addrs: VirtualAddrs) -> Result<()> {
        self.save_assignments(&[(fqdn.clone(), addrs)])
    }

    /// Records many assignments in one transaction.
    pub fn save_assignments(&mut self, assignments: &[(Fqdn, VirtualAddrs)]) -> Result<()> {
        self.save_registrations(assignments, &[]).map(drop)
    }

    /// Records assignments and node states in one transaction (one fsync for a whole turn
    /// of the DC's loop); returns each node's stored counter as [`DcStore::save_node`]
    /// does. All or nothing: on an error nothing of it is stored.
    pub fn save_registrations(
        &mut self,
        assignments: &[(Fqdn, VirtualAddrs)],
        nodes: &[NodeSnapshot],
    ) -> Result<Vec<u64>> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(sql_err(&path, "saving registrations"))?;
        for (fqdn, a) in assignments {
            insert_assignment(&tx, &path, fqdn, a)?;
        }
        let reserved = nodes.iter().map(|n| insert_node(&tx, &path, n)).collect::<Result<Vec<_>>>()?;
        tx.commit().map_err(sql_err(&path, "saving registrations"))?;
        Ok(reserved)
    }

    /// Every stored assignment, to hand to `Dc::restore_assignment` at start-up. A row that
    /// does not parse is an error: skipping it could give its addresses to another node.
    pub fn load_assignments(&self) -> Result<Vec<(Fqdn, VirtualAddrs)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT fqdn, v4, v6 FROM assignments ORDER BY fqdn")
            .map_err(sql_err(&self.path, "loading assignments"))?;
        let rows: Vec<(String, String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .and_then(|rows| rows.collect())
            .map_err(sql_err(&self.path, "loading assignments"))?;
        rows.into_iter()
            .map(|(fqdn, v4, v6)| {
                let corrupt = |detail: &str| StoreError::Corrupt {
                    path: self.path.clone(),
                    row: format!("assignment of {fqdn:?}"),
                    detail: detail.to_owned(),
                };
                let name = Fqdn::new(&fqdn).map_err(|_| corrupt("bad node name"))?;
                let v4 = v4.parse().map_err(|_| corrupt("bad IPv4 address"))?;
                let v6 = v6.parse().map_err(|_| corrupt("bad IPv6 address"))?;
                Ok((name, VirtualAddrs { v4, v6 }))
            })
            .collect()
    }

    /// Saves a node's state, replacing what was stored for it, and returns the counter
    /// stored: `reserved_counter(node.next_counter)`. Keep it and call [`needs_refresh`]
    /// with it; the channel must not seal at or above it before the next save.
    pub fn save_node(&mut self, node: &NodeSnapshot) -> Result<u64> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(sql_err(&path, "saving node state"))?;
        let reserved = insert_node(&tx, &path, node)?;
        tx.commit().map_err(sql_err(&path, "saving node state"))?;
        Ok(reserved)
    }

    /// Saves many nodes in one transaction (one fsync); returns each stored counter.
    pub fn save_nodes(&mut self, nodes: &[NodeSnapshot]) -> Result<Vec<u64>> {
        self.save_registrations(&[], nodes)
    }

    /// Forgets a node's key state (its assignment stays). True if there was a row.
    pub fn remove_node(&mut self, fqdn: &Fqdn) -> Result<bool> {
        self.conn
            .execute("DELETE FROM node_ns WHERE fqdn = ?1", [fqdn.as_str()])
            .map_err(sql_err(&self.path, "removing node state"))?;
        let n = self
            .conn
            .execute("DELETE FROM nodes WHERE fqdn = ?1", [fqdn.as_str()])
            .map_err(sql_err(&self.path, "removing node state"))?;
        Ok(n > 0)
    }

    /// Deletes node rows whose key expired by `now_ms` (UNIX ms); returns how many.
    pub fn prune_expired(&mut self, now_ms: u64) -> Result<usize> {
        self.conn
            .execute(
                "DELETE FROM node_ns WHERE fqdn IN (SELECT fqdn FROM nodes WHERE expires_ms <= ?1)",
                [time_to_sql(now_ms)],
            )
            .map_err(sql_err(&self.path, "pruning expired node state"))?;
        self.conn
            .execute("DELETE FROM nodes WHERE expires_ms <= ?1", [time_to_sql(now_ms)])
            .map_err(sql_err(&self.path, "pruning expired node state"))
    }

    /// Every stored node, with `next_counter` the value to resume sealing at. A row that
    /// does not decode is skipped with a warning: that node just logs in again (with a
    /// new key, so its old counters cannot matter).
    pub fn load_nodes(&self) -> Result<Vec<NodeSnapshot>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT fqdn, key_id, expires_ms, next_counter, peer_counter, attestation, v4, v6, \
                 endpoints, local_addrs, keepalive, key FROM nodes ORDER BY fqdn",
            )
            .map_err(sql_err(&self.path, "loading node state"))?;
        let mut rows = stmt.query([]).map_err(sql_err(&self.path, "loading node state"))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(sql_err(&self.path, "loading node state"))? {
            let cols = node_columns(row).map_err(sql_err(&self.path, "loading node state"))?;
            // The key is decoded straight from SQLite's buffer: no copy of ours to wipe.
            let key = match row.get_ref(11).and_then(|v| v.as_blob().map_err(Into::into)) {
                Ok(blob) => <KNtmDc as Codec>::from_bytes(blob).map_err(|_| "key is not 16 bytes"),
                Err(_) => Err("key is not a blob"),
            };
            let name = cols.0.clone();
            match key.and_then(|key| decode_node(cols, key)) {
                Ok(n) => out.push(n),
                Err(detail) => log::warn!("database {}: node {name:?} skipped: {detail}", self.path),
            }
        }
        drop(rows);
        drop(stmt);
        let mut stmt = self
            .conn
            .prepare("SELECT fqdn, ns, key_id, key, expires_ms FROM node_ns")
            .map_err(sql_err(&self.path, "loading node state"))?;
        let mut rows = stmt.query([]).map_err(sql_err(&self.path, "loading node state"))?;
        while let Some(row) = rows.next().map_err(sql_err(&self.path, "loading node state"))? {
            let fqdn: String = row.get(0).map_err(sql_err(&self.path, "loading node state"))?;
            let decoded = (|| {
                let ns: String = row.get(1).map_err(|_| "bad NS name")?;
                let key_id: i64 = row.get(2).map_err(|_| "bad NS key id")?;
                let key =
                    row.get_ref(3).and_then(|v| v.as_blob().map_err(Into::into)).map_err(|_| "NS key is not a blob")?;
                let expires: i64 = row.get(4).map_err(|_| "bad NS key expiry")?;
                decode_ns(ns, key_id, key, expires)
            })();
            match (decoded, out.iter_mut().find(|n| n.fqdn.as_str() == fqdn)) {
                (Ok(ns), Some(node)) => node.ns = Some(ns),
                (Err(detail), _) => log::warn!("database {}: NS binding of {fqdn:?} skipped: {detail}", self.path),
                (Ok(_), None) => {}
            }
        }
        Ok(out)
    }
}

fn node_columns(r: &rusqlite::Row<'_>) -> rusqlite::Result<NodeColumns> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
    ))
}

fn insert_assignment(tx: &rusqlite::Transaction<'_>, path: &str, fqdn: &Fqdn, a: &VirtualAddrs) -> Result<()> {
    let (v4, v6) = (a.v4.to_string(), a.v6.to_string());
    tx.execute(
        "INSERT INTO assignments (fqdn, v4, v6) VALUES (?1, ?2, ?3) \
         ON CONFLICT (fqdn) DO UPDATE SET v4 = excluded.v4, v6 = excluded.v6",
        params![fqdn.as_str(), v4, v6],
    )
    .map_err(|e| {
        unique_err(
            path,
            "saving an assignment",
            e,
            &[("assignments.v4", "virtual address", &v4), ("assignments.v6", "virtual address", &v6)],
        )
    })
    .map(drop)
}

/// Also records the node's assignment in the same transaction: a node row never holds
/// addresses the assignments table does not (the row goes when the key expires, the
/// assignment must stay, or the addresses could go to another node).
fn insert_node(tx: &rusqlite::Transaction<'_>, path: &str, node: &NodeSnapshot) -> Result<u64> {
    if let Some(a) = &node.virtual_addrs {
        insert_assignment(tx, path, &node.fqdn, a)?;
    }
    let reserved = reserved_counter(node.next_counter);
    let invalid = |detail: String| StoreError::Invalid { what: "node snapshot", detail };
    let endpoints: Vec<EndpointJson> = node.endpoints.iter().map(|&(addr, nat)| EndpointJson { addr, nat }).collect();
    let endpoints = serde_json::to_string(&endpoints).map_err(|e| invalid(format!("{}: endpoints: {e}", node.fqdn)))?;
    let local_addrs = serde_json::to_string(&node.local_addrs)
        .map_err(|e| invalid(format!("{}: local addresses: {e}", node.fqdn)))?;
    let attestation = node.attestation.as_ref().map(Codec::to_vec);
    let (v4, v6) = match node.virtual_addrs {
        Some(a) => (Some(a.v4.to_string()), Some(a.v6.to_string())),
        None => (None, None),
    };
    tx.execute(
        "INSERT OR REPLACE INTO nodes (fqdn, key_id, key, expires_ms, next_counter, peer_counter, attestation, \
         v4, v6, endpoints, local_addrs, keepalive, saved_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        params![
            node.fqdn.as_str(),
            i64::from(node.key_id.0),
            // Bound by reference: SQLite copies it into its own (secure_delete) pages.
            node.key.expose_secret().as_slice(),
            time_to_sql(node.expires_ms),
            u64_to_sql(reserved),
            u64_to_sql(node.peer_counter),
            attestation,
            v4,
            v6,
            endpoints,
            local_addrs,
            node.keepalive.to_vec(),
            time_to_sql(unix_now_ms()),
        ],
    )
    .map_err(sql_err(path, "saving node state"))?;
    tx.execute("DELETE FROM node_ns WHERE fqdn = ?1", [node.fqdn.as_str()])
        .map_err(sql_err(path, "saving node state"))?;
    if let Some(ns) = &node.ns {
        tx.execute(
            "INSERT INTO node_ns (fqdn, ns, key_id, key, expires_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                node.fqdn.as_str(),
                ns.ns.as_str(),
                i64::from(ns.key_id.0),
                ns.key.expose_secret().as_slice(),
                time_to_sql(ns.expires_ms),
            ],
        )
        .map_err(sql_err(path, "saving node state"))?;
    }
    Ok(reserved)
}

fn decode_node(cols: NodeColumns, key: KNtmDc) -> Result<NodeSnapshot, &'static str> {
    let (fqdn, key_id, expires_ms, next_counter, peer_counter, attestation, v4, v6, endpoints, local_addrs, keepalive) =
        cols;
    let fqdn = Fqdn::new(&fqdn).map_err(|_| "bad node name")?;
    let key_id = KeyId(u32::try_from(key_id).map_err(|_| "key id out of range")?);
    let expires_ms = u64::try_from(expires_ms).map_err(|_| "negative expiry")?;
    let attestation =
        attestation.map(|b| Attestation::from_bytes(&b)).transpose().map_err(|_| "attestation does not decode")?;
    let virtual_addrs = match (v4, v6) {
        (Some(v4), Some(v6)) => Some(VirtualAddrs {
            v4: v4.parse().map_err(|_| "bad virtual IPv4 address")?,
            v6: v6.parse().map_err(|_| "bad virtual IPv6 address")?,
        }),
        _ => None,
    };
    let endpoints: Vec<EndpointJson> = serde_json::from_str(&endpoints).map_err(|_| "endpoints do not decode")?;
    let local_addrs: Vec<SocketAddr> =
        serde_json::from_str(&local_addrs).map_err(|_| "local addresses do not decode")?;
    let keepalive = KeepaliveMethod::from_bytes(&keepalive).map_err(|_| "keepalive method does not decode")?;
    Ok(NodeSnapshot {
        fqdn,
        key_id,
        key,
        expires_ms,
        next_counter: u64_from_sql(next_counter),
        peer_counter: u64_from_sql(peer_counter),
        attestation,
        virtual_addrs,
        endpoints: endpoints.into_iter().map(|e| (e.addr, e.nat)).collect(),
        local_addrs,
        keepalive,
        ns: None,
    })
}

fn decode_ns(ns: String, key_id: i64, key: &[u8], expires_ms: i64) -> Result<NsSnapshot, &'static str> {
    Ok(NsSnapshot {
        ns: Fqdn::new(&ns).map_err(|_| "bad NS name")?,
        key_id: KeyId(u32::try_from(key_id).map_err(|_| "NS key id out of range")?),
        key: <KNtmNs as Codec>::from_bytes(key).map_err(|_| "NS key is not 16 bytes")?,
        expires_ms: u64::try_from(expires_ms).map_err(|_| "negative NS key expiry")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_round_trips_all_64_bits() {
        for v in [0, 1, i64::MAX as u64, (i64::MAX as u64) + 1, u64::MAX] {
            assert_eq!(u64_from_sql(u64_to_sql(v)), v);
        }
    }

    #[test]
    fn email_normalization() {
        assert_eq!(normalize_email("Alice@Example.ORG").unwrap(), "alice@example.org");
        for bad in ["", "alice", "@example.org", "alice@", "a b@example.org", "a\n@x"] {
            assert!(normalize_email(bad).is_err(), "{bad:?}");
        }
    }
}
