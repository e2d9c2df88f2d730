//! A loopback TCP proxy for the killed-node phase (`recovery.rs`): the clients know only its address, as they
//! would know a load balancer's, and it relays each new connection to its targets in turn. When the bench kills
//! the node behind it, the relays of that node's connections close, and the clients' reconnections reach the
//! survivors the proxy was pointed at. TCP only: TLS passes through untouched.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    net::{TcpListener, TcpStream},
    task::{JoinHandle, JoinSet},
};

/// How long a relay waits to reach its target before it gives the client up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the accepting task and the bench share.
struct Shared {
    /// Where new connections go, in turn.
    targets: Mutex<Vec<SocketAddr>>,
    next: AtomicUsize,
    /// One task per relayed connection, aborted (both sockets closed) when the proxy is dropped.
    relays: Mutex<JoinSet<()>>,
}

/// A TCP proxy on `127.0.0.1`, its tasks stopped when it is dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// A proxy to `targets` on a free loopback port.
    pub async fn start(targets: Vec<SocketAddr>) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            targets: Mutex::new(targets),
            next: AtomicUsize::new(0),
            relays: Mutex::new(JoinSet::new()),
        });
        let accept = tokio::spawn(accept(listener, shared.clone()));
        Ok(Self {
            addr,
            shared,
            accept,
        })
    }

    /// New connections go to `targets` in turn; those open stay where they are.
    pub fn point_to(&self, targets: Vec<SocketAddr>) {
        *lock(&self.shared.targets) = targets;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        // Dropping the set aborts every relay.
        drop(std::mem::take(&mut *lock(&self.shared.relays)));
    }
}

/// The lock's value even if a holder panicked: the proxy's state stays usable (a list of ports, a task set).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            // Out of descriptors, for instance: the client sees its connection refused and tries again.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let target = {
            let targets = lock(&shared.targets);
            if targets.is_empty() {
                continue;
            }
            targets[shared.next.fetch_add(1, Ordering::Relaxed) % targets.len()]
        };
        let mut relays = lock(&shared.relays);
        // Finished relays' results are dropped as we go, so the set holds live ones only.
        while relays.try_join_next().is_some() {}
        relays.spawn(relay(client, target));
    }
}

/// Relays `client` to `target` until either side closes.
async fn relay(mut client: TcpStream, target: SocketAddr) {
    let _ = client.set_nodelay(true);
    let Ok(Ok(mut server)) =
        tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await
    else {
        return;
    };
    let _ = server.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}
