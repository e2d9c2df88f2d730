//! `auth = "credentials"` (as in the forwarding service): `auth: {username, password}` checked against a file of
//! password hashes.
//!
//! Hash checks cost tens of milliseconds of CPU by design, so they run on tokio's blocking pool, on all cores but
//! one at a time (one on a 1- or 2-core machine); a handshake that cannot start its check within [`QUEUE_WAIT`]
//! is refused as busy. The core left free keeps the async workers serving everyone else whatever the flood.
//! Failed checks count against the client's address ([`FailedLogins`]): beyond its allowance, no check at all.

use std::{collections::HashMap, path::Path, sync::Arc, time::Duration};

use serde::Deserialize;
use tokio::sync::Semaphore;

use super::{AuthError, FailedLogins, Handshake, Verified};
use crate::domain::validate;

/// Longest a handshake waits for a free core to check its password.
const QUEUE_WAIT: Duration = Duration::from_secs(8);

/// One entry of the credentials file (the forwarding service's format).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    username: String,
    password: String,
}

#[derive(Clone)]
enum Stored {
    Bcrypt(String),
    Argon2(String),
    /// Only with `allow_plain_passwords`.
    Plain(String),
}

pub struct Credentials {
    users: Arc<HashMap<String, Stored>>,
    /// A hash of a random password at the file's bcrypt cost, checked when the user is unknown so that unknown
    /// users take as long as known ones (no user enumeration by timing).
    dummy: Stored,
    cores: Arc<Semaphore>,
    logins: Arc<FailedLogins>,
}

/// Never prints a hash or a password: only how many users there are.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Reads the file; errors name it and the entry (never a password).
    pub fn load(path: &Path, allow_plain: bool) -> Result<Self, String> {
        let file = path.display();
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("credentials_file {file}: cannot read it: {e}"))?;
        let entries: Vec<Entry> = serde_json::from_str(&text).map_err(|e| {
            format!(
                "credentials_file {file}: not a JSON list of {{\"username\", \"password\"}}: {e}"
            )
        })?;
        let mut users = HashMap::new();
        let mut plain = 0;
        for (i, e) in entries.into_iter().enumerate() {
            validate::id_user(&e.username)
                .map_err(|err| format!("credentials_file {file}: entry {i}: username: {err}"))?;
            let stored = if e.password.starts_with("$2a$")
                || e.password.starts_with("$2b$")
                || e.password.starts_with("$2y$")
            {
                e.password.parse::<bcrypt::HashParts>().map_err(|err| {
                    format!(
                        "credentials_file {file}: user {:?}: bad bcrypt hash: {err}",
                        e.username
                    )
                })?;
                Stored::Bcrypt(e.password)
            } else if e.password.starts_with("$argon2") {
                argon2::PasswordHash::new(&e.password).map_err(|err| {
                    format!(
                        "credentials_file {file}: user {:?}: bad argon2 hash: {err}",
                        e.username
                    )
                })?;
                Stored::Argon2(e.password)
            } else if allow_plain {
                plain += 1;
                Stored::Plain(e.password)
            } else {
                return Err(format!(
                    "credentials_file {file}: user {:?}: the password is not a bcrypt or argon2 hash \
                     (hash it, or set allow_plain_passwords = true while migrating)",
                    e.username
                ));
            };
            if users.insert(e.username.clone(), stored).is_some() {
                return Err(format!(
                    "credentials_file {file}: user {:?} is listed twice",
                    e.username
                ));
            }
        }
        if plain > 0 {
            tracing::warn!(
                file = %file,
                users = plain,
                "credentials file holds plain-text passwords (allow_plain_passwords): hash them with bcrypt"
            );
        }
        let dummy = dummy_like(users.values().next(), &file.to_string())?;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let cores = cores.saturating_sub(1).max(1);
        Ok(Self {
            users: Arc::new(users),
            dummy,
            cores: Arc::new(Semaphore::new(cores)),
            logins: Arc::default(),
        })
    }

    /// Counts failed checks in `logins` and refuses addresses that failed too often (without it: no limit).
    pub fn counting_failures_in(mut self, logins: Arc<FailedLogins>) -> Self {
        self.logins = logins;
        self
    }

    pub async fn verify(&self, hs: Handshake<'_>) -> Result<Verified, AuthError> {
        let field = |name| {
            hs.auth
                .and_then(|a| a.get(name))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        let (Some(username), Some(password)) = (field("username"), field("password")) else {
            return Err(AuthError::Unauthorized);
        };
        self.logins.check(hs.address)?;
        let known = self.users.get(&username);
        let stored = known.unwrap_or(&self.dummy).clone();
        let known = known.is_some();
        let permit = tokio::time::timeout(QUEUE_WAIT, self.cores.clone().acquire_owned())
            .await
            .map_err(|_| AuthError::Busy)?
            .map_err(|_| AuthError::Busy)?;
        // Again now that it is our turn: the failures of those queued before us count.
        self.logins.check(hs.address)?;
        let (logins, address) = (self.logins.clone(), hs.address);
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let ok = check(&stored, &password) && known;
            // Counted before the next check starts (the permit is released after), even if the client left.
            if !ok {
                logins.failed(address);
            }
            ok
        })
        .await
        .unwrap_or(false);
        match ok {
            true => Ok(Verified {
                id_user: Some(username),
                ..Verified::default()
            }),
            false => Err(AuthError::Unauthorized),
        }
    }
}

