//! The systemd notify protocol, spoken by the real `lotlink run` binary to a notify socket
//! the test owns (as systemd would with `Type=notify` and `WatchdogSec=`).

#![cfg(unix)]

use crate::common;

use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::net::UnixDatagram;

const WAIT: Duration = Duration::from_secs(30);

async fn next(sock: &UnixDatagram) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, sock.recv(&mut buf))
        .await
        .expect("a notify message in time")
        .expect("recv");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Read messages until one contains `what` (within [`WAIT`] overall); all are returned.
async fn until(sock: &UnixDatagram, what: &str) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {what} within {WAIT:?}; got {seen:?}"
        );
        let m = next(sock).await;
        let done = m.lines().any(|l| l == what || l.starts_with(what));
        seen.push(m);
        if done {
            return seen;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_tells_systemd_ready_status_reloading_watchdog_and_stopping() {
    let sim = common::sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("lotlink.toml");
    std::fs::write(
        &config,
        common::config_text(&sim.url(), &dir.path().join("outbox"), ""),
    )
    .expect("config");
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("notify socket");
    // systemd names the watched process in WATCHDOG_PID: the shell's pid, kept by `exec`.
    // Under emulation the runner (LOTLINK_TEST_RUNNER) goes first; it keeps the pid too.
    let runner = std::env::var("LOTLINK_TEST_RUNNER").unwrap_or_default();
    let mut child = Command::new("sh")
        .args([
            "-c",
            &format!("WATCHDOG_PID=$$ exec {runner} \"$0\" run --config \"$1\""),
        ])
        .arg(env!("CARGO_BIN_EXE_lotlink"))
        .arg(&config)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "1000000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("daemon starts");

    let first = until(&sock, "READY=1").await;
    assert!(first.iter().any(|m| m.contains("READY=1")), "{first:?}");
    let status = until(&sock, "STATUS=").await;
    assert!(
        status
            .last()
            .is_some_and(|m| m.contains("STATUS=outbox 0 pending, 0 dead letters")),
        "{status:?}"
    );
    // WatchdogSec=1s: pings at half the period while the uploader is alive.
    until(&sock, "WATCHDOG=1").await;
    until(&sock, "WATCHDOG=1").await;

    let _ = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status();
    let reload = until(&sock, "RELOADING=1").await;
    assert!(
        reload.last().is_some_and(|m| m.contains("MONOTONIC_USEC=")),
        "{reload:?}"
    );
    until(&sock, "READY=1").await;

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    until(&sock, "STOPPING=1").await;
    let exit = child.wait().expect("exit");
    assert!(exit.success(), "clean exit after SIGTERM: {exit:?}");
    sim.shutdown().await;
}
