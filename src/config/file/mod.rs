//! The config file (TOML, `--config`/`CONFIG`): the namespaces a node serves and how each verifies its
//! clients. Read and checked once at start-up; a mistake stops the process with the file, the line and the key.
//!
//! Without a file the node serves one namespace, `/`, with `auth = "claim"` and `rooms = ["handshake"]`:
//! exactly the behaviour before config files existed. README "Config file" documents every key;
//! `deploy/config.example.toml` is a complete example.

use std::{
    ops::Range,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use toml::Spanned;

use crate::domain::validate;

/// The whole file. Unknown keys are errors: a typo must not silently weaken authentication.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default, rename = "namespace")]
    pub namespaces: Vec<Spanned<NamespaceConfig>>,
    pub admin: Option<Spanned<AdminConfig>>,
    pub gateway: Option<Spanned<GatewayConfig>>,
}

/// `[gateway]`: the event-bus gateway of seed 003, on Redis Streams (README "Event-bus gateway").
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// The plain WebSocket endpoint.
    #[serde(default = "default_gateway_path")]
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
    pub user_claim: Option<String>,
    pub jwt_cookie: Option<String>,
    pub jwt_audience: Option<String>,
    pub jwt_issuer: Option<String>,
    /// Before every stream key.
    #[serde(default)]
    pub stream_prefix: String,
    /// Each stream is trimmed to about this many entries.
    pub stream_maxlen: Option<u64>,
    /// How often plain WebSocket clients are pinged.
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

fn default_gateway_path() -> String {
    "/connect".into()
}

impl GatewayConfig {
    pub fn user_claim(&self) -> &str {
        self.user_claim.as_deref().unwrap_or("preferred_username")
    }
    pub fn stream_maxlen(&self) -> u64 {
        self.stream_maxlen.unwrap_or(100_000)
    }
    pub fn ping_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.ping_interval_ms.unwrap_or(25_000))
    }
}

/// `[admin]`: the official socket.io admin UI, served at `/admin/`, for the whole cluster (seed 000).
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Off unless set: the admin namespace shows every socket's handshake (headers included).
    #[serde(default)]
    pub enabled: bool,
    /// `false`: no login at all (seed 000 without a password); a warning at every start says so.
    #[serde(default = "yes")]
    pub auth: bool,
    pub username: Option<String>,
    /// bcrypt, as the admin UI's docs generate it (`$2a$`, `$2b$` or `$2y$`).
    pub password_hash: Option<String>,
    #[serde(default)]
    pub mode: AdminMode,
    /// Only statistics and lists: no `join`, `leave` or `_disconnect`.
    #[serde(default)]
    pub readonly: bool,
    /// The admin UI's namespace (default `/admin`); never one of the `[[namespace]]` tables.
    #[serde(default = "default_admin_namespace")]
    pub namespace: String,
}

/// Never prints the password hash.
impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("enabled", &self.enabled)
            .field("auth", &self.auth)
            .field("username", &self.username)
            .field("mode", &self.mode)
            .field("readonly", &self.readonly)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// The admin UI's two modes, as in its reference server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminMode {
    /// Everything: socket lists, per-socket events, every event in and out.
    #[default]
    Development,
    /// Statistics only: no socket lists, no per-socket events (cheaper with many sockets).
    Production,
}

fn yes() -> bool {
    true
}
fn default_admin_namespace() -> String {
    "/admin".into()
}

/// Every key of `[gateway]`, for the same checks as [`NAMESPACE_KEYS`].
#[cfg(test)]
const GATEWAY_KEYS: &[&str] = &[
    "path",
    "onconnect",
    "onmessage",
    "onclose",
    "send",
    "broadcast",
    "jwt_secret",
    "jwt_public_key",
    "user_claim",
    "jwt_cookie",
    "jwt_audience",
    "jwt_issuer",
    "stream_prefix",
    "stream_maxlen",
    "ping_interval_ms",
];

