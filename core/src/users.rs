//! Users: accounts at the hub, their argon2id password hashes, which spokes
//! each may use, and the login rules (patent claims 2–4, 14).
//!
//! A spoke carries a user's traffic only after [`Users::login`] returned a
//! [`LoggedIn`] for that user on that spoke; only this module can make one.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::routing::SpokeId;

mod registration;
pub use registration::{Registration, MAX_PENDING, MAX_PENDING_PER_SPOKE, MAX_PROFILE_FIELD};

/// Shortest password a user may choose.
pub const MIN_PASSWORD: usize = 10;
/// Failed logins (per user, and per spoke) before a lock-out.
pub const MAX_FAILURES: u32 = 5;
/// First lock-out, seconds; each further failure while locked doubles it.
pub const LOCKOUT_SECS: u64 = 30;

/// A user account as the hub stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// Login id.
    pub id: String,
    /// Full name (verified by an admin).
    pub name: String,
    /// E-mail address.
    pub email: String,
    /// argon2id hash in PHC format (never the password).
    pub password_hash: String,
    /// The password was set by an admin and must be changed at first login.
    pub must_change: bool,
    /// Spokes this user may log in on.
    pub spokes: BTreeSet<SpokeId>,
    /// Creation time (Unix seconds).
    pub created_at: u64,
}

/// Why a user request failed. Messages never say whether a user exists.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub enum UserError {
    /// Unknown user or wrong password (deliberately the same).
    #[error("unknown user or wrong password")]
    BadCredentials,
    /// The user may not use this spoke.
    #[error("user {0:?} is not allowed on this spoke; ask an admin (tasuki-hub user allow)")]
    NotAllowed(String),
    /// Too many failures: wait.
    #[error("too many failed logins; try again in {0} s")]
    Locked(u64),
    /// The password must be changed before the first login completes.
    #[error("the password must be changed at first login")]
    PasswordChangeRequired,
    /// The new password is not acceptable.
    #[error("new password refused: {0}")]
    WeakPassword(String),
    /// The id is not acceptable.
    #[error("invalid user id {0:?}: use 1-64 letters, digits, '.', '-', '_' or '@'")]
    InvalidId(String),
    /// The id is taken.
    #[error("user {0:?} already exists")]
    Exists(String),
    /// No such user (admin requests only).
    #[error("no user {0:?}")]
    NoSuchUser(String),
    /// Hashing failed.
    #[error("password hashing failed: {0}")]
    Hash(String),
    /// The account was asked for and an admin has not approved it yet.
    #[error("this account waits for an admin's approval (tasuki-hub user approve)")]
    AwaitingApproval,
    /// Too many registrations wait already (from this spoke, or in all).
    #[error("too many registrations wait for an admin already; try again later")]
    TooManyPending,
    /// No registration waits under this id (admin requests only).
    #[error("no registration {0:?} waits for approval")]
    NoSuchRegistration(String),
    /// A name or e-mail address that cannot be stored.
    #[error("{0}")]
    InvalidProfile(String),
}

/// Proof that a user logged in on a spoke. Only [`Users::login`] makes one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedIn {
    user: String,
    spoke: SpokeId,
}

impl LoggedIn {
    /// The user.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The spoke.
    pub fn spoke(&self) -> SpokeId {
        self.spoke
    }
}

/// Checks a user id.
pub fn validate_id(id: &str) -> Result<(), UserError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@'));
    if ok {
        Ok(())
    } else {
        Err(UserError::InvalidId(id.to_owned()))
    }
}

/// Hashes a password with argon2id and a fresh salt.
pub fn hash_password<R: RngCore + CryptoRng>(
    password: &str,
    rng: &mut R,
) -> Result<String, UserError> {
    let salt = SaltString::generate(rng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UserError::Hash(e.to_string()))
}

/// Checks a password against a stored hash (constant time inside argon2).
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A fresh initial password: 16 characters from an unambiguous alphabet.
pub fn initial_password<R: RngCore + CryptoRng>(rng: &mut R) -> Zeroizing<String> {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyzACDEFGHJKLMNPQRTUVWXY346789";
    let mut out = Zeroizing::new(String::with_capacity(16));
    while out.len() < 16 {
        let b = (rng.next_u32() & 0xff) as usize;
        // Rejection sampling keeps the choice uniform.
        if b < ALPHABET.len() * (256 / ALPHABET.len()) {
            out.push(ALPHABET[b % ALPHABET.len()] as char);
        }
    }
    out
}

