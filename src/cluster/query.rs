//! Waiting for the answers to one cluster query: whom to wait for, which replies count, when to stop.
//!
//! Pure logic over a small [`Transport`] (publish the request, ask which reply channels are still subscribed)
//! and the [`Membership`]; [`super::Cluster`] gives it Redis, the tests below a fake, with tokio's paused clock.
//!
//! The rules: wait for the other nodes that are members when the request goes out; stop waiting for one that is
//! declared down or leaves meanwhile; count a node that joined later if it answers; ignore duplicates, replies
//! from non-members and replies of another kind (counted as rejected); at the deadline answer with what arrived,
//! marked partial. A request that cannot be published gives this node's own answer, marked failed.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    sync::Arc,
};

use prometheus_client::metrics::counter::Counter;
use tokio::{
    sync::{Semaphore, mpsc},
    time::Instant,
};

use super::{
    membership::Membership,
    protocol::{Reply, Request, Response},
};

/// How soon a request is sent again while Redis is unsettled (see [`Asker::gather`]).
const RESEND: std::time::Duration = std::time::Duration::from_millis(200);

/// What a query needs from Redis.
pub trait Transport: Sync {
    /// Publishes `request` to every node; returns how many subscribers received it (this node included).
    fn publish(&self, request: &Request) -> impl Future<Output = Result<usize, String>> + Send;

    /// How many subscribers the reply channel of each of `nodes` has now. A node missing from the answer is
    /// unknown, and kept.
    fn reply_subscribers(
        &self,
        nodes: &[Arc<str>],
    ) -> impl Future<Output = Result<HashMap<Arc<str>, u64>, String>> + Send;

    /// Whether Redis has been steady for a while: no reconnect, failover or slot moved lately. Only then does a
    /// reply channel without subscribers prove its node gone (its process died and Redis dropped its
    /// connections); just after a disturbance it may only not be subscribed again yet.
    fn settled(&self) -> bool;

    /// How many disturbances (reconnects, failovers, slot moves) this node has seen: one after a request was
    /// published means the request, or the replies to it, may have been lost with the server that took them.
    fn disturbances(&self) -> u64;
}

/// The result of a query across the cluster.
#[derive(Debug)]
pub struct Answer {
    /// Each node's reply, this node's first.
    pub nodes: Vec<(Arc<str>, Reply)>,
    /// Nodes that answered, this one included.
    pub answered: usize,
    /// Nodes that should have answered, when known (not known when Redis could not be reached).
    pub expected: Option<usize>,
    /// Why the answer may be incomplete, besides nodes that did not answer in time.
    pub error: Option<String>,
}

impl Answer {
    /// An answer from this node alone (single-node mode, and the start of every cluster query).
    pub fn local(node: Arc<str>, reply: Reply) -> Self {
        Self {
            nodes: vec![(node, reply)],
            answered: 1,
            expected: Some(1),
            error: None,
        }
    }

    pub fn is_partial(&self) -> bool {
        self.expected != Some(self.answered)
    }

    /// This node's own answer, because the cluster could not be asked.
    pub(crate) fn failed(mut self, error: String) -> Self {
        tracing::warn!(%error, "room query answered from this node only");
        self.expected = None;
        self.error = Some(error);
        self
    }
}

/// What [`Asker::gather`] works with.
pub struct Asker<'a, T> {
    pub transport: &'a T,
    pub membership: &'a Membership,
    /// Replies ignored (duplicates, from non-members, of another kind) are counted here.
    pub rejected: &'a Counter,
    /// Places for the queries this node asks at once: a query waits for one until its deadline, so a burst of
    /// askers cannot flood the other nodes (each answers a bounded number at once, and drops the rest).
    pub in_flight: &'a Semaphore,
}

