//! The keyed groups' tick (claim 11): each group's holders follow its
//! membership (a spoke in the group or with a member user logged in, and
//! attached): a member that comes online joins (the epoch in use only),
//! one that goes offline stops holding the others up, one that is no
//! member any more leaves for good (a new epoch at once, which it never
//! gets, and it is told to erase the group's). Then the schedule says what
//! is due and the hub carries it out in order: store first, then deliver
//! sealed under each member's link epoch, then the switch. Also the
//! members' reports and the admin's view.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tasuki_core::admin_api::GroupKeyView;
use tasuki_core::audit::{AuditKind, AuditRecord};
use tasuki_core::control::{HubGroup, HubMessage, SpokeGroup};
use tasuki_core::group::{GroupPlan, GroupSchedule};
use tasuki_core::keys::KeyEpoch;
use tasuki_core::rotation::Usage;
use tasuki_core::routing::SpokeId;

use super::*;

/// Seconds a member may owe a receipt or switch report of a group's epoch
/// (sent again every few seconds) before the others stop waiting for it.
const STALLED_SECS: u64 = 30;

impl HubState {
    /// One tick of every keyed group (from the rotation tick's task). A
    /// group whose change cannot be stored is left as it was and tried
    /// again next time.
    pub(crate) fn group_tick(&mut self, now: u64) {
        self.greet_sessions();
        let names: Vec<String> = self.keyed.groups.keys().cloned().collect();
        let mut failed = None;
        for name in names {
            if let Err(e) = self.tick_group(&name, now) {
                failed.get_or_insert(e);
            }
            // Whatever the tick stored: the multicast follows the members.
            self.sync_multicast(&name);
        }
        if let Some(e) = failed {
            tracing::warn!(error = %format!("{e:#}"), "group keys cannot be stored: their rotations wait");
        }
    }

    /// A spoke that attached is told which keyed groups it is a member of:
    /// it erases any other it holds (it may have left one, or one may have
    /// been unkeyed, while it was offline).
    fn greet_sessions(&mut self) {
        let sessions = &self.sessions;
        self.keyed
            .greeted
            .retain(|id, tx| sessions.get(id).is_some_and(|s| s.same_channel(tx)));
        // A member that attached again is given a new chance.
        let greeted = &self.keyed.greeted;
        self.keyed
            .stalled
            .retain(|(_, id)| greeted.contains_key(id));
        let new: Vec<SpokeId> = self
            .sessions
            .keys()
            .filter(|id| !self.keyed.greeted.contains_key(id))
            .copied()
            .collect();
        if new.is_empty() {
            return;
        }
        let names: Vec<String> = self.keyed.groups.keys().cloned().collect();
        let mut of: BTreeMap<SpokeId, Vec<String>> = BTreeMap::new();
        for name in names {
            let members = self.member_spokes(&name);
            for id in new.iter().filter(|id| members.contains(id)) {
                of.entry(*id).or_default().push(name.clone());
            }
        }
        for id in &new {
            let groups = of.remove(id).unwrap_or_default();
            if let Some(tx) = self.sessions.get(id).cloned() {
                self.greet_multicast(*id, &groups);
                let only = HubMessage::Group(HubGroup::Only { groups });
                self.send_keys(*id, &tx, vec![only]);
            }
        }
        for id in new {
            if let Some(tx) = self.sessions.get(&id) {
                self.keyed.greeted.insert(id, tx.clone());
            }
        }
    }

    /// The spokes that are members of `group` now, by their own
    /// membership or a logged-in user's.
    pub(super) fn member_spokes(&self, group: &str) -> BTreeSet<SpokeId> {
        self.access_in_force()
            .member_spokes(group, self.access_facts.values())
            .into_iter()
            .collect()
    }

