//! Direct mode's messages at the hub (claim 10): a spoke asks for a pair
//! with a peer (refused with a sentence, or given one, stored first), and
//! reports the receipt, the switch and the use of its pair epochs; pairs
//! end when a holder goes, logs out, or direct mode stops applying to them.
//! Every change of a pair is stored (flushed) before anyone hears of it.

use std::net::Ipv4Addr;
use tasuki_core::access::PairRules;

use tasuki_core::audit::{AuditKind, AuditRecord};
use tasuki_core::control::{DirectFacts, HubMessage, HubPair, SpokePair};
use tasuki_core::pair::PairId;
use tasuki_core::pair_book::Asked;
use tasuki_core::pair_rules::{check_pair, DirectRefusal, PairSide};
use tasuki_core::pair_schedule::PairSchedule;
use tasuki_core::registry::SpokeState;
use tasuki_core::routing::SpokeId;

use super::*;

impl HubState {
    /// A direct-mode message from spoke `from`. A store failure is
    /// returned after memory was put back: the spoke's report comes again
    /// (the hub re-sends what it waits for), a request can be made again.
    pub(crate) fn on_pair_message(
        &mut self,
        from: SpokeId,
        msg: SpokePair,
        now: u64,
    ) -> Result<()> {
        match msg {
            SpokePair::Request { peer } => self.pair_request(from, peer, now),
            SpokePair::Receipt { pair, epoch } => {
                self.pair_report(from, pair, now, |s| s.on_receipt(from, epoch))
            }
            SpokePair::Switched { pair, epoch } => {
                let grace = self.policy.grace_secs;
                self.pair_report(from, pair, now, |s| s.on_switched(from, epoch, now, grace))
            }
            SpokePair::Facts(facts) => self.pair_facts(from, facts, now),
            SpokePair::Used(pairs) => {
                for pair in pairs {
                    match self.direct.book.get_mut(pair).filter(|_| pair.has(from)) {
                        Some(s) => s.on_used(now),
                        None => self.unknown_pair(from, pair),
                    }
                }
                Ok(())
            }
            SpokePair::Usage(usage) => self.on_pair_usage(from, usage, now),
        }
    }

    /// What the pair rules need to know of one spoke.
    fn pair_side(&self, id: SpokeId) -> Option<PairSide> {
        let s = self.registry.spoke(id)?;
        Some(PairSide {
            name: s.name.clone(),
            active: s.state == SpokeState::Active,
            wireguard: s.is_wireguard(),
            direct: self.direct_for(id),
            carrying: self.carries(id),
        })
    }

    /// The spoke at tunnel address `addr`: a live one before a dead one
    /// that had the address before it.
    fn spoke_at(&self, addr: Ipv4Addr) -> Option<SpokeId> {
        let at: Vec<_> = self
            .registry
            .spokes()
            .filter(|s| s.tunnel_addr == addr)
            .collect();
        at.iter()
            .find(|s| !s.state.is_dead())
            .or(at.first())
            .map(|s| s.id)
    }

