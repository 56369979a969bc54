//! A throttling TCP proxy on 127.0.0.1: a slow uplink (4G in a basement, old ADSL) between
//! the gateway and the platform simulator. Each direction is a token bucket on bytes, shared
//! by every connection through the proxy (a link is shared), refilled at the link's rate.
//!
//! The proxy's sockets take small receive buffers, so bytes wait at the sender as they would
//! in front of a slow modem, and a request the gateway gave up on does not keep the link
//! busy for seconds after.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Bytes moved per read/write step.
const CHUNK: usize = 4 * 1024;
/// Receive buffer of the proxy's sockets.
const SOCKET_BUFFER: u32 = 32 * 1024;

/// A token bucket on bytes.
pub struct Bucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
    /// Bytes that went through.
    pub moved: AtomicU64,
}

impl Bucket {
    /// `rate` bytes per second; bursts of at most a 50th of a second.
    pub fn new(rate: u64) -> Bucket {
        let rate = rate.max(1) as f64;
        let burst = (rate / 50.0).max(CHUNK as f64);
        Bucket {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
            moved: AtomicU64::new(0),
        }
    }

    /// Wait until `n` bytes (at most one burst) may go.
    pub async fn take(&self, n: usize) {
        let n = (n as f64).min(self.burst);
        loop {
            let wait = {
                let mut g = self.state.lock().await;
                let now = Instant::now();
                let refill = now.duration_since(g.1).as_secs_f64() * self.rate;
                g.0 = (g.0 + refill).min(self.burst);
                g.1 = now;
                if g.0 >= n {
                    g.0 -= n;
                    self.moved.fetch_add(n as u64, Ordering::Relaxed);
                    return;
                }
                (n - g.0) / self.rate
            };
            // The link's pace, not a wait for a condition: the next bytes may go then.
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        }
    }
}

/// The proxy. Stops when dropped.
pub struct Throttle {
    /// Where the gateway connects.
    pub addr: SocketAddr,
    /// Gateway → platform.
    pub up: Arc<Bucket>,
    /// Platform → gateway.
    pub down: Arc<Bucket>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Throttle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn small_socket() -> std::io::Result<TcpSocket> {
    let s = TcpSocket::new_v4()?;
    s.set_recv_buffer_size(SOCKET_BUFFER)?;
    s.set_send_buffer_size(SOCKET_BUFFER)?;
    Ok(s)
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    bucket: Arc<Bucket>,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut sent = 0;
        while sent < n {
            let step = (n - sent).min(bucket.burst as usize);
            bucket.take(step).await;
            if to.write_all(&buf[sent..sent + step]).await.is_err() {
                return;
            }
            sent += step;
        }
    }
    let _ = to.shutdown().await;
}

async fn serve(client: TcpStream, target: SocketAddr, up: Arc<Bucket>, down: Arc<Bucket>) {
    let Ok(sock) = small_socket() else { return };
    let Ok(server) = sock.connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let mut a = tokio::spawn(pump(cr, sw, up));
    let mut b = tokio::spawn(pump(sr, cw, down));
    // When either side is done, the connection is done (a client that gave up closes it).
    tokio::select! {
        _ = &mut a => {}
        _ = &mut b => {}
    }
    a.abort();
    b.abort();
}

impl Throttle {
    /// A proxy to `target` whose link carries `bits_per_s` each way.
    pub async fn start(target: SocketAddr, bits_per_s: u64) -> Throttle {
        let sock = small_socket().expect("proxy socket");
        sock.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .expect("proxy bind");
        let listener = sock.listen(64).expect("proxy listen");
        let addr = listener.local_addr().expect("proxy address");
        let up = Arc::new(Bucket::new(bits_per_s / 8));
        let down = Arc::new(Bucket::new(bits_per_s / 8));
        let (u, d) = (up.clone(), down.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                conns.spawn(serve(client, target, u.clone(), d.clone()));
                while conns.try_join_next().is_some() {}
            }
        });
        Throttle {
            addr,
            up,
            down,
            task,
        }
    }

    /// The base URL for the gateway.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// How a backlog drained through a throttled link ([`drain_backlog`]).