/// Every key of `[admin]`, for the same checks as [`NAMESPACE_KEYS`].
#[cfg(test)]
const ADMIN_KEYS: &[&str] = &[
    "enabled",
    "auth",
    "username",
    "password_hash",
    "mode",
    "readonly",
    "namespace",
];

/// How a namespace verifies who connects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthKind {
    /// No identity needed; an `id_user` the client gives is kept, unverified.
    None,
    /// The client says who it is (`id_user` in auth or query), unverified: the behaviour of seed 004.
    #[default]
    Claim,
    /// `auth: {username, password}` checked against a file of bcrypt/argon2 hashes (seed 000).
    Credentials,
    /// A signed JWT (HS256 secret, or RS256/ES256 public key).
    Jwt,
    /// The application's auth webhook says yes (and which rooms) for the client's token (seed 001).
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
    /// `credentials`: accept plain-text passwords in the file (migrating from seed 000's service); warned about.
    #[serde(default)]
    pub allow_plain_passwords: bool,
    /// `jwt`: the HS256 secret.
    pub jwt_secret: Option<String>,
    /// `jwt`: a PEM public key (RSA for RS256, EC P-256 for ES256) instead of a secret.
    pub jwt_public_key: Option<PathBuf>,
    /// `jwt`: the claim that is the user id (default `sub`).
    pub user_claim: Option<String>,
    /// `jwt`: the claim that is the session id, for `session` rooms (default `sid`).
    pub session_claim: Option<String>,
    /// `jwt`: the audience tokens must name (`aud`); unset: the `aud` claim is not checked.
    pub jwt_audience: Option<String>,
    /// `jwt`: the issuer tokens must name (`iss`); unset: not checked.
    pub jwt_issuer: Option<String>,
    /// `jwt`: a cookie that may carry the token (e.g. `ID_TOKEN`).
    pub jwt_cookie: Option<String>,
    /// `webhook`: the URL asked with `GET` and `Authorization: {auth_scheme} {token}`.
    pub auth_url: Option<String>,
    /// `webhook`: the word before the token in `Authorization` (default `Bearer`).
    pub auth_scheme: Option<String>,
    /// `webhook`: how long the webhook may take before the handshake is refused (default 3000 ms).
    pub auth_timeout_ms: Option<u64>,
    #[serde(default = "default_rooms")]
    pub rooms: Vec<RoomSource>,
    /// Relay every client event to every socket of the namespace, sender included (seed 000).
    #[serde(default)]
    pub forward: bool,
    /// Controller/view events `__count__`, `__connect__`, `__disconnect__` (seed 000).
    #[serde(default)]
    pub views: bool,
    /// Logged (warn) on every connection: the namespace is kept for old clients only.
    pub deprecated: Option<String>,
    /// The key the application's backend gives to `POST /send` to this namespace (seed 001's `apiKey`).
    pub api_key: Option<String>,
    /// The same, stored as `sha256:<64 hex digits>` of the key, so the file does not hold the key itself.
    pub api_key_hash: Option<String>,
    /// Rooms starting with this (`"user_"`) get reliable delivery: pushes are stored until a socket of the room
    /// acknowledges them (seed 001). Unset: no reliable delivery in this namespace.
    pub user_room_prefix: Option<String>,
    /// How long a user room's pending messages outlive its last socket, in seconds (default 3600); 0: kept
    /// until acknowledged.
    pub client_ttl_s: Option<u64>,
    /// Most messages a user room keeps pending (default 1,000); a push beyond it drops the oldest.
    pub max_pending: Option<u32>,
    /// Reliable messages carry their id as one more, last argument (and each `batch` item as its last
    /// element), so clients can recognise a redelivered message. Off by default: seed 001's clients count
    /// their arguments.
    #[serde(default)]
    pub message_ids: bool,
    /// This namespace's clients use the event-bus gateway (`[gateway]`): their events are published to Redis
    /// Streams, and the backend's `send`/`broadcast` entries reach them.
    #[serde(default)]
    pub gateway: bool,
}

