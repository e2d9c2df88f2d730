//! Standard Webhooks signatures (standardwebhooks.com), for every request this server makes to a backend
//! (lifecycle webhooks, client events as RPC): the backend verifies them with the official `standardwebhooks`
//! libraries, so it knows a request came from us, unaltered and recent.
//!
//! A request carries `webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature`:
//! `v1,<base64 of HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`, where the key is the secret's bytes: the base64
//! after `whsec_`.

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The shortest key accepted: a shorter HMAC key is guessable (the libraries generate 24 to 32 bytes).
pub const MIN_KEY_BYTES: usize = 16;

/// Why a configured secret is refused (at start-up).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("must start with `whsec_` followed by base64 (a Standard Webhooks secret)")]
    Prefix,
    #[error("the part after `whsec_` is not base64")]
    Base64,
    #[error("the key is {0} bytes: at least {MIN_KEY_BYTES} are needed")]
    Short(usize),
}

/// A signing secret. Its bytes are never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl std::str::FromStr for Secret {
    type Err = SecretError;

    fn from_str(s: &str) -> Result<Self, SecretError> {
        let encoded = s.strip_prefix("whsec_").ok_or(SecretError::Prefix)?;
        let key = STANDARD.decode(encoded).map_err(|_| SecretError::Base64)?;
        if key.len() < MIN_KEY_BYTES {
            return Err(SecretError::Short(key.len()));
        }
        Ok(Self(key))
    }
}

impl Secret {
    /// The `webhook-signature` header's value for message `id`, sent at `timestamp` (Unix seconds), with `body`.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }

    /// The three headers of a signed request, names and values.
    pub fn headers(&self, id: &str, timestamp: u64, body: &[u8]) -> [(&'static str, String); 3] {
        [
            ("webhook-id", id.to_owned()),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", self.sign(id, timestamp, body)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_the_specifications_example() {
        // The example of the Standard Webhooks specification and its reference libraries' tests.
        let secret: Secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse().unwrap();
        let signature = secret.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn every_part_is_signed() {
        let secret: Secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse().unwrap();
        let base = secret.sign("msg_1", 10, b"{}");
        assert_ne!(base, secret.sign("msg_2", 10, b"{}"));
        assert_ne!(base, secret.sign("msg_1", 11, b"{}"));
        assert_ne!(base, secret.sign("msg_1", 10, b"{ }"));
        let other: Secret = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".parse().unwrap();
        assert_ne!(base, other.sign("msg_1", 10, b"{}"));
        let headers = secret.headers("msg_1", 10, b"{}");
        assert_eq!(headers[0], ("webhook-id", "msg_1".to_owned()));
        assert_eq!(headers[1], ("webhook-timestamp", "10".to_owned()));
        assert_eq!(headers[2], ("webhook-signature", base));
    }

    #[test]
    fn refuses_secrets_that_are_not_standard_webhooks_ones() {
        assert_eq!(
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse::<Secret>(),
            Err(SecretError::Prefix)
        );
        assert_eq!(
            "whsec_not base64!".parse::<Secret>(),
            Err(SecretError::Base64)
        );
        assert_eq!(
            "whsec_c2hvcnQ=".parse::<Secret>(),
            Err(SecretError::Short(5))
        );
        assert_eq!(
            format!(
                "{:?}",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
                    .parse::<Secret>()
                    .unwrap()
            ),
            "Secret(..)"
        );
    }
}
