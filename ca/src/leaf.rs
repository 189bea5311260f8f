//! Leaf certificates of the `server`, `client` and `peer` profiles.

use metacrypt_protocol::{IssueRequest, KeyAlgorithm, Profile};
use rcgen::{
    CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use crate::aia::ca_issuers_extension;
use crate::authority::{
    BACKDATE, CaCertificate, expiry_after, key_identifier, truncate_to_seconds,
};
use crate::constraints::IssuerPolicy;
use crate::csr::ValidatedCsr;
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
    pub email_addresses: &'a [String],
    pub uris: &'a [String],
    /// A duration string, or [`DEFAULT_LEAF_TTL`] when `None`.
    pub ttl: Option<&'a str>,
    /// [`DEFAULT_LEAF_KEY_ALGORITHM`] when `None`.
    pub key_algorithm: Option<KeyAlgorithm>,
    /// Key usages by RFC 5280 name, or the profile's when `None`.
    pub key_usages: Option<&'a [String]>,
    /// Extended key usages by RFC 5280 name, or the profile's when `None`.
    pub extended_key_usages: Option<&'a [String]>,
}

/// A key usage that a leaf profile can grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafKeyUsage {
    DigitalSignature,
    /// Only for RSA keys, and only on request: it serves the TLS 1.2 RSA key
    /// exchange alone.
    KeyEncipherment,
}

impl LeafKeyUsage {
    pub fn as_str(self) -> &'static str {
        match self {
            LeafKeyUsage::DigitalSignature => "digitalSignature",
            LeafKeyUsage::KeyEncipherment => "keyEncipherment",
        }
    }
}

/// An extended key usage that a leaf profile can grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafExtendedKeyUsage {
    ServerAuth,
    ClientAuth,
}

impl LeafExtendedKeyUsage {
    pub fn as_str(self) -> &'static str {
        match self {
            LeafExtendedKeyUsage::ServerAuth => "serverAuth",
            LeafExtendedKeyUsage::ClientAuth => "clientAuth",
        }
    }
}

/// Returns the key usages a profile may grant to a key of `algorithm`.
fn allowed_key_usages(profile: Profile, algorithm: KeyAlgorithm) -> Vec<LeafKeyUsage> {
    let mut allowed = vec![LeafKeyUsage::DigitalSignature];
    if profile != Profile::Client && algorithm.is_rsa() {
        allowed.push(LeafKeyUsage::KeyEncipherment);
    }
    allowed
}

/// Returns the extended key usages of a profile, which are also the most a
/// request may ask for.
pub fn profile_extended_key_usages(profile: Profile) -> Vec<LeafExtendedKeyUsage> {
    match profile {
        Profile::Server => vec![LeafExtendedKeyUsage::ServerAuth],
        Profile::Client => vec![LeafExtendedKeyUsage::ClientAuth],
        Profile::Peer => vec![
            LeafExtendedKeyUsage::ServerAuth,
            LeafExtendedKeyUsage::ClientAuth,
        ],
    }
}

/// Picks the requested usages out of `allowed` by name, rejecting an empty
/// list, an unknown or disallowed name, and duplicates. `field` names the
/// request field in errors.
fn select_usages<T: Copy + PartialEq>(
    field: &'static str,
    requested: &[String],
    allowed: &[T],
    name_of: fn(T) -> &'static str,
    profile: Profile,
) -> Result<Vec<T>, CaError> {
    let allowed_names: Vec<&str> = allowed.iter().map(|usage| name_of(*usage)).collect();
    let invalid = |reason: String| CaError::InvalidUsage { field, reason };
    if requested.is_empty() {
        return Err(invalid(format!(
            "the list is empty; leave the field out for the {profile} profile's default"
        )));
    }
    let mut selected = Vec::new();
    for name in requested {
        let Some(usage) = allowed
            .iter()
            .copied()
            .find(|usage| name_of(*usage) == name)
        else {
            return Err(invalid(format!(
                "{name:?} is not allowed for the {profile} profile with this key; allowed: {}",
                allowed_names.join(", ")
            )));
        };
        if selected.contains(&usage) {
            return Err(invalid(format!("{name:?} is listed twice")));
        }
        selected.push(usage);
    }
    Ok(selected)
}

