//! `lotlink demo`: the real pipeline (ingest, sled outbox, uploader, signed HTTP) against the
//! in-process platform simulator, fed by three lanes that produce plates with real
//! 1920×1080 JPEG images: two simulated drivers, and a simulated Vzenith camera that POSTs
//! its results to the real camera listener (`[http]`, `driver = "http"`) and counts a result
//! as kept only when the listener answered 200. The platform goes offline now and then; the
//! demo shows the outbox filling and draining, and at the end that every acknowledged event
//! was delivered once.
//!
//! Only in builds with the `demo` feature (on by default, off in the packaged binary): the
//! simulator and the simulated cameras come from the `lotlink-sim` crate.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lotlink_drivers::{CancellationToken, Direction, Driver};
use lotlink_sim::devices::{LaneStats, SimLane, VzenithCamera};
use lotlink_sim::{Mode, PlatformSim, SimConfig};

use crate::app::{Gateway, RunOptions};

/// Errors of the demo (its own, so the demo does not depend on the command line above it).
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    App(#[from] crate::app::AppError),
    #[error("{0}")]
    Other(String),
}

/// Demo settings.
#[derive(Debug, Clone)]
pub(crate) struct DemoOptions {
    /// Stop after this long; `None` = until Ctrl-C.
    pub duration: Option<Duration>,
    /// Time between plates per lane.
    pub interval: Duration,
    /// Platform online phase.
    pub online: Duration,
    /// Platform outage phase.
    pub outage: Duration,
}

fn demo_config(url: &str, outbox: &std::path::Path) -> String {
    format!(
        r#"[platform]
url = "{url}"
lot_code = "350"
token = "demo-token"
heartbeat_interval = "5s"
request_timeout = "3s"

[outbox]
path = "{}"
max_disk = "256MiB"

[status]
listen = "127.0.0.1:0"

[space]
total = 120

[http]
listen = "127.0.0.1:0"

[[camera]]
name = "入口2"
direction = "in"
driver = "http"
format = "vzenith"
path = "/push/entry2"
"#,
        outbox.display()
    )
}

