//! Leaf certificates of the `server`, `client` and `peer` profiles.

use metacrypt_protocol::{IssueRequest, KeyAlgorithm, Profile};
use rcgen::{
    CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyUsagePurpose, SanType,
    SerialNumber,
};
use time::{Duration, OffsetDateTime};

use crate::authority::{
    BACKDATE, CaCertificate, expiry_after, key_identifier, truncate_to_seconds,
};
use crate::error::CaError;
use crate::fields::{CertificateFields, format_rfc3339};
use crate::key::GeneratedKey;
use crate::names::{
    MAX_NAME_ATTRIBUTE_LEN, MAX_SUBJECT_ALT_NAMES, SubjectAltNames, normalize_dns_name,
    parse_ip_address, validate_common_name, validate_organization,
};
use crate::pem;
use crate::serial::random_serial;
use crate::ttl::parse_ttl;

/// Validity of a leaf when the request gives no TTL: 90 days.
pub const DEFAULT_LEAF_TTL: &str = "90d";
/// Key algorithm of a leaf when the request gives none.
pub const DEFAULT_LEAF_KEY_ALGORITHM: KeyAlgorithm = KeyAlgorithm::EcdsaP256;

/// A leaf request as the caller wrote it.
#[derive(Debug, Clone, Copy)]
pub struct LeafRequest<'a> {
    pub profile: Profile,
    pub common_name: &'a str,
    pub organization: Option<&'a str>,
    pub dns_names: &'a [String],
    pub ip_addresses: &'a [String],
    /// A duration string, or [`DEFAULT_LEAF_TTL`] when `None`.
    pub ttl: Option<&'a str>,
    /// [`DEFAULT_LEAF_KEY_ALGORITHM`] when `None`.
    pub key_algorithm: Option<KeyAlgorithm>,
}

impl<'a> From<&'a IssueRequest> for LeafRequest<'a> {
    fn from(request: &'a IssueRequest) -> Self {
        Self {
            profile: request.profile,
            common_name: &request.common_name,
            organization: None,
            dns_names: &request.dns_names,
            ip_addresses: &request.ip_addresses,
            ttl: request.ttl.as_deref(),
            key_algorithm: request.key_algorithm,
        }
    }
}

/// A leaf request whose names and TTL passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedLeaf {
    pub profile: Profile,
    /// Lowercased when it is a DNS name of a `server` or `peer` certificate.
    pub common_name: String,
    pub organization: Option<String>,
    /// Every SAN of the certificate, including one made from the common name.
    pub subject_alt_names: SubjectAltNames,
    pub ttl: Duration,
    /// The TTL as the caller wrote it, or the default, for messages.
    pub ttl_text: String,
    pub key_algorithm: KeyAlgorithm,
}

impl LeafRequest<'_> {
    /// Checks the request against its profile.
    ///
    /// `server`: the common name must be a DNS name (lowercased and added as
    /// a dNSName SAN) or an IP address (added as an iPAddress SAN).
    ///
    /// `peer`: a common name that is a DNS name or an IP address is added
    /// the same way. Any other text stays only in the subject.
    ///
    /// `client`: the common name is free text and SANs are optional.
    ///
    /// `server` and `peer` need at least one SAN. Every DNS name and IP
    /// address is validated, and duplicates after normalizing are dropped.
    pub fn validate(&self) -> Result<ValidatedLeaf, CaError> {
        let mut sans = SubjectAltNames::default();
        let common_name = match self.profile {
            Profile::Server => self.host_common_name(&mut sans)?,
            Profile::Peer => match self.host_common_name(&mut sans) {
                Ok(common_name) => common_name,
                Err(_) => {
                    validate_common_name(self.common_name)?;
                    self.common_name.to_owned()
                }
            },
            Profile::Client => {
                validate_common_name(self.common_name)?;
                self.common_name.to_owned()
            }
        };
        if let Some(organization) = self.organization {
            validate_organization(organization)?;
        }

        let count = sans.len() + self.dns_names.len() + self.ip_addresses.len();
        if count > MAX_SUBJECT_ALT_NAMES {
            return Err(CaError::TooManySubjectAltNames {
                count,
                max: MAX_SUBJECT_ALT_NAMES,
            });
        }
        for name in self.dns_names {
            sans.add_dns_name(name)?;
        }
        for address in self.ip_addresses {
            sans.add_ip_address(address)?;
        }
        if sans.is_empty() && self.profile != Profile::Client {
            return Err(CaError::MissingSubjectAltName {
                profile: self.profile,
            });
        }

        let ttl_text = self.ttl.unwrap_or(DEFAULT_LEAF_TTL);
        Ok(ValidatedLeaf {
            profile: self.profile,
            common_name,
            organization: self.organization.map(str::to_owned),
            subject_alt_names: sans,
            ttl: parse_ttl(ttl_text)?,
            ttl_text: ttl_text.to_owned(),
            key_algorithm: self.key_algorithm.unwrap_or(DEFAULT_LEAF_KEY_ALGORITHM),
        })
    }

    /// Validates a common name that must name a host, adds it to `sans` and
    /// returns it as it goes into the subject.
    fn host_common_name(&self, sans: &mut SubjectAltNames) -> Result<String, CaError> {
        let input = self.common_name;
        let not_a_host = |reason: String| CaError::InvalidCommonName {
            value: input.to_owned(),
            reason: format!(
                "a {} certificate needs a DNS name or an IP address as common name: {reason}",
                self.profile
            ),
        };
        if input.chars().count() > MAX_NAME_ATTRIBUTE_LEN {
            return Err(not_a_host(format!(
                "it is longer than {MAX_NAME_ATTRIBUTE_LEN} characters; put long names in dns_names"
            )));
        }
        if let Ok(address) = parse_ip_address(input) {
            sans.add_ip_address(input)?;
            return Ok(address.to_string());
        }
        match normalize_dns_name(input) {
            Ok(name) => {
                sans.add_dns_name(&name)?;
                Ok(name)
            }
            Err(CaError::InvalidDnsName { reason, .. }) => Err(not_a_host(reason)),
            Err(other) => Err(other),
        }
    }
}

