//! The `socket-identity` binary: parse the config, set up logging, bind, run until a signal.

use std::process::ExitCode;

use clap::Parser;
use socket_identity::{Config, net::shutdown, run, telemetry::logging};

/// jemalloc rather than glibc's malloc: after a burst (a room of 5,000 filled with presence events on) glibc kept
/// about 28 KiB per socket of freed memory for good; jemalloc returns unused pages within its decay time (~20 s).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let config = Config::parse();
    let runtime = match runtime(config.worker_threads) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(config))
}

/// `WORKER_THREADS=1` gets tokio's single-threaded scheduler: no work stealing, no wakeups across threads.
fn runtime(threads: Option<u16>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n.into());
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all().build()
}

async fn serve(mut config: Config) -> ExitCode {
    logging::init(config.log_format, config.node_id());
    let threads = tokio::runtime::Handle::current().metrics().num_workers();
    tracing::info!("running on {threads} worker thread(s)");
    release_idle_memory();
    let listener = match socket_identity::listen(&config) {
        Ok(l) => l,
        Err(e) => {
            let addr = std::net::SocketAddr::new(config.bind, config.port);
            tracing::error!(error = %e, "cannot listen on {addr}");
            return ExitCode::FAILURE;
        }
    };
    match run(config, listener, shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            ExitCode::FAILURE
        }
    }
}

/// jemalloc purges freed pages only when the allocating threads call into it, so an idle node would keep what its
/// last burst freed: its background thread purges on a timer instead.
fn release_idle_memory() {
    #[cfg(not(target_env = "msvc"))]
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!(error = %e, "memory freed after a burst is returned to the system only on later allocations");
    }
}
