//! Client events as RPC, the call itself (docs/rpc.md): a namespace's backend (`rpc_url`), the events it takes
//! (`rpc_events`), the signed `POST` and what its answer may be.
//!
//! The answer's JSON is the event's ack, unless it is an object of exactly two keys, `ack` and `actions`: then
//! `ack` is the ack and `actions` (`join`, `leave`, `disconnect`) asks for changes to the calling socket. Only the
//! shape and the room names are checked here; which rooms a socket may be put in is the socket side's rule
//! ([`super::rpc`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    config::file::NamespaceConfig,
    domain::{secret::redacted_url, validate, webhook_signature::Secret},
};

/// The largest answer read from the backend: it becomes one ack packet.
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// The most rooms one answer may join or leave.
pub const MAX_ACTION_ROOMS: usize = 64;

/// Why a call gave no ack of the backend's. The text is what the client's ack says: the backend's status at most,
/// never its body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("the backend did not answer within {0} ms")]
    Timeout(u64),
    #[error("the backend cannot be reached")]
    Unreachable,
    #[error("the backend answered {0}")]
    Status(u16),
    #[error("the backend's answer is not JSON")]
    NotJson,
    #[error("the backend's answer is larger than {MAX_ANSWER_BYTES} bytes")]
    TooLarge,
    /// Why, for the log: the client is not told what the backend asked for.
    #[error("the backend asked for invalid actions")]
    Actions(String),
}

impl Failure {
    /// The `outcome` label of `rpc_calls_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Unreachable => "unreachable",
            Self::Status(_) => "status",
            Self::NotJson | Self::TooLarge => "bad_answer",
            Self::Actions(_) => "bad_actions",
        }
    }
}

/// One event, as the backend gets it.
#[derive(Debug, Serialize)]
pub struct Call<'a> {
    pub event: &'a str,
    pub args: &'a [Value],
    pub namespace: &'a str,
    pub id_socket: String,
    pub id_user: Option<&'a str>,
    /// Whether `id_user` was verified (a token, a password, the auth webhook), not only claimed.
    pub verified: bool,
    pub rooms: Vec<String>,
}

/// The backend's answer: the ack, and what to do to the socket.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub ack: Value,
    pub actions: Actions,
}

/// Changes the backend asks for on the calling socket: rooms to leave, then to join, then a disconnection (after
/// the ack).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Actions {
    #[serde(default)]
    pub join: Vec<String>,
    #[serde(default)]
    pub leave: Vec<String>,
    #[serde(default)]
    pub disconnect: bool,
}

/// An event name of `rpc_events`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum EventPattern {
    Exact(String),
    Prefix(String),
}

/// A namespace's RPC backend.
pub struct Backend {
    client: reqwest::Client,
    url: String,
    secret: Secret,
    timeout_ms: u64,
    events: Vec<EventPattern>,
}

/// Never prints the secret nor credentials a URL may carry.
impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("url", &redacted_url(&self.url))
            .field("timeout_ms", &self.timeout_ms)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

impl Backend {
    /// The namespace's backend; `None` without `rpc_url`. The config was checked: errors here are the HTTP
    /// client's.
    pub fn new(c: &NamespaceConfig) -> Result<Option<Self>, String> {
        let (Some(url), Some(secret)) = (&c.rpc_url, &c.rpc_secret) else {
            return Ok(None);
        };
        let secret = secret
            .parse::<Secret>()
            .map_err(|e| format!("`rpc_secret` {e}"))?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(c.rpc_timeout_ms()))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("rpc_url: {e}"))?;
        let events = c
            .rpc_events
            .iter()
            .flatten()
            .map(|name| match name.strip_suffix('*') {
                Some(prefix) => EventPattern::Prefix(prefix.to_owned()),
                None => EventPattern::Exact(name.clone()),
            })
            .collect();
        Ok(Some(Self {
            client,
            url: url.clone(),
            secret,
            timeout_ms: c.rpc_timeout_ms(),
            events,
        }))
    }

    /// Whether `event` goes to the backend (the caller still keeps the server's own names out).
    pub fn takes(&self, event: &str) -> bool {
        self.events.iter().any(|p| match p {
            EventPattern::Exact(name) => name == event,
            EventPattern::Prefix(prefix) => event.starts_with(prefix.as_str()),
        })
    }

    pub fn url(&self) -> String {
        redacted_url(&self.url)
    }

    /// `POST`s `call`, signed, and reads the answer.
    pub async fn call(&self, call: &Call<'_>) -> Result<Answer, Failure> {
        let body = serde_json::to_vec(call).map_err(|_| Failure::NotJson)?;
        let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut request = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        for (name, value) in self.secret.headers(&id, timestamp, &body) {
            request = request.header(name, value);
        }
        let mut res = match request.body(body).send().await {
            Ok(res) => res,
            Err(e) if e.is_timeout() => return Err(Failure::Timeout(self.timeout_ms)),
            Err(_) => return Err(Failure::Unreachable),
        };
        if !res.status().is_success() {
            return Err(Failure::Status(res.status().as_u16()));
        }
        let mut answer = Vec::new();
        loop {
            match res.chunk().await {
                Ok(Some(chunk)) if answer.len() + chunk.len() <= MAX_ANSWER_BYTES => {
                    answer.extend_from_slice(&chunk)
                }
                Ok(Some(_)) => return Err(Failure::TooLarge),
                Ok(None) => break,
                Err(e) if e.is_timeout() => return Err(Failure::Timeout(self.timeout_ms)),
                Err(_) => return Err(Failure::Unreachable),
            }
        }
        parse(&answer)
    }
}

