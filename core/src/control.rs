//! Control-channel messages between a spoke and the hub.
//!
//! They travel inside the Noise channel ([`crate::channel`]), one message per
//! frame, encoded with postcard. The enrolment and attach exchanges are here;
//! the key commands of the rotation protocol (patent 0017) are
//! [`SpokeMessage::KeyReceipt`] and [`HubMessage::KeyDistribution`] and grow
//! with the rotation work.

use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::invitation::InvitationId;
use crate::keys::{KeyEpoch, PublicKey};
use crate::pair::PairId;
use crate::pair_schedule::PairDelivery;

pub use crate::group_messages::{GroupMulticast, HubGroup, SpokeGroup};
use zeroize::Zeroizing;

pub use crate::spoke_config::SpokeConfig;

/// Which exchange a control connection is for; the first byte a spoke sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Purpose {
    /// A new spoke enrolling with an invitation (Noise IKpsk2, psk = invitation secret).
    Enrol = 1,
    /// An enrolled spoke attaching again (Noise IK, its static key is its identity).
    Attach = 2,
}

impl Purpose {
    /// Reads the purpose byte.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Enrol),
            2 => Some(Self::Attach),
            _ => None,
        }
    }
}

/// The payload of the spoke's first Noise message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`crate::PROTOCOL_VERSION`] of the spoke.
    pub version: u16,
    /// The invitation being used (enrolment only).
    pub invitation: Option<InvitationId>,
}

/// Messages a spoke sends to the hub.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpokeMessage {
    /// First message of an enrolment: the spoke's host name, for the admin.
    EnrolRequest {
        /// The machine's host name as the spoke sees it.
        hostname: String,
        /// Enrol as this user's additional device (patent fig. 6): the user
        /// confirms it from a spoke where they are logged in.
        as_user: Option<String>,
    },
    /// A user's request, relayed by the spoke; answered by [`HubMessage::UserReply`].
    User {
        /// Matches the reply.
        id: u32,
        /// The request.
        request: UserRequest,
    },
    /// First message of an attach: "send me my configuration and keys".
    Attach,
    /// Receipt report: the spoke has stored epoch `epoch` durably.
    KeyReceipt {
        /// The epoch number received.
        epoch: u64,
    },
    /// Update report: the spoke's data plane runs a session under `epoch`.
    UpdateReport {
        /// The epoch now carrying traffic.
        epoch: u64,
    },
    /// Distribution request: the spoke asks for the keys it should hold
    /// (it is blocked, or its batch runs low).
    DistributionRequest,
    /// Update request: the spoke asks for a new epoch (it saw a trigger).
    UpdateRequest {
        /// Why.
        reason: String,
    },
    /// Keeps an idle connection open and proves the spoke is alive.
    Keepalive,
    /// Direct mode: a pair request or report.
    Pair(SpokePair),
    /// Keyed groups: a group epoch stored, or switched to.
    Group(SpokeGroup),
    /// A child hub's first enrolment message (claim 6), with what its branch serves.
    EnrolHub {
        /// The machine's host name as the child hub sees it.
        hostname: String,
        /// The subnets its branch serves.
        serves: crate::hierarchy::ServedNets,
    },
    /// What a child hub's branch serves now (after each attach, and on changes).
    Serves(crate::hierarchy::ServedNets),
}

/// A spoke's direct-mode messages (claim 10): the hub answers a request
/// with a pair epoch, and hears of its receipt and use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpokePair {
    /// Direct mode: the spoke sends traffic to the spoke at this tunnel
    /// address and asks for their pair (answered by [`HubPair::Offer`]
    /// or [`HubPair::Refused`]).
    Request {
        /// The peer spoke's tunnel address.
        peer: Ipv4Addr,
    },
    /// Receipt report of a pair epoch: stored durably.
    Receipt {
        /// The pair.
        pair: PairId,
        /// The epoch stored.
        epoch: u64,
    },
    /// Update report of a pair: the spoke's new direct handshakes use `epoch`.
    Switched {
        /// The pair.
        pair: PairId,
        /// The epoch switched to.
        epoch: u64,
    },
    /// Sent after each attach and when it changes: where the spoke's
    /// data-plane socket can be reached on its own networks, and the
    /// pairs it holds (the hub ends those it does not know).
    Facts(DirectFacts),
    /// The pairs that carried direct traffic since the last such report
    /// (the hub cannot see direct traffic; a pair nobody uses ends).
    Used(Vec<PairId>),
    /// Every pair's path and counters, every few seconds (for `pair list`
    /// and the hub's metrics); an `active` pair counts as used.
    Usage(Vec<PairUsage>),
}

