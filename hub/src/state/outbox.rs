//! What waits on the way to a spoke's control queue: messages told before
//! the data plane has taken the link changes made before them ([`Held`]),
//! and messages that did not fit the queue ([`Backlog`]): kept (one per
//! kind of fact, so the backlog stays small) and queued again at every
//! rotation tick, so a slow connection hears them later, never not. Key
//! messages are not kept in the backlog: the key schedule sends them again
//! until they are answered.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tasuki_core::control::HubMessage;
use tasuki_core::routing::SpokeId;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::watch;

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

/// Messages told after a link change the data plane has not taken yet.
/// Commands to the data plane never wait (so the state is never locked
/// across an await); instead each link change raises a barrier, the data
/// plane answers when it has passed it, and what was told in between waits
/// here, in order, until then.
#[derive(Debug)]
pub(super) struct Held {
    /// The last barrier raised.
    raised: u64,
    /// The last barrier the data plane passed, for whoever waits on it.
    passed: watch::Sender<u64>,
    /// Each message with the barrier it waits for.
    waiting: VecDeque<(u64, Waiting)>,
}

impl Default for Held {
    fn default() -> Self {
        Self {
            raised: 0,
            passed: watch::Sender::new(0),
            waiting: VecDeque::new(),
        }
    }
}

impl Held {
    /// Raises a barrier: its number goes to the data plane, which answers
    /// with it once every command before it is in effect.
    pub(super) fn barrier(&mut self) -> u64 {
        self.raised += 1;
        self.raised
    }

    /// Whether messages told now have to wait.
    fn waits(&self) -> bool {
        *self.passed.borrow() < self.raised
    }

    /// Keeps a message until the last barrier raised is passed.
    fn hold(&mut self, msg: Waiting) {
        self.waiting.push_back((self.raised, msg));
    }

    /// The data plane passed barrier `n`: what waited for it (or an earlier
    /// one), in the order told.
    fn pass(&mut self, n: u64) -> Vec<Waiting> {
        self.passed.send_if_modified(|p| {
            let moved = n > *p;
            *p = (*p).max(n);
            moved
        });
        let passed = *self.passed.borrow();
        let mut out = Vec::new();
        while self.waiting.front().is_some_and(|w| w.0 <= passed) {
            if let Some((_, msg)) = self.waiting.pop_front() {
                out.push(msg);
            }
        }
        out
    }

    /// Something to await, with the state unlocked, before sending a
    /// message straight on a connection (not through its queue).
    fn wait(&self) -> Option<DataPlaneWait> {
        self.waits().then(|| DataPlaneWait {
            barrier: self.raised,
            passed: self.passed.subscribe(),
        })
    }
}

/// A message held for a spoke's control queue.
#[derive(Debug)]
struct Waiting {
    spoke: SpokeId,
    tx: mpsc::Sender<HubMessage>,
    msg: HubMessage,
    /// A key message: the key schedule sends it again until it is
    /// answered, so it never waits in the backlog.
    key: bool,
}

/// The data plane taking the link changes made so far.
pub(crate) struct DataPlaneWait {
    barrier: u64,
    passed: watch::Receiver<u64>,
}

impl DataPlaneWait {
    /// How long a connection waits for the data plane before it sends
    /// anyway: the spoke then retries its handshake, which costs seconds,
    /// not the link.
    const AT_MOST: Duration = Duration::from_secs(1);

    /// Resolves when the data plane has taken the changes, or after
    /// [`Self::AT_MOST`] (logged).
    pub(crate) async fn done(mut self) {
        let barrier = self.barrier;
        let taken =
            tokio::time::timeout(Self::AT_MOST, self.passed.wait_for(|p| *p >= barrier)).await;
        match taken {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => tracing::debug!("the hub state is gone: the hub is stopping"),
            Err(_) => tracing::warn!("the data plane took over a second to take a link's keys"),
        }
    }
}

/// Queues a key message; false when the queue is full or closed.
/// Unanswered key messages go out again every resend interval (and at the
/// next attach): nothing is lost, only later.
fn try_send_key(spoke: SpokeId, tx: &mpsc::Sender<HubMessage>, msg: HubMessage) -> bool {
    match tx.try_send(msg) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(spoke, error = %e, "control queue full or closed; the key message goes again later");
            false
        }
    }
}

