//! The uploader: heartbeats on schedule, the coalesced space report, and the outbox's
//! `carInOut` records in batches, classified by the platform's answer.
//!
//! # Streams
//!
//! Heartbeats, the space report and the records are three streams, each with its own
//! back-off (full jitter, 1 s → 5 min; 15 min for configuration faults), so a refused
//! `parkSpace` (HTTP 404, `2001`, …) never holds back a `carInOut`, and the other way round.
//!
//! - Heartbeats run on their own timer, never queued: a missed beat is not re-sent. Any
//!   authenticated answer (everything but `1000`/`1001`/`1002`, e.g. `1005` "no newer
//!   command") proves the platform is reachable: no fault, `/healthz` stays ok.
//! - The space report is sent once after start, after every reconnect (the first success
//!   after a failure), and whenever it changes; only the newest value is ever sent.
//! - Records go oldest first, as soon as any are pending, in requests of at most
//!   `max_batch` records and `max_body` bytes, or fewer (see *Request size*).
//!
//! # Answers to `carInOut`
//!
//! | answer | what happens |
//! |---|---|
//! | `0`/`200` | delivered: deleted |
//! | `1004`, one record | delivered by an earlier try whose answer was lost: deleted |
//! | `1004`, a batch | the next requests carry one record each until one is accepted as new (see *Lost answers*) |
//! | `1501`/`1502`, a batch | split into halves, re-sent at once, until the record concerned is alone |
//! | `1501`/`1502`, one record | dead letter, unless it looks like configuration (see *Configuration or record*) |
//! | `2001` | a strike for every record of the request; a request whose records all have [`BUSINESS_STRIKES`] strikes is treated like `1502` (split at once, the record alone dead-lettered), so one record answered `2001` forever never holds back the others |
//! | `1002` | the client re-syncs the clock and retries once; a `1002` after an upload that took half the `ts` window is a slow link (see *Request size*); else a fault |
//! | `1005`/`1007`/`1008`/`1107` | logged with their `data` at debug level, counted; then as below |
//! | `1000`, `1001`, `1005`–`1008`, `1014`, HTTP 4xx, non-JSON, an answer over 64 KiB | fault: long back-off, health fault, data kept |
//! | anything else, timeouts, resets | back off and try again |
//!
//! Nothing leaves the outbox for any other reason.
//!
//! # Request size (slow uplinks)
//!
//! `ts` is valid for 10 s, and the platform checks it once the whole body has arrived, so
//! a request must travel inside that window. Each request is sized by this rule:
//!
//! - every answered request of 16 KiB or more is a throughput sample (body bytes / time to
//!   the answer); the uplink's throughput is their running average (new = ½ old + ½ sample);
//! - a timeout, or a `1002` after an upload that took half the window or more, cuts the
//!   request: the byte budget becomes what the learned throughput carries in a quarter of the
//!   shorter of the window and `request_timeout` (before any sample: a quarter of the
//!   failed request), and the record count drops to one. A timeout of a request the learned
//!   throughput should have carried in time is the platform hanging, not the link: no cut.
//!   A quarter leaves room for the link to slow to a quarter of what was learned (4G in a
//!   basement varies that much) and for the clock offset's ±1 s;
//! - every request accepted as new grows it back: the record count doubles, the byte
//!   budget moves towards the learned fit (at most doubling), up to `max_batch` and
//!   `max_body`, where the limit ends;
//! - a lone record that still does not make it is sent with its picture shrunk further
//!   (half its Base64 size each time, down to 8,000 characters, never dropped; the
//!   stored record keeps its picture), and its `remark` says so. The picture budget doubles
//!   back after each success. (A platform that hangs before any throughput was learned
//!   looks the same, so a record sent then may go with a smaller picture.)
//!
//! After a cut the request is re-sent at once (no back-off) while the cut made it smaller;
//! once it is one record with the smallest picture, failures back off as usual.
//!
//! # Lost answers
//!
//! A request whose answer never came (a timeout, or a connection that broke after it was
//! made) may have been stored. Its records are then re-sent **one per request** until one
//! is accepted as new, and the count grows back from there. A one-record `1004` proves that
//! record is stored; a batch `1004` proves nothing about any one record (the spec), so a
//! batch `1004` is handled the same way. Cost: each record of the lost request is uploaded
//! once more (1× its bytes, in n small requests). Halving instead would re-upload every
//! record log2(n)+1 times when the whole batch was stored (100 records: 8×), which on a
//! metered 4G link is money; retrying the same batch first would add one more full upload
//! and still end in a `1004`. The price is round trips: n requests instead of log2(n).
//!
//! # Configuration or record
//!
//! A record refused alone with `1501`/`1502` is dead-lettered only when the platform has
//! shown it accepts this gateway's requests: another record of the same batch was accepted,
//! or a request with `data` (`parkSpace` or `carInOut`) was accepted since start and fewer
//! than [`SAME_REFUSALS`] records in a row were refused with this same answer. Otherwise the
//! record is held (kept pending, not dead-lettered), the round stops, and the next rounds
//! probe with one record (the oldest one not held). [`CONFIG_ROUNDS`] rounds in a row ending
//! this way raise a fault that names the likely settings (`data_encoding`, `auth_case`). A
//! record accepted ends the hold: the held records are sent again and judged again.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lotlink_drivers::{Outage, Severity};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::outbox::{Outbox, OutboxError, StoredRecord};
use crate::protocol::{CallError, Client, Cmd, Reply, Verdict};

