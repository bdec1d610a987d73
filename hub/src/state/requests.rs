//! Access requests at the hub (claim 13): the request policies and the
//! requests, stored (flushed) before anyone hears of a change, and the
//! calls that change them: an admin's policies, decisions and revocations,
//! and the time. The rules are [`tasuki_core::requests`]'s.

use std::borrow::Cow;
use std::collections::BTreeSet;
use tasuki_core::audit::{AuditKind, AuditRecord};
use tasuki_core::control::UserReply;

use tasuki_core::access::{AccessPolicy, Member};
use tasuki_core::requests::{
    policy_with_grants, Approver, ApproverSel, Grant, Outcome, Request, RequestError,
    RequestPolicy, RequestState, Requests,
};
use tasuki_shell::store::Write;

use super::*;

/// Each request policy, by name.
pub(super) const REQUEST_POLICIES_TREE: &str = "request-policies";
/// Each request, by number.
pub(super) const ACCESS_REQUESTS_TREE: &str = "access-requests";

impl From<RequestError> for StateError {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::NotFound(m) => StateError::NotFound(m),
            RequestError::Invalid(m) | RequestError::TooMany(m) => StateError::Invalid(m),
            RequestError::Denied(m) => StateError::Denied(m),
            RequestError::WrongState(m) => StateError::WrongState(m),
        }
    }
}

impl HubState {
    /// `tasuki-hub request-policy add`: a policy whose groups exist,
    /// stored before it is in force.
    pub(crate) fn set_request_policy(
        &mut self,
        p: RequestPolicy,
        now: u64,
    ) -> Result<RequestPolicy> {
        p.check()?;
        let mut groups: Vec<&str> = p
            .approvers
            .iter()
            .chain(p.requesters.iter().flatten())
            .filter_map(|a| match a {
                ApproverSel::Group(g) => Some(g.as_str()),
                ApproverSel::User(_) => None,
            })
            .collect();
        let granted = grant_groups(&p.grant);
        groups.extend(granted.iter().map(String::as_str));
        if let Some(g) = groups
            .iter()
            .find(|g| !self.access.groups.contains_key(**g))
        {
            return Err(StateError::NotFound(format!(
                "no group named {g:?}; create it first with `tasuki-hub group add {g}`"
            )));
        }
        let mut after = self.requests.clone();
        after.set_policy(p.clone())?;
        self.store.commit(&[Write::put(
            REQUEST_POLICIES_TREE,
            p.name.as_bytes().to_vec(),
            &(p.name.as_str(), &p),
        )?])?;
        self.requests = after;
        self.audit(
            AuditRecord::new(now, AuditKind::AccessRequest).detail(format!(
                "request policy {} set: {} approval(s) of {} for up to {} s",
                p.name,
                p.required,
                p.approvers.len(),
                p.max_duration_secs
            )),
        );
        // Approvals given under the old approvers may count no more.
        self.recheck_approvals(now);
        self.announce_approvals();
        Ok(p)
    }

    /// `tasuki-hub request-policy remove`: refused while requests under it
    /// are open.
    pub(crate) fn remove_request_policy(&mut self, name: &str, now: u64) -> Result<()> {
        let mut after = self.requests.clone();
        after.remove_policy(name)?;
        self.store.commit(&[Write::remove(
            REQUEST_POLICIES_TREE,
            name.as_bytes().to_vec(),
        )])?;
        self.requests = after;
        self.audit(
            AuditRecord::new(now, AuditKind::AccessRequest)
                .detail(format!("request policy {name} removed")),
        );
        Ok(())
    }

    /// A group a request policy names stays (a grant of it, or an
    /// approver's membership, would come back with a new group of its name).
    pub(crate) fn check_group_unused_by_requests(&self, group: &str) -> Result<()> {
        match self
            .requests
            .policies()
            .find(|p| policy_names_group(p, group))
        {
            Some(p) => Err(StateError::WrongState(format!(
                "request policy {} names group {group}: remove it first",
                p.name
            ))),
            None => Ok(()),
        }
    }

    /// Every request policy.
    pub(crate) fn request_policies(&self) -> Vec<RequestPolicy> {
        self.requests.policies().cloned().collect()
    }

    /// Every request the hub keeps, oldest first.
    pub(crate) fn access_requests(&self) -> Vec<Request> {
        self.requests.requests().cloned().collect()
    }

