//! Our own simple JSON camera format, turned into a typed event. Pure: no I/O.
//!
//! One message is one JSON object:
//!
//! ```json
//! {"plate": "晋A12345", "direction": "in", "time": "2026-11-28 08:00:00",
//!  "image": "<base64 JPEG>", "color": "蓝", "style": "0", "brand": "大众", "id": "<unique id>"}
//! ```
//!
//! Only `plate` is required (the key must exist; `""`, `null`, `无牌车`, `_无_`, `无车牌`, `无`
//! mean "no plate read"). Unknown keys are ignored: cameras add fields. `null` for an
//! optional key is the same as leaving it out.
//!
//! A pass is never dropped for a secondary field: a value that cannot be used is left out
//! (the lane's direction, the gateway's clock, … stand in) and the reason is kept in
//! [`JsonCamEvent::replaced`], which ends up in the record's `remark`.
//!
//! | key | accepted | otherwise |
//! |---|---|---|
//! | `plate` | a string | **error** (not a pass we can report) |
//! | `direction` | `"in"` / `"out"`, any case | replaced: the lane's direction |
//! | `time` | `"YYYY-MM-DD HH:MM:SS"` (also `/` for `-`, `T` for the space, optional fraction) as local time; a number or numeric string of Unix seconds (fractions allowed; 10^12 and more are taken as milliseconds) | replaced: the gateway's clock; `""` = absent |
//! | `image` | standard Base64 (padding optional, whitespace ignored) | `image: None` and the reason in `image_error` (the gateway uses its placeholder) |
//! | `style` | a string or number: looked up in the camera's `styles` table, else `0`/`1`/`2` | kept as text; the gateway's normaliser defaults an unknown one to `0` |
//! | `color`, `brand` | strings (`""` = absent) | replaced: left out |
//! | `id` | string or number (`""` = absent) | replaced: left out (the key falls back to the time) |

use chrono::NaiveDateTime;
use serde_json::{Map, Value};

use crate::plate::is_no_plate;
use crate::vzenith::decode_base64_image;
use crate::{CarStyle, Direction};

/// The latest Unix second accepted (9999-12-31T23:59:59Z).
const MAX_UNIX_SECS: i64 = 253_402_300_799;

/// How many characters of a rejected value an error message repeats.
const ECHO_CHARS: usize = 32;

/// Why a JSON camera message was rejected (counted as bad input).
#[derive(Debug, thiserror::Error)]
pub enum JsonCamError {
    /// The payload is not JSON (or not UTF-8, or truncated).
    #[error("payload is not JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    /// The payload is JSON but not an object.
    #[error("payload is JSON but not an object")]
    NotAnObject,
    /// The `plate` key is missing.
    #[error("missing key `plate`")]
    MissingPlate,
    /// A known key has a value we cannot use.
    #[error("invalid `{key}`: {reason}")]
    InvalidField {
        /// The key.
        key: &'static str,
        /// What is wrong (repeats at most a short prefix of the value).
        reason: String,
    },
}

/// The capture time as the camera sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonTime {
    /// A wall-clock time without zone: the lot's local time (the gateway applies its zone).
    Local(NaiveDateTime),
    /// Unix milliseconds.
    Unix(i64),
}

/// One message of the JSON camera format.
#[derive(Clone, PartialEq, Eq)]
pub struct JsonCamEvent {
    /// Plate text; `None` when the camera read no plate.
    pub plate: Option<String>,
    /// Entry or exit, when the camera says; else the lane's configured direction.
    pub direction: Option<Direction>,
    /// Capture time; `None` = the gateway's clock.
    pub time: Option<JsonTime>,
    /// The decoded image.
    pub image: Option<Vec<u8>>,
    /// Why an `image` that was sent could not be used (then `image` is `None`).
    pub image_error: Option<String>,
    /// Plate colour as sent (a word, an English word or a code).
    pub color: Option<String>,
    /// Vehicle style as sent (a `carStyle` code or the camera's own type), as text.
    pub style: Option<String>,
    /// Vehicle brand.
    pub brand: Option<String>,
    /// The camera's unique message id, for dedupe.
    pub id: Option<String>,
    /// Values that could not be used and were left out, each with its reason.
    pub replaced: Vec<String>,
}

