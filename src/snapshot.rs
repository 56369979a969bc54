//! One [`Snapshot`] of the gateway's state, taken once per request, that every view renders:
//! `/status` (and so the status page and `lotlink status`), `/healthz`, `/metrics` and the
//! retained MQTT status. Whether the platform is reachable and whether the gateway is
//! healthy are decided here, once, on the gateway's clock ([`Snapshot::take`]).

use std::sync::Arc;
use std::time::Duration;

use lotlink_drivers::{DriverStatus, StatusSnapshot};
use serde_json::{json, Value};

use crate::clock::Clock;
use crate::config::Secret;
use crate::outbox::{OpenReport, Outbox, SpaceReport, StoreHealth};
use crate::protocol::Client;
use crate::space::SpaceTracker;
use crate::uploader::{Health, PlatformHealth};

/// Remote management as the views show it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ManagementView {
    /// On (a `[management]` broker session is configured).
    pub enabled: bool,
    /// Connected to the management broker right now.
    pub connected: bool,
    /// The last push version accepted (0 = none).
    pub config_version: u64,
    /// The last push's result, as published on `config/result`.
    pub last_result: Option<Value>,
    /// The config file in effect (the pushed one or the local one), once known.
    pub config_file: Option<String>,
}

/// Where the management figures come from (the manager's shared state).
pub trait ManagementSource: Send + Sync {
    /// The figures now.
    fn view(&self) -> ManagementView;
}

/// What a snapshot is taken from.
pub struct StatusContext {
    /// The outbox.
    pub outbox: Outbox,
    /// The occupied count.
    pub space: SpaceTracker,
    /// Platform health.
    pub health: Health,
    /// The platform client (clock offset, ts unit).
    pub client: Arc<Client>,
    /// The drivers' status handles.
    pub drivers: Vec<DriverStatus>,
    /// The heartbeat interval (the health window is three of them).
    pub heartbeat_interval: Duration,
    /// Unix ms of the start.
    pub started_ms: i64,
    /// Short hash of the config file's text.
    pub config_hash: String,
    /// Bearer token every request must carry, when set.
    pub token: Option<Secret>,
    /// Remote management (config version, last push), when on.
    pub management: Option<Arc<dyn ManagementSource>>,
}

impl std::fmt::Debug for StatusContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusContext")
            .field("drivers", &self.drivers.len())
            .finish_non_exhaustive()
    }
}

/// The outbox's figures.
#[derive(Debug, Clone)]
pub(crate) struct OutboxView {
    /// Records waiting for the platform.
    pub pending: u64,
    /// Unix ms the oldest pending record was accepted.
    pub oldest_submitted_ms: Option<i64>,
    /// Bytes of the stored records (what the quota counts).
    pub bytes: u64,
    /// Bytes the store's files take on disk.
    pub size_on_disk: u64,
    /// Dead letters kept for the operator.
    pub dead_letters: u64,
    /// Whether new events are stored.
    pub state: StoreHealth,
    /// When the index was rebuilt from the log, within the last hour.
    pub index_rebuilt_ms: Option<i64>,
    /// What the last open of the store found.
    pub last_open: OpenReport,
}

/// Everything the views show, at one instant.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    /// When it was taken (Unix ms, the gateway's clock).
    pub taken_ms: i64,
    /// Unix ms of the start.
    pub started_ms: i64,
    /// Short hash of the config file's text.
    pub config_hash: String,
    /// The health window: 3 heartbeat intervals, ms.
    pub window_ms: i64,
    /// The uploader's view of the platform.
    pub platform: PlatformHealth,
    /// The platform gave an authenticated answer within the window.
    pub platform_reachable: bool,
    /// Platform clock minus ours, ms.
    pub clock_offset_ms: i64,
    /// The `ts` unit in use.
    pub ts_unit: &'static str,
    /// The `data` encoding in use.
    pub data_encoding: &'static str,
    /// The outbox.
    pub outbox: OutboxView,
    /// Spaces: total, occupied, free.
    pub spaces: (u64, u64, u64),
    /// The newest space report.
    pub last_space_report: Option<SpaceReport>,
    /// The drivers.
    pub drivers: Vec<StatusSnapshot>,
    /// Remote management, when on.
    pub management: Option<ManagementView>,
    /// Why the gateway is not healthy (empty: healthy); see [`problems`].
    pub problems: Vec<String>,
}

