//! The device sections of the configuration: `[mqtt]`, `[[camera]]` and `[[loop]]`, as
//! written (`Raw*`) and validated. Validation is pure, like the rest of [`super::validate`],
//! and reports every problem with its key: `camera.2.port` is the second `[[camera]]`
//! table's `port` (1-based, as a person counts them in the file).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use lotlink_drivers::codec::{LineEnding, LineField, LineFormat, TextEncoding};
use lotlink_drivers::http::{HttpSettings, IpNet, PushFormat, CAMERA_SILENCE};
use lotlink_drivers::loops::{BusTarget, LoopMode, Register};
use lotlink_drivers::mqtt::CameraFormat;
use lotlink_drivers::serial::CameraFraming;
use lotlink_drivers::{CarStyle, Direction};
use serde::Deserialize;

use super::{parse_duration, parse_size, Collector, Secret};

/// `[mqtt]`: the site broker the MQTT cameras and loops use.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMqtt {
    /// `mqtt://host:port` (default port 1883) or `mqtts://host:port` (TLS, default 8883).
    pub url: String,
    /// Client id; must be stable so the broker keeps the session (and un-acked messages).
    pub client_id: Option<String>,
    /// Optional user name.
    pub username: Option<String>,
    /// Optional password; never logged.
    pub password: Option<Secret>,
    /// Largest MQTT packet accepted/sent, e.g. "1MiB" (camera messages carry images).
    #[serde(default = "d_1mib")]
    pub max_packet: String,
    /// PEM file with the CA that signed the broker's certificate (mqtts only; optional:
    /// the system's roots are used otherwise).
    pub ca_file: Option<PathBuf>,
    /// MQTT keep-alive, e.g. "30s".
    #[serde(default = "d_30s")]
    pub keep_alive: String,
}

/// One `[[camera]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCamera {
    /// Lane name; becomes `nodeName` (≤ 20 characters, unique).
    pub name: String,
    /// "in" | "out": what a pass at this lane means.
    pub direction: String,
    /// "mqtt" | "serial" | "http" (the camera POSTs to the `[http]` listener).
    pub driver: String,
    /// mqtt: "vzenith" (default) | "json". http: "vzenith" | "hikvision" (required).
    pub format: Option<String>,
    /// mqtt vzenith: only this camera's messages (its serial number). Absent = any camera.
    /// http: the Vzenith `serialno`, or the Hikvision `deviceID` or MAC address, every
    /// request on this camera's path must carry. Absent = not checked.
    pub sn: Option<String>,
    /// http: the URL path the camera is set to POST to, e.g. "/push/entry1" (unique).
    pub path: Option<String>,
    /// http vzenith: "open" answers every pass with `"info": "ok"`, which makes the camera
    /// open its barrier; "none" (default): lotlink never opens barriers.
    pub gate: Option<String>,
    /// mqtt json: the topic the camera publishes to.
    pub topic: Option<String>,
    /// serial: the device path (prefer `/dev/serial/by-id/…`).
    pub port: Option<String>,
    /// serial: baud rate, default 9600.
    pub baud: Option<i64>,
    /// serial: "line" (default) | "vz".
    pub framing: Option<String>,
    /// serial: "gbk" (default) | "utf-8".
    pub encoding: Option<String>,
    /// serial line framing: field order; names "direction", "plate", "color", "time",
    /// "style", "_" (skip).
    pub fields: Option<Vec<String>>,
    /// serial line framing: field separator, default ",".
    pub separator: Option<String>,
    /// serial line framing: "crlf" (default) | "lf" | "cr".
    pub line_ending: Option<String>,
    /// serial line framing: longest accepted line in bytes, default 1024.
    pub max_line: Option<i64>,
    /// Optional: fetch an image from this URL when an event has none.
    pub snapshot_url: Option<String>,
    /// Timeout of the snapshot fetch, default "2s".
    pub snapshot_timeout: Option<String>,
    /// The camera's vehicle or plate type → `carStyle` ("0" car, "1" large, "2" truck), e.g.
    /// `{ "3" = "2", "4" = "2" }` for Vzenith plate types; looked up before the default
    /// mapping.
    pub styles: Option<BTreeMap<String, StyleValue>>,
    /// How far ahead of the gateway's clock a capture time may be before the camera's clock
    /// is taken as wrong (then the receipt time is sent), default "5m".
    pub max_camera_skew: Option<String>,
}

/// A `styles` value: `"2"` or `2`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StyleValue {
    /// Written as a string.
    Text(String),
    /// Written as a number.
    Number(i64),
}

/// One `[[loop]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLoop {
    /// Loop name (unique), used in logs and status.
    pub name: String,
    /// "in": a pass adds an occupied space; "out": a pass frees one.
    pub lane: String,
    /// "modbus" | "serial" (ASCII detector) | "mqtt" (camera IO input, Vzenith `gpio_in`).
    pub driver: String,
    /// modbus RTU / serial: the device path.
    pub port: Option<String>,
    /// modbus RTU / serial: baud rate, default 9600.
    pub baud: Option<i64>,
    /// modbus TCP: "host:port" (instead of `port`).
    pub host: Option<String>,
    /// modbus: slave id 1..=247, default 1.
    pub slave: Option<i64>,
    /// modbus: "discrete_input" (default) | "coil" | "input_register" | "holding_register".
    pub register: Option<String>,
    /// modbus: register/input address (0..=65535), e.g. 0x20.
    pub address: Option<i64>,
    /// modbus / mqtt: the input reads 0 when the loop is occupied. Default false.
    pub active_low: Option<bool>,
    /// modbus: "edge" (default; count release edges) | "counter" (a counter register).
    pub mode: Option<String>,
    /// modbus counter mode: 16 (default) or 32 bits.
    pub counter_bits: Option<i64>,
    /// modbus: time between polls, default "50ms".
    pub poll_interval: Option<String>,
    /// edge logic: ignore closures shorter than this, default "200ms".
    pub min_hold: Option<String>,
    /// modbus: timeout of one request, default "500ms".
    pub timeout: Option<String>,
    /// serial ASCII detector: "verify" (default) | "ignore" the frame checksum.
    pub checksum: Option<String>,
    /// serial ASCII detector: only frames of this channel (`CC`). Absent = any.
    pub channel: Option<i64>,
    /// serial ASCII detector: only frames of this detector id (`DD`). Absent = any.
    pub detector: Option<i64>,
    /// mqtt: the camera's serial number. Absent = any camera.
    pub sn: Option<String>,
    /// mqtt: the camera's IO input index (`TriggerResult.source`).
    pub input: Option<i64>,
}

