//! This node's gateway clients and the replies they wait for. Pure bookkeeping behind one lock: who is connected
//! (by socket, by user and namespace), and which envelope ids await a reply for which client.

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

#[derive(Debug, Default)]
pub struct Hub {
    clients: HashMap<String, Arc<Client>>,
    by_user: HashMap<(String, String), HashSet<String>>,
    waiting: HashMap<String, (String, Waiting, Instant)>,
    /// Each client's waiting envelope ids, oldest first.
    waiting_of: HashMap<String, VecDeque<String>>,
}

impl Hub {
    pub fn add(&mut self, client: Arc<Client>) {
        let key = (client.namespace.clone(), client.username.clone());
        self.by_user
            .entry(key)
            .or_default()
            .insert(client.socket.clone());
        self.clients.insert(client.socket.clone(), client);
    }

    /// Removes a client and what it waited for.
    pub fn remove(&mut self, socket: &str) -> Option<Arc<Client>> {
        let client = self.clients.remove(socket)?;
        let key = (client.namespace.clone(), client.username.clone());
        if let Some(set) = self.by_user.get_mut(&key) {
            set.remove(socket);
            if set.is_empty() {
                self.by_user.remove(&key);
            }
        }
        for id in self.waiting_of.remove(socket).unwrap_or_default() {
            self.waiting.remove(&id);
        }
        Some(client)
    }

    pub fn get(&self, socket: &str) -> Option<Arc<Client>> {
        self.clients.get(socket).cloned()
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
            .filter_map(|s| self.clients.get(s).cloned())
            .collect()
    }

    /// Every client, or every client of `namespace`.
    pub fn all(&self, namespace: Option<&str>) -> Vec<Arc<Client>> {
        self.clients
            .values()
            .filter(|c| namespace.is_none_or(|ns| c.namespace == ns))
            .cloned()
            .collect()
    }

    /// Envelope `id` of `socket` waits for its reply.
    pub fn expect(&mut self, id: String, socket: &str, what: Waiting, now: Instant) {
        if !self.clients.contains_key(socket) {
            return;
        }
        let queue = self.waiting_of.entry(socket.to_owned()).or_default();
        queue.push_back(id.clone());
        if queue.len() > MAX_WAITING_PER_CLIENT
            && let Some(oldest) = queue.pop_front()
        {
            self.waiting.remove(&oldest);
        }
        self.waiting.insert(id, (socket.to_owned(), what, now));
    }

    /// The client and what envelope `id` waited for, once.
    pub fn take(&mut self, id: &str) -> Option<(Arc<Client>, Waiting)> {
        let (socket, what, _) = self.waiting.remove(id)?;
        if let Some(queue) = self.waiting_of.get_mut(&socket) {
            queue.retain(|i| i != id);
        }
        Some((self.clients.get(&socket)?.clone(), what))
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
            if let Some((socket, _, _)) = self.waiting.remove(&id)
                && let Some(queue) = self.waiting_of.get_mut(&socket)
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
            sink: mpsc::channel(1).0,
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
        hub.remove("s1");
        assert_eq!(sockets(hub.of_user("/alex", "alex")), ["s2"]);
        hub.remove("s2");
        assert!(hub.of_user("/alex", "alex").is_empty() && hub.by_user.len() == 2);
        assert!(hub.remove("s1").is_none());
    }

    #[test]
    fn replies_are_taken_once_and_never_outlive_their_client() {
        let mut hub = Hub::default();
        let now = Instant::now();
        hub.add(client("s1", "/", "u"));
        hub.expect("e1".into(), "s1", Waiting::Connect, now);
        hub.expect(
            "e2".into(),
            "s1",
            Waiting::Message { topic: "t".into() },
            now,
        );
        hub.expect("e3".into(), "gone", Waiting::Connect, now);
        assert_eq!(
            hub.take("e1").map(|(c, w)| (c.socket.clone(), w)),
            Some(("s1".into(), Waiting::Connect))
        );
        assert!(hub.take("e1").is_none() && hub.take("e3").is_none());
        hub.remove("s1");
        assert!(hub.take("e2").is_none());
        assert_eq!(hub.waiting(), 0);
    }

    #[test]
    fn waiting_is_bounded_per_client_and_in_time() {
        let mut hub = Hub::default();
        let now = Instant::now();
        hub.add(client("s1", "/", "u"));
        for i in 0..MAX_WAITING_PER_CLIENT + 10 {
            hub.expect(format!("e{i}"), "s1", Waiting::Connect, now);
        }
        assert_eq!(hub.waiting(), MAX_WAITING_PER_CLIENT);
        assert!(hub.take("e0").is_none(), "the oldest stopped waiting");
        assert!(
            hub.take(&format!("e{}", MAX_WAITING_PER_CLIENT + 9))
                .is_some()
        );
        hub.expire(now + REPLY_WAIT + Duration::from_secs(1));
        assert_eq!(hub.waiting(), 0);
        assert!(hub.waiting_of["s1"].is_empty());
    }
}
