//! Remote management over the site broker: config push with rollback, and a retained status.
//!
//! Topics, under `[management] topic_prefix` (default `lotlink/{lot_code}`):
//!
//! | topic | direction | what |
//! |---|---|---|
//! | `{prefix}/config/set` | in, QoS 1 | `{"version": u64, "config": "<TOML>", "hmac": "<hex>"}` |
//! | `{prefix}/config/result` | out, QoS 1 | `{"version", "outcome": "applied"\|"rejected"\|"rolled_back"\|"unchanged", "reason"}` |
//! | `{prefix}/status` | out, QoS 1, retained | `{"online": true, "version", "config_version", "config_hash", "outbox_depth", "last_platform_success_ms", "oldest_pending_s", "platform_reachable", "healthy", "problems", "taken_ms"}` every minute, rendered from the same [`crate::snapshot::Snapshot`] as `/status`; the last will is `{"online": false}` (retained) |
//!
//! A push is handled in this order, and the first failing step decides the outcome:
//! 1. JSON with a `version` and a `config` string, else **rejected**.
//! 2. With `hmac_key` set: `hmac` must be the hex HMAC-SHA256, under that key, of the
//!    version's decimal digits followed by the config text (`"7" ‖ "[platform]…"`), else
//!    **rejected** (the key is never logged or echoed).
//! 3. `version` must be greater than the last version accepted (kept in the gateway state
//!    file beside the config, [`crate::state`], so it survives restarts and a new outbox
//!    path), else **rejected** as a replay. A version that was rolled back stays used: push
//!    the fix with a new number.
//! 4. The text must validate exactly as `lotlink check-config` would, else **rejected**
//!    with every problem.
//! 5. `[outbox] path` must be the running one, else **rejected**: moving the store would
//!    leave its pending records behind, so only a local edit and a restart may (the start
//!    then checks the old directory, see [`crate::daemon`]).
//! 6. The same settings as now (whatever the spacing and comments): **unchanged**.
//! 7. Otherwise the running file is copied to `<file>.last-good`, the new text is written
//!    atomically (temp file, fsync, rename, fsync of the directory), and the gateway
//!    applies it ([`crate::app::Gateway::reload`]: only changed parts restart). For
//!    `watch` (60 s by default) the manager then watches: if the platform answered within
//!    the last 3 heartbeats before the push but gives no authenticated answer (a success,
//!    or e.g. a heartbeat answered `1005`) with the new settings during the window, or the
//!    management broker connection is down at its end,
//!    the last-good file is written back and applied: **rolled_back**. Else **applied**.
//!
//! Pushes are handled one at a time, in arrival order; the broker keeps the rest (QoS 1,
//! persistent session). The queue between the broker connection and the handler holds 8;
//! a push arriving when it is full is rejected as busy (the sender may retry).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use lotlink_drivers::mqtt::MqttSettings;
use lotlink_drivers::CancellationToken;
use rumqttc::{AsyncClient, Event, LastWill, Packet, QoS};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::{self, Config, ManagementConfig, MqttConfig};
use crate::outbox::Outbox;
use crate::protocol::Clock;
use crate::state::{GatewayState, StateError};
use crate::uploader::Health;

/// Pushes waiting for the handler.
const PUSH_QUEUE: usize = 8;
/// Period of the retained status message.
const STATUS_EVERY: Duration = Duration::from_secs(60);

/// Errors of the management side.
#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    /// A file could not be written or read.
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What `/status` shows about management. Shared between the manager and the endpoint.
#[derive(Debug, Default)]
pub struct ManagementState {
    config_version: AtomicU64,
    connected: AtomicBool,
    enabled: AtomicBool,
    last_result: Mutex<Option<Value>>,
}

