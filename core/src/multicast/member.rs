//! A member spoke's side of group multicast: sealing what its TUN sends
//! into a group's range, opening what other members sent.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::{group_tag, seal, Envelope, GroupTag, RateBucket, ReplayWindow, Sealing, MAX_SKIP};
use crate::keys::KeyEpoch;
use crate::routing::DropReason;

/// One keyed group's multicast as a member holds it.
#[derive(Clone, Debug)]
pub struct MemberGroup {
    /// The group.
    pub name: String,
    /// The multicast ranges it owns.
    pub ranges: Vec<Ipv4Net>,
    /// Its members online, by tunnel address (this spoke's among them).
    pub members: Vec<Ipv4Addr>,
    /// The multicast keys of the epochs held, numbered as the epochs
    /// ([`crate::group_keys::multicast_key`]).
    pub keys: Vec<KeyEpoch>,
    /// The epoch in use for sending (0: none yet).
    pub current: u64,
    /// Packets per second this member may send into it.
    pub rate_pps: u32,
}

/// Where a sealed envelope goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outgoing {
    /// Its length (it waits in the caller's buffer).
    pub len: usize,
    /// Members on a direct path, each sent a copy straight.
    pub direct: Vec<Ipv4Addr>,
    /// Whether the hub must fan it out to the other members.
    pub via_hub: bool,
}

/// The groups with multicast ranges this spoke is a member of.
#[derive(Debug, Default)]
pub struct Membership {
    own: Option<Ipv4Addr>,
    /// This run's nonce; `None` until [`Membership::seed`]: nothing is
    /// sealed before (a nonce must never repeat under one key).
    boot: Option<[u8; 12]>,
    counter: u64,
    groups: HashMap<GroupTag, MemberGroup>,
    windows: HashMap<(GroupTag, Ipv4Addr, u64), ReplayWindow>,
    buckets: HashMap<GroupTag, RateBucket>,
}

impl Membership {
    /// No groups yet, and nothing sealed until [`Self::seed`]ed.
    pub fn new() -> Self {
        Self::default()
    }

    /// What makes this run's nonces its own: `boot` is random, and the
    /// counter starts above `first_counter` (the wall clock's
    /// microseconds, so a restarted sender is not taken for a replay).
    pub fn seed(&mut self, boot: [u8; 12], first_counter: u64) {
        self.boot = Some(boot);
        self.counter = self.counter.max(first_counter);
    }

    /// This spoke's tunnel address.
    pub fn set_own(&mut self, own: Ipv4Addr) {
        self.own = Some(own);
    }

    /// Holds `group` (replacing what was held under its name): its keys,
    /// ranges and members. The replay windows of epochs no longer held are
    /// forgotten; a sender's are kept while their epoch is held, online or
    /// not (what it sent before is never taken again).
    pub fn set(&mut self, group: MemberGroup) {
        let tag = group_tag(&group.name);
        self.windows
            .retain(|(t, _, epoch), _| *t != tag || group.keys.iter().any(|k| k.number == *epoch));
        self.groups.insert(tag, group);
    }

    /// Forgets `group` (no member any more): its keys go.
    pub fn remove(&mut self, group: &str) {
        let tag = group_tag(group);
        self.groups.remove(&tag);
        self.windows.retain(|(t, _, _), _| *t != tag);
        self.buckets.remove(&tag);
    }

    /// The other members of the group that owns `dst`.
    pub fn members_of(&self, dst: Ipv4Addr) -> Vec<Ipv4Addr> {
        self.groups
            .values()
            .find(|g| g.ranges.iter().any(|r| r.contains(&dst)))
            .map(|g| {
                g.members
                    .iter()
                    .copied()
                    .filter(|m| Some(*m) != self.own)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every group held, by name.
    pub fn groups(&self) -> impl Iterator<Item = &MemberGroup> {
        self.groups.values()
    }

    /// Whether no group is held.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Seals `packet` (to a multicast address) into `out` for its group:
    /// where the envelope goes, with `is_direct` telling which members
    /// are on a direct path now.
    pub fn seal(
        &mut self,
        packet: &[u8],
        dst: Ipv4Addr,
        now_ms: u64,
        is_direct: impl Fn(Ipv4Addr) -> bool,
        out: &mut [u8],
    ) -> Result<Outgoing, DropReason> {
        let own = self.own.ok_or(DropReason::MulticastNoGroup)?;
        let boot = self.boot.ok_or(DropReason::MulticastNoGroup)?;
        let (tag, group) = self
            .groups
            .iter()
            .find(|(_, g)| g.ranges.iter().any(|r| r.contains(&dst)))
            .ok_or(DropReason::MulticastNoGroup)?;
        let key = group
            .keys
            .iter()
            .find(|k| k.number == group.current && group.current > 0)
            .ok_or(DropReason::MulticastEpoch)?;
        let rate = group.rate_pps;
        let bucket = self
            .buckets
            .entry(*tag)
            .or_insert_with(|| RateBucket::new(rate, now_ms));
        if !bucket.take(rate, now_ms) {
            return Err(DropReason::MulticastOverRate);
        }
        // What every receiver would refuse is not sent: another source,
        // or a sender the hub has not listed yet.
        if packet.get(12..16) != Some(&own.octets()[..]) {
            return Err(DropReason::MulticastForged);
        }
        if !group.members.contains(&own) {
            return Err(DropReason::MulticastNotMember);
        }
        let others: Vec<Ipv4Addr> = group
            .members
            .iter()
            .copied()
            .filter(|m| *m != own)
            .collect();
        let direct: Vec<Ipv4Addr> = others
            .iter()
            .copied()
            .filter(|m| is_direct(*m))
            .take(MAX_SKIP)
            .collect();
        self.counter += 1;
        let sealing = Sealing {
            sender: own,
            tag: *tag,
            epoch: key.number,
            counter: self.counter,
            boot,
            skip: &direct,
        };
        let len = seal(&key.key, &sealing, packet, out)?;
        Ok(Outgoing {
            len,
            via_hub: others.len() > direct.len(),
            direct,
        })
    }

    /// Opens an envelope another member sent (through the hub or
    /// straight) into `out`: the multicast packet's length. Refused unless
    /// it is from a member online, into one of the group's ranges, sealed
    /// under an epoch held, and not seen before.
    pub fn open(&mut self, envelope: &[u8], out: &mut [u8]) -> Result<usize, DropReason> {
        let env = Envelope::parse(envelope)?;
        let group = self
            .groups
            .get(&env.tag)
            .ok_or(DropReason::MulticastNoGroup)?;
        if Some(env.sender) == self.own || !group.members.contains(&env.sender) {
            return Err(DropReason::MulticastNotMember);
        }
        if !group.ranges.iter().any(|r| r.contains(&env.dst)) {
            return Err(DropReason::MulticastForged);
        }
        let key = group
            .keys
            .iter()
            .find(|k| k.number == env.epoch)
            .ok_or(DropReason::MulticastEpoch)?;
        let len = env.open(&key.key, out)?;
        let window = self
            .windows
            .entry((env.tag, env.sender, env.epoch))
            .or_default();
        if !window.accept(env.counter) {
            return Err(DropReason::MulticastReplayed);
        }
        Ok(len)
    }
}
