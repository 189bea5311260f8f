//! The CA engine (type `ca`): a root CA per mount, issuers (intermediate
//! CAs) signed by it, and leaf certificates signed by the issuers.
//!
//! Barrier layout in the mount's scope (`mount:NAME`):
//!
//! | path                 | contents                                       |
//! |----------------------|------------------------------------------------|
//! | `root/cert`          | root certificate, DER                          |
//! | `root/key`           | root private key, PKCS#8 DER                   |
//! | `issuers/NAME/cert`  | issuer certificate, DER                        |
//! | `issuers/NAME/key`   | issuer private key, PKCS#8 DER                 |
//! | `issuers/NAME/meta`  | JSON `IssuerMeta`: creation time and caller    |
//! | `certs/SERIAL`       | JSON `CertRecord` of a leaf, never its key     |
//!
//! `SERIAL` is lowercase hex without colons. The serial index
//! (`ca_cert_serials`, unique per mount, signer and serial) records every
//! certificate the mount's keys sign, in the same commit that stores it:
//!
//! | certificate | signer column                    |
//! |-------------|----------------------------------|
//! | root        | `@root` (the root signs itself)  |
//! | issuer      | `@root`                          |
//! | leaf        | the issuer's name                |
//!
//! `@root` is not a valid issuer name, so the two kinds of row cannot mix.
//! A serial is therefore never used twice by one signing key.
//!
//! Loading a mount checks that every issuer certificate was signed by the
//! mount's root (its authorityKeyIdentifier equals the root's
//! subjectKeyIdentifier and its signature verifies with the root's public
//! key), and fails the mount otherwise.
//!
//! While unsealed the engine keeps the root and issuer keys in locked memory
//! ([`SecretBytes`]) and the parsed public parts of their certificates.
//! Signing borrows a key for one signature, and the keys are zeroized when
//! the engine is dropped at seal or unmount. Issuers sit behind a read-write
//! lock, so issues run concurrently and creating an issuer blocks them only
//! for the moment of inserting it.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};

use metacrypt_ca::{
    BACKDATE, CRL_RENEW_BEFORE, CaCertificate, CsrPublicKey, GeneratedKey, IssuedLeaf,
    IssuerOptions, IssuerPolicy, LeafExtendedKeyUsage, LeafKeyUsage, LeafRequest, RevokedEntry,
    ValidatedCsr, ValidatedLeaf, create_root, format_rfc3339, normalize_base_url,
    parse_revocation_reason, private_key_type, validate_csr, validate_issuer_name,
};
use metacrypt_protocol::{
    CaRequest, CaResponse, CertFilter, CertRecord, CertState, ErrorBody, ErrorCode, IssueRequest,
    IssuedCertificate, IssuerConstraints, IssuerInfo, KeyAlgorithm, MountConfig, SecretString,
    SignCsrRequest, SignedCertificate,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::barrier::{
    BarrierError, CertIndexQuery, IndexedState, MountStore, WriteBatch, serial_sort_key,
};
use crate::engine::{Engine, EngineFactory, EngineRequest, EngineResponse, RequestContext};
use crate::secure::SecretBytes;

const ROOT_CERT_PATH: &str = "root/cert";
const ROOT_KEY_PATH: &str = "root/key";
const SETTINGS_PATH: &str = "settings";
const ISSUERS_PREFIX: &str = "issuers/";
const CERTS_PREFIX: &str = "certs/";
const REVOKED_PREFIX: &str = "revoked/";

/// Maximum signing attempts per issue. Each attempt draws a new serial, so a
/// second attempt happens only when two 127-bit random serials collide.
const MAX_SERIAL_ATTEMPTS: usize = 3;

/// The signer recorded in the serial index for the certificates that the
/// mount's root signs: the root itself and every issuer. It is not a valid
/// issuer name, so it cannot collide with one.
const ROOT_SIGNER: &str = "@root";

/// The `issued_by` of certificates requested without an MCIAS caller.
const ANONYMOUS_CALLER: &str = "-";

/// Maximum length of a serial accepted by `get-cert`: 40 hex digits, which
/// is 20 octets (RFC 5280).
const MAX_SERIAL_HEX_LEN: usize = 40;

/// Number of records `list-certs` returns when the request sets no limit.
const DEFAULT_LIST_LIMIT: u32 = 100;

/// Maximum `limit` of `list-certs`.
const MAX_LIST_LIMIT: u32 = 1000;

/// Maximum encoded size in bytes of the records of one `list-certs` page.
/// It leaves 1 MiB of the 4 MiB protocol frame for the response envelope.
const LIST_PAGE_BUDGET: usize = 3 * 1024 * 1024;

/// The entry under `issuers/NAME/` that marks a deleted issuer's name as
/// used for good.
const DELETED_ENTRY: &str = "deleted";

fn issuer_path(name: &str, entry: &str) -> String {
    format!("{ISSUERS_PREFIX}{name}/{entry}")
}

fn cert_path(serial_hex: &str) -> String {
    format!("{CERTS_PREFIX}{serial_hex}")
}

/// Path of the revocation of a leaf, kept per issuer so that signing a CRL
/// reads only that issuer's revocations.
/// Rejects a revoke or renew whose caller was authorized for another
/// issuer than the certificate's. frontd looks the issuer up before its
/// policy check, and this closes the gap if the records changed meanwhile.
fn check_expected_issuer(record: &CertRecord, expected: Option<&str>) -> Result<(), ErrorBody> {
    match expected {
        Some(expected) if expected != record.issuer => Err(ErrorBody::invalid_request(format!(
            "certificate {} was issued by {}, not by {expected}",
            record.serial_number, record.issuer
        ))),
        _ => Ok(()),
    }
}

fn revoked_path(issuer: &str, serial_hex: &str) -> String {
    format!("{REVOKED_PREFIX}{issuer}/{serial_hex}")
}

/// A revocation as the barrier stores it under `revoked/ISSUER/SERIAL`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Revocation {
    /// RFC 3339 UTC.
    revoked_at: String,
    /// RFC 5280 reason name.
    reason: String,
}

/// Metadata that the barrier stores next to an issuer's certificate and key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct IssuerMeta {
    name: String,
    key_algorithm: KeyAlgorithm,
    /// RFC 3339 UTC.
    created_at: String,
    /// The MCIAS username that created it, or `-`.
    created_by: String,
    /// Constraints on the leaves it signs, normalized. Issuers stored
    /// before constraints existed load with the defaults.
    #[serde(default)]
    constraints: IssuerConstraints,
}

/// Settings of a mount that the barrier stores under `settings`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct MountSettings {
    /// Normalized, without a trailing `/`.
    public_base_url: Option<String>,
}

/// A CA certificate with its private key in locked memory.
struct LoadedCa {
    certificate: CaCertificate,
    key: SecretBytes,
}

impl LoadedCa {
    /// Copies `pkcs8` into locked memory after checking that it is the key of
    /// `certificate`.
    fn new(certificate: CaCertificate, pkcs8: &[u8]) -> Result<Self, ErrorBody> {
        certificate.check_private_key(pkcs8)?;
        let key = SecretBytes::from_slice(pkcs8).map_err(|error| {
            ErrorBody::internal(format!(
                "failed to keep the key of {} in locked memory: {error}",
                certificate.subject()
            ))
        })?;
        Ok(Self { certificate, key })
    }
}

struct Issuer {
    name: String,
    ca: LoadedCa,
    policy: IssuerPolicy,
    info: IssuerInfo,
}

impl Issuer {
    fn new(name: &str, ca: LoadedCa, policy: IssuerPolicy) -> Self {
        let certificate = &ca.certificate;
        let info = IssuerInfo {
            name: name.to_owned(),
            key_algorithm: certificate.key_algorithm(),
            subject: certificate.subject().to_owned(),
            serial_number: certificate.serial_hex().to_owned(),
            not_before: certificate.fields().not_before_rfc3339(),
            not_after: certificate.fields().not_after_rfc3339(),
            certificate: certificate.pem().to_owned(),
            constraints: policy.to_constraints(),
        };
        Self {
            name: name.to_owned(),
            ca,
            policy,
            info,
        }
    }
}

/// Creates CA mounts and loads them after unseal.
pub struct CaEngineFactory;

impl EngineFactory for CaEngineFactory {
    fn engine_type(&self) -> &'static str {
        "ca"
    }

    /// Creates the mount's root CA and stores its certificate and key.
    fn initialize(
        &self,
        store: &MountStore,
        config: &MountConfig,
    ) -> Result<Box<dyn Engine>, ErrorBody> {
        let MountConfig::Ca(config) = config;
        let settings = MountSettings {
            public_base_url: config
                .public_base_url
                .as_deref()
                .map(normalize_base_url)
                .transpose()?,
        };
        let root = create_root(store.mount_name(), config, OffsetDateTime::now_utc())?;
        let mut batch = WriteBatch::new();
        batch.put(ROOT_CERT_PATH, root.certificate.der());
        batch.put(ROOT_KEY_PATH, root.key.pkcs8_der());
        batch.put(SETTINGS_PATH, &encode_json(&settings, SETTINGS_PATH)?);
        batch.insert_cert_serial(
            ROOT_SIGNER,
            root.certificate.serial_hex(),
            root.certificate.not_after().unix_timestamp(),
            None,
        );
        store.commit(batch)?;
        tracing::info!(
            mount = store.mount_name(),
            subject = root.certificate.subject(),
            key_algorithm = %root.certificate.key_algorithm(),
            not_after = %root.certificate.fields().not_after_rfc3339(),
            "created root CA"
        );
        let root = LoadedCa::new(root.certificate, root.key.pkcs8_der())?;
        Ok(Box::new(CaEngine::new(root, BTreeMap::new(), settings)))
    }

    /// Loads the root and every issuer. A missing or damaged entry, or an
    /// issuer that the root did not sign, fails the whole mount, because an
    /// issuer that silently went missing could be recreated under its name.
    fn load(&self, store: &MountStore) -> Result<Box<dyn Engine>, ErrorBody> {
        let root = load_ca(store, ROOT_CERT_PATH, ROOT_KEY_PATH)?;
        // Mounts created before settings existed have none.
        let settings = match store.get(SETTINGS_PATH)? {
            Some(json) => serde_json::from_slice(&json).map_err(|error| {
                ErrorBody::internal(format!(
                    "CA mount {}: entry {SETTINGS_PATH}: {error}",
                    store.mount_name()
                ))
            })?,
            None => MountSettings::default(),
        };
        let mut issuers = BTreeMap::new();
        for name in stored_issuer_names(store)? {
            let cert_path = issuer_path(&name, "cert");
            let ca = load_ca(store, &cert_path, &issuer_path(&name, "key"))?;
            check_signed_by_root(&root.certificate, &ca.certificate).map_err(|reason| {
                ErrorBody::internal(format!(
                    "CA mount {}: entry {cert_path}: {reason}",
                    store.mount_name()
                ))
            })?;
            let policy = load_issuer_policy(store, &name)?;
            issuers.insert(name.clone(), Arc::new(Issuer::new(&name, ca, policy)));
        }
        tracing::info!(
            mount = store.mount_name(),
            issuers = issuers.len(),
            "loaded CA keys"
        );
        fill_cert_index(store)?;
        Ok(Box::new(CaEngine::new(root, issuers, settings)))
    }
}

/// Reads the constraints of issuer `name` from its `meta` entry. An issuer
/// without one (stored by hand or before metadata existed) gets the default
/// constraints.
fn load_issuer_policy(store: &MountStore, name: &str) -> Result<IssuerPolicy, ErrorBody> {
    let path = issuer_path(name, "meta");
    let constraints = match store.get(&path)? {
        Some(json) => {
            serde_json::from_slice::<IssuerMeta>(&json)
                .map_err(|error| {
                    ErrorBody::internal(format!(
                        "CA mount {}: entry {path}: {error}",
                        store.mount_name()
                    ))
                })?
                .constraints
        }
        None => IssuerConstraints::default(),
    };
    IssuerPolicy::from_constraints(&constraints).map_err(|error| {
        ErrorBody::internal(format!(
            "CA mount {}: entry {path}: {error}",
            store.mount_name()
        ))
    })
}

fn required_entry(
    store: &MountStore,
    path: &str,
) -> Result<zeroize::Zeroizing<Vec<u8>>, ErrorBody> {
    store.get(path)?.ok_or_else(|| {
        ErrorBody::internal(format!(
            "CA mount {} has no entry {path}",
            store.mount_name()
        ))
    })
}

fn load_ca(store: &MountStore, cert_path: &str, key_path: &str) -> Result<LoadedCa, ErrorBody> {
    let cert_der = required_entry(store, cert_path)?;
    let certificate = CaCertificate::from_der(&cert_der).map_err(|error| {
        ErrorBody::internal(format!(
            "CA mount {}: entry {cert_path}: {error}",
            store.mount_name()
        ))
    })?;
    let key = required_entry(store, key_path)?;
    LoadedCa::new(certificate, &key)
}

