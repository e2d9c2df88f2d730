//! The semantics every [`EventLog`] and [`Sessions`] must have (the module docs), as two suites: the memory stores
//! run them in their unit tests, the Redis stores against a real `redis-server` (`tests/it/recovery_store.rs`).
//! Public, not `cfg(test)`, so that integration tests can call them.
//!
//! Real time, not a paused clock: offsets and the log's window are the wall clock's (Redis's, in Redis). The cases
//! run concurrently on namespaces of their own (the size checks last, alone), so each suite takes a few seconds.
//! Timing assertions hold on a slow machine too: "still there" is asserted only when the read finished before the
//! earliest possible deadline, "gone" only after the latest one plus a margin.

use std::time::Duration;

use serde_bytes::ByteBuf;
use tokio::time::{Instant, sleep, sleep_until};

use super::{Entries, Entry, EventLog, Holder, Offset, Session, Sessions};

/// The TTL of the expiry cases: short, for a real Redis.
pub const TTL: Duration = Duration::from_secs(1);
/// How long after a deadline "gone" is checked.
const MARGIN: Duration = Duration::from_millis(250);
/// A window nothing leaves during the suite.
const HOUR: Duration = Duration::from_secs(3600);
/// A window the suite waits out.
const TINY: Duration = Duration::from_millis(50);

/// Runs every log case against `log`; panics on the first broken rule.
pub async fn check_log(log: &dyn EventLog) {
    tokio::join!(
        offsets_grow_in_append_order(log),
        after_is_exclusive_and_bounded(log),
        appends_drop_what_left_the_window(log),
        a_tail_waits_for_appends(log),
        namespaces_have_logs_of_their_own(log),
    );
    the_size_counts_kept_entries(log).await;
}

/// Runs every session case against `sessions`; panics on the first broken rule.
pub async fn check_sessions(sessions: &dyn Sessions) {
    let s = sessions;
    tokio::join!(
        a_session_reads_back_as_saved(s),
        only_its_holder_writes_a_session(s),
        a_takeover_shuts_out_the_old_holder(s),
        only_its_holder_removes_a_session(s),
        sessions_expire_and_stay_expired(s),
        a_touch_extends_only_live_sessions(s),
        namespaces_have_sessions_of_their_own(s),
    );
    the_size_counts_kept_sessions(s).await;
}

/// The `n`th test entry: every field set, binary attachments included.
fn entry(n: u8) -> Entry {
    Entry {
        data: format!("[\"event\",{n},{{\"_placeholder\":true,\"num\":0}}]"),
        attachments: vec![ByteBuf::from(vec![n, 0, 0xff])],
        rooms: vec![format!("room-{n}"), "é".into()],
        except: vec!["muted".into()],
        sender: n.is_multiple_of(2).then(|| format!("sid-{n}")),
    }
}

async fn append(log: &dyn EventLog, ns: &str, n: u8, keep: Duration) -> Offset {
    log.append(ns, &entry(n), keep).await.expect("append")
}

/// Every entry of `ns` (after [`Offset::ZERO`]).
async fn all(log: &dyn EventLog, ns: &str) -> Entries {
    log.after(ns, Offset::ZERO, 1_000).await.expect("after")
}

fn expected(offsets: &[Offset], numbers: &[u8]) -> Entries {
    offsets
        .iter()
        .zip(numbers)
        .map(|(o, n)| (*o, Some(entry(*n))))
        .collect()
}

async fn offsets_grow_in_append_order(log: &dyn EventLog) {
    let ns = "/conformance-order";
    assert_eq!(
        log.last(ns).await.expect("last"),
        Offset::ZERO,
        "no log yet"
    );
    let mut offsets = Vec::new();
    for n in 0..30 {
        offsets.push(append(log, ns, n, HOUR).await);
    }
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "offsets grow strictly, within a millisecond too: {offsets:?}"
    );
    assert!(offsets[0] > Offset::ZERO);
    assert_eq!(log.last(ns).await.expect("last"), offsets[29]);
    let numbers: Vec<u8> = (0..30).collect();
    assert_eq!(
        all(log, ns).await,
        expected(&offsets, &numbers),
        "in order, as written"
    );
    // Offsets survive their text.
    for o in &offsets {
        assert_eq!(o.to_string().parse::<Offset>(), Ok(*o));
    }
}

