//! End to end: the real pipeline (ingest → sled outbox → uploader → signed HTTP) against the
//! platform simulator, one behaviour of the spec per test.

use crate::common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use lotlink::drivers::Accepted;
use lotlink_sim::{Mode, Route, Scripted, SimConfig, TsUnit};

const T: Duration = Duration::from_secs(30);

async fn submit_n(h: &Harness, n: usize, prefix: &str) {
    for i in 0..n {
        let r = h
            .feed
            .send(plate(
                &format!("{prefix}{i}"),
                &format!("{prefix}{i:03}"),
                Some(small_jpeg(i as u64)),
            ))
            .await;
        assert!(matches!(r, Ok(Accepted::Stored(_))), "{r:?}");
    }
}

fn last_error(h: &Harness) -> Option<String> {
    h.gw.health.lock().unwrap().last_error.clone().map(|e| e.0)
}

/// One record, with the next answers to carInOut scripted.
async fn one_record_with(script: Vec<Scripted>) -> Harness {
    let h = start("").await;
    h.sim.push_script(Route::CarInOut, script);
    submit_n(&h, 1, "P").await;
    h
}

#[tokio::test]
async fn records_are_delivered_once_in_order_with_every_field_the_platform_checks() {
    let h = start("").await;
    submit_n(&h, 5, "A").await;
    assert!(h.sim.wait_for_records(5, T).await);
    assert_eq!(
        delivered_plates(&h.sim),
        ["A000", "A001", "A002", "A003", "A004"]
    );
    let r = &h.sim.records()[0];
    assert_eq!(r["inOutType"], "in");
    assert_eq!(r["inOutTime"], "2025-11-28 08:00:00");
    assert_eq!(r["nodeName"], "入口1");
    assert_eq!(r["carColor"], "蓝");
    assert_eq!(r["carStyle"], "0");
    assert!(r["imgName"]
        .as_str()
        .unwrap()
        .starts_with("350_入口1_20251128080000_"));
    assert!(eventually(T, || h.gw.outbox.is_empty()).await);
}

#[tokio::test]
async fn a_backlog_of_250_goes_out_as_requests_of_100_100_and_50() {
    let h = start("").await;
    h.sim.set_mode(Mode::Refuse);
    submit_n(&h, 250, "B").await;
    assert_eq!(h.gw.outbox.len(), 250);
    h.sim.set_mode(Mode::Up);
    assert!(h.sim.wait_for_records(250, T).await);
    assert_eq!(h.sim.stats().batch_sizes, vec![100, 100, 50]);
    let plates = delivered_plates(&h.sim);
    let expected: Vec<String> = (0..250).map(|i| format!("B{i:03}")).collect();
    assert_eq!(plates, expected, "oldest first, each once");
}

/// A JPEG that passes through untouched but is near the 50,000-character budget.
fn big_jpeg(seed: u64) -> Vec<u8> {
    for q in (40..=95).rev().step_by(5) {
        let j = lotlink::testing::imaging::synth_jpeg(480, 360, seed, q);
        if lotlink::testing::imaging::b64_len(j.len()) <= 50_000 {
            return j;
        }
    }
    lotlink::testing::imaging::synth_jpeg(320, 240, seed, 60)
}

#[tokio::test]
async fn the_body_cap_is_respected_when_images_are_big() {
    let h = start("max_body = \"128KiB\"").await;
    h.sim.set_mode(Mode::Refuse);
    let img = big_jpeg(1);
    assert!(img.len() > 20_000, "test image is big: {}", img.len());
    for i in 0..12 {
        h.feed
            .send(plate(
                &format!("C{i}"),
                &format!("C{i:03}"),
                Some(img.clone()),
            ))
            .await
            .unwrap();
    }
    h.sim.set_mode(Mode::Up);
    assert!(h.sim.wait_for_records(12, T).await);
    let st = h.sim.stats();
    assert!(
        st.batch_sizes.len() >= 4,
        "split by size: {:?}",
        st.batch_sizes
    );
    for size in &st.car_in_out_body_sizes {
        assert!(*size <= 128 * 1024, "body of {size} bytes over the cap");
    }
}

#[tokio::test]
async fn a_poison_record_in_a_batch_of_100_is_dead_lettered_and_the_99_others_delivered() {
    let h = start("").await;
    h.sim.set_poison(Some("POISON".into()));
    h.sim.set_mode(Mode::Refuse);
    for i in 0..100 {
        let p = if i == 37 {
            "POISON".to_string()
        } else {
            format!("D{i:03}")
        };
        h.feed
            .send(plate(&format!("D{i}"), &p, Some(small_jpeg(i))))
            .await
            .unwrap();
    }
    h.sim.set_mode(Mode::Up);
    assert!(h.sim.wait_for_records(99, T).await);
    assert!(eventually(T, || h.gw.outbox.is_empty()).await);
    assert_eq!(h.gw.outbox.dead_len(), 1);
    let dead = h.gw.outbox.dead_list().unwrap();
    assert_eq!(dead[0].record.meta.car_no.as_deref(), Some("POISON"));
    assert!(dead[0].reason.starts_with("1502"), "{}", dead[0].reason);
    let plates: HashSet<String> = delivered_plates(&h.sim).into_iter().collect();
    assert_eq!(plates.len(), 99);
    assert!(!plates.contains("POISON"));
}

