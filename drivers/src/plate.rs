//! What every camera driver does to a plate read before the gateway stores it, in one place:
//! MQTT (Vzenith, JSON), serial (`vz`, `line`) and HTTP drivers all hand a [`Reading`] (the
//! values as the camera sent them) to [`normalise`], which returns the [`PlateEvent`].
//!
//! What it changes, and why (the README repeats this for operators):
//! - **Plate text** ([`normalise_plate`]): a leading colour word (蓝 黄 白 黑 绿 黄绿 渐变绿,
//!   Hikvision firmware prefixes it) is stripped, full-width letters and digits become ASCII,
//!   Latin letters upper case, and `·`, `.` and spaces between characters are removed. The
//!   platform matches plates by text, so `蓝晋Ａ·12345` must arrive as `晋A12345`. Nothing
//!   else is "corrected": a misread stays as read.
//! - **Plate check** ([`is_usual_plate`], `devices.md` §6): a plate that does not follow the
//!   Chinese plate rules is still reported (cameras misread; military plates exist), counted
//!   as unusual in the driver's status, named there as the last unusual plate and in a
//!   rate-limited log line.
//! - **Colour** ([`normalise_color`]): whatever the camera says (Chinese word, English word,
//!   Vzenith code) ends as the spec's word 蓝 黄 白 黑 绿 黄绿; an unknown colour is left
//!   out and named in `remark`.
//! - **Vehicle style**: the camera's own type (Vzenith plate type, a `style` field) goes
//!   through the camera's `styles` table first, then the driver's default mapping; an
//!   unknown style is sent as `0` (car) with a remark.
//! - **Capture time**: a time before 2020 or more than `max_camera_skew` ahead of the
//!   gateway's corrected clock is a wrong camera clock: the gateway's receipt time is sent
//!   instead, `remark` says so, and the camera's status shows the wrong clock until a live
//!   result with a plausible time arrives. Old times are kept (a broker or a camera may
//!   deliver late: `offline_record`, a retransmission); only the future is impossible.
//!
//! A pass is never dropped for a secondary field: each replaced value is said in `remark`
//! and counted in the driver's status ([`DriverStatus::defaulted`]).
//!
//! The plate rules: a province abbreviation (or 使/领 for embassy and consulate plates), an
//! issuing letter A–Z without I and O, then a serial of 5 letters (no I/O) or digits; a
//! suffix 挂 学 警 港 澳 使 领 replaces the 5th serial character (港/澳 only on 粤Z plates);
//! new-energy plates have a 6-character serial: energy letter (D A B C E F G H J K), a letter
//! or digit, then 4 digits (small), or 5 digits then the energy letter (large).

use std::time::Duration;

use crate::{should_log, CarStyle, Direction, DriverStatus, PlateEvent};

const PROVINCES: &str = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼使领";
const SUFFIXES: &str = "挂学警港澳使领";
const ENERGY: &str = "DABCEFGHJK";

/// The spec's plate colour words, by Vzenith colour code 1..=6 (index + 1).
pub const COLOR_WORDS: [&str; 6] = ["蓝", "黄", "白", "黑", "绿", "黄绿"];

/// Colour words a camera may put in front of the plate text, longest first so that 黄绿 and
/// 渐变绿 are taken whole.
const COLOR_PREFIXES: [(&str, &str); 7] = [
    ("渐变绿", "绿"),
    ("黄绿", "黄绿"),
    ("蓝", "蓝"),
    ("黄", "黄"),
    ("白", "白"),
    ("黑", "黑"),
    ("绿", "绿"),
];

/// Texts cameras send when they read no plate.
const NO_PLATE_MARKERS: [&str; 6] = ["_无_", "无牌车", "无车牌", "无牌", "无", "未识别"];

/// 2020-01-01T00:00:00Z in Unix ms: no camera result is older.
pub const EARLIEST_CAPTURE_MS: i64 = 1_577_836_800_000;

/// Default of a camera's `max_camera_skew`.
pub const DEFAULT_MAX_SKEW: Duration = Duration::from_secs(300);

