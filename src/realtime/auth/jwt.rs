//! `auth = "jwt"`: a signed token, from `auth.token`, the `token` query field, `Authorization: Bearer` or a
//! cookie. The signature, `exp` (required) and `nbf` are checked, with 30 s of leeway for clock skew.

use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde_json::{Map, Value};

use super::{AuthError, Handshake, Verified, checked_session};
use crate::{config::file::NamespaceConfig, domain::validate};

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
const LEEWAY_S: u64 = 30;

pub struct Jwt {
    key: DecodingKey,
    validation: Validation,
    user_claim: String,
    session_claim: String,
    cookie: Option<String>,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwt")
            .field("algorithms", &self.validation.algorithms)
            .field("user_claim", &self.user_claim)
            .finish_non_exhaustive()
    }
}

/// Where a [`Jwt`] verifier's settings come from: a `[[namespace]]` table or `[gateway]`.
#[derive(Debug, Clone, Copy)]
pub struct JwtKeys<'a> {
    pub secret: Option<&'a str>,
    pub public_key: Option<&'a std::path::Path>,
    pub user_claim: &'a str,
    pub session_claim: &'a str,
    pub audience: Option<&'a str>,
    pub issuer: Option<&'a str>,
    pub cookie: Option<&'a str>,
}

impl<'a> JwtKeys<'a> {
    pub fn of_namespace(c: &'a NamespaceConfig) -> Self {
        Self {
            secret: c.jwt_secret.as_deref(),
            public_key: c.jwt_public_key.as_deref(),
            user_claim: c.user_claim(),
            session_claim: c.session_claim(),
            audience: c.jwt_audience.as_deref(),
            issuer: c.jwt_issuer.as_deref(),
            cookie: c.jwt_cookie.as_deref(),
        }
    }
}

impl Jwt {
    pub fn new(c: &NamespaceConfig) -> Result<Self, String> {
        Self::with_keys(JwtKeys::of_namespace(c))
    }

    pub fn with_keys(c: JwtKeys<'_>) -> Result<Self, String> {
        let (key, algorithm) = match (c.secret, c.public_key) {
            (Some(secret), _) => (
                DecodingKey::from_secret(secret.as_bytes()),
                Algorithm::HS256,
            ),
            (None, Some(path)) => {
                let file = path.display();
                let pem = std::fs::read(path)
                    .map_err(|e| format!("jwt_public_key {file}: cannot read it: {e}"))?;
                match DecodingKey::from_rsa_pem(&pem) {
                    Ok(key) => (key, Algorithm::RS256),
                    Err(_) => (
                        DecodingKey::from_ec_pem(&pem).map_err(|_| {
                            format!("jwt_public_key {file}: not a PEM RSA or EC (P-256) public key")
                        })?,
                        Algorithm::ES256,
                    ),
                }
            }
            (None, None) => return Err("`jwt_secret` or `jwt_public_key` is required".into()),
        };
        let mut validation = Validation::new(algorithm);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_S;
        // Identity providers put an audience in most tokens (Keycloak's ID tokens do): check it only when the
        // namespace names one, as for the issuer.
        match c.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".into());
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = c.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        Ok(Self {
            key,
            validation,
            user_claim: c.user_claim.to_owned(),
            session_claim: c.session_claim.to_owned(),
            cookie: c.cookie.map(str::to_owned),
        })
    }

    pub fn verify(&self, hs: Handshake<'_>) -> Result<Verified, AuthError> {
        let token = self.token(hs)?.ok_or(AuthError::Token("no token"))?;
        let data = jsonwebtoken::decode::<Map<String, Value>>(&token, &self.key, &self.validation)
            .map_err(|e| {
                AuthError::Token(match e.kind() {
                    ErrorKind::ExpiredSignature => "token expired",
                    ErrorKind::ImmatureSignature => "token not valid yet",
                    ErrorKind::InvalidSignature => "invalid signature",
                    ErrorKind::InvalidAlgorithm => "algorithm not accepted",
                    ErrorKind::MissingRequiredClaim(c) if c == "exp" => {
                        "the token has no exp claim"
                    }
                    ErrorKind::MissingRequiredClaim(_) => "the token lacks a required claim",
                    ErrorKind::InvalidAudience => "wrong audience",
                    ErrorKind::InvalidIssuer => "wrong issuer",
                    _ => "malformed token",
                })
            })?;
        let claims = data.claims;
        let id_user = claim(&claims, &self.user_claim)
            .ok_or(AuthError::Token("the token has no usable user claim"))?;
        validate::id_user(&id_user)
            .map_err(|_| AuthError::Token("the user claim is not a valid id"))?;
        let session = claim(&claims, &self.session_claim)
            .map(checked_session)
            .transpose()?;
        Ok(Verified {
            id_user: Some(id_user),
            session,
            rooms: vec![],
            claims: Some(std::sync::Arc::new(claims)),
        })
    }

