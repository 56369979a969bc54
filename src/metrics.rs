//! `GET /metrics`: one [`Snapshot`] in the Prometheus/OpenMetrics text format, plus the
//! figures counted while the gateway works ([`crate::telemetry`]) and the process's own.
//!
//! Prometheus conventions: base units (seconds, bytes), counters end in `_total`, the
//! process figures under the standard `process_*` names. The figures live where the work
//! happens; a scrape copies them into a fresh [`Registry`] and encodes it. A scrape is rare
//! (every 15–60 s) and small (a few dozen series).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `lotlink_build_info` | info | `version` |
//! | `lotlink_uptime_seconds` | gauge | |
//! | `lotlink_config_version` | gauge | (last pushed version applied; 0 = none) |
//! | `lotlink_platform_up` | gauge | (1 when the last authenticated answer is within 3 heartbeats) |
//! | `lotlink_healthy` | gauge | (1 when `/healthz` answers ok) |
//! | `lotlink_platform_last_success_timestamp_seconds` | gauge | |
//! | `lotlink_platform_clock_offset_seconds` | gauge | (platform clock minus ours) |
//! | `lotlink_platform_fault` | gauge | (1 while the platform refuses our configuration) |
//! | `lotlink_platform_requests_total` | counter | `command` (heartbeat, parkSpace, carInOut), `outcome` (success, exists, malformed, business, transient, auth_failed, fault, or the transport error: timeout, transport, http, not_json, answer_too_large) |
//! | `lotlink_platform_request_duration_seconds` | histogram | `command` |
//! | `lotlink_outbox_fsync_duration_seconds` | histogram | (one `fdatasync` of the outbox log) |
//! | `lotlink_records_delivered_total` | counter | |
//! | `lotlink_records_dead_lettered_total` | counter | |
//! | `lotlink_heartbeats_ok_total` | counter | |
//! | `lotlink_platform_command_codes_total` | counter | (answers 1005, 1007, 1008, 1107) |
//! | `lotlink_events_refused_total` | counter | (events ingest could not store) |
//! | `lotlink_outbox_pending_records` | gauge | |
//! | `lotlink_outbox_oldest_age_seconds` | gauge | |
//! | `lotlink_outbox_record_bytes` / `lotlink_outbox_disk_bytes` | gauge | |
//! | `lotlink_outbox_dead_letters` | gauge | |
//! | `lotlink_outbox_refusing` / `lotlink_outbox_broken` | gauge | (1 while so) |
//! | `lotlink_outbox_index_rebuilt_timestamp_seconds` | gauge | (within the last hour; else 0) |
//! | `lotlink_outbox_damaged_ranges` | gauge | (found when the store was last opened) |
//! | `lotlink_spaces_total` / `_occupied` / `_free` | gauge | |
//! | `lotlink_driver_connected` | gauge | `driver`, `kind` |
//! | `lotlink_driver_events_total` / `_bad_inputs_total` / `_unusual_plates_total` / `_defaulted_values_total` | counter | `driver`, `kind` |
//! | `lotlink_driver_camera_clock_wrong` | gauge | `driver`, `kind` |
//! | `lotlink_driver_last_event_timestamp_seconds` | gauge | `driver`, `kind` |
//! | `lotlink_driver_last_heard_timestamp_seconds` | gauge | `driver`, `kind` |
//! | `process_resident_memory_bytes` | gauge | |
//! | `process_cpu_seconds_total` | counter | (user + system) |
//! | `process_start_time_seconds` | gauge | |
//! | `process_open_fds` | gauge | |

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::outbox::StoreHealth;
use crate::snapshot::Snapshot;

