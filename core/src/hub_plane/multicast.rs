//! Group multicast in the hub's data plane: an envelope a member sent to
//! its group's range is copied to every other member online that the
//! sender did not reach directly ([`Fanout`]). The access rules do not
//! apply: membership of the keyed group is what lets it through, and the
//! hub cannot read it (it is sealed under the group's epoch end to end).

use std::net::Ipv4Addr;

use super::peer::{seal_to, Delivery};
use super::HubPlane;
use crate::datagram::TunSink;
use crate::multicast::{FanoutGroup, GroupTag};
use crate::routing::{DropReason, SpokeId};

impl<T: TunSink> HubPlane<T> {
    /// Carries a group's multicast: its ranges, members online and rate.
    pub fn set_multicast(&mut self, group: FanoutGroup) {
        tracing::debug!(members = group.members.len(), ranges = ?group.ranges, "group multicast carried");
        self.multicast.set(group);
    }

    /// Stops carrying a group's multicast.
    pub fn remove_multicast(&mut self, tag: &GroupTag) {
        self.multicast.remove(tag);
    }

    /// The packet of `len` bytes just opened from `from` is for the
    /// multicast address `dst`: copied to the group's other members.
    pub(super) fn fan_out(&mut self, from: SpokeId, len: usize, dst: Ipv4Addr) {
        let packet = self.io.to_tun.pending(len);
        let own = self.routes.spoke_addr(from).map(|a| a.octets());
        if own.is_none() || packet.get(12..16) != own.as_ref().map(|a| &a[..]) {
            *self.drops.entry(DropReason::ForgedSource).or_default() += 1;
            return;
        }
        let mut to = std::mem::take(&mut self.fan_to);
        to.clear();
        if let Err(reason) = self.multicast.plan(from, dst, packet, self.now_ms, &mut to) {
            *self.drops.entry(reason).or_default() += 1;
            self.fan_to = to;
            return;
        }
        let keys = (&*self.key, &self.limiter);
        for id in &to {
            match seal_to(self.peers.get_mut(id), packet, &mut self.io.out, keys) {
                Ok(Delivery::Sent) => self.counters.multicast += 1,
                Ok(Delivery::Held) => self.counters.queued += 1,
                Err(reason) => *self.drops.entry(reason).or_default() += 1,
            }
        }
        self.fan_to = to;
    }
}
