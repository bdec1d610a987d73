//! The hub tree at this hub (claim 6): its child hubs (invited, joined,
//! approved, revoked; stored in `child-hubs` before they count) and what
//! its parent says the rest of the tree serves. Every change of the routes
//! goes to the data plane, to the hub's TUN (the daemon follows
//! [`Tree::tun_routes`]), to the parent (the uplink follows
//! [`Tree::announce`]) and to every attached spoke (its configuration).

use std::path::PathBuf;

use tasuki_core::admin_calls::{ChildHubView, HubTreeView, ParentView};
use tasuki_core::audit::{AuditKind, AuditRecord};
use tasuki_core::control::RefusalCode;
use tasuki_core::hierarchy::{ChildHub, Hierarchy, ServedNets};
use tokio::sync::watch;

use super::*;

/// Where child hubs are stored, by name.
pub(crate) const CHILD_HUBS_TREE: &str = "child-hubs";

/// The uplink's state directory, inside the hub's.
pub(crate) const UPLINK_DIR: &str = "uplink";

/// The uplink's TUN name for a hub on `interface`: `<interface>-up`, cut
/// to the 15 bytes Linux allows.
pub(crate) fn uplink_interface(interface: &str) -> String {
    let mut name: String = interface.chars().take(12).collect();
    name.push_str("-up");
    name
}

/// The hub's place in the tree and where its changes go.
pub(crate) struct Tree {
    /// Child hubs and the parent's routes.
    pub(crate) map: Hierarchy,
    /// Subnets routed to child hubs: the daemon puts them on the hub's TUN.
    pub(crate) tun_routes: watch::Sender<ServedNets>,
    /// What this hub announces to its parent: the uplink sends it.
    pub(crate) announce: watch::Sender<ServedNets>,
    /// The uplink's state directory (the enrolment at the parent).
    pub(crate) uplink_dir: PathBuf,
    /// The uplink's TUN interface.
    pub(crate) uplink_interface: String,
    /// The uplink, once this hub joined a parent and it runs.
    pub(crate) uplink: Option<std::sync::Arc<tasuki_spoke::uplink::Uplink>>,
    /// The parent's endpoint, once the uplink runs.
    pub(crate) parent_endpoint: Option<String>,
    /// Why the uplink did not start (shown in `status`).
    pub(crate) uplink_error: Option<String>,
    /// When each child's announcement was last taken (Unix seconds).
    announced_at: std::collections::HashMap<SpokeId, u64>,
    /// Announcements that came sooner than [`ANNOUNCE_SPACING`] after the
    /// last one: the newest of each child, taken at a later tick.
    waiting: std::collections::BTreeMap<SpokeId, ServedNets>,
    /// Announcements that were replaced by a newer one before they were taken.
    pub(crate) coalesced: u64,
}

/// Seconds between two announcements of one child that are taken: a child
/// that floods route updates costs one store write a second.
const ANNOUNCE_SPACING: u64 = 1;

impl Tree {
    /// The tree of a hub with these stored child hubs, the uplink kept in
    /// `uplink_dir` on interface `uplink_interface`.
    pub(crate) fn new(
        children: Vec<ChildHub>,
        uplink_dir: PathBuf,
        uplink_interface: String,
    ) -> Self {
        Self {
            map: Hierarchy::new(children),
            tun_routes: watch::Sender::new(ServedNets::default()),
            announce: watch::Sender::new(ServedNets::default()),
            uplink_dir,
            uplink_interface,
            uplink: None,
            parent_endpoint: None,
            uplink_error: None,
            announced_at: std::collections::HashMap::new(),
            waiting: std::collections::BTreeMap::new(),
            coalesced: 0,
        }
    }
}

impl HubState {
    /// What this hub serves itself: its tunnel networks and its routes.
    pub(crate) fn own_nets(&self) -> ServedNets {
        let settings = self.registry.settings();
        let mut own = ServedNets {
            v4: vec![settings.tunnel_net],
            v6: vec![],
        };
        own.v4.extend(settings.routes.iter().copied());
        if let Some(plan) = self.registry.ipv6() {
            own.v6.push(plan.tunnel_net);
            own.v6.extend(plan.routes.iter().copied());
        }
        own
    }

