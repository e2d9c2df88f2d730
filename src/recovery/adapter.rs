//! Recording broadcasts for recovery: a socketioxide adapter around the real one (in memory, or socketioxide-redis).
//!
//! In a namespace with recovery on, a broadcast is not sent by the node that emits it: it is appended to the
//! namespace's [`EventLog`], and every node (the emitting one too) reads the log and delivers each entry to its own
//! sockets, with the entry's offset as the event's last argument. The log is the one order of the namespace's
//! broadcasts: a client's last offset then says exactly what it got, on whichever node it was. (Sent over
//! socketioxide-redis's pub/sub instead, two nodes' broadcasts could reach a client in the other order than their
//! offsets, and a recovery would replay one twice or miss one.) A recovered socket is given what it missed
//! ([`Recorder::attach`]) by the same task that delivers the live entries, so nothing live comes before it.
//!
//! Not recorded, as in socket.io: volatile broadcasts, broadcasts with an ack, `local()` ones, and emits to one
//! socket; they go through the real adapter as before. If the log cannot be written (Redis away), the broadcast
//! goes through the real adapter too: delivered live, not replayable (counted).

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use bytes::Bytes;
use socketioxide_core::{
    Sid, Str, Value,
    adapter::{
        BroadcastFlags, BroadcastOptions, CoreAdapter, CoreLocalAdapter, DefinedAdapter, Room,
        RoomParam, SocketEmitter, errors::BroadcastError,
    },
    packet::{Packet, PacketData},
};
use tokio::sync::{mpsc, oneshot};

use super::{Entry, EventLog, Offset, RecoveryError};
use crate::telemetry::metrics::RecoveryMetrics;

/// Entries read from the log at a time.
const PAGE: usize = 512;
/// How long one read of the log waits for new entries before asking again.
const WAIT: Duration = Duration::from_secs(5);
/// After a failed read or start, before trying again.
const RETRY: Duration = Duration::from_millis(500);

/// Why a recovered socket could not be given what it missed.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("namespace {0} does not record")]
    NotRecording(String),
    #[error("the namespace's reader has stopped")]
    Stopped,
    #[error(transparent)]
    Log(#[from] RecoveryError),
}

/// How long a namespace's log keeps entries; `None`: the namespace does not record.
type Keep = Box<dyn Fn(&str) -> Option<Duration> + Send + Sync>;

/// What every namespace's adapter shares: the log, and which namespaces record for how long.
pub struct Recorder {
    log: Arc<dyn EventLog>,
    keep: Keep,
    sequencers: Mutex<HashMap<String, Weak<Sequencer>>>,
    pub metrics: RecoveryMetrics,
}

impl Recorder {
    pub fn new(
        log: Arc<dyn EventLog>,
        keep: impl Fn(&str) -> Option<Duration> + Send + Sync + 'static,
        metrics: RecoveryMetrics,
    ) -> Arc<Self> {
        Arc::new(Self {
            log,
            keep: Box::new(keep),
            sequencers: Mutex::default(),
            metrics,
        })
    }

    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.log
    }

    fn sequencer(&self, ns: &str) -> Option<Arc<Sequencer>> {
        self.sequencers.lock().unwrap().get(ns)?.upgrade()
    }

    /// The offset up to which this node delivered `ns`'s log: a socket joining its rooms now gets everything
    /// after it live. `None` before the namespace's reader started.
    pub fn position(&self, ns: &str) -> Option<Offset> {
        *self.sequencer(ns)?.position.lock().unwrap()
    }

    /// Gives socket `sid` of `ns` every entry after `after` that was for `rooms`, then joins it to `rooms`, both
    /// between two deliveries of live entries: it gets what it missed once, in order, before anything live.
    /// Returns how many entries it was given.
    pub async fn attach(
        &self,
        ns: &str,
        sid: Sid,
        rooms: Vec<Room>,
        after: Offset,
    ) -> Result<u64, AttachError> {
        let seq = self
            .sequencer(ns)
            .ok_or_else(|| AttachError::NotRecording(ns.to_owned()))?;
        let (done, answer) = oneshot::channel();
        seq.attaches
            .send(Attach {
                sid,
                rooms,
                after,
                done,
            })
            .map_err(|_| AttachError::Stopped)?;
        answer.await.map_err(|_| AttachError::Stopped)?
    }
}