impl<'a> From<&'a IssueRequest> for LeafRequest<'a> {
    fn from(request: &'a IssueRequest) -> Self {
        Self {
            profile: request.profile,
            common_name: &request.common_name,
            organization: None,
            dns_names: &request.dns_names,
            ip_addresses: &request.ip_addresses,
            email_addresses: &request.email_addresses,
            uris: &request.uris,
            ttl: request.ttl.as_deref(),
            key_algorithm: request.key_algorithm,
            key_usages: request.key_usages.as_deref(),
            extended_key_usages: request.extended_key_usages.as_deref(),
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
    pub key_usages: Vec<LeafKeyUsage>,
    pub extended_key_usages: Vec<LeafExtendedKeyUsage>,
    /// URL of the issuer's CRL for a CRL distribution point extension;
    /// none when `None`. Callers set it after validation.
    pub crl_url: Option<String>,
    /// URL of the issuer's certificate in DER for an Authority Information
    /// Access extension with id-ad-caIssuers; none when `None`. Callers set
    /// it after validation.
    pub ca_issuers_url: Option<String>,
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
    /// `client`: the common name is free text.
    ///
    /// Every profile needs at least one SAN. Every name is validated, and
    /// duplicates after normalizing are dropped.
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

        let count = sans.len()
            + self.dns_names.len()
            + self.ip_addresses.len()
            + self.email_addresses.len()
            + self.uris.len();
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
        for address in self.email_addresses {
            sans.add_email_address(address)?;
        }
        for uri in self.uris {
            sans.add_uri(uri)?;
        }
        // Every profile needs a SAN: strict verifiers such as the Python
        // cryptography package reject a leaf without the extension, and a
        // client name in the subject alone is free text.
        if sans.is_empty() {
            return Err(CaError::MissingSubjectAltName {
                profile: self.profile,
            });
        }

        let key_algorithm = self.key_algorithm.unwrap_or(DEFAULT_LEAF_KEY_ALGORITHM);
        let key_usages = match self.key_usages {
            Some(requested) => select_usages(
                "key_usages",
                requested,
                &allowed_key_usages(self.profile, key_algorithm),
                LeafKeyUsage::as_str,
                self.profile,
            )?,
            None => vec![LeafKeyUsage::DigitalSignature],
        };
        let profile_ekus = profile_extended_key_usages(self.profile);
        let extended_key_usages = match self.extended_key_usages {
            Some(requested) => select_usages(
                "extended_key_usages",
                requested,
                &profile_ekus,
                LeafExtendedKeyUsage::as_str,
                self.profile,
            )?,
            None => profile_ekus,
        };

        let ttl_text = self.ttl.unwrap_or(DEFAULT_LEAF_TTL);
        Ok(ValidatedLeaf {
            profile: self.profile,
            common_name,
            organization: self.organization.map(str::to_owned),
            subject_alt_names: sans,
            ttl: parse_ttl(ttl_text)?,
            ttl_text: ttl_text.to_owned(),
            key_algorithm,
            key_usages,
            extended_key_usages,
            crl_url: None,
            ca_issuers_url: None,
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

impl CaCertificate {
    /// Returns NotAfter for a leaf requested at `now`: min(now + requested
    /// TTL, now + the policy's maximum TTL, this issuer's NotAfter), and a
    /// warning for each limit that changed the request.
    pub fn clamp_expiry(
        &self,
        now: OffsetDateTime,
        leaf: &ValidatedLeaf,
        policy: &IssuerPolicy,
    ) -> Result<(OffsetDateTime, Vec<String>), CaError> {
        let requested = expiry_after(now, leaf.ttl, &leaf.ttl_text)?;
        let mut not_after = requested;
        let mut warnings = Vec::new();
        if let Some((max_ttl, max_text)) = &policy.max_ttl {
            let max = expiry_after(now, *max_ttl, max_text)?;
            if max < not_after {
                warnings.push(format!(
                    "the requested TTL {} was capped at the issuer's max_ttl {max_text}",
                    leaf.ttl_text
                ));
                not_after = max;
            }
        }
        if self.not_after() < not_after {
            warnings.push(format!(
                "the requested TTL {} was capped at the issuer's expiry {}",
                leaf.ttl_text,
                format_rfc3339(self.not_after())
            ));
            not_after = self.not_after();
        }
        Ok((not_after, warnings))
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
    /// issuer's SKI, critical key usage and the extended key usage of the
    /// validated request (the profile's unless the request narrowed them).
    pub fn issue_leaf(
        &self,
        issuer_key: &[u8],
        leaf: &ValidatedLeaf,
        key: &GeneratedKey,
        now: OffsetDateTime,
    ) -> Result<IssuedLeaf, CaError> {
        self.issue_leaf_with_policy(issuer_key, leaf, key, now, &IssuerPolicy::default())
    }

    /// Signs a leaf like [`CaCertificate::issue_leaf`] after checking its
    /// names against `policy`. NotAfter is the one expiry clamp of the
    /// service: the earliest of `now` plus the requested TTL, `now` plus the
    /// policy's maximum TTL and the issuer's NotAfter, with a warning for
    /// each limit that shortened the request.
    pub fn issue_leaf_with_policy(
        &self,
        issuer_key: &[u8],
        leaf: &ValidatedLeaf,
        key: &GeneratedKey,
        now: OffsetDateTime,
        policy: &IssuerPolicy,
    ) -> Result<IssuedLeaf, CaError> {
        self.sign_leaf(issuer_key, leaf, key, now, policy)
    }

    /// Signs a certificate for the key of a validated CSR, with the same
    /// checks and clamp as [`CaCertificate::issue_leaf_with_policy`].
    pub fn sign_csr_with_policy(
        &self,
        issuer_key: &[u8],
        csr: &ValidatedCsr,
        now: OffsetDateTime,
        policy: &IssuerPolicy,
    ) -> Result<IssuedLeaf, CaError> {
        self.sign_leaf(issuer_key, &csr.leaf, &csr.public_key, now, policy)
    }

    fn sign_leaf(
        &self,
        issuer_key: &[u8],
        leaf: &ValidatedLeaf,
        key: &impl PublicKeyData,
        now: OffsetDateTime,
        policy: &IssuerPolicy,
    ) -> Result<IssuedLeaf, CaError> {
        let now = truncate_to_seconds(now);
        self.check_valid_at(now)?;
        policy.check_names(&leaf.common_name, &leaf.subject_alt_names)?;
        let (not_after, warnings) = self.clamp_expiry(now, leaf, policy)?;

        let params = leaf_params(leaf, key.der_bytes(), now - BACKDATE, not_after)?;
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

fn ia5(text: &str) -> Result<rcgen::string::Ia5String, CaError> {
    text.try_into().map_err(|_| CaError::Signing {
        reason: format!("{text:?} is not an IA5String"),
    })
}

fn leaf_params(
    leaf: &ValidatedLeaf,
    public_key: &[u8],
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
    for address in &leaf.subject_alt_names.email_addresses {
        params
            .subject_alt_names
            .push(SanType::Rfc822Name(ia5(address)?));
    }
    for uri in &leaf.subject_alt_names.uris {
        params.subject_alt_names.push(SanType::URI(ia5(uri)?));
    }

    // ExplicitNoCa writes basicConstraints CA:FALSE and the SKI, which plain
    // NoCa would leave out.
    params.is_ca = IsCa::ExplicitNoCa;
    // keyEncipherment is left out unless requested, for RSA keys too: it
    // serves only the TLS 1.2 RSA key exchange, which TLS 1.3 and rustls
    // dropped, and the CA/Browser Forum baseline advises against setting it
    // together with digitalSignature.
    params.key_usages = leaf
        .key_usages
        .iter()
        .map(|usage| match usage {
            LeafKeyUsage::DigitalSignature => KeyUsagePurpose::DigitalSignature,
            LeafKeyUsage::KeyEncipherment => KeyUsagePurpose::KeyEncipherment,
        })
        .collect();
    params.extended_key_usages = leaf
        .extended_key_usages
        .iter()
        .map(|usage| match usage {
            LeafExtendedKeyUsage::ServerAuth => ExtendedKeyUsagePurpose::ServerAuth,
            LeafExtendedKeyUsage::ClientAuth => ExtendedKeyUsagePurpose::ClientAuth,
        })
        .collect();
    if let Some(url) = &leaf.crl_url {
        params.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
            uris: vec![url.clone()],
        }];
    }
    if let Some(url) = &leaf.ca_issuers_url {
        params.custom_extensions.push(ca_issuers_extension(url)?);
    }
    params.use_authority_key_identifier_extension = true;
    params.key_identifier_method = KeyIdMethod::PreSpecified(key_identifier(public_key));
    Ok(params)
}