/// `[http]`: the listener cameras POST their results to. Started when any camera has
/// `driver = "http"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    /// "address:port" to listen on, default "0.0.0.0:8088" (cameras are on the lot LAN).
    #[serde(default = "d_http_listen")]
    pub listen: String,
    /// Largest request body, default "8MiB"; larger bodies get 413 and count as bad input.
    #[serde(default = "d_8mib")]
    pub max_body: String,
    /// Optional: only these camera addresses or networks ("192.168.1.0/24",
    /// "192.168.1.64"); others get 403. Absent = any address.
    pub allow: Option<Vec<String>>,
    /// Time a camera has to send a request's headers, and then its body, default "15s".
    #[serde(default = "d_15s")]
    pub read_timeout: String,
    /// Connections served at once, default 64; one more is answered 503 and closed.
    #[serde(default = "d_64")]
    pub max_connections: i64,
}

impl Default for RawHttp {
    fn default() -> Self {
        RawHttp {
            listen: d_http_listen(),
            max_body: d_8mib(),
            allow: None,
            read_timeout: d_15s(),
            max_connections: d_64(),
        }
    }
}

fn d_http_listen() -> String {
    "0.0.0.0:8088".into()
}
fn d_8mib() -> String {
    "8MiB".into()
}
fn d_15s() -> String {
    "15s".into()
}
fn d_64() -> i64 {
    64
}

fn d_1mib() -> String {
    "1MiB".into()
}
fn d_30s() -> String {
    "30s".into()
}

/// Validated `[mqtt]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttConfig {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// `mqtts://`.
    pub tls: bool,
    /// Client id (stable).
    pub client_id: String,
    /// User name.
    pub username: Option<String>,
    /// Password (secret).
    pub password: Option<Secret>,
    /// Largest packet, bytes.
    pub max_packet: usize,
    /// CA file for TLS.
    pub ca_file: Option<PathBuf>,
    /// Keep-alive.
    pub keep_alive: Duration,
}

/// Where a camera's events come from, in the drivers' own terms (no mirror of them here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CameraSource {
    /// Over the site MQTT broker.
    Mqtt(CameraFormat),
    /// Over a serial port.
    Serial {
        port: String,
        baud: u32,
        framing: CameraFraming,
    },
    /// POSTs to the `[http]` listener.
    Http {
        format: PushFormat,
        /// URL path, starts with `/`, unique.
        path: String,
        /// Identity every request must carry (serialno / deviceID / MAC).
        sn: Option<String>,
        /// Vzenith: answer `"info": "ok"` for every pass.
        gate_open: bool,
    },
}

/// A validated `[[camera]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CameraConfig {
    pub name: String,
    pub direction: Direction,
    pub source: CameraSource,
    pub snapshot_url: Option<String>,
    pub snapshot_timeout: Duration,
    /// Camera type → `carStyle` overrides, in file order.
    pub styles: Vec<(String, CarStyle)>,
    /// Largest accepted lead of a capture time over the gateway's clock.
    pub max_camera_skew: Duration,
}

/// Where a loop's passes come from.
#[derive(Debug, Clone, PartialEq)]
pub enum LoopSource {
    Modbus {
        target: BusTarget,
        slave: u8,
        register: Register,
        address: u16,
        active_low: bool,
        mode: LoopMode,
        poll_interval: Duration,
        timeout: Duration,
    },
    /// ASCII serial detector.
    Serial {
        port: String,
        baud: u32,
        verify_checksum: bool,
        channel: Option<u8>,
        detector: Option<u8>,
    },
    /// Vzenith camera IO input.
    Mqtt {
        sn: Option<String>,
        input: u32,
        active_low: bool,
    },
}

/// A validated `[[loop]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoopConfig {
    pub name: String,
    pub lane: Direction,
    pub min_hold: Duration,
    pub source: LoopSource,
}

/// The validated device sections.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Devices {
    pub mqtt: Option<MqttConfig>,
    /// The camera listener; `Some` when any camera has `driver = "http"`.
    pub http: Option<HttpSettings>,
    pub cameras: Vec<CameraConfig>,
    pub loops: Vec<LoopConfig>,
}

fn direction(c: &mut Collector, key: &str, v: &str) -> Option<Direction> {
    match v {
        "in" => Some(Direction::In),
        "out" => Some(Direction::Out),
        other => {
            c.bad(key, format!("{other:?}: allowed are \"in\", \"out\""));
            None
        }
    }
}

fn choice<T: Copy>(
    c: &mut Collector,
    key: &str,
    v: Option<&str>,
    default: T,
    allowed: &[(&str, T)],
) -> Option<T> {
    let Some(v) = v else { return Some(default) };
    if let Some((_, t)) = allowed.iter().find(|(n, _)| *n == v) {
        return Some(*t);
    }
    let names: Vec<String> = allowed.iter().map(|(n, _)| format!("{n:?}")).collect();
    c.bad(key, format!("{v:?}: allowed are {}", names.join(", ")));
    None
}

fn ranged(
    c: &mut Collector,
    key: &str,
    v: Option<i64>,
    default: i64,
    lo: i64,
    hi: i64,
) -> Option<i64> {
    let v = v.unwrap_or(default);
    if (lo..=hi).contains(&v) {
        Some(v)
    } else {
        c.bad(key, format!("{v} is not allowed: {lo}..={hi}"));
        None
    }
}

fn duration_in(
    c: &mut Collector,
    key: &str,
    v: Option<&str>,
    default: Duration,
    lo: Duration,
    hi: Duration,
) -> Option<Duration> {
    let d = match v {
        None => default,
        Some(s) => c.take(key, parse_duration(s))?,
    };
    if d < lo || d > hi {
        c.bad(
            key,
            format!(
                "{} is not allowed: {}..={}",
                humantime::format_duration(d),
                humantime::format_duration(lo),
                humantime::format_duration(hi)
            ),
        );
        return None;
    }
    Some(d)
}

fn baud(c: &mut Collector, key: &str, v: Option<i64>) -> Option<u32> {
    ranged(c, key, v, 9600, 300, 4_000_000).and_then(|b| u32::try_from(b).ok())
}

/// Keys that only some drivers use: giving one to another driver is a mistake worth saying.
fn not_for(c: &mut Collector, key: &str, given: bool, what: &str) {
    if given {
        c.bad(key, format!("does not apply here: {what}"));
    }
}

