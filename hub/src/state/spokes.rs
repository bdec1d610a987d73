//! Spoke lifecycle at the hub: invitations, enrolment, approval,
//! revocation, and the admin's view of spokes.

use tasuki_core::keys::KeyEpoch;

use tasuki_core::rotation::{LinkSchedule, ScheduleMeta};
use tasuki_shell::store::Write;

use super::*;
use tasuki_core::audit::{AuditKind, AuditRecord};
use tasuki_core::control::RefusalCode;

/// What an enrolling spoke (or child hub) asks for in its first message.
pub(crate) struct EnrolAsk<'a> {
    /// The host name it reported.
    pub(crate) hostname: &'a str,
    /// The user it enrols for as another device.
    pub(crate) as_user: Option<&'a str>,
    /// For a child hub: what its branch serves.
    pub(crate) serves: Option<&'a tasuki_core::hierarchy::ServedNets>,
}

impl HubState {
    /// Makes an invitation and stores it.
    pub(crate) fn invite(
        &mut self,
        name: &str,
        pre_approved: bool,
        service: bool,
        owner: Option<&str>,
        valid_secs: u64,
        now: u64,
    ) -> Result<InvitationView> {
        let hub_key = self.key.public();
        // Memory never holds what the store does not: undone if not stored.
        let (record, mut invitation) = self
            .registry
            .invite(
                name,
                pre_approved,
                service,
                owner,
                valid_secs,
                hub_key,
                now,
                &mut rand_core::OsRng,
            )
            .map_err(StateError::Registry)?;
        if !self.cluster_endpoints.is_empty() {
            // Enrolment tries each member in turn.
            invitation.hub_endpoint = self.cluster_endpoints.join(",");
        }
        let stored = Write::put(INVITATIONS_TREE, record.id.0, &record)
            .and_then(|w| self.store.commit(&[w]));
        if let Err(e) = stored {
            self.registry.undo();
            return Err(StateError::from(e).context(format!("invitation for {name:?} not created")));
        }
        tracing::info!(invitation = %record.id, name, pre_approved, service, "invitation created");
        let mut audit = AuditRecord::new(now, AuditKind::Invitation)
            .spoke(name)
            .detail(format!(
                "invitation {} {}{}",
                record.id,
                if pre_approved {
                    "pre-approved"
                } else {
                    "needs approval"
                },
                if service { ", service spoke" } else { "" }
            ));
        if let Some(owner) = owner {
            audit = audit.user(owner);
        }
        self.audit(audit);
        Ok(InvitationView {
            invitation: invitation.encode(),
            id: record.id.short(),
            name: record.name,
            expires_at: record.expires_at,
            pre_approved,
            hub_fingerprint: hub_key.fingerprint(),
        })
    }

    /// Enrols a spoke whose handshake proved the invitation secret; stores
    /// everything before returning.
    pub(crate) fn enrol(
        &mut self,
        invitation: &InvitationId,
        spoke_key: PublicKey,
        source: &str,
        ask: EnrolAsk<'_>,
        now: u64,
    ) -> Result<std::result::Result<(Enrolled, Option<KeyEpoch>), Refusal>> {
        let EnrolAsk {
            hostname,
            as_user,
            serves,
        } = ask;
        let unknown_user = as_user.filter(|u| !self.user_exists(u));
        let invited = self
            .registry
            .invitations()
            .find(|i| i.id == *invitation)
            .map(|i| i.name.clone());
        let kind = invited.map_or(Ok(()), |name| self.check_enrol_kind(&name, serves));
        let result = match (unknown_user, kind) {
            (Some(u), _) => Err(Refusal::new(
                RefusalCode::ProtocolViolation,
                format!("no user {u:?} at this hub"),
            )),
            (None, Err(refusal)) => Err(refusal),
            (None, Ok(())) => self.registry.enrol(
                invitation,
                spoke_key,
                source,
                hostname,
                as_user,
                now,
                &mut rand_core::OsRng,
            ),
        };
        let enrolled = match result {
            Ok(e) => e,
            Err(refusal) => {
                self.audit(
                    AuditRecord::new(now, AuditKind::EnrolmentRefused)
                        .source(source)
                        .detail(format!("invitation {invitation}: {refusal}")),
                );
                return Ok(Err(refusal));
            }
        };
        let spoke = &enrolled.spoke;
        let stored = self.store_enrolment(&enrolled);
        let schedule = match stored {
            Ok(s) => s,
            Err(e) => {
                // Not stored: the invitation stays unused and the address
                // free, so the spoke can simply try again.
                self.registry.undo();
                if let Some(epoch) = &enrolled.first_epoch {
                    self.erase_unused(spoke.id, epoch.number);
                }
                return Err(e.context(format!("enrolment of {:?} not stored", spoke.name)));
            }
        };
        self.enrolment_done(&enrolled, schedule, source, now);
        if let Some(nets) = serves {
            if let Err(e) = self.on_serves(spoke.id, nets.clone(), now) {
                // Enrolled all the same: once approved as a spoke and
                // attached, the child hub announces again.
                tracing::error!(child = %spoke.name, error = %format!("{e:#}"), "a child hub's announcement was not stored");
            }
        }
        self.push_link(enrolled.spoke.id);
        let first = enrolled.first_epoch.clone();
        Ok(Ok((enrolled, first)))
    }

