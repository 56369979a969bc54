//! # lotlink-drivers
//!
//! The hardware side of lotlink: the event types every driver emits, the one small
//! [`Driver`] trait, and the [`EventSink`] a driver hands its events to.
//!
//! ## The contract between a driver and the gateway
//!
//! A driver reads its source (a camera over MQTT or serial, a loop detector), turns what it
//! reads into an [`Event`] and calls [`EventSink::submit`]. `submit` returns only when the
//! gateway has made the event durable (it is on disk, fsynced) or has refused it. A driver
//! acknowledges its source (MQTT PUBACK, a serial protocol ACK, …) **only after `submit`
//! returned `Ok`**. If the gateway dies in between, the source still has the event and
//! re-delivers it; the gateway's ingest dedupes it by [`PlateEvent::source_key`].
//!
//! ## Queue and full-queue policy
//!
//! The sink is a bounded `tokio::sync::mpsc` channel (capacity chosen by the gateway,
//! 64 by default). When it is full, `submit` waits: the driver stops reading its source,
//! and the source (camera buffer, broker session) holds the events. Nothing is dropped
//! by the queue. When the gateway shuts down, `submit` returns [`SinkError::Closed`] and
//! the driver must return without acknowledging.
#![warn(clippy::pedantic)]
// Allowed pedantic lints, each for a reason:
#![allow(
    clippy::module_name_repetitions, // `event::PlateEvent` reads better than `event::Plate`
    clippy::missing_errors_doc,      // error enums document their variants instead
    clippy::must_use_candidate       // noise on small getters
)]

pub mod codec;
pub mod config;
pub mod event;
pub mod hikvision;
pub mod http;
pub mod jsoncam;
pub mod loops;
pub mod mqtt;
pub mod outage;
pub mod plate;
pub mod serial;
pub mod snapshot;
pub mod status;
pub mod vzenith;

pub use event::{CarStyle, Direction, Event, PlateEvent};
pub use outage::{Backoff, Outage, Severity};
pub use plate::{normalise, CameraRules, Reading};
pub use status::{should_log, DriverStatus, StatusSnapshot};

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
pub use tokio_util::sync::CancellationToken;

/// What the gateway did with a submitted event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// Stored durably in the outbox under this record id.
    Stored(u64),
    /// The same source key was accepted within the dedupe window: already stored, ack it.
    Duplicate,
    /// A non-record event (a loop pass, a level change) was applied and persisted.
    Applied,
}

/// Why an event was not accepted. The driver must NOT acknowledge its source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// The gateway is shutting down.
    #[error("the gateway is shutting down")]
    Closed,
    /// The event is malformed (missing a field that cannot be derived); counted as bad input.
    #[error("invalid event: {0}")]
    Invalid(String),
    /// The gateway cannot store it now (disk quota reached, store error). The source keeps it.
    #[error("not stored: {0}")]
    Unavailable(String),
}

/// One event in flight from a driver to the ingest stage, with the channel to answer on.
#[derive(Debug)]
pub struct Submission {
    pub event: Event,
    pub reply: oneshot::Sender<Result<Accepted, SinkError>>,
}

/// The gateway's clock as drivers see it: Unix milliseconds.
pub type NowFn = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The bounded sender drivers submit events through. Cheap to clone.
#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::Sender<Submission>,
    clock: Option<NowFn>,
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSink")
            .field("capacity", &self.tx.max_capacity())
            .field("gateway_clock", &self.clock.is_some())
            .finish()
    }
}

impl EventSink {
    /// A sink and the receiving end for the ingest stage. `capacity` is the queue bound.
    pub fn channel(capacity: usize) -> (EventSink, mpsc::Receiver<Submission>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (EventSink { tx, clock: None }, rx)
    }

    /// The same sink, telling drivers the time by `clock` (the gateway's corrected clock)
    /// instead of the system clock.
    #[must_use]
    pub fn with_clock(mut self, clock: NowFn) -> EventSink {
        self.clock = Some(clock);
        self
    }

    /// The gateway's clock (corrected towards the platform's when the gateway set one),
    /// Unix milliseconds: drivers check camera capture times against it.
    pub fn now_ms(&self) -> i64 {
        match &self.clock {
            Some(f) => f(),
            None => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        }
    }

    /// Hand an event to the gateway and wait until it is durable or refused.
    ///
    /// Waits while the queue is full (back-pressure to the source; see the crate docs).
    pub async fn submit(&self, event: Event) -> Result<Accepted, SinkError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Submission { event, reply })
            .await
            .map_err(|_| SinkError::Closed)?;
        answer.await.map_err(|_| SinkError::Closed)?
    }
}

/// A driver failed in a way it cannot recover from by itself (bad settings).
/// Transient faults (port missing, broker down) are retried inside the driver instead.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("driver {driver}: {message}")]
    Fatal { driver: String, message: String },
}

/// The future a driver runs as.
pub type DriverFuture = Pin<Box<dyn Future<Output = Result<(), DriverError>> + Send>>;

/// A source of events. Runs until `shutdown` is cancelled; never stops the others.
pub trait Driver: Send + 'static {
    /// The configured name, used in logs and status.
    fn name(&self) -> &str;
    /// Run until shutdown. Submit through `sink`; ack the source only after `submit` returned.
    fn run(self: Box<Self>, sink: EventSink, shutdown: CancellationToken) -> DriverFuture;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn submit_returns_what_the_ingest_side_answered() {
        let (sink, mut rx) = EventSink::channel(1);
        let server = tokio::spawn(async move {
            let sub = rx.recv().await.expect("one submission");
            let _ = sub.reply.send(Ok(Accepted::Stored(7)));
        });
        let got = sink
            .submit(Event::Pass {
                loop_name: "l".into(),
                lane: Direction::In,
            })
            .await;
        assert_eq!(got, Ok(Accepted::Stored(7)));
        server.await.expect("server task");
    }

    #[tokio::test]
    async fn submit_reports_closed_when_the_gateway_is_gone() {
        let (sink, rx) = EventSink::channel(1);
        drop(rx);
        let got = sink
            .submit(Event::Pass {
                loop_name: "l".into(),
                lane: Direction::Out,
            })
            .await;
        assert_eq!(got, Err(SinkError::Closed));
    }
}