/// One pair's direct traffic as one holder saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairUsage {
    /// The pair.
    pub pair: PairId,
    /// Where direct traffic goes now; `None`: through the relay.
    pub direct: Option<SocketAddr>,
    /// Direct traffic since the last report.
    pub active: bool,
    /// Seconds since the last direct handshake.
    pub last_handshake_secs: Option<u64>,
    /// Inner packets sent direct.
    pub tx_packets: u64,
    /// Inner packets received direct.
    pub rx_packets: u64,
    /// Datagram bytes sent direct.
    pub tx_bytes: u64,
    /// Datagram bytes received direct.
    pub rx_bytes: u64,
    /// Direct handshakes this holder began that completed (each counted
    /// once, by its initiator).
    pub handshakes: u64,
    /// Times the direct path took over.
    pub upgrades: u64,
    /// Times it stopped answering and the relay took over again.
    pub fallbacks: u64,
    /// Rounds of probes nobody answered.
    pub punch_failures: u64,
}

/// What a spoke tells the hub about its direct mode.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectFacts {
    /// The spoke's local addresses with its data-plane port (candidates
    /// for a peer on the same network).
    pub local: Vec<SocketAddr>,
    /// Every pair held, with the epoch in use and the highest stored.
    pub pairs: Vec<PairHeld>,
}

/// One pair a spoke holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairHeld {
    /// The pair.
    pub pair: PairId,
    /// The epoch its direct handshakes use (0: none yet).
    pub current: u64,
    /// The highest epoch stored.
    pub stored: u64,
}

/// Messages the hub sends to a spoke.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HubMessage {
    /// The spoke's configuration, sent after enrolment and each attach.
    Welcome(SpokeConfig),
    /// A key distribution: the epochs the spoke should hold now.
    KeyDistribution(KeyDelivery),
    /// Update notification: switch the data plane to `epoch` now (the hub
    /// accepts handshakes under it).
    UpdateNotification {
        /// The epoch to switch to.
        epoch: u64,
    },
    /// The answer to [`SpokeMessage::User`].
    UserReply {
        /// The request's id.
        id: u32,
        /// The result, or an error message for the user.
        result: Result<UserReply, crate::api_error::ApiError>,
    },
    /// Who is logged in on this spoke, and whether it carries traffic (sent
    /// on attach and whenever it changes at the hub).
    Session(SessionFacts),
    /// A new device of a user logged in here waits for their confirmation.
    DeviceWaiting(DeviceWaiting),
    /// Acknowledges an update report.
    ReportAck {
        /// The epoch reported.
        epoch: u64,
    },
    /// The hub refuses the request; the connection closes after this.
    Refused(Refusal),
    /// Reply to a keepalive.
    Keepalive,
    /// Direct mode: a pair epoch, a switch, an end or a refusal.
    Pair(HubPair),
    /// Keyed groups: a group epoch, a switch, or the end of membership.
    Group(HubGroup),
    /// The access requests a user logged in here may decide now (sent
    /// whenever that changes, and on attach and login).
    ApprovalsWaiting(crate::requests::ApprovalsWaiting),
}

