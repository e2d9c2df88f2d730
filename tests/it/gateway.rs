//! The event-bus gateway (README, "Event-bus gateway", seed 003) with real components: node processes sharing a
//! real Redis, plain WebSocket clients (tokio-tungstenite), the official socket.io-client, and the application's
//! backend played by the test with a stock Redis client (`redis-cli`: `XREADGROUP` through a consumer group of
//! its own, `XADD`, `XRANGE`, `XINFO`).
//!
//! Every hook's envelope; tokens from each place and refusals before the upgrade; replies and failures on
//! connect and on a message; types routed to their topics; `send` to a user with sockets on several nodes and in
//! two namespaces reaching exactly the right ones; broadcast; a paused and a killed node getting what was
//! published meanwhile, once; bad frames and bad entries; a forged username; pings; the stream prefix and
//! trimming (counted); no Redis, no gateway. Issue 20's defences: each namespace's own auth for plain WebSocket
//! clients, cookie tokens only from allowed origins, the event rate, one client per namespace of a multiplexed
//! connection, oversized frames refused at their header, unverified identities marked as such.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures_util::{SinkExt, StreamExt, stream::SplitSink};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        self, Message,
        client::IntoClientRequest,
        http::{HeaderName, HeaderValue},
    },
};

use crate::harness::*;

const SECRET: &str = "gateway-test-secret-0123456789";

const CONNECTION: &str = "socket:connection";
const GENERAL: &str = "socket:generalMessage";
const TYPE_ONE: &str = "socket:type_one";
const CLOSE: &str = "socket:close";
const SEND: &str = "socket:send";
const BROADCAST: &str = "socket:broadcast";

/// How long "nothing else arrives" is watched for.
const QUIET: Duration = Duration::from_millis(700);

/// The config file: `[gateway]` as the README shows it (with `extra` lines in it), two gateway namespaces
/// (`/alex`, `/bob`, whose `jwt` auth also reads the `ID_TOKEN` cookie) and one without the gateway (`/plain`).
fn config(extra: &str) -> String {
    format!(
        r#"
[gateway]
path = "/connect"
onconnect = {{ publish = "socket:connection" }}
onmessage = {{ publish = "socket:generalMessage", types = [ {{ type = "message_type_one", publish = "socket:type_one" }} ] }}
onclose = {{ publish = "socket:close" }}
send = {{ subscribe = "socket:send" }}
broadcast = {{ subscribe = "socket:broadcast" }}
jwt_secret = "{SECRET}"
{extra}

[[namespace]]
name = "/alex"
auth = "jwt"
jwt_secret = "{SECRET}"
user_claim = "preferred_username"
jwt_cookie = "ID_TOKEN"
rooms = ["user"]
gateway = true

[[namespace]]
name = "/bob"
auth = "jwt"
jwt_secret = "{SECRET}"
user_claim = "preferred_username"
jwt_cookie = "ID_TOKEN"
rooms = ["user"]
gateway = true

[[namespace]]
name = "/plain"
auth = "jwt"
jwt_secret = "{SECRET}"
user_claim = "preferred_username"
rooms = ["user"]
"#
    )
}

fn now() -> i64 {
    unix_now()
}

fn jwt(claims: Value, secret: &str) -> String {
    hs256(&claims, secret)
}

/// A valid HS256 token for `user` (Keycloak-style: `preferred_username`, with an `email` claim too).
fn token(user: &str) -> String {
    jwt(
        json!({"preferred_username": user, "email": format!("{user}@example.com"), "exp": now() + 600}),
        SECRET,
    )
}

fn cookie(token: &str) -> String {
    format!("theme=dark; ID_TOKEN={token}")
}

// ---------------------------------------------------------------------------------------------------------------
// Plain WebSocket clients

type Stream = WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// What a plain WebSocket client got (pings are answered and counted, not reported).
#[derive(Debug)]
enum Got {
    Json(Value),
    /// A frame that is not a JSON text frame (shown in failure messages).
    #[allow(dead_code)]
    Other(String),
    /// The connection ended: the close frame's code and reason, if there was one.
    Closed(Option<(u16, String)>),
}

/// A plain WebSocket client of the gateway. A task reads all the time (so pings are answered) and queues what
/// arrives.
struct Ws {
    name: String,
    sink: SplitSink<Stream, Message>,
    got: mpsc::UnboundedReceiver<Got>,
    pings: Arc<AtomicUsize>,
}

/// The upgrade request to `node`'s `/connect?{query}` with extra headers.
fn request(
    node: &Node,
    query: &str,
    headers: &[(&str, &str)],
) -> tungstenite::handshake::client::Request {
    let mut req = format!("wss://localhost:{}/connect?{query}", node.port)
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        req.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    req
}

/// Opens a WebSocket to `node`'s `/connect?{query}`, without the reading task.
async fn open_raw(
    node: &Node,
    query: &str,
    headers: &[(&str, &str)],
) -> Result<Stream, tungstenite::Error> {
    tokio_tungstenite::client_async(request(node, query, headers), tls(node.port).await)
        .await
        .map(|(ws, _)| ws)
}

impl Ws {
    /// Connects, or says the HTTP status of the refusal.
    async fn try_connect(
        name: &str,
        node: &Node,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Self, u16> {
        match open_raw(node, query, headers).await {
            Ok(ws) => Ok(Self::reading(name, ws)),
            Err(tungstenite::Error::Http(res)) => Err(res.status().as_u16()),
            Err(e) => panic!("{name}: the upgrade failed otherwise than by a status: {e}"),
        }
    }

    async fn connect(name: &str, node: &Node, query: &str, headers: &[(&str, &str)]) -> Self {
        Self::try_connect(name, node, query, headers)
            .await
            .unwrap_or_else(|status| panic!("{name}: refused with {status}"))
    }

    /// Connects as `user` (token in the `ID_TOKEN` cookie) to namespace `ns` (as written in the query).
    async fn user(name: &str, node: &Node, ns: &str, user: &str) -> Self {
        let cookie = cookie(&token(user));
        Self::connect(
            name,
            node,
            &format!("namespace={ns}"),
            &[("cookie", &cookie)],
        )
        .await
    }

    fn reading(name: &str, ws: Stream) -> Self {
        let (sink, mut stream) = ws.split();
        let (tx, got) = mpsc::unbounded_channel();
        let pings = Arc::new(AtomicUsize::new(0));
        let counted = pings.clone();
        tokio::spawn(async move {
            loop {
                let got = match stream.next().await {
                    Some(Ok(Message::Text(t))) => match serde_json::from_str(t.as_str()) {
                        Ok(v) => Got::Json(v),
                        Err(_) => Got::Other(format!("text {t}")),
                    },
                    Some(Ok(Message::Ping(_))) => {
                        counted.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                    Some(Ok(Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(frame))) => {
                        Got::Closed(frame.map(|f| (u16::from(f.code), f.reason.to_string())))
                    }
                    Some(Ok(m)) => Got::Other(format!("{m:?}")),
                    Some(Err(_)) | None => Got::Closed(None),
                };
                let end = matches!(got, Got::Closed(_));
                if tx.send(got).is_err() || end {
                    return;
                }
            }
        });
        Self {
            name: name.to_owned(),
            sink,
            got,
            pings,
        }
    }

    async fn send(&mut self, frame: Value) {
        self.send_raw(Message::text(frame.to_string())).await;
    }

    async fn send_raw(&mut self, m: Message) {
        self.sink
            .send(m)
            .await
            .unwrap_or_else(|e| panic!("{}: cannot send: {e}", self.name));
    }

    /// What arrives next, within 10 s.
    async fn next(&mut self) -> Got {
        match tokio::time::timeout(Duration::from_secs(10), self.got.recv()).await {
            Ok(Some(got)) => got,
            Ok(None) => Got::Closed(None),
            Err(_) => panic!("{}: nothing arrived within 10 s", self.name),
        }
    }

    /// The next frame, which must be JSON, within 10 s.
    async fn recv(&mut self) -> Value {
        match self.next().await {
            Got::Json(v) => v,
            other => panic!("{}: expected a JSON frame, got {other:?}", self.name),
        }
    }

    /// What arrives next, if anything within `wait`.
    async fn within(&mut self, wait: Duration) -> Option<Got> {
        tokio::time::timeout(wait, self.got.recv())
            .await
            .ok()
            .map(|got| got.unwrap_or(Got::Closed(None)))
    }

    /// Nothing arrived (and the connection did not end) since the last frame taken: call after a wait.
    fn assert_nothing(&mut self) {
        if let Ok(got) = self.got.try_recv() {
            panic!("{}: unexpectedly got {got:?}", self.name);
        }
    }

    /// Waits for the end of the connection (within 10 s): its close frame's code and reason; the frames that came
    /// before it are returned too.
    async fn closed(&mut self) -> (Option<(u16, String)>, Vec<Got>) {
        let mut before = Vec::new();
        loop {
            match self.next().await {
                Got::Closed(frame) => return (frame, before),
                other => before.push(other),
            }
        }
    }

    /// Closes the connection (a normal close frame) and waits for the end.
    async fn close(mut self) {
        let _ = self.sink.send(Message::Close(None)).await;
        let _ = self.closed().await;
    }
}

/// One node `a` on its own Redis, with [`config`]`(extra)` and `SOCKET_EVENT_RATE=event_rate`.
async fn one_node(test: &str, extra: &str, event_rate: &str) -> (Redis, Node) {
    let dir = log_dir(test);
    let path = dir.join("config.toml");
    std::fs::write(&path, config(extra)).unwrap();
    let config = path.display().to_string();
    let redis = Redis::start(&dir);
    let node = Node::start(
        &dir,
        NodeOpts {
            id: "a",
            redis: Some(redis.url()),
            prefix: test,
            args: &["--config", &config, "--socket-event-rate", event_rate],
            ..NodeOpts::default()
        },
    )
    .await;
    (redis, node)
}

/// After a while, the connection stream holds one `onconnect` per accepted client (`accepted` of them), nothing for
/// the refused ones; then closes the accepted clients.
async fn only_accepted_were_published(redis: &Redis, accepted: usize, open: Vec<Ws>) {
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        xlen(redis, CONNECTION),
        accepted,
        "nothing published for a refused client: {:?}",
        entries(redis, CONNECTION)
    );
    for ws in open {
        ws.close().await;
    }
}

/// A refusal before the upgrade, seen by a plain HTTP/1.1 client sending the upgrade headers: the status and the
/// body (JSON if it is JSON, else the text as a string).
async fn refusal(node: &Node, query: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let ca = std::fs::read(root().join("certs-dev/ca.pem")).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .http1_only()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut req = client
        .get(node.url(&format!("/connect?{query}")))
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

// ---------------------------------------------------------------------------------------------------------------
// The backend: a stock Redis client

/// The application's backend: reads the hooks' streams through its own consumer group and answers on
/// `reply_to`.
struct Backend<'r> {
    redis: &'r Redis,
    /// Envelopes read and not yet taken, per stream.
    read: HashMap<String, Vec<Value>>,
}

const GROUP: &str = "backend";

impl<'r> Backend<'r> {
    /// Creates the backend's consumer group on each stream, from its start (so nothing added before is missed).
    fn new(redis: &'r Redis, streams: &[&str]) -> Self {
        for stream in streams {
            let out = redis.cli(&["XGROUP", "CREATE", stream, GROUP, "0", "MKSTREAM"]);
            assert!(
                out.trim() == "OK" || out.contains("BUSYGROUP"),
                "XGROUP CREATE {stream}: {out}"
            );
        }
        Self {
            redis,
            read: HashMap::new(),
        }
    }

