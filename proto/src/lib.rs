//! The NTMobile library (the paper's Fig. 8): every message format, every key and the
//! encryption around it, and a sans-IO engine for each role, shared by the agent and the
//! four servers so that every build interoperates by construction.
//!
//! - [`wire`]: the common header and the body of every message, zero-copy view plus owned
//!   form, explicit byte order, checked lengths. Plain data: it imports nothing from
//!   [`crypto`], which seals, signs and verifies what wire defines (e.g. [`wire::pk`]).
//! - [`keys`]: one type per key of Table 1.
//! - [`crypto`]: AES-128-CCM channels with per-sender nonce spaces and replay windows;
//!   public-key mode on P-256.
//! - [`engine`]: the node, DC, RS, NS and AS state machines. They take time as `now` and
//!   randomness from an RNG handed in; they never touch sockets, files or clocks.
//!
//! With the `fuzzing` feature (the fuzz crate and this crate's tests) also the fuzz
//! harness, `fuzzing`, which the daemons never compile.
//!
//! docs/protocol.md describes the messages, sequences and rules in prose and diagrams.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]
#![cfg_attr(not(test), warn(clippy::indexing_slicing))]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod crypto;
pub mod engine;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod keys;
pub mod time;
pub mod wire;

pub use time::{Duration, Instant};
