//! Byte framings of serial links (pure, no I/O): Vzenith binary frames, text lines (GBK or
//! UTF-8) with configurable fields, and ASCII loop-detector frames.
//!
//! The decoders never fail on bad bytes: they report them as [`Framed::Garbage`] (one item
//! per contiguous run of bad bytes) and resynchronise on the next valid header or line, so
//! a driver can count and log bad input and carry on. Buffers are bounded: a decoder never
//! holds more than its frame limit plus a header.

use bytes::{Buf, Bytes, BytesMut};
use chrono::NaiveDateTime;
use tokio_util::codec::Decoder;

use crate::Direction;

/// A decoded item, or bytes that were skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framed<T> {
    /// A well-formed item.
    Item(T),
    /// Bytes skipped while resynchronising, and why.
    Garbage {
        /// How many bytes.
        bytes: usize,
        /// Why they were skipped.
        reason: &'static str,
    },
}

/// Errors of the codecs and parsers.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Reading the underlying stream failed.
    #[error("read error: {0}")]
    Io(#[from] std::io::Error),
    /// Text that is neither valid UTF-8 nor valid GBK.
    #[error("text is neither UTF-8 nor GBK")]
    Encoding,
    /// A line does not match the configured fields.
    #[error("line field {field}: {message}")]
    Field {
        /// The field name.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A detector frame is malformed.
    #[error("detector frame: {0}")]
    Detector(String),
}

// ---------------------------------------------------------------------------------------
// Vzenith binary framing
// ---------------------------------------------------------------------------------------

/// Header length: `'V' 'Z' type sn len:u32be`.
pub const VZ_HEADER: usize = 8;

/// One Vzenith frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VzFrame {
    /// 0 JSON text, 1 heartbeat, 2 binary.
    pub kind: u8,
    /// Sequence/serial byte of the header.
    pub sn: u8,
    /// The body.
    pub body: Bytes,
}

/// Decoder of Vzenith frames; bodies longer than `max_frame` are skipped.
#[derive(Debug, Clone)]
pub struct VzCodec {
    max_frame: usize,
    /// Bytes of an oversize body still to skip.
    skipping: usize,
}

impl VzCodec {
    /// A decoder accepting bodies up to `max_frame` bytes.
    pub fn new(max_frame: usize) -> VzCodec {
        VzCodec {
            max_frame,
            skipping: 0,
        }
    }
}

fn is_header_start(b: &[u8]) -> bool {
    // "VZ" and a known type; a partial header at the very end may still become one.
    match b {
        [b'V'] | [b'V', b'Z'] => true,
        [b'V', b'Z', t, ..] => *t <= 2,
        _ => false,
    }
}

impl Decoder for VzCodec {
    type Item = Framed<VzFrame>;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, CodecError> {
        if self.skipping > 0 {
            let n = self.skipping.min(src.len());
            src.advance(n);
            self.skipping -= n;
            if self.skipping > 0 {
                return Ok(None);
            }
        }
        // Skip to the first possible header; report the skipped run once.
        let start = (0..src.len())
            .find(|&i| is_header_start(&src[i..]))
            .unwrap_or(src.len());
        if start > 0 {
            src.advance(start);
            return Ok(Some(Framed::Garbage {
                bytes: start,
                reason: "no VZ header",
            }));
        }
        if src.len() < VZ_HEADER {
            return Ok(None);
        }
        let kind = src[2];
        let sn = src[3];
        let len = u32::from_be_bytes([src[4], src[5], src[6], src[7]]);
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > self.max_frame {
            // Skip the header and the announced body without buffering it. If the length
            // was itself garbage, the skip may eat valid frames: that is the price of not
            // buffering an unbounded body, and the codec resynchronises after it.
            src.advance(VZ_HEADER);
            self.skipping = len;
            let n = self.skipping.min(src.len());
            src.advance(n);
            self.skipping -= n;
            return Ok(Some(Framed::Garbage {
                bytes: VZ_HEADER + n,
                reason: "oversize frame",
            }));
        }
        if src.len() < VZ_HEADER + len {
            src.reserve(VZ_HEADER + len - src.len());
            return Ok(None);
        }
        src.advance(VZ_HEADER);
        let body = src.split_to(len).freeze();
        Ok(Some(Framed::Item(VzFrame { kind, sn, body })))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, CodecError> {
        match self.decode(src)? {
            Some(item) => Ok(Some(item)),
            None if src.is_empty() => Ok(None),
            None => {
                let n = src.len();
                src.clear();
                Ok(Some(Framed::Garbage {
                    bytes: n,
                    reason: "truncated frame at end of stream",
                }))
            }
        }
    }
}

impl tokio_util::codec::Encoder<VzFrame> for VzCodec {
    type Error = CodecError;

