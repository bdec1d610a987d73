//! Users at the hub: accounts, logins through spokes (the claim-2 gate),
//! password changes, and a user's additional devices (patent fig. 6).

use tasuki_core::admin_api::{UserPassword, UserView};
use tasuki_core::audit::{AuditKind, AuditRecord};
use tasuki_core::control::{HubMessage, UserReply, UserRequest};
use tasuki_core::registry::SpokeState;
use tasuki_core::rotation::Trigger;
use tasuki_core::routing::SpokeId;
use tasuki_core::users::{UserError, UserRecord};
use tasuki_shell::store::Write;

use super::*;

impl HubState {
    /// Whether the hub carries `spoke`'s traffic: it is a service spoke, or a
    /// user allowed on it is logged in.
    pub(crate) fn carries(&self, spoke: SpokeId) -> bool {
        self.registry
            .spoke(spoke)
            .is_some_and(|s| s.service || s.is_wireguard())
            || self.logins.get(&spoke).is_some_and(|u| !u.is_empty())
    }

    /// The session message for a spoke.
    pub(crate) fn session_message(&self, spoke: SpokeId) -> HubMessage {
        HubMessage::Session(tasuki_core::control::SessionFacts {
            users: self
                .logins
                .get(&spoke)
                .map(|u| u.iter().cloned().collect())
                .unwrap_or_default(),
            carrying: self.carries(spoke),
        })
    }

    pub(super) fn commit_user(&self, user: &UserRecord) -> Result<()> {
        Ok(self
            .store
            .commit(&[Write::put(USERS_TREE, user.id.as_bytes(), user)?])?)
    }

    /// Stores a changed user record; on failure puts the users back as they
    /// were (`saved`), so memory never holds what the store does not.
    pub(super) fn store_user(
        &mut self,
        saved: tasuki_core::users::Users,
        user: &UserRecord,
        what: &str,
    ) -> Result<()> {
        if let Err(e) = self.commit_user(user) {
            self.users = saved;
            return Err(e.context(format!("{what} of {:?} not stored", user.id)));
        }
        Ok(())
    }

    /// Writes again what failed to be written before (see [`Unsaved`]).
    pub(super) fn commit_logins_again(&mut self, spoke: SpokeId) -> Result<()> {
        self.commit_logins(spoke)
    }

    fn commit_logins(&self, spoke: SpokeId) -> Result<()> {
        let users = self.logins.get(&spoke).cloned().unwrap_or_default();
        Ok(self.store.commit(&[Write::put(
            LOGINS_TREE,
            spoke.to_be_bytes(),
            &(spoke, users),
        )?])?)
    }

    /// After a logout on `spoke` (or a removed user's): store, tell the data
    /// plane and the spoke, and end the key epoch. The logout has happened
    /// whatever the store says: if it cannot be written now (a full disk),
    /// it is written again at the next rotation ticks.
    pub(super) fn logins_changed(&mut self, spoke: SpokeId, logout: bool) -> Result<()> {
        // A login stored itself, with the user record; a logout is stored here.
        if logout && self.commit_logins(spoke).is_err() {
            self.unsaved.insert(Unsaved::Logins(spoke));
        }
        self.push_link(spoke);
        let msg = self.session_message(spoke);
        self.tell(spoke, msg);
        if logout {
            self.request_rotation_of(spoke, Trigger::Logout);
            self.end_pairs_if_not_carrying(spoke, tasuki_shell::unix_now());
        }
        Ok(())
    }

    /// Spoke `spoke` (named `name`) was revoked: whoever was logged in
    /// there is logged out, and the requests of those now logged in
    /// nowhere end.
    pub(super) fn logged_out_by_revocation(&mut self, spoke: SpokeId, name: &str, now: u64) {
        // Revocation's commit removed the record: nothing to write again.
        self.unsaved.remove(&Unsaved::Logins(spoke));
        for user in self.logins.remove(&spoke).unwrap_or_default() {
            self.audit(
                AuditRecord::new(now, AuditKind::Logout)
                    .user(&user)
                    .spoke(name)
                    .detail("the spoke was revoked"),
            );
            if !self.logins.values().any(|u| u.contains(&user)) {
                self.requester_gone(&user, now);
            }
        }
    }

