//! The status endpoint and the operator CLI against a running daemon: the real `lotlink`
//! binary with a serial camera on a pseudo-terminal, the platform simulator, and the CLI
//! commands run as the real binary too.

use crate::common;

use std::process::Stdio;
use std::time::Duration;

use common::devices::{free_port, PtyCable};
use common::Daemon;
use common::{delivered_plates, eventually, eventually_async};

const WAIT: Duration = Duration::from_secs(30);

fn lotlink(args: &[&str]) -> std::process::Output {
    common::lotlink_command()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("lotlink runs")
}

fn gbk(s: &str) -> Vec<u8> {
    encoding_rs::GBK.encode(s).0.into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_cli_reads_status_and_handles_dead_letters_and_the_space_count() {
    if !common::devices::serial_ports_work(
        "the_operator_cli_reads_status_and_handles_dead_letters_and_the_space_count",
    ) {
        return;
    }
    let sim = common::sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cable = PtyCable::new(dir.path(), "ttyCAM");
    let port = free_port();
    let text = common::config_text(&sim.url(), &dir.path().join("outbox"), "").replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    ) + &format!(
        "\n[[camera]]\nname = \"出口1\"\ndirection = \"out\"\ndriver = \"serial\"\nport = \"{}\"\n",
        cable.path.display()
    );
    let config = dir.path().join("lotlink.toml");
    std::fs::write(&config, text).expect("config");
    let cfg = config.to_str().expect("utf-8 path");

    // Nothing listens yet: exit code 3 (2 is a usage error) and a message that says so.
    let out = lotlink(&["status", "--config", cfg]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"));

    let _daemon = Daemon(
        common::lotlink_command()
            .args(["run", "--config", cfg])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("daemon.log")).expect("log"))
            .spawn()
            .expect("daemon starts"),
    );
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    assert!(
        eventually_async(WAIT, || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                http.get(format!("{url}/healthz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
            }
        })
        .await,
        "healthy once the platform answered; daemon log:\n{}",
        std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default()
    );

    // A plate the platform refuses for good becomes a dead letter.
    sim.set_poison(Some("晋P00001".into()));
    let status = || {
        let out = lotlink(&["status", "--json", "--config", cfg]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json")
    };
    assert!(eventually(WAIT, || status()["drivers"][0]["connected"] == true).await);
    cable
        .write(&gbk("OUT,晋P00001,蓝,2026-11-28 08:00:00\r\n"))
        .await;
    assert!(
        eventually(WAIT, || status()["outbox"]["dead_letters"] == 1).await,
        "dead-lettered"
    );
    let v = status();
    assert_eq!(v["outbox"]["pending"], 0);
    assert_eq!(v["drivers"][0]["name"], "出口1");
    assert_eq!(v["drivers"][0]["events"], 1);
    assert_eq!(v["spaces"]["total"], 100);
    assert!(v["platform"]["last_success_ms"].is_i64());

    let out = lotlink(&["dead", "list", "--config", cfg]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("晋P00001") && listed.contains("1502"),
        "{listed}"
    );

    // The platform is fixed; the operator sends it again.
    sim.set_poison(None);
    let out = lotlink(&["dead", "retry", "all", "--config", cfg]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        eventually(WAIT, || delivered_plates(&sim)
            .contains(&"晋P00001".to_string()))
        .await
    );
    assert_eq!(status()["outbox"]["dead_letters"], 0);

    // A hand count re-bases the occupied count and the platform hears the new free count.
    let out = lotlink(&["space", "set", "--occupied", "7", "--config", cfg]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("93 free"));
    assert!(eventually(WAIT, || sim.space_reports().last() == Some(&(100, 93))).await);

    // The same figures for Prometheus.
    let metrics = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for line in [
        "lotlink_outbox_pending_records 0",
        "lotlink_outbox_dead_letters 0",
        "lotlink_spaces_free 93",
        "lotlink_platform_up 1",
        "lotlink_driver_events_total{driver=\"出口1\",kind=\"serial-camera\"} 1",
        "lotlink_driver_connected{driver=\"出口1\",kind=\"serial-camera\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing from:\n{metrics}"
        );
    }
    assert!(metrics.contains("lotlink_build_info{version="), "{metrics}");
    // Prometheus conventions: requests by command and outcome, latency histograms in
    // seconds, the process's own figures.
    for prefix in [
        "lotlink_platform_requests_total{command=\"carInOut\",outcome=\"success\"} ",
        "lotlink_platform_requests_total{command=\"carInOut\",outcome=\"malformed\"} ",
        "lotlink_platform_request_duration_seconds_bucket{",
        "lotlink_platform_request_duration_seconds_count{command=\"heartbeat\"} ",
        "lotlink_outbox_fsync_duration_seconds_count ",
        "lotlink_platform_clock_offset_seconds ",
        "process_resident_memory_bytes ",
        "process_cpu_seconds_total ",
        "process_start_time_seconds ",
    ] {
        assert!(
            metrics.lines().any(|l| l.starts_with(prefix)),
            "{prefix} missing from:\n{metrics}"
        );
    }
    assert!(
        !metrics.contains("_milliseconds"),
        "base units only: {metrics}"
    );

    // `send space` without --surplus asks the daemon for the free count.
    let reports = sim.space_reports().len();
    let out = lotlink(&["send", "space", "-c", cfg]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sim.space_reports().len(), reports + 1);
    assert_eq!(sim.space_reports().last(), Some(&(100, 93)));
    let out = lotlink(&["status", "--check", "-c", cfg]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(metrics.ends_with("# EOF\n"));
    assert_eq!(status()["config_hash"].as_str().map(str::len), Some(16));

    let out = lotlink(&["status", "--config", cfg]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("occupied 7") && table.contains("出口1"),
        "{table}"
    );

    // Dropping asks first; without a yes on stdin nothing is dropped.
    let out = lotlink(&["dead", "drop", "99", "--config", cfg]);
    assert_eq!(out.status.code(), Some(1));
    sim.shutdown().await;
}

