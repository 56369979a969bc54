//! MQTT cameras and camera IO loops over the site broker (rumqttc).
//!
//! One [`MqttHub`] owns the broker connection for every MQTT camera and loop. It has two
//! halves joined by a bounded channel of [`Incoming`] messages:
//!
//! - the **connection** task polls rumqttc's event loop, (re)subscribes after every
//!   connection, and forwards each PUBLISH. rumqttc reconnects instantly on its own, so the
//!   task adds a capped back-off (0.5 s doubling to 30 s) after every error ([`Pacer`]); it
//!   starts over only after a session that stayed up [`STABLE_SESSION`], so a broker that
//!   accepts the connection and then drops it is not hammered.
//!
//! A message bigger than `max_packet` makes rumqttc drop the connection before the message
//! is read, and the broker (persistent session, `QoS` 1) sends it again on every reconnect:
//! one such message would stop a camera for good. So after that error the next connection
//! accepts packets up to that size (at most [`OVERSIZE_CEILING`]) once: the message arrives,
//! is acknowledged unread, counted as bad input and named in the log (topic, size), and the
//! limit goes back to `max_packet`. Operators should also set the broker's own limit
//! (mosquitto `max_packet_size`; see the README), so such a message never reaches a session.
//! - the **router** ([`Router`]) parses each message (Vzenith or lotlink JSON), turns it into
//!   an [`Event`], submits it and only then acknowledges it (manual acks, `QoS` 1, persistent
//!   session under a stable client id): a gateway that dies between receipt and disk gets
//!   the message again from the broker, and the outbox dedupes it by source key. The router
//!   is independent of rumqttc: tests feed it messages and watch the acks.
//!
//! Vzenith sends a `quick_ivs_result` (no image) and then the `ivs_result` (with images) for
//! the same pass. The router holds the quick result (un-acked) for [`MqttHub::coalesce`]: if
//! the full result comes, one record is stored with the image and both are acked; if not,
//! the quick result is stored alone (with a snapshot when configured) and a late full result
//! for the same plate is acked without a second record.
//!
//! Full-queue policy: memory is bounded by lotlink, not by the broker. A broker's in-flight
//! window does not bound it: measured with mosquitto 2.0.11 (`max_inflight_messages 20`, the
//! same with an MQTT 5 receive maximum), every PUBACK releases a whole window of queued
//! messages, so a consumer that acknowledges as it stores is sent its whole backlog. So every
//! PUBLISH the connection task forwards is counted "in hand" (a [`Held`] token carried by its
//! ack) until its event is stored and the message acknowledged. At [`MAX_IN_HAND`] messages
//! or [`MAX_IN_HAND_BYTES`] payload bytes in hand the connection task stops polling rumqttc,
//! so nothing more is read from the socket: TCP flow control holds the rest in the broker
//! (and the kernel's socket buffers), and it resumes as soon as one message is released.
//! rumqttc reads up to [`READ_BATCH`] packets per network read, so the hand can go over by
//! at most `READ_BATCH - 1` messages. Images wait in hand as the bytes received (ingest
//! decodes at most a CPU-count of them at once). The count is shown as `in_hand` /
//! `in_hand_peak` in the hub's status.
//!
//! A pause must not cost the connection: rumqttc sends pings and acknowledgements only while
//! polled, and fails a connection whose last PINGREQ is unanswered when its next one is due.
//! An answer queued behind megabytes of messages we have not read yet is not a missing
//! answer, so a message read after the ping, or the end of a pause, counts as the answer
//! (without this, measured: "Last pingreq isn't acked", the broker re-sent everything
//! un-acked and the gateway re-processed the same images in a loop). A pause is only as long
//! as storing one message takes, unless the outbox refuses events (disk quota): then the
//! broker may drop the silent connection after 1.5 keep-alives; it is re-made with the
//! session kept, the broker re-sends what is un-acked, the outbox dedupes it, and every
//! message in hand is still acknowledged once stored.
//!
//! Acknowledgements never wait on the connection task (which may be paused on a full hand
//! while the router waits to send an ack: measured, a deadlock in a storm of garbage). A
//! message's count is released once its event is stored, and its ack goes into rumqttc's
//! request channel; an ack that does not fit waits in a small task of its own (the packet
//! id and topic, never the payload) until the connection task drains the channel. rumqttc
//! writes one request per poll but reads up to ten messages, so in a storm of messages that
//! are handled at once (garbage, keep-alives, duplicates) acks lag reads; they are at most
//! as many as the messages the broker sent ahead. `QoS` 0 messages are counted like the
//! others (they have no ack). When the
//! outbox refuses an event the router retries it with back-off and acks nothing meanwhile,
//! so the hand fills and reading stops.
//!
//! The router submits every message it holds at once (each a task of its own that acks
//! after its event is durable), so the outbox writer commits them as one group instead of
//! one `fsync` per message; the records' order follows the outbox, not the broker. It sets
//! a timer only while something is due (a quick result waiting for its full result, a
//! talking Vzenith camera's silence deadline); idle, it waits for messages alone.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::outage::{Backoff, Outage};

use crate::jsoncam::{self, JsonTime};
use crate::loops::{is_closed, EdgeDetector};
use crate::plate::{normalise, CameraRules, Reading};
use crate::snapshot::{fill_image, Snapshot};
use crate::vzenith::{self, VzMessage, VzPlate};
use crate::{
    should_log, Accepted, CancellationToken, Direction, Driver, DriverError, DriverFuture,
    DriverStatus, Event, EventSink, PlateEvent, SinkError,
};

pub mod config;

