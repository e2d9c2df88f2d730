//! Building and serving one node: the Socket.IO layer, the cluster protocol, the HTTP routes, and the drain.

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
use axum_server::{
    accept::DefaultAcceptor,
    tls_rustls::{RustlsAcceptor, RustlsConfig},
};
use futures_util::FutureExt;
use socketioxide::{SocketIo, TransportType, adapter::Adapter};
use socketioxide_redis::{FredAdapter, RedisAdapterConfig, RedisAdapterCtr};

use crate::{
    Config, StartError,
    admin::{Admin, sessions::RedisSessions},
    cluster::{self, Cluster, LocalRooms, membership::Change, seal::Seal},
    config::file::{self, AdminConfig, CheckedWebhook, GatewayConfig},
    delivery::{MemoryStore, RedisStore, Store},
    domain::validate,
    emitter::{
        self, Emitter,
        compat::{CompatState, NodeCompat, Publisher},
    },
    gateway::Gateway,
    http::{self, AppState},
    net::{nodelay::NoDelay, pending, tls},
    realtime::{
        Namespaces, NodeInfo, admission,
        auth::FailedLogins,
        push::Push,
        recover::{self, Recovery, Resolver},
        reliable,
    },
    recovery::{
        EventLog, MemoryLog, MemorySessions, RedisLog, Sessions,
        adapter::{Recorder, Recording, RecordingState},
    },
    redis,
    telemetry::metrics,
    webhooks::{
        dispatch::{Dispatcher, Outlet, Webhook},
        tracker::Tracker,
    },
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
/// messages are small, so 256 bytes instead of engineioxide's 4 KiB saves 3.75 KiB per connection
/// (BENCHMARKS.md). A larger frame grows the buffer to its size; it only takes more, cheap, reads from TLS.
const WS_READ_BUFFER: usize = 256;

/// The Socket.IO settings both modes (single node and cluster) share.
fn io_builder(
    info: NodeInfo,
    admin: Option<Arc<Admin>>,
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
        // A dynamic namespace (`/do-x` of `/do-*`) is created only for a valid name: a client cannot make the node
        // allocate a namespace, and its Redis subscriptions, under a name no peer would accept.
        .dyn_ns_filter(|path| crate::domain::validate::namespace(path).is_ok())
        .with_state(info);
    // The admin namespace's handlers take it as their state; without `[admin]` they are never registered.
    let builder = match admin {
        Some(admin) => builder.with_state(admin),
        None => builder,
    };
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
    if config.node_adapter_compat {
        if config.redis_url.is_none() {
            return Err(StartError::Config(
                "NODE_ADAPTER_COMPAT needs REDIS_URL: Node servers are reached through the cluster's Redis".into(),
            ));
        }
        if config.emitter_key.is_empty() {
            return Err(StartError::Config(
                "NODE_ADAPTER_COMPAT needs an EMITTER_KEY: the key of the Node servers' @socket.io/redis-adapter"
                    .into(),
            ));
        }
    }
    let node_id: Arc<str> = config.node_id().into();
    validate::node_id(&node_id).map_err(StartError::NodeId)?;
    let tls = match config.plain_http {
        true => None,
        false => Some(tls::server_config(&config.tls_cert, &config.tls_key)?),
    };
    let origins = config.origins();
    let cors_origins = origins
        .iter()
        .map(|o| {
            axum::http::HeaderValue::from_str(o).map_err(|_| {
                StartError::Config(format!("CORS_ORIGINS: {o:?} is not a valid origin"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let max_sockets =
        crate::net::files::socket_cap(config.max_sockets).map_err(StartError::Config)?;
    tracing::info!(max_sockets, "socket cap");
    let metrics = Arc::new(metrics::Metrics::new());
    let logins = Arc::new(FailedLogins::new(config.login_failures_per_minute));
    let (namespaces, admin_config, gateway_config, webhooks) =
        load_namespaces(&config, &metrics, &logins)?;
    let namespaces = Arc::new(namespaces);
    let info = NodeInfo {
        id: node_id.clone(),
        presence: config.presence_events,
        metrics: metrics.clone(),
        admission: Arc::new(admission::Admission::with_verifying(
            max_sockets.try_into().unwrap_or(usize::MAX),
            config
                .max_verifying_handshakes
                .try_into()
                .unwrap_or(usize::MAX),
            config.handshake_rate,
            origins,
        )),
        namespaces: namespaces.clone(),
        cluster: Arc::default(),
        event_rate: std::num::NonZeroU32::new(config.socket_event_rate)
            .map(crate::realtime::node::EventQuota::per_second),
        handshakes: Arc::default(),
        delivery: Arc::default(),
        observer: Arc::default(),
        bus: Arc::default(),
        recovery: Arc::default(),
        rpc_in_flight: Arc::new(tokio::sync::Semaphore::new(
            config.rpc_max_in_flight.try_into().unwrap_or(1024),
        )),
        webhooks: Arc::default(),
        directory: Arc::default(),
        gateway_events: gateway_config
            .as_ref()
            .map(|g| g.reply_events())
            .unwrap_or_default()
            .into(),
    };
    let admin = admin_config.map(|c| Admin::new(c, info.clone(), logins.clone()));
    let parts = Parts {
        config: &config,
        info: &info,
        admin: &admin,
        gateway: &gateway_config,
        webhooks: &webhooks,
        presence: namespaces
            .iter()
            .filter(|ns| ns.presence)
            .map(|ns| ns.pattern.clone())
            .collect(),
    };

    let (node, socketio) = match &config.redis_url {
        None => {
            if config.cluster_secret.is_some() {
                tracing::warn!(
                    "CLUSTER_SECRET is set but REDIS_URL is not: a single node has nothing to sign"
                );
            }
            start_single(&parts)?
        }
        Some(url) => {
            let redis = redis::Endpoint::parse(url, config.redis_ca.as_deref())?;
            let seal = Seal::from_config(&config).map_err(StartError::Config)?;
            if seal.is_signed() {
                tracing::info!("cluster messages are signed (CLUSTER_SECRET)");
            }
            // Redis may not be up yet (all services starting at boot): retry what can heal, fail on the rest. Each
            // attempt starts from nothing: a failed one stops all it opened.
            let mut delay = RETRY_FIRST;
            loop {
                let mut node = Node::default();
                let attempt = join_cluster(&mut node, &redis, &seal, &parts).await;
                match attempt {
                    Ok(socketio) => break (node, socketio),
                    Err(e) => {
                        node.stop().await;
                        if !e.is_transient() {
                            return Err(e);
                        }
                        tracing::warn!(error = %e, retry_in = ?delay, "Redis is not reachable yet");
                        tokio::select! {
                            () = tokio::time::sleep(delay) => {}
                            () = shutdown.clone() => return Ok(()),
                        }
                        delay = (delay * 2).min(RETRY_MAX);
                    }
                }
            }
        }
    };
    node.publish(&info);

    let draining = Arc::new(AtomicBool::new(false));
    let state = AppState {
        node: node_id,
        local: node.local(),
        push: socketio.push,
        cluster: node.cluster.clone(),
        client_bundle: load_client_bundle(&config),
        metrics: metrics.clone(),
        tls: tls.is_some(),
        draining: draining.clone(),
        adapter_redis: node.adapter.as_ref().map(|(sub, _)| sub.client.clone()),
        page: http::page_html(config.reuse_port),
        api_token: config.api_token.as_deref().map(Arc::from),
        admission: info.admission.clone(),
        query_limit: http::throttle::QueryLimit::new(config.query_rate).map(Arc::new),
        namespaces,
        delivery: info.delivery.clone(),
    };
    let mut app = http::router(state);
    if admin.is_some() {
        app = app.merge(crate::admin::ui::routes(&config.admin_ui_dir));
    }
    // The Socket.IO layer wraps every route and the fallback: `/socket.io/*` never reaches our handlers. The
    // gateway's plain websockets are outside it.
    let mut app = (socketio.layer)(app);
    if let Some(gateway) = &node.gateway {
        app = app.merge(crate::gateway::ws::routes(gateway.clone()));
    }

    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let handle = axum_server::Handle::new();
    let drain = tokio::spawn(drain_on(
        shutdown,
        draining.clone(),
        handle.clone(),
        node,
        info.clone(),
    ));
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!("listening on {scheme}://{addr}");
    let app = app.layer(axum::middleware::from_fn_with_state(
        info,
        http::limit_sessions,
    ));
    // Outside the Socket.IO layer (inside `app`) so `/socket.io/` gets CORS too, and outside the rate limit so a
    // preflight is never counted as a new session.
    let app = match http::cors(&cors_origins) {
        Some(cors) => app.layer(cors),
        None => app,
    };
    let app = app.layer(axum::middleware::map_request(http::detach_head));
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    let header_timeout = config.header_read_timeout();
    let pending = pending::Pending::new(
        config
            .max_pending_connections
            .try_into()
            .unwrap_or(usize::MAX),
        header_timeout,
        metrics.clone(),
    );
    match tls {
        Some(tls) => {
            // The pending limits cover the handshake too; axum-server's own handshake timeout (10 s) must not cut
            // it shorter than configured.
            let tls = RustlsAcceptor::new(RustlsConfig::from_config(Arc::new(tls)))
                .handshake_timeout(header_timeout);
            let mut server = axum_server::from_tcp(listener)
                .acceptor(NoDelay(pending::Acceptor::new(tls, pending)))
                .handle(handle);
            bound_request_heads(server.http_builder(), header_timeout);
            server.serve(service).await?
        }
        None => {
            let mut server = axum_server::from_tcp(listener)
                .acceptor(NoDelay(pending::Acceptor::new(DefaultAcceptor, pending)))
                .handle(handle);
            bound_request_heads(server.http_builder(), header_timeout);
            server.serve(service).await?
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

/// hyper's `header_read_timeout`: every request head after a connection's first (which [`pending`] bounds) must
/// arrive within `timeout`, so an idle keep-alive connection is closed after it too. hyper needs a timer for it.
fn bound_request_heads(
    builder: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    timeout: Duration,
) {
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(timeout);
}

/// What start-up reads: the settings, the node's context, and the optional capabilities.
struct Parts<'a> {
    config: &'a Config,
    info: &'a NodeInfo,
    admin: &'a Option<Arc<Admin>>,
    gateway: &'a Option<GatewayConfig>,
    /// The `[[webhook]]` tables.
    webhooks: &'a Hooks,
    /// The namespaces with members' presence (`presence = true`).
    presence: Arc<[crate::config::file::NamePattern]>,
}

/// The `[[webhook]]` tables, shared by the tracker and the dispatcher.
type Hooks = Arc<[Arc<CheckedWebhook>]>;

/// The Socket.IO side of a started node, for the HTTP routes.
struct SocketIoParts {
    /// Wraps routes in the Socket.IO layer, whose type depends on the adapter.
    layer: Box<dyn FnOnce(axum::Router) -> axum::Router + Send>,
    /// Emits to rooms on every node, for `POST /send`.
    push: Arc<dyn Push>,
}

/// What a running node holds. Every part is kept from the moment it exists, so that [`Node::stop`] releases exactly
/// what was opened, whether an attempt to join the cluster failed half-way or the node is shutting down.
#[derive(Default)]
struct Node {
    /// This node's sockets (their namespaces hold the adapter's subscriptions in a cluster).
    local: Option<Arc<dyn LocalRooms>>,
    /// Reliable delivery's store (memory on a single node), published to the handlers once started.
    store: Option<Arc<dyn Store>>,
    /// The room-query protocol and membership: two Redis connections and the heartbeat tasks.
    cluster: Option<Arc<Cluster>>,
    /// Keeps the holders of user rooms true to the membership ([`keep_holders`]).
    holders: Option<tokio::task::JoinHandle<()>>,
    /// The event-bus gateway's readers and connections.
    gateway: Option<Arc<Gateway>>,
    /// The socket.io Redis emitter protocol's subscriber and the task applying its messages.
    emitter: Option<Emitter>,
    /// The task publishing broadcasts for Node servers (`NODE_ADAPTER_COMPAT`).
    node_compat: Option<tokio::task::JoinHandle<()>>,
    /// The socketioxide-redis adapter's connection, and the watcher counting its events.
    adapter: Option<(redis::Subscriber, metrics::RedisWatch)>,
    /// The delivery store's (and admin sessions') connection, and its watcher.
    store_client: Option<(fred::clients::Client, metrics::RedisWatch)>,
    /// Connection state recovery, when a namespace has a window, and the task keeping its live sessions.
    recovery: Option<(Arc<Recovery>, tokio::task::JoinHandle<()>)>,
    /// Lifecycle webhooks, when the file has `[[webhook]]`: this node's sockets counted, and the dispatcher.
    webhooks: Option<(Arc<Tracker>, tokio::task::JoinHandle<()>)>,
    /// This node's id, for taking its sockets from the webhooks' counts as it leaves.
    node_id: Option<Arc<str>>,
}

impl Node {
    /// This node's sockets; set by every way of starting.
    fn local(&self) -> Arc<dyn LocalRooms> {
        self.local.clone().expect("a started node has its sockets")
    }

    /// Hands the started parts to the socket handlers. Only a node that started publishes, and once: a failed
    /// attempt's cluster never reaches them.
    fn publish(&self, info: &NodeInfo) {
        if let Some(store) = &self.store {
            let _ = info.delivery.set(store.clone());
        }
        if let Some(cluster) = &self.cluster {
            let _ = info.cluster.set(cluster.clone());
        }
        if let Some(gateway) = &self.gateway {
            let bus: Arc<dyn crate::realtime::bus::Bus> = gateway.clone();
            let _ = info.bus.set(bus);
        }
        if let Some((recovery, _)) = &self.recovery {
            let _ = info.recovery.set(recovery.clone());
        }
        if let Some((tracker, _)) = &self.webhooks {
            let _ = info.webhooks.set(tracker.clone());
        }
    }

    /// Closes every client's transport, so that it reconnects elsewhere.
    async fn close_sockets(&self) {
        let Some(local) = &self.local else { return };
        if tokio::time::timeout(DRAIN_TIMEOUT, local.close())
            .await
            .is_err()
        {
            tracing::warn!("closing client sockets took too long");
        }
    }

    /// Leaves Redis: the tasks first, then the cluster (whose last heartbeat says it leaves), the gateway, the
    /// adapter and the store's connection.
    async fn leave(&self) {
        if let Some(task) = &self.holders {
            task.abort();
        }
        if let Some((_, task)) = &self.recovery {
            task.abort();
        }
        if let Some(task) = &self.node_compat {
            task.abort();
        }
        let leave = async {
            // This node's sockets are closed: what they still count goes at once, with its events (changes
            // still queued then find nothing to take).
            if let (Some((tracker, task)), Some(node)) = (&self.webhooks, &self.node_id) {
                task.abort();
                tracker.stop();
                if let Err(e) = tracker.reap(node).await {
                    tracing::warn!(error = %e, "webhooks: this node's sockets not taken from the counts");
                }
            }
            if let Some(cluster) = &self.cluster {
                cluster.stop().await;
            }
            if let Some(emitter) = &self.emitter {
                emitter.stop().await;
            }
            if let Some(gateway) = &self.gateway {
                gateway.stop().await;
            }
            if let Some((sub, _)) = &self.adapter {
                sub.close().await;
            }
            if let Some((client, _)) = &self.store_client {
                let _ = fred::interfaces::ClientLike::quit(client).await;
            }
        };
        // Bounded, should Redis be the reason we stop.
        if tokio::time::timeout(DRAIN_TIMEOUT, leave).await.is_err() {
            tracing::warn!("leaving Redis took too long");
        }
    }

    /// Stops all of it: after a failed start-up attempt, so that retries pile up neither connections nor tasks.
    async fn stop(&self) {
        self.close_sockets().await;
        self.leave().await;
    }
}

/// A single node: the in-memory adapter and delivery store, nothing to join.
fn start_single(parts: &Parts<'_>) -> Result<(Node, SocketIoParts), StartError> {
    let info = parts.info;
    let (recorder, recovery) = recovery_of(
        info,
        Arc::new(MemoryLog::new()),
        Arc::new(MemorySessions::new()),
    );
    let state = RecordingState {
        inner: (),
        recorder,
    };
    let builder = io_builder(info.clone(), parts.admin.clone(), parts.config)
        .with_adapter::<Recording<socketioxide::adapter::LocalAdapter>>(state);
    let (builder, resolved) = resolving(builder, info);
    let (layer, io) = builder.build_layer();
    let _ = resolved.set(io.clone());
    crate::realtime::handshake::register(&info.namespaces, &io).map_err(StartError::Config)?;
    if let Some(admin) = parts.admin {
        admin.register(&io);
    }
    let node = Node {
        local: Some(Arc::new(crate::realtime::local::Local {
            io: io.clone(),
            observer: info.observer.clone(),
            webhooks: info.webhooks.clone(),
            directory: info.directory.clone(),
            delivery: info.delivery.clone(),
        })),
        store: Some(Arc::new(MemoryStore::new())),
        recovery: keep_alive(recovery, &io, info),
        node_id: Some(info.id.clone()),
        ..Node::default()
    };
    let push: Arc<dyn Push> = Arc::new(io);
    let node = Node {
        webhooks: tracker_of(parts, Arc::new(crate::webhooks::MemoryStore::default()))
            .map(|t| start_webhooks(parts, t, push.clone())),
        ..node
    };
    let socketio = SocketIoParts {
        layer: Box::new(move |app| app.layer(layer)),
        push,
    };
    Ok((node, socketio))
}

/// Connection state recovery over `log` and `sessions`: the recorder every namespace's adapter shares (a
/// namespace without a window records nothing), and the node's recovery, `None` when no namespace has one.
fn recovery_of(
    info: &NodeInfo,
    log: Arc<dyn EventLog>,
    sessions: Arc<dyn Sessions>,
) -> (Arc<Recorder>, Option<Arc<Recovery>>) {
    let namespaces = info.namespaces.clone();
    let keep = move |ns: &str| {
        namespaces
            .find(ns)
            .and_then(|n| n.recovery)
            .map(recover::log_keep)
    };
    let recorder = Recorder::new(log, keep, info.metrics.recovery.clone());
    let recovery = info
        .namespaces
        .iter()
        .any(|ns| ns.recovery.is_some())
        .then(|| {
            Recovery::new(
                info.id.clone(),
                sessions,
                recorder.clone(),
                info.metrics.clone(),
            )
        });
    (recorder, recovery)
}

/// Gives socketioxide our session hook, when a namespace recovers: the returned cell takes the built `SocketIo`.
fn resolving<A: Adapter>(
    builder: socketioxide::SocketIoBuilder<A>,
    info: &NodeInfo,
) -> (
    socketioxide::SocketIoBuilder<A>,
    Arc<std::sync::OnceLock<SocketIo<A>>>,
) {
    let io = Arc::new(std::sync::OnceLock::new());
    if !info.namespaces.iter().any(|ns| ns.recovery.is_some()) {
        return (builder, io);
    }
    let resolver = Resolver {
        namespaces: info.namespaces.clone(),
        admission: info.admission.clone(),
        metrics: info.metrics.clone(),
        recovery: info.recovery.clone(),
        io: io.clone(),
        cluster: info.cluster.clone(),
    };
    (builder.session_resolver(resolver), io)
}

/// Recovery's log and sessions in Redis, under `REDIS_PREFIX:recovery`.
fn recovery_stores(
    client: &fred::clients::Client,
    redis: &redis::Endpoint,
    config: &Config,
    info: &NodeInfo,
) -> (Arc<dyn EventLog>, Arc<dyn Sessions>) {
    let prefix = format!("{}:recovery", config.redis_prefix);
    let malformed = &info.metrics.recovery.malformed;
    let log = RedisLog::new(
        client.clone(),
        redis.clone(),
        config.request_timeout(),
        &prefix,
    )
    .counting_malformed_in(malformed.clone());
    let sessions = crate::recovery::RedisSessions::new(client.clone(), &prefix)
        .counting_malformed_in(malformed.clone());
    (Arc::new(log), Arc::new(sessions))
}

/// Starts keeping the live sockets' sessions, when the node recovers any.
fn keep_alive<A: Adapter>(
    recovery: Option<Arc<Recovery>>,
    io: &SocketIo<A>,
    info: &NodeInfo,
) -> Option<(Arc<Recovery>, tokio::task::JoinHandle<()>)> {
    let recovery = recovery?;
    let task = tokio::spawn(
        recovery
            .clone()
            .keep_alive(io.clone(), info.namespaces.clone()),
    );
    Some((recovery, task))
}

/// One attempt to join the cluster, filling `node` as it goes: reliable delivery's store, the adapter on its own
/// subscriber, the Socket.IO layer on the adapter, our room-query protocol, the gateway, and the emitter protocol.
async fn join_cluster(
    node: &mut Node,
    redis: &redis::Endpoint,
    seal: &Seal,
    parts: &Parts<'_>,
) -> Result<SocketIoParts, StartError> {
    let Parts {
        config,
        info,
        admin,
        gateway,
        ..
    } = *parts;
    // Reliable delivery's store, on a client of its own; this node's holders left by an earlier life (killed
    // without saying goodbye) are forgotten before it serves.
    let client = redis::connect_client(redis, config.request_timeout()).await?;
    let watch = info.metrics.watch_redis(&client, "delivery");
    node.store_client = Some((client.clone(), watch));
    let store = RedisStore::new(client.clone(), &config.redis_prefix)
        .rebuilding_from(redis, config.request_timeout())
        .counting_malformed_in(info.metrics.delivery_malformed_entries.clone());
    if let Some(admin) = admin {
        admin.use_sessions(Arc::new(RedisSessions::new(
            client.clone(),
            &config.redis_prefix,
        )));
    }
    match store.forget_node(&info.id, &|room| info.ttl_of(room)).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(holders = n, "holders of this node's earlier life forgotten"),
        Err(crate::delivery::StoreError::Redis(e)) => {
            return Err(redis::connect_err(redis, e).into());
        }
        Err(e) => return Err(StartError::Adapter(format!("delivery store: {e}"))),
    }
    node.store = Some(Arc::new(store));
    node.node_id = Some(info.id.clone());
    let tracker = tracker_of(
        parts,
        Arc::new(crate::webhooks::RedisStore::new(
            client.clone(),
            &config.redis_prefix,
        )),
    );
    if let Some(tracker) = &tracker {
        // Sockets of this node's earlier life (killed before it could say so) are gone: their events come now.
        match tracker.reap(&info.id).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                events = n,
                "webhooks: sockets of this node's earlier life taken away"
            ),
            Err(crate::webhooks::WebhookError::Redis(e)) => {
                return Err(redis::connect_err(redis, e).into());
            }
            Err(e) => return Err(StartError::Adapter(format!("webhooks: {e}"))),
        }
    }

    let sub = redis::Subscriber::new(redis, Duration::from_secs(5))?;
    let watch = info.metrics.watch_redis(&sub.client, "adapter_subscriber");
    let sub_client = sub.client.clone();
    node.adapter = Some((sub, watch));
    let adapter = RedisAdapterCtr::new_with_fred_config(
        sub_client,
        RedisAdapterConfig::new()
            .with_prefix(format!("{}-adapter", config.redis_prefix))
            .with_request_timeout(config.request_timeout())
            // Messages from other nodes queue here; when it is full the adapter drops them (and logs),
            // so a burst of broadcasts must fit. Memory is only taken while a backlog exists.
            .with_stream_buffer(ADAPTER_STREAM_BUFFER),
    )
    .await
    .map_err(|e| redis::connect_err(redis, e))?;
    let (log, sessions) = recovery_stores(&client, redis, config, info);
    let (recorder, recovery) = recovery_of(info, log, sessions);
    // Outside the recording adapter: a broadcast of a recovering namespace is published for Node servers by the
    // node it starts on, before it goes to the log that every node delivers from.
    let publisher = config.node_adapter_compat.then(|| {
        let (publisher, task) = Publisher::start(
            &config.emitter_key,
            &emitter::cluster_uid(&config.redis_prefix),
            client.clone(),
            info.metrics.node_adapter_broadcasts.clone(),
        );
        node.node_compat = Some(task);
        publisher
    });
    let state = CompatState {
        inner: RecordingState {
            inner: adapter,
            recorder,
        },
        publisher,
    };
    let builder = io_builder(info.clone(), admin.clone(), config)
        .with_adapter::<NodeCompat<Recording<FredAdapter<_>>>>(state);
    let (builder, resolved) = resolving(builder, info);
    let (layer, io) = builder.build_layer();
    let _ = resolved.set(io.clone());
    node.recovery = keep_alive(recovery, &io, info);
    let local: Arc<dyn LocalRooms> = Arc::new(crate::realtime::local::Local {
        io: io.clone(),
        observer: info.observer.clone(),
        webhooks: info.webhooks.clone(),
        directory: info.directory.clone(),
        delivery: info.delivery.clone(),
    });
    node.local = Some(local.clone());
    for init in
        crate::realtime::handshake::register(&info.namespaces, &io).map_err(StartError::Config)?
    {
        init.await.map_err(|e| StartError::Adapter(e.to_string()))?;
    }
    if let Some(admin) = admin {
        let init = admin.register(&io);
        init.await.map_err(|e| StartError::Adapter(e.to_string()))?;
    }

    let settings = cluster::Settings {
        prefix: config.redis_prefix.clone(),
        node: info.id.clone(),
        timeout: config.request_timeout(),
        heartbeat: config.heartbeat(),
        seal: seal.clone(),
    };
    let cluster = Cluster::start(redis, settings, local, info.metrics.clone()).await?;
    node.cluster = Some(cluster.clone());
    node.holders = Some(tokio::spawn(keep_holders(
        cluster.changes(),
        cluster.down_after(),
        io.clone(),
        info.clone(),
    )));

    if let Some(gateway) = gateway {
        let started =
            Gateway::start(gateway.clone(), redis, info, config.request_timeout()).await?;
        node.gateway = Some(started);
    }
    if !config.emitter_key.is_empty() {
        let settings = emitter::Settings {
            key: config.emitter_key.clone(),
            own_uid: emitter::cluster_uid(&config.redis_prefix),
            max_bytes: usize::try_from(config.max_payload_bytes).unwrap_or(usize::MAX),
            once_prefix: format!("{}:emitter-once", config.redis_prefix),
        };
        let started = Emitter::start(
            settings,
            redis,
            io.clone(),
            info,
            client.clone(),
            config.request_timeout(),
        )
        .await?;
        node.emitter = Some(started);
    }
    let push: Arc<dyn Push> = Arc::new(io);
    node.webhooks = tracker.map(|t| start_webhooks(parts, t, push.clone()));
    Ok(SocketIoParts {
        layer: Box::new(move |app| app.layer(layer)),
        push,
    })
}

/// Keeps the holders of user rooms in the delivery store true to the cluster's membership (see
/// [`crate::delivery`], "Dead nodes"):
///
/// * a node declared down (no heartbeat for 3 intervals) took its sockets with it: its holders are forgotten, so
///   its users' rooms start their TTL. Every survivor does it; it is idempotent.
/// * this node back from being cut off (it did not hear its own heartbeat for 2 intervals: paused, stalled, or
///   away from Redis): the others may have declared it down and forgotten its holders while its sockets stayed
///   connected, so it holds their rooms again ([`reliable::hold_again`]). Twice: at once, and once more
///   `down_after` later, in case a survivor's forgetting, decided just before we came back, landed after the first
///   pass. Likewise its sockets are counted again for the webhooks where a survivor reaped them ([`count_again`]).
///
/// A node that says it is leaving is not forgotten here: it lets its rooms go itself as it drains ([`drain_on`]),
/// and a `leaving` heartbeat can be forged without `CLUSTER_SECRET`, where silence cannot.
async fn keep_holders<A: Adapter>(
    mut changes: tokio::sync::broadcast::Receiver<Change>,
    down_after: Duration,
    io: SocketIo<A>,
    info: NodeInfo,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match changes.recv().await {
            Ok(Change::Down(node)) => {
                tokio::spawn(reap(info.clone(), node.clone()));
                tokio::spawn(forget(info.clone(), node));
            }
            Ok(Change::Back) => {
                let (io, info) = (io.clone(), info.clone());
                tokio::spawn(async move {
                    count_again(&info);
                    hold_again(&io, &info).await;
                    tokio::time::sleep(down_after).await;
                    count_again(&info);
                    hold_again(&io, &info).await;
                });
            }
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(
                    missed = n,
                    "membership changes missed: holders may be left behind"
                );
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Takes the sockets of `node`, declared down, from the webhooks' counts: every survivor tries, the first does it.
async fn reap(info: NodeInfo, node: Arc<str>) {
    let Some(tracker) = info.webhooks.get() else {
        return;
    };
    match tracker.reap(&node).await {
        Ok(n) => {
            tracing::info!(node = %node, events = n, "webhooks: a node's sockets taken from the counts")
        }
        Err(e) => {
            tracing::warn!(node = %node, error = %e, "webhooks: a node's sockets not taken from the counts")
        }
    }
}

/// Counts this node's sockets again in the webhooks' counts where a survivor reaped them while they stayed
/// connected (harmless where none did); a later change of a reaped socket would also find out.
fn count_again(info: &NodeInfo) {
    if let Some(tracker) = info.webhooks.get() {
        tracker.restore();
    }
}

/// The tracker of this node's sockets into `store`, when some namespace is counted: a `[[webhook]]` wants it, or
/// it has members' presence.
fn tracker_of(parts: &Parts<'_>, store: Arc<dyn crate::webhooks::Store>) -> Option<Arc<Tracker>> {
    if parts.webhooks.is_empty() && parts.presence.is_empty() {
        return None;
    }
    let info = parts.info;
    Some(Tracker::start(
        info.id.clone(),
        store,
        parts.webhooks.clone(),
        parts.presence.clone(),
        info.metrics.webhooks.clone(),
    ))
}

/// The dispatchers sending the counts' events: the webhooks' to their URLs, members' presence to the rooms
/// (through `push`). Each its own task and metrics; one handle aborts both.
fn start_webhooks(
    parts: &Parts<'_>,
    tracker: Arc<Tracker>,
    push: Arc<dyn Push>,
) -> (Arc<Tracker>, tokio::task::JoinHandle<()>) {
    let info = parts.info;
    let client = reqwest::Client::new();
    let hooks: Vec<Arc<dyn Outlet>> = parts
        .webhooks
        .iter()
        .map(|hook| {
            tracing::info!(url = %hook.url, namespaces = ?hook.namespaces.iter().map(ToString::to_string).collect::<Vec<_>>(), "lifecycle webhook");
            Arc::new(Webhook {
                hook: hook.clone(),
                client: client.clone(),
            }) as Arc<dyn Outlet>
        })
        .collect();
    let presence: Vec<Arc<dyn Outlet>> = match parts.presence.is_empty() {
        true => vec![],
        false => vec![Arc::new(crate::realtime::presence::Presence {
            push,
            namespaces: parts.presence.clone(),
        })],
    };
    let dispatchers = [
        (hooks, info.metrics.webhooks.clone()),
        (presence, info.metrics.presence.clone()),
    ]
    .into_iter()
    .filter(|(outlets, _)| !outlets.is_empty())
    .map(|(outlets, metrics)| {
        Arc::new(Dispatcher {
            store: tracker.store().clone(),
            outlets,
            node: info.id.clone(),
            metrics,
        })
        .run()
    })
    .collect::<Vec<_>>();
    let task = tokio::spawn(async move {
        futures_util::future::join_all(dispatchers).await;
    });
    (tracker, task)
}

/// Forgets the holders of `node`, declared down.
async fn forget(info: NodeInfo, node: Arc<str>) {
    let Some(store) = info.delivery() else {
        return;
    };
    match store.forget_node(&node, &|room| info.ttl_of(room)).await {
        Ok(n) => {
            info.metrics.delivery_holders_forgotten.inc_by(n);
            tracing::info!(node = %node, "node forgotten: {n} holders");
        }
        Err(e) => tracing::warn!(node = %node, error = %e, "node not forgotten: its holders stay"),
    }
}

/// Holds this node's user rooms again, after it was cut off.
async fn hold_again<A: Adapter>(io: &SocketIo<A>, info: &NodeInfo) {
    let n = reliable::hold_again(io, info).await;
    info.metrics.delivery_holders_restored.inc_by(n);
    tracing::info!(
        holders = n,
        "user rooms held again after this node was cut off"
    );
}

/// On shutdown: stop accepting (so clients that reconnect land on another node, even on a shared port) while
/// HTTP requests in flight finish; close every client's transport (so it reconnects elsewhere); then leave the
/// cluster and close the Redis connections (so the other nodes stop counting this one at once). Each step is
/// bounded by [`DRAIN_TIMEOUT`].
///
/// In a cluster, before leaving, the node forgets its own holders of user rooms: its sockets' disconnect handlers
/// let their rooms go, but socketioxide runs them in tasks of their own that nothing waits for, and the store's
/// connection closes right after.
async fn drain_on(
    shutdown: impl Future<Output = ()>,
    draining: Arc<AtomicBool>,
    handle: axum_server::Handle,
    node: Node,
    info: NodeInfo,
) {
    shutdown.await;
    draining.store(true, Ordering::Relaxed);
    handle.graceful_shutdown(Some(DRAIN_TIMEOUT));
    node.close_sockets().await;
    if node.cluster.is_some()
        && let Some(store) = info.delivery()
    {
        let ttl_of = |room: &_| info.ttl_of(room);
        let let_go = store.forget_node(&info.id, &ttl_of);
        match tokio::time::timeout(DRAIN_TIMEOUT, let_go).await {
            Ok(Ok(n)) => tracing::debug!(holders = n, "this node's user rooms let go"),
            Ok(Err(e)) => tracing::warn!(error = %e, "this node's user rooms not let go"),
            Err(_) => tracing::warn!("letting this node's user rooms go took too long"),
        }
    }
    node.leave().await;
}

/// The namespaces of the config file, or `/` alone (today's behaviour) without one; and `[admin]` when enabled.
fn load_namespaces(
    config: &Config,
    metrics: &Arc<metrics::Metrics>,
    logins: &Arc<FailedLogins>,
) -> Result<
    (
        Namespaces,
        Option<AdminConfig>,
        Option<GatewayConfig>,
        Hooks,
    ),
    StartError,
> {
    let Some(path) = &config.config else {
        return Ok((Namespaces::single_default(), None, None, Arc::new([])));
    };
    let checked = file::load(path).map_err(|e| StartError::ConfigFile(e.to_string()))?;
    let namespaces = Namespaces::build(
        checked.namespaces,
        &path.display().to_string(),
        metrics,
        logins,
    )
    .map_err(StartError::ConfigFile)?;
    for ns in namespaces.iter() {
        tracing::info!(
            namespace = %ns.pattern,
            auth = ns.verifier.kind(),
            rooms = ?ns.rooms,
            forward = ns.forward,
            views = ns.views,
            "serving namespace"
        );
    }
    if checked.gateway.is_some() && config.redis_url.is_none() {
        return Err(StartError::ConfigFile(format!(
            "{}: [gateway] needs REDIS_URL: its streams are in Redis, which a single node does not use",
            path.display()
        )));
    }
    let hooks: Hooks = checked.webhooks.into_iter().map(Arc::new).collect();
    Ok((namespaces, checked.admin, checked.gateway, hooks))
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
