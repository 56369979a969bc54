//! An in-process simulator of the city platform 并州行, used by `lotlink demo` and by the
//! end-to-end tests and benchmarks.
//!
//! [`PlatformSim::start`] binds a real HTTP/1.1 server on `127.0.0.1` (ephemeral port) that
//! answers the three platform routes (`/park/heartbeat`, `/dataSync/parkSpace`,
//! `/dataSync/carInOut`) the way the real platform does. It is deliberately independent of
//! the gateway's client code (it computes its own MD5 signatures), so a client bug is not
//! mirrored here.
//!
//! # What it checks
//!
//! * the route (unknown path: HTTP 404, other method than POST: HTTP 405) and the body size
//!   (over [`SimConfig::max_body`]: HTTP 413);
//! * `Content-Type: application/json;charset=UTF-8` (case and spaces ignored), else `1501`;
//! * the envelope: `cmd` present (`1001`) and matching the route (`1008`), `lotCode` known
//!   (`1000`), `auth == md5(cmd + lotCode + ts + token)` in lower-case hex (upper-case only
//!   with [`SimConfig::accept_upper_auth`]) and `ts` a string of digits in the expected unit
//!   ([`TsUnit`]) within [`SimConfig::window`] of the simulator's clock (real clock plus
//!   [`PlatformSim::set_skew_ms`]); both failures answer `1002`;
//! * `data` as a JSON object/array or as a string holding JSON text;
//! * parkSpace: integer `totalSpace`/`surplusSpace`, `0 <= surplus <= total < 10^9`;
//! * carInOut: 1..=100 records, each with every field checked like a strict platform
//!   (missing required field `1501`, bad value `1502`), a poisoned plate
//!   ([`PlatformSim::set_poison`]) `1502`, and duplicates `1004`. A batch is accepted or
//!   refused whole: one bad or already stored record refuses all of it.
//!
//! Every response carries an HTTP `Date` header taken from the simulator's (skewed) clock.
//!
//! # Scripting
//!
//! Everything can be changed at run time through `&self` (the simulator is a cheap clone):
//! [`PlatformSim::set_mode`] takes the whole platform down in several ways ([`Mode`]),
//! [`PlatformSim::push_script`] makes the next requests to a route get canned answers
//! ([`Scripted`]), and the clock skew, `ts` unit, poison plate and success style can be
//! changed. [`PlatformSim::records`], [`PlatformSim::space_reports`] and
//! [`PlatformSim::stats`] show what arrived; [`PlatformSim::wait_until`] waits (without
//! polling) until the statistics satisfy a predicate.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::future::poll_fn;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, DATE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use md5::{Digest as _, Md5};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

/// Most records a carInOut request may carry.
pub const MAX_BATCH: usize = 100;
/// Longest `imgData` (Base64 characters) the platform accepts.
pub const MAX_IMG_DATA_CHARS: usize = 50_000;
/// Spaces must stay below this (Integer(9)).
pub const MAX_SPACES: u64 = 1_000_000_000;

const EXPECTED_CONTENT_TYPE: &str = "application/json;charset=utf-8";
/// A body over the limit is still read (and dropped) up to this size, so the client sees
/// the 413 instead of a reset.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;
const PNG_MAGIC: &[u8] = &[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
const JPEG_MAGIC: &[u8] = &[0xFF, 0xD8];

/// `md5(cmd + lotCode + ts + token)` as lower-case hex: the platform's `auth`.
pub fn sign(cmd: &str, lot_code: &str, ts: &str, token: &str) -> String {
    let mut h = Md5::new();
    h.update(cmd.as_bytes());
    h.update(lot_code.as_bytes());
    h.update(ts.as_bytes());
    h.update(token.as_bytes());
    hex::encode(h.finalize())
}

/// The platform's message for a response code (the original code table).
pub fn code_message(code: u32) -> &'static str {
    match code {
        0 | 200 => "操作成功",
        1000 => "平台无车场信息",
        1001 => "指令不能为空",
        1002 => "校验码错误",
        1003 => "上报失败",
        1004 => "数据已经存在",
        1005 => "无最新指令",
        1006 => "查无数据",
        1007 => "车场无返回结果",
        1008 => "未找到指令",
        1014 => "数据不存在",
        1107 => "场端处理异常",
        1501 => "参数不完整",
        1502 => "参数不符合规定值",
        2000 => "系统异常",
        2001 => "业务异常",
        _ => "未知错误",
    }
}

/// One of the three platform routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Route {
    /// `POST /park/heartbeat`, cmd `heartbeat`.
    Heartbeat,
    /// `POST /dataSync/parkSpace`, cmd `parkSpace`.
    ParkSpace,
    /// `POST /dataSync/carInOut`, cmd `carInOut`.
    CarInOut,
}

impl Route {
    /// All routes.
    pub const ALL: [Route; 3] = [Route::Heartbeat, Route::ParkSpace, Route::CarInOut];

    /// The URL path, appended to the base URL.
    pub fn path(self) -> &'static str {
        match self {
            Route::Heartbeat => "/park/heartbeat",
            Route::ParkSpace => "/dataSync/parkSpace",
            Route::CarInOut => "/dataSync/carInOut",
        }
    }

    /// The `cmd` the route expects.
    pub fn cmd(self) -> &'static str {
        match self {
            Route::Heartbeat => "heartbeat",
            Route::ParkSpace => "parkSpace",
            Route::CarInOut => "carInOut",
        }
    }

    /// The route for a URL path.
    pub fn from_path(path: &str) -> Option<Route> {
        Route::ALL.into_iter().find(|r| r.path() == path)
    }
}

/// How the whole platform behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Normal processing.
    Up,
    /// Not listening: connections are refused, open connections are closed.
    Refuse,
    /// Connections (and requests on open ones) are dropped without an answer (TCP reset).
    Reset,
    /// Every request is answered with HTTP 500.
    Http500,
    /// Requests are read and never answered until the mode changes or the sim shuts down.
    Hang,
}

/// A canned answer for the next request to a route ([`PlatformSim::push_script`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scripted {
    /// Answer this platform code (HTTP 200) and store nothing.
    Code(u32),
    /// Answer this HTTP status with a plain-text body.
    Http(u16),
    /// Never answer (until the mode changes or the sim shuts down), then close.
    Hang,
    /// Drop the connection without an answer (TCP reset).
    Reset,
    /// Answer HTTP 200 with an HTML body.
    NonJson,
    /// Process the request normally (store its records), then drop the connection without
    /// an answer: the answer is lost on the way back.
    LoseAnswer,
    /// Answer HTTP 200 with a body of this many bytes, streamed without a length (chunked)
    /// and never held in memory: a platform (or a box in the way) gone mad. The bytes
    /// actually sent are counted ([`PlatformSim::answer_bytes_streamed`]).
    Huge(u64),
}

/// A response body: a whole buffer, or a long filler streamed chunk by chunk.
pub struct SimBody {
    inner: BodyInner,
}

enum BodyInner {
    Full(Option<Bytes>),
    Stream {
        left: u64,
        chunk: Bytes,
        counter: Arc<AtomicU64>,
    },
}

impl SimBody {
    fn full(b: Bytes) -> Self {
        SimBody {
            inner: BodyInner::Full(Some(b)),
        }
    }
}

impl hyper::body::Body for SimBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        match &mut self.get_mut().inner {
            BodyInner::Full(b) => Poll::Ready(b.take().map(|b| Ok(hyper::body::Frame::data(b)))),
            BodyInner::Stream {
                left,
                chunk,
                counter,
            } => {
                if *left == 0 {
                    return Poll::Ready(None);
                }
                let n = usize::try_from(*left).map_or(chunk.len(), |l| l.min(chunk.len()));
                *left -= n as u64;
                counter.fetch_add(n as u64, Ordering::Relaxed);
                Poll::Ready(Some(Ok(hyper::body::Frame::data(chunk.slice(..n)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            BodyInner::Full(b) => b.is_none(),
            BodyInner::Stream { left, .. } => *left == 0,
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match &self.inner {
            BodyInner::Full(Some(b)) => hyper::body::SizeHint::with_exact(b.len() as u64),
            BodyInner::Full(None) => hyper::body::SizeHint::with_exact(0),
            // No length announced: the client finds out by reading.
            BodyInner::Stream { .. } => hyper::body::SizeHint::default(),
        }
    }
}

/// The unit the platform expects `ts` in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TsUnit {
    /// Milliseconds since the epoch (default).
    #[default]
    Ms,
    /// Seconds since the epoch.
    S,
}

/// How success is spelled in the response's `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SuccessStyle {
    /// `"code":"0"` (as every example of the original; default).
    #[default]
    StringZero,
    /// `"code":0`.
    NumberZero,
    /// `"code":"200"` (as the code table of the original).
    String200,
    /// `"code":200`.
    Number200,
}

/// Simulator settings.
#[derive(Clone)]
pub struct SimConfig {
    /// The only lot code the platform knows.
    pub lot_code: String,
    /// The lot's secret token (never logged or shown by `Debug`).
    pub token: String,
    /// Unit of `ts`.
    pub ts_unit: TsUnit,
    /// How far `ts` may be from the simulator's clock (either way).
    pub window: Duration,
    /// Simulator clock = real clock + this many milliseconds.
    pub skew_ms: i64,
    /// Accept an upper-case hex `auth` too.
    pub accept_upper_auth: bool,
    /// Bigger request bodies get HTTP 413.
    pub max_body: usize,
    /// How success is spelled.
    pub success_style: SuccessStyle,
    /// Records with this `carNo` are refused with 1502.
    pub poison: Option<String>,
}

impl SimConfig {
    /// Defaults: ms, 10 s window, no skew, lower-case auth only, 8 MiB bodies, `"code":"0"`.
    pub fn new(lot_code: impl Into<String>, token: impl Into<String>) -> Self {
        SimConfig {
            lot_code: lot_code.into(),
            token: token.into(),
            ts_unit: TsUnit::Ms,
            window: Duration::from_secs(10),
            skew_ms: 0,
            accept_upper_auth: false,
            max_body: 8 * 1024 * 1024,
            success_style: SuccessStyle::StringZero,
            poison: None,
        }
    }
}

impl fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimConfig")
            .field("lot_code", &self.lot_code)
            .field("token", &"<redacted>")
            .field("ts_unit", &self.ts_unit)
            .field("window", &self.window)
            .field("skew_ms", &self.skew_ms)
            .field("accept_upper_auth", &self.accept_upper_auth)
            .field("max_body", &self.max_body)
            .field("success_style", &self.success_style)
            .field("poison", &self.poison)
            .finish()
    }
}

