//! What happens to this node's sockets, for whoever watches (the admin UI, [`crate::admin`]): connections,
//! transport upgrades, disconnections, room joins and leaves, events in and out.
//!
//! socketioxide has no hooks for these, so the socket handlers report them here. Nothing is reported on a node
//! without the admin UI (one atomic load per report). With it, every report is counted (the UI's charts), but the
//! details (a socket's handshake, an event's arguments) are only built while an admin UI is connected somewhere
//! in the cluster ([`Observer::watched_for`]). Reports go through a bounded queue; when the watcher falls behind
//! they are dropped and counted, never waited for.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;
use socketioxide::{TransportType, adapter::Adapter, extract::SocketRef};
use tokio::sync::mpsc;

use super::handshake::Identity;
use crate::cluster::protocol::{HandshakeInfo, SocketInfo};

/// Reports waiting for the watcher; beyond this they are dropped (a burst of connections must not grow memory).
const QUEUE: usize = 16_384;

/// How often a polling socket's transport is looked at until it upgrades (socketioxide does not signal it).
const UPGRADE_POLL: Duration = Duration::from_millis(250);
/// Upgrades happen within the first seconds or not at all.
const UPGRADE_WATCH: Duration = Duration::from_secs(10);

/// One thing that happened to a socket of this node.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    Connected(Box<SocketInfo>),
    Upgraded {
        nsp: String,
        id: String,
    },
    Disconnected {
        nsp: String,
        id: String,
        reason: String,
    },
    Joined {
        nsp: String,
        room: String,
        id: String,
    },
    Left {
        nsp: String,
        room: String,
        id: String,
    },
    /// `[event, ...args]` from the client.
    Received {
        nsp: String,
        id: String,
        args: Vec<Value>,
    },
    /// `[event, ...args]` to the client.
    Sent {
        nsp: String,
        id: String,
        args: Vec<Value>,
    },
    /// Only counted (nobody looks at the details now): `rawConnection`, `packetsIn`, `packetsOut`.
    Counted(&'static str),
}

/// Where the socket handlers report; see the module docs.
#[derive(Debug, Default)]
pub struct Observer {
    watching: AtomicBool,
    queue: OnceLock<mpsc::Sender<Observed>>,
    dropped: AtomicU64,
    /// Until when (ms since the Unix epoch) an admin UI is known to be connected somewhere.
    watched_until: AtomicU64,
}

impl Observer {
    /// Starts watching: returns the reports from now on. Only the first call gets them.
    pub fn watch(&self) -> Option<mpsc::Receiver<Observed>> {
        let (tx, rx) = mpsc::channel(QUEUE);
        self.queue.set(tx).ok()?;
        self.watching.store(true, Ordering::Release);
        Some(rx)
    }

    pub fn watching(&self) -> bool {
        self.watching.load(Ordering::Acquire)
    }

    /// Reports what `what` builds, if anyone watches.
    pub fn report(&self, what: impl FnOnce() -> Observed) {
        if !self.watching() {
            return;
        }
        if let Some(queue) = self.queue.get()
            && queue.try_send(what()).is_err()
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// An admin UI is connected somewhere, for at least `lease` from now: reports carry their details.
    pub fn watched_for(&self, lease: Duration) {
        let until = now_ms().saturating_add(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX));
        self.watched_until.fetch_max(until, Ordering::Relaxed);
    }

    /// Whether an admin UI looks at the details now.
    pub fn watched(&self) -> bool {
        self.watched_until.load(Ordering::Relaxed) > now_ms()
    }

    /// Reports what `what` builds while watched, else only counts `kind`.
    fn detailed(&self, kind: &'static str, what: impl FnOnce() -> Observed) {
        match self.watched() {
            true => self.report(what),
            false => self.report(|| Observed::Counted(kind)),
        }
    }

