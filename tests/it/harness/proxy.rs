//! A loopback TCP proxy the test controls, between clients and a server (a node, Redis): it cuts every connection
//! at once (a network failure, not a goodbye), sends new connections elsewhere (a load balancer moving a client to
//! another node), and refuses new ones or lets only so many through (a client kept away, a server half reachable).
//!
//! TCP only, so TLS passes through untouched. Its tasks are aborted when it is dropped.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU16, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    net::{TcpListener, TcpStream},
    task::{JoinHandle, JoinSet},
};

use super::free_port;

/// What the accepting task and the test share.
struct Shared {
    /// Where new connections go.
    target: AtomicU16,
    /// At most this many relayed connections at a time; a new one beyond is accepted and closed at once.
    /// `usize::MAX`: no cap, `0`: every new one refused.
    cap: AtomicUsize,
    /// Connections being relayed now (a relay counts until both of its sockets are closed).
    open: AtomicUsize,
    /// The relays, one task per connection: aborting one drops (closes) both of its sockets.
    relays: Mutex<JoinSet<()>>,
}

/// A TCP proxy on `127.0.0.1:{port}` to `127.0.0.1:{target}`.
pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

/// How long a relay waits to reach the target before it gives the client up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl Proxy {
    /// A proxy to `target_port`, listening on a free port of this run.
    pub async fn start(target_port: u16) -> Self {
        let listener = bind().await;
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            target: AtomicU16::new(target_port),
            cap: AtomicUsize::new(usize::MAX),
            open: AtomicUsize::new(0),
            relays: Mutex::new(JoinSet::new()),
        });
        let accept = tokio::spawn(accept(listener, shared.clone()));
        Self {
            port,
            shared,
            accept,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Closes every connection it relays now, client and server side, and returns once they are closed.
    pub async fn cut(&self) {
        let mut relays = std::mem::take(&mut *self.shared.relays.lock().unwrap());
        relays.abort_all();
        while tokio::time::timeout(Duration::from_secs(5), relays.join_next())
            .await
            .expect("relays stop within 5 s after their abort")
            .is_some()
        {}
    }

    /// New connections go to `port` (those open stay where they are).
    pub fn point_to(&self, port: u16) {
        self.shared.target.store(port, Ordering::SeqCst);
    }

    /// While on, every new connection is accepted and closed at once: a client trying to come back stays away.
    pub fn refuse(&self, on: bool) {
        self.cap(if on { Some(0) } else { None });
    }

    /// Lets at most `n` connections through at a time (`None`: any number); a new one beyond is accepted and
    /// closed at once, which its client sees as the server going away.
    pub fn cap(&self, n: Option<usize>) {
        self.shared
            .cap
            .store(n.unwrap_or(usize::MAX), Ordering::SeqCst);
    }

    /// Connections relayed now.
    pub fn open(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        // Dropping the set aborts every relay.
        drop(std::mem::take(&mut *self.shared.relays.lock().unwrap()));
    }
}

/// A listener on a port of this run (another process may hold the first one found free: then another).
async fn bind() -> TcpListener {
    let mut last = None;
    for _ in 0..10 {
        match TcpListener::bind(("127.0.0.1", free_port())).await {
            Ok(listener) => return listener,
            Err(e) => last = Some(e),
        }
    }
    panic!("no port for the proxy: {last:?}");
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    while let Ok((client, _)) = listener.accept().await {
        let _ = client.set_nodelay(true);
        if shared.open.load(Ordering::SeqCst) >= shared.cap.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        // Counted from here, so a burst of connections cannot all pass the cap.
        let guard = Open::new(&shared);
        let target = shared.target.load(Ordering::SeqCst);
        let mut relays = shared.relays.lock().unwrap();
        // Finished relays' results are dropped as we go, so the set holds live ones only.
        while relays.try_join_next().is_some() {}
        relays.spawn(relay(client, target, guard));
    }
}