    /// `tasuki-hub request approve|deny ID`: an admin's decision.
    pub(crate) fn admin_decide_request(
        &mut self,
        id: u64,
        approve: bool,
        now: u64,
    ) -> Result<Request> {
        let groups: Vec<String> = self.access.groups.keys().cloned().collect();
        self.change_requests(now, "by an admin", |r| {
            if !approve {
                return r.deny(id, &Approver::Admin, &[], now);
            }
            let out = r.approve(id, &Approver::Admin, &[], now)?;
            grant_applies(r, &out, &groups)?;
            Ok(out)
        })
    }

    /// `tasuki-spoke request POLICY`: a user logged in on `spoke` asks.
    pub(super) fn ask_access(
        &mut self,
        spoke: SpokeId,
        user: &str,
        policy: &str,
        duration_secs: u64,
        reason: &str,
        now: u64,
    ) -> Result<UserReply> {
        self.logged_in(spoke, user)
            .map_err(|e| StateError::Denied(format!("{e}: log in on this spoke first")))?;
        let (spoke_name, groups) = (self.spoke_name(spoke), self.user_groups(user));
        let how = format!("by {user} on {spoke_name}");
        let r = self.change_requests(now, &how, |r| {
            r.ask(
                policy,
                (user, &spoke_name, &groups),
                duration_secs,
                reason,
                now,
            )
        })?;
        Ok(UserReply::AccessRequest(Box::new(r)))
    }

    /// `tasuki-spoke approve-request|deny-request ID`: an approver logged
    /// in on `spoke` decides.
    pub(super) fn decide_access(
        &mut self,
        spoke: SpokeId,
        user: &str,
        id: u64,
        approve: bool,
        now: u64,
    ) -> Result<UserReply> {
        self.logged_in(spoke, user)
            .map_err(|e| StateError::Denied(format!("{e}: log in on this spoke first")))?;
        let who = Approver::User {
            id: user.to_owned(),
            spoke: self.spoke_name(spoke),
        };
        let groups = self.user_groups(user);
        let all: Vec<String> = self.access.groups.keys().cloned().collect();
        let how = format!("by {user} on {}", self.spoke_name(spoke));
        let r = self.change_requests(now, &how, |r| {
            if !approve {
                return r.deny(id, &who, &groups, now);
            }
            let out = r.approve(id, &who, &groups, now)?;
            grant_applies(r, &out, &all)?;
            Ok(out)
        })?;
        Ok(UserReply::AccessRequest(Box::new(r)))
    }

    /// `tasuki-spoke requests`: what the user asked, and what waits for
    /// their approval.
    pub(super) fn list_access(&self, spoke: SpokeId, user: &str) -> Result<UserReply> {
        self.logged_in(spoke, user)
            .map_err(|e| StateError::Denied(format!("{e}: log in on this spoke first")))?;
        let mine = super::request_notices::newest(
            self.requests
                .requests()
                .filter(|r| r.requester == user)
                .cloned()
                .collect(),
        );
        let to_decide = self.to_decide(user);
        Ok(UserReply::AccessRequests { mine, to_decide })
    }

    /// The groups user `id` is a member of (approvers and requesters are
    /// named by group too).
    pub(super) fn user_groups(&self, id: &str) -> Vec<String> {
        let me = Member::User(id.to_owned());
        self.access
            .groups
            .iter()
            .filter(|(_, members)| members.contains(&me))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The access policy in force: the stored one, with the grants of
    /// requests granted now.
    pub(super) fn access_in_force(&self) -> Cow<'_, AccessPolicy> {
        if self.requests.grants().next().is_none() {
            return Cow::Borrowed(&self.access);
        }
        Cow::Owned(policy_with_grants(&self.access, self.requests.grants()))
    }

    /// A grant began or ended: the data plane enforces the policy in force
    /// anew, pairs follow it; a requester whose group grant ended rotates
    /// its link keys (what it held may have reached the group), and the
    /// group's own epoch moves on at its next tick.
    fn grants_changed(&mut self, now: u64, outcomes: &[Outcome]) {
        if !outcomes.iter().any(|o| o.grants_changed) {
            return;
        }
        self.push_access();
        self.refresh_pair_rules(now);
        self.ask_pairs_again();
        for out in outcomes.iter().filter(|o| o.grants_changed) {
            let ended = !matches!(out.request.state, RequestState::Granted { .. });
            if let (true, Some(Grant::Group(g))) = (ended, &out.request.grant) {
                let user = Member::User(out.request.requester.clone());
                self.rotate_group_leavers(g, &[user]);
            }
        }
    }

