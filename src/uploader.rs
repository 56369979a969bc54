//! The uploader: heartbeats on schedule, the coalesced space report, and the outbox's
//! `carInOut` records in batches, classified by the platform's answer.
//!
//! - Heartbeats run on their own timer, never queued: a missed beat is not re-sent.
//! - The space report is sent once after start, after every reconnect (the first success
//!   after a failure), and whenever it changes; only the newest value is ever sent.
//! - Records go oldest first, as soon as any are pending, in requests of at most
//!   `max_batch` records and `max_body` bytes.
//! - Answers: success → delete; `1004` alone → delete (an earlier try got through);
//!   `1004` or `1501`/`1502` on a batch → split into halves and re-send until the record
//!   concerned is alone; `1501`/`1502` alone → dead letter; `2001` → transient three times,
//!   then like `1502`; `1002` → the client re-syncs and retries once; everything else →
//!   back off (full jitter, 1 s → 5 min; 15 min for configuration faults) and try again.
//!   Nothing leaves the outbox for any other reason.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::outbox::{Outbox, OutboxError, StoredRecord};
use crate::protocol::{CallError, Client, Cmd, Reply, Verdict};

/// Back-off bounds.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Cap for transient faults.
pub const BACKOFF_CAP: Duration = Duration::from_secs(300);
/// Cap for configuration/auth faults (1000, 1002, …).
pub const BACKOFF_CAP_FAULT: Duration = Duration::from_secs(900);
/// `2001` answers for the same request before it is treated as `1502`.
pub const BUSINESS_STRIKES: u32 = 3;

/// How often the data loop shows it is alive while it waits (for the systemd watchdog).
pub const LIVENESS_TICK: Duration = Duration::from_secs(5);

/// The data loop's last sign of life, in [`liveness_now`] ms (0: none yet): bumped on every
/// loop turn, every request and every [`LIVENESS_TICK`] while waiting. The watchdog pings
/// systemd only while it is fresh, so a wedged uploader gets the daemon restarted.
pub type Liveness = Arc<std::sync::atomic::AtomicI64>;

/// Milliseconds on a monotonic clock (since the first call, plus 1): not the wall clock, which
/// NTP steps forward at boot on a Pi without a real-time clock, and that step must not look
/// like a wedged uploader.
pub fn liveness_now() -> i64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    i64::try_from(start.elapsed().as_millis()).unwrap_or(i64::MAX - 1) + 1
}

fn bump(l: &Liveness) {
    l.store(liveness_now(), std::sync::atomic::Ordering::Relaxed);
}

/// Exponential back-off with full jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    failures: u32,
    base: Duration,
}

impl Backoff {
    /// Fresh, with the given base.
    pub fn new(base: Duration) -> Self {
        Backoff { failures: 0, base }
    }
    /// The next delay: uniform in `0..=min(cap, base·2^n)`.
    pub fn next(&mut self, cap: Duration) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.failures.min(20));
        self.failures = self.failures.saturating_add(1);
        let top = exp.min(cap);
        let ms = u64::try_from(top.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::thread_rng().gen_range(0..=ms))
    }
    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
    /// Back to the start after a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// What the platform side looks like, for status and health.
#[derive(Debug, Clone, Default)]
pub struct PlatformHealth {
    /// Unix ms of the last answer that was a success.
    pub last_success_ms: Option<i64>,
    /// Last error: code (platform code or transport kind) and message.
    pub last_error: Option<(String, String)>,
    /// A fault an operator must fix (1000, persistent 1002, …), cleared by a success.
    pub fault: Option<String>,
    /// Records delivered since start.
    pub delivered: u64,
    /// Records dead-lettered since start.
    pub dead_lettered: u64,
    /// Heartbeats answered with success since start.
    pub heartbeats_ok: u64,
}

/// Shared handle on [`PlatformHealth`].
pub type Health = Arc<Mutex<PlatformHealth>>;

fn health_mut<R>(h: &Health, f: impl FnOnce(&mut PlatformHealth) -> R) -> R {
    let mut g = h.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    f(&mut g)
}

/// Upload settings.
#[derive(Debug, Clone)]
pub struct UploadSettings {
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

/// Why a round of uploading stopped.
#[derive(Debug)]
enum Stop {
    /// Transient: back off with the normal cap.
    Transient(String, String),
    /// A fault an operator must fix: long back-off, health error.
    Fault(String, String),
    /// The store failed.
    Store(OutboxError),
}

/// The uploader.
pub struct Uploader {
    client: Arc<Client>,
    outbox: Outbox,
    settings: UploadSettings,
    health: Health,
    strikes: Option<(Vec<u64>, u32)>,
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

impl Uploader {
    /// A new uploader.
    pub fn new(
        client: Arc<Client>,
        outbox: Outbox,
        settings: UploadSettings,
        health: Health,
    ) -> Self {
        Uploader {
            client,
            outbox,
            settings,
            health,
            strikes: None,
            liveness: Liveness::default(),
        }
    }

