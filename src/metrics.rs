//! `GET /metrics`: the figures of `/status` in the Prometheus/OpenMetrics text format.
//!
//! The figures live where the work happens (outbox, space tracker, platform health, driver
//! status handles); a scrape copies them into a fresh [`Registry`] and encodes it. A
//! scrape is rare (every 15–60 s) and small (a few dozen series), so this is cheaper than
//! keeping a second set of counters in step with the first.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `lotlink_build_info` | info | `version` |
//! | `lotlink_uptime_seconds` | gauge | |
//! | `lotlink_config_version` | gauge | (last pushed version applied; 0 = none) |
//! | `lotlink_platform_up` | gauge | (1 when the last authenticated answer is within 3 heartbeats) |
//! | `lotlink_healthy` | gauge | (1 when `/healthz` answers ok) |
//! | `lotlink_platform_last_success_timestamp_seconds` | gauge | |
//! | `lotlink_platform_clock_offset_milliseconds` | gauge | |
//! | `lotlink_platform_fault` | gauge | (1 while the platform refuses our configuration) |
//! | `lotlink_records_delivered` | counter | |
//! | `lotlink_records_dead_lettered` | counter | |
//! | `lotlink_heartbeats_ok` | counter | |
//! | `lotlink_platform_command_codes` | counter | (answers 1005, 1007, 1008, 1107) |
//! | `lotlink_events_refused` | counter | (events ingest could not store) |
//! | `lotlink_outbox_pending_records` | gauge | |
//! | `lotlink_outbox_oldest_age_seconds` | gauge | |
//! | `lotlink_outbox_record_bytes` / `lotlink_outbox_disk_bytes` | gauge | |
//! | `lotlink_outbox_dead_letters` | gauge | |
//! | `lotlink_outbox_refusing` / `lotlink_outbox_broken` | gauge | (1 while so) |
//! | `lotlink_outbox_index_rebuilt_timestamp_seconds` | gauge | (within the last hour; else 0) |
//! | `lotlink_outbox_damaged_ranges` | gauge | (found when the store was last opened) |
//! | `lotlink_spaces_total` / `_occupied` / `_free` | gauge | |
//! | `lotlink_driver_connected` | gauge | `driver`, `kind` |
//! | `lotlink_driver_events` / `_bad_inputs` / `_unusual_plates` / `_defaulted_values` | counter | `driver`, `kind` |
//! | `lotlink_driver_camera_clock_wrong` | gauge | `driver`, `kind` |
//! | `lotlink_driver_last_event_timestamp_seconds` | gauge | `driver`, `kind` |
//! | `lotlink_driver_last_heard_timestamp_seconds` | gauge | `driver`, `kind` |

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::protocol::Clock;
use crate::status::StatusContext;

