//! Self-registration (DESIGN.md, "Users"): a person asks for an account
//! from a spoke, with a password of their own; an admin approves it (the
//! account then exists and may log in on that spoke) or denies it. Until
//! then the id is taken but nobody can log in with it.

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use super::{check_new_password, hash_password, validate_id, UserError, UserRecord, Users};
use crate::routing::SpokeId;

/// Registrations one spoke may have waiting at once.
pub const MAX_PENDING_PER_SPOKE: usize = 5;
/// Registrations the hub keeps waiting at once.
pub const MAX_PENDING: usize = 1000;
/// Longest name or e-mail address a registration may give.
pub const MAX_PROFILE_FIELD: usize = 128;

/// A request for an account, waiting for an admin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// The login id asked for.
    pub id: String,
    /// Full name, as given (the admin checks it).
    pub name: String,
    /// E-mail address, as given.
    pub email: String,
    /// argon2id hash of the chosen password (never the password).
    pub password_hash: String,
    /// The spoke it came from: the account may log in there once approved.
    pub spoke: SpokeId,
    /// When it was asked for (Unix seconds).
    pub requested_at: u64,
}

fn check_profile(what: &str, text: &str) -> Result<(), UserError> {
    if text.chars().count() > MAX_PROFILE_FIELD || text.chars().any(char::is_control) {
        return Err(UserError::InvalidProfile(format!(
            "the {what} must be at most {MAX_PROFILE_FIELD} characters, with no control characters"
        )));
    }
    Ok(())
}

impl Users {
    /// Restores the waiting registrations from the store.
    pub fn with_registrations(mut self, waiting: impl IntoIterator<Item = Registration>) -> Self {
        self.registrations = waiting.into_iter().map(|r| (r.id.clone(), r)).collect();
        self
    }

    /// The registrations waiting for an admin.
    pub fn registrations(&self) -> impl Iterator<Item = &Registration> {
        self.registrations.values()
    }

    /// Records a request for an account made from `spoke`.
    #[allow(clippy::too_many_arguments)]
    pub fn register<R: RngCore + CryptoRng>(
        &mut self,
        id: &str,
        name: &str,
        email: &str,
        password: &str,
        spoke: SpokeId,
        now: u64,
        rng: &mut R,
    ) -> Result<Registration, UserError> {
        validate_id(id)?;
        check_profile("name", name)?;
        check_profile("e-mail address", email)?;
        // Asking for taken ids counts like failed logins (per id and per
        // spoke, with lock-outs), so a spoke cannot list the users quickly.
        self.limiter.check(id, spoke, now)?;
        let from_spoke = self
            .registrations
            .values()
            .filter(|r| r.spoke == spoke)
            .count();
        if from_spoke >= MAX_PENDING_PER_SPOKE || self.registrations.len() >= MAX_PENDING {
            return Err(UserError::TooManyPending);
        }
        check_new_password("", password)?;
        // The same work whether or not the id is free.
        let password_hash = hash_password(password, rng)?;
        if self.users.contains_key(id) || self.registrations.contains_key(id) {
            self.limiter.failed(id, spoke, now);
            return Err(UserError::Exists(id.to_owned()));
        }
        let registration = Registration {
            id: id.to_owned(),
            name: name.to_owned(),
            email: email.to_owned(),
            password_hash,
            spoke,
            requested_at: now,
        };
        self.registrations
            .insert(id.to_owned(), registration.clone());
        Ok(registration)
    }

    /// An admin's approval: the account exists from now on, with the
    /// password its owner chose, allowed on the spoke it was asked from.
    pub fn approve_registration(&mut self, id: &str, now: u64) -> Result<UserRecord, UserError> {
        let r = self
            .registrations
            .remove(id)
            .ok_or_else(|| UserError::NoSuchRegistration(id.to_owned()))?;
        let record = UserRecord {
            id: r.id.clone(),
            name: r.name,
            email: r.email,
            password_hash: r.password_hash,
            must_change: false,
            spokes: [r.spoke].into_iter().collect(),
            created_at: now,
        };
        self.users.insert(r.id, record.clone());
        Ok(record)
    }

    /// An admin's denial: the request is forgotten and the id free again.
    pub fn deny_registration(&mut self, id: &str) -> Result<Registration, UserError> {
        self.registrations
            .remove(id)
            .ok_or_else(|| UserError::NoSuchRegistration(id.to_owned()))
    }

