//! Messages to an attached spoke that did not fit its control queue: kept
//! (one per kind of fact, so the backlog stays small) and queued again at
//! every rotation tick, so a slow connection hears them later, never not.
//! Key messages are not kept here: the key schedule sends them again
//! until they are answered.

use std::collections::HashMap;

use tasuki_core::control::HubMessage;
use tasuki_core::routing::SpokeId;
use tokio::sync::mpsc::{self, error::TrySendError};

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

    /// Queues `msg` on `tx`, the control queue of `spoke`; when the queue is
    /// full it waits here for the next tick. While older messages wait, a
    /// new one waits behind them, so a spoke never hears an older fact after
    /// a newer one.
    fn offer(&mut self, spoke: SpokeId, tx: &mpsc::Sender<HubMessage>, msg: HubMessage) {
        if self.0.contains_key(&spoke) {
            self.keep(spoke, msg);
            return;
        }
        match tx.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(msg)) => {
                tracing::debug!(
                    spoke,
                    "control queue full; the message goes at the next tick"
                );
                self.keep(spoke, msg);
            }
            // The connection is ending; the spoke hears the state when it attaches again.
            Err(TrySendError::Closed(_)) => {}
        }
    }

    /// Queues again what waits, in order, as far as there is room in each
    /// spoke's queue; the rest waits again.
    fn retell(&mut self, sessions: &HashMap<SpokeId, mpsc::Sender<HubMessage>>) {
        for (id, messages) in std::mem::take(&mut self.0) {
            let Some(tx) = sessions.get(&id) else {
                continue;
            };
            for msg in messages {
                self.offer(id, tx, msg);
            }
        }
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
    /// Queues a message on spoke `id`'s control connection, if it has one
    /// (see [`Backlog::offer`]).
    pub(crate) fn tell(&mut self, id: SpokeId, msg: HubMessage) {
        if let Some(tx) = self.sessions.get(&id) {
            self.backlog.offer(id, tx, msg);
        }
    }

    /// Queues again what waits in the backlog (see [`Backlog::retell`]).
    pub(super) fn retell(&mut self) {
        self.backlog.retell(&self.sessions);
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

    fn facts(carrying: bool) -> HubMessage {
        HubMessage::Session(SessionFacts {
            users: vec![],
            carrying,
        })
    }

    #[test]
    fn a_full_queue_keeps_the_order_of_facts() {
        let mut b = Backlog::default();
        let (tx, mut rx) = mpsc::channel(1);
        b.offer(1, &tx, waiting("alice", "phone"));
        b.offer(1, &tx, facts(false));
        // Room again, but the older fact waits: the newer one goes behind it.
        assert_eq!(rx.try_recv().unwrap(), waiting("alice", "phone"));
        b.offer(1, &tx, facts(true));
        assert!(rx.try_recv().is_err());
        assert_eq!(
            b.0[&1],
            vec![facts(true)],
            "the newer fact replaced the older"
        );
        // The next tick sends what waits, as far as there is room.
        b.retell(&HashMap::from([(1, tx.clone())]));
        assert_eq!(rx.try_recv().unwrap(), facts(true));
        assert!(b.0.is_empty());
    }
}