/// `true` for the texts cameras send when they read no plate (`_无_`, `无牌车`, `无车牌`,
/// `无牌`, `无`, `未识别`, empty or blank).
pub fn is_no_plate(text: &str) -> bool {
    let t = text.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    t.is_empty() || NO_PLATE_MARKERS.contains(&t)
}

/// A plate text after [`normalise_plate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalPlate {
    /// The plate; `None` when the camera read no plate.
    pub plate: Option<String>,
    /// The colour word that was in front of the plate, if any (a hint for a missing colour).
    pub color_prefix: Option<&'static str>,
}

/// Full-width ASCII forms (U+FF01..=U+FF5E) and the ideographic space to ASCII.
fn half_width(c: char) -> char {
    match c {
        '\u{FF01}'..='\u{FF5E}' => char::from_u32(u32::from(c) - 0xFEE0).unwrap_or(c),
        '\u{3000}' => ' ',
        _ => c,
    }
}

/// Separators cameras put between plate characters.
fn is_separator(c: char) -> bool {
    matches!(c, '·' | '•' | '・' | '.' | '‧' | '∙') || c.is_whitespace() || c == '\0'
}

/// Normalises a plate as the module docs say: no-plate markers → `None`; full-width to
/// ASCII; separators and spaces removed; a leading colour word stripped when a plate follows
/// it (黑 is also a province: `黑A12345` keeps it, `黑黑A12345` loses the first); ASCII
/// letters upper case.
pub fn normalise_plate(raw: &str) -> NormalPlate {
    let compact: String = raw
        .chars()
        .map(half_width)
        .filter(|c| !is_separator(*c))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let mut text = compact.as_str();
    let mut color_prefix = None;
    for (word, color) in COLOR_PREFIXES {
        if let Some(rest) = text.strip_prefix(word) {
            // Only a colour word when a plate follows: a Chinese character (province, 使,
            // 民航 …) or an armed-police WJ plate.
            let plate_follows =
                rest.chars().next().is_some_and(|c| !c.is_ascii()) || rest.starts_with("WJ");
            if plate_follows {
                text = rest;
                color_prefix = Some(color);
            }
            break;
        }
    }
    if is_no_plate(text) {
        return NormalPlate {
            plate: None,
            color_prefix,
        };
    }
    NormalPlate {
        plate: Some(text.to_owned()),
        color_prefix,
    }
}

/// What a colour text from a camera means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colour {
    /// One of the spec's words.
    Word(&'static str),
    /// The camera says it does not know (`0`, `unknown`, `未知`, `其他`, empty).
    Unknown,
    /// Not a colour we know: left out, named in `remark`.
    Unrecognised,
}

/// Maps a colour from any source to the spec's words: the words themselves (with or
/// without 色, and 渐变绿 as 绿), English words (blue, yellow, white, black, green,
/// yellow-green / yellowGreen, any case), and Vzenith codes 1..=6.
pub fn normalise_color(raw: &str) -> Colour {
    let t: String = raw
        .chars()
        .map(half_width)
        .filter(|c| !c.is_whitespace() && !matches!(c, '-' | '_'))
        .collect::<String>()
        .to_ascii_lowercase();
    let t = t.strip_suffix('色').unwrap_or(&t);
    if let Ok(code) = t.parse::<u32>() {
        return match code {
            0 => Colour::Unknown,
            1..=6 => Colour::Word(COLOR_WORDS[(code - 1) as usize]),
            _ => Colour::Unrecognised,
        };
    }
    let word = match t {
        "" | "unknown" | "未知" | "其他" | "其它" | "other" | "none" => {
            return Colour::Unknown
        }
        "蓝" | "blue" => "蓝",
        "黄" | "yellow" => "黄",
        "白" | "white" => "白",
        "黑" | "black" => "黑",
        "绿" | "渐变绿" | "green" | "newenergygreen" | "gradientgreen" => "绿",
        "黄绿" | "yellowgreen" | "greenyellow" => "黄绿",
        _ => return Colour::Unrecognised,
    };
    Colour::Word(word)
}

fn is_letter(c: char) -> bool {
    c.is_ascii_uppercase() && c != 'I' && c != 'O'
}