    /// Registers a user; returns the initial password (shown once).
    pub(crate) fn add_user(
        &mut self,
        id: &str,
        name: &str,
        email: &str,
        now: u64,
    ) -> Result<UserPassword> {
        let saved = self.users.clone();
        let (user, password) = self
            .users
            .add(id, name, email, now, &mut rand_core::OsRng)?;
        self.store_user(saved, &user, "new user")?;
        self.audit(
            AuditRecord::new(now, AuditKind::UserChange)
                .user(id)
                .detail("added"),
        );
        Ok(UserPassword {
            id: id.to_owned(),
            initial_password: password.to_string(),
        })
    }

    /// Gives a user a new initial password.
    pub(crate) fn reset_password(&mut self, id: &str, now: u64) -> Result<UserPassword> {
        let saved = self.users.clone();
        let (user, password) = self.users.reset_password(id, &mut rand_core::OsRng)?;
        self.store_user(saved, &user, "password reset")?;
        self.audit(
            AuditRecord::new(now, AuditKind::UserChange)
                .user(id)
                .detail("password reset"),
        );
        Ok(UserPassword {
            id: id.to_owned(),
            initial_password: password.to_string(),
        })
    }

    /// Lets a user log in on a spoke.
    pub(crate) fn allow_user(&mut self, id: &str, spoke: &str, now: u64) -> Result<UserView> {
        let s = self
            .registry
            .spoke_by_name(spoke)
            .filter(|s| !s.state.is_dead())
            .ok_or_else(|| tasuki_core::registry::RegistryError::NoSuchSpoke(spoke.to_owned()))?
            .id;
        let saved = self.users.clone();
        let user = self.users.allow(id, s)?;
        self.store_user(saved, &user, "permission")?;
        self.audit(
            AuditRecord::new(now, AuditKind::UserChange)
                .user(id)
                .spoke(spoke)
                .detail("allowed on spoke"),
        );
        Ok(self.user_view(&user))
    }

    /// Removes a user and logs them out everywhere.
    pub(crate) fn remove_user(&mut self, id: &str, now: u64) -> Result<()> {
        let saved = self.users.clone();
        self.users.remove(id)?;
        if let Err(e) = self
            .store
            .commit(&[Write::remove(USERS_TREE, id.as_bytes())])
        {
            self.users = saved;
            return Err(StateError::from(e).context(format!("removal of user {id:?} not stored")));
        }
        let affected: Vec<SpokeId> = self
            .logins
            .iter_mut()
            .filter_map(|(spoke, users)| users.remove(id).then_some(*spoke))
            .collect();
        for spoke in affected {
            let name = self.spoke_name(spoke);
            self.audit(
                AuditRecord::new(now, AuditKind::Logout)
                    .user(id)
                    .spoke(name)
                    .detail("user removed"),
            );
            self.logins_changed(spoke, true)?;
        }
        self.audit(
            AuditRecord::new(now, AuditKind::UserChange)
                .user(id)
                .detail("removed"),
        );
        self.requester_gone(id, now);
        self.recheck_approvals(now);
        if self.access_names_user(id) {
            let gone = id.to_owned();
            self.edit_access(now, move |p| {
                let (rules, groups) = p.forget_user(&gone);
                Ok(format!(
                    "user {gone} removed: {rules} rule(s) naming them and {groups} group membership(s) with them"
                ))
            })?;
        }
        Ok(())
    }

    fn user_view(&self, u: &UserRecord) -> UserView {
        UserView {
            id: u.id.clone(),
            name: u.name.clone(),
            email: u.email.clone(),
            must_change_password: u.must_change,
            spokes: u.spokes.iter().map(|s| self.spoke_name(*s)).collect(),
            logged_in_on: self
                .logins
                .iter()
                .filter(|(_, users)| users.contains(&u.id))
                .map(|(s, _)| self.spoke_name(*s))
                .collect(),
            created_at: u.created_at,
            pending: false,
        }
    }