    /// Takes a stored enrolment into effect: its first epoch's schedule,
    /// the logs and audit records, and the owner's other devices hear of a
    /// device that waits for them.
    fn enrolment_done(
        &mut self,
        enrolled: &Enrolled,
        schedule: Option<LinkSchedule>,
        source: &str,
        now: u64,
    ) {
        let spoke = &enrolled.spoke;
        if let (Some(epoch), Some(sched)) = (&enrolled.first_epoch, schedule) {
            self.schedules.insert(spoke.id, sched);
            tracing::info!(spoke = %spoke.name, id = spoke.id, epoch = epoch.number, "key epoch issued");
            let audit = AuditRecord::new(now, AuditKind::KeyIssue)
                .spoke(&spoke.name)
                .detail(format!("epoch {} (enrolment)", epoch.number));
            self.audit(audit);
        }
        tracing::info!(
            spoke = %spoke.name, id = spoke.id, from = source, addr = %spoke.tunnel_addr,
            state = ?spoke.state, "spoke enrolled"
        );
        let mut audit = AuditRecord::new(now, AuditKind::Enrolment)
            .spoke(&spoke.name)
            .source(source)
            .detail(format!(
                "id {} address {} invitation {} state {}",
                spoke.id,
                spoke.tunnel_addr,
                spoke.invitation,
                spoke.state.name()
            ));
        if let Some(owner) = &spoke.owner {
            audit = audit.user(owner);
        }
        self.audit(audit);
        if let (Some(owner), SpokeState::Pending) = (&spoke.owner, spoke.state) {
            self.announce_device(
                owner,
                &tasuki_core::control::HubMessage::DeviceWaiting(
                    tasuki_core::control::DeviceWaiting {
                        user: owner.clone(),
                        name: spoke.name.clone(),
                        from: source.to_owned(),
                        hostname: spoke.hostname.clone(),
                    },
                ),
            );
        }
    }

    /// Stores a new spoke, its used invitation and its first epoch (key
    /// file first) in one commit; returns the first epoch's schedule.
    fn store_enrolment(&self, enrolled: &Enrolled) -> Result<Option<LinkSchedule>> {
        let spoke = &enrolled.spoke;
        let mut writes = vec![
            Write::put(SPOKES_TREE, spoke.id.to_be_bytes(), spoke)?,
            Write::put(
                INVITATIONS_TREE,
                enrolled.invitation.id.0,
                &enrolled.invitation,
            )?,
        ];
        let mut schedule = None;
        if let Some(epoch) = &enrolled.first_epoch {
            writes.extend(epoch_writes(
                &self.vault,
                spoke.id,
                std::slice::from_ref(epoch),
            )?);
            let sched =
                LinkSchedule::restore(spoke.id, vec![epoch.clone()], ScheduleMeta::default());
            writes.push(Write::put(
                SCHEDULES_TREE,
                spoke.id.to_be_bytes(),
                &(spoke.id, sched.meta().clone()),
            )?);
            schedule = Some(sched);
        }
        self.store.commit(&writes)?;
        Ok(schedule)
    }

    /// Stores a changed spoke record; on failure puts the registry back.
    fn store_spoke(&mut self, spoke: &SpokeRecord, what: &str) -> Result<()> {
        let stored = Write::put(SPOKES_TREE, spoke.id.to_be_bytes(), spoke)
            .and_then(|w| self.store.commit(&[w]));
        if let Err(e) = stored {
            self.registry.undo();
            return Err(
                StateError::from(e).context(format!("{what} of {:?} not stored", spoke.name))
            );
        }
        Ok(())
    }

    /// The admin view of every spoke, with the data plane's facts (`dp`,
    /// asked for with the state unlocked) merged in.
    pub(crate) fn spoke_views(&self, dp: Option<&crate::dataplane::DpStatus>) -> Vec<SpokeView> {
        let now = tasuki_shell::unix_now();
        self.registry
            .spokes()
            .map(|s| {
                let link = dp.and_then(|d| d.links.get(&s.id));
                SpokeView {
                    id: s.id,
                    name: s.name.clone(),
                    state: s.state.name().into(),
                    service: s.service,
                    kind: s.kind.name().into(),
                    epoch_age_secs: self
                        .schedules
                        .get(&s.id)
                        .map(|e| now.saturating_sub(e.meta().current_since)),
                    epoch_ends_in_secs: self
                        .schedules
                        .get(&s.id)
                        .filter(|_| s.is_wireguard())
                        .and_then(|e| {
                            let i = self.wireguard_interval(s.id)?;
                            Some(e.meta().current_since.saturating_add(i).saturating_sub(now))
                        }),
                    owner: s.owner.clone(),
                    tunnel_addr: s.tunnel_addr.to_string(),
                    tunnel_addr6: self.registry.spoke_addr6(s).map(|a| a.to_string()),
                    key_fingerprint: s.public_key.fingerprint(),
                    enrolled_at: s.enrolled_at,
                    enrolled_from: s.enrolled_from.clone(),
                    hostname: s.hostname.clone(),
                    invitation: if s.is_wireguard() {
                        "-".into()
                    } else {
                        s.invitation.short()
                    },
                    epoch: self.schedules.get(&s.id).map(|e| e.meta().confirmed),
                    endpoint: link.and_then(|l| l.endpoint.map(|e| e.to_string())),
                    last_handshake_secs: link.and_then(|l| l.last_handshake_secs),
                    rx_bytes: link.map_or(0, |l| l.rx_bytes),
                    tx_bytes: link.map_or(0, |l| l.tx_bytes),
                }
            })
            .collect()
    }

