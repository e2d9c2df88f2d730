//! Sends the outboxes: for each [`Outlet`] (a webhook's URL, or a namespace's own sockets for members'
//! presence) and each namespace it wants, the node holding the lease reads the outbox in order from the stored
//! cursor and sends the events (a webhook POSTs them, signed with Standard Webhooks), retrying a failure with
//! exponential back-off and jitter for the outlet's retry time, then giving it up (counted, logged). The cursor
//! moves only after a success or a give-up, so a holder that dies mid-way leaves its events to the next one
//! (at-least-once; the `webhook-id` is the same). One namespace's failures never hold up another's, and sockets
//! never wait for any of it.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use tokio::{task::JoinSet, time::Instant};

use super::{Cursor, Event, Store};
use crate::{
    config::file::{CheckedWebhook, EventKind},
    domain::secret::redacted_url,
    telemetry::metrics::{Outcome, WebhookMetrics},
};

/// How often each node looks for namespaces whose lease is free.
const SCAN: Duration = Duration::from_secs(1);
/// A lease lasts this long unless renewed: a dead holder's events wait at most this before another node sends them.
const LEASE: Duration = Duration::from_secs(5);
/// A holder renews its lease this often.
const RENEW: Duration = Duration::from_millis(1_500);
/// An idle outbox is read again after this, doubling up to the outlet's [`Outlet::idle_max`].
const IDLE_MIN: Duration = Duration::from_millis(20);
/// Without batching, the cursor is stored at most this often within a read's events (and after the last one).
const PROGRESS_EVERY: Duration = Duration::from_millis(100);
/// Events read at once, and the most in one batch.
const READ: usize = 100;
/// The first retry's delay, doubling up to [`BACKOFF_MAX`] (each with up to half of it off, at random).
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The lease was lost (expired while stalled, or taken), or the outlet no longer wants the namespace here: the
/// worker stops, the next holder resends.
struct LeaseLost;

/// Where a dispatcher sends events.
pub trait Outlet: Send + Sync + 'static {
    /// The name of its lease and cursor in the store: the same on every node.
    fn key(&self) -> String;
    /// Whether it sends namespace `ns`'s events from this node (asked before taking a lease and while holding it).
    fn wants(&self, ns: &str) -> bool;
    /// Whether it sends events of this kind (the cursor moves past the others).
    fn takes(&self, kind: EventKind) -> bool;
    /// How long to wait for more events before a call.
    fn batch_ms(&self) -> u64;
    /// Whether a call takes several events (else one call per event, the cursor kept after each).
    fn batches(&self) -> bool {
        self.batch_ms() > 0
    }
    /// How long a failed call is retried before its events are given up.
    fn retry(&self) -> Duration;
    /// An idle outbox is read at most this far apart: the worst added lag.
    fn idle_max(&self) -> Duration;
    /// What logs call it (a webhook's URL without credentials).
    fn label(&self) -> String;
    /// Sends `events` of namespace `ns` once; `id` is their stable id. An error says why (it is retried).
    fn send<'a>(
        &'a self,
        ns: &'a str,
        id: &'a str,
        events: &'a [&'a Event],
    ) -> BoxFuture<'a, Result<(), String>>;
}

/// A `[[webhook]]`: events POSTed to its URL, signed.
pub struct Webhook {
    pub hook: Arc<CheckedWebhook>,
    pub client: reqwest::Client,
}

impl Outlet for Webhook {
    fn key(&self) -> String {
        self.hook.key()
    }

    fn wants(&self, ns: &str) -> bool {
        self.hook.wants(ns)
    }

    fn takes(&self, kind: EventKind) -> bool {
        self.hook.events.contains(&kind)
    }

    fn batch_ms(&self) -> u64 {
        self.hook.batch_ms
    }

    fn retry(&self) -> Duration {
        Duration::from_secs(self.hook.retry_s)
    }

    fn idle_max(&self) -> Duration {
        Duration::from_millis(500)
    }

    fn label(&self) -> String {
        redacted_url(self.hook.url.as_str()).to_string()
    }

    /// One object, or an array when batching.
    fn send<'a>(
        &'a self,
        ns: &'a str,
        id: &'a str,
        events: &'a [&'a Event],
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let body = match (self.hook.batch_ms, events) {
                (0, [event]) => payload(ns, event),
                _ => Value::Array(events.iter().map(|e| payload(ns, e)).collect()),
            };
            let body = body.to_string();
            let timestamp = unix_ms() / 1000;
            let mut request = self
                .client
                .post(self.hook.url.clone())
                .timeout(Duration::from_millis(self.hook.timeout_ms))
                .header("content-type", "application/json");
            for (name, value) in self.hook.secret.headers(id, timestamp, body.as_bytes()) {
                request = request.header(name, value);
            }
            match request.body(body).send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(format!("status {}", r.status().as_u16())),
                Err(e) if e.is_timeout() => Err("timeout".into()),
                Err(e) => Err(format!("unreachable: {e}")),
            }
        })
    }
}

