//! The hub's registry of invitations and spokes, and the enrolment rules.
//!
//! Pure state: the hub shell persists what these methods return (and flushes
//! it) before it answers anyone. Time comes in as Unix seconds.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::control::{Refusal, RefusalCode, SpokeConfig};
use crate::invitation::{Invitation, InvitationId};
use crate::keys::{KeyEpoch, PublicKey, SecretKey};
use crate::routing::SpokeId;

/// Largest spoke id: ids share the 24-bit WireGuard index with 4 epoch bits.
pub const MAX_SPOKE_ID: SpokeId = (1 << 20) - 1;

/// Hub-wide settings chosen at `init`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubSettings {
    /// `HOST:PORT` put into invitations; the hub listens on that port (TCP and UDP).
    pub endpoint: String,
    /// The tunnel network; the hub takes its first host address.
    pub tunnel_net: Ipv4Net,
    /// Subnets routed behind the hub (company LAN).
    pub routes: Vec<Ipv4Net>,
    /// WireGuard persistent keepalive spokes should use, seconds (0 = off).
    pub keepalive_secs: u16,
}

impl HubSettings {
    /// The hub's own tunnel address: the first host of the tunnel network.
    pub fn hub_addr(&self) -> Ipv4Addr {
        first_host(self.tunnel_net)
    }
}

fn first_host(net: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()).saturating_add(1))
}

/// Where a spoke stands with the hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpokeState {
    /// Enrolled, waiting for an admin's approval: no keys, no traffic.
    Pending,
    /// Approved: gets keys and carries traffic.
    Active,
    /// Cut off for good; coming back needs a fresh enrolment.
    Revoked,
    /// Refused by an admin while pending.
    Denied,
}

impl SpokeState {
    /// Lower-case name for listings.
    pub fn name(self) -> &'static str {
        match self {
            SpokeState::Pending => "pending",
            SpokeState::Active => "active",
            SpokeState::Revoked => "revoked",
            SpokeState::Denied => "denied",
        }
    }

    /// Revoked or denied: the record stays for the audit trail only.
    pub fn is_dead(self) -> bool {
        matches!(self, SpokeState::Revoked | SpokeState::Denied)
    }
}

/// What the hub knows about one enrolled spoke.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpokeRecord {
    /// Spoke id (the patent's child-station id).
    pub id: SpokeId,
    /// Name given by the admin at invitation.
    pub name: String,
    /// The spoke's static public key (its identity).
    pub public_key: PublicKey,
    /// Its address in the tunnel network.
    pub tunnel_addr: Ipv4Addr,
    /// Approval state.
    pub state: SpokeState,
    /// When it enrolled (Unix seconds).
    pub enrolled_at: u64,
    /// The source address it enrolled from.
    pub enrolled_from: String,
    /// Host name it reported.
    pub hostname: String,
    /// The invitation it used.
    pub invitation: InvitationId,
    /// An unattended service spoke: carries traffic with no user logged in.
    pub service: bool,
    /// For a user's additional device: the user who must confirm it from a
    /// device where they are logged in (patent fig. 6).
    pub owner: Option<String>,
}

/// An invitation as the hub keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvitationRecord {
    /// Its id.
    pub id: InvitationId,
    /// The spoke name it is for.
    pub name: String,
    /// The one-time secret (erased from the record once used).
    pub secret: Option<SecretKey>,
    /// When it was made (Unix seconds).
    pub created_at: u64,
    /// When it stops working (Unix seconds).
    pub expires_at: u64,
    /// Whether the spoke may carry traffic without an admin's approval.
    pub pre_approved: bool,
    /// The spoke key that used it, once used.
    pub used_by: Option<PublicKey>,
    /// The spoke will be an unattended service spoke.
    pub service: bool,
    /// A device invitation of this user: confirmed by the user, not an admin.
    pub owner: Option<String>,
}

/// Errors of admin requests to the registry.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistryError {
    /// The name has characters or a length that is not allowed.
    #[error("invalid spoke name {0:?}: use 1-63 letters, digits, '.', '-' or '_'")]
    InvalidName(String),
    /// A spoke or pending invitation already has that name.
    #[error("the name {0:?} is already taken by a spoke or an open invitation")]
    NameTaken(String),
    /// No spoke by that name.
    #[error("no spoke named {0:?}")]
    NoSuchSpoke(String),
    /// The tunnel network has no free address left.
    #[error("the tunnel network {0} has no free address left")]
    AddressesExhausted(Ipv4Net),
    /// Validity must be positive.
    #[error("an invitation must be valid for at least one second")]
    ZeroValidity,
    /// The spoke is not in a state that allows this.
    #[error("spoke {name:?} is {state}; {what} needs a {needed} spoke")]
    WrongState {
        /// Spoke name.
        name: String,
        /// Its state.
        state: &'static str,
        /// What was asked.
        what: &'static str,
        /// The state it needs.
        needed: &'static str,
    },
}

