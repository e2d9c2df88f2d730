//! The stores of a single node without Redis: the same semantics as [`super::RedisLog`] and
//! [`super::RedisSessions`], in this process's memory (lost with it, which is why a cluster uses Redis).
//!
//! The log's offsets and its window follow the wall clock, as in Redis (an offset is a time the client may bring
//! back after this process restarted). Sessions expire by `tokio::time`, so tests run them with a paused clock: an
//! expired session is invisible at once, and freed by the next call that sweeps (at most one sweep a second).

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use futures_util::future::BoxFuture;
use tokio::{sync::watch, time::Instant};

use super::{
    Entries, Entry, EventLog, Holder, Offset, RecoveryError, Session, Sessions, Tail, millis,
};

/// Every namespace's log, in memory.
pub struct MemoryLog {
    /// Shared with the tails, which read it when woken.
    logs: Arc<Mutex<HashMap<String, Log>>>,
}

/// One namespace's log.
struct Log {
    /// Oldest first; offsets strictly increasing.
    entries: VecDeque<(Offset, Entry)>,
    /// The last offset given (kept when its entry is dropped, so the next one is larger); tails wait for it to change.
    last: watch::Sender<Offset>,
}

impl Default for Log {
    fn default() -> Self {
        Self {
            entries: VecDeque::new(),
            last: watch::Sender::new(Offset::ZERO),
        }
    }
}

impl Log {
    /// Appends at `now_ms` (the wall clock), as Redis's `XADD *` would: the time, or after the last offset when
    /// the clock did not move or went back. Then drops what is older than `keep` (`XADD MINID`).
    fn push(&mut self, now_ms: u64, entry: Entry, keep: Duration) -> Offset {
        let last = *self.last.borrow();
        let offset = if now_ms > last.ms {
            Offset { ms: now_ms, seq: 0 }
        } else {
            match last.seq.checked_add(1) {
                Some(seq) => Offset { ms: last.ms, seq },
                // Redis moves to the next millisecond too.
                None => Offset {
                    ms: last.ms.saturating_add(1),
                    seq: 0,
                },
            }
        };
        self.entries.push_back((offset, entry));
        let oldest = now_ms.saturating_sub(millis(keep));
        while self.entries.front().is_some_and(|(o, _)| o.ms < oldest) {
            self.entries.pop_front();
        }
        self.last.send_replace(offset);
        offset
    }

    fn after(&self, after: Offset, count: usize) -> Entries {
        let start = self.entries.partition_point(|(o, _)| *o <= after);
        self.entries
            .range(start..)
            .take(count)
            .map(|(o, e)| (*o, Some(e.clone())))
            .collect()
    }
}

impl MemoryLog {
    pub fn new() -> Self {
        Self {
            logs: Arc::default(),
        }
    }
}

impl Default for MemoryLog {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves consistent data (every change is a few plain assignments).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Milliseconds since the Unix epoch: the log's clock.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn ready<'a, T: Send + 'a>(value: T) -> BoxFuture<'a, Result<T, RecoveryError>> {
    Box::pin(std::future::ready(Ok(value)))
}

impl EventLog for MemoryLog {
    fn append<'a>(
        &'a self,
        ns: &'a str,
        entry: &'a Entry,
        keep: Duration,
    ) -> BoxFuture<'a, Result<Offset, RecoveryError>> {
        let mut logs = lock(&self.logs);
        let log = logs.entry(ns.to_owned()).or_default();
        ready(log.push(now_ms(), entry.clone(), keep))
    }

    fn last<'a>(&'a self, ns: &'a str) -> BoxFuture<'a, Result<Offset, RecoveryError>> {
        let logs = lock(&self.logs);
        let last = logs.get(ns).and_then(|l| l.entries.back()).map(|(o, _)| *o);
        ready(last.unwrap_or(Offset::ZERO))
    }

    fn after<'a>(
        &'a self,
        ns: &'a str,
        after: Offset,
        count: usize,
    ) -> BoxFuture<'a, Result<Entries, RecoveryError>> {
        let logs = lock(&self.logs);
        ready(
            logs.get(ns)
                .map_or_else(Vec::new, |l| l.after(after, count)),
        )
    }

    fn tail(&self, ns: &str) -> BoxFuture<'_, Result<Box<dyn Tail>, RecoveryError>> {
        let changes = lock(&self.logs)
            .entry(ns.to_owned())
            .or_default()
            .last
            .subscribe();
        let tail = MemoryTail {
            ns: ns.to_owned(),
            logs: self.logs.clone(),
            changes,
        };
        ready(Box::new(tail) as Box<dyn Tail>)
    }

    fn len(&self) -> BoxFuture<'_, Result<u64, RecoveryError>> {
        let logs = lock(&self.logs);
        let n: usize = logs.values().map(|l| l.entries.len()).sum();
        ready(u64::try_from(n).unwrap_or(u64::MAX))
    }
}