/// Messages in hand (read, not yet stored and acked) at which reading from the broker stops
/// (see the module docs).
pub const MAX_IN_HAND: usize = 32;
/// Payload bytes in hand at which reading from the broker stops.
pub const MAX_IN_HAND_BYTES: usize = 8 * 1024 * 1024;
/// Packets rumqttc reads per network read (its fixed `max_readb_count`): the hand's overshoot.
pub const READ_BATCH: usize = 10;
/// A Vzenith camera that sent nothing for this long is shown as disconnected.
pub const CAMERA_SILENCE: Duration = Duration::from_secs(30);
/// A broker session that stayed up this long counts as up: the reconnect back-off starts over.
pub const STABLE_SESSION: Duration = Duration::from_secs(30);
/// Largest packet the gateway agrees to receive once in order to consume a message over
/// `max_packet` (see the module docs). A bigger one is logged as an error for the operator.
pub const OVERSIZE_CEILING: usize = 64 << 20;
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Reconnect pacing and oversized-message handling of one broker connection.
#[derive(Debug)]
pub struct Pacer {
    max_packet: usize,
    backoff: Backoff,
    up_since: Option<Instant>,
    raised: bool,
}

/// The size of the packet that made rumqttc drop the connection, if that was the reason.
pub fn oversize(err: &rumqttc::ConnectionError) -> Option<usize> {
    match err {
        rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::Error::PayloadSizeLimitExceeded(n),
        )) => Some(*n),
        _ => None,
    }
}

impl Pacer {
    /// For a connection whose packets may be at most `max_packet` bytes both ways (as
    /// [`options`] sets them).
    pub fn new(max_packet: usize) -> Self {
        Pacer {
            max_packet,
            backoff: Backoff::new(BACKOFF_START, BACKOFF_MAX),
            up_since: None,
            raised: false,
        }
    }

    /// The broker accepted the connection (`ConnAck`).
    pub fn connected(&mut self) {
        self.up_since = Some(Instant::now());
    }

    /// Whether a received payload is over `max_packet`: acknowledge it, count it, drop it.
    pub fn oversized(&self, payload_len: usize) -> bool {
        payload_len > self.max_packet
    }

    /// An oversized message was consumed: the next connection uses `max_packet` again.
    pub fn consumed(&mut self, opts: &mut rumqttc::MqttOptions) {
        if self.raised {
            self.raised = false;
            opts.set_max_packet_size(self.max_packet, self.max_packet);
        }
    }

    /// The connection failed with `err`: how long to wait before the next try. A packet
    /// over the limit raises the limit for the next connection (see the module docs).
    pub fn failed(
        &mut self,
        err: &rumqttc::ConnectionError,
        opts: &mut rumqttc::MqttOptions,
        who: &str,
    ) -> Duration {
        if self
            .up_since
            .take()
            .is_some_and(|t| t.elapsed() >= STABLE_SESSION)
        {
            self.backoff.reset();
        }
        if let Some(size) = oversize(err) {
            if size <= OVERSIZE_CEILING {
                tracing::warn!(who, size, max_packet = self.max_packet, "the broker sent a message over max_packet; reconnecting once with room for it, to acknowledge and drop it (set the broker's own limit too)");
                opts.set_max_packet_size(size.max(self.max_packet), self.max_packet);
                self.raised = true;
            } else {
                tracing::error!(who, size, ceiling = OVERSIZE_CEILING, "the broker keeps sending a message too big to receive; set the broker's max_packet_size (mosquitto) and clear the message from the session");
            }
        }
        self.backoff.next_delay()
    }
}

/// How long a late full result is recognised as the pass already reported from its quick result.
const LATE_FULL_WINDOW: Duration = Duration::from_secs(60);

/// Errors of the MQTT driver's set-up.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// The TLS set-up failed (CA file unreadable or invalid).
    #[error("mqtt TLS: {0}")]
    Tls(String),
}

/// How to reach the broker.
#[derive(Clone)]
pub struct MqttSettings {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// TLS (`mqtts://`), with an optional CA file (else the system roots).
    pub tls: Option<Option<PathBuf>>,
    /// Stable client id (the broker keeps the session under it).
    pub client_id: String,
    /// User name.
    pub username: Option<String>,
    /// Password; never printed.
    pub password: Option<String>,
    /// Largest packet, both ways.
    pub max_packet: usize,
    /// Keep-alive.
    pub keep_alive: Duration,
}

impl std::fmt::Debug for MqttSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("max_packet", &self.max_packet)
            .field("keep_alive", &self.keep_alive)
            .finish()
    }
}

/// What an MQTT camera speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CameraFormat {
    /// Vzenith topics; `sn` = only this camera (None = any Vzenith camera not claimed by sn).
    Vzenith { sn: Option<String> },
    /// lotlink JSON on one topic.
    Json { topic: String },
}

/// One MQTT camera (a lane).
#[derive(Debug, Clone)]
pub struct MqttCamera {
    /// Lane name (`nodeName`).
    pub name: String,
    /// What a pass means.
    pub direction: Direction,
    /// Message format.
    pub format: CameraFormat,
    /// Snapshot for events without an image.
    pub snapshot: Option<Snapshot>,
    /// The camera's `styles` table and clock tolerance.
    pub rules: CameraRules,
    /// Status shown per camera.
    pub status: DriverStatus,
}