/// The shared state of [`Recording`] adapters: the real adapter's, and the recorder.
pub struct RecordingState<S> {
    pub inner: S,
    pub recorder: Arc<Recorder>,
}

/// A namespace's adapter: the real one, plus the log when the namespace records.
pub struct Recording<A> {
    inner: Arc<A>,
    seq: Option<Arc<Sequencer>>,
}

/// One namespace's recording on this node: where the log is read to, and the task that delivers it.
struct Sequencer {
    ns: String,
    keep: Duration,
    log: Arc<dyn EventLog>,
    metrics: RecoveryMetrics,
    attaches: mpsc::UnboundedSender<Attach>,
    position: Arc<Mutex<Option<Offset>>>,
    task: tokio::task::AbortHandle,
}

impl Drop for Sequencer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Attach {
    sid: Sid,
    rooms: Vec<Room>,
    after: Offset,
    done: oneshot::Sender<Result<u64, AttachError>>,
}

impl<A> Recording<A> {
    /// Whether this broadcast goes to the log: an event without an ack, to rooms or to everyone, neither
    /// volatile nor local, in the common parser's text form.
    fn records(packet: &Packet, opts: &BroadcastOptions) -> bool {
        let event = matches!(
            packet.inner,
            PacketData::Event(Value::Str(..), None) | PacketData::BinaryEvent(Value::Str(..), None)
        );
        event
            && !opts.has_flag(BroadcastFlags::Volatile)
            && !opts.has_flag(BroadcastFlags::Local)
            && (!opts.rooms.is_empty() || opts.has_flag(BroadcastFlags::Broadcast))
    }
}

impl<E: SocketEmitter, A: CoreAdapter<E>> CoreAdapter<E> for Recording<A> {
    type Error = A::Error;
    type State = RecordingState<A::State>;
    type AckStream = A::AckStream;
    type InitRes = A::InitRes;

    fn new(state: &Self::State, local: CoreLocalAdapter<E>) -> Self {
        let ns = local.path().to_string();
        let inner = Arc::new(A::new(&state.inner, local));
        let recorder = &state.recorder;
        let seq = (recorder.keep)(&ns)
            .zip(tokio::runtime::Handle::try_current().ok())
            .map(|(keep, runtime)| {
                let (attaches, rx) = mpsc::unbounded_channel();
                let position = Arc::new(Mutex::new(None));
                let task = runtime.spawn(sequence(
                    ns.clone(),
                    recorder.log.clone(),
                    inner.clone(),
                    rx,
                    position.clone(),
                    recorder.metrics.clone(),
                ));
                let seq = Arc::new(Sequencer {
                    ns: ns.clone(),
                    keep,
                    log: recorder.log.clone(),
                    metrics: recorder.metrics.clone(),
                    attaches,
                    position,
                    task: task.abort_handle(),
                });
                let mut all = recorder.sequencers.lock().unwrap();
                all.retain(|_, s| s.strong_count() > 0);
                all.insert(ns, Arc::downgrade(&seq));
                seq
            });
        Self { inner, seq }
    }

    fn init(self: Arc<Self>, on_success: impl FnOnce() + Send + 'static) -> Self::InitRes {
        self.inner.clone().init(on_success)
    }

    async fn close(&self) -> Result<(), Self::Error> {
        if let Some(seq) = &self.seq {
            seq.task.abort();
        }
        self.inner.close().await
    }

    fn server_count(&self) -> impl Future<Output = Result<u16, Self::Error>> + Send {
        self.inner.server_count()
    }

    async fn broadcast(
        &self,
        packet: Packet,
        opts: BroadcastOptions,
    ) -> Result<(), BroadcastError> {
        let Some(seq) = self.seq.as_ref().filter(|_| Self::records(&packet, &opts)) else {
            return self.inner.broadcast(packet, opts).await;
        };
        let entry = entry_of(&packet, &opts);
        match seq.log.append(&seq.ns, &entry, seq.keep).await {
            Ok(_) => {
                seq.metrics.recorded.inc();
                Ok(())
            }
            Err(e) => {
                tracing::warn!(ns = seq.ns, error = %e, "broadcast sent without recording it");
                seq.metrics.unrecorded.inc();
                self.inner.broadcast(packet, opts).await
            }
        }
    }

