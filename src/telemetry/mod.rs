//! What the node tells its operators: `/metrics` and log lines.

pub mod logging;
pub mod metrics;