/// A loop wired to a camera's IO input (Vzenith `gpio_in`).
#[derive(Debug, Clone)]
pub struct MqttLoop {
    /// Loop name.
    pub name: String,
    /// Entry or exit lane.
    pub lane: Direction,
    /// Camera serial number (None = any camera).
    pub sn: Option<String>,
    /// IO input index (`TriggerResult.source`).
    pub input: u32,
    /// The input reads 0 while the loop is occupied.
    pub active_low: bool,
    /// Shorter closures are chatter.
    pub min_hold: Duration,
    /// Status shown per loop.
    pub status: DriverStatus,
}

/// Acknowledges one message to its source.
pub trait Acker: Send {
    /// Send the acknowledgement.
    fn ack(self: Box<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// One message from the broker (or a test), with the means to acknowledge it.
pub struct Incoming {
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// Acknowledgement, sent only after the event is durable.
    pub ack: Box<dyn Acker>,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("topic", &self.topic)
            .field("payload_bytes", &self.payload.len())
            .finish_non_exhaustive()
    }
}

/// What the router holds: messages read from the broker whose event is not yet stored and
/// acknowledged, and their payload bytes (see the module docs).
#[derive(Debug)]
pub struct Hand {
    messages: AtomicUsize,
    bytes: AtomicUsize,
    max_messages: usize,
    max_bytes: usize,
    released: tokio::sync::Notify,
    status: DriverStatus,
}

impl Hand {
    /// An empty hand that counts as full at `max_messages` or `max_bytes`; the count is
    /// shown in `status`.
    pub fn new(max_messages: usize, max_bytes: usize, status: DriverStatus) -> Arc<Hand> {
        Arc::new(Hand {
            messages: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            max_messages,
            max_bytes,
            released: tokio::sync::Notify::new(),
            status,
        })
    }

    /// Count a message of `bytes` payload bytes as held until the token is dropped.
    pub fn take(self: &Arc<Self>, bytes: usize) -> Held {
        let n = self.messages.fetch_add(1, Ordering::AcqRel) + 1;
        self.bytes.fetch_add(bytes, Ordering::AcqRel);
        self.status.set_in_hand(n as u64);
        Held {
            hand: self.clone(),
            bytes,
        }
    }

    /// Messages in hand.
    pub fn messages(&self) -> usize {
        self.messages.load(Ordering::Acquire)
    }

    /// At or above a limit: read nothing more.
    pub fn full(&self) -> bool {
        self.messages.load(Ordering::Acquire) >= self.max_messages
            || self.bytes.load(Ordering::Acquire) >= self.max_bytes
    }

    /// Wait until the hand is below both limits.
    pub async fn room(&self) {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if !self.full() {
                return;
            }
            released.await;
        }
    }
}

/// One message counted in a [`Hand`]; dropping it releases the count.
#[derive(Debug)]
pub struct Held {
    hand: Arc<Hand>,
    bytes: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        let n = self.hand.messages.fetch_sub(1, Ordering::AcqRel) - 1;
        self.hand.bytes.fetch_sub(self.bytes, Ordering::AcqRel);
        self.hand.status.set_in_hand(n as u64);
        self.hand.released.notify_waiters();
    }
}

struct RumqttAck {
    client: rumqttc::AsyncClient,
    /// The PUBLISH without its payload (an ack needs only the packet id).
    publish: rumqttc::Publish,
    held: Held,
}

impl Acker for RumqttAck {
    fn ack(self: Box<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let RumqttAck {
            client,
            publish,
            held,
        } = *self;
        // Stored: room for the next message.
        drop(held);
        // Never wait on the connection task here: it may be paused on a full hand, waiting
        // for this router to take the next message (module docs).
        if client.try_ack(&publish).is_err() {
            tokio::spawn(async move {
                if let Err(e) = client.ack(&publish).await {
                    // The connection is gone: the broker re-delivers, the outbox dedupes.
                    tracing::debug!(error = %e, "MQTT ack not sent");
                }
            });
        }
        Box::pin(async {})
    }
}

/// The topic filters a set of cameras and loops needs.
pub fn filters(cameras: &[MqttCamera], loops: &[MqttLoop]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut vz_sns: Vec<Option<&str>> = Vec::new();
    for c in cameras {
        match &c.format {
            CameraFormat::Vzenith { sn } => vz_sns.push(sn.as_deref()),
            CameraFormat::Json { topic } => out.push(topic.clone()),
        }
    }
    vz_sns.extend(loops.iter().map(|l| l.sn.as_deref()));
    if vz_sns.iter().any(Option::is_none) {
        out.extend(vzenith::subscriptions(None));
    } else {
        for sn in vz_sns.into_iter().flatten() {
            out.extend(vzenith::subscriptions(Some(sn)));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// A quick result waiting for its full result.
struct Pending {
    camera: usize,
    plate: VzPlate,
    acks: Vec<Box<dyn Acker>>,
    deadline: Instant,
}

/// Turns messages into events, submits them, acks them. Independent of the MQTT client.
pub struct Router {
    cameras: Vec<MqttCamera>,
    loops: Vec<MqttLoop>,
    edges: Vec<EdgeDetector>,
    tz: chrono_tz::Tz,
    coalesce: Duration,
    pending: HashMap<String, Pending>,
    /// (sn, plate, when) of passes reported from a quick result alone.
    reported_quick: VecDeque<(String, Option<String>, Instant)>,
    last_seen: Vec<Option<Instant>>,
    /// Bad inputs that matched no camera.
    unclaimed: DriverStatus,
    /// Submissions in progress, each acking its messages once its event is durable.
    jobs: FuturesUnordered<Job>,
}

/// One submission in progress (see [`Router::next_done`]).
type Job = Pin<Box<dyn Future<Output = Outcome> + Send>>;

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("cameras", &self.cameras.len())
            .field("loops", &self.loops.len())
            .field("pending", &self.pending.len())
            .field("submitting", &self.jobs.len())
            .finish_non_exhaustive()
    }
}

/// How a submission ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stored (or refused as invalid) and acknowledged.
    Done,
    /// The gateway is shutting down: not acknowledged (the broker keeps it).
    Shutdown,
}