    fn encode(&mut self, f: VzFrame, dst: &mut BytesMut) -> Result<(), CodecError> {
        let len = u32::try_from(f.body.len())
            .map_err(|_| CodecError::Io(std::io::Error::other("frame too large")))?;
        dst.extend_from_slice(&[b'V', b'Z', f.kind, f.sn]);
        dst.extend_from_slice(&len.to_be_bytes());
        dst.extend_from_slice(&f.body);
        Ok(())
    }
}

/// Decode text that is UTF-8 or GBK.
pub fn decode_text(bytes: &[u8]) -> Result<String, CodecError> {
    if let Ok(s) = std::str::from_utf8(bytes) {
        return Ok(s.to_string());
    }
    encoding_rs::GBK
        .decode_without_bom_handling_and_without_replacement(bytes)
        .map(std::borrow::Cow::into_owned)
        .ok_or(CodecError::Encoding)
}

/// The text of a JSON frame body: a trailing `\n\0`, `\0` or `\n` is stripped; UTF-8,
/// else GBK.
pub fn vz_body_text(body: &[u8]) -> Result<String, CodecError> {
    let mut end = body.len();
    while end > 0 && matches!(body[end - 1], 0 | b'\n' | b'\r') {
        end -= 1;
    }
    decode_text(&body[..end])
}

// ---------------------------------------------------------------------------------------
// Line framing
// ---------------------------------------------------------------------------------------

/// Text encoding of a serial line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextEncoding {
    /// GBK (older Chinese devices).
    Gbk,
    /// UTF-8.
    Utf8,
}

/// What ends a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineEnding {
    /// `\n`; a `\r` before it is stripped (covers CRLF and LF).
    Lf,
    /// A lone `\r`; a `\n` right after it is ignored as an empty line.
    Cr,
}

/// Decoder of text lines.
#[derive(Debug, Clone)]
pub struct LineCodec {
    encoding: TextEncoding,
    ending: LineEnding,
    max_line: usize,
    /// Discarding an over-long line until its terminator.
    discarding: bool,
    /// Where the terminator search resumes.
    scanned: usize,
}

impl LineCodec {
    /// A decoder of lines up to `max_line` bytes.
    pub fn new(encoding: TextEncoding, ending: LineEnding, max_line: usize) -> LineCodec {
        LineCodec {
            encoding,
            ending,
            max_line: max_line.max(1),
            discarding: false,
            scanned: 0,
        }
    }

    fn terminator(&self) -> u8 {
        match self.ending {
            LineEnding::Lf => b'\n',
            LineEnding::Cr => b'\r',
        }
    }

    fn decode_line(&self, raw: &[u8]) -> Result<String, CodecError> {
        let strip: &[u8] = match self.ending {
            LineEnding::Lf => b"\r",
            LineEnding::Cr => b"\n",
        };
        let mut line = raw;
        while let Some((last, rest)) = line.split_last() {
            if strip.contains(last) {
                line = rest;
            } else {
                break;
            }
        }
        while let Some((first, rest)) = line.split_first() {
            if strip.contains(first) {
                line = rest;
            } else {
                break;
            }
        }
        match self.encoding {
            TextEncoding::Utf8 => std::str::from_utf8(line)
                .map(str::to_string)
                .map_err(|_| CodecError::Encoding),
            TextEncoding::Gbk => encoding_rs::GBK
                .decode_without_bom_handling_and_without_replacement(line)
                .map(std::borrow::Cow::into_owned)
                .ok_or(CodecError::Encoding),
        }
    }
}

