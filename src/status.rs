//! The local status endpoint on `[status] listen` (loopback by default): what the gateway is
//! doing, for people and for the operator CLI.
//!
//! | route | answer |
//! |---|---|
//! | `GET /` | a small self-contained HTML page showing `/status`, refreshing itself |
//! | `GET /healthz` | 200 `ok` when healthy (see [`health_problems`]: platform reached, no fault, records delivered, events stored, outbox writable, all within 3 heartbeat intervals); else 503 with the reasons |
//! | `GET /status` | JSON: version, config hash and version, uptime, platform, outbox, spaces, drivers, management |
//! | `GET /metrics` | the same figures in the Prometheus text format (`lotlink_…`) |
//! | `GET /api/dead` | the dead letters (id, plate, reason; no image data) |
//! | `POST /api/dead/retry` | `{"id": N}` or `{"all": true}`: back into the outbox |
//! | `POST /api/dead/drop` | `{"id": N}`: deleted for good |
//! | `POST /api/space` | `{"occupied": N}`: re-base the occupied count (a hand count) |
//!
//! Request bodies are capped at 64 KiB; a bad request is a 400 with the reason.
//!
//! With `[status] token` set (required when `listen` is not loopback) every route wants
//! `Authorization: Bearer <token>`, else 401. A browser cannot set that header when it opens
//! the page, so `GET /` alone also takes `?token=…`; the page then sends the header itself.
//!
//! A reload swaps the context the routes read (a [`watch`] channel) without dropping the
//! listener; a changed `listen` or `token` restarts the server.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use lotlink_drivers::{CancellationToken, DriverStatus};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Secret;
use crate::manage::ManagementState;

use crate::outbox::{Outbox, StoreHealth};
use crate::protocol::{Client, Clock};
use crate::space::SpaceTracker;
use crate::uploader::Health;

/// The page at `/`: no external assets; polls `/status` every 2 s.
const PAGE: &str = include_str!("status_page.html");

/// Largest request body accepted.
const MAX_BODY: usize = 64 * 1024;

/// Errors of the status endpoint.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The listen address cannot be bound.
    #[error("status.listen {addr}: cannot listen: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What the status endpoint reads.
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
    /// The heartbeat interval (for `/healthz`).
    pub heartbeat_interval: Duration,
    /// Unix ms of the start.
    pub started_ms: i64,
    /// Short hash of the config file's text.
    pub config_hash: String,
    /// Bearer token every request must carry, when set.
    pub token: Option<Secret>,
    /// Remote management (config version, last push), when on.
    pub management: Option<Arc<ManagementState>>,
}

impl StatusContext {
    /// A copy of the uploader's platform health (a poisoned lock still holds the last values).
    pub fn health_snapshot(&self) -> crate::uploader::PlatformHealth {
        self.health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl std::fmt::Debug for StatusContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusContext")
            .field("drivers", &self.drivers.len())
            .finish_non_exhaustive()
    }
}

/// Bind the status address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, StatusError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StatusError::Bind { addr, source })
}

/// Serve until `shutdown`; every request reads the newest context from `ctx`.
pub async fn serve(
    listener: TcpListener,
    ctx: watch::Receiver<Arc<StatusContext>>,
    shutdown: CancellationToken,
) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(error = %e, "status accept failed");
                    continue;
                }
            },
        };
        let ctx = ctx.clone();
        let stop = shutdown.clone();
        conns.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let ctx = ctx.borrow().clone();
                async move { Ok::<_, Infallible>(guarded(&ctx, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                r = conn => if let Err(e) = r { tracing::debug!(%peer, error = %e, "status connection ended") },
                () = stop.cancelled() => {}
            }
        });
        while conns.try_join_next().is_some() {}
    }
    conns.shutdown().await;
}

fn reply(status: StatusCode, body: impl Into<Bytes>, content_type: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn json_reply(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    reply(status, v.to_string(), "application/json")
}

fn bad(msg: impl std::fmt::Display) -> Response<Full<Bytes>> {
    json_reply(
        StatusCode::BAD_REQUEST,
        &json!({ "error": msg.to_string() }),
    )
}

async fn body_json(req: Request<hyper::body::Incoming>) -> Result<Value, String> {
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| format!("body is not JSON: {e}"))
}

/// Equal in constant time (for the bearer token).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the request carries the token (header, or `?token=` for the page).
fn authorized(token: &Secret, req: &Request<hyper::body::Incoming>) -> bool {
    let want = token.expose().as_bytes();
    let header = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| same(t.trim().as_bytes(), want));
    let query = req.uri().path() == "/"
        && req.uri().query().is_some_and(|q| {
            q.split('&')
                .filter_map(|kv| kv.strip_prefix("token="))
                .any(|t| same(t.as_bytes(), want))
        });
    header || query
}

