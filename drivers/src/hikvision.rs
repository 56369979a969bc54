//! Hikvision (海康威视) ISAPI alerts: the `EventNotificationAlert` XML a camera POSTs to its
//! "alarm host / HTTP listening" server, turned into typed values (`devices.md` section 4).
//!
//! Pure: no I/O. The HTTP driver ([`crate::http`]) takes the XML out of the request (alone,
//! or the XML part of a `multipart/form-data` body) and calls [`parse_alert`].
//!
//! Leniency rules, because firmwares differ:
//! - element names are matched without their namespace prefix, wherever they are nested
//!   (`pictureInfoList` sits inside `<ANPR>` on some firmware and beside it on others);
//! - the first non-empty occurrence of a field wins;
//! - text that is not UTF-8 is read as GBK;
//! - a field that is missing or not understood falls back to "unknown", never an error.
//!   Only a body that is not XML, or XML whose root is not `EventNotificationAlert`, is.
//!
//! Nothing here panics on any input bytes.

use chrono::{DateTime, NaiveDateTime, TimeZone};
use quick_xml::events::Event as XmlEvent;
use quick_xml::Reader;

use crate::CarStyle;

/// Deepest element nesting accepted (real alerts are 4 deep).
const MAX_DEPTH: usize = 32;
/// Longest text kept from one element; longer text is cut (a plate is 10 characters).
const MAX_TEXT: usize = 256;

/// Colour words Chinese firmware puts before the plate, longest first, with the colour
/// word each stands for.
const COLOR_PREFIXES: [(&str, &str); 7] = [
    ("渐变绿", "绿"),
    ("黄绿", "黄绿"),
    ("蓝", "蓝"),
    ("黄", "黄"),
    ("白", "白"),
    ("黑", "黑"),
    ("绿", "绿"),
];

/// First characters of a Chinese plate (province abbreviations, 使 and 领).
const PLATE_STARTS: &str = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼使领";

/// Why an alert could not be understood.
#[derive(Debug, thiserror::Error)]
pub enum HikError {
    /// The body is not well-formed XML.
    #[error("not XML: {0}")]
    NotXml(String),
    /// Well-formed XML, but not an `EventNotificationAlert`.
    #[error("the XML root is <{0}>, not <EventNotificationAlert>")]
    NotAnAlert(String),
    /// An empty body or one without any element.
    #[error("no XML element in the body")]
    Empty,
    /// Elements nested deeper than any alert.
    #[error("XML nested deeper than {MAX_DEPTH} elements")]
    TooDeep,
}

/// One picture named in `<pictureInfoList>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HikPicture {
    /// `<fileName>`: the multipart part (name or file name) that carries it.
    pub file_name: String,
    /// `<type>`: `licensePlatePicture`, `detectionPicture`, `vehiclePicture`, …
    pub kind: String,
}

/// What an `<ANPR>` element says about the vehicle.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HikAnpr {
    /// `<licensePlate>` as sent (may carry a leading colour word); see [`split_plate`].
    pub license_plate: Option<String>,
    /// `<plateColor>` (English word); see [`color_word`].
    pub plate_color: Option<String>,
    /// `<vehicleType>` (or `<vehicleClass>`) anywhere inside `<ANPR>`; see [`style_of`].
    pub vehicle_type: Option<String>,
    /// `<confidenceLevel>`, 0–100.
    pub confidence: Option<u32>,
}

/// An `EventNotificationAlert`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HikAlert {
    /// `<eventType>`: `ANPR` for a plate read; anything else (e.g. `heartBeat`,
    /// `videoloss`) only proves the camera is alive.
    pub event_type: String,
    /// `<dateTime>` as sent (ISO 8601, usually with an offset); see [`parse_date_time`].
    pub date_time: Option<String>,
    /// `<UUID>`: one per event, kept when the camera sends the event again.
    pub uuid: Option<String>,
    /// `<isDataRetransmission>true</…>`: the camera re-sends what it could not deliver.
    pub retransmission: bool,
    /// `<deviceID>`.
    pub device_id: Option<String>,
    /// `<macAddress>`.
    pub mac: Option<String>,
    /// `<ipAddress>`.
    pub ip: Option<String>,
    /// `<channelID>`.
    pub channel: Option<String>,
    /// The `<ANPR>` element, when there is one.
    pub anpr: Option<HikAnpr>,
    /// The pictures the alert names.
    pub pictures: Vec<HikPicture>,
}

