//! Comparing secrets (API tokens, API keys, plain passwords) without leaking them through timing.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Whether `a` and `b` are equal, in time that depends on neither their contents nor their lengths: both are
/// hashed to 32 bytes first, then compared in constant time.
pub fn equal(a: &[u8], b: &[u8]) -> bool {
    let (a, b) = (Sha256::digest(a), Sha256::digest(b));
    a.ct_eq(&b).into()
}

/// `url` without the user and password it may carry (`https://user:pass@host/` is a common way to give a backend
/// its credentials), for logs and `Debug`.
pub fn redacted_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        Err(_) => "<invalid url>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(
            redacted_url("https://user:pa55@backend.internal/hooks?x=1"),
            "https://backend.internal/hooks?x=1"
        );
        assert_eq!(redacted_url("not a url"), "<invalid url>");
    }

    #[test]
    fn compares() {
        assert!(equal(b"token", b"token"));
        assert!(!equal(b"token", b"token2"));
        assert!(!equal(b"", b"x"));
        assert!(equal(b"", b""));
    }
}
