//! Requests and replies on the local admin sockets (hub) and control
//! sockets (spoke). JSON, one request and one reply per connection line.
//!
//! The CLI prints the same structs with `--json`, so scripts and people see
//! the same facts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::admin_calls::{AdminCall, HubRequest};

/// A request one of the daemons' local sockets takes whole: [`HubRequest`]
/// or [`SpokeRequest`] (a request's own type, such as
/// [`crate::admin_calls::Invite`], goes as the [`HubRequest`] it makes).
pub trait LocalRequest: Serialize + serde::de::DeserializeOwned {}

impl LocalRequest for HubRequest {}
impl LocalRequest for SpokeRequest {}

/// The access policy as admins see it (`tasuki-hub access show --json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AccessView {
    /// `open` (rules wait) or `enforce` (rules decide).
    pub mode: crate::access::Mode,
    /// The allow rules, numbered from 1.
    pub rules: Vec<RuleView>,
    /// The groups and their members.
    pub groups: Vec<GroupView>,
}

/// The answer to an access check.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AccessCheckView {
    /// Whether the flow's first packet would pass.
    pub allowed: bool,
    /// The mode in force.
    pub mode: crate::access::Mode,
    /// The rules that allow it (numbers as `access show` prints them).
    pub rules: Vec<usize>,
    /// What else decides, in words (the sender carries no traffic, …).
    pub notes: Vec<String>,
}

/// One numbered allow rule.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RuleView {
    /// Its number, for `access remove`.
    pub number: usize,
    /// The sender.
    pub from: crate::access::Selector,
    /// The receiver.
    pub to: crate::access::Selector,
    /// What may be sent.
    pub services: Vec<crate::access::Service>,
}

/// One group.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupView {
    /// Its name.
    pub name: String,
    /// Its users and spokes.
    pub members: Vec<crate::access::Member>,
    /// Its own key epochs, if it is keyed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<GroupKeyView>,
}

/// A keyed group's epochs (never key bytes).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupKeyView {
    /// The epoch every online member uses.
    pub epoch: u64,
    /// The newest epoch issued.
    pub latest: u64,
    /// Every epoch the hub still holds.
    pub held: Vec<u64>,
    /// Member spokes online (holding, or being given, the epoch in use).
    pub members_online: usize,
    /// Rotations done.
    pub rotations: u64,
    /// Seconds between rotations by time, as in force for the group
    /// (its own, or the hub-wide policy's); `None`: none by time.
    #[serde(default)]
    pub interval_secs: Option<u64>,
    /// Whether that interval is the group's own.
    #[serde(default)]
    pub own_interval: bool,
    /// Its multicast ranges (none: no multicast).
    #[serde(default)]
    pub multicast: Vec<String>,
    /// Packets per second one member may send into them.
    #[serde(default)]
    pub multicast_rate_pps: u32,
}

impl AccessView {
    /// The view of a stored policy.
    pub fn of(policy: &crate::access::AccessPolicy) -> Self {
        AccessView {
            mode: policy.mode,
            rules: policy
                .rules
                .iter()
                .enumerate()
                .map(|(i, r)| RuleView {
                    number: i + 1,
                    from: r.from.clone(),
                    to: r.to.clone(),
                    services: r.services.clone(),
                })
                .collect(),
            groups: policy
                .groups
                .iter()
                .map(|(name, members)| GroupView {
                    name: name.clone(),
                    members: members.iter().cloned().collect(),
                    key: None,
                })
                .collect(),
        }
    }
}

/// The direct-mode setting (see [`crate::pair_rules::DirectMode`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectView {
    /// The hub-wide setting.
    pub hub: crate::pair_rules::DirectMode,
    /// The spoke asked about, if one was.
    pub spoke: Option<String>,
    /// The setting in force (for that spoke, or hub-wide).
    pub direct: crate::pair_rules::DirectMode,
    /// Whether the spoke has an override of its own.
    pub overridden: bool,
    /// Pairs ended by this change (0 for a show).
    pub pairs_ended: usize,
}

