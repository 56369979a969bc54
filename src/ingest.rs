//! Ingest: takes events from the drivers' bounded queue, validates them, shrinks images,
//! turns plate events into `carInOut` records and stores them durably, then answers the
//! driver (which acknowledges its source only then).
//!
//! Queue policy: the drivers' queue is bounded ([`QUEUE_CAPACITY`]); when it is full, drivers
//! wait (back-pressure reaches the camera/broker, nothing is dropped). At most
//! [`image_workers`] (the CPU count) events are built at once, so at most that many images
//! are decoded at once, on blocking threads; the others wait as the bytes received. A built
//! record is handed to the outbox without holding a worker, so records from many sources
//! (or the many messages the MQTT router holds) are committed together, one `fsync` per
//! group. When the queue runs dry after [`TRIM_AFTER`] image bytes, freed heap pages go
//! back to the OS.
//!
//! Each stored event is logged at debug and counted in a [`Tally`] (the minute summary at
//! INFO, see [`crate::summary`]).

use std::sync::Arc;

use chrono::TimeZone;
use lotlink_drivers::{Accepted, Event, PlateEvent, SinkError, Submission};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::imaging::{self, ImageAction};
use crate::outbox::{ImgName, NewRecord, Outbox, OutboxError, RecordMeta, Submitted};
use crate::record::{append_remark, fit, opt_fit};
use crate::space::SpaceTracker;
use crate::summary::Tally;

/// Bound of the drivers' event queue.
pub(crate) const QUEUE_CAPACITY: usize = 64;
/// Image bytes taken in after which a drained queue returns freed heap pages to the OS.
pub(crate) const TRIM_AFTER: usize = 4 * 1024 * 1024;

/// Events built (images decoded) concurrently: the CPU count.
pub(crate) fn image_workers() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// Errors turning an event into a record.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IngestError {
    #[error("invalid event: {0}")]
    Invalid(String),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

/// The settings ingest names records with; changed in place by a config reload.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Naming {
    /// `lotCode`, the first part of `imgName`.
    pub lot_code: String,
    /// Time zone of `inOutTime`.
    pub timezone: chrono_tz::Tz,
}

/// Shared handle on [`Naming`]; a reload swaps the value, records already built keep theirs.
pub(crate) type SharedNaming = Arc<std::sync::RwLock<Naming>>;

/// Shared settings of the ingest stage.
#[derive(Clone)]
pub(crate) struct Ingest {
    pub outbox: Outbox,
    pub naming: SharedNaming,
    pub clock: Arc<Clock>,
    pub space: SpaceTracker,
    /// Where refused and stored events are counted (for `/healthz`).
    pub health: crate::uploader::Health,
    /// Stored events, for the minute summary.
    pub tally: Arc<Tally>,
}

impl Ingest {
    /// Build the record for a plate event (CPU-heavy when the image must be shrunk).
    pub(crate) fn build_record(&self, ev: PlateEvent) -> Result<NewRecord, IngestError> {
        let mut notes: Vec<String> = Vec::new();
        let node = ev.node_name.trim();
        if node.is_empty() {
            return Err(IngestError::Invalid("no lane name (nodeName)".into()));
        }
        let node_name = fit(node, 20, "nodeName", &mut notes);
        let now = self.clock.now_ms();
        let Naming { lot_code, timezone } = self
            .naming
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        // A pass is never dropped for its time: one the calendar cannot hold is replaced by
        // the gateway's clock (drivers already replace implausible ones; this is the guard).
        let t = match ev.captured_at_ms {
            None => timezone.timestamp_millis_opt(now).single(),
            Some(ms) => timezone.timestamp_millis_opt(ms).single().or_else(|| {
                notes.push(format!(
                    "时间无效 (capture time {ms} ms out of range: gateway time used)"
                ));
                timezone.timestamp_millis_opt(now).single()
            }),
        };
        let Some(t) = t else {
            return Err(IngestError::Invalid(format!(
                "the gateway clock ({now} ms) is out of range"
            )));
        };
        let in_out_time = t.format("%Y-%m-%d %H:%M:%S").to_string();
        let stamp = t.format("%Y%m%d%H%M%S").to_string();
        let car_no = opt_fit(ev.plate.as_deref(), 32, "carNo", &mut notes);
        let car_color = opt_fit(ev.color.as_deref(), 40, "carColor", &mut notes);
        let car_brand = opt_fit(ev.brand.as_deref(), 40, "carBrand", &mut notes);
        let image = match ev.image {
            Some(bytes) => {
                let p = imaging::prepare(&bytes, imaging::MAX_B64_CHARS);
                match &p.action {
                    ImageAction::PassedThrough => {}
                    ImageAction::Shrunk { from, to, quality } => {
                        tracing::debug!(from = ?from, to = ?to, quality, "image shrunk");
                    }
                    ImageAction::Placeholder { reason } => {
                        tracing::warn!(node = %node_name, reason = %reason, "camera image unusable; sending a placeholder");
                        notes.push("图片无法解码，已用占位图 (camera image not decodable, placeholder sent)".into());
                    }
                }
                // The placeholder is not stored: the outbox attaches it when the record
                // is read (no image bytes = no image).
                if matches!(p.action, ImageAction::Placeholder { .. }) {
                    Vec::new()
                } else {
                    p.bytes
                }
            }
            None => {
                notes.push("无图片，已用占位图 (no image from camera, placeholder sent)".into());
                Vec::new()
            }
        };
        let mut remark = ev
            .remark
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        for n in notes {
            remark = Some(append_remark(remark.as_deref(), &n));
        }
        let remark = remark.map(|r| r.chars().take(255).collect());
        Ok(NewRecord {
            source_key: ev.source_key,
            meta: RecordMeta {
                car_no,
                in_out_type: ev.direction.as_str().to_string(),
                in_out_time,
                img_name: String::new(),
                node_name: node_name.clone(),
                car_color,
                car_style: ev.style.code().to_string(),
                car_brand,
                remark,
                submitted_ms: self.clock.now_ms(),
                degraded: false,
            },
            img_name: ImgName::Auto {
                lot: lot_code,
                node: node_name,
                stamp,
            },
            image,
        })
    }

