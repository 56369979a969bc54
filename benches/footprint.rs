//! The footprint of issue 16, measured on the real `lotlink` binary with its outbox on an
//! ext4 loop device of its own (so the device counters see only lotlink's writes, journal
//! included), real mosquitto, the platform simulator. Run through `benches/footprint.sh`
//! (root: it makes the loop device and mount and passes them here):
//!
//! - **per event**: device bytes, write I/Os and flushes per event (plain; with a 35 KB JPEG;
//!   platform up and down), events sent one at a time, the window closed only after the
//!   outbox's lazy index flush (`index_flush`, 30 s) so its cost is in the figure; beside
//!   the anchor: one `fdatasync`ed `O_APPEND` write of the same record bytes (the segment
//!   log's growth per event) on the same ext4, counted the same way.
//! - **idle**: over a measured window scaled to an hour, one MQTT camera connected and the
//!   platform up: device flushes, bytes written, wakeups/s (voluntary + involuntary context
//!   switches of every thread), threads, CPU; beside mosquitto in the same window.
//! - **backlog**: mosquitto holding 10,000 events with a 35 KB JPEG for the gateway's
//!   session, draining into a down platform: lotlink's peak RSS (sampled every 20 ms and
//!   `VmHWM`), and RSS one minute after the drain, beside its idle RSS.
//! - **backlog1080**: the same with 2,000 events carrying a 1080p JPEG of at least 400 KB.
//! - **burst**: 300 such 1080p events published at once to a running gateway (platform
//!   down): peak RSS until stored, and a minute after.
//! - **start-up**: 100,000 pending records whose dedupe entries are older than the window
//!   (the gateway runs 20 minutes ahead under libfaketime), and (`start_fresh`) 100,000
//!   filled just before, all inside the window: time to `READY=1` (sd-notify socket) and
//!   to the first upload, and peak RSS.
//!
//! Every figure is printed as a `=> key value unit` line. Environment:
//! `LOTLINK_FOOTPRINT_MNT` (the mount), `LOTLINK_FOOTPRINT_DEV` (e.g. `loop3`),
//! `LOTLINK_GATEWAY_BIN`, `LOTLINK_FOOTPRINT_IDLE_SECS` (default 120),
//! `LOTLINK_FOOTPRINT_ONLY` (`event`, `idle`, `backlog`, `backlog1080`, `burst`, `start`,
//! `start_fresh`;
//! comma-separated).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use lotlink::testing::outbox::{Outbox, OutboxOptions};

#[path = "../tests/common/mod.rs"]
mod common;

fn result(key: &str, value: f64, unit: &str) {
    println!("=> {key} {value:.3} {unit}");
}

fn env_path(name: &str) -> PathBuf {
    std::env::var_os(name)
        .unwrap_or_else(|| panic!("{name} not set: run benches/footprint.sh"))
        .into()
}

/// `/sys/block/<dev>/stat`: (write I/Os, sectors written, flushes).
#[derive(Debug, Clone, Copy, Default)]
struct Dev {
    writes: u64,
    sectors: u64,
    flushes: u64,
}

impl Dev {
    /// The counters after `sync` (what is due is written now): for windows with events.
    fn read() -> Dev {
        let _ = std::process::Command::new("sync").status();
        Dev::read_now()
    }
    /// The counters as they are (a `sync` would add a journal commit and a flush of its own:
    /// the idle window must not cause any).
    fn read_now() -> Dev {
        let dev = std::env::var("LOTLINK_FOOTPRINT_DEV").expect("LOTLINK_FOOTPRINT_DEV");
        let text = std::fs::read_to_string(format!("/sys/block/{dev}/stat")).unwrap();
        let f: Vec<u64> = text
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        Dev {
            writes: f[4],
            sectors: f[6],
            flushes: f.get(15).copied().unwrap_or(0),
        }
    }
    fn since(self, before: Dev) -> Dev {
        Dev {
            writes: self.writes - before.writes,
            sectors: self.sectors - before.sectors,
            flushes: self.flushes - before.flushes,
        }
    }
    fn bytes(self) -> u64 {
        self.sectors * 512
    }
}