    /// Reads what is new on `stream` (`XREADGROUP ... >`), acknowledging it.
    fn poll(&mut self, stream: &str) {
        let reply = self.redis.json(&[
            "XREADGROUP",
            "GROUP",
            GROUP,
            "test",
            "COUNT",
            "100",
            "STREAMS",
            stream,
            ">",
        ]);
        let Some(streams) = reply.as_array() else {
            return;
        };
        for s in streams {
            for entry in s[1].as_array().unwrap() {
                let id = entry[0].as_str().unwrap();
                self.read
                    .entry(stream.to_owned())
                    .or_default()
                    .push(data_of(&entry[1]));
                self.redis.cli(&["XACK", stream, GROUP, id]);
            }
        }
    }

    /// The first envelope of `stream` that `pred` accepts (taken from those read), within 10 s.
    async fn expect(&mut self, stream: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let what = format!("{what} on {stream}");
        eventually(Duration::from_secs(10), &what, async || {
            self.poll(stream);
            let read = self.read.entry(stream.to_owned()).or_default();
            let pos = read.iter().position(&pred)?;
            Some(read.remove(pos))
        })
        .await
    }

    /// Answers `envelope` with `{"id": <its id>, <key>: value}` on its `reply_to`.
    fn answer(&self, envelope: &Value, key: &str, value: Value) {
        let reply_to = envelope["reply_to"]
            .as_str()
            .unwrap_or_else(|| panic!("no reply_to: {envelope}"));
        let mut data = json!({"id": envelope["id"]});
        data[key] = value;
        xadd(self.redis, reply_to, &data);
    }
}

/// The `data` field of an entry's field list, parsed (`Null` without one; a string if it is not JSON).
fn data_of(fields: &Value) -> Value {
    let fields = fields.as_array().unwrap();
    fields
        .chunks(2)
        .find(|kv| kv[0] == "data")
        .map(|kv| {
            let text = kv[1].as_str().unwrap();
            serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
        })
        .unwrap_or(Value::Null)
}

/// `XADD stream * data <json>`.
fn xadd(redis: &Redis, stream: &str, data: &Value) -> String {
    redis
        .cli(&["XADD", stream, "*", "data", &data.to_string()])
        .trim()
        .to_owned()
}

/// Every entry's `data` in `stream`, oldest first.
fn entries(redis: &Redis, stream: &str) -> Vec<Value> {
    redis
        .json(&["XRANGE", stream, "-", "+"])
        .as_array()
        .unwrap()
        .iter()
        .map(|e| data_of(&e[1]))
        .collect()
}

fn xlen(redis: &Redis, stream: &str) -> usize {
    redis.cli(&["XLEN", stream]).trim().parse().unwrap()
}

/// `XINFO GROUPS stream` as `name -> {consumers, pending, last-delivered-id, entries-read, lag}`.
fn groups(redis: &Redis, stream: &str) -> HashMap<String, Value> {
    let reply = redis.json(&["XINFO", "GROUPS", stream]);
    reply
        .as_array()
        .unwrap_or_else(|| panic!("XINFO GROUPS {stream}: {reply}"))
        .iter()
        .map(|g| {
            // RESP2: a flat list of names and values.
            let map: serde_json::Map<String, Value> = g
                .as_array()
                .unwrap()
                .chunks(2)
                .map(|kv| (kv[0].as_str().unwrap().to_owned(), kv[1].clone()))
                .collect();
            (map["name"].as_str().unwrap().to_owned(), Value::Object(map))
        })
        .collect()
}

/// The id of the last entry of `stream`.
fn last_id(redis: &Redis, stream: &str) -> String {
    let reply = redis.json(&["XREVRANGE", stream, "+", "-", "COUNT", "1"]);
    reply[0][0].as_str().unwrap().to_owned()
}

/// Waits until `stream` has `n` entries.
async fn until_len(redis: &Redis, stream: &str, n: usize) {
    eventually(
        Duration::from_secs(10),
        &format!("{n} entries in {stream}"),
        async || (xlen(redis, stream) == n).then_some(()),
    )
    .await;
}

/// Checks every field of an envelope; returns its socket id.
#[allow(clippy::too_many_arguments)]
fn check_envelope(
    env: &Value,
    topic: &str,
    node: &str,
    user: &str,
    ns: &str,
    ty: &str,
    payload: &Value,
) -> String {
    let text = |key: &str| {
        env[key]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| panic!("`{key}` is not a non-empty string: {env}"))
            .to_owned()
    };
    text("id");
    text("reply_to");
    assert_eq!(env["topic"], topic, "{env}");
    assert_eq!(env["node"], node, "{env}");
    assert_eq!(env["username"], user, "{env}");
    assert_eq!(env["namespace"], ns, "{env}");
    assert_eq!(env["type"], ty, "{env}");
    assert_eq!(&env["payload"], payload, "{env}");
    let claims = &env["context"]["headers"]["jwt"];
    assert_eq!(claims["preferred_username"], user, "{env}");
    assert_eq!(
        claims["email"],
        format!("{user}@example.com"),
        "every claim: {env}"
    );
    assert!(claims["exp"].is_i64(), "every claim: {env}");
    text("socket")
}

/// The sum of every sample of `name` (with or without labels) in `node`'s `/metrics`.
async fn metric_sum(http: &Http, node: &Node, name: &str) -> f64 {
    let text = http
        .client
        .get(node.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Restarts a node (by id, on its port) with the test's config file.
async fn restart(dir: &std::path::Path, redis: &Redis, test: &str, id: &str, port: u16) -> Node {
    let config = dir.join("config.toml").display().to_string();
    Node::start(
        dir,
        NodeOpts {
            id,
            redis: Some(redis.url()),
            prefix: test,
            args: &["--config", &config],
            port: Some(port),
            ..NodeOpts::default()
        },
    )
    .await
}

// ---------------------------------------------------------------------------------------------------------------
// Tests

/// `onconnect`, `onmessage` (and a listed type's topic), `onclose`: one entry each, with every field of the
/// envelope, for plain WebSocket and Socket.IO clients alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hook_publishes_its_envelope_to_its_stream() {
    let (_dir, redis, nodes) = cluster_with_config("gateway_envelopes", 3, &config("")).await;
    let (a, c) = (&nodes[0], &nodes[2]);
    let mut backend = Backend::new(&redis, &[CONNECTION, GENERAL, TYPE_ONE, CLOSE]);

    let mut ws = Ws::user("ws", a, "alex", "alex").await;
    let env = backend
        .expect(CONNECTION, "alex's onconnect", |e| e["username"] == "alex")
        .await;
    let socket = check_envelope(
        &env,
        CONNECTION,
        "a",
        "alex",
        "/alex",
        "onconnect",
        &Value::Null,
    );

    // A listed type: both topics, the same message.
    ws.send(json!({"type": "message_type_one", "payload": {"n": 1, "deep": {"x": [1, 2]}}}))
        .await;
    let payload = json!({"n": 1, "deep": {"x": [1, 2]}});
    for topic in [GENERAL, TYPE_ONE] {
        let env = backend
            .expect(topic, "message_type_one", |e| {
                e["type"] == "message_type_one"
            })
            .await;
        let s = check_envelope(
            &env,
            topic,
            "a",
            "alex",
            "/alex",
            "message_type_one",
            &payload,
        );
        assert_eq!(s, socket, "the same socket: {env}");
    }
    // Another type: the general topic only.
    ws.send(json!({"type": "other", "payload": [1, "two"]}))
        .await;
    let env = backend
        .expect(GENERAL, "type other", |e| e["type"] == "other")
        .await;
    check_envelope(
        &env,
        GENERAL,
        "a",
        "alex",
        "/alex",
        "other",
        &json!([1, "two"]),
    );
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        xlen(&redis, TYPE_ONE),
        1,
        "only the listed type goes to its topic: {:?}",
        entries(&redis, TYPE_ONE)
    );
    assert_eq!(xlen(&redis, GENERAL), 2, "{:?}", entries(&redis, GENERAL));
    // A message without a payload: `null`.
    ws.send(json!({"type": "bare"})).await;
    let env = backend
        .expect(GENERAL, "type bare", |e| e["type"] == "bare")
        .await;
    assert_eq!(env["payload"], Value::Null, "{env}");

    ws.close().await;
    let env = backend
        .expect(CLOSE, "alex's onclose", |e| e["username"] == "alex")
        .await;
    let s = check_envelope(
        &env,
        CLOSE,
        "a",
        "alex",
        "/alex",
        "onclose",
        &env["payload"].clone(),
    );
    assert_eq!(s, socket, "{env}");
    assert!(
        env["payload"]["reason"].is_string(),
        "onclose payload {{reason}}: {env}"
    );

    // Socket.IO clients of a gateway namespace: the same hooks, an event being a message of its name's type.
    let mut io = Clients::start();
    let ev = io
        .connect(
            Conn::to("sio", &c)
                .ns("/bob")
                .query(json!({"lang": "fr"}))
                .auth(json!({"token": token("bob")})),
        )
        .await;
    assert_eq!(ev["event"], "connect", "{ev}");
    let env = backend
        .expect(CONNECTION, "bob's onconnect", |e| e["username"] == "bob")
        .await;
    // Its query as sent (Engine.IO's own parameters left out), and its namespace's name as the event-bus service's
    // clients sent it: a Socket.IO client names its namespace by its path.
    assert_eq!(
        env["context"]["params"],
        json!({"namespace": "bob", "lang": "fr"}),
        "{env}"
    );
    let socket = check_envelope(
        &env,
        CONNECTION,
        "c",
        "bob",
        "/bob",
        "onconnect",
        &Value::Null,
    );
    io.emit("sio", "message_type_one", json!([{"k": "v"}]), false)
        .await;
    for topic in [GENERAL, TYPE_ONE] {
        let env = backend
            .expect(topic, "bob's message_type_one", |e| e["username"] == "bob")
            .await;
        let s = check_envelope(
            &env,
            topic,
            "c",
            "bob",
            "/bob",
            "message_type_one",
            &json!({"k": "v"}),
        );
        assert_eq!(s, socket, "{env}");
    }
    io.emit("sio", "chat", json!(["hello"]), false).await;
    let env = backend
        .expect(GENERAL, "bob's chat", |e| e["type"] == "chat")
        .await;
    check_envelope(&env, GENERAL, "c", "bob", "/bob", "chat", &json!("hello"));
    io.disconnect("sio").await;
    let env = backend
        .expect(CLOSE, "bob's onclose", |e| e["username"] == "bob")
        .await;
    let s = check_envelope(
        &env,
        CLOSE,
        "c",
        "bob",
        "/bob",
        "onclose",
        &env["payload"].clone(),
    );
    assert_eq!(s, socket, "{env}");
    assert!(env["payload"]["reason"].is_string(), "{env}");
    assert_eq!(xlen(&redis, TYPE_ONE), 2, "{:?}", entries(&redis, TYPE_ONE));
}