/// Back-off bounds.
pub(crate) const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Cap for transient faults.
pub(crate) const BACKOFF_CAP: Duration = Duration::from_secs(300);
/// Cap for configuration/auth faults (1000, 1002, …).
pub(crate) const BACKOFF_CAP_FAULT: Duration = Duration::from_secs(900);
/// `2001` answers a record may get before it is treated as `1502`.
pub(crate) const BUSINESS_STRIKES: u32 = 3;
/// Records refused alone in a row with the same answer that are dead-lettered on the
/// strength of an earlier accepted request; the next one is held (see the module docs).
pub(crate) const SAME_REFUSALS: u32 = 2;
/// Rounds in a row that end with a held record before the hold is a fault.
pub(crate) const CONFIG_ROUNDS: u32 = 3;
/// Smallest Base64 budget a lone record's picture is shrunk to on a slow uplink.
pub(crate) const MIN_IMAGE_CHARS: usize = 8_000;
/// Smallest answered request that counts as a throughput sample.
pub(crate) const MIN_SAMPLE_BYTES: u64 = 16 * 1024;
/// Share of the `ts` window (or the request timeout, if shorter) a request is sized for.
pub(crate) const TARGET_SHARE: f64 = 0.25;

/// How often the data loop shows it is alive while it waits (for the systemd watchdog).
pub(crate) const LIVENESS_TICK: Duration = Duration::from_secs(5);

/// The data loop's last sign of life, in [`liveness_now`] ms (0: none yet): bumped on every
/// loop turn, every request and every [`LIVENESS_TICK`] while waiting. The watchdog pings
/// systemd only while it is fresh, so a wedged uploader gets the daemon restarted.
pub(crate) type Liveness = Arc<std::sync::atomic::AtomicI64>;

/// Milliseconds on a monotonic clock (since the first call, plus 1): not the wall clock, which
/// NTP steps forward at boot on a Pi without a real-time clock, and that step must not look
/// like a wedged uploader.
pub(crate) fn liveness_now() -> i64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    i64::try_from(start.elapsed().as_millis()).unwrap_or(i64::MAX - 1) + 1
}

fn bump(l: &Liveness) {
    l.store(liveness_now(), std::sync::atomic::Ordering::Relaxed);
}

/// The back-off every retry loop of the gateway shares (here: full jitter).
pub(crate) use lotlink_drivers::Backoff;

/// One of the uploader's three independent streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// `/park/heartbeat`.
    Heartbeat = 0,
    /// `/dataSync/parkSpace`.
    Space = 1,
    /// `/dataSync/carInOut`.
    Records = 2,
}

impl Stream {
    /// The name used in logs and faults.
    pub fn name(self) -> &'static str {
        match self {
            Stream::Heartbeat => "heartbeat",
            Stream::Space => "parkSpace",
            Stream::Records => "carInOut",
        }
    }
}

/// What the platform side (and ingest) looks like, for status and health.
#[derive(Debug, Clone, Default)]
pub struct PlatformHealth {
    /// Unix ms of the last answer that was a success.
    pub last_success_ms: Option<i64>,
    /// Unix ms of the last authenticated answer (a success, or e.g. a heartbeat answered
    /// `1005`): the platform is reachable and takes our credentials.
    pub last_reached_ms: Option<i64>,
    /// Unix ms of the last `carInOut` the platform accepted (or found it already had).
    pub last_records_success_ms: Option<i64>,
    /// Last error: code (platform code or transport kind) and message.
    pub last_error: Option<(String, String)>,
    /// A fault an operator must fix (1000, persistent 1002, …), cleared by a success of the
    /// stream that raised it. The first of the streams' faults (see [`Stream`]).
    pub fault: Option<String>,
    /// Each stream's fault, by [`Stream`] index.
    pub stream_faults: [Option<String>; 3],
    /// Records delivered since start.
    pub delivered: u64,
    /// Records dead-lettered since start.
    pub dead_lettered: u64,
    /// Records held pending because their refusal looks like configuration.
    pub held: u64,
    /// Heartbeats answered with success since start.
    pub heartbeats_ok: u64,
    /// Answers with a command-interface code (1005, 1007, 1008, 1107) since start.
    pub command_codes: u64,
    /// Current `carInOut` request limits: records, body bytes.
    pub request_limit: (usize, u64),
    /// Learned uplink throughput, bytes per second (none until a sample).
    pub uplink_bytes_per_s: Option<u64>,
    /// Events ingest could not store (disk quota, store errors) since start.
    pub events_refused: u64,
    /// Unix ms and reason of the last event ingest could not store.
    pub last_refusal: Option<(i64, String)>,
    /// Unix ms of the last event ingest stored.
    pub last_stored_ms: Option<i64>,
}

impl PlatformHealth {
    /// Set or clear one stream's fault; [`PlatformHealth::fault`] follows.
    pub fn set_fault(&mut self, stream: Stream, fault: Option<String>) {
        self.stream_faults[stream as usize] = fault;
        self.fault = self.stream_faults.iter().flatten().next().cloned();
    }
}

/// Shared handle on [`PlatformHealth`].
pub(crate) type Health = Arc<Mutex<PlatformHealth>>;

/// Change the shared health (a poisoned lock still holds the last values).
pub(crate) fn health_mut<R>(h: &Health, f: impl FnOnce(&mut PlatformHealth) -> R) -> R {
    let mut g = h.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    f(&mut g)
}

/// How the log tells the platform's lasting faults: one [`Outage`] for "unreachable" (no
/// answer at all, whichever stream saw it), and per stream one for answers with a transient
/// error code and one for faults an operator must fix (logged as errors). Shared by the
/// heartbeat loop and the upload loop, so an outage is one start line, a few summaries and
/// one end line however many requests fail.
#[derive(Debug)]
pub(crate) struct PlatformLog {
    unreachable: Outage,
    store: Outage,
    erring: [Outage; 3],
    refusing: [Outage; 3],
}

