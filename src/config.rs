//! Configuration: the TOML file as written ([`RawConfig`]), and the validated form the
//! gateway runs on ([`Config`]).
//!
//! [`from_str`] reports **every** problem of a file in one run: each unknown key, value of
//! the wrong type and missing key (found by deserializing with repairs, see `spans`), then
//! every value [`validate`] refuses, each naming the file, the line of its key (from the TOML
//! parser's spans) and the key, and saying what is allowed. No message quotes a secret.
//!
//! [`validate`] is a pure function: it reads nothing but the raw struct and returns either a
//! [`Config`] or every problem it found. [`load`] is the only part that touches the disk: it
//! reads the file and the token file.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod devices;
mod spans;
mod tagged;
pub(crate) use devices::{
    CameraSource, Devices, LoopSource, MqttConfig, RawCamera, RawHttp, RawLoop, RawMqtt,
};

/// A secret string (the platform token). Never printed: `Debug` shows `***`, and it has no
/// `Display`, so it cannot end up in a log line or an error message by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself, for signing only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

// ---------------------------------------------------------------------------------------
// The file as written
// ---------------------------------------------------------------------------------------

/// The configuration file, as parsed. Every section rejects unknown keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    /// How to reach the city platform.
    pub platform: RawPlatform,
    /// The durable outbox.
    #[serde(default)]
    pub outbox: RawOutbox,
    /// The lot's spaces.
    #[serde(default)]
    pub space: RawSpace,
    /// The local status endpoint.
    #[serde(default)]
    pub status: RawStatus,
    /// The site MQTT broker (needed by MQTT cameras and loops).
    pub mqtt: Option<RawMqtt>,
    /// The listener HTTP cameras POST to (defaults apply when absent).
    pub http: Option<RawHttp>,
    /// The cameras, one `[[camera]]` table each.
    #[serde(default)]
    pub camera: Vec<RawCamera>,
    /// The loop detectors, one `[[loop]]` table each.
    #[serde(default, rename = "loop")]
    pub loops: Vec<RawLoop>,
    /// Remote management over the site broker (config push, retained status).
    pub management: Option<RawManagement>,
    /// The log.
    #[serde(default)]
    pub log: RawLog,
}

/// `[log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLog {
    /// How much to log: "error", "warn", "info" (default), "debug" or "trace". Applied at
    /// start and on every reload; `RUST_LOG` and `-v`/`-q` override it.
    #[serde(default)]
    pub level: LogLevel,
}

/// A log level (`[log] level`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Data loss and faults an operator must fix.
    Error,
    /// Also lasting faults that come back by themselves.
    Warn,
    /// Also state changes and periodic summaries (the default).
    #[default]
    Info,
    /// Also every attempt and request.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The name, as in the config file and `RUST_LOG`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// `[management]`: config push and the retained status topic, over the `[mqtt]` broker.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawManagement {
    /// On or off. Default: on when `[mqtt]` is configured.
    pub enabled: Option<bool>,
    /// Topic prefix; `{lot_code}` is replaced. Default "lotlink/{lot_code}".
    pub topic_prefix: Option<String>,
    /// Key of the HMAC-SHA256 every pushed config must carry (at least 16 characters).
    /// Without a key (this or `hmac_key_file`) the gateway publishes its status but refuses
    /// every push. At most one of `hmac_key` and `hmac_key_file`.
    pub hmac_key: Option<Secret>,
    /// A file holding the push key (first line, surrounding whitespace trimmed); read at
    /// each push. Unlike `hmac_key` it is not a secret in the config text, so a pushed
    /// config may carry it over a plain `mqtt://` broker.
    pub hmac_key_file: Option<PathBuf>,
    /// Accept a pushed config that carries a secret (`platform.token`, `mqtt.password`,
    /// `management.hmac_key`) over a plain `mqtt://` broker. Default false: such a push is
    /// rejected (use `token_file` / `hmac_key_file`, or `mqtts://`). Only the running
    /// config's setting counts.
    pub allow_plaintext_secrets: Option<bool>,
    /// How long a pushed config is watched before it counts as good, e.g. "60s".
    #[serde(default = "d_60s")]
    pub watch: String,
}

impl Default for RawManagement {
    fn default() -> Self {
        RawManagement {
            enabled: None,
            topic_prefix: None,
            hmac_key: None,
            hmac_key_file: None,
            allow_plaintext_secrets: None,
            watch: d_60s(),
        }
    }
}

