//! Wiring: open the outbox, build the client, start ingest, the uploader and the drivers,
//! and stop them in order on shutdown (drivers first, then ingest drains, then the
//! uploader), so nothing a driver was told is stored gets lost.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lotlink_drivers::{CancellationToken, Driver, EventSink};

use crate::config::{resolve_token, Config, TsUnit};
use crate::ingest::{Ingest, QUEUE_CAPACITY};
use crate::outbox::{OpenReport, Outbox, OutboxError, OutboxOptions};
use crate::protocol::{Client, ClientError, Clock};
use crate::space::SpaceTracker;
use crate::uploader::{
    Health, PlatformHealth, UploadSettings, Uploader, BACKOFF_BASE, BACKOFF_CAP, BACKOFF_CAP_FAULT,
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
}

/// Knobs that are not in the config file (tests and the demo set them).
#[derive(Debug, Clone)]
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
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            backoff_base: BACKOFF_BASE,
            backoff_cap: BACKOFF_CAP,
            backoff_cap_fault: BACKOFF_CAP_FAULT,
            cache_capacity: 4 << 20,
            driver_status: Vec::new(),
        }
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
    /// The platform client.
    pub client: Arc<Client>,
    /// What happened when the outbox was opened.
    pub open_report: OpenReport,
    /// Where the status endpoint listens.
    pub status_addr: std::net::SocketAddr,
    status_stop: CancellationToken,
    status_task: tokio::task::JoinHandle<()>,
    drivers_stop: CancellationToken,
    ingest_stop: CancellationToken,
    upload_stop: CancellationToken,
    drivers: tokio::task::JoinSet<()>,
    ingest: tokio::task::JoinHandle<()>,
    uploader: tokio::task::JoinHandle<()>,
}

impl Gateway {
    /// Start everything. Returns once the outbox is open and every task is running.
    pub async fn start(
        cfg: &Config,
        drivers: Vec<Box<dyn Driver>>,
        opts: RunOptions,
    ) -> Result<Gateway, AppError> {
        let token = resolve_token(&cfg.platform.token).map_err(AppError::Token)?;
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

        let clock = Arc::new(Clock::default());
        let saved_unit = outbox.setting("ts_unit")?.and_then(|s| match s.as_str() {
            "ms" => Some(TsUnit::Ms),
            "s" => Some(TsUnit::S),
            _ => None,
        });
        let ob = outbox.clone();
        let client = Client::new(&cfg.platform, token, clock.clone(), saved_unit)?
            .with_unit_listener(Arc::new(move |u| {
                if let Err(e) = ob.set_setting("ts_unit", u.as_str()) {
                    tracing::warn!(error = %e, "could not persist the ts unit");
                }
            }));
        let client = Arc::new(client);
        let space = SpaceTracker::new(outbox.clone(), cfg.space.total, cfg.space.source)?;
        let health: Health = Arc::new(Mutex::new(PlatformHealth::default()));

        let upload_stop = CancellationToken::new();
        let uploader = Uploader::new(
            client.clone(),
            outbox.clone(),
            UploadSettings {
                max_batch: cfg.platform.max_batch,
                max_body: cfg.platform.max_body,
                heartbeat_interval: cfg.platform.heartbeat_interval,
                backoff_base: opts.backoff_base,
                backoff_cap: opts.backoff_cap,
                backoff_cap_fault: opts.backoff_cap_fault,
            },
            health.clone(),
        );
        let uploader = tokio::spawn(uploader.run(upload_stop.clone()));

        let (sink, rx) = EventSink::channel(QUEUE_CAPACITY);
        let ingest_stop = CancellationToken::new();
        let ingest = Ingest {
            outbox: outbox.clone(),
            lot_code: cfg.platform.lot_code.clone(),
            timezone: cfg.platform.timezone,
            clock,
            space: space.clone(),
        };
        let ingest = tokio::spawn(ingest.run(rx, ingest_stop.clone()));

        let listener = crate::status::bind(cfg.status.listen).await?;
        let status_addr = listener.local_addr().unwrap_or(cfg.status.listen);
        let status_stop = CancellationToken::new();
        let ctx = crate::status::StatusContext {
            outbox: outbox.clone(),
            space: space.clone(),
            health: health.clone(),
            client: client.clone(),
            drivers: opts.driver_status.clone(),
            heartbeat_interval: cfg.platform.heartbeat_interval,
            started_ms: crate::protocol::Clock::local_ms(),
        };
        let status_task = tokio::spawn(crate::status::serve(
            listener,
            Arc::new(ctx),
            status_stop.clone(),
        ));
        tracing::info!(listen = %status_addr, "status endpoint listening");

        let drivers_stop = CancellationToken::new();
        let mut set = tokio::task::JoinSet::new();
        for d in drivers {
            let name = d.name().to_string();
            let fut = d.run(sink.clone(), drivers_stop.child_token());
            set.spawn(async move {
                match fut.await {
                    Ok(()) => tracing::info!(driver = %name, "driver stopped"),
                    // A failed driver never stops the others or the uploader.
                    Err(e) => tracing::error!(driver = %name, error = %e, "driver failed"),
                }
            });
        }
        Ok(Gateway {
            outbox,
            space,
            health,
            client,
            open_report,
            status_addr,
            status_stop,
            status_task,
            drivers_stop,
            ingest_stop,
            upload_stop,
            drivers: set,
            ingest,
            uploader,
        })
    }

    /// Stop the drivers only (ingest and uploader keep going, e.g. to drain the outbox).
    pub async fn stop_drivers(&mut self) {
        self.drivers_stop.cancel();
        while self.drivers.join_next().await.is_some() {}
    }

    /// Stop in order: drivers, ingest (finishing what it holds), uploader; flush the outbox.
    pub async fn stop(mut self) {
        self.stop_drivers().await;
        self.ingest_stop.cancel();
        let _ = self.ingest.await;
        self.upload_stop.cancel();
        let _ = self.uploader.await;
        self.status_stop.cancel();
        let _ = self.status_task.await;
        if let Err(e) = self.outbox.flush().await {
            tracing::error!(error = %e, "final outbox flush failed");
        }
        tracing::info!(pending = self.outbox.len(), "gateway stopped");
    }
}

/// Run the gateway until `shutdown` resolves.
pub async fn run(
    cfg: &Config,
    drivers: Vec<Box<dyn Driver>>,
    opts: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
    let gw = Gateway::start(cfg, drivers, opts).await?;
    shutdown.await;
    tracing::info!("shutting down");
    gw.stop().await;
    Ok(())
}
