//! `[gateway]`: the event-bus gateway on Redis Streams, its topics and how its plain WebSocket clients are
//! identified.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::absolute;

/// `[gateway]`: the event-bus gateway, on Redis Streams (docs/gateway.md).
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// The plain WebSocket endpoint (default [`Self::DEFAULT_PATH`]).
    #[serde(default = "default_path")]
    pub path: String,
    pub onconnect: Option<Publish>,
    pub onmessage: Option<OnMessage>,
    pub onclose: Option<Publish>,
    pub send: Option<Subscribe>,
    pub broadcast: Option<Subscribe>,
    /// The JWT of plain WebSocket clients of `claim` and `none` namespaces, as in `[[namespace]]` with
    /// `auth = "jwt"` (a cookie only when `jwt_cookie` is set).
    pub jwt_secret: Option<String>,
    pub jwt_public_key: Option<PathBuf>,
    /// The claim that is the user id (default [`Self::DEFAULT_USER_CLAIM`]).
    pub user_claim: Option<String>,
    pub jwt_cookie: Option<String>,
    pub jwt_audience: Option<String>,
    pub jwt_issuer: Option<String>,
    /// Before every stream key.
    #[serde(default)]
    pub stream_prefix: String,
    /// Each stream is trimmed to about this many entries (default [`Self::DEFAULT_STREAM_MAXLEN`]).
    pub stream_maxlen: Option<u64>,
    /// How often plain WebSocket clients are pinged (default [`Self::DEFAULT_PING_INTERVAL_MS`]).
    pub ping_interval_ms: Option<u64>,
}

/// Never prints the secret.
impl std::fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("path", &self.path)
            .field("onconnect", &self.onconnect)
            .field("onmessage", &self.onmessage)
            .field("onclose", &self.onclose)
            .field("send", &self.send)
            .field("broadcast", &self.broadcast)
            .field("stream_prefix", &self.stream_prefix)
            .finish_non_exhaustive()
    }
}

impl GatewayConfig {
    pub const DEFAULT_PATH: &str = "/connect";
    pub const DEFAULT_USER_CLAIM: &str = "preferred_username";
    pub const DEFAULT_STREAM_MAXLEN: u64 = 100_000;
    pub const DEFAULT_PING_INTERVAL_MS: u64 = 25_000;

    pub fn user_claim(&self) -> &str {
        self.user_claim
            .as_deref()
            .unwrap_or(Self::DEFAULT_USER_CLAIM)
    }
    pub fn stream_maxlen(&self) -> u64 {
        self.stream_maxlen.unwrap_or(Self::DEFAULT_STREAM_MAXLEN)
    }
    pub fn ping_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            self.ping_interval_ms
                .unwrap_or(Self::DEFAULT_PING_INTERVAL_MS),
        )
    }

    /// The event names the gateway sends its Socket.IO clients on its own (`onconnect`, `error`, the replies'
    /// topics), which no client may forge.
    pub fn reply_events(&self) -> Vec<String> {
        let mut names = vec!["onconnect".to_owned(), "error".to_owned()];
        if let Some(m) = &self.onmessage {
            names.push(m.publish.clone());
            names.extend(m.types.iter().map(|t| t.publish.clone()));
        }
        names
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Publish {
    pub publish: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnMessage {
    pub publish: String,
    #[serde(default)]
    pub types: Vec<TypeRoute>,
}

/// Messages of `type` also go to `publish`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypeRoute {
    #[serde(rename = "type")]
    pub kind: String,
    pub publish: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscribe {
    pub subscribe: String,
}

fn default_path() -> String {
    GatewayConfig::DEFAULT_PATH.into()
}

/// The `[gateway]` table checked, its key's path made absolute (`base` is the file's directory).
pub(super) fn checked(mut gateway: GatewayConfig, base: &Path) -> Result<GatewayConfig, String> {
    check(&gateway)?;
    if let Some(p) = &mut gateway.jwt_public_key {
        absolute(p, base);
    }
    Ok(gateway)
}

/// `[gateway]`'s rules: a reachable path, topics that are stream keys, one way to check tokens.
fn check(g: &GatewayConfig) -> Result<(), String> {
    let reserved = [
        "/socket.io",
        "/health",
        "/ready",
        "/metrics",
        "/api",
        "/send",
        "/admin",
        "/openapi.json",
    ];
    let path_ok = g.path.starts_with('/')
        && g.path.len() > 1
        && g.path.len() <= 128
        && g.path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b))
        && !g.path.contains("//");
    if !path_ok {
        return Err(format!(
            "`path` {:?} must be like \"/connect\" (letters, digits, - _ . /)",
            g.path
        ));
    }
    if let Some(r) = reserved
        .iter()
        .find(|r| g.path == **r || g.path.starts_with(&format!("{r}/")))
    {
        return Err(format!("`path` {:?} is taken by {r}", g.path));
    }
    let topics = [
        g.onconnect
            .as_ref()
            .map(|p| ("onconnect.publish", &p.publish)),
        g.onmessage
            .as_ref()
            .map(|p| ("onmessage.publish", &p.publish)),
        g.onclose.as_ref().map(|p| ("onclose.publish", &p.publish)),
        g.send.as_ref().map(|p| ("send.subscribe", &p.subscribe)),
        g.broadcast
            .as_ref()
            .map(|p| ("broadcast.subscribe", &p.subscribe)),
    ];
    let types = g.onmessage.iter().flat_map(|m| &m.types);
    for (key, topic) in topics.into_iter().flatten().chain(
        types
            .clone()
            .map(|t| ("onmessage.types.publish", &t.publish)),
    ) {
        if topic.is_empty()
            || topic.len() > 200
            || topic.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "`{key}` {topic:?} must be a stream key (1 to 200 characters, no spaces)"
            ));
        }
    }
    for t in types {
        if t.kind.is_empty() || t.kind.chars().count() > 128 {
            return Err(format!(
                "onmessage type {:?} must be 1 to 128 characters",
                t.kind
            ));
        }
    }
    if let (Some(s), Some(b)) = (&g.send, &g.broadcast)
        && s.subscribe == b.subscribe
    {
        return Err("`send.subscribe` and `broadcast.subscribe` must be different streams".into());
    }
    match (&g.jwt_secret, &g.jwt_public_key) {
        (None, None) => return Err("`jwt_secret` or `jwt_public_key` is required (plain WebSocket clients are identified by a JWT)".into()),
        (Some(_), Some(_)) => return Err("give `jwt_secret` or `jwt_public_key`, not both".into()),
        (Some(s), None) if s.len() < 16 => return Err("`jwt_secret` must be at least 16 bytes long".into()),
        _ => {}
    }
    for (key, value) in [("user_claim", &g.user_claim), ("jwt_cookie", &g.jwt_cookie)] {
        if value.as_deref().is_some_and(str::is_empty) {
            return Err(format!("`{key}` must not be empty"));
        }
    }
    if g.stream_maxlen.is_some_and(|n| n < 100) {
        return Err("`stream_maxlen` must be at least 100".into());
    }
    if g.ping_interval_ms
        .is_some_and(|ms| !(100..=600_000).contains(&ms))
    {
        return Err("`ping_interval_ms` must be between 100 and 600000".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::file::testing::{example_names, keys};

    #[test]
    fn example_file_names_every_gateway_key() {
        for key in keys::<GatewayConfig>() {
            assert!(
                example_names(Some("[gateway]"), key),
                "[gateway] `{key}` is missing from deploy/config.example.toml"
            );
        }
    }
}
