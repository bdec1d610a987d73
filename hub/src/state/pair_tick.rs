//! The pairs' tick (direct mode): each pair's schedule says what is due
//! (an idle pair ends, an epoch is issued by the rotation policy, a
//! delivery or a switch goes again) and the hub carries it out in order:
//! store first, then deliver sealed under each holder's link epoch, then
//! tell both to switch; epochs whose grace passed are erased. Also the
//! admin's view of the pairs.

use std::collections::HashMap;
use std::net::SocketAddr;

use tasuki_core::admin_api::{PairHolderView, PairView};
use tasuki_core::audit::{AuditKind, AuditRecord};
use tasuki_core::control::{HubMessage, HubPair, PairOffer, PairPeer};
use tasuki_core::keys::KeyEpoch;
use tasuki_core::pair::{seal_pair, PairId};
use tasuki_core::pair_schedule::{PairDelivery, PairPlan, PairSchedule};
use tasuki_core::rotation::Trigger;
use tasuki_core::routing::SpokeId;

use super::*;

impl HubState {
    /// One pair tick (from the rotation tick's task): `seen` is where the
    /// data plane sees each spoke's datagrams come from. A pair whose
    /// change cannot be stored is left as it was and tried again next time.
    pub(crate) fn pair_tick(&mut self, now: u64, seen: HashMap<SpokeId, SocketAddr>) {
        self.direct.seen = seen;
        let mut failed = self.erase_unerased_pairs().err();
        let pairs: Vec<PairId> = self.direct.book.pairs().map(PairSchedule::pair).collect();
        for pair in pairs {
            if let Err(e) = self.tick_pair(pair, now) {
                failed.get_or_insert(e);
            }
        }
        if let Some(e) = failed {
            tracing::warn!(error = %format!("{e:#}"), "pair keys cannot be stored: their rotations wait");
        }
    }

    /// The link epoch a holder surely holds, to seal its pair epochs
    /// under: the one carrying its traffic, else the newest it stored.
    /// `None` when it has no control session (nothing would reach it).
    pub(super) fn pair_link(&self, holder: SpokeId) -> Option<KeyEpoch> {
        if !self.sessions.contains_key(&holder) {
            return None;
        }
        let s = self.schedules.get(&holder)?;
        let epochs = s.epochs();
        [s.meta().confirmed, s.meta().acked]
            .into_iter()
            .filter(|k| *k > 0)
            .find_map(|k| epochs.iter().find(|e| e.number == k).cloned())
    }

    /// One pair's part of a tick; on a store error its schedule is put
    /// back as it was.
    pub(super) fn tick_pair(&mut self, pair: PairId, now: u64) -> Result<()> {
        let policy = self.policy.clone();
        let idle = self.direct.book.limits().idle_secs;
        let [a, b] = pair.holders().map(|h| self.pair_link(h));
        let total = self.pair_use(pair);
        let Some(sched) = self.direct.book.get_mut(pair) else {
            return Ok(());
        };
        let saved = sched.clone();
        let planned = sched.tick(
            &policy,
            idle,
            now,
            total,
            [a.as_ref(), b.as_ref()],
            &mut rand_core::OsRng,
        );
        let after = sched.clone();
        let plan = match planned {
            Ok(plan) => plan,
            Err(e) => {
                self.put_back(saved);
                return Err(StateError::from(e).context(format!("deliveries of pair {pair}")));
            }
        };
        if plan.ended {
            self.end_pair(pair, now, "idle");
            return Ok(());
        }
        if plan.stores() {
            if let Err(e) = self.commit_pair_issue(&after, plan.issued.as_ref()) {
                self.put_back(saved);
                return Err(e);
            }
            self.audit_pair_issued(pair, now, &plan);
        }
        self.send_pair_plan(pair, plan);
        self.erase_pair_ended(pair, now)
    }

    /// Puts a pair's schedule back as it was before a change that could
    /// not be stored.
    fn put_back(&mut self, saved: PairSchedule) {
        if let Some(s) = self.direct.book.get_mut(saved.pair()) {
            *s = saved;
        }
    }

