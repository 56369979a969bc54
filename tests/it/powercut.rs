//! Power cuts that lose the page cache, against the real `lotlink` binary.
//!
//! What it proves: every event the camera published and the broker acknowledged (PUBACK)
//! reaches the platform exactly once, through 50 power cuts that throw away everything the
//! kernel had not yet written to the disk, at random moments under continuous ingest (with
//! images, some of them large enough that the gateway must shrink them), upload (the
//! platform is up most of the time and down for stretches, so a backlog builds), and quota
//! compaction (a 1 MiB `[outbox] max_disk`, so a backlog makes the quota replace images).
//!
//! How a power cut is made. The disk: an XFS file system with reflinks on a loop file; inside
//! it the backing file of an ext4 file system, attached with `losetup --direct-io=on`, so
//! what ext4 writes to its block device goes straight into the backing file and what is only
//! in ext4's page cache does not. The outbox lives on the ext4. A cut: `SIGSTOP` the gateway
//! (nothing more happens in it), `cp --reflink=always` the backing file (an instant,
//! consistent image of exactly what had reached the "disk"), `SIGKILL` the gateway, unmount
//! and detach the original; then attach the copy on a new loop device (direct I/O on), mount
//! it (ext4 replays its journal, as after a real power loss) and start the gateway on it.
//! Everything the gateway wrote but did not sync is gone, as after a real power loss; what
//! it synced is there. Whatever the gateway had written, the broker keeps what the gateway
//! has not acknowledged (persistent session, `QoS` 1) and sends it again. The harness checks
//! itself: just before each image is taken the test writes a probe file on the ext4 without
//! a sync, and the run fails if every probe survived its cut (then the cuts would not be
//! losing the page cache, and would prove nothing).
//!
//! The camera: an MQTT client publishing `QoS` 1 through a real mosquitto (persistence on)
//! at a steady pace for the whole run, never stopped by a cut. The gateway acknowledges an
//! event to the broker only once it is stored, so the broker's PUBACK to the camera is the
//! promise under test: an event the broker accepted must reach the platform once. The
//! simulator answers 1004 to a record it already has (same imgName, time, plate…), so an
//! upload repeated after a cut is not a second record; a record stored twice by the gateway
//! (say with two different times) is, and is counted as a duplicate by its plate.
//!
//! The moments, chosen with a seeded rng (the seed is printed; `LOTLINK_POWERCUT_SEED`
//! replays a run): right after the gateway came up (while it replays and takes the broker's
//! backlog), after k more events stored, after k more records reached the platform (when it
//! is up), or with the platform down once the outbox is near its quota and k more events
//! came in (compaction). The run fails if the quota never compacted (no record arrived with
//! its image replaced): then it would not have tested what it claims.
//!
//! At the end the camera stops, the platform comes up, and the gateway drains: every
//! published event must be at the platform exactly once and as it was sent (direction, and
//! the picture byte for byte unless the gateway shrank it or the quota replaced it), no
//! store may have been moved aside, and a summary is printed (cuts, events acknowledged,
//! delivered, duplicates).
//!
//! Needs root, `losetup`, `mkfs.xfs` (xfsprogs), `mkfs.ext4` (e2fsprogs), `mount`, `cp` and
//! mosquitto; without them it is skipped with a message, and fails under
//! `LOTLINK_REQUIRE_REAL=1` (CI). `LOTLINK_POWERCUT_CUTS=500` runs a longer test (default 50;
//! 5 under an emulator). `LOTLINK_CHAOS_LOG=info` makes the gateway's log (printed on
//! failure) more talkative.

#![cfg(unix)]

use crate::common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::devices::{free_port, Broker, BrokerKind, Publisher};
use common::gateway::{
    delivered, is_root, missing_tools, path_str, skip_or_fail, tool, write_config, Extras, Gateway,
    CAMERA_TOPIC, MQTT_CAMERA,
};
use lotlink::drivers::CancellationToken;
use lotlink_sim::{Mode, PlatformSim};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TEST: &str = "powercut";
/// The outbox quota: small, so a backlog of a few seconds makes the quota compact.
const MAX_DISK: &str = "1MiB";
const MAX_DISK_BYTES: u64 = 1 << 20;
/// The ext4 file system's size (its backing file is sparse).
const EXT4_BYTES: u64 = 256 << 20;
/// The XFS file system's size (a sparse loop file; the copies share their blocks).
const XFS_BYTES: u64 = 2 << 30;
/// One camera event every this long, whatever happens to the gateway.
const PACE: Duration = Duration::from_millis(40);
/// How long a chosen moment may take to come before the run fails for lack of progress.
const PROGRESS: Duration = Duration::from_secs(60);