impl HikAlert {
    /// Whether this is a plate read (`eventType` ANPR, or an `<ANPR>` element with a plate
    /// and no event type at all).
    pub fn is_anpr(&self) -> bool {
        if self.event_type.is_empty() {
            return self
                .anpr
                .as_ref()
                .is_some_and(|a| a.license_plate.is_some());
        }
        self.event_type.eq_ignore_ascii_case("anpr")
    }

    /// Whether the camera's identity (`deviceID`, or `macAddress` compared without case and
    /// separators) is `sn`.
    pub fn matches_sn(&self, sn: &str) -> bool {
        let want = sn.trim();
        if self
            .device_id
            .as_deref()
            .is_some_and(|d| d.trim().eq_ignore_ascii_case(want))
        {
            return true;
        }
        let bare = |s: &str| -> String {
            s.chars()
                .filter(char::is_ascii_alphanumeric)
                .map(|c| c.to_ascii_lowercase())
                .collect()
        };
        self.mac
            .as_deref()
            .is_some_and(|m| !bare(m).is_empty() && bare(m) == bare(want))
    }

    /// The kind of the picture carried by a part with this name or file name: the type the
    /// alert's `<pictureInfoList>` gives it, else guessed from the name itself.
    pub fn picture_kind(&self, part_name: &str) -> PictureKind {
        let named = self
            .pictures
            .iter()
            .find(|p| !p.file_name.is_empty() && p.file_name.eq_ignore_ascii_case(part_name))
            .map_or(part_name, |p| p.kind.as_str());
        if named.to_ascii_lowercase().contains("plate") {
            PictureKind::PlateCrop
        } else {
            PictureKind::Scene
        }
    }
}

/// What a picture shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PictureKind {
    /// The scene or the vehicle (`detectionPicture`, `vehiclePicture`, …): the record's image.
    Scene,
    /// The plate crop (`licensePlatePicture`): the image only when there is no scene.
    PlateCrop,
}

/// Parses an `EventNotificationAlert` (UTF-8, or GBK when the bytes are not UTF-8).
pub fn parse_alert(body: &[u8]) -> Result<HikAlert, HikError> {
    let text = match std::str::from_utf8(body) {
        Ok(t) => std::borrow::Cow::Borrowed(t),
        Err(_) => encoding_rs::GBK.decode_without_bom_handling(body).0,
    };
    let mut reader = Reader::from_str(text.trim_start_matches('\u{feff}'));
    reader.config_mut().trim_text(true);
    let mut stack: Vec<String> = Vec::new();
    let mut text = String::new();
    let mut alert = HikAlert::default();
    let mut anpr: Option<HikAnpr> = None;
    let mut picture = (String::new(), String::new());
    let mut saw_root = false;
    loop {
        let ev = reader
            .read_event()
            .map_err(|e| HikError::NotXml(e.to_string()))?;
        match ev {
            XmlEvent::Start(e) => {
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                if stack.is_empty() {
                    if saw_root {
                        return Err(HikError::NotXml("more than one root element".into()));
                    }
                    saw_root = true;
                    if name != "EventNotificationAlert" {
                        return Err(HikError::NotAnAlert(name.chars().take(64).collect()));
                    }
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(HikError::TooDeep);
                }
                if name == "ANPR" && anpr.is_none() {
                    anpr = Some(HikAnpr::default());
                }
                if name == "pictureInfo" {
                    picture = (String::new(), String::new());
                }
                stack.push(name);
                text.clear();
            }
            XmlEvent::Empty(e) => {
                if stack.is_empty() {
                    let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                    return if name == "EventNotificationAlert" {
                        Ok(alert)
                    } else {
                        Err(HikError::NotAnAlert(name.chars().take(64).collect()))
                    };
                }
            }
            XmlEvent::Text(t) => {
                let s = t.decode().map_err(|e| HikError::NotXml(e.to_string()))?;
                push_text(&mut text, &s);
            }
            XmlEvent::CData(t) => {
                push_text(&mut text, &String::from_utf8_lossy(&t));
            }
            XmlEvent::GeneralRef(r) => push_text(&mut text, &resolve_ref(&r)?),
            XmlEvent::End(_) => {
                let Some(name) = stack.pop() else {
                    return Err(HikError::NotXml("unbalanced end tag".into()));
                };
                let value = text.trim().to_owned();
                text.clear();
                let in_anpr = stack.iter().any(|s| s == "ANPR");
                let parent = stack.last().map_or("", String::as_str);
                store(
                    &mut alert,
                    anpr.as_mut().filter(|_| in_anpr),
                    &mut picture,
                    &name,
                    parent,
                    value,
                );
                if name == "pictureInfo" {
                    let (file_name, kind) = std::mem::take(&mut picture);
                    if !file_name.is_empty() || !kind.is_empty() {
                        alert.pictures.push(HikPicture { file_name, kind });
                    }
                }
            }
            XmlEvent::Eof => break,
            XmlEvent::Comment(_) | XmlEvent::Decl(_) | XmlEvent::PI(_) | XmlEvent::DocType(_) => {}
        }
    }
    if !saw_root {
        return Err(HikError::Empty);
    }
    if !stack.is_empty() {
        return Err(HikError::NotXml(
            "the document ends inside an element".into(),
        ));
    }
    alert.anpr = anpr;
    Ok(alert)
}