async fn after_is_exclusive_and_bounded(log: &dyn EventLog) {
    let ns = "/conformance-after";
    let mut o = Vec::new();
    for n in 0..5 {
        o.push(append(log, ns, n, HOUR).await);
    }
    let after = async |from: Offset, count: usize| log.after(ns, from, count).await.expect("after");
    assert_eq!(after(o[1], 100).await, expected(&o[2..], &[2, 3, 4]));
    assert_eq!(after(o[1], 2).await, expected(&o[2..4], &[2, 3]));
    assert_eq!(after(Offset::ZERO, 1).await, expected(&o[..1], &[0]));
    assert!(after(o[4], 10).await.is_empty(), "nothing after the last");
    assert!(after(o[0], 0).await.is_empty(), "a count of 0");
    // An offset no entry has: just before the first.
    let before = Offset {
        ms: o[0].ms - 1,
        seq: u64::MAX,
    };
    assert_eq!(after(before, 10).await, expected(&o, &[0, 1, 2, 3, 4]));
    let max = Offset {
        ms: u64::MAX,
        seq: u64::MAX,
    };
    assert!(after(max, 10).await.is_empty());
    assert!(
        log.after("/conformance-never", Offset::ZERO, 10)
            .await
            .expect("after")
            .is_empty()
    );
}

async fn appends_drop_what_left_the_window(log: &dyn EventLog) {
    let ns = "/conformance-window";
    append(log, ns, 0, HOUR).await;
    append(log, ns, 1, HOUR).await;
    sleep(TINY * 2).await;
    // The window is the append's: the older entries go, whatever window they were written with.
    let c = append(log, ns, 2, TINY).await;
    assert_eq!(all(log, ns).await, expected(&[c], &[2]));
    assert_eq!(log.last(ns).await.expect("last"), c);
    let d = append(log, ns, 3, HOUR).await;
    assert_eq!(
        all(log, ns).await,
        expected(&[c, d], &[2, 3]),
        "within the window"
    );
    assert!(d > c, "offsets keep growing after a trim");
}

async fn a_tail_waits_for_appends(log: &dyn EventLog) {
    let ns = "/conformance-tail";
    let mut tail = log.tail(ns).await.expect("tail");
    let start = log.last(ns).await.expect("last");

    // Nothing comes: an empty answer after the block.
    let asked = Instant::now();
    let got = tail
        .next(start, 10, Duration::from_millis(300))
        .await
        .expect("next");
    assert!(got.is_empty(), "{got:?}");
    assert!(
        asked.elapsed() >= Duration::from_millis(250),
        "waited {:?}",
        asked.elapsed()
    );

    // An append wakes it.
    let asked = Instant::now();
    let (got, offset) = tokio::join!(tail.next(start, 10, Duration::from_secs(10)), async {
        sleep(Duration::from_millis(200)).await;
        append(log, ns, 7, HOUR).await
    });
    assert_eq!(got.expect("next"), expected(&[offset], &[7]));
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "woken by the append, not the block: {:?}",
        asked.elapsed()
    );

    // What is there already comes at once, `count` at a time.
    let more = [
        append(log, ns, 8, HOUR).await,
        append(log, ns, 9, HOUR).await,
    ];
    let got = tail
        .next(offset, 1, Duration::from_secs(10))
        .await
        .expect("next");
    assert_eq!(got, expected(&more[..1], &[8]));
    let got = tail
        .next(more[0], 10, Duration::from_secs(10))
        .await
        .expect("next");
    assert_eq!(got, expected(&more[1..], &[9]));
    assert!(
        tail.next(more[1], 10, Duration::from_millis(50))
            .await
            .expect("next")
            .is_empty()
    );
    tail.close().await;
}

async fn namespaces_have_logs_of_their_own(log: &dyn EventLog) {
    let (a, b) = ("/conformance-ns-a", "/conformance-ns-b");
    let in_a = append(log, a, 1, HOUR).await;
    let in_b = append(log, b, 2, HOUR).await;
    assert_eq!(all(log, a).await, expected(&[in_a], &[1]));
    assert_eq!(all(log, b).await, expected(&[in_b], &[2]));
    // A tiny window in one namespace does not trim another.
    sleep(TINY * 2).await;
    let again = append(log, b, 3, TINY).await;
    assert_eq!(all(log, b).await, expected(&[again], &[3]));
    assert_eq!(all(log, a).await, expected(&[in_a], &[1]));
}