/// `[platform]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPlatform {
    /// Base URL; `/park/heartbeat`, `/dataSync/parkSpace`, `/dataSync/carInOut` are appended.
    pub url: String,
    /// The lot code the platform assigned (`lotCode`).
    pub lot_code: String,
    /// The secret token the platform assigned. Exactly one of `token` and `token_file`.
    pub token: Option<Secret>,
    /// A file holding the token (first line, surrounding whitespace trimmed).
    pub token_file: Option<PathBuf>,
    /// Unit of `ts`: "ms", "s" or "auto" (start with ms; switch to s if ms is refused).
    #[serde(default = "d_auto")]
    pub ts_unit: String,
    /// Hex case of `auth`: "lower" or "upper".
    #[serde(default = "d_lower")]
    pub auth_case: String,
    /// How `data` is sent: "object" (a JSON value), "string" (JSON text in a string) or
    /// "auto" (object; string only once a string is accepted where an object was refused).
    #[serde(default = "d_auto")]
    pub data_encoding: String,
    /// Time between heartbeats, e.g. "60s".
    #[serde(default = "d_60s")]
    pub heartbeat_interval: String,
    /// Whole-request timeout (connect + answer), e.g. "10s".
    #[serde(default = "d_10s")]
    pub request_timeout: String,
    /// Longest wait between retries while the platform fails: the back-off doubles from 1s
    /// up to this (with full jitter). 1s..=5m; a platform on the site LAN may want less.
    #[serde(default = "d_5m")]
    pub retry_max: String,
    /// Most records in one carInOut request, 1..=100.
    #[serde(default = "d_100")]
    pub max_batch: i64,
    /// Largest carInOut request body, e.g. "2MiB".
    #[serde(default = "d_2mib")]
    pub max_body: String,
    /// Time zone of `inOutTime`, an IANA name among those built in (China's, UTC; see
    /// `.cargo/config.toml`).
    #[serde(default = "d_tz")]
    pub timezone: String,
    /// PEM file of the CA certificate(s) that sign the platform's HTTPS certificate. When set,
    /// only these are trusted (not the built-in web roots); `https://` URLs only.
    pub ca_file: Option<PathBuf>,
}

/// `[outbox]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOutbox {
    /// Directory of the sled store.
    #[serde(default = "d_outbox_path")]
    pub path: PathBuf,
    /// Most bytes the stored records may take, e.g. "2GiB".
    #[serde(default = "d_2gib")]
    pub max_disk: String,
}

impl Default for RawOutbox {
    fn default() -> Self {
        RawOutbox {
            path: d_outbox_path(),
            max_disk: d_2gib(),
        }
    }
}

/// `[space]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSpace {
    /// Total spaces of the lot (`totalSpace`), 0..1e9.
    pub total: Option<i64>,
    /// What moves the occupied count: "loops" or "plates". Default: "loops" when any
    /// `[[loop]]` is configured, else "plates".
    pub source: Option<String>,
}

/// `[status]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStatus {
    /// Address of the local status endpoint, e.g. "127.0.0.1:9870".
    #[serde(default = "d_listen")]
    pub listen: String,
    /// Bearer token every request must carry (`Authorization: Bearer …`). Required when
    /// `listen` is not a loopback address; optional otherwise.
    pub token: Option<Secret>,
}

impl Default for RawStatus {
    fn default() -> Self {
        RawStatus {
            listen: d_listen(),
            token: None,
        }
    }
}

fn d_auto() -> String {
    "auto".into()
}
fn d_lower() -> String {
    "lower".into()
}
fn d_60s() -> String {
    "60s".into()
}
fn d_5m() -> String {
    "5m".into()
}
fn d_10s() -> String {
    "10s".into()
}
fn d_100() -> i64 {
    100
}
fn d_2mib() -> String {
    "2MiB".into()
}
fn d_2gib() -> String {
    "2GiB".into()
}

/// The time zones built in (chosen at build time, see `.cargo/config.toml`), for the error
/// message: all of them when there are a few, else an example.
fn known_time_zones() -> String {
    let names: Vec<&str> = chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name()).collect();
    if names.len() <= 30 {
        names.join(", ")
    } else {
        format!("{} IANA names such as \"Asia/Shanghai\"", names.len())
    }
}

fn d_tz() -> String {
    "Asia/Shanghai".into()
}
fn d_outbox_path() -> PathBuf {
    PathBuf::from("/var/lib/lotlink/outbox")
}
fn d_listen() -> String {
    "127.0.0.1:9870".into()
}

// ---------------------------------------------------------------------------------------
// The validated form
// ---------------------------------------------------------------------------------------

/// Unit of the `ts` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsUnit {
    Ms,
    S,
}

impl TsUnit {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TsUnit::Ms => "ms",
            TsUnit::S => "s",
        }
    }
    /// The other unit.
    #[must_use]
    pub fn other(self) -> TsUnit {
        match self {
            TsUnit::Ms => TsUnit::S,
            TsUnit::S => TsUnit::Ms,
        }
    }
}

/// `ts_unit` as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsUnitSetting {
    Fixed(TsUnit),
    /// Start with ms; after a 1002 a clock re-sync does not cure, try s; keep what works.
    Auto,
}

/// Hex case of `auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthCase {
    Lower,
    Upper,
}

