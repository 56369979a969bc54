//! The `lotlink` binary: parse the command line, set up logging and TLS, call the library.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    // One TLS provider for the whole process (ring: no C library beyond what ring builds).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = lotlink::cli::Cli::parse();
    let default_level = match cli.command {
        lotlink::cli::Command::Demo { .. } => "warn",
        _ => "info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let code = rt.block_on(lotlink::cli::execute(cli))?;
    drop(rt);
    std::process::exit(code);
}
