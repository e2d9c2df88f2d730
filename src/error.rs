//! Errors at the edges: start-up failures, and the one place where request errors become HTTP responses.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};

use crate::{redis::RedisError, tls::TlsError, validate::Invalid};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid NODE_ID: {0}")]
    NodeId(Invalid),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error("socket.io adapter: {0}")]
    Adapter(String),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// A request that cannot be served. Rendered as `{"error": "..."}` with a fitting status.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("invalid room: {0}")]
    BadRoom(Invalid),
    #[error("invalid room: the path is not valid percent-encoded UTF-8")]
    BadPath,
    #[error("not found")]
    NotFound,
    #[error(
        "the socket.io client bundle is not installed on this server (run scripts/fetch-client.sh)"
    )]
    ClientBundleMissing,
}

impl AppError {
    fn status(&self) -> StatusCode {
        match self {
            Self::BadRoom(_) | Self::BadPath => StatusCode::BAD_REQUEST,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::ClientBundleMissing => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "error": self.to_string() }));
        (self.status(), body).into_response()
    }
}