/// The hub's direct-mode messages to one holder of a pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HubPair {
    /// A pair whose holders share keyed group `group`: they derive its
    /// keys from the group's epochs ([`crate::group_keys::pair_key`]) and
    /// switch them with the group's; the hub issues none. Sent again when
    /// the holder asks for the pair again, or the peer's address changes.
    Keyed {
        /// The pair.
        pair: PairId,
        /// The other holder.
        peer: PairPeer,
        /// The keyed group.
        group: String,
    },
    /// Direct mode: a pair epoch for the pair with `peer` (store it, then
    /// send [`SpokePair::Receipt`]); re-sent until receipted.
    Offer(PairOffer),
    /// Switch the pair's direct handshakes to `epoch` and probe the peer's
    /// candidates now (both holders hear it at the same moment); re-sent
    /// until [`SpokePair::Switched`] says so.
    Switch {
        /// The pair.
        pair: PairId,
        /// The epoch to switch to.
        epoch: u64,
        /// Both holders run this epoch already: older ones may go once
        /// their grace has passed.
        settled: u64,
        /// The peer's candidate endpoints as the hub knows them now.
        candidates: Vec<SocketAddr>,
    },
    /// The pair ended (a holder revoked, logged out, the policy no longer
    /// allows it, idle): drop its session and erase its epochs now.
    Ended {
        /// The pair.
        pair: PairId,
    },
    /// No pair with the spoke at `peer`; traffic stays on the relay.
    Refused {
        /// The peer's tunnel address, as asked.
        peer: Ipv4Addr,
        /// Why (a person reads it in the log).
        reason: String,
    },
    /// What refused earlier pair requests changed (direct mode turned on,
    /// the access policy edited): ask again now instead of after the
    /// refusal's quiet time.
    Reconsider,
    /// The access rules for what comes straight from the peer (and what
    /// goes to it), sent with each offer and whenever they change; until
    /// they come, nothing direct passes.
    Rules {
        /// The pair.
        pair: PairId,
        /// The rules.
        rules: crate::access::PairRules,
    },
}

/// A pair epoch with what the holder needs to reach the peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairOffer {
    /// The peer spoke.
    pub peer: PairPeer,
    /// The pair epoch, sealed under the holder's link epoch.
    pub delivery: PairDelivery,
}

/// The other spoke of a pair, as its holder needs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairPeer {
    /// Its id at the hub.
    pub spoke_id: u32,
    /// Its name, for status.
    pub name: String,
    /// Its static key: the direct session's peer key.
    pub public_key: PublicKey,
    /// Its tunnel address: packets to it may go direct, packets from it
    /// over the pair's session must come from it.
    pub tunnel_addr: Ipv4Addr,
    /// Where its data-plane socket may be reached: the address the hub
    /// sees its datagrams come from, then its local addresses.
    pub candidates: Vec<SocketAddr>,
}

/// Who is logged in on a spoke, and whether the hub carries its traffic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionFacts {
    /// Users logged in there.
    pub users: Vec<String>,
    /// Whether the hub carries that spoke's traffic.
    pub carrying: bool,
}

/// A new device of a user, waiting for that user to confirm it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceWaiting {
    /// The user.
    pub user: String,
    /// The new spoke's name.
    pub name: String,
    /// Where it enrolled from.
    pub from: String,
    /// Its host name.
    pub hostname: String,
}

/// A user's request at the hub (passwords travel only inside the Noise channel).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserRequest {
    /// Log in on this spoke. With an initial password, `new_password` replaces it.
    Login {
        /// User id.
        user: String,
        /// Password.
        password: Zeroizing<String>,
        /// Replacement for an initial password.
        new_password: Option<Zeroizing<String>>,
    },
    /// Log out from this spoke.
    Logout {
        /// User id.
        user: String,
    },
    /// Change the password.
    Passwd {
        /// User id.
        user: String,
        /// Current password.
        old: Zeroizing<String>,
        /// New password.
        new: Zeroizing<String>,
    },
    /// Make an invitation for another device of this (logged-in) user.
    InviteDevice {
        /// User id.
        user: String,
        /// Name of the new spoke.
        name: String,
    },
    /// Confirm a new device of this (logged-in) user.
    ApproveDevice {
        /// User id.
        user: String,
        /// The device; `None` when exactly one waits.
        name: Option<String>,
    },
    /// Ask for an account, with a password of one's own; an admin approves.
    Register {
        /// The login id asked for.
        user: String,
        /// Full name.
        name: String,
        /// E-mail address.
        email: String,
        /// The chosen password.
        password: Zeroizing<String>,
    },
    /// Ask for temporary access under a request policy (claim 13).
    AskAccess {
        /// User id (logged in here).
        user: String,
        /// The request policy.
        policy: String,
        /// How long the grant is to last.
        duration_secs: u64,
        /// Why.
        reason: String,
    },
    /// Approve (or deny) another user's access request.
    DecideAccess {
        /// User id (logged in here).
        user: String,
        /// The request's number.
        id: u64,
        /// Yes (or no).
        approve: bool,
    },
    /// The user's own requests and those waiting for their approval.
    ListAccess {
        /// User id (logged in here).
        user: String,
    },
}