    /// Spoke `from` asks for its pair with the spoke at `peer`: refused
    /// with a reason, or answered with an offer (a new pair's first epoch
    /// is stored before it goes out).
    fn pair_request(&mut self, from: SpokeId, peer: Ipv4Addr, now: u64) -> Result<()> {
        if !self.direct.within_budget(from, now) {
            tracing::debug!(spoke = %self.spoke_name(from), %peer, "pair request over the spoke's budget: dropped");
            return Ok(());
        }
        let id = self.spoke_at(peer);
        let checked = match (self.pair_side(from), id) {
            (Some(asker), id) => {
                let other = id.and_then(|id| self.pair_side(id));
                let denied = id
                    .and_then(|id| PairId::new(from, id))
                    .is_some_and(|pair| !self.pair_rules(pair).allows_any());
                check_pair(&asker, other.as_ref(), id == Some(from), peer, denied)
            }
            (None, _) => Err(DirectRefusal::NotActive(self.spoke_name(from))),
        };
        let Some(peer_id) = id.filter(|_| checked.is_ok()) else {
            let reason = checked.err().unwrap_or(DirectRefusal::NoSuchPeer(peer));
            self.refuse_pair(from, peer, &reason.to_string());
            return Ok(());
        };
        if let Some(pair) = PairId::new(from, peer_id) {
            if self.direct.unerased.contains_key(&pair) && self.erase_unerased_pairs().is_err() {
                // The last pair of these two is not erased yet: a new one
                // would share its names.
                self.refuse_pair(
                    from,
                    peer,
                    "the hub cannot store pair keys now; traffic goes through the hub",
                );
                return Ok(());
            }
        }
        let via = self.shared_keyed_group(from, peer_id);
        let asked = self.direct.book.ask_via(
            from,
            peer_id,
            true,
            via.as_deref(),
            now,
            &mut rand_core::OsRng,
        );
        match asked {
            Err(limit) => {
                self.refuse_pair(from, peer, &DirectRefusal::Limit(limit).to_string());
                Ok(())
            }
            Ok(Asked::New(first)) => self.pair_started(from, peer, peer_id, &first, now),
            Ok(Asked::NewVia) => self.pair_via_started(from, peer, peer_id, now),
            Ok(Asked::Existing) => {
                if let Some(pair) = PairId::new(from, peer_id) {
                    self.tick_pair(pair, now)?;
                    self.reoffer(pair, from)?;
                }
                Ok(())
            }
        }
    }

    /// A new pair: its first epoch stored, audited, then delivered at once.
    fn pair_started(
        &mut self,
        from: SpokeId,
        peer: Ipv4Addr,
        peer_id: SpokeId,
        first: &tasuki_core::keys::KeyEpoch,
        now: u64,
    ) -> Result<()> {
        let Some(pair) = PairId::new(from, peer_id) else {
            return Ok(());
        };
        let stored = match self.direct.book.get(pair) {
            Some(s) => self.commit_pair_issue(s, Some(first)),
            None => Ok(()),
        };
        if let Err(e) = stored {
            self.direct.book.end(pair);
            self.refuse_pair(
                from,
                peer,
                "the hub cannot store pair keys now; traffic goes through the hub",
            );
            return Err(e);
        }
        let names = pair.holders().map(|h| self.spoke_name(h));
        tracing::info!(%pair, low = %names[0], high = %names[1], "pair issued");
        self.audit(
            AuditRecord::new(now, AuditKind::PairIssue)
                .spoke(self.spoke_name(from))
                .detail(format!(
                    "pair {pair} ({} and {}) epoch 1",
                    names[0], names[1]
                )),
        );
        self.tick_pair(pair, now)
    }

    /// A new pair keyed by a group both holders share: its meta stored,
    /// audited, then both told to derive its keys.
    fn pair_via_started(
        &mut self,
        from: SpokeId,
        peer: Ipv4Addr,
        peer_id: SpokeId,
        now: u64,
    ) -> Result<()> {
        let Some(pair) = PairId::new(from, peer_id) else {
            return Ok(());
        };
        let (stored, group) = match self.direct.book.get(pair) {
            Some(s) => (
                self.commit_pair_issue(s, None),
                s.via().unwrap_or_default().to_owned(),
            ),
            None => return Ok(()),
        };
        if let Err(e) = stored {
            self.direct.book.end(pair);
            self.refuse_pair(
                from,
                peer,
                "the hub cannot store pairs now; traffic goes through the hub",
            );
            return Err(e);
        }
        let names = pair.holders().map(|h| self.spoke_name(h));
        tracing::info!(%pair, low = %names[0], high = %names[1], %group, "pair keyed by its group");
        self.audit(
            AuditRecord::new(now, AuditKind::PairIssue)
                .spoke(self.spoke_name(from))
                .detail(format!(
                    "pair {pair} ({} and {}) keyed by group {group}",
                    names[0], names[1]
                )),
        );
        for h in pair.holders() {
            self.send_keyed(pair, h);
        }
        Ok(())
    }

