//! Shared harness for the end-to-end tests: a platform simulator on 127.0.0.1, a gateway
//! running the real pipeline with a temporary sled outbox, and a driver the test feeds.
#![allow(dead_code)]

pub mod devices;
pub mod gateway;
pub mod modbus;
pub mod throttle;

use std::path::Path;
use std::time::{Duration, Instant};

use lotlink::drivers::{
    Accepted, CancellationToken, CarStyle, Direction, Driver, DriverFuture, Event, EventSink,
    PlateEvent, SinkError,
};
use lotlink::testing::app::{Gateway, RunOptions};
use lotlink::testing::outbox::{ImgName, NewRecord, RecordMeta};
use lotlink_sim::{PlatformSim, SimConfig};
use tokio::sync::{mpsc, oneshot};

pub const LOT: &str = "350";
pub const TOKEN: &str = "test-token-猫";

/// A driver whose events come from the test.
pub struct FeedDriver {
    rx: mpsc::Receiver<(Event, oneshot::Sender<Result<Accepted, SinkError>>)>,
}

/// The test's end of a [`FeedDriver`].
#[derive(Clone)]
pub struct Feed {
    tx: mpsc::Sender<(Event, oneshot::Sender<Result<Accepted, SinkError>>)>,
}

impl Feed {
    /// Submit through the gateway; returns what the driver would see.
    pub async fn send(&self, ev: Event) -> Result<Accepted, SinkError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((ev, tx))
            .await
            .map_err(|_| SinkError::Closed)?;
        rx.await.map_err(|_| SinkError::Closed)?
    }
}

impl Driver for FeedDriver {
    fn name(&self) -> &str {
        "feed"
    }
    fn run(mut self: Box<Self>, sink: EventSink, shutdown: CancellationToken) -> DriverFuture {
        Box::pin(async move {
            loop {
                let (ev, reply) = tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    m = self.rx.recv() => match m { Some(m) => m, None => return Ok(()) },
                };
                let _ = reply.send(sink.submit(ev).await);
            }
        })
    }
}

pub fn feed() -> (Feed, Box<dyn Driver>) {
    let (tx, rx) = mpsc::channel(16);
    (Feed { tx }, Box::new(FeedDriver { rx }))
}

/// A small real JPEG (passes through the image stage untouched).
pub fn small_jpeg(seed: u64) -> Vec<u8> {
    lotlink::testing::imaging::synth_jpeg(96, 64, seed, 80)
}

pub fn plate(key: &str, plate: &str, image: Option<Vec<u8>>) -> Event {
    Event::Plate(PlateEvent {
        source_key: key.to_string(),
        node_name: "入口1".into(),
        direction: Direction::In,
        plate: Some(plate.to_string()),
        captured_at_ms: Some(1_764_288_000_000),
        color: Some("蓝".into()),
        style: CarStyle::Car,
        brand: None,
        image,
        remark: None,
    })
}

/// Config text for a gateway pointed at `url`.
pub fn config_text(url: &str, outbox: &Path, platform_extra: &str) -> String {
    // 2 s at native speed; an emulated gateway and simulator need longer for one request.
    let timeout = 2 * time_scale();
    format!(
        "[platform]\nurl = \"{url}\"\nlot_code = \"{LOT}\"\ntoken = \"{TOKEN}\"\nrequest_timeout = \"{timeout}s\"\n{platform_extra}\n\n[outbox]\npath = \"{}\"\n\n[status]\nlisten = \"127.0.0.1:0\"\n\n[space]\ntotal = 100\n",
        outbox.display()
    )
}

pub fn fast_options() -> RunOptions {
    RunOptions {
        backoff_base: Duration::from_millis(20),
        backoff_cap: Duration::from_millis(300),
        backoff_cap_fault: Duration::from_millis(500),
        cache_capacity: 4 << 20,
        ..RunOptions::default()
    }
}

pub struct Harness {
    pub sim: PlatformSim,
    pub dir: tempfile::TempDir,
    pub feed: Feed,
    pub gw: Gateway,
}

