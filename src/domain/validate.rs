//! The rules for room names, user ids and node ids.
//!
//! One place, so the Socket.IO handshake, the REST path and the cross-node decoder agree:
//! a room that can be joined can always be queried, and nothing else can.
//!
//! * **room**: 1 to 128 characters; each a Unicode letter or digit or one of `-` `_` `.` `~` `@` `+` `:` (so
//!   `user.{id}` rooms of e-mail-like ids and `user:42` work); it may not start
//!   with `.` (so `.`, `..` and `.env` are refused); names that collide with our own routes are reserved
//!   ([`RESERVED_ROOMS`], compared without case). The REST path is percent-decoded once before the check, so
//!   `/Caf%C3%A9/users` is room `Café` and `/a%2Fb/users` is refused. No Unicode normalisation: rooms are compared
//!   exactly.
//! * **id_user**: 1 to 128 characters, no control characters, no leading or trailing whitespace. Anything else
//!   is allowed: it is data, shown with `textContent`, never markup.
//! * **node id**: 1 to 64 characters of `A-Z a-z 0-9 - _ .`, because it becomes part of a Redis channel name.
//! * **namespace**: `/` then up to 127 characters, each an ASCII letter or digit or one of `-` `_` `.` `~` `/`.

/// Event names socket.io clients reserve for themselves: an event by these names would never reach the page (the
/// emitter refuses them too).
pub const RESERVED_EVENTS: &[&str] = &[
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// Event names the server itself sends its clients: never taken from a client (forwarded, sent to the RPC
/// backend), so no client can forge them. The gateway's reply names come on top, from its config.
pub const SERVER_EVENTS: &[&str] = &[
    "handshake",
    "socket-connected",
    "socket-disconnected",
    "identity-change",
    "session_id",
    "rate_limited",
    "__connect__",
    "__disconnect__",
    "__count__",
    "batch",
    "resync",
    "error",
];

/// Whether `event` is reserved by the socket.io client ([`RESERVED_EVENTS`]) or sent by the server
/// ([`SERVER_EVENTS`]).
pub fn is_reserved_event(event: &str) -> bool {
    RESERVED_EVENTS.contains(&event) || SERVER_EVENTS.contains(&event)
}

/// Longest room name, in characters.
pub const MAX_ROOM_CHARS: usize = 128;
/// Longest user id, in characters.
pub const MAX_USER_CHARS: usize = 128;
/// Longest node id, in characters.
pub const MAX_NODE_CHARS: usize = 64;
/// Longest namespace name, in characters (the leading `/` included).
pub const MAX_NAMESPACE_CHARS: usize = 128;

/// Room names that are our own routes (or soon will be), so `/{room}` can never shadow them.
pub const RESERVED_ROOMS: &[&str] = &[
    "health",
    "ready",
    "metrics",
    "socket.io",
    "socket.io.js",
    "favicon.ico",
    "robots.txt",
    "admin",
    "api",
    "send",
    "openapi.json",
];

/// Why a value was refused. The Display text is what clients see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("{0} is required")]
    Missing(&'static str),
    #[error("{0} must be a string")]
    NotString(&'static str),
    #[error("{0} must be at most {1} characters")]
    TooLong(&'static str, usize),
    #[error("{0} must not be empty")]
    Empty(&'static str),
    #[error("{0} contains a character that is not allowed")]
    BadChar(&'static str),
    #[error("{0} must not start with '.'")]
    LeadingDot(&'static str),
    #[error("{0} must not start or end with whitespace")]
    Whitespace(&'static str),
    #[error("room name '{0}' is reserved")]
    Reserved(String),
    #[error("{0} is given more than once")]
    Repeated(&'static str),
    #[error("{0} must start with '/'")]
    NoSlash(&'static str),
}

impl Invalid {
    /// A stable, short name for metrics labels (`handshakes_refused_total{reason=..}`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Missing(_) => "missing",
            Self::NotString(_) => "not_string",
            Self::TooLong(..) => "too_long",
            Self::Empty(_) => "empty",
            Self::BadChar(_) => "bad_char",
            Self::LeadingDot(_) => "leading_dot",
            Self::Whitespace(_) => "whitespace",
            Self::Reserved(_) => "reserved",
            Self::Repeated(_) => "repeated",
            Self::NoSlash(_) => "no_slash",
        }
    }
}

fn check_len(field: &'static str, value: &str, max: usize) -> Result<(), Invalid> {
    if value.is_empty() {
        return Err(Invalid::Empty(field));
    }
    if value.chars().nth(max).is_some() {
        return Err(Invalid::TooLong(field, max));
    }
    Ok(())
}

/// Checks a room name (already percent-decoded).
pub fn room(value: &str) -> Result<(), Invalid> {
    check_len("room", value, MAX_ROOM_CHARS)?;
    if !value
        .chars()
        .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '~' | '@' | '+' | ':'))
    {
        return Err(Invalid::BadChar("room"));
    }
    if value.starts_with('.') {
        return Err(Invalid::LeadingDot("room"));
    }
    if RESERVED_ROOMS.iter().any(|r| r.eq_ignore_ascii_case(value)) {
        return Err(Invalid::Reserved(value.to_owned()));
    }
    Ok(())
}

/// Checks a user id.
pub fn id_user(value: &str) -> Result<(), Invalid> {
    // Most ids are printable ASCII: one pass over the bytes decides those, with the outcome of the rules below
    // (no control character, as many chars as bytes, and the space is the only whitespace). A users query's asker
    // checks every id its peers send, thousands per query.
    if !value.is_empty()
        && value.len() <= MAX_USER_CHARS
        && value.bytes().all(|b| (0x20..0x7f).contains(&b))
    {
        return if value.starts_with(' ') || value.ends_with(' ') {
            Err(Invalid::Whitespace("id_user"))
        } else {
            Ok(())
        };
    }
    id_user_rules(value)
}

/// [`id_user`]'s rules, for any string.
fn id_user_rules(value: &str) -> Result<(), Invalid> {
    check_len("id_user", value, MAX_USER_CHARS)?;
    if value.chars().any(char::is_control) {
        return Err(Invalid::BadChar("id_user"));
    }
    if value.trim() != value {
        return Err(Invalid::Whitespace("id_user"));
    }
    Ok(())
}

/// Checks a namespace name (`/`, `/do-lab`).
pub fn namespace(value: &str) -> Result<(), Invalid> {
    check_len("namespace", value, MAX_NAMESPACE_CHARS)?;
    let Some(rest) = value.strip_prefix('/') else {
        return Err(Invalid::NoSlash("namespace"));
    };
    if !rest
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/'))
    {
        return Err(Invalid::BadChar("namespace"));
    }
    Ok(())
}

/// Checks a node id.
pub fn node_id(value: &str) -> Result<(), Invalid> {
    check_len("node id", value, MAX_NODE_CHARS)?;
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(Invalid::BadChar("node id"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ascii_shortcut_of_id_user_decides_as_the_rules_do() {
        let long = "u".repeat(MAX_USER_CHARS);
        let longer = "u".repeat(MAX_USER_CHARS + 1);
        let wide = "é".repeat(MAX_USER_CHARS);
        for value in [
            "",
            "a",
            "bob",
            " bob",
            "bob ",
            "b o b",
            "bob\t",
            "\tbob",
            "b\u{7f}",
            "b\u{1f}",
            "~!@#$%^&*()",
            "\"<b>\"",
            "bär",
            " bär",
            "bär\u{a0}",
            "\u{2003}bob",
            "b\u{85}",
            "日本",
            &long,
            &longer,
            &wide,
        ] {
            assert_eq!(id_user(value), id_user_rules(value), "{value:?}");
        }
        assert_eq!(id_user(" bob"), Err(Invalid::Whitespace("id_user")));
        assert_eq!(
            id_user(&longer),
            Err(Invalid::TooLong("id_user", MAX_USER_CHARS))
        );
        assert_eq!(id_user(&wide), Ok(()));
    }

    #[test]
    fn rooms() {
        for ok in [
            "Maths",
            "a",
            "Café",
            "日本語",
            "room-1_b.c~d",
            &"x".repeat(128),
            "user.a@example.com",
            "user:42",
        ] {
            assert_eq!(room(ok), Ok(()), "{ok}");
        }
        assert_eq!(room(""), Err(Invalid::Empty("room")));
        assert_eq!(room(&"x".repeat(129)), Err(Invalid::TooLong("room", 128)));
        // 128 multi-byte characters are fine: the limit is in characters.
        assert_eq!(room(&"é".repeat(128)), Ok(()));
        for bad in [
            "a/b", "a b", "a\nb", "a%2Fb", "<script>", "a?b", "a#b", "\u{0}",
        ] {
            assert_eq!(room(bad), Err(Invalid::BadChar("room")), "{bad:?}");
        }
        for dot in [".", "..", ".env"] {
            assert_eq!(room(dot), Err(Invalid::LeadingDot("room")));
        }
        assert_eq!(room("health"), Err(Invalid::Reserved("health".into())));
        assert_eq!(
            room("Socket.IO"),
            Err(Invalid::Reserved("Socket.IO".into()))
        );
        assert!(room("healthy").is_ok());
        // Our own fixed paths: `/send` and `/openapi.json` would shadow their room pages.
        assert_eq!(room("Send"), Err(Invalid::Reserved("Send".into())));
        assert_eq!(
            room("openapi.json"),
            Err(Invalid::Reserved("openapi.json".into()))
        );
    }

    #[test]
    fn user_ids() {
        for ok in [
            "foo",
            "a b",
            "ünïcødé",
            "<b>x</b>",
            "x@example.com",
            &"u".repeat(128),
        ] {
            assert_eq!(id_user(ok), Ok(()), "{ok}");
        }
        assert_eq!(id_user(""), Err(Invalid::Empty("id_user")));
        assert_eq!(
            id_user(&"u".repeat(129)),
            Err(Invalid::TooLong("id_user", 128))
        );
        assert_eq!(id_user("a\u{7}b"), Err(Invalid::BadChar("id_user")));
        assert_eq!(id_user("a\nb"), Err(Invalid::BadChar("id_user")));
        assert_eq!(id_user(" foo"), Err(Invalid::Whitespace("id_user")));
        assert_eq!(id_user("   "), Err(Invalid::Whitespace("id_user")));
    }

    #[test]
    fn namespaces() {
        for ok in ["/", "/do-lab", "/sharedsocket", "/a/b", "/x_1.2~3"] {
            assert_eq!(namespace(ok), Ok(()), "{ok}");
        }
        assert_eq!(namespace(""), Err(Invalid::Empty("namespace")));
        assert_eq!(namespace("do-lab"), Err(Invalid::NoSlash("namespace")));
        assert_eq!(namespace("/a b"), Err(Invalid::BadChar("namespace")));
        assert_eq!(namespace("/é"), Err(Invalid::BadChar("namespace")));
        assert_eq!(
            namespace(&format!("/{}", "n".repeat(128))),
            Err(Invalid::TooLong("namespace", 128))
        );
    }

    #[test]
    fn node_ids() {
        assert!(node_id("node-1").is_ok());
        assert!(node_id("0b1c6a3e-8a2f-4c1e-9b7d-2f0e4d5c6b7a").is_ok());
        assert_eq!(node_id(""), Err(Invalid::Empty("node id")));
        assert_eq!(node_id("a:b"), Err(Invalid::BadChar("node id")));
        assert_eq!(node_id("é"), Err(Invalid::BadChar("node id")));
        assert_eq!(
            node_id(&"n".repeat(65)),
            Err(Invalid::TooLong("node id", 64))
        );
    }
}
