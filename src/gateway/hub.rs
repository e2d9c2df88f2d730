//! This node's gateway clients and the replies they wait for. Pure bookkeeping behind one lock: who is connected
//! (by namespace and socket, by namespace and user), and which envelope ids await a reply for which client.
//!
//! A client is keyed by its namespace and socket id together: one Socket.IO connection multiplexing `/a` and `/b`
//! has the same socket id in both (socketioxide uses the Engine.IO session id), and each is its own client.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

/// Envelopes a client may have waiting for replies; beyond it the oldest stops waiting (a backend that never
/// replies must not grow memory).
pub const MAX_WAITING_PER_CLIENT: usize = 256;
/// How long an envelope waits for its reply.
pub const REPLY_WAIT: Duration = Duration::from_secs(60);

pub use crate::realtime::bus::{Client, Outgoing};

/// What an envelope waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waiting {
    /// The reply to `onconnect`: `{"type": "onconnect"}`; a failure closes the client.
    Connect,
    /// The reply to a message published to `topic`: `{"type": topic}`; a failure is an `error` frame.
    Message { topic: String },
}

/// A client's key: (namespace, socket id).
type Key = (String, String);

fn key(namespace: &str, socket: &str) -> Key {
    (namespace.to_owned(), socket.to_owned())
}

#[derive(Debug, Default)]
pub struct Hub {
    clients: HashMap<Key, Arc<Client>>,
    /// (namespace, username) -> socket ids (in that namespace).
    by_user: HashMap<(String, String), HashSet<String>>,
    waiting: HashMap<String, (Key, Waiting, Instant)>,
    /// Each client's waiting envelope ids, oldest first.
    waiting_of: HashMap<Key, VecDeque<String>>,
}

impl Hub {
    pub fn add(&mut self, client: Arc<Client>) {
        let user = (client.namespace.clone(), client.username.clone());
        self.by_user
            .entry(user)
            .or_default()
            .insert(client.socket.clone());
        self.clients
            .insert(key(&client.namespace, &client.socket), client);
    }

    /// Removes a client and what it waited for.
    pub fn remove(&mut self, namespace: &str, socket: &str) -> Option<Arc<Client>> {
        let client = self.clients.remove(&key(namespace, socket))?;
        let user = (client.namespace.clone(), client.username.clone());
        if let Some(set) = self.by_user.get_mut(&user) {
            set.remove(socket);
            if set.is_empty() {
                self.by_user.remove(&user);
            }
        }
        for id in self
            .waiting_of
            .remove(&key(namespace, socket))
            .unwrap_or_default()
        {
            self.waiting.remove(&id);
        }
        Some(client)
    }

