//! The error every admin, control-socket and user reply carries: a code a
//! script can branch on and a message a person can act on.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::access::AccessError;
use crate::registry::RegistryError;
use crate::users::UserError;

/// What kind of failure a reply reports. On the wire it is its snake_case
/// name, so a code added later reads as [`ErrorCode::Other`] in an older
/// build rather than failing the whole reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request names a spoke, user, group, rule or invitation that does
    /// not exist.
    NotFound,
    /// Something by that name or key exists already.
    AlreadyExists,
    /// A value in the request is malformed or out of range.
    InvalidInput,
    /// The thing named is in a state that does not allow this (approving an
    /// active spoke, removing a group that rules still use).
    WrongState,
    /// The caller may not do this (not root, not logged in, not allowed on
    /// this spoke).
    PermissionDenied,
    /// Unknown user or wrong password.
    BadCredentials,
    /// The password is an initial one: log in again with a new password.
    PasswordChangeRequired,
    /// Too many attempts or too many waiting requests: try again later.
    RateLimited,
    /// The client and the daemon speak different protocol versions.
    VersionMismatch,
    /// The request could not be read.
    BadRequest,
    /// The daemon could not store the change (a full disk, say): nothing
    /// changed, the same request can be sent again.
    Storage,
    /// The daemon cannot do it now (the spoke is not attached to its hub,
    /// the data plane stopped): try again later.
    Unavailable,
    /// A failure inside the daemon; the message says what.
    Internal,
    /// A code this build does not know (sent by a newer peer).
    Other,
}

impl ErrorCode {
    /// Every code this build knows, for tests and documentation.
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::NotFound,
        ErrorCode::AlreadyExists,
        ErrorCode::InvalidInput,
        ErrorCode::WrongState,
        ErrorCode::PermissionDenied,
        ErrorCode::BadCredentials,
        ErrorCode::PasswordChangeRequired,
        ErrorCode::RateLimited,
        ErrorCode::VersionMismatch,
        ErrorCode::BadRequest,
        ErrorCode::Storage,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
        ErrorCode::Other,
    ];

    /// The code's name on the wire and in `--json` output.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::InvalidInput => "invalid_input",
            ErrorCode::WrongState => "wrong_state",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::BadCredentials => "bad_credentials",
            ErrorCode::PasswordChangeRequired => "password_change_required",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::VersionMismatch => "version_mismatch",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Storage => "storage",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::Other => "other",
        }
    }

    /// The code named `name`; [`ErrorCode::Other`] for a name this build
    /// does not know.
    pub fn from_name(name: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|c| c.name() == name)
            .unwrap_or(ErrorCode::Other)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Ok(Self::from_name(&name))
    }
}

/// A failed request: its code and what to tell the person who asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// What kind of failure.
    pub code: ErrorCode,
    /// What happened and, where there is one, what to do about it.
    pub message: String,
}

impl ApiError {
    /// An error of kind `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<&UserError> for ErrorCode {
    fn from(e: &UserError) -> Self {
        match e {
            UserError::BadCredentials => ErrorCode::BadCredentials,
            UserError::NotAllowed(_) | UserError::AwaitingApproval => ErrorCode::PermissionDenied,
            UserError::Locked(_) | UserError::TooManyPending => ErrorCode::RateLimited,
            UserError::PasswordChangeRequired => ErrorCode::PasswordChangeRequired,
            UserError::WeakPassword(_) | UserError::InvalidId(_) | UserError::InvalidProfile(_) => {
                ErrorCode::InvalidInput
            }
            UserError::Exists(_) => ErrorCode::AlreadyExists,
            UserError::NoSuchUser(_) | UserError::NoSuchRegistration(_) => ErrorCode::NotFound,
            UserError::Hash(_) => ErrorCode::Internal,
        }
    }
}

impl From<&RegistryError> for ErrorCode {
    fn from(e: &RegistryError) -> Self {
        match e {
            RegistryError::InvalidName(_)
            | RegistryError::BadPublicKey(_)
            | RegistryError::ZeroValidity => ErrorCode::InvalidInput,
            RegistryError::KeyTaken(_) | RegistryError::NameTaken(_) => ErrorCode::AlreadyExists,
            RegistryError::NotWireGuard(_) | RegistryError::WrongState { .. } => {
                ErrorCode::WrongState
            }
            RegistryError::NoSuchSpoke(_) => ErrorCode::NotFound,
            RegistryError::AddressesExhausted(_) => ErrorCode::Unavailable,
        }
    }
}

impl From<&AccessError> for ErrorCode {
    fn from(e: &AccessError) -> Self {
        match e {
            AccessError::Syntax(_) | AccessError::TooMany { .. } => ErrorCode::InvalidInput,
            AccessError::NoSuchGroup(_) | AccessError::NoSuchRule(_) => ErrorCode::NotFound,
            AccessError::NotAMember { .. } => ErrorCode::NotFound,
            AccessError::GroupExists(_) => ErrorCode::AlreadyExists,
            AccessError::GroupInUse { .. } => ErrorCode::WrongState,
        }
    }
}

/// An error of core's own kinds, with its code.
macro_rules! from_core_error {
    ($($t:ty),*) => {$(
        impl From<$t> for ApiError {
            fn from(e: $t) -> Self {
                Self::new(ErrorCode::from(&e), e.to_string())
            }
        }
    )*};
}
from_core_error!(UserError, RegistryError, AccessError);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_goes_by_its_own_name() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_name(code.name()), code);
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.name()));
            let bytes = postcard::to_allocvec(&code).unwrap();
            assert_eq!(postcard::from_bytes::<ErrorCode>(&bytes).unwrap(), code);
        }
    }

    #[test]
    fn a_code_from_a_newer_peer_reads_as_other() {
        let e: ApiError =
            serde_json::from_str(r#"{"code":"quota_exceeded","message":"over quota"}"#).unwrap();
        assert_eq!(e.code, ErrorCode::Other);
        assert_eq!(e.message, "over quota");
        let bytes = postcard::to_allocvec(&("quota_exceeded", "m")).unwrap();
        let e: ApiError = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(e.code, ErrorCode::Other);
    }

    #[test]
    fn core_errors_keep_their_message_and_get_a_code() {
        let e = ApiError::from(RegistryError::NoSuchSpoke("x".into()));
        assert_eq!(e.code, ErrorCode::NotFound);
        assert_eq!(
            e.message,
            RegistryError::NoSuchSpoke("x".into()).to_string()
        );
        assert_eq!(
            ApiError::from(UserError::BadCredentials).code,
            ErrorCode::BadCredentials
        );
        assert_eq!(
            ApiError::from(AccessError::GroupExists("g".into())).code,
            ErrorCode::AlreadyExists
        );
    }
}
