//! Stock WireGuard apps as spokes at the hub: adding one, printing its
//! configuration, ending its epochs (a long interval or an admin's
//! command), and the warnings about epochs near their end.

use ipnet::Ipv4Net;
use tasuki_core::audit::{AuditKind, AuditRecord};
use tasuki_core::keys::{KeyEpoch, PublicKey, StaticKey};
use tasuki_core::registry::RegistryError;
use tasuki_core::rotation::{LinkSchedule, ScheduleMeta, Usage};
use tasuki_core::wireguard::{self, PeerConfig, WireGuardConfigView};
use tasuki_shell::store::Write;

use super::*;

impl HubState {
    /// Adds a stock WireGuard peer with the public key its app generated
    /// (or, with `public_key: None`, a key pair drawn here whose private
    /// half goes into this one reply and is never stored); stores it and
    /// its first epoch before answering with its configuration.
    pub(crate) fn add_wireguard(
        &mut self,
        name: &str,
        public_key: Option<&str>,
        user: Option<&str>,
        now: u64,
    ) -> Result<WireGuardConfigView> {
        if let Some(u) = user.filter(|u| !self.user_exists(u)) {
            return Err(StateError::NotFound(format!(
                "no user {u:?} at this hub; add it first with `tasuki-hub user add`"
            )));
        }
        let drawn = public_key
            .is_none()
            .then(|| StaticKey::generate(&mut rand_core::OsRng));
        let key = match (public_key, &drawn) {
            (Some(text), _) => PublicKey::from_base64(text.trim())
                .map_err(|_| RegistryError::BadPublicKey(text.to_owned()))?,
            (None, Some(k)) => k.public(),
            (None, None) => return Err(StateError::Invalid("no public key".into())),
        };
        if key == self.key.public() {
            return Err(StateError::Invalid(
                "that is the hub's own public key; give the key the device's WireGuard app shows"
                    .into(),
            ));
        }
        let spoke = self.registry.add_wireguard(name, key, user, now)?;
        let mut sched = LinkSchedule::restore(spoke.id, vec![], ScheduleMeta::default());
        let epoch = sched.replace(now, Usage::default(), &mut rand_core::OsRng);
        let stored = epoch_writes(&self.vault, spoke.id, std::slice::from_ref(&epoch)).and_then(
            |mut writes| {
                writes.push(Write::put(SPOKES_TREE, spoke.id.to_be_bytes(), &spoke)?);
                writes.push(Write::put(
                    SCHEDULES_TREE,
                    spoke.id.to_be_bytes(),
                    &(spoke.id, sched.meta().clone()),
                )?);
                self.store.commit(&writes)
            },
        );
        if let Err(e) = stored {
            self.registry.undo();
            self.erase_unused(spoke.id, epoch.number);
            return Err(StateError::from(e).context(format!("WireGuard peer {name:?} not added")));
        }
        self.schedules.insert(spoke.id, sched);
        tracing::info!(spoke = %spoke.name, id = spoke.id, addr = %spoke.tunnel_addr, "WireGuard peer added");
        let mut audit = AuditRecord::new(now, AuditKind::Enrolment)
            .spoke(name)
            .source("admin")
            .detail(format!(
                "WireGuard peer, id {} address {} key {}{}",
                spoke.id,
                spoke.tunnel_addr,
                key.fingerprint(),
                if drawn.is_some() {
                    " (drawn by the hub)"
                } else {
                    ""
                }
            ));
        if let Some(u) = user {
            audit = audit.user(u);
        }
        self.audit(audit);
        self.audit(
            AuditRecord::new(now, AuditKind::KeyIssue)
                .spoke(name)
                .detail("epoch 1 (WireGuard peer's configuration)"),
        );
        self.push_link(spoke.id);
        self.wireguard_view(spoke.id, drawn.as_ref())
    }

    /// A WireGuard peer's configuration with its current epoch, for the
    /// admin to give the device (after a rotation, say).
    pub(crate) fn wireguard_config(&mut self, name: &str, now: u64) -> Result<WireGuardConfigView> {
        let spoke = self
            .registry
            .spoke_by_name(name)
            .ok_or_else(|| RegistryError::NoSuchSpoke(name.to_owned()))?;
        if !spoke.is_wireguard() {
            return Err(RegistryError::NotWireGuard(name.to_owned()).into());
        }
        if spoke.state != SpokeState::Active {
            return Err(StateError::WrongState(format!(
                "WireGuard peer {name:?} is {}; it has no keys",
                spoke.state.name()
            )));
        }
        let id = spoke.id;
        let view = self.wireguard_view(id, None)?;
        self.audit(
            AuditRecord::new(now, AuditKind::KeyIssue)
                .spoke(name)
                .detail(format!("epoch {} configuration printed", view.epoch)),
        );
        Ok(view)
    }