/// What the simulator has seen so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    /// TCP connections accepted (including ones dropped by [`Mode::Reset`]).
    pub connections: u64,
    /// Requests per route, whatever happened to them.
    pub requests: BTreeMap<Route, u64>,
    /// Requests to unknown paths.
    pub not_found: u64,
    /// Heartbeats answered with success.
    pub heartbeats_ok: u64,
    /// Requests refused with 1002 by normal processing (bad signature or bad `ts`).
    pub auth_failures: u64,
    /// The part of `auth_failures` caused by `ts` (format or window).
    pub stale_ts: u64,
    /// Platform codes other than success answered, by code (normal and scripted).
    pub rejections: BTreeMap<u32, u64>,
    /// HTTP statuses other than 200 answered, by status.
    pub http_errors: BTreeMap<u16, u64>,
    /// Requests answered from a script.
    pub scripted: u64,
    /// carInOut records stored.
    pub records_stored: usize,
    /// parkSpace reports stored.
    pub space_reports: usize,
    /// Number of records in each accepted carInOut request, in order.
    pub batch_sizes: Vec<usize>,
    /// Body size in bytes of each carInOut request (read, or announced when too big).
    pub car_in_out_body_sizes: Vec<usize>,
}

impl SimStats {
    /// Requests that reached `route`.
    pub fn requests_to(&self, route: Route) -> u64 {
        self.requests.get(&route).copied().unwrap_or(0)
    }

    /// How often platform code `code` was answered.
    pub fn rejected_with(&self, code: u32) -> u64 {
        self.rejections.get(&code).copied().unwrap_or(0)
    }
}

/// The simulator. Clones share the same server; it stops when [`PlatformSim::shutdown`] is
/// called or the last clone is dropped.
#[derive(Clone)]
pub struct PlatformSim {
    shared: Arc<Shared>,
}

struct Shared {
    inner: Arc<Inner>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.inner.shutdown_tx.send_replace(true);
        lock(&self.inner.listener).take();
    }
}

struct Inner {
    lot_code: String,
    token: String,
    addr: SocketAddr,
    runtime: tokio::runtime::Handle,
    state: Mutex<State>,
    listener: Mutex<Option<TcpListener>>,
    /// While [`Mode::Refuse`]: a socket bound to the port but not listening. Connections
    /// are refused, and no client socket can take the port as its ephemeral local port
    /// meanwhile (with many connections in parallel tests one did, and the simulator could
    /// never listen again).
    holder: Mutex<Option<TcpSocket>>,
    mode_tx: watch::Sender<Mode>,
    shutdown_tx: watch::Sender<bool>,
    changes: watch::Sender<u64>,
    /// Bytes of [`Scripted::Huge`] answers handed to the connection so far.
    streamed: Arc<AtomicU64>,
}

struct State {
    ts_unit: TsUnit,
    window: Duration,
    skew_ms: i64,
    accept_upper_auth: bool,
    max_body: usize,
    success_style: SuccessStyle,
    poison: Option<String>,
    business_error: Option<String>,
    require_string_data: bool,
    sticky: HashMap<Route, Scripted>,
    scripts: HashMap<Route, VecDeque<Scripted>>,
    records: Vec<Value>,
    keys: HashSet<RecordKey>,
    spaces: Vec<(u64, u64)>,
    stats: SimStats,
}

/// A record's identity for duplicate detection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RecordKey {
    node_name: String,
    in_out_type: String,
    in_out_time: String,
    img_name: String,
    car_no: String,
}

/// Settings read once per request.
struct Settings {
    business_error: Option<String>,
    require_string_data: bool,
    ts_unit: TsUnit,
    window: Duration,
    skew_ms: i64,
    accept_upper_auth: bool,
    poison: Option<String>,
    success_style: SuccessStyle,
}

/// A platform refusal: the code and why (for logs and the `msg`).
#[derive(Debug)]
struct Rejection {
    code: u32,
    why: String,
}

fn reject(code: u32, why: impl Into<String>) -> Rejection {
    Rejection {
        code,
        why: why.into(),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn real_now_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

fn sim_now_ms(skew_ms: i64) -> i64 {
    real_now_ms().saturating_add(skew_ms)
}

fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

impl PlatformSim {
    /// Bind `127.0.0.1:0` and start serving. Must be called inside a tokio runtime.
    #[allow(clippy::unused_async)] // async so callers need not change if start ever awaits
    pub async fn start(config: SimConfig) -> io::Result<PlatformSim> {
        let listener = bind_listener(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        let addr = listener.local_addr()?;
        let state = State {
            ts_unit: config.ts_unit,
            window: config.window,
            skew_ms: config.skew_ms,
            accept_upper_auth: config.accept_upper_auth,
            max_body: config.max_body,
            success_style: config.success_style,
            poison: config.poison,
            business_error: None,
            require_string_data: false,
            sticky: HashMap::new(),
            scripts: HashMap::new(),
            records: Vec::new(),
            keys: HashSet::new(),
            spaces: Vec::new(),
            stats: SimStats::default(),
        };
        let inner = Arc::new(Inner {
            lot_code: config.lot_code,
            token: config.token,
            addr,
            runtime: tokio::runtime::Handle::current(),
            state: Mutex::new(state),
            listener: Mutex::new(Some(listener)),
            holder: Mutex::new(None),
            mode_tx: watch::Sender::new(Mode::Up),
            shutdown_tx: watch::Sender::new(false),
            changes: watch::Sender::new(0),
            streamed: Arc::new(AtomicU64::new(0)),
        });
        let task = tokio::spawn(accept_loop(inner.clone()));
        info!(%addr, lot_code = %inner.lot_code, "platform simulator listening");
        Ok(PlatformSim {
            shared: Arc::new(Shared {
                inner,
                task: Mutex::new(Some(task)),
            }),
        })
    }

    fn inner(&self) -> &Inner {
        &self.shared.inner
    }

    /// Base URL, e.g. `http://127.0.0.1:40123` (the client appends the route paths).
    pub fn url(&self) -> String {
        format!("http://{}", self.inner().addr)
    }

    /// The address the simulator listens on (the same across [`Mode::Refuse`]).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner().addr
    }

    /// The lot code the simulator knows.
    pub fn lot_code(&self) -> &str {
        &self.inner().lot_code
    }

    /// The simulator's clock in milliseconds since the epoch (real clock plus skew).
    pub fn now_ms(&self) -> i64 {
        sim_now_ms(lock(&self.inner().state).skew_ms)
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        *self.inner().mode_tx.borrow()
    }

    /// Change the mode. Takes effect before this returns: [`Mode::Refuse`] closes the
    /// listening socket (and open connections), leaving it rebinds the same port.
    /// Any call also releases hanging requests.
    pub fn set_mode(&self, mode: Mode) {
        let inner = self.inner();
        if *inner.shutdown_tx.borrow() {
            return;
        }
        {
            let mut listener = lock(&inner.listener);
            if mode == Mode::Refuse {
                if listener.take().is_some() {
                    inner.hold();
                    info!(addr = %inner.addr, "platform simulator stopped listening");
                }
            } else if listener.is_none() {
                match inner.bind() {
                    Ok(l) => {
                        *listener = Some(l);
                        info!(addr = %inner.addr, "platform simulator listening again");
                    }
                    Err(e) => {
                        warn!(addr = %inner.addr, error = %e, "cannot rebind yet; retrying");
                    }
                }
            }
        }
        let old = inner.mode_tx.send_replace(mode);
        info!(?old, new = ?mode, "platform simulator mode changed");
        inner.bump();
    }

    /// The next requests to `route` get these answers instead of normal processing
    /// (appended to what is already scripted). Scripts are used only while [`Mode::Up`].
    pub fn push_script(&self, route: Route, answers: impl IntoIterator<Item = Scripted>) {
        let mut st = lock(&self.inner().state);
        st.scripts.entry(route).or_default().extend(answers);
    }

    /// Every request to `route` gets this answer (after any pushed script), until `None`.
    pub fn set_route_answer(&self, route: Route, answer: Option<Scripted>) {
        let mut st = lock(&self.inner().state);
        match answer {
            Some(a) => st.sticky.insert(route, a),
            None => st.sticky.remove(&route),
        };
    }

    /// A carInOut batch holding a record with this `carNo` is answered `2001` (business
    /// error), for as long as it is set.
    pub fn set_business_error(&self, car_no: Option<String>) {
        lock(&self.inner().state).business_error = car_no;
    }

    /// Accept `data` only as a string holding JSON text (an object/array is `1501`), as a
    /// platform that reads the spec's table literally would.
    pub fn set_require_string_data(&self, on: bool) {
        lock(&self.inner().state).require_string_data = on;
    }

    /// Bytes of [`Scripted::Huge`] answers handed to connections so far.
    pub fn answer_bytes_streamed(&self) -> u64 {
        self.inner().streamed.load(Ordering::Relaxed)
    }

    /// Scripted answers not used yet for `route`.
    pub fn pending_scripts(&self, route: Route) -> usize {
        lock(&self.inner().state)
            .scripts
            .get(&route)
            .map_or(0, VecDeque::len)
    }

    /// Drop all scripted answers.
    pub fn clear_scripts(&self) {
        lock(&self.inner().state).scripts.clear();
    }

    /// Move the simulator's clock (and so its `Date` header and `ts` window).
    pub fn set_skew_ms(&self, skew_ms: i64) {
        lock(&self.inner().state).skew_ms = skew_ms;
    }

    /// The unit the platform expects `ts` in.
    pub fn set_ts_unit(&self, unit: TsUnit) {
        lock(&self.inner().state).ts_unit = unit;
    }

    /// The allowed distance between `ts` and the simulator's clock.
    pub fn set_window(&self, window: Duration) {
        lock(&self.inner().state).window = window;
    }

    /// Refuse records with this `carNo` with 1502 (`None`: no poison).
    pub fn set_poison(&self, car_no: Option<String>) {
        lock(&self.inner().state).poison = car_no;
    }

    /// Accept upper-case hex `auth` too.
    pub fn set_accept_upper_auth(&self, accept: bool) {
        lock(&self.inner().state).accept_upper_auth = accept;
    }

    /// How success is spelled.
    pub fn set_success_style(&self, style: SuccessStyle) {
        lock(&self.inner().state).success_style = style;
    }

    /// Bodies bigger than this get HTTP 413.
    pub fn set_max_body(&self, max_body: usize) {
        lock(&self.inner().state).max_body = max_body;
    }

    /// Every stored carInOut record, in arrival order.
    pub fn records(&self) -> Vec<Value> {
        lock(&self.inner().state).records.clone()
    }

    /// Every stored parkSpace report as `(totalSpace, surplusSpace)`, in arrival order.
    pub fn space_reports(&self) -> Vec<(u64, u64)> {
        lock(&self.inner().state).spaces.clone()
    }

    /// A snapshot of the statistics.
    pub fn stats(&self) -> SimStats {
        lock(&self.inner().state).stats.clone()
    }

    /// Wait until `pred` holds for the statistics, at most `timeout`. Wakes on every change
    /// (no polling). Returns whether `pred` held.
    pub async fn wait_until(&self, timeout: Duration, pred: impl Fn(&SimStats) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.inner().changes.subscribe();
        loop {
            let holds = {
                let st = lock(&self.inner().state);
                pred(&st.stats)
            };
            if holds {
                return true;
            }
            if !matches!(
                tokio::time::timeout_at(deadline, changes.changed()).await,
                Ok(Ok(()))
            ) {
                let st = lock(&self.inner().state);
                return pred(&st.stats);
            }
        }
    }

    /// Wait until at least `n` records are stored.
    pub async fn wait_for_records(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |s| s.records_stored >= n).await
    }

    /// Wait until at least `n` requests reached `route`.
    pub async fn wait_for_requests(&self, route: Route, n: u64, timeout: Duration) -> bool {
        self.wait_until(timeout, |s| s.requests_to(route) >= n)
            .await
    }

    /// Stop listening, close every connection and wait for the server task (open
    /// connections get up to 2 s to finish their answer).
    pub async fn shutdown(&self) {
        let inner = self.inner();
        inner.shutdown_tx.send_replace(true);
        lock(&inner.listener).take();
        let task = lock(&self.shared.task).take();
        if let Some(task) = task {
            if let Err(e) = task.await {
                warn!(error = %e, "platform simulator task failed");
            }
            info!(addr = %inner.addr, "platform simulator shut down");
        }
    }
}

impl fmt::Debug for PlatformSim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlatformSim")
            .field("addr", &self.inner().addr)
            .field("lot_code", &self.inner().lot_code)
            .field("mode", &self.mode())
            .finish_non_exhaustive()
    }
}