/// Shared handle on the [`PlatformLog`].
pub(crate) type SharedPlatformLog = Arc<Mutex<PlatformLog>>;

impl Default for PlatformLog {
    fn default() -> Self {
        let per_stream = |down: &'static str, up: &'static str, severity: Severity| {
            [Stream::Heartbeat, Stream::Space, Stream::Records].map(|s| {
                Outage::new(format!("platform ({})", s.name()), down, up).severity(severity)
            })
        };
        PlatformLog {
            unreachable: Outage::new("platform", "unreachable", "reachable again"),
            store: Outage::new("outbox", "cannot be read for upload", "readable again"),
            erring: per_stream("answers with errors", "accepts requests again", Severity::Warn),
            refusing: per_stream(
                "refuses the gateway's requests: an operator must fix the configuration; data is kept",
                "accepts the gateway's requests again",
                Severity::Error,
            ),
        }
    }
}

impl PlatformLog {
    /// No answer (a transport error).
    pub(crate) fn unreachable(&mut self, reason: &dyn std::fmt::Display, pending: Option<u64>) {
        self.unreachable.failed_with(reason, &pending_text(pending));
    }

    /// An authenticated answer with an error code; `fault`: an operator must act.
    pub(crate) fn refused(
        &mut self,
        stream: Stream,
        fault: bool,
        reason: &dyn std::fmt::Display,
        pending: Option<u64>,
    ) {
        self.unreachable.recovered();
        let o = if fault {
            &mut self.refusing[stream as usize]
        } else {
            &mut self.erring[stream as usize]
        };
        o.failed_with(reason, &pending_text(pending));
    }

    /// A success on `stream`.
    pub(crate) fn accepted(&mut self, stream: Stream) {
        self.unreachable.recovered();
        self.erring[stream as usize].recovered();
        self.refusing[stream as usize].recovered();
        self.store.recovered();
    }
}

fn pending_text(pending: Option<u64>) -> String {
    pending.map_or_else(String::new, |n| format!("{n} pending"))
}

fn plog_mut<R>(l: &SharedPlatformLog, f: impl FnOnce(&mut PlatformLog) -> R) -> R {
    let mut g = l.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    f(&mut g)
}

/// Whether a failure's code is a platform answer code (digits) rather than a transport
/// error kind ("timeout", "connect", …).
fn is_answer_code(code: &str) -> bool {
    !code.is_empty() && code.bytes().all(|b| b.is_ascii_digit())
}

/// Upload settings.
#[derive(Debug, Clone)]
pub(crate) struct UploadSettings {
    pub max_batch: usize,
    pub max_body: u64,
    pub heartbeat_interval: Duration,
    /// Base of the back-off (1 s in production; tests may shorten it).
    pub backoff_base: Duration,
    /// Cap for transient faults ([`BACKOFF_CAP`] in production).
    pub backoff_cap: Duration,
    /// Cap for configuration faults ([`BACKOFF_CAP_FAULT`] in production).
    pub backoff_cap_fault: Duration,
}

/// Why a stream's round stopped.
#[derive(Debug)]
enum Stop {
    /// Transient: back off with the normal cap.
    Transient(String, String),
    /// A fault an operator must fix: long back-off, health error.
    Fault(String, String),
    /// The request was cut smaller (slow uplink): try again at once.
    Resized(String, String),
    /// The store failed.
    Store(OutboxError),
}

/// Sizes `carInOut` requests to what the uplink carries inside the `ts` window (the rule is
/// in the module docs).
#[derive(Debug, Clone)]
pub(crate) struct Sizer {
    max_records: usize,
    max_body: u64,
    target: Duration,
    records: usize,
    bytes: u64,
    rate: Option<f64>,
    image_chars: usize,
}

impl Sizer {
    /// Unlimited (`max_records`, `max_body`) until the link shows trouble. Requests are
    /// sized for [`TARGET_SHARE`] of the shorter of `window` and `timeout`.
    pub(crate) fn new(
        max_records: usize,
        max_body: u64,
        window: Duration,
        timeout: Duration,
    ) -> Self {
        Sizer {
            max_records: max_records.max(1),
            max_body: max_body.max(1),
            target: window.min(timeout).mul_f64(TARGET_SHARE),
            records: max_records.max(1),
            bytes: max_body.max(1),
            rate: None,
            image_chars: crate::imaging::MAX_B64_CHARS,
        }
    }

    /// Most records and body bytes of the next request (the outbox always gives at least one
    /// record, whatever its size).
    pub(crate) fn limits(&self) -> (usize, u64) {
        (self.records, self.bytes)
    }

    /// Base64 budget of a lone record's picture.
    pub(crate) fn image_chars(&self) -> usize {
        self.image_chars
    }

    /// Learned throughput, bytes per second.
    pub(crate) fn rate(&self) -> Option<f64> {
        self.rate
    }

    /// What the learned throughput carries in the target time.
    fn fit(&self) -> Option<u64> {
        self.rate.map(|r| {
            let b = r * self.target.as_secs_f64();
            if b >= self.max_body as f64 {
                self.max_body
            } else {
                (b as u64).max(1)
            }
        })
    }

    /// An answer came for a body of `bytes` after `elapsed`.
    pub(crate) fn answered(&mut self, bytes: u64, elapsed: Duration) {
        if bytes < MIN_SAMPLE_BYTES {
            return;
        }
        let sample = bytes as f64 / elapsed.as_secs_f64().max(0.001);
        self.rate = Some(match self.rate {
            Some(old) => 0.5 * old + 0.5 * sample,
            None => sample,
        });
    }

