//! The config file (TOML, `--config`/`CONFIG`): the namespaces a node serves and how each verifies its
//! clients. Read and checked once at start-up; a mistake stops the process with the file, the line and the key.
//!
//! Without a file the node serves one namespace, `/`, with `auth = "claim"` and `rooms = ["handshake"]`:
//! exactly the behaviour before config files existed. docs/configuration.md documents every key;
//! `deploy/config.example.toml` is a complete example.
//!
//! Each table has its own module with its types, defaults and rules: [`namespace`], [`admin`], [`gateway`]. The
//! keys a table accepts are its struct's fields: serde refuses any other, naming the ones it knows.

use std::{
    ops::Range,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use toml::Spanned;

pub mod admin;
pub mod gateway;
pub mod namespace;
pub mod webhook;

pub use admin::{AdminConfig, AdminMode};
pub use gateway::{GatewayConfig, OnMessage, Publish, Subscribe, TypeRoute};
pub use namespace::{
    AuthKind, CheckedNamespace, MAX_PENDING_LIMIT, NamePattern, NamespaceConfig, RoomSource,
    api_key_digest,
};
pub use webhook::{CheckedWebhook, EventKind, WebhookConfig};

/// The whole file. Unknown keys are errors: a typo must not silently weaken authentication.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default, rename = "namespace")]
    pub namespaces: Vec<Spanned<NamespaceConfig>>,
    pub admin: Option<Spanned<AdminConfig>>,
    pub gateway: Option<Spanned<GatewayConfig>>,
    #[serde(default, rename = "webhook")]
    pub webhooks: Vec<Spanned<WebhookConfig>>,
}

/// A mistake in the config file, with where it is.
#[derive(Debug, thiserror::Error)]
#[error("{file}{}: {message}", if *line > 0 { format!(":{line}") } else { String::new() })]
pub struct FileError {
    pub file: String,
    /// 1-based; 0 when the file could not be read at all.
    pub line: usize,
    pub message: String,
}

/// The whole file, checked.
#[derive(Debug, Clone)]
pub struct Checked {
    pub namespaces: Vec<CheckedNamespace>,
    /// `[admin]` when it is enabled.
    pub admin: Option<AdminConfig>,
    /// `[gateway]`, when the file has one.
    pub gateway: Option<GatewayConfig>,
    /// The `[[webhook]]` tables.
    pub webhooks: Vec<CheckedWebhook>,
}

/// Reads and checks the config file. Relative paths in it are relative to the file's directory.
pub fn load(path: &Path) -> Result<Checked, FileError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| FileError {
        file: file.clone(),
        line: 0,
        message: format!("cannot read the config file: {e}"),
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, &file, base)
}

/// [`load`] on text already read; `file` names it in errors.
pub fn parse(text: &str, file: &str, base: &Path) -> Result<Checked, FileError> {
    let err = |span: Option<Range<usize>>, message: String| FileError {
        file: file.to_owned(),
        line: span.map_or(1, |s| line_of(text, s.start)),
        message,
    };
    let parsed: FileConfig =
        toml::from_str(text).map_err(|e| err(e.span(), e.message().trim().to_owned()))?;
    let mut checked: Vec<CheckedNamespace> = Vec::new();
    for table in parsed.namespaces {
        let span = table.span();
        let line = line_of(text, span.start);
        let ns = namespace::checked(table.into_inner(), line, base, &checked)
            .map_err(|m| err(Some(span), m))?;
        checked.push(ns);
    }
    if checked.is_empty() {
        return Err(err(
            None,
            "no [[namespace]] table: the file must declare at least one namespace".into(),
        ));
    }
    let admin = match parsed.admin {
        Some(table) => {
            let span = table.span();
            admin::checked(table.into_inner(), &checked)
                .map_err(|m| err(Some(span), format!("[admin]: {m}")))?
        }
        None => None,
    };
    let gateway = match parsed.gateway {
        Some(table) => {
            let span = table.span();
            Some(
                gateway::checked(table.into_inner(), base)
                    .map_err(|m| err(Some(span), format!("[gateway]: {m}")))?,
            )
        }
        None => None,
    };
    if gateway.is_none()
        && let Some(ns) = checked.iter().find(|n| n.config.gateway)
    {
        return Err(FileError {
            file: file.to_owned(),
            line: ns.line,
            message: format!(
                "namespace {:?}: `gateway = true` needs a [gateway] table",
                ns.config.name
            ),
        });
    }
    let mut webhooks: Vec<CheckedWebhook> = Vec::new();
    for table in parsed.webhooks {
        let span = table.span();
        let w = webhook::checked(table.into_inner(), &webhooks)
            .map_err(|m| err(Some(span), format!("[[webhook]]: {m}")))?;
        webhooks.push(w);
    }
    Ok(Checked {
        namespaces: checked,
        admin,
        gateway,
        webhooks,
    })
}

/// Makes `path` relative to the file's directory `base` unless it is absolute.
fn absolute(path: &mut PathBuf, base: &Path) {
    if path.is_relative() {
        *path = base.join(&*path);
    }
}

/// The 1-based line of byte `at`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// What the tables' tests share: the example file, parsing, the keys serde accepts.
#[cfg(test)]
mod testing {
    use std::path::Path;

    use super::{CheckedNamespace, parse};

    pub const EXAMPLE: &str = include_str!("../../../deploy/config.example.toml");

