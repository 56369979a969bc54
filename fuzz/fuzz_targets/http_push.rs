//! Camera HTTP push bodies: Vzenith `AlarmInfoPlate` JSON (UTF-8 or GBK) and Hikvision
//! `EventNotificationAlert` XML, alone or as the body of a multipart request. The first byte
//! picks the content type.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use lotlink_drivers::hikvision::parse_alert;
use lotlink_drivers::http::{body_text, parse_hik_request, parse_vz_push};

const TYPES: [&str; 4] = [
    "application/json",
    "application/json; charset=gbk",
    "application/xml",
    "multipart/form-data; boundary=MIME_boundary",
];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let ct = TYPES[usize::from(mode) % TYPES.len()];
    let _ = parse_vz_push(&body_text(body, ct));
    let _ = parse_alert(body);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let _ = rt.block_on(parse_hik_request(ct, Bytes::copy_from_slice(body)));
});