/// How `data` is put in the envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataEncoding {
    /// A JSON object/array, as the spec's examples.
    Object,
    /// The JSON text of the payload as a JSON string, as the spec's table says.
    String,
}

/// `data_encoding` as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataEncodingSetting {
    Fixed(DataEncoding),
    /// Start with `object`. Until the platform accepts a request with `data`, a request
    /// refused with `1501`/`1502` is sent once more as `string`; `string` is kept only if
    /// that attempt is **accepted**. A genuinely bad record is refused in both encodings, so
    /// it can never flip the setting; once one encoding is accepted it is never probed again.
    Auto,
}

/// Where the token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    Inline(Secret),
    File(PathBuf),
}

/// Validated `[platform]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PlatformConfig {
    pub url: String,
    pub lot_code: String,
    pub token: TokenSource,
    pub ts_unit: TsUnitSetting,
    pub auth_case: AuthCase,
    pub data_encoding: DataEncodingSetting,
    pub heartbeat_interval: Duration,
    pub request_timeout: Duration,
    /// Cap of the retry back-off for transient failures.
    pub retry_max: Duration,
    pub max_batch: usize,
    pub max_body: u64,
    pub timezone: chrono_tz::Tz,
    /// Trust only the CA certificate(s) in this PEM file for HTTPS.
    pub ca_file: Option<PathBuf>,
}

/// Validated `[outbox]`.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxConfig {
    pub path: PathBuf,
    pub max_disk: u64,
}

/// What moves the occupied count ([`crate::space`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpaceSource {
    /// Loop-detector passes.
    Loops,
    /// Plate events at the cameras.
    Plates,
}

/// Validated `[space]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SpaceConfig {
    pub total: u32,
    pub source: SpaceSource,
}

/// Validated `[status]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusConfig {
    pub listen: SocketAddr,
    /// Bearer token; always set when `listen` is not loopback.
    pub token: Option<Secret>,
}

/// Validated `[management]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagementConfig {
    /// Topic prefix, `{lot_code}` replaced, no trailing `/`.
    pub topic_prefix: String,
    /// Key of the HMAC of pushed configs: inline or a file (read at each push). `None`:
    /// every push is refused.
    pub hmac_key: Option<TokenSource>,
    /// Accept pushed secrets over a plain-text broker.
    pub allow_plaintext_secrets: bool,
    /// Watch window after a pushed config is applied.
    pub watch: Duration,
}

/// The token value the shipped example carries: refused, so a box with the example config
/// never starts talking to the platform with it.
pub const EXAMPLE_TOKEN: &str = "replace-with-the-platform-token";

/// The lot code the shipped example carries: refused like [`EXAMPLE_TOKEN`], so a box never
/// reports another lot's cars.
pub const EXAMPLE_LOT_CODE: &str = "replace-with-the-lot-code";

/// The configuration the gateway runs on.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub platform: PlatformConfig,
    pub outbox: OutboxConfig,
    pub space: SpaceConfig,
    pub status: StatusConfig,
    /// Broker, cameras and loops.
    pub devices: Devices,
    /// Remote management; `None` when off (or no broker).
    pub management: Option<ManagementConfig>,
    /// `[log] level`.
    pub log_level: LogLevel,
    /// First 16 hex digits of the SHA-256 of the file's text ("" when built without text).
    pub hash: String,
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// One problem with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key, e.g. `platform.max_batch`.
    pub key: String,
    /// What is wrong and what is allowed.
    pub message: String,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    /// 1-based column (in characters), for the problems the TOML parser finds (syntax,
    /// unknown keys, wrong types, missing keys).
    pub column: Option<usize>,
}

impl Problem {
    /// A problem with `key`, not yet located in a file.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            key: key.into(),
            message: message.into(),
            line: None,
            column: None,
        }
    }
}

/// Everything wrong with a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", .0)]
    Invalid(ConfigErrors),
}

/// The list of problems [`validate`] found, with the file they belong to.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    pub path: Option<PathBuf>,
    pub problems: Vec<Problem>,
}

