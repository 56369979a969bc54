//! The gateway's ingest keeps every pass a driver hands it, whatever its secondary values.

use crate::common;

use std::time::Duration;

use common::{plate, start};
use lotlink::drivers::{Accepted, Event};

const T: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_pass_with_a_time_the_calendar_cannot_hold_is_stored_at_the_gateway_clock() {
    let h = start("").await;
    let Event::Plate(mut ev) = plate("k-far", "晋A12345", Some(common::small_jpeg(1))) else {
        unreachable!("plate() builds a plate event")
    };
    // Far beyond what a date can hold: it used to make ingest refuse the pass as invalid.
    ev.captured_at_ms = Some(i64::MAX);
    let r = h.feed.send(Event::Plate(ev)).await;
    assert!(matches!(r, Ok(Accepted::Stored(_))), "{r:?}");
    assert!(h.sim.wait_for_records(1, T).await);
    let rec = &h.sim.records()[0];
    assert_eq!(rec["carNo"], "晋A12345");
    let remark = rec["remark"].as_str().unwrap_or("");
    assert!(remark.contains("时间无效"), "{remark}");
    let year = rec["inOutTime"]
        .as_str()
        .unwrap_or("")
        .get(..4)
        .unwrap_or("");
    assert!(year.parse::<i32>().is_ok_and(|y| y >= 2026), "{rec}");
    h.gw.stop().await;
    h.sim.shutdown().await;
}
