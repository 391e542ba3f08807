//! The four NTMobile servers as daemons: thin drivers around the library's engines.
//!
//! - [`config`]: one JSON file per daemon, with one-line errors naming the bad field.
//! - [`pki`]: the deployment CA, certificates with roles, and rustls configurations.
//! - [`store`]: the embedded databases (AS accounts, DC node state), SQLite.
//! - [`driver`]: one mio event loop hosting any engine: UDP, TCP and TLS streams,
//!   DNS, timers, signals and the status socket.
//! - [`privs`]: dropping root once a daemon has started (the `user` field).

pub mod cli;
pub mod config;
pub mod daemon;
pub mod driver;
pub mod pki;
pub mod privs;
pub mod store;
pub mod udp;