/// The token from the cookie, `Authorization: Bearer` or `?token=`; `alex` and `/alex` name one namespace; a
/// missing or bad token is a `401` with a JSON error, a namespace without the gateway a `404`, both before the
/// upgrade and publishing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_each_place_and_refusals_before_the_upgrade() {
    let (_dir, redis, nodes) = cluster_with_config("gateway_tokens", 1, &config("")).await;
    let a = &nodes[0];
    let mut backend = Backend::new(&redis, &[CONNECTION]);

    let alex = token("alex");
    let bearer = format!("Bearer {alex}");
    let cookie = cookie(&alex);
    type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>);
    let accepted: [Case; 4] = [
        (
            "cookie",
            "namespace=alex".into(),
            vec![("cookie", cookie.as_str())],
        ),
        (
            "bearer",
            "namespace=alex".into(),
            vec![("authorization", bearer.as_str())],
        ),
        ("query", format!("namespace=alex&token={alex}"), vec![]),
        (
            "slash",
            "namespace=%2Falex".into(),
            vec![("cookie", cookie.as_str())],
        ),
    ];
    let mut open = Vec::new();
    for (name, query, headers) in &accepted {
        let ws = Ws::connect(name, a, query, headers).await;
        let env = backend
            .expect(CONNECTION, &format!("{name}'s onconnect"), |e| {
                e["username"] == "alex"
            })
            .await;
        check_envelope(
            &env,
            CONNECTION,
            "a",
            "alex",
            "/alex",
            "onconnect",
            &Value::Null,
        );
        // The query as the client sent it (what the event-bus service's handlers read back), never the token.
        let sent = if *name == "slash" { "/alex" } else { "alex" };
        assert_eq!(
            env["context"]["params"],
            json!({"namespace": sent}),
            "{env}"
        );
        open.push(ws);
    }

    let expired = jwt(
        json!({"preferred_username": "alex", "exp": now() - 3600}),
        SECRET,
    );
    let forged = jwt(
        json!({"preferred_username": "alex", "exp": now() + 600}),
        "some-other-secret-0123456789",
    );
    let no_user = jwt(json!({"sub": "alex", "exp": now() + 600}), SECRET);
    let refused: [(&str, String, Option<String>, u16); 9] = [
        ("no token", "namespace=alex".into(), None, 401),
        ("expired", "namespace=alex".into(), Some(expired), 401),
        ("forged", "namespace=alex".into(), Some(forged), 401),
        (
            "not a JWT",
            "namespace=alex".into(),
            Some("garbage".into()),
            401,
        ),
        ("no user claim", "namespace=alex".into(), Some(no_user), 401),
        ("bad bearer", "namespace=alex".into(), None, 401),
        (
            "no gateway",
            "namespace=plain".into(),
            Some(alex.clone()),
            404,
        ),
        ("unknown", "namespace=nope".into(), Some(alex.clone()), 404),
        ("no namespace (/)", String::new(), Some(alex.clone()), 404),
    ];
    for (what, query, token, status) in &refused {
        let cookie = token.as_deref().map(self::cookie);
        let mut headers = Vec::new();
        if let Some(c) = &cookie {
            headers.push(("cookie", c.as_str()));
        }
        if *what == "bad bearer" {
            headers.push(("authorization", "Bearer not.a.token"));
        }
        assert_eq!(
            Ws::try_connect(what, a, query, &headers).await.err(),
            Some(*status),
            "{what}: the upgrade is refused"
        );
        let (got, body) = refusal(a, query, &headers).await;
        assert_eq!(got, *status, "{what}: {body}");
        if *status == 401 {
            assert!(body.is_object(), "{what}: the 401 has a JSON error: {body}");
        }
    }
    only_accepted_were_published(&redis, accepted.len(), open).await;
}

/// The backend answers on `reply_to`: a reply to `onconnect` reaches the client as `onconnect`, a failure closes
/// it (4000 and the error); a reply to a message reaches it as the topic's type, a failure as `error` and the
/// connection stays. Plain WebSocket and Socket.IO clients, on several nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_and_failures_reach_the_socket_that_asked() {
    let (_dir, redis, nodes) = cluster_with_config("gateway_replies", 3, &config("")).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut backend = Backend::new(&redis, &[CONNECTION, GENERAL, TYPE_ONE, CLOSE]);

    // Connect: replied.
    let mut ws = Ws::user("ws-a", a, "alex", "alex").await;
    let env = backend
        .expect(CONNECTION, "onconnect from a", |e| e["node"] == "a")
        .await;
    backend.answer(&env, "reply", json!({"data": ["welcome", "alex"]}));
    assert_eq!(
        ws.recv().await,
        json!({"type": "onconnect", "payload": {"data": ["welcome", "alex"]}})
    );

    // A message: replied, with the topic as the type.
    ws.send(json!({"type": "ask", "payload": {"q": 1}})).await;
    let env = backend
        .expect(GENERAL, "ask 1", |e| e["payload"]["q"] == 1)
        .await;
    backend.answer(&env, "reply", json!({"a": 1}));
    assert_eq!(
        ws.recv().await,
        json!({"type": "socket:generalMessage", "payload": {"a": 1}})
    );

    // A listed type: the reply to its own topic's envelope comes back with that topic.
    ws.send(json!({"type": "message_type_one", "payload": {"q": 2}}))
        .await;
    let general = backend
        .expect(GENERAL, "type one on the general topic", |e| {
            e["payload"]["q"] == 2
        })
        .await;
    let one = backend
        .expect(TYPE_ONE, "type one on its topic", |e| {
            e["payload"]["q"] == 2
        })
        .await;
    backend.answer(&one, "reply", json!({"a": 2}));
    assert_eq!(
        ws.recv().await,
        json!({"type": "socket:type_one", "payload": {"a": 2}})
    );
    backend.answer(&general, "reply", json!({"a": "2g"}));
    assert_eq!(
        ws.recv().await,
        json!({"type": "socket:generalMessage", "payload": {"a": "2g"}})
    );

    // A failure on a message: `error`, and the connection stays.
    ws.send(json!({"type": "ask", "payload": {"q": 3}})).await;
    let env = backend
        .expect(GENERAL, "ask 3", |e| e["payload"]["q"] == 3)
        .await;
    backend.answer(&env, "fail", json!({"code": "nope", "message": "no"}));
    assert_eq!(
        ws.recv().await,
        json!({"type": "error", "payload": {"code": "nope", "message": "no"}})
    );
    ws.send(json!({"type": "ask", "payload": {"q": 4}})).await;
    let env = backend
        .expect(GENERAL, "ask 4 after the failure", |e| {
            e["payload"]["q"] == 4
        })
        .await;
    backend.answer(&env, "reply", json!("still here"));
    assert_eq!(
        ws.recv().await,
        json!({"type": "socket:generalMessage", "payload": "still here"})
    );

    // A reply to an unknown id, or a second reply to an answered one, is dropped.
    let reply_to = env["reply_to"].as_str().unwrap().to_owned();
    xadd(&redis, &reply_to, &json!({"id": "no-such-id", "reply": 1}));
    tokio::time::sleep(QUIET).await;
    ws.assert_nothing();

    // Connect on another node: its reply reaches it there.
    let mut ws_b = Ws::user("ws-b", b, "alex", "alex").await;
    let env = backend
        .expect(CONNECTION, "onconnect from b", |e| e["node"] == "b")
        .await;
    backend.answer(&env, "reply", json!("hi b"));
    assert_eq!(
        ws_b.recv().await,
        json!({"type": "onconnect", "payload": "hi b"})
    );

    // Socket.IO: the same, as events.
    let mut io = Clients::start();
    let ev = io
        .connect(
            Conn::to("sio", &c)
                .ns("/alex")
                .auth(json!({"token": token("alex")})),
        )
        .await;
    assert_eq!(ev["event"], "connect", "{ev}");
    let env = backend
        .expect(CONNECTION, "onconnect from c", |e| e["node"] == "c")
        .await;
    backend.answer(&env, "reply", json!({"hello": "sio"}));
    let ev = io.expect("sio", "onconnect").await;
    assert_eq!(ev["args"], json!([{"hello": "sio"}]), "{ev}");
    io.emit("sio", "ask", json!([{"q": 5}]), false).await;
    let env = backend
        .expect(GENERAL, "ask 5", |e| e["payload"]["q"] == 5)
        .await;
    backend.answer(&env, "reply", json!({"a": 5}));
    let ev = io.expect("sio", "socket:generalMessage").await;
    assert_eq!(ev["args"], json!([{"a": 5}]), "{ev}");
    io.emit("sio", "ask", json!([{"q": 6}]), false).await;
    let env = backend
        .expect(GENERAL, "ask 6", |e| e["payload"]["q"] == 6)
        .await;
    backend.answer(&env, "fail", json!("bad question"));
    let ev = io.expect("sio", "error").await;
    assert_eq!(ev["args"], json!(["bad question"]), "{ev}");
    io.emit("sio", "ask", json!([{"q": 7}]), false).await;
    let env = backend
        .expect(GENERAL, "ask 7 after the failure", |e| {
            e["payload"]["q"] == 7
        })
        .await;
    backend.answer(&env, "reply", json!(7));
    let ev = io.expect("sio", "socket:generalMessage").await;
    assert_eq!(ev["args"], json!([7]), "{ev}");
    assert!(
        io.within("sio", &["disconnect"], Duration::ZERO)
            .await
            .is_none(),
        "a failed message does not disconnect"
    );

    // A failure on connect closes the connection: WebSocket close code 4000 with the error as its reason.
    let mut refused = Ws::user("ws-refused", b, "bob", "bob").await;
    let env = backend
        .expect(CONNECTION, "bob's onconnect", |e| e["username"] == "bob")
        .await;
    backend.answer(&env, "fail", json!("you shall not pass"));
    let (frame, before) = refused.closed().await;
    let (code, reason) =
        frame.unwrap_or_else(|| panic!("no close frame (frames before: {before:?})"));
    assert_eq!(code, 4000, "{reason}; frames before: {before:?}");
    assert!(
        reason.contains("you shall not pass"),
        "the error as the reason: {reason:?}"
    );
    backend
        .expect(CLOSE, "bob's onclose", |e| e["username"] == "bob")
        .await;

    // Socket.IO: an `error` event with the error, then disconnected.
    let ev = io
        .connect(
            Conn::to("sio-refused", &a)
                .ns("/bob")
                .auth(json!({"token": token("bob")})),
        )
        .await;
    assert_eq!(ev["event"], "connect", "{ev}");
    let env = backend
        .expect(CONNECTION, "bob's Socket.IO onconnect", |e| {
            e["username"] == "bob" && e["node"] == "a"
        })
        .await;
    backend.answer(&env, "fail", json!({"error": "banned"}));
    let refused_error = io.expect("sio-refused", "error").await;
    io.expect("sio-refused", "disconnect").await;

    // The others were not disturbed.
    tokio::time::sleep(QUIET).await;
    ws.assert_nothing();
    ws_b.assert_nothing();
    ws.send(json!({"type": "ask", "payload": {"q": 8}})).await;
    let env = backend
        .expect(GENERAL, "ask 8", |e| e["payload"]["q"] == 8)
        .await;
    backend.answer(&env, "reply", json!(8));
    assert_eq!(
        ws.recv().await,
        json!({"type": "socket:generalMessage", "payload": 8})
    );
    // Checked last, so that the rest is checked whatever this says.
    assert_eq!(
        refused_error["args"],
        json!([{"error": "banned"}]),
        "the Socket.IO client's `error` event carries the error itself, as for a failed message: {refused_error}"
    );
}

/// A reply reaches its client however long the backend was silent before it (the reply reader must not lose an
/// entry added while it starts a new read after an idle spell). Replies are sent after idle spells from 0.5 s to
/// 3.2 s after the previous one was delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_arrive_after_idle_spells_of_any_length() {
    let (_dir, redis, nodes) = cluster_with_config("gateway_idle_replies", 1, &config("")).await;
    let mut backend = Backend::new(&redis, &[GENERAL]);
    let mut ws = Ws::user("ws", &nodes[0], "alex", "alex").await;
    let spells = [500, 1000, 1500, 1900, 2100, 2200, 2300, 2400, 2700, 3200];
    let mut envelopes = Vec::new();
    for i in 0..=spells.len() {
        ws.send(json!({"type": "ask", "payload": i})).await;
        envelopes.push(
            backend
                .expect(GENERAL, &format!("ask {i}"), |e| e["payload"] == i)
                .await,
        );
    }
    let mut lost = Vec::new();
    for (i, env) in envelopes.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(spells[i - 1])).await;
        }
        backend.answer(env, "reply", json!(i));
        match ws.within(Duration::from_secs(5)).await {
            Some(Got::Json(v)) if v == json!({"type": "socket:generalMessage", "payload": i}) => {}
            other => {
                let after = if i == 0 { 0 } else { spells[i - 1] };
                lost.push(format!(
                    "reply {i}, {after} ms after the previous one: got {other:?}"
                ));
            }
        }
    }
    assert!(lost.is_empty(), "replies lost: {lost:#?}");
    // Idle spells longer than the router's blocking read (2 s) are no error of its.
    let log = nodes[0].log_text();
    assert!(
        !log.contains("gateway send entries not routed"),
        "the idle router failed: {log}"
    );
}