    /// The platform accepted a request as new: grow back.
    pub(crate) fn accepted(&mut self) {
        self.records = self.records.saturating_mul(2).min(self.max_records);
        if self.bytes < self.max_body {
            let fit = self.fit().unwrap_or(u64::MAX);
            self.bytes = fit
                .clamp(self.bytes / 2, self.bytes.saturating_mul(2))
                .clamp(1, self.max_body);
        }
        self.image_chars = self
            .image_chars
            .saturating_mul(2)
            .min(crate::imaging::MAX_B64_CHARS);
    }

    /// A request of `n` records and `bytes` did not make it in time (a timeout, a lost
    /// answer, a `1002` after a long upload); `lone_image_chars` is the Base64 size of the
    /// picture sent when it was one record. Whether anything got smaller.
    /// When the learned throughput says the request should have fit, the link is not the
    /// cause (a platform that hangs): nothing changes.
    pub(crate) fn trouble(
        &mut self,
        n: usize,
        bytes: u64,
        lone_image_chars: Option<usize>,
    ) -> bool {
        if self.fit().is_some_and(|fit| bytes <= fit) {
            return false;
        }
        let before = (self.records, self.bytes, self.image_chars);
        self.records = 1;
        let cut = self.fit().unwrap_or(bytes / 4).min(bytes / 2).max(1);
        self.bytes = self.bytes.min(cut);
        if n <= 1 {
            if let Some(chars) = lone_image_chars {
                self.image_chars = (self.image_chars.min(chars) / 2).max(MIN_IMAGE_CHARS);
            }
        }
        (self.records, self.bytes, self.image_chars) != before
    }

    /// The next requests carry one record each, until one is accepted as new. Whether the
    /// count got smaller.
    pub(crate) fn one_at_a_time(&mut self) -> bool {
        let cut = self.records > 1;
        self.records = 1;
        cut
    }
}

/// Records refused in a way that may be configuration (see the module docs).
#[derive(Debug, Default)]
struct Refusals {
    /// Answer (`code msg`) of the last record refused alone, and how many in a row.
    same: Option<(String, u32)>,
    /// Held records: refused alone, kept pending.
    held: HashSet<u64>,
    /// Rounds in a row that ended with a held record.
    rounds: u32,
    /// A request with `data` was accepted since start.
    trusted: bool,
}

/// One stream's back-off.
#[derive(Debug)]
struct Pace {
    stream: Stream,
    backoff: Backoff,
    not_before: Option<Instant>,
}

impl Pace {
    fn new(stream: Stream, base: Duration) -> Self {
        Pace {
            stream,
            backoff: Backoff::new(base, BACKOFF_CAP).with_full_jitter(),
            not_before: None,
        }
    }

    fn ready(&self, now: Instant) -> bool {
        self.not_before.is_none_or(|t| now >= t)
    }

    /// A success: returns whether the stream had been failing (the log says so through
    /// the [`PlatformLog`]).
    fn succeeded(&mut self, log: &SharedPlatformLog) -> bool {
        self.not_before = None;
        let failures = self.backoff.failures();
        self.backoff.reset();
        plog_mut(log, |l| l.accepted(self.stream));
        failures > 0
    }
}

/// The uploader.
pub(crate) struct Uploader {
    log: SharedPlatformLog,
    client: Arc<Client>,
    outbox: Outbox,
    settings: UploadSettings,
    health: Health,
    strikes: HashMap<u64, u32>,
    sizer: Sizer,
    refusals: Refusals,
    liveness: Liveness,
}

/// JSON of one record as the platform wants it.
#[derive(serde::Serialize)]
struct Wire<'a> {
    #[serde(flatten)]
    meta: WireMeta<'a>,
    /// Base64 written straight into the JSON text: no copy of the image per record.
    #[serde(rename = "imgData", serialize_with = "base64_text")]
    img_data: &'a [u8],
}

fn base64_text<S: serde::Serializer>(bytes: &&[u8], s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&base64::display::Base64Display::new(
        bytes,
        &base64::engine::general_purpose::STANDARD,
    ))
}

#[derive(serde::Serialize)]
struct WireMeta<'a> {
    #[serde(rename = "carNo", skip_serializing_if = "Option::is_none")]
    car_no: Option<&'a str>,
    #[serde(rename = "inOutType")]
    in_out_type: &'a str,
    #[serde(rename = "inOutTime")]
    in_out_time: &'a str,
    #[serde(rename = "imgName")]
    img_name: &'a str,
    #[serde(rename = "nodeName")]
    node_name: &'a str,
    #[serde(rename = "carColor", skip_serializing_if = "Option::is_none")]
    car_color: Option<&'a str>,
    #[serde(rename = "carStyle")]
    car_style: &'a str,
    #[serde(rename = "carBrand", skip_serializing_if = "Option::is_none")]
    car_brand: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remark: Option<&'a str>,
}

/// The `data` JSON text of a `carInOut` request.
pub fn records_json(recs: &[StoredRecord]) -> String {
    let wire: Vec<Wire<'_>> = recs
        .iter()
        .map(|r| Wire {
            meta: WireMeta {
                car_no: r.meta.car_no.as_deref(),
                in_out_type: &r.meta.in_out_type,
                in_out_time: &r.meta.in_out_time,
                img_name: &r.meta.img_name,
                node_name: &r.meta.node_name,
                car_color: r.meta.car_color.as_deref(),
                car_style: &r.meta.car_style,
                car_brand: r.meta.car_brand.as_deref(),
                remark: r.meta.remark.as_deref(),
            },
            img_data: &r.image,
        })
        .collect();
    // One allocation of about the right size: the images' Base64 and ~300 bytes per record.
    let size: usize = recs
        .iter()
        .map(|r| crate::imaging::b64_len(r.image.len()) + 400)
        .sum();
    let mut out = Vec::with_capacity(size);
    match serde_json::to_writer(&mut out, &wire) {
        Ok(()) => String::from_utf8(out).unwrap_or_else(|_| "[]".into()),
        Err(_) => "[]".into(),
    }
}

