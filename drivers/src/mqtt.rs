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
//! Full-queue policy: the connection task must never wait on the router. If it did, a router
//! waiting to send an acknowledgement through rumqttc's small request channel (drained only
//! by the polling task) would deadlock with it. So messages go to the router through an
//! unbounded channel whose depth is bounded by the protocol instead: the broker sends at most
//! its in-flight window (mosquitto: 20) of un-acknowledged `QoS` 1 messages, and acks are only
//! sent once events are stored, so a slow or refusing outbox stops the flow at the broker,
//! which keeps the rest. `QoS` 0 messages (no window) are dropped and counted once
//! [`ROUTER_QUEUE`] messages wait. When the outbox refuses an event (disk quota) the router
//! retries it with back-off and acks nothing meanwhile.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
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

/// Waiting messages above which `QoS` 0 messages are dropped (see the module docs).
pub const ROUTER_QUEUE: usize = 256;
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

struct RumqttAck {
    client: rumqttc::AsyncClient,
    publish: rumqttc::Publish,
}

impl Acker for RumqttAck {
    fn ack(self: Box<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            if let Err(e) = self.client.ack(&self.publish).await {
                // The connection is gone: the broker re-delivers, the outbox dedupes.
                tracing::debug!(error = %e, "MQTT ack not sent");
            }
        })
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
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("cameras", &self.cameras.len())
            .field("loops", &self.loops.len())
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

/// What the router does with an event the gateway did not take.
enum Outcome {
    Done,
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

