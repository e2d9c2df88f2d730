//! `[[namespace]]`: a namespace a node serves, how it verifies who connects, and its rooms.

use std::{
    num::NonZeroU32,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use super::absolute;
use crate::domain::{validate, webhook_signature::Secret};

/// How a namespace verifies who connects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthKind {
    /// No identity needed; an `id_user` the client gives is kept, unverified.
    None,
    /// The client says who it is (`id_user` in auth or query), unverified: the behaviour of the room-identity service.
    #[default]
    Claim,
    /// `auth: {username, password}` checked against a file of bcrypt/argon2 hashes (as in the forwarding service).
    Credentials,
    /// A signed JWT (HS256 secret, or RS256/ES256 public key).
    Jwt,
    /// The application's auth webhook says yes (and which rooms) for the client's token (as in the reliable push
    /// service).
    Webhook,
}

impl AuthKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Claim => "claim",
            Self::Credentials => "credentials",
            Self::Jwt => "jwt",
            Self::Webhook => "webhook",
        }
    }
}

/// Where a socket's rooms come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoomSource {
    /// The `room` field of the handshake (auth or query), required then.
    Handshake,
    /// `user.{id_user}` for a socket with a user id.
    User,
    /// `session.{id}`: from the JWT's session claim, or in `claim` namespaces the `session_id` field or event.
    Session,
    /// The rooms the auth webhook answered.
    Auth,
}

impl RoomSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Handshake => "handshake",
            Self::User => "user",
            Self::Session => "session",
            Self::Auth => "auth",
        }
    }
}

/// One `[[namespace]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    /// An exact name (`/`, `/sharedsocket`) or a prefix ending in `*` (`/do-*`) for dynamic namespaces.
    pub name: String,
    #[serde(default)]
    pub auth: AuthKind,
    /// `credentials`: a JSON file `[{"username": "...", "password": "<bcrypt or argon2 hash>"}]`.
    pub credentials_file: Option<PathBuf>,
    /// `credentials`: accept plain-text passwords in the file (migrating from the forwarding service); warned about.
    #[serde(default)]
    pub allow_plain_passwords: bool,
    /// `jwt`: the HS256 secret.
    pub jwt_secret: Option<String>,
    /// `jwt`: a PEM public key (RSA for RS256, EC P-256 for ES256) instead of a secret.
    pub jwt_public_key: Option<PathBuf>,
    /// `jwt`: the claim that is the user id (default [`Self::DEFAULT_USER_CLAIM`]).
    pub user_claim: Option<String>,
    /// `jwt`: the claim that is the session id, for `session` rooms (default [`Self::DEFAULT_SESSION_CLAIM`]).
    pub session_claim: Option<String>,
    /// `jwt`: the audience tokens must name (`aud`); unset: the `aud` claim is not checked.
    pub jwt_audience: Option<String>,
    /// `jwt`: the issuer tokens must name (`iss`); unset: not checked.
    pub jwt_issuer: Option<String>,
    /// `jwt`: a cookie that may carry the token (e.g. `ID_TOKEN`).
    pub jwt_cookie: Option<String>,
    /// `webhook`: the URL asked with `GET` and `Authorization: {auth_scheme} {token}`.
    pub auth_url: Option<String>,
    /// `webhook`: the word before the token in `Authorization` (default [`Self::DEFAULT_AUTH_SCHEME`]).
    pub auth_scheme: Option<String>,
    /// `webhook`: how long the webhook may take before the handshake is refused (default
    /// [`Self::DEFAULT_AUTH_TIMEOUT_MS`]).
    pub auth_timeout_ms: Option<u64>,
    #[serde(default = "default_rooms")]
    pub rooms: Vec<RoomSource>,
    /// Relay every client event to every socket of the namespace, sender included (as in the forwarding service).
    #[serde(default)]
    pub forward: bool,
    /// Controller/view events `__count__`, `__connect__`, `__disconnect__` (as in the forwarding service).
    #[serde(default)]
    pub views: bool,
    /// Logged (warn) on every connection: the namespace is kept for old clients only.
    pub deprecated: Option<String>,
    /// The key the application's backend gives to `POST /send` to this namespace (the reliable push service's
    /// `apiKey`).
    pub api_key: Option<String>,
    /// The same, stored as `sha256:<64 hex digits>` of the key, so the file does not hold the key itself.
    pub api_key_hash: Option<String>,
    /// Rooms starting with this (`"user_"`) get reliable delivery: pushes are stored until a socket of the room
    /// acknowledges them (as in the reliable push service). Unset: no reliable delivery in this namespace.
    pub user_room_prefix: Option<String>,
    /// How long a user room's pending messages outlive its last socket, in seconds (default
    /// [`Self::DEFAULT_CLIENT_TTL_S`]); 0: kept until acknowledged.
    pub client_ttl_s: Option<u64>,
    /// Most messages a user room keeps pending (default [`Self::DEFAULT_MAX_PENDING`]); a push beyond it drops
    /// the oldest.
    pub max_pending: Option<u32>,
    /// Reliable messages carry their id as one more, last argument (and each `batch` item as its last
    /// element), so clients can recognise a redelivered message. Off by default: the reliable push service's clients
    /// count their arguments.
    #[serde(default)]
    pub message_ids: bool,
    /// This namespace's clients use the event-bus gateway (`[gateway]`): their events are published to Redis
    /// Streams, and the backend's `send`/`broadcast` entries reach them.
    #[serde(default)]
    pub gateway: bool,
    /// Connection state recovery (socket.io 4.6's): how long, in seconds, a disconnected socket's id, identity,
    /// rooms and missed broadcasts are kept for its client to reconnect to any node and get them back. Absent or 0:
    /// off. At most [`MAX_RECOVERY_WINDOW_S`].
    pub recovery_window_s: Option<u64>,
    /// Client events as RPC (docs/rpc.md): the backend's URL that events named in `rpc_events` are POSTed to,
    /// signed with `rpc_secret`; its JSON answer is the event's ack.
    pub rpc_url: Option<String>,
    /// The events sent to `rpc_url`: exact names, or prefixes ending in `*` (`"profile:*"`). Absent: none.
    pub rpc_events: Option<Vec<String>>,
    /// The Standard Webhooks secret (`whsec_` then base64) that signs the calls to `rpc_url`.
    pub rpc_secret: Option<String>,
    /// How long a call may take before the client gets an error ack (default [`Self::DEFAULT_RPC_TIMEOUT_MS`],
    /// at most [`MAX_RPC_TIMEOUT_MS`]).
    pub rpc_timeout_ms: Option<u64>,
    /// Members' presence (docs/webhooks.md): the sockets of a room are sent `member-added` / `member-removed`
    /// `{room, id_user}` when a user gets their first socket in it or loses their last one, counted over the
    /// whole cluster (a user's second tab, or their socket on another node, says nothing).
    #[serde(default)]
    pub presence: bool,
}

