//! Access policy at the hub: who may reach what (DESIGN.md, "Policy"), in
//! terms of users, groups, spokes, subnets and ports, enforced where the hub
//! decrypts packets.
//!
//! The policy is an allow list. In [`Mode::Open`] (the default of a new hub)
//! every packet the routing rules accept passes and the rules only wait. In
//! [`Mode::Enforce`] a packet passes only when a [`Rule`] allows it, or when
//! it answers a flow that a rule allowed (a reply: the [`FlowTable`] tracks
//! allowed flows the way a stateful firewall does).
//!
//! A packet from a spoke counts as coming from the spoke itself, from every
//! user logged in on it (the hub cannot tell which of them sent it) and from
//! every group that holds any of those. A rule that names a user or a group
//! as its target reaches the spokes those users are logged in on, and the
//! group's member spokes. [`AccessPolicy::compile`] resolves all of this
//! once, whenever logins, spokes, groups or rules change; [`AccessGate`]
//! then decides per packet without looking anything up by name.

mod gate;
mod ipv6_chain;
mod policy;
mod rules;

pub use gate::{AccessGate, Flow, FlowTable, PacketKind, MAX_FLOWS_PER_ORIGIN, MAX_FRAGMENTED};
pub use policy::{AccessPolicy, CompiledAccess, PairRule, PairRules, SpokeFacts};
pub use rules::{AccessError, Member, Mode, Proto, Rule, Selector, Service};

use crate::routing::SpokeId;

/// Most rules a policy holds.
pub const MAX_RULES: usize = 1024;
/// Most groups a policy holds.
pub const MAX_GROUPS: usize = 1024;
/// Most members one group holds.
pub const MAX_MEMBERS: usize = 10_000;
/// Most services one rule lists.
pub const MAX_SERVICES: usize = 64;
/// Most flows the hub tracks at once; past that, the oldest idle ones go.
pub const MAX_FLOWS: usize = 131_072;

/// Where the hub got a packet from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    /// Decrypted from this spoke's tunnel.
    Spoke(SpokeId),
    /// Read from the hub's TUN: the hub itself or a host behind it.
    Local,
}

#[cfg(test)]
mod tests;