/// Reads one namespace's log, woken by its appends.
struct MemoryTail {
    ns: String,
    logs: Arc<Mutex<HashMap<String, Log>>>,
    changes: watch::Receiver<Offset>,
}

impl MemoryTail {
    fn read(&self, after: Offset, count: usize) -> Entries {
        let logs = lock(&self.logs);
        logs.get(&self.ns)
            .map_or_else(Vec::new, |l| l.after(after, count))
    }
}

impl Tail for MemoryTail {
    fn next(
        &mut self,
        after: Offset,
        count: usize,
        block: Duration,
    ) -> BoxFuture<'_, Result<Entries, RecoveryError>> {
        Box::pin(async move {
            let deadline = Instant::now() + block.min(Duration::from_secs(86_400));
            loop {
                // Seen before reading: an append after the read wakes the wait below.
                self.changes.borrow_and_update();
                let found = self.read(after, count);
                if !found.is_empty() || count == 0 {
                    return Ok(found);
                }
                match tokio::time::timeout_at(deadline, self.changes.changed()).await {
                    Ok(Ok(())) => continue,
                    // The log is gone (cannot happen while this tail holds it): nothing will come.
                    Ok(Err(_)) => {
                        tokio::time::sleep_until(deadline).await;
                        return Ok(Vec::new());
                    }
                    Err(_) => return Ok(Vec::new()),
                }
            }
        })
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// How often, at most, a call looks for expired sessions to free.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Sessions in memory, each with its deadline.
pub struct MemorySessions {
    state: Mutex<SessionState>,
}

struct SessionState {
    /// By namespace and pid; the expired ones are invisible until swept.
    sessions: HashMap<(String, String), (Session, Instant)>,
    /// When expired sessions were last freed.
    swept: Instant,
}

impl SessionState {
    /// The session, unless it has expired.
    fn live(&self, ns: &str, pid: &str, now: Instant) -> Option<&Session> {
        self.sessions
            .get(&(ns.to_owned(), pid.to_owned()))
            .filter(|(_, until)| *until > now)
            .map(|(s, _)| s)
    }

    /// Frees the expired sessions, at most once every [`SWEEP_EVERY`] unless `force`d.
    fn sweep(&mut self, now: Instant, force: bool) {
        if force || now.duration_since(self.swept) >= SWEEP_EVERY {
            self.sessions.retain(|_, (_, until)| *until > now);
            self.swept = now;
        }
    }
}

impl MemorySessions {
    pub fn new() -> Self {
        Self {
            state: Mutex::new(SessionState {
                sessions: HashMap::new(),
                swept: Instant::now(),
            }),
        }
    }