    /// Reports dropped because the watcher fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Reports a new socket, and its upgrade to websocket when it came by polling.
    pub fn connected<A: Adapter>(self: &Arc<Self>, socket: &SocketRef<A>) {
        if !self.watching() {
            return;
        }
        self.detailed("rawConnection", || {
            Observed::Connected(Box::new(socket_info(socket)))
        });
        if self.watched() && socket.transport_type() == TransportType::Polling {
            let (this, socket) = (self.clone(), socket.clone());
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + UPGRADE_WATCH;
                while socket.connected() && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(UPGRADE_POLL).await;
                    if socket.transport_type() == TransportType::Websocket {
                        this.report(|| Observed::Upgraded {
                            nsp: socket.ns().to_owned(),
                            id: socket.id.to_string(),
                        });
                        return;
                    }
                }
            });
        }
    }

    /// Joins and leaves are not counted: nothing to report unless watched.
    pub fn joined<A: Adapter>(&self, socket: &SocketRef<A>, rooms: &[String]) {
        if !self.watched() {
            return;
        }
        for room in rooms {
            self.report(|| Observed::Joined {
                nsp: socket.ns().to_owned(),
                room: room.clone(),
                id: socket.id.to_string(),
            });
        }
    }

    pub fn left<A: Adapter>(&self, socket: &SocketRef<A>, room: &str) {
        if !self.watched() {
            return;
        }
        self.report(|| Observed::Left {
            nsp: socket.ns().to_owned(),
            room: room.to_owned(),
            id: socket.id.to_string(),
        });
    }

    /// An event from the client: `event` with `args`.
    pub fn received<A: Adapter>(&self, socket: &SocketRef<A>, event: &str, args: &[Value]) {
        self.detailed("packetsIn", || Observed::Received {
            nsp: socket.ns().to_owned(),
            id: socket.id.to_string(),
            args: event_and(event, args),
        });
    }

    /// An event with several arguments emitted to this one socket.
    pub fn sent_args<A: Adapter>(&self, socket: &SocketRef<A>, event: &str, args: &[Value]) {
        self.detailed("packetsOut", || Observed::Sent {
            nsp: socket.ns().to_owned(),
            id: socket.id.to_string(),
            args: event_and(event, args),
        });
    }

    /// An event emitted to this one socket.
    pub fn sent<A: Adapter>(
        &self,
        socket: &SocketRef<A>,
        event: &str,
        data: &impl serde::Serialize,
    ) {
        self.detailed("packetsOut", || Observed::Sent {
            nsp: socket.ns().to_owned(),
            id: socket.id.to_string(),
            args: vec![
                Value::String(event.to_owned()),
                serde_json::to_value(data).unwrap_or(Value::Null),
            ],
        });
    }
}

fn event_and(event: &str, args: &[Value]) -> Vec<Value> {
    std::iter::once(Value::String(event.to_owned()))
        .chain(args.iter().cloned())
        .collect()
}

/// When the socket connected (ms since the Unix epoch), in its extensions from its connect handler on.
#[derive(Debug, Clone, Copy)]
pub struct Issued(pub u64);

impl Issued {
    pub fn now() -> Self {
        Self(now_ms())
    }
}

/// A socket as the admin UI shows it.
pub fn socket_info<A: Adapter>(socket: &SocketRef<A>) -> SocketInfo {
    let parts = socket.req_parts();
    let headers: BTreeMap<String, String> = parts
        .headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let query: BTreeMap<String, String> = parts
        .uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let identity = socket.extensions.get::<Arc<Identity>>();
    let issued = socket
        .extensions
        .get::<Issued>()
        .map_or_else(now_ms, |i| i.0);
    let address = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default();
    let data = match &identity {
        Some(id) => serde_json::json!({ "id_user": id.id_user.as_deref(), "role": id.role }),
        None => Value::Object(Default::default()),
    };
    SocketInfo {
        id: socket.id.to_string(),
        client_id: socket.id.to_string(),
        transport: match socket.transport_type() {
            TransportType::Polling => "polling",
            TransportType::Websocket => "websocket",
        }
        .into(),
        nsp: socket.ns().to_owned(),
        data,
        rooms: socket.rooms().into_iter().map(|r| r.into_owned()).collect(),
        handshake: HandshakeInfo {
            secure: headers
                .get("x-forwarded-proto")
                .is_none_or(|p| p == "https"),
            xdomain: headers.contains_key("origin"),
            headers,
            query,
            issued,
            time: httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(issued)),
            url: parts.uri.to_string(),
            address,
        },
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn details_only_while_watched_and_nothing_unless_observed() {
        let observer = Observer::default();
        // Nobody watches: nothing is queued, nothing built.
        observer.report(|| unreachable!("not built without a watcher"));
        let mut reports = observer.watch().unwrap();
        assert!(observer.watch().is_none(), "one watcher");
        let details = || Observed::Joined {
            nsp: "/".into(),
            room: "r".into(),
            id: "s".into(),
        };
        observer.detailed("packetsIn", details);
        assert_eq!(reports.recv().await, Some(Observed::Counted("packetsIn")));
        observer.watched_for(Duration::from_secs(10));
        assert!(observer.watched());
        observer.detailed("packetsIn", details);
        assert_eq!(reports.recv().await, Some(details()));
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_loses_reports_not_memory() {
        let observer = Observer::default();
        let _reports = observer.watch().unwrap();
        for _ in 0..QUEUE + 5 {
            observer.report(|| Observed::Counted("packetsIn"));
        }
        assert_eq!(observer.dropped(), 5);
    }
}