/// The stack of file systems under the outbox (see the module docs). Dropping it unmounts
/// and detaches everything it set up, also when the test fails half-way.
struct Disk {
    /// Holds the XFS image and the mount points; kept (not deleted) if unmounting failed.
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    xfs_loop: Option<String>,
    xfs_mounted: bool,
    ext4_loop: Option<String>,
    ext4_mounted: bool,
    /// The ext4 backing file in use (inside the XFS).
    backing: PathBuf,
    generation: u32,
}

impl Disk {
    fn new() -> Result<Disk, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let root = dir.path().to_path_buf();
        let mut disk = Disk {
            dir: Some(dir),
            backing: root.join("xfs").join("ext4-0.img"),
            root,
            xfs_loop: None,
            xfs_mounted: false,
            ext4_loop: None,
            ext4_mounted: false,
            generation: 0,
        };
        let image = disk.root.join("xfs.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(XFS_BYTES))
            .map_err(|e| format!("create {}: {e}", image.display()))?;
        tool("mkfs.xfs", &["-q", "-m", "reflink=1", path_str(&image)])?;
        disk.xfs_loop = Some(tool("losetup", &["--show", "-f", path_str(&image)])?);
        let xfs = disk.root.join("xfs");
        let mnt = disk.ext4_dir();
        for d in [&xfs, &mnt] {
            std::fs::create_dir(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
        }
        tool(
            "mount",
            &[disk.xfs_loop.as_deref().unwrap_or_default(), path_str(&xfs)],
        )?;
        disk.xfs_mounted = true;
        std::fs::File::create(&disk.backing)
            .and_then(|f| f.set_len(EXT4_BYTES))
            .map_err(|e| format!("create {}: {e}", disk.backing.display()))?;
        // 4 KiB blocks: a loop device with direct I/O may take the backing file system's
        // block size as its sector size, and ext4's default 1 KiB blocks for a small file
        // system then no longer mount. Inode tables and the journal written now, not by a
        // background thread that would race the cuts.
        tool(
            "mkfs.ext4",
            &[
                "-q",
                "-F",
                "-b",
                "4096",
                "-E",
                "lazy_itable_init=0,lazy_journal_init=0",
                path_str(&disk.backing),
            ],
        )?;
        disk.attach()?;
        Ok(disk)
    }

    /// Where the ext4 is mounted.
    fn ext4_dir(&self) -> PathBuf {
        self.root.join("ext4")
    }

    /// Attach the backing file with direct I/O and mount it.
    fn attach(&mut self) -> Result<(), String> {
        let dev = tool(
            "losetup",
            &["--direct-io=on", "--show", "-f", path_str(&self.backing)],
        )?;
        self.ext4_loop = Some(dev.clone());
        // losetup falls back to buffered I/O when the backing file system refuses O_DIRECT:
        // then a cut would keep writes that never reached the backing file. Make sure.
        let name = dev.trim_start_matches("/dev/");
        let dio = std::fs::read_to_string(format!("/sys/block/{name}/loop/dio"))
            .map_err(|e| format!("/sys/block/{name}/loop/dio: {e}"))?;
        if dio.trim() != "1" {
            return Err(format!(
                "{dev}: direct I/O could not be turned on (dio = {dio:?})"
            ));
        }
        tool("mount", &[&dev, path_str(&self.ext4_dir())])?;
        self.ext4_mounted = true;
        Ok(())
    }

    /// Unmount and detach the ext4.
    fn detach(&mut self) -> Result<(), String> {
        if self.ext4_mounted {
            tool("umount", &[path_str(&self.ext4_dir())])?;
            self.ext4_mounted = false;
        }
        if let Some(dev) = self.ext4_loop.take() {
            tool("losetup", &["-d", &dev])?;
        }
        Ok(())
    }

    /// The power cut, with the gateway already stopped (`SIGSTOP`): the image of what
    /// reached the disk is taken now; then the gateway is killed and the disk swapped for
    /// that image. Just before, a probe file is written without a sync; returns whether it
    /// survived intact (it should not: that is the page cache being lost).
    fn cut(&mut self, gw: &mut Gateway) -> Result<bool, String> {
        self.generation += 1;
        let probe = self.ext4_dir().join(format!("probe-{}", self.generation));
        let written = format!(
            "written without a sync just before cut {}\n",
            self.generation
        )
        .repeat(200);
        std::fs::write(&probe, &written).map_err(|e| format!("write {}: {e}", probe.display()))?;
        let copy = self
            .root
            .join("xfs")
            .join(format!("ext4-{}.img", self.generation));
        tool(
            "cp",
            &["--reflink=always", path_str(&self.backing), path_str(&copy)],
        )?;
        gw.kill();
        self.detach()?;
        std::fs::remove_file(&self.backing)
            .map_err(|e| format!("remove {}: {e}", self.backing.display()))?;
        self.backing = copy;
        self.attach()?;
        let survived = std::fs::read_to_string(&probe).is_ok_and(|t| t == written);
        let _ = std::fs::remove_file(&probe);
        Ok(survived)
    }

    /// Stores moved aside on the disk (`outbox.corrupt-*`).
    fn moved_aside(&self) -> Vec<String> {
        std::fs::read_dir(self.ext4_dir())
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("outbox.corrupt"))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        let mut clean = true;
        let mut undo = |what: &str, r: Result<String, String>| {
            if let Err(e) = r {
                eprintln!("{TEST}: cleanup: {what}: {e}");
                clean = false;
            }
        };
        if self.ext4_mounted {
            let ext4 = self.ext4_dir();
            let r = tool("umount", &[path_str(&ext4)])
                .or_else(|_| tool("umount", &["-l", path_str(&ext4)]));
            undo("unmount ext4", r);
        }
        if let Some(dev) = self.ext4_loop.take() {
            undo("detach ext4", tool("losetup", &["-d", &dev]));
        }
        if self.xfs_mounted {
            let xfs = self.root.join("xfs");
            let r = tool("umount", &[path_str(&xfs)])
                .or_else(|_| tool("umount", &["-l", path_str(&xfs)]));
            undo("unmount xfs", r);
        }
        if let Some(dev) = self.xfs_loop.take() {
            undo("detach xfs", tool("losetup", &["-d", &dev]));
        }
        if !clean {
            // Never delete through a mount point that is still there.
            if let Some(d) = self.dir.take() {
                eprintln!("{TEST}: left {} in place", d.keep().display());
            }
        }
    }
}

