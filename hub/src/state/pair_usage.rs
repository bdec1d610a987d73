//! What spokes report of their pairs' direct traffic, which the hub cannot
//! see: the path each holder takes, its counters (for `pair list` and the
//! metrics), and use (a pair nobody uses ends).

use tasuki_core::control::PairUsage;
use tasuki_core::pair::PairId;
use tasuki_core::rotation::Usage;
use tasuki_core::routing::SpokeId;

use super::{HubState, Result};

/// Direct traffic over all pairs since the hub started, from the holders'
/// reports (a holder's counters that went back, after its restart, count
/// from zero again).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct DirectTotals {
    /// Inner packets sent direct.
    pub(crate) tx_packets: u64,
    /// Inner packets received direct.
    pub(crate) rx_packets: u64,
    /// Datagram bytes sent direct.
    pub(crate) tx_bytes: u64,
    /// Datagram bytes received direct.
    pub(crate) rx_bytes: u64,
    /// Times a direct path took over.
    pub(crate) upgrades: u64,
    /// Times one stopped answering and the relay took over again.
    pub(crate) fallbacks: u64,
    /// Rounds of probes nobody answered.
    pub(crate) punch_failures: u64,
}

impl DirectTotals {
    /// Adds what `new` counted since `old` (all of it when `old` is none
    /// or its counters went back).
    fn add(&mut self, old: Option<&PairUsage>, new: &PairUsage) {
        let delta = |now: u64, before: Option<u64>| match before {
            Some(b) if b <= now => now - b,
            _ => now,
        };
        self.tx_packets += delta(new.tx_packets, old.map(|o| o.tx_packets));
        self.rx_packets += delta(new.rx_packets, old.map(|o| o.rx_packets));
        self.tx_bytes += delta(new.tx_bytes, old.map(|o| o.tx_bytes));
        self.rx_bytes += delta(new.rx_bytes, old.map(|o| o.rx_bytes));
        self.upgrades += delta(new.upgrades, old.map(|o| o.upgrades));
        self.fallbacks += delta(new.fallbacks, old.map(|o| o.fallbacks));
        self.punch_failures += delta(new.punch_failures, old.map(|o| o.punch_failures));
    }
}

/// What a holder sent and began since its report `old` (all of it when
/// there is none, or its counters went back after a restart).
fn since(old: Option<&PairUsage>, new: &PairUsage) -> Usage {
    match old {
        Some(o)
            if o.tx_packets <= new.tx_packets
                && o.tx_bytes <= new.tx_bytes
                && o.handshakes <= new.handshakes =>
        {
            Usage {
                packets: new.tx_packets - o.tx_packets,
                bytes: new.tx_bytes - o.tx_bytes,
                handshakes: new.handshakes - o.handshakes,
            }
        }
        _ => Usage {
            packets: new.tx_packets,
            bytes: new.tx_bytes,
            handshakes: new.handshakes,
        },
    }
}

impl HubState {
    /// A holder's report of its pairs: kept for `pair list`, added to the
    /// totals, and an active pair counts as used now.
    pub(super) fn on_pair_usage(
        &mut self,
        from: SpokeId,
        usage: Vec<PairUsage>,
        now: u64,
    ) -> Result<()> {
        for u in usage {
            let pair = u.pair;
            match self.direct.book.get_mut(pair).filter(|_| pair.has(from)) {
                Some(s) => {
                    if u.active {
                        s.on_used(now);
                    }
                    let old = self.direct.usage.get(&(pair, from));
                    self.direct.totals.add(old, &u);
                    // Each packet counted once, by its sender, and each
                    // handshake by its initiator: the pair's use both ways,
                    // for its packet, byte and handshake budgets.
                    let total = self.direct.pair_use.entry(pair).or_default();
                    let d = since(old, &u);
                    total.packets += d.packets;
                    total.bytes += d.bytes;
                    total.handshakes += d.handshakes;
                    self.direct.usage.insert((pair, from), u);
                }
                None => self.unknown_pair(from, pair),
            }
        }
        Ok(())
    }

    /// What `holder` last reported of `pair`.
    pub(super) fn pair_usage_of(&self, pair: PairId, holder: SpokeId) -> Option<&PairUsage> {
        self.direct.usage.get(&(pair, holder))
    }

    /// A pair's direct traffic both ways since the hub started, as its
    /// holders reported it (for its packet and byte triggers).
    pub(super) fn pair_use(&self, pair: PairId) -> Usage {
        self.direct.pair_use.get(&pair).copied().unwrap_or_default()
    }

    /// A pair ended: its reports go.
    pub(super) fn forget_pair_usage(&mut self, pair: PairId) {
        for h in pair.holders() {
            self.direct.usage.remove(&(pair, h));
        }
        self.direct.pair_use.remove(&pair);
        self.direct.rules_sent.remove(&pair);
    }

    /// Direct traffic over all pairs, and how many go direct now.
    pub(crate) fn direct_totals(&self) -> (DirectTotals, usize) {
        let direct = self
            .direct
            .usage
            .values()
            .filter(|u| u.direct.is_some())
            .count();
        (self.direct.totals, direct)
    }
}
