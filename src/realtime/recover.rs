//! Connection state recovery, the Socket.IO side (socket.io 4.6's protocol, as the official client speaks it).
//!
//! * Before a socket of a recovering namespace exists, [`Resolver`] (socketioxide's session hook) reads the
//!   `pid` and `offset` the client sent back: if the session is still kept, the namespace's verification names
//!   the same identity again, and the offset is one of the namespace's log (or absent), the socket gets its
//!   previous id back; otherwise it is a new socket. Either way the CONNECT answer carries a `pid`.
//! * The connect handler then replays what the socket missed and joins its rooms ([`Recovery::restore`]), or
//!   joins a new socket's rooms; both save the session ([`Recovery::save`]), again whenever the socket's rooms
//!   change ([`Recoverable::rooms_changed`]), and each node keeps its live sockets' sessions from expiring
//!   ([`Recovery::keep_alive`]): a node that dies leaves its sockets' sessions for a window, so they recover on
//!   the survivors.
//! * A deliberate disconnect (the client's `disconnect()`, a server kick) removes the session; any other
//!   (network, ping timeout, shutdown) keeps it for the window.
//!
//! The `pid` is a secret: it is never logged, and never leaves this module but in the CONNECT answer.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use axum::http::HeaderMap;
use futures_util::future::BoxFuture;
use serde_json::Value;
use socketioxide::{
    ConnectRequest, ConnectSession, SessionResolver, SocketIo, adapter::Adapter,
    extract::SocketRef, socket::DisconnectReason,
};
use socketioxide_core::Sid;

use super::{
    admission::Admission,
    auth::{AuthError, Handshake, Verified, checked_session},
    namespaces::{Namespace, Namespaces},
    observe,
};
use crate::{
    cluster::{
        Cluster,
        protocol::{Action, Query},
    },
    config::file::RoomSource,
    recovery::{Holder, Offset, Session, Sessions, adapter::Recorder},
    telemetry::metrics::{Metrics, Reason},
};

/// How long a decision of the resolver waits for the connect middleware to take it (a refused or abandoned
/// handshake never does).
const PENDING_FOR: Duration = Duration::from_secs(30);
/// How long a recovery waits for this node's previous socket of the session to be gone.
const TAKEOVER_WAIT: Duration = Duration::from_secs(2);

/// Why a client's recovery failed (the `reason` label of `recovery_failed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No such session: never was, expired (past the window), or removed by a deliberate disconnect.
    Unknown,
    /// The handshake does not name the session's identity (or does not verify).
    Identity,
    /// The offset is not one of the namespace's log.
    Offset,
    /// The store could not be read.
    Store,
    /// The previous socket of the session is still connected here and would not go.
    Busy,
    /// What the socket missed could not be replayed.
    Replay,
    /// Too many handshakes are being verified (`MAX_VERIFYING_HANDSHAKES`).
    Overloaded,
}

impl Failure {
    pub fn kind(self) -> &'static str {
        match self {
            Self::Unknown => "unknown_session",
            Self::Identity => "identity",
            Self::Offset => "offset",
            Self::Store => "store",
            Self::Busy => "busy",
            Self::Replay => "replay",
            Self::Overloaded => "overloaded",
        }
    }
}

/// The recovery of a node: the sessions, the recorder, and the resolver's decisions waiting for their socket.
pub struct Recovery {
    node: Arc<str>,
    sessions: Arc<dyn Sessions>,
    recorder: Arc<Recorder>,
    metrics: Arc<Metrics>,
    pending: Mutex<HashMap<(String, Sid), Pending>>,
}

/// What the resolver decided for a socket, until its connect middleware takes it.
pub struct Pending {
    pid: String,
    restored: Option<Restored>,
    /// The handshake as the resolver verified it, for the middleware not to verify it again (one auth webhook
    /// call, one password check, one failed login counted); `None` when it did not.
    pub verified: Option<Result<Verified, AuthError>>,
    at: Instant,
}