/// Run the demo until `shutdown` (or the duration). Exit code 0 when nothing was lost.
pub(crate) async fn run(
    opts: DemoOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<i32, DemoError> {
    let other = |e: &dyn std::fmt::Display| DemoError::Other(e.to_string());
    let sim = PlatformSim::start(SimConfig::new("350", "demo-token"))
        .await
        .map_err(|e| other(&e))?;
    let dir = tempfile::Builder::new()
        .prefix("lotlink-demo-")
        .tempdir()
        .map_err(|e| other(&e))?;
    let cfg_text = demo_config(&sim.url(), &dir.path().join("outbox"));
    let cfg = crate::config::from_str(std::path::Path::new("<demo>"), &cfg_text)?;
    println!(
        "lotlink demo: platform simulator at {}, sled outbox in {}",
        sim.url(),
        dir.path().display()
    );
    println!(
        "  three lanes (入口1 in, 出口1 out, and 入口2 in: a camera POSTing Vzenith JSON to the HTTP listener)"
    );
    println!(
        "  each send a plate with a 1920x1080 JPEG every ~{:?};",
        opts.interval
    );
    println!(
        "  the platform is online for {:?}, then offline for {:?}, repeating. Ctrl-C to stop.",
        opts.online, opts.outage
    );

    let images = tokio::task::spawn_blocking(|| {
        (0..3u64)
            .map(|s| crate::imaging::synth_jpeg(1920, 1080, s, 90))
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| other(&e))?;
    if let Some(i) = images.first() {
        println!(
            "  camera images are {} KB each; the gateway shrinks them to fit 50,000 Base64 chars",
            i.len() / 1024
        );
    }
    let images = Arc::new(images);
    let stats = Arc::new(LaneStats::default());
    let mut lanes: Vec<Box<dyn Driver>> = [("入口1", Direction::In), ("出口1", Direction::Out)]
        .into_iter()
        .map(|(name, direction)| {
            Box::new(SimLane {
                name: name.into(),
                direction,
                interval: opts.interval,
                images: images.clone(),
                stats: stats.clone(),
                verbose: true,
            }) as Box<dyn Driver>
        })
        .collect();
    let hw = crate::hardware::build(&cfg).map_err(|e| other(&e))?;
    lanes.extend(hw.drivers);
    let gw = Gateway::start(
        &cfg,
        lanes,
        RunOptions {
            backoff_base: Duration::from_millis(250),
            backoff_cap: Duration::from_secs(4),
            driver_status: hw.statuses,
            ..RunOptions::default()
        },
    )
    .await?;
    let camera_stop = CancellationToken::new();
    let camera = match &hw.http {
        Some(bound) => {
            let addr = tokio::time::timeout(Duration::from_secs(10), bound.wait())
                .await
                .ok()
                .flatten()
                .ok_or_else(|| DemoError::Other("the camera listener did not start".into()))?;
            println!("  camera listener on http://{addr}/push/entry2");
            let camera = VzenithCamera {
                name: "入口2".into(),
                url: format!("http://{addr}/push/entry2"),
                interval: opts.interval,
                images: images.clone(),
                stats: stats.clone(),
            };
            Some(tokio::spawn(camera.run(camera_stop.clone())))
        }
        None => None,
    };

    let start = Instant::now();
    let mut shown = 0usize;
    let mut online = true;
    let mut phase_end = start + opts.online;
    let mut max_depth = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        if opts.duration.is_some_and(|d| now - start >= d) {
            break;
        }
        if now >= phase_end {
            online = !online;
            if online {
                sim.set_mode(Mode::Up);
                phase_end = now + opts.online;
                println!(
                    "[{:>4}s] platform back ONLINE: the uploader drains the outbox",
                    start.elapsed().as_secs()
                );
            } else {
                sim.set_mode(Mode::Refuse);
                phase_end = now + opts.outage;
                println!(
                    "[{:>4}s] platform OFFLINE (connections refused) for {:?}: events wait on disk",
                    start.elapsed().as_secs(),
                    opts.outage
                );
            }
        }
        shown = print_new(&sim, shown, &gw, start);
        max_depth = max_depth.max(gw.outbox.len());
    }

    // Stop the cameras, bring the platform back, and let the outbox drain.
    println!(
        "[{:>4}s] stopping the cameras; waiting for the outbox to drain",
        start.elapsed().as_secs()
    );
    let mut gw = gw;
    camera_stop.cancel();
    if let Some(c) = camera {
        let _ = c.await;
    }
    gw.stop_drivers().await;
    sim.set_mode(Mode::Up);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && !gw.outbox.is_empty() {
        gw.outbox.wake();
        tokio::time::sleep(Duration::from_millis(100)).await;
        shown = print_new(&sim, shown, &gw, start);
    }
    print_new(&sim, shown, &gw, start);
    let (total, occupied, free) = gw.space.figures();
    let health = gw.health.lock().map(|h| h.clone()).unwrap_or_default();
    gw.stop().await;

    let records = sim.records();
    let stored = stats.stored.load(Ordering::Relaxed);
    let delivered = records.len() as u64;
    let unique: HashSet<String> = records
        .iter()
        .map(|r| r["imgName"].as_str().unwrap_or("").to_string())
        .collect();
    let dupes = delivered - unique.len() as u64;
    let lost = stored.saturating_sub(unique.len() as u64);
    let spaces = sim.space_reports();
    println!();
    println!("summary: {stored} events acknowledged by the outbox, {delivered} delivered to the platform, {lost} lost, {dupes} duplicates");
    println!("         max outbox depth {max_depth}, heartbeats ok {}, space reports sent {} (last {:?}), spaces total {total} occupied {occupied} free {free}",
        health.heartbeats_ok, spaces.len(), spaces.last());
    sim.shutdown().await;
    Ok(i32::from(lost > 0 || dupes > 0))
}

fn print_new(sim: &PlatformSim, shown: usize, gw: &Gateway, start: Instant) -> usize {
    let recs = sim.records();
    for r in recs.iter().skip(shown) {
        println!(
            "[{:>4}s] platform received {} {:<3} {} at {} (imgData {} chars)   outbox depth {}",
            start.elapsed().as_secs(),
            r["nodeName"].as_str().unwrap_or("?"),
            r["inOutType"].as_str().unwrap_or("?"),
            r["carNo"].as_str().unwrap_or("(no plate)"),
            r["inOutTime"].as_str().unwrap_or("?"),
            r["imgData"].as_str().map_or(0, str::len),
            gw.outbox.len()
        );
    }
    recs.len()
}
