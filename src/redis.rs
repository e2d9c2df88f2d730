//! Building fred clients the way this cluster needs them.
//!
//! Three traps handled here (see `STACK-NOTES.md`): fred ignores `?protocol=resp3` so RESP3 is set by hand
//! (the socketioxide-redis adapter publishes on subscribed connections); fred reconnects only with a policy; and
//! after a reconnect nobody re-subscribes the sharded channels of the adapter, so [`Subscriber::new`] starts a
//! task that restores every tracked channel on each reconnect.

use std::{path::Path, time::Duration};

use fred::{
    clients::{Client, SubscriberClient},
    prelude::{ClientLike, EventInterface, PubsubInterface, ReconnectPolicy},
    types::{Builder, RespVersion, config::Config as RedisConfig},
};

/// Redis failed at start-up. Display never contains the URL's password.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("invalid REDIS_URL {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot read REDIS_CA {path}: {reason}")]
    Ca { path: String, reason: String },
    #[error("cannot connect to Redis at {url}: {source}")]
    Connect {
        url: String,
        source: fred::error::Error,
        /// Whether trying again later may succeed ([`Failure::of`]).
        failure: Failure,
    },
}

/// Why Redis could not be reached, as far as start-up cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Refused or dropped connections and timeouts: Redis may be starting, or overloaded; worth another try.
    Unreachable,
    /// A bad URL, wrong credentials, a certificate refused, a server that errs: they need a person.
    Refused,
}

impl Failure {
    /// fred keeps only the text of the I/O error under its `IO` kind; rustls reports a refused certificate as an
    /// `InvalidData` I/O error, so that text is the one place the difference can be told.
    pub fn of(e: &fred::error::Error) -> Self {
        use fred::error::ErrorKind;
        match e.kind() {
            ErrorKind::IO if !e.details().contains("InvalidData") => Self::Unreachable,
            ErrorKind::Timeout | ErrorKind::Canceled => Self::Unreachable,
            _ => Self::Refused,
        }
    }
}

/// Makes a URL printable: the password, if any, becomes `***`. A string that does not parse as a URL with a host
/// (it is shown in the error refusing it) loses everything before its last `@`, which may hold a password.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.has_host() => {
            if parsed.password().is_some() {
                // Cannot fail on a URL with a host.
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        _ => match (url.split_once("://"), url.rsplit_once('@')) {
            (Some((scheme, _)), Some((_, host))) => format!("{scheme}://***@{host}"),
            (None, Some((_, host))) => format!("***@{host}"),
            (_, None) => url.to_owned(),
        },
    }
}

/// Where Redis is and how to reach it, checked once at start-up so a bad URL fails at once rather than being
/// retried. Holds the password: never log it, log [`Endpoint::redacted`].
#[derive(Clone)]
pub struct Endpoint {
    url: String,
    config: RedisConfig,
}

impl Endpoint {
    /// `redis://` or `rediss://` (TLS) for one Redis; `redis-cluster://` or `rediss-cluster://` for a Redis
    /// Cluster (fred's form: one node in the host part, more as `?node=host:port`; the others are discovered).
    /// TLS trusts the system's roots (and `SSL_CERT_FILE`), or only the PEM certificates in `ca_file` when it is
    /// given (a private CA).
    pub fn parse(url: &str, ca_file: Option<&Path>) -> Result<Self, RedisError> {
        let bad = |reason: String| RedisError::Url {
            url: redact(url),
            reason,
        };
        let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
        let (tls, cluster) = match scheme {
            "redis" => (false, false),
            "rediss" => (true, false),
            "redis-cluster" => (false, true),
            "rediss-cluster" => (true, true),
            _ => {
                return Err(bad("the URL must start with redis://, rediss:// (TLS), \
                     redis-cluster:// or rediss-cluster:// (a Redis Cluster)"
                    .into()));
            }
        };
        if cluster
            && let Ok(parsed) = url::Url::parse(url)
            && !matches!(parsed.path(), "" | "/" | "/0")
        {
            return Err(bad(
                "a Redis Cluster has only database 0: remove the path".into()
            ));
        }
        if ca_file.is_some() && !tls {
            return Err(bad(
                "REDIS_CA is set but the URL is not rediss:// or rediss-cluster://".into(),
            ));
        }
        // fred builds its default TLS client from the process-wide rustls provider: name ours.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut config = RedisConfig::from_url(url).map_err(|e| bad(e.to_string()))?;
        config.version = RespVersion::RESP3;
        if let Some(ca_file) = ca_file {
            config.tls = Some(trusting(ca_file).map_err(|reason| RedisError::Ca {
                path: ca_file.display().to_string(),
                reason,
            })?);
        }
        debug_assert_eq!(config.server.is_clustered(), cluster);
        Ok(Self {
            url: url.to_owned(),
            config,
        })
    }

