//! Pushing from the application's backend (`POST /send`, the Redis emitter): an event to rooms of a namespace, on
//! every node.

use std::time::Duration;

use futures_util::{StreamExt, future::BoxFuture};
use socketioxide::{AckError, BroadcastError, SocketIo, adapter::Adapter};

use super::args::{Args, Relayed};

/// Why a push could not go out.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("namespace {0} is not served")]
    Namespace(String),
    /// The adapter could not reach the other nodes (Redis away).
    #[error("the event could not be sent to the cluster: {0}")]
    Broadcast(String),
}

/// Emits events to rooms of a namespace, on every node (socketioxide's adapter carries them across).
pub trait Push: Send + Sync + 'static {
    /// Whether namespace `ns` exists on this node (a dynamic one does while it has sockets here).
    fn serves(&self, ns: &str) -> bool;

    /// Emits `event` to the sockets of `rooms` (every socket of the namespace when empty) that are in none of
    /// `except`, each once. Binary arguments go as binary attachments.
    fn emit<'a>(
        &'a self,
        ns: &'a str,
        rooms: Vec<String>,
        except: Vec<String>,
        event: &'a str,
        args: &'a Relayed,
    ) -> BoxFuture<'a, Result<(), PushError>>;

    /// Emits `event` to one room's sockets that are in none of `except`, on every node (on this node alone when
    /// `here_only`), with an ack callback. Once it is sent, the returned future resolves to whether any socket
    /// acknowledged it within `timeout`: it resolves at the first ack.
    #[allow(clippy::too_many_arguments)]
    fn emit_with_ack<'a>(
        &'a self,
        ns: &'a str,
        room: String,
        except: Vec<String>,
        event: &'a str,
        args: &'a Args,
        timeout: Duration,
        here_only: bool,
    ) -> BoxFuture<'a, Result<BoxFuture<'static, bool>, PushError>>;
}

impl<A: Adapter> Push for SocketIo<A> {
    fn serves(&self, ns: &str) -> bool {
        self.of(ns).is_some()
    }

    fn emit<'a>(
        &'a self,
        ns: &'a str,
        rooms: Vec<String>,
        except: Vec<String>,
        event: &'a str,
        args: &'a Relayed,
    ) -> BoxFuture<'a, Result<(), PushError>> {
        Box::pin(async move {
            let ops = self
                .of(ns)
                .ok_or_else(|| PushError::Namespace(ns.to_owned()))?;
            // To the whole namespace, a broadcast (what connection state recovery records, as a room emit).
            let ops = match (rooms.is_empty(), except.is_empty()) {
                (true, true) => ops.broadcast(),
                (false, true) => ops.to(rooms),
                (_, false) => ops.to(rooms).except(except),
            };
            match ops.emit(event, args).await {
                // Some sockets could not take it (closed a moment ago, or not reading): the others got it.
                Ok(()) | Err(BroadcastError::Socket(_)) => Ok(()),
                Err(e) => Err(PushError::Broadcast(e.to_string())),
            }
        })
    }

    fn emit_with_ack<'a>(
        &'a self,
        ns: &'a str,
        room: String,
        except: Vec<String>,
        event: &'a str,
        args: &'a Args,
        timeout: Duration,
        here_only: bool,
    ) -> BoxFuture<'a, Result<BoxFuture<'static, bool>, PushError>> {
        Box::pin(async move {
            let ops = self
                .of(ns)
                .ok_or_else(|| PushError::Namespace(ns.to_owned()))?;
            let ops = match here_only {
                true => ops.local(),
                false => ops,
            };
            let ops = match except.is_empty() {
                true => ops.to(room),
                false => ops.to(room).except(except),
            };
            let acks = ops
                .timeout(timeout)
                .emit_with_ack::<_, serde_json::Value>(event, args)
                .await
                .map_err(|e| PushError::Broadcast(e.to_string()))?;
            let first: BoxFuture<'static, bool> = Box::pin(async move {
                let mut acks = std::pin::pin!(acks);
                while let Some((_, ack)) = acks.next().await {
                    // A client that called its callback acknowledged, whatever it answered.
                    if matches!(ack, Ok(_) | Err(AckError::Decode(_))) {
                        return true;
                    }
                }
                false
            });
            Ok(first)
        })
    }
}
