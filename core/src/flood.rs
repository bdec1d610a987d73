//! A per-source-address budget for WireGuard handshake initiations.
//!
//! WireGuard's cookie reply makes a flooder prove it owns its source
//! address, but every initiation still costs the hub a MAC check and a
//! reply, and every junk datagram takes room in the socket's queue that a
//! spoke's packet needed. Like the Linux implementation's rate limiter,
//! [`HandshakeGate`] lets each source address start a limited number of
//! handshakes per second (with a burst) and drops the rest before any
//! cryptography. Time is passed in; memory is bounded.

use std::collections::HashMap;
use std::net::IpAddr;

/// Handshake initiations per second one address may send.
pub const PER_SECOND: u32 = 20;
/// Initiations one address may send at once after a quiet period.
pub const BURST: u32 = 40;
/// Addresses tracked before the table starts over (a spoofed-address flood
/// must not grow it without bound).
pub const MAX_ADDRESSES: usize = 65_536;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Tokens, in thousandths of an initiation.
    milli_tokens: u64,
    last_ms: u64,
}

/// Decides whether an initiation from an address may be looked at.
#[derive(Debug)]
pub struct HandshakeGate {
    buckets: HashMap<IpAddr, Bucket>,
    per_second: u32,
    burst: u32,
}

impl Default for HandshakeGate {
    fn default() -> Self {
        Self::new(PER_SECOND, BURST)
    }
}

impl HandshakeGate {
    /// A gate allowing `per_second` initiations per address, `burst` at once.
    pub fn new(per_second: u32, burst: u32) -> Self {
        Self {
            buckets: HashMap::new(),
            per_second,
            burst: burst.max(1),
        }
    }

    /// Whether an initiation from `ip` at `now_ms` (any monotonic clock, in
    /// milliseconds) may be processed; takes one token if so.
    pub fn allow(&mut self, ip: IpAddr, now_ms: u64) -> bool {
        let full = u64::from(self.burst) * 1000;
        if self.buckets.len() >= MAX_ADDRESSES && !self.buckets.contains_key(&ip) {
            self.prune(now_ms);
            if self.buckets.len() >= MAX_ADDRESSES {
                self.buckets.clear();
            }
        }
        let bucket = self.buckets.entry(ip).or_insert(Bucket {
            milli_tokens: full,
            last_ms: now_ms,
        });
        let elapsed = now_ms.saturating_sub(bucket.last_ms);
        bucket.milli_tokens =
            (bucket.milli_tokens + elapsed * u64::from(self.per_second)).min(full);
        bucket.last_ms = bucket.last_ms.max(now_ms);
        if bucket.milli_tokens >= 1000 {
            bucket.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }

    /// Forgets addresses whose bucket has refilled (they are as good as new).
    pub fn prune(&mut self, now_ms: u64) {
        let full = u64::from(self.burst) * 1000;
        let per_second = u64::from(self.per_second);
        self.buckets
            .retain(|_, b| b.milli_tokens + now_ms.saturating_sub(b.last_ms) * per_second < full);
    }

    /// Addresses currently tracked.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// True when no address is tracked.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn a_burst_then_the_rate() {
        let mut g = HandshakeGate::new(10, 5);
        let allowed = (0..100).filter(|_| g.allow(ip(1), 0)).count();
        assert_eq!(allowed, 5, "the burst at once");
        assert!(!g.allow(ip(1), 50), "half a token is not enough");
        assert!(g.allow(ip(1), 100), "one token per 100 ms at 10/s");
        assert!(!g.allow(ip(1), 100));
        let over_a_second = (1..=1000u64).filter(|ms| g.allow(ip(1), 100 + ms)).count();
        assert_eq!(over_a_second, 10);
    }

    #[test]
    fn addresses_have_their_own_budget() {
        let mut g = HandshakeGate::new(1, 2);
        assert!(g.allow(ip(1), 0));
        assert!(g.allow(ip(1), 0));
        assert!(!g.allow(ip(1), 0));
        assert!(g.allow(ip(2), 0), "a flood from one address spares another");
    }

    #[test]
    fn a_quiet_address_is_forgotten_and_the_table_is_bounded() {
        let mut g = HandshakeGate::new(20, 40);
        g.allow(ip(1), 0);
        g.prune(10);
        assert_eq!(g.len(), 1, "still refilling");
        g.prune(10_000);
        assert!(g.is_empty());
        for i in 0..(MAX_ADDRESSES as u32 + 10) {
            let addr = IpAddr::from(i.to_be_bytes());
            assert!(g.allow(addr, 0), "a new address always gets its burst");
        }
        assert!(g.len() <= MAX_ADDRESSES);
    }

    #[test]
    fn a_clock_going_backwards_does_not_mint_tokens() {
        let mut g = HandshakeGate::new(10, 1);
        assert!(g.allow(ip(1), 1_000));
        assert!(!g.allow(ip(1), 0));
        assert!(!g.allow(ip(1), 500));
    }
}
