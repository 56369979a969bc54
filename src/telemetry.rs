//! Figures counted while the gateway works, for `/metrics`: platform requests by command
//! and outcome with their latency, and the latency of the outbox's fsyncs (a dying SD card
//! shows there first). Kept process-wide (one gateway per process); the rest of `/metrics`
//! is read from the [`crate::snapshot::Snapshot`] at scrape time.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

/// Labels of one series.
pub(crate) type Labels = Vec<(&'static str, &'static str)>;

/// The process-wide figures.
#[derive(Debug)]
pub(crate) struct Telemetry {
    /// HTTP requests to the platform, by `command` and `outcome` (the verdict, or the kind
    /// of transport error).
    pub platform_requests: Family<Labels, Counter>,
    /// Seconds from sending a platform request to its answer (or error), by `command`.
    pub platform_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    /// Seconds one outbox `fdatasync` took.
    pub fsync_seconds: Histogram,
}

fn platform_histogram() -> Histogram {
    Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
}

/// The figures (created on first use).
pub(crate) fn get() -> &'static Telemetry {
    static T: OnceLock<Telemetry> = OnceLock::new();
    T.get_or_init(|| Telemetry {
        platform_requests: Family::default(),
        platform_seconds: Family::new_with_constructor(platform_histogram),
        fsync_seconds: Histogram::new([
            0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ]),
    })
}

/// One platform request was answered (or failed) after `elapsed`.
pub(crate) fn platform_request(command: &'static str, outcome: &'static str, elapsed: Duration) {
    let t = get();
    t.platform_requests
        .get_or_create(&vec![("command", command), ("outcome", outcome)])
        .inc();
    t.platform_seconds
        .get_or_create(&vec![("command", command)])
        .observe(elapsed.as_secs_f64());
}

/// One outbox fsync took `elapsed`.
pub(crate) fn outbox_fsync(elapsed: Duration) {
    get().fsync_seconds.observe(elapsed.as_secs_f64());
}

/// What `/proc` says about this process (Linux; zeros elsewhere).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct ProcessFigures {
    /// Resident memory, bytes.
    pub rss_bytes: u64,
    /// User and system CPU time, seconds.
    pub cpu_seconds: f64,
    /// When the process started, Unix seconds (0 when unknown).
    pub start_time_seconds: f64,
    /// Open file descriptors.
    pub open_fds: u64,
}

/// Read the process figures now.
pub(crate) fn process() -> ProcessFigures {
    let mut p = ProcessFigures::default();
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        p.rss_bytes = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024);
    }
    let ticks = clock_ticks();
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // After the command name (in parentheses, may hold spaces): state is field 0.
        if let Some((_, rest)) = stat.rsplit_once(") ") {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            p.cpu_seconds = (num(11) + num(12)) as f64 / ticks;
            let since_boot = num(19) as f64 / ticks;
            if let Some(btime) = boot_time() {
                p.start_time_seconds = btime as f64 + since_boot;
            }
        }
    }
    p.open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    p
}

/// Unix seconds of the boot (`btime` in `/proc/stat`).
fn boot_time() -> Option<u64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// Clock ticks per second (`/proc` counts CPU time in them).
fn clock_ticks() -> f64 {
    #[cfg(unix)]
    #[allow(unsafe_code)]
    {
        // SAFETY: sysconf only reads a system constant.
        let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if t > 0 {
            return t as f64;
        }
    }
    100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_figures_are_read_from_proc() {
        let p = process();
        if std::path::Path::new("/proc/self/stat").exists() {
            assert!(p.rss_bytes > 1 << 20, "{p:?}");
            assert!(p.start_time_seconds > 1.6e9, "{p:?}");
            assert!(p.open_fds > 2, "{p:?}");
        }
    }
}
