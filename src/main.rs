//! The `lotlink` binary: parse the command line, set up logging ([`lotlink::logging`]) and
//! TLS, call the library.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    tune_malloc();
    // One TLS provider for the whole process (ring: no C library beyond what ring builds).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = lotlink::cli::Cli::parse();
    let default_level = match cli.command {
        lotlink::cli::Command::Demo { .. } => lotlink::LogLevel::Warn,
        _ => lotlink::LogLevel::Info,
    };
    lotlink::logging::init(
        lotlink::logging::level_from_flags(cli.verbose, cli.quiet),
        default_level,
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let code = rt.block_on(lotlink::cli::execute(cli))?;
    drop(rt);
    std::process::exit(code);
}

/// glibc raises its mmap threshold each time a large block is freed, so after a while the
/// store's 512 KiB log buffers come from the heap and their memory is never given back
/// (measured: RSS 38 MB → 102 MB in 24 s of draining a 100,000-record backlog). A fixed
/// threshold keeps large buffers in their own mappings, returned on free (RSS then stays
/// at 29–49 MB). And glibc gives each thread that allocates under contention an arena of
/// its own (up to 8 per core), each keeping freed memory apart: two are plenty for a
/// gateway's load. musl and other targets do not need either.
#[allow(unsafe_code)]
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
