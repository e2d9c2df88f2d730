//! `GET /openapi.json`: the OpenAPI 3.1 document of the REST routes ([`SPEC`]).
//!
//! The document is written by hand, as a static JSON file (`docs/openapi.json`, beside `docs/http-api.md`) served
//! as it is, rather than generated from annotations (utoipa): it stays one reviewable file whose diff shows exactly
//! what changed in the contract, it describes what the handlers answer (errors from [`crate::error::AppError`], the
//! `X-Cluster-*` headers, the extended form body, the room and namespace rules as patterns) without a macro layer
//! over every handler, and it costs no dependency. What keeps it true:
//! * the unit tests below: every route of the router is in the document and every path of the document is a
//!   route, and the reserved room and event names there are the ones the code refuses;
//! * `tests/openapi.rs`: schemathesis, a property-based API fuzzer, reads the document from a running node,
//!   sends it generated valid and invalid requests, and fails on any `5xx` and on any answer (status, content
//!   type, headers, body) that the document does not describe.

use axum::{
    body::Bytes,
    http::header,
    response::{IntoResponse, Response},
};

/// The document.
pub const SPEC: &str = include_str!("../../docs/openapi.json");

pub(super) async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        Bytes::from_static(SPEC.as_bytes()),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn spec() -> Value {
        serde_json::from_str(SPEC).expect("openapi.json is JSON")
    }

    /// `(path, method)` of every `.route("path", method(..))` of the router, read from its source.
    fn router_routes() -> Vec<(String, String)> {
        let source = include_str!("mod.rs");
        let router = &source[source.find("pub fn router(").expect("the router")..];
        let router = &router[..router.find("\n}\n").expect("its end")];
        router
            .split(".route(\"")
            .skip(1)
            .map(|rest| {
                let (path, rest) = rest.split_once('"').expect("a quoted path");
                let call = rest.trim_start_matches([',', ' ', '\n']);
                let method = call[..call.find('(').expect("a method router")]
                    .rsplit("::")
                    .next()
                    .unwrap();
                (path.to_owned(), method.to_owned())
            })
            .collect()
    }

    #[test]
    fn describes_every_route_and_only_routes() {
        let spec = spec();
        let routes = router_routes();
        assert!(routes.len() >= 9, "{routes:?}");
        for (path, method) in &routes {
            assert!(
                spec["paths"][path][method].is_object(),
                "{method} {path} is routed but not in openapi.json"
            );
        }
        for (path, item) in spec["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                assert!(
                    routes.iter().any(|(p, m)| p == path && m == method),
                    "{method} {path} is in openapi.json but not routed"
                );
            }
        }
    }

    #[test]
    fn is_this_version_of_openapi_3_1() {
        let spec = spec();
        assert_eq!(spec["openapi"], "3.1.0");
        assert_eq!(spec["info"]["version"], env!("CARGO_PKG_VERSION"));
    }

    /// The room pattern's reserved names are [`crate::domain::validate::RESERVED_ROOMS`], without ASCII case.
    #[test]
    fn reserved_rooms_are_the_codes() {
        let names: Vec<String> = crate::domain::validate::RESERVED_ROOMS
            .iter()
            .map(|name| {
                name.chars()
                    .map(|c| match c {
                        c if c.is_ascii_alphabetic() => {
                            format!("[{}{}]", c.to_ascii_uppercase(), c.to_ascii_lowercase())
                        }
                        '.' => r"\.".to_owned(),
                        c => c.to_string(),
                    })
                    .collect()
            })
            .collect();
        let expected = format!("^({})$", names.join("|"));
        assert_eq!(
            spec()["components"]["schemas"]["RoomName"]["not"]["pattern"],
            expected
        );
    }

    #[test]
    fn reserved_events_are_the_codes() {
        assert_eq!(
            spec()["components"]["schemas"]["EventName"]["not"]["enum"],
            serde_json::json!(crate::domain::validate::RESERVED_EVENTS)
        );
    }
}
