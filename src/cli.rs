//! The command line: `run`, `check-config`, `send`, `demo`, and the operator commands
//! (`status`, `dead …`, `space set`) that talk to the running daemon through its status
//! address. `main.rs` parses and calls [`execute`]; everything here returns an exit code
//! instead of exiting.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::app;
use crate::clock::Clock;
use crate::config::{self, ConfigError};
use crate::hardware;
use crate::protocol::{Client, Cmd};

/// Where the daemon's config lives by default.
pub const DEFAULT_CONFIG: &str = "/etc/lotlink/lotlink.toml";

/// lotlink: parking-lot edge gateway for the 并州行 platform.
#[derive(Debug, Parser)]
#[command(name = "lotlink", version, about)]
#[command(after_help = EXIT_CODES)]
pub struct Cli {
    /// More log output: -v debug, -vv trace (instead of `[log] level`; RUST_LOG wins over both).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Less log output: -q warnings and errors only, -qq errors only.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub quiet: u8,
    #[command(subcommand)]
    pub command: Command,
}

/// The exit codes, as `--help` and the man page list them.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success (status --check: healthy)
  1  failure: the command did not do what was asked (status --check: degraded)
  2  usage error: unknown command or option, bad value
  3  the daemon is not running (nothing answers at its status address)

The config file is -c/--config, else $LOTLINK_CONFIG, else /etc/lotlink/lotlink.toml.";

