//! The DC's registration database: virtual address assignments and each node's state.
//!
//! [`DcStore`] holds assignments and the engine's [`NodeState`]s as they are, so that a
//! DC restart neither renumbers nodes nor makes them all log in again. Node rows hold
//! K_ntmdc and K_ntmns: the file is readable by its owner only, and key bytes are never
//! logged (the keys travel as [`KNtmDc`] and [`KNtmNs`], which zeroize themselves and
//! print redacted). The columns are this module's own encoding of a `NodeState`, written
//! by [`DcStore::save_node`] and read by [`DcStore::load_nodes`] only; the engine's type
//! can change without a schema change as long as these two still map it.
//!
//! Sealing counters are saved *reserved ahead* ([`COUNTER_RESERVE`]): see
//! [`DcStore::save_node`] and [`needs_refresh`]. A restored channel resumes above every
//! counter it can have used before a crash, so no nonce is ever reused.

use super::{open_db, sql_err, time_to_sql, unique_err, unix_now_ms, Result, StoreError};
use core::fmt;
use core::net::{Ipv4Addr, SocketAddr};
use ntm_proto::crypto::pk::Attestation;
use ntm_proto::engine::dc::{NodeState, NsState};
use ntm_proto::keys::{KNtmDc, KNtmNs};
use ntm_proto::time::Instant;
use ntm_proto::wire::registration::{KeepaliveMethod, NatMapping};
use ntm_proto::wire::{Codec, Fqdn, KeyId, Prefix, VirtualAddrs};
use rusqlite::{params, Connection};
use std::path::Path;

/// SQLite integers are signed; times and counters are unsigned. Counters are stored as
/// the same 64 bits (exact, and never compared in SQL).
fn u64_to_sql(v: u64) -> i64 {
    i64::from_be_bytes(v.to_be_bytes())
}

fn u64_from_sql(v: i64) -> u64 {
    u64::from_be_bytes(v.to_be_bytes())
}

