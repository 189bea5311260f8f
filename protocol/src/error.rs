//! Errors that keyd returns in a reply.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Stable error codes. The numeric value of each code is part of the
/// protocol and never changes; a code this build does not know decodes as
/// [`ErrorCode::Internal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    NotInitialized = 1,
    Sealed = 2,
    InvalidPassword = 3,
    TooManyAttempts = 4,
    AlreadyInitialized = 5,
    PermissionDenied = 6,
    NotFound = 7,
    InvalidRequest = 8,
    Conflict = 9,
    Internal = 10,
    /// keyd cannot serve the request now (for example while it is shutting
    /// down); the client may retry.
    Unavailable = 11,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 11] = [
        ErrorCode::NotInitialized,
        ErrorCode::Sealed,
        ErrorCode::InvalidPassword,
        ErrorCode::TooManyAttempts,
        ErrorCode::AlreadyInitialized,
        ErrorCode::PermissionDenied,
        ErrorCode::NotFound,
        ErrorCode::InvalidRequest,
        ErrorCode::Conflict,
        ErrorCode::Internal,
        ErrorCode::Unavailable,
    ];

    pub fn as_u16(self) -> u16 {
        self as u16
    }

    pub fn from_u16(code: u16) -> Self {
        Self::ALL
            .into_iter()
            .find(|known| known.as_u16() == code)
            .unwrap_or(ErrorCode::Internal)
    }

    /// Returns the HTTP status that frontd sends for this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::NotInitialized => 412,
            ErrorCode::Sealed => 503,
            ErrorCode::InvalidPassword => 401,
            ErrorCode::TooManyAttempts => 429,
            ErrorCode::AlreadyInitialized => 409,
            ErrorCode::PermissionDenied => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::InvalidRequest => 400,
            ErrorCode::Conflict => 409,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
        }
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u16(self.as_u16())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        u16::deserialize(deserializer).map(Self::from_u16)
    }
}

/// An error reply: a stable code, a message for the operator, and for
/// [`ErrorCode::TooManyAttempts`] the seconds until unseal is allowed again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    pub retry_after_secs: Option<u64>,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    pub fn sealed() -> Self {
        Self::new(ErrorCode::Sealed, "sealed")
    }

    pub fn not_initialized() -> Self {
        Self::new(ErrorCode::NotInitialized, "not initialized")
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    pub fn too_many_attempts(retry_after_secs: u64) -> Self {
        Self {
            code: ErrorCode::TooManyAttempts,
            message: "too many attempts".to_owned(),
            retry_after_secs: Some(retry_after_secs),
        }
    }
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.retry_after_secs {
            Some(secs) => write!(f, "{} (retry in {secs} s)", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ErrorBody {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_and_distinct() {
        let numbers: Vec<u16> = ErrorCode::ALL.iter().map(|c| c.as_u16()).collect();
        assert_eq!(numbers, (1..=11).collect::<Vec<u16>>());
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_u16(code.as_u16()), code);
        }
    }

    #[test]
    fn unknown_code_decodes_as_internal() {
        assert_eq!(ErrorCode::from_u16(999), ErrorCode::Internal);
        let bytes = postcard::to_allocvec(&999u16).unwrap();
        let code: ErrorCode = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(code, ErrorCode::Internal);
    }

    #[test]
    fn http_statuses_match_the_api() {
        assert_eq!(ErrorCode::NotInitialized.http_status(), 412);
        assert_eq!(ErrorCode::Sealed.http_status(), 503);
        assert_eq!(ErrorCode::InvalidPassword.http_status(), 401);
        assert_eq!(ErrorCode::TooManyAttempts.http_status(), 429);
        assert_eq!(ErrorCode::AlreadyInitialized.http_status(), 409);
        assert_eq!(ErrorCode::PermissionDenied.http_status(), 403);
        assert_eq!(ErrorCode::NotFound.http_status(), 404);
        assert_eq!(ErrorCode::InvalidRequest.http_status(), 400);
        assert_eq!(ErrorCode::Conflict.http_status(), 409);
        assert_eq!(ErrorCode::Internal.http_status(), 500);
    }
}
