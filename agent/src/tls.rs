//! The agent's TLS 1.3 session to the Account Server for login (spec 4.1), non-blocking, for
//! the single-threaded mio loop. embedded-tls 0.19 does the TLS (TLS13_AES_128_GCM_SHA256 on
//! secp256r1, the only suite it offers for P-256); [`crate::verify`] decides whether the
//! server is our AS.
//!
//! **Driving.** embedded-tls's blocking API loses its state on `WouldBlock`, so its async API
//! is used instead: the whole session (handshake, then reading and writing application data)
//! is one future, polled with a no-op waker. It talks to an in-memory pipe, not to the socket:
//! its reads are pending while no ciphertext has arrived, its writes while the outgoing pipe
//! is full. [`LoginTls::drive`] moves ciphertext between the socket and the pipe and polls the
//! future, repeating while anything moves, and stops when the socket says `WouldBlock` and the
//! session waits. So the mio loop calls:
//!
//! - [`LoginTls::new`] with a freshly connected (connecting) `mio::net::TcpStream`, then
//!   registers [`LoginTls::stream_mut`] for READABLE | WRITABLE;
//! - [`LoginTls::drive`] on every event of the stream, and after [`LoginTls::send`] and
//!   [`LoginTls::take_received`] (which only queue and dequeue);
//! - [`LoginTls::take_received`] after each drive, and reregisters with WRITABLE while
//!   [`LoginTls::wants_write`];
//! - [`LoginTls::close`] when done (or after an error), then deregisters.
//!
//! **Security.** The session counts as open ([`LoginTls::is_open`]) only after embedded-tls's
//! `open()` returned *and* the verifier gave its proof that the server's certificate chain and
//! CertificateVerify were both checked (hole 2 of the shared notes); before that, plaintext
//! from [`LoginTls::send`] (a password, an ID token) stays queued and is never encrypted for
//! an unauthenticated server. The device certificate and its signature are offered only to a
//! server that has already proven itself. Every refusal is an `Err` from `drive()`, after
//! which the session stays failed. Nothing here logs keys or plaintext; plaintext queues and
//! the record buffers are zeroized when dropped.
//!
//! **Memory.** Two record buffers of [`READ_BUF`] and [`WRITE_BUF`] bytes (a full TLS record
//! each way, what embedded-tls needs), the session future (about 10 KB on x86_64: handshake
//! state and the verifier's copy of the chain), two ciphertext pipes of at most [`PIPE_MAX`]
//! bytes, and plaintext queues capped at [`SEND_MAX`] and [`RECV_MAX`]; past `RECV_MAX`
//! unread bytes the session stops reading until the application takes them. All of it exists
//! only while a login session does.

use crate::verify::{AsVerifier, ServerVerified, Suite, VerifyError};
use core::future::{poll_fn, Future};
use core::pin::{pin, Pin};
use core::task::{Context, Poll, Waker};
use embedded_io_async::Write as _;
use embedded_tls::alert::AlertDescription;
use embedded_tls::{
    Certificate, CryptoProvider, CryptoRngCore, SignatureScheme, TlsConfig, TlsConnection, TlsContext, TlsError,
    TlsReader, TlsVerifier, TlsWriter,
};
use mio::net::TcpStream;
use p256::ecdsa::signature::SignerMut;
use p256::ecdsa::{DerSignature, SigningKey};
use std::cell::RefCell;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::rc::Rc;
use zeroize::{Zeroize, Zeroizing};

/// Size of the read record buffer: the largest TLS record a server may send (2^14 bytes of
/// plaintext plus 256 of expansion), as embedded-tls asks.
pub const READ_BUF: usize = 16_640;

/// Size of the write record buffer. embedded-tls fills a record up to the buffer size less
/// its 128-byte allowance and the 5-byte header; more than 2^14 bytes of plaintext in one
/// record is a record_overflow for the server, so the buffer is exactly that large.
pub const WRITE_BUF: usize = (1 << 14) + embedded_tls::TLS_RECORD_OVERHEAD + 5;

/// Most ciphertext held between the socket and the session, each way.
pub const PIPE_MAX: usize = 4096;

/// Most plaintext [`LoginTls::send`] queues (one whole framed message of the largest size).
pub const SEND_MAX: usize = 2 + u16::MAX as usize;

/// Most received plaintext held until [`LoginTls::take_received`].
pub const RECV_MAX: usize = 2 + u16::MAX as usize;

