//! Cameras that push over HTTP: one camera-facing listener (`[http]`), one URL path per
//! camera, and two formats: Vzenith HTTP push (`AlarmInfoPlate` JSON) and Hikvision ISAPI
//! (`EventNotificationAlert` XML, alone or in `multipart/form-data` with the pictures).
//!
//! ## The reply contract
//!
//! A plate result is answered `200` **only after** [`EventSink::submit`] returned, that is
//! after the event is on disk (fsynced) or was recognised as one already stored (a camera
//! re-posting what it did not get our answer for). When the gateway cannot store it (outbox
//! full, disk error, shutting down, or no answer within [`SUBMIT_WAIT`]) the answer is `503`
//! and the camera keeps the result and sends it again. The outbox dedupes re-posts by the
//! event's source key (see [`vz_source_key`] and [`hik_source_key`]) within its 10-minute
//! window.
//!
//! Vzenith: `200` with `{"Response_AlarmInfoPlate": {"info": "no"}}`. lotlink does not open
//! barriers: only a camera configured with `gate = "open"` gets `"info": "ok"` (which makes
//! the camera open its barrier) for every pass it reports. Heartbeats get
//! `{"Response_Heartbeat": {"info": "no"}}`. Hikvision: `200` with an ISAPI
//! `ResponseStatus`.
//!
//! ## Bad requests
//!
//! Every request gets an answer and every bad one is counted (on the camera whose path it
//! was sent to, else on the listener's own status) and logged with a rate limit
//! ([`should_log`]) naming the camera and the reason:
//!
//! | request | answer |
//! |---|---|
//! | from an address outside `allow` | 403 |
//! | an unknown path | 404 |
//! | not a POST | 405 |
//! | a body over `max_body` | 413 (at once when `Content-Length` says so) |
//! | headers or body not complete within `read_timeout` | connection closed (headers) / 408 (body) |
//! | not JSON / XML, broken multipart, no plate result, another camera's `sn` | 400 (403 for `sn`) |
//! | a picture that is not valid Base64 or not a JPEG/PNG | the pass is stored with a remark (the next picture, the snapshot or the placeholder instead) and counted |
//!
//! ## Connections
//!
//! At most `max_connections` connections are served at once; one more is answered `503`
//! and closed at once. Each connection runs in its own task, so a slow camera never holds
//! up another. Request bodies held in memory at once are capped ([`body_budget_kib`]); a
//! body that cannot get its share within `read_timeout` is answered `503`. Requests wait
//! for the bounded driver queue like every driver's events do.
//!
//! ## Liveness
//!
//! A camera is "connected" from its first valid request (a result, a heartbeat, a
//! non-ANPR Hikvision alert) until nothing valid was heard from it for
//! [`CAMERA_SILENCE`]; turn on the camera's heartbeat so a quiet lane stays "connected".

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

pub use ipnet::IpNet;

use crate::hikvision::{self, HikAlert, PictureKind};
use crate::snapshot::{fill_image, Snapshot};
use crate::vzenith::{self, VzPlate, VzTimeSource};
use crate::{
    should_log, Accepted, CancellationToken, Direction, Driver, DriverError, DriverFuture,
    DriverStatus, Event, EventSink, PlateEvent, SinkError,
};

pub mod config;

/// A camera from which nothing valid (no result, no heartbeat) was heard for this long is
/// shown as disconnected. Vzenith heartbeats come every 5–60 s when enabled; Hikvision
/// cameras send `heartBeat` alerts about every 30 s.
pub const CAMERA_SILENCE: Duration = Duration::from_secs(120);
/// Longest wait for the gateway's answer to one event; then `503` (the camera re-sends).
pub const SUBMIT_WAIT: Duration = Duration::from_secs(30);
/// How long open connections may finish their request after shutdown began.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often the listener looks for silent cameras.
const SILENCE_CHECK: Duration = Duration::from_secs(5);
/// Wait between attempts to bind the listen address.
const BIND_RETRY: Duration = Duration::from_secs(5);
/// Longest path or reason repeated in a log line or status.
const MAX_SHOWN: usize = 80;

/// Why the listener or a request failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The listen address cannot be bound (in use, no permission, not on this host).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The body is neither XML nor `multipart/form-data` with an XML part.
    #[error("{0}")]
    Body(String),
}

/// What a camera posts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushFormat {
    /// Vzenith HTTP push: `{"AlarmInfoPlate": …}` JSON, UTF-8 or GBK.
    Vzenith,
    /// Hikvision ISAPI: `EventNotificationAlert` XML, alone or in multipart with pictures.
    Hikvision,
}

/// One camera that posts to the listener (a lane).
#[derive(Debug, Clone)]
pub struct HttpCamera {
    /// Lane name (`nodeName`).
    pub name: String,
    /// What a pass means.
    pub direction: Direction,
    /// What it posts.
    pub format: PushFormat,
    /// The URL path it posts to (unique, starts with `/`).
    pub path: String,
    /// Only requests carrying this identity are taken (Vzenith `serialno`, Hikvision
    /// `deviceID` or MAC address); `None` = any.
    pub sn: Option<String>,
    /// Vzenith: answer `"info": "ok"` (open the barrier) for every pass.
    pub gate_open: bool,
    /// Snapshot for results without a picture.
    pub snapshot: Option<Snapshot>,
    /// Status shown per camera.
    pub status: DriverStatus,
    /// `styles` and `max_camera_skew`: what the shared normaliser applies.
    pub rules: crate::plate::CameraRules,
}

/// The listener's settings (`[http]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// Address to bind.
    pub listen: SocketAddr,
    /// Largest request body, bytes.
    pub max_body: usize,
    /// Only these client addresses; empty = any.
    pub allow: Vec<IpNet>,
    /// Time a client has to send its request headers, and then its body.
    pub read_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// See [`CAMERA_SILENCE`].
    pub silence: Duration,
}