/// Every outlet's sending, on this node.
pub struct Dispatcher {
    pub store: Arc<dyn Store>,
    pub outlets: Vec<Arc<dyn Outlet>>,
    pub node: Arc<str>,
    pub metrics: WebhookMetrics,
}

impl Dispatcher {
    /// Looks for free leases every [`SCAN`] and sends the outboxes it gets, until dropped (its workers with it).
    pub async fn run(self: Arc<Self>) {
        let mut workers: JoinSet<()> = JoinSet::new();
        let mut running: HashMap<(usize, String), tokio::task::AbortHandle> = HashMap::new();
        loop {
            while workers.try_join_next().is_some() {}
            running.retain(|_, h| !h.is_finished());
            match self.store.namespaces().await {
                Ok(namespaces) => {
                    for (i, outlet) in self.outlets.iter().enumerate() {
                        for ns in namespaces.iter().filter(|ns| outlet.wants(ns)) {
                            if running.contains_key(&(i, ns.clone())) {
                                continue;
                            }
                            let held = self
                                .store
                                .lease(ns, &outlet.key(), &self.node, LEASE.as_millis() as u64)
                                .await;
                            if let Ok(true) = held {
                                let worker = Worker {
                                    d: self.clone(),
                                    outlet: outlet.clone(),
                                    key: outlet.key(),
                                    ns: ns.clone(),
                                    renewed: Instant::now(),
                                };
                                let handle = workers.spawn(worker.run());
                                running.insert((i, ns.clone()), handle);
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "webhooks: cannot list the namespaces"),
            }
            tokio::time::sleep(SCAN).await;
        }
    }
}

struct Worker {
    d: Arc<Dispatcher>,
    outlet: Arc<dyn Outlet>,
    key: String,
    ns: String,
    renewed: Instant,
}

impl Worker {
    async fn run(mut self) {
        tracing::debug!(
            namespace = self.ns,
            outlet = self.outlet.label(),
            "webhook: sending this outbox"
        );
        let _ = self.send_all().await;
        tracing::debug!(
            namespace = self.ns,
            outlet = self.outlet.label(),
            "webhook: lease lost"
        );
    }

    /// Renews the lease when due.
    async fn keep_lease(&mut self) -> Result<(), LeaseLost> {
        if !self.outlet.wants(&self.ns) {
            return Err(LeaseLost);
        }
        if self.renewed.elapsed() < RENEW {
            return Ok(());
        }
        let held = self
            .d
            .store
            .lease(&self.ns, &self.key, &self.d.node, LEASE.as_millis() as u64)
            .await;
        match held {
            Ok(true) => {
                self.renewed = Instant::now();
                Ok(())
            }
            Ok(false) => Err(LeaseLost),
            // Redis away: keep going while the lease may still be ours; the cursor write is fenced anyway.
            Err(_) if self.renewed.elapsed() < LEASE => Ok(()),
            Err(_) => Err(LeaseLost),
        }
    }

    async fn send_all(&mut self) -> Result<(), LeaseLost> {
        let mut cursor = loop {
            match self.d.store.cursor(&self.ns, &self.key).await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(namespace = self.ns, error = %e, "webhook: cannot read the cursor");
                    tokio::time::sleep(SCAN).await;
                    self.keep_lease().await?;
                }
            }
        };
        let mut idle = IDLE_MIN;
        loop {
            self.keep_lease().await?;
            let mut events = self.read(&cursor).await;
            if events.is_empty() {
                tokio::time::sleep(idle).await;
                idle = (idle * 2).min(self.outlet.idle_max());
                continue;
            }
            idle = IDLE_MIN;
            let batch_ms = self.outlet.batch_ms();
            if batch_ms > 0 && events.len() < READ {
                tokio::time::sleep(Duration::from_millis(batch_ms)).await;
                events = self.read(&cursor).await;
            }
            self.count_dropped(&cursor, &events);
            let wanted: Vec<&Event> = events
                .iter()
                .filter(|e| self.outlet.takes(e.kind))
                .collect();
            if self.outlet.batches() {
                if !wanted.is_empty() {
                    self.deliver(&wanted).await?;
                }
            } else {
                let mut kept = Instant::now();
                for (i, event) in wanted.iter().enumerate() {
                    self.deliver(std::slice::from_ref(event)).await?;
                    // Progress kept every PROGRESS_EVERY rather than after each event (a Redis round trip each,
                    // which halved the rate): a takeover resends at most that much, with the same webhook-ids.
                    if i + 1 < wanted.len() && kept.elapsed() >= PROGRESS_EVERY {
                        self.advance(&Cursor {
                            id: event.id.clone(),
                            seq: event.seq,
                        })
                        .await?;
                        kept = Instant::now();
                    }
                }
            }
            let Some(last) = events.last() else { continue };
            cursor = Cursor {
                id: last.id.clone(),
                seq: last.seq,
            };
            self.advance(&cursor).await?;
        }
    }

    async fn read(&self, cursor: &Cursor) -> Vec<Event> {
        match self.d.store.read(&self.ns, cursor, READ).await {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(namespace = self.ns, error = %e, "webhook: cannot read the outbox");
                tokio::time::sleep(SCAN).await;
                Vec::new()
            }
        }
    }

