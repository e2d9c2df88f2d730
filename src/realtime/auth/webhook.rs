//! `auth = "webhook"` (as in the reliable push service): the node asks the application's auth URL about the client's
//! token.
//!
//! `GET auth_url` with `Authorization: {auth_scheme} {token}`. A `200` whose JSON body is a list of room names
//! (the reliable push service's answer) or `{"rooms": [...], "id_user": "..."}` admits the socket into those rooms;
//! `401`/`403` refuse it with the reliable push service's `Authentication error`; anything else (timeout, refused
//! connection, another status, a body that is not a list of valid room names) refuses it with `auth service failed:
//! ...`, counted in `/metrics` (`auth_webhook_failures_total{reason}`).

use std::{sync::Arc, time::Duration};

use serde::Deserialize;

use super::{AuthError, Handshake, Verified};
use crate::{
    config::file::NamespaceConfig, domain::secret::redacted_url, domain::validate,
    telemetry::metrics::Metrics, telemetry::metrics::Reason,
};

/// The largest answer read from the webhook.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// The most rooms one socket may be put in.
const MAX_ROOMS: usize = 256;

/// Why the webhook gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("no answer within {0} ms")]
    Timeout(u64),
    #[error("cannot reach it")]
    Unreachable,
    #[error("it answered {0}")]
    Status(u16),
    #[error("its answer is not a list of valid room names")]
    Body,
}

impl Failure {
    fn kind(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Unreachable => "unreachable",
            Self::Status(_) => "status",
            Self::Body => "body",
        }
    }
}

/// The webhook's answer: the reliable push service's list of rooms, or an object that may also name the user.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Answer {
    Rooms(Vec<String>),
    Object {
        rooms: Vec<String>,
        #[serde(default, alias = "user_id")]
        id_user: Option<UserId>,
    },
}

/// A user id as JSON gives it: a string or a number.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum UserId {
    Text(String),
    Number(serde_json::Number),
}

pub struct Webhook {
    client: reqwest::Client,
    url: String,
    scheme: String,
    timeout_ms: u64,
    metrics: Arc<Metrics>,
}

/// Never prints credentials a URL may carry.
impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &redacted_url(&self.url))
            .field("timeout_ms", &self.timeout_ms)
            .finish_non_exhaustive()
    }
}

impl Webhook {
    pub fn new(c: &NamespaceConfig, metrics: Arc<Metrics>) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(c.auth_timeout_ms()))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("auth_url: {e}"))?;
        Ok(Self {
            client,
            url: c.auth_url.clone().expect("checked"),
            scheme: c.auth_scheme().to_owned(),
            timeout_ms: c.auth_timeout_ms(),
            metrics,
        })
    }

    pub async fn verify(&self, hs: Handshake<'_>) -> Result<Verified, AuthError> {
        // A token that cannot be sent in a header (control characters) is no token.
        let token = hs.field("token")?.filter(|t| {
            !t.is_empty()
                && axum::http::HeaderValue::from_str(&format!("{} {t}", self.scheme)).is_ok()
        });
        let Some(token) = token else {
            return Err(AuthError::Rejected);
        };
        self.ask(&token).await.inspect_err(|e| {
            if let AuthError::Webhook(f) = e {
                tracing::warn!(url = %redacted_url(&self.url), error = %f, "auth webhook failed");
                let reason = Reason { reason: f.kind() };
                self.metrics
                    .auth_webhook_failures
                    .get_or_create(&reason)
                    .inc();
            }
        })
    }

    async fn ask(&self, token: &str) -> Result<Verified, AuthError> {
        let fail = |f| AuthError::Webhook(f);
        let sent = self
            .client
            .get(&self.url)
            .header(
                axum::http::header::AUTHORIZATION,
                format!("{} {token}", self.scheme),
            )
            .send()
            .await;
        let mut res = match sent {
            Ok(res) => res,
            Err(e) if e.is_timeout() => return Err(fail(Failure::Timeout(self.timeout_ms))),
            Err(_) => return Err(fail(Failure::Unreachable)),
        };
        match res.status().as_u16() {
            200 => {}
            401 | 403 => return Err(AuthError::Rejected),
            other => return Err(fail(Failure::Status(other))),
        }
        let mut body = Vec::new();
        loop {
            match res.chunk().await {
                Ok(Some(chunk)) if body.len() + chunk.len() <= MAX_BODY_BYTES => {
                    body.extend_from_slice(&chunk)
                }
                Ok(Some(_)) => return Err(fail(Failure::Body)),
                Ok(None) => break,
                Err(e) if e.is_timeout() => return Err(fail(Failure::Timeout(self.timeout_ms))),
                Err(_) => return Err(fail(Failure::Unreachable)),
            }
        }
        parse(&body).ok_or(fail(Failure::Body))
    }
}

/// The rooms (and user) of a `200` answer, if every name is valid.
fn parse(body: &[u8]) -> Option<Verified> {
    let (rooms, id_user) = match serde_json::from_slice(body).ok()? {
        Answer::Rooms(rooms) => (rooms, None),
        Answer::Object { rooms, id_user } => (
            rooms,
            id_user.map(|u| match u {
                UserId::Text(s) => s,
                UserId::Number(n) => n.to_string(),
            }),
        ),
    };
    if rooms.len() > MAX_ROOMS || rooms.iter().any(|r| validate::room(r).is_err()) {
        return None;
    }
    if let Some(u) = &id_user {
        validate::id_user(u).ok()?;
    }
    Some(Verified {
        id_user,
        session: None,
        rooms,
        claims: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_push_services_answers_and_objects() {
        let v = parse(br#"["user_1", "staff"]"#).unwrap();
        assert_eq!(v.rooms, ["user_1", "staff"]);
        assert_eq!(v.id_user, None);
        let v = parse(br#"{"rooms": ["user_1"], "id_user": "1"}"#).unwrap();
        assert_eq!(v.id_user.as_deref(), Some("1"));
        let v = parse(br#"{"rooms": [], "user_id": 7}"#).unwrap();
        assert_eq!(v.id_user.as_deref(), Some("7"));
        for bad in [
            &br#"{"room": []}"#[..],
            br#"["a/b"]"#,
            br#"[1, 2]"#,
            br#""user_1""#,
            br#"[""]"#,
            b"<html>",
            br#"{"rooms": ["a"], "id_user": "x\u0007"}"#,
        ] {
            assert!(parse(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
        let many = serde_json::to_vec(&vec!["r"; MAX_ROOMS + 1]).unwrap();
        assert!(parse(&many).is_none());
    }
}
