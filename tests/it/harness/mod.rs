//! The integration tests' harness: a real `redis-server` (or Redis Cluster) on ports of its own ([`redis`]), real
//! node processes of the built binary ([`node`]), an HTTPS client that trusts the dev CA and loopback servers
//! ([`http`]), real socket.io-client sockets driven through `tests/js/driver.mjs` ([`clients`]), headless
//! Chromium ([`browser`]), a TCP proxy that cuts, refuses and moves connections ([`proxy`]), and the ports they all
//! listen on ([`ports`]).
//!
//! Everything started here is stopped on drop, by pid. Every wait is bounded. Node logs are kept in
//! `target/test-logs/<test>/` so a failing run can be read afterwards.

mod browser;
mod clients;
mod http;
mod js;
mod node;
mod ports;
mod proxy;
mod redis;

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    time::{Duration, Instant},
};

use serde_json::Value;

pub use self::{
    browser::*,
    clients::*,
    http::*,
    js::{JsServer, Receiver},
    node::*,
    ports::{free_port, free_ports},
    proxy::Proxy,
    redis::*,
};

pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");

pub fn root() -> &'static Path {
    Path::new(ROOT)
}

/// The log directories given out in this run.
static LOG_DIRS: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// A directory for this test's logs and artifacts, emptied. Each test has its own: tests run in parallel, and
/// one would empty another's.
pub fn log_dir(test: &str) -> PathBuf {
    let fresh = LOG_DIRS
        .lock()
        .unwrap()
        .get_or_insert_default()
        .insert(test.to_owned());
    assert!(fresh, "another test of this run has log directory {test}");
    let dir = root().join("target/test-logs").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn need(program: &str, hint: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{program} is not installed: {hint} (scripts/test.sh installs it)"
    );
}

/// Waits until `f` returns `Some`, polling every 20 ms, at most `limit`.
pub async fn eventually<T>(
    limit: Duration,
    what: &str,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Seconds since the Unix epoch, for token claims.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// An HS256 token of `claims`, signed with `secret`.
pub fn hs256(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}
