//! The requests' machine: asks, approvals in any order, denials,
//! revocations, expiry and the grants in force.

use std::collections::BTreeMap;

use super::{
    Approver, Grant, Request, RequestError, RequestPolicy, RequestState, MAX_FINISHED, MAX_OPEN,
    MAX_OPEN_PER_USER,
};

/// What one call changed: the request as it is now (store it before
/// anyone hears of it), and whether the grants in force changed (compile
/// the access policy anew, rotate what the requester no longer may hold).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The request after the change.
    pub request: Request,
    /// The grants in force changed (one began or ended).
    pub grants_changed: bool,
    /// Finished requests forgotten to make room (erase their records).
    pub forgotten: Vec<u64>,
}

/// Every request policy and request.
#[derive(Clone, Debug, Default)]
pub struct Requests {
    policies: BTreeMap<String, RequestPolicy>,
    requests: BTreeMap<u64, Request>,
    next_id: u64,
}

impl Requests {
    /// The policies and requests as stored.
    pub fn restore(policies: Vec<RequestPolicy>, requests: Vec<Request>) -> Self {
        let next_id = requests.iter().map(|r| r.id).max().unwrap_or(0) + 1;
        Self {
            policies: policies.into_iter().map(|p| (p.name.clone(), p)).collect(),
            requests: requests.into_iter().map(|r| (r.id, r)).collect(),
            next_id,
        }
    }

    /// Adds or replaces a policy (checked). Requests asked under an older
    /// version keep the number of approvals they were asked with.
    pub fn set_policy(&mut self, policy: RequestPolicy) -> Result<(), RequestError> {
        policy.check()?;
        self.policies.insert(policy.name.clone(), policy);
        Ok(())
    }

    /// Removes a policy; refused while a request under it is open.
    pub fn remove_policy(&mut self, name: &str) -> Result<RequestPolicy, RequestError> {
        if self
            .requests
            .values()
            .any(|r| r.policy == name && r.state.is_open())
        {
            return Err(RequestError::WrongState(format!(
                "requests under policy {name} are open: deny or revoke them first"
            )));
        }
        self.policies
            .remove(name)
            .ok_or_else(|| RequestError::NotFound(format!("no request policy named {name:?}")))
    }

    /// Every policy, by name.
    pub fn policies(&self) -> impl Iterator<Item = &RequestPolicy> {
        self.policies.values()
    }

    /// A policy by name.
    pub fn policy(&self, name: &str) -> Option<&RequestPolicy> {
        self.policies.get(name)
    }

    /// Every request, oldest first.
    pub fn requests(&self) -> impl Iterator<Item = &Request> {
        self.requests.values()
    }

    /// A request by number.
    pub fn request(&self, id: u64) -> Option<&Request> {
        self.requests.get(&id)
    }

    /// The grants in force: each granted request with what it gives.
    pub fn grants(&self) -> impl Iterator<Item = (&Request, &Grant)> {
        self.requests
            .values()
            .filter_map(|r| match (&r.state, &r.grant) {
                (RequestState::Granted { .. }, Some(g)) => Some((r, g)),
                _ => None,
            })
    }

