//! Configuration: one typed struct, parsed once by `main` (every flag has an environment variable) and
//! handed to [`crate::run`]. Defaults work on a laptop from the repository root.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use clap::Parser;

use crate::telemetry::logging::LogFormat;

pub mod file;

#[derive(Debug, Clone, Parser)]
#[command(name = "socket-identity", version, about)]
pub struct Config {
    /// TCP port to listen on.
    #[arg(long, env = "PORT", default_value_t = 5009)]
    pub port: u16,

    /// Address to bind.
    #[arg(long, env = "BIND", default_value = "0.0.0.0")]
    pub bind: IpAddr,

    /// Share the port with other instances on this host (SO_REUSEPORT; the kernel spreads connections). Clients
    /// must then use websocket only (long-polling needs every request of a session on one instance), so the
    /// server refuses long-polling and its page connects by websocket.
    #[arg(long, env = "REUSE_PORT", default_value_t = false)]
    pub reuse_port: bool,

    /// Redis URL: `redis://[user:pass@]host:port[/db]`, or `rediss://…` for TLS. Unset: a single node with an
    /// in-memory adapter. Never logged with its password.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// PEM file of the CA(s) to trust for `rediss://` instead of the system's roots (a private CA).
    #[arg(long, env = "REDIS_CA")]
    pub redis_ca: Option<PathBuf>,

    /// Prefix of every Redis channel this cluster uses; nodes with different prefixes never see each other.
    #[arg(long, env = "REDIS_PREFIX", default_value = "socket-identity")]
    pub redis_prefix: String,

    /// Key of the socket.io Redis emitter protocol (`@socket.io/redis-emitter` and its ports) that every node
    /// of a cluster accepts: broadcasts on `{key}#{namespace}#…`, requests on `{key}-request#{namespace}#`.
    /// Empty: off. Only in a cluster (`REDIS_URL`).
    #[arg(long, env = "EMITTER_KEY", default_value = "socket.io")]
    pub emitter_key: String,

    /// Also publish this cluster's broadcasts in `@socket.io/redis-adapter`'s format on the emitter's channels, so
    /// that Node socket.io servers with that adapter (its `key` = `EMITTER_KEY`) on the same Redis deliver them to
    /// their sockets: a Node cluster migrating one node at a time. Needs `REDIS_URL` and an `EMITTER_KEY`.
    #[arg(long, env = "NODE_ADAPTER_COMPAT", default_value_t = false)]
    pub node_adapter_compat: bool,

    /// This node's id, shown to clients and used in channel names (`A-Z a-z 0-9 - _ .`). Default: a new uuid.
    #[arg(long, env = "NODE_ID")]
    pub node_id: Option<String>,

    /// PEM certificate chain for TLS.
    #[arg(long, env = "TLS_CERT", default_value = "certs-dev/cert.pem")]
    pub tls_cert: PathBuf,

    /// PEM private key for TLS.
    #[arg(long, env = "TLS_KEY", default_value = "certs-dev/key.pem")]
    pub tls_key: PathBuf,

    /// Serve plain HTTP instead of TLS: only behind a proxy that terminates TLS.
    #[arg(long, env = "PLAIN_HTTP", default_value_t = false)]
    pub plain_http: bool,

    /// How long `GET /:room/users` waits for other nodes before answering with what it has.
    #[arg(long, env = "REQUEST_TIMEOUT_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub request_timeout_ms: u64,

    /// How often each node says it is alive. A node silent for 3 intervals is declared down, and room queries
    /// stop waiting for it.
    #[arg(long, env = "HEARTBEAT_MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub heartbeat_ms: u64,

    /// Most sockets this node holds; further handshakes get `connect_error` "this node is full". Unset: 20,000,
    /// or what the open-files limit allows if that is less. Set above what the limit allows, the node does not
    /// start (`crate::net::files`).
    #[arg(long, env = "MAX_SOCKETS", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_sockets: Option<u64>,

    /// New Engine.IO sessions accepted per second on this node (bursts of as many); 0: no limit. Beyond it the
    /// handshake request gets `429`; socket.io clients see `connect_error` and retry.
    #[arg(long, env = "HANDSHAKE_RATE", default_value_t = 1_000)]
    pub handshake_rate: u32,

    /// Socket.IO handshakes being verified (password check, JWT, auth webhook) at once on this node; beyond it
    /// new ones get `connect_error` "too many handshakes being verified". Clients being verified do not count
    /// under `MAX_SOCKETS`: only verified sockets take a place there.
    #[arg(long, env = "MAX_VERIFYING_HANDSHAKES", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_verifying_handshakes: u64,

    /// Largest Engine.IO packet a client may send, in bytes; a bigger one closes its connection.
    #[arg(long, env = "MAX_PAYLOAD_BYTES", default_value_t = 65_536, value_parser = clap::value_parser!(u64).range(1024..=16_777_216))]
    pub max_payload_bytes: u64,

