//! The hub's registry of invitations and spokes, and the enrolment rules.
//!
//! Pure state: the hub shell persists what these methods return (and flushes
//! it) before it answers anyone. Time comes in as Unix seconds.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use rand_core::{CryptoRng, RngCore};

use crate::control::{Refusal, RefusalCode, SpokeConfig};
use crate::invitation::{Invitation, InvitationId};
use crate::keys::{KeyEpoch, PublicKey, SecretKey};
use crate::routing::SpokeId;

mod records;
#[cfg(test)]
mod tests;

pub use records::*;

/// A record as it was before the last change, to put back.
#[derive(Clone, Debug)]
enum Prior {
    Spoke(SpokeId, Option<SpokeRecord>),
    Invitation(InvitationId, Option<InvitationRecord>),
}

/// Invitations and spokes, with the rules that change them.
///
/// Every change remembers the records it replaced, so a caller whose store
/// refused the change can [`undo`](Self::undo) it without having copied the
/// whole registry first (that copy made enrolment slow down as spokes grew).
#[derive(Clone, Debug)]
pub struct Registry {
    settings: HubSettings,
    spokes: BTreeMap<SpokeId, SpokeRecord>,
    invitations: BTreeMap<InvitationId, InvitationRecord>,
    /// Spoke ids by static key, for attach and enrolment lookups.
    by_key: HashMap<PublicKey, SpokeId>,
    /// What the last change replaced.
    last_change: Vec<Prior>,
    /// The IPv6 plan beside the IPv4 one, if any.
    ipv6: Option<crate::address_plan::Ipv6Plan>,
}

impl Registry {
    /// A registry restored from stored records.
    pub fn new(
        settings: HubSettings,
        spokes: impl IntoIterator<Item = SpokeRecord>,
        invitations: impl IntoIterator<Item = InvitationRecord>,
    ) -> Self {
        let spokes: BTreeMap<SpokeId, SpokeRecord> =
            spokes.into_iter().map(|s| (s.id, s)).collect();
        let mut by_key = HashMap::with_capacity(spokes.len());
        for s in spokes.values() {
            // The oldest record holding a key answers for it.
            by_key.entry(s.public_key).or_insert(s.id);
        }
        Self {
            settings,
            spokes,
            invitations: invitations.into_iter().map(|i| (i.id, i)).collect(),
            by_key,
            last_change: Vec::new(),
            ipv6: None,
        }
    }

    /// Puts back the records the last change replaced: for a change the
    /// store could not keep. Does nothing the second time.
    pub fn undo(&mut self) {
        while let Some(prior) = self.last_change.pop() {
            match prior {
                Prior::Spoke(id, old) => {
                    if let Some(now) = self.spokes.remove(&id) {
                        if self.by_key.get(&now.public_key) == Some(&id) {
                            self.by_key.remove(&now.public_key);
                        }
                    }
                    if let Some(old) = old {
                        self.by_key.entry(old.public_key).or_insert(id);
                        self.spokes.insert(id, old);
                    }
                }
                Prior::Invitation(id, old) => match old {
                    Some(old) => {
                        self.invitations.insert(id, old);
                    }
                    None => {
                        self.invitations.remove(&id);
                    }
                },
            }
        }
    }

    /// Starts a change: forgets what the one before replaced.
    fn begin_change(&mut self) {
        self.last_change.clear();
    }

    /// Stores a spoke record, remembering the one it replaces.
    fn put_spoke(&mut self, spoke: SpokeRecord) {
        self.by_key.entry(spoke.public_key).or_insert(spoke.id);
        let old = self.spokes.insert(spoke.id, spoke.clone());
        self.last_change.push(Prior::Spoke(spoke.id, old));
    }

    /// Stores an invitation record, remembering the one it replaces.
    fn put_invitation(&mut self, invitation: InvitationRecord) {
        let id = invitation.id;
        let old = self.invitations.insert(id, invitation);
        self.last_change.push(Prior::Invitation(id, old));
    }

    /// Hub-wide settings.
    pub fn settings(&self) -> &HubSettings {
        &self.settings
    }

    /// All spokes, by id.
    pub fn spokes(&self) -> impl Iterator<Item = &SpokeRecord> {
        self.spokes.values()
    }

    /// A spoke by id.
    pub fn spoke(&self, id: SpokeId) -> Option<&SpokeRecord> {
        self.spokes.get(&id)
    }

    /// A spoke by name (a live one before a revoked or denied one of the same name).
    pub fn spoke_by_name(&self, name: &str) -> Option<&SpokeRecord> {
        self.spokes
            .values()
            .rev()
            .find(|s| s.name == name && !s.state.is_dead())
            .or_else(|| self.spokes.values().rev().find(|s| s.name == name))
    }

