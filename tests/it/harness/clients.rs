//! Real socket.io-client sockets, driven through `tests/js/driver.mjs`, and the one way to open them: [`Conn`].

use std::{
    collections::VecDeque,
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{ChildStdin, Command as TokioCommand},
    sync::Notify,
};

use super::{Node, need, root};

/// A socket to open, built from [`Conn::to`]: `Conn::to("a", &node).ns("/chat").auth(json!({"token": t}))`.
/// Unless told otherwise: namespace `/`, websocket only, no query, auth or extra headers, no reconnection, every
/// server event that asks for an ack acknowledged, an Engine.IO connection of its own, from `127.0.0.1`.
#[derive(Clone, Debug)]
pub struct Conn {
    id: String,
    base: String,
    ns: String,
    query: Value,
    auth: Value,
    headers: Value,
    transports: Vec<String>,
    reconnect: bool,
    ack_server: Value,
    shared: bool,
    local_address: Option<String>,
}

/// Where a socket connects: a node, or a server's base URL (`https://host:port`).
pub trait Target {
    fn base(&self) -> String;
}

impl Target for Node {
    fn base(&self) -> String {
        Node::base(self)
    }
}

impl<T: Target + ?Sized> Target for &T {
    fn base(&self) -> String {
        (**self).base()
    }
}

impl Target for str {
    fn base(&self) -> String {
        self.to_owned()
    }
}

impl Target for String {
    fn base(&self) -> String {
        self.clone()
    }
}

impl Conn {
    /// Client `id` (the name the test's commands and events use) to `target`.
    pub fn to(id: &str, target: &(impl Target + ?Sized)) -> Self {
        Self {
            id: id.to_owned(),
            base: target.base(),
            ns: "/".into(),
            query: Value::Null,
            auth: Value::Null,
            headers: Value::Null,
            transports: vec!["websocket".into()],
            reconnect: false,
            ack_server: Value::Null,
            shared: false,
            local_address: None,
        }
    }

    /// To namespace `ns` (`/chat`).
    pub fn ns(mut self, ns: &str) -> Self {
        self.ns = ns.to_owned();
        self
    }

    /// With `query` in the handshake URL.
    pub fn query(mut self, query: Value) -> Self {
        self.query = query;
        self
    }

    /// As `user` in `room`: the query `{"id_user": user, "room": room}`.
    pub fn user(self, user: &str, room: &str) -> Self {
        self.query(json!({"id_user": user, "room": room}))
    }

    /// With `auth`, the handshake's auth object.
    pub fn auth(mut self, auth: Value) -> Self {
        self.auth = auth;
        self
    }

    /// With more HTTP headers on the handshake (e.g. `Origin`); over long-polling, on every request.
    pub fn headers(mut self, headers: Value) -> Self {
        self.headers = headers;
        self
    }

    /// Over `transports`, in the order tried (`["polling", "websocket"]` upgrades).
    pub fn transports(mut self, transports: &[&str]) -> Self {
        self.transports = transports.iter().map(|t| t.to_string()).collect();
        self
    }

    /// Reconnecting by itself whenever the connection drops (socket.io-client's own reconnection, 200 ms to
    /// 1 s apart).
    pub fn reconnect(mut self) -> Self {
        self.reconnect = true;
        self
    }

    /// Acknowledging the server events sent with an ack callback: `true` all (the driver calls the callback with
    /// `"ok"`), `false` none, or a list of names.
    pub fn ack_server(mut self, ack_server: Value) -> Self {
        self.ack_server = ack_server;
        self
    }

    /// Sharing one Engine.IO connection with the other shared sockets to the same server (socket.io-client's
    /// multiplexing), one namespace each.
    pub fn shared(mut self) -> Self {
        self.shared = true;
        self
    }

    /// From another local address (`127.0.0.2`: the server tells it apart from `127.0.0.1`).
    pub fn local_address(mut self, local_address: &str) -> Self {
        self.local_address = Some(local_address.to_owned());
        self
    }