type Labels = Vec<(&'static str, String)>;

fn gauge(reg: &mut Registry, name: &str, help: &str, v: i64) {
    let g: Gauge = Gauge::default();
    g.set(v);
    reg.register(name, help, g);
}

fn gauge_f(reg: &mut Registry, name: &str, help: &str, v: f64) {
    let g: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
    g.set(v);
    reg.register(name, help, g);
}

fn counter(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let c: Counter = Counter::default();
    c.inc_by(v);
    reg.register(name, help, c);
}

/// Encode a snapshot (and the process-wide figures).
pub(crate) fn render(snap: &Snapshot) -> String {
    let mut root = Registry::default();
    process_metrics(&mut root);
    let reg = root.sub_registry_with_prefix("lotlink");
    let h = &snap.platform;
    let o = &snap.outbox;
    reg.register(
        "build",
        "Version of the running gateway",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION").to_string())]),
    );
    gauge(
        reg,
        "uptime_seconds",
        "Seconds since the gateway started",
        snap.uptime_s(),
    );
    let config_version = snap
        .management
        .as_ref()
        .map_or(0, |m| i64::try_from(m.config_version).unwrap_or(i64::MAX));
    gauge(
        reg,
        "config_version",
        "Version of the last pushed configuration applied (0: none)",
        config_version,
    );
    gauge(
        reg,
        "platform_up",
        "1 when the platform gave an authenticated answer within the last 3 heartbeat intervals",
        i64::from(snap.platform_reachable),
    );
    gauge(
        reg,
        "healthy",
        "1 when /healthz answers ok",
        i64::from(snap.healthy()),
    );
    gauge(
        reg,
        "platform_last_success_timestamp_seconds",
        "Unix time of the platform's last success answer (0: none since start)",
        h.last_success_ms.unwrap_or(0) / 1000,
    );
    gauge_f(
        reg,
        "platform_clock_offset_seconds",
        "Platform clock minus ours, learned from its Date header",
        snap.clock_offset_ms as f64 / 1000.0,
    );
    gauge(
        reg,
        "platform_fault",
        "1 while the platform refuses the gateway's configuration (operator must act)",
        i64::from(h.fault.is_some()),
    );
    let t = crate::telemetry::get();
    reg.register(
        "platform_requests",
        "HTTP requests to the platform by command and outcome (the verdict, or the transport error)",
        t.platform_requests.clone(),
    );
    reg.register(
        "platform_request_duration_seconds",
        "Seconds from sending a platform request to its answer or error",
        t.platform_seconds.clone(),
    );
    reg.register(
        "outbox_fsync_duration_seconds",
        "Seconds one fdatasync of the outbox log took (a failing SD card shows here first)",
        t.fsync_seconds.clone(),
    );
    counter(
        reg,
        "records_delivered",
        "Records the platform confirmed since start",
        h.delivered,
    );
    counter(
        reg,
        "records_dead_lettered",
        "Records the platform refused for good since start",
        h.dead_lettered,
    );
    counter(
        reg,
        "platform_command_codes",
        "Answers with a command-interface code (1005, 1007, 1008, 1107) since start",
        h.command_codes,
    );
    counter(
        reg,
        "events_refused",
        "Events ingest could not store (disk quota, store errors) since start",
        h.events_refused,
    );
    counter(
        reg,
        "heartbeats_ok",
        "Heartbeats answered with success since start",
        h.heartbeats_ok,
    );
    let sat = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    gauge(
        reg,
        "outbox_pending_records",
        "Records waiting for the platform",
        sat(o.pending),
    );
    gauge(
        reg,
        "outbox_oldest_age_seconds",
        "Age of the oldest pending record (0 when none)",
        snap.oldest_pending_s().unwrap_or(0),
    );
    gauge(
        reg,
        "outbox_record_bytes",
        "Bytes of the stored records (what the quota counts)",
        sat(o.bytes),
    );
    gauge(
        reg,
        "outbox_disk_bytes",
        "Bytes the store's files take on disk",
        sat(o.size_on_disk),
    );
    gauge(
        reg,
        "outbox_dead_letters",
        "Records the platform refused, kept for the operator",
        sat(o.dead_letters),
    );
    gauge(
        reg,
        "outbox_refusing",
        "1 while new events are refused (disk full, quota, write errors); the sources keep them",
        i64::from(matches!(o.state, StoreHealth::Refusing { .. })),
    );
    gauge(
        reg,
        "outbox_broken",
        "1 when the store cannot recover by itself (the service needs a restart)",
        i64::from(matches!(o.state, StoreHealth::Broken { .. })),
    );
    gauge(
        reg,
        "outbox_index_rebuilt_timestamp_seconds",
        "When the outbox index was last rebuilt from the log, within the last hour (0: not)",
        o.index_rebuilt_ms.map_or(0, |t| t / 1000),
    );
    gauge(
        reg,
        "outbox_damaged_ranges",
        "Damaged byte ranges of the log skipped when the store was last opened",
        sat(o.last_open.damaged_ranges),
    );
    let (total, occupied, free) = snap.spaces;
    gauge(reg, "spaces_total", "Spaces of the lot", sat(total));
    gauge(reg, "spaces_occupied", "Occupied spaces", sat(occupied));
    gauge(reg, "spaces_free", "Free spaces", sat(free));

    let connected = Family::<Labels, Gauge>::default();
    let last_event = Family::<Labels, Gauge>::default();
    let last_heard = Family::<Labels, Gauge>::default();
    let events = Family::<Labels, Counter>::default();
    let bad = Family::<Labels, Counter>::default();
    let unusual = Family::<Labels, Counter>::default();
    let defaulted = Family::<Labels, Counter>::default();
    let clock_wrong = Family::<Labels, Gauge>::default();
    for s in &snap.drivers {
        let l: Labels = vec![("driver", s.name.clone()), ("kind", s.kind.clone())];
        connected.get_or_create(&l).set(i64::from(s.connected));
        last_event.get_or_create(&l).set(s.last_event_ms / 1000);
        last_heard.get_or_create(&l).set(s.last_heard_ms / 1000);
        events.get_or_create(&l).inc_by(s.events);
        bad.get_or_create(&l).inc_by(s.bad_inputs);
        unusual.get_or_create(&l).inc_by(s.unusual_plates);
        defaulted.get_or_create(&l).inc_by(s.defaulted);
        clock_wrong.get_or_create(&l).set(i64::from(s.clock_wrong));
    }
    reg.register(
        "driver_connected",
        "1 while the driver is connected to its device or broker",
        connected,
    );
    reg.register(
        "driver_last_event_timestamp_seconds",
        "Unix time of the driver's last event (0: none)",
        last_event,
    );
    reg.register(
        "driver_last_heard_timestamp_seconds",
        "Unix time the device was last heard from: an event or a heartbeat (0: never)",
        last_heard,
    );
    reg.register("driver_events", "Events handed to the gateway", events);
    reg.register(
        "driver_bad_inputs",
        "Inputs that could not be understood",
        bad,
    );
    reg.register(
        "driver_unusual_plates",
        "Plates outside the usual Chinese plate rules (still reported)",
        unusual,
    );
    reg.register(
        "driver_defaulted_values",
        "Camera values replaced by a default (pass kept, said in its remark)",
        defaulted,
    );
    reg.register(
        "driver_camera_clock_wrong",
        "1 while the camera's capture times are implausible (receipt times are sent)",
        clock_wrong,
    );

    let mut out = String::new();
    if encode(&mut out, &root).is_err() {
        out = "# metrics could not be encoded\n# EOF\n".into();
    }
    out
}

/// The standard process figures (`process_*`), from `/proc`.
fn process_metrics(reg: &mut Registry) {
    let p = crate::telemetry::process();
    gauge(
        reg,
        "process_resident_memory_bytes",
        "Resident memory size in bytes",
        i64::try_from(p.rss_bytes).unwrap_or(i64::MAX),
    );
    let cpu: Counter<f64, std::sync::atomic::AtomicU64> = Counter::default();
    cpu.inc_by(p.cpu_seconds);
    reg.register(
        "process_cpu_seconds",
        "Total user and system CPU time spent in seconds",
        cpu,
    );
    gauge_f(
        reg,
        "process_start_time_seconds",
        "Start time of the process since the Unix epoch in seconds",
        p.start_time_seconds,
    );
    gauge(
        reg,
        "process_open_fds",
        "Number of open file descriptors",
        i64::try_from(p.open_fds).unwrap_or(i64::MAX),
    );
}
