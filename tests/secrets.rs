//! Secrets stay secret: the platform token, the status token and the management HMAC key
//! never appear in what the real daemon prints (at debug level), in `/status`, `/metrics`
//! or the page; and a config file others can read draws a warning naming it.

#![cfg(unix)]

mod common;

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
