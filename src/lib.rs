//! # socket-identity
//!
//! A horizontally clustered Socket.IO server that answers "who is in this room?" across every node.
//!
//! Each socket says who it is (`id_user`) and which room it joins at handshake; the identity is kept in the
//! socket's extensions. `GET /{room}/users` on any node lists the room's sockets on all nodes.
//!
//! ## Layout
//! * [`config`]: the one typed configuration (clap, every flag with an environment variable).
//! * [`validate`]: the rules for room names, user ids and node ids, shared by every entry point.
//! * [`admission`]: limits on handshakes (socket cap, rate, origins).
//! * [`socket`]: the Socket.IO handshake, the identity on each socket, the room events.
//! * [`protocol`]: the cross-node wire types; [`cluster`]: moving them over Redis pub/sub.
//! * [`redis`]: fred clients configured for this cluster (RESP3, reconnects, re-subscription).
//! * [`http`]: REST and page routes; [`error`]: how failures become HTTP answers.
//! * [`tls`], [`shutdown`]: rustls configuration and the signal future.
//! * [`membership`]: which nodes are alive, from their heartbeats.
//! * [`metrics`], [`logging`]: what `/metrics` exposes, and log lines (human or JSON) that name the node.
//!
//! [`run`] serves one node on a listener until a shutdown future resolves (the binary's is [`shutdown::signal`]);
//! [`listen`] binds that listener, shared with the host's other instances when `REUSE_PORT` is set.
//!
//! ## The cross-node protocol
//! Two kinds of message, JSON-encoded [`protocol`] types, on plain (not sharded) Redis pub/sub channels whose
//! names start with `REDIS_PREFIX` (default `socket-identity`):
//!
//! | channel | who subscribes | message |
//! |---|---|---|
//! | `{prefix}:users#req` | every node | [`protocol::Request`] `{v, id, from, room}` |
//! | `{prefix}:users#reply#{node}` | node `{node}` | [`protocol::Response`] `{v, id, node, members}` |
//! | `{prefix}:nodes` | every node | [`protocol::Heartbeat`] `{v, node}` every `HEARTBEAT_MS`, `{v, node, leaving: true}` at shutdown |
//!
//! 1. Membership ([`membership`]): a node announces itself before it answers any request, sends a heartbeat
//!    every interval, and says when it leaves. A node silent for 3 intervals is declared down. A node hearing a
//!    newcomer sends its own heartbeat at once, so the newcomer knows everyone within a round trip.
//! 2. The asking node publishes **one** request and waits for the nodes it knows to be alive. If `PUBLISH`
//!    counts fewer subscribers than that, one `PUBSUB NUMSUB` of their reply channels tells which are gone.
//! 3. Every other node answers with its local sockets of the room and their `id_user`, read from the sockets'
//!    extensions, in one reply. Round trips do not grow with the number of sockets.
//! 4. The asker returns as soon as every live node has answered (a node declared down meanwhile is no longer
//!    waited for), or at the request timeout with what it has, marked partial (`X-Cluster-Nodes: 2/3`,
//!    `X-Cluster-Partial: true`). Replies from nodes that are not members, and duplicates, are ignored.
//!
//! Messages with another version, malformed fields, unknown request ids or duplicate answers are logged and
//! ignored. Rooms and broadcasts between nodes (the `socket-connected` events and the like) go through the
//! socketioxide-redis adapter on its own sharded channels (`{prefix}-adapter-*`). Its `fetch_sockets` is not used
//! for the room query: remote sockets carry no extensions (so no `id_user`), and its answer is silently partial
//! when a node is slow.

pub mod admission;
pub mod cluster;
pub mod config;
pub mod error;
pub mod http;
pub mod logging;
pub mod membership;
pub mod metrics;
pub mod protocol;
pub mod redis;
pub mod shutdown;
pub mod socket;
pub mod tls;
pub mod validate;

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::body::Bytes;
use axum_server::tls_rustls::RustlsConfig;
use futures_util::FutureExt;
use socketioxide::{SocketIo, TransportType, handler::ConnectHandler};
use socketioxide_redis::{FredAdapter, RedisAdapterConfig, RedisAdapterCtr};

pub use config::Config;
pub use error::StartError;

use crate::{
    cluster::Cluster,
    http::AppState,
    socket::{LocalRooms, NodeInfo},
};

/// Back-off between attempts to reach Redis at start-up: doubling from the first to the most.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How long a new Engine.IO session may take to join the namespace.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for clients to be told and for requests in flight to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Packets queued per socket before an emit to it fails; room-wide bursts (a room filling up, announced to
/// everyone) must fit. Memory is only taken while a backlog exists.
const SOCKET_BUFFER_PACKETS: usize = 1024;
/// Cross-node messages queued in the adapter before it drops them.
const ADAPTER_STREAM_BUFFER: usize = 65_536;
/// Bytes read from a websocket at a time. Each connection holds this buffer for its whole life, and our
/// messages are small, so 1 KiB instead of engineioxide's 4 KiB saves 3 KiB per connection (BENCHMARKS.md).
const WS_READ_BUFFER: usize = 1024;

