//! Form bodies of `POST /send` in the *extended* (bracket) encoding that the reliable push service's PHP-style backends
//! send:
//! `rooms[]=user_1&rooms[]=staff&event=update_store&args[0]=user&args[1][id]=1` reads as
//! `{"rooms": ["user_1", "staff"], "event": "update_store", "args": ["user", {"id": "1"}]}`.
//!
//! Rules of [`parse`]:
//! * Pairs are split and decoded as `application/x-www-form-urlencoded` (`+` is a space, `%XX` a byte; bytes that
//!   are not UTF-8 become U+FFFD), names included: PHP's `http_build_query` sends `rooms%5B0%5D`.
//! * A name is a non-empty base without brackets, then zero or more `[part]`, and nothing after them (`a`, `a[]`,
//!   `a[0]`, `a[b]`, `a[0][b][]`). Anything else (`a[b=1`, `a]b[=1`, `[x]=1`, `a[b]c=1`, an empty name) is
//!   [`FormError::Malformed`]. Values are always strings (`args[1][id]=1` gives `"1"`); a pair without `=` has
//!   the value `""`.
//! * `[]` appends: its index is one more than the largest index at that level so far (as PHP does), so
//!   `a[]=x&a[]=y` is `["x","y"]` and `a[][b]=1&a[][b]=2` is `[{"b":"1"},{"b":"2"}]`.
//! * Arrays versus objects: a level is an array exactly when its keys are the indices `0..n-1` (canonical decimal,
//!   no leading zero), in any order (`a[1]=y&a[0]=x` is `["x","y"]`); otherwise it is an object with string keys
//!   (`a[0]=x&a[5]=y` is `{"0":"x","5":"y"}`, as PHP's `json_encode` makes of that array). No index is ever used to
//!   size an allocation, so a sparse or huge index costs nothing more than any other key.
//! * The top level is always an object. The same name twice (`rooms=a&rooms=b`, `a[0]=x&a[0]=y`) is
//!   [`FormError::Repeated`]: PHP keeps the last, other parsers make a list, and the reliable push service's
//!   backends never send it, so it is refused rather than guessed. A name that is both a value and has parts below
//!   it (`a=1&a[b]=2`, in either order) is [`FormError::Conflict`].
//!
//! Limits, against hostile bodies (the body size itself is capped by the HTTP layer):
//! * at most [`MAX_FIELDS`] pairs: every pair costs a few nodes in the tree, so this bounds the work and memory
//!   beyond the raw bytes;
//! * at most [`MAX_DEPTH`] bracketed parts in one name: converting the tree to JSON recurses once per level, and
//!   the emitted event should not be deeper than any client can handle;
//! * names of at most [`MAX_KEY_LEN`] bytes: each part of a name is copied into the tree, and error messages
//!   quote the name.
//!
//! Each rule maps to one [`FormError`] whose text is meant for the client (the `400` answer's `error`), naming
//! the field: `form field "args[1][id": malformed brackets`. The work is one ordered-map lookup per name part
//! (n·log n, never quadratic), recursion never goes deeper than [`MAX_DEPTH`], and nothing here panics.

use std::collections::{BTreeMap, btree_map::Entry};

use serde_json::{Map, Value};

/// The most pairs one body may have.
pub const MAX_FIELDS: usize = 1000;
/// The most bracketed parts one name may have (`a[b][c]` has two).
pub const MAX_DEPTH: usize = 16;
/// The longest name, in bytes after decoding.
pub const MAX_KEY_LEN: usize = 256;
/// How much of a name over [`MAX_KEY_LEN`] an error message quotes, in characters.
const QUOTED_CHARS: usize = 64;

