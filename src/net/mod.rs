//! Transport plumbing: TLS configuration, the limits on connections that are not requests yet, and the shutdown
//! signal.

pub mod files;
pub mod nodelay;
pub mod pending;
pub mod shutdown;
pub mod tls;