/// The address the listener is bound to, once it is (`:0` ports resolved).
#[derive(Debug, Clone)]
pub struct BoundAddr {
    tx: Arc<watch::Sender<Option<SocketAddr>>>,
}

impl Default for BoundAddr {
    fn default() -> Self {
        BoundAddr {
            tx: Arc::new(watch::channel(None).0),
        }
    }
}

impl BoundAddr {
    /// The bound address right now (`None` while not listening).
    pub fn get(&self) -> Option<SocketAddr> {
        *self.tx.borrow()
    }

    /// Wait until the listener is bound; `None` if the listener is gone.
    pub async fn wait(&self) -> Option<SocketAddr> {
        let mut rx = self.tx.subscribe();
        let got = rx.wait_for(Option::is_some).await.ok()?;
        *got
    }

    fn set(&self, addr: Option<SocketAddr>) {
        self.tx.send_replace(addr);
    }
}

/// The camera-facing HTTP listener: a [`Driver`] serving every HTTP camera.
#[derive(Debug)]
pub struct HttpListener {
    /// Name in logs and status.
    pub name: String,
    /// `[http]`.
    pub settings: HttpSettings,
    /// The cameras, each on its own path.
    pub cameras: Vec<HttpCamera>,
    /// The lot's time zone (for Hikvision times without an offset).
    pub tz: chrono_tz::Tz,
    /// The listener's own status: connected while bound; bad requests no camera owns.
    pub status: DriverStatus,
    /// Where it is bound.
    pub bound: BoundAddr,
}

impl Driver for HttpListener {
    fn name(&self) -> &str {
        &self.name
    }

    fn run(self: Box<Self>, sink: EventSink, shutdown: CancellationToken) -> DriverFuture {
        Box::pin(async move { self.serve(sink, shutdown).await })
    }
}

/// A camera with the time it was last heard from.
struct Cam {
    cfg: HttpCamera,
    last_heard: Mutex<Option<Instant>>,
}

impl Cam {
    /// A valid request came: the camera is alive.
    fn heard(&self) {
        *self
            .last_heard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
        self.cfg.status.heard();
        if self.cfg.status.set_connected(true) {
            tracing::info!(camera = %self.cfg.name, "camera is posting");
        }
    }

    fn bad(&self, peer: IpAddr, reason: &str) {
        let n = self.cfg.status.bad_input(reason);
        if should_log(n) {
            tracing::warn!(camera = %self.cfg.name, %peer, reason, bad_inputs = n, "bad request from a camera: answered and counted");
        }
    }
}

/// Everything a request handler needs.
struct Shared {
    settings: HttpSettings,
    cams: Vec<Cam>,
    routes: HashMap<String, usize>,
    tz: chrono_tz::Tz,
    status: DriverStatus,
    sink: EventSink,
    /// Bytes of request bodies being read at once, in KiB (see [`body_budget_kib`]).
    body_budget: Arc<Semaphore>,
}

/// Request bodies read at once are held to this many KiB in all: 32 MiB, or two bodies of
/// `max_body` when that is more. A request that cannot get its share within `read_timeout`
/// is answered 503, so many large posts at once cannot run the gateway out of memory.
pub fn body_budget_kib(max_body: usize) -> u32 {
    let kib = (max_body.saturating_mul(2) / 1024).max(32 * 1024);
    u32::try_from(kib).unwrap_or(u32::MAX >> 4)
}

impl Shared {
    fn bad(&self, peer: IpAddr, reason: &str) {
        let n = self.status.bad_input(reason);
        if should_log(n) {
            tracing::warn!(listener = %self.status.name(), %peer, reason, bad_inputs = n, "bad request to the camera listener: answered and counted");
        }
    }

    fn allowed(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 @ IpAddr::V4(_) => v4,
        };
        self.settings.allow.is_empty() || self.settings.allow.iter().any(|n| n.contains(&ip))
    }
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn text(status: StatusCode, msg: &str) -> Reply {
    reply(status, "text/plain; charset=utf-8", format!("{msg}\n"))
}

/// An answer after which the connection is closed (the body was not read to its end).
fn closing(mut r: Reply) -> Reply {
    r.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    r
}

fn unavailable(msg: &str) -> Reply {
    let mut r = text(StatusCode::SERVICE_UNAVAILABLE, msg);
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("5"));
    r
}

