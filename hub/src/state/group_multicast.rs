//! Keyed groups' multicast at the hub (claim 11's bulletin board): the
//! ranges an admin gives a keyed group, stored; and, at every group tick,
//! the members online handed to the data plane (which fans members'
//! envelopes out to them) and told to every member (which seals for and
//! accepts from just them). A member that leaves is out of both at the
//! tick that sees it leave.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use tasuki_core::admin_calls::GroupMulticastSet;
use tasuki_core::audit::{AuditKind, AuditRecord};
use tasuki_core::control::{GroupMulticast, HubGroup, HubMessage};
use tasuki_core::multicast::{group_tag, FanoutGroup, DEFAULT_RATE_PPS};
use tasuki_core::routing::SpokeId;
use tasuki_shell::store::Write;

use super::*;

/// Each keyed group's multicast setting, by name.
pub(super) const GROUP_MULTICAST_TREE: &str = "group-multicast";
/// Most ranges one group owns.
const MAX_RANGES: usize = 16;
/// Highest rate an admin may set (packets per second per member).
const MAX_RATE_PPS: u32 = 1_000_000;

/// A keyed group's multicast as the admin set it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MulticastSetting {
    /// The ranges it owns.
    pub(crate) ranges: Vec<Ipv4Net>,
    /// Packets per second one member may send into them.
    pub(crate) rate_pps: u32,
}

/// What the data plane carries and the members were told, per group.
#[derive(Debug, Default)]
pub(crate) struct MulticastCarried {
    fanout: BTreeMap<String, FanoutGroup>,
    /// The message the members were last told, and who was told it on
    /// which session (a member that attached since is told again).
    told: BTreeMap<String, (GroupMulticast, BTreeMap<SpokeId, mpsc::Sender<HubMessage>>)>,
}

impl HubState {
    /// `tasuki-hub group multicast NAME …`: adds and takes away a keyed
    /// group's ranges, sets its rate; in effect at the next group tick.
    pub(crate) fn set_group_multicast(&mut self, r: &GroupMulticastSet, now: u64) -> Result<()> {
        let name = r.name.as_str();
        if !self.keyed.groups.contains_key(name) {
            return Err(StateError::WrongState(format!(
                "group {name:?} is not keyed; multicast is sealed under its key (tasuki-hub group key {name} on)"
            )));
        }
        let mut setting = self
            .keyed
            .multicast
            .get(name)
            .cloned()
            .unwrap_or(MulticastSetting {
                ranges: Vec::new(),
                rate_pps: DEFAULT_RATE_PPS,
            });
        for net in &r.remove {
            let Some(at) = setting.ranges.iter().position(|n| n == net) else {
                return Err(StateError::NotFound(format!(
                    "group {name} owns no range {net}"
                )));
            };
            setting.ranges.remove(at);
        }
        for net in &r.add {
            self.check_range(name, *net)?;
            if !setting.ranges.contains(net) {
                setting.ranges.push(*net);
            }
        }
        if setting.ranges.len() > MAX_RANGES {
            return Err(StateError::Invalid(format!(
                "a group owns at most {MAX_RANGES} ranges"
            )));
        }
        if let Some(rate) = r.rate_pps {
            if rate == 0 || rate > MAX_RATE_PPS {
                return Err(StateError::Invalid(format!(
                    "the rate is 1 to {MAX_RATE_PPS} packets per second, not {rate}"
                )));
            }
            setting.rate_pps = rate;
        }
        self.store_multicast(name, &setting)?;
        let ranges: Vec<String> = setting.ranges.iter().map(ToString::to_string).collect();
        let detail = format!(
            "group {name} multicast [{}] at {} packets/s per member",
            ranges.join(", "),
            setting.rate_pps
        );
        tracing::info!(group = name, ranges = ?ranges, rate = setting.rate_pps, "group multicast set");
        self.audit(AuditRecord::new(now, AuditKind::GroupKey).detail(detail));
        Ok(())
    }

