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

mod operator;

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
