//! Nothing stalls the flow: one bad thing (a record answered 2001 forever, a refused space
//! report, a lost answer, a 400 MB answer, a platform that wants `data` as a string) never
//! stops the rest, and `/healthz` says when records or events are stuck. End to end: the
//! real pipeline against the platform simulator on 127.0.0.1.

use crate::common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use lotlink::drivers::{Accepted, SinkError};
use lotlink_sim::{Mode, Route, Scripted};

const T: Duration = Duration::from_secs(30);

async fn submit(h: &Harness, plates: &[String]) {
    for (i, p) in plates.iter().enumerate() {
        let r = h
            .feed
            .send(plate(&format!("k-{p}"), p, Some(small_jpeg(i as u64))))
            .await;
        assert!(matches!(r, Ok(Accepted::Stored(_))), "{r:?}");
    }
}

fn plates(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:03}")).collect()
}

async fn healthz(h: &Harness) -> (u16, String) {
    let r = reqwest::get(format!("http://{}/healthz", h.gw.status_addr))
        .await
        .expect("status endpoint answers");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

/// Wait until `/healthz` answers `status` with a body containing `needle`; the last answer.
async fn healthz_until(h: &Harness, status: u16, needle: &str) -> (bool, String) {
    let last = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let ok = eventually_async(T, || {
        let last = last.clone();
        async move {
            let (s, body) = healthz(h).await;
            let hit = s == status && body.contains(needle);
            *last.lock().unwrap() = format!("{s} {body}");
            hit
        }
    })
    .await;
    let body = last.lock().unwrap().clone();
    (ok, body)
}

#[tokio::test]
async fn one_record_answered_2001_forever_is_dead_lettered_and_the_39_others_are_delivered() {
    let h = start("").await;
    h.sim.set_mode(Mode::Refuse);
    let mut all = plates("R", 40);
    all[17] = "STUCK".into();
    submit(&h, &all).await;
    h.sim.set_business_error(Some("STUCK".into()));
    h.sim.set_mode(Mode::Up);
    assert!(
        h.sim.wait_for_records(39, T).await,
        "39 of 40 delivered: {:?}",
        h.sim.stats()
    );
    assert!(eventually(T, || h.gw.outbox.is_empty()).await);
    assert_eq!(h.gw.outbox.dead_len(), 1);
    let dead = h.gw.outbox.dead_list().unwrap();
    assert_eq!(dead[0].record.meta.car_no.as_deref(), Some("STUCK"));
    assert!(dead[0].reason.starts_with("2001"), "{}", dead[0].reason);
    let got: HashSet<String> = delivered_plates(&h.sim).into_iter().collect();
    assert_eq!(got.len(), 39);
    assert!(!got.contains("STUCK"));
}

#[tokio::test]
async fn a_refused_space_report_never_holds_back_the_records() {
    for answer in [Scripted::Http(404), Scripted::Code(2001), Scripted::NonJson] {
        let h = start("").await;
        h.sim
            .set_route_answer(Route::ParkSpace, Some(answer.clone()));
        submit(&h, &plates("S", 10)).await;
        assert!(
            h.sim.wait_for_records(10, T).await,
            "{answer:?}: records delivered while parkSpace is refused"
        );
        assert_eq!(h.sim.stats().space_reports, 0, "{answer:?}");
        assert!(
            h.sim.wait_for_requests(Route::ParkSpace, 2, T).await,
            "{answer:?}: the space report is still retried on its own"
        );
    }
}

#[tokio::test]
async fn healthz_is_503_while_records_wait_and_none_is_delivered_and_200_once_they_go() {
    let h = start("heartbeat_interval = \"1s\"").await;
    h.sim
        .set_route_answer(Route::CarInOut, Some(Scripted::NonJson));
    submit(&h, &plates("H", 2)).await;
    let (ok, body) = healthz_until(&h, 503, "records pending and none delivered").await;
    assert!(ok, "{body}");
    assert!(
        !body.contains("platform not reached"),
        "heartbeats are answered: {body}"
    );
    h.sim.set_route_answer(Route::CarInOut, None);
    assert!(h.sim.wait_for_records(2, T).await);
    let (ok, body) = healthz_until(&h, 200, "ok").await;
    assert!(ok, "{body}");
}

#[tokio::test]
async fn healthz_is_503_while_ingest_refuses_events_for_the_disk_quota() {
    let sim = sim().await;
    sim.set_mode(Mode::Refuse);
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(
        &sim.url(),
        &dir.path().join("outbox"),
        "heartbeat_interval = \"1s\"",
    )
    .replace("[outbox]\n", "[outbox]\nmax_disk = \"1MiB\"\n");
    let cfg =
        lotlink::testing::config::from_str(std::path::Path::new("t.toml"), &text).expect("config");
    let (feed, driver) = feed();
    let gw = lotlink::testing::app::Gateway::start(&cfg, vec![driver], fast_options())
        .await
        .expect("gateway");
    let h = Harness { sim, dir, feed, gw };
    let big = lotlink::testing::imaging::synth_jpeg(320, 240, 3, 90);
    let mut refused = None;
    for i in 0..5_000u64 {
        match h
            .feed
            .send(plate(&format!("q{i}"), &format!("Q{i}"), Some(big.clone())))
            .await
        {
            Ok(_) => {}
            Err(e @ SinkError::Unavailable(_)) => {
                refused = Some(e);
                break;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(refused.is_some(), "the 1 MiB quota refuses events at last");
    assert!(h.gw.health.lock().unwrap().events_refused >= 1);
    let (ok, body) = healthz_until(&h, 503, "events are being refused").await;
    assert!(ok, "{body}");
}

#[tokio::test]
async fn an_answer_over_64_kib_is_a_bad_answer_and_reading_stops_at_the_cap() {
    let h = start("").await;
    // 400 MB, streamed by the simulator without a length and never allocated.
    const HUGE: u64 = 400 << 20;
    // A client of our own (the gateway's heartbeats must not take the scripted answer).
    let client = lotlink::testing::protocol::Client::new(
        &h.gw.config().platform,
        lotlink::testing::config::Secret::new(TOKEN),
        std::sync::Arc::new(lotlink::testing::clock::Clock::default()),
        None,
    )
    .expect("client");
    h.sim.push_script(Route::CarInOut, [Scripted::Huge(HUGE)]);
    let r = client
        .call(lotlink::testing::protocol::Cmd::CarInOut, Some("[]"))
        .await;
    match &r {
        Err(e @ lotlink::testing::protocol::CallError::TooLarge { .. }) => {
            assert_eq!(e.kind(), "answer_too_large");
        }
        other => panic!("a bad answer: {other:?}"),
    }
    // What left the simulator before the client hung up: the cap plus what the sockets'
    // buffers held, not the 400 MB.
    let sent = h.sim.answer_bytes_streamed();
    assert!(
        sent < 32 << 20,
        "{sent} bytes streamed before the client stopped"
    );
    // And the gateway's own upload goes on after such an answer.
    h.sim.push_script(Route::CarInOut, [Scripted::Huge(HUGE)]);
    submit(&h, &plates("Z", 1)).await;
    assert!(h.sim.wait_for_records(1, T).await);
    assert_eq!(h.sim.pending_scripts(Route::CarInOut), 0);
}

#[tokio::test]
async fn a_lost_answer_is_resolved_one_record_at_a_time_with_each_record_uploaded_once_more() {
    let h = start("").await;
    h.sim.set_mode(Mode::Refuse);
    submit(&h, &plates("L", 20)).await;
    h.sim.push_script(Route::CarInOut, [Scripted::LoseAnswer]);
    h.sim.set_mode(Mode::Up);
    assert!(h.sim.wait_for_records(20, T).await);
    assert!(eventually(T, || h.gw.outbox.is_empty()).await);
    let st = h.sim.stats();
    assert_eq!(
        st.batch_sizes,
        vec![20],
        "stored once, by the request whose answer was lost"
    );
    assert_eq!(h.gw.outbox.dead_len(), 0);
    assert_eq!(
        st.rejected_with(1004),
        20,
        "each record confirmed alone: {st:?}"
    );
    let first = st.car_in_out_body_sizes[0];
    let total: usize = st.car_in_out_body_sizes.iter().sum();
    assert!(
        total * 10 <= first * 25,
        "the lost batch once more, not log2(n) times: {total} bytes after a {first}-byte batch"
    );
}

#[tokio::test]
async fn a_heartbeat_answered_1005_proves_the_platform_is_reachable() {
    let sim = sim().await;
    sim.set_route_answer(Route::Heartbeat, Some(Scripted::Code(1005)));
    let h = start_with(sim, "heartbeat_interval = \"1s\"").await;
    assert!(eventually(T, || h.gw.health.lock().unwrap().command_codes >= 2).await);
    let health = h.gw.health.lock().unwrap().clone();
    assert_eq!(health.fault, None);
    assert_eq!(health.heartbeats_ok, 0);
    assert!(health.last_reached_ms.is_some());
    let (ok, body) = healthz_until(&h, 200, "ok").await;
    assert!(ok, "{body}");
}

#[tokio::test]
async fn every_record_refused_alike_is_a_configuration_fault_and_no_record_is_dead_lettered() {
    let h = start("data_encoding = \"object\"").await;
    h.sim.set_require_string_data(true);
    submit(&h, &plates("C", 5)).await;
    assert!(
        eventually(T, || h
            .gw
            .health
            .lock()
            .unwrap()
            .fault
            .as_deref()
            .is_some_and(|f| f.contains("data_encoding")))
        .await,
        "{:?}",
        h.gw.health.lock().unwrap()
    );
    assert_eq!(h.gw.outbox.dead_len(), 0);
    assert_eq!(h.gw.outbox.len(), 5);
    let before = h.sim.stats().requests_to(Route::CarInOut);
    assert!(
        h.sim
            .wait_for_requests(Route::CarInOut, before + 1, T)
            .await
    );
    assert_eq!(h.gw.outbox.dead_len(), 0, "still none after more refusals");
    let (ok, body) = healthz_until(&h, 503, "data_encoding").await;
    assert!(ok, "{body}");
}

#[tokio::test]
async fn data_encoding_auto_finds_the_string_encoding_and_delivers_everything() {
    let h = start("").await;
    h.sim.set_require_string_data(true);
    submit(&h, &plates("A", 5)).await;
    assert!(h.sim.wait_for_records(5, T).await);
    assert_eq!(
        h.gw.client.data_encoding(),
        lotlink::testing::config::DataEncoding::String
    );
    assert_eq!(h.gw.outbox.dead_len(), 0);
}

#[tokio::test]
async fn a_genuinely_bad_record_never_flips_data_encoding_auto() {
    let h = start("").await;
    // No parkSpace success: nothing has confirmed the object encoding yet.
    h.sim
        .set_route_answer(Route::ParkSpace, Some(Scripted::Http(500)));
    h.sim.set_poison(Some("BAD".into()));
    submit(&h, &["BAD".to_string()]).await;
    // Refused as an object, then as a string: the string is not kept.
    assert!(h.sim.wait_until(T, |s| s.rejected_with(1502) >= 2).await);
    assert_eq!(
        h.gw.client.data_encoding(),
        lotlink::testing::config::DataEncoding::Object
    );
    // A good record is accepted; the bad one, judged again, is a dead letter.
    submit(&h, &["GOOD".to_string()]).await;
    assert!(h.sim.wait_for_records(1, T).await);
    assert!(eventually(T, || h.gw.outbox.dead_len() == 1).await);
    assert_eq!(
        h.gw.client.data_encoding(),
        lotlink::testing::config::DataEncoding::Object
    );
    assert_eq!(delivered_plates(&h.sim), ["GOOD"]);
}