    /// `tasuki-hub request revoke ID`: ends it, granted or waiting.
    pub(crate) fn revoke_request(&mut self, id: u64, now: u64) -> Result<Request> {
        self.change_requests(now, "by an admin", |r| r.revoke(id, now))
    }

    /// Once a tick: requests not approved in time expire, grants whose
    /// time is over end. A change that cannot be stored is tried again
    /// at the next tick.
    pub(crate) fn requests_tick(&mut self, now: u64) {
        if !self.requests.due(now) {
            return;
        }
        let mut after = self.requests.clone();
        let outcomes = after.tick(now);
        if outcomes.is_empty() {
            return;
        }
        // Ended in memory all the same (access never outlives its time).
        self.commit_or_retry(&outcomes, "ended requests");
        self.requests = after;
        for out in &outcomes {
            self.audit_request(now, out, "by time");
        }
        self.grants_changed(now, &outcomes);
        self.announce_approvals();
    }

    /// User `user` logged out of its last spoke, or was removed: its
    /// requests end, and so does what they granted. An ending that cannot
    /// be stored is logged; the grant still ends in memory at once.
    pub(crate) fn requester_gone(&mut self, user: &str, now: u64) {
        self.requesters_gone(&[user.to_owned()], now);
    }

    /// [`Self::requester_gone`] for several users at once: one commit, one
    /// recompiled policy, one round of notices.
    fn requesters_gone(&mut self, users: &[String], now: u64) {
        let outcomes: Vec<Outcome> = users
            .iter()
            .flat_map(|user| self.requests.requester_gone(user, now))
            .collect();
        if outcomes.is_empty() {
            return;
        }
        self.commit_or_retry(&outcomes, "the end of a leaver's requests");
        for out in &outcomes {
            self.audit_request(now, out, "as the requester left");
        }
        self.grants_changed(now, &outcomes);
        self.announce_approvals();
    }

    /// At start: the requests of users logged in nowhere, or no longer
    /// there at all, end (a logout or removal whose ending was not stored
    /// before the hub stopped).
    pub(super) fn end_requests_of_absent(&mut self, now: u64) {
        let absent: BTreeSet<String> = self
            .requests
            .requests()
            .filter(|r| r.state.is_open())
            .filter(|r| {
                !self.user_exists(&r.requester)
                    || !self.logins.values().any(|u| u.contains(&r.requester))
            })
            .map(|r| r.requester.clone())
            .collect();
        if absent.is_empty() {
            return;
        }
        tracing::info!(users = ?absent, "the requests of users logged in nowhere end");
        self.requesters_gone(&absent.into_iter().collect::<Vec<_>>(), now);
    }

    /// Users or groups changed: approvals of who approves no more are
    /// withdrawn from waiting requests (in memory even when the store
    /// refuses; the next start withdraws them again).
    pub(crate) fn recheck_approvals(&mut self, now: u64) {
        let mut after = self.requests.clone();
        let outcomes = after.withdraw_approvals(
            |user, p| self.user_exists(user) && p.is_approver(user, &self.user_groups(user)),
            now,
        );
        if outcomes.is_empty() {
            return;
        }
        self.commit_or_retry(&outcomes, "withdrawn approvals");
        self.requests = after;
        for out in &outcomes {
            self.audit_request(now, out, "as an approver may approve no more");
        }
        self.announce_approvals();
    }

    /// Runs one change on a copy, stores what it changed, then keeps it
    /// and audits it: nothing changes when the store refuses.
    fn change_requests(
        &mut self,
        now: u64,
        how: &str,
        change: impl FnOnce(&mut Requests) -> Result<Outcome, RequestError>,
    ) -> Result<Request> {
        let mut after = self.requests.clone();
        let out = change(&mut after)?;
        let outcomes = [out];
        self.commit_outcomes(&outcomes)?;
        self.requests = after;
        self.audit_request(now, &outcomes[0], how);
        self.grants_changed(now, &outcomes);
        self.announce_approvals();
        let [out] = outcomes;
        Ok(out.request)
    }