impl Router {
    /// A router for these cameras and loops; local times are in `tz`; quick results wait
    /// `coalesce` for their full result. `hub` collects bad input that matched no camera.
    pub fn new(
        cameras: Vec<MqttCamera>,
        loops: Vec<MqttLoop>,
        tz: chrono_tz::Tz,
        coalesce: Duration,
        hub: DriverStatus,
    ) -> Router {
        let edges = loops
            .iter()
            .map(|l| EdgeDetector::new(l.min_hold))
            .collect();
        let last_seen = vec![None; cameras.len()];
        Router {
            cameras,
            loops,
            edges,
            tz,
            coalesce,
            pending: HashMap::new(),
            reported_quick: VecDeque::new(),
            last_seen,
            unclaimed: hub,
            jobs: FuturesUnordered::new(),
        }
    }

    fn vz_camera(&self, sn: &str) -> Option<usize> {
        let exact = self
            .cameras
            .iter()
            .position(|c| matches!(&c.format, CameraFormat::Vzenith { sn: Some(s) } if s == sn));
        exact.or_else(|| {
            self.cameras
                .iter()
                .position(|c| matches!(&c.format, CameraFormat::Vzenith { sn: None }))
        })
    }

    fn bad(status: &DriverStatus, topic: &str, what: &str) {
        let n = status.bad_input(what);
        if should_log(n) {
            tracing::warn!(
                driver = status.name(),
                topic,
                bad_inputs = n,
                problem = what,
                "bad MQTT message ignored"
            );
        }
    }

    /// Handle one message: parse it and start its submission (see [`Router::next_done`]);
    /// a message that makes no event is acknowledged at once.
    pub async fn handle(&mut self, msg: Incoming, sink: &EventSink, shutdown: &CancellationToken) {
        let Incoming {
            topic,
            payload,
            ack,
        } = msg;
        if let Some(i) = self
            .cameras
            .iter()
            .position(|c| matches!(&c.format, CameraFormat::Json { topic: t } if *t == topic))
        {
            // The payload is dropped once parsed: the event holds the image bytes alone.
            return self
                .handle_json(i, &topic, payload, ack, sink, shutdown)
                .await;
        }
        let parsed = vzenith::parse_message(&topic, &payload, true);
        drop(payload);
        match parsed {
            Ok(VzMessage::Plate(p)) => self.handle_vz_plate(p, ack, sink, shutdown).await,
            Ok(VzMessage::Gpio { sn, source, value }) => {
                self.handle_gpio(&sn, source, value, ack, sink, shutdown);
            }
            Ok(VzMessage::KeepAlive { sn } | VzMessage::Other { sn, .. }) => {
                self.seen(&sn);
                ack.ack().await;
            }
            Err(e) => {
                let status = vzenith::parse_topic(&topic)
                    .and_then(|(sn, _)| self.vz_camera(&sn))
                    .map_or(&self.unclaimed, |i| &self.cameras[i].status);
                Self::bad(status, &topic, &e.to_string());
                // Never valid: acking stops the broker from re-sending it forever.
                ack.ack().await;
            }
        }
    }

    /// Wait for the next submission to end; `None` when none is in progress.
    pub async fn next_done(&mut self) -> Option<Outcome> {
        self.jobs.next().await
    }

    /// Submissions in progress.
    pub fn submitting(&self) -> usize {
        self.jobs.len()
    }

    fn seen(&mut self, sn: &str) {
        if let Some(i) = self.vz_camera(sn) {
            self.last_seen[i] = Some(Instant::now());
            if self.cameras[i].status.set_connected(true) {
                tracing::info!(camera = %self.cameras[i].name, sn, "camera is talking");
            }
        }
    }

    async fn handle_json(
        &mut self,
        i: usize,
        topic: &str,
        payload: Bytes,
        ack: Box<dyn Acker>,
        sink: &EventSink,
        shutdown: &CancellationToken,
    ) {
        let cam = &self.cameras[i];
        let parsed = jsoncam::parse_json_camera(&payload);
        drop(payload);
        let ev = match parsed {
            Ok(ev) => ev,
            Err(e) => {
                Self::bad(&cam.status, topic, &e.to_string());
                ack.ack().await;
                return;
            }
        };
        let source_key = ev.source_key(&cam.name);
        let vendor_style = ev.style_code();
        let mut replaced = ev.replaced;
        let captured_at_ms = match ev.time {
            None => None,
            Some(JsonTime::Unix(ms)) => Some(ms),
            Some(JsonTime::Local(naive)) => {
                let ms = local_ms(self.tz, &naive);
                if ms.is_none() {
                    replaced.push(format!(
                        "时间无效 (local time {naive} does not exist in {}: gateway time used)",
                        self.tz
                    ));
                }
                ms
            }
        };
        let mut notes = Vec::new();
        if let Some(err) = &ev.image_error {
            Self::bad(&cam.status, topic, err);
            notes.push(format!("图片无效 (camera image field invalid: {err})"));
        }
        let reading = Reading {
            source_key,
            node_name: cam.name.clone(),
            direction: ev.direction,
            plate: ev.plate,
            color: ev.color,
            style: ev.style,
            vendor_style,
            captured_at_ms,
            buffered: false,
            brand: ev.brand,
            image: ev.image,
            replaced,
            notes,
        };
        let plate = normalise(
            reading,
            cam.direction,
            &cam.rules,
            &cam.status,
            sink.now_ms(),
        );
        self.submit_plate(i, plate, vec![ack], sink, shutdown);
    }

