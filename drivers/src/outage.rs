//! One back-off and one outage reporter, shared by the gateway's uploader and every driver
//! (serial ports, MQTT brokers, Modbus buses), so a lasting fault reads the same wherever it
//! happens and never floods the journal.
//!
//! ## What an outage writes
//!
//! | when | level | line |
//! |---|---|---|
//! | the first failed attempt | WARN (ERROR for faults an operator must fix) | `platform unreachable (connection refused)` |
//! | while it lasts: 5 min after the start, then at gaps doubling to at most 1 h | same | `platform still unreachable for 37 min, 412 attempts, 120 pending (last: connection refused)` |
//! | the first success after it | INFO | `platform reachable again after 3 h 12 min (2210 attempts)` |
//!
//! Every other attempt is logged at DEBUG only. So one hour of outage writes five lines per
//! thing that is down, however fast it retries.
//!
//! Times come from tokio's clock, so a test with a paused clock sees the same lines a real
//! hour would write.

use std::fmt::Display;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use tokio::time::Instant;

/// Capped exponential back-off: `base`, doubling after every failure up to `cap`;
/// optionally with full jitter (uniform in `0..=` that), so many gateways do not retry in
/// step after a platform outage.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
    jitter: bool,
}

impl Backoff {
    /// No jitter: `base`, `2·base`, `4·base`, … up to `cap`.
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            failures: 0,
            jitter: false,
        }
    }

    /// The same, each delay drawn uniformly from zero up to it ("full jitter").
    #[must_use]
    pub fn with_full_jitter(mut self) -> Backoff {
        self.jitter = true;
        self
    }

    /// The delay after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        self.next_capped(self.cap)
    }

    /// The delay after one more failure, capped at `cap` instead of the usual cap (the
    /// uploader waits longer after a fault an operator must fix).
    pub fn next_capped(&mut self, cap: Duration) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.failures.min(20));
        self.failures = self.failures.saturating_add(1);
        let top = exp.min(cap);
        if self.jitter {
            let ms = u64::try_from(top.as_millis()).unwrap_or(u64::MAX);
            Duration::from_millis(random_up_to(ms))
        } else {
            top
        }
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Back to `base` after a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// A random number in `0..=max` (std's randomly keyed hasher: good enough for jitter).
fn random_up_to(max: u64) -> u64 {
    if max == 0 {
        return 0;
    }
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(max);
    let r = h.finish();
    match max.checked_add(1) {
        Some(n) => r % n,
        None => r,
    }
}

/// How loud an outage is: WARN for things that come back by themselves, ERROR for faults an
/// operator must fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// A device or a network is away; retried, nothing lost.
    Warn,
    /// Someone must act (a refused configuration).
    Error,
}

/// What [`Outage::failed`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logged {
    /// The first failure: "… unreachable (reason)".
    Start,
    /// A periodic "still …" line.
    Summary,
    /// Nothing above DEBUG.
    Quiet,
}

/// The first summary comes this long after the outage began.
pub const FIRST_SUMMARY: Duration = Duration::from_secs(5 * 60);
/// The gaps between summaries double up to this.
pub const MAX_SUMMARY_GAP: Duration = Duration::from_secs(60 * 60);

#[derive(Debug, Clone)]
struct Down {
    since: Instant,
    attempts: u64,
    next_summary: Instant,
    gap: Duration,
}

/// Reports one lasting fault of one thing (the platform, a broker, a port, a bus): a line
/// when it starts, a summary now and then while it lasts, a line when it ends (see the
/// module docs).
#[derive(Debug, Clone)]
pub struct Outage {
    subject: String,
    down_word: &'static str,
    up_word: &'static str,
    severity: Severity,
    down: Option<Down>,
}

impl Outage {
    /// `subject` names the thing ("platform", "serial port /dev/ttyUSB0"); `down_word` says
    /// what is wrong ("unreachable"), `up_word` what it is again ("reachable again").
    pub fn new(subject: impl Into<String>, down_word: &'static str, up_word: &'static str) -> Self {
        Outage {
            subject: subject.into(),
            down_word,
            up_word,
            severity: Severity::Warn,
            down: None,
        }
    }

    /// Log the start and the summaries at `severity`.
    #[must_use]
    pub fn severity(mut self, severity: Severity) -> Self {
        self.severity = severity;
        self
    }

    /// Whether an outage is going on.
    pub fn is_down(&self) -> bool {
        self.down.is_some()
    }

    /// How long the current outage has lasted (zero when none).
    pub fn down_for(&self) -> Duration {
        self.down.as_ref().map_or(Duration::ZERO, |d| {
            Instant::now().saturating_duration_since(d.since)
        })
    }

    /// One more failed attempt, for `reason`.
    pub fn failed(&mut self, reason: &dyn Display) -> Logged {
        self.failed_with(reason, "")
    }