    /// Whether this is a Redis Cluster: then a command's keys must share a hash slot, and pub/sub is sharded.
    pub fn is_cluster(&self) -> bool {
        self.config.server.is_clustered()
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact(&self.url)
    }

    pub fn is_tls(&self) -> bool {
        self.config.tls.is_some()
    }
}

/// A TLS client configuration that trusts only the certificates in `ca_file`.
fn trusting(ca_file: &Path) -> Result<fred::types::config::TlsConfig, String> {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).map_err(|e| e.to_string())? {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    if roots.is_empty() {
        return Err("no certificate in the file".into());
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(fred::types::config::TlsConnector::from(config).into())
}

/// Pub/sub messages reach a subscriber's readers (the adapter's and ours) through fred's broadcast rings, allocated
/// up front; fred's default (32) drops messages under a burst of broadcasts.
const SUBSCRIBER_RING: usize = 8_192;

/// `ring`: the capacity of the client's event rings (`None`: fred's default). fred gives every client nine rings, so a
/// subscriber's 8,192 slots on a command client (which gets no messages) cost ~5.6 MB of memory for nothing: a node's
/// RSS at start went from 52.5 to 41.3 MiB (the bench's memory phase) once its command clients kept fred's default.
fn builder(endpoint: &Endpoint, command_timeout: Duration, ring: Option<usize>) -> Builder {
    let config = endpoint.config.clone();
    let mut builder = Builder::from_config(config);
    builder
        // Retry for ever, 100 ms to 2 s apart: a node outlives a Redis restart.
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
        .with_performance_config(|p| {
            // A command sent while Redis is away waits at most this long, never for ever.
            p.default_command_timeout = command_timeout;
            if let Some(ring) = ring {
                p.broadcast_channel_capacity = ring;
            }
        })
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(5);
            // fred leaves Nagle's algorithm on: the tail of a large write (a node's reply to a room query, ~175 KB
            // at 2,500 sockets) could then wait for Redis's delayed ACK. node-redis (the Node reference's client)
            // sets TCP_NODELAY by default; our writes are whole commands.
            c.tcp.nodelay = Some(true);
        });
    builder
}

/// A client for plain commands (`PUBLISH`).
pub async fn connect_client(
    endpoint: &Endpoint,
    command_timeout: Duration,
) -> Result<Client, RedisError> {
    let client = builder(endpoint, command_timeout, None)
        .build()
        .map_err(|source| connect_err(endpoint, source))?;
    client
        .init()
        .await
        .map_err(|source| connect_err(endpoint, source))?;
    Ok(client)
}

/// A subscriber client (RESP3) whose channels, plain and sharded, are restored after every reconnect.
pub struct Subscriber {
    pub client: SubscriberClient,
    /// The task that re-subscribes after reconnects; it holds a client handle, so it is stopped by [`Self::close`].
    restorer: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    /// Not yet connected: the socketioxide-redis adapter calls `init` itself; other callers call [`init`].
    pub fn new(endpoint: &Endpoint, command_timeout: Duration) -> Result<Self, RedisError> {
        let client = builder(endpoint, command_timeout, Some(SUBSCRIBER_RING))
            .build_subscriber_client()
            .map_err(|source| connect_err(endpoint, source))?;
        let restorer = tokio::spawn(resubscribe(client.clone(), endpoint.is_cluster()));
        Ok(Self { client, restorer })
    }

    /// Stops re-subscribing and closes the connection, so Redis stops counting this node at once.
    pub async fn close(&self) {
        self.restorer.abort();
        let _ = self.client.quit().await;
    }
}

impl Drop for Subscriber {
    /// Also when start-up gives up on this client, so a retry does not leave a restorer behind.
    fn drop(&mut self) {
        self.restorer.abort();
    }
}

pub async fn init(client: &SubscriberClient, endpoint: &Endpoint) -> Result<(), RedisError> {
    client
        .init()
        .await
        .map(drop)
        .map_err(|source| connect_err(endpoint, source))
}

pub fn connect_err(endpoint: &Endpoint, source: fred::error::Error) -> RedisError {
    RedisError::Connect {
        url: endpoint.redacted(),
        failure: Failure::of(&source),
        source,
    }
}