fn gateway_bin() -> PathBuf {
    std::env::var_os("LOTLINK_GATEWAY_BIN")
        .map_or_else(|| env!("CARGO_BIN_EXE_lotlink").into(), Into::into)
}

fn spawn(config: &Path, envs: &[(&str, String)], faketime: Option<&str>) -> std::process::Child {
    let mut cmd = match faketime {
        Some(f) => {
            // libfaketime preloaded into the gateway itself (the `faketime` wrapper would be
            // a process of its own, and its RSS is not the gateway's).
            let mut c = std::process::Command::new(gateway_bin());
            c.env(
                "LD_PRELOAD",
                "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
            )
            .env("FAKETIME", f)
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
            c
        }
        None => std::process::Command::new(gateway_bin()),
    };
    cmd.arg("run").arg("--config").arg(config).env(
        "RUST_LOG",
        std::env::var("LOTLINK_BENCH_LOG").unwrap_or_else(|_| "info".into()),
    );
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.stderr(std::process::Stdio::null());
    cmd.spawn().unwrap()
}

async fn status(http: &reqwest::Client, port: u16) -> Option<serde_json::Value> {
    http.get(format!("http://127.0.0.1:{port}/status"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

async fn pending(http: &reqwest::Client, port: u16) -> u64 {
    status(http, port)
        .await
        .and_then(|s| s["outbox"]["pending"].as_u64())
        .unwrap_or(0)
}

fn message(id: &str, plate: &str, image: Option<&[u8]>) -> Vec<u8> {
    let image = image.map_or(String::new(), |i| {
        format!(
            r#","image":"{}""#,
            base64::engine::general_purpose::STANDARD.encode(i)
        )
    });
    format!(r#"{{"plate":"{plate}","id":"{id}"{image}}}"#).into_bytes()
}

fn config(dir: &Path, name: &str, platform: &str, broker: &str, status_port: u16) -> PathBuf {
    let text = format!(
        "[platform]\nurl = \"{platform}\"\nlot_code = \"350\"\ntoken = \"bench-token-0000\"\n[outbox]\npath = \"{}\"\nmax_disk = \"4GiB\"\n[status]\nlisten = \"127.0.0.1:{status_port}\"\n[space]\ntotal = 100\n[mqtt]\nurl = \"{broker}\"\nclient_id = \"lotlink-footprint-{name}\"\nmax_packet = \"4MiB\"\n\n[[camera]]\nname = \"cam1\"\ndirection = \"in\"\ndriver = \"mqtt\"\nformat = \"json\"\ntopic = \"bench/cam1\"\n",
        dir.join(name).display()
    );
    // Unique per run: another footprint run may share the machine.
    let cfg = std::env::temp_dir().join(format!("footprint-{name}-{}.toml", std::process::id()));
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// (`VmRSS`, `VmHWM`) in KB.
fn rss_hwm_kb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let get = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
            .unwrap_or(0u64)
    };
    (get("VmRSS:"), get("VmHWM:"))
}

/// Context switches per thread name (to see who wakes up), summed over threads of a name.
fn switches_by_thread(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in rd.flatten() {
            let s = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            let name = s
                .lines()
                .find_map(|l| l.strip_prefix("Name:"))
                .unwrap_or("?")
                .trim()
                .to_string();
            let n: u64 = s
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<u64>().ok())
                })
                .sum();
            *out.entry(name).or_insert(0) += n;
        }
    }
    out
}

/// Context switches of every thread, thread count, CPU ticks (utime + stime).
fn proc_counts(pid: u32) -> (u64, u64, u64) {
    let mut switches = 0;
    let mut threads = 0;
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in rd.flatten() {
            threads += 1;
            let s = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            for l in s.lines() {
                if l.starts_with("voluntary_ctxt_switches:")
                    || l.starts_with("nonvoluntary_ctxt_switches:")
                {
                    switches += l
                        .split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0);
                }
            }
        }
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // After the ")": state is field 0, utime 11, stime 12.
    let cpu = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    (switches, threads, cpu)
}