/// Checks that `root` signed `issuer`: the issuer's authorityKeyIdentifier
/// must equal the root's subjectKeyIdentifier, and its signature must
/// verify with the root's public key. Returns the reason otherwise.
fn check_signed_by_root(root: &CaCertificate, issuer: &CaCertificate) -> Result<(), String> {
    let (_, parsed_root) = X509Certificate::from_der(root.der())
        .map_err(|error| format!("failed to parse the root certificate: {error}"))?;
    let (_, parsed_issuer) = X509Certificate::from_der(issuer.der())
        .map_err(|error| format!("failed to parse the certificate: {error}"))?;
    let mut authority_key_id = None;
    for extension in parsed_issuer.iter_extensions() {
        if let ParsedExtension::AuthorityKeyIdentifier(aki) = extension.parsed_extension() {
            authority_key_id = aki.key_identifier.as_ref().map(|id| id.0);
        }
    }
    match authority_key_id {
        Some(id) if id == root.subject_key_id() => {}
        Some(id) => {
            return Err(format!(
                "its authorityKeyIdentifier {} is not the subjectKeyIdentifier {} of the \
                 mount's root",
                hex::encode(id),
                hex::encode(root.subject_key_id())
            ));
        }
        None => return Err("it has no authorityKeyIdentifier with a key identifier".to_owned()),
    }
    parsed_issuer
        .verify_signature(Some(parsed_root.public_key()))
        .map_err(|error| {
            format!(
                "its signature does not verify with the public key of the mount's root: {error}"
            )
        })
}

/// Collects the names of the issuers stored under `issuers/` from their
/// `cert` entries.
fn stored_issuer_names(store: &MountStore) -> Result<BTreeSet<String>, ErrorBody> {
    let mut names = BTreeSet::new();
    for path in store.list(ISSUERS_PREFIX)? {
        let Some((name, entry)) = path[ISSUERS_PREFIX.len()..].split_once('/') else {
            continue;
        };
        if entry == "cert" {
            validate_issuer_name(name).map_err(|error| {
                ErrorBody::internal(format!(
                    "CA mount {}: stored entry {path}: {error}",
                    store.mount_name()
                ))
            })?;
            names.insert(name.to_owned());
        }
    }
    Ok(names)
}

/// A loaded CA mount.
pub struct CaEngine {
    root: LoadedCa,
    issuers: RwLock<BTreeMap<String, Arc<Issuer>>>,
    /// Serializes issuer creation, so two requests for the same name cannot
    /// both pass the existence check.
    creating: Mutex<()>,
    settings: MountSettings,
    /// Serializes revocations and CRL signing, so every CRL lists every
    /// revocation committed before it and CRL numbers never repeat.
    revoking: Mutex<()>,
}

impl CaEngine {
    fn new(
        root: LoadedCa,
        issuers: BTreeMap<String, Arc<Issuer>>,
        settings: MountSettings,
    ) -> Self {
        Self {
            root,
            settings,
            issuers: RwLock::new(issuers),
            creating: Mutex::new(()),
            revoking: Mutex::new(()),
        }
    }

    fn issuer(&self, name: &str) -> Result<Arc<Issuer>, ErrorBody> {
        validate_issuer_name(name)?;
        // The map is only ever replaced by single inserts, so a panic while
        // it was locked cannot have left it half-written.
        let issuers = self.issuers.read().unwrap_or_else(|e| e.into_inner());
        issuers
            .get(name)
            .cloned()
            .ok_or_else(|| ErrorBody::not_found(format!("issuer {name} not found")))
    }

    fn all_issuers(&self) -> Vec<Arc<Issuer>> {
        let issuers = self.issuers.read().unwrap_or_else(|e| e.into_inner());
        issuers.values().cloned().collect()
    }

    fn get_chain(&self, issuer: Option<&str>) -> Result<CaResponse, ErrorBody> {
        let mut chain: Vec<String> = match issuer {
            Some(name) => vec![self.issuer(name)?.info.certificate.clone()],
            None => self
                .all_issuers()
                .iter()
                .map(|issuer| issuer.info.certificate.clone())
                .collect(),
        };
        chain.push(self.root.certificate.pem().to_owned());
        Ok(CaResponse::Chain(chain))
    }