    /// User `requester` (a member of `groups`), logged in on `spoke`, asks
    /// under `policy` for `duration_secs` at `now`.
    pub fn ask(
        &mut self,
        policy: &str,
        (requester, spoke, groups): (&str, &str, &[String]),
        duration_secs: u64,
        reason: &str,
        now: u64,
    ) -> Result<Outcome, RequestError> {
        let p = self
            .policies
            .get(policy)
            .ok_or_else(|| RequestError::NotFound(format!("no request policy named {policy:?}")))?;
        if !p.may_ask(requester, groups) {
            return Err(RequestError::Denied(format!(
                "user {requester} may not ask under policy {policy}"
            )));
        }
        if duration_secs == 0 || duration_secs > p.max_duration_secs {
            return Err(RequestError::Invalid(format!(
                "the duration is 1 s to {} s under policy {policy}",
                p.max_duration_secs
            )));
        }
        if reason.trim().is_empty() || reason.len() > 500 || reason.chars().any(char::is_control) {
            return Err(RequestError::Invalid(
                "a reason of 1 to 500 characters is needed".into(),
            ));
        }
        let open = self.requests.values().filter(|r| r.state.is_open());
        let (mine, all) = open.fold((0, 0), |(m, a), r| {
            (m + usize::from(r.requester == requester), a + 1)
        });
        if mine >= MAX_OPEN_PER_USER {
            return Err(RequestError::TooMany(format!(
                "user {requester} has {mine} requests open already (at most {MAX_OPEN_PER_USER})"
            )));
        }
        if all >= MAX_OPEN {
            return Err(RequestError::TooMany(format!(
                "{all} requests are open (at most {MAX_OPEN})"
            )));
        }
        let request = Request {
            id: self.next_id,
            policy: policy.to_owned(),
            requester: requester.to_owned(),
            spoke: spoke.to_owned(),
            reason: reason.trim().to_owned(),
            duration_secs,
            asked_at: now,
            decide_by: now.saturating_add(p.decide_within_secs),
            approvals: Default::default(),
            required: p.required,
            grant: None,
            state: RequestState::Waiting,
            changed_at: now,
        };
        self.next_id += 1;
        self.requests.insert(request.id, request.clone());
        Ok(Outcome {
            request,
            grants_changed: false,
            forgotten: self.prune(),
        })
    }

    /// The request's number checked and its policy: a waiting one, not past
    /// its time (one past it expires now and the call is refused).
    fn waiting(
        &mut self,
        id: u64,
        (who, groups): (&Approver, &[String]),
        now: u64,
    ) -> Result<(&mut Request, &RequestPolicy), RequestError> {
        let r = self
            .requests
            .get_mut(&id)
            .ok_or_else(|| RequestError::NotFound(format!("no request {id}")))?;
        let p = self
            .policies
            .get(&r.policy)
            .ok_or_else(|| RequestError::NotFound(format!("request {id}'s policy is gone")))?;
        // Who may not decide it learns nothing of it.
        Self::may_decide(r, p, who, groups)?;
        if r.state == RequestState::Waiting && now >= r.decide_by {
            // The tick records its expiry.
            return Err(RequestError::WrongState(format!(
                "request {id} expired unapproved"
            )));
        }
        if r.state != RequestState::Waiting {
            return Err(RequestError::WrongState(format!(
                "request {id} is {}, not waiting",
                r.state.name()
            )));
        }
        Ok((r, p))
    }

    /// Checks that `who` (a member of `groups`) may decide request `r`.
    fn may_decide(
        r: &Request,
        p: &RequestPolicy,
        who: &Approver,
        groups: &[String],
    ) -> Result<(), RequestError> {
        if let Approver::User { id, .. } = who {
            if *id == r.requester {
                return Err(RequestError::Denied(format!(
                    "user {id} asked for request {}: they cannot approve or deny it",
                    r.id
                )));
            }
            if !p.is_approver(id, groups) {
                return Err(RequestError::Denied(format!(
                    "no request {} waits for user {id}'s approval",
                    r.id
                )));
            }
        }
        Ok(())
    }

    /// `who` (a member of `groups`) says yes. The grant begins with the
    /// last approval the request needs, and not before.
    pub fn approve(
        &mut self,
        id: u64,
        who: &Approver,
        groups: &[String],
        now: u64,
    ) -> Result<Outcome, RequestError> {
        let (r, p) = self.waiting(id, (who, groups), now)?;
        if !r.approvals.insert(who.key()) {
            return Err(RequestError::WrongState(format!(
                "{} approved request {id} already; an approver counts once",
                who.key()
            )));
        }
        r.changed_at = now;
        let granted = r.approvals.len() >= r.required as usize;
        if granted {
            r.state = RequestState::Granted {
                until: now.saturating_add(r.duration_secs),
            };
            // What was approved, whatever the policy says later.
            r.grant = Some(p.grant.clone());
        }
        Ok(Outcome {
            request: r.clone(),
            grants_changed: granted,
            forgotten: Vec::new(),
        })
    }

