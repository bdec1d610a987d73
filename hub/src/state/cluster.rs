//! What the hub state knows of its cluster (a hub on etcd): the members
//! spokes are told about, and whether spokes may attach to this member.

use super::*;

impl HubState {
    /// Every active spoke is sent its configuration anew (those not
    /// attached get it when they attach).
    pub(crate) fn welcome_all(&mut self) {
        let configs: Vec<_> = self
            .registry
            .spokes()
            .filter(|s| s.state == SpokeState::Active && !s.is_wireguard())
            .map(|s| (s.id, self.spoke_config(s)))
            .collect();
        for (id, config) in configs {
            self.tell(id, HubMessage::Welcome(config));
        }
    }

    /// The lease keeper's word on this member: the control port follows
    /// (an orphaned member turns its spokes away so they find the active
    /// one; its data plane carries on).
    pub(crate) fn set_cluster_health(&mut self, health: tasuki_core::leadership::Health) {
        self.cluster_health = Some(health);
        // Only while it holds (or may still hold) the lease: an orphaned
        // member or one stepping down turns spokes away.
        self.open_control(matches!(
            health,
            tasuki_core::leadership::Health::Active | tasuki_core::leadership::Health::Degraded
        ));
    }

    /// Opens or closes the control port to spokes; closing ends every
    /// attached session (the spokes try the cluster's other members).
    pub(crate) fn open_control(&mut self, open: bool) {
        if open != self.control_open {
            self.control_open = open;
            if !open {
                tracing::warn!(sessions = self.sessions.len(), "control channels closed");
                self.sessions.clear();
            } else {
                tracing::info!("control channels open again");
            }
        }
    }

    /// The cluster's members now: spokes are told when they changed.
    pub(crate) fn set_cluster_endpoints(&mut self, members: Vec<String>) {
        if members != self.cluster_endpoints {
            tracing::info!(
                ?members,
                "the hub cluster's members changed: telling the spokes"
            );
            self.cluster_endpoints = members;
            self.welcome_all();
        }
    }

    /// Where this member stands, for `status` (`None` on sled).
    pub(crate) fn cluster_standing(&self) -> Option<tasuki_core::admin_api::ClusterStanding> {
        use tasuki_core::leadership::Health;
        let health = match self.cluster_health? {
            Health::Active => "active",
            Health::Degraded => "degraded",
            Health::Orphaned => "orphaned",
            Health::Standby => "standby",
            Health::SteppedDown(_) => "stepping down",
        };
        Some(tasuki_core::admin_api::ClusterStanding {
            health: health.into(),
            members: self.cluster_endpoints.clone(),
        })
    }

    /// What an admin must know of this member's standing, if anything.
    pub(crate) fn cluster_warning(&self) -> Option<String> {
        use tasuki_core::leadership::Health;
        match self.cluster_health? {
            Health::Degraded => Some(
                "etcd does not answer: traffic goes on with the keys in force, changes are refused"
                    .into(),
            ),
            Health::Orphaned => Some(
                "this member's lease may have lapsed: spokes are turned away to find the active \
                 member; traffic goes on with the keys in force"
                    .into(),
            ),
            _ => None,
        }
    }
}
