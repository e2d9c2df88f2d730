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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    async fn get(app: &Router, path: &str) -> (StatusCode, String, String) {
        let res = app
            .clone()
            .oneshot(axum::http::Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let location = res
            .headers()
            .get("location")
            .map_or(String::new(), |v| v.to_str().unwrap().to_owned());
        let body = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            location,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    #[tokio::test]
    async fn without_the_build_every_admin_route_says_what_to_run() {
        let app: Router = routes(Path::new("/nonexistent/admin-ui"));
        let (status, location, _) = get(&app, "/admin").await;
        assert_eq!(
            (status, location.as_str()),
            (StatusCode::PERMANENT_REDIRECT, "/admin/")
        );
        for path in ["/admin/", "/admin/js/app.js"] {
            let (status, _, body) = get(&app, path).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
            assert!(body.contains("scripts/fetch-admin-ui.sh"), "{body}");
        }
    }

    #[tokio::test]
    async fn serves_the_build_under_the_slash() {
        let dir = std::env::temp_dir().join(format!("admin-ui-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("js")).unwrap();
        std::fs::write(dir.join("index.html"), "<div id=\"app\"></div>").unwrap();
        std::fs::write(dir.join("js/app.js"), "ok()").unwrap();
        let app: Router = routes(&dir);
        assert!(get(&app, "/admin/").await.2.contains("id=\"app\""));
        assert_eq!(get(&app, "/admin/js/app.js").await.2, "ok()");
        assert_eq!(
            get(&app, "/admin/../Cargo.toml").await.0,
            StatusCode::NOT_FOUND
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