/// The text of `&name;` / `&#n;`: the predefined entities and character references.
fn resolve_ref(r: &quick_xml::events::BytesRef<'_>) -> Result<String, HikError> {
    let name = r.decode().map_err(|e| HikError::NotXml(e.to_string()))?;
    match r.resolve_char_ref() {
        Ok(Some(c)) => Ok(c.to_string()),
        Ok(None) => quick_xml::escape::resolve_predefined_entity(&name)
            .map(str::to_owned)
            .ok_or_else(|| HikError::NotXml(format!("unknown entity &{name};"))),
        Err(e) => Err(HikError::NotXml(e.to_string())),
    }
}

fn push_text(text: &mut String, s: &str) {
    let room = MAX_TEXT.saturating_sub(text.chars().count());
    text.extend(s.chars().take(room));
}

/// Keep `value` of element `name` (child of `parent`) where it belongs.
fn store(
    alert: &mut HikAlert,
    anpr: Option<&mut HikAnpr>,
    picture: &mut (String, String),
    name: &str,
    parent: &str,
    value: String,
) {
    if value.is_empty() {
        return;
    }
    let first = |slot: &mut Option<String>, v: String| {
        if slot.is_none() {
            *slot = Some(v);
        }
    };
    if parent == "pictureInfo" {
        match name {
            "fileName" if picture.0.is_empty() => picture.0 = value,
            "type" if picture.1.is_empty() => picture.1 = value,
            _ => {}
        }
        return;
    }
    if let Some(a) = anpr {
        match name {
            "licensePlate" => return first(&mut a.license_plate, value),
            "plateColor" => return first(&mut a.plate_color, value),
            "vehicleType" | "vehicleClass" => return first(&mut a.vehicle_type, value),
            "confidenceLevel" => {
                if a.confidence.is_none() {
                    a.confidence = value.parse().ok();
                }
                return;
            }
            _ => {}
        }
    }
    match name {
        "eventType" if alert.event_type.is_empty() => alert.event_type = value,
        "dateTime" => first(&mut alert.date_time, value),
        "UUID" | "uuid" => first(&mut alert.uuid, value),
        "isDataRetransmission" => alert.retransmission |= value.eq_ignore_ascii_case("true"),
        "deviceID" => first(&mut alert.device_id, value),
        "macAddress" => first(&mut alert.mac, value),
        "ipAddress" => first(&mut alert.ip, value),
        "channelID" => first(&mut alert.channel, value),
        _ => {}
    }
}

/// Splits a `<licensePlate>` into the plate and the colour word Chinese firmware puts
/// before it (`蓝晋A12345` → `晋A12345`, 蓝). A leading 蓝 黄 白 黑 绿 黄绿 渐变绿 is
/// stripped when a plate follows it; 黑 is also the Heilongjiang province, so `黑A12345`
/// stays as it is and `黑黑A12345` is a black plate from Heilongjiang. The plate is `None`
/// when the camera read none (`无车牌`, `_无_`, empty, a colour word alone).
pub fn split_plate(raw: &str) -> (Option<String>, Option<&'static str>) {
    let raw = raw.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    for (prefix, color) in COLOR_PREFIXES {
        let Some(rest) = raw.strip_prefix(prefix) else {
            continue;
        };
        let rest = rest.trim();
        let Some(next) = rest.chars().next() else {
            // The colour alone: no plate.
            return (None, Some(color));
        };
        let strip = if prefix == "黑" {
            PLATE_STARTS.contains(next)
        } else {
            true
        };
        if strip {
            return (plate_text(rest), Some(color));
        }
    }
    (plate_text(raw), None)
}