    async fn handle_vz_plate(
        &mut self,
        p: VzPlate,
        ack: Box<dyn Acker>,
        sink: &EventSink,
        shutdown: &CancellationToken,
    ) {
        self.seen(&p.sn);
        let Some(cam) = self.vz_camera(&p.sn) else {
            // A camera of another gateway on the same broker: not ours to report.
            ack.ack().await;
            return;
        };
        if p.lingering {
            tracing::debug!(camera = %self.cameras[cam].name, trigger = p.trigger, "lingering/turn-back trigger: not a pass");
            ack.ack().await;
            return;
        }
        if p.quick {
            // A newer quick result from the same camera releases the older one first.
            if let Some(old) = self.pending.remove(&p.sn) {
                self.flush_pending(old, sink, shutdown);
            }
            let deadline = Instant::now() + self.coalesce;
            self.pending.insert(
                p.sn.clone(),
                Pending {
                    camera: cam,
                    plate: p,
                    acks: vec![ack],
                    deadline,
                },
            );
            return;
        }
        // A full result: merge with its quick result, if one is waiting.
        let mut acks = vec![ack];
        if let Some(q) = self.pending.remove(&p.sn) {
            if q.plate.plate == p.plate {
                acks.extend(q.acks);
            } else {
                self.flush_pending(q, sink, shutdown);
            }
        } else if self.already_reported(&p.sn, p.plate.as_ref()) {
            tracing::debug!(camera = %self.cameras[cam].name, "full result after its quick result was reported: not a second pass");
            for a in acks {
                a.ack().await;
            }
            return;
        }
        let ev = self.vz_event(cam, p, sink.now_ms());
        self.submit_plate(cam, ev, acks, sink, shutdown);
    }

    fn already_reported(&mut self, sn: &str, plate: Option<&String>) -> bool {
        let now = Instant::now();
        while self
            .reported_quick
            .front()
            .is_some_and(|(_, _, t)| now.duration_since(*t) > LATE_FULL_WINDOW)
        {
            self.reported_quick.pop_front();
        }
        if let Some(pos) = self
            .reported_quick
            .iter()
            .position(|(s, p, _)| s == sn && p.as_ref() == plate)
        {
            self.reported_quick.remove(pos);
            return true;
        }
        false
    }

    fn vz_event(&self, cam: usize, p: VzPlate, now_ms: i64) -> PlateEvent {
        let c = &self.cameras[cam];
        normalise(p.reading(&c.name), c.direction, &c.rules, &c.status, now_ms)
    }

    fn flush_pending(&mut self, q: Pending, sink: &EventSink, shutdown: &CancellationToken) {
        self.reported_quick
            .push_back((q.plate.sn.clone(), q.plate.plate.clone(), Instant::now()));
        if self.reported_quick.len() > 256 {
            self.reported_quick.pop_front();
        }
        let ev = self.vz_event(q.camera, q.plate, sink.now_ms());
        self.submit_plate(q.camera, ev, q.acks, sink, shutdown);
    }

    /// Quick results whose full result did not come in time are reported alone; a Vzenith
    /// camera silent for [`CAMERA_SILENCE`] is shown as disconnected.
    pub fn tick(&mut self, sink: &EventSink, shutdown: &CancellationToken) {
        let now = Instant::now();
        let due: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for sn in due {
            if let Some(q) = self.pending.remove(&sn) {
                tracing::debug!(sn = %sn, "no full result in time: reporting the quick result");
                self.flush_pending(q, sink, shutdown);
            }
        }
        for (i, seen) in self.last_seen.iter().enumerate() {
            if seen.is_some_and(|t| now.duration_since(t) >= CAMERA_SILENCE)
                && self.cameras[i].status.set_connected(false)
            {
                tracing::warn!(camera = %self.cameras[i].name, "camera silent (no keep_alive) for 30 s");
            }
        }
    }

    /// When the next quick result falls due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.deadline).min()
    }

    /// When [`Router::tick`] next has something to do: a quick result falling due or a
    /// talking camera's silence deadline. `None`: nothing (no timer is needed).
    pub fn next_wake(&self) -> Option<Instant> {
        let silence = self
            .last_seen
            .iter()
            .zip(&self.cameras)
            .filter(|(_, c)| c.status.connected())
            .filter_map(|(t, _)| t.map(|t| t + CAMERA_SILENCE))
            .min();
        match (self.next_deadline(), silence) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Start storing a plate event: fetch its snapshot when it has no image, submit it,
    /// then ack its messages; the router goes on meanwhile (module docs).
    fn submit_plate(
        &mut self,
        cam: usize,
        mut ev: PlateEvent,
        acks: Vec<Box<dyn Acker>>,
        sink: &EventSink,
        shutdown: &CancellationToken,
    ) {
        let c = &self.cameras[cam];
        let snapshot = c.snapshot.clone();
        let status = c.status.clone();
        let (sink, shutdown) = (sink.clone(), shutdown.clone());
        self.jobs.push(Box::pin(async move {
            fill_image(&mut ev, snapshot.as_ref()).await;
            let outcome = submit_until_taken(&sink, Event::Plate(ev), &status, &shutdown).await;
            if outcome == Outcome::Done {
                for a in acks {
                    a.ack().await;
                }
            }
            outcome
        }));
    }

    fn handle_gpio(
        &mut self,
        sn: &str,
        source: u32,
        value: u8,
        ack: Box<dyn Acker>,
        sink: &EventSink,
        shutdown: &CancellationToken,
    ) {
        self.seen(sn);
        let now = Instant::now();
        let mut passes = Vec::new();
        for (i, l) in self.loops.iter().enumerate() {
            if l.input != source || l.sn.as_deref().is_some_and(|s| s != sn) {
                continue;
            }
            l.status.set_connected(true);
            if self.edges[i].update(is_closed(value != 0, l.active_low), now) {
                let ev = Event::Pass {
                    loop_name: l.name.clone(),
                    lane: l.lane,
                };
                passes.push((ev, l.status.clone()));
            }
        }
        let (sink, shutdown) = (sink.clone(), shutdown.clone());
        self.jobs.push(Box::pin(async move {
            for (ev, status) in passes {
                if submit_until_taken(&sink, ev, &status, &shutdown).await == Outcome::Shutdown {
                    return Outcome::Shutdown;
                }
            }
            ack.ack().await;
            Outcome::Done
        }));
    }
}

