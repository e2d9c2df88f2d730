//! The room page a browser gets at `/{room}?id_user=..`, and the socket.io client bundle it loads.

use axum::{
    body::Bytes,
    extract::State,
    http::header,
    response::{Html, IntoResponse, Response},
};

use super::{AppState, rooms::Room};
use crate::error::AppError;

/// The page a browser gets at `/{room}?id_user=..`.
const PAGE: &str = include_str!("page.html");

/// The room page. `websocket_only` when instances share a port without sticky sessions: a long-polling
/// session's requests would land on instances that do not know it.
pub fn page_html(websocket_only: bool) -> Bytes {
    if websocket_only {
        PAGE.replacen(
            r#"data-transports="polling websocket""#,
            r#"data-transports="websocket""#,
            1,
        )
        .into()
    } else {
        Bytes::from_static(PAGE.as_bytes())
    }
}

pub(super) async fn page(State(s): State<AppState>, Room(_): Room) -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-cache")], Html(s.page))
}

pub(super) async fn client_bundle(State(s): State<AppState>) -> Result<Response, AppError> {
    let body = s
        .client_bundle
        .clone()
        .ok_or(AppError::ClientBundleMissing)?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                "application/javascript; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response())
}