    /// Report signs of life to this handle (see [`Liveness`]).
    #[must_use]
    pub fn with_liveness(mut self, liveness: Liveness) -> Self {
        self.liveness = liveness;
        self
    }

    fn note_success(&self) {
        health_mut(&self.health, |h| {
            h.last_success_ms = Some(crate::protocol::Clock::local_ms());
            h.fault = None;
        });
    }

    fn note_error(&self, code: &str, msg: &str, fault: bool) {
        health_mut(&self.health, |h| {
            h.last_error = Some((code.to_string(), msg.to_string()));
            if fault {
                h.fault = Some(format!("{code}: {msg}"));
            }
        });
    }

    /// Run heartbeats and uploads until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let hb = heartbeat_loop(
            self.client.clone(),
            self.settings.heartbeat_interval,
            self.health.clone(),
            shutdown.clone(),
        );
        let up = self.data_loop(shutdown);
        tokio::join!(hb, up);
    }

    async fn data_loop(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(self.settings.backoff_base);
        let mut space_due = true;
        loop {
            bump(&self.liveness);
            if shutdown.is_cancelled() {
                return;
            }
            let round = self.round(&mut space_due).await;
            let delay = match round {
                Ok(true) => {
                    if backoff.failures() > 0 {
                        tracing::info!(failures = backoff.failures(), "platform reachable again");
                        space_due = true;
                    }
                    backoff.reset();
                    continue;
                }
                Ok(false) => {
                    if backoff.failures() > 0 {
                        space_due = true;
                        backoff.reset();
                        continue;
                    }
                    // Nothing to do: wait for work (showing signs of life meanwhile).
                    let changed = self.outbox.changed();
                    tokio::pin!(changed);
                    loop {
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            () = &mut changed => break,
                            () = tokio::time::sleep(LIVENESS_TICK) => bump(&self.liveness),
                        }
                    }
                    continue;
                }
                Err(Stop::Transient(code, msg)) => {
                    self.note_error(&code, &msg, false);
                    let d = backoff.next(self.settings.backoff_cap);
                    tracing::warn!(code = %code, error = %msg, retry_in_ms = d.as_millis() as u64, pending = self.outbox.len(), "upload failed; will retry");
                    d
                }
                Err(Stop::Fault(code, msg)) => {
                    self.note_error(&code, &msg, true);
                    let d = backoff.next(self.settings.backoff_cap_fault);
                    tracing::error!(code = %code, error = %msg, retry_in_ms = d.as_millis() as u64, pending = self.outbox.len(), "platform refuses the gateway's requests: an operator must fix the configuration; data is kept");
                    d
                }
                Err(Stop::Store(e)) => {
                    tracing::error!(error = %e, "outbox read failed");
                    backoff.next(self.settings.backoff_cap)
                }
            };
            let until = tokio::time::Instant::now() + delay;
            loop {
                bump(&self.liveness);
                let step = until.saturating_duration_since(tokio::time::Instant::now());
                if step.is_zero() {
                    break;
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(step.min(LIVENESS_TICK)) => {}
                }
            }
        }
    }

    /// One round: the space report if due, then one batch. `Ok(true)` when something was
    /// sent successfully, `Ok(false)` when there was nothing to send.
    async fn round(&mut self, space_due: &mut bool) -> Result<bool, Stop> {
        let mut sent = false;
        if let Some(rep) = self
            .outbox
            .settings()
            .space_to_send(*space_due)
            .map_err(Stop::Store)?
        {
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
                    *space_due = false;
                    self.note_success();
                    tracing::info!(
                        total = rep.total,
                        surplus = rep.surplus,
                        "space report delivered"
                    );
                    sent = true;
                }
                Verdict::Malformed => {
                    // The platform refuses these figures; drop this value (the next change
                    // produces a new one) rather than block records behind it.
                    tracing::error!(code = %reply.code, msg = %reply.msg, total = rep.total, surplus = rep.surplus, "platform refused the space report");
                    self.outbox
                        .settings()
                        .space_sent(rep.seq)
                        .map_err(Stop::Store)?;
                    *space_due = false;
                }
                v => return Err(stop_for(v, &reply)),
            }
        }
        let batch = self
            .outbox
            .peek(self.settings.max_batch, self.settings.max_body)
            .map_err(Stop::Store)?;
        if batch.is_empty() {
            return Ok(sent);
        }
        self.deliver(batch).await?;
        Ok(true)
    }

    async fn call(&self, cmd: Cmd, data: &str) -> Result<Reply, Stop> {
        bump(&self.liveness);
        let r = self.client.call(cmd, Some(data)).await;
        bump(&self.liveness);
        r.map_err(|e| {
            let code = e.kind().to_string();
            if e.wants_long_backoff() {
                Stop::Fault(code, e.to_string())
            } else {
                Stop::Transient(code, e.to_string())
            }
        })
    }

    /// Send a batch, splitting on `1004`/`1501`/`1502` until each answer is about one record.
    async fn deliver(&mut self, batch: Vec<StoredRecord>) -> Result<(), Stop> {
        let mut stack = vec![batch];
        while let Some(recs) = stack.pop() {
            let ids: Vec<u64> = recs.iter().map(|r| r.id).collect();
            let data = records_json(&recs);
            let reply = self.call(Cmd::CarInOut, &data).await?;
            let mut verdict = reply.verdict;
            if verdict == Verdict::Business {
                let n = match &mut self.strikes {
                    Some((s, n)) if *s == ids => {
                        *n += 1;
                        *n
                    }
                    _ => {
                        self.strikes = Some((ids.clone(), 1));
                        1
                    }
                };
                if n < BUSINESS_STRIKES {
                    return Err(Stop::Transient(reply.code, reply.msg));
                }
                verdict = Verdict::Malformed;
            }
            match verdict {
                Verdict::Success => {
                    self.outbox.ack(&ids).await.map_err(Stop::Store)?;
                    self.note_success();
                    health_mut(&self.health, |h| h.delivered += ids.len() as u64);
                    tracing::info!(
                        records = ids.len(),
                        first = ids[0],
                        pending = self.outbox.len(),
                        "records delivered"
                    );
                }
                Verdict::Exists | Verdict::Malformed if recs.len() > 1 => {
                    tracing::info!(code = %reply.code, records = recs.len(), "platform refused the batch; splitting it to find the record concerned");
                    let mut left = recs;
                    let right = left.split_off(left.len() / 2);
                    stack.push(right);
                    stack.push(left);
                }
                Verdict::Exists => {
                    self.outbox.ack(&ids).await.map_err(Stop::Store)?;
                    self.note_success();
                    health_mut(&self.health, |h| h.delivered += 1);
                    tracing::info!(
                        id = ids[0],
                        "platform already has this record (1004): counted as delivered"
                    );
                }
                Verdict::Malformed => {
                    let r = &recs[0];
                    let reason = format!("{} {}", reply.code, reply.msg);
                    self.outbox
                        .dead_letter(r.id, &reason)
                        .await
                        .map_err(Stop::Store)?;
                    health_mut(&self.health, |h| h.dead_lettered += 1);
                    tracing::error!(id = r.id, plate = r.meta.car_no.as_deref().unwrap_or(""), node = %r.meta.node_name, code = %reply.code, msg = %reply.msg, "platform rejected a record; moved to the dead letters (lotlink dead list)");
                }
                v => return Err(stop_for(v, &reply)),
            }
            if matches!(verdict, Verdict::Success | Verdict::Exists) {
                self.strikes = None;
            }
        }
        Ok(())
    }
}

