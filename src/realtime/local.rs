//! This node's answers to cluster queries, read from socketioxide's local state and each socket's [`Identity`].

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
};

use futures_util::future::BoxFuture;
use socketioxide::{SocketIo, adapter::Adapter};

use super::handshake::{Identity, Role};
use crate::cluster::{
    LocalRooms,
    protocol::{Member, Query, Reply, RoomCount},
};

impl<A: Adapter> LocalRooms for SocketIo<A> {
    fn answer(&self, ns: &str, query: &Query) -> Reply {
        let Some(ops) = self.of(ns) else {
            return Reply::empty(query);
        };
        match query {
            Query::Users { room } => Reply::Users {
                members: ops
                    .local()
                    .to(room.clone())
                    .sockets()
                    .into_iter()
                    .map(|s| Member {
                        id_user: s
                            .extensions
                            .get::<Arc<Identity>>()
                            .and_then(|id| id.id_user.as_deref().map(str::to_owned)),
                        id_socket: s.id.to_string(),
                    })
                    .collect(),
            },
            Query::Rooms => {
                let mut rooms: BTreeMap<String, u64> = BTreeMap::new();
                for s in ops.local().sockets() {
                    for room in s.rooms() {
                        *rooms.entry(room.into_owned()).or_default() += 1;
                    }
                }
                Reply::Rooms {
                    rooms: rooms
                        .into_iter()
                        .map(|(room, sockets)| RoomCount { room, sockets })
                        .collect(),
                }
            }
            Query::Views => Reply::Views {
                count: ops
                    .local()
                    .sockets()
                    .iter()
                    .filter(|s| {
                        s.extensions
                            .get::<Arc<Identity>>()
                            .is_some_and(|id| id.role == Role::View)
                    })
                    .count() as u64,
            },
        }
    }

    fn room_count(&self) -> usize {
        self.nsps()
            .into_iter()
            .map(|ns| {
                let rooms: HashSet<_> = ns
                    .local()
                    .sockets()
                    .iter()
                    .flat_map(|s| s.rooms())
                    .collect();
                rooms.len()
            })
            .sum()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(SocketIo::close(self))
    }
}