/// A copy of `rec` whose picture fits `chars` Base64 characters, with a remark saying so;
/// `None` when it already fits.
pub(crate) fn shrunk_for_uplink(rec: &StoredRecord, chars: usize) -> Option<StoredRecord> {
    if crate::imaging::b64_len(rec.image.len()) <= chars {
        return None;
    }
    let p = crate::imaging::prepare(&rec.image, chars);
    let mut out = rec.clone();
    out.image = p.bytes;
    let note = format!(
        "上行带宽不足，图片再压缩至{} 字符 (image shrunk to {} Base64 chars for a slow uplink)",
        crate::imaging::b64_len(out.image.len()),
        crate::imaging::b64_len(out.image.len())
    );
    out.meta.remark = Some(crate::record::append_remark(
        rec.meta.remark.as_deref(),
        &note,
    ));
    Some(out)
}

/// How one `carInOut` request went.
struct Sent {
    reply: Reply,
}

impl Uploader {
    /// A new uploader.
    pub(crate) fn new(
        client: Arc<Client>,
        outbox: Outbox,
        settings: UploadSettings,
        health: Health,
    ) -> Self {
        let sizer = Sizer::new(
            settings.max_batch,
            settings.max_body,
            client.ts_window(),
            client.request_timeout(),
        );
        health_mut(&health, |h| h.request_limit = sizer.limits());
        Uploader {
            client,
            outbox,
            settings,
            health,
            strikes: HashMap::new(),
            sizer,
            refusals: Refusals::default(),
            liveness: Liveness::default(),
            log: Arc::new(Mutex::new(PlatformLog::default())),
        }
    }

    /// Report signs of life to this handle (see [`Liveness`]).
    #[must_use]
    pub(crate) fn with_liveness(mut self, liveness: Liveness) -> Self {
        self.liveness = liveness;
        self
    }

    fn note_success(&self, stream: Stream) {
        let now = crate::clock::Clock::local_ms();
        let limits = self.sizer.limits();
        let rate = self.sizer.rate().map(|r| r as u64);
        health_mut(&self.health, |h| {
            h.last_success_ms = Some(now);
            h.last_reached_ms = Some(now);
            if stream == Stream::Records {
                h.last_records_success_ms = Some(now);
            }
            h.set_fault(stream, None);
            h.request_limit = limits;
            h.uplink_bytes_per_s = rate;
        });
    }

    fn note_error(&self, stream: Stream, code: &str, msg: &str, fault: bool) {
        health_mut(&self.health, |h| {
            h.last_error = Some((code.to_string(), msg.to_string()));
            if fault {
                h.set_fault(stream, Some(format!("{}: {code}: {msg}", stream.name())));
            }
        });
    }

