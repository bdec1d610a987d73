//! The hub's key schedules: issuing, delivering, confirming and erasing
//! epochs, and the rotation policies.

use std::collections::HashMap;

use tasuki_core::control::HubMessage;
use tasuki_core::keys::KeyEpoch;
use tasuki_core::registry::RegistryError;
use tasuki_core::rotation::{LinkSchedule, RotationPolicy, ScheduleMeta, Trigger, Usage};
use tasuki_core::routing::SpokeId;
use tasuki_shell::store::Write;

use super::*;
use tasuki_core::audit::{AuditKind, AuditRecord};

impl HubState {
    /// Ensures an active spoke has a key schedule (issuing and storing a first
    /// epoch if not); returns what the spoke still needs to hear: the
    /// deliveries it has not acknowledged and a pending update notification.
    pub(crate) fn ensure_schedule(&mut self, spoke: SpokeId, now: u64) -> Result<Vec<HubMessage>> {
        if !self.schedules.contains_key(&spoke) {
            let mut sched = LinkSchedule::restore(spoke, vec![], ScheduleMeta::default());
            let epoch = sched.issue(now, &mut rand_core::OsRng);
            self.commit_issue(spoke, &sched, std::slice::from_ref(&epoch))?;
            let name = self.spoke_name(spoke);
            self.audit(
                AuditRecord::new(now, AuditKind::KeyIssue)
                    .spoke(name)
                    .detail(format!("epoch {} (first)", epoch.number)),
            );
            self.schedules.insert(spoke, sched);
            self.push_link(spoke);
        }
        let policy = self.policy_for(spoke).clone();
        let Some(sched) = self.schedules.get_mut(&spoke) else {
            return Ok(Vec::new());
        };
        let mut out: Vec<HubMessage> = sched
            .deliveries(&policy)?
            .into_iter()
            .map(HubMessage::KeyDistribution)
            .collect();
        if let Some(k) = sched.notification(&policy) {
            out.push(HubMessage::UpdateNotification { epoch: k });
        }
        Ok(out)
    }

    pub(super) fn commit_issue(
        &self,
        spoke: SpokeId,
        sched: &LinkSchedule,
        epochs: &[KeyEpoch],
    ) -> Result<()> {
        let mut writes = epoch_writes(&self.vault, spoke, epochs)?;
        writes.push(Write::put(
            SCHEDULES_TREE,
            spoke.to_be_bytes(),
            &(spoke, sched.meta().clone()),
        )?);
        if sched.requested().is_none() {
            // The request this rotation answered is done.
            writes.push(Write::remove(REQUESTS_TREE, spoke.to_be_bytes()));
        }
        Ok(self.store.commit(&writes)?)
    }

    fn commit_meta(&self, spoke: SpokeId) -> Result<()> {
        if let Some(sched) = self.schedules.get(&spoke) {
            self.store.commit(&[Write::put(
                SCHEDULES_TREE,
                spoke.to_be_bytes(),
                &(spoke, sched.meta().clone()),
            )?])?;
        }
        Ok(())
    }

    /// Receipt report from a spoke: epoch `k` takes new handshakes from now.
    /// Returns the update notification to send back, if the spoke should switch.
    pub(crate) fn on_receipt(&mut self, spoke: SpokeId, k: u64) -> Result<Option<HubMessage>> {
        let policy = self.policy_for(spoke).clone();
        let Some(sched) = self.schedules.get_mut(&spoke) else {
            return Ok(None);
        };
        let saved = sched.clone();
        let moved = sched.on_receipt(k);
        let note = sched.notification(&policy);
        if moved {
            if let Err(e) = self.commit_meta(spoke) {
                // Not stored, not used: the spoke reports the receipt again
                // when it reattaches.
                self.schedules.insert(spoke, saved);
                return Err(e.context(format!("receipt of epoch {k} not stored")));
            }
            self.unsaved.remove(&Unsaved::Schedule(spoke));
            self.push_link(spoke);
            tracing::info!(spoke, epoch = k, "receipt report: epoch takes handshakes");
        }
        Ok(note.map(|epoch| HubMessage::UpdateNotification { epoch }))
    }