impl Inner {
    /// Listen on the port again, then let the holder go (both use SO_REUSEADDR, and a
    /// socket that is not listening does not stand in the way).
    fn bind(&self) -> io::Result<TcpListener> {
        let _guard = self.runtime.enter();
        let l = bind_listener(self.addr)?;
        lock(&self.holder).take();
        Ok(l)
    }

    /// Hold the port without listening (see `holder`).
    fn hold(&self) {
        let _guard = self.runtime.enter();
        let held = TcpSocket::new_v4().and_then(|s| {
            s.set_reuseaddr(true)?;
            s.bind(self.addr)?;
            Ok(s)
        });
        match held {
            Ok(s) => *lock(&self.holder) = Some(s),
            Err(e) => debug!(addr = %self.addr, error = %e, "cannot hold the port while refusing"),
        }
    }

    fn bump(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn update<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let r = {
            let mut st = lock(&self.state);
            f(&mut st)
        };
        self.bump();
        r
    }

    fn settings(&self) -> Settings {
        let st = lock(&self.state);
        Settings {
            business_error: st.business_error.clone(),
            require_string_data: st.require_string_data,
            ts_unit: st.ts_unit,
            window: st.window,
            skew_ms: st.skew_ms,
            accept_upper_auth: st.accept_upper_auth,
            poison: st.poison.clone(),
            success_style: st.success_style,
        }
    }

    fn http_date(&self) -> String {
        let ms = sim_now_ms(lock(&self.state).skew_ms);
        let t = u64::try_from(ms).map_or(UNIX_EPOCH, |ms| {
            UNIX_EPOCH
                .checked_add(Duration::from_millis(ms))
                .unwrap_or(UNIX_EPOCH)
        });
        httpdate::fmt_http_date(t)
    }

    fn respond(
        &self,
        status: StatusCode,
        content_type: &'static str,
        body: Vec<u8>,
    ) -> Response<SimBody> {
        if status != StatusCode::OK {
            self.update(|st| *st.stats.http_errors.entry(status.as_u16()).or_default() += 1);
        }
        let mut resp = Response::new(SimBody::full(Bytes::from(body)));
        *resp.status_mut() = status;
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        if let Ok(date) = HeaderValue::from_str(&self.http_date()) {
            resp.headers_mut().insert(DATE, date);
        }
        resp
    }

    fn http_error(&self, status: StatusCode) -> Response<SimBody> {
        let text = status.canonical_reason().unwrap_or("error");
        self.respond(
            status,
            "text/plain;charset=UTF-8",
            format!("{} {text}", status.as_u16()).into_bytes(),
        )
    }

    fn platform_answer(&self, code: &Value, msg: &str) -> Response<SimBody> {
        let body = json!({"code": code, "msg": msg, "data": ""});
        self.respond(
            StatusCode::OK,
            "application/json;charset=UTF-8",
            body.to_string().into_bytes(),
        )
    }

    fn success(&self, style: SuccessStyle) -> Response<SimBody> {
        let code = match style {
            SuccessStyle::StringZero => json!("0"),
            SuccessStyle::NumberZero => json!(0),
            SuccessStyle::String200 => json!("200"),
            SuccessStyle::Number200 => json!(200),
        };
        self.platform_answer(&code, code_message(0))
    }

    fn refusal(&self, route: Route, r: &Rejection) -> Response<SimBody> {
        debug!(route = route.path(), code = r.code, reason = %r.why, "request refused");
        self.update(|st| {
            *st.stats.rejections.entry(r.code).or_default() += 1;
            if r.code == 1002 {
                st.stats.auth_failures += 1;
            }
        });
        let msg = format!("{}: {}", code_message(r.code), r.why);
        self.platform_answer(&json!(r.code.to_string()), &msg)
    }

    /// Receivers that [`released`] waits on; subscribe before the request is counted so a
    /// `set_mode` right after cannot be missed.
    fn release_watch(&self) -> (watch::Receiver<Mode>, watch::Receiver<bool>) {
        (self.mode_tx.subscribe(), self.shutdown_tx.subscribe())
    }

    /// Read the body; more than `max_body` bytes is `TooLarge` (the rest is drained).
    async fn read_body(&self, route: Route, req: Request<Incoming>) -> BodyRead {
        let max = lock(&self.state).max_body;
        let announced = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<usize>().ok());
        let mut too_large = announced.is_some_and(|n| n > max);
        let mut body = req.into_body();
        let mut buf = Vec::new();
        let mut total = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = match frame {
                Ok(f) => f,
                Err(e) => return BodyRead::Failed(e.to_string()),
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            total = total.saturating_add(data.len());
            if total > max {
                too_large = true;
                buf = Vec::new();
            } else if !too_large {
                buf.extend_from_slice(&data);
            }
            if total > DRAIN_LIMIT {
                break;
            }
        }
        if route == Route::CarInOut {
            let size = announced.unwrap_or(total).max(total);
            self.update(|st| st.stats.car_in_out_body_sizes.push(size));
        }
        if too_large {
            BodyRead::TooLarge(announced.unwrap_or(total).max(total))
        } else {
            BodyRead::Ok(Bytes::from(buf))
        }
    }
}