fn is_serial_char(c: char) -> bool {
    is_letter(c) || c.is_ascii_digit()
}

/// Whether `plate` (already normalised) follows the Chinese plate rules in the module docs.
pub fn is_usual_plate(plate: &str) -> bool {
    let chars: Vec<char> = plate.chars().collect();
    let [first, issuer, serial @ ..] = chars.as_slice() else {
        return false;
    };
    if !PROVINCES.contains(*first) || !is_letter(*issuer) {
        return false;
    }
    let Some((last, body)) = serial.split_last() else {
        return false;
    };
    if SUFFIXES.contains(*last) {
        // A suffix replaces the 5th character of an ordinary 5-character serial.
        let hk_macau = matches!(last, '港' | '澳');
        return body.len() == 4
            && body.iter().all(|c| is_serial_char(*c))
            && (!hk_macau || (*first == '粤' && *issuer == 'Z'));
    }
    if !serial.iter().all(|c| is_serial_char(*c)) {
        return false;
    }
    let digits = |s: &[char]| s.iter().all(char::is_ascii_digit);
    match serial.len() {
        5 => true,
        6 => {
            // Small: energy letter, letter or digit, 4 digits. Large: 5 digits, energy letter.
            let small = ENERGY.contains(serial[0]) && digits(&serial[2..]);
            let large = digits(&serial[..5]) && ENERGY.contains(serial[5]);
            small || large
        }
        _ => false,
    }
}

/// A camera's own rules, from its config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CameraRules {
    /// `styles`: the camera's vehicle or plate type (as text, e.g. Vzenith plate type `"4"`)
    /// → `carStyle`. Looked up before the driver's default mapping.
    pub styles: Vec<(String, CarStyle)>,
    /// `max_camera_skew`: how far ahead of the gateway's corrected clock a capture time may
    /// be before the camera's clock is taken as wrong.
    pub max_skew: Duration,
}

impl Default for CameraRules {
    fn default() -> Self {
        CameraRules {
            styles: Vec::new(),
            max_skew: DEFAULT_MAX_SKEW,
        }
    }
}

impl CameraRules {
    /// The override for a camera type, if the table has one.
    pub fn style_for(&self, camera_type: &str) -> Option<CarStyle> {
        let t = camera_type.trim();
        self.styles.iter().find(|(k, _)| k == t).map(|(_, s)| *s)
    }
}

/// A plate read as the camera sent it, before [`normalise`].
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Reading {
    /// Dedupe key (see [`PlateEvent::source_key`]); built by the driver from what the
    /// camera sent, never from values [`normalise`] replaces.
    pub source_key: String,
    /// The lane name (`nodeName`).
    pub node_name: String,
    /// Entry or exit when the camera says; `None` = the camera's configured direction.
    pub direction: Option<Direction>,
    /// Plate text as read (any noise); `None` = no plate field.
    pub plate: Option<String>,
    /// Colour as read: a word, an English word or a code.
    pub color: Option<String>,
    /// The camera's vehicle or plate type as read (looked up in the `styles` table).
    pub style: Option<String>,
    /// What the driver's own mapping makes of `style` when the table has no entry
    /// (`None` = the driver does not know it: sent as car, with a remark).
    pub vendor_style: Option<CarStyle>,
    /// Capture time, Unix ms, as the camera says; `None` = the gateway's clock.
    pub captured_at_ms: Option<i64>,
    /// A buffered result (Vzenith `offline_record`, `isoffline`, a retransmission flag):
    /// its time may be old, and says nothing about the camera's clock now.
    pub buffered: bool,
    /// Vehicle brand.
    pub brand: Option<String>,
    /// Encoded image.
    pub image: Option<Vec<u8>>,
    /// Values the driver already replaced by a default (e.g. an unknown direction word, an
    /// unreadable time), said in `remark` and counted as defaulted.
    pub replaced: Vec<String>,
    /// Other remarks (e.g. an image that did not decode).
    pub notes: Vec<String>,
}

