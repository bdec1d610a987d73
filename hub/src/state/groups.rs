//! Keyed groups at the hub (claim 11): which groups have their own key
//! epochs, how each group's epochs and meta are stored and erased, and the
//! admin's switch. The groups' tick and their members' reports are in
//! [`super::group_tick`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use tasuki_core::admin_calls::GroupInterval;
use tasuki_core::audit::{AuditKind, AuditRecord};
use tasuki_core::group::GroupSchedule;
use tasuki_core::keys::{EpochRecord, KeyEpoch};
use tasuki_core::scope_schedule::ScopeMeta;
use tasuki_shell::store::Write;

use super::*;

/// Each keyed group's [`ScopeMeta`], by name.
pub(super) const GROUP_KEYS_TREE: &str = "group-keys";
/// Each group epoch's record (its key is in the vault), by group and number.
pub(super) const GROUP_EPOCHS_TREE: &str = "group-epochs";
/// Keyed groups' own rotation intervals (seconds, `None`: off), by name.
pub(super) const GROUP_INTERVALS_TREE: &str = "group-intervals";
/// The last epoch number of each group that was keyed and no longer is,
/// by name: keyed again, its numbers go on from there.
pub(super) const GROUP_LAST_TREE: &str = "group-last-numbers";

/// The vault name of a group epoch's key.
pub(super) fn group_vault_name(group: &str, epoch: u64) -> String {
    format!("group-{}-{epoch}", tasuki_core::group::file_tag(group))
}

/// A group epoch's key in the group-epochs tree.
fn group_epoch_key(group: &str, epoch: u64) -> Vec<u8> {
    let mut k = group.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&epoch.to_be_bytes());
    k
}

/// Counts of what members sent about groups that the hub would not take.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct GroupCounters {
    /// Reports about a group the hub does not key, or from a non-member.
    pub(crate) unknown: u64,
    /// Group epochs issued after the first (rotations, leaves).
    pub(crate) rotations: u64,
}

/// What the hub keeps for keyed groups.
#[derive(Debug, Default)]
pub(crate) struct Keyed {
    /// Every keyed group's schedule, by name.
    pub(super) groups: BTreeMap<String, GroupSchedule>,
    /// What was not taken, and how many rotations.
    pub(crate) counters: GroupCounters,
    /// Groups whose rotation interval is their own (`None`: off).
    pub(super) intervals: BTreeMap<String, Option<u64>>,
    /// The last epoch number of groups no longer keyed.
    pub(super) last_numbers: BTreeMap<String, u64>,
    /// Members that stopped answering a group's deliveries, not waited
    /// for (nor given its epochs) until they attach again.
    pub(super) stalled: BTreeSet<(String, SpokeId)>,
    /// Sessions told, once after they attached, to erase the keyed groups
    /// they are no member of (they may have left while offline).
    /// (On which session: one that attached again is greeted again.)
    pub(super) greeted: HashMap<SpokeId, tokio::sync::mpsc::Sender<HubMessage>>,
    /// Keyed groups' multicast ranges and rates, by name.
    pub(super) multicast: BTreeMap<String, super::group_multicast::MulticastSetting>,
    /// What the data plane carries of them and the members were told.
    pub(super) carried: super::group_multicast::MulticastCarried,
}

impl HubState {
    /// `tasuki-hub group key NAME on|off`: gives a group its own epochs
    /// (the first is stored now and reaches the members at the next tick),
    /// or ends them: every member is told to erase them, and so does the
    /// hub.
    pub(crate) fn set_group_key(
        &mut self,
        name: &str,
        on: bool,
        interval: Option<GroupInterval>,
        now: u64,
    ) -> Result<bool> {
        if !self.access.groups.contains_key(name) {
            return Err(StateError::NotFound(format!("no group named {name:?}")));
        }
        if let Some(i) = interval.filter(|_| on) {
            self.set_group_interval(name, i)?;
        }
        let keyed = self.keyed.groups.contains_key(name);
        if on == keyed {
            return Ok(false);
        }
        if on {
            let after = self.keyed.last_numbers.get(name).copied().unwrap_or(0);
            let (sched, first) = GroupSchedule::start(name, after, now, &mut rand_core::OsRng);
            self.commit_group_issue(&sched, Some(&first))?;
            self.keyed.groups.insert(name.to_owned(), sched);
            tracing::info!(
                group = name,
                "group keyed: its first epoch goes to the members"
            );
        } else {
            self.unkey_group(name)?;
        }
        self.audit(AuditRecord::new(now, AuditKind::GroupKey).detail(format!(
            "group {name} keyed {}",
            if on { "on" } else { "off" }
        )));
        Ok(true)
    }