impl ConfigErrors {
    /// Fill in the line of each problem that has none: the line of its key, from the TOML
    /// parser's spans of `text` (a missing key points at its table).
    #[must_use]
    pub fn locate(mut self, path: &Path, text: &str) -> Self {
        self.path = Some(path.to_path_buf());
        let spans = spans::Spans::new(text);
        for p in &mut self.problems {
            if p.line.is_none() {
                p.line = spans.locate(&p.key).map(|(line, _)| line);
            }
        }
        // In file order; problems without a line last.
        self.problems
            .sort_by_key(|p| (p.line.unwrap_or(usize::MAX), p.column.unwrap_or(0)));
        self
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self
            .path
            .as_ref()
            .map_or_else(|| "config".to_string(), |p| p.display().to_string());
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match (p.line, p.column) {
                (Some(l), Some(c)) => write!(
                    f,
                    "{file}:{l}: {}: {} (line {l}, column {c})",
                    p.key, p.message
                )?,
                (Some(l), None) => write!(f, "{file}:{l}: {}: {}", p.key, p.message)?,
                (None, _) => write!(f, "{file}: {}: {}", p.key, p.message)?,
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Parsing helpers
// ---------------------------------------------------------------------------------------

// The drivers' config and the gateway's share these (one spelling of a size and a duration
// in the whole file).
pub(crate) use lotlink_drivers::config::{parse_duration, parse_size};

// ---------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------

struct Collector(Vec<Problem>);

impl Collector {
    fn bad(&mut self, key: &str, message: impl Into<String>) {
        self.0.push(Problem::new(key, message));
    }
    fn take<T>(&mut self, key: &str, r: Result<T, String>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(m) => {
                self.bad(key, m);
                None
            }
        }
    }
    /// A duration setting that must lie in `range`; `rule` says so in the error.
    fn duration_in(
        &mut self,
        key: &str,
        text: &str,
        range: std::ops::RangeInclusive<Duration>,
        rule: &str,
    ) -> Option<Duration> {
        let d = self.take(key, parse_duration(text))?;
        if range.contains(&d) {
            Some(d)
        } else {
            self.bad(key, rule);
            None
        }
    }
}

/// Check a raw configuration and produce the validated one, or every problem found.
///
/// Pure: reads no files (a `token_file` is checked by [`load`]).
pub(crate) fn validate(raw: &RawConfig) -> Result<Config, ConfigErrors> {
    let mut c = Collector(Vec::new());
    let p = &raw.platform;

    let url = p.url.trim().trim_end_matches('/').to_string();
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
        c.bad(
            "platform.url",
            format!("{:?} must be an http:// or https:// base URL", p.url),
        );
    } else if reqwest::Url::parse(&url).is_err() {
        c.bad(
            "platform.url",
            format!(
                "{:?} is not a valid URL (a host name must be ASCII: an internationalised one in its xn-- form)",
                p.url
            ),
        );
    }

    if p.ca_file.is_some() && !url.starts_with("https://") {
        c.bad(
            "platform.ca_file",
            "only applies to an https:// platform.url",
        );
    }

    let lot_code = p.lot_code.trim().to_string();
    if lot_code.is_empty() {
        c.bad("platform.lot_code", "must not be empty");
    } else if lot_code.chars().any(char::is_control) {
        c.bad("platform.lot_code", "must not contain control characters");
    } else if lot_code == EXAMPLE_LOT_CODE {
        c.bad(
            "platform.lot_code",
            "is still the example value: put the lot code the platform assigned to this lot",
        );
    }

    let token = match (&p.token, &p.token_file) {
        (Some(t), None) => {
            if t.expose().trim().is_empty() {
                c.bad("platform.token", "must not be empty");
            } else if t.expose().trim() == EXAMPLE_TOKEN {
                c.bad(
                    "platform.token",
                    "is still the example value: put the token the platform assigned to this lot",
                );
            }
            Some(TokenSource::Inline(t.clone()))
        }
        (None, Some(f)) => Some(TokenSource::File(f.clone())),
        (Some(_), Some(_)) => {
            c.bad(
                "platform.token",
                "give exactly one of `token` and `token_file`, not both",
            );
            None
        }
        (None, None) => {
            c.bad(
                "platform.token",
                "missing: give `token = \"…\"` or `token_file = \"/etc/lotlink/token\"`",
            );
            None
        }
    };

    let ts_unit = match p.ts_unit.as_str() {
        "ms" => Some(TsUnitSetting::Fixed(TsUnit::Ms)),
        "s" => Some(TsUnitSetting::Fixed(TsUnit::S)),
        "auto" => Some(TsUnitSetting::Auto),
        other => {
            c.bad(
                "platform.ts_unit",
                format!("{other:?}: allowed are \"ms\", \"s\", \"auto\""),
            );
            None
        }
    };
    let auth_case = match p.auth_case.as_str() {
        "lower" => Some(AuthCase::Lower),
        "upper" => Some(AuthCase::Upper),
        other => {
            c.bad(
                "platform.auth_case",
                format!("{other:?}: allowed are \"lower\", \"upper\""),
            );
            None
        }
    };
    let data_encoding = match p.data_encoding.as_str() {
        "object" => Some(DataEncodingSetting::Fixed(DataEncoding::Object)),
        "string" => Some(DataEncodingSetting::Fixed(DataEncoding::String)),
        "auto" => Some(DataEncodingSetting::Auto),
        other => {
            c.bad(
                "platform.data_encoding",
                format!("{other:?}: allowed are \"object\", \"string\", \"auto\""),
            );
            None
        }
    };
    let heartbeat_interval = c.duration_in(
        "platform.heartbeat_interval",
        &p.heartbeat_interval,
        Duration::from_secs(1)..=Duration::from_secs(3600),
        "must be between 1s and 1h (the platform expects 60s)",
    );
    let request_timeout = c.duration_in(
        "platform.request_timeout",
        &p.request_timeout,
        Duration::from_millis(100)..=Duration::from_secs(300),
        "must be between 100ms and 300s",
    );
    let retry_max = c.duration_in(
        "platform.retry_max",
        &p.retry_max,
        Duration::from_secs(1)..=Duration::from_secs(300),
        "must be between 1s and 5m",
    );
    let max_batch = if (1..=100).contains(&p.max_batch) {
        usize::try_from(p.max_batch).ok()
    } else {
        c.bad(
            "platform.max_batch",
            format!("{} is not allowed: 1..=100", p.max_batch),
        );
        None
    };
    let max_body = c
        .take("platform.max_body", parse_size(&p.max_body))
        .and_then(|b| {
            if b < 64 * 1024 {
                c.bad(
                    "platform.max_body",
                    "must be at least 64KiB (one record with a full image is about 52 KB)",
                );
                None
            } else {
                Some(b)
            }
        });
    let timezone = match p.timezone.parse::<chrono_tz::Tz>() {
        Ok(tz) => Some(tz),
        Err(_) => {
            c.bad(
                "platform.timezone",
                format!(
                    "{:?} is not a time zone this build has; it has {}",
                    p.timezone,
                    known_time_zones()
                ),
            );
            None
        }
    };

    let max_disk = c
        .take("outbox.max_disk", parse_size(&raw.outbox.max_disk))
        .and_then(|b| {
            if b < 1 << 20 {
                c.bad("outbox.max_disk", "must be at least 1MiB");
                None
            } else {
                Some(b)
            }
        });
    if raw.outbox.path.as_os_str().is_empty() {
        c.bad("outbox.path", "must not be empty");
    }

    let total = match raw.space.total {
        None => {
            c.bad("space.total", "missing: the lot's total number of spaces");
            None
        }
        Some(t) if (0..1_000_000_000).contains(&t) => u32::try_from(t).ok(),
        Some(t) => {
            c.bad("space.total", format!("{t} is not allowed: 0..=999999999"));
            None
        }
    };

    let space_source = match raw.space.source.as_deref() {
        None if raw.loops.is_empty() => Some(SpaceSource::Plates),
        None | Some("loops") => Some(SpaceSource::Loops),
        Some("plates") => Some(SpaceSource::Plates),
        Some(other) => {
            c.bad(
                "space.source",
                format!("{other:?}: allowed are \"loops\", \"plates\""),
            );
            None
        }
    };
    if space_source == Some(SpaceSource::Loops) && raw.loops.is_empty() {
        c.bad(
            "space.source",
            "\"loops\" needs at least one [[loop]]; use \"plates\" to count camera passes",
        );
    }
    let devices = devices::validate_devices(
        &mut c,
        raw.mqtt.as_ref(),
        raw.http.as_ref(),
        &raw.camera,
        &raw.loops,
        &lot_code,
    );

    let listen = match raw.status.listen.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            c.bad(
                "status.listen",
                format!(
                    "{:?} is not an address:port such as \"127.0.0.1:9870\"",
                    raw.status.listen
                ),
            );
            None
        }
    };

    if let (Some(h), Some(s)) = (&devices.http, listen) {
        let same_ip =
            h.listen.ip() == s.ip() || h.listen.ip().is_unspecified() || s.ip().is_unspecified();
        if h.listen.port() == s.port() && h.listen.port() != 0 && same_ip {
            c.bad(
                "http.listen",
                format!(
                    "{} is the status endpoint's address: give the camera listener its own port",
                    h.listen
                ),
            );
        }
    }

    let status_token = raw.status.token.clone();
    if let Some(t) = &status_token {
        if t.expose().trim().len() < 16 {
            c.bad("status.token", "must be at least 16 characters");
        }
    }
    if listen.is_some_and(|a| !a.ip().is_loopback()) && status_token.is_none() {
        c.bad(
            "status.token",
            "missing: `listen` is not a loopback address, so every request must carry a bearer token",
        );
    }

    let management = validate_management(&mut c, raw, &lot_code);

    if !c.0.is_empty() {
        return Err(ConfigErrors {
            path: None,
            problems: c.0,
        });
    }
    // Every Option below is Some: a None always pushed a problem above.
    match (
        token,
        ts_unit,
        auth_case,
        data_encoding,
        heartbeat_interval,
        request_timeout,
        retry_max,
        max_batch,
        max_body,
        timezone,
        max_disk,
        total,
        listen,
        space_source,
    ) {
        (
            Some(token),
            Some(ts_unit),
            Some(auth_case),
            Some(data_encoding),
            Some(heartbeat_interval),
            Some(request_timeout),
            Some(retry_max),
            Some(max_batch),
            Some(max_body),
            Some(timezone),
            Some(max_disk),
            Some(total),
            Some(listen),
            Some(source),
        ) => Ok(Config {
            platform: PlatformConfig {
                url,
                lot_code,
                token,
                ts_unit,
                auth_case,
                data_encoding,
                heartbeat_interval,
                request_timeout,
                retry_max,
                max_batch,
                max_body,
                timezone,
                ca_file: p.ca_file.clone(),
            },
            outbox: OutboxConfig {
                path: raw.outbox.path.clone(),
                max_disk,
            },
            space: SpaceConfig { total, source },
            status: StatusConfig {
                listen,
                token: status_token,
            },
            devices,
            management,
            log_level: raw.log.level,
            hash: String::new(),
        }),
        _ => Err(ConfigErrors {
            path: None,
            problems: vec![Problem::new("config", "internal: validation incomplete")],
        }),
    }
}