    /// Tells `holder` its pair is keyed by a group, with the peer (and its
    /// candidates as the hub sees them now), then the pair's rules.
    pub(super) fn send_keyed(&mut self, pair: PairId, holder: SpokeId) {
        let group = match self.direct.book.get(pair).and_then(|s| s.via()) {
            Some(g) => g.to_owned(),
            None => return,
        };
        let Some(peer) = self.pair_peer(pair, holder) else {
            return;
        };
        let rules = self.pair_rules(pair);
        self.direct.rules_sent.insert(pair, rules.clone());
        let messages = vec![
            HubMessage::Pair(HubPair::Keyed { pair, peer, group }),
            HubMessage::Pair(HubPair::Rules { pair, rules }),
        ];
        if let Some(tx) = self.sessions.get(&holder).cloned() {
            self.send_keys(holder, &tx, messages);
        }
    }

    /// Tells `from` it gets no pair with `peer`, and why.
    fn refuse_pair(&mut self, from: SpokeId, peer: Ipv4Addr, reason: &str) {
        self.direct.counters.refused += 1;
        tracing::info!(spoke = %self.spoke_name(from), %peer, %reason, "pair refused");
        let msg = HubMessage::Pair(HubPair::Refused {
            peer,
            reason: reason.to_owned(),
        });
        self.tell(from, msg);
    }

    /// A report about a pair the hub does not key, or from a spoke that
    /// does not hold it: counted, and the spoke is told to drop it.
    pub(super) fn unknown_pair(&mut self, from: SpokeId, pair: PairId) {
        self.direct.counters.unknown += 1;
        tracing::info!(spoke = %self.spoke_name(from), %pair, "report about a pair this spoke does not hold at the hub; told it ended");
        self.tell(from, HubMessage::Pair(HubPair::Ended { pair }));
    }

    /// A receipt or switch report: applied by `f`, stored when it moved the
    /// schedule (put back when that fails), and what it makes due goes out
    /// at once.
    fn pair_report(
        &mut self,
        from: SpokeId,
        pair: PairId,
        now: u64,
        f: impl FnOnce(&mut PairSchedule) -> bool,
    ) -> Result<()> {
        let Some(s) = self.direct.book.get_mut(pair).filter(|_| pair.has(from)) else {
            self.unknown_pair(from, pair);
            return Ok(());
        };
        let saved = s.clone();
        if !f(s) {
            return Ok(());
        }
        let after = s.clone();
        if let Err(e) = self.commit_pair_meta(&after) {
            if let Some(s) = self.direct.book.get_mut(pair) {
                *s = saved;
            }
            return Err(e.context(format!("a report on pair {pair}")));
        }
        self.tick_pair(pair, now)
    }

