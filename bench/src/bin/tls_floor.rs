//! The floor under the fan-out's server CPU on this machine: the fan-out's websocket frame written as one TLS
//! record to each of `--sockets` sockets by plain tokio and rustls (the server's stack, same provider), with
//! nothing of Socket.IO, Engine.IO, rooms or channels. Each of `--servers` threads (a node) owns its share of the
//! sockets on a current-thread runtime and writes and flushes them one after the other; the clients, on their
//! own runtime, read each frame. The servers' CPU per round is their threads' run time (`schedstat`), which, as
//! for the real nodes, includes the loopback's receiving side the kernel runs in the sender's context.
//!
//! ```sh
//! cargo build --release -p bench --bin tls-floor && target/release/tls-floor   # from the repository root
//! target/release/tls-floor --layers split   # the same frames through a websocket's sending half
//! ```
//!
//! BENCHMARKS.md ("Fan-out CPU per delivered message: where the floor is") compares it with the fan-out phase.

use std::{
    path::PathBuf,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{Notify, mpsc},
};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Error as WsError, Message, Utf8Bytes, protocol::Role},
};

#[derive(Parser)]
#[command(
    about = "One TLS record per socket, by tokio and rustls alone: the fan-out's floor on this machine"
)]
struct Args {
    /// Sockets written to per round, spread over the servers.
    #[arg(long, default_value_t = 10_000)]
    sockets: usize,
    /// Server threads, each with its own runtime and share of the sockets (the fan-out phase's nodes).
    #[arg(long, default_value_t = 4)]
    servers: usize,
    /// Rounds, one frame per socket each (at most 99: the frame's length stays the same).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..100))]
    rounds: u64,
    /// Write the sockets in a shuffled order rather than the order they were accepted (allocated) in, as a
    /// room's hash set of socket ids does.
    #[arg(long)]
    shuffled: bool,
    /// Print each round's time to the last socket and the servers' CPU it took (the first rounds cost more:
    /// the kernel's TCP state of each connection warms up).
    #[arg(long)]
    per_round: bool,
    /// What the servers write each frame through, to measure what a layer of the server's own stack costs on
    /// top of the floor.
    #[arg(long, value_enum, default_value_t = Layers::Tls)]
    layers: Layers,
    /// Where `cert.pem`, `key.pem` and `ca.pem` are.
    #[arg(long, default_value = "certs-dev")]
    certs: PathBuf,
    /// Internal: run as the clients' process, connecting `--sockets` / servers sockets to each of these addresses
    /// (a process of its own: both ends in one would need twice the open-files limit).
    #[arg(long, hide = true, value_delimiter = ',')]
    clients: Vec<std::net::SocketAddr>,
}

/// What a server writes through ([`Args::layers`]); each is the one before with one more layer of the server's
/// stack. The bytes on the wire are the same: one unmasked text frame in one TLS record.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Layers {
    /// The frame's bytes written to the TLS stream and flushed.
    Tls,
    /// A websocket over the TLS stream (tokio-tungstenite, as the server's engine uses): `Sink::send` of a text
    /// message.
    Ws,
    /// The websocket's sending half (`SplitSink`, the `BiLock` it shares with the reading half).
    Split,
    /// The websocket over a boxed stream (`dyn AsyncRead + AsyncWrite`, as hyper's upgraded connection holds its
    /// stream) and its sending half boxed as a `dyn Sink` (as engineioxide holds it).
    Boxed,
}

/// The frame the fan-out phase's nodes send each socket per round: the relayed `identity-change`, as a websocket
/// text frame (server frames are not masked).
fn frame(round: u64) -> Vec<u8> {
    let payload = format!("42[\"identity-change\",{{\"id_user\":\"fanout-{round:02}\"}}]");
    let mut frame = vec![0x81, u8::try_from(payload.len()).expect("a short frame")];
    frame.extend_from_slice(payload.as_bytes());
    frame
}

/// This thread's id, for [`run_time`].
fn thread_id() -> String {
    let link = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
    link.to_string_lossy()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned()
}

