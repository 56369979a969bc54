//! Fault injection against the real `lotlink` binary, with real peers: mosquitto (or rumqttd)
//! and an MQTT camera publishing QoS 1, and the platform simulator on 127.0.0.1.
//!
//! The oracle: every event the broker acknowledged to the camera (PUBACK) is delivered to the
//! platform, intact (plate, direction), exactly once. The simulator answers 1004 to a record
//! it already has, so a resend after a kill shows up as a 1004, never as a second record.
//!
//! Each round applies one fault while the camera publishes a burst, then lifts it and times
//! how long the gateway takes to deliver everything of that round (the drain). Faults:
//! SIGKILL during ingest, SIGKILL during upload, platform refusing connections, resetting
//! them, answering HTTP 500, hanging past the request timeout, flapping between those,
//! answering storms of 2000/1003/1107, and the platform clock ±1 h (then jumping back).
//! The first rounds take each fault in turn; later rounds mix them at random: half of them
//! are kills (during ingest, with the platform also refusing, resetting or failing at times).
//!
//! A second test corrupts the store while the gateway is down: it is moved aside with an
//! ERROR naming where, and the gateway carries on with a fresh one.
//!
//! `cargo test --test chaos` runs the short variant (one round per fault). The long one:
//! `LOTLINK_CHAOS_ROUNDS=110 cargo test --release --test chaos -- --nocapture` (about 60
//! kills); set
//! `LOTLINK_CHAOS_SEED` to replay a run (the seed is printed).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::devices::{free_port, Broker, Publisher};
use common::{eventually, lotlink_command, LOT, TOKEN};
use lotlink::sim::{Mode, PlatformSim, Route, Scripted, SimConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Events per round.
const BURST: u64 = 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillDuringIngest,
    KillDuringUpload,
    PlatformRefuses,
    PlatformResets,
    PlatformHttp500,
    PlatformHangs,
    PlatformFlaps,
    CodeStorm,
    PlatformClockJumps,
}

const ALL: [Fault; 9] = [
    Fault::KillDuringIngest,
    Fault::KillDuringUpload,
    Fault::PlatformRefuses,
    Fault::PlatformResets,
    Fault::PlatformHttp500,
    Fault::PlatformHangs,
    Fault::PlatformFlaps,
    Fault::CodeStorm,
    Fault::PlatformClockJumps,
];

/// What one fault's rounds added up to.
#[derive(Debug, Default)]
struct Tally {
    rounds: u32,
    sent: u64,
    acked: u64,
    delivered: u64,
    duplicates: u64,
    lost: u64,
    drain_max: Duration,
}

/// The camera: publishes QoS 1 through a [`Publisher`], which counts the broker's
/// acknowledgements.
struct Camera(Publisher);

impl Camera {
    async fn connect(port: u16) -> Camera {
        Camera(Publisher::connect(port, "chaos-camera").await)
    }

    fn acked(&self) -> u64 {
        self.0.acked()
    }

    async fn publish(&self, n: u64) {
        let direction = if n % 2 == 0 { "in" } else { "out" };
        let msg = format!(
            r#"{{"plate":"{}","id":"ev-{n}","direction":"{direction}"}}"#,
            plate(n)
        );
        self.0.publish("chaos/cam1", msg).await;
    }
}

fn plate(n: u64) -> String {
    format!("晋C{n:05}")
}

/// The gateway process (SIGKILLed on drop).
struct Gateway {
    child: Option<Child>,
    config: PathBuf,
    status_port: u16,
}