    /// A spoke's configuration: the registry's, with the routes of the
    /// tree (every other branch, and what the parent says) added.
    pub(crate) fn spoke_config(&self, spoke: &SpokeRecord) -> tasuki_core::control::SpokeConfig {
        let mut config = self.registry.spoke_config(spoke);
        config.hub_endpoints = self.cluster_endpoints.clone();
        let tree = self.tree.map.routes_for(spoke.id);
        for net in tree.v4 {
            if !config.routes.contains(&net) {
                config.routes.push(net);
            }
        }
        if let Some(v6) = config.ipv6.as_mut() {
            for net in tree.v6 {
                if !v6.routes.contains(&net) {
                    v6.routes.push(net);
                }
            }
        }
        config
    }

    /// `tasuki-hub hub invite`: the child hub's record, then its
    /// invitation (a service spoke that waits for `hub approve`).
    pub(crate) fn invite_child(
        &mut self,
        name: &str,
        valid_secs: u64,
        now: u64,
    ) -> Result<InvitationView> {
        let child = self
            .tree
            .map
            .invite(name, now)
            .map_err(|e| StateError::Invalid(e.to_string()))?;
        self.store_child(&child, "the child hub's invitation")?;
        match self.invite(name, false, true, None, valid_secs, now) {
            Ok(view) => {
                self.tree.map.put(child);
                self.audit(
                    AuditRecord::new(now, AuditKind::HubTree)
                        .spoke(name)
                        .detail("child hub invited"),
                );
                Ok(view)
            }
            Err(e) => {
                if let Err(undo) = self
                    .store
                    .commit(&[Write::remove(CHILD_HUBS_TREE, name.as_bytes())])
                {
                    tracing::error!(error = %format!("{undo:#}"), child = name, "a child hub's record is left without its invitation");
                }
                Err(e)
            }
        }
    }

    /// Whether an enrolment with the invitation for `name` may go on:
    /// a child hub's invitation only for a hub that announces what it
    /// serves, a spoke's only for a spoke.
    pub(crate) fn check_enrol_kind(
        &self,
        name: &str,
        serves: Option<&ServedNets>,
    ) -> std::result::Result<(), Refusal> {
        let is_child = self.tree.map.child(name).is_some();
        match serves {
            Some(_) if !is_child => Err(Refusal::new(
                RefusalCode::ProtocolViolation,
                format!("the invitation for {name:?} is a spoke's; ask the admin for `tasuki-hub hub invite {name}`"),
            )),
            Some(nets) => nets
                .check()
                .map_err(|e| Refusal::new(RefusalCode::ProtocolViolation, e.to_string())),
            None if is_child => Err(Refusal::new(
                RefusalCode::ProtocolViolation,
                format!("the invitation for {name:?} is a child hub's: use it with `tasuki-hub join`"),
            )),
            None => Ok(()),
        }
    }

    /// Child hub `spoke` says its branch serves `nets` (at its enrolment,
    /// or attached); stored, and routed as far as it was approved.
    pub(crate) fn on_serves(&mut self, spoke: SpokeId, nets: ServedNets, now: u64) -> Result<()> {
        let soon = self
            .tree
            .announced_at
            .get(&spoke)
            .is_some_and(|&at| now >= at && now < at.saturating_add(ANNOUNCE_SPACING));
        if soon {
            if self.tree.waiting.insert(spoke, nets).is_some() {
                self.tree.coalesced += 1;
            }
            return Ok(());
        }
        self.tree.waiting.remove(&spoke);
        self.tree.announced_at.insert(spoke, now);
        self.take_announcement(spoke, nets, now)
    }

