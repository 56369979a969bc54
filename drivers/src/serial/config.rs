//! The keys of a `driver = "serial"` camera (`[[camera]]`), and their validation.

use std::time::Duration;

use serde::Deserialize;

use super::CameraFraming;
use crate::codec::{LineEnding, LineField, LineFormat, TextEncoding};
use crate::config::{baud, choice, ranged, DriverConfig, KeyPath, Problems};

/// The names a line's `fields` may use.
const FIELD_NAMES: [&str; 6] = ["direction", "plate", "color", "time", "style", "_"];

/// A camera or recognition box on a serial port.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// The device path (prefer `/dev/serial/by-id/…`).
    pub port: Option<String>,
    /// Baud rate, default 9600.
    pub baud: Option<i64>,
    /// "line" (default): one text line per pass | "vz": Vzenith binary frames.
    pub framing: Option<String>,
    /// line framing: "gbk" (default) | "utf-8".
    pub encoding: Option<String>,
    /// line framing: field order; names "direction", "plate", "color", "time", "style",
    /// "_" (skip).
    pub fields: Option<Vec<String>>,
    /// line framing: field separator, default ",".
    pub separator: Option<String>,
    /// line framing: "crlf" (default) | "lf" | "cr".
    pub line_ending: Option<String>,
    /// line framing: longest accepted line in bytes, default 1024.
    pub max_line: Option<i64>,
}

/// A validated serial camera: where it is and how it frames a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CameraSettings {
    /// Device path.
    pub port: String,
    /// Baud rate.
    pub baud: u32,
    /// Frames on the wire.
    pub framing: CameraFraming,
}

impl DriverConfig for CameraConfig {
    type Settings = CameraSettings;
    type Context = ();

    fn validate(&self, at: &KeyPath, (): &(), p: &mut Problems) -> Option<CameraSettings> {
        let port = self.port.clone().filter(|s| !s.is_empty());
        if port.is_none() {
            p.bad(
                &at.key("port"),
                "missing: the serial device, e.g. \"/dev/serial/by-id/usb-…\"",
            );
        }
        let baud = baud(p, &at.key("baud"), self.baud);
        let vz = choice(
            p,
            &at.key("framing"),
            self.framing.as_deref(),
            false,
            &[("line", false), ("vz", true)],
        );
        let encoding = choice(
            p,
            &at.key("encoding"),
            self.encoding.as_deref(),
            TextEncoding::Gbk,
            &[
                ("gbk", TextEncoding::Gbk),
                ("utf-8", TextEncoding::Utf8),
                ("utf8", TextEncoding::Utf8),
            ],
        );
        let ending = choice(
            p,
            &at.key("line_ending"),
            self.line_ending.as_deref(),
            LineEnding::Lf,
            &[
                ("crlf", LineEnding::Lf),
                ("lf", LineEnding::Lf),
                ("cr", LineEnding::Cr),
            ],
        );
        let fields = self.fields.clone().unwrap_or_else(|| {
            ["direction", "plate", "color", "time"]
                .map(String::from)
                .to_vec()
        });
        if let Some(bad) = fields.iter().find(|f| !FIELD_NAMES.contains(&f.as_str())) {
            p.bad(
                &at.key("fields"),
                format!("{bad:?}: allowed names are \"direction\", \"plate\", \"color\", \"time\", \"style\", \"_\" (skip)"),
            );
        } else if !fields.iter().any(|f| f == "plate") {
            p.bad(&at.key("fields"), "must contain \"plate\"");
        } else if let Some(dup) = fields
            .iter()
            .filter(|f| *f != "_")
            .find(|f| fields.iter().filter(|g| g == f).count() > 1)
        {
            p.bad(&at.key("fields"), format!("{dup:?} appears twice"));
        }
        let separator = self.separator.clone().unwrap_or_else(|| ",".into());
        if separator.is_empty() || separator.contains(['\r', '\n']) {
            p.bad(
                &at.key("separator"),
                "must be a non-empty string without line breaks",
            );
        }
        let max_line = ranged(p, &at.key("max_line"), self.max_line, 1024, 16, 65_536)
            .and_then(|v| usize::try_from(v).ok());
        let framing = match (vz?, encoding, ending, max_line) {
            (true, Some(_), Some(_), Some(_)) => CameraFraming::Vz,
            (false, Some(encoding), Some(ending), Some(max_line)) => CameraFraming::Line {
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
            _ => return None,
        };
        Some(CameraSettings {
            port: port?,
            baud: baud?,
            framing,
        })
    }
}

/// A loop detector that writes ASCII frames on a serial port (`[[loop]] driver = "serial"`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorConfig {
    /// The detector's device path.
    pub port: Option<String>,
    /// Baud rate, default 9600.
    pub baud: Option<i64>,
    /// "verify" (default) | "ignore" the frame checksum.
    pub checksum: Option<String>,
    /// Only frames of this channel (`CC`). Absent = any.
    pub channel: Option<i64>,
    /// Only frames of this detector id (`DD`). Absent = any.
    pub detector: Option<i64>,
}

/// A validated detector loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectorSettings {
    /// Device path.
    pub port: String,
    /// Baud rate.
    pub baud: u32,
    /// Drop frames whose checksum is wrong.
    pub verify_checksum: bool,
    /// Only this channel.
    pub channel: Option<u8>,
    /// Only this detector id.
    pub detector: Option<u8>,
}

impl DriverConfig for DetectorConfig {
    type Settings = DetectorSettings;
    /// The loop's `min_hold` (the gateway applies it to every loop's passes).
    type Context = Duration;

    fn validate(&self, at: &KeyPath, _: &Duration, p: &mut Problems) -> Option<DetectorSettings> {
        let port = self.port.clone().filter(|s| !s.is_empty());
        if port.is_none() {
            p.bad(
                &at.key("port"),
                "missing: the serial device of the detector",
            );
        }
        let baud = baud(p, &at.key("baud"), self.baud);
        let verify = choice(
            p,
            &at.key("checksum"),
            self.checksum.as_deref(),
            true,
            &[("verify", true), ("ignore", false)],
        );
        let channel = self
            .channel
            .and_then(|v| ranged(p, &at.key("channel"), Some(v), 0, 0, 99))
            .and_then(|v| u8::try_from(v).ok());
        let detector = self
            .detector
            .and_then(|v| ranged(p, &at.key("detector"), Some(v), 0, 0, 99))
            .and_then(|v| u8::try_from(v).ok());
        Some(DetectorSettings {
            port: port?,
            baud: baud?,
            verify_checksum: verify?,
            channel,
            detector,
        })
    }
}