impl Decoder for LineCodec {
    type Item = Framed<String>;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, CodecError> {
        let term = self.terminator();
        loop {
            let found = src[self.scanned..]
                .iter()
                .position(|b| *b == term)
                .map(|i| i + self.scanned);
            let Some(pos) = found else {
                if src.len() > self.max_line {
                    // Too long: drop what we have and keep dropping until a terminator.
                    let n = src.len();
                    src.clear();
                    self.scanned = 0;
                    let first = !self.discarding;
                    self.discarding = true;
                    if first {
                        return Ok(Some(Framed::Garbage {
                            bytes: n,
                            reason: "line too long",
                        }));
                    }
                    continue;
                }
                self.scanned = src.len();
                return Ok(None);
            };
            let raw = src.split_to(pos + 1);
            self.scanned = 0;
            if self.discarding {
                self.discarding = false;
                continue;
            }
            let body = &raw[..raw.len() - 1];
            if body.len() > self.max_line {
                return Ok(Some(Framed::Garbage {
                    bytes: raw.len(),
                    reason: "line too long",
                }));
            }
            match self.decode_line(body) {
                Ok(s) if s.trim().is_empty() => {}
                Ok(s) => return Ok(Some(Framed::Item(s))),
                Err(_) => {
                    return Ok(Some(Framed::Garbage {
                        bytes: raw.len(),
                        reason: "line not decodable in the configured encoding",
                    }))
                }
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, CodecError> {
        if let Some(item) = self.decode(src)? {
            return Ok(Some(item));
        }
        if src.is_empty() {
            return Ok(None);
        }
        // A last line without its terminator: decode it as a line.
        let raw = src.split_to(src.len());
        self.scanned = 0;
        if std::mem::take(&mut self.discarding) {
            return Ok(None);
        }
        match self.decode_line(&raw) {
            Ok(s) if s.trim().is_empty() => Ok(None),
            Ok(s) => Ok(Some(Framed::Item(s))),
            Err(_) => Ok(Some(Framed::Garbage {
                bytes: raw.len(),
                reason: "line not decodable in the configured encoding",
            })),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Line records
// ---------------------------------------------------------------------------------------

/// One field of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineField {
    /// Entry or exit word.
    Direction,
    /// Plate text.
    Plate,
    /// Plate colour word.
    Color,
    /// Capture time (lot-local).
    Time,
    /// Vehicle style: the camera's type word or code (looked up in the camera's `styles`
    /// table, else a `carStyle` code 0/1/2).
    Style,
    /// Ignored.
    Skip,
}

impl LineField {
    /// Parse a configured field name.
    pub fn parse(name: &str) -> Result<LineField, CodecError> {
        Ok(match name {
            "direction" => LineField::Direction,
            "plate" => LineField::Plate,
            "color" => LineField::Color,
            "time" => LineField::Time,
            "style" => LineField::Style,
            "_" => LineField::Skip,
            other => {
                return Err(CodecError::Field {
                    field: "fields",
                    message: format!("unknown field name {other:?}"),
                })
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            LineField::Direction => "direction",
            LineField::Plate => "plate",
            LineField::Color => "color",
            LineField::Time => "time",
            LineField::Style => "style",
            LineField::Skip => "_",
        }
    }
}

/// Field order and separator of a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineFormat {
    /// Fields in order.
    pub fields: Vec<LineField>,
    /// Separator between fields.
    pub separator: String,
}

/// What one line says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LineRecord {
    /// Entry/exit, when the line says (a missing or unknown word: `None`, noted in
    /// `replaced`; the lane's direction stands in).
    pub direction: Option<Direction>,
    /// Plate text; `None` = no plate read.
    pub plate: Option<String>,
    /// Colour as sent.
    pub color: Option<String>,
    /// Capture time, lot-local (unreadable: `None`, noted; the gateway's clock stands in).
    pub time: Option<NaiveDateTime>,
    /// Vehicle style as sent.
    pub style: Option<String>,
    /// Secondary fields that were missing or unreadable, each with its reason.
    pub replaced: Vec<String>,
}

/// Words meaning "no plate" (see [`crate::plate::is_no_plate`]).
pub fn is_no_plate(s: &str) -> bool {
    crate::plate::is_no_plate(s)
}

fn parse_direction(s: &str) -> Option<Direction> {
    match s.to_ascii_lowercase().as_str() {
        "in" | "入" | "进" | "入口" | "进场" | "入场" => Some(Direction::In),
        "out" | "出" | "出口" | "出场" => Some(Direction::Out),
        _ => None,
    }
}

/// Parse a capture time: `YYYY-MM-DD HH:MM:SS`, `YYYY/MM/DD HH:MM:SS`, `YYYYMMDDHHMMSS`,
/// optionally with fractional seconds.
pub fn parse_time(s: &str) -> Option<NaiveDateTime> {
    const FORMATS: [&str; 6] = [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y/%m/%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S",
        "%Y/%m/%d %H:%M:%S",
        "%Y%m%d%H%M%S",
    ];
    FORMATS
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
}

/// Split a line by the format's separator into a record.
///
/// Only the plate field is required: a line too short to hold it is an error. A missing or
/// unreadable direction, time, colour or style never drops the pass: it is left out and
/// the reason noted in [`LineRecord::replaced`].
pub fn parse_line(line: &str, fmt: &LineFormat) -> Result<LineRecord, CodecError> {
    let parts: Vec<&str> = if fmt.separator.is_empty() {
        vec![line]
    } else {
        line.split(fmt.separator.as_str()).collect()
    };
    let mut rec = LineRecord::default();
    for (i, field) in fmt.fields.iter().enumerate() {
        let Some(raw) = parts.get(i) else {
            if *field == LineField::Plate {
                return Err(CodecError::Field {
                    field: field.name(),
                    message: format!("missing: the line has {} fields", parts.len()),
                });
            }
            if *field != LineField::Skip {
                rec.replaced.push(format!(
                    "字段缺失 ({} missing: the line has {} fields)",
                    field.name(),
                    parts.len()
                ));
            }
            continue;
        };
        let v = raw.trim();
        let shown: String = v.chars().take(24).collect();
        match field {
            LineField::Skip => {}
            LineField::Direction => {
                rec.direction = parse_direction(v);
                if rec.direction.is_none() {
                    rec.replaced.push(format!(
                        "方向无效 (direction {shown:?} is neither in nor out: lane direction used)"
                    ));
                }
            }
            LineField::Plate => {
                rec.plate = (!is_no_plate(v)).then(|| v.to_string());
            }
            LineField::Color => rec.color = (!v.is_empty()).then(|| v.to_string()),
            LineField::Style => rec.style = (!v.is_empty()).then(|| v.to_string()),
            LineField::Time => {
                rec.time = parse_time(v);
                if rec.time.is_none() {
                    rec.replaced.push(format!(
                        "时间无效 (time {shown:?} is not like 2026-11-28 08:00:00: gateway time used)"
                    ));
                }
            }
        }
    }
    Ok(rec)
}

// ---------------------------------------------------------------------------------------
// ASCII detector frames
// ---------------------------------------------------------------------------------------

/// What a detector says about its loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetectorState {
    /// No vehicle (`0`).
    Absent,
    /// Vehicle present (`1`).
    Present,
    /// Detector fault (`2`).
    Fault,
}

/// One `$HHH,CC,DD,S,B,TTT,LLL*XX` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetectorFrame {
    /// Host id.
    pub host: u16,
    /// Channel.
    pub channel: u8,
    /// Detector id.
    pub detector: u8,
    /// Loop state.
    pub state: DetectorState,
    /// Battery level.
    pub battery: u8,
    /// Threshold.
    pub threshold: u16,
    /// Delay.
    pub delay: u16,
    /// The checksum the frame carries.
    pub checksum: u8,
    /// Our reading of the rule: XOR of every byte strictly between `$` and `*` (NMEA
    /// style). The vendor's own example does not match its stated rule, so the caller
    /// decides (`checksum = "verify" | "ignore"`).
    pub computed: u8,
}

impl DetectorFrame {
    /// Whether the carried checksum matches ours.
    pub fn checksum_ok(&self) -> bool {
        self.checksum == self.computed
    }
}

fn num<T: std::str::FromStr>(field: &str, v: &str) -> Result<T, CodecError> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CodecError::Detector(format!(
            "{field} {v:?} is not a decimal number"
        )));
    }
    v.parse()
        .map_err(|_| CodecError::Detector(format!("{field} {v:?} is out of range")))
}