/// Resolves when any `set_mode` call happens after `watch` was taken, or at shutdown.
async fn released(watch: (watch::Receiver<Mode>, watch::Receiver<bool>)) {
    let (mut mode, mut down) = watch;
    if *down.borrow() {
        return;
    }
    tokio::select! {
        _ = mode.changed() => {}
        _ = down.changed() => {}
    }
}

enum BodyRead {
    Ok(Bytes),
    /// Over the limit: the body's size.
    TooLarge(usize),
    Failed(String),
}

/// Lets a request handler drop its connection without answering.
#[derive(Default)]
struct ConnCtl {
    kill: Notify,
    rst: AtomicBool,
}

impl ConnCtl {
    /// Ask the connection task to drop the connection (with a TCP reset when `rst`), and
    /// never answer.
    async fn drop_connection<T>(&self, rst: bool) -> T {
        self.rst.store(rst, Ordering::SeqCst);
        self.kill.notify_one();
        std::future::pending().await
    }
}

/// The TCP stream, closed with a reset when the handler asked for one.
struct ConnIo {
    stream: TcpStream,
    ctl: Arc<ConnCtl>,
}

impl Drop for ConnIo {
    fn drop(&mut self) {
        if self.ctl.rst.load(Ordering::SeqCst) {
            let _ = self.stream.set_zero_linger();
        }
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The next connection from the current listener; pending while there is none (the caller
/// selects on mode changes to notice a new one).
async fn next_connection(inner: &Inner) -> io::Result<(TcpStream, SocketAddr)> {
    loop {
        let listening = lock(&inner.listener).is_some();
        if listening {
            return poll_fn(|cx| match lock(&inner.listener).as_ref() {
                Some(l) => l.poll_accept(cx),
                None => Poll::Pending,
            })
            .await;
        }
        if *inner.mode_tx.borrow() == Mode::Refuse {
            std::future::pending::<()>().await;
        }
        // Should be listening but the rebind failed: retry now and then.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut listener = lock(&inner.listener);
        if listener.is_none() && *inner.mode_tx.borrow() != Mode::Refuse {
            match inner.bind() {
                Ok(l) => *listener = Some(l),
                Err(e) => debug!(addr = %inner.addr, error = %e, "rebind failed"),
            }
        }
    }
}

async fn accept_loop(inner: Arc<Inner>) {
    let mut mode_rx = inner.mode_tx.subscribe();
    let mut shutdown_rx = inner.shutdown_tx.subscribe();
    let mut conns = JoinSet::new();
    loop {
        if *shutdown_rx.borrow_and_update() {
            break;
        }
        let accepted = tokio::select! {
            _ = shutdown_rx.changed() => continue,
            _ = mode_rx.changed() => continue,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            r = next_connection(&inner) => r,
        };
        let (stream, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        inner.update(|st| st.stats.connections += 1);
        match *inner.mode_tx.borrow() {
            Mode::Refuse | Mode::Reset => {
                debug!(%peer, "connection reset on accept");
                let _ = stream.set_zero_linger();
                drop(stream);
            }
            Mode::Up | Mode::Http500 | Mode::Hang => {
                debug!(%peer, "connection accepted");
                conns.spawn(serve_connection(inner.clone(), stream, peer));
            }
        }
    }
    lock(&inner.listener).take();
    let drained = tokio::time::timeout(Duration::from_secs(2), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        debug!(
            open = conns.len(),
            "aborting connections still open at shutdown"
        );
    }
    conns.shutdown().await;
}

async fn serve_connection(inner: Arc<Inner>, stream: TcpStream, peer: SocketAddr) {
    let ctl = Arc::new(ConnCtl::default());
    let io = TokioIo::new(ConnIo {
        stream,
        ctl: ctl.clone(),
    });
    let svc_inner = inner.clone();
    let svc_ctl = ctl.clone();
    let service = hyper::service::service_fn(move |req| {
        let inner = svc_inner.clone();
        let ctl = svc_ctl.clone();
        async move { Ok::<_, Infallible>(handle(&inner, &ctl, req).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.auto_date_header(false);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut mode_rx = inner.mode_tx.subscribe();
    let mut shutdown_rx = inner.shutdown_tx.subscribe();
    let mut closing = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = ctl.kill.notified() => {
                debug!(%peer, "connection dropped without an answer");
                return;
            }
            r = mode_rx.changed() => {
                if r.is_err() || *mode_rx.borrow_and_update() == Mode::Refuse {
                    debug!(%peer, "connection closed: platform stopped listening");
                    return;
                }
            }
            _ = shutdown_rx.changed(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

async fn handle(inner: &Inner, ctl: &ConnCtl, req: Request<Incoming>) -> Response<SimBody> {
    let release = inner.release_watch();
    let Some(route) = Route::from_path(req.uri().path()) else {
        debug!(path = req.uri().path(), "unknown path");
        inner.update(|st| st.stats.not_found += 1);
        return inner.http_error(StatusCode::NOT_FOUND);
    };
    inner.update(|st| *st.stats.requests.entry(route).or_default() += 1);
    if req.method() != Method::POST {
        return inner.http_error(StatusCode::METHOD_NOT_ALLOWED);
    }
    let mode = *release.0.borrow();
    match mode {
        Mode::Up | Mode::Refuse => {}
        Mode::Reset => {
            debug!(route = route.path(), "mode reset: dropping the connection");
            return ctl.drop_connection(true).await;
        }
        Mode::Http500 => {
            let _ = inner.read_body(route, req).await;
            return inner.http_error(StatusCode::INTERNAL_SERVER_ERROR);
        }
        Mode::Hang => {
            let _ = inner.read_body(route, req).await;
            debug!(route = route.path(), "mode hang: not answering");
            released(release).await;
            return ctl.drop_connection(false).await;
        }
    }
    let script = {
        let mut st = lock(&inner.state);
        let pushed = st.scripts.get_mut(&route).and_then(VecDeque::pop_front);
        pushed.or_else(|| st.sticky.get(&route).cloned())
    };
    let lose_answer = script == Some(Scripted::LoseAnswer);
    if let Some(script) = script.filter(|s| *s != Scripted::LoseAnswer) {
        let _ = inner.read_body(route, req).await;
        inner.update(|st| st.stats.scripted += 1);
        debug!(route = route.path(), answer = ?script, "scripted answer");
        return match script {
            Scripted::Code(code) => {
                if code != 0 && code != 200 {
                    inner.update(|st| *st.stats.rejections.entry(code).or_default() += 1);
                }
                inner.platform_answer(&json!(code.to_string()), code_message(code))
            }
            Scripted::Http(status) => {
                inner.http_error(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
            }
            Scripted::NonJson => inner.respond(
                StatusCode::OK,
                "text/html;charset=UTF-8",
                b"<html><head><title>maintenance</title></head><body>platform under maintenance</body></html>"
                    .to_vec(),
            ),
            Scripted::Hang => {
                released(release).await;
                ctl.drop_connection(false).await
            }
            Scripted::Reset => ctl.drop_connection(true).await,
            Scripted::Huge(n) => {
                let mut resp = inner.respond(StatusCode::OK, "application/json;charset=UTF-8", Vec::new());
                *resp.body_mut() = SimBody {
                    inner: BodyInner::Stream {
                        left: n,
                        chunk: Bytes::from(vec![b' '; 64 * 1024]),
                        counter: inner.streamed.clone(),
                    },
                };
                resp
            }
            Scripted::LoseAnswer => unreachable!("filtered above"),
        };
    }
    let content_type_ok = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let squeezed: String = v.chars().filter(|c| !c.is_whitespace()).collect();
            squeezed.eq_ignore_ascii_case(EXPECTED_CONTENT_TYPE)
        });
    let body = match inner.read_body(route, req).await {
        BodyRead::Ok(b) => b,
        BodyRead::TooLarge(size) => {
            debug!(route = route.path(), size, "body too large");
            return inner.http_error(StatusCode::PAYLOAD_TOO_LARGE);
        }
        BodyRead::Failed(e) => {
            debug!(route = route.path(), error = %e, "could not read the body");
            return inner.http_error(StatusCode::BAD_REQUEST);
        }
    };
    let settings = inner.settings();
    if !content_type_ok {
        return inner.refusal(
            route,
            &reject(1501, "Content-Type must be application/json;charset=UTF-8"),
        );
    }
    let answer = match process(inner, &settings, route, &body) {
        Ok(()) => inner.success(settings.success_style),
        Err(r) => inner.refusal(route, &r),
    };
    if lose_answer {
        inner.update(|st| st.stats.scripted += 1);
        debug!(route = route.path(), "scripted: processed, answer lost");
        return ctl.drop_connection(true).await;
    }
    answer
}

/// Normal processing of a request body: check, then store.
fn process(inner: &Inner, settings: &Settings, route: Route, body: &[u8]) -> Result<(), Rejection> {
    let Ok(Value::Object(mut env)) = serde_json::from_slice::<Value>(body) else {
        return Err(reject(1501, "the body is not a JSON object"));
    };
    check_envelope(inner, settings, route, &env).inspect_err(|r| {
        if r.code == 1002 && r.why.starts_with("ts") {
            inner.update(|st| st.stats.stale_ts += 1);
        }
    })?;
    match route {
        Route::Heartbeat => {
            inner.update(|st| st.stats.heartbeats_ok += 1);
            debug!(route = route.path(), "heartbeat ok");
            Ok(())
        }
        _ if settings.require_string_data
            && env
                .get("data")
                .is_some_and(|d| d.is_object() || d.is_array()) =>
        {
            Err(reject(1501, "data must be a json string"))
        }
        Route::ParkSpace => {
            let Value::Object(data) = payload(&mut env)? else {
                return Err(reject(1501, "data must be an object"));
            };
            let total = space_field(&data, "totalSpace")?;
            let surplus = space_field(&data, "surplusSpace")?;
            if surplus > total {
                return Err(reject(1502, "surplusSpace is greater than totalSpace"));
            }
            inner.update(|st| {
                st.spaces.push((total, surplus));
                st.stats.space_reports += 1;
            });
            debug!(total, surplus, "space report stored");
            Ok(())
        }
        Route::CarInOut => {
            let Value::Array(records) = payload(&mut env)? else {
                return Err(reject(1501, "data must be an array"));
            };
            if records.is_empty() || records.len() > MAX_BATCH {
                return Err(reject(
                    1501,
                    format!(
                        "a batch holds 1..={MAX_BATCH} records, not {}",
                        records.len()
                    ),
                ));
            }
            let mut keys = Vec::with_capacity(records.len());
            for (i, rec) in records.iter().enumerate() {
                let key = check_record(rec)
                    .map_err(|r| reject(r.code, format!("record {i}: {}", r.why)))?;
                if settings.business_error.as_deref() == Some(key.car_no.as_str()) {
                    return Err(reject(2001, format!("record {i}: business error")));
                }
                if settings.poison.as_deref() == Some(key.car_no.as_str()) {
                    return Err(reject(
                        1502,
                        format!("record {i}: carNo is refused (poison)"),
                    ));
                }
                keys.push(key);
            }
            let n = records.len();
            inner.update(|st| {
                let mut seen = HashSet::with_capacity(keys.len());
                for (i, key) in keys.iter().enumerate() {
                    if st.keys.contains(key) || !seen.insert(key) {
                        return Err(reject(1004, format!("record {i} already exists")));
                    }
                }
                st.keys.extend(keys.iter().cloned());
                st.records.extend(records);
                st.stats.records_stored += n;
                st.stats.batch_sizes.push(n);
                Ok(())
            })?;
            debug!(records = n, "carInOut stored");
            Ok(())
        }
    }
}

fn check_envelope(
    inner: &Inner,
    settings: &Settings,
    route: Route,
    env: &Map<String, Value>,
) -> Result<(), Rejection> {
    let cmd = match env.get("cmd") {
        None | Some(Value::Null) => return Err(reject(1001, "cmd is missing")),
        Some(Value::String(s)) if s.is_empty() => return Err(reject(1001, "cmd is empty")),
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(reject(1501, "cmd must be a string")),
    };
    if cmd != route.cmd() {
        return Err(reject(
            1008,
            format!("cmd {cmd:?} is not served at {}", route.path()),
        ));
    }
    let lot_code = match env.get("lotCode") {
        None | Some(Value::Null) => return Err(reject(1501, "lotCode is missing")),
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(reject(1501, "lotCode must be a string")),
    };
    if lot_code != inner.lot_code {
        return Err(reject(1000, format!("no lot {lot_code:?}")));
    }
    let (Some(Value::String(ts)), Some(Value::String(auth))) = (env.get("ts"), env.get("auth"))
    else {
        return Err(reject(1002, "ts and auth must be strings"));
    };
    let expected = sign(cmd, lot_code, ts, &inner.token);
    let upper_ok = settings.accept_upper_auth && *auth == expected.to_ascii_uppercase();
    if *auth != expected && !upper_ok {
        return Err(reject(1002, "auth does not match"));
    }
    if ts.is_empty() || ts.len() > 19 || !ts.bytes().all(|b| b.is_ascii_digit()) {
        return Err(reject(1002, "ts must be decimal digits"));
    }
    let ts_ms = ts.parse::<i64>().ok().and_then(|v| match settings.ts_unit {
        TsUnit::Ms => Some(v),
        TsUnit::S => v.checked_mul(1000),
    });
    let Some(ts_ms) = ts_ms else {
        return Err(reject(1002, "ts is out of range"));
    };
    let now = sim_now_ms(settings.skew_ms);
    let distance = (i128::from(ts_ms) - i128::from(now)).unsigned_abs();
    if distance > settings.window.as_millis() {
        return Err(reject(
            1002,
            format!("ts is {distance} ms away from the platform clock"),
        ));
    }
    Ok(())
}

/// The `data` field as JSON, whether sent as JSON or as a string of JSON text.
fn payload(env: &mut Map<String, Value>) -> Result<Value, Rejection> {
    match env.remove("data") {
        None | Some(Value::Null) => Err(reject(1501, "data is missing")),
        Some(Value::String(s)) => {
            serde_json::from_str(&s).map_err(|_| reject(1501, "data is not JSON text"))
        }
        Some(v) => Ok(v),
    }
}

fn space_field(data: &Map<String, Value>, name: &str) -> Result<u64, Rejection> {
    match data.get(name) {
        None | Some(Value::Null) => Err(reject(1501, format!("{name} is missing"))),
        Some(v) => match v.as_u64() {
            Some(n) if n < MAX_SPACES => Ok(n),
            _ => Err(reject(
                1502,
                format!("{name} must be an integer in 0..10^9"),
            )),
        },
    }
}

fn required<'a>(rec: &'a Map<String, Value>, name: &str) -> Result<&'a str, Rejection> {
    match rec.get(name) {
        None | Some(Value::Null) => Err(reject(1501, format!("{name} is missing"))),
        Some(Value::String(s)) if s.is_empty() => Err(reject(1501, format!("{name} is empty"))),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(reject(1502, format!("{name} must be a string"))),
    }
}

fn optional<'a>(
    rec: &'a Map<String, Value>,
    name: &str,
    max_chars: usize,
) -> Result<Option<&'a str>, Rejection> {
    match rec.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            check_len(name, s, max_chars)?;
            Ok(Some(s))
        }
        Some(_) => Err(reject(1502, format!("{name} must be a string"))),
    }
}

fn check_len(name: &str, s: &str, max_chars: usize) -> Result<(), Rejection> {
    let n = s.chars().count();
    if n > max_chars {
        return Err(reject(
            1502,
            format!("{name} has {n} characters, at most {max_chars} allowed"),
        ));
    }
    Ok(())
}

/// `yyyy-MM-dd HH:mm:ss`, a real date and time.
fn valid_time(s: &str) -> bool {
    let b = s.as_bytes();
    let shape_ok = b.len() == 19
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b' ',
            13 | 16 => *c == b':',
            _ => c.is_ascii_digit(),
        });
    shape_ok
        && chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").is_ok()
        && &s[17..] < "60"
}

fn check_image(data: &str) -> Result<(), Rejection> {
    let n = data.chars().count();
    if n > MAX_IMG_DATA_CHARS {
        return Err(reject(
            1502,
            format!("imgData has {n} characters, at most {MAX_IMG_DATA_CHARS} allowed"),
        ));
    }
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(data) else {
        return Err(reject(1502, "imgData is not standard Base64"));
    };
    if !(bytes.starts_with(JPEG_MAGIC) || bytes.starts_with(PNG_MAGIC)) {
        return Err(reject(1502, "imgData is not a JPEG or PNG image"));
    }
    Ok(())
}

/// Check one carInOut record; its identity when valid.
fn check_record(rec: &Value) -> Result<RecordKey, Rejection> {
    let Value::Object(rec) = rec else {
        return Err(reject(1501, "a record must be an object"));
    };
    let in_out_type = required(rec, "inOutType")?;
    let in_out_time = required(rec, "inOutTime")?;
    let img_name = required(rec, "imgName")?;
    let img_data = required(rec, "imgData")?;
    let node_name = required(rec, "nodeName")?;
    let car_style = required(rec, "carStyle")?;
    if in_out_type != "in" && in_out_type != "out" {
        return Err(reject(
            1502,
            format!("inOutType {in_out_type:?} is not in or out"),
        ));
    }
    if !valid_time(in_out_time) {
        return Err(reject(
            1502,
            format!("inOutTime {in_out_time:?} is not yyyy-MM-dd HH:mm:ss"),
        ));
    }
    check_len("imgName", img_name, 50)?;
    check_image(img_data)?;
    check_len("nodeName", node_name, 20)?;
    if !matches!(car_style, "0" | "1" | "2") {
        return Err(reject(
            1502,
            format!("carStyle {car_style:?} is not 0, 1 or 2"),
        ));
    }
    let car_no = optional(rec, "carNo", 32)?;
    optional(rec, "carColor", 40)?;
    optional(rec, "carBrand", 40)?;
    optional(rec, "remark", 255)?;
    Ok(RecordKey {
        node_name: node_name.to_owned(),
        in_out_type: in_out_type.to_owned(),
        in_out_time: in_out_time.to_owned(),
        img_name: img_name.to_owned(),
        car_no: car_no.unwrap_or("").to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    const LOT: &str = "350";
    const TOKEN: &str = "test-token";
    const CT: &str = "application/json;charset=UTF-8";
    const WAIT: Duration = Duration::from_secs(5);

    async fn sim() -> PlatformSim {
        PlatformSim::start(SimConfig::new(LOT, TOKEN))
            .await
            .expect("start")
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .build()
            .expect("client")
    }

    fn now_ms() -> i64 {
        real_now_ms()
    }

    fn envelope_at(cmd: &str, ts: &str) -> Value {
        json!({"cmd": cmd, "lotCode": LOT, "ts": ts, "auth": sign(cmd, LOT, ts, TOKEN)})
    }

    fn envelope(cmd: &str) -> Value {
        envelope_at(cmd, &now_ms().to_string())
    }

    fn with_data(mut env: Value, data: Value) -> Value {
        env["data"] = data;
        env
    }

    fn jpeg_b64() -> String {
        base64::engine::general_purpose::STANDARD
            .encode([0xFF, 0xD8, 0xFF, 0xE0, 0, 16, b'J', b'F', b'I', b'F'])
    }

    fn rec(i: usize) -> Value {
        json!({
            "carNo": format!("晋A{i:05}"),
            "inOutType": "in",
            "inOutTime": "2024-11-28 09:30:00",
            "imgName": format!("350_gate_{i}.jpg"),
            "imgData": jpeg_b64(),
            "nodeName": "入口1",
            "carColor": "蓝",
            "carStyle": "0",
        })
    }

    fn cars(recs: &[Value]) -> Value {
        with_data(envelope("carInOut"), Value::Array(recs.to_vec()))
    }

    struct Answer {
        status: u16,
        date: Option<SystemTime>,
        body: String,
    }

    impl Answer {
        fn code(&self) -> String {
            let v: Value = serde_json::from_str(&self.body).expect("json body");
            match &v["code"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            }
        }
    }

    async fn post_raw(
        c: &reqwest::Client,
        url: &str,
        route: Route,
        ct: &str,
        body: Vec<u8>,
    ) -> Answer {
        let resp = c
            .post(format!("{url}{}", route.path()))
            .header("Content-Type", ct)
            .body(body)
            .send()
            .await
            .expect("send");
        let status = resp.status().as_u16();
        let date = resp
            .headers()
            .get("date")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok());
        let body = resp.text().await.expect("body");
        Answer { status, date, body }
    }

    async fn post(sim: &PlatformSim, route: Route, body: &Value) -> Answer {
        post_raw(
            &client(),
            &sim.url(),
            route,
            CT,
            body.to_string().into_bytes(),
        )
        .await
    }

    async fn code(sim: &PlatformSim, route: Route, body: &Value) -> String {
        let a = post(sim, route, body).await;
        assert_eq!(a.status, 200, "body: {}", a.body);
        a.code()
    }

    fn ms_of(t: SystemTime) -> i64 {
        i64::try_from(
            t.duration_since(UNIX_EPOCH)
                .expect("after epoch")
                .as_millis(),
        )
        .expect("fits")
    }

    #[test]
    fn the_md5_helper_matches_every_vector_in_auth_json() {
        let vectors = [
            (
                "heartbeat",
                "350",
                "1",
                "test-token",
                "9c09a6638ef6828de2b867080a3e1921",
            ),
            (
                "heartbeat",
                "350",
                "1732770000000",
                "test-token",
                "2dcde7847d1a2926b35640b7d2fd5e49",
            ),
            (
                "heartbeat",
                "TY-0001",
                "1732770000",
                "s3cr3t",
                "4bcec1883ab26635c43442011e7ef235",
            ),
            (
                "heartbeat",
                "350",
                "1732770000123",
                "令牌",
                "c0edf465be91ee866d5bb249ccfda773",
            ),
            (
                "parkSpace",
                "350",
                "1",
                "test-token",
                "7655b1679145547bebafb9eff71c7873",
            ),
            (
                "parkSpace",
                "350",
                "1732770000000",
                "test-token",
                "9de3be82c8b504ba48bc40644034d49e",
            ),
            (
                "parkSpace",
                "TY-0001",
                "1732770000",
                "s3cr3t",
                "5e8f7aa27fb461a6ed03a4fb8056da26",
            ),
            (
                "parkSpace",
                "350",
                "1732770000123",
                "令牌",
                "4b461875c9cc252e5e24b6e5911c52f7",
            ),
            (
                "carInOut",
                "350",
                "1",
                "test-token",
                "9d42003f029035f7f28aaacc04f2355d",
            ),
            (
                "carInOut",
                "350",
                "1732770000000",
                "test-token",
                "e70e3c1127998f30eba5397bca18ad6c",
            ),
            (
                "carInOut",
                "TY-0001",
                "1732770000",
                "s3cr3t",
                "17500eac14ceb567e4f8fcd2d033a823",
            ),
            (
                "carInOut",
                "350",
                "1732770000123",
                "令牌",
                "66ae1f6ad9f6a02bfd8113b8dccb7684",
            ),
        ];
        for (cmd, lot, ts, token, auth) in vectors {
            assert_eq!(sign(cmd, lot, ts, token), auth, "{cmd}{lot}{ts}{token}");
        }
    }

    #[tokio::test]
    async fn a_correctly_signed_heartbeat_is_answered_with_code_0_and_a_date_header() {
        let sim = sim().await;
        let a = post(&sim, Route::Heartbeat, &envelope("heartbeat")).await;
        assert_eq!(a.status, 200);
        let v: Value = serde_json::from_str(&a.body).expect("json");
        assert_eq!(v, json!({"code": "0", "msg": "操作成功", "data": ""}));
        let date = a.date.expect("a Date header");
        assert!((ms_of(date) - now_ms()).abs() < 5_000);
        let stats = sim.stats();
        assert_eq!(stats.heartbeats_ok, 1);
        assert_eq!(stats.requests_to(Route::Heartbeat), 1);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn a_wrong_signature_is_refused_with_1002_and_counted_as_an_auth_failure() {
        let sim = sim().await;
        let ts = now_ms().to_string();
        let mut env = envelope_at("heartbeat", &ts);
        env["auth"] = json!(sign("heartbeat", LOT, &ts, "wrong-token"));
        assert_eq!(code(&sim, Route::Heartbeat, &env).await, "1002");
        let stats = sim.stats();
        assert_eq!(
            (stats.auth_failures, stats.stale_ts, stats.heartbeats_ok),
            (1, 0, 0)
        );
        assert_eq!(stats.rejected_with(1002), 1);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn a_ts_older_than_ten_seconds_is_refused_with_1002() {
        let sim = sim().await;
        let old = envelope_at("heartbeat", &(now_ms() - 11_000).to_string());
        assert_eq!(code(&sim, Route::Heartbeat, &old).await, "1002");
        let future = envelope_at("heartbeat", &(now_ms() + 11_000).to_string());
        assert_eq!(code(&sim, Route::Heartbeat, &future).await, "1002");
        let recent = envelope_at("heartbeat", &(now_ms() - 8_000).to_string());
        assert_eq!(code(&sim, Route::Heartbeat, &recent).await, "0");
        let not_digits = envelope_at("heartbeat", &format!("{}.5", now_ms()));
        assert_eq!(code(&sim, Route::Heartbeat, &not_digits).await, "1002");
        assert_eq!(sim.stats().stale_ts, 3);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn skew_moves_the_date_header_and_the_window() {
        let sim = sim().await;
        sim.set_skew_ms(3_600_000);
        let a = post(&sim, Route::Heartbeat, &envelope("heartbeat")).await;
        assert_eq!(
            a.code(),
            "1002",
            "a ts from the real clock is an hour old for the platform"
        );
        let date = ms_of(a.date.expect("date"));
        assert!(
            (date - now_ms() - 3_600_000).abs() < 5_000,
            "Date follows the skewed clock"
        );
        let skewed = envelope_at("heartbeat", &(now_ms() + 3_600_000).to_string());
        assert_eq!(code(&sim, Route::Heartbeat, &skewed).await, "0");
        assert!((sim.now_ms() - now_ms() - 3_600_000).abs() < 5_000);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn a_ts_in_seconds_is_accepted_only_when_the_platform_expects_seconds() {
        let sim = sim().await;
        let secs = (now_ms() / 1000).to_string();
        assert_eq!(
            code(&sim, Route::Heartbeat, &envelope_at("heartbeat", &secs)).await,
            "1002"
        );
        sim.set_ts_unit(TsUnit::S);
        assert_eq!(
            code(&sim, Route::Heartbeat, &envelope_at("heartbeat", &secs)).await,
            "0"
        );
        assert_eq!(
            code(&sim, Route::Heartbeat, &envelope("heartbeat")).await,
            "1002"
        );
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn upper_case_auth_is_accepted_only_when_enabled() {
        let sim = sim().await;
        let upper = || {
            let mut env = envelope("heartbeat");
            let auth = env["auth"].as_str().expect("auth").to_ascii_uppercase();
            env["auth"] = json!(auth);
            env
        };
        assert_eq!(code(&sim, Route::Heartbeat, &upper()).await, "1002");
        sim.set_accept_upper_auth(true);
        assert_eq!(code(&sim, Route::Heartbeat, &upper()).await, "0");
        assert_eq!(
            code(&sim, Route::Heartbeat, &envelope("heartbeat")).await,
            "0"
        );
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn wrong_cmd_missing_cmd_and_unknown_lot_get_1008_1001_and_1000() {
        let sim = sim().await;
        assert_eq!(
            code(&sim, Route::Heartbeat, &envelope("parkSpace")).await,
            "1008"
        );
        let mut missing = envelope("heartbeat");
        missing.as_object_mut().expect("object").remove("cmd");
        assert_eq!(code(&sim, Route::Heartbeat, &missing).await, "1001");
        let ts = now_ms().to_string();
        let other_lot = json!({"cmd": "heartbeat", "lotCode": "999", "ts": ts, "auth": sign("heartbeat", "999", &ts, TOKEN)});
        assert_eq!(code(&sim, Route::Heartbeat, &other_lot).await, "1000");
        assert_eq!(sim.stats().heartbeats_ok, 0);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn the_content_type_is_checked_ignoring_case_and_spaces() {
        let sim = sim().await;
        let c = client();
        let body = || envelope("heartbeat").to_string().into_bytes();
        let a = post_raw(&c, &sim.url(), Route::Heartbeat, "application/json", body()).await;
        assert_eq!(a.code(), "1501");
        let a = post_raw(
            &c,
            &sim.url(),
            Route::Heartbeat,
            "text/plain;charset=UTF-8",
            body(),
        )
        .await;
        assert_eq!(a.code(), "1501");
        let a = post_raw(
            &c,
            &sim.url(),
            Route::Heartbeat,
            "Application/JSON; charset=utf-8",
            body(),
        )
        .await;
        assert_eq!(a.code(), "0");
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn an_unknown_path_gets_http_404_and_a_get_gets_405() {
        let sim = sim().await;
        let c = client();
        let resp = c
            .post(format!("{}/dataSync/other", sim.url()))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status().as_u16(), 404);
        assert!(resp.headers().contains_key("date"));
        let resp = c
            .get(format!("{}/park/heartbeat", sim.url()))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status().as_u16(), 405);
        let stats = sim.stats();
        assert_eq!(stats.not_found, 1);
        assert_eq!(stats.http_errors.get(&404), Some(&1));
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn space_reports_are_stored_and_bad_values_are_refused() {
        let sim = sim().await;
        let space = |data: Value| with_data(envelope("parkSpace"), data);
        assert_eq!(
            code(
                &sim,
                Route::ParkSpace,
                &space(json!({"totalSpace": 120, "surplusSpace": 30}))
            )
            .await,
            "0"
        );
        let as_text = space(json!(r#"{"totalSpace":120,"surplusSpace":29}"#));
        assert_eq!(code(&sim, Route::ParkSpace, &as_text).await, "0");
        let cases = [
            (json!({"totalSpace": 120}), "1501"),
            (envelope("parkSpace"), "1501"),
            (json!({"totalSpace": 10, "surplusSpace": 11}), "1502"),
            (json!({"totalSpace": 10, "surplusSpace": -1}), "1502"),
            (
                json!({"totalSpace": 1_000_000_000, "surplusSpace": 1}),
                "1502",
            ),
            (json!({"totalSpace": "10", "surplusSpace": 1}), "1502"),
            (json!({"totalSpace": 10.5, "surplusSpace": 1}), "1502"),
        ];
        for (i, (data, want)) in cases.into_iter().enumerate() {
            let body = if i == 1 { data } else { space(data) };
            assert_eq!(code(&sim, Route::ParkSpace, &body).await, want, "case {i}");
        }
        assert_eq!(sim.space_reports(), vec![(120, 30), (120, 29)]);
        assert_eq!(sim.stats().space_reports, 2);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn records_are_stored_in_order_and_data_may_be_a_json_string() {
        let sim = sim().await;
        assert_eq!(
            code(&sim, Route::CarInOut, &cars(&[rec(1), rec(2)])).await,
            "0"
        );
        let text = Value::Array(vec![rec(3)]).to_string();
        let as_string = with_data(envelope("carInOut"), json!(text));
        assert_eq!(code(&sim, Route::CarInOut, &as_string).await, "0");
        let plates: Vec<String> = sim
            .records()
            .iter()
            .map(|r| r["carNo"].as_str().unwrap_or("").to_owned())
            .collect();
        assert_eq!(plates, ["晋A00001", "晋A00002", "晋A00003"]);
        let stats = sim.stats();
        assert_eq!(stats.batch_sizes, vec![2, 1]);
        assert_eq!(stats.records_stored, 3);
        assert_eq!(stats.car_in_out_body_sizes.len(), 2);
        assert!(stats.car_in_out_body_sizes[0] > 200);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn a_repeated_single_record_is_refused_with_1004() {
        let sim = sim().await;
        assert_eq!(code(&sim, Route::CarInOut, &cars(&[rec(1)])).await, "0");
        assert_eq!(code(&sim, Route::CarInOut, &cars(&[rec(1)])).await, "1004");
        let mut other_time = rec(1);
        other_time["inOutTime"] = json!("2024-11-28 09:30:01");
        assert_eq!(code(&sim, Route::CarInOut, &cars(&[other_time])).await, "0");
        assert_eq!(sim.records().len(), 2);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn a_batch_containing_a_stored_record_is_refused_whole_with_1004() {
        let sim = sim().await;
        assert_eq!(code(&sim, Route::CarInOut, &cars(&[rec(2)])).await, "0");
        assert_eq!(
            code(&sim, Route::CarInOut, &cars(&[rec(1), rec(2), rec(3)])).await,
            "1004"
        );
        assert_eq!(
            code(&sim, Route::CarInOut, &cars(&[rec(4), rec(4)])).await,
            "1004"
        );
        assert_eq!(sim.records().len(), 1);
        assert_eq!(
            code(&sim, Route::CarInOut, &cars(&[rec(1), rec(3)])).await,
            "0"
        );
        assert_eq!(sim.records().len(), 3);
        assert_eq!(sim.stats().rejected_with(1004), 2);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn each_record_rule_is_enforced_and_a_bad_record_refuses_its_whole_batch() {
        let sim = sim().await;
        let long = |n: usize| "字".repeat(n);
        let cases: Vec<(&str, Value, &str)> = vec![
            ("inOutType", Value::Null, "1501"),
            ("inOutType", json!("both"), "1502"),
            ("inOutTime", Value::Null, "1501"),
            ("inOutTime", json!("2024-11-28T09:30:00"), "1502"),
            ("inOutTime", json!("2024-02-30 09:30:00"), "1502"),
            ("inOutTime", json!("2024-11-28 24:00:00"), "1502"),
            ("inOutTime", json!("2024-11-28 9:30:00"), "1502"),
            ("imgName", json!(""), "1501"),
            ("imgName", json!(long(51)), "1502"),
            ("imgData", Value::Null, "1501"),
            ("imgData", json!("data:image/jpeg;base64,/9j/"), "1502"),
            ("imgData", json!("/9j/4A="), "1502"),
            (
                "imgData",
                json!(base64::engine::general_purpose::STANDARD.encode(b"GIF89a....")),
                "1502",
            ),
            ("nodeName", Value::Null, "1501"),
            ("nodeName", json!(long(21)), "1502"),
            ("carStyle", Value::Null, "1501"),
            ("carStyle", json!("3"), "1502"),
            ("carStyle", json!(0), "1502"),
            ("carNo", json!(long(33)), "1502"),
            ("carColor", json!(long(41)), "1502"),
            ("carBrand", json!(long(41)), "1502"),
            ("remark", json!(long(256)), "1502"),
        ];
        for (field, value, want) in cases {
            let mut bad = rec(9);
            if value.is_null() {
                bad.as_object_mut().expect("object").remove(field);
            } else {
                bad[field] = value.clone();
            }
            let got = code(&sim, Route::CarInOut, &cars(&[rec(1), bad])).await;
            assert_eq!(got, want, "{field} = {value}");
        }
        assert!(
            sim.records().is_empty(),
            "nothing of a refused batch is stored"
        );
        let mut at_limits = rec(1);
        for (field, n) in [
            ("imgName", 50),
            ("nodeName", 20),
            ("carNo", 32),
            ("carColor", 40),
            ("carBrand", 40),
            ("remark", 255),
        ] {
            at_limits[field] = json!(long(n));
        }
        at_limits["inOutType"] = json!("out");
        at_limits["carStyle"] = json!("2");
        at_limits["imgData"] = json!(base64::engine::general_purpose::STANDARD.encode(PNG_MAGIC));
        let mut no_plate = rec(2);
        no_plate.as_object_mut().expect("object").remove("carNo");
        assert_eq!(
            code(&sim, Route::CarInOut, &cars(&[at_limits, no_plate])).await,
            "0"
        );
        assert_eq!(sim.records().len(), 2);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn an_image_over_50000_base64_chars_is_refused_with_1502() {
        let sim = sim().await;
        let mut img = vec![0xFF, 0xD8];
        img.resize(37_500, 0x55);
        let mut at_limit = rec(1);
        at_limit["imgData"] = json!(base64::engine::general_purpose::STANDARD.encode(&img));
        assert_eq!(at_limit["imgData"].as_str().map(str::len), Some(50_000));
        img.push(0x55);
        let mut over = rec(2);
        over["imgData"] = json!(base64::engine::general_purpose::STANDARD.encode(&img));
        assert_eq!(code(&sim, Route::CarInOut, &cars(&[over])).await, "1502");
        assert_eq!(code(&sim, Route::CarInOut, &cars(&[at_limit])).await, "0");
        assert_eq!(sim.records().len(), 1);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn batches_of_0_or_101_records_are_refused_with_1501() {
        let sim = sim().await;
        assert_eq!(code(&sim, Route::CarInOut, &cars(&[])).await, "1501");
        let many: Vec<Value> = (0..101).map(rec).collect();
        assert_eq!(code(&sim, Route::CarInOut, &cars(&many)).await, "1501");
        assert_eq!(code(&sim, Route::CarInOut, &cars(&many[..100])).await, "0");
        assert_eq!(
            code(
                &sim,
                Route::CarInOut,
                &with_data(envelope("carInOut"), rec(1))
            )
            .await,
            "1501"
        );
        assert_eq!(sim.stats().batch_sizes, vec![100]);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn a_poisoned_plate_is_refused_with_1502() {
        let sim = sim().await;
        sim.set_poison(Some("晋A00002".into()));
        assert_eq!(
            code(&sim, Route::CarInOut, &cars(&[rec(1), rec(2)])).await,
            "1502"
        );
        assert_eq!(code(&sim, Route::CarInOut, &cars(&[rec(1)])).await, "0");
        sim.set_poison(None);
        assert_eq!(code(&sim, Route::CarInOut, &cars(&[rec(2)])).await, "0");
        assert_eq!(sim.records().len(), 2);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn scripted_codes_are_answered_in_order_then_normal_processing_resumes() {
        let sim = sim().await;
        sim.push_script(
            Route::CarInOut,
            [
                Scripted::Code(1003),
                Scripted::Code(2000),
                Scripted::Code(0),
            ],
        );
        assert_eq!(sim.pending_scripts(Route::CarInOut), 3);
        assert_eq!(
            code(&sim, Route::Heartbeat, &envelope("heartbeat")).await,
            "0",
            "other routes are not scripted"
        );
        assert_eq!(code(&sim, Route::CarInOut, &cars(&[rec(1)])).await, "1003");
        assert_eq!(code(&sim, Route::CarInOut, &cars(&[rec(1)])).await, "2000");
        assert_eq!(code(&sim, Route::CarInOut, &cars(&[rec(1)])).await, "0");
        assert!(sim.records().is_empty(), "scripted answers store nothing");
        assert_eq!(code(&sim, Route::CarInOut, &cars(&[rec(1)])).await, "0");
        assert_eq!(sim.records().len(), 1);
        let stats = sim.stats();
        assert_eq!(stats.scripted, 3);
        assert_eq!(
            (stats.rejected_with(1003), stats.rejected_with(2000)),
            (1, 1)
        );
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn scripted_http_non_json_reset_and_hang_answers_work() {
        let sim = sim().await;
        sim.push_script(
            Route::Heartbeat,
            [Scripted::Http(502), Scripted::NonJson, Scripted::Reset],
        );
        let a = post(&sim, Route::Heartbeat, &envelope("heartbeat")).await;
        assert_eq!(a.status, 502);
        assert!(a.date.is_some());
        let a = post(&sim, Route::Heartbeat, &envelope("heartbeat")).await;
        assert_eq!(a.status, 200);
        assert!(serde_json::from_str::<Value>(&a.body).is_err());
        let c = client();
        let sent = c
            .post(format!("{}{}", sim.url(), Route::Heartbeat.path()))
            .header("Content-Type", CT)
            .body(envelope("heartbeat").to_string())
            .send()
            .await;
        assert!(sent.is_err(), "reset gives no answer");
        assert_eq!(
            code(&sim, Route::Heartbeat, &envelope("heartbeat")).await,
            "0"
        );

        sim.push_script(Route::Heartbeat, [Scripted::Hang]);
        let url = sim.url();
        let pending = tokio::spawn(async move {
            client()
                .post(format!("{url}{}", Route::Heartbeat.path()))
                .header("Content-Type", CT)
                .body(envelope("heartbeat").to_string())
                .send()
                .await
        });
        assert!(sim.wait_for_requests(Route::Heartbeat, 5, WAIT).await);
        assert!(!pending.is_finished());
        sim.set_mode(Mode::Up);
        let result = pending.await.expect("join");
        assert!(
            result.is_err(),
            "a hung request is closed without an answer"
        );
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn refuse_mode_refuses_connections_and_up_mode_rebinds_the_same_port() {
        let sim = sim().await;
        let addr = sim.local_addr();
        let mut open = TcpStream::connect(addr).await.expect("connect");
        assert!(sim.wait_until(WAIT, |s| s.connections >= 1).await);
        sim.set_mode(Mode::Refuse);
        let err = TcpStream::connect(addr).await.expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        let thief = TcpSocket::new_v4().expect("socket");
        assert!(
            thief.bind(addr).is_err(),
            "while refusing, the port stays held: no other socket can take it"
        );
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(WAIT, open.read(&mut buf))
            .await
            .expect("closed in time");
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "open connections are closed"
        );
        sim.set_mode(Mode::Up);
        assert_eq!(sim.local_addr(), addr);
        assert_eq!(sim.url(), format!("http://{addr}"));
        assert_eq!(
            code(&sim, Route::Heartbeat, &envelope("heartbeat")).await,
            "0"
        );
        sim.set_mode(Mode::Refuse);
        sim.set_mode(Mode::Up);
        assert_eq!(
            code(&sim, Route::Heartbeat, &envelope("heartbeat")).await,
            "0"
        );
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn reset_mode_drops_connections_without_an_answer() {
        let sim = sim().await;
        let mut kept = TcpStream::connect(sim.local_addr()).await.expect("connect");
        assert!(sim.wait_until(WAIT, |s| s.connections >= 1).await);
        sim.set_mode(Mode::Reset);
        let mut fresh = TcpStream::connect(sim.local_addr())
            .await
            .expect("accepted");
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(WAIT, fresh.read(&mut buf))
            .await
            .expect("in time");
        assert!(matches!(read, Ok(0) | Err(_)));
        let body = envelope("heartbeat").to_string();
        let request = format!(
            "POST /park/heartbeat HTTP/1.1\r\nHost: x\r\nContent-Type: {CT}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        kept.write_all(request.as_bytes()).await.expect("write");
        let read = tokio::time::timeout(WAIT, kept.read(&mut buf))
            .await
            .expect("in time");
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "a request on an open connection gets no answer"
        );
        assert_eq!(sim.stats().heartbeats_ok, 0);
        sim.set_mode(Mode::Up);
        assert_eq!(
            code(&sim, Route::Heartbeat, &envelope("heartbeat")).await,
            "0"
        );
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn http500_mode_answers_500_with_a_date_header() {
        let sim = sim().await;
        sim.set_mode(Mode::Http500);
        let a = post(&sim, Route::CarInOut, &cars(&[rec(1)])).await;
        assert_eq!(a.status, 500);
        assert!(a.date.is_some());
        assert!(sim.records().is_empty());
        sim.set_mode(Mode::Up);
        assert_eq!(code(&sim, Route::CarInOut, &cars(&[rec(1)])).await, "0");
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn hang_mode_never_answers_until_the_mode_changes() {
        let sim = sim().await;
        sim.set_mode(Mode::Hang);
        let url = sim.url();
        let pending = tokio::spawn(async move {
            client()
                .post(format!("{url}{}", Route::CarInOut.path()))
                .header("Content-Type", CT)
                .body(cars(&[rec(1)]).to_string())
                .send()
                .await
        });
        assert!(
            sim.wait_until(WAIT, |s| s.car_in_out_body_sizes.len() == 1)
                .await,
            "the request was read"
        );
        assert!(!pending.is_finished());
        sim.set_mode(Mode::Up);
        assert!(pending.await.expect("join").is_err());
        assert!(sim.records().is_empty());
        assert_eq!(code(&sim, Route::CarInOut, &cars(&[rec(1)])).await, "0");
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn a_body_over_max_body_is_refused_with_http_413() {
        let sim = PlatformSim::start(SimConfig {
            max_body: 4_000,
            ..SimConfig::new(LOT, TOKEN)
        })
        .await
        .expect("start");
        let big: Vec<Value> = (0..40).map(rec).collect();
        let a = post(&sim, Route::CarInOut, &cars(&big)).await;
        assert_eq!(a.status, 413);
        assert!(sim.records().is_empty());
        assert_eq!(code(&sim, Route::CarInOut, &cars(&big[..2])).await, "0");
        let sizes = sim.stats().car_in_out_body_sizes;
        assert_eq!(sizes.len(), 2);
        assert!(sizes[0] > 4_000 && sizes[1] <= 4_000);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn success_can_be_spelled_as_a_number_or_200() {
        let sim = sim().await;
        for (style, want) in [
            (SuccessStyle::NumberZero, json!(0)),
            (SuccessStyle::String200, json!("200")),
            (SuccessStyle::Number200, json!(200)),
        ] {
            sim.set_success_style(style);
            let a = post(&sim, Route::Heartbeat, &envelope("heartbeat")).await;
            let v: Value = serde_json::from_str(&a.body).expect("json");
            assert_eq!(v["code"], want);
        }
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn wait_for_records_times_out_false_and_wakes_true_when_records_arrive() {
        let sim = sim().await;
        assert!(!sim.wait_for_records(1, Duration::from_millis(50)).await);
        let other = sim.clone();
        let waiter = tokio::spawn(async move { other.wait_for_records(2, WAIT).await });
        assert_eq!(
            code(&sim, Route::CarInOut, &cars(&[rec(1), rec(2)])).await,
            "0"
        );
        assert!(waiter.await.expect("join"));
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn the_token_never_appears_in_debug_output() {
        let cfg = SimConfig::new(LOT, "very-secret-token");
        assert!(!format!("{cfg:?}").contains("very-secret-token"));
        let sim = PlatformSim::start(cfg).await.expect("start");
        let shown = format!("{sim:?}");
        assert!(shown.contains("PlatformSim") && !shown.contains("very-secret-token"));
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn shutdown_stops_listening() {
        let sim = sim().await;
        let addr = sim.local_addr();
        sim.shutdown().await;
        assert!(TcpStream::connect(addr).await.is_err());
        sim.set_mode(Mode::Up);
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "set_mode after shutdown does not rebind"
        );
    }
}
