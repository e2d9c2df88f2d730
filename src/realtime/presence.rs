//! Members' presence (`presence = true`): a room's sockets are sent `member-added` / `member-removed`
//! `{room, id_user}` when a user gets their first socket in it or loses their last one, over the whole cluster.
//!
//! The counts are the lifecycle webhooks' ([`crate::webhooks`]): one atomic step in Redis decides "first" and
//! "last" for the cluster and writes the event to the namespace's outbox. This is one more [`Outlet`] of their
//! dispatcher: one node at a time reads a namespace's outbox in order and emits each event to its room, on every
//! node. So every member of the room hears of each change once, in the order it happened, whichever node the
//! user's sockets are on.

use std::{sync::Arc, time::Duration};

use futures_util::future::BoxFuture;
use serde_json::json;

use super::{
    args::{Args, Relayed},
    push::Push,
};
use crate::{
    config::file::{EventKind, NamePattern},
    webhooks::{
        Event,
        dispatch::{Outlet, unix_ms},
    },
};

/// Events older than this when read are skipped: after a long outage, or a holder's takeover, what changed long
/// ago is no news to the sockets connected now (they asked `GET /api/rooms`, or heard of later changes).
const MAX_AGE: Duration = Duration::from_secs(30);

/// The presence outlet of this node's dispatcher.
pub struct Presence {
    pub push: Arc<dyn Push>,
    /// The namespaces with `presence = true`.
    pub namespaces: Arc<[NamePattern]>,
}

/// The client event telling of `kind`, if presence tells of it.
fn event_name(kind: EventKind) -> Option<&'static str> {
    match kind {
        EventKind::MemberAdded => Some("member-added"),
        EventKind::MemberRemoved => Some("member-removed"),
        _ => None,
    }
}

impl Outlet for Presence {
    fn key(&self) -> String {
        "presence".into()
    }

    /// Only where the namespace is served: a dynamic namespace exists on a node while it has sockets there.
    fn wants(&self, ns: &str) -> bool {
        self.namespaces.iter().any(|p| p.matches(ns)) && self.push.serves(ns)
    }

    fn takes(&self, kind: EventKind) -> bool {
        event_name(kind).is_some()
    }

    /// Nothing gathered on purpose: what one read brings goes at once.
    fn batch_ms(&self) -> u64 {
        0
    }

    fn batches(&self) -> bool {
        true
    }

    fn retry(&self) -> Duration {
        Duration::from_secs(5)
    }

    fn idle_max(&self) -> Duration {
        Duration::from_millis(100)
    }

    fn label(&self) -> String {
        "presence".into()
    }

    fn send<'a>(
        &'a self,
        ns: &'a str,
        _id: &'a str,
        events: &'a [&'a Event],
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let fresh = unix_ms().saturating_sub(MAX_AGE.as_millis() as u64);
            for e in events.iter().filter(|e| e.at_ms >= fresh) {
                let (Some(name), Some(room), Some(user)) = (event_name(e.kind), &e.room, &e.user)
                else {
                    continue;
                };
                let args = Relayed::from(&Args(vec![json!({ "room": room, "id_user": user })]));
                self.push
                    .emit(ns, vec![room.clone()], vec![], name, &args)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::realtime::push::PushError;

    /// Records what it is asked to emit.
    #[derive(Default)]
    struct Recorded(Mutex<Vec<String>>);

    impl Push for Recorded {
        fn serves(&self, ns: &str) -> bool {
            ns != "/gone"
        }

        fn emit<'a>(
            &'a self,
            ns: &'a str,
            rooms: Vec<String>,
            _: Vec<String>,
            event: &'a str,
            args: &'a Relayed,
        ) -> BoxFuture<'a, Result<(), PushError>> {
            let args = args.to_json().map(|a| serde_json::Value::Array(a.0));
            let line = format!("{ns} {event} {rooms:?} {}", args.unwrap_or_default());
            self.0.lock().unwrap().push(line);
            Box::pin(async { Ok(()) })
        }

        fn emit_with_ack<'a>(
            &'a self,
            _: &'a str,
            _: String,
            _: Vec<String>,
            _: &'a str,
            _: &'a Args,
            _: Duration,
            _: bool,
        ) -> BoxFuture<'a, Result<BoxFuture<'static, bool>, PushError>> {
            unreachable!("presence never asks for acks")
        }
    }

    fn event(kind: EventKind, user: Option<&str>, age_ms: u64) -> Event {
        Event {
            id: "1-0".into(),
            seq: 1,
            kind,
            room: Some("Maths".into()),
            user: user.map(str::to_owned),
            verified: Some(true),
            socket: None,
            at_ms: unix_ms() - age_ms,
        }
    }

    #[tokio::test]
    async fn members_are_told_to_their_room_and_old_news_is_skipped() {
        let push = Arc::new(Recorded::default());
        let presence = Presence {
            push: push.clone(),
            namespaces: vec![NamePattern::Prefix("/class-".into())].into(),
        };
        assert!(presence.wants("/class-a"));
        assert!(!presence.wants("/other"), "not a presence namespace");
        assert!(!presence.wants("/gone"), "not served here");
        assert!(presence.takes(EventKind::MemberAdded) && presence.takes(EventKind::MemberRemoved));
        assert!(
            !presence.takes(EventKind::RoomOccupied) && !presence.takes(EventKind::SocketConnected)
        );

        let events = [
            event(EventKind::MemberAdded, Some("42"), 0),
            event(EventKind::MemberRemoved, Some("7"), 1_000),
            event(EventKind::MemberAdded, Some("old"), 31_000),
        ];
        let refs: Vec<&Event> = events.iter().collect();
        presence.send("/class-a", "msg", &refs).await.unwrap();
        assert_eq!(
            *push.0.lock().unwrap(),
            [
                r#"/class-a member-added ["Maths"] [{"id_user":"42","room":"Maths"}]"#,
                r#"/class-a member-removed ["Maths"] [{"id_user":"7","room":"Maths"}]"#,
            ]
        );
    }
}