/// The largest `max_pending`: a room's pending messages go out as one `batch` packet, which must stay sendable.
pub const MAX_PENDING_LIMIT: u32 = 10_000;

/// The longest `rpc_timeout_ms`: a call holds one of the socket's few places for RPC while it waits.
pub const MAX_RPC_TIMEOUT_MS: u64 = 60_000;

/// The longest `recovery_window_s` (a day): every broadcast of the namespace is kept that long.
pub const MAX_RECOVERY_WINDOW_S: u64 = 86_400;

impl NamespaceConfig {
    /// The recovery window; `None`: recovery is off.
    pub fn recovery_window(&self) -> Option<std::time::Duration> {
        self.recovery_window_s
            .filter(|s| *s > 0)
            .map(std::time::Duration::from_secs)
    }

    /// A cap that holds a long outage of a busy user without letting one room grow without bound.
    pub const DEFAULT_MAX_PENDING: NonZeroU32 = NonZeroU32::new(1000).unwrap();
    /// One hour.
    pub const DEFAULT_CLIENT_TTL_S: u64 = 3600;
    pub const DEFAULT_USER_CLAIM: &str = "sub";
    pub const DEFAULT_SESSION_CLAIM: &str = "sid";
    pub const DEFAULT_AUTH_SCHEME: &str = "Bearer";
    pub const DEFAULT_AUTH_TIMEOUT_MS: u64 = 3000;
    pub const DEFAULT_RPC_TIMEOUT_MS: u64 = 5000;