impl Snapshot {
    /// Take a snapshot now.
    pub(crate) fn take(ctx: &StatusContext) -> Snapshot {
        Snapshot::take_at(ctx, Clock::local_ms())
    }

    /// Take a snapshot as of `now` (Unix ms).
    pub(crate) fn take_at(ctx: &StatusContext, now: i64) -> Snapshot {
        let platform = ctx
            .health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let window_ms = i64::try_from(ctx.heartbeat_interval.as_millis() * 3).unwrap_or(i64::MAX);
        let outbox = OutboxView {
            pending: ctx.outbox.len(),
            oldest_submitted_ms: ctx.outbox.oldest_submitted_ms(),
            bytes: ctx.outbox.bytes(),
            size_on_disk: ctx.outbox.size_on_disk(),
            dead_letters: ctx.outbox.dead_len(),
            state: ctx.outbox.health(),
            index_rebuilt_ms: ctx.outbox.rebuilt_recently(),
            last_open: ctx.outbox.open_report(),
        };
        let mut s = Snapshot {
            taken_ms: now,
            started_ms: ctx.started_ms,
            config_hash: ctx.config_hash.clone(),
            window_ms,
            platform_reachable: platform
                .last_reached_ms
                .is_some_and(|t| now - t <= window_ms),
            platform,
            clock_offset_ms: ctx.client.clock().offset_ms(),
            ts_unit: ctx.client.unit().as_str(),
            data_encoding: crate::protocol::encoding_name(ctx.client.data_encoding()),
            outbox,
            spaces: ctx.space.figures(),
            last_space_report: ctx.outbox.settings().space_latest().ok().flatten(),
            drivers: ctx.drivers.iter().map(DriverStatus::snapshot).collect(),
            management: ctx.management.as_ref().map(|m| m.view()),
            problems: Vec::new(),
        };
        s.problems = problems(&s);
        s
    }

    /// Healthy: no problems.
    pub(crate) fn healthy(&self) -> bool {
        self.problems.is_empty()
    }

    /// Seconds since the start.
    pub(crate) fn uptime_s(&self) -> i64 {
        (self.taken_ms - self.started_ms) / 1000
    }

    /// Age of the oldest pending record, seconds.
    pub(crate) fn oldest_pending_s(&self) -> Option<i64> {
        self.outbox
            .oldest_submitted_ms
            .map(|t| (self.taken_ms - t).max(0) / 1000)
    }

    /// The `/status` document.
    pub(crate) fn to_json(&self) -> Value {
        let h = &self.platform;
        let o = &self.outbox;
        let r = &o.last_open;
        let (total, occupied, free) = self.spaces;
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "config_hash": self.config_hash,
            "taken_ms": self.taken_ms,
            "uptime_s": self.uptime_s(),
            "healthy": self.healthy(),
            "platform": {
                "reachable": self.platform_reachable,
                "window_s": self.window_ms / 1000,
                "last_success_ms": h.last_success_ms,
                "last_error": h.last_error.as_ref().map(|(code, msg)| json!({"code": code, "message": msg})),
                "fault": h.fault,
                "last_reached_ms": h.last_reached_ms,
                "last_records_success_ms": h.last_records_success_ms,
                "data_encoding": self.data_encoding,
                "held": h.held,
                "command_codes": h.command_codes,
                "request_limit": {"records": h.request_limit.0, "bytes": h.request_limit.1},
                "uplink_bytes_per_s": h.uplink_bytes_per_s,
                "clock_offset_ms": self.clock_offset_ms,
                "ts_unit": self.ts_unit,
                "delivered": h.delivered,
                "dead_lettered": h.dead_lettered,
                "heartbeats_ok": h.heartbeats_ok,
            },
            "outbox": {
                "pending": o.pending,
                "oldest_age_s": self.oldest_pending_s(),
                "bytes": o.bytes,
                "size_on_disk": o.size_on_disk,
                "dead_letters": o.dead_letters,
                "events_refused": h.events_refused,
                "state": match &o.state {
                    StoreHealth::Ok => json!({"ok": true}),
                    StoreHealth::Refusing { since_ms, reason } => json!({"ok": false, "refusing_since_ms": since_ms, "problem": reason}),
                    StoreHealth::Broken { reason } => json!({"ok": false, "broken": true, "problem": reason}),
                },
                "index_rebuilt_ms": o.index_rebuilt_ms,
                "last_open": {
                    "rebuilt": r.rebuilt,
                    "moved_aside": r.moved_aside.as_ref().map(|p| p.display().to_string()),
                    "replayed": r.replayed,
                    "damaged_ranges": r.damaged_ranges,
                    "damaged_records": r.damaged_records,
                    "duplicates_dropped": r.duplicates_dropped,
                    "torn_tail_bytes": r.torn_tail,
                },
            },
            "problems": self.problems,
            "spaces": {
                "total": total,
                "occupied": occupied,
                "free": free,
                "last_report": self.last_space_report.as_ref().map(|r| json!({"total": r.total, "surplus": r.surplus, "seq": r.seq})),
            },
            "drivers": self.drivers,
            "management": self.management.as_ref().map(|m| json!({
                "enabled": m.enabled,
                "connected": m.connected,
                "config_version": m.config_version,
                "config_file": m.config_file,
                "last_result": m.last_result,
            })),
        })
    }

    /// The retained MQTT status (`{prefix}/status`). The first six fields keep the names
    /// they always had (`lotlink fleet` and site tools read them); the rest were added.
    pub(crate) fn retained_status(&self) -> Value {
        json!({
            "online": true,
            "version": env!("CARGO_PKG_VERSION"),
            "config_version": self.management.as_ref().map_or(0, |m| m.config_version),
            "config_hash": self.config_hash,
            "outbox_depth": self.outbox.pending,
            "last_platform_success_ms": self.platform.last_success_ms,
            "oldest_pending_s": self.oldest_pending_s(),
            "platform_reachable": self.platform_reachable,
            "healthy": self.healthy(),
            "problems": self.problems,
            "taken_ms": self.taken_ms,
        })
    }
}

