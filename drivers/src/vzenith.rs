//! Vzenith (臻识) LPR cameras: MQTT topics, the message envelope and the `AlarmInfoPlate`
//! plate result, turned into typed values (see `devices.md` sections 1 and 2).
//!
//! Pure: no I/O and no MQTT client. The MQTT driver calls [`parse_topic`] /
//! [`parse_message`]; the binary `VZ` framing (TCP SDK, serial) calls [`parse_vz_body`] on
//! a JSON body it has already decoded to text (GBK or UTF-8).
//!
//! Leniency rules, because firmwares differ:
//! - every number may arrive as a JSON number or as a numeric string;
//! - `license` is Base64 of UTF-8 over MQTT and plain text elsewhere ([`decode_license`]);
//! - an image that does not decode is dropped (`image: None`, reason in `image_error`),
//!   never an error: the gateway substitutes a placeholder;
//! - a plate-result field that is missing or not understood falls back to "unknown".
//!
//! The values stay as the camera sent them (plate text, colour, type, time); drivers turn a
//! [`VzPlate`] into a [`Reading`] ([`VzPlate::reading`]) and hand it to
//! [`crate::plate::normalise`], the one place that cleans and checks values for every driver.
//!
//! Nothing here panics on any input bytes.

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use serde_json::Value;

use crate::plate::Reading;
use crate::CarStyle;

/// The latest Unix second accepted as a capture time (9999-12-31T23:59:59Z).
const MAX_UNIX_SECS: i64 = 253_402_300_799;

/// Base64 for licenses: standard alphabet, padding optional, strict trailing bits (fewer
/// plain-text plates mistaken for Base64).
const LICENSE_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Base64 for images: standard alphabet, padding optional, trailing bits tolerated.
const IMAGE_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Why a Vzenith message or body could not be understood.
#[derive(Debug, thiserror::Error)]
pub enum VzError {
    /// The payload is not JSON (or not UTF-8, or truncated).
    #[error("payload is not JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    /// The payload is JSON but not an object.
    #[error("payload is JSON but not an object")]
    NotAnObject,
    /// A plate message without `AlarmInfoPlate.result.PlateResult`.
    #[error("no AlarmInfoPlate.result.PlateResult object in the message")]
    MissingPlateResult,
    /// A `gpio_in` message without `AlarmGioIn.result.TriggerResult`.
    #[error("no AlarmGioIn.result.TriggerResult object in the gpio_in message")]
    MissingTriggerResult,
    /// A required field is absent (e.g. `sn` / `name` when the topic does not carry them).
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    /// A required numeric field is not a number in range.
    #[error("field `{0}` is not a valid number")]
    InvalidNumber(&'static str),
}

/// Where [`VzPlate::captured_at_ms`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VzTimeSource {
    /// The plate result's own `timeStamp.Timeval` (the same for the quick and the full result).
    Plate,
    /// The envelope's `timestamp` (when the message was sent; differs between quick and full).
    Envelope,
    /// No usable capture time: the gateway uses its own corrected clock.
    #[default]
    Absent,
}

/// One plate read by a Vzenith camera.
#[derive(Clone, PartialEq, Eq)]
pub struct VzPlate {
    /// Camera serial number (from the topic, else the envelope, else `serialno`).
    pub sn: String,
    /// The envelope `id` (unique per MQTT message); `None` outside MQTT.
    pub msg_id: Option<String>,
    /// `true` for `quick_ivs_result` (sent at once, no images), `false` for `ivs_result`.
    pub quick: bool,
    /// A pass the camera buffered while it could not publish (`offline_record`, or an
    /// `isoffline` flag): its capture time may be old.
    pub offline: bool,
    /// Plate text; `None` when no plate was read (`_无_`, `无牌车`, `无车牌`, empty).
    pub plate: Option<String>,
    /// Plate colour word (蓝 黄 白 黑 绿 黄绿); `None` for 0 / unknown.
    pub color: Option<&'static str>,
    /// Vzenith plate type code (0 unknown).
    pub plate_type: u32,
    /// Vehicle style from [`default_style`]; apply config overrides with [`style_with`].
    pub style: CarStyle,
    /// Capture time, Unix milliseconds (see `time_source`).
    pub captured_at_ms: Option<i64>,
    /// Where `captured_at_ms` came from; decides the form of [`VzPlate::source_key`].
    pub time_source: VzTimeSource,
    /// The decoded `full_image_content` (else `small_image_content`).
    pub image: Option<Vec<u8>>,
    /// Why an image that was present could not be decoded (then `image` is `None`).
    pub image_error: Option<String>,
    /// `triggerType` bit mask (1 auto, 2 IO, 4 software, 8 virtual loop; 64/65/66 lingering).
    pub trigger: u32,
    /// `triggerType` 64/65/66 (lingering, lingering ended, turned back): not a pass.
    pub lingering: bool,
    /// Recognition confidence, 1–100.
    pub confidence: Option<u32>,
    /// A digest of the plate result's content (license, colour, type, trigger, confidence,
    /// image bytes): identical for a re-delivery of the same message.
    pub digest: u64,
}

impl std::fmt::Debug for VzPlate {
    // Image bytes are never printed: they are large and may be personal data.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VzPlate")
            .field("sn", &self.sn)
            .field("msg_id", &self.msg_id)
            .field("quick", &self.quick)
            .field("offline", &self.offline)
            .field("plate", &self.plate)
            .field("color", &self.color)
            .field("plate_type", &self.plate_type)
            .field("style", &self.style)
            .field("captured_at_ms", &self.captured_at_ms)
            .field("time_source", &self.time_source)
            .field("image_bytes", &self.image.as_ref().map(Vec::len))
            .field("image_error", &self.image_error)
            .field("trigger", &self.trigger)
            .field("lingering", &self.lingering)
            .field("confidence", &self.confidence)
            .field("digest", &format_args!("{:016x}", self.digest))
            .finish()
    }
}

impl VzPlate {
    /// The dedupe key for the gateway's ingest: what identifies this pass, so that a
    /// re-delivery (MQTT `QoS` 1 after a lost PUBACK, an HTTP retry, an `offline_record` of a
    /// pass already sent) within the outbox's window is stored once.
    ///
    /// 1. `vz:{sn}:{captured_at_ms}:{plate or "-"}` when the capture time came from the plate
    ///    result itself (identical for the quick and the full result of one pass, for a
    ///    re-delivery and for an `offline_record` replay);
    /// 2. else `vz:{sn}:id:{msg_id}` (identical for a re-delivery);
    /// 3. else, dated only by the envelope `timestamp`, by content:
    ///    `vz:{sn}:env:{ms}:{plate or "-"}:{trigger}`;
    /// 4. else, with no time and no id at all, `vz:{sn}:digest:{digest}`: a re-delivery is
    ///    byte-identical, another pass differs in its pictures (a cost: two image-less
    ///    results of the same plate with the same confidence inside the window are one).
    pub fn source_key(&self) -> String {
        let plate = self.plate.as_deref().unwrap_or("-");
        let sn = &self.sn;
        match (
            self.time_source,
            self.captured_at_ms,
            self.msg_id.as_deref(),
        ) {
            (VzTimeSource::Plate, Some(ms), _) => format!("vz:{sn}:{ms}:{plate}"),
            (_, _, Some(id)) if !id.is_empty() => format!("vz:{sn}:id:{id}"),
            (VzTimeSource::Envelope, Some(ms), _) => {
                format!("vz:{sn}:env:{ms}:{plate}:{}", self.trigger)
            }
            _ => format!("vz:{sn}:digest:{:016x}", self.digest),
        }
    }

