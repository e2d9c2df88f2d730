use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, RwLock, Weak},
    time::Duration,
};

use crate::{
    ProtocolVersion, SocketError, SocketIoConfig,
    ack::AckInnerStream,
    adapter::Adapter,
    client::SocketData,
    errors::{ConnectFail, Error},
    handler::{BoxedConnectHandler, ConnectHandler, MakeErasedHandler},
    parser::Parser,
    session::{ConnectRequest, SharedResolver},
    socket::{DisconnectReason, Socket},
};
use serde::Serialize;
use socketioxide_core::{
    Sid, Str, Uid, Value,
    adapter::{BroadcastIter, CoreLocalAdapter, RemoteSocketData, SocketEmitter},
    packet::{Packet, PacketData},
    parser::Parse,
};

/// A [`Namespace`] constructor used for dynamic namespaces
/// A namespace constructor only hold a common handler that will be cloned
/// to the instantiated namespaces.
pub struct NamespaceCtr<A: Adapter> {
    handler: BoxedConnectHandler<A>,
}
pub struct Namespace<A: Adapter> {
    pub path: Str,
    pub(crate) adapter: Arc<A>,
    parser: Parser,
    handler: BoxedConnectHandler<A>,
    sockets: RwLock<HashMap<Sid, Arc<Socket<A>>>>,
    /// Engine.IO connection id -> socket id, for the sockets whose id is not their connection's id
    /// (chosen by a [`SessionResolver`](crate::SessionResolver)): what finds the socket of a connection.
    /// Empty without a resolver.
    chosen_sids: RwLock<HashMap<Sid, Sid>>,
    /// The ids of the connections whose socket is connecting to this namespace, but which is not yet
    /// in [`Self::sockets`] because its resolver or middlewares are still running, and the ids these
    /// sockets will get when a resolver chose another one.
    connecting: Mutex<HashSet<Sid>>,
    session_resolver: Option<SharedResolver>,
}

/// Marks a connection's socket as connecting to a namespace until dropped.
struct ConnectingGuard<'a, A: Adapter> {
    ns: &'a Namespace<A>,
    /// The Engine.IO connection's id.
    sid: Sid,
    /// The id the socket will get, reserved with [`Self::reserve`], if not [`Self::sid`].
    chosen_sid: Option<Sid>,
}
impl<'a, A: Adapter> ConnectingGuard<'a, A> {
    /// Returns `None` if the connection's socket is already connected or connecting to this namespace,
    /// or if another socket has the connection's id.
    fn new(ns: &'a Namespace<A>, sid: Sid) -> Option<Self> {
        let mut connecting = ns.connecting.lock().unwrap();
        // A socket is inserted in `sockets` (and `chosen_sids`) before its guard is dropped, so it is
        // always found in at least one of them when the connection is in progress or done.
        if ns.sockets.read().unwrap().contains_key(&sid)
            || ns.chosen_sids.read().unwrap().contains_key(&sid)
            || !connecting.insert(sid)
        {
            return None;
        }
        Some(Self {
            ns,
            sid,
            chosen_sid: None,
        })
    }

    /// Reserves `sid`, chosen instead of the connection's id, for the socket.
    /// Returns false if another socket of the namespace has it or is connecting with it.
    fn reserve(&mut self, sid: Sid) -> bool {
        let mut connecting = self.ns.connecting.lock().unwrap();
        if self.ns.sockets.read().unwrap().contains_key(&sid) || !connecting.insert(sid) {
            return false;
        }
        self.chosen_sid = Some(sid);
        true
    }
}
impl<A: Adapter> Drop for ConnectingGuard<'_, A> {
    fn drop(&mut self) {
        let mut connecting = self.ns.connecting.lock().unwrap();
        connecting.remove(&self.sid);
        if let Some(sid) = self.chosen_sid {
            connecting.remove(&sid);
        }
    }
}

/// The payload of the CONNECT answer (protocol v5): the socket's id, and the private session id of
/// connection state recovery if a [`SessionResolver`](crate::SessionResolver) gave one.
#[derive(Serialize)]
struct ConnectAnswer<'a> {
    sid: Sid,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<&'a str>,
}

/// ===== impl NamespaceCtr =====
impl<A: Adapter> NamespaceCtr<A> {
    pub fn new<C, T>(handler: C) -> Self
    where
        C: ConnectHandler<A, T> + Send + Sync + 'static,
        T: Send + Sync + 'static,
    {
        Self {
            handler: MakeErasedHandler::new_ns_boxed(handler),
        }
    }
    pub fn get_new_ns(
        &self,
        path: Str,
        adapter_state: &A::State,
        config: &SocketIoConfig,
    ) -> Arc<Namespace<A>> {
        let handler = self.handler.boxed_clone();
        Namespace::new_boxed(path, handler, adapter_state, config)
    }
}