fn plate_text(text: &str) -> Option<String> {
    if crate::vzenith::is_no_plate(text) || text == "车牌" {
        None
    } else {
        Some(text.to_owned())
    }
}

/// The Chinese colour word for an English `<plateColor>` (case and separators ignored):
/// blue 蓝, yellow 黄, white 白, black 黑, green 绿 (also new-energy and gradient green),
/// yellow-green 黄绿. `None` for anything else (`other`, `unknown`).
pub fn color_word(plate_color: &str) -> Option<&'static str> {
    let w: String = plate_color
        .chars()
        .filter(char::is_ascii_alphabetic)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if w.contains("yellowgreen") || w.contains("greenyellow") {
        Some("黄绿")
    } else if w.contains("green") {
        Some("绿")
    } else if w.contains("blue") {
        Some("蓝")
    } else if w.contains("yellow") {
        Some("黄")
    } else if w.contains("white") {
        Some("白")
    } else if w.contains("black") {
        Some("黑")
    } else {
        None
    }
}

/// The platform's `carStyle` for a `<vehicleType>`: words containing truck, lorry, tanker
/// or trailer give [`CarStyle::Truck`]; bus, coach or large (but not minibus)
/// [`CarStyle::Large`]; the numeric codes 2 (truck) and 5 (small truck) Truck, 1 (bus)
/// and 10 (medium bus) Large; anything else [`CarStyle::Car`].
pub fn style_of(vehicle_type: &str) -> CarStyle {
    let w = vehicle_type.trim().to_ascii_lowercase();
    if let Ok(n) = w.parse::<u32>() {
        return match n {
            2 | 5 => CarStyle::Truck,
            1 | 10 => CarStyle::Large,
            _ => CarStyle::Car,
        };
    }
    if ["truck", "lorry", "tanker", "trailer"]
        .iter()
        .any(|t| w.contains(t))
    {
        CarStyle::Truck
    } else if !w.contains("minibus")
        && ["bus", "coach", "large", "heavy"]
            .iter()
            .any(|t| w.contains(t))
    {
        CarStyle::Large
    } else {
        CarStyle::Car
    }
}

