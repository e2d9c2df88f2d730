//! A minimal Socket.IO client over TLS websockets: just what the load generator needs, and cheap enough that
//! 20,000 of them fit in one process.
//!
//! Engine.IO v4 straight to websocket (no polling): `0{..}` open, we send `40` (connect to `/`; `40/ns,{auth}` for
//! another namespace or with an auth object), the server answers `40{"sid"}` or `44{"message"}` (prefixed with
//! `/ns,` outside `/`); afterwards we answer pings (`2`) with pongs (`3`), report `identity-change` events and
//! the bench's `POST /send` events (`e`) to the probe, and acknowledge every event that asks for an ack
//! (`42/ns,<id>[..]` is answered `43/ns,<id>[]`, what a socket.io client's callback called without arguments
//! sends).

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::{net::TcpStream, sync::Notify, task::JoinHandle};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::{Message, protocol::WebSocketConfig};

/// How a handshake can fail; the bench counts these, it never panics on them.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("tcp: {0}")]
    Tcp(std::io::Error),
    #[error("tls: {0}")]
    Tls(std::io::Error),
    #[error("websocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("connect_error: {0}")]
    Refused(String),
    #[error("unexpected frame: {0}")]
    Protocol(String),
    #[error("handshake timed out")]
    Timeout,
}

/// TLS settings shared by every connection: trust the development CA only.
pub fn tls_connector(ca_pem: &std::path::Path) -> anyhow::Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_pem)? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The event the bench pushes with `POST /send`.
pub const SEND_EVENT: &str = "e";

/// Counts, across every client, the events of the current fan-out round (`identity-change` relayed, or a
/// `POST /send` event naming the round), and every `POST /send` event and ack.
#[derive(Default)]
pub struct FanoutProbe {
    round: AtomicU64,
    arrived: AtomicUsize,
    target: AtomicUsize,
    /// When the last expected receiver got the event.
    last: Mutex<Option<Instant>>,
    done: Notify,
    /// `POST /send` events received, and acks sent (for any event that asked for one), by all clients.
    send_events: AtomicUsize,
    acks: AtomicUsize,
    /// When the latest ack was sent.
    last_ack: Mutex<Option<Instant>>,
    /// Per-message arrivals of many messages in flight at once (the emitter rate phase), when set.
    tally: OnceLock<Arc<Tally>>,
    /// The acks of the RPC phase's calls, when set.
    calls: OnceLock<Arc<crate::rpc::Calls>>,
}

impl FanoutProbe {
    /// Starts round `round`, complete once `target` clients got it.
    pub fn arm(&self, round: u64, target: usize) {
        *self.last.lock().unwrap() = None;
        self.arrived.store(0, Ordering::SeqCst);
        self.target.store(target, Ordering::SeqCst);
        self.round.store(round, Ordering::SeqCst);
    }

    /// Waits for the round to complete; returns when the last receiver got it, or `None` at the deadline.
    pub async fn wait(&self, limit: Duration) -> Option<Instant> {
        let _ = tokio::time::timeout(limit, self.done.notified()).await;
        *self.last.lock().unwrap()
    }

    pub fn arrived(&self) -> usize {
        self.arrived.load(Ordering::SeqCst)
    }

    /// `POST /send` events received so far, by all clients.
    pub fn send_events(&self) -> usize {
        self.send_events.load(Ordering::SeqCst)
    }

    /// Acks sent so far, by all clients.
    pub fn acks(&self) -> usize {
        self.acks.load(Ordering::SeqCst)
    }

    /// When the latest ack was sent.
    pub fn last_ack(&self) -> Option<Instant> {
        *self.last_ack.lock().unwrap()
    }

    /// Counts every `POST /send`-style event naming a round into `tally` from now on, as well as the current
    /// round; a probe takes one tally for its life.
    pub fn track(&self, tally: Arc<Tally>) -> Result<(), Arc<Tally>> {
        self.tally.set(tally)
    }

