//! The embedded databases: accounts and their verdicts, DC node state across restarts,
//! the counter reservation, file modes and schema versions.

use ntm_proto::crypto::pk::{Attestation, KeyPair};
use ntm_proto::engine::account::{Account, Verdict};
use ntm_proto::engine::dc::{NodeState, NsState};
use ntm_proto::engine::{PeerIdentity, Role};
use ntm_proto::keys::{KNtmDc, KNtmNs};
use ntm_proto::time::Instant;
use ntm_proto::wire::registration::{KeepaliveMethod, NatMapping};
use ntm_proto::wire::{Bytes, Fqdn, KeyId, Prefix, VirtualAddrs};
use ntm_servers::oidc::IdClaims;
use ntm_servers::store::accounts::{AccountStore, HashCost, OidcBinding};
use ntm_servers::store::dc::{needs_refresh, reserved_counter, DcStore, COUNTER_RESERVE};
use ntm_servers::store::StoreError;
use rand_chacha::rand_core::SeedableRng;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

fn fqdn(s: &str) -> Fqdn {
    Fqdn::new(s).unwrap()
}

fn account(s: &str) -> Verdict {
    Verdict::Account(Account { fqdn: fqdn(s) })
}

/// A database path in the temp directory, removed (with its WAL files) when dropped.
struct TempDb(PathBuf);

impl TempDb {
    fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let name = format!("ntm-store-{tag}-{}-{}-{nanos}.db", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        TempDb(std::env::temp_dir().join(name))
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.0.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

fn mem() -> AccountStore {
    AccountStore::open_in_memory(HashCost::Cheap).unwrap()
}

fn node_identity(name: &str, role: Role) -> PeerIdentity {
    PeerIdentity { name: fqdn(name), role, public_key: None }
}

fn claims(sub: &str, email: Option<&str>, verified: bool) -> IdClaims {
    IdClaims {
        issuer: "https://id.example".into(),
        subject: sub.into(),
        audience: "ntm".into(),
        email: email.map(Into::into),
        email_verified: verified,
        expires_at: 2_000_000_000,
        issued_at: None,
    }
}

#[test]
fn account_store_add_list_and_duplicates() {
    let mut s = mem();
    let a = s.add_account("Alice@Example.org", Some(b"pw-a"), &fqdn("alice.nodes.example")).unwrap();
    let b = s.add_account("bob@example.org", None, &fqdn("bob.nodes.example")).unwrap();
    assert_ne!(a, b);
    let rows = s.list().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].email, "alice@example.org");
    assert!(rows[0].has_password);
    assert_eq!(rows[0].fqdn, fqdn("alice.nodes.example"));
    assert!(!rows[0].disabled && rows[0].device.is_none() && rows[0].oidc.is_none());
    assert!(rows[0].created > 1_600_000_000);
    assert!(!rows[1].has_password);
    // The listing never carries a hash.
    assert!(!format!("{rows:?}").contains("argon2"));

    let dup = s.add_account("ALICE@example.org", Some(b"x"), &fqdn("other.nodes.example")).unwrap_err();
    assert!(matches!(dup, StoreError::Duplicate { what: "e-mail", .. }), "{dup}");
    assert_eq!(dup.to_string(), "e-mail \"alice@example.org\" is already taken");
    let dup = s.add_account("carol@example.org", None, &fqdn("bob.nodes.example")).unwrap_err();
    assert!(matches!(dup, StoreError::Duplicate { what: "node name", .. }), "{dup}");
    assert!(matches!(s.add_account("not-an-email", None, &fqdn("c.example")), Err(StoreError::Invalid { .. })));
    assert!(matches!(s.add_account("c@example.org", Some(b""), &fqdn("c.example")), Err(StoreError::Invalid { .. })));
    assert_eq!(s.list().unwrap().len(), 2);

    // Lookups by e-mail (any case) or node name.
    assert_eq!(s.get("ALICE@example.org").unwrap().unwrap().id, a);
    assert_eq!(s.get("bob.nodes.example").unwrap().unwrap().id, b);
    assert_eq!(s.get("nobody@example.org").unwrap(), None);

