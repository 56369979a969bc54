//! Serial drivers: LPR cameras (`vz` binary framing or `line` text output) and ASCII loop
//! detectors, over tokio-serial (no libudev).
//!
//! Each driver is generic over its byte stream ([`SerialCamera::run_stream`],
//! [`SerialDetector::run_stream`] take any `AsyncRead`), so tests feed bytes from memory or
//! a pseudo-terminal. The [`Driver`] implementations add the port's life cycle: open it;
//! when it vanishes (a USB adapter unplugged: `read` returns 0 bytes or an error) close it,
//! say so once in the log and in the status, and reopen every [`REOPEN_MAX`] at most until
//! it is back.
//!
//! Bad bytes never stop a driver: the codecs skip garbage and resynchronise on the next
//! header or line; each bad input is counted in the status and logged with a rate limit.
//! A serial link has no acknowledgement: an event is read, submitted, and only then is the
//! next one read, so the kernel's and the device's buffers hold what is not taken yet.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::AsyncRead;
use tokio::time::Instant;
use tokio_util::codec::{Decoder, FramedRead};

use crate::codec::{
    parse_detector_frame, parse_line, vz_body_text, DetectorState, Framed, LineCodec, LineEnding,
    LineFormat, TextEncoding, VzCodec,
};
use crate::loops::EdgeDetector;
use crate::mqtt::local_ms;
use crate::outage::{Backoff, Outage};
use crate::plate::{normalise, CameraRules, Reading};
use crate::snapshot::{fill_image, Snapshot};
use crate::{
    should_log, Accepted, CancellationToken, Direction, Driver, DriverFuture, DriverStatus, Event,
    EventSink, PlateEvent, SinkError,
};

pub mod config;

/// Longest wait between attempts to reopen a vanished port.
pub const REOPEN_MAX: Duration = Duration::from_secs(5);
/// Largest `vz` frame accepted (plate JSON, possibly with an inline image).
pub const MAX_VZ_FRAME: usize = 4 << 20;

/// How a stream ended.
#[derive(Debug)]
pub enum StreamEnd {
    /// End of file: the far end went away.
    Eof,
    /// A read error.
    Error(std::io::Error),
    /// Shutdown was requested (or the gateway closed the sink).
    Shutdown,
}

/// How a serial camera frames its results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CameraFraming {
    /// Vzenith binary framing with `AlarmInfoPlate` JSON bodies.
    Vz,
    /// One result per text line.
    Line {
        /// Text encoding.
        encoding: TextEncoding,
        /// Line terminator.
        ending: LineEnding,
        /// Longest line.
        max_line: usize,
        /// Field order and separator.
        format: LineFormat,
    },
}

/// A camera on a serial port.
#[derive(Debug, Clone)]
pub struct SerialCamera {
    /// Lane name (`nodeName`).
    pub name: String,
    /// What a pass means (a `direction` field in the line wins).
    pub direction: Direction,
    /// Device path.
    pub port: String,
    /// Baud rate (8N1).
    pub baud: u32,
    /// Framing.
    pub framing: CameraFraming,
    /// Snapshot for events without an image.
    pub snapshot: Option<Snapshot>,
    /// Lot time zone of line times.
    pub tz: chrono_tz::Tz,
    /// The camera's `styles` table and clock tolerance.
    pub rules: CameraRules,
    /// Status.
    pub status: DriverStatus,
}

