//! The device sections of the configuration: `[mqtt]`, `[http]`, `[[camera]]` and
//! `[[loop]]`, as written (`Raw*`) and validated. Validation is pure, like the rest of
//! [`super::validate`], and reports every problem with its key: `camera.2.port` is the
//! second `[[camera]]` table's `port` (1-based, as a person counts them in the file).
//!
//! Each driver owns its keys and their validation (`lotlink_drivers::…::config`); here are
//! only the keys every camera or loop has, the list of drivers ([`CameraDriver`],
//! [`LoopDriver`]: adding a driver is one line there), and what spans several tables (unique
//! names, paths and ports; a broker for the MQTT drivers). The site broker (`[mqtt]`) is the
//! gateway's: the MQTT cameras and loops share it, and so does remote management.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use lotlink_drivers::config::{duration_in, parse_size, DriverConfig, KeyPath, Problems};
use lotlink_drivers::http::HttpSettings;
use lotlink_drivers::mqtt::{CameraFormat, MqttSettings};
use lotlink_drivers::serial::CameraFraming;
use lotlink_drivers::{http, loops, mqtt, serial, CarStyle, Direction};
use serde::Deserialize;

use super::tagged::{self, Tagged};
use super::{Collector, Secret};

/// `[mqtt]`: the site broker the MQTT cameras and loops use.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMqtt {
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

fn d_1mib() -> String {
    "1MiB".into()
}
fn d_30s() -> String {
    "30s".into()
}

/// `[http]`: the camera listener's keys, which the HTTP driver owns.
pub(crate) use lotlink_drivers::http::config::ListenerConfig as RawHttp;

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

impl MqttConfig {
    /// The MQTT client's settings for this broker.
    pub fn settings(&self) -> MqttSettings {
        MqttSettings {
            host: self.host.clone(),
            port: self.port,
            tls: self.tls.then(|| self.ca_file.clone()),
            client_id: self.client_id.clone(),
            username: self.username.clone(),
            password: self.password.as_ref().map(|p| p.expose().to_string()),
            max_packet: self.max_packet,
            keep_alive: self.keep_alive,
        }
    }
}