impl<A: Adapter> Namespace<A> {
    pub(crate) fn new<C, T>(
        path: Str,
        handler: C,
        adapter_state: &A::State,
        config: &SocketIoConfig,
    ) -> Arc<Self>
    where
        C: ConnectHandler<A, T> + Send + Sync + 'static,
        T: Send + Sync + 'static,
    {
        let handler = MakeErasedHandler::new_ns_boxed(handler);
        Self::new_boxed(path, handler, adapter_state, config)
    }

    fn new_boxed(
        path: Str,
        handler: BoxedConnectHandler<A>,
        adapter_state: &A::State,
        config: &SocketIoConfig,
    ) -> Arc<Self> {
        let parser = config.parser;
        let ack_timeout = config.ack_timeout;
        let uid = config.server_id;
        Arc::new_cyclic(|ns| Self {
            path: path.clone(),
            handler,
            parser,
            sockets: HashMap::new().into(),
            chosen_sids: HashMap::new().into(),
            connecting: HashSet::new().into(),
            session_resolver: config.session_resolver.clone(),
            adapter: Arc::new(A::new(
                adapter_state,
                CoreLocalAdapter::new(Emitter::new(ns.clone(), parser, path, ack_timeout, uid)),
            )),
        })
    }

    /// Connects the socket of the Engine.IO connection `sid` to a namespace.
    ///
    /// The [`SessionResolver`](crate::SessionResolver), if any, first chooses the socket's id (the
    /// connection's id by default) and `pid`.
    /// Middlewares are then called to check if the connection is allowed.
    /// * If the handler returns an error, a connect_error packet is sent to the client.
    /// * If the handler returns Ok, a connect packet is sent to the client and the handler `is` called.
    ///
    /// A connect packet for a connection whose socket is already connected or connecting to this
    /// namespace is ignored. Otherwise it would run the handlers twice and replace (or remove, if the
    /// middlewares reject it) the socket with the same id, without calling its disconnect handler.
    pub(crate) async fn connect(
        self: Arc<Self>,
        sid: Sid,
        esocket: Arc<engineioxide::Socket<SocketData<A>>>,
        auth: Option<Value>,
    ) -> Result<(), ConnectFail> {
        let Some(mut guard) = ConnectingGuard::new(&self, sid) else {
            #[cfg(feature = "tracing")]
            tracing::debug!(%sid, ?self.path, "ignoring duplicate connect packet");
            return Err(ConnectFail);
        };
        let (socket_sid, pid) = self
            .resolve_session(&mut guard, &esocket, auth.as_ref())
            .await;

        let socket: Arc<Socket<A>> =
            Socket::new(socket_sid, self.clone(), esocket.clone(), self.parser).into();

        if let Err(e) = self.handler.call_middleware(socket.clone(), &auth).await {
            #[cfg(feature = "tracing")]
            tracing::trace!(ns = self.path.as_str(), ?socket.id, "emitting connect_error packet");

            // user middleware code might have made the socket join some
            // room in the local/remote adapter. The socket never enters `self.sockets`,
            // so nothing else will ever clean it up.
            self.remove_socket(socket.id);

            let data = e.to_string();
            if let Err(_e) = socket.send(Packet::connect_error(self.path.clone(), data)) {
                #[cfg(feature = "tracing")]
                tracing::debug!(%sid, "error sending connect_error packet: {_e}, closing conn");

                esocket.close(engineioxide::DisconnectReason::PacketParsingError);
            }
            return Err(ConnectFail);
        }

        if socket.id != sid {
            self.chosen_sids.write().unwrap().insert(sid, socket.id);
        }
        // Connected before a disconnection can find it in the namespace: set after, it would undo the
        // `close` of a connection lost in between (a client leaving as soon as it has its CONNECT
        // answer), and the connect handler would then run for a socket it sees as connected for good.
        socket.set_connected(true);
        self.sockets
            .write()
            .unwrap()
            .insert(socket.id, socket.clone());
        #[cfg(feature = "tracing")]
        tracing::trace!(?socket.id, ?self.path, "socket added to namespace");

        let protocol = esocket.protocol.into();
        let payload = ConnectAnswer {
            sid: socket.id,
            pid: pid.as_deref(),
        };
        let payload = match protocol {
            ProtocolVersion::V5 => Some(self.parser.encode_default(&payload).unwrap()),
            ProtocolVersion::V4 => None,
        };
        if let Err(_e) = socket.send(Packet::connect(self.path.clone(), payload)) {
            #[cfg(feature = "tracing")]
            tracing::debug!(%sid, "error sending connect packet: {_e}, closing conn");

            socket.set_connected(false);
            self.remove_socket(socket.id);
            esocket.close(engineioxide::DisconnectReason::TransportError);
            return Err(ConnectFail);
        }

        self.handler.call(socket, auth);

        Ok(())
    }

