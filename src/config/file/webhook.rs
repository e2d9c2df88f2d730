//! `[[webhook]]`: a backend told, over signed HTTP requests, when rooms get their first socket or lose their last
//! one and when users come and go in them, cluster-wide (docs/webhooks.md).

use serde::Deserialize;

use super::NamePattern;
use crate::domain::webhook_signature::Secret;

/// One `[[webhook]]` table as written.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where events are POSTed; `http://` or `https://`.
    pub url: String,
    /// The Standard Webhooks secret (`whsec_` + base64) that signs each request.
    pub secret: String,
    /// The namespaces whose rooms are reported: exact names or prefixes (`/do-*`), as `[[namespace]]` names.
    pub namespaces: Vec<String>,
    /// The event types sent (default: the four room and member events).
    pub events: Option<Vec<String>>,
    /// Events are gathered for at most this long into one request (a JSON array); 0: one event per request.
    #[serde(default)]
    pub batch_ms: u64,
    /// How long the receiver has to answer one request (default [`Self::DEFAULT_TIMEOUT_MS`]).
    pub timeout_ms: Option<u64>,
    /// How long a request that fails is retried before its events are given up (default
    /// [`Self::DEFAULT_RETRY_S`]).
    pub retry_s: Option<u64>,
}

impl WebhookConfig {
    pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;
    pub const DEFAULT_RETRY_S: u64 = 300;
    pub const MAX_BATCH_MS: u64 = 10_000;
    pub const MAX_RETRY_S: u64 = 86_400;
}

/// Never prints the secret, nor credentials in the URL.
impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &crate::domain::secret::redacted_url(&self.url))
            .field("namespaces", &self.namespaces)
            .field("events", &self.events)
            .field("batch_ms", &self.batch_ms)
            .finish_non_exhaustive()
    }
}

/// What a webhook can be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    RoomOccupied,
    RoomVacated,
    MemberAdded,
    MemberRemoved,
    SocketConnected,
    SocketDisconnected,
}

impl EventKind {
    pub const ALL: [EventKind; 6] = [
        Self::RoomOccupied,
        Self::RoomVacated,
        Self::MemberAdded,
        Self::MemberRemoved,
        Self::SocketConnected,
        Self::SocketDisconnected,
    ];

    /// The `type` of the event's JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::RoomOccupied => "room.occupied",
            Self::RoomVacated => "room.vacated",
            Self::MemberAdded => "member.added",
            Self::MemberRemoved => "member.removed",
            Self::SocketConnected => "socket.connected",
            Self::SocketDisconnected => "socket.disconnected",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    pub fn is_socket_event(self) -> bool {
        matches!(self, Self::SocketConnected | Self::SocketDisconnected)
    }
}

/// A `[[webhook]]` table that passed every check.
#[derive(Clone)]
pub struct CheckedWebhook {
    pub url: url::Url,
    pub secret: Secret,
    pub namespaces: Vec<NamePattern>,
    pub events: Vec<EventKind>,
    pub batch_ms: u64,
    pub timeout_ms: u64,
    pub retry_s: u64,
}

/// Never prints the secret (its own `Debug` hides it), nor credentials in the URL.
impl std::fmt::Debug for CheckedWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckedWebhook")
            .field(
                "url",
                &crate::domain::secret::redacted_url(self.url.as_str()),
            )
            .field("namespaces", &self.namespaces)
            .field("events", &self.events)
            .field("batch_ms", &self.batch_ms)
            .field("timeout_ms", &self.timeout_ms)
            .finish_non_exhaustive()
    }
}

impl CheckedWebhook {
    /// Whether it reports namespace `ns`.
    pub fn wants(&self, ns: &str) -> bool {
        self.namespaces.iter().any(|p| p.matches(ns))
    }