    /// How many sessions are in memory, expired ones not yet freed included (tests check that they are freed).
    #[cfg(test)]
    fn held(&self) -> usize {
        lock(&self.state).sessions.len()
    }
}

impl Default for MemorySessions {
    fn default() -> Self {
        Self::new()
    }
}

/// `now + ttl`, in whole milliseconds like Redis's `PEXPIRE`.
fn deadline(now: Instant, ttl: Duration) -> Instant {
    now + Duration::from_millis(millis(ttl))
}

impl Sessions for MemorySessions {
    fn save<'a>(
        &'a self,
        ns: &'a str,
        pid: &'a str,
        session: &'a Session,
        ttl: Duration,
        taking_over: Option<&'a Holder>,
    ) -> BoxFuture<'a, Result<bool, RecoveryError>> {
        let now = Instant::now();
        let mut state = lock(&self.state);
        state.sweep(now, false);
        let allowed = match state.live(ns, pid, now) {
            None => true,
            Some(current) => {
                current.holder == session.holder || Some(&current.holder) == taking_over
            }
        };
        if allowed {
            let key = (ns.to_owned(), pid.to_owned());
            state
                .sessions
                .insert(key, (session.clone(), deadline(now, ttl)));
        }
        ready(allowed)
    }

    fn load<'a>(
        &'a self,
        ns: &'a str,
        pid: &'a str,
    ) -> BoxFuture<'a, Result<Option<Session>, RecoveryError>> {
        let state = lock(&self.state);
        ready(state.live(ns, pid, Instant::now()).cloned())
    }

    fn remove<'a>(
        &'a self,
        ns: &'a str,
        pid: &'a str,
        holder: &'a Holder,
    ) -> BoxFuture<'a, Result<bool, RecoveryError>> {
        let now = Instant::now();
        let mut state = lock(&self.state);
        let held = state
            .live(ns, pid, now)
            .is_some_and(|s| s.holder == *holder);
        if held {
            state.sessions.remove(&(ns.to_owned(), pid.to_owned()));
        }
        ready(held)
    }

    fn touch<'a>(
        &'a self,
        ns: &'a str,
        pids: &'a [String],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), RecoveryError>> {
        let now = Instant::now();
        let mut state = lock(&self.state);
        let mut key = (ns.to_owned(), String::new());
        for pid in pids {
            pid.clone_into(&mut key.1);
            if let Some((_, until)) = state.sessions.get_mut(&key)
                && *until > now
            {
                *until = deadline(now, ttl);
            }
        }
        ready(())
    }

    fn len(&self) -> BoxFuture<'_, Result<u64, RecoveryError>> {
        let mut state = lock(&self.state);
        state.sweep(Instant::now(), true);
        ready(u64::try_from(state.sessions.len()).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recovery::conformance;

    #[tokio::test]
    async fn memory_log_passes_the_conformance_suite() {
        conformance::check_log(&MemoryLog::new()).await;
    }

    #[tokio::test]
    async fn memory_sessions_pass_the_conformance_suite() {
        conformance::check_sessions(&MemorySessions::new()).await;
    }

    fn entry(data: &str) -> Entry {
        Entry {
            data: data.to_owned(),
            attachments: Vec::new(),
            rooms: Vec::new(),
            except: Vec::new(),
            sender: None,
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    /// Offsets are Redis's: the time, then a sequence within the same millisecond, and after the last one when the
    /// clock goes back.
    #[test]
    fn offsets_grow_like_redis_ids() {
        let mut log = Log::default();
        let at = |ms, seq| Offset { ms, seq };
        assert_eq!(log.push(1_000, entry("a"), HOUR), at(1_000, 0));
        assert_eq!(log.push(1_000, entry("b"), HOUR), at(1_000, 1));
        assert_eq!(log.push(1_005, entry("c"), HOUR), at(1_005, 0));
        // The clock went back.
        assert_eq!(log.push(900, entry("d"), HOUR), at(1_005, 1));
        assert_eq!(log.push(1_006, entry("e"), HOUR), at(1_006, 0));
        log.last.send_replace(at(2_000, u64::MAX));
        assert_eq!(log.push(1_500, entry("f"), HOUR), at(2_001, 0));
    }

    /// The window is measured on the entries' times: what is older than `keep` at the append goes, even what was
    /// appended with a longer `keep`.
    #[test]
    fn appends_drop_what_is_older_than_the_window() {
        let mut log = Log::default();
        log.push(1_000, entry("a"), HOUR);
        log.push(1_040, entry("b"), HOUR);
        log.push(1_050, entry("c"), HOUR);
        let kept = |log: &Log| -> Vec<String> {
            log.entries.iter().map(|(_, e)| e.data.clone()).collect()
        };
        assert_eq!(kept(&log), ["a", "b", "c"]);
        // Oldest kept: 1_100 - 60 = 1_040 (`MINID` keeps an id equal to it).
        log.push(1_100, entry("d"), Duration::from_millis(60));
        assert_eq!(kept(&log), ["b", "c", "d"]);
        log.push(1_100, entry("e"), Duration::ZERO);
        assert_eq!(kept(&log), ["d", "e"]);
        // A huge window keeps everything.
        log.push(1_200, entry("f"), Duration::MAX);
        assert_eq!(kept(&log), ["d", "e", "f"]);
        assert_eq!(
            log.after(Offset { ms: 1_100, seq: 0 }, 10)
                .iter()
                .map(|(o, _)| *o)
                .collect::<Vec<_>>(),
            [Offset { ms: 1_100, seq: 1 }, Offset { ms: 1_200, seq: 0 }]
        );
    }

    fn session(node: &str) -> Session {
        Session {
            sid: "sid".into(),
            id_user: None,
            session: None,
            rooms: Vec::new(),
            start: "0-0".into(),
            holder: Holder {
                node: node.into(),
                conn: "c".into(),
            },
        }
    }

    /// In memory, expiry is exact to the instant; expired sessions are freed by a later call.
    #[tokio::test(start_paused = true)]
    async fn sessions_expire_to_the_instant_and_are_freed() {
        let s = MemorySessions::new();
        let ttl = Duration::from_secs(10);
        assert!(s.save("/", "p1", &session("a"), ttl, None).await.unwrap());
        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert!(s.load("/", "p1").await.unwrap().is_some());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(s.load("/", "p1").await.unwrap(), None);
        s.touch("/", &["p1".to_owned()], ttl).await.unwrap();
        assert_eq!(s.load("/", "p1").await.unwrap(), None, "not resurrected");
        assert_eq!(s.held(), 1, "not freed yet");
        // Expired: another connection may take the pid.
        assert!(s.save("/", "p1", &session("b"), ttl, None).await.unwrap());
        assert_eq!(s.held(), 1);

        // A save frees the others' expired sessions, once a second at most.
        assert!(s.save("/", "p2", &session("a"), ttl, None).await.unwrap());
        tokio::time::advance(ttl).await;
        assert_eq!(s.held(), 2);
        assert!(s.save("/", "p3", &session("a"), ttl, None).await.unwrap());
        assert_eq!(s.held(), 1, "p1 and p2 freed");
        // `len` frees them at once.
        tokio::time::advance(ttl).await;
        assert_eq!(s.len().await.unwrap(), 0);
        assert_eq!(s.held(), 0);
    }

    /// A touch moves the deadline from now; an expired holder cannot remove what another connection saved.
    #[tokio::test(start_paused = true)]
    async fn a_touch_extends_from_now() {
        let s = MemorySessions::new();
        let ttl = Duration::from_secs(10);
        let a = session("a");
        assert!(s.save("/", "p", &a, ttl, None).await.unwrap());
        tokio::time::advance(Duration::from_secs(8)).await;
        s.touch("/", &["p".to_owned(), "other".to_owned()], ttl)
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(s.load("/", "p").await.unwrap(), Some(a.clone()));
        assert_eq!(s.load("/", "other").await.unwrap(), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(s.load("/", "p").await.unwrap(), None);
        assert!(!s.remove("/", "p", &a.holder).await.unwrap(), "expired");
    }

    /// A tail wakes on an append to its namespace, not on another's.
    #[tokio::test(start_paused = true)]
    async fn a_tail_wakes_only_for_its_namespace() {
        let log = Arc::new(MemoryLog::new());
        let mut tail = log.tail("/a").await.unwrap();
        let writer = log.clone();
        let appends = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            writer.append("/b", &entry("b"), HOUR).await.unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
            writer.append("/a", &entry("a"), HOUR).await.unwrap()
        });
        let started = Instant::now();
        let got = tail
            .next(Offset::ZERO, 10, Duration::from_secs(60))
            .await
            .unwrap();
        let offset = appends.await.unwrap();
        assert_eq!(got, [(offset, Some(entry("a")))]);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        tail.close().await;
    }
}
