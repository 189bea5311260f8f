//! Certificate authority logic of Metacrypt: key generation, the root and
//! issuer CA certificates, leaf profiles, name rules, TTLs and serials.
//!
//! The crate is pure: it stores nothing and takes the current time as an
//! argument. Private keys go in and out as PKCS#8 DER. Signing borrows the
//! caller's key bytes ([`BorrowedSigner`]) and keeps no parsed copy beyond
//! one signature, so keyd can hold CA keys in locked memory only.
//!
//! A typical issue:
//! 1. [`LeafRequest::validate`] checks names and TTL against the profile.
//! 2. [`GeneratedKey::generate`] creates the leaf key.
//! 3. [`CaCertificate::issue_leaf`] signs it under an issuer.
//!
//! Certificates follow RFC 5280 and the CA/Browser Forum baseline: random
//! positive 16-octet serials, NotBefore backdated 30 s, NotAfter capped at
//! the issuer's, SKI and AKI on every certificate, basicConstraints and key
//! usage critical. With a caIssuers URL, a certificate carries an Authority
//! Information Access extension that points to its signer's certificate.
#![forbid(unsafe_code)]

mod aia;
mod authority;
mod constraints;
mod crl;
mod csr;
mod error;
mod fields;
mod key;
mod leaf;
mod names;
mod pem;
mod serial;
mod ttl;

pub use authority::{
    BACKDATE, CaCertificate, DEFAULT_ISSUER_KEY_ALGORITHM, DEFAULT_ISSUER_TTL,
    DEFAULT_ROOT_KEY_ALGORITHM, DEFAULT_ROOT_TTL, IssuerOptions, NewCa, create_root,
    default_root_common_name, key_identifier,
};
pub use constraints::{IpRange, IssuerPolicy, MAX_CONSTRAINT_ENTRIES};
pub use crl::{
    CRL_RENEW_BEFORE, CRL_VALIDITY, REVOCATION_REASONS, RevokedEntry, SignedCrl,
    parse_revocation_reason,
};
pub use csr::{CsrPublicKey, MAX_CSR_PEM_LEN, ValidatedCsr, validate_csr};
pub use error::CaError;
pub use fields::{CertificateFields, format_rfc3339};
pub use key::{BorrowedSigner, GeneratedKey, private_key_type, public_key_of};
pub use leaf::{
    DEFAULT_LEAF_KEY_ALGORITHM, DEFAULT_LEAF_TTL, IssuedLeaf, LeafExtendedKeyUsage, LeafKeyUsage,
    LeafRequest, ValidatedLeaf, profile_extended_key_usages,
};
pub use names::{
    MAX_SUBJECT_ALT_NAMES, SubjectAltNames, normalize_base_url, normalize_dns_name,
    normalize_email_address, normalize_uri, parse_ip_address, validate_common_name,
    validate_issuer_name, validate_organization,
};
pub use pem::encode as pem_encode;
pub use serial::{SERIAL_LEN, random_serial, serial_hex};
pub use ttl::parse_ttl;