/// Submit one event; `false` when the gateway is shutting down. A refused store is retried
/// with back-off (nothing more is read from the port meanwhile).
async fn submit(
    sink: &EventSink,
    ev: Event,
    status: &DriverStatus,
    shutdown: &CancellationToken,
) -> bool {
    let mut wait = Duration::from_millis(500);
    loop {
        match sink.submit(ev.clone()).await {
            Ok(Accepted::Stored(_) | Accepted::Duplicate | Accepted::Applied) => {
                status.event();
                return true;
            }
            Err(SinkError::Closed) => return false,
            Err(SinkError::Invalid(m)) => {
                let n = status.bad_input(&m);
                if should_log(n) {
                    tracing::warn!(driver = status.name(), problem = %m, "event refused as invalid; dropped");
                }
                return true;
            }
            Err(SinkError::Unavailable(m)) => {
                status.set_problem(&m);
                tracing::warn!(driver = status.name(), problem = %m, retry_in = ?wait, "event not stored; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return false,
                    () = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
}

fn bad(status: &DriverStatus, what: &str) {
    let n = status.bad_input(what);
    if should_log(n) {
        tracing::warn!(
            driver = status.name(),
            bad_inputs = n,
            problem = what,
            "bad serial input skipped"
        );
    }
}

/// Read items from `framed` until the stream ends; `f` handles each item and returns
/// `false` to stop (shutdown).
async fn pump<S, D, F, Fut>(
    mut framed: FramedRead<S, D>,
    status: &DriverStatus,
    shutdown: &CancellationToken,
    mut f: F,
) -> StreamEnd
where
    S: AsyncRead + Unpin,
    D: Decoder<Error = crate::codec::CodecError>,
    F: FnMut(D::Item) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => return StreamEnd::Shutdown,
            n = framed.next() => n,
        };
        match next {
            None => return StreamEnd::Eof,
            Some(Err(crate::codec::CodecError::Io(e))) => return StreamEnd::Error(e),
            Some(Err(e)) => bad(status, &e.to_string()),
            Some(Ok(item)) => {
                if !f(item).await {
                    return StreamEnd::Shutdown;
                }
            }
        }
    }
}

impl SerialCamera {
    /// Read results from `stream` until it ends; submit each one.
    pub async fn run_stream<S: AsyncRead + Unpin>(
        &self,
        stream: S,
        sink: &EventSink,
        shutdown: &CancellationToken,
    ) -> StreamEnd {
        match &self.framing {
            CameraFraming::Vz => {
                let framed = FramedRead::new(stream, VzCodec::new(MAX_VZ_FRAME));
                pump(framed, &self.status, shutdown, |item| async move {
                    match item {
                        Framed::Garbage { bytes, reason } => {
                            bad(&self.status, &format!("{bytes} bytes skipped: {reason}"));
                            true
                        }
                        Framed::Item(frame) => {
                            self.on_vz_frame(frame.kind, &frame.body, sink, shutdown)
                                .await
                        }
                    }
                })
                .await
            }
            CameraFraming::Line {
                encoding,
                ending,
                max_line,
                format,
            } => {
                let framed = FramedRead::new(stream, LineCodec::new(*encoding, *ending, *max_line));
                pump(framed, &self.status, shutdown, |item| async move {
                    match item {
                        Framed::Garbage { bytes, reason } => {
                            bad(&self.status, &format!("{bytes} bytes skipped: {reason}"));
                            true
                        }
                        Framed::Item(line) => self.on_line(&line, format, sink, shutdown).await,
                    }
                })
                .await
            }
        }
    }

    async fn on_vz_frame(
        &self,
        kind: u8,
        body: &[u8],
        sink: &EventSink,
        shutdown: &CancellationToken,
    ) -> bool {
        match kind {
            0 => {}
            1 => return true, // heartbeat
            _ => {
                tracing::debug!(driver = %self.name, kind, "binary vz frame ignored");
                return true;
            }
        }
        let plate = match vz_body_text(body)
            .map_err(|e| e.to_string())
            .and_then(|t| crate::vzenith::parse_vz_body(&t).map_err(|e| e.to_string()))
        {
            Ok(p) => p,
            Err(e) => {
                bad(&self.status, &e);
                return true;
            }
        };
        if plate.lingering {
            return true;
        }
        let ev = normalise(
            plate.reading(&self.name),
            self.direction,
            &self.rules,
            &self.status,
            sink.now_ms(),
        );
        self.submit_plate(ev, sink, shutdown).await
    }

    async fn on_line(
        &self,
        line: &str,
        format: &LineFormat,
        sink: &EventSink,
        shutdown: &CancellationToken,
    ) -> bool {
        let rec = match parse_line(line, format) {
            Ok(r) => r,
            Err(e) => {
                bad(&self.status, &e.to_string());
                return true;
            }
        };
        let mut replaced = rec.replaced;
        let captured_at_ms = rec.time.as_ref().and_then(|t| {
            let ms = local_ms(self.tz, t);
            if ms.is_none() {
                replaced.push(format!(
                    "时间无效 (local time {t} does not exist in {}: gateway time used)",
                    self.tz
                ));
            }
            ms
        });
        let source_key = match (captured_at_ms, &rec.plate) {
            (Some(ms), p) => format!("serial:{}:{ms}:{}", self.name, p.as_deref().unwrap_or("-")),
            _ => String::new(),
        };
        let vendor_style = match rec.style.as_deref() {
            Some("0") => Some(crate::CarStyle::Car),
            Some("1") => Some(crate::CarStyle::Large),
            Some("2") => Some(crate::CarStyle::Truck),
            _ => None,
        };
        let reading = Reading {
            source_key,
            node_name: self.name.clone(),
            direction: rec.direction,
            plate: rec.plate,
            color: rec.color,
            style: rec.style,
            vendor_style,
            captured_at_ms,
            buffered: false,
            brand: None,
            image: None,
            replaced,
            notes: Vec::new(),
        };
        let ev = normalise(
            reading,
            self.direction,
            &self.rules,
            &self.status,
            sink.now_ms(),
        );
        self.submit_plate(ev, sink, shutdown).await
    }

    async fn submit_plate(
        &self,
        mut ev: PlateEvent,
        sink: &EventSink,
        shutdown: &CancellationToken,
    ) -> bool {
        fill_image(&mut ev, self.snapshot.as_ref()).await;
        submit(sink, Event::Plate(ev), &self.status, shutdown).await
    }
}

/// One loop fed by an ASCII detector.
#[derive(Debug, Clone)]
pub struct DetectorLoop {
    /// Loop name.
    pub name: String,
    /// Entry or exit lane.
    pub lane: Direction,
    /// Only frames of this channel.
    pub channel: Option<u8>,
    /// Only frames of this detector id.
    pub detector: Option<u8>,
    /// Shorter presences are chatter.
    pub min_hold: Duration,
}

/// ASCII loop detectors on one serial port (`$HHH,CC,DD,S,B,TTT,LLL*XX`).
#[derive(Debug, Clone)]
pub struct SerialDetector {
    /// Driver name (the port's loops).
    pub name: String,
    /// Device path.
    pub port: String,
    /// Baud rate.
    pub baud: u32,
    /// Refuse frames whose checksum does not match (`checksum = "verify"`).
    pub verify_checksum: bool,
    /// The loops on this port.
    pub loops: Vec<DetectorLoop>,
    /// Status.
    pub status: DriverStatus,
}

impl SerialDetector {
    /// Read detector frames from `stream` until it ends; count passes on release edges.
    /// `edges` carries each loop's edge state across reconnects.
    pub async fn run_stream<S: AsyncRead + Unpin>(
        &self,
        stream: S,
        edges: &mut [EdgeDetector],
        sink: &EventSink,
        shutdown: &CancellationToken,
    ) -> StreamEnd {
        let mut framed = FramedRead::new(
            stream,
            LineCodec::new(TextEncoding::Utf8, LineEnding::Lf, 256),
        );
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => return StreamEnd::Shutdown,
                n = framed.next() => n,
            };
            let line = match next {
                None => return StreamEnd::Eof,
                Some(Err(crate::codec::CodecError::Io(e))) => return StreamEnd::Error(e),
                Some(Err(e)) => {
                    bad(&self.status, &e.to_string());
                    continue;
                }
                Some(Ok(Framed::Garbage { bytes, reason })) => {
                    bad(&self.status, &format!("{bytes} bytes skipped: {reason}"));
                    continue;
                }
                Some(Ok(Framed::Item(line))) => line,
            };
            let frame = match parse_detector_frame(&line) {
                Ok(f) => f,
                Err(e) => {
                    bad(&self.status, &e.to_string());
                    continue;
                }
            };
            if self.verify_checksum && !frame.checksum_ok() {
                bad(
                    &self.status,
                    &format!("checksum {:02X}, computed {:02X} (set checksum = \"ignore\" if the detector is known to differ)", frame.checksum, frame.computed),
                );
                continue;
            }
            let present = match frame.state {
                DetectorState::Present => true,
                DetectorState::Absent => false,
                DetectorState::Fault => {
                    self.status.set_problem(&format!(
                        "detector {} channel {} reports a fault",
                        frame.detector, frame.channel
                    ));
                    continue;
                }
            };
            let now = Instant::now();
            for (i, l) in self.loops.iter().enumerate() {
                if l.channel.is_some_and(|c| c != frame.channel)
                    || l.detector.is_some_and(|d| d != frame.detector)
                {
                    continue;
                }
                let counted = edges.get_mut(i).is_some_and(|e| e.update(present, now));
                if counted {
                    let ev = Event::Pass {
                        loop_name: l.name.clone(),
                        lane: l.lane,
                    };
                    if !submit(sink, ev, &self.status, shutdown).await {
                        return StreamEnd::Shutdown;
                    }
                }
            }
        }
    }
}