    /// Approves a pending spoke; it gets its keys when it next attaches.
    pub(crate) fn approve(&mut self, name: &str, by: &str, now: u64) -> Result<SpokeRecord> {
        let spoke = self.registry.approve(name)?;
        self.store_spoke(&spoke, "approval")?;
        tracing::info!(spoke = %spoke.name, by, "spoke approved");
        self.audit(
            AuditRecord::new(now, AuditKind::Approval)
                .spoke(name)
                .detail(format!("by {by}")),
        );
        Ok(spoke)
    }

    /// Denies a pending spoke.
    pub(crate) fn deny(&mut self, name: &str, now: u64) -> Result<SpokeRecord> {
        let spoke = self.registry.deny(name)?;
        self.store_spoke(&spoke, "denial")?;
        tracing::info!(spoke = %spoke.name, "spoke denied");
        self.audit(AuditRecord::new(now, AuditKind::Denial).spoke(name));
        self.forget_child_of(&spoke, now);
        self.cut_off(
            spoke.id,
            Refusal::new(RefusalCode::Revoked, "an admin denied this spoke"),
        );
        Ok(spoke)
    }

    /// Revokes a spoke: its keys are erased at once, its sessions dropped,
    /// and the relay refuses it from now on.
    pub(crate) fn revoke(&mut self, name: &str, now: u64) -> Result<SpokeRecord> {
        let spoke = self.registry.revoke(name)?;
        let epochs = self
            .schedules
            .get(&spoke.id)
            .map(|s| s.epochs())
            .unwrap_or_default();
        let stored = Write::put(SPOKES_TREE, spoke.id.to_be_bytes(), &spoke).and_then(|w| {
            let mut writes = vec![
                w,
                Write::remove(SCHEDULES_TREE, spoke.id.to_be_bytes()),
                Write::remove(OVERRIDES_TREE, spoke.id.to_be_bytes()),
                Write::remove(super::direct::DIRECT_TREE, spoke.id.to_be_bytes()),
                Write::remove(REQUESTS_TREE, spoke.id.to_be_bytes()),
                Write::remove(LOGINS_TREE, spoke.id.to_be_bytes()),
            ];
            for e in &epochs {
                writes.push(Write::remove(EPOCHS_TREE, epoch_key(spoke.id, e.number)));
            }
            self.store.commit(&writes)
        });
        if let Err(e) = stored {
            // Not revoked: the admin sees the error and must try again.
            self.registry.undo();
            return Err(StateError::from(e).context(format!("revocation of {name:?} not stored")));
        }
        self.schedules.remove(&spoke.id);
        self.overrides.remove(&spoke.id);
        self.direct.overrides.remove(&spoke.id);
        for e in &epochs {
            // The records are gone, so a key file left here (an error) is
            // erased at the next start; the link is cut off below either way.
            if let Err(err) = self.vault.erase(&vault_name(spoke.id, e.number)) {
                tracing::error!(error = %format!("{err:#}"), "cannot erase a revoked key");
            }
        }
        self.cut_off(
            spoke.id,
            Refusal::new(RefusalCode::Revoked, "an admin revoked this spoke"),
        );
        tracing::warn!(spoke = %spoke.name, erased = epochs.len(), "spoke revoked");
        self.logged_out_by_revocation(spoke.id, name, now);
        self.audit(
            AuditRecord::new(now, AuditKind::Revocation)
                .spoke(name)
                .detail(format!("{} key epochs erased", epochs.len())),
        );
        self.forget_child_of(&spoke, now);
        Ok(spoke)
    }

    /// A revoked or denied child hub's branch is withdrawn with it; a
    /// record that cannot be removed is logged (the spoke is cut off either
    /// way, and its link gone from the data plane).
    fn forget_child_of(&mut self, spoke: &SpokeRecord, now: u64) {
        if let Err(e) = self.forget_child(&spoke.name, now) {
            tracing::error!(child = %spoke.name, error = %format!("{e:#}"), "a revoked child hub's record stays");
        }
    }
}