    fn wireguard_view(
        &self,
        id: SpokeId,
        private_key: Option<&StaticKey>,
    ) -> Result<WireGuardConfigView> {
        let spoke = self
            .registry
            .spoke(id)
            .ok_or_else(|| StateError::NotFound(format!("no spoke #{id}")))?;
        let epoch: KeyEpoch = self
            .schedules
            .get(&id)
            .and_then(|s| s.epochs().pop())
            .ok_or_else(|| {
                StateError::WrongState(format!("WireGuard peer {:?} has no key epoch", spoke.name))
            })?;
        let settings = self.registry.settings();
        let mut allowed_ips = vec![settings.tunnel_net];
        allowed_ips.extend(settings.routes.iter().copied());
        let config = PeerConfig {
            name: &spoke.name,
            address: Ipv4Net::new(spoke.tunnel_addr, settings.tunnel_net.prefix_len())
                .unwrap_or_else(|_| Ipv4Net::from(spoke.tunnel_addr)),
            private_key,
            hub_key: self.key.public(),
            epoch: &epoch,
            endpoint: &settings.endpoint,
            allowed_ips,
            keepalive_secs: settings.keepalive_secs,
            mtu: tasuki_core::TUNNEL_MTU,
        }
        .render();
        let since = self
            .schedules
            .get(&id)
            .map_or(epoch.issued_at, |s| s.meta().current_since);
        Ok(WireGuardConfigView {
            name: spoke.name.clone(),
            tunnel_addr: spoke.tunnel_addr.to_string(),
            epoch: epoch.number,
            issued_at: epoch.issued_at,
            ends_at: self.wireguard_interval(id).map(|i| since.saturating_add(i)),
            config,
            includes_private_key: private_key.is_some(),
        })
    }

    /// How long a WireGuard peer's epoch lasts: its override's interval,
    /// or [`wireguard::DEFAULT_INTERVAL_SECS`] (the hub-wide policy, made
    /// for spokes that follow rotations by themselves, does not apply).
    pub(crate) fn wireguard_interval(&self, id: SpokeId) -> Option<u64> {
        match self.overrides.get(&id) {
            Some(p) => p.interval_secs,
            None => Some(wireguard::DEFAULT_INTERVAL_SECS),
        }
    }

    /// Erases the key of an epoch whose record was never stored; one that
    /// cannot be erased now goes at the next start (it has no record).
    pub(super) fn erase_unused(&self, id: SpokeId, epoch: u64) {
        if let Err(e) = self.vault.erase(&vault_name(id, epoch)) {
            tracing::error!(spoke = id, epoch, error = %format!("{e:#}"), "cannot erase an unused key; the next start erases it");
        }
    }

    /// Whether `id` is a stock WireGuard peer.
    pub(crate) fn is_wireguard(&self, id: SpokeId) -> bool {
        self.registry.spoke(id).is_some_and(|s| s.is_wireguard())
    }

    /// A WireGuard peer's part of a rotation tick: when its interval is
    /// over or an admin asked, the next epoch replaces the current one
    /// (stored first); the old configuration stops working at once.
    pub(super) fn tick_wireguard(&mut self, id: SpokeId, now: u64, total: Usage) -> Result<()> {
        let interval = self.wireguard_interval(id);
        let Some(sched) = self.schedules.get_mut(&id) else {
            return Ok(());
        };
        let Some(trigger) = sched.due_static(interval, now) else {
            return Ok(());
        };
        let saved = sched.clone();
        let epoch = sched.replace(now, total, &mut rand_core::OsRng);
        let sched = sched.clone();
        if let Err(e) = self.commit_issue(id, &sched, std::slice::from_ref(&epoch)) {
            self.erase_unused(id, epoch.number);
            self.schedules.insert(id, saved);
            return Err(e.context(format!("new epoch of WireGuard peer {id}")));
        }
        self.unsaved.remove(&Unsaved::Schedule(id));
        let name = self.spoke_name(id);
        tracing::warn!(spoke = %name, epoch = epoch.number, trigger = %trigger.name(), "WireGuard peer's key epoch replaced: it needs its new configuration (`tasuki-hub spoke config {name}`)");
        self.audit(
            AuditRecord::new(now, AuditKind::KeyIssue)
                .spoke(&name)
                .detail(format!(
                    "epoch {} ({}; WireGuard peer: the old configuration stops working)",
                    epoch.number,
                    trigger.name()
                )),
        );
        self.push_link(id);
        Ok(())
    }

    /// Warnings for status: WireGuard peers whose epoch ends soon, or has
    /// no end and is old.
    pub(crate) fn wireguard_warnings(&self, now: u64) -> Vec<String> {
        self.registry
            .spokes()
            .filter(|s| s.is_wireguard() && s.state == SpokeState::Active)
            .filter_map(|s| {
                let since = self.schedules.get(&s.id)?.meta().current_since;
                let words = wireguard::epoch_warning(since, self.wireguard_interval(s.id), now)?;
                Some(format!(
                    "WireGuard peer {:?}: {words}; after `tasuki-hub key rotate --spoke {}` give it the new configuration (`tasuki-hub spoke config {}`)",
                    s.name, s.name, s.name
                ))
            })
            .collect()
    }
}