/// An answer's ack and actions. An empty body (`204`) acks `null`.
pub fn parse(body: &[u8]) -> Result<Answer, Failure> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Answer {
            ack: Value::Null,
            actions: Actions::default(),
        });
    }
    let value: Value = serde_json::from_slice(body).map_err(|_| Failure::NotJson)?;
    let mut object = match value {
        Value::Object(o) if o.len() == 2 && o.contains_key("ack") && o.contains_key("actions") => o,
        plain => {
            return Ok(Answer {
                ack: plain,
                actions: Actions::default(),
            });
        }
    };
    let actions: Actions = object
        .remove("actions")
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| Failure::Actions(e.to_string()))?
        .unwrap_or_default();
    if actions.join.len() + actions.leave.len() > MAX_ACTION_ROOMS {
        return Err(Failure::Actions(format!(
            "at most {MAX_ACTION_ROOMS} rooms to join and leave"
        )));
    }
    for room in actions.join.iter().chain(&actions.leave) {
        validate::room(room).map_err(|e| Failure::Actions(format!("{room:?}: {e}")))?;
    }
    Ok(Answer {
        ack: object.remove("ack").unwrap_or_default(),
        actions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(text: &str) -> NamespaceConfig {
        let full = format!(
            "[[namespace]]\nname = \"/\"\nrpc_url = \"http://127.0.0.1:1/rpc\"\n\
             rpc_secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n{text}"
        );
        crate::config::file::parse(&full, "t", std::path::Path::new("."))
            .unwrap()
            .namespaces
            .remove(0)
            .config
    }

    #[test]
    fn takes_exact_names_and_prefixes_only() {
        let b = Backend::new(&config("rpc_events = [\"order:create\", \"profile:*\"]\n"))
            .unwrap()
            .unwrap();
        assert!(b.takes("order:create"));
        assert!(!b.takes("order:create2"));
        assert!(b.takes("profile:save"));
        assert!(b.takes("profile:"));
        assert!(!b.takes("chat"));
        let none = Backend::new(&config("")).unwrap().unwrap();
        assert!(!none.takes("order:create"));
    }

    #[test]
    fn plain_answers_are_the_ack() {
        for plain in [
            json!({"ok": true}),
            json!([1, 2]),
            json!("text"),
            json!({"ack": 1}),
            json!({"ack": 1, "actions": {}, "more": 2}),
        ] {
            let a = parse(&serde_json::to_vec(&plain).unwrap()).unwrap();
            assert_eq!(a.ack, plain);
            assert_eq!(a.actions, Actions::default());
        }
        assert_eq!(parse(b"").unwrap().ack, Value::Null);
        assert_eq!(parse(b"<html>").unwrap_err(), Failure::NotJson);
    }

    #[test]
    fn actions_are_recognised_and_checked() {
        let a = parse(
            br#"{"ack": {"ok": 1}, "actions": {"join": ["a"], "leave": ["b"], "disconnect": true}}"#,
        )
        .unwrap();
        assert_eq!(a.ack, json!({"ok": 1}));
        assert_eq!(a.actions.join, ["a"]);
        assert_eq!(a.actions.leave, ["b"]);
        assert!(a.actions.disconnect);
        for bad in [
            &br#"{"ack": 1, "actions": {"join": ["a/b"]}}"#[..],
            br#"{"ack": 1, "actions": {"join": "a"}}"#,
            br#"{"ack": 1, "actions": {"kick": true}}"#,
            br#"{"ack": 1, "actions": {"leave": ["health"]}}"#,
            br#"{"ack": 1, "actions": 3}"#,
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.kind(), "bad_actions", "{}", String::from_utf8_lossy(bad));
        }
        let many = json!({"ack": 1, "actions": {"join": vec!["r"; MAX_ACTION_ROOMS + 1]}});
        assert!(parse(&serde_json::to_vec(&many).unwrap()).is_err());
    }

    #[test]
    fn failures_never_quote_the_backend() {
        assert_eq!(Failure::Status(500).to_string(), "the backend answered 500");
        assert_eq!(
            Failure::Timeout(200).to_string(),
            "the backend did not answer within 200 ms"
        );
    }
}
