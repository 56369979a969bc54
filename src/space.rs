//! Space tracking: the occupied count, persisted in the outbox, and the coalesced
//! `parkSpace` report derived from it (`surplus = total − occupied`, clamped to `0..=total`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use lotlink_drivers::loops::{counter_delta, CounterStep};
use lotlink_drivers::Direction;

use crate::outbox::{Outbox, OutboxError};

/// What moves the occupied count (a setting: `[space] source`).
pub(crate) use crate::config::SpaceSource;

/// The persisted state: one value, written in one insert, so the occupied count and the
/// counter readings it was derived from can never disagree after a crash.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
struct State {
    total: u64,
    occupied: u64,
    /// Last counter reading per counter-mode loop.
    #[serde(default)]
    counters: BTreeMap<String, u64>,
}

/// The lot's occupied count. Cheap to clone.
#[derive(Clone)]
pub struct SpaceTracker {
    outbox: Outbox,
    source: Arc<Mutex<SpaceSource>>,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for SpaceTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpaceTracker")
            .field("source", &self.source())
            .finish_non_exhaustive()
    }
}

impl SpaceTracker {
    /// Load the persisted occupied count and publish the current report.
    pub fn new(
        outbox: Outbox,
        total: u32,
        source: SpaceSource,
    ) -> Result<SpaceTracker, OutboxError> {
        let mut state = match outbox.settings().space_state()? {
            Some(text) => serde_json::from_str::<State>(&text).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "stored space state unreadable; starting from 0 occupied");
                State::default()
            }),
            None => State {
                occupied: outbox.settings().occupied_v1()?.unwrap_or(0),
                ..State::default()
            },
        };
        state.total = u64::from(total);
        state.occupied = state.occupied.min(state.total);
        let t = SpaceTracker {
            outbox,
            source: Arc::new(Mutex::new(source)),
            state: Arc::new(Mutex::new(state)),
        };
        t.update(|_| ())?;
        Ok(t)
    }

    /// (total, occupied, free).
    pub fn figures(&self) -> (u64, u64, u64) {
        let s = self.lock();
        (s.total, s.occupied, s.total.saturating_sub(s.occupied))
    }

    /// The last counter reading remembered for a counter-mode loop.
    pub fn last_counter(&self, loop_name: &str) -> Option<u64> {
        self.lock().counters.get(loop_name).copied()
    }

    /// What moves the count.
    pub fn source(&self) -> SpaceSource {
        *self
            .source
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A reloaded `[space]`: the new total (the occupied count is kept, clamped) and source.
    /// The report changes (and is sent) only when the figures change.
    pub fn reconfigure(&self, total: u32, source: SpaceSource) -> Result<(), OutboxError> {
        *self
            .source
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = source;
        if self.lock().total != u64::from(total) {
            self.update(|s| s.total = u64::from(total))?;
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Change the state and persist it (state and space report) before the lock is released,
    /// so concurrent updates reach the store in the order they were made.
    fn update<R>(&self, f: impl FnOnce(&mut State) -> R) -> Result<R, OutboxError> {
        let mut s = self.lock();
        let mut next = s.clone();
        let r = f(&mut next);
        next.occupied = next.occupied.min(next.total);
        let text = serde_json::to_string(&next)
            .map_err(|e| OutboxError::Store(format!("space state: {e}")))?;
        self.outbox.settings().set_space_state(&text)?;
        self.outbox
            .settings()
            .set_space(next.total, next.total.saturating_sub(next.occupied))?;
        *s = next;
        Ok(r)
    }

    fn step(s: &mut State, lane: Direction, passes: u64) {
        match lane {
            Direction::In => s.occupied = s.occupied.saturating_add(passes).min(s.total),
            Direction::Out => s.occupied = s.occupied.saturating_sub(passes),
        }
    }

    /// A plate event was stored: moves the count when the source is `plates`.
    pub fn on_plate(&self, direction: Direction) {
        if self.source() == SpaceSource::Plates {
            if let Err(e) = self.update(|s| Self::step(s, direction, 1)) {
                tracing::warn!(error = %e, "space count not updated");
            }
        }
    }

    /// A loop pass: moves the count when the source is `loops`. Persisted before it returns.
    pub async fn on_pass(&self, loop_name: &str, lane: Direction) -> Result<(), OutboxError> {
        if self.source() == SpaceSource::Loops {
            self.update(|s| Self::step(s, lane, 1))?;
            tracing::debug!(loop_name, lane = lane.as_str(), "loop pass counted");
            self.outbox.flush().await?;
        }
        Ok(())
    }

    /// A counter reading: moves the count by the passes since the last reading of this
    /// loop (wrap-around and module reboots handled), and remembers the reading in the same
    /// write. The first reading ever is a baseline. Persisted before it returns.
    pub async fn on_counter(
        &self,
        loop_name: &str,
        lane: Direction,
        value: u64,
        bits: u8,
    ) -> Result<u64, OutboxError> {
        let counts = self.source() == SpaceSource::Loops;
        let step = self.update(|s| {
            let last = s.counters.get(loop_name).copied();
            let step = counter_delta(last, value, bits);
            s.counters.insert(loop_name.to_string(), value);
            if counts {
                Self::step(s, lane, step.passes());
            }
            step
        })?;
        match step {
            CounterStep::Reset(n) => {
                tracing::warn!(
                    loop_name,
                    value,
                    counted = n,
                    "loop counter went back: module restarted; counting its new value"
                );
            }
            CounterStep::Wrap(n) => {
                tracing::debug!(loop_name, value, counted = n, "loop counter wrapped");
            }
            _ => {}
        }
        self.outbox.flush().await?;
        Ok(step.passes())
    }

    /// Re-base the occupied count (operator count by hand).
    pub async fn set_occupied(&self, n: u64) -> Result<(), OutboxError> {
        self.update(|s| s.occupied = n)?;
        self.outbox.flush().await
    }
}