async fn guarded(
    ctx: &StatusContext,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    if let Some(token) = &ctx.token {
        if !authorized(token, &req) {
            let mut r = reply(
                StatusCode::UNAUTHORIZED,
                "a bearer token is required ([status] token)\n",
                "text/plain",
            );
            r.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Bearer"),
            );
            return r;
        }
    }
    route(ctx, req).await
}

async fn route(ctx: &StatusContext, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/") => reply(StatusCode::OK, PAGE, "text/html; charset=utf-8"),
        (Method::GET, "/healthz") => healthz(ctx),
        (Method::GET, "/status") => json_reply(StatusCode::OK, &status_json(ctx)),
        (Method::GET, "/metrics") => reply(
            StatusCode::OK,
            crate::metrics::render(ctx),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        (Method::GET, "/api/dead") => match ctx.outbox.dead_list() {
            Ok(list) => {
                let items: Vec<Value> = list
                    .iter()
                    .map(|d| {
                        json!({
                            "id": d.record.id,
                            "carNo": d.record.meta.car_no,
                            "inOutType": d.record.meta.in_out_type,
                            "inOutTime": d.record.meta.in_out_time,
                            "nodeName": d.record.meta.node_name,
                            "reason": d.reason,
                        })
                    })
                    .collect();
                json_reply(StatusCode::OK, &Value::Array(items))
            }
            Err(e) => json_reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({ "error": e.to_string() }),
            ),
        },
        (Method::POST, "/api/dead/retry") => {
            let body = match body_json(req).await {
                Ok(b) => b,
                Err(e) => return bad(e),
            };
            let ids: Vec<u64> = if body["all"] == true {
                match ctx.outbox.dead_list() {
                    Ok(l) => l.iter().map(|d| d.record.id).collect(),
                    Err(e) => return bad(e),
                }
            } else if let Some(id) = body["id"].as_u64() {
                vec![id]
            } else {
                return bad("give {\"id\": N} or {\"all\": true}");
            };
            for id in &ids {
                if let Err(e) = ctx.outbox.dead_retry(*id).await {
                    return bad(format!("dead letter {id}: {e}"));
                }
            }
            tracing::info!(
                count = ids.len(),
                "dead letters put back for upload by the operator"
            );
            json_reply(StatusCode::OK, &json!({ "retried": ids }))
        }
        (Method::POST, "/api/dead/drop") => {
            let body = match body_json(req).await {
                Ok(b) => b,
                Err(e) => return bad(e),
            };
            let Some(id) = body["id"].as_u64() else {
                return bad("give {\"id\": N}");
            };
            match ctx.outbox.dead_drop(id).await {
                Ok(()) => {
                    tracing::warn!(id, "dead letter dropped by the operator");
                    json_reply(StatusCode::OK, &json!({ "dropped": id }))
                }
                Err(e) => bad(format!("dead letter {id}: {e}")),
            }
        }
        (Method::POST, "/api/space") => {
            let body = match body_json(req).await {
                Ok(b) => b,
                Err(e) => return bad(e),
            };
            let Some(n) = body["occupied"].as_u64() else {
                return bad("give {\"occupied\": N}");
            };
            match ctx.space.set_occupied(n).await {
                Ok(()) => {
                    let (total, occupied, free) = ctx.space.figures();
                    tracing::info!(occupied, free, "occupied count re-based by the operator");
                    json_reply(
                        StatusCode::OK,
                        &json!({ "total": total, "occupied": occupied, "free": free }),
                    )
                }
                Err(e) => json_reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &json!({ "error": e.to_string() }),
                ),
            }
        }
        _ => reply(StatusCode::NOT_FOUND, "not found\n", "text/plain"),
    }
}

/// How long the platform may go unanswered, records wait undelivered, or events be refused
/// before the gateway counts as unhealthy: 3 heartbeat intervals.
pub fn health_window(ctx: &StatusContext) -> i64 {
    i64::try_from(ctx.heartbeat_interval.as_millis() * 3).unwrap_or(i64::MAX)
}

/// Whether the platform gave an authenticated answer within `window` ms of `now`.
pub fn platform_reached(h: &crate::uploader::PlatformHealth, now: i64, window: i64) -> bool {
    h.last_reached_ms.is_some_and(|t| now - t <= window)
}