/// Open a serial port, 8N1, exclusively (a second process cannot open it too).
pub fn open_port(path: &str, baud: u32) -> std::io::Result<tokio_serial::SerialStream> {
    use tokio_serial::SerialPortBuilderExt;
    tokio_serial::new(path, baud)
        .data_bits(tokio_serial::DataBits::Eight)
        .parity(tokio_serial::Parity::None)
        .stop_bits(tokio_serial::StopBits::One)
        .open_native_async()
        .map_err(std::io::Error::from)
}

/// The port life cycle shared by the serial drivers: open, serve, and when the port
/// vanishes, reopen with back-off (0.5 s doubling to [`REOPEN_MAX`]) until shutdown.
async fn serve_port<F, Fut>(
    port: &str,
    baud: u32,
    status: &DriverStatus,
    shutdown: &CancellationToken,
    mut serve: F,
) where
    F: FnMut(tokio_serial::SerialStream) -> Fut,
    Fut: std::future::Future<Output = StreamEnd>,
{
    let mut backoff = Backoff::new(Duration::from_millis(500), REOPEN_MAX);
    let mut outage = Outage::new(
        format!("serial port {port} (driver {})", status.name()),
        "unavailable",
        "open again",
    );
    let mut opened_once = false;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        match open_port(port, baud) {
            Ok(stream) => {
                backoff.reset();
                status.set_connected(true);
                if outage.recovered().is_none() && !opened_once {
                    tracing::info!(driver = status.name(), port, baud, "serial port open");
                }
                opened_once = true;
                match serve(stream).await {
                    StreamEnd::Shutdown => return,
                    StreamEnd::Eof => {
                        // The reason first: whoever sees the port down also sees why.
                        status.set_problem("port closed (device unplugged?)");
                        status.set_connected(false);
                        outage
                            .failed(&"port closed (device unplugged?); reopening until it is back");
                    }
                    StreamEnd::Error(e) => {
                        status.set_problem(&format!("read error: {e}"));
                        status.set_connected(false);
                        outage.failed(&format_args!(
                            "read failed: {e}; reopening until it is back"
                        ));
                    }
                }
            }
            Err(e) => {
                status.set_problem(&format!("cannot open {port}: {e}"));
                status.set_connected(false);
                outage.failed(&format_args!("cannot open: {e}"));
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

impl Driver for SerialCamera {
    fn name(&self) -> &str {
        &self.name
    }

    fn run(self: Box<Self>, sink: EventSink, shutdown: CancellationToken) -> DriverFuture {
        Box::pin(async move {
            let this = *self;
            serve_port(&this.port, this.baud, &this.status, &shutdown, |stream| {
                let (this, sink, shutdown) = (&this, &sink, &shutdown);
                async move { this.run_stream(stream, sink, shutdown).await }
            })
            .await;
            Ok(())
        })
    }
}

impl Driver for SerialDetector {
    fn name(&self) -> &str {
        &self.name
    }

    fn run(self: Box<Self>, sink: EventSink, shutdown: CancellationToken) -> DriverFuture {
        Box::pin(async move {
            let this = *self;
            let mut edges: Vec<EdgeDetector> = this
                .loops
                .iter()
                .map(|l| EdgeDetector::new(l.min_hold))
                .collect();
            let edges = std::sync::Mutex::new(std::mem::take(&mut edges));
            serve_port(&this.port, this.baud, &this.status, &shutdown, |stream| {
                let (this, sink, shutdown, edges) = (&this, &sink, &shutdown, &edges);
                async move {
                    let mut e = std::mem::take(
                        &mut *edges
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner),
                    );
                    let end = this.run_stream(stream, &mut e, sink, shutdown).await;
                    *edges
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = e;
                    end
                }
            })
            .await;
            Ok(())
        })
    }
}
