//! The keys of a `driver = "mqtt"` camera (`[[camera]]`), and their validation.

use std::time::Duration;

use serde::Deserialize;

use super::CameraFormat;
use crate::config::{not_for, DriverConfig, KeyPath, Problems};

/// A camera that publishes to the site broker (`[mqtt]`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// "vzenith" (default): Vzenith's own topics | "json": lotlink JSON on one `topic`.
    pub format: Option<String>,
    /// vzenith: only this camera's messages (its serial number). Absent = any camera.
    pub sn: Option<String>,
    /// json: the topic the camera publishes to.
    pub topic: Option<String>,
}

impl DriverConfig for CameraConfig {
    type Settings = CameraFormat;
    type Context = ();

    fn validate(&self, at: &KeyPath, (): &(), p: &mut Problems) -> Option<CameraFormat> {
        match self.format.as_deref().unwrap_or("vzenith") {
            "vzenith" => {
                not_for(
                    p,
                    &at.key("topic"),
                    self.topic.is_some(),
                    "format = \"json\" only (vzenith topics are fixed)",
                );
                Some(CameraFormat::Vzenith {
                    sn: self.sn.clone().filter(|s| !s.is_empty()),
                })
            }
            "json" => {
                not_for(
                    p,
                    &at.key("sn"),
                    self.sn.is_some(),
                    "format = \"vzenith\" only",
                );
                match self.topic.as_deref() {
                    Some(t) if !t.is_empty() && !t.contains(['+', '#']) => {
                        Some(CameraFormat::Json {
                            topic: t.to_string(),
                        })
                    }
                    Some(t) => {
                        p.bad(
                            &at.key("topic"),
                            format!("{t:?}: a plain topic without wildcards"),
                        );
                        None
                    }
                    None => {
                        p.bad(
                            &at.key("topic"),
                            "missing: format = \"json\" needs the camera's topic",
                        );
                        None
                    }
                }
            }
            other => {
                p.bad(
                    &at.key("format"),
                    format!("{other:?}: allowed are \"vzenith\", \"json\""),
                );
                None
            }
        }
    }
}

/// A loop read from a camera's IO input (Vzenith `gpio_in` over the site broker).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoopConfig {
    /// The camera's serial number. Absent = any camera.
    pub sn: Option<String>,
    /// The camera's IO input index (`TriggerResult.source`).
    pub input: Option<i64>,
    /// The input reads 0 when the loop is occupied. Default false.
    pub active_low: Option<bool>,
}

/// A validated camera-IO loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopSettings {
    /// Only this camera (`None` = any).
    pub sn: Option<String>,
    /// IO input index.
    pub input: u32,
    /// 0 = occupied.
    pub active_low: bool,
}

impl DriverConfig for LoopConfig {
    type Settings = LoopSettings;
    /// The loop's `min_hold` (the gateway applies it to every loop's passes).
    type Context = Duration;

    fn validate(&self, at: &KeyPath, _: &Duration, p: &mut Problems) -> Option<LoopSettings> {
        let input = match self.input {
            None => {
                p.bad(
                    &at.key("input"),
                    "missing: the camera's IO input index (TriggerResult.source)",
                );
                None
            }
            Some(v) => crate::config::ranged(p, &at.key("input"), Some(v), 0, 0, 255)
                .and_then(|v| u32::try_from(v).ok()),
        };
        input.map(|input| LoopSettings {
            sn: self.sn.clone().filter(|s| !s.is_empty()),
            input,
            active_low: self.active_low.unwrap_or(false),
        })
    }
}
