//! # lotlink
//!
//! An edge gateway for parking lots: reads plate events from LPR cameras and counts from
//! loop detectors (the `lotlink-drivers` crate), keeps every event in a durable sled
//! [`outbox`], and uploads it to the city platform 并州行 ([`protocol`], [`uploader`]).
//!
//! The binary is thin: `main.rs` parses the command line and calls [`cli`]. Everything runs
//! in-process with a shutdown future passed in ([`app::run`]), so tests drive the real
//! pipeline against the in-process platform simulator (the `lotlink-sim` crate, a
//! dev-dependency; the `demo` feature links it into the binary for `lotlink demo`).
#![warn(clippy::pedantic)]
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

pub mod app;
pub mod atomic_file;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
#[cfg(feature = "demo")]
pub mod demo;
pub mod fleet;
pub mod hardware;
pub mod heap;
pub mod imaging;
pub mod ingest;
pub mod logging;
pub mod manage;
pub mod metrics;
pub mod outbox;
pub mod protocol;
pub mod record;
pub mod snapshot;
pub mod space;
pub mod state;
pub mod status;
pub mod summary;
pub mod telemetry;
pub mod testing;
pub mod tls;
pub mod uploader;

pub use lotlink_drivers as drivers;

#[cfg(test)]
mod module_graph;