fn check_new_password(old: &str, new: &str) -> Result<(), UserError> {
    if new.chars().count() < MIN_PASSWORD {
        return Err(UserError::WeakPassword(format!(
            "use at least {MIN_PASSWORD} characters"
        )));
    }
    if new == old {
        return Err(UserError::WeakPassword(
            "it must differ from the old one".into(),
        ));
    }
    Ok(())
}

#[derive(Clone, Debug, Default)]
struct Failures {
    count: u32,
    locked_until: u64,
}

/// Failed-login counters per user and per spoke, with growing lock-outs.
#[derive(Clone, Debug, Default)]
pub struct LoginLimiter {
    failures: HashMap<String, Failures>,
}

impl LoginLimiter {
    fn keys(user: &str, spoke: SpokeId) -> [String; 2] {
        [format!("user:{user}"), format!("spoke:{spoke}")]
    }

    /// Seconds to wait if either key is locked.
    pub fn check(&self, user: &str, spoke: SpokeId, now: u64) -> Result<(), UserError> {
        let wait = Self::keys(user, spoke)
            .iter()
            .filter_map(|k| self.failures.get(k))
            .map(|f| f.locked_until.saturating_sub(now))
            .max()
            .unwrap_or(0);
        if wait > 0 {
            Err(UserError::Locked(wait))
        } else {
            Ok(())
        }
    }

    /// Counts a failure; locks after [`MAX_FAILURES`].
    pub fn failed(&mut self, user: &str, spoke: SpokeId, now: u64) {
        for k in Self::keys(user, spoke) {
            let f = self.failures.entry(k).or_default();
            f.count += 1;
            if f.count >= MAX_FAILURES {
                let extra = f.count - MAX_FAILURES;
                let secs = LOCKOUT_SECS.saturating_mul(1 << extra.min(8));
                f.locked_until = now.saturating_add(secs);
            }
        }
    }

    /// Clears the user's counter after a success (the spoke's stays).
    pub fn succeeded(&mut self, user: &str) {
        self.failures.remove(&format!("user:{user}"));
    }
}

/// All users, with the login rules.
#[derive(Clone, Debug, Default)]
pub struct Users {
    users: BTreeMap<String, UserRecord>,
    /// Accounts asked for from a spoke, waiting for an admin.
    registrations: BTreeMap<String, Registration>,
    limiter: LoginLimiter,
}

impl Users {
    /// Restores users from the store.
    pub fn new(users: impl IntoIterator<Item = UserRecord>) -> Self {
        Self {
            users: users.into_iter().map(|u| (u.id.clone(), u)).collect(),
            registrations: BTreeMap::new(),
            limiter: LoginLimiter::default(),
        }
    }

    /// Every user, by id.
    pub fn all(&self) -> impl Iterator<Item = &UserRecord> {
        self.users.values()
    }

    /// One user.
    pub fn get(&self, id: &str) -> Option<&UserRecord> {
        self.users.get(id)
    }

    /// Adds a user with an initial password that must be changed at first login.
    pub fn add<R: RngCore + CryptoRng>(
        &mut self,
        id: &str,
        name: &str,
        email: &str,
        now: u64,
        rng: &mut R,
    ) -> Result<(UserRecord, Zeroizing<String>), UserError> {
        validate_id(id)?;
        if self.users.contains_key(id) || self.registrations.contains_key(id) {
            return Err(UserError::Exists(id.to_owned()));
        }
        let password = initial_password(rng);
        let record = UserRecord {
            id: id.to_owned(),
            name: name.to_owned(),
            email: email.to_owned(),
            password_hash: hash_password(&password, rng)?,
            must_change: true,
            spokes: BTreeSet::new(),
            created_at: now,
        };
        self.users.insert(id.to_owned(), record.clone());
        Ok((record, password))
    }

    /// Removes a user.
    pub fn remove(&mut self, id: &str) -> Result<UserRecord, UserError> {
        self.users
            .remove(id)
            .ok_or_else(|| UserError::NoSuchUser(id.to_owned()))
    }

