//! The access policy at the hub: its store record, the admin's edits, and
//! the compiled form the data plane enforces, kept current as spokes come
//! and go and users log in and out.

use std::sync::Arc;

use tasuki_core::access::{
    AccessError, AccessPolicy, CompiledAccess, Flow, Member, Origin, Service, SpokeFacts,
};
use tasuki_core::admin_api::{AccessCheckView, AccessView};
use tasuki_core::audit::{AuditKind, AuditRecord};
use tasuki_core::registry::SpokeState;
use tasuki_core::rotation::Trigger;
use tasuki_core::routing::SpokeId;
use tasuki_shell::store::Write;

use super::*;

/// The access policy's entry in the settings tree.
pub(super) const ACCESS_KEY: &[u8] = b"access";

impl HubState {
    /// Whether a rule or a group names this user.
    pub(crate) fn access_names_user(&self, id: &str) -> bool {
        self.access.names_user(id)
    }

    /// The policy, rules numbered as `access remove` takes them.
    pub(crate) fn access_view(&self) -> AccessView {
        let mut view = AccessView::of(&self.access);
        let mut keys = self.group_key_views();
        for g in &mut view.groups {
            g.key = keys.remove(&g.name);
        }
        view
    }

    /// Applies an admin's edit to the access policy: stored (and flushed)
    /// before it takes effect, audited, then enforced by the data plane.
    /// A refused or unstored edit changes nothing.
    /// `edit` says in words what it did, for the audit log.
    pub(crate) fn edit_access(
        &mut self,
        now: u64,
        edit: impl FnOnce(&mut AccessPolicy) -> Result<String, AccessError>,
    ) -> Result<AccessView> {
        let mut changed = self.access.clone();
        let what = edit(&mut changed)?;
        self.store
            .commit(&[Write::put(SETTINGS_TREE, ACCESS_KEY, &changed)?])
            .map_err(|e| e.context(format!("access change ({what}) not stored")))?;
        self.access = changed;
        tracing::info!(change = %what, mode = self.access.mode.name(), "access policy changed");
        self.audit(AuditRecord::new(now, AuditKind::AccessChange).detail(what));
        self.push_access();
        self.refresh_pair_rules(now);
        self.ask_pairs_again();
        self.recheck_approvals(now);
        // Who approves may have changed with the groups.
        self.announce_approvals();
        Ok(self.access_view())
    }

    /// Whether the policy lets a flow from `from` (`spoke:NAME` or an
    /// address) to `to` through, and which rules do.
    pub(crate) fn access_check(
        &self,
        from: &str,
        to: std::net::IpAddr,
        service: &Service,
    ) -> Result<AccessCheckView> {
        let mut notes = Vec::new();
        let spoke = match from.strip_prefix("spoke:") {
            Some(name) => Some(self.registry.spoke_by_name(name).ok_or_else(|| {
                tasuki_core::registry::RegistryError::NoSuchSpoke(name.to_owned())
            })?),
            None => {
                let addr: std::net::IpAddr = from.parse().map_err(|_| {
                    StateError::Invalid(format!(
                        "--from {from:?}: expected spoke:NAME or an address"
                    ))
                })?;
                self.registry.spokes().find(|s| {
                    let own = match addr {
                        std::net::IpAddr::V4(a) => s.tunnel_addr == a,
                        std::net::IpAddr::V6(a) => self.registry.spoke_addr6(s) == Some(a),
                    };
                    own && !s.state.is_dead()
                })
            }
        };
        let (origin, src) = match spoke {
            Some(s) => {
                if s.state != SpokeState::Active {
                    notes.push(format!(
                        "spoke {} is {}: it carries no traffic",
                        s.name,
                        s.state.name()
                    ));
                } else if !self.carries(s.id) {
                    notes.push(format!(
                        "spoke {} carries no traffic now: no user allowed on it is logged in",
                        s.name
                    ));
                }
                let src = match to {
                    std::net::IpAddr::V4(_) => Some(std::net::IpAddr::V4(s.tunnel_addr)),
                    std::net::IpAddr::V6(_) => {
                        self.registry.spoke_addr6(s).map(std::net::IpAddr::V6)
                    }
                };
                let src = src.ok_or_else(|| {
                    StateError::Invalid(format!(
                        "spoke {} has no IPv6 address (the hub has no IPv6 prefix)",
                        s.name
                    ))
                })?;
                (Origin::Spoke(s.id), src)
            }
            None => {
                let src: std::net::IpAddr = from
                    .parse()
                    .map_err(|e| StateError::Invalid(format!("--from {from:?}: {e}")))?;
                self.origin_in_tree(src, &mut notes)
            }
        };
        if src.is_ipv4() != to.is_ipv4() {
            return Err(StateError::Invalid(format!(
                "--from {src} and --to {to} are of different families"
            )));
        }
        let flow = Flow::probe(src, to, service).ok_or_else(|| {
            StateError::Invalid("name a protocol to check: tcp/PORT, udp/PORT or icmp".into())
        })?;
        let compiled = self.compiled_access();
        let rules = compiled.allowing_rules(origin, &flow);
        if !compiled.enforcing() {
            notes.push("the access mode is open: every routable packet passes".into());
        }
        Ok(AccessCheckView {
            allowed: !compiled.enforcing() || !rules.is_empty(),
            mode: self.access.mode,
            rules,
            notes,
        })
    }