/// A session being given back to its client.
#[derive(Debug, Clone)]
pub struct Restored {
    pub session: Session,
    /// Replay the entries after this one.
    pub after: Offset,
}

/// On every socket of a recovering namespace (an extension): its session's private id and holder.
pub struct Recoverable {
    pid: String,
    holder: Holder,
    window: Duration,
    /// The log's offset when the socket first connected ([`Session::start`]).
    start: Mutex<Offset>,
    /// A recovery on this node took the session: this socket leaves without touching it.
    replaced: AtomicBool,
    /// The session's writes, one at a time: a save still on its way when the socket leaves (the connect handler's,
    /// a room change's) must not land after the departure's removal and bring the session back.
    writes: tokio::sync::Mutex<()>,
    recovery: Arc<Recovery>,
}

impl Recovery {
    pub fn new(
        node: Arc<str>,
        sessions: Arc<dyn Sessions>,
        recorder: Arc<Recorder>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            node,
            sessions,
            recorder,
            metrics,
            pending: Mutex::default(),
        })
    }

    fn failed(&self, why: Failure) {
        let reason = Reason { reason: why.kind() };
        self.metrics.recovery.failed.get_or_create(&reason).inc();
    }

    fn decide(
        &self,
        ns: &str,
        sid: Sid,
        pid: String,
        restored: Option<Restored>,
        verified: Option<Result<Verified, AuthError>>,
    ) {
        let now = Instant::now();
        let mut pending = self.pending.lock().unwrap();
        pending.retain(|_, p| now.duration_since(p.at) < PENDING_FOR);
        pending.insert(
            (ns.to_owned(), sid),
            Pending {
                pid,
                restored,
                verified,
                at: now,
            },
        );
    }

    /// The resolver's decision for `socket`, taken by its connect middleware first thing.
    pub fn take<A: Adapter>(&self, socket: &SocketRef<A>) -> Option<Pending> {
        let key = (socket.ns().to_owned(), socket.id);
        self.pending.lock().unwrap().remove(&key)
    }

    /// The extension a socket of a recovering namespace carries, and the session to give back if it is a
    /// recovery, once its handshake passed.
    pub fn admitted(
        self: &Arc<Self>,
        pending: Pending,
        window: Duration,
    ) -> (Arc<Recoverable>, Option<Restored>) {
        let start = pending
            .restored
            .as_ref()
            .and_then(|r| r.session.start.parse().ok())
            .unwrap_or_default();
        let recoverable = Recoverable {
            pid: pending.pid,
            holder: Holder {
                node: self.node.to_string(),
                conn: uuid::Uuid::new_v4().simple().to_string(),
            },
            window,
            start: Mutex::new(start),
            replaced: AtomicBool::new(false),
            writes: tokio::sync::Mutex::new(()),
            recovery: self.clone(),
        };
        (Arc::new(recoverable), pending.restored)
    }

    /// Whether the stored session may be given to a client that names `offset` (absent: the client got no event
    /// yet): its identity is the one the handshake verified, and the offset is a real one. Returns where its
    /// replay starts.
    async fn check(
        &self,
        ns: &str,
        session: Session,
        offset: Option<&str>,
        named: (Option<String>, Option<String>),
    ) -> Result<Restored, Failure> {
        if (session.id_user.clone(), session.session.clone()) != named {
            return Err(Failure::Identity);
        }
        let start: Offset = session.start.parse().unwrap_or_default();
        let after = match offset {
            None => start,
            Some(text) => {
                let offset: Offset = text.parse().map_err(|_| Failure::Offset)?;
                if !self.is_genuine(ns, offset).await? {
                    return Err(Failure::Offset);
                }
                offset.max(start)
            }
        };
        Ok(Restored { session, after })
    }

    /// An offset a client can have got: one of the log's entries, or older than all it keeps (trimmed: the entries
    /// after it that the log no longer has are older than the window, when the socket was still connected, so it
    /// missed none of them). Anything else (a string another event ended with) says nothing of what it got.
    async fn is_genuine(&self, ns: &str, offset: Offset) -> Result<bool, Failure> {
        let log = self.recorder.log();
        let previous = match offset {
            Offset { ms: 0, seq: 0 } => return Ok(false),
            Offset { ms, seq: 0 } => Offset {
                ms: ms - 1,
                seq: u64::MAX,
            },
            Offset { ms, seq } => Offset { ms, seq: seq - 1 },
        };
        let at = log
            .after(ns, previous, 1)
            .await
            .map_err(|_| Failure::Store)?;
        if at.first().is_some_and(|(o, _)| *o == offset) {
            return Ok(true);
        }
        let first = log
            .after(ns, Offset::ZERO, 1)
            .await
            .map_err(|_| Failure::Store)?;
        Ok(first.first().is_some_and(|(o, _)| offset < *o))
    }

    /// The session of `socket` as it is now.
    fn session_of<A: Adapter>(&self, socket: &SocketRef<A>, rec: &Recoverable) -> Session {
        let me = socket.extensions.get::<Arc<super::Identity>>();
        Session {
            sid: socket.id.to_string(),
            id_user: me
                .as_ref()
                .and_then(|m| m.id_user.as_deref().map(str::to_owned)),
            session: me
                .as_ref()
                .and_then(|m| m.session.as_deref().map(str::to_owned)),
            rooms: socket.rooms().into_iter().map(|r| r.into_owned()).collect(),
            start: rec.start.lock().unwrap().to_string(),
            holder: rec.holder.clone(),
        }
    }

    /// How long a live socket's session is kept after its last save or touch: its node touches it well before.
    fn live_ttl(window: Duration) -> Duration {
        window + 2 * keep_alive_every(window)
    }

    /// Saves `socket`'s session (kept for a window after its node stops touching it). `taking_over`: the holder
    /// a recovery read it from.
    pub async fn save<A: Adapter>(
        &self,
        socket: &SocketRef<A>,
        rec: &Recoverable,
        taking_over: Option<&Holder>,
    ) {
        let _one = rec.writes.lock().await;
        // Gone: its departure writes (or wrote) the session's last state.
        if !socket.connected() {
            return;
        }
        let session = self.session_of(socket, rec);
        let ttl = Self::live_ttl(rec.window);
        match self
            .sessions
            .save(socket.ns(), &rec.pid, &session, ttl, taking_over)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(id_socket = %socket.id, "session held by a later connection: not saved")
            }
            Err(e) => {
                tracing::warn!(id_socket = %socket.id, error = %e, "recovery session not saved")
            }
        }
    }

    /// A new socket, in its rooms: its session starts at the log's position now.
    pub async fn started<A: Adapter>(&self, socket: &SocketRef<A>, rec: &Recoverable) {
        if let Some(position) = self.recorder.position(socket.ns()) {
            *rec.start.lock().unwrap() = position;
        }
        self.save(socket, rec, None).await;
    }

    /// A recovered socket: it gets what it missed, then its rooms, before anything live; its session is taken
    /// over from the connection that held it.
    pub async fn restore<A: Adapter>(
        &self,
        socket: &SocketRef<A>,
        rec: &Recoverable,
        restored: Restored,
    ) {
        let rooms = restored
            .session
            .rooms
            .iter()
            .map(|r| r.clone().into())
            .collect();
        match self
            .recorder
            .attach(socket.ns(), socket.id, rooms, restored.after)
            .await
        {
            Ok(_) => {
                self.metrics.recovery.succeeded.inc();
            }
            Err(e) => {
                tracing::warn!(id_socket = %socket.id, error = %e, "recovered socket: missed events not replayed");
                self.failed(Failure::Replay);
            }
        }
        if !socket.connected() {
            socket.leave_all();
            return;
        }
        self.save(socket, rec, Some(&restored.session.holder)).await;
    }

    /// Keeps the sessions of this node's live sockets from expiring, every [`keep_alive_every`] of the shortest
    /// window, until the task is dropped; refreshes the store's size for `/metrics` on the way.
    pub async fn keep_alive<A: Adapter>(
        self: Arc<Self>,
        io: SocketIo<A>,
        namespaces: Arc<Namespaces>,
    ) {
        let Some(shortest) = namespaces.iter().filter_map(|ns| ns.recovery).min() else {
            return;
        };
        let every = keep_alive_every(shortest);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for ops in io.nsps() {
                let sockets = ops.local().sockets();
                let Some(window) = sockets
                    .first()
                    .and_then(|s| namespaces.find(s.ns()).and_then(|ns| ns.recovery))
                else {
                    continue;
                };
                let ns = sockets[0].ns().to_owned();
                let pids: Vec<String> = sockets
                    .iter()
                    .filter_map(|s| s.extensions.get::<Arc<Recoverable>>())
                    .map(|r| r.pid.clone())
                    .collect();
                if let Err(e) = self
                    .sessions
                    .touch(&ns, &pids, Self::live_ttl(window))
                    .await
                {
                    tracing::warn!(ns, error = %e, "recovery sessions not kept alive");
                }
            }
            if let Ok(n) = self.sessions.len().await {
                self.metrics.recovery.sessions.set(n as i64);
            }
            if let Ok(n) = self.recorder.log().len().await {
                self.metrics.recovery.log_entries.set(n as i64);
            }
        }
    }
}

