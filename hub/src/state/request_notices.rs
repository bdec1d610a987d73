//! Telling approvers what waits for them: each logged-in user who may
//! decide a request hears, on every spoke they are logged in on, the
//! waiting requests they may decide, whenever that changes and whenever
//! they log in or their spoke attaches (a notice sent to an earlier
//! session may have been lost with it). What each spoke was last told of
//! each user is kept, so a change that leaves a user's list as it was
//! sends that user nothing.

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

    /// The notice for `user` on `spoke`: what waits for them (perhaps
    /// nothing, which clears what the spoke showed), remembered as told.
    pub(super) fn approval_notice(&mut self, spoke: SpokeId, user: &str) -> HubMessage {
        let requests = self.to_decide(user);
        self.approvals_told
            .insert((spoke, user.to_owned()), requests.clone());
        HubMessage::ApprovalsWaiting(ApprovalsWaiting {
            user: user.to_owned(),
            requests,
        })
    }

    /// Requests, policies or approvers changed: every logged-in user whose
    /// list is not what their spoke was last told hears it, on each spoke
    /// they are logged in on that is attached (one that attaches later
    /// hears it then).
    pub(super) fn announce_approvals(&mut self) {
        let logins = &self.logins;
        self.approvals_told
            .retain(|(spoke, user), _| logins.get(spoke).is_some_and(|u| u.contains(user)));
        let mut lists: HashMap<&str, Vec<Request>> = HashMap::new();
        let mut notices = Vec::new();
        for (spoke, users) in &self.logins {
            if !self.sessions.contains_key(spoke) {
                continue;
            }
            for user in users {
                let list = lists
                    .entry(user.as_str())
                    .or_insert_with(|| self.to_decide(user));
                if self.approvals_told.get(&(*spoke, user.clone())) != Some(list) {
                    notices.push((*spoke, user.clone(), list.clone()));
                }
            }
        }
        for (spoke, user, requests) in notices {
            self.approvals_told
                .insert((spoke, user.clone()), requests.clone());
            let notice = HubMessage::ApprovalsWaiting(ApprovalsWaiting { user, requests });
            self.tell(spoke, notice);
        }
    }
}
