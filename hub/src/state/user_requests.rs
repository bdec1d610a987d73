//! A logged-in user's requests from a spoke, one function each: login,
//! logout, password change, and a user's own second device.

use tasuki_core::audit::{AuditKind, AuditRecord};
use tasuki_core::control::UserReply;
use tasuki_core::routing::SpokeId;
use tasuki_shell::store::Write;
use zeroize::Zeroizing;

use super::*;

impl HubState {
    /// Refuses a user's request from a spoke the user is not logged in on.
    fn logged_in_here(&self, spoke: SpokeId, user: &str) -> Result<()> {
        self.logged_in(spoke, user)
            .map_err(|e| StateError::Denied(format!("{e}: log in on this spoke first")))
    }

    /// A login (with the new password when the initial one must change);
    /// the user record and the login are stored in one commit.
    pub(super) fn login(
        &mut self,
        spoke: SpokeId,
        user: String,
        password: Zeroizing<String>,
        new_password: Option<Zeroizing<String>>,
        now: u64,
    ) -> Result<UserReply> {
        let spoke_name = self.spoke_name(spoke);
        self.store_unsaved_requests().map_err(|e| {
            e.context("the hub cannot store this login right now (its disk may be full)")
        })?;
        let saved = self.users.clone();
        let result = self.users.login(
            &user,
            spoke,
            &password,
            new_password.as_deref().map(String::as_str),
            now,
            &mut rand_core::OsRng,
        );
        match result {
            Ok((proof, record)) => {
                // The user record (a changed password) and the login
                // in one commit: both or neither.
                let mut users = self.logins.get(&proof.spoke()).cloned().unwrap_or_default();
                users.insert(proof.user().to_owned());
                let stored = Write::put(USERS_TREE, record.id.as_bytes(), &record).and_then(|u| {
                    let l = Write::put(
                        LOGINS_TREE,
                        proof.spoke().to_be_bytes(),
                        &(proof.spoke(), users.clone()),
                    )?;
                    self.store.commit(&[u, l])
                });
                if let Err(e) = stored {
                    self.users = saved;
                    tracing::error!(%user, spoke = %spoke_name, error = %format!("{e:#}"), "login not stored");
                    return Err(StateError::from(e).context(
                        "the hub cannot store this login right now (its disk may be full)",
                    ));
                }
                self.logins.insert(proof.spoke(), users);
                let mut audit = AuditRecord::new(now, AuditKind::Login)
                    .user(&user)
                    .spoke(&spoke_name);
                if new_password.is_some() {
                    audit = audit.detail("initial password changed");
                }
                self.audit(audit);
                self.logins_changed(spoke, false)?;
                self.unsaved.remove(&Unsaved::Logins(spoke));
                let approvals = self.approval_notice(spoke, &user);
                for notice in self.device_notices(&user).into_iter().chain([approvals]) {
                    self.tell(spoke, notice);
                }
                Ok(UserReply::LoggedIn { user })
            }
            Err(e) => {
                self.audit(
                    AuditRecord::new(now, AuditKind::LoginFailed)
                        .user(&user)
                        .spoke(&spoke_name)
                        .detail(e.to_string()),
                );
                tracing::info!(%user, spoke = %spoke_name, error = %e, "login refused");
                Err(e.into())
            }
        }
    }

    /// A logout on `spoke`.
    pub(super) fn logout(&mut self, spoke: SpokeId, user: String, now: u64) -> Result<UserReply> {
        let spoke_name = self.spoke_name(spoke);
        let was = self.logins.get_mut(&spoke).is_some_and(|u| u.remove(&user));
        if !was {
            return Err(StateError::Denied(format!(
                "{user:?} is not logged in on this spoke"
            )));
        }
        self.audit(
            AuditRecord::new(now, AuditKind::Logout)
                .user(&user)
                .spoke(&spoke_name),
        );
        self.logins_changed(spoke, true)?;
        // The logout and the end of the user's requests are two writes;
        // whichever the store refuses is written again at each tick, and a
        // start ends the requests of users logged in nowhere. Only when
        // both are refused and the hub dies before a retry does the next
        // start find the user logged in with their requests: the two
        // agree, as they did before the logout.
        if !self.logins.values().any(|u| u.contains(&user)) {
            self.requester_gone(&user, now);
        }
        Ok(UserReply::LoggedOut { user })
    }

    /// A password change from `spoke`.
    pub(super) fn passwd(
        &mut self,
        spoke: SpokeId,
        user: String,
        old: Zeroizing<String>,
        new: Zeroizing<String>,
        now: u64,
    ) -> Result<UserReply> {
        let spoke_name = self.spoke_name(spoke);
        let saved = self.users.clone();
        match self
            .users
            .change_password(&user, spoke, &old, &new, now, &mut rand_core::OsRng)
        {
            Ok(record) => {
                if let Err(e) = self.commit_user(&record) {
                    // Undo the change in memory: the old password stays.
                    self.users = saved;
                    tracing::error!(%user, error = %format!("{e:#}"), "password change not stored");
                    return Err(e.context(
                        "the hub cannot store the new password right now (its disk may be \
                         full); the old one still holds",
                    ));
                }
                self.audit(
                    AuditRecord::new(now, AuditKind::PasswordChange)
                        .user(&user)
                        .spoke(&spoke_name),
                );
                Ok(UserReply::PasswordChanged)
            }
            Err(e) => {
                self.audit(
                    AuditRecord::new(now, AuditKind::LoginFailed)
                        .user(&user)
                        .spoke(&spoke_name)
                        .detail(format!("password change: {e}")),
                );
                Err(e.into())
            }
        }
    }

    /// A logged-in user invites their own additional device.
    pub(super) fn invite_device(
        &mut self,
        spoke: SpokeId,
        user: String,
        name: String,
        now: u64,
    ) -> Result<UserReply> {
        self.logged_in_here(spoke, &user)?;
        let view = self.invite(&name, false, false, Some(&user), 24 * 3600, now)?;
        Ok(UserReply::DeviceInvitation {
            invitation: view.invitation,
        })
    }

    /// A logged-in user confirms their own device that waits.
    pub(super) fn approve_device(
        &mut self,
        spoke: SpokeId,
        user: String,
        name: Option<String>,
        now: u64,
    ) -> Result<UserReply> {
        let spoke_name = self.spoke_name(spoke);
        self.logged_in_here(spoke, &user)?;
        let waiting = self.waiting_devices(&user);
        let target = match name {
            Some(n) if waiting.contains(&n) => n,
            Some(n) => {
                return Err(StateError::NotFound(format!(
                    "no device {n:?} of {user:?} is waiting"
                )))
            }
            None if waiting.len() == 1 => waiting[0].clone(),
            None if waiting.is_empty() => {
                return Err(StateError::NotFound(format!(
                    "no device of {user:?} is waiting"
                )))
            }
            None => {
                return Err(StateError::Invalid(format!(
                    "several devices wait ({}); name one",
                    waiting.join(", ")
                )))
            }
        };
        let by = format!("user {user} from spoke {spoke_name}");
        let approved = self.approve(&target, &by, now)?;
        let saved = self.users.clone();
        let record = self.users.allow(&user, approved.id)?;
        self.store_user(saved, &record, "the new device's permission")?;
        Ok(UserReply::DeviceApproved { name: target })
    }
}
