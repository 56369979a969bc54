//! Secrets stay secret: the platform token, the status token and the management HMAC key
//! never appear in what the real daemon prints (at debug level), in `/status`, `/metrics`
//! or the page; and a config file others can read draws a warning naming it.

#![cfg(unix)]

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::devices::{free_port, Broker};
use common::{eventually_async, TOKEN};

const WAIT: Duration = Duration::from_secs(30);
const STATUS_TOKEN: &str = "status-secret-0123456789";
const HMAC_KEY: &str = "hmac-secret-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_shows_in_logs_status_or_metrics_and_a_readable_config_is_flagged() {
    let broker = Broker::start().await;
    let sim = common::sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let text = common::config_text(&sim.url(), &dir.path().join("outbox"), "").replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\"\ntoken = \"{STATUS_TOKEN}\""),
    ) + &format!(
        "\n[mqtt]\nurl = \"{}\"\nclient_id = \"lotlink-secrets-{port}\"\n\n[management]\nhmac_key = \"{HMAC_KEY}\"\n",
        broker.url()
    );
    let config = dir.path().join("lotlink.toml");
    std::fs::write(&config, text).expect("config");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let log = dir.path().join("daemon.log");
    let mut child = common::lotlink_command()
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "debug")
        .stdout(std::fs::File::create(dir.path().join("stdout.log")).expect("log"))
        .stderr(std::fs::File::create(&log).expect("log"))
        .stdin(Stdio::null())
        .spawn()
        .expect("daemon starts");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let get = |path: &'static str| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            http.get(format!("{base}{path}"))
                .bearer_auth(STATUS_TOKEN)
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()
        }
    };
    assert!(
        eventually_async(WAIT, || async {
            get("/status").await.is_some_and(|s| {
                serde_json::from_str::<serde_json::Value>(&s).is_ok_and(|v| {
                    v["management"]["connected"] == true
                        && v["platform"]["heartbeats_ok"].as_u64() > Some(0)
                })
            })
        })
        .await,
        "daemon up, platform and broker reached; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let mut seen = String::new();
    for path in ["/status", "/metrics", "/healthz", "/"] {
        seen.push_str(&get(path).await.expect("answer"));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let printed = std::fs::read_to_string(&log).unwrap_or_default()
        + &std::fs::read_to_string(dir.path().join("stdout.log")).unwrap_or_default();
    assert!(
        printed.contains("others can read it: chmod 600 it") && printed.contains("lotlink.toml"),
        "a readable config file is flagged, naming it:\n{printed}"
    );
    assert!(printed.len() > 1000, "debug logging produced output");
    for secret in [TOKEN, STATUS_TOKEN, HMAC_KEY] {
        assert!(!printed.contains(secret), "{secret:?} printed:\n{printed}");
        assert!(!seen.contains(secret), "{secret:?} served");
    }
    sim.shutdown().await;
}

/// A secret on a malformed line (unterminated string, wrong type, garbage after it) is
/// quoted by the TOML parser: check-config, the log of a refused SIGHUP reload and the
/// result of a refused push give the line, never the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_secret_line_is_never_echoed_by_check_config_a_reload_or_a_push_result() {
    use lotlink::testing::push::{push_hmac, PushTarget};
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

    const LEAK: &str = "leak-me-0123456789";
    let broker = Broker::start().await;
    let sim = common::sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let good = common::config_text(&sim.url(), &dir.path().join("outbox"), "").replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    ) + &format!(
        "\n[mqtt]\nurl = \"{}\"\nclient_id = \"lotlink-leak-{port}\"\n\n[management]\nhmac_key = \"{HMAC_KEY}\"\n",
        broker.url()
    );
    let token_line = format!("token = \"{TOKEN}\"");
    let malformed = [
        good.replace(&token_line, &format!("token = \"{LEAK}")),
        good.replace(&token_line, &format!("token = {LEAK}")),
        good.replace(&token_line, &format!("token = \"{LEAK}\" trailing")),
        good.replace(
            &format!("hmac_key = \"{HMAC_KEY}\""),
            &format!("hmac_key = '{LEAK}"),
        ),
        good.replace("[mqtt]\n", &format!("[mqtt]\npassword = \"{LEAK}\n")),
    ];

    // check-config.
    let bad = dir.path().join("bad.toml");
    for text in &malformed {
        std::fs::write(&bad, text).expect("bad");
        let out = common::lotlink_command()
            .args(["check-config", "--config"])
            .arg(&bad)
            .output()
            .expect("check-config runs");
        let shown = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{shown}");
        assert!(
            shown.contains("bad.toml") && shown.contains("line "),
            "{shown}"
        );
        assert!(!shown.contains(LEAK), "{shown}");
    }

    // The running daemon: a refused reload, then refused pushes.
    let config = dir.path().join("lotlink.toml");
    std::fs::write(&config, &good).expect("config");
    let log = dir.path().join("daemon.log");
    let daemon = common::Daemon::start(&config, &log);
    let mut o = MqttOptions::new(format!("leak-op-{port}"), "127.0.0.1", broker.port);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, el) = AsyncClient::new(o, 32);
    let (tx, mut results) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
    let sub = client.clone();
    let lot = common::LOT;
    let task = tokio::spawn(common::devices::drive_mqtt(el, move |ev| match ev {
        Event::Incoming(Packet::ConnAck(_)) => {
            let _ = sub.try_subscribe(format!("lotlink/{lot}/config/result"), QoS::AtLeastOnce);
        }
        Event::Incoming(Packet::Publish(p)) => {
            let _ = tx.send(serde_json::from_slice(&p.payload).unwrap_or_default());
        }
        _ => {}
    }));
    let status = || async {
        reqwest::get(format!("http://127.0.0.1:{port}/status"))
            .await
            .ok()?
            .json::<serde_json::Value>()
            .await
            .ok()
    };
    assert!(
        eventually_async(WAIT, || async {
            status()
                .await
                .is_some_and(|v| v["management"]["connected"] == true)
        })
        .await,
        "daemon up:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    std::fs::write(&config, &malformed[0]).expect("malformed");
    let _ = Command::new("kill")
        .args(["-HUP", &daemon.0.id().to_string()])
        .status();
    assert!(
        eventually_async(WAIT, || async {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("config reload refused")
        })
        .await,
        "the reload is refused"
    );
    std::fs::write(&config, &good).expect("config back");
    let target = PushTarget {
        lot_code: lot,
        prefix: &format!("lotlink/{lot}"),
    };
    for (i, text) in malformed.iter().enumerate() {
        let version = i as u64 + 1;
        let msg = serde_json::json!({
            "version": version,
            "config": text,
            "hmac": push_hmac(HMAC_KEY.as_bytes(), target, version, false, text),
        });
        client
            .publish(
                format!("lotlink/{lot}/config/set"),
                QoS::AtLeastOnce,
                false,
                msg.to_string(),
            )
            .await
            .expect("publish");
        let r = tokio::time::timeout(WAIT, results.recv())
            .await
            .expect("a result in time")
            .expect("results");
        assert_eq!(r["outcome"], "rejected", "{r}");
        let reason = r["reason"].as_str().unwrap_or("");
        assert!(reason.contains("line "), "{r}");
        assert!(!reason.contains(LEAK), "{r}");
    }
    task.abort();
    daemon.stop();
    let printed = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!printed.contains(LEAK), "{printed}");
    sim.shutdown().await;
}