/// Plaintext handed to embedded-tls per write.
const CHUNK: usize = 512;

/// The device credential for a certificate login: the device certificate (DER) and its
/// P-256 key.
#[derive(Clone)]
pub struct ClientCert {
    /// The device certificate first, as in a PEM file. Only `chain_der[0]` is sent:
    /// embedded-tls 0.19 sends one certificate, and device certificates are issued directly
    /// by the deployment CA (which is `pathlen:0`), so the AS needs no intermediate.
    pub chain_der: Vec<Vec<u8>>,
    /// The device key; signs the CertificateVerify. Secret.
    pub key: p256::SecretKey,
}

impl fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCert")
            .field("chain_der", &format_args!("{} certificate(s)", self.chain_der.len()))
            .field("key", &"<redacted>")
            .finish()
    }
}

/// What a login session needs: whom to trust, whom to expect, how to authenticate.
#[derive(Clone, Debug)]
pub struct LoginTlsConfig {
    /// The deployment CA certificate (DER): the only trust anchor.
    pub ca_der: Vec<u8>,
    /// The AS's name: its certificate's first SAN DNS name must be this (at most 64 bytes,
    /// a limit of embedded-tls). Also sent as SNI.
    pub server_name: String,
    /// The device certificate for a certificate login; `None` for password and OpenID
    /// Connect logins (the credential then travels in the Login Request).
    pub client: Option<ClientCert>,
    /// The current time (seconds since 1970) when a session starts, if the box has a clock it
    /// trusts; certificates' validity dates are checked only then. `None` (a router that
    /// booted without a clock) skips the date checks and nothing else.
    pub unix_time: Option<u64>,
}

impl LoginTlsConfig {
    /// Checks everything a session would check about our own side before talking to anyone:
    /// the CA is a CA certificate (in its validity, with a clock), the name fits, the device
    /// certificate exists and belongs to the key. For start-up; [`LoginTls::drive`] reports
    /// the same errors anyway.
    pub fn check(&self) -> Result<(), LoginTlsError> {
        AsVerifier::new(&self.ca_der, &self.server_name, self.unix_time).map_err(LoginTlsError::Config)?;
        if let Some(client) = &self.client {
            device_certificate(client)?;
        }
        Ok(())
    }
}

/// The device certificate to send, if it belongs to the key.
fn device_certificate(client: &ClientCert) -> Result<&[u8], LoginTlsError> {
    let cert = client.chain_der.first().ok_or(LoginTlsError::ClientCert("no device certificate"))?;
    let key = crate::verify::certificate_public_key(cert)
        .ok_or(LoginTlsError::ClientCert("the device certificate is not DER X.509"))?;
    let key = p256::PublicKey::from_sec1_bytes(key)
        .map_err(|_| LoginTlsError::ClientCert("the device certificate's key is not P-256"))?;
    if key != client.key.public_key() {
        return Err(LoginTlsError::ClientCert("the device key does not belong to the device certificate"));
    }
    Ok(cert)
}

/// Why a login session failed or ended. Says whose fault it is.
#[derive(Clone, Debug)]
pub enum LoginTlsError {
    /// Our configuration cannot work: the CA certificate or the AS name.
    Config(VerifyError),
    /// Our device certificate or key cannot be used.
    ClientCert(&'static str),
    /// The server is not our AS, or did not prove it: see the reason. Nothing was sent.
    Refused(VerifyError),
    /// The server broke TLS, sent an alert (`HandshakeAborted`: e.g. it refused our device
    /// certificate), or spoke something embedded-tls does not support.
    Tls(TlsError),
    /// The socket failed (connection refused, reset, ...).
    Io(io::ErrorKind),
    /// The server ended the stream (close_notify or EOF). During the handshake that is a
    /// refusal without an alert; after it, an ordinary end.
    PeerClosed {
        /// Whether the session was still in its handshake.
        during_handshake: bool,
    },
    /// [`LoginTls::close`] was called.
    LocalClosed,
    /// [`LoginTls::send`] would queue more than [`SEND_MAX`] bytes.
    QueueFull,
}

impl fmt::Display for LoginTlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoginTlsError::Config(e) => write!(f, "configuration: {e}"),
            LoginTlsError::ClientCert(why) => write!(f, "device certificate: {why}"),
            LoginTlsError::Refused(e) => write!(f, "server refused: {e}"),
            LoginTlsError::Tls(TlsError::HandshakeAborted(_, AlertDescription::CertificateRequired)) => {
                write!(f, "the server requires a device certificate")
            }
            LoginTlsError::Tls(TlsError::HandshakeAborted(level, alert)) => {
                write!(f, "the server aborted the handshake: {level:?} alert {alert:?}")
            }
            LoginTlsError::Tls(e) => write!(f, "TLS error: {e:?}"),
            LoginTlsError::Io(kind) => write!(f, "socket: {kind}"),
            LoginTlsError::PeerClosed { during_handshake: true } => {
                write!(f, "the server closed the connection during the handshake")
            }
            LoginTlsError::PeerClosed { during_handshake: false } => write!(f, "the server closed the session"),
            LoginTlsError::LocalClosed => write!(f, "the session was closed"),
            LoginTlsError::QueueFull => write!(f, "too much data queued for the server"),
        }
    }
}