impl std::fmt::Debug for JsonCamEvent {
    // Image bytes are never printed: they are large and may be personal data.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonCamEvent")
            .field("plate", &self.plate)
            .field("direction", &self.direction)
            .field("time", &self.time)
            .field("image_bytes", &self.image.as_ref().map(Vec::len))
            .field("image_error", &self.image_error)
            .field("color", &self.color)
            .field("style", &self.style)
            .field("brand", &self.brand)
            .field("id", &self.id)
            .field("replaced", &self.replaced)
            .finish()
    }
}

impl JsonCamEvent {
    /// The style as a `carStyle` code, when it is one (`0`, `1`, `2`).
    pub fn style_code(&self) -> Option<CarStyle> {
        match self.style.as_deref().map(str::trim) {
            Some("0") => Some(CarStyle::Car),
            Some("1") => Some(CarStyle::Large),
            Some("2") => Some(CarStyle::Truck),
            _ => None,
        }
    }

    /// The dedupe key for the gateway's ingest: `json:{camera}:id:{id}` when the message has
    /// an id; else `json:{camera}:{time}:{plate or "-"}` when it has a time (local times as
    /// `YYYY-MM-DDTHH:MM:SS.mmm`, Unix times as milliseconds); else empty (no dedupe).
    pub fn source_key(&self, camera: &str) -> String {
        if let Some(id) = self.id.as_deref() {
            return format!("json:{camera}:id:{id}");
        }
        let plate = self.plate.as_deref().unwrap_or("-");
        match self.time {
            Some(JsonTime::Local(t)) => {
                format!(
                    "json:{camera}:{}:{plate}",
                    t.format("%Y-%m-%dT%H:%M:%S%.3f")
                )
            }
            Some(JsonTime::Unix(ms)) => format!("json:{camera}:{ms}:{plate}"),
            None => String::new(),
        }
    }
}

/// Parses one JSON camera message (see the module docs for what is accepted).
pub fn parse_json_camera(payload: &[u8]) -> Result<JsonCamEvent, JsonCamError> {
    let root: Value = serde_json::from_slice(payload)?;
    let obj = root.as_object().ok_or(JsonCamError::NotAnObject)?;

    let plate = match obj.get("plate") {
        None => return Err(JsonCamError::MissingPlate),
        Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.trim())
            .filter(|s| !is_no_plate(s))
            .map(str::to_owned),
        Some(_) => return Err(invalid("plate", "not a string")),
    };
    let mut replaced = Vec::new();
    let direction = match present(obj, "direction") {
        None => Ok(None),
        Some(Value::String(s)) => parse_direction(s).map(Some),
        Some(_) => Err(invalid("direction", "not a string")),
    };
    let direction = keep(direction, "方向无效", "lane direction used", &mut replaced);
    let time = match present(obj, "time") {
        None => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => parse_time_text(s).map(Some),
        Some(Value::Number(n)) => unix_time(n.as_f64()).map(Some),
        Some(_) => Err(invalid("time", "not a string or number")),
    };
    let time = keep(time, "时间无效", "gateway time used", &mut replaced);
    let (image, image_error) = match present(obj, "image") {
        None => (None, None),
        Some(Value::String(s)) => match decode_base64_image(s) {
            Ok(bytes) if bytes.is_empty() => (None, None),
            Ok(bytes) => (Some(bytes), None),
            Err(e) => (None, Some(format!("not Base64: {e}"))),
        },
        Some(_) => (None, Some("not a string".to_owned())),
    };
    let style = match present(obj, "style") {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim()).filter(|s| !s.is_empty()).map(str::to_owned)),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(invalid("style", "not a string or number")),
    };
    let style = keep(style, "车型无效", "sent as 0", &mut replaced);
    let color = keep(
        optional_text(obj, "color"),
        "颜色无效",
        "left out",
        &mut replaced,
    );
    let brand = keep(
        optional_text(obj, "brand"),
        "品牌无效",
        "left out",
        &mut replaced,
    );
    let id = keep(parse_id(obj), "编号无效", "left out", &mut replaced);

    Ok(JsonCamEvent {
        plate,
        direction,
        time,
        image,
        image_error,
        color,
        style,
        brand,
        id,
        replaced,
    })
}