/// The DC schema, one migration per version.
const DC_MIGRATIONS: &[&str] = &[
    "
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
        endpoints    TEXT NOT NULL,                           -- JSON [{addr, nat, mapping}]
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
",
    "
    -- The prefixes each node announced (subnet routes): JSON [\"a/len\"].
    ALTER TABLE nodes ADD COLUMN announced TEXT NOT NULL DEFAULT '[]';
",
    "
    -- The gateway's synthetic addresses: the last lookup of each ordinary host's real
    -- address, so that a restarted DC holds what boxes may still use.
    CREATE TABLE synthetic (
        real         TEXT PRIMARY KEY,
        synthetic    TEXT NOT NULL UNIQUE,
        last_used_ms INTEGER NOT NULL                          -- the engine's clock (UNIX ms)
    ) STRICT;
",
];

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

/// A stored verdict; a code this build does not know counts as untested.
fn stored_mapping(code: u8) -> NatMapping {
    match NatMapping::from(code) {
        NatMapping::Unknown(_) => NatMapping::Untested,
        m => m,
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct EndpointJson {
    addr: SocketAddr,
    nat: bool,
    /// The mapping test's verdict, as its code (0 untested: also what a database written
    /// before the test has).
    #[serde(default)]
    mapping: u8,
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
        nodes: &[NodeState],
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

    /// Records gateway lookups (`DcEvent::SyntheticUsed`: real address, synthetic address,
    /// time in ms) in one transaction. A synthetic address given to another real address
    /// replaces that address's row.
    pub fn save_synthetic(&mut self, used: &[(Ipv4Addr, Ipv4Addr, u64)]) -> Result<()> {
        let path = self.path.clone();
        let err = || sql_err(&path, "saving gateway addresses");
        let tx = self.conn.transaction().map_err(err())?;
        for (real, synthetic, at) in used {
            let (real, synthetic) = (real.to_string(), synthetic.to_string());
            tx.execute("DELETE FROM synthetic WHERE synthetic = ?1 AND real != ?2", params![synthetic, real])
                .map_err(err())?;
            tx.execute(
                "INSERT INTO synthetic (real, synthetic, last_used_ms) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (real) DO UPDATE SET synthetic = ?2, last_used_ms = max(last_used_ms, ?3)",
                params![real, synthetic, time_to_sql(*at)],
            )
            .map_err(err())?;
        }
        tx.commit().map_err(err())
    }

    /// Every saved gateway lookup (real, synthetic, time in ms), for `Dc::restore_synthetic`.
    /// A row that does not parse is an error: skipping it could give its address to
    /// another host.
    pub fn load_synthetic(&self) -> Result<Vec<(Ipv4Addr, Ipv4Addr, u64)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT real, synthetic, last_used_ms FROM synthetic ORDER BY synthetic")
            .map_err(sql_err(&self.path, "loading gateway addresses"))?;
        let rows: Vec<(String, String, i64)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .and_then(|rows| rows.collect())
            .map_err(sql_err(&self.path, "loading gateway addresses"))?;
        rows.into_iter()
            .map(|(real, synthetic, at)| {
                let corrupt = |detail: &str| StoreError::Corrupt {
                    path: self.path.clone(),
                    row: format!("gateway address of {real:?}"),
                    detail: detail.to_owned(),
                };
                let r = real.parse().map_err(|_| corrupt("bad real address"))?;
                let s = synthetic.parse().map_err(|_| corrupt("bad synthetic address"))?;
                let at = u64::try_from(at).map_err(|_| corrupt("bad time"))?;
                Ok((r, s, at))
            })
            .collect()
    }

    /// Saves a node's state, replacing what was stored for it, and returns the counter
    /// stored: `reserved_counter(node.next_counter)`. Keep it and call [`needs_refresh`]
    /// with it; the channel must not seal at or above it before the next save.
    pub fn save_node(&mut self, node: &NodeState) -> Result<u64> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(sql_err(&path, "saving node state"))?;
        let reserved = insert_node(&tx, &path, node)?;
        tx.commit().map_err(sql_err(&path, "saving node state"))?;
        Ok(reserved)
    }

    /// Saves many nodes in one transaction (one fsync); returns each stored counter.
    pub fn save_nodes(&mut self, nodes: &[NodeState]) -> Result<Vec<u64>> {
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
    pub fn load_nodes(&self) -> Result<Vec<NodeState>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT fqdn, key_id, expires_ms, next_counter, peer_counter, attestation, v4, v6, \
                 endpoints, local_addrs, keepalive, key, announced FROM nodes ORDER BY fqdn",
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
            let announced = row.get::<_, String>(12).map_err(|_| "announced prefixes are not text");
            let node = key.and_then(|key| decode_node(cols, key)).and_then(|mut n| {
                n.announced = decode_prefixes(&announced?)?;
                Ok(n)
            });
            match node {
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
fn insert_node(tx: &rusqlite::Transaction<'_>, path: &str, node: &NodeState) -> Result<u64> {
    if let Some(a) = &node.virtual_addrs {
        insert_assignment(tx, path, &node.fqdn, a)?;
    }
    let reserved = reserved_counter(node.next_counter);
    let invalid = |detail: String| StoreError::Invalid { what: "node state", detail };
    let endpoints: Vec<EndpointJson> = node
        .endpoints
        .iter()
        .map(|&(addr, nat, mapping)| EndpointJson { addr, nat, mapping: u8::from(mapping) })
        .collect();
    let endpoints = serde_json::to_string(&endpoints).map_err(|e| invalid(format!("{}: endpoints: {e}", node.fqdn)))?;
    let local_addrs = serde_json::to_string(&node.local_addrs)
        .map_err(|e| invalid(format!("{}: local addresses: {e}", node.fqdn)))?;
    let announced: Vec<String> = node.announced.iter().map(|p| p.to_string()).collect();
    let announced =
        serde_json::to_string(&announced).map_err(|e| invalid(format!("{}: announced prefixes: {e}", node.fqdn)))?;
    let attestation = node.attestation.as_ref().map(Codec::to_vec);
    let (v4, v6) = match node.virtual_addrs {
        Some(a) => (Some(a.v4.to_string()), Some(a.v6.to_string())),
        None => (None, None),
    };
    tx.execute(
        "INSERT OR REPLACE INTO nodes (fqdn, key_id, key, expires_ms, next_counter, peer_counter, attestation, \
         v4, v6, endpoints, local_addrs, keepalive, saved_ms, announced) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        params![
            node.fqdn.as_str(),
            i64::from(node.key_id.0),
            // Bound by reference: SQLite copies it into its own (secure_delete) pages.
            node.key.expose_secret().as_slice(),
            time_to_sql(node.expires.as_millis()),
            u64_to_sql(reserved),
            u64_to_sql(node.peer_counter),
            attestation,
            v4,
            v6,
            endpoints,
            local_addrs,
            node.keepalive.to_vec(),
            time_to_sql(unix_now_ms()),
            announced,
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
                time_to_sql(ns.expires.as_millis()),
            ],
        )
        .map_err(sql_err(path, "saving node state"))?;
    }
    Ok(reserved)
}

fn decode_node(cols: NodeColumns, key: KNtmDc) -> Result<NodeState, &'static str> {
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
    Ok(NodeState {
        fqdn,
        key_id,
        key,
        expires: Instant::from_millis(expires_ms),
        next_counter: u64_from_sql(next_counter),
        peer_counter: u64_from_sql(peer_counter),
        attestation,
        virtual_addrs,
        endpoints: endpoints.into_iter().map(|e| (e.addr, e.nat, stored_mapping(e.mapping))).collect(),
        local_addrs,
        announced: Vec::new(),
        keepalive,
        ns: None,
    })
}

/// The stored prefixes (`["a/len", ...]`), each checked as on the wire.
fn decode_prefixes(json: &str) -> Result<Vec<Prefix>, &'static str> {
    let texts: Vec<String> = serde_json::from_str(json).map_err(|_| "announced prefixes do not decode")?;
    texts
        .iter()
        .map(|t| {
            let (a, l) = t.split_once('/').ok_or("bad announced prefix")?;
            let addr = a.parse().map_err(|_| "bad announced prefix")?;
            Prefix::new(addr, l.parse().map_err(|_| "bad announced prefix")?).ok_or("bad announced prefix")
        })
        .collect()
}

fn decode_ns(ns: String, key_id: i64, key: &[u8], expires_ms: i64) -> Result<NsState, &'static str> {
    Ok(NsState {
        ns: Fqdn::new(&ns).map_err(|_| "bad NS name")?,
        key_id: KeyId(u32::try_from(key_id).map_err(|_| "NS key id out of range")?),
        key: <KNtmNs as Codec>::from_bytes(key).map_err(|_| "NS key is not 16 bytes")?,
        expires: Instant::from_millis(u64::try_from(expires_ms).map_err(|_| "negative NS key expiry")?),
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
}
