//! P1, P2, P5 of the spine issue, printed beside their anchors measured in the same run.
//!
//! - P1: durable submits per second with 1, 8 and 64 concurrent submitters, beside the raw
//!   rate of appending + fsync to a plain file on the same disk (one fsync per append, and
//!   grouped: 64 appends per fsync).
//! - P2: CPU time per uploaded record against the in-process simulator, 100-record batches.
//! - P5: time from starting the real `lotlink run` binary on a store with 100,000 pending
//!   records to the first record at the platform, and that process's RSS then and after
//!   5,000 records have been uploaded.
//!
//! - P4: RSS of the real `lotlink run` binary with 4 MQTT cameras sending and 100,000
//!   records pending (platform unreachable), beside an idle mosquitto's RSS (a small C
//!   daemon for reference).
//! - P7: MQTT event to platform receipt, one event at a time through mosquitto and the real
//!   binary: p50/p99 without an image and with a 400 KB image.
//!
//! Every figure is also printed as a `=> key value unit` line, which `benches/run.sh`
//! collects into BENCHMARKS.md.
//!
//! - IMG: images inline in sled values vs fsynced image files beside small sled records:
//!   bytes written to disk and space used for 2,000 full-size records stored and drained.
//!
//! - SLOWLINK: a 200-record image backlog (pictures near 50,000 Base64 characters) drained
//!   through a throttling proxy at 1 Mbit/s and 256 kbit/s (the `ts` window checked when
//!   the body has arrived): records per second and uplink bytes per second, beside the
//!   link's raw capacity. `LOTLINK_SLOWLINK_SCALE` (default 2) runs the link that many times
//!   faster with a window that many times shorter; figures are given at the link's speed.
//!
//! Run with `cargo bench --bench pipeline`. Set `LOTLINK_BENCH_DIR` to measure another disk.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use lotlink::testing::outbox::{Outbox, OutboxOptions};

#[path = "../tests/common/mod.rs"]
mod common;

/// A figure for benches/run.sh.
fn result(key: &str, value: f64, unit: &str) {
    println!("=> {key} {value:.3} {unit}");
}

fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("LOTLINK_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).expect("bench dir"),
        None => tempfile::tempdir_in(".").expect("bench dir"),
    }
}

fn raw_fsync_rate(dir: &Path, per_sync: usize, total: usize, size: usize, run: usize) -> f64 {
    let p = dir.join(format!("raw-{per_sync}-{run}"));
    settle_disk();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p)
        .unwrap();
    let buf = vec![7u8; size];
    let t = Instant::now();
    for i in 0..total {
        f.write_all(&buf).unwrap();
        if (i + 1) % per_sync == 0 {
            f.sync_data().unwrap();
        }
    }
    f.sync_data().unwrap();
    let rate = total as f64 / t.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(&p);
    rate
}

/// Runs of each P1 figure; the median is reported. One run of 20,000 appends lasts well
/// under a second, and on a shared VM single runs of the same code spread by ±25 %.
const P1_RUNS: usize = 5;

/// Write back every dirty page before a timed run, so no run pays for the writeback of the
/// one before it (measured without: the 4th and 5th of five identical runs ran at half the
/// rate of the first).
fn settle_disk() {
    let _ = std::process::Command::new("sync").status();
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn spread(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.0}"))
        .collect::<Vec<_>>()
        .join(" ")
}