impl Gateway {
    fn start(&mut self) {
        assert!(self.child.is_none());
        let child = lotlink_command()
            .args(["run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("lotlink starts");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Until `/status` answers (the outbox is open and the drivers started).
    async fn wait_ready(&self, http: &reqwest::Client) {
        let url = format!("http://127.0.0.1:{}/status", self.status_port);
        let ok = common::eventually_async(Duration::from_secs(30), || {
            let req = http.get(&url).send();
            async move { req.await.is_ok_and(|r| r.status().is_success()) }
        })
        .await;
        assert!(ok, "the gateway came up");
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

fn write_config(dir: &Path, sim: &PlatformSim, broker: &Broker, status_port: u16) -> PathBuf {
    let text = format!(
        "[platform]\nurl = \"{}\"\nlot_code = \"{LOT}\"\ntoken = \"{TOKEN}\"\nrequest_timeout = \"1s\"\nretry_max = \"2s\"\n\n[outbox]\npath = \"{}\"\n\n[status]\nlisten = \"127.0.0.1:{status_port}\"\n\n[space]\ntotal = 100\n\n[mqtt]\nurl = \"{}\"\nclient_id = \"lotlink-chaos-{}\"\n\n[[camera]]\nname = \"入口1\"\ndirection = \"in\"\ndriver = \"mqtt\"\nformat = \"json\"\ntopic = \"chaos/cam1\"\n",
        sim.url(),
        dir.join("outbox").display(),
        broker.url(),
        free_port(),
    );
    let path = dir.join("lotlink.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// carNo → how many times the platform stored it, and its direction as stored.
fn delivered(sim: &PlatformSim) -> HashMap<String, (u64, String)> {
    let mut out: HashMap<String, (u64, String)> = HashMap::new();
    for r in sim.records() {
        let plate = r["carNo"].as_str().unwrap_or_default().to_owned();
        let dir = r["inOutType"].as_str().unwrap_or_default().to_owned();
        let e = out.entry(plate).or_insert((0, dir));
        e.0 += 1;
    }
    out
}

struct Run {
    sim: PlatformSim,
    camera: Camera,
    gw: Gateway,
    http: reqwest::Client,
    rng: StdRng,
    /// Past the first round of each fault: faults may be combined.
    mix: bool,
    next: u64,
}

impl Run {
    /// Publish `BURST` events; `during(published)` may inject the fault mid-burst.
    async fn burst(&mut self, mut during: impl FnMut(&mut Self, u64)) -> (u64, u64) {
        let first = self.next;
        for i in 0..BURST {
            during(self, i);
            self.camera.publish(self.next).await;
            self.next += 1;
        }
        (first, self.next)
    }

    /// Wait until every event in `range` is at the platform; the time it took.
    async fn drain(&self, range: (u64, u64)) -> Option<Duration> {
        let t = Instant::now();
        let wanted: Vec<String> = (range.0..range.1).map(plate).collect();
        let ok = eventually(Duration::from_secs(60), || {
            let got = delivered(&self.sim);
            wanted.iter().all(|p| got.contains_key(p))
        })
        .await;
        ok.then(|| t.elapsed())
    }

    fn kill_and_restart(&mut self) {
        self.gw.kill();
        self.gw.start();
    }

    async fn round(&mut self, fault: Fault) -> (u64, u64, Option<Duration>) {
        let acked_before = self.camera.acked();
        let range = match fault {
            Fault::KillDuringIngest => {
                let at = self.rng.gen_range(0..BURST);
                // In the random mix, the platform is often failing too while the gateway dies.
                let also = self.mix.then(|| {
                    [Mode::Up, Mode::Refuse, Mode::Http500, Mode::Reset][self.rng.gen_range(0..4)]
                });
                if let Some(mode) = also {
                    self.sim.set_mode(mode);
                }
                let r = self
                    .burst(|run, i| {
                        if i == at {
                            run.kill_and_restart();
                        }
                    })
                    .await;
                self.gw.wait_ready(&self.http).await;
                self.sim.set_mode(Mode::Up);
                r
            }
            Fault::KillDuringUpload => {
                // Slow the platform down so the kill lands while batches are in flight.
                self.sim.push_script(
                    Route::CarInOut,
                    vec![Scripted::Code(1003); self.rng.gen_range(1..4)],
                );
                let r = self.burst(|_, _| {}).await;
                let before = self.sim.records().len();
                let target = before + self.rng.gen_range(1..(BURST as usize / 2));
                let _ = eventually(Duration::from_secs(20), || {
                    self.sim.records().len() >= target
                })
                .await;
                self.kill_and_restart();
                self.gw.wait_ready(&self.http).await;
                r
            }
            Fault::PlatformRefuses
            | Fault::PlatformResets
            | Fault::PlatformHttp500
            | Fault::PlatformHangs => {
                self.sim.set_mode(match fault {
                    Fault::PlatformRefuses => Mode::Refuse,
                    Fault::PlatformResets => Mode::Reset,
                    Fault::PlatformHttp500 => Mode::Http500,
                    _ => Mode::Hang,
                });
                let r = self.burst(|_, _| {}).await;
                // Until the gateway has felt it: two more requests (500, hang) or connections
                // (reset) than before. A refused connection leaves no trace at the simulator.
                let felt = |sim: &PlatformSim| {
                    let s = sim.stats();
                    s.connections + s.requests_to(Route::CarInOut)
                };
                let before = felt(&self.sim);
                let _ = eventually(Duration::from_secs(10), || {
                    fault == Fault::PlatformRefuses || felt(&self.sim) >= before + 2
                })
                .await;
                self.sim.set_mode(Mode::Up);
                r
            }
            Fault::PlatformFlaps => {
                let modes = [Mode::Refuse, Mode::Http500, Mode::Reset, Mode::Up];
                let flips: Vec<u64> = (0..4).map(|_| self.rng.gen_range(0..BURST)).collect();
                let r = self
                    .burst(|run, i| {
                        if let Some(k) = flips.iter().position(|&f| f == i) {
                            run.sim.set_mode(modes[k % modes.len()]);
                        }
                    })
                    .await;
                self.sim.set_mode(Mode::Up);
                r
            }
            Fault::CodeStorm => {
                let storm: Vec<Scripted> = (0..self.rng.gen_range(3..10))
                    .map(|i| Scripted::Code([2000, 1003, 1107][i % 3]))
                    .collect();
                self.sim.push_script(Route::CarInOut, storm);
                self.burst(|_, _| {}).await
            }
            Fault::PlatformClockJumps => {
                let skew = if self.rng.gen_bool(0.5) {
                    3_600_000
                } else {
                    -3_600_000
                };
                self.sim.set_skew_ms(skew);
                let r = self
                    .burst(|run, i| {
                        if i == BURST / 2 {
                            // And it jumps back (NTP fixed the platform) mid-burst.
                            run.sim.set_skew_ms(0);
                        }
                    })
                    .await;
                self.sim.set_skew_ms(0);
                r
            }
        };
        let drain = self.drain(range).await;
        self.sim.clear_scripts();
        let acked = self.camera.acked() - acked_before;
        (range.1 - range.0, acked, drain)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_event_is_delivered_exactly_once_through_kills_and_platform_faults() {
    common::init_log();
    let rounds: usize = std::env::var("LOTLINK_CHAOS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ALL.len());
    let seed: u64 = std::env::var("LOTLINK_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("chaos: {rounds} rounds, LOTLINK_CHAOS_SEED={seed}");

    let dir = tempfile::tempdir().expect("tempdir");
    let sim = PlatformSim::start(SimConfig::new(LOT, TOKEN))
        .await
        .expect("simulator");
    let broker = Broker::start().await;
    let status_port = free_port();
    let config = write_config(dir.path(), &sim, &broker, status_port);
    let mut run = Run {
        camera: Camera::connect(broker.port).await,
        gw: Gateway {
            child: None,
            config,
            status_port,
        },
        sim,
        http: reqwest::Client::new(),
        rng: StdRng::seed_from_u64(seed),
        mix: false,
        next: 1,
    };
    run.gw.start();
    run.gw.wait_ready(&run.http).await;
    // The gateway subscribes just after start: warm up until an event gets through.
    let mut warm = false;
    for _ in 0..100 {
        run.camera.publish(0).await;
        if eventually(Duration::from_millis(300), || !run.sim.records().is_empty()).await {
            warm = true;
            break;
        }
    }
    assert!(warm, "the first event got through");

    let mut tallies: BTreeMap<Fault, Tally> = BTreeMap::new();
    let mut failures = Vec::new();
    for round in 0..rounds {
        // Each fault in turn first, then a random mix in which half the rounds are kills.
        run.mix = round >= ALL.len();
        let fault = match ALL.get(round) {
            Some(f) => *f,
            None if run.rng.gen_bool(0.5) => {
                [Fault::KillDuringIngest, Fault::KillDuringUpload][run.rng.gen_range(0..2)]
            }
            None => ALL[run.rng.gen_range(0..ALL.len())],
        };
        let first = run.next;
        let (sent, acked, drain) = run.round(fault).await;
        let got = delivered(&run.sim);
        let t = tallies.entry(fault).or_default();
        t.rounds += 1;
        t.sent += sent;
        t.acked += acked;
        for n in first..run.next {
            match got.get(&plate(n)) {
                Some((count, direction)) => {
                    t.delivered += 1;
                    t.duplicates += count - 1;
                    let want = if n % 2 == 0 { "in" } else { "out" };
                    if direction != want {
                        failures.push(format!("{}: inOutType {direction}, sent {want}", plate(n)));
                    }
                }
                None => {
                    t.lost += 1;
                    failures.push(format!("round {round} ({fault:?}): {} lost", plate(n)));
                }
            }
        }
        if let Some(d) = drain {
            t.drain_max = t.drain_max.max(d);
        }
        eprintln!("round {round}: {fault:?}: sent {sent}, acked {acked}, drained in {drain:?}");
    }

    eprintln!(
        "\n{:<20} {:>6} {:>6} {:>6} {:>9} {:>10} {:>5} {:>10}",
        "fault", "rounds", "sent", "acked", "delivered", "duplicates", "lost", "drain max"
    );
    for (fault, t) in &tallies {
        eprintln!(
            "{:<20} {:>6} {:>6} {:>6} {:>9} {:>10} {:>5} {:>9.1}s",
            format!("{fault:?}"),
            t.rounds,
            t.sent,
            t.acked,
            t.delivered,
            t.duplicates,
            t.lost,
            t.drain_max.as_secs_f64()
        );
    }
    let stats = run.sim.stats();
    eprintln!(
        "platform: {} records stored, 1004 answered {} times, {} connections",
        stats.records_stored,
        stats.rejected_with(1004),
        stats.connections
    );

    assert!(failures.is_empty(), "{failures:#?}");
    for (fault, t) in &tallies {
        assert_eq!(t.lost, 0, "{fault:?} lost events");
        assert_eq!(t.duplicates, 0, "{fault:?} duplicated events");
        assert_eq!(t.delivered, t.sent, "{fault:?}");
        assert!(t.acked <= t.sent + 100, "{fault:?}: {t:?}");
    }
    let total: u64 = tallies.values().map(|t| t.sent).sum();
    assert_eq!(
        stats.records_stored as u64,
        total + 1,
        "every record once (plus the warm-up event)"
    );
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_corrupted_while_the_gateway_was_down_is_moved_aside_and_the_gateway_carries_on() {
    common::init_log();
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = PlatformSim::start(SimConfig::new(LOT, TOKEN))
        .await
        .expect("simulator");
    let broker = Broker::start().await;
    let status_port = free_port();
    let config = write_config(dir.path(), &sim, &broker, status_port);
    let http = reqwest::Client::new();
    let mut gw = Gateway {
        child: None,
        config: config.clone(),
        status_port,
    };
    gw.start();
    gw.wait_ready(&http).await;
    gw.kill();

    // Garbage over sled's files, as a dying SD card might leave them.
    let store = dir.path().join("outbox");
    for f in ["conf", "db"] {
        let p = store.join(f);
        if p.exists() {
            std::fs::write(&p, vec![0xA5u8; 4096]).expect("corrupt the store");
        }
    }

    let log = dir.path().join("gateway.log");
    let child = lotlink_command()
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("lotlink starts");
    gw.child = Some(child);
    gw.wait_ready(&http).await;

    // The old files are kept beside the new store, and the ERROR says where.
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("outbox.corrupt-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "moved aside once");
    assert!(aside[0].path().join("db").exists(), "old files kept");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("ERROR") && text.contains("outbox.corrupt-"),
        "an ERROR names where the old store went: {text}"
    );

    // And the gateway works: an event from the camera reaches the platform.
    let camera = Camera::connect(broker.port).await;
    let mut delivered_one = false;
    for _ in 0..100 {
        camera.publish(7).await;
        if eventually(Duration::from_millis(300), || {
            delivered(&sim).contains_key(&plate(7))
        })
        .await
        {
            delivered_one = true;
            break;
        }
    }
    assert!(delivered_one, "the fresh store carries events");
}
