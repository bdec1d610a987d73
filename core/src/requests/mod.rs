//! Access requests that wait for every approver (claim 13: the key
//! station acts only once all the messages it needs have arrived). A user
//! asks, under a request policy, for temporary access (membership in a
//! group, or allow rules); the hub grants it only when the policy's
//! required number of distinct approvers have said yes, and ends it when
//! its time is over, an admin revokes it, or the requester goes.
//!
//! This module is the machine with no I/O: [`Requests`] takes asks,
//! approvals, denials, revocations and the time, and says what changed
//! (each change a [`Request`] record for the hub to store before it
//! answers, and whether the grants in force changed). Who is a member of
//! which group is the caller's to say; the policy's words are
//! [`RequestPolicy`]'s.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::access::{AccessPolicy, Member, Rule, Selector, Service};

mod machine;
pub use machine::{Outcome, Requests};

/// Requests one user may have waiting or granted at once.
pub const MAX_OPEN_PER_USER: usize = 5;
/// Requests waiting or granted at once, in all.
pub const MAX_OPEN: usize = 1_000;
/// Finished requests kept for `requests` listings and the audit's sake.
pub const MAX_FINISHED: usize = 1_000;
/// Most rules one grant adds.
pub const MAX_GRANT_RULES: usize = 16;
/// Longest a request may last once granted, whatever a policy says.
pub const MAX_DURATION_SECS: u64 = 30 * 24 * 3600;

/// What a granted request gives its requester while it lasts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Grant {
    /// Membership in this group (with its keys, where it is keyed).
    Group(String),
    /// Allow rules from the requester (`user:ID`) to each target.
    Rules(Vec<GrantRule>),
}

/// One allow rule a grant adds, from the requester.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRule {
    /// What the requester may reach.
    pub to: Selector,
    /// With which services (never empty).
    pub services: Vec<Service>,
}

/// Who may approve: a user, or any member user of a group.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ApproverSel {
    /// This user (`user:ID`).
    User(String),
    /// Any user in this group (`group:NAME`).
    Group(String),
}

/// A request policy: what may be asked for, by whom, and whose yes it needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestPolicy {
    /// Its name (what a requester asks for).
    pub name: String,
    /// What a granted request gives.
    pub grant: Grant,
    /// Who may approve.
    pub approvers: Vec<ApproverSel>,
    /// Distinct approvals needed (at least 1).
    pub required: u32,
    /// Longest a grant lasts.
    pub max_duration_secs: u64,
    /// Seconds a request waits for its approvals before it expires.
    pub decide_within_secs: u64,
    /// Who may ask (`None`: any user).
    pub requesters: Option<Vec<ApproverSel>>,
}

/// Who said yes or no: a user on a spoke, or an admin on the hub.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Approver {
    /// A user, logged in on this spoke.
    User {
        /// The user.
        id: String,
        /// The spoke they approved from.
        spoke: String,
    },
    /// An admin on the hub's socket.
    Admin,
}

impl Approver {
    /// Who it is, for counting once and for the audit (`user:ID`, `admin`).
    pub fn key(&self) -> String {
        match self {
            Approver::User { id, .. } => format!("user:{id}"),
            Approver::Admin => "admin".into(),
        }
    }
}

/// Where a request is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestState {
    /// Waiting for approvals until `decide_by`.
    Waiting,
    /// Granted until `until` (Unix seconds).
    Granted {
        /// When it ends.
        until: u64,
    },
    /// An approver said no.
    Denied {
        /// Who.
        by: String,
    },
    /// Not approved in time.
    Expired,
    /// Its grant ran out.
    Over,
    /// An admin ended it.
    Revoked,
    /// The requester went (logged out, or was removed).
    RequesterGone,
}

impl RequestState {
    /// `waiting`, `granted`, `denied`, `expired`, `over`, `revoked`, `requester_gone`.
    pub fn name(&self) -> &'static str {
        match self {
            RequestState::Waiting => "waiting",
            RequestState::Granted { .. } => "granted",
            RequestState::Denied { .. } => "denied",
            RequestState::Expired => "expired",
            RequestState::Over => "over",
            RequestState::Revoked => "revoked",
            RequestState::RequesterGone => "requester_gone",
        }
    }

    /// Waiting or granted.
    pub fn is_open(&self) -> bool {
        matches!(self, RequestState::Waiting | RequestState::Granted { .. })
    }
}

/// One request, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Its number.
    pub id: u64,
    /// The policy asked under.
    pub policy: String,
    /// The user who asked.
    pub requester: String,
    /// The spoke they asked from.
    pub spoke: String,
    /// Why, in their words.
    pub reason: String,
    /// How long the grant is to last.
    pub duration_secs: u64,
    /// When it was asked (Unix seconds).
    pub asked_at: u64,
    /// When it expires unless approved.
    pub decide_by: u64,
    /// Who approved it (each once: [`Approver::key`]).
    pub approvals: BTreeSet<String>,
    /// Approvals it needs.
    pub required: u32,
    /// What it grants, copied from its policy when it was granted (a
    /// policy changed later changes no grant in force).
    #[serde(default)]
    pub grant: Option<Grant>,
    /// Where it is.
    pub state: RequestState,
    /// When it last changed.
    pub changed_at: u64,
}

