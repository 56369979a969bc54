//! `lotlink push` and `lotlink fleet`: the operator's side of config push, over the site
//! broker the gateways already use (no server of our own).
//!
//! ```text
//! lotlink push --broker mqtt://host:1883 --lot TY0350 [--lot …] [--lots-file FILE]
//!              --key-file /etc/lotlink/push.key [--version N] [--timeout 120s]
//!              [--prefix lotlink/{lot_code}] (NEW.toml | --revert)
//! lotlink fleet --broker mqtt://host:1883 [--prefix lotlink] [--stale 5m] [--json]
//! ```
//!
//! **push**: for every lot, `{lot_code}` in NEW.toml is replaced by the lot's code, and the
//! text is validated as `lotlink check-config` does ([`crate::config::load`]; a problem
//! with a file the config names on the gateway — `token_file`, `ca_file` — is shown as a
//! note, since that file is on the gateway, not here). Any other problem for any lot: exit 1
//! before anything is published. Then, over one broker connection: the retained
//! `{prefix}/status` of every lot is read (the version is its `config_version` + 1 unless
//! `--version`), the signed push ([`crate::push::push_hmac`]) is published QoS 1 to
//! `{prefix}/config/set`, and the answer on `{prefix}/config/result` with that version is
//! printed, one line per lot, as it comes. Exit 0 when every lot answered `applied` or
//! `unchanged`, 1 when one answered `rejected` or `rolled_back` (and all answered), 2 when
//! the broker or a gateway does not answer within `--timeout` (a push to a gateway that is
//! offline stays queued at the broker for its session and is handled when it connects).
//!
//! **fleet**: reads every retained `{prefix}/+/status` and prints one row per gateway.
//! Exit 0 when every one is online and its status fresher than `--stale`, 1 when one is
//! offline or stale (or none is found), 2 when the broker does not answer.
//!
//! Retained messages come after the broker's SUBACK; to know they are all in, the command
//! also subscribes to a topic of its own and publishes one message there: the broker sends
//! it after what it queued before (one connection is delivered in order).
//!
//! Broker credentials: `--username`/`--password`, or `LOTLINK_MQTT_USERNAME` /
//! `LOTLINK_MQTT_PASSWORD` (better: a flag shows in `ps`). `mqtts://` uses the system's
//! roots or `--ca-file`. Incoming messages wait in a queue of 1024; when it is full the
//! connection is not read (the broker holds the rest), nothing is dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lotlink_drivers::mqtt::MqttSettings;
use rumqttc::{AsyncClient, Event, Packet, QoS, SubscribeFilter, SubscribeReasonCode};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::clock::Clock;
use crate::config::{self, ConfigError, TokenSource};
use crate::push::{push_hmac, PushTarget};

/// Exit code: every gateway answered well / all online.
pub(crate) const OK: i32 = 0;
/// Exit code: a push was refused or rolled back / a gateway is offline or stale; also a
/// local problem (invalid file, unreadable key) before anything is published.
pub(crate) const REFUSED: i32 = 1;
/// Exit code: the broker or a gateway did not answer in time.
pub(crate) const NO_ANSWER: i32 = 2;

/// Problems found before anything is sent (all exit 1).
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// A bad argument.
    #[error("{0}")]
    Usage(String),
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The config file does not validate.
    #[error("{0}")]
    Invalid(String),
}

/// How to reach the site broker.
#[derive(Debug, clap::Args)]
pub struct BrokerArgs {
    /// The site broker: mqtt://host[:1883] or mqtts://host[:8883].
    #[arg(long)]
    pub broker: String,
    /// User name at the broker (default: $LOTLINK_MQTT_USERNAME).
    #[arg(long)]
    pub username: Option<String>,
    /// Password at the broker (default: $LOTLINK_MQTT_PASSWORD, which does not show in `ps`).
    #[arg(long)]
    pub password: Option<String>,
    /// PEM file of the CA that signed an mqtts:// broker's certificate (default: system roots).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
}