impl ManagementState {
    /// The last push version accepted (0 = none).
    pub fn config_version(&self) -> u64 {
        self.config_version.load(Ordering::Relaxed)
    }
    /// Connected to the management broker right now.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

impl crate::snapshot::ManagementSource for ManagementState {
    fn view(&self) -> crate::snapshot::ManagementView {
        crate::snapshot::ManagementView {
            enabled: self.enabled.load(Ordering::Relaxed),
            connected: self.connected(),
            config_version: self.config_version(),
            last_result: self
                .last_result
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        }
    }
}

/// A request to the gateway's supervisor.
#[derive(Debug)]
pub enum Control {
    /// Apply this config; the answer says which parts changed, or why it failed.
    Apply {
        cfg: Box<Config>,
        reply: oneshot::Sender<Result<Vec<&'static str>, String>>,
    },
}

/// Outcome of one push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushResult {
    /// The pushed version (0 when the message had none).
    pub version: u64,
    /// `applied`, `rejected`, `rolled_back` or `unchanged`.
    pub outcome: &'static str,
    /// Why.
    pub reason: String,
}

impl PushResult {
    fn new(version: u64, outcome: &'static str, reason: impl Into<String>) -> Self {
        PushResult {
            version,
            outcome,
            reason: reason.into(),
        }
    }
    fn to_json(&self) -> Value {
        json!({ "version": self.version, "outcome": self.outcome, "reason": self.reason })
    }
}

/// A config push as it arrives on `{prefix}/config/set`. No `Debug`: the text holds the token.
#[derive(serde::Deserialize)]
pub struct Push {
    /// Must be greater than the applied version.
    pub version: u64,
    /// The whole TOML file.
    pub config: String,
    /// Hex HMAC-SHA256 of the decimal version followed by the text.
    pub hmac: Option<String>,
}

/// Parse a push message and check its HMAC when a key is set. Pure; the error is the
/// `rejected` result to publish. Fed arbitrary bytes by the fuzz target `config_push`.
pub fn parse_push(msg: &[u8], key: Option<&config::Secret>) -> Result<Push, PushResult> {
    let push: Push = serde_json::from_slice(msg).map_err(|e| {
        PushResult::new(
            0,
            "rejected",
            format!("not a config push ({{\"version\", \"config\", \"hmac\"}}): {e}"),
        )
    })?;
    if let Some(key) = key {
        let ok = push
            .hmac
            .as_deref()
            .is_some_and(|h| hmac_ok(key.expose().as_bytes(), push.version, &push.config, h));
        if !ok {
            return Err(PushResult::new(
                push.version,
                "rejected",
                "bad or missing hmac",
            ));
        }
    }
    Ok(push)
}

/// The hex HMAC-SHA256 a push must carry: over the version's decimal digits, then the text.
pub fn push_hmac(key: &[u8], version: u64, config: &str) -> String {
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(version.to_string().as_bytes());
    mac.update(config.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn hmac_ok(key: &[u8], version: u64, config: &str, given: &str) -> bool {
    let Ok(given) = hex::decode(given.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(key) else {
        return false;
    };
    mac.update(version.to_string().as_bytes());
    mac.update(config.as_bytes());
    mac.verify_slice(&given).is_ok()
}

/// Write a file so that a crash leaves either the old or the new content: a temp file in
/// the same directory (mode 0600), fsync, rename over the target, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ManageError> {
    use std::io::Write;
    let err = |source| ManageError::File {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map_or_else(|| "config".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp).map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(err)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err)?;
    Ok(())
}

/// The last-known-good copy of a config file.
pub fn last_good_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".last-good");
    PathBuf::from(s)
}

/// The push handler and broker session. Started by the daemon when a config file is in use.
pub struct Manager {
    /// The config file pushes are written to.
    pub path: PathBuf,
    /// Shared with `/status`.
    pub state: Arc<ManagementState>,
    /// Where the accepted version is kept.
    pub saved: Arc<GatewayState>,
    /// The outbox (its depth goes into the retained status).
    pub outbox: Outbox,
    /// Platform health, to judge a pushed config.
    pub health: Health,
    /// To the supervisor.
    pub control: mpsc::Sender<Control>,
    /// The config the gateway runs on now (the supervisor sends every change).
    pub config: watch::Receiver<Config>,
    /// What the status views read: the retained status renders a snapshot of it.
    pub status: watch::Receiver<Arc<crate::status::StatusContext>>,
}

