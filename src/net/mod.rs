//! Transport plumbing: TLS configuration and the shutdown signal.

pub mod shutdown;
pub mod tls;
