//! Hub hierarchy (patent claim 6, fig. 4): a hub enrols into a parent hub
//! as a child that serves whole subnets, so that K hubs with their spokes
//! form one tree whose key relations grow as N + K.
//!
//! Each hub stays the key station of its own children only. Routes flow up
//! and down the tree: a child announces what its branch serves (its tunnel
//! networks, its routes, and what its own children were approved for); the
//! parent routes to a child only what an admin approved for it, and tells
//! each child (and each spoke) what the rest of the tree serves. A subnet
//! that overlaps one the hub already knows is refused with both names,
//! which also refuses a loop (a hub that joins its own descendant announces
//! its own networks, which it hears back from the parent).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::routing::SpokeId;

pub mod calls;

/// Most subnets one announcement may carry, per family.
pub const MAX_SERVED: usize = 512;

/// A set of IPv4 and IPv6 subnets: what a branch serves, or what the rest
/// of the tree serves.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedNets {
    /// IPv4 subnets.
    pub v4: Vec<Ipv4Net>,
    /// IPv6 subnets.
    pub v6: Vec<Ipv6Net>,
}

impl ServedNets {
    /// Both families' subnets, IPv4 first.
    pub fn nets(&self) -> impl Iterator<Item = IpNet> + '_ {
        let v4 = self.v4.iter().map(|n| IpNet::V4(*n));
        v4.chain(self.v6.iter().map(|n| IpNet::V6(*n)))
    }

    /// Every subnet written out, for views and logs.
    pub fn strings(&self) -> Vec<String> {
        self.nets().map(|n| n.to_string()).collect()
    }

    /// Whether it holds no subnet.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Whether `addr` lies in one of its subnets.
    pub fn contains(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => self.v4.iter().any(|n| n.contains(&a)),
            IpAddr::V6(a) => self.v6.iter().any(|n| n.contains(&a)),
        }
    }

    /// Whether every subnet of `other` lies inside one of ours.
    pub fn covers(&self, other: &ServedNets) -> bool {
        other.nets().all(|n| self.covers_net(n))
    }

    fn covers_net(&self, net: IpNet) -> bool {
        self.nets().any(|mine| mine.contains(&net))
    }

    /// The first pair of subnets, ours then theirs, that share an address.
    pub fn overlap(&self, other: &ServedNets) -> Option<(IpNet, IpNet)> {
        self.nets()
            .flat_map(|a| other.nets().map(move |b| (a, b)))
            .find(|(a, b)| a.contains(&b.network()) || b.contains(&a.network()))
    }

    /// Adds every subnet of `other` that is not in it yet.
    pub fn extend(&mut self, other: &ServedNets) {
        for n in &other.v4 {
            if !self.v4.contains(n) {
                self.v4.push(*n);
            }
        }
        for n in &other.v6 {
            if !self.v6.contains(n) {
                self.v6.push(*n);
            }
        }
    }

    /// Our subnets that are not in `other` (as written, not by overlap).
    pub fn minus(&self, other: &ServedNets) -> ServedNets {
        ServedNets {
            v4: self
                .v4
                .iter()
                .copied()
                .filter(|n| !other.v4.contains(n))
                .collect(),
            v6: self
                .v6
                .iter()
                .copied()
                .filter(|n| !other.v6.contains(n))
                .collect(),
        }
    }

    /// Only the subnets of ours that lie inside `within`.
    pub fn within(&self, within: &ServedNets) -> ServedNets {
        ServedNets {
            v4: self
                .v4
                .iter()
                .copied()
                .filter(|n| within.covers_net(IpNet::V4(*n)))
                .collect(),
            v6: self
                .v6
                .iter()
                .copied()
                .filter(|n| within.covers_net(IpNet::V6(*n)))
                .collect(),
        }
    }

    /// Only the subnets of ours that share no address with `other`.
    pub fn without_overlap(&self, other: &ServedNets) -> ServedNets {
        let clear = |n: IpNet| {
            !other
                .nets()
                .any(|o| o.contains(&n.network()) || n.contains(&o.network()))
        };
        ServedNets {
            v4: self
                .v4
                .iter()
                .copied()
                .filter(|n| clear(IpNet::V4(*n)))
                .collect(),
            v6: self
                .v6
                .iter()
                .copied()
                .filter(|n| clear(IpNet::V6(*n)))
                .collect(),
        }
    }

    /// Refuses what no hub may announce: too many subnets, the default
    /// route or a prefix shorter than /8, loopback, link-local, multicast,
    /// the unspecified network, two subnets of its own that overlap.
    pub fn check(&self) -> Result<(), HierarchyError> {
        if self.v4.len() > MAX_SERVED || self.v6.len() > MAX_SERVED {
            return Err(HierarchyError::TooMany {
                v4: self.v4.len(),
                v6: self.v6.len(),
            });
        }
        for net in self.nets() {
            if !routable(net) {
                return Err(HierarchyError::NotRoutable(net));
            }
        }
        let nets: Vec<IpNet> = self.nets().collect();
        for (i, a) in nets.iter().enumerate() {
            for b in &nets[i + 1..] {
                if a.contains(&b.network()) || b.contains(&a.network()) {
                    return Err(HierarchyError::SelfOverlap(*a, *b));
                }
            }
        }
        Ok(())
    }
}

