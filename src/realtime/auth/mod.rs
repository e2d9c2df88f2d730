//! Who is connecting: each namespace's way to verify a handshake, one module per kind.
//!
//! A [`Verifier`] takes what the client sent ([`Handshake`]: the auth object, the query string, the headers)
//! and says who it is ([`Verified`]) or why not ([`AuthError`], whose text the client reads in its
//! `connect_error`).

pub mod backoff;
mod credentials;
pub mod jwt;
mod webhook;

use std::{net::IpAddr, sync::Arc};

use axum::http::HeaderMap;
use serde_json::Value;

pub use backoff::FailedLogins;
pub use credentials::Credentials;
pub use jwt::Jwt;
pub use webhook::Webhook;

use crate::{
    config::file::{AuthKind, CheckedNamespace},
    domain::validate::{self, Invalid},
    telemetry::metrics::Metrics,
};

/// What a client sent with its Socket.IO handshake.
#[derive(Debug, Clone, Copy)]
pub struct Handshake<'a> {
    /// The Engine.IO request's query string.
    pub query: Option<&'a str>,
    /// The Socket.IO `auth` object (`CONNECT` payload).
    pub auth: Option<&'a Value>,
    pub headers: &'a HeaderMap,
    /// The client's address, for [`FailedLogins`]; `None` when unknown (never held back then).
    pub address: Option<IpAddr>,
    /// A browser opened the request from a page whose origin is not allowed
    /// ([`crate::realtime::admission::Admission::cross_site`]): a cookie, which the browser sends whoever opened
    /// the request, proves nothing then.
    pub cross_site: bool,
}

impl Handshake<'_> {
    /// A string field from the `auth` object first, then the query string; `None` when absent.
    pub fn field(&self, name: &'static str) -> Result<Option<String>, Invalid> {
        if let Some(v) = self.auth.and_then(|a| a.get(name)) {
            return match v {
                Value::String(s) => Ok(Some(s.clone())),
                Value::Null => Ok(None),
                _ => Err(Invalid::NotString(name)),
            };
        }
        let mut found = None;
        for (k, v) in form_urlencoded::parse(self.query.unwrap_or("").as_bytes()) {
            if k == name {
                if found.is_some() {
                    return Err(Invalid::Repeated(name));
                }
                found = Some(v.into_owned());
            }
        }
        Ok(found)
    }

    /// [`Self::field`], required.
    pub fn required(&self, name: &'static str) -> Result<String, Invalid> {
        self.field(name)?.ok_or(Invalid::Missing(name))
    }
}

/// Who the client is, as far as the namespace's auth kind can tell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verified {
    pub id_user: Option<String>,
    /// A session id from a verified source (the JWT's session claim), or claimed in `claim` namespaces.
    pub session: Option<String>,
    /// Rooms the auth webhook said the socket joins.
    pub rooms: Vec<String>,
    /// A JWT's claims, for the gateway's envelopes (`context.headers.jwt`).
    pub claims: Option<std::sync::Arc<serde_json::Map<String, serde_json::Value>>>,
}

/// Why a handshake was refused. The Display text is the client's `connect_error` message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Wrong or missing credentials: the exact message the forwarding service's clients expect.
    #[error("UNAUTHORIZED")]
    Unauthorized,
    /// A missing, expired, forged or otherwise unusable JWT.
    #[error("UNAUTHORIZED: {0}")]
    Token(&'static str),
    /// The token is in a cookie, and the page that opened the connection is another site's (cross-site
    /// WebSocket hijacking).
    #[error(
        "UNAUTHORIZED: a token in a cookie is not accepted from this Origin (another site's page); send it in \
         `auth.token`, `?token=` or `Authorization: Bearer`"
    )]
    CrossSite,
    /// The auth webhook said no (401/403), or there was no token to ask it about: the reliable push service's message.
    #[error("Authentication error")]
    Rejected,
    /// The auth webhook could not give an answer: down, slow, or talking nonsense.
    #[error("auth service failed: {0}")]
    Webhook(webhook::Failure),
    /// Too many password checks waiting: the node protects its CPU.
    #[error("server busy checking passwords: retry shortly")]
    Busy,
    /// The client's address failed too many logins lately: refused without a check.
    #[error(transparent)]
    Backoff(#[from] backoff::Backoff),
    #[error(transparent)]
    Invalid(#[from] Invalid),
}

impl AuthError {
    /// A label for `handshakes_refused_total{reason}`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unauthorized | Self::Token(_) | Self::Rejected => "unauthorized",
            Self::CrossSite => "origin",
            Self::Webhook(_) => "auth_service",
            Self::Busy => "busy",
            Self::Backoff(_) => "login_backoff",
            Self::Invalid(e) => e.kind(),
        }
    }
}

/// One namespace's way to verify handshakes.
#[derive(Debug)]
pub enum Verifier {
    None,
    Claim,
    Credentials(Credentials),
    Jwt(Box<Jwt>),
    Webhook(Webhook),
}