/// Cut a text from a client for logs and status (no control characters).
fn shown(s: &str) -> String {
    s.chars()
        .take(MAX_SHOWN)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

impl HttpListener {
    async fn bind(&self, shutdown: &CancellationToken) -> Option<TcpListener> {
        let addr = self.settings.listen;
        // An operator must free the address: an error, summarised while it lasts.
        let mut outage = crate::Outage::new(
            format!("camera listener {addr}"),
            "cannot bind: HTTP cameras cannot deliver until it can",
            "bound after all",
        )
        .severity(crate::Severity::Error);
        loop {
            match TcpListener::bind(addr).await {
                Ok(l) => {
                    outage.recovered();
                    return Some(l);
                }
                Err(source) => {
                    let e = HttpError::Bind { addr, source };
                    self.status.set_problem(&e.to_string());
                    outage.failed(&e);
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(BIND_RETRY) => {}
            }
        }
    }

    async fn serve(self, sink: EventSink, shutdown: CancellationToken) -> Result<(), DriverError> {
        let Some(listener) = self.bind(&shutdown).await else {
            return Ok(());
        };
        let local = listener.local_addr().unwrap_or(self.settings.listen);
        self.bound.set(Some(local));
        self.status.set_connected(true);
        tracing::info!(listen = %local, cameras = self.cameras.len(), "camera listener serving");
        let HttpListener {
            settings,
            cameras,
            tz,
            status,
            bound,
            ..
        } = self;
        let routes = cameras
            .iter()
            .enumerate()
            .map(|(i, c)| (c.path.clone(), i))
            .collect();
        let shared = Arc::new(Shared {
            cams: cameras
                .into_iter()
                .map(|cfg| Cam {
                    cfg,
                    last_heard: Mutex::new(None),
                })
                .collect(),
            routes,
            tz,
            status,
            sink,
            body_budget: Arc::new(Semaphore::new(
                usize::try_from(body_budget_kib(settings.max_body)).unwrap_or(usize::MAX >> 4),
            )),
            settings,
        });
        let slots = Arc::new(Semaphore::new(shared.settings.max_connections.max(1)));
        let mut conns = tokio::task::JoinSet::new();
        let mut silence = tokio::time::interval(SILENCE_CHECK.min(shared.settings.silence));
        silence.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                _ = silence.tick() => {
                    check_silence(&shared);
                    continue;
                }
                a = listener.accept() => a,
            };
            match accepted {
                Ok((stream, peer)) => {
                    if let Ok(permit) = slots.clone().try_acquire_owned() {
                        conns.spawn(serve_connection(
                            shared.clone(),
                            stream,
                            peer,
                            permit,
                            shutdown.clone(),
                        ));
                    } else {
                        shared.bad(peer.ip(), "too many connections: answered 503 and closed");
                        refuse_busy(&stream);
                    }
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, never spin.
                    tracing::debug!(error = %e, "camera listener accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            while conns.try_join_next().is_some() {}
        }
        drop(listener);
        // Open connections finish their request (they were told to) or are dropped.
        let _ = tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(1), async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        conns.abort_all();
        bound.set(None);
        shared.status.set_connected(false);
        for c in &shared.cams {
            c.cfg.status.set_connected(false);
        }
        Ok(())
    }
}

/// Mark cameras silent for longer than the window as disconnected (logged once).
fn check_silence(shared: &Shared) {
    let now = Instant::now();
    for c in &shared.cams {
        let last = *c
            .last_heard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|t| now.duration_since(t) > shared.settings.silence)
            && c.cfg.status.set_connected(false)
        {
            tracing::warn!(camera = %c.cfg.name, silent_for = ?shared.settings.silence, "camera silent: no result and no heartbeat");
        }
    }
}

/// One connection over the limit: a fixed `503` written without waiting, then closed.
fn refuse_busy(stream: &TcpStream) {
    let _ = stream.try_write(
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
    );
}

async fn serve_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    shutdown: CancellationToken,
) {
    let svc_shared = shared.clone();
    let service = hyper::service::service_fn(move |req| {
        let shared = svc_shared.clone();
        async move { Ok::<_, Infallible>(handle(&shared, peer.ip(), req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.settings.read_timeout)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await.unwrap_or(Ok(()))
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            shared.bad(
                peer.ip(),
                "read timeout: the request headers did not come in time",
            );
        } else if e.is_parse() || e.is_parse_too_large() {
            shared.bad(peer.ip(), &format!("not an HTTP/1 request: {e}"));
        } else {
            tracing::debug!(%peer, error = %e, "camera connection ended");
        }
    }
    drop(permit);
}

/// Route and answer one request.
async fn handle(shared: &Shared, peer: IpAddr, req: Request<Incoming>) -> Reply {
    if !shared.allowed(peer) {
        shared.bad(peer, "address not in [http] allow");
        return closing(text(
            StatusCode::FORBIDDEN,
            "this address may not post here ([http] allow)",
        ));
    }
    let path = req.uri().path();
    let Some(&i) = shared.routes.get(path) else {
        shared.bad(peer, &format!("unknown path {}", shown(path)));
        return closing(text(StatusCode::NOT_FOUND, "no camera posts to this path"));
    };
    let cam = &shared.cams[i];
    if req.method() != Method::POST {
        cam.bad(peer, &format!("method {} (cameras POST)", req.method()));
        let mut r = closing(text(StatusCode::METHOD_NOT_ALLOWED, "cameras POST here"));
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    let max = shared.settings.max_body;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        cam.bad(peer, &format!("body over max_body ({max} bytes)"));
        return closing(text(StatusCode::PAYLOAD_TOO_LARGE, "body over max_body"));
    }
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    // The body's share of the memory budget: what it declares, else the most it may be.
    let want_kib = u32::try_from(declared.map_or(max as u64, |n| n).div_ceil(1024))
        .unwrap_or(u32::MAX)
        .clamp(1, body_budget_kib(max));
    let Ok(Ok(_share)) = tokio::time::timeout(
        shared.settings.read_timeout,
        shared.body_budget.clone().acquire_many_owned(want_kib),
    )
    .await
    else {
        cam.bad(peer, "too many large bodies at once: answered 503");
        return closing(unavailable("busy: send it again"));
    };
    let read = Limited::new(req.into_body(), max).collect();
    let body = match tokio::time::timeout(shared.settings.read_timeout, read).await {
        Err(_) => {
            cam.bad(peer, "read timeout: the body did not come in time");
            return closing(text(
                StatusCode::REQUEST_TIMEOUT,
                "the body came too slowly",
            ));
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            cam.bad(peer, &format!("body over max_body ({max} bytes)"));
            return closing(text(StatusCode::PAYLOAD_TOO_LARGE, "body over max_body"));
        }
        Ok(Err(e)) => {
            cam.bad(peer, &format!("body broken off: {e}"));
            return closing(text(StatusCode::BAD_REQUEST, "the body was broken off"));
        }
        Ok(Ok(b)) => b.to_bytes(),
    };
    match cam.cfg.format {
        PushFormat::Vzenith => vzenith_request(shared, cam, peer, &content_type, &body).await,
        PushFormat::Hikvision => hikvision_request(shared, cam, peer, &content_type, body).await,
    }
}

// ---------------------------------------------------------------------------------------
// Storing an event
// ---------------------------------------------------------------------------------------

/// What became of an event handed to the gateway.
enum Stored {
    /// On disk (or already there): answer 200.
    Yes,
    /// Not stored: answer 503, the camera keeps it.
    No(String),
    /// Never storable (counted as bad input): answer 400.
    Invalid(String),
}

/// Normalise what the camera said (the one normaliser every driver uses: plate text,
/// colour, carStyle, camera clock) and store it.
async fn store_reading(shared: &Shared, cam: &Cam, r: crate::plate::Reading) -> Stored {
    let ev = crate::plate::normalise(
        r,
        cam.cfg.direction,
        &cam.cfg.rules,
        &cam.cfg.status,
        shared.sink.now_ms(),
    );
    store(shared, cam, ev).await
}

async fn store(shared: &Shared, cam: &Cam, mut ev: PlateEvent) -> Stored {
    fill_image(&mut ev, cam.cfg.snapshot.as_ref()).await;
    match tokio::time::timeout(SUBMIT_WAIT, shared.sink.submit(Event::Plate(ev))).await {
        Ok(Ok(Accepted::Stored(_) | Accepted::Duplicate | Accepted::Applied)) => {
            cam.cfg.status.event();
            Stored::Yes
        }
        Ok(Err(SinkError::Invalid(m))) => Stored::Invalid(m),
        Ok(Err(e @ (SinkError::Closed | SinkError::Unavailable(_)))) => {
            let m = e.to_string();
            cam.cfg.status.set_problem(&format!("not stored: {m}"));
            tracing::debug!(camera = %cam.cfg.name, reason = %m, "result not stored: answered 503, the camera keeps it");
            Stored::No(m)
        }
        Err(_) => {
            cam.cfg
                .status
                .set_problem("not stored in time: the gateway is busy");
            Stored::No("the gateway did not store it in time".into())
        }
    }
}

fn is_picture(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xD8, 0xFF]) || bytes.starts_with(b"\x89PNG\r\n\x1a\n")
}

/// A 64-bit FNV-1a hash: stable across builds and restarts (a dedupe key must be).
fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

// ---------------------------------------------------------------------------------------
// Vzenith HTTP push
// ---------------------------------------------------------------------------------------

/// A Vzenith HTTP push body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VzPush {
    /// `{"heartbeat": {…}}`: camera liveness only.
    Heartbeat {
        /// `serialno`, when present.
        sn: Option<String>,
    },
    /// `{"AlarmInfoPlate": {…}}`.
    Plate(Box<VzPushPlate>),
}