impl<T: Transport> Asker<'_, T> {
    /// Publishes `request` and collects the replies arriving on `replies` until every node waited for has
    /// answered, or `deadline`. `mine` makes this node's own answer: once the request is out, so that it is built
    /// while the other nodes build theirs (at 10,000 sockets it is a few hundred microseconds of the query).
    pub async fn gather(
        &self,
        request: &Request,
        mine: impl FnOnce() -> Answer,
        replies: &mut mpsc::Receiver<Response>,
        deadline: Instant,
    ) -> Answer {
        let membership = self.membership;
        let Ok(Ok(_place)) = tokio::time::timeout_at(deadline, self.in_flight.acquire()).await
        else {
            return mine().failed("too many cluster queries in flight on this node".into());
        };
        // Whom to wait for is decided before the request goes out: a node heard of later may have subscribed
        // after our SPUBLISH and never see the request (if it answers all the same, it is counted below).
        let mut departures = membership.departures();
        let mut waiting: HashSet<Arc<str>> = membership.others().into_iter().collect();

        // Counted before each publish: a disturbance during it may have lost the request too.
        let mut disturbances = self.transport.disturbances();
        let subscribers = loop {
            let published =
                tokio::time::timeout_at(deadline, self.transport.publish(request)).await;
            let failure = match published {
                Ok(Ok(n)) if n > 0 => break n,
                // Zero: not even our own subscription is live (Redis just came back, re-subscribing is under
                // way), so nobody can say who else is there.
                Ok(Ok(_)) => "not subscribed to the cluster channels yet".to_owned(),
                Ok(Err(e)) => e,
                Err(_) => return mine().failed("redis: publish timed out".into()),
            };
            // Just after a reconnect, failover or slot move, Redis may take the request a moment later.
            if self.transport.settled() || Instant::now() + RESEND >= deadline {
                return mine().failed(failure);
            }
            tokio::time::sleep(RESEND).await;
            disturbances = self.transport.disturbances();
        };
        let mut answer = mine();
        waiting.retain(|n| membership.contains(n));
        // Fewer subscribers than live nodes: some node's connection to Redis is gone (killed, not hung): ask
        // Redis which, rather than wait for its heartbeats to stop. Not while Redis is unsettled: a node whose
        // subscription is being restored is alive, and leaving it out would make a wrong answer look whole; it is
        // waited for, and the answer is partial if it cannot reply.
        if subscribers < waiting.len() + 1 && self.transport.settled() {
            self.forget_unsubscribed(&waiting, deadline).await;
            waiting.retain(|n| membership.contains(n));
        }
        let mut expected = 1 + waiting.len();
        // While Redis is unsettled, a node whose subscription was not restored yet missed the request: send it
        // again until as many nodes have it as are waited for (replies to a copy answered before are ignored).
        // Redis disturbed since the last copy went out (a master killed just after it took the request, or the
        // replies): that copy, or the replies to it, may be lost, so it is sent again too.
        let mut short = subscribers < expected;
        let mut resent = false;
        let mut resend = tokio::time::interval_at(Instant::now() + RESEND, RESEND);
        // A publish that waited for Redis to come back is not followed by a burst of the ticks it missed.
        resend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !waiting.is_empty() {
            tokio::select! {
                // Checked at each tick: a disturbance comes while the query waits for nothing else.
                _ = resend.tick() => {
                    let before = self.transport.disturbances();
                    if !(short || before != disturbances) || self.transport.settled() {
                        continue;
                    }
                    let published = tokio::time::timeout_at(deadline, self.transport.publish(request)).await;
                    if let Ok(Ok(n)) = published {
                        resent = true;
                        short = n < expected;
                        disturbances = before;
                    }
                }
                reply = replies.recv() => {
                    let Some(resp) = reply else { break };
                    let node: Arc<str> = resp.node.into();
                    if !resp.reply.answers(&request.query) {
                        tracing::warn!(from = %node, "reply of another kind ignored");
                        self.rejected.inc();
                    } else if waiting.remove(&node) {
                        answer.nodes.push((node, resp.reply));
                    } else if answer.nodes.iter().any(|(n, _)| *n == node) {
                        if !resent {
                            tracing::warn!(from = %node, "duplicate reply ignored");
                            self.rejected.inc();
                        }
                    } else if membership.contains(&node) {
                        // Joined after we asked: its answer is as good as any.
                        expected += 1;
                        answer.nodes.push((node, resp.reply));
                    } else {
                        tracing::warn!(from = %node, "reply from a node that is not a member ignored");
                        self.rejected.inc();
                    }
                }
                Ok(()) = departures.changed() => {
                    let before = waiting.len();
                    waiting.retain(|n| membership.contains(n));
                    expected -= before - waiting.len();
                }
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        answer.answered = answer.nodes.len();
        answer.expected = Some(expected);
        if answer.is_partial() {
            tracing::warn!(
                ns = request.ns,
                query = ?request.query,
                answered = answer.answered,
                expected,
                missing = ?waiting,
                "cluster query timed out before every node answered"
            );
        }
        answer
    }

    /// Asks which of `nodes` still have their reply channel subscribed, and removes the others from the
    /// membership. When Redis does not answer in time, nothing changes.
    async fn forget_unsubscribed(&self, nodes: &HashSet<Arc<str>>, deadline: Instant) {
        let nodes: Vec<Arc<str>> = nodes.iter().cloned().collect();
        let asked = self.transport.reply_subscribers(&nodes);
        let counts = match tokio::time::timeout_at(deadline, asked).await {
            Ok(Ok(counts)) => counts,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "could not ask which nodes are still subscribed");
                return;
            }
            Err(_) => return,
        };
        for node in &nodes {
            if counts.get(node) == Some(&0) {
                self.membership.remove(node, "its Redis connection is gone");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Mutex, time::Duration};

    use super::*;
    use crate::cluster::protocol::{Member, Query, VERSION};

    const TIMEOUT: Duration = Duration::from_secs(1);
    const HEARTBEAT: Duration = Duration::from_secs(1);

    type Hook = Box<dyn Fn() + Send + Sync>;

    /// A transport whose answers the test sets.
    struct Fake {
        /// What `publish` answers; `None`: it never answers.
        subscribers: Option<Result<usize, String>>,
        /// What `reply_subscribers` answers.
        channels: Result<HashMap<Arc<str>, u64>, String>,
        /// Runs while the request is being published (a heartbeat arriving meanwhile).
        on_publish: Option<Hook>,
        asked: Mutex<Vec<Vec<Arc<str>>>>,
        /// What `settled` answers.
        settled: bool,
        /// How many times `publish` was called.
        published: std::sync::atomic::AtomicUsize,
        /// What `disturbances` answers.
        disturbances: Arc<std::sync::atomic::AtomicU64>,
    }

    impl Fake {
        fn delivering(subscribers: usize) -> Self {
            Self {
                subscribers: Some(Ok(subscribers)),
                channels: Ok(HashMap::new()),
                on_publish: None,
                asked: Mutex::default(),
                settled: true,
                published: Default::default(),
                disturbances: Default::default(),
            }
        }
    }

    impl Transport for Fake {
        async fn publish(&self, _: &Request) -> Result<usize, String> {
            self.published
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Some(hook) = &self.on_publish {
                hook();
            }
            match &self.subscribers {
                Some(r) => r.clone(),
                None => std::future::pending().await,
            }
        }

        async fn reply_subscribers(
            &self,
            nodes: &[Arc<str>],
        ) -> Result<HashMap<Arc<str>, u64>, String> {
            self.asked.lock().unwrap().push(nodes.to_vec());
            self.channels.clone()
        }

        fn settled(&self) -> bool {
            self.settled
        }

        fn disturbances(&self) -> u64 {
            self.disturbances.load(std::sync::atomic::Ordering::Relaxed)
        }
    }

    fn members(others: &[&str]) -> Arc<Membership> {
        let m = Arc::new(Membership::new("a".into(), HEARTBEAT));
        for n in others {
            m.alive(n);
        }
        m
    }

    fn users() -> Query {
        Query::Users {
            room: "Maths".into(),
        }
    }

    fn reply(request: &Request, node: &str) -> Response {
        Response {
            v: VERSION,
            id: request.id,
            node: node.into(),
            reply: Reply::Users {
                members: vec![Member {
                    id_socket: format!("{node}AAAAAAAAAAAAAAAAAAA"),
                    id_user: Some(format!("user-{node}")),
                }],
            },
        }
    }

    /// One query: `replies` are fed by the test (through the returned sender) while it runs.
    struct Run {
        request: Request,
        tx: mpsc::Sender<Response>,
        rx: mpsc::Receiver<Response>,
        rejected: Counter,
        in_flight: Arc<Semaphore>,
    }

    impl Run {
        fn new(query: Query) -> Self {
            let (tx, rx) = mpsc::channel(16);
            Self {
                request: Request::new("a", "/", query),
                tx,
                rx,
                rejected: Counter::default(),
                in_flight: Arc::new(Semaphore::new(4)),
            }
        }

        /// Queues `resp` to arrive after `after`.
        fn send_after(&self, after: Duration, resp: Response) {
            let tx = self.tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                tx.send(resp).await.unwrap();
            });
        }

        /// Runs the query; returns the answer and how long it took.
        async fn gather(
            &mut self,
            transport: &Fake,
            membership: &Membership,
        ) -> (Answer, Duration) {
            let asker = Asker {
                transport,
                membership,
                rejected: &self.rejected,
                in_flight: &self.in_flight,
            };
            let started = Instant::now();
            let mine = Answer::local("a".into(), Reply::empty(&self.request.query));
            let answer = asker
                .gather(&self.request, || mine, &mut self.rx, started + TIMEOUT)
                .await;
            (answer, started.elapsed())
        }
    }

    fn answered_by(answer: &Answer) -> Vec<&str> {
        answer.nodes.iter().map(|(n, _)| &**n).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn returns_as_soon_as_every_node_answered() {
        let membership = members(&["b", "c"]);
        let mut run = Run::new(users());
        run.send_after(Duration::from_millis(10), reply(&run.request, "c"));
        run.send_after(Duration::from_millis(30), reply(&run.request, "b"));
        let (answer, took) = run.gather(&Fake::delivering(3), &membership).await;
        assert_eq!(took, Duration::from_millis(30));
        assert_eq!(answered_by(&answer), ["a", "c", "b"]);
        assert_eq!((answer.answered, answer.expected), (3, Some(3)));
        assert!(!answer.is_partial() && answer.error.is_none());
        assert_eq!(answer.nodes[1].1, reply(&run.request, "c").reply);
        assert_eq!(run.rejected.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_that_never_answers_makes_it_partial_exactly_at_the_deadline() {
        let membership = members(&["b", "c"]);
        let mut run = Run::new(users());
        run.send_after(Duration::from_millis(10), reply(&run.request, "b"));
        let (answer, took) = run.gather(&Fake::delivering(3), &membership).await;
        assert_eq!(took, TIMEOUT);
        assert_eq!(answered_by(&answer), ["a", "b"]);
        assert_eq!((answer.answered, answer.expected), (2, Some(3)));
        assert!(answer.is_partial());
        assert!(answer.error.is_none(), "a slow node is not an error");
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_declared_down_meanwhile_is_no_longer_waited_for() {
        let membership = members(&["b", "c"]);
        let mut run = Run::new(users());
        run.send_after(Duration::from_millis(10), reply(&run.request, "c"));
        // b is declared down after missing its heartbeats; c keeps beating.
        let m = membership.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            m.alive("c");
            m.remove("b", "it is shutting down");
        });
        let (answer, took) = run.gather(&Fake::delivering(3), &membership).await;
        assert_eq!(took, Duration::from_millis(500));
        assert_eq!(answered_by(&answer), ["a", "c"]);
        assert_eq!((answer.answered, answer.expected), (2, Some(2)));
        assert!(!answer.is_partial());
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_swept_for_silence_is_no_longer_waited_for() {
        // Heartbeats every 1 s: silent for 3 s means down; the query waits up to 5 s.
        let membership = members(&["b"]);
        let mut run = Run::new(users());
        let m = membership.clone();
        tokio::spawn(async move {
            // We hear our own heartbeat all along: b's silence counts.
            for _ in 0..3 {
                m.alive("a");
                tokio::time::sleep(HEARTBEAT).await;
            }
            m.alive("a");
            m.sweep();
        });
        let asker = Asker {
            transport: &Fake::delivering(2),
            membership: &membership,
            rejected: &run.rejected,
            in_flight: &run.in_flight,
        };
        let started = Instant::now();
        let mine = Answer::local("a".into(), Reply::empty(&run.request.query));
        let answer = asker
            .gather(&run.request, || mine, &mut run.rx, started + 5 * TIMEOUT)
            .await;
        assert_eq!(started.elapsed(), 3 * HEARTBEAT);
        assert_eq!((answer.answered, answer.expected), (1, Some(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_joiner_that_answers_is_counted() {
        let membership = members(&["b"]);
        let mut run = Run::new(users());
        let m = membership.clone();
        let (tx, request) = (run.tx.clone(), run.request.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            m.alive("c");
            tx.send(reply(&request, "c")).await.unwrap();
        });
        run.send_after(Duration::from_millis(20), reply(&run.request, "b"));
        let (answer, took) = run.gather(&Fake::delivering(2), &membership).await;
        assert_eq!(took, Duration::from_millis(20));
        assert_eq!(answered_by(&answer), ["a", "c", "b"]);
        assert_eq!((answer.answered, answer.expected), (3, Some(3)));
        assert!(!answer.is_partial());
    }

    /// A node heard of while the request was being published may have subscribed after it: not waited for (it
    /// is counted if it answers, as a late joiner).
    #[tokio::test(start_paused = true)]
    async fn a_node_joining_during_the_publish_is_not_waited_for() {
        let membership = members(&["b"]);
        let mut run = Run::new(users());
        let m = membership.clone();
        let transport = Fake {
            on_publish: Some(Box::new(move || {
                m.alive("c");
            })),
            ..Fake::delivering(2)
        };
        run.send_after(Duration::from_millis(10), reply(&run.request, "b"));
        let (answer, took) = run.gather(&transport, &membership).await;
        assert_eq!(took, Duration::from_millis(10));
        assert_eq!((answer.answered, answer.expected), (2, Some(2)));
    }

    #[tokio::test(start_paused = true)]
    async fn duplicates_and_replies_from_non_members_are_ignored() {
        let membership = members(&["b", "c"]);
        let mut run = Run::new(users());
        let mut forged = reply(&run.request, "b");
        forged.reply = Reply::Users { members: vec![] };
        run.send_after(Duration::from_millis(10), reply(&run.request, "b"));
        run.send_after(Duration::from_millis(20), forged);
        run.send_after(Duration::from_millis(30), reply(&run.request, "evil"));
        run.send_after(Duration::from_millis(40), reply(&run.request, "c"));
        let (answer, took) = run.gather(&Fake::delivering(3), &membership).await;
        assert_eq!(took, Duration::from_millis(40));
        assert_eq!(answered_by(&answer), ["a", "b", "c"]);
        assert_eq!(
            answer.nodes[1].1,
            reply(&run.request, "b").reply,
            "the first reply stays"
        );
        assert_eq!((answer.answered, answer.expected), (3, Some(3)));
        assert_eq!(run.rejected.get(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reply_of_another_kind_is_ignored() {
        let membership = members(&["b"]);
        let mut run = Run::new(users());
        let mut wrong = reply(&run.request, "b");
        wrong.reply = Reply::Views { count: 3 };
        run.send_after(Duration::from_millis(10), wrong);
        let (answer, took) = run.gather(&Fake::delivering(2), &membership).await;
        assert_eq!(took, TIMEOUT, "b is still waited for");
        assert_eq!(answered_by(&answer), ["a"]);
        assert_eq!((answer.answered, answer.expected), (1, Some(2)));
        assert_eq!(run.rejected.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_publish_gives_a_failed_answer_at_once() {
        let membership = members(&["b"]);
        for (subscribers, error) in [
            (Ok(0), "not subscribed to the cluster channels yet"),
            (
                Err("redis: connection refused".to_owned()),
                "redis: connection refused",
            ),
        ] {
            let mut run = Run::new(users());
            let transport = Fake {
                subscribers: Some(subscribers),
                ..Fake::delivering(0)
            };
            let (answer, took) = run.gather(&transport, &membership).await;
            assert_eq!(took, Duration::ZERO);
            assert_eq!(answered_by(&answer), ["a"]);
            assert_eq!((answer.answered, answer.expected), (1, None));
            assert_eq!(answer.error.as_deref(), Some(error));
            assert!(answer.is_partial());
        }
        // A publish that never completes fails at the deadline.
        let mut run = Run::new(users());
        let transport = Fake {
            subscribers: None,
            ..Fake::delivering(0)
        };
        let (answer, took) = run.gather(&transport, &membership).await;
        assert_eq!(took, TIMEOUT);
        assert_eq!(answer.error.as_deref(), Some("redis: publish timed out"));
    }

    /// This node's own answer is built once the request is out, while the other nodes build theirs.
    #[tokio::test(start_paused = true)]
    async fn the_own_answer_is_built_after_the_request_is_published() {
        let membership = members(&["b"]);
        let run = Run::new(users());
        run.send_after(Duration::from_millis(10), reply(&run.request, "b"));
        let transport = Fake::delivering(2);
        let asker = Asker {
            transport: &transport,
            membership: &membership,
            rejected: &run.rejected,
            in_flight: &run.in_flight,
        };
        let mut rx = run.rx;
        let published_before_mine = std::cell::Cell::new(None);
        let mine = || {
            published_before_mine.set(Some(
                transport
                    .published
                    .load(std::sync::atomic::Ordering::Relaxed),
            ));
            Answer::local("a".into(), Reply::empty(&run.request.query))
        };
        let answer = asker
            .gather(&run.request, mine, &mut rx, Instant::now() + TIMEOUT)
            .await;
        assert_eq!(published_before_mine.get(), Some(1));
        assert_eq!(answered_by(&answer), ["a", "b"]);
    }

    /// Past the queries a node may have in flight, a query waits for a place, and fails at its deadline if none
    /// frees up.
    #[tokio::test(start_paused = true)]
    async fn queries_wait_for_a_place_in_flight() {
        let membership = members(&["b"]);
        let mut run = Run::new(users());
        run.in_flight = Arc::new(Semaphore::new(1));
        let taken = run.in_flight.clone().acquire_owned().await.unwrap();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(taken);
        });
        run.send_after(Duration::from_millis(310), reply(&run.request, "b"));
        let (answer, took) = run.gather(&Fake::delivering(2), &membership).await;
        assert_eq!(took, Duration::from_millis(310));
        assert_eq!((answer.answered, answer.expected), (2, Some(2)));

        let mut run = Run::new(users());
        run.in_flight = Arc::new(Semaphore::new(1));
        let _taken = run.in_flight.clone().acquire_owned().await.unwrap();
        let (answer, took) = run.gather(&Fake::delivering(2), &membership).await;
        assert_eq!(took, TIMEOUT);
        assert_eq!((answer.answered, answer.expected), (1, None));
        assert_eq!(
            answer.error.as_deref(),
            Some("too many cluster queries in flight on this node")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn nodes_without_a_reply_subscription_are_dropped_at_once() {
        let membership = members(&["b", "c"]);
        let mut run = Run::new(users());
        // Redis delivered the request to a and b only: c's connection is gone.
        let transport = Fake {
            channels: Ok(HashMap::from([("b".into(), 1), ("c".into(), 0)])),
            ..Fake::delivering(2)
        };
        run.send_after(Duration::from_millis(10), reply(&run.request, "b"));
        let (answer, took) = run.gather(&transport, &membership).await;
        assert_eq!(took, Duration::from_millis(10));
        assert_eq!((answer.answered, answer.expected), (2, Some(2)));
        assert!(!membership.contains("c") && membership.contains("b"));
        let mut asked = transport.asked.lock().unwrap()[0].clone();
        asked.sort();
        assert_eq!(asked, [Arc::<str>::from("b"), "c".into()]);

        // As many subscribers as members: Redis is not asked.
        let transport = Fake::delivering(2);
        let mut run = Run::new(users());
        run.send_after(Duration::from_millis(10), reply(&run.request, "b"));
        let (answer, _) = run.gather(&transport, &membership).await;
        assert_eq!((answer.answered, answer.expected), (2, Some(2)));
        assert!(transport.asked.lock().unwrap().is_empty());
    }

    /// Just after a Redis reconnect, failover or slot move, a reply channel without subscribers may be one not
    /// restored yet: its node is waited for (the answer is partial when it cannot reply), never left out.
    #[tokio::test(start_paused = true)]
    async fn while_redis_is_unsettled_nodes_are_not_dropped_for_missing_subscriptions() {
        let membership = members(&["b", "c"]);
        let mut run = Run::new(users());
        let transport = Fake {
            channels: Ok(HashMap::from([("b".into(), 1), ("c".into(), 0)])),
            settled: false,
            ..Fake::delivering(2)
        };
        run.send_after(Duration::from_millis(10), reply(&run.request, "b"));
        let (answer, took) = run.gather(&transport, &membership).await;
        assert_eq!(took, TIMEOUT);
        assert_eq!((answer.answered, answer.expected), (2, Some(3)));
        assert!(answer.is_partial());
        assert!(membership.contains("c"));
        assert!(transport.asked.lock().unwrap().is_empty());
    }

    /// While Redis is unsettled, a request that reached fewer nodes than are waited for is sent again, so a node
    /// that subscribes again a moment later answers; when Redis refuses it, it is tried again until the deadline.
    #[tokio::test(start_paused = true)]
    async fn while_redis_is_unsettled_the_request_is_sent_again() {
        let membership = members(&["b", "c"]);
        let mut run = Run::new(users());
        let transport = Fake {
            settled: false,
            ..Fake::delivering(2)
        };
        run.send_after(Duration::from_millis(10), reply(&run.request, "b"));
        // c answers the copy sent 200 ms later; b answers it again (ignored).
        run.send_after(Duration::from_millis(210), reply(&run.request, "c"));
        run.send_after(Duration::from_millis(211), reply(&run.request, "b"));
        let (answer, took) = run.gather(&transport, &membership).await;
        assert_eq!(took, Duration::from_millis(210));
        assert_eq!((answer.answered, answer.expected), (3, Some(3)));
        assert_eq!(
            transport
                .published
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );

        // Refused until the deadline: failed, after trying every 200 ms.
        let transport = Fake {
            subscribers: Some(Err("redis: connection refused".into())),
            settled: false,
            ..Fake::delivering(0)
        };
        let mut run = Run::new(users());
        let (answer, took) = run.gather(&transport, &membership).await;
        assert!(answer.error.is_some());
        assert!(took >= TIMEOUT - Duration::from_millis(200), "{took:?}");
        assert_eq!(
            transport
                .published
                .load(std::sync::atomic::Ordering::Relaxed),
            5
        );
    }

    /// A request every node subscribed to took, then Redis disturbed (the master that took it killed before it
    /// passed it on, or the one holding our reply channel killed as the replies came): no reply will come for that
    /// copy, so it is sent again once Redis takes it, and the nodes answer the copy. Undisturbed, a request that
    /// reached every node is sent once, however long the replies take.
    #[tokio::test(start_paused = true)]
    async fn a_request_sent_before_redis_was_disturbed_is_sent_again() {
        let membership = members(&["b", "c"]);
        let mut run = Run::new(users());
        let transport = Fake {
            settled: false,
            ..Fake::delivering(3)
        };
        let disturbances = transport.disturbances.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            disturbances.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        // The copy sent at the 400 ms tick is answered.
        run.send_after(Duration::from_millis(410), reply(&run.request, "b"));
        run.send_after(Duration::from_millis(420), reply(&run.request, "c"));
        let (answer, took) = run.gather(&transport, &membership).await;
        assert_eq!(took, Duration::from_millis(420));
        assert_eq!((answer.answered, answer.expected), (3, Some(3)));
        let published = |t: &Fake| t.published.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(published(&transport), 2);

        let transport = Fake {
            settled: false,
            ..Fake::delivering(3)
        };
        let mut run = Run::new(users());
        run.send_after(Duration::from_millis(900), reply(&run.request, "b"));
        run.send_after(Duration::from_millis(900), reply(&run.request, "c"));
        let (answer, _) = run.gather(&transport, &membership).await;
        assert_eq!((answer.answered, answer.expected), (3, Some(3)));
        assert_eq!(published(&transport), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn when_redis_cannot_say_who_is_subscribed_every_member_is_waited_for() {
        let membership = members(&["b", "c"]);
        let mut run = Run::new(users());
        let transport = Fake {
            channels: Err("redis: timeout".into()),
            ..Fake::delivering(2)
        };
        run.send_after(Duration::from_millis(10), reply(&run.request, "b"));
        let (answer, took) = run.gather(&transport, &membership).await;
        assert_eq!(took, TIMEOUT);
        assert_eq!((answer.answered, answer.expected), (2, Some(3)));
        assert!(membership.contains("c"));
    }
}