fn stop_for(v: Verdict, reply: &Reply) -> Stop {
    match v {
        Verdict::Fault | Verdict::AuthFailed => Stop::Fault(reply.code.clone(), reply.msg.clone()),
        _ => Stop::Transient(reply.code.clone(), reply.msg.clone()),
    }
}

/// Send a heartbeat every `interval` until shutdown. Not queued: a missed beat is not re-sent.
pub async fn heartbeat_loop(
    client: Arc<Client>,
    interval: Duration,
    health: Health,
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
            Ok(reply) if reply.verdict == Verdict::Success => {
                health_mut(&health, |h| {
                    h.heartbeats_ok += 1;
                    h.last_success_ms = Some(crate::protocol::Clock::local_ms());
                    h.fault = None;
                });
                tracing::debug!(offset_ms = client.clock().offset_ms(), "heartbeat ok");
            }
            Ok(reply) => {
                let fault = matches!(reply.verdict, Verdict::Fault | Verdict::AuthFailed);
                health_mut(&health, |h| {
                    h.last_error = Some((reply.code.clone(), reply.msg.clone()));
                    if fault {
                        h.fault = Some(format!("{}: {}", reply.code, reply.msg));
                    }
                });
                tracing::warn!(code = %reply.code, msg = %reply.msg, "heartbeat refused");
            }
            Err(e) => {
                health_mut(&health, |h| {
                    h.last_error = Some((e.kind().to_string(), e.to_string()));
                });
                tracing::warn!(error = %e, "heartbeat failed");
            }
        }
    }
}

/// Log helper for the CLI: what a reply or error means.
pub fn describe(r: &Result<Reply, CallError>) -> String {
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
        let mut b = Backoff::new(Duration::from_secs(1));
        let mut max_seen = Duration::ZERO;
        for _ in 0..200 {
            let d = b.next(BACKOFF_CAP);
            assert!(d <= BACKOFF_CAP);
            max_seen = max_seen.max(d);
        }
        assert!(
            max_seen > Duration::from_secs(60),
            "jitter reaches high values: {max_seen:?}"
        );
        b.reset();
        for _ in 0..50 {
            let mut fresh = Backoff::new(Duration::from_secs(1));
            assert!(fresh.next(BACKOFF_CAP) <= Duration::from_secs(1));
        }
    }
}