/// How many subscribers each of `channels` (sharded channels) has, by name. In a Redis Cluster a channel's count
/// is known only to the shard of its hash slot, so each channel is asked on its own (all at once); one Redis is
/// asked about all of them in one command.
pub async fn shard_subscribers(
    client: &Client,
    channels: &[String],
) -> Result<std::collections::HashMap<String, u64>, String> {
    use fred::{interfaces::PubsubInterface, types::Value};
    let ask = |channels: Vec<String>| async move {
        let reply: Value = client
            .pubsub_shardnumsub(channels)
            .await
            .map_err(|e| format!("redis: {e}"))?;
        numsub_counts(reply)
    };
    if !client.is_clustered() {
        return ask(channels.to_vec()).await;
    }
    let replies =
        futures_util::future::join_all(channels.iter().map(|c| ask(vec![c.clone()]))).await;
    let mut counts = std::collections::HashMap::with_capacity(channels.len());
    for reply in replies {
        counts.extend(reply?);
    }
    Ok(counts)
}

/// Subscriber counts by channel name from a `PUBSUB NUMSUB`/`SHARDNUMSUB` reply: a flat `[channel, count, ...]`
/// array (RESP2, and Redis 7.0 in RESP3) or a map (fred's map is a hash map: positions mean nothing there).
/// Callers look the channels they asked about up by name; a malformed reply is an error.
pub fn numsub_counts(
    reply: fred::types::Value,
) -> Result<std::collections::HashMap<String, u64>, String> {
    use fred::types::Value;
    let bad = || "unexpected PUBSUB NUMSUB reply".to_owned();
    let entry = |name: Option<String>, count: &Value| Some((name?, count.as_u64()?));
    match reply {
        Value::Map(map) => map
            .inner()
            .into_iter()
            .map(|(name, count)| entry(name.into_string(), &count).ok_or_else(bad))
            .collect(),
        Value::Array(items) if items.len() % 2 == 0 => items
            .chunks(2)
            .map(|pair| entry(pair[0].as_string(), &pair[1]).ok_or_else(bad))
            .collect(),
        _ => Err(bad()),
    }
}

/// How often a node subscribed to a Redis Cluster subscribes its shard channels again (see [`resubscribe`]).
const SHARD_RESUBSCRIBE: Duration = Duration::from_secs(1);
/// How soon it tries again when that failed (the cluster's nodes disagree for a moment while a slot moves).
const SHARD_RESUBSCRIBE_RETRY: Duration = Duration::from_millis(200);

