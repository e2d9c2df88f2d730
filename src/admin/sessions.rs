//! What the admin UI's nodes share: sessions (a login gives a session id the UI keeps and offers on its next
//! connection, to any node; 24 hours), and whether an admin UI is connected anywhere (so that nodes without one
//! know to send their per-socket events). In Redis for a cluster, in memory on a single node.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use fred::{
    clients::Client,
    interfaces::KeysInterface,
    types::{Expiration, SetOptions},
};
use futures_util::future::BoxFuture;

/// How long a session lasts (the admin UI's reference server keeps them this long).
pub const SESSION_TTL: Duration = Duration::from_secs(24 * 3600);

/// Where sessions are kept. Errors are Redis's, as text: the login is refused with it.
pub trait Sessions: Send + Sync + 'static {
    fn save<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), String>>;
    fn valid<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, String>>;
    /// This node has an admin UI connected, for `lease` from now.
    fn mark_watched(&self, lease: Duration) -> BoxFuture<'_, Result<(), String>>;
    /// Whether some node has one.
    fn watched(&self) -> BoxFuture<'_, Result<bool, String>>;
}

/// A new session id: 16 hex characters, as the UI's reference server makes them, from a v4 UUID's randomness.
pub fn new_id() -> String {
    let random = uuid::Uuid::new_v4().as_u128();
    format!("{:016x}", (random >> 64) as u64 ^ random as u64)
}

/// Whether `id` looks like one of ours (anything else is refused before any lookup).
pub fn well_formed(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A single node's sessions.
#[derive(Debug, Default)]
pub struct MemorySessions(Mutex<HashMap<String, Instant>>);

impl Sessions for MemorySessions {
    fn save<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), String>> {
        let mut map = self.0.lock().unwrap();
        let now = Instant::now();
        map.retain(|_, until| *until > now);
        map.insert(id.to_owned(), now + SESSION_TTL);
        Box::pin(std::future::ready(Ok(())))
    }

    fn valid<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, String>> {
        let valid = self
            .0
            .lock()
            .unwrap()
            .get(id)
            .is_some_and(|until| *until > Instant::now());
        Box::pin(std::future::ready(Ok(valid)))
    }

    /// A single node knows its own admins: nothing to share.
    fn mark_watched(&self, _: Duration) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn watched(&self) -> BoxFuture<'_, Result<bool, String>> {
        Box::pin(std::future::ready(Ok(false)))
    }
}

/// A cluster's sessions: `<prefix>:admin-session:<id>`, expiring in Redis.
pub struct RedisSessions {
    client: Client,
    prefix: String,
    /// `<prefix>:admin-watched`, set (with an expiry) by every node with an admin UI connected.
    watched_key: String,
}

impl RedisSessions {
    pub fn new(client: Client, prefix: &str) -> Self {
        Self {
            client,
            prefix: format!("{prefix}:admin-session:"),
            watched_key: format!("{prefix}:admin-watched"),
        }
    }
}

impl Sessions for RedisSessions {
    fn save<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let ttl = i64::try_from(SESSION_TTL.as_secs()).unwrap_or(i64::MAX);
            self.client
                .set::<(), _, _>(
                    format!("{}{id}", self.prefix),
                    1,
                    Some(Expiration::EX(ttl)),
                    Some(SetOptions::NX),
                    false,
                )
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn valid<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(async move {
            self.client
                .exists::<u64, _>(format!("{}{id}", self.prefix))
                .await
                .map(|n| n > 0)
                .map_err(|e| e.to_string())
        })
    }

    fn mark_watched(&self, lease: Duration) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
            self.client
                .set::<(), _, _>(&self.watched_key, 1, Some(Expiration::PX(ms)), None, false)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn watched(&self) -> BoxFuture<'_, Result<bool, String>> {
        Box::pin(async move {
            self.client
                .exists::<u64, _>(&self.watched_key)
                .await
                .map(|n| n > 0)
                .map_err(|e| e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_sessions_know_their_ids() {
        let s = MemorySessions::default();
        let id = new_id();
        assert!(well_formed(&id), "{id}");
        assert!(!s.valid(&id).await.unwrap());
        s.save(&id).await.unwrap();
        assert!(s.valid(&id).await.unwrap());
        assert!(!s.valid(&new_id()).await.unwrap());
        assert!(!well_formed("0123456789abcdeg") && !well_formed("abc"));
    }
}