/// A thread's CPU time so far, to the nanosecond (`/proc/self/task/<tid>/schedstat`).
fn run_time(tid: &str) -> Duration {
    let stat =
        std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).unwrap_or_default();
    Duration::from_nanos(
        stat.split_whitespace()
            .next()
            .and_then(|ns| ns.parse().ok())
            .unwrap_or(0),
    )
}

/// One server thread: accepts `sockets` TLS connections, then writes each round's frame to all of them.
struct Server {
    addr: std::net::SocketAddr,
    tid: String,
    rounds: mpsc::UnboundedSender<Vec<u8>>,
}

/// A boxed connection, as hyper's upgraded one.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send> Io for T {}

/// Each round's frame as a text message to every sink, one after the other (send: ready, start, flush).
async fn send_rounds<S>(mut sinks: Vec<S>, mut rounds: mpsc::UnboundedReceiver<Vec<u8>>)
where
    S: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    while let Some(frame) = rounds.recv().await {
        let text = std::str::from_utf8(&frame[2..])
            .expect("a text frame")
            .to_owned();
        let text = Utf8Bytes::from(text);
        for sink in &mut sinks {
            sink.send(Message::Text(text.clone())).await.expect("send");
        }
    }
}

fn start_server(
    acceptor: TlsAcceptor,
    sockets: usize,
    shuffled: bool,
    layers: Layers,
) -> anyhow::Result<Server> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (rounds, mut rounds_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
            let addr = listener.local_addr().expect("its address");
            ready_tx.send((addr, thread_id())).unwrap();
            let mut streams = Vec::with_capacity(sockets);
            while streams.len() < sockets {
                let (tcp, _) = listener.accept().await.expect("accept");
                tcp.set_nodelay(true).expect("nodelay");
                streams.push(acceptor.accept(tcp).await.expect("a TLS handshake"));
            }
            if shuffled {
                // Fisher-Yates with a fixed linear congruential sequence: the same order every round.
                let mut x: u64 = 0x2545_f491_4f6c_dd1d;
                for i in (1..streams.len()).rev() {
                    x = x
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    streams.swap(i, (x >> 33) as usize % (i + 1));
                }
            }
            match layers {
                Layers::Tls => {
                    while let Some(frame) = rounds_rx.recv().await {
                        for stream in &mut streams {
                            stream.write_all(&frame).await.expect("write");
                            stream.flush().await.expect("flush");
                        }
                    }
                }
                Layers::Ws => {
                    let mut sinks = Vec::with_capacity(streams.len());
                    for stream in streams {
                        sinks.push(
                            WebSocketStream::from_raw_socket(stream, Role::Server, None).await,
                        );
                    }
                    send_rounds(sinks, rounds_rx).await;
                }
                Layers::Split => {
                    let mut halves = Vec::with_capacity(streams.len());
                    for stream in streams {
                        halves.push(
                            WebSocketStream::from_raw_socket(stream, Role::Server, None)
                                .await
                                .split(),
                        );
                    }
                    // The reading halves stay alive (unread), as the engine's reader holds its half.
                    let (sinks, _streams): (Vec<_>, Vec<_>) = halves.into_iter().unzip();
                    send_rounds(sinks, rounds_rx).await;
                }
                Layers::Boxed => {
                    let mut halves = Vec::with_capacity(streams.len());
                    for stream in streams {
                        let io: Pin<Box<dyn Io>> = Box::pin(stream);
                        let (sink, stream) =
                            WebSocketStream::from_raw_socket(io, Role::Server, None)
                                .await
                                .split();
                        let sink: Pin<
                            Box<dyn futures_util::Sink<Message, Error = WsError> + Send>,
                        > = Box::pin(sink);
                        halves.push((sink, stream));
                    }
                    let (sinks, _streams): (Vec<_>, Vec<_>) = halves.into_iter().unzip();
                    send_rounds(sinks, rounds_rx).await;
                }
            }
        });
    });
    let (addr, tid) = ready_rx.recv()?;
    Ok(Server { addr, tid, rounds })
}