pub async fn sim() -> PlatformSim {
    PlatformSim::start(SimConfig::new(LOT, TOKEN))
        .await
        .expect("simulator starts")
}

/// Start a simulator and a gateway. `platform_extra` adds `[platform]` lines.
pub async fn start(platform_extra: &str) -> Harness {
    let sim = sim().await;
    start_with(sim, platform_extra).await
}

pub async fn start_with(sim: PlatformSim, platform_extra: &str) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(&sim.url(), &dir.path().join("outbox"), platform_extra);
    let cfg =
        lotlink::testing::config::from_str(Path::new("test.toml"), &text).expect("valid config");
    let (feed, driver) = feed();
    let gw = Gateway::start(&cfg, vec![driver], fast_options())
        .await
        .expect("gateway starts");
    Harness { sim, dir, feed, gw }
}

/// A command that runs `program` (a binary cargo built for the test target) the way cargo
/// runs the tests: directly, or, when the tests are cross-compiled and run under emulation,
/// through the emulator named in `LOTLINK_TEST_RUNNER` (scripts/cross-test sets it, e.g.
/// `qemu-aarch64 -L /usr/aarch64-linux-gnu`; without binfmt_misc the kernel cannot exec a
/// foreign binary by itself).
pub fn target_command(program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    let runner = std::env::var("LOTLINK_TEST_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    match words.next() {
        Some(emulator) => {
            let mut c = std::process::Command::new(emulator);
            c.args(words).arg(program);
            c
        }
        None => std::process::Command::new(program),
    }
}

/// A child process (the daemon under test) that is killed and reaped when dropped.
pub struct Daemon(pub std::process::Child);

impl Daemon {
    /// `lotlink run --config <config>`, its log (stderr) into `log`.
    pub fn start(config: &std::path::Path, log: &std::path::Path) -> Daemon {
        Daemon::start_with(config, log, &[])
    }

    /// `lotlink run --config <config> <args…>`, its log (stderr) into `log`.
    pub fn start_with(config: &std::path::Path, log: &std::path::Path, args: &[&str]) -> Daemon {
        Daemon(
            lotlink_command()
                .args(["run", "--config"])
                .arg(config)
                .args(args)
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(log).expect("daemon log file"))
                .spawn()
                .expect("the daemon starts"),
        )
    }

    /// SIGTERM and wait for the exit (a clean stop once the daemon runs; a SIGTERM that
    /// comes before it handles the signal ends it at once, which the store survives too).
    pub fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `lotlink` binary of this build, as a command (see [`target_command`]).
pub fn lotlink_command() -> std::process::Command {
    target_command(env!("CARGO_BIN_EXE_lotlink"))
}

/// The tests' deadlines are set for native speed. Under emulation (scripts/cross-test sets
/// `LOTLINK_TEST_TIME_SCALE=10` for qemu-user) they are stretched by this factor; it only
/// moves deadlines, so a passing test waits no longer for it.
pub fn time_scale() -> u32 {
    std::env::var("LOTLINK_TEST_TIME_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&k| k >= 1)
        .unwrap_or(1)
}

/// Wait for a condition with a deadline (checked on a short tick; no fixed sleep).
pub async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout * time_scale();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tick.tick().await;
    }
}

/// Wait for an async condition with a deadline.
pub async fn eventually_async<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout * time_scale();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tick.tick().await;
    }
}

/// The plates (carNo) the platform stored, in arrival order.
pub fn delivered_plates(sim: &PlatformSim) -> Vec<String> {
    sim.records()
        .iter()
        .map(|r| r["carNo"].as_str().unwrap_or("").to_string())
        .collect()
}