#[derive(Debug, Clone)]
pub struct Drain {
    /// Records the platform stored.
    pub delivered: usize,
    /// Distinct plates among them.
    pub unique: usize,
    /// Wall time from the platform coming up to the last record stored.
    pub elapsed: Duration,
    /// Records of each accepted request, in order.
    pub batch_sizes: Vec<usize>,
    /// Bytes that went up the link.
    pub bytes_up: u64,
    /// Bytes of the records as stored at the platform (Base64 images).
    pub image_chars: usize,
    /// carInOut requests the platform saw.
    pub requests: u64,
    /// Records dead-lettered.
    pub dead: u64,
    /// Records stored with a picture shrunk for the slow uplink (said in `remark`).
    pub shrunk: usize,
}

/// A JPEG whose Base64 is just under the platform's 50,000 characters (passes through the
/// image stage untouched): the heaviest record a camera sends.
pub fn near_limit_jpeg(seed: u64) -> Vec<u8> {
    for q in (40..=95).rev().step_by(5) {
        let j = lotlink::testing::imaging::synth_jpeg(480, 360, seed, q);
        if lotlink::testing::imaging::b64_len(j.len()) <= 48_000 {
            return j;
        }
    }
    lotlink::testing::imaging::synth_jpeg(320, 240, seed, 60)
}

/// Store `records` image records while the platform is down, then bring it up behind a
/// link of `bits_per_s` and wait (at most `deadline`) until every record is stored.
///
/// Time is scaled by `scale`: the link runs `scale` times faster and the platform's `ts`
/// window (and the gateway's request timeout) is `scale` times shorter, which keeps the
/// ratio the gateway has to solve (bytes per window) and divides the wall time by `scale`.
pub async fn drain_backlog(
    bits_per_s: u64,
    records: usize,
    scale: u32,
    deadline: Duration,
) -> Drain {
    let window = lotlink::testing::protocol::TS_WINDOW / scale;
    let mut cfg = lotlink_sim::SimConfig::new(super::LOT, super::TOKEN);
    cfg.window = window;
    let sim = lotlink_sim::PlatformSim::start(cfg).await.expect("sim");
    sim.set_mode(lotlink_sim::Mode::Refuse);
    let link = Throttle::start(sim.local_addr(), bits_per_s * u64::from(scale)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let timeout_ms = window.as_millis();
    let text = super::config_text(&link.url(), &dir.path().join("outbox"), "").replace(
        &format!("request_timeout = \"{}s\"", 2 * super::time_scale()),
        &format!("request_timeout = \"{timeout_ms}ms\""),
    );
    let cfg = lotlink::testing::config::from_str(std::path::Path::new("slow.toml"), &text)
        .expect("config");
    let (feed, driver) = super::feed();
    let gw = lotlink::testing::app::Gateway::start(
        &cfg,
        vec![driver],
        lotlink::testing::app::RunOptions {
            ts_window: window,
            ..super::fast_options()
        },
    )
    .await
    .expect("gateway");
    let images: Vec<Vec<u8>> = (0..4).map(near_limit_jpeg).collect();
    for i in 0..records {
        let r = feed
            .send(super::plate(
                &format!("slow-{i}"),
                &format!("W{i:04}"),
                Some(images[i % images.len()].clone()),
            ))
            .await;
        assert!(r.is_ok(), "{r:?}");
    }
    let up_before = link.up.moved.load(Ordering::Relaxed);
    let t = std::time::Instant::now();
    sim.set_mode(lotlink_sim::Mode::Up);
    sim.wait_for_records(records, deadline).await;
    let elapsed = t.elapsed();
    let stats = sim.stats();
    let stored = sim.records();
    let unique: std::collections::HashSet<String> = stored
        .iter()
        .map(|r| r["carNo"].as_str().unwrap_or("").to_string())
        .collect();
    let image_chars = stored
        .iter()
        .map(|r| r["imgData"].as_str().map_or(0, str::len))
        .sum();
    let dead = gw.outbox.dead_len();
    let shrunk = stored
        .iter()
        .filter(|r| {
            r["remark"]
                .as_str()
                .is_some_and(|m| m.contains("slow uplink"))
        })
        .count();
    let drain = Drain {
        delivered: stored.len(),
        unique: unique.len(),
        elapsed,
        batch_sizes: stats.batch_sizes.clone(),
        bytes_up: link.up.moved.load(Ordering::Relaxed) - up_before,
        image_chars,
        requests: stats.requests_to(lotlink_sim::Route::CarInOut),
        dead,
        shrunk,
    };
    gw.stop().await;
    sim.shutdown().await;
    drain
}