impl std::error::Error for LoginTlsError {}

/// What the session future and [`LoginTls`] share. Never borrowed across an `.await`.
struct Shared {
    /// Ciphertext from the socket not yet read by the session.
    rx: Vec<u8>,
    /// The socket reached EOF.
    rx_eof: bool,
    /// Ciphertext from the session not yet written to the socket.
    tx: Vec<u8>,
    /// Plaintext queued by `send`.
    send: Zeroizing<Vec<u8>>,
    /// Plaintext received and not yet taken.
    recv: Zeroizing<Vec<u8>>,
    /// The handshake is done and the server verified.
    open: bool,
    /// `close` asked the session to send close_notify and end.
    close: bool,
}

impl Shared {
    /// What changes when the session makes progress.
    fn progress_mark(&self) -> (usize, usize, usize, usize, bool) {
        (self.rx.len(), self.tx.len(), self.send.len(), self.recv.len(), self.open)
    }
}

/// Appends secret bytes without leaving a copy behind in a freed allocation.
fn push_secret(queue: &mut Zeroizing<Vec<u8>>, bytes: &[u8]) {
    let needed = queue.len() + bytes.len();
    if queue.capacity() < needed {
        let mut grown = Zeroizing::new(Vec::with_capacity(needed.next_power_of_two()));
        grown.extend_from_slice(queue);
        // The old allocation is zeroized as it drops.
        *queue = grown;
    }
    queue.extend_from_slice(bytes);
}

/// The session's transport: the in-memory pipe to [`LoginTls`], pending where a socket
/// would say `WouldBlock`.
#[derive(Clone)]
struct Pipe(Rc<RefCell<Shared>>);

impl embedded_io::ErrorType for Pipe {
    type Error = embedded_io::ErrorKind;
}

impl embedded_io_async::Read for Pipe {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        poll_fn(|_| {
            let mut s = self.0.borrow_mut();
            if buf.is_empty() {
                return Poll::Ready(Ok(0));
            }
            if s.rx.is_empty() {
                // EOF reads as 0 bytes, which embedded-tls reports as IoError.
                return if s.rx_eof { Poll::Ready(Ok(0)) } else { Poll::Pending };
            }
            let n = buf.len().min(s.rx.len());
            // Cannot panic: n <= both lengths.
            buf[..n].copy_from_slice(&s.rx[..n]);
            s.rx.drain(..n);
            Poll::Ready(Ok(n))
        })
        .await
    }
}

impl embedded_io_async::Write for Pipe {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        poll_fn(|_| {
            let mut s = self.0.borrow_mut();
            let room = PIPE_MAX.saturating_sub(s.tx.len());
            if buf.is_empty() {
                return Poll::Ready(Ok(0));
            }
            if room == 0 {
                return Poll::Pending;
            }
            let n = room.min(buf.len());
            // Cannot panic: n <= buf.len().
            s.tx.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        })
        .await
    }

    async fn flush(&mut self) -> Result<(), Self::Error> {
        // The bytes are in the pipe; drive() writes them to the socket after each poll.
        Ok(())
    }
}

/// The crypto provider: always the AS verifier (hole 1: there is no "no verifier"), and the
/// device credential only for a server that has already proven itself.
struct LoginProvider<'a, R> {
    rng: R,
    verifier: AsVerifier<'a>,
    client: Option<(&'a [u8], &'a p256::SecretKey)>,
}