    /// The driver's `connect` command.
    fn command(&self) -> Value {
        let url = match self.ns.as_str() {
            "/" => self.base.clone(),
            ns => format!("{}{ns}", self.base),
        };
        json!({"op": "connect", "id": self.id, "url": url, "query": self.query, "auth": self.auth,
            "headers": self.headers, "transports": self.transports, "reconnect": self.reconnect,
            "ack_server": self.ack_server, "shared": self.shared, "local_address": self.local_address})
    }
}

/// Real socket.io-client sockets in one `node` process.
pub struct Clients {
    stdin: ChildStdin,
    events: Arc<(Mutex<VecDeque<Value>>, Notify)>,
    _child: tokio::process::Child,
}

impl Clients {
    pub fn start() -> Self {
        need("node", "apt-get install -y nodejs");
        let js = root().join("tests/js");
        assert!(
            js.join("node_modules/socket.io-client").exists(),
            "tests/js/node_modules is missing: run `npm ci --prefix tests/js` (scripts/test.sh does)"
        );
        let mut child = TokioCommand::new("node")
            .arg(js.join("driver.mjs"))
            .env("NODE_EXTRA_CA_CERTS", root().join("certs-dev/ca.pem"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start node driver");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let events = Arc::new((Mutex::new(VecDeque::new()), Notify::new()));
        let sink = events.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let v: Value = serde_json::from_str(&line).expect("driver prints JSON");
                sink.0.lock().unwrap().push_back(v);
                sink.1.notify_waiters();
            }
        });
        Self {
            stdin,
            events,
            _child: child,
        }
    }

    async fn send(&mut self, cmd: Value) {
        let mut line = serde_json::to_vec(&cmd).unwrap();
        line.push(b'\n');
        self.stdin.write_all(&line).await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// Opens `conn`'s socket, not waiting for the outcome.
    pub async fn open(&mut self, conn: Conn) {
        self.send(conn.command()).await;
    }

    /// Opens `conn`'s socket and returns the outcome: its `connect` or `connect_error` event.
    pub async fn connect(&mut self, conn: Conn) -> Value {
        self.open(conn.clone()).await;
        self.expect_any(&conn.id, &["connect", "connect_error"])
            .await
    }

    /// Opens `conn`'s socket, which must connect, and returns its socket id.
    pub async fn join(&mut self, conn: Conn) -> String {
        let id = conn.id.clone();
        let ev = self.connect(conn).await;
        assert_eq!(ev["event"], "connect", "{id} could not connect: {ev}");
        ev["sid"].as_str().unwrap().to_owned()
    }

    pub async fn emit(&mut self, id: &str, event: &str, args: Value, ack: bool) {
        self.send(json!({"op": "emit", "id": id, "event": event, "args": args, "ack": ack}))
            .await;
    }

    pub async fn disconnect(&mut self, id: &str) {
        self.send(json!({"op": "disconnect", "id": id})).await;
    }

    /// The next event named `event` for client `id` (earlier other events stay queued), within 10 s (generous:
    /// the suite runs many clusters at once on small CI machines).
    pub async fn expect(&mut self, id: &str, event: &str) -> Value {
        self.expect_any(id, &[event]).await
    }

    pub async fn expect_any(&mut self, id: &str, events: &[&str]) -> Value {
        match self.within(id, events, Duration::from_secs(10)).await {
            Some(v) => v,
            None => panic!(
                "{id} got no {events:?} within 10 s; queue: {:?}",
                self.events.0.lock().unwrap()
            ),
        }
    }

    /// The next of `events` for client `id`, if one arrives within `wait`.
    pub async fn within(&mut self, id: &str, events: &[&str], wait: Duration) -> Option<Value> {
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.events.1.notified();
            {
                let mut q = self.events.0.lock().unwrap();
                if let Some(pos) = q
                    .iter()
                    .position(|e| e["id"] == id && events.iter().any(|name| e["event"] == *name))
                {
                    return q.remove(pos);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), notified).await;
        }
    }

    /// Asserts that no `event` for `id` arrives within `wait`.
    pub async fn expect_none(&mut self, id: &str, event: &str, wait: Duration) {
        tokio::time::sleep(wait).await;
        let q = self.events.0.lock().unwrap();
        assert!(
            !q.iter().any(|e| e["id"] == id && e["event"] == event),
            "{id} unexpectedly got {event}: {q:?}"
        );
    }
}