type Outgoing = mpsc::UnboundedSender<(String, Value, bool)>;

impl Manager {
    /// Run until `shutdown`: a broker session whenever management is configured (restarted
    /// when its settings change), and the push handler.
    pub async fn run(self, shutdown: CancellationToken) {
        let version = self.saved.last_push_version().unwrap_or(0);
        self.state.config_version.store(version, Ordering::Relaxed);
        let (push_tx, push_rx) = mpsc::channel::<Vec<u8>>(PUSH_QUEUE);
        // Results and status go out through whichever session is connected; unbounded but
        // tiny: one message per push and per minute.
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<(String, Value, bool)>();
        let handler =
            tokio::spawn(Handler::from(&self).run(push_rx, out_tx.clone(), shutdown.clone()));
        let mut config = self.config.clone();
        loop {
            let cfg = config.borrow_and_update().clone();
            let session = match (&cfg.management, &cfg.devices.mqtt) {
                (Some(m), Some(b)) => Some((m.clone(), b.clone())),
                _ => None,
            };
            self.state
                .enabled
                .store(session.is_some(), Ordering::Relaxed);
            let Some((m, b)) = session else {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    r = config.changed() => if r.is_err() { break } else { continue },
                }
            };
            let stop = shutdown.child_token();
            let mut session = Box::pin(self.session(&m, &b, &push_tx, &mut out_rx, stop.clone()));
            let again = loop {
                tokio::select! {
                    () = &mut session => break false,
                    r = config.changed() => {
                        if r.is_err() { stop.cancel(); (&mut session).await; break false; }
                        let next = config.borrow().clone();
                        if next.management.as_ref() != Some(&m) || next.devices.mqtt.as_ref() != Some(&b) {
                            tracing::info!("management settings changed: reconnecting");
                            stop.cancel();
                            (&mut session).await;
                            break true;
                        }
                    }
                }
            };
            if !again {
                break;
            }
        }
        drop(out_tx);
        handler.abort();
        let _ = handler.await;
        self.state.connected.store(false, Ordering::Relaxed);
    }

    /// The retained status: a [`crate::snapshot::Snapshot`], as every status view.
    fn status_message(&self) -> Value {
        let ctx = self.status.borrow().clone();
        crate::snapshot::Snapshot::take(&ctx).retained_status()
    }

    /// One broker session until `stop`: subscribe, publish the retained status every
    /// minute, forward pushes, send results.
    async fn session(
        &self,
        m: &ManagementConfig,
        b: &MqttConfig,
        push_tx: &mpsc::Sender<Vec<u8>>,
        out_rx: &mut mpsc::UnboundedReceiver<(String, Value, bool)>,
        stop: CancellationToken,
    ) {
        let settings = MqttSettings {
            host: b.host.clone(),
            port: b.port,
            tls: b.tls.then(|| b.ca_file.clone()),
            client_id: format!("{}-mgmt", b.client_id),
            username: b.username.clone(),
            password: b.password.as_ref().map(|p| p.expose().to_string()),
            max_packet: b.max_packet.max(256 * 1024),
            keep_alive: b.keep_alive,
        };
        let mut opts = match lotlink_drivers::mqtt::options(&settings) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "management broker settings unusable");
                stop.cancelled().await;
                return;
            }
        };
        let status_topic = format!("{}/status", m.topic_prefix);
        opts.set_manual_acks(false).set_last_will(LastWill::new(
            &status_topic,
            json!({"online": false}).to_string(),
            QoS::AtLeastOnce,
            true,
        ));
        let set_topic = format!("{}/config/set", m.topic_prefix);
        let mut pacer = lotlink_drivers::mqtt::Pacer::new(settings.max_packet);
        let (client, mut events) = AsyncClient::new(opts, 16);
        let mut outage = lotlink_drivers::Outage::new(
            format!("management broker {}:{}", b.host, b.port),
            "unreachable",
            "connected again",
        );
        let mut tick = tokio::time::interval(STATUS_EVERY);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {
                    if self.state.connected() {
                        let _ = client.try_publish(&status_topic, QoS::AtLeastOnce, true, self.status_message().to_string());
                    }
                }
                Some((suffix, v, retain)) = out_rx.recv(), if self.state.connected() => {
                    let topic = format!("{}/{suffix}", m.topic_prefix);
                    if let Err(e) = client.publish(topic, QoS::AtLeastOnce, retain, v.to_string()).await {
                        tracing::warn!(error = %e, "management publish failed");
                    }
                }
                ev = events.poll() => match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        pacer.connected();
                        self.state.connected.store(true, Ordering::Relaxed);
                        if outage.recovered().is_none() {
                            tracing::info!(prefix = %m.topic_prefix, "management connected to the broker");
                        }
                        let _ = client.try_subscribe(&set_topic, QoS::AtLeastOnce);
                        let _ = client.try_publish(&status_topic, QoS::AtLeastOnce, true, self.status_message().to_string());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) if pacer.oversized(p.payload.len()) => {
                        // Acknowledged on receipt (automatic acks): refused, never re-sent.
                        pacer.consumed(&mut events.mqtt_options);
                        tracing::warn!(topic = %p.topic, size = p.payload.len(), max_packet = settings.max_packet, "management message over max_packet: dropped");
                        let r = PushResult::new(0, "rejected", format!("message of {} bytes is over max_packet ({} bytes)", p.payload.len(), settings.max_packet));
                        let _ = client.try_publish(format!("{}/config/result", m.topic_prefix), QoS::AtLeastOnce, false, r.to_json().to_string());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic == set_topic => {
                        if push_tx.try_send(p.payload.to_vec()).is_err() {
                            let r = PushResult::new(0, "rejected", "busy: earlier pushes are still being handled; send again later");
                            let _ = client.try_publish(format!("{}/config/result", m.topic_prefix), QoS::AtLeastOnce, false, r.to_json().to_string());
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        self.state.connected.store(false, Ordering::Relaxed);
                        outage.failed(&e);
                        let wait = pacer.failed(&e, &mut events.mqtt_options, "management");
                        tokio::select! {
                            () = stop.cancelled() => break,
                            () = tokio::time::sleep(wait) => {}
                        }
                    }
                }
            }
        }
        // A clean goodbye: the retained status says offline (the will covers crashes).
        if self.state.connected.swap(false, Ordering::Relaxed) {
            let _ = client
                .publish(
                    &status_topic,
                    QoS::AtLeastOnce,
                    true,
                    json!({"online": false}).to_string(),
                )
                .await;
            let _ = client.disconnect().await;
            // Let the event loop send both.
            let flush = async {
                while let Ok(ev) = events.poll().await {
                    if matches!(ev, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), flush).await;
        }
    }
}