#[tokio::test]
async fn a_batch_refused_with_1004_for_one_known_record_still_delivers_the_99_new_ones() {
    let Harness { sim, dir, feed, gw } = start("").await;
    sim.set_mode(Mode::Refuse);
    let h = Harness { sim, dir, feed, gw };
    submit_n(&h, 100, "E").await;
    let Harness {
        sim,
        dir,
        feed: _,
        gw,
    } = h;
    // The platform already has the oldest record (an earlier answer was lost). Stop the
    // gateway, store that record at the platform by a request of our own (signed
    // independently of the gateway's client), then start the gateway again.
    let first = gw.outbox.peek(1, u64::MAX).unwrap();
    gw.stop().await;
    sim.set_mode(Mode::Up);
    let resp = reqwest::Client::new()
        .post(format!("{}/dataSync/carInOut", sim.url()))
        .header("Content-Type", "application/json;charset=UTF-8")
        .body(body_for(&sim, &first))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    assert_eq!(sim.records().len(), 1);
    let text = config_text(&sim.url(), &dir.path().join("outbox"), "");
    let cfg = lotlink::testing::config::from_str(std::path::Path::new("t.toml"), &text).unwrap();
    let gw = lotlink::testing::app::Gateway::start(&cfg, vec![], fast_options())
        .await
        .unwrap();
    assert!(sim.wait_for_records(100, T).await);
    assert!(eventually(T, || gw.outbox.is_empty()).await);
    assert!(
        sim.stats().rejected_with(1004) >= 1,
        "the whole batch was refused once"
    );
    assert_eq!(gw.outbox.dead_len(), 0);
    let plates: HashSet<String> = delivered_plates(&sim).into_iter().collect();
    assert_eq!(plates.len(), 100, "all 100 at the platform exactly once");
    assert_eq!(sim.records().len(), 100);
}

fn body_for(
    sim: &lotlink_sim::PlatformSim,
    recs: &[lotlink::testing::outbox::StoredRecord],
) -> String {
    let ts = sim.now_ms().to_string();
    format!(
        "{{\"cmd\":\"carInOut\",\"lotCode\":\"{LOT}\",\"ts\":\"{ts}\",\"auth\":\"{}\",\"data\":{}}}",
        lotlink_sim::sign("carInOut", LOT, &ts, TOKEN),
        lotlink::testing::uploader::records_json(recs)
    )
}

#[tokio::test]
async fn transient_codes_1003_1107_2000_are_retried_until_delivered() {
    for code in [1003, 1107, 2000] {
        let h = one_record_with(vec![Scripted::Code(code), Scripted::Code(code)]).await;
        assert!(h.sim.wait_for_records(1, T).await, "code {code}");
        assert_eq!(h.sim.stats().rejected_with(code), 2);
        assert_eq!(last_error(&h).as_deref(), Some(code.to_string().as_str()));
        assert!(eventually(T, || h.gw.outbox.is_empty()).await);
    }
}

#[tokio::test]
async fn configuration_fault_codes_keep_the_data_and_raise_a_health_fault() {
    for code in [1000, 1001, 1005, 1006, 1007, 1008, 1014] {
        let h = one_record_with(vec![Scripted::Code(code)]).await;
        assert!(h.sim.wait_for_records(1, T).await, "code {code}");
        assert_eq!(last_error(&h).as_deref(), Some(code.to_string().as_str()));
        assert_eq!(h.gw.outbox.dead_len(), 0);
    }
}

#[tokio::test]
async fn a_single_1002_is_cured_by_one_immediate_retry() {
    let h = one_record_with(vec![Scripted::Code(1002)]).await;
    assert!(h.sim.wait_for_records(1, T).await);
    assert_eq!(
        last_error(&h),
        None,
        "no back-off round: cured inside the call"
    );
}

#[tokio::test]
async fn a_persistent_1002_keeps_the_data_and_backs_off() {
    let h = one_record_with(vec![Scripted::Code(1002); 3]).await;
    assert!(h.sim.wait_for_records(1, T).await);
    assert_eq!(last_error(&h).as_deref(), Some("1002"));
    assert_eq!(h.gw.outbox.dead_len(), 0);
}

#[tokio::test]
async fn a_single_record_answered_1004_counts_as_delivered() {
    let h = one_record_with(vec![Scripted::Code(1004)]).await;
    assert!(eventually(T, || h.gw.outbox.is_empty()).await);
    assert_eq!(h.sim.records().len(), 0);
    assert_eq!(h.gw.outbox.dead_len(), 0);
    // The counter moves just after the record is deleted: wait for it, do not race it.
    assert!(eventually(T, || h.gw.health.lock().unwrap().delivered == 1).await);
}