/// Sockets of alex and bob on three nodes, plain WebSocket and Socket.IO, in `/alex` and `/bob`.
struct Crowd {
    io: Clients,
    /// (name, client, user, namespace)
    ws: Vec<(&'static str, Ws, &'static str, &'static str)>,
    /// (name, user, namespace)
    sio: Vec<(&'static str, &'static str, &'static str)>,
}

impl Crowd {
    async fn gather(redis: &Redis, nodes: &[Node]) -> Self {
        let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
        let mut ws = Vec::new();
        for (name, node, user, ns) in [
            ("alex-ws-a", a, "alex", "/alex"),
            ("alex-ws-b", b, "alex", "/alex"),
            ("alex-ws-bob-ns", a, "alex", "/bob"),
            ("bob-ws-alex-ns", b, "bob", "/alex"),
            ("bob-ws-c", c, "bob", "/bob"),
        ] {
            ws.push((name, Ws::user(name, node, ns, user).await, user, ns));
        }
        let mut io = Clients::start();
        let sio = vec![
            ("alex-sio-c", "alex", "/alex"),
            ("bob-sio-a", "bob", "/bob"),
        ];
        for (name, user, ns) in &sio {
            let node = if *user == "alex" { c } else { a };
            let ev = io
                .connect(
                    Conn::to(name, &node)
                        .ns(ns)
                        .auth(json!({"token": token(user)})),
                )
                .await;
            assert_eq!(ev["event"], "connect", "{name}: {ev}");
        }
        // Each socket is known to its node once its onconnect is published.
        until_len(redis, CONNECTION, ws.len() + sio.len()).await;
        Self { io, ws, sio }
    }

    /// After `XADD`ing something of `ty` with `payload`: exactly the sockets `who` accepts get it, once.
    async fn check(
        &mut self,
        what: &str,
        ty: &str,
        payload: &Value,
        who: impl Fn(&str, &str) -> bool,
    ) {
        for (name, ws, user, ns) in &mut self.ws {
            if who(user, ns) {
                assert_eq!(
                    ws.recv().await,
                    json!({"type": ty, "payload": payload}),
                    "{what}: {name}"
                );
            }
        }
        for (name, user, ns) in &self.sio {
            if who(user, ns) {
                let ev = self.io.expect(name, ty).await;
                assert_eq!(ev["args"], json!([payload]), "{what}: {name}");
            }
        }
        tokio::time::sleep(QUIET).await;
        for (name, ws, _, _) in &mut self.ws {
            if let Ok(got) = ws.got.try_recv() {
                panic!("{what}: {name} unexpectedly got {got:?}");
            }
        }
        for (name, _, _) in &self.sio {
            assert!(
                self.io.within(name, &[ty], Duration::ZERO).await.is_none(),
                "{what}: {name} got {ty} (again, or not for it)"
            );
        }
    }
}

/// A `send` entry reaches every socket of that user in that namespace, on every node, plain WebSocket and
/// Socket.IO, once, and no other socket: not the user's sockets in other namespaces, not other users'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_reaches_every_socket_of_the_user_in_that_namespace_and_no_other() {
    let (_dir, redis, nodes) = cluster_with_config("gateway_send", 3, &config("")).await;
    let mut crowd = Crowd::gather(&redis, &nodes).await;

    let payload = json!({"n": 1, "text": "for alex in /alex"});
    xadd(
        &redis,
        SEND,
        &json!({"username": "alex", "namespace": "/alex", "type": "t", "payload": payload}),
    );
    crowd
        .check("alex in /alex", "t", &payload, |u, ns| {
            u == "alex" && ns == "/alex"
        })
        .await;

    let payload = json!(["for", "bob", "in", "/bob"]);
    xadd(
        &redis,
        SEND,
        &json!({"username": "bob", "namespace": "/bob", "type": "u", "payload": payload}),
    );
    crowd
        .check("bob in /bob", "u", &payload, |u, ns| {
            u == "bob" && ns == "/bob"
        })
        .await;

    // No namespace: `/`, where nobody is (no gateway there); an unknown user: nobody.
    xadd(
        &redis,
        SEND,
        &json!({"username": "alex", "type": "v", "payload": 1}),
    );
    xadd(
        &redis,
        SEND,
        &json!({"username": "carol", "namespace": "/alex", "type": "v", "payload": 2}),
    );
    crowd.check("nobody", "v", &json!(0), |_, _| false).await;

    // Still delivered after that.
    xadd(
        &redis,
        SEND,
        &json!({"username": "alex", "namespace": "/bob", "type": "w", "payload": null}),
    );
    crowd
        .check("alex in /bob", "w", &Value::Null, |u, ns| {
            u == "alex" && ns == "/bob"
        })
        .await;
}

/// A `broadcast` entry reaches every client of the gateway, or every client of its namespace when it names one;
/// never a client of a namespace without the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_every_gateway_client_or_one_namespace() {
    let (_dir, redis, nodes) = cluster_with_config("gateway_broadcast", 3, &config("")).await;
    let mut crowd = Crowd::gather(&redis, &nodes).await;
    let ev = crowd
        .io
        .connect(
            Conn::to("plain", &nodes[1])
                .ns("/plain")
                .auth(json!({"token": token("alex")})),
        )
        .await;
    assert_eq!(ev["event"], "connect", "{ev}");

    let payload = json!({"news": "everyone"});
    xadd(
        &redis,
        BROADCAST,
        &json!({"type": "news", "payload": payload}),
    );
    crowd.check("everyone", "news", &payload, |_, _| true).await;

    let payload = json!({"news": "/bob only"});
    xadd(
        &redis,
        BROADCAST,
        &json!({"type": "bob-news", "payload": payload, "namespace": "/bob"}),
    );
    crowd
        .check("/bob", "bob-news", &payload, |_, ns| ns == "/bob")
        .await;

    assert!(
        crowd
            .io
            .within("plain", &["news", "bob-news"], Duration::ZERO)
            .await
            .is_none(),
        "a namespace without the gateway gets no broadcast"
    );
}

/// The node routing `send` entries (it holds `gateway:router`) while it is paused (SIGSTOP): another node takes the
/// lease and routes, the other node's client has every entry, and the paused node's client gets what was added
/// meanwhile once the node runs again, once (its inbox kept it; it skips what the two routers both forwarded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_delivers_what_was_added_meanwhile_once() {
    let (_dir, redis, nodes) = cluster_with_config("gateway_paused", 3, &config("")).await;
    let router = router_of(&redis).await;
    let b = nodes.iter().find(|n| n.id == router).unwrap();
    let a = nodes.iter().find(|n| n.id != router).unwrap();
    let mut on_a = Ws::user("alex-a", a, "alex", "alex").await;
    let mut on_b = Ws::user("alex-b", b, "alex", "alex").await;
    until_len(&redis, CONNECTION, 2).await;

    // Warm up: both streams reach both.
    xadd(&redis, BROADCAST, &json!({"type": "warm", "payload": 0}));
    xadd(
        &redis,
        SEND,
        &json!({"username": "alex", "namespace": "/alex", "type": "warm-send", "payload": 0}),
    );
    for ws in [&mut on_a, &mut on_b] {
        assert_eq!(ws.recv().await, json!({"type": "warm", "payload": 0}));
        assert_eq!(ws.recv().await, json!({"type": "warm-send", "payload": 0}));
    }
    let g = groups(&redis, BROADCAST);
    for id in ["a", "b", "c"] {
        assert!(
            g.contains_key(&format!("gateway:{id}")),
            "{BROADCAST}: no group gateway:{id}: {g:?}"
        );
    }
    let g = groups(&redis, SEND);
    assert_eq!(
        g.keys().collect::<Vec<_>>(),
        ["gateway:router"],
        "one group reads {SEND}, the router's"
    );

    b.pause();
    xadd(
        &redis,
        BROADCAST,
        &json!({"type": "while-paused", "payload": 1}),
    );
    xadd(
        &redis,
        SEND,
        &json!({"username": "alex", "namespace": "/alex", "type": "for-alex", "payload": 2}),
    );
    assert_eq!(
        on_a.recv().await,
        json!({"type": "while-paused", "payload": 1})
    );
    assert_eq!(
        on_a.recv().await,
        json!({"type": "for-alex", "payload": 2}),
        "another node took the lease and routed"
    );
    assert_ne!(router_of(&redis).await, router);
    tokio::time::sleep(Duration::from_millis(500)).await;
    on_b.assert_nothing();
    b.signal("CONT");

    let mut got = vec![on_b.recv().await, on_b.recv().await];
    got.sort_by_key(|v| v["type"].as_str().unwrap().to_owned());
    assert_eq!(
        got,
        vec![
            json!({"type": "for-alex", "payload": 2}),
            json!({"type": "while-paused", "payload": 1}),
        ]
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    on_a.assert_nothing();
    on_b.assert_nothing();
    eventually(
        Duration::from_secs(10),
        &format!("every group of {BROADCAST} caught up and acknowledged"),
        async || {
            let g = groups(&redis, BROADCAST);
            let last = last_id(&redis, BROADCAST);
            ["a", "b", "c"]
                .iter()
                .all(|id| {
                    let g = &g[&format!("gateway:{id}")];
                    g["pending"] == 0 && g["last-delivered-id"] == last.as_str()
                })
                .then_some(())
        },
    )
    .await;
    routed_all(&redis).await;
}

/// The node holding `gateway:router`, once one does.
async fn router_of(redis: &Redis) -> String {
    eventually(
        Duration::from_secs(10),
        "a node holds gateway:router",
        async || {
            let holder = redis.cli(&["GET", "gateway:router"]).trim().to_owned();
            (!holder.is_empty()).then_some(holder)
        },
    )
    .await
}

/// The node routing `send` entries, taken out of `nodes`, with its id.
async fn take_router(redis: &Redis, nodes: &mut Vec<Node>) -> (String, Node) {
    let router = router_of(redis).await;
    let at = nodes.iter().position(|n| n.id == router).unwrap();
    (router, nodes.remove(at))
}

/// The router routed every `send` entry: `gateway:routed` and its group are at the stream's last entry, and
/// nothing is pending in the group.
async fn routed_all(redis: &Redis) {
    eventually(
        Duration::from_secs(15),
        &format!("gateway:routed and gateway:router caught up on {SEND}, nothing pending"),
        async || {
            let g = groups(redis, SEND);
            let g = g.get("gateway:router")?;
            let last = last_id(redis, SEND);
            let routed = redis.cli(&["GET", "gateway:routed"]);
            (g["pending"] == 0 && g["last-delivered-id"] == last.as_str() && routed.trim() == last)
                .then_some(())
        },
    )
    .await
}

