//! Keyed groups in the spoke's control loop: carries out what
//! [`SpokeGroups`] asks (stores first, then the reports to the hub) and
//! shows what is held in `status`.

use tasuki_core::control::{HubGroup, SpokeMessage};
use tasuki_core::spoke_groups::{GroupAction, SpokeGroups};
use tasuki_core::spoke_session::SpokeSession;

use crate::control::Control;

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
    pub(crate) fn carry_out_groups(&self, session: &mut SpokeSession, now: u64) {
        let mut changed = false;
        while let Some(action) = self.with_groups(SpokeGroups::poll_action) {
            changed = true;
            match action {
                GroupAction::Send(msg) => session.send_other(now, SpokeMessage::Group(msg)),
                GroupAction::Store { group, epoch } => {
                    match self.store.save_group_epoch(&group, &epoch) {
                        Ok(()) => {
                            tracing::info!(group, epoch = epoch.number, "group epoch received");
                            self.with_groups(|g| g.stored(group.clone(), epoch));
                            self.feed_group(&group);
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
                }
            }
        }
        if changed {
            self.publish_groups();
        }
    }

    /// Shows the groups held in `status`.
    pub(crate) fn publish_groups(&self) {
        let held = self.with_groups(|g| g.views());
        self.session_info.send_modify(|s| s.groups = held);
    }
}
