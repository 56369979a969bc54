//! Config push through a real broker to the real `lotlink run` binary: applied, bad HMAC
//! rejected, replayed version rejected, identical config unchanged, a config pointing at a
//! dead platform rolled back within the watch window; every outcome read from the result
//! topic. Also the retained status and its offline message.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::devices::{free_port, Broker};
use common::Daemon;
use common::{eventually_async, LOT};
use lotlink::manage::push_hmac;
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
            "hmac": push_hmac(key.as_bytes(), version, config),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_push_applies_rejects_rolls_back_and_reports_every_outcome() {
    let broker = Broker::start().await;
    let sim = common::sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let text_for = |url: &str, total: u32| {
        common::config_text(url, &dir.path().join("outbox"), "heartbeat_interval = \"1s\"")
            .replace(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"127.0.0.1:{port}\""),
            )
            .replace("total = 100", &format!("total = {total}"))
            + &format!(
                "\n[mqtt]\nurl = \"{}\"\nclient_id = \"lotlink-mgmt-test-{port}\"\n\n[management]\nhmac_key = \"{KEY}\"\nwatch = \"3s\"\n",
                broker.url()
            )
    };
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
    let http = reqwest::Client::new();
    let status = || {
        let http = http.clone();
        async move {
            http.get(format!("http://127.0.0.1:{port}/status"))
                .send()
                .await
                .ok()?
                .json::<Value>()
                .await
                .ok()
        }
    };
    // Up, connected to the broker, platform reached; the retained status says online.
    assert!(
        eventually_async(WAIT, || async {
            status().await.is_some_and(|v| {
                v["management"]["connected"] == true && v["platform"]["last_success_ms"].is_i64()
            })
        })
        .await,
        "daemon up; log:\n{}",
        read_log()
    );
    let mut st = op.status.clone();
    let online = retained_status(&mut st, true, "the retained status").await;
    assert_eq!(online["config_version"], 0);
    assert_eq!(online["outbox_depth"], 0);

    // 1. A good, newer, signed config: applied (after the watch window), file written.
    let v1 = text_for(&sim.url(), 150);
    op.push(1, &v1, KEY).await;
    let r = op.result(WAIT).await;
    assert_eq!(r["version"], 1);
    assert_eq!(r["outcome"], "applied", "{r}; log:\n{}", read_log());
    assert_eq!(std::fs::read_to_string(&config).expect("config"), v1);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("lotlink.toml.last-good")).expect("last good"),
        original
    );
    let s = status().await.expect("status");
    assert_eq!(s["spaces"]["total"], 150);
    assert_eq!(s["management"]["config_version"], 1);

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
        std::fs::read_to_string(&config).expect("config"),
        v1,
        "the last-known-good file is back"
    );
    let before = sim.stats().heartbeats_ok;
    assert!(
        eventually_async(WAIT, || async { sim.stats().heartbeats_ok > before }).await,
        "the old platform is used again"
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
                "\n[mqtt]\nurl = \"{}\"\nclient_id = \"lotlink-big-{port}\"\nmax_packet = \"64KiB\"\n\n[management]\nhmac_key = \"{KEY}\"\nwatch = \"3s\"\n",
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