    /// A group's own rotation interval, stored, or the hub-wide one again.
    fn set_group_interval(&mut self, name: &str, interval: GroupInterval) -> Result<()> {
        let own = match interval {
            GroupInterval::HubWide => None,
            GroupInterval::Off => Some(None),
            GroupInterval::Every(secs) => Some(Some(secs.max(1))),
        };
        let key = name.as_bytes().to_vec();
        let write = match own {
            Some(i) => Write::put(GROUP_INTERVALS_TREE, key, &(name, i))?,
            None => Write::remove(GROUP_INTERVALS_TREE, key),
        };
        self.store.commit(&[write])?;
        match own {
            Some(i) => self.keyed.intervals.insert(name.to_owned(), i),
            None => self.keyed.intervals.remove(name),
        };
        Ok(())
    }

    /// The rotation policy a group's epochs follow: the hub-wide one, with
    /// the group's own interval if it has one.
    pub(super) fn group_policy(&self, name: &str) -> tasuki_core::rotation::RotationPolicy {
        let mut policy = self.policy.clone();
        if let Some(i) = self.keyed.intervals.get(name) {
            policy.interval_secs = *i;
        }
        policy
    }

    /// `tasuki-hub key rotate --group NAME`: the group's next epoch at its
    /// next tick (after one on its way completes).
    pub(crate) fn request_group_rotation(&mut self, name: &str) -> Result<()> {
        let sched = self.keyed.groups.get_mut(name).ok_or_else(|| {
            StateError::NotFound(format!(
                "group {name:?} is not keyed (tasuki-hub group key {name} on)"
            ))
        })?;
        sched.request(tasuki_core::rotation::Trigger::Admin);
        Ok(())
    }

    /// At start: keyed groups whose group is gone (a removal that stopped
    /// half way) have their epochs erased.
    pub(super) fn unkey_orphan_groups(&mut self) {
        let orphans: Vec<String> = self
            .keyed
            .groups
            .keys()
            .filter(|g| !self.access.groups.contains_key(*g))
            .cloned()
            .collect();
        for name in orphans {
            match self.unkey_group(&name) {
                Ok(()) => tracing::info!(group = name, "the keys of a removed group are erased"),
                Err(e) => {
                    tracing::warn!(group = name, error = %format!("{e:#}"), "the keys of a removed group cannot be erased yet")
                }
            }
        }
    }

    /// Ends a group's epochs: the records and keys go, and every member
    /// that holds some is told.
    pub(crate) fn unkey_group(&mut self, name: &str) -> Result<()> {
        let Some(sched) = self.keyed.groups.get(name) else {
            return Ok(());
        };
        let epochs: Vec<u64> = sched.scope().epochs().iter().map(|e| e.number).collect();
        let holders: Vec<SpokeId> = sched.scope().holders().collect();
        let last = sched.scope().latest().max(sched.scope().meta().notified);
        self.store.commit(&[Write::put(
            GROUP_LAST_TREE,
            name.as_bytes().to_vec(),
            &(name, last),
        )?])?;
        self.keyed.last_numbers.insert(name.to_owned(), last);
        self.erase_group_epochs(name, &epochs, None)?;
        self.keyed.groups.remove(name);
        self.drop_group_multicast(name)?;
        self.end_pairs_via(name, None, tasuki_shell::unix_now());
        if self.keyed.intervals.contains_key(name) {
            self.set_group_interval(name, GroupInterval::HubWide)?;
        }
        for h in holders {
            self.tell_group_ended(h, name);
        }
        Ok(())
    }