    /// Asks the [`SessionResolver`](crate::SessionResolver), if any, for the id and `pid` of the socket
    /// of the connection `guard` marks. Without one, or if another socket has the id it chose, the
    /// socket gets the connection's id and no `pid`.
    async fn resolve_session(
        &self,
        guard: &mut ConnectingGuard<'_, A>,
        esocket: &engineioxide::Socket<SocketData<A>>,
        auth: Option<&Value>,
    ) -> (Sid, Option<String>) {
        let sid = guard.sid;
        // Clients of the protocol v4 derive their socket's id from their connection's id.
        let Some(resolver) = self
            .session_resolver
            .as_ref()
            .filter(|_| ProtocolVersion::from(esocket.protocol) == ProtocolVersion::V5)
        else {
            return (sid, None);
        };
        let req = ConnectRequest {
            ns: &self.path,
            sid,
            req_parts: &esocket.req_parts,
            auth,
        };
        let session = resolver.0.resolve(&req).await;
        if session.sid == sid || guard.reserve(session.sid) {
            return (session.sid, session.pid);
        }
        #[cfg(feature = "tracing")]
        tracing::debug!(%sid, chosen = %session.sid, ?self.path, "socket id in use, not restored");
        (sid, None)
    }

    /// Removes a socket from a namespace
    pub fn remove_socket(&self, sid: Sid) {
        #[cfg(feature = "tracing")]
        tracing::trace!(?sid, ?self.path, "removing socket from namespace");

        let removed = self.sockets.write().unwrap().remove(&sid);
        if let Some(socket) = removed
            && socket.eio_sid() != sid
        {
            self.chosen_sids.write().unwrap().remove(&socket.eio_sid());
        }
        self.adapter.get_local().del_all(sid);
    }

    pub fn has(&self, sid: Sid) -> bool {
        self.sockets.read().unwrap().values().any(|s| s.id == sid)
    }

    /// Handles a packet of the Engine.IO connection `sid` to this namespace.
    pub fn recv(&self, sid: Sid, packet: PacketData) -> Result<(), Error> {
        match packet {
            PacketData::Connect(_) => unreachable!("connect packets should be handled before"),
            PacketData::ConnectError(_) => Err(Error::InvalidPacketType),
            packet => self.get_conn_socket(sid)?.recv(packet),
        }
    }

    /// The socket of the Engine.IO connection `sid`, whose id is `sid` unless a
    /// [`SessionResolver`](crate::SessionResolver) chose another.
    pub fn get_conn_socket(&self, sid: Sid) -> Result<Arc<Socket<A>>, Error> {
        let socket_sid = self.chosen_sids.read().unwrap().get(&sid).copied();
        self.sockets
            .read()
            .unwrap()
            .get(&socket_sid.unwrap_or(sid))
            // A resolver may have given the connection's id to the socket of another connection.
            .filter(|socket| socket.eio_sid() == sid)
            .cloned()
            .ok_or(Error::SocketGone(sid))
    }

    pub fn get_socket(&self, sid: Sid) -> Result<Arc<Socket<A>>, Error> {
        self.sockets
            .read()
            .unwrap()
            .get(&sid)
            .cloned()
            .ok_or(Error::SocketGone(sid))
    }

    pub fn get_sockets(&self) -> Vec<Arc<Socket<A>>> {
        self.sockets.read().unwrap().values().cloned().collect()
    }

    /// Closes the entire namespace :
    /// * Closes the adapter
    /// * Closes all the sockets and
    ///   their underlying connections in case of [`DisconnectReason::ClosingServer`]
    /// * Removes all the sockets from the namespace
    ///
    /// This function is using .await points only when called with [`DisconnectReason::ClosingServer`]
    pub async fn close(&self, reason: DisconnectReason) {
        use futures_util::future;
        let sockets = self.sockets.read().unwrap().clone();

        #[cfg(feature = "tracing")]
        tracing::debug!(?self.path, "closing {} sockets in namespace", sockets.len());

        if reason == DisconnectReason::ClosingServer {
            // When closing the underlying transport, this will indirectly close the socket
            // Therefore there is no need to manually call `s.close()`.
            future::join_all(sockets.values().map(|s| s.close_underlying_transport())).await;
        } else {
            for s in sockets.into_values() {
                let _sid = s.id;
                s.close(reason);
            }
        }
        #[cfg(feature = "tracing")]
        tracing::debug!(?self.path, "all sockets in namespace closed");

        let _err = self.adapter.close().await;
        #[cfg(feature = "tracing")]
        if let Err(err) = _err {
            tracing::debug!(?err, ?self.path, "could not close adapter");
        }
    }
}