/// `<dateTime>` as Unix ms: ISO 8601 with an offset (`2026-11-28T08:00:00+08:00`, also
/// `+0800`, `Z` and fractions of a second) is an instant; without one it is the lot's
/// local time in `tz`. `None` when it does not parse.
pub fn parse_date_time(text: &str, tz: chrono_tz::Tz) -> Option<i64> {
    let t = text.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(t) {
        return Some(d.timestamp_millis());
    }
    for f in ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f%z"] {
        if let Ok(d) = DateTime::parse_from_str(t, f) {
            return Some(d.timestamp_millis());
        }
    }
    for f in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(n) = NaiveDateTime::parse_from_str(t, f) {
            return tz
                .from_local_datetime(&n)
                .earliest()
                .map(|d| d.timestamp_millis());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An ANPR alert as a Chinese-firmware camera sends it (values invented).
    const ANPR: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<EventNotificationAlert version="2.0" xmlns="http://www.isapi.org/ver20/XMLSchema">
<ipAddress>10.20.30.41</ipAddress>
<portNo>80</portNo>
<protocol>HTTP</protocol>
<macAddress>a4:14:37:0b:2c:9e</macAddress>
<channelID>1</channelID>
<dateTime>2026-11-28T08:15:30+08:00</dateTime>
<activePostCount>1</activePostCount>
<eventType>ANPR</eventType>
<eventState>active</eventState>
<eventDescription>ANPR</eventDescription>
<ANPR>
<country>3</country>
<licensePlate>黄晋A7Q321</licensePlate>
<line>1</line>
<direction>forward</direction>
<confidenceLevel>97</confidenceLevel>
<plateType>92TypeCivil</plateType>
<plateColor>yellow</plateColor>
<vehicleType>truck</vehicleType>
<vehicleInfo><index>7</index><color>white</color></vehicleInfo>
<pictureInfoList>
<pictureInfo><fileName>licensePlatePicture.jpg</fileName><type>licensePlatePicture</type></pictureInfo>
<pictureInfo><fileName>detectionPicture.jpg</fileName><type>detectionPicture</type></pictureInfo>
</pictureInfoList>
</ANPR>
<UUID>0d6f2a1c-77e4-4b1a-9c3e-5a2b8f10e4d7</UUID>
<picNum>2</picNum>
<isDataRetransmission>true</isDataRetransmission>
<deviceID>PARK-E1</deviceID>
</EventNotificationAlert>"#;

    #[test]
    fn an_anpr_alert_gives_its_plate_colour_style_time_and_pictures() {
        let a = parse_alert(ANPR.as_bytes()).expect("parses");
        assert!(a.is_anpr());
        assert_eq!(a.event_type, "ANPR");
        assert_eq!(a.date_time.as_deref(), Some("2026-11-28T08:15:30+08:00"));
        assert_eq!(
            a.uuid.as_deref(),
            Some("0d6f2a1c-77e4-4b1a-9c3e-5a2b8f10e4d7")
        );
        assert!(a.retransmission);
        assert_eq!(a.device_id.as_deref(), Some("PARK-E1"));
        let anpr = a.anpr.clone().expect("anpr");
        assert_eq!(anpr.license_plate.as_deref(), Some("黄晋A7Q321"));
        assert_eq!(anpr.plate_color.as_deref(), Some("yellow"));
        assert_eq!(anpr.vehicle_type.as_deref(), Some("truck"));
        assert_eq!(anpr.confidence, Some(97));
        assert_eq!(a.pictures.len(), 2);
        assert_eq!(
            a.picture_kind("licensePlatePicture.jpg"),
            PictureKind::PlateCrop
        );
        assert_eq!(a.picture_kind("detectionPicture.jpg"), PictureKind::Scene);
        assert_eq!(a.picture_kind("other.jpg"), PictureKind::Scene);
        assert!(a.matches_sn("park-e1"));
        assert!(a.matches_sn("A4-14-37-0B-2C-9E"));
        assert!(!a.matches_sn("PARK-E2"));
    }

    #[test]
    fn a_heartbeat_is_an_alert_but_not_anpr() {
        let hb = r#"<EventNotificationAlert version="2.0" xmlns="http://www.hikvision.com/ver20/XMLSchema">
<ipAddress>10.20.30.41</ipAddress><macAddress>a4:14:37:0b:2c:9e</macAddress>
<dateTime>2026-11-28T08:16:00+08:00</dateTime><activePostCount>0</activePostCount>
<eventType>heartBeat</eventType><eventState>active</eventState></EventNotificationAlert>"#;
        let a = parse_alert(hb.as_bytes()).expect("parses");
        assert!(!a.is_anpr());
        assert_eq!(a.event_type, "heartBeat");
        assert!(a.anpr.is_none());
    }

    #[test]
    fn namespace_prefixes_entities_cdata_and_gbk_text_are_read() {
        let xml = "<?xml version=\"1.0\" encoding=\"GBK\"?><isapi:EventNotificationAlert xmlns:isapi=\"urn:x\">\
            <isapi:eventType>ANPR</isapi:eventType><isapi:ANPR><isapi:licensePlate><![CDATA[蓝]]>&#26187;A&amp;1</isapi:licensePlate>\
            </isapi:ANPR></isapi:EventNotificationAlert>";
        let gbk = encoding_rs::GBK.encode(xml).0.into_owned();
        assert!(std::str::from_utf8(&gbk).is_err());
        let a = parse_alert(&gbk).expect("parses");
        assert_eq!(
            a.anpr.and_then(|x| x.license_plate).as_deref(),
            Some("蓝晋A&1")
        );
    }

    #[test]
    fn other_xml_and_broken_xml_are_errors() {
        assert!(matches!(
            parse_alert(b"<ResponseStatus><statusCode>1</statusCode></ResponseStatus>"),
            Err(HikError::NotAnAlert(_))
        ));
        assert!(matches!(parse_alert(b""), Err(HikError::Empty)));
        assert!(matches!(parse_alert(b"   "), Err(HikError::Empty)));
        assert!(parse_alert(b"{\"AlarmInfoPlate\":{}}").is_err());
        assert!(matches!(
            parse_alert(b"<EventNotificationAlert><eventType>ANPR</eventType>"),
            Err(HikError::NotXml(_))
        ));
        assert!(matches!(
            parse_alert(b"<EventNotificationAlert><a></b></EventNotificationAlert>"),
            Err(HikError::NotXml(_))
        ));
        let deep = format!(
            "<EventNotificationAlert>{}{}</EventNotificationAlert>",
            "<a>".repeat(100),
            "</a>".repeat(100)
        );
        assert!(matches!(
            parse_alert(deep.as_bytes()),
            Err(HikError::TooDeep)
        ));
    }

    #[test]
    fn every_truncation_of_an_alert_is_an_error_not_a_panic() {
        let bytes = ANPR.as_bytes();
        for cut in 0..bytes.len() {
            assert!(parse_alert(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn leading_colour_words_are_stripped_but_heilongjiang_stays() {
        let cases = [
            ("蓝晋A12345", Some("晋A12345"), Some("蓝")),
            ("黄晋A7Q321", Some("晋A7Q321"), Some("黄")),
            ("白WJ12345", Some("WJ12345"), Some("白")),
            ("绿晋AD12345", Some("晋AD12345"), Some("绿")),
            ("渐变绿晋AD12345", Some("晋AD12345"), Some("绿")),
            ("黄绿晋A12345D", Some("晋A12345D"), Some("黄绿")),
            ("黑黑A12345", Some("黑A12345"), Some("黑")),
            ("黑A12345", Some("黑A12345"), None),
            ("晋A12345", Some("晋A12345"), None),
            ("无车牌", None, None),
            ("蓝", None, Some("蓝")),
            ("", None, None),
        ];
        for (raw, plate, color) in cases {
            let (p, c) = split_plate(raw);
            assert_eq!((p.as_deref(), c), (plate, color), "{raw}");
        }
    }

    #[test]
    fn english_plate_colours_become_chinese_words() {
        for (en, zh) in [
            ("blue", Some("蓝")),
            ("Yellow", Some("黄")),
            ("white", Some("白")),
            ("black", Some("黑")),
            ("green", Some("绿")),
            ("newEnergyGreen", Some("绿")),
            ("yellowGreen", Some("黄绿")),
            ("yellow-green", Some("黄绿")),
            ("other", None),
            ("", None),
        ] {
            assert_eq!(color_word(en), zh, "{en}");
        }
    }

    #[test]
    fn vehicle_types_map_to_car_styles() {
        for (t, s) in [
            ("truck", CarStyle::Truck),
            ("heavyTruck", CarStyle::Truck),
            ("pickupTruck", CarStyle::Truck),
            ("bus", CarStyle::Large),
            ("largeBus", CarStyle::Large),
            ("mediumBus", CarStyle::Large),
            ("minibus", CarStyle::Car),
            ("vehicle", CarStyle::Car),
            ("SUVMPV", CarStyle::Car),
            ("2", CarStyle::Truck),
            ("1", CarStyle::Large),
            ("3", CarStyle::Car),
            ("", CarStyle::Car),
        ] {
            assert_eq!(style_of(t), s, "{t}");
        }
    }

    #[test]
    fn date_times_with_an_offset_are_instants_and_without_are_lot_local() {
        let tz = chrono_tz::Asia::Shanghai;
        // 2026-11-28 00:15:30 UTC.
        let want = 1_795_824_930_000;
        for t in [
            "2026-11-28T08:15:30+08:00",
            "2026-11-28T00:15:30Z",
            "2026-11-28T08:15:30+0800",
            "2026-11-28T09:15:30+09:00",
            "2026-11-28T08:15:30",
            "2026-11-28 08:15:30",
        ] {
            assert_eq!(parse_date_time(t, tz), Some(want), "{t}");
        }
        assert_eq!(
            parse_date_time("2026-11-28T08:15:30.250+08:00", tz),
            Some(want + 250)
        );
        assert_eq!(parse_date_time("yesterday", tz), None);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_alert(&bytes);
            let text = String::from_utf8_lossy(&bytes);
            let _ = split_plate(&text);
            let _ = parse_date_time(&text, chrono_tz::Asia::Shanghai);
        }

        #[test]
        fn arbitrary_text_in_every_field_never_panics(v in ".{0,40}") {
            let esc = v.replace('&', "&amp;").replace('<', "&lt;");
            let xml = format!("<EventNotificationAlert><eventType>{esc}</eventType><dateTime>{esc}</dateTime>\
                <ANPR><licensePlate>{esc}</licensePlate><plateColor>{esc}</plateColor><vehicleType>{esc}</vehicleType></ANPR></EventNotificationAlert>");
            let a = parse_alert(xml.as_bytes());
            prop_assert!(a.is_ok());
        }
    }
}
