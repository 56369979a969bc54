//! The MQTT config-push message: JSON envelope and HMAC check, then arbitrary text through
//! config validation (what a signed push would carry).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use lotlink::testing::push::{parse_push, PushTarget};

fuzz_target!(|data: &[u8]| {
    let target = PushTarget {
        lot_code: "TY0350",
        prefix: "lotlink/TY0350",
    };
    let _ = parse_push(data, b"fuzz-hmac-key-0123", target);
    // The fuzzer cannot forge a MAC: the text goes through validation directly.
    let _ = lotlink::testing::config::from_str(Path::new("pushed.toml"), &String::from_utf8_lossy(data));
});
