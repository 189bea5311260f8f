//! Root and issuer (intermediate) CA certificates.

use aws_lc_rs::digest::{SHA256, digest};
use metacrypt_protocol::{CaMountConfig, KeyAlgorithm};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, IsCa, Issuer,
    KeyIdMethod, KeyUsagePurpose, SerialNumber,
};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::der_parser::asn1_rs::Tag;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519,
};
use x509_parser::x509::X509Name;

use crate::aia::ca_issuers_extension;
use crate::constraints::IssuerPolicy;
use crate::error::CaError;
use crate::fields::{CertificateFields, format_rfc3339, parse_certificate};
use crate::key::{BorrowedSigner, GeneratedKey, public_key_of};
use crate::names::{
    MAX_NAME_ATTRIBUTE_LEN, validate_common_name, validate_issuer_name, validate_organization,
};
use crate::pem;
use crate::serial::random_serial;
use crate::ttl::parse_ttl;

/// Key algorithm of a root when the mount configuration gives none.
pub const DEFAULT_ROOT_KEY_ALGORITHM: KeyAlgorithm = KeyAlgorithm::EcdsaP384;
/// Validity of a root when the mount configuration gives none: 10 years.
pub const DEFAULT_ROOT_TTL: &str = "10y";
/// Key algorithm of an issuer when the request gives none.
pub const DEFAULT_ISSUER_KEY_ALGORITHM: KeyAlgorithm = KeyAlgorithm::EcdsaP256;
/// Validity of an issuer when the request gives none: 5 years.
pub const DEFAULT_ISSUER_TTL: &str = "5y";

/// How far NotBefore is set before the current time, so that a relying
/// party whose clock is a little behind accepts a new certificate.
pub const BACKDATE: Duration = Duration::seconds(30);

/// Path length of a root. Issuers have path length 0, so a root needs only 1.
const ROOT_PATH_LEN: u8 = 1;

/// A root or issuer certificate, parsed once, with everything needed to sign
/// under it except the private key.
#[derive(Debug, Clone)]
pub struct CaCertificate {
    der: Vec<u8>,
    pem: String,
    key_algorithm: KeyAlgorithm,
    /// Content of the subjectPublicKey BIT STRING.
    public_key: Vec<u8>,
    subject_key_id: Vec<u8>,
    fields: CertificateFields,
    common_name: String,
    organization: Option<String>,
    /// The issuer side of rcgen's signing: subject name, key identifier
    /// (used as the AKI of what this CA signs) and key usages.
    issuer_params: CertificateParams,
}

/// A new CA certificate with its freshly generated key. There is no `Debug`
/// because the key is secret.
pub struct NewCa {
    pub certificate: CaCertificate,
    pub key: GeneratedKey,
}

/// Options of a new issuer.
#[derive(Debug, Clone, Default)]
pub struct IssuerOptions<'a> {
    /// `^[a-z0-9][a-z0-9_-]{0,63}$`.
    pub name: &'a str,
    /// The subject common name, or `<root CN> Issuer <name>` when `None`.
    pub common_name: Option<&'a str>,
    /// [`DEFAULT_ISSUER_KEY_ALGORITHM`] when `None`.
    pub key_algorithm: Option<KeyAlgorithm>,
    /// A duration string, or [`DEFAULT_ISSUER_TTL`] when `None`.
    pub ttl: Option<&'a str>,
    /// Constraints written into the certificate as a NameConstraints
    /// extension; none when `None`.
    pub policy: Option<&'a IssuerPolicy>,
    /// URL of the root certificate in DER for an Authority Information
    /// Access extension with id-ad-caIssuers; none when `None`.
    pub ca_issuers_url: Option<&'a str>,
}

/// The key identifier of a raw public key: the leftmost 160 bits of its
/// SHA-256 digest (RFC 7093, section 2, method 1). Used for both the SKI of a
/// certificate and the AKI of the certificates it signs.
pub fn key_identifier(public_key: &[u8]) -> Vec<u8> {
    digest(&SHA256, public_key).as_ref()[..20].to_vec()
}

/// Whole seconds, so that times compare equal to what a certificate holds.
pub(crate) fn truncate_to_seconds(time: OffsetDateTime) -> OffsetDateTime {
    time.replace_nanosecond(0).unwrap_or(time)
}

/// Returns `now + ttl`, or an error naming the TTL when the sum is beyond
/// what a certificate can hold (year 9999).
pub(crate) fn expiry_after(
    now: OffsetDateTime,
    ttl: Duration,
    ttl_text: &str,
) -> Result<OffsetDateTime, CaError> {
    now.checked_add(ttl).ok_or_else(|| CaError::InvalidTtl {
        input: ttl_text.to_owned(),
        reason: "the expiry would be after the year 9999".to_owned(),
    })
}

