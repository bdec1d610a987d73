//! The spoke's side of rotation: which epochs it holds, which one carries
//! traffic, when that one ends (it counts its own use), whether it may move
//! on by itself (batch mode), and when a hard limit stops its traffic.
//!
//! Plain state; the spoke's data plane calls [`SpokeKeys::poll`] on its timer
//! tick with the time and its link counters, and acts on the answer. Times
//! are seconds on a clock that only moves forward (the spoke uses the boot
//! clock, which counts time asleep): only ages matter here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::control::Lifetime;
use crate::erasure::Erasure;
use crate::keys::KeyEpoch;

/// An epoch as the spoke stores it: the key and how long it lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldEpoch {
    /// The epoch.
    pub epoch: KeyEpoch,
    /// Its lifetime, from the delivery.
    pub lifetime: Lifetime,
}

/// What the data plane should do now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Poll {
    /// Start a session under this epoch.
    pub switch_to: Option<u64>,
    /// The current epoch is over, a hard limit applies and no next epoch is
    /// held: carry no traffic until an update completes.
    pub blocked: bool,
    /// The current epoch is over and the spoke may not move on by itself:
    /// send the hub an update request (once per epoch).
    pub request_update: bool,
}

/// The spoke's epochs.
#[derive(Clone, Debug, Default)]
pub struct SpokeKeys {
    held: BTreeMap<u64, HeldEpoch>,
    current: u64,
    since: u64,
    base_packets: u64,
    base_bytes: u64,
    switching_to: Option<u64>,
    requested_for: u64,
    erasure: Erasure,
}

/// Seconds an ended epoch stays after a restart (its lifetime's slack is
/// used after a takeover).
const RESTART_GRACE_SECS: u64 = 10;

impl SpokeKeys {
    /// Restores the state after a restart; `current` is the stored epoch that
    /// last carried traffic (0 if none).
    pub fn new(held: Vec<HeldEpoch>, current: u64, now: u64) -> Self {
        Self {
            held: held.into_iter().map(|h| (h.epoch.number, h)).collect(),
            current,
            since: now,
            // Epochs older than the current one (left by a restart) end
            // after a grace period too.
            erasure: Erasure::after_restart(current, now.saturating_add(RESTART_GRACE_SECS)),
            ..Self::default()
        }
    }

    /// Adds a delivered epoch.
    pub fn hold(&mut self, h: HeldEpoch) {
        self.held.insert(h.epoch.number, h);
    }

    /// A held epoch.
    pub fn get(&self, k: u64) -> Option<&HeldEpoch> {
        self.held.get(&k)
    }

    /// Held epoch numbers, oldest first.
    pub fn held(&self) -> Vec<u64> {
        self.held.keys().copied().collect()
    }

    /// The epoch carrying traffic (0: none yet).
    pub fn current(&self) -> u64 {
        self.current
    }

    /// The hub asked to switch to `k` (update notification).
    pub fn request_switch(&mut self, k: u64) -> bool {
        if k > self.current && self.held.contains_key(&k) {
            self.switching_to = Some(k);
            true
        } else {
            false
        }
    }

    /// A session under `k` was confirmed; returns true if `k` became current.
    /// `packets` and `bytes` are the link's cumulative counters.
    pub fn on_confirmed(&mut self, k: u64, now: u64, packets: u64, bytes: u64) -> bool {
        if k <= self.current || !self.held.contains_key(&k) {
            return false;
        }
        let grace = self
            .held
            .get(&k)
            .map_or(RESTART_GRACE_SECS, |h| h.lifetime.slack_secs.max(1));
        self.erasure.schedule(k, now.saturating_add(grace));
        self.current = k;
        self.since = now;
        self.base_packets = packets;
        self.base_bytes = bytes;
        if self.switching_to.is_some_and(|s| s <= k) {
            self.switching_to = None;
        }
        true
    }

    /// The epochs whose grace has passed at `now`, forgotten here: erase
    /// everything below the returned epoch (tunnels, then the store).
    pub fn take_erasable(&mut self, now: u64) -> Option<u64> {
        let below = self.erasure.due(now, self.current);
        // Nothing held below it: nothing to erase.
        self.held.range(..below).next()?;
        self.erase_below(below);
        Some(below)
    }

    /// Forgets epochs older than `below`.
    pub fn erase_below(&mut self, below: u64) -> Vec<u64> {
        let gone: Vec<u64> = self.held.range(..below).map(|(k, _)| *k).collect();
        for k in &gone {
            self.held.remove(k);
        }
        gone
    }