    fn create_issuer(
        &self,
        store: &MountStore,
        context: RequestContext<'_>,
        name: &str,
        key_algorithm: Option<KeyAlgorithm>,
        ttl: Option<&str>,
        constraints: &IssuerConstraints,
    ) -> Result<CaResponse, ErrorBody> {
        validate_issuer_name(name)?;
        let policy = IssuerPolicy::from_constraints(constraints)?;
        let _creating = self.creating.lock().unwrap_or_else(|e| e.into_inner());
        if self.issuer(name).is_ok() {
            return Err(ErrorBody::new(
                ErrorCode::Conflict,
                format!("issuer {name} already exists"),
            ));
        }
        // The records of a deleted issuer keep its name, so a new issuer of
        // that name would be taken for their signer by revoke and renew.
        if store.get(&issuer_path(name, DELETED_ENTRY))?.is_some() {
            return Err(ErrorBody::new(
                ErrorCode::Conflict,
                format!(
                    "issuer name {name} belonged to a deleted issuer whose certificate \
                     records still name it; choose another name"
                ),
            ));
        }

        let root_url = self.public_url(store, "ca?format=der");
        let options = IssuerOptions {
            name,
            common_name: None,
            key_algorithm,
            ttl,
            policy: Some(&policy),
            ca_issuers_url: root_url.as_deref(),
        };
        let now = OffsetDateTime::now_utc();
        let created =
            self.root
                .certificate
                .create_issuer(self.root.key.as_bytes(), &options, now)?;
        let meta = IssuerMeta {
            name: name.to_owned(),
            key_algorithm: created.certificate.key_algorithm(),
            created_at: format_rfc3339(now),
            created_by: caller_name(context).to_owned(),
            constraints: policy.to_constraints(),
        };
        let meta_json = serde_json::to_vec(&meta).map_err(|error| {
            ErrorBody::internal(format!(
                "failed to encode the metadata of issuer {name}: {error}"
            ))
        })?;
        let mut batch = WriteBatch::new();
        batch.put(&issuer_path(name, "cert"), created.certificate.der());
        batch.put(&issuer_path(name, "key"), created.key.pkcs8_der());
        batch.put(&issuer_path(name, "meta"), &meta_json);
        // A duplicate here means two 127-bit random serials collided, so the
        // request fails with a conflict and may be repeated.
        batch.insert_cert_serial(
            ROOT_SIGNER,
            created.certificate.serial_hex(),
            created.certificate.not_after().unix_timestamp(),
            None,
        );
        store.commit(batch)?;

        let ca = LoadedCa::new(created.certificate, created.key.pkcs8_der())?;
        let issuer = Arc::new(Issuer::new(name, ca, policy));
        let info = issuer.info.clone();
        self.issuers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), issuer);
        tracing::info!(
            mount = store.mount_name(),
            issuer = name,
            key_algorithm = %info.key_algorithm,
            not_after = info.not_after,
            created_by = meta.created_by,
            trace_id = context.trace_id,
            "created issuer"
        );
        Ok(CaResponse::Issuer(info))
    }

    fn issue(
        &self,
        store: &MountStore,
        context: RequestContext<'_>,
        request: &IssueRequest,
    ) -> Result<CaResponse, ErrorBody> {
        let issuer = self.issuer(&request.issuer)?;
        let mut leaf = LeafRequest::from(request).validate()?;
        self.set_public_urls(store, &issuer.name, &mut leaf);
        // Rejecting an expired issuer or a name outside its constraints here
        // saves generating a key for nothing. Signing checks both again.
        issuer
            .ca
            .certificate
            .check_valid_at(OffsetDateTime::now_utc())?;
        issuer
            .policy
            .check_names(&leaf.common_name, &leaf.subject_alt_names)?;
        let key = GeneratedKey::generate(leaf.key_algorithm)?;
        let issued_by = caller_name(context);

        for attempt in 1..=MAX_SERIAL_ATTEMPTS {
            let issued = issuer.ca.certificate.issue_leaf_with_policy(
                issuer.ca.key.as_bytes(),
                &leaf,
                &key,
                OffsetDateTime::now_utc(),
                &issuer.policy,
            )?;
            let record = cert_record(&issuer.name, &leaf, key.algorithm(), &issued, issued_by);
            match store_leaf(store, &record, &issued) {
                Ok(()) => {
                    tracing::info!(
                        mount = store.mount_name(),
                        issuer = issuer.name,
                        serial = record.serial_number,
                        profile = %leaf.profile,
                        common_name = record.common_name,
                        issued_by,
                        trace_id = context.trace_id,
                        "issued certificate"
                    );
                    return Ok(CaResponse::Issued(
                        self.issued_certificate(&issuer, &key, issued),
                    ));
                }
                Err(BarrierError::Duplicate { what }) => {
                    tracing::warn!(
                        mount = store.mount_name(),
                        issuer = issuer.name,
                        duplicate = what,
                        attempt,
                        trace_id = context.trace_id,
                        "serial already taken, signing again with a new serial"
                    );
                }
                Err(error) => return Err(error.into()),
            }
        }
        Err(ErrorBody::internal(format!(
            "failed to find an unused serial for issuer {} in {MAX_SERIAL_ATTEMPTS} attempts",
            issuer.name
        )))
    }

    /// Signs a certificate for a CSR. The CSR is parsed and its signature
    /// verified before anything else, so a CSR that fails costs no issuer
    /// lookup, serial or storage.
    fn sign_csr(
        &self,
        store: &MountStore,
        context: RequestContext<'_>,
        request: &SignCsrRequest,
    ) -> Result<CaResponse, ErrorBody> {
        let mut csr = validate_csr(&request.csr, request.profile, request.ttl.as_deref())?;
        let issuer = self.issuer(&request.issuer)?;
        self.set_public_urls(store, &issuer.name, &mut csr.leaf);
        issuer
            .ca
            .certificate
            .check_valid_at(OffsetDateTime::now_utc())?;
        issuer
            .policy
            .check_names(&csr.leaf.common_name, &csr.leaf.subject_alt_names)?;
        let issued_by = caller_name(context);

        for attempt in 1..=MAX_SERIAL_ATTEMPTS {
            let issued = issuer.ca.certificate.sign_csr_with_policy(
                issuer.ca.key.as_bytes(),
                &csr,
                OffsetDateTime::now_utc(),
                &issuer.policy,
            )?;
            let mut record = cert_record(
                &issuer.name,
                &csr.leaf,
                csr.public_key.algorithm,
                &issued,
                issued_by,
            );
            record.csr_signed = true;
            match store_leaf(store, &record, &issued) {
                Ok(()) => {
                    tracing::info!(
                        mount = store.mount_name(),
                        issuer = issuer.name,
                        serial = record.serial_number,
                        profile = %csr.leaf.profile,
                        common_name = record.common_name,
                        issued_by,
                        trace_id = context.trace_id,
                        "signed certificate for a CSR"
                    );
                    return Ok(CaResponse::Signed(signed_certificate(
                        self, &issuer, issued,
                    )));
                }
                Err(BarrierError::Duplicate { what }) => {
                    tracing::warn!(
                        mount = store.mount_name(),
                        issuer = issuer.name,
                        duplicate = what,
                        attempt,
                        trace_id = context.trace_id,
                        "serial already taken, signing again with a new serial"
                    );
                }
                Err(error) => return Err(error.into()),
            }
        }
        Err(ErrorBody::internal(format!(
            "failed to find an unused serial for issuer {} in {MAX_SERIAL_ATTEMPTS} attempts",
            issuer.name
        )))
    }

    /// Revokes a leaf and signs a new CRL for its issuer in the same commit.
    /// A certificate that is already revoked is returned unchanged, with its
    /// first revocation time and reason.
    fn revoke(
        &self,
        store: &MountStore,
        context: RequestContext<'_>,
        serial: &str,
        reason: Option<&str>,
        expected_issuer: Option<&str>,
    ) -> Result<CaResponse, ErrorBody> {
        let reason = parse_revocation_reason(reason)?;
        let serial_hex = normalize_serial(serial)?;
        let _revoking = self.revoking.lock().unwrap_or_else(|e| e.into_inner());
        let path = cert_path(&serial_hex);
        let value = store
            .get(&path)?
            .ok_or_else(|| ErrorBody::not_found(format!("certificate {serial_hex} not found")))?;
        let mut record = decode_record(store, &serial_hex, &value)?;
        check_expected_issuer(&record, expected_issuer)?;
        if record.revoked_at.is_some() {
            return Ok(CaResponse::Cert(record));
        }
        let issuer = self.issuer(&record.issuer)?;

        let now = OffsetDateTime::now_utc();
        let revocation = Revocation {
            revoked_at: format_rfc3339(now),
            reason: reason.to_owned(),
        };
        record.revoked_at = Some(revocation.revoked_at.clone());
        record.revocation_reason = Some(reason.to_owned());
        let mut entries = revoked_entries(store, &issuer.name)?;
        entries.push(RevokedEntry {
            serial_hex: serial_hex.clone(),
            revoked_at: now,
            reason: reason.to_owned(),
        });
        let mut batch = WriteBatch::new();
        sign_crl_into(store, &issuer, &entries, now, &mut batch)?;
        batch.put(&path, &encode_json(&record, &path)?);
        batch.update_cert_serial(
            &record.issuer,
            &serial_hex,
            Some(record.profile.as_str()),
            true,
        );
        let revocation_path = revoked_path(&issuer.name, &serial_hex);
        batch.put(
            &revocation_path,
            &encode_json(&revocation, &revocation_path)?,
        );
        store.commit(batch)?;
        tracing::info!(
            mount = store.mount_name(),
            issuer = issuer.name,
            serial = serial_hex,
            reason,
            revoked_by = caller_name(context),
            trace_id = context.trace_id,
            "revoked certificate"
        );
        Ok(CaResponse::Cert(record))
    }

    /// Returns the issuer's CRL, signing a new one when none is stored or
    /// the stored one reaches its nextUpdate within [`CRL_RENEW_BEFORE`].
    fn get_crl(&self, store: &MountStore, name: &str) -> Result<Vec<u8>, ErrorBody> {
        let issuer = self.issuer(name)?;
        let path = issuer_path(name, "crl");
        let now = OffsetDateTime::now_utc();
        let fresh = |der: &[u8]| {
            CertificateRevocationList::from_der(der)
                .ok()
                .and_then(|(_, crl)| crl.next_update())
                .is_some_and(|next| next.to_datetime() - now > CRL_RENEW_BEFORE)
        };
        if let Some(der) = store.get(&path)?
            && fresh(&der)
        {
            return Ok(der.to_vec());
        }
        let _revoking = self.revoking.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(der) = store.get(&path)?
            && fresh(&der)
        {
            return Ok(der.to_vec());
        }
        let entries = revoked_entries(store, name)?;
        let mut batch = WriteBatch::new();
        let der = sign_crl_into(store, &issuer, &entries, now, &mut batch)?;
        store.commit(batch)?;
        Ok(der)
    }

    /// Issues the successor of a stored leaf under the same issuer, with the
    /// same subject, SANs and profile, and links the two records in the
    /// commit that stores the successor. Usage overrides of the old request
    /// are not stored, so the successor has the profile's usages.
    fn renew(
        &self,
        store: &MountStore,
        context: RequestContext<'_>,
        serial: &str,
        ttl: Option<&str>,
        expected_issuer: Option<&str>,
    ) -> Result<CaResponse, ErrorBody> {
        let serial_hex = normalize_serial(serial)?;
        // Shared with revocation, so a certificate cannot be renewed twice or
        // revoked while its successor is being stored.
        let _renewing = self.revoking.lock().unwrap_or_else(|e| e.into_inner());
        let old_path = cert_path(&serial_hex);
        let value = store
            .get(&old_path)?
            .ok_or_else(|| ErrorBody::not_found(format!("certificate {serial_hex} not found")))?;
        let mut old = decode_record(store, &serial_hex, &value)?;
        check_expected_issuer(&old, expected_issuer)?;
        if let Some(successor) = &old.renewed_by {
            return Err(ErrorBody::new(
                ErrorCode::Conflict,
                format!("certificate {serial_hex} was already renewed by {successor}"),
            ));
        }
        if old.revoked_at.is_some() {
            return Err(ErrorBody::invalid_request(format!(
                "certificate {serial_hex} is revoked; issue a new certificate instead"
            )));
        }
        let issuer = self.issuer(&old.issuer)?;
        let ttl_text = match ttl {
            Some(text) => text.to_owned(),
            None => old_lifetime(&old)?,
        };
        // The usages the old certificate was issued with, which may be
        // overrides within its profile, so the successor grants the same.
        let usages = certificate_usages(&old.certificate)?;
        let mut leaf = LeafRequest {
            profile: old.profile,
            common_name: &old.common_name,
            organization: None,
            dns_names: &old.dns_names,
            ip_addresses: &old.ip_addresses,
            email_addresses: &old.email_addresses,
            uris: &old.uris,
            ttl: Some(&ttl_text),
            key_algorithm: Some(old.key_algorithm),
            key_usages: usages.key_usages.as_deref(),
            extended_key_usages: usages.extended_key_usages.as_deref(),
        }
        .validate()?;
        self.set_public_urls(store, &issuer.name, &mut leaf);
        let now = OffsetDateTime::now_utc();
        issuer.ca.certificate.check_valid_at(now)?;
        issuer
            .policy
            .check_names(&leaf.common_name, &leaf.subject_alt_names)?;

        let generated = if old.csr_signed {
            None
        } else {
            Some(GeneratedKey::generate(old.key_algorithm)?)
        };
        let csr_key = if old.csr_signed {
            Some(CsrPublicKey {
                algorithm: old.key_algorithm,
                raw: certificate_public_key(&old.certificate)?,
            })
        } else {
            None
        };
        let issued_by = caller_name(context);
        for attempt in 1..=MAX_SERIAL_ATTEMPTS {
            let now = OffsetDateTime::now_utc();
            let issued = match (&generated, &csr_key) {
                (Some(key), _) => issuer.ca.certificate.issue_leaf_with_policy(
                    issuer.ca.key.as_bytes(),
                    &leaf,
                    key,
                    now,
                    &issuer.policy,
                )?,
                (None, Some(public_key)) => issuer.ca.certificate.sign_csr_with_policy(
                    issuer.ca.key.as_bytes(),
                    &ValidatedCsr {
                        leaf: leaf.clone(),
                        public_key: public_key.clone(),
                    },
                    now,
                    &issuer.policy,
                )?,
                (None, None) => return Err(ErrorBody::internal("renewal has no key")),
            };
            let mut record =
                cert_record(&issuer.name, &leaf, old.key_algorithm, &issued, issued_by);
            record.csr_signed = old.csr_signed;
            record.renewed_from = Some(serial_hex.clone());
            old.renewed_by = Some(record.serial_number.clone());
            let mut batch = WriteBatch::new();
            batch.put(&old_path, &encode_json(&old, &old_path)?);
            match store_leaf_with(store, &record, &issued, batch) {
                Ok(()) => {
                    tracing::info!(
                        mount = store.mount_name(),
                        issuer = issuer.name,
                        serial = record.serial_number,
                        renewed_from = serial_hex,
                        issued_by,
                        trace_id = context.trace_id,
                        "renewed certificate"
                    );
                    return Ok(match &generated {
                        Some(key) => {
                            CaResponse::Issued(self.issued_certificate(&issuer, key, issued))
                        }
                        None => CaResponse::Signed(signed_certificate(self, &issuer, issued)),
                    });
                }
                Err(BarrierError::Duplicate { what }) => {
                    tracing::warn!(
                        mount = store.mount_name(),
                        issuer = issuer.name,
                        duplicate = what,
                        attempt,
                        trace_id = context.trace_id,
                        "serial already taken, signing again with a new serial"
                    );
                }
                Err(error) => return Err(error.into()),
            }
        }
        Err(ErrorBody::internal(format!(
            "failed to find an unused serial for issuer {} in {MAX_SERIAL_ATTEMPTS} attempts",
            issuer.name
        )))
    }

    /// Deletes an issuer's certificate, key, metadata and CRL. Its leaf
    /// records stay listed. Without `force`, an issuer with unexpired,
    /// unrevoked leaves is kept and the error gives their number. The serial
    /// index counts them, or the records while the index is not filled.
    fn delete_issuer(
        &self,
        store: &MountStore,
        context: RequestContext<'_>,
        name: &str,
        force: bool,
    ) -> Result<CaResponse, ErrorBody> {
        let _creating = self.creating.lock().unwrap_or_else(|e| e.into_inner());
        let _revoking = self.revoking.lock().unwrap_or_else(|e| e.into_inner());
        self.issuer(name)?;
        let now = OffsetDateTime::now_utc();
        let active = if store.has_unindexed_certs()? {
            count_active_by_scan(store, name, now)?
        } else {
            store.count_active_certs(name, now.unix_timestamp())?
        };
        if active > 0 && !force {
            return Err(ErrorBody::new(
                ErrorCode::Conflict,
                format!(
                    "issuer {name} still has {active} unexpired, unrevoked certificates; \
                     revoke them or delete with force=true"
                ),
            ));
        }
        let mut batch = WriteBatch::new();
        for entry in ["cert", "key", "meta", "crl", "crl-number"] {
            batch.delete(&issuer_path(name, entry));
        }
        batch.put(
            &issuer_path(name, DELETED_ENTRY),
            format_rfc3339(now).as_bytes(),
        );
        // Revocations are per issuer name, so a later issuer with this name
        // must not inherit them in its CRL.
        for path in store.list(&format!("{REVOKED_PREFIX}{name}/"))? {
            batch.delete(&path);
        }
        store.commit(batch)?;
        self.issuers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        tracing::warn!(
            mount = store.mount_name(),
            issuer = name,
            active_certificates = active,
            force,
            deleted_by = caller_name(context),
            trace_id = context.trace_id,
            "deleted issuer"
        );
        Ok(CaResponse::IssuerDeleted {
            name: name.to_owned(),
            active_certificates: active,
        })
    }

    /// Returns the URL of `route` under the mount's public PKI routes, such
    /// as `crl?issuer=web`, when the mount has a public base URL.
    fn public_url(&self, store: &MountStore, route: &str) -> Option<String> {
        self.settings
            .public_base_url
            .as_ref()
            .map(|base| format!("{base}/v1/pki/{}/{route}", store.mount_name()))
    }

    /// Sets the URLs that a leaf of `issuer` points to when the mount has a
    /// public base URL: the issuer's CRL (CRL distribution point) and the
    /// issuer's certificate in DER (Authority Information Access caIssuers).
    fn set_public_urls(&self, store: &MountStore, issuer: &str, leaf: &mut ValidatedLeaf) {
        leaf.crl_url = self.public_url(store, &format!("crl?issuer={issuer}"));
        leaf.ca_issuers_url = self.public_url(store, &format!("issuer/{issuer}?format=der"));
    }

    fn issued_certificate(
        &self,
        issuer: &Issuer,
        key: &GeneratedKey,
        issued: IssuedLeaf,
    ) -> IssuedCertificate {
        let mut key_pem = key.to_pkcs8_pem();
        IssuedCertificate {
            certificate: issued.pem,
            // Moves the zeroizing buffer's string out without copying it.
            private_key: SecretString::new(std::mem::take(&mut *key_pem)),
            private_key_type: private_key_type(key.algorithm()).to_owned(),
            issuing_ca: issuer.info.certificate.clone(),
            chain: vec![
                issuer.info.certificate.clone(),
                self.root.certificate.pem().to_owned(),
            ],
            serial_number: issued.fields.serial_hex.clone(),
            not_before: issued.fields.not_before_rfc3339(),
            not_after: issued.fields.not_after_rfc3339(),
            warnings: issued.warnings,
        }
    }

    fn get_cert(&self, store: &MountStore, serial: &str) -> Result<CaResponse, ErrorBody> {
        let serial_hex = normalize_serial(serial)?;
        let value = store
            .get(&cert_path(&serial_hex))?
            .ok_or_else(|| ErrorBody::not_found(format!("certificate {serial_hex} not found")))?;
        Ok(CaResponse::Cert(decode_record(store, &serial_hex, &value)?))
    }

    /// Returns one page of stored leaf records, or of those of one issuer,
    /// in ascending serial order: at most `limit` records (default
    /// [`DEFAULT_LIST_LIMIT`], maximum [`MAX_LIST_LIMIT`]) whose serials are
    /// greater than `after`.
    ///
    /// A page also ends before its records would exceed
    /// [`LIST_PAGE_BUDGET`] encoded bytes, so it always fits in one protocol
    /// frame. A page can therefore hold fewer than `limit` records while more
    /// remain, and the caller continues from the last serial it got until a
    /// page comes back empty.
    ///
    /// The serial index selects the candidates by issuer, profile, state and
    /// expiry, so only their records are decrypted. The common name is
    /// subject data, so it is matched on the decrypted records. While some
    /// index row of the mount is not filled yet, every record is read.
    fn list_certs(
        &self,
        store: &MountStore,
        filter: &CertFilter,
        limit: Option<u32>,
        after: Option<&str>,
    ) -> Result<CaResponse, ErrorBody> {
        if let Some(name) = filter.issuer.as_deref() {
            self.issuer(name)?;
        }
        let expiring_before = match &filter.expiring_before {
            Some(text) => Some(
                OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| {
                        ErrorBody::invalid_request(format!(
                            "invalid expiring_before {text:?}: expected an RFC 3339 time such as \
                             2027-01-01T00:00:00Z"
                        ))
                    })?,
            ),
            None => None,
        };
        let limit = match limit {
            None => DEFAULT_LIST_LIMIT,
            Some(limit) if (1..=MAX_LIST_LIMIT).contains(&limit) => limit,
            Some(limit) => {
                return Err(ErrorBody::invalid_request(format!(
                    "invalid limit {limit}: expected 1 to {MAX_LIST_LIMIT}"
                )));
            }
        };
        let after = after.map(normalize_serial).transpose()?;
        let matcher = RecordFilter {
            filter,
            expiring_before,
            common_name: filter.common_name.as_deref().map(str::to_lowercase),
            now: OffsetDateTime::now_utc(),
        };
        let records = if store.has_unindexed_certs()? {
            list_by_scan(store, &matcher, limit, after.as_deref())?
        } else {
            list_by_index(store, &matcher, limit, after.as_deref())?
        };
        Ok(CaResponse::Certs(records))
    }
}

/// The `list-certs` filter, applied to decrypted records.
struct RecordFilter<'a> {
    filter: &'a CertFilter,
    expiring_before: Option<OffsetDateTime>,
    /// Lowercase.
    common_name: Option<String>,
    now: OffsetDateTime,
}