    fn broadcast_with_ack(
        &self,
        packet: Packet,
        opts: BroadcastOptions,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<Self::AckStream, Self::Error>> + Send {
        self.inner.broadcast_with_ack(packet, opts, timeout)
    }

    fn add_sockets(
        &self,
        opts: BroadcastOptions,
        rooms: impl RoomParam,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        self.inner.add_sockets(opts, rooms)
    }

    fn del_sockets(
        &self,
        opts: BroadcastOptions,
        rooms: impl RoomParam,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        self.inner.del_sockets(opts, rooms)
    }

    fn disconnect_socket(
        &self,
        opts: BroadcastOptions,
    ) -> impl Future<Output = Result<(), BroadcastError>> + Send {
        self.inner.disconnect_socket(opts)
    }

    fn rooms(
        &self,
        opts: BroadcastOptions,
    ) -> impl Future<Output = Result<Vec<Room>, Self::Error>> + Send {
        self.inner.rooms(opts)
    }

    fn fetch_sockets(
        &self,
        opts: BroadcastOptions,
    ) -> impl Future<Output = Result<Vec<socketioxide_core::adapter::RemoteSocketData>, Self::Error>>
    + Send {
        self.inner.fetch_sockets(opts)
    }

    fn get_local(&self) -> &CoreLocalAdapter<E> {
        self.inner.get_local()
    }
}

impl<A: DefinedAdapter> DefinedAdapter for Recording<A> {}

/// The log entry of a broadcast ([`Recording::records`] said it is one).
fn entry_of(packet: &Packet, opts: &BroadcastOptions) -> Entry {
    let (data, bins) = match &packet.inner {
        PacketData::Event(Value::Str(data, bins), _)
        | PacketData::BinaryEvent(Value::Str(data, bins), _) => (data.as_str(), bins.as_ref()),
        _ => ("", None),
    };
    let names = |rooms: &[Room]| rooms.iter().map(|r| r.to_string()).collect();
    Entry {
        data: data.to_owned(),
        attachments: bins
            .into_iter()
            .flatten()
            .map(|b| serde_bytes::ByteBuf::from(b.to_vec()))
            .collect(),
        rooms: names(&opts.rooms),
        except: names(&opts.except),
        sender: opts
            .has_flag(BroadcastFlags::Broadcast)
            .then_some(opts.sid)
            .flatten()
            .map(|sid| sid.to_string()),
    }
}

/// The packet of a log entry, its offset appended as the last argument; `None` if the entry is not an event's
/// arguments (`[...]`, at least the event name).
fn packet_of(ns: &str, offset: Offset, entry: &Entry) -> Option<Packet> {
    let data = entry.data.trim_end();
    let body = data
        .strip_suffix(']')
        .filter(|b| b.starts_with('[') && b.len() > 1)?;
    let data = format!("{body},\"{offset}\"]");
    let bins: VecDeque<Bytes> = entry
        .attachments
        .iter()
        .map(|b| Bytes::copy_from_slice(b))
        .collect();
    let bins = (!bins.is_empty()).then_some(bins);
    Some(Packet::event(
        Str::from(ns.to_owned()),
        Value::Str(Str::from(data), bins),
    ))
}

/// Whom a live entry goes to on this node.
fn options_of(entry: &Entry) -> BroadcastOptions {
    let mut opts = BroadcastOptions::default();
    opts.add_flag(BroadcastFlags::Broadcast);
    opts.rooms = entry.rooms.iter().map(|r| Room::from(r.clone())).collect();
    opts.except = entry.except.iter().map(|r| Room::from(r.clone())).collect();
    opts.sid = entry.sender.as_deref().and_then(|s| s.parse().ok());
    opts
}

/// Whether a live entry went to a socket in `rooms` with id `sid`.
fn is_for(entry: &Entry, sid: &str, rooms: &[Room]) -> bool {
    let in_any = |list: &[String]| list.iter().any(|r| rooms.iter().any(|m| m == r.as_str()));
    (entry.rooms.is_empty() || in_any(&entry.rooms))
        && !in_any(&entry.except)
        && entry.sender.as_deref() != Some(sid)
}

/// Delivers `ns`'s log on this node, in order, and replays what recovered sockets missed between deliveries.
async fn sequence<E: SocketEmitter, A: CoreAdapter<E>>(
    ns: String,
    log: Arc<dyn EventLog>,
    adapter: Arc<A>,
    mut attaches: mpsc::UnboundedReceiver<Attach>,
    position: Arc<Mutex<Option<Offset>>>,
    metrics: RecoveryMetrics,
) {
    // Entries appended from now on are this node's to deliver.
    let mut last = loop {
        match log.last(&ns).await {
            Ok(offset) => break offset,
            Err(e) => {
                tracing::warn!(ns, error = %e, "cannot read the recovery log; trying again");
                tokio::time::sleep(RETRY).await;
            }
        }
    };
    *position.lock().unwrap() = Some(last);
    let (tx, mut batches) = mpsc::channel(4);
    tokio::spawn(read(ns.clone(), log.clone(), last, tx));
    let local = adapter.get_local();
    loop {
        tokio::select! {
            biased;
            batch = batches.recv() => {
                let Some(batch) = batch else { break };
                for (offset, entry) in batch {
                    last = offset;
                    // An entry that did not decode was counted by the log.
                    let Some(entry) = entry else { continue };
                    match packet_of(&ns, offset, &entry) {
                        Some(packet) => {
                            let _ = local.broadcast(packet, options_of(&entry));
                        }
                        None => {
                            metrics.malformed.inc();
                        }
                    }
                }
                *position.lock().unwrap() = Some(last);
            }
            attach = attaches.recv() => {
                let Some(attach) = attach else { break };
                let replayed = replay(&ns, &*log, local, &attach, last, &metrics).await;
                local.add_all(attach.sid, attach.rooms);
                if let Ok(n) = &replayed {
                    metrics.replayed.inc_by(*n);
                }
                let _ = attach.done.send(replayed);
            }
        }
    }
}

/// Sends `attach.sid` the entries after `attach.after` up to `upto` that were for its rooms.
async fn replay<E: SocketEmitter>(
    ns: &str,
    log: &dyn EventLog,
    local: &CoreLocalAdapter<E>,
    attach: &Attach,
    upto: Offset,
    metrics: &RecoveryMetrics,
) -> Result<u64, AttachError> {
    let sid = attach.sid.to_string();
    let mut cursor = attach.after;
    let mut sent = 0;
    while cursor < upto {
        let page = log.after(ns, cursor, PAGE).await?;
        if page.is_empty() {
            break;
        }
        for (offset, entry) in page {
            if offset > upto {
                return Ok(sent);
            }
            cursor = offset;
            // An entry that did not decode was counted by the log.
            let Some(entry) = entry else { continue };
            if !is_for(&entry, &sid, &attach.rooms) {
                continue;
            }
            match packet_of(ns, offset, &entry) {
                Some(packet) => {
                    let _ = local.broadcast(packet, BroadcastOptions::new(attach.sid));
                    sent += 1;
                }
                None => {
                    metrics.malformed.inc();
                }
            }
        }
    }
    Ok(sent)
}

/// Reads `ns`'s log after `after` into `tx`, until the sequencer is gone; then lets go of its connection.
async fn read(
    ns: String,
    log: Arc<dyn EventLog>,
    mut after: Offset,
    tx: mpsc::Sender<Vec<(Offset, Option<Entry>)>>,
) {
    let mut tail = loop {
        tokio::select! {
            _ = tx.closed() => return,
            tail = log.tail(&ns) => match tail {
                Ok(tail) => break tail,
                Err(e) => {
                    tracing::warn!(ns, error = %e, "cannot follow the recovery log; trying again");
                    tokio::time::sleep(RETRY).await;
                }
            },
        }
    };
    // Logged once per outage, not at every retry.
    let mut failing = false;
    loop {
        let batch = tokio::select! {
            _ = tx.closed() => break,
            batch = tail.next(after, PAGE, WAIT) => batch,
        };
        match batch {
            Ok(batch) => {
                if std::mem::take(&mut failing) {
                    tracing::info!(ns, "reading the recovery log again");
                }
                let Some((last, _)) = batch.last() else {
                    continue;
                };
                after = *last;
                if tx.send(batch).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(ns, error = %e, "cannot read the recovery log; trying again");
                }
                tokio::time::sleep(RETRY).await;
            }
        }
    }
    tail.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(data: &str) -> Entry {
        Entry {
            data: data.into(),
            attachments: vec![],
            rooms: vec!["a".into(), "b".into()],
            except: vec!["x".into()],
            sender: Some("s1".into()),
        }
    }