impl<R: CryptoRngCore> CryptoProvider for LoginProvider<'_, R> {
    type CipherSuite = Suite;
    type Signature = DerSignature;

    fn rng(&mut self) -> impl CryptoRngCore {
        &mut self.rng
    }

    fn verifier(&mut self) -> Result<&mut impl TlsVerifier<Suite>, TlsError> {
        Ok(&mut self.verifier)
    }

    fn signer(&mut self) -> Result<(impl SignerMut<DerSignature>, SignatureScheme), TlsError> {
        match self.client {
            Some((_, key)) if self.verifier.is_verified() => {
                Ok((SigningKey::from(key), SignatureScheme::EcdsaSecp256r1Sha256))
            }
            _ => Err(TlsError::InvalidPrivateKey),
        }
    }

    fn client_cert(&mut self) -> Option<Certificate<impl AsRef<[u8]>>> {
        // embedded-tls asks for it after the server's Finished; an empty Certificate goes to
        // a server that has not proven itself (the session is then refused anyway).
        match self.client {
            Some((cert, _)) if self.verifier.is_verified() => Some(Certificate::X509(cert)),
            _ => None,
        }
    }
}

/// What a session owns: copies of the configuration, so that the future is `'static`.
struct Setup {
    ca_der: Vec<u8>,
    server_name: String,
    client: Option<ClientCert>,
    unix_time: Option<u64>,
}

type Session = Pin<Box<dyn Future<Output = Result<(), LoginTlsError>>>>;

/// The whole session: handshake, proof of verification, then application data both ways
/// until the peer closes or `close` asks for close_notify.
async fn session<R: CryptoRngCore>(shared: Rc<RefCell<Shared>>, setup: Setup, rng: R) -> Result<(), LoginTlsError> {
    let verifier =
        AsVerifier::new(&setup.ca_der, &setup.server_name, setup.unix_time).map_err(LoginTlsError::Config)?;
    let client = match &setup.client {
        Some(c) => Some((device_certificate(c)?, &c.key)),
        None => None,
    };
    let mut provider = LoginProvider { rng, verifier, client };
    let config = TlsConfig::new().with_server_name(&setup.server_name);
    let mut read_buf = Zeroizing::new(vec![0u8; READ_BUF]);
    let mut write_buf = Zeroizing::new(vec![0u8; WRITE_BUF]);
    let mut conn: TlsConnection<'_, Pipe, Suite> =
        TlsConnection::new(Pipe(shared.clone()), &mut read_buf, &mut write_buf);

    if let Err(e) = conn.open(TlsContext::new(&config, &mut provider)).await {
        return Err(match provider.verifier.failure() {
            Some(refusal) => LoginTlsError::Refused(refusal.clone()),
            None => tls_error(e, &shared, true),
        });
    }
    // Hole 2: open() also returns after a server Finished that came without Certificate or
    // CertificateVerify; only the verifier's proof opens the session.
    let _proof: ServerVerified = provider.verifier.proof().map_err(|e| {
        log::warn!("AS {}: {e}", setup.server_name);
        LoginTlsError::Refused(e)
    })?;
    shared.borrow_mut().open = true;
    log::debug!("TLS session with the AS {} open", setup.server_name);

    {
        let (mut reader, mut writer) = conn.split();
        let receiving = pin!(receive(&mut reader, &shared));
        let transmitting = pin!(transmit(&mut writer, &shared));
        first(receiving, transmitting).await?;
    }
    // close() asked for the end: close_notify, best effort.
    let _ = conn.close().await;
    Ok(())
}

/// Moves received plaintext to the shared queue, pausing while the application has not taken
/// [`RECV_MAX`] bytes.
async fn receive(reader: &mut TlsReader<'_, Pipe, Suite>, shared: &Rc<RefCell<Shared>>) -> Result<(), LoginTlsError> {
    loop {
        poll_fn(|_| if shared.borrow().recv.len() < RECV_MAX { Poll::Ready(()) } else { Poll::Pending }).await;
        let mut buffer = reader.read_buffered().await.map_err(|e| tls_error(e, shared, false))?;
        let mut s = shared.borrow_mut();
        let room = RECV_MAX.saturating_sub(s.recv.len());
        push_secret(&mut s.recv, buffer.pop(room));
        // Dropping `buffer` consumes what was popped; the rest stays for the next round.
    }
}