    /// Handle one event: validate, build, store durably. The answer for the driver.
    /// `worker` (an image worker's permit) is held while the record is built, not while
    /// it is stored (module docs).
    pub(crate) async fn handle(
        &self,
        event: Event,
        worker: OwnedSemaphorePermit,
    ) -> Result<Accepted, SinkError> {
        match event {
            Event::Plate(ev) => {
                let this = self.clone();
                let direction = ev.direction;
                let built = tokio::task::spawn_blocking(move || this.build_record(ev))
                    .await
                    .map_err(|e| SinkError::Unavailable(format!("image worker failed: {e}")));
                drop(worker);
                let built = built?;
                let rec = built.map_err(|e| match e {
                    IngestError::Invalid(m) => SinkError::Invalid(m),
                    IngestError::Outbox(o) => SinkError::Unavailable(o.to_string()),
                })?;
                let plate = rec.meta.car_no.clone().unwrap_or_default();
                let node = rec.meta.node_name.clone();
                match self.outbox.submit(rec).await {
                    Ok(Submitted::Stored(id)) => {
                        let now = Clock::local_ms();
                        crate::uploader::health_mut(&self.health, |h| {
                            h.last_stored_ms = Some(now);
                        });
                        tracing::debug!(id, plate = %plate, node = %node, direction = direction.as_str(), "event stored");
                        self.tally.stored();
                        self.space.on_plate(direction);
                        Ok(Accepted::Stored(id))
                    }
                    Ok(Submitted::Duplicate) => {
                        tracing::debug!(plate = %plate, node = %node, "duplicate event (same source key within 10 min): acknowledged, not stored again");
                        Ok(Accepted::Duplicate)
                    }
                    Err(e) => {
                        let now = Clock::local_ms();
                        let why = e.to_string();
                        let n = crate::uploader::health_mut(&self.health, |h| {
                            h.events_refused += 1;
                            h.last_refusal = Some((now, why));
                            h.events_refused
                        });
                        if n.is_power_of_two() {
                            tracing::warn!(error = %e, plate = %plate, node = %node, refused = n, "event not stored; the source keeps it");
                        } else {
                            tracing::debug!(error = %e, plate = %plate, node = %node, refused = n, "event not stored; the source keeps it");
                        }
                        Err(SinkError::Unavailable(e.to_string()))
                    }
                }
            }
            Event::Pass { loop_name, lane } => {
                drop(worker);
                self.space
                    .on_pass(&loop_name, lane)
                    .await
                    .map_err(|e| SinkError::Unavailable(e.to_string()))?;
                Ok(Accepted::Applied)
            }
            Event::Counter {
                loop_name,
                lane,
                value,
                bits,
            } => {
                drop(worker);
                self.space
                    .on_counter(&loop_name, lane, value, bits)
                    .await
                    .map_err(|e| SinkError::Unavailable(e.to_string()))?;
                Ok(Accepted::Applied)
            }
        }
    }

    /// Serve the drivers' queue until shutdown; then finish what was received.
    pub(crate) async fn run(self, mut rx: mpsc::Receiver<Submission>, shutdown: CancellationToken) {
        let workers = Arc::new(Semaphore::new(image_workers()));
        let mut tasks = tokio::task::JoinSet::new();
        let mut image_bytes = 0usize;
        loop {
            let sub = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {
                    if tasks.is_empty() && rx.is_empty() && image_bytes >= TRIM_AFTER {
                        // A burst of images has drained: give its buffers back.
                        image_bytes = 0;
                        let _ = tokio::task::spawn_blocking(crate::heap::release_freed_memory).await;
                    }
                    continue;
                }
                s = rx.recv() => match s { Some(s) => s, None => break },
            };
            if let Event::Plate(p) = &sub.event {
                image_bytes += p.image.as_ref().map_or(0, Vec::len);
            }
            let Ok(permit) = workers.clone().acquire_owned().await else {
                break;
            };
            let this = self.clone();
            tasks.spawn(async move {
                let answer = this.handle(sub.event, permit).await;
                if let Err(e) = &answer {
                    tracing::debug!(error = %e, "event refused");
                }
                // The driver may have gone away; the event is stored either way.
                let _ = sub.reply.send(answer);
            });
        }
        rx.close();
        // Answer what is already queued as closed; finish the ones in progress.
        while let Ok(sub) = rx.try_recv() {
            let _ = sub.reply.send(Err(SinkError::Closed));
        }
        while tasks.join_next().await.is_some() {}
    }
}
