//! `TCP_NODELAY` on every accepted connection.
//!
//! With Nagle's algorithm on, the small writes of a handshake (TLS records, the `101`, the Engine.IO open
//! packet) wait for the client's delayed ACK, 40 ms on Linux: every handshake took 44 ms instead of under one
//! (BENCHMARKS.md, "Tenancy"). Our writes are whole messages, so nothing is gained by coalescing them.

use axum_server::accept::Accept;
use tokio::net::TcpStream;

/// Sets `TCP_NODELAY`, then hands the connection to `inner`.
#[derive(Debug, Clone)]
pub struct NoDelay<A>(pub A);

impl<A, S> Accept<TcpStream, S> for NoDelay<A>
where
    A: Accept<TcpStream, S>,
{
    type Stream = A::Stream;
    type Service = A::Service;
    type Future = A::Future;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        self.0.accept(stream, service)
    }
}
