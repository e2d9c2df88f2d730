//! The official socket.io admin UI (as in the forwarding service), for the whole cluster: its namespace (`/admin`), its
//! protocol (login or session, `config`, `server_stats`, `all_sockets`, per-socket events,
//! `join`/`leave`/`_disconnect`) and its static build at `/admin/` ([`ui`]).
//!
//! Cluster-wide by construction: every node sends its own `server_stats` and per-socket events to the admin
//! namespace through the adapter, so every admin socket on every node gets them; `all_sockets` and the commands
//! are our own cluster requests ([`Query::Sockets`], [`Query::Command`]), answered by each node for its sockets.
//! The admin namespace is not a `[[namespace]]`: it never appears in room queries or counts, and nothing
//! forwards into or out of it.

pub mod sessions;
pub mod stats;
pub mod ui;

use std::{
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use serde_json::Value;
use socketioxide::{
    SocketIo, TransportType,
    adapter::Adapter,
    extract::{Data, SocketRef, State, TryData},
    handler::ConnectHandler,
};
use socketioxide_core::adapter::DefinedAdapter;

use crate::{
    cluster::protocol::{Action, Query, Reply, SocketInfo},
    config::file::{AdminConfig, AdminMode},
    realtime::{
        NodeInfo,
        args::Args,
        auth::{FailedLogins, backoff::Backoff},
        local::WATCH_LEASE,
        observe::{self, Observed},
    },
};
use sessions::{MemorySessions, Sessions};
use stats::Aggregate;

/// How often each node sends its `server_stats` (the UI marks a server unhealthy after 10 s without).
const STATS_EVERY: Duration = Duration::from_secs(2);

/// Longest a login waits for its password check.
const LOGIN_QUEUE: Duration = Duration::from_secs(8);

/// The refusal the UI recognises and shows as "invalid credentials".
const INVALID: &str = "invalid credentials";

/// The admin UI's side of this node.
pub struct Admin {
    config: AdminConfig,
    node: NodeInfo,
    /// In memory until a cluster's join replaces it, before the admin namespace is registered.
    sessions: RwLock<Arc<dyn Sessions>>,
    started: Instant,
    aggregate: Mutex<Aggregate>,
    /// One password check at a time: a flood of logins costs one core, not all of them.
    checks: Arc<tokio::sync::Semaphore>,
    /// Failed logins per address, shared with the `credentials` namespaces: beyond, no check at all.
    logins: Arc<FailedLogins>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Why an admin connection was refused: its `connect_error` message.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{INVALID}")]
    InvalidCredentials,
    #[error("admin sessions unavailable: {0}")]
    Sessions(String),
    #[error("server busy checking other logins, try again")]
    Busy,
    #[error(transparent)]
    Backoff(#[from] Backoff),
}

impl Admin {
    pub fn new(config: AdminConfig, node: NodeInfo, logins: Arc<FailedLogins>) -> Arc<Self> {
        if !config.auth {
            tracing::warn!(
                namespace = config.namespace,
                "the admin UI is enabled WITHOUT a login ([admin] auth = false): anyone who reaches this port \
                 sees every socket and can disconnect them"
            );
        }
        Arc::new(Self {
            config,
            node,
            sessions: RwLock::new(Arc::new(MemorySessions::default())),
            started: Instant::now(),
            aggregate: Mutex::default(),
            checks: Arc::new(tokio::sync::Semaphore::new(1)),
            logins,
        })
    }

    pub fn namespace(&self) -> &str {
        &self.config.namespace
    }

    /// Sessions in Redis (a cluster, before [`Admin::register`]); without this call, in memory.
    pub fn use_sessions(&self, sessions: Arc<dyn Sessions>) {
        *self.sessions.write().unwrap() = sessions;
    }

    fn sessions(&self) -> Arc<dyn Sessions> {
        self.sessions.read().unwrap().clone()
    }

    /// Keeps every node reporting details while an admin UI is connected anywhere: a node with one says so
    /// (in Redis, for [`WATCH_LEASE`]); every node looks.
    async fn renew_watch<A: Adapter>(&self, io: &SocketIo<A>) {
        let observer = &self.node.observer;
        let here = io
            .of(self.namespace())
            .is_some_and(|ops| !ops.local().sockets().is_empty());
        let watched = match !here {
            false => {
                observer.watched_for(WATCH_LEASE);
                self.sessions()
                    .mark_watched(WATCH_LEASE)
                    .await
                    .map(|()| true)
            }
            true => self.sessions().watched().await,
        };
        match watched {
            Ok(true) => observer.watched_for(WATCH_LEASE),
            Ok(false) => {}
            Err(e) => tracing::debug!(error = %e, "admin watch not renewed"),
        }
    }

    fn development(&self) -> bool {
        self.config.mode == AdminMode::Development
    }

    /// What the UI may offer, as its reference server says it: commands unless read-only, every event only in
    /// development.
    fn features(&self) -> Vec<&'static str> {
        let mut features = Vec::new();
        if !self.config.readonly {
            features.extend([
                "EMIT",
                "JOIN",
                "LEAVE",
                "DISCONNECT",
                "MJOIN",
                "MLEAVE",
                "MDISCONNECT",
            ]);
        }
        features.push("AGGREGATED_EVENTS");
        if self.development() {
            features.push("ALL_EVENTS");
        }
        features
    }

    /// Registers the admin namespace and starts this node's `server_stats` and per-socket events; both stop
    /// when `io` closes. Returns the adapter's init (in a cluster, a future to await: it subscribes to Redis).
    pub fn register<A: Adapter + DefinedAdapter>(self: &Arc<Self>, io: &SocketIo<A>) -> A::InitRes {
        let init = io.ns(
            self.config.namespace.clone(),
            on_connect::<A>.with(login::<A>),
        );
        if let Some(reports) = self.node.observer.watch() {
            tokio::spawn(relay_reports(self.clone(), io.clone(), reports));
        }
        tokio::spawn(send_stats(self.clone(), io.clone()));
        init
    }
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Login {
    username: Option<String>,
    password: Option<String>,
    session_id: Option<String>,
}

/// The connect middleware: a known session, or the username and password (bcrypt, on the blocking pool). The UI's
/// events are listened to from here, before socketioxide writes the CONNECT answer (it runs the connect handler
/// after): set in the connect handler, they could come after an event the UI sent the moment it was connected, read
/// meanwhile on another worker thread, and that event was dropped.
async fn login<A: Adapter>(
    socket: SocketRef<A>,
    State(admin): State<Arc<Admin>>,
    TryData(auth): TryData<Login>,
) -> Result<(), AdminError> {
    check_login(&socket, &admin, auth.unwrap_or_default()).await?;
    if !admin.config.readonly {
        socket.on("join", on_join::<A>);
        socket.on("leave", on_leave::<A>);
        socket.on("_disconnect", on_disconnect::<A>);
        socket.on("emit", on_emit::<A>);
    }
    Ok(())
}

async fn check_login<A: Adapter>(
    socket: &SocketRef<A>,
    admin: &Admin,
    auth: Login,
) -> Result<(), AdminError> {
    if !admin.config.auth {
        return Ok(());
    }
    if let Some(id) = auth.session_id.filter(|id| sessions::well_formed(id))
        && admin
            .sessions()
            .valid(&id)
            .await
            .map_err(AdminError::Sessions)?
    {
        return Ok(());
    }
    let (Some(user), Some(password)) = (auth.username, auth.password) else {
        return Err(AdminError::InvalidCredentials);
    };
    let expected_user = admin.config.username.clone().unwrap_or_default();
    let hash = admin.config.password_hash.clone().unwrap_or_default();
    let address = observe::peer(&socket.req_parts().extensions);
    admin.logins.check(address)?;
    let permit = tokio::time::timeout(LOGIN_QUEUE, admin.checks.clone().acquire_owned())
        .await
        .map_err(|_| AdminError::Busy)?
        .map_err(|_| AdminError::Busy)?;
    // Again now that it is our turn: the failures of those queued before us count.
    admin.logins.check(address)?;
    let logins = admin.logins.clone();
    let ok = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        // Both checked, always: the time does not say which one was wrong.
        let password_ok = bcrypt::verify(password, &hash).unwrap_or(false);
        let ok =
            crate::domain::secret::equal(user.as_bytes(), expected_user.as_bytes()) && password_ok;
        // Counted before the next check starts (the permit is released after), even if the client left.
        if !ok {
            logins.failed(address);
        }
        ok
    })
    .await
    .unwrap_or(false);
    if !ok {
        tracing::warn!(address = %peer(socket), "admin login refused");
        return Err(AdminError::InvalidCredentials);
    }
    let id = sessions::new_id();
    admin
        .sessions()
        .save(&id)
        .await
        .map_err(AdminError::Sessions)?;
    socket.extensions.insert(NewSession(id));
    Ok(())
}