fn validate_management(
    c: &mut Collector,
    raw: &RawConfig,
    lot_code: &str,
) -> Option<ManagementConfig> {
    let default = RawManagement::default();
    let m = raw.management.as_ref().unwrap_or(&default);
    let enabled = m.enabled.unwrap_or(raw.mqtt.is_some());
    if enabled && raw.mqtt.is_none() {
        c.bad(
            "management.enabled",
            "remote management needs the site broker: add an [mqtt] table",
        );
    }
    let prefix = m
        .topic_prefix
        .as_deref()
        .unwrap_or("lotlink/{lot_code}")
        .replace("{lot_code}", lot_code);
    let prefix = prefix.trim_end_matches('/').to_string();
    if prefix.is_empty() || prefix.contains(['+', '#']) || prefix.starts_with('$') {
        c.bad(
            "management.topic_prefix",
            format!(
                "{prefix:?}: must be a topic without wildcards (+ #), not empty, not $-prefixed"
            ),
        );
    }
    if m.hmac_key.as_ref().is_some_and(|k| k.expose().len() < 16) {
        c.bad("management.hmac_key", "must be at least 16 characters");
    }
    if m.hmac_key.is_some() && m.hmac_key_file.is_some() {
        c.bad(
            "management.hmac_key_file",
            "give at most one of hmac_key and hmac_key_file",
        );
    }
    let hmac_key = match (&m.hmac_key, &m.hmac_key_file) {
        (Some(k), _) => Some(TokenSource::Inline(k.clone())),
        (None, Some(f)) => Some(TokenSource::File(f.clone())),
        (None, None) => None,
    };
    let watch = c.duration_in(
        "management.watch",
        &m.watch,
        Duration::from_secs(1)..=Duration::from_secs(3600),
        "must be between 1s and 1h",
    );
    match (enabled, watch) {
        (true, Some(watch)) => Some(ManagementConfig {
            topic_prefix: prefix,
            hmac_key,
            allow_plaintext_secrets: m.allow_plaintext_secrets.unwrap_or(false),
            watch,
        }),
        _ => None,
    }
}