    pub fn get(&self, namespace: &str, socket: &str) -> Option<Arc<Client>> {
        self.clients.get(&key(namespace, socket)).cloned()
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// The clients of `username` in `namespace`.
    pub fn of_user(&self, namespace: &str, username: &str) -> Vec<Arc<Client>> {
        self.by_user
            .get(&(namespace.to_owned(), username.to_owned()))
            .into_iter()
            .flatten()
            .filter_map(|s| self.clients.get(&key(namespace, s)).cloned())
            .collect()
    }

    /// Whether a client of `username` in `namespace` is here.
    pub fn has_user(&self, namespace: &str, username: &str) -> bool {
        self.by_user
            .contains_key(&(namespace.to_owned(), username.to_owned()))
    }

    /// Every (namespace, username) with a client here.
    pub fn users(&self) -> impl Iterator<Item = (&str, &str)> {
        self.by_user
            .keys()
            .map(|(ns, user)| (ns.as_str(), user.as_str()))
    }

    /// Every client, or every client of `namespace`.
    pub fn all(&self, namespace: Option<&str>) -> Vec<Arc<Client>> {
        self.clients
            .values()
            .filter(|c| namespace.is_none_or(|ns| c.namespace == ns))
            .cloned()
            .collect()
    }

    /// Envelope `id` of the client (`namespace`, `socket`) waits for its reply.
    pub fn expect(
        &mut self,
        id: String,
        namespace: &str,
        socket: &str,
        what: Waiting,
        now: Instant,
    ) {
        let client = key(namespace, socket);
        if !self.clients.contains_key(&client) {
            return;
        }
        let queue = self.waiting_of.entry(client.clone()).or_default();
        queue.push_back(id.clone());
        if queue.len() > MAX_WAITING_PER_CLIENT
            && let Some(oldest) = queue.pop_front()
        {
            self.waiting.remove(&oldest);
        }
        self.waiting.insert(id, (client, what, now));
    }

    /// The client and what envelope `id` waited for, once.
    pub fn take(&mut self, id: &str) -> Option<(Arc<Client>, Waiting)> {
        let (client, what, _) = self.waiting.remove(id)?;
        if let Some(queue) = self.waiting_of.get_mut(&client) {
            queue.retain(|i| i != id);
        }
        Some((self.clients.get(&client)?.clone(), what))
    }

    /// Forgets envelopes that waited longer than [`REPLY_WAIT`].
    pub fn expire(&mut self, now: Instant) {
        let old: Vec<String> = self
            .waiting
            .iter()
            .filter(|(_, (_, _, at))| now.duration_since(*at) > REPLY_WAIT)
            .map(|(id, _)| id.clone())
            .collect();
        for id in old {
            if let Some((client, _, _)) = self.waiting.remove(&id)
                && let Some(queue) = self.waiting_of.get_mut(&client)
            {
                queue.retain(|i| *i != id);
            }
        }
    }

    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    fn client(socket: &str, ns: &str, user: &str) -> Arc<Client> {
        Arc::new(Client {
            socket: socket.into(),
            namespace: ns.into(),
            username: user.into(),
            claims: Arc::default(),
            verified: true,
            params: Arc::default(),
            sink: Box::new(mpsc::channel(1).0),
        })
    }

    fn sockets(list: Vec<Arc<Client>>) -> Vec<String> {
        let mut v: Vec<String> = list.into_iter().map(|c| c.socket.clone()).collect();
        v.sort();
        v
    }

    #[test]
    fn finds_clients_by_user_and_namespace() {
        let mut hub = Hub::default();
        hub.add(client("s1", "/alex", "alex"));
        hub.add(client("s2", "/alex", "alex"));
        hub.add(client("s3", "/bob", "alex"));
        hub.add(client("s4", "/alex", "bob"));
        assert_eq!(sockets(hub.of_user("/alex", "alex")), ["s1", "s2"]);
        assert_eq!(sockets(hub.of_user("/bob", "alex")), ["s3"]);
        assert!(hub.of_user("/bob", "bob").is_empty());
        assert_eq!(sockets(hub.all(Some("/alex"))), ["s1", "s2", "s4"]);
        assert_eq!(hub.all(None).len(), 4);
        hub.remove("/alex", "s1");
        assert_eq!(sockets(hub.of_user("/alex", "alex")), ["s2"]);
        hub.remove("/alex", "s2");
        assert!(hub.of_user("/alex", "alex").is_empty() && hub.by_user.len() == 2);
        assert!(hub.remove("/alex", "s1").is_none());
    }

    /// One Socket.IO connection multiplexing `/a` and `/b` has one socket id in both: two clients, each with its
    /// own namespace, user and replies.
    #[test]
    fn one_socket_id_in_two_namespaces_is_two_clients() {
        let mut hub = Hub::default();
        let now = Instant::now();
        hub.add(client("s1", "/a", "alice"));
        hub.add(client("s1", "/b", "bob"));
        assert_eq!(hub.get("/a", "s1").unwrap().username, "alice");
        assert_eq!(hub.get("/b", "s1").unwrap().username, "bob");
        hub.expect("e1".into(), "/a", "s1", Waiting::Connect, now);
        hub.expect("e2".into(), "/b", "s1", Waiting::Connect, now);
        assert_eq!(hub.take("e1").unwrap().0.namespace, "/a");
        hub.remove("/a", "s1");
        assert!(hub.get("/a", "s1").is_none() && hub.of_user("/a", "alice").is_empty());
        assert_eq!(hub.take("e2").unwrap().0.username, "bob");
        assert_eq!(sockets(hub.of_user("/b", "bob")), ["s1"]);
        assert_eq!(hub.len(), 1);
    }

    #[test]
    fn replies_are_taken_once_and_never_outlive_their_client() {
        let mut hub = Hub::default();
        let now = Instant::now();
        hub.add(client("s1", "/", "u"));
        hub.expect("e1".into(), "/", "s1", Waiting::Connect, now);
        hub.expect(
            "e2".into(),
            "/",
            "s1",
            Waiting::Message { topic: "t".into() },
            now,
        );
        hub.expect("e3".into(), "/", "gone", Waiting::Connect, now);
        assert_eq!(
            hub.take("e1").map(|(c, w)| (c.socket.clone(), w)),
            Some(("s1".into(), Waiting::Connect))
        );
        assert!(hub.take("e1").is_none() && hub.take("e3").is_none());
        hub.remove("/", "s1");
        assert!(hub.take("e2").is_none());
        assert_eq!(hub.waiting(), 0);
    }

    #[test]
    fn waiting_is_bounded_per_client_and_in_time() {
        let mut hub = Hub::default();
        let now = Instant::now();
        hub.add(client("s1", "/", "u"));
        for i in 0..MAX_WAITING_PER_CLIENT + 10 {
            hub.expect(format!("e{i}"), "/", "s1", Waiting::Connect, now);
        }
        assert_eq!(hub.waiting(), MAX_WAITING_PER_CLIENT);
        assert!(hub.take("e0").is_none(), "the oldest stopped waiting");
        assert!(
            hub.take(&format!("e{}", MAX_WAITING_PER_CLIENT + 9))
                .is_some()
        );
        hub.expire(now + REPLY_WAIT + Duration::from_secs(1));
        assert_eq!(hub.waiting(), 0);
        assert!(hub.waiting_of[&key("/", "s1")].is_empty());
    }
}
