//! Errors of the CA crate.

use metacrypt_protocol::{ErrorBody, ErrorCode, KeyAlgorithm, Profile};

/// An error of a CA operation.
///
/// Variants up to [`CaError::IssuerNotYetValid`] are caused by the request
/// and map to [`ErrorCode::InvalidRequest`]. The rest are faults of the
/// service or of stored data and map to [`ErrorCode::Internal`]. No message
/// contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaError {
    #[error("invalid TTL {input:?}: {reason}")]
    InvalidTtl { input: String, reason: String },

    #[error("invalid DNS name {name:?}: {reason}")]
    InvalidDnsName { name: String, reason: String },

    #[error(
        "invalid IP address {input:?}: expected an IPv4 or IPv6 address such as 192.0.2.10 or 2001:db8::1"
    )]
    InvalidIpAddress { input: String },

    #[error("invalid email address {input:?}: {reason}")]
    InvalidEmailAddress { input: String, reason: String },

    #[error("invalid URI {input:?}: {reason}")]
    InvalidUri { input: String, reason: String },

    #[error("invalid {field}: {reason}")]
    InvalidUsage { field: &'static str, reason: String },

    #[error("invalid {field}: {reason}")]
    InvalidConstraint { field: &'static str, reason: String },

    #[error("name {name:?} is not allowed: {reason}")]
    NameNotAllowed { name: String, reason: String },

    #[error("invalid revocation reason {input:?}: expected one of {allowed}")]
    InvalidRevocationReason { input: String, allowed: String },

    #[error("invalid CSR: {reason}")]
    InvalidCsr { reason: String },

    #[error("invalid common name {value:?}: {reason}")]
    InvalidCommonName { value: String, reason: String },

    #[error("invalid organization {value:?}: {reason}")]
    InvalidOrganization { value: String, reason: String },

    #[error(
        "invalid issuer name {name:?}: expected 1 to 64 characters of a-z, 0-9, '_' and '-', starting with a letter or digit"
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
