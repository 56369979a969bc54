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
//! Before the gateway starts:
//!
//! - **Private files**: the process umask becomes 0o077 ([`private_umask`]) and an existing
//!   outbox directory is made 0700 with its files 0600 ([`make_private`]), so the store
//!   (plates and pictures) is readable by its owner only, whoever starts the daemon and
//!   whatever umask they had; under systemd the unit's `UMask=0077` says the same.
//! - **The gateway state file** ([`crate::state`], beside the config file) is loaded: the
//!   last accepted push version and the outbox path last in use. On the first start with it
//!   the version is taken over once from the outbox's old setting.
//! - **A moved outbox** (`[outbox] path` is not the recorded one, after a local edit): the
//!   old directory is opened, never created, and only if it exists. It still holding
//!   pending records stops the start with both paths, the count, and the ways out (move the
//!   old directory to the new path, put the old path back, or start once with
//!   `--abandon-old-outbox`, which leaves the old store untouched on disk). An old
//!   directory that is gone or empty is fine; the new path is recorded once the new store
//!   is open.
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
use crate::config::{Config, ConfigError};
use crate::hardware;
use crate::manage::{Control, ManagementState, Manager};
use crate::outbox::{Outbox, OutboxError, OutboxOptions};
use crate::state::{self, GatewayState, StateError};

