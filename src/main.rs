//! The `socket-identity` binary: parse the config, set up logging, bind, run until a signal.

use std::process::ExitCode;

use clap::Parser;
use socket_identity::{Config, net::shutdown, run, telemetry::logging};

/// jemalloc rather than glibc's malloc: after a burst (a room of 5,000 filled with presence events on) glibc kept
/// about 28 KiB per socket of freed memory for good; jemalloc returns unused pages within its decay time (~20 s).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let mut config = Config::parse();
    logging::init(config.log_format, config.node_id());
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
