//! The hub's admin requests, one type each, and the type of each one's
//! reply: the daemon answers a request with exactly its [`AdminCall::Reply`]
//! and `tasuki-hub … --json` prints that same type, so a script reads what
//! the daemon wrote.
//!
//! On the socket a request is its fields and an `op` tag with the request's
//! snake_case name (`{"op":"invite","name":"laptop",…}`).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::access::{Member, Mode, Rule, Service};
use crate::admin_api::{
    AccessCheckView, AccessView, DirectView, HubStatus, InvitationView, LinkKeyView, PairView,
    SpokeView, UserPassword, UserView,
};
use crate::audit::AuditRecord;
pub use crate::hierarchy::calls::*;
use crate::pair_rules::DirectMode;
use crate::requests::{Request, RequestPolicy};
use crate::rotation::RotationPolicy;
use crate::wireguard::WireGuardConfigView;

/// A request to the hub daemon and the type of its answer.
pub trait AdminCall: Serialize + Into<HubRequest> {
    /// What the daemon answers.
    type Reply: Serialize + DeserializeOwned;
}

/// Declares [`HubRequest`] with one variant per request type, and each
/// type's reply.
macro_rules! hub_requests {
    ($( $(#[$doc:meta])* $variant:ident -> $reply:ty, )*) => {
        /// A request to the hub daemon from `tasuki-hub` subcommands.
        #[derive(Clone, Debug, Serialize, Deserialize)]
        #[serde(tag = "op", rename_all = "snake_case")]
        pub enum HubRequest {
            $( $(#[$doc])* $variant($variant), )*
        }

        $(
            impl AdminCall for $variant {
                type Reply = $reply;
            }

            impl From<$variant> for HubRequest {
                fn from(r: $variant) -> Self {
                    HubRequest::$variant(r)
                }
            }
        )*
    };
}

hub_requests! {
    /// Make an invitation for a new spoke.
    Invite -> InvitationView,
    /// Add a stock WireGuard app as a spoke.
    WireGuardAdd -> WireGuardConfigView,
    /// A WireGuard peer's configuration.
    WireGuardConfig -> WireGuardConfigView,
    /// List enrolled spokes.
    ListSpokes -> Vec<SpokeView>,
    /// Approve a pending spoke.
    Approve -> SpokeStateView,
    /// Deny a pending spoke.
    Deny -> SpokeStateView,
    /// Revoke a spoke.
    Revoke -> SpokeStateView,
    /// Register a user.
    UserAdd -> UserPassword,
    /// List users.
    UserList -> Vec<UserView>,
    /// Remove a user.
    UserRemove -> UserRemoved,
    /// Give a user a new initial password.
    UserResetPassword -> UserPassword,
    /// Approve a registration.
    UserApprove -> UserView,
    /// Deny a registration.
    UserDeny -> RegistrationDenied,
    /// Let a user log in on a spoke.
    UserAllow -> UserView,
    /// Audit records since a time.
    Audit -> Vec<AuditRecord>,
    /// Daemon status and counters.
    Status -> HubStatus,
    /// Rotate link keys now.
    KeyRotate -> RotationsAsked,
    /// Show a rotation policy.
    KeyPolicyShow -> RotationPolicy,
    /// Set a rotation policy.
    KeyPolicySet -> RotationPolicy,
    /// Per-link key status.
    KeyStatus -> Vec<LinkKeyView>,
    /// Show the direct-mode setting.
    DirectShow -> DirectView,
    /// Set the direct-mode setting.
    DirectSet -> DirectView,
    /// The pairs the hub keys (direct mode).
    PairList -> Vec<PairView>,
    /// The access policy.
    AccessShow -> AccessView,
    /// Set the access mode.
    AccessMode -> AccessView,
    /// Append an allow rule.
    AccessAllow -> AccessView,
    /// Remove a rule.
    AccessRemove -> AccessView,
    /// Create a group.
    GroupAdd -> AccessView,
    /// Remove a group.
    GroupRemove -> AccessView,
    /// Check a flow against the policy.
    AccessCheck -> AccessCheckView,
    /// Put members into a group or take them out.
    GroupMembers -> AccessView,
    /// Give a group its own key epochs, or end them.
    GroupKey -> AccessView,
    /// Give a keyed group multicast ranges, take them away, set its rate.
    GroupMulticastSet -> AccessView,
    /// Add or replace a request policy (claim 13).
    RequestPolicySet -> RequestPolicy,
    /// The request policies.
    RequestPolicyList -> Vec<RequestPolicy>,
    /// Remove a request policy; the reply is the ones left.
    RequestPolicyRemove -> Vec<RequestPolicy>,
    /// The access requests the hub keeps.
    RequestList -> Vec<Request>,
    /// An admin approves or denies a request.
    RequestDecide -> Request,
    /// An admin ends a request, waiting or granted.
    RequestRevoke -> Request,
    /// Give a hub that carries IPv4 only an IPv6 prefix.
    Ipv6Enable -> HubStatus,
    /// Make an invitation for a child hub.
    HubInvite -> InvitationView,
    /// Approve a child hub and what it announced.
    HubApprove -> ChildHubView,
    /// Revoke a child hub.
    HubRevoke -> ChildHubView,
    /// The parent and the child hubs.
    HubList -> HubTreeView,
    /// Join a parent hub.
    HubJoin -> ParentView,
}

/// Give a hub that carries IPv4 only an IPv6 prefix; its spokes take
/// their addresses without enrolling again.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ipv6Enable {
    /// The prefix; a random unique-local /64 when none is given.
    pub tunnel_net: Option<ipnet::Ipv6Net>,
    /// IPv6 subnets routed behind the hub.
    pub routes: Vec<ipnet::Ipv6Net>,
}

/// Add or replace a request policy.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RequestPolicySet {
    /// The policy.
    pub policy: RequestPolicy,
}

/// The request policies.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RequestPolicyList {}

/// Remove a request policy.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RequestPolicyRemove {
    /// Its name.
    pub name: String,
}

/// The access requests.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RequestList {}

/// An admin's approval (or denial) of a request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RequestDecide {
    /// The request's number.
    pub id: u64,
    /// Yes (or no).
    pub approve: bool,
}