    /// The waiting registration of `id`, if its password is `password`.
    pub(super) fn pending_with(&self, id: &str, password: &str) -> Option<&Registration> {
        self.registrations
            .get(id)
            .filter(|r| super::verify_password(&r.password_hash, password))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    const PW: &str = "a long enough password";

    #[test]
    fn a_registration_waits_for_the_admin_then_logs_in_with_its_own_password() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut u = Users::default();
        let r = u
            .register(
                "carol",
                "Carol C",
                "carol@example.com",
                PW,
                4,
                100,
                &mut rng,
            )
            .unwrap();
        assert!(!r.password_hash.contains(PW));
        assert_eq!(u.registrations().count(), 1);
        // Waiting: the right password says so, a wrong one says nothing more.
        assert_eq!(
            u.login("carol", 4, PW, None, 101, &mut rng).unwrap_err(),
            UserError::AwaitingApproval
        );
        assert_eq!(
            u.login("carol", 4, "wrong password!", None, 101, &mut rng)
                .unwrap_err(),
            UserError::BadCredentials
        );
        let record = u.approve_registration("carol", 200).unwrap();
        assert!(!record.must_change);
        assert_eq!(record.spokes.iter().copied().collect::<Vec<_>>(), vec![4]);
        assert_eq!(u.registrations().count(), 0);
        let (proof, _) = u.login("carol", 4, PW, None, 201, &mut rng).unwrap();
        assert_eq!(proof.user(), "carol");
        // Only on the spoke it came from, until an admin allows more.
        assert!(matches!(
            u.login("carol", 5, PW, None, 202, &mut rng),
            Err(UserError::NotAllowed(_))
        ));
    }

    #[test]
    fn bad_or_surplus_registrations_are_refused() {
        let mut rng = StdRng::seed_from_u64(8);
        let mut u = Users::default();
        u.add("alice", "", "", 0, &mut rng).unwrap();
        let reg = |u: &mut Users, id: &str, spoke, rng: &mut StdRng| {
            u.register(id, "N", "e@x", PW, spoke, 0, rng)
        };
        assert_eq!(
            reg(&mut u, "alice", 1, &mut rng).unwrap_err(),
            UserError::Exists("alice".into())
        );
        assert!(matches!(
            reg(&mut u, "bad id", 1, &mut rng),
            Err(UserError::InvalidId(_))
        ));
        assert!(matches!(
            u.register("dan", "N", "e@x", "short", 1, 0, &mut rng),
            Err(UserError::WeakPassword(_))
        ));
        assert!(matches!(
            u.register("dan", "line\nbreak", "e@x", PW, 1, 0, &mut rng),
            Err(UserError::InvalidProfile(_))
        ));
        let long = "x".repeat(MAX_PROFILE_FIELD + 1);
        assert!(matches!(
            u.register("dan", "N", &long, PW, 1, 0, &mut rng),
            Err(UserError::InvalidProfile(_))
        ));
        for i in 0..MAX_PENDING_PER_SPOKE {
            reg(&mut u, &format!("p{i}"), 1, &mut rng).unwrap();
        }
        // Quotas are checked before the id: a full spoke learns nothing.
        assert_eq!(
            reg(&mut u, "alice", 1, &mut rng).unwrap_err(),
            UserError::TooManyPending
        );
        assert_eq!(
            reg(&mut u, "one-more", 1, &mut rng).unwrap_err(),
            UserError::TooManyPending
        );
        assert_eq!(
            reg(&mut u, "p0", 2, &mut rng).unwrap_err(),
            UserError::Exists("p0".into())
        );
        // Another spoke still may; a denial frees the id and the slot.
        reg(&mut u, "q", 2, &mut rng).unwrap();
        u.deny_registration("p0").unwrap();
        reg(&mut u, "p0", 1, &mut rng).unwrap();
        assert_eq!(
            u.deny_registration("nobody").unwrap_err(),
            UserError::NoSuchRegistration("nobody".into())
        );
        assert!(u.approve_registration("nobody", 0).is_err());
    }

    #[test]
    fn asking_for_taken_ids_again_and_again_locks_the_spoke_out() {
        let mut rng = StdRng::seed_from_u64(9);
        let mut u = Users::default();
        for i in 0..super::super::MAX_FAILURES {
            u.add(&format!("u{i}"), "", "", 0, &mut rng).unwrap();
        }
        for i in 0..super::super::MAX_FAILURES {
            let e = u.register(&format!("u{i}"), "", "", PW, 3, 10, &mut rng);
            assert_eq!(e.unwrap_err(), UserError::Exists(format!("u{i}")));
        }
        assert!(matches!(
            u.register("free-id", "", "", PW, 3, 10, &mut rng),
            Err(UserError::Locked(_))
        ));
        // Another spoke is not locked.
        assert!(u.register("free-id", "", "", PW, 4, 10, &mut rng).is_ok());
    }
}
