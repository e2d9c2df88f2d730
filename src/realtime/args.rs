//! Event arguments, relayed as they came: client events forwarded to the namespace, `POST /send`, the admin UI's
//! `emit`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The arguments of an event, whatever their number, relayed as they came (not wrapped in one array).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Args(pub Vec<Value>);

impl Serialize for Args {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        // A tuple, so socketioxide sends each element as its own argument.
        let mut t = s.serialize_tuple(self.0.len())?;
        for v in &self.0 {
            t.serialize_element(v)?;
        }
        t.end()
    }
}

impl<'de> Deserialize<'de> for Args {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Args;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("event arguments")
            }
            fn visit_seq<S: serde::de::SeqAccess<'de>>(self, mut seq: S) -> Result<Args, S::Error> {
                let mut args = Vec::new();
                while let Some(v) = seq.next_element()? {
                    args.push(v);
                }
                Ok(Args(args))
            }
        }
        // A tuple, so socketioxide hands over every argument, not only the first.
        d.deserialize_tuple(usize::MAX, Visit)
    }
}

/// One argument as a client sent it, binary included: what forwarding relays. (A JSON value cannot hold the
/// binary attachments of an event, which would make its arguments unreadable and the event dropped.)
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Bytes(Vec<u8>),
    Array(Vec<Arg>),
    Object(Vec<(String, Arg)>),
}

/// The arguments of a client event, binary included, relayed as they came.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Relayed(pub Vec<Arg>);

impl From<&Args> for Relayed {
    /// JSON arguments as relayed ones (no binary), for what emits both kinds.
    fn from(args: &Args) -> Self {
        Self(args.0.iter().map(Arg::from).collect())
    }
}

impl From<&Value> for Arg {
    fn from(value: &Value) -> Self {
        match value {
            Value::Null => Self::Null,
            Value::Bool(b) => Self::Bool(*b),
            Value::Number(n) => Self::Number(n.clone()),
            Value::String(s) => Self::String(s.clone()),
            Value::Array(items) => Self::Array(items.iter().map(Self::from).collect()),
            Value::Object(fields) => Self::Object(
                fields
                    .iter()
                    .map(|(k, v)| (k.clone(), Self::from(v)))
                    .collect(),
            ),
        }
    }
}

impl Relayed {
    /// The same as JSON, for what only takes JSON (the admin UI, the gateway); `None` with binary in it.
    pub fn to_json(&self) -> Option<Args> {
        self.0
            .iter()
            .map(Arg::to_json)
            .collect::<Option<_>>()
            .map(Args)
    }
}

impl Arg {
    fn to_json(&self) -> Option<Value> {
        Some(match self {
            Self::Null => Value::Null,
            Self::Bool(b) => Value::Bool(*b),
            Self::Number(n) => Value::Number(n.clone()),
            Self::String(s) => Value::String(s.clone()),
            Self::Bytes(_) => return None,
            Self::Array(items) => {
                Value::Array(items.iter().map(Self::to_json).collect::<Option<_>>()?)
            }
            Self::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| Some((k.clone(), v.to_json()?)))
                    .collect::<Option<_>>()?,
            ),
        })
    }
}

