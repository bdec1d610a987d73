//! When ended key epochs are erased, for the hub's schedules and the
//! spoke's keys alike: a grace period after the next epoch took over (for
//! packets still in flight), and at once for epochs so old that keeping
//! them could make two held epochs share a WireGuard index.

use std::collections::VecDeque;

/// Ended epochs kept through their grace period at most; older ones are
/// erased at once. With a batch of up to 12 epochs ahead, the current one and
/// these, a link never holds two epochs 16 apart, which would share a
/// WireGuard index (see `link`).
pub const MAX_ENDED_HELD: u64 = 3;

/// Pending erasures of one link, oldest first.
#[derive(Clone, Debug, Default)]
pub struct Erasure {
    /// (erase the epochs below this one, at this time).
    queue: VecDeque<(u64, u64)>,
}

impl Erasure {
    /// After a restart: what is older than `current` goes at `at` (epochs a
    /// crash left behind).
    pub fn after_restart(current: u64, at: u64) -> Self {
        let mut e = Self::default();
        if current > 0 {
            e.schedule(current, at);
        }
        e
    }

    /// Epoch `k` took over: the ones below it go at `at`. Every takeover
    /// queues its own, so epochs still end a grace period after their
    /// successor took over when rotations come faster than the grace.
    pub fn schedule(&mut self, k: u64, at: u64) {
        self.queue.push_back((k, at));
    }

    /// The epoch below which everything is to be erased at `now`, with
    /// `current` carrying traffic (0: nothing to erase).
    pub fn due(&mut self, now: u64, current: u64) -> u64 {
        // Rotations faster than the grace: the oldest ended epochs go now.
        let mut below = current.saturating_sub(MAX_ENDED_HELD);
        while let Some(&(b, at)) = self.queue.front() {
            if now < at {
                break;
            }
            below = below.max(b);
            self.queue.pop_front();
        }
        below
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ended_epochs_go_after_their_grace_or_when_too_many() {
        let mut e = Erasure::after_restart(2, 0);
        assert_eq!(e.due(0, 2), 2, "a restart's leftovers go at once");
        e.schedule(3, 110);
        assert_eq!(e.due(109, 3), 0);
        assert_eq!(e.due(110, 3), 3);
        // Faster than the grace: never more than MAX_ENDED_HELD ended ones.
        for k in 4..=10 {
            e.schedule(k, 1_000);
        }
        assert_eq!(e.due(200, 10), 10 - MAX_ENDED_HELD);
        assert_eq!(e.due(1_000, 10), 10);
        assert_eq!(Erasure::after_restart(0, 0).due(5, 0), 0);
    }
}
