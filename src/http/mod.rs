//! REST and page routes. Built by [`router`], testable without a socket.

pub mod throttle;

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{FromRequestParts, Path, State},
    http::{HeaderMap, HeaderName, HeaderValue, header, request::Parts},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use serde::Serialize;

use self::throttle::QueryLimit;
use crate::{
    cluster::{
        Answer, Cluster, LocalRooms,
        protocol::{Query, Reply},
    },
    domain::validate,
    error::AppError,
    realtime::{Namespaces, admission::Admission},
    telemetry::metrics::Metrics,
};

/// The page a browser gets at `/{room}?id_user=..`.
const PAGE: &str = include_str!("page.html");

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
}

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

pub fn router(state: AppState) -> Router {
    // Each of these asks every node: limited per client (`QUERY_RATE`).
    let queries = Router::new()
        .route("/{room}/users", get(users))
        .route("/api/rooms", get(rooms))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limit_queries,
        ));
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/socket.io.js", get(client_bundle))
        .route("/{room}", get(page))
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

/// Applies `QUERY_RATE` to a client's cluster queries: beyond it, `429` with a JSON error and `Retry-After`.
/// The client is the connection's peer address (every client of a proxy in front shares the proxy's).
async fn limit_queries(
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
    let opens_session = req.uri().path().starts_with("/socket.io/")
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

/// Whether the request carries the API token, when one is set. Compared in constant time, lengths included
/// ([`crate::domain::secret::equal`]).
fn authorized(headers: &HeaderMap, token: Option<&str>) -> bool {
    let Some(token) = token else { return true };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    crate::domain::secret::equal(given.as_bytes(), token.as_bytes())
}

/// Copies the request line and headers out of hyper's connection read buffer.
///
/// hyper parses them zero-copy, as slices of the connection's read buffer (8-16 KiB), and socketioxide keeps the
/// handshake request's parts for the socket's whole life: without this, every websocket pins a read buffer it
/// will never use again (BENCHMARKS.md, memory).
pub async fn detach_head(req: axum::extract::Request) -> axum::extract::Request {
    let (mut parts, body) = req.into_parts();
    if let Ok(uri) = axum::http::Uri::from_maybe_shared(Bytes::from(parts.uri.to_string())) {
        parts.uri = uri;
    }
    // The router records the URI as it arrived, before any middleware runs.
    if let Some(original) = parts.extensions.get_mut::<axum::extract::OriginalUri>() {
        original.0 = parts.uri.clone();
    }
    for value in parts.headers.values_mut() {
        if let Ok(mut copy) = HeaderValue::from_bytes(value.as_bytes()) {
            copy.set_sensitive(value.is_sensitive());
            *value = copy;
        }
    }
    axum::extract::Request::from_parts(parts, body)
}

/// A room name from the path, percent-decoded and checked against [`validate::room`].
struct Room(String);

impl<S: Send + Sync> FromRequestParts<S> for Room {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        let Path(room) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| AppError::BadPath)?;
        validate::room(&room).map_err(AppError::BadRoom)?;
        Ok(Self(room))
    }
}

/// One entry of `GET /{room}/users`.
#[derive(Debug, Serialize)]
struct RoomUser<'a> {
    id_socket: &'a str,
    id_user: Option<&'a str>,
    node: &'a str,
}