    /// What this result says, for [`crate::plate::normalise`]: the lane `node_name`, the
    /// camera's plate type as the style to look up (`default_style` when the camera's
    /// `styles` table has no entry), buffered when `offline`, and an image that did not
    /// decode named in the remark.
    pub fn reading(self, node_name: &str) -> Reading {
        let source_key = self.source_key();
        Reading {
            source_key,
            node_name: node_name.to_owned(),
            direction: None,
            plate: self.plate,
            color: self.color.map(str::to_owned),
            style: Some(self.plate_type.to_string()),
            vendor_style: Some(self.style),
            captured_at_ms: self.captured_at_ms,
            buffered: self.offline,
            brand: None,
            image: self.image,
            replaced: Vec::new(),
            notes: self
                .image_error
                .map(|e| format!("图片无效 (camera image invalid: {e})"))
                .into_iter()
                .collect(),
        }
    }
}

/// A message from a Vzenith camera, by its topic name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VzMessage {
    /// `ivs_result`, `quick_ivs_result` or `offline_record`.
    Plate(VzPlate),
    /// `gpio_in`: a level change on the camera's IO input `source`.
    Gpio {
        /// Camera serial number.
        sn: String,
        /// IO input index.
        source: u32,
        /// New level (0 or 1).
        value: u8,
    },
    /// `keep_alive`: the camera is alive.
    KeepAlive {
        /// Camera serial number.
        sn: String,
    },
    /// Any other message name (ignored by the driver, but proves liveness).
    Other {
        /// Camera serial number.
        sn: String,
        /// The message name.
        name: String,
    },
}

/// Splits a topic of either layout, `device/{sn}/message/up/{name}` or
/// `{sn}/device/message/up/{name}`, into `(sn, name)`. `None` for anything else
/// (including empty parts and MQTT wildcards).
pub fn parse_topic(topic: &str) -> Option<(String, String)> {
    let mut parts = topic.split('/');
    let first = parts.next()?;
    let second = parts.next()?;
    let third = parts.next()?;
    let fourth = parts.next()?;
    let name = parts.next()?;
    if parts.next().is_some() || third != "message" || fourth != "up" {
        return None;
    }
    let sn = if first == "device" {
        second
    } else if second == "device" {
        first
    } else {
        return None;
    };
    let usable = |s: &str| !s.is_empty() && !s.contains(['+', '#']);
    if !usable(sn) || !usable(name) {
        return None;
    }
    Some((sn.to_owned(), name.to_owned()))
}

/// The two topic filters to subscribe to: one per layout, `+` for the serial number when
/// `sn` is `None` (or empty), and `+` for the message name.
pub fn subscriptions(sn: Option<&str>) -> [String; 2] {
    let sn = sn.filter(|s| !s.is_empty()).unwrap_or("+");
    [
        format!("device/{sn}/message/up/+"),
        format!("{sn}/device/message/up/+"),
    ]
}

/// Parses one MQTT message.
///
/// The name and serial number come from the topic when it has one of the two layouts, else
/// from the envelope's `name` / `sn`. `ivs_result`, `quick_ivs_result` and `offline_record`
/// (a pass the camera buffered, [`VzPlate::offline`]) become
/// [`VzMessage::Plate`], `gpio_in` [`VzMessage::Gpio`], `keep_alive`
/// [`VzMessage::KeepAlive`], anything else [`VzMessage::Other`].
///
/// Capture time: the plate result's `timeStamp.Timeval.sec` (+`usec`); when that is absent
/// and `envelope_fallback` is set, the envelope `timestamp` (seconds; values of 10^12 and
/// more are taken as milliseconds); else `None` (the gateway's clock).
///
/// The message id is the envelope `id`, else a `unique_id` (envelope or plate result).
/// An `isoffline` flag that is true (envelope, payload or plate result) marks the result as
/// buffered, like `offline_record`.
pub fn parse_message(
    topic: &str,
    payload: &[u8],
    envelope_fallback: bool,
) -> Result<VzMessage, VzError> {
    let root: Value = serde_json::from_slice(payload)?;
    if !root.is_object() {
        return Err(VzError::NotAnObject);
    }
    let (sn, name) = match parse_topic(topic) {
        Some(pair) => pair,
        None => (
            text_field(root.get("sn")).ok_or(VzError::MissingField("sn"))?,
            text_field(root.get("name")).ok_or(VzError::MissingField("name"))?,
        ),
    };
    // Some firmwares send the body without the envelope around it.
    let inner = root
        .get("payload")
        .filter(|p| p.is_object())
        .unwrap_or(&root);

    match name.as_str() {
        "ivs_result" | "quick_ivs_result" | "offline_record" => {
            let mut plate = parse_plate_result(&sn, inner, true)?;
            plate.quick = name == "quick_ivs_result";
            plate.offline |= name == "offline_record" || is_offline(&root) || is_offline(inner);
            plate.msg_id = text_field(root.get("id"))
                .or_else(|| text_field(root.get("unique_id")))
                .or(plate.msg_id);
            if plate.time_source == VzTimeSource::Absent && envelope_fallback {
                if let Some(ms) = root.get("timestamp").and_then(envelope_ms) {
                    plate.captured_at_ms = Some(ms);
                    plate.time_source = VzTimeSource::Envelope;
                }
            }
            Ok(VzMessage::Plate(plate))
        }
        "gpio_in" => {
            let body = inner.get("body").filter(|b| b.is_object()).unwrap_or(inner);
            let trigger = body
                .get("AlarmGioIn")
                .and_then(|a| a.get("result"))
                .and_then(|r| r.get("TriggerResult"))
                .filter(|t| t.is_object())
                .ok_or(VzError::MissingTriggerResult)?;
            let source = trigger
                .get("source")
                .and_then(num_u64)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or(VzError::InvalidNumber("source"))?;
            let value = trigger
                .get("value")
                .and_then(num_u64)
                .and_then(|n| u8::try_from(n).ok())
                .ok_or(VzError::InvalidNumber("value"))?;
            Ok(VzMessage::Gpio { sn, source, value })
        }
        "keep_alive" => Ok(VzMessage::KeepAlive { sn }),
        _ => Ok(VzMessage::Other { sn, name }),
    }
}

