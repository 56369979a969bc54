//! The keys of a `driver = "modbus"` loop (`[[loop]]`), and their validation.

use std::time::Duration;

use serde::Deserialize;

use super::{BusTarget, LoopMode, Register};
use crate::config::{baud, choice, duration_in, not_for, ranged, DriverConfig, KeyPath, Problems};

/// A loop read from a Modbus I/O module (RTU on a serial port, or TCP).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusConfig {
    /// RTU: the device path (give `port` or `host`, not both).
    pub port: Option<String>,
    /// RTU: baud rate, default 9600.
    pub baud: Option<i64>,
    /// TCP: "host:port" (instead of `port`).
    pub host: Option<String>,
    /// Slave id 1..=247, default 1.
    pub slave: Option<i64>,
    /// `"discrete_input"` (default) | `"coil"` | `"input_register"` | `"holding_register"`.
    pub register: Option<String>,
    /// Register/input address (0..=65535), e.g. 0x20.
    pub address: Option<i64>,
    /// The input reads 0 when the loop is occupied. Default false.
    pub active_low: Option<bool>,
    /// "edge" (default; count release edges) | "counter" (a counter register).
    pub mode: Option<String>,
    /// counter mode: 16 (default) or 32 bits.
    pub counter_bits: Option<i64>,
    /// Time between polls, default "50ms".
    pub poll_interval: Option<String>,
    /// Timeout of one request, default "500ms".
    pub timeout: Option<String>,
}

/// A validated Modbus loop: one point on a bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModbusSettings {
    /// Where the bus is.
    pub target: BusTarget,
    /// Slave id.
    pub slave: u8,
    /// Table read.
    pub register: Register,
    /// Address in it.
    pub address: u16,
    /// 0 = occupied.
    pub active_low: bool,
    /// Edges or a counter.
    pub mode: LoopMode,
    /// Time between polls.
    pub poll_interval: Duration,
    /// Timeout of one request.
    pub timeout: Duration,
}

impl DriverConfig for ModbusConfig {
    type Settings = ModbusSettings;
    /// The loop's `min_hold` (edge mode), validated by the gateway for every loop.
    type Context = Duration;

    #[allow(clippy::too_many_lines)]
    fn validate(
        &self,
        at: &KeyPath,
        min_hold: &Duration,
        p: &mut Problems,
    ) -> Option<ModbusSettings> {
        let target = match (&self.port, &self.host) {
            (Some(port), None) if !port.is_empty() => {
                baud(p, &at.key("baud"), self.baud).map(|baud| BusTarget::Rtu {
                    port: port.clone(),
                    baud,
                })
            }
            (None, Some(h)) if h.contains(':') => {
                not_for(
                    p,
                    &at.key("baud"),
                    self.baud.is_some(),
                    "modbus RTU only (not with `host`)",
                );
                Some(BusTarget::Tcp { host: h.clone() })
            }
            (None, Some(h)) => {
                p.bad(
                    &at.key("host"),
                    format!("{h:?}: write host:port, e.g. \"127.0.0.1:502\""),
                );
                None
            }
            _ => {
                p.bad(
                    &at.key("port"),
                    "give exactly one of `port` (Modbus RTU) and `host` (Modbus TCP)",
                );
                None
            }
        };
        let slave =
            ranged(p, &at.key("slave"), self.slave, 1, 0, 247).and_then(|v| u8::try_from(v).ok());
        let register = choice(
            p,
            &at.key("register"),
            self.register.as_deref(),
            Register::DiscreteInput,
            &[
                ("discrete_input", Register::DiscreteInput),
                ("coil", Register::Coil),
                ("input_register", Register::InputRegister),
                ("holding_register", Register::HoldingRegister),
            ],
        );
        let address = match self.address {
            None => {
                p.bad(
                    &at.key("address"),
                    "missing: the input or register address, e.g. 0x20",
                );
                None
            }
            Some(a) => ranged(p, &at.key("address"), Some(a), 0, 0, 65_535)
                .and_then(|v| u16::try_from(v).ok()),
        };
        let mode = match self.mode.as_deref().unwrap_or("edge") {
            "edge" => {
                not_for(
                    p,
                    &at.key("counter_bits"),
                    self.counter_bits.is_some(),
                    "mode = \"counter\" only",
                );
                Some(LoopMode::Edge {
                    min_hold: *min_hold,
                })
            }
            "counter" => match self.counter_bits.unwrap_or(16) {
                b @ (16 | 32) => {
                    if matches!(register, Some(Register::DiscreteInput | Register::Coil)) {
                        p.bad(
                            &at.key("register"),
                            "mode = \"counter\" reads input_register or holding_register",
                        );
                    }
                    u8::try_from(b).ok().map(|bits| LoopMode::Counter { bits })
                }
                b => {
                    p.bad(&at.key("counter_bits"), format!("{b}: allowed are 16, 32"));
                    None
                }
            },
            other => {
                p.bad(
                    &at.key("mode"),
                    format!("{other:?}: allowed are \"edge\", \"counter\""),
                );
                None
            }
        };
        let poll_interval = duration_in(
            p,
            &at.key("poll_interval"),
            self.poll_interval.as_deref(),
            Duration::from_millis(50),
            Duration::from_millis(10),
            Duration::from_secs(10),
        );
        let timeout = duration_in(
            p,
            &at.key("timeout"),
            self.timeout.as_deref(),
            Duration::from_millis(500),
            Duration::from_millis(20),
            Duration::from_secs(10),
        );
        Some(ModbusSettings {
            target: target?,
            slave: slave?,
            register: register?,
            address: address?,
            active_low: self.active_low.unwrap_or(false),
            mode: mode?,
            poll_interval: poll_interval?,
            timeout: timeout?,
        })
    }
}
