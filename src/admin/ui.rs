//! The admin UI's static build at `/admin/` (fetched by `scripts/fetch-admin-ui.sh`, never committed).

use std::path::Path;

use axum::{
    Json, Router,
    http::StatusCode,
    response::{IntoResponse, Redirect},
    routing::get,
};
use tower_http::services::ServeDir;

/// `/admin` (redirected to `/admin/`, the UI's relative paths need the slash) and the files under `/admin/`.
/// Without the build, every admin route says what to run.
pub fn routes<S: Clone + Send + Sync + 'static>(dir: &Path) -> Router<S> {
    let redirect = get(|| async { Redirect::permanent("/admin/") });
    if dir.join("index.html").is_file() {
        Router::new()
            .route("/admin", redirect)
            .nest_service("/admin/", ServeDir::new(dir))
    } else {
        tracing::warn!(
            path = %dir.display(),
            "admin UI build not found; /admin/ will answer 503 (run scripts/fetch-admin-ui.sh)"
        );
        let missing = || async {
            let body = serde_json::json!({
                "error": "the admin UI is not installed on this node: run scripts/fetch-admin-ui.sh"
            });
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        };
        Router::new()
            .route("/admin", redirect)
            .route("/admin/", get(missing))
            .route("/admin/{*rest}", get(missing))
    }
}
