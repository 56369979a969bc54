//! The status endpoint and the operator CLI against a running daemon: the real `lotlink`
//! binary with a serial camera on a pseudo-terminal, the platform simulator, and the CLI
//! commands run as the real binary too.

mod common;

use std::process::{Child, Stdio};
use std::time::Duration;

use common::devices::{free_port, PtyCable};
use common::{delivered_plates, eventually, eventually_async};

const WAIT: Duration = Duration::from_secs(30);

struct Daemon(Child);
impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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

    // Nothing listens yet: exit code 2 and a message that says so.
    let out = lotlink(&["status", "--config", cfg]);
    assert_eq!(out.status.code(), Some(2));
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