/// Why this machine cannot run the test, if it cannot.
fn cannot_run() -> Option<String> {
    if !is_root() {
        return Some("needs root (mount, losetup)".into());
    }
    let missing = missing_tools(&["losetup", "mkfs.xfs", "mkfs.ext4", "mount", "umount", "cp"]);
    if !missing.is_empty() {
        return Some(format!(
            "missing {} (apt-get install util-linux mount xfsprogs e2fsprogs coreutils)",
            missing.join(", ")
        ));
    }
    None
}

fn plate(n: u64) -> String {
    format!("晋P{n:05}")
}

/// The camera's pictures, Base64, made once: small ones, one within the platform's budget
/// (stored as it is) and one large (1280x720, ~370 KB: the gateway shrinks it, which takes
/// a debug build under load the better part of a second, so it is the rare one).
struct Pictures {
    small: Vec<String>,
    medium: String,
    large: String,
}

impl Pictures {
    fn new() -> Pictures {
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let big = lotlink::testing::imaging::synth_jpeg(1280, 720, 11, 90);
        let medium = lotlink::testing::imaging::prepare(
            &lotlink::testing::imaging::synth_jpeg(1920, 1080, 12, 90),
            lotlink::testing::imaging::MAX_B64_CHARS,
        )
        .bytes;
        Pictures {
            small: (0..3)
                .map(|s| b64(&lotlink::testing::imaging::synth_jpeg(160, 120, s, 80)))
                .collect(),
            medium: b64(&medium),
            large: b64(&big),
        }
    }

