//! SIGHUP: the real `lotlink run` binary re-reads its config file. A bad file is refused
//! and the old config keeps working; a good one moves uploads to the new platform URL
//! without losing or duplicating a record in flight.

use crate::common;

use std::process::{Child, Command};
use std::time::Duration;

use common::devices::{free_port, PtyCable};
use common::Daemon;
use common::{delivered_plates, eventually, eventually_async};

const WAIT: Duration = Duration::from_secs(30);

fn hup(child: &Child) {
    let ok = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(ok.success());
}

fn gbk(s: &str) -> Vec<u8> {
    encoding_rs::GBK.encode(s).0.into_owned()
}

fn plate(n: u32) -> String {
    format!("晋R{n:05}")
}

async fn send(cable: &mut PtyCable, n: u32) {
    let line = format!(
        "IN,{},蓝,2026-11-29 08:{:02}:{:02}\r\n",
        plate(n),
        n / 60,
        n % 60
    );
    cable.write(&gbk(&line)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_refuses_a_bad_file_and_moves_to_a_new_platform_without_losing_or_repeating_a_record(
) {
    if !common::devices::serial_ports_work(
        "sighup_refuses_a_bad_file_and_moves_to_a_new_platform_without_losing_or_repeating_a_record",
    ) {
        return;
    }
    let sim_a = common::sim().await;
    let sim_b = common::sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cable = PtyCable::new(dir.path(), "ttyCAM");
    let port = free_port();
    let cam_path = cable.path.clone();
    let text_for = |url: &str, extra: &str| {
        common::config_text(url, &dir.path().join("outbox"), extra).replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        ) + &format!(
            "\n[[camera]]\nname = \"入口1\"\ndirection = \"in\"\ndriver = \"serial\"\nport = \"{}\"\n",
            cam_path.display()
        )
    };
    let config = dir.path().join("lotlink.toml");
    std::fs::write(&config, text_for(&sim_a.url(), "")).expect("config");
    let log = dir.path().join("daemon.log");
    let daemon = Daemon::start(&config, &log);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let http = reqwest::Client::new();
    let status = || {
        let http = http.clone();
        async move {
            http.get(format!("http://127.0.0.1:{port}/status"))
                .send()
                .await
                .ok()?
                .json::<serde_json::Value>()
                .await
                .ok()
        }
    };
    assert!(
        eventually_async(WAIT, || async {
            status()
                .await
                .is_some_and(|v| v["drivers"][0]["connected"] == true)
        })
        .await,
        "daemon up with the camera open; log:\n{}",
        read_log()
    );
    let hash_a = status().await.expect("status")["config_hash"].clone();

    for n in 1..=5 {
        send(&mut cable, n).await;
    }
    assert!(eventually(WAIT, || delivered_plates(&sim_a).len() == 5).await);

    // A bad file (and a new URL in it): refused, every problem logged, old config kept.
    std::fs::write(
        &config,
        text_for(&sim_b.url(), "max_batch = 500\nts_unit = \"hours\""),
    )
    .expect("config");
    hup(&daemon.0);
    assert!(
        eventually(WAIT, || {
            let l = read_log();
            l.contains("platform.max_batch") && l.contains("platform.ts_unit")
        })
        .await,
        "both problems logged; log:\n{}",
        read_log()
    );
    assert!(read_log().contains("still running on the previous config"));
    for n in 6..=10 {
        send(&mut cable, n).await;
    }
    assert!(
        eventually(WAIT, || delivered_plates(&sim_a).len() == 10).await,
        "the old config keeps working"
    );
    assert!(sim_b.records().is_empty());
    assert_eq!(status().await.expect("status")["config_hash"], hash_a);

    // A good file pointing at platform B, applied while records are in flight.
    std::fs::write(&config, text_for(&sim_b.url(), "")).expect("config");
    for n in 11..=15 {
        send(&mut cable, n).await;
    }
    hup(&daemon.0);
    for n in 16..=20 {
        send(&mut cable, n).await;
    }
    assert!(
        eventually(WAIT, || {
            delivered_plates(&sim_a).len() + delivered_plates(&sim_b).len() >= 20
        })
        .await,
        "all 20 delivered; log:\n{}",
        read_log()
    );
    assert!(
        eventually(WAIT, || (16..=20)
            .all(|n| delivered_plates(&sim_b).contains(&plate(n))))
        .await,
        "records after the reload go to the new URL"
    );
    let a = delivered_plates(&sim_a);
    let b = delivered_plates(&sim_b);
    let mut all: Vec<String> = a.iter().chain(b.iter()).cloned().collect();
    all.sort();
    let want: Vec<String> = (1..=20).map(plate).collect();
    assert_eq!(all, want, "each record exactly once across both platforms");
    assert!(read_log().contains("config reloaded"));
    assert_ne!(status().await.expect("status")["config_hash"], hash_a);
    sim_a.shutdown().await;
    sim_b.shutdown().await;
}
