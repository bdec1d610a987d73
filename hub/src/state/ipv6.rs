//! Giving a hub that carries IPv4 only an IPv6 prefix (`tasuki-hub ipv6
//! enable`): stored first, then in force in the registry, the data plane
//! and the access policy, and told to every attached spoke, which takes
//! its address without enrolling again.

use tasuki_core::address_plan::{random_ula, Ipv6Plan};
use tasuki_core::audit::{AuditKind, AuditRecord};
use tasuki_core::registry::SpokeState;

use super::*;

impl HubState {
    /// Takes IPv6 prefix `net` (a random unique-local /64 when `None`)
    /// and IPv6 routes `routes`; refused when the hub has a prefix already.
    /// The spokes hear of it from [`HubState::announce_ipv6`], once the
    /// hub's own interface holds its address.
    pub(crate) fn enable_ipv6(
        &mut self,
        net: Option<ipnet::Ipv6Net>,
        routes: Vec<ipnet::Ipv6Net>,
        now: u64,
    ) -> Result<Ipv6Plan> {
        if let Some(plan) = self.registry.ipv6() {
            return Err(StateError::WrongState(format!(
                "the hub carries IPv6 in {} already",
                plan.tunnel_net
            )));
        }
        let net = net.unwrap_or_else(|| random_ula(&mut rand_core::OsRng));
        let plan = Ipv6Plan::new(net, self.registry.settings().tunnel_net, routes)
            .map_err(|e| StateError::Invalid(e.to_string()))?;
        self.store
            .commit(&[Write::put(SETTINGS_TREE, IPV6_KEY, &plan)?])
            .map_err(|e| StateError::from(e).context("the IPv6 prefix was not stored"))?;
        self.registry.set_ipv6(Some(plan.clone()));
        self.command(DpCommand::Ipv6(plan.clone()));
        let active: Vec<SpokeId> = self
            .registry
            .spokes()
            .filter(|s| s.state == SpokeState::Active)
            .map(|s| s.id)
            .collect();
        // Every spoke's facts change at once (its IPv6 address): the policy
        // and the pairs' rules are compiled once, then each link is told.
        self.refresh_all_facts();
        self.push_access();
        self.refresh_pair_rules(now);
        for id in active {
            self.push_link(id);
        }
        self.audit(
            AuditRecord::new(now, AuditKind::AddressPlan).detail(format!(
                "IPv6 prefix {} (hub {}), routes {:?}",
                plan.tunnel_net, plan.hub_addr, plan.routes
            )),
        );
        tracing::info!(prefix = %plan.tunnel_net, hub = %plan.hub_addr, "IPv6 enabled");
        Ok(plan)
    }

    /// Every active spoke is sent its configuration with its IPv6 address
    /// (those not attached get it when they attach).
    pub(crate) fn announce_ipv6(&mut self) {
        self.welcome_all();
    }
}