/// Why the gateway is not healthy (empty: healthy). The one place that decides; `/healthz`,
/// `/status` and `/metrics` show its verdict. Within the window (3 heartbeat intervals):
/// - the platform gave an authenticated answer (a heartbeat answered `1005` counts);
/// - no stream has a fault an operator must fix;
/// - records wait: the oldest pending one is older than the window and no `carInOut` was
///   accepted within it (a refused space report, a poison record, non-JSON answers);
/// - events are refused: ingest could not store an event (disk quota) within the window
///   and has stored none since;
/// - the outbox stores new events (its state, kept by its writer: nothing is written to
///   find out) and its index was not rebuilt from the log within the last hour.
pub fn health_problems(ctx: &StatusContext) -> Vec<String> {
    let now = Clock::local_ms();
    let window = health_window(ctx);
    let h = ctx.health_snapshot();
    let mut problems = Vec::new();
    if !platform_reached(&h, now, window) {
        match h.last_reached_ms {
            Some(t) => problems.push(format!("platform not reached for {} s", (now - t) / 1000)),
            None => problems.push("platform not reached since start".to_string()),
        }
    }
    if let Some(f) = &h.fault {
        problems.push(format!("fault: {f}"));
    }
    match ctx.outbox.health() {
        StoreHealth::Ok => {}
        StoreHealth::Refusing { since_ms, reason } => problems.push(format!(
            "outbox refusing new events for {} s: {reason}",
            (now - since_ms).max(0) / 1000
        )),
        StoreHealth::Broken { reason } => problems.push(format!("outbox broken: {reason}")),
    }
    if let Some(t) = ctx.outbox.rebuilt_recently() {
        problems.push(format!(
            "degraded: the outbox index was rebuilt from the log {} s ago (see the log; reported for an hour)",
            (now - t).max(0) / 1000
        ));
    }
    let pending = ctx.outbox.len();
    if pending > 0 {
        let oldest_waits = ctx
            .outbox
            .oldest_submitted_ms()
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

fn healthz(ctx: &StatusContext) -> Response<Full<Bytes>> {
    let problems = health_problems(ctx);
    if problems.is_empty() {
        reply(StatusCode::OK, "ok\n", "text/plain")
    } else {
        reply(
            StatusCode::SERVICE_UNAVAILABLE,
            problems.join("; ") + "\n",
            "text/plain",
        )
    }
}

/// The `/status` document.
pub fn status_json(ctx: &StatusContext) -> Value {
    let now = Clock::local_ms();
    let h = ctx.health_snapshot();
    let (total, occupied, free) = ctx.space.figures();
    let last_report = ctx.outbox.settings().space_latest().ok().flatten();
    let r = ctx.outbox.open_report();
    let last_open = json!({
        "rebuilt": r.rebuilt,
        "moved_aside": r.moved_aside.map(|p| p.display().to_string()),
        "replayed": r.replayed,
        "damaged_ranges": r.damaged_ranges,
        "damaged_records": r.damaged_records,
        "duplicates_dropped": r.duplicates_dropped,
        "torn_tail_bytes": r.torn_tail,
    });
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "config_hash": ctx.config_hash,
        "uptime_s": (now - ctx.started_ms) / 1000,
        "platform": {
            "last_success_ms": h.last_success_ms,
            "last_error": h.last_error.as_ref().map(|(code, msg)| json!({"code": code, "message": msg})),
            "fault": h.fault,
            "last_reached_ms": h.last_reached_ms,
            "last_records_success_ms": h.last_records_success_ms,
            "data_encoding": crate::protocol::encoding_name(ctx.client.data_encoding()),
            "held": h.held,
            "command_codes": h.command_codes,
            "request_limit": {"records": h.request_limit.0, "bytes": h.request_limit.1},
            "uplink_bytes_per_s": h.uplink_bytes_per_s,
            "clock_offset_ms": ctx.client.clock().offset_ms(),
            "ts_unit": ctx.client.unit().as_str(),
            "delivered": h.delivered,
            "dead_lettered": h.dead_lettered,
            "heartbeats_ok": h.heartbeats_ok,
        },
        "outbox": {
            "pending": ctx.outbox.len(),
            "oldest_age_s": ctx.outbox.oldest_submitted_ms().map(|t| (now - t).max(0) / 1000),
            "bytes": ctx.outbox.bytes(),
            "size_on_disk": ctx.outbox.size_on_disk(),
            "dead_letters": ctx.outbox.dead_len(),
            "events_refused": h.events_refused,
            "state": match ctx.outbox.health() {
                StoreHealth::Ok => json!({"ok": true}),
                StoreHealth::Refusing { since_ms, reason } => json!({"ok": false, "refusing_since_ms": since_ms, "problem": reason}),
                StoreHealth::Broken { reason } => json!({"ok": false, "broken": true, "problem": reason}),
            },
            "index_rebuilt_ms": ctx.outbox.rebuilt_recently(),
            "last_open": last_open,
        },
        "problems": health_problems(ctx),
        "spaces": {
            "total": total,
            "occupied": occupied,
            "free": free,
            "last_report": last_report.map(|r| json!({"total": r.total, "surplus": r.surplus, "seq": r.seq})),
        },
        "drivers": ctx.drivers.iter().map(DriverStatus::snapshot).collect::<Vec<_>>(),
        "management": ctx.management.as_ref().map(|m| m.to_json()),
    })
}
