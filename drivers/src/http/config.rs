//! The keys of the `[http]` listener and of a `driver = "http"` camera (`[[camera]]`), and
//! their validation.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::{HttpSettings, IpNet, PushFormat, CAMERA_SILENCE};
use crate::config::{choice, duration_in, parse_size, ranged, DriverConfig, KeyPath, Problems};

/// A camera that POSTs its results to the `[http]` listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// "vzenith" | "hikvision" (required): what the camera posts.
    pub format: Option<String>,
    /// The Vzenith `serialno`, or the Hikvision `deviceID` or MAC address, every request
    /// on this camera's path must carry. Absent = not checked.
    pub sn: Option<String>,
    /// The URL path the camera is set to POST to, e.g. "/push/entry1" (unique).
    pub path: Option<String>,
    /// vzenith: "open" answers every pass with `"info": "ok"`, which makes the camera open
    /// its barrier; "none" (default): lotlink never opens barriers.
    pub gate: Option<String>,
}

/// A validated HTTP camera: what it posts, where, and how it is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CameraSettings {
    /// What it posts.
    pub format: PushFormat,
    /// URL path, starts with `/` (unique among the cameras: the gateway checks).
    pub path: String,
    /// Identity every request must carry (serialno / deviceID / MAC).
    pub sn: Option<String>,
    /// Vzenith: answer `"info": "ok"` for every pass.
    pub gate_open: bool,
}

impl DriverConfig for CameraConfig {
    type Settings = CameraSettings;
    type Context = ();

    fn validate(&self, at: &KeyPath, (): &(), p: &mut Problems) -> Option<CameraSettings> {
        let format = match self.format.as_deref() {
            Some("vzenith") => Some(PushFormat::Vzenith),
            Some("hikvision") => Some(PushFormat::Hikvision),
            Some(other) => {
                p.bad(
                    &at.key("format"),
                    format!("{other:?}: allowed are \"vzenith\", \"hikvision\""),
                );
                None
            }
            None => {
                p.bad(
                    &at.key("format"),
                    "missing: what the camera posts, \"vzenith\" or \"hikvision\"",
                );
                None
            }
        };
        let path = match self.path.as_deref() {
            None => {
                p.bad(
                    &at.key("path"),
                    "missing: the URL path the camera posts to, e.g. \"/push/entry1\"",
                );
                None
            }
            Some(s) if !s.starts_with('/') => {
                p.bad(&at.key("path"), format!("{s:?} must start with \"/\""));
                None
            }
            Some(s)
                if s.len() > 200
                    || s.chars().any(|ch| {
                        ch.is_whitespace() || ch.is_control() || matches!(ch, '?' | '#')
                    }) =>
            {
                p.bad(
                    &at.key("path"),
                    format!("{s:?}: a plain path of at most 200 bytes, without spaces, `?` or `#`"),
                );
                None
            }
            Some(s) => Some(s.to_string()),
        };
        let gate_open = choice(
            p,
            &at.key("gate"),
            self.gate.as_deref(),
            false,
            &[("none", false), ("open", true)],
        );
        if gate_open == Some(true) && format == Some(PushFormat::Hikvision) {
            p.bad(
                &at.key("gate"),
                "format = \"vzenith\" only (a Hikvision camera's barrier is not opened by the reply)",
            );
        }
        Some(CameraSettings {
            format: format?,
            path: path?,
            sn: self.sn.clone().filter(|s| !s.trim().is_empty()),
            gate_open: gate_open?,
        })
    }
}

/// `[http]`: the listener cameras POST their results to. Started when any camera has
/// `driver = "http"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
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

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
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

impl DriverConfig for ListenerConfig {
    type Settings = HttpSettings;
    type Context = ();

    fn validate(&self, at: &KeyPath, (): &(), p: &mut Problems) -> Option<HttpSettings> {
        let listen = if let Ok(a) = self.listen.parse::<SocketAddr>() {
            Some(a)
        } else {
            p.bad(
                &at.key("listen"),
                format!(
                    "{:?} is not an address:port such as \"0.0.0.0:8088\"",
                    self.listen
                ),
            );
            None
        };
        let max_body = p
            .take(&at.key("max_body"), parse_size(&self.max_body))
            .and_then(|b| {
                if (64 * 1024..=64 << 20).contains(&b) {
                    usize::try_from(b).ok()
                } else {
                    p.bad(
                        &at.key("max_body"),
                        "must be between 64KiB and 64MiB (a result with two pictures is about 1MiB)",
                    );
                    None
                }
            });
        let mut allow = Vec::new();
        for a in self.allow.iter().flatten() {
            let t = a.trim();
            match t
                .parse::<IpNet>()
                .or_else(|_| t.parse::<std::net::IpAddr>().map(IpNet::from))
            {
                Ok(n) => allow.push(n.trunc()),
                Err(_) => p.bad(
                    &at.key("allow"),
                    format!("{a:?} is not an address or a network such as \"192.168.1.0/24\""),
                ),
            }
        }
        if self.allow.as_ref().is_some_and(Vec::is_empty) {
            p.bad(
                &at.key("allow"),
                "an empty list would refuse every camera: leave `allow` out to take any address",
            );
        }
        let read_timeout = duration_in(
            p,
            &at.key("read_timeout"),
            Some(&self.read_timeout),
            Duration::from_secs(15),
            Duration::from_millis(100),
            Duration::from_secs(300),
        );
        let max_connections = ranged(
            p,
            &at.key("max_connections"),
            Some(self.max_connections),
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
}
