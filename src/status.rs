//! The local status endpoint on `[status] listen` (loopback by default): what the gateway is
//! doing, for people and for the operator CLI.
//!
//! | route | answer |
//! |---|---|
//! | `GET /` | a small self-contained HTML page showing `/status`, refreshing itself |
//! | `GET /healthz` | 200 `ok` when healthy (see [`crate::snapshot::problems`]: platform reached, no fault, records delivered, events stored, outbox writable, all within 3 heartbeat intervals); else 503 with the reasons |
//! | `GET /status` | JSON: version, config hash and version, uptime, health and its problems, platform (with `reachable`, decided here), outbox, spaces, drivers, management |
//! | `GET /metrics` | the same figures in the Prometheus text format (`lotlink_…`) |
//! | `GET /api/dead` | the dead letters (id, plate, reason; no image data) |
//! | `POST /api/dead/retry` | `{"id": N}` or `{"all": true}`: back into the outbox |
//! | `POST /api/dead/drop` | `{"id": N}`: deleted for good |
//! | `POST /api/space` | `{"occupied": N}`: re-base the occupied count (a hand count) |
//!
//! Every route that shows state renders one [`Snapshot`] taken for that request.
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
use lotlink_drivers::CancellationToken;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Secret;
use crate::snapshot::Snapshot;
pub(crate) use crate::snapshot::StatusContext;

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

/// Bind the status address.
pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener, StatusError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StatusError::Bind { addr, source })
}

/// Serve until `shutdown`; every request reads the newest context from `ctx`.
pub(crate) async fn serve(
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
        (Method::GET, "/status") => json_reply(StatusCode::OK, &Snapshot::take(ctx).to_json()),
        (Method::GET, "/metrics") => reply(
            StatusCode::OK,
            crate::metrics::render(&Snapshot::take(ctx)),
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

fn healthz(ctx: &StatusContext) -> Response<Full<Bytes>> {
    let problems = Snapshot::take(ctx).problems;
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