/// A plate result posted over HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VzPushPlate {
    /// The plate result as the shared Vzenith parser reads it (plain-text `license`).
    pub plate: VzPlate,
    /// `AlarmInfoPlate.serialno`, when present.
    pub serialno: Option<String>,
    /// The picture: `imageFile` (the scene), else `imageFragmentFile` (the plate crop),
    /// else `full_image_content` / `small_image_content`.
    pub image: Option<Vec<u8>>,
    /// Pictures that were present but unusable (invalid Base64, not a JPEG or PNG).
    pub image_problems: Vec<String>,
    /// `imagePath`: the picture's path on the camera (unique per capture).
    pub image_path: Option<String>,
    /// FNV-1a of the plate result's JSON (a re-post gives the same).
    pub content_hash: u64,
}

/// Body text: UTF-8, or GBK when the `Content-Type` says so or the bytes are not UTF-8.
/// Trailing NULs and whitespace (old firmware) are dropped.
pub fn body_text<'a>(body: &'a [u8], content_type: &str) -> std::borrow::Cow<'a, str> {
    let ct = content_type.to_ascii_lowercase();
    let gbk = ["gbk", "gb2312", "gb18030"].iter().any(|c| ct.contains(c));
    let text = match (gbk, std::str::from_utf8(body)) {
        (false, Ok(t)) => std::borrow::Cow::Borrowed(t),
        _ => encoding_rs::GBK.decode_without_bom_handling(body).0,
    };
    match text {
        std::borrow::Cow::Borrowed(t) => {
            std::borrow::Cow::Borrowed(t.trim_matches(|c: char| c == '\0' || c.is_whitespace()))
        }
        std::borrow::Cow::Owned(t) => std::borrow::Cow::Owned(
            t.trim_matches(|c: char| c == '\0' || c.is_whitespace())
                .to_owned(),
        ),
    }
}