/// Why a form body was refused. The texts are client-facing and name the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    /// Brackets that do not pair up after a non-empty base name, or an empty name.
    #[error("form field {:?}: {}", .0, if .0.is_empty() { "empty name" } else { "malformed brackets" })]
    Malformed(String),
    /// The same name given twice.
    #[error("form field {0:?}: given more than once")]
    Repeated(String),
    /// A name that is both a plain value and has fields nested under it.
    #[error(
        "form field {0:?}: conflicts with another field (a name cannot be both a value and nested)"
    )]
    Conflict(String),
    /// More than [`MAX_DEPTH`] bracketed parts.
    #[error("form field {0:?}: nested deeper than {MAX_DEPTH} levels")]
    TooDeep(String),
    /// A name longer than [`MAX_KEY_LEN`] bytes (quoted shortened).
    #[error("form field {0:?}: name longer than {MAX_KEY_LEN} bytes")]
    KeyTooLong(String),
    /// More than [`MAX_FIELDS`] pairs; names the first one over.
    #[error("form field {0:?}: more than {MAX_FIELDS} fields in the body")]
    TooManyFields(String),
}

/// Parses an extended-encoding form body into a JSON value: an object at the top.
pub fn parse(body: &[u8]) -> Result<Value, FormError> {
    let mut root = Branch::default();
    for (count, (name, value)) in form_urlencoded::parse(body).enumerate() {
        if count >= MAX_FIELDS {
            return Err(FormError::TooManyFields(quoted(&name)));
        }
        if name.len() > MAX_KEY_LEN {
            return Err(FormError::KeyTooLong(quoted(&name)));
        }
        let (base, parts) = split_name(&name)?;
        root.insert(&name, base, &parts, value.into_owned())?;
    }
    Ok(Value::Object(root.into_map()))
}

/// `a[b][]` → `("a", ["b", ""])`, or why not.
fn split_name(name: &str) -> Result<(&str, Vec<&str>), FormError> {
    let malformed = || FormError::Malformed(name.to_owned());
    let (base, mut rest) = name.split_at(name.find('[').unwrap_or(name.len()));
    if base.is_empty() || base.contains(']') {
        return Err(malformed());
    }
    let mut parts = Vec::new();
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[').ok_or_else(malformed)?;
        let close = inner.find(']').ok_or_else(malformed)?;
        let part = &inner[..close];
        if part.contains('[') {
            return Err(malformed());
        }
        if parts.len() == MAX_DEPTH {
            return Err(FormError::TooDeep(name.to_owned()));
        }
        parts.push(part);
        rest = &inner[close + 1..];
    }
    Ok((base, parts))
}

/// A name shortened for an error message.
fn quoted(name: &str) -> String {
    match name.char_indices().nth(QUOTED_CHARS) {
        Some((end, _)) => format!("{}…", &name[..end]),
        None => name.to_owned(),
    }
}

/// `Some(i)` if `key` is an array index in canonical form: decimal digits, no leading zero, below 10^9.
fn index(key: &str) -> Option<u32> {
    let canonical = !key.is_empty()
        && key.len() <= 9
        && key.bytes().all(|b| b.is_ascii_digit())
        && (key == "0" || !key.starts_with('0'));
    if !canonical {
        return None;
    }
    key.parse().ok()
}

enum Node {
    Leaf(String),
    Branch(Branch),
}

/// One level of names, before it is known to be an array or an object.
#[derive(Default)]
struct Branch {
    children: BTreeMap<String, Node>,
    /// What `[]` appends as: one more than the largest index so far.
    next_index: u32,
}

impl Branch {
    /// Puts `value` at `base[parts...]`; `name` is the whole name, for errors.
    fn insert(
        &mut self,
        name: &str,
        base: &str,
        parts: &[&str],
        value: String,
    ) -> Result<(), FormError> {
        let mut branch = self;
        let mut key = base.to_owned();
        for part in parts {
            let child = branch
                .children
                .entry(key)
                .or_insert_with(|| Node::Branch(Branch::default()));
            branch = match child {
                Node::Branch(b) => b,
                Node::Leaf(_) => return Err(FormError::Conflict(name.to_owned())),
            };
            key = branch.key_for(part);
        }
        match branch.children.entry(key) {
            Entry::Vacant(slot) => {
                slot.insert(Node::Leaf(value));
                Ok(())
            }
            Entry::Occupied(slot) => Err(match slot.get() {
                Node::Leaf(_) => FormError::Repeated(name.to_owned()),
                Node::Branch(_) => FormError::Conflict(name.to_owned()),
            }),
        }
    }