    /// A spoke by its static key.
    pub fn spoke_by_key(&self, key: &PublicKey) -> Option<&SpokeRecord> {
        self.by_key.get(key).and_then(|id| self.spokes.get(id))
    }

    /// All invitations.
    pub fn invitations(&self) -> impl Iterator<Item = &InvitationRecord> {
        self.invitations.values()
    }

    fn name_taken(&self, name: &str, now: u64) -> bool {
        self.spokes
            .values()
            .any(|s| s.name == name && !s.state.is_dead())
            || self
                .invitations
                .values()
                .any(|i| i.name == name && i.used_by.is_none() && i.expires_at > now)
    }

    /// Creates an invitation for a new spoke named `name`.
    #[allow(clippy::too_many_arguments)]
    pub fn invite<R: RngCore + CryptoRng>(
        &mut self,
        name: &str,
        pre_approved: bool,
        service: bool,
        owner: Option<&str>,
        valid_secs: u64,
        hub_key: PublicKey,
        now: u64,
        rng: &mut R,
    ) -> Result<(InvitationRecord, Invitation), RegistryError> {
        self.begin_change();
        validate_name(name)?;
        if valid_secs == 0 {
            return Err(RegistryError::ZeroValidity);
        }
        if self.name_taken(name, now) {
            return Err(RegistryError::NameTaken(name.to_owned()));
        }
        let record = InvitationRecord {
            id: InvitationId::generate(rng),
            name: name.to_owned(),
            secret: Some(SecretKey::generate(rng)),
            created_at: now,
            expires_at: now.saturating_add(valid_secs),
            pre_approved,
            used_by: None,
            service,
            owner: owner.map(str::to_owned),
        };
        let invitation = Invitation {
            name: name.to_owned(),
            hub_endpoint: self.settings.endpoint.clone(),
            hub_key,
            id: record.id,
            secret: record
                .secret
                .clone()
                .unwrap_or_else(|| SecretKey::from_bytes([0; 32])),
            expires_at: record.expires_at,
        };
        self.put_invitation(record.clone());
        Ok((record, invitation))
    }

    /// The secret that keys the enrolment handshake for invitation `id`,
    /// or why the enrolment cannot go on.
    ///
    /// A spoke that already used the invitation may retry (its reply may have
    /// been lost); any other key is refused.
    pub fn enrolment_secret(
        &self,
        id: &InvitationId,
        spoke_key: &PublicKey,
        now: u64,
    ) -> Result<SecretKey, Refusal> {
        let inv = self.invitations.get(id).ok_or_else(|| {
            Refusal::new(
                RefusalCode::UnknownInvitation,
                "this hub does not know that invitation",
            )
        })?;
        match &inv.used_by {
            Some(user) if user != spoke_key => {
                return Err(Refusal::new(
                    RefusalCode::InvitationUsed,
                    "that invitation was already used; ask the admin for a new one",
                ))
            }
            Some(_)
                if self
                    .spoke_by_key(spoke_key)
                    .is_some_and(|s| s.state.is_dead()) =>
            {
                return Err(Refusal::new(RefusalCode::Revoked, "this spoke was revoked"));
            }
            Some(_) => {}
            None if now >= inv.expires_at => {
                return Err(Refusal::new(
                    RefusalCode::InvitationExpired,
                    "that invitation has expired; ask the admin for a new one",
                ))
            }
            None => {}
        }
        inv.secret.clone().ok_or_else(|| {
            Refusal::new(
                RefusalCode::InvitationUsed,
                "that invitation was already used",
            )
        })
    }

