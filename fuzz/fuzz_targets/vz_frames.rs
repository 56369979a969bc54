//! Vzenith serial framing ("VZ" header, type, sn, big-endian length, body): arbitrary bytes
//! arrive in chunks whose sizes come from the input itself, as a serial port delivers them.
//! Invariants: no panic; every call either returns an item or waits for more bytes; the bytes
//! reported (frames + garbage) never exceed what was fed.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use lotlink_drivers::codec::{vz_body_text, Framed, VzCodec};
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut codec = VzCodec::new(4096);
    let mut buf = BytesMut::new();
    let mut accounted = 0usize;
    for piece in rest.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(Framed::Item(frame))) => {
                    accounted += 8 + frame.body.len();
                    let _ = vz_body_text(&frame.body);
                }
                Ok(Some(Framed::Garbage { bytes, .. })) => accounted += bytes,
                Ok(None) | Err(_) => break,
            }
        }
    }
    let _ = codec.decode_eof(&mut buf);
    assert!(
        accounted <= rest.len(),
        "reported {accounted} bytes of {}",
        rest.len()
    );
});
