//! The control messages of keyed groups (claim 11): what the hub tells a
//! member spoke of a group's epochs and multicast, and what the member
//! reports back. They travel inside [`crate::control`]'s messages.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// A member spoke's reports on its keyed groups' epochs (claim 11).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpokeGroup {
    /// The member stored (flushed) the group's epoch `epoch`.
    Receipt {
        /// The group.
        group: String,
        /// The epoch.
        epoch: u64,
    },
    /// The member uses the group's epoch `epoch` now (stored first).
    Switched {
        /// The group.
        group: String,
        /// The epoch.
        epoch: u64,
    },
}

/// The hub's messages to one member spoke of a keyed group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HubGroup {
    /// A group epoch sealed under the member's link epoch (store it, then
    /// send [`SpokeGroup::Receipt`]); re-sent until receipted.
    Offer(crate::group::GroupDelivery),
    /// Use epoch `epoch` now (every member holds it); every member is on
    /// `settled` already, so older epochs go a grace after this. Re-sent
    /// until [`SpokeGroup::Switched`] says so.
    Switch {
        /// The group.
        group: String,
        /// The epoch to use.
        epoch: u64,
        /// The epoch every member uses already.
        settled: u64,
    },
    /// This spoke is no member of the group any more, or the group is no
    /// longer keyed: erase every epoch of it.
    Ended {
        /// The group.
        group: String,
    },
    /// After an attach: the keyed groups this spoke is a member of; it
    /// erases every other group it holds (it may have left one, or one may
    /// have been unkeyed, while it was offline).
    Only {
        /// The keyed groups it is a member of.
        groups: Vec<String>,
    },
    /// The group's multicast: sent after an attach and whenever its ranges
    /// or members online change. No ranges: the group has none (any
    /// held before are gone).
    Multicast(GroupMulticast),
}

/// A keyed group's multicast as its members need it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMulticast {
    /// The group.
    pub group: String,
    /// The multicast ranges it owns.
    pub ranges: Vec<Ipv4Net>,
    /// Its members online, by tunnel address (the receiver among them).
    pub members: Vec<Ipv4Addr>,
    /// Packets per second one member may send into it.
    pub rate_pps: u32,
}