/// A signed leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedLeaf {
    pub der: Vec<u8>,
    pub pem: String,
    pub fields: CertificateFields,
    /// For example that the TTL was capped at the issuer's expiry.
    pub warnings: Vec<String>,
}

impl CaCertificate {
    /// Signs a leaf for `key` under this issuer, whose private key is
    /// `issuer_key` (PKCS#8 DER). Each call draws a new serial, so a caller
    /// that finds the serial taken calls again with the same arguments.
    ///
    /// NotBefore is 30 s before `now`. NotAfter is `now` plus the TTL, capped
    /// at the issuer's NotAfter, with a warning when capped. An issuer that
    /// is expired or not yet valid at `now` is rejected. The certificate has
    /// basicConstraints CA:FALSE (critical), an SKI, an AKI equal to the
    /// issuer's SKI, critical key usage digitalSignature and the extended key
    /// usage of the profile.
    pub fn issue_leaf(
        &self,
        issuer_key: &[u8],
        leaf: &ValidatedLeaf,
        key: &GeneratedKey,
        now: OffsetDateTime,
    ) -> Result<IssuedLeaf, CaError> {
        let now = truncate_to_seconds(now);
        self.check_valid_at(now)?;
        let requested = expiry_after(now, leaf.ttl, &leaf.ttl_text)?;
        let mut warnings = Vec::new();
        let not_after = if requested > self.not_after() {
            warnings.push(format!(
                "the requested TTL {} was capped at the issuer's expiry {}",
                leaf.ttl_text,
                format_rfc3339(self.not_after())
            ));
            self.not_after()
        } else {
            requested
        };

        let params = leaf_params(leaf, key, now - BACKDATE, not_after)?;
        let certificate = params.signed_by(key, &self.issuer(issuer_key))?;
        let der = certificate.der().to_vec();
        Ok(IssuedLeaf {
            pem: pem::encode("CERTIFICATE", &der),
            fields: CertificateFields::from_der(&der)?,
            der,
            warnings,
        })
    }
}

fn leaf_params(
    leaf: &ValidatedLeaf,
    key: &GeneratedKey,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));

    let mut name = rcgen::DistinguishedName::new();
    if let Some(organization) = &leaf.organization {
        name.push(rcgen::DnType::OrganizationName, organization.as_str());
    }
    name.push(rcgen::DnType::CommonName, leaf.common_name.as_str());
    params.distinguished_name = name;

    for dns_name in &leaf.subject_alt_names.dns_names {
        let ia5 = dns_name
            .as_str()
            .try_into()
            .map_err(|_| CaError::InvalidDnsName {
                name: dns_name.clone(),
                reason: "not an IA5String".to_owned(),
            })?;
        params.subject_alt_names.push(SanType::DnsName(ia5));
    }
    for address in &leaf.subject_alt_names.ip_addresses {
        params.subject_alt_names.push(SanType::IpAddress(*address));
    }

    // ExplicitNoCa writes basicConstraints CA:FALSE and the SKI, which plain
    // NoCa would leave out.
    params.is_ca = IsCa::ExplicitNoCa;
    // keyEncipherment is left out for RSA keys too: it serves only the TLS
    // 1.2 RSA key exchange, which TLS 1.3 and rustls dropped, and the CA/Browser
    // Forum baseline advises against setting it together with
    // digitalSignature.
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match leaf.profile {
        Profile::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
        Profile::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        Profile::Peer => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    };
    params.use_authority_key_identifier_extension = true;
    params.key_identifier_method = KeyIdMethod::PreSpecified(key_identifier(key.public_key()));
    Ok(params)
}