/// The field names of `node`'s inbox entries: the ids of the `send` entries routed to it.
fn routed_to(redis: &Redis, node: &str) -> Vec<String> {
    let inbox = redis.json(&["XRANGE", &format!("gateway:inbox:{node}"), "-", "+"]);
    inbox
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| {
            e[1].as_array()
                .unwrap()
                .chunks(2)
                .map(|kv| kv[0].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The router killed (SIGKILL) while entries are added: another node routes them, and back with the same id it
/// gives nothing old to a socket connected after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_router_is_replaced_and_redelivers_nothing_on_restart() {
    let test = "gateway_killed";
    let (dir, redis, mut nodes) = cluster_with_config(test, 3, &config("")).await;
    let (router, b) = take_router(&redis, &mut nodes).await;
    let mut on_a = Ws::user("alex-a", &nodes[0], "alex", "alex").await;
    let mut on_b = Ws::user("alex-b", &b, "alex", "alex").await;
    until_len(&redis, CONNECTION, 2).await;
    xadd(
        &redis,
        SEND,
        &json!({"username": "alex", "namespace": "/alex", "type": "before", "payload": 0}),
    );
    for ws in [&mut on_a, &mut on_b] {
        assert_eq!(ws.recv().await, json!({"type": "before", "payload": 0}));
    }
    routed_all(&redis).await;

    let port = b.port;
    b.signal("KILL");
    drop(b);
    let (frame, _) = on_b.closed().await;
    println!("alex-b's connection ended with {frame:?}");

    for n in 1..=3 {
        xadd(
            &redis,
            SEND,
            &json!({"username": "alex", "namespace": "/alex", "type": "while-down", "payload": n}),
        );
    }
    for n in 1..=3 {
        assert_eq!(
            on_a.recv().await,
            json!({"type": "while-down", "payload": n})
        );
    }
    assert_ne!(router_of(&redis).await, router, "another node routes");
    routed_all(&redis).await;

    let b = restart(&dir, &redis, test, &router, port).await;
    let mut again = Ws::user("alex-b-again", &b, "alex", "alex").await;
    until_len(&redis, CONNECTION, 3).await;
    xadd(
        &redis,
        SEND,
        &json!({"username": "alex", "namespace": "/alex", "type": "after", "payload": 4}),
    );
    assert_eq!(
        again.recv().await,
        json!({"type": "after", "payload": 4}),
        "the first thing the new socket gets is new"
    );
    assert_eq!(on_a.recv().await, json!({"type": "after", "payload": 4}));
    tokio::time::sleep(QUIET).await;
    again.assert_nothing();
    on_a.assert_nothing();
    routed_all(&redis).await;
}

/// An entry that a router of an earlier version (one that read through the group `gateway:router`) read and did
/// not acknowledge before it died is routed by the next router, once, before what was added after it; and
/// `gateway:routed` and the group end where the stream does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_an_earlier_router_left_pending_is_routed_once() {
    let test = "gateway_pending";
    let (dir, redis, mut nodes) = cluster_with_config(test, 1, &config("")).await;
    let (router, node) = take_router(&redis, &mut nodes).await;
    let port = node.port;
    node.signal("KILL");
    drop(node);
    // Nobody routes until the test says so.
    redis.cli(&["SET", "gateway:router", "an-earlier-router", "PX", "60000"]);
    xadd(
        &redis,
        SEND,
        &json!({"username": "alex", "namespace": "/alex", "type": "pending", "payload": 1}),
    );
    // What the earlier router did: read it through the group, then died before acknowledging it.
    let read = redis.cli(&[
        "XREADGROUP",
        "GROUP",
        "gateway:router",
        "router",
        "COUNT",
        "10",
        "STREAMS",
        SEND,
        ">",
    ]);
    assert!(read.contains("pending"), "the group read the entry: {read}");
    assert_eq!(groups(&redis, SEND)["gateway:router"]["pending"], 1);

    let node = restart(&dir, &redis, test, &router, port).await;
    let mut ws = Ws::user("alex", &node, "alex", "alex").await;
    until_len(&redis, CONNECTION, 1).await;
    redis.cli(&["DEL", "gateway:router"]);
    assert_eq!(ws.recv().await, json!({"type": "pending", "payload": 1}));
    xadd(
        &redis,
        SEND,
        &json!({"username": "alex", "namespace": "/alex", "type": "after", "payload": 2}),
    );
    assert_eq!(ws.recv().await, json!({"type": "after", "payload": 2}));
    tokio::time::sleep(QUIET).await;
    ws.assert_nothing();
    routed_all(&redis).await;
}

/// A Redis user without `XINFO GROUPS` and `XGROUP SETID` (an ACL written for an earlier build): the router routes
/// on from `gateway:routed`, across a takeover, and only the group's position is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_goes_on_without_the_group_commands() {
    let (_dir, redis, mut nodes) = cluster_with_config("gateway_old_acl", 2, &config("")).await;
    let (router, first) = take_router(&redis, &mut nodes).await;
    let mut ws = Ws::user("alex", &nodes[0], "alex", "alex").await;
    until_len(&redis, CONNECTION, 1).await;
    redis.cli(&[
        "ACL",
        "SETUSER",
        "default",
        "-xinfo|groups",
        "-xgroup|setid",
    ]);
    let send = |n: u32| {
        xadd(
            &redis,
            SEND,
            &json!({"username": "alex", "namespace": "/alex", "type": "n", "payload": n}),
        )
    };
    send(1);
    assert_eq!(ws.recv().await, json!({"type": "n", "payload": 1}));
    // The next router finds its position without the group's.
    first.signal("TERM");
    eventually(Duration::from_secs(10), "another node routes", async || {
        (router_of(&redis).await != router).then_some(())
    })
    .await;
    let last = send(2);
    assert_eq!(ws.recv().await, json!({"type": "n", "payload": 2}));
    tokio::time::sleep(QUIET).await;
    ws.assert_nothing();
    assert_eq!(redis.cli(&["GET", "gateway:routed"]).trim(), last);
    let log = redis.cli(&["ACL", "LOG"]);
    assert!(
        log.contains("xgroup|setid") && log.contains("xinfo|groups"),
        "{log}"
    );
    drop(first);
}

/// `send` entries added steadily while the router is killed, restarted with its id, then stopped gracefully: every
/// socket of the surviving nodes has each of its user's entries once, in order, and the entries went only to the
/// nodes holding their user (each node's inbox holds its users' entries only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_entries_reach_each_user_once_in_order_while_the_router_restarts() {
    let test = "gateway_router_restarts";
    let (dir, redis, mut nodes) = cluster_with_config(test, 3, &config("")).await;
    let (router, first_router) = take_router(&redis, &mut nodes).await;
    let port = first_router.port;
    // Two users per surviving node, one user on both; nobody on the router.
    let mut sockets = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        for user in [format!("u{i}"), "both".to_owned()] {
            let name = format!("{user}@{}", node.id);
            sockets.push((user.clone(), Ws::user(&name, node, "alex", &user).await));
        }
    }
    until_len(&redis, CONNECTION, sockets.len()).await;
    let users = ["u0", "u1", "both", "nobody"];
    let total = 240;
    let mut first_router = Some(first_router);
    let mut restarted = None;
    for n in 0..total {
        match n {
            60 => first_router.take().unwrap().signal("KILL"),
            120 => restarted = Some(restart(&dir, &redis, test, &router, port).await),
            // Whoever routes now stops gracefully (SIGTERM), unless it is a node with sockets of the test.
            180 => {
                let restarted = restarted.as_ref().unwrap();
                if router_of(&redis).await == restarted.id {
                    restarted.signal("TERM");
                }
            }
            _ => {}
        }
        let user = users[n % users.len()];
        xadd(
            &redis,
            SEND,
            &json!({"username": user, "namespace": "/alex", "type": "n", "payload": n}),
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    for (user, ws) in &mut sockets {
        let want: Vec<Value> = (0..total)
            .filter(|n| users[n % users.len()] == user.as_str())
            .map(|n| json!({"type": "n", "payload": n}))
            .collect();
        let mut got = Vec::new();
        while got.len() < want.len() {
            got.push(ws.recv().await);
        }
        assert_eq!(got, want, "{}: every entry once, in order", ws.name);
    }
    tokio::time::sleep(QUIET).await;
    for (_, ws) in &mut sockets {
        ws.assert_nothing();
    }
    routed_all(&redis).await;

    // Each surviving node's inbox holds entries of its own users only, `nobody`'s in none.
    let user_of: HashMap<String, String> = redis
        .json(&["XRANGE", SEND, "-", "+"])
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let id = e[0].as_str().unwrap().to_owned();
            (id, data_of(&e[1])["username"].as_str().unwrap().to_owned())
        })
        .collect();
    for (i, node) in nodes.iter().enumerate() {
        let mut users: Vec<&str> = routed_to(&redis, &node.id)
            .iter()
            .map(|id| user_of[id].as_str())
            .collect();
        users.sort_unstable();
        users.dedup();
        assert_eq!(
            users,
            {
                let mut own = vec![format!("u{i}"), "both".to_owned()];
                own.sort_unstable();
                own
            },
            "{}'s inbox: its users' entries only",
            node.id
        );
    }
}

/// The router keeps the nodes' sets of held users in its memory by the changes each node adds to
/// `gateway:directory`: a user who moves to another node gets what comes after there only; a node of an earlier
/// build (present, its set in Redis, but not in `gateway:mirrored`: it writes no changes) still gets its users'
/// entries; and the router trims the directory to what it has read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_follows_the_sets_by_their_changes_and_asks_an_earlier_build() {
    let (_dir, redis, nodes) = cluster_with_config("gateway_mirror", 2, &config("")).await;
    let until = (now() + 600) * 1000;
    redis.cli(&["HSET", "gateway:nodes", "earlier", &until.to_string()]);
    redis.cli(&["SADD", "gateway:holds:earlier", "/alex|old"]);
    let send = |user: &str, n: u64| {
        xadd(
            &redis,
            SEND,
            &json!({"username": user, "namespace": "/alex", "type": "n", "payload": n}),
        )
    };

    let mut first = Ws::user("mover@0", &nodes[0], "alex", "mover").await;
    until_len(&redis, CONNECTION, 1).await;
    let to_earlier = send("old", 1);
    let to_first = send("mover", 2);
    assert_eq!(first.recv().await, json!({"type": "n", "payload": 2}));

    // The user moves: gone from the first node (its change in the directory), then on the second.
    first.close().await;
    let left = "/alex|mover";
    eventually(
        Duration::from_secs(10),
        "the first node's change: mover left",
        async || {
            let last = redis.json(&["XREVRANGE", "gateway:directory", "+", "-", "COUNT", "1"]);
            let fields = last[0][1].as_array()?.clone();
            (fields.first()? == &json!("node")
                && fields.get(1)? == &json!(nodes[0].id)
                && fields.chunks(2).any(|kv| kv[0] == "-" && kv[1] == left))
            .then_some(())
        },
    )
    .await;
    let mut second = Ws::user("mover@1", &nodes[1], "alex", "mover").await;
    until_len(&redis, CONNECTION, 2).await;
    let to_second = send("mover", 3);
    assert_eq!(second.recv().await, json!({"type": "n", "payload": 3}));

    assert_eq!(
        routed_to(&redis, "earlier"),
        [to_earlier],
        "the earlier build's node, asked in Redis"
    );
    assert_eq!(
        routed_to(&redis, &nodes[0].id),
        [to_first],
        "the node the user left"
    );
    assert_eq!(routed_to(&redis, &nodes[1].id), [to_second]);
    let mut mirrored: Vec<String> = redis
        .cli(&["SMEMBERS", "gateway:mirrored"])
        .lines()
        .map(str::to_owned)
        .collect();
    mirrored.sort();
    let mut ids = vec![nodes[0].id.clone(), nodes[1].id.clone()];
    ids.sort();
    assert_eq!(mirrored, ids);

    // With nothing changing, the router trims the directory down to the last change it read.
    let mut n = 10;
    eventually(
        Duration::from_secs(15),
        "the directory trimmed to its last entry",
        async || {
            n += 1;
            send("mover", n);
            tokio::time::sleep(Duration::from_millis(300)).await;
            (xlen(&redis, "gateway:directory") == 1).then_some(())
        },
    )
    .await;
    for _ in 11..=n {
        assert_eq!(second.recv().await["type"], "n");
    }
    second.assert_nothing();
}