/// The largest `max_pending`: a room's pending messages go out as one `batch` packet, which must stay sendable.
pub const MAX_PENDING_LIMIT: u32 = 10_000;

/// Every key of a `[[namespace]]` table. Update this list and [`NamespaceConfig`] together: the tests check that
/// it matches the struct's fields and that `deploy/config.example.toml` names each key (set or commented out).
#[cfg(test)]
const NAMESPACE_KEYS: &[&str] = &[
    "name",
    "auth",
    "credentials_file",
    "allow_plain_passwords",
    "jwt_secret",
    "jwt_public_key",
    "user_claim",
    "session_claim",
    "jwt_audience",
    "jwt_issuer",
    "jwt_cookie",
    "auth_url",
    "auth_scheme",
    "auth_timeout_ms",
    "rooms",
    "forward",
    "views",
    "deprecated",
    "api_key",
    "api_key_hash",
    "user_room_prefix",
    "client_ttl_s",
    "max_pending",
    "message_ids",
    "gateway",
];

impl NamespaceConfig {
    /// `max_pending`, default [`Policy::DEFAULT_CAP`](crate::delivery::Policy::DEFAULT_CAP).
    pub fn max_pending(&self) -> std::num::NonZeroU32 {
        self.max_pending
            .and_then(std::num::NonZeroU32::new)
            .unwrap_or(crate::delivery::Policy::DEFAULT_CAP)
    }

    /// `client_ttl_s`, default one hour.
    pub fn client_ttl_s(&self) -> u64 {
        self.client_ttl_s.unwrap_or(3600)
    }

    pub fn user_claim(&self) -> &str {
        self.user_claim.as_deref().unwrap_or("sub")
    }
    pub fn session_claim(&self) -> &str {
        self.session_claim.as_deref().unwrap_or("sid")
    }
    pub fn auth_scheme(&self) -> &str {
        self.auth_scheme.as_deref().unwrap_or("Bearer")
    }
    pub fn auth_timeout_ms(&self) -> u64 {
        self.auth_timeout_ms.unwrap_or(3000)
    }
}
fn default_rooms() -> Vec<RoomSource> {
    vec![RoomSource::Handshake]
}

/// A mistake in the config file, with where it is.
#[derive(Debug, thiserror::Error)]
#[error("{file}{}: {message}", if *line > 0 { format!(":{line}") } else { String::new() })]
pub struct FileError {
    pub file: String,
    /// 1-based; 0 when the file could not be read at all.
    pub line: usize,
    pub message: String,
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

/// The whole file, checked.
#[derive(Debug, Clone)]
pub struct Checked {
    pub namespaces: Vec<CheckedNamespace>,
    /// `[admin]` when it is enabled.
    pub admin: Option<AdminConfig>,
    /// `[gateway]`, when the file has one.
    pub gateway: Option<GatewayConfig>,
}

/// A namespace table that passed every check, with its file paths made absolute.
#[derive(Debug, Clone)]
pub struct CheckedNamespace {
    pub pattern: NamePattern,
    pub config: NamespaceConfig,
    /// Where the table starts, for later errors (loading the credentials file, the key).
    pub line: usize,
}

/// Reads and checks the config file. Relative paths in it are relative to the file's directory.
pub fn load(path: &Path) -> Result<Checked, FileError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| FileError {
        file: file.clone(),
        line: 0,
        message: format!("cannot read the config file: {e}"),
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, &file, base)
}