/// `lotlink push`.
#[derive(Debug, clap::Args)]
pub struct PushArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// A lot code to push to; repeat for several lots.
    #[arg(long = "lot")]
    pub lots: Vec<String>,
    /// A file of lot codes, one a line (blank lines and `#` comments skipped).
    #[arg(long)]
    pub lots_file: Option<PathBuf>,
    /// The push key: a file whose first line is the gateways' `[management]` key.
    #[arg(long)]
    pub key_file: PathBuf,
    /// The push version (default: each gateway's config_version from its retained status, plus one).
    #[arg(long)]
    pub version: Option<u64>,
    /// How long to wait for the answers (the gateways' watch window included).
    #[arg(long, default_value = "120s")]
    pub timeout: String,
    /// The gateways' `[management] topic_prefix`; `{lot_code}` is replaced.
    #[arg(long, default_value = "lotlink/{lot_code}")]
    pub prefix: String,
    /// Go back to each gateway's local config file (removes its pushed config).
    #[arg(long, conflicts_with = "file")]
    pub revert: bool,
    /// The new config (TOML); `{lot_code}` in it is replaced by each lot's code.
    #[arg(required_unless_present = "revert")]
    pub file: Option<PathBuf>,
}

/// `lotlink fleet`.
#[derive(Debug, clap::Args)]
pub struct FleetArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Topic prefix above the lot codes (statuses are read from `{prefix}/+/status`).
    #[arg(long, default_value = "lotlink")]
    pub prefix: String,
    /// A status older than this counts as stale (gateways refresh it every minute).
    #[arg(long, default_value = "5m")]
    pub stale: String,
    /// Print a JSON array for scripts.
    #[arg(long)]
    pub json: bool,
    /// How long to wait for the broker.
    #[arg(long, default_value = "10s")]
    pub timeout: String,
}

fn duration(name: &str, s: &str) -> Result<Duration, FleetError> {
    config::parse_duration(s).map_err(|e| FleetError::Usage(format!("--{name} {s:?}: {e}")))
}

/// `mqtt://host[:port]` / `mqtts://host[:port]` → (tls, host, port).
pub(crate) fn parse_broker_url(url: &str) -> Result<(bool, String, u16), String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else {
        return Err(format!(
            "{url:?}: write mqtt://host:port or mqtts://host:port"
        ));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') => match p.parse::<u16>() {
            Ok(p) if p > 0 => (h, p),
            _ => return Err(format!("{url:?}: {p:?} is not a port number")),
        },
        _ => (rest, if tls { 8883 } else { 1883 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(['/', '@']) {
        return Err(format!(
            "{url:?}: write mqtt://host:port (credentials go in --username/--password)"
        ));
    }
    Ok((tls, host.to_string(), port))
}

/// The lots of `--lot` and `--lots-file`, in order, each once.
pub(crate) fn lots_of(lots: &[String], file_text: Option<&str>) -> Vec<String> {
    let mut all: Vec<String> = Vec::new();
    let from_file = file_text
        .unwrap_or("")
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim());
    for lot in lots.iter().map(|l| l.trim()).chain(from_file) {
        if !lot.is_empty() && !all.iter().any(|l| l == lot) {
            all.push(lot.to_string());
        }
    }
    all
}

// ---------------------------------------------------------------------------------------
// The broker connection
// ---------------------------------------------------------------------------------------

enum Ev {
    Connected,
    SubAck(Vec<SubscribeReasonCode>),
    Msg(String, Vec<u8>),
    Failed(String),
}