    /// Enrols the spoke with key `spoke_key` using invitation `id`, after the
    /// handshake proved the spoke holds the invitation's secret.
    /// `as_user` enrols the spoke as that user's additional device: it waits
    /// for the user's confirmation whatever the invitation says (the caller
    /// checks the user exists).
    #[allow(clippy::too_many_arguments)]
    pub fn enrol<R: RngCore + CryptoRng>(
        &mut self,
        id: &InvitationId,
        spoke_key: PublicKey,
        source: &str,
        hostname: &str,
        as_user: Option<&str>,
        now: u64,
        rng: &mut R,
    ) -> Result<Enrolled, Refusal> {
        self.begin_change();
        // Re-checks everything enrolment_secret checked.
        self.enrolment_secret(id, &spoke_key, now)?;
        let inv =
            self.invitations.get(id).cloned().ok_or_else(|| {
                Refusal::new(RefusalCode::UnknownInvitation, "unknown invitation")
            })?;
        if let Some(existing) = self.spoke_by_key(&spoke_key) {
            if existing.state.is_dead() {
                return Err(Refusal::new(
                    RefusalCode::Revoked,
                    "this spoke's key was revoked or denied; enrol with a fresh state directory",
                ));
            }
            if existing.invitation != inv.id {
                return Err(Refusal::new(
                    RefusalCode::ProtocolViolation,
                    format!("this key is already enrolled as {:?}", existing.name),
                ));
            }
            return Ok(Enrolled {
                spoke: existing.clone(),
                invitation: inv,
                first_epoch: None,
            });
        }
        let id_new = self
            .next_id()
            .ok_or_else(|| Refusal::new(RefusalCode::Internal, "the hub has no spoke ids left"))?;
        let addr = self.free_address().ok_or_else(|| {
            Refusal::new(
                RefusalCode::Internal,
                "the tunnel network has no free address left",
            )
        })?;
        let owner = match (&inv.owner, as_user) {
            (Some(o), Some(u)) if o != u => {
                return Err(Refusal::new(
                    RefusalCode::ProtocolViolation,
                    format!("this invitation is for a device of {o:?}, not {u:?}"),
                ))
            }
            (Some(o), _) => Some(o.clone()),
            (None, u) => u.map(str::to_owned),
        };
        let state = if inv.pre_approved && owner.is_none() {
            SpokeState::Active
        } else {
            SpokeState::Pending
        };
        let spoke = SpokeRecord {
            id: id_new,
            name: inv.name.clone(),
            public_key: spoke_key,
            tunnel_addr: addr,
            state,
            enrolled_at: now,
            enrolled_from: source.to_owned(),
            hostname: hostname.chars().take(255).collect(),
            invitation: inv.id,
            service: inv.service,
            owner,
            kind: SpokeKind::Tasuki,
        };
        let mut used = inv;
        used.used_by = Some(spoke_key);
        self.put_spoke(spoke.clone());
        self.put_invitation(used.clone());
        let first_epoch = (state == SpokeState::Active).then(|| KeyEpoch::issue(1, now, rng));
        Ok(Enrolled {
            spoke,
            invitation: used,
            first_epoch,
        })
    }

    /// Adds a stock WireGuard peer named `name` with the public key its app
    /// generated (the private key never leaves the device), owned by user
    /// `owner` if given (the caller checks the user exists). It is active at
    /// once: the caller issues its first epoch.
    pub fn add_wireguard(
        &mut self,
        name: &str,
        public_key: PublicKey,
        owner: Option<&str>,
        now: u64,
    ) -> Result<SpokeRecord, RegistryError> {
        self.begin_change();
        validate_name(name)?;
        if self.name_taken(name, now) {
            return Err(RegistryError::NameTaken(name.to_owned()));
        }
        if let Some(other) = self.spoke_by_key(&public_key) {
            return Err(RegistryError::KeyTaken(other.name.clone()));
        }
        let net = self.settings.tunnel_net;
        let id = self
            .next_id()
            .ok_or(RegistryError::AddressesExhausted(net))?;
        let addr = self
            .free_address()
            .ok_or(RegistryError::AddressesExhausted(net))?;
        let spoke = SpokeRecord {
            id,
            name: name.to_owned(),
            public_key,
            tunnel_addr: addr,
            state: SpokeState::Active,
            enrolled_at: now,
            enrolled_from: "admin".into(),
            hostname: String::new(),
            invitation: InvitationId::NONE,
            service: false,
            owner: owner.map(str::to_owned),
            kind: SpokeKind::WireGuard,
        };
        self.put_spoke(spoke.clone());
        Ok(spoke)
    }

    /// Checks that an enrolled spoke may attach; returns its record.
    pub fn attach(&self, key: &PublicKey) -> Result<&SpokeRecord, Refusal> {
        let spoke = self.spoke_by_key(key).ok_or_else(|| {
            Refusal::new(
                RefusalCode::UnknownSpoke,
                "this spoke is not enrolled at this hub; enrol it with a new invitation",
            )
        })?;
        if spoke.is_wireguard() {
            return Err(Refusal::new(
                RefusalCode::UnknownSpoke,
                "this key belongs to a WireGuard peer, which has no control channel; enrol tasuki-spoke with a fresh state directory and a new invitation",
            ));
        }
        match spoke.state {
            SpokeState::Active => Ok(spoke),
            SpokeState::Pending => Err(Refusal::new(
                RefusalCode::Pending,
                "this spoke waits for an admin's approval",
            )),
            SpokeState::Revoked => Err(Refusal::new(
                RefusalCode::Revoked,
                "this spoke was revoked; it needs a fresh enrolment",
            )),
            SpokeState::Denied => Err(Refusal::new(
                RefusalCode::Revoked,
                "an admin denied this spoke; it needs a fresh enrolment",
            )),
        }
    }

