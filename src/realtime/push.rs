//! Pushing from the application's backend (`POST /send`): an event to rooms of a namespace, on every node.

use futures_util::future::BoxFuture;
use socketioxide::{SocketIo, adapter::Adapter};

use super::events::Args;

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
    fn emit<'a>(
        &'a self,
        ns: &'a str,
        rooms: Vec<String>,
        event: &'a str,
        args: &'a Args,
    ) -> BoxFuture<'a, Result<(), PushError>>;
}

impl<A: Adapter> Push for SocketIo<A> {
    fn emit<'a>(
        &'a self,
        ns: &'a str,
        rooms: Vec<String>,
        event: &'a str,
        args: &'a Args,
    ) -> BoxFuture<'a, Result<(), PushError>> {
        Box::pin(async move {
            let ops = self
                .of(ns)
                .ok_or_else(|| PushError::Namespace(ns.to_owned()))?;
            ops.to(rooms)
                .emit(event, args)
                .await
                .map_err(|e| PushError::Broadcast(e.to_string()))
        })
    }
}