impl Serialize for Arg {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self {
            Self::Null => s.serialize_unit(),
            Self::Bool(b) => s.serialize_bool(*b),
            Self::Number(n) => n.serialize(s),
            Self::String(v) => s.serialize_str(v),
            Self::Bytes(b) => s.serialize_bytes(b),
            Self::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Self::Object(fields) => {
                let mut map = s.serialize_map(Some(fields.len()))?;
                for (k, v) in fields {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Arg {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Arg;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an event argument")
            }
            fn visit_unit<E>(self) -> Result<Arg, E> {
                Ok(Arg::Null)
            }
            fn visit_none<E>(self) -> Result<Arg, E> {
                Ok(Arg::Null)
            }
            fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Arg, D::Error> {
                Arg::deserialize(d)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Arg, E> {
                Ok(Arg::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Arg, E> {
                Ok(Arg::Number(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Arg, E> {
                Ok(Arg::Number(v.into()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Arg, E> {
                serde_json::Number::from_f64(v)
                    .map(Arg::Number)
                    .ok_or_else(|| E::custom("not a finite number"))
            }
            fn visit_str<E>(self, v: &str) -> Result<Arg, E> {
                Ok(Arg::String(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Arg, E> {
                Ok(Arg::String(v))
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Arg, E> {
                Ok(Arg::Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Arg, E> {
                Ok(Arg::Bytes(v))
            }
            fn visit_seq<S: serde::de::SeqAccess<'de>>(self, mut seq: S) -> Result<Arg, S::Error> {
                let mut items = Vec::new();
                while let Some(v) = seq.next_element()? {
                    items.push(v);
                }
                Ok(Arg::Array(items))
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(self, mut map: M) -> Result<Arg, M::Error> {
                let mut fields = Vec::new();
                while let Some((k, v)) = map.next_entry()? {
                    fields.push((k, v));
                }
                Ok(Arg::Object(fields))
            }
        }
        d.deserialize_any(Visit)
    }
}

impl Serialize for Relayed {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(self.0.len())?;
        for v in &self.0 {
            t.serialize_element(v)?;
        }
        t.end()
    }
}

impl<'de> Deserialize<'de> for Relayed {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Relayed;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("event arguments")
            }
            fn visit_seq<S: serde::de::SeqAccess<'de>>(
                self,
                mut seq: S,
            ) -> Result<Relayed, S::Error> {
                let mut args = Vec::new();
                while let Some(v) = seq.next_element()? {
                    args.push(v);
                }
                Ok(Relayed(args))
            }
        }
        d.deserialize_tuple(usize::MAX, Visit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn args_are_a_tuple_both_ways() {
        use socketioxide_core::parser::{is_de_tuple, is_ser_tuple};
        assert!(is_ser_tuple(&Args(vec![json!(1), json!("a")])));
        assert!(is_de_tuple::<Args>());
        let args: Args = serde_json::from_value(json!(["user", {"id": 1}])).unwrap();
        assert_eq!(args.0, [json!("user"), json!({"id": 1})]);
        assert_eq!(
            serde_json::to_value(&args).unwrap(),
            json!(["user", {"id": 1}])
        );
    }

    #[test]
    fn relayed_arguments_keep_binary_through_the_common_parser() {
        use socketioxide_core::parser::Parse;
        let parser = socketioxide_parser_common::CommonParser;
        let sent = Relayed(vec![
            Arg::String("a".into()),
            Arg::Bytes(vec![0, 1, 255]),
            Arg::Object(vec![
                ("file".into(), Arg::Bytes(vec![7])),
                ("n".into(), Arg::Number(2.into())),
                (
                    "f".into(),
                    Arg::Number(serde_json::Number::from_f64(1.5).unwrap()),
                ),
                ("z".into(), Arg::Null),
                ("l".into(), Arg::Array(vec![Arg::Bool(true)])),
            ]),
        ]);
        let mut value = parser.encode_value(&sent, Some("ev")).unwrap();
        let back: Relayed = parser.decode_value(&mut value, true).unwrap();
        assert_eq!(back, sent);
        assert_eq!(back.to_json(), None);
        let plain = Relayed(vec![Arg::String("a".into()), Arg::Number(1.into())]);
        assert_eq!(plain.to_json(), Some(Args(vec![json!("a"), json!(1)])));
        let json = Args(vec![json!("a"), json!({"b": [1, null, true, 1.5]})]);
        let relayed = Relayed::from(&json);
        assert_eq!(relayed.to_json(), Some(json.clone()));
        assert_eq!(
            serde_json::to_value(&relayed).unwrap(),
            serde_json::to_value(&json).unwrap()
        );
    }
}