    /// Every user as admins see them.
    /// Every user as admins see them, then the registrations that wait.
    pub(crate) fn user_views(&self) -> Vec<UserView> {
        let waiting = self.users.registrations().map(|r| UserView {
            id: r.id.clone(),
            name: r.name.clone(),
            email: r.email.clone(),
            must_change_password: false,
            spokes: vec![self.spoke_name(r.spoke)],
            logged_in_on: Vec::new(),
            created_at: r.requested_at,
            pending: true,
        });
        let mut views: Vec<UserView> = self.users.all().map(|u| self.user_view(u)).collect();
        views.extend(waiting);
        views
    }

    /// Logins over all spokes.
    pub(crate) fn login_count(&self) -> usize {
        self.logins.values().map(|u| u.len()).sum()
    }

    /// Whether `user` exists (for second-device enrolment).
    pub(crate) fn user_exists(&self, user: &str) -> bool {
        self.users.get(user).is_some()
    }

    /// Tells every spoke where `user` is logged in that a new device waits.
    pub(crate) fn announce_device(&mut self, user: &str, msg: &HubMessage) {
        let spokes: Vec<SpokeId> = self
            .logins
            .iter()
            .filter(|(_, users)| users.contains(user))
            .map(|(spoke, _)| *spoke)
            .collect();
        for spoke in spokes {
            self.tell(spoke, msg.clone());
        }
    }

    /// The devices of `user` waiting for confirmation.
    /// The names of `user`'s devices that wait for approval.
    pub(crate) fn waiting_devices(&self, user: &str) -> Vec<String> {
        self.registry
            .spokes()
            .filter(|s| s.state == SpokeState::Pending && s.owner.as_deref() == Some(user))
            .map(|s| s.name.clone())
            .collect()
    }

    /// A notice for each of `user`'s devices that waits for approval.
    pub(crate) fn device_notices(&self, user: &str) -> Vec<HubMessage> {
        self.registry
            .spokes()
            .filter(|s| s.state == SpokeState::Pending && s.owner.as_deref() == Some(user))
            .map(|s| {
                HubMessage::DeviceWaiting(tasuki_core::control::DeviceWaiting {
                    user: user.to_owned(),
                    name: s.name.clone(),
                    from: s.enrolled_from.clone(),
                    hostname: s.hostname.clone(),
                })
            })
            .collect()
    }

    /// What a spoke that attaches hears of its session: who is logged in,
    /// whether it carries traffic, and the devices its users still have to
    /// confirm (a notice sent to an earlier session may have been lost with
    /// it).
    pub(crate) fn session_messages(&mut self, spoke: SpokeId) -> Vec<HubMessage> {
        let mut out = vec![self.session_message(spoke)];
        let users: Vec<String> = self
            .logins
            .get(&spoke)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        for user in users {
            out.extend(self.device_notices(&user));
            out.push(self.approval_notice(spoke, &user));
        }
        out
    }

    pub(super) fn logged_in(&self, spoke: SpokeId, user: &str) -> Result<(), UserError> {
        if self.logins.get(&spoke).is_some_and(|u| u.contains(user)) {
            Ok(())
        } else {
            Err(UserError::NotAllowed(user.to_owned()))
        }
    }

    /// A user's request relayed by spoke `spoke`.
    pub(crate) fn user_request(
        &mut self,
        spoke: SpokeId,
        request: UserRequest,
        now: u64,
    ) -> Result<UserReply> {
        match request {
            UserRequest::Login {
                user,
                password,
                new_password,
            } => self.login(spoke, user, password, new_password, now),
            UserRequest::Logout { user } => self.logout(spoke, user, now),
            UserRequest::Passwd { user, old, new } => self.passwd(spoke, user, old, new, now),
            UserRequest::InviteDevice { user, name } => self.invite_device(spoke, user, name, now),
            UserRequest::ApproveDevice { user, name } => {
                self.approve_device(spoke, user, name, now)
            }
            UserRequest::Register {
                user,
                name,
                email,
                password,
            } => self.register(spoke, &user, &name, &email, &password, now),
            UserRequest::AskAccess {
                user,
                policy,
                duration_secs,
                reason,
            } => self.ask_access(spoke, &user, &policy, duration_secs, &reason, now),
            UserRequest::DecideAccess { user, id, approve } => {
                self.decide_access(spoke, &user, id, approve, now)
            }
            UserRequest::ListAccess { user } => self.list_access(spoke, &user),
        }
    }

