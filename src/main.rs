//! The `socket-identity` binary: parse the config, set up logging, bind, run until a signal.

use std::process::ExitCode;

use clap::Parser;
use socket_identity::{Config, net::shutdown, run, telemetry::logging};

#[tokio::main]
async fn main() -> ExitCode {
    let mut config = Config::parse();
    logging::init(config.log_format, config.node_id());
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
