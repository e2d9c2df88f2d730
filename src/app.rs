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
    config::file::{self, AdminConfig, GatewayConfig},
    delivery::{MemoryStore, RedisStore, Store},
    domain::validate,
    gateway::Gateway,
    http::{self, AppState},
    net::{nodelay::NoDelay, pending, tls},
    realtime::{Namespaces, NodeInfo, admission, auth::FailedLogins, push::Push, reliable},
    redis,
    telemetry::metrics,
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
        .collect::<Result<Vec<_>, _>>()?;
    let max_sockets =
        crate::net::files::socket_cap(config.max_sockets).map_err(StartError::Config)?;
    tracing::info!(max_sockets, "socket cap");
    let metrics = Arc::new(metrics::Metrics::new());
    let logins = Arc::new(FailedLogins::new(config.login_failures_per_minute));
    let (namespaces, admin_config, gateway_config) = load_namespaces(&config, &metrics, &logins)?;
    let namespaces = Arc::new(namespaces);
    let draining = Arc::new(AtomicBool::new(false));
    let info = NodeInfo {
        id: node.clone(),
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
            .map(governor::Quota::per_second),
        handshakes: Arc::default(),
        delivery: Arc::default(),
        observer: Arc::default(),
        bus: Arc::default(),
        gateway_events: gateway_config
            .as_ref()
            .map(|g| g.reply_events())
            .unwrap_or_default()
            .into(),
    };
    let admin = admin_config.map(|c| Admin::new(c, info.clone(), logins.clone()));
    let admin_ui = admin_ui(&admin, &config);

    let query_limit = http::throttle::QueryLimit::new(config.query_rate).map(Arc::new);
    let api_token: Option<Arc<str>> = config.api_token.as_deref().map(Arc::from);
    let app_state =
        |(local, push): (Arc<dyn LocalRooms>, Arc<dyn Push>),
         cluster: Option<Arc<Cluster>>,
         adapter_redis: Option<fred::clients::SubscriberClient>| AppState {
            node: node.clone(),
            local,
            push,
            cluster,
            client_bundle: client_bundle.clone(),
            metrics: metrics.clone(),
            tls: tls.is_some(),
            draining: draining.clone(),
            adapter_redis,
            page: page.clone(),
            api_token: api_token.clone(),
            admission: info.admission.clone(),
            query_limit: query_limit.clone(),
            namespaces: namespaces.clone(),
            delivery: info.delivery.clone(),
        };

    // The Socket.IO layer wraps every route and the fallback: `/socket.io/*` never reaches our handlers.
    let (app, local, cluster, adapter_sub): Serving = match &config.redis_url {
        None => {
            if config.cluster_secret.is_some() {
                tracing::warn!(
                    "CLUSTER_SECRET is set but REDIS_URL is not: a single node has nothing to sign"
                );
            }
            let (layer, io) = io_builder(info.clone(), admin.clone(), &config).build_layer();
            crate::realtime::handshake::register(&namespaces, &io).map_err(StartError::Config)?;
            if let Some(admin) = &admin {
                admin.register(&io);
            }
            let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
            let _ = info.delivery.set(store);
            let push: Arc<dyn Push> = Arc::new(io.clone());
            let local: Arc<dyn LocalRooms> = Arc::new(crate::realtime::local::Local {
                io,
                observer: info.observer.clone(),
            });
            let app = with_admin_ui(
                http::router(app_state((local.clone(), push), None, None)),
                &admin_ui,
            )
            .layer(layer);
            (app, local, None, None)
        }
        Some(url) => {
            let redis = redis::Endpoint::parse(url, config.redis_ca.as_deref())?;
            let seal = config.cluster_seal().map_err(StartError::Config)?;
            if seal.is_signed() {
                tracing::info!("cluster messages are signed (CLUSTER_SECRET)");
            }
            // Redis may not be up yet (all services starting at boot): retry what can heal, fail on the rest.
            let mut delay = RETRY_FIRST;
            loop {
                let attempt = join_cluster(
                    &redis,
                    &seal,
                    &config,
                    info.clone(),
                    &admin,
                    &gateway_config,
                    &app_state,
                );
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

/// What serving needs: the app, the local sockets, and in cluster mode our query protocol and the adapter's
/// subscriber (both closed at shutdown).
type Serving = (
    axum::Router,
    Arc<dyn LocalRooms>,
    Option<Arc<Cluster>>,
    Option<AdapterLink>,
);

/// The socketioxide-redis adapter's connection, and the watchers counting its events: they go together. Once
/// joined, also the delivery store's connection and its watcher, closed after the adapter's, and the task keeping
/// the holders of user rooms true to the membership ([`keep_holders`]), stopped first.
struct AdapterLink {
    sub: redis::Subscriber,
    _watch: metrics::RedisWatch,
    store: Option<(fred::clients::Client, metrics::RedisWatch)>,
    holders: Option<tokio::task::JoinHandle<()>>,
    /// The event-bus gateway's readers and connections, stopped with the rest.
    gateway: Option<Arc<Gateway>>,
}

impl AdapterLink {
    async fn close(&self) {
        if let Some(task) = &self.holders {
            task.abort();
        }
        if let Some(gateway) = &self.gateway {
            gateway.stop().await;
        }
        self.sub.close().await;
        if let Some((client, _)) = &self.store {
            let _ = fred::interfaces::ClientLike::quit(client).await;
        }
    }
}

/// Closes what a failed attempt to join opened, so that retries do not pile up connections and tasks: the
/// namespaces (their adapters' Redis subscriptions and the tasks reading them), then the adapter's connection.
/// Each step is bounded by [`DRAIN_TIMEOUT`], should Redis be the reason the attempt failed.
async fn abandon(local: &dyn LocalRooms, adapter: &AdapterLink) {
    if tokio::time::timeout(DRAIN_TIMEOUT, local.close())
        .await
        .is_err()
    {
        tracing::warn!("closing the namespaces of a failed start-up attempt took too long");
    }
    if tokio::time::timeout(DRAIN_TIMEOUT, adapter.close())
        .await
        .is_err()
    {
        tracing::warn!(
            "closing the adapter's connection of a failed start-up attempt took too long"
        );
    }
}

/// Builds the HTTP state from what serving made: the local sockets and their push side, the cluster protocol and
/// the adapter's subscriber (both `None` on a single node).
type StateOf<'a> = dyn Fn(
        (Arc<dyn LocalRooms>, Arc<dyn Push>),
        Option<Arc<Cluster>>,
        Option<fred::clients::SubscriberClient>,
    ) -> AppState
    + Sync
    + 'a;

/// One attempt to join the cluster: the adapter on its own subscriber, the Socket.IO layer on the adapter, and
/// our room-query protocol.
async fn join_cluster(
    redis: &redis::Endpoint,
    seal: &Seal,
    config: &Config,
    info: NodeInfo,
    admin: &Option<Arc<Admin>>,
    gateway: &Option<GatewayConfig>,
    app_state: &StateOf<'_>,
) -> Result<Serving, StartError> {
    // Reliable delivery's store, on a client of its own; this node's holders left by an earlier life (killed
    // without saying goodbye) are forgotten before it serves.
    let client = redis::connect_client(redis, config.request_timeout()).await?;
    let store = RedisStore::new(client.clone(), &config.redis_prefix)
        .rebuilding_from(redis, config.request_timeout())
        .counting_malformed_in(info.metrics.delivery_malformed_entries.clone());
    if let Some(admin) = admin {
        let sessions = RedisSessions::new(client.clone(), &config.redis_prefix);
        admin.use_sessions(Arc::new(sessions));
    }
    let forgotten = store.forget_node(&info.id, &|room| info.ttl_of(room)).await;
    let joined = match forgotten {
        Ok(n) => {
            if n > 0 {
                tracing::info!(holders = n, "holders of this node's earlier life forgotten");
            }
            join_adapter(redis, seal, config, info.clone(), admin, app_state).await
        }
        Err(crate::delivery::StoreError::Redis(e)) => Err(redis::connect_err(redis, e).into()),
        Err(e) => Err(StartError::Adapter(format!("delivery store: {e}"))),
    };
    match joined {
        Ok(mut serving) => {
            if let Some(gateway) = gateway {
                let started =
                    Gateway::start(gateway.clone(), redis, &info, config.request_timeout()).await;
                let started = match started {
                    Ok(started) => started,
                    Err(e) => {
                        if let Some(link) = &serving.3 {
                            abandon(&*serving.1, link).await;
                        }
                        let _ = fred::interfaces::ClientLike::quit(&client).await;
                        return Err(e);
                    }
                };
                let bus: Arc<dyn crate::realtime::bus::Bus> = started.clone();
                let _ = info.bus.set(bus);
                serving.0 = serving.0.merge(crate::gateway::ws::routes(started.clone()));
                if let Some(link) = serving.3.as_mut() {
                    link.gateway = Some(started);
                }
            }
            let _ = info.delivery.set(Arc::new(store));

            if let Some(link) = serving.3.as_mut() {
                let watch = info.metrics.watch_redis(&client, "delivery");
                link.store = Some((client, watch));
            }
            Ok(serving)
        }
        Err(e) => {
            let _ = fred::interfaces::ClientLike::quit(&client).await;
            Err(e)
        }
    }
}

/// Joins the cluster through the socketioxide-redis adapter and the cluster protocol.
async fn join_adapter(
    redis: &redis::Endpoint,
    seal: &Seal,
    config: &Config,
    info: NodeInfo,
    admin: &Option<Arc<Admin>>,
    app_state: &StateOf<'_>,
) -> Result<Serving, StartError> {
    let adapter_sub = redis::Subscriber::new(redis, Duration::from_secs(5))?;
    let link = AdapterLink {
        _watch: info
            .metrics
            .watch_redis(&adapter_sub.client, "adapter_subscriber"),
        sub: adapter_sub,
        store: None,
        holders: None,
        gateway: None,
    };
    let adapter = RedisAdapterCtr::new_with_fred_config(
        link.sub.client.clone(),
        RedisAdapterConfig::new()
            .with_prefix(format!("{}-adapter", config.redis_prefix))
            .with_request_timeout(config.request_timeout())
            // Messages from other nodes queue here; when it is full the adapter drops them (and logs),
            // so a burst of broadcasts must fit. Memory is only taken while a backlog exists.
            .with_stream_buffer(ADAPTER_STREAM_BUFFER),
    )
    .await;
    let adapter = match adapter {
        Ok(adapter) => adapter,
        Err(e) => {
            link.close().await;
            return Err(redis::connect_err(redis, e).into());
        }
    };
    let (layer, io) = io_builder(info.clone(), admin.clone(), config)
        .with_adapter::<FredAdapter<_>>(adapter)
        .build_layer();
    let local: Arc<dyn LocalRooms> = Arc::new(crate::realtime::local::Local {
        io: io.clone(),
        observer: info.observer.clone(),
    });
    let started = async {
        for init in crate::realtime::handshake::register(&info.namespaces, &io)
            .map_err(StartError::Config)?
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
        Ok::<_, StartError>(
            Cluster::start(redis, settings, local.clone(), info.metrics.clone()).await?,
        )
    };
    let cluster = match started.await {
        Ok(cluster) => cluster,
        Err(e) => {
            abandon(&*local, &link).await;
            return Err(e);
        }
    };
    let _ = info.cluster.set(cluster.clone());
    let mut link = link;
    link.holders = Some(tokio::spawn(keep_holders(
        cluster.changes(),
        cluster.down_after(),
        io.clone(),
        info.clone(),
    )));
    let push: Arc<dyn Push> = Arc::new(io.clone());
    let state = app_state(
        (local.clone(), push),
        Some(cluster.clone()),
        Some(link.sub.client.clone()),
    );
    let app = with_admin_ui(http::router(state), &admin_ui(admin, config)).layer(layer);
    Ok((app, local, Some(cluster), Some(link)))
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
///   pass.
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
                tokio::spawn(forget(info.clone(), node));
            }
            Ok(Change::Back) => {
                let (io, info) = (io.clone(), info.clone());
                tokio::spawn(async move {
                    hold_again(&io, &info).await;
                    tokio::time::sleep(down_after).await;
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
    local: Arc<dyn LocalRooms>,
    cluster: Option<Arc<Cluster>>,
    adapter_sub: Option<AdapterLink>,
    info: NodeInfo,
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
            if let Some(store) = info.delivery() {
                match store.forget_node(&info.id, &|room| info.ttl_of(room)).await {
                    Ok(n) => tracing::debug!(holders = n, "this node's user rooms let go"),
                    Err(e) => tracing::warn!(error = %e, "this node's user rooms not let go"),
                }
            }
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

/// The admin UI's routes, when `[admin]` is enabled.
fn admin_ui(admin: &Option<Arc<Admin>>, config: &Config) -> Option<axum::Router> {
    admin
        .as_ref()
        .map(|_| crate::admin::ui::routes(&config.admin_ui_dir))
}

fn with_admin_ui(app: axum::Router, ui: &Option<axum::Router>) -> axum::Router {
    match ui {
        Some(ui) => app.merge(ui.clone()),
        None => app,
    }
}

/// The namespaces of the config file, or `/` alone (today's behaviour) without one; and `[admin]` when enabled.
fn load_namespaces(
    config: &Config,
    metrics: &Arc<metrics::Metrics>,
    logins: &Arc<FailedLogins>,
) -> Result<(Namespaces, Option<AdminConfig>, Option<GatewayConfig>), StartError> {
    let Some(path) = &config.config else {
        return Ok((Namespaces::single_default(), None, None));
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
    Ok((namespaces, checked.admin, checked.gateway))
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
