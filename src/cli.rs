//! The command line: `run`, `check-config`, `send`, `demo`. `main.rs` parses and calls
//! [`execute`]; everything here returns an exit code instead of exiting.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::app::{self, RunOptions};
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
    /// Run the real pipeline against an in-process platform simulator and simulated lanes.
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
    App(#[from] app::AppError),
    #[error(transparent)]
    Hardware(#[from] hardware::HardwareError),
    #[error("{0}")]
    Other(String),
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Run a command; the exit code.
pub async fn execute(cli: Cli) -> Result<i32, CliError> {
    match cli.command {
        Command::CheckConfig { config } => Ok(check_config(&config)),
        Command::Run { config } => {
            let cfg = config::load(&config)?;
            let hw = hardware::build(&cfg)?;
            tracing::info!(drivers = ?hw, "drivers configured");
            app::run(&cfg, hw.drivers, RunOptions::default(), shutdown_signal()).await?;
            Ok(0)
        }
        Command::Send {
            what,
            config,
            surplus,
        } => send(what, &config, surplus).await,
        Command::Demo {
            duration,
            interval,
            online,
            outage,
        } => {
            let p = |s: &str| config::parse_duration(s).map_err(CliError::Other);
            let opts = crate::demo::DemoOptions {
                duration: duration.as_deref().map(p).transpose()?,
                interval: p(&interval)?,
                online: p(&online)?,
                outage: p(&outage)?,
            };
            crate::demo::run(opts, shutdown_signal()).await
        }
    }
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
                        .and_then(|(ob, _)| ob.setting("occupied").ok().flatten())
                        .and_then(|s| s.parse::<u64>().ok())
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