fn tls(certs: &std::path::Path) -> anyhow::Result<(TlsAcceptor, TlsConnector)> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = CertificateDer::pem_file_iter(certs.join("cert.pem"))
        .context("cert.pem (run from the repository root)")?
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(certs.join("key.pem"))?;
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(certs.join("ca.pem"))? {
        roots.add(cert?)?;
    }
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((
        TlsAcceptor::from(Arc::new(server)),
        TlsConnector::from(Arc::new(client)),
    ))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.servers > 0 && args.sockets >= args.servers,
        "sockets >= servers > 0"
    );
    let (acceptor, connector) = tls(&args.certs)?;
    let per = args.sockets / args.servers;
    if !args.clients.is_empty() {
        return clients(connector, &args.clients, per);
    }
    let servers = (0..args.servers)
        .map(|_| start_server(acceptor.clone(), per, args.shuffled, args.layers))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let sockets = per * args.servers;
    let addrs: Vec<String> = servers.iter().map(|s| s.addr.to_string()).collect();
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["--sockets", &args.sockets.to_string()])
        .args(["--servers", &args.servers.to_string()])
        .arg("--certs")
        .arg(&args.certs)
        .args(["--clients", &addrs.join(",")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut lines =
        std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().expect("piped")));
    let mut next = move || -> anyhow::Result<String> {
        Ok(lines.next().context("the clients' process ended")??)
    };
    anyhow::ensure!(next()? == "ready", "the clients did not connect");

    let cpu = || servers.iter().map(|s| run_time(&s.tid)).sum::<Duration>();
    let before = cpu();
    let mut times = Vec::new();
    for round in 1..=args.rounds {
        let started = Instant::now();
        let cpu_before = cpu();
        for server in &servers {
            server.rounds.send(frame(round))?;
        }
        anyhow::ensure!(next()? == round.to_string(), "round {round} out of step");
        times.push(started.elapsed());
        if args.per_round {
            println!(
                "  round {round}: last socket {:.1} ms, servers' CPU {:.1} ms",
                started.elapsed().as_secs_f64() * 1e3,
                (cpu() - cpu_before).as_secs_f64() * 1e3
            );
        }
    }
    let per_round = (cpu() - before).as_secs_f64() * 1e3 / args.rounds as f64;
    let _ = child.kill();
    let _ = child.wait();
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "tls floor ({}): {sockets} sockets on {} server threads, {} rounds: last socket p50 {:.2} ms max {:.2} ms; \
         servers' CPU per round {per_round:.1} ms ({:.2} µs per socket)",
        args.layers
            .to_possible_value()
            .map_or(String::new(), |v| v.get_name().to_owned()),
        args.servers,
        args.rounds,
        ms(times[times.len() / 2]),
        ms(times[times.len() - 1]),
        per_round * 1e3 / sockets as f64,
    );
    Ok(())
}

/// The clients' process: `per` TLS connections to each server, each reading its frames; prints `ready` once all
/// are connected, then the number of each round once every socket has read its frame.
fn clients(
    connector: TlsConnector,
    addrs: &[std::net::SocketAddr],
    per: usize,
) -> anyhow::Result<()> {
    let sockets = per * addrs.len();
    let frame_len = frame(1).len();
    // Ends with the servers' process, whatever happens to it: its end of our stdin closes.
    std::thread::spawn(|| {
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
        std::process::exit(0);
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let received = Arc::new(AtomicUsize::new(0));
        let all = Arc::new(Notify::new());
        for (i, addr) in addrs.iter().enumerate() {
            for _ in 0..per {
                let tcp = TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                let mut stream = connector
                    .connect(ServerName::IpAddress(addr.ip().into()), tcp)
                    .await
                    .with_context(|| format!("a TLS connection to server {i}"))?;
                let (received, all) = (received.clone(), all.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0; frame_len];
                    while stream.read_exact(&mut buf).await.is_ok() {
                        if received.fetch_add(1, Ordering::AcqRel) + 1 == sockets {
                            received.store(0, Ordering::Release);
                            all.notify_one();
                        }
                    }
                });
            }
        }
        use std::io::Write;
        let mut out = std::io::stdout();
        writeln!(out, "ready")?;
        out.flush()?;
        for round in 1u64.. {
            all.notified().await;
            writeln!(out, "{round}")?;
            out.flush()?;
        }
        anyhow::Ok(())
    })
}