/// The result of a successful enrolment.
#[derive(Clone, Debug)]
pub struct Enrolled {
    /// The spoke's record (new or, for a retried enrolment, the existing one).
    pub spoke: SpokeRecord,
    /// The invitation, now marked used.
    pub invitation: InvitationRecord,
    /// The first key epoch, if the spoke is active and this is a new enrolment.
    pub first_epoch: Option<KeyEpoch>,
}

/// Checks a spoke name.
pub fn validate_name(name: &str) -> Result<(), RegistryError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(RegistryError::InvalidName(name.to_owned()))
    }
}

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

    /// Checks that an enrolled spoke may attach; returns its record.
    pub fn attach(&self, key: &PublicKey) -> Result<&SpokeRecord, Refusal> {
        let spoke = self.spoke_by_key(key).ok_or_else(|| {
            Refusal::new(
                RefusalCode::UnknownSpoke,
                "this spoke is not enrolled at this hub; enrol it with a new invitation",
            )
        })?;
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
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    fn registry() -> Registry {
        Registry::new(
            HubSettings {
                endpoint: "192.0.2.1:51820".into(),
                tunnel_net: "10.77.0.0/29".parse().unwrap(),
                routes: vec![],
                keepalive_secs: 25,
            },
            [],
            [],
        )
    }

    const HUB: PublicKey = PublicKey([1; 32]);

    #[test]
    fn invite_then_enrol_once() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut r = registry();
        let (_, inv) = r
            .invite("laptop", true, false, None, 60, HUB, 100, &mut rng)
            .unwrap();
        let spoke = PublicKey([2; 32]);
        let secret = r.enrolment_secret(&inv.id, &spoke, 110).unwrap();
        assert_eq!(secret, inv.secret);
        let e = r
            .enrol(&inv.id, spoke, "1.2.3.4:5", "host", None, 110, &mut rng)
            .unwrap();
        assert_eq!(e.spoke.id, 1);
        assert_eq!(
            e.spoke.tunnel_addr,
            "10.77.0.2".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(e.spoke.state, SpokeState::Active);
        assert_eq!(e.first_epoch.as_ref().map(|k| k.number), Some(1));
        // Another key cannot reuse it.
        let other = PublicKey([3; 32]);
        assert_eq!(
            r.enrolment_secret(&inv.id, &other, 111).unwrap_err().code,
            RefusalCode::InvitationUsed
        );
        // The same key may retry and gets the same record, no new key.
        let again = r
            .enrol(&inv.id, spoke, "1.2.3.4:5", "host", None, 112, &mut rng)
            .unwrap();
        assert_eq!(again.spoke, e.spoke);
        assert!(again.first_epoch.is_none());
        assert_eq!(r.attach(&spoke).unwrap().id, 1);
    }

    #[test]
    fn expired_and_unknown_invitations_are_refused() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut r = registry();
        let (_, inv) = r
            .invite("a", true, false, None, 10, HUB, 100, &mut rng)
            .unwrap();
        let k = PublicKey([2; 32]);
        assert_eq!(
            r.enrolment_secret(&inv.id, &k, 110).unwrap_err().code,
            RefusalCode::InvitationExpired
        );
        assert_eq!(
            r.enrolment_secret(&InvitationId([0; 16]), &k, 100)
                .unwrap_err()
                .code,
            RefusalCode::UnknownInvitation
        );
        assert!(r.enrol(&inv.id, k, "", "", None, 110, &mut rng).is_err());
        assert!(r.spokes().next().is_none());
        assert_eq!(r.expire_invitations(200, 0), vec![inv.id]);
    }

    #[test]
    fn names_are_checked() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut r = registry();
        assert!(matches!(
            r.invite("", true, false, None, 10, HUB, 0, &mut rng),
            Err(RegistryError::InvalidName(_))
        ));
        assert!(matches!(
            r.invite("a b", true, false, None, 10, HUB, 0, &mut rng),
            Err(RegistryError::InvalidName(_))
        ));
        r.invite("a", true, false, None, 10, HUB, 0, &mut rng)
            .unwrap();
        assert_eq!(
            r.invite("a", true, false, None, 10, HUB, 0, &mut rng)
                .unwrap_err(),
            RegistryError::NameTaken("a".into())
        );
        // Once the first invitation expired, the name is free again.
        assert!(r
            .invite("a", true, false, None, 10, HUB, 20, &mut rng)
            .is_ok());
        assert_eq!(
            r.invite("b", true, false, None, 0, HUB, 0, &mut rng)
                .unwrap_err(),
            RegistryError::ZeroValidity
        );
    }

    #[test]
    fn pending_spokes_get_no_keys_and_cannot_attach() {
        let mut rng = StdRng::seed_from_u64(4);
        let mut r = registry();
        let (_, inv) = r
            .invite("p", false, false, None, 60, HUB, 0, &mut rng)
            .unwrap();
        let k = PublicKey([4; 32]);
        let e = r.enrol(&inv.id, k, "", "", None, 1, &mut rng).unwrap();
        assert_eq!(e.spoke.state, SpokeState::Pending);
        assert!(e.first_epoch.is_none());
        assert_eq!(r.attach(&k).unwrap_err().code, RefusalCode::Pending);
        assert_eq!(
            r.attach(&PublicKey([9; 32])).unwrap_err().code,
            RefusalCode::UnknownSpoke
        );
    }

    #[test]
    fn approve_deny_revoke() {
        let mut rng = StdRng::seed_from_u64(6);
        let mut r = registry();
        let mut enrol = |r: &mut Registry, name: &str, key: u8| {
            let (_, inv) = r
                .invite(name, false, false, None, 60, HUB, 0, &mut rng)
                .unwrap();
            r.enrol(&inv.id, PublicKey([key; 32]), "", "", None, 1, &mut rng)
                .unwrap()
        };
        enrol(&mut r, "p", 1);
        enrol(&mut r, "q", 2);
        assert_eq!(r.approve("p").unwrap().state, SpokeState::Active);
        assert!(matches!(
            r.approve("p"),
            Err(RegistryError::WrongState { .. })
        ));
        assert_eq!(r.attach(&PublicKey([1; 32])).unwrap().name, "p");
        assert_eq!(r.deny("q").unwrap().state, SpokeState::Denied);
        assert_eq!(
            r.attach(&PublicKey([2; 32])).unwrap_err().code,
            RefusalCode::Revoked
        );
        assert_eq!(r.revoke("p").unwrap().state, SpokeState::Revoked);
        assert_eq!(
            r.attach(&PublicKey([1; 32])).unwrap_err().code,
            RefusalCode::Revoked
        );
        assert!(matches!(
            r.revoke("nobody"),
            Err(RegistryError::NoSuchSpoke(_))
        ));
        // The name is free again; the revoked key cannot come back with a new invitation.
        let (_, inv) = r
            .invite("p", true, false, None, 60, HUB, 2, &mut rng)
            .unwrap();
        let err = r
            .enrol(&inv.id, PublicKey([1; 32]), "", "", None, 3, &mut rng)
            .unwrap_err();
        assert_eq!(err.code, RefusalCode::Revoked);
        let fresh = r
            .enrol(&inv.id, PublicKey([9; 32]), "", "", None, 3, &mut rng)
            .unwrap();
        assert_eq!(fresh.spoke.state, SpokeState::Active);
        assert_eq!(r.spoke_by_name("p").unwrap().public_key, PublicKey([9; 32]));
    }

    #[test]
    fn an_unstored_change_is_undone() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut r = registry();
        let (_, kept) = r
            .invite("kept", true, false, None, 60, HUB, 0, &mut rng)
            .unwrap();
        // An invitation the store refused: gone, and its name free again.
        let (_, lost) = r
            .invite("lost", true, false, None, 60, HUB, 0, &mut rng)
            .unwrap();
        r.undo();
        assert!(r.invitations().all(|i| i.id != lost.id));
        r.invite("lost", true, false, None, 60, HUB, 0, &mut rng)
            .unwrap();
        // An enrolment the store refused: the spoke and its key are forgotten,
        // the invitation is unused and the address free.
        let key = PublicKey([4; 32]);
        let e = r.enrol(&kept.id, key, "", "", None, 1, &mut rng).unwrap();
        r.undo();
        assert!(r.spoke(e.spoke.id).is_none());
        assert!(r.spoke_by_key(&key).is_none());
        assert_eq!(r.attach(&key).unwrap_err().code, RefusalCode::UnknownSpoke);
        let again = r
            .enrol(&kept.id, PublicKey([5; 32]), "", "", None, 2, &mut rng)
            .unwrap();
        assert_eq!(again.spoke.tunnel_addr, e.spoke.tunnel_addr);
        assert!(again.first_epoch.is_some());
        // A revocation the store refused: the spoke is active again.
        r.revoke("kept").unwrap();
        r.undo();
        assert_eq!(r.attach(&PublicKey([5; 32])).unwrap().name, "kept");
        // A refused change replaces nothing, so undo after it changes nothing.
        assert!(r.revoke("nobody").is_err());
        r.undo();
        assert_eq!(r.spokes().count(), 1);
        assert_eq!(r.attach(&PublicKey([5; 32])).unwrap().name, "kept");
    }

    #[test]
    fn addresses_run_out_cleanly() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut r = registry();
        // /29: hosts .1-.6, hub takes .1, so five spokes fit.
        for i in 0..5u8 {
            let name = format!("s{i}");
            let (_, inv) = r
                .invite(&name, true, false, None, 60, HUB, 0, &mut rng)
                .unwrap();
            r.enrol(&inv.id, PublicKey([10 + i; 32]), "", "", None, 1, &mut rng)
                .unwrap();
        }
        let (_, inv) = r
            .invite("s5", true, false, None, 60, HUB, 0, &mut rng)
            .unwrap();
        let err = r
            .enrol(&inv.id, PublicKey([99; 32]), "", "", None, 1, &mut rng)
            .unwrap_err();
        assert_eq!(err.code, RefusalCode::Internal);
    }
}
