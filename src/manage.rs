//! Remote management over the site broker: config push with rollback, and a retained status.
//!
//! Topics, under `[management] topic_prefix` (default `lotlink/{lot_code}`):
//!
//! | topic | direction | what |
//! |---|---|---|
//! | `{prefix}/config/set` | in, QoS 1 | `{"version": u64, "config": "<TOML>", "hmac": "<hex>"}`, or `{"version", "revert": true, "hmac"}` |
//! | `{prefix}/config/result` | out, QoS 1 | `{"version", "outcome": "applied"\|"rejected"\|"rolled_back"\|"unchanged", "reason"}` |
//! | `{prefix}/status` | out, QoS 1, retained | `{"online": true, "lot_code", "version", "config_version", "config_hash", "config_file", "outbox_depth", "oldest_pending_s", "last_platform_success_ms", "platform_reachable", "healthy", "problems", "taken_ms"}` every minute and after each push, rendered from the same [`crate::snapshot::Snapshot`] as `/status`; the last will is `{"online": false}` (retained), a clean stop publishes the full status with `"online": false` |
//!
//! **Where a pushed config goes.** Never into the local config file (`/etc/lotlink/lotlink.toml`
//! is a dpkg conffile: a daemon-written file there makes the next package upgrade stop at a
//! conffile prompt). A pushed config is written to [`pushed_path`] beside the gateway state
//! file (`/etc/lotlink/lotlink.pushed.toml`), and while that file exists it is the config in
//! effect ([`load_in_effect`]: at start, on SIGHUP, and for the operator commands); the local
//! file is then not read. The way back to the local file: a signed `revert` push
//! (`lotlink push --revert`), or delete the pushed file and `systemctl reload lotlink`.
//! Which file is in effect is logged at start and on reload and shown by `/status`
//! (`management.config_file`) and in the retained status.
//!
//! A push is handled in this order, and the first failing step decides the outcome:
//! 1. JSON with a `version`, and a `config` string unless `revert`, else **rejected**.
//! 2. The gateway must have a push key (`[management] hmac_key_file` or `hmac_key`), else
//!    **rejected**: without one the gateway publishes its status but refuses every push.
//! 3. `hmac` must be the hex HMAC-SHA256, under that key, of [`crate::push::mac_input`]:
//!    `"lotlink-push/2\n" ‖ action ‖ "\n" ‖ lot_code ‖ "\n" ‖ topic_prefix ‖ "\n" ‖ version
//!    ‖ "\n" ‖ config text` (action `set` or `revert`; for `revert` the text is empty; the
//!    lot code and prefix are the gateway's own), else **rejected**: a push made for one lot
//!    is refused by every other (the key is never logged or echoed).
//! 4. `version` must be greater than the last version accepted (kept in the gateway state
//!    file beside the config, [`crate::state`], so it survives restarts and a new outbox
//!    path), else **rejected** as a replay. A version that was rolled back stays used: push
//!    the fix with a new number.
//! 5. The text must validate exactly as `lotlink check-config` would, else **rejected**
//!    with every problem (a secret's value is never quoted). For `revert` the local file
//!    must. A pushed config must keep a push key (else the gateway could never be pushed
//!    to again), and over a plain `mqtt://` broker it may not carry a secret
//!    (`platform.token`, `mqtt.password`, `management.hmac_key`: use `token_file` /
//!    `hmac_key_file`) unless the running config says `allow_plaintext_secrets = true`.
//! 6. `[outbox] path` must be the running one, else **rejected**: moving the store would
//!    leave its pending records behind, so only a local edit and a restart may (the start
//!    then checks the old directory, see [`crate::daemon`]).
//! 7. The same settings as now (whatever the spacing and comments): **unchanged** (a
//!    `revert` still removes the pushed file).
//! 8. Otherwise the pushed file is written atomically (temp file, fsync, rename, fsync of
//!    the directory; removed for `revert`), and the gateway applies the config
//!    ([`crate::app::Gateway::reload`]: only changed parts restart). For
//!    `watch` (60 s by default) the manager then watches: if the platform answered within
//!    the last 3 heartbeats before the push but gives no authenticated answer (a success,
//!    or e.g. a heartbeat answered `1005`) with the new settings during the window, or the
//!    management broker connection is down at its end, the previous pushed file is written
//!    back (or removed, if there was none) and the previous config applied:
//!    **rolled_back**. Else **applied**.
//!
//! Pushes are handled one at a time, in arrival order; the broker keeps the rest (QoS 1,
//! persistent session). The queue between the broker connection and the handler holds 8;
//! a push arriving when it is full is rejected as busy (the sender may retry).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lotlink_drivers::mqtt::MqttSettings;
use lotlink_drivers::CancellationToken;
use rumqttc::{AsyncClient, Event, LastWill, Packet, QoS};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};