/// Encrypts queued plaintext in chunks; returns once `close` asks and all is flushed.
async fn transmit(writer: &mut TlsWriter<'_, Pipe, Suite>, shared: &Rc<RefCell<Shared>>) -> Result<(), LoginTlsError> {
    let mut chunk = Zeroizing::new([0u8; CHUNK]);
    loop {
        let taken = poll_fn(|_| {
            let mut s = shared.borrow_mut();
            if s.send.is_empty() {
                return if s.close { Poll::Ready(None) } else { Poll::Pending };
            }
            let n = s.send.len().min(CHUNK);
            // Cannot panic: n <= CHUNK and n <= s.send.len().
            chunk[..n].copy_from_slice(&s.send[..n]);
            s.send.drain(..n);
            Poll::Ready(Some(n))
        })
        .await;
        let Some(n) = taken else {
            writer.flush().await.map_err(|e| tls_error(e, shared, false))?;
            return Ok(());
        };
        // Cannot panic: n <= CHUNK.
        writer.write_all(&chunk[..n]).await.map_err(|e| tls_error(e, shared, false))?;
        if shared.borrow().send.is_empty() {
            writer.flush().await.map_err(|e| tls_error(e, shared, false))?;
        }
    }
}

/// Polls both futures; the first to finish ends both.
async fn first<T>(mut a: Pin<&mut impl Future<Output = T>>, mut b: Pin<&mut impl Future<Output = T>>) -> T {
    poll_fn(|cx| match a.as_mut().poll(cx) {
        Poll::Ready(r) => Poll::Ready(r),
        Poll::Pending => b.as_mut().poll(cx),
    })
    .await
}

/// Names an embedded-tls error by its cause.
fn tls_error(e: TlsError, shared: &Rc<RefCell<Shared>>, during_handshake: bool) -> LoginTlsError {
    match e {
        // close_notify, or EOF (embedded-tls reports a 0-byte read as IoError).
        TlsError::ConnectionClosed => LoginTlsError::PeerClosed { during_handshake },
        TlsError::IoError if shared.borrow().rx_eof => LoginTlsError::PeerClosed { during_handshake },
        e => LoginTlsError::Tls(e),
    }
}

/// A TLS 1.3 login session to the AS over a non-blocking TCP stream (see the module
/// documentation for how the mio loop drives it).
pub struct LoginTls {
    stream: TcpStream,
    shared: Rc<RefCell<Shared>>,
    /// The session future; `None` once it has ended.
    session: Option<Session>,
    /// Why the session ended, once it has.
    ended: Option<LoginTlsError>,
}