    s.bind_fqdn("bob@example.org", &fqdn("robert.nodes.example")).unwrap();
    assert_eq!(s.get("bob@example.org").unwrap().unwrap().fqdn, fqdn("robert.nodes.example"));
    let e = s.bind_fqdn("bob@example.org", &fqdn("alice.nodes.example")).unwrap_err();
    assert!(matches!(e, StoreError::Duplicate { what: "node name", .. }), "{e}");
    assert!(matches!(s.disable("nobody@example.org"), Err(StoreError::NoSuchAccount(_))));
    s.remove("bob@example.org").unwrap();
    assert_eq!(s.list().unwrap().len(), 1);
}

#[test]
fn account_store_password_verdicts() {
    let mut s = mem();
    s.add_account("alice@example.org", Some(b"correct horse"), &fqdn("alice.example")).unwrap();
    s.add_account("dev@example.org", None, &fqdn("dev.example")).unwrap();
    assert_eq!(s.password("alice@example.org", b"correct horse"), account("alice.example"));
    assert_eq!(s.password("Alice@EXAMPLE.org", b"correct horse"), account("alice.example"));
    assert_eq!(s.password("alice@example.org", b"wrong"), Verdict::BadCredential);
    assert_eq!(s.password("nobody@example.org", b"correct horse"), Verdict::BadCredential);
    // An account without a password never logs in with one.
    assert_eq!(s.password("dev@example.org", b""), Verdict::BadCredential);
    assert_eq!(s.password("dev@example.org", b"anything"), Verdict::BadCredential);

    s.disable("alice@example.org").unwrap();
    // Disabled is said only to the right password: a guesser learns nothing.
    assert_eq!(s.password("alice@example.org", b"correct horse"), Verdict::Disabled);
    assert_eq!(s.password("alice@example.org", b"wrong"), Verdict::BadCredential);
    s.enable("alice.example").unwrap();
    assert_eq!(s.password("alice@example.org", b"correct horse"), account("alice.example"));

    s.set_password("alice@example.org", Some(b"new")).unwrap();
    assert_eq!(s.password("alice@example.org", b"correct horse"), Verdict::BadCredential);
    assert_eq!(s.password("alice@example.org", b"new"), account("alice.example"));
    s.set_password("alice@example.org", None).unwrap();
    assert_eq!(s.password("alice@example.org", b"new"), Verdict::BadCredential);
    assert!(!s.get("alice@example.org").unwrap().unwrap().has_password);
}

#[test]
fn account_store_device_binding_and_role() {
    let mut s = mem();
    s.add_account("alice@example.org", None, &fqdn("alice.example")).unwrap();
    s.add_account("bob@example.org", None, &fqdn("bob.example")).unwrap();
    let dev = node_identity("phone.devices.example", Role::Node);
    assert_eq!(s.device(&dev), Verdict::BadCredential);
    s.bind_device("alice.example", &fqdn("Phone.Devices.Example")).unwrap();
    assert_eq!(s.get("alice@example.org").unwrap().unwrap().device, Some(fqdn("phone.devices.example")));
    assert_eq!(s.device(&dev), account("alice.example"));
    // A server certificate with the same name is not a device.
    for role in [Role::As, Role::Dc, Role::Rs, Role::Ns] {
        assert_eq!(s.device(&node_identity("phone.devices.example", role)), Verdict::BadCredential);
    }
    // One device, one account.
    let e = s.bind_device("bob@example.org", &fqdn("phone.devices.example")).unwrap_err();
    assert!(matches!(e, StoreError::Duplicate { what: "device", .. }), "{e}");
    s.disable("alice@example.org").unwrap();
    assert_eq!(s.device(&dev), Verdict::Disabled);
    s.enable("alice@example.org").unwrap();
    s.unbind_device("alice@example.org").unwrap();
    assert_eq!(s.device(&dev), Verdict::BadCredential);
}

