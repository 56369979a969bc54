//! What must survive the outbox, run through the real `lotlink run` binary: a local change
//! of `[outbox] path` does not leave pending records behind (the start is refused, then
//! the store is moved by hand and everything is delivered), and the store and the gateway
//! state file are private whatever umask started the daemon.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::devices::free_port;
use common::{delivered_plates, eventually, eventually_async, Daemon};
use lotlink::testing::outbox::{Outbox, OutboxOptions};

const WAIT: Duration = Duration::from_secs(30);

/// A config with the status endpoint on `port` and the outbox at `outbox`.
fn config_at(url: &str, outbox: &Path, port: u16) -> String {
    common::config_text(url, outbox, "").replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    )
}

/// Wait until the daemon on `port` answers `/status` and reached the platform.
async fn wait_up(port: u16, log: &Path) {
    assert!(
        eventually_async(WAIT, || async {
            let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/status")).await else {
                return false;
            };
            r.json::<serde_json::Value>()
                .await
                .is_ok_and(|v| v["platform"]["last_success_ms"].is_i64())
        })
        .await,
        "daemon up; log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// Put `n` records into the store at `path` as a gateway would have (the daemon is stopped).
async fn plant(path: &Path, n: u64) {
    let (ob, _) = Outbox::open(path, OutboxOptions::default()).expect("store opens");
    for i in 1..=n {
        ob.submit(common::new_record(i, &common::small_jpeg(i)))
            .await
            .expect("submit");
    }
    ob.flush().await.expect("flush");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_is_refused_while_the_old_outbox_path_holds_pending_records_and_a_moved_store_is_delivered(
) {
    let sim = common::sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = dir.path().join("lotlink.toml");
    let log = dir.path().join("daemon.log");
    let old = dir.path().join("outbox-a");
    std::fs::write(&config, config_at(&sim.url(), &old, port)).expect("config");
    let daemon = Daemon::start(&config, &log);
    wait_up(port, &log).await;
    daemon.stop();
    // Three events wait in the store when the operator edits the path.
    plant(&old, 3).await;
    let new = dir.path().join("outbox-b");
    std::fs::write(&config, config_at(&sim.url(), &new, port)).expect("config");

    let mut refused = Daemon::start(&config, &log);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        eventually(WAIT, || matches!(refused.0.try_wait(), Ok(Some(_)))).await,
        "the daemon refuses to start and exits; log:\n{}",
        read_log()
    );
    assert!(!refused.0.wait().expect("exit status").success());
    let message = read_log();
    for want in [
        old.display().to_string(),
        new.display().to_string(),
        "3 pending record(s)".into(),
        "--abandon-old-outbox".into(),
        "mv ".into(),
    ] {
        assert!(message.contains(&want), "{want:?} in:\n{message}");
    }
    assert!(!new.exists(), "no store is made at the new path");
    assert!(sim.records().is_empty());

    // The first way out: move the old store to the new path. All three are delivered.
    std::fs::rename(&old, &new).expect("mv");
    let daemon = Daemon::start(&config, &log);
    wait_up(port, &log).await;
    assert!(
        eventually(WAIT, || delivered_plates(&sim).len() == 3).await,
        "the moved store is drained; log:\n{}",
        read_log()
    );
    assert_eq!(delivered_plates(&sim), ["K1", "K2", "K3"]);
    daemon.stop();

    // A drained old store does not hold a start back.
    let third = dir.path().join("outbox-c");
    std::fs::write(&config, config_at(&sim.url(), &third, port)).expect("config");
    let daemon = Daemon::start(&config, &log);
    wait_up(port, &log).await;
    assert!(third.is_dir());
    daemon.stop();
    assert_eq!(delivered_plates(&sim).len(), 3, "nothing sent twice");
    sim.shutdown().await;
}

/// Every file and directory under `root` with its permission bits.
fn modes(root: &Path) -> Vec<(PathBuf, u32, bool)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let m = std::fs::symlink_metadata(&p).expect("metadata");
        if m.is_dir() {
            for e in std::fs::read_dir(&p).expect("read_dir") {
                todo.push(e.expect("entry").path());
            }
        }
        out.push((p, m.permissions().mode() & 0o777, m.is_dir()));
    }
    out
}

/// Fail with every path whose mode is not private.
fn assert_private(root: &Path, what: &str) {
    let all = modes(root);
    assert!(
        all.iter().filter(|(_, _, dir)| !dir).count() >= 2,
        "{what}: the store has files: {all:?}"
    );
    let open: Vec<_> = all
        .iter()
        .filter(|(_, mode, dir)| *mode != if *dir { 0o700 } else { 0o600 })
        .map(|(p, mode, _)| format!("{} {mode:o}", p.display()))
        .collect();
    assert!(open.is_empty(), "{what}: not private: {open:?}");
}

/// `lotlink run --config <config>` started by a shell whose umask is 022.
fn start_with_umask_022(config: &Path, log: &Path) -> Daemon {
    let inner = common::lotlink_command();
    Daemon(
        Command::new("sh")
            .arg("-c")
            .arg("umask 022 && exec \"$@\"")
            .arg("sh")
            .arg(inner.get_program())
            .args(inner.get_args())
            .args(["run", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("log"))
            .spawn()
            .expect("the daemon starts"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_and_the_state_file_are_private_even_when_the_daemon_is_started_with_umask_022() {
    use std::os::unix::fs::PermissionsExt;
    let sim = common::sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = dir.path().join("lotlink.toml");
    let log = dir.path().join("daemon.log");
    let outbox = dir.path().join("outbox");
    std::fs::write(&config, config_at(&sim.url(), &outbox, port)).expect("config");

    // A fresh store: what the daemon creates.
    let daemon = start_with_umask_022(&config, &log);
    wait_up(port, &log).await;
    daemon.stop();
    assert_private(&outbox, "a store the daemon made");
    let state = dir.path().join("lotlink.state");
    let mode = std::fs::metadata(&state)
        .expect("the state file")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the state file");

    // A store an older gateway left world-readable, with an event in it: made private at
    // start, and the event still delivered.
    plant(&outbox, 1).await;
    for (p, _, is_dir) in modes(&outbox) {
        let open = if is_dir { 0o755 } else { 0o644 };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(open)).expect("chmod");
    }
    let daemon = start_with_umask_022(&config, &log);
    wait_up(port, &log).await;
    assert!(
        eventually(WAIT, || delivered_plates(&sim).len() == 1).await,
        "the event is delivered"
    );
    daemon.stop();
    assert_private(&outbox, "a world-readable store after a start");
    sim.shutdown().await;
}