    fn get_mut(&mut self, id: &str) -> Result<&mut UserRecord, UserError> {
        self.users
            .get_mut(id)
            .ok_or_else(|| UserError::NoSuchUser(id.to_owned()))
    }

    /// Sets a new initial password (to be changed at next login).
    pub fn reset_password<R: RngCore + CryptoRng>(
        &mut self,
        id: &str,
        rng: &mut R,
    ) -> Result<(UserRecord, Zeroizing<String>), UserError> {
        let password = initial_password(rng);
        let hash = hash_password(&password, rng)?;
        let u = self.get_mut(id)?;
        u.password_hash = hash;
        u.must_change = true;
        Ok((u.clone(), password))
    }

    /// Lets a user log in on a spoke.
    pub fn allow(&mut self, id: &str, spoke: SpokeId) -> Result<UserRecord, UserError> {
        let u = self.get_mut(id)?;
        u.spokes.insert(spoke);
        Ok(u.clone())
    }

    /// Checks a login of `user` on `spoke`. With the initial password,
    /// `new_password` must be given and replaces it. Returns the proof and
    /// the (possibly changed) record to store.
    pub fn login<R: RngCore + CryptoRng>(
        &mut self,
        user: &str,
        spoke: SpokeId,
        password: &str,
        new_password: Option<&str>,
        now: u64,
        rng: &mut R,
    ) -> Result<(LoggedIn, UserRecord), UserError> {
        self.limiter.check(user, spoke, now)?;
        let Some(record) = self.users.get(user) else {
            if self.registrations.contains_key(user) {
                // Asked for, not yet approved: its owner (who knows the
                // password) hears so; anyone else hears nothing more.
                if self.pending_with(user, password).is_some() {
                    return Err(UserError::AwaitingApproval);
                }
                self.limiter.failed(user, spoke, now);
                return Err(UserError::BadCredentials);
            }
            // Spend the same effort as a real check: no timing oracle for ids.
            let _ = verify_password(DUMMY_HASH, password);
            self.limiter.failed(user, spoke, now);
            return Err(UserError::BadCredentials);
        };
        if !verify_password(&record.password_hash, password) {
            self.limiter.failed(user, spoke, now);
            return Err(UserError::BadCredentials);
        }
        if !record.spokes.contains(&spoke) {
            return Err(UserError::NotAllowed(user.to_owned()));
        }
        if record.must_change {
            let Some(new) = new_password else {
                return Err(UserError::PasswordChangeRequired);
            };
            check_new_password(password, new)?;
            let hash = hash_password(new, rng)?;
            let u = self.get_mut(user)?;
            u.password_hash = hash;
            u.must_change = false;
        }
        self.limiter.succeeded(user);
        let record = self.get_mut(user)?.clone();
        Ok((
            LoggedIn {
                user: user.to_owned(),
                spoke,
            },
            record,
        ))
    }

    /// Changes a password, knowing the old one.
    pub fn change_password<R: RngCore + CryptoRng>(
        &mut self,
        user: &str,
        spoke: SpokeId,
        old: &str,
        new: &str,
        now: u64,
        rng: &mut R,
    ) -> Result<UserRecord, UserError> {
        self.limiter.check(user, spoke, now)?;
        let ok = self
            .users
            .get(user)
            .is_some_and(|u| verify_password(&u.password_hash, old));
        if !ok {
            self.limiter.failed(user, spoke, now);
            return Err(UserError::BadCredentials);
        }
        check_new_password(old, new)?;
        let hash = hash_password(new, rng)?;
        let u = self.get_mut(user)?;
        u.password_hash = hash;
        u.must_change = false;
        Ok(u.clone())
    }
}