impl std::fmt::Debug for Reading {
    // Image bytes are never printed: they are large and may be personal data.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reading")
            .field("source_key", &self.source_key)
            .field("node_name", &self.node_name)
            .field("direction", &self.direction)
            .field("plate", &self.plate)
            .field("color", &self.color)
            .field("style", &self.style)
            .field("vendor_style", &self.vendor_style)
            .field("captured_at_ms", &self.captured_at_ms)
            .field("buffered", &self.buffered)
            .field("image_bytes", &self.image.as_ref().map(Vec::len))
            .field("replaced", &self.replaced)
            .field("notes", &self.notes)
            .finish_non_exhaustive()
    }
}

/// A Unix ms time as `YYYY-MM-DD HH:MM:SSZ` (UTC) for remarks and logs.
pub fn utc_text(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || format!("{ms} ms"),
        |t| t.format("%Y-%m-%d %H:%M:%SZ").to_string(),
    )
}

/// Turns a [`Reading`] into the event to submit, as the module docs say. `default_direction`
/// is the camera's configured direction; `now_ms` the gateway's corrected clock at receipt
/// ([`crate::EventSink::now_ms`]). Updates `status` (unusual plate, defaulted fields,
/// camera clock) and logs with a rate limit.
pub fn normalise(
    r: Reading,
    default_direction: Direction,
    rules: &CameraRules,
    status: &DriverStatus,
    now_ms: i64,
) -> PlateEvent {
    let mut notes = r.notes;
    let mut defaulted: Vec<&str> = vec!["field"; r.replaced.len()];
    notes.extend(r.replaced);

    let normal = r.plate.as_deref().map(normalise_plate);
    let plate = normal.as_ref().and_then(|n| n.plate.clone());
    if let Some(p) = &plate {
        if !is_usual_plate(p) {
            let n = status.unusual_plate(p);
            if should_log(n) {
                tracing::info!(driver = status.name(), plate = %p, unusual_plates = n, "unusual plate (not the Chinese plate rules): reported as read");
            }
        }
    }

    let color = match r.color.as_deref().map(normalise_color) {
        Some(Colour::Word(w)) => Some(w),
        Some(Colour::Unrecognised) => {
            let raw: String = r.color.as_deref().unwrap_or("").chars().take(16).collect();
            notes.push(format!("颜色未知 (colour {raw:?} not known: left out)"));
            defaulted.push("color");
            normal.as_ref().and_then(|n| n.color_prefix)
        }
        Some(Colour::Unknown) | None => normal.as_ref().and_then(|n| n.color_prefix),
    };

    let style = match r.style.as_deref() {
        None => r.vendor_style.unwrap_or_default(),
        Some(raw) => rules.style_for(raw).or(r.vendor_style).unwrap_or_else(|| {
            let raw: String = raw.chars().take(16).collect();
            notes.push(format!("车型未知 (style {raw:?} not known: sent as 0)"));
            defaulted.push("style");
            CarStyle::Car
        }),
    };

    let captured_at_ms = r
        .captured_at_ms
        .map(|ms| check_clock(ms, r.buffered, rules, status, now_ms, &mut notes));
    if captured_at_ms.is_some() && captured_at_ms != r.captured_at_ms {
        defaulted.push("time");
    }

    for what in &defaulted {
        let n = status.defaulted();
        if should_log(n) {
            tracing::info!(
                driver = status.name(),
                field = what,
                defaulted = n,
                "camera value replaced by a default; pass kept (see its remark)"
            );
        }
    }
    let remark = (!notes.is_empty()).then(|| notes.join("; "));
    PlateEvent {
        source_key: r.source_key,
        node_name: r.node_name,
        direction: r.direction.unwrap_or(default_direction),
        plate,
        captured_at_ms,
        color: color.map(str::to_owned),
        style,
        brand: r.brand,
        image: r.image,
        remark,
    }
}

