//! The agent's TLS login session (`src/tls.rs`, `src/verify.rs`) against real servers over
//! loopback TCP: a rustls 0.23 server (ring, TLS 1.3, P-256 certificates made with rcgen as
//! `servers/src/pki.rs` makes them) in a thread, and the client driven by a mio loop in the
//! test thread, as `ntmd` drives it.
//!
//! Every refusal must come out of `drive()` as an error with `is_open()` never true, and the
//! plaintext queued before the handshake (a password, in real life) must never reach the
//! server. Hole 2 of embedded-tls (a server Finished without Certificate/CertificateVerify is
//! accepted) cannot be reproduced with rustls, so a hand-made TLS 1.3 server does it
//! (`fake_server`). The unit tests of `verify.rs` run in this binary too.

// The agent is a binary crate: its modules are compiled into this test directly.
#[allow(dead_code)]
#[path = "../src/tls.rs"]
mod tls;
#[allow(dead_code)]
#[path = "../src/verify.rs"]
mod verify;

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use ntm_proto::wire::frame::{encode_frame, FrameDecoder};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection, StreamOwned};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tls::{ClientCert, LoginTls, LoginTlsConfig, LoginTlsError};
use verify::VerifyError;

const AS_NAME: &str = "as.example.net";
const DEVICE_NAME: &str = "router7.nodes.example.net";
const LOGIN_REQUEST: &[u8] = b"{\"login\":\"alice@example.net\",\"password\":\"hunter2\"}";
const LOGIN_RESPONSE: &[u8] = b"{\"fqdn\":\"alice.nodes.example.net\",\"key\":\"...\"}";
const TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Certificates, as servers/src/pki.rs makes them
// ---------------------------------------------------------------------------------------

struct TestCa {
    der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

/// A deployment CA: `CA:TRUE, pathlen:0`, keyCertSign and cRLSign, P-256.
fn ca(common_name: &str) -> TestCa {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).unwrap();
    TestCa { der: cert.der().to_vec(), issuer: Issuer::new(params, key) }
}

struct Issued {
    der: Vec<u8>,
    key: KeyPair,
    params: CertificateParams,
}

impl Issued {
    /// This certificate as the issuer of others (what a rogue device would try).
    fn as_issuer(&self) -> Issuer<'static, KeyPair> {
        Issuer::new(self.params.clone(), KeyPair::from_pem(&self.key.serialize_pem()).unwrap())
    }

    fn secret_key(&self) -> p256::SecretKey {
        use p256::pkcs8::DecodePrivateKey;
        p256::SecretKey::from_pkcs8_der(&self.key.serialize_der()).unwrap()
    }
}

/// End-entity parameters: SAN DNS name and role URI (if any), `CA:FALSE`, digitalSignature,
/// the given extended key usages.
fn leaf_params(role: Option<&str>, name: &str, eku: Vec<ExtendedKeyUsagePurpose>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.subject_alt_names = vec![SanType::DnsName(name.try_into().unwrap())];
    if let Some(role) = role {
        params.subject_alt_names.push(SanType::URI(format!("urn:ntmobile:role:{role}").try_into().unwrap()));
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = eku;
    params.use_authority_key_identifier_extension = true;
    params
}

fn issue(issuer: &Issuer<'_, KeyPair>, params: CertificateParams) -> Issued {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let der = params.signed_by(&key, issuer).unwrap().der().to_vec();
    Issued { der, key, params }
}

fn server_eku() -> Vec<ExtendedKeyUsagePurpose> {
    vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
}

/// The AS certificate of the deployment.
fn as_cert(ca: &TestCa) -> Issued {
    issue(&ca.issuer, leaf_params(Some("as"), AS_NAME, server_eku()))
}

/// A device certificate: role node, clientAuth only.
fn device_cert(ca: &TestCa) -> Issued {
    issue(&ca.issuer, leaf_params(Some("node"), DEVICE_NAME, vec![ExtendedKeyUsagePurpose::ClientAuth]))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn password_config(ca: &TestCa) -> LoginTlsConfig {
    LoginTlsConfig { ca_der: ca.der.clone(), server_name: AS_NAME.into(), client: None, unix_time: None }
}

// ---------------------------------------------------------------------------------------
// The rustls server
// ---------------------------------------------------------------------------------------

/// What the server saw of its one connection.
#[derive(Debug, Default)]
struct ServerSaw {
    /// The client's certificate, if it presented one.
    client_cert: Option<Vec<u8>>,
    /// Whole frames received after the handshake.
    received: Vec<Vec<u8>>,
    /// Why the handshake or the session failed, if it did.
    error: Option<String>,
}

/// The AS's own TLS provider (suites and groups as every server configures them), so that
/// these tests log in to what a deployment offers.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    ntm_servers::pki::provider()
}

/// A TLS 1.3 server presenting `chain` with `key`; client certificates from `ca` are required
/// or optional, as the AS makes them optional.
fn server_config(ca: &TestCa, chain: &[&[u8]], key: &KeyPair, require_client_cert: bool) -> Arc<ServerConfig> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ca.der.clone())).unwrap();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    let verifier = if require_client_cert { verifier } else { verifier.allow_unauthenticated() };
    let chain = chain.iter().map(|der| CertificateDer::from(der.to_vec())).collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(verifier.build().unwrap())
        .with_single_cert(chain, key)
        .unwrap();
    Arc::new(config)
}