impl Request {
    /// One line for listings: number, state, who asked from where under
    /// which policy, for how long and why, and the approvals so far.
    pub fn summary(&self) -> String {
        format!(
            "{:>4} {:<10} {} on {} under {} for {} s: {} ({}/{} approvals{})",
            self.id,
            self.state.name(),
            self.requester,
            self.spoke,
            self.policy,
            self.duration_secs,
            self.reason,
            self.approvals.len(),
            self.required,
            if self.approvals.is_empty() {
                String::new()
            } else {
                format!(
                    ": {}",
                    self.approvals
                        .iter()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        )
    }
}

/// The requests that wait for one approver's yes or no, as the hub tells
/// the spokes where the approver is logged in: all of them each time, so
/// the latest replaces what came before.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalsWaiting {
    /// The approver.
    pub user: String,
    /// Waiting requests they may decide and have not approved (the newest
    /// when there are many).
    pub requests: Vec<Request>,
}

/// Why an ask, approval, denial or revocation was refused; nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No such policy or request.
    #[error("{0}")]
    NotFound(String),
    /// A value that cannot be used (a duration, a reason, a policy's words).
    #[error("{0}")]
    Invalid(String),
    /// Not allowed for this user.
    #[error("{0}")]
    Denied(String),
    /// The request is not waiting (granted, ended) or the approval counted already.
    #[error("{0}")]
    WrongState(String),
    /// Too many requests open.
    #[error("{0}")]
    TooMany(String),
}

impl RequestPolicy {
    /// Checks the policy's own words (a name, a number of approvers that
    /// can be reached, durations within bounds).
    pub fn check(&self) -> Result<(), RequestError> {
        let ok_name = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !ok_name {
            return Err(RequestError::Invalid(format!(
                "policy name {:?}: 1 to 64 letters, digits, '-', '_' or '.'",
                self.name
            )));
        }
        if self.required == 0 {
            return Err(RequestError::Invalid(
                "--required must be at least 1".into(),
            ));
        }
        if self.approvers.is_empty() {
            return Err(RequestError::Invalid("a policy needs --approvers".into()));
        }
        let users = self
            .approvers
            .iter()
            .filter(|a| matches!(a, ApproverSel::User(_)))
            .collect::<BTreeSet<_>>()
            .len();
        let has_group = self
            .approvers
            .iter()
            .any(|a| matches!(a, ApproverSel::Group(_)));
        // Admins count as one approver besides the ones named.
        if !has_group && (self.required as usize) > users + 1 {
            return Err(RequestError::Invalid(format!(
                "--required {} but only {users} approver(s) named (and the admins, who count once)",
                self.required
            )));
        }
        if self.max_duration_secs == 0 || self.max_duration_secs > MAX_DURATION_SECS {
            return Err(RequestError::Invalid(format!(
                "--max-duration must be between 1 s and {} days",
                MAX_DURATION_SECS / 86_400
            )));
        }
        if self.decide_within_secs == 0 || self.decide_within_secs > MAX_DURATION_SECS {
            return Err(RequestError::Invalid(format!(
                "--decide-within must be between 1 s and {} days",
                MAX_DURATION_SECS / 86_400
            )));
        }
        if let Grant::Rules(rules) = &self.grant {
            let bad = rules.is_empty()
                || rules.len() > MAX_GRANT_RULES
                || rules
                    .iter()
                    .any(|r| r.services.is_empty() || r.services.len() > 16);
            if bad {
                return Err(RequestError::Invalid(format!(
                    "a rules grant needs 1 to {MAX_GRANT_RULES} rules of 1 to 16 services"
                )));
            }
        }
        Ok(())
    }

    /// Whether `user` (in `groups`) is one of `sel`.
    fn names(sel: &[ApproverSel], user: &str, groups: &[String]) -> bool {
        sel.iter().any(|a| match a {
            ApproverSel::User(u) => u == user,
            ApproverSel::Group(g) => groups.contains(g),
        })
    }

    /// Whether `user`, a member of `groups`, may approve under it.
    pub fn is_approver(&self, user: &str, groups: &[String]) -> bool {
        Self::names(&self.approvers, user, groups)
    }

    /// Whether `user`, a member of `groups`, may ask under it.
    pub fn may_ask(&self, user: &str, groups: &[String]) -> bool {
        self.requesters
            .as_ref()
            .is_none_or(|r| Self::names(r, user, groups))
    }
}

/// The access policy with the grants in force: each rules grant's rules
/// from its requester (`user:ID`), each group grant's requester a member
/// of its group. A group that is gone grants nothing.
pub fn policy_with_grants<'a>(
    policy: &AccessPolicy,
    grants: impl IntoIterator<Item = (&'a Request, &'a Grant)>,
) -> AccessPolicy {
    let mut p = policy.clone();
    for (r, grant) in grants {
        match grant {
            Grant::Rules(rules) => p.rules.extend(rules.iter().map(|g| Rule {
                from: Selector::User(r.requester.clone()),
                to: g.to.clone(),
                services: g.services.clone(),
            })),
            Grant::Group(g) => {
                if let Some(members) = p.groups.get_mut(g) {
                    members.insert(Member::User(r.requester.clone()));
                }
            }
        }
    }
    p
}

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;