impl std::fmt::Debug for UserRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a password.
        match self {
            UserRequest::Login { user, .. } => write!(f, "Login({user})"),
            UserRequest::Logout { user } => write!(f, "Logout({user})"),
            UserRequest::Passwd { user, .. } => write!(f, "Passwd({user})"),
            UserRequest::InviteDevice { user, name } => write!(f, "InviteDevice({user}, {name})"),
            UserRequest::ApproveDevice { user, name } => {
                write!(f, "ApproveDevice({user}, {name:?})")
            }
            UserRequest::Register { user, .. } => write!(f, "Register({user})"),
            UserRequest::AskAccess { user, policy, .. } => write!(f, "AskAccess({user}, {policy})"),
            UserRequest::DecideAccess { user, id, approve } => {
                write!(f, "DecideAccess({user}, {id}, {approve})")
            }
            UserRequest::ListAccess { user } => write!(f, "ListAccess({user})"),
        }
    }
}

/// A successful answer to a [`UserRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserReply {
    /// Logged in.
    LoggedIn {
        /// User id.
        user: String,
    },
    /// Logged out.
    LoggedOut {
        /// User id.
        user: String,
    },
    /// Password changed.
    PasswordChanged,
    /// The new device's invitation.
    DeviceInvitation {
        /// One-line invitation.
        invitation: String,
    },
    /// The device was confirmed.
    DeviceApproved {
        /// Its name.
        name: String,
    },
    /// The registration waits for an admin.
    Registered {
        /// The login id asked for.
        user: String,
    },
    /// An access request as it is now (asked, approved or denied).
    AccessRequest(Box<crate::requests::Request>),
    /// The user's own access requests, and those waiting for their yes.
    AccessRequests {
        /// Asked by the user.
        mine: Vec<crate::requests::Request>,
        /// Waiting for the user's approval.
        to_decide: Vec<crate::requests::Request>,
    },
}

/// How a delivered key travels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryBody {
    /// Parallel delivery (patent fig. 8): protected by the control channel alone.
    Channel(KeyEpoch),
    /// Crossed delivery (fig. 7): sealed under epoch `under` (= k−1), see [`crate::seal`].
    Crossed {
        /// The epoch that seals it.
        under: u64,
        /// The sealed box.
        sealed: Vec<u8>,
    },
}

/// A key distribution: one epoch for the spoke–hub link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyDelivery {
    /// The epoch number delivered.
    pub epoch: u64,
    /// The key, sealed as the policy says.
    pub body: DeliveryBody,
    /// When this epoch ends, as the spoke counts it.
    pub lifetime: Lifetime,
}

/// How long an epoch lives once it carries traffic, counted by the side that
/// sees the traffic (the spoke), and what happens when it ends.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifetime {
    /// Seconds.
    pub secs: Option<u64>,
    /// Packets, both directions.
    pub packets: Option<u64>,
    /// Bytes, both directions.
    pub bytes: Option<u64>,
    /// The spoke may move to the next held epoch by itself when this one
    /// ends (batch mode, patent fig. 3).
    pub self_switch: bool,
    /// Stop carrying traffic once this epoch is over by more than `slack_secs`
    /// (or 10 % of its packet/byte budget) and no next epoch is held (0019).
    pub hard: bool,
    /// Tolerance before a hard limit bites, seconds.
    pub slack_secs: u64,
}

/// Why the hub refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RefusalCode {
    /// The Noise handshake failed: the spoke pinned another hub key, or sent garbage.
    HandshakeFailed,
    /// The invitation id is not known to this hub.
    UnknownInvitation,
    /// The invitation was already used by another spoke.
    InvitationUsed,
    /// The invitation expired.
    InvitationExpired,
    /// The spoke's key is not enrolled at this hub.
    UnknownSpoke,
    /// The spoke waits for an admin's approval.
    Pending,
    /// The spoke was revoked.
    Revoked,
    /// The spoke speaks another protocol version.
    VersionMismatch,
    /// The request does not fit the exchange.
    ProtocolViolation,
    /// The hub could not complete the request; try again later.
    Internal,
}

/// A refusal with a human-readable explanation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{detail}")]
pub struct Refusal {
    /// Machine-readable class.
    pub code: RefusalCode,
    /// What a person should know.
    pub detail: String,
}

impl Refusal {
    /// Builds a refusal.
    pub fn new(code: RefusalCode, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
        }
    }
}

/// The identity a control connection proved: its Noise static key.
pub type PeerIdentity = PublicKey;
