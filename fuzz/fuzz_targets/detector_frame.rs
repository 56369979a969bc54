//! ASCII loop-detector frames (`$…` lines), after line framing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lotlink_drivers::codec::parse_detector_frame;

fuzz_target!(|data: &[u8]| {
    if let Ok(line) = std::str::from_utf8(data) {
        let _ = parse_detector_frame(line);
    }
});