/// Redis loses everything (`FLUSHALL`, as a restart without persistence) and a user connects before the nodes'
/// next housekeeping: each node still writes its whole set of held users again (its presence was gone, though the
/// new user made its set again), adds it to the directory as a reset and its users, and `send` reaches the users
/// connected before as well as the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sets_redis_lost_are_written_again_though_a_user_came_meanwhile() {
    let (_dir, redis, nodes) = cluster_with_config("gateway_sets_lost", 2, &config("")).await;
    let mut alex = Ws::user("alex@0", &nodes[0], "alex", "alex").await;
    let mut bob = Ws::user("bob@1", &nodes[1], "alex", "bob").await;
    until_len(&redis, CONNECTION, 2).await;
    redis.cli(&["FLUSHALL"]);
    let mut late = Ws::user("late@1", &nodes[1], "alex", "late").await;
    eventually(
        Duration::from_secs(10),
        "the late user in its node's set",
        async || {
            let held = redis.cli(&[
                "SISMEMBER",
                &format!("gateway:holds:{}", nodes[1].id),
                "/alex|late",
            ]);
            (held.trim() == "1").then_some(())
        },
    )
    .await;

    // Entries until each user has had one (those added before the sets are written again are lost, as documented).
    let mut users = [
        ("alex", &mut alex, false),
        ("bob", &mut bob, false),
        ("late", &mut late, false),
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while users.iter().any(|(_, _, got)| !got) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still without an entry after 30 s: {:?}",
            users
                .iter()
                .filter(|u| !u.2)
                .map(|u| u.0)
                .collect::<Vec<_>>()
        );
        for (user, _, got) in &mut users {
            if !*got {
                xadd(
                    &redis,
                    SEND,
                    &json!({"username": user, "namespace": "/alex", "type": "n", "payload": 1}),
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        for (_, ws, got) in &mut users {
            while let Some(frame) = ws.within(Duration::ZERO).await {
                assert!(matches!(frame, Got::Json(_)), "{}: {frame:?}", ws.name);
                *got = true;
            }
        }
    }
    // Each node's reset and its users, in the directory since the flush.
    let directory = redis.json(&["XRANGE", "gateway:directory", "-", "+"]);
    for (node, users) in [
        (&nodes[0], vec!["/alex|alex"]),
        (&nodes[1], vec!["/alex|bob", "/alex|late"]),
    ] {
        let written_again = directory.as_array().unwrap().iter().any(|entry| {
            let fields: Vec<&str> = entry[1]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            fields.get(1) == Some(&node.id.as_str())
                && fields.contains(&"=")
                && users.iter().all(|u| fields.contains(u))
        });
        assert!(
            written_again,
            "{}'s set in the directory again: {directory}",
            node.id
        );
    }
}

/// A write to a node's set of held users fails (here the key is not a set: `WRONGTYPE`): at its next housekeeping
/// the node writes its whole set again, and `send` reaches its users.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_to_a_set_is_mended_at_the_next_housekeeping() {
    let (_dir, redis, nodes) = cluster_with_config("gateway_failed_write", 1, &config("")).await;
    let mut alex = Ws::user("alex", &nodes[0], "alex", "alex").await;
    until_len(&redis, CONNECTION, 1).await;
    let key = format!("gateway:holds:{}", nodes[0].id);
    redis.cli(&["DEL", &key]);
    redis.cli(&["SET", &key, "not a set"]);
    let mut bob = Ws::user("bob", &nodes[0], "alex", "bob").await;
    until_len(&redis, CONNECTION, 2).await;
    eventually(
        Duration::from_secs(15),
        "the set written again with both users",
        async || {
            let mut members: Vec<String> = redis
                .cli(&["SMEMBERS", &key])
                .lines()
                .map(str::to_owned)
                .collect();
            members.sort();
            (members == ["/alex|alex", "/alex|bob"]).then_some(())
        },
    )
    .await;
    for (user, ws) in [("alex", &mut alex), ("bob", &mut bob)] {
        xadd(
            &redis,
            SEND,
            &json!({"username": user, "namespace": "/alex", "type": "n", "payload": user}),
        );
        assert_eq!(ws.recv().await, json!({"type": "n", "payload": user}));
    }
}

