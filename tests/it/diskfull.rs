//! A full disk, against the real `lotlink` binary: the outbox on a small tmpfs that fills up.
//!
//! What it proves:
//!
//! (a) A full disk is a state, not a crash. The platform is down and the camera keeps
//!     publishing pictures until the outbox's file system is full (a filler file leaves only
//!     a few MiB, far below `[outbox] max_disk`, so the disk fills before the quota). Then
//!     new events are refused: not acknowledged (the broker keeps them), the gateway stays
//!     up and answers on its status port, and `/healthz` answers 503 naming a problem that
//!     is not the platform (it was reached: the heartbeat's window has not run out). Then
//!     the platform comes back: the uploader drains what was stored, which gives the space
//!     back, and the refused events, re-sent by the broker, are taken again by the same
//!     process, no restart; so are new ones; `/healthz` is 200 again. Every event the
//!     broker acknowledged to the camera is at the platform exactly once.
//!
//! (b) The gateway starts on a full disk. A backlog waits in the outbox, the gateway is
//!     stopped, and a filler file takes the tmpfs to its last byte. The gateway must start
//!     (systemd's `READY=1` on a notify socket the test owns, `/status` answering), drain
//!     the backlog to the platform, and take new events once draining has given space back.
//!     Every event arrives exactly once.
//!
//! How: `mount -t tmpfs -o size=…` on a temporary directory (unmounted by a guard, also when
//! the test fails), the outbox on it, everything else (config, log, notify socket) beside
//! it on the ordinary disk; a real mosquitto (persistence on) between an MQTT camera
//! publishing `QoS` 1 and the gateway, which acknowledges an event to the broker only once
//! it is stored; the platform simulator in process, which answers 1004 to a record it has
//! already (so a repeated upload is not a second record) and whose stored records are
//! counted by plate.
//!
//! Needs root (`mount`) and mosquitto; without them the tests are skipped with a message,
//! and fail under `LOTLINK_REQUIRE_REAL=1` (CI).

#![cfg(unix)]

use crate::common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use common::devices::{free_port, Broker, BrokerKind, Publisher};
use common::gateway::{
    delivered, free_bytes, is_root, missing_tools, path_str, skip_or_fail, tool, write_config,
    Extras, Gateway, CAMERA_TOPIC, MQTT_CAMERA,
};
use lotlink_sim::{Mode, PlatformSim};
use serde_json::Value;

/// The tmpfs's size.
const TMPFS_SIZE: &str = "24m";
/// Far above what the tmpfs holds: the disk fills before the quota.
const MAX_DISK: &str = "8MiB";
/// What the filler leaves free in (a): a few dozen pictures.
const HEADROOM: u64 = 3 << 20;
/// Events stored before the stop in (b).
const BACKLOG: u64 = 60;

/// A tmpfs mounted on a temporary directory; unmounted when dropped.
struct Tmpfs {
    /// Kept (not deleted) if unmounting failed.
    dir: Option<tempfile::TempDir>,
    mnt: PathBuf,
    mounted: bool,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).map_err(|e| format!("mkdir {}: {e}", mnt.display()))?;
        let mut t = Tmpfs {
            dir: Some(dir),
            mnt,
            mounted: false,
        };
        tool(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
                path_str(&t.mnt),
            ],
        )?;
        t.mounted = true;
        Ok(t)
    }

    /// The ordinary directory the mount point is in (config, log, sockets go here).
    fn beside(&self) -> &Path {
        self.dir.as_ref().expect("tempdir").path()
    }

    /// Write a filler file on the tmpfs until only `leave` bytes are free (0: to the last
    /// byte, until the file system says ENOSPC). Returns the filler's size.
    fn fill(&self, name: &str, leave: u64) -> u64 {
        let path = self.mnt.join(name);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("open the filler");
        let mut written = 0u64;
        // Chunks shrink as the free space does; the last ones are single bytes.
        for chunk in [1u64 << 20, 64 << 10, 4 << 10, 1] {
            let buf = vec![0x5Au8; usize::try_from(chunk).unwrap_or(1)];
            loop {
                let free = free_bytes(&self.mnt);
                if leave > 0 && free < leave + chunk {
                    break;
                }
                match f.write(&buf) {
                    Ok(0) => break,
                    Ok(n) => written += n as u64,
                    Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                    Err(e) => panic!("write the filler: {e}"),
                }
            }
        }
        written
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if self.mounted {
            let mnt = path_str(&self.mnt);
            if let Err(e) = tool("umount", &[mnt]).or_else(|_| tool("umount", &["-l", mnt])) {
                eprintln!("diskfull: cleanup: unmount {mnt}: {e}");
                // Never delete through a mount point that is still there.
                if let Some(d) = self.dir.take() {
                    eprintln!("diskfull: left {} in place", d.keep().display());
                }
            }
        }
    }
}