impl fmt::Debug for LoginTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginTls")
            .field("stream", &self.stream)
            .field("open", &self.is_open())
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl LoginTls {
    /// A session over `stream` (connected or still connecting, non-blocking). Nothing happens
    /// until [`LoginTls::drive`]; configuration errors are reported there (or up front by
    /// [`LoginTlsConfig::check`]). `rng` makes the ephemeral key share and the random.
    pub fn new(stream: TcpStream, cfg: &LoginTlsConfig, rng: impl CryptoRngCore + 'static) -> Self {
        let shared = Rc::new(RefCell::new(Shared {
            rx: Vec::new(),
            rx_eof: false,
            tx: Vec::new(),
            send: Zeroizing::new(Vec::new()),
            recv: Zeroizing::new(Vec::new()),
            open: false,
            close: false,
        }));
        let setup = Setup {
            ca_der: cfg.ca_der.clone(),
            server_name: cfg.server_name.clone(),
            client: cfg.client.clone(),
            unix_time: cfg.unix_time,
        };
        let session: Session = Box::pin(session(shared.clone(), setup, rng));
        LoginTls { stream, shared, session: Some(session), ended: None }
    }

    /// The stream, to register with mio (and to deregister after [`LoginTls::close`]).
    pub fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Does all the work the socket allows: reads ciphertext until `WouldBlock`, runs the
    /// handshake or moves application data, writes ciphertext until `WouldBlock`. Call it on
    /// every event of the stream and after [`LoginTls::send`] and [`LoginTls::take_received`].
    ///
    /// `Err` means the session is over (and stays over: every later call returns the same
    /// error): a refused server, a TLS or socket error, the peer's close. Received plaintext
    /// may still be waiting in [`LoginTls::take_received`].
    pub fn drive(&mut self) -> Result<(), LoginTlsError> {
        if let Some(e) = &self.ended {
            return Err(e.clone());
        }
        match self.pump() {
            Ok(()) => Ok(()),
            Err(e) => {
                // Best effort: an alert the session queued on its way out.
                let _ = self.write_socket();
                self.end(e.clone());
                Err(e)
            }
        }
    }

    fn pump(&mut self) -> Result<(), LoginTlsError> {
        loop {
            let read = self.read_socket()?;
            let polled = self.poll_session()?;
            let written = self.write_socket()?;
            if !read && !polled && !written {
                return Ok(());
            }
        }
    }

    /// Reads until `WouldBlock`, EOF, or a full pipe. Whether anything arrived.
    fn read_socket(&mut self) -> Result<bool, LoginTlsError> {
        let mut s = self.shared.borrow_mut();
        let mut progress = false;
        let mut buf = [0u8; 2048];
        while !s.rx_eof && s.rx.len() < PIPE_MAX {
            let room = (PIPE_MAX - s.rx.len()).min(buf.len());
            // Cannot panic: room <= buf.len().
            match self.stream.read(&mut buf[..room]) {
                Ok(0) => {
                    s.rx_eof = true;
                    progress = true;
                }
                Ok(n) => {
                    // Cannot panic: n <= room.
                    s.rx.extend_from_slice(&buf[..n]);
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(LoginTlsError::Io(e.kind())),
            }
        }
        Ok(progress)
    }

    /// Writes the pipe until `WouldBlock`. Whether anything left.
    fn write_socket(&mut self) -> Result<bool, LoginTlsError> {
        let mut s = self.shared.borrow_mut();
        let mut progress = false;
        while !s.tx.is_empty() {
            match self.stream.write(&s.tx) {
                Ok(0) => return Err(LoginTlsError::Io(io::ErrorKind::WriteZero)),
                Ok(n) => {
                    let n = n.min(s.tx.len());
                    s.tx.drain(..n);
                    progress = true;
                }
                // Also while the TCP connection is still being set up.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(LoginTlsError::Io(e.kind())),
            }
        }
        Ok(progress)
    }

    /// Polls the session once. Whether it made progress; `Err` if it failed.
    fn poll_session(&mut self) -> Result<bool, LoginTlsError> {
        let Some(session) = self.session.as_mut() else { return Ok(false) };
        let before = self.shared.borrow().progress_mark();
        let mut cx = Context::from_waker(Waker::noop());
        match session.as_mut().poll(&mut cx) {
            Poll::Pending => Ok(self.shared.borrow().progress_mark() != before),
            Poll::Ready(Ok(())) => {
                // Only close() ends a session without error.
                self.session = None;
                Ok(true)
            }
            Poll::Ready(Err(e)) => Err(e),
        }
    }

    fn end(&mut self, why: LoginTlsError) {
        // Dropping the future zeroizes the record buffers.
        self.session = None;
        let mut s = self.shared.borrow_mut();
        s.open = false;
        s.send.zeroize();
        self.ended.get_or_insert(why);
    }

    /// Whether the handshake is done and the server was verified as our AS (only then does
    /// queued plaintext leave).
    pub fn is_open(&self) -> bool {
        self.ended.is_none() && self.shared.borrow().open
    }

    /// Queues plaintext for the server; it is encrypted and sent by [`LoginTls::drive`] once
    /// the session is open, never before. Refuses more than [`SEND_MAX`] queued bytes, and any
    /// bytes once the session has ended.
    pub fn send(&mut self, plaintext: &[u8]) -> Result<(), LoginTlsError> {
        if let Some(e) = &self.ended {
            return Err(e.clone());
        }
        let mut s = self.shared.borrow_mut();
        if s.send.len().saturating_add(plaintext.len()) > SEND_MAX {
            return Err(LoginTlsError::QueueFull);
        }
        push_secret(&mut s.send, plaintext);
        Ok(())
    }

    /// The plaintext received since the last call (zeroized when the caller drops it).
    pub fn take_received(&mut self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(std::mem::take(&mut *self.shared.borrow_mut().recv))
    }

    /// Whether ciphertext waits for the socket to become writable (register WRITABLE).
    pub fn wants_write(&self) -> bool {
        !self.shared.borrow().tx.is_empty()
    }

    /// Ends the session: sends close_notify if it is open (best effort, without waiting),
    /// shuts the stream down and drops all session state. Later calls of `drive` and `send`
    /// return [`LoginTlsError::LocalClosed`] (or the error that ended the session before).
    pub fn close(&mut self) {
        if self.ended.is_none() && self.session.is_some() && self.shared.borrow().open {
            self.shared.borrow_mut().close = true;
            let _ = self.pump();
        }
        let _ = self.stream.shutdown(Shutdown::Both);
        self.end(LoginTlsError::LocalClosed);
    }
}
