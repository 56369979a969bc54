//! Where the log goes and how much of it: journald (structured fields) when systemd
//! connected stderr to the journal, else text on stderr, with colour codes only when stderr
//! is a terminal (never in files or pipes; `NO_COLOR` turns them off there too).
//!
//! The level, first match wins:
//! 1. `RUST_LOG`: a default level and `target=level` pairs, comma-separated (e.g.
//!    `info,lotlink::uploader=debug`; a target matches by prefix). tracing-subscriber's
//!    `Targets` syntax. `EnvFilter`'s span and field-value directives
//!    (`lotlink[upload{lot=…}]=debug`) are not supported (its regex engine cost the Pi
//!    binary ~0.2 MB, BENCHMARKS.md P6): such a directive enables nothing, and a `RUST_LOG`
//!    that does not parse at all is ignored;
//! 2. `-v` (debug), `-vv` (trace), `-q` (warn), `-qq` (error) on the command line;
//! 3. `[log] level` in the config file, applied at start and on every reload (SIGHUP or a
//!    pushed config);
//! 4. `info` (`warn` for the demo).
//!
//! Levels 1 and 2 pin the level: a config's `[log] level` is then ignored (said once).

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Registry;

use crate::config::LogLevel;

/// The filter that can be changed after start.
struct Reloadable {
    handle: reload::Handle<Targets, Registry>,
    /// Set by `RUST_LOG` or `-v`/`-q`: the config does not change it.
    pinned_by: Option<&'static str>,
}

static RELOAD: OnceLock<Reloadable> = OnceLock::new();

/// The level `-v`/`-q` ask for: `verbose - quiet` steps from `info`.
pub fn level_from_flags(verbose: u8, quiet: u8) -> Option<LogLevel> {
    match i16::from(verbose) - i16::from(quiet) {
        0 => None,
        1 => Some(LogLevel::Debug),
        n if n >= 2 => Some(LogLevel::Trace),
        -1 => Some(LogLevel::Warn),
        _ => Some(LogLevel::Error),
    }
}

/// Set up logging for the process (call once, before the runtime starts).
pub fn init(flags: Option<LogLevel>, default: LogLevel) {
    let (filter, pinned_by) = match std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| v.trim().parse::<Targets>().ok())
    {
        Some(f) => (f, Some("RUST_LOG")),
        None => match flags {
            Some(l) => (everything_at(l), Some("-v/-q")),
            None => (everything_at(default), None),
        },
    };
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let journal = stderr_is_journal()
        .then(|| tracing_journald::layer().ok())
        .flatten();
    let done = match journal {
        Some(j) => registry
            .with(j.with_syslog_identifier("lotlink".into()))
            .try_init(),
        None => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(colour_wanted()),
            )
            .try_init(),
    };
    if done.is_ok() {
        let _ = RELOAD.set(Reloadable { handle, pinned_by });
    }
}

/// Every target at `level`.
fn everything_at(level: LogLevel) -> Targets {
    Targets::new().with_default(match level {
        LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Trace => LevelFilter::TRACE,
    })
}

/// Colour codes on stderr: only on a terminal, and not with `NO_COLOR` set.
pub fn colour_wanted() -> bool {
    std::io::stderr().is_terminal()
        && !matches!(std::env::var_os("NO_COLOR"), Some(v) if !v.is_empty())
}

/// Apply a config's `[log] level` (start and reload). Does nothing when `RUST_LOG` or
/// `-v`/`-q` pinned the level, or when logging was not set up by [`init`] (tests).
pub fn apply_config(level: LogLevel) {
    let Some(r) = RELOAD.get() else {
        return;
    };
    if let Some(by) = r.pinned_by {
        tracing::debug!(
            config = level.as_str(),
            pinned_by = by,
            "[log] level ignored: the level is set by {by}"
        );
        return;
    }
    let wanted = everything_at(level);
    if r.handle.with_current(Targets::clone).ok().as_ref() == Some(&wanted) {
        return;
    }
    match r.handle.reload(wanted) {
        Ok(()) => tracing::info!(level = level.as_str(), "log level set from the config"),
        Err(e) => tracing::warn!(error = %e, "log level could not be changed"),
    }
}

/// Whether stderr is the journal stream systemd connected (`JOURNAL_STREAM` names its
/// device and inode; a shell that merely inherited the variable does not match).
fn stderr_is_journal() -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
            return false;
        };
        let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else {
            return false;
        };
        std::fs::metadata("/proc/self/fd/2")
            .is_ok_and(|m| dev.parse::<u64>() == Ok(m.dev()) && ino.parse::<u64>() == Ok(m.ino()))
    }
    #[cfg(not(unix))]
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v_and_q_step_the_level_from_info() {
        assert_eq!(level_from_flags(0, 0), None);
        assert_eq!(level_from_flags(1, 0), Some(LogLevel::Debug));
        assert_eq!(level_from_flags(3, 0), Some(LogLevel::Trace));
        assert_eq!(level_from_flags(0, 1), Some(LogLevel::Warn));
        assert_eq!(level_from_flags(0, 2), Some(LogLevel::Error));
        assert_eq!(level_from_flags(1, 1), None);
    }

    #[test]
    fn rust_log_takes_a_default_level_and_target_levels_matched_by_prefix() {
        use tracing::Level;
        let f: Targets = "info,lotlink::uploader=debug".parse().unwrap();
        assert!(f.would_enable("lotlink::uploader", &Level::DEBUG));
        assert!(!f.would_enable("lotlink::outbox", &Level::DEBUG));
        assert!(f.would_enable("rumqttc::state", &Level::INFO));
        // A bare target: that target only; `lotlink` is a prefix of `lotlink_drivers` too.
        let f: Targets = "lotlink=debug".parse().unwrap();
        assert!(f.would_enable("lotlink::cli", &Level::DEBUG));
        assert!(f.would_enable("lotlink_drivers::mqtt", &Level::DEBUG));
        assert!(!f.would_enable("hyper::proto", &Level::ERROR));
        let f: Targets = "debug".parse().unwrap();
        assert!(f.would_enable("anything", &Level::DEBUG));
        assert!(!f.would_enable("anything", &Level::TRACE));
    }

    #[test]
    fn a_config_level_filters_every_target_at_that_level() {
        let f = everything_at(LogLevel::Warn);
        assert!(f.would_enable("lotlink::uploader", &tracing::Level::WARN));
        assert!(!f.would_enable("lotlink::uploader", &tracing::Level::INFO));
        assert_eq!(f.default_level(), Some(LevelFilter::WARN));
    }
}
