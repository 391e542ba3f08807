//! What the administration commands (`ntm-ca`, `ntm-as account ...`) share: their
//! options, and writing the files they make.

use ntm_cmdline::Failure;
use ntm_proto::wire::Fqdn;
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Options of the administration commands (every command takes the options it needs
/// and ignores the rest).
#[derive(Debug, Default)]
pub struct Opts {
    pub config: Option<PathBuf>,
    pub out: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub name: Option<String>,
    pub role: Option<String>,
    pub days: Option<u32>,
    pub csr: Option<PathBuf>,
    pub email: Option<String>,
    pub fqdn: Option<String>,
    pub account: Option<String>,
    pub device: Option<String>,
    pub issuer: Option<String>,
    pub subject: Option<String>,
    pub password_stdin: bool,
}

pub fn parse_opts(args: Vec<OsString>) -> Result<Opts, String> {
    let mut p = lexopt::Parser::from_args(args);
    let mut o = Opts::default();
    let text = |p: &mut lexopt::Parser| -> Result<String, String> {
        p.value().map_err(|e| e.to_string())?.into_string().map_err(|_| "not UTF-8".to_string())
    };
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        match arg {
            lexopt::Arg::Short('c') | lexopt::Arg::Long("config") => o.config = Some(text(&mut p)?.into()),
            lexopt::Arg::Long("out") => o.out = Some(text(&mut p)?.into()),
            lexopt::Arg::Long("ca") => o.ca = Some(text(&mut p)?.into()),
            lexopt::Arg::Long("name") => o.name = Some(text(&mut p)?),
            lexopt::Arg::Long("role") => o.role = Some(text(&mut p)?),
            lexopt::Arg::Long("days") => {
                let days = text(&mut p)?.parse().ok().filter(|d| (1..=crate::pki::MAX_VALID_DAYS).contains(d));
                o.days = Some(
                    days.ok_or(format!("--days takes a number of days from 1 to {}", crate::pki::MAX_VALID_DAYS))?,
                );
            }
            lexopt::Arg::Long("csr") => o.csr = Some(text(&mut p)?.into()),
            lexopt::Arg::Long("email") => o.email = Some(text(&mut p)?),
            lexopt::Arg::Long("fqdn") => o.fqdn = Some(text(&mut p)?),
            lexopt::Arg::Long("account") => o.account = Some(text(&mut p)?),
            lexopt::Arg::Long("device") => o.device = Some(text(&mut p)?),
            lexopt::Arg::Long("issuer") => o.issuer = Some(text(&mut p)?),
            lexopt::Arg::Long("subject") => o.subject = Some(text(&mut p)?),
            lexopt::Arg::Long("password-stdin") => o.password_stdin = true,
            other => return Err(other.unexpected().to_string()),
        }
    }
    Ok(o)
}

pub fn need<T: Clone>(v: &Option<T>, flag: &str) -> Result<T, Failure> {
    v.clone().ok_or_else(|| Failure::usage(format!("{flag} is needed")))
}

pub fn fqdn(s: &str) -> Result<Fqdn, Failure> {
    Fqdn::new(s).map_err(|e| Failure::usage(format!("\"{s}\": {e}")))
}

/// Writes a file; a key readable by its owner only.
pub fn write_file(path: &Path, text: &str, secret: bool) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true).mode(if secret { 0o600 } else { 0o644 });
    let mut f = opts.open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(text.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))
}