/// Parses a plate result.
///
/// `alarm_info_plate` is the `AlarmInfoPlate` object (an object that wraps it under an
/// `AlarmInfoPlate` key is accepted too); the plate result is its `result.PlateResult`
/// (or a direct `PlateResult`). `license_base64` applies the Base64 rule of
/// [`decode_license`] (MQTT); otherwise the license is taken as plain text. The capture
/// time comes only from `timeStamp.Timeval`; `msg_id` is `None` and `quick` is `false`.
pub fn parse_plate_result(
    sn: &str,
    alarm_info_plate: &Value,
    license_base64: bool,
) -> Result<VzPlate, VzError> {
    let info = alarm_info_plate
        .get("AlarmInfoPlate")
        .unwrap_or(alarm_info_plate);
    let result = info
        .get("result")
        .and_then(|r| r.get("PlateResult"))
        .or_else(|| info.get("PlateResult"))
        .filter(|p| p.is_object())
        .ok_or(VzError::MissingPlateResult)?;
    let first_plate = result.get("plates").and_then(|p| p.get(0));
    let from_first = |key: &str| first_plate.and_then(|p| p.get(key));

    let plate = result
        .get("license")
        .and_then(Value::as_str)
        .and_then(|raw| decode_license(raw, license_base64));
    // Older firmware `colorType`, some `color`, newer `plates[0].color`: the first known.
    let color = result
        .get("colorType")
        .and_then(color_of)
        .or_else(|| result.get("color").and_then(color_of))
        .or_else(|| from_first("color").and_then(color_of));
    let plate_type = result
        .get("type")
        .and_then(num_u32)
        .filter(|t| *t != 0)
        .or_else(|| from_first("type").and_then(num_u32))
        .unwrap_or(0);
    let captured_at_ms = result.get("timeStamp").and_then(timeval_ms);
    let time_source = if captured_at_ms.is_some() {
        VzTimeSource::Plate
    } else {
        VzTimeSource::Absent
    };
    let (image, image_error) = pick_image(result);
    let trigger = result.get("triggerType").and_then(num_u32).unwrap_or(0);
    let confidence = result.get("confidence").and_then(num_u32);
    let digest = {
        let mut d = Fnv::default();
        d.field(plate.as_deref().unwrap_or("").as_bytes());
        d.field(color.unwrap_or("").as_bytes());
        d.field(&plate_type.to_le_bytes());
        d.field(&trigger.to_le_bytes());
        d.field(&confidence.unwrap_or(0).to_le_bytes());
        d.field(image.as_deref().unwrap_or(&[]));
        d.0
    };

    Ok(VzPlate {
        sn: sn.to_owned(),
        msg_id: text_field(result.get("unique_id")),
        quick: false,
        offline: is_offline(result),
        plate,
        color,
        plate_type,
        style: default_style(plate_type),
        captured_at_ms,
        time_source,
        image,
        image_error,
        trigger,
        lingering: matches!(trigger, 64..=66),
        confidence,
        digest,
    })
}

/// FNV-1a, 64 bit: a small, stable content digest (the same on every build and across
/// restarts, unlike `std`'s hasher, so dedupe keys survive a gateway restart).
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    /// Add one field, length first, so that field boundaries count.
    fn field(&mut self, bytes: &[u8]) {
        for b in u64::try_from(bytes.len())
            .unwrap_or(u64::MAX)
            .to_le_bytes()
            .iter()
            .chain(bytes)
        {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// An `isoffline` flag that is set (`1`, `true`, `"1"`, `"true"`).
fn is_offline(v: &Value) -> bool {
    match v.get("isoffline").or_else(|| v.get("isOffline")) {
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            num_i64(other).is_some_and(|n| n != 0)
                || other
                    .as_str()
                    .is_some_and(|s| s.trim().eq_ignore_ascii_case("true"))
        }
        None => false,
    }
}

/// Parses the JSON body of a binary `VZ` frame, `{"AlarmInfoPlate": …}` with a plain-text
/// license, already decoded to text. A trailing `\n\0` (and whitespace) is ignored. The
/// serial number is `AlarmInfoPlate.serialno`, else empty.
pub fn parse_vz_body(json_text: &str) -> Result<VzPlate, VzError> {
    let text = json_text.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    let root: Value = serde_json::from_str(text)?;
    if !root.is_object() {
        return Err(VzError::NotAnObject);
    }
    let info = root.get("AlarmInfoPlate").unwrap_or(&root);
    let sn = text_field(info.get("serialno")).unwrap_or_default();
    parse_plate_result(&sn, info, false)
}

/// The plate text of a `license` field; `None` when no plate was read.
///
/// With `base64` set: if every character is in the standard Base64 alphabet (padding
/// optional) and the text decodes to non-empty UTF-8 without control characters, the
/// decoded text is used; otherwise the text as it is. Then `_无_`, `无牌车`, `无车牌`, `无`
/// and empty mean "no plate".
pub fn decode_license(raw: &str, base64: bool) -> Option<String> {
    let raw = trim_text(raw);
    let decoded = if base64 {
        decode_base64_text(raw)
    } else {
        None
    };
    let text = decoded.as_deref().map_or(raw, trim_text);
    if is_no_plate(text) {
        None
    } else {
        Some(text.to_owned())
    }
}

/// `true` for the texts cameras send when they read no plate (see
/// [`crate::plate::is_no_plate`]).
pub fn is_no_plate(text: &str) -> bool {
    crate::plate::is_no_plate(text)
}

/// The colour word for a Vzenith colour code (1 蓝 … 6 黄绿); `None` for 0 and unknown codes.
pub fn color_name(code: u32) -> Option<&'static str> {
    match crate::plate::normalise_color(&code.to_string()) {
        crate::plate::Colour::Word(w) => Some(w),
        _ => None,
    }
}

/// The default vehicle style for a plate type: 3, 4, 12 (yellow and farm plates) are
/// [`CarStyle::Large`], everything else [`CarStyle::Car`].
pub fn default_style(plate_type: u32) -> CarStyle {
    match plate_type {
        3 | 4 | 12 => CarStyle::Large,
        _ => CarStyle::Car,
    }
}

/// The vehicle style for a plate type: the first matching entry of `overrides` (from
/// config), else [`default_style`].
pub fn style_with(plate_type: u32, overrides: &[(u32, CarStyle)]) -> CarStyle {
    overrides
        .iter()
        .find(|(t, _)| *t == plate_type)
        .map_or_else(|| default_style(plate_type), |(_, style)| *style)
}

/// Decodes a Base64 image: standard alphabet, padding optional, ASCII whitespace and line
/// breaks anywhere ignored, a `data:…;base64,` prefix tolerated. Blank input gives an
/// empty vector. Copies the text only when it contains whitespace.
pub fn decode_base64_image(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    let mut text = text.trim_ascii();
    if text.starts_with("data:") {
        if let Some(at) = text.find(";base64,") {
            text = text.get(at + ";base64,".len()..).unwrap_or("");
        }
    }
    let bytes = text.as_bytes();
    if bytes.iter().any(u8::is_ascii_whitespace) {
        let compact: Vec<u8> = bytes
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        IMAGE_B64.decode(compact)
    } else {
        IMAGE_B64.decode(bytes)
    }
}

/// `full_image_content`, else `small_image_content`, decoded; with the reason when an
/// image was present but none decoded.
fn pick_image(result: &Value) -> (Option<Vec<u8>>, Option<String>) {
    let mut error = None;
    for key in ["full_image_content", "small_image_content"] {
        let Some(text) = result.get(key).and_then(Value::as_str) else {
            continue;
        };
        match decode_base64_image(text) {
            Ok(bytes) if !bytes.is_empty() => return (Some(bytes), None),
            Ok(_) => {}
            Err(e) => {
                if error.is_none() {
                    error = Some(format!("{key}: {e}"));
                }
            }
        }
    }
    (None, error)
}