    /// Event `n`'s picture: 77 % small, 20 % within budget, 3 % large.
    fn for_event(&self, n: u64, seed: u64) -> &str {
        let mut rng = StdRng::seed_from_u64(seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        match rng.gen_range(0..100) {
            0..=76 => &self.small[usize::try_from(n % 3).unwrap_or(0)],
            77..=96 => &self.medium,
            _ => &self.large,
        }
    }
}

fn event_json(n: u64, image: &str) -> String {
    let direction = if n.is_multiple_of(2) { "in" } else { "out" };
    format!(
        r#"{{"plate":"{}","id":"pc-{n}","direction":"{direction}","image":"{image}"}}"#,
        plate(n)
    )
}

/// The camera, publishing event after event at [`PACE`] until stopped.
struct Load {
    published: Arc<AtomicU64>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(camera: Arc<Publisher>, pictures: Arc<Pictures>, seed: u64) -> Load {
        let published = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let (count, halt) = (published.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut pace = tokio::time::interval(PACE);
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = halt.cancelled() => return,
                    _ = pace.tick() => {}
                }
                let n = count.load(Ordering::SeqCst) + 1;
                camera
                    .publish(CAMERA_TOPIC, event_json(n, pictures.for_event(n, seed)))
                    .await;
                count.store(n, Ordering::SeqCst);
            }
        });
        Load {
            published,
            stop,
            task,
        }
    }

    fn published(&self) -> u64 {
        self.published.load(Ordering::SeqCst)
    }

    async fn stop(self) -> u64 {
        self.stop.cancel();
        let _ = self.task.await;
        self.published.load(Ordering::SeqCst)
    }
}

/// When the power goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Moment {
    /// As soon as the gateway answers on its status port (replay done, the broker's
    /// backlog coming in).
    Startup,
    /// After k more events stored.
    Ingest,
    /// After k more records reached the platform.
    Upload,
    /// The platform down, the outbox near its quota, then k more events stored.
    Quota,
}

/// Events the MQTT camera's driver stored since this gateway process started.
async fn stored(gw: &Gateway, http: &reqwest::Client) -> Option<u64> {
    gw.driver(http, MQTT_CAMERA).await?["events"].as_u64()
}

/// The outbox's bytes as `/status` reports them.
async fn outbox_bytes(gw: &Gateway, http: &reqwest::Client) -> Option<u64> {
    gw.status(http).await?["outbox"]["bytes"].as_u64()
}