/// A type erased emitter to discard the adapter type parameter `A`.
/// Otherwise it creates a cyclic dependency between the namespace, the emitter and the adapter.
trait InnerEmitter: Send + Sync + 'static {
    /// Get the remote socket data from the socket ids.
    fn get_remote_sockets(&self, sids: BroadcastIter<'_>, uid: Uid) -> Vec<RemoteSocketData>;
    /// Get all the socket ids in the namespace.
    fn get_all_sids(&self, filter: &dyn Fn(&Sid) -> bool) -> Vec<Sid>;
    /// Send data to the list of socket ids.
    fn send_many(&self, sids: BroadcastIter<'_>, data: Value) -> Result<(), Vec<SocketError>>;
    /// Send data to the list of socket ids with volatile semantics.
    /// Errors are silently discarded.
    fn send_many_volatile(&self, sids: BroadcastIter<'_>, data: Value);
    /// Send data to the list of socket ids and get a stream of acks.
    fn send_many_with_ack(
        &self,
        sids: BroadcastIter<'_>,
        packet: Packet,
        timeout: Duration,
    ) -> (AckInnerStream, u32);
    /// Disconnect all the sockets in the list.
    fn disconnect_many(&self, sids: Vec<Sid>) -> Result<(), Vec<SocketError>>;
}

impl<A: Adapter> InnerEmitter for Namespace<A> {
    fn get_remote_sockets(&self, sids: BroadcastIter<'_>, uid: Uid) -> Vec<RemoteSocketData> {
        let sockets = self.sockets.read().unwrap();
        sids.filter_map(|sid| sockets.get(&sid))
            .map(|socket| RemoteSocketData {
                id: socket.id,
                ns: self.path.clone(),
                server_id: uid,
            })
            .collect()
    }
    fn get_all_sids(&self, filter: &dyn Fn(&Sid) -> bool) -> Vec<Sid> {
        self.sockets
            .read()
            .unwrap()
            .keys()
            .filter(|id| filter(id))
            .copied()
            .collect()
    }

    fn send_many(&self, sids: BroadcastIter<'_>, data: Value) -> Result<(), Vec<SocketError>> {
        let sockets = self.sockets.read().unwrap();
        let errs: Vec<SocketError> = sids
            .filter_map(|sid| sockets.get(&sid))
            .filter_map(|socket| socket.send_raw(data.clone()).err())
            .collect();
        if errs.is_empty() { Ok(()) } else { Err(errs) }
    }

    fn send_many_volatile(&self, sids: BroadcastIter<'_>, data: Value) {
        let sockets = self.sockets.read().unwrap();
        sids.filter_map(|sid| sockets.get(&sid))
            .for_each(|socket| socket.send_raw_volatile(data.clone()));
    }

    fn send_many_with_ack(
        &self,
        sids: BroadcastIter<'_>,
        packet: Packet,
        timeout: Duration,
    ) -> (AckInnerStream, u32) {
        let sockets_map = self.sockets.read().unwrap();
        let sockets = sids.filter_map(|sid| sockets_map.get(&sid));
        AckInnerStream::broadcast(packet, sockets, timeout)
    }

    fn disconnect_many(&self, sids: Vec<Sid>) -> Result<(), Vec<SocketError>> {
        if sids.is_empty() {
            return Ok(());
        }
        // Here we can't take a ref because this would cause a deadlock.
        // Ideally the disconnect / closing process should be refactored to avoid this.
        let sockets = {
            let sock_map = self.sockets.read().unwrap();
            sids.into_iter()
                .filter_map(|sid| sock_map.get(&sid))
                .cloned()
                .collect::<Vec<_>>()
        };

        let errs = sockets
            .into_iter()
            .filter_map(|socket| socket.disconnect().err())
            .collect::<Vec<_>>();
        if errs.is_empty() { Ok(()) } else { Err(errs) }
    }
}

/// Internal interface implementor to apply global operations on a namespace.
#[doc(hidden)]
pub struct Emitter {
    /// This `Weak<dyn>` allows to break the cyclic dependency between the namespace and the emitter.
    ns: Weak<dyn InnerEmitter>,
    parser: Parser,
    path: Str,
    ack_timeout: Duration,
    uid: Uid,
}

impl Emitter {
    fn new<A: Adapter>(
        ns: Weak<Namespace<A>>,
        parser: Parser,
        path: Str,
        ack_timeout: Duration,
        uid: Uid,
    ) -> Self {
        Self {
            ns,
            parser,
            path,
            ack_timeout,
            uid,
        }
    }
}

impl SocketEmitter for Emitter {
    type AckError = crate::AckError;
    type AckStream = AckInnerStream;

    fn get_all_sids(&self, filter: impl Fn(&Sid) -> bool) -> Vec<Sid> {
        self.ns
            .upgrade()
            .map(|ns| ns.get_all_sids(&filter))
            .unwrap_or_default()
    }
    fn get_remote_sockets(&self, sids: BroadcastIter<'_>) -> Vec<RemoteSocketData> {
        self.ns
            .upgrade()
            .map(|ns| ns.get_remote_sockets(sids, self.uid))
            .unwrap_or_default()
    }

    fn send_many(&self, sids: BroadcastIter<'_>, data: Value) -> Result<(), Vec<SocketError>> {
        match self.ns.upgrade() {
            Some(ns) => ns.send_many(sids, data),
            None => Ok(()),
        }
    }

    fn send_many_volatile(&self, sids: BroadcastIter<'_>, data: Value) {
        if let Some(ns) = self.ns.upgrade() {
            ns.send_many_volatile(sids, data);
        }
    }

    fn send_many_with_ack(
        &self,
        sids: BroadcastIter<'_>,
        packet: Packet,
        timeout: Option<Duration>,
    ) -> (Self::AckStream, u32) {
        self.ns
            .upgrade()
            .map(|ns| ns.send_many_with_ack(sids, packet, timeout.unwrap_or(self.ack_timeout)))
            .unwrap_or((AckInnerStream::empty(), 0))
    }

    fn disconnect_many(&self, sids: Vec<Sid>) -> Result<(), Vec<SocketError>> {
        match self.ns.upgrade() {
            Some(ns) => ns.disconnect_many(sids),
            None => Ok(()),
        }
    }
    fn parser(&self) -> impl Parse {
        self.parser
    }
    fn server_id(&self) -> Uid {
        self.uid
    }
    fn path(&self) -> &Str {
        &self.path
    }
    fn ack_timeout(&self) -> Duration {
        self.ack_timeout
    }
}

#[doc(hidden)]
#[cfg(feature = "__test_harness")]
impl Namespace<crate::adapter::LocalAdapter> {
    pub fn new_dummy<const S: usize>(sockets: [Sid; S]) -> Arc<Self> {
        let ns = Namespace::new("/".into(), async || (), &(), &SocketIoConfig::default());
        for sid in sockets {
            ns.sockets
                .write()
                .unwrap()
                .insert(sid, Socket::new_dummy(sid, ns.clone()).into());
        }
        ns
    }

    pub fn clean_dummy_sockets(&self) {
        self.sockets.write().unwrap().clear();
    }
}

impl<A: Adapter> std::fmt::Debug for Namespace<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namespace")
            .field("path", &self.path)
            .field("sockets", &self.sockets)
            .finish()
    }
}