/// One holder of a pair, as `pair list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairHolderView {
    /// Spoke name.
    pub spoke: String,
    /// The highest pair epoch it reported stored.
    pub stored: u64,
    /// The pair epoch it reported its direct handshakes use.
    pub current: u64,
    /// Its candidate endpoints as its peer is told them.
    pub candidates: Vec<String>,
    /// Its path to the peer as it last reported: `direct`, `relay`, or
    /// `unknown` before its first report.
    #[serde(default)]
    pub path: String,
    /// Where it sends direct traffic, while direct.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Seconds since its last direct handshake, when it reported.
    #[serde(default)]
    pub last_handshake_secs: Option<u64>,
    /// Datagram bytes it sent direct.
    #[serde(default)]
    pub tx_bytes: u64,
    /// Datagram bytes it received direct.
    #[serde(default)]
    pub rx_bytes: u64,
    /// Inner packets it sent direct.
    #[serde(default)]
    pub tx_packets: u64,
    /// Inner packets it received direct.
    #[serde(default)]
    pub rx_packets: u64,
}

/// One pair the hub keys (never key bytes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairView {
    /// The pair, "low-high" by spoke id.
    pub pair: String,
    /// Both holders, lower id first.
    pub holders: Vec<PairHolderView>,
    /// The epoch both holders switched to (0: none yet).
    pub epoch: u64,
    /// The epochs the hub still holds.
    pub held: Vec<u64>,
    /// Rotations done.
    pub rotations: u64,
    /// Seconds since a holder last reported use (or asked for it).
    pub idle_secs: u64,
    /// The keyed group whose epochs key the pair (the hub issues it none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

/// One link's key status (never key bytes).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LinkKeyView {
    /// Spoke name.
    pub spoke: String,
    /// Epoch carrying traffic (confirmed).
    pub epoch: u64,
    /// Newest epoch issued.
    pub latest: u64,
    /// Newest epoch the spoke reported stored.
    pub acked: u64,
    /// Epoch numbers the hub still holds.
    pub held: Vec<u64>,
    /// Seconds since the current epoch started carrying traffic.
    pub age_secs: u64,
    /// Packets on the link in this epoch.
    pub packets: u64,
    /// Bytes on the link in this epoch.
    pub bytes: u64,
    /// WireGuard handshakes on the link in this epoch.
    pub handshakes: u64,
    /// Rotations completed on this link.
    pub rotations: u64,
    /// Seconds until the interval trigger.
    pub next_interval_in: Option<u64>,
    /// Whether the spoke's control channel is up.
    pub control_connected: bool,
    /// Whether a per-spoke policy applies.
    pub policy_override: bool,
}

/// A request to the spoke daemon from `tasuki-spoke` subcommands.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum SpokeRequest {
    /// Daemon status and counters.
    Status,
    /// Relay a user's request to the hub.
    User {
        /// The request.
        request: crate::control::UserRequest,
    },
}

/// A user as admins see it (never the password or its hash).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserView {
    /// Login id.
    pub id: String,
    /// Full name.
    pub name: String,
    /// E-mail address.
    pub email: String,
    /// The initial password still has to be changed.
    pub must_change_password: bool,
    /// Spokes the user may log in on.
    pub spokes: Vec<String>,
    /// Spokes the user is logged in on now.
    pub logged_in_on: Vec<String>,
    /// Creation time (for a registration: when it was asked for), Unix seconds.
    pub created_at: u64,
    /// A registration that waits for an admin (`user approve` / `user deny`);
    /// `spokes` names the spoke it came from.
    #[serde(default)]
    pub pending: bool,
}

/// A user with a freshly set initial password (shown once).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserPassword {
    /// Login id.
    pub id: String,
    /// The initial password; the user must change it at first login.
    pub initial_password: String,
}

/// Envelope for every request: carries the protocol version.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// [`crate::PROTOCOL_VERSION`] of the client.
    pub version: u16,
    /// The request.
    pub request: T,
}

/// The reply to any request: a value or an error with its code.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply<T> {
    /// Success.
    Ok(T),
    /// Failure: what kind, and a message for the user.
    Error(crate::api_error::ApiError),
}

/// A freshly made invitation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InvitationView {
    /// The one-line invitation to hand to the spoke.
    pub invitation: String,
    /// Short id, for listings and the audit log.
    pub id: String,
    /// The spoke name.
    pub name: String,
    /// Expiry, Unix seconds.
    pub expires_at: u64,
    /// Whether it skips approval.
    pub pre_approved: bool,
    /// Fingerprint of the hub key the spoke will pin.
    pub hub_fingerprint: String,
}