/// The value, or `None` with the reason noted in `replaced` (`label`: what, `used`: what
/// stands in).
fn keep<T>(
    r: Result<Option<T>, JsonCamError>,
    label: &str,
    used: &str,
    replaced: &mut Vec<String>,
) -> Option<T> {
    r.unwrap_or_else(|e| {
        replaced.push(format!("{label} ({e}: {used})"));
        None
    })
}

/// The value of `key` unless it is absent or `null`.
fn present<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn invalid(key: &'static str, reason: impl Into<String>) -> JsonCamError {
    JsonCamError::InvalidField {
        key,
        reason: reason.into(),
    }
}

/// A short, quoted prefix of a rejected value for an error message.
fn echo(text: &str) -> String {
    let short: String = text.chars().take(ECHO_CHARS).collect();
    if short.len() < text.len() {
        format!("{short:?}…")
    } else {
        format!("{short:?}")
    }
}

fn parse_direction(text: &str) -> Result<Direction, JsonCamError> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("in") {
        Ok(Direction::In)
    } else if t.eq_ignore_ascii_case("out") {
        Ok(Direction::Out)
    } else {
        Err(invalid(
            "direction",
            format!("{} is not in or out", echo(text)),
        ))
    }
}

fn parse_time_text(text: &str) -> Result<JsonTime, JsonCamError> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<f64>() {
        return unix_time(Some(secs));
    }
    // One format covers `-` or `/` dates and a space or `T` between date and time.
    let normalised: String = t
        .chars()
        .map(|c| match c {
            '/' => '-',
            'T' | 't' => ' ',
            other => other,
        })
        .collect();
    NaiveDateTime::parse_from_str(&normalised, "%Y-%m-%d %H:%M:%S%.f")
        .map(JsonTime::Local)
        .map_err(|e| invalid("time", format!("{}: {e}", echo(text))))
}

/// Unix seconds (fractions allowed) as milliseconds; 10^12 and more are already
/// milliseconds (no second count in range is that large).
fn unix_time(secs: Option<f64>) -> Result<JsonTime, JsonCamError> {
    let out_of_range = || invalid("time", "not a Unix time in range");
    let secs = secs.filter(|s| s.is_finite()).ok_or_else(out_of_range)?;
    let ms = if secs >= 1e12 { secs } else { secs * 1000.0 };
    #[allow(clippy::cast_precision_loss)] // exact: well below 2^53
    let max_ms = (MAX_UNIX_SECS * 1000) as f64;
    if !(0.0..=max_ms).contains(&ms) {
        return Err(out_of_range());
    }
    // In range and finite, so the cast cannot truncate.
    #[allow(clippy::cast_possible_truncation)]
    let ms = ms.round() as i64;
    Ok(JsonTime::Unix(ms))
}

/// A trimmed string (empty = absent); anything but a string is an error.
fn optional_text(
    obj: &Map<String, Value>,
    key: &'static str,
) -> Result<Option<String>, JsonCamError> {
    match present(obj, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim()).filter(|s| !s.is_empty()).map(str::to_owned)),
        Some(_) => Err(invalid(key, "not a string")),
    }
}

