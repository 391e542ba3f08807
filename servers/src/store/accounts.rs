//! The AS's account database.
//!
//! [`AccountStore`] holds accounts and gives the verdicts the AS engine asks its
//! `Accounts` for (the AS daemon's `Logins` adds ID token verification to them). Passwords are kept only as argon2id PHC strings and checked with argon2's constant-time
//! verification; an unknown e-mail costs the same hash as a known one. A disabled account
//! answers [`Verdict::Disabled`] only to a credential that was right, so the verdict never
//! tells a guesser that an account exists.

use super::{open_db, sql_err, time_to_sql, unique_err, unix_now_ms, Result, StoreError};
use crate::oidc::IdClaims;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use core::fmt;
use ntm_proto::engine::account::{Account, Verdict};
use ntm_proto::engine::{PeerIdentity, Role};
use ntm_proto::wire::Fqdn;
use rand_core::{OsRng, RngCore};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;

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

impl AccountStore {
    /// The verdict on an e-mail and password (the e-mail compared lowercased).
    pub fn password(&mut self, email: &str, password: &[u8]) -> Verdict {
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

    /// The verdict on a device certificate that TLS verified: the account it is bound to.
    pub fn device(&mut self, identity: &PeerIdentity) -> Verdict {
        // Only node certificates log in; a server's certificate naming a node must not.
        if identity.role != Role::Node {
            return Verdict::BadCredential;
        }
        match self.find("device_name = ?1", identity.name.as_str()) {
            Some(f) => self.verdict(&f),
            None => Verdict::BadCredential,
        }
    }

    /// The verdict on a verified ID token's identity: the account bound to it, else one
    /// whose e-mail the token verifies (which is then bound to it).
    pub fn oidc(&mut self, claims: &IdClaims) -> Verdict {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_normalization() {
        assert_eq!(normalize_email("Alice@Example.ORG").unwrap(), "alice@example.org");
        for bad in ["", "alice", "@example.org", "alice@", "a b@example.org", "a\n@x"] {
            assert!(normalize_email(bad).is_err(), "{bad:?}");
        }
    }
}