/// The capture time to send: `ms`, or `now_ms` when the camera's clock is wrong.
fn check_clock(
    ms: i64,
    buffered: bool,
    rules: &CameraRules,
    status: &DriverStatus,
    now_ms: i64,
    notes: &mut Vec<String>,
) -> i64 {
    let skew = i64::try_from(rules.max_skew.as_millis()).unwrap_or(i64::MAX);
    let ahead = ms.saturating_sub(now_ms);
    let problem = if ms < EARLIEST_CAPTURE_MS {
        Some("before 2020")
    } else if ahead > skew {
        Some("ahead of the gateway's clock")
    } else {
        None
    };
    if let Some(why) = problem {
        notes.push(format!(
            "相机时钟错误 (camera time {} is {why}: receipt time sent)",
            utc_text(ms)
        ));
        if status.set_clock_wrong(true) {
            tracing::warn!(driver = status.name(), camera_time = %utc_text(ms), gateway_time = %utc_text(now_ms), "camera clock is wrong: its capture times are replaced by the receipt time until it is set");
        }
        return now_ms;
    }
    // A live result within the window both ways shows the clock is right again.
    if !buffered && ahead >= -skew && status.set_clock_wrong(false) {
        tracing::info!(
            driver = status.name(),
            "camera clock is plausible again: capture times are used"
        );
    }
    ms
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(raw: &str) -> Option<String> {
        normalise_plate(raw).plate
    }

    #[test]
    fn every_kind_of_camera_noise_is_removed_from_a_plate() {
        let cases = [
            // (as the camera sent it, as it must reach the platform)
            ("晋A12345", "晋A12345"),
            // Hikvision colour prefixes, each word.
            ("蓝晋A12345", "晋A12345"),
            ("黄晋A12345", "晋A12345"),
            ("白晋A12345", "晋A12345"),
            ("黑晋A12345", "晋A12345"),
            ("绿晋AD12345", "晋AD12345"),
            ("黄绿晋A12345F", "晋A12345F"),
            ("渐变绿晋AD12345", "晋AD12345"),
            // 黑 is also Heilongjiang's abbreviation: kept when no plate follows it.
            ("黑A12345", "黑A12345"),
            ("黑黑A12345", "黑A12345"),
            ("蓝黑A12345", "黑A12345"),
            ("白WJ12345", "WJ12345"),
            // Full-width letters and digits, the ideographic space.
            ("晋Ａ１２３４５", "晋A12345"),
            ("京ＡＤ１２３４５", "京AD12345"),
            ("晋　A12345", "晋A12345"),
            // Lower case.
            ("晋a12345", "晋A12345"),
            ("粤bd1234f", "粤BD1234F"),
            ("晋ａ12345", "晋A12345"),
            // Separators between characters.
            ("晋A·12345", "晋A12345"),
            ("晋A.12345", "晋A12345"),
            ("晋A．12345", "晋A12345"),
            ("晋 A 123 45", "晋A12345"),
            ("  晋A12345\0", "晋A12345"),
            ("晋A・12345", "晋A12345"),
            // All at once.
            ("蓝 晋ａ·１2345", "晋A12345"),
        ];
        for (raw, want) in cases {
            assert_eq!(n(raw).as_deref(), Some(want), "{raw:?}");
        }
        assert_eq!(normalise_plate("蓝晋A12345").color_prefix, Some("蓝"));
        assert_eq!(normalise_plate("渐变绿晋AD12345").color_prefix, Some("绿"));
        assert_eq!(normalise_plate("黑A12345").color_prefix, None);
    }

    #[test]
    fn no_plate_markers_stay_no_plate_even_behind_a_colour_word() {
        for raw in [
            "",
            "  ",
            "_无_",
            "无牌车",
            "无车牌",
            "无牌",
            "未识别",
            "蓝无牌车",
            "\0",
        ] {
            assert_eq!(n(raw), None, "{raw:?}");
        }
        // A colour word alone is not a plate we can strip; it stays (unusual).
        assert_eq!(n("蓝").as_deref(), Some("蓝"));
    }

    #[test]
    fn colours_from_any_source_end_as_the_spec_words() {
        let cases = [
            ("蓝", Colour::Word("蓝")),
            ("蓝色", Colour::Word("蓝")),
            ("黄", Colour::Word("黄")),
            ("白", Colour::Word("白")),
            ("黑", Colour::Word("黑")),
            ("绿", Colour::Word("绿")),
            ("渐变绿", Colour::Word("绿")),
            ("黄绿", Colour::Word("黄绿")),
            ("黄绿色", Colour::Word("黄绿")),
            ("blue", Colour::Word("蓝")),
            ("Blue", Colour::Word("蓝")),
            ("YELLOW", Colour::Word("黄")),
            ("white", Colour::Word("白")),
            ("black", Colour::Word("黑")),
            ("green", Colour::Word("绿")),
            ("newEnergyGreen", Colour::Word("绿")),
            ("yellowGreen", Colour::Word("黄绿")),
            ("yellow-green", Colour::Word("黄绿")),
            ("yellow green", Colour::Word("黄绿")),
            ("1", Colour::Word("蓝")),
            ("2", Colour::Word("黄")),
            ("3", Colour::Word("白")),
            ("4", Colour::Word("黑")),
            ("5", Colour::Word("绿")),
            ("6", Colour::Word("黄绿")),
            ("６", Colour::Word("黄绿")),
            ("0", Colour::Unknown),
            ("unknown", Colour::Unknown),
            ("未知", Colour::Unknown),
            ("", Colour::Unknown),
            ("7", Colour::Unrecognised),
            ("pink", Colour::Unrecognised),
            ("紫", Colour::Unrecognised),
        ];
        for (raw, want) in cases {
            assert_eq!(normalise_color(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn ordinary_new_energy_and_suffixed_plates_are_usual() {
        for p in [
            "晋A12345",
            "沪CAB123",
            "黑A12345",
            // Small new-energy: energy letter, letter or digit, 4 digits.
            "京AD12345",
            "晋ADF1234",
            "粤BK91234",
            // Large new-energy: 5 digits, energy letter.
            "京A12345F",
            "晋A12345D",
            // Suffixes replace the 5th serial character.
            "粤B1234学",
            "晋A1234挂",
            "京A1234警",
            "粤Z1234港",
            "粤Z1234澳",
            "使A1234领",
        ] {
            assert!(is_usual_plate(p), "{p}");
        }
    }

    #[test]
    fn misreads_and_rule_breakers_are_unusual() {
        for p in [
            "ABC",
            "",
            "晋",
            "晋A",
            "晋I12345",
            "晋O12345",
            "晋A1234",
            "晋A1234567",
            "X晋A12345",
            "晋a12345",
            "晋A12#45",
            // New energy: the energy letter must be first (then letter/digit + 4 digits) or
            // last (after 5 digits).
            "晋AZ12345",
            "晋AD1234A",
            "晋ADF123A",
            "晋A1234DF",
            "晋AD12I45",
            // 港/澳 only after 粤Z.
            "京A1234港",
            "粤B1234港",
            "粤A1234澳",
            // A suffix only on a 5-character serial.
            "粤B12345学",
            "粤B123学",
            "晋AD1234挂",
            "晋A123学4",
            // Military / armed police: reported, but unusual.
            "WJ12345",
        ] {
            assert!(!is_usual_plate(p), "{p}");
        }
    }

    fn reading(plate: &str) -> Reading {
        Reading {
            source_key: "k".into(),
            node_name: "lane".into(),
            plate: Some(plate.into()),
            ..Reading::default()
        }
    }

    const NOW: i64 = 1_795_910_400_000; // 2026-11-28T00:00:00Z

    #[test]
    fn normalise_cleans_the_plate_maps_colour_and_style_and_counts_unusual_plates() {
        let status = DriverStatus::new("cam", "test");
        let rules = CameraRules {
            styles: vec![
                ("4".into(), CarStyle::Truck),
                ("货车".into(), CarStyle::Truck),
            ],
            ..CameraRules::default()
        };
        let mut r = reading("蓝晋ａ·12345");
        r.color = Some("yellow".into());
        r.style = Some("4".into());
        r.vendor_style = Some(CarStyle::Large);
        let ev = normalise(r, Direction::In, &rules, &status, NOW);
        assert_eq!(ev.plate.as_deref(), Some("晋A12345"));
        assert_eq!(
            ev.color.as_deref(),
            Some("黄"),
            "the colour field wins over the prefix"
        );
        assert_eq!(
            ev.style,
            CarStyle::Truck,
            "the table wins over the vendor mapping"
        );
        assert_eq!(ev.direction, Direction::In);
        assert_eq!(ev.remark, None);
        assert_eq!(status.snapshot().unusual_plates, 0);

        let ev = normalise(reading("蓝晋A1234"), Direction::Out, &rules, &status, NOW);
        assert_eq!(
            ev.color.as_deref(),
            Some("蓝"),
            "the prefix stands in for a missing colour"
        );
        assert_eq!(ev.direction, Direction::Out);
        let s = status.snapshot();
        assert_eq!(s.unusual_plates, 1);
        assert_eq!(s.last_unusual_plate.as_deref(), Some("晋A1234"));
        assert_eq!(s.defaulted, 0);
    }

    #[test]
    fn an_unknown_style_or_colour_is_defaulted_with_a_remark_and_counted() {
        let status = DriverStatus::new("cam", "test");
        let mut r = reading("晋A12345");
        r.style = Some("bus?".into());
        r.color = Some("pink".into());
        r.notes.push("earlier note".into());
        let ev = normalise(r, Direction::In, &CameraRules::default(), &status, NOW);
        assert_eq!(ev.style, CarStyle::Car);
        assert_eq!(ev.color, None);
        let remark = ev.remark.expect("remark");
        assert!(remark.starts_with("earlier note; "), "{remark}");
        assert!(
            remark.contains("\"bus?\"") && remark.contains("\"pink\""),
            "{remark}"
        );
        assert_eq!(status.snapshot().defaulted, 2);
    }

    #[test]
    fn a_camera_clock_ahead_or_before_2020_is_replaced_by_the_receipt_time() {
        let status = DriverStatus::new("cam", "test");
        let rules = CameraRules::default();
        let at = |ms: i64, buffered: bool| {
            let mut r = reading("晋A12345");
            r.captured_at_ms = Some(ms);
            r.buffered = buffered;
            normalise(r, Direction::In, &rules, &status, NOW)
        };
        // Within 5 minutes ahead: kept.
        let ev = at(NOW + 299_000, false);
        assert_eq!(ev.captured_at_ms, Some(NOW + 299_000));
        assert!(!status.snapshot().clock_wrong);
        // More than 5 minutes ahead: receipt time, remark, wrong clock.
        let ev = at(NOW + 301_000, false);
        assert_eq!(ev.captured_at_ms, Some(NOW));
        assert!(
            ev.remark.as_deref().unwrap_or("").contains("ahead"),
            "{ev:?}"
        );
        assert!(status.snapshot().clock_wrong);
        assert_eq!(status.snapshot().defaulted, 1);
        // Before 2020 (a camera that lost its time: 1970).
        let ev = at(86_400_000, false);
        assert_eq!(ev.captured_at_ms, Some(NOW));
        assert!(ev.remark.as_deref().unwrap_or("").contains("before 2020"));
        // A buffered result may be old, and says nothing about the clock now.
        let ev = at(NOW - 3 * 3_600_000, true);
        assert_eq!(ev.captured_at_ms, Some(NOW - 3 * 3_600_000));
        assert_eq!(ev.remark, None);
        assert!(status.snapshot().clock_wrong);
        // ... but never in the future.
        let ev = at(NOW + 3_600_000, true);
        assert_eq!(ev.captured_at_ms, Some(NOW));
        // A live result with a plausible time clears the wrong clock.
        let ev = at(NOW - 2_000, false);
        assert_eq!(ev.captured_at_ms, Some(NOW - 2_000));
        assert!(!status.snapshot().clock_wrong);
    }

    #[test]
    fn a_per_camera_skew_is_honoured() {
        let status = DriverStatus::new("cam", "test");
        let rules = CameraRules {
            max_skew: Duration::from_secs(30),
            ..CameraRules::default()
        };
        let mut r = reading("晋A12345");
        r.captured_at_ms = Some(NOW + 60_000);
        let ev = normalise(r, Direction::In, &rules, &status, NOW);
        assert_eq!(ev.captured_at_ms, Some(NOW));
    }
}