    fn tick_group(&mut self, name: &str, now: u64) -> Result<()> {
        let members = self.member_spokes(name);
        let links: HashMap<SpokeId, KeyEpoch> = members
            .iter()
            .filter_map(|m| self.pair_link(*m).map(|l| (*m, l)))
            .collect();
        let policy = self.group_policy(name);
        let total = self.group_use(name);
        let mut stalled: BTreeSet<SpokeId> = self
            .keyed
            .stalled
            .iter()
            .filter(|(g, _)| g == name)
            .map(|(_, h)| *h)
            .collect();
        let Some(sched) = self.keyed.groups.get_mut(name) else {
            return Ok(());
        };
        let saved = sched.clone();
        let mut moved = false;
        for h in sched.scope().stalled(now, STALLED_SECS) {
            tracing::warn!(group = name, spoke = h, "a member does not answer the group's epochs: not waited for until it attaches again");
            moved |= sched.offline(h);
            self.keyed.stalled.insert((name.to_owned(), h));
            stalled.insert(h);
        }
        let (followed, left) = follow_membership(sched, &members, &links, &stalled);
        moved |= followed;
        let planned = sched.tick(
            &policy,
            now,
            total,
            |h| links.get(&h),
            &mut rand_core::OsRng,
        );
        let gone = sched.take_erasable(now);
        let after = sched.clone();
        let plan = match planned {
            Ok(plan) => plan,
            Err(e) => {
                self.keyed.groups.insert(name.to_owned(), saved);
                return Err(StateError::from(e).context(format!("deliveries of group {name}")));
            }
        };
        if moved || plan.walk.stores() {
            if let Err(e) = self.commit_group_issue(&after, plan.walk.issued.as_ref()) {
                self.keyed.groups.insert(name.to_owned(), saved);
                return Err(e);
            }
        }
        if !gone.is_empty() {
            // On a store error the epochs stay erased in memory; their
            // records go with the next change, and a start erases key
            // files no record names. What follows is sent regardless.
            let meta = after.scope().meta().clone();
            match self.erase_group_epochs(name, &gone, Some(&meta)) {
                Ok(()) => tracing::info!(group = name, epochs = ?gone, "ended group epochs erased"),
                Err(e) => {
                    tracing::warn!(group = name, error = %format!("{e:#}"), "ended group epochs not erased from the store yet")
                }
            }
        }
        if plan.walk.settled_rose {
            self.tell_settled(name, plan.walk.settled);
        }
        for h in left {
            tracing::info!(group = name, spoke = %self.spoke_name(h), "member left the group: it erases the group's epochs");
            self.tell_group_ended(h, name);
            self.end_pairs_via(name, Some(h), now);
        }
        self.send_group_plan(name, plan, now);
        Ok(())
    }

    /// Audits a plan's new epoch, then sends its deliveries and switches.
    fn send_group_plan(&mut self, name: &str, plan: GroupPlan, now: u64) {
        if let Some(epoch) = &plan.walk.issued {
            self.keyed.counters.rotations += 1;
            let why = plan
                .walk
                .trigger
                .as_ref()
                .map_or("asked".into(), |t| t.name());
            tracing::info!(group = name, epoch = epoch.number, trigger = %why, "group epoch issued");
            self.audit(
                AuditRecord::new(now, AuditKind::GroupKey)
                    .detail(format!("group {name} epoch {} ({why})", epoch.number)),
            );
        }
        let mut messages: Vec<(SpokeId, HubMessage)> = plan
            .deliveries
            .into_iter()
            .map(|(h, d)| (h, HubMessage::Group(HubGroup::Offer(d))))
            .collect();
        for (h, epoch) in plan.walk.notify {
            let switch = HubGroup::Switch {
                group: name.to_owned(),
                epoch,
                settled: plan.walk.settled,
            };
            messages.push((h, HubMessage::Group(switch)));
        }
        for (h, msg) in messages {
            if let Some(tx) = self.sessions.get(&h).cloned() {
                self.send_keys(h, &tx, vec![msg]);
            }
        }
    }

    /// The direct traffic of the pairs `group` keys, as their holders
    /// report it: the group's packet, byte and handshake budgets.
    fn group_use(&self, group: &str) -> Usage {
        let mut total = Usage::default();
        for s in self.direct.book.pairs().filter(|s| s.via() == Some(group)) {
            let u = self.pair_use(s.pair());
            total.packets += u.packets;
            total.bytes += u.bytes;
            total.handshakes += u.handshakes;
        }
        total
    }

    /// Ends the pairs keyed by `group` (those `holder` is in, or all).
    pub(super) fn end_pairs_via(&mut self, group: &str, holder: Option<SpokeId>, now: u64) {
        self.end_pairs_where(
            now,
            "a holder left the group that keyed the pair",
            |st, p| {
                holder.is_none_or(|h| p.has(h))
                    && st.direct.book.get(p).and_then(|s| s.via()) == Some(group)
            },
        );
    }

    /// The keyed group two spokes share whose epoch both use, to key
    /// their pair by ([`tasuki_core::group_keys::choose_group`]).
    pub(super) fn shared_keyed_group(&self, a: SpokeId, b: SpokeId) -> Option<String> {
        let shared = self.keyed.groups.iter().filter_map(|(name, s)| {
            let meta = s.scope().meta();
            // On the group's epoch by its own report, not a joiner yet.
            let on = |h| {
                meta.holders
                    .get(&h)
                    .is_some_and(|m| m.current > 0 && m.current >= meta.notified)
            };
            (on(a) && on(b)).then_some(name.as_str())
        });
        tasuki_core::group_keys::choose_group(shared).map(str::to_owned)
    }

