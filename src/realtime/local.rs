//! This node's answers to cluster queries, read from socketioxide's local state and each socket's [`Identity`].

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    sync::Arc,
};

use futures_util::future::BoxFuture;
use socketioxide::{SocketIo, adapter::Adapter};

use super::{
    args::Args,
    identity::{Identity, Role},
    observe::{Observer, socket_info},
    recover::Recoverable,
};
use crate::cluster::{
    LocalRooms,
    protocol::{Action, Live, Member, Query, Reply, RoomCount},
};

/// How long an admin UI's `all_sockets` request makes this node report details, before the admin module's
/// renewal (every 2 s while an admin is connected anywhere) must have come.
pub const WATCH_LEASE: std::time::Duration = std::time::Duration::from_secs(10);

/// This node's sockets, as the cluster asks about them.
pub struct Local<A: Adapter> {
    pub io: SocketIo<A>,
    /// Told when an admin UI asks for the sockets, and of the admin commands' joins, leaves and emits.
    pub observer: Arc<Observer>,
    /// Told of the admin commands' joins and leaves, for the webhooks' counts.
    pub webhooks: Arc<std::sync::OnceLock<Arc<crate::webhooks::tracker::Tracker>>>,
    /// Every socket's `id_user` ([`NodeInfo::directory`](super::NodeInfo)).
    pub directory: Arc<crate::realtime::identity::Directory>,
    /// The store of reliable delivery, for the acks of other nodes' live messages ([`LocalRooms::live`]).
    pub delivery: Arc<std::sync::OnceLock<Arc<dyn crate::delivery::Store>>>,
}

impl<A: Adapter> LocalRooms for Local<A> {
    fn answer(&self, ns: &str, query: &Query) -> Reply {
        match query {
            Query::Sockets { except } => return self.sockets(except),
            Query::Command {
                nsp,
                filter,
                action,
            } => return self.command(nsp, filter, action),
            _ => {}
        }
        let Some(ops) = self.io.of(ns) else {
            return Reply::empty(query);
        };
        match query {
            Query::Users { room } => {
                let ids = ops.clone().local().to(room.clone()).socket_ids();
                let mut unlisted = Vec::new();
                let mut members: Vec<Member> = self.directory.read(ns, |users| {
                    ids.iter()
                        .filter_map(|&sid| match users.of(sid) {
                            Some(id_user) => Some(Member {
                                id_user: id_user.map(str::to_owned),
                                id_socket: sid.to_string(),
                            }),
                            None => {
                                unlisted.push(sid);
                                None
                            }
                        })
                        .collect()
                });
                // Not listed (yet, or any more): the socket itself says, if it is still here. Outside the
                // directory's lock, which a socket's drop takes.
                members.extend(unlisted.into_iter().filter_map(|sid| {
                    let socket = ops.get_socket(sid)?;
                    let identity = socket.extensions.get::<Arc<Identity>>();
                    Some(Member {
                        id_user: identity.and_then(|id| id.id_user.as_deref().map(str::to_owned)),
                        id_socket: sid.to_string(),
                    })
                }));
                // In the order `GET /{room}/users` lists them: the asking node then merges the nodes' sorted runs
                // instead of sorting all N (at N = 10,000 the sort was ~0.8 ms of the asker's critical path).
                members.sort_unstable_by(|a, b| a.listing_key().cmp(&b.listing_key()));
                Reply::Users { members }
            }
            Query::Rooms => {
                let mut rooms: BTreeMap<String, (u64, BTreeSet<Arc<str>>)> = BTreeMap::new();
                for s in ops.local().sockets() {
                    let user = s
                        .extensions
                        .get::<Arc<Identity>>()
                        .and_then(|id| id.id_user.clone());
                    for room in s.rooms() {
                        let (sockets, users) = rooms.entry(room.into_owned()).or_default();
                        *sockets += 1;
                        if let Some(user) = &user {
                            users.insert(user.clone());
                        }
                    }
                }
                Reply::Rooms {
                    rooms: rooms
                        .into_iter()
                        .map(|(room, (sockets, users))| RoomCount {
                            room,
                            sockets,
                            users: users.iter().map(|u| u.to_string()).collect(),
                        })
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
            Query::Sockets { .. } | Query::Command { .. } => unreachable!("answered above"),
        }
    }

    fn room_count(&self) -> usize {
        self.io
            .nsps()
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
        Box::pin(SocketIo::close(&self.io))
    }

    fn live(&self, msg: Live) {
        // Not serving the namespace here (a dynamic one comes and goes), or none of the room's sockets here (most
        // nodes, for a user room): nothing to send, and no ack to wait for. A socket joining after this check
        // reads the room's pending messages, this one included (it was stored before it was published).
        let (Some(store), Some(ops)) = (self.delivery.get(), self.io.of(&msg.ns)) else {
            return;
        };
        if ops.local().to(msg.room.clone()).socket_ids().is_empty() {
            return;
        }
        let push: Arc<dyn super::push::Push> = Arc::new(self.io.clone());
        super::deliver::live_from_another_node(push, store.clone(), msg);
    }
}

impl<A: Adapter> Local<A> {
    /// Every local socket of every namespace but `except`. Asked by an admin UI that just connected: from now
    /// on this node reports details ([`WATCH_LEASE`], renewed by the admin module while it stays).
    fn sockets(&self, except: &str) -> Reply {
        self.observer.watched_for(WATCH_LEASE);
        let sockets = self
            .io
            .nsps()
            .into_iter()
            .flat_map(|ns| ns.local().sockets())
            .filter(|s| s.ns() != except)
            .map(|s| socket_info(&s))
            .collect();
        Reply::Sockets { sockets }
    }

    /// Applies an admin command to the local sockets of `nsp` that are `filter` (an id, or a room).
    fn command(&self, nsp: &str, filter: &Option<String>, action: &Action) -> Reply {
        let Some(ops) = self.io.of(nsp) else {
            return Reply::Done { sockets: 0 };
        };
        let by_id = filter
            .as_deref()
            .and_then(|f| f.parse().ok())
            .and_then(|sid| ops.get_socket(sid));
        let sockets: Vec<_> = match (by_id, filter) {
            (Some(socket), _) => vec![socket],
            (None, Some(room)) => ops.local().to(room.clone()).sockets(),
            (None, None) => ops.local().sockets(),
        };
        let observer = &self.observer;
        for socket in &sockets {
            match action {
                Action::Join { room } => {
                    socket.join(room.clone());
                    observer.joined(socket, std::slice::from_ref(room));
                    if let Some(tracker) = self.webhooks.get() {
                        tracker.moved(&socket.id.to_string(), true, std::slice::from_ref(room));
                    }
                    Recoverable::rooms_changed(socket);
                }
                Action::Leave { room } => {
                    socket.leave(room.clone());
                    observer.left(socket, room);
                    if let Some(tracker) = self.webhooks.get() {
                        tracker.moved(&socket.id.to_string(), false, std::slice::from_ref(room));
                    }
                    Recoverable::rooms_changed(socket);
                }
                Action::Disconnect { close: _ } => {
                    let _ = socket.clone().disconnect();
                }
                Action::Replace { conn } => {
                    Recoverable::replaced(socket, conn);
                }
                Action::Emit { event, args } => {
                    let args = Args(args.clone());
                    if socket.emit(event.as_str(), &args).is_ok() {
                        observer.sent_args(socket, event, &args.0);
                    }
                }
            }
        }
        Reply::Done {
            sockets: sockets.len() as u64,
        }
    }
}
