//! # lotlink
//!
//! An edge gateway for parking lots: reads plate events from LPR cameras and counts from
//! loop detectors (the `lotlink-drivers` crate), keeps every event in a durable sled
//! [`outbox`], and uploads it to the city platform 并州行 ([`protocol`], [`uploader`]).
//!
//! The binary is thin: `main.rs` parses the command line and calls [`cli`]. Everything runs
//! in-process, started and stopped by the caller ([`app::Gateway`]), so tests drive the real
//! pipeline against the in-process platform simulator (the `lotlink-sim` crate, a
//! dev-dependency; the `demo` feature links it into the binary for `lotlink demo`).
#![warn(clippy::pedantic)]
// Items are pub(crate) unless the binary (cli, logging), the integration tests, benches or
// fuzz targets ([`testing`]) use them: a `pub` nothing outside can reach is flagged.
#![warn(unreachable_pub)]
// Allowed pedantic lints, each for a reason:
#![allow(
    clippy::module_name_repetitions, // `outbox::OutboxError` is clearer than `outbox::Error` at use sites
    clippy::missing_errors_doc,      // each module's error enum documents its variants
    clippy::missing_panics_doc,      // we do not panic on input; remaining expects are invariants
    clippy::must_use_candidate,      // noise on small getters
    clippy::doc_markdown,            // Chinese names and protocol field names in docs
    clippy::cast_possible_truncation, // u64 <-> u128 millisecond conversions are range-checked
    clippy::cast_precision_loss,     // sizes shown as floats in logs
    clippy::cast_sign_loss,          // as above
    clippy::too_many_lines,          // validation reads best as one function
    clippy::similar_names,           // geometry (x0/y0) and option pairs read naturally
    clippy::single_match_else        // `match` on Result/Option with an error branch reads better here
)]

pub(crate) mod app;
pub(crate) mod atomic_file;
pub mod cli;
pub(crate) mod clock;
pub(crate) mod config;
pub(crate) mod daemon;
#[cfg(feature = "demo")]
pub(crate) mod demo;
pub(crate) mod fleet;
pub(crate) mod hardware;
pub(crate) mod heap;
pub(crate) mod imaging;
pub(crate) mod ingest;
pub mod logging;
pub(crate) mod manage;
pub(crate) mod metrics;
pub(crate) mod outbox;
pub(crate) mod protocol;
pub(crate) mod push;
pub(crate) mod record;
pub(crate) mod snapshot;
pub(crate) mod space;
pub(crate) mod state;
pub(crate) mod status;
pub(crate) mod summary;
pub(crate) mod telemetry;
pub mod testing;
pub(crate) mod tls;
pub(crate) mod uploader;

/// The log level `main.rs` picks by command.
pub use config::LogLevel;
pub use lotlink_drivers as drivers;

#[cfg(test)]
mod module_graph;