/// Restores subscriptions after every reconnect: fred's own `manage_subscriptions` sends an empty `SUBSCRIBE`
/// first when only shard channels are tracked, Redis refuses it, and the shard channels are never restored; so we
/// restore each kind (channels, patterns, shard channels) only when non-empty.
///
/// In a Redis Cluster, also every [`SHARD_RESUBSCRIBE`]: when a slot moves to another shard (resharding, or a
/// failover seen by a master that comes back), Redis unsubscribes that slot's shard channels with a push message
/// that fred drops, and no reconnect happens. `SSUBSCRIBE` of a channel already subscribed changes nothing; one
/// whose slot moved is answered `MOVED`, which sends fred to the new owner.
async fn resubscribe(client: SubscriberClient, cluster: bool) {
    let mut reconnects = client.reconnect_rx();
    let mut wait = SHARD_RESUBSCRIBE;
    loop {
        let reconnected = tokio::select! {
            r = reconnects.recv() => match r {
                Ok(_) => true,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            () = tokio::time::sleep(wait), if cluster => false,
        };
        let channels: Vec<_> = client.tracked_channels().into_iter().collect();
        let patterns: Vec<_> = client.tracked_patterns().into_iter().collect();
        let shards: Vec<_> = client.tracked_shard_channels().into_iter().collect();
        if reconnected {
            tracing::info!(
                channels = channels.len(),
                shard_channels = shards.len(),
                "connected to Redis, restoring subscriptions"
            );
            if !channels.is_empty()
                && let Err(e) = client.subscribe(channels).await
            {
                tracing::error!(error = %e, "re-subscribing after a Redis reconnect failed");
            }
            if !patterns.is_empty()
                && let Err(e) = client.psubscribe(patterns).await
            {
                tracing::error!(error = %e, "re-subscribing patterns after a Redis reconnect failed");
            }
        }
        // One command per shard channel: they may live in different hash slots.
        wait = SHARD_RESUBSCRIBE;
        for chan in shards {
            // Let go of meanwhile (a dynamic namespace removed while this loop waited for Redis): subscribing it
            // again would bring back what nobody listens to, for good. Checked right before each command, so only
            // an unsubscription still in flight at that instant can slip through.
            if !reconnected && !client.tracked_shard_channels().contains(&chan) {
                continue;
            }
            if let Err(e) = client.ssubscribe(chan.clone()).await {
                wait = SHARD_RESUBSCRIBE_RETRY;
                match reconnected {
                    true => {
                        tracing::error!(error = %e, channel = %chan, "re-subscribing after a Redis reconnect failed")
                    }
                    false => {
                        tracing::debug!(error = %e, channel = %chan, "shard channel not subscribed again")
                    }
                }
            }
        }
    }
}

/// An unexpected reply as an error shows it: at most 200 characters of it.
pub fn shown(reply: &fred::types::Value) -> String {
    let mut reply = format!("{reply:?}");
    if reply.len() > 200 {
        let cut = (0..=200)
            .rev()
            .find(|&i| reply.is_char_boundary(i))
            .unwrap_or(0);
        reply.truncate(cut);
        reply.push('…');
    }
    reply
}

/// The part of a key Redis Cluster hashes to find its slot: between the first `{` and the next `}`, when not
/// empty; else the whole key. Keys that must be in one script share it.
pub fn hash_tag(key: &str) -> &str {
    key.find('{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.find('}')
                .filter(|&close| close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key)
}

/// A Lua script run by its SHA-1 (`EVALSHA`), with its text at hand for when Redis does not have it cached.
pub struct Script {
    pub name: &'static str,
    pub body: &'static str,
    pub sha: String,
}

impl Script {
    pub fn new(name: &'static str, body: &'static str) -> Self {
        use sha1::Digest;
        let sha = sha1::Sha1::digest(body.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Self { name, body, sha }
    }

    /// Runs it on `keys`: `EVALSHA`, or `EVAL` when Redis does not have it cached (after a restart or a failover;
    /// `EVAL` caches it again).
    pub async fn run(
        &self,
        client: &Client,
        keys: Vec<String>,
        args: Vec<fred::types::Value>,
    ) -> Result<fred::types::Value, fred::error::Error> {
        use fred::interfaces::LuaInterface;
        let sent = client
            .evalsha::<fred::types::Value, _, _, _>(self.sha.as_str(), keys.clone(), args.clone())
            .await;
        match sent {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                client.eval(self.body, keys, args).await
            }
            other => other,
        }
    }
}

/// A lease one node holds at a time (the webhook dispatcher of a namespace, the gateway's router), expiring unless
/// renewed: taken when free, renewed by its holder; the reply is 1 when `ARGV[1]` holds it for `ARGV[2]` ms.
pub fn lease_script(name: &'static str) -> Script {
    Script::new(name, include_str!("redis/lease.lua"))
}

/// Gives up a lease held by `ARGV[1]` (a graceful stop: the next holder need not wait for it to expire).
pub fn release_script(name: &'static str) -> Script {
    Script::new(name, include_str!("redis/release.lua"))
}

#[cfg(test)]
mod tests {
    use super::{Endpoint, numsub_counts, redact};
    use fred::types::{Map, Value};

    fn numsub(channels: &[(&str, i64)]) -> Vec<Value> {
        channels
            .iter()
            .flat_map(|(c, n)| [Value::from(*c), Value::Integer(*n)])
            .collect()
    }

    /// `PUBSUB NUMSUB` counts are read by channel name, from a flat array (RESP2, and Redis 7.0 in RESP3) or a
    /// map, whatever the order.
    #[test]
    fn reads_numsub_counts_by_name() {
        let asked = [("n:reply#b", 1), ("n:reply#c", 0), ("n:reply#d", 3)];
        let expected: std::collections::HashMap<String, u64> = [
            ("n:reply#b".into(), 1),
            ("n:reply#c".into(), 0),
            ("n:reply#d".into(), 3),
        ]
        .into();
        let array = Value::Array(numsub(&asked));
        assert_eq!(numsub_counts(array).unwrap(), expected);
        let reversed = asked.iter().rev().copied().collect::<Vec<_>>();
        assert_eq!(
            numsub_counts(Value::Array(numsub(&reversed))).unwrap(),
            expected
        );
        let map: Map = asked
            .iter()
            .map(|(c, n)| (fred::types::Key::from(*c), Value::Integer(*n)))
            .collect();
        assert_eq!(numsub_counts(Value::Map(map)).unwrap(), expected);
        // Channels not asked about are simply there too; a channel missing is missing.
        let counts = numsub_counts(Value::Array(numsub(&asked[..1]))).unwrap();
        assert_eq!(counts.get("n:reply#b"), Some(&1));
        assert_eq!(counts.get("n:reply#c"), None);
        assert!(numsub_counts(Value::Array(vec![])).unwrap().is_empty());
    }

    #[test]
    fn refuses_malformed_numsub_replies() {
        for reply in [
            Value::Null,
            Value::Integer(1),
            // Odd length, a count that is not a number, a negative count, a name that is not a string.
            Value::Array(vec!["a".into()]),
            Value::Array(vec!["a".into(), "many".into()]),
            Value::Array(vec!["a".into(), Value::Integer(-1)]),
            Value::Array(vec![Value::Array(vec![]), Value::Integer(1)]),
        ] {
            assert!(numsub_counts(reply.clone()).is_err(), "{reply:?}");
        }
    }

    #[test]
    fn refuses_other_schemes() {
        for url in [
            "nope://x",
            "127.0.0.1:6379",
            "http://127.0.0.1",
            "redis-sentinel://127.0.0.1",
            "redis-cluster://127.0.0.1:7000/2",
            "redis://127.0.0.1:notaport",
        ] {
            let err = Endpoint::parse(url, None).err().unwrap();
            assert!(err.to_string().starts_with("invalid REDIS_URL"), "{err}");
        }
        for url in [
            "redis://:pw@127.0.0.1:6379/2",
            "rediss://u:pw@localhost:6380",
        ] {
            assert!(Endpoint::parse(url, None).is_ok(), "{url}");
        }
        assert!(
            Endpoint::parse("rediss://localhost:6380", None)
                .unwrap()
                .is_tls()
        );
        assert!(!Endpoint::parse("redis://localhost", None).unwrap().is_tls());
    }

    /// fred's cluster URL form: one node in the host part, others as `?node=`; TLS with `rediss-cluster://`.
    #[test]
    fn cluster_urls() {
        let one = Endpoint::parse("redis://127.0.0.1:6379", None).unwrap();
        assert!(!one.is_cluster());
        for url in [
            "redis-cluster://127.0.0.1:7000",
            "redis-cluster://:pw@127.0.0.1:7000?node=127.0.0.1:7001&node=127.0.0.1:7002",
            "redis-cluster://127.0.0.1:7000/0",
        ] {
            let e = Endpoint::parse(url, None).unwrap();
            assert!(e.is_cluster() && !e.is_tls(), "{url}");
        }
        let e = Endpoint::parse("rediss-cluster://u:pw@redis.example:7000", None).unwrap();
        assert!(e.is_cluster() && e.is_tls());
        assert_eq!(e.redacted(), "rediss-cluster://u:***@redis.example:7000");
        let err = Endpoint::parse("redis-cluster://127.0.0.1:7000/3", None)
            .err()
            .unwrap();
        assert!(err.to_string().contains("only database 0"), "{err}");
    }

    #[test]
    fn private_ca() {
        let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/certs-dev/ca.pem");
        let e = Endpoint::parse("rediss://localhost:6380", Some(ca.as_ref())).unwrap();
        assert!(e.is_tls());
        let err = Endpoint::parse("redis://localhost", Some(ca.as_ref()))
            .err()
            .unwrap();
        assert!(err.to_string().contains("not rediss://"), "{err}");
        let err = Endpoint::parse("rediss://localhost", Some("/nonexistent.pem".as_ref()))
            .err()
            .unwrap();
        assert!(err.to_string().starts_with("cannot read REDIS_CA"), "{err}");
        let err = Endpoint::parse("rediss://localhost", Some("Cargo.toml".as_ref()))
            .err()
            .unwrap();
        assert!(
            err.to_string().ends_with("no certificate in the file"),
            "{err}"
        );
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(
            redact("redis://user:s3cret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact("rediss://:s3cret@host"), "rediss://:***@host");
        assert_eq!(redact("redis://a:b@c@host/x@y"), "redis://a:***@host/x@y");
        assert_eq!(redact("not a url"), "not a url");
        assert_eq!(redact("redis://[::1]:6379/2"), "redis://[::1]:6379/2");
    }

    /// URLs that do not parse (a bad port, a `/` or `#` in an unencoded password, no `//`) are redacted too:
    /// they end up in the error that refuses them.
    #[test]
    fn redacts_passwords_of_malformed_urls() {
        for (url, shown) in [
            ("redis://user:pa/ss@host:6379", "redis://***@host:6379"),
            ("redis://:pa#ss@host", "redis://***@host"),
            ("redis://u:pw@host:notaport", "redis://***@host:notaport"),
            ("user:pass@host", "***@host"),
        ] {
            let redacted = redact(url);
            assert_eq!(redacted, shown, "{url}");
            assert!(
                !redacted.contains("pa") && !redacted.contains("pw"),
                "{url}"
            );
        }
    }
}