/// Submit, retrying with back-off while the gateway cannot store (disk quota): the source
/// is not acked meanwhile. An invalid event is counted and dropped (acked).
async fn submit_until_taken(
    sink: &EventSink,
    ev: Event,
    status: &DriverStatus,
    shutdown: &CancellationToken,
) -> Outcome {
    let mut wait = Duration::from_millis(500);
    loop {
        match sink.submit(ev.clone()).await {
            Ok(Accepted::Stored(_) | Accepted::Duplicate | Accepted::Applied) => {
                status.event();
                return Outcome::Done;
            }
            Err(SinkError::Closed) => return Outcome::Shutdown,
            Err(SinkError::Invalid(m)) => {
                let n = status.bad_input(&m);
                if should_log(n) {
                    tracing::warn!(driver = status.name(), problem = %m, "event refused as invalid; dropped");
                }
                return Outcome::Done;
            }
            Err(SinkError::Unavailable(m)) => {
                status.set_problem(&m);
                tracing::warn!(driver = status.name(), problem = %m, retry_in = ?wait, "event not stored; not acknowledging, retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return Outcome::Shutdown,
                    () = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// A lot-local time as Unix ms.
pub fn local_ms(tz: chrono_tz::Tz, naive: &chrono::NaiveDateTime) -> Option<i64> {
    use chrono::TimeZone;
    tz.from_local_datetime(naive)
        .earliest()
        .map(|t| t.timestamp_millis())
}

/// The router's inbox: an unbounded channel and its current depth (see the module docs).
#[derive(Debug)]
pub struct Inbox {
    rx: mpsc::UnboundedReceiver<Incoming>,
    depth: Arc<AtomicUsize>,
}

/// The sending side of an [`Inbox`].
#[derive(Debug, Clone)]
pub struct InboxSender {
    tx: mpsc::UnboundedSender<Incoming>,
    depth: Arc<AtomicUsize>,
}

impl InboxSender {
    /// Queue a message; `false` when the router is gone.
    pub fn send(&self, m: Incoming) -> bool {
        self.depth.fetch_add(1, Ordering::AcqRel);
        self.tx.send(m).is_ok()
    }
    /// Messages waiting.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Acquire)
    }
}

/// A router inbox and its sender.
pub fn inbox() -> (InboxSender, Inbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    let depth = Arc::new(AtomicUsize::new(0));
    (
        InboxSender {
            tx,
            depth: depth.clone(),
        },
        Inbox { rx, depth },
    )
}

impl Inbox {
    async fn recv(&mut self) -> Option<Incoming> {
        let m = self.rx.recv().await;
        if m.is_some() {
            self.depth.fetch_sub(1, Ordering::AcqRel);
        }
        m
    }
}

/// Serve the router from its inbox until shutdown or the inbox closes. It wakes for a
/// message, a submission ending, or [`Router::next_wake`]; with nothing due it sets no timer.
pub async fn run_router(
    mut router: Router,
    mut rx: Inbox,
    sink: EventSink,
    shutdown: CancellationToken,
) {
    loop {
        let wake = router.next_wake();
        let due = async move {
            match wake {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = due => router.tick(&sink, &shutdown),
            Some(outcome) = router.next_done(), if router.submitting() > 0 => {
                if outcome == Outcome::Shutdown {
                    return;
                }
            }
            m = rx.recv() => match m {
                Some(m) => router.handle(m, &sink, &shutdown).await,
                None => return,
            },
        }
    }
}

/// The MQTT driver: one broker connection for every MQTT camera and loop.
#[derive(Debug)]
pub struct MqttHub {
    /// Broker settings.
    pub settings: MqttSettings,
    /// Cameras.
    pub cameras: Vec<MqttCamera>,
    /// Camera IO loops.
    pub loops: Vec<MqttLoop>,
    /// Lot time zone (for local times in JSON messages).
    pub tz: chrono_tz::Tz,
    /// How long a quick result waits for its full result.
    pub coalesce: Duration,
    /// Broker connection status.
    pub status: DriverStatus,
}

fn tls_config(ca_file: Option<&PathBuf>) -> Result<rustls::ClientConfig, MqttError> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = ca_file {
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| MqttError::Tls(format!("{}: {e}", path.display())))?;
        for cert in certs {
            let cert = cert.map_err(|e| MqttError::Tls(format!("{}: {e}", path.display())))?;
            roots
                .add(cert)
                .map_err(|e| MqttError::Tls(format!("{}: {e}", path.display())))?;
        }
    } else {
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
    }
    if roots.is_empty() {
        return Err(MqttError::Tls(
            "no CA certificates to verify the broker with".into(),
        ));
    }
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The rumqttc options for these settings.
pub fn options(s: &MqttSettings) -> Result<rumqttc::MqttOptions, MqttError> {
    let mut o = rumqttc::MqttOptions::new(s.client_id.clone(), s.host.clone(), s.port);
    o.set_keep_alive(s.keep_alive)
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_max_packet_size(s.max_packet, s.max_packet);
    if let (Some(u), p) = (&s.username, &s.password) {
        o.set_credentials(u.clone(), p.clone().unwrap_or_default());
    }
    if let Some(ca) = &s.tls {
        let cfg = tls_config(ca.as_ref())?;
        o.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(Arc::new(cfg)),
        ));
    }
    Ok(o)
}

/// Poll the broker connection forever: subscribe on every connection, forward messages
/// while the hand has room (module docs), back off after errors (rumqttc would reconnect in
/// a tight loop).
async fn run_connection(
    opts: rumqttc::MqttOptions,
    topics: Vec<String>,
    tx: InboxSender,
    hand: Arc<Hand>,
    status: DriverStatus,
    shutdown: CancellationToken,
) {
    let max_packet = opts.max_packet_size();
    let (host, port) = opts.broker_address();
    let broker = format!("{host}:{port}");
    // Room for the acks of a full hand (with rumqttc's read batch) and a subscribe.
    let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, MAX_IN_HAND + READ_BATCH + 16);
    let mut pacer = Pacer::new(max_packet);
    let mut outage = Outage::new(
        format!("MQTT broker {broker}"),
        "unreachable",
        "connected again",
    );
    let mut connected_once = false;
    loop {
        if hand.full() {
            // Flow control (module docs): read nothing more until the router has stored some.
            tracing::debug!(
                in_hand = hand.messages(),
                "router's hand full: not reading from the broker"
            );
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = hand.room() => {}
            }
            // A PINGRESP we did not read because we stopped reading is not a missing one.
            eventloop.state.await_pingresp = false;
        }
        let polled = tokio::select! {
            () = shutdown.cancelled() => break,
            p = eventloop.poll() => p,
        };
        if let Ok(rumqttc::Event::Incoming(_)) = &polled {
            // The broker is talking: a PINGRESP still queued behind its messages is not
            // missing (module docs; rumqttc would drop the connection at its next ping).
            eventloop.state.await_pingresp = false;
        }
        match polled {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ca))) => {
                pacer.connected();
                status.set_connected(true);
                if outage.recovered().is_none() && !connected_once {
                    tracing::info!(session_present = ca.session_present, topics = ?topics, "MQTT broker connected");
                }
                connected_once = true;
                let subs: Vec<rumqttc::SubscribeFilter> = topics
                    .iter()
                    .map(|t| rumqttc::SubscribeFilter::new(t.clone(), rumqttc::QoS::AtLeastOnce))
                    .collect();
                // From another task: this one must keep polling for the request to go out.
                let c = client.clone();
                tokio::spawn(async move {
                    if let Err(e) = c.subscribe_many(subs).await {
                        tracing::warn!(error = %e, "MQTT subscribe not sent");
                    }
                });
            }
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                if pacer.oversized(p.payload.len()) {
                    let n = status.bad_input("message over max_packet");
                    tracing::warn!(topic = %p.topic, size = p.payload.len(), max_packet, bad_inputs = n, "MQTT message over max_packet: acknowledged and dropped");
                    pacer.consumed(&mut eventloop.mqtt_options);
                    let c = client.clone();
                    let mut p = p;
                    p.payload = Bytes::new();
                    tokio::spawn(async move {
                        if let Err(e) = c.ack(&p).await {
                            tracing::debug!(error = %e, "MQTT ack not sent");
                        }
                    });
                    continue;
                }
                let held = hand.take(p.payload.len());
                let mut publish = p;
                let payload = std::mem::take(&mut publish.payload);
                let msg = Incoming {
                    topic: publish.topic.clone(),
                    payload,
                    ack: Box::new(RumqttAck {
                        client: client.clone(),
                        publish,
                        held,
                    }),
                };
                if !tx.send(msg) {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                // The reason first: whoever sees the broker lost also sees why.
                status.set_problem(&e.to_string());
                status.set_connected(false);
                outage.failed(&e);
                let wait = pacer.failed(&e, &mut eventloop.mqtt_options, status.name());
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
    let _ = client.try_disconnect();
}