#[tokio::test]
async fn a_single_record_answered_1501_or_1502_is_dead_lettered() {
    for code in [1501, 1502] {
        let h = one_record_with(vec![Scripted::Code(code)]).await;
        assert!(
            eventually(T, || h.gw.outbox.dead_len() == 1).await,
            "code {code}"
        );
        assert!(h.gw.outbox.is_empty());
        assert!(h.gw.outbox.dead_list().unwrap()[0]
            .reason
            .starts_with(&code.to_string()));
        assert_eq!(h.sim.records().len(), 0);
    }
}

#[tokio::test]
async fn code_2001_is_retried_twice_then_treated_as_1502() {
    let h = one_record_with(vec![Scripted::Code(2001); 2]).await;
    assert!(
        h.sim.wait_for_records(1, T).await,
        "two 2001s: still delivered"
    );
    let h = one_record_with(vec![Scripted::Code(2001); 3]).await;
    assert!(
        eventually(T, || h.gw.outbox.dead_len() == 1).await,
        "three 2001s: dead letter"
    );
    assert_eq!(h.sim.records().len(), 0);
}

#[tokio::test]
async fn http_500_resets_non_json_and_hangs_past_the_timeout_are_retried() {
    let h = one_record_with(vec![
        Scripted::Http(500),
        Scripted::Reset,
        Scripted::NonJson,
        Scripted::Http(404),
        Scripted::Hang,
    ])
    .await;
    assert!(h.sim.wait_for_records(1, T).await);
    assert_eq!(h.sim.pending_scripts(Route::CarInOut), 0);
    assert_eq!(h.gw.outbox.dead_len(), 0);
}

#[tokio::test]
async fn platform_down_for_a_while_then_back_delivers_every_record_once() {
    let h = start("").await;
    h.sim.set_mode(Mode::Refuse);
    submit_n(&h, 20, "F").await;
    h.sim.set_mode(Mode::Http500);
    assert!(
        h.sim
            .wait_until(T, |s| s.http_errors.get(&500).copied().unwrap_or(0) >= 2)
            .await
    );
    h.sim.set_mode(Mode::Reset);
    let c = h.sim.stats().connections;
    assert!(h.sim.wait_until(T, |s| s.connections >= c + 2).await);
    submit_n(&h, 10, "G").await;
    h.sim.set_mode(Mode::Up);
    assert!(h.sim.wait_for_records(30, T).await);
    let plates = delivered_plates(&h.sim);
    let unique: HashSet<&String> = plates.iter().collect();
    assert_eq!(plates.len(), 30);
    assert_eq!(unique.len(), 30);
    assert_eq!(plates[0], "F000");
    assert_eq!(plates[29], "G009");
}

#[tokio::test]
async fn with_the_platform_clock_an_hour_ahead_uploads_succeed_after_the_first_answer() {
    let mut cfg = SimConfig::new(LOT, TOKEN);
    cfg.skew_ms = 3_600_000;
    let sim = lotlink_sim::PlatformSim::start(cfg).await.unwrap();
    let h = start_with(sim, "").await;
    submit_n(&h, 3, "H").await;
    assert!(h.sim.wait_for_records(3, T).await);
    let off = h.gw.client.clock().offset_ms();
    assert!((3_595_000..=3_605_000).contains(&off), "offset {off}");
    assert_eq!(last_error(&h), None, "cured inside the first call");
}

#[tokio::test]
async fn ts_unit_auto_settles_on_seconds_when_the_platform_wants_seconds_and_remembers_it() {
    let mut cfg = SimConfig::new(LOT, TOKEN);
    cfg.ts_unit = TsUnit::S;
    let sim = lotlink_sim::PlatformSim::start(cfg).await.unwrap();
    let h = start_with(sim, "ts_unit = \"auto\"").await;
    submit_n(&h, 1, "S").await;
    assert!(h.sim.wait_for_records(1, T).await);
    assert_eq!(h.gw.client.unit(), lotlink::testing::config::TsUnit::S);
    assert!(
        eventually(T, || h.gw.outbox.settings().ts_unit().unwrap().as_deref()
            == Some("s"))
        .await
    );
}

#[tokio::test]
async fn space_reports_are_sent_at_start_and_coalesce_while_the_platform_is_down() {
    let h = start("").await;
    assert!(h.sim.wait_until(T, |s| s.space_reports >= 1).await);
    assert_eq!(h.sim.space_reports()[0], (100, 100));
    h.sim.set_mode(Mode::Refuse);
    submit_n(&h, 5, "K").await;
    h.sim.set_mode(Mode::Up);
    assert!(h.sim.wait_until(T, |s| s.space_reports >= 2).await);
    assert!(h.sim.wait_for_records(5, T).await);
    let reports = h.sim.space_reports();
    assert_eq!(*reports.last().unwrap(), (100, 95));
    assert!(
        !reports.contains(&(100, 97)),
        "coalesced, not replayed: {reports:?}"
    );
}

#[tokio::test]
async fn heartbeats_go_out_on_schedule() {
    let h = start("heartbeat_interval = \"1s\"").await;
    assert!(h.sim.wait_until(T, |s| s.heartbeats_ok >= 2).await);
    assert!(eventually(T, || h.gw.health.lock().unwrap().heartbeats_ok >= 2).await);
}
