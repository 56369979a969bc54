//! Space tracking: the occupied count, persisted in the outbox, and the coalesced
//! `parkSpace` report derived from it (`surplus = total − occupied`, clamped to `0..=total`).

use std::sync::{Arc, Mutex};

use lotlink_drivers::Direction;

use crate::outbox::{Outbox, OutboxError};

/// What moves the occupied count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpaceSource {
    /// Loop-detector passes.
    Loops,
    /// Plate events at the cameras.
    Plates,
}

#[derive(Debug)]
struct State {
    total: u64,
    occupied: u64,
}

/// The lot's occupied count. Cheap to clone.
#[derive(Clone)]
pub struct SpaceTracker {
    outbox: Outbox,
    source: SpaceSource,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for SpaceTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpaceTracker")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

const OCCUPIED: &str = "occupied";

impl SpaceTracker {
    /// Load the persisted occupied count and publish the current report.
    pub fn new(
        outbox: Outbox,
        total: u32,
        source: SpaceSource,
    ) -> Result<SpaceTracker, OutboxError> {
        let occupied = outbox
            .setting(OCCUPIED)?
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
            .min(u64::from(total));
        let t = SpaceTracker {
            outbox,
            source,
            state: Arc::new(Mutex::new(State {
                total: u64::from(total),
                occupied,
            })),
        };
        t.publish()?;
        Ok(t)
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut g = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut g)
    }

    /// (total, occupied, free).
    pub fn figures(&self) -> (u64, u64, u64) {
        self.with(|s| (s.total, s.occupied, s.total.saturating_sub(s.occupied)))
    }

    fn publish(&self) -> Result<(), OutboxError> {
        let (total, occupied, free) = self.figures();
        self.outbox.set_setting(OCCUPIED, &occupied.to_string())?;
        self.outbox.set_space(total, free)?;
        Ok(())
    }

    fn step(&self, lane: Direction) -> Result<(), OutboxError> {
        self.with(|s| match lane {
            Direction::In => s.occupied = (s.occupied + 1).min(s.total),
            Direction::Out => s.occupied = s.occupied.saturating_sub(1),
        });
        self.publish()
    }

    /// A plate event was stored: moves the count when the source is `plates`.
    pub fn on_plate(&self, direction: Direction) {
        if self.source == SpaceSource::Plates {
            if let Err(e) = self.step(direction) {
                tracing::warn!(error = %e, "space count not updated");
            }
        }
    }

    /// A loop pass: moves the count when the source is `loops`. Persisted before it returns.
    pub async fn on_pass(&self, loop_name: &str, lane: Direction) -> Result<(), OutboxError> {
        if self.source == SpaceSource::Loops {
            self.step(lane)?;
            tracing::debug!(loop_name, lane = lane.as_str(), "loop pass counted");
            self.outbox.flush().await?;
        }
        Ok(())
    }

    /// Re-base the occupied count (operator count by hand).
    pub async fn set_occupied(&self, n: u64) -> Result<(), OutboxError> {
        self.with(|s| s.occupied = n.min(s.total));
        self.publish()?;
        self.outbox.flush().await
    }
}