/// What a test needs: a broker, a platform, a tmpfs and a gateway configured on it.
struct Rig {
    // Field order is drop order: the gateway goes before the tmpfs it keeps busy.
    gw: Gateway,
    camera: Publisher,
    /// Kept for its life: the broker runs as long as the rig.
    _broker: Broker,
    sim: PlatformSim,
    http: reqwest::Client,
    picture: String,
    /// The broker's acknowledgements of the warm-up events.
    acked_base: u64,
    tmpfs: Tmpfs,
}

/// Set everything up, or say why this machine cannot (the caller skips or fails).
async fn rig(test: &str) -> Option<Rig> {
    common::init_log();
    if !is_root() {
        skip_or_fail(test, "needs root (mount -t tmpfs)");
        return None;
    }
    let missing = missing_tools(&["mount", "umount"]);
    if !missing.is_empty() {
        skip_or_fail(
            test,
            &format!("missing {} (apt-get install mount)", missing.join(", ")),
        );
        return None;
    }
    let broker = Broker::start().await;
    if broker.kind != BrokerKind::Mosquitto {
        skip_or_fail(test, "needs mosquitto (apt-get install mosquitto)");
        return None;
    }
    let tmpfs = match Tmpfs::mount(TMPFS_SIZE) {
        Ok(t) => t,
        Err(e) => {
            skip_or_fail(test, &format!("cannot mount a tmpfs: {e}"));
            return None;
        }
    };
    let sim = common::sim().await;
    let status_port = free_port();
    let outbox = tmpfs.mnt.join("outbox");
    let extras = Extras {
        max_disk: Some(MAX_DISK),
        outbox: Some(&outbox),
        ..Extras::default()
    };
    let config = write_config(tmpfs.beside(), &sim, &broker, status_port, &extras);
    let log = tmpfs.beside().join("gateway.log");
    let mut gw = Gateway::new(config, status_port, Some(log));
    let http = reqwest::Client::new();
    gw.start();
    gw.wait_ready(&http).await;
    let camera = Publisher::connect(broker.port, &format!("{test}-camera")).await;
    // A camera picture within the platform's budget (~36 KB): stored as it is.
    let picture = base64::engine::general_purpose::STANDARD.encode(
        lotlink::testing::imaging::prepare(
            &lotlink::testing::imaging::synth_jpeg(1920, 1080, 5, 90),
            lotlink::testing::imaging::MAX_B64_CHARS,
        )
        .bytes,
    );
    let mut rig = Rig {
        gw,
        camera,
        _broker: broker,
        sim,
        http,
        picture,
        acked_base: 0,
        tmpfs,
    };
    // The broker keeps events only for a subscribed session: warm up until one got
    // through (the platform is up for it).
    let mut warm = false;
    for _ in 0..100 {
        rig.publish(0).await;
        if common::eventually(Duration::from_millis(300), || !rig.sim.records().is_empty()).await {
            warm = true;
            break;
        }
    }
    assert!(warm, "the first event got through; {}", rig.gw.log_tail());
    // The broker answered the warm-up before the platform had it: all its acks are in.
    rig.acked_base = rig.camera.acked();
    Some(rig)
}

fn plate(n: u64) -> String {
    format!("晋F{n:05}")
}