#[test]
fn account_store_oidc_by_subject_and_verified_email() {
    let mut s = mem();
    s.add_account("alice@example.org", None, &fqdn("alice.example")).unwrap();
    s.add_account("bob@example.org", None, &fqdn("bob.example")).unwrap();
    s.add_account("carol@example.org", None, &fqdn("carol.example")).unwrap();

    // Bound identity: the subject decides, whatever the e-mail says.
    s.bind_oidc("bob@example.org", "https://id.example", "sub-bob").unwrap();
    assert_eq!(s.oidc(&claims("sub-bob", None, false)), account("bob.example"));
    assert_eq!(s.oidc(&claims("sub-bob", Some("alice@example.org"), true)), account("bob.example"));
    let e = s.bind_oidc("carol@example.org", "https://id.example", "sub-bob").unwrap_err();
    assert!(matches!(e, StoreError::Duplicate { what: "OIDC identity", .. }), "{e}");

    // Unknown subject: an unverified e-mail is not enough.
    assert_eq!(s.oidc(&claims("sub-a", Some("alice@example.org"), false)), Verdict::BadCredential);
    assert_eq!(s.oidc(&claims("sub-a", None, true)), Verdict::BadCredential);
    assert_eq!(s.oidc(&claims("sub-a", Some("nobody@example.org"), true)), Verdict::BadCredential);
    // A verified one matches, and binds the identity on first use.
    assert_eq!(s.oidc(&claims("sub-a", Some("ALICE@example.org"), true)), account("alice.example"));
    let bound = s.get("alice@example.org").unwrap().unwrap().oidc;
    assert_eq!(bound, Some(OidcBinding { issuer: "https://id.example".into(), subject: "sub-a".into() }));
    assert_eq!(s.oidc(&claims("sub-a", None, false)), account("alice.example"));
    // Another identity showing the same address later is refused.
    assert_eq!(s.oidc(&claims("sub-evil", Some("alice@example.org"), true)), Verdict::BadCredential);
    // Another issuer's identical subject is another identity.
    let mut other = claims("sub-a", None, false);
    other.issuer = "https://other.example".into();
    assert_eq!(s.oidc(&other), Verdict::BadCredential);

    s.disable("carol@example.org").unwrap();
    assert_eq!(s.oidc(&claims("sub-c", Some("carol@example.org"), true)), Verdict::Disabled);
    // A disabled account is not bound by its e-mail.
    assert_eq!(s.get("carol@example.org").unwrap().unwrap().oidc, None);
    s.disable("bob@example.org").unwrap();
    assert_eq!(s.oidc(&claims("sub-bob", None, false)), Verdict::Disabled);
    s.unbind_oidc("alice@example.org").unwrap();
    assert_eq!(s.oidc(&claims("sub-a", None, false)), Verdict::BadCredential);
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn account_store_persists_across_reopen() {
    let db = TempDb::new("as");
    {
        let mut s = AccountStore::open_with(db.path(), HashCost::Cheap).unwrap();
        s.add_account("alice@example.org", Some(b"pw"), &fqdn("alice.example")).unwrap();
        s.bind_device("alice@example.org", &fqdn("phone.example")).unwrap();
        s.add_account("bob@example.org", Some(b"pw2"), &fqdn("bob.example")).unwrap();
        s.disable("bob@example.org").unwrap();
    }
    #[cfg(unix)]
    assert_eq!(mode(db.path()), 0o600);
    // Reopened with production parameters: stored hashes carry their own.
    let mut s = AccountStore::open(db.path()).unwrap();
    assert_eq!(s.list().unwrap().len(), 2);
    assert_eq!(s.password("alice@example.org", b"pw"), account("alice.example"));
    assert_eq!(s.password("bob@example.org", b"pw2"), Verdict::Disabled);
    assert_eq!(s.device(&node_identity("phone.example", Role::Node)), account("alice.example"));
}

#[cfg(unix)]
#[test]
fn store_files_are_created_0600_and_tightened() {
    use std::os::unix::fs::PermissionsExt;
    let db = TempDb::new("mode");
    let mut s = DcStore::open(db.path()).unwrap();
    s.save_node(&snapshot("a.example", 1)).unwrap();
    assert_eq!(mode(db.path()), 0o600);
    let mut wal = db.path().to_path_buf().into_os_string();
    wal.push("-wal");
    if Path::new(&wal).exists() {
        assert_eq!(mode(Path::new(&wal)), 0o600);
    }
    drop(s);
    // A file others can read is tightened at open.
    std::fs::set_permissions(db.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let s = DcStore::open(db.path()).unwrap();
    assert_eq!(mode(db.path()), 0o600);
    assert_eq!(s.load_nodes().unwrap().len(), 1);
}

#[test]
fn store_newer_schema_is_refused() {
    let db = TempDb::new("schema");
    drop(DcStore::open(db.path()).unwrap());
    let conn = rusqlite::Connection::open(db.path()).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let e = DcStore::open(db.path()).unwrap_err();
    assert!(matches!(e, StoreError::SchemaTooNew { found: 99, known: 3, .. }), "{e}");
    let line = e.to_string();
    assert!(line.contains(&db.path().display().to_string()) && !line.contains('\n'), "{line}");
}

#[test]
fn store_open_errors_name_the_file() {
    let path = std::env::temp_dir().join("ntm-store-no-such-dir").join("x").join("dc.db");
    let e = DcStore::open(&path).unwrap_err();
    let line = e.to_string();
    assert!(line.starts_with(&format!("database {}: cannot create or open the file", path.display())), "{line}");
}

fn snapshot(name: &str, seed: u64) -> NodeState {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    let as_key = KeyPair::generate(&mut rng);
    let node_key = KeyPair::generate(&mut rng);
    NodeState {
        fqdn: fqdn(name),
        key_id: KeyId(0x0102_0304 + seed as u32),
        key: KNtmDc::generate(&mut rng),
        expires: Instant::from_millis(1_900_000_000_000),
        next_counter: 17 * seed,
        peer_counter: 5 * seed,
        attestation: Some(Attestation::issue(&as_key, fqdn(name), node_key.public())),
        virtual_addrs: Some(VirtualAddrs {
            v4: format!("198.18.0.{}", 2 + seed).parse().unwrap(),
            v6: format!("2001:db8:ff::{}", 2 + seed).parse().unwrap(),
        }),
        endpoints: vec![
            ("203.0.113.7:4500".parse().unwrap(), true, NatMapping::Dependent),
            ("[2001:db8::7]:4500".parse().unwrap(), false, NatMapping::Untested),
        ],
        local_addrs: vec!["192.168.1.10:4500".parse().unwrap(), "[2001:db8::7]:4500".parse().unwrap()],
        announced: vec![
            Prefix::new(format!("192.168.{seed}.0").parse().unwrap(), 24).unwrap(),
            Prefix::new("2001:db8:1::".parse().unwrap(), 48).unwrap(),
        ],
        keepalive: KeepaliveMethod::Push(Bytes::new(b"device-token".to_vec()).unwrap()),
        ns: (seed % 2 == 1).then(|| NsState {
            ns: fqdn("ns1.example"),
            key_id: KeyId(77 + seed as u32),
            key: KNtmNs::generate(&mut rng),
            expires: Instant::from_millis(1_900_000_000_000),
        }),
    }
}

#[test]
fn dc_store_round_trip_across_reopen() {
    let db = TempDb::new("dc");
    let a = snapshot("a.nodes.example", 1);
    let mut b = snapshot("b.nodes.example", 2);
    b.attestation = None;
    b.virtual_addrs = None;
    b.endpoints.clear();
    b.local_addrs.clear();
    b.keepalive = KeepaliveMethod::Udp;
    let assignments = vec![
        (fqdn("a.nodes.example"), a.virtual_addrs.unwrap()),
        (
            fqdn("gone.nodes.example"),
            VirtualAddrs { v4: "198.18.0.9".parse().unwrap(), v6: "2001:db8:ff::9".parse().unwrap() },
        ),
    ];
    {
        let mut s = DcStore::open(db.path()).unwrap();
        s.save_assignments(&assignments).unwrap();
        assert_eq!(s.save_node(&a).unwrap(), a.next_counter + COUNTER_RESERVE);
        assert_eq!(s.save_nodes(std::slice::from_ref(&b)).unwrap(), vec![b.next_counter + COUNTER_RESERVE]);
    }
    let mut s = DcStore::open(db.path()).unwrap();
    assert_eq!(s.load_assignments().unwrap(), assignments);
    let loaded = s.load_nodes().unwrap();
    assert_eq!(loaded.len(), 2);
    // Everything comes back, but the counter is the reserved one.
    let mut want_a = a.clone();
    want_a.next_counter = reserved_counter(a.next_counter);
    let mut want_b = b.clone();
    want_b.next_counter = reserved_counter(b.next_counter);
    assert_eq!(loaded, vec![want_a, want_b]);
    assert_eq!(loaded[0].key, a.key);
    // The key never shows in debug output.
    assert!(format!("{loaded:?}").contains("K_ntmdc(redacted)"));

    // A re-login replaces the row; a moved assignment replaces the old one.
    let mut a2 = snapshot("a.nodes.example", 3);
    a2.next_counter = 0;
    s.save_node(&a2).unwrap();
    let loaded = s.load_nodes().unwrap();
    assert_eq!(loaded[0].key_id, a2.key_id);
    assert_eq!(loaded[0].next_counter, COUNTER_RESERVE);
    let moved = VirtualAddrs { v4: "198.18.0.20".parse().unwrap(), v6: "2001:db8:ff::20".parse().unwrap() };
    s.save_assignment(&fqdn("a.nodes.example"), moved).unwrap();
    assert_eq!(s.load_assignments().unwrap()[0], (fqdn("a.nodes.example"), moved));
    // Another node's addresses are refused.
    let e = s.save_assignment(&fqdn("c.nodes.example"), moved).unwrap_err();
    assert!(matches!(e, StoreError::Duplicate { what: "virtual address", .. }), "{e}");

    assert!(s.remove_node(&fqdn("b.nodes.example")).unwrap());
    assert!(!s.remove_node(&fqdn("b.nodes.example")).unwrap());
    assert_eq!(s.load_nodes().unwrap().len(), 1);
    assert_eq!(s.prune_expired(1_800_000_000_000).unwrap(), 0);
    assert_eq!(s.prune_expired(1_900_000_000_000).unwrap(), 1);
    assert!(s.load_nodes().unwrap().is_empty());
    // Assignments outlive keys.
    assert_eq!(s.load_assignments().unwrap().len(), 2);
}

/// A node row is never stored without its addresses in the assignments table, which
/// outlives the row: otherwise a node saved only by the counter refresh would lose its
/// addresses when its key expires, and they could go to another node.
#[test]
fn dc_store_a_node_row_brings_its_assignment() {
    let db = TempDb::new("dc-assign");
    let mut s = DcStore::open(db.path()).unwrap();
    let a = snapshot("a.nodes.example", 1);
    s.save_nodes(std::slice::from_ref(&a)).unwrap();
    assert_eq!(s.load_assignments().unwrap(), vec![(a.fqdn.clone(), a.virtual_addrs.unwrap())]);
    assert_eq!(s.prune_expired(1_900_000_000_000).unwrap(), 1);
    assert_eq!(s.load_assignments().unwrap(), vec![(a.fqdn.clone(), a.virtual_addrs.unwrap())]);
    // A row whose addresses the database holds for another node is refused whole.
    let mut b = snapshot("b.nodes.example", 2);
    b.virtual_addrs = a.virtual_addrs;
    assert!(s.save_node(&b).is_err());
    assert!(s.load_nodes().unwrap().is_empty(), "no row without its assignment");
}

#[test]
fn dc_store_skips_undecodable_node_rows() {
    let db = TempDb::new("corrupt");
    let mut s = DcStore::open(db.path()).unwrap();
    s.save_node(&snapshot("a.example", 1)).unwrap();
    s.save_node(&snapshot("b.example", 2)).unwrap();
    drop(s);
    let conn = rusqlite::Connection::open(db.path()).unwrap();
    conn.execute("UPDATE nodes SET keepalive = x'ff' WHERE fqdn = 'a.example'", []).unwrap();
    drop(conn);
    let s = DcStore::open(db.path()).unwrap();
    let loaded = s.load_nodes().unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].fqdn, fqdn("b.example"));
}