/// A session created by this connection's login, sent to the UI once connected.
#[derive(Debug, Clone)]
struct NewSession(String);

fn peer<A: Adapter>(socket: &SocketRef<A>) -> String {
    observe::peer(&socket.req_parts().extensions).map_or_else(String::new, |ip| ip.to_string())
}

async fn on_connect<A: Adapter>(
    socket: SocketRef<A>,
    io: SocketIo<A>,
    State(admin): State<Arc<Admin>>,
) {
    tracing::info!(address = %peer(&socket), id_socket = %socket.id, "admin connected");
    if let Some(NewSession(id)) = socket.extensions.get::<NewSession>() {
        let _ = socket.emit("session", &id);
    }
    let _ = socket.emit(
        "config",
        &serde_json::json!({ "supportedFeatures": admin.features() }),
    );
    if admin.development() {
        admin.node.observer.watched_for(WATCH_LEASE);
        if let Err(e) = admin.sessions().mark_watched(WATCH_LEASE).await {
            tracing::warn!(error = %e, "admin watch not shared: other nodes may not send their events");
        }
        let answer = admin
            .node
            .ask(
                &io,
                admin.namespace(),
                Query::Sockets {
                    except: admin.namespace().to_owned(),
                },
            )
            .await;
        if answer.expected.is_none_or(|n| n != answer.answered) || answer.error.is_some() {
            tracing::warn!(
                answered = answer.answered,
                expected = answer.expected,
                error = answer.error,
                "all_sockets: nodes that did not answer in time are left out"
            );
        }
        let sockets: Vec<&SocketInfo> = answer
            .nodes
            .iter()
            .flat_map(|(_, reply)| match reply {
                Reply::Sockets { sockets } => sockets.as_slice(),
                _ => &[],
            })
            .collect();
        let _ = socket.emit("all_sockets", &sockets);
    }
}

