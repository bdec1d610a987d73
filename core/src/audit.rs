//! Audit records: every enrolment, approval, login, key issue, rotation and
//! revocation at the hub (patent fig. 5, steps 5 and 10). Never key bytes
//! and never passwords.

use serde::{Deserialize, Serialize};

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuditKind {
    /// An admin made an invitation.
    Invitation,
    /// A spoke enrolled.
    Enrolment,
    /// An enrolment attempt was refused.
    EnrolmentRefused,
    /// An admin (or the user's first device) approved a spoke.
    Approval,
    /// An admin denied a pending spoke.
    Denial,
    /// An admin revoked a spoke.
    Revocation,
    /// A user logged in.
    Login,
    /// A login was refused.
    LoginFailed,
    /// A user logged out (or was logged out).
    Logout,
    /// A user changed their password.
    PasswordChange,
    /// An admin added, changed or removed a user.
    UserChange,
    /// A key epoch was issued.
    KeyIssue,
    /// A link moved to a new epoch.
    Rotation,
    /// An admin changed the access policy: its mode, a rule or a group.
    AccessChange,
    /// Someone asked for an account from a spoke (approved or denied later
    /// as a `user_change`).
    Registration,
    /// Two spokes were given a pair (direct mode): its first epoch.
    PairIssue,
    /// A pair ended (idle, a holder gone, direct mode off, the policy).
    PairEnd,
    /// A keyed group's epoch was issued (keyed by an admin, a rotation,
    /// a member that left), or the group was no longer keyed.
    GroupKey,
    /// An access request (claim 13) or request policy changed: asked,
    /// approved, denied, granted, expired, over, revoked.
    AccessRequest,
    /// An admin changed the hub's address plan (gave it an IPv6 prefix).
    AddressPlan,
    /// The hub tree changed (claim 6): a child hub invited, joined,
    /// approved or revoked, a branch's routes announced or withdrawn, this
    /// hub joining a parent.
    HubTree,
}

/// One line of the audit log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Unix seconds.
    pub time: u64,
    /// What happened.
    pub kind: AuditKind,
    /// The spoke concerned, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spoke: Option<String>,
    /// The user concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Source address, where one is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Anything else worth knowing (epoch number, reason, invitation id).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

impl AuditRecord {
    /// A record of `kind` at `time` with nothing else filled in.
    pub fn new(time: u64, kind: AuditKind) -> Self {
        Self {
            time,
            kind,
            spoke: None,
            user: None,
            source: None,
            detail: String::new(),
        }
    }

    /// Names the spoke.
    pub fn spoke(mut self, name: impl Into<String>) -> Self {
        self.spoke = Some(name.into());
        self
    }

    /// Names the user.
    pub fn user(mut self, id: impl Into<String>) -> Self {
        self.user = Some(id.into());
        self
    }

    /// Names the source address.
    pub fn source(mut self, addr: impl Into<String>) -> Self {
        self.source = Some(addr.into());
        self
    }

    /// Adds detail.
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }
}
