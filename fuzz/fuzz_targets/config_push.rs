//! The MQTT config-push message: JSON envelope, HMAC check (with and without a key), then
//! the pushed TOML through validation.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use lotlink::config::Secret;
use lotlink::manage::parse_push;

fuzz_target!(|data: &[u8]| {
    let key = Secret::new("fuzz-hmac-key");
    let _ = parse_push(data, Some(&key));
    if let Ok(push) = parse_push(data, None) {
        let _ = lotlink::config::from_str(Path::new("pushed.toml"), &push.config);
    }
});
