//! Config push through a real broker to the real `lotlink run` binary: applied, bad HMAC
//! rejected, replayed version rejected, identical config unchanged, a config pointing at a
//! dead platform rolled back within the watch window; every outcome read from the result
//! topic. Also the retained status and its offline message.

use crate::common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::devices::{free_port, Broker};
use common::Daemon;
use common::{eventually_async, LOT};
use lotlink::testing::manage::pushed_path;
use lotlink::testing::push::{push_hmac, PushTarget};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(30);
const KEY: &str = "push-key-0123456789";

/// The operator's side: publishes pushes, reads results and the retained status.
struct Operator {
    client: AsyncClient,
    results: mpsc::UnboundedReceiver<Value>,
    status: tokio::sync::watch::Receiver<Value>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The retained status once its `online` is `online` (what: named if it does not come in time).
async fn retained_status(
    st: &mut tokio::sync::watch::Receiver<Value>,
    online: bool,
    what: &str,
) -> Value {
    tokio::time::timeout(WAIT, st.wait_for(|v| v["online"] == online))
        .await
        .unwrap_or_else(|_| panic!("{what} in time"))
        .expect("status channel")
        .clone()
}

impl Operator {
    async fn connect(port: u16) -> Operator {
        let mut o = MqttOptions::new(format!("operator-{}", free_port()), "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, el) = AsyncClient::new(o, 32);
        let (rtx, results) = mpsc::unbounded_channel();
        let (stx, status) = tokio::sync::watch::channel(Value::Null);
        let sub = client.clone();
        let task = tokio::spawn(common::devices::drive_mqtt(el, move |event| match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                let _ = sub.try_subscribe(format!("lotlink/{LOT}/config/result"), QoS::AtLeastOnce);
                let _ = sub.try_subscribe(format!("lotlink/{LOT}/status"), QoS::AtLeastOnce);
            }
            Event::Incoming(Packet::Publish(p)) => {
                let v: Value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                if p.topic.ends_with("/config/result") {
                    let _ = rtx.send(v);
                } else {
                    let _ = stx.send(v);
                }
            }
            _ => {}
        }));
        Operator {
            client,
            results,
            status,
            task,
        }
    }

    async fn push(&self, version: u64, config: &str, key: &str) {
        let msg = json!({
            "version": version,
            "config": config,
            "hmac": push_hmac(key.as_bytes(), PushTarget { lot_code: LOT, prefix: &format!("lotlink/{LOT}") }, version, false, config),
        });
        self.client
            .publish(
                format!("lotlink/{LOT}/config/set"),
                QoS::AtLeastOnce,
                false,
                msg.to_string(),
            )
            .await
            .expect("publish");
    }

    async fn result(&mut self, within: Duration) -> Value {
        tokio::time::timeout(within, self.results.recv())
            .await
            .expect("a result in time")
            .expect("result channel open")
    }
}

/// A managed gateway's config: platform at `url`, the outbox at `outbox`, status on `port`,
/// management through `broker` with [`KEY`] and a 3 s watch. The token and key are inline
/// and the broker is plain `mqtt://`, so the config says `allow_plaintext_secrets`.
fn managed_config(url: &str, outbox: &Path, total: u32, port: u16, broker: &Broker) -> String {
    common::config_text(url, outbox, "heartbeat_interval = \"1s\"")
        .replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        )
        .replace("total = 100", &format!("total = {total}"))
        + &format!(
            "\n[mqtt]\nurl = \"{}\"\nclient_id = \"lotlink-mgmt-test-{port}\"\n\n[management]\nhmac_key = \"{KEY}\"\nallow_plaintext_secrets = true\nwatch = \"3s\"\n",
            broker.url()
        )
}

/// `/status` on `port`, or `None` while nothing answers.
async fn status_at(port: u16) -> Option<Value> {
    reqwest::get(format!("http://127.0.0.1:{port}/status"))
        .await
        .ok()?
        .json::<Value>()
        .await
        .ok()
}

