//! REST and page routes. Built by [`router`], testable without a socket.
//!
//! * `rooms`: `GET /{room}/users` and `GET /api/rooms`, the cluster queries.
//! * `ops`: `/health`, `/ready`, `/metrics`.
//! * `page`: the room page and the socket.io client bundle.
//! * `send`: `POST /send`, pushes from the application's backend; [`form`]: its extended form encoding.
//! * `openapi`: `GET /openapi.json`, the document of these routes.
//! * `middleware`: the query and handshake rates, and [`detach_head`].
//! * [`throttle`]: the per-client query limiter.

pub mod form;
mod middleware;
mod openapi;
mod ops;
mod page;
mod rooms;
mod send;
pub mod throttle;

use std::sync::{Arc, atomic::AtomicBool};

use axum::{
    Router,
    body::Bytes,
    http::{HeaderName, HeaderValue},
    routing::get,
};

use self::throttle::QueryLimit;
pub use self::{
    middleware::{detach_head, limit_sessions},
    page::page_html,
};
use crate::{
    cluster::{Cluster, LocalRooms},
    error::AppError,
    realtime::{Namespaces, admission::Admission, push::Push},
    telemetry::metrics::Metrics,
};

/// Everything the HTTP handlers share.
#[derive(Clone)]
pub struct AppState {
    pub node: Arc<str>,
    pub local: Arc<dyn LocalRooms>,
    /// `None` on a single node.
    pub cluster: Option<Arc<Cluster>>,
    /// The socket.io browser client, read once at start-up; `None` if it is not installed.
    pub client_bundle: Option<Bytes>,
    pub metrics: Arc<Metrics>,
    /// Whether clients reach this node over TLS (reported by `/ready`).
    pub tls: bool,
    /// Set when shutdown starts: `/ready` turns false so balancers stop sending new clients.
    pub draining: Arc<AtomicBool>,
    /// The socketioxide-redis adapter's subscriber, in cluster mode: rooms and broadcasts need it.
    pub adapter_redis: Option<fred::clients::SubscriberClient>,
    /// The room page, from [`page_html`].
    pub page: Bytes,
    /// `API_TOKEN`: when set, the room list needs it as a bearer token.
    pub api_token: Option<Arc<str>>,
    /// The socket cap's count is this node's socket count (`/health`, `/ready`, `/metrics`).
    pub admission: Arc<Admission>,
    /// `QUERY_RATE`: cluster queries per second per client; `None`: no limit.
    pub query_limit: Option<Arc<QueryLimit>>,
    /// The namespaces served: a query about another one is a `404`.
    pub namespaces: Arc<Namespaces>,
    /// Emits the events of `POST /send`.
    pub push: Arc<dyn Push>,
    /// The store of reliable delivery, set before serving ([`crate::realtime::NodeInfo::delivery`]).
    pub delivery: Arc<std::sync::OnceLock<Arc<dyn crate::delivery::Store>>>,
}

pub fn router(state: AppState) -> Router {
    // Each of these asks every node: limited per client (`QUERY_RATE`).
    let queries = Router::new()
        .route("/{room}/users", get(rooms::users))
        .route("/api/rooms", get(rooms::rooms))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::limit_queries,
        ));
    Router::new()
        .route("/send", axum::routing::post(send::send))
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/socket.io.js", get(page::client_bundle))
        .route("/openapi.json", get(openapi::openapi))
        .route("/{room}", get(page::page))
        .merge(queries)
        .fallback(|| async { AppError::NotFound })
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
        .with_state(state)
}

