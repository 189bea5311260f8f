//! Certificate signing requests (PKCS#10): the caller keeps its key.
//!
//! A CSR is parsed with x509-parser and never handed to rcgen, so nothing in
//! it reaches the certificate except its public key and names, and those
//! only after the checks of [`validate_csr`].

use metacrypt_protocol::{KeyAlgorithm, Profile};
use rcgen::{PublicKeyData, SignatureAlgorithm};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA,
    OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use crate::error::CaError;
use crate::key::signature_algorithm;
use crate::leaf::{LeafRequest, ValidatedLeaf};

/// Maximum size of a CSR in PEM form, a limit of this service that is far
/// above what an RSA-4096 CSR with 100 SANs needs.
pub const MAX_CSR_PEM_LEN: usize = 64 * 1024;

/// The public key of a CSR, ready to be certified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsrPublicKey {
    pub algorithm: KeyAlgorithm,
    /// Content of the subjectPublicKey BIT STRING.
    pub raw: Vec<u8>,
}

impl PublicKeyData for CsrPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        signature_algorithm(self.algorithm)
    }
}

/// A CSR whose signature, key and requested extensions passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedCsr {
    pub leaf: ValidatedLeaf,
    pub public_key: CsrPublicKey,
}

fn rejected(reason: impl Into<String>) -> CaError {
    CaError::InvalidCsr {
        reason: reason.into(),
    }
}

/// Parses and checks a PEM CSR for a leaf of `profile`.
///
/// In order: the PEM and DER must parse with nothing after them, the key
/// must be P-256, P-384, Ed25519 or RSA of 2048, 3072 or 4096 bits, the
/// signature must verify with the CSR's own key (proof of possession), the
/// signature algorithm must match the key (P-256 with SHA-256, P-384 with
/// SHA-384, Ed25519, RSA with SHA-256, SHA-384 or SHA-512). A CSR that
/// requests CA:TRUE, keyCertSign or cRLSign, name constraints, or extended
/// key usages beyond the profile is rejected. Other requested extensions are ignored: the
/// certificate's extensions come only from the profile and the validated
/// names. The CSR's SANs (DNS, IP, email, URI) and common name are checked
/// like those of an issue request. Without a common name, the first DNS
/// name or IP address is used.
pub fn validate_csr(
    pem: &str,
    profile: Profile,
    ttl: Option<&str>,
) -> Result<ValidatedCsr, CaError> {
    if pem.len() > MAX_CSR_PEM_LEN {
        return Err(rejected(format!(
            "the CSR is {} bytes long, the maximum is {MAX_CSR_PEM_LEN}",
            pem.len()
        )));
    }
    let (rest, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|_| rejected("expected a PEM block BEGIN CERTIFICATE REQUEST"))?;
    if block.label != "CERTIFICATE REQUEST" && block.label != "NEW CERTIFICATE REQUEST" {
        return Err(rejected(format!(
            "the PEM block is {:?}, expected CERTIFICATE REQUEST",
            block.label
        )));
    }
    if !String::from_utf8_lossy(rest).trim().is_empty() {
        return Err(rejected("there is data after the PEM block"));
    }
    let (der_rest, csr) = X509CertificationRequest::from_der(&block.contents)
        .map_err(|error| rejected(format!("the DER does not parse: {error}")))?;
    if !der_rest.is_empty() {
        return Err(rejected("there is data after the DER structure"));
    }

    // The key is parsed first only so that a short RSA key gets its own
    // message (aws-lc does not verify RSA signatures below 2048 bits).
    // Nothing is consumed before the signature verifies.
    let public_key = public_key_of(&csr)?;
    csr.verify_signature()
        .map_err(|_| rejected("the signature does not verify with the CSR's public key"))?;
    check_signature_algorithm(&csr, public_key.algorithm)?;

    let mut names = CsrNames::default();
    for extension in csr.requested_extensions().into_iter().flatten() {
        names.read_extension(extension, profile)?;
    }
    let common_name = csr
        .certification_request_info
        .subject
        .iter_common_name()
        .next()
        .map(|attribute| {
            attribute
                .as_str()
                .map(str::to_owned)
                .map_err(|_| rejected("the common name is not a string"))
        })
        .transpose()?
        .or_else(|| names.dns_names.first().cloned())
        .or_else(|| names.ip_addresses.first().cloned())
        .ok_or_else(|| rejected("the CSR has no common name, DNS name or IP address"))?;

    let request = LeafRequest {
        profile,
        common_name: &common_name,
        organization: None,
        dns_names: &names.dns_names,
        ip_addresses: &names.ip_addresses,
        email_addresses: &names.email_addresses,
        uris: &names.uris,
        ttl,
        key_algorithm: Some(public_key.algorithm),
        key_usages: None,
        extended_key_usages: None,
    };
    Ok(ValidatedCsr {
        leaf: request.validate()?,
        public_key,
    })
}