/// A frame that is not a JSON text frame with a string `type` (binary, not JSON, no or a non-string `type`, over
/// 64 KiB) gets an `error` with the reason, publishes nothing, and the connection stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_an_error_and_the_connection_stays() {
    let (_dir, redis, nodes) = cluster_with_config("gateway_bad_frames", 1, &config("")).await;
    let mut backend = Backend::new(&redis, &[GENERAL]);
    let mut ws = Ws::user("ws", &nodes[0], "alex", "alex").await;
    until_len(&redis, CONNECTION, 1).await;

    let big = json!({"type": "big", "payload": "x".repeat(70 * 1024)}).to_string();
    let bad = [
        ("binary", Message::binary(b"{\"type\":\"t\"}".to_vec())),
        ("not JSON", Message::text("hello there")),
        ("no type", Message::text(r#"{"payload": 1}"#)),
        (
            "a number type",
            Message::text(r#"{"type": 5, "payload": 1}"#),
        ),
        ("not an object", Message::text(r#"["type", "t"]"#)),
        ("a JSON string", Message::text(r#""type""#)),
        ("over 64 KiB", Message::text(big)),
    ];
    // Every case is tried; what went wrong is listed at the end.
    let mut wrong = Vec::new();
    for (i, (what, frame)) in bad.into_iter().enumerate() {
        ws.send_raw(frame).await;
        match ws.within(Duration::from_secs(3)).await {
            Some(Got::Json(got))
                if got["type"] == "error"
                    && got["payload"]["error"]
                        .as_str()
                        .is_some_and(|e| !e.is_empty()) => {}
            other => wrong.push(format!("{what}: expected an error frame, got {other:?}")),
        }
        // Still connected: a good message after it is published.
        ws.send(json!({"type": "fine", "payload": i})).await;
        backend
            .expect(GENERAL, &format!("the good message after {what}"), |e| {
                e["payload"] == i
            })
            .await;
    }
    tokio::time::sleep(QUIET).await;
    ws.assert_nothing();
    let published: Vec<Value> = entries(&redis, GENERAL)
        .into_iter()
        .filter(|e| e["type"] != "fine")
        .collect();
    if !published.is_empty() {
        wrong.push(format!("bad frames were published: {published:?}"));
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// Entries of the `send` and `broadcast` streams that are not valid are counted in
/// `gateway_malformed_entries_total`, acknowledged, and skipped: the valid entries after them are delivered. A
/// `broadcast` entry is counted by every node (each reads every entry through its own group); a `send` entry that
/// does not say whom it is for by the router, one whose user holds but the rest not by each node holding the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_entries_are_counted_and_skipped() {
    let (_dir, redis, nodes) = cluster_with_config("gateway_bad_entries", 3, &config("")).await;
    let http = Http::new();
    let mut clients = Vec::new();
    for node in &nodes {
        clients.push(Ws::user(&format!("alex-{}", node.id), node, "alex", "alex").await);
    }
    until_len(&redis, CONNECTION, 3).await;
    let mut before = Vec::new();
    for node in &nodes {
        before.push(
            metric_sum(
                &http,
                node,
                "socket_identity_gateway_malformed_entries_total",
            )
            .await,
        );
    }

    redis.cli(&["XADD", SEND, "*", "not-data", "{\"type\":\"t\"}"]);
    redis.cli(&["XADD", SEND, "*", "data", "not json {"]);
    xadd(
        &redis,
        SEND,
        &json!({"username": "alex", "namespace": "/alex", "payload": "no type"}),
    );
    xadd(
        &redis,
        SEND,
        &json!({"username": "alex", "namespace": "/alex", "type": 7, "payload": "number type"}),
    );
    xadd(&redis, SEND, &json!(["not", "an", "object"]));
    redis.cli(&["XADD", BROADCAST, "*", "data", "{broken"]);
    xadd(&redis, BROADCAST, &json!({"payload": "no type"}));
    let router = router_of(&redis).await;
    // Per node: two broadcast entries and the two send entries for alex; the router also the three others.
    let bad = |node: &Node| if node.id == router { 7.0 } else { 4.0 };

    xadd(
        &redis,
        SEND,
        &json!({"username": "alex", "namespace": "/alex", "type": "good", "payload": 1}),
    );
    xadd(
        &redis,
        BROADCAST,
        &json!({"type": "good-too", "payload": 2}),
    );
    for ws in &mut clients {
        let mut got = vec![ws.recv().await, ws.recv().await];
        got.sort_by_key(|v| v["type"].as_str().unwrap_or_default().to_owned());
        assert_eq!(
            got,
            vec![
                json!({"type": "good", "payload": 1}),
                json!({"type": "good-too", "payload": 2}),
            ],
            "{}",
            ws.name
        );
    }
    for (node, before) in nodes.iter().zip(before) {
        let bad = bad(node);
        eventually(
            Duration::from_secs(10),
            &format!("node {} counting {bad} malformed entries", node.id),
            async || {
                let now = metric_sum(
                    &http,
                    node,
                    "socket_identity_gateway_malformed_entries_total",
                )
                .await;
                (now - before == bad).then_some(())
            },
        )
        .await;
    }
    tokio::time::sleep(QUIET).await;
    for ws in &mut clients {
        ws.assert_nothing();
    }
    let g = groups(&redis, BROADCAST);
    for id in ["a", "b", "c"] {
        assert_eq!(
            g[&format!("gateway:{id}")]["pending"],
            0,
            "{BROADCAST}: bad entries are acknowledged too: {g:?}"
        );
    }
    routed_all(&redis).await;
}

/// The username and namespace come from the token and the connection only: a message cannot change them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_username_in_a_message_changes_nothing() {
    let (_dir, redis, nodes) = cluster_with_config("gateway_forged", 1, &config("")).await;
    let a = &nodes[0];
    let mut backend = Backend::new(&redis, &[CONNECTION, GENERAL]);
    let cookie = cookie(&token("alex"));
    let mut ws = Ws::connect(
        "ws",
        a,
        "namespace=alex&username=bob&user=bob&preferred_username=bob",
        &[("cookie", &cookie)],
    )
    .await;
    let env = backend.expect(CONNECTION, "onconnect", |_| true).await;
    assert_eq!(
        (&env["username"], &env["namespace"]),
        (&json!("alex"), &json!("/alex")),
        "{env}"
    );

    let forged = json!({"username": "bob", "namespace": "/bob", "preferred_username": "bob"});
    ws.send(json!({"type": "ask", "payload": forged, "username": "bob", "namespace": "/bob",
        "node": "z", "socket": "someone-else", "context": {"headers": {"jwt": {"preferred_username": "bob"}}}}))
        .await;
    let env = backend.expect(GENERAL, "the message", |_| true).await;
    check_envelope(&env, GENERAL, "a", "alex", "/alex", "ask", &forged);

    let mut io = Clients::start();
    let ev = io
        .connect(
            Conn::to("sio", &a)
                .ns("/alex")
                .auth(json!({"token": token("alex"), "username": "bob"})),
        )
        .await;
    assert_eq!(ev["event"], "connect", "{ev}");
    backend
        .expect(CONNECTION, "the Socket.IO onconnect", |e| {
            e["username"] == "alex"
        })
        .await;
    io.emit("sio", "ask", json!([forged]), false).await;
    let env = backend
        .expect(GENERAL, "the Socket.IO message", |_| true)
        .await;
    check_envelope(&env, GENERAL, "a", "alex", "/alex", "ask", &forged);
}

/// With `ping_interval_ms`, an idle client that answers pings stays connected; one that stops reading (so never
/// answers) is closed after about two intervals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_keep_an_idle_client_and_close_a_dead_one() {
    let (_dir, redis, nodes) =
        cluster_with_config("gateway_pings", 1, &config("ping_interval_ms = 300")).await;
    let a = &nodes[0];
    let mut backend = Backend::new(&redis, &[CONNECTION, GENERAL, CLOSE]);
    let mut alive = Ws::user("alive", a, "alex", "alex").await;
    backend
        .expect(CONNECTION, "alive's onconnect", |e| e["username"] == "alex")
        .await;

    // Stops reading at once: its pongs never go out.
    let cookie = cookie(&token("bob"));
    let mut dead = open_raw(a, "namespace=bob", &[("cookie", &cookie)])
        .await
        .unwrap();
    backend
        .expect(CONNECTION, "dead's onconnect", |e| e["username"] == "bob")
        .await;
    let env = backend
        .expect(CLOSE, "the silent client closed", |e| {
            e["username"] == "bob"
        })
        .await;
    println!("the silent client: {env}");
    // Its connection is over: reading now ends within a short while (a close frame, an error or the end).
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match dead.next().await {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the silent client's connection is still open"
    );

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pings = alive.pings.load(Ordering::SeqCst);
    assert!(pings >= 3, "pings every 300 ms: {pings} in ~2 s");
    alive.assert_nothing();
    alive.send(json!({"type": "still", "payload": pings})).await;
    backend
        .expect(GENERAL, "a message from the idle client", |e| {
            e["type"] == "still"
        })
        .await;
    assert!(
        entries(&redis, CLOSE)
            .iter()
            .all(|e| e["username"] != "alex"),
        "the client answering pings was not closed: {:?}",
        entries(&redis, CLOSE)
    );
}

/// `stream_prefix` goes before every stream key, hooks' and subscribed ones; `stream_maxlen` trims the streams
/// the gateway adds to (`MAXLEN ~`), and what is trimmed is counted (issue 20, point 6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_prefix_and_trimming() {
    // Hundreds of messages at once: no per-socket event rate here.
    let (redis, a) = one_node(
        "gateway_prefix",
        "stream_prefix = \"app:\"\nstream_maxlen = 100",
        "0",
    )
    .await;
    let mut ws = Ws::user("ws", &a, "alex", "alex").await;
    until_len(&redis, &format!("app:{CONNECTION}"), 1).await;
    assert_eq!(
        xlen(&redis, CONNECTION),
        0,
        "the prefix goes before the topic"
    );

    xadd(
        &redis,
        &format!("app:{SEND}"),
        &json!({"username": "alex", "namespace": "/alex", "type": "s", "payload": 1}),
    );
    assert_eq!(ws.recv().await, json!({"type": "s", "payload": 1}));
    xadd(
        &redis,
        &format!("app:{BROADCAST}"),
        &json!({"type": "b", "payload": 2}),
    );
    assert_eq!(ws.recv().await, json!({"type": "b", "payload": 2}));
    xadd(
        &redis,
        BROADCAST,
        &json!({"type": "unprefixed", "payload": 3}),
    );

    for i in 0..400 {
        ws.send(json!({"type": "m", "payload": i})).await;
    }
    let general = format!("app:{GENERAL}");
    eventually(
        Duration::from_secs(20),
        "the last message published",
        async || {
            let last = redis.json(&["XREVRANGE", &general, "+", "-", "COUNT", "1"]);
            (data_of(&last[0][1])["payload"] == 399).then_some(())
        },
    )
    .await;
    let len = xlen(&redis, &general);
    assert!(
        (100..=250).contains(&len),
        "400 messages with stream_maxlen = 100 (MAXLEN ~): {len} kept"
    );
    // Every entry trimmed is counted (the other streams are under the cap).
    let http = Http::new();
    eventually(
        Duration::from_secs(5),
        "the trimmed entries counted",
        async || {
            let trimmed =
                metric_sum(&http, &a, "socket_identity_gateway_entries_trimmed_total").await;
            (trimmed as usize == 400 - xlen(&redis, &general)).then_some(())
        },
    )
    .await;
    tokio::time::sleep(QUIET).await;
    ws.assert_nothing();
}

/// `[gateway]` without Redis cannot work: a single node refuses to start, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_without_redis_is_a_start_up_error() {
    let dir = log_dir("gateway_without_redis");
    let path = dir.join("config.toml");
    std::fs::write(&path, config("")).unwrap();
    let config = path.display().to_string();
    let mut node = Node::spawn(
        &dir,
        NodeOpts {
            args: &["--config", &config],
            ..NodeOpts::default()
        },
    )
    .await;
    let status = node.exit_within(Duration::from_secs(10)).await;
    let log = node.log_text();
    assert!(
        matches!(status, Some(s) if !s.success()),
        "{status:?}\n{log}"
    );
    assert!(
        log.contains("cannot start") && log.contains("REDIS_URL") && log.contains("gateway"),
        "a clear message naming REDIS_URL:\n{log}"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Security (issue 20): each namespace's own auth, cookies and origins, the event rate, one client per namespace,
// the frame size, unverified identities.

const TENANT_SECRET: &str = "tenant-secret-0123456789abcdef";

/// [`config`] plus one gateway namespace of each other auth kind: `/tenant` (`jwt` with a key of its own),
/// `/claimed` (`claim`), `/lab` (`credentials`: `lab-user` / `open-sesame`) and `/hooked` (`webhook` at
/// `hook_port`, see [`start_webhook`]).
fn tenants_config(test: &str, hook_port: u16) -> String {
    let credentials = root().join(format!("target/test-logs/{test}.credentials.json"));
    std::fs::create_dir_all(credentials.parent().unwrap()).unwrap();
    let hash = bcrypt::hash("open-sesame", 4).unwrap();
    std::fs::write(
        &credentials,
        json!([{"username": "lab-user", "password": hash}]).to_string(),
    )
    .unwrap();
    format!(
        r#"{}
[[namespace]]
name = "/tenant"
auth = "jwt"
jwt_secret = "{TENANT_SECRET}"
user_claim = "preferred_username"
gateway = true

[[namespace]]
name = "/claimed"
auth = "claim"
rooms = []
gateway = true

[[namespace]]
name = "/lab"
auth = "credentials"
credentials_file = "{}"
rooms = []
gateway = true

[[namespace]]
name = "/hooked"
auth = "webhook"
auth_url = "http://127.0.0.1:{hook_port}/auth"
rooms = []
gateway = true
"#,
        config(""),
        credentials.display()
    )
}

/// The `/hooked` namespace's auth webhook on a free loopback port (returned): `Authorization: Bearer good` is user
/// `hooky`, anything else `401`.
async fn start_webhook() -> u16 {
    use axum::{Json, http::HeaderMap, http::StatusCode};
    async fn auth(headers: HeaderMap) -> Result<Json<Value>, StatusCode> {
        match headers.get("authorization").and_then(|v| v.to_str().ok()) {
            Some("Bearer good") => Ok(Json(json!({"rooms": [], "id_user": "hooky"}))),
            _ => Err(StatusCode::UNAUTHORIZED),
        }
    }
    serve_loopback(axum::Router::new().route("/auth", axum::routing::get(auth))).await
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    let pair = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// A plain WebSocket client is verified by its namespace's own auth (issue 20, point 2): a `jwt` namespace with
/// its own key, `credentials` with `Authorization: Basic`, `webhook` with `?token=` sent to `auth_url`;
/// `[gateway]`'s key only for `claim` (and `none`) namespaces. Each refusal is a `401` with a JSON error before the
/// upgrade, publishing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_namespace_verifies_its_plain_websocket_clients_with_its_own_auth() {
    let test = "gateway_own_auth";
    let hook = start_webhook().await;
    let (_dir, redis, nodes) = cluster_with_config(test, 1, &tenants_config(test, hook)).await;
    let a = &nodes[0];
    let mut backend = Backend::new(&redis, &[CONNECTION]);
    let tina = jwt(
        json!({"preferred_username": "tina", "exp": now() + 600}),
        TENANT_SECRET,
    );
    // Signed with [gateway]'s key (also /alex's).
    let gw = token("alex");
    let lab = basic("lab-user", "open-sesame");
    // What, query, headers; accepted ones with their namespace and user.
    type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>);
    let accepted: [(Case, &str, &str); 4] = [
        (
            (
                "the tenant's own token",
                format!("namespace=tenant&token={tina}"),
                vec![],
            ),
            "/tenant",
            "tina",
        ),
        (
            (
                "[gateway]'s token on a claim namespace",
                format!("namespace=claimed&token={gw}"),
                vec![],
            ),
            "/claimed",
            "alex",
        ),
        (
            (
                "basic credentials",
                "namespace=lab".into(),
                vec![("authorization", lab.as_str())],
            ),
            "/lab",
            "lab-user",
        ),
        (
            (
                "a token the webhook accepts",
                "namespace=hooked&token=good".into(),
                vec![],
            ),
            "/hooked",
            "hooky",
        ),
    ];
    let mut open = Vec::new();
    for ((what, query, headers), ns, user) in &accepted {
        open.push(Ws::connect(what, a, query, headers).await);
        let env = backend
            .expect(CONNECTION, what, |e| e["namespace"] == *ns)
            .await;
        assert_eq!(env["username"], *user, "{what}: {env}");
    }

    let wrong = basic("lab-user", "nope");
    let gw_bearer = format!("Bearer {gw}");
    let refused: [Case; 10] = [
        (
            "[gateway]'s key on a jwt namespace",
            format!("namespace=tenant&token={gw}"),
            vec![],
        ),
        (
            "another tenant's token",
            format!("namespace=alex&token={tina}"),
            vec![],
        ),
        (
            "a tenant's token on a claim namespace",
            format!("namespace=claimed&token={tina}"),
            vec![],
        ),
        (
            "a wrong password",
            "namespace=lab".into(),
            vec![("authorization", wrong.as_str())],
        ),
        ("no credentials", "namespace=lab".into(), vec![]),
        (
            "a JWT on a credentials namespace",
            "namespace=lab".into(),
            vec![("authorization", gw_bearer.as_str())],
        ),
        (
            "Basic that is not base64",
            "namespace=lab".into(),
            vec![("authorization", "Basic !!!")],
        ),
        (
            "a token the webhook refuses",
            "namespace=hooked&token=deny".into(),
            vec![],
        ),
        (
            "[gateway]'s token on a webhook namespace",
            format!("namespace=hooked&token={gw}"),
            vec![],
        ),
        (
            "no token for the webhook",
            "namespace=hooked".into(),
            vec![],
        ),
    ];
    for (what, query, headers) in &refused {
        let (status, body) = refusal(a, query, headers).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert!(body["error"].is_string(), "{what}: a JSON error: {body}");
    }
    only_accepted_were_published(&redis, accepted.len(), open).await;
}

/// Cross-site WebSocket hijacking (issue 20, point 5): a token read from a cookie counts only when the request has
/// no `Origin` (not a browser) or an allowed one (without `CORS_ORIGINS`: the node's own), for the gateway and for
/// Socket.IO `jwt` namespaces with `jwt_cookie`; `[gateway]` reads no cookie unless its `jwt_cookie` is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_token_counts_only_from_an_allowed_origin() {
    let test = "gateway_cross_site";
    let (_dir, redis, nodes) =
        cluster_with_config(test, 1, &tenants_config(test, free_port())).await;
    let a = &nodes[0];
    let cookie = cookie(&token("alex"));
    let evil = "https://evil.example";

    // The victim's browser on the attacker's page: refused before the upgrade.
    let (status, body) = refusal(
        a,
        "namespace=alex",
        &[("cookie", &cookie), ("origin", evil)],
    )
    .await;
    assert!(
        status == 403 && body["error"].as_str().is_some_and(|e| e.contains("cookie")),
        "a cookie from another site's page: {status} {body}"
    );
    // Not a browser, or the node's own page: the cookie counts.
    let own = format!("https://localhost:{}", a.port);
    for (what, headers) in [
        ("no origin", vec![("cookie", cookie.as_str())]),
        (
            "the node's own origin",
            vec![("cookie", cookie.as_str()), ("origin", own.as_str())],
        ),
    ] {
        Ws::connect(what, a, "namespace=alex", &headers)
            .await
            .close()
            .await;
    }
    // A token the page had to know (query) is no cookie: any origin.
    let query = format!("namespace=alex&token={}", token("alex"));
    Ws::connect("query token", a, &query, &[("origin", evil)])
        .await
        .close()
        .await;
    // `[gateway]` without `jwt_cookie` reads no cookie (its key verifies the claim namespace).
    let (status, body) = refusal(a, "namespace=claimed", &[("cookie", &cookie)]).await;
    assert_eq!(status, 401, "[gateway] reads no cookie by default: {body}");

    // Socket.IO, a `jwt` namespace with `jwt_cookie`.
    let mut io = Clients::start();
    let ev = io
        .connect(
            Conn::to("evil", &a)
                .ns("/alex")
                .headers(json!({"cookie": cookie, "origin": evil})),
        )
        .await;
    assert_eq!(ev["event"], "connect_error", "{ev}");
    assert!(
        ev["message"].as_str().is_some_and(|m| m.contains("cookie")),
        "a clear message: {ev}"
    );
    for (id, headers) in [
        ("plain", json!({"cookie": cookie})),
        ("own", json!({"cookie": cookie, "origin": a.base()})),
    ] {
        let ev = io
            .connect(Conn::to(id, &a).ns("/alex").headers(headers))
            .await;
        assert_eq!(ev["event"], "connect", "{id}: {ev}");
    }
    drop(redis);
}

/// A plain WebSocket client is held to `SOCKET_EVENT_RATE` like a Socket.IO socket (issue 20, point 6): beyond it
/// an `error` frame says why, then the connection is closed (1008), and no more than the burst is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_websocket_client_over_the_event_rate_is_told_and_closed() {
    let (redis, a) = one_node("gateway_event_rate", "", "5").await;
    let mut ws = Ws::user("ws", &a, "alex", "alex").await;
    until_len(&redis, CONNECTION, 1).await;
    for i in 0..50 {
        // The node may close the connection before the last ones are written.
        let text = json!({"type": "m", "payload": i}).to_string();
        let _ = ws.sink.send(Message::text(text)).await;
    }
    let (close, before) = ws.closed().await;
    assert!(
        before.iter().any(|g| matches!(g, Got::Json(v)
            if v["type"] == "error"
                && v["payload"]["error"].as_str().is_some_and(|e| e.contains("too many")))),
        "an error frame says why: {before:?}"
    );
    assert_eq!(
        close.map(|c| c.0),
        Some(1008),
        "closed as a policy violation"
    );
    tokio::time::sleep(QUIET).await;
    let published = xlen(&redis, GENERAL);
    assert!(
        published <= 5,
        "at most the burst (5) published: {published}"
    );
    let limited = metric_sum(
        &Http::new(),
        &a,
        "socket_identity_sockets_rate_limited_total",
    )
    .await;
    assert_eq!(limited, 1.0, "counted like a Socket.IO socket");
}

/// The next text frame of a raw Socket.IO connection (answering Engine.IO pings), within 10 s.
async fn next_text(ws: &mut Stream) -> String {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
            .expect("the connection is open")
            .unwrap();
        match msg {
            Message::Text(t) if t.as_str() == "2" => ws.send(Message::text("3")).await.unwrap(),
            Message::Text(t) => return t.to_string(),
            _ => {}
        }
    }
}

/// One Socket.IO connection multiplexing two gateway namespaces (one socket id in both) is two clients
/// (issue 20, point 7): each namespace's messages are published with that namespace and its own token's user,
/// and leaving one leaves the other a client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_multiplexing_two_namespaces_is_two_gateway_clients() {
    let (_dir, redis, nodes) = cluster_with_config("gateway_multiplex", 1, &config("")).await;
    let a = &nodes[0];
    let mut backend = Backend::new(&redis, &[CONNECTION, GENERAL, CLOSE]);
    // The Socket.IO protocol by hand (v5 over Engine.IO 4): the official client's Manager does the same.
    let url = format!(
        "wss://localhost:{}/socket.io/?EIO=4&transport=websocket",
        a.port
    );
    let (mut ws, _) =
        tokio_tungstenite::client_async(url.into_client_request().unwrap(), tls(a.port).await)
            .await
            .unwrap();
    assert!(next_text(&mut ws).await.starts_with('0'), "Engine.IO open");
    for (ns, user) in [("/alex", "alex"), ("/bob", "robert")] {
        let connect = format!("40{ns},{}", json!({"token": token(user)}));
        ws.send(Message::text(connect)).await.unwrap();
    }
    let mut sids = HashMap::new();
    while sids.len() < 2 {
        let text = next_text(&mut ws).await;
        for ns in ["/alex", "/bob"] {
            if let Some(rest) = text.strip_prefix(&format!("40{ns},")) {
                let sid = serde_json::from_str::<Value>(rest).unwrap()["sid"].clone();
                sids.insert(ns, sid);
            }
        }
        assert!(!text.starts_with("44"), "refused: {text}");
    }
    assert_eq!(
        sids["/alex"], sids["/bob"],
        "one socket id in both namespaces: the case at hand"
    );
    for user in ["alex", "robert"] {
        backend
            .expect(CONNECTION, user, |e| e["username"] == user)
            .await;
    }
    let say = |ns: &str, text: &str| Message::text(format!("42{ns},{}", json!(["chat", text])));
    ws.send(say("/alex", "to-alex")).await.unwrap();
    ws.send(say("/bob", "to-bob")).await.unwrap();
    for (text, ns, user) in [("to-alex", "/alex", "alex"), ("to-bob", "/bob", "robert")] {
        let env = backend
            .expect(GENERAL, text, |e| e["payload"] == text)
            .await;
        let claimed = &env["context"]["headers"]["jwt"]["preferred_username"];
        assert_eq!(
            (&env["namespace"], &env["username"], claimed),
            (&json!(ns), &json!(user), &json!(user)),
            "{text}: {env}"
        );
    }
    // Leaving /alex: its onclose; /bob is still a client.
    ws.send(Message::text("41/alex,")).await.unwrap();
    let env = backend
        .expect(CLOSE, "/alex's onclose", |e| e["namespace"] == "/alex")
        .await;
    assert_eq!(env["username"], "alex", "{env}");
    ws.send(say("/bob", "still-bob")).await.unwrap();
    let env = backend
        .expect(GENERAL, "still-bob", |e| e["payload"] == "still-bob")
        .await;
    assert_eq!(
        (&env["namespace"], &env["username"]),
        (&json!("/bob"), &json!("robert")),
        "{env}"
    );
}

