//! The minute summary: per-event log lines are at debug; at the default level the gateway
//! writes one INFO line a minute while events flow ("42 stored, 42 delivered, 0 pending"),
//! and nothing while they do not (a quiet journal on an SD card).
//!
//! The task sets no timer while the gateway is idle: it waits for the next stored event,
//! then looks minute by minute while events are stored or records remain pending (a
//! backlog being delivered is flow too), writes a line for each minute in which something
//! was stored or delivered, and goes back to waiting after a quiet minute with nothing
//! pending.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How often the summary is written while events flow.
pub(crate) const PERIOD: Duration = Duration::from_secs(60);

/// Events stored since start; ingest counts, the summary task reads.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    stored: AtomicU64,
    woken: Notify,
}

impl Tally {
    /// Count one stored event (wakes an idle summary task).
    pub(crate) fn stored(&self) {
        self.stored.fetch_add(1, Ordering::AcqRel);
        self.woken.notify_one();
    }

    /// Events stored since start.
    pub(crate) fn stored_total(&self) -> u64 {
        self.stored.load(Ordering::Acquire)
    }
}

/// One minute's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Minute {
    /// Events stored in the minute.
    pub stored: u64,
    /// Records delivered to the platform in the minute.
    pub delivered: u64,
    /// Records pending at its end.
    pub pending: u64,
}

/// The summary's bookkeeping, without time: what was counted at the last look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Summary {
    stored: u64,
    delivered: u64,
}

impl Summary {
    /// Start from these running totals.
    pub(crate) fn new(stored_total: u64, delivered_total: u64) -> Summary {
        Summary {
            stored: stored_total,
            delivered: delivered_total,
        }
    }

    /// Nothing stored since the last look and nothing pending: wait for an event, no timer.
    pub(crate) fn idle(&self, stored_total: u64, pending: u64) -> bool {
        pending == 0 && stored_total == self.stored
    }

    /// A minute has passed with these totals: its line, if anything was stored or delivered.
    pub(crate) fn minute(
        &mut self,
        stored_total: u64,
        delivered_total: u64,
        pending: u64,
    ) -> Option<Minute> {
        let m = Minute {
            stored: stored_total.saturating_sub(self.stored),
            delivered: delivered_total.saturating_sub(self.delivered),
            pending,
        };
        (self.stored, self.delivered) = (stored_total, delivered_total);
        (m.stored > 0 || m.delivered > 0).then_some(m)
    }
}

/// Log a minute at INFO.
pub(crate) fn log_minute(m: Minute) {
    tracing::info!(
        stored = m.stored,
        delivered = m.delivered,
        pending = m.pending,
        "{} stored, {} delivered, {} pending in the last minute",
        m.stored,
        m.delivered,
        m.pending
    );
}

/// Report every [`PERIOD`] while events flow (module docs) until `stop`. `delivered` is
/// the running total of delivered records, `pending` the outbox's pending count; `report`
/// gets each minute with something stored or delivered.
pub(crate) async fn run(
    tally: std::sync::Arc<Tally>,
    delivered: impl Fn() -> u64 + Send,
    pending: impl Fn() -> u64 + Send,
    mut report: impl FnMut(Minute) + Send,
    stop: CancellationToken,
) {
    let mut summary = Summary::new(tally.stored_total(), delivered());
    loop {
        if summary.idle(tally.stored_total(), pending()) {
            // Idle: no timer until the next event is stored.
            tokio::select! {
                () = stop.cancelled() => return,
                () = tally.woken.notified() => {}
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(PERIOD) => {}
        }
        if let Some(m) = summary.minute(tally.stored_total(), delivered(), pending()) {
            report(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_minute_while_events_flow_and_none_while_idle() {
        let mut s = Summary::new(0, 0);
        assert!(s.idle(0, 0), "nothing stored, nothing pending: no timer");
        // 42 stored and delivered within a minute: one line.
        assert!(!s.idle(42, 0));
        assert_eq!(
            s.minute(42, 42, 0),
            Some(Minute {
                stored: 42,
                delivered: 42,
                pending: 0
            })
        );
        // A quiet minute after: no line, and back to waiting without a timer.
        assert_eq!(s.minute(42, 42, 0), None);
        assert!(s.idle(42, 0));
        // A backlog delivered with no new events still reports while records are pending.
        assert!(!s.idle(43, 5));
        assert_eq!(
            s.minute(43, 42, 5),
            Some(Minute {
                stored: 1,
                delivered: 0,
                pending: 5
            })
        );
        assert!(!s.idle(43, 5), "records pending: keep looking each minute");
        assert_eq!(
            s.minute(43, 45, 2),
            Some(Minute {
                stored: 0,
                delivered: 3,
                pending: 2
            })
        );
        // Pending records that are not moving (platform down): looked at, never logged.
        assert_eq!(s.minute(43, 45, 2), None);
    }

    #[test]
    fn the_minute_line_says_stored_delivered_and_pending() {
        use std::io::Write;
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let sub = tracing_subscriber::fmt()
            .with_writer({
                let buf = buf.clone();
                move || buf.clone()
            })
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(sub, || {
            log_minute(Minute {
                stored: 42,
                delivered: 42,
                pending: 0,
            });
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.contains("INFO") && text.contains("42 stored, 42 delivered, 0 pending"),
            "{text}"
        );
    }
}