/// Relays `client` to `target` until either side closes.
async fn relay(mut client: TcpStream, target: u16, _open: Open) {
    let server =
        tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(("127.0.0.1", target))).await;
    let Ok(Ok(mut server)) = server else {
        return;
    };
    let _ = server.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}

/// One relayed connection, counted in [`Shared::open`] while it lives (an aborted relay drops it too).
struct Open(Arc<Shared>);

impl Open {
    fn new(shared: &Arc<Shared>) -> Self {
        shared.open.fetch_add(1, Ordering::SeqCst);
        Self(shared.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
        sync::mpsc,
    };

    use super::*;

    /// An echo server that greets each connection with `name`, and reports each connection it saw closed.
    async fn echo(name: u8) -> (u16, mpsc::UnboundedReceiver<()>) {
        let listener = bind().await;
        let port = listener.local_addr().unwrap().port();
        let (closed, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let closed = closed.clone();
                tokio::spawn(async move {
                    let _ = s.write_all(&[name]).await;
                    let mut buf = [0u8; 64];
                    while let Ok(n @ 1..) = s.read(&mut buf).await {
                        if s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = closed.send(());
                });
            }
        });
        (port, rx)
    }

    /// Connects through the proxy: the greeting, or `None` if the connection was closed at once.
    async fn greeting(proxy: &Proxy) -> (TcpStream, Option<u8>) {
        let mut s = TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .unwrap();
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .expect("an answer or a close within 5 s");
        (s, matches!(n, Ok(1)).then_some(b[0]))
    }

    /// Reads from `s` until it is closed (bounded): what came before the close.
    async fn until_closed(s: &mut TcpStream) -> Vec<u8> {
        let mut all = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut all))
            .await
            .expect("closed within 5 s")
            .ok();
        all
    }

    #[tokio::test]
    async fn the_proxy_relays_cuts_refuses_caps_and_moves_connections() {
        let (a, mut a_closed) = echo(b'a').await;
        let (b, _b_closed) = echo(b'b').await;
        let proxy = Proxy::start(a).await;

        // Relays both ways.
        let (mut one, hello) = greeting(&proxy).await;
        assert_eq!(hello, Some(b'a'));
        one.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), one.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"ping");
        let (mut two, _) = greeting(&proxy).await;
        assert_eq!(proxy.open(), 2);

        // A cut closes every connection, on both sides, by the time it returns.
        proxy.cut().await;
        assert_eq!(proxy.open(), 0);
        assert!(until_closed(&mut one).await.is_empty());
        assert!(until_closed(&mut two).await.is_empty());
        for _ in 0..2 {
            tokio::time::timeout(Duration::from_secs(5), a_closed.recv())
                .await
                .expect("the server saw its side closed");
        }

        // Refused: accepted and closed at once, the server never reached; then let through again.
        proxy.refuse(true);
        for _ in 0..3 {
            assert_eq!(greeting(&proxy).await.1, None);
        }
        proxy.refuse(false);
        let (_three, hello) = greeting(&proxy).await;
        assert_eq!(hello, Some(b'a'));

        // Moved: new connections go to b, the open one stays on a.
        proxy.point_to(b);
        let (four, hello) = greeting(&proxy).await;
        assert_eq!(hello, Some(b'b'));
        assert_eq!(proxy.open(), 2);

        // Capped at 2 open: a third is closed at once; one closed, a new one goes through.
        proxy.cap(Some(2));
        assert_eq!(greeting(&proxy).await.1, None);
        drop(four);
        tokio::time::timeout(Duration::from_secs(5), async {
            while proxy.open() > 1 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the closed connection's relay ends");
        assert_eq!(greeting(&proxy).await.1, Some(b'b'));

        // Dropped: its connections are closed and its port no longer accepts.
        proxy.cap(None);
        let (mut five, hello) = greeting(&proxy).await;
        assert_eq!(hello, Some(b'b'));
        let port = proxy.port();
        drop(proxy);
        assert!(until_closed(&mut five).await.is_empty());
        let refused = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if TcpStream::connect(("127.0.0.1", port)).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(refused.is_ok(), "port {port} still accepts");
    }
}