fn decode_base64_text(raw: &str) -> Option<String> {
    let in_alphabet = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=');
    if raw.is_empty() || !raw.bytes().all(in_alphabet) {
        return None;
    }
    let bytes = LICENSE_B64.decode(raw).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    if trim_text(&text).is_empty() || text.chars().any(char::is_control) {
        return None;
    }
    Some(text)
}

fn trim_text(text: &str) -> &str {
    text.trim_matches(|c: char| c == '\0' || c.is_whitespace())
}

fn color_of(v: &Value) -> Option<&'static str> {
    if let Some(code) = num_u32(v) {
        return color_name(code);
    }
    // Some firmwares send the word itself (Chinese or English).
    match crate::plate::normalise_color(v.as_str()?) {
        crate::plate::Colour::Word(w) => Some(w),
        _ => None,
    }
}

/// `timeStamp.Timeval.sec` (+`usec`) as Unix ms; `None` when absent, zero or out of range.
fn timeval_ms(stamp: &Value) -> Option<i64> {
    let tv = stamp.get("Timeval").unwrap_or(stamp);
    let sec = tv.get("sec").and_then(num_i64)?;
    if !(1..=MAX_UNIX_SECS).contains(&sec) {
        return None;
    }
    let usec = tv
        .get("usec")
        .and_then(num_i64)
        .filter(|u| (0..1_000_000).contains(u))
        .unwrap_or(0);
    Some(sec * 1000 + usec / 1000)
}

/// The envelope `timestamp` as Unix ms: seconds (fractions allowed); values of 10^12 and
/// more cannot be seconds in range and are taken as milliseconds.
fn envelope_ms(v: &Value) -> Option<i64> {
    let n = num_f64(v)?;
    let ms = if n >= 1e12 { n } else { n * 1000.0 };
    #[allow(clippy::cast_precision_loss)]
    let max_ms = (MAX_UNIX_SECS * 1000) as f64;
    if !(1.0..=max_ms).contains(&ms) {
        return None;
    }
    // In range and finite, so the cast is exact to the millisecond.
    #[allow(clippy::cast_possible_truncation)]
    Some(ms.round() as i64)
}