async fn health(State(s): State<AppState>) -> impl IntoResponse {
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
async fn ready(State(s): State<AppState>) -> Response {
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

async fn metrics(State(s): State<AppState>) -> Response {
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

/// `?namespace=`: which namespace a REST query is about (`/` when absent).
#[derive(Debug, serde::Deserialize)]
struct NamespaceParam {
    namespace: Option<String>,
}

/// The namespace a request names (`/` by default), checked, and served here.
fn namespace_of(s: &AppState, query: Option<&str>) -> Result<String, AppError> {
    let param: NamespaceParam = serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|e| AppError::BadQuery(e.to_string()))?;
    let ns = param.namespace.unwrap_or_else(|| "/".to_owned());
    validate::namespace(&ns).map_err(AppError::BadNamespace)?;
    if s.namespaces.find(&ns).is_none() {
        return Err(AppError::UnknownNamespace(ns));
    }
    Ok(ns)
}

/// Asks the cluster (or this node alone) about namespace `ns`.
async fn ask(s: &AppState, ns: &str, query: Query) -> Answer {
    match &s.cluster {
        Some(cluster) => cluster.ask(ns, query).await,
        None => Answer::local(s.node.clone(), s.local.answer(ns, &query)),
    }
}

/// `X-Cluster-Nodes: answered/expected`, `X-Cluster-Partial`, `X-Cluster-Error`: how complete an answer is.
fn cluster_headers(answer: &Answer) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let expected = answer.expected.map_or("?".to_owned(), |n| n.to_string());
    let nodes = format!("{}/{expected}", answer.answered);
    headers.insert(
        "x-cluster-nodes",
        HeaderValue::from_str(&nodes).expect("ascii"),
    );
    headers.insert(
        "x-cluster-partial",
        HeaderValue::from_static(if answer.is_partial() { "true" } else { "false" }),
    );
    if let Some(error) = answer.error.as_deref()
        && let Ok(v) = HeaderValue::from_str(error)
    {
        headers.insert("x-cluster-error", v);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers
}

async fn users(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    Room(room): Room,
) -> Result<Response, AppError> {
    if !authorized(&headers, s.api_token.as_deref()) {
        return Err(AppError::Unauthorized);
    }
    let ns = namespace_of(&s, uri.query())?;
    let answer = ask(&s, &ns, Query::Users { room }).await;
    let mut list: Vec<RoomUser> = answer
        .nodes
        .iter()
        .flat_map(|(node, reply)| {
            let members = match reply {
                Reply::Users { members } => members.as_slice(),
                _ => &[],
            };
            members.iter().map(move |m| RoomUser {
                id_socket: &m.id_socket,
                id_user: m.id_user.as_deref(),
                node,
            })
        })
        .collect();
    list.sort_unstable_by(|a, b| (a.id_user, a.id_socket).cmp(&(b.id_user, b.id_socket)));
    Ok((cluster_headers(&answer), Json(list)).into_response())
}

/// One entry of `GET /api/rooms`.
#[derive(Debug, Serialize)]
struct RoomSize {
    room: String,
    sockets: u64,
}

/// `GET /api/rooms?namespace=`: the namespace's rooms across the cluster with their socket counts, by name.
async fn rooms(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Result<Response, AppError> {
    if !authorized(&headers, s.api_token.as_deref()) {
        return Err(AppError::Unauthorized);
    }
    let ns = namespace_of(&s, uri.query())?;
    let answer = ask(&s, &ns, Query::Rooms).await;
    let mut sizes = std::collections::BTreeMap::<String, u64>::new();
    for (_, reply) in answer.nodes.iter() {
        if let Reply::Rooms { rooms } = reply {
            for r in rooms {
                *sizes.entry(r.room.clone()).or_default() += r.sockets;
            }
        }
    }
    let rooms: Vec<RoomSize> = sizes
        .into_iter()
        .map(|(room, sockets)| RoomSize { room, sockets })
        .collect();
    let body = serde_json::json!({ "namespace": ns, "rooms": rooms });
    Ok((cluster_headers(&answer), Json(body)).into_response())
}

async fn page(State(s): State<AppState>, Room(_): Room) -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-cache")], Html(s.page))
}

async fn client_bundle(State(s): State<AppState>) -> Result<Response, AppError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::protocol::Member;
    use axum::{body::Body, http::Request, http::StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

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
                    }],
                },
                _ => Reply::empty(query),
            }
        }
        fn socket_count(&self) -> usize {
            panic!("socket_count clones every socket: the admission count is read instead")
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
            b"/socket.io/?EIO=4&transport=websocket&id_user=u1 dGhlIHNhbXBsZQ==".to_vec(),
        );
        let uri = axum::http::Uri::from_maybe_shared(buffer.slice(0..48)).unwrap();
        let key = HeaderValue::from_maybe_shared(buffer.slice(49..)).unwrap();
        let mut req = Request::builder()
            .uri(uri.clone())
            .header(header::SEC_WEBSOCKET_KEY, key)
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