    /// Run heartbeats and uploads until `shutdown`.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let hb = heartbeat_loop(
            self.client.clone(),
            self.settings.heartbeat_interval,
            self.health.clone(),
            self.log.clone(),
            shutdown.clone(),
        );
        let up = self.data_loop(shutdown);
        tokio::join!(hb, up);
    }

    /// Log a stream's failure and set when it may try again.
    fn failed(&self, pace: &mut Pace, stop: Stop) {
        let stream = pace.stream;
        let (code, msg, cap, fault) = match stop {
            Stop::Resized(code, msg) => {
                self.note_error(stream, &code, &msg, false);
                tracing::debug!(stream = stream.name(), code = %code, error = %msg, "request cut smaller; sending again at once");
                pace.not_before = None;
                return;
            }
            Stop::Transient(code, msg) => (code, msg, self.settings.backoff_cap, false),
            Stop::Fault(code, msg) => (code, msg, self.settings.backoff_cap_fault, true),
            Stop::Store(e) => (
                "store".to_string(),
                e.to_string(),
                self.settings.backoff_cap,
                false,
            ),
        };
        self.note_error(stream, &code, &msg, fault);
        let d = pace.backoff.next_capped(cap);
        pace.not_before = Some(Instant::now() + d);
        let n = pace.backoff.failures();
        let retry_in_ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        tracing::debug!(stream = stream.name(), code = %code, error = %msg, failures = n, retry_in_ms, "upload failed");
        // A lasting fault: logged when it starts, summarised, and when it ends.
        let pending = self.outbox.len();
        let reason = format!("{code}: {msg}");
        plog_mut(&self.log, |l| {
            if code == "store" {
                l.store.failed_with(&msg, &pending_text(Some(pending)));
            } else if fault || is_answer_code(&code) {
                l.refused(stream, fault, &reason, Some(pending));
            } else {
                l.unreachable(&format_args!("{}: {reason}", stream.name()), Some(pending));
            }
        });
    }

    async fn data_loop(mut self, shutdown: CancellationToken) {
        let mut space = Pace::new(Stream::Space, self.settings.backoff_base);
        let mut records = Pace::new(Stream::Records, self.settings.backoff_base);
        let mut space_due = true;
        loop {
            bump(&self.liveness);
            if shutdown.is_cancelled() {
                return;
            }
            let mut busy = false;
            if space.ready(Instant::now()) {
                match self.space_round(space_due).await {
                    Ok(sent) => {
                        if sent {
                            space_due = false;
                            space.succeeded(&self.log);
                        }
                    }
                    Err(stop) => self.failed(&mut space, stop),
                }
            }
            if records.ready(Instant::now()) {
                match self.records_round().await {
                    Ok(true) => {
                        // The first success after a failure: a reconnect, so the space
                        // report goes out again.
                        if records.succeeded(&self.log) {
                            space_due = true;
                        }
                        busy = true;
                    }
                    Ok(false) => {}
                    Err(stop) => {
                        busy = matches!(stop, Stop::Resized(..));
                        self.failed(&mut records, stop);
                    }
                }
            }
            if busy {
                continue;
            }
            // Wait for work, the end of a back-off, or shutdown (showing signs of life).
            let wake = [space.not_before, records.not_before]
                .into_iter()
                .flatten()
                .min();
            let changed = self.outbox.changed();
            tokio::pin!(changed);
            loop {
                let step = wake.map_or(LIVENESS_TICK, |t| {
                    t.saturating_duration_since(Instant::now())
                        .min(LIVENESS_TICK)
                });
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = &mut changed => break,
                    () = tokio::time::sleep(step) => {
                        bump(&self.liveness);
                        if wake.is_some_and(|t| Instant::now() >= t) {
                            break;
                        }
                    }
                }
            }
        }
    }

    /// The space report, if due. `Ok(true)` when one was delivered (or refused for good).
    async fn space_round(&mut self, force: bool) -> Result<bool, Stop> {
        let Some(rep) = self
            .outbox
            .settings()
            .space_to_send(force)
            .map_err(Stop::Store)?
        else {
            return Ok(false);
        };
        let data = format!(
            "{{\"totalSpace\":{},\"surplusSpace\":{}}}",
            rep.total, rep.surplus
        );
        let reply = self.call(Cmd::ParkSpace, &data).await?;
        match reply.verdict {
            Verdict::Success | Verdict::Exists => {
                self.outbox
                    .settings()
                    .space_sent(rep.seq)
                    .map_err(Stop::Store)?;
                self.refusals.trusted = true;
                self.note_success(Stream::Space);
                // Per change: debug (the minute summary speaks at INFO).
                tracing::debug!(
                    total = rep.total,
                    surplus = rep.surplus,
                    "space report delivered"
                );
                Ok(true)
            }
            Verdict::Malformed => {
                // The platform refuses these figures; drop this value (the next change
                // produces a new one) rather than retry it forever.
                tracing::error!(code = %reply.code, msg = %reply.msg, total = rep.total, surplus = rep.surplus, "platform refused the space report");
                self.outbox
                    .settings()
                    .space_sent(rep.seq)
                    .map_err(Stop::Store)?;
                Ok(true)
            }
            v => Err(stop_for(v, &reply)),
        }
    }

    /// One batch of records (or, while records are held, a one-record probe). `Ok(true)`
    /// when something was sent, `Ok(false)` when nothing is pending.
    async fn records_round(&mut self) -> Result<bool, Stop> {
        let (max_records, max_bytes) = self.sizer.limits();
        if !self.refusals.held.is_empty() {
            let batch = self
                .outbox
                .peek(self.settings.max_batch, self.settings.max_body)
                .map_err(Stop::Store)?;
            let held = &mut self.refusals.held;
            let pending: HashSet<u64> = batch.iter().map(|r| r.id).collect();
            held.retain(|id| pending.contains(id));
            if !held.is_empty() {
                let pick = batch
                    .iter()
                    .find(|r| !held.contains(&r.id))
                    .or(batch.first())
                    .cloned();
                let Some(pick) = pick else { return Ok(false) };
                self.deliver(vec![pick]).await?;
                return Ok(true);
            }
        }
        let batch = self
            .outbox
            .peek(max_records, max_bytes)
            .map_err(Stop::Store)?;
        if batch.is_empty() {
            return Ok(false);
        }
        self.deliver(batch).await?;
        Ok(true)
    }

    async fn call(&self, cmd: Cmd, data: &str) -> Result<Reply, Stop> {
        bump(&self.liveness);
        let r = self.client.call(cmd, Some(data)).await;
        bump(&self.liveness);
        let r = r.map_err(|e| call_stop(&e))?;
        self.note_command_code(cmd, &r);
        Ok(r)
    }

    fn note_command_code(&self, cmd: Cmd, r: &Reply) {
        if r.is_command_code() {
            health_mut(&self.health, |h| h.command_codes += 1);
            tracing::debug!(cmd = cmd.name(), code = %r.code, msg = %r.msg, data = %r.data, "answer with a command-interface code");
        }
    }

    /// Send one `carInOut` request, learning from how long it took.
    async fn send(&mut self, recs: &[StoredRecord]) -> Result<Sent, Stop> {
        let count = recs.len();
        let shrunk = if count == 1 && self.sizer.image_chars() < crate::imaging::MAX_B64_CHARS {
            let rec = recs[0].clone();
            let chars = self.sizer.image_chars();
            tokio::task::spawn_blocking(move || shrunk_for_uplink(&rec, chars))
                .await
                .ok()
                .flatten()
        } else {
            None
        };
        if let Some(s) = &shrunk {
            tracing::info!(
                id = s.id,
                chars = crate::imaging::b64_len(s.image.len()),
                "slow uplink: sending this record with its picture shrunk further"
            );
        }
        let sent: &[StoredRecord] = shrunk.as_ref().map_or(recs, std::slice::from_ref);
        let lone_chars = (count == 1).then(|| crate::imaging::b64_len(sent[0].image.len()));
        let data = records_json(sent);
        let bytes = data.len() as u64 + 200;
        let started = Instant::now();
        bump(&self.liveness);
        let answer = self.client.call(Cmd::CarInOut, Some(&data)).await;
        bump(&self.liveness);
        let elapsed = started.elapsed();
        drop(data);
        let reply = match answer {
            Ok(reply) => reply,
            Err(e) => {
                let stop = call_stop(&e);
                let mut cut = false;
                if matches!(e, CallError::Timeout(_)) {
                    cut |= self.sizer.trouble(count, bytes, lone_chars);
                }
                if e.may_have_arrived() {
                    // Maybe stored without an answer: one record per request until one is
                    // new (see "Lost answers").
                    cut |= self.sizer.one_at_a_time();
                    tracing::info!(records = count, bytes, elapsed_ms = millis(elapsed), "no answer to a carInOut request: it may have been stored; sending one record per request until one is new");
                }
                self.publish_limits();
                if cut {
                    return Err(match stop {
                        Stop::Transient(c, m) | Stop::Fault(c, m) => Stop::Resized(c, m),
                        other => other,
                    });
                }
                return Err(stop);
            }
        };
        self.note_command_code(Cmd::CarInOut, &reply);
        self.sizer.answered(bytes, elapsed);
        if reply.verdict == Verdict::AuthFailed && elapsed >= self.client.ts_window() / 2 {
            let cut = self.sizer.trouble(count, bytes, lone_chars);
            self.publish_limits();
            tracing::info!(
                records = count,
                bytes,
                elapsed_ms = millis(elapsed),
                limit_bytes = self.sizer.limits().1,
                "1002 after a long upload: the request took too long for its ts; sending less"
            );
            let msg = format!("{} (after a {} ms upload)", reply.msg, millis(elapsed));
            return Err(if cut {
                Stop::Resized(reply.code, msg)
            } else {
                Stop::Transient(reply.code, msg)
            });
        }
        Ok(Sent { reply })
    }

    fn publish_limits(&self) {
        let limits = self.sizer.limits();
        let rate = self.sizer.rate().map(|r| r as u64);
        health_mut(&self.health, |h| {
            h.request_limit = limits;
            h.uplink_bytes_per_s = rate;
        });
    }

    async fn ack(&mut self, ids: &[u64]) -> Result<(), Stop> {
        self.outbox.ack(ids).await.map_err(Stop::Store)?;
        for id in ids {
            self.strikes.remove(id);
        }
        self.refusals.trusted = true;
        self.refusals.same = None;
        self.refusals.rounds = 0;
        if !self.refusals.held.is_empty() {
            tracing::info!(
                held = self.refusals.held.len(),
                "the platform accepts records again: the held records are sent again"
            );
            self.refusals.held.clear();
            health_mut(&self.health, |h| h.held = 0);
        }
        self.note_success(Stream::Records);
        Ok(())
    }

    /// Send a batch, splitting on `1501`/`1502` (and `2001` after its strikes) until each
    /// answer is about one record.
    async fn deliver(&mut self, batch: Vec<StoredRecord>) -> Result<(), Stop> {
        let mut stack = vec![batch];
        let mut accepted_any = false;
        while let Some(recs) = stack.pop() {
            let ids: Vec<u64> = recs.iter().map(|r| r.id).collect();
            let Sent { reply } = self.send(&recs).await?;
            let mut verdict = reply.verdict;
            if verdict == Verdict::Business {
                let mut least = u32::MAX;
                for id in &ids {
                    let s = self.strikes.entry(*id).or_insert(0);
                    *s += 1;
                    least = least.min(*s);
                }
                if self.strikes.len() > 100_000 {
                    self.strikes.clear();
                }
                if least < BUSINESS_STRIKES {
                    return Err(Stop::Transient(reply.code, reply.msg));
                }
                verdict = Verdict::Malformed;
            }
            match verdict {
                Verdict::Success => {
                    accepted_any = true;
                    self.ack(&ids).await?;
                    self.sizer.accepted();
                    self.publish_limits();
                    health_mut(&self.health, |h| h.delivered += ids.len() as u64);
                    // Per batch: debug (the minute summary says it at INFO).
                    tracing::debug!(
                        records = ids.len(),
                        first = ids[0],
                        pending = self.outbox.len(),
                        "records delivered"
                    );
                }
                Verdict::Exists if recs.len() > 1 => {
                    // Which records the platform has is unknown: one per request until one
                    // is new (see "Lost answers").
                    self.sizer.one_at_a_time();
                    self.publish_limits();
                    tracing::info!(
                        records = recs.len(),
                        "platform already has a record of this batch (1004): sending one record per request until one is new"
                    );
                    return Ok(());
                }
                Verdict::Exists => {
                    accepted_any = true;
                    self.ack(&ids).await?;
                    health_mut(&self.health, |h| h.delivered += 1);
                    tracing::info!(
                        id = ids[0],
                        "platform already has this record (1004): counted as delivered"
                    );
                }
                Verdict::Malformed if recs.len() > 1 => {
                    tracing::info!(code = %reply.code, records = recs.len(), "platform refused the batch; splitting it to find the record concerned");
                    let mut left = recs;
                    let right = left.split_off(left.len() / 2);
                    stack.push(right);
                    stack.push(left);
                }
                Verdict::Malformed => {
                    self.refused_alone(&recs[0], &reply, accepted_any).await?;
                }
                v => return Err(stop_for(v, &reply)),
            }
        }
        Ok(())
    }

    /// A record refused alone: a dead letter when the platform has shown it takes our
    /// requests, else held (see "Configuration or record").
    async fn refused_alone(
        &mut self,
        r: &StoredRecord,
        reply: &Reply,
        accepted_any: bool,
    ) -> Result<(), Stop> {
        let reason = format!("{} {}", reply.code, reply.msg);
        let same = match &mut self.refusals.same {
            Some((k, n)) if *k == reason => {
                *n += 1;
                *n
            }
            _ => {
                self.refusals.same = Some((reason.clone(), 1));
                1
            }
        };
        let confirmed = accepted_any || (self.refusals.trusted && same <= SAME_REFUSALS);
        if confirmed {
            self.outbox
                .dead_letter(r.id, &reason)
                .await
                .map_err(Stop::Store)?;
            self.strikes.remove(&r.id);
            self.refusals.held.remove(&r.id);
            health_mut(&self.health, |h| {
                h.dead_lettered += 1;
                h.held = self.refusals.held.len() as u64;
            });
            tracing::error!(id = r.id, plate = r.meta.car_no.as_deref().unwrap_or(""), node = %r.meta.node_name, code = %reply.code, msg = %reply.msg, "platform rejected a record; moved to the dead letters (lotlink dead list)");
            return Ok(());
        }
        self.refusals.held.insert(r.id);
        self.refusals.rounds += 1;
        let held = self.refusals.held.len() as u64;
        health_mut(&self.health, |h| h.held = held);
        let msg = format!(
            "every record sent is refused with the same answer ({reason}): records are kept, not dead-lettered; check data_encoding (\"auto\" finds it) and auth_case, and the records' values (e.g. nodeName) with the platform"
        );
        if self.refusals.rounds >= CONFIG_ROUNDS {
            Err(Stop::Fault(reply.code.clone(), msg))
        } else {
            tracing::warn!(id = r.id, code = %reply.code, msg = %reply.msg, held, "record refused while no record is being accepted: kept pending (not dead-lettered) until the platform accepts one");
            Err(Stop::Transient(reply.code.clone(), msg))
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn call_stop(e: &CallError) -> Stop {
    let code = e.kind().to_string();
    if e.wants_long_backoff() {
        Stop::Fault(code, e.to_string())
    } else {
        Stop::Transient(code, e.to_string())
    }
}

fn stop_for(v: Verdict, reply: &Reply) -> Stop {
    match v {
        Verdict::Fault | Verdict::AuthFailed => Stop::Fault(reply.code.clone(), reply.msg.clone()),
        _ => Stop::Transient(reply.code.clone(), reply.msg.clone()),
    }
}

/// Send a heartbeat every `interval` until shutdown. Not queued: a missed beat is not re-sent.
pub(crate) async fn heartbeat_loop(
    client: Arc<Client>,
    interval: Duration,
    health: Health,
    log: SharedPlatformLog,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let r = tokio::select! {
            () = shutdown.cancelled() => return,
            r = client.call(Cmd::Heartbeat, None) => r,
        };
        match r {
            Ok(reply) if reply.is_authenticated() => {
                let now = crate::clock::Clock::local_ms();
                let ok = reply.verdict == Verdict::Success;
                health_mut(&health, |h| {
                    h.last_reached_ms = Some(now);
                    if ok {
                        h.heartbeats_ok += 1;
                        h.last_success_ms = Some(now);
                    }
                    if reply.is_command_code() {
                        h.command_codes += 1;
                    }
                    h.set_fault(Stream::Heartbeat, None);
                });
                plog_mut(&log, |l| l.accepted(Stream::Heartbeat));
                if ok {
                    tracing::debug!(offset_ms = client.clock().offset_ms(), "heartbeat ok");
                } else {
                    // The platform took our signature: reachable. A command-interface code
                    // (1005 "no newer command", …) is not a failure.
                    tracing::debug!(code = %reply.code, msg = %reply.msg, data = %reply.data, "heartbeat answered with a non-success code: the platform is reachable");
                }
            }
            Ok(reply) => {
                health_mut(&health, |h| {
                    h.last_error = Some((reply.code.clone(), reply.msg.clone()));
                    h.set_fault(
                        Stream::Heartbeat,
                        Some(format!("heartbeat: {}: {}", reply.code, reply.msg)),
                    );
                });
                tracing::debug!(code = %reply.code, msg = %reply.msg, "heartbeat refused");
                plog_mut(&log, |l| {
                    l.refused(
                        Stream::Heartbeat,
                        true,
                        &format_args!("{}: {}", reply.code, reply.msg),
                        None,
                    );
                });
            }
            Err(e) => {
                health_mut(&health, |h| {
                    h.last_error = Some((e.kind().to_string(), e.to_string()));
                });
                tracing::debug!(error = %e, "heartbeat failed");
                plog_mut(&log, |l| {
                    l.unreachable(&format_args!("heartbeat: {e}"), None);
                });
            }
        }
    }
}

/// Log helper for the CLI: what a reply or error means.
pub(crate) fn describe(r: &Result<Reply, CallError>) -> String {
    match r {
        Ok(rep) => format!("code {} ({:?}) msg {:?}", rep.code, rep.verdict, rep.msg),
        Err(e) => format!("no answer: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_full_jitter() {
        let mut b = Backoff::new(Duration::from_secs(1), BACKOFF_CAP).with_full_jitter();
        let mut max_seen = Duration::ZERO;
        for _ in 0..200 {
            let d = b.next_delay();
            assert!(d <= BACKOFF_CAP);
            max_seen = max_seen.max(d);
        }
        assert!(
            max_seen > Duration::from_secs(60),
            "jitter reaches high values: {max_seen:?}"
        );
        b.reset();
        for _ in 0..50 {
            let mut fresh = Backoff::new(Duration::from_secs(1), BACKOFF_CAP).with_full_jitter();
            assert!(fresh.next_delay() <= Duration::from_secs(1));
        }
    }
}