    pub fn max_pending(&self) -> NonZeroU32 {
        self.max_pending
            .and_then(NonZeroU32::new)
            .unwrap_or(Self::DEFAULT_MAX_PENDING)
    }
    pub fn client_ttl_s(&self) -> u64 {
        self.client_ttl_s.unwrap_or(Self::DEFAULT_CLIENT_TTL_S)
    }
    pub fn user_claim(&self) -> &str {
        self.user_claim
            .as_deref()
            .unwrap_or(Self::DEFAULT_USER_CLAIM)
    }
    pub fn session_claim(&self) -> &str {
        self.session_claim
            .as_deref()
            .unwrap_or(Self::DEFAULT_SESSION_CLAIM)
    }
    pub fn auth_scheme(&self) -> &str {
        self.auth_scheme
            .as_deref()
            .unwrap_or(Self::DEFAULT_AUTH_SCHEME)
    }
    pub fn auth_timeout_ms(&self) -> u64 {
        self.auth_timeout_ms
            .unwrap_or(Self::DEFAULT_AUTH_TIMEOUT_MS)
    }
    pub fn rpc_timeout_ms(&self) -> u64 {
        self.rpc_timeout_ms.unwrap_or(Self::DEFAULT_RPC_TIMEOUT_MS)
    }
}

fn default_rooms() -> Vec<RoomSource> {
    vec![RoomSource::Handshake]
}

/// A namespace's name: one exact namespace, or every namespace starting with a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamePattern {
    Exact(String),
    Prefix(String),
}

impl NamePattern {
    pub fn parse(name: &str) -> Result<Self, String> {
        match name.strip_suffix('*') {
            Some(prefix) => {
                validate::namespace(prefix).map_err(|e| format!("name {name:?}: {e}"))?;
                Ok(Self::Prefix(prefix.to_owned()))
            }
            None => {
                validate::namespace(name).map_err(|e| format!("name {name:?}: {e}"))?;
                Ok(Self::Exact(name.to_owned()))
            }
        }
    }

    /// Whether namespace `ns` is this one (a prefix matches longer names only: `/do-*` is not `/do-`).
    pub fn matches(&self, ns: &str) -> bool {
        match self {
            Self::Exact(name) => name == ns,
            Self::Prefix(prefix) => ns.len() > prefix.len() && ns.starts_with(prefix.as_str()),
        }
    }
}

impl std::fmt::Display for NamePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(name) => f.write_str(name),
            Self::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

/// A namespace table that passed every check, with its file paths made absolute.
#[derive(Debug, Clone)]
pub struct CheckedNamespace {
    pub pattern: NamePattern,
    pub config: NamespaceConfig,
    /// Where the table starts, for later errors (loading the credentials file, the key).
    pub line: usize,
}

/// One `[[namespace]]` table, checked by its rules and against the tables `before` it, its paths made absolute
/// (`base` is the file's directory).
pub(super) fn checked(
    mut ns: NamespaceConfig,
    line: usize,
    base: &Path,
    before: &[CheckedNamespace],
) -> Result<CheckedNamespace, String> {
    let pattern = NamePattern::parse(&ns.name)?;
    let named = |m: String| format!("namespace {:?}: {m}", ns.name);
    if before.iter().any(|c| c.pattern == pattern) {
        return Err(named("is defined twice".into()));
    }
    check(&ns).map_err(named)?;
    if matches!(pattern, NamePattern::Prefix(_))
        && (ns.api_key.is_some() || ns.api_key_hash.is_some())
    {
        return Err(named(
            "`api_key` needs an exact name: POST /send pushes to one namespace".into(),
        ));
    }
    for p in [&mut ns.credentials_file, &mut ns.jwt_public_key]
        .into_iter()
        .flatten()
    {
        absolute(p, base);
    }
    Ok(CheckedNamespace {
        pattern,
        config: ns,
        line,
    })
}

