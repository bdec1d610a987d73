//! Keyed groups in the spoke's control loop: carries out what
//! [`SpokeGroups`] asks (stores first, then the reports to the hub) and
//! shows what is held in `status`.

use anyhow::Context;
use ipnet::Ipv4Net;
use tasuki_core::control::{HubGroup, SpokeMessage};
use tasuki_core::group_keys::multicast_key;
use tasuki_core::multicast::MemberGroup;
use tasuki_core::spoke_groups::{GroupAction, SpokeGroups};
use tasuki_core::spoke_session::SpokeSession;

use crate::control::Control;
use crate::dataplane::DpCommand;

impl Control {
    /// A plain call on the groups (the lock is never held across an await).
    pub(crate) fn with_groups<R>(&self, f: impl FnOnce(&mut SpokeGroups) -> R) -> R {
        let mut groups = self
            .groups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut groups)
    }

    /// A group message from the hub, opened with the link epochs stored
    /// (an offer is sealed under one of them).
    pub(crate) fn on_group_message(&self, msg: HubGroup) {
        // Unreadable: the hub offers it again.
        let Some(links) = self.link_epochs("a group epoch") else {
            return;
        };
        self.with_groups(|g| g.handle(tasuki_shell::boot_secs(), msg, &links));
    }

    /// Does what the groups ask, in order: stores (then tells the groups),
    /// messages for the hub (through the session, which sends them next).
    /// A store that fails is not answered: the hub sends again.
    pub(crate) async fn carry_out_groups(
        &self,
        session: &mut SpokeSession,
        now: u64,
    ) -> anyhow::Result<()> {
        let mut changed = false;
        let mut multicast = std::collections::BTreeSet::new();
        while let Some(action) = self.with_groups(SpokeGroups::poll_action) {
            changed = true;
            match action {
                GroupAction::Multicast(group) => {
                    multicast.insert(group);
                }
                GroupAction::Send(msg) => session.send_other(now, SpokeMessage::Group(msg)),
                GroupAction::Store { group, epoch } => {
                    match self.store.save_group_epoch(&group, &epoch) {
                        Ok(()) => {
                            tracing::info!(group, epoch = epoch.number, "group epoch received");
                            self.with_groups(|g| g.stored(group.clone(), epoch));
                            self.feed_group(&group);
                            multicast.insert(group);
                        }
                        Err(e) => {
                            tracing::error!(group, error = %format!("{e:#}"), "cannot store a group epoch; the hub sends it again")
                        }
                    }
                }
                GroupAction::StoreCurrent { group, epoch } => {
                    match self.store.save_group_current(&group, epoch) {
                        Ok(()) => {
                            tracing::info!(group, epoch, "group epoch in use");
                            let boot = tasuki_shell::boot_secs();
                            self.with_groups(|g| g.switch_stored(boot, group.clone(), epoch));
                            self.feed_group(&group);
                            multicast.insert(group);
                        }
                        Err(e) => {
                            tracing::error!(group, epoch, error = %format!("{e:#}"), "cannot store a group switch; the hub sends it again")
                        }
                    }
                }
                GroupAction::Erase { group, epochs } => {
                    if let Err(e) = self.store.erase_group_epochs(&group, &epochs) {
                        tracing::error!(group, ?epochs, error = %format!("{e:#}"), "cannot erase group epochs");
                    } else {
                        tracing::info!(group, ?epochs, "ended group epochs erased");
                    }
                    self.feed_group(&group);
                    multicast.insert(group);
                }
                GroupAction::Forget(group) => {
                    tracing::info!(
                        group,
                        "no member of the group any more: its epochs are erased"
                    );
                    if let Err(e) = self.store.forget_group(&group) {
                        tracing::error!(group, error = %format!("{e:#}"), "cannot erase a group's epochs");
                    }
                    let boot = tasuki_shell::boot_secs();
                    self.with_pairs(|p| p.group_ended(boot, &group));
                    multicast.insert(group);
                }
            }
        }
        for group in multicast {
            self.feed_multicast(&group).await?;
        }
        if changed {
            self.publish_groups();
        }
        Ok(())
    }

    /// Hands the data plane a group's multicast as it is now (its ranges
    /// and members from the hub, its epochs' multicast keys), or tells it
    /// the group has none; its ranges are routed into the tunnel while it
    /// has them and an epoch in use.
    async fn feed_multicast(&self, group: &str) -> anyhow::Result<()> {
        let (epochs, current) = self.with_groups(|g| g.epochs_of(group));
        let info = self.with_groups(|g| g.multicast_of(group).cloned());
        // Routed once there is an epoch to seal under: until then an
        // application sees no route rather than silent drops.
        let ranges = match &info {
            Some(m) if current > 0 => m.ranges.clone(),
            _ => Vec::new(),
        };
        let cmd = match info {
            Some(m) => DpCommand::Multicast(Box::new(MemberGroup {
                name: group.to_owned(),
                ranges: m.ranges,
                members: m.members,
                keys: epochs.iter().map(|e| multicast_key(group, e)).collect(),
                current,
                rate_pps: m.rate_pps,
            })),
            None => DpCommand::MulticastEnd(group.to_owned()),
        };
        self.dataplane
            .send(cmd)
            .await
            .context("data plane stopped")?;
        self.route_multicast(group, ranges).await;
        Ok(())
    }

    /// Routes `ranges` of `group` into the tunnel, and no longer the
    /// ones it had. A route that cannot be changed is logged: senders
    /// that name the interface still reach the group.
    async fn route_multicast(&self, group: &str, ranges: Vec<Ipv4Net>) {
        let (before, others) = {
            let mut routed = self
                .multicast_routes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let before = if ranges.is_empty() {
                routed.remove(group).unwrap_or_default()
            } else {
                routed
                    .insert(group.to_owned(), ranges.clone())
                    .unwrap_or_default()
            };
            // A range that moved to another group stays routed for it.
            let others: Vec<Ipv4Net> = routed
                .iter()
                .filter(|(g, _)| g.as_str() != group)
                .flat_map(|(_, r)| r.iter().copied())
                .collect();
            (before, others)
        };
        let gone: Vec<Ipv4Net> = before
            .iter()
            .filter(|r| !ranges.contains(r) && !others.contains(r))
            .copied()
            .collect();
        let new: Vec<Ipv4Net> = ranges
            .iter()
            .filter(|r| !before.contains(r))
            .copied()
            .collect();
        if let Err(e) = tasuki_shell::netdev::remove_routes(&self.interface, &gone).await {
            tracing::warn!(group, error = %format!("{e:#}"), "cannot remove a group's multicast routes");
        }
        // Room for the envelope: the kernel fragments a larger datagram
        // to fit rather than the data plane dropping it.
        let mtu = usize::from(tasuki_core::TUNNEL_MTU).saturating_sub(
            tasuki_core::multicast::overhead(tasuki_core::multicast::MAX_SKIP),
        );
        let mtu = u32::try_from(mtu).unwrap_or(1280);
        if let Err(e) = tasuki_shell::netdev::add_routes_mtu(&self.interface, &new, mtu).await {
            tracing::warn!(group, error = %format!("{e:#}"), "cannot route a group's multicast into the tunnel");
        }
    }

    /// Shows the groups held in `status`.
    pub(crate) fn publish_groups(&self) {
        let held = self.with_groups(|g| g.views());
        self.session_info.send_modify(|s| s.groups = held);
    }
}