/// Wait until the daemon on `port` is connected to the broker and reached the platform.
async fn wait_managed(port: u16, log: &Path) {
    assert!(
        eventually_async(WAIT, || async {
            status_at(port).await.is_some_and(|v| {
                v["management"]["connected"] == true && v["platform"]["last_success_ms"].is_i64()
            })
        })
        .await,
        "daemon up; log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_push_applies_rejects_rolls_back_and_reports_every_outcome() {
    let broker = Broker::start().await;
    let sim = common::sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let outbox = dir.path().join("outbox");
    let text_for = |url: &str, total: u32| managed_config(url, &outbox, total, port, &broker);
    let config = dir.path().join("lotlink.toml");
    let original = text_for(&sim.url(), 100);
    std::fs::write(&config, &original).expect("config");
    let log = dir.path().join("daemon.log");
    let mut op = Operator::connect(broker.port).await;
    let mut daemon = Daemon(
        common::lotlink_command()
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "lotlink=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("daemon starts"),
    );
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let status = || status_at(port);
    // Up, connected to the broker, platform reached; the retained status says online.
    wait_managed(port, &log).await;
    let mut st = op.status.clone();
    let online = retained_status(&mut st, true, "the retained status").await;
    assert_eq!(online["config_version"], 0);
    assert_eq!(online["outbox_depth"], 0);

    // 1. A good, newer, signed config: applied (after the watch window), written to the
    // pushed file; the local file (a dpkg conffile) is never touched.
    let pushed = pushed_path(&config);
    let v1 = text_for(&sim.url(), 150);
    op.push(1, &v1, KEY).await;
    let r = op.result(WAIT).await;
    assert_eq!(r["version"], 1);
    assert_eq!(r["outcome"], "applied", "{r}; log:\n{}", read_log());
    assert_eq!(std::fs::read_to_string(&pushed).expect("pushed file"), v1);
    assert_eq!(std::fs::read_to_string(&config).expect("config"), original);
    let s = status().await.expect("status");
    assert_eq!(s["spaces"]["total"], 150);
    assert_eq!(s["management"]["config_version"], 1);
    assert_eq!(
        s["management"]["config_file"],
        pushed.display().to_string(),
        "the status says which file is in effect"
    );

    // 2. Signed with another key: rejected, nothing changes.
    op.push(2, &text_for(&sim.url(), 170), "not-the-key-0000000")
        .await;
    let r = op.result(WAIT).await;
    assert_eq!(
        (r["version"].clone(), r["outcome"].clone()),
        (json!(2), json!("rejected"))
    );
    assert!(r["reason"].as_str().unwrap_or("").contains("hmac"), "{r}");
    assert!(!read_log().contains(KEY), "the key is never logged");

    // 3. Version 1 again: a replay.
    op.push(1, &text_for(&sim.url(), 170), KEY).await;
    let r = op.result(WAIT).await;
    assert_eq!(r["outcome"], "rejected");
    assert!(r["reason"].as_str().unwrap_or("").contains("replay"), "{r}");

    // 4. An invalid config: rejected with the key named.
    op.push(3, &v1.replace("total = 150", "total = -5"), KEY)
        .await;
    let r = op.result(WAIT).await;
    assert_eq!(r["outcome"], "rejected");
    assert!(
        r["reason"].as_str().unwrap_or("").contains("space.total"),
        "{r}"
    );

    // 5. The running settings again (other spacing): unchanged.
    op.push(4, &format!("# same settings\n{v1}"), KEY).await;
    let r = op.result(WAIT).await;
    assert_eq!(
        (r["version"].clone(), r["outcome"].clone()),
        (json!(4), json!("unchanged"))
    );

    // 6. A platform URL where nothing answers: rolled back within the watch window.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let pushed_at = std::time::Instant::now();
    op.push(5, &text_for(&dead, 150), KEY).await;
    let r = op.result(WAIT).await;
    assert_eq!(r["outcome"], "rolled_back", "{r}; log:\n{}", read_log());
    assert!(
        r["reason"].as_str().unwrap_or("").contains("platform"),
        "{r}"
    );
    assert!(
        pushed_at.elapsed() < Duration::from_secs(3 + 10),
        "decided at the end of the 3 s window, took {:?}",
        pushed_at.elapsed()
    );
    assert_eq!(
        std::fs::read_to_string(&pushed).expect("pushed file"),
        v1,
        "the previous pushed file is back"
    );
    assert_eq!(std::fs::read_to_string(&config).expect("config"), original);
    let before = sim.stats().heartbeats_ok;
    assert!(
        eventually_async(WAIT, || async { sim.stats().heartbeats_ok > before }).await,
        "the old platform is used again"
    );

    // 7. Back to the local file on the box: delete the pushed file and reload (SIGHUP).
    std::fs::remove_file(&pushed).expect("remove the pushed file");
    let _ = Command::new("kill")
        .args(["-HUP", &daemon.0.id().to_string()])
        .status();
    let local = config.display().to_string();
    assert!(
        eventually_async(WAIT, || async {
            status().await.is_some_and(|s| {
                s["spaces"]["total"] == 100 && s["management"]["config_file"] == local.as_str()
            })
        })
        .await,
        "the local file is in effect again; log:\n{}",
        read_log()
    );

    // A clean stop says offline on the retained status.
    let _ = Command::new("kill")
        .args(["-TERM", &daemon.0.id().to_string()])
        .status();
    let _ = daemon.0.wait();
    let offline = retained_status(&mut st, false, "offline after a clean stop").await;
    assert_eq!(offline["online"], false);

    // A daemon that dies without a word (SIGKILL): the broker publishes its last will.
    let mut daemon = Daemon::start(&config, &log);
    retained_status(&mut st, true, "online again").await;
    let _ = daemon.0.kill();
    let _ = daemon.0.wait();
    let will = retained_status(&mut st, false, "the last will").await;
    assert_eq!(will["online"], false, "{will}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_that_moves_the_outbox_is_rejected_with_the_reason_and_changes_nothing() {
    let broker = Broker::start().await;
    let sim = common::sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = dir.path().join("lotlink.toml");
    let original = managed_config(&sim.url(), &dir.path().join("outbox"), 100, port, &broker);
    std::fs::write(&config, &original).expect("config");
    let log = dir.path().join("daemon.log");
    let mut op = Operator::connect(broker.port).await;
    let _daemon = Daemon::start(&config, &log);
    wait_managed(port, &log).await;

    let moved = dir.path().join("elsewhere");
    op.push(
        1,
        &managed_config(&sim.url(), &moved, 150, port, &broker),
        KEY,
    )
    .await;
    let r = op.result(WAIT).await;
    assert_eq!(r["outcome"], "rejected", "{r}");
    let reason = r["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("outbox.path") && reason.contains("cannot be changed by a config push"),
        "{r}"
    );
    assert!(reason.contains(&moved.display().to_string()), "{r}");
    assert_eq!(
        std::fs::read_to_string(&config).expect("config"),
        original,
        "the file is not touched"
    );
    assert!(!pushed_path(&config).exists(), "no pushed file is written");
    assert!(!moved.exists(), "no store is made at the pushed path");
    let s = status_at(port).await.expect("status");
    assert_eq!(s["spaces"]["total"], 100, "nothing of the push applied");
    assert_eq!(
        s["management"]["config_version"], 0,
        "the version is not used up"
    );

    // The same change without the move is applied under that version.
    op.push(
        1,
        &managed_config(&sim.url(), &dir.path().join("outbox"), 150, port, &broker),
        KEY,
    )
    .await;
    let r = op.result(WAIT).await;
    assert_eq!(r["outcome"], "applied", "{r}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_signed_push_is_still_refused_after_a_local_edit_moves_the_outbox() {
    let broker = Broker::start().await;
    let sim = common::sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = dir.path().join("lotlink.toml");
    let old_outbox = dir.path().join("outbox-a");
    let text_a = managed_config(&sim.url(), &old_outbox, 100, port, &broker);
    std::fs::write(&config, &text_a).expect("config");
    let log = dir.path().join("daemon.log");
    let mut op = Operator::connect(broker.port).await;
    let daemon = Daemon::start(&config, &log);
    wait_managed(port, &log).await;
    // Version 5 accepted (the same settings: "unchanged" still uses the number up).
    op.push(5, &format!("# pushed\n{text_a}"), KEY).await;
    assert_eq!(op.result(WAIT).await["outcome"], "unchanged");
    daemon.stop();

    // One event is still waiting in the old store when the operator moves the outbox.
    {
        let (ob, _) = lotlink::testing::outbox::Outbox::open(
            &old_outbox,
            lotlink::testing::outbox::OutboxOptions::default(),
        )
        .expect("old store opens");
        ob.submit(common::new_record(1, &common::small_jpeg(1)))
            .await
            .expect("submit");
        ob.flush().await.expect("flush");
    }
    let new_outbox = dir.path().join("outbox-b");
    std::fs::write(
        &config,
        managed_config(&sim.url(), &new_outbox, 100, port, &broker),
    )
    .expect("config");
    let daemon = Daemon::start_with(&config, &log, &["--abandon-old-outbox"]);
    wait_managed(port, &log).await;
    assert!(new_outbox.is_dir(), "the new store is in use");
    assert_eq!(
        status_at(port).await.expect("status")["management"]["config_version"],
        5,
        "the version survived the new outbox"
    );

    // The old signed pushes are replays still, whatever the store.
    for v in [3, 5] {
        op.push(v, &format!("# replayed {v}\n{text_a}"), KEY).await;
        let r = op.result(WAIT).await;
        assert_eq!(r["outcome"], "rejected", "version {v}: {r}");
        assert!(r["reason"].as_str().unwrap_or("").contains("replay"), "{r}");
    }
    daemon.stop();
    let (old, _) = lotlink::testing::outbox::Outbox::open(
        &old_outbox,
        lotlink::testing::outbox::OutboxOptions::default(),
    )
    .expect("old store opens");
    assert_eq!(old.len(), 1, "the abandoned store is left as it was");
    assert!(
        sim.records().is_empty(),
        "nothing of the old store was sent"
    );
    sim.shutdown().await;
}

/// A message over `max_packet` on the config-push topic (anyone who can publish there can
/// send one, HMAC key or not) is dropped with a `rejected` result; it does not cut the
/// management session off for good, and the next push is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_push_is_rejected_and_the_next_push_still_applies() {
    let broker = Broker::start().await;
    let sim = common::sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let text_for = |total: u32| {
        common::config_text(&sim.url(), &dir.path().join("outbox"), "heartbeat_interval = \"1s\"")
            .replace(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"127.0.0.1:{port}\""),
            )
            .replace("total = 100", &format!("total = {total}"))
            + &format!(
                "\n[mqtt]\nurl = \"{}\"\nclient_id = \"lotlink-big-{port}\"\nmax_packet = \"64KiB\"\n\n[management]\nhmac_key = \"{KEY}\"\nallow_plaintext_secrets = true\nwatch = \"3s\"\n",
                broker.url()
            )
    };
    let config = dir.path().join("lotlink.toml");
    std::fs::write(&config, text_for(100)).expect("config");
    let mut op = Operator::connect(broker.port).await;
    let _daemon = Daemon::start(&config, &dir.path().join("daemon.log"));
    let mut st = op.status.clone();
    retained_status(&mut st, true, "the retained status").await;
    // 256 KiB management floor, so 600 KB is over it.
    let huge = json!({"version": 1, "config": "#".repeat(600_000), "hmac": "00"}).to_string();
    op.client
        .publish(
            format!("lotlink/{LOT}/config/set"),
            QoS::AtLeastOnce,
            false,
            huge,
        )
        .await
        .expect("publish");
    let r = op.result(WAIT).await;
    assert_eq!(r["outcome"], "rejected", "{r}");
    assert!(
        r["reason"].as_str().unwrap_or("").contains("max_packet"),
        "{r}"
    );
    op.push(2, &text_for(120), KEY).await;
    let r = op.result(WAIT).await;
    assert_eq!(r["version"], 2, "{r}");
    assert_eq!(r["outcome"], "applied", "{r}");
}