use crate::clock::Clock;
use crate::config::{self, Config, ConfigError, ManagementConfig, MqttConfig, TokenSource};
use crate::push::{parse_push, PushResult, PushTarget};
use crate::state::{GatewayState, StateError};
use crate::uploader::Health;

/// Pushes waiting for the handler.
const PUSH_QUEUE: usize = 8;
/// Period of the retained status message.
const STATUS_EVERY: Duration = Duration::from_secs(60);

/// Errors of the management side.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ManageError {
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
    config_file: Mutex<Option<PathBuf>>,
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
    /// The config file in effect (the pushed one or the local one).
    pub fn config_file(&self) -> Option<PathBuf> {
        self.config_file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
    /// Record the config file in effect.
    pub fn set_config_file(&self, path: &Path) {
        *self
            .config_file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(path.to_path_buf());
    }
}

impl crate::snapshot::ManagementSource for ManagementState {
    fn view(&self) -> crate::snapshot::ManagementView {
        crate::snapshot::ManagementView {
            enabled: self.enabled.load(Ordering::Relaxed),
            connected: self.connected(),
            config_version: self.config_version(),
            config_file: self.config_file().map(|p| p.display().to_string()),
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
pub(crate) enum Control {
    /// Apply this config; the answer says which parts changed, or why it failed.
    Apply {
        cfg: Box<Config>,
        reply: oneshot::Sender<Result<Vec<&'static str>, String>>,
    },
}

/// The pushed config file of the local config file `local`: beside it and the gateway
/// state file, `<stem>.pushed.toml` (`/etc/lotlink/lotlink.pushed.toml`). Not a conffile.
pub fn pushed_path(local: &Path) -> PathBuf {
    let stem = local
        .file_stem()
        .map_or_else(|| "lotlink".into(), |s| s.to_string_lossy().into_owned());
    local.with_file_name(format!("{stem}.pushed.toml"))
}

/// The config in effect, and where it came from.
#[derive(Debug)]
pub(crate) struct InEffect {
    /// The validated config.
    pub config: Config,
    /// The file it was read from: [`pushed_path`] when that exists (and is valid), else
    /// the local file.
    pub file: PathBuf,
    /// The pushed file exists but could not be used (the local file is in effect): why.
    pub pushed_problem: Option<String>,
}

/// Load the config in effect for the local file `local`: the pushed file when it exists,
/// else the local file. A pushed file that no longer loads (e.g. its `token_file` is gone)
/// falls back to the local file, with the reason in [`InEffect::pushed_problem`].
pub(crate) fn load_in_effect(local: &Path) -> Result<InEffect, ConfigError> {
    let pushed = pushed_path(local);
    let mut pushed_problem = None;
    if pushed.exists() {
        match config::load(&pushed) {
            Ok(config) => {
                return Ok(InEffect {
                    config,
                    file: pushed,
                    pushed_problem: None,
                })
            }
            Err(e) => pushed_problem = Some(e.to_string()),
        }
    }
    Ok(InEffect {
        config: config::load(local)?,
        file: local.to_path_buf(),
        pushed_problem,
    })
}

/// The secrets a config carries in its text (not as file references).
fn inline_secrets(cfg: &Config) -> Vec<&'static str> {
    let mut found = Vec::new();
    if matches!(cfg.platform.token, TokenSource::Inline(_)) {
        found.push("platform.token");
    }
    if cfg
        .devices
        .mqtt
        .as_ref()
        .is_some_and(|m| m.password.is_some())
    {
        found.push("mqtt.password");
    }
    if cfg
        .management
        .as_ref()
        .is_some_and(|m| matches!(m.hmac_key, Some(TokenSource::Inline(_))))
    {
        found.push("management.hmac_key");
    }
    found
}

/// Why a pushed config may not be taken as it is (`None`: it may), given the running one.
fn push_policy(running: &Config, pushed: &Config) -> Option<String> {
    let plain = running.devices.mqtt.as_ref().is_some_and(|b| !b.tls);
    let allow = running
        .management
        .as_ref()
        .is_some_and(|m| m.allow_plaintext_secrets);
    let secrets = inline_secrets(pushed);
    if plain && !allow && !secrets.is_empty() {
        return Some(format!(
            "the pushed config carries secrets ({}) over a plain-text mqtt:// broker: use token_file / hmac_key_file references, an mqtts:// broker, or set [management] allow_plaintext_secrets = true in the running config",
            secrets.join(", ")
        ));
    }
    if pushed
        .management
        .as_ref()
        .is_some_and(|m| m.hmac_key.is_none())
    {
        return Some("the pushed config has no [management] hmac_key_file (or hmac_key): the gateway would refuse every later push".into());
    }
    None
}

/// Write a file so that a crash leaves either the old or the new content
/// ([`crate::atomic_file::write`]).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ManageError> {
    crate::atomic_file::write(path, bytes).map_err(|source| ManageError::File {
        path: path.to_path_buf(),
        source,
    })
}

/// The push handler and broker session. Started by the daemon when a config file is in use.
pub(crate) struct Manager {
    /// The local config file (pushes go to its [`pushed_path`]).
    pub path: PathBuf,
    /// Shared with `/status`.
    pub state: Arc<ManagementState>,
    /// Where the accepted version is kept.
    pub saved: Arc<GatewayState>,
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
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let version = self.saved.last_push_version().unwrap_or(0);
        self.state.config_version.store(version, Ordering::Relaxed);
        let (push_tx, push_rx) = mpsc::channel::<Vec<u8>>(PUSH_QUEUE);
        // Results and status go out through whichever session is connected; unbounded but
        // tiny: two messages per push (result, then a fresh status), each handled in turn.
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