    /// A spoke's facts: its local addresses (memory only) and the pairs it
    /// holds; those the hub does not key end at the spoke, the others take
    /// the receipt and switch it reports.
    fn pair_facts(&mut self, from: SpokeId, facts: DirectFacts, now: u64) -> Result<()> {
        self.direct.local.insert(from, facts.local);
        let grace = self.policy.grace_secs;
        let mut failed = None;
        for held in facts.pairs {
            let pair = held.pair;
            let result = self.pair_report(from, pair, now, |s| {
                let stored = s.on_receipt(from, held.stored);
                let switched = s.on_switched(from, held.current, now, grace);
                stored || switched
            });
            if let Err(e) = result {
                failed.get_or_insert(e);
            }
            // It may have restarted before storing them: the rules again.
            if self.direct.book.get(pair).is_some() && pair.has(from) {
                let rules = self.pair_rules(pair);
                self.send_pair_rules(pair, from, rules);
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Ends one pair: its records and keys erased (retried at the pair
    /// ticks if the store refuses), both holders told, audited.
    pub(super) fn end_pair(&mut self, pair: PairId, now: u64, why: &str) -> bool {
        let Some(sched) = self.direct.book.end(pair) else {
            return false;
        };
        let numbers: Vec<u64> = sched.epochs().iter().map(|e| e.number).collect();
        if let Err(e) = self.erase_pair_epochs(pair, &numbers, None) {
            tracing::warn!(%pair, error = %format!("{e:#}"), "an ended pair's records are not removed yet; retrying");
            self.direct.unerased.insert(pair, sched.latest());
        }
        for h in pair.holders() {
            self.tell(h, HubMessage::Pair(HubPair::Ended { pair }));
        }
        self.forget_pair_usage(pair);
        let names = pair.holders().map(|h| self.spoke_name(h));
        tracing::info!(%pair, low = %names[0], high = %names[1], %why, "pair ended");
        self.audit(
            AuditRecord::new(now, AuditKind::PairEnd)
                .spoke(names[0].clone())
                .detail(format!(
                    "pair {pair} ({} and {}): {why}",
                    names[0], names[1]
                )),
        );
        true
    }

    /// Ends every pair `keep` says must go; returns how many ended.
    pub(super) fn end_pairs_where(
        &mut self,
        now: u64,
        why: &str,
        ends: impl Fn(&HubState, PairId) -> bool,
    ) -> usize {
        let gone: Vec<PairId> = self
            .direct
            .book
            .pairs()
            .map(PairSchedule::pair)
            .filter(|p| ends(self, *p))
            .collect();
        gone.into_iter()
            .filter(|p| self.end_pair(*p, now, why))
            .count()
    }

    /// A spoke was cut off (revoked, denied): its pairs end and what it
    /// told of its addresses is forgotten.
    pub(super) fn forget_direct(&mut self, spoke: SpokeId, now: u64) {
        self.end_pairs_of(spoke, now, "a holder was cut off");
        self.direct.requests.remove(&spoke);
        self.direct.local.remove(&spoke);
        self.direct.seen.remove(&spoke);
    }

    /// Ends every pair `spoke` is in (revoked, cut off, its traffic ended).
    pub(super) fn end_pairs_of(&mut self, spoke: SpokeId, now: u64, why: &str) -> usize {
        self.end_pairs_where(now, why, |_, p| p.has(spoke))
    }

    /// The access rules between a pair's holders, as the policy compiles now.
    pub(super) fn pair_rules(&self, pair: PairId) -> PairRules {
        let [low, high] = pair.holders();
        let addr = |id| {
            self.registry
                .spoke(id)
                .map(|s| (s.tunnel_addr, self.registry.spoke_addr6(s)))
        };
        match (addr(low), addr(high)) {
            (Some(a), Some(b)) => self
                .compiled_access()
                .for_pair_dual((low, a.0, a.1), (high, b.0, b.1)),
            _ => PairRules::deny_all(),
        }
    }

    /// After the compiled access policy changed (an edit, a login, a
    /// spoke come or gone): pairs it no longer allows end at once, the
    /// others' holders get their new rules.
    pub(super) fn refresh_pair_rules(&mut self, now: u64) {
        let pairs: Vec<PairId> = self.direct.book.pairs().map(PairSchedule::pair).collect();
        if pairs.is_empty() {
            return;
        }
        let compiled = self.compiled_access();
        for pair in pairs {
            let [low, high] = pair.holders();
            let addr = |id| {
                self.registry
                    .spoke(id)
                    .map(|s| (s.tunnel_addr, self.registry.spoke_addr6(s)))
            };
            let rules = match (addr(low), addr(high)) {
                (Some(a), Some(b)) => compiled.for_pair_dual((low, a.0, a.1), (high, b.0, b.1)),
                _ => PairRules::deny_all(),
            };
            if !rules.allows_any() {
                self.end_pair(pair, now, "the access policy no longer allows it");
            } else if self.direct.rules_sent.get(&pair) != Some(&rules) {
                for holder in pair.holders() {
                    self.send_pair_rules(pair, holder, rules.clone());
                }
            }
        }
    }

    /// Sends a holder its pair's access rules.
    pub(super) fn send_pair_rules(&mut self, pair: PairId, holder: SpokeId, rules: PairRules) {
        self.direct.rules_sent.insert(pair, rules.clone());
        let msg = HubMessage::Pair(HubPair::Rules { pair, rules });
        if let Some(tx) = self.sessions.get(&holder).cloned() {
            self.send_keys(holder, &tx, vec![msg]);
        }
    }

    /// After a logout on `spoke`: its pairs end once it carries no traffic.
    pub(super) fn end_pairs_if_not_carrying(&mut self, spoke: SpokeId, now: u64) {
        if !self.carries(spoke) {
            self.end_pairs_of(spoke, now, "nobody is logged in on a holder");
        }
    }
}