#[cfg(feature = "tracing")]
impl<A: Adapter> Drop for Namespace<A> {
    fn drop(&mut self) {
        #[cfg(feature = "tracing")]
        tracing::debug!("dropping namespace {}", self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{ConnectSession, SessionResolver};
    use crate::{adapter::LocalAdapter, extract::SocketRef, handler::ConnectHandler};
    use engineioxide::Socket as EIoSocket;
    use futures_core::future::BoxFuture;
    use socketioxide_core::adapter::CoreAdapter;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::Notify;

    #[tokio::test]
    async fn rejected_middleware_cleans_up_joined_rooms() {
        let sid = Sid::new();
        let ns = Namespace::<LocalAdapter>::new(
            Str::from("/"),
            { async || () }.with(async |s: SocketRef| {
                s.join("room1");
                Err::<(), _>(std::io::Error::other("rejected"))
            }),
            &(),
            &SocketIoConfig::default(),
        );
        let esocket = EIoSocket::new_dummy(sid, Box::new(|_, _| ()));

        assert!(ns.clone().connect(sid, esocket, None).await.is_err());
        assert!(ns.adapter.get_local().socket_rooms(sid).is_empty());
    }

    /// Create a namespace counting the calls of its middleware.
    /// The middleware joins `room1` on its first call, then rejects the following ones.
    fn counting_ns(calls: Arc<AtomicUsize>) -> Arc<Namespace<LocalAdapter>> {
        Namespace::<LocalAdapter>::new(
            Str::from("/"),
            { async || () }.with(async move |s: SocketRef| {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    s.join("room1");
                    Ok(())
                } else {
                    Err(std::io::Error::other("rejected"))
                }
            }),
            &(),
            &SocketIoConfig::default(),
        )
    }

    #[tokio::test]
    async fn duplicate_connect_keeps_the_first_socket() {
        let sid = Sid::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let ns = counting_ns(calls.clone());
        let esocket = EIoSocket::new_dummy(sid, Box::new(|_, _| ()));

        assert!(ns.clone().connect(sid, esocket.clone(), None).await.is_ok());
        let socket = ns.get_socket(sid).unwrap();

        assert!(ns.clone().connect(sid, esocket, None).await.is_err());

        // The middleware would have rejected the second connection and removed the socket rooms.
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(Arc::ptr_eq(&socket, &ns.get_socket(sid).unwrap()));
        assert_eq!(ns.adapter.get_local().socket_rooms(sid).len(), 1);
    }

    /// The socket only enters the namespace after its middleware:
    /// a duplicate can be received while the first connection is still pending.
    #[tokio::test]
    async fn duplicate_connect_during_pending_middleware_is_ignored() {
        let sid = Sid::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let started = Arc::new(Notify::new());
        let release = Arc::new(Notify::new());
        let ns = Namespace::<LocalAdapter>::new(
            Str::from("/"),
            { async || () }.with({
                let (calls, started, release) = (calls.clone(), started.clone(), release.clone());
                async move || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    started.notify_one();
                    release.notified().await;
                    Ok::<_, std::io::Error>(())
                }
            }),
            &(),
            &SocketIoConfig::default(),
        );
        let esocket = EIoSocket::new_dummy(sid, Box::new(|_, _| ()));

        let first = tokio::spawn(ns.clone().connect(sid, esocket.clone(), None));
        started.notified().await;

        // Without a timeout, a duplicate waiting on the pending middleware would block this test.
        let duplicate = ns.clone().connect(sid, esocket, None);
        let duplicate = tokio::time::timeout(Duration::from_millis(100), duplicate);
        assert!(duplicate.await.expect("should not wait").is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(ns.get_socket(sid).is_err());

        release.notify_one();
        assert!(first.await.unwrap().is_ok());
        assert!(ns.get_socket(sid).is_ok());
    }

    #[tokio::test]
    async fn connect_again_after_socket_removal() {
        let sid = Sid::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let ns = Namespace::<LocalAdapter>::new(
            Str::from("/"),
            { async || () }.with({
                let calls = calls.clone();
                async move || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, std::io::Error>(())
                }
            }),
            &(),
            &SocketIoConfig::default(),
        );
        let esocket = EIoSocket::new_dummy(sid, Box::new(|_, _| ()));

        assert!(ns.clone().connect(sid, esocket.clone(), None).await.is_ok());
        let first = ns.get_socket(sid).unwrap();
        ns.remove_socket(sid);

        assert!(ns.clone().connect(sid, esocket, None).await.is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(!Arc::ptr_eq(&first, &ns.get_socket(sid).unwrap()));
    }

    #[tokio::test]
    async fn connect_again_after_rejected_middleware() {
        let sid = Sid::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let ns = Namespace::<LocalAdapter>::new(
            Str::from("/"),
            { async || () }.with({
                let calls = calls.clone();
                async move || {
                    if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                        Err(std::io::Error::other("rejected"))
                    } else {
                        Ok(())
                    }
                }
            }),
            &(),
            &SocketIoConfig::default(),
        );
        let esocket = EIoSocket::new_dummy(sid, Box::new(|_, _| ()));

        assert!(
            ns.clone()
                .connect(sid, esocket.clone(), None)
                .await
                .is_err()
        );
        assert!(ns.clone().connect(sid, esocket, None).await.is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    /// A resolver giving every socket the id `.0` and the `pid` "pid".
    struct Restore(Sid);
    impl SessionResolver for Restore {
        fn resolve(&self, _: &ConnectRequest<'_>) -> BoxFuture<'static, ConnectSession> {
            let sid = self.0;
            Box::pin(async move {
                ConnectSession {
                    sid,
                    pid: Some("pid".into()),
                }
            })
        }
    }

    fn resolver_config(resolver: impl SessionResolver) -> SocketIoConfig {
        SocketIoConfig {
            session_resolver: Some(SharedResolver(Arc::new(resolver))),
            ..Default::default()
        }
    }

    /// A connection whose packets to the client are read from the returned receiver.
    fn piped_esocket(
        sid: Sid,
    ) -> (
        Arc<EIoSocket<SocketData<LocalAdapter>>>,
        tokio::sync::mpsc::Receiver<engineioxide::Packet>,
    ) {
        EIoSocket::new_dummy_piped(sid, Box::new(|_, _| ()), 16)
    }

    async fn connect_answer(rx: &mut tokio::sync::mpsc::Receiver<engineioxide::Packet>) -> String {
        let packet = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await;
        match packet.expect("no connect answer") {
            Some(engineioxide::Packet::Message(msg)) => msg.to_string(),
            packet => panic!("unexpected packet: {packet:?}"),
        }
    }

    #[tokio::test]
    async fn resolver_sees_the_connect_request() {
        type Seen = Option<(String, Sid, Option<Value>)>;
        struct Spy(Arc<Mutex<Seen>>);
        impl SessionResolver for Spy {
            fn resolve(&self, req: &ConnectRequest<'_>) -> BoxFuture<'static, ConnectSession> {
                let seen = (req.ns.to_owned(), req.sid, req.auth.cloned());
                *self.0.lock().unwrap() = Some(seen);
                let sid = req.sid;
                Box::pin(async move { ConnectSession { sid, pid: None } })
            }
        }
        let seen = Arc::new(Mutex::new(None));
        let config = resolver_config(Spy(seen.clone()));
        let ns = Namespace::<LocalAdapter>::new(Str::from("/chat"), async || (), &(), &config);
        let sid = Sid::new();
        let auth = Value::Str(Str::from(r#"{"pid":"p"}"#), None);
        let (esocket, mut rx) = piped_esocket(sid);

        assert!(
            ns.clone()
                .connect(sid, esocket, Some(auth.clone()))
                .await
                .is_ok()
        );
        let seen = seen
            .lock()
            .unwrap()
            .take()
            .expect("the resolver was not called");
        assert_eq!(seen, ("/chat".to_owned(), sid, Some(auth)));
        // The resolver kept the connection's id and gave no pid: the answer is the one without resolver.
        assert_eq!(
            connect_answer(&mut rx).await,
            format!(r#"0/chat,{{"sid":"{sid}"}}"#)
        );
    }

    #[tokio::test]
    async fn resolver_chooses_the_socket_id_and_pid() {
        let (eio_sid, sid) = (Sid::new(), Sid::new());
        let config = resolver_config(Restore(sid));
        let ns = Namespace::<LocalAdapter>::new(Str::from("/"), async || (), &(), &config);
        let (esocket, mut rx) = piped_esocket(eio_sid);

        assert!(ns.clone().connect(eio_sid, esocket, None).await.is_ok());
        assert_eq!(
            connect_answer(&mut rx).await,
            format!(r#"0{{"sid":"{sid}","pid":"pid"}}"#)
        );
        assert!(ns.get_socket(eio_sid).is_err());
        assert_eq!(ns.get_conn_socket(eio_sid).unwrap().id, sid);
    }

    #[tokio::test]
    async fn packets_of_the_connection_reach_the_socket_with_a_chosen_id() {
        let (eio_sid, sid) = (Sid::new(), Sid::new());
        let ns = Namespace::<LocalAdapter>::new(
            Str::from("/"),
            async || (),
            &(),
            &resolver_config(Restore(sid)),
        );
        let esocket = EIoSocket::new_dummy(eio_sid, Box::new(|_, _| ()));
        assert!(
            ns.clone()
                .connect(eio_sid, esocket.clone(), None)
                .await
                .is_ok()
        );

        // The client leaves the namespace: its socket is removed, and the connection forgotten.
        assert!(ns.recv(eio_sid, PacketData::Disconnect).is_ok());
        assert!(ns.get_socket(sid).is_err());
        assert!(ns.chosen_sids.read().unwrap().is_empty());

        // So it can connect again.
        assert!(ns.clone().connect(eio_sid, esocket, None).await.is_ok());
        assert_eq!(ns.get_conn_socket(eio_sid).unwrap().id, sid);
    }

    #[tokio::test]
    async fn duplicate_connect_of_a_socket_with_a_chosen_id_is_ignored() {
        let (eio_sid, sid) = (Sid::new(), Sid::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let counting = calls.clone();
        let ns = Namespace::<LocalAdapter>::new(
            Str::from("/"),
            { async || () }.with(async move || {
                counting.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>(())
            }),
            &(),
            &resolver_config(Restore(sid)),
        );
        let esocket = EIoSocket::new_dummy(eio_sid, Box::new(|_, _| ()));

        assert!(
            ns.clone()
                .connect(eio_sid, esocket.clone(), None)
                .await
                .is_ok()
        );
        let socket = ns.get_socket(sid).unwrap();
        assert!(ns.clone().connect(eio_sid, esocket, None).await.is_err());

        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(Arc::ptr_eq(&socket, &ns.get_conn_socket(eio_sid).unwrap()));
    }

    #[tokio::test]
    async fn chosen_id_of_a_connected_socket_is_not_given() {
        let (first, second) = (Sid::new(), Sid::new());
        // Both connections ask for the id of the first one.
        let config = resolver_config(Restore(first));
        let ns = Namespace::<LocalAdapter>::new(Str::from("/"), async || (), &(), &config);
        let (esocket1, mut rx1) = piped_esocket(first);
        let (esocket2, mut rx2) = piped_esocket(second);

        assert!(ns.clone().connect(first, esocket1, None).await.is_ok());
        assert!(ns.clone().connect(second, esocket2, None).await.is_ok());

        assert_eq!(
            connect_answer(&mut rx1).await,
            format!(r#"0{{"sid":"{first}","pid":"pid"}}"#)
        );
        // The second socket keeps its connection's id, and gets no pid.
        assert_eq!(
            connect_answer(&mut rx2).await,
            format!(r#"0{{"sid":"{second}"}}"#)
        );
        assert_eq!(ns.get_conn_socket(first).unwrap().id, first);
        assert_eq!(ns.get_conn_socket(second).unwrap().id, second);
    }

    /// The socket only enters the namespace after its middleware: its id is reserved meanwhile.
    #[tokio::test]
    async fn chosen_id_of_a_connecting_socket_is_not_given() {
        let (first, second, sid) = (Sid::new(), Sid::new(), Sid::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let started = Arc::new(Notify::new());
        let release = Arc::new(Notify::new());
        let ns = Namespace::<LocalAdapter>::new(
            Str::from("/"),
            { async || () }.with({
                let (calls, started, release) = (calls.clone(), started.clone(), release.clone());
                async move || {
                    if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                        started.notify_one();
                        release.notified().await;
                    }
                    Ok::<_, std::io::Error>(())
                }
            }),
            &(),
            &resolver_config(Restore(sid)),
        );
        let esocket1 = EIoSocket::new_dummy(first, Box::new(|_, _| ()));
        let esocket2 = EIoSocket::new_dummy(second, Box::new(|_, _| ()));

        let pending = tokio::spawn(ns.clone().connect(first, esocket1, None));
        started.notified().await;
        assert!(ns.clone().connect(second, esocket2, None).await.is_ok());
        release.notify_one();
        assert!(pending.await.unwrap().is_ok());

        assert_eq!(ns.get_conn_socket(first).unwrap().id, sid);
        assert_eq!(ns.get_conn_socket(second).unwrap().id, second);
    }

    /// A resolver may give the id of a connection to the socket of another: that connection's packets
    /// must not reach it.
    #[tokio::test]
    async fn connection_lookup_skips_the_socket_of_another_connection() {
        let (first, second) = (Sid::new(), Sid::new());
        let config = resolver_config(Restore(first));
        let ns = Namespace::<LocalAdapter>::new(Str::from("/"), async || (), &(), &config);
        let esocket1 = EIoSocket::new_dummy(first, Box::new(|_, _| ()));
        let esocket2 = EIoSocket::new_dummy(second, Box::new(|_, _| ()));

        assert!(ns.clone().connect(second, esocket2, None).await.is_ok());
        assert_eq!(ns.get_conn_socket(second).unwrap().id, first);
        assert!(ns.get_conn_socket(first).is_err());
        assert!(ns.recv(first, PacketData::Disconnect).is_err());
        assert!(ns.get_socket(first).is_ok());

        // The first connection cannot connect with the id another socket has.
        assert!(ns.clone().connect(first, esocket1, None).await.is_err());
    }

    #[tokio::test]
    async fn rejected_middleware_cleans_up_the_rooms_of_a_chosen_id() {
        let (eio_sid, sid) = (Sid::new(), Sid::new());
        let ns = Namespace::<LocalAdapter>::new(
            Str::from("/"),
            { async || () }.with(async |s: SocketRef| {
                s.join("room1");
                Err::<(), _>(std::io::Error::other("rejected"))
            }),
            &(),
            &resolver_config(Restore(sid)),
        );
        let esocket = EIoSocket::new_dummy(eio_sid, Box::new(|_, _| ()));

        assert!(ns.clone().connect(eio_sid, esocket, None).await.is_err());
        assert!(ns.adapter.get_local().socket_rooms(sid).is_empty());
        assert!(ns.chosen_sids.read().unwrap().is_empty());
        assert!(ns.connecting.lock().unwrap().is_empty());
    }

    /// Without a resolver, the answer must stay the one of socketioxide's `ConnectPacket`.
    #[test]
    fn connect_answer_without_pid_is_a_connect_packet() {
        use socketioxide_core::packet::ConnectPacket;
        let sid = Sid::new();
        let parsers = [
            Parser::default(),
            #[cfg(feature = "msgpack")]
            Parser::MsgPack(socketioxide_parser_msgpack::MsgPackParser),
        ];
        for parser in parsers {
            let answer = ConnectAnswer { sid, pid: None };
            assert_eq!(
                parser.encode_default(&answer).unwrap(),
                parser.encode_default(&ConnectPacket { sid }).unwrap()
            );
        }
    }
}