impl RecordFilter<'_> {
    fn matches(&self, record: &CertRecord) -> bool {
        let filter = self.filter;
        if filter
            .issuer
            .as_deref()
            .is_some_and(|name| record.issuer != name)
        {
            return false;
        }
        if filter
            .profile
            .is_some_and(|profile| record.profile != profile)
        {
            return false;
        }
        let not_after = OffsetDateTime::parse(
            &record.not_after,
            &time::format_description::well_known::Rfc3339,
        )
        .ok();
        if let Some(state) = filter.state {
            let record_state = if record.revoked_at.is_some() {
                CertState::Revoked
            } else if not_after.is_some_and(|not_after| not_after <= self.now) {
                CertState::Expired
            } else {
                CertState::Valid
            };
            if record_state != state {
                return false;
            }
        }
        if let Some(before) = self.expiring_before
            && not_after.is_none_or(|not_after| not_after >= before)
        {
            return false;
        }
        if let Some(fragment) = &self.common_name
            && !record
                .common_name
                .to_lowercase()
                .contains(fragment.as_str())
        {
            return false;
        }
        true
    }

    /// The same conditions on the plain columns of the serial index. Certificate times have whole seconds, so
    /// comparing Unix seconds gives the same results as [`Self::matches`].
    fn index_query(&self, limit: u32, after_sort_key: Option<String>) -> CertIndexQuery {
        let now = self.now.unix_timestamp();
        CertIndexQuery {
            issuer: self.filter.issuer.clone(),
            profile: self
                .filter
                .profile
                .map(|profile| profile.as_str().to_owned()),
            state: self.filter.state.map(|state| match state {
                CertState::Valid => IndexedState::ValidAt(now),
                CertState::Expired => IndexedState::ExpiredAt(now),
                CertState::Revoked => IndexedState::Revoked,
            }),
            // not_after < before holds for whole seconds exactly when
            // not_after < ceil(before).
            not_after_before: self
                .expiring_before
                .map(|before| before.unix_timestamp() + i64::from(before.nanosecond() > 0)),
            common_name_contains: self.common_name.clone(),
            after_sort_key,
            limit,
        }
    }
}

/// The records of one `list-certs` page, within `limit` and
/// [`LIST_PAGE_BUDGET`].
struct Page {
    records: Vec<CertRecord>,
    size: usize,
    limit: usize,
}

impl Page {
    fn new(limit: u32) -> Self {
        Self {
            records: Vec::new(),
            size: 0,
            limit: limit as usize,
        }
    }

    /// Adds `record` unless the budget is spent; returns whether the page
    /// takes more records.
    fn push(&mut self, record: CertRecord) -> bool {
        let record_size = encoded_size_bound(&record);
        // The first record is always taken so that every page moves the
        // caller forward. One record is far below the budget, because a
        // leaf has at most 100 SANs of at most 253 characters.
        if !self.records.is_empty() && self.size + record_size > LIST_PAGE_BUDGET {
            return false;
        }
        self.size += record_size;
        self.records.push(record);
        self.records.len() < self.limit
    }
}

/// Reads the records in serial order and keeps those that match. Used
/// while the serial index of the mount is not filled.
fn list_by_scan(
    store: &MountStore,
    matcher: &RecordFilter<'_>,
    limit: u32,
    after: Option<&str>,
) -> Result<Vec<CertRecord>, ErrorBody> {
    let mut serials: Vec<String> = store
        .list(CERTS_PREFIX)?
        .into_iter()
        .map(|path| path[CERTS_PREFIX.len()..].to_owned())
        .filter(|serial_hex| after.is_none_or(|after| serial_order(serial_hex, after).is_gt()))
        .collect();
    serials.sort_unstable_by(|a, b| serial_order(a, b));

    let mut page = Page::new(limit);
    for serial_hex in serials {
        let Some(value) = store.get(&cert_path(&serial_hex))? else {
            continue;
        };
        let record = decode_record(store, &serial_hex, &value)?;
        if matcher.matches(&record) && !page.push(record) {
            break;
        }
    }
    Ok(page.records)
}

/// Number of index rows read per query when a common name filter may
/// reject many of them.
const INDEX_CHUNK: u32 = 256;

/// Selects candidate serials with the serial index, then reads only their
/// records and checks them with the full filter.
fn list_by_index(
    store: &MountStore,
    matcher: &RecordFilter<'_>,
    limit: u32,
    after: Option<&str>,
) -> Result<Vec<CertRecord>, ErrorBody> {
    let chunk = if matcher.common_name.is_some() {
        limit.max(INDEX_CHUNK)
    } else {
        limit
    };
    let mut cursor = after.map(serial_sort_key);
    let mut previous: Option<String> = None;
    let mut page = Page::new(limit);
    loop {
        let rows = store.cert_index_page(&matcher.index_query(chunk, cursor.clone()))?;
        let exhausted = rows.len() < chunk as usize;
        for (sort_key, serial_hex) in rows {
            cursor = Some(sort_key);
            // A serial indexed under two issuers has one record.
            if previous.as_deref() == Some(serial_hex.as_str()) {
                continue;
            }
            previous = Some(serial_hex.clone());
            let Some(value) = store.get(&cert_path(&serial_hex))? else {
                continue;
            };
            let record = decode_record(store, &serial_hex, &value)?;
            if matcher.matches(&record) && !page.push(record) {
                return Ok(page.records);
            }
        }
        if exhausted {
            return Ok(page.records);
        }
    }
}

/// Fills the profile and revocation columns of the mount's serial index
/// rows that were stored before the index had them. The migration that adds
/// the columns runs while sealed and cannot read the records, so this runs
/// when the mount loads after unseal. A record that cannot be read is
/// logged and left unindexed; `list-certs` then reads every record of the
/// mount, and reports the damaged one.
fn fill_cert_index(store: &MountStore) -> Result<(), ErrorBody> {
    const COMMIT_ROWS: usize = 500;
    let rows = store.unindexed_certs(u32::MAX)?;
    if rows.is_empty() {
        return Ok(());
    }
    let mut filled = 0usize;
    let mut skipped = 0usize;
    for chunk in rows.chunks(COMMIT_ROWS) {
        let mut batch = WriteBatch::new();
        for (issuer, serial_hex) in chunk {
            let record = match store.get(&cert_path(serial_hex))? {
                Some(value) => match decode_record(store, serial_hex, &value) {
                    Ok(record) => Some(record),
                    Err(error) => {
                        tracing::warn!(
                            mount = store.mount_name(),
                            serial = serial_hex,
                            error = error.message,
                            "certificate record cannot be indexed"
                        );
                        skipped += 1;
                        continue;
                    }
                },
                None => None,
            };
            // A row whose record is missing or belongs to another issuer
            // matches no profile and is skipped when listed.
            let (profile, revoked) = match &record {
                Some(record) if record.issuer == *issuer => {
                    batch.set_cert_common_name(issuer, serial_hex, &record.common_name);
                    (Some(record.profile.as_str()), record.revoked_at.is_some())
                }
                _ => (None, false),
            };
            batch.update_cert_serial(issuer, serial_hex, profile, revoked);
            filled += 1;
        }
        if !batch.is_empty() {
            store.commit(batch)?;
        }
    }
    tracing::info!(
        mount = store.mount_name(),
        filled,
        skipped,
        "filled the certificate index of rows stored before it had profile and state"
    );
    Ok(())
}

/// Counts the unexpired, unrevoked leaf records of issuer `name` by
/// reading every leaf record of the mount.
fn count_active_by_scan(
    store: &MountStore,
    name: &str,
    now: OffsetDateTime,
) -> Result<u64, ErrorBody> {
    let mut active: u64 = 0;
    for path in store.list(CERTS_PREFIX)? {
        let serial_hex = &path[CERTS_PREFIX.len()..];
        let Some(value) = store.get(&path)? else {
            continue;
        };
        let record = decode_record(store, serial_hex, &value)?;
        let unexpired = OffsetDateTime::parse(
            &record.not_after,
            &time::format_description::well_known::Rfc3339,
        )
        .map_or(true, |not_after| not_after > now);
        if record.issuer == name && record.revoked_at.is_none() && unexpired {
            active += 1;
        }
    }
    Ok(active)
}

/// Orders two lowercase hex serials by numeric value. Leading zeros do not
/// count, so `00ff` equals `ff` and sorts after `fe`.
fn serial_order(a: &str, b: &str) -> std::cmp::Ordering {
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// Returns an upper bound of the postcard encoding size of `record`. Postcard
/// writes a string or a sequence as a varint length (at most 5 bytes below
/// 4 GiB) followed by its contents, and an enum as a varint variant index.
fn encoded_size_bound(record: &CertRecord) -> usize {
    const VARINT_MAX: usize = 5;
    let strings = [
        &record.serial_number,
        &record.issuer,
        &record.common_name,
        &record.not_before,
        &record.not_after,
        &record.issued_by,
        &record.certificate,
    ];
    let names = record.dns_names.iter().chain(&record.ip_addresses);
    let enums = 2;
    let sequences = 2;
    strings
        .into_iter()
        .chain(names)
        .map(|text| VARINT_MAX + text.len())
        .sum::<usize>()
        + (enums + sequences) * VARINT_MAX
}

impl Engine for CaEngine {
    fn engine_type(&self) -> &'static str {
        "ca"
    }

    fn handle(
        &self,
        store: &MountStore,
        context: RequestContext<'_>,
        request: EngineRequest,
    ) -> Result<EngineResponse, ErrorBody> {
        let EngineRequest::Ca(request) = request;
        let response = match &request {
            CaRequest::GetRoot => CaResponse::Certificate(self.root.certificate.pem().to_owned()),
            CaRequest::GetChain { issuer } => self.get_chain(issuer.as_deref())?,
            CaRequest::GetIssuer { name } => CaResponse::Issuer(self.issuer(name)?.info.clone()),
            CaRequest::CreateIssuer {
                name,
                key_algorithm,
                ttl,
                constraints,
            } => self.create_issuer(
                store,
                context,
                name,
                *key_algorithm,
                ttl.as_deref(),
                constraints,
            )?,
            CaRequest::ListIssuers => CaResponse::Issuers(
                self.all_issuers()
                    .iter()
                    .map(|issuer| issuer.info.clone())
                    .collect(),
            ),
            CaRequest::Issue(issue) => self.issue(store, context, issue)?,
            CaRequest::GetCert { serial } => self.get_cert(store, serial)?,
            CaRequest::ListCerts {
                issuer,
                limit,
                after,
            } => {
                let filter = CertFilter {
                    issuer: issuer.clone(),
                    ..CertFilter::default()
                };
                self.list_certs(store, &filter, *limit, after.as_deref())?
            }
            CaRequest::ListCertsFiltered {
                filter,
                limit,
                after,
            } => self.list_certs(store, filter, *limit, after.as_deref())?,
            CaRequest::SignCsr(request) => self.sign_csr(store, context, request)?,
            CaRequest::Revoke {
                serial,
                reason,
                issuer,
            } => self.revoke(store, context, serial, reason.as_deref(), issuer.as_deref())?,
            CaRequest::GetCrl { issuer } => CaResponse::Crl(self.get_crl(store, issuer)?),
            CaRequest::Renew {
                serial,
                ttl,
                issuer,
            } => self.renew(store, context, serial, ttl.as_deref(), issuer.as_deref())?,
            CaRequest::DeleteIssuer { name, force } => {
                self.delete_issuer(store, context, name, *force)?
            }
        };
        Ok(EngineResponse::Ca(response))
    }
}

fn caller_name<'a>(context: RequestContext<'a>) -> &'a str {
    context
        .caller
        .map_or(ANONYMOUS_CALLER, |caller| caller.username.as_str())
}

fn cert_record(
    issuer: &str,
    leaf: &ValidatedLeaf,
    key_algorithm: KeyAlgorithm,
    issued: &IssuedLeaf,
    issued_by: &str,
) -> CertRecord {
    CertRecord {
        serial_number: issued.fields.serial_hex.clone(),
        issuer: issuer.to_owned(),
        profile: leaf.profile,
        common_name: leaf.common_name.clone(),
        dns_names: leaf.subject_alt_names.dns_names.clone(),
        ip_addresses: leaf
            .subject_alt_names
            .ip_addresses
            .iter()
            .map(ToString::to_string)
            .collect(),
        email_addresses: leaf.subject_alt_names.email_addresses.clone(),
        uris: leaf.subject_alt_names.uris.clone(),
        key_algorithm,
        not_before: issued.fields.not_before_rfc3339(),
        not_after: issued.fields.not_after_rfc3339(),
        issued_by: issued_by.to_owned(),
        certificate: issued.pem.clone(),
        revoked_at: None,
        revocation_reason: None,
        csr_signed: false,
        renewed_from: None,
        renewed_by: None,
    }
}

/// Returns the lifetime of a stored certificate without the backdating, as
/// a duration string in seconds.
fn old_lifetime(record: &CertRecord) -> Result<String, ErrorBody> {
    let parse = |text: &str| {
        OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).map_err(
            |error| {
                ErrorBody::internal(format!(
                    "certificate {}: invalid stored time {text:?}: {error}",
                    record.serial_number
                ))
            },
        )
    };
    let lifetime = parse(&record.not_after)? - parse(&record.not_before)? - BACKDATE;
    Ok(format!("{}s", lifetime.whole_seconds().max(1)))
}

/// Returns the raw public key (subjectPublicKey content) of a PEM
/// certificate.
/// Parses a stored PEM certificate and returns what `read` takes from it.
fn read_stored_certificate<T>(
    pem: &str,
    read: impl FnOnce(&X509Certificate<'_>) -> Result<T, x509_parser::error::X509Error>,
) -> Result<T, ErrorBody> {
    let invalid = |reason: String| ErrorBody::internal(format!("stored certificate: {reason}"));
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|error| invalid(error.to_string()))?;
    let (_, cert) =
        X509Certificate::from_der(&block.contents).map_err(|error| invalid(error.to_string()))?;
    read(&cert).map_err(|error| invalid(error.to_string()))
}

fn certificate_public_key(pem: &str) -> Result<Vec<u8>, ErrorBody> {
    read_stored_certificate(pem, |cert| {
        Ok(cert.public_key().subject_public_key.data.to_vec())
    })
}

/// Key usages and extended key usages of a stored leaf, by RFC 5280 name.
/// A list is `None` when the certificate has no such extension or none of
/// the usages a leaf profile grants, so the profile's default applies.
struct LeafUsages {
    key_usages: Option<Vec<String>>,
    extended_key_usages: Option<Vec<String>>,
}

