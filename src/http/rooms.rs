//! The cluster queries: `GET /{room}/users` and `GET /api/rooms`, for one namespace (`?namespace=`).

use std::collections::HashSet;

use axum::{
    Json,
    extract::{FromRequestParts, Path, State},
    http::{HeaderMap, HeaderValue, header, request::Parts},
    response::{IntoResponse, Response},
};
use serde::Serialize;

use super::AppState;
use crate::{
    cluster::{
        Answer,
        protocol::{Query, Reply},
    },
    domain::validate,
    error::AppError,
};

/// Whether the request carries the API token, when one is set. Compared in constant time, lengths included
/// ([`crate::domain::secret::equal`]).
pub(super) fn authorized(headers: &HeaderMap, token: Option<&str>) -> bool {
    let Some(token) = token else { return true };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    crate::domain::secret::equal(given.as_bytes(), token.as_bytes())
}

/// A room name from the path, percent-decoded and checked against [`validate::room`].
pub(super) struct Room(pub(super) String);

impl<S: Send + Sync> FromRequestParts<S> for Room {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        let Path(room) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| AppError::BadPath)?;
        validate::room(&room).map_err(AppError::BadRoom)?;
        Ok(Self(room))
    }
}

/// One entry of `GET /{room}/users`.
#[derive(Debug, Serialize)]
struct RoomUser<'a> {
    id_socket: &'a str,
    id_user: Option<&'a str>,
    node: &'a str,
}

/// `?namespace=`: which namespace a REST query is about (`/` when absent).
#[derive(Debug, serde::Deserialize)]
struct NamespaceParam {
    namespace: Option<String>,
}

/// The namespace a request names (`/` by default), checked, and served here.
fn namespace_of(s: &AppState, query: Option<&str>) -> Result<String, AppError> {
    let param: NamespaceParam = serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|e| AppError::BadQuery(e.to_string()))?;
    let ns = param.namespace.unwrap_or_else(|| "/".to_owned());
    validate::namespace(&ns).map_err(AppError::BadNamespace)?;
    if s.namespaces.find(&ns).is_none() {
        return Err(AppError::UnknownNamespace(ns));
    }
    Ok(ns)
}

/// Asks the cluster (or this node alone) about namespace `ns`.
async fn ask(s: &AppState, ns: &str, query: Query) -> Answer {
    match &s.cluster {
        Some(cluster) => cluster.ask(ns, query).await,
        None => Answer::local(s.node.clone(), s.local.answer(ns, &query)),
    }
}

/// `X-Cluster-Nodes: answered/expected`, `X-Cluster-Partial`, `X-Cluster-Error`: how complete an answer is.
fn cluster_headers(answer: &Answer) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let expected = answer.expected.map_or("?".to_owned(), |n| n.to_string());
    let nodes = format!("{}/{expected}", answer.answered);
    headers.insert(
        "x-cluster-nodes",
        HeaderValue::from_str(&nodes).expect("ascii"),
    );
    headers.insert(
        "x-cluster-partial",
        HeaderValue::from_static(if answer.is_partial() { "true" } else { "false" }),
    );
    if let Some(error) = answer.error.as_deref()
        && let Ok(v) = HeaderValue::from_str(error)
    {
        headers.insert("x-cluster-error", v);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers
}

pub(super) async fn users(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    Room(room): Room,
) -> Result<Response, AppError> {
    if !authorized(&headers, s.api_token.as_deref()) {
        return Err(AppError::Unauthorized);
    }
    let ns = namespace_of(&s, uri.query())?;
    let answer = ask(&s, &ns, Query::Users { room }).await;
    let mut list: Vec<RoomUser> = answer
        .nodes
        .iter()
        .flat_map(|(node, reply)| {
            let members = match reply {
                Reply::Users { members } => members.as_slice(),
                _ => &[],
            };
            members.iter().map(move |m| RoomUser {
                id_socket: &m.id_socket,
                id_user: m.id_user.as_deref(),
                node,
            })
        })
        .collect();
    // Each node's members come sorted by the same key (`Member::listing_key`): the stable sort finds those
    // runs and merges them (a node of an older version sends its members unsorted, which this sorts all the same).
    list.sort_by(|a, b| (a.id_user, a.id_socket).cmp(&(b.id_user, b.id_socket)));
    Ok((cluster_headers(&answer), Json(list)).into_response())
}

/// One entry of `GET /api/rooms`.
#[derive(Debug, Serialize)]
struct RoomSize {
    room: String,
    sockets: u64,
    /// Distinct `id_user`s over the cluster (sockets without one are not counted).
    users: usize,
}

/// `GET /api/rooms?namespace=`: the namespace's rooms across the cluster with their socket and distinct user
/// counts, by name.
pub(super) async fn rooms(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Result<Response, AppError> {
    if !authorized(&headers, s.api_token.as_deref()) {
        return Err(AppError::Unauthorized);
    }
    let ns = namespace_of(&s, uri.query())?;
    let answer = ask(&s, &ns, Query::Rooms).await;
    let mut sizes = std::collections::BTreeMap::<&str, (u64, HashSet<&str>)>::new();
    for (_, reply) in answer.nodes.iter() {
        if let Reply::Rooms { rooms } = reply {
            for r in rooms {
                let (sockets, users) = sizes.entry(&r.room).or_default();
                *sockets += r.sockets;
                users.extend(r.users.iter().map(String::as_str));
            }
        }
    }
    let rooms: Vec<RoomSize> = sizes
        .into_iter()
        .map(|(room, (sockets, users))| RoomSize {
            room: room.to_owned(),
            sockets,
            users: users.len(),
        })
        .collect();
    let body = serde_json::json!({ "namespace": ns, "rooms": rooms });
    Ok((cluster_headers(&answer), Json(body)).into_response())
}