    /// Announcements that waited for their turn (see [`ANNOUNCE_SPACING`]).
    pub(crate) fn tree_tick(&mut self, now: u64) {
        let due: Vec<SpokeId> = self
            .tree
            .waiting
            .keys()
            .copied()
            .filter(|id| {
                self.tree
                    .announced_at
                    .get(id)
                    .is_none_or(|&at| now < at || now >= at.saturating_add(ANNOUNCE_SPACING))
            })
            .collect();
        for id in due {
            if let Some(nets) = self.tree.waiting.remove(&id) {
                if let Err(e) = self.on_serves(id, nets, now) {
                    tracing::warn!(spoke = id, error = %format!("{e:#}"), "announcement refused");
                }
            }
        }
    }

    /// Stores and routes (as far as approved) what child `spoke` announced.
    fn take_announcement(&mut self, spoke: SpokeId, nets: ServedNets, now: u64) -> Result<()> {
        let name = self.spoke_name(spoke);
        if self
            .tree
            .map
            .child(&name)
            .is_some_and(|c| c.spoke == Some(spoke) && c.announced == nets)
        {
            return Ok(());
        }
        let child =
            self.tree.map.announced(&name, spoke, nets).map_err(|e| {
                StateError::Invalid(format!("announcement of {name:?} refused: {e}"))
            })?;
        self.store_child(&child, "the child hub's announcement")?;
        let routed_before = self.tree.map.child(&name).map(ChildHub::routed);
        let detail = format!(
            "announced {:?}; not approved {:?}",
            child.announced.strings(),
            child.unapproved().strings()
        );
        let routed_now = child.routed();
        self.tree.map.put(child);
        self.audit(
            AuditRecord::new(now, AuditKind::HubTree)
                .spoke(&name)
                .detail(detail),
        );
        if routed_before.as_ref() != Some(&routed_now) {
            self.tree_changed();
        }
        Ok(())
    }

    /// `tasuki-hub hub approve`: what the child announced is routed to it
    /// (refused when it overlaps the tree), and a pending child is approved.
    pub(crate) fn approve_child(&mut self, name: &str, by: &str, now: u64) -> Result<ChildHubView> {
        let own = self.own_nets();
        let child = self
            .tree
            .map
            .approval(name, &own)
            .map_err(|e| StateError::Invalid(e.to_string()))?;
        self.store_child(&child, "the child hub's approval")?;
        let routed = child.routed().strings();
        self.tree.map.put(child);
        if self
            .registry
            .spoke_by_name(name)
            .is_some_and(|s| s.state == SpokeState::Pending)
        {
            self.approve(name, by, now)?;
        }
        self.audit(
            AuditRecord::new(now, AuditKind::HubTree)
                .spoke(name)
                .detail(format!("approved by {by}: routes {routed:?}")),
        );
        tracing::info!(child = name, ?routed, "child hub approved");
        self.tree_changed();
        self.child_view(name)
    }

    /// `tasuki-hub hub revoke`: the child's keys erased (its spoke
    /// revoked), its branch's routes withdrawn everywhere at once.
    pub(crate) fn revoke_child(&mut self, name: &str, now: u64) -> Result<ChildHubView> {
        let mut view = self.child_view(name)?;
        // Withdrawn first (in memory even when the store fails), then its keys.
        let forgot = self.forget_child(name, now);
        if self
            .registry
            .spoke_by_name(name)
            .is_some_and(|s| !s.state.is_dead())
        {
            self.revoke(name, now)?;
        }
        forgot?;
        view.state = "revoked".into();
        view.routed.clear();
        Ok(view)
    }

    /// A child hub's spoke was revoked or denied (or its invitation is
    /// void): its record goes, its branch's routes are withdrawn.
    pub(crate) fn forget_child(&mut self, name: &str, now: u64) -> Result<()> {
        if self.tree.map.child(name).is_none() {
            return Ok(());
        }
        // Out of memory and the routes at once, stored or not: a revoked
        // branch never stays routed. A record left behind is dropped at
        // the next start (its spoke is revoked).
        let stored = self
            .store
            .commit(&[Write::remove(CHILD_HUBS_TREE, name.as_bytes())]);
        self.tree.map.remove(name);
        if let Err(e) = stored {
            self.tree_changed();
            return Err(StateError::from(e).context(format!(
                "child hub {name:?} is withdrawn, but its record was not removed from the store"
            )));
        }
        self.audit(
            AuditRecord::new(now, AuditKind::HubTree)
                .spoke(name)
                .detail("child hub gone: its branch's routes withdrawn"),
        );
        tracing::warn!(child = name, "child hub gone: its routes are withdrawn");
        self.tree_changed();
        Ok(())
    }

