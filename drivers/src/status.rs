//! What a driver reports about itself: connected or not (and since when), the last event,
//! how many events and how many bad inputs. Shared between the driver (writer) and the
//! gateway's status page (reader); lock-free counters, one small mutex for the text.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A point-in-time copy of a driver's status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StatusSnapshot {
    /// The driver's configured name.
    pub name: String,
    /// The driver kind (`mqtt`, `serial`, `modbus`, …).
    pub kind: String,
    /// Connected to its source right now.
    pub connected: bool,
    /// Unix ms of the last change of `connected` (0 = never connected).
    pub since_ms: i64,
    /// Unix ms of the last event handed to the gateway (0 = none yet).
    pub last_event_ms: i64,
    /// Unix ms the device was last heard from: an event, or a sign of life such as a
    /// heartbeat (0 = never).
    pub last_heard_ms: i64,
    /// Events handed to the gateway.
    pub events: u64,
    /// Inputs that could not be understood (garbage, bad frames, bad JSON).
    pub bad_inputs: u64,
    /// Plates that did not follow the Chinese plate rules (still reported).
    pub unusual_plates: u64,
    /// The last such plate, as reported.
    pub last_unusual_plate: Option<String>,
    /// Camera values replaced by a default (unknown style or colour, impossible time,
    /// unknown direction); the pass was kept and its `remark` says what was replaced.
    pub defaulted: u64,
    /// The camera's clock is wrong: its last live capture time was before 2020 or further
    /// ahead of the gateway's clock than `max_camera_skew` (receipt times are sent instead).
    pub clock_wrong: bool,
    /// The last problem, if any (never contains secrets).
    pub last_problem: Option<String>,
    /// Messages received from the source and not yet stored and acknowledged (the MQTT
    /// hub's flow control: it stops reading from the broker above its limit).
    pub in_hand: u64,
    /// The highest `in_hand` since start.
    pub in_hand_peak: u64,
}

#[derive(Debug, Default)]
struct Inner {
    name: String,
    kind: String,
    connected: AtomicBool,
    since_ms: AtomicI64,
    last_event_ms: AtomicI64,
    last_heard_ms: AtomicI64,
    events: AtomicU64,
    bad_inputs: AtomicU64,
    unusual_plates: AtomicU64,
    last_unusual_plate: Mutex<Option<String>>,
    defaulted: AtomicU64,
    clock_wrong: AtomicBool,
    last_problem: Mutex<Option<String>>,
    in_hand: AtomicU64,
    in_hand_peak: AtomicU64,
}

/// A driver's live status. Cheap to clone; all clones share the figures.
#[derive(Debug, Clone, Default)]
pub struct DriverStatus {
    inner: Arc<Inner>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl DriverStatus {
    /// A fresh status for a driver called `name` of kind `kind`.
    pub fn new(name: &str, kind: &str) -> DriverStatus {
        DriverStatus {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                kind: kind.to_owned(),
                ..Inner::default()
            }),
        }
    }

    /// The driver's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Record a connection change; returns true when it actually changed (log once).
    pub fn set_connected(&self, connected: bool) -> bool {
        let was = self.inner.connected.swap(connected, Ordering::AcqRel);
        if was != connected {
            self.inner.since_ms.store(now_ms(), Ordering::Release);
        }
        was != connected
    }

    /// Whether the driver is connected right now.
    pub fn connected(&self) -> bool {
        self.inner.connected.load(Ordering::Acquire)
    }

    /// Count an event handed to the gateway (the device was heard from, too).
    pub fn event(&self) {
        self.inner.events.fetch_add(1, Ordering::AcqRel);
        let now = now_ms();
        self.inner.last_event_ms.store(now, Ordering::Release);
        self.inner.last_heard_ms.store(now, Ordering::Release);
    }

    /// Note a sign of life from the device (a heartbeat, any valid message).
    pub fn heard(&self) {
        self.inner.last_heard_ms.store(now_ms(), Ordering::Release);
    }

    /// Count a bad input; returns the new total (callers rate-limit logs with it).
    pub fn bad_input(&self, what: &str) -> u64 {
        self.set_problem(what);
        self.inner.bad_inputs.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Count a plate that does not follow the plate rules and remember it; returns the new
    /// total (callers rate-limit logs with it).
    pub fn unusual_plate(&self, plate: &str) -> u64 {
        *lock(&self.inner.last_unusual_plate) = Some(plate.chars().take(32).collect());
        self.inner.unusual_plates.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Count a camera value replaced by a default; returns the new total.
    pub fn defaulted(&self) -> u64 {
        self.inner.defaulted.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Record whether the camera's clock is wrong; returns true when it changed (log once).
    pub fn set_clock_wrong(&self, wrong: bool) -> bool {
        self.inner.clock_wrong.swap(wrong, Ordering::AcqRel) != wrong
    }

    /// Remember the last problem (shown in status).
    pub fn set_problem(&self, what: &str) {
        *lock(&self.inner.last_problem) = Some(what.chars().take(200).collect());
    }

    /// Record how many messages the driver holds (received, not yet stored and acknowledged).
    pub fn set_in_hand(&self, n: u64) {
        self.inner.in_hand.store(n, Ordering::Release);
        self.inner.in_hand_peak.fetch_max(n, Ordering::AcqRel);
    }

    /// A copy of the figures.
    pub fn snapshot(&self) -> StatusSnapshot {
        let i = &self.inner;
        StatusSnapshot {
            name: i.name.clone(),
            kind: i.kind.clone(),
            connected: i.connected.load(Ordering::Acquire),
            since_ms: i.since_ms.load(Ordering::Acquire),
            last_event_ms: i.last_event_ms.load(Ordering::Acquire),
            last_heard_ms: i.last_heard_ms.load(Ordering::Acquire),
            events: i.events.load(Ordering::Acquire),
            bad_inputs: i.bad_inputs.load(Ordering::Acquire),
            unusual_plates: i.unusual_plates.load(Ordering::Acquire),
            last_unusual_plate: lock(&i.last_unusual_plate).clone(),
            defaulted: i.defaulted.load(Ordering::Acquire),
            clock_wrong: i.clock_wrong.load(Ordering::Acquire),
            last_problem: lock(&i.last_problem).clone(),
            in_hand: i.in_hand.load(Ordering::Acquire),
            in_hand_peak: i.in_hand_peak.load(Ordering::Acquire),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Lets a driver log the first few occurrences of a repeated problem and then only every
/// `every`-th, so a babbling device cannot flood the journal.
pub fn should_log(count: u64) -> bool {
    count <= 5 || count.is_power_of_two()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_change_is_reported_once() {
        let s = DriverStatus::new("cam", "serial");
        assert!(s.set_connected(true));
        assert!(!s.set_connected(true));
        assert!(s.snapshot().connected);
        assert!(s.snapshot().since_ms > 0);
        assert!(s.set_connected(false));
    }

    #[test]
    fn repeated_problems_are_logged_sparsely() {
        let logged = (1..=1000).filter(|n| should_log(*n)).count();
        assert!(logged < 15, "{logged}");
    }
}
