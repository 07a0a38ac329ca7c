//! Plumbing that every Tiffin service shares.
//!
//! # Layout
//!
//! - [`db`]: one SQL pool per service (SQLite in WAL mode by default, PostgreSQL by
//!   URL), migrations and write transactions.
//! - [`problem`] and [`json`]: RFC 9457 problem documents and a JSON extractor whose
//!   errors name the offending field.
//! - [`token`]: Ed25519 JWT claims and their verification from the auth service's JWKS.
//! - [`trace`]: W3C trace context carried over HTTP, gRPC metadata and event headers.
//! - [`http`]: the HTTP server (request spans, body limit, health checks, graceful
//!   shutdown) and the outgoing HTTP client with timeouts.
//! - [`telemetry`]: the `tracing` subscriber, readable or JSON.
//! - `testing` (cargo feature `testing`): a fresh PostgreSQL database per test.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod db;
pub mod hash;
pub mod http;
pub mod json;
pub mod problem;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod time;
pub mod token;
pub mod trace;

pub use tokio_util::sync::CancellationToken;