/// `join (nsp, room, filter?)`.
async fn on_join<A: Adapter>(
    io: SocketIo<A>,
    State(admin): State<Arc<Admin>>,
    Data(Args(args)): Data<Args>,
) {
    if let (Some(nsp), Some(room)) = (text(&args, 0), text(&args, 1)) {
        let action = Action::Join { room };
        command(&admin, &io, nsp, text(&args, 2), action).await;
    }
}

/// `leave (nsp, room, filter?)`.
async fn on_leave<A: Adapter>(
    io: SocketIo<A>,
    State(admin): State<Arc<Admin>>,
    Data(Args(args)): Data<Args>,
) {
    if let (Some(nsp), Some(room)) = (text(&args, 0), text(&args, 1)) {
        let action = Action::Leave { room };
        command(&admin, &io, nsp, text(&args, 2), action).await;
    }
}

/// `_disconnect (nsp, close, filter?)`.
async fn on_disconnect<A: Adapter>(
    io: SocketIo<A>,
    State(admin): State<Arc<Admin>>,
    Data(Args(args)): Data<Args>,
) {
    if let Some(nsp) = text(&args, 0) {
        let close = args.get(1).and_then(Value::as_bool).unwrap_or(false);
        let action = Action::Disconnect { close };
        command(&admin, &io, nsp, text(&args, 2), action).await;
    }
}

/// `emit (nsp, filter, event, ...args)` (the UI does not send it yet; its reference server takes it).
async fn on_emit<A: Adapter>(
    io: SocketIo<A>,
    State(admin): State<Arc<Admin>>,
    Data(Args(args)): Data<Args>,
) {
    if let (Some(nsp), Some(event)) = (text(&args, 0), text(&args, 2)) {
        let action = Action::Emit {
            event,
            args: args.get(3..).unwrap_or_default().to_vec(),
        };
        command(&admin, &io, nsp, text(&args, 1), action).await;
    }
}

fn text(args: &[Value], at: usize) -> Option<String> {
    args.get(at).and_then(Value::as_str).map(str::to_owned)
}

/// Applies a command on every node (each to its own sockets). Commands on the admin namespace itself, or with
/// names no socket can have, are ignored.
async fn command<A: Adapter>(
    admin: &Admin,
    io: &SocketIo<A>,
    nsp: String,
    filter: Option<String>,
    action: Action,
) {
    if nsp == admin.namespace() {
        return;
    }
    let query = Query::Command {
        nsp,
        filter,
        action,
    };
    if let Err(e) = crate::cluster::protocol::check_query(&query) {
        tracing::debug!(?query, error = %e, "admin command with invalid names ignored");
        return;
    }
    tracing::info!(?query, "admin command");
    let answer = admin.node.ask(io, admin.namespace(), query).await;
    if answer.expected.is_none_or(|n| n != answer.answered) || answer.error.is_some() {
        tracing::warn!(
            answered = answer.answered,
            expected = answer.expected,
            error = answer.error,
            "admin command: nodes that did not answer in time"
        );
    }
}

