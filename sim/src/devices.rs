//! Simulated cameras for `lotlink demo` (and anyone who wants plates with real images): a
//! lane that emits plate events straight into the gateway as a driver ([`SimLane`]), and a
//! Vzenith camera that POSTs its results to the gateway's camera listener over real HTTP
//! ([`VzenithCamera`]). Both count what the gateway kept and refused in [`LaneStats`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use lotlink_drivers::{
    Accepted, CancellationToken, CarStyle, Direction, Driver, DriverFuture, Event, EventSink,
    PlateEvent,
};
use rand::Rng;

const PROVINCES: &[char] = &['晋', '京', '冀', '豫', '陕', '蒙', '鲁', '沪'];
const LETTERS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ";
const COLORS: &[&str] = &["蓝", "黄", "绿", "白"];

/// A random plausible plate.
pub fn random_plate(rng: &mut impl Rng) -> String {
    let mut s = String::new();
    s.push(PROVINCES[rng.gen_range(0..PROVINCES.len())]);
    s.push(char::from(LETTERS[rng.gen_range(0..LETTERS.len())]));
    for _ in 0..5 {
        if rng.gen_bool(0.3) {
            s.push(char::from(LETTERS[rng.gen_range(0..LETTERS.len())]));
        } else {
            s.push(char::from(b'0' + rng.gen_range(0..10u8)));
        }
    }
    s
}

/// Counts shared between the simulated lanes and the demo's report.
#[derive(Debug, Default)]
pub struct LaneStats {
    /// Events the gateway acknowledged as stored.
    pub stored: AtomicU64,
    /// Events refused (the camera would keep them).
    pub refused: AtomicU64,
}

/// A simulated camera lane: a plate every `interval` (±30 %), with a real JPEG.
pub struct SimLane {
    pub name: String,
    pub direction: Direction,
    pub interval: Duration,
    pub images: Arc<Vec<Vec<u8>>>,
    pub stats: Arc<LaneStats>,
    /// Print a line per event on stdout (the demo does).
    pub verbose: bool,
}

impl Driver for SimLane {
    fn name(&self) -> &str {
        &self.name
    }

    fn run(self: Box<Self>, sink: EventSink, shutdown: CancellationToken) -> DriverFuture {
        Box::pin(async move {
            let mut n = 0u64;
            loop {
                let jitter = rand::thread_rng().gen_range(0.7..1.3);
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(self.interval.mul_f64(jitter)) => {}
                }
                n += 1;
                let (plate, color) = {
                    let mut rng = rand::thread_rng();
                    (
                        random_plate(&mut rng),
                        COLORS[rng.gen_range(0..COLORS.len())],
                    )
                };
                let image = self.images[(n as usize) % self.images.len().max(1)].clone();
                let ev = PlateEvent {
                    source_key: format!("{}/{n}/{plate}", self.name),
                    node_name: self.name.clone(),
                    direction: self.direction,
                    plate: Some(plate.clone()),
                    captured_at_ms: None,
                    color: Some(color.to_string()),
                    style: CarStyle::Car,
                    brand: None,
                    image: Some(image),
                    remark: None,
                };
                match sink.submit(Event::Plate(ev)).await {
                    Ok(Accepted::Stored(id)) => {
                        self.stats.stored.fetch_add(1, Ordering::Relaxed);
                        if self.verbose {
                            println!(
                                "  camera {:<4} {:<3} {plate}  → on disk as record #{id}",
                                self.name,
                                self.direction.as_str()
                            );
                        }
                    }
                    Ok(_) => {}
                    Err(lotlink_drivers::SinkError::Closed) => return Ok(()),
                    Err(e) => {
                        self.stats.refused.fetch_add(1, Ordering::Relaxed);
                        if self.verbose {
                            println!(
                                "  camera {:<4} {plate}: not stored ({e}); the camera keeps it",
                                self.name
                            );
                        }
                    }
                }
            }
        })
    }
}

/// A simulated Vzenith camera posting to the camera listener at `url`, a result every
/// `interval` (±30 %), in the full `AlarmInfoPlate` shape with the picture in `imageFile`.
/// A result counts as kept only when the listener answered 200; a line per result on stdout.
pub struct VzenithCamera {
    /// The camera's node name, as printed.
    pub name: String,
    pub url: String,
    pub interval: Duration,
    pub images: Arc<Vec<Vec<u8>>>,
    pub stats: Arc<LaneStats>,
}

impl VzenithCamera {
    /// Post results until `stop` is cancelled.
    pub async fn run(self, stop: CancellationToken) {
        let Self {
            name,
            url,
            interval,
            images,
            stats,
        } = self;
        let client = reqwest::Client::new();
        let b64: Vec<String> = images
            .iter()
            .map(|i| base64::engine::general_purpose::STANDARD.encode(i))
            .collect();
        let mut n = 0usize;
        loop {
            let jitter = rand::thread_rng().gen_range(0.7..1.3);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(interval.mul_f64(jitter)) => {}
            }
            n += 1;
            let plate = random_plate(&mut rand::thread_rng());
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let body = serde_json::json!({"AlarmInfoPlate": {
                "channel": 0, "deviceName": "IVS", "ipaddr": "192.168.1.100",
                "serialno": "33ae5105-d7732a0d",
                "result": {"PlateResult": {
                    "license": plate, "colorType": 1, "type": 1, "confidence": 95, "triggerType": 8,
                    "timeStamp": {"Timeval": {"sec": now.as_secs(), "usec": now.subsec_micros()}},
                    "imageFile": b64.get(n % b64.len().max(1)).cloned().unwrap_or_default(),
                }}
            }});
            match client.post(&url).json(&body).send().await {
                Ok(r) if r.status() == 200 => {
                    stats.stored.fetch_add(1, Ordering::Relaxed);
                    println!("  camera {name} in  {plate}  → POST answered 200: on disk");
                }
                Ok(r) => {
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                    println!(
                        "  camera {name} {plate}: POST answered {}; the camera keeps it",
                        r.status().as_u16()
                    );
                }
                Err(e) => {
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                    println!("  camera {name} {plate}: POST failed ({e}); the camera keeps it");
                }
            }
        }
    }
}