    /// The data plane decrypted a packet under epoch `k` of `spoke`.
    pub(crate) fn on_confirmed(
        &mut self,
        spoke: SpokeId,
        k: u64,
        now: u64,
        usage: Usage,
    ) -> Result<()> {
        let grace = self.policy_for(spoke).grace_secs;
        let Some(sched) = self.schedules.get_mut(&spoke) else {
            return Ok(());
        };
        if sched.on_confirmed(k, now, usage, grace) {
            tracing::info!(
                spoke,
                epoch = k,
                rotations = sched.meta().rotations,
                "epoch confirmed: carrying traffic"
            );
            // The epoch does carry traffic: if that cannot be stored now, it
            // is stored again at the next ticks.
            match self.commit_meta(spoke) {
                Ok(()) => {
                    self.unsaved.remove(&Unsaved::Schedule(spoke));
                }
                Err(e) => {
                    self.unsaved.insert(Unsaved::Schedule(spoke));
                    tracing::warn!(spoke, epoch = k, error = %format!("{e:#}"), "confirmed epoch not stored yet; retrying");
                }
            }
            let name = self.spoke_name(spoke);
            self.audit(
                AuditRecord::new(now, AuditKind::Rotation)
                    .spoke(name)
                    .detail(format!("epoch {k} carries traffic")),
            );
        }
        Ok(())
    }

    /// Asks for a rotation of one spoke's link, or of all.
    pub(crate) fn request_rotation(
        &mut self,
        name: Option<&str>,
        trigger: Trigger,
    ) -> Result<usize> {
        let ids: Vec<SpokeId> = match name {
            Some(n) => {
                let s = self
                    .registry
                    .spoke_by_name(n)
                    .ok_or_else(|| RegistryError::NoSuchSpoke(n.to_owned()))?;
                if !self.schedules.contains_key(&s.id) {
                    return Err(StateError::WrongState(format!(
                        "spoke {n:?} has no key epochs (pending, revoked, or never attached)"
                    )));
                }
                vec![s.id]
            }
            // WireGuard peers are rotated one by one: each then needs a
            // person to give it the new configuration.
            None => self
                .schedules
                .keys()
                .copied()
                .filter(|id| !self.is_wireguard(*id))
                .collect(),
        };
        self.store_requests(&ids, &trigger).map_err(|e| {
            e.context("the rotation request was not stored, so nothing was asked; try again")
        })?;
        for id in &ids {
            if let Some(s) = self.schedules.get_mut(id) {
                s.request(trigger.clone());
            }
            self.request_pair_rotations(*id, &trigger);
        }
        Ok(ids.len())
    }

    /// Asks for a rotation of one link, by spoke id (named events).
    pub(crate) fn request_rotation_of(&mut self, spoke: SpokeId, trigger: Trigger) {
        if self.is_wireguard(spoke) {
            // Its epoch ends only by its interval or an admin's command.
            tracing::info!(spoke, trigger = %trigger.name(), "a WireGuard peer's key does not rotate on events");
            return;
        }
        if let Err(e) = self.store_requests(&[spoke], &trigger) {
            // Still asked for in memory; only a crash before it begins loses it.
            tracing::warn!(spoke, trigger = %trigger.name(), error = %format!("{e:#}"), "rotation request not stored");
        }
        self.request_pair_rotations(spoke, &trigger);
        if let Some(s) = self.schedules.get_mut(&spoke) {
            s.request(trigger);
        }
    }