/// One spoke as admins see it (never key bytes).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SpokeView {
    /// Spoke id.
    pub id: u32,
    /// Name.
    pub name: String,
    /// `pending`, `active` or `revoked`.
    pub state: String,
    /// Tunnel address.
    pub tunnel_addr: String,
    /// IPv6 tunnel address, when the hub has an IPv6 prefix.
    #[serde(default)]
    pub tunnel_addr6: Option<String>,
    /// Fingerprint of its static key.
    pub key_fingerprint: String,
    /// Enrolment time, Unix seconds.
    pub enrolled_at: u64,
    /// Source address of the enrolment.
    pub enrolled_from: String,
    /// Host name it reported.
    pub hostname: String,
    /// Invitation used.
    pub invitation: String,
    /// Unattended service spoke.
    pub service: bool,
    /// `tasuki` (tasuki-spoke) or `wireguard` (a stock WireGuard app).
    #[serde(default)]
    pub kind: String,
    /// Age of its current epoch, seconds.
    #[serde(default)]
    pub epoch_age_secs: Option<u64>,
    /// For a WireGuard peer: seconds until the hub ends its epoch by itself.
    #[serde(default)]
    pub epoch_ends_in_secs: Option<u64>,
    /// The user who confirms this device (second-device enrolment).
    pub owner: Option<String>,
    /// Current epoch of its link, if any.
    pub epoch: Option<u64>,
    /// Last data-plane endpoint seen.
    pub endpoint: Option<String>,
    /// Seconds since the last WireGuard handshake.
    pub last_handshake_secs: Option<u64>,
    /// Bytes received from it.
    pub rx_bytes: u64,
    /// Bytes sent to it.
    pub tx_bytes: u64,
}

/// Data-plane counters.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counters {
    /// Datagrams received on the UDP socket.
    pub rx_datagrams: u64,
    /// Datagrams sent.
    pub tx_datagrams: u64,
    /// Inner packets relayed spoke to spoke.
    pub relayed: u64,
    /// Inner packets written to the TUN.
    pub to_tun: u64,
    /// Inner packets read from the TUN and sent.
    pub from_tun: u64,
    /// Handshakes completed.
    pub handshakes: u64,
    /// Handshake initiations the hub answered that the peer never
    /// followed with data, but with another initiation: it could not open
    /// the answer (a wrong or ended preshared key, or a lost datagram).
    #[serde(default)]
    pub handshake_failures: u64,
    /// Cookie replies sent instead of handshakes while under load
    /// (WireGuard's denial-of-service defence).
    #[serde(default)]
    pub cookies: u64,
    /// Drops by reason ([`crate::routing::DropReason::name`]).
    pub dropped: BTreeMap<String, u64>,
    /// Flows the access policy allowed and tracks now, so that their
    /// replies pass (0 while the policy is open).
    #[serde(default)]
    pub access_flows: u64,
    /// Packets held for a WireGuard session that was being set up (sent
    /// once it came up, else counted as `handshake_timeout` drops).
    #[serde(default)]
    pub queued: u64,
    /// Group multicast copies: sealed to members (the hub's relay) or
    /// written to the TUN (a member spoke).
    #[serde(default)]
    pub multicast: u64,
    /// Reads of the UDP socket or the TUN that failed (ICMP errors about
    /// a peer that went away surface here too).
    #[serde(default)]
    pub receive_errors: u64,
    /// Inner packets sent into a child hub's link (toward its branch).
    #[serde(default)]
    pub to_branches: u64,
    /// Inner packets that came through a child hub's link and were forwarded.
    #[serde(default)]
    pub from_branches: u64,
}

/// The hub's status.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HubStatus {
    /// Daemon version.
    pub version: String,
    /// Hub public key fingerprint.
    pub fingerprint: String,
    /// Public endpoint.
    pub endpoint: String,
    /// Tunnel network.
    pub tunnel_net: String,
    /// IPv6 tunnel prefix, when the hub has one.
    #[serde(default)]
    pub tunnel_net6: Option<String>,
    /// Routed subnets.
    pub routes: Vec<String>,
    /// TUN interface name.
    pub interface: String,
    /// Spokes by state.
    pub spokes_active: usize,
    /// Spokes waiting for approval.
    pub spokes_pending: usize,
    /// Control connections currently open.
    pub control_connections: usize,
    /// The access policy's mode (`open` or `enforce`).
    #[serde(default)]
    pub access_mode: crate::access::Mode,
    /// Its number of allow rules.
    #[serde(default)]
    pub access_rules: usize,
    /// Data-plane counters.
    pub counters: Counters,
    /// Pairs keyed for direct mode.
    #[serde(default)]
    pub pairs: usize,
    /// What needs an admin's attention (WireGuard peers whose key epoch
    /// is about to end, …).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The parent hub's endpoint, when this hub joined one (claim 6).
    #[serde(default)]
    pub parent: Option<String>,
    /// Child hubs here (invited or joined).
    #[serde(default)]
    pub child_hubs: usize,
    /// Where this hub stands in its cluster, when its state is on etcd.
    #[serde(default)]
    pub cluster: Option<ClusterStanding>,
}