    /// The token from the first place that has one: `auth.token`, `?token=`, `Authorization: Bearer`, cookie
    /// (not from a cross-site page: [`Handshake::cross_site`]).
    fn token(&self, hs: Handshake<'_>) -> Result<Option<String>, AuthError> {
        if let Some(t) = hs.field("token")? {
            return Ok(Some(t));
        }
        let header = |name| {
            hs.headers
                .get_all(name)
                .into_iter()
                .filter_map(|v| v.to_str().ok())
        };
        if let Some(t) = header(axum::http::header::AUTHORIZATION).find_map(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        }) {
            return Ok(Some(t.trim().to_owned()));
        }
        let Some(cookie) = &self.cookie else {
            return Ok(None);
        };
        let found = header(axum::http::header::COOKIE)
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| k == cookie)
            .map(|(_, v)| v.to_owned());
        match found {
            // The victim's browser sends its cookie to us from the attacker's page too.
            Some(_) if hs.cross_site => Err(AuthError::CrossSite),
            found => Ok(found),
        }
    }
}

/// A claim as a string: strings as they are, numbers written out (numeric user ids are common).
fn claim(claims: &Map<String, Value>, name: &str) -> Option<String> {
    match claims.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef-secret";

    fn config(extra: &str) -> NamespaceConfig {
        let text = format!(
            "[[namespace]]\nname = \"/\"\nauth = \"jwt\"\njwt_secret = \"{SECRET}\"\n{extra}"
        );
        crate::config::file::parse(&text, "t.toml", std::path::Path::new("."))
            .unwrap()
            .namespaces
            .remove(0)
            .config
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn token(claims: Value, secret: &str) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn verify(j: &Jwt, query: &str, headers: &HeaderMap) -> Result<Verified, AuthError> {
        j.verify(Handshake {
            query: Some(query),
            auth: None,
            headers,
            address: None,
            cross_site: false,
        })
    }

    #[test]
    fn accepts_good_tokens_from_every_place() {
        let j = Jwt::new(&config("jwt_cookie = \"ID_TOKEN\"")).unwrap();
        let t = token(
            json!({"sub": "alice", "sid": "s-1", "exp": now() + 600}),
            SECRET,
        );
        let none = HeaderMap::new();
        let v = verify(&j, &format!("token={t}"), &none).unwrap();
        assert_eq!(v.id_user.as_deref(), Some("alice"));
        assert_eq!(v.session.as_deref(), Some("s-1"));
        let mut h = HeaderMap::new();
        h.insert("authorization", format!("Bearer {t}").parse().unwrap());
        assert!(verify(&j, "", &h).is_ok());
        let mut h = HeaderMap::new();
        h.insert("cookie", format!("a=b; ID_TOKEN={t}").parse().unwrap());
        assert!(verify(&j, "", &h).is_ok());
        let numeric = token(json!({"sub": 42, "exp": now() + 600}), SECRET);
        let v = verify(&j, &format!("token={numeric}"), &none).unwrap();
        assert_eq!(v.id_user.as_deref(), Some("42"));
    }

    /// Cross-site WebSocket hijacking: from another site's page the cookie's token is refused, saying why; a
    /// token the page had to know (query, header) is not a cookie and still counts.
    #[test]
    fn a_cookie_from_a_cross_site_page_is_refused() {
        let j = Jwt::new(&config("jwt_cookie = \"ID_TOKEN\"")).unwrap();
        let t = token(json!({"sub": "alice", "exp": now() + 600}), SECRET);
        let mut h = HeaderMap::new();
        h.insert("cookie", format!("ID_TOKEN={t}").parse().unwrap());
        let hs = |query, cross_site| Handshake {
            query: Some(query),
            auth: None,
            headers: &h,
            address: None,
            cross_site,
        };
        assert!(j.verify(hs("", false)).is_ok());
        let e = j.verify(hs("", true)).unwrap_err();
        assert_eq!(e, AuthError::CrossSite);
        assert!(e.to_string().contains("cookie"), "{e}");
        assert!(j.verify(hs(&format!("token={t}"), true)).is_ok());
        let mut other = HeaderMap::new();
        other.insert("cookie", "theme=dark".parse().unwrap());
        let no_cookie = Handshake {
            query: None,
            auth: None,
            headers: &other,
            address: None,
            cross_site: true,
        };
        assert_eq!(
            j.verify(no_cookie).unwrap_err(),
            AuthError::Token("no token")
        );
    }

    #[test]
    fn refuses_bad_tokens_with_reasons() {
        let j = Jwt::new(&config("")).unwrap();
        let none = HeaderMap::new();
        let err = |t: String| {
            verify(&j, &format!("token={t}"), &none)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            verify(&j, "", &none).unwrap_err().to_string(),
            "UNAUTHORIZED: no token"
        );
        assert_eq!(
            err(token(json!({"sub": "a", "exp": now() - 3600}), SECRET)),
            "UNAUTHORIZED: token expired"
        );
        assert_eq!(
            err(token(
                json!({"sub": "a", "exp": now() + 600, "nbf": now() + 3600}),
                SECRET
            )),
            "UNAUTHORIZED: token not valid yet"
        );
        assert_eq!(
            err(token(
                json!({"sub": "a", "exp": now() + 600}),
                "another-secret-of-16"
            )),
            "UNAUTHORIZED: invalid signature"
        );
        assert_eq!(
            err(token(json!({"sub": "a"}), SECRET)),
            "UNAUTHORIZED: the token has no exp claim"
        );
        assert_eq!(
            err(token(json!({"name": "a", "exp": now() + 600}), SECRET)),
            "UNAUTHORIZED: the token has no usable user claim"
        );
        assert_eq!(err("not.a.jwt".into()), "UNAUTHORIZED: malformed token");
        // `alg: none` and other algorithms are refused whatever the payload.
        let unsigned = format!(
            "eyJhbGciOiJub25lIn0.{}.",
            "eyJzdWIiOiJhIiwiZXhwIjo5OTk5OTk5OTk5fQ"
        );
        assert!(err(unsigned).starts_with("UNAUTHORIZED: "));
    }

    /// ES256 with a public key file: tokens signed by the matching private key pass, others do not.
    #[test]
    fn public_keys_verify_es256() {
        use aws_lc_rs::{
            rand::SystemRandom,
            signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair},
        };
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        // SubjectPublicKeyInfo for a P-256 key: a fixed DER header, then the uncompressed point.
        let mut spki = vec![
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
        ];
        spki.extend_from_slice(pair.public_key().as_ref());
        use base64::Engine;
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(&spki)
        );
        let path = std::env::temp_dir().join(format!("es256-{}.pem", uuid::Uuid::new_v4()));
        std::fs::write(&path, pem).unwrap();
        let mut c = config("");
        c.jwt_secret = None;
        c.jwt_public_key = Some(path.clone());
        let j = Jwt::new(&c).unwrap();
        std::fs::remove_file(&path).unwrap();
        let claims = json!({"sub": "eve", "exp": now() + 60});
        let signed = encode(
            &Header::new(Algorithm::ES256),
            &claims,
            &EncodingKey::from_ec_der(pkcs8.as_ref()),
        )
        .unwrap();
        let v = verify(&j, &format!("token={signed}"), &HeaderMap::new()).unwrap();
        assert_eq!(v.id_user.as_deref(), Some("eve"));
        // An HS256 token, even with a "secret" equal to the public key, is refused: the algorithm is pinned.
        let hs = token(claims, "whatever-secret-value");
        let e = verify(&j, &format!("token={hs}"), &HeaderMap::new()).unwrap_err();
        assert_eq!(e.to_string(), "UNAUTHORIZED: algorithm not accepted");
    }

    #[test]
    fn audience_and_issuer_only_when_configured() {
        let claims = json!({"sub": "a", "aud": "account", "iss": "https://idp", "exp": now() + 60});
        let t = token(claims, SECRET);
        let none = HeaderMap::new();
        let open = Jwt::new(&config("")).unwrap();
        assert!(
            verify(&open, &format!("token={t}"), &none).is_ok(),
            "aud ignored when not set"
        );
        let strict = Jwt::new(&config(
            "jwt_audience = \"account\"\njwt_issuer = \"https://idp\"",
        ))
        .unwrap();
        assert!(verify(&strict, &format!("token={t}"), &none).is_ok());
        let other = Jwt::new(&config("jwt_audience = \"other\"")).unwrap();
        let e = verify(&other, &format!("token={t}"), &none).unwrap_err();
        assert_eq!(e.to_string(), "UNAUTHORIZED: wrong audience");
        let other = Jwt::new(&config("jwt_issuer = \"https://evil\"")).unwrap();
        let e = verify(&other, &format!("token={t}"), &none).unwrap_err();
        assert_eq!(e.to_string(), "UNAUTHORIZED: wrong issuer");
        let no_aud = token(json!({"sub": "a", "exp": now() + 60}), SECRET);
        let strict = Jwt::new(&config("jwt_audience = \"account\"")).unwrap();
        let e = verify(&strict, &format!("token={no_aud}"), &none).unwrap_err();
        assert_eq!(
            e.to_string(),
            "UNAUTHORIZED: the token lacks a required claim"
        );
    }

    #[test]
    fn user_claim_is_configurable() {
        let j = Jwt::new(&config("user_claim = \"preferred_username\"")).unwrap();
        let t = token(
            json!({"sub": "uuid-1", "preferred_username": "bob", "exp": now() + 60}),
            SECRET,
        );
        let v = verify(&j, &format!("token={t}"), &HeaderMap::new()).unwrap();
        assert_eq!(v.id_user.as_deref(), Some("bob"));
    }
}