/// The admin UI's timestamps: ISO 8601 in UTC, with milliseconds.
fn iso(ms: u64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_millis(time).to_string()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Turns this node's reports into the aggregate and, in development mode, into admin events for every admin
/// socket of the cluster.
async fn relay_reports<A: Adapter>(
    admin: Arc<Admin>,
    io: SocketIo<A>,
    mut reports: tokio::sync::mpsc::Receiver<Observed>,
) {
    let mut alive = Alive::default();
    while let Some(report) = reports.recv().await {
        let Some(ops) = alive.check(io.of(admin.namespace())) else {
            match alive.seen {
                true => return,
                false => continue,
            }
        };
        let now = now_ms();
        let at = iso(now);
        {
            let mut aggregate = admin.aggregate.lock().unwrap();
            match &report {
                Observed::Connected(_) => aggregate.add(now, "rawConnection", None),
                Observed::Disconnected { reason, .. } => {
                    aggregate.add(now, "rawDisconnection", Some(reason.clone()))
                }
                Observed::Received { .. } => aggregate.add(now, "packetsIn", None),
                Observed::Sent { .. } => aggregate.add(now, "packetsOut", None),
                Observed::Counted(kind) => aggregate.add(now, kind, None),
                _ => {}
            }
        }
        // Nobody to show it to: no traffic through Redis for it.
        if !admin.development() || !admin.node.observer.watched() {
            continue;
        }
        let sent = match report {
            Observed::Connected(socket) => ops.emit("socket_connected", &(socket, at)).await,
            Observed::Upgraded { nsp, id } => {
                let update = serde_json::json!({"id": id, "nsp": nsp, "transport": "websocket"});
                ops.emit("socket_updated", &update).await
            }
            Observed::Disconnected { nsp, id, reason } => {
                ops.emit("socket_disconnected", &(nsp, id, reason, at))
                    .await
            }
            Observed::Joined { nsp, room, id } => {
                ops.emit("room_joined", &(nsp, room, id, at)).await
            }
            Observed::Left { nsp, room, id } => ops.emit("room_left", &(nsp, room, id, at)).await,
            Observed::Received { nsp, id, args } => {
                ops.emit("event_received", &(nsp, id, args, at)).await
            }
            Observed::Sent { nsp, id, args } => ops.emit("event_sent", &(nsp, id, args, at)).await,
            Observed::Counted(_) => continue,
        };
        if let Err(e) = sent {
            tracing::debug!(error = %e, "admin event not sent");
        }
    }
}

/// Whether the admin namespace is still there: it appears once registered (in a cluster, after the adapter
/// subscribed) and disappears when `io` closes, which ends the admin's tasks.
#[derive(Debug, Default)]
struct Alive {
    seen: bool,
}

impl Alive {
    fn check<T>(&mut self, ns: Option<T>) -> Option<T> {
        self.seen |= ns.is_some();
        ns
    }
}

/// `server_stats`, as the UI reads it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ServerStats {
    server_id: String,
    hostname: String,
    pid: u32,
    uptime: f64,
    clients_count: usize,
    polling_clients_count: usize,
    aggregated_events: Vec<stats::AggregatedEvent>,
    namespaces: Vec<NamespaceStats>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct NamespaceStats {
    name: String,
    sockets_count: usize,
}

/// This node's `server_stats`, every [`STATS_EVERY`], to every admin socket of the cluster.
async fn send_stats<A: Adapter>(admin: Arc<Admin>, io: SocketIo<A>) {
    let hostname = hostname();
    let mut every = tokio::time::interval(STATS_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut alive = Alive::default();
    loop {
        every.tick().await;
        let Some(ops) = alive.check(io.of(admin.namespace())) else {
            match alive.seen {
                true => return,
                false => continue,
            }
        };
        admin.renew_watch(&io).await;
        let stats = server_stats(&admin, &io, &hostname);
        if let Err(e) = ops.emit("server_stats", &stats).await {
            tracing::debug!(error = %e, "server_stats not sent");
        }
    }
}

fn server_stats<A: Adapter>(admin: &Admin, io: &SocketIo<A>, hostname: &str) -> ServerStats {
    let mut namespaces = Vec::new();
    let (mut clients, mut polling) = (0, 0);
    for ops in io.nsps() {
        let name = ops.ns_path().to_owned();
        let sockets = ops.local().sockets();
        clients += sockets.len();
        polling += sockets
            .iter()
            .filter(|s| s.transport_type() == TransportType::Polling)
            .count();
        namespaces.push(NamespaceStats {
            name,
            sockets_count: sockets.len(),
        });
    }
    namespaces.sort_by(|a, b| a.name.cmp(&b.name));
    ServerStats {
        server_id: admin.node.id.to_string(),
        hostname: hostname.to_owned(),
        pid: std::process::id(),
        uptime: admin.started.elapsed().as_secs_f64(),
        clients_count: clients,
        polling_clients_count: polling,
        aggregated_events: admin.aggregate.lock().unwrap().values(now_ms()),
        namespaces,
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}
