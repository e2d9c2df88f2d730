//! What happens to this node's sockets, for whoever watches (the admin UI, [`crate::admin`]): connections,
//! transport upgrades, disconnections, room joins and leaves, events in and out.
//!
//! socketioxide has no hooks for these, so the socket handlers report them here. Nothing is reported on a node
//! without the admin UI (one atomic load per report). With it, every report is counted (the UI's charts), but the
//! details (a socket's handshake, an event's arguments) are only built while an admin UI is connected somewhere
//! in the cluster ([`Observer::watched_for`]). Reports go through a bounded queue; when the watcher falls behind
//! they are dropped and counted, never waited for.
//!
//! The admin UI is shown a socket's handshake without its secrets ([`REDACTED`] in their place): credentials in
//! headers ([`SECRET_HEADERS`]) and in the query string ([`SECRET_FIELDS`], also in the `url`). The handshake's
//! `auth` object is never shown. Event arguments are shown as they are.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;
use socketioxide::{TransportType, adapter::Adapter, extract::SocketRef};
use tokio::sync::mpsc;

use super::identity::Identity;
use crate::cluster::protocol::{HandshakeInfo, SocketInfo};

/// What the admin UI sees instead of a secret.
pub const REDACTED: &str = "[redacted]";
/// Request headers that carry credentials (names as `http` gives them: lowercase).
const SECRET_HEADERS: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];
/// Query fields that carry credentials (compared ignoring ASCII case): the JWT namespaces' and the gateway's
/// `token`, API keys, passwords.
const SECRET_FIELDS: [&str; 5] = ["token", "access_token", "apikey", "api_key", "password"];

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
    let headers = shown_headers(&parts.headers);
    let fields = shown_query(parts.uri.query());
    let identity = socket.extensions.get::<Arc<Identity>>();
    let issued = socket
        .extensions
        .get::<Issued>()
        .map_or_else(now_ms, |i| i.0);
    let address = peer(&parts.extensions).map_or_else(String::new, |ip| ip.to_string());
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
            url: shown_url(parts.uri.path(), &fields),
            query: fields.into_iter().collect(),
            issued,
            time: httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(issued)),
            address,
        },
    }
}

/// The address of the connection a request came on (the proxy's, behind one).
pub fn peer(extensions: &axum::http::Extensions) -> Option<IpAddr> {
    extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
}

/// A handshake's headers as the admin UI is shown them: readable ones, secrets redacted.
fn shown_headers(headers: &axum::http::HeaderMap) -> BTreeMap<String, String> {
    headers
        .iter()
        .filter_map(|(k, v)| {
            let value = match SECRET_HEADERS.contains(&k.as_str()) {
                true => REDACTED,
                false => v.to_str().ok()?,
            };
            Some((k.as_str().to_owned(), value.to_owned()))
        })
        .collect()
}

/// A query string's fields, in order, secrets redacted.
fn shown_query(query: Option<&str>) -> Vec<(String, String)> {
    let secret = |k: &str| SECRET_FIELDS.iter().any(|s| s.eq_ignore_ascii_case(k));
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .map(|(k, v)| match secret(&k) {
            true => (k.into_owned(), REDACTED.to_owned()),
            false => (k.into_owned(), v.into_owned()),
        })
        .collect()
}

/// The request's path and its query as [`shown_query`] gives it.
fn shown_url(path: &str, fields: &[(String, String)]) -> String {
    if fields.is_empty() {
        return path.to_owned();
    }
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    format!("{path}?{query}")
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

    #[test]
    fn secrets_in_a_handshake_are_redacted() {
        let mut headers = axum::http::HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer eyJ.secret"),
            ("cookie", "ID_TOKEN=secret"),
            ("proxy-authorization", "Basic secret"),
            ("user-agent", "node"),
        ] {
            headers.insert(k, v.parse().unwrap());
        }
        let shown = shown_headers(&headers);
        assert_eq!(shown["user-agent"], "node");
        for k in SECRET_HEADERS {
            assert_eq!(shown[k], REDACTED, "{k}");
        }
        let fields = shown_query(Some(
            "EIO=4&token=t1&apiKey=k1&API_KEY=k2&Password=p1&access_token=t2&room=r%20x",
        ));
        let url = shown_url("/socket.io/", &fields);
        assert!(!url.contains('1') && !url.contains('2'), "{url}");
        assert!(
            url.starts_with("/socket.io/?EIO=4&token=%5Bredacted%5D&"),
            "{url}"
        );
        assert!(url.ends_with("&room=r+x"), "{url}");
        let map: BTreeMap<_, _> = fields.into_iter().collect();
        assert_eq!(map["room"], "r x");
        assert_eq!(map["Password"], REDACTED);
        assert_eq!(shown_url("/socket.io/", &[]), "/socket.io/");
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