fn public_key_of(csr: &X509CertificationRequest<'_>) -> Result<CsrPublicKey, CaError> {
    let spki = &csr.certification_request_info.subject_pki;
    let oid = &spki.algorithm.algorithm;
    let algorithm = if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|parameters| parameters.as_oid().ok())
            .ok_or_else(|| rejected("the EC key names no curve"))?;
        if curve == OID_EC_P256 {
            KeyAlgorithm::EcdsaP256
        } else if curve == OID_NIST_EC_P384 {
            KeyAlgorithm::EcdsaP384
        } else {
            return Err(rejected(format!(
                "the EC curve {curve} is not supported; use P-256 or P-384"
            )));
        }
    } else if *oid == OID_SIG_ED25519 {
        KeyAlgorithm::Ed25519
    } else if *oid == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => rsa.key_size(),
            _ => return Err(rejected("the RSA public key does not parse")),
        };
        match bits {
            2048 => KeyAlgorithm::Rsa2048,
            3072 => KeyAlgorithm::Rsa3072,
            4096 => KeyAlgorithm::Rsa4096,
            bits if bits < 2048 => {
                return Err(rejected(format!(
                    "the RSA key has {bits} bits, the minimum is 2048"
                )));
            }
            bits => {
                return Err(rejected(format!(
                    "the RSA key has {bits} bits; supported sizes are 2048, 3072 and 4096"
                )));
            }
        }
    } else {
        return Err(rejected(format!(
            "the public key algorithm {oid} is not supported"
        )));
    };
    Ok(CsrPublicKey {
        algorithm,
        raw: spki.subject_public_key.data.to_vec(),
    })
}

/// Rejects a signature algorithm that does not belong to the key, such as a
/// P-384 key signed with ecdsa-with-SHA256: a certificate built from the
/// signature algorithm would name the wrong curve.
fn check_signature_algorithm(
    csr: &X509CertificationRequest<'_>,
    algorithm: KeyAlgorithm,
) -> Result<(), CaError> {
    let oid = &csr.signature_algorithm.algorithm;
    let matches = match algorithm {
        KeyAlgorithm::EcdsaP256 => *oid == OID_SIG_ECDSA_WITH_SHA256,
        KeyAlgorithm::EcdsaP384 => *oid == OID_SIG_ECDSA_WITH_SHA384,
        KeyAlgorithm::Ed25519 => *oid == OID_SIG_ED25519,
        KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => {
            *oid == OID_PKCS1_SHA256WITHRSA
                || *oid == OID_PKCS1_SHA384WITHRSA
                || *oid == OID_PKCS1_SHA512WITHRSA
        }
    };
    if matches {
        Ok(())
    } else {
        Err(rejected(format!(
            "the signature algorithm {oid} does not match the {algorithm} key; sign P-256 \
             with SHA-256, P-384 with SHA-384, RSA with SHA-256 or stronger"
        )))
    }
}

/// The names a CSR requests, as text for the usual name checks.
#[derive(Default)]
struct CsrNames {
    dns_names: Vec<String>,
    ip_addresses: Vec<String>,
    email_addresses: Vec<String>,
    uris: Vec<String>,
}

impl CsrNames {
    fn read_extension(
        &mut self,
        extension: &ParsedExtension<'_>,
        profile: Profile,
    ) -> Result<(), CaError> {
        match extension {
            ParsedExtension::BasicConstraints(constraints) if constraints.ca => {
                Err(rejected("the CSR requests CA:TRUE"))
            }
            ParsedExtension::KeyUsage(usage) if usage.key_cert_sign() || usage.crl_sign() => Err(
                rejected("the CSR requests the keyCertSign or cRLSign key usage"),
            ),
            ParsedExtension::NameConstraints(_) => {
                Err(rejected("the CSR requests name constraints"))
            }
            ParsedExtension::ExtendedKeyUsage(usage) => {
                let (server, client) = match profile {
                    Profile::Server => (true, false),
                    Profile::Client => (false, true),
                    Profile::Peer => (true, true),
                };
                let beyond = usage.any
                    || usage.code_signing
                    || usage.email_protection
                    || usage.time_stamping
                    || usage.ocsp_signing
                    || !usage.other.is_empty()
                    || (usage.server_auth && !server)
                    || (usage.client_auth && !client);
                if beyond {
                    Err(rejected(format!(
                        "the CSR requests extended key usages beyond the {profile} profile"
                    )))
                } else {
                    Ok(())
                }
            }
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    self.add(name)?;
                }
                Ok(())
            }
            ParsedExtension::UnsupportedExtension { .. } | ParsedExtension::ParseError { .. } => {
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn add(&mut self, name: &GeneralName<'_>) -> Result<(), CaError> {
        match name {
            GeneralName::DNSName(text) => self.dns_names.push((*text).to_owned()),
            GeneralName::RFC822Name(text) => self.email_addresses.push((*text).to_owned()),
            GeneralName::URI(text) => self.uris.push((*text).to_owned()),
            GeneralName::IPAddress(bytes) => {
                let address: std::net::IpAddr = match bytes.len() {
                    4 => <[u8; 4]>::try_from(*bytes)
                        .map_err(|_| rejected("invalid IPv4 SAN"))?
                        .into(),
                    16 => <[u8; 16]>::try_from(*bytes)
                        .map_err(|_| rejected("invalid IPv6 SAN"))?
                        .into(),
                    other => {
                        return Err(rejected(format!(
                            "an IP address SAN has {other} octets, expected 4 or 16"
                        )));
                    }
                };
                self.ip_addresses.push(address.to_string());
            }
            other => {
                return Err(rejected(format!(
                    "the SAN type of {other} is not supported; use DNS, IP, email or URI"
                )));
            }
        }
        Ok(())
    }
}