/// How often a node touches its live sockets' sessions: a quarter of the window, between 1 s and a minute.
pub fn keep_alive_every(window: Duration) -> Duration {
    (window / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// How long a namespace's log keeps its entries: the window, plus the time a dead node's sessions may outlive
/// it, plus a margin for events in flight.
pub fn log_keep(window: Duration) -> Duration {
    window + 3 * keep_alive_every(window) + Duration::from_secs(10)
}

impl Recoverable {
    /// The socket's rooms changed: saved at once, so a crash of its node now still gives them back.
    pub fn rooms_changed<A: Adapter>(socket: &SocketRef<A>) {
        let Some(rec) = socket.extensions.get::<Arc<Recoverable>>() else {
            return;
        };
        let socket = socket.clone();
        tokio::spawn(async move { rec.recovery.save(&socket, &rec, None).await });
    }

    /// Closes `socket` if its session is still held by connection `conn`: a recovery took the session over
    /// (elsewhere), and this socket leaves without touching it.
    pub fn replaced<A: Adapter>(socket: &SocketRef<A>, conn: &str) -> bool {
        let Some(rec) = socket.extensions.get::<Arc<Recoverable>>() else {
            return false;
        };
        if rec.holder.conn != conn {
            return false;
        }
        rec.replaced.store(true, Ordering::Release);
        let _ = socket.clone().disconnect();
        true
    }

    /// The socket left: a deliberate disconnect removes its session, any other keeps it for the window.
    pub async fn disconnected<A: Adapter>(socket: &SocketRef<A>, reason: DisconnectReason) {
        let Some(rec) = socket.extensions.get::<Arc<Recoverable>>() else {
            return;
        };
        if rec.replaced.load(Ordering::Acquire) {
            return;
        }
        let deliberate = matches!(
            reason,
            DisconnectReason::ClientNSDisconnect | DisconnectReason::ServerNSDisconnect
        );
        let sessions = &rec.recovery.sessions;
        let ns = socket.ns();
        let _one = rec.writes.lock().await;
        let done = match deliberate {
            true => sessions.remove(ns, &rec.pid, &rec.holder).await.map(|_| ()),
            false => {
                let session = rec.recovery.session_of(socket, &rec);
                sessions
                    .save(ns, &rec.pid, &session, rec.window, None)
                    .await
                    .map(|_| ())
            }
        };
        if let Err(e) = done {
            tracing::warn!(id_socket = %socket.id, error = %e, "recovery session not updated at disconnect");
        }
    }
}

/// socketioxide's session hook: decides, before the connect middleware, whether a socket recovers.
pub struct Resolver<A: Adapter> {
    pub namespaces: Arc<Namespaces>,
    pub admission: Arc<Admission>,
    pub metrics: Arc<Metrics>,
    /// Set once the node started.
    pub recovery: Arc<OnceLock<Arc<Recovery>>>,
    /// Set once socketioxide is built: a recovery on this node replaces the session's previous socket.
    pub io: Arc<OnceLock<SocketIo<A>>>,
    /// The cluster, once joined (unset on a single node): a recovery asks the node that held the session to close
    /// its socket, in case it did not notice the connection was lost.
    pub cluster: Arc<OnceLock<Arc<Cluster>>>,
}

/// What verifying a handshake again needs, copied out of the request.
struct Request {
    ns: String,
    pid: String,
    offset: Option<String>,
    auth: Value,
    query: Option<String>,
    headers: HeaderMap,
    address: Option<std::net::IpAddr>,
    cross_site: bool,
}

impl<A: Adapter> SessionResolver for Resolver<A> {
    fn resolve(&self, req: &ConnectRequest<'_>) -> BoxFuture<'static, ConnectSession> {
        let none = ConnectSession {
            sid: req.sid,
            pid: None,
        };
        let (Some(_), Some(recovery)) = (
            self.namespaces
                .find(req.ns)
                .filter(|ns| ns.recovery.is_some()),
            self.recovery.get().cloned(),
        ) else {
            return Box::pin(std::future::ready(none));
        };
        let auth: Value = match req.auth {
            Some(socketioxide_core::Value::Str(text, _)) => {
                serde_json::from_str(text.as_str()).unwrap_or(Value::Null)
            }
            _ => Value::Null,
        };
        let field = |name: &str| auth.get(name).and_then(Value::as_str).map(str::to_owned);
        let new_pid = uuid::Uuid::new_v4().simple().to_string();
        let Some(pid) = field("pid") else {
            recovery.decide(req.ns, req.sid, new_pid.clone(), None, None);
            return Box::pin(std::future::ready(ConnectSession {
                sid: req.sid,
                pid: Some(new_pid),
            }));
        };
        let request = Request {
            ns: req.ns.to_owned(),
            offset: field("offset"),
            pid,
            auth,
            query: req.req_parts.uri.query().map(str::to_owned),
            headers: req.req_parts.headers.clone(),
            address: observe::peer(&req.req_parts.extensions),
            cross_site: self.admission.cross_site(&req.req_parts.headers),
        };
        let (namespaces, admission, io, metrics, esid) = (
            self.namespaces.clone(),
            self.admission.clone(),
            self.io.clone(),
            self.metrics.clone(),
            req.sid,
        );
        let cluster = self.cluster.get().cloned();
        Box::pin(async move {
            metrics.recovery.attempted.inc();
            let (restored, verified) = match namespaces.find(&request.ns) {
                Some(ns) => recover(&recovery, &admission, ns, &request).await,
                None => (Err(Failure::Unknown), None),
            };
            let restored = match restored {
                Ok(r) => take_over(io.get(), &request.ns, &r.session.sid)
                    .await
                    .map(|sid| (sid, r)),
                Err(why) => Err(why),
            };
            match restored {
                Ok((sid, r)) => {
                    if let Some(cluster) =
                        cluster.filter(|_| r.session.holder.node != recovery.node.as_ref())
                    {
                        replace_on(cluster, &request.ns, sid, r.session.holder.conn.clone());
                    }
                    recovery.decide(&request.ns, sid, request.pid.clone(), Some(r), verified);
                    ConnectSession {
                        sid,
                        pid: Some(request.pid),
                    }
                }
                Err(why) => {
                    recovery.failed(why);
                    recovery.decide(&request.ns, esid, new_pid.clone(), None, verified);
                    ConnectSession {
                        sid: esid,
                        pid: Some(new_pid),
                    }
                }
            }
        })
    }
}

/// Checks the session the client names: it exists (looked up first: a made-up `pid` costs no verification), the
/// handshake verifies again and names its identity, and its offset is genuine. Returns the verification too, for
/// the connect middleware.
async fn recover(
    recovery: &Recovery,
    admission: &Admission,
    ns: &Namespace,
    r: &Request,
) -> (
    Result<Restored, Failure>,
    Option<Result<Verified, AuthError>>,
) {
    let session = match recovery.sessions.load(&r.ns, &r.pid).await {
        Ok(Some(session)) => session,
        Ok(None) => return (Err(Failure::Unknown), None),
        Err(_) => return (Err(Failure::Store), None),
    };
    // Password checks are bounded here as in the middleware.
    let Ok(_verifying) = ns
        .verifier
        .waits()
        .then(|| admission.verifying())
        .transpose()
    else {
        return (Err(Failure::Overloaded), None);
    };
    let hs = Handshake {
        query: r.query.as_deref(),
        auth: Some(&r.auth),
        headers: &r.headers,
        address: r.address,
        cross_site: r.cross_site,
    };
    let verified = match ns.verifier.verify(hs).await {
        Ok(verified) => verified,
        Err(e) => return (Err(Failure::Identity), Some(Err(e))),
    };
    let named_session = match (ns.joins(RoomSource::Session), ns.verifier.is_claim()) {
        (true, true) => hs
            .field("session_id")
            .ok()
            .flatten()
            .and_then(|s| checked_session(s).ok()),
        (true, false) => verified.session.clone(),
        (false, _) => None,
    };
    let named = (verified.id_user.clone(), named_session);
    let restored = recovery
        .check(&r.ns, session, r.offset.as_deref(), named)
        .await;
    (restored, Some(Ok(verified)))
}

/// Asks every node (the one that held the session has it) to close the socket `sid` of `ns` if its session is still
/// held by connection `conn`. Not waited for: that node may be the dead one.
fn replace_on(cluster: Arc<Cluster>, ns: &str, sid: Sid, conn: String) {
    let query = Query::Command {
        nsp: ns.to_owned(),
        filter: Some(sid.to_string()),
        action: Action::Replace { conn },
    };
    let ns = ns.to_owned();
    tokio::spawn(async move { cluster.ask(&ns, query).await });
}

/// The previous socket of a session, if it is still connected to this node (the client saw its connection drop
/// before the server did), leaves without touching the session, so that the recovered one can have its id.
async fn take_over<A: Adapter>(
    io: Option<&SocketIo<A>>,
    ns: &str,
    sid: &str,
) -> Result<Sid, Failure> {
    let sid: Sid = sid.parse().map_err(|_| Failure::Unknown)?;
    let Some(ops) = io.and_then(|io| io.of(ns)) else {
        return Ok(sid);
    };
    let Some(old) = ops.get_socket(sid) else {
        return Ok(sid);
    };
    match old.extensions.get::<Arc<Recoverable>>() {
        Some(rec) => {
            Recoverable::replaced(&old, &rec.holder.conn);
        }
        None => {
            let _ = old.disconnect();
        }
    }
    let deadline = Instant::now() + TAKEOVER_WAIT;
    while ops.get_socket(sid).is_some() {
        if Instant::now() > deadline {
            return Err(Failure::Busy);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(sid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_nodes_sessions_outlive_it_by_a_window_and_the_log_keeps_what_they_may_replay() {
        for secs in [1, 2, 10, 120, 3600, 86_400] {
            let window = Duration::from_secs(secs);
            let every = keep_alive_every(window);
            assert!(every >= Duration::from_secs(1) && every <= Duration::from_secs(60));
            // Touched every `every`, a live session never expires; its node dead, it lives on at least a window.
            let ttl = Recovery::live_ttl(window);
            assert!(ttl >= window + every, "{secs}");
            // The log outlives the longest a session can be kept after its last touch.
            assert!(log_keep(window) > ttl, "{secs}");
        }
    }
}
