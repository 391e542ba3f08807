//! The I/O layer under every daemon of the project: the agent (`ntmd`) and the four
//! servers run their engines on it.
//!
//! It holds what a one-thread mio loop needs besides its engine, and nothing about any
//! protocol but the 2-byte length framing of streams:
//! - [`Turn`]: one wait of the poll, the sources it found ready, and the sources that used
//!   up their read budget last turn and are read again without sleeping;
//! - [`Framed`]: the framing state of one stream (TCP, or the plaintext of a TLS session),
//!   with its caps: at most one frame's worth of input held, output bounded;
//! - [`StatusSocket`]: the Unix socket that answers `status`, written without ever
//!   blocking the loop;
//! - [`Clock`]: the engines' clock, which never goes backwards;
//! - [`udp`]: the UDP segmentation and coalescing trials, socket buffer sizing, and
//!   receiving many messages per call ([`udp::RecvMany`]) for the batched paths.
//!
//! It must stay small: the agent runs on routers with a few MiB of flash, so TLS and
//! JSON are the callers' (rustls and serde_json in the servers, embedded-tls and a
//! hand-written builder in the agent).

mod clock;
mod framed;
mod status;
mod turn;
pub mod udp;

pub use clock::Clock;
pub use framed::{Framed, ReadResult, Refused};
pub use status::{StatusSocket, STATUS_REPLIES_MAX, STATUS_REPLY_TIMEOUT};
pub use turn::{Ready, Turn};