fn text_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.trim().to_owned()).filter(|s| !s.is_empty()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Parses a Vzenith HTTP push body (already text, see [`body_text`]).
pub fn parse_vz_push(text: &str) -> Result<VzPush, vzenith::VzError> {
    let root: Value = serde_json::from_str(text)?;
    if !root.is_object() {
        return Err(vzenith::VzError::NotAnObject);
    }
    if let Some(hb) = root.get("heartbeat") {
        let sn = text_of(hb.get("serialno")).or_else(|| text_of(root.get("serialno")));
        return Ok(VzPush::Heartbeat { sn });
    }
    let info = root.get("AlarmInfoPlate").unwrap_or(&root);
    let serialno = text_of(info.get("serialno"));
    let mut plate = vzenith::parse_plate_result(serialno.as_deref().unwrap_or(""), info, false)?;
    let result = info
        .get("result")
        .and_then(|r| r.get("PlateResult"))
        .or_else(|| info.get("PlateResult"))
        .unwrap_or(&Value::Null);
    let mut image_problems = Vec::new();
    let mut image = None;
    for key in ["imageFile", "imageFragmentFile"] {
        let Some(b64) = result
            .get(key)
            .or_else(|| info.get(key))
            .and_then(Value::as_str)
        else {
            continue;
        };
        match vzenith::decode_base64_image(b64) {
            Ok(bytes) if bytes.is_empty() => {}
            Ok(bytes) if is_picture(&bytes) => {
                image = Some(bytes);
                break;
            }
            Ok(_) => image_problems.push(format!("{key}: not a JPEG or PNG picture")),
            Err(e) => image_problems.push(format!("{key}: invalid Base64 ({e})")),
        }
    }
    if image.is_none() {
        if let Some(bytes) = plate.image.take() {
            if is_picture(&bytes) {
                image = Some(bytes);
            } else {
                image_problems.push("full_image_content: not a JPEG or PNG picture".into());
            }
        }
    }
    if let Some(e) = plate.image_error.take() {
        image_problems.push(e);
    }
    let content_hash = fnv64(&serde_json::to_vec(result).unwrap_or_default());
    Ok(VzPush::Plate(Box::new(VzPushPlate {
        plate,
        serialno,
        image,
        image_problems,
        image_path: text_of(result.get("imagePath")),
        content_hash,
    })))
}

/// The dedupe key of a Vzenith result posted by camera `camera`: its capture time and
/// plate when the result carries `timeStamp`; else its `imagePath`; else the hash of the
/// whole plate result (so two identical short results within the outbox's dedupe window
/// are taken as one re-posted result).
pub fn vz_source_key(camera: &str, p: &VzPushPlate) -> String {
    if let (VzTimeSource::Plate, Some(ms)) = (p.plate.time_source, p.plate.captured_at_ms) {
        return format!(
            "vzhttp:{camera}:{ms}:{}",
            p.plate.plate.as_deref().unwrap_or("-")
        );
    }
    if let Some(path) = &p.image_path {
        return format!("vzhttp:{camera}:path:{path}");
    }
    format!("vzhttp:{camera}:h:{:016x}", p.content_hash)
}

fn vz_reply(open: bool) -> Reply {
    let info = if open { "ok" } else { "no" };
    reply(
        StatusCode::OK,
        "application/json",
        json!({ "Response_AlarmInfoPlate": { "info": info } }).to_string(),
    )
}

fn sn_mismatch(cam: &Cam, peer: IpAddr, got: Option<&str>) -> Option<Reply> {
    let want = cam.cfg.sn.as_deref()?;
    if got.is_some_and(|g| g.trim().eq_ignore_ascii_case(want)) {
        return None;
    }
    cam.bad(
        peer,
        &format!(
            "sent by another camera ({}), not sn {want}",
            shown(got.unwrap_or("no serial number"))
        ),
    );
    Some(text(
        StatusCode::FORBIDDEN,
        "this path belongs to another camera (sn)",
    ))
}

async fn vzenith_request(
    shared: &Shared,
    cam: &Cam,
    peer: IpAddr,
    content_type: &str,
    body: &[u8],
) -> Reply {
    let push = match parse_vz_push(&body_text(body, content_type)) {
        Ok(p) => p,
        Err(e) => {
            cam.bad(peer, &format!("not a Vzenith push: {e}"));
            return text(StatusCode::BAD_REQUEST, &format!("not a Vzenith push: {e}"));
        }
    };
    let p = match push {
        VzPush::Heartbeat { sn } => {
            if let Some(r) = sn_mismatch(cam, peer, sn.as_deref()) {
                return r;
            }
            cam.heard();
            return reply(
                StatusCode::OK,
                "application/json",
                json!({ "Response_Heartbeat": { "info": "no" } }).to_string(),
            );
        }
        VzPush::Plate(p) => p,
    };
    if let Some(r) = sn_mismatch(cam, peer, p.serialno.as_deref()) {
        return r;
    }
    cam.heard();
    if p.plate.lingering {
        tracing::debug!(camera = %cam.cfg.name, trigger = p.plate.trigger, "lingering/turn-back trigger: not a pass");
        return vz_reply(false);
    }
    let mut notes = Vec::new();
    if !p.image_problems.is_empty() {
        let problems = p.image_problems.join("; ");
        cam.bad(peer, &format!("picture unusable: {problems}"));
        notes.push(format!("图片无效 (camera picture unusable: {problems})"));
    }
    let source_key = vz_source_key(&cam.cfg.name, &p);
    let VzPushPlate { plate, image, .. } = *p;
    let mut r = plate.reading(&cam.cfg.name);
    r.source_key = source_key;
    r.image = image;
    r.notes.extend(notes);
    match store_reading(shared, cam, r).await {
        Stored::Yes => vz_reply(cam.cfg.gate_open),
        Stored::No(m) => unavailable(&format!("not stored, send it again: {m}")),
        Stored::Invalid(m) => {
            cam.bad(peer, &m);
            text(StatusCode::BAD_REQUEST, &m)
        }
    }
}

// ---------------------------------------------------------------------------------------
// Hikvision ISAPI
// ---------------------------------------------------------------------------------------

/// An alert with the picture parts that came with it.
#[derive(Debug, Clone)]
pub struct HikPush {
    /// The `EventNotificationAlert`.
    pub alert: HikAlert,
    /// Picture parts: (part name or file name, bytes).
    pub pictures: Vec<(String, Bytes)>,
}

fn looks_like_xml(bytes: &[u8]) -> bool {
    let t = bytes.trim_ascii_start();
    let t = t.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(t);
    t.first() == Some(&b'<')
}

/// Reads a Hikvision request body: `multipart/form-data` (the XML part, picture parts) or
/// the XML alone.
pub async fn parse_hik_request(content_type: &str, body: Bytes) -> Result<HikPush, HttpError> {
    let ct = content_type.to_ascii_lowercase();
    if !ct.starts_with("multipart/") {
        if !(ct.contains("xml") || looks_like_xml(&body)) {
            return Err(HttpError::Body(
                "neither XML nor multipart/form-data".into(),
            ));
        }
        let alert = hikvision::parse_alert(&body).map_err(|e| HttpError::Body(e.to_string()))?;
        return Ok(HikPush {
            alert,
            pictures: Vec::new(),
        });
    }
    let boundary = multer::parse_boundary(content_type)
        .map_err(|e| HttpError::Body(format!("multipart: {e}")))?;
    let stream = futures_util::stream::iter([Ok::<Bytes, Infallible>(body)]);
    let mut parts = multer::Multipart::new(stream, boundary);
    let mut xml: Option<Bytes> = None;
    let mut pictures = Vec::new();
    while let Some(field) = parts
        .next_field()
        .await
        .map_err(|e| HttpError::Body(format!("broken multipart: {e}")))?
    {
        let name = field
            .file_name()
            .or_else(|| field.name())
            .unwrap_or("")
            .to_owned();
        let part_type = field
            .content_type()
            .map(|m| m.essence_str().to_ascii_lowercase())
            .unwrap_or_default();
        let data = field
            .bytes()
            .await
            .map_err(|e| HttpError::Body(format!("broken multipart: {e}")))?;
        let ext = std::path::Path::new(&name)
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        let is_xml = part_type.contains("xml")
            || ext == "xml"
            || (!part_type.starts_with("image/") && looks_like_xml(&data));
        if is_xml {
            if xml.is_none() {
                xml = Some(data);
            }
        } else if part_type.starts_with("image/")
            || is_picture(&data)
            || ["jpg", "jpeg", "png"].contains(&ext.as_str())
        {
            pictures.push((name, data));
        }
    }
    let xml = xml.ok_or_else(|| HttpError::Body("multipart without an XML part".into()))?;
    let alert = hikvision::parse_alert(&xml).map_err(|e| HttpError::Body(e.to_string()))?;
    Ok(HikPush { alert, pictures })
}

/// The dedupe key of a Hikvision alert from camera `camera`: its `UUID`, else its
/// `dateTime` and plate; empty (no dedupe) when it has neither.
pub fn hik_source_key(camera: &str, alert: &HikAlert, plate: Option<&str>) -> String {
    if let Some(uuid) = &alert.uuid {
        return format!("hik:{camera}:{uuid}");
    }
    match &alert.date_time {
        Some(t) => format!("hik:{camera}:{t}:{}", plate.unwrap_or("-")),
        None => String::new(),
    }
}

/// The record's picture: the first scene picture that is a JPEG/PNG, else the plate crop;
/// with the parts that were not pictures.
pub fn pick_hik_picture(push: &HikPush) -> (Option<Vec<u8>>, Vec<String>) {
    let mut problems = Vec::new();
    let mut crop = None;
    for (name, data) in &push.pictures {
        if !is_picture(data) {
            problems.push(format!("{}: not a JPEG or PNG picture", shown(name)));
            continue;
        }
        match push.alert.picture_kind(name) {
            PictureKind::Scene => return (Some(data.to_vec()), problems),
            PictureKind::PlateCrop => {
                if crop.is_none() {
                    crop = Some(data.to_vec());
                }
            }
        }
    }
    (crop, problems)
}

fn hik_ok(path: &str) -> Reply {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ResponseStatus version=\"2.0\" xmlns=\"http://www.isapi.org/ver20/XMLSchema\"><requestURL>{}</requestURL><statusCode>1</statusCode><statusString>OK</statusString><subStatusCode>ok</subStatusCode></ResponseStatus>\n",
        path.replace('&', "&amp;").replace('<', "&lt;")
    );
    reply(StatusCode::OK, "application/xml; charset=utf-8", body)
}

