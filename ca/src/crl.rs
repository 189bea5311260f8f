//! Certificate revocation lists, one per issuer, signed by that issuer.

use rcgen::{
    CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use crate::authority::{CaCertificate, truncate_to_seconds};
use crate::error::CaError;

/// Time from thisUpdate to nextUpdate of every CRL. keyd signs a new CRL
/// when one is requested less than [`CRL_RENEW_BEFORE`] before its
/// nextUpdate.
pub const CRL_VALIDITY: Duration = Duration::days(7);

/// How long before its nextUpdate a CRL is replaced.
pub const CRL_RENEW_BEFORE: Duration = Duration::days(1);

/// Reasons a leaf may be revoked for, by their RFC 5280 names. `cACompromise`,
/// `aACompromise`, `certificateHold` and `removeFromCRL` do not apply to
/// leaves of this CA.
pub const REVOCATION_REASONS: [&str; 6] = [
    "unspecified",
    "keyCompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
    "privilegeWithdrawn",
];

/// Checks a revocation reason and returns its RFC 5280 name, `unspecified`
/// when `None`.
pub fn parse_revocation_reason(input: Option<&str>) -> Result<&'static str, CaError> {
    let text = input.unwrap_or("unspecified");
    REVOCATION_REASONS
        .into_iter()
        .find(|reason| *reason == text)
        .ok_or_else(|| CaError::InvalidRevocationReason {
            input: text.to_owned(),
            allowed: REVOCATION_REASONS.join(", "),
        })
}

fn reason_code(name: &str) -> Option<RevocationReason> {
    match name {
        "keyCompromise" => Some(RevocationReason::KeyCompromise),
        "affiliationChanged" => Some(RevocationReason::AffiliationChanged),
        "superseded" => Some(RevocationReason::Superseded),
        "cessationOfOperation" => Some(RevocationReason::CessationOfOperation),
        "privilegeWithdrawn" => Some(RevocationReason::PrivilegeWithdrawn),
        // RFC 5280 section 5.3.1: the unspecified code SHOULD NOT be used, so
        // the entry carries no reasonCode extension.
        _ => None,
    }
}

/// One revoked certificate of a CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedEntry {
    /// Lowercase hex without colons.
    pub serial_hex: String,
    pub revoked_at: OffsetDateTime,
    /// An RFC 5280 reason name from [`REVOCATION_REASONS`].
    pub reason: String,
}

/// A signed CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCrl {
    pub der: Vec<u8>,
    pub this_update: OffsetDateTime,
    pub next_update: OffsetDateTime,
}

impl CaCertificate {
    /// Signs a CRL listing `entries` with this CA's key `pkcs8`: version 2,
    /// thisUpdate `now`, nextUpdate `now` plus [`CRL_VALIDITY`] (at most this
    /// CA's NotAfter), an authorityKeyIdentifier equal to this CA's SKI and
    /// CRL number `crl_number`, which the caller must increase with every
    /// CRL of this CA.
    pub fn sign_crl(
        &self,
        pkcs8: &[u8],
        crl_number: u64,
        entries: &[RevokedEntry],
        now: OffsetDateTime,
    ) -> Result<SignedCrl, CaError> {
        let this_update = truncate_to_seconds(now);
        let next_update = (this_update + CRL_VALIDITY).min(self.not_after());
        let mut revoked_certs = Vec::with_capacity(entries.len());
        for entry in entries {
            let serial = hex::decode(&entry.serial_hex).map_err(|_| CaError::Signing {
                reason: format!("stored serial {:?} is not hex", entry.serial_hex),
            })?;
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial),
                revocation_time: truncate_to_seconds(entry.revoked_at),
                reason_code: reason_code(&entry.reason),
                invalidity_date: None,
            });
        }
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from(crl_number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::PreSpecified(self.subject_key_id().to_vec()),
        };
        let crl = params.signed_by(&self.issuer(pkcs8))?;
        Ok(SignedCrl {
            der: crl.der().to_vec(),
            this_update,
            next_update,
        })
    }
}