    /// Tells `spoke` to erase every epoch of `group` (it is no member).
    pub(super) fn tell_group_ended(&mut self, spoke: SpokeId, group: &str) {
        if let Some(tx) = self.sessions.get(&spoke).cloned() {
            let ended = HubGroup::Ended {
                group: group.to_owned(),
            };
            self.send_keys(spoke, &tx, vec![HubMessage::Group(ended)]);
        }
    }

    /// A member's report on a group epoch. A report on a group that is not
    /// keyed, or from a spoke that holds none of it, is counted and dropped.
    pub(crate) fn on_group_message(
        &mut self,
        from: SpokeId,
        msg: SpokeGroup,
        now: u64,
    ) -> Result<()> {
        let grace = self.policy.grace_secs;
        let (group, epoch, switched) = match msg {
            SpokeGroup::Receipt { group, epoch } => (group, epoch, false),
            SpokeGroup::Switched { group, epoch } => (group, epoch, true),
        };
        let Some(sched) = self
            .keyed
            .groups
            .get_mut(&group)
            .filter(|s| s.scope().holders().any(|h| h == from))
        else {
            self.keyed.counters.unknown += 1;
            tracing::debug!(spoke = %self.spoke_name(from), group, "a report on a group it holds nothing of");
            return Ok(());
        };
        let before = sched.scope().current();
        let moved = if switched {
            sched.on_switched(from, epoch, now, grace)
        } else {
            sched.on_receipt(from, epoch)
        };
        let settled = sched.scope().current();
        match self.keyed.groups.get(&group) {
            // Lost on a store error: the member reports again when the hub
            // sends the epoch or switch again.
            Some(sched) if moved => self.commit_group_issue(sched, None)?,
            _ => return Ok(()),
        }
        if settled > before {
            self.tell_settled(&group, settled);
        }
        Ok(())
    }

    /// Every member is on `settled` now: each is told, so it erases the
    /// older epochs a grace later rather than at the next rotation.
    fn tell_settled(&mut self, group: &str, settled: u64) {
        let Some(sched) = self.keyed.groups.get(group) else {
            return;
        };
        let holders: Vec<SpokeId> = sched.scope().holders().collect();
        let epoch = sched.scope().meta().notified;
        for h in holders {
            let switch = HubGroup::Switch {
                group: group.to_owned(),
                epoch,
                settled,
            };
            if let Some(tx) = self.sessions.get(&h).cloned() {
                self.send_keys(h, &tx, vec![HubMessage::Group(switch)]);
            }
        }
    }

    /// How many groups are keyed, and what their members sent that was
    /// not taken (for the metrics).
    pub(crate) fn group_counters(&self) -> (usize, super::GroupCounters) {
        (self.keyed.groups.len(), self.keyed.counters)
    }

    /// Every keyed group's view, by name (for `group list`).
    pub(crate) fn group_key_views(&self) -> HashMap<String, GroupKeyView> {
        self.keyed
            .groups
            .iter()
            .map(|(name, s)| {
                let scope = s.scope();
                let (multicast, multicast_rate_pps) = self.multicast_view(name);
                let view = GroupKeyView {
                    epoch: scope.current(),
                    latest: scope.latest(),
                    held: scope.epochs().iter().map(|e| e.number).collect(),
                    members_online: scope.holders().count(),
                    rotations: scope.meta().rotations,
                    interval_secs: self.group_policy(name).interval_secs,
                    own_interval: self.keyed.intervals.contains_key(name),
                    multicast,
                    multicast_rate_pps,
                };
                (name.clone(), view)
            })
            .collect()
    }
}

/// Makes a group's holders follow its membership: members no longer in it
/// leave for good, members with no session go offline, members online
/// join. Returns whether the schedule moved, and who left.
fn follow_membership(
    sched: &mut GroupSchedule,
    members: &BTreeSet<SpokeId>,
    links: &HashMap<SpokeId, KeyEpoch>,
    stalled: &BTreeSet<SpokeId>,
) -> (bool, Vec<SpokeId>) {
    let mut left = Vec::new();
    let mut moved = false;
    // Gone while offline: a leave all the same.
    for h in sched.scope().away().collect::<Vec<_>>() {
        if !members.contains(&h) {
            moved |= sched.leave(h);
            left.push(h);
        }
    }
    for h in sched.scope().holders().collect::<Vec<_>>() {
        if !members.contains(&h) {
            moved |= sched.leave(h);
            left.push(h);
        } else if !links.contains_key(&h) {
            moved |= sched.offline(h);
        }
    }
    for m in links.keys().filter(|m| !stalled.contains(m)) {
        moved |= sched.join(*m);
    }
    (moved, left)
}
