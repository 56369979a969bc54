//! Vzenith MQTT messages (envelope + AlarmInfoPlate), and the JSON body of a serial frame.
//! The first byte picks the topic layout and whether the envelope time is a fallback.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lotlink_drivers::vzenith::{parse_message, parse_vz_body};

const TOPICS: [&str; 4] = [
    "device/sn-1/message/up/ivs_result",
    "sn-1/device/message/up/ivs_result",
    "device/sn-1/message/up/quick_ivs_result",
    "device/sn-1/message/up/keep_alive",
];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, payload)) = data.split_first() else {
        return;
    };
    let topic = TOPICS[usize::from(mode) % TOPICS.len()];
    let _ = parse_message(topic, payload, mode & 4 != 0);
    if let Ok(text) = std::str::from_utf8(payload) {
        let _ = parse_vz_body(text);
    }
});
