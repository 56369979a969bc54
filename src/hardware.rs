//! Builds the configured drivers from the validated config: one [`MqttHub`] for every MQTT
//! camera and camera-IO loop, one [`SerialCamera`] per serial camera, one [`ModbusBus`] per
//! Modbus port or host (loops on one bus share its connection and poll cycle), and one
//! [`SerialDetector`] per ASCII detector port; and one [`HttpListener`] for all cameras that
//! POST (`driver = "http"`). Every driver gets a [`DriverStatus`] the status page reads.

use std::collections::BTreeMap;
use std::time::Duration;

use lotlink_drivers::http::{BoundAddr, HttpCamera, HttpListener};
use lotlink_drivers::loops::{BusTarget, ModbusBus, ModbusPoint};
use lotlink_drivers::mqtt::{MqttCamera, MqttHub, MqttLoop};
use lotlink_drivers::serial::{DetectorLoop, SerialCamera, SerialDetector};
use lotlink_drivers::snapshot::Snapshot;
use lotlink_drivers::{CameraRules, Driver, DriverStatus};

use crate::config::{CameraSource, Config, LoopSource};

/// How long a Vzenith quick result waits for its full result.
pub(crate) const QUICK_RESULT_WAIT: Duration = Duration::from_secs(3);

/// Errors building the drivers.
#[derive(Debug, thiserror::Error)]
pub enum HardwareError {
    /// A snapshot client could not be built.
    #[error("camera {camera}: {message}")]
    Snapshot { camera: String, message: String },
}

/// The drivers to run and the status handles to show.
pub struct Hardware {
    /// Drivers, ready to start.
    pub drivers: Vec<Box<dyn Driver>>,
    /// One status per camera, loop group and broker connection.
    pub statuses: Vec<DriverStatus>,
    /// Where the camera listener is bound, when HTTP cameras are configured.
    pub http: Option<BoundAddr>,
}

