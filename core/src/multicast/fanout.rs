//! The hub's side of group multicast: which members get a copy of an
//! envelope a member sent, within the sender's rate.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::{Envelope, GroupTag, RateBucket};
use crate::routing::{DropReason, SpokeId};

/// One keyed group's multicast as the hub's data plane carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FanoutGroup {
    /// The group's tag ([`super::group_tag`]).
    pub tag: GroupTag,
    /// The multicast ranges it owns.
    pub ranges: Vec<Ipv4Net>,
    /// Its members online: link ids and tunnel addresses.
    pub members: Vec<(SpokeId, Ipv4Addr)>,
    /// Packets per second one member may send into it.
    pub rate_pps: u32,
}

/// Every group with multicast ranges, and each sender's rate.
#[derive(Debug, Default)]
pub struct Fanout {
    groups: Vec<FanoutGroup>,
    buckets: HashMap<(GroupTag, SpokeId), RateBucket>,
}

impl Fanout {
    /// Carries `group` (replacing what it carried under the same tag).
    pub fn set(&mut self, group: FanoutGroup) {
        let tag = group.tag;
        self.buckets
            .retain(|(t, id), _| *t != tag || group.members.iter().any(|(m, _)| m == id));
        match self.groups.iter_mut().find(|g| g.tag == tag) {
            Some(g) => *g = group,
            None => self.groups.push(group),
        }
    }

    /// Stops carrying the group with this tag.
    pub fn remove(&mut self, tag: &GroupTag) {
        self.groups.retain(|g| g.tag != *tag);
        self.buckets.retain(|(t, _), _| t != tag);
    }

    /// Whether no group owns a multicast range.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// The members that get a copy of `packet`, an envelope spoke `from`
    /// sent to a multicast address: every other member online the sender
    /// did not reach directly, pushed onto `to`. Refused when no group
    /// owns the address, the packet is no envelope of that group, the
    /// sender is no member, or it is over its rate.
    pub fn plan(
        &mut self,
        from: SpokeId,
        dst: Ipv4Addr,
        packet: &[u8],
        now_ms: u64,
        to: &mut Vec<SpokeId>,
    ) -> Result<(), DropReason> {
        let group = self
            .groups
            .iter()
            .find(|g| g.ranges.iter().any(|r| r.contains(&dst)))
            .ok_or(DropReason::MulticastNoGroup)?;
        let envelope = Envelope::parse(packet)?;
        if envelope.tag != group.tag {
            return Err(DropReason::MulticastForged);
        }
        if !group.members.iter().any(|(id, _)| *id == from) {
            return Err(DropReason::MulticastNotMember);
        }
        let rate = group.rate_pps;
        let bucket = self
            .buckets
            .entry((group.tag, from))
            .or_insert_with(|| RateBucket::new(rate, now_ms));
        if !bucket.take(rate, now_ms) {
            return Err(DropReason::MulticastOverRate);
        }
        to.extend(
            group
                .members
                .iter()
                .filter(|(id, addr)| *id != from && !envelope.skips(*addr))
                .map(|(id, _)| *id),
        );
        Ok(())
    }
}
