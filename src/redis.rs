//! Building fred clients the way this cluster needs them.
//!
//! Three traps handled here (see `STACK-NOTES.md`): fred ignores `?protocol=resp3` so RESP3 is set by hand
//! (the socketioxide-redis adapter publishes on subscribed connections); fred reconnects only with a policy; and
//! after a reconnect nobody re-subscribes the sharded channels of the adapter, so [`connect_subscriber`] starts a
//! task that restores every tracked channel on each reconnect.

use std::time::Duration;

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
    #[error("cannot connect to Redis at {url}: {source}")]
    Connect {
        url: String,
        source: fred::error::Error,
    },
}

/// Makes a URL printable: the password, if any, becomes `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or("", |(u, _)| u);
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

fn builder(url: &str, command_timeout: Duration) -> Result<Builder, RedisError> {
    let bad = |reason: String| RedisError::Url {
        url: redact(url),
        reason,
    };
    if !url.starts_with("redis://") {
        return Err(bad("the URL must start with redis://".into()));
    }
    let mut config = RedisConfig::from_url(url).map_err(|e| bad(e.to_string()))?;
    config.version = RespVersion::RESP3;
    let mut builder = Builder::from_config(config);
    builder
        // Retry for ever, 100 ms to 2 s apart: a node outlives a Redis restart.
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
        .with_performance_config(|p| {
            // A command sent while Redis is away waits at most this long, never for ever.
            p.default_command_timeout = command_timeout;
            // Pub/sub messages are fanned out to our readers (the adapter's and ours) through this ring, allocated
            // up front; the default (32) drops messages under a burst of broadcasts.
            p.broadcast_channel_capacity = 8_192;
        })
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(5);
        });
    Ok(builder)
}

/// A client for plain commands (`PUBLISH`).
pub async fn connect_client(url: &str, command_timeout: Duration) -> Result<Client, RedisError> {
    let client = builder(url, command_timeout)?
        .build()
        .map_err(|source| connect_err(url, source))?;
    client
        .init()
        .await
        .map_err(|source| connect_err(url, source))?;
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
    pub fn new(url: &str, command_timeout: Duration) -> Result<Self, RedisError> {
        let client = builder(url, command_timeout)?
            .build_subscriber_client()
            .map_err(|source| connect_err(url, source))?;
        let restorer = tokio::spawn(resubscribe_on_reconnect(client.clone()));
        Ok(Self { client, restorer })
    }

    /// Stops re-subscribing and closes the connection, so Redis stops counting this node at once.
    pub async fn close(&self) {
        self.restorer.abort();
        let _ = self.client.quit().await;
    }
}

pub async fn init(client: &SubscriberClient, url: &str) -> Result<(), RedisError> {
    client
        .init()
        .await
        .map(drop)
        .map_err(|source| connect_err(url, source))
}

pub fn connect_err(url: &str, source: fred::error::Error) -> RedisError {
    RedisError::Connect {
        url: redact(url),
        source,
    }
}

/// fred's own `manage_subscriptions` sends an empty `SUBSCRIBE` first when only shard channels are tracked,
/// Redis refuses it, and the shard channels are never restored; so we restore each kind only when non-empty.
async fn resubscribe_on_reconnect(client: SubscriberClient) {
    let mut reconnects = client.reconnect_rx();
    while reconnects.recv().await.is_ok() {
        let channels: Vec<_> = client.tracked_channels().into_iter().collect();
        let shards: Vec<_> = client.tracked_shard_channels().into_iter().collect();
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
        // One command per shard channel: they may live in different hash slots.
        for chan in shards {
            if let Err(e) = client.ssubscribe(chan.clone()).await {
                tracing::error!(error = %e, channel = %chan, "re-subscribing after a Redis reconnect failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn refuses_other_schemes() {
        for url in [
            "nope://x",
            "127.0.0.1:6379",
            "http://127.0.0.1",
            "rediss://127.0.0.1",
        ] {
            let err = super::builder(url, std::time::Duration::from_secs(1))
                .err()
                .unwrap();
            assert!(err.to_string().starts_with("invalid REDIS_URL"), "{err}");
        }
        assert!(
            super::builder(
                "redis://:pw@127.0.0.1:6379/2",
                std::time::Duration::from_secs(1)
            )
            .is_ok()
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
    }
}