/// Serves one connection in a thread: handshake, one framed request, `reply` (framed) if
/// any, then waits for the client to go.
fn spawn_server(config: Arc<ServerConfig>, reply: Option<&'static [u8]>) -> (SocketAddr, JoinHandle<ServerSaw>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let mut saw = ServerSaw::default();
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut stream = StreamOwned::new(ServerConnection::new(config).unwrap(), tcp);
        while stream.conn.is_handshaking() {
            if let Err(e) = stream.conn.complete_io(&mut stream.sock) {
                saw.error = Some(e.to_string());
                return saw;
            }
        }
        saw.client_cert = stream.conn.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec());
        let mut len = [0u8; 2];
        if let Err(e) = stream.read_exact(&mut len) {
            saw.error = Some(e.to_string());
            return saw;
        }
        let mut frame = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if let Err(e) = stream.read_exact(&mut frame) {
            saw.error = Some(e.to_string());
            return saw;
        }
        saw.received.push(frame);
        if let Some(reply) = reply {
            stream.write_all(&encode_frame(reply).unwrap()).unwrap();
            stream.flush().unwrap();
        }
        // Until the client closes (close_notify, or EOF).
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
        saw
    });
    (addr, handle)
}

// ---------------------------------------------------------------------------------------
// The client, driven by a mio loop
// ---------------------------------------------------------------------------------------

/// LoginTlsError holds embedded-tls's TlsError, which has no PartialEq: compare by Debug.
#[track_caller]
fn assert_same(got: &Result<(), LoginTlsError>, want: &Result<(), LoginTlsError>) {
    assert_eq!(format!("{got:?}"), format!("{want:?}"));
}

struct ClientRun {
    result: Result<(), LoginTlsError>,
    frames: Vec<Vec<u8>>,
    ever_open: bool,
}