/// A JSON string (trimmed, non-empty) or number as text.
fn text_field(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(trim_text(s).to_owned()).filter(|s| !s.is_empty()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A finite number from a JSON number or a numeric string.
fn num_f64(v: &Value) -> Option<f64> {
    let n = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => trim_text(s).parse::<f64>().ok()?,
        _ => return None,
    };
    n.is_finite().then_some(n)
}

/// A whole number from a JSON number (`12`, `12.0`) or a numeric string (`"12"`).
fn num_i64(v: &Value) -> Option<i64> {
    if let Value::Number(n) = v {
        if let Some(i) = n.as_i64() {
            return Some(i);
        }
    }
    if let Value::String(s) = v {
        if let Ok(i) = trim_text(s).parse::<i64>() {
            return Some(i);
        }
    }
    whole_f64(num_f64(v)?)
}

/// `f` as an `i64` when it is whole and within range.
#[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
fn whole_f64(f: f64) -> Option<i64> {
    // -2^63 and 2^63 are exact as f64; whole values in between convert exactly.
    let in_range = f >= i64::MIN as f64 && f < i64::MAX as f64;
    (f.fract() == 0.0 && in_range).then_some(f as i64)
}

fn num_u64(v: &Value) -> Option<u64> {
    u64::try_from(num_i64(v)?).ok()
}

fn num_u32(v: &Value) -> Option<u32> {
    u32::try_from(num_i64(v)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    use proptest::prelude::*;

    const SN: &str = "e1f2a3b4-c5d6e7f8";

    /// A full `ivs_result` with a Base64 license, older `colorType` and a capture time.
    const IVS_FULL: &str = r#"{
        "id": "7d1c9e2a-0f3b-4c55-9a61-2b8e4f6d1a90",
        "sn": "e1f2a3b4-c5d6e7f8",
        "name": "ivs_result",
        "version": "1.0",
        "timestamp": 1795910401,
        "payload": {
            "AlarmInfoPlate": {
                "deviceName": "东门入口",
                "ipaddr": "192.168.1.100",
                "serialno": "e1f2a3b4-c5d6e7f8",
                "result": {
                    "PlateResult": {
                        "license": "5pmLQTEyMzQ1",
                        "colorType": 1,
                        "type": 1,
                        "confidence": 93,
                        "triggerType": 8,
                        "timeStamp": {"Timeval": {"sec": 1795910400, "usec": 250000}},
                        "full_image_content": "/9j/4AAQSkZJRg==",
                        "small_image_content": "/9j/2w=="
                    }
                }
            }
        }
    }"#;

    /// The quick result of the same pass: its own envelope id and timestamp, no images.
    const IVS_QUICK: &str = r#"{
        "id": "0a9b8c7d-6e5f-4a3b-2c1d-0e9f8a7b6c5d",
        "sn": "e1f2a3b4-c5d6e7f8",
        "name": "quick_ivs_result",
        "version": "1.0",
        "timestamp": 1795910400,
        "payload": {
            "AlarmInfoPlate": {
                "serialno": "e1f2a3b4-c5d6e7f8",
                "result": {
                    "PlateResult": {
                        "license": "5pmLQTEyMzQ1",
                        "colorType": "1",
                        "type": "1",
                        "triggerType": "8",
                        "timeStamp": {"Timeval": {"sec": "1795910400", "usec": "250000"}}
                    }
                }
            }
        }
    }"#;

    /// Newer firmware: `plates[0]`, no timeStamp, plain-text license.
    const IVS_NEWER: &str = r#"{
        "id": "11112222-3333-4444-5555-666677778888",
        "sn": "a0b0c0d0-00112233",
        "name": "ivs_result",
        "version": "1.0",
        "timestamp": 1795913000,
        "payload": {
            "AlarmInfoPlate": {
                "serialno": "a0b0c0d0-00112233",
                "result": {
                    "PlateResult": {
                        "license": "粤B12345D",
                        "plates": [{"color": 6, "type": 4}],
                        "triggerType": 1
                    }
                }
            }
        }
    }"#;

    fn topic_a(name: &str) -> String {
        format!("device/{SN}/message/up/{name}")
    }

    fn plate_of(msg: VzMessage) -> VzPlate {
        match msg {
            VzMessage::Plate(p) => p,
            other => panic!("expected a plate, got {other:?}"),
        }
    }

    fn plate_json(plate_result: &str) -> String {
        format!(
            r#"{{"id":"m-1","sn":"{SN}","name":"ivs_result","timestamp":1795910401,
               "payload":{{"AlarmInfoPlate":{{"result":{{"PlateResult":{plate_result}}}}}}}}}"#
        )
    }

    fn parse_pr(plate_result: &str) -> VzPlate {
        plate_of(
            parse_message(
                &topic_a("ivs_result"),
                plate_json(plate_result).as_bytes(),
                true,
            )
            .expect("plate parses"),
        )
    }

    /// Deterministic pseudo-random bytes (a small LCG), so the test needs no RNG crate.
    fn generated_bytes(len: usize) -> Vec<u8> {
        let mut state: u32 = 0x1234_5678;
        (0..len)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                state.to_be_bytes()[0]
            })
            .collect()
    }

    #[test]
    fn both_topic_layouts_give_the_serial_number_and_the_name() {
        assert_eq!(
            parse_topic("device/e1f2a3b4-c5d6e7f8/message/up/ivs_result"),
            Some((SN.to_owned(), "ivs_result".to_owned()))
        );
        assert_eq!(
            parse_topic("e1f2a3b4-c5d6e7f8/device/message/up/gpio_in"),
            Some((SN.to_owned(), "gpio_in".to_owned()))
        );
    }

    #[test]
    fn topics_of_other_shapes_are_not_camera_topics() {
        for topic in [
            "",
            "device",
            "device/sn/message/up",
            "device/sn/message/up/",
            "device//message/up/ivs_result",
            "device/sn/message/down/ivs_result",
            "device/sn/message/up/ivs_result/extra",
            "other/sn/message/up/ivs_result",
            "device/+/message/up/ivs_result",
            "device/sn/message/up/#",
        ] {
            assert_eq!(parse_topic(topic), None, "{topic}");
        }
    }

    #[test]
    fn subscriptions_cover_both_layouts_with_wildcards() {
        assert_eq!(
            subscriptions(None),
            [
                "device/+/message/up/+".to_owned(),
                "+/device/message/up/+".to_owned()
            ]
        );
        assert_eq!(
            subscriptions(Some("abc")),
            [
                "device/abc/message/up/+".to_owned(),
                "abc/device/message/up/+".to_owned()
            ]
        );
        assert_eq!(subscriptions(Some("")), subscriptions(None));
    }

    #[test]
    fn a_full_ivs_result_is_parsed_into_all_fields() {
        let p = plate_of(parse_message(&topic_a("ivs_result"), IVS_FULL.as_bytes(), true).unwrap());
        assert_eq!(p.sn, SN);
        assert_eq!(
            p.msg_id.as_deref(),
            Some("7d1c9e2a-0f3b-4c55-9a61-2b8e4f6d1a90")
        );
        assert!(!p.quick);
        assert_eq!(p.plate.as_deref(), Some("晋A12345"));
        assert_eq!(p.color, Some("蓝"));
        assert_eq!(p.plate_type, 1);
        assert_eq!(p.style, CarStyle::Car);
        assert_eq!(p.captured_at_ms, Some(1_795_910_400_250));
        assert_eq!(p.time_source, VzTimeSource::Plate);
        assert_eq!(
            p.image.as_deref(),
            Some(&STANDARD.decode("/9j/4AAQSkZJRg==").unwrap()[..])
        );
        assert_eq!(p.image_error, None);
        assert_eq!(p.trigger, 8);
        assert!(!p.lingering);
        assert_eq!(p.confidence, Some(93));
    }

    #[test]
    fn the_second_topic_layout_parses_the_same_message() {
        let topic = format!("{SN}/device/message/up/ivs_result");
        let a = plate_of(parse_message(&topic_a("ivs_result"), IVS_FULL.as_bytes(), true).unwrap());
        let b = plate_of(parse_message(&topic, IVS_FULL.as_bytes(), true).unwrap());
        assert_eq!(a, b);
    }

    #[test]
    fn the_topic_name_and_serial_number_win_over_the_envelope() {
        let p = parse_message(
            "device/other-sn/message/up/quick_ivs_result",
            IVS_FULL.as_bytes(),
            true,
        )
        .unwrap();
        let p = plate_of(p);
        assert!(p.quick, "topic says quick_ivs_result");
        assert_eq!(p.sn, "other-sn");
    }

    #[test]
    fn an_unrecognised_topic_falls_back_to_the_envelope_sn_and_name() {
        let p = plate_of(parse_message("cameras/x", IVS_FULL.as_bytes(), true).unwrap());
        assert_eq!(p.sn, SN);
        assert!(!p.quick);
        let err = parse_message("cameras/x", br#"{"payload":{}}"#, true).unwrap_err();
        assert!(matches!(err, VzError::MissingField("sn")), "{err}");
    }

    #[test]
    fn quick_and_full_results_of_one_pass_share_a_source_key() {
        let full =
            plate_of(parse_message(&topic_a("ivs_result"), IVS_FULL.as_bytes(), true).unwrap());
        let quick = plate_of(
            parse_message(&topic_a("quick_ivs_result"), IVS_QUICK.as_bytes(), true).unwrap(),
        );
        assert!(quick.quick);
        assert_eq!(quick.image, None);
        assert_ne!(quick.msg_id, full.msg_id);
        assert_eq!(quick.source_key(), full.source_key());
        assert_eq!(full.source_key(), format!("vz:{SN}:1795910400250:晋A12345"));
    }

    #[test]
    fn a_redelivered_message_without_plate_time_keys_on_the_message_id() {
        let topic = "device/a0b0c0d0-00112233/message/up/ivs_result";
        let first = plate_of(parse_message(topic, IVS_NEWER.as_bytes(), true).unwrap());
        let again = plate_of(parse_message(topic, IVS_NEWER.as_bytes(), true).unwrap());
        assert_eq!(first.time_source, VzTimeSource::Envelope);
        assert_eq!(first.captured_at_ms, Some(1_795_913_000_000));
        assert_eq!(
            first.source_key(),
            "vz:a0b0c0d0-00112233:id:11112222-3333-4444-5555-666677778888"
        );
        assert_eq!(first.source_key(), again.source_key());
    }

    #[test]
    fn without_envelope_fallback_a_missing_plate_time_stays_unknown() {
        let topic = "device/a0b0c0d0-00112233/message/up/ivs_result";
        let p = plate_of(parse_message(topic, IVS_NEWER.as_bytes(), false).unwrap());
        assert_eq!(p.captured_at_ms, None);
        assert_eq!(p.time_source, VzTimeSource::Absent);
    }

    /// An `ivs_result` as real cameras send it (devices.md §1, "More that real cameras
    /// send"): no envelope `id`, no `timeStamp` in the plate result, colour in
    /// `PlateResult.color`; only the envelope `timestamp` dates it.
    const IVS_NO_ID: &str = r#"{
        "sn": "e1f2a3b4-c5d6e7f8",
        "name": "ivs_result",
        "version": "1.0",
        "timestamp": 1795910405,
        "payload": {
            "AlarmInfoPlate": {
                "serialno": "e1f2a3b4-c5d6e7f8",
                "result": {
                    "PlateResult": {
                        "license": "5pmLQTEyMzQ1",
                        "color": 2,
                        "type": 3,
                        "triggerType": 8,
                        "confidence": 88,
                        "full_image_content": "/9j/4AAQSkZJRg=="
                    }
                }
            }
        }
    }"#;

    #[test]
    fn plate_result_color_is_the_plate_colour() {
        let p =
            plate_of(parse_message(&topic_a("ivs_result"), IVS_NO_ID.as_bytes(), true).unwrap());
        assert_eq!(p.color, Some("黄"));
        for code in 1..=6u32 {
            assert_eq!(
                parse_pr(&format!(r#"{{"color":{code}}}"#)).color,
                color_name(code)
            );
        }
        assert_eq!(parse_pr(r#"{"color":"yellow"}"#).color, Some("黄"));
        // colorType first, then color, then plates[0].color: the first that is known.
        assert_eq!(parse_pr(r#"{"colorType":0,"color":5}"#).color, Some("绿"));
        assert_eq!(
            parse_pr(r#"{"color":0,"plates":[{"color":1}]}"#).color,
            Some("蓝")
        );
    }

    #[test]
    fn a_redelivered_result_without_id_or_plate_time_keys_on_its_content() {
        let topic = topic_a("ivs_result");
        let first = plate_of(parse_message(&topic, IVS_NO_ID.as_bytes(), true).unwrap());
        let again = plate_of(parse_message(&topic, IVS_NO_ID.as_bytes(), true).unwrap());
        assert_eq!(first.msg_id, None);
        assert_eq!(first.time_source, VzTimeSource::Envelope);
        assert_eq!(
            first.source_key(),
            format!("vz:{SN}:env:1795910405000:晋A12345:8")
        );
        assert_eq!(first.source_key(), again.source_key());
        // Another pass: another plate, another second or another trigger.
        for (from, to) in [
            ("5pmLQTEyMzQ1", "5pmLQTU0MzIx"),
            ("1795910405", "1795910406"),
            (r#""triggerType": 8"#, r#""triggerType": 2"#),
        ] {
            let other = IVS_NO_ID.replace(from, to);
            let p = plate_of(parse_message(&topic, other.as_bytes(), true).unwrap());
            assert_ne!(p.source_key(), first.source_key(), "{to}");
        }
    }

    #[test]
    fn no_time_and_no_id_keys_on_a_digest_of_the_content() {
        let msg = |image: &str| {
            format!(
                r#"{{"payload":{{"AlarmInfoPlate":{{"result":{{"PlateResult":{{"license":"5pmLQTEyMzQ1","full_image_content":"{image}"}}}}}}}}}}"#
            )
        };
        let parse =
            |m: &str| plate_of(parse_message(&topic_a("ivs_result"), m.as_bytes(), true).unwrap());
        let p = parse(&msg("/9j/4AAQ"));
        assert_eq!(p.captured_at_ms, None);
        let key = p.source_key();
        assert!(key.starts_with(&format!("vz:{SN}:digest:")), "{key}");
        assert_eq!(parse(&msg("/9j/4AAQ")).source_key(), key, "a re-delivery");
        assert_ne!(parse(&msg("/9j/4AAR")).source_key(), key, "another picture");
        // The digest is fixed across builds and restarts (the outbox keeps keys on disk).
        assert_eq!(key, format!("vz:{SN}:digest:{:016x}", p.digest));
        let mut d = Fnv::default();
        d.field(b"");
        assert_eq!(d.0, 0xa8c7_f832_281a_39c5);
    }

    #[test]
    fn offline_records_are_buffered_passes_with_their_own_time() {
        // Same payload shape as ivs_result (devices.md §1), a capture time in the past.
        let msg = IVS_FULL.replace("\"ivs_result\"", "\"offline_record\"");
        let p = plate_of(parse_message(&topic_a("offline_record"), msg.as_bytes(), true).unwrap());
        assert!(p.offline && !p.quick);
        assert_eq!(p.plate.as_deref(), Some("晋A12345"));
        assert_eq!(p.captured_at_ms, Some(1_795_910_400_250));
        // The same pass sent live and replayed offline is one record.
        let live =
            plate_of(parse_message(&topic_a("ivs_result"), IVS_FULL.as_bytes(), true).unwrap());
        assert!(!live.offline);
        assert_eq!(p.source_key(), live.source_key());
        let r = p.reading("入口1");
        assert!(r.buffered);
        assert_eq!(r.captured_at_ms, Some(1_795_910_400_250));
        assert_eq!(r.style.as_deref(), Some("1"));
        assert_eq!(r.vendor_style, Some(CarStyle::Car));
    }

    #[test]
    fn an_isoffline_flag_or_a_unique_id_from_newer_firmware_is_understood() {
        for flag in ["1", "true", r#""1""#] {
            let p = parse_pr(&format!(
                r#"{{"license":"5pmLQTEyMzQ1","isoffline":{flag}}}"#
            ));
            assert!(p.offline, "{flag}");
        }
        assert!(!parse_pr(r#"{"isoffline":0}"#).offline);
        let msg = IVS_NO_ID.replace(
            r#""version""#,
            r#""isoffline": 1, "unique_id": "u-77", "version""#,
        );
        let p = plate_of(parse_message(&topic_a("ivs_result"), msg.as_bytes(), true).unwrap());
        assert!(p.offline);
        assert_eq!(p.source_key(), format!("vz:{SN}:id:u-77"));
    }

    #[test]
    fn the_envelope_timestamp_accepts_strings_fractions_and_milliseconds() {
        for (ts, want) in [
            (r#""1795910401""#, 1_795_910_401_000),
            ("1795910401.5", 1_795_910_401_500),
            ("1795910401500", 1_795_910_401_500),
        ] {
            let msg = format!(
                r#"{{"id":"x","timestamp":{ts},"payload":{{"AlarmInfoPlate":{{"result":{{"PlateResult":{{}}}}}}}}}}"#
            );
            let p = plate_of(parse_message(&topic_a("ivs_result"), msg.as_bytes(), true).unwrap());
            assert_eq!(p.captured_at_ms, Some(want), "{ts}");
        }
    }

    #[test]
    fn a_zero_or_absurd_plate_time_falls_back_to_the_envelope() {
        for stamp in [
            r#"{"Timeval":{"sec":0,"usec":0}}"#,
            r#"{"Timeval":{"sec":-5}}"#,
            r#"{"Timeval":{"sec":99999999999999}}"#,
            r#"{"Timeval":{"sec":"soon"}}"#,
            r#""yesterday""#,
        ] {
            let p = parse_pr(&format!(
                r#"{{"license":"5pmLQTEyMzQ1","timeStamp":{stamp}}}"#
            ));
            assert_eq!(p.time_source, VzTimeSource::Envelope, "{stamp}");
            assert_eq!(p.captured_at_ms, Some(1_795_910_401_000), "{stamp}");
        }
    }

    #[test]
    fn base64_and_plain_licenses_both_give_the_plate_text() {
        assert_eq!(
            decode_license("5pmLQTEyMzQ1", true).as_deref(),
            Some("晋A12345")
        );
        assert_eq!(
            decode_license("57KkQjEyMzQ1RA==", true).as_deref(),
            Some("粤B12345D")
        );
        assert_eq!(
            decode_license("57KkQjEyMzQ1RA", true).as_deref(),
            Some("粤B12345D")
        );
        assert_eq!(
            decode_license("晋A12345", true).as_deref(),
            Some("晋A12345")
        );
        assert_eq!(
            decode_license("5pmLQTEyMzQ1", false).as_deref(),
            Some("5pmLQTEyMzQ1")
        );
        assert_eq!(
            decode_license(" 晋A12345\0", false).as_deref(),
            Some("晋A12345")
        );
        let plain = parse_pr(r#"{"license":"京N9A8B7"}"#);
        assert_eq!(plain.plate.as_deref(), Some("京N9A8B7"));
    }

    #[test]
    fn ascii_that_is_not_utf8_base64_stays_plain_text() {
        // Valid Base64 alphabet, but the bytes are not UTF-8 text.
        assert_eq!(decode_license("WJ12345", true).as_deref(), Some("WJ12345"));
        assert_eq!(decode_license("ABCD", true).as_deref(), Some("ABCD"));
    }

    #[test]
    fn no_plate_markers_in_either_form_mean_no_plate() {
        for raw in [
            "_无_",
            "无牌车",
            "无车牌",
            "",
            "  ",
            "X+aXoF8=",
            "5peg54mM6L2m",
        ] {
            assert_eq!(decode_license(raw, true), None, "{raw}");
        }
        let p =
            parse_pr(r#"{"license":"5peg54mM6L2m","timeStamp":{"Timeval":{"sec":1795910400}}}"#);
        assert_eq!(p.plate, None);
        assert_eq!(p.source_key(), format!("vz:{SN}:1795910400000:-"));
        let missing = parse_pr(r#"{"colorType":1}"#);
        assert_eq!(missing.plate, None);
    }

    #[test]
    fn colour_codes_map_in_both_the_old_and_the_new_form() {
        let table = [
            (0, None),
            (1, Some("蓝")),
            (2, Some("黄")),
            (3, Some("白")),
            (4, Some("黑")),
            (5, Some("绿")),
            (6, Some("黄绿")),
            (7, None),
            (99, None),
        ];
        for (code, want) in table {
            assert_eq!(color_name(code), want);
            assert_eq!(parse_pr(&format!(r#"{{"colorType":{code}}}"#)).color, want);
            assert_eq!(
                parse_pr(&format!(r#"{{"colorType":"{code}"}}"#)).color,
                want
            );
            assert_eq!(
                parse_pr(&format!(r#"{{"plates":[{{"color":{code}}}]}}"#)).color,
                want
            );
        }
        assert_eq!(
            parse_pr(r#"{"plates":[{"color":"黄绿"}]}"#).color,
            Some("黄绿")
        );
        assert_eq!(
            parse_pr(r#"{"colorType":0,"plates":[{"color":2}]}"#).color,
            Some("黄")
        );
        assert_eq!(parse_pr(r#"{"colorType":"pink"}"#).color, None);
        assert_eq!(parse_pr(r#"{"plates":[]}"#).color, None);
    }

    #[test]
    fn plate_types_map_to_the_default_styles_in_both_forms() {
        for t in 0..=17 {
            let want = if matches!(t, 3 | 4 | 12) {
                CarStyle::Large
            } else {
                CarStyle::Car
            };
            assert_eq!(default_style(t), want, "type {t}");
            let old = parse_pr(&format!(r#"{{"type":{t}}}"#));
            assert_eq!((old.plate_type, old.style), (t, want));
            let new = parse_pr(&format!(r#"{{"plates":[{{"type":"{t}"}}]}}"#));
            assert_eq!((new.plate_type, new.style), (t, want));
        }
        let newer = plate_of(
            parse_message(
                "device/a0b0c0d0-00112233/message/up/ivs_result",
                IVS_NEWER.as_bytes(),
                true,
            )
            .unwrap(),
        );
        assert_eq!(
            (newer.plate_type, newer.style, newer.color),
            (4, CarStyle::Large, Some("黄绿"))
        );
    }

    #[test]
    fn style_overrides_win_over_the_default_mapping() {
        let overrides = [(4, CarStyle::Truck), (1, CarStyle::Large)];
        assert_eq!(style_with(4, &overrides), CarStyle::Truck);
        assert_eq!(style_with(1, &overrides), CarStyle::Large);
        assert_eq!(style_with(3, &overrides), CarStyle::Large);
        assert_eq!(style_with(2, &overrides), CarStyle::Car);
        assert_eq!(style_with(12, &[]), CarStyle::Large);
    }

    #[test]
    fn lingering_trigger_types_are_not_passes() {
        for (trigger, lingering) in [
            (64, true),
            (65, true),
            (66, true),
            (1, false),
            (2, false),
            (8, false),
            (67, false),
        ] {
            let p = parse_pr(&format!(r#"{{"triggerType":"{trigger}"}}"#));
            assert_eq!(p.trigger, trigger);
            assert_eq!(p.lingering, lingering, "trigger {trigger}");
        }
    }

    #[test]
    fn a_400_kb_image_with_line_breaks_and_no_padding_decodes_to_the_same_bytes() {
        let original = generated_bytes(400 * 1024 + 1);
        let encoded = STANDARD_NO_PAD.encode(&original);
        // MIME-style line breaks, written as JSON escapes.
        let mut wrapped = String::with_capacity(encoded.len() * 80 / 76);
        for (i, chunk) in encoded.as_bytes().chunks(76).enumerate() {
            if i > 0 {
                wrapped.push_str("\\r\\n");
            }
            wrapped.push_str(std::str::from_utf8(chunk).unwrap());
        }
        let p = parse_pr(&format!(r#"{{"full_image_content":"{wrapped}"}}"#));
        assert_eq!(p.image_error, None);
        assert_eq!(p.image.as_deref(), Some(&original[..]));
        let plain = parse_pr(&format!(
            r#"{{"full_image_content":"{}"}}"#,
            STANDARD.encode(&original)
        ));
        assert_eq!(plain.image.as_deref(), Some(&original[..]));
    }

    #[test]
    fn a_broken_full_image_falls_back_to_the_small_one() {
        let p = parse_pr(r#"{"full_image_content":"not*base64","small_image_content":"/9j/2w=="}"#);
        assert_eq!(p.image, Some(vec![0xff, 0xd8, 0xff, 0xdb]));
        assert_eq!(p.image_error, None);
    }

    #[test]
    fn an_image_that_does_not_decode_is_dropped_not_an_error() {
        let p = parse_pr(r#"{"license":"5pmLQTEyMzQ1","full_image_content":"@@@@"}"#);
        assert_eq!(p.image, None);
        assert!(p
            .image_error
            .as_deref()
            .unwrap_or("")
            .starts_with("full_image_content"));
        assert_eq!(p.plate.as_deref(), Some("晋A12345"));
        let empty = parse_pr(r#"{"full_image_content":"","small_image_content":null}"#);
        assert_eq!((empty.image, empty.image_error), (None, None));
    }

    #[test]
    fn a_data_uri_prefix_on_an_image_is_tolerated() {
        assert_eq!(
            decode_base64_image("data:image/jpeg;base64,/9j/2w==").unwrap(),
            vec![0xff, 0xd8, 0xff, 0xdb]
        );
        assert!(decode_base64_image("  \n").unwrap().is_empty());
    }

    #[test]
    fn debug_output_shows_the_image_length_not_its_bytes() {
        let p = parse_pr(r#"{"full_image_content":"/9j/4AAQSkZJRg=="}"#);
        let text = format!("{p:?}");
        assert!(text.contains("image_bytes: Some(10)"), "{text}");
        assert!(!text.contains("255"), "{text}");
    }

    #[test]
    fn gpio_in_gives_the_input_and_its_level_with_or_without_body() {
        let with_body = r#"{"id":"g1","sn":"x","name":"gpio_in","timestamp":1795910400,
            "payload":{"body":{"AlarmGioIn":{"result":{"TriggerResult":{"source":1,"value":1}}}}}}"#;
        let without_body =
            r#"{"payload":{"AlarmGioIn":{"result":{"TriggerResult":{"source":"0","value":"0"}}}}}"#;
        assert_eq!(
            parse_message(&topic_a("gpio_in"), with_body.as_bytes(), true).unwrap(),
            VzMessage::Gpio {
                sn: SN.into(),
                source: 1,
                value: 1
            }
        );
        assert_eq!(
            parse_message(&topic_a("gpio_in"), without_body.as_bytes(), true).unwrap(),
            VzMessage::Gpio {
                sn: SN.into(),
                source: 0,
                value: 0
            }
        );
    }

    /// A payload and a check of the error it must give.
    type ErrorCase = (&'static str, fn(&VzError) -> bool);

    #[test]
    fn gpio_in_without_a_trigger_result_or_with_bad_numbers_is_an_error() {
        let cases: [ErrorCase; 4] = [
            (r#"{"payload":{"body":{}}}"#, |e| {
                matches!(e, VzError::MissingTriggerResult)
            }),
            (
                r#"{"payload":{"body":{"AlarmGioIn":{"result":{"TriggerResult":{"value":1}}}}}}"#,
                |e| matches!(e, VzError::InvalidNumber("source")),
            ),
            (
                r#"{"payload":{"body":{"AlarmGioIn":{"result":{"TriggerResult":{"source":1,"value":"high"}}}}}}"#,
                |e| matches!(e, VzError::InvalidNumber("value")),
            ),
            (
                r#"{"payload":{"body":{"AlarmGioIn":{"result":{"TriggerResult":{"source":1,"value":300}}}}}}"#,
                |e| matches!(e, VzError::InvalidNumber("value")),
            ),
        ];
        for (json, check) in cases {
            let err = parse_message(&topic_a("gpio_in"), json.as_bytes(), true).unwrap_err();
            assert!(check(&err), "{json}: {err}");
        }
    }

    #[test]
    fn keep_alive_and_other_names_are_recognised() {
        let ka = r#"{"id":"k1","sn":"x","name":"keep_alive","version":"1.0","timestamp":1795910400,"payload":{}}"#;
        assert_eq!(
            parse_message(&topic_a("keep_alive"), ka.as_bytes(), true).unwrap(),
            VzMessage::KeepAlive { sn: SN.into() }
        );
        assert_eq!(
            parse_message(
                &format!("{SN}/device/message/up/device_info"),
                ka.as_bytes(),
                true
            )
            .unwrap(),
            VzMessage::Other {
                sn: SN.into(),
                name: "device_info".into()
            }
        );
    }

    #[test]
    fn garbage_and_broken_payloads_are_errors() {
        let topic = topic_a("ivs_result");
        assert!(matches!(
            parse_message(&topic, b"", true),
            Err(VzError::NotJson(_))
        ));
        assert!(matches!(
            parse_message(&topic, b"\xff\xfe{", true),
            Err(VzError::NotJson(_))
        ));
        assert!(matches!(
            parse_message(&topic, b"[1,2]", true),
            Err(VzError::NotAnObject)
        ));
        assert!(matches!(
            parse_message(&topic, b"\"x\"", true),
            Err(VzError::NotAnObject)
        ));
        assert!(matches!(
            parse_message(
                &topic,
                br#"{"payload":{"AlarmInfoPlate":{"result":{}}}}"#,
                true
            ),
            Err(VzError::MissingPlateResult)
        ));
        assert!(matches!(
            parse_message(
                &topic,
                br#"{"payload":{"AlarmInfoPlate":{"result":{"PlateResult":[]}}}}"#,
                true
            ),
            Err(VzError::MissingPlateResult)
        ));
    }

    #[test]
    fn every_truncation_of_a_message_is_an_error_not_a_panic() {
        let bytes = IVS_FULL.as_bytes();
        let topic = topic_a("ivs_result");
        // The fixture ends with its closing brace, so every proper prefix is incomplete.
        for cut in 0..bytes.len() {
            assert!(
                parse_message(&topic, &bytes[..cut], true).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn deeply_nested_json_is_an_error_not_a_stack_overflow() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse_message(&topic_a("ivs_result"), deep.as_bytes(), true).is_err());
        assert!(parse_vz_body(&deep).is_err());
    }

    #[test]
    fn a_serial_vz_body_with_trailing_newline_and_nul_parses_with_plain_license() {
        let body = "{\"AlarmInfoPlate\":{\"serialno\":\"00ab-cd12\",\"result\":{\"PlateResult\":{\
            \"license\":\"晋A12345\",\"colorType\":2,\"type\":3,\"triggerType\":2,\
            \"timeStamp\":{\"Timeval\":{\"sec\":1795910400,\"usec\":999}}}}}}\n\0";
        let p = parse_vz_body(body).unwrap();
        assert_eq!(p.sn, "00ab-cd12");
        assert_eq!(p.plate.as_deref(), Some("晋A12345"));
        assert_eq!(
            (p.color, p.plate_type, p.style),
            (Some("黄"), 3, CarStyle::Large)
        );
        assert_eq!(p.captured_at_ms, Some(1_795_910_400_000));
        assert_eq!(p.msg_id, None);
        assert_eq!(p.source_key(), "vz:00ab-cd12:1795910400000:晋A12345");
    }

    #[test]
    fn a_serial_vz_body_does_not_base64_decode_the_license() {
        let p = parse_vz_body(
            r#"{"AlarmInfoPlate":{"result":{"PlateResult":{"license":"ABCDEFGH"}}}}"#,
        )
        .unwrap();
        assert_eq!(p.sn, "");
        assert_eq!(p.plate.as_deref(), Some("ABCDEFGH"));
        assert!(matches!(
            parse_vz_body("{\"AlarmInfoPlate\":"),
            Err(VzError::NotJson(_))
        ));
        assert!(matches!(
            parse_vz_body("{}"),
            Err(VzError::MissingPlateResult)
        ));
    }

    #[test]
    fn parse_plate_result_accepts_the_object_or_its_wrapper() {
        let inner: Value = serde_json::from_str(
            r#"{"serialno":"s","result":{"PlateResult":{"license":"5pmLQTEyMzQ1"}}}"#,
        )
        .unwrap();
        let wrapped = serde_json::json!({ "AlarmInfoPlate": inner.clone() });
        let a = parse_plate_result("s", &inner, true).unwrap();
        let b = parse_plate_result("s", &wrapped, true).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.plate.as_deref(), Some("晋A12345"));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_message("device/s/message/up/ivs_result", &bytes, true);
            let _ = parse_message("device/s/message/up/gpio_in", &bytes, false);
            let _ = parse_vz_body(&String::from_utf8_lossy(&bytes));
            let _ = decode_base64_image(&String::from_utf8_lossy(&bytes));
            let _ = decode_license(&String::from_utf8_lossy(&bytes), true);
        }

        #[test]
        fn arbitrary_topics_never_panic(topic in ".{0,64}") {
            if let Some((sn, name)) = parse_topic(&topic) {
                prop_assert!(!sn.is_empty() && !name.is_empty());
            }
        }

        #[test]
        fn plate_results_with_arbitrary_field_values_never_panic(
            license in ".{0,24}",
            color in any::<i64>(),
            sec in any::<i64>(),
            usec in "[0-9a-z]{0,8}",
        ) {
            let pr = serde_json::json!({
                "license": license, "colorType": color, "type": color.to_string(),
                "timeStamp": {"Timeval": {"sec": sec, "usec": usec}},
                "triggerType": sec, "confidence": color,
            });
            let wrapped = serde_json::json!({"result": {"PlateResult": pr}});
            let p = parse_plate_result("s", &wrapped, true);
            prop_assert!(p.is_ok());
        }
    }
}
