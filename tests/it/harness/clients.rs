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
/// server event that asks for an ack acknowledged, an Engine.IO connection of its own, from `127.0.0.1`, with
/// socket.io-client 4.x.
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
    /// socket.io-client's major version: 4, or 2 (protocol v4 over Engine.IO 3).
    client: u8,
    /// An `upgrade` event when the connection moves from long-polling to websocket.
    report_upgrade: bool,
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
            client: 4,
            report_upgrade: false,
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

    /// With socket.io-client 2.x (protocol v4 over Engine.IO 3), what apps built for socket.io 2 ship: no `auth`
    /// object (the driver ignores it), a namespace's refusal reported as `connect_error`.
    pub fn v2(mut self) -> Self {
        self.client = 2;
        self
    }

    /// An event `upgrade` (`{"transport": "websocket"}`) when the connection upgrades from long-polling.
    pub fn report_upgrade(mut self) -> Self {
        self.report_upgrade = true;
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
            "ack_server": self.ack_server, "shared": self.shared, "local_address": self.local_address,
            "client": self.client, "report_upgrade": self.report_upgrade})
    }
}

/// The `connect_error` of an attempt whose connection closed before any answer (a proxy refusing it), over the
/// websocket transport: not a refusal by the server, whose errors carry its own message.
pub const PROXY_REFUSED: &str = "websocket error";

/// A `connect` event: the socket's id, and what connection state recovery says of it.
#[derive(Clone, Debug)]
pub struct Connected {
    pub sid: String,
    /// socket.io-client's `socket.recovered`: this reconnection got the previous session back.
    pub recovered: bool,
    /// The session's private id the server gave (socket.io-client's `_pid`), `None` without recovery.
    pub pid: Option<String>,
}

impl Connected {
    fn of(ev: &Value) -> Self {
        assert_eq!(ev["event"], "connect", "{ev}");
        Self {
            sid: ev["sid"].as_str().expect("a sid").to_owned(),
            recovered: ev["recovered"].as_bool().expect("a recovered flag"),
            pid: ev["pid"].as_str().map(str::to_owned),
        }
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
            js.join("node_modules/socket.io-client").exists()
                && js.join("node_modules/socket.io-client-v2").exists(),
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
        self.enter(conn).await.sid
    }

    /// Opens `conn`'s socket, which must connect, and returns what its `connect` event says.
    pub async fn enter(&mut self, conn: Conn) -> Connected {
        let id = conn.id.clone();
        let ev = self.connect(conn).await;
        assert_eq!(ev["event"], "connect", "{id} could not connect: {ev}");
        Connected::of(&ev)
    }

    /// Client `id`'s next `connect` (a reconnection, by socket.io-client's own reconnection), within 10 s. Earlier
    /// `connect_error`s (failed attempts) stay queued.
    pub async fn reconnected(&mut self, id: &str) -> Connected {
        Connected::of(&self.expect(id, "connect").await)
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use base64::{Engine, engine::general_purpose::STANDARD};
    use futures_util::{SinkExt, StreamExt};
    use serde_json::json;
    use tokio::net::{TcpListener, TcpStream};
    use tokio_tungstenite::{WebSocketStream, tungstenite::Message};

    use super::super::{Node, NodeOpts, Proxy, free_port, log_dir};
    use super::*;

    /// A client through the proxy to a real node (without recovery: no pid, never recovered) is cut, kept away
    /// while the proxy refuses (each attempt a `connect_error` of its own, not the server's), and comes back, a
    /// new socket, when it stops.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_through_the_proxy_is_cut_kept_away_and_let_back() {
        let dir = log_dir("harness_client_proxy");
        let node = Node::start(&dir, NodeOpts::default()).await;
        let proxy = Proxy::start(node.port).await;
        let mut io = Clients::start();
        let conn = Conn::to("c", &node.via(&proxy)).user("uc", "R").reconnect();
        let first = io.enter(conn).await;
        assert!(!first.recovered && first.pid.is_none(), "{first:?}");

        proxy.refuse(true);
        proxy.cut().await;
        let gone = io.expect("c", "disconnect").await;
        assert_eq!(gone["reason"], "transport close", "{gone}");
        for _ in 0..2 {
            let refused = io.expect("c", "connect_error").await;
            assert_eq!(refused["message"], PROXY_REFUSED, "{refused}");
        }
        assert!(
            io.within("c", &["connect"], Duration::from_millis(1000))
                .await
                .is_none(),
            "connected while the proxy refuses"
        );
        proxy.refuse(false);
        let back = io.reconnected("c").await;
        assert!(!back.recovered && back.pid.is_none(), "{back:?}");
        assert_ne!(back.sid, first.sid);
    }

