//! The config file (TOML → typed → validated), as `check-config`, SIGHUP and a push read it.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = lotlink::testing::config::from_str(Path::new("fuzz.toml"), text) {
            // Error reports (line numbers, key names) are built from the text too.
            let _ = e.to_string();
        }
    }
});