#[test]
fn dc_store_counter_reserve() {
    let mut s = DcStore::open_in_memory().unwrap();
    let mut n = snapshot("a.example", 1);
    n.next_counter = 1000;
    let saved = s.save_node(&n).unwrap();
    assert_eq!(saved, 1000 + COUNTER_RESERVE);
    // Fresh reservation: no refresh until half of it is used.
    assert!(!needs_refresh(saved, 1000));
    assert!(!needs_refresh(saved, 1000 + COUNTER_RESERVE / 2 - 1));
    assert!(needs_refresh(saved, 1000 + COUNTER_RESERVE / 2));
    assert!(needs_refresh(saved, saved));

    // A crash after sealing up to (but not at) the reservation: the restored channel
    // resumes at the stored value, above every counter used.
    let used_up_to = saved - 1;
    let restored = s.load_nodes().unwrap().remove(0);
    assert!(restored.next_counter > used_up_to);
    // A restored channel has no reservation of its own: save again before sealing.
    assert!(needs_refresh(restored.next_counter, restored.next_counter));
    let again = s.save_node(&restored).unwrap();
    assert_eq!(again, restored.next_counter + COUNTER_RESERVE);
    assert!(!needs_refresh(again, restored.next_counter));

    // Near the end of the counter space the reservation saturates; a channel resumed at
    // u64::MAX refuses to seal, so nothing is reused.
    n.next_counter = u64::MAX - 3;
    assert_eq!(s.save_node(&n).unwrap(), u64::MAX);
    assert_eq!(s.load_nodes().unwrap()[0].next_counter, u64::MAX);
    assert_eq!(reserved_counter(u64::MAX), u64::MAX);
}