impl Driver for MqttHub {
    fn name(&self) -> &str {
        self.status.name()
    }

    fn run(self: Box<Self>, sink: EventSink, shutdown: CancellationToken) -> DriverFuture {
        Box::pin(async move {
            let opts = options(&self.settings).map_err(|e| DriverError::Fatal {
                driver: self.status.name().to_string(),
                message: e.to_string(),
            })?;
            let topics = filters(&self.cameras, &self.loops);
            // Our own token: when the router ends, the connection task ends with it.
            let local = shutdown.child_token();
            let (tx, rx) = inbox();
            let hand = Hand::new(MAX_IN_HAND, MAX_IN_HAND_BYTES, self.status.clone());
            let router = Router::new(
                self.cameras,
                self.loops,
                self.tz,
                self.coalesce,
                self.status.clone(),
            );
            let conn = tokio::spawn(run_connection(
                opts,
                topics,
                tx,
                hand,
                self.status.clone(),
                local.clone(),
            ));
            run_router(router, rx, sink, local.clone()).await;
            local.cancel();
            let _ = conn.await;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct CountAck(Arc<AtomicUsize>);

    impl Acker for CountAck {
        fn ack(self: Box<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
            self.0.fetch_add(1, Ordering::AcqRel);
            Box::pin(async {})
        }
    }

    fn json_router() -> Router {
        let cam = MqttCamera {
            name: "cam1".into(),
            direction: Direction::In,
            format: CameraFormat::Json {
                topic: "lot/cam1".into(),
            },
            snapshot: None,
            rules: CameraRules::default(),
            status: DriverStatus::new("cam1", "mqtt"),
        };
        Router::new(
            vec![cam],
            Vec::new(),
            chrono_tz::Asia::Shanghai,
            Duration::from_secs(3),
            DriverStatus::new("mqtt", "mqtt"),
        )
    }

    #[tokio::test]
    async fn the_router_submits_every_message_it_holds_at_once_and_acks_each_only_once_stored() {
        let (sink, mut subs) = EventSink::channel(64);
        let (tx, rx) = inbox();
        let acks = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let router = tokio::spawn(run_router(json_router(), rx, sink, stop.clone()));
        let n = 20;
        for i in 0..n {
            assert!(tx.send(Incoming {
                topic: "lot/cam1".into(),
                payload: Bytes::from(format!(r#"{{"plate":"晋A{i:05}","id":"m{i}"}}"#)),
                ack: Box::new(CountAck(acks.clone())),
            }));
        }
        // Every message reaches the store before any of them is answered: one group.
        let mut waiting = Vec::new();
        for _ in 0..n {
            waiting.push(subs.recv().await.expect("a submission"));
        }
        assert_eq!(
            acks.load(Ordering::Acquire),
            0,
            "nothing acked before it is stored"
        );
        for (i, sub) in waiting.into_iter().enumerate() {
            sub.reply.send(Ok(Accepted::Stored(i as u64))).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while acks.load(Ordering::Acquire) < n && Instant::now() < deadline {
            tokio::task::yield_now().await;
        }
        assert_eq!(acks.load(Ordering::Acquire), n, "each acked once stored");
        stop.cancel();
        router.await.unwrap();
    }

    #[tokio::test]
    async fn a_full_hand_waits_for_a_release_and_counts_its_peak() {
        let status = DriverStatus::new("mqtt", "mqtt");
        let hand = Hand::new(2, 1000, status.clone());
        let a = hand.take(10);
        assert!(!hand.full());
        let b = hand.take(10);
        assert!(hand.full(), "full at the message limit");
        let waiter = {
            let hand = hand.clone();
            tokio::spawn(async move { hand.room().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(a);
        waiter.await.unwrap();
        assert!(!hand.full());
        let big = hand.take(2000);
        assert!(hand.full(), "full at the byte limit");
        drop((b, big));
        assert_eq!(hand.messages(), 0);
        assert_eq!(status.snapshot().in_hand, 0);
        assert_eq!(status.snapshot().in_hand_peak, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_router_sets_no_timer() {
        let mut router = json_router();
        assert_eq!(router.next_wake(), None, "nothing due: no wakeups");
        router.last_seen[0] = Some(Instant::now());
        router.cameras[0].status.set_connected(true);
        assert_eq!(
            router.next_wake(),
            Some(router.last_seen[0].unwrap() + CAMERA_SILENCE),
            "a talking camera: its silence deadline"
        );
        let (sink, _subs) = EventSink::channel(1);
        tokio::time::advance(CAMERA_SILENCE).await;
        router.tick(&sink, &CancellationToken::new());
        assert!(!router.cameras[0].status.connected());
        assert_eq!(
            router.next_wake(),
            None,
            "silent camera shown: no more wakeups"
        );
    }

    fn opts() -> rumqttc::MqttOptions {
        let mut o = rumqttc::MqttOptions::new("t", "127.0.0.1", 1);
        o.set_max_packet_size(64 * 1024, 64 * 1024);
        o
    }

    #[tokio::test(start_paused = true)]
    async fn the_back_off_starts_over_only_after_a_session_that_stayed_up() {
        let mut o = opts();
        let mut p = Pacer::new(64 * 1024);
        let err = rumqttc::ConnectionError::NetworkTimeout;
        assert_eq!(p.failed(&err, &mut o, "t"), Duration::from_millis(500));
        // Connected, then dropped at once (as a message over the limit did): no reset.
        p.connected();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(p.failed(&err, &mut o, "t"), Duration::from_secs(1));
        p.connected();
        assert_eq!(p.failed(&err, &mut o, "t"), Duration::from_secs(2));
        // A session that stayed up: the back-off starts over.
        p.connected();
        tokio::time::advance(STABLE_SESSION).await;
        assert_eq!(p.failed(&err, &mut o, "t"), Duration::from_millis(500));
    }

    #[test]
    fn a_packet_over_the_limit_raises_the_limit_once_and_consuming_it_restores_it() {
        let mut o = opts();
        let mut p = Pacer::new(64 * 1024);
        let too_big = rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::Error::PayloadSizeLimitExceeded(300_000),
        ));
        assert_eq!(oversize(&too_big), Some(300_000));
        p.failed(&too_big, &mut o, "t");
        assert_eq!(o.max_packet_size(), 300_000);
        assert!(p.oversized(300_000 - 10));
        assert!(!p.oversized(1_000));
        p.consumed(&mut o);
        assert_eq!(o.max_packet_size(), 64 * 1024);
        // Beyond the ceiling: not raised.
        let huge = rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::Error::PayloadSizeLimitExceeded(OVERSIZE_CEILING + 1),
        ));
        p.failed(&huge, &mut o, "t");
        assert_eq!(o.max_packet_size(), 64 * 1024);
    }
}