/// Exit code: success.
pub const EXIT_OK: i32 = 0;
/// Exit code: the command failed (or `status --check`: degraded).
pub const EXIT_FAILED: i32 = 1;
/// Exit code: a usage error (clap uses it for bad command lines too).
pub const EXIT_USAGE: i32 = 2;
/// Exit code: the daemon is not running.
pub const EXIT_NOT_RUNNING: i32 = 3;

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the daemon).
    Run {
        /// Configuration file.
        #[arg(short = 'c', long, env = "LOTLINK_CONFIG", default_value = DEFAULT_CONFIG)]
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
        #[arg(short = 'c', long, env = "LOTLINK_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Send one signed request and print the platform's answer (a connectivity test).
    Send {
        /// Which request.
        what: SendWhat,
        /// Configuration file.
        #[arg(short = 'c', long, env = "LOTLINK_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// For `space`: the free spaces to report (default: the running daemon's count; exit 3
        /// when it is not running).
        #[arg(long)]
        surplus: Option<u64>,
    },
    /// Show the running daemon's status (platform, outbox, spaces, drivers).
    Status {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
        /// For monitoring scripts: print the problems (if any) and exit 0 when healthy,
        /// 1 when degraded, 3 when the daemon is not running.
        #[arg(long)]
        check: bool,
        /// The daemon's status address (default: `[status] listen` of the config, or
        /// http://127.0.0.1:9870 when the config cannot be read, e.g. as a non-root user).
        #[arg(long)]
        url: Option<String>,
        /// Configuration file (for the status address).
        #[arg(short = 'c', long, env = "LOTLINK_CONFIG", default_value = DEFAULT_CONFIG)]
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
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    Completions {
        /// The shell.
        shell: Shell,
    },
    /// Print the man page (roff) on stdout.
    Man,
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
        #[arg(short = 'c', long, env = "LOTLINK_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

/// `lotlink dead …`.
#[derive(Debug, Subcommand)]
pub enum DeadCommand {
    /// List the dead letters (records the platform refused for good).
    List {
        /// Configuration file (for the status address).
        #[arg(short = 'c', long, env = "LOTLINK_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Put a dead letter (or `all`) back into the outbox for upload.
    Retry {
        /// A dead letter id, or `all`.
        which: String,
        /// Configuration file (for the status address).
        #[arg(short = 'c', long, env = "LOTLINK_CONFIG", default_value = DEFAULT_CONFIG)]
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
        #[arg(short = 'c', long, env = "LOTLINK_CONFIG", default_value = DEFAULT_CONFIG)]
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
        #[arg(short = 'c', long, env = "LOTLINK_CONFIG", default_value = DEFAULT_CONFIG)]
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
        } => send(what, &config, surplus).await,
        Command::Status {
            json,
            check,
            url,
            config,
        } => operator::status(&config, url.as_deref(), json, check).await,
        #[cfg(feature = "gen-assets")]
        Command::Completions { shell } => {
            print!("{}", completions(shell));
            Ok(EXIT_OK)
        }
        #[cfg(feature = "gen-assets")]
        Command::Man => {
            std::io::Write::write_all(&mut std::io::stdout(), &man_page())
                .map_err(|e| CliError::Other(format!("stdout: {e}")))?;
            Ok(EXIT_OK)
        }
        #[cfg(not(feature = "gen-assets"))]
        Command::Completions { .. } | Command::Man => {
            eprintln!("{NO_GEN_ASSETS}");
            Ok(2)
        }
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

/// A shell `lotlink completions` writes for (the names and order of clap_complete's own
/// `Shell`, so the generated scripts do not change; plain comments on the variants, as doc
/// comments would become help text in the scripts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    // bash
    Bash,
    // elvish
    Elvish,
    // fish
    Fish,
    // PowerShell
    #[value(name = "powershell")]
    PowerShell,
    // zsh
    Zsh,
}

/// What `completions` and `man` say in a build without the `gen-assets` feature (exit 2).
#[cfg(not(feature = "gen-assets"))]
pub const NO_GEN_ASSETS: &str = "lotlink completions and lotlink man are not in this build: the \
packaged lotlink (the .deb, built without default features) installs the completion scripts \
and the man page as files (`man lotlink`). Generate them from a source checkout with \
`scripts/gen-completions` (the `gen-assets` feature is on by default).";

/// The completion script for `shell`.
#[cfg(feature = "gen-assets")]
pub fn completions(shell: Shell) -> String {
    use clap::CommandFactory;
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Elvish => clap_complete::Shell::Elvish,
        Shell::Fish => clap_complete::Shell::Fish,
        Shell::PowerShell => clap_complete::Shell::PowerShell,
        Shell::Zsh => clap_complete::Shell::Zsh,
    };
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "lotlink", &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The man page, roff.
#[cfg(feature = "gen-assets")]
pub fn man_page() -> Vec<u8> {
    use clap::CommandFactory;
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = clap_mangen::Man::new(Cli::command()).render(&mut out);
    out
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
                // Asked of the running daemon: an operator command never opens (and so
                // never creates) the outbox, which the service owns.
                None => match operator::daemon_free(path).await? {
                    Ok(free) => free,
                    Err(code) => {
                        eprintln!("cannot learn the free spaces from the daemon; pass --surplus N");
                        return Ok(code);
                    }
                },
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

    use super::{CliError, DeadCommand, EXIT_FAILED, EXIT_NOT_RUNNING, EXIT_OK};
    use crate::config;

    /// Where the daemon's status endpoint is, and the bearer token it wants.
    pub struct Target {
        base: String,
        token: Option<config::Secret>,
    }

    /// The status address `[status] listen` has by default.
    pub const DEFAULT_STATUS: &str = "127.0.0.1:9870";

    /// From `--url`, else the config's `[status]`; a config that cannot be read (a user
    /// who may not read /etc/lotlink) falls back to the default address, saying so.
    pub fn address(path: &Path, url: Option<&str>) -> Result<Target, CliError> {
        // The config in effect: a pushed one may have moved the status address.
        let cfg = match crate::manage::load_in_effect(path) {
            Ok(effect) => Some(effect.config),
            Err(config::ConfigError::Read { .. }) if url.is_some() => None,
            Err(e @ config::ConfigError::Read { .. }) => {
                eprintln!(
                    "{e}; trying the default status address {DEFAULT_STATUS} (or give --url)"
                );
                None
            }
            Err(e) if url.is_some() => {
                eprintln!("note: {e}");
                None
            }
            Err(e) => return Err(e.into()),
        };
        let token = cfg
            .as_ref()
            .and_then(|c| c.status.token.clone())
            .or_else(|| {
                std::env::var("LOTLINK_STATUS_TOKEN")
                    .ok()
                    .filter(|t| !t.is_empty())
                    .map(config::Secret::new)
            });
        let base = match (url, &cfg) {
            (Some(u), _) => {
                let u = u.trim_end_matches('/');
                if u.contains("://") {
                    u.to_string()
                } else {
                    format!("http://{u}")
                }
            }
            (None, Some(cfg)) => {
                let mut addr: SocketAddr = cfg.status.listen;
                if addr.ip().is_unspecified() {
                    addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                format!("http://{addr}")
            }
            (None, None) => format!("http://{DEFAULT_STATUS}"),
        };
        Ok(Target { base, token })
    }

    /// GET or POST; `Err(code)` when the daemon cannot be reached or refused.
    pub async fn call(target: &Target, path: &str, body: Option<Value>) -> Result<Value, i32> {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| {
                eprintln!("http client: {e}");
                EXIT_FAILED
            })?;
        let base = &target.base;
        let url = format!("{base}{path}");
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
                eprintln!("lotlink is not running (nothing answers at {base}, the [status] listen address)");
                return Err(EXIT_NOT_RUNNING);
            }
            Err(e) => {
                eprintln!("{base}: {}", e.without_url());
                return Err(EXIT_FAILED);
            }
        };
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() {
            Ok(v)
        } else {
            let why = v["error"]
                .as_str()
                .map_or_else(|| text.trim().to_string(), str::to_string);
            eprintln!("{status}: {why}");
            Err(EXIT_FAILED)
        }
    }

    fn show(v: &Value, key: &str) -> String {
        match &v[key] {
            Value::Null => "-".into(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }

    /// "12:04:31, 8 s ago" (local time; the date too when not today).
    pub fn when(ms: Option<i64>, now_ms: i64) -> String {
        use chrono::TimeZone;
        let Some(ms) = ms.filter(|m| *m > 0) else {
            return "never".into();
        };
        let Some(t) = chrono::Local.timestamp_millis_opt(ms).single() else {
            return "-".into();
        };
        let now = chrono::Local
            .timestamp_millis_opt(now_ms)
            .single()
            .unwrap_or(t);
        let clock = if t.date_naive() == now.date_naive() {
            t.format("%H:%M:%S").to_string()
        } else {
            t.format("%Y-%m-%d %H:%M:%S").to_string()
        };
        format!("{clock}, {}", ago(now_ms - ms))
    }

    /// "8 s ago", "37 min ago", "3 h 12 min ago" ("in the future" for a clock ahead).
    pub fn ago(ms: i64) -> String {
        if ms < 0 {
            return "in the future".into();
        }
        let d = std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
        format!("{} ago", lotlink_drivers::outage::human_duration(d))
    }

    /// A duration in seconds as people say it.
    fn secs(v: &Value) -> String {
        v.as_u64().map_or_else(
            || "-".into(),
            |s| lotlink_drivers::outage::human_duration(std::time::Duration::from_secs(s)),
        )
    }

    /// Bytes as B, KiB, MiB or GiB.
    pub fn size(v: &Value) -> String {
        let Some(b) = v.as_u64() else {
            return "-".into();
        };
        let f = b as f64;
        if b < 1024 {
            format!("{b} B")
        } else if b < 1 << 20 {
            format!("{:.1} KiB", f / 1024.0)
        } else if b < 1 << 30 {
            format!("{:.1} MiB", f / f64::from(1u32 << 20))
        } else {
            format!("{:.2} GiB", f / f64::from(1u32 << 30))
        }
    }

    /// `text` padded with spaces to `width` terminal columns (CJK characters take two).
    pub fn pad(text: &str, width: usize) -> String {
        let w = unicode_width::UnicodeWidthStr::width(text);
        format!("{text}{}", " ".repeat(width.saturating_sub(w)))
    }

    /// Rows as columns aligned by display width; the last column is not padded.
    pub fn table(rows: &[Vec<String>]) -> String {
        let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..cols)
            .map(|c| {
                rows.iter()
                    .filter_map(|r| r.get(c))
                    .map(|t| unicode_width::UnicodeWidthStr::width(t.as_str()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for r in rows {
            let mut line = String::new();
            for (i, cell) in r.iter().enumerate() {
                if i + 1 == r.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&pad(cell, widths[i]));
                    line.push_str("  ");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    pub async fn status(
        path: &Path,
        url: Option<&str>,
        raw: bool,
        check: bool,
    ) -> Result<i32, CliError> {
        let target = address(path, url)?;
        let v = match call(&target, "/status", None).await {
            Ok(v) => v,
            Err(code) => return Ok(code),
        };
        let healthy = v["healthy"].as_bool().unwrap_or(false);
        let code = if healthy { EXIT_OK } else { EXIT_FAILED };
        if check {
            if healthy {
                println!("ok");
            } else {
                for p in v["problems"].as_array().map_or(&[][..], Vec::as_slice) {
                    println!("{}", p.as_str().unwrap_or_default());
                }
            }
            return Ok(code);
        }
        if raw {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            return Ok(EXIT_OK);
        }
        print!("{}", render_status(&v));
        Ok(EXIT_OK)
    }

    /// The human form of a `/status` document.
    pub fn render_status(v: &Value) -> String {
        use std::fmt::Write as _;
        let now = v["taken_ms"]
            .as_i64()
            .unwrap_or_else(crate::clock::Clock::local_ms);
        let (p, o, s) = (&v["platform"], &v["outbox"], &v["spaces"]);
        let mut out = format!(
            "lotlink {}  up {}  config {}\n",
            show(v, "version"),
            secs(&v["uptime_s"]),
            show(v, "config_hash")
        );
        if v["healthy"] == true {
            out.push_str("health     ok\n");
        } else {
            for (i, prob) in v["problems"]
                .as_array()
                .map_or(&[][..], Vec::as_slice)
                .iter()
                .enumerate()
            {
                let label = if i == 0 {
                    "health     degraded: "
                } else {
                    "                     "
                };
                let _ = writeln!(out, "{label}{}", prob.as_str().unwrap_or_default());
            }
        }
        let mgmt = &v["management"];
        if let Some(file) = mgmt["config_file"].as_str() {
            let _ = writeln!(out, "config file in effect: {file}");
        }
        if mgmt["enabled"] == true {
            let last = &mgmt["last_result"];
            let _ = writeln!(
                out,
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
        let reach = if p["reachable"] == true {
            "reachable"
        } else {
            "NOT reachable"
        };
        let mut rows = vec![
            vec![
                "platform".to_string(),
                reach.to_string(),
                format!("last success {}", when(p["last_success_ms"].as_i64(), now)),
                format!("delivered {}", show(p, "delivered")),
            ],
            vec![
                String::new(),
                format!("clock offset {} ms", show(p, "clock_offset_ms")),
                format!(
                    "last error {}",
                    if p["last_error"].is_null() {
                        "-".to_string()
                    } else {
                        format!(
                            "{} {}",
                            show(&p["last_error"], "code"),
                            show(&p["last_error"], "message")
                        )
                    }
                ),
                format!("fault {}", show(p, "fault")),
            ],
            vec![
                "outbox".to_string(),
                format!("pending {}", show(o, "pending")),
                format!(
                    "oldest {}",
                    o["oldest_age_s"]
                        .as_i64()
                        .map_or_else(|| "-".into(), |s| ago(s * 1000))
                ),
                format!(
                    "records {}  on disk {}  dead letters {}",
                    size(&o["bytes"]),
                    size(&o["size_on_disk"]),
                    show(o, "dead_letters")
                ),
            ],
            vec![
                "spaces".to_string(),
                format!("free {}", show(s, "free")),
                format!("occupied {}", show(s, "occupied")),
                format!("total {}", show(s, "total")),
            ],
        ];
        out.push_str(&table(&rows));
        out.push('\n');
        rows = vec![vec![
            "driver".into(),
            "kind".into(),
            "state".into(),
            "last heard".into(),
            "events".into(),
            "bad".into(),
            "last problem".into(),
        ]];
        for d in v["drivers"].as_array().map_or(&[][..], Vec::as_slice) {
            rows.push(vec![
                show(d, "name"),
                show(d, "kind"),
                if d["connected"] == true {
                    "connected"
                } else {
                    "disconnected"
                }
                .into(),
                when(d["last_heard_ms"].as_i64(), now),
                show(d, "events"),
                show(d, "bad_inputs"),
                show(d, "last_problem"),
            ]);
        }
        out.push_str(&table(&rows));
        out
    }

    pub async fn dead(cmd: DeadCommand) -> Result<i32, CliError> {
        match cmd {
            DeadCommand::List { config } => {
                let addr = address(&config, None)?;
                match call(&addr, "/api/dead", None).await {
                    Ok(v) => {
                        let list = v.as_array().map_or(&[][..], Vec::as_slice);
                        if list.is_empty() {
                            println!("no dead letters");
                            return Ok(EXIT_OK);
                        }
                        let mut rows = vec![vec![
                            "id".to_string(),
                            "plate".into(),
                            "dir".into(),
                            "time".into(),
                            "lane".into(),
                            "reason".into(),
                        ]];
                        for d in list {
                            rows.push(vec![
                                show(d, "id"),
                                show(d, "carNo"),
                                show(d, "inOutType"),
                                show(d, "inOutTime"),
                                show(d, "nodeName"),
                                show(d, "reason"),
                            ]);
                        }
                        print!("{}", table(&rows));
                        Ok(EXIT_OK)
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
                            eprintln!("{which:?}: give a dead letter id or `all`");
                            return Ok(super::EXIT_USAGE);
                        }
                    }
                };
                let addr = address(&config, None)?;
                match call(&addr, "/api/dead/retry", Some(body)).await {
                    Ok(v) => {
                        let n = v["retried"].as_array().map_or(0, Vec::len);
                        println!("{n} dead letter(s) put back for upload");
                        Ok(EXIT_OK)
                    }
                    Err(code) => Ok(code),
                }
            }
            DeadCommand::Drop { id, yes, config } => {
                let addr = address(&config, None)?;
                if !yes {
                    eprint!("drop dead letter {id} for good? [y/N] ");
                    let mut answer = String::new();
                    let _ = std::io::stdin().read_line(&mut answer);
                    if !matches!(answer.trim(), "y" | "Y" | "yes") {
                        eprintln!("not dropped");
                        return Ok(EXIT_FAILED);
                    }
                }
                match call(&addr, "/api/dead/drop", Some(json!({ "id": id }))).await {
                    Ok(_) => {
                        println!("dead letter {id} dropped");
                        Ok(EXIT_OK)
                    }
                    Err(code) => Ok(code),
                }
            }
        }
    }

    pub async fn space_set(path: &Path, occupied: u64) -> Result<i32, CliError> {
        let addr = address(path, None)?;
        match call(&addr, "/api/space", Some(json!({ "occupied": occupied }))).await {
            Ok(v) => {
                println!(
                    "occupied {} of {}: {} free (reported to the platform)",
                    show(&v, "occupied"),
                    show(&v, "total"),
                    show(&v, "free")
                );
                Ok(EXIT_OK)
            }
            Err(code) => Ok(code),
        }
    }

    /// The free spaces the running daemon counts (for `send space` without `--surplus`).
    pub async fn daemon_free(path: &Path) -> Result<Result<u64, i32>, CliError> {
        let target = address(path, None)?;
        Ok(match call(&target, "/status", None).await {
            Ok(v) => v["spaces"]["free"].as_u64().ok_or(EXIT_FAILED),
            Err(code) => Err(code),
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn columns_line_up_by_display_width_with_chinese_names() {
            let t = table(&[
                vec!["driver".into(), "kind".into()],
                vec!["出口1".into(), "serial".into()],
                vec!["entry".into(), "mqtt".into()],
            ]);
            let lines: Vec<&str> = t.lines().collect();
            let col = |l: &str| {
                let i = l
                    .find("serial")
                    .or_else(|| l.find("mqtt"))
                    .or_else(|| l.find("kind"));
                unicode_width::UnicodeWidthStr::width(&l[..i.unwrap_or(0)])
            };
            assert_eq!(col(lines[0]), col(lines[1]), "{t}");
            assert_eq!(col(lines[1]), col(lines[2]), "{t}");
        }

        #[test]
        fn sizes_and_ages_read_as_people_say_them() {
            assert_eq!(size(&json!(512)), "512 B");
            assert_eq!(size(&json!(1536)), "1.5 KiB");
            assert_eq!(size(&json!(5 * 1024 * 1024)), "5.0 MiB");
            assert_eq!(ago(8_000), "8 s ago");
            assert_eq!(ago(37 * 60_000), "37 min ago");
            let now = chrono::Local::now().timestamp_millis();
            assert!(when(Some(now - 8_000), now).ends_with(", 8 s ago"));
            assert_eq!(when(None, now), "never");
        }
    }
}