fn validate_mqtt(c: &mut Collector, m: &RawMqtt, lot_code: &str) -> Option<MqttConfig> {
    let (tls, rest) = if let Some(r) = m.url.strip_prefix("mqtt://") {
        (false, r)
    } else if let Some(r) = m.url.strip_prefix("mqtts://") {
        (true, r)
    } else {
        c.bad(
            "mqtt.url",
            format!("{:?} must start with mqtt:// or mqtts://", m.url),
        );
        return None;
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => match p.parse::<u16>() {
            Ok(p) if p > 0 => (h.to_string(), p),
            _ => {
                c.bad("mqtt.url", format!("{p:?} is not a port number"));
                return None;
            }
        },
        None => (rest.to_string(), if tls { 8883 } else { 1883 }),
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if host.is_empty() || host.contains('/') || host.contains('@') {
        c.bad(
            "mqtt.url",
            format!(
                "{:?}: write mqtt://host:port (credentials go in username/password)",
                m.url
            ),
        );
        return None;
    }
    let client_id = m
        .client_id
        .clone()
        .unwrap_or_else(|| format!("lotlink-{lot_code}"));
    if client_id.trim().is_empty() || client_id.len() > 64 {
        c.bad(
            "mqtt.client_id",
            "must be 1..=64 bytes and stable (the broker keeps the session under it)",
        );
    }
    let max_packet = c
        .take("mqtt.max_packet", parse_size(&m.max_packet))
        .and_then(|b| {
            if (16 * 1024..=256 << 20).contains(&b) {
                usize::try_from(b).ok()
            } else {
                c.bad(
                    "mqtt.max_packet",
                    "must be between 16KiB and 256MiB (camera messages with images need ~1MiB)",
                );
                None
            }
        });
    let keep_alive = duration_in(
        c,
        "mqtt.keep_alive",
        Some(&m.keep_alive),
        Duration::from_secs(30),
        Duration::from_secs(5),
        Duration::from_secs(3600),
    );
    if m.ca_file.is_some() && !tls {
        c.bad("mqtt.ca_file", "only applies to mqtts:// URLs");
    }
    Some(MqttConfig {
        host,
        port,
        tls,
        client_id,
        username: m.username.clone().filter(|u| !u.is_empty()),
        password: m.password.clone().filter(|p| !p.expose().is_empty()),
        max_packet: max_packet?,
        ca_file: m.ca_file.clone(),
        keep_alive: keep_alive?,
    })
}

const FIELD_NAMES: [&str; 6] = ["direction", "plate", "color", "time", "style", "_"];

/// The `styles` table: every value a `carStyle` code; with `numeric`, every key a whole
/// number (Vzenith plate types).
fn styles(
    c: &mut Collector,
    key: &str,
    raw: Option<&BTreeMap<String, StyleValue>>,
    numeric: bool,
) -> Option<Vec<(String, CarStyle)>> {
    let mut out = Vec::new();
    let mut ok = true;
    for (k, v) in raw.into_iter().flatten() {
        let code = match v {
            StyleValue::Text(t) => t.trim().to_string(),
            StyleValue::Number(n) => n.to_string(),
        };
        let style = match code.as_str() {
            "0" => CarStyle::Car,
            "1" => CarStyle::Large,
            "2" => CarStyle::Truck,
            other => {
                c.bad(
                    key,
                    format!("{k:?} = {other:?}: a carStyle is \"0\" (car), \"1\" (large vehicle) or \"2\" (truck)"),
                );
                ok = false;
                continue;
            }
        };
        let k = k.trim();
        if k.is_empty() || k.chars().count() > 32 {
            c.bad(key, format!("{k:?}: a camera type is 1..=32 characters"));
            ok = false;
        } else if numeric && k.parse::<u32>().is_err() {
            c.bad(
                key,
                format!("{k:?}: Vzenith cameras send plate types as numbers (e.g. \"4\" = double-row yellow)"),
            );
            ok = false;
        } else {
            out.push((k.to_string(), style));
        }
    }
    ok.then_some(out)
}

#[allow(clippy::too_many_lines)]
fn validate_camera(
    c: &mut Collector,
    i: usize,
    cam: &RawCamera,
    have_mqtt: bool,
) -> Option<CameraConfig> {
    let k = |f: &str| format!("camera.{i}.{f}");
    let name = cam.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 20 {
        c.bad(
            &k("name"),
            "must be 1..=20 characters (it becomes nodeName)",
        );
    }
    let dir = direction(c, &k("direction"), &cam.direction);
    let snapshot_url = cam.snapshot_url.clone();
    if let Some(u) = &snapshot_url {
        if !(u.starts_with("http://") || u.starts_with("https://"))
            || reqwest::Url::parse(u).is_err()
        {
            c.bad(&k("snapshot_url"), format!("{u:?} is not an http(s) URL"));
        }
    }
    let snapshot_timeout = duration_in(
        c,
        &k("snapshot_timeout"),
        cam.snapshot_timeout.as_deref(),
        Duration::from_secs(2),
        Duration::from_millis(100),
        Duration::from_secs(30),
    );
    let serial_keys = [
        ("port", cam.port.is_some()),
        ("baud", cam.baud.is_some()),
        ("framing", cam.framing.is_some()),
        ("encoding", cam.encoding.is_some()),
        ("fields", cam.fields.is_some()),
        ("separator", cam.separator.is_some()),
        ("line_ending", cam.line_ending.is_some()),
        ("max_line", cam.max_line.is_some()),
    ];
    let http_keys = [("path", cam.path.is_some()), ("gate", cam.gate.is_some())];
    let source = match cam.driver.as_str() {
        "mqtt" => {
            for (f, given) in serial_keys {
                not_for(c, &k(f), given, "serial cameras only");
            }
            for (f, given) in http_keys {
                not_for(c, &k(f), given, "http cameras only");
            }
            if !have_mqtt {
                c.bad(&k("driver"), "driver = \"mqtt\" needs an [mqtt] section");
            }
            match cam.format.as_deref().unwrap_or("vzenith") {
                "vzenith" => {
                    not_for(
                        c,
                        &k("topic"),
                        cam.topic.is_some(),
                        "format = \"json\" only (vzenith topics are fixed)",
                    );
                    Some(CameraSource::Mqtt(CameraFormat::Vzenith {
                        sn: cam.sn.clone().filter(|s| !s.is_empty()),
                    }))
                }
                "json" => {
                    not_for(c, &k("sn"), cam.sn.is_some(), "format = \"vzenith\" only");
                    match cam.topic.as_deref() {
                        Some(t) if !t.is_empty() && !t.contains(['+', '#']) => {
                            Some(CameraSource::Mqtt(CameraFormat::Json {
                                topic: t.to_string(),
                            }))
                        }
                        Some(t) => {
                            c.bad(
                                &k("topic"),
                                format!("{t:?}: a plain topic without wildcards"),
                            );
                            None
                        }
                        None => {
                            c.bad(
                                &k("topic"),
                                "missing: format = \"json\" needs the camera's topic",
                            );
                            None
                        }
                    }
                }
                other => {
                    c.bad(
                        &k("format"),
                        format!("{other:?}: allowed are \"vzenith\", \"json\""),
                    );
                    None
                }
            }
        }
        "serial" => {
            not_for(
                c,
                &k("format"),
                cam.format.is_some(),
                "mqtt cameras only (serial uses `framing`)",
            );
            not_for(c, &k("sn"), cam.sn.is_some(), "mqtt and http cameras only");
            not_for(c, &k("topic"), cam.topic.is_some(), "mqtt cameras only");
            for (f, given) in http_keys {
                not_for(c, &k(f), given, "http cameras only");
            }
            let port = cam.port.clone().filter(|p| !p.is_empty());
            if port.is_none() {
                c.bad(
                    &k("port"),
                    "missing: the serial device, e.g. \"/dev/serial/by-id/usb-…\"",
                );
            }
            let baud = baud(c, &k("baud"), cam.baud);
            let vz = choice(
                c,
                &k("framing"),
                cam.framing.as_deref(),
                false,
                &[("line", false), ("vz", true)],
            );
            let encoding = choice(
                c,
                &k("encoding"),
                cam.encoding.as_deref(),
                TextEncoding::Gbk,
                &[
                    ("gbk", TextEncoding::Gbk),
                    ("utf-8", TextEncoding::Utf8),
                    ("utf8", TextEncoding::Utf8),
                ],
            );
            let ending = choice(
                c,
                &k("line_ending"),
                cam.line_ending.as_deref(),
                LineEnding::Lf,
                &[
                    ("crlf", LineEnding::Lf),
                    ("lf", LineEnding::Lf),
                    ("cr", LineEnding::Cr),
                ],
            );
            let fields = cam.fields.clone().unwrap_or_else(|| {
                ["direction", "plate", "color", "time"]
                    .map(String::from)
                    .to_vec()
            });
            if let Some(bad) = fields.iter().find(|f| !FIELD_NAMES.contains(&f.as_str())) {
                c.bad(
                    &k("fields"),
                    format!("{bad:?}: allowed names are \"direction\", \"plate\", \"color\", \"time\", \"style\", \"_\" (skip)"),
                );
            } else if !fields.iter().any(|f| f == "plate") {
                c.bad(&k("fields"), "must contain \"plate\"");
            } else if let Some(dup) = fields
                .iter()
                .filter(|f| *f != "_")
                .find(|f| fields.iter().filter(|g| g == f).count() > 1)
            {
                c.bad(&k("fields"), format!("{dup:?} appears twice"));
            }
            let separator = cam.separator.clone().unwrap_or_else(|| ",".into());
            if separator.is_empty() || separator.contains(['\r', '\n']) {
                c.bad(
                    &k("separator"),
                    "must be a non-empty string without line breaks",
                );
            }
            let max_line = ranged(c, &k("max_line"), cam.max_line, 1024, 16, 65_536)
                .and_then(|v| usize::try_from(v).ok());
            match (port, baud, vz, encoding, ending, max_line) {
                (Some(port), Some(baud), Some(true), Some(_), Some(_), Some(_)) => {
                    Some(CameraSource::Serial {
                        port,
                        baud,
                        framing: CameraFraming::Vz,
                    })
                }
                (
                    Some(port),
                    Some(baud),
                    Some(false),
                    Some(encoding),
                    Some(ending),
                    Some(max_line),
                ) => Some(CameraSource::Serial {
                    port,
                    baud,
                    framing: CameraFraming::Line {
                        encoding,
                        ending,
                        max_line,
                        format: LineFormat {
                            // Checked above: every name parses.
                            fields: fields
                                .iter()
                                .filter_map(|f| LineField::parse(f).ok())
                                .collect(),
                            separator,
                        },
                    },
                }),
                _ => None,
            }
        }
        "http" => validate_http_camera(c, i, cam, serial_keys),
        other => {
            c.bad(
                &k("driver"),
                format!("{other:?}: allowed are \"mqtt\", \"serial\", \"http\""),
            );
            None
        }
    };
    let numeric_types = matches!(
        source,
        Some(
            CameraSource::Mqtt(CameraFormat::Vzenith { .. })
                | CameraSource::Serial {
                    framing: CameraFraming::Vz,
                    ..
                }
        )
    );
    let styles = styles(c, &k("styles"), cam.styles.as_ref(), numeric_types);
    let max_camera_skew = duration_in(
        c,
        &k("max_camera_skew"),
        cam.max_camera_skew.as_deref(),
        lotlink_drivers::plate::DEFAULT_MAX_SKEW,
        Duration::from_secs(1),
        Duration::from_secs(24 * 3600),
    );
    Some(CameraConfig {
        name,
        direction: dir?,
        source: source?,
        snapshot_url,
        snapshot_timeout: snapshot_timeout?,
        styles: styles?,
        max_camera_skew: max_camera_skew?,
    })
}

/// The `driver = "http"` keys of camera `i`.
fn validate_http_camera(
    c: &mut Collector,
    i: usize,
    cam: &RawCamera,
    serial_keys: [(&str, bool); 8],
) -> Option<CameraSource> {
    let k = |f: &str| format!("camera.{i}.{f}");
    for (f, given) in serial_keys {
        not_for(c, &k(f), given, "serial cameras only");
    }
    not_for(c, &k("topic"), cam.topic.is_some(), "mqtt cameras only");
    let format = match cam.format.as_deref() {
        Some("vzenith") => Some(PushFormat::Vzenith),
        Some("hikvision") => Some(PushFormat::Hikvision),
        Some(other) => {
            c.bad(
                &k("format"),
                format!("{other:?}: allowed are \"vzenith\", \"hikvision\""),
            );
            None
        }
        None => {
            c.bad(
                &k("format"),
                "missing: what the camera posts, \"vzenith\" or \"hikvision\"",
            );
            None
        }
    };
    let path = match cam.path.as_deref() {
        None => {
            c.bad(
                &k("path"),
                "missing: the URL path the camera posts to, e.g. \"/push/entry1\"",
            );
            None
        }
        Some(p) if !p.starts_with('/') => {
            c.bad(&k("path"), format!("{p:?} must start with \"/\""));
            None
        }
        Some(p)
            if p.len() > 200
                || p.chars()
                    .any(|ch| ch.is_whitespace() || ch.is_control() || matches!(ch, '?' | '#')) =>
        {
            c.bad(
                &k("path"),
                format!("{p:?}: a plain path of at most 200 bytes, without spaces, `?` or `#`"),
            );
            None
        }
        Some(p) => Some(p.to_string()),
    };
    let gate_open = choice(
        c,
        &k("gate"),
        cam.gate.as_deref(),
        false,
        &[("none", false), ("open", true)],
    );
    if gate_open == Some(true) && format == Some(PushFormat::Hikvision) {
        c.bad(
            &k("gate"),
            "format = \"vzenith\" only (a Hikvision camera's barrier is not opened by the reply)",
        );
    }
    Some(CameraSource::Http {
        format: format?,
        path: path?,
        sn: cam.sn.clone().filter(|s| !s.trim().is_empty()),
        gate_open: gate_open?,
    })
}

fn validate_http(c: &mut Collector, h: &RawHttp) -> Option<HttpSettings> {
    let listen = match h.listen.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            c.bad(
                "http.listen",
                format!(
                    "{:?} is not an address:port such as \"0.0.0.0:8088\"",
                    h.listen
                ),
            );
            None
        }
    };
    let max_body = c
        .take("http.max_body", parse_size(&h.max_body))
        .and_then(|b| {
            if (64 * 1024..=64 << 20).contains(&b) {
                usize::try_from(b).ok()
            } else {
                c.bad(
                    "http.max_body",
                    "must be between 64KiB and 64MiB (a result with two pictures is about 1MiB)",
                );
                None
            }
        });
    let mut allow = Vec::new();
    for a in h.allow.iter().flatten() {
        let t = a.trim();
        match t
            .parse::<IpNet>()
            .or_else(|_| t.parse::<std::net::IpAddr>().map(IpNet::from))
        {
            Ok(n) => allow.push(n.trunc()),
            Err(_) => c.bad(
                "http.allow",
                format!("{a:?} is not an address or a network such as \"192.168.1.0/24\""),
            ),
        }
    }
    if h.allow.as_ref().is_some_and(Vec::is_empty) {
        c.bad(
            "http.allow",
            "an empty list would refuse every camera: leave `allow` out to take any address",
        );
    }
    let read_timeout = duration_in(
        c,
        "http.read_timeout",
        Some(&h.read_timeout),
        Duration::from_secs(15),
        Duration::from_millis(100),
        Duration::from_secs(300),
    );
    let max_connections = ranged(
        c,
        "http.max_connections",
        Some(h.max_connections),
        64,
        1,
        4096,
    )
    .and_then(|n| usize::try_from(n).ok());
    Some(HttpSettings {
        listen: listen?,
        max_body: max_body?,
        allow,
        read_timeout: read_timeout?,
        max_connections: max_connections?,
        silence: CAMERA_SILENCE,
    })
}