    /// The key `part` stands for at this level (`[]` appends), noting indices for later appends.
    fn key_for(&mut self, part: &str) -> String {
        let key = if part.is_empty() {
            self.next_index.to_string()
        } else {
            part.to_owned()
        };
        if let Some(i) = index(&key) {
            self.next_index = self.next_index.max(i + 1);
        }
        key
    }

    fn into_map(self) -> Map<String, Value> {
        self.children
            .into_iter()
            .map(|(key, node)| (key, node.into_json()))
            .collect()
    }

    /// An array if the keys are exactly `0..n-1`, else an object.
    fn into_json(self) -> Value {
        let n = self.children.len();
        let dense = self
            .children
            .keys()
            .all(|key| index(key).is_some_and(|i| (i as usize) < n));
        if !dense {
            return Value::Object(self.into_map());
        }
        // Distinct keys, all below n, n of them: each slot is filled exactly once.
        let mut items = vec![Value::Null; n];
        for (key, node) in self.children {
            if let Some(slot) = index(&key).and_then(|i| items.get_mut(i as usize)) {
                *slot = node.into_json();
            }
        }
        Value::Array(items)
    }
}

impl Node {
    fn into_json(self) -> Value {
        match self {
            Node::Leaf(s) => Value::String(s),
            Node::Branch(b) => b.into_json(),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn ok(body: &str) -> Value {
        parse(body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {e}"))
    }

    fn err(body: &str) -> FormError {
        match parse(body.as_bytes()) {
            Ok(v) => panic!("{body}: parsed as {v}"),
            Err(e) => e,
        }
    }

    #[test]
    fn the_push_services_example() {
        assert_eq!(
            ok("rooms[]=user_1&rooms[]=staff&event=update_store&args[0]=user&args[1][id]=1"),
            json!({"rooms": ["user_1", "staff"], "event": "update_store", "args": ["user", {"id": "1"}]})
        );
    }

    #[test]
    fn percent_encoded_brackets_as_http_build_query_sends() {
        assert_eq!(
            ok("rooms%5B0%5D=user_1&rooms%5B1%5D=staff&event=update_store\
                &args%5B0%5D=user&args%5B1%5D%5Bid%5D=1"),
            json!({"rooms": ["user_1", "staff"], "event": "update_store", "args": ["user", {"id": "1"}]})
        );
    }

    #[test]
    fn rooms_as_one_string() {
        assert_eq!(
            ok("rooms=staff&event=ping"),
            json!({"rooms": "staff", "event": "ping"})
        );
    }

    #[test]
    fn indices_in_any_order_make_an_array() {
        assert_eq!(ok("a[1]=y&a[0]=x"), json!({"a": ["x", "y"]}));
        assert_eq!(ok("a[2]=z&a[0]=x&a[1]=y"), json!({"a": ["x", "y", "z"]}));
        // Numerically, not as strings: "10" sorts before "2".
        let body: Vec<String> = (0..12).rev().map(|i| format!("a[{i}]={i}")).collect();
        let want: Vec<String> = (0..12).map(|i| i.to_string()).collect();
        assert_eq!(ok(&body.join("&")), json!({ "a": want }));
    }

    #[test]
    fn sparse_huge_or_non_canonical_indices_make_an_object() {
        assert_eq!(ok("a[0]=x&a[5]=y"), json!({"a": {"0": "x", "5": "y"}}));
        assert_eq!(ok("a[1]=y"), json!({"a": {"1": "y"}}));
        assert_eq!(ok("a[00]=x"), json!({"a": {"00": "x"}}));
        assert_eq!(ok("a[0]=x&a[01]=y"), json!({"a": {"0": "x", "01": "y"}}));
        assert_eq!(ok("a[-1]=x"), json!({"a": {"-1": "x"}}));
        assert_eq!(ok("a[4294967295]=x"), json!({"a": {"4294967295": "x"}}));
        assert_eq!(
            ok("a[99999999999999999999999]=x"),
            json!({"a": {"99999999999999999999999": "x"}})
        );
        assert_eq!(ok("a[0]=x&a[b]=y"), json!({"a": {"0": "x", "b": "y"}}));
    }

    #[test]
    fn the_top_level_is_always_an_object() {
        assert_eq!(ok("0=x&1=y"), json!({"0": "x", "1": "y"}));
        assert_eq!(ok(""), json!({}));
        assert_eq!(ok("&&a=1&&"), json!({"a": "1"}));
    }

    #[test]
    fn empty_brackets_append() {
        assert_eq!(ok("a[]=x&a[]=y&a[]=z"), json!({"a": ["x", "y", "z"]}));
        assert_eq!(ok("a[0]=x&a[]=y"), json!({"a": ["x", "y"]}));
        assert_eq!(ok("a[]=x&a[1]=y&a[]=z"), json!({"a": ["x", "y", "z"]}));
        assert_eq!(
            ok("a[][b]=1&a[][b]=2"),
            json!({"a": [{"b": "1"}, {"b": "2"}]})
        );
        assert_eq!(
            ok("a[0][b][]=1&a[0][b][]=2&a[0][c]=3"),
            json!({"a": [{"b": ["1", "2"], "c": "3"}]})
        );
        assert_eq!(ok("a[][]=1&a[][]=2"), json!({"a": [["1"], ["2"]]}));
        // After a sparse index, appending goes on from it (as PHP does): an object.
        assert_eq!(ok("a[5]=x&a[]=y"), json!({"a": {"5": "x", "6": "y"}}));
    }

    #[test]
    fn nested_objects() {
        assert_eq!(
            ok("a[b][c]=x&a[b][d]=y&a[e]=z"),
            json!({"a": {"b": {"c": "x", "d": "y"}, "e": "z"}})
        );
        assert_eq!(ok("a[b c]=x"), json!({"a": {"b c": "x"}}));
    }

    #[test]
    fn values_are_strings_and_may_be_empty() {
        assert_eq!(
            ok("n=1&t=true&e=&bare&null=null"),
            json!({"n": "1", "t": "true", "e": "", "bare": "", "null": "null"})
        );
        assert_eq!(ok("a=x=y"), json!({"a": "x=y"}));
    }

    #[test]
    fn unicode_and_percent_encoding() {
        assert_eq!(
            ok("name=J%C3%B6rg+M%C3%BCller&emoji=%F0%9F%98%80&raw=日本&sym=%26%3D%2B%25%5B"),
            json!({"name": "Jörg Müller", "emoji": "😀", "raw": "日本", "sym": "&=+%["})
        );
        assert_eq!(ok("r%C3%A4ume[]=k%C3%BCche"), json!({"räume": ["küche"]}));
        assert_eq!(
            ok("a[x%20y]=1&b+c=2"),
            json!({"a": {"x y": "1"}, "b c": "2"})
        );
        // Broken escapes stay as they are; bytes that are not UTF-8 become U+FFFD.
        assert_eq!(ok("a=%zz%4"), json!({"a": "%zz%4"}));
        assert_eq!(ok("a=%FF"), json!({"a": "\u{FFFD}"}));
    }

    #[test]
    fn malformed_names() {
        for (body, name) in [
            ("a[b=1", "a[b"),
            ("a]b[=1", "a]b["),
            ("[x]=1", "[x]"),
            ("=1", ""),
            ("a[b]c=1", "a[b]c"),
            ("a[b[c]]=1", "a[b[c]]"),
            ("a[b]]=1", "a[b]]"),
            ("a]=1", "a]"),
            ("a[=1", "a["),
            ("a[b][=1", "a[b]["),
            ("ok=1&%5Bx%5D=1", "[x]"),
        ] {
            assert_eq!(err(body), FormError::Malformed(name.into()), "{body}");
        }
    }

    #[test]
    fn repeated_names() {
        assert_eq!(err("rooms=a&rooms=b"), FormError::Repeated("rooms".into()));
        assert_eq!(err("a[0]=x&a[0]=y"), FormError::Repeated("a[0]".into()));
        assert_eq!(
            err("a[b][c]=x&a[b][c]=y"),
            FormError::Repeated("a[b][c]".into())
        );
        assert_eq!(err("a[]=x&a[0]=y"), FormError::Repeated("a[0]".into()));
    }

    #[test]
    fn value_and_nested_conflict() {
        assert_eq!(err("a=1&a[b]=2"), FormError::Conflict("a[b]".into()));
        assert_eq!(err("a[b]=2&a=1"), FormError::Conflict("a".into()));
        assert_eq!(
            err("a[b]=1&a[b][c]=2"),
            FormError::Conflict("a[b][c]".into())
        );
        assert_eq!(err("a[b][c]=2&a[b]=1"), FormError::Conflict("a[b]".into()));
        assert_eq!(err("a=1&a[]=2"), FormError::Conflict("a[]".into()));
    }

    #[test]
    fn depth_limit() {
        let name = |depth: usize| format!("a{}", "[x]".repeat(depth));
        let deepest = ok(&format!("{}=v", name(MAX_DEPTH)));
        let mut v = &deepest["a"];
        for _ in 1..MAX_DEPTH {
            v = &v["x"];
        }
        assert_eq!(v, &json!({"x": "v"}));
        let too_deep = name(MAX_DEPTH + 1);
        assert_eq!(err(&format!("{too_deep}=v")), FormError::TooDeep(too_deep));
        // A name both too deep and too long is refused for its length, before its parts are read.
        assert!(matches!(
            err(&format!("{}=v", "a".repeat(10) + &"[]".repeat(1000))),
            FormError::KeyTooLong(_)
        ));
    }

    #[test]
    fn key_length_limit() {
        let longest = "k".repeat(MAX_KEY_LEN);
        assert_eq!(ok(&format!("{longest}=v")), json!({ longest: "v" }));
        let long = "k".repeat(MAX_KEY_LEN + 1);
        let e = err(&format!("{long}=v"));
        assert_eq!(e, FormError::KeyTooLong(format!("{}…", "k".repeat(64))));
        // The limit is on the decoded name, in bytes.
        let wide = "é".repeat(MAX_KEY_LEN / 2 + 1);
        assert!(matches!(
            err(&format!("{wide}=v")),
            FormError::KeyTooLong(_)
        ));
    }

    #[test]
    fn field_count_limit() {
        let fields = |n: usize| {
            (0..n)
                .map(|i| format!("a[]={i}"))
                .collect::<Vec<_>>()
                .join("&")
        };
        assert_eq!(
            ok(&fields(MAX_FIELDS))["a"].as_array().map(Vec::len),
            Some(MAX_FIELDS)
        );
        assert_eq!(
            err(&fields(MAX_FIELDS + 1)),
            FormError::TooManyFields("a[]".into())
        );
        // Counted before anything else is checked about the field, and empty pieces do not count.
        let body = format!("{}&&&[bad=1", "x[]=1&".repeat(MAX_FIELDS));
        assert_eq!(err(&body), FormError::TooManyFields("[bad".into()));
        assert!(parse(format!("{}a=1", "&".repeat(5000)).as_bytes()).is_ok());
    }

    #[test]
    fn client_facing_texts() {
        assert_eq!(
            err("args[1][id=1").to_string(),
            r#"form field "args[1][id": malformed brackets"#
        );
        assert_eq!(err("=1").to_string(), r#"form field "": empty name"#);
        assert_eq!(
            err("rooms=a&rooms=b").to_string(),
            r#"form field "rooms": given more than once"#
        );
        assert_eq!(
            err("a=1&a[b]=2").to_string(),
            r#"form field "a[b]": conflicts with another field (a name cannot be both a value and nested)"#
        );
        assert_eq!(
            err(&format!("a{}=1", "[x]".repeat(17))).to_string(),
            format!(
                r#"form field "a{}": nested deeper than 16 levels"#,
                "[x]".repeat(17)
            )
        );
        assert_eq!(
            err(&format!("{}=1", "k".repeat(300))).to_string(),
            format!(
                r#"form field "{}…": name longer than 256 bytes"#,
                "k".repeat(64)
            )
        );
        assert_eq!(
            err(&format!("{}z=1", "a[]=1&".repeat(1000))).to_string(),
            r#"form field "z": more than 1000 fields in the body"#
        );
        // Quotes and control characters in a name are escaped, not echoed raw.
        assert_eq!(
            err("a%22%0A[=1").to_string(),
            r#"form field "a\"\n[": malformed brackets"#
        );
    }

    #[test]
    fn largest_bodies_stay_cheap() {
        // Every field as long and as deep as allowed, all under one branch.
        let part = "[x]".repeat(MAX_DEPTH - 1);
        let body: Vec<String> = (0..MAX_FIELDS)
            .map(|i| {
                format!(
                    "a{part}[{i:0>width$}]=v",
                    width = MAX_KEY_LEN - 1 - part.len() - 2
                )
            })
            .collect();
        let v = ok(&body.join("&"));
        let mut level = &v["a"];
        for _ in 1..MAX_DEPTH {
            level = &level["x"];
        }
        assert_eq!(level.as_object().map(Map::len), Some(MAX_FIELDS));
    }

    /// Whether an object's keys read back as an array (`0..n-1`): such an object has no encoding of its own.
    fn reads_as_array(m: &BTreeMap<String, Value>) -> bool {
        m.keys()
            .all(|k| index(k).is_some_and(|i| (i as usize) < m.len()))
    }

    /// Nested objects and arrays (both non-empty) of strings.
    fn nested() -> impl Strategy<Value = Value> {
        let key = "[A-Za-z0-9_]{1,8}";
        any::<String>()
            .prop_map(Value::String)
            .prop_recursive(4, 48, 4, move |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 1..4).prop_map(Value::Array),
                    prop::collection::btree_map(key, inner, 1..4)
                        .prop_filter("reads as an array", |m| !reads_as_array(m))
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
    }

    /// The extended encoding's pairs of `v` under `name`, indices explicit.
    fn pairs(name: String, v: &Value, out: &mut Vec<(String, String)>) {
        match v {
            Value::String(s) => out.push((name, s.clone())),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    pairs(format!("{name}[{i}]"), item, out);
                }
            }
            Value::Object(m) => {
                for (k, item) in m {
                    pairs(format!("{name}[{k}]"), item, out);
                }
            }
            other => unreachable!("not generated: {other}"),
        }
    }

    /// A top-level object, and its pairs in some order.
    fn encoded() -> impl Strategy<Value = (Value, Vec<(String, String)>)> {
        prop::collection::btree_map("[A-Za-z0-9_]{1,8}", nested(), 0..5).prop_flat_map(|m| {
            let mut out = Vec::new();
            for (k, v) in &m {
                pairs(k.clone(), v, &mut out);
            }
            let top = Value::Object(m.into_iter().collect());
            (Just(top), Just(out).prop_shuffle())
        })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(v) = parse(&body) {
                prop_assert!(v.is_object());
            }
        }

        #[test]
        fn form_like_bytes_never_panic(body in "[ab0-9\\[\\]=&%+]{0,200}") {
            if let Ok(v) = parse(body.as_bytes()) {
                prop_assert!(v.is_object());
            }
        }

        #[test]
        fn encoded_values_parse_back((value, fields) in encoded(), raw_brackets in any::<bool>()) {
            let body = if raw_brackets {
                // Names are [A-Za-z0-9_] and brackets: safe unencoded, as jQuery-style clients send them.
                fields
                    .iter()
                    .map(|(k, v)| format!("{k}={}", form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()))
                    .collect::<Vec<_>>()
                    .join("&")
            } else {
                form_urlencoded::Serializer::new(String::new()).extend_pairs(&fields).finish()
            };
            prop_assert_eq!(parse(body.as_bytes()), Ok(value));
        }
    }
}