    /// Stores the rotation requests of these links (a link's request already
    /// waiting keeps its trigger), before they are made in memory.
    fn store_requests(&self, ids: &[SpokeId], trigger: &Trigger) -> Result<()> {
        let mut writes = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(s) = self.schedules.get(id) {
                let t = s.requested().unwrap_or(trigger);
                writes.push(Write::put(REQUESTS_TREE, id.to_be_bytes(), &(*id, t))?);
            }
        }
        if writes.is_empty() {
            return Ok(());
        }
        Ok(self.store.commit(&writes)?)
    }

    /// The policy that applies to one spoke's link.
    pub(crate) fn policy_for(&self, spoke: SpokeId) -> &RotationPolicy {
        self.overrides.get(&spoke).unwrap_or(&self.policy)
    }

    pub(super) fn spoke_id(&self, name: &str) -> Result<SpokeId> {
        self.registry
            .spoke_by_name(name)
            .map(|s| s.id)
            .ok_or_else(|| RegistryError::NoSuchSpoke(name.to_owned()).into())
    }

    /// The policy in force for `spoke` (by name), or the hub-wide one.
    pub(crate) fn policy_of(&self, spoke: Option<&str>) -> Result<RotationPolicy> {
        Ok(match spoke {
            Some(n) => {
                let id = self.spoke_id(n)?;
                let mut policy = self.policy_for(id).clone();
                if self.is_wireguard(id) {
                    // Only the interval applies to a WireGuard peer.
                    policy.interval_secs = self.wireguard_interval(id);
                }
                policy
            }
            None => self.policy.clone(),
        })
    }

    /// Sets and stores the hub-wide policy, or one spoke's override
    /// (`reset` drops the override so the hub-wide policy applies again).
    pub(crate) fn set_policy(
        &mut self,
        spoke: Option<&str>,
        policy: Option<RotationPolicy>,
    ) -> Result<RotationPolicy> {
        match (spoke, policy) {
            (None, Some(policy)) => {
                self.store
                    .commit(&[Write::put(SETTINGS_TREE, *b"policy", &policy)?])?;
                self.policy = policy;
            }
            (None, None) => {
                return Err(StateError::Invalid(
                    "only a spoke's override can be reset".into(),
                ))
            }
            (Some(name), Some(policy)) => {
                let id = self.spoke_id(name)?;
                self.store.commit(&[Write::put(
                    OVERRIDES_TREE,
                    id.to_be_bytes(),
                    &(id, policy.clone()),
                )?])?;
                self.overrides.insert(id, policy);
            }
            (Some(name), None) => {
                let id = self.spoke_id(name)?;
                self.store
                    .commit(&[Write::remove(OVERRIDES_TREE, id.to_be_bytes())])?;
                self.overrides.remove(&id);
            }
        }
        self.policy_of(spoke)
    }

    /// One rotation tick: write again what failed to be stored, then for
    /// each link issue epochs that are due (if its control channel is up) and
    /// erase epochs whose grace passed. `usage` gives each link's cumulative
    /// use. A link whose change cannot be stored (a full disk) is left as it
    /// was and tried again at the next tick; the other links go on.
    pub(crate) fn rotation_tick(&mut self, now: u64, usage: &HashMap<SpokeId, Usage>) {
        self.retell();
        let mut failed: Option<StateError> = None;
        for item in std::mem::take(&mut self.unsaved) {
            let result = match item {
                Unsaved::Schedule(id) => self.commit_meta(id),
                Unsaved::Logins(id) => self.commit_logins_again(id),
                Unsaved::Request(id) => self.commit_request_again(id),
            };
            if let Err(e) = result {
                self.unsaved.insert(item);
                failed.get_or_insert(e);
            }
        }
        let ids: Vec<SpokeId> = self.schedules.keys().copied().collect();
        for id in ids {
            if let Err(e) = self.tick_link(id, now, usage) {
                failed.get_or_insert(e);
            }
        }
        match failed {
            Some(e) if !self.tick_failing => {
                self.tick_failing = true;
                tracing::error!(
                    error = %format!("{e:#}"),
                    "key schedules cannot be stored: rotations wait (current epochs keep carrying traffic)"
                );
            }
            Some(_) => {}
            None if self.tick_failing => {
                self.tick_failing = false;
                tracing::info!("key schedules are stored again: rotations go on");
            }
            None => {}
        }
    }

    /// One link's part of a rotation tick; on a store error the link's
    /// schedule is put back as it was before this tick.
    fn tick_link(&mut self, id: SpokeId, now: u64, usage: &HashMap<SpokeId, Usage>) -> Result<()> {
        let total = usage.get(&id).copied().unwrap_or_default();
        if self.is_wireguard(id) {
            // A replaced epoch's predecessor is erased just below, in
            // this same tick: the old configuration stops at once.
            self.tick_wireguard(id, now, total)?;
        }
        self.erase_ended(id, now)?;
        if self.is_wireguard(id) {
            return Ok(());
        }
        match self.sessions.get(&id).cloned() {
            Some(session) => self.issue_due(id, now, total, &session),
            None => Ok(()),
        }
    }

    /// Erases a link's epochs whose grace has passed: the record first,
    /// then the key (a crash in between leaves an orphan key file that the
    /// next start erases).
    fn erase_ended(&mut self, id: SpokeId, now: u64) -> Result<()> {
        let Some(saved) = self.schedules.get(&id).cloned() else {
            return Ok(());
        };
        let erased = self
            .schedules
            .get_mut(&id)
            .map(|s| s.take_erasable(now))
            .unwrap_or_default();
        if erased.is_empty() {
            return Ok(());
        }
        let writes: Vec<Write<'_>> = erased
            .iter()
            .map(|k| Write::remove(EPOCHS_TREE, epoch_key(id, *k)))
            .collect();
        if let Err(e) = self.store.commit(&writes) {
            self.schedules.insert(id, saved);
            return Err(
                StateError::from(e).context(format!("erasure of ended epochs of spoke {id}"))
            );
        }
        for k in &erased {
            if let Err(e) = self.vault.erase(&vault_name(id, *k)) {
                tracing::error!(spoke = id, epoch = k, error = %format!("{e:#}"), "cannot erase an ended key; the next start erases it");
            }
        }
        self.push_link(id);
        tracing::info!(spoke = id, epochs = ?erased, "ended epochs erased");
        Ok(())
    }

    /// Issues, delivers and switches what a link's schedule says is due
    /// now; new epochs are stored before anything about them is sent.
    fn issue_due(
        &mut self,
        id: SpokeId,
        now: u64,
        total: Usage,
        session: &tokio::sync::mpsc::Sender<HubMessage>,
    ) -> Result<()> {
        let policy = self.policy_for(id).clone();
        let Some(sched) = self.schedules.get_mut(&id) else {
            return Ok(());
        };
        let before_issue = sched.clone();
        let planned = sched.tick(&policy, now, total, &mut rand_core::OsRng);
        let sched = sched.clone();
        let plan = match planned {
            Ok(plan) => plan,
            Err(e) => {
                self.schedules.insert(id, before_issue);
                return Err(StateError::from(e).context(format!("key deliveries of spoke {id}")));
            }
        };
        if plan.stores() {
            // Durable before it is sent; if it cannot be stored, nothing was
            // issued and the trigger fires again at the next tick.
            if let Err(e) = self.commit_issue(id, &sched, &plan.issued) {
                for e in &plan.issued {
                    self.erase_unused(id, e.number);
                }
                self.schedules.insert(id, before_issue);
                return Err(e.context(format!("new epochs of spoke {id}")));
            }
            self.unsaved.remove(&Unsaved::Schedule(id));
        }
        self.audit_issued(id, now, &plan);
        let mut messages: Vec<HubMessage> = plan
            .deliveries
            .into_iter()
            .map(HubMessage::KeyDistribution)
            .collect();
        if let Some(k) = plan.notify {
            if let Some(t) = &plan.switch {
                tracing::info!(spoke = id, epoch = k, trigger = %t.name(), "update notification");
            }
            messages.push(HubMessage::UpdateNotification { epoch: k });
        }
        self.send_keys(id, session, messages);
        Ok(())
    }

    /// Logs and audits the epochs a tick issued.
    fn audit_issued(&mut self, id: SpokeId, now: u64, plan: &tasuki_core::rotation::TickPlan) {
        let why = plan.trigger.as_ref().map_or("batch".into(), |t| t.name());
        for e in &plan.issued {
            tracing::info!(spoke = id, epoch = e.number, trigger = %why, "key epoch issued");
            let name = self.spoke_name(id);
            self.audit(
                AuditRecord::new(now, AuditKind::KeyIssue)
                    .spoke(name)
                    .detail(format!("epoch {} ({why})", e.number)),
            );
        }
    }

    /// Per-link key status for `tasuki-hub key status`.
    pub(crate) fn key_status(
        &self,
        now: u64,
        usage: &HashMap<SpokeId, Usage>,
    ) -> Vec<tasuki_core::admin_api::LinkKeyView> {
        let mut out: Vec<_> = self
            .schedules
            .iter()
            .map(|(id, s)| {
                let used = s.usage(usage.get(id).copied().unwrap_or_default());
                tasuki_core::admin_api::LinkKeyView {
                    spoke: self
                        .registry
                        .spoke(*id)
                        .map(|r| r.name.clone())
                        .unwrap_or_default(),
                    epoch: s.meta().confirmed,
                    latest: s.latest(),
                    acked: s.meta().acked,
                    held: s.epochs().iter().map(|e| e.number).collect(),
                    age_secs: now.saturating_sub(s.meta().current_since),
                    packets: used.packets,
                    bytes: used.bytes,
                    handshakes: used.handshakes,
                    rotations: s.meta().rotations,
                    next_interval_in: if self.is_wireguard(*id) {
                        self.wireguard_interval(*id)
                            .map(|i| s.meta().current_since.saturating_add(i).saturating_sub(now))
                    } else {
                        s.next_interval_in(self.policy_for(*id), now)
                    },
                    policy_override: self.overrides.contains_key(id),
                    control_connected: self.sessions.contains_key(id),
                }
            })
            .collect();
        out.sort_by(|a, b| a.spoke.cmp(&b.spoke));
        out
    }
}

/// Each link's cumulative use, from the data plane's status.
pub(crate) fn usage(dp: Option<&crate::dataplane::DpStatus>) -> HashMap<SpokeId, Usage> {
    dp.map(|d| {
        d.links
            .iter()
            .map(|(id, l)| {
                let usage = Usage {
                    packets: l.packets,
                    bytes: l.rx_bytes + l.tx_bytes,
                    handshakes: l.handshakes,
                };
                (*id, usage)
            })
            .collect()
    })
    .unwrap_or_default()
}

/// Where the data plane last saw each link's datagrams come from.
pub(crate) fn endpoints(
    dp: Option<&crate::dataplane::DpStatus>,
) -> HashMap<SpokeId, std::net::SocketAddr> {
    dp.map(|d| {
        d.links
            .iter()
            .filter_map(|(id, l)| l.endpoint.map(|e| (*id, e)))
            .collect()
    })
    .unwrap_or_default()
}