async fn p1(image: &[u8]) {
    let dir = bench_dir();
    let runs = |f: &mut dyn FnMut(usize) -> f64| (0..P1_RUNS).map(f).collect::<Vec<f64>>();
    let raw1 = runs(&mut |r| raw_fsync_rate(dir.path(), 1, 500, image.len() + 200, r));
    let raw64 = runs(&mut |r| raw_fsync_rate(dir.path(), 64, 20_000, image.len() + 200, r));
    println!(
        "P1 anchor: raw append+fsync, one fsync per append: {:.0}/s [{}]; grouped (64 per fsync): {:.0}/s [{}]",
        median(raw1.clone()),
        spread(&raw1),
        median(raw64.clone()),
        spread(&raw64)
    );
    let (raw1, raw64) = (median(raw1), median(raw64));
    result("p1_raw_fsync_each", raw1, "appends/s");
    result("p1_raw_fsync_grouped", raw64, "appends/s");
    let ceilings = runs(&mut |r| sled_ceiling(dir.path(), 64, 20_000, image.len() + 200, r));
    let ceiling = median(ceilings.clone());
    println!(
        "P1 anchor: bare sled (the outbox's settings), 64 inserts per flush: {ceiling:.0}/s [{}] ({:.0} % of grouped raw fsync)",
        spread(&ceilings),
        100.0 * ceiling / raw64
    );
    result("p1_sled_grouped", ceiling, "inserts/s");
    let image = Arc::new(image.to_vec());
    for submitters in [1u64, 8, 64] {
        let per = if submitters == 1 {
            500
        } else {
            20_000 / submitters
        };
        let mut rates = Vec::new();
        let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
        for run in 0..P1_RUNS {
            let path = dir.path().join(format!("ob-{submitters}-{run}"));
            let (ob, _) = Outbox::open(&path, OutboxOptions::default()).unwrap();
            settle_disk();
            let t = Instant::now();
            let mut tasks = Vec::new();
            for s in 0..submitters {
                let (ob, image, lat) = (ob.clone(), image.clone(), latencies.clone());
                tasks.push(tokio::spawn(async move {
                    for i in 0..per {
                        let t = Instant::now();
                        ob.submit(common::new_record(s * 1_000_000 + i, &image))
                            .await
                            .unwrap();
                        if submitters == 1 {
                            lat.lock().unwrap().push(t.elapsed().as_secs_f64() * 1000.0);
                        }
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            rates.push((submitters * per) as f64 / t.elapsed().as_secs_f64());
            drop(ob);
            let _ = std::fs::remove_dir_all(&path);
        }
        let rate = median(rates.clone());
        println!(
            "P1 durable submits/s with {submitters:>2} submitters: {rate:>8.0}/s [{}] ({:.0} % of grouped raw fsync, {:.0} % of bare sled)",
            spread(&rates),
            100.0 * rate / raw64,
            100.0 * rate / ceiling
        );
        result(&format!("p1_submits_{submitters}"), rate, "submits/s");
        if submitters == 1 {
            let mut l = latencies.lock().unwrap().clone();
            l.sort_by(f64::total_cmp);
            let at = |q: f64| l[((l.len() as f64 - 1.0) * q).round() as usize];
            println!(
                "P1 one submitter, submit -> stored (fsynced): p50 {:.3} ms, p99 {:.3} ms ({} submits)",
                at(0.5),
                at(0.99),
                l.len()
            );
            result("p1_latency_p50", at(0.5), "ms");
            result("p1_latency_p99", at(0.99), "ms");
        }
    }
}

/// Bare sled with the outbox's settings (4 MiB cache, background flush every 500 ms): the
/// anchor of P1, P5 and IMG.
fn bare_sled(path: &Path) -> sled::Db {
    sled::Config::new()
        .path(path)
        .cache_capacity(4 << 20)
        .flush_every_ms(Some(500))
        .open()
        .unwrap()
}

/// Delete keys `0..n` (u64 big-endian) from a bare sled in batches of 100, flushing after
/// each, as an outbox acks a drained backlog; `after` runs once each batch is flushed.
fn drain_bare_sled(db: &sled::Db, n: u64, mut after: impl FnMut(&[u64])) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let mut b = sled::Batch::default();
        for i in chunk {
            b.remove(&i.to_be_bytes());
        }
        db.apply_batch(b).unwrap();
        db.flush().unwrap();
        after(chunk);
    }
}

/// The ceiling of any outbox built on sled: bare sled with the outbox's settings, values of
/// `size` bytes inserted in groups of `group` with one `flush` (fsync) per group: sled's
/// counterpart of the grouped raw fsync, with none of the outbox's work (dedupe entry,
/// counters, record encoding, task hand-offs). One thread: sled 0.34's `flush_async`
/// deadlocks when called concurrently (see `Outbox::flush`).
fn sled_ceiling(dir: &Path, group: u64, total: u64, size: usize, run: usize) -> f64 {
    let path = dir.join(format!("bare-sled-{group}-{run}"));
    settle_disk();
    let db = bare_sled(&path);
    let value = vec![7u8; size];
    let t = Instant::now();
    for i in 0..total {
        db.insert(i.to_be_bytes(), value.as_slice()).unwrap();
        if (i + 1) % group == 0 {
            db.flush().unwrap();
        }
    }
    db.flush().unwrap();
    let rate = total as f64 / t.elapsed().as_secs_f64();
    drop(db);
    let _ = std::fs::remove_dir_all(&path);
    rate
}

fn cpu_time() -> Duration {
    // utime + stime of this process, in clock ticks (100 Hz on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn config(url: &str, path: &Path) -> lotlink::testing::config::Config {
    let text = format!(
        "[platform]\nurl = \"{url}\"\nlot_code = \"350\"\ntoken = \"bench\"\nmax_body = \"8MiB\"\n[outbox]\npath = \"{}\"\nmax_disk = \"8GiB\"\n[status]\nlisten = \"127.0.0.1:0\"\n[space]\ntotal = 100\n",
        path.display()
    );
    lotlink::testing::config::from_str(Path::new("bench.toml"), &text).unwrap()
}

async fn fill(path: &Path, n: u64, image: &[u8]) {
    let (ob, _) = Outbox::open(path, OutboxOptions::default()).unwrap();
    let image = Arc::new(image.to_vec());
    let mut tasks = Vec::new();
    for s in 0..64u64 {
        let (ob, image) = (ob.clone(), image.clone());
        tasks.push(tokio::spawn(async move {
            for i in (s..n).step_by(64) {
                ob.submit(common::new_record(i, &image)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn p2(image: &[u8]) {
    let dir = bench_dir();
    let path = dir.path().join("p2");
    let n = 5_000u64;
    fill(&path, n, image).await;
    let sim = lotlink_sim::PlatformSim::start(lotlink_sim::SimConfig::new("350", "bench"))
        .await
        .unwrap();
    let cfg = config(&sim.url(), &path);
    let cpu0 = cpu_time();
    let t = Instant::now();
    let gw = lotlink::testing::app::Gateway::start(
        &cfg,
        vec![],
        lotlink::testing::app::RunOptions::default(),
    )
    .await
    .unwrap();
    assert!(
        sim.wait_for_records(n as usize, Duration::from_secs(600))
            .await
    );
    let wall = t.elapsed();
    let cpu = cpu_time() - cpu0;
    gw.stop().await;
    println!(
        "P2 CPU per uploaded record (100-record batches, {} KB images, simulator in the same process): {:.3} ms CPU, {:.3} ms wall",
        image.len() / 1024,
        cpu.as_secs_f64() * 1e3 / n as f64,
        wall.as_secs_f64() * 1e3 / n as f64
    );
    result(
        "p2_cpu_per_record",
        cpu.as_secs_f64() * 1e3 / n as f64,
        "ms",
    );
    sim.shutdown().await;
}

async fn p5(image: &[u8]) {
    let dir = bench_dir();
    // LOTLINK_BENCH_KEEP=1 keeps the filled store and its config for profiling by hand.
    if std::env::var_os("LOTLINK_BENCH_KEEP").is_some() {
        println!("P5 store kept in {}", dir.path().display());
    }
    let path = dir.path().join("p5");
    let n = 100_000u64;
    let t = Instant::now();
    fill(&path, n, image).await;
    println!(
        "P5 setup: stored {n} records of {} bytes image in {:.1} s",
        image.len(),
        t.elapsed().as_secs_f64()
    );
    // Let sled release its lock before the gateway opens the store again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Anchor: bare sled opening a copy of the same store and reading its first record. sled
    // 0.34 writes its snapshot only while opening, so the first open after a big backlog was
    // written replays that whole log; the gateway's start pays the same.
    let copy = dir.path().join("p5-anchor");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(&path)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    let t = Instant::now();
    let db = bare_sled(&copy);
    let opened = t.elapsed();
    // The first chunk of the index (`q`, see src/outbox/index.rs).
    let _first = db.scan_prefix(b"q").next();
    let first_read = t.elapsed();
    drop(db);
    let _ = std::fs::remove_dir_all(&copy);
    println!(
        "P5 anchor: bare sled opens a copy of that store in {:.3} s, first record read at {:.3} s",
        opened.as_secs_f64(),
        first_read.as_secs_f64()
    );
    result("p5_sled_open", first_read.as_secs_f64(), "s");
    let sim = lotlink_sim::PlatformSim::start(lotlink_sim::SimConfig::new("350", "bench"))
        .await
        .unwrap();
    // The gateway is the real `lotlink run` binary in a process of its own, so the RSS is
    // the daemon's as shipped (not this bench's, which filled the store and runs the
    // simulator). Time = from spawning it to the first record at the platform.
    let text = format!(
        "[platform]\nurl = \"{}\"\nlot_code = \"350\"\ntoken = \"bench\"\nmax_body = \"8MiB\"\n[outbox]\npath = \"{}\"\nmax_disk = \"8GiB\"\n[status]\nlisten = \"127.0.0.1:0\"\n[space]\ntotal = 100\n",
        sim.url(),
        path.display()
    );
    let cfg = dir.path().join("p5.toml");
    std::fs::write(&cfg, text).unwrap();
    println!("P5 gateway binary: {}", gateway_bin().display());
    let t = Instant::now();
    let mut child = spawn_gateway(&cfg);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while sim.records().is_empty() {
        tick.tick().await;
    }
    let first = t.elapsed();
    let rss_first = pid_rss_kb(child.id());
    println!("P5 RSS at the first upload: {}", rss_split(child.id()));
    // And once it has settled into steady uploading.
    let settle = Instant::now();
    while sim.records().len() < 5_000 && settle.elapsed() < Duration::from_secs(30) {
        tick.tick().await;
    }
    let rss_steady = pid_rss_kb(child.id());
    println!(
        "P5 start to first upload with {n} pending: {:.3} s; lotlink RSS {rss_first} KB at the first upload, {rss_steady} KB after {} records uploaded",
        first.as_secs_f64(),
        sim.records().len()
    );
    result("p5_first_upload", first.as_secs_f64(), "s");
    result("p5_rss_first", rss_first as f64 / 1024.0, "MB");
    result("p5_rss_steady", rss_steady as f64 / 1024.0, "MB");
    let _ = child.kill();
    let _ = child.wait();
    // The index lost (sled's files deleted from a copy of the store): the gateway rebuilds
    // it from the log before it can upload. Beside it, sled opening the same store above.
    let lost = dir.path().join("p5-rebuild");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(&path)
        .arg(&lost)
        .status()
        .unwrap();
    assert!(status.success());
    for e in std::fs::read_dir(&lost).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if matches!(name.as_str(), "conf" | "db" | "blobs") || name.starts_with("snap.") {
            let p = e.path();
            if p.is_dir() {
                std::fs::remove_dir_all(p).unwrap();
            } else {
                std::fs::remove_file(p).unwrap();
            }
        }
    }
    let before = sim.stats().requests_to(lotlink_sim::Route::CarInOut);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&path.display().to_string(), &lost.display().to_string());
    let cfg2 = dir.path().join("p5-rebuild.toml");
    std::fs::write(&cfg2, text).unwrap();
    let t = Instant::now();
    let mut child = spawn_gateway(&cfg2);
    while sim.stats().requests_to(lotlink_sim::Route::CarInOut) == before {
        tick.tick().await;
    }
    let rebuilt = t.elapsed();
    let (_, hwm) = pid_rss_hwm_kb(child.id());
    println!(
        "P5 rebuild: index lost, {} pending rebuilt from the log, start to first upload {:.3} s, peak RSS {hwm} KB",
        n - 5_000,
        rebuilt.as_secs_f64()
    );
    result("p5_rebuild", rebuilt.as_secs_f64(), "s");
    result("p5_rebuild_rss_peak", hwm as f64 / 1024.0, "MB");
    let _ = child.kill();
    let _ = child.wait();
    sim.shutdown().await;
    if std::env::var_os("LOTLINK_BENCH_KEEP").is_some() {
        let _ = dir.keep();
    }
}

/// The gateway binary P4 and P5 run: `LOTLINK_GATEWAY_BIN` (benches/run.sh builds the
/// shipped one, profile dist, and names it there), else the release build cargo made for
/// this bench. The profile matters: sled at opt-level "s" once cost 21 MB of RSS.
fn gateway_bin() -> std::path::PathBuf {
    std::env::var_os("LOTLINK_GATEWAY_BIN")
        .map_or_else(|| env!("CARGO_BIN_EXE_lotlink").into(), Into::into)
}

/// The real `lotlink run` binary on `config`, logging warnings only (or what
/// `LOTLINK_BENCH_LOG` says).
fn spawn_gateway(config: &Path) -> std::process::Child {
    std::process::Command::new(gateway_bin())
        .arg("run")
        .arg("--config")
        .arg(config)
        .env(
            "RUST_LOG",
            std::env::var("LOTLINK_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .spawn()
        .unwrap()
}

/// `/status` of a gateway listening on `port` (None until it answers).
async fn gateway_status(http: &reqwest::Client, port: u16) -> Option<serde_json::Value> {
    http.get(format!("http://127.0.0.1:{port}/status"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

fn camera_sections(cameras: usize) -> String {
    (1..=cameras)
        .map(|i| {
            format!(
                "\n[[camera]]\nname = \"cam{i}\"\ndirection = \"{}\"\ndriver = \"mqtt\"\nformat = \"json\"\ntopic = \"bench/cam{i}\"\n",
                if i % 2 == 1 { "in" } else { "out" }
            )
        })
        .collect()
}

fn camera_message(id: &str, plate: &str, image: Option<&[u8]>) -> Vec<u8> {
    let image = image.map_or(String::new(), |i| {
        format!(
            r#","image":"{}""#,
            base64::engine::general_purpose::STANDARD.encode(i)
        )
    });
    format!(r#"{{"plate":"{plate}","id":"{id}"{image}}}"#).into_bytes()
}

/// P4: 4 cameras sending into a store that already holds 100,000 pending records, the
/// platform unreachable; RSS (and peak RSS) of the gateway once everything sent is stored.
async fn p4(image: &[u8]) {
    let dir = bench_dir();
    let path = dir.path().join("p4");
    let n = 100_000u64;
    fill(&path, n, image).await;
    // Let sled release its lock before the gateway opens the store again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let broker = common::devices::Broker::start().await;
    let status_port = common::devices::free_port();
    let dead_port = common::devices::free_port();
    let text = format!(
        "[platform]\nurl = \"http://127.0.0.1:{dead_port}\"\nlot_code = \"350\"\ntoken = \"bench-token-0000\"\n[outbox]\npath = \"{}\"\nmax_disk = \"8GiB\"\n[status]\nlisten = \"127.0.0.1:{status_port}\"\n[space]\ntotal = 100\n[mqtt]\nurl = \"{}\"\nclient_id = \"lotlink-bench-p4\"\nmax_packet = \"2MiB\"\n{}",
        path.display(),
        broker.url(),
        camera_sections(4)
    );
    let cfg = dir.path().join("p4.toml");
    std::fs::write(&cfg, text).unwrap();
    let mut child = spawn_gateway(&cfg);
    let http = reqwest::Client::new();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    while gateway_status(&http, status_port).await.is_none() {
        tick.tick().await;
    }
    let publisher = common::devices::Publisher::connect(broker.port, "bench-cameras").await;
    let per_camera = 250u64;
    let sent = 4 * per_camera;
    let t = Instant::now();
    // Until every event is stored; a message sent before the subscription is live is lost
    // to it (QoS 1 without a session), so the ids are resent until all arrived (dedupe keeps
    // each once).
    let mut stored = 0;
    while stored < n + sent && t.elapsed() < Duration::from_secs(300) {
        for i in 0..per_camera {
            for cam in 1..=4u64 {
                let id = format!("p4-{cam}-{i}");
                let plate = format!("晋A{:05}", cam * 10_000 + i);
                publisher
                    .publish(
                        &format!("bench/cam{cam}"),
                        camera_message(&id, &plate, Some(image)),
                    )
                    .await;
            }
        }
        let settle = Instant::now();
        while settle.elapsed() < Duration::from_secs(10) {
            stored = gateway_status(&http, status_port)
                .await
                .and_then(|s| s["outbox"]["pending"].as_u64())
                .unwrap_or(0);
            if stored >= n + sent {
                break;
            }
            tick.tick().await;
        }
    }
    let (rss, hwm) = pid_rss_hwm_kb(child.id());
    println!(
        "P4 4 cameras, {sent} events sent into {n} pending (platform unreachable): {stored} pending; lotlink RSS {rss} KB, peak {hwm} KB, {:.1} s",
        t.elapsed().as_secs_f64()
    );
    result("p4_rss", rss as f64 / 1024.0, "MB");
    result("p4_rss_peak", hwm as f64 / 1024.0, "MB");
    if let Some(pid) = broker.pid() {
        // The anchor: a fresh, idle mosquitto (the broker above has been busy).
        drop(broker);
        let idle = common::devices::Broker::start().await;
        let idle_pid = idle.pid().unwrap_or(pid);
        let (mrss, _) = pid_rss_hwm_kb(idle_pid);
        println!("P4 anchor: idle mosquitto RSS {mrss} KB");
        result("anchor_mosquitto_rss", mrss as f64 / 1024.0, "MB");
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// P7: one event at a time from an MQTT camera to the platform simulator, through mosquitto
/// and the real binary; p50/p99 of publish-to-receipt, without and with a 400 KB image.
async fn p7() {
    let dir = bench_dir();
    let sim =
        lotlink_sim::PlatformSim::start(lotlink_sim::SimConfig::new("350", "bench-token-0000"))
            .await
            .unwrap();
    let broker = common::devices::Broker::start().await;
    let status_port = common::devices::free_port();
    let text = format!(
        "[platform]\nurl = \"{}\"\nlot_code = \"350\"\ntoken = \"bench-token-0000\"\n[outbox]\npath = \"{}\"\n[status]\nlisten = \"127.0.0.1:{status_port}\"\n[space]\ntotal = 100\n[mqtt]\nurl = \"{}\"\nclient_id = \"lotlink-bench-p7\"\nmax_packet = \"2MiB\"\n{}",
        sim.url(),
        dir.path().join("p7").display(),
        broker.url(),
        camera_sections(1)
    );
    let cfg = dir.path().join("p7.toml");
    std::fs::write(&cfg, text).unwrap();
    let mut child = spawn_gateway(&cfg);
    let publisher = common::devices::Publisher::connect(broker.port, "bench-camera").await;
    // Warm up until the subscription is live.
    let mut warm = 0;
    while sim.records().is_empty() {
        warm += 1;
        publisher
            .publish(
                "bench/cam1",
                camera_message(&format!("warm-{warm}"), "晋W00001", None),
            )
            .await;
        sim.wait_for_records(1, Duration::from_millis(200)).await;
    }
    let big = {
        let mut q = 90u8;
        loop {
            let j = lotlink::testing::imaging::synth_jpeg(1920, 1080, 7, q);
            if j.len() >= 400_000 || q >= 100 {
                break j;
            }
            q += 2;
        }
    };
    for (label, image) in [("no image", None), ("400 KB image", Some(big.as_slice()))] {
        let rounds = 100;
        let mut times = Vec::with_capacity(rounds);
        for i in 0..rounds {
            let before = sim.records().len();
            let msg = camera_message(&format!("p7-{label}-{i}"), &format!("晋B{i:05}"), image);
            let t = Instant::now();
            publisher.publish("bench/cam1", msg).await;
            assert!(
                sim.wait_for_records(before + 1, Duration::from_secs(30))
                    .await,
                "P7 event {i} arrived"
            );
            times.push(t.elapsed());
        }
        times.sort();
        let p50 = times[rounds / 2].as_secs_f64() * 1e3;
        let p99 = times[rounds * 99 / 100].as_secs_f64() * 1e3;
        println!("P7 MQTT event to platform receipt, {label}: p50 {p50:.1} ms, p99 {p99:.1} ms ({rounds} events, one at a time)");
        let key = if image.is_some() {
            "p7_image"
        } else {
            "p7_plain"
        };
        result(&format!("{key}_p50"), p50, "ms");
        result(&format!("{key}_p99"), p99, "ms");
    }
    let _ = child.kill();
    let _ = child.wait();
    sim.shutdown().await;
}

/// Bytes this process has caused to be written to storage so far (`/proc/self/io`).
fn write_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn du(path: &Path) -> u64 {
    std::fs::read_dir(path).map_or(0, |rd| {
        rd.flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => du(&e.path()),
                Ok(m) => std::os::unix::fs::MetadataExt::blocks(&m) * 512,
                Err(_) => 0,
            })
            .sum()
    })
}

/// Images inline in sled values (the outbox before its log), images as fsynced files named
/// by record id beside a small sled record, and the outbox as shipped (records in its
/// segment log, pointers in sled): bytes written to the disk (the SD card's wear) and space
/// used, for a backlog that is stored and then drained, one submit at a time.
async fn images_inline_vs_files(image: &[u8]) {
    let n = 2_000u64;
    let data = n * image.len() as u64;
    let report = |what: &str, written: u64, peak: u64, left: u64, secs: f64| {
        println!(
            "IMG {what}: {n} records of {} KB images ({:.0} MB of data) stored and drained: {:.0} MB written to disk ({:.1}x), peak {:.0} MB on disk ({:.1}x), {:.0} MB left after draining, {:.1} s",
            image.len() / 1024,
            data as f64 / 1e6,
            written as f64 / 1e6,
            written as f64 / data as f64,
            peak as f64 / 1e6,
            peak as f64 / data as f64,
            left as f64 / 1e6,
            secs
        );
    };

    // Inline: bare sled with the whole record in the value, one flush per record (the
    // outbox's design before the log).
    let dir = bench_dir();
    let path = dir.path().join("inline");
    let w0 = write_bytes();
    let t = Instant::now();
    {
        let db = bare_sled(&path);
        let mut value = vec![b'm'; 400];
        value.extend_from_slice(image);
        for i in 0..n {
            db.insert(i.to_be_bytes(), value.as_slice()).unwrap();
            db.flush().unwrap();
        }
        let peak = du(&path);
        drain_bare_sled(&db, n, |_| {});
        let secs = t.elapsed().as_secs_f64();
        drop(db);
        report("inline in sled", write_bytes() - w0, peak, du(&path), secs);
    }

    // Files: image written and fsynced first, then a small sled record, flushed.
    let path = dir.path().join("files");
    let imgs = path.join("img");
    std::fs::create_dir_all(&imgs).unwrap();
    let w0 = write_bytes();
    let t = Instant::now();
    let db = bare_sled(&path.join("db"));
    let meta = vec![b'm'; 400];
    for i in 0..n {
        let f = imgs.join(format!("{i:016x}.jpg"));
        let mut file = std::fs::File::create(&f).unwrap();
        file.write_all(image).unwrap();
        file.sync_data().unwrap();
        std::fs::File::open(&imgs).unwrap().sync_all().unwrap();
        db.insert(i.to_be_bytes(), meta.as_slice()).unwrap();
        db.flush().unwrap();
    }
    let peak = du(&path);
    drain_bare_sled(&db, n, |chunk| {
        for i in chunk {
            let _ = std::fs::remove_file(imgs.join(format!("{i:016x}.jpg")));
        }
    });
    std::fs::File::open(&imgs).unwrap().sync_all().unwrap();
    let secs = t.elapsed().as_secs_f64();
    drop(db);
    report("files + sled", write_bytes() - w0, peak, du(&path), secs);

    // The outbox as shipped: records in its segment log, pointers in sled.
    let path = dir.path().join("outbox");
    let w0 = write_bytes();
    let t = Instant::now();
    let (ob, _) = Outbox::open(&path, OutboxOptions::default()).unwrap();
    for i in 0..n {
        ob.submit(common::new_record(i, image)).await.unwrap();
    }
    let peak = du(&path);
    loop {
        let batch = ob.peek(100, u64::MAX).unwrap();
        if batch.is_empty() {
            break;
        }
        let ids: Vec<u64> = batch.iter().map(|r| r.id).collect();
        ob.ack(&ids).await.unwrap();
    }
    ob.flush().await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    report(
        "the outbox (log + sled)",
        write_bytes() - w0,
        peak,
        du(&path),
        secs,
    );
}

/// VmRSS and VmHWM (peak) of a process, in KB.
fn pid_rss_hwm_kb(pid: u32) -> (u64, u64) {
    let [rss, hwm] = pid_status_kb(pid, ["VmRSS:", "VmHWM:"]);
    (rss, hwm)
}

fn pid_rss_kb(pid: u32) -> u64 {
    pid_status_kb(pid, ["VmRSS:"])[0]
}

/// `kB` figures of `/proc/<pid>/status`, read at one moment (0 if the process is gone).
fn pid_status_kb<const N: usize>(pid: u32, fields: [&str; N]) -> [u64; N] {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    fields.map(|name| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
            .unwrap_or(0)
    })
}

/// RSS split into what the process allocated (anonymous) and pages of mapped files (the
/// binary and its libraries, which the kernel can drop and re-read).
fn rss_split(pid: u32) -> String {
    let [anon, file] = pid_status_kb(pid, ["RssAnon:", "RssFile:"]);
    format!("{anon} KB anonymous + {file} KB file-backed")
}

/// SLOWLINK: drain rates of an image backlog through a throttled uplink.
async fn slowlink() {
    let scale: u32 = std::env::var("LOTLINK_SLOWLINK_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&k| k >= 1)
        .unwrap_or(2);
    const RECORDS: usize = 200;
    for (name, bits) in [("1mbit", 1_000_000u64), ("256kbit", 256_000)] {
        let d =
            common::throttle::drain_backlog(bits, RECORDS, scale, Duration::from_secs(1800)).await;
        // Seconds as the link would take them without the time scale.
        let secs = d.elapsed.as_secs_f64() * f64::from(scale);
        let raw = bits as f64 / 8.0;
        let goodput = d.bytes_up as f64 / secs;
        let per_record = d.bytes_up as f64 / d.delivered.max(1) as f64;
        let singles = d.batch_sizes.iter().filter(|&&n| n == 1).count();
        let mean = d.delivered as f64 / d.batch_sizes.len().max(1) as f64;
        println!(
            "SLOWLINK {name}: {}/{RECORDS} records in {secs:.1} s (scale {scale}); {} requests accepted of {} sent, {singles} of one record, mean {mean:.2} records; {:.0} B up per record; {} dead",
            d.delivered,
            d.batch_sizes.len(),
            d.requests,
            per_record,
            d.dead
        );
        result(
            &format!("slowlink_{name}_records_per_s"),
            d.delivered as f64 / secs,
            "records/s",
        );
        result(
            &format!("slowlink_{name}_capacity_records_per_s"),
            raw / per_record,
            "records/s",
        );
        result(
            &format!("slowlink_{name}_uplink_bytes_per_s"),
            goodput,
            "B/s",
        );
        result(&format!("slowlink_{name}_raw_bytes_per_s"), raw, "B/s");
        result(&format!("slowlink_{name}_mean_batch"), mean, "records");
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let small = lotlink::testing::imaging::synth_jpeg(160, 120, 1, 80);
    let full = {
        let big = lotlink::testing::imaging::synth_jpeg(1920, 1080, 2, 90);
        lotlink::testing::imaging::prepare(&big, lotlink::testing::imaging::MAX_B64_CHARS).bytes
    };
    rt.block_on(async {
        // LOTLINK_BENCH_ONLY=p1|p2|p4|p5|p7|img runs one part.
        let only = std::env::var("LOTLINK_BENCH_ONLY").unwrap_or_default();
        if only.is_empty() || only == "p1" {
            p1(&small).await;
        }
        if only.is_empty() || only == "p2" {
            p2(&full).await;
        }
        if only.is_empty() || only == "p4" {
            p4(&small).await;
        }
        if only.is_empty() || only == "p5" {
            p5(&small).await;
        }
        if only.is_empty() || only == "p7" {
            p7().await;
        }
        if only.is_empty() || only == "img" {
            images_inline_vs_files(&full).await;
        }
        if only.is_empty() || only == "slowlink" {
            slowlink().await;
        }
    });
}
