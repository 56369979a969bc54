//! Response bodies from the platform: whatever comes back must classify, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lotlink::testing::protocol::parse_reply;

fuzz_target!(|data: &[u8]| {
    if let Some(reply) = parse_reply(data) {
        // Classification of every parsed code is total.
        let _ = reply.verdict;
    }
});
