//! `lotlink run`: the gateway as a service. Loads the config file, starts the
//! [`Gateway`](crate::app::Gateway) with the real drivers, and then supervises it:
//!
//! - **SIGHUP** re-reads the file. An invalid file is logged problem by problem and the
//!   gateway keeps running on the old config; a valid one is applied part by part
//!   ([`Gateway::reload`](crate::app::Gateway::reload)).
//! - **Config push** ([`crate::manage`]) asks for a config to be applied through the same
//!   path, one request at a time.
//! - **systemd** (`Type=notify`, when `NOTIFY_SOCKET` is set): `READY=1` once the outbox is
//!   open and the drivers started, `STATUS=` with the outbox depth every 10 s,
//!   `RELOADING=1`/`READY=1` around a reload, `STOPPING=1` at shutdown, and `WATCHDOG=1` at
//!   half the watchdog period while the uploader's loop shows signs of life.
//!
//! Everything is in-process with a shutdown future, so tests run it too.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lotlink_drivers::CancellationToken;
use sd_notify::NotifyState;
use tokio::sync::{mpsc, watch};

use crate::app::{AppError, DriverFactory, Gateway, RunOptions};
use crate::config::{self, Config, ConfigError};
use crate::hardware;
use crate::manage::{Control, ManagementState, Manager};

/// Errors of the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    App(#[from] AppError),
    #[error(transparent)]
    Hardware(#[from] hardware::HardwareError),
}

/// How often the systemd `STATUS=` line is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// `RELOADING=1` with the `MONOTONIC_USEC=` systemd wants beside it.
fn notify_reloading() {
    match monotonic_usec() {
        Some(now) => notify(&[NotifyState::Reloading, NotifyState::MonotonicUsec(now)]),
        None => notify(&[NotifyState::Reloading]),
    }
}

/// `CLOCK_MONOTONIC` in microseconds. Not sd-notify 0.4's `monotonic_usec_now`: it multiplies
/// in the C `time_t`, which is 32 bits on armv7, so after 35 minutes of uptime it overflowed
/// (a panic in debug builds, a negative `MONOTONIC_USEC` in release builds).
fn monotonic_usec() -> Option<i128> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        #[allow(unsafe_code)]
        // SAFETY: clock_gettime only writes the timespec it is given, which lives here.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        // `time_t` and `c_long` are i32 on armv7 and i64 elsewhere: widen them either way.
        #[allow(clippy::useless_conversion)]
        (rc == 0).then(|| usec_of(i64::from(ts.tv_sec), i64::from(ts.tv_nsec)))
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// Seconds and nanoseconds as microseconds, in arithmetic wide enough for any uptime.
fn usec_of(sec: i64, nsec: i64) -> i128 {
    i128::from(sec) * 1_000_000 + i128::from(nsec / 1_000)
}

fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Warn when the config file (it holds the token) can be read by others.
fn check_permissions(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(path) {
            if m.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), mode = format!("{:o}", m.permissions().mode() & 0o777), "the config file holds the platform token but others can read it: chmod 600 it");
            }
        }
    }
}

/// Options of the daemon besides the file.
#[derive(Clone, Default)]
pub struct DaemonOptions {
    /// Passed to the gateway (tests shorten the back-off).
    pub run: RunOptions,
}