fn certificate_usages(pem: &str) -> Result<LeafUsages, ErrorBody> {
    read_stored_certificate(pem, |cert| {
        let non_empty = |names: Vec<String>| (!names.is_empty()).then_some(names);

        let key_usages = cert.key_usage()?.and_then(|extension| {
            let usage = extension.value;
            let mut names = Vec::new();
            if usage.digital_signature() {
                names.push(LeafKeyUsage::DigitalSignature.as_str().to_owned());
            }
            if usage.key_encipherment() {
                names.push(LeafKeyUsage::KeyEncipherment.as_str().to_owned());
            }
            non_empty(names)
        });

        let extended_key_usages = cert.extended_key_usage()?.and_then(|extension| {
            let usage = extension.value;
            let mut names = Vec::new();
            if usage.server_auth {
                names.push(LeafExtendedKeyUsage::ServerAuth.as_str().to_owned());
            }
            if usage.client_auth {
                names.push(LeafExtendedKeyUsage::ClientAuth.as_str().to_owned());
            }
            non_empty(names)
        });

        Ok(LeafUsages {
            key_usages,
            extended_key_usages,
        })
    })
}

fn signed_certificate(engine: &CaEngine, issuer: &Issuer, issued: IssuedLeaf) -> SignedCertificate {
    SignedCertificate {
        certificate: issued.pem,
        issuing_ca: issuer.info.certificate.clone(),
        chain: vec![
            issuer.info.certificate.clone(),
            engine.root.certificate.pem().to_owned(),
        ],
        serial_number: issued.fields.serial_hex.clone(),
        not_before: issued.fields.not_before_rfc3339(),
        not_after: issued.fields.not_after_rfc3339(),
        warnings: issued.warnings,
    }
}

fn encode_json<T: Serialize>(value: &T, path: &str) -> Result<Vec<u8>, ErrorBody> {
    serde_json::to_vec(value)
        .map_err(|error| ErrorBody::internal(format!("failed to encode {path}: {error}")))
}

/// Reads the revocations of issuer `name`.
fn revoked_entries(store: &MountStore, name: &str) -> Result<Vec<RevokedEntry>, ErrorBody> {
    let prefix = format!("{REVOKED_PREFIX}{name}/");
    let mut entries = Vec::new();
    for path in store.list(&prefix)? {
        let damaged = |reason: String| {
            ErrorBody::internal(format!(
                "CA mount {}: entry {path}: {reason}",
                store.mount_name()
            ))
        };
        let Some(value) = store.get(&path)? else {
            continue;
        };
        let revocation: Revocation =
            serde_json::from_slice(&value).map_err(|error| damaged(error.to_string()))?;
        let revoked_at = OffsetDateTime::parse(
            &revocation.revoked_at,
            &time::format_description::well_known::Rfc3339,
        )
        .map_err(|error| damaged(error.to_string()))?;
        entries.push(RevokedEntry {
            serial_hex: path[prefix.len()..].to_owned(),
            revoked_at,
            reason: revocation.reason,
        });
    }
    Ok(entries)
}

/// Signs a CRL of `entries` with the issuer's key, with the CRL number after
/// the stored one, and adds it and the new number to `batch`. Returns the
/// DER.
fn sign_crl_into(
    store: &MountStore,
    issuer: &Issuer,
    entries: &[RevokedEntry],
    now: OffsetDateTime,
    batch: &mut WriteBatch,
) -> Result<Vec<u8>, ErrorBody> {
    let number_path = issuer_path(&issuer.name, "crl-number");
    let previous: u64 = match store.get(&number_path)? {
        Some(value) => std::str::from_utf8(&value)
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| {
                ErrorBody::internal(format!(
                    "CA mount {}: entry {number_path} is not a number",
                    store.mount_name()
                ))
            })?,
        None => 0,
    };
    let number = previous + 1;
    let crl = issuer
        .ca
        .certificate
        .sign_crl(issuer.ca.key.as_bytes(), number, entries, now)?;
    batch.put(&issuer_path(&issuer.name, "crl"), &crl.der);
    batch.put(&number_path, number.to_string().as_bytes());
    Ok(crl.der)
}

/// Writes a leaf's record and its serial index row in one commit. Returns
/// [`BarrierError::Duplicate`] when the issuer already used the serial or
/// another issuer of the mount stored a record under it.
fn store_leaf(
    store: &MountStore,
    record: &CertRecord,
    issued: &IssuedLeaf,
) -> Result<(), BarrierError> {
    store_leaf_with(store, record, issued, WriteBatch::new())
}

/// Like [`store_leaf`], committing the writes already in `batch` with it.
fn store_leaf_with(
    store: &MountStore,
    record: &CertRecord,
    issued: &IssuedLeaf,
    mut batch: WriteBatch,
) -> Result<(), BarrierError> {
    let path = cert_path(&record.serial_number);
    let json = serde_json::to_vec(record).map_err(|error| {
        BarrierError::Storage(format!(
            "failed to encode certificate record {path}: {error}"
        ))
    })?;
    // The index is unique per issuer, but records are keyed by serial alone,
    // so the record is inserted, never replaced: a serial that another
    // issuer already used fails the commit like one of the same issuer.
    batch.insert(&path, &json);
    batch.insert_cert_serial(
        &record.issuer,
        &record.serial_number,
        issued.fields.not_after.unix_timestamp(),
        Some(record.profile.as_str()),
    );
    batch.set_cert_common_name(&record.issuer, &record.serial_number, &record.common_name);
    store.commit(batch)
}

fn decode_record(
    store: &MountStore,
    serial_hex: &str,
    value: &[u8],
) -> Result<CertRecord, ErrorBody> {
    serde_json::from_slice(value).map_err(|error| {
        ErrorBody::internal(format!(
            "CA mount {}: certificate record {serial_hex} is not valid JSON: {error}",
            store.mount_name()
        ))
    })
}