/// The short hash of a config file's text shown by `/status`.
pub(crate) fn text_hash(text: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(text.as_bytes())[..8])
}

/// Parse and validate TOML text (no file access). On failure the error holds every problem
/// of the file: syntax, unknown keys, wrong types and missing keys (with line and column),
/// and every value [`validate`] refuses (with the line of its key).
pub fn from_str(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let (raw, mut problems) = spans::parse_all::<RawConfig>(text);
    if let Some(raw) = raw {
        match validate(&raw) {
            Ok(mut cfg) if problems.is_empty() => {
                cfg.hash = text_hash(text);
                return Ok(cfg);
            }
            Ok(_) => {}
            Err(e) => {
                // A key the parse already reported holds a placeholder: say nothing more of it.
                let semantic: Vec<Problem> = e
                    .problems
                    .into_iter()
                    .filter(|p| !problems.iter().any(|s| spans::covers(&s.key, &p.key)))
                    .collect();
                problems.extend(semantic);
            }
        }
    }
    Err(ConfigError::Invalid(
        ConfigErrors {
            path: None,
            problems,
        }
        .locate(path, text),
    ))
}

/// Read, parse and validate a configuration file, and check the files it names can be read:
/// `token_file`, and `ca_file` as PEM certificates.
pub(crate) fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let cfg = from_str(path, &text)?;
    let mut problems = Vec::new();
    if let Err(message) = resolve_token(&cfg.platform.token) {
        problems.push(Problem::new("platform.token_file", message));
    }
    if let Some(ca) = &cfg.platform.ca_file {
        if let Err(message) = crate::tls::load_ca_file(ca) {
            problems.push(Problem::new("platform.ca_file", message));
        }
    }
    if !problems.is_empty() {
        return Err(ConfigError::Invalid(
            ConfigErrors {
                path: None,
                problems,
            }
            .locate(path, &text),
        ));
    }
    Ok(cfg)
}

