//! Errors of the CA crate.

use std::fmt;

use metacrypt_protocol::{ErrorBody, ErrorCode, KeyAlgorithm, Profile};

/// Maximum number of characters of a request value that an error quotes.
const ECHO_MAX_CHARS: usize = 64;

/// A request value quoted in an error message: the Debug form of its first
/// [`ECHO_MAX_CHARS`] characters, followed by its length when it is longer,
/// so an error stays short whatever the request sent.
struct Echo<'a>(&'a str);

impl fmt::Display for Echo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let length = self.0.chars().count();
        if length <= ECHO_MAX_CHARS {
            return write!(f, "{:?}", self.0);
        }
        let start: String = self.0.chars().take(ECHO_MAX_CHARS).collect();
        write!(f, "{start:?}... ({length} characters)")
    }
}

/// An error of a CA operation.
///
/// Variants up to [`CaError::IssuerNotYetValid`] are caused by the request
/// and map to [`ErrorCode::InvalidRequest`]. The rest are faults of the
/// service or of stored data and map to [`ErrorCode::Internal`]. No message
/// contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaError {
    #[error("invalid TTL {}: {reason}", Echo(input))]
    InvalidTtl { input: String, reason: String },

    #[error("invalid DNS name {}: {reason}", Echo(name))]
    InvalidDnsName { name: String, reason: String },

    #[error(
        "invalid IP address {}: expected an IPv4 or IPv6 address such as 192.0.2.10 or 2001:db8::1",
        Echo(input)
    )]
    InvalidIpAddress { input: String },

    #[error("invalid email address {}: {reason}", Echo(input))]
    InvalidEmailAddress { input: String, reason: String },

    #[error("invalid URI {}: {reason}", Echo(input))]
    InvalidUri { input: String, reason: String },

    #[error("invalid {field}: {reason}")]
    InvalidUsage { field: &'static str, reason: String },

    #[error("invalid {field}: {reason}")]
    InvalidConstraint { field: &'static str, reason: String },

    #[error("name {} is not allowed: {reason}", Echo(name))]
    NameNotAllowed { name: String, reason: String },

    #[error("invalid revocation reason {}: expected one of {allowed}", Echo(input))]
    InvalidRevocationReason { input: String, allowed: String },

    #[error("invalid CSR: {reason}")]
    InvalidCsr { reason: String },

    #[error("invalid common name {}: {reason}", Echo(value))]
    InvalidCommonName { value: String, reason: String },

    #[error("invalid organization {}: {reason}", Echo(value))]
    InvalidOrganization { value: String, reason: String },

    #[error(
        "invalid issuer name {}: expected 1 to 64 characters of a-z, 0-9, '_' and '-', starting with a letter or digit",
        Echo(name)
    )]
    InvalidIssuerName { name: String },

    #[error(
        "a {profile} certificate needs at least one subject alternative name: a DNS name, IP address, email address or URI"
    )]
    MissingSubjectAltName { profile: Profile },

    #[error("too many subject alternative names: {count} given, the maximum is {max}")]
    TooManySubjectAltNames { count: usize, max: usize },

    #[error("issuer {subject:?} expired at {not_after}")]
    IssuerExpired { subject: String, not_after: String },

    #[error("issuer {subject:?} is not valid before {not_before}")]
    IssuerNotYetValid { subject: String, not_before: String },

    #[error("failed to generate a {algorithm} key")]
    KeyGeneration { algorithm: KeyAlgorithm },

    #[error("invalid {algorithm} private key: {reason}")]
    InvalidPrivateKey {
        algorithm: KeyAlgorithm,
        reason: String,
    },

    #[error("the private key does not match the public key of certificate {subject:?}")]
    KeyMismatch { subject: String },

    #[error("invalid CA certificate: {reason}")]
    InvalidCertificate { reason: String },

    #[error("failed to sign the certificate: {reason}")]
    Signing { reason: String },
}

impl CaError {
    /// Returns the protocol error code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            CaError::InvalidTtl { .. }
            | CaError::InvalidDnsName { .. }
            | CaError::InvalidIpAddress { .. }
            | CaError::InvalidEmailAddress { .. }
            | CaError::InvalidUri { .. }
            | CaError::InvalidUsage { .. }
            | CaError::InvalidConstraint { .. }
            | CaError::NameNotAllowed { .. }
            | CaError::InvalidCsr { .. }
            | CaError::InvalidRevocationReason { .. }
            | CaError::InvalidCommonName { .. }
            | CaError::InvalidOrganization { .. }
            | CaError::InvalidIssuerName { .. }
            | CaError::MissingSubjectAltName { .. }
            | CaError::TooManySubjectAltNames { .. }
            | CaError::IssuerExpired { .. }
            | CaError::IssuerNotYetValid { .. } => ErrorCode::InvalidRequest,
            CaError::KeyGeneration { .. }
            | CaError::InvalidPrivateKey { .. }
            | CaError::KeyMismatch { .. }
            | CaError::InvalidCertificate { .. }
            | CaError::Signing { .. } => ErrorCode::Internal,
        }
    }
}

impl From<CaError> for ErrorBody {
    fn from(error: CaError) -> Self {
        ErrorBody::new(error.code(), error.to_string())
    }
}

impl From<rcgen::Error> for CaError {
    fn from(error: rcgen::Error) -> Self {
        CaError::Signing {
            reason: error.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_are_quoted_whole() {
        let error = CaError::InvalidDnsName {
            name: "a b.example.com".to_owned(),
            reason: "spaces are not allowed".to_owned(),
        };
        assert_eq!(
            error.to_string(),
            "invalid DNS name \"a b.example.com\": spaces are not allowed"
        );
    }

    #[test]
    fn long_values_are_cut_with_length() {
        let name = format!("{}.example.com", "x".repeat(100_000));
        let error = CaError::NameNotAllowed {
            name,
            reason: "not in allowed_domains".to_owned(),
        };
        let message = error.to_string();
        let quoted = format!("\"{}\"... (100012 characters)", "x".repeat(ECHO_MAX_CHARS));
        assert!(message.contains(&quoted), "{message}");
        assert!(message.len() < 200, "{} bytes", message.len());
    }

    #[test]
    fn cut_respects_character_boundaries() {
        let value = "\u{e9}".repeat(ECHO_MAX_CHARS + 1);
        let error = CaError::InvalidCommonName {
            value,
            reason: "too long".to_owned(),
        };
        let quoted = format!("\"{}\"... (65 characters)", "\u{e9}".repeat(ECHO_MAX_CHARS));
        assert!(error.to_string().contains(&quoted), "{error}");
    }
}