/// [`load`] on text already read; `file` names it in errors.
pub fn parse(text: &str, file: &str, base: &Path) -> Result<Checked, FileError> {
    let err = |span: Option<Range<usize>>, message: String| FileError {
        file: file.to_owned(),
        line: span.map_or(1, |s| line_of(text, s.start)),
        message,
    };
    let parsed: FileConfig =
        toml::from_str(text).map_err(|e| err(e.span(), e.message().trim().to_owned()))?;
    let mut checked: Vec<CheckedNamespace> = Vec::new();
    for table in parsed.namespaces {
        let span = table.span();
        let line = line_of(text, span.start);
        let mut ns = table.into_inner();
        let pattern = NamePattern::parse(&ns.name).map_err(|m| err(Some(span.clone()), m))?;
        let named = |m: String| err(Some(span.clone()), format!("namespace {:?}: {m}", ns.name));
        if checked.iter().any(|c| c.pattern == pattern) {
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
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        checked.push(CheckedNamespace {
            pattern,
            config: ns,
            line,
        });
    }
    if checked.is_empty() {
        return Err(err(
            None,
            "no [[namespace]] table: the file must declare at least one namespace".into(),
        ));
    }
    let admin = match parsed.admin {
        Some(table) => {
            let span = table.span();
            let admin = table.into_inner();
            check_admin(&admin, &checked).map_err(|m| err(Some(span), format!("[admin]: {m}")))?;
            admin.enabled.then_some(admin)
        }
        None => None,
    };
    let gateway = match parsed.gateway {
        Some(table) => {
            let span = table.span();
            let mut gateway = table.into_inner();
            check_gateway(&gateway).map_err(|m| err(Some(span), format!("[gateway]: {m}")))?;
            if let Some(p) = &mut gateway.jwt_public_key
                && p.is_relative()
            {
                *p = base.join(&*p);
            }
            Some(gateway)
        }
        None => None,
    };
    if gateway.is_none()
        && let Some(ns) = checked.iter().find(|n| n.config.gateway)
    {
        return Err(FileError {
            file: file.to_owned(),
            line: ns.line,
            message: format!(
                "namespace {:?}: `gateway = true` needs a [gateway] table",
                ns.config.name
            ),
        });
    }
    Ok(Checked {
        namespaces: checked,
        admin,
        gateway,
    })
}

/// `[gateway]`'s rules: a reachable path, topics that are stream keys, one way to check tokens.
fn check_gateway(g: &GatewayConfig) -> Result<(), String> {
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

/// `[admin]`'s rules: a login unless `auth = false`, a real bcrypt hash, a namespace of its own.
fn check_admin(admin: &AdminConfig, namespaces: &[CheckedNamespace]) -> Result<(), String> {
    match (admin.auth, &admin.username, &admin.password_hash) {
        (true, Some(user), Some(_)) if user.is_empty() => {
            return Err("`username` must not be empty".into());
        }
        (true, Some(_), Some(hash)) => {
            hash.parse::<bcrypt::HashParts>().map_err(|e| {
                format!("`password_hash` is not a bcrypt hash ($2a$, $2b$ or $2y$): {e}")
            })?;
        }
        (true, _, _) if admin.enabled => {
            return Err(
                "`username` and `password_hash` (bcrypt) are required, or `auth = false` to \
                 let anyone in"
                    .into(),
            );
        }
        (false, user, hash) if user.is_some() || hash.is_some() => {
            return Err("`auth = false` takes no `username` or `password_hash`".into());
        }
        _ => {}
    }
    validate::namespace(&admin.namespace).map_err(|e| format!("`namespace`: {e}"))?;
    if admin.namespace == "/" {
        return Err("`namespace` must not be `/`".into());
    }
    if let Some(ns) = namespaces
        .iter()
        .find(|n| n.pattern.matches(&admin.namespace))
    {
        return Err(format!(
            "`namespace` {:?} is also served by [[namespace]] {:?}: the admin namespace must be its own",
            admin.namespace,
            ns.pattern.to_string()
        ));
    }
    Ok(())
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

/// The 1-based line of byte `at`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> Vec<CheckedNamespace> {
        parse(text, "test.toml", Path::new("/etc/si"))
            .unwrap()
            .namespaces
    }

    fn parse_err(text: &str) -> String {
        parse(text, "test.toml", Path::new("/etc/si"))
            .unwrap_err()
            .to_string()
    }

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
    fn errors_name_the_line_and_the_key() {
        let e = parse_err("[[namespace]]\nname = \"/\"\nauht = \"jwt\"\n");
        assert!(e.starts_with("test.toml:3: unknown field `auht`"), "{e}");
        let e = parse_err("\n\n[[namespace]]\nname = \"/\"\nauth = \"jwt\"\n");
        assert_eq!(
            e,
            "test.toml:3: namespace \"/\": `jwt_secret` or `jwt_public_key` is required with auth = \"jwt\""
        );
        let e = parse_err("[[namespace]]\nname = \"/\"\nauth = \"magic\"\n");
        assert!(e.starts_with("test.toml:3: unknown variant `magic`"), "{e}");
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

    const EXAMPLE: &str = include_str!("../../deploy/config.example.toml");

    /// `deploy/config.example.toml` loads, with the seeds' namespaces that README "Config file" describes.
    #[test]
    fn example_file_loads() {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
        let checked = parse(EXAMPLE, "deploy/config.example.toml", &base).unwrap();
        assert!(checked.admin.is_none(), "the example's [admin] is off");
        let admin: FileConfig = toml::from_str(EXAMPLE).unwrap();
        let admin = admin.admin.unwrap().into_inner();
        assert!(bcrypt::verify("change-me", admin.password_hash.as_deref().unwrap()).unwrap());
        let list = checked.namespaces;
        let find = |name: &str| {
            list.iter()
                .find(|n| n.config.name == name)
                .unwrap_or_else(|| panic!("{name} is missing from the example"))
                .config
                .clone()
        };
        use RoomSource::*;
        let root = find("/");
        assert_eq!(root.auth, AuthKind::Jwt);
        assert_eq!(root.rooms, [User, Session]);
        let lab = find("/do-*");
        assert_eq!(lab.auth, AuthKind::Credentials);
        assert!(lab.forward && lab.views && !lab.allow_plain_passwords);
        let shared = find("/sharedsocket");
        assert_eq!(shared.auth, AuthKind::None);
        assert!(shared.deprecated.is_some());
        let site = find("/newsite");
        assert_eq!(site.auth, AuthKind::Webhook);
        assert_eq!(site.rooms, [Auth, User]);
        let chat = find("/chat");
        assert_eq!(chat.auth, AuthKind::Claim);
        assert_eq!(chat.rooms, [Handshake, User, Session]);
        assert_eq!(list.len(), 5);

        // The credentials file it names holds a bcrypt hash of the password its comment gives.
        let creds = lab.credentials_file.expect("set");
        assert_eq!(creds, base.join("credentials.example.json"));
        let users: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(&creds).unwrap()).unwrap();
        assert_eq!(users[0]["username"], "lab");
        let hash = users[0]["password"].as_str().unwrap();
        assert!(hash.starts_with("$2b$10$"), "{hash}");
        assert!(bcrypt::verify("example-password", hash).unwrap());
        assert!(EXAMPLE.contains("\"example-password\""));
    }

    /// Every key of `[[namespace]]` is in the example file, set or commented out.
    #[test]
    fn example_file_names_every_key() {
        for key in NAMESPACE_KEYS {
            let named = EXAMPLE.lines().any(|line| {
                let line = line.trim_start().trim_start_matches('#').trim_start();
                line.strip_prefix(key)
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
            });
            assert!(named, "`{key}` is missing from deploy/config.example.toml");
        }
    }

    /// [`NAMESPACE_KEYS`] is exactly what serde accepts in a `[[namespace]]` table, in the struct's order.
    #[test]
    fn namespace_keys_match_the_struct() {
        assert_eq!(serde_fields::<NamespaceConfig>(), NAMESPACE_KEYS);
        assert_eq!(serde_fields::<AdminConfig>(), ADMIN_KEYS);
        assert_eq!(serde_fields::<GatewayConfig>(), GATEWAY_KEYS);
    }

    #[test]
    fn example_file_names_every_admin_and_gateway_key() {
        for (table, keys) in [("[admin]", ADMIN_KEYS), ("[gateway]", GATEWAY_KEYS)] {
            // From the table's header (set, or commented out) on.
            let start = EXAMPLE
                .lines()
                .position(|l| l.trim_start_matches('#').trim() == table)
                .unwrap_or_else(|| panic!("the example has a {table} table"));
            for key in keys {
                let named = EXAMPLE.lines().skip(start).any(|line| {
                    let line = line.trim_start().trim_start_matches('#').trim_start();
                    line.strip_prefix(key)
                        .is_some_and(|rest| rest.trim_start().starts_with('='))
                });
                assert!(
                    named,
                    "{table} `{key}` is missing from deploy/config.example.toml"
                );
            }
        }
    }

    #[test]
    fn admin_needs_a_login_or_says_it_has_none() {
        let ns = "[[namespace]]\nname = \"/\"\n";
        let hash = "$2y$04$KoI8Xj0Yl5MFfrgkXjW7qeQ1mZlfAYpXhfKJw3qxv7FkSa5m8Tj3q";
        let ok = |extra: &str| parse(&format!("{ns}[admin]\n{extra}"), "t", Path::new("."));
        let admin = ok(&format!(
            "enabled = true\nusername = \"a\"\npassword_hash = \"{hash}\"\n"
        ))
        .unwrap()
        .admin
        .unwrap();
        assert_eq!(admin.namespace, "/admin");
        assert_eq!(admin.mode, AdminMode::Development);
        assert!(admin.auth && !admin.readonly);
        assert!(
            !format!("{admin:?}").contains(hash),
            "the hash is never printed"
        );
        assert!(
            ok("enabled = true\nauth = false\n")
                .unwrap()
                .admin
                .is_some()
        );
        assert!(ok("enabled = false\n").unwrap().admin.is_none());
        for (extra, message) in [
            (
                "enabled = true\n",
                "`username` and `password_hash` (bcrypt) are required",
            ),
            (
                "enabled = true\nusername = \"a\"\npassword_hash = \"plain\"\n",
                "is not a bcrypt hash",
            ),
            (
                "enabled = true\nauth = false\nusername = \"a\"\n",
                "`auth = false` takes no",
            ),
            (
                "enabled = true\nauth = false\nnamespace = \"/\"\n",
                "must not be `/`",
            ),
            (
                "enabled = true\nauth = false\nnamespace = \"admin\"\n",
                "`namespace`",
            ),
            (
                "enabled = true\nauth = false\nmode = \"prod\"\n",
                "unknown variant",
            ),
            (
                "enabled = true\nauth = false\nnamespace = \"/\"\n",
                "[admin]",
            ),
        ] {
            let e = ok(extra).unwrap_err().to_string();
            assert!(e.contains(message), "{extra:?}: {e}");
        }
        let clash = parse(
            "[[namespace]]\nname = \"/ad*\"\n[admin]\nenabled = true\nauth = false\n",
            "t",
            Path::new("."),
        )
        .unwrap_err()
        .to_string();
        assert!(
            clash.contains("also served by [[namespace]] \"/ad*\""),
            "{clash}"
        );
    }

    /// The field names a derived `Deserialize` asks its deserializer for.
    fn serde_fields<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
        use serde::de::{Error, Visitor, value};
        struct Fields(&'static [&'static str]);
        impl<'de> serde::Deserializer<'de> for &mut Fields {
            type Error = value::Error;
            fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, value::Error> {
                Err(value::Error::custom("not a struct"))
            }
            fn deserialize_struct<V: Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, value::Error> {
                self.0 = fields;
                Err(value::Error::custom("fields read"))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
                option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
                ignored_any
            }
        }
        let mut fields = Fields(&[]);
        let _ = T::deserialize(&mut fields);
        fields.0
    }
}