    /// The retained status: a [`crate::snapshot::Snapshot`], as every status view, with what
    /// only the manager knows (the lot, the config file in effect, online or stopping).
    fn status_message(&self, online: bool) -> Value {
        let ctx = self.status.borrow().clone();
        let mut v = crate::snapshot::Snapshot::take(&ctx).retained_status();
        v["online"] = json!(online);
        v["lot_code"] = json!(self.config.borrow().platform.lot_code);
        v["config_file"] = json!(self.state.config_file().map(|p| p.display().to_string()));
        v
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
        if m.hmac_key.is_none() {
            tracing::warn!(prefix = %m.topic_prefix, "no [management] hmac_key_file (or hmac_key): the status is published but every config push is refused");
        }
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
                        let _ = client.try_publish(&status_topic, QoS::AtLeastOnce, true, self.status_message(true).to_string());
                    }
                }
                Some((suffix, v, retain)) = out_rx.recv(), if self.state.connected() => {
                    let topic = format!("{}/{suffix}", m.topic_prefix);
                    // `null` on `status`: the status as of now (after a push).
                    let v = if v.is_null() { self.status_message(true) } else { v };
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
                        let _ = client.try_publish(&status_topic, QoS::AtLeastOnce, true, self.status_message(true).to_string());
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
                            let r = PushResult::new(version_hint(&p.payload), "rejected", "busy: earlier pushes are still being handled; send again later");
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
                    self.status_message(false).to_string(),
                )
                .await;
            let _ = client.disconnect().await;
            // Let the event loop send both (5 s: a loaded box took over 2 s once in a test).
            let flush = async {
                while let Ok(ev) = events.poll().await {
                    if matches!(ev, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), flush).await;
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
            // The retained status with the new version and file at once, not within a minute.
            let _ = out.send(("status".into(), Value::Null, true));
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
        let hint = version_hint(msg);
        let Some(m) = current.management.as_ref() else {
            return PushResult::new(hint, "rejected", "management is off");
        };
        let Some(key) = m.hmac_key.as_ref() else {
            return PushResult::new(hint, "rejected", NO_KEY);
        };
        let key = match config::resolve_token(key) {
            Ok(k) => k,
            Err(e) => {
                return PushResult::new(
                    hint,
                    "rejected",
                    format!("cannot read the push key ([management] hmac_key_file): {e}"),
                )
            }
        };
        if key.expose().len() < 16 {
            return PushResult::new(
                hint,
                "rejected",
                "the push key ([management] hmac_key_file) is shorter than 16 characters",
            );
        }
        let target = PushTarget {
            lot_code: &current.platform.lot_code,
            prefix: &m.topic_prefix,
        };
        let push = match parse_push(msg, key.expose().as_bytes(), target) {
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
        let pushed = pushed_path(&self.path);
        let had_pushed = pushed.exists();
        // What the push asks for: a config and the pushed file's new text (`None`: remove it).
        let (new, new_text) = if push.revert {
            match config::load(&self.path) {
                Ok(c) => (c, None),
                Err(e) => {
                    return PushResult::new(
                        v,
                        "rejected",
                        format!("revert: the local config file is not valid: {e}"),
                    )
                }
            }
        } else {
            let text = push.config.unwrap_or_default();
            let new = match config::from_str(&pushed, &text).and_then(|c| {
                config::resolve_token(&c.platform.token)
                    .map(|_| c)
                    .map_err(|message| {
                        ConfigError::Invalid(config::ConfigErrors {
                            path: Some(pushed.clone()),
                            problems: vec![config::Problem::new("platform.token_file", message)],
                        })
                    })
            }) {
                Ok(c) => c,
                Err(e) => return PushResult::new(v, "rejected", format!("invalid config: {e}")),
            };
            if let Some(reason) = push_policy(&current, &new) {
                return PushResult::new(v, "rejected", reason);
            }
            (new, Some(text))
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
            if new_text.is_none() && had_pushed {
                if let Err(e) = std::fs::remove_file(&pushed) {
                    return PushResult::new(
                        v,
                        "rejected",
                        format!("{}: cannot remove: {e}", pushed.display()),
                    );
                }
                self.state.set_config_file(&self.path);
                return PushResult::new(
                    v,
                    "unchanged",
                    format!(
                        "same settings as running; the local file {} is in effect again",
                        self.path.display()
                    ),
                );
            }
            return PushResult::new(v, "unchanged", "same settings as running");
        }
        let old_text = if had_pushed {
            match std::fs::read_to_string(&pushed) {
                Ok(t) => Some(t),
                Err(e) => {
                    return PushResult::new(
                        v,
                        "rejected",
                        format!("{}: cannot read the pushed config: {e}", pushed.display()),
                    )
                }
            }
        } else {
            None
        };
        if let Err(e) = set_pushed(&pushed, new_text.as_deref()) {
            return PushResult::new(v, "rejected", format!("cannot write: {e}"));
        }
        let in_effect = if new_text.is_some() {
            pushed.clone()
        } else {
            self.path.clone()
        };
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
                self.state.set_config_file(&in_effect);
                tracing::info!(version = v, parts = ?parts, file = %in_effect.display(), watch_s = watch.as_secs(), "pushed config applied; watching it");
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
        // Roll back: the previous pushed file (or none), and the config that ran before.
        let was = if old_text.is_some() {
            pushed.clone()
        } else {
            self.path.clone()
        };
        if let Err(e) = set_pushed(&pushed, old_text.as_deref()) {
            tracing::error!(error = %e, path = %pushed.display(), "could not restore the previous pushed config file; it is in effect at the next start");
        }
        match self.apply(current).await {
            Ok(_) => {
                self.state.set_config_file(&was);
                PushResult::new(v, "rolled_back", problem)
            }
            Err(e) => PushResult::new(
                v,
                "rolled_back",
                format!("{problem}; the previous file is back but applying it failed: {e}"),
            ),
        }
    }

    fn remember(&self, v: u64) -> Result<(), StateError> {
        self.saved.set_last_push_version(v)?;
        self.state.config_version.store(v, Ordering::Relaxed);
        Ok(())
    }
}

/// Why a gateway without a push key refuses a push.
const NO_KEY: &str = "this gateway has no push key: set [management] hmac_key_file (or hmac_key) in its local config file; until then it publishes its status but refuses every config push";

/// The `version` of a push message, 0 when it has none (for results of pushes refused
/// before they are parsed as a whole).
fn version_hint(msg: &[u8]) -> u64 {
    #[derive(serde::Deserialize)]
    struct VersionOnly {
        version: u64,
    }
    serde_json::from_slice::<VersionOnly>(msg).map_or(0, |v| v.version)
}

/// Write the pushed file (`Some`) or remove it (`None`; already gone is fine).
fn set_pushed(path: &Path, text: Option<&str>) -> Result<(), ManageError> {
    match text {
        Some(t) => write_atomic(path, t.as_bytes()),
        None => match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(ManageError::File {
                path: path.to_path_buf(),
                source,
            }),
        },
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
    fn secrets_in_a_pushed_config_need_a_tls_broker_or_the_running_configs_consent() {
        let text = |extra: &str, token: &str, url: &str| {
            format!(
                "[platform]\nurl = \"http://127.0.0.1:1\"\nlot_code = \"350\"\n{token}\n\n[space]\ntotal = 10\n\n[mqtt]\nurl = \"{url}\"\n\n[management]\nhmac_key_file = \"/etc/lotlink/push.key\"\n{extra}\n"
            )
        };
        let cfg = |t: String| config::from_str(Path::new("t.toml"), &t).expect("valid");
        let inline = "token = \"a-real-token-0123\"";
        let by_file = "token_file = \"/etc/lotlink/token\"";
        let plain = cfg(text("", by_file, "mqtt://127.0.0.1:1883"));
        let why =
            push_policy(&plain, &cfg(text("", inline, "mqtt://127.0.0.1:1883"))).expect("refused");
        assert!(
            why.contains("platform.token") && why.contains("plain"),
            "{why}"
        );
        assert!(!why.contains("a-real-token"), "{why}");
        assert_eq!(
            push_policy(&plain, &cfg(text("", by_file, "mqtt://127.0.0.1:1883"))),
            None
        );
        let allowed = cfg(text(
            "allow_plaintext_secrets = true",
            by_file,
            "mqtt://127.0.0.1:1883",
        ));
        assert_eq!(
            push_policy(&allowed, &cfg(text("", inline, "mqtt://127.0.0.1:1883"))),
            None
        );
        let tls = cfg(text("", by_file, "mqtts://127.0.0.1:8883"));
        assert_eq!(
            push_policy(&tls, &cfg(text("", inline, "mqtts://127.0.0.1:8883"))),
            None
        );
        let keyless = text("", by_file, "mqtt://127.0.0.1:1883")
            .replace("hmac_key_file = \"/etc/lotlink/push.key\"", "");
        let why = push_policy(&plain, &cfg(keyless)).expect("refused");
        assert!(why.contains("hmac_key_file"), "{why}");
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
            pushed_path(&p),
            dir.path().join("lotlink.pushed.toml"),
            "beside the local file and its state file, never the local file itself"
        );
    }
}