/// Connects, queues `request` (framed) at once, and drives the session until `want_frames`
/// frames arrived or it fails; then closes.
fn run_client(addr: SocketAddr, cfg: &LoginTlsConfig, request: &[u8], want_frames: usize) -> ClientRun {
    const CONN: Token = Token(1);
    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(16);
    let mut stream = TcpStream::connect(addr).unwrap();
    poll.registry().register(&mut stream, CONN, Interest::READABLE | Interest::WRITABLE).unwrap();
    let mut tls = LoginTls::new(stream, cfg, ChaCha20Rng::seed_from_u64(7));
    assert!(!tls.is_open());
    // Queued now, sent only once the server is verified.
    tls.send(&encode_frame(request).unwrap()).unwrap();

    let mut decoder = FrameDecoder::new();
    let mut frames = Vec::new();
    let mut ever_open = false;
    let deadline = Instant::now() + TIMEOUT;
    let result = loop {
        let result = tls.drive();
        ever_open |= tls.is_open();
        decoder.push(&tls.take_received());
        while let Some(frame) = decoder.next_frame().unwrap() {
            frames.push(frame);
        }
        if let Err(e) = result {
            assert!(!tls.is_open(), "a failed session must not be open");
            // The error stays.
            assert_same(&tls.drive(), &Err(e.clone()));
            assert_same(&tls.send(b"more"), &Err(e.clone()));
            break Err(e);
        }
        if frames.len() >= want_frames {
            break Ok(());
        }
        let interest = if tls.wants_write() { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
        poll.registry().reregister(tls.stream_mut(), CONN, interest).unwrap();
        assert!(Instant::now() < deadline, "the session neither finished nor failed in time");
        poll.poll(&mut events, Some(Duration::from_millis(100))).unwrap();
    };
    tls.close();
    assert!(!tls.is_open());
    assert!(tls.drive().is_err());
    poll.registry().deregister(tls.stream_mut()).unwrap();
    ClientRun { result, frames, ever_open }
}

/// A server presenting `chain` is refused for `why`: an error from drive(), never open,
/// and the queued request never reaches the server.
fn assert_refused(ca: &TestCa, chain: &[&[u8]], key: &KeyPair, why: VerifyError) {
    let (addr, server) = spawn_server(server_config(ca, chain, key, false), Some(LOGIN_RESPONSE));
    let run = run_client(addr, &password_config(ca), LOGIN_REQUEST, 1);
    assert_same(&run.result, &Err(LoginTlsError::Refused(why)));
    assert!(!run.ever_open);
    assert!(run.frames.is_empty());
    let saw = server.join().unwrap();
    assert!(saw.received.is_empty(), "the server got plaintext from a refusing client");
    // The server did not get a session either.
    assert!(saw.error.is_some());
}

// ---------------------------------------------------------------------------------------
// Logins that work
// ---------------------------------------------------------------------------------------

/// (i) A password-style login (no client certificate): framed messages both ways.
#[test]
fn password_login_exchanges_frames() {
    let ca = ca("deployment CA");
    let server = as_cert(&ca);
    let (addr, handle) = spawn_server(server_config(&ca, &[&server.der], &server.key, false), Some(LOGIN_RESPONSE));
    let mut cfg = password_config(&ca);
    cfg.unix_time = Some(unix_now());
    cfg.check().unwrap();
    let run = run_client(addr, &cfg, LOGIN_REQUEST, 1);
    assert_same(&run.result, &Ok(()));
    assert!(run.ever_open);
    assert_eq!(run.frames, vec![LOGIN_RESPONSE.to_vec()]);
    let saw = handle.join().unwrap();
    assert_eq!(saw.client_cert, None);
    assert_eq!(saw.received, vec![LOGIN_REQUEST.to_vec()]);
}

/// A server that sends the CA certificate after its own is accepted too, and a message
/// larger than a TLS record crosses both ways.
#[test]
fn chain_with_the_ca_on_top_and_large_messages() {
    let ca = ca("deployment CA");
    let server = as_cert(&ca);
    let big: &'static [u8] = Box::leak(vec![0x5a; 40_000].into_boxed_slice());
    let (addr, handle) = spawn_server(server_config(&ca, &[&server.der, &ca.der], &server.key, false), Some(big));
    let run = run_client(addr, &password_config(&ca), &vec![0xa5; 30_000], 1);
    assert_same(&run.result, &Ok(()));
    assert_eq!(run.frames, vec![big.to_vec()]);
    assert_eq!(handle.join().unwrap().received, vec![vec![0xa5; 30_000]]);
}

/// (ii) A device-certificate login: the server requires client authentication and sees the
/// device's certificate.
#[test]
fn device_certificate_login() {
    let ca = ca("deployment CA");
    let server = as_cert(&ca);
    let device = device_cert(&ca);
    let (addr, handle) = spawn_server(server_config(&ca, &[&server.der], &server.key, true), Some(LOGIN_RESPONSE));
    let cfg = LoginTlsConfig {
        ca_der: ca.der.clone(),
        server_name: AS_NAME.into(),
        client: Some(ClientCert { chain_der: vec![device.der.clone()], key: device.secret_key() }),
        unix_time: Some(unix_now()),
    };
    cfg.check().unwrap();
    let run = run_client(addr, &cfg, b"{\"device\":true}", 1);
    assert_same(&run.result, &Ok(()));
    assert_eq!(run.frames, vec![LOGIN_RESPONSE.to_vec()]);
    let saw = handle.join().unwrap();
    assert_eq!(saw.client_cert, Some(device.der.clone()));
    assert_eq!(saw.received, vec![b"{\"device\":true}".to_vec()]);
}

/// A device key that is not the certificate's is a configuration error, found before any
/// connection and again by the session.
#[test]
fn mismatched_device_key_is_a_configuration_error() {
    let ca = ca("deployment CA");
    let device = device_cert(&ca);
    let other = device_cert(&ca);
    let cfg = LoginTlsConfig {
        ca_der: ca.der.clone(),
        server_name: AS_NAME.into(),
        client: Some(ClientCert { chain_der: vec![device.der.clone()], key: other.secret_key() }),
        unix_time: None,
    };
    assert!(matches!(cfg.check(), Err(LoginTlsError::ClientCert(_))));
    let server = as_cert(&ca);
    let (addr, handle) = spawn_server(server_config(&ca, &[&server.der], &server.key, true), None);
    let run = run_client(addr, &cfg, b"x", 1);
    assert!(matches!(run.result, Err(LoginTlsError::ClientCert(_))));
    assert!(!run.ever_open);
    assert!(handle.join().unwrap().received.is_empty());

    let mut bad_ca = password_config(&ca);
    bad_ca.ca_der = device.der.clone();
    assert!(matches!(bad_ca.check(), Err(LoginTlsError::Config(VerifyError::BadCa(_)))));
}

// ---------------------------------------------------------------------------------------
// Servers that are refused
// ---------------------------------------------------------------------------------------

/// (iii) Hole 3: a device's own CA-issued (clientAuth) certificate signs a fake AS
/// certificate; the chain verifies by signatures alone, but the device is no CA.
#[test]
fn chain_signed_by_a_device_certificate_is_refused() {
    let ca = ca("deployment CA");
    let device = device_cert(&ca);
    let fake = issue(&device.as_issuer(), leaf_params(Some("as"), AS_NAME, server_eku()));
    assert_refused(&ca, &[&fake.der, &device.der], &fake.key, VerifyError::NotCa { depth: 1 });
}

/// (iv) An AS certificate from another CA.
#[test]
fn certificate_from_another_ca_is_refused() {
    let ca = ca("deployment CA");
    let other = self::ca("another CA");
    let foreign = as_cert(&other);
    assert_refused(&ca, &[&foreign.der], &foreign.key, VerifyError::NotSignedByCa);
    // Sending the other CA along does not help.
    assert_refused(&ca, &[&foreign.der, &other.der], &foreign.key, VerifyError::NotSignedByCa);
}

/// (v) A deployment certificate that is not the AS's: another role, no role, another
/// name, no serverAuth.
#[test]
fn certificate_not_for_the_as_is_refused() {
    let ca = ca("deployment CA");
    let dc = issue(&ca.issuer, leaf_params(Some("dc"), AS_NAME, server_eku()));
    assert_refused(&ca, &[&dc.der], &dc.key, VerifyError::WrongRole { found: Some("urn:ntmobile:role:dc".into()) });

    let no_role = issue(&ca.issuer, leaf_params(None, AS_NAME, server_eku()));
    assert_refused(&ca, &[&no_role.der], &no_role.key, VerifyError::WrongRole { found: None });

    let other_name = issue(&ca.issuer, leaf_params(Some("as"), "as2.example.net", server_eku()));
    assert_refused(
        &ca,
        &[&other_name.der],
        &other_name.key,
        VerifyError::WrongName { found: Some("as2.example.net".into()) },
    );

    let client_only = issue(&ca.issuer, leaf_params(Some("as"), AS_NAME, vec![ExtendedKeyUsagePurpose::ClientAuth]));
    assert_refused(&ca, &[&client_only.der], &client_only.key, VerifyError::NotServerAuth);

    // A device certificate presented as the server's own.
    let device = device_cert(&ca);
    assert_refused(&ca, &[&device.der], &device.key, VerifyError::NotServerAuth);
}

/// (vi) A CA-less chain: a self-signed certificate that says all the right things.
#[test]
fn self_signed_certificate_is_refused() {
    let ca = ca("deployment CA");
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let self_signed = leaf_params(Some("as"), AS_NAME, server_eku()).self_signed(&key).unwrap().der().to_vec();
    assert_refused(&ca, &[&self_signed], &key, VerifyError::NotSignedByCa);
}

/// With a clock, an AS certificate outside its validity is refused.
#[test]
fn expired_certificate_is_refused_with_a_clock() {
    let ca = ca("deployment CA");
    let mut params = leaf_params(Some("as"), AS_NAME, server_eku());
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let expired = issue(&ca.issuer, params);
    let (addr, handle) = spawn_server(server_config(&ca, &[&expired.der], &expired.key, false), None);
    let mut cfg = password_config(&ca);
    cfg.unix_time = Some(unix_now());
    let run = run_client(addr, &cfg, LOGIN_REQUEST, 1);
    assert_same(&run.result, &Err(LoginTlsError::Refused(VerifyError::Expired { depth: Some(0) })));
    assert!(!run.ever_open);
    assert!(handle.join().unwrap().received.is_empty());

    // Without a clock the dates are not checked (documented).
    let (addr, handle) = spawn_server(server_config(&ca, &[&expired.der], &expired.key, false), Some(LOGIN_RESPONSE));
    let run = run_client(addr, &password_config(&ca), LOGIN_REQUEST, 1);
    assert_same(&run.result, &Ok(()));
    assert_eq!(handle.join().unwrap().received, vec![LOGIN_REQUEST.to_vec()]);
}

/// Nobody listening: a socket error from drive(), not a hang.
#[test]
fn connection_refused_is_an_io_error() {
    let ca = ca("deployment CA");
    let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let run = run_client(addr, &password_config(&ca), LOGIN_REQUEST, 1);
    assert_same(&run.result, &Err(LoginTlsError::Io(std::io::ErrorKind::ConnectionRefused)));
    assert!(!run.ever_open);
}

// ---------------------------------------------------------------------------------------
// Hole 2: a server that skips Certificate and/or CertificateVerify
// ---------------------------------------------------------------------------------------

/// (vii) A man in the middle has no AS key: it finishes the handshake without Certificate
/// and CertificateVerify. embedded-tls's open() succeeds; the session is refused.
#[test]
fn finished_without_certificate_is_refused() {
    let ca = ca("deployment CA");
    let (addr, server) = fake_server::spawn(fake_server::Script { chain: vec![], request_client_cert: false });
    let run = run_client(addr, &password_config(&ca), LOGIN_REQUEST, 1);
    assert_same(
        &run.result,
        &Err(LoginTlsError::Refused(VerifyError::NotVerified { certificate: false, signature: false })),
    );
    assert!(!run.ever_open);
    let saw = server.join().unwrap();
    // The client's Finished, and nothing after it: the request never left.
    assert_eq!(saw.client_handshake, vec![20]);
    assert_eq!(saw.other_records, 0);
}

/// (vii) The real AS certificate replayed, but no CertificateVerify (the impostor cannot
/// sign): refused after open().
#[test]
fn certificate_without_certificate_verify_is_refused() {
    let ca = ca("deployment CA");
    let server = as_cert(&ca);
    let (addr, fake) =
        fake_server::spawn(fake_server::Script { chain: vec![server.der.clone()], request_client_cert: false });
    let run = run_client(addr, &password_config(&ca), LOGIN_REQUEST, 1);
    assert_same(
        &run.result,
        &Err(LoginTlsError::Refused(VerifyError::NotVerified { certificate: true, signature: false })),
    );
    assert!(!run.ever_open);
    let saw = fake.join().unwrap();
    assert_eq!(saw.client_handshake, vec![20]);
    assert_eq!(saw.other_records, 0);
}

/// An unauthenticated server that asks for a client certificate gets an empty Certificate
/// message: the device certificate is not disclosed, nothing is signed for it.
#[test]
fn device_certificate_is_not_shown_to_an_unverified_server() {
    let ca = ca("deployment CA");
    let device = device_cert(&ca);
    let (addr, fake) = fake_server::spawn(fake_server::Script { chain: vec![], request_client_cert: true });
    let cfg = LoginTlsConfig {
        ca_der: ca.der.clone(),
        server_name: AS_NAME.into(),
        client: Some(ClientCert { chain_der: vec![device.der.clone()], key: device.secret_key() }),
        unix_time: None,
    };
    let run = run_client(addr, &cfg, b"{\"device\":true}", 1);
    assert_same(
        &run.result,
        &Err(LoginTlsError::Refused(VerifyError::NotVerified { certificate: false, signature: false })),
    );
    assert!(!run.ever_open);
    let saw = fake.join().unwrap();
    // Certificate (empty), Finished; no CertificateVerify.
    assert_eq!(saw.client_handshake, vec![11, 20]);
    assert_eq!(saw.client_cert_entries, Some(0));
    assert_eq!(saw.other_records, 0);
}

/// Just enough of a TLS 1.3 server (RFC 8446) to finish a handshake with embedded-tls while
/// leaving out Certificate and/or CertificateVerify, and to read what the client sends back
/// with the client handshake keys.
mod fake_server {
    use aes_gcm::aead::{AeadInPlace, KeyInit};
    use aes_gcm::{Aes128Gcm, Nonce};
    use hkdf::Hkdf;
    use hmac::{Hmac, Mac};
    use p256::ecdh::EphemeralSecret;
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    use sha2::{Digest, Sha256};
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::thread::JoinHandle;

    /// What to send after EncryptedExtensions (then Finished; never CertificateVerify).
    pub struct Script {
        /// Certificate entries; empty: no Certificate message.
        pub chain: Vec<Vec<u8>>,
        /// Send a CertificateRequest.
        pub request_client_cert: bool,
    }

    /// What the client sent after the server's flight.
    #[derive(Debug, Default)]
    pub struct Saw {
        /// Types of the handshake messages, in order.
        pub client_handshake: Vec<u8>,
        /// Entries in the client's Certificate message, if it sent one.
        pub client_cert_entries: Option<usize>,
        /// Records that are not handshake messages under the handshake keys: application data
        /// (or alerts).
        pub other_records: usize,
    }

    pub fn spawn(script: Script) -> (SocketAddr, JoinHandle<Saw>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        (addr, std::thread::spawn(move || serve(&listener, &script)))
    }

    fn expand_label(secret: &[u8], label: &str, context: &[u8], len: usize) -> Vec<u8> {
        let label = format!("tls13 {label}");
        let mut info = Vec::new();
        info.extend_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
        info.push(u8::try_from(label.len()).unwrap());
        info.extend_from_slice(label.as_bytes());
        info.push(u8::try_from(context.len()).unwrap());
        info.extend_from_slice(context);
        let mut out = vec![0u8; len];
        Hkdf::<Sha256>::from_prk(secret).unwrap().expand(&info, &mut out).unwrap();
        out
    }

    fn handshake(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut msg = vec![kind];
        msg.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
        msg.extend_from_slice(body);
        msg
    }

    fn record(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![kind, 3, 3];
        out.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn read_record(tcp: &mut TcpStream) -> Option<([u8; 5], Vec<u8>)> {
        let mut header = [0u8; 5];
        tcp.read_exact(&mut header).ok()?;
        let mut body = vec![0u8; usize::from(u16::from_be_bytes([header[3], header[4]]))];
        tcp.read_exact(&mut body).ok()?;
        Some((header, body))
    }

    /// One direction's handshake traffic keys.
    struct Keys {
        cipher: Aes128Gcm,
        iv: [u8; 12],
        seq: u64,
    }

    impl Keys {
        fn new(traffic_secret: &[u8]) -> Keys {
            let key = expand_label(traffic_secret, "key", &[], 16);
            let mut iv = [0u8; 12];
            iv.copy_from_slice(&expand_label(traffic_secret, "iv", &[], 12));
            Keys { cipher: Aes128Gcm::new_from_slice(&key).unwrap(), iv, seq: 0 }
        }

        fn nonce(&mut self) -> [u8; 12] {
            let mut nonce = self.iv;
            for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
                *n ^= s;
            }
            self.seq += 1;
            nonce
        }

        fn seal(&mut self, content_type: u8, plaintext: &[u8]) -> Vec<u8> {
            let mut body = plaintext.to_vec();
            body.push(content_type);
            let len = u16::try_from(body.len() + 16).unwrap().to_be_bytes();
            let aad = [23, 3, 3, len[0], len[1]];
            let nonce = self.nonce();
            self.cipher.encrypt_in_place(Nonce::from_slice(&nonce), &aad, &mut body).unwrap();
            record(23, &body)
        }

        fn open(&mut self, header: [u8; 5], body: &[u8]) -> Option<(u8, Vec<u8>)> {
            let mut plain = body.to_vec();
            let mut nonce = self.iv;
            for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
                *n ^= s;
            }
            self.cipher.decrypt_in_place(Nonce::from_slice(&nonce), &header, &mut plain).ok()?;
            self.seq += 1;
            while plain.last() == Some(&0) {
                plain.pop();
            }
            let content_type = plain.pop()?;
            Some((content_type, plain))
        }
    }

    /// (legacy_session_id, the client's secp256r1 key share) from a ClientHello body.
    fn parse_client_hello(body: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut at = 2 + 32;
        let sid_len = usize::from(body[at]);
        let session_id = body[at + 1..at + 1 + sid_len].to_vec();
        at += 1 + sid_len;
        at += 2 + usize::from(u16::from_be_bytes([body[at], body[at + 1]]));
        at += 1 + usize::from(body[at]);
        let end = at + 2 + usize::from(u16::from_be_bytes([body[at], body[at + 1]]));
        at += 2;
        while at < end {
            let kind = u16::from_be_bytes([body[at], body[at + 1]]);
            let len = usize::from(u16::from_be_bytes([body[at + 2], body[at + 3]]));
            let data = &body[at + 4..at + 4 + len];
            if kind == 0x0033 {
                let mut i = 2;
                while i < data.len() {
                    let group = u16::from_be_bytes([data[i], data[i + 1]]);
                    let klen = usize::from(u16::from_be_bytes([data[i + 2], data[i + 3]]));
                    if group == 0x0017 {
                        return (session_id, data[i + 4..i + 4 + klen].to_vec());
                    }
                    i += 4 + klen;
                }
            }
            at += 4 + len;
        }
        panic!("no secp256r1 key share in the ClientHello");
    }

    fn serve(listener: &TcpListener, script: &Script) -> Saw {
        let (mut tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(super::TIMEOUT)).unwrap();
        let (header, client_hello) = read_record(&mut tcp).unwrap();
        assert_eq!(header[0], 22);
        assert_eq!(client_hello[0], 1);
        let (session_id, client_share) = parse_client_hello(&client_hello[4..]);

        let secret = EphemeralSecret::random(&mut rand_core::OsRng);
        let shared = secret.diffie_hellman(&p256::PublicKey::from_sec1_bytes(&client_share).unwrap());
        let point = secret.public_key().to_encoded_point(false);
        let mut extensions = vec![0x00, 0x2b, 0, 2, 3, 4, 0x00, 0x33];
        extensions.extend_from_slice(&u16::try_from(4 + point.len()).unwrap().to_be_bytes());
        extensions.extend_from_slice(&[0x00, 0x17]);
        extensions.extend_from_slice(&u16::try_from(point.len()).unwrap().to_be_bytes());
        extensions.extend_from_slice(point.as_bytes());
        let mut body = vec![3, 3];
        body.extend_from_slice(&[0x42; 32]);
        body.push(u8::try_from(session_id.len()).unwrap());
        body.extend_from_slice(&session_id);
        body.extend_from_slice(&[0x13, 0x01, 0]);
        body.extend_from_slice(&u16::try_from(extensions.len()).unwrap().to_be_bytes());
        body.extend_from_slice(&extensions);
        let server_hello = handshake(2, &body);
        tcp.write_all(&record(22, &server_hello)).unwrap();

        let mut transcript = Sha256::new();
        transcript.update(&client_hello);
        transcript.update(&server_hello);
        let (early, _) = Hkdf::<Sha256>::extract(Some(&[0u8; 32]), &[0u8; 32]);
        let derived = expand_label(&early, "derived", &Sha256::digest(b""), 32);
        let (handshake_secret, _) = Hkdf::<Sha256>::extract(Some(&derived), shared.raw_secret_bytes());
        let hello_hash = transcript.clone().finalize();
        let server_secret = expand_label(&handshake_secret, "s hs traffic", &hello_hash, 32);
        let client_secret = expand_label(&handshake_secret, "c hs traffic", &hello_hash, 32);

        let mut flight = Vec::new();
        let mut add = |msg: Vec<u8>, transcript: &mut Sha256| {
            transcript.update(&msg);
            flight.extend_from_slice(&msg);
        };
        add(handshake(8, &[0, 0]), &mut transcript);
        if script.request_client_cert {
            // Empty context; signature_algorithms: ecdsa_secp256r1_sha256.
            add(handshake(13, &[0, 0, 8, 0x00, 0x0d, 0, 4, 0, 2, 0x04, 0x03]), &mut transcript);
        }
        if !script.chain.is_empty() {
            let mut list = Vec::new();
            for der in &script.chain {
                list.extend_from_slice(&u32::try_from(der.len()).unwrap().to_be_bytes()[1..]);
                list.extend_from_slice(der);
                list.extend_from_slice(&[0, 0]);
            }
            let mut body = vec![0];
            body.extend_from_slice(&u32::try_from(list.len()).unwrap().to_be_bytes()[1..]);
            body.extend_from_slice(&list);
            add(handshake(11, &body), &mut transcript);
        }
        let finished_key = expand_label(&server_secret, "finished", &[], 32);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&finished_key).unwrap();
        mac.update(&transcript.clone().finalize());
        add(handshake(20, &mac.finalize().into_bytes()), &mut transcript);
        tcp.write_all(&Keys::new(&server_secret).seal(22, &flight)).unwrap();

        let mut saw = Saw::default();
        let mut client_keys = Keys::new(&client_secret);
        while let Some((header, body)) = read_record(&mut tcp) {
            match header[0] {
                20 => {} // change_cipher_spec (middlebox compatibility)
                23 => match client_keys.open(header, &body) {
                    Some((22, messages)) => {
                        let mut at = 0;
                        while at + 4 <= messages.len() {
                            let len = usize::from(u16::from_be_bytes([messages[at + 2], messages[at + 3]]));
                            let msg = &messages[at..at + 4 + len];
                            saw.client_handshake.push(msg[0]);
                            if msg[0] == 11 {
                                // context length, context, u24 list length, entries
                                let ctx = usize::from(msg[4]);
                                let list = &msg[4 + 1 + ctx + 3..];
                                let mut entries = 0;
                                let mut i = 0;
                                while i < list.len() {
                                    let n = usize::from(u16::from_be_bytes([list[i + 1], list[i + 2]]));
                                    i += 3 + n;
                                    i += 2 + usize::from(u16::from_be_bytes([list[i], list[i + 1]]));
                                    entries += 1;
                                }
                                saw.client_cert_entries = Some(entries);
                            }
                            at += 4 + len;
                        }
                    }
                    _ => saw.other_records += 1,
                },
                _ => saw.other_records += 1,
            }
        }
        saw
    }
}