/// Accepts a serial in hex, in either case and with or without colons (as
/// openssl prints it), and returns it lowercase without colons.
fn normalize_serial(serial: &str) -> Result<String, ErrorBody> {
    let digits: String = serial
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if digits.is_empty()
        || digits.len() > MAX_SERIAL_HEX_LEN
        || !digits.bytes().all(|byte| byte.is_ascii_hexdigit())
    {
        return Err(ErrorBody::invalid_request(format!(
            "invalid serial number {serial:?}: expected 1 to {MAX_SERIAL_HEX_LEN} hex digits, \
             optionally separated by colons"
        )));
    }
    Ok(digits)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::thread;

    use metacrypt_ca::{CertificateFields, public_key_of};
    use metacrypt_protocol::{CaMountConfig, Caller, Profile};
    use tempfile::TempDir;
    use time::Duration;
    use x509_parser::pem::parse_x509_pem;

    use super::*;
    use crate::testing::TestBarrier;

    #[test]
    fn key_types_have_no_debug_or_serialize() {
        crate::secure::assert_not_debug_or_serialize!(LoadedCa, Issuer, CaEngine);
    }

    struct Fixture {
        barrier: TestBarrier,
        store: MountStore,
        engine: Box<dyn Engine>,
        _dir: TempDir,
    }

    impl Fixture {
        fn call(&self, caller: Option<&Caller>, op: CaRequest) -> Result<CaResponse, ErrorBody> {
            call(self.engine.as_ref(), &self.store, caller, op)
        }

        fn reload(&self) -> Box<dyn Engine> {
            CaEngineFactory.load(&self.store).unwrap()
        }

        /// Returns the serial index rows of leaves, ordered by serial.
        fn leaf_serial_rows(&self) -> Vec<(String, String, i64)> {
            self.serial_rows("issuer <> ?2")
        }

        /// Returns the serial index rows of the root and the issuers,
        /// ordered by serial.
        fn root_serial_rows(&self) -> Vec<(String, String, i64)> {
            self.serial_rows("issuer = ?2")
        }

        fn serial_rows(&self, condition: &str) -> Vec<(String, String, i64)> {
            let connection = self.barrier.raw_connection();
            let mut statement = connection
                .prepare(&format!(
                    "SELECT issuer, serial, not_after FROM ca_cert_serials \
                     WHERE scope = ?1 AND {condition} ORDER BY serial"
                ))
                .unwrap();
            statement
                .query_map([self.store.scope(), ROOT_SIGNER], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })
                .unwrap()
                .map(Result::unwrap)
                .collect()
        }
    }

    fn mounted(config: CaMountConfig) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let barrier = TestBarrier::open(&dir.path().join("keyd.db"));
        let store = barrier.mount_store("pki");
        let engine = CaEngineFactory
            .initialize(&store, &MountConfig::Ca(config))
            .unwrap();
        Fixture {
            barrier,
            store,
            engine,
            _dir: dir,
        }
    }

    fn call(
        engine: &dyn Engine,
        store: &MountStore,
        caller: Option<&Caller>,
        op: CaRequest,
    ) -> Result<CaResponse, ErrorBody> {
        let context = RequestContext {
            caller,
            trace_id: "test",
        };
        let EngineResponse::Ca(response) = engine.handle(store, context, EngineRequest::Ca(op))?;
        Ok(response)
    }

    fn alice() -> Caller {
        Caller {
            username: "alice".to_owned(),
            roles: vec!["pki".to_owned()],
            admin: false,
            session: None,
        }
    }

    fn create_issuer(name: &str) -> CaRequest {
        CaRequest::CreateIssuer {
            name: name.to_owned(),
            key_algorithm: None,
            ttl: None,
            constraints: IssuerConstraints::default(),
        }
    }

    fn issue_request(issuer: &str, common_name: &str) -> CaRequest {
        CaRequest::Issue(IssueRequest {
            issuer: issuer.to_owned(),
            profile: Profile::Server,
            common_name: common_name.to_owned(),
            dns_names: Vec::new(),
            ip_addresses: vec!["192.0.2.10".to_owned()],
            ttl: Some("24h".to_owned()),
            key_algorithm: None,
            email_addresses: Vec::new(),
            uris: Vec::new(),
            key_usages: None,
            extended_key_usages: None,
        })
    }

    fn issued(response: CaResponse) -> IssuedCertificate {
        match response {
            CaResponse::Issued(issued) => issued,
            other => panic!("expected Issued, got {other:?}"),
        }
    }

    fn issuer_info(response: CaResponse) -> IssuerInfo {
        match response {
            CaResponse::Issuer(info) => info,
            other => panic!("expected Issuer, got {other:?}"),
        }
    }

    fn chain(response: CaResponse) -> Vec<String> {
        match response {
            CaResponse::Chain(chain) => chain,
            other => panic!("expected Chain, got {other:?}"),
        }
    }

    fn certs(response: CaResponse) -> Vec<CertRecord> {
        match response {
            CaResponse::Certs(certs) => certs,
            other => panic!("expected Certs, got {other:?}"),
        }
    }

    fn root_pem(fixture: &Fixture) -> String {
        match fixture.call(None, CaRequest::GetRoot).unwrap() {
            CaResponse::Certificate(pem) => pem,
            other => panic!("expected Certificate, got {other:?}"),
        }
    }

    fn pem_der(pem: &str) -> Vec<u8> {
        let (_, block) = parse_x509_pem(pem.as_bytes()).unwrap();
        block.contents
    }

    #[test]
    fn root_survives_reload() {
        let fixture = mounted(CaMountConfig {
            common_name: Some("Example Root".to_owned()),
            ..CaMountConfig::default()
        });
        let pem = root_pem(&fixture);
        let stored = fixture.store.get(ROOT_CERT_PATH).unwrap().unwrap();
        assert_eq!(pem_der(&pem), stored.as_slice());
        let fields = CertificateFields::from_der(&stored).unwrap();
        assert_eq!(fields.subject, "CN=Example Root");

        let reloaded = fixture.reload();
        let response = call(reloaded.as_ref(), &fixture.store, None, CaRequest::GetRoot).unwrap();
        assert_eq!(response, CaResponse::Certificate(pem));
    }

    #[test]
    fn bad_mount_config_is_invalid_request() {
        let dir = tempfile::tempdir().unwrap();
        let barrier = TestBarrier::open(&dir.path().join("keyd.db"));
        let store = barrier.mount_store("pki");
        let configs = [
            CaMountConfig {
                ttl: Some("0s".to_owned()),
                ..CaMountConfig::default()
            },
            CaMountConfig {
                ttl: Some("ten years".to_owned()),
                ..CaMountConfig::default()
            },
            CaMountConfig {
                common_name: Some(String::new()),
                ..CaMountConfig::default()
            },
            CaMountConfig {
                organization: Some("line\nbreak".to_owned()),
                ..CaMountConfig::default()
            },
        ];
        for config in configs {
            let error = CaEngineFactory
                .initialize(&store, &MountConfig::Ca(config.clone()))
                .err()
                .expect("invalid config accepted");
            assert_eq!(error.code, ErrorCode::InvalidRequest, "{config:?}: {error}");
        }
        assert!(
            store.list("").unwrap().is_empty(),
            "a failed mount stored entries"
        );
    }

    #[test]
    fn issuers_are_created_once() {
        let fixture = mounted(CaMountConfig::default());
        let info = issuer_info(fixture.call(Some(&alice()), create_issuer("web")).unwrap());
        assert_eq!(info.name, "web");
        assert_eq!(info.key_algorithm, KeyAlgorithm::EcdsaP256);
        assert_eq!(info.subject, "CN=Metacrypt Root CA (pki) Issuer web");
        assert_eq!(info.serial_number.len(), 32);

        let error = fixture.call(None, create_issuer("web")).unwrap_err();
        assert_eq!(error.code, ErrorCode::Conflict, "{error}");
        assert!(error.message.contains("web"), "{error}");

        let error = fixture.call(None, create_issuer("Web/../x")).unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidRequest, "{error}");

        let fetched = fixture
            .call(
                None,
                CaRequest::GetIssuer {
                    name: "web".to_owned(),
                },
            )
            .unwrap();
        assert_eq!(issuer_info(fetched), info);
        let error = fixture
            .call(
                None,
                CaRequest::GetIssuer {
                    name: "nope".to_owned(),
                },
            )
            .unwrap_err();
        assert_eq!(error.code, ErrorCode::NotFound, "{error}");

        let meta = fixture
            .store
            .get(&issuer_path("web", "meta"))
            .unwrap()
            .unwrap();
        let meta: IssuerMeta = serde_json::from_slice(&meta).unwrap();
        assert_eq!(meta.created_by, "alice");
        assert_eq!(meta.key_algorithm, KeyAlgorithm::EcdsaP256);
    }

    #[test]
    fn issuer_options_are_applied() {
        let fixture = mounted(CaMountConfig::default());
        let request = CaRequest::CreateIssuer {
            name: "ed".to_owned(),
            key_algorithm: Some(KeyAlgorithm::Ed25519),
            ttl: Some("30d".to_owned()),
            constraints: IssuerConstraints::default(),
        };
        let info = issuer_info(fixture.call(None, request).unwrap());
        assert_eq!(info.key_algorithm, KeyAlgorithm::Ed25519);
        let fields = CertificateFields::from_der(&pem_der(&info.certificate)).unwrap();
        let validity = fields.not_after - fields.not_before;
        assert_eq!(validity, Duration::days(30) + Duration::seconds(30));

        let request = CaRequest::CreateIssuer {
            name: "bad".to_owned(),
            key_algorithm: None,
            ttl: Some("30".to_owned()),
            constraints: IssuerConstraints::default(),
        };
        let error = fixture.call(None, request).unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidRequest, "{error}");
        assert!(
            fixture
                .store
                .list(ISSUERS_PREFIX)
                .unwrap()
                .iter()
                .all(|path| !path.contains("bad"))
        );
    }

    #[test]
    fn chain_lists_issuers_then_root() {
        let fixture = mounted(CaMountConfig::default());
        let b = issuer_info(fixture.call(None, create_issuer("b")).unwrap());
        let a = issuer_info(fixture.call(None, create_issuer("a")).unwrap());
        let root = root_pem(&fixture);

        let all = chain(
            fixture
                .call(None, CaRequest::GetChain { issuer: None })
                .unwrap(),
        );
        assert_eq!(
            all,
            [a.certificate.clone(), b.certificate.clone(), root.clone()]
        );
        let one = chain(
            fixture
                .call(
                    None,
                    CaRequest::GetChain {
                        issuer: Some("b".to_owned()),
                    },
                )
                .unwrap(),
        );
        assert_eq!(one, [b.certificate.clone(), root.clone()]);
        let error = fixture
            .call(
                None,
                CaRequest::GetChain {
                    issuer: Some("zz".to_owned()),
                },
            )
            .unwrap_err();
        assert_eq!(error.code, ErrorCode::NotFound, "{error}");

        let listed = match fixture.call(None, CaRequest::ListIssuers).unwrap() {
            CaResponse::Issuers(list) => list,
            other => panic!("expected Issuers, got {other:?}"),
        };
        assert_eq!(listed, [a, b]);
    }

    #[test]
    fn issue_stores_record_without_key() {
        let fixture = mounted(CaMountConfig::default());
        fixture.call(None, create_issuer("web")).unwrap();
        let leaf = issued(
            fixture
                .call(Some(&alice()), issue_request("web", "App.Example.com"))
                .unwrap(),
        );

        assert_eq!(leaf.private_key_type, "ec");
        assert!(
            leaf.private_key
                .expose()
                .starts_with("-----BEGIN PRIVATE KEY-----")
        );
        assert_eq!(leaf.chain.len(), 2);
        assert_eq!(leaf.chain[0], leaf.issuing_ca);
        assert_eq!(leaf.chain[1], root_pem(&fixture));
        assert!(leaf.warnings.is_empty(), "{:?}", leaf.warnings);

        let cert_der = pem_der(&leaf.certificate);
        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).unwrap();
        let key_der = pem_der(leaf.private_key.expose());
        assert_eq!(
            public_key_of(KeyAlgorithm::EcdsaP256, &key_der).unwrap(),
            cert.public_key().subject_public_key.data.as_ref(),
            "the returned key belongs to the certificate"
        );

        let stored = fixture
            .store
            .get(&cert_path(&leaf.serial_number))
            .unwrap()
            .unwrap();
        let stored_text = String::from_utf8(stored.to_vec()).unwrap();
        assert!(
            !stored_text.contains("PRIVATE KEY"),
            "the record contains a key"
        );
        let key_body: String = leaf.private_key.expose().lines().nth(1).unwrap().to_owned();
        assert!(
            !stored_text.contains(&key_body),
            "the record contains key material"
        );

        let record = match fixture
            .call(
                None,
                CaRequest::GetCert {
                    serial: leaf.serial_number.clone(),
                },
            )
            .unwrap()
        {
            CaResponse::Cert(record) => record,
            other => panic!("expected Cert, got {other:?}"),
        };
        assert_eq!(record.serial_number, leaf.serial_number);
        assert_eq!(record.issuer, "web");
        assert_eq!(record.profile, Profile::Server);
        assert_eq!(record.common_name, "app.example.com");
        assert_eq!(record.dns_names, ["app.example.com"]);
        assert_eq!(record.ip_addresses, ["192.0.2.10"]);
        assert_eq!(record.key_algorithm, KeyAlgorithm::EcdsaP256);
        assert_eq!(record.issued_by, "alice");
        assert_eq!(record.not_before, leaf.not_before);
        assert_eq!(record.not_after, leaf.not_after);
        assert_eq!(record.certificate, leaf.certificate);

        let fields = CertificateFields::from_der(&cert_der).unwrap();
        assert_eq!(
            fixture.leaf_serial_rows(),
            [(
                "web".to_owned(),
                leaf.serial_number.clone(),
                fields.not_after.unix_timestamp()
            )]
        );
    }

    #[test]
    fn anonymous_issue_records_dash() {
        let fixture = mounted(CaMountConfig::default());
        fixture.call(None, create_issuer("web")).unwrap();
        let leaf = issued(
            fixture
                .call(None, issue_request("web", "app.example.com"))
                .unwrap(),
        );
        let records = certs(
            fixture
                .call(
                    None,
                    CaRequest::ListCerts {
                        issuer: None,
                        limit: None,
                        after: None,
                    },
                )
                .unwrap(),
        );
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].serial_number, leaf.serial_number);
        assert_eq!(records[0].issued_by, "-");
    }

    #[test]
    fn bad_issue_requests_store_nothing() {
        let fixture = mounted(CaMountConfig::default());
        fixture.call(None, create_issuer("web")).unwrap();
        let cases = [
            (
                issue_request("nope", "app.example.com"),
                ErrorCode::NotFound,
            ),
            (
                issue_request("Bad Name", "app.example.com"),
                ErrorCode::InvalidRequest,
            ),
            (
                issue_request("web", "Example Server A"),
                ErrorCode::InvalidRequest,
            ),
            (
                issue_request("web", "*.*.example.com"),
                ErrorCode::InvalidRequest,
            ),
        ];
        for (request, code) in cases {
            let error = fixture.call(None, request.clone()).unwrap_err();
            assert_eq!(error.code, code, "{request:?}: {error}");
        }
        assert!(fixture.store.list(CERTS_PREFIX).unwrap().is_empty());
        assert!(fixture.leaf_serial_rows().is_empty());
    }

    #[test]
    fn get_cert_normalizes_serial() {
        let fixture = mounted(CaMountConfig::default());
        fixture.call(None, create_issuer("web")).unwrap();
        let leaf = issued(
            fixture
                .call(None, issue_request("web", "app.example.com"))
                .unwrap(),
        );
        let spelled = leaf
            .serial_number
            .as_bytes()
            .chunks(2)
            .map(|pair| String::from_utf8_lossy(pair).to_uppercase())
            .collect::<Vec<_>>()
            .join(":");
        let response = fixture
            .call(None, CaRequest::GetCert { serial: spelled })
            .unwrap();
        assert!(
            matches!(response, CaResponse::Cert(record) if record.serial_number == leaf.serial_number)
        );

        for (serial, code) in [
            ("xyz", ErrorCode::InvalidRequest),
            ("", ErrorCode::InvalidRequest),
            ("../root/key", ErrorCode::InvalidRequest),
            (&"a".repeat(41), ErrorCode::InvalidRequest),
            ("0123456789abcdef", ErrorCode::NotFound),
        ] {
            let error = fixture
                .call(
                    None,
                    CaRequest::GetCert {
                        serial: serial.to_owned(),
                    },
                )
                .unwrap_err();
            assert_eq!(error.code, code, "{serial:?}: {error}");
        }
    }

    fn list_page(fixture: &Fixture, limit: Option<u32>, after: Option<&str>) -> Vec<CertRecord> {
        certs(
            fixture
                .call(
                    None,
                    CaRequest::ListCerts {
                        issuer: None,
                        limit,
                        after: after.map(str::to_owned),
                    },
                )
                .unwrap(),
        )
    }

    fn list_error(fixture: &Fixture, limit: Option<u32>, after: Option<&str>) -> ErrorBody {
        fixture
            .call(
                None,
                CaRequest::ListCerts {
                    issuer: None,
                    limit,
                    after: after.map(str::to_owned),
                },
            )
            .unwrap_err()
    }

    fn serials_of(records: &[CertRecord]) -> Vec<String> {
        records
            .iter()
            .map(|record| record.serial_number.clone())
            .collect()
    }

    #[test]
    fn list_certs_pages_follow_serials() {
        let fixture = mounted(CaMountConfig::default());
        fixture.call(None, create_issuer("web")).unwrap();
        for index in 0..5 {
            fixture
                .call(
                    None,
                    issue_request("web", &format!("app{index}.example.com")),
                )
                .unwrap();
        }
        let all = serials_of(&list_page(&fixture, None, None));
        let mut sorted = all.clone();
        sorted.sort_unstable_by(|a, b| serial_order(a, b));
        assert_eq!(all, sorted, "records are in ascending serial order");
        assert_eq!(all.len(), 5);

        let mut paged = Vec::new();
        let mut page_lengths = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = list_page(&fixture, Some(2), after.as_deref());
            page_lengths.push(page.len());
            let Some(last) = page.last() else {
                break;
            };
            after = Some(last.serial_number.clone());
            paged.extend(serials_of(&page));
        }
        assert_eq!(page_lengths, [2, 2, 1, 0]);
        assert_eq!(paged, all);

        // `after` accepts the openssl form: uppercase with colons.
        let openssl_form = all[2]
            .to_ascii_uppercase()
            .as_bytes()
            .chunks(2)
            .map(|pair| String::from_utf8_lossy(pair).into_owned())
            .collect::<Vec<_>>()
            .join(":");
        let rest = serials_of(&list_page(&fixture, None, Some(&openssl_form)));
        assert_eq!(rest, all[3..]);
    }

    #[test]
    fn list_certs_after_unknown_serial_is_position() {
        let fixture = mounted(CaMountConfig::default());
        fixture.call(None, create_issuer("web")).unwrap();
        for index in 0..3 {
            fixture
                .call(
                    None,
                    issue_request("web", &format!("app{index}.example.com")),
                )
                .unwrap();
        }
        let all = serials_of(&list_page(&fixture, None, None));
        assert_eq!(serials_of(&list_page(&fixture, None, Some("00"))), all);
        let past_every_serial = "f".repeat(MAX_SERIAL_HEX_LEN);
        assert!(list_page(&fixture, None, Some(&past_every_serial)).is_empty());
    }

    #[test]
    fn list_certs_rejects_out_of_range_limit() {
        let fixture = mounted(CaMountConfig::default());
        for limit in [0, MAX_LIST_LIMIT + 1, u32::MAX] {
            let error = list_error(&fixture, Some(limit), None);
            assert_eq!(error.code, ErrorCode::InvalidRequest, "{error}");
            assert!(
                error.message.contains(&format!("invalid limit {limit}")),
                "{error}"
            );
        }
        assert!(list_page(&fixture, Some(MAX_LIST_LIMIT), None).is_empty());
        assert!(list_page(&fixture, Some(1), None).is_empty());
    }

    #[test]
    fn list_certs_rejects_invalid_after() {
        let fixture = mounted(CaMountConfig::default());
        for after in ["", "xyz", &"a".repeat(MAX_SERIAL_HEX_LEN + 1)] {
            let error = list_error(&fixture, None, Some(after));
            assert_eq!(error.code, ErrorCode::InvalidRequest, "{error}");
            assert!(error.message.contains(&format!("{after:?}")), "{error}");
        }
    }

    #[test]
    fn serial_order_is_numeric() {
        let mut serials = vec!["100", "ff", "00fe", "0101", "1"];
        serials.sort_unstable_by(|a, b| serial_order(a, b));
        assert_eq!(serials, ["1", "00fe", "ff", "100", "0101"]);
        assert!(serial_order("00ff", "ff").is_eq());
    }

    /// Stores `count` records of the largest size a leaf can have (100 SANs
    /// of 253 characters) directly in the barrier, with fixed-width serials
    /// as the engine draws them.
    fn store_large_records(fixture: &Fixture, count: usize) -> Vec<String> {
        let dns_names: Vec<String> = (0..100)
            .map(|index| format!("{index:03}{}", "a".repeat(250)))
            .collect();
        // A leaf with 100 such SANs is about 26 KB of DER, so about 35 KB of
        // PEM.
        let certificate = format!(
            "-----BEGIN CERTIFICATE-----\n{}-----END CERTIFICATE-----\n",
            format!("{}\n", "A".repeat(64)).repeat(560)
        );
        let mut serials = Vec::new();
        let mut batch = WriteBatch::new();
        for index in 0..count {
            let serial_number = format!("{:032x}", (index as u128 + 1) << 100);
            let record = CertRecord {
                serial_number: serial_number.clone(),
                issuer: "web".to_owned(),
                profile: Profile::Server,
                common_name: dns_names[0].clone(),
                dns_names: dns_names.clone(),
                ip_addresses: Vec::new(),
                email_addresses: Vec::new(),
                uris: Vec::new(),
                key_algorithm: KeyAlgorithm::EcdsaP256,
                not_before: "2026-01-01T00:00:00Z".to_owned(),
                not_after: "2026-04-01T00:00:00Z".to_owned(),
                issued_by: "alice".to_owned(),
                certificate: certificate.clone(),
                revoked_at: None,
                revocation_reason: None,
                csr_signed: false,
                renewed_from: None,
                renewed_by: None,
            };
            batch.put(
                &cert_path(&serial_number),
                &serde_json::to_vec(&record).unwrap(),
            );
            batch.insert_cert_serial("web", &serial_number, 1_775_001_600, Some("server"));
            serials.push(serial_number);
        }
        fixture.store.commit(batch).unwrap();
        serials
    }

    /// Stores a copy of `template` under a new serial with the given
    /// fields, with its index row, as `store_leaf` does.
    fn store_variant(
        fixture: &Fixture,
        template: &CertRecord,
        serial: u128,
        profile: Profile,
        common_name: &str,
        not_after: OffsetDateTime,
    ) -> CertRecord {
        let mut record = template.clone();
        let hex = format!("{serial:x}");
        // Whole octets, as serials of issued certificates are.
        record.serial_number = format!("{hex:0>width$}", width = hex.len().div_ceil(2) * 2);
        record.profile = profile;
        record.common_name = common_name.to_owned();
        record.not_after = format_rfc3339(not_after);
        let mut batch = WriteBatch::new();
        batch.put(
            &cert_path(&record.serial_number),
            &serde_json::to_vec(&record).unwrap(),
        );
        batch.insert_cert_serial(
            &record.issuer,
            &record.serial_number,
            not_after.unix_timestamp(),
            Some(profile.as_str()),
        );
        batch.set_cert_common_name(&record.issuer, &record.serial_number, common_name);
        fixture.store.commit(batch).unwrap();
        record
    }

    /// Issues through the engine and stores variants so that every filter
    /// value occurs: two issuers, three profiles, expired, valid and
    /// revoked leaves, and several common names.
    fn mixed_certificates(fixture: &Fixture) {
        fixture.call(None, create_issuer("a")).unwrap();
        fixture.call(None, create_issuer("b")).unwrap();
        let mut templates = Vec::new();
        for issuer in ["a", "b"] {
            let serial = issued(
                fixture
                    .call(None, issue_request(issuer, "seed.example.com"))
                    .unwrap(),
            )
            .serial_number;
            templates.push(get_record(fixture, &serial));
        }
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        let names = [
            "api.example.com",
            "db.internal",
            "API-gw.example.com",
            "cache",
        ];
        let profiles = [Profile::Server, Profile::Client, Profile::Peer];
        for index in 0..48u128 {
            let template = &templates[(index % 2) as usize];
            let days = i64::try_from(index % 7).unwrap() * 20 - 40;
            // Serials of several lengths, so that numeric and text order
            // differ.
            let serial = (index + 1) * 0x1_0000_0001 + (index % 3) * (1 << 90);
            let record = store_variant(
                fixture,
                template,
                serial,
                profiles[(index % 3) as usize],
                names[(index % 4) as usize],
                now + Duration::days(days),
            );
            if index % 5 == 0 {
                fixture
                    .call(
                        None,
                        CaRequest::Revoke {
                            serial: record.serial_number.clone(),
                            reason: None,
                            issuer: None,
                        },
                    )
                    .unwrap();
            }
        }
    }

    fn get_record(fixture: &Fixture, serial: &str) -> CertRecord {
        match fixture
            .call(
                None,
                CaRequest::GetCert {
                    serial: serial.to_owned(),
                },
            )
            .unwrap()
        {
            CaResponse::Cert(record) => record,
            other => panic!("expected Cert, got {other:?}"),
        }
    }

    /// Every filter combination the tests compare.
    fn filters() -> Vec<CertFilter> {
        let in_30_days = format_rfc3339(OffsetDateTime::now_utc() + Duration::days(30));
        let mut filters = Vec::new();
        for issuer in [None, Some("a".to_owned())] {
            for profile in [None, Some(Profile::Peer)] {
                for state in [
                    None,
                    Some(CertState::Valid),
                    Some(CertState::Expired),
                    Some(CertState::Revoked),
                ] {
                    for common_name in [None, Some("api".to_owned())] {
                        for expiring_before in [None, Some(in_30_days.clone())] {
                            filters.push(CertFilter {
                                issuer: issuer.clone(),
                                profile,
                                state,
                                common_name: common_name.clone(),
                                expiring_before,
                            });
                        }
                    }
                }
            }
        }
        filters
    }

    type ListFn =
        fn(&MountStore, &RecordFilter<'_>, u32, Option<&str>) -> Result<Vec<CertRecord>, ErrorBody>;

    /// Lists every page with `list` and returns the serials in order.
    fn all_pages(fixture: &Fixture, filter: &CertFilter, limit: u32, list: ListFn) -> Vec<String> {
        let expiring_before = filter.expiring_before.as_deref().map(|text| {
            OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).unwrap()
        });
        let matcher = RecordFilter {
            filter,
            expiring_before,
            common_name: filter.common_name.as_deref().map(str::to_lowercase),
            now: OffsetDateTime::now_utc(),
        };
        let mut serials = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = list(&fixture.store, &matcher, limit, after.as_deref()).unwrap();
            let Some(last) = page.last() else {
                return serials;
            };
            after = Some(last.serial_number.clone());
            serials.extend(page.into_iter().map(|record| record.serial_number));
        }
    }

    fn filtered_serials(fixture: &Fixture, filter: &CertFilter) -> Vec<String> {
        serials_of(&certs(
            fixture
                .call(
                    None,
                    CaRequest::ListCertsFiltered {
                        filter: filter.clone(),
                        limit: Some(MAX_LIST_LIMIT),
                        after: None,
                    },
                )
                .unwrap(),
        ))
    }

    #[test]
    fn indexed_list_equals_full_scan() {
        let fixture = mounted(CaMountConfig::default());
        mixed_certificates(&fixture);
        assert!(!fixture.store.has_unindexed_certs().unwrap());
        let mut nonempty = 0;
        for filter in filters() {
            let scanned = all_pages(&fixture, &filter, 1000, list_by_scan);
            for limit in [1, 3, 1000] {
                let indexed = all_pages(&fixture, &filter, limit, list_by_index);
                assert_eq!(indexed, scanned, "filter {filter:?}, limit {limit}");
            }
            assert_eq!(filtered_serials(&fixture, &filter), scanned, "{filter:?}");
            nonempty += usize::from(!scanned.is_empty());
        }
        // The data set must exercise the filters, not compare empty lists.
        assert!(nonempty > 40, "only {nonempty} filters matched anything");
        let revoked = CertFilter {
            state: Some(CertState::Revoked),
            ..CertFilter::default()
        };
        assert_eq!(filtered_serials(&fixture, &revoked).len(), 10);
        let now = OffsetDateTime::now_utc();
        for issuer in ["a", "b"] {
            let scanned = count_active_by_scan(&fixture.store, issuer, now).unwrap();
            assert!(scanned > 0);
            assert_eq!(
                fixture
                    .store
                    .count_active_certs(issuer, now.unix_timestamp())
                    .unwrap(),
                scanned,
                "issuer {issuer}"
            );
        }
    }

    #[test]
    fn rows_stored_before_the_index_are_filled_on_load() {
        let fixture = mounted(CaMountConfig::default());
        mixed_certificates(&fixture);
        let expected: Vec<(CertFilter, Vec<String>)> = filters()
            .into_iter()
            .map(|filter| {
                let serials = filtered_serials(&fixture, &filter);
                (filter, serials)
            })
            .collect();
        let indexed_rows = |condition: &str| -> i64 {
            fixture
                .barrier
                .raw_connection()
                .query_row(
                    &format!(
                        "SELECT count(*) FROM ca_cert_serials \
                         WHERE issuer <> '@root' AND {condition}"
                    ),
                    [],
                    |row| row.get(0),
                )
                .unwrap()
        };
        let before = (
            indexed_rows("profile = 'peer'"),
            indexed_rows("revoked = 1"),
        );
        assert_eq!(before.1, 10);
        // The state in which the migration leaves rows it cannot decrypt.
        fixture
            .barrier
            .raw_connection()
            .execute(
                "UPDATE ca_cert_serials SET profile = NULL, revoked = 0, common_name = NULL, indexed = 0 \
                 WHERE issuer <> '@root'",
                [],
            )
            .unwrap();
        assert!(fixture.store.has_unindexed_certs().unwrap());
        // Before the fill, listing reads the records and still answers right.
        for (filter, serials) in &expected {
            assert_eq!(&filtered_serials(&fixture, filter), serials, "{filter:?}");
        }
        let engine = fixture.reload();
        assert!(!fixture.store.has_unindexed_certs().unwrap());
        assert_eq!(indexed_rows("indexed = 0"), 0);
        assert_eq!(
            (
                indexed_rows("profile = 'peer'"),
                indexed_rows("revoked = 1")
            ),
            before
        );
        for (filter, serials) in &expected {
            let listed = serials_of(&certs(
                call(
                    engine.as_ref(),
                    &fixture.store,
                    None,
                    CaRequest::ListCertsFiltered {
                        filter: filter.clone(),
                        limit: Some(MAX_LIST_LIMIT),
                        after: None,
                    },
                )
                .unwrap(),
            ));
            assert_eq!(&listed, serials, "{filter:?}");
        }
    }

    #[test]
    fn list_certs_page_fits_frame() {
        let fixture = mounted(CaMountConfig::default());
        let stored = store_large_records(&fixture, 80);

        let first = list_page(&fixture, Some(MAX_LIST_LIMIT), None);
        assert!(
            first.len() < stored.len(),
            "the page was not cut at the size budget"
        );
        let frame = metacrypt_protocol::encode_frame(&CaResponse::Certs(first.clone()))
            .expect("the page fits in one frame");
        assert!(
            frame.len() <= LIST_PAGE_BUDGET + 64,
            "{} bytes",
            frame.len()
        );

        let record_frame = metacrypt_protocol::encode_frame(&first[0]).unwrap();
        assert!(
            encoded_size_bound(&first[0]) >= record_frame.len() - 4,
            "the bound {} is below the encoded size {}",
            encoded_size_bound(&first[0]),
            record_frame.len() - 4
        );

        let last = first.last().unwrap().serial_number.clone();
        let second = list_page(&fixture, Some(MAX_LIST_LIMIT), Some(&last));
        let third_after = second.last().unwrap().serial_number.clone();
        let third = list_page(&fixture, Some(MAX_LIST_LIMIT), Some(&third_after));
        let mut listed = serials_of(&first);
        listed.extend(serials_of(&second));
        listed.extend(serials_of(&third));
        assert_eq!(listed, stored);
    }

    #[test]
    fn list_certs_filters_by_issuer() {
        let fixture = mounted(CaMountConfig::default());
        fixture.call(None, create_issuer("a")).unwrap();
        fixture.call(None, create_issuer("b")).unwrap();
        for issuer in ["a", "a", "b"] {
            fixture
                .call(None, issue_request(issuer, "app.example.com"))
                .unwrap();
        }
        let all = certs(
            fixture
                .call(
                    None,
                    CaRequest::ListCerts {
                        issuer: None,
                        limit: None,
                        after: None,
                    },
                )
                .unwrap(),
        );
        assert_eq!(all.len(), 3);
        let mut serials: Vec<&str> = all
            .iter()
            .map(|record| record.serial_number.as_str())
            .collect();
        let listed_order = serials.clone();
        serials.sort_unstable();
        assert_eq!(listed_order, serials, "records are in serial order");

        let of_a = certs(
            fixture
                .call(
                    None,
                    CaRequest::ListCerts {
                        issuer: Some("a".to_owned()),
                        limit: None,
                        after: None,
                    },
                )
                .unwrap(),
        );
        assert_eq!(of_a.len(), 2);
        assert!(of_a.iter().all(|record| record.issuer == "a"));
        let of_b = certs(
            fixture
                .call(
                    None,
                    CaRequest::ListCerts {
                        issuer: Some("b".to_owned()),
                        limit: None,
                        after: None,
                    },
                )
                .unwrap(),
        );
        assert_eq!(of_b.len(), 1);
        let error = fixture
            .call(
                None,
                CaRequest::ListCerts {
                    issuer: Some("c".to_owned()),
                    limit: None,
                    after: None,
                },
            )
            .unwrap_err();
        assert_eq!(error.code, ErrorCode::NotFound, "{error}");
    }

    #[test]
    fn issuers_survive_reload() {
        let fixture = mounted(CaMountConfig::default());
        let info = issuer_info(fixture.call(None, create_issuer("web")).unwrap());
        let first = issued(
            fixture
                .call(None, issue_request("web", "app.example.com"))
                .unwrap(),
        );

        let reloaded = fixture.reload();
        let fetched = call(
            reloaded.as_ref(),
            &fixture.store,
            None,
            CaRequest::GetIssuer {
                name: "web".to_owned(),
            },
        )
        .unwrap();
        assert_eq!(issuer_info(fetched), info);
        let second = issued(
            call(
                reloaded.as_ref(),
                &fixture.store,
                None,
                issue_request("web", "app.example.com"),
            )
            .unwrap(),
        );
        assert_eq!(second.issuing_ca, info.certificate);
        assert_ne!(second.serial_number, first.serial_number);
        let old = call(
            reloaded.as_ref(),
            &fixture.store,
            None,
            CaRequest::GetCert {
                serial: first.serial_number.clone(),
            },
        );
        assert!(old.is_ok(), "{old:?}");
    }

    #[test]
    fn expired_issuer_issues_nothing() {
        let fixture = mounted(CaMountConfig::default());
        // A root created three hours ago signs an issuer two hours ago with a
        // one-hour TTL, and both replace what the mount stored.
        let now = OffsetDateTime::now_utc();
        let root = create_root("pki", &CaMountConfig::default(), now - Duration::hours(3)).unwrap();
        let options = IssuerOptions {
            name: "old",
            common_name: None,
            key_algorithm: None,
            ttl: Some("1h"),
            policy: None,
            ca_issuers_url: None,
        };
        let old = root
            .certificate
            .create_issuer(root.key.pkcs8_der(), &options, now - Duration::hours(2))
            .unwrap();
        let mut batch = WriteBatch::new();
        batch.put(ROOT_CERT_PATH, root.certificate.der());
        batch.put(ROOT_KEY_PATH, root.key.pkcs8_der());
        batch.put(&issuer_path("old", "cert"), old.certificate.der());
        batch.put(&issuer_path("old", "key"), old.key.pkcs8_der());
        fixture.store.commit(batch).unwrap();

        let engine = fixture.reload();
        let error = call(
            engine.as_ref(),
            &fixture.store,
            None,
            issue_request("old", "app.example.com"),
        )
        .unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidRequest, "{error}");
        assert!(error.message.contains("expired"), "{error}");
        assert!(fixture.store.list(CERTS_PREFIX).unwrap().is_empty());
        assert!(fixture.leaf_serial_rows().is_empty());
    }

    #[test]
    fn reused_serial_is_rejected() {
        let fixture = mounted(CaMountConfig::default());
        fixture.call(None, create_issuer("web")).unwrap();
        let leaf = issued(
            fixture
                .call(None, issue_request("web", "app.example.com"))
                .unwrap(),
        );
        let stored = fixture
            .store
            .get(&cert_path(&leaf.serial_number))
            .unwrap()
            .unwrap();
        let record: CertRecord = serde_json::from_slice(&stored).unwrap();
        let issued_leaf = IssuedLeaf {
            der: pem_der(&leaf.certificate),
            pem: leaf.certificate.clone(),
            fields: CertificateFields::from_der(&pem_der(&leaf.certificate)).unwrap(),
            warnings: Vec::new(),
        };

        let mut changed = record.clone();
        changed.common_name = "other.example.com".to_owned();
        let error = store_leaf(&fixture.store, &changed, &issued_leaf).unwrap_err();
        assert!(matches!(error, BarrierError::Duplicate { .. }), "{error:?}");

        // Another issuer has no index row for the serial, and the record
        // alone rejects it.
        changed.issuer = "other".to_owned();
        let error = store_leaf(&fixture.store, &changed, &issued_leaf).unwrap_err();
        assert!(
            matches!(&error, BarrierError::Duplicate { what } if what.contains("certs/")),
            "{error:?}"
        );

        // The serial index alone also rejects a reuse by the same issuer.
        let mut batch = WriteBatch::new();
        batch.insert_cert_serial("web", &leaf.serial_number, 0, None);
        let error = fixture.store.commit(batch).unwrap_err();
        assert!(matches!(error, BarrierError::Duplicate { .. }), "{error:?}");

        let unchanged = fixture
            .store
            .get(&cert_path(&leaf.serial_number))
            .unwrap()
            .unwrap();
        assert_eq!(unchanged.as_slice(), stored.as_slice());
    }

    #[test]
    fn damaged_issuer_fails_load() {
        let fixture = mounted(CaMountConfig::default());
        fixture.call(None, create_issuer("a")).unwrap();
        fixture.call(None, create_issuer("b")).unwrap();

        let key_a = fixture
            .store
            .get(&issuer_path("a", "key"))
            .unwrap()
            .unwrap();
        let mut batch = WriteBatch::new();
        batch.put(&issuer_path("b", "key"), &key_a);
        fixture.store.commit(batch).unwrap();
        let error = CaEngineFactory
            .load(&fixture.store)
            .err()
            .expect("mismatched key loaded");
        assert_eq!(error.code, ErrorCode::Internal);
        assert!(error.message.contains("does not match"), "{error}");

        let mut batch = WriteBatch::new();
        batch.delete(&issuer_path("b", "key"));
        fixture.store.commit(batch).unwrap();
        let error = CaEngineFactory
            .load(&fixture.store)
            .err()
            .expect("missing key loaded");
        assert_eq!(error.code, ErrorCode::Internal);
        assert!(error.message.contains("issuers/b/key"), "{error}");
    }

    #[test]
    fn sealed_barrier_rejects_issue() {
        let fixture = mounted(CaMountConfig::default());
        fixture.call(None, create_issuer("web")).unwrap();
        fixture.barrier.seal();
        let error = fixture
            .call(None, issue_request("web", "app.example.com"))
            .unwrap_err();
        assert_eq!(error.code, ErrorCode::Sealed, "{error}");
    }

    #[test]
    fn concurrent_issues_get_distinct_serials() {
        const THREADS: usize = 6;
        const PER_THREAD: usize = 20;
        let fixture = mounted(CaMountConfig::default());
        fixture.call(None, create_issuer("web")).unwrap();

        let serials: Vec<String> = thread::scope(|scope| {
            let creator = scope.spawn(|| {
                for index in 0..4 {
                    fixture
                        .call(None, create_issuer(&format!("extra-{index}")))
                        .unwrap();
                }
            });
            let workers: Vec<_> = (0..THREADS)
                .map(|_| {
                    scope.spawn(|| {
                        (0..PER_THREAD)
                            .map(|_| {
                                issued(
                                    fixture
                                        .call(None, issue_request("web", "app.example.com"))
                                        .unwrap(),
                                )
                                .serial_number
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            creator.join().unwrap();
            workers
                .into_iter()
                .flat_map(|worker| worker.join().unwrap())
                .collect()
        });

        let unique: HashSet<&String> = serials.iter().collect();
        assert_eq!(unique.len(), THREADS * PER_THREAD);
        let records = list_page(&fixture, Some(MAX_LIST_LIMIT), None);
        assert_eq!(records.len(), THREADS * PER_THREAD);
        assert_eq!(fixture.leaf_serial_rows().len(), THREADS * PER_THREAD);
        let issuers = match fixture.call(None, CaRequest::ListIssuers).unwrap() {
            CaResponse::Issuers(list) => list,
            other => panic!("expected Issuers, got {other:?}"),
        };
        assert_eq!(issuers.len(), 5);
    }

    #[test]
    fn serial_spellings_normalize() {
        assert_eq!(normalize_serial("0A:bC").unwrap(), "0abc");
        assert_eq!(normalize_serial("7fab").unwrap(), "7fab");
        assert!(normalize_serial(":").is_err());
        assert!(normalize_serial("12 34").is_err());
    }

    /// Stores `cert_der` and `key_der` as issuer `name`, replacing what the
    /// mount held under that name.
    fn replace_issuer(fixture: &Fixture, name: &str, cert_der: &[u8], key_der: &[u8]) {
        let mut batch = WriteBatch::new();
        batch.put(&issuer_path(name, "cert"), cert_der);
        batch.put(&issuer_path(name, "key"), key_der);
        fixture.store.commit(batch).unwrap();
    }

    /// Builds an issuer certificate signed with `signer_pkcs8` whose
    /// authorityKeyIdentifier is `authority_key_id`, and returns it with its
    /// key, both DER.
    fn forged_issuer(signer_pkcs8: &[u8], authority_key_id: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let signer = rcgen::KeyPair::try_from(signer_pkcs8).unwrap();
        let mut signer_params = rcgen::CertificateParams::default();
        signer_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Metacrypt Root CA (pki)");
        signer_params.key_identifier_method =
            rcgen::KeyIdMethod::PreSpecified(authority_key_id.to_vec());
        let issuer = rcgen::Issuer::from_params(&signer_params, &signer);

        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let now = OffsetDateTime::now_utc();
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Forged Issuer");
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(1);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        params.use_authority_key_identifier_extension = true;
        let certificate = params.signed_by(&key, &issuer).unwrap();
        (certificate.der().to_vec(), key.serialize_der())
    }

    fn root_subject_key_id(fixture: &Fixture) -> Vec<u8> {
        let der = fixture.store.get(ROOT_CERT_PATH).unwrap().unwrap();
        CaCertificate::from_der(&der)
            .unwrap()
            .subject_key_id()
            .to_vec()
    }

    #[test]
    fn issuer_of_other_root_fails_load() {
        let fixture = mounted(CaMountConfig::default());
        fixture.call(None, create_issuer("web")).unwrap();
        let now = OffsetDateTime::now_utc();
        let other_root = create_root("pki", &CaMountConfig::default(), now).unwrap();
        let options = IssuerOptions {
            name: "web",
            common_name: None,
            key_algorithm: None,
            ttl: None,
            policy: None,
            ca_issuers_url: None,
        };
        let foreign = other_root
            .certificate
            .create_issuer(other_root.key.pkcs8_der(), &options, now)
            .unwrap();
        replace_issuer(
            &fixture,
            "web",
            foreign.certificate.der(),
            foreign.key.pkcs8_der(),
        );

        let error = CaEngineFactory
            .load(&fixture.store)
            .err()
            .expect("an issuer of another root loaded");
        assert_eq!(error.code, ErrorCode::Internal);
        assert!(error.message.contains("issuers/web/cert"), "{error}");
        assert!(error.message.contains("authorityKeyIdentifier"), "{error}");
    }

    #[test]
    fn issuer_with_other_authority_key_id_fails_load() {
        let fixture = mounted(CaMountConfig::default());
        let root_key = fixture.store.get(ROOT_KEY_PATH).unwrap().unwrap();
        // Signed by this mount's root key, but naming another key.
        let (cert_der, key_der) = forged_issuer(&root_key, &[0xab; 20]);
        replace_issuer(&fixture, "forged", &cert_der, &key_der);

        let error = CaEngineFactory
            .load(&fixture.store)
            .err()
            .expect("an issuer with a foreign authorityKeyIdentifier loaded");
        assert_eq!(error.code, ErrorCode::Internal);
        assert!(error.message.contains("issuers/forged/cert"), "{error}");
        assert!(error.message.contains("authorityKeyIdentifier"), "{error}");
    }

    #[test]
    fn issuer_signed_by_other_key_fails_load() {
        let fixture = mounted(CaMountConfig::default());
        let other_root =
            create_root("pki", &CaMountConfig::default(), OffsetDateTime::now_utc()).unwrap();
        // Names this mount's root, but the signature is another root's.
        let (cert_der, key_der) =
            forged_issuer(other_root.key.pkcs8_der(), &root_subject_key_id(&fixture));
        replace_issuer(&fixture, "forged", &cert_der, &key_der);

        let error = CaEngineFactory
            .load(&fixture.store)
            .err()
            .expect("an issuer with a foreign signature loaded");
        assert_eq!(error.code, ErrorCode::Internal);
        assert!(error.message.contains("issuers/forged/cert"), "{error}");
        assert!(error.message.contains("signature"), "{error}");
    }

    #[test]
    fn issuer_signed_by_root_loads() {
        let fixture = mounted(CaMountConfig::default());
        let root_key = fixture.store.get(ROOT_KEY_PATH).unwrap().unwrap();
        let (cert_der, key_der) = forged_issuer(&root_key, &root_subject_key_id(&fixture));
        replace_issuer(&fixture, "made", &cert_der, &key_der);
        let loaded = CaEngineFactory.load(&fixture.store);
        assert!(loaded.is_ok(), "{:?}", loaded.err());
    }

    #[test]
    fn root_and_issuer_serials_are_recorded() {
        let fixture = mounted(CaMountConfig::default());
        let root = CertificateFields::from_der(&pem_der(&root_pem(&fixture))).unwrap();
        assert_eq!(
            fixture.root_serial_rows(),
            [(
                ROOT_SIGNER.to_owned(),
                root.serial_hex.clone(),
                root.not_after.unix_timestamp()
            )]
        );

        let info = issuer_info(fixture.call(None, create_issuer("web")).unwrap());
        let issuer = CertificateFields::from_der(&pem_der(&info.certificate)).unwrap();
        let mut expected = vec![
            (
                ROOT_SIGNER.to_owned(),
                root.serial_hex.clone(),
                root.not_after.unix_timestamp(),
            ),
            (
                ROOT_SIGNER.to_owned(),
                issuer.serial_hex.clone(),
                issuer.not_after.unix_timestamp(),
            ),
        ];
        expected.sort();
        assert_eq!(fixture.root_serial_rows(), expected);
        assert!(fixture.leaf_serial_rows().is_empty());

        // The index now rejects a second certificate with the issuer's
        // serial from the root.
        let mut batch = WriteBatch::new();
        batch.insert_cert_serial(ROOT_SIGNER, &issuer.serial_hex, 0, None);
        let error = fixture.store.commit(batch).unwrap_err();
        assert!(matches!(error, BarrierError::Duplicate { .. }), "{error:?}");
    }
}
