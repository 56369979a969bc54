//! What the code outside this crate builds on besides the binary's entry ([`crate::cli`],
//! [`crate::logging`]): the integration tests (`tests/it`), the benches (`benches/`) and the
//! fuzz targets (`fuzz/`). Everything else in the crate is `pub(crate)`; an item is here
//! because one of them uses it, and leaves when none does.
//!
//! The sub-modules carry the names of the modules the items live in, so a test reads
//! `lotlink::testing::outbox::Outbox`. Not a stable API: it changes with the gateway and its
//! tests, in the same commit.

/// The gateway in-process: start it on a parsed config with drivers and options, stop it.
pub mod app {
    pub use crate::app::{Gateway, RunOptions};
}

/// Parsing a config file (the operator's format) and the few config types tests assert on.
pub mod config {
    pub use crate::config::{
        from_str, Config, DataEncoding, Secret, TsUnit, EXAMPLE_LOT_CODE, EXAMPLE_TOKEN,
    };
}

/// The gateway's clock, for a protocol client built by hand.
pub mod clock {
    pub use crate::clock::Clock;
}

/// The drivers a config names, built (what the gateway does at start).
pub mod hardware {
    pub use crate::hardware::build;
}

/// Camera images: a synthetic JPEG, the shrink/recompress step and its size limit.
pub mod imaging {
    pub use crate::imaging::{b64_len, prepare, synth_jpeg, ImageAction, MAX_B64_CHARS};
}

/// Where a pushed configuration lands.
pub mod manage {
    pub use crate::manage::pushed_path;
}

/// The signed config push: its signature and its parser.
pub mod push {
    pub use crate::push::{parse_push, push_hmac, PushTarget};
}

/// The durable outbox on its own (model tests, crash tests, benches).
pub mod outbox {
    pub use crate::outbox::{
        encode_record, ImgName, NewRecord, Outbox, OutboxError, OutboxOptions, RecordMeta,
        RecordStore, StoredRecord, Submitted, DEGRADED_REMARK,
    };
}

/// The platform protocol client and its reply parser.
pub mod protocol {
    pub use crate::protocol::{parse_reply, CallError, Client, Cmd, TS_WINDOW};
}

/// The upload body as the platform receives it.
pub mod uploader {
    pub use crate::uploader::records_json;
}
