//! A slow uplink must drain: a backlog of 200 image records (pictures near the platform's
//! 50,000-character limit) goes through a throttling proxy on 127.0.0.1 to the simulator,
//! whose `ts` window is checked once the whole body has arrived. Time is scaled by
//! [`SCALE`] (the link runs that much faster and the window is that much shorter), which
//! keeps what the gateway must solve and keeps the test short. The drain rates are measured
//! by `cargo bench --bench pipeline` (`LOTLINK_BENCH_ONLY=slowlink`), not here.

use crate::common;

use std::time::Duration;

use common::throttle::drain_backlog;

/// Time scale: a 1 Mbit/s link with a 10 s window behaves as 5 Mbit/s with 2 s.
const SCALE: u32 = 5;
const RECORDS: usize = 200;
const DEADLINE: Duration = Duration::from_secs(150);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_record_image_backlog_drains_completely_over_1_mbit_per_s() {
    let d = drain_backlog(1_000_000, RECORDS, SCALE, DEADLINE).await;
    eprintln!("1 Mbit/s (time scale {SCALE}): {d:?}");
    assert_eq!(d.delivered, RECORDS, "{d:?}");
    assert_eq!(d.unique, RECORDS, "each once: {d:?}");
    assert_eq!(d.dead, 0);
    assert!(
        d.batch_sizes.iter().any(|&n| n > 1),
        "the link carries several records per request: {d:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_record_image_backlog_drains_over_256_kbit_per_s_one_record_per_request() {
    let d = drain_backlog(256_000, RECORDS, SCALE, DEADLINE).await;
    eprintln!("256 kbit/s (time scale {SCALE}): {d:?}");
    assert_eq!(d.delivered, RECORDS, "{d:?}");
    assert_eq!(d.unique, RECORDS, "each once: {d:?}");
    assert_eq!(d.dead, 0);
    let singles = d.batch_sizes.iter().filter(|&&n| n == 1).count();
    assert!(
        singles * 10 >= d.batch_sizes.len() * 9,
        "one record per request (at least 9 in 10): {:?}",
        d.batch_sizes
    );
}

/// At 24 kbit/s one ~45 KB record takes 15 s, longer than the `ts` window: it goes with its
/// picture shrunk further (said in `remark`), never dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_too_big_for_the_window_goes_with_a_smaller_picture_and_a_remark() {
    let d = drain_backlog(24_000, 4, SCALE, DEADLINE).await;
    eprintln!("24 kbit/s (time scale {SCALE}): {d:?}");
    assert_eq!(d.delivered, 4, "{d:?}");
    assert_eq!(d.dead, 0);
    assert!(d.shrunk >= 1, "a picture was shrunk for the link: {d:?}");
    assert!(d.image_chars < 4 * 44_000, "smaller pictures went: {d:?}");
}
