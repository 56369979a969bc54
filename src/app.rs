//! Wiring: open the outbox, build the client, start ingest, the uploader and the drivers,
//! and stop them in order on shutdown (drivers first, then ingest drains, then the
//! uploader), so nothing a driver was told is stored gets lost.
//!
//! A reload ([`Gateway::reload`], from SIGHUP or a config push) compares the new config
//! with the running one part by part and restarts only what changed:
//!
//! | changed | what happens |
//! |---|---|
//! | `[platform]` | a new client; the uploader stops after its request in flight (nothing is deleted before the platform's answer) and restarts with it; the status page follows |
//! | `lot_code`, `timezone` | records built from now on use them (ingest keeps running) |
//! | `[space]` | the new total/source apply in place; a changed report is sent |
//! | `[status]` | the endpoint moves to the new address/token (the new one is bound first) |
//! | devices (`[mqtt]`, `[[camera]]`, `[[loop]]`, and `timezone`) | drivers stop (they acknowledge a source only after the store, so an event in flight is re-sent by its source) and the new set starts |
//! | `[outbox]` | not applied: takes effect at the next start (a WARN says so) |
//!
//! Everything that can fail (token file, client, drivers, binding the new address) is
//! prepared before anything is stopped: a reload that fails leaves the old parts running.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use lotlink_drivers::{CancellationToken, Driver, EventSink};

use crate::clock::Clock;
use crate::config::{resolve_token, Config, DataEncoding, TsUnit};
use crate::hardware::{Hardware, HardwareError};
use crate::ingest::{Ingest, Naming, SharedNaming, QUEUE_CAPACITY};
use crate::manage::ManagementState;
use crate::outbox::{OpenReport, Outbox, OutboxError, OutboxOptions};
use crate::protocol::{Client, ClientError};
use crate::space::SpaceTracker;
use crate::status::StatusContext;
use crate::uploader::{
    Health, Liveness, PlatformHealth, UploadSettings, Uploader, BACKOFF_BASE, BACKOFF_CAP,
    BACKOFF_CAP_FAULT,
};

/// Errors starting the gateway.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("platform.token: {0}")]
    Token(String),
    #[error(transparent)]
    Status(#[from] crate::status::StatusError),
    #[error(transparent)]
    Hardware(#[from] HardwareError),
}

/// Builds the drivers for a config (the real hardware in `lotlink run`); without one, a
/// reload cannot change the devices.
pub(crate) type DriverFactory =
    Arc<dyn Fn(&Config) -> Result<Hardware, HardwareError> + Send + Sync>;

/// Knobs that are not in the config file (tests and the demo set them).
#[derive(Clone)]
pub struct RunOptions {
    /// Base of the upload back-off.
    pub backoff_base: Duration,
    /// Cap of the back-off for transient faults.
    pub backoff_cap: Duration,
    /// Cap of the back-off for configuration faults.
    pub backoff_cap_fault: Duration,
    /// sled cache, bytes.
    pub cache_capacity: u64,
    /// The drivers' status handles, shown by the status endpoint.
    pub driver_status: Vec<lotlink_drivers::DriverStatus>,
    /// How a reload builds drivers for a changed device config.
    pub driver_factory: Option<DriverFactory>,
    /// Remote-management state shown by `/status` (set by the daemon when management is on).
    pub management: Option<Arc<ManagementState>>,
    /// How long the platform honours a `ts` ([`crate::protocol::TS_WINDOW`]); tests that
    /// scale time down shorten it.
    pub ts_window: Duration,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("backoff_base", &self.backoff_base)
            .field("backoff_cap", &self.backoff_cap)
            .field("cache_capacity", &self.cache_capacity)
            .field("drivers", &self.driver_status.len())
            .field("driver_factory", &self.driver_factory.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            backoff_base: BACKOFF_BASE,
            backoff_cap: BACKOFF_CAP,
            backoff_cap_fault: BACKOFF_CAP_FAULT,
            cache_capacity: 4 << 20,
            driver_status: Vec::new(),
            driver_factory: None,
            management: None,
            ts_window: crate::protocol::TS_WINDOW,
        }
    }
}