/// A cluster member's standing, for `status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStanding {
    /// `active` (lease renewed), `degraded` (changes refused: etcd does not
    /// answer), `orphaned` (the lease may have lapsed: spokes turned away).
    pub health: String,
    /// Every member's endpoint.
    pub members: Vec<String>,
}

/// The spoke's status.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SpokeStatus {
    /// `connecting`, `running` or `refused`.
    pub state: String,
    /// Spoke name.
    pub name: String,
    /// Tunnel address.
    pub tunnel_addr: String,
    /// IPv6 tunnel address, when the hub gives one.
    #[serde(default)]
    pub tunnel_addr6: Option<String>,
    /// Hub endpoint.
    pub hub_endpoint: String,
    /// Pinned hub key fingerprint.
    pub hub_fingerprint: String,
    /// TUN interface name.
    pub interface: String,
    /// Whether the control channel is up.
    pub control_connected: bool,
    /// Epoch carrying traffic.
    pub epoch: Option<u64>,
    /// Epoch numbers held (current, batch, not yet erased).
    pub held_epochs: Vec<u64>,
    /// True while a hard limit stops traffic.
    pub blocked: bool,
    /// Users logged in on this spoke.
    pub users: Vec<String>,
    /// Whether the hub carries this spoke's traffic (a user is logged in, or
    /// it is a service spoke).
    pub carrying: bool,
    /// New devices of a logged-in user waiting for confirmation here.
    pub devices_waiting: Vec<String>,
    /// Access requests waiting for the approval of a user logged in here.
    #[serde(default)]
    pub approvals_waiting: Vec<ApprovalView>,
    /// Seconds since the last WireGuard handshake.
    pub last_handshake_secs: Option<u64>,
    /// Last refusal or error from the hub.
    pub last_error: Option<String>,
    /// Data-plane counters.
    pub counters: Counters,
    /// Peer spokes in direct mode, with their path.
    #[serde(default)]
    pub peers: Vec<PeerView>,
    /// Keyed groups this spoke is a member of, with their epochs.
    #[serde(default)]
    pub groups: Vec<GroupHeldView>,
}

/// A keyed group a spoke is a member of, for `tasuki-spoke status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupHeldView {
    /// The group's name.
    pub group: String,
    /// The epoch in use (0: none yet).
    pub epoch: u64,
    /// Every epoch held, oldest first.
    pub held: Vec<u64>,
    /// Its multicast ranges and the members online (none: no multicast).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub multicast: Vec<String>,
    /// Members online, when it has multicast.
    #[serde(default)]
    pub members_online: usize,
}

/// One peer spoke of a spoke in direct mode, for `tasuki-spoke status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    /// The peer's name.
    pub name: String,
    /// The pair's name, `LOW-HIGH` spoke ids.
    pub pair: String,
    /// The peer's tunnel address.
    pub tunnel_addr: String,
    /// `direct` or `relay`.
    pub path: String,
    /// Where direct traffic goes, while direct.
    pub endpoint: Option<String>,
    /// The pair epoch new handshakes use.
    pub epoch: u64,
    /// Pair epochs held.
    pub held_epochs: Vec<u64>,
    /// Seconds since the last direct handshake.
    pub last_handshake_secs: Option<u64>,
    /// Inner packets sent direct.
    pub tx_packets: u64,
    /// Inner packets received direct.
    pub rx_packets: u64,
    /// Bytes of datagrams sent direct.
    pub tx_bytes: u64,
    /// Bytes of datagrams received direct.
    pub rx_bytes: u64,
    /// Times the direct path took over.
    pub upgrades: u64,
    /// Times it stopped answering and the relay took over again.
    pub fallbacks: u64,
    /// Rounds of probes nobody answered.
    pub punch_failures: u64,
}

/// An access request that waits for a logged-in user's yes or no.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApprovalView {
    /// The approver, logged in here.
    pub approver: String,
    /// The request.
    pub request: crate::requests::Request,
}