/// Wait for the moment; `Err` says what did not happen in time.
async fn wait_for(
    moment: Moment,
    k: u64,
    gw: &Gateway,
    http: &reqwest::Client,
    sim: &PlatformSim,
) -> Result<(), String> {
    let ok = match moment {
        Moment::Startup => true,
        Moment::Ingest => {
            let before = stored(gw, http).await.unwrap_or(0);
            common::eventually_async(PROGRESS, || async move {
                stored(gw, http).await.is_some_and(|n| n >= before + k)
            })
            .await
        }
        Moment::Upload => {
            let before = sim.stats().records_stored as u64;
            common::eventually(PROGRESS, || sim.stats().records_stored as u64 >= before + k).await
        }
        Moment::Quota => {
            let near = common::eventually_async(PROGRESS, || async move {
                outbox_bytes(gw, http)
                    .await
                    .is_some_and(|b| b >= MAX_DISK_BYTES * 9 / 10)
            })
            .await;
            let before = stored(gw, http).await.unwrap_or(0);
            near && common::eventually_async(PROGRESS, || async move {
                stored(gw, http).await.is_some_and(|n| n >= before + k)
            })
            .await
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{moment:?} (k = {k}) did not come within {PROGRESS:?}: the gateway made no progress; status {:?}",
            gw.status(http).await
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_event_is_delivered_exactly_once_through_power_cuts_that_lose_the_page_cache(
) {
    common::init_log();
    if let Some(why) = cannot_run() {
        skip_or_fail(TEST, &why);
        return;
    }
    let under_emulator = std::env::var("LOTLINK_TEST_RUNNER").is_ok_and(|r| !r.is_empty());
    let cuts: u32 = std::env::var("LOTLINK_POWERCUT_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if under_emulator { 5 } else { 50 });
    let seed: u64 = std::env::var("LOTLINK_POWERCUT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("{TEST}: {cuts} cuts, LOTLINK_POWERCUT_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);

    let broker = Broker::start().await;
    if broker.kind != BrokerKind::Mosquitto {
        // The in-process rumqttd does not keep a killed client's session the way a site
        // broker with persistence does.
        skip_or_fail(TEST, "needs mosquitto (apt-get install mosquitto)");
        return;
    }
    // Declared before the gateway: dropped after it (a running gateway keeps the disk busy).
    let mut disk = match Disk::new() {
        Ok(d) => d,
        Err(e) => {
            skip_or_fail(
                TEST,
                &format!("cannot set up the loop devices and file systems: {e}"),
            );
            return;
        }
    };
    let sim = common::sim().await;
    let status_port = free_port();
    let outbox = disk.ext4_dir().join("outbox");
    let root = disk.root.clone();
    let extras = Extras {
        max_disk: Some(MAX_DISK),
        outbox: Some(&outbox),
        max_packet: Some("4MiB"),
        ..Extras::default()
    };
    let config = write_config(&root, &sim, &broker, status_port, &extras);
    let http = reqwest::Client::new();
    let mut gw = Gateway::new(config, status_port, Some(root.join("gateway.log")));
    gw.start();
    gw.wait_ready(&http).await;

    // The gateway subscribes just after it starts, and the broker keeps events only for a
    // subscribed session: warm up until one event got through.
    let camera = Arc::new(Publisher::connect(broker.port, "powercut-camera").await);
    let pictures = Arc::new(Pictures::new());
    let mut warm = false;
    for _ in 0..100 {
        camera
            .publish(CAMERA_TOPIC, event_json(0, &pictures.small[0]))
            .await;
        if common::eventually(Duration::from_millis(300), || !sim.records().is_empty()).await {
            warm = true;
            break;
        }
    }
    assert!(warm, "the first event got through; {}", gw.log_tail());
    // The warm-up's acknowledgements are in (the broker answered before the platform had
    // it): what comes on top is the run's.
    let acked_base = camera.acked();

    let started = Instant::now();
    let load = Load::start(camera.clone(), pictures.clone(), seed);
    let mut moments: BTreeMap<Moment, u32> = BTreeMap::new();
    let mut down_cuts = 0u32;
    let mut down_left = 0u32;
    let mut restart_max = Duration::ZERO;
    let mut probes_kept = 0u32;
    for cut in 0..cuts {
        // The platform: up most of the time, down for a few cuts in a row now and then.
        if down_left == 0 && rng.gen_bool(0.25) {
            down_left = rng.gen_range(2..=6);
            let mode = [Mode::Refuse, Mode::Http500, Mode::Reset, Mode::Hang][rng.gen_range(0..4)];
            sim.set_mode(mode);
        } else if down_left == 0 {
            sim.set_mode(Mode::Up);
        }
        let down = down_left > 0;
        down_left = down_left.saturating_sub(1);
        if down {
            down_cuts += 1;
        }
        let moment = match rng.gen_range(0..4) {
            0 => Moment::Startup,
            1 => Moment::Ingest,
            _ if down => Moment::Quota,
            _ => Moment::Upload,
        };
        let k = rng.gen_range(1..=40);
        if let Err(e) = wait_for(moment, k, &gw, &http, &sim).await {
            panic!("cut {cut}: {e}; {}", gw.log_tail());
        }
        *moments.entry(moment).or_default() += 1;

        assert!(
            gw.signal(libc::SIGSTOP),
            "cut {cut}: the gateway is not running (exit {:?}); {}",
            gw.exited(),
            gw.log_tail()
        );
        match disk.cut(&mut gw) {
            Ok(true) => probes_kept += 1,
            Ok(false) => {}
            Err(e) => panic!("cut {cut}: {e}"),
        }
        let t = Instant::now();
        gw.start();
        if !gw.try_wait_ready(&http).await {
            panic!(
                "cut {cut} ({moment:?}): the gateway did not come up after the cut (exit {:?}); {}",
                gw.exited(),
                gw.log_tail()
            );
        }
        restart_max = restart_max.max(t.elapsed());
        eprintln!(
            "{TEST}: cut {cut}: {moment:?} k={k}, platform {:?}, published {}, acked {}, at the platform {}; up again in {:.2} s",
            sim.mode(),
            load.published(),
            camera.acked() - acked_base,
            sim.stats().records_stored,
            t.elapsed().as_secs_f64()
        );
    }
    let cut_phase = started.elapsed();

    // The camera stops, the platform comes up: everything drains.
    let published = load.stop().await;
    sim.set_mode(Mode::Up);
    let drain = Instant::now();
    assert!(
        common::eventually(Duration::from_secs(60), || camera.acked()
            >= acked_base + published)
        .await,
        "the broker acknowledged {} of {published} events",
        camera.acked() - acked_base
    );
    let all_in = common::eventually(Duration::from_secs(240), || {
        let got = delivered(&sim);
        (1..=published).all(|n| got.contains_key(&plate(n)))
    })
    .await;
    // And until the gateway has nothing left to send: a record stored twice would be sent
    // by now.
    let (gwr, httpr) = (&gw, &http);
    let empty = common::eventually_async(Duration::from_secs(60), || async move {
        gwr.status(httpr)
            .await
            .is_some_and(|s| s["outbox"]["pending"].as_u64() == Some(0))
    })
    .await;
    let drain = drain.elapsed();

    let got = delivered(&sim);
    let missing: Vec<String> = (1..=published)
        .map(plate)
        .filter(|p| !got.contains_key(p))
        .collect();
    let duplicates: Vec<(String, u64)> = got
        .iter()
        .filter(|(_, (count, _))| *count > 1)
        .map(|(p, (count, _))| (p.clone(), *count))
        .collect();
    let records = sim.records();
    let degraded = records
        .iter()
        .filter(|r| {
            r["remark"]
                .as_str()
                .is_some_and(|m| m.contains(lotlink::testing::outbox::DEGRADED_REMARK))
        })
        .count();
    // Each record as it was sent: its direction, and its picture byte for byte unless the
    // gateway had to shrink it (the large one) or the quota replaced it.
    let mut damaged = Vec::new();
    let mut compared = 0usize;
    for r in &records {
        let Some(n) = r["carNo"]
            .as_str()
            .and_then(|p| p.strip_prefix("晋P"))
            .and_then(|d| d.parse::<u64>().ok())
            .filter(|n| (1..=published).contains(n))
        else {
            continue;
        };
        let direction = if n % 2 == 0 { "in" } else { "out" };
        let sent = pictures.for_event(n, seed);
        let replaced = r["remark"]
            .as_str()
            .is_some_and(|m| m.contains(lotlink::testing::outbox::DEGRADED_REMARK));
        let exact = !replaced && !std::ptr::eq(sent, pictures.large.as_str());
        compared += usize::from(exact);
        let picture_ok = if exact {
            r["imgData"].as_str() == Some(sent)
        } else {
            replaced || r["imgData"].as_str().is_some_and(|d| !d.is_empty())
        };
        if r["inOutType"] != direction || !picture_ok {
            damaged.push(format!(
                "{}: inOutType {}, picture {}",
                plate(n),
                r["inOutType"],
                if picture_ok { "intact" } else { "changed" }
            ));
        }
    }
    let aside = disk.moved_aside();
    let stats = sim.stats();
    eprintln!(
        "\n{TEST} summary (LOTLINK_POWERCUT_SEED={seed}):\n  cuts {cuts} ({moments:?}; {down_cuts} with the platform down), slowest restart {:.2} s\n  events published {published}, acknowledged by the broker {}\n  delivered {} distinct of {published}, missing {}, duplicates {}\n  records stored {} (with the warm-up event), 1004 answered {} times, images replaced by the quota {degraded}\n  records not as sent {} ({compared} pictures compared byte for byte), stores moved aside {}; unsynced probe writes that survived a cut {probes_kept} of {cuts}\n  cut phase {:.1} s, final drain {:.1} s",
        restart_max.as_secs_f64(),
        camera.acked() - acked_base,
        (1..=published).filter(|n| got.contains_key(&plate(*n))).count(),
        missing.len(),
        duplicates.len(),
        stats.records_stored,
        stats.rejected_with(1004),
        damaged.len(),
        aside.len(),
        cut_phase.as_secs_f64(),
        drain.as_secs_f64(),
    );
    let mut failures = Vec::new();
    if !missing.is_empty() {
        failures.push(format!(
            "{} acknowledged events never reached the platform (all_in {all_in}), first: {:?}",
            missing.len(),
            &missing[..missing.len().min(20)]
        ));
    }
    if !duplicates.is_empty() {
        failures.push(format!(
            "{} events reached the platform more than once: {:?}",
            duplicates.len(),
            &duplicates[..duplicates.len().min(20)]
        ));
    }
    if !empty {
        failures.push(format!(
            "the outbox did not empty: status {:?}",
            gw.status(&http).await
        ));
    }
    if !damaged.is_empty() {
        failures.push(format!(
            "{} records reached the platform not as they were sent: {:?}",
            damaged.len(),
            &damaged[..damaged.len().min(20)]
        ));
    }
    if !aside.is_empty() {
        failures.push(format!("stores were moved aside: {aside:?}"));
    }
    if probes_kept == cuts {
        failures.push(format!(
            "every one of the {cuts} files written without a sync just before a cut survived it: the cuts do not lose the page cache, so they prove nothing"
        ));
    }
    if degraded == 0 {
        failures.push(
            "the quota never compacted (no record arrived with its image replaced): the run did not test compaction"
                .into(),
        );
    }
    if !failures.is_empty() {
        eprintln!("{}", gw.log_tail());
    }
    assert!(failures.is_empty(), "{failures:#?}");
    gw.kill();
}