    /// Hands the acks of numbered calls (`42/ns,<seq>[..]` answered `43/ns,<seq>[..]`) to `calls` from now on; a
    /// probe takes one for its life.
    pub fn track_calls(&self, calls: Arc<crate::rpc::Calls>) -> Result<(), Arc<crate::rpc::Calls>> {
        self.calls.set(calls)
    }

    fn acked(&self) {
        *self.last_ack.lock().unwrap() = Some(Instant::now());
        self.acks.fetch_add(1, Ordering::SeqCst);
    }

    /// An `identity-change` relayed: the emitter names each round `fanout-<round>` in the new id_user.
    fn saw(&self, text: &str) {
        self.saw_round(text, "\"id_user\":\"fanout-", '"');
    }

    /// A `POST /send` event: a round's push carries `{"round": <round>}` as its argument.
    fn saw_send(&self, text: &str) {
        self.send_events.fetch_add(1, Ordering::SeqCst);
        self.saw_round(text, "\"round\":", '}');
    }

    /// Counts the event for the current round if `text` names it, as the digits after `marker` up to `end`.
    fn saw_round(&self, text: &str, marker: &str, end: char) {
        let Some(round) = text
            .split_once(marker)
            .and_then(|(_, rest)| rest.split(end).next())
            .and_then(|n| n.parse::<u64>().ok())
        else {
            return;
        };
        if let Some(tally) = self.tally.get() {
            tally.saw(round);
        }
        if round != self.round.load(Ordering::SeqCst) {
            return;
        }
        let n = self.arrived.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.target.load(Ordering::SeqCst) {
            *self.last.lock().unwrap() = Some(Instant::now());
            self.done.notify_one();
        }
    }
}

/// Arrivals of numbered messages, many in flight at once: message `seq` is complete once `target` clients have
/// it, which records its latency and returns its permit to `window`, so that the sender never has more than the
/// window's permits of messages unfinished (a closed loop: it sends as fast as the receivers keep up). Slots are a
/// ring (`seq mod len`), longer than the window, so a slot is reused only after its message is complete, unless
/// that message was lost: then its late arrivals no longer count here (each client's own count still does).
pub struct Tally {
    target: usize,
    epoch: Instant,
    slots: Box<[Slot]>,
    window: Arc<tokio::sync::Semaphore>,
    /// From [`Self::sent`] until the last of `target` had it, per complete message.
    latencies: Mutex<Vec<Duration>>,
    /// When the latest message was complete.
    last: Mutex<Option<Instant>>,
}

#[derive(Default)]
struct Slot {
    seq: AtomicU64,
    arrived: AtomicUsize,
    /// Nanoseconds since `epoch` when it was sent.
    sent: AtomicU64,
}

impl Tally {
    /// A tally for messages each to reach `target` clients, at most `window` unfinished at once.
    pub fn new(target: usize, window: usize) -> Self {
        let len = (window * 4).max(1024);
        Self {
            target,
            epoch: Instant::now(),
            slots: (0..len).map(|_| Slot::default()).collect(),
            window: Arc::new(tokio::sync::Semaphore::new(window.max(1))),
            latencies: Mutex::new(Vec::new()),
            last: Mutex::new(None),
        }
    }

    /// Waits for a free place in the window (`None`: not within `limit`, a message is stuck), and takes it.
    pub async fn reserve(&self, limit: Duration) -> Option<()> {
        let permit = tokio::time::timeout(limit, self.window.acquire())
            .await
            .ok()?
            .ok()?;
        // Given back by `saw` when the message is complete.
        permit.forget();
        Some(())
    }

    /// Message `seq` (never 0) is being sent now.
    pub fn sent(&self, seq: u64) {
        let slot = &self.slots[seq as usize % self.slots.len()];
        slot.arrived.store(0, Ordering::SeqCst);
        slot.sent
            .store(self.epoch.elapsed().as_nanos() as u64, Ordering::SeqCst);
        slot.seq.store(seq, Ordering::SeqCst);
    }

