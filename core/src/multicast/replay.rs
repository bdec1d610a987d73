//! The two small counters group multicast keeps: which counters of a
//! sender were seen (replays and copies that came both ways are refused),
//! and how fast a sender may send (fan-out is bounded).

/// Counters of one sender under one epoch that were accepted: the highest
/// and the 128 below it. Anything older, or seen, is refused.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReplayWindow {
    top: u64,
    seen: u128,
    started: bool,
}

impl ReplayWindow {
    /// Marks `counter` as seen; `false` when it was seen already or is
    /// too old to tell.
    pub fn accept(&mut self, counter: u64) -> bool {
        if !self.started {
            *self = Self {
                top: counter,
                seen: 1,
                started: true,
            };
            return true;
        }
        if counter > self.top {
            let shift = counter - self.top;
            self.seen = if shift >= 128 { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.top = counter;
            return true;
        }
        let back = self.top - counter;
        if back >= 128 {
            return false;
        }
        let bit = 1u128 << back;
        if self.seen & bit != 0 {
            return false;
        }
        self.seen |= bit;
        true
    }
}

/// A token bucket of packets: `rate` per second, at most a fifth of a
/// second's worth (and at least 16) saved up.
#[derive(Clone, Copy, Debug)]
pub struct RateBucket {
    /// Tokens in thousandths of a packet.
    milli: u64,
    at_ms: u64,
}

impl RateBucket {
    /// A full bucket at `now_ms`.
    pub fn new(rate: u32, now_ms: u64) -> Self {
        Self {
            milli: burst(rate),
            at_ms: now_ms,
        }
    }

    /// Takes one packet's token at `now_ms`; `false` when the sender is
    /// over `rate`.
    pub fn take(&mut self, rate: u32, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.at_ms);
        self.at_ms = self.at_ms.max(now_ms);
        self.milli = self
            .milli
            .saturating_add(elapsed.saturating_mul(u64::from(rate)))
            .min(burst(rate));
        if self.milli < 1000 {
            return false;
        }
        self.milli -= 1000;
        true
    }
}

fn burst(rate: u32) -> u64 {
    (u64::from(rate) / 5).max(16) * 1000
}
