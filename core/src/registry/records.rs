//! The registry's records: hub settings, spokes, invitations, and the
//! errors and results of the rules that change them.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::invitation::InvitationId;
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

/// What runs at a spoke's end of its link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpokeKind {
    /// `tasuki-spoke`: enrolled with an invitation, keeps a control channel,
    /// follows rotation by itself.
    #[default]
    Tasuki,
    /// A stock WireGuard app (a phone, Windows, macOS) added by an admin
    /// with the key the app generated: no control channel, so its epoch is
    /// its configuration's preshared key and ends only by a long interval
    /// or an admin's command.
    WireGuard,
}

impl SpokeKind {
    /// Short name for listings.
    pub fn name(self) -> &'static str {
        match self {
            SpokeKind::Tasuki => "tasuki",
            SpokeKind::WireGuard => "wireguard",
        }
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
    /// device where they are logged in (patent fig. 6). For a WireGuard
    /// peer: the user it belongs to, whose access rules it follows.
    pub owner: Option<String>,
    /// What runs at its end.
    pub kind: SpokeKind,
}

impl SpokeRecord {
    /// A stock WireGuard peer (no control channel).
    pub fn is_wireguard(&self) -> bool {
        self.kind == SpokeKind::WireGuard
    }
}

/// A spoke record as versions before WireGuard peers stored it: read from
/// an older store and taken as a tasuki spoke.
#[derive(Clone, Debug, Deserialize)]
pub struct LegacySpokeRecord {
    id: SpokeId,
    name: String,
    public_key: PublicKey,
    tunnel_addr: Ipv4Addr,
    state: SpokeState,
    enrolled_at: u64,
    enrolled_from: String,
    hostname: String,
    invitation: InvitationId,
    service: bool,
    owner: Option<String>,
}

impl From<LegacySpokeRecord> for SpokeRecord {
    fn from(old: LegacySpokeRecord) -> Self {
        SpokeRecord {
            id: old.id,
            name: old.name,
            public_key: old.public_key,
            tunnel_addr: old.tunnel_addr,
            state: old.state,
            enrolled_at: old.enrolled_at,
            enrolled_from: old.enrolled_from,
            hostname: old.hostname,
            invitation: old.invitation,
            service: old.service,
            owner: old.owner,
            kind: SpokeKind::Tasuki,
        }
    }
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
    /// Another spoke is enrolled with that key.
    #[error("that public key is already enrolled as spoke {0:?}; each device needs its own key")]
    KeyTaken(String),
    /// Not a WireGuard public key.
    #[error(
        "{0:?} is not a WireGuard public key (44 characters of base64, as `wg pubkey` prints)"
    )]
    BadPublicKey(String),
    /// The spoke runs tasuki-spoke, not a stock WireGuard app.
    #[error("spoke {0:?} is not a WireGuard peer; it gets its keys over its control channel")]
    NotWireGuard(String),
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