/// The DC schema as the first builds created it, kept here as it was: a database they
/// wrote must open and load with every later build.
const DC_SCHEMA_1: &str = "
    CREATE TABLE assignments (fqdn TEXT PRIMARY KEY, v4 TEXT NOT NULL UNIQUE, v6 TEXT NOT NULL UNIQUE) STRICT;
    CREATE TABLE nodes (
        fqdn TEXT PRIMARY KEY, key_id INTEGER NOT NULL, key BLOB NOT NULL CHECK (length(key) = 16),
        expires_ms INTEGER NOT NULL, next_counter INTEGER NOT NULL, peer_counter INTEGER NOT NULL,
        attestation BLOB, v4 TEXT, v6 TEXT, endpoints TEXT NOT NULL, local_addrs TEXT NOT NULL,
        keepalive BLOB NOT NULL, saved_ms INTEGER NOT NULL, CHECK ((v4 IS NULL) = (v6 IS NULL))
    ) STRICT;
    CREATE TABLE node_ns (
        fqdn TEXT PRIMARY KEY, ns TEXT NOT NULL, key_id INTEGER NOT NULL,
        key BLOB NOT NULL CHECK (length(key) = 16), expires_ms INTEGER NOT NULL
    ) STRICT;
    PRAGMA user_version = 1;