fn subject_name(organization: Option<&str>, common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    if let Some(organization) = organization {
        name.push(DnType::OrganizationName, organization);
    }
    name.push(DnType::CommonName, common_name);
    name
}

fn ca_params(
    name: DistinguishedName,
    path_len: u8,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    public_key: &[u8],
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.use_authority_key_identifier_extension = true;
    params.key_identifier_method = KeyIdMethod::PreSpecified(key_identifier(public_key));
    Ok(params)
}

/// Returns the common name of mount `mount_name`'s root when the mount
/// configuration gives none: `Metacrypt Root CA (<mount>)`, or a shorter
/// form when that exceeds the 64-character limit of a common name. Every
/// form contains the whole mount name, so the roots of two mounts differ.
pub fn default_root_common_name(mount_name: &str) -> String {
    [
        format!("Metacrypt Root CA ({mount_name})"),
        format!("Root CA ({mount_name})"),
    ]
    .into_iter()
    .find(|candidate| candidate.chars().count() <= MAX_NAME_ATTRIBUTE_LEN)
    .unwrap_or_else(|| mount_name.to_owned())
}

/// Creates the self-signed root CA of mount `mount_name` from its
/// configuration.
///
/// The root has basicConstraints CA:TRUE with path length 1 and key usage
/// keyCertSign and cRLSign (both critical), an SKI and an AKI equal to it,
/// NotBefore 30 s before `now` and NotAfter `now` plus the TTL (10 years by
/// default). The defaults are [`default_root_common_name`] and ECDSA P-384.
pub fn create_root(
    mount_name: &str,
    config: &CaMountConfig,
    now: OffsetDateTime,
) -> Result<NewCa, CaError> {
    let now = truncate_to_seconds(now);
    let common_name = config
        .common_name
        .clone()
        .unwrap_or_else(|| default_root_common_name(mount_name));
    let common_name = common_name.as_str();
    validate_common_name(common_name)?;
    let organization = config.organization.as_deref();
    if let Some(organization) = organization {
        validate_organization(organization)?;
    }
    let ttl_text = config.ttl.as_deref().unwrap_or(DEFAULT_ROOT_TTL);
    let ttl = parse_ttl(ttl_text)?;
    let not_after = expiry_after(now, ttl, ttl_text)?;
    let algorithm = config.key_algorithm.unwrap_or(DEFAULT_ROOT_KEY_ALGORITHM);

    let key = GeneratedKey::generate(algorithm)?;
    let params = ca_params(
        subject_name(organization, common_name),
        ROOT_PATH_LEN,
        now - BACKDATE,
        not_after,
        key.public_key(),
    )?;
    let signer = BorrowedSigner::new(algorithm, key.pkcs8_der(), key.public_key());
    let certificate = params.self_signed(&signer)?;
    Ok(NewCa {
        certificate: CaCertificate::from_der(certificate.der())?,
        key,
    })
}