    /// Logs and audits a rotation's new epoch (the first is audited when
    /// the pair is made).
    fn audit_pair_issued(&mut self, pair: PairId, now: u64, plan: &PairPlan) {
        let Some(epoch) = &plan.issued else {
            return;
        };
        let why = plan.trigger.as_ref().map_or("asked".into(), |t| t.name());
        tracing::info!(%pair, epoch = epoch.number, trigger = %why, "pair epoch issued");
        let name = self.spoke_name(pair.holders()[0]);
        self.audit(
            AuditRecord::new(now, AuditKind::PairIssue)
                .spoke(name)
                .detail(format!("pair {pair} epoch {} ({why})", epoch.number)),
        );
    }

    /// The other holder of a pair, as `holder` is told it.
    pub(super) fn pair_peer(&self, pair: PairId, holder: SpokeId) -> Option<PairPeer> {
        let other = pair.peer_of(holder)?;
        let s = self.registry.spoke(other)?;
        Some(PairPeer {
            spoke_id: other,
            name: s.name.clone(),
            public_key: s.public_key,
            tunnel_addr: s.tunnel_addr,
            candidates: self.pair_candidates(other),
        })
    }

    /// A spoke's candidate endpoints (see [`tasuki_core::pair_rules::candidates`]).
    pub(super) fn pair_candidates(&self, spoke: SpokeId) -> Vec<SocketAddr> {
        let local = self.direct.local.get(&spoke).map_or(&[][..], Vec::as_slice);
        tasuki_core::pair_rules::candidates(self.direct.seen.get(&spoke).copied(), local)
    }

    /// Sends a stored plan's deliveries, then its switch notifications.
    /// What does not fit a queue is not kept: the schedule sends again.
    fn send_pair_plan(&mut self, pair: PairId, plan: PairPlan) {
        let mut messages: Vec<(SpokeId, HubMessage)> = Vec::new();
        let rules = (!plan.deliveries.is_empty()).then(|| self.pair_rules(pair));
        for (holder, delivery) in plan.deliveries {
            if let Some(peer) = self.pair_peer(pair, holder) {
                let offer = HubPair::Offer(PairOffer { peer, delivery });
                messages.push((holder, HubMessage::Pair(offer)));
                // The rules follow each offer: nothing direct passes before.
                if let Some(rules) = rules.clone() {
                    self.direct.rules_sent.insert(pair, rules.clone());
                    messages.push((holder, HubMessage::Pair(HubPair::Rules { pair, rules })));
                }
            }
        }
        for (holder, epoch) in plan.notify {
            let Some(other) = pair.peer_of(holder) else {
                continue;
            };
            let switch = HubPair::Switch {
                pair,
                epoch,
                settled: plan.settled,
                candidates: self.pair_candidates(other),
            };
            messages.push((holder, HubMessage::Pair(switch)));
        }
        for (holder, msg) in messages {
            if let Some(tx) = self.sessions.get(&holder).cloned() {
                self.send_keys(holder, &tx, vec![msg]);
            }
        }
    }

    /// Erases a pair's epochs whose grace has passed.
    fn erase_pair_ended(&mut self, pair: PairId, now: u64) -> Result<()> {
        let Some(sched) = self.direct.book.get_mut(pair) else {
            return Ok(());
        };
        let saved = sched.clone();
        let gone = sched.take_erasable(now);
        if gone.is_empty() {
            return Ok(());
        }
        let meta = sched.meta().clone();
        if let Err(e) = self.erase_pair_epochs(pair, &gone, Some(&meta)) {
            self.put_back(saved);
            return Err(e.context(format!("erasure of pair {pair}'s ended epochs")));
        }
        tracing::info!(%pair, epochs = ?gone, "ended pair epochs erased");
        Ok(())
    }

