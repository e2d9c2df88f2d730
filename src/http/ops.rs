//! What operators and balancers ask: `/health`, `/ready`, `/metrics`.

use std::sync::atomic::Ordering;

use axum::{
    Json,
    extract::State,
    http::header,
    response::{IntoResponse, Response},
};

use super::AppState;

pub(super) async fn health(State(s): State<AppState>) -> impl IntoResponse {
    Json(serde_json::json!({
        "status": "ok",
        "node": &*s.node,
        "mode": if s.cluster.is_some() { "cluster" } else { "single" },
        "sockets": s.admission.sockets(),
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

/// Readiness: 200 when this node can serve clients and answer for the whole cluster, 503 with the reason
/// otherwise (shutting down, Redis unreachable, a subscription down).
pub(super) async fn ready(State(s): State<AppState>) -> Response {
    let draining = s.draining.load(Ordering::Relaxed);
    let (redis, cluster_nodes, problem) = match &s.cluster {
        None => ("not used", None, None),
        Some(cluster) => match cluster.probe().await {
            Err(e) => ("down", None, Some(e)),
            Ok(n) => match &s.adapter_redis {
                Some(a) if !fred::prelude::ClientLike::is_connected(a) => (
                    "down",
                    Some(n),
                    Some("the adapter's subscription to Redis is down".to_owned()),
                ),
                _ => ("up", Some(n), None),
            },
        },
    };
    let problem = match draining {
        true => Some("shutting down".to_owned()),
        false => problem,
    };
    let status = match problem {
        None => axum::http::StatusCode::OK,
        Some(_) => axum::http::StatusCode::SERVICE_UNAVAILABLE,
    };
    let body = serde_json::json!({
        "ready": problem.is_none(),
        "node": &*s.node,
        "tls": s.tls,
        "redis": redis,
        "cluster_nodes": cluster_nodes,
        "sockets": s.admission.sockets(),
        "error": problem,
    });
    (status, [(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

pub(super) async fn metrics(State(s): State<AppState>) -> Response {
    let text = s.metrics.render(
        s.admission.sockets(),
        s.local.room_count(),
        s.cluster.as_ref().map_or(1, |c| c.size()),
    );
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