    /// Handle one message. Returns `false` when the gateway is shutting down (the message
    /// is not acked; the broker keeps it).
    pub async fn handle(
        &mut self,
        msg: Incoming,
        sink: &EventSink,
        shutdown: &CancellationToken,
    ) -> bool {
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
            return self
                .handle_json(i, &topic, &payload, ack, sink, shutdown)
                .await;
        }
        match vzenith::parse_message(&topic, &payload, true) {
            Ok(VzMessage::Plate(p)) => self.handle_vz_plate(p, ack, sink, shutdown).await,
            Ok(VzMessage::Gpio { sn, source, value }) => {
                self.handle_gpio(&sn, source, value, ack, sink, shutdown)
                    .await
            }
            Ok(VzMessage::KeepAlive { sn } | VzMessage::Other { sn, .. }) => {
                self.seen(&sn);
                ack.ack().await;
                true
            }
            Err(e) => {
                let status = vzenith::parse_topic(&topic)
                    .and_then(|(sn, _)| self.vz_camera(&sn))
                    .map_or(&self.unclaimed, |i| &self.cameras[i].status);
                Self::bad(status, &topic, &e.to_string());
                // Never valid: acking stops the broker from re-sending it forever.
                ack.ack().await;
                true
            }
        }
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
        payload: &[u8],
        ack: Box<dyn Acker>,
        sink: &EventSink,
        shutdown: &CancellationToken,
    ) -> bool {
        let cam = &self.cameras[i];
        let ev = match jsoncam::parse_json_camera(payload) {
            Ok(ev) => ev,
            Err(e) => {
                Self::bad(&cam.status, topic, &e.to_string());
                ack.ack().await;
                return true;
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
        self.submit_plate(i, plate, vec![ack], sink, shutdown).await
    }

    async fn handle_vz_plate(
        &mut self,
        p: VzPlate,
        ack: Box<dyn Acker>,
        sink: &EventSink,
        shutdown: &CancellationToken,
    ) -> bool {
        self.seen(&p.sn);
        let Some(cam) = self.vz_camera(&p.sn) else {
            // A camera of another gateway on the same broker: not ours to report.
            ack.ack().await;
            return true;
        };
        if p.lingering {
            tracing::debug!(camera = %self.cameras[cam].name, trigger = p.trigger, "lingering/turn-back trigger: not a pass");
            ack.ack().await;
            return true;
        }
        if p.quick {
            // A newer quick result from the same camera releases the older one first.
            if let Some(old) = self.pending.remove(&p.sn) {
                if !self.flush_pending(old, sink, shutdown).await {
                    return false;
                }
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
            return true;
        }
        // A full result: merge with its quick result, if one is waiting.
        let mut acks = vec![ack];
        if let Some(q) = self.pending.remove(&p.sn) {
            if q.plate.plate == p.plate {
                acks.extend(q.acks);
            } else if !self.flush_pending(q, sink, shutdown).await {
                return false;
            }
        } else if self.already_reported(&p.sn, p.plate.as_ref()) {
            tracing::debug!(camera = %self.cameras[cam].name, "full result after its quick result was reported: not a second pass");
            for a in acks {
                a.ack().await;
            }
            return true;
        }
        let ev = self.vz_event(cam, p, sink.now_ms());
        self.submit_plate(cam, ev, acks, sink, shutdown).await
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

    async fn flush_pending(
        &mut self,
        q: Pending,
        sink: &EventSink,
        shutdown: &CancellationToken,
    ) -> bool {
        self.reported_quick
            .push_back((q.plate.sn.clone(), q.plate.plate.clone(), Instant::now()));
        if self.reported_quick.len() > 256 {
            self.reported_quick.pop_front();
        }
        let ev = self.vz_event(q.camera, q.plate, sink.now_ms());
        self.submit_plate(q.camera, ev, q.acks, sink, shutdown)
            .await
    }

    /// Quick results whose full result did not come in time are reported alone.
    pub async fn tick(&mut self, sink: &EventSink, shutdown: &CancellationToken) -> bool {
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
                if !self.flush_pending(q, sink, shutdown).await {
                    return false;
                }
            }
        }
        for (i, seen) in self.last_seen.iter().enumerate() {
            if seen.is_some_and(|t| now.duration_since(t) > CAMERA_SILENCE)
                && self.cameras[i].status.set_connected(false)
            {
                tracing::warn!(camera = %self.cameras[i].name, "camera silent (no keep_alive) for 30 s");
            }
        }
        true
    }

    /// When the next quick result falls due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.deadline).min()
    }

    async fn submit_plate(
        &mut self,
        cam: usize,
        mut ev: PlateEvent,
        acks: Vec<Box<dyn Acker>>,
        sink: &EventSink,
        shutdown: &CancellationToken,
    ) -> bool {
        let c = &self.cameras[cam];
        fill_image(&mut ev, c.snapshot.as_ref()).await;
        let status = c.status.clone();
        match submit_until_taken(sink, Event::Plate(ev), &status, shutdown).await {
            Outcome::Done => {
                for a in acks {
                    a.ack().await;
                }
                true
            }
            Outcome::Shutdown => false,
        }
    }

    async fn handle_gpio(
        &mut self,
        sn: &str,
        source: u32,
        value: u8,
        ack: Box<dyn Acker>,
        sink: &EventSink,
        shutdown: &CancellationToken,
    ) -> bool {
        self.seen(sn);
        let now = Instant::now();
        let mut passes = Vec::new();
        for (i, l) in self.loops.iter().enumerate() {
            if l.input != source || l.sn.as_deref().is_some_and(|s| s != sn) {
                continue;
            }
            l.status.set_connected(true);
            if self.edges[i].update(is_closed(value != 0, l.active_low), now) {
                passes.push(i);
            }
        }
        for i in passes {
            let l = &self.loops[i];
            let ev = Event::Pass {
                loop_name: l.name.clone(),
                lane: l.lane,
            };
            if let Outcome::Shutdown = submit_until_taken(sink, ev, &l.status, shutdown).await {
                return false;
            }
        }
        ack.ack().await;
        true
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

/// Serve the router from its inbox until shutdown or the inbox closes.
pub async fn run_router(
    mut router: Router,
    mut rx: Inbox,
    sink: EventSink,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {
                if !router.tick(&sink, &shutdown).await {
                    return;
                }
            }
            m = rx.recv() => match m {
                Some(m) => {
                    if !router.handle(m, &sink, &shutdown).await {
                        return;
                    }
                }
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

/// Poll the broker connection forever: subscribe on every connection, forward messages,
/// back off after errors (rumqttc would reconnect in a tight loop).
async fn run_connection(
    opts: rumqttc::MqttOptions,
    topics: Vec<String>,
    tx: InboxSender,
    status: DriverStatus,
    shutdown: CancellationToken,
) {
    let max_packet = opts.max_packet_size();
    let (host, port) = opts.broker_address();
    let broker = format!("{host}:{port}");
    let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 64);
    let mut pacer = Pacer::new(max_packet);
    let mut outage = Outage::new(
        format!("MQTT broker {broker}"),
        "unreachable",
        "connected again",
    );
    let mut connected_once = false;
    loop {
        let polled = tokio::select! {
            () = shutdown.cancelled() => break,
            p = eventloop.poll() => p,
        };
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
                    tokio::spawn(async move {
                        if let Err(e) = c.ack(&p).await {
                            tracing::debug!(error = %e, "MQTT ack not sent");
                        }
                    });
                    continue;
                }
                if p.qos == rumqttc::QoS::AtMostOnce && tx.depth() >= ROUTER_QUEUE {
                    let n = status.bad_input("QoS 0 message dropped: router queue full");
                    if should_log(n) {
                        tracing::warn!(topic = %p.topic, waiting = tx.depth(), "QoS 0 message dropped: the router is behind (publish camera messages with QoS 1)");
                    }
                    continue;
                }
                let msg = Incoming {
                    topic: p.topic.clone(),
                    payload: p.payload.clone(),
                    ack: Box::new(RumqttAck {
                        client: client.clone(),
                        publish: p,
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