    /// Decides, from the time and the link counters, whether to switch or to stop.
    pub fn poll(&mut self, now: u64, packets: u64, bytes: u64) -> Poll {
        let next = self.held.range(self.current + 1..).next().map(|(k, _)| *k);
        let Some(cur) = self.held.get(&self.current) else {
            // Nothing confirmed yet: use the newest held epoch.
            let newest = self.held.keys().next_back().copied();
            return Poll {
                switch_to: self.switching_to.or(newest),
                ..Poll::default()
            };
        };
        let life = &cur.lifetime;
        let age = now.saturating_sub(self.since);
        let used_p = packets.saturating_sub(self.base_packets);
        let used_b = bytes.saturating_sub(self.base_bytes);
        let ended = life.secs.is_some_and(|s| age >= s)
            || life.packets.is_some_and(|p| used_p >= p)
            || life.bytes.is_some_and(|b| used_b >= b);
        let over = life
            .secs
            .is_some_and(|s| age >= s.saturating_add(life.slack_secs))
            || life
                .packets
                .is_some_and(|p| used_p >= p.saturating_add(p / 10))
            || life
                .bytes
                .is_some_and(|b| used_b >= b.saturating_add(b / 10));
        if ended && life.self_switch && self.switching_to.is_none() {
            self.switching_to = next;
        }
        let request_update = ended
            && !life.self_switch
            && self.switching_to.is_none()
            && self.requested_for != self.current;
        if request_update {
            self.requested_for = self.current;
        }
        Poll {
            switch_to: self.switching_to,
            blocked: life.hard && over && next.is_none(),
            request_update,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    fn held(n: u64, life: Lifetime, rng: &mut StdRng) -> HeldEpoch {
        HeldEpoch {
            epoch: KeyEpoch::issue(n, 0, rng),
            lifetime: life,
        }
    }

    fn batch_life() -> Lifetime {
        Lifetime {
            secs: Some(10),
            self_switch: true,
            hard: true,
            slack_secs: 5,
            ..Lifetime::default()
        }
    }

    /// Ended epochs go the lifetime's slack after their successor took
    /// over; those a restart left go after a grace too.
    #[test]
    fn ended_epochs_are_erased_after_their_grace() {
        let mut rng = StdRng::seed_from_u64(44);
        let first = vec![
            held(1, batch_life(), &mut rng),
            held(2, batch_life(), &mut rng),
        ];
        let mut k = SpokeKeys::new(first, 2, 100);
        assert_eq!(k.take_erasable(100 + RESTART_GRACE_SECS - 1), None);
        assert_eq!(k.take_erasable(100 + RESTART_GRACE_SECS), Some(2));
        assert_eq!(k.held(), vec![2]);
        k.hold(held(3, batch_life(), &mut rng));
        assert!(k.on_confirmed(3, 200, 0, 0));
        assert_eq!(k.take_erasable(204), None, "slack 5 s");
        assert_eq!(k.take_erasable(205), Some(3));
        assert_eq!(k.held(), vec![3]);
        assert_eq!(k.take_erasable(1_000), None, "nothing left to erase");
    }

    #[test]
    fn batch_walks_on_by_itself_then_blocks_when_used_up() {
        let mut rng = StdRng::seed_from_u64(41);
        let mut k = SpokeKeys::new(vec![held(1, batch_life(), &mut rng)], 0, 0);
        assert_eq!(
            k.poll(0, 0, 0).switch_to,
            Some(1),
            "first epoch: start a session"
        );
        assert!(k.on_confirmed(1, 0, 0, 0));
        k.hold(held(2, batch_life(), &mut rng));
        k.hold(held(3, batch_life(), &mut rng));
        assert_eq!(k.poll(9, 0, 0), Poll::default());
        assert_eq!(k.poll(10, 0, 0).switch_to, Some(2));
        assert!(k.on_confirmed(2, 11, 0, 0));
        assert_eq!(k.erase_below(2), vec![1]);
        assert_eq!(k.poll(20, 0, 0), Poll::default());
        assert_eq!(k.poll(21, 0, 0).switch_to, Some(3));
        assert!(k.on_confirmed(3, 21, 0, 0));
        // Batch used up: past the lifetime only a soft wait...
        assert_eq!(k.poll(31, 0, 0), Poll::default());
        // ...then, past the slack, a hard stop.
        assert_eq!(
            k.poll(36, 0, 0),
            Poll {
                blocked: true,
                ..Poll::default()
            }
        );
        // A new epoch arrives: move on, no longer blocked.
        k.hold(held(4, batch_life(), &mut rng));
        let p = k.poll(37, 0, 0);
        assert_eq!(
            p,
            Poll {
                switch_to: Some(4),
                ..Poll::default()
            }
        );
        assert!(k.on_confirmed(4, 37, 0, 0));
        assert_eq!(k.poll(38, 0, 0), Poll::default());
    }

    #[test]
    fn hub_driven_epochs_wait_for_the_notification() {
        let mut rng = StdRng::seed_from_u64(42);
        let life = Lifetime {
            secs: Some(10),
            ..Lifetime::default()
        };
        let mut k = SpokeKeys::new(vec![held(1, life.clone(), &mut rng)], 1, 0);
        k.hold(held(2, life, &mut rng));
        assert_eq!(k.poll(5, 0, 0), Poll::default());
        let over = k.poll(100, 0, 0);
        assert!(
            over.request_update,
            "the spoke saw the end: it asks the hub"
        );
        assert_eq!(over.switch_to, None, "but does not move on by itself");
        assert!(!over.blocked, "no hard limit");
        assert_eq!(k.poll(101, 0, 0), Poll::default(), "asked once");
        assert!(!k.request_switch(7));
        assert!(k.request_switch(2));
        assert_eq!(k.poll(100, 0, 0).switch_to, Some(2));
        assert!(!k.on_confirmed(1, 100, 0, 0));
        assert!(k.on_confirmed(2, 100, 0, 0));
        assert_eq!(k.poll(101, 0, 0), Poll::default());
    }

    #[test]
    fn packet_budget_counts_from_the_switch() {
        let mut rng = StdRng::seed_from_u64(43);
        let life = Lifetime {
            packets: Some(100),
            self_switch: true,
            hard: true,
            ..Lifetime::default()
        };
        let mut k = SpokeKeys::new(vec![held(1, life.clone(), &mut rng)], 1, 0);
        assert_eq!(k.poll(0, 99, 0), Poll::default());
        assert_eq!(k.poll(0, 105, 0), Poll::default(), "within 10 % slack");
        assert!(k.poll(0, 110, 0).blocked);
        k.hold(held(2, life, &mut rng));
        assert_eq!(k.poll(0, 110, 0).switch_to, Some(2));
        assert!(k.on_confirmed(2, 0, 110, 0));
        assert_eq!(k.poll(0, 150, 0), Poll::default());
    }
}