    fn text(p: &Packet) -> (&str, usize) {
        match &p.inner {
            PacketData::Event(Value::Str(s, None), None) => (s.as_str(), 0),
            PacketData::BinaryEvent(Value::Str(s, Some(b)), None) => (s.as_str(), b.len()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn appends_the_offset_as_the_last_argument() {
        let o = Offset { ms: 17, seq: 2 };
        let p = packet_of("/chat", o, &entry(r#"["ev",1,{"a":[2]}]"#)).unwrap();
        assert_eq!(text(&p), (r#"["ev",1,{"a":[2]},"17-2"]"#, 0));
        assert_eq!(&*p.ns, "/chat");
        let mut bin = entry(r#"["ev",{"_placeholder":true,"num":0}]"#);
        bin.attachments = vec![serde_bytes::ByteBuf::from(vec![1, 2])];
        let p = packet_of("/", o, &bin).unwrap();
        assert_eq!(
            text(&p),
            (r#"["ev",{"_placeholder":true,"num":0},"17-2"]"#, 1)
        );
        for bad in ["", "[]", "{}", "\"ev\"", "[\"ev\""] {
            assert!(packet_of("/", o, &entry(bad)).is_none(), "{bad}");
        }
    }

    #[test]
    fn an_entry_goes_back_to_whom_the_broadcast_was_for() {
        let sid = Sid::new();
        let mut opts = BroadcastOptions::new(sid);
        opts.add_flag(BroadcastFlags::Broadcast);
        opts.rooms = ["a", "b"].into_iter().map(Room::from).collect();
        opts.except = ["x"].into_iter().map(Room::from).collect();
        let packet = Packet::event("/chat", Value::Str(Str::from("[\"ev\"]"), None));
        assert!(Recording::<()>::records(&packet, &opts));
        let e = entry_of(&packet, &opts);
        assert_eq!(e.data, "[\"ev\"]");
        assert_eq!(e.sender, Some(sid.to_string()));
        assert_eq!(options_of(&e), opts);

        let rooms = |r: &[&'static str]| r.iter().map(|r| Room::from(*r)).collect::<Vec<_>>();
        assert!(is_for(&e, "other", &rooms(&["b"])));
        assert!(!is_for(&e, "other", &rooms(&["c"])));
        assert!(!is_for(&e, "other", &rooms(&["a", "x"])));
        assert!(!is_for(&e, &sid.to_string(), &rooms(&["a"])));
        let everyone = Entry {
            rooms: vec![],
            ..e.clone()
        };
        assert!(is_for(&everyone, "other", &rooms(&["c"])));
    }

    #[test]
    fn volatile_acked_local_and_single_socket_emits_are_not_recorded() {
        let packet = Packet::event("/", Value::Str(Str::from("[\"ev\"]"), None));
        let to_room = || {
            let mut o = BroadcastOptions::default();
            o.rooms = ["a"].into_iter().map(Room::from).collect();
            o
        };
        assert!(Recording::<()>::records(&packet, &to_room()));
        for flag in [BroadcastFlags::Volatile, BroadcastFlags::Local] {
            let mut o = to_room();
            o.add_flag(flag);
            assert!(!Recording::<()>::records(&packet, &o));
        }
        assert!(!Recording::<()>::records(
            &packet,
            &BroadcastOptions::new(Sid::new())
        ));
        let mut acked = packet.clone();
        acked.inner.set_ack_id(3);
        assert!(!Recording::<()>::records(&acked, &to_room()));
    }
}