/// The token itself: inline, or the first line of the token file.
pub(crate) fn resolve_token(src: &TokenSource) -> Result<Secret, String> {
    match src {
        TokenSource::Inline(s) => Ok(s.clone()),
        TokenSource::File(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            let t = text.lines().next().unwrap_or("").trim();
            if t.is_empty() {
                Err(format!("{} is empty", p.display()))
            } else {
                Ok(Secret::new(t))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The binary has no Unicode tables for host names (idna_adapter ~1.0 in Cargo.toml,
    /// BENCHMARKS.md P6): ASCII names and the xn-- form of an internationalised one only.
    #[test]
    fn url_host_names_are_ascii_or_the_xn_form_of_an_internationalised_one() {
        assert!(reqwest::Url::parse("https://platform.example.cn/").is_ok());
        assert!(reqwest::Url::parse("https://192.168.1.64/snapshot.jpg").is_ok());
        assert!(reqwest::Url::parse("https://xn--fiqs8s.xn--fiqs8s/").is_ok());
        assert!(reqwest::Url::parse("https://中国.中国/").is_err());
    }

    const GOOD: &str = r#"
[platform]
url = "https://platform.example.cn/"
lot_code = "350"
token = "test-token"

[outbox]
path = "/tmp/x"

[space]
total = 500
"#;

    #[test]
    fn a_minimal_file_validates_with_the_documented_defaults() {
        let c = from_str(Path::new("t.toml"), GOOD).expect("valid");
        assert_eq!(c.platform.url, "https://platform.example.cn");
        assert_eq!(c.platform.ts_unit, TsUnitSetting::Auto);
        assert_eq!(c.platform.auth_case, AuthCase::Lower);
        assert_eq!(c.platform.data_encoding, DataEncodingSetting::Auto);
        assert_eq!(c.platform.heartbeat_interval, Duration::from_secs(60));
        assert_eq!(c.platform.request_timeout, Duration::from_secs(10));
        assert_eq!(c.platform.retry_max, Duration::from_secs(300));
        assert_eq!(c.platform.ca_file, None);
        assert_eq!(c.platform.max_batch, 100);
        assert_eq!(c.platform.max_body, 2 << 20);
        assert_eq!(c.platform.timezone, chrono_tz::Asia::Shanghai);
        assert_eq!(c.outbox.max_disk, 2 << 30);
        assert_eq!(c.space.total, 500);
        assert_eq!(c.status.listen, "127.0.0.1:9870".parse().unwrap());
    }

    #[test]
    fn durations_out_of_range_and_a_ca_file_for_plain_http_are_refused_by_name() {
        let text = GOOD
            .replace(
                "lot_code = \"350\"",
                "lot_code = \"350\"\nretry_max = \"10m\"\nrequest_timeout = \"5ms\"",
            )
            .replace("https://", "http://")
            .replace("[outbox]", "ca_file = \"/etc/ca.pem\"\n\n[outbox]");
        let err = from_str(Path::new("t.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("platform.retry_max: must be between 1s and 5m"),
            "{err}"
        );
        assert!(
            err.contains("platform.request_timeout: must be between 100ms and 300s"),
            "{err}"
        );
        assert!(
            err.contains("platform.ca_file: only applies to an https:// platform.url"),
            "{err}"
        );
    }

    #[test]
    fn the_shipped_example_config_validates() {
        let text = include_str!("../config/lotlink.toml")
            .replace(EXAMPLE_TOKEN, "a-real-token")
            .replace(EXAMPLE_LOT_CODE, "350");
        let c = from_str(Path::new("config/lotlink.toml"), &text).expect("example is valid");
        assert_eq!(c.platform.max_batch, 100);
        assert!(c.management.is_none(), "no broker, no management");
        assert_eq!(c.hash.len(), 16);
    }

    #[test]
    fn the_example_token_and_lot_code_are_refused_so_a_fresh_install_does_not_start() {
        let text = include_str!("../config/lotlink.toml");
        let err = from_str(Path::new("lotlink.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("platform.token: is still the example value"),
            "{err}"
        );
        assert!(
            err.contains("platform.lot_code: is still the example value"),
            "{err}"
        );
        assert!(
            err.starts_with("lotlink.toml:"),
            "names the file and line: {err}"
        );
    }

    #[test]
    fn a_status_endpoint_off_loopback_needs_a_token() {
        let open = format!("{GOOD}\n[status]\nlisten = \"0.0.0.0:9870\"\n");
        let err = from_str(Path::new("t.toml"), &open)
            .unwrap_err()
            .to_string();
        assert!(err.contains("status.token: missing"), "{err}");
        let with = open.replace("listen =", "token = \"0123456789abcdef-x\"\nlisten =");
        let c = from_str(Path::new("t.toml"), &with).expect("valid with a token");
        assert!(c.status.token.is_some());
        assert!(!format!("{c:?}").contains("0123456789abcdef-x"));
    }

    #[test]
    fn management_follows_the_broker_and_fills_in_the_lot_code() {
        let with_broker = format!("{GOOD}\n[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n");
        let c = from_str(Path::new("t.toml"), &with_broker).expect("valid");
        let m = c.management.expect("on by default with a broker");
        assert_eq!(m.topic_prefix, "lotlink/350");
        assert_eq!(m.watch, Duration::from_secs(60));
        let off = format!("{with_broker}\n[management]\nenabled = false\n");
        assert!(from_str(Path::new("t.toml"), &off)
            .unwrap()
            .management
            .is_none());
        let wild = format!("{with_broker}\n[management]\ntopic_prefix = \"site/#\"\n");
        let err = from_str(Path::new("t.toml"), &wild)
            .unwrap_err()
            .to_string();
        assert!(err.contains("management.topic_prefix"), "{err}");
        let no_broker = format!("{GOOD}\n[management]\nenabled = true\n");
        let err = from_str(Path::new("t.toml"), &no_broker)
            .unwrap_err()
            .to_string();
        assert!(err.contains("[mqtt]"), "{err}");
    }

    #[test]
    fn every_bad_value_is_reported_with_its_key_and_line() {
        let text = r#"
[platform]
url = "ftp://x"
lot_code = ""
token = "t"
ts_unit = "minutes"
max_batch = 101
max_body = "2 parsecs"
timezone = "Mars/Olympus"
heartbeat_interval = "soon"

[space]
total = -1
"#;
        let err = from_str(Path::new("bad.toml"), text).unwrap_err();
        let ConfigError::Invalid(errs) = err else {
            panic!("expected validation errors")
        };
        let keys: Vec<_> = errs.problems.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "platform.url",
            "platform.lot_code",
            "platform.ts_unit",
            "platform.max_batch",
            "platform.max_body",
            "platform.timezone",
            "platform.heartbeat_interval",
            "space.total",
        ] {
            assert!(keys.contains(&k), "{k} not reported in {keys:?}");
        }
        let shown = errs.to_string();
        assert!(shown.contains("bad.toml:7: platform.max_batch: 101 is not allowed: 1..=100"));
        assert!(shown.contains("bad.toml:3: platform.url"));
    }

    #[test]
    fn an_unknown_key_is_an_error_naming_the_line() {
        let text = GOOD.replace("token = \"test-token\"", "token = \"t\"\ntokne = \"x\"");
        let err = from_str(Path::new("t.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("tokne"), "{err}");
        assert!(err.contains("line 6"), "{err}");
    }

    #[test]
    fn a_malformed_secret_line_is_reported_by_line_without_its_value() {
        let secret = "s3cret-value-0123";
        for (line, text) in [
            (
                5,
                GOOD.replace("token = \"test-token\"", &format!("token = \"{secret}")),
            ),
            (
                5,
                GOOD.replace("token = \"test-token\"", &format!("token = {secret}")),
            ),
            (
                5,
                GOOD.replace("token = \"test-token\"", &format!("token = '{secret}' x")),
            ),
            (
                15,
                format!("{GOOD}\n[mqtt]\nurl = \"mqtt://h\"\npassword = \"{secret}"),
            ),
        ] {
            let err = from_str(Path::new("t.toml"), &text)
                .unwrap_err()
                .to_string();
            assert!(!err.contains(secret), "{err}");
            assert!(!err.contains("s3cret"), "{err}");
            assert!(err.contains("t.toml"), "{err}");
            assert!(err.contains(&format!("line {line},")), "{err}");
        }
        // A syntax error elsewhere in a file with a secret: the line is not quoted either.
        let text = format!("{GOOD}\nbroken = = 1\n");
        let err = from_str(Path::new("t.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("test-token"), "{err}");
        assert!(err.contains("line 13,"), "{err}");
    }

    #[test]
    fn token_and_token_file_together_are_refused() {
        let text = GOOD.replace(
            "token = \"test-token\"",
            "token = \"t\"\ntoken_file = \"/x\"",
        );
        let err = from_str(Path::new("t.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("exactly one"), "{err}");
    }

    #[test]
    fn a_missing_token_file_is_reported_by_load() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        let text = GOOD.replace(
            "token = \"test-token\"",
            &format!("token_file = \"{}/nope\"", dir.path().display()),
        );
        std::fs::write(&cfg, text).unwrap();
        let err = load(&cfg).unwrap_err().to_string();
        assert!(err.contains("platform.token_file"), "{err}");
        std::fs::write(dir.path().join("nope"), "  s3cret \n").unwrap();
        let c = load(&cfg).expect("now readable");
        assert_eq!(resolve_token(&c.platform.token).unwrap().expose(), "s3cret");
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let c = from_str(Path::new("t.toml"), GOOD).unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("test-token"));
        assert!(dbg.contains("***"));
    }

    #[test]
    fn sizes_and_durations_parse_like_an_operator_writes_them() {
        assert_eq!(parse_size("2MiB"), Ok(2 * 1024 * 1024));
        assert_eq!(parse_size("512 KiB"), Ok(512 * 1024));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
    }
}