/// Whether a hub may route `net` through a tunnel.
fn routable(net: IpNet) -> bool {
    if net.prefix_len() < 8 {
        return false;
    }
    match net {
        IpNet::V4(n) => {
            let a = n.network();
            !(a.is_loopback()
                || a.is_link_local()
                || a.is_multicast()
                || a.is_unspecified()
                || a.is_broadcast())
        }
        IpNet::V6(n) => {
            let a = n.network();
            let first = a.segments()[0];
            !(a.is_loopback() || a.is_multicast() || a.is_unspecified())
                && (first & 0xffc0) != 0xfe80
                && a.segments()[..6] != [0, 0, 0, 0, 0, 0xffff]
        }
    }
}

/// Why a change of the tree was refused; each says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HierarchyError {
    /// Over [`MAX_SERVED`] subnets in one family.
    #[error("an announcement carries at most {MAX_SERVED} subnets per family (got {v4} IPv4, {v6} IPv6)")]
    TooMany {
        /// IPv4 subnets announced.
        v4: usize,
        /// IPv6 subnets announced.
        v6: usize,
    },
    /// A subnet no tunnel routes.
    #[error("{0} cannot be routed through a tunnel (default route, prefixes shorter than /8, loopback, link-local, multicast)")]
    NotRoutable(IpNet),
    /// Two subnets of one announcement overlap.
    #[error("the announced subnets {0} and {1} overlap")]
    SelfOverlap(IpNet, IpNet),
    /// A subnet overlaps one that is served elsewhere in the tree.
    #[error("{net} overlaps {other_net}, which {owner} serves")]
    Overlap {
        /// The subnet asked for.
        net: IpNet,
        /// The subnet it overlaps.
        other_net: IpNet,
        /// Who serves that one ("this hub", "child hub b", "the parent's tree").
        owner: String,
    },
    /// No child hub by that name was invited.
    #[error("no child hub named {0:?} (invite one with `tasuki-hub hub invite NAME`)")]
    NoSuchChild(String),
    /// A child hub (or its invitation) has that name already.
    #[error("a child hub named {0:?} exists already")]
    NameTaken(String),
    /// The child announced nothing yet (it has not joined).
    #[error("child hub {0:?} has not joined yet: run `tasuki-hub join INVITATION` on it first")]
    NotJoined(String),
}

/// One child hub as its parent keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildHub {
    /// Its name: the name of the spoke it enrols as.
    pub name: String,
    /// The spoke id it enrolled as, once it joined.
    pub spoke: Option<SpokeId>,
    /// What it says its branch serves (at its enrolment, then whenever that changes).
    pub announced: ServedNets,
    /// What an admin approved for it (`hub approve`).
    pub approved: ServedNets,
    /// When it was invited (Unix seconds).
    pub invited_at: u64,
}

impl ChildHub {
    /// What the parent routes to it: the announced subnets inside the approved ones.
    pub fn routed(&self) -> ServedNets {
        self.announced.within(&self.approved)
    }

    /// Announced subnets that were not approved (not routed; `hub list` shows them).
    pub fn unapproved(&self) -> ServedNets {
        self.announced.minus(&self.routed())
    }
}

/// A hub's place in the tree: its child hubs, and what the rest of the
/// tree serves as its parent told it.
#[derive(Clone, Debug, Default)]
pub struct Hierarchy {
    children: BTreeMap<String, ChildHub>,
    upstream: ServedNets,
}

impl Hierarchy {
    /// A hub with these child hubs and no parent's routes yet.
    pub fn new(children: impl IntoIterator<Item = ChildHub>) -> Self {
        Self {
            children: children.into_iter().map(|c| (c.name.clone(), c)).collect(),
            upstream: ServedNets::default(),
        }
    }

    /// Its child hubs, by name.
    pub fn children(&self) -> impl Iterator<Item = &ChildHub> {
        self.children.values()
    }

    /// The child hub named `name`.
    pub fn child(&self, name: &str) -> Option<&ChildHub> {
        self.children.get(name)
    }

    /// The child hub that enrolled as spoke `id`.
    pub fn child_of_spoke(&self, id: SpokeId) -> Option<&ChildHub> {
        self.children.values().find(|c| c.spoke == Some(id))
    }