    /// Sends `to` its pair's newest epoch and the switch again, whatever
    /// the hub thinks it holds: it asked again, so it may have lost them
    /// (it answers a held one with a receipt and a switch it is on with a
    /// report, so nothing moves twice).
    pub(super) fn reoffer(&mut self, pair: PairId, to: SpokeId) -> Result<()> {
        if self
            .direct
            .book
            .get(pair)
            .is_some_and(|s| s.via().is_some())
        {
            self.send_keyed(pair, to);
            return Ok(());
        }
        let (Some(link), Some(peer)) = (self.pair_link(to), self.pair_peer(pair, to)) else {
            return Ok(());
        };
        let Some(sched) = self.direct.book.get(pair) else {
            return Ok(());
        };
        let Some(epoch) = sched.epochs().pop() else {
            return Ok(());
        };
        let notified = sched.meta().notified;
        let settled = sched.current();
        let delivery = PairDelivery {
            pair,
            epoch: epoch.number,
            under: link.number,
            sealed: seal_pair(&link, pair, &epoch, &mut rand_core::OsRng)?,
            lifetime: self.policy.lifetime(),
        };
        let rules = self.pair_rules(pair);
        self.direct.rules_sent.insert(pair, rules.clone());
        let mut messages = vec![
            HubMessage::Pair(HubPair::Offer(PairOffer { peer, delivery })),
            HubMessage::Pair(HubPair::Rules { pair, rules }),
        ];
        if notified > 0 {
            messages.push(HubMessage::Pair(HubPair::Switch {
                pair,
                epoch: notified,
                settled,
                candidates: self.pair_candidates(pair.peer_of(to).unwrap_or(to)),
            }));
        }
        if let Some(tx) = self.sessions.get(&to).cloned() {
            self.send_keys(to, &tx, messages);
        }
        Ok(())
    }

    /// Asks for a rotation of every pair `spoke` holds at their next tick
    /// (an admin's command, a named event such as a changed address, whose
    /// new switch carries the new candidates). Memory only: a restart
    /// before the tick loses the request, and the pair rotates by its
    /// interval.
    pub(super) fn request_pair_rotations(&mut self, spoke: SpokeId, trigger: &Trigger) {
        for pair in self.direct.book.pairs_of(spoke) {
            let via = match self.direct.book.get_mut(pair) {
                Some(s) if s.via().is_some() => true,
                Some(s) => {
                    s.request(trigger.clone());
                    false
                }
                None => false,
            };
            // A pair keyed by a group rotates with it: its holders hear
            // the new candidates at once instead.
            if via {
                for h in pair.holders() {
                    self.send_keyed(pair, h);
                }
            }
        }
    }

    /// How many pairs the hub keys.
    pub(crate) fn pair_count(&self) -> usize {
        self.direct.book.len()
    }

    /// What spokes sent about pairs that was not taken.
    pub(crate) fn pair_counters(&self) -> super::direct::PairCounters {
        self.direct.counters
    }

    /// Every pair, for `tasuki-hub pair list` (never key bytes).
    pub(crate) fn pair_views(&self, now: u64) -> Vec<PairView> {
        self.direct
            .book
            .pairs()
            .map(|s| {
                let pair = s.pair();
                let meta = s.meta();
                let holders = pair
                    .holders()
                    .into_iter()
                    .enumerate()
                    .map(|(i, h)| {
                        let usage = self.pair_usage_of(pair, h);
                        let path = match usage {
                            Some(u) if u.direct.is_some() => "direct",
                            Some(_) => "relay",
                            None => "unknown",
                        };
                        PairHolderView {
                            spoke: self.spoke_name(h),
                            stored: meta.acked[i],
                            current: meta.current[i],
                            candidates: self
                                .pair_candidates(h)
                                .iter()
                                .map(ToString::to_string)
                                .collect(),
                            path: path.into(),
                            endpoint: usage.and_then(|u| u.direct).map(|a| a.to_string()),
                            last_handshake_secs: usage.and_then(|u| u.last_handshake_secs),
                            tx_bytes: usage.map_or(0, |u| u.tx_bytes),
                            rx_bytes: usage.map_or(0, |u| u.rx_bytes),
                            tx_packets: usage.map_or(0, |u| u.tx_packets),
                            rx_packets: usage.map_or(0, |u| u.rx_packets),
                        }
                    })
                    .collect();
                PairView {
                    pair: pair.to_string(),
                    holders,
                    epoch: s.current(),
                    held: s.epochs().iter().map(|e| e.number).collect(),
                    rotations: meta.rotations,
                    idle_secs: now.saturating_sub(meta.last_used),
                    via: meta.via.clone(),
                }
            })
            .collect()
    }
}
