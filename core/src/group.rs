//! The hub's schedule of one keyed group's epochs (claim 11, fig. 18): a
//! [`ScopeSchedule`] whose holders are the group's member spokes that are
//! online, each epoch delivered sealed under the member's link epoch. A
//! member that leaves makes a new epoch due at once which it never gets;
//! a member that joins gets the epoch in use only. Members derive their
//! pairwise and multicast keys from the epoch ([`crate::group_keys`]).

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::control::Lifetime;
use crate::keys::KeyEpoch;
use crate::rotation::{RotationPolicy, Trigger, Usage};
use crate::routing::SpokeId;
use crate::scope_schedule::{ScopeMeta, ScopePlan, ScopeSchedule};
use crate::scope_seal::{open_as_holder, seal_for_holder};
use crate::seal::SealError;

/// A group epoch on its way to one member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDelivery {
    /// The group's name.
    pub group: String,
    /// The group epoch's number.
    pub epoch: u64,
    /// The member's link epoch it is sealed under.
    pub under: u64,
    /// The sealed epoch ([`seal_group`]).
    pub sealed: Vec<u8>,
    /// When the epoch ends, as the members count it.
    pub lifetime: Lifetime,
}

/// A file-name-safe tag of a group's name (the first 16 hex digits of its
/// SHA-256: names may hold `.` and `@`, key files may not), for the
/// names of its key files.
pub fn file_tag(group: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(group.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The group's name in its sealed boxes' associated data.
fn scope(group: &str) -> Vec<u8> {
    let mut a = b"tasuki group v1".to_vec();
    a.extend_from_slice(&(group.len() as u64).to_be_bytes());
    a.extend_from_slice(group.as_bytes());
    a
}

/// Seals epoch `epoch` of `group` for one member under `link`, its link
/// epoch: it opens only with that key, for that group and epoch number.
pub fn seal_group<R: RngCore + CryptoRng>(
    link: &KeyEpoch,
    group: &str,
    epoch: &KeyEpoch,
    rng: &mut R,
) -> Result<Vec<u8>, SealError> {
    seal_for_holder(link, &scope(group), epoch, rng)
}

/// Opens a delivery with `link`, the member's link epoch it names.
pub fn open_group(link: &KeyEpoch, delivery: &GroupDelivery) -> Result<KeyEpoch, SealError> {
    if link.number != delivery.under {
        return Err(SealError::NotPredecessor {
            sealed: delivery.epoch,
            under: delivery.under,
        });
    }
    open_as_holder(
        link,
        &scope(&delivery.group),
        delivery.epoch,
        &delivery.sealed,
    )
}

/// What one tick asks of the hub for a group: the schedule's plan (store
/// `issued` and the meta first, the notifications last), with its
/// deliveries sealed, to send in between.
#[derive(Debug, Default)]
pub struct GroupPlan {
    /// What the schedule decided (its `deliver` list is sealed below).
    pub walk: ScopePlan,
    /// Deliveries, each to its member.
    pub deliveries: Vec<(SpokeId, GroupDelivery)>,
}

/// One keyed group's epochs and where each online member stands.
#[derive(Clone, Debug)]
pub struct GroupSchedule {
    name: String,
    scope: ScopeSchedule,
}

impl GroupSchedule {
    /// A group keyed now, with its first epoch (to store, then deliver to
    /// the members as they join).
    ///
    /// `after` is the last number a keying of this group under the same
    /// name used (0: none): numbers go on from there, so a member that was
    /// offline meanwhile never mistakes a new epoch for one it holds.
    pub fn start<R: RngCore + CryptoRng>(
        name: &str,
        after: u64,
        now: u64,
        rng: &mut R,
    ) -> (Self, KeyEpoch) {
        let first = KeyEpoch::issue(after + 1, now, rng);
        let meta = ScopeMeta {
            current_since: now,
            ..ScopeMeta::default()
        };
        (Self::restore(name, vec![first.clone()], meta), first)
    }

    /// A schedule restored from stored epochs and meta.
    pub fn restore(name: &str, epochs: Vec<KeyEpoch>, meta: ScopeMeta) -> Self {
        Self {
            name: name.to_owned(),
            scope: ScopeSchedule::restore(epochs, meta),
        }
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The schedule the group's epochs walk (epochs, holders, meta).
    pub fn scope(&self) -> &ScopeSchedule {
        &self.scope
    }

    /// A member spoke came online or joined: it gets the epoch in use.
    pub fn join(&mut self, member: SpokeId) -> bool {
        self.scope.join(member)
    }

    /// A member spoke went offline: the others no longer wait for it.
    pub fn offline(&mut self, member: SpokeId) -> bool {
        self.scope.leave(member, false, Trigger::Admin)
    }

    /// A member spoke left the group (removed, its user gone, revoked):
    /// a new epoch at once, which it never gets.
    pub fn leave(&mut self, member: SpokeId) -> bool {
        let trigger = Trigger::LeftGroup(self.name.clone());
        self.scope.leave(member, true, trigger)
    }

    /// Asks for a rotation at the next tick.
    pub fn request(&mut self, trigger: Trigger) {
        self.scope.request(trigger);
    }

    /// One tick (see [`ScopeSchedule::tick`]); `links` gives each member's
    /// current link epoch (`None`: no session now, it gets nothing yet).
    pub fn tick<'a, R: RngCore + CryptoRng>(
        &mut self,
        policy: &RotationPolicy,
        now: u64,
        total: Usage,
        links: impl Fn(SpokeId) -> Option<&'a KeyEpoch>,
        rng: &mut R,
    ) -> Result<GroupPlan, SealError> {
        let plan = self
            .scope
            .tick(policy, now, total, |m| links(m).is_some(), rng);
        let name = &self.name;
        let deliveries = plan.seal_each(&self.scope, links, |link, epoch| {
            Ok(GroupDelivery {
                group: name.clone(),
                epoch: epoch.number,
                under: link.number,
                sealed: seal_group(link, name, epoch, rng)?,
                lifetime: policy.lifetime(),
            })
        })?;
        Ok(GroupPlan {
            walk: plan,
            deliveries,
        })
    }

    /// `member` reported epoch `k` stored.
    pub fn on_receipt(&mut self, member: SpokeId, k: u64) -> bool {
        self.scope.on_receipt(member, k)
    }

    /// `member` reported it switched to epoch `k` (stored first).
    pub fn on_switched(&mut self, member: SpokeId, k: u64, now: u64, grace: u64) -> bool {
        self.scope.on_switched(member, k, now, grace)
    }

    /// Removes and returns the epochs whose grace has passed.
    pub fn take_erasable(&mut self, now: u64) -> Vec<u64> {
        self.scope.take_erasable(now)
    }
}

#[cfg(test)]
#[path = "group_sim.rs"]
mod sim;
