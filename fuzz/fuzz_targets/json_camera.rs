//! lotlink's generic JSON camera format (MQTT payloads).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lotlink_drivers::jsoncam::parse_json_camera;

fuzz_target!(|data: &[u8]| {
    let _ = parse_json_camera(data);
});