/// The Socket.IO settings both modes (single node and cluster) share.
fn io_builder(
    info: NodeInfo,
    config: &Config,
) -> socketioxide::SocketIoBuilder<socketioxide::adapter::LocalAdapter> {
    // engineioxide applies `max_payload` to long-polling only; websocket messages have their own limits (64 MiB
    // by default), set to the same here.
    let max_payload = config.max_payload_bytes;
    let ws_max = usize::try_from(max_payload).unwrap_or(usize::MAX);
    let builder = SocketIo::builder()
        .max_buffer_size(SOCKET_BUFFER_PACKETS)
        .max_payload(max_payload)
        .ws_max_message_size(ws_max)
        .ws_max_frame_size(ws_max)
        // An Engine.IO session that has not joined the namespace by then is closed: clients join at once, so a
        // flood of bare sessions cannot pile up.
        .connect_timeout(CONNECT_TIMEOUT)
        .ws_read_buffer_size(WS_READ_BUFFER)
        .with_state(info);
    if config.reuse_port {
        builder.transports([TransportType::Websocket])
    } else {
        builder
    }
}

/// Binds the listening socket, shared with this host's other instances when `reuse_port` is set.
pub fn listen(config: &Config) -> std::io::Result<std::net::TcpListener> {
    let addr = SocketAddr::new(config.bind, config.port);
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // A restarted instance must not wait for the old one's TIME_WAIT connections.
    socket.set_reuseaddr(true)?;
    if config.reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(1024)?.into_std()
}