/// A token on the status endpoint guards every route; the page at `/` (opened with
/// `?token=`) renders in headless Chromium and shows the outbox depth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_token_guards_every_route_and_the_page_shows_the_outbox_depth_in_chromium() {
    const STATUS_TOKEN: &str = "status-token-0123456789";
    let sim = common::sim().await;
    sim.set_mode(lotlink_sim::Mode::Refuse);
    let dir = tempfile::tempdir().expect("tempdir");
    let text = common::config_text(&sim.url(), &dir.path().join("outbox"), "").replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:0\"\ntoken = \"{STATUS_TOKEN}\""),
    );
    let cfg =
        lotlink::testing::config::from_str(std::path::Path::new("t.toml"), &text).expect("config");
    let (feed, driver) = common::feed();
    let gw = lotlink::testing::app::Gateway::start(&cfg, vec![driver], common::fast_options())
        .await
        .expect("gateway");
    for n in 0..3 {
        feed.send(common::plate(
            &format!("k{n}"),
            &format!("晋T0000{n}"),
            None,
        ))
        .await
        .expect("stored");
    }
    let base = format!("http://{}", gw.status_addr);
    let http = reqwest::Client::new();
    for route in ["/", "/status", "/metrics", "/healthz", "/api/dead"] {
        let r = http
            .get(format!("{base}{route}"))
            .send()
            .await
            .expect("answer");
        assert_eq!(r.status(), 401, "{route} without the token");
        let r = http
            .get(format!("{base}{route}"))
            .bearer_auth("wrong-token-0123456789")
            .send()
            .await
            .expect("answer");
        assert_eq!(r.status(), 401, "{route} with a wrong token");
    }
    let r = http
        .post(format!("{base}/api/space"))
        .json(&serde_json::json!({"occupied": 1}))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 401, "POST without the token");
    let v: serde_json::Value = http
        .get(format!("{base}/status"))
        .bearer_auth(STATUS_TOKEN)
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("json");
    assert_eq!(v["outbox"]["pending"], 3);
    assert!(
        !v.to_string().contains(STATUS_TOKEN),
        "the token is not shown"
    );
    // `?token=` opens the page only, not the data routes.
    let r = http
        .get(format!("{base}/status?token={STATUS_TOKEN}"))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 401);
    let page = http
        .get(format!("{base}/?token={STATUS_TOKEN}"))
        .send()
        .await
        .expect("answer");
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("html");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external assets"
    );

    let Some(chromium) = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|n| common::devices::find_tool(n))
    else {
        assert!(
            !common::devices::require_real(),
            "chromium is required (LOTLINK_REQUIRE_REAL=1)"
        );
        eprintln!("SKIPPED the Chromium part: no chromium installed (apt-get install chromium)");
        return;
    };
    let profile = tempfile::tempdir().expect("profile dir");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-dev-shm-usage",
                "--virtual-time-budget=5000",
                "--dump-dom",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("{base}/?token={STATUS_TOKEN}"))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("chromium finishes")
    .expect("chromium runs");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains(r#"id="pending">3</dd>"#),
        "the rendered page shows 3 pending; stderr:\n{}\nDOM:\n{dom}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dom.contains(r#"id="total">100</dd>"#), "{dom}");
    // The page shows the gateway's own verdict (not one made on the browser's clock).
    let verdict = if v["healthy"] == true {
        "healthy"
    } else {
        "degraded: "
    };
    assert!(
        dom.contains(r#"id="health" class="#) && dom.contains(verdict),
        "{dom}"
    );
    gw.stop().await;
    sim.shutdown().await;
}

/// `/healthz` is 503, with the reason in the body, while the platform cannot be reached: the
/// daemon's platform address is a loopback port nothing listens on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_says_503_and_why_while_the_platform_cannot_be_reached() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let dead_platform = format!("http://127.0.0.1:{}", free_port());
    let text = common::config_text(&dead_platform, &dir.path().join("outbox"), "").replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    let config = dir.path().join("lotlink.toml");
    std::fs::write(&config, text).expect("config");
    let _daemon = Daemon::start(&config, &dir.path().join("daemon.log"));
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/healthz");
    let answer = std::sync::Arc::new(std::sync::Mutex::new(None));
    assert!(
        eventually_async(WAIT, || {
            let (http, url, answer) = (http.clone(), url.clone(), answer.clone());
            async move {
                let Ok(r) = http.get(&url).send().await else {
                    return false; // not listening yet
                };
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                *answer.lock().unwrap() = Some((status, body));
                true
            }
        })
        .await,
        "the status endpoint answers; daemon log:\n{}",
        std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default()
    );
    let (status, body) = answer.lock().unwrap().take().expect("an answer");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("platform not reached since start"),
        "the reason: {body}"
    );

    // For monitoring scripts: exit 1 (degraded) with the same reason, found through
    // `--url` even when the config cannot be read (a user who may not read /etc/lotlink).
    let url = format!("http://127.0.0.1:{port}");
    let out = lotlink(&[
        "status",
        "--check",
        "--url",
        &url,
        "-c",
        "/nonexistent/lotlink.toml",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("platform not reached since start"),
        "{stdout}"
    );
    // The JSON says the same, decided by the daemon: not reachable, not healthy.
    let out = lotlink(&["status", "--json", "--url", &url]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["platform"]["reachable"], false);
    assert_eq!(v["healthy"], false);
    // Nothing at that address any more: 3, "not running".
    drop(_daemon);
    let out = lotlink(&["status", "--check", "--url", &url]);
    assert_eq!(out.status.code(), Some(3));
    // A usage error is 2, distinct from "not running".
    let out = lotlink(&["status", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
}