    /// One more failed attempt, for `reason`; `context` (e.g. "120 pending") is added to
    /// the summaries.
    pub fn failed_with(&mut self, reason: &dyn Display, context: &str) -> Logged {
        let now = Instant::now();
        let subject = self.subject.as_str();
        let Some(d) = self.down.as_mut() else {
            self.down = Some(Down {
                since: now,
                attempts: 1,
                next_summary: now + FIRST_SUMMARY,
                gap: FIRST_SUMMARY,
            });
            let msg = format!("{subject} {} ({reason})", self.down_word);
            match self.severity {
                Severity::Warn => tracing::warn!(subject, reason = %reason, "{msg}"),
                Severity::Error => tracing::error!(subject, reason = %reason, "{msg}"),
            }
            return Logged::Start;
        };
        d.attempts += 1;
        if now < d.next_summary {
            tracing::debug!(subject, reason = %reason, attempts = d.attempts, "{subject} still {}", self.down_word);
            return Logged::Quiet;
        }
        d.gap = (d.gap * 2).min(MAX_SUMMARY_GAP);
        d.next_summary = now + d.gap;
        let lasted = now.saturating_duration_since(d.since);
        let context = if context.is_empty() {
            String::new()
        } else {
            format!(", {context}")
        };
        let msg = format!(
            "{subject} still {} for {}, {} attempts{context} (last: {reason})",
            self.down_word,
            human_duration(lasted),
            d.attempts
        );
        let (attempts, down_s) = (d.attempts, lasted.as_secs());
        match self.severity {
            Severity::Warn => tracing::warn!(subject, attempts, down_s, reason = %reason, "{msg}"),
            Severity::Error => {
                tracing::error!(subject, attempts, down_s, reason = %reason, "{msg}");
            }
        }
        Logged::Summary
    }

    /// A success: ends the outage, if there was one (logged at INFO); returns how long it
    /// lasted.
    pub fn recovered(&mut self) -> Option<Duration> {
        let d = self.down.take()?;
        let lasted = Instant::now().saturating_duration_since(d.since);
        let subject = self.subject.as_str();
        tracing::info!(
            subject,
            attempts = d.attempts,
            down_s = lasted.as_secs(),
            "{subject} {} after {} ({} attempts)",
            self.up_word,
            human_duration(lasted),
            d.attempts
        );
        Some(lasted)
    }

    /// Forget an outage without logging its end (the thing was removed or stopped).
    pub fn forget(&mut self) {
        self.down = None;
    }
}

/// A duration as people say it: "45 s", "37 min", "3 h 12 min", "2 d 5 h".
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, mins) = (s / 86_400, s / 3_600 % 24, s / 60 % 60);
    if s < 60 {
        format!("{s} s")
    } else if s < 3_600 {
        format!("{mins} min")
    } else if s < 86_400 {
        if mins == 0 {
            format!("{hours} h")
        } else {
            format!("{hours} h {mins} min")
        }
    } else if hours == 0 {
        format!("{days} d")
    } else {
        format!("{days} d {hours} h")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_back_off_doubles_to_its_cap_and_starts_over_after_a_reset() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
        let d: Vec<u128> = (0..6).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(d, [500, 1000, 2000, 4000, 5000, 5000]);
        assert_eq!(b.failures(), 6);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(500));
    }

    #[test]
    fn a_jittered_back_off_stays_under_its_bound() {
        let mut b =
            Backoff::new(Duration::from_secs(1), Duration::from_secs(300)).with_full_jitter();
        for n in 0..30u32 {
            let top = Duration::from_secs(1).saturating_mul(1 << n.min(20));
            assert!(b.next_delay() <= top.min(Duration::from_secs(300)));
        }
        let mut b =
            Backoff::new(Duration::from_secs(1), Duration::from_secs(300)).with_full_jitter();
        for _ in 0..10 {
            b.next_delay();
        }
        let spread: std::collections::HashSet<_> = (0..20).map(|_| b.next_delay()).collect();
        assert!(spread.len() > 5, "jitter spreads the delays: {spread:?}");
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(human_duration(Duration::from_secs(45)), "45 s");
        assert_eq!(human_duration(Duration::from_secs(37 * 60 + 5)), "37 min");
        assert_eq!(
            human_duration(Duration::from_secs(3 * 3600 + 12 * 60)),
            "3 h 12 min"
        );
        assert_eq!(human_duration(Duration::from_secs(2 * 3600)), "2 h");
        assert_eq!(
            human_duration(Duration::from_secs(2 * 86_400 + 5 * 3600)),
            "2 d 5 h"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_hour_of_failures_every_five_seconds_logs_a_handful_of_lines() {
        let mut o = Outage::new("serial port /dev/ttyX", "cannot be opened", "open again");
        let mut logged = Vec::new();
        for _ in 0..720 {
            let l = o.failed_with(&"no such file", "");
            if l != Logged::Quiet {
                logged.push(l);
            }
            tokio::time::advance(Duration::from_secs(5)).await;
        }
        // The start, then summaries at 5, 15, 35 min.
        assert_eq!(
            logged,
            [
                Logged::Start,
                Logged::Summary,
                Logged::Summary,
                Logged::Summary
            ]
        );
        assert!(o.is_down());
        let lasted = o.recovered().expect("it was down");
        assert_eq!(lasted, Duration::from_secs(3600));
        assert!(!o.is_down());
        assert_eq!(o.recovered(), None, "the end is reported once");
        assert_eq!(
            o.failed(&"again"),
            Logged::Start,
            "a new outage starts over"
        );
    }
}