";

/// A DC database written before the store took the engine's node state directly (rows
/// as those builds encoded them: UNIX milliseconds, counters as signed 64 bits, JSON
/// endpoints, wire-encoded keepalive) opens, and its rows come back as the engine's
/// `NodeState`.
#[test]
fn dc_store_opens_a_database_an_earlier_build_wrote() {
    use ntm_proto::wire::Codec;
    let db = TempDb::new("dc-v1");
    let conn = rusqlite::Connection::open(db.path()).unwrap();
    conn.execute_batch(DC_SCHEMA_1).unwrap();
    conn.execute("INSERT INTO assignments VALUES ('a.nodes.example', '198.18.0.2', '2001:db8:ff::2')", []).unwrap();
    conn.execute(
        "INSERT INTO nodes VALUES ('a.nodes.example', 7, ?1, 1900000000000, -2, 3, NULL, '198.18.0.2', \
         '2001:db8:ff::2', '[{\"addr\":\"203.0.113.7:4500\",\"nat\":true}]', '[\"192.168.1.10:4500\"]', ?2, 0)",
        rusqlite::params![[7u8; 16].as_slice(), KeepaliveMethod::Udp.to_vec()],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO node_ns VALUES ('a.nodes.example', 'ns1.example', 9, ?1, 1900000000001)",
        [[9u8; 16].as_slice()],
    )
    .unwrap();
    drop(conn);

    let s = DcStore::open(db.path()).unwrap();
    let v = VirtualAddrs { v4: "198.18.0.2".parse().unwrap(), v6: "2001:db8:ff::2".parse().unwrap() };
    assert_eq!(s.load_assignments().unwrap(), vec![(fqdn("a.nodes.example"), v)]);
    let want = NodeState {
        fqdn: fqdn("a.nodes.example"),
        key_id: KeyId(7),
        key: KNtmDc::from_bytes([7; 16]),
        expires: Instant::from_millis(1_900_000_000_000),
        next_counter: u64::MAX - 1,
        peer_counter: 3,
        attestation: None,
        virtual_addrs: Some(v),
        // Written before the mapping test: untested.
        endpoints: vec![("203.0.113.7:4500".parse().unwrap(), true, NatMapping::Untested)],
        local_addrs: vec!["192.168.1.10:4500".parse().unwrap()],
        // Written before subnet routes: none.
        announced: Vec::new(),
        keepalive: KeepaliveMethod::Udp,
        ns: Some(NsState {
            ns: fqdn("ns1.example"),
            key_id: KeyId(9),
            key: KNtmNs::from_bytes([9; 16]),
            expires: Instant::from_millis(1_900_000_000_001),
        }),
    };
    assert_eq!(s.load_nodes().unwrap(), vec![want]);
}