/// The drivers a `[[camera]]` or `[[loop]]` may name, each with its config struct: one
/// line per driver. Makes the raw enum (the driver's keys as written), the validated enum
/// (the driver's own settings) and the dispatch between them.
macro_rules! drivers {
    (
        $(#[$raw_doc:meta])* raw $raw:ident;
        $(#[$set_doc:meta])* settings $settings:ident;
        kind $kind:literal, context $ctx:ty;
        $( $(#[$vdoc:meta])* $variant:ident = $name:literal => $cfg:ty, )+
    ) => {
        $(#[$raw_doc])*
        #[derive(Debug)]
        pub(crate) enum $raw {
            $( $(#[$vdoc])* $variant($cfg), )+
        }

        $(#[$set_doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum $settings {
            $( $(#[$vdoc])* $variant(<$cfg as DriverConfig>::Settings), )+
        }

        impl tagged::Drivers for $raw {
            const KIND: &'static str = $kind;
            fn keys() -> Vec<(&'static str, &'static [&'static str])> {
                vec![$( ($name, tagged::keys_of::<$cfg>()), )+]
            }
            fn parse(name: &str, table: toml::Table) -> Result<Option<Self>, String> {
                match name {
                    $( $name => tagged::from_table::<$cfg>(table).map(|c| Some($raw::$variant(c))), )+
                    _ => Ok(None),
                }
            }
        }

        impl $raw {
            /// Check the driver's keys by the driver's own rules.
            fn validate(&self, at: &KeyPath, context: &$ctx, p: &mut Problems) -> Option<$settings> {
                match self {
                    $( $raw::$variant(c) => c.validate(at, context, p).map($settings::$variant), )+
                }
            }

            /// Every driver's name, quoted, for "allowed are …".
            fn allowed() -> String {
                [$( format!("{:?}", $name), )+].join(", ")
            }
        }
    };
}

drivers! {
    /// A camera driver's keys, as written.
    raw CameraDriver;
    /// Where a camera's events come from, in the drivers' own terms.
    settings CameraSource;
    kind "cameras", context ();
    /// Over the site MQTT broker.
    Mqtt = "mqtt" => mqtt::config::CameraConfig,
    /// Over a serial port.
    Serial = "serial" => serial::config::CameraConfig,
    /// POSTs to the `[http]` listener.
    Http = "http" => http::config::CameraConfig,
}

drivers! {
    /// A loop driver's keys, as written.
    raw LoopDriver;
    /// Where a loop's passes come from, in the drivers' own terms.
    settings LoopSource;
    kind "loops", context Duration;
    /// A Modbus I/O module (RTU or TCP).
    Modbus = "modbus" => loops::config::ModbusConfig,
    /// An ASCII serial detector.
    Serial = "serial" => serial::config::DetectorConfig,
    /// A Vzenith camera's IO input.
    Mqtt = "mqtt" => mqtt::config::LoopConfig,
}

/// The keys every `[[camera]]` has, whatever its driver.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CameraCommon {
    /// Lane name; becomes `nodeName` (≤ 20 characters, unique).
    pub name: String,
    /// "in" | "out": what a pass at this lane means.
    pub direction: String,
    /// "mqtt" | "serial" | "http" (the camera POSTs to the `[http]` listener); the rest
    /// of the table is that driver's keys.
    pub driver: String,
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

impl tagged::Common for CameraCommon {
    fn driver(&self) -> &str {
        &self.driver
    }
}

/// One `[[camera]]` as written.
pub(crate) type RawCamera = Tagged<CameraCommon, CameraDriver>;

/// A `styles` value: `"2"` or `2`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum StyleValue {
    /// Written as a string.
    Text(String),
    /// Written as a number.
    Number(i64),
}

/// The keys every `[[loop]]` has, whatever its driver.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoopCommon {
    /// Loop name (unique), used in logs and status.
    pub name: String,
    /// "in": a pass adds an occupied space; "out": a pass frees one.
    pub lane: String,
    /// "modbus" | "serial" (ASCII detector) | "mqtt" (camera IO input, Vzenith `gpio_in`);
    /// the rest of the table is that driver's keys.
    pub driver: String,
    /// Edge logic: ignore closures shorter than this, default "200ms".
    pub min_hold: Option<String>,
}

impl tagged::Common for LoopCommon {
    fn driver(&self) -> &str {
        &self.driver
    }
}

/// One `[[loop]]` as written.
pub(crate) type RawLoop = Tagged<LoopCommon, LoopDriver>;

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

fn direction(p: &mut Problems, key: &str, v: &str) -> Option<Direction> {
    match v {
        "in" => Some(Direction::In),
        "out" => Some(Direction::Out),
        other => {
            p.bad(key, format!("{other:?}: allowed are \"in\", \"out\""));
            None
        }
    }
}

fn validate_mqtt(p: &mut Problems, m: &RawMqtt, lot_code: &str) -> Option<MqttConfig> {
    let (tls, rest) = if let Some(r) = m.url.strip_prefix("mqtt://") {
        (false, r)
    } else if let Some(r) = m.url.strip_prefix("mqtts://") {
        (true, r)
    } else {
        p.bad(
            "mqtt.url",
            format!("{:?} must start with mqtt:// or mqtts://", m.url),
        );
        return None;
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, port)) => match port.parse::<u16>() {
            Ok(n) if n > 0 => (h.to_string(), n),
            _ => {
                p.bad("mqtt.url", format!("{port:?} is not a port number"));
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
        p.bad(
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
        p.bad(
            "mqtt.client_id",
            "must be 1..=64 bytes and stable (the broker keeps the session under it)",
        );
    }
    let max_packet = p
        .take("mqtt.max_packet", parse_size(&m.max_packet))
        .and_then(|b| {
            if (16 * 1024..=256 << 20).contains(&b) {
                usize::try_from(b).ok()
            } else {
                p.bad(
                    "mqtt.max_packet",
                    "must be between 16KiB and 256MiB (camera messages with images need ~1MiB)",
                );
                None
            }
        });
    let keep_alive = duration_in(
        p,
        "mqtt.keep_alive",
        Some(&m.keep_alive),
        Duration::from_secs(30),
        Duration::from_secs(5),
        Duration::from_secs(3600),
    );
    if m.ca_file.is_some() && !tls {
        p.bad("mqtt.ca_file", "only applies to mqtts:// URLs");
    }
    Some(MqttConfig {
        host,
        port,
        tls,
        client_id,
        username: m.username.clone().filter(|u| !u.is_empty()),
        password: m.password.clone().filter(|s| !s.expose().is_empty()),
        max_packet: max_packet?,
        ca_file: m.ca_file.clone(),
        keep_alive: keep_alive?,
    })
}

/// The `styles` table: every value a `carStyle` code; with `numeric`, every key a whole
/// number (Vzenith plate types).
fn styles(
    p: &mut Problems,
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
                p.bad(
                    key,
                    format!("{k:?} = {other:?}: a carStyle is \"0\" (car), \"1\" (large vehicle) or \"2\" (truck)"),
                );
                ok = false;
                continue;
            }
        };
        let k = k.trim();
        if k.is_empty() || k.chars().count() > 32 {
            p.bad(key, format!("{k:?}: a camera type is 1..=32 characters"));
            ok = false;
        } else if numeric && k.parse::<u32>().is_err() {
            p.bad(
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

/// Keys of other drivers in a table: each a mistake worth saying.
fn foreign_keys(p: &mut Problems, at: &KeyPath, foreign: &[(String, String)]) {
    for (key, whose) in foreign {
        p.bad(&at.key(key), format!("does not apply here: {whose}"));
    }
}

fn validate_camera(
    p: &mut Problems,
    i: usize,
    cam: &RawCamera,
    have_mqtt: bool,
) -> Option<CameraConfig> {
    let at = KeyPath::new(format!("camera.{i}"));
    let x = &cam.common;
    let name = x.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 20 {
        p.bad(
            &at.key("name"),
            "must be 1..=20 characters (it becomes nodeName)",
        );
    }
    let dir = direction(p, &at.key("direction"), &x.direction);
    let snapshot_url = x.snapshot_url.clone();
    if let Some(u) = &snapshot_url {
        if !(u.starts_with("http://") || u.starts_with("https://"))
            || reqwest::Url::parse(u).is_err()
        {
            p.bad(
                &at.key("snapshot_url"),
                format!("{u:?} is not an http(s) URL"),
            );
        }
    }
    let snapshot_timeout = duration_in(
        p,
        &at.key("snapshot_timeout"),
        x.snapshot_timeout.as_deref(),
        Duration::from_secs(2),
        Duration::from_millis(100),
        Duration::from_secs(30),
    );
    foreign_keys(p, &at, &cam.foreign);
    let source = match &cam.driver {
        None => {
            p.bad(
                &at.key("driver"),
                format!("{:?}: allowed are {}", x.driver, CameraDriver::allowed()),
            );
            None
        }
        Some(d) => {
            if matches!(d, CameraDriver::Mqtt(_)) && !have_mqtt {
                p.bad(
                    &at.key("driver"),
                    "driver = \"mqtt\" needs an [mqtt] section",
                );
            }
            d.validate(&at, &(), p)
        }
    };
    let numeric_types = matches!(
        &source,
        Some(
            CameraSource::Mqtt(CameraFormat::Vzenith { .. })
                | CameraSource::Serial(serial::config::CameraSettings {
                    framing: CameraFraming::Vz,
                    ..
                })
        )
    );
    let styles = styles(p, &at.key("styles"), x.styles.as_ref(), numeric_types);
    let max_camera_skew = duration_in(
        p,
        &at.key("max_camera_skew"),
        x.max_camera_skew.as_deref(),
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

fn validate_loop(p: &mut Problems, i: usize, l: &RawLoop, have_mqtt: bool) -> Option<LoopConfig> {
    let at = KeyPath::new(format!("loop.{i}"));
    let common = &l.common;
    let name = common.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 40 {
        p.bad(&at.key("name"), "must be 1..=40 characters");
    }
    let lane = direction(p, &at.key("lane"), &common.lane);
    let min_hold = duration_in(
        p,
        &at.key("min_hold"),
        common.min_hold.as_deref(),
        Duration::from_millis(200),
        Duration::ZERO,
        Duration::from_secs(60),
    );
    foreign_keys(p, &at, &l.foreign);
    let source = match &l.driver {
        None => {
            p.bad(
                &at.key("driver"),
                format!("{:?}: allowed are {}", common.driver, LoopDriver::allowed()),
            );
            None
        }
        Some(driver) => {
            if matches!(driver, LoopDriver::Mqtt(_)) && !have_mqtt {
                p.bad(
                    &at.key("driver"),
                    "driver = \"mqtt\" needs an [mqtt] section",
                );
            }
            // The hold time is checked above; without it there is a problem already.
            driver.validate(&at, &min_hold.unwrap_or_default(), p)
        }
    };
    Some(LoopConfig {
        name,
        lane: lane?,
        min_hold: min_hold?,
        source: source?,
    })
}

/// The serial port and baud a camera's or loop's keys name, for the sharing checks.
fn camera_port(cam: &RawCamera) -> Option<(&str, Option<i64>)> {
    match &cam.driver {
        Some(CameraDriver::Serial(s)) => s.port.as_deref().map(|p| (p, s.baud)),
        _ => None,
    }
}

fn loop_port(l: &RawLoop) -> Option<(&str, &'static str, Option<i64>)> {
    match &l.driver {
        Some(LoopDriver::Modbus(m)) => m.port.as_deref().map(|p| (p, "modbus", m.baud)),
        Some(LoopDriver::Serial(s)) => s.port.as_deref().map(|p| (p, "serial", s.baud)),
        _ => None,
    }
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
    let mut problems = Problems::default();
    let mqtt = mqtt.and_then(|m| validate_mqtt(&mut problems, m, lot_code));
    let have_mqtt = mqtt.is_some();
    // Validated whenever written; started only when a camera posts to it.
    let default_http = RawHttp::default();
    let http = http
        .unwrap_or(&default_http)
        .validate(&KeyPath::new("http"), &(), &mut problems);
    let mut out = Devices {
        mqtt,
        http: http.filter(|_| {
            cameras
                .iter()
                .any(|cam| matches!(cam.driver, Some(CameraDriver::Http(_))))
        }),
        ..Devices::default()
    };
    let mut paths: HashMap<&str, usize> = HashMap::new();
    for (i, cam) in cameras.iter().enumerate() {
        if let Some(CameraDriver::Http(h)) = &cam.driver {
            if let Some(path) = h.path.as_deref() {
                if let Some(first) = paths.insert(path, i + 1) {
                    problems.bad(
                        &format!("camera.{}.path", i + 1),
                        format!("{path:?} is already camera {first}'s path"),
                    );
                }
            }
        }
    }
    let mut names: HashMap<String, usize> = HashMap::new();
    for (i, cam) in cameras.iter().enumerate() {
        let n = i + 1;
        if let Some(first) = names.insert(cam.common.name.trim().to_string(), n) {
            problems.bad(
                &format!("camera.{n}.name"),
                format!(
                    "{:?} is already the name of camera {first}",
                    cam.common.name
                ),
            );
        }
        if let Some(v) = validate_camera(&mut problems, n, cam, have_mqtt) {
            out.cameras.push(v);
        }
    }
    let mut ports: HashMap<&str, (usize, &str, Option<i64>)> = HashMap::new();
    for (i, cam) in cameras.iter().enumerate() {
        if let Some((port, baud)) = camera_port(cam) {
            ports.insert(port, (i + 1, "camera", baud));
        }
    }
    let mut loop_names: HashMap<String, usize> = HashMap::new();
    for (i, l) in loops.iter().enumerate() {
        let n = i + 1;
        if let Some(first) = loop_names.insert(l.common.name.trim().to_string(), n) {
            problems.bad(
                &format!("loop.{n}.name"),
                format!("{:?} is already the name of loop {first}", l.common.name),
            );
        }
        // Loops may share a port with each other (one bus or one detector, several lanes),
        // never with a camera, and everyone on a port must agree on its speed and driver.
        if let Some((port, kind, baud)) = loop_port(l) {
            match ports.get(port) {
                Some((j, "camera", _)) => problems.bad(
                    &format!("loop.{n}.port"),
                    format!("{port:?} is already camera {j}'s port"),
                ),
                Some((j, other, other_baud)) if *other != kind || other_baud.unwrap_or(9600) != baud.unwrap_or(9600) => problems.bad(
                    &format!("loop.{n}.port"),
                    format!("{port:?} is shared with loop {j}: loops on one port need the same driver and baud"),
                ),
                Some(_) => {}
                None => {
                    ports.insert(port, (n, kind, baud));
                }
            }
        }
        if let Some(v) = validate_loop(&mut problems, n, l, have_mqtt) {
            out.loops.push(v);
        }
    }
    let mut cam_ports: HashMap<&str, usize> = HashMap::new();
    for (i, cam) in cameras.iter().enumerate() {
        if let Some((port, _)) = camera_port(cam) {
            if let Some(j) = cam_ports.insert(port, i + 1) {
                problems.bad(
                    &format!("camera.{}.port", i + 1),
                    format!("{port:?} is already camera {j}'s port"),
                );
            }
        }
    }
    for problem in problems.into_vec() {
        c.bad(&problem.key, problem.message);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{from_str, ConfigError, SpaceSource};
    use lotlink_drivers::codec::{LineEnding, TextEncoding};
    use lotlink_drivers::http::PushFormat;
    use lotlink_drivers::loops::{BusTarget, LoopMode, Register};

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
            CameraSource::Serial(serial::config::CameraSettings {
                baud,
                framing:
                    CameraFraming::Line {
                        encoding,
                        ending,
                        format,
                        ..
                    },
                ..
            }) => {
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
            LoopSource::Modbus(loops::config::ModbusSettings {
                mode,
                register,
                target,
                ..
            }) => {
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
            CameraSource::Http(http::config::CameraSettings {
                format: PushFormat::Vzenith,
                path: "/push/entry1".into(),
                sn: Some("33ae5105-d7732a0d".into()),
                gate_open: true,
            })
        );
        assert_eq!(
            c.devices.cameras[1].source,
            CameraSource::Http(http::config::CameraSettings {
                format: PushFormat::Hikvision,
                path: "/isapi/entry2".into(),
                sn: None,
                gate_open: false,
            })
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
    fn a_drivers_keys_are_checked_by_the_driver_each_at_its_line() {
        let text = format!(
            "{BASE}{}",
            r#"
[[camera]]
name = "a"
direction = "in"
driver = "serial"
baud = "fast"
gate = "open"
colour = "red"

[[loop]]
name = "l"
lane = "in"
driver = "modbus"
address = [1]
input = 2

[[camera]]
name = "b"
direction = "in"
driver = "dahua"
"#
        );
        let msg = problems(&text);
        // BASE has 8 lines; the first [[camera]] is line 10.
        assert!(
            msg.contains(
                "site.toml:14: camera.1.baud: wrong type: expected a whole number, found a string"
            ),
            "{msg}"
        );
        assert!(
            msg.contains("site.toml:15: camera.1.gate: does not apply here: http cameras only"),
            "{msg}"
        );
        // A key no driver has: the keys allowed are every camera's and the serial driver's.
        assert!(
            msg.contains("site.toml:16: camera.1.colour: unknown key; allowed here: name, direction, driver, snapshot_url, snapshot_timeout, styles, max_camera_skew, port, baud, framing,"),
            "{msg}"
        );
        assert!(
            msg.contains(
                "site.toml:22: loop.1.address: wrong type: expected a whole number, found an array"
            ),
            "{msg}"
        );
        assert!(
            msg.contains("site.toml:23: loop.1.input: does not apply here: mqtt loops only"),
            "{msg}"
        );
        assert!(
            msg.contains("camera.2.driver: \"dahua\": allowed are \"mqtt\", \"serial\", \"http\""),
            "{msg}"
        );
        // The serial camera's own rules ran on what it was given.
        assert!(msg.contains("camera.1.port: missing"), "{msg}");
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
