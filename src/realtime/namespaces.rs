//! The namespaces this node serves, built once from the config file (registered with socketioxide by
//! [`super::handshake::register`]).
//!
//! Exact names become socketioxide namespaces; a prefix (`/do-*`) becomes a dynamic namespace (`/do-{*rest}`),
//! whose children (`/do-lab`, `/do-b`) are separate namespaces with their own rooms and adapter channels, so
//! nothing of one reaches another.

use std::sync::Arc;

use super::{
    auth::{FailedLogins, Verifier},
    backend::Backend,
};
use crate::{
    config::file::{CheckedNamespace, NamePattern, NamespaceConfig, RoomSource},
    telemetry::metrics::Metrics,
};

/// One `[[namespace]]` table, ready to serve.
#[derive(Debug)]
pub struct Namespace {
    pub pattern: NamePattern,
    pub verifier: Verifier,
    /// Where the sockets' rooms come from.
    pub rooms: Vec<RoomSource>,
    pub forward: bool,
    pub views: bool,
    pub deprecated: Option<String>,
    /// The key of `POST /send` for this namespace; `None`: the namespace takes no pushes.
    pub api_key: Option<ApiKey>,
    /// Reliable delivery to user rooms (`user_room_prefix`); `None`: none in this namespace.
    pub reliable: Option<Reliable>,
    /// Its clients use the event-bus gateway (`gateway = true`).
    pub gateway: bool,
    /// Connection state recovery's window (`recovery_window_s`); `None`: off.
    pub recovery: Option<std::time::Duration>,
    /// Where events named in `rpc_events` are sent (`rpc_url`); `None`: no RPC in this namespace.
    pub rpc: Option<Backend>,
    /// Members' presence events (`presence = true`).
    pub presence: bool,
}

/// A namespace's reliable delivery: which rooms, and the store's rules for them.
#[derive(Debug, Clone)]
pub struct Reliable {
    /// Rooms starting with this are user rooms.
    pub prefix: String,
    pub policy: crate::delivery::Policy,
    /// `message_ids`: each message carries its id as its last argument.
    pub message_ids: bool,
}

impl Reliable {
    pub fn is_user_room(&self, room: &str) -> bool {
        room.starts_with(&self.prefix)
    }
}

/// A namespace's push API key, as the config file gives it.
#[derive(Clone)]
pub enum ApiKey {
    Plain(String),
    Sha256([u8; 32]),
}

/// Never prints the key.
impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(..)")
    }
}

impl ApiKey {
    /// Whether `given` is this key, in constant time (the length of neither leaks).
    pub fn matches(&self, given: &str) -> bool {
        match self {
            Self::Plain(key) => crate::domain::secret::equal(key.as_bytes(), given.as_bytes()),
            Self::Sha256(digest) => {
                use sha2::{Digest, Sha256};
                use subtle::ConstantTimeEq;
                Sha256::digest(given.as_bytes()).ct_eq(digest).into()
            }
        }
    }
}

impl Namespace {
    pub fn joins(&self, source: RoomSource) -> bool {
        self.rooms.contains(&source)
    }
}

/// Every namespace of the node.
#[derive(Debug)]
pub struct Namespaces(Vec<Namespace>);

impl Namespaces {
    /// Builds the verifiers (reading credentials files and keys). Errors name the file and line of the table.
    pub fn build(
        checked: Vec<CheckedNamespace>,
        file: &str,
        metrics: &Arc<Metrics>,
        logins: &Arc<FailedLogins>,
    ) -> Result<Self, String> {
        let mut list = Vec::new();
        for ns in checked {
            let at = |e: String| format!("{file}:{}: namespace {:?}: {e}", ns.line, ns.config.name);
            let verifier = Verifier::build(&ns, metrics, logins).map_err(at)?;
            let rpc = Backend::new(&ns.config).map_err(at)?;
            list.push(Self::namespace(ns.pattern, verifier, rpc, ns.config));
        }
        Ok(Self(list))
    }

    /// Without a config file: `/` only, clients say who they are and which room they join.
    pub fn single_default() -> Self {
        Self(vec![Namespace {
            pattern: NamePattern::Exact("/".into()),
            verifier: Verifier::Claim,
            rooms: vec![RoomSource::Handshake],
            forward: false,
            views: false,
            deprecated: None,
            api_key: None,
            reliable: None,
            gateway: false,
            recovery: None,
            rpc: None,
            presence: false,
        }])
    }

    fn namespace(
        pattern: NamePattern,
        verifier: Verifier,
        rpc: Option<Backend>,
        c: NamespaceConfig,
    ) -> Namespace {
        let reliable = c.user_room_prefix.clone().map(|prefix| Reliable {
            prefix,
            policy: crate::delivery::Policy {
                cap: c.max_pending(),
                ttl: crate::delivery::Ttl::from_secs(c.client_ttl_s()),
            },
            message_ids: c.message_ids,
        });
        Namespace {
            reliable,
            rpc,
            gateway: c.gateway,
            recovery: c.recovery_window(),
            presence: c.presence,
            pattern,
            verifier,
            rooms: c.rooms,
            forward: c.forward,
            views: c.views,
            deprecated: c.deprecated,
            api_key: match (c.api_key, c.api_key_hash) {
                (Some(key), _) => Some(ApiKey::Plain(key)),
                (None, Some(hash)) => crate::config::file::api_key_digest(&hash)
                    .ok()
                    .map(ApiKey::Sha256),
                (None, None) => None,
            },
        }
    }

    /// The namespace that takes pushes for `site` (the reliable push service's name: the namespace without its slash;
    /// with it too, so that `/` can be named): an exact namespace with an API key.
    pub fn site(&self, site: &str) -> Option<&Namespace> {
        let name = match site.starts_with('/') {
            true => site.to_owned(),
            false => format!("/{site}"),
        };
        self.0
            .iter()
            .find(|n| n.pattern == NamePattern::Exact(name.clone()) && n.api_key.is_some())
    }

    /// The namespace `ns` belongs to: its exact entry, else the longest matching prefix.
    pub fn find(&self, ns: &str) -> Option<&Namespace> {
        self.0
            .iter()
            .find(|n| n.pattern == NamePattern::Exact(ns.to_owned()))
            .or_else(|| {
                self.0
                    .iter()
                    .filter(|n| n.pattern.matches(ns))
                    .max_by_key(|n| match &n.pattern {
                        NamePattern::Prefix(p) => p.len(),
                        NamePattern::Exact(_) => usize::MAX,
                    })
            })
    }

    pub fn iter(&self) -> impl Iterator<Item = &Namespace> {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_exact_names_before_prefixes() {
        let text = r#"
[[namespace]]
name = "/do-*"
auth = "none"
rooms = []
[[namespace]]
name = "/do-lab-*"
auth = "none"
rooms = []
forward = true
[[namespace]]
name = "/do-special"
auth = "none"
rooms = []
views = true
"#;
        let checked = crate::config::file::parse(text, "t", std::path::Path::new("."))
            .unwrap()
            .namespaces;
        let all =
            Namespaces::build(checked, "t", &Arc::new(Metrics::new()), &Arc::default()).unwrap();
        assert_eq!(
            all.find("/do-special").unwrap().pattern.to_string(),
            "/do-special"
        );
        assert_eq!(
            all.find("/do-lab-1").unwrap().pattern.to_string(),
            "/do-lab-*"
        );
        assert_eq!(all.find("/do-x").unwrap().pattern.to_string(), "/do-*");
        assert!(all.find("/do-").is_none());
        assert!(all.find("/").is_none());
        assert!(Namespaces::single_default().find("/").is_some());
    }
}
