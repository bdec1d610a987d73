//! The admin requests of the hub tree (`tasuki-hub hub …`, `tasuki-hub
//! join`) and the views they answer with (also the `--json` output).

use serde::{Deserialize, Serialize};

use crate::admin_api::SpokeView;

/// Make an invitation for a child hub.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HubInvite {
    /// The child hub's name (the name of the spoke it enrols as).
    pub name: String,
    /// Validity in seconds.
    pub valid_secs: u64,
}

/// Approve what a child hub announced (and the child hub itself, when it
/// waits for its approval).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HubApprove {
    /// The child hub's name.
    pub name: String,
}

/// Revoke a child hub: its keys erased, its branch's routes withdrawn.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HubRevoke {
    /// The child hub's name.
    pub name: String,
}

/// The hub's place in the tree: its parent and its child hubs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HubList {}

/// Join a parent hub as its child, with the parent's invitation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HubJoin {
    /// The invitation the parent's admin printed (`tasuki-hub hub invite`).
    pub invitation: String,
}

/// One child hub as its parent sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChildHubView {
    /// Its name.
    pub name: String,
    /// `invited`, then its spoke's state (`pending`, `active`, …).
    pub state: String,
    /// What its branch serves, as it says.
    pub announced: Vec<String>,
    /// What is routed to it (announced and approved).
    pub routed: Vec<String>,
    /// Announced and not approved (not routed): `hub approve` routes them.
    pub unapproved: Vec<String>,
    /// Its link as a spoke of this hub (address, epoch, last handshake, …).
    pub link: Option<SpokeView>,
    /// When it was invited (Unix seconds).
    pub invited_at: u64,
}

/// This hub's parent, as its uplink sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ParentView {
    /// `joining`, `pending` (the parent's admin has not approved yet),
    /// `connecting`, `running` or `refused`.
    pub state: String,
    /// The parent's endpoint.
    pub endpoint: String,
    /// The parent's key fingerprint (pinned at the join).
    pub fingerprint: String,
    /// This hub's name at the parent.
    pub name: String,
    /// This hub's address in the parent's tunnel network.
    pub tunnel_addr: String,
    /// The uplink's TUN interface.
    pub interface: String,
    /// The link epoch the parent gave, carrying traffic.
    pub epoch: Option<u64>,
    /// Whether the control channel to the parent is up.
    pub control_connected: bool,
    /// What this hub announces to the parent.
    pub announced: Vec<String>,
    /// What the parent says the rest of the tree serves (routed up).
    pub upstream: Vec<String>,
}

/// `tasuki-hub hub list`: the parent (when this hub joined one) and the children.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HubTreeView {
    /// The parent.
    pub parent: Option<ParentView>,
    /// The child hubs.
    pub children: Vec<ChildHubView>,
    /// Child hubs' announcements replaced by a newer one before they were
    /// taken (a child that floods route updates is heard once a second).
    #[serde(default)]
    pub announcements_coalesced: u64,
}