impl Rig {
    /// Publish event `n` with the picture.
    async fn publish(&self, n: u64) {
        let direction = if n.is_multiple_of(2) { "in" } else { "out" };
        self.camera
            .publish(
                CAMERA_TOPIC,
                format!(
                    r#"{{"plate":"{}","id":"df-{n}","direction":"{direction}","image":"{}"}}"#,
                    plate(n),
                    self.picture
                ),
            )
            .await;
    }

    async fn status(&self) -> Option<Value> {
        self.gw.status(&self.http).await
    }

    async fn pending(&self) -> Option<u64> {
        self.status().await?["outbox"]["pending"].as_u64()
    }

    /// The camera driver's last problem (set when the gateway could not store an event).
    async fn problem(&self) -> Option<String> {
        self.gw.driver(&self.http, MQTT_CAMERA).await?["last_problem"]
            .as_str()
            .map(str::to_owned)
    }

    /// Until every plate of `ns` is at the platform (`timeout`, scaled).
    async fn arrived(&self, ns: impl Iterator<Item = u64> + Clone, timeout: Duration) -> bool {
        common::eventually(timeout, || {
            let got = delivered(&self.sim);
            ns.clone().all(|n| got.contains_key(&plate(n)))
        })
        .await
    }

    /// Plates of `ns` missing at the platform, and plates stored there more than once.
    fn tally(&self, ns: impl Iterator<Item = u64>) -> (Vec<String>, Vec<(String, u64)>) {
        let got = delivered(&self.sim);
        let missing = ns.map(plate).filter(|p| !got.contains_key(p)).collect();
        let twice = got
            .into_iter()
            .filter(|(_, (count, _))| *count > 1)
            .map(|(p, (count, _))| (p, count))
            .collect();
        (missing, twice)
    }

    /// Panic with `what`, the gateway's state and its log, unless `ok`.
    async fn check(&mut self, ok: bool, what: &str) {
        if !ok {
            let exit = self.gw.exited();
            panic!(
                "{what}\n  gateway exit: {exit:?}\n  status: {:?}\n  healthz: {:?}\n  tmpfs free: {} bytes\n{}",
                self.status().await,
                self.gw.healthz(&self.http).await,
                free_bytes(&self.tmpfs.mnt),
                self.gw.log_tail()
            );
        }
    }
}

