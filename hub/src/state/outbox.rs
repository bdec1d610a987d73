//! Messages to an attached spoke that did not fit its control queue: kept
//! (one per kind of fact, so the backlog stays small) and queued again at
//! every rotation tick, so a slow connection hears them later, never not.
//! Key messages are not kept here: the key schedule sends them again
//! until they are answered.

use std::collections::HashMap;

use tasuki_core::control::HubMessage;
use tasuki_core::routing::SpokeId;
use tokio::sync::mpsc::error::TrySendError;

use super::HubState;

/// What waits for room in each spoke's control queue.
#[derive(Debug, Default)]
pub(super) struct Backlog(HashMap<SpokeId, Vec<HubMessage>>);

impl Backlog {
    /// Keeps `msg` for `spoke`; it replaces an older message about the same fact.
    fn keep(&mut self, spoke: SpokeId, msg: HubMessage) {
        let waiting = self.0.entry(spoke).or_default();
        waiting.retain(|old| !same_fact(old, &msg));
        waiting.push(msg);
    }

    /// Forgets what waits for a spoke whose session ended.
    pub(super) fn forget(&mut self, spoke: SpokeId) {
        self.0.remove(&spoke);
    }
}

/// Whether `new` makes `old` pointless to send.
fn same_fact(old: &HubMessage, new: &HubMessage) -> bool {
    match (old, new) {
        (HubMessage::Session(_), HubMessage::Session(_)) => true,
        (HubMessage::DeviceWaiting(a), HubMessage::DeviceWaiting(b)) => a.name == b.name,
        _ => old == new,
    }
}

impl HubState {
    /// Queues a message on spoke `id`'s control connection, if it has one;
    /// when the queue is full it waits in the backlog for the next tick.
    pub(crate) fn tell(&mut self, id: SpokeId, msg: HubMessage) {
        let Some(tx) = self.sessions.get(&id) else {
            return;
        };
        match tx.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(msg)) => {
                tracing::debug!(
                    spoke = id,
                    "control queue full; the message goes at the next tick"
                );
                self.backlog.keep(id, msg);
            }
            // The connection is ending; the spoke hears the state when it attaches again.
            Err(TrySendError::Closed(_)) => {}
        }
    }

    /// Queues again what waits in the backlog, as far as there is room.
    pub(super) fn retell(&mut self) {
        let waiting = std::mem::take(&mut self.backlog.0);
        for (id, messages) in waiting {
            for msg in messages {
                self.tell(id, msg);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tasuki_core::control::SessionFacts;

    fn waiting(user: &str, name: &str) -> HubMessage {
        HubMessage::DeviceWaiting(tasuki_core::control::DeviceWaiting {
            user: user.into(),
            name: name.into(),
            from: "203.0.113.9:4000".into(),
            hostname: "h".into(),
        })
    }

    #[test]
    fn the_backlog_keeps_the_latest_of_each_fact() {
        let mut b = Backlog::default();
        for carrying in [false, true] {
            b.keep(
                1,
                HubMessage::Session(SessionFacts {
                    users: vec![],
                    carrying,
                }),
            );
        }
        b.keep(1, waiting("alice", "phone"));
        b.keep(1, waiting("alice", "phone"));
        b.keep(1, waiting("alice", "tablet"));
        b.keep(2, HubMessage::Keepalive);
        assert_eq!(
            b.0[&1],
            vec![
                HubMessage::Session(SessionFacts {
                    users: vec![],
                    carrying: true
                }),
                waiting("alice", "phone"),
                waiting("alice", "tablet"),
            ]
        );
        b.forget(1);
        assert!(!b.0.contains_key(&1));
        assert_eq!(b.0[&2], vec![HubMessage::Keepalive]);
    }
}