/// A record as ingest would make it, for tests that talk to the outbox directly: source
/// key `cam/{n}`, plate `K{n}`, an automatic image name.
pub fn new_record(n: u64, image: &[u8]) -> NewRecord {
    NewRecord {
        source_key: format!("cam/{n}"),
        meta: RecordMeta {
            car_no: Some(format!("K{n}")),
            in_out_type: "in".into(),
            in_out_time: "2026-11-28 08:00:00".into(),
            img_name: String::new(),
            node_name: "入口1".into(),
            car_color: None,
            car_style: "0".into(),
            car_brand: None,
            remark: None,
            submitted_ms: 0,
            degraded: false,
        },
        img_name: ImgName::Auto {
            lot: LOT.into(),
            node: "入口1".into(),
            stamp: "20261128080000".into(),
        },
        image: image.to_vec(),
    }
}

/// A gateway running the drivers its config file describes (no feed driver).
pub struct DeviceHarness {
    pub sim: PlatformSim,
    pub dir: tempfile::TempDir,
    pub gw: Gateway,
    pub statuses: Vec<lotlink::drivers::DriverStatus>,
    /// Where the camera listener is bound (HTTP cameras configured).
    pub http: Option<lotlink::drivers::http::BoundAddr>,
}

impl DeviceHarness {
    /// The status of the driver called `name`.
    pub fn status(&self, name: &str) -> lotlink::drivers::StatusSnapshot {
        self.statuses
            .iter()
            .map(lotlink::drivers::DriverStatus::snapshot)
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no driver {name}"))
    }
}

/// Config text with device sections appended (`space_extra` goes into `[space]`).
pub fn device_config_text(url: &str, outbox: &Path, space_extra: &str, devices: &str) -> String {
    let base = config_text(url, outbox, "");
    format!("{base}{space_extra}\n{devices}\n")
}

/// `LOTLINK_TEST_LOG=debug` (an env filter) prints the gateway's logs while a test runs.
pub fn init_log() {
    if let Ok(filter) = std::env::var("LOTLINK_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// Start a gateway in `dir` whose drivers come from `devices` (TOML device sections).
pub async fn start_devices_in(
    sim: PlatformSim,
    dir: tempfile::TempDir,
    space_extra: &str,
    devices: &str,
) -> DeviceHarness {
    init_log();
    let text = device_config_text(&sim.url(), &dir.path().join("outbox"), space_extra, devices);
    let cfg =
        lotlink::testing::config::from_str(Path::new("test.toml"), &text).expect("valid config");
    let hw = lotlink::testing::hardware::build(&cfg).expect("drivers build");
    let gw = Gateway::start(
        &cfg,
        hw.drivers,
        RunOptions {
            driver_status: hw.statuses.clone(),
            ..fast_options()
        },
    )
    .await
    .expect("gateway starts");
    DeviceHarness {
        sim,
        dir,
        gw,
        statuses: hw.statuses,
        http: hw.http,
    }
}

pub async fn start_devices(space_extra: &str, devices: &str) -> DeviceHarness {
    let dir = tempfile::tempdir().expect("tempdir");
    start_devices_in(sim().await, dir, space_extra, devices).await
}

/// Set in the child process [`alone_in_child`] starts: the name of the one test it runs.
const ALONE_VAR: &str = "LOTLINK_TEST_ALONE";

/// For a test that measures its own process (its resident memory): all the integration
/// tests share one process, so another test's allocations would count as this one's. Call
/// first thing with `module_path!()` and the test's function name. In the test binary's
/// process it runs that one test again, alone, in a child process (the same binary,
/// `--exact`), asserts the child passed and returns `true`: the caller then returns. In the
/// child it returns `false` and the test runs its body there.
pub fn alone_in_child(module: &str, test: &str) -> bool {
    // `module_path!()` starts with the crate's name, which libtest's test names leave out.
    let module = module.split_once("::").map_or("", |(_, rest)| rest);
    let name = if module.is_empty() {
        test.to_string()
    } else {
        format!("{module}::{test}")
    };
    if std::env::var(ALONE_VAR).is_ok_and(|v| v == name) {
        return false;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = std::process::Command::new(exe)
        .args([name.as_str(), "--exact", "--test-threads=1", "--nocapture"])
        .env(ALONE_VAR, &name)
        .output()
        .expect("run the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name}, alone in a child process, failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    true
}