impl CaCertificate {
    /// Parses a CA certificate made by this crate. It must carry
    /// basicConstraints CA:TRUE, an SKI, key usage keyCertSign, a supported
    /// key (P-256, P-384, Ed25519 or RSA with 2048, 3072 or 4096 bits) and a subject with a common
    /// name.
    pub fn from_der(der: &[u8]) -> Result<Self, CaError> {
        let invalid = |reason: &str| CaError::InvalidCertificate {
            reason: reason.to_owned(),
        };
        let cert = parse_certificate(der)?;
        let fields = CertificateFields::from_parsed(&cert);
        let subject = &fields.subject;

        let is_ca = cert
            .basic_constraints()
            .map_err(|error| invalid(&format!("{subject}: bad basicConstraints: {error}")))?
            .is_some_and(|constraints| constraints.value.ca);
        if !is_ca {
            return Err(invalid(&format!("{subject} is not a CA certificate")));
        }
        let can_sign = cert
            .key_usage()
            .map_err(|error| invalid(&format!("{subject}: bad keyUsage: {error}")))?
            .is_some_and(|usage| usage.value.key_cert_sign());
        if !can_sign {
            return Err(invalid(&format!(
                "{subject} lacks the keyCertSign key usage"
            )));
        }
        let subject_key_id = cert
            .iter_extensions()
            .find_map(|extension| match extension.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) => {
                    Some(id.0.to_vec())
                }
                _ => None,
            })
            .ok_or_else(|| invalid(&format!("{subject} has no subjectKeyIdentifier")))?;

        let key_algorithm = key_algorithm_of(&cert)?;
        let public_key = cert.public_key().subject_public_key.data.to_vec();
        let common_name = first_attribute(cert.subject().iter_common_name())
            .ok_or_else(|| invalid(&format!("{subject} has no UTF-8 common name")))?;
        let organization = first_attribute(cert.subject().iter_organization());

        let mut issuer_params = CertificateParams::default();
        issuer_params.distinguished_name = distinguished_name_of(cert.subject())?;
        issuer_params.key_identifier_method = KeyIdMethod::PreSpecified(subject_key_id.clone());
        issuer_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];

        Ok(Self {
            der: der.to_vec(),
            pem: pem::encode("CERTIFICATE", der),
            key_algorithm,
            public_key,
            subject_key_id,
            fields,
            common_name,
            organization,
            issuer_params,
        })
    }

    pub fn der(&self) -> &[u8] {
        &self.der
    }

    pub fn pem(&self) -> &str {
        &self.pem
    }

    pub fn key_algorithm(&self) -> KeyAlgorithm {
        self.key_algorithm
    }

    /// Returns the raw public key (content of the subjectPublicKey BIT STRING).
    pub fn public_key(&self) -> &[u8] {
        &self.public_key
    }

    pub fn subject_key_id(&self) -> &[u8] {
        &self.subject_key_id
    }

    pub fn fields(&self) -> &CertificateFields {
        &self.fields
    }

    pub fn serial_hex(&self) -> &str {
        &self.fields.serial_hex
    }

    pub fn subject(&self) -> &str {
        &self.fields.subject
    }

    pub fn common_name(&self) -> &str {
        &self.common_name
    }

    pub fn organization(&self) -> Option<&str> {
        self.organization.as_deref()
    }

    pub fn not_before(&self) -> OffsetDateTime {
        self.fields.not_before
    }

    pub fn not_after(&self) -> OffsetDateTime {
        self.fields.not_after
    }

    /// Checks that `pkcs8` is the private key of this certificate. keyd calls
    /// it once when it loads a key.
    pub fn check_private_key(&self, pkcs8: &[u8]) -> Result<(), CaError> {
        if public_key_of(self.key_algorithm, pkcs8)? == self.public_key {
            Ok(())
        } else {
            Err(CaError::KeyMismatch {
                subject: self.fields.subject.clone(),
            })
        }
    }

    /// Rejects signing at `now` when this CA is expired or not yet valid.
    pub fn check_valid_at(&self, now: OffsetDateTime) -> Result<(), CaError> {
        if now < self.fields.not_before {
            return Err(CaError::IssuerNotYetValid {
                subject: self.fields.subject.clone(),
                not_before: format_rfc3339(self.fields.not_before),
            });
        }
        if now >= self.fields.not_after {
            return Err(CaError::IssuerExpired {
                subject: self.fields.subject.clone(),
                not_after: format_rfc3339(self.fields.not_after),
            });
        }
        Ok(())
    }

    /// Builds the rcgen issuer for one signing operation with `pkcs8`, the
    /// private key of this certificate.
    pub(crate) fn issuer<'k>(&'k self, pkcs8: &'k [u8]) -> Issuer<'k, BorrowedSigner<'k>> {
        Issuer::from_params(
            &self.issuer_params,
            BorrowedSigner::new(self.key_algorithm, pkcs8, &self.public_key),
        )
    }

    /// Creates an issuer (intermediate CA) signed by this root, whose private
    /// key is `root_key` (PKCS#8 DER).
    ///
    /// The issuer has basicConstraints CA:TRUE with path length 0 and key
    /// usage keyCertSign and cRLSign (both critical), an SKI, and an AKI equal
    /// to this root's SKI. NotBefore is 30 s before `now`, and NotAfter is `now`
    /// plus the TTL (5 years by default), capped at the root's NotAfter. The
    /// subject keeps the root's organization. With a policy that restricts
    /// names, the certificate carries a critical NameConstraints extension
    /// (see [`IssuerPolicy`]). With `ca_issuers_url`, it carries a
    /// non-critical Authority Information Access extension with that
    /// caIssuers URI.
    pub fn create_issuer(
        &self,
        root_key: &[u8],
        options: &IssuerOptions<'_>,
        now: OffsetDateTime,
    ) -> Result<NewCa, CaError> {
        let now = truncate_to_seconds(now);
        validate_issuer_name(options.name)?;
        let common_name = match options.common_name {
            Some(common_name) => common_name.to_owned(),
            None => self.default_issuer_common_name(options.name),
        };
        validate_common_name(&common_name)?;
        let ttl_text = options.ttl.unwrap_or(DEFAULT_ISSUER_TTL);
        let ttl = parse_ttl(ttl_text)?;
        self.check_valid_at(now)?;
        let not_after = expiry_after(now, ttl, ttl_text)?.min(self.fields.not_after);
        let algorithm = options
            .key_algorithm
            .unwrap_or(DEFAULT_ISSUER_KEY_ALGORITHM);

        let key = GeneratedKey::generate(algorithm)?;
        let mut params = ca_params(
            subject_name(self.organization.as_deref(), &common_name),
            0,
            now - BACKDATE,
            not_after,
            key.public_key(),
        )?;
        params.name_constraints = options.policy.and_then(IssuerPolicy::name_constraints);
        if let Some(url) = options.ca_issuers_url {
            params.custom_extensions.push(ca_issuers_extension(url)?);
        }
        let certificate = params.signed_by(&key, &self.issuer(root_key))?;
        Ok(NewCa {
            certificate: CaCertificate::from_der(certificate.der())?,
            key,
        })
    }

    /// `<root CN> Issuer <name>`, or shorter forms when that exceeds the
    /// 64-character limit of a common name.
    fn default_issuer_common_name(&self, name: &str) -> String {
        [
            format!("{} Issuer {name}", self.common_name),
            format!("Issuer {name}"),
        ]
        .into_iter()
        .find(|candidate| candidate.chars().count() <= MAX_NAME_ATTRIBUTE_LEN)
        .unwrap_or_else(|| name.to_owned())
    }
}