/// Whether `new` makes `old` pointless to send.
fn same_fact(old: &HubMessage, new: &HubMessage) -> bool {
    match (old, new) {
        (HubMessage::Session(_), HubMessage::Session(_)) => true,
        (HubMessage::DeviceWaiting(a), HubMessage::DeviceWaiting(b)) => a.name == b.name,
        (HubMessage::ApprovalsWaiting(a), HubMessage::ApprovalsWaiting(b)) => a.user == b.user,
        // A group's multicast as it is now replaces what it was.
        (
            HubMessage::Group(tasuki_core::control::HubGroup::Multicast(a)),
            HubMessage::Group(tasuki_core::control::HubGroup::Multicast(b)),
        ) => a.group == b.group,
        _ => old == new,
    }
}

impl HubState {
    /// Queues a message on spoke `id`'s control connection, if it has one
    /// (see [`Backlog::offer`]), once the data plane has taken the link
    /// changes made before (see [`Held`]).
    pub(crate) fn tell(&mut self, id: SpokeId, msg: HubMessage) {
        let Some(tx) = self.sessions.get(&id) else {
            return;
        };
        if self.held.waits() {
            self.held.hold(Waiting {
                spoke: id,
                tx: tx.clone(),
                msg,
                key: false,
            });
        } else {
            self.backlog.offer(id, tx, msg);
        }
    }

    /// Queues a link's key messages on its session `tx`, once the data
    /// plane has taken the link changes made before (see [`Held`]). What
    /// does not fit the queue is not kept: the key schedule sends
    /// unanswered key messages again.
    pub(super) fn send_keys(
        &mut self,
        id: SpokeId,
        tx: &mpsc::Sender<HubMessage>,
        messages: Vec<HubMessage>,
    ) {
        for msg in messages {
            if self.held.waits() {
                self.held.hold(Waiting {
                    spoke: id,
                    tx: tx.clone(),
                    msg,
                    key: true,
                });
            } else if !try_send_key(id, tx, msg) {
                break;
            }
        }
    }

    /// The data plane passed barrier `n`: what waited for it goes on.
    pub(crate) fn synced(&mut self, n: u64) {
        for w in self.held.pass(n) {
            if w.key {
                try_send_key(w.spoke, &w.tx, w.msg);
            } else {
                self.backlog.offer(w.spoke, &w.tx, w.msg);
            }
        }
    }

    /// What to await before sending straight on a connection, if the data
    /// plane has link changes still to take.
    pub(crate) fn dataplane_wait(&self) -> Option<DataPlaneWait> {
        self.held.wait()
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

    fn waiting_for(spoke: SpokeId, tx: &mpsc::Sender<HubMessage>, msg: HubMessage) -> Waiting {
        Waiting {
            spoke,
            tx: tx.clone(),
            msg,
            key: false,
        }
    }

    #[test]
    fn messages_wait_for_the_data_plane_in_the_order_told() {
        let mut h = Held::default();
        let (tx, mut rx) = mpsc::channel(8);
        assert!(
            !h.waits() && h.wait().is_none(),
            "nothing raised, nothing waits"
        );
        let first = h.barrier();
        h.hold(waiting_for(1, &tx, facts(false)));
        let second = h.barrier();
        h.hold(waiting_for(1, &tx, facts(true)));
        assert!(h.waits());
        // The data plane passed the first barrier: only what waited for it goes.
        let out = h.pass(first);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].msg, facts(false));
        assert!(h.waits(), "the second barrier is still ahead");
        // An answer that comes late (an older barrier) moves nothing back.
        assert!(h.pass(first).is_empty());
        let out = h.pass(second);
        assert_eq!(
            out.iter().map(|o| o.msg.clone()).collect::<Vec<_>>(),
            vec![facts(true)]
        );
        assert!(!h.waits());
        // The held queue kept the connection's channel open until released.
        drop(tx);
        for w in out {
            w.tx.try_send(w.msg).unwrap();
        }
        assert_eq!(rx.try_recv().unwrap(), facts(true));
    }

    #[tokio::test]
    async fn a_connection_waits_for_the_barrier_it_saw() {
        let mut h = Held::default();
        let n = h.barrier();
        let wait = h.wait().expect("a barrier is ahead");
        let waiter = tokio::spawn(wait.done());
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        h.pass(n);
        waiter.await.unwrap();
    }
}