/// Alone, after the other cases: nothing else changes the size meanwhile.
async fn the_size_counts_kept_entries(log: &dyn EventLog) {
    let ns = "/conformance-len";
    let before = log.len().await.expect("len");
    for n in 0..3 {
        append(log, ns, n, HOUR).await;
    }
    assert_eq!(log.len().await.expect("len"), before + 3);
    sleep(TINY * 2).await;
    append(log, ns, 3, TINY).await;
    assert_eq!(
        log.len().await.expect("len"),
        before + 1,
        "trimmed entries leave"
    );
}

fn holder(node: &str, conn: &str) -> Holder {
    Holder {
        node: node.into(),
        conn: conn.into(),
    }
}

/// A session held by `holder`, told apart by `sid`.
fn session(sid: &str, holder: &Holder) -> Session {
    Session {
        sid: sid.into(),
        id_user: Some("user-1".into()),
        session: Some("session-1".into()),
        rooms: vec!["a".into(), "é b".into()],
        start: "1700000000000-3".into(),
        holder: holder.clone(),
    }
}

async fn save(
    s: &dyn Sessions,
    ns: &str,
    pid: &str,
    session: &Session,
    taking_over: Option<&Holder>,
) -> bool {
    s.save(ns, pid, session, HOUR, taking_over)
        .await
        .expect("save")
}

async fn load(s: &dyn Sessions, ns: &str, pid: &str) -> Option<Session> {
    s.load(ns, pid).await.expect("load")
}

async fn a_session_reads_back_as_saved(s: &dyn Sessions) {
    let ns = "/conformance-save";
    assert_eq!(load(s, ns, "p").await, None);
    let a = holder("n1", "c1");
    let first = session("s1", &a);
    assert!(save(s, ns, "p", &first, None).await);
    assert_eq!(load(s, ns, "p").await, Some(first));
    // Its holder rewrites it.
    let mut second = session("s1", &a);
    second.rooms = vec!["c".into()];
    second.id_user = None;
    assert!(save(s, ns, "p", &second, None).await);
    assert_eq!(load(s, ns, "p").await, Some(second));
}

async fn only_its_holder_writes_a_session(s: &dyn Sessions) {
    let ns = "/conformance-holder";
    let (a, b, c) = (holder("n1", "c1"), holder("n1", "c2"), holder("n2", "c1"));
    assert!(save(s, ns, "p", &session("a", &a), None).await);
    for other in [&b, &c] {
        assert!(
            !save(s, ns, "p", &session("other", other), None).await,
            "{other:?}"
        );
        assert!(
            !save(s, ns, "p", &session("other", other), Some(other)).await,
            "taking over from itself is not taking over from the holder"
        );
    }
    assert!(
        !save(s, ns, "p", &session("b", &b), Some(&c)).await,
        "taking over from a connection that does not hold it"
    );
    assert_eq!(load(s, ns, "p").await, Some(session("a", &a)));
}

async fn a_takeover_shuts_out_the_old_holder(s: &dyn Sessions) {
    let ns = "/conformance-takeover";
    let (old, new) = (holder("n1", "c1"), holder("n2", "c9"));
    assert!(save(s, ns, "p", &session("old", &old), None).await);
    assert!(save(s, ns, "p", &session("new", &new), Some(&old)).await);
    assert_eq!(load(s, ns, "p").await, Some(session("new", &new)));
    // A late write of the replaced connection cannot undo the restore.
    assert!(!save(s, ns, "p", &session("old", &old), None).await);
    assert!(!save(s, ns, "p", &session("old", &old), Some(&old)).await);
    assert!(!s.remove(ns, "p", &old).await.expect("remove"));
    assert_eq!(load(s, ns, "p").await, Some(session("new", &new)));
    // The new holder goes on writing it.
    assert!(save(s, ns, "p", &session("newer", &new), None).await);
    assert_eq!(load(s, ns, "p").await, Some(session("newer", &new)));
}

async fn only_its_holder_removes_a_session(s: &dyn Sessions) {
    let ns = "/conformance-remove";
    let (a, b) = (holder("n1", "c1"), holder("n1", "c2"));
    assert!(
        !s.remove(ns, "p", &a).await.expect("remove"),
        "nothing to remove"
    );
    assert!(save(s, ns, "p", &session("a", &a), None).await);
    assert!(!s.remove(ns, "p", &b).await.expect("remove"));
    assert_eq!(load(s, ns, "p").await, Some(session("a", &a)));
    assert!(s.remove(ns, "p", &a).await.expect("remove"));
    assert_eq!(load(s, ns, "p").await, None);
    assert!(
        !s.remove(ns, "p", &a).await.expect("remove"),
        "already removed"
    );
    // Gone: anyone may save the pid again.
    assert!(save(s, ns, "p", &session("b", &b), None).await);
    assert_eq!(load(s, ns, "p").await, Some(session("b", &b)));
}

