//! The command line: `run`, `check-config`, `send`, `demo`, and the operator commands
//! (`status`, `dead …`, `space set`) that talk to the running daemon through its status
//! address. `main.rs` parses and calls [`execute`]; everything here returns an exit code
//! instead of exiting.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::app;
use crate::config::{self, ConfigError};
use crate::hardware;
use crate::outbox::{Outbox, OutboxOptions};
use crate::protocol::{Client, Clock, Cmd};

/// Where the daemon's config lives by default.
pub const DEFAULT_CONFIG: &str = "/etc/lotlink/lotlink.toml";

/// lotlink: parking-lot edge gateway for the 并州行 platform.
#[derive(Debug, Parser)]
#[command(name = "lotlink", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the daemon).
    Run {
        /// Configuration file.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// After a local change of `[outbox] path`: start on the new path even though the
        /// old store still holds pending records. They stay on disk, untouched, and are NOT
        /// uploaded; needed once (the new path is recorded).
        #[arg(long)]
        abandon_old_outbox: bool,
    },
    /// Validate a configuration file: prints "ok" or every problem; exit 0 or 1.
    CheckConfig {
        /// Configuration file.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Send one signed request and print the platform's answer (a connectivity test).
    Send {
        /// Which request.
        what: SendWhat,
        /// Configuration file.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// For `space`: the free spaces to report (default: from the outbox's occupied count).
        #[arg(long)]
        surplus: Option<u64>,
    },
    /// Show the running daemon's status (platform, outbox, spaces, drivers).
    Status {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
        /// Configuration file (for the status address).
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Dead letters of the running daemon.
    #[command(subcommand)]
    Dead(DeadCommand),
    /// The running daemon's space count.
    #[command(subcommand)]
    Space(SpaceCommand),
    /// The outbox on disk.
    #[command(subcommand)]
    Outbox(OutboxCommand),
    /// Shrink an image as the gateway would before upload and say what it did (for checking a
    /// camera's images; `--repeat` times it).
    Shrink {
        /// A JPEG or PNG file. Without one, a generated 1920x1080 photo-like JPEG.
        file: Option<PathBuf>,
        /// Write the result here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Shrink this many times and print the median time.
        #[arg(long, default_value_t = 1)]
        repeat: u32,
    },
    /// Push a config to one or many gateways over the site broker and print each outcome
    /// (exit 0 applied/unchanged, 1 rejected/rolled back, 2 no answer in time).
    Push(crate::fleet::PushArgs),
    /// List the gateways on the site broker from their retained status (exit 1 if one is
    /// offline or stale).
    Fleet(crate::fleet::FleetArgs),
    /// Run the real pipeline against an in-process platform simulator and simulated lanes
    /// (builds with the `demo` feature only, the default for `cargo run`; not the .deb).
    Demo {
        /// Stop after this long (e.g. "40s"); default: run until Ctrl-C.
        #[arg(long)]
        duration: Option<String>,
        /// Seconds between plates per lane.
        #[arg(long, default_value = "2s")]
        interval: String,
        /// Platform up for this long, then offline for `outage`, repeating.
        #[arg(long, default_value = "20s")]
        online: String,
        /// How long each platform outage lasts.
        #[arg(long, default_value = "10s")]
        outage: String,
    },
}

/// `lotlink outbox …`.
#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// List what the outbox moved aside: sled index files it could not open, damaged log
    /// ranges, a whole store whose log could not be read. Reads only; never creates the store.
    Aside {
        /// Configuration file (for `[outbox] path`).
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

/// `lotlink dead …`.
#[derive(Debug, Subcommand)]
pub enum DeadCommand {
    /// List the dead letters (records the platform refused for good).
    List {
        /// Configuration file (for the status address).
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Put a dead letter (or `all`) back into the outbox for upload.
    Retry {
        /// A dead letter id, or `all`.
        which: String,
        /// Configuration file (for the status address).
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Delete a dead letter for good.
    Drop {
        /// The dead letter id.
        id: u64,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        /// Configuration file (for the status address).
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

/// `lotlink space …`.
#[derive(Debug, Subcommand)]
pub enum SpaceCommand {
    /// Re-base the occupied count (after counting the lot by hand).
    Set {
        /// Vehicles in the lot now.
        #[arg(long)]
        occupied: u64,
        /// Configuration file (for the status address).
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

/// The request `send` makes.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SendWhat {
    Heartbeat,
    Space,
}

/// Errors of the CLI.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Fleet(#[from] crate::fleet::FleetError),
    #[error(transparent)]
    App(#[from] app::AppError),
    #[error(transparent)]
    Hardware(#[from] hardware::HardwareError),
    #[error(transparent)]
    Daemon(#[from] crate::daemon::DaemonError),
    #[cfg(feature = "demo")]
    #[error(transparent)]
    Demo(#[from] crate::demo::DemoError),
    #[error("{0}")]
    Other(String),
}

/// Resolves on Ctrl-C or SIGTERM. The handlers are installed when this is called, not when
/// the future is first polled: a SIGTERM while the daemon is still starting (systemd
/// stopping it right away) then stops it cleanly once it has started, instead of killing
/// it halfway through. Call it inside the runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            if term.is_none() && int.is_none() {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
            tokio::select! {
                () = wait(term) => {}
                () = wait(int) => {}
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Run a command; the exit code.
/// `lotlink outbox aside`: one line per thing moved aside; exit 0 (nothing is also fine).
fn outbox_aside(path: &std::path::Path) -> Result<i32, CliError> {
    let cfg = config::load(path)?;
    let items = crate::outbox::moved_aside(&cfg.outbox.path);
    if items.is_empty() {
        println!("nothing moved aside in {}", cfg.outbox.path.display());
    }
    for a in items {
        println!("{}\t{}\t{} bytes", a.what, a.path.display(), a.bytes);
    }
    Ok(0)
}

pub async fn execute(cli: Cli) -> Result<i32, CliError> {
    match cli.command {
        Command::CheckConfig { config } => Ok(check_config(&config)),
        Command::Run {
            config,
            abandon_old_outbox,
        } => {
            crate::daemon::run(
                &config,
                crate::daemon::DaemonOptions {
                    abandon_old_outbox,
                    ..crate::daemon::DaemonOptions::default()
                },
                shutdown_signal(),
            )
            .await?;
            Ok(0)
        }
        Command::Send {
            what,
            config,
            surplus,
        } => {
            // `send space` may open (and so create) the outbox: keep its files private.
            crate::daemon::private_umask();
            send(what, &config, surplus).await
        }
        Command::Status { json, config } => operator::status(&config, json).await,
        Command::Dead(cmd) => operator::dead(cmd).await,
        Command::Space(SpaceCommand::Set { occupied, config }) => {
            operator::space_set(&config, occupied).await
        }
        Command::Outbox(OutboxCommand::Aside { config }) => outbox_aside(&config),
        Command::Push(args) => Ok(crate::fleet::push(args).await?),
        Command::Fleet(args) => Ok(crate::fleet::fleet(args).await?),
        Command::Shrink { file, out, repeat } => shrink(file.as_deref(), out.as_deref(), repeat),
        Command::Demo {
            duration,
            interval,
            online,
            outage,
        } => demo(duration, interval, online, outage).await,
    }
}

/// `demo`, in a build with the `demo` feature (the default for `cargo run`).
#[cfg(feature = "demo")]
async fn demo(
    duration: Option<String>,
    interval: String,
    online: String,
    outage: String,
) -> Result<i32, CliError> {
    let p = |s: &str| config::parse_duration(s).map_err(CliError::Other);
    let opts = crate::demo::DemoOptions {
        duration: duration.as_deref().map(p).transpose()?,
        interval: p(&interval)?,
        online: p(&online)?,
        outage: p(&outage)?,
    };
    crate::daemon::private_umask();
    Ok(crate::demo::run(opts, shutdown_signal()).await?)
}

/// What `lotlink demo` says in a build without the platform simulator (the packaged binary).
pub const NO_DEMO: &str = "lotlink demo is not in this build: the packaged lotlink (the .deb, \
built without default features) leaves the platform simulator out. Run the demo from a source \
checkout with `cargo run --release -- demo` (the `demo` feature is on by default), or build \
with `cargo build --release --features demo`.";

/// `demo` in a build without the `demo` feature: say how to get it, exit code 2.
#[cfg(not(feature = "demo"))]
#[allow(clippy::unused_async, clippy::needless_pass_by_value)] // same signature as the real one
async fn demo(
    _duration: Option<String>,
    _interval: String,
    _online: String,
    _outage: String,
) -> Result<i32, CliError> {
    eprintln!("{NO_DEMO}");
    Ok(2)
}

/// `shrink`: [`crate::imaging::prepare`] on a file, timed.
fn shrink(
    file: Option<&std::path::Path>,
    out: Option<&std::path::Path>,
    repeat: u32,
) -> Result<i32, CliError> {
    use crate::imaging::{self, MAX_B64_CHARS};
    let input = match file {
        Some(path) => std::fs::read(path)
            .map_err(|e| CliError::Other(format!("cannot read {}: {e}", path.display())))?,
        None => imaging::synth_jpeg(1920, 1080, 42, 90),
    };
    let mut times = Vec::new();
    let mut prepared = None;
    for _ in 0..repeat.max(1) {
        let start = std::time::Instant::now();
        prepared = Some(imaging::prepare(&input, MAX_B64_CHARS));
        times.push(start.elapsed());
    }
    times.sort();
    let Some(prepared) = prepared else {
        return Ok(1);
    };
    println!(
        "{} bytes in: {}; {} bytes out = {} Base64 chars (budget {MAX_B64_CHARS}); median {:.1} ms of {}",
        input.len(),
        prepared.action,
        prepared.bytes.len(),
        imaging::b64_len(prepared.bytes.len()),
        times[times.len() / 2].as_secs_f64() * 1e3,
        times.len()
    );
    if let Some(path) = out {
        std::fs::write(path, &prepared.bytes)
            .map_err(|e| CliError::Other(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(i32::from(matches!(
        prepared.action,
        imaging::ImageAction::Placeholder { .. }
    )))
}

/// `check-config`: print "ok" or every problem.
pub fn check_config(path: &std::path::Path) -> i32 {
    match config::load(path) {
        Ok(_) => {
            println!("ok");
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

async fn send(
    what: SendWhat,
    path: &std::path::Path,
    surplus: Option<u64>,
) -> Result<i32, CliError> {
    let cfg = config::load(path)?;
    let token = config::resolve_token(&cfg.platform.token).map_err(CliError::Other)?;
    let client = Client::new(
        &cfg.platform,
        token,
        std::sync::Arc::new(Clock::default()),
        None,
    )
    .map_err(app::AppError::from)?;
    let (cmd, data) = match what {
        SendWhat::Heartbeat => (Cmd::Heartbeat, None),
        SendWhat::Space => {
            let total = u64::from(cfg.space.total);
            let surplus = match surplus {
                Some(s) => s,
                None => {
                    let path = cfg.outbox.path.clone();
                    let occupied = tokio::task::spawn_blocking(move || {
                        Outbox::open(
                            &path,
                            OutboxOptions {
                                cache_capacity: 1 << 20,
                                ..OutboxOptions::default()
                            },
                        )
                        .ok()
                        .and_then(|(ob, _)| ob.settings().space_occupied().ok().flatten())
                    })
                    .await
                    .map_err(|e| CliError::Other(e.to_string()))?;
                    match occupied {
                        Some(o) => total.saturating_sub(o),
                        None => {
                            return Err(CliError::Other(
                                "cannot read the occupied count from the outbox (is the daemon running?); pass --surplus N".into(),
                            ))
                        }
                    }
                }
            };
            if surplus > total {
                return Err(CliError::Other(format!(
                    "--surplus {surplus} is more than space.total {total}"
                )));
            }
            (
                Cmd::ParkSpace,
                Some(format!(
                    "{{\"totalSpace\":{total},\"surplusSpace\":{surplus}}}"
                )),
            )
        }
    };
    println!(
        "POST {}{} (cmd {}, lotCode {})",
        cfg.platform.url,
        cmd.path(),
        cmd.name(),
        cfg.platform.lot_code
    );
    let r = client.call(cmd, data.as_deref()).await;
    println!("answer: {}", crate::uploader::describe(&r));
    if client.clock().is_learned() {
        println!(
            "clock offset to the platform: {} ms",
            client.clock().offset_ms()
        );
    }
    Ok(match r {
        Ok(rep) if rep.verdict == crate::protocol::Verdict::Success => 0,
        _ => 1,
    })
}

/// The operator commands: HTTP to the daemon's status address.
mod operator {
    use std::net::SocketAddr;
    use std::path::Path;

    use serde_json::{json, Value};

    use super::{CliError, DeadCommand};
    use crate::config;

    /// Exit code when the daemon is not running.
    pub const NOT_RUNNING: i32 = 2;

    /// Where the daemon's status endpoint is, and the bearer token it wants.
    struct Target {
        addr: SocketAddr,
        token: Option<config::Secret>,
    }

    fn address(path: &Path) -> Result<Target, CliError> {
        // The config in effect: a pushed one may have moved the status address.
        let cfg = crate::manage::load_in_effect(path)?.config;
        let mut addr = cfg.status.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        Ok(Target {
            addr,
            token: cfg.status.token,
        })
    }

    /// GET or POST; `Err(code)` when the daemon cannot be reached or refused.
    async fn call(target: &Target, path: &str, body: Option<Value>) -> Result<Value, i32> {
        let addr = target.addr;
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| {
                eprintln!("http client: {e}");
                1
            })?;
        let url = format!("http://{addr}{path}");
        let mut req = match body {
            Some(b) => client.post(&url).json(&b),
            None => client.get(&url),
        };
        if let Some(t) = &target.token {
            req = req.bearer_auth(t.expose());
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) if e.is_connect() => {
                eprintln!("lotlink is not running (nothing answers at {addr}, the [status] listen address)");
                return Err(NOT_RUNNING);
            }
            Err(e) => {
                eprintln!("{addr}: {}", e.without_url());
                return Err(1);
            }
        };
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            Ok(v)
        } else {
            eprintln!(
                "{status}: {}",
                v["error"].as_str().unwrap_or("request refused")
            );
            Err(1)
        }
    }

    fn show(v: &Value, key: &str) -> String {
        match &v[key] {
            Value::Null => "-".into(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }

    pub async fn status(path: &Path, raw: bool) -> Result<i32, CliError> {
        let addr = address(path)?;
        let v = match call(&addr, "/status", None).await {
            Ok(v) => v,
            Err(code) => return Ok(code),
        };
        if raw {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            return Ok(0);
        }
        let (p, o, s) = (&v["platform"], &v["outbox"], &v["spaces"]);
        println!(
            "lotlink {}  up {} s  config {}",
            show(&v, "version"),
            show(&v, "uptime_s"),
            show(&v, "config_hash")
        );
        let mgmt = &v["management"];
        if let Some(file) = mgmt["config_file"].as_str() {
            println!("config file in effect: {file}");
        }
        if mgmt["enabled"] == true {
            let last = &mgmt["last_result"];
            println!(
                "management connected {}  config version {}  last push {}",
                show(mgmt, "connected"),
                show(mgmt, "config_version"),
                if last.is_null() {
                    "-".to_string()
                } else {
                    format!(
                        "v{} {} ({})",
                        show(last, "version"),
                        show(last, "outcome"),
                        show(last, "reason")
                    )
                }
            );
        }
        println!(
            "platform   last success {}  last error {}  fault {}  clock offset {} ms  ts {}  delivered {}",
            show(p, "last_success_ms"),
            if p["last_error"].is_null() { "-".to_string() } else { format!("{} {}", show(&p["last_error"], "code"), show(&p["last_error"], "message")) },
            show(p, "fault"),
            show(p, "clock_offset_ms"),
            show(p, "ts_unit"),
            show(p, "delivered"),
        );
        println!(
            "outbox     pending {}  oldest {} s  bytes {}  on disk {}  dead letters {}",
            show(o, "pending"),
            show(o, "oldest_age_s"),
            show(o, "bytes"),
            show(o, "size_on_disk"),
            show(o, "dead_letters")
        );
        println!(
            "spaces     total {}  occupied {}  free {}",
            show(s, "total"),
            show(s, "occupied"),
            show(s, "free")
        );
        println!(
            "{:<40} {:<16} {:<10} {:>11} {:>8} {:>8}  last problem",
            "driver", "kind", "connected", "last heard", "events", "bad"
        );
        let now_ms = crate::protocol::Clock::local_ms();
        for d in v["drivers"].as_array().map_or(&[][..], Vec::as_slice) {
            let heard = match d["last_heard_ms"].as_i64() {
                Some(ms) if ms > 0 => format!("{} s ago", (now_ms - ms).max(0) / 1000),
                _ => "never".to_string(),
            };
            println!(
                "{:<40} {:<16} {:<10} {:>11} {:>8} {:>8}  {}",
                show(d, "name"),
                show(d, "kind"),
                show(d, "connected"),
                heard,
                show(d, "events"),
                show(d, "bad_inputs"),
                show(d, "last_problem")
            );
        }
        Ok(0)
    }

    pub async fn dead(cmd: DeadCommand) -> Result<i32, CliError> {
        match cmd {
            DeadCommand::List { config } => {
                let addr = address(&config)?;
                match call(&addr, "/api/dead", None).await {
                    Ok(v) => {
                        let list = v.as_array().map_or(&[][..], Vec::as_slice);
                        if list.is_empty() {
                            println!("no dead letters");
                        }
                        for d in list {
                            println!(
                                "{:>8}  {:<10} {:<4} {}  {}  reason: {}",
                                show(d, "id"),
                                show(d, "carNo"),
                                show(d, "inOutType"),
                                show(d, "inOutTime"),
                                show(d, "nodeName"),
                                show(d, "reason")
                            );
                        }
                        Ok(0)
                    }
                    Err(code) => Ok(code),
                }
            }
            DeadCommand::Retry { which, config } => {
                let body = if which == "all" {
                    json!({ "all": true })
                } else {
                    match which.parse::<u64>() {
                        Ok(id) => json!({ "id": id }),
                        Err(_) => {
                            return Err(CliError::Other(format!(
                                "{which:?}: give a dead letter id or `all`"
                            )))
                        }
                    }
                };
                let addr = address(&config)?;
                match call(&addr, "/api/dead/retry", Some(body)).await {
                    Ok(v) => {
                        let n = v["retried"].as_array().map_or(0, Vec::len);
                        println!("{n} dead letter(s) put back for upload");
                        Ok(0)
                    }
                    Err(code) => Ok(code),
                }
            }
            DeadCommand::Drop { id, yes, config } => {
                let addr = address(&config)?;
                if !yes {
                    eprint!("drop dead letter {id} for good? [y/N] ");
                    let mut answer = String::new();
                    let _ = std::io::stdin().read_line(&mut answer);
                    if !matches!(answer.trim(), "y" | "Y" | "yes") {
                        eprintln!("not dropped");
                        return Ok(1);
                    }
                }
                match call(&addr, "/api/dead/drop", Some(json!({ "id": id }))).await {
                    Ok(_) => {
                        println!("dead letter {id} dropped");
                        Ok(0)
                    }
                    Err(code) => Ok(code),
                }
            }
        }
    }

    pub async fn space_set(path: &Path, occupied: u64) -> Result<i32, CliError> {
        let addr = address(path)?;
        match call(&addr, "/api/space", Some(json!({ "occupied": occupied }))).await {
            Ok(v) => {
                println!(
                    "occupied {} of {}: {} free (reported to the platform)",
                    show(&v, "occupied"),
                    show(&v, "total"),
                    show(&v, "free")
                );
                Ok(0)
            }
            Err(code) => Ok(code),
        }
    }
}
