//! Errors at the edges: start-up failures, and the one place where request errors become HTTP responses.

use axum::{
    Json,
    http::{HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};

use crate::{
    domain::validate::Invalid,
    net::tls::TlsError,
    redis::{Failure, RedisError},
};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid NODE_ID: {0}")]
    NodeId(Invalid),
    #[error("invalid setting: {0}")]
    Config(String),
    /// A mistake in the config file or a file it names: the message names the file and the line.
    #[error("bad config file: {0}")]
    ConfigFile(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error("socket.io adapter: {0}")]
    Adapter(String),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

impl StartError {
    /// Whether trying again later may succeed: Redis refused or dropped the connection, or timed out. A bad URL,
    /// bad credentials or a TLS failure are not retried: they need a person.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Redis(RedisError::Connect {
                failure: Failure::Unreachable,
                ..
            })
        )
    }
}

/// A request that cannot be served. Rendered as `{"error": "..."}` with a fitting status.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("invalid room: {0}")]
    BadRoom(Invalid),
    #[error("invalid room: the path is not valid percent-encoded UTF-8")]
    BadPath,
    #[error("invalid namespace: {0}")]
    BadNamespace(Invalid),
    #[error("invalid query string: {0}")]
    BadQuery(String),
    #[error("unknown namespace: {0}")]
    UnknownNamespace(String),
    /// A field of a request (query parameter or body) is missing or wrong: the message names it.
    #[error("invalid {0}: {1}")]
    BadField(&'static str, String),
    /// `POST /send` to a site that does not exist or with the wrong key: the same answer, so that the sites
    /// cannot be discovered.
    #[error("unknown site or wrong API key")]
    UnknownSite,
    #[error("the body must be application/json or application/x-www-form-urlencoded")]
    UnsupportedMediaType,
    #[error("the body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    PushFailed(String),
    #[error("not found")]
    NotFound,
    #[error("method not allowed: the Allow header lists the methods of this path")]
    MethodNotAllowed,
    #[error("this API needs a bearer token: Authorization: Bearer <API_TOKEN>")]
    Unauthorized,
    #[error(transparent)]
    Refused(#[from] crate::realtime::admission::Refused),
    /// `QUERY_RATE`: this client asked too many cluster queries; it may ask again in `retry_after` seconds.
    #[error("too many queries from this address (QUERY_RATE per second): retry in {retry_after} s")]
    TooManyQueries { retry_after: u64 },
    #[error(
        "the socket.io client bundle is not installed on this server (run scripts/fetch-client.sh)"
    )]
    ClientBundleMissing,
}

impl AppError {
    fn status(&self) -> StatusCode {
        match self {
            Self::BadRoom(_)
            | Self::BadPath
            | Self::BadNamespace(_)
            | Self::BadQuery(_)
            | Self::BadField(..) => StatusCode::BAD_REQUEST,
            Self::UnknownSite => StatusCode::UNAUTHORIZED,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::PushFailed(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotFound | Self::UnknownNamespace(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Refused(_) | Self::TooManyQueries { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::ClientBundleMissing => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "error": self.to_string() }));
        let mut res = (self.status(), body).into_response();
        let extra = match self {
            Self::Unauthorized => Some((
                axum::http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            )),
            Self::Refused(_) => Some((
                axum::http::header::RETRY_AFTER,
                HeaderValue::from_static("1"),
            )),
            Self::TooManyQueries { retry_after } => {
                Some((axum::http::header::RETRY_AFTER, retry_after.into()))
            }
            // The rest of the body is never read, so the connection cannot carry another request: say so, or a
            // client would send its next request on a connection the server is closing.
            Self::PayloadTooLarge(_) => Some((
                axum::http::header::CONNECTION,
                HeaderValue::from_static("close"),
            )),
            _ => None,
        };
        if let Some((name, value)) = extra {
            res.headers_mut().insert(name, value);
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fred::error::{Error, ErrorKind};

    fn connect(kind: ErrorKind, details: &str) -> StartError {
        let endpoint = crate::redis::Endpoint::parse("redis://x", None).unwrap();
        StartError::Redis(crate::redis::connect_err(
            &endpoint,
            Error::new(kind, details.to_owned()),
        ))
    }

    #[test]
    fn retries_only_what_can_heal() {
        let refused = r#"Os { code: 111, kind: ConnectionRefused, message: "Connection refused" }"#;
        assert!(connect(ErrorKind::IO, refused).is_transient());
        assert!(connect(ErrorKind::Timeout, "").is_transient());
        let bad_cert = "Custom { kind: InvalidData, error: InvalidCertificate(UnknownIssuer) }";
        assert!(!connect(ErrorKind::IO, bad_cert).is_transient());
        assert!(!connect(ErrorKind::Auth, "WRONGPASS").is_transient());
        let url = StartError::Redis(RedisError::Url {
            url: "x".into(),
            reason: "y".into(),
        });
        assert!(!url.is_transient());
    }
}