/// CORS for `CORS_ORIGINS`, `None` when it is empty (browsers then get no CORS header: same-origin only).
///
/// It must wrap the Socket.IO layer, not only [`router`]: that layer answers `/socket.io/` itself, and a browser
/// page on a listed origin needs the allow headers there to complete a long-polling session (the Engine.IO
/// handshake, then its polls and POSTs, some preflighted). Credentials are allowed, since the socket.io admin
/// UI and other clients connect `withCredentials`; that is safe because the origins are an exact list, never `*`.
/// Requested headers are mirrored for listed origins (what socket.io's own server does), so clients may add
/// `extraHeaders`. Place it outside the handshake rate limit too: a preflight is not a new session, and a `429`
/// must be readable by the page.
pub fn cors(origins: &[HeaderValue]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
    (!origins.is_empty()).then(|| {
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins.iter().cloned()))
            .allow_credentials(true)
            .allow_methods([axum::http::Method::GET, axum::http::Method::POST])
            .allow_headers(AllowHeaders::mirror_request())
            .expose_headers([
                HeaderName::from_static("x-cluster-nodes"),
                HeaderName::from_static("x-cluster-partial"),
                HeaderName::from_static("x-cluster-error"),
            ])
    })
}

#[cfg(test)]
mod tests {
    use super::rooms::authorized;
    use super::*;
    use crate::cluster::protocol::{Member, Query, Reply};
    use axum::http::{HeaderMap, header};
    use axum::{body::Body, http::Request, http::StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    struct NoPush;
    impl Push for NoPush {
        fn serves(&self, _: &str) -> bool {
            true
        }

        fn emit<'a>(
            &'a self,
            _: &'a str,
            _: Vec<String>,
            _: Vec<String>,
            _: &'a str,
            _: &'a crate::realtime::args::Relayed,
        ) -> futures_util::future::BoxFuture<'a, Result<(), crate::realtime::push::PushError>>
        {
            Box::pin(async { Ok(()) })
        }

        fn emit_with_ack<'a>(
            &'a self,
            _: &'a str,
            _: String,
            _: Vec<String>,
            _: &'a str,
            _: &'a crate::realtime::args::Args,
            _: std::time::Duration,
            _: bool,
        ) -> futures_util::future::BoxFuture<
            'a,
            Result<
                futures_util::future::BoxFuture<'static, bool>,
                crate::realtime::push::PushError,
            >,
        > {
            Box::pin(async {
                Ok(Box::pin(async { false }) as futures_util::future::BoxFuture<'static, bool>)
            })
        }
    }