/// A valid argon2id hash of a random string, to spend equal time on unknown ids.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$4n3QmC0sGxLMw0wfWvQ0Hk2l7g1f9mQm9nOm2i7bKxk";

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    fn users() -> (Users, Zeroizing<String>, StdRng) {
        let mut rng = StdRng::seed_from_u64(51);
        let mut u = Users::default();
        let (_, pw) = u
            .add("alice", "Alice A", "alice@example.com", 0, &mut rng)
            .unwrap();
        u.allow("alice", 7).unwrap();
        (u, pw, rng)
    }

    #[test]
    fn first_login_must_change_the_initial_password() {
        let (mut u, pw, mut rng) = users();
        assert_eq!(pw.len(), 16);
        assert!(!u.get("alice").unwrap().password_hash.contains(pw.as_str()));
        assert!(u
            .get("alice")
            .unwrap()
            .password_hash
            .starts_with("$argon2id$"));
        assert_eq!(
            u.login("alice", 7, &pw, None, 1, &mut rng).unwrap_err(),
            UserError::PasswordChangeRequired
        );
        assert!(matches!(
            u.login("alice", 7, &pw, Some("short"), 1, &mut rng),
            Err(UserError::WeakPassword(_))
        ));
        let (proof, rec) = u
            .login("alice", 7, &pw, Some("correct horse battery"), 1, &mut rng)
            .unwrap();
        assert_eq!((proof.user(), proof.spoke()), ("alice", 7));
        assert!(!rec.must_change);
        // The old password no longer works; the new one does, with no change asked.
        assert_eq!(
            u.login("alice", 7, &pw, None, 2, &mut rng).unwrap_err(),
            UserError::BadCredentials
        );
        assert!(u
            .login("alice", 7, "correct horse battery", None, 2, &mut rng)
            .is_ok());
    }

    #[test]
    fn refusals() {
        let (mut u, pw, mut rng) = users();
        u.login("alice", 7, &pw, Some("correct horse battery"), 1, &mut rng)
            .unwrap();
        assert_eq!(
            u.login("alice", 7, "wrong", None, 2, &mut rng).unwrap_err(),
            UserError::BadCredentials
        );
        assert_eq!(
            u.login("mallory", 7, "x", None, 2, &mut rng).unwrap_err(),
            UserError::BadCredentials
        );
        assert_eq!(
            u.login("alice", 8, "correct horse battery", None, 2, &mut rng)
                .unwrap_err(),
            UserError::NotAllowed("alice".into())
        );
        assert!(matches!(
            u.add("alice", "", "", 0, &mut rng),
            Err(UserError::Exists(_))
        ));
        assert!(matches!(
            u.add("a b", "", "", 0, &mut rng),
            Err(UserError::InvalidId(_))
        ));
    }

    #[test]
    fn failures_lock_out_per_user_and_per_spoke() {
        let (mut u, pw, mut rng) = users();
        u.login("alice", 7, &pw, Some("correct horse battery"), 1, &mut rng)
            .unwrap();
        for _ in 0..MAX_FAILURES {
            let _ = u.login("alice", 7, "nope", None, 10, &mut rng);
        }
        // Locked, even with the right password.
        assert_eq!(
            u.login("alice", 7, "correct horse battery", None, 11, &mut rng)
                .unwrap_err(),
            UserError::Locked(LOCKOUT_SECS - 1)
        );
        // Another user on the same spoke is locked out too (the spoke is).
        u.add("bob", "", "", 0, &mut rng).unwrap();
        u.allow("bob", 7).unwrap();
        assert!(matches!(
            u.login("bob", 7, "x", None, 11, &mut rng),
            Err(UserError::Locked(_))
        ));
        // After the lock-out the right password works again.
        assert!(u
            .login(
                "alice",
                7,
                "correct horse battery",
                None,
                10 + LOCKOUT_SECS,
                &mut rng
            )
            .is_ok());
    }

    #[test]
    fn password_change_and_reset() {
        let (mut u, pw, mut rng) = users();
        u.login("alice", 7, &pw, Some("correct horse battery"), 1, &mut rng)
            .unwrap();
        assert_eq!(
            u.change_password("alice", 7, "wrong", "another good one", 2, &mut rng)
                .unwrap_err(),
            UserError::BadCredentials
        );
        u.change_password(
            "alice",
            7,
            "correct horse battery",
            "another good one",
            2,
            &mut rng,
        )
        .unwrap();
        let (rec, fresh) = u.reset_password("alice", &mut rng).unwrap();
        assert!(rec.must_change);
        assert_eq!(
            u.login("alice", 7, &fresh, None, 3, &mut rng).unwrap_err(),
            UserError::PasswordChangeRequired
        );
        assert!(u.remove("alice").is_ok());
        assert!(u.remove("alice").is_err());
    }

    #[test]
    fn dummy_hash_parses() {
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
        assert!(!verify_password(DUMMY_HASH, "anything"));
        assert!(!verify_password("garbage", "anything"));
    }
}