    async fn advance(&mut self, to: &Cursor) -> Result<(), LeaseLost> {
        loop {
            match self
                .d
                .store
                .advance(&self.ns, &self.key, &self.d.node, to)
                .await
            {
                Ok(true) => return Ok(()),
                Ok(false) => return Err(LeaseLost),
                Err(e) => {
                    tracing::warn!(namespace = self.ns, error = %e, "webhook: cannot move the cursor");
                    tokio::time::sleep(SCAN).await;
                    self.keep_lease().await?;
                }
            }
        }
    }

    /// Gaps in the sequence are events the outbox's cap dropped before they were sent.
    fn count_dropped(&self, cursor: &Cursor, events: &[Event]) {
        let mut last = cursor.seq;
        let mut dropped = 0;
        for e in events {
            dropped += e.seq.saturating_sub(last + 1);
            last = e.seq;
        }
        if dropped > 0 {
            self.d
                .metrics
                .events
                .get_or_create(&Outcome { outcome: "dropped" })
                .inc_by(dropped);
            tracing::warn!(
                namespace = self.ns,
                outlet = self.outlet.label(),
                dropped,
                "webhook events dropped from the outbox before they were sent"
            );
        }
    }

    /// Sends `events` until it succeeds, or gives them up after the outlet's retry time.
    async fn deliver(&mut self, events: &[&Event]) -> Result<(), LeaseLost> {
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            return Ok(());
        };
        let id = message_id(&self.ns, first, last);
        let started = Instant::now();
        let give_up = self.outlet.retry();
        let mut backoff = BACKOFF_FIRST;
        loop {
            let failure = match self.outlet.send(&self.ns, &id, events).await {
                Ok(()) => {
                    let now = unix_ms();
                    let delivered = self
                        .d
                        .metrics
                        .events
                        .get_or_create(&Outcome {
                            outcome: "delivered",
                        })
                        .clone();
                    for e in events {
                        delivered.inc();
                        self.d
                            .metrics
                            .lag_seconds
                            .observe(now.saturating_sub(e.at_ms) as f64 / 1000.0);
                    }
                    return Ok(());
                }
                Err(failure) => failure,
            };
            if started.elapsed() >= give_up {
                self.d
                    .metrics
                    .events
                    .get_or_create(&Outcome {
                        outcome: "given_up",
                    })
                    .inc_by(events.len() as u64);
                tracing::warn!(
                    namespace = self.ns,
                    outlet = self.outlet.label(),
                    webhook_id = id,
                    events = events.len(),
                    error = failure,
                    "events given up after retrying for their retry time"
                );
                return Ok(());
            }
            tracing::debug!(
                outlet = self.outlet.label(),
                webhook_id = id,
                error = failure,
                "sending events failed, will retry"
            );
            let wait = jitter(backoff).min(give_up.saturating_sub(started.elapsed()));
            let until = Instant::now() + wait;
            while Instant::now() < until {
                tokio::time::sleep_until(until.min(Instant::now() + RENEW)).await;
                self.keep_lease().await?;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Between half of `d` and `d`, at random: nodes retrying together spread out.
fn jitter(d: Duration) -> Duration {
    let r = (uuid::Uuid::new_v4().as_u128() % 1_000) as u32;
    d / 2 + d / 2 * r / 1_000
}

/// The `webhook-id`: the same for the same event(s) on every node and every attempt, so receivers drop
/// duplicates. `msg_<namespace digest>_<first entry>[_<last entry>]`.
pub fn message_id(ns: &str, first: &Event, last: &Event) -> String {
    use sha1::Digest;
    let digest: String = sha1::Sha1::digest(ns.as_bytes())[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    match first.id == last.id {
        true => format!("msg_{digest}_{}", first.id),
        false => format!("msg_{digest}_{}_{}", first.id, last.id),
    }
}

/// One event's JSON: `{"type", "timestamp", "data": {...}}` (docs/webhooks.md).
pub fn payload(ns: &str, e: &Event) -> Value {
    let mut data = json!({ "namespace": ns });
    if let Some(room) = &e.room {
        data["room"] = json!(room);
    }
    if let Some(socket) = &e.socket {
        data["id_socket"] = json!(socket);
    }
    if let Some(user) = &e.user {
        data["id_user"] = json!(user);
        data["verified"] = json!(e.verified.unwrap_or(false));
    }
    let at = UNIX_EPOCH + Duration::from_millis(e.at_ms);
    json!({
        "type": e.kind.name(),
        "timestamp": humantime::format_rfc3339_millis(at).to_string(),
        "data": data,
    })
}
