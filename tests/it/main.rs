//! The integration tests, one binary (`cargo test --test it`; one file `cargo test --test it
//! mqtt::`). One binary instead of one per file: each links the whole gateway and its image
//! stack, and two dozen of them made the test build slow to link and gigabytes big.
//!
//! Tests here share one process: nothing in them may change process-wide state (the
//! environment, the working directory, the umask, a global `tracing` subscriber). A test that
//! measures the process itself (its resident memory) reruns itself alone in a child process
//! ([`common::alone_in_child`]).

#[path = "../common/mod.rs"]
mod common;

mod chaos;
mod cli;
mod crash;
mod diskfull;
mod fleet;
mod flow;
mod httpcam;
mod ingest;
mod logs;
mod loops;
mod manage;
mod mqtt;
mod notify;
mod outbox_model;
mod powercut;
mod reload;
mod secrets;
mod serial;
mod slowlink;
mod state;
mod status;
mod systemd_unit;
mod tls;
mod upload;