    /// How long a client has, in milliseconds, from its TCP connect to the end of its first request head (TLS
    /// handshake included), and then for each later request head on the connection (idle keep-alive included).
    /// Slower connections are closed.
    #[arg(long, env = "HEADER_READ_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub header_read_timeout_ms: u64,

    /// Most connections waiting for their TLS handshake or first request at once; beyond, the oldest is closed.
    /// Websockets and long-polling requests never count.
    #[arg(long, env = "MAX_PENDING_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_pending_connections: u64,

    /// Browser origins allowed to connect and to read the REST API (comma-separated, e.g.
    /// `https://app.example,https://admin.example`); they get CORS headers, with credentials, on `/socket.io/`
    /// and the REST routes. Empty: Socket.IO from any origin, no CORS header (same-origin only).
    #[arg(long, env = "CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// If set, `GET /{room}/users` and `GET /api/rooms` require `Authorization: Bearer <token>`. Never logged.
    #[arg(long, env = "API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,

    /// Cluster queries (`GET /{room}/users`, `GET /api/rooms`) one client address may ask per second (bursts of
    /// as many); beyond it `429`. 0: no limit. Behind a proxy every client has the proxy's address.
    #[arg(long, env = "QUERY_RATE", default_value_t = 50)]
    pub query_rate: u32,

    /// Failed logins (admin UI, `credentials` namespaces) one client address may have per minute, then one more
    /// every `60 / n` s; beyond, its logins are refused at once without a password check. 0: no limit. Behind a
    /// proxy every client has the proxy's address.
    #[arg(long, env = "LOGIN_FAILURES_PER_MINUTE", default_value_t = 5)]
    pub login_failures_per_minute: u32,

    /// Signs every cluster message (HMAC-SHA256) and refuses those not signed with it: without it, anyone who
    /// can publish on Redis can speak for a node. The same on every node of the cluster, at least 16
    /// characters; give it in the environment rather than on the command line. Never logged.
    #[arg(long, env = "CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<Hidden>,

    /// Tell the room when a socket joins or leaves (`socket-connected`, `socket-disconnected`). Each join costs one
    /// delivery per member, so filling a room of N costs N²/2: turn it off for rooms of many thousands.
    #[arg(long, env = "PRESENCE_EVENTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub presence_events: bool,

    /// The socket.io browser client served at `/socket.io.js` (fetched by `scripts/fetch-client.sh`).
    #[arg(
        long,
        env = "CLIENT_BUNDLE",
        default_value = "deploy/static/socket.io.min.js"
    )]
    pub client_bundle: PathBuf,

    /// The admin UI's static build (`scripts/fetch-admin-ui.sh`), served at `/admin/` when the config file
    /// enables `[admin]`.
    #[arg(long, env = "ADMIN_UI_DIR", default_value = "deploy/static/admin")]
    pub admin_ui_dir: PathBuf,

    /// The config file (TOML) listing the namespaces and how each verifies its clients (docs/configuration.md,
    /// file"). Unset: one namespace `/` where clients say who they are (`auth = "claim"`).
    #[arg(long, env = "CONFIG")]
    pub config: Option<PathBuf>,

    /// Client events a socket may send per second (bursts of as many); beyond it the socket gets a
    /// `rate_limited` event saying why and is disconnected. 0: no limit.
    #[arg(long, env = "SOCKET_EVENT_RATE", default_value_t = 100)]
    pub socket_event_rate: u32,

    /// Client events being sent to RPC backends (`rpc_url`) at once on this node, all namespaces together;
    /// beyond it an event's ack is `{"error": "busy"}` at once. Each socket has at most 8 of them.
    #[arg(long, env = "RPC_MAX_IN_FLIGHT", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rpc_max_in_flight: u32,

    /// Threads running this node's tasks. Unset: one per core. Several nodes on one machine (PM2, systemd
    /// instances) should share its cores, e.g. `1` for as many nodes as cores: with more threads than cores the
    /// nodes' threads take turns and wake each other (4 nodes on 2 cores: 14% more CPU per reliable delivery,
    /// BENCHMARKS.md). `1` runs everything on one thread (`bcrypt`/`argon2` checks still run beside it).
    #[arg(long, env = "WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,

    /// Log lines as `human` text or as `json` objects (one per line). Either way each line names the node;
    /// `RUST_LOG` sets the levels.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

/// The shortest `CLUSTER_SECRET` accepted: a short one could be guessed offline from one captured message.
pub const MIN_CLUSTER_SECRET_BYTES: usize = 16;

/// A setting that must never be printed (`Debug` shows `***`).
#[derive(Clone, PartialEq, Eq)]
pub struct Hidden(String);

