//! Line framing of serial recognition boxes (GBK or UTF-8 text, LF or CR endings) and the
//! parsing of each line with a configured field list, as the serial driver does.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use lotlink_drivers::codec::{
    parse_line, Framed, LineCodec, LineEnding, LineField, LineFormat, TextEncoding,
};
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let encoding = if mode & 1 == 0 {
        TextEncoding::Gbk
    } else {
        TextEncoding::Utf8
    };
    let ending = if mode & 2 == 0 {
        LineEnding::Lf
    } else {
        LineEnding::Cr
    };
    let chunk = usize::from(mode >> 2).max(1);
    let format = LineFormat {
        fields: ["direction", "plate", "color", "time"]
            .iter()
            .filter_map(|f| LineField::parse(f).ok())
            .collect(),
        separator: ",".into(),
    };
    let mut codec = LineCodec::new(encoding, ending, 256);
    let mut buf = BytesMut::new();
    for piece in rest.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(Framed::Item(line))) => {
                    let _ = parse_line(&line, &format);
                }
                Ok(Some(Framed::Garbage { .. })) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
    let _ = codec.decode_eof(&mut buf);
});