/// A frame larger than the WebSocket limit (1 MiB) closes the connection as soon as its header arrives
/// (issue 20, point 9): the node neither waits for nor buffers its 16 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_is_refused_at_its_header() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_dir, _redis, nodes) = cluster_with_config("gateway_frame_size", 1, &config("")).await;
    let a = &nodes[0];
    let cookie = cookie(&token("alex"));
    let mut ws = open_raw(a, "namespace=alex", &[("cookie", &cookie)])
        .await
        .unwrap();
    let raw = ws.get_mut();
    // FIN + binary; masked, 64-bit length: 16 MiB; the mask key; the first 4 KiB of the payload.
    let mut frame = vec![0x82u8, 0xFF];
    frame.extend_from_slice(&(16u64 << 20).to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    frame.extend_from_slice(&[0u8; 4096]);
    raw.write_all(&frame).await.unwrap();
    raw.flush().await.unwrap();
    let mut buf = vec![0u8; 65536];
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match raw.read(&mut buf).await {
                Ok(0) | Err(_) => return "end of stream",
                // A close frame (opcode 8).
                Ok(_) if buf[0] == 0x88 => return "close frame",
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the node is still reading the 16 MiB frame after 5 s"
    );
}

/// With `gateway = true` on a `claim` namespace the identity is the client's word (issue 20, point 13): the
/// envelope says `context.verified: false` and carries no claims; verified identities say `true`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_identity_is_marked_unverified_in_the_envelope() {
    let test = "gateway_unverified";
    let (_dir, redis, nodes) =
        cluster_with_config(test, 1, &tenants_config(test, free_port())).await;
    let a = &nodes[0];
    let mut backend = Backend::new(&redis, &[CONNECTION]);
    let mut io = Clients::start();
    let ev = io
        .connect(
            Conn::to("carol", &a)
                .ns("/claimed")
                .query(json!({"id_user": "carol"})),
        )
        .await;
    assert_eq!(ev["event"], "connect", "{ev}");
    let env = backend
        .expect(CONNECTION, "carol", |e| e["username"] == "carol")
        .await;
    assert_eq!(env["context"]["verified"], false, "{env}");
    assert_eq!(
        env["context"]["headers"]["jwt"],
        json!({}),
        "no claims: {env}"
    );

    let ev = io
        .connect(
            Conn::to("sio-alex", &a)
                .ns("/alex")
                .auth(json!({"token": token("alex")})),
        )
        .await;
    assert_eq!(ev["event"], "connect", "{ev}");
    let _ws = Ws::user("ws-bob", a, "bob", "bob").await;
    let query = format!("namespace=claimed&token={}", token("dave"));
    let _claimed = Ws::connect("ws-dave", a, &query, &[]).await;
    for user in ["alex", "bob", "dave"] {
        let env = backend
            .expect(CONNECTION, user, |e| e["username"] == user)
            .await;
        assert_eq!(env["context"]["verified"], true, "{env}");
        assert_eq!(
            env["context"]["headers"]["jwt"]["preferred_username"], user,
            "{env}"
        );
    }
}

/// A plain WebSocket client that stops reading: the node writes its frames until its connection takes no more, then
/// queues them in order up to the queue's bound, then drops and counts them; a client that reads has every frame,
/// in order, meanwhile. Once the stalled client reads again, what it gets is in order, starts at the first frame,
/// and with the dropped ones makes every frame: none lost uncounted, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_loses_only_counted_frames_and_delays_no_other() {
    const FRAMES: usize = 600;
    // 600 frames of ~60 KB (36 MB): more than the loopback connection's buffers and the queue (256) together.
    const PAD: usize = 60_000;
    let (redis, a) = one_node("gateway_stalled_client", "", "100").await;
    let mut reader = Ws::user("reader", &a, "alex", "alex").await;
    let cookie = cookie(&token("bob"));
    let mut stalled = open_raw(&a, "namespace=bob", &[("cookie", &cookie)])
        .await
        .expect("the stalled client connects");
    until_len(&redis, CONNECTION, 2).await;

    // One call adds them all, so that the node reads them as fast as it can.
    let script = r#"
        local pad = string.rep('x', tonumber(ARGV[2]))
        for i = 1, tonumber(ARGV[1]) do
            redis.call('XADD', KEYS[1], '*', 'data',
                '{"type":"big","payload":{"seq":' .. i .. ',"pad":"' .. pad .. '"}}')
        end
        return 1
    "#;
    redis.cli(&[
        "EVAL",
        script,
        "1",
        BROADCAST,
        &FRAMES.to_string(),
        &PAD.to_string(),
    ]);
    for seq in 1..=FRAMES {
        let frame = reader.recv().await;
        assert_eq!(frame["type"], "big");
        assert_eq!(
            frame["payload"]["seq"], seq,
            "the reading client has every frame in order"
        );
    }

    let dropped = metric_sum(&Http::new(), &a, "socket_identity_gateway_dropped_total").await;
    assert!(
        dropped > 0.0,
        "the stalled client's queue overflowed: {dropped}"
    );
    let mut got = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(2), stalled.next()).await;
        match next {
            Ok(Some(Ok(Message::Text(t)))) => {
                let frame: Value = serde_json::from_str(t.as_str()).unwrap();
                got.push(frame["payload"]["seq"].as_u64().unwrap() as usize);
            }
            Ok(Some(Ok(_))) => {}
            Ok(other) => panic!("the stalled client's connection ended: {other:?}"),
            Err(_) => break,
        }
    }
    eprintln!(
        "the stalled client got {} frames, {dropped} dropped",
        got.len()
    );
    assert_eq!(got.first(), Some(&1), "from the first frame");
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "in order, none twice: {got:?}"
    );
    assert_eq!(
        got.len() + dropped as usize,
        FRAMES,
        "every frame either reached the stalled client or was counted as dropped ({} got)",
        got.len()
    );
    reader.close().await;
}