    struct Fixed;
    impl LocalRooms for Fixed {
        fn answer(&self, ns: &str, query: &Query) -> Reply {
            let member = |s: &str, u: &str| Member {
                id_socket: s.into(),
                id_user: Some(u.into()),
            };
            match query {
                Query::Users { room } if room == "Maths" && ns == "/" => Reply::Users {
                    members: vec![member("s2", "foo"), member("s1", "bar")],
                },
                Query::Rooms if ns == "/" => Reply::Rooms {
                    rooms: vec![crate::cluster::protocol::RoomCount {
                        room: "Maths".into(),
                        sockets: 2,
                        users: vec!["bar".into(), "foo".into()],
                    }],
                },
                _ => Reply::empty(query),
            }
        }
        fn room_count(&self) -> usize {
            1
        }
        fn close(&self) -> futures_util::future::BoxFuture<'_, ()> {
            Box::pin(async {})
        }
    }

    /// hyper hands us a request whose URI and header values are slices of the connection's read buffer; after
    /// `detach_head` nothing may point into that buffer any more, or every websocket pins it for its life.
    #[tokio::test]
    async fn detach_head_releases_the_read_buffer() {
        let buffer = Bytes::from(
            b"/socket.io/?EIO=4&transport=websocket&id_user=u1 dGhlIHNhbXBsZQ== Bearer t".to_vec(),
        );
        let uri = axum::http::Uri::from_maybe_shared(buffer.slice(0..48)).unwrap();
        let key = HeaderValue::from_maybe_shared(buffer.slice(49..65)).unwrap();
        let mut token = HeaderValue::from_maybe_shared(buffer.slice(66..)).unwrap();
        token.set_sensitive(true);
        let mut req = Request::builder()
            .uri(uri.clone())
            .header(header::SEC_WEBSOCKET_KEY, key)
            .header(header::AUTHORIZATION, token)
            .header(header::HOST, "localhost")
            .body(axum::body::Body::empty())
            .unwrap();
        req.extensions_mut().insert(axum::extract::OriginalUri(uri));
        assert!(!buffer.is_unique());

        let req = detach_head(req).await;

        assert!(
            buffer.is_unique(),
            "something still points into the read buffer"
        );
        assert_eq!(
            req.uri(),
            "/socket.io/?EIO=4&transport=websocket&id_user=u1"
        );
        assert_eq!(req.headers()[header::SEC_WEBSOCKET_KEY], "dGhlIHNhbXBsZQ==");
        assert_eq!(req.headers()[header::AUTHORIZATION], "Bearer t");
        assert!(req.headers()[header::AUTHORIZATION].is_sensitive());
        assert_eq!(req.headers()[header::HOST], "localhost");
        let original = req
            .extensions()
            .get::<axum::extract::OriginalUri>()
            .unwrap();
        assert_eq!(original.0, *req.uri());
    }

    #[test]
    fn the_api_token_must_match_exactly() {
        let bearer = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            h
        };
        let token = Some("s3cret-token");
        assert!(authorized(&bearer("Bearer s3cret-token"), token));
        for wrong in [
            "Bearer s3cret-toke",
            "Bearer s3cret-token2",
            "Bearer ",
            "s3cret-token",
        ] {
            assert!(!authorized(&bearer(wrong), token), "{wrong}");
        }
        assert!(!authorized(&HeaderMap::new(), token));
        assert!(authorized(&HeaderMap::new(), None), "no token set: open");
    }

    #[test]
    fn page_names_its_transports() {
        let both = String::from_utf8(page_html(false).to_vec()).unwrap();
        assert!(both.contains(r#"<body data-transports="polling websocket">"#));
        let ws = String::from_utf8(page_html(true).to_vec()).unwrap();
        assert!(ws.contains(r#"<body data-transports="websocket">"#));
        assert_eq!(both.len() - ws.len(), "polling ".len());
    }

    fn app(bundle: Option<&'static str>) -> Router {
        router(AppState {
            client_bundle: bundle.map(|s| Bytes::from_static(s.as_bytes())),
            ..state()
        })
    }

    fn state() -> AppState {
        AppState {
            node: "n1".into(),
            local: Arc::new(Fixed),
            cluster: None,
            client_bundle: None,
            metrics: Arc::new(Metrics::new()),
            tls: false,
            draining: Arc::default(),
            adapter_redis: None,
            page: page_html(false),
            api_token: None,
            admission: admitted(),
            query_limit: None,
            namespaces: Arc::new(Namespaces::single_default()),
            push: Arc::new(NoPush),
            delivery: Arc::default(),
        }
    }

    /// `QUERY_RATE`: past the rate a client's queries get `429`, a JSON error and `Retry-After`; other routes are
    /// not limited.
    #[tokio::test]
    async fn cluster_queries_are_rate_limited() {
        let app = router(AppState {
            query_limit: throttle::QueryLimit::new(2).map(Arc::new),
            ..state()
        });
        for uri in ["/Maths/users", "/api/rooms"] {
            let (status, _, _) = get(app.clone(), uri).await;
            assert_eq!(status, StatusCode::OK, "{uri}");
        }
        for uri in ["/Maths/users", "/api/rooms"] {
            let (status, headers, body) = get(app.clone(), uri).await;
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{uri}");
            assert_eq!(headers["retry-after"], "1");
            assert_eq!(
                body["error"],
                "too many queries from this address (QUERY_RATE per second): retry in 1 s"
            );
        }
        let (status, _, _) = get(app.clone(), "/health").await;
        assert_eq!(status, StatusCode::OK);
    }

    /// An admission count of 3 sockets (their slots kept for the test's life).
    fn admitted() -> Arc<Admission> {
        static SLOTS: std::sync::OnceLock<(Arc<Admission>, Vec<crate::realtime::admission::Slot>)> =
            std::sync::OnceLock::new();
        let (admission, _) = SLOTS.get_or_init(|| {
            let admission = Arc::new(Admission::new(10, 0, vec![]));
            let slots = (0..3).map(|_| admission.admit(None).unwrap()).collect();
            (admission, slots)
        });
        admission.clone()
    }

    /// `/health`, `/ready` and `/metrics` count sockets with the admission counter, never by listing them.
    #[tokio::test]
    async fn socket_counts_come_from_admission() {
        let (status, _, body) = get(app(None), "/health").await;
        assert_eq!(
            (status, &body["sockets"]),
            (StatusCode::OK, &serde_json::json!(3))
        );
        let (status, _, body) = get(app(None), "/ready").await;
        assert_eq!(
            (status, &body["sockets"]),
            (StatusCode::OK, &serde_json::json!(3))
        );
        let res = app(None)
            .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let text = res.into_body().collect().await.unwrap().to_bytes();
        let text = std::str::from_utf8(&text).unwrap();
        assert!(
            text.lines()
                .any(|l| l == "socket_identity_connected_sockets 3"),
            "{text}"
        );
    }

    async fn get(app: Router, uri: &str) -> (StatusCode, HeaderMap, serde_json::Value) {
        let res = app
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, headers, json)
    }

    #[tokio::test]
    async fn users_sorted_with_headers() {
        let (status, headers, body) = get(app(None), "/Maths/users").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(headers["x-cluster-nodes"], "1/1");
        assert_eq!(headers["x-cluster-partial"], "false");
        assert_eq!(
            body,
            serde_json::json!([
                {"id_socket": "s1", "id_user": "bar", "node": "n1"},
                {"id_socket": "s2", "id_user": "foo", "node": "n1"},
            ])
        );
    }

    #[tokio::test]
    async fn unknown_room_is_empty() {
        let (status, _, body) = get(app(None), "/Nobody/users").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, serde_json::json!([]));
    }

    #[tokio::test]
    async fn bad_rooms_are_400_json() {
        for (uri, msg) in [
            (
                "/a%2Fb/users",
                "invalid room: room contains a character that is not allowed",
            ),
            (
                "/..%2F..%2Fetc/users",
                "invalid room: room contains a character that is not allowed",
            ),
            ("/.env/users", "invalid room: room must not start with '.'"),
            (
                "/%FF/users",
                "invalid room: the path is not valid percent-encoded UTF-8",
            ),
            (
                "/health/users",
                "invalid room: room name 'health' is reserved",
            ),
        ] {
            let (status, _, body) = get(app(None), uri).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
            assert_eq!(body["error"], msg, "{uri}");
        }
        let long = format!("/{}/users", "x".repeat(129));
        let (status, _, body) = get(app(None), &long).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            body["error"],
            "invalid room: room must be at most 128 characters"
        );
    }

    #[tokio::test]
    async fn unicode_room_is_decoded() {
        let (status, _, body) = get(app(None), "/Caf%C3%A9/users").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, serde_json::json!([]));
    }

    #[tokio::test]
    async fn health_reports_node() {
        let (status, _, body) = get(app(None), "/health").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["node"], "n1");
        assert_eq!(body["mode"], "single");
        assert_eq!(body["sockets"], 3);
    }

    #[tokio::test]
    async fn unknown_paths_are_404_json() {
        let (status, _, body) = get(app(None), "/a/b/c").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"], "not found");
    }

    #[tokio::test]
    async fn client_bundle_served_or_explained() {
        let (status, _, body) = get(app(None), "/socket.io.js").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body["error"].as_str().unwrap().contains("fetch-client"));
        let res = app(Some("/* io */"))
            .oneshot(Request::get("/socket.io.js").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(
            res.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/javascript")
        );
    }

    #[tokio::test]
    async fn page_only_for_valid_rooms() {
        let res = app(None)
            .oneshot(
                Request::get("/Maths?id_user=foo")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let html = res.into_body().collect().await.unwrap().to_bytes();
        assert!(
            std::str::from_utf8(&html)
                .unwrap()
                .contains("/socket.io.js")
        );
        let (status, _, _) = get(app(None), "/.git").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
}