/// End a request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RequestRevoke {
    /// The request's number.
    pub id: u64,
}

/// Make an invitation for a new spoke.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Invite {
    /// The spoke's name.
    pub name: String,
    /// Skip admin approval.
    pub pre_approved: bool,
    /// An unattended service spoke (carries traffic with no login).
    pub service: bool,
    /// Validity in seconds.
    pub valid_secs: u64,
}

/// Add a stock WireGuard app as a spoke; the reply is its configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WireGuardAdd {
    /// The peer's name.
    pub name: String,
    /// The public key its app generated (base64); `None`: the hub draws a
    /// key pair and puts the private key into this one reply.
    pub public_key: Option<String>,
    /// The user it belongs to (its access rules apply to it).
    pub user: Option<String>,
}

/// A WireGuard peer's configuration with its current epoch's key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WireGuardConfig {
    /// The peer's name.
    pub name: String,
}

/// List enrolled spokes.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ListSpokes {}

/// Approve a pending spoke.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Approve {
    /// Spoke name.
    pub name: String,
}

/// Deny a pending spoke.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Deny {
    /// Spoke name.
    pub name: String,
}

/// Revoke a spoke: erase its keys, drop its sessions, refuse it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Revoke {
    /// Spoke name.
    pub name: String,
}

/// Register a user; the reply carries an initial password.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserAdd {
    /// Login id.
    pub id: String,
    /// Full name.
    pub name: String,
    /// E-mail address.
    pub email: String,
}

/// List users.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UserList {}

/// Remove a user (logged out everywhere).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserRemove {
    /// Login id.
    pub id: String,
}

/// Give a user a new initial password.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserResetPassword {
    /// Login id.
    pub id: String,
}

/// Approve a registration asked for from a spoke.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserApprove {
    /// Login id.
    pub id: String,
}

/// Deny a registration asked for from a spoke.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserDeny {
    /// Login id.
    pub id: String,
}

/// Let a user log in on a spoke.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserAllow {
    /// Login id.
    pub id: String,
    /// Spoke name.
    pub spoke: String,
}

/// Audit records since a time.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Audit {
    /// Unix seconds.
    pub since: u64,
}

/// Daemon status and counters.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {}

/// Rotate one spoke's link key (by name), or every link's.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyRotate {
    /// Spoke name; `None` for all.
    pub spoke: Option<String>,
    /// A keyed group to rotate instead of links.
    #[serde(default)]
    pub group: Option<String>,
}

/// Show the rotation policy (hub-wide, or the one in force for a spoke).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyPolicyShow {
    /// Spoke name; `None` for the hub-wide policy.
    pub spoke: Option<String>,
}

/// Replace the hub-wide policy or set a spoke's override; `policy: None`
/// with a spoke drops its override. The reply is the policy now in force.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyPolicySet {
    /// Spoke name; `None` for the hub-wide policy.
    pub spoke: Option<String>,
    /// The new policy.
    pub policy: Option<RotationPolicy>,
}