fn parse_id(obj: &Map<String, Value>) -> Result<Option<String>, JsonCamError> {
    match present(obj, "id") {
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        _ => optional_text(obj, "id"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use chrono::NaiveDate;
    use proptest::prelude::*;

    const FULL: &str = r#"{
        "plate": "晋A12345",
        "direction": "in",
        "time": "2026-11-28 08:00:00",
        "image": "/9j/4AAQSkZJRg==",
        "color": "蓝",
        "style": "1",
        "brand": "大众",
        "id": "cam7-000123",
        "lane": "east-2",
        "speed": 12.5
    }"#;

    fn parse(json: &str) -> JsonCamEvent {
        parse_json_camera(json.as_bytes()).expect("parses")
    }

    fn err(json: &str) -> JsonCamError {
        parse_json_camera(json.as_bytes()).expect_err("rejected")
    }

    fn local(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32, ms: u32) -> JsonTime {
        JsonTime::Local(
            NaiveDate::from_ymd_opt(y, mo, d)
                .and_then(|date| date.and_hms_milli_opt(h, mi, s, ms))
                .expect("valid date"),
        )
    }

    #[test]
    fn a_full_message_is_parsed_and_unknown_keys_are_ignored() {
        let e = parse(FULL);
        assert_eq!(e.plate.as_deref(), Some("晋A12345"));
        assert_eq!(e.direction, Some(Direction::In));
        assert_eq!(e.time, Some(local(2026, 11, 28, 8, 0, 0, 0)));
        assert_eq!(e.image, Some(STANDARD.decode("/9j/4AAQSkZJRg==").unwrap()));
        assert_eq!(e.image_error, None);
        assert_eq!(e.color.as_deref(), Some("蓝"));
        assert_eq!(e.style.as_deref(), Some("1"));
        assert_eq!(e.style_code(), Some(CarStyle::Large));
        assert_eq!(e.brand.as_deref(), Some("大众"));
        assert_eq!(e.id.as_deref(), Some("cam7-000123"));
        assert!(e.replaced.is_empty());
    }

    #[test]
    fn only_the_plate_is_required() {
        let e = parse(r#"{"plate":"京N9A8B7"}"#);
        assert_eq!(e.plate.as_deref(), Some("京N9A8B7"));
        assert_eq!(
            (
                e.direction,
                e.time,
                e.image.clone(),
                e.image_error.clone(),
                e.color.clone(),
                e.style.clone(),
                e.brand.clone(),
                e.id.clone(),
                e.replaced.clone()
            ),
            (None, None, None, None, None, None, None, None, Vec::new())
        );
        let nulls = parse(
            r#"{"plate":"京N9A8B7","direction":null,"time":null,"image":null,"color":null,"style":null,"brand":null,"id":null}"#,
        );
        assert_eq!(nulls, e);
    }

    #[test]
    fn a_missing_plate_key_is_an_error_but_no_plate_markers_are_none() {
        assert!(matches!(
            err(r#"{"direction":"in"}"#),
            JsonCamError::MissingPlate
        ));
        for plate in [
            r#""""#,
            r#"" ""#,
            "null",
            r#""无牌车""#,
            r#""_无_""#,
            r#""无车牌""#,
        ] {
            assert_eq!(
                parse(&format!(r#"{{"plate":{plate}}}"#)).plate,
                None,
                "{plate}"
            );
        }
        assert!(matches!(
            err(r#"{"plate":12345}"#),
            JsonCamError::InvalidField { key: "plate", .. }
        ));
    }

    /// The one remark a message with one unusable field carries.
    fn replaced_note(json: &str) -> String {
        let e = parse(json);
        assert_eq!(e.replaced.len(), 1, "{json}: {:?}", e.replaced);
        e.replaced[0].clone()
    }

    #[test]
    fn direction_is_case_insensitive_and_anything_else_is_replaced_not_fatal() {
        for (text, want) in [
            ("in", Direction::In),
            ("IN", Direction::In),
            (" Out ", Direction::Out),
            ("OUT", Direction::Out),
        ] {
            assert_eq!(
                parse(&format!(r#"{{"plate":"","direction":"{text}"}}"#)).direction,
                Some(want)
            );
        }
        for bad in [r#""entry""#, r#""""#, "1", "true"] {
            let json = format!(r#"{{"plate":"晋A12345","direction":{bad}}}"#);
            let e = parse(&json);
            assert_eq!(e.direction, None, "{bad}");
            assert_eq!(e.plate.as_deref(), Some("晋A12345"));
            assert!(replaced_note(&json).starts_with("方向无效"), "{bad}");
        }
    }

    #[test]
    fn style_is_kept_as_text_and_codes_are_recognised() {
        for (v, want) in [
            (r#""0""#, Some(CarStyle::Car)),
            (r#""1""#, Some(CarStyle::Large)),
            (r#""2""#, Some(CarStyle::Truck)),
            ("0", Some(CarStyle::Car)),
            ("1", Some(CarStyle::Large)),
            ("2", Some(CarStyle::Truck)),
            (r#""3""#, None),
            ("-1", None),
            (r#""car""#, None),
        ] {
            let e = parse(&format!(r#"{{"plate":"","style":{v}}}"#));
            assert_eq!(e.style_code(), want, "{v}");
            assert!(e.replaced.is_empty());
        }
        assert_eq!(
            parse(r#"{"plate":"","style":"小型车"}"#).style.as_deref(),
            Some("小型车")
        );
        assert_eq!(parse(r#"{"plate":"","style":""}"#).style, None);
        assert!(replaced_note(r#"{"plate":"","style":[]}"#).starts_with("车型无效"));
    }

    #[test]
    fn local_times_accept_dashes_slashes_t_and_fractions() {
        for (text, want) in [
            ("2026-11-28 08:00:00", local(2026, 11, 28, 8, 0, 0, 0)),
            ("2026/11/28 08:00:00", local(2026, 11, 28, 8, 0, 0, 0)),
            ("2026-11-28T08:00:00", local(2026, 11, 28, 8, 0, 0, 0)),
            (
                " 2026-11-28 23:59:59.250 ",
                local(2026, 11, 28, 23, 59, 59, 250),
            ),
            ("2026/1/5 8:07:09", local(2026, 1, 5, 8, 7, 9, 0)),
        ] {
            assert_eq!(
                parse(&format!(r#"{{"plate":"","time":"{text}"}}"#)).time,
                Some(want),
                "{text}"
            );
        }
    }

    #[test]
    fn unix_times_are_seconds_with_fractions_or_milliseconds() {
        for (v, want) in [
            ("1795910400", 1_795_910_400_000),
            ("1795910400.25", 1_795_910_400_250),
            (r#""1795910400""#, 1_795_910_400_000),
            ("1795910400250", 1_795_910_400_250),
            ("0", 0),
        ] {
            assert_eq!(
                parse(&format!(r#"{{"plate":"","time":{v}}}"#)).time,
                Some(JsonTime::Unix(want)),
                "{v}"
            );
        }
        assert_eq!(parse(r#"{"plate":"","time":""}"#).time, None);
    }

    #[test]
    fn bad_times_are_replaced_by_the_gateway_clock_not_fatal() {
        for bad in [
            r#""2026-13-01 00:00:00""#,
            r#""2026-11-28""#,
            r#""yesterday""#,
            r#""2026-11-28 08:00:00+08:00""#,
            "-5",
            "1e300",
            "true",
        ] {
            let json = format!(r#"{{"plate":"晋A12345","time":{bad}}}"#);
            assert_eq!(parse(&json).time, None, "{bad}");
            assert!(replaced_note(&json).starts_with("时间无效"), "{bad}");
        }
    }

    #[test]
    fn an_image_that_is_not_base64_is_reported_with_the_plate_not_rejected() {
        let e = parse(r#"{"plate":"晋A12345","image":"this is *not* base64"}"#);
        assert_eq!(e.plate.as_deref(), Some("晋A12345"));
        assert_eq!(e.image, None);
        assert!(e
            .image_error
            .as_deref()
            .unwrap_or("")
            .starts_with("not Base64"));
        let wrong_type = parse(r#"{"plate":"晋A12345","image":42}"#);
        assert_eq!(wrong_type.image_error.as_deref(), Some("not a string"));
        let empty = parse(r#"{"plate":"晋A12345","image":""}"#);
        assert_eq!((empty.image, empty.image_error), (None, None));
    }

    #[test]
    fn an_image_with_line_breaks_and_no_padding_decodes() {
        let original: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let encoded = STANDARD.encode(&original);
        let wrapped = encoded
            .trim_end_matches('=')
            .as_bytes()
            .chunks(60)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join("\\n");
        let e = parse(&format!(r#"{{"plate":"","image":"{wrapped}"}}"#));
        assert_eq!(e.image, Some(original));
    }

    #[test]
    fn ids_may_be_strings_or_numbers_and_unusable_text_fields_are_left_out() {
        assert_eq!(
            parse(r#"{"plate":"","id":1234}"#).id.as_deref(),
            Some("1234")
        );
        assert_eq!(parse(r#"{"plate":"","id":1.5}"#).id.as_deref(), Some("1.5"));
        assert_eq!(parse(r#"{"plate":"","id":" "}"#).id, None);
        assert!(replaced_note(r#"{"plate":"","id":{}}"#).starts_with("编号无效"));
        assert!(replaced_note(r#"{"plate":"","color":1}"#).starts_with("颜色无效"));
        assert!(replaced_note(r#"{"plate":"","brand":[]}"#).starts_with("品牌无效"));
        let e = parse(r#"{"plate":"晋A12345","brand":[],"color":{}}"#);
        assert_eq!((e.brand, e.color, e.replaced.len()), (None, None, 2));
    }

    #[test]
    fn source_keys_prefer_the_id_then_the_time() {
        assert_eq!(parse(FULL).source_key("gate1"), "json:gate1:id:cam7-000123");
        assert_eq!(
            parse(r#"{"plate":"晋A12345","time":"2026-11-28 08:00:00"}"#).source_key("gate1"),
            "json:gate1:2026-11-28T08:00:00.000:晋A12345"
        );
        assert_eq!(
            parse(r#"{"plate":"无牌车","time":1795910400}"#).source_key("gate1"),
            "json:gate1:1795910400000:-"
        );
        assert_eq!(parse(r#"{"plate":"晋A12345"}"#).source_key("gate1"), "");
        // The same instant written two ways gives the same key.
        assert_eq!(
            parse(r#"{"plate":"晋A12345","time":"2026/11/28T08:00:00"}"#).source_key("g"),
            parse(r#"{"plate":"晋A12345","time":"2026-11-28 08:00:00"}"#).source_key("g"),
        );
    }

    #[test]
    fn debug_output_shows_the_image_length_not_its_bytes() {
        let text = format!("{:?}", parse(FULL));
        assert!(text.contains("image_bytes: Some(10)"), "{text}");
        assert!(!text.contains("255"), "{text}");
    }

    #[test]
    fn garbage_and_non_objects_are_errors() {
        assert!(matches!(err(""), JsonCamError::NotJson(_)));
        assert!(matches!(err("{\"plate\":\"晋A"), JsonCamError::NotJson(_)));
        assert!(matches!(
            parse_json_camera(b"\xff\x00{}"),
            Err(JsonCamError::NotJson(_))
        ));
        assert!(matches!(err("[]"), JsonCamError::NotAnObject));
        assert!(matches!(err("\"plate\""), JsonCamError::NotAnObject));
        for cut in 0..FULL.len() {
            assert!(
                parse_json_camera(&FULL.as_bytes()[..cut]).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn remarks_repeat_only_a_short_prefix_of_the_value() {
        let long = "x".repeat(10_000);
        let note = replaced_note(&format!(r#"{{"plate":"","direction":"{long}"}}"#));
        assert!(note.len() < 120, "{note}");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_json_camera(&bytes);
        }

        #[test]
        fn arbitrary_field_values_never_panic(
            plate in ".{0,16}", dir in ".{0,8}", time in ".{0,24}", image in ".{0,32}", style in ".{0,4}",
        ) {
            let json = serde_json::json!({
                "plate": plate, "direction": dir, "time": time, "image": image, "style": style,
            });
            let _ = parse_json_camera(json.to_string().as_bytes());
        }
    }
}