    /// Someone asks for an account from `spoke`: stored until an admin
    /// approves or denies it.
    fn register(
        &mut self,
        spoke: SpokeId,
        user: &str,
        name: &str,
        email: &str,
        password: &str,
        now: u64,
    ) -> Result<UserReply> {
        let spoke_name = self.spoke_name(spoke);
        let saved = self.users.clone();
        let r = match self.users.register(
            user,
            name,
            email,
            password,
            spoke,
            now,
            &mut rand_core::OsRng,
        ) {
            Ok(r) => r,
            Err(e) => {
                tracing::info!(%user, spoke = %spoke_name, error = %e, "registration refused");
                self.audit(
                    AuditRecord::new(now, AuditKind::Registration)
                        .user(user)
                        .spoke(&spoke_name)
                        .detail(format!("refused: {e}")),
                );
                return Err(e.into());
            }
        };
        let stored = Write::put(REGISTRATIONS_TREE, r.id.as_bytes(), &r)
            .and_then(|w| self.store.commit(&[w]));
        if let Err(e) = stored {
            self.users = saved;
            tracing::error!(%user, error = %format!("{e:#}"), "registration not stored");
            return Err(StateError::from(e).context(
                "the hub cannot store this registration right now (its disk may be full)",
            ));
        }
        tracing::info!(%user, spoke = %spoke_name, "registration waits for an admin's approval");
        self.audit(
            AuditRecord::new(now, AuditKind::Registration)
                .user(user)
                .spoke(&spoke_name)
                .detail(format!("name {name:?}, e-mail {email:?}")),
        );
        Ok(UserReply::Registered {
            user: user.to_owned(),
        })
    }

    /// An admin approves a registration: the account exists from now on and
    /// may log in on the spoke it was asked from.
    pub(crate) fn approve_registration(&mut self, id: &str, now: u64) -> Result<UserView> {
        if let Some(r) = self.users.registrations().find(|r| r.id == id) {
            let live = self
                .registry
                .spoke(r.spoke)
                .is_some_and(|s| !s.state.is_dead());
            if !live {
                return Err(StateError::WrongState(format!(
                    "registration {id:?} came from spoke {}, which is no longer enrolled; deny it",
                    self.spoke_name(r.spoke)
                )));
            }
        }
        let saved = self.users.clone();
        let record = self.users.approve_registration(id, now)?;
        let stored = Write::put(USERS_TREE, id.as_bytes(), &record).and_then(|w| {
            self.store
                .commit(&[w, Write::remove(REGISTRATIONS_TREE, id.as_bytes())])
        });
        if let Err(e) = stored {
            self.users = saved;
            return Err(StateError::from(e).context(format!("approval of {id:?} not stored")));
        }
        let spokes: Vec<String> = record.spokes.iter().map(|s| self.spoke_name(*s)).collect();
        self.audit(
            AuditRecord::new(now, AuditKind::UserChange)
                .user(id)
                .detail(format!(
                    "registration approved; may log in on {}",
                    spokes.join(", ")
                )),
        );
        Ok(self.user_view(&record))
    }

    /// An admin denies a registration: it is forgotten and the id is free.
    pub(crate) fn deny_registration(&mut self, id: &str, now: u64) -> Result<()> {
        let saved = self.users.clone();
        self.users.deny_registration(id)?;
        if let Err(e) = self
            .store
            .commit(&[Write::remove(REGISTRATIONS_TREE, id.as_bytes())])
        {
            self.users = saved;
            return Err(StateError::from(e).context(format!("denial of {id:?} not stored")));
        }
        self.audit(
            AuditRecord::new(now, AuditKind::UserChange)
                .user(id)
                .detail("registration denied"),
        );
        Ok(())
    }
}