fn segment_bytes(outbox: &Path) -> u64 {
    std::fs::read_dir(outbox.join("segments")).map_or(0, |rd| {
        rd.flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    })
}

/// The anchor: `n` `fdatasync`ed appends of `size` bytes on the same file system.
fn anchor(mnt: &Path, size: usize, n: usize) -> Dev {
    let p = mnt.join("anchor.log");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p)
        .unwrap();
    let buf = vec![0x5a; size];
    let before = Dev::read();
    for _ in 0..n {
        f.write_all(&buf).unwrap();
        f.sync_data().unwrap();
    }
    let d = Dev::read().since(before);
    drop(f);
    let _ = std::fs::remove_file(&p);
    d
}

/// Poll an async condition every 20 ms until it holds or `timeout` passes; true if it held.
macro_rules! wait_until {
    ($timeout:expr, $cond:expr) => {{
        let t = Instant::now();
        let mut ok = false;
        while t.elapsed() < $timeout {
            if $cond {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ok
    }};
}

/// Per event device I/O, platform up then down, plain then with a 35 KB image.
async fn per_event(mnt: &Path, jpeg35: &[u8]) {
    let n = 200usize;
    let sim =
        lotlink_sim::PlatformSim::start(lotlink_sim::SimConfig::new("350", "bench-token-0000"))
            .await
            .unwrap();
    let broker = common::devices::Broker::start().await;
    let port = common::devices::free_port();
    let cfg = config(mnt, "event", &sim.url(), &broker.url(), port);
    let mut child = spawn(&cfg, &[], None);
    let http = reqwest::Client::new();
    let publisher = common::devices::Publisher::connect(broker.port, "footprint-cam").await;
    // Warm up until the subscription is live.
    let mut warm = 0;
    while sim.records().is_empty() {
        warm += 1;
        publisher
            .publish(
                "bench/cam1",
                message(&format!("warm-{warm}"), "晋W00001", None),
            )
            .await;
        sim.wait_for_records(1, Duration::from_millis(300)).await;
    }
    // Let the warm-up's lazy index flush pass.
    tokio::time::sleep(Duration::from_secs(35)).await;
    let mut seq = 0u64;
    let mut seg_per_event = [0u64; 2];
    for up in [true, false] {
        if !up {
            sim.set_mode(lotlink_sim::Mode::Refuse);
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        for (k, image) in [("plain", None), ("image", Some(jpeg35))] {
            let seg0 = segment_bytes(&mnt.join("event"));
            let before = Dev::read();
            for _ in 0..n {
                seq += 1;
                let stored_before = if up {
                    sim.records().len() as u64
                } else {
                    pending(&http, port).await
                };
                publisher
                    .publish(
                        "bench/cam1",
                        message(&format!("ev-{seq}"), &format!("晋A{seq:05}"), image),
                    )
                    .await;
                let ok = wait_until!(
                    Duration::from_secs(30),
                    if up {
                        sim.records().len() as u64 > stored_before
                    } else {
                        pending(&http, port).await > stored_before
                    }
                );
                assert!(ok, "event {seq} stored");
            }
            // Close the window after the lazy index flush (30 s) has run.
            tokio::time::sleep(Duration::from_secs(33)).await;
            let d = Dev::read().since(before);
            let seg = segment_bytes(&mnt.join("event")) - seg0;
            let state = if up { "up" } else { "down" };
            println!(
                "EVENT {k}, platform {state}: {n} events, {} bytes, {} write I/Os, {} flushes on the device; segment log +{seg} bytes",
                d.bytes(),
                d.writes,
                d.flushes
            );
            result(
                &format!("event_{k}_{state}_bytes"),
                d.bytes() as f64 / n as f64 / 1024.0,
                "KB",
            );
            result(
                &format!("event_{k}_{state}_writes"),
                d.writes as f64 / n as f64,
                "ios",
            );
            result(
                &format!("event_{k}_{state}_flushes"),
                d.flushes as f64 / n as f64,
                "flushes",
            );
            if !up {
                seg_per_event[usize::from(image.is_some())] = seg / n as u64;
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    for (i, k) in ["plain", "image"].iter().enumerate() {
        let size = seg_per_event[i] as usize;
        let d = anchor(mnt, size, n);
        println!(
            "ANCHOR {k}: {n} fdatasynced appends of {size} bytes: {} bytes, {} write I/Os, {} flushes",
            d.bytes(),
            d.writes,
            d.flushes
        );
        result(&format!("anchor_{k}_record"), size as f64, "bytes");
        result(
            &format!("anchor_{k}_bytes"),
            d.bytes() as f64 / n as f64 / 1024.0,
            "KB",
        );
        result(
            &format!("anchor_{k}_writes"),
            d.writes as f64 / n as f64,
            "ios",
        );
        result(
            &format!("anchor_{k}_flushes"),
            d.flushes as f64 / n as f64,
            "flushes",
        );
    }
    sim.shutdown().await;
}

/// Idle: one camera connected, the platform up, nothing happening.
async fn idle(mnt: &Path, secs: u64) {
    let sim =
        lotlink_sim::PlatformSim::start(lotlink_sim::SimConfig::new("350", "bench-token-0000"))
            .await
            .unwrap();
    let broker = common::devices::Broker::start().await;
    let port = common::devices::free_port();
    let cfg = config(mnt, "idle", &sim.url(), &broker.url(), port);
    let mut child = spawn(&cfg, &[], None);
    let publisher = common::devices::Publisher::connect(broker.port, "footprint-idle-cam").await;
    let mut warm = 0;
    while sim.records().is_empty() {
        warm += 1;
        publisher
            .publish(
                "bench/cam1",
                message(&format!("warm-{warm}"), "晋W00001", None),
            )
            .await;
        sim.wait_for_records(1, Duration::from_millis(300)).await;
    }
    // Past the warm-up's index flush.
    tokio::time::sleep(Duration::from_secs(35)).await;
    // And past its tail in the kernel: the metadata that flush dirtied reaches its home
    // blocks ~30 s later (dirty_expire_centisecs), with a journal commit. That write belongs
    // to the warm-up's events (the per-event windows count it through their `sync`), not to
    // idling; measured 2026-12-02 it fell inside a window opened 35 s after the warm-up
    // (32-40 KB and 2 flushes per window, read as ~1 MB/h). So the window opens only once
    // the device has been still for 45 s (at most 5 minutes of waiting).
    let quiet_for = Duration::from_secs(45);
    let give_up = Instant::now() + Duration::from_secs(300);
    let mut last = Dev::read_now();
    let mut still_since = Instant::now();
    while still_since.elapsed() < quiet_for && Instant::now() < give_up {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = Dev::read_now();
        if now.writes != last.writes || now.flushes != last.flushes {
            last = now;
            still_since = Instant::now();
        }
    }
    println!(
        "IDLE window opens after the device was still for {:.0} s",
        still_since.elapsed().as_secs_f64()
    );
    let pid = child.id();
    let mpid = broker.pid().unwrap_or(0);
    let d0 = Dev::read_now();
    let by0 = switches_by_thread(pid);
    let (l0, _, lc0) = proc_counts(pid);
    let (m0, _, mc0) = proc_counts(mpid);
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let wall = t.elapsed().as_secs_f64();
    let d = Dev::read_now().since(d0);
    let (l1, lthreads, lc1) = proc_counts(pid);
    for (name, n) in switches_by_thread(pid) {
        let before = by0.get(&name).copied().unwrap_or(0);
        println!("IDLE thread {name}: {} switches", n.saturating_sub(before));
    }
    let (m1, mthreads, mc1) = proc_counts(mpid);
    let hour = 3600.0 / wall;
    let tick = 100.0; // USER_HZ
    println!(
        "IDLE {wall:.0} s: device {} bytes, {} flushes; lotlink {} switches, {lthreads} threads, {} ticks CPU; mosquitto {} switches, {mthreads} threads, {} ticks CPU",
        d.bytes(),
        d.flushes,
        l1 - l0,
        lc1 - lc0,
        m1 - m0,
        mc1 - mc0
    );
    result("idle_bytes_per_hour", d.bytes() as f64 * hour, "bytes");
    result("idle_flushes_per_hour", d.flushes as f64 * hour, "flushes");
    result("idle_wakeups", (l1 - l0) as f64 / wall, "per_s");
    result("idle_threads", lthreads as f64, "threads");
    result("idle_cpu_per_hour", (lc1 - lc0) as f64 / tick * hour, "s");
    result("mosquitto_idle_wakeups", (m1 - m0) as f64 / wall, "per_s");
    result("mosquitto_idle_threads", mthreads as f64, "threads");
    result(
        "mosquitto_idle_cpu_per_hour",
        (mc1 - mc0) as f64 / tick * hour,
        "s",
    );
    let _ = child.kill();
    let _ = child.wait();
    sim.shutdown().await;
}

/// A broker backlog of `n` image events drained into a down platform; figures under `key`.
async fn backlog(mnt: &Path, image: &[u8], n: u64, key: &str) {
    let broker = common::devices::Broker::start().await;
    let dead = common::devices::free_port();
    let port = common::devices::free_port();
    let cfg = config(
        mnt,
        key,
        &format!("http://127.0.0.1:{dead}"),
        &broker.url(),
        port,
    );
    let http = reqwest::Client::new();
    let publisher = common::devices::Publisher::connect(broker.port, "footprint-backlog-cam").await;
    // First start: subscribe (persistent session), store one event, stop.
    let mut child = spawn(&cfg, &[], None);
    let mut warm = 0;
    let ok = wait_until!(Duration::from_secs(60), {
        warm += 1;
        publisher
            .publish(
                "bench/cam1",
                message(&format!("warm-{warm}"), "晋W00001", None),
            )
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        pending(&http, port).await > 0
    });
    assert!(ok, "backlog gateway subscribed");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = rss_hwm_kb(child.id()).0;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    // The backlog, queued by mosquitto for the gateway's session.
    for i in 0..n {
        publisher
            .publish(
                "bench/cam1",
                message(&format!("bl-{i}"), &format!("晋B{i:05}"), Some(image)),
            )
            .await;
    }
    let ok = wait_until!(Duration::from_secs(900), publisher.acked() >= n);
    assert!(ok, "backlog published");
    let mrss = broker.pid().map_or(0, |p| rss_hwm_kb(p).0);
    let base = pending(&http, port).await;
    let mut child = spawn(&cfg, &[], None);
    let pid = child.id();
    let t = Instant::now();
    let mut peak = 0;
    let mut stored = 0;
    while t.elapsed() < Duration::from_secs(1200) {
        peak = peak.max(rss_hwm_kb(pid).0);
        stored = pending(&http, port).await.saturating_sub(base);
        if stored >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain = t.elapsed().as_secs_f64();
    let (_, hwm) = rss_hwm_kb(pid);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let after = rss_hwm_kb(pid).0;
    println!(
        "BACKLOG {n} events with a {} KB image held by mosquitto ({mrss} KB RSS), drained into a down platform in {drain:.1} s ({stored} stored): lotlink idle {idle_rss} KB, peak {} KB (VmHWM {hwm} KB), a minute after {after} KB; in hand peak {}",
        image.len() / 1024,
        peak,
        in_hand_peak(&http, port).await
    );
    result(&format!("{key}_idle_rss"), idle_rss as f64 / 1024.0, "MB");
    result(
        &format!("{key}_peak_rss"),
        peak.max(hwm) as f64 / 1024.0,
        "MB",
    );
    result(&format!("{key}_after_rss"), after as f64 / 1024.0, "MB");
    result(&format!("{key}_mosquitto_rss"), mrss as f64 / 1024.0, "MB");
    result(&format!("{key}_drain"), drain, "s");
    result(&format!("{key}_stored"), stored as f64, "events");
    let _ = child.kill();
    let _ = child.wait();
}

/// The MQTT hub's `in_hand_peak` from `/status` (0 when not shown).
async fn in_hand_peak(http: &reqwest::Client, port: u16) -> u64 {
    let Some(s) = status(http, port).await else {
        return 0;
    };
    s["drivers"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["name"] == "mqtt"))
        .and_then(|d| d["in_hand_peak"].as_u64())
        .unwrap_or(0)
}

/// A burst of `n` 1080p image events sent at once to a running gateway (platform down):
/// peak RSS until all are stored, and a minute after.
async fn burst(mnt: &Path, image: &[u8], n: u64) {
    let broker = common::devices::Broker::start().await;
    let dead = common::devices::free_port();
    let port = common::devices::free_port();
    let cfg = config(
        mnt,
        "burst",
        &format!("http://127.0.0.1:{dead}"),
        &broker.url(),
        port,
    );
    let http = reqwest::Client::new();
    let publisher = common::devices::Publisher::connect(broker.port, "footprint-burst-cam").await;
    let mut child = spawn(&cfg, &[], None);
    let pid = child.id();
    let mut warm = 0;
    let ok = wait_until!(Duration::from_secs(60), {
        warm += 1;
        publisher
            .publish(
                "bench/cam1",
                message(&format!("warm-{warm}"), "晋W00001", None),
            )
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        pending(&http, port).await > 0
    });
    assert!(ok, "burst gateway subscribed");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = rss_hwm_kb(pid).0;
    let base = pending(&http, port).await;
    let t = Instant::now();
    let mut peak = 0;
    let mut stored = 0;
    let mut sent = 0;
    while t.elapsed() < Duration::from_secs(900) {
        // Publish in slices so RSS is sampled while the burst arrives.
        for _ in 0..10 {
            if sent < n {
                publisher
                    .publish(
                        "bench/cam1",
                        message(
                            &format!("burst-{sent}"),
                            &format!("晋U{sent:05}"),
                            Some(image),
                        ),
                    )
                    .await;
                sent += 1;
            }
        }
        peak = peak.max(rss_hwm_kb(pid).0);
        stored = pending(&http, port).await.saturating_sub(base);
        if stored >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain = t.elapsed().as_secs_f64();
    let (_, hwm) = rss_hwm_kb(pid);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let after = rss_hwm_kb(pid).0;
    println!(
        "BURST {n} events with a {} KB 1080p image into a down platform, stored in {drain:.1} s ({stored} stored): lotlink idle {idle_rss} KB, peak {} KB (VmHWM {hwm} KB), a minute after {after} KB; in hand peak {}",
        image.len() / 1024,
        peak,
        in_hand_peak(&http, port).await
    );
    result("burst_idle_rss", idle_rss as f64 / 1024.0, "MB");
    result("burst_peak_rss", peak.max(hwm) as f64 / 1024.0, "MB");
    result("burst_after_rss", after as f64 / 1024.0, "MB");
    result("burst_drain", drain, "s");
    let _ = child.kill();
    let _ = child.wait();
}

/// Start-up on 100,000 pending records: `aged`, their dedupe entries older than the window
/// (the gateway runs 20 minutes ahead), or all of them inside it (filled just before: the
/// replay reads every entry's header for the window).
async fn start_with(mnt: &Path, aged: bool) {
    let n = 100_000u64;
    let name = if aged { "aged" } else { "fresh" };
    let key = if aged { "start" } else { "start_fresh" };
    let path = mnt.join(name);
    {
        let (ob, _) = Outbox::open(&path, OutboxOptions::default()).unwrap();
        let image: Arc<Vec<u8>> = Arc::new(Vec::new());
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
        ob.flush().await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sim =
        lotlink_sim::PlatformSim::start(lotlink_sim::SimConfig::new("350", "bench-token-0000"))
            .await
            .unwrap();
    let port = common::devices::free_port();
    let broker = common::devices::Broker::start().await;
    let cfg = config(mnt, name, &sim.url(), &broker.url(), port);
    let sock_path = std::env::temp_dir().join(format!("footprint-notify-{}", std::process::id()));
    let _ = std::fs::remove_file(&sock_path);
    let sock = tokio::net::UnixDatagram::bind(&sock_path).unwrap();
    let d0 = Dev::read();
    let t = Instant::now();
    // Aged: twenty minutes ahead, every dedupe entry is older than the 10-minute window.
    let mut child = spawn(
        &cfg,
        &[("NOTIFY_SOCKET", sock_path.display().to_string())],
        aged.then_some("+20m"),
    );
    let pid = child.id();
    let mut buf = [0u8; 512];
    let mut ready = None;
    let mut peak = 0;
    let mut first = None;
    while t.elapsed() < Duration::from_secs(120) && (ready.is_none() || first.is_none()) {
        peak = peak.max(rss_hwm_kb(pid).1);
        if ready.is_none() {
            if let Ok(Ok(len)) =
                tokio::time::timeout(Duration::from_millis(5), sock.recv(&mut buf)).await
            {
                if String::from_utf8_lossy(&buf[..len]).contains("READY=1") {
                    ready = Some(t.elapsed());
                }
            }
        }
        if first.is_none() && !sim.records().is_empty() {
            first = Some(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    peak = peak.max(rss_hwm_kb(pid).1);
    let written = Dev::read().since(d0);
    let ready_s = ready.map_or(f64::NAN, |d| d.as_secs_f64());
    let first_s = first.map_or(f64::NAN, |d| d.as_secs_f64());
    let age = if aged {
        "older than the window"
    } else {
        "inside the window"
    };
    println!(
        "START {n} pending, dedupe entries {age}: READY after {ready_s:.3} s, first upload after {first_s:.3} s, peak RSS {peak} KB, {} bytes written by then",
        written.bytes()
    );
    result(&format!("{key}_ready"), ready_s, "s");
    result(&format!("{key}_first_upload"), first_s, "s");
    result(&format!("{key}_peak_rss"), peak as f64 / 1024.0, "MB");
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&sock_path);
    sim.shutdown().await;
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mnt = env_path("LOTLINK_FOOTPRINT_MNT");
    let idle_secs: u64 = std::env::var("LOTLINK_FOOTPRINT_IDLE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120);
    let only = std::env::var("LOTLINK_FOOTPRINT_ONLY").unwrap_or_default();
    let run = |part: &str| only.is_empty() || only.split(',').any(|p| p == part);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // A 35 KB camera JPEG (1280x720 synthetic, quality chosen to land near 35 KB).
    let jpeg35 = {
        let mut q = 30u8;
        loop {
            let j = lotlink::testing::imaging::synth_jpeg(1280, 720, 3, q);
            if j.len() >= 35_000 || q >= 95 {
                break j;
            }
            q += 5;
        }
    };
    println!("35 KB JPEG: {} bytes", jpeg35.len());
    // A 1080p camera JPEG of at least 400 KB (as P7 of the pipeline bench; 830 KB as made).
    let jpeg1080 = {
        let mut q = 90u8;
        loop {
            let j = lotlink::testing::imaging::synth_jpeg(1920, 1080, 7, q);
            if j.len() >= 400_000 || q >= 100 {
                break j;
            }
            q += 2;
        }
    };
    println!("1080p JPEG: {} bytes", jpeg1080.len());
    rt.block_on(async {
        if run("event") {
            per_event(&mnt, &jpeg35).await;
        }
        if run("idle") {
            idle(&mnt, idle_secs).await;
        }
        if run("backlog") {
            backlog(&mnt, &jpeg35, 10_000, "backlog").await;
        }
        if run("backlog1080") {
            backlog(&mnt, &jpeg1080, 2_000, "backlog1080").await;
        }
        if run("burst") {
            burst(&mnt, &jpeg1080, 300).await;
        }
        if run("start") {
            start_with(&mnt, true).await;
        }
        if run("start_fresh") {
            start_with(&mnt, false).await;
        }
    });
}