/// Handles pushes one at a time.
struct Handler {
    path: PathBuf,
    state: Arc<ManagementState>,
    saved: Arc<GatewayState>,
    health: Health,
    control: mpsc::Sender<Control>,
    config: watch::Receiver<Config>,
}

impl From<&Manager> for Handler {
    fn from(m: &Manager) -> Self {
        Handler {
            path: m.path.clone(),
            state: m.state.clone(),
            saved: m.saved.clone(),
            health: m.health.clone(),
            control: m.control.clone(),
            config: m.config.clone(),
        }
    }
}

impl Handler {
    async fn run(
        self,
        mut rx: mpsc::Receiver<Vec<u8>>,
        out: Outgoing,
        shutdown: CancellationToken,
    ) {
        loop {
            let msg = tokio::select! {
                () = shutdown.cancelled() => return,
                m = rx.recv() => match m { Some(m) => m, None => return },
            };
            let r = self.handle(&msg, &shutdown).await;
            match r.outcome {
                "rejected" | "rolled_back" => {
                    tracing::warn!(version = r.version, outcome = r.outcome, reason = %r.reason, "config push");
                }
                _ => {
                    tracing::info!(version = r.version, outcome = r.outcome, reason = %r.reason, "config push");
                }
            }
            *self
                .state
                .last_result
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(r.to_json());
            let _ = out.send(("config/result".into(), r.to_json(), false));
        }
    }