    /// Stores a group's new epoch (key in the vault, flushed) with its
    /// meta; on failure the key file is erased again.
    pub(super) fn commit_group_issue(
        &self,
        sched: &GroupSchedule,
        issued: Option<&KeyEpoch>,
    ) -> Result<()> {
        let name = sched.name();
        let at = super::scope_store::ScopeRecords {
            epochs_tree: GROUP_EPOCHS_TREE,
            epoch_key: &|k| group_epoch_key(name, k),
            vault_name: &|k| group_vault_name(name, k),
            meta: Write::put(
                GROUP_KEYS_TREE,
                name.as_bytes().to_vec(),
                &(name, sched.scope().meta()),
            )?,
            what: format!("group {name}"),
        };
        self.commit_scope_issue(at, issued.map(|e| (e, (name, e.record()))))
    }

    /// Erases some of a group's epochs: the records (with the meta as it
    /// is now, when the group stays keyed) first, then the keys.
    pub(super) fn erase_group_epochs(
        &self,
        name: &str,
        epochs: &[u64],
        meta: Option<&ScopeMeta>,
    ) -> Result<()> {
        let mut writes: Vec<Write<'_>> = epochs
            .iter()
            .map(|k| Write::remove(GROUP_EPOCHS_TREE, group_epoch_key(name, *k)))
            .collect();
        writes.push(match meta {
            Some(m) => Write::put(
                GROUP_KEYS_TREE,
                name.as_bytes().to_vec(),
                &(name.to_owned(), m.clone()),
            )?,
            None => Write::remove(GROUP_KEYS_TREE, name.as_bytes().to_vec()),
        });
        self.store.commit(&writes)?;
        for k in epochs {
            self.erase_group_key(name, *k);
        }
        Ok(())
    }

    /// Erases one group key file; an error is logged (the next start
    /// erases a key file no record names).
    fn erase_group_key(&self, name: &str, epoch: u64) {
        if let Err(e) = self.vault.erase(&group_vault_name(name, epoch)) {
            tracing::error!(group = name, epoch, error = %format!("{e:#}"), "cannot erase a group key; the next start erases it");
        }
    }
}

/// The keyed groups as stored: every group epoch whose key is in the
/// vault (their vault names are added to `named`), with its group's meta.
pub(super) fn load_keyed(
    store: &Store,
    vault: &KeyVault,
    named: &mut HashSet<String>,
) -> anyhow::Result<Keyed> {
    let mut metas: BTreeMap<String, ScopeMeta> = store.all(GROUP_KEYS_TREE)?.into_iter().collect();
    let mut epochs: BTreeMap<String, Vec<KeyEpoch>> = BTreeMap::new();
    for (group, record) in store.all::<(String, EpochRecord)>(GROUP_EPOCHS_TREE)? {
        let name = group_vault_name(&group, record.number);
        match vault.get(&name)? {
            Some(key) => {
                named.insert(name);
                epochs
                    .entry(group)
                    .or_default()
                    .push(KeyEpoch::from_record(record, key));
            }
            None => {
                tracing::error!(
                    group,
                    epoch = record.number,
                    "the key of a stored group epoch is missing; skipping it"
                )
            }
        }
    }
    let groups: BTreeMap<String, GroupSchedule> = metas
        .iter_mut()
        .map(|(name, meta)| {
            let list = epochs.remove(name).unwrap_or_default();
            let sched = GroupSchedule::restore(name, list, std::mem::take(meta));
            (name.clone(), sched)
        })
        .collect();
    if !groups.is_empty() {
        tracing::info!(groups = groups.len(), "keyed groups restored");
    }
    let intervals = store
        .all::<(String, Option<u64>)>(GROUP_INTERVALS_TREE)?
        .into_iter()
        .collect();
    let last_numbers = store
        .all::<(String, u64)>(GROUP_LAST_TREE)?
        .into_iter()
        .collect();
    // A group unkeyed half way (its ranges outlived its keys) has none.
    let multicast = super::group_multicast::load_multicast(store)?
        .into_iter()
        .filter(|(name, _)| groups.contains_key(name))
        .collect();
    Ok(Keyed {
        groups,
        intervals,
        last_numbers,
        multicast,
        ..Keyed::default()
    })
}
