//! Layers around the routes: the query and handshake rates, and releasing hyper's read buffer.

use axum::{
    body::Bytes,
    extract::State,
    http::HeaderValue,
    response::{IntoResponse, Response},
};

use super::AppState;
use crate::error::AppError;

/// Applies `QUERY_RATE` to a client's cluster queries: beyond it, `429` with a JSON error and `Retry-After`.
/// The client is the connection's peer address (every client of a proxy in front shares the proxy's).
pub(super) async fn limit_queries(
    State(s): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(limit) = &s.query_limit {
        let client = req
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |c| c.0.ip());
        if let Err(wait) = limit.check(client) {
            s.metrics.queries_refused.inc();
            let retry_after = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return AppError::TooManyQueries {
                retry_after: retry_after.max(1),
            }
            .into_response();
        }
    }
    next.run(req).await
}

/// Applies the handshake rate to requests that would open an Engine.IO session (no `sid`): `429` with a JSON
/// error and `Retry-After`. socket.io clients see a `connect_error` and retry with back-off.
pub async fn limit_sessions(
    State(node): State<crate::realtime::NodeInfo>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path();
    // engineioxide serves `/socket.io` with and without the trailing slash.
    let engine_io = path == "/socket.io" || path.starts_with("/socket.io/");
    let opens_session = engine_io
        && !req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p.starts_with("sid=")));
    if opens_session && let Err(refused) = node.admission.new_session() {
        let reason = crate::telemetry::metrics::Reason {
            reason: refused.kind(),
        };
        node.metrics.handshakes_refused.get_or_create(&reason).inc();
        return AppError::from(refused).into_response();
    }
    next.run(req).await
}

/// Copies the request line and headers out of hyper's connection read buffer.
///
/// hyper parses them zero-copy, as slices of the connection's read buffer (8-16 KiB), and socketioxide keeps the
/// handshake request's parts for the socket's whole life: without this, every websocket pins a read buffer it
/// will never use again (BENCHMARKS.md, memory). The copies share one allocation, not one per value.
pub async fn detach_head(req: axum::extract::Request) -> axum::extract::Request {
    let (mut parts, body) = req.into_parts();
    let uri = parts.uri.to_string();
    let mut copy =
        Vec::with_capacity(uri.len() + parts.headers.values().map(|v| v.len()).sum::<usize>());
    copy.extend_from_slice(uri.as_bytes());
    for value in parts.headers.values() {
        copy.extend_from_slice(value.as_bytes());
    }
    let copy = Bytes::from(copy);
    if let Ok(uri) = axum::http::Uri::from_maybe_shared(copy.slice(..uri.len())) {
        parts.uri = uri;
    }
    // The router records the URI as it arrived, before any middleware runs.
    if let Some(original) = parts.extensions.get_mut::<axum::extract::OriginalUri>() {
        original.0 = parts.uri.clone();
    }
    let mut at = uri.len();
    for value in parts.headers.values_mut() {
        let end = at + value.len();
        if let Ok(mut detached) = HeaderValue::from_maybe_shared(copy.slice(at..end)) {
            detached.set_sensitive(value.is_sensitive());
            *value = detached;
        }
        at = end;
    }
    axum::extract::Request::from_parts(parts, body)
}