    fn saw(&self, seq: u64) {
        let slot = &self.slots[seq as usize % self.slots.len()];
        if seq == 0 || slot.seq.load(Ordering::SeqCst) != seq {
            return;
        }
        if slot.arrived.fetch_add(1, Ordering::SeqCst) + 1 == self.target {
            let now = Instant::now();
            let sent = self.epoch + Duration::from_nanos(slot.sent.load(Ordering::SeqCst));
            self.latencies
                .lock()
                .unwrap()
                .push(now.duration_since(sent));
            *self.last.lock().unwrap() = Some(now);
            self.window.add_permits(1);
        }
    }

    /// Messages complete so far.
    pub fn complete(&self) -> usize {
        self.latencies.lock().unwrap().len()
    }

    /// When the latest message was complete.
    pub fn last(&self) -> Option<Instant> {
        *self.last.lock().unwrap()
    }

    /// The latencies of the complete messages.
    pub fn latencies(&self) -> Vec<Duration> {
        self.latencies.lock().unwrap().clone()
    }
}

/// What a client sends to join a namespace: the namespace, query fields of the Engine.IO request and the
/// Socket.IO `auth` object.
#[derive(Debug, Clone)]
pub struct Login {
    pub namespace: String,
    pub query: Vec<(&'static str, String)>,
    /// The `auth` object of the `CONNECT` packet, as JSON.
    pub auth: Option<serde_json::Value>,
}

impl Login {
    /// `/`, saying who we are in the query (`auth = "claim"`, the default namespace).
    pub fn claim(id_user: &str, room: &str) -> Self {
        Self {
            namespace: "/".into(),
            query: vec![("id_user", id_user.into()), ("room", room.into())],
            auth: None,
        }
    }

    /// The `CONNECT` packet: `40`, the namespace unless it is `/`, the auth object.
    fn connect_packet(&self) -> String {
        let mut packet = "40".to_owned();
        if self.namespace != "/" {
            packet.push_str(&self.namespace);
            packet.push(',');
        }
        if let Some(auth) = &self.auth {
            packet.push_str(&auth.to_string());
        }
        packet
    }

    /// A packet of this namespace without its type and namespace prefix (`40/ns,{..}` -> `{..}`).
    fn strip<'a>(&self, kind: &str, packet: &'a str) -> Option<&'a str> {
        strip(&self.namespace, kind, packet)
    }
}

/// A packet of namespace `ns` without its type and namespace prefix (`40/ns,{..}` -> `{..}`).
fn strip<'a>(ns: &str, kind: &str, packet: &'a str) -> Option<&'a str> {
    let rest = packet.strip_prefix(kind)?;
    match ns {
        "/" => Some(rest),
        ns => rest.strip_prefix(ns)?.strip_prefix(','),
    }
}

/// A Socket.IO `EVENT` packet of namespace `ns` (`42/ns,<ack id>["name",..]`): its ack id, if it asks for an
/// ack, and its JSON array.
pub fn event_packet<'a>(ns: &str, packet: &'a str) -> Option<(Option<&'a str>, &'a str)> {
    numbered(ns, "42", packet)
}

/// A packet of type `kind` of namespace `ns`: its id, if it has one, and its JSON array.
fn numbered<'a>(ns: &str, kind: &str, packet: &'a str) -> Option<(Option<&'a str>, &'a str)> {
    let rest = strip(ns, kind, packet)?;
    let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let (id, array) = rest.split_at(digits);
    Some(((!id.is_empty()).then_some(id), array))
}

/// A Socket.IO `ACK` packet of namespace `ns` (`43/ns,<id>[..]`): its id and its JSON array.
pub fn ack_of<'a>(ns: &str, packet: &'a str) -> Option<(Option<&'a str>, &'a str)> {
    numbered(ns, "43", packet)
}