impl Hidden {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Hidden {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::str::FromStr for Hidden {
    type Err = std::convert::Infallible;

    /// Never fails: a bad value must be refused later, by a message that does not quote it (clap's would).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl Config {
    /// A config for tests and embedding: loopback, defaults everywhere else.
    pub fn for_tests() -> Self {
        Self::parse_from(["socket-identity", "--bind", "127.0.0.1", "--port", "0"])
    }

    /// This node's id: `NODE_ID`, or a new uuid chosen once and kept.
    pub fn node_id(&mut self) -> &str {
        self.node_id
            .get_or_insert_with(|| uuid::Uuid::new_v4().to_string())
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// `CORS_ORIGINS` without empty entries (`CORS_ORIGINS=` means none).
    pub fn origins(&self) -> Vec<String> {
        self.cors_origins
            .iter()
            .map(|o| o.trim().to_owned())
            .filter(|o| !o.is_empty())
            .collect()
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    /// `CLUSTER_SECRET` when it is set, checked (the cluster signs its messages with it). The error never quotes
    /// it.
    pub fn cluster_secret(&self) -> Result<Option<&[u8]>, String> {
        match &self.cluster_secret {
            None => Ok(None),
            Some(secret) if secret.expose().len() < MIN_CLUSTER_SECRET_BYTES => Err(format!(
                "CLUSTER_SECRET must be at least {MIN_CLUSTER_SECRET_BYTES} bytes long"
            )),
            Some(secret) => Ok(Some(secret.expose().as_bytes())),
        }
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = Config::parse_from(["socket-identity"]);
        assert_eq!(c.port, 5009);
        assert_eq!(c.bind.to_string(), "0.0.0.0");
        assert!(c.redis_url.is_none());
        assert!(!c.plain_http);
        assert_eq!(c.request_timeout(), Duration::from_secs(1));
        assert!(c.presence_events);
        assert_eq!(c.header_read_timeout(), Duration::from_secs(10));
        assert_eq!(c.max_pending_connections, 1024);
        let c = Config::parse_from(["socket-identity", "--presence-events", "false"]);
        assert!(!c.presence_events);
    }

    #[test]
    fn worker_threads_are_one_per_core_unless_set() {
        assert_eq!(Config::parse_from(["x"]).worker_threads, None);
        let c = Config::parse_from(["x", "--worker-threads", "1"]);
        assert_eq!(c.worker_threads, Some(1));
        for bad in ["0", "1025", "many"] {
            let e = Config::try_parse_from(["x", "--worker-threads", bad]).unwrap_err();
            assert!(e.to_string().contains("--worker-threads"), "{e}");
        }
    }

    #[test]
    fn lists_origins() {
        let c = Config::parse_from([
            "x",
            "--cors-origins",
            "https://a.example, https://b.example,",
        ]);
        assert_eq!(c.origins(), ["https://a.example", "https://b.example"]);
        assert!(Config::parse_from(["x"]).origins().is_empty());
    }

    #[test]
    fn the_cluster_secret_is_checked_and_never_shown() {
        assert_eq!(Config::parse_from(["x"]).cluster_secret(), Ok(None));
        let c = Config::parse_from(["x", "--cluster-secret", "0123456789abcdef"]);
        assert_eq!(c.cluster_secret(), Ok(Some(b"0123456789abcdef".as_slice())));
        assert!(!format!("{c:?}").contains("0123456789abcdef"));
        let c = Config::parse_from(["x", "--cluster-secret", "short-secret"]);
        let err = c.cluster_secret().unwrap_err();
        assert_eq!(err, "CLUSTER_SECRET must be at least 16 bytes long");
        let c = Config::parse_from(["x", "--cluster-secret", ""]);
        assert!(
            c.cluster_secret().is_err(),
            "an empty secret is refused, not ignored"
        );
    }

    #[test]
    fn rejects_zero_timeout() {
        assert!(Config::try_parse_from(["x", "--request-timeout-ms", "0"]).is_err());
        assert!(Config::try_parse_from(["x", "--header-read-timeout-ms", "0"]).is_err());
        assert!(Config::try_parse_from(["x", "--max-pending-connections", "0"]).is_err());
    }

    /// The example environment file documents every setting.
    #[test]
    fn env_example_names_every_variable() {
        use clap::CommandFactory;
        let example = include_str!("../../deploy/socket-identity.env.example");
        for arg in Config::command().get_arguments() {
            let Some(env) = arg.get_env() else { continue };
            let env = env.to_str().unwrap();
            assert!(
                example
                    .lines()
                    .any(|l| l.trim_start_matches('#').starts_with(&format!("{env}="))),
                "{env} is missing from deploy/socket-identity.env.example"
            );
        }
    }

    #[test]
    fn clap_definition_is_valid() {
        use clap::CommandFactory;
        Config::command().debug_assert();
    }
}