/// The rules between keys: what each auth kind needs, and what it does not take.
fn check(ns: &NamespaceConfig) -> Result<(), String> {
    use AuthKind::*;
    let kind = ns.auth;
    let given = |key: &str, set: bool| -> Result<(), String> {
        match set {
            true => Err(format!(
                "`{key}` does not apply to auth = \"{}\"",
                kind.as_str()
            )),
            false => Ok(()),
        }
    };
    let needs = |key: &str, set: bool| -> Result<(), String> {
        match set {
            true => Ok(()),
            false => Err(format!(
                "`{key}` is required with auth = \"{}\"",
                kind.as_str()
            )),
        }
    };
    if kind != Credentials {
        given("credentials_file", ns.credentials_file.is_some())?;
        given("allow_plain_passwords", ns.allow_plain_passwords)?;
    }
    if kind != Jwt {
        given("jwt_secret", ns.jwt_secret.is_some())?;
        given("jwt_public_key", ns.jwt_public_key.is_some())?;
        given("jwt_cookie", ns.jwt_cookie.is_some())?;
        given("jwt_audience", ns.jwt_audience.is_some())?;
        given("jwt_issuer", ns.jwt_issuer.is_some())?;
        given("user_claim", ns.user_claim.is_some())?;
        given("session_claim", ns.session_claim.is_some())?;
    }
    if kind != Webhook {
        given("auth_url", ns.auth_url.is_some())?;
        given("auth_scheme", ns.auth_scheme.is_some())?;
        given("auth_timeout_ms", ns.auth_timeout_ms.is_some())?;
    }
    match kind {
        Credentials => needs("credentials_file", ns.credentials_file.is_some())?,
        Jwt => match (&ns.jwt_secret, &ns.jwt_public_key) {
            (Option::None, Option::None) => {
                return Err(
                    "`jwt_secret` or `jwt_public_key` is required with auth = \"jwt\"".into(),
                );
            }
            (Some(_), Some(_)) => {
                return Err("give `jwt_secret` or `jwt_public_key`, not both".into());
            }
            (Some(s), Option::None) if s.len() < 16 => {
                return Err("`jwt_secret` must be at least 16 bytes long".into());
            }
            _ => {}
        },
        Webhook => {
            needs("auth_url", ns.auth_url.is_some())?;
            let url = ns.auth_url.as_deref().unwrap_or_default();
            match url::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {}
                _ => return Err(format!("`auth_url` {url:?} is not an http(s) URL")),
            }
            if !(1..=60_000).contains(&ns.auth_timeout_ms()) {
                return Err("`auth_timeout_ms` must be between 1 and 60000".into());
            }
            let scheme = ns.auth_scheme();
            if scheme.is_empty()
                || !scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err("`auth_scheme` must be a word such as \"Bearer\"".into());
            }
        }
        None | Claim => {}
    }
    for (i, room) in ns.rooms.iter().enumerate() {
        if ns.rooms[..i].contains(room) {
            return Err(format!("`rooms` lists \"{}\" twice", room.as_str()));
        }
        match room {
            RoomSource::Auth if kind != Webhook => {
                return Err("`rooms` = \"auth\" needs auth = \"webhook\"".into());
            }
            RoomSource::User if kind == None => {
                return Err("`rooms` = \"user\" needs a verified user (auth is \"none\")".into());
            }
            RoomSource::Session if !matches!(kind, Claim | Jwt) => {
                return Err(format!(
                    "`rooms` = \"session\" needs auth = \"jwt\" (the session claim) or \"claim\", not \"{}\"",
                    kind.as_str()
                ));
            }
            _ => {}
        }
    }
    for (key, claim) in [
        ("user_claim", ns.user_claim()),
        ("session_claim", ns.session_claim()),
    ] {
        if claim.is_empty() {
            return Err(format!("`{key}` must not be empty"));
        }
    }
    match (&ns.api_key, &ns.api_key_hash) {
        (Some(_), Some(_)) => return Err("give `api_key` or `api_key_hash`, not both".into()),
        (Some(k), Option::None) if k.is_empty() => return Err("`api_key` must not be empty".into()),
        (Option::None, Some(h)) => {
            api_key_digest(h)?;
        }
        _ => {}
    }
    if let Some(d) = &ns.deprecated
        && d.trim().is_empty()
    {
        return Err("`deprecated` must say something (why, or what to use instead)".into());
    }
    if let Some(prefix) = &ns.user_room_prefix
        && prefix.is_empty()
    {
        return Err(
            "`user_room_prefix` must not be empty (every room would be a user room)".into(),
        );
    }
    if ns.user_room_prefix.is_none() {
        let reliable_keys = [
            ("client_ttl_s", ns.client_ttl_s.is_some()),
            ("max_pending", ns.max_pending.is_some()),
            ("message_ids", ns.message_ids),
        ];
        if let Some((key, _)) = reliable_keys.iter().find(|(_, set)| *set) {
            return Err(format!(
                "`{key}` needs `user_room_prefix` (the rooms whose messages it keeps)"
            ));
        }
    }
    if let Some(cap) = ns.max_pending
        && !(1..=MAX_PENDING_LIMIT).contains(&cap)
    {
        return Err(format!(
            "`max_pending` must be between 1 and {MAX_PENDING_LIMIT} (got {cap})"
        ));
    }
    if let Some(window) = ns.recovery_window_s
        && window > MAX_RECOVERY_WINDOW_S
    {
        return Err(format!(
            "`recovery_window_s` must be at most {MAX_RECOVERY_WINDOW_S} (got {window})"
        ));
    }
    check_rpc(ns)
}