/// A hash of a random password of the same kind (and bcrypt cost) as the file's entries: checking it costs what
/// checking a real user costs.
fn dummy_like(sample: Option<&Stored>, file: &str) -> Result<Stored, String> {
    let random = uuid::Uuid::new_v4().to_string();
    Ok(match sample {
        Some(Stored::Argon2(hash)) => {
            use argon2::PasswordHasher;
            let params = argon2::PasswordHash::new(hash)
                .ok()
                .and_then(|h| argon2::Params::try_from(&h).ok())
                .unwrap_or_default();
            let hasher =
                argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
            let salt = uuid::Uuid::new_v4();
            Stored::Argon2(
                hasher
                    .hash_password_with_salt(random.as_bytes(), salt.as_bytes())
                    .map_err(|e| format!("credentials_file {file}: {e}"))?
                    .to_string(),
            )
        }
        Some(Stored::Plain(_)) | None => Stored::Plain(random),
        Some(Stored::Bcrypt(hash)) => {
            let cost = hash
                .parse::<bcrypt::HashParts>()
                .map_or(bcrypt::DEFAULT_COST, |p| p.get_cost());
            Stored::Bcrypt(
                bcrypt::hash(random, cost).map_err(|e| format!("credentials_file {file}: {e}"))?,
            )
        }
    })
}