impl Verifier {
    /// Builds the verifier a checked namespace table describes (reads its credentials file or key).
    /// Password checks count their failures in `logins` (one per node, shared with the admin UI).
    pub fn build(
        ns: &CheckedNamespace,
        metrics: &Arc<Metrics>,
        logins: &Arc<FailedLogins>,
    ) -> Result<Self, String> {
        let c = &ns.config;
        Ok(match c.auth {
            AuthKind::None => Self::None,
            AuthKind::Claim => Self::Claim,
            AuthKind::Credentials => Self::Credentials(
                Credentials::load(
                    c.credentials_file.as_deref().expect("checked"),
                    c.allow_plain_passwords,
                )?
                .counting_failures_in(logins.clone()),
            ),
            AuthKind::Jwt => Self::Jwt(Box::new(Jwt::new(c)?)),
            AuthKind::Webhook => Self::Webhook(Webhook::new(c, metrics.clone())?),
        })
    }

    pub async fn verify(&self, hs: Handshake<'_>) -> Result<Verified, AuthError> {
        match self {
            Self::None => Ok(Verified {
                id_user: hs.field("id_user")?.map(checked_user).transpose()?,
                ..Verified::default()
            }),
            Self::Claim => Ok(Verified {
                id_user: Some(checked_user(hs.required("id_user")?)?),
                ..Verified::default()
            }),
            Self::Credentials(c) => c.verify(hs).await,
            Self::Jwt(j) => j.verify(hs),
            Self::Webhook(w) => w.verify(hs).await,
        }
    }

    /// The auth kind's name, as in the config file (for logs).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Claim => "claim",
            Self::Credentials(_) => "credentials",
            Self::Jwt(_) => "jwt",
            Self::Webhook(_) => "webhook",
        }
    }

    /// Whether the identity is proven (a password, a signed token, the auth service), not just claimed.
    pub fn verifies_identity(&self) -> bool {
        matches!(self, Self::Credentials(_) | Self::Jwt(_) | Self::Webhook(_))
    }

    /// Whether verifying waits (a password hash, the auth service): such handshakes take a place among those
    /// being verified ([`crate::realtime::admission::Admission::verifying`]); the others are decided at once.
    pub fn waits(&self) -> bool {
        matches!(self, Self::Credentials(_) | Self::Webhook(_))
    }

    pub fn is_webhook(&self) -> bool {
        matches!(self, Self::Webhook(_))
    }

    /// Whether the client may change its `id_user` or session after the handshake (only what it claimed).
    pub fn is_claim(&self) -> bool {
        matches!(self, Self::Claim)
    }

    /// Whether identities are verified (a token, a password, the auth webhook), not only claimed.
    pub fn verifies(&self) -> bool {
        !matches!(self, Self::None | Self::Claim)
    }
}

fn checked_user(id: String) -> Result<String, Invalid> {
    validate::id_user(&id)?;
    Ok(id)
}

/// Session ids follow the user id rules (they become part of a room name, checked again there).
pub fn checked_session(id: String) -> Result<String, Invalid> {
    validate::id_user(&id).map_err(|e| match e {
        Invalid::Empty(_) => Invalid::Empty("session_id"),
        Invalid::TooLong(_, n) => Invalid::TooLong("session_id", n),
        Invalid::BadChar(_) => Invalid::BadChar("session_id"),
        Invalid::Whitespace(_) => Invalid::Whitespace("session_id"),
        other => other,
    })?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hs<'a>(query: &'a str, auth: Option<&'a Value>, headers: &'a HeaderMap) -> Handshake<'a> {
        Handshake {
            query: Some(query),
            auth,
            headers,
            address: None,
            cross_site: false,
        }
    }

    #[tokio::test]
    async fn claim_and_none() {
        let h = HeaderMap::new();
        let v = Verifier::Claim
            .verify(hs("id_user=foo&session_id=s1", None, &h))
            .await
            .unwrap();
        assert_eq!(v.id_user.as_deref(), Some("foo"));
        // A claimed session is read by the namespaces with session rooms, not here.
        assert_eq!(v.session, None);
        let e = Verifier::Claim.verify(hs("", None, &h)).await.unwrap_err();
        assert_eq!(e.to_string(), "id_user is required");
        let v = Verifier::None.verify(hs("", None, &h)).await.unwrap();
        assert_eq!(v, Verified::default());
        let auth = json!({"id_user": "a\u{7}"});
        let e = Verifier::None
            .verify(hs("", Some(&auth), &h))
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "id_user contains a character that is not allowed"
        );
    }

    #[test]
    fn fields_come_from_auth_then_query() {
        let h = HeaderMap::new();
        let auth = json!({"room": "A", "n": 1});
        let x = hs("room=Q&id_user=u&id_user=v", Some(&auth), &h);
        assert_eq!(x.field("room").unwrap().as_deref(), Some("A"));
        assert_eq!(x.field("id_user"), Err(Invalid::Repeated("id_user")));
        assert_eq!(x.field("n"), Err(Invalid::NotString("n")));
        assert_eq!(x.field("absent"), Ok(None));
        assert_eq!(x.required("absent"), Err(Invalid::Missing("absent")));
    }
}