/// A started task and the token that stops it.
struct Part {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Part {
    fn spawn<F>(f: impl FnOnce(CancellationToken) -> F) -> Part
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let task = tokio::spawn(f(stop.clone()));
        Part { stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// A running gateway.
pub struct Gateway {
    /// The outbox (for status).
    pub outbox: Outbox,
    /// The space tracker.
    pub space: SpaceTracker,
    /// Platform health.
    pub health: Health,
    /// The platform client (replaced when `[platform]` is reloaded).
    pub client: Arc<Client>,
    /// What happened when the outbox was opened.
    pub open_report: OpenReport,
    /// Where the status endpoint listens.
    pub status_addr: std::net::SocketAddr,
    /// The uploader's signs of life (for the systemd watchdog).
    pub liveness: Liveness,
    encoding: EncodingMemory,
    cfg: Config,
    opts: RunOptions,
    clock: Arc<Clock>,
    naming: SharedNaming,
    sink: EventSink,
    started_ms: i64,
    status: Part,
    status_ctx: tokio::sync::watch::Sender<Arc<StatusContext>>,
    uploader: Part,
    ingest: Part,
    summary: Part,
    drivers_stop: CancellationToken,
    drivers: tokio::task::JoinSet<()>,
}

/// What `data_encoding = "auto"` settled on, kept for the life of the process (a reload
/// builds a new client that starts from it).
pub(crate) type EncodingMemory = Arc<Mutex<Option<DataEncoding>>>;

/// Remember the `data` encoding `auto` settled on. In memory for now: the one place to make
/// it survive a restart (like `ts_unit`) is here and in [`remembered_data_encoding`].
fn remember_data_encoding(memory: &EncodingMemory, e: DataEncoding) {
    *memory
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e);
    tracing::info!(
        data_encoding = crate::protocol::encoding_name(e),
        "data_encoding auto: remembered until the gateway stops"
    );
}

/// The `data` encoding an earlier `auto` client settled on, if any.
fn remembered_data_encoding(memory: &EncodingMemory) -> Option<DataEncoding> {
    *memory
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn build_client(
    cfg: &Config,
    outbox: &Outbox,
    clock: Arc<Clock>,
    opts: &RunOptions,
    encoding: &EncodingMemory,
) -> Result<Client, AppError> {
    let token = resolve_token(&cfg.platform.token).map_err(AppError::Token)?;
    let saved_unit = outbox.settings().ts_unit()?.and_then(|s| match s.as_str() {
        "ms" => Some(TsUnit::Ms),
        "s" => Some(TsUnit::S),
        _ => None,
    });
    let ob = outbox.clone();
    let memory = encoding.clone();
    Ok(Client::with_remembered(
        &cfg.platform,
        token,
        clock,
        saved_unit,
        remembered_data_encoding(encoding),
    )?
    .with_ts_window(opts.ts_window)
    .with_unit_listener(Arc::new(move |u| {
        if let Err(e) = ob.settings().set_ts_unit(u.as_str()) {
            tracing::warn!(error = %e, "could not persist the ts unit");
        }
    }))
    .with_encoding_listener(Arc::new(move |e| remember_data_encoding(&memory, e))))
}

fn spawn_drivers(
    drivers: Vec<Box<dyn Driver>>,
    sink: &EventSink,
    stop: &CancellationToken,
) -> tokio::task::JoinSet<()> {
    let mut set = tokio::task::JoinSet::new();
    for d in drivers {
        let name = d.name().to_string();
        let fut = d.run(sink.clone(), stop.child_token());
        set.spawn(async move {
            match fut.await {
                Ok(()) => tracing::info!(driver = %name, "driver stopped"),
                // A failed driver never stops the others or the uploader.
                Err(e) => tracing::error!(driver = %name, error = %e, "driver failed"),
            }
        });
    }
    set
}

impl Gateway {
    /// Start everything. Returns once the outbox is open and every task is running.
    pub async fn start(
        cfg: &Config,
        drivers: Vec<Box<dyn Driver>>,
        opts: RunOptions,
    ) -> Result<Gateway, AppError> {
        // Fail on a bad token before touching the store.
        resolve_token(&cfg.platform.token).map_err(AppError::Token)?;
        let path = cfg.outbox.path.clone();
        let oopts = OutboxOptions {
            max_disk: cfg.outbox.max_disk,
            cache_capacity: opts.cache_capacity,
            ..OutboxOptions::default()
        };
        let (outbox, open_report) = tokio::task::spawn_blocking(move || Outbox::open(&path, oopts))
            .await
            .map_err(|e| OutboxError::Store(format!("open task failed: {e}")))??;
        tracing::info!(path = %cfg.outbox.path.display(), pending = outbox.len(), dead = outbox.dead_len(), "outbox open");
        // Opening a big store allocates and frees megabytes (sled's snapshot and log replay);
        // give the freed pages back now rather than carry them for the daemon's life.
        crate::heap::release_freed_memory();

        let clock = Arc::new(Clock::default());
        let encoding = EncodingMemory::default();
        let client = Arc::new(build_client(cfg, &outbox, clock.clone(), &opts, &encoding)?);
        let space = SpaceTracker::new(outbox.clone(), cfg.space.total, cfg.space.source)?;
        let health: Health = Arc::new(Mutex::new(PlatformHealth::default()));
        let liveness = Liveness::default();

        let uploader = Self::spawn_uploader(cfg, &opts, &client, &outbox, &health, &liveness);

        let tally = Arc::new(crate::summary::Tally::default());
        let (sink, rx) = EventSink::channel(QUEUE_CAPACITY);
        // Drivers check camera capture times against the gateway's corrected clock.
        let sink = sink.with_clock({
            let clock = clock.clone();
            Arc::new(move || clock.now_ms())
        });
        let naming = Arc::new(RwLock::new(Naming {
            lot_code: cfg.platform.lot_code.clone(),
            timezone: cfg.platform.timezone,
        }));
        let ingest = Ingest {
            outbox: outbox.clone(),
            naming: naming.clone(),
            clock: clock.clone(),
            space: space.clone(),
            health: health.clone(),
            tally: tally.clone(),
        };
        let ingest = Part::spawn(|stop| ingest.run(rx, stop));
        // One INFO line a minute while events flow (per-event lines are at debug).
        let summary = Part::spawn(|stop| {
            let (health, outbox) = (health.clone(), outbox.clone());
            crate::summary::run(
                tally,
                move || {
                    health
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .delivered
                },
                move || outbox.len(),
                crate::summary::log_minute,
                stop,
            )
        });

        let started_ms = Clock::local_ms();
        let listener = crate::status::bind(cfg.status.listen).await?;
        let status_addr = listener.local_addr().unwrap_or(cfg.status.listen);
        let ctx = StatusContext {
            outbox: outbox.clone(),
            space: space.clone(),
            health: health.clone(),
            client: client.clone(),
            drivers: opts.driver_status.clone(),
            heartbeat_interval: cfg.platform.heartbeat_interval,
            started_ms,
            config_hash: cfg.hash.clone(),
            token: cfg.status.token.clone(),
            management: opts
                .management
                .clone()
                .map(|m| m as Arc<dyn crate::snapshot::ManagementSource>),
        };
        let (status_ctx, ctx_rx) = tokio::sync::watch::channel(Arc::new(ctx));
        let status = Part::spawn(|stop| crate::status::serve(listener, ctx_rx, stop));
        tracing::info!(listen = %status_addr, "status endpoint listening");

        let drivers_stop = CancellationToken::new();
        let drivers = spawn_drivers(drivers, &sink, &drivers_stop);
        Ok(Gateway {
            outbox,
            space,
            health,
            client,
            open_report,
            status_addr,
            liveness,
            encoding,
            cfg: cfg.clone(),
            opts,
            clock,
            naming,
            sink,
            started_ms,
            status,
            status_ctx,
            uploader,
            ingest,
            summary,
            drivers_stop,
            drivers,
        })
    }

    fn spawn_uploader(
        cfg: &Config,
        opts: &RunOptions,
        client: &Arc<Client>,
        outbox: &Outbox,
        health: &Health,
        liveness: &Liveness,
    ) -> Part {
        let uploader = Uploader::new(
            client.clone(),
            outbox.clone(),
            UploadSettings {
                max_batch: cfg.platform.max_batch,
                max_body: cfg.platform.max_body,
                heartbeat_interval: cfg.platform.heartbeat_interval,
                backoff_base: opts.backoff_base,
                // The config may only shorten it (tests pass a short cap in `opts`).
                backoff_cap: cfg.platform.retry_max.min(opts.backoff_cap),
                backoff_cap_fault: opts.backoff_cap_fault,
            },
            health.clone(),
        )
        .with_liveness(liveness.clone());
        Part::spawn(|stop| uploader.run(stop))
    }

    /// The config the gateway runs on.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Whether the uploader showed signs of life within `window`.
    pub fn uploader_alive(&self, window: Duration) -> bool {
        let last = self.liveness.load(Ordering::Relaxed);
        let window = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        last == 0 || crate::uploader::liveness_now() - last <= window
    }

    /// Apply a new config, restarting only the parts whose settings changed. Returns the
    /// names of the parts that changed (empty: nothing to do). On error nothing changed.
    pub async fn reload(&mut self, new: Config) -> Result<Vec<&'static str>, AppError> {
        let old = &self.cfg;
        let platform = new.platform != old.platform;
        let naming = new.platform.lot_code != old.platform.lot_code
            || new.platform.timezone != old.platform.timezone;
        let space = new.space != old.space;
        let status = new.status != old.status;
        let devices = new.devices != old.devices || new.platform.timezone != old.platform.timezone;
        if new.outbox != old.outbox {
            tracing::warn!(
                path = %new.outbox.path.display(),
                "[outbox] changes take effect at the next start; the running store is kept"
            );
        }
        // Prepare everything that can fail first.
        let client = if platform {
            Some(Arc::new(build_client(
                &new,
                &self.outbox,
                self.clock.clone(),
                &self.opts,
                &self.encoding,
            )?))
        } else {
            None
        };
        let hardware = match (&self.opts.driver_factory, devices) {
            (Some(f), true) => Some(f(&new)?),
            (None, true) => {
                tracing::warn!("devices changed, but this gateway's drivers were given to it: kept as they are");
                None
            }
            _ => None,
        };
        let listener = if new.status.listen == old.status.listen {
            None
        } else {
            Some(crate::status::bind(new.status.listen).await?)
        };

        let mut changed = Vec::new();
        if let Some(client) = client {
            let old_uploader =
                std::mem::replace(&mut self.uploader, Part::spawn(|_| std::future::ready(())));
            old_uploader.stop().await;
            self.client = client;
            self.uploader = Self::spawn_uploader(
                &new,
                &self.opts,
                &self.client,
                &self.outbox,
                &self.health,
                &self.liveness,
            );
            changed.push("platform");
        }
        if naming {
            *self
                .naming
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Naming {
                lot_code: new.platform.lot_code.clone(),
                timezone: new.platform.timezone,
            };
            changed.push("naming");
        }
        if space {
            self.space.reconfigure(new.space.total, new.space.source)?;
            self.outbox.wake();
            changed.push("space");
        }
        if let Some(hw) = hardware {
            self.stop_drivers().await;
            self.opts.driver_status = hw.statuses;
            self.drivers_stop = CancellationToken::new();
            self.drivers = spawn_drivers(hw.drivers, &self.sink, &self.drivers_stop);
            changed.push("devices");
        }
        let ctx = Arc::new(StatusContext {
            outbox: self.outbox.clone(),
            space: self.space.clone(),
            health: self.health.clone(),
            client: self.client.clone(),
            drivers: self.opts.driver_status.clone(),
            heartbeat_interval: new.platform.heartbeat_interval,
            started_ms: self.started_ms,
            config_hash: new.hash.clone(),
            token: new.status.token.clone(),
            management: self
                .opts
                .management
                .clone()
                .map(|m| m as Arc<dyn crate::snapshot::ManagementSource>),
        });
        if let Some(listener) = listener {
            // A new address (bound above): serve there, then close the old one.
            self.status_ctx.send_replace(ctx);
            let rx = self.status_ctx.subscribe();
            self.status_addr = listener.local_addr().unwrap_or(new.status.listen);
            let old = std::mem::replace(
                &mut self.status,
                Part::spawn(|stop| crate::status::serve(listener, rx, stop)),
            );
            old.stop().await;
            tracing::info!(listen = %self.status_addr, "status endpoint moved");
        } else {
            // Same address: the routes read the new context (token included) from now on.
            self.status_ctx.send_replace(ctx);
        }
        if status {
            changed.push("status");
        }
        if changed.is_empty() && new.hash != self.cfg.hash {
            changed.push("nothing that needs a restart");
        }
        self.cfg = new;
        Ok(changed)
    }

    /// What the status views read, kept current across reloads (the retained MQTT status
    /// takes its [`crate::snapshot::Snapshot`] from it).
    pub fn status_view(&self) -> tokio::sync::watch::Receiver<Arc<StatusContext>> {
        self.status_ctx.subscribe()
    }

    /// Stop the drivers only (ingest and uploader keep going, e.g. to drain the outbox).
    pub async fn stop_drivers(&mut self) {
        self.drivers_stop.cancel();
        while self.drivers.join_next().await.is_some() {}
    }

    /// Stop in order: drivers, ingest (finishing what it holds), uploader; flush the outbox.
    pub async fn stop(mut self) {
        self.stop_drivers().await;
        self.ingest.stop().await;
        self.summary.stop().await;
        self.uploader.stop().await;
        self.status.stop().await;
        if let Err(e) = self.outbox.flush().await {
            tracing::error!(error = %e, "final outbox flush failed");
        }
        tracing::info!(pending = self.outbox.len(), "gateway stopped");
    }
}
