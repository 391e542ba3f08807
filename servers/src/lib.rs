//! The NTMobile servers as daemons: thin drivers around the library's engines, and the
//! deployment CA's command.
//!
//! Every daemon has the shared parts:
//! - [`config`]: one JSON file per daemon, with one-line errors naming the bad field.
//! - [`pki`]: reading and checking certificates and keys, the rustls configurations, and
//!   the identity a certificate grants.
//! - [`driver`]: one mio event loop hosting any engine: UDP, TCP and TLS streams,
//!   DNS, timers, signals and the status socket.
//! - [`privs`]: dropping root once a daemon has started (the `user` field).
//!
//! Each role is a cargo feature, and each binary requires its own (`required-features`),
//! so that a build of one daemon compiles only what it uses: `as` (accounts in SQLite,
//! argon2, OpenID Connect), `dc` (registrations in SQLite), `rs`, `ns`, and `ca` (issuing
//! certificates with rcgen: `ntm-ca`, and `ntm-as ca`). The default builds all of them.
//! - [`daemon`]: the daemons, one module per role.
//! - [`store`]: the embedded databases, one per role that keeps state.
//! - [`ca`]: the deployment CA.
//! - [`oidc`]: OpenID Connect ID tokens, a login credential of the AS (feature `oidc`,
//!   part of `as`; the simulator uses it alone).

#[cfg(any(feature = "as", feature = "ca"))]
pub mod admin;
#[cfg(feature = "ca")]
pub mod ca;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod driver;
#[cfg(feature = "oidc")]
pub mod oidc;
pub mod pki;
pub mod privs;
#[cfg(any(feature = "as", feature = "dc"))]
pub mod store;
pub mod udp;
