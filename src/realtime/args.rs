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
}
