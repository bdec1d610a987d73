//! Why a change to the hub's state was refused or not made: the request's
//! own fault (a typed core error, a bad value, a wrong state) or the
//! store's. Every admin and user reply carries it as an [`ApiError`].

use tasuki_core::access::AccessError;
use tasuki_core::api_error::{ApiError, ErrorCode};
use tasuki_core::registry::RegistryError;
use tasuki_core::users::UserError;

/// A failed change of the hub's state; nothing of it was kept.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum StateError {
    /// The registry refused it (a name, a key, a spoke's state).
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The user accounts refused it.
    #[error(transparent)]
    User(#[from] UserError),
    /// The access policy refused it.
    #[error(transparent)]
    Access(#[from] AccessError),
    /// A value in the request that the hub cannot use.
    #[error("{0}")]
    Invalid(String),
    /// Something the request names that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The asker may not do this (a user not logged in on the spoke).
    #[error("{0}")]
    Denied(String),
    /// What the request names is in a state that does not allow it.
    #[error("{0}")]
    WrongState(String),
    /// A key epoch could not be sealed for its spoke.
    #[error(transparent)]
    Seal(#[from] tasuki_core::seal::SealError),
    /// The store or the key directory failed (a full disk, say), with what
    /// was not stored.
    #[error("{0:#}")]
    Storage(anyhow::Error),
}

impl From<anyhow::Error> for StateError {
    /// The store and the key vault report with `anyhow`.
    fn from(e: anyhow::Error) -> Self {
        StateError::Storage(e)
    }
}

impl StateError {
    /// Adds what was not stored to a store failure; other errors say it
    /// themselves.
    pub(crate) fn context(self, what: impl std::fmt::Display + Send + Sync + 'static) -> Self {
        match self {
            StateError::Storage(e) => StateError::Storage(e.context(what)),
            other => other,
        }
    }

    /// The kind of failure, for the reply.
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            StateError::Registry(e) => e.into(),
            StateError::User(e) => e.into(),
            StateError::Access(e) => e.into(),
            StateError::Invalid(_) => ErrorCode::InvalidInput,
            StateError::NotFound(_) => ErrorCode::NotFound,
            StateError::WrongState(_) => ErrorCode::WrongState,
            StateError::Denied(_) => ErrorCode::PermissionDenied,
            StateError::Seal(_) => ErrorCode::Internal,
            StateError::Storage(_) => ErrorCode::Storage,
        }
    }
}

impl From<&StateError> for ApiError {
    fn from(e: &StateError) -> Self {
        // A store failure says itself what was not written and what to do.
        ApiError::new(e.code(), e.to_string())
    }
}
