//! Telling approvers what waits for them: each logged-in user who may
//! decide a request hears, on every spoke they are logged in on, the
//! waiting requests they may decide, whenever that changes and whenever
//! they log in or their spoke attaches (a notice sent to an earlier
//! session may have been lost with it).

use tasuki_core::control::HubMessage;
use tasuki_core::requests::{ApprovalsWaiting, Request, RequestState};

use super::*;

/// Requests of each kind a user's listing or notice shows (the newest).
pub(super) const LIST_AT_MOST: usize = 50;

/// The newest [`LIST_AT_MOST`] of `v`, so a reply fits one frame.
pub(super) fn newest(v: Vec<Request>) -> Vec<Request> {
    let skip = v.len().saturating_sub(LIST_AT_MOST);
    v.into_iter().skip(skip).collect()
}

impl HubState {
    /// The waiting requests `user` may decide and has not approved yet.
    pub(super) fn to_decide(&self, user: &str) -> Vec<Request> {
        let groups = self.user_groups(user);
        let approved = format!("user:{user}");
        newest(
            self.requests
                .requests()
                .filter(|r| r.state == RequestState::Waiting && r.requester != user)
                .filter(|r| {
                    self.requests
                        .policy(&r.policy)
                        .is_some_and(|p| p.is_approver(user, &groups))
                        && !r.approvals.contains(&approved)
                })
                .cloned()
                .collect(),
        )
    }

    /// The notice for `user`: what waits for them (perhaps nothing, which
    /// clears what their spoke showed).
    pub(super) fn approval_notice(&self, user: &str) -> HubMessage {
        HubMessage::ApprovalsWaiting(ApprovalsWaiting {
            user: user.to_owned(),
            requests: self.to_decide(user),
        })
    }

    /// Requests or policies changed: every logged-in user hears what waits
    /// for them now, on each spoke they are logged in on.
    pub(super) fn announce_approvals(&mut self) {
        let mut notices = Vec::new();
        for (spoke, users) in &self.logins {
            for user in users {
                notices.push((*spoke, self.approval_notice(user)));
            }
        }
        for (spoke, notice) in notices {
            self.tell(spoke, notice);
        }
    }
}