    /// Takes what the parent says the rest of the tree serves (from the
    /// uplink's configuration).
    pub(crate) fn set_upstream(&mut self, upstream: &ServedNets) {
        let own = self.own_nets();
        let before = self.tree.map.upstream().clone();
        let dropped = self.tree.map.set_upstream(upstream, &own);
        if !dropped.is_empty() {
            tracing::warn!(dropped = ?dropped.strings(), "the parent routes subnets this hub or a child serves: not taken from it");
        }
        if *self.tree.map.upstream() != before {
            tracing::info!(upstream = ?self.tree.map.upstream().strings(), "routes of the rest of the tree");
            self.tree_changed();
        }
    }

    /// The routes changed: the data plane, the hub's TUN, the parent and
    /// every attached spoke hear of it.
    pub(crate) fn tree_changed(&mut self) {
        let children = self.tree.map.child_routes();
        let mut tun = ServedNets::default();
        for (_, nets) in &children {
            tun.extend(nets);
        }
        self.command(DpCommand::Tree {
            children,
            upstream: self.tree.map.upstream().clone(),
        });
        self.tree.tun_routes.send_replace(tun);
        // `hub:NAME` rules follow the branches' routes.
        let ids: Vec<SpokeId> = self.tree.map.children().filter_map(|c| c.spoke).collect();
        let mut refreshed = false;
        for id in ids {
            refreshed |= self.refresh_facts(id);
        }
        if refreshed {
            self.push_access();
            self.refresh_pair_rules(tasuki_shell::unix_now());
        }
        let own = self.own_nets();
        self.tree
            .announce
            .send_replace(self.tree.map.announcement(&own));
        self.welcome_all();
    }

    fn store_child(&self, child: &ChildHub, what: &str) -> Result<()> {
        Write::put(CHILD_HUBS_TREE, child.name.as_bytes(), child)
            .and_then(|w| self.store.commit(&[w]))
            .map_err(|e| StateError::from(e).context(format!("{what} was not stored")))
    }

    /// One child hub as `hub list` shows it.
    pub(crate) fn child_view(&self, name: &str) -> Result<ChildHubView> {
        let child = self
            .tree
            .map
            .child(name)
            .ok_or_else(|| StateError::Invalid(format!("no child hub named {name:?}")))?;
        Ok(view_of(child, &self.spoke_views(None)))
    }

    /// `tasuki-hub hub list`, with the parent as the uplink sees it.
    pub(crate) fn tree_view(
        &self,
        dp: Option<&DpStatus>,
        parent: Option<ParentView>,
    ) -> HubTreeView {
        // Every link's view once, for all the children.
        let links = self.spoke_views(dp);
        HubTreeView {
            parent,
            children: self
                .tree
                .map
                .children()
                .map(|c| view_of(c, &links))
                .collect(),
            announcements_coalesced: self.tree.coalesced,
        }
    }
}

/// One child hub as `hub list` shows it, its link found among `links`.
fn view_of(child: &ChildHub, links: &[tasuki_core::admin_api::SpokeView]) -> ChildHubView {
    let link = child
        .spoke
        .and_then(|id| links.iter().find(|v| v.id == id).cloned());
    ChildHubView {
        name: child.name.clone(),
        state: link
            .as_ref()
            .map_or_else(|| "invited".into(), |l| l.state.clone()),
        announced: child.announced.strings(),
        routed: child.routed().strings(),
        unapproved: child.unapproved().strings(),
        link,
        invited_at: child.invited_at,
    }
}