struct Session {
    client: AsyncClient,
    rx: mpsc::Receiver<Ev>,
    task: tokio::task::JoinHandle<()>,
    sync_topic: String,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Session {
    /// Connect; `Err` says why (the broker refused, or did not answer by `deadline`).
    async fn connect(b: &BrokerArgs, deadline: Instant) -> Result<Session, String> {
        let (tls, host, port) = parse_broker_url(&b.broker)?;
        let id = format!(
            "lotlink-cli-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let settings = MqttSettings {
            host,
            port,
            tls: tls.then(|| b.ca_file.clone()),
            client_id: id.clone(),
            username: b
                .username
                .clone()
                .or_else(|| std::env::var("LOTLINK_MQTT_USERNAME").ok()),
            password: b
                .password
                .clone()
                .or_else(|| std::env::var("LOTLINK_MQTT_PASSWORD").ok()),
            max_packet: 1 << 20,
            keep_alive: Duration::from_secs(30),
        };
        let mut opts = lotlink_drivers::mqtt::options(&settings).map_err(|e| e.to_string())?;
        opts.set_clean_session(true).set_manual_acks(false);
        let (client, mut events) = AsyncClient::new(opts, 64);
        let (tx, rx) = mpsc::channel(1024);
        let task = tokio::spawn(async move {
            loop {
                let ev = match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => Ev::Connected,
                    Ok(Event::Incoming(Packet::SubAck(s))) => Ev::SubAck(s.return_codes),
                    Ok(Event::Incoming(Packet::Publish(p))) => Ev::Msg(p.topic, p.payload.to_vec()),
                    Ok(_) => continue,
                    Err(e) => {
                        let _ = tx.send(Ev::Failed(e.to_string())).await;
                        return;
                    }
                };
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
        });
        let mut s = Session {
            client,
            rx,
            task,
            sync_topic: format!("lotlink-cli/{id}/sync"),
        };
        match s.next(deadline).await {
            Some(Ev::Connected) => Ok(s),
            Some(Ev::Failed(e)) => Err(format!("{}: {e}", b.broker)),
            _ => Err(format!("{}: the broker did not answer in time", b.broker)),
        }
    }

    async fn next(&mut self, deadline: Instant) -> Option<Ev> {
        tokio::time::timeout_at(deadline, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Subscribe to `filters` and return every retained message they hold.
    async fn retained(
        &mut self,
        filters: &[String],
        deadline: Instant,
    ) -> Result<Vec<(String, Vec<u8>)>, String> {
        let subs = filters
            .iter()
            .chain(std::iter::once(&self.sync_topic))
            .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
        self.client
            .subscribe_many(subs)
            .await
            .map_err(|e| e.to_string())?;
        let mut got = Vec::new();
        loop {
            match self.next(deadline).await {
                Some(Ev::SubAck(codes)) => {
                    if codes.contains(&SubscribeReasonCode::Failure) {
                        return Err("the broker refused a subscription (its ACL must let this user read {prefix}/status and {prefix}/config/result)".into());
                    }
                    break;
                }
                Some(Ev::Msg(t, p)) => got.push((t, p)),
                Some(Ev::Failed(e)) => return Err(e),
                Some(Ev::Connected) => {}
                None => return Err("the broker did not answer in time".into()),
            }
        }
        self.client
            .publish(self.sync_topic.clone(), QoS::AtLeastOnce, false, "sync")
            .await
            .map_err(|e| e.to_string())?;
        loop {
            match self.next(deadline).await {
                Some(Ev::Msg(t, _)) if t == self.sync_topic => return Ok(got),
                Some(Ev::Msg(t, p)) => got.push((t, p)),
                Some(Ev::Failed(e)) => return Err(e),
                Some(_) => {}
                None => return Err("the broker did not answer in time".into()),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// push
// ---------------------------------------------------------------------------------------

/// Problems that name a file on the gateway: not checkable on the operator's machine.
const GATEWAY_FILES: [&str; 3] = ["platform.token_file", "platform.ca_file", "mqtt.ca_file"];

/// Validate the text pushed to `lot` exactly as `check-config` would (a file at `path`).
/// `Ok(notes)`: valid but for gateway-side files; `Err(message)`: every problem.
fn validate(path: &Path, text: &str, original: &str, lot: &str) -> Result<Vec<String>, String> {
    let substituted = text != original;
    let loaded = if substituted {
        // `{lot_code}` was replaced: check the lot's text as a file of the same name.
        let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
        let name = path.file_name().unwrap_or(std::ffi::OsStr::new("new.toml"));
        let tmp = dir.path().join(name);
        std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
        config::load(&tmp).map_err(|e| renamed(e, path))
    } else {
        config::load(path)
    };
    let for_lot = |m: String| {
        if substituted {
            format!("lot {lot}: {m}")
        } else {
            m
        }
    };
    match loaded {
        Ok(cfg) if cfg.platform.lot_code != lot => Err(format!(
            "{}: platform.lot_code is {:?} but the push is for lot {lot}: the gateway would report as another lot (write lot_code = \"{{lot_code}}\" to push one file to many lots)",
            path.display(),
            cfg.platform.lot_code
        )),
        Ok(_) => Ok(Vec::new()),
        Err(ConfigError::Invalid(errs))
            if errs
                .problems
                .iter()
                .all(|p| GATEWAY_FILES.contains(&p.key.as_str())) =>
        {
            Ok(errs
                .to_string()
                .lines()
                .map(|l| for_lot(format!("{l} (a file on the gateway: checked there)")))
                .collect())
        }
        Err(e) => Err(for_lot(e.to_string())),
    }
}

/// A config error about the temporary file, naming the operator's `path` instead.
// A read error is shown as it is.
fn renamed(e: ConfigError, path: &Path) -> ConfigError {
    match e {
        ConfigError::Invalid(mut errs) => {
            errs.path = Some(path.to_path_buf());
            ConfigError::Invalid(errs)
        }
        read @ ConfigError::Read { .. } => read,
    }
}

/// One lot's push.
struct Job {
    lot: String,
    prefix: String,
    text: String,
    version: Option<u64>,
    answer: Option<Value>,
}

/// The exit code for a set of answers (`None`: no answer).
pub(crate) fn push_exit_code<'a>(outcomes: impl IntoIterator<Item = Option<&'a str>>) -> i32 {
    let mut code = OK;
    for o in outcomes {
        code = code.max(match o {
            Some("applied" | "unchanged") => OK,
            Some(_) => REFUSED,
            None => NO_ANSWER,
        });
    }
    code
}

/// `lotlink push`: the exit code.
pub(crate) async fn push(args: PushArgs) -> Result<i32, FleetError> {
    let timeout = duration("timeout", &args.timeout)?;
    let deadline = Instant::now() + timeout;
    let lots_text = match &args.lots_file {
        Some(p) => Some(
            std::fs::read_to_string(p).map_err(|source| FleetError::Read {
                path: p.clone(),
                source,
            })?,
        ),
        None => None,
    };
    let lots = lots_of(&args.lots, lots_text.as_deref());
    if lots.is_empty() {
        return Err(FleetError::Usage(
            "no lot: give --lot CODE (repeatable) or --lots-file FILE".into(),
        ));
    }
    let original = match &args.file {
        Some(p) => std::fs::read_to_string(p).map_err(|source| FleetError::Read {
            path: p.clone(),
            source,
        })?,
        None => String::new(),
    };
    let mut jobs = Vec::new();
    let mut problems = Vec::new();
    for lot in &lots {
        let text = original.replace("{lot_code}", lot);
        if let Some(path) = &args.file {
            match validate(path, &text, &original, lot) {
                Ok(notes) => {
                    for n in notes {
                        eprintln!("note: {n}");
                    }
                }
                Err(e) => problems.push(e),
            }
        }
        jobs.push(Job {
            lot: lot.clone(),
            prefix: args.prefix.replace("{lot_code}", lot),
            text,
            version: args.version,
            answer: None,
        });
    }
    if !problems.is_empty() {
        problems.dedup();
        return Err(FleetError::Invalid(format!(
            "{}\nnothing was pushed",
            problems.join("\n")
        )));
    }
    let key = config::resolve_token(&TokenSource::File(args.key_file.clone()))
        .map_err(|e| FleetError::Usage(format!("--key-file: {e}")))?;

    let mut session = match Session::connect(&args.broker, deadline).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return Ok(NO_ANSWER);
        }
    };
    let filters: Vec<String> = jobs
        .iter()
        .flat_map(|j| {
            [
                format!("{}/status", j.prefix),
                format!("{}/config/result", j.prefix),
            ]
        })
        .collect();
    let retained = match session.retained(&filters, deadline).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{}: {e}", args.broker.broker);
            return Ok(NO_ANSWER);
        }
    };
    for job in &mut jobs {
        let topic = format!("{}/status", job.prefix);
        let status = retained
            .iter()
            .rev()
            .filter(|(t, _)| *t == topic)
            .find_map(|(_, p)| serde_json::from_slice::<Value>(p).ok());
        if job.version.is_none() {
            job.version = status
                .as_ref()
                .and_then(|s| s["config_version"].as_u64())
                .map(|v| v + 1);
        }
        let Some(version) = job.version else {
            println!(
                "{:<12} no answer     no retained status with a config_version on {topic} (the gateway never connected to this broker, or another --prefix): give --version",
                job.lot
            );
            continue;
        };
        if status.as_ref().is_some_and(|s| s["online"] == false) {
            eprintln!(
                "note: {} is offline: v{version} waits at the broker until it connects",
                job.lot
            );
        }
        let target = PushTarget {
            lot_code: &job.lot,
            prefix: &job.prefix,
        };
        let hmac = push_hmac(
            key.expose().as_bytes(),
            target,
            version,
            args.revert,
            &job.text,
        );
        let msg = if args.revert {
            json!({"version": version, "revert": true, "hmac": hmac})
        } else {
            json!({"version": version, "config": job.text, "hmac": hmac})
        };
        if let Err(e) = session
            .client
            .publish(
                format!("{}/config/set", job.prefix),
                QoS::AtLeastOnce,
                false,
                msg.to_string(),
            )
            .await
        {
            eprintln!("{}: {e}", args.broker.broker);
            return Ok(NO_ANSWER);
        }
    }
    // Answers, as they come.
    while jobs
        .iter()
        .any(|j| j.version.is_some() && j.answer.is_none())
    {
        match session.next(deadline).await {
            Some(Ev::Msg(topic, payload)) => {
                let Ok(v) = serde_json::from_slice::<Value>(&payload) else {
                    continue;
                };
                let Some(job) = jobs.iter_mut().find(|j| {
                    j.answer.is_none()
                        && topic == format!("{}/config/result", j.prefix)
                        && j.version.is_some()
                        && v["version"].as_u64() == j.version
                }) else {
                    continue;
                };
                println!(
                    "{:<12} {:<12} v{}  {}",
                    job.lot,
                    v["outcome"].as_str().unwrap_or("?"),
                    v["version"],
                    v["reason"].as_str().unwrap_or("")
                );
                job.answer = Some(v);
            }
            Some(Ev::Failed(e)) => {
                eprintln!("{}: connection lost: {e}", args.broker.broker);
                break;
            }
            Some(_) => {}
            None => break,
        }
    }
    for job in jobs.iter().filter(|j| j.answer.is_none()) {
        if let Some(v) = job.version {
            println!(
                "{:<12} no answer     v{v}: nothing on {}/config/result within {} (it stays queued at the broker for the gateway's session)",
                job.lot,
                job.prefix,
                humantime::format_duration(timeout)
            );
        }
    }
    let _ = session.client.disconnect().await;
    Ok(push_exit_code(jobs.iter().map(|j| {
        j.answer.as_ref().and_then(|a| a["outcome"].as_str())
    })))
}

// ---------------------------------------------------------------------------------------
// fleet
// ---------------------------------------------------------------------------------------

/// One gateway as `fleet` shows it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row {
    pub lot: String,
    pub online: bool,
    /// Online, but its status is older than `--stale`.
    pub stale: bool,
    pub config_version: Option<u64>,
    pub outbox_pending: Option<u64>,
    pub oldest_pending_s: Option<u64>,
    /// Unix seconds.
    pub last_platform_success: Option<i64>,
    pub version: Option<String>,
    /// Age of the status message, seconds (when it says when it was sent).
    pub age_s: Option<i64>,
}

impl Row {
    /// A row from a retained status message at `now_ms`.
    pub(crate) fn from_status(lot: &str, v: &Value, now_ms: i64, stale: Duration) -> Row {
        let online = v["online"] == true;
        let age_s = v["taken_ms"].as_i64().map(|t| (now_ms - t).max(0) / 1000);
        let stale_s = i64::try_from(stale.as_secs()).unwrap_or(i64::MAX);
        Row {
            lot: lot.to_string(),
            online,
            stale: online && age_s.is_some_and(|a| a > stale_s),
            config_version: v["config_version"].as_u64(),
            outbox_pending: v["outbox_depth"].as_u64(),
            oldest_pending_s: v["oldest_pending_s"].as_u64(),
            last_platform_success: v["last_platform_success_ms"]
                .as_i64()
                .filter(|ms| *ms > 0)
                .map(|ms| ms / 1000),
            version: v["version"].as_str().map(str::to_string),
            age_s,
        }
    }