    /// A range must be multicast and owned by no other group.
    fn check_range(&self, name: &str, net: Ipv4Net) -> Result<()> {
        let multicast: Ipv4Net = Ipv4Net::new(Ipv4Addr::new(224, 0, 0, 0), 4)
            .map_err(|e| StateError::Invalid(e.to_string()))?;
        if net.trunc() != net {
            return Err(StateError::Invalid(format!(
                "{net} has host bits set (did you mean {}?)",
                net.trunc()
            )));
        }
        if !multicast.contains(&net) {
            return Err(StateError::Invalid(format!(
                "{net} is not a multicast range (224.0.0.0/4)"
            )));
        }
        for (other, s) in &self.keyed.multicast {
            if let Some(o) = s
                .ranges
                .iter()
                .find(|o| o.contains(&net) || net.contains(*o))
            {
                if other != name {
                    return Err(StateError::Invalid(format!(
                        "{net} overlaps {o}, which group {other} owns"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Stores a group's setting (none left: its record goes).
    fn store_multicast(&mut self, name: &str, setting: &MulticastSetting) -> Result<()> {
        let key = name.as_bytes().to_vec();
        // A rate of its own is kept with no ranges too.
        let none = setting.ranges.is_empty() && setting.rate_pps == DEFAULT_RATE_PPS;
        let write = if none {
            Write::remove(GROUP_MULTICAST_TREE, key)
        } else {
            Write::put(GROUP_MULTICAST_TREE, key, &(name, setting))?
        };
        self.store.commit(&[write])?;
        if none {
            self.keyed.multicast.remove(name);
        } else {
            self.keyed
                .multicast
                .insert(name.to_owned(), setting.clone());
        }
        Ok(())
    }

    /// An unkeyed group loses its ranges too.
    pub(super) fn drop_group_multicast(&mut self, name: &str) -> Result<()> {
        if self.keyed.multicast.contains_key(name) {
            self.store.commit(&[Write::remove(
                GROUP_MULTICAST_TREE,
                name.as_bytes().to_vec(),
            )])?;
            self.keyed.multicast.remove(name);
        }
        self.sync_multicast(name);
        Ok(())
    }

    /// Hands the data plane the group's members online, and tells each
    /// member what changed (a member that attached again is told anew).
    pub(super) fn sync_multicast(&mut self, name: &str) {
        // Members by the schedule and by the membership now: a leaver is
        // out at once, even when the tick that ends it failed to store.
        let members = self.member_spokes(name);
        let holders: Vec<SpokeId> = self
            .keyed
            .groups
            .get(name)
            .map(|s| {
                s.scope()
                    .holders()
                    .filter(|h| members.contains(h))
                    .collect()
            })
            .unwrap_or_default();
        let Some(setting) = self
            .keyed
            .multicast
            .get(name)
            .filter(|s| !s.ranges.is_empty())
            .cloned()
        else {
            self.end_multicast(name);
            return;
        };
        let members: Vec<(SpokeId, Ipv4Addr)> = holders
            .iter()
            .filter_map(|h| self.registry.spoke(*h).map(|s| (*h, s.tunnel_addr)))
            .collect();
        let fanout = FanoutGroup {
            tag: group_tag(name),
            ranges: setting.ranges.clone(),
            members: members.clone(),
            rate_pps: setting.rate_pps,
        };
        if self.keyed.carried.fanout.get(name) != Some(&fanout) {
            self.command(DpCommand::Multicast(fanout.clone()));
            self.keyed.carried.fanout.insert(name.to_owned(), fanout);
        }
        let mut addrs: Vec<Ipv4Addr> = members.iter().map(|(_, a)| *a).collect();
        addrs.sort();
        let msg = GroupMulticast {
            group: name.to_owned(),
            ranges: setting.ranges,
            members: addrs,
            rate_pps: setting.rate_pps,
        };
        let sessions = &self.sessions;
        let (told_msg, told) = self
            .keyed
            .carried
            .told
            .entry(name.to_owned())
            .or_insert_with(|| (msg.clone(), BTreeMap::new()));
        if *told_msg != msg {
            *told_msg = msg.clone();
            told.clear();
        }
        told.retain(|id, tx| {
            holders.contains(id) && sessions.get(id).is_some_and(|s| s.same_channel(tx))
        });
        let due: Vec<SpokeId> = holders
            .iter()
            .filter(|h| !told.contains_key(h))
            .copied()
            .collect();
        for h in &due {
            if let Some(tx) = sessions.get(h) {
                told.insert(*h, tx.clone());
            }
        }
        self.tell_multicast(&due, &msg);
    }

    /// The group has no multicast (any more): the data plane stops
    /// carrying it, and the members who were told of it are told so.
    fn end_multicast(&mut self, name: &str) {
        if self.keyed.carried.fanout.remove(name).is_some() {
            self.command(DpCommand::MulticastEnd(group_tag(name)));
        }
        let Some((_, told)) = self.keyed.carried.told.remove(name) else {
            return;
        };
        let none = GroupMulticast {
            group: name.to_owned(),
            ranges: Vec::new(),
            members: Vec::new(),
            rate_pps: 0,
        };
        let told: Vec<SpokeId> = told.into_keys().collect();
        self.tell_multicast(&told, &none);
    }

    /// Queues the message for each (kept until there is room: it is
    /// sent once, not again and again like an epoch).
    fn tell_multicast(&mut self, to: &[SpokeId], msg: &GroupMulticast) {
        for id in to {
            self.tell(*id, HubMessage::Group(HubGroup::Multicast(msg.clone())));
        }
    }

    /// After an attach: a member of keyed groups with no multicast is told
    /// so (it may hold some from before); the others hear theirs at the
    /// next tick.
    pub(super) fn greet_multicast(&mut self, id: SpokeId, groups: &[String]) {
        for group in groups {
            if self
                .keyed
                .multicast
                .get(group)
                .is_some_and(|s| !s.ranges.is_empty())
            {
                continue;
            }
            let none = GroupMulticast {
                group: group.clone(),
                ranges: Vec::new(),
                members: Vec::new(),
                rate_pps: 0,
            };
            self.tell_multicast(&[id], &none);
        }
    }

    /// The group's ranges and rate, for its view.
    pub(super) fn multicast_view(&self, name: &str) -> (Vec<String>, u32) {
        self.keyed.multicast.get(name).map_or((Vec::new(), 0), |s| {
            (
                s.ranges.iter().map(ToString::to_string).collect(),
                s.rate_pps,
            )
        })
    }
}

/// The groups' multicast settings as stored.
pub(super) fn load_multicast(store: &Store) -> anyhow::Result<BTreeMap<String, MulticastSetting>> {
    Ok(store
        .all::<(String, MulticastSetting)>(GROUP_MULTICAST_TREE)?
        .into_iter()
        .collect())
}