    fn set_state(
        &mut self,
        name: &str,
        what: &'static str,
        allowed: &[SpokeState],
        needed: &'static str,
        to: SpokeState,
    ) -> Result<SpokeRecord, RegistryError> {
        self.begin_change();
        let id = self
            .spoke_by_name(name)
            .map(|s| s.id)
            .ok_or_else(|| RegistryError::NoSuchSpoke(name.to_owned()))?;
        let mut spoke = self
            .spokes
            .get(&id)
            .cloned()
            .ok_or_else(|| RegistryError::NoSuchSpoke(name.to_owned()))?;
        if !allowed.contains(&spoke.state) {
            return Err(RegistryError::WrongState {
                name: name.to_owned(),
                state: spoke.state.name(),
                what,
                needed,
            });
        }
        spoke.state = to;
        self.put_spoke(spoke.clone());
        Ok(spoke)
    }

    /// Approves a pending spoke (admin, or its owner from another device).
    pub fn approve(&mut self, name: &str) -> Result<SpokeRecord, RegistryError> {
        self.set_state(
            name,
            "approval",
            &[SpokeState::Pending],
            "pending",
            SpokeState::Active,
        )
    }

    /// Denies a pending spoke.
    pub fn deny(&mut self, name: &str) -> Result<SpokeRecord, RegistryError> {
        self.set_state(
            name,
            "denial",
            &[SpokeState::Pending],
            "pending",
            SpokeState::Denied,
        )
    }

    /// Revokes a spoke: it is cut off for good.
    pub fn revoke(&mut self, name: &str) -> Result<SpokeRecord, RegistryError> {
        self.set_state(
            name,
            "revocation",
            &[SpokeState::Pending, SpokeState::Active],
            "pending or active",
            SpokeState::Revoked,
        )
    }

    /// The configuration a spoke receives on attach.
    pub fn spoke_config(&self, spoke: &SpokeRecord) -> SpokeConfig {
        SpokeConfig {
            spoke_id: spoke.id,
            name: spoke.name.clone(),
            tunnel_addr: Ipv4Net::new(spoke.tunnel_addr, self.settings.tunnel_net.prefix_len())
                .unwrap_or_else(|_| Ipv4Net::from(spoke.tunnel_addr)),
            hub_tunnel_addr: self.settings.hub_addr(),
            routes: self.settings.routes.clone(),
            mtu: crate::TUNNEL_MTU,
            keepalive_secs: self.settings.keepalive_secs,
            ipv6: self
                .ipv6
                .as_ref()
                .and_then(|p| p.for_spoke(self.settings.tunnel_net, spoke.tunnel_addr)),
            hub_endpoints: Vec::new(),
        }
    }

    /// The hub's IPv6 plan, if it has one.
    pub fn ipv6(&self) -> Option<&crate::address_plan::Ipv6Plan> {
        self.ipv6.as_ref()
    }

    /// Takes IPv6 plan `plan` (checked by its maker).
    pub fn set_ipv6(&mut self, plan: Option<crate::address_plan::Ipv6Plan>) {
        self.ipv6 = plan;
    }

    /// A spoke's IPv6 tunnel address, where the hub has an IPv6 plan.
    pub fn spoke_addr6(&self, spoke: &SpokeRecord) -> Option<std::net::Ipv6Addr> {
        self.ipv6
            .as_ref()
            .and_then(|p| p.spoke_addr(self.settings.tunnel_net, spoke.tunnel_addr))
    }

    /// Drops invitations that expired unused more than `keep_secs` ago.
    pub fn expire_invitations(&mut self, now: u64, keep_secs: u64) -> Vec<InvitationId> {
        self.begin_change();
        let gone: Vec<_> = self
            .invitations
            .values()
            .filter(|i| i.used_by.is_none() && i.expires_at.saturating_add(keep_secs) <= now)
            .map(|i| i.id)
            .collect();
        for id in &gone {
            if let Some(old) = self.invitations.remove(id) {
                self.last_change.push(Prior::Invitation(*id, Some(old)));
            }
        }
        gone
    }

    fn next_id(&self) -> Option<SpokeId> {
        let next = self.spokes.keys().next_back().map_or(1, |id| id + 1);
        (next <= MAX_SPOKE_ID).then_some(next)
    }

    fn free_address(&self) -> Option<Ipv4Addr> {
        let net = self.settings.tunnel_net;
        let hub = self.settings.hub_addr();
        // One pass over the spokes, not one per candidate: enrolment stays
        // fast with ten thousand spokes.
        let used: std::collections::HashSet<Ipv4Addr> =
            self.spokes.values().map(|s| s.tunnel_addr).collect();
        net.hosts().find(|a| *a != hub && !used.contains(a))
    }
}