    /// Where a packet from address `src` (no spoke's own) comes from: a
    /// child hub's link when it lies in that child's branch, else the
    /// hub's interface (its LAN, or the rest of the tree through the parent).
    fn origin_in_tree(
        &self,
        src: std::net::IpAddr,
        notes: &mut Vec<String>,
    ) -> (Origin, std::net::IpAddr) {
        let child = self
            .tree
            .map
            .children()
            .find(|c| c.routed().contains(src))
            .and_then(|c| Some((c.spoke?, c.name.clone())));
        if let Some((id, name)) = child {
            notes.push(format!(
                "{src} is in child hub {name}'s branch: it comes through that hub's link (hub:{name})"
            ));
            return (Origin::Spoke(id), src);
        }
        if self.tree.map.upstream().contains(src) {
            notes.push(format!(
                "{src} is in the rest of the tree: it comes from the parent, through this hub's interface"
            ));
        }
        (Origin::Local, src)
    }

    /// Members taken out of a group lose their link keys at once too (the
    /// patent's group rule, fig. 18): each spoke named, and each spoke a
    /// named user is logged in on, rotates to a fresh epoch.
    pub(crate) fn rotate_group_leavers(&mut self, group: &str, left: &[Member]) -> usize {
        let mut spokes: Vec<SpokeId> = Vec::new();
        for m in left {
            match m {
                Member::Spoke(name) => {
                    spokes.extend(self.registry.spoke_by_name(name).map(|s| s.id));
                }
                Member::User(user) => spokes.extend(
                    self.logins
                        .iter()
                        .filter(|(_, users)| users.contains(user))
                        .map(|(id, _)| *id),
                ),
            }
        }
        spokes.sort_unstable();
        spokes.dedup();
        for id in &spokes {
            self.request_rotation_of(*id, Trigger::LeftGroup(group.to_owned()));
        }
        spokes.len()
    }

    /// What the policy needs to know of a spoke, if it can carry traffic.
    fn facts_of(&self, id: SpokeId) -> Option<SpokeFacts> {
        let s = self
            .registry
            .spoke(id)
            .filter(|s| s.state == SpokeState::Active)?;
        Some(SpokeFacts {
            id,
            name: s.name.clone(),
            addr: s.tunnel_addr,
            addr6: self.registry.spoke_addr6(s),
            // A WireGuard peer's key is its user's proof: it counts as
            // logged in for as long as it is active.
            users: match (s.is_wireguard(), &s.owner) {
                (true, Some(owner)) => vec![owner.clone()],
                _ => self
                    .logins
                    .get(&id)
                    .map(|u| u.iter().cloned().collect())
                    .unwrap_or_default(),
            },
            branch: self
                .tree
                .map
                .child_of_spoke(id)
                .map(|c| c.routed().nets().collect())
                .unwrap_or_default(),
        })
    }

    /// Reads every spoke's facts anew (at start-up).
    pub(super) fn refresh_all_facts(&mut self) {
        let ids: Vec<SpokeId> = self.registry.spokes().map(|s| s.id).collect();
        self.access_facts = ids
            .into_iter()
            .filter_map(|id| self.facts_of(id).map(|f| (id, f)))
            .collect();
    }

    /// Reads one spoke's facts anew; true when they changed (so the
    /// compiled policy must change too).
    pub(super) fn refresh_facts(&mut self, id: SpokeId) -> bool {
        let now = self.facts_of(id);
        if self.access_facts.get(&id) == now.as_ref() {
            return false;
        }
        match now {
            Some(f) => self.access_facts.insert(id, f),
            None => self.access_facts.remove(&id),
        };
        true
    }

    /// The policy with names resolved against the spokes and logins of now.
    pub(crate) fn compiled_access(&self) -> Arc<CompiledAccess> {
        let mut facts: Vec<SpokeFacts> = self.access_facts.values().cloned().collect();
        facts.sort_by_key(|f| f.id);
        let hub = self.registry.settings().hub_addr();
        let hub6 = self.registry.ipv6().map(|p| p.hub_addr);
        Arc::new(self.access_in_force().compile_dual(hub, hub6, &facts))
    }

    /// Hands the data plane the policy compiled anew.
    pub(super) fn push_access(&self) {
        self.command(DpCommand::Access(self.compiled_access()));
    }
}
