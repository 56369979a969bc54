//! The gateway's clock: Unix milliseconds, corrected towards the platform's clock as its
//! `Date` headers teach it. A leaf: it uses nothing else of the gateway.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The gateway's clock, corrected by the offset learned from the platform's `Date` headers.
#[derive(Debug, Default)]
pub struct Clock {
    offset_ms: AtomicI64,
    learned: std::sync::atomic::AtomicBool,
}

impl Clock {
    /// Unix milliseconds of the local clock.
    pub fn local_ms() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }
    /// Unix milliseconds, corrected towards the platform's clock.
    pub fn now_ms(&self) -> i64 {
        Self::local_ms() + self.offset_ms.load(Ordering::Relaxed)
    }
    /// The current offset (platform − local), milliseconds.
    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }
    /// Whether an offset has been learned since start.
    pub fn is_learned(&self) -> bool {
        self.learned.load(Ordering::Relaxed)
    }
    /// Learn from a `Date` header seen at local time `local_ms`. The header has one-second
    /// resolution, so the platform's time is taken as the middle of that second.
    pub fn learn_from_date(&self, date: &str, local_ms: i64) -> bool {
        let Ok(t) = httpdate::parse_http_date(date) else {
            return false;
        };
        let Ok(d) = t.duration_since(UNIX_EPOCH) else {
            return false;
        };
        let platform_ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX) + 500;
        let offset = platform_ms - local_ms;
        // Within ±1 s is the header's own resolution: keep a zero offset then, so a healthy
        // clock is not nudged around by rounding.
        let offset = if offset.abs() <= 1_000 { 0 } else { offset };
        self.offset_ms.store(offset, Ordering::Relaxed);
        self.learned.store(true, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_clock_learns_a_one_hour_offset_from_a_date_header() {
        let c = Clock::default();
        let local = Clock::local_ms();
        let ahead = SystemTime::now() + Duration::from_secs(3600);
        assert!(c.learn_from_date(&httpdate::fmt_http_date(ahead), local));
        let off = c.offset_ms();
        assert!((3_598_000..=3_601_500).contains(&off), "offset {off}");
        assert!(!c.learn_from_date("yesterday", local));
    }

    #[test]
    fn a_date_within_a_second_keeps_a_zero_offset() {
        let c = Clock::default();
        let local = Clock::local_ms();
        c.learn_from_date(&httpdate::fmt_http_date(SystemTime::now()), local);
        assert_eq!(c.offset_ms(), 0);
    }
}