// `c` (collector), `k` (key) and `l` (the loop) are used on almost every line.
#[allow(clippy::too_many_lines, clippy::many_single_char_names)]
fn validate_loop(c: &mut Collector, i: usize, l: &RawLoop, have_mqtt: bool) -> Option<LoopConfig> {
    let k = |f: &str| format!("loop.{i}.{f}");
    let name = l.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 40 {
        c.bad(&k("name"), "must be 1..=40 characters");
    }
    let lane = direction(c, &k("lane"), &l.lane);
    let min_hold = duration_in(
        c,
        &k("min_hold"),
        l.min_hold.as_deref(),
        Duration::from_millis(200),
        Duration::ZERO,
        Duration::from_secs(60),
    );
    let modbus_only = [
        ("host", l.host.is_some()),
        ("slave", l.slave.is_some()),
        ("register", l.register.is_some()),
        ("address", l.address.is_some()),
        ("mode", l.mode.is_some()),
        ("counter_bits", l.counter_bits.is_some()),
        ("poll_interval", l.poll_interval.is_some()),
        ("timeout", l.timeout.is_some()),
    ];
    let serial_only = [
        ("checksum", l.checksum.is_some()),
        ("channel", l.channel.is_some()),
        ("detector", l.detector.is_some()),
    ];
    let mqtt_only = [("sn", l.sn.is_some()), ("input", l.input.is_some())];
    let source = match l.driver.as_str() {
        "modbus" => {
            for (f, g) in serial_only.iter().chain(&mqtt_only) {
                not_for(c, &k(f), *g, "not a modbus key");
            }
            let target = match (&l.port, &l.host) {
                (Some(p), None) if !p.is_empty() => {
                    baud(c, &k("baud"), l.baud).map(|baud| BusTarget::Rtu {
                        port: p.clone(),
                        baud,
                    })
                }
                (None, Some(h)) if h.contains(':') => {
                    not_for(
                        c,
                        &k("baud"),
                        l.baud.is_some(),
                        "modbus RTU only (not with `host`)",
                    );
                    Some(BusTarget::Tcp { host: h.clone() })
                }
                (None, Some(h)) => {
                    c.bad(
                        &k("host"),
                        format!("{h:?}: write host:port, e.g. \"127.0.0.1:502\""),
                    );
                    None
                }
                _ => {
                    c.bad(
                        &k("port"),
                        "give exactly one of `port` (Modbus RTU) and `host` (Modbus TCP)",
                    );
                    None
                }
            };
            let slave =
                ranged(c, &k("slave"), l.slave, 1, 0, 247).and_then(|v| u8::try_from(v).ok());
            let register = choice(
                c,
                &k("register"),
                l.register.as_deref(),
                Register::DiscreteInput,
                &[
                    ("discrete_input", Register::DiscreteInput),
                    ("coil", Register::Coil),
                    ("input_register", Register::InputRegister),
                    ("holding_register", Register::HoldingRegister),
                ],
            );
            let address = match l.address {
                None => {
                    c.bad(
                        &k("address"),
                        "missing: the input or register address, e.g. 0x20",
                    );
                    None
                }
                Some(a) => ranged(c, &k("address"), Some(a), 0, 0, 65_535)
                    .and_then(|v| u16::try_from(v).ok()),
            };
            let mode = match l.mode.as_deref().unwrap_or("edge") {
                "edge" => {
                    not_for(
                        c,
                        &k("counter_bits"),
                        l.counter_bits.is_some(),
                        "mode = \"counter\" only",
                    );
                    // The hold time is checked above; without it there is a problem already.
                    Some(LoopMode::Edge {
                        min_hold: min_hold.unwrap_or_default(),
                    })
                }
                "counter" => match l.counter_bits.unwrap_or(16) {
                    b @ (16 | 32) => {
                        if matches!(register, Some(Register::DiscreteInput | Register::Coil)) {
                            c.bad(
                                &k("register"),
                                "mode = \"counter\" reads input_register or holding_register",
                            );
                        }
                        u8::try_from(b).ok().map(|bits| LoopMode::Counter { bits })
                    }
                    b => {
                        c.bad(&k("counter_bits"), format!("{b}: allowed are 16, 32"));
                        None
                    }
                },
                other => {
                    c.bad(
                        &k("mode"),
                        format!("{other:?}: allowed are \"edge\", \"counter\""),
                    );
                    None
                }
            };
            let poll_interval = duration_in(
                c,
                &k("poll_interval"),
                l.poll_interval.as_deref(),
                Duration::from_millis(50),
                Duration::from_millis(10),
                Duration::from_secs(10),
            );
            let timeout = duration_in(
                c,
                &k("timeout"),
                l.timeout.as_deref(),
                Duration::from_millis(500),
                Duration::from_millis(20),
                Duration::from_secs(10),
            );
            match (
                target,
                slave,
                register,
                address,
                mode,
                poll_interval,
                timeout,
            ) {
                (
                    Some(target),
                    Some(slave),
                    Some(register),
                    Some(address),
                    Some(mode),
                    Some(poll_interval),
                    Some(timeout),
                ) => Some(LoopSource::Modbus {
                    target,
                    slave,
                    register,
                    address,
                    active_low: l.active_low.unwrap_or(false),
                    mode,
                    poll_interval,
                    timeout,
                }),
                _ => None,
            }
        }
        "serial" => {
            for (f, g) in modbus_only.iter().chain(&mqtt_only) {
                not_for(c, &k(f), *g, "not a key of serial (ASCII) detectors");
            }
            not_for(
                c,
                &k("active_low"),
                l.active_low.is_some(),
                "modbus and mqtt loops only",
            );
            let port = l.port.clone().filter(|p| !p.is_empty());
            if port.is_none() {
                c.bad(&k("port"), "missing: the serial device of the detector");
            }
            let baud = baud(c, &k("baud"), l.baud);
            let verify = choice(
                c,
                &k("checksum"),
                l.checksum.as_deref(),
                true,
                &[("verify", true), ("ignore", false)],
            );
            let channel = l
                .channel
                .and_then(|v| ranged(c, &k("channel"), Some(v), 0, 0, 99))
                .and_then(|v| u8::try_from(v).ok());
            let detector = l
                .detector
                .and_then(|v| ranged(c, &k("detector"), Some(v), 0, 0, 99))
                .and_then(|v| u8::try_from(v).ok());
            match (port, baud, verify) {
                (Some(port), Some(baud), Some(verify_checksum)) => Some(LoopSource::Serial {
                    port,
                    baud,
                    verify_checksum,
                    channel,
                    detector,
                }),
                _ => None,
            }
        }
        "mqtt" => {
            for (f, g) in modbus_only.iter().chain(&serial_only) {
                not_for(c, &k(f), *g, "not a key of mqtt (camera IO) loops");
            }
            not_for(
                c,
                &k("port"),
                l.port.is_some(),
                "modbus and serial loops only",
            );
            not_for(
                c,
                &k("baud"),
                l.baud.is_some(),
                "modbus and serial loops only",
            );
            if !have_mqtt {
                c.bad(&k("driver"), "driver = \"mqtt\" needs an [mqtt] section");
            }
            let input = match l.input {
                None => {
                    c.bad(
                        &k("input"),
                        "missing: the camera's IO input index (TriggerResult.source)",
                    );
                    None
                }
                Some(v) => {
                    ranged(c, &k("input"), Some(v), 0, 0, 255).and_then(|v| u32::try_from(v).ok())
                }
            };
            input.map(|input| LoopSource::Mqtt {
                sn: l.sn.clone().filter(|s| !s.is_empty()),
                input,
                active_low: l.active_low.unwrap_or(false),
            })
        }
        other => {
            c.bad(
                &k("driver"),
                format!("{other:?}: allowed are \"modbus\", \"serial\", \"mqtt\""),
            );
            None
        }
    };
    Some(LoopConfig {
        name,
        lane: lane?,
        min_hold: min_hold?,
        source: source?,
    })
}

