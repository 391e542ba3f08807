//! The four daemons, each behind its feature: each builds its engine from its configuration file and runs it in
//! the [`crate::driver`] loop.

#[cfg(feature = "as")]
pub mod account;
#[cfg(feature = "dc")]
pub mod dc;
#[cfg(feature = "ns")]
pub mod ns;
#[cfg(feature = "rs")]
pub mod relay;
#[cfg(feature = "rs")]
pub mod rs;

use crate::config::{Common, TlsFiles};
use crate::driver::{Daemon, Driver, Reload};
use crate::pki;
use ntm_proto::engine::{DropCounters, DropReason, PeerIdentity};
use rustls::pki_types::CertificateDer;
use std::sync::Arc;

/// Why a daemon could not start.
pub type StartError = Box<dyn std::error::Error>;

/// The identity of a certificate rustls verified, as the engines see it.
pub fn identify(cert: &CertificateDer<'_>) -> Option<PeerIdentity> {
    match pki::peer_identity(cert) {
        Ok(id) => Some(id),
        Err(e) => {
            log::info!("peer certificate without a usable identity: {e}");
            None
        }
    }
}

/// A SIGHUP's new TLS configurations, read again from `files`; on an error the old ones
/// stay (and the error is logged).
pub fn reload_tls(files: &TlsFiles, client_auth: pki::ClientAuth) -> Reload {
    match tls_configs(files, client_auth) {
        Ok((server, client)) => {
            log::info!("reload: TLS files read again");
            Reload { tls_server: Some(server), tls_client: Some(client) }
        }
        Err(e) => {
            log::error!("reload: keeping the old TLS files: {e}");
            Reload::default()
        }
    }
}

/// The TLS configurations of a server: inbound (with client authentication as given)
/// and outbound (presenting our certificate).
pub fn tls_configs(
    files: &TlsFiles,
    client_auth: pki::ClientAuth,
) -> Result<(Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>), StartError> {
    let material = pki::TlsMaterial::load(&files.ca, &files.cert, &files.key)?;
    Ok((pki::server_config(&material, client_auth)?, pki::client_config(&material)?))
}

/// Dropped input by reason, for status output.
pub fn drops_json(d: &DropCounters) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for why in DropReason::ALL {
        m.insert(why.name().into(), d.get(why).into());
    }
    m.into()
}

/// Key kinds held (never the keys), for status output.
pub fn key_kinds(keys: &[(&'static str, u64)]) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for (k, _) in keys {
        let n = m.get(*k).and_then(serde_json::Value::as_u64).unwrap_or(0);
        m.insert((*k).into(), (n + 1).into());
    }
    m.into()
}

/// Runs a built driver until SIGTERM; returns the process exit code.
pub fn run<D: Daemon>(program: &str, mut driver: Driver<D>) -> i32 {
    let extra = driver.extra_udp_addrs();
    // The DC's mapping port is one to open in a firewall too: say it.
    let extra = if extra.is_empty() { String::new() } else { format!(", UDP (mapping port) {extra:?}") };
    log::info!("{program} running: UDP {:?}{extra}, TCP {:?}", driver.udp_addrs(), driver.listen_addrs());
    match driver.run() {
        Ok(()) => 0,
        Err(e) => {
            log::error!("{program}: {e}");
            1
        }
    }
}

/// A fresh OS random number generator for an engine.
pub fn os_rng() -> ntm_proto::engine::Rng {
    Box::new(rand_core::OsRng)
}

/// Listen settings shared by all daemons.
pub fn status_path(c: &Common) -> Option<std::path::PathBuf> {
    c.status_socket.clone()
}