async fn hikvision_request(
    shared: &Shared,
    cam: &Cam,
    peer: IpAddr,
    content_type: &str,
    body: Bytes,
) -> Reply {
    let push = match parse_hik_request(content_type, body).await {
        Ok(p) => p,
        Err(e) => {
            cam.bad(peer, &format!("not an ISAPI alert: {e}"));
            return text(StatusCode::BAD_REQUEST, &format!("not an ISAPI alert: {e}"));
        }
    };
    let alert = &push.alert;
    if let Some(want) = cam.cfg.sn.as_deref() {
        if !alert.matches_sn(want) {
            let got = alert
                .device_id
                .as_deref()
                .or(alert.mac.as_deref())
                .unwrap_or("no deviceID or MAC");
            cam.bad(
                peer,
                &format!("sent by another camera ({}), not sn {want}", shown(got)),
            );
            return text(
                StatusCode::FORBIDDEN,
                "this path belongs to another camera (sn)",
            );
        }
    }
    cam.heard();
    if !alert.is_anpr() {
        tracing::trace!(camera = %cam.cfg.name, event = %shown(&alert.event_type), "alert that is not a plate read: liveness only");
        return hik_ok(&cam.cfg.path);
    }
    let anpr = alert.anpr.clone().unwrap_or_default();
    let (plate, prefix_color) = anpr
        .license_plate
        .as_deref()
        .map_or((None, None), hikvision::split_plate);
    let color = anpr
        .plate_color
        .as_deref()
        .and_then(hikvision::color_word)
        .or(prefix_color);
    let captured_at_ms = alert
        .date_time
        .as_deref()
        .and_then(|t| hikvision::parse_date_time(t, shared.tz));
    let (image, problems) = pick_hik_picture(&push);
    let mut notes = Vec::new();
    if !problems.is_empty() {
        let problems = problems.join("; ");
        cam.bad(peer, &format!("picture unusable: {problems}"));
        notes.push(format!("图片无效 (camera picture unusable: {problems})"));
    }
    if alert.retransmission {
        tracing::debug!(camera = %cam.cfg.name, "a retransmitted alert: stored once by its UUID");
    }
    let r = crate::plate::Reading {
        source_key: hik_source_key(&cam.cfg.name, alert, plate.as_deref()),
        node_name: cam.cfg.name.clone(),
        direction: None,
        plate,
        color: color.map(str::to_owned),
        style: anpr.vehicle_type.clone(),
        vendor_style: Some(
            anpr.vehicle_type
                .as_deref()
                .map_or(crate::CarStyle::Car, hikvision::style_of),
        ),
        captured_at_ms,
        // A retransmitted alert may be old; its time says nothing about the camera's clock.
        buffered: alert.retransmission,
        brand: None,
        image,
        replaced: Vec::new(),
        notes,
    };
    match store_reading(shared, cam, r).await {
        Stored::Yes => hik_ok(&cam.cfg.path),
        Stored::No(m) => unavailable(&format!("not stored, send it again: {m}")),
        Stored::Invalid(m) => {
            cam.bad(peer, &m);
            text(StatusCode::BAD_REQUEST, &m)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    /// A listener with one Vzenith camera on `/push/e1`, serving `sink` on 127.0.0.1:0.
    async fn serve(
        sink: EventSink,
        silence: Duration,
    ) -> (String, DriverStatus, CancellationToken) {
        let status = DriverStatus::new("入口1", "http-camera");
        let listener = HttpListener {
            name: "http".into(),
            settings: HttpSettings {
                listen: "127.0.0.1:0".parse().expect("addr"),
                max_body: 1 << 20,
                allow: Vec::new(),
                read_timeout: Duration::from_secs(5),
                max_connections: 8,
                silence,
            },
            cameras: vec![HttpCamera {
                name: "入口1".into(),
                direction: Direction::In,
                format: PushFormat::Vzenith,
                path: "/push/e1".into(),
                sn: None,
                gate_open: false,
                snapshot: None,
                status: status.clone(),
                rules: crate::plate::CameraRules::default(),
            }],
            tz: chrono_tz::Asia::Shanghai,
            status: DriverStatus::new("http", "http-listener"),
            bound: BoundAddr::default(),
        };
        let bound = listener.bound.clone();
        let stop = CancellationToken::new();
        tokio::spawn(Box::new(listener).run(sink, stop.clone()));
        let addr = bound.wait().await.expect("bound");
        (format!("http://{addr}/push/e1"), status, stop)
    }

    const RESULT: &str = r#"{"AlarmInfoPlate":{"serialno":"s1","result":{"PlateResult":{"license":"晋A12345","colorType":1,"timeStamp":{"Timeval":{"sec":1795824930}}}}}}"#;

    #[tokio::test]
    async fn the_answer_is_the_stores_answer_200_only_when_stored_503_otherwise() {
        let (sink, mut rx) = EventSink::channel(4);
        let (url, status, stop) = serve(sink, CAMERA_SILENCE).await;
        let answers = [
            (Err(SinkError::Unavailable("outbox full".into())), 503),
            (Err(SinkError::Closed), 503),
            (Ok(Accepted::Stored(1)), 200),
            (Ok(Accepted::Duplicate), 200),
        ];
        for (answer, want) in answers {
            let request = tokio::spawn(reqwest::Client::new().post(&url).body(RESULT).send());
            let sub = rx.recv().await.expect("the event reaches the ingest side");
            match &sub.event {
                Event::Plate(p) => {
                    assert_eq!(p.plate.as_deref(), Some("晋A12345"));
                    assert_eq!(p.source_key, "vzhttp:入口1:1795824930000:晋A12345");
                    assert_eq!(p.captured_at_ms, Some(1_795_824_930_000));
                }
                other => panic!("{other:?}"),
            }
            // The camera's answer is decided by the store's: it cannot have gone out before.
            let _ = sub.reply.send(answer);
            let r = request.await.expect("task").expect("answered");
            assert_eq!(r.status().as_u16(), want);
            if want == 200 {
                let v: Value = serde_json::from_str(&r.text().await.expect("body")).expect("JSON");
                assert_eq!(v["Response_AlarmInfoPlate"]["info"], "no");
            }
        }
        assert_eq!(status.snapshot().events, 2);
        stop.cancel();
    }

    #[tokio::test]
    async fn a_camera_heard_from_is_connected_until_it_falls_silent() {
        let (sink, _rx) = EventSink::channel(4);
        let (url, status, stop) = serve(sink, Duration::from_millis(100)).await;
        assert!(!status.connected());
        let r = reqwest::Client::new()
            .post(&url)
            .body(r#"{"heartbeat":{"countid":1,"serialno":"s1"}}"#)
            .send()
            .await
            .expect("answered");
        assert_eq!(r.status().as_u16(), 200);
        assert!(status.connected());
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        while status.connected() && Instant::now() < deadline {
            tick.tick().await;
        }
        assert!(!status.connected(), "silent for longer than the window");
        assert!(status.snapshot().last_heard_ms > 0);
        stop.cancel();
    }

    #[test]
    fn the_body_budget_holds_32_mib_or_two_of_the_largest_bodies() {
        assert_eq!(body_budget_kib(8 << 20), 32 * 1024);
        assert_eq!(body_budget_kib(64 << 20), 128 * 1024);
    }

    #[test]
    fn gbk_bodies_are_read_when_declared_or_when_not_utf8() {
        let gbk = encoding_rs::GBK.encode("{\"license\":\"晋A12345\"}").0;
        assert_eq!(
            body_text(&gbk, "application/json"),
            "{\"license\":\"晋A12345\"}"
        );
        assert_eq!(
            body_text(&gbk, "application/json; charset=GBK"),
            "{\"license\":\"晋A12345\"}"
        );
        assert_eq!(body_text("{}\n\0".as_bytes(), ""), "{}");
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn the_scene_picture_wins_over_the_crop_and_bad_pictures_are_reported() {
        let jpeg = [0xFF, 0xD8, 0xFF, 0xE0, 1, 2];
        let crop = [0xFF, 0xD8, 0xFF, 0xE0, 9, 9];
        let body = format!(
            r#"{{"AlarmInfoPlate":{{"serialno":"s1","result":{{"PlateResult":{{"license":"晋A12345","imageFile":"{}","imageFragmentFile":"{}"}}}}}}}}"#,
            b64(&jpeg),
            b64(&crop)
        );
        let VzPush::Plate(p) = parse_vz_push(&body).expect("parses") else {
            panic!("not a plate")
        };
        assert_eq!(p.image.as_deref(), Some(&jpeg[..]));
        assert!(p.image_problems.is_empty());
        assert_eq!(p.serialno.as_deref(), Some("s1"));

        let body = format!(
            r#"{{"AlarmInfoPlate":{{"result":{{"PlateResult":{{"license":"晋A12345","imageFile":"{}","imageFragmentFile":"{}"}}}}}}}}"#,
            b64(b"GIF89a not a jpeg"),
            b64(&crop)
        );
        let VzPush::Plate(p) = parse_vz_push(&body).expect("parses") else {
            panic!("not a plate")
        };
        assert_eq!(p.image.as_deref(), Some(&crop[..]));
        assert_eq!(p.image_problems.len(), 1, "{:?}", p.image_problems);

        let body = r#"{"AlarmInfoPlate":{"result":{"PlateResult":{"license":"晋A12345","imageFile":"@@@"}}}}"#;
        let VzPush::Plate(p) = parse_vz_push(body).expect("parses") else {
            panic!("not a plate")
        };
        assert_eq!(p.image, None);
        assert!(
            p.image_problems[0].contains("Base64"),
            "{:?}",
            p.image_problems
        );
    }

    #[test]
    fn heartbeats_in_either_layout_are_liveness() {
        assert_eq!(
            parse_vz_push(
                r#"{"heartbeat":{"countid":7,"timeStamp":1795824930,"serialno":"ab-12"}}"#
            )
            .unwrap(),
            VzPush::Heartbeat {
                sn: Some("ab-12".into())
            }
        );
        assert_eq!(
            parse_vz_push(r#"{"heartbeat":1,"serialno":"ab-12","countid":3}"#).unwrap(),
            VzPush::Heartbeat {
                sn: Some("ab-12".into())
            }
        );
    }

    #[test]
    fn source_keys_use_the_time_then_the_image_path_then_the_content() {
        let full = r#"{"AlarmInfoPlate":{"result":{"PlateResult":{"license":"晋A12345","timeStamp":{"Timeval":{"sec":1795824930,"usec":5000}}}}}}"#;
        let short_path = r#"{"AlarmInfoPlate":{"result":{"PlateResult":{"license":"晋A12345","imagePath":"%2Fmmc%2F20261128%2F0815.jpg"}}}}"#;
        let short =
            r#"{"AlarmInfoPlate":{"result":{"PlateResult":{"license":"晋A12345","colorType":1}}}}"#;
        let other =
            r#"{"AlarmInfoPlate":{"result":{"PlateResult":{"license":"晋A12346","colorType":1}}}}"#;
        let key = |t: &str| match parse_vz_push(t).unwrap() {
            VzPush::Plate(p) => vz_source_key("入口1", &p),
            VzPush::Heartbeat { .. } => panic!("heartbeat"),
        };
        assert_eq!(key(full), "vzhttp:入口1:1795824930005:晋A12345");
        assert_eq!(
            key(short_path),
            "vzhttp:入口1:path:%2Fmmc%2F20261128%2F0815.jpg"
        );
        assert!(key(short).starts_with("vzhttp:入口1:h:"));
        assert_eq!(key(short), key(short));
        assert_ne!(key(short), key(other));
    }

    #[tokio::test]
    async fn a_multipart_alert_gives_the_xml_and_the_pictures() {
        let xml = "<EventNotificationAlert><eventType>ANPR</eventType><ANPR><licensePlate>蓝晋A12345</licensePlate></ANPR></EventNotificationAlert>";
        let body = format!(
            "--b0\r\nContent-Disposition: form-data; name=\"anpr.xml\"; filename=\"anpr.xml\"\r\nContent-Type: application/xml\r\n\r\n{xml}\r\n\
             --b0\r\nContent-Disposition: form-data; name=\"licensePlatePicture.jpg\"; filename=\"licensePlatePicture.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n\u{00ff}\r\n--b0--\r\n"
        );
        let push = parse_hik_request("multipart/form-data; boundary=b0", Bytes::from(body))
            .await
            .expect("parses");
        assert!(push.alert.is_anpr());
        assert_eq!(push.pictures.len(), 1);
        assert_eq!(push.pictures[0].0, "licensePlatePicture.jpg");
        let (image, problems) = pick_hik_picture(&push);
        assert_eq!(image, None);
        assert_eq!(problems.len(), 1);
        assert!(parse_hik_request(
            "multipart/form-data; boundary=b0",
            Bytes::from("--b0\r\nbroken")
        )
        .await
        .is_err());
        assert!(parse_hik_request("application/json", Bytes::from("{}"))
            .await
            .is_err());
    }
}