/// Run the daemon on the config file at `path` until `shutdown`.
pub async fn run(
    path: &Path,
    options: DaemonOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let cfg = config::load(path)?;
    check_permissions(path);
    let factory: DriverFactory = Arc::new(hardware::build);
    let hw = factory(&cfg)?;
    tracing::info!(drivers = ?hw, "drivers configured");
    let state = Arc::new(ManagementState::default());
    let opts = RunOptions {
        driver_status: hw.statuses,
        driver_factory: Some(factory),
        management: Some(state.clone()),
        ..options.run
    };
    let mut gw = Gateway::start(&cfg, hw.drivers, opts).await?;

    let stop = CancellationToken::new();
    let (control_tx, mut control_rx) = mpsc::channel::<Control>(1);
    let (config_tx, config_rx) = watch::channel(cfg.clone());
    let manager = Manager {
        path: path.to_path_buf(),
        state,
        outbox: gw.outbox.clone(),
        health: gw.health.clone(),
        control: control_tx,
        config: config_rx,
    };
    let manager = tokio::spawn(manager.run(stop.clone()));

    let status_line = |gw: &Gateway| {
        format!(
            "STATUS=outbox {} pending, {} dead letters",
            gw.outbox.len(),
            gw.outbox.dead_len()
        )
    };
    notify(&[NotifyState::Ready]);
    tracing::info!(config = %path.display(), hash = %cfg.hash, "lotlink running");

    let mut watchdog_usec = 0u64;
    let watchdog = sd_notify::watchdog_enabled(false, &mut watchdog_usec)
        .then(|| Duration::from_micros(watchdog_usec) / 2);
    let mut watchdog_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    let mut status_tick = tokio::time::interval(STATUS_EVERY);
    let mut hup = hangups();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(()) = hup.recv() => {
                notify_reloading();
                reload_file(&mut gw, path, &config_tx).await;
                notify(&[NotifyState::Ready]);
            }
            Some(Control::Apply { cfg, reply }) = control_rx.recv() => {
                notify_reloading();
                let r = gw.reload(*cfg).await.map_err(|e| e.to_string());
                let _ = config_tx.send(gw.config().clone());
                let _ = reply.send(r);
                notify(&[NotifyState::Ready]);
            }
            _ = watchdog_tick.tick(), if watchdog.is_some() => {
                // A wedged uploader stops the pings; systemd then restarts the daemon.
                let window = (gw.config().platform.request_timeout + Duration::from_secs(5))
                    .max(Duration::from_secs(20));
                let store = gw.outbox.health();
                if let crate::outbox::StoreHealth::Broken { reason } = &store {
                    tracing::error!(reason = %reason, "the outbox cannot recover by itself: not pinging the watchdog (systemd will restart lotlink)");
                } else if gw.uploader_alive(window) {
                    notify(&[NotifyState::Watchdog]);
                } else {
                    tracing::error!(window_s = window.as_secs(), "the uploader shows no sign of life: not pinging the watchdog (systemd will restart lotlink)");
                }
            }
            _ = status_tick.tick() => {
                let line = status_line(&gw);
                notify(&[NotifyState::Status(line.trim_start_matches("STATUS="))]);
            }
        }
    }
    notify(&[NotifyState::Stopping]);
    tracing::info!("shutting down");
    stop.cancel();
    let _ = manager.await;
    gw.stop().await;
    Ok(())
}

/// SIGHUP as a stream (a closed one where signals are not available).
fn hangups() -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel(1);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(mut s) => {
                tokio::spawn(async move {
                    while s.recv().await.is_some() {
                        // Several HUPs while one reload runs make one more reload.
                        let _ = tx.try_send(());
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "SIGHUP cannot be handled; reload by restarting"),
        }
    }
    #[cfg(not(unix))]
    drop(tx);
    rx
}

/// Re-read the file and apply it, or log why not.
async fn reload_file(gw: &mut Gateway, path: &Path, config_tx: &watch::Sender<Config>) {
    match config::load(path) {
        Err(ConfigError::Invalid(errs)) => {
            for line in errs.to_string().lines() {
                tracing::error!(problem = %line, "config reload refused; still running on the previous config");
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "config reload refused; still running on the previous config");
        }
        Ok(cfg) => {
            check_permissions(path);
            let hash = cfg.hash.clone();
            match gw.reload(cfg).await {
                Ok(parts) if parts.is_empty() => {
                    tracing::info!(hash = %hash, "config reloaded: nothing changed");
                }
                Ok(parts) => tracing::info!(hash = %hash, parts = ?parts, "config reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "config reload failed; still running on the previous config");
                }
            }
            let _ = config_tx.send(gw.config().clone());
        }
    }
}

/// The default config path.
pub fn default_path() -> PathBuf {
    PathBuf::from("/etc/lotlink/lotlink.toml")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_usec_survives_uptimes_past_what_32_bits_of_microseconds_hold() {
        // 2,148 s is the first whole second whose microseconds do not fit an i32: where
        // sd-notify's own helper broke on armv7.
        assert_eq!(usec_of(2_148, 999_999), 2_148_000_999);
        assert_eq!(usec_of(400 * 86_400, 0), 34_560_000_000_000, "400 days up");
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        let now = monotonic_usec().expect("CLOCK_MONOTONIC");
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        assert!(now > 0 && monotonic_usec().unwrap() >= now, "monotonic");
    }
}