    /// The next message of `ws`, within 5 s.
    async fn next(ws: &mut WebSocketStream<TcpStream>) -> Message {
        tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a message within 5 s")
            .expect("the connection open")
            .expect("a readable message")
    }

    /// The next text message of `ws` (pongs and other control frames skipped).
    async fn text(ws: &mut WebSocketStream<TcpStream>) -> String {
        loop {
            match next(ws).await {
                Message::Text(t) => return t.as_str().to_owned(),
                Message::Binary(b) => panic!("binary where text was expected: {b:?}"),
                _ => continue,
            }
        }
    }

    /// Accepts the client's next Engine.IO connection (plain WebSocket) and opens its session; returns it with
    /// the payload of the client's Socket.IO CONNECT (`null` when it sent none).
    async fn session(listener: &TcpListener) -> (WebSocketStream<TcpStream>, Value) {
        let (tcp, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
            .await
            .expect("the client connects within 10 s")
            .unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let open = json!({"sid": "eio", "upgrades": [], "pingInterval": 25000, "pingTimeout": 20000,
            "maxPayload": 1_000_000});
        ws.send(Message::text(format!("0{open}"))).await.unwrap();
        let connect = text(&mut ws).await;
        let data = connect.strip_prefix("40").expect("a CONNECT to /");
        let data = if data.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(data).unwrap()
        };
        (ws, data)
    }

    /// The driver against a Socket.IO server played by hand, speaking what a server with connection state
    /// recovery speaks: `connect` reports the `pid` the server gave and whether the reconnection was recovered;
    /// the reconnection's CONNECT carries that pid and the last event's offset (socket.io-client's doing); binary
    /// arguments, at the top and nested, come to the test as `{"$binary": base64}` and go out from it as bytes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_driver_reports_recovery_and_carries_binary_both_ways() {
        let listener = TcpListener::bind(("127.0.0.1", free_port())).await.unwrap();
        let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let mut io = Clients::start();
        io.open(Conn::to("c", &base).reconnect()).await;

        let (mut ws, auth) = session(&listener).await;
        assert_eq!(auth, Value::Null);
        ws.send(Message::text(r#"40{"sid":"s1","pid":"p1"}"#))
            .await
            .unwrap();
        let first = io.reconnected("c").await;
        assert_eq!((first.sid.as_str(), first.recovered), ("s1", false));
        assert_eq!(first.pid.as_deref(), Some("p1"));

        // Every byte value, and another buffer nested in an object; the offset last, as a recorded broadcast.
        let (one, two): (Vec<u8>, Vec<u8>) = ((0..=255).collect(), b"nested\0bytes".to_vec());
        let event = r#"452-["file",{"_placeholder":true,"num":0},{"file":{"_placeholder":true,"num":1},"n":1},"1-0"]"#;
        ws.send(Message::text(event)).await.unwrap();
        ws.send(Message::binary(one.clone())).await.unwrap();
        ws.send(Message::binary(two.clone())).await.unwrap();
        let ev = io.expect("c", "file").await;
        let (b1, b2) = (STANDARD.encode(&one), STANDARD.encode(&two));
        assert_eq!(
            ev["args"],
            json!([{"$binary": b1}, {"file": {"$binary": b2}, "n": 1}, "1-0"])
        );

        let args = json!([{"$binary": b2}, {"f": {"$binary": b1}}]);
        io.emit("c", "up", args, false).await;
        let sent = text(&mut ws).await;
        assert_eq!(
            sent,
            r#"452-["up",{"_placeholder":true,"num":0},{"f":{"_placeholder":true,"num":1}}]"#
        );
        for expected in [&two, &one] {
            match next(&mut ws).await {
                Message::Binary(b) => assert_eq!(&b[..], &expected[..]),
                other => panic!("not an attachment: {other:?}"),
            }
        }

        // The connection drops; the client comes back naming its session and the last offset it got.
        drop(ws);
        let gone = io.expect("c", "disconnect").await;
        assert_eq!(gone["reason"], "transport close", "{gone}");
        let (mut ws, auth) = session(&listener).await;
        assert_eq!(auth, json!({"pid": "p1", "offset": "1-0"}));
        ws.send(Message::text(r#"40{"sid":"s1","pid":"p1"}"#))
            .await
            .unwrap();
        let back = io.reconnected("c").await;
        assert_eq!((back.sid.as_str(), back.recovered), ("s1", true));
    }
}
