//! # lotlink-sim
//!
//! Stand-ins for the world around the gateway, for the tests, the benchmarks and `lotlink
//! demo`. Nothing here is in the binary shipped to the gateway boxes: the gateway crate
//! depends on this one only through its optional `demo` feature (on by default for `cargo
//! run`, off in the `.deb`) and as a dev-dependency.
//!
//! - [`platform`]: the in-process simulator of the city platform 并州行 ([`PlatformSim`]),
//!   a real HTTP server that checks every request like a strict platform;
//! - [`devices`]: simulated cameras, a lane driver that emits plate events with real JPEG
//!   images and a Vzenith camera that POSTs its results to the gateway's camera listener.
//!
//! The simulator does not use the gateway's code (it signs and checks with its own), so a
//! bug in the gateway's client is not mirrored here.
#![warn(clippy::pedantic)]
#![allow(
    clippy::module_name_repetitions, // `SimConfig`, `SimStats` read better at use sites
    clippy::missing_errors_doc,      // the simulator's errors are plain io::Error
    clippy::missing_panics_doc,      // test tool: its expects are invariants
    clippy::must_use_candidate,      // noise on small getters
    clippy::doc_markdown,            // Chinese names and protocol field names in docs
    clippy::cast_possible_truncation, // millisecond conversions are range-checked
    clippy::cast_precision_loss,
    clippy::cast_sign_loss,
    clippy::too_many_lines,          // the field checks read best as one function
    clippy::similar_names,
    clippy::single_match_else
)]

pub mod devices;
pub mod platform;

pub use platform::{
    code_message, sign, Mode, PlatformSim, Route, Scripted, SimBody, SimConfig, SimStats,
    SuccessStyle, TsUnit, MAX_BATCH, MAX_IMG_DATA_CHARS, MAX_SPACES,
};