/// Whether `password` matches the stored hash (or plain value).
fn check(stored: &Stored, password: &str) -> bool {
    match stored {
        Stored::Bcrypt(hash) => bcrypt::verify(password, hash).unwrap_or(false),
        Stored::Argon2(hash) => {
            use argon2::PasswordVerifier;
            argon2::PasswordHash::new(hash).is_ok_and(|h| {
                argon2::Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
        }
        Stored::Plain(plain) => crate::domain::secret::equal(plain.as_bytes(), password.as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;
    use serde_json::json;

    fn file(content: &str) -> tempfile_path::TempPath {
        tempfile_path::write(content)
    }

    /// A tiny self-cleaning temp file, enough for these tests.
    mod tempfile_path {
        pub struct TempPath(pub std::path::PathBuf);
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        pub fn write(content: &str) -> TempPath {
            let p = std::env::temp_dir().join(format!("creds-{}.json", uuid::Uuid::new_v4()));
            std::fs::write(&p, content).unwrap();
            TempPath(p)
        }
    }

    async fn login(c: &Credentials, user: &str, pass: &str) -> Result<Verified, AuthError> {
        let auth = json!({"username": user, "password": pass});
        let headers = HeaderMap::new();
        c.verify(Handshake {
            query: None,
            auth: Some(&auth),
            headers: &headers,
            address: Some([192, 0, 2, 1].into()),
            cross_site: false,
        })
        .await
    }

    #[tokio::test]
    async fn checks_bcrypt_and_argon2_hashes() {
        use argon2::PasswordHasher;
        let bc = bcrypt::hash("s3cret", 4).unwrap();
        let ar = argon2::Argon2::default()
            .hash_password_with_salt(b"hunter2", b"some-salt-16byte")
            .unwrap()
            .to_string();
        let f = file(
            &json!([{"username": "alice", "password": bc}, {"username": "bob", "password": ar}])
                .to_string(),
        );
        let c = Credentials::load(&f.0, false).unwrap();
        let v = login(&c, "alice", "s3cret").await.unwrap();
        assert_eq!(v.id_user.as_deref(), Some("alice"));
        assert!(login(&c, "bob", "hunter2").await.is_ok());
        for (u, p) in [("alice", "wrong"), ("bob", "s3cret"), ("carol", "s3cret")] {
            assert_eq!(login(&c, u, p).await.unwrap_err(), AuthError::Unauthorized);
        }
        let headers = HeaderMap::new();
        let none = c
            .verify(Handshake {
                query: Some("username=alice&password=s3cret"),
                auth: None,
                headers: &headers,
                address: None,
                cross_site: false,
            })
            .await;
        assert_eq!(
            none.unwrap_err(),
            AuthError::Unauthorized,
            "auth object only"
        );
    }

    #[tokio::test]
    async fn an_address_that_fails_too_often_is_refused_without_a_check() {
        let f = file(r#"[{"username": "admin", "password": "admin"}]"#);
        let logins = Arc::new(FailedLogins::new(5));
        let c = Credentials::load(&f.0, true)
            .unwrap()
            .counting_failures_in(logins.clone());
        assert!(login(&c, "admin", "admin").await.is_ok(), "no failure yet");
        for _ in 0..5 {
            assert_eq!(
                login(&c, "admin", "wrong").await.unwrap_err(),
                AuthError::Unauthorized
            );
        }
        let e = login(&c, "admin", "admin").await.unwrap_err();
        assert!(matches!(e, AuthError::Backoff(_)), "{e:?}");
        assert!(e.to_string().starts_with("too many failed logins"), "{e}");
        assert_eq!(e.kind(), "login_backoff");
        let auth = json!({"username": "admin", "password": "admin"});
        let headers = HeaderMap::new();
        let elsewhere = c
            .verify(Handshake {
                query: None,
                auth: Some(&auth),
                headers: &headers,
                address: Some([192, 0, 2, 2].into()),
                cross_site: false,
            })
            .await;
        assert!(elsewhere.is_ok(), "another address: {elsewhere:?}");
    }

    #[tokio::test]
    async fn plain_passwords_only_when_allowed() {
        let f = file(r#"[{"username": "admin", "password": "admin"}]"#);
        let e = Credentials::load(&f.0, false).unwrap_err();
        assert!(
            e.contains("\"admin\"") && e.contains("not a bcrypt or argon2 hash"),
            "{e}"
        );
        let c = Credentials::load(&f.0, true).unwrap();
        assert!(login(&c, "admin", "admin").await.is_ok());
        assert!(login(&c, "admin", "admin2").await.is_err());
    }

    #[test]
    fn bad_files_are_named() {
        for (content, says) in [
            ("{", "not a JSON list"),
            (r#"[{"username": "a"}]"#, "not a JSON list"),
            (
                r#"[{"username": "a", "password": "$2b$10$short"}]"#,
                "bad bcrypt hash",
            ),
            (
                r#"[{"username": "a", "password": "$argon2id$x"}]"#,
                "bad argon2 hash",
            ),
            (r#"[{"username": "", "password": "$2b$04$x"}]"#, "username"),
        ] {
            let f = file(content);
            let e = Credentials::load(&f.0, false).unwrap_err();
            assert!(
                e.contains("credentials_file") && e.contains(says),
                "{content}: {e}"
            );
        }
        let e = Credentials::load(Path::new("/nonexistent/creds.json"), false).unwrap_err();
        assert!(e.contains("/nonexistent/creds.json"), "{e}");
    }
}