/// Asserts that `pid` is there, if the read ended before `since + TTL` (a deadline set after `since` cannot have
/// passed yet).
async fn still_there(s: &dyn Sessions, ns: &str, pid: &str, since: Instant, what: &str) {
    let found = load(s, ns, pid).await;
    if since.elapsed() < TTL {
        assert!(found.is_some(), "{ns} {pid}: {what}");
    }
}

async fn sessions_expire_and_stay_expired(s: &dyn Sessions) {
    let ns = "/conformance-expiry";
    let (a, b) = (holder("n1", "c1"), holder("n2", "c2"));
    let before = Instant::now();
    assert!(
        s.save(ns, "p", &session("a", &a), TTL, None)
            .await
            .expect("save")
    );
    let saved = Instant::now();
    still_there(s, ns, "p", before, "saved just now").await;
    sleep_until(saved + TTL + MARGIN).await;
    assert_eq!(load(s, ns, "p").await, None, "expired");
    s.touch(ns, &["p".to_owned()], HOUR).await.expect("touch");
    assert_eq!(
        load(s, ns, "p").await,
        None,
        "a touch does not bring it back"
    );
    assert!(
        !s.remove(ns, "p", &a).await.expect("remove"),
        "nothing to remove"
    );
    // An expired session holds nothing: another connection saves the pid.
    assert!(save(s, ns, "p", &session("b", &b), None).await);
    assert_eq!(load(s, ns, "p").await, Some(session("b", &b)));
}

async fn a_touch_extends_only_live_sessions(s: &dyn Sessions) {
    let ns = "/conformance-touch";
    let a = holder("n1", "c1");
    s.touch(ns, &[], TTL).await.expect("touch nothing");
    assert!(
        s.save(ns, "p", &session("a", &a), TTL, None)
            .await
            .expect("save")
    );
    let saved = Instant::now();
    sleep_until(saved + TTL / 2).await;
    let touched_from = Instant::now();
    let pids = ["p".to_owned(), "never".to_owned()];
    s.touch(ns, &pids, TTL).await.expect("touch");
    let touched = Instant::now();
    // Past the deadline of the save, before the touch's.
    sleep_until(saved + TTL + MARGIN).await;
    still_there(s, ns, "p", touched_from, "touched").await;
    assert_eq!(load(s, ns, "never").await, None, "a touch creates nothing");
    sleep_until(touched + TTL + MARGIN).await;
    assert_eq!(
        load(s, ns, "p").await,
        None,
        "expired a TTL after the touch"
    );
}

async fn namespaces_have_sessions_of_their_own(s: &dyn Sessions) {
    let (x, y) = ("/conformance-ns-x", "/conformance-ns-y");
    let (a, b) = (holder("n1", "c1"), holder("n2", "c2"));
    assert!(save(s, x, "p", &session("a", &a), None).await);
    assert!(
        save(s, y, "p", &session("b", &b), None).await,
        "another namespace's pid"
    );
    assert!(s.remove(y, "p", &b).await.expect("remove"));
    assert_eq!(load(s, x, "p").await, Some(session("a", &a)));
    assert_eq!(load(s, y, "p").await, None);
}

/// Alone, after the other cases: every session they left lives an hour, the others have expired.
async fn the_size_counts_kept_sessions(s: &dyn Sessions) {
    let ns = "/conformance-len";
    let before = s.len().await.expect("len");
    let (a, b) = (holder("n1", "c1"), holder("n1", "c2"));
    assert!(save(s, ns, "p1", &session("1", &a), None).await);
    assert!(save(s, ns, "p2", &session("2", &b), None).await);
    assert_eq!(s.len().await.expect("len"), before + 2);
    assert!(save(s, ns, "p1", &session("1 again", &a), None).await);
    assert_eq!(
        s.len().await.expect("len"),
        before + 2,
        "a rewrite is one session"
    );
    assert!(s.remove(ns, "p2", &b).await.expect("remove"));
    assert_eq!(s.len().await.expect("len"), before + 1);
    assert!(
        s.save(ns, "p3", &session("3", &a), TTL / 4, None)
            .await
            .expect("save")
    );
    sleep(TTL / 4 + MARGIN).await;
    assert_eq!(
        s.len().await.expect("len"),
        before + 1,
        "expired sessions leave"
    );
}