    async fn apply(&self, cfg: Config) -> Result<Vec<&'static str>, String> {
        let (reply, answer) = oneshot::channel();
        self.control
            .send(Control::Apply {
                cfg: Box::new(cfg),
                reply,
            })
            .await
            .map_err(|_| "the gateway is shutting down".to_string())?;
        answer
            .await
            .map_err(|_| "the gateway is shutting down".to_string())?
    }

    /// An authenticated answer since `t` (a heartbeat answered `1005` proves the new
    /// settings reach the platform as well as a success does).
    fn platform_ok_since(&self, t: i64) -> bool {
        self.health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .last_reached_ms
            .is_some_and(|s| s >= t)
    }

    async fn handle(&self, msg: &[u8], shutdown: &CancellationToken) -> PushResult {
        let current = self.config.borrow().clone();
        let key = current
            .management
            .as_ref()
            .and_then(|m| m.hmac_key.as_ref());
        let push = match parse_push(msg, key) {
            Ok(p) => p,
            Err(rejected) => return rejected,
        };
        let v = push.version;
        let applied = self.state.config_version();
        if v <= applied {
            return PushResult::new(
                v,
                "rejected",
                format!("version {v} is not newer than {applied} (replay)"),
            );
        }
        let new = match config::from_str(&self.path, &push.config).and_then(|c| {
            config::resolve_token(&c.platform.token)
                .map(|_| c)
                .map_err(|message| {
                    config::ConfigError::Invalid(config::ConfigErrors {
                        path: Some(self.path.clone()),
                        problems: vec![config::Problem {
                            key: "platform.token_file".into(),
                            message,
                            line: None,
                        }],
                    })
                })
        }) {
            Ok(c) => c,
            Err(e) => return PushResult::new(v, "rejected", format!("invalid config: {e}")),
        };
        if let Some(reason) = outbox_move(&current, &new) {
            return PushResult::new(v, "rejected", reason);
        }
        if let Err(e) = self.remember(v) {
            return PushResult::new(v, "rejected", format!("cannot record the version: {e}"));
        }
        let mut same = new.clone();
        same.hash.clone_from(&current.hash);
        if same == current {
            return PushResult::new(v, "unchanged", "same settings as running");
        }
        let old_text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) => {
                return PushResult::new(
                    v,
                    "rejected",
                    format!(
                        "{}: cannot read the running config: {e}",
                        self.path.display()
                    ),
                )
            }
        };
        let last_good = last_good_path(&self.path);
        if let Err(e) = write_atomic(&last_good, old_text.as_bytes())
            .and_then(|()| write_atomic(&self.path, push.config.as_bytes()))
        {
            return PushResult::new(v, "rejected", format!("cannot write: {e}"));
        }
        let window =
            i64::try_from(current.platform.heartbeat_interval.as_millis() * 3).unwrap_or(i64::MAX);
        let reachable_before = self.platform_ok_since(Clock::local_ms() - window);
        let watch = new
            .management
            .as_ref()
            .or(current.management.as_ref())
            .map_or(Duration::from_secs(60), |m| m.watch);
        let t0 = Clock::local_ms();
        let problem = match self.apply(new).await {
            Err(e) => Some(format!("could not apply: {e}")),
            Ok(parts) => {
                tracing::info!(version = v, parts = ?parts, watch_s = watch.as_secs(), "pushed config applied; watching it");
                tokio::select! {
                    () = shutdown.cancelled() => return PushResult::new(v, "applied", "applied; shut down before the watch ended"),
                    () = tokio::time::sleep(watch) => {}
                }
                if reachable_before && !self.platform_ok_since(t0) {
                    Some(format!(
                        "the platform was reachable before but not with the new settings within {} s",
                        watch.as_secs()
                    ))
                } else if !self.state.connected() {
                    Some("the management broker connection is lost with the new settings".into())
                } else {
                    None
                }
            }
        };
        let Some(problem) = problem else {
            return PushResult::new(v, "applied", "platform and broker reachable");
        };
        // Roll back to the last-known-good file.
        let restored = write_atomic(&self.path, old_text.as_bytes())
            .map_err(|e| e.to_string())
            .and_then(|()| config::from_str(&self.path, &old_text).map_err(|e| e.to_string()));
        match restored {
            Ok(old) => match self.apply(old).await {
                Ok(_) => PushResult::new(v, "rolled_back", problem),
                Err(e) => PushResult::new(
                    v,
                    "rolled_back",
                    format!("{problem}; the last-good file is back but applying it failed: {e}"),
                ),
            },
            Err(e) => {
                tracing::error!(error = %e, path = %self.path.display(), "could not restore the last-good config; the pushed one stays");
                PushResult::new(
                    v,
                    "rolled_back",
                    format!("{problem}; restoring failed: {e}"),
                )
            }
        }
    }

    fn remember(&self, v: u64) -> Result<(), StateError> {
        self.saved.set_last_push_version(v)?;
        self.state.config_version.store(v, Ordering::Relaxed);
        Ok(())
    }
}