/// Serves one node on `listener` until `shutdown` resolves, then drains and returns.
pub async fn run(
    config: Config,
    listener: std::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let mut config = config;
    let shutdown = shutdown.boxed().shared();
    let node: Arc<str> = config.node_id().into();
    validate::node_id(&node).map_err(StartError::NodeId)?;
    let tls = match config.plain_http {
        true => None,
        false => Some(tls::server_config(&config.tls_cert, &config.tls_key)?),
    };
    let client_bundle = load_client_bundle(&config);
    let page = http::page_html(config.reuse_port);
    let origins = config.origins();
    let cors_origins = origins
        .iter()
        .map(|o| {
            axum::http::HeaderValue::from_str(o).map_err(|_| {
                StartError::Config(format!("CORS_ORIGINS: {o:?} is not a valid origin"))
            })
        })
        .collect::<Result<Arc<[_]>, _>>()?;
    let metrics = Arc::new(metrics::Metrics::new());
    let draining = Arc::new(AtomicBool::new(false));
    let info = NodeInfo {
        id: node.clone(),
        presence: config.presence_events,
        metrics: metrics.clone(),
        admission: Arc::new(admission::Admission::new(
            config.max_sockets.try_into().unwrap_or(usize::MAX),
            config.handshake_rate,
            origins,
        )),
    };

    let api_token: Option<Arc<str>> = config.api_token.as_deref().map(Arc::from);
    let app_state =
        |local: Arc<dyn LocalRooms>,
         cluster: Option<Arc<Cluster>>,
         adapter_redis: Option<fred::clients::SubscriberClient>| AppState {
            node: node.clone(),
            local,
            cluster,
            client_bundle: client_bundle.clone(),
            metrics: metrics.clone(),
            tls: tls.is_some(),
            draining: draining.clone(),
            adapter_redis,
            page: page.clone(),
            api_token: api_token.clone(),
            cors_origins: cors_origins.clone(),
        };

    // The Socket.IO layer wraps every route and the fallback: `/socket.io/*` never reaches our handlers.
    let (app, local, cluster, adapter_sub): Serving = match &config.redis_url {
        None => {
            let (layer, io) = io_builder(info.clone(), &config).build_layer();
            io.ns("/", socket::on_connect.with(socket::handshake));
            let local: Arc<dyn LocalRooms> = Arc::new(io);
            let app = http::router(app_state(local.clone(), None, None)).layer(layer);
            (app, local, None, None)
        }
        Some(url) => {
            let redis = redis::Endpoint::parse(url, config.redis_ca.as_deref())?;
            // Redis may not be up yet (all services starting at boot): retry what can heal, fail on the rest.
            let mut delay = RETRY_FIRST;
            loop {
                let attempt = join_cluster(&redis, &config, info.clone(), &app_state);
                match attempt.await {
                    Ok(joined) => break joined,
                    Err(e) if e.is_transient() => {
                        tracing::warn!(error = %e, retry_in = ?delay, "Redis is not reachable yet");
                        tokio::select! {
                            () = tokio::time::sleep(delay) => {}
                            () = shutdown.clone() => return Ok(()),
                        }
                        delay = (delay * 2).min(RETRY_MAX);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    };

    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let handle = axum_server::Handle::new();
    let drain = tokio::spawn(drain_on(
        shutdown,
        draining.clone(),
        handle.clone(),
        local,
        cluster,
        adapter_sub,
    ));
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!("listening on {scheme}://{addr}");
    let app = app
        .layer(axum::middleware::from_fn_with_state(
            info,
            http::limit_sessions,
        ))
        .layer(axum::middleware::map_request(http::detach_head));
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    match tls {
        Some(tls) => {
            axum_server::from_tcp_rustls(listener, RustlsConfig::from_config(Arc::new(tls)))
                .handle(handle)
                .serve(service)
                .await?
        }
        None => {
            axum_server::from_tcp(listener)
                .handle(handle)
                .serve(service)
                .await?
        }
    }
    // The listener is closed; websockets are not the server's to wait for (they left hyper at the upgrade), so
    // the drain finishes closing them and leaving the cluster before we return.
    if draining.load(Ordering::Relaxed) {
        let _ = drain.await;
    } else {
        drain.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// What serving needs: the app, the local sockets, and in cluster mode our query protocol and the adapter's
/// subscriber (both closed at shutdown).
type Serving = (
    axum::Router,
    Arc<dyn LocalRooms>,
    Option<Arc<Cluster>>,
    Option<redis::Subscriber>,
);

/// One attempt to join the cluster: the adapter on its own subscriber, the Socket.IO layer on the adapter, and
/// our room-query protocol.
async fn join_cluster(
    redis: &redis::Endpoint,
    config: &Config,
    info: NodeInfo,
    app_state: &impl Fn(
        Arc<dyn LocalRooms>,
        Option<Arc<Cluster>>,
        Option<fred::clients::SubscriberClient>,
    ) -> AppState,
) -> Result<Serving, StartError> {
    let adapter_sub = redis::Subscriber::new(redis, Duration::from_secs(5))?;
    info.metrics
        .watch_redis(&adapter_sub.client, "adapter_subscriber");
    let adapter = RedisAdapterCtr::new_with_fred_config(
        adapter_sub.client.clone(),
        RedisAdapterConfig::new()
            .with_prefix(format!("{}-adapter", config.redis_prefix))
            .with_request_timeout(config.request_timeout())
            // Messages from other nodes queue here; when it is full the adapter drops them (and logs),
            // so a burst of broadcasts must fit. Memory is only taken while a backlog exists.
            .with_stream_buffer(ADAPTER_STREAM_BUFFER),
    )
    .await
    .map_err(|e| redis::connect_err(redis, e))?;
    let (layer, io) = io_builder(info.clone(), config)
        .with_adapter::<FredAdapter<_>>(adapter)
        .build_layer();
    io.ns("/", socket::on_connect.with(socket::handshake))
        .await
        .map_err(|e| StartError::Adapter(e.to_string()))?;
    let local: Arc<dyn LocalRooms> = Arc::new(io);
    let cluster = Cluster::start(
        redis,
        &config.redis_prefix,
        info.id.clone(),
        local.clone(),
        config.request_timeout(),
        config.heartbeat(),
        info.metrics.clone(),
    )
    .await?;
    let state = app_state(
        local.clone(),
        Some(cluster.clone()),
        Some(adapter_sub.client.clone()),
    );
    let app = http::router(state).layer(layer);
    Ok((app, local, Some(cluster), Some(adapter_sub)))
}

/// On shutdown: stop accepting (so clients that reconnect land on another node, even on a shared port) while
/// HTTP requests in flight finish; close every client's transport (so it reconnects elsewhere); then leave the
/// cluster and close the Redis connections (so the other nodes stop counting this one at once). Each step is
/// bounded by [`DRAIN_TIMEOUT`].
async fn drain_on(
    shutdown: impl Future<Output = ()>,
    draining: Arc<AtomicBool>,
    handle: axum_server::Handle,
    local: Arc<dyn LocalRooms>,
    cluster: Option<Arc<Cluster>>,
    adapter_sub: Option<redis::Subscriber>,
) {
    shutdown.await;
    draining.store(true, Ordering::Relaxed);
    handle.graceful_shutdown(Some(DRAIN_TIMEOUT));
    if tokio::time::timeout(DRAIN_TIMEOUT, local.close())
        .await
        .is_err()
    {
        tracing::warn!("closing client sockets took too long");
    }
    let leave = async {
        if let Some(cluster) = cluster {
            cluster.stop().await;
        }
        if let Some(sub) = adapter_sub {
            sub.close().await;
        }
    };
    if tokio::time::timeout(DRAIN_TIMEOUT, leave).await.is_err() {
        tracing::warn!("leaving Redis took too long");
    }
}

fn load_client_bundle(config: &Config) -> Option<Bytes> {
    match std::fs::read(&config.client_bundle) {
        Ok(bytes) => Some(bytes.into()),
        Err(e) => {
            tracing::warn!(
                path = %config.client_bundle.display(),
                error = %e,
                "socket.io client bundle not found; /socket.io.js will answer 503 (run scripts/fetch-client.sh)"
            );
            None
        }
    }
}