    /// A new child hub's record (not stored yet): refused when the name is taken.
    pub fn invite(&self, name: &str, now: u64) -> Result<ChildHub, HierarchyError> {
        if self.children.contains_key(name) {
            return Err(HierarchyError::NameTaken(name.to_owned()));
        }
        Ok(ChildHub {
            name: name.to_owned(),
            spoke: None,
            announced: ServedNets::default(),
            approved: ServedNets::default(),
            invited_at: now,
        })
    }

    /// The record of child `name` once it announced `announced` as spoke
    /// `spoke` (not stored yet): the announcement is checked on its own;
    /// what overlaps the tree is checked at approval, and nothing beyond
    /// the approved subnets is routed.
    pub fn announced(
        &self,
        name: &str,
        spoke: SpokeId,
        announced: ServedNets,
    ) -> Result<ChildHub, HierarchyError> {
        announced.check()?;
        let mut child = self
            .children
            .get(name)
            .cloned()
            .ok_or_else(|| HierarchyError::NoSuchChild(name.to_owned()))?;
        child.spoke = Some(spoke);
        child.announced = announced;
        Ok(child)
    }

    /// The record of child `name` with everything it announced approved
    /// (not stored yet): refused when a subnet overlaps what this hub
    /// serves itself (`own`), what another child is routed, or what the
    /// parent says the rest of the tree serves.
    pub fn approval(&self, name: &str, own: &ServedNets) -> Result<ChildHub, HierarchyError> {
        let child = self
            .children
            .get(name)
            .ok_or_else(|| HierarchyError::NoSuchChild(name.to_owned()))?;
        if child.spoke.is_none() || child.announced.is_empty() {
            return Err(HierarchyError::NotJoined(name.to_owned()));
        }
        let announced = &child.announced;
        let overlap = |other: &ServedNets, owner: String| match announced.overlap(other) {
            Some((net, other_net)) => Err(HierarchyError::Overlap {
                net,
                other_net,
                owner,
            }),
            None => Ok(()),
        };
        overlap(own, "this hub".into())?;
        // What another child was approved for stays its own even while it
        // announces less: its branch may grow back into it.
        for other in self.children.values().filter(|c| c.name != name) {
            let mut held = other.approved.clone();
            held.extend(&other.routed());
            overlap(&held, format!("child hub {:?}", other.name))?;
        }
        overlap(
            &self.upstream,
            "the rest of the tree (from the parent)".into(),
        )?;
        let mut child = child.clone();
        child.approved = child.announced.clone();
        Ok(child)
    }

    /// Takes a stored record of a child hub (new, announced, approved).
    pub fn put(&mut self, child: ChildHub) {
        self.children.insert(child.name.clone(), child);
    }

    /// Forgets child `name` (revoked, or its invitation removed).
    pub fn remove(&mut self, name: &str) -> Option<ChildHub> {
        self.children.remove(name)
    }

    /// What the parent says the rest of the tree serves.
    pub fn upstream(&self) -> &ServedNets {
        &self.upstream
    }

    /// Takes what the parent says the rest of the tree serves, without the
    /// subnets that overlap this hub's own (`own`) or a child's (a parent
    /// that sends us our own networks back must not pull them away from
    /// here); returns the subnets left out, for the log.
    pub fn set_upstream(&mut self, upstream: &ServedNets, own: &ServedNets) -> ServedNets {
        let mut ours = own.clone();
        for child in self.children.values() {
            ours.extend(&child.routed());
        }
        let kept = upstream.without_overlap(&ours);
        let dropped = upstream.minus(&kept);
        self.upstream = kept;
        dropped
    }

    /// Routes a spoke (or child hub) `spoke` is given besides the hub's
    /// own: every child's routed subnets but its own, and the rest of the tree.
    pub fn routes_for(&self, spoke: SpokeId) -> ServedNets {
        let mut routes = ServedNets::default();
        for child in self.children.values().filter(|c| c.spoke != Some(spoke)) {
            routes.extend(&child.routed());
        }
        routes.extend(&self.upstream);
        routes
    }

    /// What this hub announces to its parent: what it serves itself and
    /// what its children are routed.
    pub fn announcement(&self, own: &ServedNets) -> ServedNets {
        let mut all = own.clone();
        for child in self.children.values() {
            all.extend(&child.routed());
        }
        all
    }

    /// Each child hub's spoke id and routed subnets, for the data plane.
    pub fn child_routes(&self) -> Vec<(SpokeId, ServedNets)> {
        self.children
            .values()
            .filter_map(|c| Some((c.spoke?, c.routed())))
            .filter(|(_, nets)| !nets.is_empty())
            .collect()
    }
}

#[cfg(test)]
mod tests;