/// The gateway's synthetic addresses survive a reopen (what a DC restart restores), an
/// address given to another real address replaces that address's row, a later lookup is
/// kept over an older one, and a database of an earlier schema gains the table empty.
#[test]
fn dc_store_keeps_gateway_addresses_across_reopen() {
    let ip = |s: &str| s.parse::<core::net::Ipv4Addr>().unwrap();
    let db = TempDb::new("dc-synthetic");
    {
        let conn = rusqlite::Connection::open(db.path()).unwrap();
        conn.execute_batch(DC_SCHEMA_1).unwrap();
    }
    let mut s = DcStore::open(db.path()).unwrap();
    assert_eq!(s.load_synthetic().unwrap(), Vec::new());
    s.save_synthetic(&[(ip("198.19.80.2"), ip("198.18.100.1"), 1_000), (ip("198.19.80.3"), ip("198.18.100.2"), 2_000)])
        .unwrap();
    s.save_synthetic(&[(ip("198.19.80.2"), ip("198.18.100.1"), 500)]).unwrap();
    drop(s);
    let mut s = DcStore::open(db.path()).unwrap();
    assert_eq!(
        s.load_synthetic().unwrap(),
        vec![(ip("198.19.80.2"), ip("198.18.100.1"), 1_000), (ip("198.19.80.3"), ip("198.18.100.2"), 2_000)]
    );
    // 198.18.100.2 recycled to another host: the old host's row goes.
    s.save_synthetic(&[(ip("198.19.80.4"), ip("198.18.100.2"), 9_000)]).unwrap();
    assert_eq!(
        s.load_synthetic().unwrap(),
        vec![(ip("198.19.80.2"), ip("198.18.100.1"), 1_000), (ip("198.19.80.4"), ip("198.18.100.2"), 9_000)]
    );
    let conn = rusqlite::Connection::open(db.path()).unwrap();
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    assert_eq!(version, 3);
}
