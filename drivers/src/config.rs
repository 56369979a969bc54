//! What the drivers' configuration has in common: the trait each driver's config table
//! implements, the collector of problems (each with its key path, for `check-config`), and
//! the checks most keys need (a choice of names, a number or duration in a range).
//!
//! Each driver owns its table: a `#[serde(deny_unknown_fields)]` struct with a doc comment
//! per key (e.g. [`crate::serial::config::CameraConfig`]) and a pure `validate` that turns
//! it into the driver's own settings or reports every problem. The gateway only splits a
//! `[[camera]]` or `[[loop]]` table on its `driver` key and hands the rest to the driver.

use std::time::Duration;

use serde::de::DeserializeOwned;

/// One driver's config table, as written.
pub trait DriverConfig: DeserializeOwned {
    /// What validation makes of the table: the driver's own settings.
    type Settings;
    /// What validation needs besides the table (e.g. a key the gateway reads for every
    /// driver); `()` when nothing.
    type Context;
    /// Check every key, report each problem at `at.key(…)`, and return the settings when
    /// nothing is wrong. Pure.
    fn validate(
        &self,
        at: &KeyPath,
        context: &Self::Context,
        problems: &mut Problems,
    ) -> Option<Self::Settings>;
}

/// Where a table is in the file, e.g. `camera.2` (the second `[[camera]]`, 1-based as a
/// person counts them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPath(String);

impl KeyPath {
    /// The table at `path`.
    pub fn new(path: impl Into<String>) -> Self {
        KeyPath(path.into())
    }

    /// The dotted path of `key` in this table.
    pub fn key(&self, key: &str) -> String {
        if self.0.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.0)
        }
    }
}

/// One problem: the dotted key and what is wrong (and what is allowed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// E.g. `camera.2.port`.
    pub key: String,
    /// E.g. `missing: the serial device, e.g. "/dev/serial/by-id/usb-…"`.
    pub message: String,
}

/// Every problem found, in the order found.
#[derive(Debug, Default)]
pub struct Problems(Vec<Problem>);

impl Problems {
    /// Record a problem with `key`.
    pub fn bad(&mut self, key: &str, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.to_string(),
            message: message.into(),
        });
    }

    /// The value, or record the error with `key`.
    pub fn take<T>(&mut self, key: &str, r: Result<T, String>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(m) => {
                self.bad(key, m);
                None
            }
        }
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The problems, in the order found.
    pub fn into_vec(self) -> Vec<Problem> {
        self.0
    }
}

/// Parse a duration like "60s", "500ms", "2m", "1h 30m".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration ({e}); write e.g. \"60s\" or \"500ms\""))
}

/// Parse a size like "2MiB", "512KiB", "1GB", "1000" (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "{s:?}: unknown unit {other:?}; write e.g. \"2MiB\", \"512KiB\", \"1GB\""
            ))
        }
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size; write e.g. \"2MiB\""))?;
    #[allow(clippy::cast_precision_loss)] // sizes far below 2^52 bytes are exact
    let bytes = n * mult as f64;
    if !(bytes.is_finite() && (0.0..1.8e19).contains(&bytes)) {
        return Err(format!("{s:?} is out of range"));
    }
    // In range and not negative: checked above.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(bytes as u64)
}

/// One of the `allowed` names (`default` when not written).
pub fn choice<T: Copy>(
    p: &mut Problems,
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
    p.bad(key, format!("{v:?}: allowed are {}", names.join(", ")));
    None
}

/// A whole number in `lo..=hi` (`default` when not written).
pub fn ranged(
    p: &mut Problems,
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
        p.bad(key, format!("{v} is not allowed: {lo}..={hi}"));
        None
    }
}

/// A duration in `lo..=hi` (`default` when not written).
pub fn duration_in(
    p: &mut Problems,
    key: &str,
    v: Option<&str>,
    default: Duration,
    lo: Duration,
    hi: Duration,
) -> Option<Duration> {
    let d = match v {
        None => default,
        Some(s) => p.take(key, parse_duration(s))?,
    };
    if d < lo || d > hi {
        p.bad(
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

/// A serial baud rate, default 9600.
pub fn baud(p: &mut Problems, key: &str, v: Option<i64>) -> Option<u32> {
    ranged(p, key, v, 9600, 300, 4_000_000).and_then(|b| u32::try_from(b).ok())
}

/// A key this driver has, but not in the mode written (e.g. `topic` with a Vzenith MQTT
/// camera): giving it is a mistake worth saying.
pub fn not_for(p: &mut Problems, key: &str, given: bool, what: &str) {
    if given {
        p.bad(key, format!("does not apply here: {what}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_report_the_key_and_what_is_allowed() {
        let mut p = Problems::default();
        let at = KeyPath::new("camera.2");
        assert_eq!(
            choice(
                &mut p,
                &at.key("gate"),
                Some("shut"),
                0,
                &[("none", 0), ("open", 1)]
            ),
            None
        );
        assert_eq!(
            ranged(&mut p, &at.key("baud"), Some(5), 9600, 300, 9600),
            None
        );
        assert_eq!(
            duration_in(
                &mut p,
                &at.key("timeout"),
                Some("2d"),
                Duration::ZERO,
                Duration::ZERO,
                Duration::from_secs(60)
            ),
            None
        );
        assert_eq!(baud(&mut p, "x", None), Some(9600));
        let v = p.into_vec();
        assert_eq!(v[0].key, "camera.2.gate");
        assert_eq!(v[0].message, "\"shut\": allowed are \"none\", \"open\"");
        assert_eq!(v[1].message, "5 is not allowed: 300..=9600");
        assert_eq!(v[2].key, "camera.2.timeout");
        assert!(v[2].message.starts_with("2days is not allowed"), "{v:?}");
        assert_eq!(v.len(), 3);
    }
}