    pub fn parse_ok(text: &str) -> Vec<CheckedNamespace> {
        parse(text, "test.toml", Path::new("/etc/si"))
            .unwrap()
            .namespaces
    }

    pub fn parse_err(text: &str) -> String {
        parse(text, "test.toml", Path::new("/etc/si"))
            .unwrap_err()
            .to_string()
    }

    /// Whether the example file names `key`, set or commented out: anywhere, or from `table`'s header on.
    pub fn example_names(table: Option<&str>, key: &str) -> bool {
        let start = table.map_or(0, |table| {
            EXAMPLE
                .lines()
                .position(|l| l.trim_start_matches('#').trim() == table)
                .unwrap_or_else(|| panic!("the example has a {table} table"))
        });
        EXAMPLE.lines().skip(start).any(|line| {
            let line = line.trim_start().trim_start_matches('#').trim_start();
            line.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
    }

    /// The keys a table accepts: the field names its derived `Deserialize` asks its deserializer for.
    pub fn keys<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
        use serde::de::{Error, Visitor, value};
        struct Fields(&'static [&'static str]);
        impl<'de> serde::Deserializer<'de> for &mut Fields {
            type Error = value::Error;
            fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, value::Error> {
                Err(value::Error::custom("not a struct"))
            }
            fn deserialize_struct<V: Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, value::Error> {
                self.0 = fields;
                Err(value::Error::custom("fields read"))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
                option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
                ignored_any
            }
        }
        let mut fields = Fields(&[]);
        let _ = T::deserialize(&mut fields);
        fields.0
    }
}

#[cfg(test)]
mod tests {
    use super::{
        testing::{EXAMPLE, keys, parse_err},
        *,
    };

    #[test]
    fn errors_name_the_line_and_the_key() {
        let e = parse_err("[[namespace]]\nname = \"/\"\nauht = \"jwt\"\n");
        assert!(e.starts_with("test.toml:3: unknown field `auht`"), "{e}");
        let e = parse_err("\n\n[[namespace]]\nname = \"/\"\nauth = \"jwt\"\n");
        assert_eq!(
            e,
            "test.toml:3: namespace \"/\": `jwt_secret` or `jwt_public_key` is required with auth = \"jwt\""
        );
        let e = parse_err("[[namespace]]\nname = \"/\"\nauth = \"magic\"\n");
        assert!(e.starts_with("test.toml:3: unknown variant `magic`"), "{e}");
    }

    /// A key no table knows is refused with every key the table does know: the lists come from the types.
    #[test]
    fn unknown_keys_are_refused_with_the_known_ones() {
        let ns = "[[namespace]]\nname = \"/\"\n";
        for (text, known) in [
            (format!("{ns}nope = 1\n"), keys::<NamespaceConfig>()),
            (format!("{ns}[admin]\nnope = 1\n"), keys::<AdminConfig>()),
            (
                format!("{ns}[gateway]\nnope = 1\n"),
                keys::<GatewayConfig>(),
            ),
            ("nope = 1\n".to_owned(), keys::<FileConfig>()),
        ] {
            let e = parse_err(&text);
            let list = known.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>();
            assert!(
                e.ends_with(&format!(
                    "unknown field `nope`, expected one of {}",
                    list.join(", ")
                )),
                "{e}"
            );
        }
    }

    /// `deploy/config.example.toml` loads, with the namespaces of the services it replaces that docs/configuration.md
    /// describes.
    #[test]
    fn example_file_loads() {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
        let checked = parse(EXAMPLE, "deploy/config.example.toml", &base).unwrap();
        assert!(checked.admin.is_none(), "the example's [admin] is off");
        let admin: FileConfig = toml::from_str(EXAMPLE).unwrap();
        let admin = admin.admin.unwrap().into_inner();
        assert!(bcrypt::verify("change-me", admin.password_hash.as_deref().unwrap()).unwrap());
        let list = checked.namespaces;
        let find = |name: &str| {
            list.iter()
                .find(|n| n.config.name == name)
                .unwrap_or_else(|| panic!("{name} is missing from the example"))
                .config
                .clone()
        };
        use RoomSource::*;
        let root = find("/");
        assert_eq!(root.auth, AuthKind::Jwt);
        assert_eq!(root.rooms, [User, Session]);
        let lab = find("/do-*");
        assert_eq!(lab.auth, AuthKind::Credentials);
        assert!(lab.forward && lab.views && !lab.allow_plain_passwords);
        let shared = find("/sharedsocket");
        assert_eq!(shared.auth, AuthKind::None);
        assert!(shared.deprecated.is_some());
        let site = find("/newsite");
        assert_eq!(site.auth, AuthKind::Webhook);
        assert_eq!(site.rooms, [Auth, User]);
        let chat = find("/chat");
        assert_eq!(chat.auth, AuthKind::Claim);
        assert_eq!(chat.rooms, [Handshake, User, Session]);
        assert_eq!(list.len(), 5);

        // The credentials file it names holds a bcrypt hash of the password its comment gives.
        let creds = lab.credentials_file.expect("set");
        assert_eq!(creds, base.join("credentials.example.json"));
        let users: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(&creds).unwrap()).unwrap();
        assert_eq!(users[0]["username"], "lab");
        let hash = users[0]["password"].as_str().unwrap();
        assert!(hash.starts_with("$2b$10$"), "{hash}");
        assert!(bcrypt::verify("example-password", hash).unwrap());
        assert!(EXAMPLE.contains("\"example-password\""));
    }
}