/// Why a pushed config may not be applied because it moves the outbox (`None`: it does not).
fn outbox_move(running: &Config, pushed: &Config) -> Option<String> {
    (pushed.outbox.path != running.outbox.path).then(|| {
        format!(
            "outbox.path cannot be changed by a config push (pushed {}, running {}): the records pending in the running store would be left behind; change it in the local config file and restart lotlink",
            pushed.outbox.path.display(),
            running.outbox.path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_change_of_the_outbox_path_is_a_move() {
        let text = |path: &str, max: &str| {
            format!(
                "[platform]\nurl = \"http://127.0.0.1:1\"\nlot_code = \"350\"\ntoken = \"a-real-token-0123\"\n\n[outbox]\npath = \"{path}\"\nmax_disk = \"{max}\"\n\n[space]\ntotal = 10\n"
            )
        };
        let cfg = |t: String| config::from_str(Path::new("t.toml"), &t).expect("valid");
        let running = cfg(text("/var/lib/lotlink/outbox", "2GiB"));
        assert_eq!(
            outbox_move(&running, &cfg(text("/var/lib/lotlink/outbox", "1GiB"))),
            None
        );
        let why = outbox_move(&running, &cfg(text("/data/outbox", "2GiB"))).expect("a move");
        assert!(
            why.contains("outbox.path") && why.contains("/data/outbox"),
            "{why}"
        );
        assert!(why.contains("/var/lib/lotlink/outbox"), "{why}");
    }

    #[test]
    fn the_hmac_covers_the_version_and_the_text() {
        let key = b"0123456789abcdef";
        let h = push_hmac(key, 7, "[platform]\n");
        assert_eq!(h.len(), 64);
        assert!(hmac_ok(key, 7, "[platform]\n", &h));
        assert!(hmac_ok(key, 7, "[platform]\n", &h.to_uppercase()));
        assert!(!hmac_ok(key, 8, "[platform]\n", &h), "another version");
        assert!(!hmac_ok(key, 7, "[platform] \n", &h), "another text");
        assert!(!hmac_ok(b"another-key-0000", 7, "[platform]\n", &h));
        assert!(!hmac_ok(key, 7, "[platform]\n", "not hex"));
    }

    #[test]
    fn an_atomic_write_replaces_the_file_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lotlink.toml");
        std::fs::write(&p, "old").unwrap();
        write_atomic(&p, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        assert_eq!(
            last_good_path(&p),
            dir.path().join("lotlink.toml.last-good")
        );
    }
}