/// Parse one detector frame (the line terminator already removed).
pub fn parse_detector_frame(line: &str) -> Result<DetectorFrame, CodecError> {
    let line = line.trim();
    let body = line
        .strip_prefix('$')
        .ok_or_else(|| CodecError::Detector("does not start with '$'".into()))?;
    let (payload, sum) = body
        .split_once('*')
        .ok_or_else(|| CodecError::Detector("no '*' before the checksum".into()))?;
    if sum.len() != 2 {
        return Err(CodecError::Detector(format!(
            "checksum {sum:?} is not two hex digits"
        )));
    }
    let checksum = u8::from_str_radix(sum, 16)
        .map_err(|_| CodecError::Detector(format!("checksum {sum:?} is not two hex digits")))?;
    let computed = payload.bytes().fold(0u8, |a, b| a ^ b);
    let f: Vec<&str> = payload.split(',').collect();
    let [host, channel, detector, state, battery, threshold, delay] = f[..] else {
        return Err(CodecError::Detector(format!(
            "{} fields, expected 7",
            f.len()
        )));
    };
    let state = match state {
        "0" => DetectorState::Absent,
        "1" => DetectorState::Present,
        "2" => DetectorState::Fault,
        other => {
            return Err(CodecError::Detector(format!(
                "state {other:?} is not 0, 1 or 2"
            )))
        }
    };
    Ok(DetectorFrame {
        host: num("host", host)?,
        channel: num("channel", channel)?,
        detector: num("detector", detector)?,
        state,
        battery: num("battery", battery)?,
        threshold: num("threshold", threshold)?,
        delay: num("delay", delay)?,
        checksum,
        computed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all<D: Decoder<Error = CodecError>>(d: &mut D, input: &[u8]) -> Vec<D::Item> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(item) = d.decode_eof(&mut buf).expect("no error") {
            out.push(item);
        }
        out
    }

    /// Feed `input` split at `at`, then the rest, then end of stream.
    fn split<D: Decoder<Error = CodecError>>(d: &mut D, input: &[u8], at: usize) -> Vec<D::Item> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for part in [&input[..at], &input[at..]] {
            buf.extend_from_slice(part);
            while let Some(item) = d.decode(&mut buf).expect("no error") {
                out.push(item);
            }
        }
        while let Some(item) = d.decode_eof(&mut buf).expect("no error") {
            out.push(item);
        }
        out
    }

    /// 晋 in GBK.
    const JIN_GBK: [u8; 2] = [0xBD, 0xFA];

    /// A heartbeat followed by a JSON frame with a GBK plate and the `\n\0` tail.
    fn vz_fixture() -> Vec<u8> {
        let mut v = vec![
            0x56, // 'V'
            0x5A, // 'Z'
            0x01, // type 1: heartbeat
            0x00, // sn
            0x00, 0x00, 0x00, 0x00, // length 0 (big-endian)
            0x56, // 'V'
            0x5A, // 'Z'
            0x00, // type 0: JSON text
            0x07, // sn 7
            0x00, 0x00, 0x00, 0x12, // length 18
            b'{', b'"', b'p', b'"', b':', b'"', // {"p":"
        ];
        v.extend_from_slice(&JIN_GBK); // 晋 (GBK, 2 bytes)
        v.extend_from_slice(b"A12345"); // A12345
        v.extend_from_slice(&[b'"', b'}', b'\n', 0x00]); // "} \n \0
        v
    }

    fn vz_items() -> Vec<Framed<VzFrame>> {
        let mut body = b"{\"p\":\"".to_vec();
        body.extend_from_slice(&JIN_GBK);
        body.extend_from_slice(b"A12345\"}\n\0");
        vec![
            Framed::Item(VzFrame {
                kind: 1,
                sn: 0,
                body: Bytes::new(),
            }),
            Framed::Item(VzFrame {
                kind: 0,
                sn: 7,
                body: Bytes::from(body),
            }),
        ]
    }

    #[test]
    fn a_whole_vz_stream_decodes_into_its_frames() {
        assert_eq!(all(&mut VzCodec::new(1024), &vz_fixture()), vz_items());
    }

    #[test]
    fn a_vz_stream_split_at_every_byte_still_decodes_the_same() {
        let input = vz_fixture();
        for at in 0..=input.len() {
            assert_eq!(
                split(&mut VzCodec::new(1024), &input, at),
                vz_items(),
                "split at {at}"
            );
        }
    }

    #[test]
    fn a_gbk_plate_in_a_vz_body_decodes_to_text() {
        let items = all(&mut VzCodec::new(1024), &vz_fixture());
        let Framed::Item(f) = &items[1] else {
            panic!("frame")
        };
        assert_eq!(vz_body_text(&f.body).expect("text"), "{\"p\":\"晋A12345\"}");
    }

    #[test]
    fn garbage_before_and_between_vz_frames_is_skipped_and_reported_once_per_run() {
        let mut input = b"\x00\xFFjunk".to_vec(); // 6 bytes of garbage
        let f = vz_fixture();
        input.extend_from_slice(&f[..8]); // the heartbeat
        input.extend_from_slice(b"VX!!"); // 4 bytes: "V" followed by a wrong byte
        input.extend_from_slice(&f[8..]); // the JSON frame
        let items = all(&mut VzCodec::new(1024), &input);
        assert_eq!(
            items[0],
            Framed::Garbage {
                bytes: 6,
                reason: "no VZ header"
            }
        );
        assert_eq!(items[1], vz_items()[0]);
        assert!(matches!(items[2], Framed::Garbage { bytes: 4, .. }));
        assert_eq!(items[3], vz_items()[1]);
        assert_eq!(items.len(), 4);
    }

    #[test]
    fn an_unknown_frame_type_is_not_a_header() {
        let input = [
            0x56, 0x5A, // "VZ"
            0x07, // type 7: unknown
            0x00, 0x00, 0x00, 0x00, 0x00, // sn, length
        ];
        let items = all(&mut VzCodec::new(1024), &input);
        assert!(
            items.iter().all(|i| matches!(i, Framed::Garbage { .. })),
            "{items:?}"
        );
    }

    #[test]
    fn an_oversize_vz_frame_is_reported_and_the_next_frame_still_decodes() {
        let mut input = vec![
            0x56, 0x5A, // "VZ"
            0x00, 0x01, // type 0, sn 1
            0x00, 0x00, 0x00, 0x20, // length 32 > max 16
        ];
        input.extend_from_slice(&[b'x'; 32]); // the oversize body
        input.extend_from_slice(&vz_fixture()[..8]); // a heartbeat
        for at in 0..=input.len() {
            let items = split(&mut VzCodec::new(16), &input, at);
            assert!(
                matches!(
                    items[0],
                    Framed::Garbage {
                        reason: "oversize frame",
                        ..
                    }
                ),
                "at {at}: {items:?}"
            );
            assert_eq!(items.last(), Some(&vz_items()[0]), "at {at}");
        }
    }

    #[test]
    fn a_truncated_vz_frame_at_end_of_stream_is_garbage_not_an_error() {
        let f = vz_fixture();
        let items = all(&mut VzCodec::new(1024), &f[..12]);
        assert_eq!(items[0], vz_items()[0]);
        assert!(matches!(items[1], Framed::Garbage { bytes: 4, .. }));
    }

    #[test]
    fn a_vz_frame_encodes_to_what_decodes() {
        use tokio_util::codec::Encoder;
        let mut buf = BytesMut::new();
        for item in vz_items() {
            let Framed::Item(f) = item else {
                unreachable!()
            };
            VzCodec::new(64).encode(f, &mut buf).expect("encode");
        }
        assert_eq!(&buf[..], &vz_fixture()[..]);
    }

    fn gbk_codec() -> LineCodec {
        LineCodec::new(TextEncoding::Gbk, LineEnding::Lf, 64)
    }

    /// `IN,晋A12345,蓝\r\n` in GBK, then `OUT,X\n`.
    fn line_fixture() -> Vec<u8> {
        let mut v = b"IN,".to_vec(); // I N ,
        v.extend_from_slice(&JIN_GBK); // 晋
        v.extend_from_slice(b"A12345,"); // A12345 ,
        v.extend_from_slice(&[0xC0, 0xB6]); // 蓝 (GBK)
        v.extend_from_slice(b"\r\n"); // CR LF
        v.extend_from_slice(b"OUT,X\n"); // O U T , X LF
        v
    }

    fn line_items() -> Vec<Framed<String>> {
        vec![
            Framed::Item("IN,晋A12345,蓝".to_string()),
            Framed::Item("OUT,X".to_string()),
        ]
    }

    #[test]
    fn gbk_lines_decode_with_crlf_and_lf() {
        assert_eq!(all(&mut gbk_codec(), &line_fixture()), line_items());
    }

    #[test]
    fn lines_split_at_every_byte_still_decode_the_same() {
        let input = line_fixture();
        for at in 0..=input.len() {
            assert_eq!(
                split(&mut gbk_codec(), &input, at),
                line_items(),
                "split at {at}"
            );
        }
    }

    #[test]
    fn cr_terminated_lines_decode() {
        let mut c = LineCodec::new(TextEncoding::Utf8, LineEnding::Cr, 64);
        let items = all(&mut c, b"a,b\rc,d\r\n\re\r");
        assert_eq!(
            items,
            vec![
                Framed::Item("a,b".into()),
                Framed::Item("c,d".into()),
                Framed::Item("e".into())
            ]
        );
    }

    #[test]
    fn an_over_long_line_is_reported_and_the_next_line_still_decodes() {
        let mut input = vec![b'x'; 200]; // 200 bytes, max 64
        input.extend_from_slice(b"\nok\n");
        for at in 0..=input.len() {
            let items = split(&mut gbk_codec(), &input, at);
            assert!(
                matches!(
                    items[0],
                    Framed::Garbage {
                        reason: "line too long",
                        ..
                    }
                ),
                "at {at}: {items:?}"
            );
            assert_eq!(items.last(), Some(&Framed::Item("ok".into())), "at {at}");
            assert_eq!(items.len(), 2, "at {at}: {items:?}");
        }
    }

    #[test]
    fn invalid_gbk_is_reported_and_the_next_line_still_decodes() {
        let input = [
            0x81, 0x20,  // not a GBK character
            b'\n', // end of the bad line
            b'o', b'k', b'\n', // a good line
        ];
        let items = all(&mut gbk_codec(), &input);
        assert!(
            matches!(items[0], Framed::Garbage { bytes: 3, .. }),
            "{items:?}"
        );
        assert_eq!(items[1], Framed::Item("ok".into()));
    }

    #[test]
    fn invalid_utf8_is_reported_in_utf8_mode() {
        let mut c = LineCodec::new(TextEncoding::Utf8, LineEnding::Lf, 64);
        let items = all(&mut c, &[0xBD, 0xFA, b'\n']); // GBK bytes on a UTF-8 link
        assert!(matches!(items[0], Framed::Garbage { .. }));
    }

    fn fmt() -> LineFormat {
        LineFormat {
            fields: ["direction", "plate", "color", "time"]
                .iter()
                .map(|f| LineField::parse(f).expect("field"))
                .collect(),
            separator: ",".into(),
        }
    }

    #[test]
    fn a_line_becomes_a_record() {
        let r = parse_line("IN,晋A12345,蓝,2026-11-28 08:00:00", &fmt()).expect("record");
        assert_eq!(r.direction, Some(Direction::In));
        assert_eq!(r.plate.as_deref(), Some("晋A12345"));
        assert_eq!(r.color.as_deref(), Some("蓝"));
        assert_eq!(
            r.time,
            NaiveDateTime::parse_from_str("2026-11-28 08:00:00", "%Y-%m-%d %H:%M:%S").ok()
        );
        let r = parse_line("出, 无牌车 ,,20261128080000", &fmt()).expect("record");
        assert_eq!(r.direction, Some(Direction::Out));
        assert_eq!(r.plate, None);
        assert_eq!(r.color, None);
        assert!(r.time.is_some());
    }

    #[test]
    fn a_line_without_its_plate_field_is_an_error_naming_it() {
        let e = parse_line("IN", &fmt()).expect_err("short");
        assert!(e.to_string().contains("plate"), "{e}");
        assert!(LineField::parse("speed").is_err());
    }

    #[test]
    fn bad_or_missing_secondary_fields_keep_the_pass_and_say_why() {
        // Fixtures in the `direction,plate,color,time` template of devices.md §3.
        let r = parse_line("UP,晋A12345,蓝,2026-11-28 08:00:00", &fmt()).expect("kept");
        assert_eq!((r.direction, r.plate.as_deref()), (None, Some("晋A12345")));
        assert!(r.replaced[0].contains("\"UP\""), "{:?}", r.replaced);
        let r = parse_line("IN,晋A12345,蓝,yesterday", &fmt()).expect("kept");
        assert_eq!(r.time, None);
        assert!(r.replaced[0].starts_with("时间无效"), "{:?}", r.replaced);
        let r = parse_line("IN,晋A12345", &fmt()).expect("kept");
        assert_eq!(r.plate.as_deref(), Some("晋A12345"));
        assert_eq!(
            r.replaced.len(),
            2,
            "colour and time missing: {:?}",
            r.replaced
        );
        let r = parse_line(",晋A12345,蓝,2026-11-28 08:00:00", &fmt()).expect("kept");
        assert_eq!(r.direction, None);
        assert_eq!(r.replaced.len(), 1);
    }

    #[test]
    fn a_style_field_is_read_as_text() {
        let f = LineFormat {
            fields: ["plate", "style"]
                .iter()
                .map(|f| LineField::parse(f).expect("field"))
                .collect(),
            separator: ",".into(),
        };
        let r = parse_line("晋A12345,货车", &f).expect("record");
        assert_eq!(r.style.as_deref(), Some("货车"));
        assert!(r.replaced.is_empty());
        let r = parse_line("晋A12345,", &f).expect("record");
        assert_eq!(r.style, None);
    }

    #[test]
    fn skipped_fields_and_other_separators_work() {
        let f = LineFormat {
            fields: vec![LineField::Skip, LineField::Plate],
            separator: "|".into(),
        };
        let r = parse_line("007|晋A12345|extra", &f).expect("record");
        assert_eq!(r.plate.as_deref(), Some("晋A12345"));
        assert_eq!(r.direction, None);
    }

    #[test]
    fn detector_frames_parse_and_checksums_are_ours_to_judge() {
        let payload = "001,01,02,1,9,050,010";
        let sum = payload.bytes().fold(0u8, |a, b| a ^ b);
        let good = format!("${payload}*{sum:02X}");
        let f = parse_detector_frame(&good).expect("frame");
        assert_eq!((f.host, f.channel, f.detector), (1, 1, 2));
        assert_eq!(f.state, DetectorState::Present);
        assert_eq!((f.battery, f.threshold, f.delay), (9, 50, 10));
        assert!(f.checksum_ok());
        let bad = parse_detector_frame(&format!("${payload}*{:02X}", sum ^ 1)).expect("frame");
        assert!(!bad.checksum_ok());
        let fault = parse_detector_frame("$001,01,02,2,9,050,010*00").expect("frame");
        assert_eq!(fault.state, DetectorState::Fault);
        for broken in [
            "001,01,02,1,9,050,010*00",
            "$001,01,02,1,9,050*00",
            "$001,01,02,7,9,050,010*00",
            "$001,01,02,1,9,050,010*G0",
            "$001,01,02,1,9,050,010",
            "$abc,01,02,1,9,050,010*00",
            "$001,999,02,1,9,050,010*00",
        ] {
            assert!(parse_detector_frame(broken).is_err(), "{broken}");
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_buffers_stay_bounded(
            chunks in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), 0..20)
        ) {
            let mut vz = VzCodec::new(256);
            let mut line = LineCodec::new(TextEncoding::Gbk, LineEnding::Lf, 128);
            let mut a = BytesMut::new();
            let mut b = BytesMut::new();
            for c in &chunks {
                a.extend_from_slice(c);
                b.extend_from_slice(c);
                while let Some(_item) = vz.decode(&mut a).expect("no error") {}
                while let Some(_item) = line.decode(&mut b).expect("no error") {}
                proptest::prop_assert!(a.len() <= 256 + VZ_HEADER + 300);
                proptest::prop_assert!(b.len() <= 128 + 300);
                if let Ok(text) = std::str::from_utf8(c) {
                    let _ = parse_detector_frame(text);
                    let _ = parse_line(text, &fmt());
                }
            }
            while let Some(_item) = vz.decode_eof(&mut a).expect("no error") {}
            while let Some(_item) = line.decode_eof(&mut b).expect("no error") {}
        }
    }
}