/// The RPC keys: all of them need `rpc_url`, which needs a secret; event names are checked as the emitter checks
/// them, and the names the server or the client library reserve are refused.
fn check_rpc(ns: &NamespaceConfig) -> Result<(), String> {
    let Some(url) = &ns.rpc_url else {
        for (key, set) in [
            ("rpc_events", ns.rpc_events.is_some()),
            ("rpc_secret", ns.rpc_secret.is_some()),
            ("rpc_timeout_ms", ns.rpc_timeout_ms.is_some()),
        ] {
            if set {
                return Err(format!(
                    "`{key}` needs `rpc_url` (where the events are sent)"
                ));
            }
        }
        return Ok(());
    };
    match url::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {}
        _ => return Err("`rpc_url` is not an http(s) URL".into()),
    }
    let Some(secret) = &ns.rpc_secret else {
        return Err(
            "`rpc_secret` is required with `rpc_url` (the backend verifies the calls)".into(),
        );
    };
    secret
        .parse::<Secret>()
        .map_err(|e| format!("`rpc_secret` {e}"))?;
    if !(1..=MAX_RPC_TIMEOUT_MS).contains(&ns.rpc_timeout_ms()) {
        return Err(format!(
            "`rpc_timeout_ms` must be between 1 and {MAX_RPC_TIMEOUT_MS}"
        ));
    }
    let events = ns.rpc_events.as_deref().unwrap_or_default();
    for (i, name) in events.iter().enumerate() {
        if events[..i].contains(name) {
            return Err(format!("`rpc_events` lists {name:?} twice"));
        }
        let exact = name.strip_suffix('*').is_none();
        let bare = name.strip_suffix('*').unwrap_or(name);
        if bare.contains('*') {
            return Err(format!(
                "`rpc_events` {name:?}: `*` may only end a name (a prefix)"
            ));
        }
        if exact && name.is_empty() {
            return Err("`rpc_events` has an empty name".into());
        }
        if exact && validate::is_reserved_event(name) {
            return Err(format!(
                "`rpc_events` {name:?} is an event name the server or the socket.io client reserves"
            ));
        }
    }
    Ok(())
}