/// Why the gateway is not healthy (empty: healthy). The one place that decides; every view
/// shows its verdict. Within the window (3 heartbeat intervals):
/// - the platform gave an authenticated answer (a heartbeat answered `1005` counts);
/// - no stream has a fault an operator must fix;
/// - records wait: the oldest pending one is older than the window and no `carInOut` was
///   accepted within it (a refused space report, a poison record, non-JSON answers);
/// - events are refused: ingest could not store an event (disk quota) within the window
///   and has stored none since;
/// - the outbox stores new events (its state, kept by its writer: nothing is written to
///   find out) and its index was not rebuilt from the log within the last hour.
pub(crate) fn problems(s: &Snapshot) -> Vec<String> {
    let now = s.taken_ms;
    let window = s.window_ms;
    let h = &s.platform;
    let mut problems = Vec::new();
    if !s.platform_reachable {
        match h.last_reached_ms {
            Some(t) => problems.push(format!("platform not reached for {} s", (now - t) / 1000)),
            None => problems.push("platform not reached since start".to_string()),
        }
    }
    if let Some(f) = &h.fault {
        problems.push(format!("fault: {f}"));
    }
    match &s.outbox.state {
        StoreHealth::Ok => {}
        StoreHealth::Refusing { since_ms, reason } => problems.push(format!(
            "outbox refusing new events for {} s: {reason}",
            (now - since_ms).max(0) / 1000
        )),
        StoreHealth::Broken { reason } => problems.push(format!("outbox broken: {reason}")),
    }
    if let Some(t) = s.outbox.index_rebuilt_ms {
        problems.push(format!(
            "degraded: the outbox index was rebuilt from the log {} s ago (see the log; reported for an hour)",
            (now - t).max(0) / 1000
        ));
    }
    let pending = s.outbox.pending;
    if pending > 0 {
        let oldest_waits = s
            .outbox
            .oldest_submitted_ms
            .is_some_and(|t| now - t > window);
        let delivered_lately = h.last_records_success_ms.is_some_and(|t| now - t <= window);
        if oldest_waits && !delivered_lately {
            let since = h.last_records_success_ms.map_or_else(
                || "since start".to_string(),
                |t| format!("for {} s", (now - t) / 1000),
            );
            let why = h
                .last_error
                .as_ref()
                .map(|(c, m)| format!(" (last error {c}: {m})"))
                .unwrap_or_default();
            problems.push(format!(
                "{pending} records pending and none delivered {since}{why}"
            ));
        }
    }
    if let Some((t, why)) = &h.last_refusal {
        let stored_since = h.last_stored_ms.is_some_and(|s| s >= *t);
        if now - t <= window && !stored_since {
            problems.push(format!(
                "events are being refused ({} since start): {why}",
                h.events_refused
            ));
        }
    }
    problems
}