    /// The `--json` object.
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "lot": self.lot,
            "online": self.online,
            "stale": self.stale,
            "config_version": self.config_version,
            "outbox_pending": self.outbox_pending,
            "oldest_pending_s": self.oldest_pending_s,
            "last_platform_success": self.last_platform_success,
            "version": self.version,
        })
    }
}

/// "8 s", "5 min", "3 h 12 min", "2 d 4 h".
pub(crate) fn human_age(s: i64) -> String {
    let s = s.max(0);
    match s {
        0..=119 => format!("{s} s"),
        120..=3599 => format!("{} min", s / 60),
        3600..=86_399 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// The table `fleet` prints.
pub(crate) fn table(rows: &[Row], now_ms: i64) -> String {
    use std::fmt::Write;
    let mut out = format!(
        "{:<14} {:<16} {:>7} {:>8} {:>10}  {:<32} {}\n",
        "LOT", "ONLINE", "CONFIG", "PENDING", "OLDEST", "LAST PLATFORM SUCCESS", "LOTLINK"
    );
    for r in rows {
        let online = match (r.online, r.stale) {
            (false, _) => "OFFLINE".to_string(),
            (true, true) => format!("STALE ({} old)", human_age(r.age_s.unwrap_or(0))),
            (true, false) => "yes".to_string(),
        };
        let last = r.last_platform_success.map_or_else(
            || "never".to_string(),
            |s| {
                let local = chrono::DateTime::from_timestamp(s, 0).map_or_else(
                    || s.to_string(),
                    |t| {
                        t.with_timezone(&chrono::Local)
                            .format("%Y-%m-%d %H:%M:%S")
                            .to_string()
                    },
                );
                format!("{local} ({} ago)", human_age(now_ms / 1000 - s))
            },
        );
        let _ = writeln!(
            out,
            "{:<14} {:<16} {:>7} {:>8} {:>10}  {:<32} {}",
            r.lot,
            online,
            r.config_version
                .map_or_else(|| "-".into(), |v| format!("v{v}")),
            opt(r.outbox_pending),
            r.oldest_pending_s.map_or_else(
                || "-".into(),
                |s| human_age(i64::try_from(s).unwrap_or(i64::MAX))
            ),
            last,
            r.version.as_deref().unwrap_or("-")
        );
    }
    out
}

/// `lotlink fleet`: the exit code.
pub(crate) async fn fleet(args: FleetArgs) -> Result<i32, FleetError> {
    let stale = duration("stale", &args.stale)?;
    let timeout = duration("timeout", &args.timeout)?;
    let deadline = Instant::now() + timeout;
    let prefix = args.prefix.trim_end_matches('/').to_string();
    let mut session = match Session::connect(&args.broker, deadline).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return Ok(NO_ANSWER);
        }
    };
    let filter = format!("{prefix}/+/status");
    let retained = match session
        .retained(std::slice::from_ref(&filter), deadline)
        .await
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{}: {e}", args.broker.broker);
            return Ok(NO_ANSWER);
        }
    };
    let _ = session.client.disconnect().await;
    let now = Clock::local_ms();
    let mut rows = BTreeMap::new();
    for (topic, payload) in retained {
        let Some(lot) = topic
            .strip_prefix(&format!("{prefix}/"))
            .and_then(|t| t.strip_suffix("/status"))
        else {
            continue;
        };
        let v = serde_json::from_slice::<Value>(&payload).unwrap_or(Value::Null);
        rows.insert(lot.to_string(), Row::from_status(lot, &v, now, stale));
    }
    let rows: Vec<Row> = rows.into_values().collect();
    if args.json {
        let list: Vec<Value> = rows.iter().map(Row::to_json).collect();
        println!("{}", Value::Array(list));
    } else if rows.is_empty() {
        eprintln!("no gateway status on {filter}");
    } else {
        print!("{}", table(&rows, now));
    }
    Ok(
        if rows.is_empty() || rows.iter().any(|r| !r.online || r.stale) {
            REFUSED
        } else {
            OK
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_parse_like_the_mqtt_section() {
        assert_eq!(
            parse_broker_url("mqtt://10.0.0.5"),
            Ok((false, "10.0.0.5".into(), 1883))
        );
        assert_eq!(
            parse_broker_url("mqtts://broker.site:8884/"),
            Ok((true, "broker.site".into(), 8884))
        );
        assert_eq!(
            parse_broker_url("mqtts://[::1]"),
            Ok((true, "::1".into(), 8883))
        );
        assert!(parse_broker_url("http://x").is_err());
        assert!(parse_broker_url("mqtt://user:pw@x:1883").is_err());
        assert!(parse_broker_url("mqtt://x:0").is_err());
    }

    #[test]
    fn lots_come_from_flags_and_the_file_in_order_each_once() {
        let file = "# site A\nTY0351\n\nTY0350  # again\nTY0352\n";
        assert_eq!(
            lots_of(&["TY0350".into(), " TY0351 ".into()], Some(file)),
            vec!["TY0350", "TY0351", "TY0352"]
        );
        assert!(lots_of(&[], Some("# none\n")).is_empty());
    }

    #[test]
    fn the_exit_code_is_the_worst_answer() {
        assert_eq!(push_exit_code([Some("applied"), Some("unchanged")]), OK);
        assert_eq!(
            push_exit_code([Some("applied"), Some("rolled_back")]),
            REFUSED
        );
        assert_eq!(push_exit_code([Some("rejected"), None]), NO_ANSWER);
        assert_eq!(push_exit_code([]), OK);
    }

    #[test]
    fn a_status_becomes_a_row_with_the_documented_json_fields() {
        let now = 1_764_600_000_000;
        let v = json!({"online": true, "version": "0.1.0", "config_version": 3, "outbox_depth": 12,
            "oldest_pending_s": 40, "last_platform_success_ms": now - 8_000, "taken_ms": now - 30_000});
        let r = Row::from_status("TY0350", &v, now, Duration::from_secs(300));
        assert!(r.online && !r.stale);
        let j = r.to_json();
        for key in [
            "lot",
            "online",
            "config_version",
            "outbox_pending",
            "oldest_pending_s",
            "last_platform_success",
            "version",
        ] {
            assert!(j.get(key).is_some(), "{key} in {j}");
        }
        assert_eq!(j["last_platform_success"], (now - 8_000) / 1000);
        assert_eq!(j["outbox_pending"], 12);
        let old = json!({"online": true, "taken_ms": now - 600_000});
        assert!(Row::from_status("X", &old, now, Duration::from_secs(300)).stale);
        let off = Row::from_status(
            "X",
            &json!({"online": false}),
            now,
            Duration::from_secs(300),
        );
        assert!(!off.online && off.to_json()["last_platform_success"].is_null());
        let t = table(&[r, off], now);
        assert!(
            t.contains("OFFLINE") && t.contains("(8 s ago)") && t.contains("v3"),
            "{t}"
        );
        assert_eq!(human_age(3 * 3600 + 12 * 60), "3 h 12 min");
    }
}