/// The `ACK` packet answering event `id` of namespace `ns`, with no arguments: `43/ns,<id>[]`.
fn ack_packet(ns: &str, id: &str) -> String {
    match ns {
        "/" => format!("43{id}[]"),
        ns => format!("43{ns},{id}[]"),
    }
}

/// A connected client: a task that keeps the socket alive. Dropping it closes the connection.
pub struct Client {
    outbox: tokio::sync::mpsc::Sender<String>,
    task: JoinHandle<()>,
    /// The Socket.IO socket id the server gave (`id_socket` in `GET /{room}/users`).
    pub sid: String,
    /// The namespace it joined: what it emits goes there.
    ns: String,
    /// `POST /send` events received.
    received: Arc<AtomicUsize>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Client {
    /// Connects with `login`, within `limit`.
    pub async fn connect(
        tls: &TlsConnector,
        addr: SocketAddr,
        login: &Login,
        probe: Arc<FanoutProbe>,
        limit: Duration,
    ) -> Result<Self, ConnectError> {
        tokio::time::timeout(limit, Self::handshake(tls, addr, login, probe))
            .await
            .unwrap_or(Err(ConnectError::Timeout))
    }

    async fn handshake(
        tls: &TlsConnector,
        addr: SocketAddr,
        login: &Login,
        probe: Arc<FanoutProbe>,
    ) -> Result<Self, ConnectError> {
        let mut ws = open(tls, addr, &login.query).await?;
        let sid = join(&mut ws, login).await?;

        let (outbox, mut inbox) = tokio::sync::mpsc::channel::<String>(16);
        let received = Arc::new(AtomicUsize::new(0));
        let counted = received.clone();
        let ns = login.namespace.clone();
        let emits_to = ns.clone();
        let send_prefix = format!("[\"{SEND_EVENT}\"");
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    msg = ws.next() => match msg {
                        Some(Ok(Message::Text(t))) => {
                            if t.as_str() == "2" {
                                if ws.send(Message::text("3")).await.is_err() {
                                    return;
                                }
                            } else if let Some((Some(id), array)) = ack_of(&ns, &t) {
                                if let (Some(calls), Ok(seq)) = (probe.calls.get(), id.parse::<u64>()) {
                                    calls.acked(seq, array);
                                }
                            } else if let Some((ack, array)) = event_packet(&ns, &t) {
                                if array.starts_with("[\"identity-change\"") {
                                    probe.saw(array);
                                } else if array.starts_with(&send_prefix) {
                                    counted.fetch_add(1, Ordering::SeqCst);
                                    probe.saw_send(array);
                                }
                                // Every event asking for an ack gets one (a `POST /send` to a user room, a `batch`).
                                if let Some(id) = ack {
                                    if ws.send(Message::text(ack_packet(&ns, id))).await.is_err() {
                                        return;
                                    }
                                    probe.acked();
                                }
                            }
                        }
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                        Some(Ok(_)) => {}
                    },
                    Some(text) = inbox.recv() => {
                        if ws.send(Message::text(text)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(Self {
            outbox,
            task,
            sid,
            ns: emits_to,
            received,
        })
    }

    /// `POST /send` events this client has received.
    pub fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }

    /// Emits `event` with `arg` asking for ack `seq` (`42/ns,<seq>["event",arg]`) without waiting: `false` when
    /// the client's writer is behind (the call is not sent).
    pub fn try_emit_with_ack(&self, event: &str, seq: u64, arg: &serde_json::Value) -> bool {
        let ns = match self.ns.as_str() {
            "/" => String::new(),
            ns => format!("{ns},"),
        };
        let text = format!("42{ns}{seq}[{},{arg}]", serde_json::Value::from(event));
        self.outbox.try_send(text).is_ok()
    }

    /// Sends `identity-change` naming fan-out round `round` in its namespace: the server relays it to the rest of
    /// the room.
    pub async fn emit_fanout(&self, round: u64) {
        let ns = match self.ns.as_str() {
            "/" => String::new(),
            ns => format!("{ns},"),
        };
        let _ = self
            .outbox
            .send(format!(
                "42{ns}[\"identity-change\",{{\"id_user\":\"fanout-{round}\"}}]"
            ))
            .await;
    }
}

/// A websocket to the node at `addr`, up to the Engine.IO open packet: TCP, TLS, the websocket upgrade of
/// `/socket.io/` with `query` added to the Engine.IO fields.
pub async fn open(
    tls: &TlsConnector,
    addr: SocketAddr,
    query: &[(&'static str, String)],
) -> Result<Ws, ConnectError> {
    let tcp = TcpStream::connect(addr).await.map_err(ConnectError::Tcp)?;
    tcp.set_nodelay(true).map_err(ConnectError::Tcp)?;
    let stream = tls
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .map_err(ConnectError::Tls)?;
    // The serializer is not `Send`: gone before the next await, so a handshake can run in a spawned task.
    let url = {
        let mut fields = form_urlencoded::Serializer::new(String::new());
        fields
            .append_pair("EIO", "4")
            .append_pair("transport", "websocket");
        for (k, v) in query {
            fields.append_pair(k, v);
        }
        format!("wss://{addr}/socket.io/?{}", fields.finish())
    };
    // tungstenite zeroes a whole read buffer (128 KiB by default) before each read: with 10,000 clients that
    // memset was 15% of the machine's CPU during a fan-out (perf), all of it in this load generator.
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await?;
    let open = next_text(&mut ws).await?;
    if !open.starts_with('0') {
        return Err(ConnectError::Protocol(open));
    }
    Ok(ws)
}

/// Sends `login`'s Socket.IO `CONNECT` on `ws` and waits for the answer: the socket id, or the refusal.
pub async fn join(ws: &mut Ws, login: &Login) -> Result<String, ConnectError> {
    ws.send(Message::text(login.connect_packet())).await?;
    loop {
        let text = next_text(ws).await?;
        if let Some(body) = login.strip("40", &text) {
            let v: serde_json::Value =
                serde_json::from_str(body).map_err(|_| ConnectError::Protocol(text.clone()))?;
            if let Some(sid) = v["sid"].as_str() {
                return Ok(sid.to_owned());
            }
            return Err(ConnectError::Protocol(text));
        } else if let Some(body) = login.strip("44", &text) {
            let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
            return Err(ConnectError::Refused(
                v["message"].as_str().unwrap_or(body).to_owned(),
            ));
        } else if text == "2" {
            ws.send(Message::text("3")).await?;
        }
    }
}

/// A client's websocket, over TLS.
pub type Ws = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

pub async fn next_text<S>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
) -> Result<String, ConnectError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Close(frame))) => {
                return Err(ConnectError::Protocol(format!("closed: {frame:?}")));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => return Err(ConnectError::Protocol("connection closed".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_with_and_without_ack_ids() {
        assert_eq!(
            event_packet("/", "42[\"e\",{}]"),
            Some((None, "[\"e\",{}]"))
        );
        assert_eq!(
            event_packet("/", "4217[\"e\"]"),
            Some((Some("17"), "[\"e\"]"))
        );
        assert_eq!(
            event_packet("/ns", "42/ns,3[\"e\",1]"),
            Some((Some("3"), "[\"e\",1]"))
        );
        assert_eq!(event_packet("/ns", "42/other,3[\"e\"]"), None);
        assert_eq!(event_packet("/ns", "43/ns,3[]"), None);
        assert_eq!(
            ack_of("/ns", "43/ns,12[{\"ok\":true}]"),
            Some((Some("12"), "[{\"ok\":true}]"))
        );
    }

    #[test]
    fn acks_name_their_namespace() {
        assert_eq!(ack_packet("/", "17"), "4317[]");
        assert_eq!(ack_packet("/bench-send", "3"), "43/bench-send,3[]");
    }
}