/// `/healthz` is 503 and names a problem other than the platform's.
fn unhealthy_for_the_outbox(h: Option<&(u16, String)>) -> bool {
    h.is_some_and(|(code, body)| {
        *code == 503
            && body
                .trim()
                .split("; ")
                .any(|p| !p.is_empty() && !p.starts_with("platform "))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_new_events_and_the_gateway_takes_them_again_without_a_restart_once_draining_frees_space(
) {
    let Some(mut rig) = rig("diskfull: refuse and recover").await else {
        return;
    };
    // Reached the platform (heartbeat), outbox writable: healthy before the disk fills.
    let (gw, http) = (&rig.gw, &rig.http);
    let healthy = common::eventually_async(Duration::from_secs(30), || async move {
        gw.healthz(http).await.is_some_and(|(code, _)| code == 200)
    })
    .await;
    rig.check(healthy, "/healthz is 200 before the disk fills")
        .await;

    // The platform goes down for "days"; a filler file leaves a few MiB.
    rig.sim.set_mode(Mode::Refuse);
    let filler = rig.tmpfs.fill("filler", HEADROOM);
    eprintln!(
        "diskfull: filler {filler} bytes, {} bytes left for the outbox",
        free_bytes(&rig.tmpfs.mnt)
    );

    // Pictures until the gateway refuses one.
    let mut published = 0u64;
    let mut refused = false;
    while !refused && published < 400 {
        for _ in 0..10 {
            published += 1;
            rig.publish(published).await;
        }
        let (r, want) = (&rig, published);
        let _ = common::eventually_async(Duration::from_secs(30), || async move {
            r.pending().await.is_some_and(|p| p >= want) || r.problem().await.is_some()
        })
        .await;
        refused = rig.problem().await.is_some();
    }
    let problem = rig.problem().await;
    rig.check(
        refused,
        &format!("the gateway refused an event once the disk was full ({published} published)"),
    )
    .await;
    let stored_when_full = rig.pending().await.unwrap_or(0);
    eprintln!(
        "diskfull: refused after {published} published, {stored_when_full} stored, {} bytes free; the driver's problem: {problem:?}",
        free_bytes(&rig.tmpfs.mnt)
    );

    // More keep coming while it refuses: the broker takes them all, the gateway stays up,
    // answers, and says it is unhealthy because of the outbox.
    for _ in 0..20 {
        published += 1;
        rig.publish(published).await;
    }
    let all_acked = common::eventually(Duration::from_secs(30), || {
        rig.camera.acked() >= rig.acked_base + published
    })
    .await;
    rig.check(all_acked, "the broker acknowledged every event")
        .await;
    let (gw, http) = (&rig.gw, &rig.http);
    let unhealthy = common::eventually_async(Duration::from_secs(30), || async move {
        unhealthy_for_the_outbox(gw.healthz(http).await.as_ref())
    })
    .await;
    let health = rig.gw.healthz(&rig.http).await;
    eprintln!("diskfull: /healthz while refusing: {health:?}");
    rig.check(
        unhealthy,
        "/healthz answers 503 with an outbox problem while events are refused",
    )
    .await;
    let stored = rig.pending().await.unwrap_or(0);
    rig.check(
        stored + 20 <= published,
        &format!("the gateway stopped taking events: {stored} stored of {published}"),
    )
    .await;
    let running = rig.gw.exited().is_none();
    rig.check(running, "the gateway stays up on a full disk")
        .await;

    // The platform comes back: what was stored drains, the space comes back, and the same
    // process takes the refused events (the broker re-sends them) and new ones.
    rig.sim.set_mode(Mode::Up);
    let drained = common::eventually(Duration::from_secs(60), || {
        rig.sim.records().len() as u64 > stored_when_full
    })
    .await;
    rig.check(
        drained,
        &format!(
            "the uploader drained the {stored_when_full} events stored before the disk filled"
        ),
    )
    .await;
    let all_in = rig.arrived(1..=published, Duration::from_secs(120)).await;
    let (missing, _) = rig.tally(1..=published);
    rig.check(
        all_in,
        &format!(
            "once space came back, the refused events were taken without a restart and delivered; {} of {published} missing: {missing:?}",
            missing.len()
        ),
    )
    .await;
    for _ in 0..20 {
        published += 1;
        rig.publish(published).await;
    }
    let new_in = rig
        .arrived(published - 19..=published, Duration::from_secs(60))
        .await;
    rig.check(
        new_in,
        "new events are taken and delivered after the recovery",
    )
    .await;
    let (gw, http) = (&rig.gw, &rig.http);
    let healthy = common::eventually_async(Duration::from_secs(30), || async move {
        gw.healthz(http).await.is_some_and(|(code, _)| code == 200)
    })
    .await;
    rig.check(healthy, "/healthz is 200 again after the recovery")
        .await;
    let running = rig.gw.exited().is_none();
    rig.check(running, "the same gateway process did all of it")
        .await;

    let (missing, twice) = rig.tally(0..=published);
    eprintln!(
        "diskfull (a): {published} published, {} acknowledged by the broker, {} records at the platform, missing {}, duplicates {}, 1004 answered {}",
        rig.camera.acked() - rig.acked_base,
        rig.sim.records().len(),
        missing.len(),
        twice.len(),
        rig.sim.stats().rejected_with(1004)
    );
    assert!(missing.is_empty(), "lost: {missing:?}");
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
}

/// The notify socket a systemd would listen on.
struct Notify {
    sock: tokio::net::UnixDatagram,
    path: PathBuf,
}

impl Notify {
    fn bind(dir: &Path) -> Notify {
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let sock = tokio::net::UnixDatagram::bind(&path).expect("notify socket");
        Notify { sock, path }
    }

    /// Until a message holds `READY=1`; `false` after 30 s (scaled).
    async fn ready(&self) -> bool {
        let wait = Duration::from_secs(30) * common::time_scale();
        let deadline = tokio::time::Instant::now() + wait;
        let mut buf = vec![0u8; 4096];
        loop {
            match tokio::time::timeout_at(deadline, self.sock.recv(&mut buf)).await {
                Ok(Ok(n)) => {
                    if String::from_utf8_lossy(&buf[..n])
                        .lines()
                        .any(|l| l == "READY=1")
                    {
                        return true;
                    }
                }
                Ok(Err(_)) | Err(_) => return false,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_starts_on_a_full_disk_drains_its_backlog_and_then_takes_new_events() {
    let Some(mut rig) = rig("diskfull: start on a full disk").await else {
        return;
    };
    // A backlog builds while the platform is down.
    rig.sim.set_mode(Mode::Refuse);
    for n in 1..=BACKLOG {
        rig.publish(n).await;
    }
    let r = &rig;
    let stored = common::eventually_async(Duration::from_secs(60), || async move {
        r.pending().await.is_some_and(|p| p >= BACKLOG)
    })
    .await;
    rig.check(
        stored,
        &format!("the {BACKLOG} events of the backlog were stored"),
    )
    .await;

    // Stopped as systemd would stop it; then the disk fills to its last byte.
    assert!(rig.gw.signal(libc::SIGTERM), "SIGTERM to the gateway");
    let gw = &mut rig.gw;
    let stopped = common::eventually(Duration::from_secs(30), || gw.exited().is_some()).await;
    rig.check(stopped, "the gateway stopped on SIGTERM").await;
    rig.gw.kill();
    let filler = rig.tmpfs.fill("filler", 0);
    let free = free_bytes(&rig.tmpfs.mnt);
    eprintln!("diskfull: filler {filler} bytes, {free} bytes free");
    assert_eq!(free, 0, "the tmpfs is full to the last byte");

    // The platform is back; the gateway starts on the full disk.
    rig.sim.set_mode(Mode::Up);
    let notify = Notify::bind(rig.tmpfs.beside());
    rig.gw
        .start_with_env(&[("NOTIFY_SOCKET", notify.path.as_os_str())]);
    let ready = notify.ready().await;
    rig.check(ready, "the gateway started on a full disk (READY=1)")
        .await;
    let answering = rig.gw.try_wait_ready(&rig.http).await;
    rig.check(
        answering,
        "the gateway answers on its status port on a full disk",
    )
    .await;

    let drained = rig.arrived(1..=BACKLOG, Duration::from_secs(60)).await;
    let (missing, _) = rig.tally(1..=BACKLOG);
    rig.check(
        drained,
        &format!(
            "the backlog was drained to the platform from a full disk; {} of {BACKLOG} missing: {missing:?}",
            missing.len()
        ),
    )
    .await;

    // Draining gave space back: new events are taken.
    eprintln!(
        "diskfull: {} bytes free after the drain",
        free_bytes(&rig.tmpfs.mnt)
    );
    let last = BACKLOG + 20;
    for n in BACKLOG + 1..=last {
        rig.publish(n).await;
    }
    let new_in = rig
        .arrived(BACKLOG + 1..=last, Duration::from_secs(90))
        .await;
    let (missing, _) = rig.tally(BACKLOG + 1..=last);
    rig.check(
        new_in,
        &format!(
            "new events are taken once draining gave space back; {} of 20 missing: {missing:?}",
            missing.len()
        ),
    )
    .await;
    let running = rig.gw.exited().is_none();
    rig.check(running, "the gateway kept running").await;

    let (missing, twice) = rig.tally(0..=last);
    eprintln!(
        "diskfull (b): {last} published, {} records at the platform, missing {}, duplicates {}, 1004 answered {}",
        rig.sim.records().len(),
        missing.len(),
        twice.len(),
        rig.sim.stats().rejected_with(1004)
    );
    assert!(missing.is_empty(), "lost: {missing:?}");
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
}