/// The SHA-256 digest in an `api_key_hash` (`sha256:<64 hex digits>`).
pub fn api_key_digest(hash: &str) -> Result<[u8; 32], String> {
    let bad = || {
        "`api_key_hash` must be \"sha256:\" then 64 hex digits (sha256sum of the key)".to_owned()
    };
    let hex = hash.strip_prefix("sha256:").ok_or_else(bad)?;
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::file::testing::{example_names, keys, parse_err, parse_ok};

    #[test]
    fn reads_every_kind_with_defaults() {
        let list = parse_ok(
            r#"
[[namespace]]
name = "/"
auth = "jwt"
jwt_secret = "0123456789abcdef"
rooms = ["user", "session"]

[[namespace]]
name = "/do-*"
auth = "credentials"
credentials_file = "creds.json"
rooms = []
forward = true
views = true

[[namespace]]
name = "/sharedsocket"
auth = "none"
rooms = []
deprecated = "use /do-{name}"

[[namespace]]
name = "/newsite"
auth = "webhook"
auth_url = "http://127.0.0.1:8080/socketrooms"
rooms = ["auth", "user"]
"#,
        );
        assert_eq!(list.len(), 4);
        assert_eq!(list[0].pattern, NamePattern::Exact("/".into()));
        assert_eq!(list[0].config.user_claim(), "sub");
        assert_eq!(list[0].config.session_claim(), "sid");
        assert_eq!(list[0].line, 2);
        assert_eq!(list[1].pattern, NamePattern::Prefix("/do-".into()));
        assert_eq!(
            list[1].config.credentials_file.as_deref(),
            Some(Path::new("/etc/si/creds.json"))
        );
        assert!(list[1].config.forward && list[1].config.views);
        assert_eq!(list[2].config.auth, AuthKind::None);
        assert_eq!(list[3].config.auth_scheme(), "Bearer");
        assert_eq!(list[3].config.auth_timeout_ms(), 3000);
        // Without `auth` and `rooms`: today's rules.
        let list = parse_ok("[[namespace]]\nname = \"/\"\n");
        assert_eq!(list[0].config.auth, AuthKind::Claim);
        assert_eq!(list[0].config.rooms, [RoomSource::Handshake]);
    }

    #[test]
    fn patterns_match_names() {
        let p = NamePattern::parse("/do-*").unwrap();
        assert!(p.matches("/do-lab"));
        assert!(!p.matches("/do-"));
        assert!(!p.matches("/dolab"));
        let e = NamePattern::parse("/a").unwrap();
        assert!(e.matches("/a") && !e.matches("/ab"));
        assert!(NamePattern::parse("do-*").is_err());
        assert!(NamePattern::parse("/a*b*").is_err());
        assert!(NamePattern::parse("/a{x}").is_err());
    }

    #[test]
    fn reliable_delivery_keys() {
        let list = parse_ok("[[namespace]]\nname = \"/\"\nuser_room_prefix = \"user_\"\n");
        assert_eq!(list[0].config.user_room_prefix.as_deref(), Some("user_"));
        assert_eq!(list[0].config.client_ttl_s(), 3600);
        let list =
            parse_ok("[[namespace]]\nname = \"/\"\nuser_room_prefix = \"u\"\nclient_ttl_s = 0\n");
        assert_eq!(list[0].config.client_ttl_s(), 0);
        let e = parse_err("[[namespace]]\nname = \"/\"\nuser_room_prefix = \"\"\n");
        assert!(
            e.ends_with("`user_room_prefix` must not be empty (every room would be a user room)"),
            "{e}"
        );
        let e = parse_err("[[namespace]]\nname = \"/\"\nclient_ttl_s = 60\n");
        assert!(
            e.ends_with(
                "`client_ttl_s` needs `user_room_prefix` (the rooms whose messages it keeps)"
            ),
            "{e}"
        );
    }

    #[test]
    fn rpc_keys_are_checked() {
        let ns = "[[namespace]]\nname = \"/\"\n";
        let url = "rpc_url = \"https://backend.internal/rpc\"\n";
        let secret = "rpc_secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n";
        let list = parse_ok(&format!(
            "{ns}{url}{secret}rpc_events = [\"a\", \"b:*\", \"*\"]\n"
        ));
        assert_eq!(list[0].config.rpc_timeout_ms(), 5000);
        for (extra, error) in [
            (
                "rpc_events = [\"a\"]\n".to_owned(),
                "`rpc_events` needs `rpc_url` (where the events are sent)",
            ),
            (
                url.to_owned(),
                "`rpc_secret` is required with `rpc_url` (the backend verifies the calls)",
            ),
            (
                format!("rpc_url = \"ftp://x\"\n{secret}"),
                "`rpc_url` is not an http(s) URL",
            ),
            (
                format!("{url}rpc_secret = \"plain\"\n"),
                "`rpc_secret` must start with `whsec_` followed by base64 (a Standard Webhooks secret)",
            ),
            (
                format!("{url}{secret}rpc_timeout_ms = 0\n"),
                "`rpc_timeout_ms` must be between 1 and 60000",
            ),
            (
                format!("{url}{secret}rpc_events = [\"connect\"]\n"),
                "`rpc_events` \"connect\" is an event name the server or the socket.io client reserves",
            ),
            (
                format!("{url}{secret}rpc_events = [\"batch\"]\n"),
                "`rpc_events` \"batch\" is an event name the server or the socket.io client reserves",
            ),
            (
                format!("{url}{secret}rpc_events = [\"a*b\"]\n"),
                "`rpc_events` \"a*b\": `*` may only end a name (a prefix)",
            ),
            (
                format!("{url}{secret}rpc_events = [\"a\", \"a\"]\n"),
                "`rpc_events` lists \"a\" twice",
            ),
        ] {
            let e = parse_err(&format!("{ns}{extra}"));
            assert!(e.ends_with(error), "{e}");
        }
    }

    /// Every key of `[[namespace]]` is in the example file, set or commented out.
    #[test]
    fn example_file_names_every_key() {
        for key in keys::<NamespaceConfig>() {
            assert!(
                example_names(None, key),
                "`{key}` is missing from deploy/config.example.toml"
            );
        }
    }
}