    /// `who` (a member of `groups`) says no: the request ends.
    pub fn deny(
        &mut self,
        id: u64,
        who: &Approver,
        groups: &[String],
        now: u64,
    ) -> Result<Outcome, RequestError> {
        let (r, _) = self.waiting(id, (who, groups), now)?;
        r.state = RequestState::Denied { by: who.key() };
        r.changed_at = now;
        Ok(Outcome {
            request: r.clone(),
            grants_changed: false,
            forgotten: Vec::new(),
        })
    }

    /// An admin ends a request, waiting or granted.
    pub fn revoke(&mut self, id: u64, now: u64) -> Result<Outcome, RequestError> {
        let r = self
            .requests
            .get_mut(&id)
            .ok_or_else(|| RequestError::NotFound(format!("no request {id}")))?;
        if !r.state.is_open() {
            return Err(RequestError::WrongState(format!(
                "request {id} is {} already",
                r.state.name()
            )));
        }
        let was_granted = matches!(r.state, RequestState::Granted { .. });
        r.state = RequestState::Revoked;
        r.changed_at = now;
        Ok(Outcome {
            request: r.clone(),
            grants_changed: was_granted,
            forgotten: Vec::new(),
        })
    }

    /// The requester logged out or was removed: their open requests end.
    pub fn requester_gone(&mut self, user: &str, now: u64) -> Vec<Outcome> {
        self.end_where(now, RequestState::RequesterGone, |r| r.requester == user)
    }

    /// Approvals of users who may approve no more (removed, or out of the
    /// approving group) count no more on waiting requests: a grant needs
    /// the yes of approvers as they are when it begins. `still(user,
    /// policy)` says whether `user` still approves under `policy`.
    pub fn withdraw_approvals(
        &mut self,
        still: impl Fn(&str, &RequestPolicy) -> bool,
        now: u64,
    ) -> Vec<Outcome> {
        let mut out = Vec::new();
        for r in self.requests.values_mut() {
            let Some(p) = self.policies.get(&r.policy) else {
                continue;
            };
            if r.state != RequestState::Waiting {
                continue;
            }
            let before = r.approvals.len();
            r.approvals.retain(|key| match key.strip_prefix("user:") {
                Some(user) => still(user, p),
                None => true,
            });
            if r.approvals.len() != before {
                r.changed_at = now;
                out.push(Outcome {
                    request: r.clone(),
                    grants_changed: false,
                    forgotten: Vec::new(),
                });
            }
        }
        out
    }

    /// Whether time ends something at `now` (so a tick has work).
    pub fn due(&self, now: u64) -> bool {
        self.requests.values().any(|r| match r.state {
            RequestState::Waiting => now >= r.decide_by,
            RequestState::Granted { until } => now >= until,
            _ => false,
        })
    }

    /// What time ends: waiting requests past their time expire, grants
    /// past theirs are over.
    pub fn tick(&mut self, now: u64) -> Vec<Outcome> {
        let mut out = self.end_where(now, RequestState::Expired, |r| {
            r.state == RequestState::Waiting && now >= r.decide_by
        });
        out.extend(self.end_where(
            now,
            RequestState::Over,
            |r| matches!(r.state, RequestState::Granted { until } if now >= until),
        ));
        out
    }

    fn end_where(
        &mut self,
        now: u64,
        to: RequestState,
        which: impl Fn(&Request) -> bool,
    ) -> Vec<Outcome> {
        let mut out = Vec::new();
        for r in self.requests.values_mut() {
            if !r.state.is_open() || !which(r) {
                continue;
            }
            let was_granted = matches!(r.state, RequestState::Granted { .. });
            r.state = to.clone();
            r.changed_at = now;
            out.push(Outcome {
                request: r.clone(),
                grants_changed: was_granted,
                forgotten: Vec::new(),
            });
        }
        out
    }

    /// Forgets the oldest finished requests beyond [`MAX_FINISHED`].
    fn prune(&mut self) -> Vec<u64> {
        let finished: Vec<u64> = self
            .requests
            .values()
            .filter(|r| !r.state.is_open())
            .map(|r| r.id)
            .collect();
        let gone: Vec<u64> = finished
            .iter()
            .take(finished.len().saturating_sub(MAX_FINISHED))
            .copied()
            .collect();
        for id in &gone {
            self.requests.remove(id);
        }
        gone
    }
}