    /// Stores what changed in memory whatever the store says; what it
    /// refuses is written again at each tick, and before any login (a
    /// user back must not bring back what ended while they were away).
    fn commit_or_retry(&mut self, outcomes: &[Outcome], what: &str) {
        if let Err(e) = self.commit_outcomes(outcomes) {
            tracing::error!(error = %format!("{e:#}"), "{what}: not stored yet; tried again");
            for out in outcomes {
                self.unsaved.insert(Unsaved::Request(out.request.id));
            }
        }
    }

    /// Writes request `id` as it is in memory (or its absence).
    pub(super) fn commit_request_again(&self, id: u64) -> Result<()> {
        let key = id.to_be_bytes().to_vec();
        let write = match self.requests.request(id) {
            Some(r) => Write::put(ACCESS_REQUESTS_TREE, key, &(id.to_string(), r))?,
            None => Write::remove(ACCESS_REQUESTS_TREE, key),
        };
        Ok(self.store.commit(&[write])?)
    }

    /// Writes every request whose change the store refused; an error when
    /// one still cannot be written.
    pub(super) fn store_unsaved_requests(&mut self) -> Result<()> {
        let ids: Vec<u64> = self
            .unsaved
            .iter()
            .filter_map(|u| match u {
                Unsaved::Request(id) => Some(*id),
                _ => None,
            })
            .collect();
        for id in ids {
            self.commit_request_again(id)?;
            self.unsaved.remove(&Unsaved::Request(id));
        }
        Ok(())
    }

    pub(super) fn commit_outcomes(&self, outcomes: &[Outcome]) -> Result<()> {
        let mut writes = Vec::new();
        for out in outcomes {
            writes.push(Write::put(
                ACCESS_REQUESTS_TREE,
                out.request.id.to_be_bytes().to_vec(),
                &(out.request.id.to_string(), &out.request),
            )?);
            for id in &out.forgotten {
                writes.push(Write::remove(
                    ACCESS_REQUESTS_TREE,
                    id.to_be_bytes().to_vec(),
                ));
            }
        }
        self.store.commit(&writes)?;
        Ok(())
    }

    fn audit_request(&mut self, now: u64, out: &Outcome, how: &str) {
        let r = &out.request;
        let detail = format!(
            "request {} ({} for user {} on {}, policy {}): {} {how}; approvals {}/{} [{}]",
            r.id,
            r.reason,
            r.requester,
            r.spoke,
            r.policy,
            r.state.name(),
            r.approvals.len(),
            r.required,
            r.approvals.iter().cloned().collect::<Vec<_>>().join(", ")
        );
        tracing::info!(
            request = r.id,
            state = r.state.name(),
            "access request changed"
        );
        self.audit(AuditRecord::new(now, AuditKind::AccessRequest).detail(detail));
    }
}

/// A grant about to begin must name what exists: never a partial grant.
fn grant_applies(_r: &Requests, out: &Outcome, groups: &[String]) -> Result<(), RequestError> {
    if !out.grants_changed {
        return Ok(());
    }
    let missing = out
        .request
        .grant
        .as_ref()
        .map(grant_groups)
        .unwrap_or_default()
        .into_iter()
        .find(|g| !groups.contains(g));
    match missing {
        Some(g) => Err(RequestError::NotFound(format!(
            "the group {g:?} the request grants is gone: nothing is granted"
        ))),
        None => Ok(()),
    }
}

/// The groups a grant names (its group, or its rules' targets).
fn grant_groups(grant: &Grant) -> Vec<String> {
    match grant {
        Grant::Group(g) => vec![g.clone()],
        Grant::Rules(rules) => rules
            .iter()
            .filter_map(|r| match &r.to {
                tasuki_core::access::Selector::Group(g) => Some(g.clone()),
                _ => None,
            })
            .collect(),
    }
}

/// Whether a request policy names group `group` anywhere.
pub(crate) fn policy_names_group(p: &RequestPolicy, group: &str) -> bool {
    let sel = |a: &ApproverSel| matches!(a, ApproverSel::Group(g) if g == group);
    grant_groups(&p.grant).iter().any(|g| g == group)
        || p.approvers.iter().any(sel)
        || p.requesters.iter().flatten().any(sel)
}

/// The request policies and requests as stored.
pub(super) fn load_requests(store: &Store) -> anyhow::Result<Requests> {
    let policies = store
        .all::<(String, RequestPolicy)>(REQUEST_POLICIES_TREE)?
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    let requests = store
        .all::<(String, Request)>(ACCESS_REQUESTS_TREE)?
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    Ok(Requests::restore(policies, requests))
}