/// Validate the device sections. Problems go to `c`; the result is only meaningful when
/// `c` stayed empty.
pub(super) fn validate_devices(
    c: &mut Collector,
    mqtt: Option<&RawMqtt>,
    http: Option<&RawHttp>,
    cameras: &[RawCamera],
    loops: &[RawLoop],
    lot_code: &str,
) -> Devices {
    let mqtt = mqtt.and_then(|m| validate_mqtt(c, m, lot_code));
    let have_mqtt = mqtt.is_some();
    // Validated whenever written; started only when a camera posts to it.
    let default_http = RawHttp::default();
    let http = validate_http(c, http.unwrap_or(&default_http));
    let mut out = Devices {
        mqtt,
        http: http.filter(|_| cameras.iter().any(|cam| cam.driver == "http")),
        ..Devices::default()
    };
    let mut paths: HashMap<&str, usize> = HashMap::new();
    for (i, cam) in cameras.iter().enumerate() {
        if let (Some(p), "http") = (cam.path.as_deref(), cam.driver.as_str()) {
            if let Some(first) = paths.insert(p, i + 1) {
                c.bad(
                    &format!("camera.{}.path", i + 1),
                    format!("{p:?} is already camera {first}'s path"),
                );
            }
        }
    }
    let mut names: HashMap<String, usize> = HashMap::new();
    for (i, cam) in cameras.iter().enumerate() {
        let n = i + 1;
        if let Some(first) = names.insert(cam.name.trim().to_string(), n) {
            c.bad(
                &format!("camera.{n}.name"),
                format!("{:?} is already the name of camera {first}", cam.name),
            );
        }
        if let Some(v) = validate_camera(c, n, cam, have_mqtt) {
            out.cameras.push(v);
        }
    }
    let mut ports: HashMap<String, (usize, &str, Option<i64>)> = HashMap::new();
    for (i, cam) in cameras.iter().enumerate() {
        if let Some(p) = &cam.port {
            ports.insert(p.clone(), (i + 1, "camera", cam.baud));
        }
    }
    let mut loop_names: HashMap<String, usize> = HashMap::new();
    for (i, l) in loops.iter().enumerate() {
        let n = i + 1;
        if let Some(first) = loop_names.insert(l.name.trim().to_string(), n) {
            c.bad(
                &format!("loop.{n}.name"),
                format!("{:?} is already the name of loop {first}", l.name),
            );
        }
        // Loops may share a port with each other (one bus or one detector, several lanes),
        // never with a camera, and everyone on a port must agree on its speed and driver.
        if let Some(p) = &l.port {
            match ports.get(p) {
                Some((j, "camera", _)) => c.bad(
                    &format!("loop.{n}.port"),
                    format!("{p:?} is already camera {j}'s port"),
                ),
                Some((j, kind, b)) if *kind != l.driver.as_str() || b.unwrap_or(9600) != l.baud.unwrap_or(9600) => c.bad(
                    &format!("loop.{n}.port"),
                    format!("{p:?} is shared with loop {j}: loops on one port need the same driver and baud"),
                ),
                Some(_) => {}
                None => {
                    let kind: &str = match l.driver.as_str() {
                        "modbus" => "modbus",
                        "serial" => "serial",
                        _ => "other",
                    };
                    ports.insert(p.clone(), (n, kind, l.baud));
                }
            }
        }
        if let Some(v) = validate_loop(c, n, l, have_mqtt) {
            out.loops.push(v);
        }
    }
    let mut cam_ports: HashMap<&str, usize> = HashMap::new();
    for (i, cam) in cameras.iter().enumerate() {
        if let Some(p) = &cam.port {
            if let Some(j) = cam_ports.insert(p.as_str(), i + 1) {
                c.bad(
                    &format!("camera.{}.port", i + 1),
                    format!("{p:?} is already camera {j}'s port"),
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{from_str, ConfigError, SpaceSource};

    const BASE: &str = r#"
[platform]
url = "https://platform.example.cn"
lot_code = "350"
token = "t"

[space]
total = 500
"#;

    const DEVICES: &str = r#"
[mqtt]
url = "mqtt://127.0.0.1:1883"
max_packet = "1MiB"

[[camera]]
name = "入口1"
direction = "in"
driver = "mqtt"
sn = "a1b2c3d4-e5f60718"

[[camera]]
name = "入口2"
direction = "in"
driver = "mqtt"
format = "json"
topic = "lotlink/cam/entry2"

[[camera]]
name = "出口1"
direction = "out"
driver = "serial"
port = "/dev/ttyUSB0"
fields = ["direction", "plate", "_", "time"]
separator = "|"
snapshot_url = "http://192.168.1.64/snapshot.jpg"

[[loop]]
name = "入口地感"
lane = "in"
driver = "modbus"
port = "/dev/ttyUSB1"
address = 0x20
active_low = true

[[loop]]
name = "出口地感"
lane = "out"
driver = "modbus"
port = "/dev/ttyUSB1"
address = 0x21
active_low = true
poll_interval = "20ms"

[[loop]]
name = "计数"
lane = "in"
driver = "modbus"
host = "127.0.0.1:502"
register = "holding_register"
mode = "counter"
counter_bits = 32
address = 0x10

[[loop]]
name = "ascii"
lane = "out"
driver = "serial"
port = "/dev/ttyUSB2"
checksum = "ignore"

[[loop]]
name = "gpio"
lane = "in"
driver = "mqtt"
input = 1
"#;

    fn problems(text: &str) -> String {
        match from_str(Path::new("site.toml"), text) {
            Err(ConfigError::Invalid(e)) => e.to_string(),
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn every_device_kind_validates_with_its_defaults() {
        let c = from_str(Path::new("site.toml"), &format!("{BASE}{DEVICES}")).expect("valid");
        let d = &c.devices;
        let m = d.mqtt.as_ref().expect("mqtt");
        assert_eq!((m.host.as_str(), m.port, m.tls), ("127.0.0.1", 1883, false));
        assert_eq!(m.client_id, "lotlink-350");
        assert_eq!(m.max_packet, 1 << 20);
        assert_eq!(d.cameras.len(), 3);
        assert_eq!(
            d.cameras[0].source,
            CameraSource::Mqtt(CameraFormat::Vzenith {
                sn: Some("a1b2c3d4-e5f60718".into())
            })
        );
        match &d.cameras[2].source {
            CameraSource::Serial {
                baud,
                framing:
                    CameraFraming::Line {
                        encoding,
                        ending,
                        format,
                        ..
                    },
                ..
            } => {
                assert_eq!(*baud, 9600);
                assert_eq!(*encoding, TextEncoding::Gbk);
                assert_eq!(format.separator, "|");
                assert_eq!(*ending, LineEnding::Lf);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(d.loops.len(), 5);
        assert_eq!(d.loops[0].min_hold, Duration::from_millis(200));
        match &d.loops[2].source {
            LoopSource::Modbus {
                mode,
                register,
                target,
                ..
            } => {
                assert_eq!(*mode, LoopMode::Counter { bits: 32 });
                assert_eq!(*register, Register::HoldingRegister);
                assert_eq!(
                    *target,
                    BusTarget::Tcp {
                        host: "127.0.0.1:502".into()
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        // Loops are configured, so they move the count unless told otherwise.
        assert_eq!(c.space.source, SpaceSource::Loops);
    }

    #[test]
    fn without_loops_the_cameras_move_the_count() {
        let c = from_str(Path::new("site.toml"), BASE).expect("valid");
        assert_eq!(c.space.source, SpaceSource::Plates);
        let text = BASE.replace("total = 500", "total = 500\nsource = \"loops\"");
        assert!(problems(&text).contains("space.source"));
    }

    #[test]
    fn device_mistakes_name_the_table_the_key_and_the_line() {
        let text = format!(
            "{BASE}{}",
            r#"
[[camera]]
name = "一个非常非常非常非常非常非常长的车道名称啊"
direction = "sideways"
driver = "mqtt"

[[camera]]
name = "出口1"
direction = "out"
driver = "serial"
fields = ["plate", "speed"]
topic = "x"

[[loop]]
name = "l"
lane = "in"
driver = "modbus"
host = "no-port"
address = 70000
mode = "counter"
"#
        );
        let msg = problems(&text);
        // Line numbers point into the file: BASE has 8 lines, the first [[camera]] is line 10.
        assert!(msg.contains("site.toml:11: camera.1.name"), "{msg}");
        assert!(
            msg.contains("site.toml:12: camera.1.direction: \"sideways\""),
            "{msg}"
        );
        assert!(
            msg.contains("camera.1.driver: driver = \"mqtt\" needs an [mqtt] section"),
            "{msg}"
        );
        assert!(msg.contains("camera.2.port: missing"), "{msg}");
        assert!(msg.contains("camera.2.fields: \"speed\""), "{msg}");
        assert!(msg.contains("camera.2.topic: does not apply here"), "{msg}");
        assert!(msg.contains("loop.1.host: \"no-port\""), "{msg}");
        assert!(
            msg.contains("loop.1.address: 70000 is not allowed"),
            "{msg}"
        );
        assert!(msg.contains("loop.1.register: mode = \"counter\""), "{msg}");
    }

    #[test]
    fn camera_styles_and_clock_skew_are_read_and_checked_with_their_line() {
        let good = format!(
            "{BASE}{}",
            r#"[mqtt]
url = "mqtt://127.0.0.1:1883"

[[camera]]
name = "入口1"
direction = "in"
driver = "mqtt"
styles = { "3" = "2", "4" = 2 }
max_camera_skew = "90s"

[[camera]]
name = "出口1"
direction = "out"
driver = "serial"
port = "/dev/ttyUSB0"
fields = ["plate", "style", "time"]
styles = { "货车" = "2" }
"#
        );
        let c = from_str(Path::new("site.toml"), &good).expect("valid");
        let cams = &c.devices.cameras;
        assert_eq!(
            cams[0].styles,
            vec![
                ("3".to_string(), CarStyle::Truck),
                ("4".to_string(), CarStyle::Truck)
            ]
        );
        assert_eq!(cams[0].max_camera_skew, Duration::from_secs(90));
        assert_eq!(cams[1].styles, vec![("货车".to_string(), CarStyle::Truck)]);
        assert_eq!(
            cams[1].max_camera_skew,
            Duration::from_secs(300),
            "the default"
        );

        let bad = format!(
            "{BASE}{}",
            r#"[mqtt]
url = "mqtt://127.0.0.1:1883"

[[camera]]
name = "入口1"
direction = "in"
driver = "mqtt"
styles = { "3" = "5" }
max_camera_skew = "2d"

[[camera]]
name = "入口2"
direction = "in"
driver = "mqtt"
styles = { "货车" = "2" }
"#
        );
        let msg = problems(&bad);
        // The first camera's `styles` is line 16 of the file.
        assert!(
            msg.contains("site.toml:16: camera.1.styles: \"3\" = \"5\": a carStyle is"),
            "{msg}"
        );
        assert!(
            msg.contains("site.toml:17: camera.1.max_camera_skew"),
            "{msg}"
        );
        assert!(
            msg.contains("camera.2.styles: \"货车\": Vzenith cameras send plate types as numbers"),
            "{msg}"
        );
    }

    #[test]
    fn loops_on_one_port_must_agree_and_cameras_cannot_share_it() {
        let text = format!(
            "{BASE}{}",
            r#"
[[camera]]
name = "c"
direction = "in"
driver = "serial"
port = "/dev/ttyUSB0"

[[loop]]
name = "a"
lane = "in"
driver = "modbus"
port = "/dev/ttyUSB0"
address = 1

[[loop]]
name = "b"
lane = "in"
driver = "modbus"
port = "/dev/ttyUSB1"
address = 1

[[loop]]
name = "b"
lane = "out"
driver = "modbus"
port = "/dev/ttyUSB1"
baud = 19200
address = 2
"#
        );
        let msg = problems(&text);
        assert!(
            msg.contains("loop.1.port: \"/dev/ttyUSB0\" is already camera 1's port"),
            "{msg}"
        );
        assert!(
            msg.contains("loop.3.name: \"b\" is already the name of loop 2"),
            "{msg}"
        );
        assert!(
            msg.contains("loop.3.port: \"/dev/ttyUSB1\" is shared with loop 2"),
            "{msg}"
        );
    }

    const HTTP: &str = r#"
[http]
listen = "0.0.0.0:8088"
max_body = "8MiB"
allow = ["192.168.1.0/24", "10.0.0.7"]

[[camera]]
name = "入口1"
direction = "in"
driver = "http"
format = "vzenith"
path = "/push/entry1"
sn = "33ae5105-d7732a0d"
gate = "open"

[[camera]]
name = "入口2"
direction = "in"
driver = "http"
format = "hikvision"
path = "/isapi/entry2"
snapshot_url = "http://192.168.1.65/ISAPI/Streaming/channels/1/picture"
"#;

    #[test]
    fn http_cameras_and_the_listener_validate() {
        let c = from_str(Path::new("site.toml"), &format!("{BASE}{HTTP}")).expect("valid");
        let h = c.devices.http.as_ref().expect("listener on");
        assert_eq!(h.listen, "0.0.0.0:8088".parse().expect("addr"));
        assert_eq!(h.max_body, 8 << 20);
        assert_eq!(h.allow.len(), 2);
        assert!(h.allow[1].contains(&"10.0.0.7".parse::<std::net::IpAddr>().expect("ip")));
        assert_eq!(h.read_timeout, Duration::from_secs(15));
        assert_eq!(h.max_connections, 64);
        assert_eq!(
            c.devices.cameras[0].source,
            CameraSource::Http {
                format: PushFormat::Vzenith,
                path: "/push/entry1".into(),
                sn: Some("33ae5105-d7732a0d".into()),
                gate_open: true,
            }
        );
        assert_eq!(
            c.devices.cameras[1].source,
            CameraSource::Http {
                format: PushFormat::Hikvision,
                path: "/isapi/entry2".into(),
                sn: None,
                gate_open: false,
            }
        );
        // Without an HTTP camera the listener is off, even when [http] is written.
        let off = from_str(
            Path::new("site.toml"),
            &format!("{BASE}[http]\nlisten = \"0.0.0.0:8088\"\n"),
        )
        .expect("valid");
        assert!(off.devices.http.is_none());
        // Without [http] an HTTP camera gets the default listener.
        let text = format!("{BASE}{HTTP}").replace("listen = \"0.0.0.0:8088\"\n", "");
        let dflt = from_str(Path::new("site.toml"), &text).expect("valid");
        assert_eq!(dflt.devices.http.map(|h| h.listen.port()), Some(8088));
    }

    #[test]
    fn http_mistakes_name_the_key_and_the_line() {
        let text = format!(
            "{BASE}{}",
            r#"
[http]
listen = "127.0.0.1:9870"
allow = ["192.168.1.0/33", "camera-1"]
read_timeout = "15s"

[[camera]]
name = "a"
direction = "in"
driver = "http"
path = "push/a"

[[camera]]
name = "b"
direction = "in"
driver = "http"
format = "hikvision"
path = "/same"
gate = "open"

[[camera]]
name = "c"
direction = "in"
driver = "http"
format = "dahua"
path = "/same"

[[camera]]
name = "d"
direction = "in"
driver = "serial"
port = "/dev/ttyUSB0"
path = "/d"
"#
        );
        let msg = problems(&text);
        // BASE has 8 lines; [http] is line 10.
        assert!(
            msg.contains(
                "site.toml:11: http.listen: 127.0.0.1:9870 is the status endpoint's address"
            ),
            "{msg}"
        );
        assert!(
            msg.contains("site.toml:12: http.allow: \"192.168.1.0/33\""),
            "{msg}"
        );
        assert!(msg.contains("http.allow: \"camera-1\""), "{msg}");
        let big = problems(&format!(
            "{BASE}{}",
            "[http]\nmax_body = \"1GiB\"\n[[camera]]\nname = \"a\"\ndirection = \"in\"\ndriver = \"http\"\nformat = \"vzenith\"\npath = \"/a\"\n"
        ));
        assert!(
            big.contains("site.toml:10: http.max_body: must be between"),
            "{big}"
        );
        assert!(msg.contains("camera.1.format: missing"), "{msg}");
        assert!(
            msg.contains("site.toml:19: camera.1.path: \"push/a\" must start with \"/\""),
            "{msg}"
        );
        assert!(
            msg.contains("camera.2.gate: format = \"vzenith\" only"),
            "{msg}"
        );
        assert!(msg.contains("camera.3.format: \"dahua\""), "{msg}");
        assert!(
            msg.contains("camera.3.path: \"/same\" is already camera 2's path"),
            "{msg}"
        );
        assert!(msg.contains("camera.4.path: does not apply here"), "{msg}");
    }

    #[test]
    fn the_mqtt_password_never_shows_in_debug_output() {
        let text =
            format!("{BASE}[mqtt]\nurl = \"mqtts://broker.lan\"\npassword = \"hunter2-猫\"\n");
        let c = from_str(Path::new("site.toml"), &text).expect("valid");
        let m = c.devices.mqtt.as_ref().expect("mqtt");
        assert_eq!(m.port, 8883);
        assert!(m.tls);
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