fn first_attribute<'a>(
    mut attributes: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
) -> Option<String> {
    attributes
        .next()
        .and_then(|attribute| attribute.as_str().ok())
        .map(str::to_owned)
}

fn key_algorithm_of(cert: &X509Certificate<'_>) -> Result<KeyAlgorithm, CaError> {
    let spki = cert.public_key();
    let oid = &spki.algorithm.algorithm;
    let unsupported = || CaError::InvalidCertificate {
        reason: format!("{}: unsupported public key algorithm {oid}", cert.subject()),
    };
    if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|parameters| parameters.as_oid().ok())
            .ok_or_else(unsupported)?;
        if curve == OID_EC_P256 {
            Ok(KeyAlgorithm::EcdsaP256)
        } else if curve == OID_NIST_EC_P384 {
            Ok(KeyAlgorithm::EcdsaP384)
        } else {
            Err(unsupported())
        }
    } else if *oid == OID_SIG_ED25519 {
        Ok(KeyAlgorithm::Ed25519)
    } else if *oid == OID_PKCS1_RSAENCRYPTION {
        match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => match rsa.key_size() {
                2048 => Ok(KeyAlgorithm::Rsa2048),
                3072 => Ok(KeyAlgorithm::Rsa3072),
                4096 => Ok(KeyAlgorithm::Rsa4096),
                _ => Err(unsupported()),
            },
            _ => Err(unsupported()),
        }
    } else {
        Err(unsupported())
    }
}

/// Rebuilds an rcgen name from a parsed one, keeping attribute order and
/// string types, so that the issuer name of what this CA signs is the same
/// DER as its subject.
fn distinguished_name_of(name: &X509Name<'_>) -> Result<DistinguishedName, CaError> {
    let invalid = |reason: String| CaError::InvalidCertificate { reason };
    let mut result = DistinguishedName::new();
    for rdn in name.iter() {
        let mut attributes = rdn.iter();
        let (Some(attribute), None) = (attributes.next(), attributes.next()) else {
            return Err(invalid(format!(
                "{name}: only one attribute per relative distinguished name is supported"
            )));
        };
        let oid: Vec<u64> = attribute
            .attr_type()
            .iter()
            .ok_or_else(|| invalid(format!("{name}: attribute type out of range")))?
            .collect();
        let text = attribute.as_str().map_err(|_| {
            invalid(format!(
                "{name}: attribute {} is not a string",
                attribute.attr_type()
            ))
        })?;
        let value = match attribute.attr_value().header.tag() {
            Tag::Utf8String => DnValue::Utf8String(text.to_owned()),
            Tag::PrintableString => DnValue::PrintableString(
                text.try_into()
                    .map_err(|_| invalid(format!("{name}: invalid PrintableString")))?,
            ),
            other => {
                return Err(invalid(format!(
                    "{name}: unsupported string type {other} in attribute {}",
                    attribute.attr_type()
                )));
            }
        };
        result.push(DnType::from_oid(&oid), value);
    }
    Ok(result)
}
