//! `[admin]`: the official socket.io admin UI, its login and its namespace.

use serde::Deserialize;

use super::CheckedNamespace;
use crate::domain::validate;

/// `[admin]`: the official socket.io admin UI, served at `/admin/`, for the whole cluster (as in the forwarding
/// service).
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Off unless set: the admin namespace shows every socket's handshake (headers included).
    #[serde(default)]
    pub enabled: bool,
    /// `false`: no login at all (the forwarding service without a password); a warning at every start says so.
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
    /// The admin UI's namespace (default [`Self::DEFAULT_NAMESPACE`]); never one of the `[[namespace]]` tables.
    #[serde(default = "default_namespace")]
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

impl AdminConfig {
    pub const DEFAULT_NAMESPACE: &str = "/admin";
}

fn yes() -> bool {
    true
}
fn default_namespace() -> String {
    AdminConfig::DEFAULT_NAMESPACE.into()
}

/// The `[admin]` table checked against its rules and the file's namespaces; `None` when it is not enabled.
pub(super) fn checked(
    admin: AdminConfig,
    namespaces: &[CheckedNamespace],
) -> Result<Option<AdminConfig>, String> {
    check(&admin, namespaces)?;
    Ok(admin.enabled.then_some(admin))
}

/// `[admin]`'s rules: a login unless `auth = false`, a real bcrypt hash, a namespace of its own.
fn check(admin: &AdminConfig, namespaces: &[CheckedNamespace]) -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::file::{
        parse,
        testing::{example_names, keys},
    };

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

    #[test]
    fn example_file_names_every_admin_key() {
        for key in keys::<AdminConfig>() {
            assert!(
                example_names(Some("[admin]"), key),
                "[admin] `{key}` is missing from deploy/config.example.toml"
            );
        }
    }
}