/// Per-link key status.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct KeyStatus {}

/// Show the direct-mode setting (hub-wide, or the one in force for a spoke).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DirectShow {
    /// Spoke name; `None` for the hub-wide setting.
    pub spoke: Option<String>,
}

/// Set the hub-wide direct mode or a spoke's override; `direct: None`
/// with a spoke drops its override. Turning it off ends the pairs it
/// affects at once. The reply is the setting now in force.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DirectSet {
    /// Spoke name; `None` for the hub-wide setting.
    pub spoke: Option<String>,
    /// The new setting.
    pub direct: Option<DirectMode>,
}

/// The pairs the hub keys (never key bytes).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PairList {}

/// The access policy: mode, rules and groups.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AccessShow {}

/// Let the rules decide (`enforce`) or only watch (`open`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AccessMode {
    /// The new mode.
    pub mode: Mode,
}

/// Append an allow rule.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AccessAllow {
    /// The rule.
    pub rule: Rule,
}

/// Remove a rule by its number in [`AccessShow`]'s reply (1-based).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AccessRemove {
    /// The rule's number.
    pub number: usize,
}

/// Create an empty group.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupAdd {
    /// Group name.
    pub name: String,
}

/// Remove a group that no rule names.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupRemove {
    /// Group name.
    pub name: String,
}

/// Whether the access policy lets a flow through, and which rules do.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AccessCheck {
    /// The sender: `spoke:NAME`, or an address (a spoke's tunnel address,
    /// the hub's, a LAN host's).
    pub from: String,
    /// The receiver's address.
    pub to: std::net::IpAddr,
    /// The protocol and destination port (a range's first port).
    pub service: Service,
}

/// Give a group its own key epochs (claim 11), or end them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupKey {
    /// Group name.
    pub name: String,
    /// On (keyed) or off.
    pub on: bool,
    /// The group's own rotation interval, replacing the hub-wide one
    /// (`None`: leave it as it is).
    #[serde(default)]
    pub interval: Option<GroupInterval>,
}

/// A keyed group's multicast ranges (claim 11's bulletin board): a
/// member's packet to an address in one reaches every other member.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupMulticastSet {
    /// Group name (a keyed group).
    pub name: String,
    /// Ranges to add (multicast addresses, owned by no other group).
    #[serde(default)]
    pub add: Vec<ipnet::Ipv4Net>,
    /// Ranges to take away.
    #[serde(default)]
    pub remove: Vec<ipnet::Ipv4Net>,
    /// Packets per second one member may send into the group (`None`:
    /// leave it as it is).
    #[serde(default)]
    pub rate_pps: Option<u32>,
}

/// A keyed group's rotation interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupInterval {
    /// The hub-wide policy's interval.
    HubWide,
    /// No rotation by time (members leaving and admins still rotate it).
    Off,
    /// Every this many seconds.
    Every(u64),
}

/// Put members into a group, or take them out.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupMembers {
    /// Group name.
    pub name: String,
    /// Users and spokes.
    pub members: Vec<Member>,
    /// Take them out instead.
    pub remove: bool,
}

/// A spoke's state after an approval, denial or revocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpokeStateView {
    /// Spoke name.
    pub spoke: String,
    /// Its state now (`active`, `denied`, `revoked`).
    pub state: String,
}

/// A user was removed (and logged out everywhere).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRemoved {
    /// The login id removed.
    pub removed: String,
}

/// A registration was denied (and forgotten).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationDenied {
    /// The login id asked for.
    pub denied: String,
}

/// Rotations asked for by `key rotate`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationsAsked {
    /// How many links rotate.
    pub links: usize,
    /// How many keyed groups rotate.
    #[serde(default)]
    pub groups: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_keeps_its_wire_shape() {
        let req: HubRequest = Invite {
            name: "laptop".into(),
            pre_approved: true,
            service: false,
            valid_secs: 60,
        }
        .into();
        let json = serde_json::to_value(&req).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"op": "invite", "name": "laptop", "pre_approved": true, "service": false, "valid_secs": 60})
        );
        let back: HubRequest = serde_json::from_value(json).unwrap();
        assert!(matches!(back, HubRequest::Invite(i) if i.name == "laptop"));
        let status = serde_json::to_value(HubRequest::from(Status {})).unwrap();
        assert_eq!(status, serde_json::json!({"op": "status"}));
        let back: HubRequest = serde_json::from_str(r#"{"op":"list_spokes"}"#).unwrap();
        assert!(matches!(back, HubRequest::ListSpokes(_)));
    }
}