    /// A short id for its keys in Redis, the same on every node with the same URL: the URL's SHA-1, 12 hex digits.
    pub fn key(&self) -> String {
        use sha1::Digest;
        sha1::Sha1::digest(self.url.as_str().as_bytes())[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// One `[[webhook]]` table, checked by its rules and against the tables `before` it.
pub(super) fn checked(
    w: WebhookConfig,
    before: &[CheckedWebhook],
) -> Result<CheckedWebhook, String> {
    let url = url::Url::parse(&w.url).map_err(|e| format!("url {:?}: {e}", w.url))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("url {:?}: must be http:// or https://", w.url));
    }
    if before.iter().any(|b| b.url == url) {
        return Err(format!("url {:?}: two [[webhook]] tables have it", w.url));
    }
    let secret = w
        .secret
        .parse::<Secret>()
        .map_err(|e| format!("secret: {e}"))?;
    if w.namespaces.is_empty() {
        return Err("namespaces: name at least one namespace".into());
    }
    let namespaces = w
        .namespaces
        .iter()
        .map(|n| NamePattern::parse(n).map_err(|e| format!("namespaces: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let events = match &w.events {
        None => EventKind::ALL[..4].to_vec(),
        Some(names) if names.is_empty() => return Err("events: name at least one event".into()),
        Some(names) => names
            .iter()
            .map(|n| {
                EventKind::parse(n).ok_or_else(|| {
                    let known: Vec<_> = EventKind::ALL.iter().map(|k| k.name()).collect();
                    format!("events: unknown event {n:?}, expected one of {known:?}")
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    if w.batch_ms > WebhookConfig::MAX_BATCH_MS {
        return Err(format!("batch_ms: at most {}", WebhookConfig::MAX_BATCH_MS));
    }
    let timeout_ms = w.timeout_ms.unwrap_or(WebhookConfig::DEFAULT_TIMEOUT_MS);
    if !(100..=60_000).contains(&timeout_ms) {
        return Err("timeout_ms: between 100 and 60000".into());
    }
    let retry_s = w.retry_s.unwrap_or(WebhookConfig::DEFAULT_RETRY_S);
    if retry_s > WebhookConfig::MAX_RETRY_S {
        return Err(format!("retry_s: at most {}", WebhookConfig::MAX_RETRY_S));
    }
    Ok(CheckedWebhook {
        url,
        secret,
        namespaces,
        events,
        batch_ms: w.batch_ms,
        timeout_ms,
        retry_s,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::{EXAMPLE, example_names, keys};
    use super::*;
    use std::path::Path;

    const NS: &str = "[[namespace]]\nname = \"/chat\"\n";
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn parse(webhook: &str) -> Result<Vec<CheckedWebhook>, String> {
        super::super::parse(&format!("{NS}{webhook}"), "test.toml", Path::new("/etc"))
            .map(|c| c.webhooks)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_webhook_gets_its_defaults() {
        let w = parse(&format!(
            "[[webhook]]\nurl = \"http://127.0.0.1:9/h\"\nsecret = \"{SECRET}\"\nnamespaces = [\"/chat\", \"/do-*\"]\n"
        ))
        .unwrap();
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].events, EventKind::ALL[..4]);
        assert_eq!(w[0].timeout_ms, 5_000);
        assert_eq!(w[0].retry_s, 300);
        assert_eq!(w[0].batch_ms, 0);
        assert!(w[0].wants("/chat") && w[0].wants("/do-1") && !w[0].wants("/other"));
        assert_eq!(w[0].key().len(), 12);
        assert!(!format!("{:?}", w[0]).contains("MfKQ9r8G"));
    }

    #[test]
    fn mistakes_are_refused_with_their_line() {
        let table = |extra: &str| {
            format!(
                "[[webhook]]\nurl = \"http://h/x\"\nsecret = \"{SECRET}\"\nnamespaces = [\"/chat\"]\n{extra}"
            )
        };
        for (text, wanted) in [
            (
                table("events = [\"room.burnt\"]\n"),
                "unknown event \"room.burnt\"",
            ),
            (table("batch_ms = 60000\n"), "batch_ms: at most"),
            (table("timeout_ms = 0\n"), "timeout_ms"),
            (
                "[[webhook]]\nurl = \"ftp://h/x\"\nsecret = \"x\"\nnamespaces = [\"/chat\"]\n"
                    .into(),
                "must be http",
            ),
            (
                "[[webhook]]\nurl = \"http://h/x\"\nsecret = \"nope\"\nnamespaces = [\"/chat\"]\n"
                    .into(),
                "secret: must start with `whsec_`",
            ),
            (
                format!("{}{}", table(""), table("")),
                "two [[webhook]] tables",
            ),
        ] {
            let e = parse(&text).unwrap_err();
            assert!(e.starts_with("test.toml:"), "{e}");
            assert!(e.contains(wanted), "{e} does not say {wanted}");
            assert!(!e.contains("MfKQ9r8G"), "{e}");
        }
    }

    #[test]
    fn the_example_names_every_key() {
        assert!(EXAMPLE.contains("[[webhook]]"));
        for key in keys::<WebhookConfig>() {
            assert!(
                example_names(Some("[[webhook]]"), key),
                "deploy/config.example.toml does not name `{key}` in [[webhook]]"
            );
        }
    }
}
