//! Fields of a certificate in the form keyd stores and returns them.

use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::error::CaError;
use crate::serial::serial_hex;

/// Formats a time as RFC 3339 in UTC with whole seconds, such as
/// `2026-12-04T10:00:00Z`.
pub fn format_rfc3339(time: OffsetDateTime) -> String {
    let utc = time.to_offset(UtcOffset::UTC).replace_nanosecond(0);
    // With a UTC offset, time 0.3 fails to format RFC 3339 only for years
    // outside 0..=9999, which certificate times cannot express anyway.
    match utc {
        Ok(utc) => utc.format(&Rfc3339).unwrap_or_else(|_| utc.to_string()),
        Err(_) => time.to_string(),
    }
}

/// The identifying fields of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFields {
    /// Lowercase hex without colons.
    pub serial_hex: String,
    /// The subject in the `CN=..., O=...` form of x509-parser.
    pub subject: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl CertificateFields {
    /// Parses a DER certificate and rejects trailing data after it.
    pub fn from_der(der: &[u8]) -> Result<Self, CaError> {
        let cert = parse_certificate(der)?;
        Ok(Self::from_parsed(&cert))
    }

    pub(crate) fn from_parsed(cert: &X509Certificate<'_>) -> Self {
        Self {
            serial_hex: serial_hex(cert.raw_serial()),
            subject: cert.subject().to_string(),
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
        }
    }

    pub fn not_before_rfc3339(&self) -> String {
        format_rfc3339(self.not_before)
    }

    pub fn not_after_rfc3339(&self) -> String {
        format_rfc3339(self.not_after)
    }
}

pub(crate) fn parse_certificate(der: &[u8]) -> Result<X509Certificate<'_>, CaError> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|error| CaError::InvalidCertificate {
            reason: format!("failed to parse DER: {error}"),
        })?;
    if !rest.is_empty() {
        return Err(CaError::InvalidCertificate {
            reason: format!(
                "{} octets of trailing data after the certificate",
                rest.len()
            ),
        });
    }
    Ok(cert)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_is_utc_whole_seconds() {
        let time = OffsetDateTime::from_unix_timestamp_nanos(1_796_378_400_123_456_789).unwrap();
        assert_eq!(format_rfc3339(time), "2026-12-04T10:00:00Z");
        let offset = time.to_offset(UtcOffset::from_hms(2, 0, 0).unwrap());
        assert_eq!(format_rfc3339(offset), "2026-12-04T10:00:00Z");
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        let error = CertificateFields::from_der(b"not a certificate").unwrap_err();
        assert!(
            matches!(error, CaError::InvalidCertificate { .. }),
            "{error:?}"
        );
    }
}