type Labels = Vec<(&'static str, String)>;

fn gauge(reg: &mut Registry, name: &str, help: &str, v: i64) {
    let g: Gauge = Gauge::default();
    g.set(v);
    reg.register(name, help, g);
}

fn counter(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let c: Counter = Counter::default();
    c.inc_by(v);
    reg.register(name, help, c);
}

/// Encode the current figures.
pub fn render(ctx: &StatusContext) -> String {
    let now = Clock::local_ms();
    let h = ctx.health_snapshot();
    let mut reg = Registry::with_prefix("lotlink");
    reg.register(
        "build",
        "Version of the running gateway",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION").to_string())]),
    );
    gauge(
        &mut reg,
        "uptime_seconds",
        "Seconds since the gateway started",
        (now - ctx.started_ms) / 1000,
    );
    let config_version = ctx
        .management
        .as_ref()
        .map_or(0, |m| i64::try_from(m.config_version()).unwrap_or(i64::MAX));
    gauge(
        &mut reg,
        "config_version",
        "Version of the last pushed configuration applied (0: none)",
        config_version,
    );
    let window = crate::status::health_window(ctx);
    gauge(
        &mut reg,
        "platform_up",
        "1 when the platform gave an authenticated answer within the last 3 heartbeat intervals",
        i64::from(crate::status::platform_reached(&h, now, window)),
    );
    gauge(
        &mut reg,
        "healthy",
        "1 when /healthz answers ok",
        i64::from(crate::status::health_problems(ctx).is_empty()),
    );
    gauge(
        &mut reg,
        "platform_last_success_timestamp_seconds",
        "Unix time of the platform's last success answer (0: none since start)",
        h.last_success_ms.unwrap_or(0) / 1000,
    );
    gauge(
        &mut reg,
        "platform_clock_offset_milliseconds",
        "Platform clock minus ours, learned from its Date header",
        ctx.client.clock().offset_ms(),
    );
    gauge(
        &mut reg,
        "platform_fault",
        "1 while the platform refuses the gateway's configuration (operator must act)",
        i64::from(h.fault.is_some()),
    );
    counter(
        &mut reg,
        "records_delivered",
        "Records the platform confirmed since start",
        h.delivered,
    );
    counter(
        &mut reg,
        "records_dead_lettered",
        "Records the platform refused for good since start",
        h.dead_lettered,
    );
    counter(
        &mut reg,
        "platform_command_codes",
        "Answers with a command-interface code (1005, 1007, 1008, 1107) since start",
        h.command_codes,
    );
    counter(
        &mut reg,
        "events_refused",
        "Events ingest could not store (disk quota, store errors) since start",
        h.events_refused,
    );
    counter(
        &mut reg,
        "heartbeats_ok",
        "Heartbeats answered with success since start",
        h.heartbeats_ok,
    );
    let sat = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    gauge(
        &mut reg,
        "outbox_pending_records",
        "Records waiting for the platform",
        sat(ctx.outbox.len()),
    );
    gauge(
        &mut reg,
        "outbox_oldest_age_seconds",
        "Age of the oldest pending record (0 when none)",
        ctx.outbox
            .oldest_submitted_ms()
            .map_or(0, |t| (now - t).max(0) / 1000),
    );
    gauge(
        &mut reg,
        "outbox_record_bytes",
        "Bytes of the stored records (what the quota counts)",
        sat(ctx.outbox.bytes()),
    );
    gauge(
        &mut reg,
        "outbox_disk_bytes",
        "Bytes the store's files take on disk",
        sat(ctx.outbox.size_on_disk()),
    );
    gauge(
        &mut reg,
        "outbox_dead_letters",
        "Records the platform refused, kept for the operator",
        sat(ctx.outbox.dead_len()),
    );
    let store = ctx.outbox.health();
    gauge(
        &mut reg,
        "outbox_refusing",
        "1 while new events are refused (disk full, quota, write errors); the sources keep them",
        i64::from(matches!(store, crate::outbox::StoreHealth::Refusing { .. })),
    );
    gauge(
        &mut reg,
        "outbox_broken",
        "1 when the store cannot recover by itself (the service needs a restart)",
        i64::from(matches!(store, crate::outbox::StoreHealth::Broken { .. })),
    );
    gauge(
        &mut reg,
        "outbox_index_rebuilt_timestamp_seconds",
        "When the outbox index was last rebuilt from the log, within the last hour (0: not)",
        ctx.outbox.rebuilt_recently().map_or(0, |t| t / 1000),
    );
    gauge(
        &mut reg,
        "outbox_damaged_ranges",
        "Damaged byte ranges of the log skipped when the store was last opened",
        sat(ctx.outbox.open_report().damaged_ranges),
    );
    let (total, occupied, free) = ctx.space.figures();
    gauge(&mut reg, "spaces_total", "Spaces of the lot", sat(total));
    gauge(
        &mut reg,
        "spaces_occupied",
        "Occupied spaces",
        sat(occupied),
    );
    gauge(&mut reg, "spaces_free", "Free spaces", sat(free));

    let connected = Family::<Labels, Gauge>::default();
    let last_event = Family::<Labels, Gauge>::default();
    let last_heard = Family::<Labels, Gauge>::default();
    let events = Family::<Labels, Counter>::default();
    let bad = Family::<Labels, Counter>::default();
    let unusual = Family::<Labels, Counter>::default();
    let defaulted = Family::<Labels, Counter>::default();
    let clock_wrong = Family::<Labels, Gauge>::default();
    for d in &ctx.drivers {
        let s = d.snapshot();
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
    if encode(&mut out, &reg).is_err() {
        out = "# metrics could not be encoded\n# EOF\n".into();
    }
    out
}