/// Errors of the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    App(#[from] AppError),
    #[error(transparent)]
    Hardware(#[from] hardware::HardwareError),
    #[error(transparent)]
    State(#[from] StateError),
    /// `[outbox] path` was changed while the old store still holds records to upload.
    #[error("[outbox] path changed from {old} to {new}, but {old} still holds {pending} pending record(s) not yet uploaded: not starting, so that they are not left behind. Either stop here and move the old store to the new path (`mv {old} {new}`, the new path must not exist yet), or put `[outbox] path = \"{old}\"` back until `lotlink status` shows it empty, or start once with `lotlink run --abandon-old-outbox` to use the new path and leave the old store as it is on disk (its records are then NOT uploaded)")]
    OldOutboxPending {
        old: PathBuf,
        new: PathBuf,
        pending: u64,
    },
    /// `[outbox] path` was changed and the old store could not be opened to count it.
    #[error("[outbox] path changed from {old} to {new}, but the old store could not be opened to check it holds no pending records ({source}): not starting. Move the old store to the new path, put the old path back, or start once with `lotlink run --abandon-old-outbox` to leave it as it is on disk")]
    OldOutboxUnreadable {
        old: PathBuf,
        new: PathBuf,
        source: OutboxError,
    },
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
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
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
pub(crate) struct DaemonOptions {
    /// Passed to the gateway (tests shorten the back-off).
    pub run: RunOptions,
    /// `--abandon-old-outbox`: after a local change of `[outbox] path`, start on the new
    /// path even though the old store still holds pending records (left untouched).
    pub abandon_old_outbox: bool,
}

/// New files 0600 and directories 0700 from here on, whoever started the process: sled's
/// and the segment log's files hold plates and pictures. Process-wide.
pub(crate) fn private_umask() {
    #[cfg(unix)]
    #[allow(unsafe_code)]
    // SAFETY: umask only sets the process's file mode creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

/// Make an existing directory tree private: directories 0700, files without group and other
/// bits (symlinks are left alone). Problems are logged, not fatal: the open that follows
/// reports a store it cannot use.
pub(crate) fn make_private(dir: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // The directory itself may be a symlink to the real one (followed); below it,
        // symlinks are left alone.
        let mut todo = vec![std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())];
        let mut failed = 0usize;
        let mut first: Option<String> = None;
        while let Some(p) = todo.pop() {
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let mode = m.permissions().mode() & 0o7777;
            let want = if m.is_dir() {
                if let Ok(entries) = std::fs::read_dir(&p) {
                    todo.extend(entries.filter_map(|e| e.ok().map(|e| e.path())));
                }
                0o700
            } else if m.is_file() {
                mode & 0o700
            } else {
                continue;
            };
            if mode != want {
                if let Err(e) = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(want))
                {
                    failed += 1;
                    first.get_or_insert_with(|| format!("{}: {e}", p.display()));
                }
            }
        }
        if let Some(first) = first {
            tracing::warn!(path = %dir.display(), failed, first = %first, "could not make every file of the outbox private (0600, directories 0700)");
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// Whether two paths name the same directory (the same text, or both resolve to it).
fn same_dir(a: &Path, b: &Path) -> bool {
    a == b
        || matches!(
            (std::fs::canonicalize(a), std::fs::canonicalize(b)),
            (Ok(x), Ok(y)) if x == y
        )
}

/// After a local change of `[outbox] path`: may the gateway start on the new one? See the
/// module docs.
async fn check_outbox_move(
    saved: &GatewayState,
    new: &Path,
    abandon: bool,
) -> Result<(), DaemonError> {
    let Some(old) = saved.outbox_path() else {
        return Ok(());
    };
    if same_dir(&old, new) {
        return Ok(());
    }
    if !old.is_dir() {
        tracing::info!(old = %old.display(), new = %new.display(), "[outbox] path changed; the old directory is gone (moved or deleted)");
        return Ok(());
    }
    if abandon {
        tracing::warn!(old = %old.display(), new = %new.display(), "[outbox] path changed and --abandon-old-outbox given: the old store is left untouched on disk and whatever it still holds is NOT uploaded");
        return Ok(());
    }
    let path = old.clone();
    // Opened only to count; small cache, closed again before the new store opens.
    let counted = tokio::task::spawn_blocking(move || {
        Outbox::open(
            &path,
            OutboxOptions {
                cache_capacity: 1 << 20,
                ..OutboxOptions::default()
            },
        )
        .map(|(ob, _)| (ob.len(), ob.dead_len()))
    })
    .await
    .map_err(|e| OutboxError::Store(format!("open task failed: {e}")));
    match counted.and_then(|r| r) {
        Ok((0, dead)) => {
            if dead > 0 {
                tracing::warn!(old = %old.display(), new = %new.display(), dead, "[outbox] path changed; the old store has nothing pending but keeps its dead letters, which are not moved");
            } else {
                tracing::info!(old = %old.display(), new = %new.display(), "[outbox] path changed; the old store is empty");
            }
            Ok(())
        }
        Ok((pending, _)) => Err(DaemonError::OldOutboxPending {
            old,
            new: new.to_path_buf(),
            pending,
        }),
        Err(source) => Err(DaemonError::OldOutboxUnreadable {
            old,
            new: new.to_path_buf(),
            source,
        }),
    }
}

/// Once the store at `outbox_path` is open: take the push version over from the outbox on
/// the first start with a state file, and record the outbox path in use.
fn record_state(
    saved: &GatewayState,
    outbox: &Outbox,
    outbox_path: &Path,
) -> Result<(), StateError> {
    if saved.last_push_version().is_none() {
        let v = legacy_push_version(outbox);
        saved.set_last_push_version(v)?;
        tracing::info!(state = %saved.path().display(), last_push_version = v, "gateway state file created; the last push version is kept there from now on");
    }
    if saved.outbox_path().as_deref() != Some(outbox_path) {
        saved.set_outbox_path(outbox_path)?;
    }
    Ok(())
}

/// The push version the outbox kept before the state file existed (read once, to migrate).
fn legacy_push_version(outbox: &Outbox) -> u64 {
    outbox
        .settings()
        .config_version_v1()
        .ok()
        .flatten()
        .unwrap_or(0)
}

/// Run the daemon on the config file at `path` until `shutdown`.
pub(crate) async fn run(
    path: &Path,
    options: DaemonOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    private_umask();
    let effect = crate::manage::load_in_effect(path)?;
    log_in_effect(path, &effect);
    let cfg = effect.config;
    crate::logging::apply_config(cfg.log_level);
    check_permissions(&effect.file);
    let saved = Arc::new(GatewayState::load(&state::path_for(path))?);
    check_outbox_move(&saved, &cfg.outbox.path, options.abandon_old_outbox).await?;
    make_private(&cfg.outbox.path);
    let factory: DriverFactory = Arc::new(hardware::build);
    let hw = factory(&cfg)?;
    tracing::info!(drivers = ?hw, "drivers configured");
    let state = Arc::new(ManagementState::default());
    state.set_config_file(&effect.file);
    let opts = RunOptions {
        driver_status: hw.statuses,
        driver_factory: Some(factory),
        management: Some(state.clone()),
        ..options.run
    };
    let mut gw = Gateway::start(&cfg, hw.drivers, opts).await?;
    if let Err(e) = record_state(&saved, &gw.outbox, &cfg.outbox.path) {
        gw.stop().await;
        return Err(e.into());
    }

    let stop = CancellationToken::new();
    let (control_tx, mut control_rx) = mpsc::channel::<Control>(1);
    let (config_tx, config_rx) = watch::channel(cfg.clone());
    let mgmt = state.clone();
    let manager = Manager {
        path: path.to_path_buf(),
        state,
        saved,
        health: gw.health.clone(),
        control: control_tx,
        config: config_rx,
        status: gw.status_view(),
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
    tracing::info!(config = %effect.file.display(), hash = %cfg.hash, "lotlink running");

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
                reload_file(&mut gw, path, &config_tx, &mgmt).await;
                notify(&[NotifyState::Ready]);
            }
            Some(Control::Apply { cfg, reply }) = control_rx.recv() => {
                notify_reloading();
                let level = cfg.log_level;
                let r = gw.reload(*cfg).await.map_err(|e| e.to_string());
                if r.is_ok() {
                    crate::logging::apply_config(level);
                }
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

/// Say which config file is in effect (the pushed one, or the local one), and why a pushed
/// file that exists is not.
fn log_in_effect(local: &Path, effect: &crate::manage::InEffect) {
    if let Some(problem) = &effect.pushed_problem {
        tracing::error!(pushed = %crate::manage::pushed_path(local).display(), local = %local.display(), problem = %problem, "the pushed config file cannot be used: running on the local file (push a fixed config, or delete the pushed file)");
    } else if effect.file != local {
        tracing::info!(config = %effect.file.display(), local = %local.display(), "config in effect: the pushed file; the local file is not read while it exists (back to it: `lotlink push --revert`, or delete the pushed file and reload)");
    } else {
        tracing::info!(config = %local.display(), "config in effect: the local file");
    }
}

/// Re-read the config in effect and apply it, or log why not.
async fn reload_file(
    gw: &mut Gateway,
    path: &Path,
    config_tx: &watch::Sender<Config>,
    mgmt: &ManagementState,
) {
    match crate::manage::load_in_effect(path).map(|e| {
        log_in_effect(path, &e);
        (e.config, e.file)
    }) {
        Err(ConfigError::Invalid(errs)) => {
            for line in errs.to_string().lines() {
                tracing::error!(problem = %line, "config reload refused; still running on the previous config");
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "config reload refused; still running on the previous config");
        }
        Ok((cfg, file)) => {
            check_permissions(&file);
            crate::logging::apply_config(cfg.log_level);
            let hash = cfg.hash.clone();
            match gw.reload(cfg).await {
                Ok(parts) if parts.is_empty() => {
                    mgmt.set_config_file(&file);
                    tracing::info!(hash = %hash, "config reloaded: nothing changed");
                }
                Ok(parts) => {
                    mgmt.set_config_file(&file);
                    tracing::info!(hash = %hash, parts = ?parts, "config reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "config reload failed; still running on the previous config");
                }
            }
            let _ = config_tx.send(gw.config().clone());
        }
    }
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
