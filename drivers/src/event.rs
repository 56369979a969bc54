//! The events drivers emit.

use serde::{Deserialize, Serialize};

/// What a pass at a lane means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// An entry: the platform's `inOutType = "in"`.
    In,
    /// An exit: `inOutType = "out"`.
    Out,
}

impl Direction {
    /// The platform's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }
}

/// The platform's `carStyle`: `0` car, `1` large vehicle, `2` truck.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum CarStyle {
    #[default]
    Car,
    Large,
    Truck,
}

impl CarStyle {
    /// The platform's one-character code.
    pub fn code(self) -> &'static str {
        match self {
            CarStyle::Car => "0",
            CarStyle::Large => "1",
            CarStyle::Truck => "2",
        }
    }
}

/// A vehicle passing a camera.
#[derive(Clone, PartialEq, Eq)]
pub struct PlateEvent {
    /// Dedupe key: the same key within 10 minutes is accepted once
    /// (e.g. camera serial + capture time + plate, or the message id). Empty = no dedupe.
    pub source_key: String,
    /// The lane name (becomes `nodeName`).
    pub node_name: String,
    /// Entry or exit.
    pub direction: Direction,
    /// Plate text as read; `None` when the camera read no plate.
    pub plate: Option<String>,
    /// Capture time from the camera, Unix milliseconds; `None` = use the gateway's corrected clock.
    pub captured_at_ms: Option<i64>,
    /// Plate colour word (蓝, 黄, …).
    pub color: Option<String>,
    /// Vehicle type.
    pub style: CarStyle,
    /// Vehicle brand, if the camera knows it.
    pub brand: Option<String>,
    /// Encoded image (JPEG or PNG) as received; shrunk by the gateway if needed.
    pub image: Option<Vec<u8>>,
    /// Free text to carry to the platform's `remark`.
    pub remark: Option<String>,
}

impl std::fmt::Debug for PlateEvent {
    // Image bytes are never printed: they are large and may be personal data.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlateEvent")
            .field("source_key", &self.source_key)
            .field("node_name", &self.node_name)
            .field("direction", &self.direction)
            .field("plate", &self.plate)
            .field("captured_at_ms", &self.captured_at_ms)
            .field("color", &self.color)
            .field("style", &self.style)
            .field("brand", &self.brand)
            .field("image_bytes", &self.image.as_ref().map(Vec::len))
            .field("remark", &self.remark)
            .finish()
    }
}

/// Everything a driver can hand to the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A plate read: becomes one `carInOut` record.
    Plate(PlateEvent),
    /// A vehicle passed a loop detector: moves the occupied count by one.
    Pass {
        /// The configured loop name.
        loop_name: String,
        /// `In` adds an occupied space, `Out` frees one.
        lane: Direction,
    },
    /// A reading of a loop module's pass counter (a register that only grows, wraps at
    /// `bits`, and restarts from 0 when the module reboots). The gateway keeps the last
    /// reading per loop on disk, beside the occupied count, and moves the count by the
    /// difference, so re-reading the same value, or a gateway restart, counts nothing twice.
    Counter {
        /// The configured loop name.
        loop_name: String,
        /// `In` adds an occupied space per counted pass, `Out` frees one.
        lane: Direction,
        /// The raw register value.
        value: u64,
        /// Register width: 16 or 32.
        bits: u8,
    },
}