impl std::fmt::Debug for Hardware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hardware")
            .field(
                "drivers",
                &self
                    .drivers
                    .iter()
                    .map(|d| d.name().to_string())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Build every configured driver.
#[allow(clippy::too_many_lines)]
pub fn build(cfg: &Config) -> Result<Hardware, HardwareError> {
    let tz = cfg.platform.timezone;
    let dev = &cfg.devices;
    let mut drivers: Vec<Box<dyn Driver>> = Vec::new();
    let mut statuses = Vec::new();
    let mut mqtt_cameras = Vec::new();
    let mut mqtt_loops = Vec::new();
    let mut http_cameras = Vec::new();

    for cam in &dev.cameras {
        let snapshot = cam
            .snapshot_url
            .as_deref()
            .map(|u| Snapshot::new(u, cam.snapshot_timeout))
            .transpose()
            .map_err(|e| HardwareError::Snapshot {
                camera: cam.name.clone(),
                message: e.to_string(),
            })?;
        let rules = CameraRules {
            styles: cam.styles.clone(),
            max_skew: cam.max_camera_skew,
        };
        match &cam.source {
            CameraSource::Mqtt(format) => {
                let status = DriverStatus::new(&cam.name, "mqtt-camera");
                statuses.push(status.clone());
                mqtt_cameras.push(MqttCamera {
                    name: cam.name.clone(),
                    direction: cam.direction,
                    format: format.clone(),
                    snapshot,
                    rules,
                    status,
                });
            }
            CameraSource::Http(h) => {
                let status = DriverStatus::new(&cam.name, "http-camera");
                statuses.push(status.clone());
                http_cameras.push(HttpCamera {
                    name: cam.name.clone(),
                    direction: cam.direction,
                    format: h.format,
                    path: h.path.clone(),
                    sn: h.sn.clone(),
                    gate_open: h.gate_open,
                    snapshot,
                    status,
                    rules: rules.clone(),
                });
            }
            CameraSource::Serial(s) => {
                let status = DriverStatus::new(&cam.name, "serial-camera");
                statuses.push(status.clone());
                drivers.push(Box::new(SerialCamera {
                    name: cam.name.clone(),
                    direction: cam.direction,
                    port: s.port.clone(),
                    baud: s.baud,
                    framing: s.framing.clone(),
                    snapshot,
                    tz,
                    rules,
                    status,
                }));
            }
        }
    }

    // Loops: group by bus / port.
    let mut buses: BTreeMap<String, (BusTarget, Vec<ModbusPoint>, Duration, Duration)> =
        BTreeMap::new();
    let mut detectors: BTreeMap<String, (u32, bool, Vec<DetectorLoop>)> = BTreeMap::new();
    for l in &dev.loops {
        match &l.source {
            LoopSource::Modbus(m) => {
                let key = match &m.target {
                    BusTarget::Rtu { port, .. } => port.clone(),
                    BusTarget::Tcp { host } => host.clone(),
                };
                let entry = buses
                    .entry(key)
                    .or_insert_with(|| (m.target.clone(), Vec::new(), m.poll_interval, m.timeout));
                entry.2 = entry.2.min(m.poll_interval);
                entry.3 = entry.3.max(m.timeout);
                entry.1.push(ModbusPoint {
                    loop_name: l.name.clone(),
                    lane: l.lane,
                    slave: m.slave,
                    register: m.register,
                    address: m.address,
                    active_low: m.active_low,
                    mode: m.mode,
                });
            }
            LoopSource::Serial(d) => {
                let entry = detectors
                    .entry(d.port.clone())
                    .or_insert_with(|| (d.baud, d.verify_checksum, Vec::new()));
                // Any loop asking to verify makes the port verify.
                entry.1 |= d.verify_checksum;
                entry.2.push(DetectorLoop {
                    name: l.name.clone(),
                    lane: l.lane,
                    channel: d.channel,
                    detector: d.detector,
                    min_hold: l.min_hold,
                });
            }
            LoopSource::Mqtt(m) => {
                let status = DriverStatus::new(&l.name, "mqtt-loop");
                statuses.push(status.clone());
                mqtt_loops.push(MqttLoop {
                    name: l.name.clone(),
                    lane: l.lane,
                    sn: m.sn.clone(),
                    input: m.input,
                    active_low: m.active_low,
                    min_hold: l.min_hold,
                    status,
                });
            }
        }
    }
    for (key, (target, points, poll_interval, timeout)) in buses {
        let names: Vec<&str> = points.iter().map(|p| p.loop_name.as_str()).collect();
        let name = format!("modbus {key} ({})", names.join(", "));
        let status = DriverStatus::new(&name, "modbus");
        statuses.push(status.clone());
        drivers.push(Box::new(ModbusBus {
            name,
            target,
            points,
            poll_interval,
            timeout,
            status,
        }));
    }
    for (port, (baud, verify_checksum, loops)) in detectors {
        let names: Vec<&str> = loops.iter().map(|l| l.name.as_str()).collect();
        let name = format!("detector {port} ({})", names.join(", "));
        let status = DriverStatus::new(&name, "serial-detector");
        statuses.push(status.clone());
        drivers.push(Box::new(SerialDetector {
            name,
            port,
            baud,
            verify_checksum,
            loops,
            status,
        }));
    }
    if let Some(m) = &dev.mqtt {
        if !mqtt_cameras.is_empty() || !mqtt_loops.is_empty() {
            let status = DriverStatus::new("mqtt", "mqtt-broker");
            statuses.push(status.clone());
            drivers.push(Box::new(MqttHub {
                settings: m.settings(),
                cameras: mqtt_cameras,
                loops: mqtt_loops,
                tz,
                coalesce: QUICK_RESULT_WAIT,
                status,
            }));
        }
    }
    let mut http = None;
    if let (Some(h), false) = (&dev.http, http_cameras.is_empty()) {
        let name = format!("http {}", h.listen);
        let status = DriverStatus::new(&name, "http-listener");
        statuses.push(status.clone());
        let bound = BoundAddr::default();
        http = Some(bound.clone());
        drivers.push(Box::new(HttpListener {
            name,
            settings: h.clone(),
            cameras: http_cameras,
            tz,
            status,
            bound,
        }));
    }
    Ok(Hardware {
        drivers,
        statuses,
        http,
    })
}
